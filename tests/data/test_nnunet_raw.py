"""Importing an nnU-Net v2 raw dataset (one file per channel, no training list) with `fetch --source`."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.io import read_image
from medseg_bench.data.msd import training_cases
from medseg_bench.errors import DataError
from tests.conftest import copy_subset, make_synthetic_task, write_image, write_task_file

runner = CliRunner()


def _as_nnunet(msd: Path, dest: Path, channel_names: dict[str, str], labels: dict[str, object]) -> Path:
    """`msd` (an MSD-layout folder) as nnU-Net v2's converter lays it out: a file per channel, no list."""
    for entry in json.loads((msd / "dataset.json").read_text())["training"]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        image, geometry = read_image(msd / entry["image"])
        if len(channel_names) == 1:
            (dest / "imagesTr").mkdir(parents=True, exist_ok=True)
            shutil.copy(msd / entry["image"], dest / "imagesTr" / f"{case}_0000.nii.gz")
        else:
            for index, channel in enumerate(image):
                write_image(dest / "imagesTr" / f"{case}_{index:04d}.nii.gz", channel, geometry.spacing[:3])
        (dest / "labelsTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(msd / entry["label"], dest / "labelsTr" / f"{case}.nii.gz")
    cases = len(list((dest / "labelsTr").iterdir()))
    (dest / "dataset.json").write_text(json.dumps({
        "channel_names": channel_names, "labels": labels, "numTraining": cases, "file_ending": ".nii.gz"}))
    return dest


def _hippocampus_as_nnunet(shared_task: Path, tmp_path: Path, cases: int) -> tuple[Path, Path]:
    """`cases` shared Hippocampus cases in MSD's layout and as nnU-Net's converter lays them out."""
    msd = copy_subset(shared_task, tmp_path / "msd" / "Task04_Hippocampus", cases)
    return msd, _as_nnunet(msd, tmp_path / "nnUNet_raw" / "Dataset004_Hippocampus", {"0": "MRI"},
                           {"background": 0, "Anterior": 1, "Posterior": 2})


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_one_channel_dataset_is_the_same_task_as_its_msd_original(shared_task: Path, home: Path,
                                                                     tmp_path: Path) -> None:
    msd, source = _hippocampus_as_nnunet(shared_task, tmp_path, 4)
    before = _digests(source)
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", source=str(source))
    assert outcome.report is not None and not outcome.report.problems
    assert [w for w in outcome.warnings if "a subset" not in w] == []  # no label or channel name differs
    assert _digests(source) == before  # the user's folder as it was
    task = outcome.folder
    cases, originals = training_cases(task), training_cases(msd)
    assert [c.case_id for c in cases] == [c.case_id for c in originals]  # nnU-Net's case ids, not CASE_0000
    for case, original in zip(cases, originals, strict=True):
        assert case.image.read_bytes() == original.image.read_bytes()
        assert case.label.read_bytes() == original.label.read_bytes()
    data = json.loads((task / "dataset.json").read_text())
    assert data["modality"] == {"0": "MRI"} and data["labels"] == {"0": "background", "1": "Anterior",
                                                                   "2": "Posterior"}
    assert "file_ending" in json.loads((task / "dataset.nnunet.json").read_text())


def test_channel_files_are_stacked_as_msd_stores_them_and_bad_cases_are_named(home: Path,
                                                                             tmp_path: Path) -> None:
    write_task_file(home, "Task93_Two", channels=2)
    msd = make_synthetic_task(tmp_path / "msd" / "Task93_Two", num_cases=4, channels=2)
    source = _as_nnunet(msd, tmp_path / "raw" / "Dataset093_Two", {"0": "MR0", "1": "MR1"},
                        {"background": 0, "outer": 1, "core": 2})
    (source / "imagesTr" / "case_001_0001.nii.gz").unlink()
    shifted = read_image(source / "imagesTr" / "case_002_0001.nii.gz")[0][0]
    write_image(source / "imagesTr" / "case_002_0001.nii.gz", shifted, (1.0, 1.0, 2.0))
    said: list[str] = []
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source), say=said.append)
    assert said == ["Dataset093_Two: an nnU-Net v2 dataset of 4 cases, imported in MSD's layout (each case's "
                    "2 channel files stacked into one 4D image)"]
    assert outcome.report is not None
    problems = {p.case_id: str(p) for p in outcome.report.problems}
    images = outcome.folder / "imagesTr"
    assert problems == {
        "case_001": f"{images}/case_001_0001.nii.gz: missing (one file per channel: CASE_0000, CASE_0001, "
                    "...)",
        "case_002": f"{images}/case_002_0001.nii.gz: its geometry is not case_002_0000.nii.gz's: spacing "
                    "(1, 1, 2) vs (1, 1, 1)"}  # the file's own first, as a label's against its image
    assert [c.case_id for c in outcome.report.usable_cases] == ["case_000", "case_003"]
    for case in (c for c in training_cases(outcome.folder) if c.case_id in ("case_000", "case_003")):
        image, geometry = read_image(case.image)
        original, original_geometry = read_image(msd / "imagesTr" / f"{case.case_id}.nii.gz")
        assert case.image.name == f"{case.case_id}.nii.gz" and np.array_equal(image, original)
        assert geometry == original_geometry
    assert not list((outcome.folder / "imagesTr").glob("case_000_*"))  # stacked, not kept twice
    marker = json.loads((outcome.folder / ".medseg-bench-valid.json").read_text())
    assert sorted(entry["case"] for entry in marker["excluded"]) == ["case_001", "case_002"]


