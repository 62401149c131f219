"""On-disk store that makes a patching sweep resumable.

Layout of ``out_dir``::

    manifest.json                   what the sweep is (and its fingerprint)
    chunks/L003-0004-0000.json      one file per computed chunk of conditions

Every file is written to a temporary name in the same folder and renamed into place
(atomic on POSIX), so a killed process leaves only whole chunks behind. Reopening a
folder with a different fingerprint (other model weights, tokens, bands, metric, ...) is
refused rather than silently mixing two sweeps.
"""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError

__all__ = ["SweepStore", "model_digest", "tensor_digest"]

_VERSION = 1


def tensor_digest(t: Tensor) -> str:
    """sha256 of a tensor's shape, dtype and values."""
    data = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(data.shape)}|{data.dtype}".encode())
    if data.dtype == torch.bfloat16:
        data = data.float()
    h.update(data.numpy().tobytes())
    return h.hexdigest()


def model_digest(model: Any) -> str:
    """A cheap fingerprint of a model's weights: per parameter its name, shape, dtype,
    float64 sum and sum of squares (changes if any weight changes, in practice)."""
    h = hashlib.sha256(type(model).__name__.encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            s = float(torch.sum(p, dtype=torch.float64))
            s2 = float(torch.sum(p.to(torch.float64) ** 2)) if p.numel() < 50_000_000 else 0.0
            h.update(f"{name}|{tuple(p.shape)}|{p.dtype}|{s!r}|{s2!r}".encode())
    return h.hexdigest()


def _atomic_write(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SweepStore:
    """Chunks of one sweep in ``out_dir``, keyed by ``(layer, head_index, band_index)``."""

    def __init__(self, out_dir: str | os.PathLike[str], description: dict[str, Any]) -> None:
        self.root = Path(out_dir)
        self.chunks = self.root / "chunks"
        self.description = description
        self.fingerprint = hashlib.sha256(
            json.dumps(description, sort_keys=True).encode()
        ).hexdigest()
        self._open()

    def _open(self) -> None:
        manifest = self.root / "manifest.json"
        if self.root.exists() and not self.root.is_dir():
            raise RopeBehaviorError(f"out_dir {str(self.root)!r} exists and is not a folder")
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError) as e:
                raise RopeBehaviorError(f"cannot read {manifest}: {e}") from None
            if old.get("fingerprint") != self.fingerprint:
                before = old.get("description", {})
                changed = sorted(
                    k
                    for k in set(before) | set(self.description)
                    if before.get(k) != self.description.get(k)
                )
                raise RopeBehaviorError(
                    f"out_dir {str(self.root)!r} holds a different sweep (differs in: "
                    f"{', '.join(changed) or 'format'}); resume only the same sweep, or use "
                    "another out_dir / delete this one"
                )
            return
        if self.root.exists() and any(p for p in self.root.iterdir() if not p.name.startswith(".")):
            raise RopeBehaviorError(
                f"out_dir {str(self.root)!r} is not empty and holds no sweep manifest; "
                "choose an empty or new folder"
            )
        self.chunks.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            manifest,
            {"version": _VERSION, "fingerprint": self.fingerprint, "description": self.description},
        )

    def load(self) -> dict[tuple[int, int, int], float]:
        """Every condition already computed: ``{(layer, head_index, band_index): value}``."""
        done: dict[tuple[int, int, int], float] = {}
        if not self.chunks.exists():
            return done
        for path in sorted(self.chunks.glob("L*.json")):
            data = json.loads(path.read_text())
            for (h, b), v in zip(data["conditions"], data["values"]):
                done[(int(data["layer"]), int(h), int(b))] = float(v)
        return done

    def write(self, layer: int, conditions: list[tuple[int, int]], values: list[float]) -> None:
        """Store one computed chunk (atomically)."""
        h0, b0 = conditions[0]
        self.chunks.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self.chunks / f"L{layer:03d}-{h0:04d}-{b0:04d}.json",
            {"layer": layer, "conditions": [list(c) for c in conditions], "values": values},
        )

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the sweep complete (the manifest keeps its fingerprint)."""
        _atomic_write(
            self.root / "manifest.json",
            {
                "version": _VERSION,
                "fingerprint": self.fingerprint,
                "description": self.description,
                "complete": True,
                **summary,
            },
        )
