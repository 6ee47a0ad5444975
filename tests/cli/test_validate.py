"""`medseg-bench validate TASK [--strict]`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.data.catalog import get_task
from medseg_bench.data.preprocess import prepare_task
from tests.conftest import make_synthetic_task, write_image, write_task_file

runner = CliRunner()


def _fetched(home: Path, tmp_path: Path) -> Path:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    write_task_file(home, "Task90_Synth")
    assert runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)]).exit_code == 0
    return home / "data" / "Task90_Synth"


def test_clean_task(home: Path, tmp_path: Path) -> None:
    folder = _fetched(home, tmp_path)
    for args in ([], ["--strict"]):
        result = runner.invoke(app, ["validate", "Task90_Synth", *args])
        assert result.exit_code == 0, result.output
        assert f"6 of 6 training cases valid in {folder}" in result.output


def test_a_task_of_one_case_says_case(home: Path, tmp_path: Path) -> None:
    # "1 of 1 training cases valid"
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=1)
    write_task_file(home, "Task90_Synth")
    assert runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)]).exit_code == 0
    result = runner.invoke(app, ["validate", "Task90_Synth"])
    assert result.exit_code == 0, result.output
    assert f"1 of 1 training case valid in {home / 'data' / 'Task90_Synth'}" in result.output


def test_a_case_broken_after_fetch_is_found_and_excluded(home: Path, tmp_path: Path) -> None:
    folder = _fetched(home, tmp_path)
    label = np.zeros((12, 20, 20), np.uint8)
    label[2, 2, 2] = 7  # a value dataset.json does not declare
    write_image(folder / "labelsTr" / "case_004.nii.gz", label)
    strict = runner.invoke(app, ["validate", "Task90_Synth", "--strict"])
    assert strict.exit_code == 3
    assert strict.output.strip().splitlines()[-1] == (  # one line: the file, the problem
        f"error: {folder}/labelsTr/case_004.nii.gz: label values [7] not among Task90_Synth's labels "
        "(0, 1, 2) nor declared in dataset.json (--strict)")
    relaxed = runner.invoke(app, ["validate", "Task90_Synth"])
    assert relaxed.exit_code == 0
    assert "excluded from training: case_004" in relaxed.output and "5 of 6" in relaxed.output
    marker = json.loads((folder / ".medseg-bench-valid.json").read_text())
    assert [e["case"] for e in marker["excluded"]] == ["case_004"]
    prepared = prepare_task(get_task("Task90_Synth"), home / "data", num_folds=2, workers=1)
    assert "case_004" not in prepared.case_ids and len(prepared.case_ids) == 5


def test_a_case_too_large_to_read_here_is_excluded_as_a_bad_case(home: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # it stopped all of fetch and validate, exit 3, where a corrupt case is listed and excluded
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import validate
    from medseg_bench.data.msd import training_cases
    from medseg_bench.data.read_memory import VALIDATION, least_read_bytes, stored_case

    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    write_task_file(home, "Task90_Synth")
    big = src / "imagesTr" / "case_001.nii.gz"
    write_image(big, np.zeros((24, 40, 40), np.float32))  # eight times the others' voxels
    write_image(src / "labelsTr" / "case_001.nii.gz", np.zeros((24, 40, 40), np.uint8))
    size = stored_case(training_cases(src)[1])
    assert size is not None
    need = least_read_bytes(VALIDATION, size)
    memory = MemoryLimit(need - 1, "the job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(validate, "usable_memory", lambda: memory)
    problem = (f"validating it needs at least {need / 2**30:.3g} GiB at once (1 channel(s), 24 x 40 x 40 "
               f"voxels of 4 byte(s)), more than the {memory.limit_bytes / 2**30:.3g} GiB this process may "
               "use (the job's memory limit, cgroup memory.max); run with more memory")
    folder = home / "data" / "Task90_Synth"
    fetched = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)])
    assert fetched.exit_code == 0, fetched.output
    assert (f"warning: {folder / 'imagesTr' / 'case_001.nii.gz'}: {problem} (case excluded from training)"
            in fetched.output.splitlines())
    assert f"5 usable training cases in {folder} (1 excluded)" in fetched.output
    relaxed = runner.invoke(app, ["validate", "Task90_Synth"])
    assert relaxed.exit_code == 0, relaxed.output
    assert "excluded from training: case_001" in relaxed.output and "5 of 6" in relaxed.output
    strict = runner.invoke(app, ["validate", "Task90_Synth", "--strict"])
    assert strict.exit_code == 3
    assert strict.output.strip().splitlines()[-1] == (
        f"error: {folder / 'imagesTr' / 'case_001.nii.gz'}: {problem} (--strict)")
    assert runner.invoke(app, ["validate", "Task90_Synth"]).exit_code == 0
    marker = json.loads((folder / ".medseg-bench-valid.json").read_text())
    assert [e["case"] for e in marker["excluded"]] == ["case_001"]
    # the fingerprint, the plan and the cache take the cases validation kept: it is not read there either
    prepared = prepare_task(get_task("Task90_Synth"), home / "data", num_folds=2, workers=1)
    assert "case_001" not in prepared.case_ids and len(prepared.case_ids) == 5


def test_data_dir_option_and_unfetched_task(home: Path, tmp_path: Path) -> None:
    _fetched(home, tmp_path)
    moved = tmp_path / "elsewhere"
    (home / "data").rename(moved)
    assert runner.invoke(app, ["validate", "Task90_Synth", "--data-dir", str(moved)]).exit_code == 0
    missing = runner.invoke(app, ["validate", "Task90_Synth"])
    assert missing.exit_code == 3 and "run `medseg-bench fetch Task90_Synth` first" in missing.output
    # the command to fetch it names the data dir asked for (without, it fetched into the default one)
    other = tmp_path / "other data"
    missing = runner.invoke(app, ["validate", "Task90_Synth", "--data-dir", str(other)])
    assert missing.exit_code == 3 and missing.output.strip() == (
        f"error: {other / 'Task90_Synth'}: task not fetched (or incomplete); run `medseg-bench fetch "
        f"Task90_Synth --data-dir '{other}'` first")
    unknown = runner.invoke(app, ["validate", "Task90_Synht"])
    assert unknown.exit_code == 2 and "did you mean" in unknown.output


def test_a_folder_put_in_place_by_hand_is_named_with_the_command_that_checks_it(home: Path,
                                                                               tmp_path: Path) -> None:
    # Asked to fetch it, the fetch refused the folder as in its way: the line names what does work.
    data = tmp_path / "my data"
    placed = make_synthetic_task(data / "Task90_Synth")
    write_task_file(home, "Task90_Synth")
    for command in (["validate", "Task90_Synth"], ["plan", "Task90_Synth"]):
        result = runner.invoke(app, [*command, "--data-dir", str(data)])
        assert result.exit_code == 3 and result.output.strip() == (
            f"error: {placed}: a folder that `medseg-bench fetch` did not make (no "
            f".medseg-bench-valid.json); check it in place with `medseg-bench fetch Task90_Synth --source "
            f"'{placed}' --data-dir '{data}'`")
    checked = runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(placed), "--data-dir", str(data)])
    assert checked.exit_code == 0, checked.output
    assert runner.invoke(app, ["validate", "Task90_Synth", "--data-dir", str(data)]).exit_code == 0
    assert not (home / "data" / "Task90_Synth").exists()  # checked where it is, not copied to the default


def test_a_data_folder_that_is_a_file_is_a_usage_error_as_in_fetch(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task90_Synth")
    (tmp_path / "a file").write_text("")
    blocked = f"the data folder cannot be made ({tmp_path / 'a file'} is a file, not a folder)"
    for data, line in ((tmp_path / "a file", "the data folder is a file, not a folder"),
                       (tmp_path / "a file" / "data", blocked)):
        for command in ("fetch", "validate", "plan"):
            result = runner.invoke(app, [command, "Task90_Synth", "--data-dir", str(data)])
            assert result.exit_code == 2, (command, result.output)
            assert result.output.strip() == f"error: {data}: {line}; choose another --data-dir", command


def test_a_damaged_marker_is_named_and_validate_rebuilds_it(home: Path, tmp_path: Path) -> None:
    folder = _fetched(home, tmp_path)
    marker = folder / ".medseg-bench-valid.json"
    marker.write_text('{"cases": 6, "excl')
    planned = runner.invoke(app, ["plan", "Task90_Synth"])
    assert planned.exit_code == 3
    last = planned.output.strip().splitlines()[-1]
    assert last.startswith(f"error: {marker}: damaged (")
    assert last.endswith("run `medseg-bench validate Task90_Synth` to rebuild it")
    rebuilt = runner.invoke(app, ["validate", "Task90_Synth"])
    assert rebuilt.exit_code == 0 and "list of excluded cases updated" in rebuilt.output
    assert json.loads(marker.read_text())["excluded"] == []
    assert runner.invoke(app, ["plan", "Task90_Synth"]).exit_code == 0


def test_names_from_dataset_json_cannot_forge_lines_or_send_escape_sequences(home: Path,
                                                                             tmp_path: Path) -> None:
    # A dataset's label and channel names, and a case's file name, were printed as they were: escape sequences
    # reached the terminal, a line break forged a line, and `[bold]` in a case id was taken as rich markup
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    write_task_file(home, "Task90_Synth")
    meta = json.loads((src / "dataset.json").read_text())
    meta["labels"]["1"] = "outer\x1b]0;owned\x07\nwarning: forged"
    meta["modality"]["0"] = "MR\x1b[2J"
    gone = "./imagesTr/gone\x1b[2J[bold]\n.nii.gz"
    meta["training"].append({"image": gone, "label": "./labelsTr/x.nii.gz"})
    (src / "dataset.json").write_text(json.dumps(meta))
    for args in (["fetch", "Task90_Synth", "--source", str(src)], ["validate", "Task90_Synth"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "\x1b" not in result.output and "\x07" not in result.output
        assert not any(line.startswith("warning: forged") for line in result.output.splitlines())
        assert "names label 1: 'outer\\x1b]0;owned\\x07\\nwarning: forged'" in result.output
        assert "names channel 0: 'MR\\x1b[2J'" in result.output
    assert "excluded from training: gone\\x1b[2J[bold]\\n" in result.output


def test_validation_cut_by_memory_says_so_in_its_progress(home: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation reads fewer cases at once than --workers where memory is short; its bar said only
    "validating", so the user saw it slower without a reason. It now says how many, as the fingerprint's."""
    from contextlib import contextmanager

    from medseg_bench import progress
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import validate
    from medseg_bench.data.msd import training_cases
    from medseg_bench.data.preprocess_memory import WORKER_BYTES
    from medseg_bench.data.read_memory import VALIDATION, read_bytes, stored_cases

    folder = _fetched(home, tmp_path)
    bars: list[tuple[str, int]] = []
    steps: list[int] = []

    @contextmanager
    def step_bar(description: str, total: int, console: object,
                 enabled: bool) -> Iterator[Callable[[], None]]:
        bars.append((description, total))
        yield lambda: steps.append(1)

    monkeypatch.setattr(progress, "step_bar", step_bar)
    need = max(read_bytes(VALIDATION, size) for size in stored_cases(training_cases(folder)))
    job = "the job's memory limit"
    monkeypatch.setattr(validate, "usable_memory", lambda: MemoryLimit(WORKER_BYTES + 2 * need, job))
    for workers in ("4", "2"):
        result = runner.invoke(app, ["validate", "Task90_Synth", "--workers", workers])
        assert result.exit_code == 0, result.output
    monkeypatch.setattr(validate, "usable_memory", lambda: MemoryLimit(2**40, job))
    assert runner.invoke(app, ["validate", "Task90_Synth", "--workers", "4"]).exit_code == 0
    assert bars == [("validating, 2 at a time (memory)", 6), ("validating", 6), ("validating", 6)]
    assert len(steps) == 18  # one step a case