def test_a_problem_found_by_validation_names_the_users_channel_file(shared_task: Path, home: Path,
                                                                    tmp_path: Path) -> None:
    _, source = _hippocampus_as_nnunet(shared_task, tmp_path, 2)
    image = sorted((source / "imagesTr").iterdir())[0]
    image.write_bytes(image.read_bytes()[:300])  # cut short
    with pytest.raises(DataError) as error:
        fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", source=str(source), strict=True)
    assert str(image) in str(error.value)
    assert not (tmp_path / "data" / "Task04_Hippocampus").exists()


@pytest.mark.parametrize("relative", [False, True])
def test_a_case_excluded_from_a_kept_import_names_the_users_file_too(
        shared_task: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        relative: bool) -> None:
    # It named only the converted file in the data dir (CASE.nii.gz), a name the user's dataset does not hold;
    # until 2026-12-04 it did so still under a relative --data-dir.
    _, source = _hippocampus_as_nnunet(shared_task, tmp_path, 3)
    image = sorted((source / "imagesTr").iterdir())[0]
    image.write_bytes(image.read_bytes()[:300])  # cut short
    case = image.name.removesuffix("_0000.nii.gz")
    monkeypatch.chdir(tmp_path)
    data = Path("data") if relative else tmp_path / "data"
    result = runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(source), "--data-dir",
                                 str(data)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    kept = data / "Task04_Hippocampus" / "imagesTr" / f"{case}.nii.gz"
    warning = next(line for line in result.output.splitlines() if case in line)
    assert warning.startswith(f"warning: {kept} (imported from {image}): ")
    assert "(case excluded from training)" in warning
    marker = json.loads((kept.parent.parent / ".medseg-bench-valid.json").read_text())
    assert marker["excluded"][0]["file"] == str(kept)


