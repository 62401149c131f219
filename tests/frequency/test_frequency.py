"""frequency_usage and frequency bands."""

import math

import pytest
import torch

import rope_behavior as rb
from tests.models import VOCAB


@pytest.fixture
def llama(bridge_factory):
    return bridge_factory("llama_gqa")


def test_usage_matches_a_direct_computation(llama, tokens):
    cap = rb.capture(llama, tokens)
    usage = rb.frequency_usage(cap)
    spec = cap.spec
    assert tuple(usage.logit_usage.shape) == (2, 4, 8)
    torch.testing.assert_close(usage.logit_usage.sum(-1), torch.ones(2, 4))
    for layer in range(2):
        pl = rb.pair_logits(cap, layer)
        n = pl.mask.sum()
        direct = pl.per_pair.abs().sum((0, 2, 3)) / n  # [head, pair]
        torch.testing.assert_close(usage.logit_abs[layer], direct, atol=1e-6, rtol=1e-5)
        qp = rb.split_pairs(cap.rot_q[layer], spec.pair_layout).norm(dim=-1).mean((0, 1))
        torch.testing.assert_close(usage.q_norm[layer], qp, atol=1e-6, rtol=1e-5)
        kp = rb.split_pairs(cap.rot_k[layer], spec.pair_layout).norm(dim=-1).mean((0, 1))
        torch.testing.assert_close(usage.k_norm[layer], kp[list(spec.kv_map)], atol=1e-6, rtol=1e-5)
    prod = usage.q_norm * usage.k_norm
    torch.testing.assert_close(usage.norm_usage, prod / prod.sum(-1, keepdim=True))
    centroid = (usage.logit_usage * torch.arange(8)).sum(-1)
    torch.testing.assert_close(usage.centroid, centroid)


def test_a_head_using_one_pair_has_that_centroid(llama, tokens):
    """Keep only pair 5 of every query: logit usage is one-hot at 5, centroid 5."""
    spec = rb.RopeSpec.from_model(llama)
    dims = rb.split_pairs(torch.arange(16).float(), spec.pair_layout)[5].long()

    def keep_pair5(x, hook):
        keep = torch.zeros(x.shape[-1], dtype=x.dtype)
        keep[dims] = 1
        return x * keep

    with llama.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_q", keep_pair5)]):
        cap = rb.capture(llama, tokens, layers=[0])
    usage = rb.frequency_usage(cap)
    expected = torch.zeros(4, 8)
    expected[:, 5] = 1
    torch.testing.assert_close(usage.logit_usage[0], expected)
    torch.testing.assert_close(usage.centroid[0], torch.full((4,), 5.0))
    log_omega5 = math.log(float(spec.omega[0, 5]))
    torch.testing.assert_close(
        usage.centroid_log_omega[0], torch.full((4,), log_omega5), rtol=1e-5, atol=1e-6
    )


def test_attention_weighted_usage(llama, tokens):
    cap = rb.capture(llama, tokens, layers=[1])
    usage = rb.frequency_usage(cap, attention_weighted=True)
    pl = rb.pair_logits(cap, 1)
    w = pl.pattern()  # [b, h, i, j]
    direct = (pl.per_pair.abs() * w[..., None]).sum((0, 2, 3)) / w.sum((0, 2, 3))[:, None]
    torch.testing.assert_close(usage.logit_abs[0], direct, atol=1e-6, rtol=1e-5)


def test_usage_frames(llama, tokens):
    usage = rb.frequency_usage(rb.capture(llama, tokens))
    df = usage.to_frame()
    assert len(df) == 2 * 4 * 8
    assert {"layer", "head", "pair", "omega", "norm_usage", "logit_usage", "centroid"} <= set(
        df.columns
    )
    assert df.groupby(["layer", "head"])["logit_usage"].sum().round(6).eq(1).all()
    assert len(usage.head_frame()) == 8


def test_usage_layer_subset(llama, tokens):
    cap = rb.capture(llama, tokens, layers=[0])
    with pytest.raises(rb.RopeBehaviorError, match="layer 1 was not captured"):
        rb.frequency_usage(cap, layers=[1])


# ---------------------------------------------------------------- bands


def test_named_and_equal_bands(llama):
    spec = rb.RopeSpec.from_model(llama)
    assert [b.pairs for b in rb.equal_bands(spec, 4)] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert rb.band(spec, "high").pairs == (0, 1, 2)
    assert rb.band(spec, "mid").pairs == (3, 4)
    assert rb.band(spec, "low").pairs == (5, 6, 7)
    assert rb.band(spec, "band:1/2").pairs == (4, 5, 6, 7)
    assert rb.band(spec, "pair:3").pairs == (3,)
    assert rb.pair_set(spec, [5, 1, 1]).pairs == (1, 5)


