"""Pure scoring of attention rows under block swaps: :class:`SwapScores` and
:func:`block_swap_scores`, and the checks of a temperature and a swap list that the scorer
shares.

See :mod:`rope_behavior.scoring.scorer` for the block convention. Nothing here touches a model.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError, as_count, as_fraction, as_int, validates_inputs

__all__ = ["SwapScores", "block_swap_scores"]


@dataclass(frozen=True, eq=False)
class SwapScores:
    """Scores of attention rows under block swaps (see the module docstring).

    ``separation`` is ``sum alpha * (1 - cos(v, (d_c, d_a)))``: the largest gap between
    ``pos_swap`` and ``sym_swap`` the row allows (0 for a uniform row)."""

    s_pos: Float[Tensor, "*batch"]
    s_sym: Float[Tensor, "*batch"]
    pos_swap: Float[Tensor, "*batch swap"]
    sym_swap: Float[Tensor, "*batch swap"]
    weight: Float[Tensor, "*batch swap"]
    separation: Float[Tensor, "*batch"]


def _combine(d: Tensor, d_new: Tensor, valid: Tensor, tau: float) -> SwapScores:
    """Scores from block means ``d``, ``d_new`` ``[..., swap, 2]`` (a, c) and ``valid``."""
    vn = d.norm(dim=-1)
    valid = valid & (vn > 0)
    nn_ = vn * d_new.norm(dim=-1)
    safe = torch.where(nn_ > 0, nn_, 1.0)
    pos = torch.where(nn_ > 0, (d * d_new).sum(-1) / safe, 0.0).clamp(0.0, 1.0)
    sym = torch.where(nn_ > 0, (d.flip(-1) * d_new).sum(-1) / safe, 0.0).clamp(0.0, 1.0)
    flip_cos = torch.where(
        vn > 0, 2 * d[..., 0] * d[..., 1] / torch.where(vn > 0, vn, 1.0) ** 2, 1.0
    )
    any_valid = valid.any(-1)
    logit = ((d[..., 0] - d[..., 1]).abs() / tau).masked_fill(~valid, float("-inf"))
    logit = logit.masked_fill(~any_valid[..., None], 0.0)
    w = torch.where(valid, torch.softmax(logit, dim=-1), 0.0)
    nan = torch.tensor(float("nan"), dtype=d.dtype, device=d.device)
    return SwapScores(
        s_pos=torch.where(any_valid, (w * pos).sum(-1), nan),
        s_sym=torch.where(any_valid, (w * sym).sum(-1), nan),
        pos_swap=pos,
        sym_swap=sym,
        weight=w,
        separation=torch.where(any_valid, (w * (1 - flip_cos)).sum(-1), nan),
    )


def _check_tau(tau: object) -> float:
    return as_fraction(tau, "tau", high=math.inf, open_low=True, open_high=True, hint="e.g. 0.05")


def _check_swaps(swaps: object, n_blocks: int, where: str) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    try:
        items = list(swaps)  # type: ignore[call-overload]
    except TypeError:
        raise RopeBehaviorError(
            f"swaps={swaps!r}; expected a sequence of block-index pairs (a, c)"
        ) from None
    if not items:
        raise RopeBehaviorError("swaps is empty; expected at least one block-index pair (a, c)")
    for s in items:
        pair = tuple(s) if isinstance(s, Sequence | Tensor) else (s,)
        ok = len(pair) == 2 and all(not isinstance(x, bool) and isinstance(x, int) for x in pair)
        if not ok or pair[0] == pair[1]:
            raise RopeBehaviorError(
                f"swap {s!r}: expected a pair (a, c) of two different block indices"
            )
        a, c = sorted(pair)
        if a < 0 or c >= n_blocks:
            raise RopeBehaviorError(
                f"swap {s!r} refers to block {c if c >= n_blocks else a}; {where} has {n_blocks} "
                f"blocks (valid indices 0..{n_blocks - 1})"
            )
        if (a, c) in out:
            raise RopeBehaviorError(f"swap {s!r} is listed twice (swaps are unordered pairs)")
        out.append((a, c))
    return out


@validates_inputs
def block_swap_scores(
    row: Float[Tensor, "*batch key"],
    swapped_rows: Float[Tensor, "*batch swap key"],
    swaps: Sequence[tuple[int, int]],
    *,
    block_size: int,
    start: int = 0,
    tau: float = 0.05,
) -> SwapScores:
    """The pure score of attention rows over keys ``0..n`` (the query is the last key).

    ``row`` is the original attention row (already renormalised as wanted),
    ``swapped_rows[..., s, :]`` the row after swap ``swaps[s]``; blocks follow the module's
    convention with the given ``start``.
    """
    block_size = as_count(block_size, "block_size")
    tau = _check_tau(tau)
    n = row.shape[-1] - 1
    start = as_int(start, "start", low=0, high=n)
    m = (n - start) // block_size
    if m < 2:
        raise RopeBehaviorError(
            f"fewer than two blocks: keys {start}..{n - 1} hold {m} block(s) of block_size="
            f"{block_size}; need n - start >= 2*block_size (shorten block_size or lengthen the row)"
        )
    pairs = _check_swaps(swaps, m, f"a row of {n + 1} keys with start={start}")
    if swapped_rows.shape[-2] != len(pairs):
        raise RopeBehaviorError(
            f"swapped_rows holds {swapped_rows.shape[-2]} swapped rows; expected one per swap ({len(pairs)})"
        )
    idx = torch.tensor(pairs, device=row.device)

    def means(x: Tensor) -> Tensor:
        return x[..., start : start + m * block_size].unflatten(-1, (m, block_size)).mean(-1)

    d = means(row.double())[..., idx]  # [..., swap, 2]
    d_new = torch.take_along_dim(
        means(swapped_rows.double()), idx.expand(*swapped_rows.shape[:-2], -1, -1), -1
    )
    return _combine(d, d_new, torch.ones(d.shape[:-1], dtype=torch.bool, device=d.device), tau)
