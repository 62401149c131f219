"""The canonical-task experiment: task x frequency setting x seed.

Every run trains a fresh toy model (:func:`~rope_behavior.tasks.toy.toy_model`, seeded
with the run's seed) on one task under one :class:`~rope_behavior.tasks.settings.
FrequencySetting` and scores it, under the same setting, on fresh prompts: overall
accuracy on ``n_eval`` prompts and accuracy at every answer position on
``n_per_position`` prompts each. Evaluation prompts come from a generator seeded with
``seed + 2_000_003`` (training data use ``seed`` and the early-stop batch
``seed + 1_000_003``).

Settings (default): ``pair:<i>`` for every pair (quick: pairs ``0``, ``n_pairs // 2``
and ``n_pairs - 1``), ``all``, ``nope`` and ``two_angle:0.1`` — half the pairs at angle
0 (content), half at 0.1 rad/token (a recency signal that rotates 1.6 rad over the
16-token context, so it orders positions without wrapping), the value the prototype
used.

Positional-symbolic plane: for every task, the model trained under ``all`` with the
first seed is scored by :func:`rope_behavior.tasks.plane.plane_scores` on ``n_plane``
fresh prompts (keys mode, single-token blocks, every swap; see there).

Files written to ``out_dir``: ``results.csv`` (``task, setting, pair, seed, accuracy,
train_accuracy, steps, stopped_early, seconds, final_loss``), ``by_position.csv``
(``task, setting, seed, answer_position, accuracy``) and ``plane.csv`` (``task,
setting, seed, layer, head, s_pos, s_sym, identifiable_fraction, identifiable,
answer_attention``). ``out_dir`` is created and probed with a test write before any
training, so an unwritable folder fails at once rather than after the runs. Figures are
drawn from these by the command line (``rope-behavior tasks``), since plots sit above
tasks in the package's one-way import graph.
"""

import concurrent.futures as cf
import multiprocessing
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from os import PathLike
from pathlib import Path
from typing import Any

import torch

from rope_behavior.errors import RopeBehaviorError
from rope_behavior.tasks.batch import Task
from rope_behavior.tasks.generators import IndexTask, PartialInductionTask, RetrievalTask
from rope_behavior.tasks.plane import plane_scores
from rope_behavior.tasks.records import (
    ExperimentResult,
    RunRecord,
    frames_of,
    write_frames,
)
from rope_behavior.tasks.settings import parse_setting, sweep_settings
from rope_behavior.tasks.toy import toy_model
from rope_behavior.tasks.training import (
    TrainConfig,
    accuracy_by_answer_position,
    evaluate,
    train,
)

__all__ = [
    "DEFAULT_THETA",
    "ExperimentResult",
    "RunRecord",
    "default_tasks",
    "run_experiment",
    "run_one",
]

DEFAULT_THETA = 0.1  # radians per token for two_angle
_EVAL_SEED_OFFSET = 2_000_003


def default_tasks() -> dict[str, IndexTask | RetrievalTask | PartialInductionTask]:
    """The three canonical tasks with their defaults (16 context tokens + 1 query)."""
    return {
        "index": IndexTask(),
        "retrieval": RetrievalTask(),
        "partial_induction": PartialInductionTask(),
    }


@dataclass(frozen=True)
class _Job:
    task_name: str
    task: Task
    setting: str
    seed: int
    config: TrainConfig
    model_options: Mapping[str, Any]
    n_eval: int
    n_per_position: int
    n_plane: int
    threads: int


