"""On-disk store that makes a patching sweep resumable.

Layout of ``out_dir``::

    .sweep.lock                     held (flock) by the one process writing the sweep
    manifest.json                   what the sweep is (and its fingerprint)
    chunks/L003-0004-0000.json      one file per computed chunk of conditions

A :class:`SweepStore` is a context manager: entering takes the folder's lock at once or
refuses (a second sweep in the same folder, from this or another process, is an error,
not a race), then creates the manifest or checks that it describes the same sweep. The
manifest is written before any chunk exists, and every file is written to a temporary
name in the same folder and renamed into place (atomic on POSIX), so a killed process
leaves only whole files behind; its lock goes with it. Reopening a folder with a
different fingerprint (other model weights or buffers, tokens, bands, metric, ...) is
refused rather than silently mixing two sweeps.
"""

import contextlib
import hashlib
import json
import math
import os
import re
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import filelock

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.runtime.fingerprint import model_digest, tensor_digest

__all__ = ["SweepStore", "model_digest", "tensor_digest"]

_VERSION = 2  # 2: content hashes of the model (parameters and buffers) and the metric
_LOCK = ".sweep.lock"
_MANIFEST = "manifest.json"
_TMP = ".tmp"
_RESERVED = ("version", "fingerprint", "description", "complete")


