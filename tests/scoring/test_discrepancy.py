"""Discrepancy (docs/method.md §7): the gap between a head's top and second logit.

The known answer is a planted one-layer toy model with two heads: an Index-like head (one
rotating pair at a known angle theta, content-free keys, its query aimed at offset
``OFFSET``) and a content head (NoPE pairs; the query matches the target token's key
content). The Index head's normalised gap must equal the closed form ``1 - cos(delta)``
at every length, stay under ``min{1 - cos theta, 1 - cos(2 pi / (n - OFFSET))}`` and fall
like ``n^-2``; the content head's gap must not fall with n.
"""

import math

import numpy as np
import pytest
import torch

import rope_behavior as rb
from rope_behavior.tasks.toy import ToyConfig, ToyRotaryTransformer
from tests.models import VOCAB, hook_count

PHI = (1 + math.sqrt(5)) / 2
GOLDEN = 2 * math.pi / PHI**2  # theta / 2pi = 1/phi^2: badly approximable
OFFSET = 2  # the Index head attends the key OFFSET tokens before the query
RHO_Q, RHO_K = 1.5, 0.7  # query / key norms of the Index head (the raw gap scales with them)
D_HEAD = 8  # pairs (p, p + 4); pair 0 rotates, pairs 1-3 are NoPE (the content head's)
N_CONTENT = 9  # content tokens: 1 is the target, 2..9 distractors; 0 is the query token
LENGTHS = (16, 32, 64, 128, 256)


def planted(theta: float) -> tuple[ToyRotaryTransformer, torch.Tensor]:
    """The planted model (float64) and the key content vectors ``[token, 6]`` (unit, the
    query token's zero). Residual dims: 0 is 1 for every token (the Index head reads only
    it: its keys carry no content), 1-6 the token's content, 7 flags the query token."""
    cfg = ToyConfig(d_vocab=N_CONTENT + 1, n_ctx=max(LENGTHS), n_heads=2, d_head=D_HEAD, d_model=8)
    model = ToyRotaryTransformer(cfg, seed=0).double()
    gen = torch.Generator().manual_seed(0)
    content = torch.randn(N_CONTENT + 1, 6, generator=gen, dtype=torch.float64)
    content = content / content.norm(dim=-1, keepdim=True)
    content[0] = 0.0
    head_dims = [1, 2, 3, 5, 6, 7]  # the NoPE pairs' dims of a head
    alpha = 0.3
    beta = alpha + OFFSET * theta  # aims the query at offset OFFSET
    attn = model.blocks[0].attn
    with torch.no_grad():
        model.rotary_omega[0] = torch.tensor([theta, 0.0, 0.0, 0.0], dtype=torch.float64)
        for p in model.parameters():
            p.zero_()
        model.W_E[:, 0] = 1.0
        model.W_E[:, 1:7] = content
        model.W_E[0, 7] = 1.0
        attn.W_Q[0, 0, 0], attn.W_Q[0, 0, 4] = RHO_Q * math.cos(alpha), RHO_Q * math.sin(alpha)
        attn.W_K[0, 0, 0], attn.W_K[0, 0, 4] = RHO_K * math.cos(beta), RHO_K * math.sin(beta)
        for c, d in enumerate(head_dims):
            attn.W_K[1, 1 + c, d] = 1.0  # key = the token's content
            attn.W_Q[1, 7, d] = content[1, c]  # the query token asks for the target's
    return model, content


