"""Where a head sits in the positional–symbolic plane: the cut-offs that call a head
identifiable or at the uniform corner, the most positional / most symbolic heads, and each
head's class (pure positional, pure symbolic, mixed, uniform, unidentifiable; see
docs/method.md §4, "Pure heads"). Every report, table, command and statistic reads them
from here."""

from typing import Any

from rope_behavior.errors import RopeBehaviorError, as_int
from rope_behavior.scoring.results import ScoreSummary

__all__ = [
    "IDENTIFIABLE_FRACTION",
    "PURE_SIDE",
    "PURITY_CLASSES",
    "PURITY_NAMES",
    "UNIFORM_CORNER",
    "extreme_heads",
    "head_purity",
    "is_identifiable",
    "purity_counts",
]

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


PURE_SIDE = 0.5
"""The midpoint of the score range: a pure head's interval of one score lies wholly above
it and of the other wholly below it, so every point of its interval box is nearer its pure
corner, ``(1, 0)`` or ``(0, 1)``, than any other corner of the plane."""

PURITY_CLASSES = ("positional", "symbolic", "mixed", "uniform", "unidentifiable")
"""The values of :func:`head_purity`, in the order reports list them."""

PURITY_NAMES = {
    "positional": "pure positional",
    "symbolic": "pure symbolic",
    "mixed": "mixed",
    "uniform": "uniform",
    "unidentifiable": "unidentifiable",
}
"""How a report names each class."""


def _stem(column: str) -> str:
    return column[: -len("_mean")] if column.endswith("_mean") else column


def head_purity(
    scores: Any,
    *,
    s_pos: str = "s_pos",
    s_sym: str = "s_sym",
    identifiable: str | None = "identifiable",
) -> Any:
    """Each head's class from its scores and their intervals (docs/method.md §4): a
    ``pandas.Series`` named ``purity`` of :data:`PURITY_CLASSES`, on ``scores``' index.

    ``scores``: a :class:`~rope_behavior.ScoreSummary` (its ``to_frame()`` rows are
    classified: columns ``s_pos_mean`` / ``s_sym_mean``, ``identifiable_fraction``) or a
    frame with one row per head. Column names as in :func:`extreme_heads`: ``s_pos`` /
    ``s_sym`` name the means, their intervals are ``<stem>_lo`` / ``<stem>_hi`` (the stem
    drops a ``_mean`` suffix: ``s_pos_mean`` -> ``s_pos_lo``); ``identifiable`` names a
    boolean column or an ``*_fraction`` column (``None`` or a missing column: every head
    counts). Each interval is widened to hold its mean where a percentile interval misses
    it. In order:

    * ``unidentifiable``: not identifiable, or a mean or an interval end is NaN;
    * ``uniform``: both intervals lie in the uniform corner (``lo >= UNIFORM_CORNER``);
    * ``positional``: the ``s_pos`` interval lies above :data:`PURE_SIDE` and the
      ``s_sym`` interval below it;
    * ``symbolic``: the other way round;
    * ``mixed``: every other identifiable head (an interval straddles 1/2, both scores
      high short of the corner, or both low).
    """
    import numpy as np
    import pandas as pd

    if isinstance(scores, ScoreSummary):
        scores = scores.to_frame()
        s_pos, s_sym, identifiable = "s_pos_mean", "s_sym_mean", "identifiable_fraction"
    needed = [s_pos, s_sym] + [f"{_stem(c)}_{e}" for c in (s_pos, s_sym) for e in ("lo", "hi")]
    missing = [c for c in needed if c not in getattr(scores, "columns", ())]
    if missing:
        have = list(scores.columns) if hasattr(scores, "columns") else type(scores).__name__
        raise RopeBehaviorError(
            f"head_purity needs columns {missing}; got {have} (expected a ScoreSummary, or a "
            "frame with the scores' means and intervals, e.g. ScoreSummary.to_frame() or "
            "Analysis.heads_frame())"
        )

    raw = np.stack([scores[c].to_numpy(dtype=float) for c in needed])
    ok = ~np.isnan(raw).any(0)
    pm, sm, plo, phi, slo, shi = raw
    plo, phi, slo, shi = (
        np.minimum(plo, pm),
        np.maximum(phi, pm),
        np.minimum(slo, sm),
        np.maximum(shi, sm),
    )
    if identifiable is not None and identifiable in scores.columns:
        col = scores[identifiable]
        ident = is_identifiable(col) if identifiable.endswith("fraction") else col.astype(bool)
        ok &= ident.to_numpy(dtype=bool)
    uniform = (plo >= UNIFORM_CORNER) & (slo >= UNIFORM_CORNER)
    positional = (plo > PURE_SIDE) & (shi < PURE_SIDE)
    symbolic = (slo > PURE_SIDE) & (phi < PURE_SIDE)
    out = np.select(
        [~ok, uniform, positional, symbolic],
        ["unidentifiable", "uniform", "positional", "symbolic"],
        "mixed",
    )
    return pd.Series(out, index=scores.index, name="purity", dtype=object)


def purity_counts(purity: Any) -> dict[str, int]:
    """``{class: number of heads}`` over :data:`PURITY_CLASSES` (zeros kept), from the
    values of :func:`head_purity`."""
    values = list(purity)
    unknown = sorted({str(v) for v in values} - set(PURITY_CLASSES))
    if unknown:
        raise RopeBehaviorError(
            f"purity values {unknown} are not head classes; expected {list(PURITY_CLASSES)}"
        )
    return {c: sum(v == c for v in values) for c in PURITY_CLASSES}
