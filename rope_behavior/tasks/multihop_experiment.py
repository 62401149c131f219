"""The multi-hop experiment: train the one-head-per-layer GPT-J style model on Number and
Letter and record, over training, the accuracy per hop count and the weights.

**Model** (:func:`multihop_model`): the toy rotary transformer with GPT-J style blocks
(shared LayerNorm, attention and MLP in parallel; :mod:`rope_behavior.tasks.toy`), one
head per layer, ``d_head = d_model`` (default 12 layers, width 128, MLP 512, RoPE base
10000 over the whole head, final LayerNorm), loss on the last token only.

**Training**: :func:`rope_behavior.tasks.training.train` (AdamW, constant learning rate,
no early stop) on 1-4 hops in equal shares. At step 0, every ``record_every`` steps and
the last, a recorder (a training callback) measures the accuracy on ``n_eval`` held-out
prompts (equal hop shares; generator ``seed + 3_000_017``) pooled and per hop count and,
with ``out_dir``, saves a checkpoint (``checkpoints/<task>/step_<N>.safetensors``, the
task and step inside), so any later analysis can be run on the same weights.

**Heads over training**: ``trackers`` builds one more callback per task, e.g. a
:class:`rope_behavior.tracking.Tracker` on :func:`tracker_prompts` (the tracking package
sits above this one, so it is passed in; ``scripts/train_multihop.py`` does so).
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch

from rope_behavior.errors import RopeBehaviorError, as_count, as_flag, as_int, validates_inputs
from rope_behavior.tasks.batch import Task
from rope_behavior.tasks.checkpoints import save_checkpoint
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.toy import ToyRotaryTransformer, toy_model
from rope_behavior.tasks.training import TrainConfig, TrainStep, train

__all__ = [
    "MultiHopConfig",
    "MultiHopResult",
    "multihop_model",
    "run_multihop",
    "tracker_prompts",
]

_EVAL_SEED_OFFSET = 3_000_017
_SCORE_SEED_OFFSET = 4_000_037
_LETTER = {"positional": "P", "symbolic": "S", "uniform": "U", "unidentified": "-"}
MultiHopTask = NumberHopsTask | LetterHopsTask


def multihop_model(
    task: MultiHopTask, *, n_layers: int = 12, d_model: int = 128, seed: int = 0
) -> ToyRotaryTransformer:
    """The follow-up's model shape: ``n_layers`` GPT-J style blocks of one head each."""
    return toy_model(
        cast(Task, task),  # frozen fields: mypy reads Task's attributes as settable
        n_layers=n_layers,
        n_heads=1,
        d_head=d_model,
        attn_only=False,
        final_layer_norm=True,
        seed=seed,
    )


@validates_inputs
@dataclass(frozen=True)
class MultiHopConfig:
    """What :func:`run_multihop` trains and records (module docstring)."""

    steps: int = 2500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    n_layers: int = 12
    d_model: int = 128
    record_every: int = 250
    n_eval: int = 512
    n_score: int = 64
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "n_layers", "record_every", "n_eval", "n_score"):
            as_count(getattr(self, name), f"MultiHopConfig.{name}")
        if as_int(self.d_model, "MultiHopConfig.d_model", low=2) % 2:
            raise RopeBehaviorError(
                f"MultiHopConfig.d_model={self.d_model!r}: expected an even int >= 2 (one "
                "head as wide as the model, rotated in pairs)."
            )
        as_int(self.seed, "MultiHopConfig.seed", low=0)
        as_flag(self.progress, "MultiHopConfig.progress")
        self.train_config()  # lr, weight decay and device are checked there

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            target_accuracy=None,
            eval_every=self.steps,  # the recorder measures at its own steps
            eval_batch_size=self.n_eval,
            device=self.device,
            progress=self.progress,
        )


def tracker_prompts(task: MultiHopTask, config: MultiHopConfig) -> torch.Tensor:
    """The ``n_score`` prompts heads are tracked on: equal hop shares, generator ``seed +
    4_000_037`` (on ``config.device``)."""
    gen = torch.Generator(device=config.device).manual_seed(config.seed + _SCORE_SEED_OFFSET)
    return task.sample(config.n_score, gen).tokens


@dataclass
class _Timed:
    """A training callback that counts the seconds it spends (kept out of the step time)."""

    callback: Callable[[TrainStep], Any]
    seconds: float = 0.0

    def __call__(self, state: TrainStep) -> None:
        start = time.perf_counter()
        self.callback(state)
        self.seconds += time.perf_counter() - start


@dataclass
class _Recorder:
    """Training callback: accuracy per hop count and checkpoints at record steps."""

    name: str
    task: MultiHopTask
    config: MultiHopConfig
    folder: Path | None
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        dev = self.config.device
        gen = torch.Generator(device=dev).manual_seed(self.config.seed + _EVAL_SEED_OFFSET)
        self.batch = self.task.sample(self.config.n_eval, gen)

    def __call__(self, state: TrainStep) -> None:
        if not (state.step % self.config.record_every == 0 or state.final):
            return
        model, step = state.model, state.step
        with torch.inference_mode():
            final = model(self.batch.tokens)[:, self.batch.query_position]
        correct = (final.argmax(dim=-1) == self.batch.answer).float()
        hops = self.batch.metadata["hops"]
        rows = [("all", correct)] + [
            (str(h), correct[hops == h]) for h in range(1, self.task.max_hops + 1)
        ]
        for label, part in rows:
            self.accuracy.append(
                {"task": self.name, "step": step, "loss": state.loss, "hops": label,
                 "accuracy": float(part.mean()), "n": int(part.numel())}
            )  # fmt: skip
        if self.folder is not None:
            path = self.folder / f"step_{step:06d}.safetensors"
            extra = {"step": step, "accuracy": float(correct.mean())}
            self.checkpoints.append(save_checkpoint(model, path, task=self.task, extra=extra))


