"""score_sensitivity (docs/method.md §8): the grid equals score_heads point by point, from
one forward; rank statistics against scipy; bad input."""

import math

import pytest
import scipy.stats
import torch

import rope_behavior as rb
from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.sensitivity import kendall_tau_b, score_sensitivity, spearman_rho
from tests.models import VOCAB, hook_count
from tests.scoring.test_behavior import toy


@pytest.fixture
def toks(gen):
    return torch.randint(3, VOCAB, (3, 33), generator=gen)


def test_grid_points_equal_score_heads_from_one_forward(toks):
    model = toy()
    forwards = []

    def count(x, hook=None):
        forwards.append(1)
        return x

    grid = dict(block_sizes=(2, 4, 8), taus=(0.01, 0.05, 1.0), reference=(4, 0.05))
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_rot_q", count)]):
        sens = score_sensitivity(model, toks, exclude_keys="none", seed=3, **grid)
    assert len(forwards) == 1  # nine grid points, one forward
    assert hook_count(model) == 0
    for bi, b in enumerate(grid["block_sizes"]):
        for ti, t in enumerate(grid["taus"]):
            hs = rb.score_heads(model, toks, block_size=b, tau=t, exclude_keys="none", seed=3)
            torch.testing.assert_close(sens.s_pos[bi, ti], hs.s_pos.nanmean(0), rtol=0, atol=1e-12)
            torch.testing.assert_close(sens.s_sym[bi, ti], hs.s_sym.nanmean(0), rtol=0, atol=1e-12)
            torch.testing.assert_close(
                sens.identifiable_fraction[bi, ti], hs.identifiable.double().mean(0)
            )
        assert sens.n_swaps[bi] == len(hs.swaps)
        assert sens.n_block_pairs[bi] == hs.n_block_pairs
    # block size 2: 16 blocks, 120 pairs, 64 drawn with the seed
    assert sens.n_swaps == (64, 28, 6)
    assert sens.n_block_pairs == (120, 28, 6)
    assert float(sens.spearman[1, 1]) == pytest.approx(1.0)
    assert float(sens.kendall[1, 1]) == 1.0
    assert float(sens.sign_flip_share[1, 1]) == 0.0
    d = sens.difference.flatten(2)
    for bi in range(3):
        for ti in range(3):
            flips = (torch.sign(d[bi, ti]) != torch.sign(d[1, 1])).double().mean()
            assert float(sens.sign_flip_share[bi, ti]) == pytest.approx(float(flips))
            rho = scipy.stats.spearmanr(d[1, 1].numpy(), d[bi, ti].numpy()).statistic
            assert float(sens.spearman[bi, ti]) == pytest.approx(rho, abs=1e-12)
    df = sens.to_frame()
    assert len(df) == 9 * 2 * 2
    assert set(df["block_size"]) == {2, 4, 8}
    assert df["flipped"].sum() == int(sens.flipped.sum())
    st = sens.stability_frame()
    assert len(st) == 9
    assert st["reference"].sum() == 1
    assert all(len(line) <= 80 for line in repr(sens).splitlines())


def test_rank_statistics_match_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (40,), generator=gen).double()  # many ties
    y = x + torch.randint(0, 3, (40,), generator=gen).double()
    assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman_rho(x[:2], y[:2]))
    assert math.isnan(kendall_tau_b(torch.ones(5), y[:5]))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(reference=(3, 0.05)), r"reference=\(3, 0.05\) is not on the grid; options"),
        (dict(block_sizes=(4, 4)), "block_sizes=.*distinct"),
        (dict(taus=(0.05, 0.0)), "tau"),
        (dict(block_sizes=4), "block_sizes=4; expected a non-empty sequence"),
        (dict(block_sizes=(2, 17), reference=(2, 0.05)), "too short to score"),
    ],
)
def test_bad_input_is_refused(toks, kw, match):
    model = toy()
    grid = dict(block_sizes=(2, 4), taus=(0.05,), reference=(4, 0.05)) | kw
    with pytest.raises(RopeBehaviorError, match=match):
        score_sensitivity(model, toks, exclude_keys="none", **grid)
    assert hook_count(model) == 0
