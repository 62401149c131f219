"""Identifiability that sees attention mass, block alignment, exclusions, uncertainty."""

import math

import pytest
import torch

import rope_behavior.scoring.scorer as bh
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.toy import toy_model
from tests.models import hook_count

V = 50


def planted_previous_token_head(amp: float = 6.0):
    """One layer, one head, content-free q/k (biases only): the rotated key at j is
    ``R((j + 1) omega) u`` and the query at n is ``R(n omega) u``, so every pair peaks at
    ``j = n - 1``: a previous-token head whatever the tokens."""
    model = toy_model(d_vocab=V, n_ctx=80, n_layers=1, n_heads=1, d_head=16, seed=0).eval()
    attn = model.blocks[0].attn
    omega = model.rotary_omega[0].double()
    n_pairs = omega.shape[0]
    with torch.no_grad():
        attn.W_Q.zero_()
        attn.W_K.zero_()
        u = torch.zeros(16, dtype=torch.float64)
        u[:n_pairs] = amp  # pair p: dims (p, p + n_pairs) = (amp, 0)
        c, s = torch.cos(omega), torch.sin(omega)
        k = torch.zeros(16, dtype=torch.float64)
        k[:n_pairs], k[n_pairs:] = amp * c, amp * s  # rotated by +omega
        attn.b_Q.copy_(u.float()[None])
        attn.b_K.copy_(k.float()[None])
    return model


def _previous_token_score(model, tokens):
    """TransformerLens head_detector's previous-token score: mean attention on key n-1."""
    got = {}
    with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: got.setdefault("p", x))]):
        model(tokens)
    p = got["p"][:, 0]  # [batch, dest, src]
    return float(p.detach().diagonal(offset=-1, dim1=-2, dim2=-1).mean())


@pytest.fixture
def tokens66():
    return torch.randint(0, V, (4, 66), generator=torch.Generator().manual_seed(0))


def test_planted_previous_token_head_is_a_previous_token_head(tokens66):
    model = planted_previous_token_head()
    assert _previous_token_score(model, tokens66) > 0.5


def test_end_alignment_scores_the_previous_token_head_positional(tokens66):
    model = planted_previous_token_head()
    hs = bh.score_heads(model, tokens66, block_size=8, n_swaps=16, align="end")
    assert bool((hs.s_pos >= 0.95).all()), hs.s_pos
    assert bool(hs.identifiable.all())
    assert bool((hs.swapped_mass > 0.3).all())
    assert hook_count(model) == 0


def test_start_alignment_leaves_the_previous_token_out_and_says_so(tokens66):
    # query n = 65: keys 0..63 form 8 blocks, key 64 = n - 1 is a leftover key
    model = planted_previous_token_head()
    hs = bh.score_heads(model, tokens66, block_size=8, n_swaps=16, align="start")
    assert bool((hs.leftover_mass > 0.5).all())
    assert bool((hs.swapped_mass < 0.01).all())  # measured 0.003
    assert not bool(hs.identifiable.any())
    # the separation alone would have called it identifiable: it is scale-free
    assert bool((hs.separation >= hs.identifiability_threshold).any())


def test_masses_add_up(tokens66):
    model = planted_previous_token_head(amp=2.0)
    for align in ("end", "start"):
        hs = bh.score_heads(model, tokens66, block_size=8, align=align, query_positions="all")
        total = hs.block_mass + hs.leftover_mass
        assert bool((total <= 1 + 1e-9).all())
        # the rest is the query's own key
        assert bool((total >= 0).all())
        assert bool((hs.swapped_mass <= hs.block_mass + 1e-9).all())


def test_end_aligned_blocks_end_at_the_query():
    # 20 tokens, query 19, block 4: end alignment tiles keys 3..18 back from 18, key 0..2 left over
    model = planted_previous_token_head(amp=2.0)
    toks = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(1))
    hs = bh.score_heads(model, toks, block_size=4, align="end", n_swaps=None, exclude_keys="none")
    assert hs.n_block_pairs == math.comb(4, 2)
    # leftover keys 0..2 exactly: compare with the pattern
    got = {}
    with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: got.setdefault("p", x))]):
        model(toks)
    row = got["p"][0, 0, 19].detach().double()
    assert float(hs.leftover_mass[0, 0, 0]) == pytest.approx(float(row[:3].sum()), abs=1e-6)
    assert float(hs.block_mass[0, 0, 0]) == pytest.approx(float(row[3:19].sum()), abs=1e-6)


def test_blocks_never_straddle_an_excluded_key():
    model = planted_previous_token_head(amp=2.0)
    toks = torch.randint(0, V, (1, 21), generator=torch.Generator().manual_seed(1))
    # exclude key 10: end alignment from the query at 20 tiles keys 11..18 (two blocks of 4,
    # keys 19 is... ) -- check no block holds key 10 via the masses
    hs = bh.score_heads(model, toks, block_size=4, align="end", n_swaps=None, exclude_keys=(10,))
    assert bool(hs.excluded[0, 10])
    assert int(hs.excluded.sum()) == 1
    got = {}
    with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: got.setdefault("p", x))]):
        model(toks)
    row = got["p"][0, 0, 20].detach().double()
    row = row.clone()
    row[10] = 0
    row = row / row.sum()
    # run after 10: keys 11..19 (9 keys) -> blocks {16..19}, {12..15}, leftover 11;
    # run before 10: keys 0..9 -> blocks {6..9}, {2..5}, leftover 0, 1
    assert float(hs.leftover_mass[0, 0, 0]) == pytest.approx(float(row[[0, 1, 11]].sum()), abs=1e-6)
    assert hs.n_block_pairs == math.comb(4, 2)