def prompt(n: int) -> torch.Tensor:
    """Distractors cycling through every distractor token, the target at n // 2, the query
    token last."""
    t = torch.tensor([2 + j % (N_CONTENT - 1) for j in range(n)])
    t[n // 2], t[-1] = 1, 0
    return t


def closed_form(theta: float, n: int) -> float:
    """``1 - cos(delta)``, delta the smallest ``||m theta||`` over the other keys' offsets
    ``m = i - j - OFFSET`` (query i = n - 1, keys j = 0..n-1)."""
    m = np.arange(-OFFSET, n - OFFSET)
    x = np.mod(m[m != 0] * theta, 2 * np.pi)
    return 1 - math.cos(float(np.minimum(x, 2 * np.pi - x).min()))


def slope(n: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(np.log(n), np.log(y), 1)[0])


@pytest.mark.parametrize("theta", [GOLDEN, 1.0, 0.05])
def test_index_head_matches_closed_form_and_bound(theta):
    """At every length n = 16..256 (query n - 1 of one 256-token prompt: causal, so the
    same row as a prompt of length n), the Index head's normalised gap is 1 - cos(delta)
    and at most min{1 - cos theta, 1 - cos(2 pi / (n - OFFSET))}; the raw gap is the
    normalised one times |q| |k| / attn_scale; the top key is the one at the offset."""
    model, _ = planted(theta)
    ns = np.arange(16, max(LENGTHS) + 1)
    d = rb.discrepancy(model, prompt(max(LENGTHS))[None], heads=0, query_positions=list(ns - 1))
    assert hook_count(model) == 0
    assert d.dims == ("prompt", "layer", "head", "query")
    got = d.normalised_gap[0, 0, 0].numpy()
    want = np.array([closed_form(theta, int(n)) for n in ns])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-13)
    bound = np.minimum(1 - math.cos(theta), 1 - np.cos(2 * np.pi / (ns - OFFSET)))
    assert (got <= bound + 1e-12).all()
    raw = d.gap[0, 0, 0].numpy()
    np.testing.assert_allclose(raw, got * RHO_Q * RHO_K / math.sqrt(D_HEAD), rtol=1e-9)
    assert d.top_key[0, 0, 0].tolist() == (ns - 1 - OFFSET).tolist()
    assert (d.n_keys[0, 0] == torch.as_tensor(ns)).all()
    if theta == 0.05:  # a slow pair: the neighbour is the runner-up until it wraps (n ~ 126)
        short = ns < 100
        np.testing.assert_allclose(got[short], 1 - math.cos(theta), rtol=1e-9)
        assert got[-1] < 0.5 * (1 - math.cos(theta))


