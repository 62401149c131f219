"""NoPE below the high-norm band: the edit, the losses, GQA groups, bad input, no leaks."""

import dataclasses

import pytest
import torch

import rope_behavior as rb
from rope_behavior.analysis.band_ablation import nope_below_band
from rope_behavior.frequency.norm_bands import high_norm_bands
from tests.frequency.test_norm_bands import plant_band
from tests.models import hook_count, make_bridge


def _masked_loss(logits, tokens, mask):
    valid = (mask[:, 1:] * mask[:, :-1]).bool()
    pred = logits[:, :-1].double()[valid]
    return float(torch.nn.functional.cross_entropy(pred, tokens[:, 1:][valid]))


@pytest.fixture(scope="module")
def planted():
    model = make_bridge("llama_mha", seed=3)
    plant_band(model, 1, 2, range(2, 5), 4.0)
    return model


def test_losses_before_and_after_the_edit(planted):
    tokens = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(tokens)
    mask[2, 15:] = 0
    bands = high_norm_bands(rb.capture(planted, tokens, attention_mask=mask))
    result = nope_below_band(planted, tokens, bands, attention_mask=mask)
    assert torch.equal(result.nope, bands.below)  # MHA: every head's own pairs
    assert result.nope[1, 2].tolist() == [False] * 5 + [True] * 3
    with torch.no_grad():
        plain = planted(tokens, attention_mask=mask)
        by_hand = [
            rb.AngleOverride(layer=layer, heads=h, pairs=torch.nonzero(bands.below[i, h]).flatten().tolist(), omega=0.0)
            for i, layer in enumerate(bands.layers)
            for h in range(4)
            if bool(bands.below[i, h].any())
        ]  # fmt: skip
        edited = rb.run_with_interventions(planted, tokens, by_hand, attention_mask=mask)
    assert result.loss_before == pytest.approx(_masked_loss(plain, tokens, mask), rel=1e-6)
    assert result.loss_after == pytest.approx(_masked_loss(edited, tokens, mask), rel=1e-6)
    assert result.n_predictions == 2 * 23 + 14
    assert result.loss_after != result.loss_before
    assert result.delta == result.loss_after - result.loss_before
    frame = result.to_frame()
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2)].iloc[0]
    assert (row.n_nope, row.first_nope_pair) == (3, 5)
    assert all(len(line) <= 80 for line in repr(result).splitlines())
    assert hook_count(planted) == 0


def test_gqa_groups_edit_the_pairs_below_every_heads_band(bridge_factory, tokens):
    model = bridge_factory("llama_gqa")  # 4 query heads, KV groups (0, 1) and (2, 3)
    bands = high_norm_bands(rb.capture(model, tokens))
    below = torch.zeros_like(bands.below)
    below[0, 0, 4:] = True
    below[0, 1, 6:] = True  # group (0, 1): pairs 6, 7
    below[1, 2, 5:] = True  # head 3 below nothing: group (2, 3) untouched
    result = nope_below_band(model, tokens, dataclasses.replace(bands, below=below))
    expected = torch.zeros_like(below)
    expected[0, :2, 6:] = True
    assert torch.equal(result.nope, expected)
    assert [(v.layer, v.heads, v.pairs) for v in result.interventions] == [(0, (0, 1), (6, 7))]
    nothing = nope_below_band(model, tokens, dataclasses.replace(bands, below=below & False))
    assert nothing.interventions == ()
    assert nothing.loss_after == nothing.loss_before
    assert hook_count(model) == 0


def test_bad_input_is_refused_without_leaking(bridge_factory, tokens, planted):
    model = bridge_factory("llama_gqa")
    other = high_norm_bands(rb.capture(bridge_factory("phi"), tokens))
    with pytest.raises(rb.RopeBehaviorError, match="not measured on this model"):
        nope_below_band(model, tokens, other)
    with pytest.raises(rb.RopeBehaviorError, match="expected the NormBands"):
        nope_below_band(model, tokens, "bands")
    bands = high_norm_bands(rb.capture(model, tokens))
    with pytest.raises(rb.RopeBehaviorError, match="attention_mask"):
        nope_below_band(model, tokens, bands, attention_mask=tokens[:, :3])
    with pytest.raises(rb.RopeBehaviorError, match="tokens"):
        nope_below_band(model, tokens[:, :1], bands)
    assert hook_count(model) == 0
