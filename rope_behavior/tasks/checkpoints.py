"""Save and load toy models as one ``.safetensors`` file with the configuration inside.

The file holds the model's ``state_dict`` (weights and the ``rotary_omega`` buffer, so a
NoPE or angle-overridden model stays one) and, in the safetensors metadata, JSON for
``ToyConfig`` (key ``rope_behavior.toy_config``), the task it was trained on
(``rope_behavior.task``, optional) and free-form ``extra`` (``rope_behavior.extra``).
"""

import json
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

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
from rope_behavior.tasks.toy import ToyConfig, ToyRotaryTransformer

__all__ = ["CheckpointInfo", "checkpoint_info", "load_checkpoint", "save_checkpoint"]

FORMAT_VERSION = "1"
_CONFIG_KEY = "rope_behavior.toy_config"
_TASK_KEY = "rope_behavior.task"
_EXTRA_KEY = "rope_behavior.extra"
_VERSION_KEY = "rope_behavior.format_version"


@dataclass(frozen=True)
class CheckpointInfo:
    """The configuration stored in a checkpoint (no weights)."""

    config: ToyConfig
    task: IndexTask | RetrievalTask | PartialInductionTask | None
    extra: dict[str, Any]


def save_checkpoint(
    model: ToyRotaryTransformer,
    path: str | PathLike[str],
    *,
    task: IndexTask | RetrievalTask | PartialInductionTask | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (and optionally its task and JSON-able ``extra``) to ``path``."""
    if not isinstance(model, ToyRotaryTransformer):
        raise RopeBehaviorError(
            f"save_checkpoint: model must be a ToyRotaryTransformer; got {type(model).__name__}."
        )
    try:
        extra_json = json.dumps(extra or {})
    except TypeError as err:
        raise RopeBehaviorError(
            f"save_checkpoint: extra must be JSON-serialisable ({err})."
        ) from None
    metadata = {
        _VERSION_KEY: FORMAT_VERSION,
        _CONFIG_KEY: json.dumps(asdict(model.cfg)),
        _EXTRA_KEY: extra_json,
    }
    if task is not None:
        metadata[_TASK_KEY] = json.dumps(task_to_dict(task))
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = Path(path)
    save_file(tensors, str(out), metadata=metadata)
    return out


def checkpoint_info(path: str | PathLike[str]) -> CheckpointInfo:
    """Read the configuration, task and extra stored in a checkpoint."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (OSError, SafetensorError) as err:
        raise RopeBehaviorError(f"Cannot read checkpoint {str(path)!r}: {err}") from None
    if _CONFIG_KEY not in metadata:
        raise RopeBehaviorError(
            f"{str(path)!r} is not a rope_behavior toy checkpoint (no {_CONFIG_KEY!r} in its metadata)."
        )
    known = {f.name for f in fields(ToyConfig)}
    raw = json.loads(metadata[_CONFIG_KEY])
    unknown = sorted(set(raw) - known)
    if unknown:
        raise RopeBehaviorError(f"Checkpoint {str(path)!r} has unknown ToyConfig fields {unknown}.")
    task = task_from_dict(json.loads(metadata[_TASK_KEY])) if _TASK_KEY in metadata else None
    return CheckpointInfo(
        config=ToyConfig(**raw), task=task, extra=json.loads(metadata.get(_EXTRA_KEY, "{}"))
    )


def load_checkpoint(
    path: str | PathLike[str], *, into: ToyRotaryTransformer | None = None
) -> ToyRotaryTransformer:
    """Load a checkpoint into a new model, or into ``into`` after checking its config matches."""
    info = checkpoint_info(path)
    if into is None:
        model = ToyRotaryTransformer(info.config)
    else:
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
        model = into
    state = load_file(str(path), device=str(model.device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RopeBehaviorError(
            f"Checkpoint {str(path)!r} weights do not fit its config: {err}"
        ) from None
    return model
