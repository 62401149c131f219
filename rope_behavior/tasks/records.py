"""What the canonical-task experiment records: one :class:`RunRecord` per trained run, and
the tidy tables built from them (:class:`ExperimentResult`: results, accuracy by answer
position, the heads' plane), written as CSVs."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PLANE_COLUMNS",
    "POSITION_COLUMNS",
    "RESULT_COLUMNS",
    "ExperimentResult",
    "RunRecord",
    "frames_of",
    "write_frames",
]

RESULT_COLUMNS = (
    "task",
    "setting",
    "pair",
    "seed",
    "accuracy",
    "train_accuracy",
    "steps",
    "stopped_early",
    "seconds",
    "final_loss",
)
POSITION_COLUMNS = ("task", "setting", "seed", "answer_position", "accuracy")
PLANE_COLUMNS = (
    "task",
    "setting",
    "seed",
    "layer",
    "head",
    "s_pos",
    "s_sym",
    "identifiable_fraction",
    "identifiable",
    "answer_attention",
)


@dataclass(frozen=True)
class RunRecord:
    """One trained-and-evaluated run."""

    task: str
    setting: str
    seed: int
    accuracy: float
    train_accuracy: float
    steps: int
    stopped_early: bool
    seconds: float
    final_loss: float
    by_position: Mapping[int, float]
    plane: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, eq=False)
class ExperimentResult:
    """Tidy frames of an experiment (``pandas.DataFrame``) and the files written."""

    results: Any
    by_position: Any
    plane: Any
    records: tuple[RunRecord, ...] = field(repr=False)
    files: tuple[Path, ...] = ()
    seconds: float = 0.0

    def summary(self) -> Any:
        """Mean accuracy per (task, setting) over seeds: rows tasks, columns settings."""
        table = self.results.pivot_table(
            index="task", columns="setting", values="accuracy", aggfunc="mean", sort=False
        )
        return table


def frames_of(records: Sequence[RunRecord]) -> tuple[Any, Any, Any]:
    import pandas as pd

    results, positions, plane = [], [], []
    for r in records:
        pair = int(r.setting[5:]) if r.setting.startswith("pair:") else None
        results.append(
            {
                "task": r.task,
                "setting": r.setting,
                "pair": pair,
                "seed": r.seed,
                "accuracy": r.accuracy,
                "train_accuracy": r.train_accuracy,
                "steps": r.steps,
                "stopped_early": r.stopped_early,
                "seconds": round(r.seconds, 3),
                "final_loss": r.final_loss,
            }
        )
        positions += [
            {
                "task": r.task,
                "setting": r.setting,
                "seed": r.seed,
                "answer_position": p,
                "accuracy": a,
            }
            for p, a in r.by_position.items()
        ]
        plane += [{"task": r.task, "setting": r.setting, "seed": r.seed, **row} for row in r.plane]
    res = pd.DataFrame(results, columns=list(RESULT_COLUMNS))
    res["pair"] = res["pair"].astype("Int64")
    return (
        res,
        pd.DataFrame(positions, columns=list(POSITION_COLUMNS)),
        pd.DataFrame(plane, columns=list(PLANE_COLUMNS)),
    )


def write_frames(out: Path, results: Any, by_position: Any, plane: Any) -> list[Path]:
    """Writes the three frames as CSVs into ``out``; returns the files."""
    files: list[Path] = []
    named = {"results.csv": results, "by_position.csv": by_position, "plane.csv": plane}
    for fname, frame in named.items():
        frame.to_csv(out / fname, index=False)
        files.append(out / fname)
    return files
