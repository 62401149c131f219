"""Spearman's rank correlation with its permutation p-value and Fisher-z interval.

Pure numpy / ``scipy.stats`` functions of two samples (nothing here knows a model):

* ``rho``: Spearman's rank correlation (average ranks for ties; NaN if a sample is
  constant), :func:`spearman` for tensors;
* ``p_value``: a two-sided permutation test of ``|rho|`` over pairings
  (``scipy.stats.permutation_test``). Exact when ``n! <= n_permutations``:
  ``#{|rho_perm| >= |rho|} / n!`` over all ``n!`` pairings; else randomised:
  ``(1 + #{|rho_perm| >= |rho|}) / (1 + n_permutations)``;
* ``ci``: the Fisher-z interval of Bonett & Wright (2000, Psychometrika 65:23-28),
  :func:`rho_interval`: ``z = atanh(rho)``, ``se = sqrt((1 + rho**2 / 2) / (n - 3))``,
  ``tanh(z -+ q * se)`` with ``q`` the normal quantile of the level (1.96 at 95%). Its
  coverage is checked by simulation (``tests/analysis/test_rho_interval.py``): within 2
  points of 95% at 11 and at 100 pairs, under independence and under a known rho
  (bivariate normal). It is closed-form: no resampling, nothing random. Undefined (NaN)
  with fewer than 4 pairs; at ``rho = +-1`` exactly it collapses to that point (``z`` is
  infinite).

The test and the interval answer different questions and can disagree near the boundary
(:func:`disagreement` says so in a sentence): the permutation test asks whether the
pairing is arbitrary, and is exact under exchangeability whatever the data's
distribution; the interval is a normal approximation on the z scale whose width is set at
the observed ``rho`` (the ``1 + rho**2 / 2`` factor widens it as ``|rho|`` grows). So
"p < 0.05" and "the 95% interval excludes 0" need not coincide when either is close to the
line: at 11 pairs the test rejects from ``|rho|`` about 0.61, the interval excludes 0 from
about 0.64 (at 100 pairs both from about 0.20).

Results are deterministic for a ``seed`` (only the permutation test draws).
"""

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = [
    "CI_METHOD",
    "RankCorrelation",
    "disagreement",
    "rank_correlation",
    "rho_along",
    "rho_interval",
    "spearman",
]

CI_METHOD = "Fisher z (Bonett-Wright)"
"""The name of the interval :func:`rank_correlation` gives (``RankCorrelation.ci_method``)."""


def rho_along(x: Any, y: Any, axis: int = -1) -> Any:
    """Spearman's rho along ``axis`` (average ranks for ties; NaN where either is constant)."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    num = (rx * ry).sum(axis=axis)
    den = np.sqrt((rx * rx).sum(axis=axis) * (ry * ry).sum(axis=axis))
    ok = den > 1e-12 * np.maximum(1.0, np.abs(num))
    return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def spearman(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr``; average ranks for ties); NaN
    if either is constant."""
    a = x.detach().double().cpu().numpy()
    b = y.detach().double().cpu().numpy()
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise RopeBehaviorError(
            f"spearman needs two 1-D tensors of one length >= 2; got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ``rho`` of two samples with its uncertainty (see the module docstring):
    ``p_value`` over ``n_permutations`` pairings (all of them when ``exact``), ``ci`` at
    ``confidence_level`` by ``ci_method`` (:data:`CI_METHOD`, or ``""`` when undefined).
    With ``rho`` NaN the rest is NaN / 0."""

    rho: float
    p_value: float = math.nan
    n_permutations: int = 0
    exact: bool = False
    ci: tuple[float, float] = (math.nan, math.nan)
    ci_method: str = ""
    confidence_level: float = 0.95

    @property
    def disagreement(self) -> str:
        """A sentence when the test and the interval disagree about 0, else ``""``."""
        return disagreement(self.p_value, self.ci, self.confidence_level)


def _rng_kwargs(fn: Callable[..., Any], seed: int) -> dict[str, Any]:
    """scipy >= 1.15 names the generator ``rng``, older versions ``random_state``."""
    name = "rng" if "rng" in inspect.signature(fn).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def rho_interval(rho: Any, n: int, confidence_level: float = 0.95) -> tuple[Any, Any]:
    """The Fisher-z interval of Spearman's ``rho`` over ``n`` pairs (Bonett & Wright 2000;
    see the module docstring), elementwise over an array of ``rho``: ``(low, high)``. NaN
    where ``rho`` is NaN or ``n < 4``; ``(rho, rho)`` where ``|rho| = 1``."""
    r = np.asarray(rho, dtype=np.float64)
    if n < 4:
        nan = np.full_like(r, np.nan)
        return nan, nan.copy()
    q = float(stats.norm.ppf(0.5 + confidence_level / 2))
    se = np.sqrt((1 + r * r / 2) / (n - 3))
    with np.errstate(divide="ignore"):  # atanh(+-1) = +-inf: the interval is the point
        z = np.arctanh(r)
    return np.tanh(z - q * se), np.tanh(z + q * se)


def disagreement(p_value: float, ci: tuple[float, float], confidence_level: float) -> str:
    """One sentence when the permutation test at ``1 - confidence_level`` and the interval
    disagree about 0 (one rejects, the other does not), else ``""`` (also when either is
    NaN). They are computed differently (see the module docstring), so near the line they
    can; the sentence says so and how to read it."""
    lo, hi = ci
    if not (math.isfinite(p_value) and math.isfinite(lo) and math.isfinite(hi)):
        return ""
    alpha = 1 - confidence_level
    rejects, excludes = p_value < alpha, not lo <= 0 <= hi
    if rejects == excludes:
        return ""
    which = (
        f"p < {alpha:.3g} but the {confidence_level:.0%} interval contains 0"
        if rejects
        else f"p >= {alpha:.3g} but the {confidence_level:.0%} interval excludes 0"
    )
    return (
        f"{which}: the permutation test and the Fisher-z interval are computed differently "
        f"and disagree near the {alpha:.0%} line; read the effect as weak"
    )


def rank_correlation(
    x: Any,
    y: Any,
    *,
    n_permutations: int = 1000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> RankCorrelation:
    """``rho`` of the 1-D samples ``x`` and ``y``, its permutation p-value and interval
    (``seed`` draws the permutations when they are not all enumerated)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size < 3:
        raise RopeBehaviorError(
            f"rank_correlation needs two 1-D samples of one length >= 3; got shapes "
            f"{x.shape} and {y.shape}"
        )
    rho = float(rho_along(x, y))
    if not math.isfinite(rho):
        return RankCorrelation(rho, confidence_level=confidence_level)

    def abs_rho(a: Any, axis: int = -1) -> Any:
        return np.abs(rho_along(a, y, axis=axis))

    perm = stats.permutation_test(
        (x,),
        abs_rho,
        permutation_type="pairings",
        vectorized=True,
        n_resamples=n_permutations,
        alternative="greater",
        **_rng_kwargs(stats.permutation_test, seed),
    )
    lo, hi = rho_interval(rho, x.size, confidence_level)
    ci = (float(lo), float(hi))
    return RankCorrelation(
        rho=rho,
        p_value=float(perm.pvalue),
        n_permutations=int(np.asarray(perm.null_distribution).size),
        exact=math.factorial(x.size) <= n_permutations,
        ci=ci,
        ci_method=CI_METHOD if math.isfinite(ci[0]) else "",
        confidence_level=confidence_level,
    )
