"""Where sharded work runs: in this process (:class:`LocalExecutor`), or on Ray workers
(:class:`rope_behavior.runtime.ray_cluster.RayExecutor`), and how a worker builds its own model
(:class:`ModelLoader`: a small picklable recipe; a model is never sent anywhere).

A sharded computation (a patching sweep, a corpus of prompts to score) is a *job* with
three methods, run where the model is:

* ``job.setup(model) -> state``: validate, plan, and record whatever every shard reuses
  (a worker does this once, lazily, and again after a restart);
* ``job.plan(state) -> plan``: what the driver needs before dispatching (the shard list,
  the store's description, baselines); every worker's plan must agree (``plan.digest``);
* ``job.run(state, shard) -> result``.

An executor runs ``setup`` + ``plan`` once to hand the driver the plan, lets the driver
choose the shards still to compute (``select``; finished ones come from its store), then
runs them and hands each result to ``on_result`` on the driver, in the order they finish.
"""

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.runtime.progress import progress_bar
from rope_behavior.runtime.sources import HUB_FORM, boot_folder, boot_hub_model, model_source

__all__ = [
    "Executor",
    "Job",
    "LocalExecutor",
    "ModelLoader",
    "RunStats",
    "call_with_model",
]


@runtime_checkable
class Job(Protocol):
    def setup(self, model: Any) -> Any: ...
    def plan(self, state: Any) -> Any: ...
    def run(self, state: Any, shard: Any) -> Any: ...


@dataclass
class RunStats:
    """What the last run of an executor did: shards in the plan, shards the driver
    already had (``resumed``: from its store), shards computed and handed back (each
    finished shard exactly once), and shard computations lost with a worker that died
    (``lost``; they were sent again) and the workers restarted."""

    shards: int = 0
    resumed: int = 0
    computed: int = 0
    lost: int = 0
    restarts: int = 0
    workers: int = 0


@runtime_checkable
class Executor(Protocol):
    stats: RunStats

    def run_job(
        self,
        model: Any,
        job: Job,
        select: Callable[[Any], Sequence[Any]],
        on_result: Callable[[Any, Any], None],
        *,
        desc: str = "",
    ) -> Any: ...


def _is_model(x: Any) -> bool:
    return isinstance(x, torch.nn.Module)


def _carried(source: Any) -> list[Any]:
    """What a callable carries along (a bound method's object, a partial's arguments)."""
    if isinstance(source, functools.partial):
        return [*source.args, *source.keywords.values(), *_carried(source.func)]
    owner = getattr(source, "__self__", None)
    return [] if owner is None or isinstance(owner, type) else [owner]


@validates_inputs
@dataclass(frozen=True)
class ModelLoader:
    """A recipe a worker follows to build its own model: ``ModelLoader(source, *args,
    **kwargs)``.

    * ``source`` a str (or path): a local folder or a hub name (see :func:`model_source`),
      loaded with ``TransformerBridge.boot_transformers(source, device=..., **kwargs)``
      (e.g. ``dtype=torch.bfloat16``, ``n_devices=2``);
    * ``source`` a function (importable, e.g. defined in a module, or a closure that
      cloudpickle can carry): called as ``source(*args, **kwargs)``, with ``device=`` added
      when it takes a ``device`` parameter and none was given; otherwise the model it
      returns is moved to the worker's device.

    The arguments are checked against the source's signature here, at once. Calling the
    loader (``loader(device)``) builds the model in eval mode. ``device=None`` keeps the
    source's own choice. It must build the same weights every time (seed random
    initialisation): workers check that their models agree.
    """

    source: str | Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @validates_inputs
    def __init__(
        self, source: str | os.PathLike[str] | Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        carried = [type(v).__name__ for v in _carried(source) if _is_model(v)]
        if _is_model(source) or carried:
            what = type(source).__name__ + (f" carrying a {carried[0]}" if carried else "")
            raise RopeBehaviorError(
                "ModelLoader takes how to build a model (a hub name, a folder, or a function "
                f"that returns one), not a model ({what}): workers build their own, a model "
                "is never pickled"
            )
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if not (isinstance(source, str) or callable(source)):
            raise RopeBehaviorError(
                f"ModelLoader source={source!r} of type {type(source).__name__}; expected a "
                "hub name or folder (str or path) or a function returning a model"
            )
        if isinstance(source, str) and not source.strip():
            raise RopeBehaviorError(
                f"ModelLoader source={source!r} is empty; expected a local model folder or a "
                f"hub name ({HUB_FORM})"
            )
        for value in (*args, *kwargs.values()):
            if _is_model(value):
                raise RopeBehaviorError(
                    f"ModelLoader argument of type {type(value).__name__} is a model; pass "
                    "what builds it instead (a model is never pickled)"
                )
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "kwargs", dict(kwargs))
        self._check_signature()

    def _check_signature(self) -> None:
        """Refuse arguments the source cannot take now, not on every worker later."""
        if isinstance(self.source, str):
            from transformer_lens.model_bridge import TransformerBridge

            fn: Any = TransformerBridge.boot_transformers
            args: tuple[Any, ...] = (self.source, *self.args)
        else:
            fn, args = self.source, self.args
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without a signature: not checked
            return
        try:
            sig.bind(*args, **self.kwargs)
        except TypeError as e:
            name = "TransformerBridge.boot_transformers" if fn is not self.source else None
            params = ", ".join(_param(p) for p in sig.parameters.values())
            raise RopeBehaviorError(
                f"{self!r}: the arguments do not fit {name or _qualname(fn)}({params}) ({e})"
            ) from None

    def __call__(self, device: str | torch.device | None = None) -> Any:
        kwargs = dict(self.kwargs)
        if isinstance(self.source, str):
            if device is not None:
                kwargs.setdefault("device", str(device))
            source = model_source(self.source)
            if isinstance(source, Path):
                model = boot_folder(source, *self.args, **kwargs)
            else:
                model = boot_hub_model(source, *self.args, **kwargs)
        else:
            takes_device = _takes(self.source, "device")
            if takes_device and device is not None:
                kwargs.setdefault("device", str(device))
            model = self.source(*self.args, **kwargs)
            if not takes_device and device is not None and _is_model(model):
                model = model.to(device)
        if model is None or not hasattr(model, "eval"):
            raise RopeBehaviorError(
                f"ModelLoader {self!r} returned {type(model).__name__}, not a model"
            )
        return model.eval()

    def __hash__(self) -> int:  # kwargs is a dict: hash what is hashable
        return hash((self.source, len(self.args), tuple(sorted(self.kwargs))))

    def __repr__(self) -> str:
        name = self.source if isinstance(self.source, str) else _qualname(self.source)
        parts = [repr(name), *map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())]
        return f"ModelLoader({', '.join(parts)})"


