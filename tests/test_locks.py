"""Per-run locks (also across a kill -9 and forked children), and exclusive locks between processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from medseg_bench.locks import RunLock, is_locked


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert not is_locked(tmp_path)
    assert first.acquire()
    assert is_locked(tmp_path) and not second.acquire()
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    first.release()
    assert not is_locked(tmp_path) and second.acquire()
    second.release()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from medseg_bench.locks import RunLock; "
            "assert RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path) and not RunLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock = RunLock(tmp_path)
        assert lock.acquire()  # no stale-lock cleanup needed: the kernel dropped it
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_forked_child_does_not_keep_a_killed_parents_lock(tmp_path: Path) -> None:
    # DataLoader workers are forked while a run's lock is held; they used to hold it for ~5 s after the
    # sweep was killed, so an immediate rerun skipped the run as "running in another process".
    code = ("import os, sys, time; from pathlib import Path; from medseg_bench.locks import RunLock\n"
            "assert RunLock(Path(sys.argv[1])).acquire()\n"
            "child = os.fork()\n"
            "if child == 0:\n    os.write(1, b'child ready\\n'); time.sleep(60); os._exit(0)\n"
            "os.write(1, f'{child}\\n'.encode()); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert holder.stdout is not None
        # both lines, in either order: the child has run its fork handler (which closes its copy of the lock)
        # once it prints; killing the parent before that left the lock held a moment longer on a busy machine.
        # One os.write a line: print() could interleave the two ("11493child ready", then the newline).
        lines = [holder.stdout.readline().strip() for _ in range(2)]
        child = int(next(line for line in lines if line.isdigit()))
        assert is_locked(tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child lives on
        assert not is_locked(tmp_path) and RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_probe_does_not_make_a_real_attempt_fail(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            is_locked(tmp_path)

    (tmp_path / ".lock").touch()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(200):
            lock = RunLock(tmp_path)
            assert lock.acquire()
            lock.release()
    finally:
        stop.set()
        prober.join()


def test_exclusive_serialises_processes(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from medseg_bench.locks import exclusive\n"
            "with exclusive(Path(sys.argv[1])):\n"
            "    open(sys.argv[2], 'a').write('in\\n'); time.sleep(0.3)\n"
            "    open(sys.argv[2], 'a').write('out\\n')")
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d"), str(log)]) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    assert log.read_text().split() == ["in", "out"] * 3  # never two inside at once
