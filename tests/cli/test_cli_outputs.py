"""Output folders are written all at once: a rerun never mixes two runs' files, an
interrupt at any write or any step of the swap leaves the complete old set or the complete
new set, a killed run is cleared by the next one, and a folder of other files is never
replaced."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from rope_behavior.cli import outputs
from rope_behavior.cli.app import main
from rope_behavior.cli.outputs import RunFolder, run_folder, verify_run_folder

CLI = [sys.executable, "-m", "rope_behavior.cli"]
INSPECT = ["inspect", "--random", "gpt_neox", "--batch", "1", "--length", "12"]
ANALYZE = ["analyze", "--max-prompts", "2", "--batch-size", "2", "--context", "24"]
SWEEP = ["sweep", "--task", "index", "--max-prompts", "4"]


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def leftovers(folder):
    """What a run may leave next to its folder: nothing (no staging, backup, journal, lock)."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def one_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def old_inspect(tmp_path):
    out = tmp_path / "o"
    assert main([*INSPECT, "--seed", "0", "--out", str(out)]) == 0
    return out, snapshot(out)


def test_a_run_lists_its_files_in_run_json(old_inspect):
    out, _ = old_inspect
    record = verify_run_folder(out)
    assert record["command"] == "inspect"
    assert record["argv"] == [*INSPECT, "--seed", "0", "--out", str(out)]
    assert set(record["files"]) == {"spec.csv", "usage.csv", "wavelengths.html", "usage.html"}
    assert leftovers(out) == []


def test_rerun_without_overwrite_is_refused_and_changes_nothing(old_inspect, capsys):
    out, before = old_inspect
    capsys.readouterr()
    assert main([*INSPECT, "--seed", "1", "--out", str(out)]) == 2
    line = one_line(capsys)
    assert line.startswith(
        f"rope-behavior inspect: error: --out {str(out)!r} already holds an inspect run, finished "
    )
    assert "pass --overwrite to replace it, or choose another --out" in line
    assert snapshot(out) == before
    assert leftovers(out) == []


