"""The whole loop on real data: fetch from the shared folder, sweep two tiny configurations, report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.metrics.info import METRIC_NAMES
from tests.conftest import copy_subset

runner = CliRunner()


def test_fetch_sweep_report(shared_task: Path, home: Path, tmp_path: Path) -> None:
    src = copy_subset(shared_task, tmp_path / "src" / "Task04_Hippocampus", 10)
    result = runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(src)])
    assert result.exit_code == 0, result.output
    assert "10 usable training cases" in result.output
    results = tmp_path / "results"
    sweep = ["sweep", "--task", "Task04_Hippocampus", "--arch", "unet", "--loss", "dice_ce", "--aug", "light",
             "--dims", "2d,3d", "--encoder", "resnet18", "--epochs", "1", "--iters-per-epoch", "2",
             "--batch-size", "2", "--results-dir", str(results)]
    result = runner.invoke(app, sweep)
    assert result.exit_code == 0, result.output
    run_dirs = sorted((results / "Task04_Hippocampus").iterdir())
    assert len(run_dirs) == 2
    for run in run_dirs:
        status = json.loads((run / "status.json").read_text())
        assert status["state"] == "done"
        for name in ("spec.json", "env.json", "splits.json", "metrics.csv", "summary.json", "run.log",
                     "checkpoints/last.ckpt", "learning_curves.png"):
            assert (run / name).is_file(), name
        setup = json.loads((run / "setup.json").read_text())
        assert setup["orientation"] == "RAS"  # how MSD stores Hippocampus: predict warns about another
        # the data it trained and was scored on: its fold's 10 cases, by their files' md5s
        assert setup["data"]["cases"] == 10 and len(setup["data"]["digest"]) == 16
        env = json.loads((run / "env.json").read_text())
        assert env["versions"]["torch"] and env["git_revision"]
        assert json.loads((run / "spec.json").read_text())["run_id"] == run.name
        header = (run / "metrics.csv").read_text().splitlines()[0]  # as `evaluate --format csv` writes
        assert header == ",".join(["case", "label", *METRIC_NAMES, "ref_empty", "pred_empty"])
        held_out = json.loads((run / "splits.json").read_text())["val"]
        assert len(held_out) == 2
        # the held-out predictions as scored, in the images' geometry: evaluate gives the run's own scores
        written = sorted(p.name for p in (run / "predictions").iterdir())
        assert written == sorted(f"{case}.nii.gz" for case in held_out)
        scored = runner.invoke(app, ["evaluate", "--pred", str(run / "predictions"), "--ref",
                                     str(src / "labelsTr"), "--allow-missing", "--task", "Task04_Hippocampus",
                                     "--format", "csv", "--workers", "1"])
        assert scored.exit_code == 0, scored.output
        again_scored = pd.read_csv(io.StringIO(scored.stdout)).dropna(subset=["case"]).reset_index(drop=True)
        own = pd.read_csv(run / "metrics.csv")
        pd.testing.assert_frame_equal(again_scored, own, check_dtype=False)

    again = runner.invoke(app, sweep)  # the same spec is skipped, not repeated
    assert again.exit_code == 0 and again.output.count("skipped (already done)") == 2

    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "csv"])
    assert report.exit_code == 0, report.output

    table = pd.read_csv(io.StringIO(report.output))
    assert len(table) == 2 and set(table["dims"]) == {"2d", "3d"}
    for column in ("dice_mean", "jaccard_mean"):
        assert table[column].between(0, 1).all()
    assert (table["hd95_mean"] >= 0).all() and (table["cases"] == 2).all()
    for row in table.itertuples():  # the sweep's summary and the report take the same mean
        summary = json.loads((results / "Task04_Hippocampus" / row.run_ids / "summary.json").read_text())
        for metric in ("dice", "jaccard", "hd95", "nsd"):  # CSV: 6 digits
            reported = getattr(row, f"{metric}_mean")
            assert summary["mean"][metric] == pytest.approx(reported, rel=1e-5, nan_ok=True)
    markdown = runner.invoke(app, ["report", "--results-dir", str(results)])
    assert markdown.exit_code == 0 and markdown.output.startswith("# medseg-bench report\n")
    assert "| # | configuration | runs | cases | empty | Dice |" in markdown.output
    assert "## Task04_Hippocampus" in markdown.output and "## Ranking across tasks" in markdown.output
