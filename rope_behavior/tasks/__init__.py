"""Canonical tasks (docs/method.md §5), the toy rotary transformer, training and checkpoints."""

from rope_behavior.tasks.batch import Task, TaskBatch
from rope_behavior.tasks.checkpoints import (
    CheckpointInfo,
    checkpoint_info,
    load_checkpoint,
    save_checkpoint,
)
from rope_behavior.tasks.experiment import ExperimentResult, RunRecord, run_experiment
from rope_behavior.tasks.generators import (
    TASK_KINDS,
    IndexTask,
    PartialInductionTask,
    RetrievalTask,
    task_from_dict,
    task_to_dict,
)
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.multihop_experiment import (
    MultiHopConfig,
    MultiHopResult,
    multihop_model,
    run_multihop,
)
from rope_behavior.tasks.pretrained import PRETRAINED, load_pretrained, load_trained
from rope_behavior.tasks.settings import FrequencySetting, parse_setting, sweep_settings
from rope_behavior.tasks.toy import ToyConfig, ToyRotaryTransformer, rotate_half, toy_model
from rope_behavior.tasks.training import (
    FwdHooks,
    TrainConfig,
    TrainResult,
    accuracy_by_answer_position,
    evaluate,
    query_loss_and_accuracy,
    resolve_hooks,
    train,
)

__all__ = [
    "PRETRAINED",
    "TASK_KINDS",
    "CheckpointInfo",
    "ExperimentResult",
    "FrequencySetting",
    "FwdHooks",
    "IndexTask",
    "LetterHopsTask",
    "MultiHopConfig",
    "MultiHopResult",
    "NumberHopsTask",
    "PartialInductionTask",
    "RetrievalTask",
    "RunRecord",
    "Task",
    "TaskBatch",
    "ToyConfig",
    "ToyRotaryTransformer",
    "TrainConfig",
    "TrainResult",
    "accuracy_by_answer_position",
    "checkpoint_info",
    "evaluate",
    "load_checkpoint",
    "load_pretrained",
    "load_trained",
    "multihop_model",
    "parse_setting",
    "query_loss_and_accuracy",
    "resolve_hooks",
    "rotate_half",
    "run_experiment",
    "run_multihop",
    "save_checkpoint",
    "sweep_settings",
    "task_from_dict",
    "task_to_dict",
    "toy_model",
    "train",
]
