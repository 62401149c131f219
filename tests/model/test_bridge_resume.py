"""``start_at_layer`` on a TransformerBridge whose forward lacks it (TransformerLens 3.9
raises ``NotImplementedError``): the adapter resumes the run itself, with the same logits.

TransformerLens 3.9 is faked here by a forward that refuses ``start_at_layer`` (the main
environment has 4.x); under a real 3.9 the fake changes nothing. The patching sweep, which
restarts every forward at its layer, must then give the values of the native path and of
one full forward per condition.
"""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.model.adapters import adapter_for
from rope_behavior.model.adapters import bridge as bridge_adapter
from tests.models import VOCAB, hook_count, make_bridge
from tests.patching.test_sweep_mask import masked_loop


def _without_start_at_layer(monkeypatch, model) -> None:
    """Make ``model``'s class behave like TransformerLens 3.9's bridge for the test."""
    cls = type(model)
    native = cls.forward

    def forward(self, *args, start_at_layer=None, **kwargs):
        if start_at_layer is not None:
            raise NotImplementedError("start_at_layer is not supported in TransformerBridge.")
        return native(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", forward)
    monkeypatch.setattr(bridge_adapter, "_bridge_takes_start_at_layer", lambda: False)


@pytest.fixture
def model():
    return make_bridge("llama_gqa", num_hidden_layers=3)


@pytest.mark.parametrize("start", [0, 1, 2, -1])
def test_resumed_forward_equals_the_full_forward(monkeypatch, model, start):
    toks = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(toks)
    mask[1, :3] = 0  # left padding: positions come from the mask, as in the token run
    adapter = adapter_for(model)
    layer = start % 3
    name = adapter.sites(layer).resid_pre
    with torch.no_grad():
        full, cache = model.run_with_cache(toks, attention_mask=mask, names_filter=[name])
        native = adapter.forward(cache[name], start_at_layer=start, attention_mask=mask)
        _without_start_at_layer(monkeypatch, model)
        with pytest.raises(NotImplementedError):  # the fake is in place
            model(cache[name], start_at_layer=start)
        resumed = adapter.forward(cache[name], start_at_layer=start, attention_mask=mask)
    torch.testing.assert_close(resumed, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(resumed, native, atol=1e-6, rtol=0)
    assert hook_count(model) == 0


def test_sweep_without_native_start_at_layer_equals_the_loop(monkeypatch, model):
    g = torch.Generator().manual_seed(5)
    clean = torch.randint(3, VOCAB, (2, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2:5] = torch.randint(3, VOCAB, (2, 3), generator=g)
    mask = torch.ones_like(clean)
    mask[1, :2] = 0
    metric = rb.metrics.logit_diff(torch.tensor([5, 9]), torch.tensor([7, 11]), position=5)
    kw = dict(bands=2, attention_mask=mask, batch_conditions=3)
    native = rb.frequency_patching_sweep(model, clean, corrupted, metric, **kw)
    _without_start_at_layer(monkeypatch, model)
    result = rb.frequency_patching_sweep(model, clean, corrupted, metric, **kw)
    assert hook_count(model) == 0
    torch.testing.assert_close(result.values, native.values, atol=1e-6, rtol=0)
    expected = masked_loop(model, clean, corrupted, mask, metric, result)
    torch.testing.assert_close(result.values, expected, atol=1e-5, rtol=0)


def test_resumed_forward_leaves_no_hook_when_the_model_raises(monkeypatch, model):
    adapter = adapter_for(model)
    _without_start_at_layer(monkeypatch, model)
    resid = torch.zeros(1, 4, model.cfg.d_model)

    def boom(x, hook):
        raise KeyboardInterrupt

    with model.hooks(fwd_hooks=[("blocks.2.attn.hook_q", boom)]), pytest.raises(KeyboardInterrupt):
        adapter.forward(resid, start_at_layer=1)
    assert hook_count(model) == 0
    assert all("forward" not in blk.__dict__ for blk in model.blocks)  # no block left skipped


@pytest.mark.parametrize(
    ("resid", "start", "match"),
    [
        (torch.zeros(1, 4, 32), 3, r"start_at_layer=3 is out of range for 3 blocks"),
        (torch.zeros(1, 4, 32), -4, r"start_at_layer=-4 is out of range"),
        (
            torch.zeros(4, 32),
            1,
            r"residual stream .* \[batch, pos, d_model\] floats; got "
            r"torch.float32 of shape \(4, 32\)",
        ),
        (torch.zeros(1, 4, dtype=torch.long), 1, r"got torch.int64"),
    ],
)
def test_resumed_forward_refuses_bad_input(monkeypatch, model, resid, start, match):
    _without_start_at_layer(monkeypatch, model)
    with pytest.raises(rb.RopeBehaviorError, match=match):
        adapter_for(model).forward(resid, start_at_layer=start)
    assert hook_count(model) == 0