def test_region_based_labels_leave_the_values_to_the_task_file(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task93_One")
    msd = make_synthetic_task(tmp_path / "msd" / "Task93_One", num_cases=2)
    source = _as_nnunet(msd, tmp_path / "raw" / "Dataset093_One", {"0": "MR0"},
                        {"background": 0, "whole": [1, 2], "core": 2})
    outcome = fetch_task(get_task("Task93_One"), tmp_path / "data", source=str(source))
    assert outcome.report is not None and not outcome.report.problems
    assert "labels" not in json.loads((outcome.folder / "dataset.json").read_text())


@pytest.mark.parametrize(("edit", "message"), [
    ({"file_ending": ".png"}, "file_ending '.png'; medseg-bench reads .nii.gz, .nii, .nrrd, .mha"),
    ({"channel_names": {"1": "MR0"}}, "channel_names must map 0, 1, ... to channel names"),
    ({"labels": {"background": 0, "outer": "1"}}, "labels must map label names to whole numbers"),
])
def test_a_dataset_json_that_cannot_be_converted_is_named(home: Path, tmp_path: Path, edit: dict,
                                                          message: str) -> None:
    write_task_file(home, "Task93_One")
    source = _as_nnunet(make_synthetic_task(tmp_path / "msd" / "Task93_One", num_cases=1),
                        tmp_path / "raw" / "Dataset093_One", {"0": "MR0"}, {"background": 0, "outer": 1})
    data = json.loads((source / "dataset.json").read_text()) | edit
    (source / "dataset.json").write_text(json.dumps(data))
    result = runner.invoke(app, ["fetch", "Task93_One", "--source", str(source), "--data-dir",
                                 str(tmp_path / "data")])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {source / 'dataset.json'}: {message}")


def test_checking_an_nnunet_folder_in_place_says_how_to_import_it(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task93_One")
    data = tmp_path / "data"
    _as_nnunet(make_synthetic_task(tmp_path / "msd" / "Task93_One", num_cases=1), data / "Task93_One",
               {"0": "MR0"}, {"background": 0, "outer": 1})
    result = runner.invoke(app, ["fetch", "Task93_One", "--source", str(data / "Task93_One"), "--data-dir",
                                 str(data)])
    assert result.exit_code == 3, result.output
    assert "an nnU-Net v2 dataset (no 'training' list); `medseg-bench fetch TASK --source FOLDER` imports" \
        in result.output


def test_channel_files_are_grouped_only_where_cases_have_the_tasks_channels() -> None:
    from medseg_bench.data.nnunet_raw import channel_files

    def paths(*names: str) -> list[Path]:
        return [Path("images") / name for name in names]

    eleven = paths(*(f"c_{i:04d}.nii.gz" for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9)))
    assert channel_files(eleven, 11) == ({"c": sorted(eleven, key=lambda p: int(p.name[2:6]))}, "")  # 2, 10
    assert channel_files(paths("a_0000.nii.gz", "b_0000.NII.GZ"), 1) == (
        {"a": paths("a_0000.nii.gz"), "b": paths("b_0000.NII.GZ")}, "")
    assert channel_files(paths("hippocampus_001.nii.gz"), 1) == (None, "")  # MSD's names
    assert channel_files(paths("img_0000.nii.gz", "img_0001.nii.gz"), 1) == (None, "")  # numbered cases
    groups, note = channel_files(paths("a_0000.nii.gz", "b.nii.gz"), 1)
    assert groups is None and note == ("images/b.nii.gz: not named as nnU-Net names a channel file (CASE_0000"
                                       "...), as a_0000.nii.gz is: each file is taken as a case of its own")
    with pytest.raises(DataError) as missing:
        channel_files(paths("a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz"), 2)
    assert str(missing.value) == ("images/b_0001.nii.gz: missing (nnU-Net's layout, as a_0000.nii.gz: "
                                  "CASE_0000 to CASE_0001)")
    with pytest.raises(DataError, match="images/b_0001.nii.gz: a channel past the task's 1"):
        channel_files(paths("a_0000.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"), 1)


def test_a_case_lacking_a_channel_file_is_named_where_no_case_has_them_all() -> None:
    # A one-case folder of Task01-like channel files lacking its T2w file: no case complete, so the files were
    # taken as MSD images, and predict blamed CASE_0000 as "1 channel(s), but ... take 4".
    from medseg_bench.data.nnunet_raw import incomplete_channels

    def paths(*names: str) -> list[Path]:
        return [Path("images") / name for name in names]

    three = paths("brats_0000.nii.gz", "brats_0001.nii.gz", "brats_0002.nii.gz")
    assert incomplete_channels(three, 4) == ("images/brats_0003.nii.gz: missing (nnU-Net's layout, "
                                             "CASE_0000 to CASE_0003)")
    assert incomplete_channels(paths("a_0001.nii.gz", "b_0000.nii.gz"), 2) == (
        "images/a_0000.nii.gz: missing (nnU-Net's layout, CASE_0000 to CASE_0001)")
    assert incomplete_channels(three, 1) == ""  # one channel: every such file is a case of its own
    # a case with all of the task's channel files and more: the first past them (the first file was blamed
    # for holding one channel), as where some other case is complete
    assert incomplete_channels(three, 2) == ("images/brats_0002.nii.gz: a channel past the task's 2 "
                                             "(nnU-Net's layout, CASE_0000 to CASE_0001)")
    assert incomplete_channels(paths("a_0000.nii.gz", "a_0002.nii.gz"), 2) == ""  # neither: taken as MSD's
    assert incomplete_channels(paths("brats_0000.nii.gz", "brats.nii.gz"), 4) == ""  # a file not so named
    assert incomplete_channels(paths("brats_001.nii.gz"), 4) == ""  # MSD's names


def _two_channel_source(home: Path, tmp_path: Path, num_cases: int = 3) -> tuple[Path, Path]:
    write_task_file(home, "Task93_Two", channels=2)
    msd = make_synthetic_task(tmp_path / "msd" / "Task93_Two", num_cases=num_cases, channels=2)
    return msd, _as_nnunet(msd, tmp_path / "raw" / "Dataset093_Two", {"0": "MR0", "1": "MR1"},
                           {"background": 0, "outer": 1, "core": 2})


def test_channels_of_different_types_are_stacked_without_cutting_one(home: Path, tmp_path: Path) -> None:
    # int16 CT beside a float PET channel: the float channel was cast to int16 (10.79 -> 10; into uint8 it
    # wrapped), so training saw other values than predict, which reads each channel file as float32.
    import SimpleITK as sitk

    _, source = _two_channel_source(home, tmp_path, num_cases=2)
    first = source / "imagesTr" / "case_000_0000.nii.gz"
    image = sitk.ReadImage(str(first))
    sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(image, 0, 200), sitk.sitkUInt8), str(first))
    second = read_image(source / "imagesTr" / "case_000_0001.nii.gz")[0][0] * 100.0 - 1000.0
    write_image(source / "imagesTr" / "case_000_0001.nii.gz", second)
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    stacked, _ = read_image(outcome.folder / "imagesTr" / "case_000.nii.gz")
    assert np.allclose(stacked[1], second, atol=1e-3) and stacked[1].min() < -100
    assert np.array_equal(stacked[0], read_image(first)[0][0])