def _param(p: inspect.Parameter) -> str:
    prefix = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
    return prefix + p.name + ("=..." if p.default is not p.empty else "")


def _qualname(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _takes(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def crosses_processes(executor: Any, out_dir: Any) -> bool:
    """Whether a job's results leave this process (a store on disk, or workers elsewhere):
    then its plan carries the model's content fingerprint (0.4 s per 100 M parameters),
    which is skipped for a run that stays here."""
    return out_dir is not None or (executor is not None and not isinstance(executor, LocalExecutor))


def resolve_model(model: Any) -> Any:
    """The model itself, or the one a :class:`ModelLoader` builds (in this process)."""
    return model() if isinstance(model, ModelLoader) else model


def check_progress(progress: Any) -> Any:
    """``progress`` as executors take it: ``True`` / ``False`` / ``None`` or a function
    ``progress(done, total)``."""
    if progress is None or isinstance(progress, bool) or callable(progress):
        return progress
    raise RopeBehaviorError(
        f"progress={progress!r}; expected True, False or a function (done, total)"
    )


def check_executor(executor: Any) -> Any:
    """``executor`` when it is one (or ``None``: here), else an error naming the options."""
    if executor is None or (
        not isinstance(executor, type) and callable(getattr(executor, "run_job", None))
    ):
        return executor
    raise RopeBehaviorError(
        f"executor={executor!r}; expected None (run here), LocalExecutor(...) or "
        "RayExecutor(...) (an instance, with a run_job method)"
    )


def check_job(job: Any) -> None:
    if isinstance(job, type) or not isinstance(job, Job):
        raise RopeBehaviorError(
            f"job {job!r} is not a job: expected an object with setup(model), plan(state) "
            "and run(state, shard)"
        )


@validates_inputs
@dataclass
class LocalExecutor:
    """Runs every shard here, one after another, on the model given (or built by its
    :class:`ModelLoader`). What the library's functions use when no executor is given.

    ``progress``: ``True`` for a progress bar over shards, or a function called as
    ``progress(done, total)`` after each shard.
    """

    progress: bool | Callable[[int, int], None] = False
    stats: RunStats = dataclasses.field(default_factory=RunStats, repr=False)

    def __post_init__(self) -> None:
        check_progress(self.progress)

    @validates_inputs
    def run_job(
        self,
        model: Any,
        job: Job,
        select: Callable[[Any], Sequence[Any]],
        on_result: Callable[[Any, Any], None],
        *,
        desc: str = "",
    ) -> Any:
        check_job(job)
        self.stats = RunStats(workers=1)
        state = job.setup(resolve_model(model))
        plan = job.plan(state)
        todo = list(select(plan))
        self.stats.shards = len(plan.shards)
        self.stats.resumed = len(plan.shards) - len(todo)
        with ShardProgress(self.progress, len(todo), desc) as bar:
            for shard in todo:
                on_result(shard, job.run(state, shard))
                self.stats.computed += 1
                bar.update()
        return plan


class ShardProgress:
    """A tqdm bar over shards (``progress=True``), a callback, or nothing."""

    def __init__(self, progress: Any, total: int, desc: str) -> None:
        self.total, self.done, self.bar, self.fn = total, 0, None, None
        if progress is True and total > 0:
            self.bar = progress_bar(total=total, desc=desc or "shards", unit="shard", leave=False)
        elif callable(progress):
            self.fn = progress
        else:
            check_progress(progress)

    def __enter__(self) -> "ShardProgress":
        return self

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.fn is not None:
            self.fn(self.done, self.total)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass(frozen=True)
class _Value:
    value: Any
    shards: tuple[Any, ...] = ()


@dataclass(frozen=True)
class _CallJob:
    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def setup(self, model: Any) -> _Value:
        return _Value(self.fn(model, *self.args))

    def plan(self, state: _Value) -> _Value:
        return state

    def run(self, state: Any, shard: Any) -> Any:
        raise RopeBehaviorError("a call runs no shards")


@validates_inputs
def call_with_model(executor: Any, model: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(model, *args)`` where the executor's model is: here (``executor=None`` or a
    :class:`LocalExecutor`), or on a worker (which builds it from the :class:`ModelLoader`
    ``model``; the workers stay up for the next run). ``fn`` must return what the driver
    can unpickle (CPU tensors)."""
    executor = check_executor(executor) or LocalExecutor()
    if not callable(fn):
        raise RopeBehaviorError(f"fn={fn!r} is not a function; expected fn(model, *args)")
    return executor.run_job(model, _CallJob(fn, args), lambda plan: [], lambda s, r: None).value
