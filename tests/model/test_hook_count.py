"""The leak check itself: ``tests.models.hook_count`` sees every kind of hook a host can
hold (and not the host's own permanent ones), so ``hook_count(model) == 0`` means nothing
leaked."""

from contextlib import contextmanager

import pytest
import torch
import torch.nn.modules.module as torch_module

from rope_behavior.model.adapters import adapter_for
from rope_behavior.tasks import ToyConfig, ToyRotaryTransformer
from tests.models import (
    _HOOK_DICTS,
    FAMILIES,
    VOCAB,
    _run_modules,
    hook_census,
    hook_count,
    make_bridge,
)

SITE = "blocks.0.attn.hook_q"


def _noop(*args, **kwargs):
    return None


def _ident(x, hook):
    return x


def _all_hooks(model):
    """Every torch hook on every module the census walks, host-owned ones included."""
    return sum(len(getattr(m, d)) for _, m in _run_modules(model).values() for d in _HOOK_DICTS)


@pytest.fixture(scope="module")
def model():
    """A private bridge (not the shared session cache), run once so the host's own
    capture hooks are installed; every test leaves it with no leaked hook."""
    bridge = make_bridge("llama_gqa")
    with torch.no_grad():
        bridge(torch.randint(3, VOCAB, (1, 5)))
    yield bridge
    assert hook_count(bridge) == 0, hook_census(bridge)


@pytest.fixture
def toks():
    return torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))


@contextmanager
def _leaked(handle):
    """Keep a raw torch hook for the block and remove it afterwards, even on failure."""
    try:
        yield handle
    finally:
        handle.remove()


def _first_linear(model):
    return next(m for m in model.modules() if type(m) is torch.nn.Linear)


# -- the host's own hooks -------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_run_model_counts_zero_although_its_host_holds_hooks(bridge_factory, family, tokens):
    """A forward makes TransformerLens (block capture hooks) and Hugging Face (output
    capture hooks) install permanent hooks of their own: they are not leaks."""
    bridge = bridge_factory(family)
    with torch.no_grad():
        bridge(tokens)
    assert _all_hooks(bridge) > 0  # the host's own are there ...
    assert hook_count(bridge) == 0, hook_census(bridge)  # ... and not counted


def test_the_shipped_lm_and_the_toy_model_count_zero():
    import rope_behavior as rb

    lm = rb.load_shipped_lm()
    assert _all_hooks(lm) > 0  # booted and checked with a forward: HF + TL host hooks
    assert hook_count(lm) == 0, hook_census(lm)
    toy = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, n_layers=2, n_heads=2, d_head=8))
    toy(torch.randint(0, 20, (1, 6)))
    assert hook_count(toy) == 0


def test_a_user_hook_on_a_module_holding_a_host_hook_still_counts(model):
    """The host's hooks are excused by identity, not by where they sit."""
    hosted = [
        m
        for _, m in _run_modules(model).values()
        if len(m._forward_pre_hooks) or len(m._forward_hooks)
    ]
    assert hosted
    with _leaked(hosted[0].register_forward_pre_hook(_noop)):
        assert hook_count(model) == 1
    with _leaked(hosted[0].register_forward_hook(_noop)):
        assert hook_count(model) == 1
    assert hook_count(model) == 0


# -- leaks of every kind ----------------------------------------------------------------


@pytest.mark.parametrize("with_kwargs", [False, True])
def test_a_forward_pre_hook_on_a_hook_point_counts(model, with_kwargs):
    hp = model.hook_dict[SITE]
    with _leaked(hp.register_forward_pre_hook(_noop, with_kwargs=with_kwargs)):
        assert hook_count(model) == 1
        assert adapter_for(model).hook_count() == 1  # the library sees this one too
    assert hook_count(model) == 0