def test_overwrite_replaces_the_whole_set(old_inspect):
    out, before = old_inspect
    (out / "usage.html").unlink()  # even an incomplete old run is replaced as a whole
    assert main([*INSPECT, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    record = verify_run_folder(out)
    assert record["argv"][-3:] == ["--out", str(out), "--overwrite"]
    assert snapshot(out)["usage.csv"] != before["usage.csv"]
    assert leftovers(out) == []


def _interrupt_writes_after(monkeypatch, k):
    real = RunFolder.write
    count = []

    def write(self, name, writer):
        if len(count) == k:
            raise KeyboardInterrupt
        count.append(name)
        return real(self, name, writer)

    monkeypatch.setattr(RunFolder, "write", write)
    return count


def _old_or_new(out, before, new_argv):
    """The folder holds exactly the old set, or exactly (and completely) the new one."""
    now = snapshot(out)
    if now == before:
        return "old"
    assert verify_run_folder(out)["argv"] == new_argv
    return "new"


@pytest.mark.parametrize("args", [INSPECT, ANALYZE], ids=["inspect", "analyze"])
def test_an_interrupt_after_any_number_of_files_leaves_the_old_set(tmp_path, capsys, args):
    out = tmp_path / "o"
    assert main([*args, "--seed", "0", "--out", str(out)]) == 0
    before = snapshot(out)
    n_files = len(before)  # files + run.json: one write each
    new = [*args, "--seed", "1", "--out", str(out), "--overwrite"]
    seen = []
    for k in range(n_files + 1):
        with pytest.MonkeyPatch.context() as mp:
            written = _interrupt_writes_after(mp, k)
            code = main(new)
        seen.append(_old_or_new(out, before, new))
        assert code == (130 if k < n_files else 0), k
        assert len(written) == min(k, n_files)
        assert leftovers(out) == []
        if seen[-1] == "new":
            break
    assert seen == ["old"] * n_files + ["new"]
    capsys.readouterr()


def _interrupt_renames_at(monkeypatch, j, exc=KeyboardInterrupt):
    real = outputs._rename
    calls = []

    def rename(src, dst):
        calls.append((src.name, dst.name))
        if len(calls) == j + 1:
            raise exc
        real(src, dst)

    monkeypatch.setattr(outputs, "_rename", rename)
    return calls


def test_an_interrupt_at_any_step_of_the_swap_is_rolled_back(old_inspect, capsys):
    out, before = old_inspect
    new = [*INSPECT, "--seed", "1", "--out", str(out), "--overwrite"]
    states = []
    for j in range(4):
        with pytest.MonkeyPatch.context() as mp:
            calls = _interrupt_renames_at(mp, j)
            code = main(new)
        states.append(_old_or_new(out, before, new))
        assert code == (130 if states[-1] == "old" else 0)
        assert leftovers(out) == []
        if states[-1] == "new":
            assert len(calls) == 3  # journal, old -> backup, staging -> folder
            break
    assert states == ["old", "old", "old", "new"]
    capsys.readouterr()


class Killed(BaseException):
    """A process killed mid-swap: no rollback, no cleanup."""


@pytest.mark.parametrize("step", range(4))
def test_a_run_killed_mid_swap_is_cleared_by_the_next_run(old_inspect, capsys, step):
    out, before = old_inspect
    new = [*INSPECT, "--seed", "1", "--out", str(out), "--overwrite"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outputs, "_undo", lambda parent, journal: "")
        mp.setattr(RunFolder, "discard", lambda self: None)
        if step < 3:  # the journal, the old folder to its backup, the new one into place
            _interrupt_renames_at(mp, step, Killed)
        else:  # after the swap, while removing the backup
            mp.setattr(outputs, "_remove", lambda path: (_ for _ in ()).throw(Killed()))
        with pytest.raises(Killed):
            main(new)
    assert leftovers(out)  # what a killed run leaves: the staging folder and journal ...
    assert main([*INSPECT, "--seed", "2", "--out", str(out)]) == 2  # refused: a run is there
    printed = capsys.readouterr()
    assert "rope-behavior: o: " in printed.out or "removed .o.tmp-" in printed.out
    assert "already holds an inspect run" in printed.err
    state = _old_or_new(out, before, new)
    assert state == ("new" if step >= 3 else "old")
    assert leftovers(out) == []


def test_leftovers_of_killed_runs_are_cleared_and_said(tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / ".o.tmp-999999").mkdir()
    (tmp_path / ".o.tmp-999999" / "spec.csv").write_text("half")
    (tmp_path / ".o.old-999998").mkdir()  # a backup whose folder is gone: it is restored
    (tmp_path / ".o.old-999998" / "spec.csv").write_text("previous run")
    (tmp_path / ".o.lock").write_text("999999\n")  # a dead run's lock file
    assert main([*INSPECT, "--out", str(out)]) == 2  # the restored run is not overwritten
    printed = capsys.readouterr()
    assert "removed .o.tmp-999999, the unfinished output of a run that was killed" in printed.out
    assert "restored o from .o.old-999998, left by a killed run" in printed.out
    assert (out / "spec.csv").read_text() == "previous run"
    assert leftovers(out) == []
    assert main([*INSPECT, "--out", str(out), "--overwrite"]) == 0
    verify_run_folder(out)


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys, extra):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "heads.csv").write_text("mine too")
    assert main([*INSPECT, "--out", str(out), *extra]) == 2
    line = one_line(capsys)
    assert (
        f"--out {str(out)!r} holds files that are not a rope-behavior run ('notes.txt', 'heads.csv')"
        in line
    )
    assert snapshot(out) == {"heads.csv": b"mine too", "notes.txt": b"keep me"}
    assert leftovers(out) == []


def test_a_file_added_to_a_run_folder_protects_it_from_overwrite(old_inspect, capsys):
    out, before = old_inspect
    (out / "my-notes.md").write_text("notes")
    assert main([*INSPECT, "--out", str(out), "--overwrite"]) == 2
    assert "'my-notes.md'" in one_line(capsys)
    assert snapshot(out) == {**before, "my-notes.md": b"notes"}