def test_a_channel_file_cut_short_or_with_nan_excludes_its_case_also_after_validate(home: Path,
                                                                                  tmp_path: Path) -> None:
    # ITK reads both as zeros: stacked into a clean 4D file, they were accepted (with --strict too); and a
    # case left out by the import was forgotten by the next `validate`.
    _, source = _two_channel_source(home, tmp_path)
    cut = source / "imagesTr" / "case_001_0001.nii.gz"
    cut.write_bytes(cut.read_bytes()[:200])
    nan = read_image(source / "imagesTr" / "case_002_0000.nii.gz")[0][0]
    nan[0, 0, 0] = np.nan
    write_image(source / "imagesTr" / "case_002_0000.nii.gz", nan)
    with pytest.raises(DataError, match="case_001_0001.nii.gz: .*gzip stream"):
        fetch_task(get_task("Task93_Two"), tmp_path / "strict", source=str(source), strict=True)
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    assert outcome.report is not None
    problems = {p.case_id: (Path(p.file).name, p.message) for p in outcome.report.problems}
    assert problems["case_002"] == ("case_002_0000.nii.gz", "image holds NaN or inf voxels")
    assert problems["case_001"][0] == "case_001_0001.nii.gz" and "gzip stream" in problems["case_001"][1]
    again = runner.invoke(app, ["validate", "Task93_Two", "--data-dir", str(tmp_path / "data")])
    assert again.exit_code == 0, again.output
    assert "1 of 3 training cases valid" in again.output
    assert "list of excluded cases updated" not in again.output
    strict = runner.invoke(app, ["validate", "Task93_Two", "--data-dir", str(tmp_path / "data"), "--strict"])
    assert strict.exit_code == 3, strict.output


