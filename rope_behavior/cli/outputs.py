"""Run folders written all at once: every command that writes files writes them through here.

A run writes its whole set of files into a staging folder next to ``--out`` (the same
parent, so the same filesystem), lists them in ``run.json``, and then swaps it into place::

    .NAME.commit.json                   written first: what the swap does (the journal)
    NAME -> .NAME.old-PID               the previous run, when there is one
    .NAME.old-PID/x -> .NAME.tmp-PID/x  entries continued in place (the sweep's store)
    .NAME.tmp-PID -> NAME               the new run, complete
    rm -r .NAME.old-PID; rm .NAME.commit.json

``NAME`` so holds the complete old set or the complete new set at every moment (between
the first and the last rename it is absent and the old set waits, whole, under its backup
name). Ctrl-C is held off during the swap and any error rolls it back; a run killed there
is rolled back (or finished) from the journal by the next run into ``NAME``, which also
removes a killed run's staging folder. One run at a time per folder: ``.NAME.lock`` in
the parent (flock, removed at the end).

A folder that holds another run's files (a ``run.json``, or only files rope-behavior
writes) is refused unless ``overwrite``; one that holds anything else is never replaced.
"""

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rope_behavior.cli.folder_lock import FolderLock, sigint_deferred
from rope_behavior.errors import RopeBehaviorError

__all__ = [
    "MANIFEST",
    "OUTPUTS",
    "RunFolder",
    "run_folder",
    "run_folder_for",
    "verify_run_folder",
]

MANIFEST = "run.json"
OUTPUTS: dict[str, frozenset[str]] = {  # what each command writes (to recognise old runs)
    "analyze": frozenset({"report.html", "heads.csv", "usage.csv", "correspondence.csv",
                          "summary.json"}),
    "demo": frozenset({"report.html", "heads.csv", "usage.csv", "correspondence.csv",
                       "summary.json", "toy_plane.csv", "sweep.csv"}),
    "sweep": frozenset({"sweep.csv", "sweep.html", "store"}),
    "inspect": frozenset({"spec.csv", "usage.csv", "wavelengths.html", "usage.html"}),
    "scores": frozenset({"scores.csv", "plane.csv", "correspondence.csv", "plane.html"}),
    "tasks": frozenset({"results.csv", "by_position.csv", "plane.csv", "plane.html",
                        "accuracy_vs_pair.html", "accuracy_by_position.html"}),
}  # fmt: skip
_LEFTOVER = re.compile(r"^\.[^/]+\.tmp$|^\.rope_behavior_probe$")  # older versions' temporaries


def _rename(src: Path, dst: Path) -> None:
    """Every rename of a swap goes through here (atomic on POSIX within one filesystem)."""
    os.replace(src, dst)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _undo(parent: Path, journal: Path) -> str:
    """Finish or roll back the swap ``journal`` describes; say which."""
    j = _read_json(journal) or {}
    target = parent / str(j.get("target", ""))
    staging = parent / str(j.get("staging", ""))
    backup = parent / str(j.get("backup", ""))
    done = "finished an interrupted swap"
    if j.get("staging") and staging.is_dir():  # the new set never reached NAME: roll back
        for name in j.get("carry", []):
            if backup.is_dir() and (staging / name).exists() and not (backup / name).exists():
                _rename(staging / name, backup / name)
        if j.get("backup") and backup.is_dir() and not target.exists():
            _rename(backup, target)
        _remove(staging)
        done = "rolled back an interrupted swap (the previous run is in place)"
    elif j.get("backup") and backup.is_dir():
        _remove(backup)
    journal.unlink(missing_ok=True)
    return done


def _stem(name: str) -> str:
    """``name``, or a shorter stand-in whose sidecar names (``.STEM.commit.json.tmp``)
    still fit in a file name."""
    if len(name.encode()) <= 200:
        return name
    return f"{name[:40]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def _recover(parent: Path, target: str, say: Callable[[str], None]) -> None:
    """Clear what a killed run into ``parent/target`` left (the caller holds the lock)."""
    name = _stem(target)
    journal = parent / f".{name}.commit.json"
    if journal.exists():
        say(f"rope-behavior: {target}: {_undo(parent, journal)}")
    (parent / f".{name}.commit.json.tmp").unlink(missing_ok=True)
    stale = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-\d+")  # only this folder's
    found = sorted((m[1], p) for p in parent.iterdir() if (m := stale.fullmatch(p.name)))
    for p in (p for kind, p in found if kind == "tmp"):
        _remove(p)
        say(f"rope-behavior: removed {p.name}, the unfinished output of a run that was killed")
    for p in (p for kind, p in found if kind == "old"):
        if (parent / target).exists():
            _remove(p)
        else:
            _rename(p, parent / target)
            say(f"rope-behavior: restored {target} from {p.name}, left by a killed run")


