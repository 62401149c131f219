"""Scores over training: every head's positional / symbolic scores (with intervals) and
frequency usage at chosen steps of a training run, cheap enough to run inside it.

A :class:`Tracker` holds a fixed set of prompts. At every checkpoint it scores the model
on them the way :func:`~rope_behavior.analyze` does (one forward per batch gives usage and
scores, :meth:`HeadScores.mean` the bootstrap intervals), with the SAME swaps at every
step, so the trajectory of a head is a trajectory of the head and not of the draw. The
swaps are drawn once (``n_swaps``, ``seed``) at the first checkpoint, among the blocks
every prompt has; the rows of a step equal :func:`~rope_behavior.score_heads` on that
step's weights with ``swaps=tracker.swaps`` (``.mean(n_boot=..., level=..., seed=...)``).

One call per training step, wherever the loop is::

    tracker = Tracker(tokens, every=100, out_dir="runs/track")
    for step in range(steps):
        ...                                   # the optimiser step
        tracker.step(model, step + 1, metrics={"loss": float(loss)})

Steps off the schedule (``every`` / ``steps``) return at once; ``final=True`` scores a
last step off it. The model is scored in eval mode under ``torch.no_grad`` and its
training flags put back (:func:`~rope_behavior.model.context.evaluating`); no hook
outlives the call; the global random state is not touched. A plain Hugging Face model is
scored through a :class:`~rope_behavior.tracking.mirror.BridgeMirror` (a
TransformerBridge around a copy, its weights copied in at each checkpoint). The toy
trainer takes the tracker as a callback (``train(..., callbacks=[tracker])``);
:func:`~rope_behavior.tracking.callbacks.trainer_callback` makes a
``transformers.TrainerCallback`` of it.

With ``out_dir`` the rows are appended to a folder (:mod:`rope_behavior.tracking.store`)
and a tracker opened on it again skips the steps it holds: a resumed training run resumes
its tracking.
"""

import math
import os
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from rope_behavior.analysis.corpus import concat_scores
from rope_behavior.errors import (
    RopeBehaviorError,
    as_count,
    as_flag,
    as_folder,
    as_fraction,
    as_int,
    as_seed,
    validates_inputs,
)
from rope_behavior.frequency.usage import FrequencyUsage, UsageAccumulator
from rope_behavior.model.context import ModelContext, evaluating, resolve
from rope_behavior.model.devices import fields_to
from rope_behavior.qk.captured import LayerQK, validate_mask, validate_tokens
from rope_behavior.runtime.fingerprint import tensor_digest
from rope_behavior.scoring.geometry import block_geometry, excluded_keys, model_bos
from rope_behavior.scoring.scorer import ScoreSettings, score_checked
from rope_behavior.tracking.rows import checkpoint_rows
from rope_behavior.tracking.store import TrackStore
from rope_behavior.tracking.trajectory import Trajectory

__all__ = ["Tracker"]


