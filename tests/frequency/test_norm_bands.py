"""high_norm_bands: the planted band, the method on a hand-made profile, bad input."""

import dataclasses
import math

import pytest
import torch

import rope_behavior as rb
from rope_behavior.frequency.norm_bands import NormBands, high_norm_bands
from tests.models import hook_count, make_bridge


def _attention(model, layer):
    hf = model.original_model
    return hf.model.layers[layer].self_attn


def plant_band(model, layer, head, pairs, scale):
    """Scale the W_Q rows of ``pairs`` of ``head`` and the W_K rows of those pairs of its KV
    head (and their biases) by ``scale``: both per-pair norms grow by ``scale``."""
    spec = rb.RopeSpec.from_model(model)
    dims = rb.split_pairs(torch.arange(float(spec.rotary_dim)), spec.pair_layout)[
        list(pairs)
    ].long()
    dims = dims.flatten()  # the pair layout of the spec says which dims form a pair
    attn = _attention(model, layer)
    with torch.no_grad():
        for proj, h in ((attn.q_proj, head), (attn.k_proj, spec.kv_head_of(head))):
            rows = h * spec.d_head + dims
            proj.weight[rows] *= scale
            if proj.bias is not None:
                proj.bias[rows] *= scale


@pytest.mark.parametrize("family", ["llama_mha", "glm4"])
def test_band_finder_recovers_a_planted_band(family, tokens):
    model = make_bridge(family, seed=3)  # its own copy: the weights are edited
    spec = rb.RopeSpec.from_model(model)
    first, last = (2, 4) if spec.n_pairs >= 8 else (1, 1)
    assert high_norm_bands(rb.capture(model, tokens)).band(1, 2) is None  # before planting
    plant_band(model, 1, 2, range(first, last + 1), 4.0)
    bands = high_norm_bands(rb.capture(model, tokens))
    assert bands.band(1, 2) == (first, last)
    omega = spec.omega[1]
    band_low = omega[first : last + 1].min()
    assert bands.below[1, 2].tolist() == (omega < band_low).tolist()
    assert bool(bands.found[1, 2])
    frame = bands.to_frame()
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2)].iloc[0]
    assert (row.first_pair, row.last_pair, row.n_pairs) == (first, last, last - first + 1)
    lam = (2 * math.pi / omega[first : last + 1]).tolist()
    assert row.wavelength_min == pytest.approx(min(lam))
    assert row.wavelength_max == pytest.approx(max(lam))
    s = bands.score[1, 2]
    assert row.share == pytest.approx(float(s[first : last + 1].sum() / s.sum()))
    assert hook_count(model) == 0


def _usage_with(usage, q_profile):
    q = torch.tensor(q_profile, dtype=torch.float64).expand_as(usage.q_norm).clone()
    return dataclasses.replace(usage, q_norm=q, k_norm=torch.ones_like(q))


@pytest.fixture
def usage(bridge_factory, tokens):
    return rb.frequency_usage(rb.capture(bridge_factory("llama_mha"), tokens))


def test_the_band_is_the_run_above_threshold_that_holds_the_peak(usage):
    # lower median of the 8 scores is 1: threshold 2; runs above it: pairs 2-3 and 5
    bands = high_norm_bands(_usage_with(usage, [1, 1, 5, 6, 1, 5, 1, 1]))
    assert bands.band(0, 0) == (2, 3)
    assert bands.in_band[0, 0].tolist() == [False, False, True, True] + [False] * 4
    assert bands.below[0, 0].tolist() == [False] * 4 + [True] * 4  # omega falls with pair
    assert float(bands.share[0, 0]) == pytest.approx(11 / 21)
    assert float(bands.peak_ratio[0, 0]) == pytest.approx(6.0)
    # a higher threshold keeps only the peak pair; above the peak none is left
    assert high_norm_bands(_usage_with(usage, [1, 1, 5, 6, 1, 5, 1, 1]), ratio=5.5).band(0, 0) == (
        3,
        3,
    )
    assert high_norm_bands(_usage_with(usage, [1, 1, 5, 6, 1, 5, 1, 1]), ratio=6).band(0, 0) is None


def test_a_flat_profile_has_no_band(usage):
    bands = high_norm_bands(_usage_with(usage, [1.0] * 8))
    assert not bool(bands.found.any())
    assert not bool(bands.below.any())
    assert torch.isnan(bands.share).all()
    frame = bands.to_frame()
    assert frame.first_pair.isna().all()
    assert not frame.found.any()
    assert all(len(line) <= 80 for line in repr(bands).splitlines())
    assert "0 of 8 heads have a band" in repr(bands)


def test_measure_picks_the_side(usage):
    u = dataclasses.replace(
        usage,
        q_norm=torch.tensor([1, 1, 9, 1, 1, 1, 1, 1.0]).expand_as(usage.q_norm).clone(),
        k_norm=torch.tensor([1, 1, 1, 1, 1, 4, 1, 1.0]).expand_as(usage.q_norm).clone(),
    )
    assert high_norm_bands(u, measure="q").band(1, 3) == (2, 2)
    assert high_norm_bands(u, measure="k").band(1, 3) == (5, 5)
    assert high_norm_bands(u, measure="qk").band(0, 0) == (2, 2)  # product 9 at 2, 4 at 5


def test_bad_input_is_refused(usage):
    with pytest.raises(rb.RopeBehaviorError, match=r"ratio=1.*expected a number in \(1"):
        high_norm_bands(usage, ratio=1)
    with pytest.raises(rb.RopeBehaviorError, match="ratio=True"):
        high_norm_bands(usage, ratio=True)
    with pytest.raises(rb.RopeBehaviorError, match=r"measure='qq'.*\['qk', 'q', 'k'\]"):
        high_norm_bands(usage, measure="qq")
    with pytest.raises(rb.RopeBehaviorError, match="FrequencyUsage or a Captured; got str"):
        high_norm_bands("usage")
    with pytest.raises(rb.RopeBehaviorError, match="not finite"):
        high_norm_bands(dataclasses.replace(usage, q_norm=usage.q_norm * math.nan))
    bands = high_norm_bands(usage)
    assert isinstance(bands, NormBands)
    with pytest.raises(rb.RopeBehaviorError, match="layer=5 has no bands"):
        bands.band(5, 0)
    with pytest.raises(rb.RopeBehaviorError, match=r"head=4; expected an int in \[0, 3\]"):
        bands.band(0, 4)
