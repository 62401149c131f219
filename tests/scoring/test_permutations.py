"""The exact all-permutations score (docs/method.md §8): its transpositions are the swap
score's swaps, two blocks give the swap score itself, planted positional / symbolic heads
score 1 on their side, bad input is refused."""

import pytest
import torch

from rope_behavior import FrequencyAblation, intervened
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.permutations import permutation_scores
from tests.models import VOCAB, hook_count
from tests.scoring.test_behavior import toy
from tests.scoring.test_discrepancy import GOLDEN, planted, prompt


@pytest.fixture
def toks(gen):
    return torch.randint(3, VOCAB, (3, 33), generator=gen)


def test_transpositions_are_the_swaps(toks):
    model = toy().double()  # float64 keys mode: the swap score agrees to rounding
    ps = permutation_scores(model, toks, block_size=4, n_blocks=4, exclude_keys="none")
    assert hook_count(model) == 0
    assert ps.n_blocks == 4
    assert ps.permutations.shape == (23, 4)
    assert ps.swap.swaps == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    trans = ps.transpositions.nonzero().flatten()
    assert len(trans) == 6
    for p in trans.tolist():
        a, c = (ps.permutations[p] != torch.arange(4)).nonzero().flatten().tolist()
        s = ps.swap.swaps.index((a, c))
        torch.testing.assert_close(ps.pos_perm[..., p], ps.swap.pos_swap[..., s], rtol=0, atol=1e-9)
        torch.testing.assert_close(ps.sym_perm[..., p], ps.swap.sym_swap[..., s], rtol=0, atol=1e-9)
    # the weights restricted to the transpositions and renormalised are the swap weights
    order = [ps.swap.swaps.index(tuple((ps.permutations[p] != torch.arange(4)).nonzero().flatten().tolist()))
             for p in trans.tolist()]  # fmt: skip
    w = ps.weight[..., trans]
    torch.testing.assert_close(w / w.sum(-1, keepdim=True), ps.swap.swap_weight[..., order],
                               rtol=0, atol=1e-9)  # fmt: skip
    df = ps.to_frame()
    assert len(df) == 3 * 2 * 2
    assert {"s_pos", "swap_s_pos", "identifiable"} <= set(df.columns)
    assert all(len(line) <= 80 for line in repr(ps).splitlines())


def test_two_blocks_give_the_swap_score(toks):
    ps = permutation_scores(toy().double(), toks, block_size=8, n_blocks=2, exclude_keys="none")
    assert ps.permutations.tolist() == [[1, 0]]
    torch.testing.assert_close(ps.s_pos, ps.swap.s_pos, rtol=0, atol=1e-9)
    torch.testing.assert_close(ps.s_sym, ps.swap.s_sym, rtol=0, atol=1e-9)


def test_planted_heads_score_one_on_their_side():
    """The planted Index head (content-free keys) is positional under every permutation,
    the content head (NoPE pairs) symbolic under every one."""
    model, _ = planted(GOLDEN)
    tokens = prompt(25)[None]  # target at 12: block 3 of the 8 blocks of 3 before the query
    ps = permutation_scores(model, tokens, block_size=3, n_blocks=5, exclude_keys="none")
    assert len(ps.permutations) == 119
    assert float(ps.s_pos[0, 0, 0]) == pytest.approx(1.0, abs=1e-9)
    assert float(ps.s_sym[0, 0, 1]) == pytest.approx(1.0, abs=1e-9)
    used = ps.weight > 0
    assert bool(torch.allclose(ps.pos_perm[0, 0, 0][used[0, 0, 0]], torch.tensor(1.0).double()))
    assert bool(torch.allclose(ps.sym_perm[0, 0, 1][used[0, 0, 1]], torch.tensor(1.0).double()))


def test_bad_input_is_refused(toks):
    model = toy()
    with pytest.raises(RopeBehaviorError, match=r"n_blocks=8: .*2 <= k <= 7 blocks"):
        permutation_scores(model, toks, block_size=4, n_blocks=8, exclude_keys="none")
    with pytest.raises(RopeBehaviorError, match=r"n_blocks=5: .*\(4 here\)"):
        permutation_scores(model, toks, block_size=8, n_blocks=5, exclude_keys="none")
    with pytest.raises(RopeBehaviorError, match="too short to score"):
        permutation_scores(model, toks, block_size=17, exclude_keys="none")
    assert hook_count(model) == 0


@pytest.mark.parametrize("family", ["llama_gqa", "gemma2", "gpt_neox", "gptj"])
def test_transpositions_are_the_swaps_across_families(bridge_factory, family, gen):
    """GQA, soft-capping, partial rotary, interleaved pairs: the enumeration's own key
    rotation reproduces keys mode's swaps (float32 models: to 1e-5)."""
    model = bridge_factory(family)
    toks = torch.randint(3, VOCAB, (2, 21), generator=gen)
    ps = permutation_scores(model, toks, block_size=4, n_blocks=4, exclude_keys="none")
    assert hook_count(model) == 0
    assert bool(torch.isfinite(ps.pos_perm[..., ps.transpositions]).float().mean() > 0.5)
    for p in ps.transpositions.nonzero().flatten().tolist():
        a, c = (ps.permutations[p] != torch.arange(4)).nonzero().flatten().tolist()
        s = ps.swap.swaps.index((a, c))
        torch.testing.assert_close(
            ps.pos_perm[..., p], ps.swap.pos_swap[..., s], rtol=0, atol=1e-5, equal_nan=True
        )
        torch.testing.assert_close(
            ps.sym_perm[..., p], ps.swap.sym_swap[..., s], rtol=0, atol=1e-5, equal_nan=True
        )


def test_hooks_at_key_sites_are_refused(toks):
    model = toy()
    ablate = FrequencyAblation(layer=0, heads=(0,), pairs=range(2), target="k", mode="zero")
    with intervened(model, ablate), pytest.raises(RopeBehaviorError, match="hooks sit at the key"):
        permutation_scores(model, toks, block_size=8, exclude_keys="none")
    assert hook_count(model) == 0