def test_a_stacked_image_the_disk_cannot_take_stops_the_import(home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # A full disk was read as a damaged case (and fetch kept the task), or gave a traceback.
    from medseg_bench.data import io

    _, source = _two_channel_source(home, tmp_path)
    real = io.sitk_module().WriteImage

    def full(image: object, path: str, *args: object) -> None:
        real(image, path, *args)
        Path(path).write_bytes(Path(path).read_bytes()[:100])  # as ITK's writer leaves it, without an error

    monkeypatch.setattr(io.sitk_module(), "WriteImage", full)
    monkeypatch.setattr("shutil.disk_usage", lambda folder: type("Usage", (), {"free": 0})())
    result = runner.invoke(app, ["fetch", "Task93_Two", "--source", str(source), "--data-dir",
                                 str(tmp_path / "data")])
    assert result.exit_code == 7, result.output
    assert "case_000.nii.gz: not written (No space left on device" in result.output.splitlines()[-1]
    assert not (tmp_path / "data" / "Task93_Two").exists()


def test_what_the_dataset_holds_but_is_not_imported_is_said(home: Path, tmp_path: Path) -> None:
    _, source = _two_channel_source(home, tmp_path)
    shutil.copy(source / "imagesTr" / "case_000_0000.nii.gz", source / "imagesTr" / "orphan_0000.nii.gz")
    for case in ("case_000", "case_002"):  # channel files past channel_names' two were left out unsaid
        shutil.copy(source / "imagesTr" / f"{case}_0000.nii.gz", source / "imagesTr" / f"{case}_0002.nii.gz")
    data = json.loads((source / "dataset.json").read_text())
    data["numTraining"] = 5
    data["modality"] = data.pop("channel_names")  # nnU-Net v2 still reads the older key
    (source / "dataset.json").write_text(json.dumps(data))
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    assert outcome.warnings[:3] == (
        f"{source / 'imagesTr' / 'orphan_0000.nii.gz'}: no label map in labelsTr for its case: not imported",
        f"{source / 'imagesTr' / 'case_000_0002.nii.gz'} and 1 more: a channel past the 2 of dataset.json's "
        "channel_names: not imported",
        f"{source / 'dataset.json'}: numTraining is 5, labelsTr holds 3 label maps: all of them imported")
    assert outcome.report is not None and len(outcome.report.usable_cases) == 3  # imported all the same


def test_a_numtraining_unlike_one_label_map_says_map() -> None:
    from medseg_bench.data.nnunet_raw import _count_warning

    json_path = Path("/data/Dataset093_Two/dataset.json")
    assert _count_warning({"numTraining": 2}, json_path, [Path("case_000.nii.gz")]) == [
        f"{json_path}: numTraining is 2, labelsTr holds 1 label map: all of them imported"]
    assert _count_warning({"numTraining": 1}, json_path, [Path("case_000.nii.gz")]) == []


@pytest.mark.parametrize(("edit", "message"), [
    ({"labels": {"background": 0, "outer": 1, "ignore": 3}}, "labels has nnU-Net's 'ignore' label"),
    ({"labels": {"background": 0, "outer": 1.0}}, "labels must map label names to whole numbers"),
    ({"dataset": {}}, "lists its files per case ('dataset'), which medseg-bench does not read"),
])
def test_a_dataset_json_refused_is_refused_before_any_case_is_converted(home: Path, tmp_path: Path,
                                                                        edit: dict, message: str) -> None:
    _, source = _two_channel_source(home, tmp_path)
    (source / "dataset.json").write_text(json.dumps(json.loads((source / "dataset.json").read_text()) | edit))
    said: list[str] = []
    with pytest.raises(DataError, match=re.escape(message)):
        fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source), say=said.append)
    assert said == []  # nothing stacked first


def test_a_channel_file_with_vector_voxels_is_named_as_such(home: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    _, source = _two_channel_source(home, tmp_path)
    vector = sitk.Compose([sitk.ReadImage(str(source / "imagesTr" / "case_000_0001.nii.gz"))] * 3)
    sitk.WriteImage(vector, str(source / "imagesTr" / "case_000_0001.nii.gz"))
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    assert outcome.report is not None
    assert [p.message for p in outcome.report.problems] == [
        "3 components per voxel; each channel file of an nnU-Net dataset holds one"]


def test_an_nnunet_raw_folder_of_several_datasets_says_which_to_pass(home: Path, tmp_path: Path) -> None:
    _, source = _two_channel_source(home, tmp_path)
    shutil.copytree(source, source.parent / "Dataset094_Other")
    with pytest.raises(DataError) as error:
        fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source.parent))
    assert str(error.value) == (f"{source.parent}: several task folders (Dataset093_Two, Dataset094_Other); "
                                f"pass one of them, as --source {source}")