class Tracker:
    """Scores heads and frequency usage at chosen training steps (module docstring).

    Args:
        tokens: the prompts ``[prompt, pos]``, scored at every checkpoint (each at its
            last token; with ``attention_mask`` for right-padded prompts).
        every: score every ``every``-th step (step 0 included).
        steps: score these steps (with or instead of ``every``).
        final: also score a step the loop calls final (``step(..., final=True)``).
        out_dir: append the rows to this folder and resume from it (``None``: in memory).
        block_size: keys per block of the swap score.
        n_swaps: ``"auto"`` (every block pair when there are at most 64, else 64 drawn),
            an int (that many drawn) or ``None`` (every pair).
        exclude_keys: keys left out of the rows (:func:`~rope_behavior.score_heads`):
            ``"auto"`` (the BOS the tokenizer prepends), ``"none"``, ``"bos"``, positions.
        batch_size: prompts per forward.
        n_boot: bootstrap draws of the intervals (:meth:`HeadScores.mean`).
        level: the intervals' confidence level.
        seed: draws the swaps and seeds the bootstrap (the same at every step).
        tokenizer: for a plain Hugging Face model: the tokenizer its mirror bridge gets
            (so the BOS key is excluded as for a loaded model).
    """

    @validates_inputs
    def __init__(
        self,
        tokens: Int[Tensor, "prompt pos"],
        *,
        attention_mask: Int[Tensor, "prompt pos"] | None = None,
        every: int | None = None,
        steps: Sequence[int] | None = None,
        final: bool = True,
        out_dir: str | os.PathLike[str] | None = None,
        block_size: int = 8,
        n_swaps: int | str | None = "auto",
        exclude_keys: str | int | Sequence[int | str] = "auto",
        batch_size: int = 32,
        n_boot: int = 200,
        level: float = 0.95,
        seed: int = 0,
        tokenizer: Any = None,
    ) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2:
            raise RopeBehaviorError(
                f"tokens={type(tokens).__name__}; expected a tensor of token ids [prompt, pos]"
            )
        if every is None and steps is None:
            raise RopeBehaviorError(
                "Tracker needs a schedule: every=N (every N-th step, step 0 included) and/or "
                "steps=[...] (those steps)"
            )
        self.every = None if every is None else as_count(every, "every")
        try:
            chosen = sorted({as_int(s, "steps[i]", low=0) for s in (steps or ())})
        except TypeError:
            raise RopeBehaviorError(f"steps={steps!r}; expected a sequence of ints >= 0") from None
        self.steps = tuple(chosen)
        self.final = as_flag(final, "final")
        self.out_dir = as_folder(out_dir, "out_dir")
        self.tokens = tokens.detach().cpu()
        self.attention_mask = None if attention_mask is None else attention_mask.detach().cpu()
        self.settings = ScoreSettings(
            block_size=block_size, n_swaps=n_swaps, exclude_keys=exclude_keys
        )
        self.batch_size = as_count(batch_size, "batch_size")
        self.n_boot = as_count(n_boot, "n_boot", low=2)
        self.level = as_fraction(level, "level", open_low=True, open_high=True, hint="e.g. 0.95")
        self.seed = as_seed(seed)
        self.tokenizer = tokenizer
        self.swaps: tuple[tuple[int, int], ...] | None = None
        self.n_block_pairs = 0
        self._store: TrackStore | None = None
        self._memory: dict[int, tuple[Any, Any, dict[str, Any]]] = {}
        self._mirrors: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------------ schedule

    @validates_inputs
    def due(self, step: int, *, final: bool = False) -> bool:
        """Whether ``step`` is on the schedule (or final) and not stored yet."""
        on = (self.every is not None and step % self.every == 0) or step in self.steps
        return (on or (final and self.final)) and step not in self.stored_steps

    @property
    def stored_steps(self) -> frozenset[int]:
        """The steps scored so far (read from ``out_dir`` when resuming)."""
        if self._store is not None:
            return frozenset(self._store.steps)
        return frozenset(self._memory)

    # --------------------------------------------------------------------- calls

    @validates_inputs
    def step(
        self,
        model: Any,
        step: int,
        *,
        metrics: Mapping[str, float] | None = None,
        final: bool = False,
    ) -> Any:
        """Score ``model`` if ``step`` is due (see :meth:`due`): returns that checkpoint's
        head rows (a DataFrame), else ``None``. ``metrics`` (e.g. ``{"accuracy": 0.93}``)
        are stored with the step. The first call on an ``out_dir`` opens it (resuming)."""
        step = as_int(step, "step", low=0)
        final = as_flag(final, "final")
        if self.swaps is None:
            self._open(self._resolved(model, sync=False))
        if not self.due(step, final=final):
            return None
        return self._score(self._resolved(model, sync=True), step, dict(metrics or {}))

    def __call__(self, info: Any) -> Any:
        """The toy trainer's callback (:class:`~rope_behavior.tasks.training.TrainStep`):
        scores due steps with the held-out accuracy and the step's loss as metrics."""
        if self.swaps is None:
            self._open(self._resolved(info.model, sync=False))
        if not self.due(info.step, final=info.final):
            return None
        metrics = {"accuracy": float(info.eval_accuracy())}
        if info.loss is not None:
            metrics["loss"] = float(info.loss)
        return self.step(info.model, info.step, metrics=metrics, final=info.final)

    def trajectory(self) -> Trajectory:
        """Every stored checkpoint's rows: a :class:`Trajectory`."""
        if self._store is not None:
            return Trajectory(*self._store.frames())
        import pandas as pd

        got = [self._memory[s] for s in sorted(self._memory)]
        if not got:
            return Trajectory.empty()
        heads = pd.concat([g[0] for g in got], ignore_index=True)
        usage = pd.concat([g[1] for g in got], ignore_index=True)
        steps = pd.DataFrame([{"step": s, **self._memory[s][2]} for s in sorted(self._memory)])
        return Trajectory(heads, usage, steps)

    # ------------------------------------------------------------------ internals

    def _resolved(self, model: Any, *, sync: bool) -> ModelContext:
        """The model's context; for a plain Hugging Face model its mirror's (weights copied
        in when ``sync``)."""
        from rope_behavior.tracking.mirror import BridgeMirror, is_plain_hf

        if not is_plain_hf(model):
            return resolve(model)
        mirror = self._mirrors.get(model)
        if mirror is None:
            mirror = self._mirrors[model] = BridgeMirror(model, tokenizer=self.tokenizer)
        return mirror.synced(model) if sync else mirror.context

    def _open(self, context: ModelContext) -> None:
        if self.swaps is not None:
            return
        adapter = context.adapter
        tokens = validate_tokens(self.tokens, adapter).cpu()
        mask = validate_mask(self.attention_mask, tokens)
        excluded = excluded_keys(tokens, self.settings.exclude_keys, model_bos(adapter))
        geo = block_geometry(
            tokens, mask, excluded, self.settings.block_size, "last", None,
            self.settings.n_swaps, torch.Generator().manual_seed(self.seed), "end",
        )  # fmt: skip
        self.swaps = tuple((int(a), int(c)) for a, c in geo.swaps.tolist())
        self.n_block_pairs = geo.n_block_pairs
        if self.out_dir is not None:
            spec = context.spec
            self._store = TrackStore(
                self.out_dir,
                {
                    "format": "rope_behavior.tracking/1",
                    "architecture": spec.architecture,
                    "layers": spec.n_layers,
                    "heads": spec.n_heads,
                    "pairs": spec.n_pairs,
                    "tokens": tensor_digest(self.tokens),
                    "attention_mask": None
                    if self.attention_mask is None
                    else tensor_digest(self.attention_mask),
                    "block_size": self.settings.block_size,
                    "exclude_keys": _jsonable(self.settings.exclude_keys),
                    "swaps": [list(s) for s in self.swaps],
                    "n_boot": self.n_boot,
                    "level": self.level,
                    "seed": self.seed,
                },
            )

    def _score(self, context: ModelContext, step: int, metrics: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        adapter, spec = context.adapter, context.spec
        tokens = validate_tokens(self.tokens, adapter)
        mask = validate_mask(self.attention_mask, tokens)
        settings = ScoreSettings(
            block_size=self.settings.block_size,
            swaps=self.swaps,
            exclude_keys=self.settings.exclude_keys,
        )
        layers = tuple(range(spec.n_layers))
        parts, usages = [], []
        with torch.no_grad(), evaluating(context.model):
            for lo in range(0, tokens.shape[0], self.batch_size):
                t = tokens[lo : lo + self.batch_size]
                m = None if mask is None else mask[lo : lo + self.batch_size]
                acc = UsageAccumulator(spec, m, (t.shape[0], t.shape[1]), t.device)
                scores = score_checked(context, t, m, layers, settings, also=_feeding(acc))
                parts.append(fields_to(scores, "cpu"))
                usages.append(fields_to(acc.result(), "cpu"))
        scores = concat_scores(parts)
        summary = scores.mean(n_boot=self.n_boot, level=self.level, seed=self.seed)
        usage = FrequencyUsage.merge(usages)
        heads, usage_rows = checkpoint_rows(step, summary, usage, self.n_block_pairs)
        seconds = time.perf_counter() - t0
        numbers = {str(k): _number(v) for k, v in metrics.items()}
        if self._store is not None:
            self._store.append(step, heads, usage_rows, {"seconds": seconds, "metrics": numbers})
        else:
            self._memory[step] = (heads, usage_rows, {"seconds": seconds, **numbers})
        return heads

    def __repr__(self) -> str:
        when = ", ".join(
            x
            for x in (
                f"every {self.every}" if self.every is not None else "",
                f"steps {list(self.steps)[:4]}{'...' if len(self.steps) > 4 else ''}"
                if self.steps
                else "",
            )
            if x
        )
        where = f"-> {self.out_dir}" if self.out_dir else "in memory"
        n, p = self.tokens.shape
        return (
            f"Tracker({n} prompts x {p} tokens, {when}; "
            f"{len(self.stored_steps)} steps stored {where})"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int):
        return value
    return [v if isinstance(v, str) else int(v) for v in value]


def _feeding(acc: UsageAccumulator) -> Callable[[LayerQK], None]:
    """The scoring forward's second consumer: frequency usage on the same q and k."""
    return lambda lq: acc.add(lq.layer, lq.rot_q, lq.rot_k)


def _number(value: Any) -> float | None:
    """A metric as JSON takes it: a finite float, or ``None`` (NaN, inf)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RopeBehaviorError(
            f"metrics value {value!r} ({type(value).__name__}); expected a number"
        ) from None
    return x if math.isfinite(x) else None
