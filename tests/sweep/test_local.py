"""`sweep/local.py`'s `--jobs` loop: what a stop records of the runs its workers were on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from medseg_bench.data.io import write_json_atomic
from medseg_bench.progress import PlainReporter
from medseg_bench.results import write_status
from medseg_bench.spec import RunSpec
from medseg_bench.sweep import local
from tests.conftest import finished_summary


@pytest.mark.parametrize("exit_code", [local.EXIT_DONE, 130])
def test_a_run_finished_before_the_stop_reached_the_loop_is_recorded_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int) -> None:
    # Ctrl-C with --jobs 2 once summed up "2 stopped while training" of two runs recorded done: their workers
    # had finished between two polls of the loop, or as the signal came (exit 130, the run done on disk).
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    workers: list[subprocess.Popen[bytes]] = []

    def finished_worker(spec: RunSpec, folder: Path, *args: object) -> subprocess.Popen[bytes]:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
        (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
        write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id))
        write_status(folder, "done")
        workers.append(subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exit_code})"]))
        return workers[-1]

    def stopped(_: float) -> None:  # Ctrl-C in the loop's sleep, after the worker has ended
        workers[-1].wait()
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "_start_worker", finished_worker)
    monkeypatch.setattr(local.time, "sleep", stopped)
    monkeypatch.setattr(local, "_slots", lambda jobs: (jobs, [None] * jobs))
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False))
        reporter.start(1)
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        with pytest.raises(KeyboardInterrupt):
            local._parallel([spec], tmp_path, tmp_path / "data", reporter, False, 0, 2, outcome)
        reporter.close()
    assert outcome["done"] == [spec.run_id] and not outcome["failed"]
    said = (tmp_path / "out.txt").read_text()
    assert f"[1/1] {spec.run_id}: done, mean Dice 0.5000" in said
    assert "sweep finished: 1 trained (of 1 runs)" in said


def test_a_run_held_by_another_sweep_is_not_said_to_be_training(tmp_path: Path) -> None:
    # Two sweeps on one results dir: the one that found the run held printed "[1/1] RUN: training" and then
    # "RUN: skipped (running in another process)".
    from medseg_bench.locks import RunLock
    from medseg_bench.results import run_dir

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    lock = RunLock(run_dir(tmp_path, spec))
    assert lock.acquire()
    try:
        with open(tmp_path / "out.txt", "w") as out:
            reporter = PlainReporter(Console(file=out, highlight=False, width=200))
            reporter.start(1)
            outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy",
                                                                   "damaged", "damage")}
            local._sequential([spec], tmp_path, reporter, {local._key(spec): None}, False, 0, outcome)
            reporter.close()
    finally:
        lock.release()
    assert outcome["busy"] == [spec.run_id]
    said = (tmp_path / "out.txt").read_text()
    assert f"{spec.run_id}: skipped (running in another process)" in said
    assert "training" not in said, said
