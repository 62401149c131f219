"""Sweeps and corpus scoring on a local Ray cluster (started here: 2 CPUs, no network)
equal the in-process results; killed workers and drivers resume without recomputing
finished shards; without Ray the package still imports and says how to install it."""

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import rope_behavior as rb
from rope_behavior import metrics
from rope_behavior.analysis.corpus import score_corpus
from rope_behavior.patching.sweep import frequency_patching_sweep
from rope_behavior.runtime.executors import LocalExecutor, ModelLoader, call_with_model
from tests.models import make_bridge

ray = pytest.importorskip("ray")
from rope_behavior.runtime.ray_cluster import RayExecutor, WorkerError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LOADER = ModelLoader(make_bridge, "llama_gqa", seed=0)


def runs():
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, 97, (2, 12), generator=gen)
    corrupted = torch.where(torch.rand(2, 12, generator=gen) < 0.3, 7, clean)
    return clean, corrupted


METRIC = metrics.logit_diff(3, 4)


def sweep(model, **kw):
    clean, corrupted = runs()
    kw.setdefault("bands", 2)
    kw.setdefault("batch_conditions", 1)
    return frequency_patching_sweep(model, clean, corrupted, METRIC, **kw)


@pytest.fixture(scope="module")
def executor():
    ex = RayExecutor(
        num_workers=2,
        progress=False,
        init_kwargs={"num_cpus": 2, "object_store_memory": 100 * 2**20},
    )
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def local_sweep():
    # workers run torch with one thread each (Ray's OMP_NUM_THREADS=1); so does this
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return sweep(LOADER())
    finally:
        torch.set_num_threads(threads)


def test_a_ray_sweep_equals_the_in_process_sweep(executor, local_sweep):
    got = sweep(LOADER, executor=executor)
    assert torch.equal(got.values, local_sweep.values)  # 0.0 difference
    assert got.clean_baseline == local_sweep.clean_baseline
    assert got.corrupted_baseline == local_sweep.corrupted_baseline
    assert (got.layers, got.heads, got.head_axis) == (
        local_sweep.layers,
        local_sweep.heads,
        local_sweep.head_axis,
    )
    st = executor.stats
    assert st.workers == 2
    assert st.computed == st.shards > 2
    assert st.resumed == 0


