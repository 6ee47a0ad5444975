"""Disk full, two sweeps at once, unwritable results dir, bad checkpoints: clear errors, nothing lost."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from medseg_bench.results import run_state
from medseg_bench.run_folder import read_events, read_status
from tests.faults.conftest import (
    TASK,
    Ledger,
    check_done_once,
    run_cli,
    run_folders,
    start_cli,
    sweep_argv,
    temp_files,
)

# The quick checks (unwritable dir, a code-executing pickle, a damaged setup.json) run by default; the rest
# with `-m faults`.


@pytest.mark.faults
def test_disk_full_while_writing_results_fails_that_run_only(fetched: Path, tmp_path: Path,
                                                             ledger: Ledger) -> None:
    results = tmp_path / "results"
    full = run_cli(sweep_argv(results, "--seed", "0,1", inject="enospc-summary"))
    ledger.injected += 1
    assert full.returncode == 5, full.stdout + full.stderr
    assert "No space left on device" in full.stdout and "summary.json" in full.stdout
    assert "error: 1 of 2 runs failed" in full.stderr
    first, second = run_folders(results)  # seed 0 then seed 1 (run ids sort by seed here)
    assert run_state(first) == "done"
    kept = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    assert run_state(second) != "done"
    assert "No space left on device" in (second / "run.log").read_text()
    again = run_cli(sweep_argv(results, "--seed", "0,1"))  # space is back
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped (already done)" in again.stdout
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file() and p.name in kept} == kept
    check_done_once(results, 2, ledger)
    assert temp_files(results) == []


@pytest.mark.faults
def test_two_sweeps_at_once_never_train_a_run_twice(fetched: Path, tmp_path: Path, ledger: Ledger,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"  # a fetched task without its cache: both sweeps start by wanting to build it
    shutil.copytree(fetched / "data" / "Task04_Hippocampus", home / "data" / "Task04_Hippocampus")
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(home))
    results = tmp_path / "results"
    argv = sweep_argv(results, "--seed", "0,1,2")
    first, second = start_cli(argv), start_cli(argv)
    outputs = [p.communicate(timeout=900)[0] for p in (first, second)]
    ledger.injected += 1
    assert first.returncode == 0 and second.returncode == 0, outputs
    for folder in run_folders(results):
        assert [e["event"] for e in read_events(folder)] == ["start", "done"], folder.name
    check_done_once(results, 3, ledger)
    both = "".join(outputs)
    assert both.count(": done, mean Dice") == 3  # each run trained by exactly one of the two
    assert temp_files(results) == []


def test_unwritable_results_dir_is_one_clear_line(fetched: Path, tmp_path: Path, ledger: Ledger) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results dir should be")
    result = run_cli(sweep_argv(blocker / "results"))
    ledger.injected += 1
    assert result.returncode == 6, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {blocker / 'results'}: not a results dir ({blocker} is a file, not a folder)"]


class _Payload:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


@pytest.mark.parametrize("kind", [pytest.param("garbage", marks=pytest.mark.faults),
                                  pytest.param("foreign", marks=pytest.mark.faults), "pickle-code"])
def test_bad_checkpoint_is_refused_with_a_clear_message(fetched: Path, tmp_path: Path, ledger: Ledger,
                                                        kind: str) -> None:
    results = tmp_path / "results"
    dry = run_cli(sweep_argv(results, "--dry-run"))
    run_id = dry.stdout.splitlines()[0].split("/")[1].split()[0]
    ckpt = results / "Task04_Hippocampus" / run_id / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "marker"
    if kind == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint" * 10)
    elif kind == "foreign":
        torch.save({"state_dict": {"net.conv.weight": torch.zeros(2, 2)}, "epoch": 1}, ckpt)
    else:
        ckpt.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    ledger.injected += 1
    result = run_cli(sweep_argv(results))
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"{ckpt}: not a loadable medseg-bench checkpoint" in result.stdout
    assert "delete it to train run" in result.stdout
    assert not marker.exists()  # weights_only=True: the pickle's code never ran
    assert "weights_only set to False" not in result.stdout  # torch's advice to drop the guard: not passed on
    folder = ckpt.parents[1]
    assert read_status(folder)["state"] == "failed"
    assert "start" not in [e["event"] for e in read_events(folder)]
    assert f"ERROR not resumed: {ckpt}: not a loadable" in (folder / "run.log").read_text()
    if kind != "garbage":
        return
    ckpt.unlink()  # the user follows the advice
    again = run_cli(sweep_argv(results))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((folder / "status.json").read_text())["state"] == "done"


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("setup.json", "{", "not valid JSON"),
    pytest.param("splits.json", '{"train": []}',
                 'not an object with "train" and "val", each a list of case ids', marks=pytest.mark.faults),
])
def test_an_interrupted_run_whose_setup_record_is_damaged_is_refused_not_resumed(
        fetched: Path, tmp_path: Path, ledger: Ledger, name: str, damage: str, problem: str) -> None:
    # An unreadable setup.json (or splits.json) once counted as none: the run resumed with whatever the
    # plan (or the splits file) said now, under the run id of the setup it started with.
    results = tmp_path / "results"
    dry = run_cli(sweep_argv(results, "--dry-run"))
    run_id = dry.stdout.splitlines()[0].split("/")[1].split()[0]
    folder = results / TASK / run_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"\x00")  # interrupted: it would resume
    (folder / name).write_text(damage)
    ledger.injected += 1
    result = run_cli(sweep_argv(results))
    assert result.returncode == 5, result.stdout + result.stderr
    what = "patch and batch size" if name == "setup.json" else "split"
    advice = (f"the run started with the {what} this file records and resumes only with it: restore the "
              "file, or delete the run folder to train from scratch")
    (line,) = [line for line in result.stdout.splitlines() if f"{run_id}: failed: " in line]
    message = line.split(": failed: ", 1)[1]
    assert message.startswith(f"{folder / name}: {problem}") and message.endswith(advice), message
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"error: 1 of 1 run failed: {run_id}"]
    status = read_status(folder)
    assert status["state"] == "failed" and status["error"] == message
    assert [e["event"] for e in read_events(folder)] == ["failed"]  # never started or resumed
    assert (folder / name).read_text() == damage  # left for the user to restore
