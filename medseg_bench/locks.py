"""Per-run locks: `fcntl.flock` on `<run folder>/.lock`, so two sweeps never train the same run at once.

The kernel drops a flock when its holder dies (kill -9 included), so a lock from a dead process never needs
cleaning up: the next sweep simply gets it. The file itself stays; it holds the holder's pid and host for
people. On NFS, Linux emulates flock with POSIX locks, which the server releases when a client's lease ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class RunLock:
    """A non-blocking exclusive lock on `folder/.lock`: `acquire()` returns False if someone holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def is_locked(folder: Path) -> bool:
    """True when a live process (this one included, through another RunLock) holds `folder`'s lock."""
    path = folder / LOCK_NAME
    if not path.is_file():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


@contextmanager
def exclusive(folder: Path, name: str = LOCK_NAME, on_wait: Callable[[], object] | None = None
              ) -> Iterator[None]:
    """Hold a blocking flock on `folder/name` for the block: for work that several processes may start at
    once and only one may do (building a task's cache, fetching a task); the others wait, then find it done.
    `on_wait` is called once when another process holds the lock (to say why we wait)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:  # a read-only data dir: nobody can build anything there, so there is nothing to guard
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