def test_a_killed_worker_is_restarted_and_no_finished_shard_is_recomputed(
    executor, local_sweep, tmp_path
):
    killed = []

    def progress(done, total):
        if done == 2 and not killed:
            pid = executor.worker_pids()[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    executor.progress = progress
    try:
        got = sweep(LOADER, executor=executor, out_dir=tmp_path / "sweep")
    finally:
        executor.progress = False
    st = executor.stats
    assert killed
    assert torch.equal(got.values, local_sweep.values)
    assert st.computed == st.shards  # every finished shard handed back exactly once
    assert st.lost >= 1
    assert st.restarts >= 1
    assert len(list((tmp_path / "sweep" / "chunks").glob("*.json"))) == st.shards
    assert killed[0] not in executor.worker_pids()


def test_a_killed_driver_resumes_without_recomputing_finished_shards(
    executor, local_sweep, tmp_path
):
    out = tmp_path / "sweep"
    executor.stop_workers()  # the cluster's 2 CPUs: one for the driver's worker below
    gcs = ray.get_runtime_context().gcs_address
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import torch
        from tests.runtime.test_distributed import LOADER, sweep
        from rope_behavior.runtime.ray_cluster import RayExecutor

        def progress(done, total):
            print("done", done, flush=True)
            time.sleep(0.5)

        ex = RayExecutor(num_workers=2, address={gcs!r}, progress=progress)
        sweep(LOADER, executor=ex, out_dir={str(out)!r})
        print("finished", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:
            if line.strip() == "done 3":
                break
        else:
            pytest.fail(f"the driver ended early: {proc.stderr.read()[-2000:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    chunks = len(list((out / "chunks").glob("*.json")))
    assert chunks >= 3
    deadline = time.time() + 30  # the dead driver's flock is released with its process
    got = None
    while got is None:
        try:
            got = sweep(LOADER, executor=executor, out_dir=out)
        except rb.RopeBehaviorError as e:
            if "in use" not in str(e) or time.time() > deadline:
                raise
            time.sleep(0.5)
    st = executor.stats
    assert torch.equal(got.values, local_sweep.values)
    assert st.resumed == chunks
    assert st.computed == st.shards - chunks


def test_score_corpus_on_ray_equals_score_heads_and_frequency_usage(executor):
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(1, 97, (6, 40), generator=gen)
    mask = torch.ones_like(tokens)
    mask[1, 30:] = 0
    mask[4, 35:] = 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = score_corpus(
            LOADER, tokens, attention_mask=mask, batch_size=2, per_pair=True, pair_prompts=3
        )
        model = LOADER()
        whole = rb.score_heads(model, tokens, swaps=here.scores.swaps, attention_mask=mask)
        usage = rb.frequency_usage(rb.capture(model, tokens, attention_mask=mask))
    finally:
        torch.set_num_threads(threads)
    got = score_corpus(
        LOADER, tokens, attention_mask=mask, batch_size=2, per_pair=True, pair_prompts=3,
        executor=executor,
    )  # fmt: skip
    for name in ("s_pos", "s_sym", "separation", "identifiable", "swapped_mass"):
        assert torch.equal(getattr(got.scores, name), getattr(here.scores, name)), name
        a, b = getattr(got.scores, name), getattr(whole, name)
        assert torch.allclose(a.double(), b.double(), atol=1e-5, equal_nan=True), name
    assert torch.equal(got.pair_scores.s_pos, here.pair_scores.s_pos)
    assert got.pair_scores.s_pos.shape[0] == 3
    for name in ("logit_usage", "norm_usage", "centroid"):
        assert torch.equal(getattr(got.usage, name), getattr(here.usage, name)), name
        assert torch.allclose(
            getattr(got.usage, name).double(), getattr(usage, name).double(), atol=1e-5
        ), name
    assert got.n_tokens == int(mask.sum())
    assert executor.stats.shards == 3


def test_score_corpus_resumes_from_its_store(tmp_path):
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randint(1, 97, (4, 24), generator=gen)
    full = score_corpus(LOADER, tokens, batch_size=1)
    ex = LocalExecutor()
    calls = []

    def fail_after_two(done, total):
        calls.append(done)
        if done == 2:
            raise KeyboardInterrupt

    ex.progress = fail_after_two
    with pytest.raises(KeyboardInterrupt):
        score_corpus(LOADER, tokens, batch_size=1, executor=ex, out_dir=tmp_path)
    ex.progress = False
    got = score_corpus(LOADER, tokens, batch_size=1, executor=ex, out_dir=tmp_path)
    assert ex.stats.resumed == 2
    assert ex.stats.computed == 2
    assert torch.equal(got.scores.s_pos, full.scores.s_pos)
    assert torch.equal(got.usage.logit_usage, full.usage.logit_usage)


def test_worker_errors_arrive_as_the_library_s_own_errors(executor):
    with pytest.raises(rb.RopeBehaviorError, match="layer 9 is out of range"):
        sweep(LOADER, executor=executor, layers=[9])


def _fails(model, what):
    raise RuntimeError(what)


@dataclasses.dataclass(frozen=True)
class _Plan:
    shards: tuple
    digest: str = "one plan"


@dataclasses.dataclass(frozen=True)
class _SlowJob:  # shards 0..5, each a moment; ``bad`` raises
    bad: int | None = None

    def setup(self, model):
        return None

    def plan(self, state):
        return _Plan(tuple(range(6)))

    def run(self, state, shard):
        if shard == self.bad:
            raise KeyError(f"shard {shard}")
        time.sleep(0.3)
        return shard * 10


def test_a_job_that_fails_on_a_worker_is_one_line_and_the_workers_stay_usable(executor):
    with pytest.raises(WorkerError) as info:
        call_with_model(executor, LOADER, _fails, "in the job's set-up")
    assert str(info.value) == (
        "a Ray worker failed while setting up the job: RuntimeError: in the job's set-up"
    )
    assert isinstance(info.value.__cause__, RuntimeError)
    pids = executor.worker_pids()
    assert len(pids) == 2  # a job's error leaves the workers (and their models) up
    with pytest.raises(
        WorkerError, match=r"^a Ray worker failed while computing shard 3: KeyError: 'shard 3'$"
    ):
        executor.run_job(LOADER, _SlowJob(bad=3), lambda plan: list(plan.shards), lambda s, r: None)
    got = {}
    executor.run_job(LOADER, _SlowJob(), lambda plan: list(plan.shards), got.__setitem__)
    assert got == {i: i * 10 for i in range(6)}  # queued shards of the failed run were cancelled
    assert executor.worker_pids() == pids


def test_an_interrupted_driver_leaves_the_workers_usable(executor):
    def stop(shard, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # not translated: it is the user's own
        executor.run_job(LOADER, _SlowJob(), lambda plan: list(plan.shards), stop)
    got = {}
    executor.run_job(LOADER, _SlowJob(), lambda plan: list(plan.shards), got.__setitem__)
    assert sorted(got) == list(range(6))
    assert executor.stats.computed == 6


def _returns_a_lock(model):
    return threading.Lock()


def test_a_result_that_cannot_come_back_is_one_line(executor):
    with pytest.raises(
        WorkerError, match=r"^a Ray worker failed while running the job: \w+: .*lock"
    ):
        call_with_model(executor, LOADER, _returns_a_lock)
    assert len(executor.worker_pids()) == 2


def test_a_job_that_cannot_be_sent_to_workers_is_refused(executor):
    lock = threading.Lock()
    with pytest.raises(
        rb.RopeBehaviorError, match=r"^the job cannot be sent to workers \(TypeError: "
    ):
        call_with_model(executor, LOADER, _fails, lock)
    assert len(executor.worker_pids()) == 2


def _pid_seeded(name):  # a loader that builds different weights in every process
    return make_bridge(name, seed=os.getpid() % 1000)


def test_workers_that_build_different_models_are_refused(executor):
    with pytest.raises(rb.RopeBehaviorError, match="workers disagree on the plan"):
        sweep(ModelLoader(_pid_seeded, "llama_gqa"), executor=executor)


def test_a_model_is_never_pickled(executor):
    model = LOADER()
    with pytest.raises(rb.RopeBehaviorError, match="pass a ModelLoader"):
        sweep(model, executor=executor)
    with pytest.raises(rb.RopeBehaviorError, match="not a model"):
        ModelLoader(model)
    with pytest.raises(rb.RopeBehaviorError, match="is a model"):
        ModelLoader(make_bridge, model)


def test_without_ray_the_package_imports_and_says_how_to_install_it():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        import rope_behavior, rope_behavior.runtime.ray_cluster as d
        try:
            d.RayExecutor()
        except rope_behavior.RopeBehaviorError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    assert "pip install 'rope_behavior[ray]'" in out


# -- errors that arrive from a worker ------------------------------------------------------


def _raises_value_error():
    raise ValueError("bad config\n(more detail)")


class _Odd(Exception):  # pickles, but cannot be rebuilt from its args: only its text returns
    def __init__(self, what, code):
        super().__init__(what)
        self.code = code


def _raises_odd():
    raise _Odd("odd failure", 7)


def _cpus_free(expected, wait_s=30.0):
    """Whether the cluster's free CPUs come back to ``expected`` (killed actors release
    theirs a moment later): a leaked worker would keep one."""
    deadline = time.time() + wait_s
    while ray.available_resources().get("CPU", 0) < expected:
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def one_worker(executor):
    """One worker on the module's cluster (a model that fails to build costs one start)."""
    executor.stop_workers()
    ex = RayExecutor(num_workers=1, progress=False)
    yield ex
    ex.shutdown()  # stops its workers; the cluster is the module's


@pytest.mark.parametrize(
    ("loader", "said", "cause"),
    [
        (
            ModelLoader(_raises_value_error),
            "a Ray worker failed while building its model: ValueError: bad config (more detail)",
            ValueError,
        ),
        (
            ModelLoader(_raises_odd),
            "a Ray worker failed while building its model: _Odd: odd failure",
            None,
        ),
    ],
)
def test_a_model_that_fails_to_build_on_a_worker_is_one_line_of_the_library_s_error(
    one_worker, loader, said, cause
):
    with pytest.raises(rb.RopeBehaviorError) as info:  # what a user catches
        sweep(loader, executor=one_worker)
    error = info.value
    assert isinstance(error, WorkerError)
    assert str(error) == said
    if cause is None:
        assert error.__cause__ is None
    else:
        assert type(error.__cause__) is cause
        assert str(error.__cause__) == "bad config\n(more detail)"
    assert one_worker.worker_pids() == []  # its workers were stopped, none leaked
    assert _cpus_free(2)


def test_a_missing_folder_says_on_a_worker_what_it_says_here(one_worker):
    with pytest.raises(rb.RopeBehaviorError) as here:
        ModelLoader("/no/such/folder")()
    with pytest.raises(rb.RopeBehaviorError) as there:
        call_with_model(one_worker, ModelLoader("/no/such/folder"), type)
    assert type(there.value) is rb.RopeBehaviorError  # the library's own error, as raised
    assert str(there.value) == str(here.value)
    assert str(here.value).startswith("no such model folder: '/no/such/folder' (")
    assert one_worker.worker_pids() == []
    assert _cpus_free(2)


def test_the_command_line_on_ray_prints_a_worker_s_error_in_one_line(executor, tmp_path, capsys):
    from rope_behavior.cli.app import main

    executor.stop_workers()  # the cluster's CPUs go to the command's worker
    gcs = ray.get_runtime_context().gcs_address
    args = ["analyze", "./no/such/folder", "--ray", gcs, "--workers", "1"]
    assert main([*args, "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        "rope-behavior analyze: error: no such model folder: 'no/such/folder' (a hub name "
        "has the form 'org/model', e.g. meta-llama/Llama-3.2-1B)"
    ]
    assert ray.is_initialized()  # the command joined this cluster and left it running
    assert _cpus_free(2)


@pytest.mark.slow
def test_the_command_line_analyze_on_ray_equals_the_local_run(executor, tmp_path):
    import pandas as pd

    from rope_behavior.cli.app import main

    executor.stop_workers()  # the cluster's CPUs go to the command's workers
    gcs = ray.get_runtime_context().gcs_address
    common = ["--max-prompts", "4", "--context", "48", "--batch-size", "2"]
    assert main(["analyze", *common, "--out", str(tmp_path / "here")]) == 0
    assert (
        main(["analyze", *common, "--ray", gcs, "--workers", "2", "--out", str(tmp_path / "ray")])
        == 0
    )
    here = pd.read_csv(tmp_path / "here" / "heads.csv").select_dtypes("number")
    there = pd.read_csv(tmp_path / "ray" / "heads.csv").select_dtypes("number")
    assert here.shape == there.shape
    assert float((here - there).abs().max().max()) < 1e-6
    assert ray.is_initialized()  # the command joined this cluster and left it running
