"""What keeps two runs out of one folder, and Ctrl-C out of a folder swap
(:mod:`rope_behavior.cli.outputs`): an exclusive lock file beside the folder and a block
that holds SIGINT off until it ends."""

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from rope_behavior.errors import RopeBehaviorError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: filelock below
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderLock", "sigint_deferred"]


class FolderLock:
    """An exclusive lock on ``path`` (flock where there is one; the file is removed on
    release, so a run leaves nothing behind)."""

    def __init__(self, path: Path, shown: str) -> None:
        self.path, self.shown, self.fd, self._other = path, shown, -1, None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            import filelock

            self._other = filelock.FileLock(self.path, timeout=0)
            try:
                return self._other.acquire()  # type: ignore[no-any-return]
            except filelock.Timeout:
                raise self._busy("") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise self._busy(holder) from None
            with contextlib.suppress(FileNotFoundError):  # not removed by the last holder
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self.fd = fd
                    return
            os.close(fd)

    def _busy(self, holder: str) -> RopeBehaviorError:
        who = f" (pid {holder})" if holder.isdigit() else ""
        return RopeBehaviorError(
            f"--out {self.shown!r} is being written by another rope-behavior run{who}; wait "
            "for it to end, or choose another --out"
        )

    def release(self) -> None:
        if self._other is not None:  # pragma: no cover
            self._other.release()
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while held: a waiter then sees another inode, retries
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C off for the block (main thread only) and deliver it afterwards."""
    old = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or old is None:
        yield
        return
    got: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        raise KeyboardInterrupt
