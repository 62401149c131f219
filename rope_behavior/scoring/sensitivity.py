"""How the positional / symbolic scores move with block size and temperature
(``docs/method.md`` §8).

:func:`score_sensitivity` scores every head at each point of a grid of ``block_size`` x
``tau`` and says how far the heads move against a reference point (by default the
defaults of :func:`~rope_behavior.score_heads`, ``block_size=8, tau=0.05``): the rank
correlation (Spearman, Kendall's tau-b) over heads of the mean ``s_pos - s_sym``, and the
share of heads whose sign of ``s_pos - s_sym`` flips.

One forward serves the whole grid. Keys mode swaps keys *inside* each layer; the queries
and keys the model computes do not depend on the block size or on the temperature, so
the layers are streamed once (:func:`capture_layers`) and every grid point is scored from
them by :func:`~rope_behavior.scoring.scorer.score_checked` (its ``captured``): each
point equals ``score_heads(model, tokens, block_size=b, tau=t, seed=seed, ...)``. The
layers are held in memory together (queries and keys of every chosen layer).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_seed,
    check_indices,
    validates_inputs,
)
from rope_behavior.model.context import ModelContext, evaluating, resolve
from rope_behavior.qk.captured import LayerQK, stream_checked, validate_mask, validate_tokens
from rope_behavior.scoring.head_classes import is_identifiable
from rope_behavior.scoring.key_chain import key_chains
from rope_behavior.scoring.scorer import ScoreSettings, score_checked
from rope_behavior.scoring.swap_scores import _check_tau

__all__ = [
    "DEFAULT_TAUS",
    "ScoreSensitivity",
    "capture_layers",
    "kendall_tau_b",
    "score_sensitivity",
    "spearman_rho",
]

DEFAULT_TAUS = (0.01, 0.05, 0.25, 1.0)
"""Temperatures of the default grid: 0.01 (nearly the one swap of largest ``|d_a - d_c|``)
to 1.0 (nearly equal weights: block means differ by at most ``1 / block_size``)."""


def capture_layers(
    context: ModelContext,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None,
    layers: tuple[int, ...],
) -> list[LayerQK]:
    """Queries and keys of ``layers`` from one forward (validated inputs, model in eval
    mode), with the raw keys where hooks sit at a layer's key sites (keys mode needs them)."""
    raw = bool(key_chains(context.adapter, context.spec, layers))
    got: list[LayerQK] = []
    stream_checked(context, tokens, mask, layers, got.append, raw_keys=raw)
    return got


def _ranks(x: Tensor) -> Tensor:
    """Ranks of a 1-D float tensor, ties given their average rank."""
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    out = ranks.clone()
    for v in torch.unique(x):  # average the ranks of tied values
        tie = x == v
        if int(tie.sum()) > 1:
            out[tie] = ranks[tie].mean()
    return out