def test_wavelength_bands(llama):
    spec = rb.RopeSpec.from_model(llama)
    bands = rb.wavelength_bands(spec, 64)
    wl = spec.wavelength[0]
    names = {b.name: b.pairs for b in bands}
    assert all(float(wl[p]) < 6.4 for p in names["wavelength:0-0.1@64"])
    assert all(6.4 <= float(wl[p]) < 64 for p in names["wavelength:0.1-1@64"])
    assert all(float(wl[p]) >= 64 for p in names["wavelength:1-inf@64"])
    assert sorted(p for b in bands for p in b.pairs) == list(range(8))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: rb.band(s, "middle"), "unknown band name 'middle'; options"),
        (lambda s: rb.band(s, "pair:9"), r"pair 9 is out of range.*8 pairs"),
        (lambda s: rb.band(s, "band:3/3"), r"index 3 not in \[0, 2\]"),
        (lambda s: rb.equal_bands(s, 9), r"k \(equal bands\)=9; expected an int in \[1, 8\] \(n_pairs=8\)"),
        (lambda s: rb.pair_set(s, []), "pair is empty"),
        (lambda s: rb.PairSet("mine", ()), "'mine' is empty"),
        (lambda s: rb.PairSet("mine", (1, 9)).validate(s), r"pairs \[9\].*valid: 0..7"),
        (lambda s: rb.wavelength_bands(s, 1), "context_length=1"),
    ],
)
def test_band_errors(llama, call, match):
    spec = rb.RopeSpec.from_model(llama)
    with pytest.raises(rb.RopeBehaviorError, match=match):
        call(spec)


def test_usage_of_batches_merges_exactly(bridge_factory):
    import rope_behavior as rb

    model = bridge_factory("llama_gqa")
    toks = torch.randint(0, 97, (5, 12), generator=torch.Generator().manual_seed(3))
    for weighted in (False, True):
        whole = rb.frequency_usage(rb.capture(model, toks), attention_weighted=weighted)
        parts = [rb.frequency_usage(rb.capture(model, t), attention_weighted=weighted)
                 for t in (toks[:2], toks[2:])]
        merged = rb.FrequencyUsage.merge(parts)
        for name in ("q_norm", "k_norm", "logit_abs", "logit_usage", "norm_usage", "centroid"):
            torch.testing.assert_close(getattr(merged, name).double(), getattr(whole, name).double(),
                                       atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family", ["llama_gqa", "gpt_neox", "gptj", "gemma2", "cohere2"])
@pytest.mark.parametrize("weighted", [False, True])
def test_chunked_usage_terms_equal_the_per_head_terms(bridge_factory, family, weighted):
    """frequency/usage_terms.py (chunked, all heads at once, never [batch, head, dest, src,
    pair]) equals the per-head decomposition, small chunks included, under padding."""
    from rope_behavior.frequency.decomposition import logit_terms, pattern
    from rope_behavior.frequency.usage_terms import layer_logit_abs

    model = bridge_factory(family)
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(3, VOCAB, (3, 13), generator=g)
    mask = torch.ones_like(tokens)
    mask[1, -4:] = 0
    cap = rb.capture(model, tokens, attention_mask=mask)
    spec = cap.spec
    for layer in cap.layers:
        rq, rk, m = cap.rot_q[layer], cap.rot_k[layer], cap.key_mask(layer)
        want_abs, want_w = [], []
        for h in range(spec.n_heads):
            per_pair, passthrough = logit_terms(rq, rk, spec, layer, (h,), m)
            c = per_pair[:, 0].abs()
            if weighted:
                w = torch.where(m, pattern(per_pair.sum(-1) + passthrough, m, spec.logit_softcaps[layer])[:, 0], 0.0)
                want_abs.append((c * w[..., None]).sum((0, 1, 2)) / w.sum())
                want_w.append(w.sum())
            else:
                want_abs.append(c.sum((0, 1, 2)) / m.sum())
                want_w.append(m.sum().float())
        for chunk in (1 << 21, 64):  # the default, and chunks of a few rows
            got_abs, got_w = layer_logit_abs(
                rq, rk, m, spec.kv_map, spec.rotary_dim, spec.pair_layout, spec.attn_scales[layer],
                weighted, spec.logit_softcaps[layer], chunk_elems=chunk, min_rows=1,
            )
            torch.testing.assert_close(got_abs, torch.stack(want_abs), rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(got_w, torch.stack(want_w).to(got_w.dtype), rtol=1e-5, atol=1e-5)