def run_one(
    task_name: str,
    task: Task,
    setting: str,
    seed: int,
    config: TrainConfig,
    *,
    model_options: Mapping[str, Any] | None = None,
    n_eval: int = 2048,
    n_per_position: int = 256,
    n_plane: int = 0,
) -> RunRecord:
    """Train one model on ``task`` under ``setting`` with ``seed`` and evaluate it."""
    model = toy_model(task, seed=seed, **dict(model_options or {}))
    freq = parse_setting(setting, model.cfg.n_pairs)
    result = train(model, task, replace(config, seed=seed), fwd_hooks=freq.hooks)
    device = config.device
    gen = torch.Generator(device=device).manual_seed(seed + _EVAL_SEED_OFFSET)
    model.eval()
    accuracy = evaluate(model, task, n_eval, gen, fwd_hooks=freq.hooks)
    by_position = accuracy_by_answer_position(
        model, task, n_per_position, gen, fwd_hooks=freq.hooks
    )
    plane: tuple[dict[str, Any], ...] = ()
    if n_plane:
        plane = tuple(
            plane_scores(model, task, gen, n_prompts=n_plane, fwd_hooks=freq.hooks(model))
        )
    return RunRecord(
        task=task_name,
        setting=setting,
        seed=seed,
        accuracy=accuracy,
        train_accuracy=result.final_accuracy,
        steps=result.steps,
        stopped_early=result.stopped_early,
        seconds=result.seconds,
        final_loss=result.losses[-1],
        by_position=by_position,
        plane=plane,
    )


def _run_job(job: _Job) -> RunRecord:
    torch.set_num_threads(job.threads)
    return run_one(
        job.task_name,
        job.task,
        job.setting,
        job.seed,
        job.config,
        model_options=job.model_options,
        n_eval=job.n_eval,
        n_per_position=job.n_per_position,
        n_plane=job.n_plane,
    )


def _tasks(tasks: Any) -> dict[str, Task]:
    known: dict[str, Any] = dict(default_tasks())
    if tasks is None:
        return known
    if isinstance(tasks, Mapping):
        items = dict(tasks)
    else:
        if isinstance(tasks, str):
            tasks = [tasks]
        items = {}
        for t in tasks:
            if isinstance(t, str):
                if t not in known:
                    raise RopeBehaviorError(
                        f"unknown task {t!r}; options: {', '.join(known)} (or pass task objects)."
                    )
                items[t] = known[t]
            elif isinstance(t, Task):
                items[t.kind] = t
            else:
                raise RopeBehaviorError(f"tasks holds {t!r}; expected task names or task objects.")
    if not items:
        raise RopeBehaviorError("tasks is empty; options: " + ", ".join(known) + ".")
    for name, t in items.items():
        if not isinstance(t, Task):
            raise RopeBehaviorError(f"tasks[{name!r}] = {t!r} is not a task.")
    return items


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise RopeBehaviorError(f"seeds={seeds}; expected a count >= 1 or a list of seeds.")
        return tuple(range(seeds))
    out = tuple(seeds) if isinstance(seeds, Sequence) else ()
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise RopeBehaviorError(f"seeds={seeds!r}; expected a count >= 1 or non-negative ints.")
    return out


def _writable_dir(out_dir: str | PathLike[str]) -> Path:
    """Create ``out_dir`` and prove it takes a file, or say why not (before any training)."""
    out = Path(out_dir)
    probe = out / f".write-probe-{os.getpid()}"
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RopeBehaviorError(
            f"run_experiment: out_dir {str(out)!r} is not a writable folder "
            f"({type(err).__name__}: {err.strerror or err}); choose another out_dir (or None "
            "to write nothing). Checked before training, so no run was lost."
        ) from None
    return out


