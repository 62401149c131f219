"""The score result objects: :class:`HeadScores` (per prompt, layer and head, with
diagnostics), its bootstrap summary :class:`ScoreSummary`, and tidy frames of them. The
pure score of attention rows is in :mod:`rope_behavior.scoring.swap_scores`.
"""

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior import display
from rope_behavior.errors import (
    as_count,
    as_fraction,
    as_seed,
    validates_inputs,
)

__all__ = ["HeadScores", "ScoreSummary", "paired_frame"]


_SUMMARY_STATS = ("mean", "std", "se", "lo", "hi")


@dataclass(frozen=True, eq=False)
class ScoreSummary:
    """Per head, over prompts, of :class:`HeadScores` (NaN rows left out); tensors are
    shaped like ``HeadScores.s_pos`` without the prompt axis.

    ``s_pos_mean`` / ``s_pos_std``: mean and standard deviation over prompts.
    ``s_pos_se``, ``s_pos_lo``, ``s_pos_hi``: standard error and ``level`` percentile
    interval of the mean from a two-way bootstrap (``n_boot`` draws, seeded): each draw
    resamples the prompts AND the swap set (the same swaps for every prompt, as the score
    is computed), so the interval covers both which prompts and which block pairs were
    used. ``n_swaps`` of ``n_block_pairs`` pairs were used. The same five for ``s_sym``.
    ``identifiable_fraction``: share of prompts whose row is identifiable;
    ``swapped_mass`` / ``leftover_mass``: their means (see :class:`HeadScores`).
    """

    layers: tuple[int, ...]
    query_positions: tuple[int, ...] | None
    per_pair: bool
    n_swaps: int
    n_block_pairs: int
    n_boot: int
    level: float
    s_pos_mean: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_pos_std: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_pos_se: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_pos_lo: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_pos_hi: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_sym_mean: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_sym_std: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_sym_se: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_sym_lo: Float[Tensor, "layer head *rest"] = field(repr=False)
    s_sym_hi: Float[Tensor, "layer head *rest"] = field(repr=False)
    n_prompts: Int[Tensor, "layer head *rest"] = field(repr=False)
    identifiable_fraction: Float[Tensor, "layer head *rest"] = field(repr=False)
    swapped_mass: Float[Tensor, "layer head *rest"] = field(repr=False)
    leftover_mass: Float[Tensor, "layer head *rest"] = field(repr=False)

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the axes of every per-head tensor here: ``layer, head``, then ``query``
        and ``pair`` where the scores had them (see :attr:`HeadScores.dims`)."""
        return (
            "layer",
            "head",
            *(("query",) if self.query_positions is not None else ()),
            *(("pair",) if self.per_pair else ()),
        )

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (layer, head, [query_pos], [pair])."""
        names = [f"{s}_{k}" for s in ("s_pos", "s_sym") for k in _SUMMARY_STATS]
        names += ["n_prompts", "identifiable_fraction", "swapped_mass", "leftover_mass"]
        cols = {k: getattr(self, k) for k in names}
        df = _frame(cols, ["layer", "head"], self.layers, self.query_positions, self.per_pair)
        df["n_swaps"] = self.n_swaps
        df["n_block_pairs"] = self.n_block_pairs
        return df

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


