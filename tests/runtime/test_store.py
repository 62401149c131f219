"""The resumable store (runtime/store.py) used directly, not through a sweep: it records
what it is a store of and refuses another job, names both; two processes hammering one
folder never corrupt or mix it; a process killed at any step of any write leaves a store
that resumes to the same result; bad records are refused before they are written."""

import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch

import rope_behavior as rb
from rope_behavior.runtime import store as store_module
from rope_behavior.runtime.store import SweepStore

JOB_A = {"kind": "a test job", "layers": [0, 1], "seed": 0}
JOB_B = {"kind": "a test job", "layers": [0, 1], "seed": 1}
CHUNKS = [(layer, [(h, 0), (h, 1)]) for layer in (0, 1) for h in (0, 1)]


def value(description, layer, h, b):
    """The value a job computes for a condition (different jobs: different values)."""
    return round(1000 * description["seed"] + 100 * layer + 10 * h + b + 0.5, 3)


def expected(description):
    return {
        (layer, h, b): value(description, layer, h, b)
        for layer, conditions in CHUNKS
        for h, b in conditions
    }


def run_job(root, description, chunks=CHUNKS):
    """What a sweep does with its store: resume, compute what is missing, finish."""
    with SweepStore(root, description) as store:
        done = store.load()
        for layer, conditions in chunks:
            if any((layer, *c) not in done for c in conditions):
                store.write(layer, conditions, [value(description, layer, *c) for c in conditions])
        store.finish({"chunks": len(chunks)})
        return store.load()


def refusal(fn) -> str:
    with pytest.raises(rb.RopeBehaviorError) as info:
        fn()
    text = str(info.value)
    assert "\n" not in text
    return text


# -- one store, one job ----------------------------------------------------------------


def test_a_second_different_job_is_refused_naming_both(tmp_path):
    assert run_job(tmp_path, JOB_A) == expected(JOB_A)
    text = refusal(lambda: run_job(tmp_path, JOB_B))
    stored = SweepStore  # the fingerprints as the manifest and the new job have them
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    with stored(tmp_path / "other", JOB_B) as other:
        fp_b = other.fingerprint
    assert text.startswith(f"out_dir '{tmp_path}' holds a different sweep (differs in: seed): ")
    assert f"it holds a test job {manifest['fingerprint'][:12]} with seed=0" in text
    assert f"this one is a test job {fp_b[:12]} with seed=1" in text
    # refused before anything was written: the store still holds job A only
    with SweepStore(tmp_path, JOB_A) as again:
        assert again.load() == expected(JOB_A)
    assert not (tmp_path / ".sweep.lock").read_bytes()  # the lock is a lock, nothing else


def test_a_store_without_a_kind_and_a_store_of_another_kind_are_named(tmp_path):
    with SweepStore(tmp_path, {"layers": [0]}):
        pass
    text = refusal(
        lambda: SweepStore(tmp_path, {"kind": "corpus scores", "tokens": "x"}).__enter__()
    )
    assert "(differs in: kind, layers, tokens)" in text
    assert "it holds a sweep " in text
    assert "this one is corpus scores " in text


def test_the_same_job_reopened_resumes_and_a_described_store_stays_bound(tmp_path):
    run_job(tmp_path, JOB_A, CHUNKS[:2])
    assert run_job(tmp_path, JOB_A) == expected(JOB_A)
    with SweepStore(tmp_path) as store:  # the lock first, the description later
        assert "has no description yet" in refusal(store.load)
        store.describe(JOB_A)
        assert store.load() == expected(JOB_A)
    with SweepStore(tmp_path) as store:
        assert "differs in: seed" in refusal(lambda: store.describe(JOB_B))
        assert "not open" in refusal(store.load)  # a refusal releases the lock
    with SweepStore(tmp_path, JOB_A):
        pass  # and it can be taken again


# -- records refused before they are written ------------------------------------------


@pytest.mark.parametrize(
    ("layer", "conditions", "values", "said"),
    [
        (0, [], [], "0 conditions but 0 values"),
        (0, [(0, 0)], [1.0, 2.0], "1 conditions but 2 values"),
        (0, [(0, 0)], [math.nan], "non-finite value nan"),
        (0, [(0, 0)], [math.inf], "non-finite value inf"),
        (0, [(0, 0)], [True], "value True is not a number"),
        (0, [(0, 0)], ["1.0"], "value '1.0' is not a number"),
        (0, [(0, "1")], [1.0], "condition [0, '1'] is not a [head, band] pair of ints"),
        (0, [(0, 1, 2)], [1.0], "is not a [head, band] pair"),
        (0, [(-1, 0)], [1.0], "is not a [head, band] pair"),
        (-1, [(0, 0)], [1.0], "layer -1 is not a non-negative int"),
        (1.5, [(0, 0)], [1.0], "layer 1.5 is not a non-negative int"),
        (True, [(0, 0)], [1.0], "layer True is not a non-negative int"),
    ],
)
def test_a_bad_chunk_is_refused_and_nothing_is_written(tmp_path, layer, conditions, values, said):
    with SweepStore(tmp_path, JOB_A) as store:
        assert said in refusal(lambda: store.write(layer, conditions, values))
        assert store.load() == {}
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ({"layer": "0", "conditions": [[0, 0]], "values": [1.0]}, "layer '0' is not"),
        ({"layer": 0, "conditions": [[0, 0]], "values": [True]}, "value True is not a number"),
        ({"layer": 0, "conditions": [[0.0, 0]], "values": [1.0]}, "is not a [head, band] pair"),
        ({"layer": 0, "conditions": [[0, 0]]}, "KeyError: 'values'"),
        ({"layer": 0, "conditions": "00", "values": "1"}, "must be lists"),
    ],
)
def test_a_chunk_file_edited_by_hand_is_refused_not_coerced(tmp_path, data, said):
    with SweepStore(tmp_path, JOB_A):
        pass
    (tmp_path / "chunks").mkdir()
    path = tmp_path / "chunks" / "L000-0000-0000.json"
    path.write_text(json.dumps(data))
    with SweepStore(tmp_path, JOB_A) as store:
        text = refusal(store.load)
    assert text.startswith(f"chunk file {path} is not a valid chunk (")
    assert said in text


