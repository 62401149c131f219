"""Correspondence between behaviour and frequency across heads, and per-pair curves.

Across heads: the Spearman rank correlation ``rho`` of ``s_pos - s_sym`` (mean over prompts
and query positions, NaN rows left out) with the frequency centroid of
:class:`~rope_behavior.FrequencyUsage` (usage-weighted mean pair index; pair 0 is the
highest frequency), with a two-sided permutation p-value (exact over all ``n!`` pairings
of the heads when ``n! <= n_permutations``) and a Fisher-z interval (Bonett & Wright,
coverage checked by simulation), for a seed (:mod:`rope_behavior.analysis.statistics`,
on ``scipy.stats``). The test and the interval are computed differently and can disagree
near the 5% line; ``disagreement`` then says so in a sentence.

Which heads the statistic rests on: heads with a finite behaviour whose layer rotates (on a
NoPE layer the pair index is not a frequency) and, with ``include="identifiable"``
(default), at least half of whose score rows are identifiable
(``HeadScores.identifiable``). A near-uniform attention row scores about ``(1, 1)`` whatever
the head does, so ``s_pos - s_sym`` carries nothing there: random-weight models put nearly
every head at that corner. The result's ``caveat`` says so when fewer than
:data:`MIN_HEADS` heads enter, or most heads sit at the uniform corner (mean ``s_pos`` and
``s_sym`` both at least :data:`UNIFORM_CORNER`); then ``rho`` means little or nothing.

Per head: the per-pair score curves (single-pair projection heads) and their Spearman
correlation with the pair index. A negative ``rho`` says high-frequency (low-index) heads
are the positional ones.
"""

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from rope_behavior import display
from rope_behavior.analysis.statistics import (
    RankCorrelation,
    disagreement,
    rank_correlation,
    rho_along,
    spearman,
)
from rope_behavior.errors import RopeBehaviorError, as_count, as_fraction, as_seed, validates_inputs
from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.scoring.head_classes import UNIFORM_CORNER, is_identifiable
from rope_behavior.scoring.results import HeadScores

__all__ = [
    "MIN_HEADS",
    "UNIFORM_CORNER",
    "FrequencyCorrespondence",
    "behavior_frequency_correspondence",
    "spearman",
]

MIN_HEADS = 8
"""Fewer identifiable heads than this: the result carries a caveat (rho is fragile)."""
_INCLUDE = ("identifiable", "all")