def _resolve_settings(
    settings: Sequence[str] | None, n_pairs: int, quick: bool, theta: float
) -> tuple[str, ...]:
    """The setting names (the default sweep when ``None``), each checked against the model."""
    if settings is None:
        pairs = sorted({0, n_pairs // 2, n_pairs - 1}) if quick else None
        settings = sweep_settings(n_pairs, pairs=pairs, theta=theta)
    settings = tuple(settings)
    if not settings:
        raise RopeBehaviorError("settings is empty; pass setting names or None for the default.")
    for s in settings:
        parse_setting(s, n_pairs)
    return settings


def _checked_config(train_config: object, workers: object, threads: object) -> TrainConfig:
    """The training config (the default when ``None``), with the process counts checked."""
    config = train_config if train_config is not None else TrainConfig(progress=False)
    if not isinstance(config, TrainConfig):
        raise RopeBehaviorError(f"train_config must be a TrainConfig; got {type(config).__name__}.")
    for name, value in (("workers", workers), ("threads", threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RopeBehaviorError(f"run_experiment: {name} must be an int >= 1; got {value!r}.")
    return config


def _execute(
    jobs: list[_Job], workers: int, n_pairs: int, done: Callable[[RunRecord], None]
) -> None:
    """Runs the jobs here (one worker) or in a process pool, handing each record to ``done``."""
    if workers == 1:
        before = torch.get_num_threads()
        try:
            for job in jobs:
                done(_run_job(job))
        finally:
            torch.set_num_threads(before)
        return
    context = multiprocessing.get_context("spawn")
    # Longest first (angle overrides cost most, plain RoPE stops earliest): packs the
    # workers better. Results are re-sorted below, so the order does not matter there.
    cost = {"nope": 0, "angle": 0, "two_angle": 0, "pair": 1, "band": 1, "all": 2}
    ordered = sorted(jobs, key=lambda j: cost[parse_setting(j.setting, n_pairs).kind])
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for future in cf.as_completed([pool.submit(_run_job, j) for j in ordered]):
            done(future.result())


def run_experiment(
    *,
    tasks: Any = None,
    settings: Sequence[str] | None = None,
    seeds: int | Sequence[int] | None = None,
    train_config: TrainConfig | None = None,
    out_dir: str | PathLike[str] | None = None,
    quick: bool = False,
    n_eval: int = 2048,
    n_per_position: int = 256,
    n_plane: int = 256,
    theta: float = DEFAULT_THETA,
    model_options: Mapping[str, Any] | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: bool | Callable[[str], None] = True,
) -> ExperimentResult:
    """Sweep task x setting x seed; see the module docstring.

    Args:
        tasks: task names (``index``, ``retrieval``, ``partial_induction``), task objects,
            or a ``{name: task}`` mapping; default all three with their defaults.
        settings: setting names; default every ``pair:<i>`` (quick: 0, n/2, last) plus
            ``all``, ``nope`` and ``two_angle:<theta>``.
        seeds: a count (seeds ``0..n-1``) or explicit seeds; default 3 (quick: 1).
        train_config: training hyper-parameters (default ``TrainConfig(progress=False)``;
            its seed is replaced by each run's seed).
        out_dir: where to write the CSVs (nothing written when ``None``); checked to be
            writable before any training.
        model_options: extra :func:`toy_model` keywords (``n_heads``, ``d_head``, ...).
        workers: parallel processes (1: in this process); threads: torch threads each.
        progress: print one line per finished run (or a callable receiving the lines).
    """
    start = time.perf_counter()
    out = _writable_dir(out_dir) if out_dir is not None else None
    task_map = _tasks(tasks)
    opts = dict(model_options or {})
    n_pairs = toy_model(next(iter(task_map.values())), **opts).cfg.n_pairs
    settings = _resolve_settings(settings, n_pairs, quick, theta)
    seed_list = _seeds(seeds if seeds is not None else (1 if quick else 3))
    config = _checked_config(train_config, workers, threads)
    plane_setting = "all" if "all" in settings else None
    jobs = [
        _Job(
            name,
            task,
            s,
            seed,
            config,
            opts,
            n_eval,
            n_per_position,
            n_plane if (s == plane_setting and seed == seed_list[0]) else 0,
            threads,
        )
        for name, task in task_map.items()
        for s in settings
        for seed in seed_list
    ]
    say: Callable[[str], None] | None = (
        progress if callable(progress) else (lambda m: print(m, flush=True)) if progress else None
    )
    records: list[RunRecord] = []

    def done(rec: RunRecord) -> None:
        records.append(rec)
        if say is not None:
            say(
                f"[{len(records)}/{len(jobs)}] {rec.task:<17} {rec.setting:<14} seed {rec.seed} "
                f"acc {rec.accuracy:.3f} ({rec.steps} steps, {rec.seconds:.1f} s)"
            )

    _execute(jobs, workers, n_pairs, done)
    order = {(j.task_name, j.setting, j.seed): i for i, j in enumerate(jobs)}
    records.sort(key=lambda r: order[(r.task, r.setting, r.seed)])
    results, by_position, plane = frames_of(records)
    files = write_frames(out, results, by_position, plane) if out is not None else []
    return ExperimentResult(
        results=results,
        by_position=by_position,
        plane=plane,
        records=tuple(records),
        files=tuple(files),
        seconds=time.perf_counter() - start,
    )
