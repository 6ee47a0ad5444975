"""Per-run locks: `fcntl.flock` on `<run folder>/.lock`, so two sweeps never train the same run at once.

The kernel drops a flock when its holder dies (kill -9 included), so a lock from a dead process never needs
cleaning up: the next sweep simply gets it. The file itself stays; it holds the holder's pid and host for
people. On NFS, Linux emulates flock with POSIX locks, which the server releases when a client's lease ends.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"
# A probe (`is_locked`) holds a shared lock for an instant; a real attempt that meets it retries this long.
ACQUIRE_RETRY_S = 0.25

_held_fds: set[int] = set()  # descriptors of the run locks this process holds


def _forget_in_child() -> None:
    """In a forked child (DataLoader workers), close inherited run-lock descriptors without unlocking: the
    lock stays the parent's, and when the parent dies (kill -9) it is free at once, not when the children
    notice (about 5 s later, long enough for a rerun to skip the run as busy)."""
    for fd in _held_fds:
        try:
            os.close(fd)  # never flock(LOCK_UN) here: the lock belongs to the shared open file
        except OSError:
            pass
    _held_fds.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """A non-blocking exclusive lock on `folder/.lock`: `acquire()` returns False if someone holds it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self._fd: int | None = None
        self._pid = 0  # the process that holds it (a forked child holds nothing: see _forget_in_child)

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + ACQUIRE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # held, not just probed
                    os.close(fd)
                    return False
                time.sleep(0.02)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd, self._pid = fd, os.getpid()
        _held_fds.add(fd)
        return True

    def release(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            _held_fds.discard(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

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
        _lock_waiting(fd, on_wait)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _lock_waiting(fd: int, on_wait: Callable[[], object] | None) -> None:
    """A blocking exclusive flock on `fd`; `on_wait` is called first when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if on_wait is not None:
            on_wait()
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextmanager
def exclusive_folder(folder: Path, on_wait: Callable[[], object] | None = None) -> Iterator[None]:
    """`exclusive`, with the flock on `folder` itself: nothing is left in a folder that holds a user's files
    (predict's --out) or that tests list (the results dir). Where the file system cannot lock a folder
    (NFS emulates flock with POSIX locks, which a folder opened for reading cannot take), the block runs
    unguarded, as before there was a lock."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        try:
            _lock_waiting(fd, on_wait)
        except OSError:  # not BlockingIOError (that one waits): a file system that cannot lock a folder
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock
