"""Kill -9 at seeded random moments and at the worst moments: nothing lost, repeated, or half-read."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from medseg_bench.results import run_state
from medseg_bench.run_folder import read_events
from tests.faults.conftest import (
    Ledger,
    check_done_once,
    kill9,
    run_cli,
    run_folders,
    scores,
    start_cli,
    sweep_argv,
    temp_files,
)

pytestmark = pytest.mark.faults
SEEDS = ("--seed", "0,1,2")


def _attempts(results: Path) -> int:
    """How many times a run was started or resumed under `results`."""
    return sum(e["event"] in ("start", "resume") for f in run_folders(results) for e in read_events(f))


@pytest.mark.slow
def test_ten_random_kills_then_finish_equals_an_uninterrupted_sweep(fetched: Path, tmp_path: Path,
                                                                  reference: Any, ledger: Ledger) -> None:
    start = time.perf_counter()
    expected = reference(*SEEDS)
    # Kill moments scale with how long the uninterrupted sweep took on this machine (an idle machine is
    # several times faster than a loaded one): each attempt trains for at most 15% of that time, so at least
    # three kills land before the sweep can finish.
    uninterrupted_s = time.perf_counter() - start
    if uninterrupted_s < 1.0:  # computed by an earlier test: fall back to a typical duration
        uninterrupted_s = 30.0
    results = tmp_path / "results"
    rng = random.Random(20261125)
    kills = 0
    for _ in range(10):
        started = _attempts(results)
        process = start_cli(sweep_argv(results, *SEEDS))
        # The clock starts when this sweep starts (or resumes) a run, not at launch: its imports alone take
        # seconds, and kills timed from launch landed before any run had started.
        while _attempts(results) == started and process.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.025, 0.15) * uninterrupted_s)
        finished = process.poll() is not None
        kill9(process)
        if finished:
            break  # the sweep completed before this kill: nothing left to interrupt
        kills += 1
        ledger.injected += 1
    assert kills >= 3, "the kills should land while the sweep works"
    final = run_cli(sweep_argv(results, *SEEDS))
    assert final.returncode == 0, final.stdout + final.stderr
    check_done_once(results, 3, ledger)
    assert temp_files(results) == []
    pd.testing.assert_frame_equal(scores(results), expected, check_exact=False, rtol=1e-6)


@pytest.mark.parametrize("point", ["kill-checkpoint", "kill-metrics", "kill-summary"])
def test_kill_while_writing_is_detected_and_redone(fetched: Path, tmp_path: Path, reference: Any,
                                                   ledger: Ledger, point: str) -> None:
    expected = reference()
    results = tmp_path / "results"
    killed = run_cli(sweep_argv(results, inject=point))
    assert killed.returncode == -9, killed.stdout + killed.stderr
    ledger.injected += 1
    (folder,) = run_folders(results)
    assert temp_files(results), "the kill should leave a half-written temp file"
    assert run_state(folder) in ("partial", "pending")
    if point != "kill-checkpoint":  # the finished checkpoint is there: training is not repeated
        assert run_state(folder) == "partial"
    again = run_cli(sweep_argv(results))
    assert again.returncode == 0, again.stdout + again.stderr
    assert temp_files(results) == []
    check_done_once(results, 1, ledger)
    events = [e["event"] for e in read_events(folder)]
    assert events == ["start", "resume", "done"]
    pd.testing.assert_frame_equal(scores(results), expected, check_exact=False, rtol=1e-6)
    json.loads((folder / "summary.json").read_text())  # whole, parseable
