"""Training and evaluation of toy models on the canonical tasks.

The loss is the cross-entropy of the logits at the query (last) position against the
answer token; accuracy is the argmax over the full vocabulary at that position.

``fwd_hooks`` (TransformerLens ``(hook_name, fn)`` pairs, or a callable ``model -> list``
of them) are installed in one ``model.hooks(...)`` scope that spans the whole run, so
the same hooks act in training and evaluation and none outlives the call, also when a
hook raises. This is how frequency control (pair masks, angle overrides) is applied.

``callbacks`` are called with a :class:`TrainStep` before the first step (step 0, the
initial weights) and after every step, inside that hook scope (so a callback sees the
model as it trains, frequency control included); the training tracker
(:mod:`rope_behavior.tracking`) is one.

Determinism: data come from ``torch.Generator``s seeded from ``TrainConfig.seed`` (the
held-out evaluation batch from a separate one); model initialisation is seeded by the
model's constructor. The global RNG is never touched.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.runtime.progress import progress_bar
from rope_behavior.tasks.batch import Task, TaskBatch
from rope_behavior.tasks.toy import ToyRotaryTransformer

__all__ = [
    "FwdHooks",
    "TrainCallback",
    "TrainConfig",
    "TrainResult",
    "TrainStep",
    "accuracy_by_answer_position",
    "evaluate",
    "query_loss_and_accuracy",
    "resolve_hooks",
    "train",
]

HookList: TypeAlias = Sequence[tuple[Any, Callable[..., Any]]]
FwdHooks: TypeAlias = HookList | Callable[[ToyRotaryTransformer], HookList]

_EVAL_SEED_OFFSET = 1_000_003  # held-out batch generator: seed + offset


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters (AdamW, constant learning rate, early stop)."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0
    target_accuracy: float | None = 0.99
    eval_every: int = 100
    eval_batch_size: int = 512
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RopeBehaviorError(f"TrainConfig: {name} must be an int >= 1; got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RopeBehaviorError(f"TrainConfig: seed must be an int >= 0; got {self.seed!r}.")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise RopeBehaviorError(f"TrainConfig: lr must be a float > 0; got {self.lr!r}.")
        if not isinstance(self.weight_decay, int | float) or self.weight_decay < 0:
            raise RopeBehaviorError(
                f"TrainConfig: weight_decay must be a float >= 0; got {self.weight_decay!r}."
            )
        if self.target_accuracy is not None and not (
            isinstance(self.target_accuracy, int | float) and 0.0 < self.target_accuracy <= 1.0
        ):
            raise RopeBehaviorError(
                f"TrainConfig: target_accuracy must be None (no early stop) or a float in (0, 1]; "
                f"got {self.target_accuracy!r}."
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise RopeBehaviorError(
                f"TrainConfig: device={self.device!r} is not a torch device ({err})."
            ) from None


@dataclass(frozen=True)
class TrainResult:
    """What a training run did. ``eval_accuracy[i]`` is measured after ``eval_steps[i]`` steps."""

    losses: tuple[float, ...]
    eval_steps: tuple[int, ...]
    eval_accuracy: tuple[float, ...]
    steps: int
    final_accuracy: float
    stopped_early: bool
    seconds: float


@dataclass(frozen=True, eq=False)
class TrainStep:
    """What a training callback sees: the model after ``step`` optimiser steps (0: before
    the first), that step's training ``loss`` (``None`` at step 0), whether it is the run's
    last step (``final``: the step limit or the early stop), and ``eval_accuracy()``, the
    accuracy on the run's fixed held-out batch now (computed when called)."""

    model: ToyRotaryTransformer
    task: Task
    step: int
    loss: float | None
    final: bool
    eval_accuracy: Callable[[], float]


TrainCallback: TypeAlias = Callable[[TrainStep], Any]


def resolve_hooks(
    model: ToyRotaryTransformer, fwd_hooks: FwdHooks
) -> list[tuple[Any, Callable[..., Any]]]:
    """Turn ``fwd_hooks`` (a list, or a callable ``model -> list``) into a list of pairs."""
    hooks = fwd_hooks(model) if callable(fwd_hooks) else fwd_hooks
    hooks = list(hooks)
    for item in hooks:
        if not (isinstance(item, tuple) and len(item) == 2 and callable(item[1])):
            raise RopeBehaviorError(
                f"fwd_hooks must be (hook_name, hook_fn) pairs or a callable returning them; got {item!r}."
            )
    return hooks


def query_loss_and_accuracy(
    logits: Float[Tensor, "batch pos d_vocab"], batch: TaskBatch
) -> tuple[Float[Tensor, ""], Float[Tensor, ""]]:
    """Cross-entropy and accuracy at the query position."""
    final = logits[:, batch.query_position]
    loss = F.cross_entropy(final, batch.answer)
    accuracy = (final.argmax(dim=-1) == batch.answer).float().mean()
    return loss, accuracy


