"""The small trained toy models shipped with the package (``rope_behavior/checkpoints``).

``load_pretrained("index")`` returns ``(model, task, setting)``: the model (in eval
mode, its weights checked against the file's content hash), the task it was trained on
and the frequency setting it was trained (and must be evaluated) under.
The checkpoints are produced by ``scripts/train_checkpoints.py``, which records the
setting, the training configuration and the measured accuracy in the metadata
(``CheckpointInfo.extra``).
"""

from importlib import resources
from os import PathLike
from pathlib import Path

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.checkpoints import checkpoint_info, load_checkpoint
from rope_behavior.tasks.generators import IndexTask, PartialInductionTask, RetrievalTask
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.settings import FrequencySetting, parse_setting
from rope_behavior.tasks.toy import ToyRotaryTransformer

__all__ = ["PRETRAINED", "load_pretrained", "load_trained", "pretrained_path"]

PRETRAINED = ("index", "retrieval", "partial_induction")
PretrainedTask = (
    IndexTask | RetrievalTask | PartialInductionTask | NumberHopsTask | LetterHopsTask
)  # what load_trained may find in a checkpoint


def pretrained_path(name: str) -> Path:
    """Path of the shipped checkpoint ``name`` (one of :data:`PRETRAINED`)."""
    if name not in PRETRAINED:
        raise RopeBehaviorError(
            f"unknown pretrained model {name!r}; options: {', '.join(PRETRAINED)}."
        )
    path = Path(str(resources.files("rope_behavior") / "checkpoints" / f"{name}.safetensors"))
    if not path.is_file():
        raise RopeBehaviorError(
            f"the shipped checkpoint {path} is missing; regenerate it with "
            "`python scripts/train_checkpoints.py`."
        )
    return path


def load_trained(
    path: str | PathLike[str], *, verify: bool = True
) -> tuple[ToyRotaryTransformer, PretrainedTask, FrequencySetting]:
    """Load a checkpoint written by ``scripts/train_checkpoints.py``: it must store its
    task and a frequency ``setting`` valid for its model's number of pairs. The model is
    returned in eval mode (ready for evaluation and patching sweeps); ``verify`` as in
    :func:`~rope_behavior.tasks.checkpoints.load_checkpoint`."""
    info = checkpoint_info(path)
    if info.task is None or "setting" not in info.extra:
        missing = [
            k
            for k, ok in (("task", info.task is not None), ("setting", "setting" in info.extra))
            if not ok
        ]
        raise RopeBehaviorError(
            f"checkpoint {str(path)!r} lacks {' and '.join(missing)} in its metadata; it was "
            "not written by scripts/train_checkpoints.py (use load_checkpoint for a bare model)."
        )
    task = info.task
    if task.d_vocab > info.config.d_vocab or task.seq_len > info.config.n_ctx:
        raise RopeBehaviorError(
            f"checkpoint {str(path)!r}: its model (d_vocab={info.config.d_vocab}, n_ctx="
            f"{info.config.n_ctx}) cannot read its task (needs d_vocab >= {task.d_vocab}, "
            f"n_ctx >= {task.seq_len}); the metadata belongs to another config."
        )
    try:
        setting = parse_setting(str(info.extra["setting"]), info.config.n_pairs)
    except RopeBehaviorError as err:
        raise RopeBehaviorError(
            f"checkpoint {str(path)!r}: its setting does not fit its model "
            f"(n_pairs={info.config.n_pairs}): {err}"
        ) from None
    return load_checkpoint(path, verify=verify).eval(), task, setting


def load_pretrained(name: str) -> tuple[ToyRotaryTransformer, PretrainedTask, FrequencySetting]:
    """``(model, task, setting)`` of a shipped model: ``"index"`` (positional),
    ``"retrieval"`` (symbolic) or ``"partial_induction"`` (mixed).

    Evaluate under the setting: ``evaluate(model, task, n, gen, fwd_hooks=setting.hooks)``.
    """
    return load_trained(pretrained_path(name))