def test_metaimage_channel_files_leave_no_data_file_behind(home: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A stacked .mhd channel file went, its .raw voxels stayed in the task's imagesTr. Each channel file's
    # header is parsed once (it was three times: for the outside check, the read and the removal)
    import SimpleITK as sitk

    from tests.data.test_metaimage import counted_header_parses

    parsed = counted_header_parses(monkeypatch)
    _, source = _two_channel_source(home, tmp_path, num_cases=2)
    for path in sorted(source.glob("*Tr/*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path.with_name(path.name.replace(".nii.gz", ".mhd"))))
        path.unlink()
    data = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps(data | {"file_ending": ".mhd"}))
    assert sorted(p.suffix for p in (source / "imagesTr").iterdir()) == [".mhd"] * 4 + [".raw"] * 4
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    assert outcome.report is not None and not outcome.report.problems
    assert sorted(p.name for p in (outcome.folder / "imagesTr").iterdir()) == ["case_000.nii.gz",
                                                                               "case_001.nii.gz"]
    assert sorted(p.name for p in parsed if p.parent.name == "imagesTr" and p.suffix == ".mhd") == [
        f"case_00{case}_000{channel}.mhd" for case in (0, 1) for channel in (0, 1)]


def test_a_channel_name_warning_names_the_users_dataset_json(shared_task: Path, home: Path,
                                                             tmp_path: Path) -> None:
    # It named the dataset.json the import wrote into the data dir, a file the user never made.
    _, source = _hippocampus_as_nnunet(shared_task, tmp_path, 2)
    data = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps(data | {"channel_names": {"0": "T2"}}))
    outcome = fetch_task(get_task("Task04_Hippocampus"), tmp_path / "data", source=str(source))
    named = [w for w in outcome.warnings if "names channel 0: 'T2' (task file: 'MRI')" in w]
    assert len(named) == 1 and named[0].startswith(f"{source / 'dataset.json'}: "), outcome.warnings


@pytest.mark.parametrize("named", ["absolute", "relative"])
def test_a_channel_file_whose_voxels_lie_outside_the_dataset_is_refused_and_that_file_kept(
        home: Path, tmp_path: Path, named: str) -> None:
    # A hostile dataset's .mhd channel files named a file of the user's as their voxels: the import read it
    # into the stacked image, then deleted it with the channel files it had stacked.
    import SimpleITK as sitk

    _, source = _two_channel_source(home, tmp_path, num_cases=3)
    for path in sorted(source.glob("*Tr/*.nii.gz")):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(path.with_name(path.name.replace(".nii.gz", ".mhd"))))
        path.unlink()
    data = json.loads((source / "dataset.json").read_text())
    (source / "dataset.json").write_text(json.dumps(data | {"file_ending": ".mhd"}))
    victim = tmp_path / "notes.txt"
    victim.write_bytes(bytes(range(256)) * 100)
    for channel in ("case_001_0000.mhd", "case_001_0001.mhd"):
        header = source / "imagesTr" / channel
        raw = header.with_suffix(".raw")
        size = raw.stat().st_size
        name = str(victim) if named == "absolute" else "../../../../notes.txt"  # from the staging copy
        header.write_text(re.sub(r"ElementDataFile = .*", f"ElementDataFile = {name}", header.read_text()))
        raw.unlink()
        assert victim.stat().st_size >= size
    outcome = fetch_task(get_task("Task93_Two"), tmp_path / "data", source=str(source))
    assert victim.read_bytes() == bytes(range(256)) * 100
    assert outcome.report is not None
    assert [(p.case_id, Path(p.file).name, p.message) for p in outcome.report.problems] == [
        ("case_001", "case_001_0000.mhd",
         f"its data file {name} (ElementDataFile) lies outside the dataset's folder")]
