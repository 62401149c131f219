"""Positional / symbolic head scores: known answers, keys vs tokens, brute force, bad input."""

import math

import pytest
import torch

import rope_behavior.scoring.scorer as bh
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.model.spec import RopeSpec
from rope_behavior.qk.captured import capture
from rope_behavior.rope.pairs import rotate
from rope_behavior.tasks.toy import toy_model
from tests.models import VOCAB, hook_count


def toy(n_layers=2, seed=0, **kw):
    model = toy_model(d_vocab=VOCAB, n_ctx=64, n_layers=n_layers, n_heads=2, d_head=8, seed=seed, **kw)
    with torch.no_grad():  # random init leaves logits O(0.1); make rows clearly non-uniform
        for block in model.blocks:
            block.attn.W_Q.mul_(4.0)
            block.attn.W_K.mul_(4.0)
    return model


@pytest.fixture
def toks(gen):
    return torch.randint(3, VOCAB, (3, 33), generator=gen)


# -- the pure score -----------------------------------------------------------------------


def test_hand_computed_three_blocks():
    row = torch.tensor([0.3, 0.1, 0.2, 0.1, 0.1, 0.05, 0.15], dtype=torch.float64)  # query at key 6
    swapped = torch.stack([
        torch.tensor([0.2, 0.1, 0.3, 0.1, 0.1, 0.05, 0.15], dtype=torch.float64),  # swap (0, 1): content followed
        row.clone(),  # swap (0, 2): nothing moved
    ])
    got = bh.block_swap_scores(row, swapped, [(0, 1), (0, 2)], block_size=2, tau=0.05)
    # block means d = (0.2, 0.15, 0.075)
    pos1, sym1 = (0.15 * 0.2 + 0.2 * 0.15) / (0.2**2 + 0.15**2), 1.0
    pos2, sym2 = 1.0, 2 * 0.2 * 0.075 / (0.2**2 + 0.075**2)
    w1, w2 = math.exp(0.05 / 0.05), math.exp(0.125 / 0.05)
    a1, a2 = w1 / (w1 + w2), w2 / (w1 + w2)
    assert float(got.s_pos) == pytest.approx(a1 * pos1 + a2 * pos2, abs=1e-6)
    assert float(got.s_sym) == pytest.approx(a1 * sym1 + a2 * sym2, abs=1e-6)
    torch.testing.assert_close(got.weight, torch.tensor([a1, a2], dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(got.pos_swap, torch.tensor([pos1, pos2], dtype=torch.float64), atol=1e-9, rtol=0)


def test_pure_score_with_start_and_leftover():
    row = torch.tensor([0.5, 0.1, 0.1, 0.2, 0.05, 0.05])  # start=1, b=2: blocks {1,2},{3,4}; key 5 = query
    sw = torch.tensor([[0.5, 0.2, 0.05, 0.1, 0.1, 0.05]])
    got = bh.block_swap_scores(row, sw[:, None].squeeze(1)[None].squeeze(0), [(1, 0)], block_size=2, start=1)
    assert float(got.s_sym) == pytest.approx(1.0, abs=1e-12)  # (d_a, d_c) = (.1, .125) -> (.125, .1)
    with pytest.raises(RopeBehaviorError, match="fewer than two blocks"):
        bh.block_swap_scores(row, sw, [(0, 1)], block_size=3, start=1)
    with pytest.raises(RopeBehaviorError, match="refers to block 2"):
        bh.block_swap_scores(row, sw, [(0, 2)], block_size=2, start=1)


# -- known answers on models ----------------------------------------------------------------


def _constant_keys(x, hook=None):
    return x[:, :1].expand_as(x).clone()


@pytest.mark.parametrize("mode", ["tokens"])
def test_identical_keys_are_exactly_positional(toks, mode):
    # tokens mode re-runs the hooked model, so only layer 0 keeps the last query unchanged
    # (later layers' queries see the swapped tokens through attention). Keys mode refuses a
    # key-editing hook it does not know (tests/scoring/test_behavior_hooks.py).
    model = toy()
    hooks = [(f"blocks.{i}.attn.hook_k", _constant_keys) for i in range(2)]
    with model.hooks(fwd_hooks=hooks):
        hs = bh.score_heads(model, toks, mode=mode, block_size=4, n_swaps=None, exclude_keys=(0,),
                            layers=None if mode == "keys" else [0])
    assert hook_count(model) == 0
    nonuniform = hs.distance_from_uniform > 1e-3
    assert bool(nonuniform.all())
    torch.testing.assert_close(hs.s_pos, torch.ones_like(hs.s_pos), atol=1e-6, rtol=0)
    assert bool((hs.s_sym < 1 - 1e-4).any())


@pytest.mark.parametrize("mode", ["keys", "tokens"])
def test_nope_head_is_exactly_symbolic(toks, mode):
    model = toy(n_layers=1)
    model.rotary_omega.zero_()
    hs = bh.score_heads(model, toks, mode=mode, block_size=4, n_swaps=12, query_positions="all")
    assert RopeSpec.from_model(model).omega_source == ("nope",)
    torch.testing.assert_close(hs.s_sym, torch.ones_like(hs.s_sym), atol=1e-6, rtol=0)
    assert bool((hs.s_pos < 1 - 1e-4).any())
    assert bool(hs.identifiable.any())


def test_uniform_head_scores_one_one_and_is_flagged(toks):
    model = toy(n_layers=1)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.zero_()
        model.blocks[0].attn.b_Q.zero_()
    hs = bh.score_heads(model, toks, block_size=4, exclude_keys=(0,))
    torch.testing.assert_close(hs.s_pos, torch.ones_like(hs.s_pos), atol=1e-12, rtol=0)
    torch.testing.assert_close(hs.s_sym, torch.ones_like(hs.s_sym), atol=1e-12, rtol=0)
    assert not bool(hs.identifiable.any())
    torch.testing.assert_close(hs.entropy, torch.ones_like(hs.entropy), atol=1e-9, rtol=0)
    assert float(hs.distance_from_uniform.abs().max()) < 1e-9


@pytest.mark.parametrize("kw", [
    {},
    {"query_positions": "all", "exclude_keys": (0,)},
    {"per_pair": True, "query_positions": [20, 32]},
])
@pytest.mark.parametrize("which", ["toy", "llama_gqa"])
def test_keys_and_tokens_agree_at_layer_zero(bridge_factory, toks, kw, which):
    # Layer 0 of a model without absolute positions sees the token embedding alone, so the
    # unrotated key at j is a function of token j; queries (and the query's own key) do not move.
    model = toy() if which == "toy" else bridge_factory(which)
    args = dict(block_size=4, n_swaps=10, layers=[0], seed=3, **kw)
    k = bh.score_heads(model, toks, mode="keys", **args)
    args["seed"] = 3
    t = bh.score_heads(model, toks, mode="tokens", sequences_per_forward=7, **args)
    assert k.swaps == t.swaps
    assert k.query_positions == t.query_positions
    for name in ("s_pos", "s_sym", "separation", "entropy", "mass_moved", "swap_weight"):
        torch.testing.assert_close(getattr(k, name), getattr(t, name), atol=1e-5, rtol=0, equal_nan=True)
    assert hook_count(model) == 0


def _brute_force(model, tokens, layer, swaps, block_size, exclude=(), per_pair_p=None, align="start"):
    """Swapped rows by the definition: permute unrotated keys, re-rotate, full softmax."""
    cap = capture(model, tokens, layers=[layer])
    spec = cap.spec
    q, k, cos, sin = cap.rot_q[layer], cap.k[layer], cap.cos[layer], cap.sin[layer]
    n = tokens.shape[1]
    allowed = cap.key_mask(layer)[:, -1].clone()
    allowed[:, list(exclude)] = False
    start = min(set(range(n)) - set(exclude))  # sliding windows do not move the start

    def row(keys_rot):
        kh = keys_rot[:, :, list(spec.kv_map)]
        lg = torch.einsum("bhd,bjhd->bhj", q[:, -1].double(), kh.double()) / spec.attn_scales[layer]
        cap_ = spec.logit_softcaps[layer]
        if cap_ is not None:
            lg = cap_ * torch.tanh(lg / cap_)
        return torch.softmax(lg.masked_fill(~allowed[:, None], float("-inf")), -1)

    base = row(cap.rot_k[layer])
    rows = []
    m = (n - 1 - start) // block_size
    first = start if align == "start" else n - 1 - m * block_size  # blocks tile back from n - 1

    def block(i):  # end alignment numbers blocks back from the query
        i = i if align == "start" else m - 1 - i
        return torch.arange(first + i * block_size, first + (i + 1) * block_size)

    order = [(a, c) if align == "start" else (m - 1 - a, m - 1 - c) for a, c in swaps]
    for a, c in swaps:
        perm = torch.arange(n)
        pa, pc = block(a), block(c)
        perm[pa], perm[pc] = pc, pa
        rows.append(row(rotate(k[:, perm], cos, sin, spec.pair_layout)))
    return bh.block_swap_scores(base, torch.stack(rows, -2), order, block_size=block_size, start=first)


@pytest.mark.parametrize("family", ["llama_gqa", "gemma2", "phi", "gptj", "qwen3"])
@pytest.mark.parametrize("align", ["start", "end"])
def test_keys_mode_matches_brute_force(bridge_factory, toks, family, align):
    model = bridge_factory(family)
    swaps = [(0, 1), (2, 5), (1, 6), (3, 4)]
    hs = bh.score_heads(model, toks, block_size=4, swaps=swaps, exclude_keys=(0,), align=align)
    for layer in range(2):
        ref = _brute_force(model, toks, layer, swaps, 4, exclude=(0,), align=align)
        torch.testing.assert_close(hs.s_pos[:, layer], ref.s_pos, atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(hs.s_sym[:, layer], ref.s_sym, atol=1e-6, rtol=0, equal_nan=True)
    assert hook_count(model) == 0


def test_padding_is_excluded_and_sets_start(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    mask = torch.ones_like(toks)
    mask[0, :3] = 0  # left padding on prompt 0
    hs = bh.score_heads(model, toks, attention_mask=mask, block_size=4, n_swaps=5)
    assert hs.start.tolist() == [3, 0, 0]
    assert bool(torch.isfinite(hs.s_pos).all())


# -- shapes, frames, summaries --------------------------------------------------------------


def test_shapes_frames_and_mean(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    hs = bh.score_heads(model, toks, block_size=4, n_swaps=6, per_pair=True, query_positions=[24, 32])
    spec = RopeSpec.from_model(model)
    assert hs.s_pos.shape == (3, 2, 4, 2, spec.n_pairs)
    assert hs.mass_moved.shape == (3, 2, 4, 2, spec.n_pairs, 6)
    df = hs.to_frame()
    assert list(df.columns[:5]) == ["prompt", "layer", "head", "query_pos", "pair"]
    assert len(df) == hs.s_pos.numel()
    assert set(df.query_pos) == {24, 32}
    summary = hs.mean()
    assert summary.s_pos_mean.shape == (2, 4, 2, spec.n_pairs)
    torch.testing.assert_close(summary.s_pos_mean, hs.s_pos.mean(0))
    assert len(summary.to_frame()) == summary.s_pos_mean.numel()
    one = bh.score_heads(model, toks, block_size=4, n_swaps=6, layers=[1])
    assert one.s_pos.shape == (3, 1, 4)
    assert one.layers == (1,)
    assert one.to_frame()["query_pos"].eq(32).all()
    assert bool(((one.s_pos >= 0) & (one.s_pos <= 1)).all())
    torch.testing.assert_close(one.swap_weight.sum(-1), torch.ones(3, 1, 4, dtype=torch.float64))


def test_swaps_are_drawn_with_the_generator(bridge_factory, toks):
    model = bridge_factory("llama_gqa")
    a = bh.score_heads(model, toks, block_size=4, n_swaps=5, seed=1)
    b = bh.score_heads(model, toks, block_size=4, n_swaps=5, seed=1)
    assert a.swaps == b.swaps
    assert len(set(a.swaps)) == 5
    assert all(0 <= x < y < 8 for x, y in a.swaps)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kw", "match"), [
    ({"mode": "both"}, r"mode='both'; options: 'keys', 'tokens'"),
    ({"block_size": 17}, r"3 of 3 prompts too short to score: prompt 0 \(33 tokens, needs 35\)"),
    ({"exclude_keys": tuple(range(33))}, "all keys excluded"),
    ({"n_swaps": 29}, r"more swaps requested \(n_swaps=29\) than block pairs exist: 8 blocks give 28"),
    ({"swaps": [(0, 8)]}, "refers to block 8"),
    ({"swaps": [(1, 1)]}, "two different block indices"),
    ({"query_positions": 33}, "out of range"),
    ({"query_positions": "first"}, "options: 'last', 'all'"),
    ({"query_positions": [5]}, r"prompt 0 \(fewer than 8 keys that can move before position\(s\) \[5\]\)"),
    ({"exclude_keys": (40,)}, r"expected key positions in \[0, 32\]"),
    ({"tau": 0.0}, "tau=0.0"),
])
def test_bad_input(bridge_factory, toks, kw, match):
    model = bridge_factory("llama_gqa")
    args = {"block_size": 4, **kw}
    with pytest.raises(RopeBehaviorError, match=match):
        bh.score_heads(model, toks, **args)
    assert hook_count(model) == 0


@pytest.mark.parametrize("mode", ["keys", "tokens"])
def test_nan_rows_raise_and_leave_no_hook(toks, mode):
    model = toy()

    def poison(x, hook=None):
        return x.clone().fill_(float("nan"))

    with (model.hooks(fwd_hooks=[("blocks.1.attn.hook_rot_q", poison)]),
          pytest.raises(RopeBehaviorError, match="NaN/inf attention logits at layer 1")):
        bh.score_heads(model, toks, mode=mode, block_size=4)
    assert hook_count(model) == 0


def test_nan_in_one_later_forward_still_raises(toks):
    """Tokens mode checks non-finite logits once at the end: a NaN met only in the third of
    several forwards (one swapped variant batch) must still raise, naming its layer."""
    model = toy()
    calls = []

    def poison_third(x, hook=None):
        calls.append(1)
        return x.clone().fill_(float("nan")) if len(calls) == 3 else x

    with (model.hooks(fwd_hooks=[("blocks.1.attn.hook_rot_q", poison_third)]),
          pytest.raises(RopeBehaviorError, match="NaN/inf attention logits at layer 1")):
        bh.score_heads(model, toks, mode="tokens", block_size=4, sequences_per_forward=toks.shape[0])
    assert len(calls) > 3
    assert hook_count(model) == 0
