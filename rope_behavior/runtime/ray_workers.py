"""What runs on a Ray worker (:class:`Worker`: an actor that builds its model from a
:class:`~rope_behavior.runtime.executors.ModelLoader` and runs jobs on it), and the one
translation of what goes wrong there into the library's errors (:func:`worker_error`):
a :class:`~rope_behavior.errors.RopeBehaviorError` raised on a worker arrives as itself,
anything else as a one-line :class:`WorkerError` ("a Ray worker failed while building its
model: ValueError: ...") chained to the original. Imported by
:mod:`rope_behavior.runtime.ray_cluster` (and by Ray on each worker)."""

import os
import re
from typing import Any

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.runtime.executors import ModelLoader

__all__ = ["Worker", "WorkerError", "failed_build", "one_line", "worker_error"]

_BUILD = "building its model"


class WorkerError(RopeBehaviorError):
    """An error raised on a Ray worker (building its model, setting up the job, computing
    a shard) or a worker that died, in one line: what it was doing, the original type and
    message. The original exception is its ``__cause__`` when it could be sent back. A
    :class:`RopeBehaviorError` raised on a worker arrives as itself instead."""


class _Failed(Exception):
    """What a worker sends back when its code raised: the phase, the original's type and
    one-line message, and the original itself when it survives pickling (else ``None``)."""

    def __init__(self, phase: str, kind: str, message: str, error: Any = None) -> None:
        super().__init__(phase, kind, message, error)
        self.phase, self.kind, self.message, self.error = phase, kind, message, error

    @classmethod
    def of(cls, phase: str, e: BaseException) -> "_Failed":
        import ray

        try:
            ray.cloudpickle.loads(ray.cloudpickle.dumps(e))
            error = e
        except Exception:
            error = None
        return cls(phase, type(e).__name__, one_line(str(e)), error)


def one_line(text: str, limit: int = 500) -> str:
    """``text`` on one line (ANSI colours dropped, whitespace collapsed), at most ``limit``
    characters."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Worker:
    """One Ray actor: a model built from the loader, and per job its set-up state. Its own
    errors come back as :class:`_Failed` (a failed build too: the actor stays up to say
    why, instead of dying with it)."""

    def __init__(self, loader: ModelLoader) -> None:
        import ray
        import torch

        gpus = ray.get_gpu_ids()
        self.device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        self.model: Any = None
        self.failure: _Failed | None = None
        try:
            self.model = loader(self.device)
        except Exception as e:
            self.failure = _Failed.of(_BUILD, e)
        self.key: str | None = None
        self.job: Any = None
        self.state: Any = None

    def pid(self) -> int:
        if self.failure is not None:
            raise self.failure
        return os.getpid()

    def _state(self, key: str, job_ref: list[Any]) -> tuple[Any, Any]:
        import ray

        if self.failure is not None:
            raise self.failure
        if self.key != key:  # a new job (or a restarted worker): fetch and set up once
            self.job, self.state, self.key = None, None, None
            try:
                job = ray.get(job_ref[0])
                state = job.setup(self.model)
            except Exception as e:
                raise _Failed.of("setting up the job", e) from None
            self.state, self.job, self.key = state, job, key
        return self.job, self.state

    def plan(self, key: str, job_ref: list[Any]) -> Any:
        job, state = self._state(key, job_ref)
        try:
            return job.plan(state)
        except Exception as e:
            raise _Failed.of("planning the job", e) from None

    def run(self, key: str, job_ref: list[Any], shard: Any) -> tuple[int, str, Any]:
        job, state = self._state(key, job_ref)
        try:
            return os.getpid(), job.plan(state).digest, job.run(state, shard)
        except Exception as e:
            raise _Failed.of(f"computing shard {shard!r}", e) from None


def worker_error(ray: Any, e: BaseException, doing: str = "running the job") -> BaseException:
    """The one translation of what a worker raised (or Ray raised about it) into the
    library's errors: a :class:`RopeBehaviorError` raised on the worker as itself, anything
    else as a one-line :class:`WorkerError` chained to the original. Other exceptions (not
    Ray's) are returned unchanged."""
    if not isinstance(e, ray.exceptions.RayError):
        return e
    cause = getattr(e, "cause", None) if isinstance(e, ray.exceptions.RayTaskError) else None
    if isinstance(cause, _Failed):
        if isinstance(cause.error, RopeBehaviorError):
            return cause.error
        return _error("failed", cause.phase, cause.kind, cause.message, cause.error)
    if isinstance(cause, RopeBehaviorError):
        return cause
    if isinstance(cause, BaseException):
        kind, message, original = type(cause).__name__, str(cause), cause
    elif isinstance(e, ray.exceptions.RayTaskError) or getattr(e, "actor_init_failed", False):
        # the original is only text here (a traceback): its last line says what it was
        if getattr(e, "actor_init_failed", False):
            doing = _BUILD
        kind, message = _last_line(str(e)) or (type(e).__name__, str(e))
        original = e
    else:
        kind, message, original = type(e).__name__, str(e).strip().split("\n")[0], e
    died = isinstance(e, ray.exceptions.RayActorError | ray.exceptions.WorkerCrashedError)
    return _error("died" if died else "failed", doing, kind, one_line(message), original)


def _error(what: str, doing: str, kind: str, message: str, cause: Any) -> WorkerError:
    said = f"{kind}: {message}" if message else f"{kind} (no message)"
    error = WorkerError(f"a Ray worker {what} while {doing}: {said}")
    error.__cause__ = cause
    return error


def _last_line(text: str) -> tuple[str, str] | None:
    """``(type, message)`` from a traceback's last line ``pkg.Type: message``, if it is one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = re.fullmatch(r"([A-Za-z_][\w.]*)(?::\s*(.*))?", lines[-1]) if lines else None
    kind = match.group(1).rsplit(".", 1)[-1] if match else ""
    return (kind, match.group(2) or "") if match and kind[:1].isupper() else None


def failed_build(e: BaseException) -> bool:
    """Whether ``e`` (from ``ray.get``) says a worker could not build its model."""
    cause = getattr(e, "cause", None)
    return getattr(e, "actor_init_failed", False) or (
        isinstance(cause, _Failed) and cause.phase == _BUILD
    )