def _check_model_task(model: object, task: object) -> None:
    if not isinstance(model, ToyRotaryTransformer):
        raise RopeBehaviorError(
            f"model must be a ToyRotaryTransformer; got {type(model).__name__}."
        )
    if not isinstance(task, Task):
        raise RopeBehaviorError(
            f"task must be a task (IndexTask, RetrievalTask, ...); got {type(task).__name__}."
        )
    if task.d_vocab > model.cfg.d_vocab or task.seq_len > model.cfg.n_ctx:
        raise RopeBehaviorError(
            f"task needs d_vocab >= {task.d_vocab} and n_ctx >= {task.seq_len}; the model has "
            f"d_vocab={model.cfg.d_vocab}, n_ctx={model.cfg.n_ctx}."
        )


@torch.inference_mode()
def _n_correct(model: ToyRotaryTransformer, batch: TaskBatch) -> int:
    final = model(batch.tokens)[:, batch.query_position]
    return int((final.argmax(dim=-1) == batch.answer).sum())


def train(
    model: ToyRotaryTransformer,
    task: Task,
    config: TrainConfig,
    *,
    fwd_hooks: FwdHooks = (),
    callbacks: Sequence[TrainCallback] = (),
) -> TrainResult:
    """Train ``model`` in place on ``task`` and return the curves.

    Evaluates on a fixed held-out batch every ``config.eval_every`` steps and after the
    last step; stops early once the held-out accuracy reaches ``config.target_accuracy``.
    ``callbacks`` are called with a :class:`TrainStep` at step 0 and after every step
    (module docstring).
    """
    _check_model_task(model, task)
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not callable(cb):
            raise RopeBehaviorError(
                f"callbacks holds {cb!r}; expected callables taking a TrainStep (e.g. a "
                "rope_behavior.tracking.Tracker)."
            )
    if not isinstance(config, TrainConfig):
        raise RopeBehaviorError(f"config must be a TrainConfig; got {type(config).__name__}.")
    model.to(config.device)
    data_gen = torch.Generator(device=config.device).manual_seed(config.seed)
    eval_gen = torch.Generator(device=config.device).manual_seed(config.seed + _EVAL_SEED_OFFSET)
    eval_batch = task.sample(config.eval_batch_size, eval_gen)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    losses: list[float] = []
    eval_steps: list[int] = []
    eval_accuracy: list[float] = []
    stopped_early = False
    start = time.perf_counter()
    was_training = model.training
    model.train()
    bar = progress_bar(
        total=config.steps, disable=not config.progress, desc=f"train {task.kind}", leave=False
    )

    def notify(step: int, loss: float | None, final: bool) -> None:
        def accuracy() -> float:
            return _n_correct(model, eval_batch) / eval_batch.batch_size

        for cb in callbacks:
            cb(TrainStep(model, task, step, loss, final, accuracy))

    try:
        with model.hooks(fwd_hooks=resolve_hooks(model, fwd_hooks)):
            notify(0, None, False)
            for step in range(1, config.steps + 1):
                batch = task.sample(config.batch_size, data_gen)
                loss, _ = query_loss_and_accuracy(model(batch.tokens), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                if step % config.eval_every == 0 or step == config.steps:
                    acc = _n_correct(model, eval_batch) / eval_batch.batch_size
                    eval_steps.append(step)
                    eval_accuracy.append(acc)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{acc:.3f}")
                    if config.target_accuracy is not None and acc >= config.target_accuracy:
                        stopped_early = step < config.steps
                notify(step, losses[-1], stopped_early or step == config.steps)
                if stopped_early:
                    break
    finally:
        bar.close()
        model.train(was_training)
    return TrainResult(
        losses=tuple(losses),
        eval_steps=tuple(eval_steps),
        eval_accuracy=tuple(eval_accuracy),
        steps=len(losses),
        final_accuracy=eval_accuracy[-1],
        stopped_early=stopped_early,
        seconds=time.perf_counter() - start,
    )


def evaluate(
    model: ToyRotaryTransformer,
    task: Task,
    n: int,
    generator: torch.Generator,
    *,
    fwd_hooks: FwdHooks = (),
    answer_position: int | None = None,
    batch_size: int = 1024,
) -> float:
    """Accuracy at the query position on ``n`` fresh prompts (optionally a fixed answer position)."""
    _check_model_task(model, task)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RopeBehaviorError(f"evaluate: n must be an int >= 1; got {n!r}.")
    correct = 0
    with model.hooks(fwd_hooks=resolve_hooks(model, fwd_hooks)):
        done = 0
        while done < n:
            size = min(batch_size, n - done)
            batch = task.sample(size, generator, answer_position=answer_position).to(model.device)
            correct += _n_correct(model, batch)
            done += size
    return correct / n


def accuracy_by_answer_position(
    model: ToyRotaryTransformer,
    task: Task,
    n_per_position: int,
    generator: torch.Generator,
    *,
    fwd_hooks: FwdHooks = (),
) -> dict[int, float]:
    """``{answer_position: accuracy}`` over every valid answer position of ``task``."""
    return {
        position: evaluate(
            model, task, n_per_position, generator, fwd_hooks=fwd_hooks, answer_position=position
        )
        for position in task.answer_positions
    }
