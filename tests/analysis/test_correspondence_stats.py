"""The across-head statistics of behavior_frequency_correspondence against scipy and
brute force: Spearman rho, the exact / randomised permutation p-value, the Fisher-z
interval (its coverage: test_rho_interval.py), which heads enter, and the caveat."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

import rope_behavior as rb
from rope_behavior.analysis.correspondence import behavior_frequency_correspondence, spearman
from tests.models import VOCAB


@pytest.fixture(scope="module")
def real():
    from tests.models import make_bridge

    model = make_bridge("llama_gqa")
    tokens = torch.randint(0, VOCAB, (2, 33), generator=torch.Generator().manual_seed(0))
    hs = rb.score_heads(model, tokens, block_size=4, n_swaps=6)
    pp = rb.score_heads(model, tokens, block_size=4, n_swaps=6, per_pair=True)
    return hs, pp, rb.frequency_usage(rb.capture(model, tokens))


def fake(real, behavior, centroid, identifiable=None, s_sym=0.0):
    """Scores whose per-head behaviour is ``behavior`` [2, 4] and usage with ``centroid``."""
    hs, _, usage = real
    b = torch.as_tensor(behavior, dtype=torch.float64)
    ident = torch.ones(2, 4, dtype=torch.bool) if identifiable is None else identifiable
    scores = dataclasses.replace(
        hs,
        s_pos=(b + s_sym)[None].expand_as(hs.s_pos).clone(),
        s_sym=torch.full_like(hs.s_sym, s_sym),
        identifiable=ident[None].expand_as(hs.identifiable).clone(),
    )
    cen = torch.as_tensor(centroid, dtype=usage.centroid.dtype)
    return scores, dataclasses.replace(usage, centroid=cen)


def brute_p(x, y):
    """Exact two-sided permutation p-value of |rho| over all n! pairings."""
    rho = stats.spearmanr(x, y).statistic
    perms = np.array(list(itertools.permutations(range(len(x)))))
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    a = rx[perms] - rx.mean()
    b = ry - ry.mean()
    null = (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum())
    return float(np.mean(np.abs(null) >= abs(rho) - 1e-12)), rho


BEHAVIOR = [[0.30, -0.10, 0.30, 0.05], [0.42, -0.25, 0.11, 0.30]]  # ties at 0.30
CENTROID = [[2.0, 4.5, 3.1, 6.0], [1.2, 5.5, 2.9, 0.7]]


def test_exact_p_value_matches_brute_force_over_720_pairings(real):
    ident = torch.ones(2, 4, dtype=torch.bool)
    ident[0, 1] = ident[1, 3] = False  # two heads out: n = 6
    scores, usage = fake(real, BEHAVIOR, CENTROID, ident)
    c = behavior_frequency_correspondence(scores, usage, n_permutations=1000)
    keep = ident.reshape(-1).numpy()
    x = np.array(BEHAVIOR).reshape(-1)[keep]
    y = np.array(CENTROID).reshape(-1)[keep]
    p, rho = brute_p(x, y)
    assert c.n_heads == 6
    assert c.n_heads_total == 8
    assert c.in_statistic.tolist() == ident.tolist()
    assert c.permutation_exact
    assert c.n_permutations == 720
    assert c.rho == pytest.approx(rho, abs=1e-12)
    assert c.p_value == pytest.approx(p, abs=1e-12)
    assert 0 < c.p_value < 1


def test_randomised_p_value_estimates_the_exact_one(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)
    c = behavior_frequency_correspondence(scores, usage, n_permutations=2000, seed=3)
    p, rho = brute_p(np.array(BEHAVIOR).reshape(-1), np.array(CENTROID).reshape(-1))
    assert not c.permutation_exact
    assert c.n_permutations == 2000
    assert c.rho == pytest.approx(rho, abs=1e-12)
    assert abs(c.p_value - p) < 4 * math.sqrt(p * (1 - p) / 2000) + 1 / 2001
    # (1 + hits) / (1 + n): never zero
    hits = c.p_value * 2001 - 1
    assert hits == pytest.approx(round(hits), abs=1e-6)


def test_results_are_deterministic_for_a_seed(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)

    def run(**kw):
        c = behavior_frequency_correspondence(scores, usage, n_permutations=300, **kw)
        return c.p_value, c.rho_ci

    assert run(seed=7) == run(seed=7)
    assert run(seed=torch.Generator().manual_seed(1)) == run(seed=torch.Generator().manual_seed(1))
    assert run(seed=7) != run(seed=8)


def test_fisher_z_interval(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)
    wide = behavior_frequency_correspondence(scores, usage)
    narrow = behavior_frequency_correspondence(scores, usage, confidence_level=0.5)
    lo, hi = wide.rho_ci
    assert -1 <= lo <= wide.rho <= hi <= 1
    assert narrow.rho_ci[1] - narrow.rho_ci[0] < hi - lo
    # Bonett & Wright (2000): tanh(atanh(rho) -+ 1.96 sqrt((1 + rho^2 / 2) / (n - 3)))
    z, se = math.atanh(wide.rho), math.sqrt((1 + wide.rho**2 / 2) / (wide.n_heads - 3))
    q = stats.norm.ppf(0.975)
    assert wide.rho_ci == pytest.approx((math.tanh(z - q * se), math.tanh(z + q * se)))
    assert wide.confidence_level == 0.95
    assert wide.rho_ci_method == "Fisher z (Bonett-Wright)"
    assert not hasattr(wide, "n_bootstrap")
    with pytest.raises(TypeError, match="n_bootstrap"):
        behavior_frequency_correspondence(scores, usage, n_bootstrap=1000)


def test_disagreement_of_test_and_interval_is_said(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)
    c = behavior_frequency_correspondence(scores, usage)
    assert c.disagreement == ""  # both: no evidence at these 8 heads
    weak = dataclasses.replace(c, p_value=0.017, rho_ci=(-0.935, 0.070))
    assert weak.disagreement.startswith("p < 0.05 but the 95% interval contains 0")
    assert weak.disagreement in " ".join(repr(weak).split())  # the repr may wrap lines
    assert (weak.to_frame()["disagreement"] == weak.disagreement).all()


def test_spearman_agrees_with_scipy():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randint(0, 5, (12,), generator=g).double()  # many ties
        y = torch.randn(12, generator=g, dtype=torch.float64)
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))


def test_pair_curves_agree_with_scipy(real):
    hs, pp, usage = real
    c = behavior_frequency_correspondence(hs, usage, pair_scores=pp)
    curve = c.pair_behavior[1, 2].numpy()
    expected = stats.spearmanr(curve, np.arange(curve.size)).statistic
    assert float(c.pair_rho[1, 2]) == pytest.approx(expected, abs=1e-12)


def test_random_weights_put_heads_at_the_uniform_corner(real):
    hs, _, usage = real
    c = behavior_frequency_correspondence(hs, usage)
    assert bool(c.uniform_corner.all())  # nearly uniform attention everywhere
    assert "uniform corner" in c.caveat
    assert "(1, 1)" in c.caveat
    assert "means nothing" in c.caveat
    assert "caveat: " + c.caveat in " ".join(repr(c).split())  # the repr wraps at 80 columns
    df = c.to_frame()
    assert (df["caveat"] == c.caveat).all()
    assert df.attrs["caveat"] == c.caveat
    assert {"in_statistic", "uniform_corner", "identifiable_fraction", "rho_ci_low"} <= set(df)


def test_clean_case_has_no_caveat(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)
    c = behavior_frequency_correspondence(scores, usage)
    assert c.caveat == ""
    assert "caveat" not in repr(c)
    assert "on 8 of 8 heads" in repr(c)


def test_few_heads_are_flagged(real):
    ident = torch.zeros(2, 4, dtype=torch.bool)
    ident[0, :3] = True
    ident[1, :2] = True
    scores, usage = fake(real, BEHAVIOR, CENTROID, ident)
    c = behavior_frequency_correspondence(scores, usage)
    assert c.n_heads == 5
    assert "only 5 heads (fewer than 8)" in c.caveat
    ident[0, 2:] = False
    ident[1] = False
    scores, usage = fake(real, BEHAVIOR, CENTROID, ident)
    none = behavior_frequency_correspondence(scores, usage)
    assert none.n_heads == 2
    assert math.isnan(none.rho)
    assert math.isnan(none.p_value)
    assert "only 2 head(s) enter the statistic" in none.caveat
    every = behavior_frequency_correspondence(scores, usage, include="all")
    assert every.n_heads == 8
    assert math.isfinite(every.rho)


def test_corner_heads_are_flagged(real):
    scores, usage = fake(
        real, [[0.01, -0.02, 0.03, 0.0], [0.02, -0.01, 0.0, 0.04]], CENTROID, s_sym=0.95
    )
    c = behavior_frequency_correspondence(scores, usage)
    assert c.n_heads == 8
    assert "8 of 8 heads sit at the uniform corner" in c.caveat


def test_nope_layers_are_left_out(real):
    scores, usage = fake(real, BEHAVIOR, CENTROID)
    omega = usage.omega.clone()
    omega[1] = 0.0
    nope = dataclasses.replace(usage, omega=omega)
    c = behavior_frequency_correspondence(scores, nope)
    assert not bool(c.in_statistic[1].any())
    assert c.n_heads == 4
    assert "layers [1] do not rotate (NoPE)" in c.caveat
