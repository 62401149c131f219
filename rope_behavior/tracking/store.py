"""The tracker's folder: tidy rows appended checkpoint by checkpoint, read back to resume.

Files:

* ``settings.json``: what the rows were measured with (prompts' digest, block size,
  swaps, bootstrap, the model's shape). A folder is resumed only with the same settings.
* ``heads.csv``: one row per (step, layer, head): the scores with their intervals, the
  head's class columns and its frequency centroid.
* ``usage.csv``: one row per (step, layer, head, pair): frequency usage.
* ``steps.jsonl``: one JSON line per checkpoint: ``step``, ``seconds`` (what scoring it
  cost) and ``metrics`` (accuracy, loss, ... as the training loop handed them over).

A checkpoint is appended to ``heads.csv`` and ``usage.csv`` first and to ``steps.jsonl``
last, each with one write, flushed and synced: its ``steps.jsonl`` line is the commit. On
opening, rows of a step without that line (a run killed between the writes) and a torn
last line are dropped, the CSVs rewritten atomically (a temporary file renamed into
place), so appending goes on after whole rows only.
"""

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any

from rope_behavior.errors import RopeBehaviorError

__all__ = ["TrackStore", "read_frames"]

SETTINGS, HEADS, USAGE, STEPS = "settings.json", "heads.csv", "usage.csv", "steps.jsonl"


def _replace_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, synced, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise RopeBehaviorError(f"cannot write {str(path)!r}: {err.strerror or err}") from None


def _append(path: Path, text: str) -> None:
    try:
        with open(path, "a", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise RopeBehaviorError(f"cannot append to {str(path)!r}: {err.strerror or err}") from None


def _whole_lines(path: Path) -> list[str]:
    """The file's complete lines (a last line without its newline is a torn write)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return lines[:-1]  # after the last "\n": "" (whole file) or a torn line


class TrackStore:
    """The rows of one tracked run in ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], settings: dict[str, Any]) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RopeBehaviorError(
                f"tracker folder {str(self.folder)!r} cannot be created "
                f"({err.strerror or err}); choose another folder"
            ) from None
        path = self.folder / SETTINGS
        if path.exists():
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise RopeBehaviorError(
                    f"{str(path)!r} is not the JSON a tracker writes ({err}); remove the folder "
                    "or choose another"
                ) from None
            now = json.loads(json.dumps(settings))
            diff = sorted(k for k in set(stored) | set(now) if stored.get(k) != now.get(k))
            if diff:
                raise RopeBehaviorError(
                    f"tracker folder {str(self.folder)!r} holds rows measured with other "
                    f"settings ({', '.join(diff)} differ); resume with the same prompts and "
                    "settings, or track into another folder"
                )
        else:
            _replace_text(path, json.dumps(settings, indent=1, allow_nan=False) + "\n")
        self.settings = settings
        self.steps: dict[int, dict[str, Any]] = {}
        self._recover()

    def _recover(self) -> None:
        path = self.folder / STEPS
        lines = _whole_lines(path)
        self.steps = _committed(self.folder)
        if path.exists() and (
            len(lines) != len(self.steps) or not path.read_text(encoding="utf-8").endswith("\n")
        ):
            text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in self.steps.values())
            _replace_text(path, text)
        for name in (HEADS, USAGE):
            path = self.folder / name
            lines = _whole_lines(path)
            if not lines:
                path.unlink(missing_ok=True)  # nothing whole: the header is written again
                continue
            keep = [lines[0]] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) in self.steps]
            if keep != lines or not path.read_text(encoding="utf-8").endswith("\n"):
                _replace_text(path, "\n".join(keep) + "\n")

    def append(self, step: int, heads: Any, usage: Any, record: dict[str, Any]) -> None:
        """Store one checkpoint: its head rows and usage rows (DataFrames whose first
        column is ``step``), then its ``steps.jsonl`` line (the commit)."""
        for name, frame in ((HEADS, heads), (USAGE, usage)):
            path = self.folder / name
            buf = io.StringIO()
            frame.to_csv(buf, index=False, header=not path.exists(), lineterminator="\n")
            _append(path, buf.getvalue())
        line = json.dumps({"step": step, **record}, allow_nan=False) + "\n"
        _append(self.folder / STEPS, line)
        self.steps[step] = {"step": step, **record}

    def frames(self) -> tuple[Any, Any, Any]:
        """``(heads, usage, steps)`` DataFrames of every stored checkpoint, by step."""
        return _frames(self.folder, self.steps)


def _committed(folder: Path) -> dict[int, dict[str, Any]]:
    steps: dict[int, dict[str, Any]] = {}
    for line in _whole_lines(folder / STEPS):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        steps[int(record["step"])] = record
    return steps


def _frames(folder: Path, steps: dict[int, dict[str, Any]]) -> tuple[Any, Any, Any]:
    import pandas as pd

    def read(name: str) -> Any:
        path = folder / name
        if not path.exists() or not _whole_lines(path):
            return pd.DataFrame({"step": pd.Series(dtype="int64")})
        text = "\n".join(_whole_lines(path)) + "\n"
        df = pd.read_csv(io.StringIO(text), float_precision="round_trip")
        df = df[df["step"].isin(list(steps))]
        keys = [k for k in ("step", "layer", "head", "pair") if k in df.columns]
        return df.sort_values(keys, kind="stable", ignore_index=True)

    rows = [
        {"step": s, "seconds": steps[s]["seconds"], **steps[s].get("metrics", {})}
        for s in sorted(steps)
    ]
    table = pd.DataFrame(rows) if rows else pd.DataFrame({"step": [], "seconds": []})
    return read(HEADS), read(USAGE), table


def read_frames(folder: str | os.PathLike[str]) -> tuple[Any, Any, Any]:
    """``(heads, usage, steps)`` of a tracker's folder, read without changing it (rows of
    uncommitted steps and torn lines left out)."""
    path = Path(folder)
    if not (path / SETTINGS).is_file():
        raise RopeBehaviorError(
            f"{str(path)!r} is not a tracker folder (no {SETTINGS}); expected the out_dir a "
            "Tracker wrote"
        )
    return _frames(path, _committed(path))
