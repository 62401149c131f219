"""Save and load toy models as one ``.safetensors`` file with the configuration inside.

The file holds the model's ``state_dict`` (weights and the ``rotary_omega`` buffer, so a
NoPE or angle-overridden model stays one) and, in the safetensors metadata, JSON for
``ToyConfig`` (key ``rope_behavior.toy_config``), the task it was trained on
(``rope_behavior.task``, optional), free-form ``extra`` (``rope_behavior.extra``) and a
content hash of the tensors (``rope_behavior.sha256``, see :func:`state_hash`).

Loading verifies the hash and refuses a file whose tensors do not match it (a few
flipped bytes otherwise load silently and give a model that quietly fails its task).
A file without a hash (written before hashes were stored) is refused too, with the way
out: ``python -m rope_behavior.tasks.checkpoints --rehash FILE`` adds the hash to a file
you trust, keeping its tensors bit-identical; ``verify=False`` loads it unchecked.
"""

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.generators import (
    IndexTask,
    PartialInductionTask,
    RetrievalTask,
    task_from_dict,
    task_to_dict,
)
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.toy import ToyConfig, ToyRotaryTransformer

__all__ = [
    "CheckpointInfo",
    "checkpoint_info",
    "load_checkpoint",
    "rehash_checkpoint",
    "save_checkpoint",
    "state_hash",
]

FORMAT_VERSION = "1"
_CONFIG_KEY = "rope_behavior.toy_config"
_TASK_KEY = "rope_behavior.task"
_EXTRA_KEY = "rope_behavior.extra"
_VERSION_KEY = "rope_behavior.format_version"
_HASH_KEY = "rope_behavior.sha256"
_REHASH = "python -m rope_behavior.tasks.checkpoints --rehash"


@dataclass(frozen=True)
class CheckpointInfo:
    """The configuration stored in a checkpoint (no weights); ``sha256`` is the recorded
    content hash of its tensors (``None`` for a file written before hashes were stored)."""

    config: ToyConfig
    task: IndexTask | RetrievalTask | PartialInductionTask | NumberHopsTask | LetterHopsTask | None
    extra: dict[str, Any]
    sha256: str | None = None


def state_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: for each ``name|shape|dtype`` and its raw
    (C-order, native-endian) bytes, bf16 included."""
    h = hashlib.sha256(b"rope_behavior.checkpoint/v1")
    for name in sorted(tensors):
        t = tensors[name].detach()
        data = t.to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
        h.update(data.view(torch.uint8).numpy().data)
    return h.hexdigest()


def _mode(out: Path) -> int:
    """The permission bits for ``out``: its current ones, else the usual ones for a new
    file (safetensors itself creates files readable by their owner only)."""
    if out.exists():
        return out.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename it into place; errors name ``out``."""
    if not out.parent.is_dir():
        raise RopeBehaviorError(
            f"cannot write checkpoint {str(out)!r}: its folder {str(out.parent)!r} does not "
            "exist (create it first)."
        )
    if out.is_dir():
        raise RopeBehaviorError(f"cannot write checkpoint {str(out)!r}: it is a folder.")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, _mode(out))
        os.replace(tmp, out)
    except (OSError, SafetensorError) as err:
        tmp.unlink(missing_ok=True)
        why = (getattr(err, "strerror", None) or str(err)).replace(str(tmp), str(out))
        raise RopeBehaviorError(f"cannot write checkpoint {str(out)!r}: {why}.") from None


