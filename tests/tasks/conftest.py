"""Fixtures for the tasks tests: seeded generators and tiny toy models (built per test)."""

import pytest
import torch

from rope_behavior.tasks import ToyConfig, ToyRotaryTransformer


def _n_hooks(model: ToyRotaryTransformer) -> int:
    """Number of hook functions currently attached to any hook point of ``model``."""
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


@pytest.fixture
def n_hooks():
    """``n_hooks(model)``: hook functions attached to ``model`` right now (0 outside scopes)."""
    return _n_hooks


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(params=[1, 2], ids=["1layer", "2layer"])
def tiny_model(request: pytest.FixtureRequest) -> ToyRotaryTransformer:
    cfg = ToyConfig(d_vocab=20, n_ctx=12, n_layers=request.param, n_heads=2, d_head=8)
    return ToyRotaryTransformer(cfg, seed=7)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train fastest on one thread, and avoid oversubscribing a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
