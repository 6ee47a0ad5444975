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


def test_a_file_where_a_run_folder_goes_stops_the_sweep_naming_it(tmp_path: Path) -> None:
    # Each such run failed with "RUN: File exists" (exit 7), and the summary counted it "stopped while
    # training".
    from medseg_bench.errors import ResultsError
    from medseg_bench.results import run_dir

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    folder = run_dir(tmp_path, spec)
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    with pytest.raises(ResultsError) as error:
        local._finished([spec], tmp_path, tmp_path / "data", PlainReporter(), {})
    assert str(error.value) == (f"{folder}: not a run folder (a file is where run {spec.run_id} keeps its "
                                "results); move it away")
    assert folder.read_text() == "not a folder"
