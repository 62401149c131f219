"""The tracker as a ``transformers.TrainerCallback`` (transformers imported when one is made).

:func:`trainer_callback` returns a callback that scores the model at the start of training
(step 0) and after every optimiser step the tracker's schedule names, the last one
included, on the main process only. The Trainer logs and evaluates a step after
``on_step_end``, so a due step is scored when the next step begins (before its first
forward: the weights are still that step's) or when training ends, and the numbers logged
at that step (``loss``, ``eval_*``, from ``state.log_history``) are stored with it.
"""

import math
from typing import Any

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.tracking.tracker import Tracker

__all__ = ["trainer_callback"]


def _metrics(state: Any, step: int) -> dict[str, float]:
    """The numbers logged at ``step`` (loss, eval_*, ...)."""
    out: dict[str, float] = {}
    for entry in getattr(state, "log_history", None) or ():
        if entry.get("step") != step:
            continue
        for k, v in entry.items():
            if k not in ("step", "epoch") and isinstance(v, int | float) and math.isfinite(v):
                out[k] = float(v)
    return out


@validates_inputs
def trainer_callback(tracker: Tracker) -> Any:
    """A ``transformers.TrainerCallback`` that runs ``tracker`` during ``Trainer.train``."""
    if not isinstance(tracker, Tracker):
        raise RopeBehaviorError(
            f"tracker={type(tracker).__name__}; expected a rope_behavior.tracking.Tracker"
        )
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):  # type: ignore[misc]
        """Scores heads at the tracker's steps (rope_behavior.tracking)."""

        def __init__(self) -> None:
            self.tracker = tracker
            self.pending: tuple[int, bool] | None = None

        def _flush(self, state: Any, model: Any) -> None:
            if self.pending is None or model is None:
                return
            step, final = self.pending
            self.pending = None
            self.tracker.step(model, step, metrics=_metrics(state, step), final=final)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if getattr(state, "is_world_process_zero", True) and kw.get("model") is not None:
                step = int(state.global_step)  # 0, or the step a resumed run starts from
                self.tracker.step(kw["model"], step, metrics=_metrics(state, step))

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self._flush(state, kw.get("model"))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = int(state.global_step)
            last = bool(state.max_steps) and step >= state.max_steps
            if getattr(state, "is_world_process_zero", True) and self.tracker.due(step, final=last):
                self.pending = (step, last)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            model = kw.get("model")
            if not getattr(state, "is_world_process_zero", True) or model is None:
                return
            self._flush(state, model)
            step = int(state.global_step)
            self.tracker.step(model, step, metrics=_metrics(state, step), final=True)

        def __repr__(self) -> str:
            return f"TrackerCallback({self.tracker!r})"

    return TrackerCallback()
