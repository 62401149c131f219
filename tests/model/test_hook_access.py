"""Adapter access to installed hooks (``hook_fns``), pre-hook keys (``raw_keys``) and the
check that a ``spec`` belongs to the model it is used with."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.model.adapters import OpaqueHook, adapter_for
from rope_behavior.qk.captured import stream_layers
from rope_behavior.tasks import ToyConfig, ToyRotaryTransformer
from tests.models import hook_count, make_bridge


def _toy():
    return ToyRotaryTransformer(
        ToyConfig(d_vocab=20, n_ctx=12, n_layers=2, n_heads=2, d_head=8), seed=7
    )


def _ident(x, hook):
    return x


def _ident2(x, hook):
    return x


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "toy"])
def test_hook_fns_lists_the_user_hooks_in_firing_order(bridge_factory, family):
    model = _toy() if family == "toy" else bridge_factory(family)
    a = adapter_for(model)
    name = "blocks.0.attn.hook_k"
    assert a.hook_fns(name) == []
    with model.hooks(fwd_hooks=[(name, _ident), (name, _ident2)]):
        assert a.hook_fns(name) == [_ident, _ident2]
        hp = a.hook_points()[name]
        handle = hp.add_hook(_ident2, prepend=True)  # fires first
        raw = hp.register_forward_hook(lambda m, i, o: None)
        try:
            got = a.hook_fns(name)
            assert got[:3] == [_ident2, _ident, _ident2]
            assert isinstance(got[3], OpaqueHook)
        finally:
            raw.remove()
            handle.hook.remove()
            hp.fwd_hooks.remove(handle)
    assert a.hook_fns(name) == []
    assert hook_count(model) == 0
    with pytest.raises(rb.RopeBehaviorError, match=r"'blocks.0.attn.hook_kk' is not a hook point"):
        a.hook_fns("blocks.0.attn.hook_kk")


def test_hook_fns_unwraps_the_closure_cell_named_hook(bridge_factory):
    model = bridge_factory("llama_gqa")
    hp = adapter_for(model).hook_points()["blocks.0.attn.hook_q"]
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_q", _ident)]):
        (wrapped,) = hp._forward_hooks.values()
        from rope_behavior.model.adapters.base import _unwrap_hook

        assert _unwrap_hook(wrapped) is _ident


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "qwen3", "toy"])
def test_raw_keys_are_the_keys_before_any_hook_edit(bridge_factory, family, tokens):
    model = _toy() if family == "toy" else bridge_factory(family)
    tokens = tokens % 20 if family == "toy" else tokens
    spec = rb.RopeSpec.from_model(model)
    site = spec.sites[1].k
    plain = rb.capture(model, tokens, layers=[1])

    def zero(x, hook):
        return torch.zeros_like(x)

    got: dict = {}
    with model.hooks(fwd_hooks=[(site, zero)]):
        stream_layers(
            model, tokens, lambda lq: got.__setitem__(lq.layer, lq), layers=[1], raw_keys=True
        )
        assert hook_count(model) == 1
    lq = got[1]
    assert lq.k_raw is not None
    assert float(lq.k.abs().max()) == 0.0  # what the hooks left
    torch.testing.assert_close(lq.k_raw, plain.k[1], atol=0, rtol=0)
    assert tuple(lq.k_raw.shape) == tuple(plain.k[1].shape)
    assert hook_count(model) == 0
    assert adapter_for(model).hook_count() == 0
    stream_layers(model, tokens, lambda lq: got.__setitem__("plain", lq), layers=[1])
    assert got["plain"].k_raw is None


def test_raw_keys_tap_is_removed_when_the_consumer_raises(bridge_factory, tokens):
    model = bridge_factory("llama_gqa")

    def boom(lq):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        stream_layers(model, tokens, boom, layers=[0], raw_keys=True)
    assert adapter_for(model).hook_count() == 0
    with pytest.raises(rb.RopeBehaviorError, match=r"raw_keys=.yes. \(str\); expected True or False"):
        stream_layers(model, tokens, lambda lq: None, raw_keys="yes")


@pytest.mark.parametrize("other", ["llama_mha", "gpt_neox", "toy"])
def test_a_spec_of_another_model_is_refused(bridge_factory, tokens, other):
    model = bridge_factory("llama_gqa")
    spec = rb.RopeSpec.from_model(_toy() if other == "toy" else bridge_factory(other))
    with pytest.raises(
        rb.RopeBehaviorError, match=r"spec describes another model.*(n_kv_heads|architecture)"
    ):
        rb.capture(model, tokens, spec=spec)
    with pytest.raises(rb.RopeBehaviorError, match="spec describes another model"):
        stream_layers(model, tokens, lambda lq: None, spec=spec)
    with pytest.raises(rb.RopeBehaviorError, match="spec must be a RopeSpec"):
        rb.capture(model, tokens, spec="llama")
    assert hook_count(model) == 0


def test_a_spec_of_an_equal_model_is_accepted(bridge_factory, tokens):
    model = bridge_factory("llama_gqa")
    twin = make_bridge("llama_gqa", seed=5)  # other weights, the same rotary facts
    cap = rb.capture(model, tokens, layers=[0], spec=rb.RopeSpec.from_model(twin))
    torch.testing.assert_close(cap.rot_q[0], rb.capture(model, tokens, layers=[0]).rot_q[0])