@dataclass(frozen=True)
class MultiHopResult:
    """What :func:`run_multihop` measured.

    Attributes:
        accuracy: ``task, step, loss, hops, accuracy, n`` (``hops``: ``"all"`` or
            ``"1"`` .. ``"4"``), one row per record step and hop count.
        checkpoints: the saved checkpoint files (none without ``out_dir``).
        tracked: per task, the callback ``trackers`` built (e.g. its ``Tracker``).
        seconds_per_step: per task, the training seconds per optimiser step (recording
            and tracking excluded).
        seconds: the whole run.
    """

    accuracy: pd.DataFrame
    checkpoints: tuple[Path, ...]
    tracked: Mapping[str, Any]
    seconds_per_step: Mapping[str, float]
    seconds: float

    def to_frame(self) -> pd.DataFrame:
        """The accuracy table (tidy)."""
        return self.accuracy

    def __repr__(self) -> str:
        lines = [f"MultiHopResult: {self.seconds:.0f} s, {len(self.checkpoints)} checkpoints"]
        for task, part in self.accuracy.groupby("task", sort=False):
            end = part[part["step"] == part["step"].max()].set_index("hops")["accuracy"]
            hops = " ".join(f"{end[h]:.2f}" for h in end.index if h != "all")
            lines.append(
                f"  {task:<7} step {int(part['step'].max())}: acc {end['all']:.3f} (by hops "
                f"{hops}), {self.seconds_per_step[task]:.3f} s/step"
            )
        return "\n".join(line[:80] for line in lines)


def _tasks(tasks: Any) -> dict[str, MultiHopTask]:
    if tasks is None:
        return {"number": NumberHopsTask(), "letter": LetterHopsTask()}
    items = dict(tasks) if isinstance(tasks, Mapping) else None
    if not items or not all(isinstance(t, NumberHopsTask | LetterHopsTask) for t in items.values()):
        raise RopeBehaviorError(
            f"tasks={tasks!r}; expected None (Number and Letter with their defaults) or a "
            "{name: NumberHopsTask | LetterHopsTask} mapping."
        )
    return items


@validates_inputs
def run_multihop(
    config: MultiHopConfig | None = None,
    *,
    tasks: Mapping[str, MultiHopTask] | None = None,
    out_dir: str | PathLike[str] | None = None,
    trackers: Callable[[str, MultiHopTask], Callable[[TrainStep], Any]] | None = None,
) -> MultiHopResult:
    """Train one model per task (default Number and Letter) and record it (module docstring).

    Args:
        config: model, training and recording sizes (default :class:`MultiHopConfig`).
        tasks: ``{name: task}``; default ``{"number": NumberHopsTask(), "letter":
            LetterHopsTask()}`` (17 tokens, 1-4 hops).
        out_dir: where checkpoints go (``checkpoints/<name>/step_<N>.safetensors``);
            ``None`` saves none.
        trackers: ``(name, task) -> callback`` called once per task before its training;
            the callback (e.g. a ``Tracker``) rides along every step.
    """
    start = time.perf_counter()
    config = config if config is not None else MultiHopConfig()
    if not isinstance(config, MultiHopConfig):
        raise RopeBehaviorError(f"config must be a MultiHopConfig; got {type(config).__name__}.")
    if trackers is not None and not callable(trackers):
        raise RopeBehaviorError(
            f"trackers={trackers!r}; expected None or a callable (name, task) -> callback."
        )
    task_map = _tasks(tasks)
    recorders, tracked, per_step = [], {}, {}
    for name, task in task_map.items():
        folder = None
        if out_dir is not None:
            folder = Path(out_dir) / "checkpoints" / name
            folder.mkdir(parents=True, exist_ok=True)
        model = multihop_model(
            task, n_layers=config.n_layers, d_model=config.d_model, seed=config.seed
        )
        recorder = _Recorder(name, task, config, folder)
        callbacks = [_Timed(recorder)]
        if trackers is not None:
            tracked[name] = trackers(name, task)
            callbacks.append(_Timed(tracked[name]))
        result = train(model, cast(Task, task), config.train_config(), callbacks=callbacks)
        recording = sum(c.seconds for c in callbacks)
        per_step[name] = (result.seconds - recording) / result.steps
        recorders.append(recorder)
    return MultiHopResult(
        accuracy=pd.DataFrame([row for r in recorders for row in r.accuracy]),
        checkpoints=tuple(p for r in recorders for p in r.checkpoints),
        tracked=tracked,
        seconds_per_step=per_step,
        seconds=time.perf_counter() - start,
    )
