import pytest
import torch

from rope_behavior.errors import check_shapes
from tests.models import VOCAB, make_bridge

check_shapes(True)  # public entry points' annotations are checked after every call

_CACHE: dict = {}


@pytest.fixture
def bridge_factory():
    """Build (and memoise per session) a tiny random bridge by family name."""

    def get(name: str, **kw):
        key = (name, tuple(sorted(kw.items())))
        if key not in _CACHE:
            _CACHE[key] = make_bridge(name, **kw)
        return _CACHE[key]

    return get


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tokens(gen) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 11), generator=gen)