def spearman_rho(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN below 3 points or when
    one side is constant."""
    x, y = x.double(), y.double()
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else math.nan


def kendall_tau_b(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Kendall's tau-b (ties on either side corrected for); NaN below 3 points or when one
    side is constant."""
    x, y = x.double(), y.double()
    if len(x) < 3:
        return math.nan
    sx = torch.sign(x[:, None] - x[None, :])
    sy = torch.sign(y[:, None] - y[None, :])
    iu = torch.triu_indices(len(x), len(x), 1)
    sx, sy = sx[iu[0], iu[1]], sy[iu[0], iu[1]]
    den = math.sqrt(float((sx != 0).sum()) * float((sy != 0).sum()))
    return float((sx * sy).sum()) / den if den > 0 else math.nan


@dataclass(frozen=True, eq=False)
class ScoreSensitivity:
    """Mean scores of every head at every grid point, and how they move (module docstring).

    ``s_pos``, ``s_sym``, ``identifiable_fraction`` ``[block_size, tau, layer, head]``:
    means over prompts (NaN rows left out) at each point, ``layer`` indexing ``layers``;
    ``difference`` is ``s_pos - s_sym``. Against the ``reference`` point, per grid point
    ``[block_size, tau]``: ``spearman`` / ``kendall`` of ``difference`` over the heads
    finite at both points (``n_compared`` of them), ``sign_flip_share`` the share of those
    whose sign of ``difference`` differs, and ``identifiable_flip_share`` the same over the
    heads identifiable at both points (``n_identifiable`` of them; a head is identifiable
    when at least half of its prompts are). ``n_swaps`` / ``n_block_pairs`` per block
    size: the swaps used (all block pairs up to 64, else 64 drawn with ``seed``).
    """

    block_sizes: tuple[int, ...]
    taus: tuple[float, ...]
    reference: tuple[int, float]
    layers: tuple[int, ...]
    n_heads: int
    n_prompts: int
    n_swaps: tuple[int, ...]
    n_block_pairs: tuple[int, ...]
    s_pos: Float[Tensor, "block_size tau layer head"] = field(repr=False)
    s_sym: Float[Tensor, "block_size tau layer head"] = field(repr=False)
    identifiable_fraction: Float[Tensor, "block_size tau layer head"] = field(repr=False)
    spearman: Float[Tensor, "block_size tau"] = field(repr=False)
    kendall: Float[Tensor, "block_size tau"] = field(repr=False)
    sign_flip_share: Float[Tensor, "block_size tau"] = field(repr=False)
    identifiable_flip_share: Float[Tensor, "block_size tau"] = field(repr=False)
    n_compared: Int[Tensor, "block_size tau"] = field(repr=False)
    n_identifiable: Int[Tensor, "block_size tau"] = field(repr=False)

    @property
    def difference(self) -> Float[Tensor, "block_size tau layer head"]:
        return self.s_pos - self.s_sym

    @property
    def flipped(self) -> Bool[Tensor, "block_size tau layer head"]:
        """Heads whose sign of ``s_pos - s_sym`` differs from the reference point's (False
        where either is NaN)."""
        d, ref = self.difference, self.difference[self._ref_index()]
        both = ~torch.isnan(d) & ~torch.isnan(ref)
        return both & (torch.sign(d) != torch.sign(ref))

    def _ref_index(self) -> tuple[int, int]:
        return self.block_sizes.index(self.reference[0]), self.taus.index(self.reference[1])

    def to_frame(self) -> Any:
        """Tidy DataFrame: one row per (block_size, tau, layer, head) with ``s_pos``,
        ``s_sym``, ``difference``, ``identifiable_fraction`` and ``flipped``."""
        import pandas as pd

        shape = self.s_pos.shape
        grids = [g.reshape(-1) for g in torch.meshgrid(*map(torch.arange, shape), indexing="ij")]
        return pd.DataFrame(
            {
                "block_size": torch.tensor(self.block_sizes)[grids[0]].numpy(),
                "tau": torch.tensor(self.taus, dtype=torch.float64)[grids[1]].numpy(),
                "layer": torch.tensor(self.layers)[grids[2]].numpy(),
                "head": grids[3].numpy(),
                "s_pos": self.s_pos.reshape(-1).numpy(),
                "s_sym": self.s_sym.reshape(-1).numpy(),
                "difference": self.difference.reshape(-1).numpy(),
                "identifiable_fraction": self.identifiable_fraction.reshape(-1).numpy(),
                "flipped": self.flipped.reshape(-1).numpy(),
            }
        )

    def stability_frame(self) -> Any:
        """One row per grid point: the rank correlations and sign flips against the
        reference point, the heads compared and the swaps used."""
        import pandas as pd

        rows = []
        for bi, b in enumerate(self.block_sizes):
            for ti, t in enumerate(self.taus):
                rows.append({
                    "block_size": b, "tau": t, "reference": (b, t) == self.reference,
                    "spearman": float(self.spearman[bi, ti]),
                    "kendall": float(self.kendall[bi, ti]),
                    "sign_flip_share": float(self.sign_flip_share[bi, ti]),
                    "identifiable_flip_share": float(self.identifiable_flip_share[bi, ti]),
                    "n_compared": int(self.n_compared[bi, ti]),
                    "n_identifiable": int(self.n_identifiable[bi, ti]),
                    "n_swaps": self.n_swaps[bi], "n_block_pairs": self.n_block_pairs[bi],
                })  # fmt: skip
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        """A few lines within 80 columns."""
        off = torch.ones_like(self.spearman, dtype=torch.bool)
        off[self._ref_index()] = False
        rho, flips = self.spearman[off], self.sign_flip_share[off]
        spread = (
            f"  other points: Spearman {_range(rho)}, sign flips {_range(flips)}"
            if bool(off.any())
            else "  one grid point"
        )
        return (
            f"ScoreSensitivity: {len(self.block_sizes)} block sizes x {len(self.taus)} taus, "
            f"{len(self.layers)} layers x {self.n_heads} heads\n"
            f"  block_size {list(self.block_sizes)}, tau {list(self.taus)}\n"
            f"  reference block_size={self.reference[0]}, tau={self.reference[1]:g}; "
            f"{self.n_prompts} prompts\n{spread}"
        )


def _range(x: Tensor) -> str:
    fin = x[~torch.isnan(x)]
    if not fin.numel():
        return "nan"
    return f"{float(fin.min()):.2f}..{float(fin.max()):.2f}"


def _grid(values: object, what: str, check: Any) -> tuple[Any, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | Tensor):
        raise RopeBehaviorError(f"{what}={values!r}; expected a non-empty sequence of values")
    out = tuple(check(v) for v in values)
    if not out or len(set(out)) != len(out):
        raise RopeBehaviorError(f"{what}={values!r}; expected distinct values, at least one")
    return out


def _compare(
    d: Tensor, ref: Tensor, ident: Tensor, ref_ident: Tensor
) -> tuple[float, float, float, float, int, int]:
    ok = ~torch.isnan(d) & ~torch.isnan(ref)
    x, y = ref[ok], d[ok]
    flips = torch.sign(x) != torch.sign(y)
    both = (ident & ref_ident)[ok]
    nan = math.nan
    return (
        spearman_rho(x, y),
        kendall_tau_b(x, y),
        float(flips.double().mean()) if len(x) else nan,
        float(flips[both].double().mean()) if bool(both.any()) else nan,
        len(x),
        int(both.sum()),
    )


@validates_inputs
def score_sensitivity(
    model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    block_sizes: Sequence[int] = (4, 8, 16),
    taus: Sequence[float] = DEFAULT_TAUS,
    reference: tuple[int, float] = (8, 0.05),
    layers: int | Sequence[int] | None = None,
    exclude_keys: str | int | Sequence[int | str] = "auto",
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    seed: int = 0,
) -> ScoreSensitivity:
    """Scores of every head over a grid of block sizes x temperatures, from one forward.

    Args:
        model: as for :func:`~rope_behavior.score_heads` (scored in keys mode, at each
            prompt's last token).
        tokens: ``[prompt, pos]`` token ids; every prompt needs two blocks of the largest
            block size before its last token.
        block_sizes: distinct block sizes.
        taus: distinct temperatures of the swap weights (each > 0).
        reference: the ``(block_size, tau)`` point the others are compared with; it must be
            on the grid.
        layers: layer indices (default: all).
        exclude_keys: as for :func:`~rope_behavior.score_heads`.
        attention_mask: ``[prompt, pos]`` 0/1 mask for prompts of different lengths.
        seed: an int: every grid point draws its swaps (where there are more than 64 block
            pairs) from a generator seeded with it, as ``score_heads(seed=seed)`` does.

    Returns:
        :class:`ScoreSensitivity`.
    """
    sizes = _grid(block_sizes, "block_sizes", lambda b: as_count(b, "block_sizes entry"))
    temps = _grid(taus, "taus", _check_tau)
    try:
        ref = (as_count(reference[0], "reference block_size"), _check_tau(reference[1]))
    except (TypeError, IndexError, KeyError):
        raise RopeBehaviorError(
            f"reference={reference!r}; expected a (block_size, tau) pair on the grid"
        ) from None
    if ref[0] not in sizes or ref[1] not in temps:
        raise RopeBehaviorError(
            f"reference={reference!r} is not on the grid; options: block_size in "
            f"{list(sizes)} with tau in {list(temps)}"
        )
    seed = as_seed(seed)
    context = resolve(model)
    tokens = validate_tokens(tokens, context.adapter)
    mask = validate_mask(attention_mask, tokens)
    n_layers = context.spec.n_layers
    chosen = check_indices(layers, n_layers, "layer", f"{n_layers} layers")
    shape = (len(sizes), len(temps), len(chosen), context.spec.n_heads)
    s_pos = torch.full(shape, math.nan, dtype=torch.float64)
    s_sym, ident = s_pos.clone(), s_pos.clone()
    n_swaps, n_pairs = [], []
    with evaluating(context.model):
        captured = capture_layers(context, tokens, mask, chosen)
        for bi, b in enumerate(sizes):
            for ti, t in enumerate(temps):
                settings = ScoreSettings(block_size=b, tau=t, exclude_keys=exclude_keys)
                gen = torch.Generator().manual_seed(seed)
                hs = score_checked(context, tokens, mask, chosen, settings, gen, captured=captured)
                s_pos[bi, ti] = torch.nanmean(hs.s_pos, 0)
                s_sym[bi, ti] = torch.nanmean(hs.s_sym, 0)
                ident[bi, ti] = hs.identifiable.double().mean(0)
            n_swaps.append(len(hs.swaps))
            n_pairs.append(hs.n_block_pairs)
    diff = (s_pos - s_sym).flatten(2)
    heads_ok = is_identifiable(ident).flatten(2)
    rb, rt = sizes.index(ref[0]), temps.index(ref[1])
    stats = torch.tensor(
        [
            [_compare(diff[bi, ti], diff[rb, rt], heads_ok[bi, ti], heads_ok[rb, rt])
             for ti in range(len(temps))]
            for bi in range(len(sizes))
        ],
        dtype=torch.float64,
    )  # fmt: skip
    return ScoreSensitivity(
        block_sizes=sizes,
        taus=temps,
        reference=ref,
        layers=chosen,
        n_heads=context.spec.n_heads,
        n_prompts=int(tokens.shape[0]),
        n_swaps=tuple(n_swaps),
        n_block_pairs=tuple(n_pairs),
        s_pos=s_pos,
        s_sym=s_sym,
        identifiable_fraction=ident,
        spearman=stats[..., 0],
        kendall=stats[..., 1],
        sign_flip_share=stats[..., 2],
        identifiable_flip_share=stats[..., 3],
        n_compared=stats[..., 4].long(),
        n_identifiable=stats[..., 5].long(),
    )