def _atomic_write(path: Path, payload: dict[str, Any], *, torch_format: bool = False) -> None:
    """Write ``payload`` as JSON (or with ``torch.save``) to a temporary name in the same
    folder, then rename it into place: readers see the old file or the whole new one, and
    a failed or interrupted write leaves no temporary file behind (a killed process's is
    removed when the store is next opened)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}{_TMP}")
    try:
        with open(tmp, "wb" if torch_format else "w") as f:
            if torch_format:
                import torch

                torch.save(payload, f)
            else:
                json.dump(payload, f, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RopeBehaviorError(f"cannot write {path}: {e.strerror or e}") from None
    except (TypeError, ValueError) as e:  # not JSON: a NaN, an object json cannot write
        tmp.unlink(missing_ok=True)
        raise RopeBehaviorError(
            f"cannot write {path}: the record is not plain JSON data ({e})"
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class SweepStore:
    """Chunks of one sweep in ``out_dir``, keyed by ``(layer, head_index, band_index)``.

    Use as ``with SweepStore(out_dir, description) as store: ...`` (or enter it without
    a description, to hold the lock at once, and ``describe`` it later); ``load``,
    ``write`` and ``finish`` need the lock and a description, and the lock is released on
    leaving the block (also on an error or ``KeyboardInterrupt``).
    """

    @validates_inputs
    def __init__(
        self, out_dir: str | os.PathLike[str], description: dict[str, Any] | None = None
    ) -> None:
        if not isinstance(out_dir, str | os.PathLike) or not str(out_dir).strip():
            raise RopeBehaviorError(
                f"out_dir={out_dir!r}; expected the path of a folder (str or os.PathLike)"
            )
        self.root = Path(out_dir).expanduser()
        self.chunks = self.root / "chunks"
        self.description: dict[str, Any] = {}
        self.fingerprint = ""
        self._pending = description
        self._lock: filelock.BaseFileLock | None = None

    def __enter__(self) -> "SweepStore":
        if self.root.exists() and not self.root.is_dir():
            raise RopeBehaviorError(f"out_dir {str(self.root)!r} exists and is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RopeBehaviorError(
                f"cannot create out_dir {str(self.root)!r}: {e.strerror or e}"
            ) from None
        lock = filelock.FileLock(self.root / _LOCK, timeout=0)
        try:
            lock.acquire()
        except OSError as e:  # not Timeout (an OSError too): handled below
            if isinstance(e, filelock.Timeout):
                raise self._in_use() from None
            raise RopeBehaviorError(
                f"cannot lock out_dir {str(self.root)!r} ({_LOCK}: {e.strerror or e})"
            ) from None
        self._lock = lock
        self._remove_stale_temporaries()
        if self._pending is not None:
            self.describe(self._pending)
        return self

    def _in_use(self) -> RopeBehaviorError:
        return RopeBehaviorError(
            f"out_dir {str(self.root)!r} is in use by another sweep (its lock "
            f"{_LOCK} is held by a running process or by an open SweepStore in this "
            "one); wait for that sweep to end, or use another out_dir. A killed "
            "process releases its lock."
        )

    def _remove_stale_temporaries(self) -> None:
        """Temporary files of a writer killed mid-write (the lock is ours: nobody else is
        writing); they were never renamed into place, so nothing refers to them."""
        for folder in (self.root, self.chunks, self.root / "shards"):
            for tmp in folder.glob(f".*{_TMP}") if folder.is_dir() else ():
                if re.fullmatch(rf"\..+\.\d+(-[0-9a-f]{{8}})?{re.escape(_TMP)}", tmp.name):
                    with contextlib.suppress(OSError):  # best effort: they are ignored anyway
                        tmp.unlink()

    @validates_inputs
    def describe(self, description: dict[str, Any]) -> None:
        """Bind the open store to the sweep ``description``: create the manifest, or check
        that it describes the same sweep (a sweep takes the lock first, then describes
        itself once it has run the model; the lock is released on a refusal)."""
        self._held()
        try:
            if not isinstance(description, dict):
                raise RopeBehaviorError(
                    f"a store's description must be a dict of plain JSON values; got "
                    f"{type(description).__name__}"
                )
            try:
                text = json.dumps(description, sort_keys=True, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise RopeBehaviorError(
                    f"a store's description must be plain JSON data (str keys; no NaN): {e}"
                ) from None
            self.description = json.loads(text)  # as the manifest will hold it
            self.fingerprint = hashlib.sha256(text.encode()).hexdigest()
            self._open()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _held(self) -> None:
        if self._lock is None or not self._lock.is_locked:
            raise RopeBehaviorError(
                f"SweepStore for {str(self.root)!r} is not open; use it as a context "
                "manager (`with SweepStore(...) as store:`)"
            )

    def _described(self) -> None:
        self._held()
        if not self.fingerprint:
            raise RopeBehaviorError(
                f"SweepStore for {str(self.root)!r} has no description yet; call describe()"
            )

    def _open(self) -> None:
        manifest = self.root / _MANIFEST
        if manifest.exists():
            old = _read_json(
                manifest,
                "delete out_dir (or use another one) to start this sweep afresh: without a "
                "readable manifest its chunks cannot be trusted to belong to this sweep",
            )
            if old.get("version") != _VERSION:
                raise RopeBehaviorError(
                    f"out_dir {str(self.root)!r} was written by store format "
                    f"{old.get('version')!r}, this version reads format {_VERSION}; delete "
                    "it or use another out_dir"
                )
            if old.get("fingerprint") != self.fingerprint:
                before = old.get("description", {})
                changed = sorted(
                    k
                    for k in set(before) | set(self.description)
                    if before.get(k) != self.description.get(k)
                )
                hint = (
                    _metric_hint(before, self.description) if "metric_identity" in changed else ""
                )
                stored = _name(before, old.get("fingerprint"), changed)
                now = _name(self.description, self.fingerprint, changed)
                raise RopeBehaviorError(
                    f"out_dir {str(self.root)!r} holds a different sweep (differs in: "
                    f"{', '.join(changed) or 'format'}){hint}: it holds {stored}, this one is "
                    f"{now}; resume only the same sweep, or use another out_dir / delete "
                    "this one"
                )
            return
        if any(p for p in self.root.iterdir() if not p.name.startswith(".")):
            raise RopeBehaviorError(
                f"out_dir {str(self.root)!r} is not empty and holds no sweep manifest; "
                "choose an empty or new folder"
            )
        _atomic_write(
            manifest,
            {"version": _VERSION, "fingerprint": self.fingerprint, "description": self.description},
        )

    def load(self) -> dict[tuple[int, int, int], float]:
        """Every condition already computed: ``{(layer, head_index, band_index): value}``."""
        self._described()
        done: dict[tuple[int, int, int], float] = {}
        where: dict[tuple[int, int, int], Path] = {}
        if not self.chunks.exists():
            return done
        for path in sorted(self.chunks.glob("L*.json")):
            data = _read_json(path, "delete this file to recompute its chunk, then resume")
            try:
                layer, conditions, values = data["layer"], data["conditions"], data["values"]
                _check_chunk(layer, conditions, values)
            except (KeyError, TypeError, ValueError) as e:
                raise RopeBehaviorError(
                    f"chunk file {path} is not a valid chunk ({type(e).__name__}: {e}); delete "
                    "this file to recompute its chunk, then resume"
                ) from None
            for (h, b), v in zip(conditions, values):
                key = (layer, h, b)
                if key in done and done[key] != v:
                    raise RopeBehaviorError(
                        f"chunk files {where[key]} and {path} disagree on layer {layer}, head "
                        f"{h}, band {b} ({done[key]!r} vs {v!r}); delete both to recompute "
                        "them, then resume"
                    )
                done[key], where[key] = float(v), path
        return done

    @validates_inputs
    def write(self, layer: int, conditions: list[tuple[int, int]], values: list[float]) -> None:
        """Store one computed chunk (atomically)."""
        self._described()
        try:
            _check_chunk(layer, [list(c) for c in conditions], values)
        except (TypeError, ValueError) as e:
            raise RopeBehaviorError(f"cannot store chunk of layer {layer!r}: {e}") from None
        h0, b0 = conditions[0]
        self.chunks.mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self.chunks / f"L{layer:03d}-{h0:04d}-{b0:04d}.json",
            {"layer": layer, "conditions": [list(c) for c in conditions], "values": values},
        )

    @validates_inputs
    def write_payload(self, name: str, payload: dict[str, Any]) -> None:
        """Store one computed shard of tensors and plain values as ``shards/NAME.pt``
        (atomically; read back with ``torch.load(weights_only=True)``)."""
        self._described()
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise RopeBehaviorError(
                f"shard name {name!r}; expected letters, digits, '_', '-' or '.' (not first), "
                "which names a file in the store"
            )
        if not isinstance(payload, dict):
            raise RopeBehaviorError(
                f"shard payload of type {type(payload).__name__}; expected a dict"
            )
        folder = self.root / "shards"
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / f"{name}.pt", payload, torch_format=True)

    def load_payloads(self) -> dict[str, dict[str, Any]]:
        """Every shard stored with :meth:`write_payload`: ``{name: payload}``."""
        import torch

        self._described()
        out: dict[str, dict[str, Any]] = {}
        for path in sorted((self.root / "shards").glob("*.pt")):
            try:
                data = torch.load(path, weights_only=True, map_location="cpu")
                if not isinstance(data, dict):
                    raise ValueError(f"holds a {type(data).__name__}, not a dict")
            except Exception as e:
                raise RopeBehaviorError(
                    f"shard file {path} cannot be read ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); delete this file to "
                    "recompute its shard, then resume"
                ) from None
            out[path.stem] = data
        return out

    @validates_inputs
    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the sweep complete (the manifest keeps its fingerprint)."""
        self._described()
        clash = sorted(set(summary) & set(_RESERVED))
        if clash:
            raise RopeBehaviorError(
                f"a store's summary cannot set {', '.join(clash)} (the manifest's own keys: "
                f"{', '.join(_RESERVED)})"
            )
        _atomic_write(
            self.root / _MANIFEST,
            {
                "version": _VERSION,
                "fingerprint": self.fingerprint,
                "description": self.description,
                "complete": True,
                **summary,
            },
        )