def test_a_tilde_in_data_dir_is_the_home_folder_in_the_command_it_suggests(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `--data-dir '~/data'` suggested `fetch ... --data-dir '~/data'`, which made ./~/data
    write_task_file(home, "Task90_Synth")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "user" / "data"
    for command in ("validate", "plan"):
        result = runner.invoke(app, [command, "Task90_Synth", "--data-dir", "~/data"])
        assert result.exit_code == 3, result.output
        assert result.output.strip() == (
            f"error: {data / 'Task90_Synth'}: task not fetched (or incomplete); run `medseg-bench fetch "
            f"Task90_Synth --data-dir {data}` first")
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("loop", [False, True])
def test_a_data_folder_that_is_a_broken_link_says_why_as_a_results_dir_does(home: Path, tmp_path: Path,
                                                                          loop: bool) -> None:
    # it was "the data folder is not a folder", where --results-dir said where the link leads
    write_task_file(home, "Task90_Synth")
    data = tmp_path / "data"
    data.symlink_to(data if loop else tmp_path / "gone")
    gone = f"a link to {tmp_path / 'gone'}, which does not exist"
    why = "a link that leads back to itself" if loop else gone
    for command in ("fetch", "validate", "plan"):
        result = runner.invoke(app, [command, "Task90_Synth", "--data-dir", str(data)])
        assert result.exit_code == 2, (command, result.output)
        assert result.output.strip() == (
            f"error: {data}: the data folder is {why}, not a folder; choose another --data-dir"), command
    assert not (tmp_path / "gone").exists()