def _files(root: Path, prefix: str = "") -> dict[str, dict[str, Any]]:
    """Every file under ``root``: relative path -> bytes and SHA-256."""
    out: dict[str, dict[str, Any]] = {}
    for p in sorted(root.rglob("*") if root.is_dir() else [root]):
        if p.is_file() and not p.name.endswith(".lock"):
            digest = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
            rel = p.relative_to(root).as_posix() if root.is_dir() else root.name
            out[f"{prefix}{rel}"] = {"bytes": p.stat().st_size, "sha256": digest.hexdigest()}
    return out


def verify_run_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` of a complete run folder, after checking that the folder holds
    exactly its files with their sizes and hashes (raises ``RopeBehaviorError`` if not)."""
    root = Path(path)
    record = _read_json(root / MANIFEST)
    if record is None or not isinstance(record.get("files"), dict):
        raise RopeBehaviorError(f"{str(root)!r} holds no readable {MANIFEST}")
    found = _files(root)
    found.pop(MANIFEST, None)
    if found != record["files"]:
        diff = sorted(set(found) ^ set(record["files"])) or [
            k for k in found if found[k] != record["files"][k]
        ]
        raise RopeBehaviorError(f"{str(root)!r} does not match its {MANIFEST}: {diff[:5]}")
    return record


class RunFolder:
    """The staging folder of one run into ``--out``: ``write`` puts files there (every
    write goes through it), :func:`run_folder` swaps it into place."""

    def __init__(
        self, out: str | os.PathLike[str], *, command: str, argv: Sequence[str] = (),
        overwrite: bool = False, settings: dict[str, Any] | None = None,
        keep: Sequence[str] = (), say: Callable[[str], None] = print,
    ) -> None:  # fmt: skip
        self.shown, self.command, self.argv = str(out), command, list(argv)
        self.settings = json.loads(json.dumps(settings or {}))  # as run.json will hold them
        self.target = self._resolve(out)
        self.parent, name, pid = self.target.parent, _stem(self.target.name), os.getpid()
        self.staging = self.parent / f".{name}.tmp-{pid}"
        self.backup = self.parent / f".{name}.old-{pid}"
        self.journal = self.parent / f".{name}.commit.json"
        self.written: list[str] = []
        self.committed = False
        self.created = [p for p in (self.target, *self.target.parents) if not p.exists()]
        self._lock = FolderLock(self.parent / f".{name}.lock", self.shown)
        self._cannot("create its folder", lambda: self.parent.mkdir(parents=True, exist_ok=True))
        self._cannot("lock it", self._lock.acquire)
        try:
            _recover(self.parent, self.target.name, say)
            self.keep = tuple(keep) if self._check(overwrite, keep) else ()
            self._cannot("create a staging folder next to it", self.staging.mkdir)
            if self.keep:
                self._cannot("create it", lambda: self.target.mkdir(exist_ok=True))
        except BaseException:
            self.release()
            raise

    def _resolve(self, out: str | os.PathLike[str]) -> Path:
        if not str(out).strip():
            raise RopeBehaviorError("--out '' is empty; expected a folder, e.g. --out runs/x")
        target = Path(out).expanduser().resolve()
        cwd = Path.cwd().resolve()
        if target == cwd or target in cwd.parents or target.parent == target:
            raise RopeBehaviorError(
                f"--out {self.shown!r} is the current folder or one above it; a run replaces "
                "its --out folder as a whole, so name a folder of its own, e.g. --out runs/x"
            )
        if target.exists() and not target.is_dir():
            raise RopeBehaviorError(f"--out {self.shown!r} cannot be written: it is a file")
        return target

    def _cannot(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise RopeBehaviorError(
                f"--out {self.shown!r} cannot be written: cannot {what} ({e.strerror or e}{where})"
            ) from None

    def _check(self, overwrite: bool, keep: Sequence[str]) -> bool:
        """Whether the run continues ``keep`` in ``--out`` itself (resuming); refuses
        another run's files without ``overwrite``, and other files always."""
        if not self.target.exists():
            return bool(keep)
        names = sorted(os.listdir(self.target))
        record = _read_json(self.target / MANIFEST) if MANIFEST in names else None
        if record is not None and isinstance(record.get("files"), dict):
            ours = {k.split("/")[0] for k in record["files"]} | {MANIFEST, *keep}
            command = record.get("command")
        else:  # an older version's run (no run.json): only files some command writes
            record = None
            found = sorted((len(k), c) for c, k in OUTPUTS.items() if {*names} - {MANIFEST} <= k)
            ours, command = (set(names) if found else set()), (found[0][1] if found else None)
        known = set().union(*OUTPUTS.values())
        foreign = [repr(n) for n in sorted(names, key=lambda n: n in known)
                   if n not in ours and not _LEFTOVER.match(n)]  # fmt: skip
        if foreign:
            raise RopeBehaviorError(
                f"--out {self.shown!r} holds files that are not a rope-behavior run "
                f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose an "
                "empty or new folder (--overwrite replaces only a run's own files)"
            )
        old = record.get("settings") or {} if record else self.settings  # none: the store judges
        changed = sorted(k for k in {*old, *self.settings} if old.get(k) != self.settings.get(k))
        if not names or overwrite or (keep and command == self.command and not changed):
            return bool(keep) and not overwrite
        what = f"{'an' if (command or 'x')[0] in 'aeiou' else 'a'} {command} run"
        if keep and command == self.command:
            what += f" with other settings (differs in: {', '.join(changed)})"
        when = f", finished {record['finished']}" if record and record.get("finished") else ""
        raise RopeBehaviorError(
            f"--out {self.shown!r} already holds {what if command else 'an earlier run'}{when}; "
            "pass --overwrite to replace it, or choose another --out"
        )

    def path(self, name: str) -> Path:
        """Where ``name`` goes in the staging folder (its subfolders created)."""
        path = self.staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def kept(self, name: str) -> Path:
        """Where the ``keep`` entry ``name`` lives: in ``--out`` itself when the run
        continues it there (resumable), else in the staging folder."""
        return self.target / name if name in self.keep else self.path(name)

    def write(self, name: str, writer: Callable[[Path], object]) -> Path:
        """Write the file ``name`` with ``writer(path)`` into the staging folder."""
        path = self.path(name)
        writer(path)
        self.written.append(name)
        return path

    def write_text(self, name: str, text: str) -> Path:
        return self.write(name, lambda p: p.write_text(text, encoding="utf-8"))

    def write_csv(self, name: str, frame: Any) -> Path:
        return self.write(name, lambda p: frame.to_csv(p, index=False))

    def write_html(self, name: str, fig: Any) -> Path:
        return self.write(name, lambda p: fig.write_html(p))

    def commit(self) -> None:
        """List the files in ``run.json`` and swap the staging folder into place."""
        files = _files(self.staging)
        for name in self.keep:
            files.update(_files(self.target / name, f"{name}/"))
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        from rope_behavior.cli.parsers import package_version

        record = {"rope_behavior": package_version(), "command": self.command,
                  "argv": self.argv, "settings": self.settings, "finished": now,
                  "files": dict(sorted(files.items()))}  # fmt: skip
        self.write_text(MANIFEST, json.dumps(record, indent=2) + "\n")
        for p in self.staging.rglob("*"):
            if p.is_file():
                _fsync(p)
        plan = {"target": self.target.name, "staging": self.staging.name,
                "backup": self.backup.name, "carry": list(self.keep)}  # fmt: skip
        with sigint_deferred():
            tmp = self.journal.with_name(self.journal.name + ".tmp")
            try:
                tmp.write_text(json.dumps(plan))
                _fsync(tmp)
                _rename(tmp, self.journal)
                if self.target.exists():
                    _rename(self.target, self.backup)
                for name in self.keep:
                    if (self.backup / name).exists():
                        _rename(self.backup / name, self.staging / name)
                _rename(self.staging, self.target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                if self.journal.exists():
                    _undo(self.parent, self.journal)
                raise
            self.committed = True
            _fsync(self.parent)
            _remove(self.backup)
            self.journal.unlink(missing_ok=True)

    def discard(self) -> None:
        """Remove the staging folder, and ``--out`` if this run created it and it is still
        empty (``--out`` as it was; a store continued in ``--out`` stays)."""
        if not self.committed:
            _remove(self.staging)
            if self.target in self.created:
                with contextlib.suppress(OSError):
                    self.target.rmdir()

    def release(self) -> None:
        """Discard an uncommitted run, unlock, and remove the parent folders this run
        created if they are empty."""
        self.discard()
        self._lock.release()
        for p in self.created if not self.committed else ():
            with contextlib.suppress(OSError):
                p.rmdir()


@contextlib.contextmanager
def run_folder(out: str | os.PathLike[str], **kwargs: Any) -> Iterator[RunFolder]:
    """A :class:`RunFolder` for ``--out`` (its keywords: ``command``, ``argv``,
    ``overwrite``, ``settings``, ``keep``, ``say``): the block writes the run's files into
    it; leaving the block normally puts them in place at once, an error or Ctrl-C drops
    them and leaves ``--out`` as it was. ``keep``: entries the run continues in ``--out``
    itself (the sweep's resumable store) unless ``overwrite``."""
    folder = RunFolder(out, **kwargs)
    try:
        yield folder
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    finally:
        folder.release()


def run_folder_for(
    args: Any, *, settings: dict[str, Any] | None = None, keep: Sequence[str] = ()
) -> contextlib.AbstractContextManager[RunFolder | None]:
    """:func:`run_folder` for a command's parsed ``args`` (``--out``, ``--overwrite``, the
    command and its argv); ``None`` in the block when the command was given no ``--out``."""
    if getattr(args, "out", None) is None:
        return contextlib.nullcontext()
    return run_folder(args.out, command=args.command, argv=getattr(args, "argv", ()),
                      overwrite=bool(getattr(args, "overwrite", False)), settings=settings,
                      keep=keep)  # fmt: skip