def _check_chunk(layer: Any, conditions: Any, values: Any) -> None:
    """A chunk is an int layer, a non-empty list of [head, band] int pairs and one finite
    number per pair (no bools, no strings: nothing is coerced)."""

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if not is_int(layer):
        raise TypeError(f"layer {layer!r} is not a non-negative int")
    if not isinstance(conditions, list | tuple) or not isinstance(values, list | tuple):
        raise TypeError("conditions and values must be lists")
    if not conditions or len(conditions) != len(values):
        raise ValueError(f"{len(conditions)} conditions but {len(values)} values")
    for c, v in zip(conditions, values):
        if not (isinstance(c, list | tuple) and len(c) == 2 and all(map(is_int, c))):
            raise TypeError(f"condition {c!r} is not a [head, band] pair of ints")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise TypeError(f"value {v!r} is not a number")
        if not math.isfinite(v):
            raise ValueError(f"non-finite value {v}")


def _name(description: dict[str, Any], fingerprint: Any, keys: list[str]) -> str:
    """A store's job in a few words: its kind, fingerprint and values where two differ."""
    kind = description.get("kind") or "a sweep"
    shown = [f"{k}={_brief(description.get(k))}" for k in keys[:3] if k != "metric_parts"]
    more = ", ..." if len(keys) > 3 else ""
    values = f" with {', '.join(shown)}{more}" if shown else ""
    return f"{kind} {str(fingerprint)[:12]}{values}"


def _brief(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _metric_hint(before: dict[str, Any], now: dict[str, Any]) -> str:
    """Which of the metric's parts (code, closure variables, globals, fields) differ."""
    old, new = before.get("metric_parts") or {}, now.get("metric_parts") or {}
    parts = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not parts:
        return " (the metric differs)"
    shown = "; ".join(parts[:4]) + ("; ..." if len(parts) > 4 else "")
    return f" (the metric differs: {shown})"


def _read_json(path: Path, remedy: str) -> dict[str, Any]:
    """A JSON object from ``path``, or an error naming the file and ``remedy``."""
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise RopeBehaviorError(f"cannot read {path}: {e.strerror or e}; {remedy}") from None
    except ValueError as e:
        raise RopeBehaviorError(
            f"{path} is not valid JSON (truncated or edited? {e}); {remedy}"
        ) from None
    if not isinstance(data, dict):
        raise RopeBehaviorError(
            f"{path} holds a JSON {type(data).__name__}, not an object; {remedy}"
        )
    return data
