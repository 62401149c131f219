"""Where a head sits in the positional–symbolic plane: the cut-offs that call a head
identifiable or at the uniform corner, and the most positional / most symbolic heads.
Every report, table, command and statistic reads them from here."""

from typing import Any

from rope_behavior.errors import as_int

__all__ = ["IDENTIFIABLE_FRACTION", "UNIFORM_CORNER", "extreme_heads", "is_identifiable"]

IDENTIFIABLE_FRACTION = 0.5
"""A head is identifiable when at least this share of its finite score rows is."""

UNIFORM_CORNER = 0.9
"""A head whose mean ``s_pos`` and ``s_sym`` are both at least this sits at the uniform
corner: its attention is near uniform, and the difference of its scores is noise."""


def is_identifiable(fraction: Any) -> Any:
    """``fraction >= IDENTIFIABLE_FRACTION``, elementwise (a tensor, array, Series or number)."""
    return fraction >= IDENTIFIABLE_FRACTION


def extreme_heads(
    frame: Any,
    *,
    k: int = 3,
    s_pos: str = "s_pos",
    s_sym: str = "s_sym",
    identifiable: str | None = "identifiable",
) -> tuple[Any, Any]:
    """``(positional, symbolic)``: the rows of ``frame`` (one per head) of the ``k`` heads
    with the largest ``s_pos - s_sym`` (> 0) and the ``k`` with the smallest (< 0), among
    identifiable heads off the uniform corner. Columns are named by ``s_pos`` / ``s_sym``;
    ``identifiable`` names a boolean column, or an ``*_fraction`` column compared with
    :data:`IDENTIFIABLE_FRACTION` (``None`` or a missing column: every head counts). The
    rows come back with a ``behavior`` column, ``s_pos - s_sym``."""
    k = as_int(k, "k", low=0, hint="how many heads of each kind")
    diff = frame[s_pos] - frame[s_sym]
    corner = (frame[s_pos] >= UNIFORM_CORNER) & (frame[s_sym] >= UNIFORM_CORNER)
    ok = diff.notna() & ~corner
    if identifiable is not None and identifiable in frame.columns:
        col = frame[identifiable]
        ok &= is_identifiable(col) if identifiable.endswith("fraction") else col.astype(bool)
    chosen = frame.assign(behavior=diff)[ok]
    pos = chosen[chosen["behavior"] > 0].nlargest(k, "behavior")
    sym = chosen[chosen["behavior"] < 0].nsmallest(k, "behavior")
    return pos, sym