def save_checkpoint(
    model: ToyRotaryTransformer,
    path: str | PathLike[str],
    *,
    task: IndexTask
    | RetrievalTask
    | PartialInductionTask
    | NumberHopsTask
    | LetterHopsTask
    | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally its task and JSON-able ``extra``) to ``path``,
    atomically (a temporary file beside it, renamed into place), with its content hash."""
    if not isinstance(model, ToyRotaryTransformer):
        raise RopeBehaviorError(
            f"save_checkpoint: model must be a ToyRotaryTransformer; got {type(model).__name__}."
        )
    try:
        extra_json = json.dumps(extra or {})
    except (TypeError, ValueError) as err:
        raise RopeBehaviorError(
            f"save_checkpoint: extra must be JSON-serialisable ({err})."
        ) from None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        _VERSION_KEY: FORMAT_VERSION,
        _CONFIG_KEY: json.dumps(asdict(model.cfg)),
        _EXTRA_KEY: extra_json,
        _HASH_KEY: state_hash(tensors),
    }
    if task is not None:
        metadata[_TASK_KEY] = json.dumps(task_to_dict(task))
    out = Path(path)
    _write(tensors, metadata, out)
    return out


def _metadata(path: str | PathLike[str]) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise RopeBehaviorError(f"Cannot read checkpoint {str(path)!r}: {err}") from None
    if _CONFIG_KEY not in metadata:
        raise RopeBehaviorError(
            f"{str(path)!r} is not a rope_behavior toy checkpoint (no {_CONFIG_KEY!r} in its metadata)."
        )
    return dict(metadata)


def _json(path: str | PathLike[str], metadata: dict[str, str], key: str, default: str) -> Any:
    try:
        return json.loads(metadata.get(key, default))
    except ValueError as err:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r}: its metadata {key!r} is not valid JSON ({err}); the "
            "file is damaged or was not written by save_checkpoint."
        ) from None


def checkpoint_info(path: str | PathLike[str]) -> CheckpointInfo:
    """Read the configuration, task, extra and recorded hash stored in a checkpoint."""
    metadata = _metadata(path)
    known = {f.name for f in fields(ToyConfig)}
    raw = _json(path, metadata, _CONFIG_KEY, "{}")
    if not isinstance(raw, dict):
        raise RopeBehaviorError(f"Checkpoint {str(path)!r}: {_CONFIG_KEY!r} is not a JSON object.")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RopeBehaviorError(f"Checkpoint {str(path)!r} has unknown ToyConfig fields {unknown}.")
    try:
        config = ToyConfig(**raw)
        task_data = _json(path, metadata, _TASK_KEY, "null")
        task = task_from_dict(task_data) if task_data is not None else None
    except (TypeError, ValueError) as err:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r}: its stored configuration is invalid: {err}"
        ) from None
    extra = _json(path, metadata, _EXTRA_KEY, "{}")
    return CheckpointInfo(config=config, task=task, extra=extra, sha256=metadata.get(_HASH_KEY))


def _tensors(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise RopeBehaviorError(
            f"Cannot read the tensors of checkpoint {str(path)!r}: {err}"
        ) from None


def _verify(path: str | PathLike[str], expected: str | None, state: dict[str, Any]) -> None:
    if expected is None:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r} stores no content hash ({_HASH_KEY!r}; it was written "
            "before rope_behavior stored one), so its weights cannot be verified. If you "
            f"trust the file, add the hash with `{_REHASH} {path}` (the tensors stay "
            "bit-identical), or load it unchecked with verify=False."
        )
    found = state_hash(state)
    if found != expected:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r} is damaged: its tensors hash to {found}, but the file "
            f"records {expected}. Restore it from a good copy (or retrain); do not rehash it."
        )


def load_checkpoint(
    path: str | PathLike[str],
    *,
    into: ToyRotaryTransformer | None = None,
    verify: bool = True,
) -> ToyRotaryTransformer:
    """Load a checkpoint into a new model, or into ``into`` after checking its config matches.

    The tensors are checked against the recorded content hash first (``into`` is left
    untouched when they do not match); ``verify=False`` skips the check, e.g. for a file
    written before hashes were stored."""
    info = checkpoint_info(path)
    if into is not None:
        if not isinstance(into, ToyRotaryTransformer):
            raise RopeBehaviorError(
                f"load_checkpoint: into must be a ToyRotaryTransformer; got {type(into).__name__}."
            )
        diffs = [
            f"{f.name}: checkpoint {getattr(info.config, f.name)!r} vs model {getattr(into.cfg, f.name)!r}"
            for f in fields(ToyConfig)
            if getattr(info.config, f.name) != getattr(into.cfg, f.name)
        ]
        if diffs:
            raise RopeBehaviorError(
                f"Checkpoint {str(path)!r} does not match the model's config: " + "; ".join(diffs)
            )
    state = _tensors(path)
    if verify:
        _verify(path, info.sha256, state)
    model = into if into is not None else ToyRotaryTransformer(info.config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r} weights do not fit its config: {err}"
        ) from None
    return model


def rehash_checkpoint(path: str | PathLike[str]) -> str:
    """Record the content hash in a checkpoint written before hashes were stored, keeping
    its tensors and other metadata bit-identical (checked on a read-back before the file
    is replaced). Returns the hash. A file whose recorded hash does not match is refused:
    rehashing would bless damaged weights."""
    out = Path(path)
    metadata = _metadata(out)
    tensors = _tensors(out)
    found = state_hash(tensors)
    if _HASH_KEY in metadata:
        _verify(out, metadata[_HASH_KEY], tensors)
        return found
    new_metadata = {**metadata, _HASH_KEY: found}
    tmp = out.with_name(f".{out.name}.{os.getpid()}.rehash")
    try:
        save_file(tensors, str(tmp), metadata=new_metadata)
        back = load_file(str(tmp), device="cpu")
        with safe_open(str(tmp), framework="pt") as handle:
            back_metadata = handle.metadata() or {}
        same = sorted(back) == sorted(tensors) and all(
            back[k].dtype == v.dtype
            and back[k].shape == v.shape
            and torch.equal(back[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
            for k, v in tensors.items()
        )
        if not same or back_metadata != new_metadata or state_hash(back) != found:
            raise RopeBehaviorError(
                f"rehash_checkpoint: the rewritten {str(out)!r} did not read back identical; "
                "the original is left as it was."
            )
        os.chmod(tmp, _mode(out))
        os.replace(tmp, out)
    except (OSError, SafetensorError) as err:
        raise RopeBehaviorError(f"rehash_checkpoint: cannot rewrite {str(out)!r}: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return found


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m rope_behavior.tasks.checkpoints",
        description="Add the content hash to checkpoints written before hashes were stored.",
    )
    ap.add_argument("--rehash", nargs="+", metavar="FILE", required=True)
    for name in ap.parse_args(argv).rehash:
        print(f"{name}: sha256 {rehash_checkpoint(name)}")


if __name__ == "__main__":
    _main()
