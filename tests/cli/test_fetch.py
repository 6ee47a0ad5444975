"""`medseg-bench fetch` from the command line: custom tasks with local_path, --strict, warnings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from tests.conftest import make_anisotropic_ct_task, make_synthetic_task, write_task_file

runner = CliRunner()


def test_custom_task_with_local_path_fetch_validate_plan(home: Path, tmp_path: Path) -> None:
    """A lab's own dataset: a YAML in $MEDSEG_BENCH_HOME/tasks naming a local folder, then the usual steps."""
    src = make_anisotropic_ct_task(tmp_path / "lab" / "Task95_LabCT")
    write_task_file(home, "Task95_LabCT", ct=True, local_path=str(src), num_training=4)
    listing = runner.invoke(app, ["list", "tasks"])
    assert listing.exit_code == 0 and "Task95_LabCT" in listing.output
    result = runner.invoke(app, ["fetch", "Task95_LabCT"])
    assert result.exit_code == 0, result.output
    assert "4 usable training cases" in result.output and "warning" not in result.output
    marker = json.loads((home / "data" / "Task95_LabCT" / ".medseg-bench-valid.json").read_text())
    assert marker["source"] == str(src) and marker["excluded"] == []
    again = runner.invoke(app, ["fetch", "Task95_LabCT"])
    assert again.exit_code == 0 and "nothing to do" in again.output
    checked = runner.invoke(app, ["validate", "Task95_LabCT", "--strict"])
    assert checked.exit_code == 0, checked.output
    shown = runner.invoke(app, ["plan", "Task95_LabCT", "--json"])
    assert shown.exit_code == 0, shown.output
    plan = json.loads(shown.output)
    assert plan["channel_normalization"][0]["scheme"] == "ct" and abs(plan["target_spacing"][0] - 2.3) < 1e-4


def test_strict_fetch_exit_code_and_message(home: Path, tmp_path: Path) -> None:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    write_task_file(home, "Task90_Synth")
    (src / "labelsTr" / "case_001.nii.gz").write_bytes(b"not nifti")
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src), "--strict"])
    assert result.exit_code == 3
    assert "case_001.nii.gz" in result.output and "--strict" in result.output
    assert not (home / "data" / "Task90_Synth").exists()
    relaxed = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    assert relaxed.exit_code == 0
    assert "case_001.nii.gz" in relaxed.output and "excluded" in relaxed.output
    again = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])  # says what it holds
    assert again.exit_code == 0 and "already fetched and validated" in again.output
    assert "(1 case(s) excluded, listed in" in again.output
    # the --source given is not imported: said (it went unsaid), unless it is the task folder itself
    folder = home / "data" / "Task90_Synth"
    assert again.output.rstrip().endswith(f"; --source {src} not imported (move {folder} away to import it "
                                          "instead)")
    in_place = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(folder)])
    assert in_place.exit_code == 0 and in_place.output.rstrip().endswith("; nothing to do")


def test_subset_warning(home: Path, tmp_path: Path) -> None:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=3)
    write_task_file(home, "Task90_Synth", num_training=5)
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    assert result.exit_code == 0
    assert "3 training cases, the catalog lists 5: a subset" in result.output


def test_many_bad_cases_are_summed_up_not_listed_one_line_each(home: Path, tmp_path: Path) -> None:
    # A dataset.json naming cases the folder lacks (a partial copy) must not flood the terminal.
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=25)
    for i in range(3, 25):
        (src / "imagesTr" / f"case_{i:03d}.nii.gz").unlink()
    write_task_file(home, "Task90_Synth")
    marker = home / "data" / "Task90_Synth" / ".medseg-bench-valid.json"
    fetched = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    revalidated = runner.invoke(app, ["validate", "Task90_Synth"])
    for result in (fetched, revalidated):
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert sum("image file missing (case excluded from training)" in line for line in lines) == 10
        assert (f"warning: 12 more problem(s) in 12 case(s) (image file missing: 12); every one is listed in "
                f"{marker} (all excluded from training)") in lines
    assert "3 of 25 training cases valid" in revalidated.output
    assert "excluded from training: case_003, case_004" in revalidated.output
    assert revalidated.output.count("case_0") < 25 and "and 12 more" in revalidated.output
    assert len(json.loads(marker.read_text())["excluded"]) == 22  # the full list is kept


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_a_fetch_is_one_line_and_its_exit_code(
        hanging_server: str, home: Path, tmp_path: Path, signum: int, code: int) -> None:
    """Every command, not only `sweep`: Ctrl-C is exit 130 (not click's "Aborted!" and 1), SIGTERM 143, and
    the `finally` blocks run (the staging folder is removed, the fetch lock released)."""
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-m", "medseg_bench", "fetch", "Task04_Hippocampus", "--source",
         f"{hanging_server}/t.tar", "--md5", "0" * 32, "--data-dir", str(data), "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    staging = data / ".Task04_Hippocampus.partial"
    deadline = time.monotonic() + 60
    while not staging.is_dir():  # it is waiting for the server now
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    time.sleep(0.3)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert child.returncode == code, stderr
    assert stderr.splitlines() == [
        f"error: interrupted ({name}): nothing finished was lost; rerun the same command to carry on"]
    assert not staging.exists() and not (data / "Task04_Hippocampus").exists()


