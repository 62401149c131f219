"""The interval of Spearman's rho covers the true rho 95% of the time at the head counts a
model has: simulated under independence and under a known rho, at 11 and at 100 pairs.

Pairs are bivariate normal with Pearson ``r``; their Spearman rho is
``(6 / pi) * asin(r / 2)`` (Pearson's formula), so ``r = 2 sin(pi rho / 6)`` gives a known
rho. The draws are seeded and ranked all at once (``rho_along`` over the last axis), so
the whole file takes a few seconds.
"""

import math

import numpy as np
import pytest

from rope_behavior.analysis.statistics import (
    CI_METHOD,
    disagreement,
    rank_correlation,
    rho_along,
    rho_interval,
)

DRAWS = 20_000  # coverage SE 0.15 points
TOLERANCE = 0.02  # the bar: within 2 points of 95%


def spearman_draws(n: int, rho: float, draws: int, seed: int | tuple[int, ...]) -> np.ndarray:
    """``draws`` sample Spearman rhos of ``n`` bivariate-normal pairs whose true rho is
    ``rho``."""
    r = 2 * math.sin(math.pi * rho / 6)
    g = np.random.default_rng(seed)
    x = g.standard_normal((draws, n))
    y = r * x + math.sqrt(1 - r * r) * g.standard_normal((draws, n))
    return rho_along(x, y)


def test_pearson_to_spearman_map_gives_the_rho_asked_for():
    sample = spearman_draws(1000, 0.6, 200, seed=1)
    assert sample.mean() == pytest.approx(0.6, abs=0.005)


@pytest.mark.parametrize("n", [11, 100])
@pytest.mark.parametrize("rho", [0.0, 0.3, -0.5, 0.8])
def test_coverage_is_within_two_points_of_95_percent(n, rho):
    sample = spearman_draws(n, rho, DRAWS, seed=(n, round(100 * rho) + 100))
    lo, hi = rho_interval(sample, n, 0.95)
    coverage = float(np.mean((lo <= rho) & (rho <= hi)))
    assert abs(coverage - 0.95) <= TOLERANCE, f"n={n}, rho={rho}: coverage {coverage:.4f}"


def test_other_levels_cover_too():
    sample = spearman_draws(30, 0.4, DRAWS, seed=7)
    for level in (0.5, 0.9, 0.99):
        lo, hi = rho_interval(sample, 30, level)
        coverage = float(np.mean((lo <= 0.4) & (hi >= 0.4)))
        assert abs(coverage - level) <= TOLERANCE, f"level {level}: coverage {coverage:.4f}"


def test_interval_formula_and_edges():
    # Bonett & Wright (2000): tanh(atanh(r) -+ 1.96 sqrt((1 + r^2/2) / (n - 3)))
    se = math.sqrt((1 + 0.49 / 2) / 8)
    lo, hi = rho_interval(-0.7, 11, 0.95)
    assert float(lo) == pytest.approx(math.tanh(math.atanh(-0.7) - 1.959964 * se), abs=1e-6)
    assert float(hi) == pytest.approx(math.tanh(math.atanh(-0.7) + 1.959964 * se), abs=1e-6)
    assert [float(v) for v in rho_interval(1.0, 11)] == [1.0, 1.0]
    assert all(math.isnan(float(v)) for v in rho_interval(0.5, 3))
    assert all(math.isnan(float(v)) for v in rho_interval(math.nan, 11))


def test_rank_correlation_reports_the_interval_and_its_method():
    x = np.arange(11.0)
    y = np.array([2, 0, 1, 5, 3, 4, 8, 6, 7, 10, 9], dtype=float)
    st = rank_correlation(x, y, seed=0)
    lo, hi = rho_interval(st.rho, 11)
    assert st.ci == (float(lo), float(hi))
    assert st.ci_method == CI_METHOD == "Fisher z (Bonett-Wright)"
    assert rank_correlation(x[:3], y[:3]).ci_method == ""
    assert "n_bootstrap" not in type(st).__dataclass_fields__


def test_disagreement_names_the_two_ways_the_test_and_interval_can_differ():
    assert disagreement(0.01, (-0.9, -0.1), 0.95) == ""
    assert disagreement(0.2, (-0.9, 0.1), 0.95) == ""
    weak = disagreement(0.017, (-0.935, 0.070), 0.95)
    assert weak.startswith("p < 0.05 but the 95% interval contains 0")
    assert "disagree near the 5% line; read the effect as weak" in weak
    assert disagreement(0.06, (0.01, 0.8), 0.95).startswith(
        "p >= 0.05 but the 95% interval excludes 0"
    )
    assert disagreement(0.06, (0.01, 0.8), 0.9) == ""  # at 90% both reject
    assert disagreement(math.nan, (0.01, 0.8), 0.95) == ""


@pytest.mark.parametrize(
    ("y", "sentence"),
    [
        ([5, 1, 3, 0, 6, 4, 7, 9, 8, 10, 2], False),  # rho 0.50: neither rejects
        ([1, 0, 2, 3, 9, 8, 5, 7, 10, 4, 6], True),  # rho 0.627: p ~ 0.04, interval has 0
        ([1, 3, 0, 5, 4, 7, 2, 8, 6, 10, 9], False),  # rho 0.82: both reject
    ],
)
def test_at_11_heads_they_disagree_only_in_a_narrow_band(y, sentence):
    # at n = 11 the permutation test rejects from |rho| ~ 0.61, the interval from ~ 0.64
    st = rank_correlation(np.arange(11.0), np.array(y, dtype=float), seed=0)
    assert bool(st.disagreement) is sentence
    if sentence:
        assert st.p_value < 0.05
        assert st.ci[0] < 0 < st.ci[1]
        assert st.disagreement.startswith("p < 0.05 but the 95% interval contains 0")