def test_two_chunks_that_disagree_on_a_condition_are_refused(tmp_path):
    run_job(tmp_path, JOB_A)
    other = tmp_path / "chunks" / "L000-0000-0001.json"  # a second file holding (0, 0, 1)
    other.write_text(json.dumps({"layer": 0, "conditions": [[0, 1]], "values": [99.0]}))
    with SweepStore(tmp_path, JOB_A) as store:
        text = refusal(store.load)
    assert text.startswith("chunk files ")
    assert "disagree on layer 0, head 0, band 1 (1.5 vs 99.0); delete both" in text
    other.write_text(json.dumps({"layer": 0, "conditions": [[0, 1]], "values": [1.5]}))
    with SweepStore(tmp_path, JOB_A) as store:
        assert store.load() == expected(JOB_A)  # the same value twice is no conflict


@pytest.mark.parametrize(
    ("description", "said"),
    [
        ({"x": math.nan}, "plain JSON data (str keys; no NaN)"),
        ({"x": object()}, "plain JSON data"),
        ({1: "a", "b": 2}, "plain JSON data"),
        (["not", "a", "dict"], "must be a dict of plain JSON values; got list"),
    ],
)
def test_a_description_that_is_not_json_is_refused_and_the_lock_released(
    tmp_path, description, said
):
    assert said in refusal(lambda: SweepStore(tmp_path, description).__enter__())
    with SweepStore(tmp_path, JOB_A) as store:  # nothing was written; the lock is free
        assert store.load() == {}


def test_a_summary_cannot_overwrite_what_the_manifest_is(tmp_path):
    with SweepStore(tmp_path, JOB_A) as store:
        text = refusal(lambda: store.finish({"fingerprint": "0" * 64, "shards": 1}))
        assert text.startswith("a store's summary cannot set fingerprint")
        assert "cannot write" in refusal(lambda: store.finish({"baseline": math.nan}))
        store.finish({"baseline": 1.0})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert manifest["description"] == JOB_A
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["", ".hidden", "../escape", "a/b", "a b", 7, None])
def test_a_shard_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    with SweepStore(tmp_path, JOB_A) as store:
        assert "shard name" in refusal(lambda: store.write_payload(name, {"x": 1}))
        assert "expected a dict" in refusal(lambda: store.write_payload("ok", [1]))
        store.write_payload("0000000-0000002", {"x": torch.ones(2)})
        assert list(store.load_payloads()) == ["0000000-0000002"]
    assert not (tmp_path.parent / "escape.pt").exists()


def test_a_lock_that_cannot_be_taken_and_an_out_dir_that_is_a_file_are_named(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / ".sweep.lock").mkdir()  # a folder where the lock file goes
    text = refusal(lambda: SweepStore(tmp_path / "s", JOB_A).__enter__())
    assert text.startswith(f"cannot lock out_dir '{tmp_path / 's'}' (.sweep.lock: ")
    (tmp_path / "f").write_text("x")
    assert "exists and is not a folder" in refusal(lambda: SweepStore(tmp_path / "f").__enter__())


# -- writes that fail or are interrupted ---------------------------------------------------


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_midway_leaves_no_temporary_file(tmp_path, monkeypatch, error):
    def fail(fd):
        raise error

    with SweepStore(tmp_path, JOB_A) as store:
        monkeypatch.setattr(store_module.os, "fsync", fail)
        if isinstance(error, OSError):
            said = refusal(lambda: store.write(0, [(0, 0)], [1.0]))
            assert said.endswith("L000-0000-0000.json: No space left on device")
        else:
            with pytest.raises(KeyboardInterrupt):
                store.write(0, [(0, 0)], [1.0])
        monkeypatch.undo()
        assert store.load() == {}
    assert not list(tmp_path.rglob("*.tmp"))


