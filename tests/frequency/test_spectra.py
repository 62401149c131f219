"""Per-pair spectral entropy and the slow-pairs flag."""

import dataclasses
import math

import pytest
import torch

import rope_behavior as rb
from rope_behavior.frequency.spectra import pair_spectra, spectral_entropy


def test_entropy_of_known_signals():
    t = torch.arange(32, dtype=torch.float64)
    # one frequency on a bin: all the power in one bin, entropy 0
    assert float(spectral_entropy(3 + torch.cos(2 * math.pi * 4 * t / 32))) == pytest.approx(
        0.0, abs=1e-9
    )
    # two bins of equal power: log 2 / log 16
    two = torch.cos(2 * math.pi * 3 * t / 32) + torch.cos(2 * math.pi * 7 * t / 32)
    assert float(spectral_entropy(two)) == pytest.approx(math.log(2) / math.log(16), abs=1e-9)
    # white noise spreads its power over every bin
    noise = torch.randn(64, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float(spectral_entropy(noise).mean()) > 0.85
    assert float(spectral_entropy(noise).mean()) > float(spectral_entropy(two)) + 0.5
    # no variation, or too few positions: undefined
    assert math.isnan(float(spectral_entropy(torch.full((32,), 2.0))))
    assert math.isnan(float(spectral_entropy(torch.full((32,), 2.0) + 1e-7 * (t % 2))))
    assert math.isnan(float(spectral_entropy(torch.tensor([1.0, 2.0, 1.0]))))
    with pytest.raises(rb.RopeBehaviorError, match="float tensor"):
        spectral_entropy(torch.arange(8))


def _pair_dims(spec, pair):
    return rb.split_pairs(torch.arange(float(spec.rotary_dim)), spec.pair_layout)[pair].long()


@pytest.mark.parametrize("family", ["llama_mha", "glm4"])
def test_pair_spectra_reads_each_pairs_norm(bridge_factory, family):
    model = bridge_factory(family)
    tokens = torch.randint(0, 97, (2, 32), generator=torch.Generator().manual_seed(1))
    cap = rb.capture(model, tokens)
    spec = cap.spec
    t = torch.arange(32, dtype=torch.float32)
    rq = cap.rot_q[0].clone()
    a, b = _pair_dims(spec, 0).tolist()
    radius = 2 + torch.cos(2 * math.pi * 4 * t / 32)  # periodic norm
    rq[:, :, 1, a], rq[:, :, 1, b] = radius * torch.cos(t), radius * torch.sin(t)
    c, d = _pair_dims(spec, 1).tolist()
    rq[:, :, 1, c], rq[:, :, 1, d] = 3 * torch.cos(0.3 * t), 3 * torch.sin(0.3 * t)  # constant
    crafted = dataclasses.replace(cap, rot_q={**cap.rot_q, 0: rq})
    spectra = pair_spectra(crafted)
    assert float(spectra.q_entropy[0, 1, 0]) == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(float(spectra.q_entropy[0, 1, 1]))
    rest = spectra.q_entropy.clone()
    rest[0, 1, :2] = 0.5
    assert bool(((rest >= 0) & (rest <= 1)).all())
    assert bool(((spectra.k_entropy >= 0) & (spectra.k_entropy <= 1)).all())
    # keys through the query head's KV head
    for h in range(spec.n_heads):
        torch.testing.assert_close(
            spectra.k_entropy[:, h], spectra.k_entropy[:, spec.kv_map[h] * spec.group_size]
        )


def test_padding_and_skip_leave_tokens_out(bridge_factory):
    model = bridge_factory("llama_mha")
    tokens = torch.randint(3, 97, (2, 20), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(tokens)
    mask[1, 12:] = 0
    full = pair_spectra(rb.capture(model, tokens, attention_mask=mask), skip=1)
    alone = [pair_spectra(rb.capture(model, tokens[:1]), skip=1),
             pair_spectra(rb.capture(model, tokens[1:, :12]), skip=1)]  # fmt: skip
    both = torch.stack([s.q_entropy for s in alone]).mean(0)
    torch.testing.assert_close(full.q_entropy, both, atol=1e-5, rtol=1e-5)
    assert full.n_prompts == 2
    assert full.context == 20
    with pytest.raises(rb.RopeBehaviorError, match=r"at least 8 real tokens \(4 after skip=4\)"):
        pair_spectra(rb.capture(model, tokens[:, :7]), skip=4)
    with pytest.raises(rb.RopeBehaviorError, match="skip=-1"):
        pair_spectra(rb.capture(model, tokens), skip=-1)
    with pytest.raises(rb.RopeBehaviorError, match=r"run rope_behavior\.capture"):
        pair_spectra(tokens)


def test_frame_puts_usage_beside_the_entropies(bridge_factory, tokens):
    cap = rb.capture(bridge_factory("llama_mha"), tokens)
    spectra, usage = pair_spectra(cap), rb.frequency_usage(cap)
    frame = spectra.to_frame(usage)
    assert len(frame) == 2 * 4 * 8
    assert {"omega", "turns", "slow", "q_entropy", "k_entropy", "q_norm", "logit_usage"} <= set(
        frame.columns
    )
    row = frame[(frame["layer"] == 1) & (frame["head"] == 2) & (frame["pair"] == 5)].iloc[0]
    assert row.logit_usage == pytest.approx(float(usage.logit_usage[1, 2, 5]))
    assert row.q_entropy == pytest.approx(float(spectra.q_entropy[1, 2, 5]), nan_ok=True)
    assert all(len(line) <= 80 for line in repr(spectra).splitlines())
    with pytest.raises(rb.RopeBehaviorError, match="same layers"):
        spectra.to_frame(rb.frequency_usage(cap, layers=0))


def test_slow_pairs_by_hand(bridge_factory):
    # llama_mha: d_head 16, rope_theta 10000, so omega_p = 10000 ** (-p / 8). Over 64
    # positions pair p turns 63 * omega_p / 2 pi times: under once iff
    # p / 8 > log10(63 / 2 pi) / 4 = 0.2503..., i.e. p >= 3.
    spec = rb.RopeSpec.from_model(bridge_factory("llama_mha"))
    assert spec.slow_pairs(64).tolist() == [[False] * 3 + [True] * 5] * 2
    # over 11 positions: p / 8 > log10(10 / 2 pi) / 4 = 0.0504..., i.e. p >= 1
    assert spec.slow_pairs(11).tolist() == [[False] + [True] * 7] * 2
    assert bool(spec.slow_pairs(1).all())  # one position: no angle at all
    assert float(spec.turns(64)[0, 0]) == pytest.approx(63 / (2 * math.pi))
    assert float(spec.turns(64)[1, 4]) == pytest.approx(63 * 10000 ** (-0.5) / (2 * math.pi))
    with pytest.raises(rb.RopeBehaviorError, match="context=0"):
        spec.slow_pairs(0)
    with pytest.raises(rb.RopeBehaviorError, match=r"context=2\.0"):
        spec.turns(2.0)
    spectra = pair_spectra(rb.capture(bridge_factory("llama_mha"),
                                      torch.randint(0, 97, (1, 64), generator=torch.Generator())))  # fmt: skip
    assert spectra.slow.tolist() == spec.slow_pairs(64).tolist()


def test_usage_frame_flags_the_slow_pairs(bridge_factory, tokens):
    model = bridge_factory("llama_mha")
    usage = rb.frequency_usage(rb.capture(model, tokens))
    assert "slow" not in usage.to_frame().columns
    frame = usage.to_frame(context=64)
    slow = rb.RopeSpec.from_model(model).slow_pairs(64)
    assert frame["slow"].tolist() == [bool(slow[la, p]) for la, p in zip(frame.layer, frame.pair)]
    assert frame["turns"].iloc[0] == pytest.approx(63 / (2 * math.pi))
    with pytest.raises(rb.RopeBehaviorError, match="context=0"):
        usage.to_frame(context=0)
