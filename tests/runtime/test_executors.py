"""Executors, the sharded driver and call_with_model on bad input: each refusal is one
line naming the value, what was expected and the options, before anything starts (no
cluster, no lock, no file)."""

import socket
import time
from typing import ClassVar

import pytest

import rope_behavior as rb
from rope_behavior.runtime.driver import run_sharded
from rope_behavior.runtime.executors import LocalExecutor, ShardProgress, call_with_model


def refusal(fn) -> str:
    with pytest.raises(rb.RopeBehaviorError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text
    return text


class Plan:
    shards = (0, 1, 2)
    digest = "plan"
    description: ClassVar[dict] = {"kind": "test"}


class Job:
    def setup(self, model):
        return model

    def plan(self, state):
        return Plan()

    def run(self, state, shard):
        return shard * 2


class Results:
    def __init__(self):
        self.got = {}

    def restore(self, store):
        self.got.update({int(k): v["x"] for k, v in store.load_payloads().items()})

    def pending(self, plan):
        return [s for s in plan.shards if s not in self.got]

    def keep(self, shard, result):
        self.got[shard] = result

    def save(self, store, shard, result):
        store.write_payload(str(shard), {"x": result})

    def summary(self, plan):
        return {"shards": len(plan.shards)}


def test_the_local_executor_and_the_driver_run_and_resume(tmp_path):
    results = Results()
    run_sharded("model", Job(), results, out_dir=tmp_path)
    assert results.got == {0: 0, 1: 2, 2: 4}
    again, ex = Results(), LocalExecutor()
    run_sharded("model", Job(), again, executor=ex, out_dir=tmp_path)
    assert again.got == results.got
    assert (ex.stats.resumed, ex.stats.computed) == (3, 0)


@pytest.mark.parametrize("progress", ["yes", 1, 0.5, [True]])
def test_a_progress_that_is_neither_a_flag_nor_a_function_is_refused(progress):
    said = f"progress={progress!r}; expected True, False or a function (done, total)"
    assert refusal(lambda: LocalExecutor(progress=progress)) == said
    assert refusal(lambda: ShardProgress(progress, 3, "")) == said


@pytest.mark.parametrize("executor", ["ray", 5, LocalExecutor, object()])
def test_an_executor_that_is_not_one_is_refused_before_the_model_runs(tmp_path, executor):
    text = refusal(
        lambda: run_sharded("model", Job(), Results(), executor=executor, out_dir=tmp_path)
    )
    assert text.startswith(f"executor={executor!r}; expected None (run here), LocalExecutor(")
    assert not list(tmp_path.iterdir())  # no store was opened
    assert "expected None" in refusal(lambda: call_with_model(executor, "model", len))


@pytest.mark.parametrize("job", [object(), Job, "job"])
def test_a_job_without_setup_plan_and_run_is_refused(job):
    assert (
        "is not a job: expected an object with setup(model), plan(state) and run(state, shard)"
        in refusal(
            lambda: LocalExecutor().run_job("model", job, lambda plan: [], lambda s, r: None)
        )
    )


@pytest.mark.parametrize("out_dir", [5, "", "  ", None, b"bytes"])
def test_an_out_dir_that_is_not_a_path_is_refused(out_dir):
    if out_dir is None:  # None means no store at all
        results = Results()
        run_sharded("model", Job(), results, out_dir=None)
        assert results.got == {0: 0, 1: 2, 2: 4}
        return
    assert refusal(lambda: run_sharded("model", Job(), Results(), out_dir=out_dir)).startswith(
        f"out_dir={out_dir!r}; expected the path of a folder"
    )


def test_an_out_dir_under_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    run_sharded("model", Job(), Results(), out_dir="~/store")
    assert (tmp_path / "store" / "manifest.json").is_file()


def test_call_with_model_runs_here_without_an_executor_and_checks_the_function():
    assert call_with_model(None, "model", len) == 5
    assert call_with_model(LocalExecutor(), "model", lambda m, k: m * k, 2) == "modelmodel"
    assert refusal(lambda: call_with_model(None, "model", 5)) == (
        "fn=5 is not a function; expected fn(model, *args)"
    )


# -- the Ray executor's arguments (no cluster is started) --------------------------------

ray = pytest.importorskip("ray")
from rope_behavior.runtime.executors import ModelLoader  # noqa: E402
from rope_behavior.runtime.ray_cluster import RayExecutor  # noqa: E402


def build():
    raise AssertionError("no model is built in these tests")


@pytest.mark.parametrize(
    ("kwargs", "said"),
    [
        ({"num_workers": 0}, "num_workers=0; expected an int >= 1 or None"),
        ({"num_workers": True}, "num_workers=True; expected an int >= 1 or None"),
        ({"num_workers": 1.5}, "num_workers=1.5"),
        ({"address": 5}, "address=5; expected None, 'auto' or 'ray://host:port'"),
        ({"gpus_per_worker": -1}, "gpus_per_worker=-1; expected a number >= 0 or None"),
        ({"gpus_per_worker": "1"}, "gpus_per_worker='1'"),
        ({"cpus_per_worker": 0}, "cpus_per_worker=0; expected a number > 0"),
        ({"cpus_per_worker": float("nan")}, "cpus_per_worker=nan"),
        ({"max_restarts": -1}, "max_restarts=-1; expected an int >= 0"),
        ({"max_restarts": 2.0}, "max_restarts=2.0"),
        ({"init_kwargs": [("num_cpus", 2)]}, "init_kwargs=[('num_cpus', 2)]; expected a dict"),
        ({"progress": "yes"}, "progress='yes'; expected True, False or a function"),
    ],
)
def test_ray_executor_arguments_are_checked_when_it_is_built(kwargs, said):
    assert refusal(lambda: RayExecutor(**kwargs)).startswith(said)
    assert not ray.is_initialized()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_an_address_where_nothing_listens_is_refused_at_once(scheme):
    address = f"{scheme}127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    text = refusal(lambda: call_with_model(RayExecutor(address=address), ModelLoader(build), len))
    assert time.monotonic() - start < 30  # ray.init would retry for minutes, then exit
    assert text.startswith(f"cannot join Ray at {address}: nothing accepts connections there (")
    assert not ray.is_initialized()
    assert "expected 'auto', 'host:port'" in refusal(
        lambda: call_with_model(RayExecutor(address="host:port"), ModelLoader(build), len)
    )


def test_ray_init_arguments_it_refuses_leave_no_cluster_behind():
    ex = RayExecutor(init_kwargs={"no_such_argument": 1})
    text = refusal(lambda: call_with_model(ex, ModelLoader(build), len))
    assert text.startswith("cannot start or join Ray at a local cluster: RuntimeError: ")
    assert "no_such_argument" in text
    assert not ray.is_initialized()


def test_the_ray_executor_checks_the_job_and_the_model_before_starting_a_cluster():
    ex = RayExecutor()
    assert "pass a ModelLoader" in refusal(lambda: call_with_model(ex, "a model", len))
    assert "is not a job" in refusal(
        lambda: ex.run_job(ModelLoader(build), object(), lambda p: [], lambda s, r: None)
    )
    assert not ray.is_initialized()
