"""The tidy rows of one checkpoint: per head and per (head, pair).

Head rows are :meth:`ScoreSummary.to_frame` (means, spreads and ``level`` bootstrap
intervals of ``s_pos`` / ``s_sym``, identifiable fraction, masses, swaps) with ``step``
first, and these columns, read with :mod:`rope_behavior.scoring.head_classes`' rules:

* ``behavior``: ``s_pos_mean - s_sym_mean`` (> 0 positional, < 0 symbolic);
* ``identifiable``: :func:`~rope_behavior.scoring.head_classes.is_identifiable` of the
  identifiable fraction;
* ``uniform_corner``: both means at least
  :data:`~rope_behavior.scoring.head_classes.UNIFORM_CORNER` (attention near uniform);
* ``purity``: the head's class by
  :func:`~rope_behavior.scoring.head_classes.head_purity` (``positional`` / ``symbolic``:
  pure, one score's interval above 1/2 and the other's below; ``mixed``, ``uniform``,
  ``unidentifiable``);
* ``purity_gap``: ``|behavior|``, 1 for a head at (1, 0) or (0, 1), 0 at the uniform
  corner or on the diagonal (the distance from the plane's diagonal, scaled to [0, 1]);
* ``centroid`` / ``centroid_log_omega``: the head's frequency-usage centroids.

Usage rows: ``step, layer, head, pair, omega, norm_usage, logit_usage``.
"""

from typing import Any

from rope_behavior.frequency.usage import FrequencyUsage
from rope_behavior.scoring.head_classes import UNIFORM_CORNER, head_purity, is_identifiable
from rope_behavior.scoring.results import ScoreSummary

__all__ = ["checkpoint_rows"]

USAGE_COLUMNS = ("layer", "head", "pair", "omega", "norm_usage", "logit_usage")


def checkpoint_rows(
    step: int, summary: ScoreSummary, usage: FrequencyUsage, n_block_pairs: int
) -> tuple[Any, Any]:
    """``(heads, usage)`` DataFrames of one checkpoint (module docstring)."""
    heads = summary.to_frame()
    heads["n_block_pairs"] = n_block_pairs
    cent = usage.head_frame()
    heads = heads.merge(cent, on=["layer", "head"], how="left")
    pos, sym = heads["s_pos_mean"], heads["s_sym_mean"]
    heads["behavior"] = pos - sym
    heads["identifiable"] = is_identifiable(heads["identifiable_fraction"])
    heads["uniform_corner"] = (pos >= UNIFORM_CORNER) & (sym >= UNIFORM_CORNER)
    heads["purity"] = head_purity(
        heads, s_pos="s_pos_mean", s_sym="s_sym_mean", identifiable="identifiable_fraction"
    )
    heads["purity_gap"] = (pos - sym).abs()
    heads.insert(0, "step", step)
    rows = usage.to_frame()[list(USAGE_COLUMNS)]
    rows.insert(0, "step", step)
    return heads, rows
