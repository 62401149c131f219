"""The logit-based score (docs/method.md §8): planted heads, the exclusion bound per swap,
the softmax half equal to score_heads, and on the shipped LM its sign of s_pos - s_sym
beside the softmax score's."""

import pytest
import torch

import rope_behavior as rb
from rope_behavior.scoring.logit_swaps import logit_scores
from rope_behavior.scoring.sensitivity import score_sensitivity
from tests.models import VOCAB, hook_count
from tests.scoring.test_behavior import toy
from tests.scoring.test_discrepancy import GOLDEN, planted, prompt


def test_planted_heads():
    """Index head (content-free keys): logits never move with content, (1, 0); content head
    (NoPE pairs): each content keeps its logit, (0, 1)."""
    model, _ = planted(GOLDEN)
    ls = logit_scores(model, prompt(25)[None], block_size=3, exclude_keys="none")
    assert hook_count(model) == 0
    assert float(ls.s_pos[0, 0, 0]) == pytest.approx(1.0, abs=1e-9)
    assert float(ls.s_sym[0, 0, 0]) == pytest.approx(0.0, abs=1e-9)
    assert float(ls.s_pos[0, 0, 1]) == pytest.approx(0.0, abs=1e-9)
    assert float(ls.s_sym[0, 0, 1]) == pytest.approx(1.0, abs=1e-9)


def test_random_model_bound_and_softmax_half(gen):
    model = toy()
    toks = torch.randint(3, VOCAB, (3, 33), generator=gen)
    ls = logit_scores(model, toks, block_size=4, exclude_keys="none", seed=1)
    assert hook_count(model) == 0
    hs = rb.score_heads(model, toks, block_size=4, exclude_keys="none", seed=1)
    torch.testing.assert_close(ls.softmax.s_pos, hs.s_pos, rtol=0, atol=0)
    assert ls.swaps == hs.swaps
    used = ls.weight > 0
    assert bool(used.any(-1).all())
    # triangle inequality: sep <= delta_pos + delta_sym, so pos_swap + sym_swap <= 1
    assert bool((ls.separation <= ls.delta_pos + ls.delta_sym + 1e-9).all())
    assert bool(((ls.pos_swap + ls.sym_swap)[used] <= 1 + 1e-9).all())
    torch.testing.assert_close(ls.weight.sum(-1), torch.ones_like(ls.s_pos))
    hf = ls.head_frame()
    assert len(hf) == 4
    assert {"logit_difference", "softmax_difference", "same_sign"} <= set(hf)
    assert all(len(line) <= 80 for line in repr(ls).splitlines())


@pytest.fixture(scope="module")
def lm_inputs():
    model = rb.load_shipped_lm()
    tokens, mask = rb.tokenize_prompts(model, rb.heldout_texts(32), context=128)
    return model, tokens, mask


def test_shipped_lm_sign_beside_the_softmax_score(lm_inputs):
    """The known answer of issue 23: on the shipped LM's identifiable heads the logit and
    softmax scores agree in sign of s_pos - s_sym, or the disagreement is explained. The
    per-key, unweighted logit score (the default) disagrees on some heads (measured: 3 of
    11 at block_size=8: layer 0 heads 2, 3 and layer 2 head 3, all with |logit s_pos -
    s_sym| < 0.1); each is explained by one of the two things the softmax score does and
    the logit score does not: it weighs keys by their attention (``weighting="attention"``)
    and reads block means (``resolution="block"``). With both, every identifiable head
    agrees."""
    model, tokens, mask = lm_inputs
    frames = {
        (w, r): logit_scores(model, tokens, attention_mask=mask, weighting=w, resolution=r)
        .head_frame()
        .set_index(["layer", "head"])
        for w in ("uniform", "attention")
        for r in ("key", "block")
    }
    base = frames["uniform", "key"]
    ident = base["identifiable"]
    assert ident.sum() >= 10  # the comparison rests on most of the 12 heads
    agree = {k: f["same_sign"][ident] for k, f in frames.items()}
    assert agree["attention", "block"].all()
    explained = agree["attention", "key"] | agree["uniform", "block"]
    assert explained.all()


def test_hooked_keys_are_scored_as_the_model_runs(gen):
    """A frequency ablation of layer 0's keys: logit_scores and score_sensitivity rebuild
    the moved keys through it (keys mode's chain), as score_heads does."""
    model = toy()
    toks = torch.randint(3, VOCAB, (2, 33), generator=gen)
    ablate = rb.FrequencyAblation(layer=0, heads=(0,), pairs=range(2), target="k", mode="zero")
    with rb.intervened(model, ablate):
        ls = logit_scores(model, toks, block_size=8, exclude_keys="none")
        hs = rb.score_heads(model, toks, block_size=8, exclude_keys="none")
        sens = score_sensitivity(model, toks, block_sizes=(8,), taus=(0.05,), exclude_keys="none")
    assert hook_count(model) == 0
    plain = rb.score_heads(model, toks, block_size=8, exclude_keys="none")
    assert not torch.allclose(hs.s_pos, plain.s_pos)  # the ablation changes the scores
    torch.testing.assert_close(ls.softmax.s_pos, hs.s_pos, rtol=0, atol=0)
    torch.testing.assert_close(sens.s_pos[0, 0], hs.s_pos.nanmean(0), rtol=0, atol=1e-12)
    used = ls.weight > 0
    assert bool(((ls.pos_swap + ls.sym_swap)[used] <= 1 + 1e-9).all())


@pytest.mark.parametrize("family", ["llama_gqa", "gptj", "gpt_neox"])
def test_swap_logits_match_the_exclusion_table(bridge_factory, family, gen):
    """delta_pos, delta_sym and sep of a swap recomputed from exclusion_check's table of
    the swap's 6 keys (content i rotated at position j, its own rotation code)."""
    model = bridge_factory(family)
    toks = torch.randint(3, VOCAB, (2, 10), generator=gen)
    ls = logit_scores(model, toks, block_size=3, exclude_keys="none")
    assert ls.swaps == ((0, 1), (0, 2), (1, 2))
    q = 9
    for row in range(2):
        for si, (a, c) in enumerate(ls.swaps):
            blk_a = [q - 3 * (a + 1) + t for t in range(3)]
            blk_c = [q - 3 * (c + 1) + t for t in range(3)]
            for layer in range(2):
                for head in range(4):
                    ex = rb.exclusion_check(model, toks, layer=layer, head=head, prompt=row,
                                            key_positions=blk_a + blk_c)  # fmt: skip
                    t = ex.table  # [content, position]; keys 0-2 block a, 3-5 block c
                    src = [3, 4, 5, 0, 1, 2]
                    u = t.diagonal()
                    u_new = t[src, range(6)]
                    u_f = u[src]
                    got = (ls.delta_pos, ls.delta_sym, ls.separation)
                    want = ((u_new - u).norm(), (u_new - u_f).norm(), (u - u_f).norm())
                    for g, w in zip(got, want):
                        assert float(g[row, layer, head, si]) == pytest.approx(
                            float(w), rel=1e-4, abs=1e-5
                        )