@dataclass(frozen=True, eq=False)
class FrequencyCorrespondence:
    """Behaviour vs frequency (see the module docstring for the statistics).

    ``behavior[layer, head]`` is the mean ``s_pos - s_sym``, ``centroid`` the frequency
    centroid (``layer`` indexes ``layers``), ``identifiable_fraction`` the share of a head's
    finite score rows that are identifiable, ``in_statistic`` the heads ``rho`` rests on
    (``n_heads`` of them, of ``n_heads_total``), ``uniform_corner`` the heads whose mean
    scores sit near ``(1, 1)``. ``rho``, ``p_value`` (``n_permutations`` pairings; all of
    them when ``permutation_exact``), ``rho_ci`` (``confidence_level``; ``rho_ci_method``
    ``"Fisher z (Bonett-Wright)"``, ``""`` when undefined); ``disagreement`` is a sentence when
    the test and the interval disagree about 0, ``caveat`` is empty when nothing undermines
    them. With per-pair scores:
    ``pair_s_pos`` / ``pair_s_sym`` / ``pair_behavior`` ``[layer, head, pair]`` and
    ``pair_rho[layer, head]`` (Spearman of the pair curve with the pair index); else None."""

    layers: tuple[int, ...]
    behavior: Float[Tensor, "layer head"] | None = field(repr=False)
    centroid: Float[Tensor, "layer head"] = field(repr=False)
    rho: float
    p_value: float
    n_heads: int
    n_permutations: int
    permutation_exact: bool = False
    rho_ci: tuple[float, float] = (math.nan, math.nan)
    rho_ci_method: str = ""
    confidence_level: float = 0.95
    n_heads_total: int = 0
    caveat: str = ""
    in_statistic: Bool[Tensor, "layer head"] | None = field(default=None, repr=False)
    identifiable_fraction: Float[Tensor, "layer head"] | None = field(default=None, repr=False)
    uniform_corner: Bool[Tensor, "layer head"] | None = field(default=None, repr=False)
    pair_s_pos: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_s_sym: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_behavior: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_rho: Float[Tensor, "layer head"] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)

    @property
    def disagreement(self) -> str:
        """One sentence when the permutation test and the interval disagree about 0 (e.g.
        p < 0.05 but the 95% interval contains 0), else ``""``: they are computed
        differently (:mod:`rope_behavior.analysis.statistics`), so near the line they can."""
        return disagreement(self.p_value, self.rho_ci, self.confidence_level)

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head), or per (layer, head, pair) with the
        head-level columns repeated when per-pair curves are present. The across-head
        numbers (``rho``, ``p_value``, ``rho_ci_low`` / ``rho_ci_high``, ``n_heads``,
        ``disagreement``, ``caveat``) are repeated on every row, so a CSV keeps them."""
        import pandas as pd

        summary = {
            "rho": self.rho,
            "p_value": self.p_value,
            "rho_ci_low": self.rho_ci[0],
            "rho_ci_high": self.rho_ci[1],
            "n_heads": self.n_heads,
            "disagreement": self.disagreement,
            "caveat": self.caveat,
        }
        rows = []
        n_l, n_h = self.centroid.shape
        for li in range(n_l):
            for h in range(n_h):
                base: dict[str, Any] = {
                    "layer": self.layers[li],
                    "head": h,
                    "centroid": float(self.centroid[li, h]),
                    "behavior": _at(self.behavior, li, h, float("nan")),
                    "identifiable_fraction": _at(self.identifiable_fraction, li, h, float("nan")),
                    "uniform_corner": _at(self.uniform_corner, li, h, False),
                    "in_statistic": _at(self.in_statistic, li, h, False),
                    **summary,
                }
                if (
                    self.pair_behavior is None
                    or self.pair_s_pos is None
                    or self.pair_s_sym is None
                    or self.pair_rho is None
                ):
                    rows.append(base)
                    continue
                base["pair_rho"] = float(self.pair_rho[li, h])
                for p in range(self.pair_behavior.shape[-1]):
                    rows.append(
                        {
                            **base,
                            "pair": p,
                            "pair_s_pos": float(self.pair_s_pos[li, h, p]),
                            "pair_s_sym": float(self.pair_s_sym[li, h, p]),
                            "pair_behavior": float(self.pair_behavior[li, h, p]),
                        }
                    )
        df = pd.DataFrame(rows)
        df.attrs.update(summary)
        return df


def _at(x: Tensor | None, li: int, h: int, default: Any) -> Any:
    if x is None:
        return default
    return bool(x[li, h]) if x.dtype == torch.bool else float(x[li, h])


def _per_head(x: Tensor, hs: HeadScores) -> Tensor:
    """Mean over prompts and query positions, keeping [layer, head, (pair)]."""
    x = x.double()
    if hs.has_query_axis:
        x = x.movedim(3, 1).flatten(0, 1)  # query axis joins the prompt axis
    ok = ~torch.isnan(x)
    n = ok.sum(0)
    return torch.where(n > 0, torch.where(ok, x, 0.0).sum(0) / n.clamp_min(1), float("nan"))


def _check_inputs(
    scores: object, usage: object, pair_scores: object, include: object, confidence_level: object
) -> None:
    if not isinstance(scores, HeadScores) or not isinstance(usage, FrequencyUsage):
        raise RopeBehaviorError(
            f"expected (HeadScores, FrequencyUsage); got ({type(scores).__name__}, "
            f"{type(usage).__name__})"
        )
    if include not in _INCLUDE:
        raise RopeBehaviorError(f"include={include!r} is not one of {list(_INCLUDE)}")
    as_fraction(
        confidence_level, "confidence_level", open_low=True, open_high=True, hint="e.g. 0.95"
    )
    n_usage_heads = int(usage.centroid.shape[1])
    for what, hs in (("scores", scores), ("pair_scores", pair_scores)):
        if isinstance(hs, HeadScores) and hs.n_heads != n_usage_heads:
            raise RopeBehaviorError(
                f"{what} cover {hs.n_heads} heads per layer but usage covers {n_usage_heads}: "
                "expected scores and usage of the same model (score_heads and "
                "frequency_usage(capture(model, tokens)) on one model)"
            )


def _caveat(
    n_used: int,
    n_finite: int,
    n_corner: int,
    nope_layers: list[int],
    rho: float,
    ci: tuple[float, float],
) -> str:
    notes = []
    if n_used < 3:
        notes.append(
            f"only {n_used} head(s) enter the statistic (at least 3 needed): no correlation "
            "is computed"
        )
    elif n_used < MIN_HEADS:
        notes.append(
            f"the statistic rests on only {n_used} heads (fewer than "
            f"{MIN_HEADS}): rho, its p-value and its interval are fragile"
        )
    if n_finite and 2 * n_corner > n_finite:
        notes.append(
            f"{n_corner} of {n_finite} heads sit at the uniform corner (mean s_pos and s_sym "
            f">= {UNIFORM_CORNER}): their attention is near uniform, so s_pos - s_sym is "
            "noise and the statistic means nothing here (random-weight models put nearly "
            "every head at (1, 1))"
        )
    if n_used >= 3 and not math.isfinite(rho):
        notes.append("behaviours or centroids are all tied: the rank correlation is undefined")
    elif n_used >= 3 and not all(math.isfinite(c) for c in ci):
        notes.append("the interval is undefined on 3 heads (Fisher's z needs at least 4)")
    elif n_used >= 3 and abs(rho) == 1:
        notes.append(
            f"rho is exactly {rho:+.0f}: Fisher's z is infinite there, so the interval "
            "collapses to that point and understates the uncertainty"
        )
    if nope_layers:
        notes.append(
            f"layers {nope_layers} do not rotate (NoPE) and are left out: their pair index "
            "is not a frequency"
        )
    return "; ".join(notes)


@dataclass(frozen=True, eq=False)
class _AcrossHeads:
    """The across-head statistic and the per-head tensors it rests on."""

    st: RankCorrelation
    caveat: str
    n_used: int = 0
    behavior: Float[Tensor, "layer head"] | None = None
    ident: Float[Tensor, "layer head"] | None = None
    used: Bool[Tensor, "layer head"] | None = None
    corner: Bool[Tensor, "layer head"] | None = None


def _common_layers(scores: HeadScores, usage: FrequencyUsage) -> tuple[int, ...]:
    """The scored layers that ``usage`` also holds; raises when there are none."""
    layers = tuple(layer for layer in scores.layers if layer in usage.layers)
    if not layers:
        raise RopeBehaviorError(
            f"scores cover layers {list(scores.layers)} and usage covers {list(usage.layers)}: "
            "no layer in common; expected usage of the scored layers (frequency_usage("
            "captured, layers=...) with the layers given to score_heads)"
        )
    return layers


def _across_heads(
    head_scores: HeadScores,
    layers: tuple[int, ...],
    centroid: Float[Tensor, "layer head"],
    rotates: Bool[Tensor, " layer"],
    nope_layers: list[int],
    include: str,
    n_permutations: int,
    confidence_level: float,
    seed: int,
) -> _AcrossHeads:
    """Per-head behaviour and the rank correlation of it with the centroid over the heads."""
    st = RankCorrelation(math.nan, confidence_level=confidence_level)
    li = [head_scores.layers.index(layer) for layer in layers]
    diff = head_scores.s_pos - head_scores.s_sym
    behavior = _per_head(diff, head_scores)[li]
    flags = torch.where(torch.isnan(diff), float("nan"), head_scores.identifiable.double())
    ident = _per_head(flags, head_scores)[li]
    s_pos = _per_head(head_scores.s_pos, head_scores)[li]
    s_sym = _per_head(head_scores.s_sym, head_scores)[li]
    corner = (s_pos >= UNIFORM_CORNER) & (s_sym >= UNIFORM_CORNER)
    finite = ~torch.isnan(behavior)
    n_finite = int(finite.sum())
    if n_finite < 3:
        raise RopeBehaviorError(
            f"only {n_finite} head(s) have finite scores; the rank correlation needs at "
            "least 3 (score more prompts or query positions)"
        )
    used = finite & rotates[:, None] & torch.isfinite(centroid)
    if include == "identifiable":
        used = used & is_identifiable(ident)
    n_used = int(used.sum())
    if n_used >= 3:
        st = rank_correlation(
            behavior[used].numpy(),
            centroid[used].numpy(),
            n_permutations=n_permutations,
            confidence_level=confidence_level,
            seed=seed,
        )
    n_corner = int((corner & finite).sum())
    caveat = _caveat(n_used, n_finite, n_corner, nope_layers, st.rho, st.ci)
    return _AcrossHeads(st, caveat, n_used, behavior, ident, used, corner)


def _pair_curves(curves: HeadScores, layers: tuple[int, ...]) -> dict[str, Tensor]:
    """Per-pair score curves of ``layers`` and their Spearman rho with the pair index."""
    li = [curves.layers.index(layer) for layer in layers if layer in curves.layers]
    if len(li) != len(layers):
        raise RopeBehaviorError(
            f"pair_scores lack layers {sorted(set(layers) - set(curves.layers))}; expected "
            f"per-pair scores of layers {list(layers)}"
        )
    ps, sy = _per_head(curves.s_pos, curves)[li], _per_head(curves.s_sym, curves)[li]
    d = ps - sy
    ok = torch.isfinite(d)
    idx = np.broadcast_to(np.arange(d.shape[-1], dtype=np.float64), d.shape)
    pr = torch.from_numpy(rho_along(torch.where(ok, d, 0.0).numpy(), idx))
    return dict(
        pair_s_pos=ps,
        pair_s_sym=sy,
        pair_behavior=d,
        pair_rho=torch.where(ok.all(-1), pr, float("nan")),
    )


@validates_inputs
def behavior_frequency_correspondence(
    scores: HeadScores,
    usage: FrequencyUsage,
    *,
    pair_scores: HeadScores | None = None,
    include: str = "identifiable",
    n_permutations: int = 1000,
    confidence_level: float = 0.95,
    seed: int | torch.Generator = 0,
) -> FrequencyCorrespondence:
    """Relate each head's ``s_pos - s_sym`` to its frequency centroid.

    ``scores`` are whole-head scores (then ``pair_scores`` may add per-pair curves) or
    per-pair scores (then they give the curves, and ``rho`` / ``p_value`` are NaN with
    ``behavior=None``: the across-head correlation needs whole-head scores). Layers are the
    ones both ``scores`` and ``usage`` hold; both must have the same heads per layer.
    ``include="identifiable"`` (default) lets only identifiable heads enter the statistic,
    ``"all"`` every head with a finite behaviour (NoPE layers are always left out).
    ``seed`` (an int, or a ``torch.Generator`` that draws one) fixes the permutations (the
    interval draws nothing). Raises if fewer than 3 heads have finite scores; fewer than 3
    identifiable ones give NaN statistics and say so in ``caveat``.
    """
    _check_inputs(scores, usage, pair_scores, include, confidence_level)
    n_permutations = as_count(n_permutations, "n_permutations")
    seed = as_seed(seed)
    head_scores, curves = (None, scores) if scores.per_pair else (scores, pair_scores)
    if curves is not None and not curves.per_pair:
        raise RopeBehaviorError("pair_scores must come from score_heads(..., per_pair=True)")
    layers = _common_layers(scores, usage)
    ui = [usage.layers.index(layer) for layer in layers]
    centroid = usage.centroid[ui].double().cpu()
    rotates = (usage.omega[ui].double().cpu() != 0).any(-1)  # [layer]
    nope_layers = [layer for layer, r in zip(layers, rotates.tolist()) if not r]
    st = RankCorrelation(math.nan, confidence_level=float(confidence_level))
    heads = _AcrossHeads(st, "per-pair scores only: no across-head statistic")
    if head_scores is not None:
        heads = _across_heads(
            head_scores, layers, centroid, rotates, nope_layers, include, n_permutations,
            float(confidence_level), seed,
        )  # fmt: skip
    pair = _pair_curves(curves, layers) if curves is not None else {}
    st = heads.st
    return FrequencyCorrespondence(
        layers=layers,
        behavior=heads.behavior,
        centroid=centroid,
        rho=st.rho,
        p_value=st.p_value,
        n_heads=heads.n_used,
        n_permutations=st.n_permutations,
        permutation_exact=st.exact,
        rho_ci=st.ci,
        rho_ci_method=st.ci_method,
        confidence_level=st.confidence_level,
        n_heads_total=int(centroid.numel()),
        caveat=heads.caveat,
        in_statistic=heads.used,
        identifiable_fraction=heads.ident,
        uniform_corner=heads.corner,
        **pair,
    )
