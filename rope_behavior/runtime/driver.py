"""The one skeleton every sharded computation runs on (the patching sweep, corpus scoring).

A job is set up where the model is (``job.setup(model)``), plans its shards, and computes
one shard at a time (``job.run(state, shard)``); an executor runs them here or on workers.
:func:`run_sharded` is the driver around it: it takes the resumable store's lock before the
model runs, describes the store once the plan exists (refusing a folder of another
computation), reads back what a previous run finished, hands the executor only the shards
still to do, writes each result as it arrives, and marks the store finished.
"""

import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from rope_behavior.errors import validates_inputs
from rope_behavior.runtime.executors import LocalExecutor, check_executor
from rope_behavior.runtime.store import SweepStore

__all__ = ["Resumable", "run_sharded"]


@runtime_checkable
class Resumable(Protocol):
    """What a computation tells the driver about its results.

    ``restore(store)``: read back finished results; ``pending(plan)``: the shards still to
    run; ``keep(shard, result)``: hold a result (here); ``save(store, shard, result)``: write
    it (with a store); ``summary(plan)``: what :meth:`SweepStore.finish` records.
    """

    def restore(self, store: SweepStore) -> None: ...

    def pending(self, plan: Any) -> list[Any]: ...

    def keep(self, shard: Any, result: Any) -> None: ...

    def save(self, store: SweepStore, shard: Any, result: Any) -> None: ...

    def summary(self, plan: Any) -> dict[str, Any]: ...


@validates_inputs
def run_sharded(
    model: Any,
    job: Any,
    results: Resumable,
    *,
    executor: Any = None,
    out_dir: str | os.PathLike[str] | None = None,
    progress: bool | Callable[[int, int], None] = False,
    desc: str = "shards",
) -> Any:
    """Run ``job``'s shards on ``executor`` (default: here, with ``progress``), resuming
    from and writing to the store in ``out_dir`` when given; return the job's plan."""
    run = check_executor(executor) or LocalExecutor(progress=progress)
    with contextlib.ExitStack() as stack:  # the store's lock is released however we leave
        store = stack.enter_context(SweepStore(out_dir)) if out_dir is not None else None

        def select(plan: Any) -> list[Any]:
            if store is not None:  # locked from the start; described once the model has run
                store.describe(plan.description)
                results.restore(store)
            return results.pending(plan)

        def on_result(shard: Any, result: Any) -> None:
            results.keep(shard, result)
            if store is not None:
                results.save(store, shard, result)

        plan = run.run_job(model, job, select, on_result, desc=desc)
        if store is not None:
            store.finish(results.summary(plan))
    return plan
