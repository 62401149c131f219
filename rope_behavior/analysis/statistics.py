"""Spearman's rank correlation with its permutation p-value and bootstrap interval.

Pure numpy / ``scipy.stats`` functions of two samples (nothing here knows a model):

* ``rho``: Spearman's rank correlation (average ranks for ties; NaN if a sample is
  constant), :func:`spearman` for tensors;
* ``p_value``: a two-sided permutation test of ``|rho|`` over pairings
  (``scipy.stats.permutation_test``). Exact when ``n! <= n_permutations``:
  ``#{|rho_perm| >= |rho|} / n!`` over all ``n!`` pairings; else randomised:
  ``(1 + #{|rho_perm| >= |rho|}) / (1 + n_permutations)``;
* ``ci``: a paired BCa bootstrap interval of ``rho`` (``scipy.stats.bootstrap``). A
  resample whose values are all equal in one sample has no rank correlation (NaN), and BCa
  is then undefined: the percentile interval of the finite resamples is given instead
  (when at least 90% are finite), else NaN. The same holds when every resample gives the
  same ``rho`` (e.g. ``rho = -1`` exactly).

Results are deterministic for a ``seed``.
"""

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from jaxtyping import Float
from scipy import stats
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["RankCorrelation", "rank_correlation", "rho_along", "spearman"]


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
    ``confidence_level`` from ``n_bootstrap`` resamples by ``ci_method`` (``"BCa"``,
    ``"percentile"`` or ``""`` when undefined). With ``rho`` NaN the rest is NaN / 0."""

    rho: float
    p_value: float = math.nan
    n_permutations: int = 0
    exact: bool = False
    ci: tuple[float, float] = (math.nan, math.nan)
    ci_method: str = ""
    confidence_level: float = 0.95
    n_bootstrap: int = 0


def _rng_kwargs(fn: Callable[..., Any], seed: int) -> dict[str, Any]:
    """scipy >= 1.15 names the generator ``rng``, older versions ``random_state``."""
    name = "rng" if "rng" in inspect.signature(fn).parameters else "random_state"
    return {name: np.random.default_rng(seed)}


def _interval(boot: Any, level: float) -> tuple[tuple[float, float], str]:
    """BCa, or, where it is undefined, the percentile interval of the finite resamples."""
    ci = (float(boot.confidence_interval.low), float(boot.confidence_interval.high))
    if all(math.isfinite(c) for c in ci):
        return ci, "BCa"
    dist = np.asarray(boot.bootstrap_distribution, dtype=np.float64).reshape(-1)
    finite = dist[np.isfinite(dist)]
    if finite.size < 0.9 * dist.size:
        return (math.nan, math.nan), ""
    tail = (1 - level) / 2
    lo, hi = np.quantile(finite, [tail, 1 - tail])
    return (float(lo), float(hi)), "percentile"


def rank_correlation(
    x: Any,
    y: Any,
    *,
    n_permutations: int = 1000,
    n_bootstrap: int = 2000,
    confidence_level: float = 0.95,
    seed: int = 0,
) -> RankCorrelation:
    """``rho`` of the 1-D samples ``x`` and ``y``, its permutation p-value and interval."""
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

    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")  # scipy warns about degenerate BCa: handled below
        perm = stats.permutation_test(
            (x,),
            abs_rho,
            permutation_type="pairings",
            vectorized=True,
            n_resamples=n_permutations,
            alternative="greater",
            **_rng_kwargs(stats.permutation_test, seed),
        )
        boot = stats.bootstrap(
            (x, y),
            rho_along,
            paired=True,
            vectorized=True,
            n_resamples=n_bootstrap,
            confidence_level=confidence_level,
            method="BCa",
            **_rng_kwargs(stats.bootstrap, seed + 1),
        )
    ci, method = _interval(boot, confidence_level)
    return RankCorrelation(
        rho=rho,
        p_value=float(perm.pvalue),
        n_permutations=int(np.asarray(perm.null_distribution).size),
        exact=math.factorial(x.size) <= n_permutations,
        ci=ci,
        ci_method=method,
        confidence_level=confidence_level,
        n_bootstrap=n_bootstrap,
    )