def test_bos_is_excluded_by_default_when_the_model_prepends_it():
    model = planted_previous_token_head(amp=2.0)
    model.bos_token_id = 7  # the native adapter reads it
    toks = torch.randint(8, V, (2, 40), generator=torch.Generator().manual_seed(1))
    toks[:, 0] = 7
    hs = bh.score_heads(model, toks, block_size=4)
    assert hs.excluded[:, 0].all()
    assert int(hs.excluded.sum()) == 2
    assert hs.start.tolist() == [1, 1]
    none = bh.score_heads(model, toks, block_size=4, exclude_keys="none")
    assert int(none.excluded.sum()) == 0
    del model.bos_token_id
    with pytest.raises(RopeBehaviorError, match="exclude_keys='bos' but the model states no BOS"):
        bh.score_heads(model, toks, block_size=4, exclude_keys="bos")


def test_all_block_pairs_when_few_and_the_count_when_drawn():
    model = planted_previous_token_head(amp=2.0)
    toks = torch.randint(0, V, (2, 66), generator=torch.Generator().manual_seed(1))
    few = bh.score_heads(model, toks, block_size=8)  # 8 blocks: 28 pairs, all used
    assert len(few.swaps) == few.n_block_pairs == 28
    many = bh.score_heads(model, toks, block_size=2)  # 32 blocks: 496 pairs, 64 drawn
    assert many.n_block_pairs == 496
    assert len(many.swaps) == 64
    assert "64 of 496 block pairs" in repr(many)
    summary = many.mean()
    df = summary.to_frame()
    assert {"n_swaps", "n_block_pairs", "s_pos_lo", "s_pos_hi", "s_pos_se"} <= set(df.columns)
    assert int(df.n_swaps.iloc[0]) == 64
    assert int(df.n_block_pairs.iloc[0]) == 496


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_prompts():
    model = toy_model(d_vocab=V, n_ctx=80, n_layers=1, n_heads=2, d_head=16, seed=3).eval()
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(4.0)
        model.blocks[0].attn.W_K.mul_(4.0)
    gen = torch.Generator().manual_seed(0)
    few = bh.score_heads(model, torch.randint(0, V, (4, 50), generator=gen), block_size=4).mean()
    lots = bh.score_heads(model, torch.randint(0, V, (64, 50), generator=gen), block_size=4).mean()
    for s in (few, lots):
        assert bool((s.s_pos_lo <= s.s_pos_mean + 1e-9).all() & (s.s_pos_mean <= s.s_pos_hi + 1e-9).all())
        assert bool((s.s_sym_lo <= s.s_sym_hi).all())
    assert float(lots.s_pos_se.mean()) < float(few.s_pos_se.mean())
    # deterministic for a seed
    again = bh.score_heads(model, torch.randint(0, V, (4, 50), generator=torch.Generator().manual_seed(0)),
                           block_size=4).mean()
    torch.testing.assert_close(again.s_pos_lo, few.s_pos_lo)


def test_bootstrap_over_swaps_alone_matches_a_direct_resampling():
    """One prompt: the interval comes from resampling swaps only; check the SE against a
    direct loop over resampled swap sets."""
    model = toy_model(d_vocab=V, n_ctx=80, n_layers=1, n_heads=1, d_head=16, seed=5).eval()
    with torch.no_grad():
        model.blocks[0].attn.W_Q.mul_(4.0)
        model.blocks[0].attn.W_K.mul_(4.0)
    toks = torch.randint(0, V, (1, 50), generator=torch.Generator().manual_seed(2))
    hs = bh.score_heads(model, toks, block_size=4, n_swaps=None)
    s = hs.mean(n_boot=4000, seed=1)
    w, pos = hs.swap_weight[0, 0, 0], hs.pos_swap[0, 0, 0]
    gen = torch.Generator().manual_seed(9)
    n_s = w.shape[0]
    vals = []
    for _ in range(4000):
        idx = torch.randint(n_s, (n_s,), generator=gen)
        vals.append(float((w[idx] * torch.nan_to_num(pos[idx])).sum() / w[idx].sum()))
    direct = torch.tensor(vals).std()
    assert float(s.s_pos_se[0, 0]) == pytest.approx(float(direct), rel=0.1)


@pytest.mark.parametrize(("kw", "match"), [
    ({"align": "middle"}, r"align='middle'; options: 'end', 'start'"),
    ({"identifiability_threshold": "high"}, r"identifiability_threshold='high' \(str\); expected a number"),
    ({"min_swapped_mass": 2.0}, r"min_swapped_mass=2.0; expected a number in \[0, 1\]"),
    ({"n_swaps": "many"}, r"n_swaps='many'; options: 'auto'"),
    ({"exclude_keys": 1.5}, r"exclude_keys=1.5; options"),
])
def test_bad_input(kw, match):
    model = planted_previous_token_head(amp=2.0)
    toks = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(1))
    with pytest.raises(RopeBehaviorError, match=match):
        bh.score_heads(model, toks, block_size=4, **kw)
    assert hook_count(model) == 0


def test_training_mode_is_scored_in_eval_mode_and_restored():
    model = planted_previous_token_head(amp=2.0)
    model.blocks[0].attn.drop = torch.nn.Dropout(0.5)  # would make scores random in training
    toks = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(1))
    ref = bh.score_heads(model.eval(), toks, block_size=4)
    model.train()
    got = bh.score_heads(model, toks, block_size=4)
    torch.testing.assert_close(got.s_pos, ref.s_pos, atol=0, rtol=0)
    assert model.training
    assert model.blocks[0].attn.drop.training
