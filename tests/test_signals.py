"""SIGHUP, a terminal that closed, as a stop signal (`signals.interruptible`); the SIGTERM and SIGINT cases,
with real sweeps, are in tests/faults/test_sigterm.py."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Inside `interruptible()`, the process hangs itself up; what it writes after the stop shows where its
# streams went, and the file argv[1] names says what stopped it.
CHILD = """
import os, signal, sys, time
from medseg_bench import signals
# as a terminal starts it, or (with an argument more) as `nohup` does, whatever the test runner inherited
signal.signal(signal.SIGHUP, signal.SIG_IGN if len(sys.argv) > 2 else signal.SIG_DFL)
try:
    with signals.interruptible():
        print("before", flush=True)
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.5)
        print("went on", flush=True)
except KeyboardInterrupt:
    print("after the stop", flush=True)
    print("after the stop", file=sys.stderr, flush=True)
    with open(sys.argv[1], "w") as out:
        out.write(str(signals.received()))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_hang_up_stops_as_ctrl_c_and_the_gone_terminal_is_not_written_to(tmp_path: Path) -> None:
    said = tmp_path / "received"
    main, terminal = pty.openpty()
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(said)], stdin=terminal, stdout=terminal,
                                 stderr=terminal, env=_env())
        os.close(terminal)
        seen = b""
        while True:
            ready, _, _ = select.select([main], [], [], 30)
            assert ready, f"no output from the child: {seen!r}"
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: every copy of the terminal's other end is closed
                break
            if not chunk:
                break
            seen += chunk
        assert child.wait(timeout=30) == 0
    finally:
        os.close(main)
    assert said.read_text() == "1"  # SIGHUP: exit 129 in the app
    assert b"before" in seen and b"after the stop" not in seen and b"went on" not in seen, seen


def test_a_hang_up_keeps_streams_that_are_files(tmp_path: Path) -> None:
    said = tmp_path / "received"
    done = subprocess.run([sys.executable, "-c", CHILD, str(said)], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert said.read_text() == "1"
    assert done.stdout.splitlines() == ["before", "after the stop"]
    assert done.stderr.splitlines() == ["after the stop"]


def test_a_hang_up_stops_a_process_whose_streams_were_closed(tmp_path: Path) -> None:
    # started with `1>&- 2>&-`: sys.stdout is None, and its fileno() was an AttributeError in the handler
    said = tmp_path / "received"
    done = subprocess.run([sys.executable, "-c", CHILD, str(said)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=_env(), timeout=60,
                          preexec_fn=lambda: (os.close(1), os.close(2)))
    assert done.returncode == 0 and said.read_text() == "1"


def test_a_process_started_under_nohup_ignores_the_hang_up(tmp_path: Path) -> None:
    said = tmp_path / "received"
    done = subprocess.run([sys.executable, "-c", CHILD, str(said), "nohup"], capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["before", "went on"] and not said.exists()


@pytest.mark.parametrize("command", [["status"], ["list", "archs"]])
def test_the_app_exits_129_on_a_hang_up(tmp_path: Path, command: list[str]) -> None:
    """The app's exit code and line for SIGHUP: the child hangs itself up as soon as the command is inside
    `interruptible()`."""
    script = ("import os, signal, sys\n"
              "signal.signal(signal.SIGHUP, signal.SIG_DFL)  # not ignored, as under a `nohup` test runner\n"
              "import medseg_bench.cli.app as app\n"
              "from medseg_bench import signals\n"
              "real = signals.interruptible\n"
              "from contextlib import contextmanager\n"
              "@contextmanager\n"
              "def hang_up_inside():\n"
              "    with real():\n"
              "        os.kill(os.getpid(), signal.SIGHUP)\n"
              "        yield\n"
              "signals.interruptible = hang_up_inside\n"
              "from medseg_bench.cli import run\n"
              f"sys.argv = ['medseg-bench', *{command!r}]\n"
              "run()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**_env(), "MEDSEG_BENCH_HOME": str(tmp_path)}, cwd=tmp_path, timeout=120)
    assert done.returncode == 129, done.stdout + done.stderr
    assert done.stderr.strip() == ("error: interrupted (SIGHUP): nothing finished was lost; rerun the same "
                                   "command to carry on")
