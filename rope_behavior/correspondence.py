"""Correspondence between behaviour and frequency (METHOD.md §4, last paragraph).

Across heads: the Spearman rank correlation of ``s_pos - s_sym`` (mean over prompts and
query positions, NaN rows left out) with the frequency centroid of
:class:`~rope_behavior.FrequencyUsage` (usage-weighted mean pair index; pair 0 is the
highest frequency), with a two-sided permutation p-value
``(1 + #{|rho_perm| >= |rho|}) / (1 + n_permutations)``. Per head: the per-pair score
curves (single-pair projection heads) and their Spearman correlation with the pair index.
The paper's finding predicts a negative ``rho`` (high frequency = low index = positional).
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.frequency import FrequencyUsage
from rope_behavior.head_scores import HeadScores

__all__ = ["FrequencyCorrespondence", "behavior_frequency_correspondence", "spearman"]


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (ties share their mean rank) along the last axis."""
    order = x.argsort(-1)
    sorted_x = torch.take_along_dim(x, order, -1)
    ranks = torch.empty_like(x, dtype=torch.float64)
    flat_x, flat_o, flat_r = (
        sorted_x.reshape(-1, x.shape[-1]),
        order.reshape(-1, x.shape[-1]),
        ranks.view(-1, x.shape[-1]),
    )
    for row in range(flat_x.shape[0]):
        _, inv, counts = torch.unique_consecutive(
            flat_x[row], return_inverse=True, return_counts=True
        )
        ends = counts.cumsum(0).double()
        avg = ends - (counts.double() - 1) / 2  # 1-based average rank of each tie group
        flat_r[row, flat_o[row]] = avg[inv]
    return ranks


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / torch.where(den > 0, den, 1.0), float("nan"))


