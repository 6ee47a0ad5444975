"""SIGTERM and SIGHUP stop any command exactly as Ctrl-C does (`cli/app.py` wraps every command; a sweep's
workers too).

Without this, SIGTERM killed the local launcher outright (its `--jobs` workers trained on, orphaned), and
inside a training run Lightning only noted it and stopped after the current batch, as a plain `exit`.
`interruptible()` makes SIGINT, SIGTERM and SIGHUP (a terminal that closed: until 2026-12-04 it killed a sweep
as kill -9 does) raise KeyboardInterrupt in the main thread at once (Lightning's
own SIGTERM handler calls ours), so every `finally` runs: the run in progress records `interrupted` and
keeps its last checkpoint, locks are released, worker processes are terminated. `received()` then tells
the command which signal it was, for its exit code (128 + the signal number, as a shell reports it).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from medseg_bench.errors import exception_chain

# SIGHUP: the terminal closed (an ssh connection dropped); ignored where it is (`nohup`), see `interruptible`
_SIGHUP: int | None = getattr(signal, "SIGHUP", None)  # none on Windows
STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, *([_SIGHUP] if _SIGHUP is not None else []))
_received: list[int] = []
_deferring = {"depth": 0, "pending": False}


def received() -> int | None:
    """The first stop signal received inside `interruptible()`, or None."""
    return _received[0] if _received else None


def _stop(signum: int, frame: FrameType | None) -> None:
    if _received:  # already stopping: let the clean-up finish (it is bounded; see local._stop_workers)
        return
    _received.append(signum)
    if _deferring["depth"]:
        _deferring["pending"] = True  # raised when the `deferred()` block ends
        return
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _hung_up(signum: int, frame: FrameType | None) -> None:
    """SIGHUP: the terminal is gone, so stdout and stderr, where they were it, are pointed at /dev/null (a
    write to a closed terminal fails with EIO) before the stop; where they are files (`> sweep.log`), the
    stop's line still goes there."""
    for stream in (sys.stdout, sys.stderr):  # also in the clean-up of an earlier stop, which writes on
        try:
            if stream is not None and os.isatty(stream.fileno()):
                stream_to_devnull(stream)
        except (OSError, ValueError, AttributeError):  # closed, or no file descriptor
            pass
    _stop(signum, frame)


@contextmanager
def deferred() -> Iterator[None]:
    """A stop signal that arrives within the block takes effect when the block ends: for bookkeeping that
    must not be cut in two (a run's last event, a started worker not yet recorded). Python runs signal
    handlers in the main thread only, so this holds whichever thread the kernel delivered the signal to."""
    depth = _deferring["depth"]
    _deferring["depth"] = depth + 1
    try:
        yield
    finally:
        _deferring["depth"] = depth  # restored, not decremented: an interrupted `undeferred` cannot skew it
        if not _deferring["depth"] and _deferring["pending"]:
            _deferring["pending"] = False
            raise KeyboardInterrupt(signal.Signals(_received[0]).name)


@contextmanager
def undeferred() -> Iterator[None]:
    """Within a `deferred()` block, the long work its bookkeeping surrounds: a stop signal takes effect at
    once again (one that arrived earlier in the `deferred()` block, right away). The deferral resumes after
    it, so a signal landing just as the work ends waits for the bookkeeping."""
    depth = _deferring["depth"]
    _deferring["depth"] = 0
    try:
        if _deferring["pending"]:
            _deferring["pending"] = False
            raise KeyboardInterrupt(signal.Signals(_received[0]).name)
        yield
    finally:
        _deferring["depth"] = depth


@contextmanager
def interruptible(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP (or `signums`) raise KeyboardInterrupt (the first one;
    later ones are ignored while the clean-up runs). The previous handlers are restored afterwards. A SIGHUP
    the process ignores (started under `nohup`) stays ignored."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    _received.clear()
    _deferring.update(depth=0, pending=False)
    previous = {signum: signal.getsignal(signum) for signum in signums
                if not (signum == _SIGHUP and signal.getsignal(signum) == signal.SIG_IGN)}
    for signum in previous:
        signal.signal(signum, _hung_up if signum == _SIGHUP else _stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null: its reader has gone, and no later write (the interpreter's flush at exit
    among them) may fail again."""
    stream_to_devnull(sys.stdout)


def stream_to_devnull(stream: TextIO) -> None:
    """Point `stream`'s file descriptor at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def pipe_closed() -> None:
    """The reader of stdout has gone (`medseg-bench sweep | head -3`): stdout is pointed at /dev/null, so no
    later write fails, and the command stops as SIGPIPE stops `cat`, but through the clean-up Ctrl-C gets
    (inside `interruptible()`: a run in progress records `interrupted` and keeps its checkpoint; `received()`
    then says SIGPIPE, exit 141). rich's own reaction, SystemExit(1), left a sweep's run as a killed one and
    exited 1 without a word; a BrokenPipeError raised in a training callback would have failed the run."""
    stdout_to_devnull()
    if signal.getsignal(signal.SIGINT) is not _stop:  # outside `interruptible()`: an error as any other
        raise BrokenPipeError(32, "Broken pipe")
    _stop(signal.SIGPIPE, None)


def caused_by_stop(exc: BaseException) -> bool:
    """Whether `exc` is a stop signal's KeyboardInterrupt, or an exception raised while one unwound: a
    `torch.save` cut by the signal mid-write raises RuntimeError ("unexpected pos") from its zip writer's
    clean-up in the KeyboardInterrupt's place (once, a SIGTERM during a checkpoint save marked a run failed,
    not interrupted). Only after a stop signal: without one, an exception is a failure of its own."""
    # `raise ... from None` handled the interruption on purpose: what it raised is its own
    return received() is not None and any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc))


def is_stop(exc: BaseException) -> bool:
    """Whether `exc` means "stop as the signal asked": a KeyboardInterrupt (Ctrl-C or our handler), or, after
    a stop signal, Lightning's `exit(1)` for one or an exception raised while one unwound (`caused_by_stop`).
    """
    return isinstance(exc, KeyboardInterrupt) or (
        received() is not None and (isinstance(exc, SystemExit) or caused_by_stop(exc)))


def stop_reason(exc: BaseException) -> str:
    """What to record in the run's `interrupted` event: the signal's name, else the exception's type."""
    signum = received()
    return signal.Signals(signum).name if signum is not None else type(exc).__name__


def exit_now(code: int) -> None:
    """Run the exit handlers (logging, multiprocessing), flush, and leave without the interpreter's own
    teardown (with torch and MONAI loaded it takes seconds on a busy machine): used after an interruption,
    once every file is written and every lock and child process released."""
    try:
        atexit._run_exitfuncs()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
