from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.errors import UsageError
from medseg_bench.spec import RunSpec


def _spec(**kw: object) -> RunSpec:
    base: dict[str, object] = {"task": "Task04_Hippocampus", "dims": "3d", "arch": "unet", "loss": "dice_ce",
                               "aug": "none"}
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_run_id_is_stable_and_readable() -> None:
    a, b = _spec(), _spec()
    assert a.run_id == b.run_id
    assert a.run_id.startswith("3d-unet-dice_ce-none-f0-s0-")
    assert RunSpec.from_dict(a.to_dict()).run_id == a.run_id


@pytest.mark.parametrize("change", [{"seed": 1}, {"epochs": 11}, {"lr": 0.01}, {"patch_size": (8, 8, 8)}])
def test_every_result_field_changes_the_id(change: dict[str, object]) -> None:
    assert _spec(**change).run_id != _spec().run_id


def test_known_id_does_not_drift() -> None:
    # Guards against accidental changes of the hashing, which would orphan finished runs: change this
    # value only together with PIPELINE_VERSION.
    assert _spec().spec_hash == "f72c1f228b"  # PIPELINE_VERSION 13


@pytest.mark.parametrize(("bad", "message"), [
    ({"dims": "4d"}, "unknown dims '4d'"),
    ({"fold": 5}, "fold 5 outside 0..4"),
    ({"num_folds": 1}, "num_folds must be at least 2"),
    ({"epochs": 0}, "epochs must be at least 1, not 0"),
    ({"iters_per_epoch": 0}, "iters_per_epoch must be at least 1, not 0"),
    ({"batch_size": 0}, "batch_size must be at least 1, not 0"),  # 0 used to mean "from the plan", silently
    ({"seed": -1}, "seed must be in 0..4294967295"),
    ({"lr": -1.0}, "lr must be a positive number, not -1.0"),
    ({"lr": float("nan")}, "lr must be a positive number, not nan"),
    ({"max_minutes": 0.0}, "max_minutes must be a positive number"),
    ({"patch_size": (32, 32)}, "a 3d patch size is 3 positive sides, not 32,32"),
    ({"dims": "2d", "patch_size": (32, 0)}, "a 2d patch size is 2 positive sides, not 32,0"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
])
def test_invalid_specs(bad: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _spec(**bad)


@pytest.mark.parametrize(("change", "problem"), [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"epochs": "8"}, "'epochs' must be a whole number, not \"8\""),
    ({"fold": 7}, "fold 7 outside 0..4"),
])
def test_a_spec_json_is_checked_and_built_in_one_step(change: dict[str, object], problem: str) -> None:
    # predict checked a spec.json (which built the spec) and then built it again.
    data = _spec(patch_size=(32, 48, 32)).to_dict()
    assert RunSpec.checked(data) == _spec(patch_size=(32, 48, 32)) and RunSpec.problem(data) is None
    with pytest.raises(UsageError) as info:
        RunSpec.checked(data | change)
    assert str(info.value) == problem == RunSpec.problem(data | change)


def test_a_spec_json_lacking_a_required_key_is_a_usage_error_naming_it() -> None:
    # `checked` let the dataclass's TypeError through: `predict` on such a run folder showed a traceback.
    data = {key: value for key, value in _spec().to_dict().items() if key not in ("arch", "aug")}
    with pytest.raises(UsageError) as info:
        RunSpec.checked(data)
    assert str(info.value) == "lacks arch, aug" == RunSpec.problem(data)


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
