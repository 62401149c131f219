"""Sweeps and corpus scoring sharded over Ray workers (the optional extra
``pip install 'rope_behavior[ray]'``).

    from rope_behavior.runtime.ray_cluster import ModelLoader, RayExecutor, score_corpus
    loader = ModelLoader("meta-llama/Llama-3.2-1B", dtype=torch.bfloat16)
    with RayExecutor() as ex:                  # a local cluster, or address="auto" / "ray://..."
        result = rb.frequency_patching_sweep(loader, clean, corrupted, metric, bands=4,
                                             executor=ex, out_dir="runs/sweep")
        corpus = score_corpus(loader, tokens, attention_mask=mask, executor=ex)

Each worker is a Ray actor that builds its own model from the :class:`ModelLoader` (a
model is never pickled) and places itself on one GPU when the cluster has GPUs
(``num_gpus=1``), otherwise on one CPU. The first worker's plan (its model's fingerprint
included) is what the driver dispatches; every worker checks that its own plan agrees, so
a loader that builds different weights on different workers is refused, not averaged.
Results come back to the driver, which writes each finished shard to the same resumable
store a local sweep uses (one file per shard, atomically; workers need no shared disk)
and merges them in a fixed order: the result equals the in-process one (0.0 difference
on CPU). A worker that dies is restarted (its model rebuilt) and the shard it was
computing sent again; a killed driver resumes from ``out_dir`` without recomputing
finished shards. ``stats`` counts shards computed, resumed and lost.

Whatever goes wrong on a worker arrives as the library's own error, in one line
(:mod:`rope_behavior.runtime.ray_workers`): a :class:`RopeBehaviorError` raised there as
itself, anything else as a :class:`WorkerError` ("a Ray worker failed while building its
model: ValueError: ...") chained to the original. Workers that could not build their model
are stopped; after any other failure the shards still queued are cancelled.
"""

import contextlib
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rope_behavior.analysis.corpus import score_corpus
from rope_behavior.errors import RopeBehaviorError, validates_inputs
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.runtime.executors import (
    LocalExecutor,
    ModelLoader,
    RunStats,
    ShardProgress,
    check_job,
    check_progress,
)
from rope_behavior.runtime.ray_workers import (
    Worker,
    WorkerError,
    failed_build,
    one_line,
    worker_error,
)

__all__ = [
    "LocalExecutor",
    "ModelLoader",
    "RayExecutor",
    "RunStats",
    "WorkerError",
    "frequency_patching_sweep",
    "score_corpus",
]

