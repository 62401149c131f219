"""What a tracker stored: the head rows, usage rows and step records of every checkpoint."""

import os
from dataclasses import dataclass, field
from typing import Any

from rope_behavior.errors import RopeBehaviorError, as_int, validates_inputs
from rope_behavior.scoring.head_classes import purity_counts
from rope_behavior.tracking.store import read_frames

__all__ = ["Trajectory", "load_trajectory"]


@dataclass(frozen=True, eq=False)
class Trajectory:
    """Scores over training (:class:`~rope_behavior.tracking.tracker.Tracker`), tidy:

    * ``heads``: one row per (step, layer, head) (:mod:`rope_behavior.tracking.rows`);
    * ``usage``: one row per (step, layer, head, pair);
    * ``steps``: one row per step: ``seconds`` the checkpoint cost, and the metrics the
      training loop handed over (``accuracy``, ``loss``, ...).
    """

    heads: Any = field(repr=False)
    usage: Any = field(repr=False)
    steps: Any = field(repr=False)

    @classmethod
    def empty(cls) -> "Trajectory":
        import pandas as pd

        none = pd.DataFrame({"step": pd.Series(dtype="int64")})
        return cls(none, none.copy(), none.copy())

    @property
    def step_list(self) -> tuple[int, ...]:
        """The steps scored, in order."""
        return tuple(int(s) for s in sorted(self.steps["step"].unique()))

    @validates_inputs
    def at(self, step: int) -> Any:
        """The head rows of ``step`` (one of :attr:`step_list`)."""
        step = as_int(step, "step", low=0)
        if step not in self.step_list:
            shown = list(self.step_list)
            raise RopeBehaviorError(
                f"step={step} was not scored; scored steps: {shown[:8]}"
                + (f" ... {shown[-1]}" if len(shown) > 8 else "")
            )
        return self.heads[self.heads["step"] == step].reset_index(drop=True)

    def to_frame(self) -> Any:
        """The head rows with their step's metrics as columns (one row per step x head)."""
        metrics = self.steps.drop(columns=["seconds"], errors="ignore")
        return self.heads.merge(metrics, on="step", how="left")

    def __repr__(self) -> str:
        steps = self.step_list
        if not steps:
            return "Trajectory(no steps scored)"
        n_heads = len(self.heads[self.heads["step"] == steps[-1]])
        last = self.at(steps[-1])
        mean_s = float(self.steps["seconds"].mean()) if "seconds" in self.steps else float("nan")
        lines = [
            f"Trajectory: {len(steps)} steps ({steps[0]}..{steps[-1]}), {n_heads} heads, "
            f"{mean_s:.2f} s a checkpoint",
            "  last step: "
            + ", ".join(f"{n} {c}" for c, n in purity_counts(last["purity"]).items() if n),
        ]
        metrics = [c for c in self.steps.columns if c not in ("step", "seconds")]
        if metrics:
            end = self.steps.sort_values("step").iloc[-1]
            shown = ", ".join(f"{c} {float(end[c]):.3g}" for c in metrics[:4])
            lines.append(f"  metrics at the last step: {shown}"[:80])
        return "\n".join(line[:80] for line in lines)


@validates_inputs
def load_trajectory(folder: str | os.PathLike[str]) -> Trajectory:
    """The :class:`Trajectory` stored in a tracker's ``out_dir`` (read only)."""
    return Trajectory(*read_frames(folder))