def test_index_head_falls_like_n_squared_content_head_does_not():
    """The known answer. Prompts of length n = 16, 32, 64, 128, 256 in one right-padded
    batch. Index head at the golden angle: the fitted log-log exponent of the normalised
    gap is -2.08 on these five lengths and -2.07 on every length 16..256 (the closed form's
    staircase around n^-2; derived, not fitted to: docs/method.md §7), and n^2 times the gap
    stays within [2, 2 pi^2 (n / (n - OFFSET))^2]. Content head: the gap is the same at
    every length (exponent 0), 1 - max cos(target, distractor), far from 0."""
    model, content = planted(GOLDEN)
    n_max = max(LENGTHS)
    tokens = torch.zeros(len(LENGTHS), n_max, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for b, n in enumerate(LENGTHS):
        tokens[b, :n], mask[b, :n] = prompt(n), 1
    d = rb.discrepancy(model, tokens, attention_mask=mask)
    assert hook_count(model) == 0
    assert d.dims == ("prompt", "layer", "head")
    assert d.query_pos[:, 0].tolist() == [n - 1 for n in LENGTHS]
    ns = np.array(LENGTHS, dtype=float)

    index = d.normalised_gap[:, 0, 0].numpy()
    exponent = slope(ns, index)
    assert exponent == pytest.approx(-2.08, abs=0.01)
    assert abs(exponent + 2) < 0.15
    assert (ns**2 * index >= 2).all()
    assert (ns**2 * index <= 2 * math.pi**2 * (ns / (ns - OFFSET)) ** 2).all()
    dense_n = np.arange(16, n_max + 1)
    dense = rb.discrepancy(model, tokens[-1:], heads=0, query_positions=list(dense_n - 1))
    dense_exponent = slope(dense_n, dense.normalised_gap[0, 0, 0].numpy())
    assert dense_exponent == pytest.approx(-2.07, abs=0.01)
    # a prompt of length n and the query n - 1 of a longer prompt see the same keys
    at = dense.normalised_gap[0, 0, 0][torch.as_tensor(LENGTHS) - 16]
    np.testing.assert_allclose(at.numpy(), index, rtol=1e-9)

    cont = d.normalised_gap[:, 0, 1].numpy()
    runner_up = max(0.0, float((content[2:] @ content[1]).max()))  # query token's key: 0
    np.testing.assert_allclose(cont, 1 - runner_up, rtol=1e-9)
    assert abs(slope(ns, cont)) < 1e-6
    assert cont.min() > 0.3
    assert index[-1] / index[0] < 0.01  # 16x the length: the Index gap is 1/300 of itself
    assert d.top_key[:, 0, 1].tolist() == [n // 2 for n in LENGTHS]


@pytest.fixture
def gemma2(bridge_factory):
    """Soft-capped logits, sliding-window layers and grouped-query attention."""
    return bridge_factory("gemma2")


def _model_scores(bridge, tokens, layer, mask):
    name = f"blocks.{layer}.attn.hook_attn_scores"
    _, cache = bridge.run_with_cache(tokens, names_filter=[name], attention_mask=mask)
    return cache[name]


def test_gap_is_the_top_two_of_the_model_scores(gemma2, gen):
    """On a padded batch of gemma2 (soft-cap, sliding window, GQA), at every query: the gap
    is the difference of the two largest attention scores the model itself computed, at
    the two keys reported; the normalised gap is the logit difference over |q| max|k|
    from the captured rotated queries and keys; the capture gives the same result."""
    tokens = torch.randint(3, VOCAB, (3, 12), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, 9:] = 0  # right padding
    mask[2, :4] = 0  # left padding
    spec = rb.RopeSpec.from_model(gemma2)
    d = rb.discrepancy(gemma2, tokens, query_positions="all", attention_mask=mask)
    assert hook_count(gemma2) == 0
    cap = rb.capture(gemma2, tokens, attention_mask=mask)
    for li, layer in enumerate(d.layers):
        ref = _model_scores(gemma2, tokens, layer, mask).double()  # [b, head, dest, src]
        attended = cap.key_mask(layer)  # the model's own mask (tests/frequency)
        s = ref.masked_fill(~attended[:, None], float("-inf"))
        top2 = s.topk(2, dim=-1).values
        ok = attended.sum(-1) >= 2  # [b, dest]
        want = (top2[..., 0] - top2[..., 1]).permute(0, 2, 1)  # [b, dest, head]
        got = d.gap[:, li].permute(0, 2, 1)
        torch.testing.assert_close(got[ok], want[ok], atol=2e-5, rtol=0)
        assert torch.isnan(got[~ok]).all()
        j1 = d.top_key[:, li].permute(0, 2, 1)[ok]
        j2 = d.second_key[:, li].permute(0, 2, 1)[ok]
        s_ok = s.permute(0, 2, 1, 3)[ok]  # [row, head, src]
        torch.testing.assert_close(
            s_ok.gather(-1, j1[..., None])[..., 0],
            top2.permute(0, 2, 1, 3)[ok][..., 0],
            atol=2e-5,
            rtol=0,
        )
        torch.testing.assert_close(
            s_ok.gather(-1, j2[..., None])[..., 0],
            top2.permute(0, 2, 1, 3)[ok][..., 1],
            atol=2e-5,
            rtol=0,
        )
        rq, rk = cap.rot_q[layer].double(), cap.rot_k[layer][:, :, list(spec.kv_map)].double()
        dots = torch.einsum("bihd,bjhd->bhij", rq, rk)
        k_max = torch.where(
            attended[:, None], rk.norm(dim=-1).permute(0, 2, 1)[:, :, None], 0.0
        ).amax(-1)
        den = rq.norm(dim=-1).permute(0, 2, 1) * k_max  # [b, head, dest]
        i1 = d.top_key[:, li].clamp_min(0)[..., None]
        i2 = d.second_key[:, li].clamp_min(0)[..., None]
        norm = ((dots.gather(-1, i1) - dots.gather(-1, i2))[..., 0] / den).permute(0, 2, 1)
        torch.testing.assert_close(
            d.normalised_gap[:, li].permute(0, 2, 1)[ok], norm[ok], atol=1e-5, rtol=1e-5
        )
        assert (d.normalised_gap[:, li].permute(0, 2, 1)[ok] >= 0).all()
        assert (d.normalised_gap[:, li].permute(0, 2, 1)[ok] <= 2).all()
        window = spec.sliding_windows[layer]
        if window is not None:  # only keys inside the window are compared
            assert int(d.n_keys[:, li].max()) == window
    from_capture = rb.discrepancy(cap, query_positions="all")
    for name in ("gap", "normalised_gap"):
        torch.testing.assert_close(getattr(from_capture, name), getattr(d, name), equal_nan=True)
    assert torch.equal(from_capture.top_key, d.top_key)


def test_rows_padding_exclusions_and_frames(gemma2, gen):
    """Rows with fewer than two keys are NaN (-1 for the missing keys); excluded keys
    never win; the frames have one row per (prompt, layer, head, query) / per head."""
    tokens = torch.randint(3, VOCAB, (2, 10), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, :3] = 0
    d = rb.discrepancy(gemma2, tokens, layers=1, heads=[0, 3], query_positions="all",
                       attention_mask=mask)  # fmt: skip
    assert d.layers == (1,)
    assert d.heads == (0, 3)
    assert d.gap.shape == (2, 1, 2, 10)
    assert torch.isnan(d.gap[0, 0, :, 0]).all()
    assert (d.top_key[0, 0, :, 0] == 0).all()
    assert (d.second_key[0, 0, :, 0] == -1).all()
    assert torch.isnan(d.gap[1, 0, :, :4]).all()  # padding queries, then the first token
    assert (d.top_key[1, 0, :, :3] == -1).all()
    assert not torch.isnan(d.gap[:, 0, :, 5:]).any()
    ex = rb.discrepancy(gemma2, tokens, layers=1, query_positions=[8, 9], exclude_keys=(8, 7))
    keys = torch.stack([ex.top_key, ex.second_key])
    assert not ((keys == 7) | (keys == 8)).any()
    assert ex.exclude_keys == (8, 7)
    df = d.to_frame()
    assert list(df.columns) == ["prompt", "layer", "head", "query_pos", "n_keys", "top_key",
                                "second_key", "gap", "normalised_gap"]  # fmt: skip
    assert len(df) == 2 * 1 * 2 * 10
    assert set(df["head"]) == {0, 3}
    assert set(df["layer"]) == {1}
    row = df[(df["prompt"] == 1) & (df["head"] == 3) & (df["query_pos"] == 7)].iloc[0]
    assert row.gap == pytest.approx(float(d.gap[1, 0, 1, 7]))
    assert row.n_keys == int(d.n_keys[1, 0, 7])
    hf = d.head_frame()
    assert list(hf[["layer", "head"]].itertuples(index=False, name=None)) == [(1, 0), (1, 3)]
    assert (hf.n_rows == (~torch.isnan(d.gap[:, 0])).sum((0, 2)).numpy()).all()
    last = rb.discrepancy(gemma2, tokens, attention_mask=mask)
    assert last.dims == ("prompt", "layer", "head")
    assert "query_pos" in last.to_frame().columns
    text = repr(last)
    assert text.startswith("Discrepancy: 2 prompt x 2 layer x 4 head\n")
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tokens": None}, r"tokens=None; expected \[prompt, pos\] token ids"),
        ({"tokens": torch.zeros(5, dtype=torch.long)}, r"shape \[batch, pos\]"),
        ({"heads": 9}, r"head 9 is out of range.*<= 3"),
        ({"heads": 1.0}, r"head=1.0 \(float\)"),
        ({"layers": [0, 5]}, r"layer 5 is out of range"),
        ({"query_positions": "first"}, r"query_positions='first'; options: 'last', 'all'"),
        ({"query_positions": [3, 3]}, r"lists position\(s\) \[3\] more than once"),
        ({"query_positions": 40}, r"query position\(s\) 40 out of range"),
        ({"exclude_keys": "everything"}, r"exclude_keys holds 'everything'"),
        ({"exclude_keys": "bos"}, r"exclude_keys='bos' but the model .* has no tokenizer"),
        ({"attention_mask": torch.ones(2, 3)}, r"attention_mask must be a tensor shaped like"),
    ],
)
def test_bad_inputs_are_refused_without_leaking_hooks(gemma2, kwargs, match):
    tokens = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    call = {"tokens": tokens, **kwargs}
    with pytest.raises(rb.RopeBehaviorError, match=match):
        rb.discrepancy(gemma2, call.pop("tokens"), **call)
    assert hook_count(gemma2) == 0