@pytest.mark.parametrize("with_kwargs", [False, True])
def test_a_forward_pre_hook_on_an_attention_module_counts(model, with_kwargs):
    """What ``positions_recorded`` installs (with kwargs) while it runs."""
    attn = model.blocks[0].attn
    with _leaked(attn.register_forward_pre_hook(_noop, with_kwargs=with_kwargs)):
        assert hook_count(model) == 1
        assert adapter_for(model).hook_count() == 1
    assert hook_count(model) == 0


def test_a_forward_hook_on_a_plain_submodule_counts_where_the_adapter_sees_none(model):
    lin = _first_linear(model)
    with _leaked(lin.register_forward_hook(_noop)):
        assert hook_count(model) == 1
        assert adapter_for(model).hook_count() == 0  # the library's count cannot see it
    assert hook_count(model) == 0


def test_a_hook_on_the_wrapped_hf_root_counts(model):
    """The bridge keeps ``original_model`` outside ``modules()``; the census walks it."""
    assert all(m is not model.original_model for m in model.modules())
    for register in (
        model.original_model.register_forward_hook,
        model.original_model.model.register_forward_pre_hook,
    ):
        with _leaked(register(_noop)):
            assert hook_count(model) == 1
    assert hook_count(model) == 0


def test_a_transformer_lens_hook_left_on_counts(model):
    model.add_hook(SITE, _ident)
    try:
        assert hook_count(model) == 1
        assert adapter_for(model).hook_count() == 1
        model.add_hook(SITE, _ident, dir="bwd")
        assert hook_count(model) == 2
    finally:
        model.reset_hooks()
    assert hook_count(model) == 0


def test_a_stale_transformer_lens_handle_counts(model):
    """A LensHandle whose torch hook was removed directly no longer runs, but keeps the
    user's hook alive in ``HookPoint.fwd_hooks``."""
    hp = model.hook_dict[SITE]
    lens = hp.add_hook(_ident)
    lens.hook.remove()
    try:
        assert hook_count(model) == 1
        assert hook_census(model)[0][2] is _ident
    finally:
        hp.remove_hooks("both")
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "register",
    ["register_full_backward_hook", "register_full_backward_pre_hook"],
)
def test_a_backward_hook_counts(model, register):
    for module in (model.hook_dict[SITE], _first_linear(model)):
        with _leaked(getattr(module, register)(_noop)):
            assert hook_count(model) == 1
    assert hook_count(model) == 0


@pytest.mark.parametrize(
    "register",
    [
        "register_module_forward_pre_hook",
        "register_module_forward_hook",
        "register_module_full_backward_pre_hook",
        "register_module_full_backward_hook",
    ],
)
def test_a_global_module_hook_counts(model, register):
    with _leaked(getattr(torch_module, register)(_noop)):
        assert hook_count(model) == 1
        assert hook_census(model)[0][0] == "<torch global>"
    assert hook_count(model) == 0


def test_leaks_on_the_toy_model_count():
    toy = ToyRotaryTransformer(ToyConfig(d_vocab=20, n_ctx=12, n_layers=2, n_heads=2, d_head=8))
    with _leaked(toy.hook_dict[SITE].register_forward_pre_hook(_noop)):
        assert hook_count(toy) == 1
        assert adapter_for(toy).hook_count() == 1
    with _leaked(toy.blocks[0].register_forward_hook(_noop)):  # no hook point
        assert hook_count(toy) == 1
        assert adapter_for(toy).hook_count() == 0
    assert hook_count(toy) == 0


def test_agrees_with_the_adapter_on_hook_point_hooks(model, toks):
    hp = model.hook_dict["blocks.1.attn.hook_k"]
    with (
        model.hooks(fwd_hooks=[(SITE, _ident), ("blocks.1.attn.hook_rot_k", _ident)]),
        _leaked(hp.register_forward_pre_hook(_noop)),
    ):
        assert hook_count(model) == adapter_for(model).hook_count() == 3
        with torch.no_grad():
            model(toks)  # running it installs nothing that counts
        assert hook_count(model) == adapter_for(model).hook_count() == 3
    assert hook_count(model) == adapter_for(model).hook_count() == 0
