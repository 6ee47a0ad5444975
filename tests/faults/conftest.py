"""Fault-injection helpers: run the real CLI in a child process, kill it, inspect the results store.

Every test records what it injected and what it found in the ledger; the suite prints one summary line:
`faults: N injected, runs lost: L, runs repeated: R`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medseg_bench.results import INDEX_NAME
from medseg_bench.run_folder import is_done, read_events, read_json
from tests.conftest import TINY_SWEEP, fetch_subset

INJECT = Path(__file__).with_name("inject.py")
TASK = "Task04_Hippocampus"


@dataclass
class Ledger:
    injected: int = 0
    lost: int = 0
    repeated: int = 0
    checked_runs: int = 0
    sigterm_stop_s: list[float] = field(default_factory=list)  # how long each SIGTERMed sweep took to stop


LEDGER = Ledger()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LEDGER.injected or LEDGER.checked_runs:
        terminalreporter.write_line(
            f"faults: {LEDGER.injected} injected, {LEDGER.checked_runs} runs checked, "
            f"runs lost: {LEDGER.lost}, "
            f"runs repeated: {LEDGER.repeated}")
    if LEDGER.sigterm_stop_s:
        times = ", ".join(f"{t:.2f} s" for t in LEDGER.sigterm_stop_s)
        terminalreporter.write_line(f"SIGTERM or SIGINT: sweeps stopped in {times}")


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


@pytest.fixture(scope="session")
def fault_home(shared_task: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real Hippocampus cases fetched and prepared (plan, cache, splits) once; tests only read them."""
    root = tmp_path_factory.mktemp("faults")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSEG_BENCH_HOME", str(root / "home"))
        patch.delenv("MEDSEG_BENCH_MIRROR", raising=False)
        fetch_subset(shared_task, root)
        code = ("from medseg_bench.data.catalog import get_task; "
                "from medseg_bench.settings import get_settings; "
                "from medseg_bench.data.preprocess import prepare_task; "
                f"prepare_task(get_task({TASK!r}), get_settings().data_dir, 5)")
        prepared = run_cli([sys.executable, "-c", code])  # in a child, like every command below
        assert prepared.returncode == 0, prepared.stderr
    return root / "home"


@pytest.fixture
def fetched(fault_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(fault_home))
    monkeypatch.delenv("MEDSEG_BENCH_MIRROR", raising=False)
    return fault_home


def sweep_argv(results: Path, *extra: str, inject: str | None = None) -> list[str]:
    """The CLI in a fresh interpreter; with `inject`, through tests/faults/inject.py (a fault there)."""
    head = [sys.executable, str(INJECT), inject] if inject else [sys.executable, "-m", "medseg_bench"]
    return [*head, "sweep", *TINY_SWEEP, "--results-dir", str(results), *extra]


def run_cli(argv: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)


def start_cli(argv: list[str]) -> subprocess.Popen[str]:
    """Started in its own process group, so that a kill reaches its loader workers too; SIGHUP as a terminal
    leaves it, not ignored as under a test runner started with `nohup`."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True, preexec_fn=_hang_up_as_a_terminal_does)


def _hang_up_as_a_terminal_does() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def kill9(process: subprocess.Popen[str]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.communicate()


def session_processes(session: int) -> list[str]:
    """The live processes of a session (a CLI started by `start_cli` and all it started), as 'pid command';
    zombies waiting for their reaper are dead and not listed."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, session
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name} {text[text.index('(') + 1:text.rindex(')')]}")
    return found


def wait_for_no_processes(session: int, timeout_s: float = 5.0) -> list[str]:
    """Poll until the session has no live process; return what is left after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (left := session_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def run_folders(results: Path) -> list[Path]:
    return sorted(p for p in (results / TASK).iterdir() if p.is_dir()) if (results / TASK).is_dir() else []


def temp_files(results: Path) -> list[Path]:
    return [p for p in results.rglob(".*.tmp")]


def check_done_once(results: Path, expected_runs: int, ledger: Ledger) -> None:
    """Every run done, done exactly once, and never worked on again after it was done."""
    folders = run_folders(results)
    lost = expected_runs - sum(is_done(f) for f in folders)
    repeated = 0
    for folder in folders:
        events = read_events(folder)
        done_at = read_json(folder / "status.json").get("time", 0)
        dones = [e for e in events if e["event"] == "done"]
        after = [e for e in events if e["time"] > done_at and e["event"] != "done"]
        repeated += len(dones) > 1 or bool(after)
    ledger.checked_runs += len(folders)
    ledger.lost += lost
    ledger.repeated += repeated
    assert (lost, repeated) == (0, 0), {f.name: [e["event"] for e in read_events(f)] for f in folders}


def scores(results: Path) -> pd.DataFrame:
    """The per-case scores of the index, in a canonical order (cost columns dropped: time differs)."""
    table = pd.read_parquet(results / INDEX_NAME)
    cost = ("params", "train_time_s", "time_per_epoch_s", "peak_memory_mb")
    keep = [c for c in table.columns if c not in cost]
    return table[keep].sort_values(["run_id", "case", "label"]).reset_index(drop=True)


_REFERENCES: dict[tuple[str, ...], pd.DataFrame] = {}


@pytest.fixture
def reference(fetched: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A function: per-case scores of an uninterrupted sweep with these extra arguments (computed once)."""
    def make(*extra: str) -> pd.DataFrame:
        if extra not in _REFERENCES:
            results = tmp_path_factory.mktemp("reference")
            done = run_cli(sweep_argv(results, *extra))
            assert done.returncode == 0, done.stdout + done.stderr
            _REFERENCES[extra] = scores(results)
        return _REFERENCES[extra]

    return make