@pytest.mark.parametrize("under", ["", "sub/data"])
def test_a_data_dir_that_is_a_file_is_a_usage_error(home: Path, tmp_path: Path, under: str) -> None:
    """Not "error: DIR: File exists" (or "Not a directory"), exit 7."""
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=2)
    write_task_file(home, "Task90_Synth")
    afile = tmp_path / "afile"
    afile.write_text("")
    data = afile / under if under else afile
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src), "--data-dir", str(data)])
    assert result.exit_code == 2, result.output
    blocked = "is a file, not a folder" if not under else f"cannot be made ({afile} is a file, not a folder)"
    expected = f"error: {data}: the data folder {blocked}; choose another --data-dir"
    assert result.output.splitlines() == [expected]
    assert afile.read_text() == ""


def test_md5_for_a_folder_is_ignored_with_a_warning(home: Path, tmp_path: Path) -> None:
    """Said on stderr, not silently dropped: a folder has no checksum to verify."""
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=2)
    write_task_file(home, "Task90_Synth", num_training=2)
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src), "--md5", "0" * 32])
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == (
        f"warning: {src}: --md5 ignored: a folder has no checksum (only archives are verified)")
    assert "2 usable training cases" in result.output
    without = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src), "--data-dir",
                                  str(tmp_path / "other")])
    assert without.exit_code == 0 and "--md5" not in without.output


def test_a_folder_of_too_many_entries_is_one_line_and_a_data_error(home: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=2)
    write_task_file(home, "Task90_Synth", num_training=2)
    monkeypatch.setattr("medseg_bench.data.fetch.MAX_SOURCE_ENTRIES", 3, raising=False)
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    assert result.exit_code == 3, result.output
    assert result.output == (f"error: {src}: too many entries (more than 3; an MSD task folder holds a few "
                             "thousand at most)\n")
    assert not (home / "data" / "Task90_Synth").exists()


def test_one_usable_case_is_counted_in_the_singular(home: Path, tmp_path: Path) -> None:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=1)
    write_task_file(home, "Task90_Synth")
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    assert result.exit_code == 0, result.output
    assert f"Task90_Synth: 1 usable training case in {home / 'data' / 'Task90_Synth'}\n" in result.output


def test_a_tilde_in_data_dir_is_the_home_folder_as_in_source(home: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # bash leaves `--data-dir=~/data` as it is: fetch made a folder named `~` in the current folder and said
    # "in ~/data/Task90_Synth", where --source's `~` was the home folder
    user = tmp_path / "user"
    make_synthetic_task(user / "src" / "Task90_Synth", num_cases=2)
    write_task_file(home, "Task90_Synth", num_training=2)
    monkeypatch.setenv("HOME", str(user))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["fetch", "Task90_Synth", "--source=~/src/Task90_Synth", "--data-dir=~/data"])
    assert result.exit_code == 0, result.output
    folder = user / "data" / "Task90_Synth"
    assert result.output.splitlines()[-1] == f"Task90_Synth: 2 usable training cases in {folder}"
    assert (folder / ".medseg-bench-valid.json").is_file()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(("url", "shown"), [
    ("http://user:secret@127.0.0.1:9/t.tar", "http://user:***@127.0.0.1:9/t.tar"),
    ("http://127.0.0.1:9/a\x01.tar", "http://127.0.0.1:9/a\\x01.tar"),
])
def test_a_url_that_cannot_be_fetched_as_given_is_a_usage_error(home: Path, url: str, shown: str) -> None:
    """A user or password in the URL (never shown), a control character: one line, exit 2, not retried."""
    result = runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", url, "--md5", "0" * 32])
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {shown}: ") and "secret" not in result.output