INSTALL_HINT = "pip install 'rope_behavior[ray]' (or pip install 'ray>=2.9')"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RopeBehaviorError(
            f"RayExecutor needs Ray, which is not installed: {INSTALL_HINT}"
        ) from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address where nothing accepts connections (``ray.init`` would
    retry for minutes, then exit the process). ``"auto"`` is Ray's own, quick, search."""
    import socket

    where = address.removeprefix("ray://")
    if address == "auto" or ":" not in where:
        return
    host, _, port = where.rpartition(":")
    if not port.isdigit():
        raise RopeBehaviorError(
            f"address={address!r}; expected 'auto', 'host:port' or 'ray://host:port'"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return
    except OSError as e:
        raise RopeBehaviorError(
            f"cannot join Ray at {address}: nothing accepts connections there "
            f"({e.strerror or e}); start the cluster (ray start --head) or check the address"
        ) from None


def _count(x: Any, least: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= least


def _wait_for_resources(
    ray: Any, n: int, cpus: float | int, gpus: float | int, wait_s: float | int = 30
) -> None:
    """Refuse at once (after ``wait_s`` for resources still being released) when the
    cluster cannot place ``n`` workers, instead of waiting for them forever."""
    import time

    need = {"CPU": n * cpus, "GPU": n * gpus}
    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        short = {k: v for k, v in need.items() if v > free.get(k, 0) + 1e-9}
        if not short:
            return
        if time.monotonic() > deadline:
            total = ray.cluster_resources()
            have = ", ".join(
                f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}s free" for k in need if need[k]
            )
            raise RopeBehaviorError(
                f"{n} workers need {need['CPU']:g} CPUs and {need['GPU']:g} GPUs but the Ray "
                f"cluster has {have}; ask for fewer (num_workers=...), smaller workers "
                "(cpus_per_worker / gpus_per_worker), or free the cluster"
            )
        time.sleep(0.5)


@validates_inputs
@dataclass
class RayExecutor:
    """Runs a job's shards on Ray workers (see the module docstring).

    Args:
        num_workers: workers to start (default: one per GPU of the cluster, or one per CPU
            when it has none).
        address: the cluster (``None``: join the one this process is connected to, or
            start a local one; ``"auto"``: the running cluster on this machine;
            ``"ray://host:10001"``: a remote one).
        gpus_per_worker: GPUs each worker asks for (default: 1 when the cluster has
            GPUs, else 0).
        cpus_per_worker: CPUs each worker asks for (default: 1).
        progress: a progress bar over shards on the driver (``True``), none (``False``),
            or a function ``progress(done, total)``.
        max_restarts: how often a dead worker is restarted (its model rebuilt), and how
            often a shard is sent again after its worker died, before the run fails.
        init_kwargs: passed to ``ray.init`` when this executor starts a local cluster (or
            connects to ``address``).

    Workers stay up between runs with the same loader (use the executor as a context
    manager, or call :meth:`shutdown`, to stop them and a cluster it started). An error
    on a worker arrives as a :class:`RopeBehaviorError` (see :class:`WorkerError`).
    """

    num_workers: int | None = None
    address: str | None = None
    gpus_per_worker: float | int | None = None
    cpus_per_worker: float | int = 1
    progress: bool | Callable[[int, int], None] = True
    max_restarts: int = 3
    init_kwargs: dict[str, Any] = field(default_factory=dict)
    stats: RunStats = field(default_factory=RunStats, repr=False)

    def __post_init__(self) -> None:
        _ray()

        def number(x: Any) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        checks = [
            ("num_workers", self.num_workers is None or _count(self.num_workers, 1), "an int >= 1 or None"),
            ("address", self.address is None or isinstance(self.address, str), "None, 'auto' or 'ray://host:port'"),
            ("gpus_per_worker", self.gpus_per_worker is None or (number(self.gpus_per_worker) and self.gpus_per_worker >= 0), "a number >= 0 or None"),
            ("cpus_per_worker", number(self.cpus_per_worker) and self.cpus_per_worker > 0, "a number > 0"),
            ("max_restarts", _count(self.max_restarts, 0), "an int >= 0"),
            ("init_kwargs", isinstance(self.init_kwargs, dict), "a dict of ray.init arguments"),
        ]  # fmt: skip
        for name, ok, expected in checks:
            if not ok:
                raise RopeBehaviorError(f"{name}={getattr(self, name)!r}; expected {expected}")
        check_progress(self.progress)
        self._started = False  # this executor called ray.init: shutdown() undoes it
        self._pool: tuple[bytes, list[Any]] | None = None

    # -- cluster and workers -----------------------------------------------------------

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False}
            if self.address is None:
                kwargs["include_dashboard"] = False
            else:
                kwargs["address"] = self.address
                _check_reachable(self.address)
            try:
                ray.init(**{**kwargs, **self.init_kwargs})
            except (Exception, SystemExit) as e:  # no cluster there, an argument ray refuses
                if ray.is_initialized():  # half started: leave nothing behind
                    ray.shutdown()
                where = self.address or "a local cluster"
                raise RopeBehaviorError(
                    f"cannot start or join Ray at {where}: {type(e).__name__}: "
                    f"{one_line(str(e).strip().split(chr(10))[0], 300)}"
                ) from e
            self._started = True
        return ray

    def _workers(self, ray: Any, loader: ModelLoader) -> list[Any]:
        try:
            blob = ray.cloudpickle.dumps(loader)
        except Exception as e:
            raise RopeBehaviorError(
                f"{loader!r} cannot be sent to workers ({type(e).__name__}: {e})"
            ) from None
        if self._pool is not None and self._pool[0] == blob:
            return self._pool[1]
        self._kill_workers(ray)
        resources = ray.cluster_resources()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        n = self.num_workers
        if n is None:
            n = (
                int(resources.get("GPU", 0) // gpus)
                if gpus
                else int(resources.get("CPU", 1) // self.cpus_per_worker)
            )
        n = max(1, n)
        _wait_for_resources(ray, n, self.cpus_per_worker, gpus)
        cls = ray.remote(Worker).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=gpus,
            max_restarts=self.max_restarts,
            max_task_retries=0,
        )
        workers = [cls.remote(loader) for _ in range(n)]
        self._pool = (blob, workers)
        return workers

    def _kill_workers(self, ray: Any) -> None:
        if self._pool is not None:
            for w in self._pool[1]:
                ray.kill(w)
            self._pool = None

    def stop_workers(self) -> None:
        """Stop the workers (the next run starts new ones); the cluster stays up."""
        if self._pool is not None:
            self._kill_workers(_ray())

    def worker_pids(self) -> list[int]:
        """The process id of each running worker (to watch them, or kill one in a test)."""
        ray = _ray()
        if self._pool is None:
            return []
        try:
            return [int(p) for p in ray.get([w.pid.remote() for w in self._pool[1]])]
        except ray.exceptions.RayError as e:
            error = worker_error(ray, e, "reporting its process id")
            raise error from error.__cause__

    def shutdown(self) -> None:
        """Stop the workers, and the local cluster when this executor started it (or its
        connection to a cluster it joined; a cluster this process was already connected
        to is left as it was)."""
        if self._pool is None and not self._started:
            return
        ray = _ray()
        self._kill_workers(ray)
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- one job -------------------------------------------------------------------------

    @validates_inputs
    def run_job(
        self,
        model: Any,
        job: Any,
        select: Callable[[Any], Sequence[Any]],
        on_result: Callable[[Any, Any], None],
        *,
        desc: str = "",
    ) -> Any:
        if not isinstance(model, ModelLoader):
            raise RopeBehaviorError(
                f"RayExecutor builds the model on each worker: pass a ModelLoader (e.g. "
                f"ModelLoader('org/model') or ModelLoader(build_fn, ...)) instead of a "
                f"{type(model).__name__}; a model is never pickled"
            )
        check_job(job)
        ray = self._connect()
        workers = self._workers(ray, model)
        self.stats = RunStats(workers=len(workers))
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (shard index, worker index)
        try:
            return self._dispatch(ray, workers, job, select, on_result, desc, inflight)
        except BaseException as e:
            self._clean_up(ray, e, inflight)
            error = worker_error(ray, e)
            if error is e:
                raise
            raise error from error.__cause__

    def _clean_up(self, ray: Any, e: BaseException, inflight: dict[Any, Any]) -> None:
        """After a failed run: stop the workers when one could not build its model or died
        (the next run starts new ones); otherwise cancel the shards still queued on them
        (one already running finishes; its result is dropped)."""
        if isinstance(e, ray.exceptions.RayActorError) or failed_build(e):
            self._kill_workers(ray)
            return
        for ref in inflight:
            with contextlib.suppress(Exception):  # finished already, or its worker gone
                ray.cancel(ref)

    def _dispatch(
        self,
        ray: Any,
        workers: list[Any],
        job: Any,
        select: Callable[[Any], Sequence[Any]],
        on_result: Callable[[Any, Any], None],
        desc: str,
        inflight: dict[Any, tuple[int, int]],
    ) -> Any:
        try:
            key, job_ref = uuid.uuid4().hex, [ray.put(job)]
        except Exception as e:
            raise RopeBehaviorError(
                f"the job cannot be sent to workers ({type(e).__name__}: "
                f"{one_line(str(e).strip().split(chr(10))[0], 300)}); what it holds (the "
                "metric, its inputs) must pickle with cloudpickle"
            ) from e
        plan = ray.get(workers[0].plan.remote(key, job_ref))
        todo = list(select(plan))
        self.stats.shards = len(plan.shards)
        self.stats.resumed = len(plan.shards) - len(todo)
        pids = [{p} for p in self.worker_pids()]
        attempts: dict[int, int] = {}
        queue = list(range(len(todo)))[::-1]  # shard indices still to send, next at the end

        def send(wi: int) -> None:
            if queue:
                si = queue.pop()
                method = workers[wi].run
                if attempts.get(si):  # after a worker died: wait for its restart
                    method = method.options(max_task_retries=-1)
                inflight[method.remote(key, job_ref, todo[si])] = (si, wi)

        for wi in range(len(workers)):
            for _ in range(2):  # two in flight per worker: no idle gap between shards
                send(wi)
        with ShardProgress(self.progress, len(todo), desc) as bar:
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                si, wi = inflight.pop(ready[0])
                try:
                    pid, digest, result = ray.get(ready[0])
                except ray.exceptions.RayActorError:
                    self.stats.lost += 1
                    attempts[si] = attempts.get(si, 0) + 1
                    if attempts[si] > self.max_restarts:
                        self._kill_workers(ray)
                        raise WorkerError(
                            f"a worker died {attempts[si]} times computing shard {todo[si]!r}; "
                            "giving up (see the Ray logs for why: out of memory?)"
                        ) from None
                    queue.append(si)
                    send(wi)
                    continue
                if digest != plan.digest:
                    raise RopeBehaviorError(
                        "workers disagree on the plan: worker "
                        f"{wi} built a model (or read inputs) that differs from worker 0's; the "
                        "loader must build the same weights every time (seed random "
                        "initialisation, pin the revision)"
                    )
                pids[wi].add(pid)
                on_result(todo[si], result)
                self.stats.computed += 1
                bar.update()
                send(wi)
        self.stats.restarts = sum(max(0, len(p) - 1) for p in pids)
        return plan