def test_bad_captures_and_models(gemma2):
    tokens = torch.randint(3, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    cap = rb.capture(gemma2, tokens, layers=[0])
    with pytest.raises(rb.RopeBehaviorError, match=r"a capture carries its own tokens"):
        rb.discrepancy(cap, tokens)
    with pytest.raises(rb.RopeBehaviorError, match=r"carries its own attention_mask"):
        rb.discrepancy(cap, attention_mask=torch.ones_like(tokens))
    with pytest.raises(rb.RopeBehaviorError, match=r"layer 1 was not captured"):
        rb.discrepancy(cap, layers=1)
    with pytest.raises(rb.RopeBehaviorError, match=r"names the BOS token.*exclude_keys=\(0,\)"):
        rb.discrepancy(cap, exclude_keys="auto")
    with pytest.raises(rb.RopeBehaviorError, match=r"expected a model, got the string"):
        rb.discrepancy("gpt2", tokens)
    assert hook_count(gemma2) == 0


def test_non_finite_queries_raise_inside_the_forward_without_leaking_hooks():
    """A NaN weight is found while the capture hooks are installed; the error names the
    layer and head, and no hook stays behind."""
    model, _ = planted(GOLDEN)
    with torch.no_grad():
        model.blocks[0].attn.W_Q[1, 7, 1] = float("nan")
    with pytest.raises(
        rb.RopeBehaviorError,
        match=r"non-finite values \(NaN\) at layer 0 in the queries: first at query head 1",
    ):
        rb.discrepancy(model, prompt(16)[None])
    assert hook_count(model) == 0
    model.train()
    with torch.no_grad():
        model.blocks[0].attn.W_Q[1, 7, 1] = 0.0
    d = rb.discrepancy(model, prompt(16)[None], heads=0)
    assert model.training  # run in eval mode, the flag restored
    assert d.normalised_gap[0, 0, 0] == pytest.approx(closed_form(GOLDEN, 16), rel=1e-9)