def _nanmean(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    ok = ~torch.isnan(x)
    n = ok.sum(dim)
    mean = torch.where(ok, x, 0.0).sum(dim) / n.clamp_min(1)
    return torch.where(n > 0, mean, torch.full_like(mean, float("nan"))), n


def _counts(n: int, r: int, gen: torch.Generator) -> Tensor:
    """``r`` bootstrap resamples of ``n`` items as counts [r, n] (float64)."""
    idx = torch.multinomial(torch.ones(n), n * r, replacement=True, generator=gen).view(r, n)
    return torch.zeros(r, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(r, n).double())


def _bootstrap(
    per_swaps: tuple[Tensor, ...], weight: Tensor, n_boot: int, level: float, gen: torch.Generator
) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Two-way bootstrap of the prompt-mean of ``sum_s w pos / sum_s w`` (prompt axis 0,
    swap axis last) of each of ``per_swaps``, all from the same resamples: SE and
    percentile interval, each shaped like one prompt's score."""
    n_p, n_s = weight.shape[0], weight.shape[-1]
    wxs = [torch.where(weight > 0, weight * torch.nan_to_num(x), 0.0) for x in per_swaps]
    draws: list[list[Tensor]] = [[] for _ in per_swaps]
    step = max(1, (1 << 24) // max(1, weight[..., 0].numel()))
    for lo in range(0, n_boot, step):
        r = min(step, n_boot - lo)
        cs = _counts(n_s, r, gen)  # [r, S]
        cp = _counts(n_p, r, gen)  # [r, P]
        den = weight @ cs.T  # [P, ..., r]
        has = den > 0  # where not, every drawn swap weighs 0 and so does ``wx @ cs.T``
        den = torch.where(has, den, 1.0)
        # prompt weights of each draw, [P, 1, ..., r]: a broadcast product summed over
        # prompts (einsum made it a batched matmul of r tiny products: 0.5 of a forward)
        cpt = cp.T.reshape(n_p, *(1,) * (weight.ndim - 2), r)
        cnt = (cpt * has).sum(0)  # prompts with a score in each draw
        for wx, out in zip(wxs, draws):
            top = (cpt * ((wx @ cs.T) / den)).sum(0)  # 0 where a prompt has no score
            out.append(torch.where(cnt > 0, top / cnt.clamp_min(1e-300), float("nan")))
    return [_spread(torch.cat(d, -1), level) for d in draws]


def _spread(d: Tensor, level: float) -> tuple[Tensor, Tensor, Tensor]:
    """SE and percentile interval of bootstrap draws ``d`` [..., n_boot] (NaN draws left out)."""
    ok = ~torch.isnan(d)
    cnt = ok.sum(-1)
    mean = torch.where(ok, d, 0.0).sum(-1) / cnt.clamp_min(1)
    var = (torch.where(ok, d - mean[..., None], 0.0) ** 2).sum(-1) / (cnt - 1).clamp_min(1)
    alpha = (1 - level) / 2
    q_lo = torch.nanquantile(d, alpha, dim=-1)
    q_hi = torch.nanquantile(d, 1 - alpha, dim=-1)
    nan = torch.full_like(mean, float("nan"))
    enough = cnt > 1
    return (
        torch.where(enough, var.sqrt(), nan),
        torch.where(enough, q_lo, nan),
        torch.where(enough, q_hi, nan),
    )


@dataclass(frozen=True, eq=False)
class HeadScores:
    """Positional / symbolic scores of heads, per prompt.

    Axis order of ``s_pos``, ``s_sym`` and the per-row diagnostics: ``[prompt, layer, head]``,
    then ``query`` when ``query_positions`` was ``"all"`` or a sequence (``query_positions``
    lists the positions), then ``pair`` when ``per_pair`` (single-pair projection heads).
    ``layer`` indexes ``layers``. Per-swap tensors add a trailing ``swap`` axis indexing
    ``swaps`` (drawn from ``n_block_pairs`` block pairs).

    Diagnostics: ``entropy`` (row entropy / log(number of attended keys), 1 = uniform),
    ``distance_from_uniform`` (total variation to the uniform row over attended keys,
    divided by its maximum ``1 - 1/k``; 0 = uniform), ``separation`` (see
    :class:`~rope_behavior.scoring.swap_scores.SwapScores`), ``block_mass`` (share of the row's attention on keys inside
    blocks), ``leftover_mass`` (on movable keys in no block: never moved),
    ``swapped_mass`` (alpha-weighted share inside the two swapped blocks),
    ``identifiable = (separation >= identifiability_threshold) & (swapped_mass >=
    min_swapped_mass)``. Per swap: ``swap_weight`` (alpha; 0 for a skipped swap),
    ``pos_swap`` / ``sym_swap``, ``swap_mass`` (row mass in blocks a and c) and
    ``mass_moved`` (total variation between original and swapped rows); NaN for a skipped
    swap. ``start[prompt]`` is the first movable key; ``excluded[prompt, pos]`` the keys
    left out (``exclude_keys`` as given); ``query_pos[prompt, query]`` the query positions
    of each prompt (``query_positions="last"`` takes each prompt's last token, so under
    right padding they differ; ``query_positions`` then holds the largest).
    """

    mode: str
    layers: tuple[int, ...]
    n_heads: int
    query_positions: tuple[int, ...]
    has_query_axis: bool
    per_pair: bool
    swaps: tuple[tuple[int, int], ...]
    n_block_pairs: int
    block_size: int
    align: str
    tau: float
    exclude_keys: tuple[int | str, ...]
    identifiability_threshold: float
    min_swapped_mass: float
    start: Int[Tensor, " prompt"] = field(repr=False)
    query_pos: Int[Tensor, "prompt query"] = field(repr=False)
    excluded: Bool[Tensor, "prompt pos"] = field(repr=False)
    s_pos: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    s_sym: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    separation: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    identifiable: Bool[Tensor, "prompt layer head *rest"] = field(repr=False)
    entropy: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    distance_from_uniform: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    block_mass: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    leftover_mass: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    swapped_mass: Float[Tensor, "prompt layer head *rest"] = field(repr=False)
    mass_moved: Float[Tensor, "prompt layer head *rest swap"] = field(repr=False)
    swap_weight: Float[Tensor, "prompt layer head *rest swap"] = field(repr=False)
    swap_mass: Float[Tensor, "prompt layer head *rest swap"] = field(repr=False)
    pos_swap: Float[Tensor, "prompt layer head *rest swap"] = field(repr=False)
    sym_swap: Float[Tensor, "prompt layer head *rest swap"] = field(repr=False)

    @property
    def heads(self) -> tuple[int, ...]:
        """The query heads scored (indices; every head of each layer)."""
        return tuple(range(self.n_heads))

    @property
    def dims(self) -> tuple[str, ...]:
        """Names of the axes of ``s_pos``, ``s_sym`` and the per-row diagnostics: ``prompt,
        layer, head``, then ``query`` (``query_positions`` "all" or a sequence) and ``pair``
        (``per_pair``) where the call asked for them. Per-swap tensors add ``swap``."""
        return (
            "prompt",
            "layer",
            "head",
            *(("query",) if self.has_query_axis else ()),
            *(("pair",) if self.per_pair else ()),
        )

    @validates_inputs
    def mean(
        self, *, n_boot: int = 1000, level: float = 0.95, seed: int | torch.Generator = 0
    ) -> ScoreSummary:
        """Mean and spread over prompts, with two-way bootstrap intervals (see
        :class:`ScoreSummary`); rows with NaN scores are left out."""
        n_boot = as_count(n_boot, "n_boot", low=2)
        level = as_fraction(level, "level", open_low=True, open_high=True, hint="e.g. 0.95")
        seed = as_seed(seed)
        out: dict[str, Tensor] = {}
        gen = torch.Generator().manual_seed(seed)
        spreads = _bootstrap(
            (self.pos_swap, self.sym_swap), self.swap_weight, n_boot, float(level), gen
        )
        for name, (se, lo, hi) in zip(("s_pos", "s_sym"), spreads):
            x = getattr(self, name)
            mean, n = _nanmean(x, 0)
            ok = ~torch.isnan(x)
            var = (torch.where(ok, x - mean, 0.0) ** 2).sum(0) / (n - 1).clamp_min(1)
            out[f"{name}_mean"] = mean
            out[f"{name}_std"] = torch.where(n > 1, var.sqrt(), float("nan"))
            out[f"{name}_se"], out[f"{name}_lo"], out[f"{name}_hi"] = se, lo, hi
            out["n_prompts"] = n
        return ScoreSummary(
            layers=self.layers,
            query_positions=self.query_positions if self.has_query_axis else None,
            per_pair=self.per_pair,
            n_swaps=len(self.swaps),
            n_block_pairs=self.n_block_pairs,
            n_boot=n_boot,
            level=float(level),
            identifiable_fraction=self.identifiable.double().mean(0),
            swapped_mass=_nanmean(self.swapped_mass, 0)[0],
            leftover_mass=_nanmean(self.leftover_mass, 0)[0],
            **out,
        )

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (prompt, layer, head, [query_pos], [pair]) with the
        scores, the diagnostics, the mean mass moved over used swaps and their number."""
        used = self.swap_weight > 0
        cols = {
            "s_pos": self.s_pos,
            "s_sym": self.s_sym,
            "separation": self.separation,
            "identifiable": self.identifiable,
            "entropy": self.entropy,
            "distance_from_uniform": self.distance_from_uniform,
            "block_mass": self.block_mass,
            "leftover_mass": self.leftover_mass,
            "swapped_mass": self.swapped_mass,
            "mass_moved": torch.where(used, self.mass_moved, 0.0).sum(-1)
            / used.sum(-1).clamp_min(1),
            "n_swaps_used": used.sum(-1),
        }
        qp = self.query_positions if self.has_query_axis else None
        df = _frame(cols, ["prompt", "layer", "head"], self.layers, qp, self.per_pair)
        if not self.has_query_axis:  # one query per prompt ("last": each prompt's own)
            df.insert(3, "query_pos", self.query_pos[:, 0].numpy()[df["prompt"].to_numpy()])
        return df

    def __repr__(self) -> str:
        return display.text(self)

    def _repr_html_(self) -> str:
        return display.html(self)


def _frame(
    cols: dict[str, Tensor],
    lead: list[str],
    layers: tuple[int, ...],
    query_positions: tuple[int, ...] | None,
    per_pair: bool,
) -> Any:
    import pandas as pd

    names = [
        *lead,
        *(["query_pos"] if query_positions is not None else []),
        *(["pair"] if per_pair else []),
    ]
    shape = next(iter(cols.values())).shape
    grids = torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")
    data: dict[str, Any] = {}
    for name, g in zip(names, grids):
        g = g.reshape(-1)
        if name == "layer":
            g = torch.tensor(layers)[g]
        elif name == "query_pos":
            g = torch.tensor(query_positions)[g]
        data[name] = g.numpy()
    for k, v in cols.items():
        data[k] = v.detach().cpu().reshape(-1).numpy()
    return pd.DataFrame(data)


def paired_frame(
    layers: tuple[int, ...], s_pos: Tensor, s_sym: Tensor, other: "HeadScores", prefix: str
) -> Any:
    """One row per (prompt, layer, head) of a variant score (``s_pos``, ``s_sym``
    ``[prompt, layer, head]``) beside the softmax swap scores ``other`` of the same rows
    (``{prefix}_s_pos``, ``{prefix}_s_sym``) and their ``identifiable`` flag."""
    import pandas as pd

    p, li, h = (
        g.reshape(-1) for g in torch.meshgrid(*map(torch.arange, s_pos.shape), indexing="ij")
    )
    return pd.DataFrame(
        {
            "prompt": p.numpy(),
            "layer": torch.tensor(layers)[li].numpy(),
            "head": h.numpy(),
            "s_pos": s_pos.reshape(-1).numpy(),
            "s_sym": s_sym.reshape(-1).numpy(),
            f"{prefix}_s_pos": other.s_pos.reshape(-1).numpy(),
            f"{prefix}_s_sym": other.s_sym.reshape(-1).numpy(),
            "identifiable": other.identifiable.reshape(-1).numpy(),
        }
    )