def test_temporary_files_of_a_killed_writer_are_removed_when_the_store_is_opened(tmp_path):
    run_job(tmp_path, JOB_A, CHUNKS[:1])
    stale = [
        tmp_path / ".manifest.json.4242-0badcafe.tmp",
        tmp_path / "chunks" / ".L001-0000-0000.json.4242.tmp",  # the older name
    ]
    for path in stale:
        path.write_text('{"layer": 1, "condi')
    mine = tmp_path / ".notes.tmp"  # not a name the store writes: left alone
    mine.write_text("keep")
    with SweepStore(tmp_path, JOB_A) as store:
        assert not any(path.exists() for path in stale)
        assert mine.exists()
        assert store.load() == {k: v for k, v in expected(JOB_A).items() if k[0] == 0 and k[1] == 0}


def _killed_at(root, step, where):
    """Run the job, dying (``os._exit``, no clean-up) at the ``step``-th write, at ``where``:
    mid-way through the temporary file, before its rename, or after it."""
    import json as json_module

    count = {"n": 0}
    real_dump, real_replace = json_module.dump, os.replace

    def dump(obj, f, **kw):
        count["n"] += 1
        if count["n"] == step and where == "partial":
            text = json_module.dumps(obj, **kw)
            f.write(text[: len(text) // 2])
            f.flush()
            os._exit(9)
        return real_dump(obj, f, **kw)

    def replace(src, dst):
        if count["n"] == step and where == "before rename":
            os._exit(9)
        real_replace(src, dst)
        if count["n"] == step and where == "after rename":
            os._exit(9)

    store_module.json.dump = dump
    store_module.os.replace = replace
    run_job(root, JOB_A)
    os._exit(0)  # the job ended before the step: nothing was killed


@pytest.mark.parametrize("where", ["partial", "before rename", "after rename"])
def test_a_writer_killed_at_any_step_leaves_a_store_that_resumes_to_the_same_result(
    tmp_path, where
):
    writes = 1 + len(CHUNKS) + 1  # the manifest, each chunk, the finished manifest
    context = multiprocessing.get_context("fork")
    for step in range(1, writes + 1):
        root = tmp_path / f"step{step}"
        proc = context.Process(target=_killed_at, args=(root, step, where))
        proc.start()
        proc.join(timeout=60)
        assert proc.exitcode == 9, (step, proc.exitcode)
        with SweepStore(root, JOB_A) as store:  # what the killed writer left is consistent
            left = store.load()
            assert left == {k: v for k, v in expected(JOB_A).items() if k in left}
            manifest = json.loads((root / "manifest.json").read_text())
            assert manifest.get("complete", False) is (step == writes and where == "after rename")
        assert not list(root.rglob("*.tmp"))  # removed on opening
        assert run_job(root, JOB_A) == expected(JOB_A), step
        assert json.loads((root / "manifest.json").read_text())["complete"] is True


# -- two processes at once ---------------------------------------------------------------


def _hammer(root, description, seconds, out):
    """Open the store again and again for ``seconds``, writing one chunk each time it is
    ours; count what happened."""
    counts = {"wrote": 0, "in use": 0, "different": 0}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        layer, conditions = CHUNKS[i % len(CHUNKS)]
        i += 1
        try:
            with SweepStore(root, description) as store:
                store.write(layer, conditions, [value(description, layer, *c) for c in conditions])
                store.load()
                counts["wrote"] += 1
        except rb.RopeBehaviorError as e:
            said = str(e)
            key = "in use" if "in use by another sweep" in said else "different"
            if key == "different" and "holds a different sweep" not in said:
                raise
            counts[key] += 1
    Path(out).write_text(json.dumps(counts))


@pytest.mark.parametrize("same_job", [True, False])
def test_two_processes_hammering_one_store_never_corrupt_or_mix_it(tmp_path, same_job):
    root = tmp_path / "store"
    with SweepStore(root, JOB_A):  # job A owns the folder
        pass
    other = JOB_A if same_job else JOB_B
    context = multiprocessing.get_context("fork")
    procs = [
        context.Process(target=_hammer, args=(root, job, 3.0, tmp_path / f"{i}.json"))
        for i, job in enumerate([JOB_A, other])
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    a, b = (json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2))
    assert a["wrote"] > 0
    assert a["in use"] + b["in use"] > 0  # they did meet
    if same_job:
        assert b["wrote"] > 0
        assert b["different"] == 0
    else:
        assert b["wrote"] == 0  # job B never wrote into job A's store
        assert b["different"] > 0
    with SweepStore(root, JOB_A) as store:
        assert store.load() == expected(JOB_A)  # every file whole, every value job A's
    assert not list(root.rglob("*.tmp"))


def _rewrite(path, n, seed):
    for i in range(n):
        store_module._atomic_write(path, {"seed": seed, "i": i, "pad": "x" * 20000})


def test_atomic_writes_from_two_processes_leave_one_whole_file(tmp_path):
    path = tmp_path / "f.json"
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_rewrite, args=(path, 200, s)) for s in (1, 2)]
    for proc in procs:
        proc.start()
    seen = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            data = json.loads(path.read_text())  # never a torn or mixed file
            assert data["seed"] in (1, 2)
            assert len(data["pad"]) == 20000
            seen += 1
    for proc in procs:
        proc.join()
        assert proc.exitcode == 0
    assert seen > 0
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
