"""Real tiny sweeps on real Hippocampus cases: parallel workers, a run held by another process, the index."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.locks import RunLock
from medseg_bench.results import INDEX_NAME, read_events
from tests.conftest import TINY_SWEEP, fetch_subset

runner = CliRunner()


def test_parallel_sweep_skips_a_run_held_elsewhere_then_finishes_it(shared_task: Path, home: Path,
                                                                    tmp_path: Path) -> None:
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--seed", "0,1,2", "--results-dir", str(results)]
    dry = runner.invoke(app, [*command, "--dry-run"])
    held_id = dry.output.splitlines()[1].split("/")[1].split()[0]  # seed 1
    held = results / "Task04_Hippocampus" / held_id
    lock = RunLock(held)
    assert lock.acquire()  # another sweep is on it
    try:
        result = runner.invoke(app, [*command, "--jobs", "2"])
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert f"{held_id}: skipped (running in another process)" in result.output
    assert result.output.count(": done, mean Dice") == 2
    assert " epoch 2/2  loss " in result.output  # the workers' epochs reach the display through heartbeats
    assert not (held / "status.json").exists()

    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped (already done)") == 2 and again.output.count(": done, mean Dice") == 1
    for folder in (results / "Task04_Hippocampus").iterdir():
        assert [e["event"] for e in read_events(folder)] == ["start", "done"], folder.name
        assert json.loads((folder / "status.json").read_text())["state"] == "done"
        assert not list(folder.rglob(".*.tmp"))
    index = pd.read_parquet(results / INDEX_NAME)
    assert index["run_id"].nunique() == 3 and set(index["seed"]) == {0, 1, 2}
    dry = runner.invoke(app, [*command, "--seed", "0,1,2,3", "--dry-run"])
    assert "4 runs: 3 done, 1 pending" in dry.output
    assert "(1 estimated from the same dims and arch, 0 from all finished runs)" in dry.output


@pytest.mark.parametrize(("name", "keep", "problem"), [
    ("status.json", 14, "not valid JSON"),  # edited, or cut short by a full disk: was read as pending
    ("metrics.csv", -30, ""),  # its last row cut short: was skipped as done, silently
])
def test_a_finished_run_with_a_damaged_file_is_named_never_trained_again(
        shared_task: Path, home: Path, tmp_path: Path, name: str, keep: int, problem: str) -> None:
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--results-dir", str(results)]
    assert runner.invoke(app, command).exit_code == 0
    (folder,) = (results / "Task04_Hippocampus").iterdir()
    summary = (folder / "summary.json").read_bytes()
    damaged = folder / name
    damaged.write_text(damaged.read_text()[:keep])
    again = runner.invoke(app, command)
    assert again.exit_code == 6, again.output
    assert again.output.strip().splitlines()[-1].startswith(f"error: {damaged}: {problem}")
    assert "left as it is, not trained again" in again.output and ": done, mean Dice" not in again.output
    assert (folder / "summary.json").read_bytes() == summary
    assert [e["event"] for e in read_events(folder)] == ["start", "done"]
    report = runner.invoke(app, ["report", "--results-dir", str(results)])
    assert report.exit_code == 6 and f"error: {damaged}: {problem}" in report.output
    if name == "status.json":
        status = runner.invoke(app, ["status", "--results-dir", str(results)])
        assert f"damaged  Task04_Hippocampus/{folder.name}" in status.output


def test_runs_that_cannot_train_on_the_plan_stop_the_sweep_before_any_trains(shared_task: Path, home: Path,
                                                                             tmp_path: Path) -> None:
    """What `expand` cannot know before the plan exists (DynUNet's poolings depend on its spacing; a
    plan.json edited to batch 1) is checked for every run once the plan is made, before the first trains."""
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    common = ["sweep", "--task", "Task04_Hippocampus", "--loss", "dice_ce", "--aug", "none", "--epochs", "1",
              "--iters-per-epoch", "1", "--results-dir", str(results)]
    result = runner.invoke(app, [*common, "--arch", "dynunet", "--dims", "3d", "--patch-size", "12,12,12",
                                 "--seed", "0,1"])
    assert result.exit_code == 2, result.output
    assert "\n\n" not in result.output  # the cache's progress bars, off a terminal, left an empty line each
    assert "error: run 3d-dynunet-dice_ce-none-f0-s0-" in result.output
    assert ("cannot train: dynunet pools patch 12x12x12 fewer than twice at spacing 1x1x1 mm" in result.output
            and "(1 more run cannot train either); nothing was trained" in result.output)
    assert not (results / "Task04_Hippocampus").exists()
    assert not (results / "index.parquet").exists()  # no run finished: no empty index either
    plan_path = home / "data" / "preprocessed" / "Task04_Hippocampus" / "plan.json"
    plan = json.loads(plan_path.read_text())  # the plan was made: what it says decided
    plan["batch_2d"] = 1
    plan_path.write_text(json.dumps(plan))
    result = runner.invoke(app, [*common, "--arch", "unet,deeplab", "--encoder", "resnet18"])
    assert result.exit_code == 2, result.output
    assert "cannot train: arch 'deeplab' (2d) batch-normalises globally pooled features" in result.output
    assert not (results / "Task04_Hippocampus").exists()  # the 2D U-Net (first in order) did not train
