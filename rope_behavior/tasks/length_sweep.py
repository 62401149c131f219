"""Length generalisation: accuracy and discrepancy from the training length to many times it.

For every trained model (its task, frequency setting and seed) and every multiple ``m``,
prompts of ``m * length`` context tokens are drawn with
:class:`~rope_behavior.tasks.long_prompts.LongPrompts` (the base task's vocabulary; see
there how the extra context is placed) and the model reads them under its setting's hooks:

* ``accuracy``: the argmax (over the whole vocabulary) at the query position against the
  answer; ``chance``: a uniform guess among the task's answers (:func:`chance_accuracy`);
* ``gap`` / ``normalised_gap``: :func:`rope_behavior.discrepancy` of every head at the
  query (top versus second attention logit, raw and normalised; ``docs/method.md`` §7),
  averaged over the prompts (and, in ``to_frame()``, over the heads; per head in
  ``head_frame()``).

**Longer context.** The toy model has no positional embedding and computes its rotary
angles at every forward from its buffer ``rotary_omega`` (``n * omega`` at position ``n``),
so ``n_ctx`` only bounds the accepted length. :func:`extend_context` copies the weights and
the ``rotary_omega`` buffer into a model whose ``n_ctx`` is the longer length: the same
frequencies, evaluated at later positions. Nothing is rescaled or interpolated.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.scoring.logit_gap import discrepancy
from rope_behavior.tasks.checkpoints import checkpoint_info, load_checkpoint
from rope_behavior.tasks.generators import IndexTask, RetrievalTask
from rope_behavior.tasks.long_prompts import LONG_KINDS, BaseTask, LongPrompts
from rope_behavior.tasks.multihop import LetterHopsTask, NumberHopsTask
from rope_behavior.tasks.settings import SETTING_FORMS, FrequencySetting, parse_setting
from rope_behavior.tasks.toy import ToyRotaryTransformer
from rope_behavior.tasks.training import resolve_hooks

__all__ = [
    "LengthSweep",
    "SweepModel",
    "chance_accuracy",
    "checkpoints_in",
    "extend_context",
    "length_sweep",
]

_EVAL_SEED_OFFSET = 3_000_017
_CHUNK_ENTRIES = 2**24  # attention entries (prompt x head x dest x src) per forward chunk


def extend_context(model: ToyRotaryTransformer, n_ctx: int) -> ToyRotaryTransformer:
    """A copy of ``model`` that accepts ``n_ctx`` positions (module docstring), in eval mode."""
    if not isinstance(model, ToyRotaryTransformer):
        raise RopeBehaviorError(
            f"extend_context: model must be a ToyRotaryTransformer; got {type(model).__name__}."
        )
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < model.cfg.n_ctx:
        raise RopeBehaviorError(
            f"extend_context: n_ctx={n_ctx!r}; expected an int >= the model's n_ctx "
            f"{model.cfg.n_ctx}."
        )
    longer = ToyRotaryTransformer(replace(model.cfg, n_ctx=n_ctx))
    longer.to(device=model.device, dtype=model.W_E.dtype)  # load_state_dict would cast
    longer.load_state_dict(model.state_dict())
    return longer.eval()


def _check_run(model: object, task: Any, setting: object, seed: object) -> None:
    """The checks of :class:`SweepModel` (also run before building one from a tuple)."""
    if not isinstance(model, ToyRotaryTransformer):
        raise RopeBehaviorError(
            f"SweepModel: model must be a ToyRotaryTransformer; got {type(model).__name__}."
        )
    if not isinstance(task, BaseTask):
        raise RopeBehaviorError(
            f"SweepModel: task={type(task).__name__} cannot be lengthened; expected "
            f"one of {', '.join(LONG_KINDS)} (IndexTask, RetrievalTask, NumberHopsTask, "
            "LetterHopsTask)."
        )
    cfg = model.cfg
    if task.d_vocab > cfg.d_vocab or task.seq_len > cfg.n_ctx:
        raise RopeBehaviorError(
            f"SweepModel: the {task.kind} task (d_vocab {task.d_vocab}, seq_len "
            f"{task.seq_len}) is not the one the model reads (d_vocab {cfg.d_vocab}, "
            f"n_ctx {cfg.n_ctx}); expected the task the model was trained on."
        )
    if not isinstance(setting, FrequencySetting):
        raise RopeBehaviorError(
            f"SweepModel: setting={setting!r}; expected a FrequencySetting or its name "
            f"({', '.join(SETTING_FORMS)})."
        )
    if setting.n_pairs != cfg.n_pairs:
        raise RopeBehaviorError(
            f"SweepModel: setting {setting.name!r} was parsed for n_pairs="
            f"{setting.n_pairs}; the model has {cfg.n_pairs} pairs (parse_setting("
            f"{setting.name!r}, {cfg.n_pairs}))."
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RopeBehaviorError(f"SweepModel: seed must be an int >= 0; got {seed!r}.")


@dataclass(frozen=True, eq=False)
class SweepModel:
    """One trained model of a sweep: ``task`` (its training task), ``setting`` and ``seed``."""

    model: ToyRotaryTransformer
    task: Any
    setting: FrequencySetting
    seed: int = 0

    def __post_init__(self) -> None:
        _check_run(self.model, self.task, self.setting, self.seed)

    @staticmethod
    def of(item: object) -> "SweepModel":
        """From a ``SweepModel``, ``(model, task, setting[, seed])`` or a checkpoint file
        (its ``setting`` from the metadata, ``"all"`` where none is stored, as in the
        multi-hop checkpoints; its ``seed`` likewise, default 0)."""
        if isinstance(item, SweepModel):
            return item
        if isinstance(item, str | PathLike):
            info = checkpoint_info(item)
            if info.task is None:
                raise RopeBehaviorError(
                    f"checkpoint {str(item)!r} stores no task; expected one written with its "
                    "task (scripts/train_checkpoints.py, scripts/train_multihop.py)."
                )
            setting = parse_setting(str(info.extra.get("setting", "all")), info.config.n_pairs)
            return SweepModel(load_checkpoint(item).eval(), info.task, setting,
                              int(info.extra.get("seed", 0)))  # fmt: skip
        if isinstance(item, tuple) and len(item) in (3, 4):
            model, task, setting, *seed = item
            if isinstance(setting, str) and isinstance(model, ToyRotaryTransformer):
                setting = parse_setting(setting, model.cfg.n_pairs)
            _check_run(model, task, setting, seed[0] if seed else 0)
            return SweepModel(model, task, setting, *seed)
        raise RopeBehaviorError(
            f"length_sweep: cannot read {item!r} as a model; expected a SweepModel, a tuple "
            "(model, task, setting[, seed]) or a checkpoint path (.safetensors)."
        )


@dataclass(frozen=True)
class LengthSweep:
    """Per (task, setting, seed, multiple): ``rows`` (accuracy and head-mean gaps) and
    ``head_rows`` (each head's mean gaps); tuples of dicts, tidy with ``to_frame()`` /
    ``head_frame()``."""

    rows: tuple[dict[str, Any], ...]
    head_rows: tuple[dict[str, Any], ...]
    n_prompts: int
    seconds: float

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def head_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(list(self.head_rows))

    def __repr__(self) -> str:
        runs = sorted({(r["task"], r["setting"], r["seed"]) for r in self.rows})
        mults = sorted({r["multiple"] for r in self.rows})
        lines = [
            f"LengthSweep: {len(runs)} models x {len(mults)} lengths, {self.n_prompts} prompts "
            f"each, {self.seconds:.0f} s",
            f"  {'task':<12}{'setting':<10}{'seed':>5}{'x':>5}{'length':>7}{'acc':>7}"
            f"{'gap':>8}{'norm':>7}",
        ]
        for r in self.rows[:20]:
            lines.append(
                f"  {r['task'][:11]:<12}{r['setting'][:9]:<10}{r['seed']:>5}{r['multiple']:>5}"
                f"{r['length']:>7}{r['accuracy']:>7.3f}{r['gap']:>8.3f}{r['normalised_gap']:>7.3f}"
            )
        if len(self.rows) > 20:
            lines.append(f"  ... {len(self.rows) - 20} more rows (.to_frame())")
        return "\n".join(lines)


def chance_accuracy(task: Any) -> float:
    """Accuracy of a uniform guess among the answers ``task`` can have: Index ``1 /
    n_symbols``, Retrieval ``1 / n_attributes``, Number ``1 / n_slots``, Letter ``1 /
    n_letters``."""
    base = task.base if isinstance(task, LongPrompts) else task
    if isinstance(base, IndexTask):
        return 1 / base.n_symbols
    if isinstance(base, RetrievalTask):
        return 1 / base.n_attributes
    if isinstance(base, NumberHopsTask):
        return 1 / base.n_slots
    if isinstance(base, LetterHopsTask):
        return 1 / base.n_letters
    raise RopeBehaviorError(
        f"chance_accuracy: task={type(base).__name__}; expected one of {', '.join(LONG_KINDS)}."
    )


def _check_args(multiples: object, n_prompts: object, seed: object) -> tuple[int, ...]:
    if isinstance(n_prompts, bool) or not isinstance(n_prompts, int) or n_prompts < 1:
        raise RopeBehaviorError(f"length_sweep: n_prompts must be an int >= 1; got {n_prompts!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise RopeBehaviorError(f"length_sweep: seed must be an int >= 0; got {seed!r}.")
    values = tuple(multiples) if isinstance(multiples, Sequence) else (multiples,)
    if not values or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in values):
        raise RopeBehaviorError(
            f"length_sweep: multiples={multiples!r}; expected ints >= 1 (1 = the training "
            "length), e.g. (1, 2, 5, 10, 20, 50)."
        )
    return tuple(sorted(set(values)))


def _measure(run: SweepModel, task: LongPrompts, n: int, gen: torch.Generator) -> dict[str, Any]:
    """Accuracy and per-head mean gaps of ``run`` on ``n`` prompts of ``task``."""
    model = extend_context(run.model, max(task.seq_len, run.model.cfg.n_ctx))
    cfg = model.cfg
    chunk = max(1, _CHUNK_ENTRIES // (cfg.n_heads * task.seq_len**2))
    correct, gaps, norms = 0, [], []
    with model.hooks(fwd_hooks=resolve_hooks(model, run.setting.hooks)):
        for start in range(0, n, chunk):
            batch = task.sample(min(chunk, n - start), gen).to(model.device)
            with torch.inference_mode():
                final = model(batch.tokens)[:, batch.query_position]
            correct += int((final.argmax(-1) == batch.answer).sum())
            d = discrepancy(model, batch.tokens)
            gaps.append(d.gap.double())
            norms.append(d.normalised_gap.double())
    return {
        "accuracy": correct / n,
        "gap": torch.cat(gaps).nanmean(0),  # [layer, head]
        "normalised_gap": torch.cat(norms).nanmean(0),
    }


def length_sweep(
    models_or_checkpoints: Sequence[Any],
    *,
    multiples: Sequence[int] = (1, 2, 5, 10, 20, 50),
    n_prompts: int = 256,
    seed: int = 0,
) -> LengthSweep:
    """Accuracy and discrepancy of trained toy models at ``multiples`` of their training length.

    Args:
        models_or_checkpoints: ``SweepModel``s, ``(model, task, setting[, seed])`` tuples
            (``setting`` a :class:`FrequencySetting` or its name) or checkpoint files; the
            tasks: Index, Retrieval, Number hops or Letter hops.
        multiples: context lengths as multiples of each task's training ``length``.
        n_prompts: prompts per model and length.
        seed: seeds the prompts (the same prompts for every model of a task and length).

    Returns:
        :class:`LengthSweep`; ``to_frame()`` has ``task, setting, seed, multiple, length,
        accuracy, chance`` (:func:`chance_accuracy`) ``, gap, normalised_gap, n_prompts``.
    """
    import time

    mults = _check_args(multiples, n_prompts, seed)
    if isinstance(models_or_checkpoints, str | PathLike) or not isinstance(
        models_or_checkpoints, Sequence
    ):
        models_or_checkpoints = [models_or_checkpoints]
    runs = [SweepModel.of(item) for item in models_or_checkpoints]
    if not runs:
        raise RopeBehaviorError("length_sweep: no models given; expected at least one.")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    head_rows: list[dict[str, Any]] = []
    for run in runs:
        for m in mults:
            task = LongPrompts(run.task, m * run.task.length)
            gen = torch.Generator(device=run.model.device).manual_seed(seed + _EVAL_SEED_OFFSET + m)
            got = _measure(run, task, n_prompts, gen)
            key = {"task": run.task.kind, "setting": run.setting.name, "seed": run.seed,
                   "multiple": m, "length": task.length}  # fmt: skip
            rows.append({**key, "accuracy": got["accuracy"],
                         "chance": chance_accuracy(run.task),
                         "gap": float(got["gap"].nanmean()),
                         "normalised_gap": float(got["normalised_gap"].nanmean()),
                         "n_prompts": n_prompts})  # fmt: skip
            for (layer, head), gap in zip(
                ((i, j) for i in range(got["gap"].shape[0]) for j in range(got["gap"].shape[1])),
                got["gap"].flatten().tolist(),
                strict=True,
            ):
                head_rows.append({**key, "layer": layer, "head": head, "gap": gap,
                                  "normalised_gap": float(got["normalised_gap"][layer, head])})  # fmt: skip
    return LengthSweep(tuple(rows), tuple(head_rows), n_prompts, time.perf_counter() - start)


def _step_order(path: Path) -> tuple[int, str]:
    """Sort key: the number in ``step_<N>`` (unpadded too: ``step_1000`` after ``step_250``)."""
    match = re.fullmatch(r"step_(\d+)", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def checkpoints_in(folder: str | PathLike[str]) -> list[Path]:
    """The last checkpoint of ``folder`` and of each folder below it (the highest ``N`` of
    ``step_<N>.safetensors``, else the last name), e.g. the final checkpoint of every task
    of ``scripts/train_multihop.py``."""
    root = Path(folder)
    if not root.is_dir():
        raise RopeBehaviorError(f"checkpoints_in: {str(folder)!r} is not a folder.")
    found = []
    for directory in sorted({p.parent for p in root.rglob("*.safetensors")}):
        found.append(max(directory.glob("*.safetensors"), key=_step_order))
    if not found:
        raise RopeBehaviorError(f"checkpoints_in: no .safetensors files under {str(folder)!r}.")
    return found
