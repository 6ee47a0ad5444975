"""Task files: each key's value checked (one line naming the file and key), defaults, every packaged task."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app

GOOD_TASK = """name: Task99_Bad
imaging: MRI
modalities: [MRI]
labels: {0: background, 1: outer, 2: core}
"""


@pytest.mark.parametrize(("change", "message"), [
    ("imaging:", "missing required key 'imaging'"),  # a bare key: the line is left out
    ("labels:", "missing required key 'labels'"),
    ("url: 123", "'url' must be a non-empty string, not 123"),
    ("local_path: 5", "'local_path' must be a non-empty string, not 5"),
    ("md5: 12345", "'md5' must be 32 hexadecimal digits in quotes, not 12345"),
    ("md5: abc", "'md5' must be 32 hexadecimal digits in quotes, not 'abc'"),
    ("num_training: lots", "'num_training' must be a whole number >= 0, not 'lots'"),
    ("num_test: -1", "'num_test' must be a whole number >= 0, not -1"),
    ("modalities: FLAIR", "'modalities' must be a list of modality names, one per channel, not 'FLAIR'"),
    ("modalities: []", "'modalities' must be a list of modality names, one per channel, not []"),
    ("tensor_image_size: 5D", "'tensor_image_size' must be one of 3D, 4D, not '5D'"),
    ("imaging: PET", "'imaging' must be one of CT, MRI, other, not 'PET'"),
    ("version: abc", "'version' must be a whole number >= 1, not 'abc'"),
    ("version: 1.5", "'version' must be a whole number >= 1, not 1.5"),
    ("nsd_tolerance_mm: wide", "'nsd_tolerance_mm' must be a finite distance >= 0 (mm), not 'wide'"),
    ("nsd_tolerance_mm: .nan", "'nsd_tolerance_mm' must be a finite distance >= 0 (mm), not nan"),
    ("labels: {0: background, 300: x}", "'labels' must be keyed by label values 0..255, not 300"),
    ("labels: [background, outer]", "'labels' must be a mapping of label values to names"),
    ("regions: {whole: [1, 7]}", "'regions' name labels [7] that 'labels' lacks"),
    ("regions: {whole: 1}", "'regions: whole' must be a non-empty list of label values, not 1"),
    # a region's scores are columns `<metric>_label_<name>` and are titled by name, as a label's by its name
    ("regions: {1: [1, 2]}", "'regions: 1' is a number, which the report reads as a label value: give the"),
    ("regions: {'2.0': [1, 2]}", "'regions: 2.0' is a number, which the report reads as a label value"),
    ("regions: {core: [1, 2]}", "'regions: core' is also label 2's name: the report could not tell their"),
    ("regions: {a_label_b: [1, 2]}", "'regions: a_label_b' holds '_label_', which separates a metric from"),
    # a `null:` key was a region named "None"; an empty name was no column title (and a missing cell)
    ("regions: {null: [1, 2]}", "'regions' must be a mapping of region names to label lists (a name is "
                                "missing), not {None: [1, 2]}"),
    ("regions: {'': [1, 2]}", "'regions: ' is empty: give the region a name"),
    ("regions: {'  ': [1, 2]}", "'regions:   ' is empty: give the region a name"),
    ("reference_dice: {outer: 90}", "'reference_dice: outer' must be a Dice score in 0..1, not 90"),
    ("group_pattern: '('", "'group_pattern' '(' is not a valid regular expression"),
    ("description: [a]", "'description' must be a string, not ['a']"),
    ("labels: {1: outer, 2: core}", "'labels' must name 0, the background"),  # every case would fail
    ('labels: {0: background, "1": outer, 1: core}', "'labels' names label value 1 twice"),
    # BraTS's own numbering: a network of 5 classes predicted 3, which no label file or metric knew
    ("labels: {0: background, 1: necrosis, 2: edema, 4: enhancing}",
     "'labels' must be consecutive from 0 (0, 1, 2, ...), as nnU-Net requires: 3 missing; number the labels"),
    ("modalities: [T2, ADC]\ntensor_image_size: 3D", "'tensor_image_size' 3D cannot hold 2 modalities"),
])
def test_bad_task_files_exit_2_with_one_line(home: Path, change: str, message: str) -> None:
    key, value = change.split(":", 1)
    lines = [line for line in GOOD_TASK.splitlines() if not line.startswith(f"{key}:")]
    if value:
        lines.append(change)
    path = home / "tasks" / "Task99_Bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["list", "tasks"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {path}: {message}"), result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_a_task_files_defaults_and_relative_local_path(home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.data.catalog import get_task

    path = home / "tasks" / "Task99_Bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(GOOD_TASK.replace("modalities: [MRI]", "modalities: [T2, ADC]") + "local_path: data/x\n")
    monkeypatch.chdir(tmp_path)  # not where the task file is
    task = get_task("Task99_Bad")
    assert task.tensor_image_size == "4D"  # two modalities: a fourth axis, as MSD stores them
    assert task.local_path == str(path.parent / "data" / "x")
    assert get_task("Task04_Hippocampus").tensor_image_size == "3D"


def test_good_task_file_and_every_packaged_task_load(home: Path) -> None:
    path = home / "tasks" / "Task99_Bad.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(GOOD_TASK + 'md5: "9D24DBA78A72977DBD1D2E110310F31B"\nversion: 2\nnum_training: 0\n')
    result = CliRunner().invoke(app, ["list", "tasks"])
    assert result.exit_code == 0 and "Task99_Bad" in result.output and "Task10_Colon" in result.output