def test_an_older_versions_run_is_recognised(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    for name in ("report.html", "heads.csv", "summary.json"):  # analyze, before run.json
        (out / name).write_text(name)
    assert main([*INSPECT, "--out", str(out)]) == 2
    assert "already holds an analyze run" in one_line(capsys)
    assert main([*INSPECT, "--out", str(out), "--overwrite"]) == 0
    assert set(snapshot(out)) == {
        "spec.csv",
        "usage.csv",
        "wavelengths.html",
        "usage.html",
        "run.json",
    }


@pytest.mark.parametrize(("out", "match"), [
    ("afile", "--out 'afile' cannot be written: it is a file"),
    ("afile/sub", "--out 'afile/sub' cannot be written: cannot create its folder"),
    (".", "--out '.' is the current folder or one above it"),
    ("..", "--out '..' is the current folder or one above it"),
    ("", "--out '' is empty"),
    ("/", "--out '/' is the current folder or one above it"),
])  # fmt: skip
def test_out_paths_that_cannot_hold_a_run_are_refused(tmp_path, monkeypatch, capsys, out, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main([*INSPECT, "--out", out]) == 2
    assert match in one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.skipif(
    os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere"
)
def test_an_unwritable_parent_is_refused(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        assert main([*INSPECT, "--out", str(tmp_path / "o")]) == 2
    finally:
        tmp_path.chmod(0o700)
    assert "cannot be written: cannot lock it (Permission denied" in one_line(capsys)


def test_an_empty_or_new_nested_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    assert main([*INSPECT, "--out", str(tmp_path / "empty")]) == 0
    assert main([*INSPECT, "--out", str(tmp_path / "a" / "b" / "c")]) == 0
    verify_run_folder(tmp_path / "empty")
    verify_run_folder(tmp_path / "a" / "b" / "c")


def test_a_failed_run_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "new" / "deep"
    assert main(["inspect", str(tmp_path / "no-such-model"), "--out", str(out)]) == 2
    one_line(capsys)
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_a_second_run_into_a_folder_in_use_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "o"
    with run_folder(out, command="inspect") as held:
        held.write_text("spec.csv", "held")
        assert main([*INSPECT, "--out", str(out)]) == 2
        line = one_line(capsys)
        assert (
            f"--out {str(out)!r} is being written by another rope-behavior run (pid {os.getpid()})"
            in line
        )
    assert snapshot(out)["spec.csv"] == b"held"
    assert leftovers(out) == []


def test_concurrent_processes_into_one_folder(tmp_path):
    """Two runs started together: one writes the folder, the other is refused (in use, or
    already written), and the folder holds one complete run."""
    out = tmp_path / "o"
    runs = [subprocess.Popen([*CLI, *INSPECT, "--seed", str(i), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]  # fmt: skip
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for code, e in results if code == 2).strip().splitlines()
    assert len(err) == 1
    assert "being written by another rope-behavior run" in err[0] or "already holds" in err[0]
    verify_run_folder(out)
    assert leftovers(out) == []


def test_ctrl_c_in_a_fresh_process_leaves_the_old_set(old_inspect, tmp_path):
    out, before = old_inspect
    run = subprocess.Popen([*CLI, *INSPECT, "--seed", "1", "--out", str(out), "--overwrite"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not list(tmp_path.glob(".o.tmp-*/spec.csv")) and run.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGINT)
    code = run.wait(timeout=120)
    err = run.stderr.read()
    if code == 130:
        assert err.strip().splitlines() == ["rope-behavior: interrupted"]
        assert snapshot(out) == before
    else:  # it finished before the signal arrived
        assert code == 0
        verify_run_folder(out)
    assert leftovers(out) == []


def test_sweep_resumes_its_own_store_and_refuses_another_sweep(tmp_path, capsys):
    out = tmp_path / "sw"
    assert main([*SWEEP, "--out", str(out)]) == 0
    first = snapshot(out)
    chunks = {k: v for k, v in first.items() if k.startswith("store/chunks/")}
    assert chunks
    assert main([*SWEEP, "--out", str(out)]) == 0  # the same sweep: resumed (nothing to do)
    again = snapshot(out)
    assert {k: v for k, v in again.items() if k.startswith("store/")} == {
        k: v for k, v in first.items() if k.startswith("store/")
    }
    assert again["sweep.csv"] == first["sweep.csv"]
    verify_run_folder(out)
    capsys.readouterr()
    assert main([*SWEEP, "--bands", "2", "--out", str(out)]) == 2
    assert "already holds a sweep run with other settings (differs in: bands)" in one_line(capsys)
    assert snapshot(out) == again
    assert main([*SWEEP, "--bands", "2", "--out", str(out), "--overwrite"]) == 0
    record = verify_run_folder(out)
    assert record["settings"]["bands"] == 2
    assert (
        json.loads((out / "store" / "manifest.json").read_text())["description"]
        != json.loads(first["store/manifest.json"])["description"]
    )
    capsys.readouterr()
    assert main(["analyze", "--out", str(out)]) == 2
    assert "already holds a sweep run" in one_line(capsys)


def test_sweep_interrupted_at_any_step_of_the_swap_keeps_its_store(tmp_path, capsys):
    """The resumed store is carried from the old folder into the new one at the swap;
    an interrupt at any step leaves the old set whole, the store included."""
    out = tmp_path / "sw"
    assert main([*SWEEP, "--out", str(out)]) == 0
    before = snapshot(out)
    states = []
    for j in range(5):
        with pytest.MonkeyPatch.context() as mp:
            calls = _interrupt_renames_at(mp, j)
            code = main([*SWEEP, "--out", str(out)])
        now = snapshot(out)
        states.append("old" if now == before else "new")
        assert code == (130 if states[-1] == "old" else 0)
        if states[-1] == "new":
            assert [c[1] for c in calls][2] == "store"  # journal, folder -> backup, store, swap
            verify_run_folder(out)
            break
    assert states == ["old"] * 4 + ["new"]
    assert leftovers(out) == []
    capsys.readouterr()


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch, capsys):
    from rope_behavior.runtime import store

    out = tmp_path / "sw"

    def write(self, *a, **k):  # Ctrl-C before the first chunk is stored
        raise KeyboardInterrupt

    monkeypatch.setattr(store.SweepStore, "write", write)
    assert main([*SWEEP, "--bands", "high,mid,low,pair:0", "--out", str(out)]) == 130
    monkeypatch.undo()
    kept = snapshot(out)
    assert set(kept) >= {"store/manifest.json"}
    assert "run.json" not in kept  # unfinished: no run.json, the store stays to resume
    assert main([*SWEEP, "--bands", "high,mid,low,pair:0", "--out", str(out)]) == 0
    verify_run_folder(out)
    resumed = json.loads((out / "store" / "manifest.json").read_text())
    assert resumed["fingerprint"] == json.loads(kept["store/manifest.json"])["fingerprint"]
    assert resumed["complete"] is True
    capsys.readouterr()


def test_a_long_folder_name_works(tmp_path):
    out = tmp_path / ("x" * 250)  # a valid name; its sidecars (.NAME.tmp-PID) would not be
    assert main([*INSPECT, "--out", str(out)]) == 0
    verify_run_folder(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_a_symlinked_folder_is_replaced_where_it_points(tmp_path):
    real = tmp_path / "disk" / "real"
    real.parent.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)  # dangling until the first run
    assert main([*INSPECT, "--out", str(link)]) == 0
    assert main([*INSPECT, "--seed", "1", "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink()
    assert verify_run_folder(real)["argv"][-1] == "--overwrite"
    assert sorted(p.name for p in real.parent.iterdir()) == ["real"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_a_folder_where_nothing_can_be_written_is_refused(capsys):
    assert main([*INSPECT, "--out", "/proc/rope-behavior-out"]) == 2
    assert "--out '/proc/rope-behavior-out' cannot be written" in one_line(capsys)


def test_sigterm_leaves_the_old_set(old_inspect, tmp_path):
    out, before = old_inspect
    run = subprocess.Popen([*CLI, *INSPECT, "--seed", "1", "--out", str(out), "--overwrite"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while not list(tmp_path.glob(".o.tmp-*/spec.csv")) and run.poll() is None:
        assert time.time() < deadline
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)
    code = run.wait(timeout=120)
    if code == 130:
        assert run.stderr.read().strip().splitlines() == ["rope-behavior: interrupted"]
        assert snapshot(out) == before
    else:
        assert code == 0
        verify_run_folder(out)
    assert leftovers(out) == []


def test_git_ignores_the_default_folders_and_a_killed_runs_leftovers():
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["rope-behavior-demo/", "rope-behavior-analyze/", "rope-behavior-sweep/",
             ".rope-behavior-demo.tmp-1234/", ".rope-behavior-demo.old-1234/",
             ".rope-behavior-demo.commit.json", ".rope-behavior-demo.lock"]  # fmt: skip
    run = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root,
                         capture_output=True, text=True)  # fmt: skip
    assert sorted(run.stdout.split()) == sorted(names)


def test_a_full_disk_mid_run_leaves_the_old_set(old_inspect, monkeypatch, capsys):
    import errno

    out, before = old_inspect
    real = RunFolder.write

    def write(self, name, writer):
        if len(self.written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path(name)))
        return real(self, name, writer)

    monkeypatch.setattr(RunFolder, "write", write)
    capsys.readouterr()
    assert main([*INSPECT, "--seed", "1", "--out", str(out), "--overwrite"]) == 2
    line = one_line(capsys)
    assert line.startswith(
        "rope-behavior inspect: error: OSError: [Errno 28] No space left on device"
    )
    assert snapshot(out) == before
    assert leftovers(out) == []


@pytest.mark.parametrize("name", ["x[1]*?", "ü name with spaces", "-dash"])
def test_odd_folder_names(tmp_path, name):
    out = tmp_path / name
    (tmp_path / f".{name}.tmp-999999").mkdir()  # a killed run's staging folder of this name
    assert main([*INSPECT, f"--out={out}"]) == 0
    assert main([*INSPECT, "--seed", "1", f"--out={out}", "--overwrite"]) == 0
    assert verify_run_folder(out)["argv"][-1] == "--overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_recovery_clears_only_its_own_folders_leftovers(tmp_path, capsys):
    """A run into 'o' clears '.o.tmp-PID', not '.o.tmp-1.tmp-PID' (the staging folder of a
    run into 'o.tmp-1', which may be running now)."""
    other = tmp_path / ".o.tmp-1.tmp-999999"
    other.mkdir()
    (tmp_path / ".o.tmp-999999").mkdir()
    assert main([*INSPECT, "--out", str(tmp_path / "o")]) == 0
    assert other.is_dir()
    assert not (tmp_path / ".o.tmp-999999").exists()
    assert "removed .o.tmp-999999" in capsys.readouterr().out