def spearman(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
    return float(_pearson(_ranks(x.double()), _ranks(y.double())))


@dataclass(frozen=True, eq=False)
class FrequencyCorrespondence:
    """Behaviour vs frequency. ``behavior[layer, head]`` is the mean ``s_pos - s_sym``,
    ``centroid`` the frequency centroid (``layer`` indexes ``layers``); ``rho`` /
    ``p_value`` over the ``n_heads`` heads with a finite behaviour. With per-pair scores:
    ``pair_s_pos`` / ``pair_s_sym`` / ``pair_behavior`` ``[layer, head, pair]`` and
    ``pair_rho[layer, head]`` (Spearman of the pair curve with the pair index); else None."""

    layers: tuple[int, ...]
    behavior: Float[Tensor, "layer head"] | None = field(repr=False)
    centroid: Float[Tensor, "layer head"] = field(repr=False)
    rho: float
    p_value: float
    n_heads: int
    n_permutations: int
    pair_s_pos: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_s_sym: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_behavior: Float[Tensor, "layer head pair"] | None = field(default=None, repr=False)
    pair_rho: Float[Tensor, "layer head"] | None = field(default=None, repr=False)

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head), or per (layer, head, pair) with the
        head-level columns repeated when per-pair curves are present."""
        import pandas as pd

        rows = []
        n_l, n_h = self.centroid.shape
        for li in range(n_l):
            for h in range(n_h):
                base = {
                    "layer": self.layers[li],
                    "head": h,
                    "centroid": float(self.centroid[li, h]),
                    "behavior": float("nan")
                    if self.behavior is None
                    else float(self.behavior[li, h]),
                }
                if self.pair_behavior is None:
                    rows.append(base)
                    continue
                assert self.pair_s_pos is not None
                assert self.pair_s_sym is not None
                assert self.pair_rho is not None
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
        return pd.DataFrame(rows)


def _per_head(x: Tensor, hs: HeadScores) -> Tensor:
    """Mean over prompts and query positions, keeping [layer, head, (pair)]."""
    x = x.double()
    if hs.has_query_axis:
        x = x.movedim(3, 1).flatten(0, 1)  # query axis joins the prompt axis
    ok = ~torch.isnan(x)
    n = ok.sum(0)
    return torch.where(n > 0, torch.where(ok, x, 0.0).sum(0) / n.clamp_min(1), float("nan"))


def behavior_frequency_correspondence(
    scores: HeadScores,
    usage: FrequencyUsage,
    *,
    pair_scores: HeadScores | None = None,
    n_permutations: int = 1000,
    generator: torch.Generator | None = None,
) -> FrequencyCorrespondence:
    """Relate each head's ``s_pos - s_sym`` to its frequency centroid.

    ``scores`` are whole-head scores (then ``pair_scores`` may add per-pair curves) or
    per-pair scores (then they give the curves, and ``rho`` / ``p_value`` are NaN with
    ``behavior=None``: the across-head correlation needs whole-head scores). Layers are the
    ones both ``scores`` and ``usage`` hold. ``generator`` drives the permutations
    (default: seeded 0).
    """
    if not isinstance(scores, HeadScores) or not isinstance(usage, FrequencyUsage):
        raise RopeBehaviorError(
            f"expected (HeadScores, FrequencyUsage); got ({type(scores).__name__}, {type(usage).__name__})"
        )
    if (
        isinstance(n_permutations, bool)
        or not isinstance(n_permutations, int)
        or n_permutations < 1
    ):
        raise RopeBehaviorError(f"n_permutations={n_permutations!r}; expected an int >= 1")
    head_scores, curves = (None, scores) if scores.per_pair else (scores, pair_scores)
    if curves is not None and not curves.per_pair:
        raise RopeBehaviorError("pair_scores must come from score_heads(..., per_pair=True)")
    layers = tuple(layer for layer in scores.layers if layer in usage.layers)
    if not layers:
        raise RopeBehaviorError(
            f"scores cover layers {list(scores.layers)} and usage covers {list(usage.layers)}: "
            "no layer in common"
        )
    centroid = usage.centroid[[usage.layers.index(layer) for layer in layers]].double().cpu()
    behavior, rho, p_value, n_heads = None, float("nan"), float("nan"), 0
    if head_scores is not None:
        li = [head_scores.layers.index(layer) for layer in layers]
        behavior = _per_head(head_scores.s_pos - head_scores.s_sym, head_scores)[li]
        ok = ~torch.isnan(behavior)
        x, y = behavior[ok], centroid[ok]
        n_heads = int(ok.sum())
        if n_heads < 3:
            raise RopeBehaviorError(
                f"only {n_heads} head(s) have finite scores; the rank correlation needs at least 3"
            )
        rx, ry = _ranks(x), _ranks(y)
        rho = float(_pearson(rx, ry))
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        perm = torch.rand(n_permutations, n_heads, generator=g).argsort(-1)
        null = _pearson(rx[perm], ry.expand(n_permutations, -1))
        p_value = (
            float("nan")
            if rho != rho
            else float((1 + (null.abs() >= abs(rho) - 1e-12).sum()) / (1 + n_permutations))
        )
    pair = {}
    if curves is not None:
        li = [curves.layers.index(layer) for layer in layers if layer in curves.layers]
        if len(li) != len(layers):
            raise RopeBehaviorError(
                f"pair_scores lack layers {sorted(set(layers) - set(curves.layers))}"
            )
        ps, sy = _per_head(curves.s_pos, curves)[li], _per_head(curves.s_sym, curves)[li]
        diff = ps - sy
        idx = torch.arange(diff.shape[-1], dtype=torch.float64).expand_as(diff)
        finite = torch.isfinite(diff).all(-1)
        pr = _pearson(_ranks(torch.where(torch.isfinite(diff), diff, 0.0)), _ranks(idx))
        pair = dict(
            pair_s_pos=ps,
            pair_s_sym=sy,
            pair_behavior=diff,
            pair_rho=torch.where(finite, pr, float("nan")),
        )
    return FrequencyCorrespondence(
        layers=layers,
        behavior=behavior,
        centroid=centroid,
        rho=rho,
        p_value=p_value,
        n_heads=n_heads,
        n_permutations=n_permutations,
        **pair,
    )
