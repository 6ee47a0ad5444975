"""bench/gpu.py, the script a session with a lent GPU runs in one short call: its smoke mode on the CPU here,
so it cannot rot unnoticed between such sessions (about a minute on 2 cores; in the default suite, which CI
runs, for that reason)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"


@pytest.mark.skipif(not (SHARED / "dataset.json").is_file(), reason="needs ../shared/data/Task04_Hippocampus")
def test_gpu_bench_smoke_runs_every_stage_and_writes_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "bench/gpu.py", "--smoke", "--cases", "10", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads((out / "gpu.json").read_text())
    assert facts["config"]["cases"] == 10 and facts["config"]["val_cases"] == 2
    assert facts["config"]["aug"] == "nnunet"  # what the workers exist for
    assert [row["workers"] for row in facts["throughput"]] == [0, 2]
    for row in facts["throughput"]:
        assert len(row["epoch_times_s"]) == 2 and row["s_per_epoch"] == row["epoch_times_s"][1] > 0
        assert row["iters_per_s"] == pytest.approx(2 / row["s_per_epoch"])
        assert row["epochs_done"] == 2 and 0 <= row["dice"] <= 1
    budget = facts["budget_run"]
    assert budget["epochs_done"] >= 1 and 0 <= budget["dice"] <= 1
    assert set(budget["per_label_dice"]) >= {"1", "2"}
    table = (out / "gpu.md").read_text()
    assert "## Throughput" in table and "## Budget run (0.2 minutes" in table
    assert "augmentation nnunet" in table
    assert f"| {budget['dice']:.4f} |" in table
    assert "Task04_Hippocampus" in (out / "report.md").read_text()
    assert "medseg-bench sweep" in (out / "budget_run.log").read_text()
