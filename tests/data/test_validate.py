"""Every kind of broken case is named with its file and excluded; structural problems are fatal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.msd import training_cases
from medseg_bench.data.validate import Problem, ValidationReport, problem_summary, refusal, validate_folder
from medseg_bench.errors import DataError
from tests.conftest import make_synthetic_task, write_image, write_task_file


@pytest.fixture
def synth(home: Path, tmp_path: Path) -> tuple[Path, object]:
    write_task_file(home, "Task90_Synth")
    return make_synthetic_task(tmp_path / "Task90_Synth"), get_task("Task90_Synth")


def test_clean_task_has_no_problems(synth) -> None:
    folder, task = synth
    report = validate_folder(folder, task)
    assert report.problems == [] and len(report.usable_cases) == 6


def _problem_for(folder: Path, task, case: str) -> str:
    report = validate_folder(folder, task)
    assert report.excluded == {case}, report.problems
    return str(report.problems[0])


def test_missing_label(synth) -> None:
    folder, task = synth
    (folder / "labelsTr" / "case_001.nii.gz").unlink()
    assert "labelsTr/case_001.nii.gz: label file missing" in _problem_for(folder, task, "case_001")


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_a_case_file_that_is_a_link_to_itself_is_named_and_excluded(synth, sub: str) -> None:
    folder, task = synth
    path = folder / sub / "case_001.nii.gz"
    path.unlink()
    path.symlink_to(path.name)  # Path.resolve raised RuntimeError("Symlink loop ...") from training_cases
    what = "image" if sub == "imagesTr" else "label"
    assert (f"{sub}/case_001.nii.gz: {what} file is a link that leads back to itself"
            in _problem_for(folder, task, "case_001"))


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_a_folder_of_a_case_files_name_is_named_as_such_not_missing(synth, sub: str) -> None:
    # "label file missing", of a path that is there: a folder the user made, or an archive tool's slip.
    folder, task = synth
    path = folder / sub / "case_001.nii.gz"
    path.unlink()
    path.mkdir()
    what = "image" if sub == "imagesTr" else "label"
    problem = _problem_for(folder, task, "case_001")
    assert f"{sub}/case_001.nii.gz: {what} file is a folder, not a file" in problem


@pytest.mark.parametrize("data_file", ["ABSOLUTE", "../../outside.raw", "LIST 2D\n{} ", "../sub/x.raw"])
def test_a_metaimage_reading_its_voxels_from_outside_the_task_is_excluded(synth, data_file: str) -> None:
    # ElementDataFile names the file ITK reads the voxels from: any file of the user's was read as a case
    import SimpleITK as sitk

    folder, task = synth
    outside = folder.parent / "outside.raw"
    header = folder / "imagesTr" / "case_001.mhd"
    sitk.WriteImage(sitk.ReadImage(str(folder / "imagesTr" / "case_001.nii.gz")), str(header))
    (folder / "imagesTr" / "case_001.raw").rename(outside)
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"][1]["image"] = "./imagesTr/case_001.mhd"
    (folder / "dataset.json").write_text(json.dumps(meta))
    name = data_file.replace("ABSOLUTE", str(outside)).format(outside)
    if data_file == "../sub/x.raw":  # in the task folder, beside imagesTr: read as ever
        (folder / "sub").mkdir()
        outside.rename(folder / "sub" / "x.raw")
    text = header.read_text().replace("ElementDataFile = case_001.raw", f"ElementDataFile = {name}")
    header.write_text(text)
    report = validate_folder(folder, task)
    if data_file == "../sub/x.raw":
        assert report.problems == []
        return
    named = name.split("\n")[-1].strip() if data_file.startswith("LIST") else name
    assert [str(p) for p in report.problems] == [
        f"{header}: its data file {named} (ElementDataFile) lies outside the task folder"]


@pytest.mark.parametrize("inside", [False, True])
def test_a_nrrd_reading_its_voxels_from_outside_the_task_is_excluded(synth, inside: bool) -> None:
    # A NRRD file's `data file:` field, as a MetaImage's ElementDataFile, names any file for ITK to read
    import SimpleITK as sitk

    folder, task = synth
    nrrd = folder / "imagesTr" / "case_001.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(folder / "imagesTr" / "case_001.nii.gz")), str(nrrd), False)
    head, voxels = nrrd.read_bytes().split(b"\n\n", 1)
    data = folder / "imagesTr" / "case_001.raw" if inside else folder.parent / "notes.raw"
    data.write_bytes(voxels)
    nrrd.write_bytes(head + f"\ndata file: {data if not inside else data.name}\n\n".encode())
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"][1]["image"] = "./imagesTr/case_001.nrrd"
    (folder / "dataset.json").write_text(json.dumps(meta))
    report = validate_folder(folder, task)
    assert [str(p) for p in report.problems] == ([] if inside else [
        f"{nrrd}: its data file {data} (data file) lies outside the task folder"])


@pytest.mark.parametrize(("sub", "kind", "problem"), [
    ("imagesTr", "complex", "complex pixels are not supported (one real value per voxel expected)"),
    ("labelsTr", "complex", "complex pixels are not supported (one real value per voxel expected)"),
    ("imagesTr", "rgb", "RGB/vector pixels (3 components per voxel), but the task declares 1 modality (MR0)"),
    ("labelsTr", "rgb", "RGB/vector pixels (3 components per voxel); a label map holds one value per voxel"),
])
def test_complex_or_vector_pixels_are_named_and_the_case_excluded(synth, sub: str, kind: str,
                                                                  problem: str) -> None:
    # ITK counts a complex voxel's two parts as components: a complex image was "image is 4D, the task
    # declares 3D", as an RGB one; a complex label map was read on its real part, with numpy's ComplexWarning.
    import SimpleITK as sitk

    folder, task = synth
    path = folder / sub / "case_001.nii.gz"
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    image = (sitk.GetImageFromArray(values.astype(np.complex64)) if kind == "complex"
             else sitk.GetImageFromArray(np.stack([values] * 3, -1).astype(np.uint8), isVector=True))
    sitk.WriteImage(image, str(path))
    assert _problem_for(folder, task, "case_001") == f"{path}: {problem}"


def test_vector_pixels_are_the_channels_of_a_task_declaring_as_many(home: Path, tmp_path: Path) -> None:
    import SimpleITK as sitk

    write_task_file(home, "Task91_Multi", channels=3)
    folder = make_synthetic_task(tmp_path / "Task91_Multi", num_cases=2, channels=3)
    path = folder / "imagesTr" / "case_000.nii.gz"
    channels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (C, Z, Y, X)
    sitk.WriteImage(sitk.GetImageFromArray(np.moveaxis(channels, 0, -1), isVector=True), str(path))
    assert validate_folder(folder, get_task("Task91_Multi")).problems == []


def test_label_shape_and_spacing_mismatch(synth) -> None:
    folder, task = synth
    write_image(folder / "labelsTr" / "case_002.nii.gz", np.zeros((12, 20, 19), np.uint8))
    assert "shape" in _problem_for(folder, task, "case_002")
    write_image(folder / "labelsTr" / "case_002.nii.gz", np.zeros((12, 20, 20), np.uint8), spacing=(1, 1, 3))
    assert "spacing" in _problem_for(folder, task, "case_002")


def test_a_label_dataset_json_declares_but_the_task_file_does_not_is_named(synth) -> None:
    # BraTS's original labels (1, 2, 4) against a task file of 0-3: label 4 cannot train (4 classes).
    from medseg_bench.data.validate import label_warnings

    folder, task = synth
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"]["3"] = "extra"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    seg = np.zeros((12, 20, 20), np.uint8)
    seg[2, 2, 2] = 3
    write_image(folder / "labelsTr" / "case_003.nii.gz", seg)
    problem = _problem_for(folder, task, "case_003")
    assert "label values [3] not among Task90_Synth's labels (0, 1, 2)" in problem
    assert label_warnings(folder, task) == [
        f"{folder / 'dataset.json'}: labels [0, 1, 2, 3] differ from Task90_Synth's [0, 1, 2] (its task file "
        "sets the classes: other label values exclude a case)"]


def test_dataset_json_names_or_modalities_unlike_the_task_files_are_warned(synth) -> None:
    from medseg_bench.data.validate import label_warnings

    folder, task = synth
    assert label_warnings(folder, task) == []
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = {"0": "Background", "1": "core", "2": "outer"}  # 1 and 2 swapped; case is no matter
    dataset["modality"] = {"0": "T1", "1": "T2"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert label_warnings(folder, task) == [
        f"{folder / 'dataset.json'}: names label 1: 'core' (task file: 'outer'); 2: 'outer' (task file: "
        "'core'); the task file's names are used (check that the label values mean what the task file says)",
        f"{folder / 'dataset.json'}: declares 2 modalities, Task90_Synth's task file 1; each image's "
        "channels are checked against the task file"]
    dataset["labels"] = {"0": "background", "1": "outer", "2": "core"}
    dataset["modality"] = {"0": "CT"}  # another modality than the task file's MR0, or another order
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert label_warnings(folder, task) == [
        f"{folder / 'dataset.json'}: names channel 0: 'CT' (task file: 'MR0'); each image's channels are "
        "taken in its order, under the task file's names (check that the orders agree)"]
    dataset["modality"] = {"0": " mr0"}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert label_warnings(folder, task) == []


def test_undeclared_label_values_and_nan(synth) -> None:
    folder, task = synth
    seg = np.zeros((12, 20, 20), np.uint8)
    seg[2, 2, 2] = 7
    write_image(folder / "labelsTr" / "case_003.nii.gz", seg)
    assert _problem_for(folder, task, "case_003").endswith(  # a BraTS label 4, say: the task file says so
        ": label values [7] not among Task90_Synth's labels (0, 1, 2) nor declared in dataset.json")
    seg[2, 2, 2] = 2  # the task file's, left out of dataset.json
    write_image(folder / "labelsTr" / "case_003.nii.gz", seg)
    dataset = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dataset, "labels": {"0": "background", "1": "outer"}}))
    report = validate_folder(folder, task)  # every case holds 2
    assert str(report.problems[3]).endswith("case_003.nii.gz: label values [2] not declared in dataset.json")
    (folder / "dataset.json").write_text(json.dumps(dataset))
    write_image(folder / "labelsTr" / "case_003.nii.gz", np.zeros((12, 20, 20), np.uint8))
    image = np.zeros((12, 20, 20), np.float32)
    image[1, 1, 1] = np.nan
    write_image(folder / "imagesTr" / "case_003.nii.gz", image)
    assert "NaN or inf" in _problem_for(folder, task, "case_003")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_label_map_with_nan_or_inf_is_named_not_read_as_background(synth, value: float) -> None:
    folder, task = synth
    seg = np.zeros((12, 20, 20), np.float32)
    seg[2:4, 2:4, 2:4] = 1.0
    seg[3, 3, 3] = value  # ITK's NIfTI reader returns 0 here
    write_image(folder / "labelsTr" / "case_000.nii.gz", seg)
    problem = _problem_for(folder, task, "case_000")
    assert "labelsTr/case_000.nii.gz: label map holds NaN or inf voxels" in problem


def test_dataset_json_labels_that_are_not_a_mapping_are_one_line(synth) -> None:
    from medseg_bench.data.validate import label_warnings

    folder, task = synth
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["labels"] = ["0", "1", "2"]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    for check in (lambda: validate_folder(folder, task), lambda: label_warnings(folder, task)):
        with pytest.raises(DataError, match=r"dataset.json: 'labels' must map label values to names"):
            check()


def test_truncated_and_non_nifti_files(synth) -> None:
    folder, task = synth
    path = folder / "imagesTr" / "case_004.nii.gz"
    path.write_bytes(path.read_bytes()[:100])
    assert "case_004.nii.gz" in _problem_for(folder, task, "case_004")
    path.write_text("not an image")  # ITK reads no header of it; the NIfTI check says why (as `evaluate`)
    problem = _problem_for(folder, task, "case_004")
    assert problem.endswith("case_004.nii.gz: unreadable (not gzip-compressed data)")


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_a_case_declaring_a_huge_volume_is_excluded_from_its_header(synth, sub: str) -> None:
    # a 30000^3 int16 header in a small file: read, ITK allocated 54 TB (MemoryError, or the OOM killer)
    from tests.data.test_io import _huge_header

    folder, task = synth
    _huge_header(folder / sub / "case_001.nii.gz")
    assert (f"{sub}/case_001.nii.gz: image too large: its header declares 30000 x 30000 x 30000 voxels of 2 "
            "bytes (5.029e+04 GiB), more than the " in _problem_for(folder, task, "case_001"))


def _as_uncompressed(folder: Path, case: str) -> tuple[Path, Path]:
    """Rewrite a case as uncompressed .nii files (dataset.json updated); returns (image, label)."""
    import SimpleITK as sitk

    paths = []
    for sub in ("imagesTr", "labelsTr"):
        gz = folder / sub / f"{case}.nii.gz"
        plain = gz.with_name(f"{case}.nii")
        sitk.WriteImage(sitk.ReadImage(str(gz)), str(plain), False)
        gz.unlink()
        paths.append(plain)
    meta_path = folder / "dataset.json"
    meta_path.write_text(meta_path.read_text().replace(f"{case}.nii.gz", f"{case}.nii"))
    return paths[0], paths[1]


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_cut_short_or_not_gzipped_nii_gz_is_excluded_not_fatal(synth, sub: str) -> None:
    # SimpleITK reads a cut-short gzip stream without complaint (zero-filling), so only the raw read notices
    folder, task = synth
    path = folder / sub / "case_002.nii.gz"
    whole = path.read_bytes()
    path.write_bytes(whole[:-12])  # past the header, so SimpleITK still reads it
    message = _problem_for(folder, task, "case_002")
    assert message.startswith(str(path) + ": unreadable (") and "gzip stream cut short" in message
    import gzip

    path.write_bytes(gzip.decompress(whole))  # a plain NIfTI under a .nii.gz name
    assert _problem_for(folder, task, "case_002") == f"{path}: unreadable (not gzip-compressed data)"


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_uncompressed_nii_is_excluded(synth, which: int) -> None:
    folder, task = synth
    path = _as_uncompressed(folder, "case_001")[which]
    assert validate_folder(folder, task).problems == []
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-1000])
    assert _problem_for(folder, task, "case_001") == (
        f"{path}: truncated ({size - 1000} bytes of the {size} the header declares)")


def test_deep_validation_reads_an_uncompressed_nii_once(synth, monkeypatch: pytest.MonkeyPatch) -> None:
    # read for its size (`check_nifti_complete`) and again whole for NaN and inf (`count_nonfinite`)
    from medseg_bench.data import nifti

    folder, task = synth
    image, label = _as_uncompressed(folder, "case_001")
    read: list[Path] = []
    real = nifti._read_nifti
    monkeypatch.setattr(nifti, "_read_nifti",
                        lambda path, keep_data: read.append(path) or real(path, keep_data))
    assert validate_folder(folder, task).problems == []
    assert read.count(image) == 1 and read.count(label) == 1
    read.clear()
    assert validate_folder(folder, task, deep=False).problems == [] and read.count(image) == 1
    values = np.zeros((12, 20, 20), np.float32)
    values[1, 1, 1] = np.inf
    write_image(image, values)  # found by the same read, named after the checks of its header, as before
    read.clear()
    assert _problem_for(folder, task, "case_001") == f"{image}: image holds NaN or inf voxels"
    assert read.count(image) == 1
    write_image(label, values[:, :10])
    assert _problem_for(folder, task, "case_001").startswith(f"{label}: label geometry differs")


@pytest.mark.parametrize("deep", [True, False])
@pytest.mark.parametrize(("sub", "suffix"), [("imagesTr", ".mha"), ("labelsTr", ".mhd")])
def test_a_metaimage_cut_short_is_excluded(synth, deep: bool, sub: str, suffix: str) -> None:
    # SimpleITK 2.2 read it without an error; a header read and a stat tell it, also without `deep`
    import SimpleITK as sitk

    folder, task = synth
    for each in ("imagesTr", "labelsTr"):
        gz = folder / each / "case_005.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(gz)), str(gz.with_name(f"case_005{suffix}")), False)
        gz.unlink()
    meta_path = folder / "dataset.json"
    meta_path.write_text(meta_path.read_text().replace("case_005.nii.gz", f"case_005{suffix}"))
    assert validate_folder(folder, task, deep=deep).problems == []
    path = folder / sub / f"case_005{suffix}"
    data_file = path if suffix == ".mha" else path.with_suffix(".raw")
    size = len(sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes())
    data_file.write_bytes(data_file.read_bytes()[:-3])
    report = validate_folder(folder, task, deep=deep)
    where = "" if data_file == path else f"its data file {data_file.name} holds "
    assert report.excluded == {"case_005"} and str(report.problems[0]) == (
        f"{path}: not a readable image (damaged or cut short: data not read completely, {where}{size - 3} of "
        f"the {size} bytes of voxel data the header declares)")


def test_a_case_s_validation_parses_each_metaimage_header_once(synth,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # parsed for the outside check (`io.data_file_outside`), its geometry, its size
    # (`check_metaimage_complete`) and again for each of `deep`'s reads: three times a file, five with `deep`
    import SimpleITK as sitk

    from medseg_bench.data.validate import check_case
    from tests.data.test_metaimage import counted_header_parses

    folder, task = synth
    for each, suffix in (("imagesTr", ".mha"), ("labelsTr", ".mhd")):
        gz = folder / each / "case_005.nii.gz"
        sitk.WriteImage(sitk.ReadImage(str(gz)), str(gz.with_name(f"case_005{suffix}")))
        gz.unlink()
        meta_path = folder / "dataset.json"
        meta_path.write_text(meta_path.read_text().replace(f"{each}/case_005.nii.gz",
                                                           f"{each}/case_005{suffix}"))
    case = training_cases(folder)[5]
    assert (case.image.name, case.label.name) == ("case_005.mha", "case_005.mhd")
    parsed = counted_header_parses(monkeypatch)
    files = sorted(p for each in training_cases(folder) for p in (each.image, each.label))
    for deep in (False, True):  # `deep`'s memory pre-pass parsed each twice more (`read_memory.stored_case`)
        parsed.clear()
        assert validate_folder(folder, task, deep=deep).problems == []
        assert sorted(parsed) == files  # every case's files once (another format's: no file read for it)
    for deep in (False, True):
        parsed.clear()
        assert check_case(case, task, set(task.labels), deep, folder=folder) == []
        assert sorted(parsed) == sorted([case.image, case.label])
    (case.label.with_suffix(".raw")).rename(folder.parent / "x.raw")  # one parse still finds it outside
    case.label.write_text(case.label.read_text().replace("case_005.raw", "../../x.raw"))
    parsed.clear()
    assert [str(p) for p in check_case(case, task, set(task.labels), True, folder=folder)] == [
        f"{case.label}: its data file ../../x.raw (ElementDataFile) lies outside the task folder"]
    assert sorted(parsed) == sorted([case.image, case.label])


NOT_POSITIVE = "each must be a positive finite number"
OUT_OF_RANGE = "is outside 0.001-1000 mm (a header in other units, or a broken one)"


@pytest.mark.parametrize(("header", "problem"), [
    ("1 1e-6 1", f"(1, 1e-06, 1) mm {OUT_OF_RANGE}"),
    ("1 0.0009 1", f"(1, 0.0009, 1) mm {OUT_OF_RANGE}"),
    ("1 1e6 1", f"(1, 1e+06, 1) mm {OUT_OF_RANGE}"),
    ("1 1001 1", f"(1, 1001, 1) mm {OUT_OF_RANGE}"),
    ("1 0 1", f"(1, 0, 1) mm: {NOT_POSITIVE}"),
    ("1 -2 1", f"(1, -2, 1) mm: {NOT_POSITIVE}"),
    ("1 nan 1", f"(1, 0, 0) mm: {NOT_POSITIVE}"),  # ITK stops reading the spacing at the NaN
])
def test_an_absurd_voxel_spacing_is_named_and_its_case_excluded(synth, header: str, problem: str) -> None:
    # 1e-6 mm passed, and so did 0, -2 and NaN in a MetaImage header (ITK reads a NIfTI's 0 or NaN as 1).
    import SimpleITK as sitk

    folder, task = synth
    for sub in ("imagesTr", "labelsTr"):  # image and label alike: their geometries agree
        gz = folder / sub / "case_003.nii.gz"
        mha = gz.with_name("case_003.mha")
        sitk.WriteImage(sitk.ReadImage(str(gz)), str(mha))
        gz.unlink()
        spacing_line = f"ElementSpacing = {header}".encode()
        mha.write_bytes(mha.read_bytes().replace(b"ElementSpacing = 1 1 1", spacing_line))
    meta_path = folder / "dataset.json"
    meta_path.write_text(meta_path.read_text().replace("case_003.nii.gz", "case_003.mha"))
    image = folder / "imagesTr" / "case_003.mha"
    assert _problem_for(folder, task, "case_003") == f"{image}: voxel spacing {problem}"


def test_spacings_at_the_bounds_and_real_ones_pass() -> None:
    from medseg_bench.data.validate import spacing_problem

    for spacing in ((0.001, 1000.0, 1.0), (0.2, 0.2, 10.0), (1.0, 1.0, 1.0)):
        assert spacing_problem(spacing) == ""
    assert "positive finite" in spacing_problem((1.0, float("inf"), 1.0))


def test_3d_image_where_4d_declared(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task91_Multi", channels=2)
    folder = make_synthetic_task(tmp_path / "Task91_Multi", channels=1)
    report = validate_folder(folder, get_task("Task91_Multi"))
    assert len(report.excluded) == 6 and "declares 4D" in str(report.problems[0])


def test_structural_problems_are_fatal(synth) -> None:
    folder, task = synth
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"].append({"image": "../../etc/passwd", "label": "./labelsTr/x.nii.gz"})
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="points outside the task folder"):
        training_cases(folder)
    for entry in ("./imagesTr/a\x00b.nii.gz", "./imagesTr/" + "a" * 300 + ".nii.gz"):
        meta["training"][-1]["image"] = entry  # a NUL byte crashed fetch; a long name named the staging copy
        (folder / "dataset.json").write_text(json.dumps(meta))
        with pytest.raises(DataError, match=r"dataset.json: entry .* is no file name \(a NUL byte, or a"):
            training_cases(folder)
    (folder / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="invalid JSON"):
        validate_folder(folder, task)
    # A hostile dataset.json: nesting past Python's recursion limit, an integer of 5000 digits (each was a
    # traceback, a RecursionError and a ValueError that was not a JSONDecodeError)
    for text, why in (("[" * 100_000 + "]" * 100_000, "nested too deeply"),
                      ('{"training": [], "numTraining": ' + "9" * 5000 + "}", "Exceeds the limit")):
        (folder / "dataset.json").write_text(text)
        with pytest.raises(DataError, match=rf"dataset.json: invalid JSON \({why}"):
            validate_folder(folder, task)
    (folder / "dataset.json").unlink()
    with pytest.raises(DataError, match="dataset.json missing"):
        validate_folder(folder, task)


def test_empty_training_list(synth) -> None:
    folder, task = synth
    meta = json.loads((folder / "dataset.json").read_text())
    meta["training"] = []
    (folder / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="training list is empty"):
        validate_folder(folder, task)


def test_real_hippocampus_subset_is_clean(hippo_subset: Path) -> None:
    report = validate_folder(hippo_subset, get_task("Task04_Hippocampus"))
    assert report.problems == [] and len(report.cases) == 10


def test_problem_summary_counts_the_rest_by_kind() -> None:
    listed = Path("/data/T/.medseg-bench-valid.json")
    problems = [Problem(f"c{i}", f"/data/T/imagesTr/c{i}.nii.gz", "image file missing") for i in range(4)]
    assert problem_summary(problems, listed, shown=4) is None
    problems += [Problem("c9", "/data/T/labelsTr/c9.nii.gz", f"label shape [{i}] differs") for i in range(5)]
    problems += [Problem("c8", "/data/T/labelsTr/c8.nii.gz", "label values [7] not declared")] * 2
    assert problem_summary(problems, listed, shown=2) == (
        "9 more problem(s) in 4 case(s) (image file missing: 2; label values [7] not declared: 2; "
        "label shape [0] differs: 1; 4 other kind(s)); every one is listed in "
        "/data/T/.medseg-bench-valid.json")


def test_a_refusal_names_the_first_problem_and_counts_the_other_cases() -> None:
    # fetch and validate refuse a task with this one line (they had two wordings, one without the cases).
    problems = [Problem("c0", "/d/T/labelsTr/c0.nii.gz", "label file missing"),
                Problem("c0", "/d/T/imagesTr/c0.nii.gz", "image file missing"),
                Problem("c1", "/d/T/labelsTr/c1.nii.gz", "label file missing")]
    error = refusal(ValidationReport([], problems), "--strict: nothing was kept")
    assert str(error) == ("/d/T/labelsTr/c0.nii.gz: label file missing and 2 more problem(s) in 2 case(s) "
                          "(--strict: nothing was kept)")
    assert str(refusal(ValidationReport([], problems[:1]), "--strict")) == (
        "/d/T/labelsTr/c0.nii.gz: label file missing (--strict)")


def test_many_undeclared_label_values_are_counted_past_ten(synth) -> None:
    """Not every value (an integer image given as a label listed 200 of them, 900 characters)."""
    folder, task = synth
    seg = np.arange(12 * 20 * 20, dtype=np.int16).reshape(12, 20, 20) % 203  # 0-202: 200 undeclared
    write_image(folder / "labelsTr" / "case_003.nii.gz", seg)
    problem = _problem_for(folder, task, "case_003")
    assert problem.endswith(": label values [3, 4, 5, 6, 7, 8, 9, 10, 11, 12 and 190 more] not among "
                            "Task90_Synth's labels (0, 1, 2) nor declared in dataset.json")


def test_a_label_that_is_the_image_file_is_named_as_such(synth) -> None:
    """Not "label map holds non-integer or out-of-range values"."""
    folder, task = synth
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["training"][1]["label"] = dataset["training"][1]["image"]
    (folder / "dataset.json").write_text(json.dumps(dataset))
    assert _problem_for(folder, task, "case_001") == (
        f"{folder / 'imagesTr' / 'case_001.nii.gz'}: label is the image file itself (dataset.json names one "
        "file for both)")


def test_images_stored_in_more_than_one_orientation_are_warned(synth) -> None:
    """Neither medseg-bench nor nnU-Net reorients: a case stored RAS among LPS ones is trained on mirrored.
    fetch and validate say so (how many each way, a case of each other way); an excluded case does not
    count."""
    import SimpleITK as sitk

    from medseg_bench.data.validate import orientation_warnings, report_warnings

    folder, task = synth
    report = validate_folder(folder, task)
    assert set(report.orientations.values()) == {"LPS"} and orientation_warnings(task, report) == []
    cases = training_cases(folder)
    for case in cases[1:3]:  # stored with MSD's usual direction: x and y flipped
        for path in (case.image, case.label):
            image = sitk.ReadImage(str(path))
            image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
            sitk.WriteImage(image, str(path))
    report = validate_folder(folder, task)
    assert report.problems == []
    warning = (f"Task90_Synth: images stored in 2 orientations: LPS (4 cases), RAS (2, e.g. "
               f"{cases[1].case_id}); neither medseg-bench nor nnU-Net reorients them, so networks see these "
               "mirrored or turned: "
               "store every case LPS for comparable training (MONAI's Orientationd, nibabel's "
               "as_closest_canonical)")
    assert orientation_warnings(task, report) == [warning]
    assert warning in report_warnings(task, report, folder)
    cases[1].label.unlink()
    cases[2].label.unlink()  # both excluded: the rest are stored one way
    assert orientation_warnings(task, validate_folder(folder, task)) == []


def test_dataset_json_counts_or_dimensions_unlike_its_cases_or_task_file_are_warned(synth) -> None:
    from medseg_bench.data.validate import header_warnings

    folder, task = synth
    assert header_warnings(folder, task) == []
    dataset = json.loads((folder / "dataset.json").read_text())
    dataset["numTraining"] = 260
    dataset["tensorImageSize"] = "4D"
    (folder / "dataset.json").write_text(json.dumps(dataset))
    path = folder / "dataset.json"
    assert header_warnings(folder, task) == [
        f"{path}: numTraining is 260, 'training' lists 6 cases; the listed cases are used (an edited or "
        "cut-down copy?)",
        f"{path}: tensorImageSize is 4D, Task90_Synth's task file declares 1 channel(s) (3D); each image's "
        "channels are checked against the task file"]


def test_counts_of_one_are_said_in_the_singular(home: Path, tmp_path: Path) -> None:
    # "(1 cases)", "lists 1 cases", "1 training cases, the catalog lists 5", "declares 1 modalities"
    from dataclasses import replace

    from medseg_bench.data.msd import Case
    from medseg_bench.data.validate import (
        case_count_warnings,
        header_warnings,
        label_warnings,
        orientation_warnings,
    )

    write_task_file(home, "Task91_Two", channels=2, num_training=5)
    task = get_task("Task91_Two")
    folder = make_synthetic_task(tmp_path / "Task91_Two", num_cases=1)  # one channel, one case
    dataset = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps(dataset | {"numTraining": 3}))
    report = validate_folder(folder, task)  # its case excluded (3D): still one of the task's cases
    path = folder / "dataset.json"
    assert label_warnings(folder, task) == [
        f"{path}: declares 1 modality, Task91_Two's task file 2; each image's channels are checked against "
        "the task file"]
    assert header_warnings(folder, task)[0] == (
        f"{path}: numTraining is 3, 'training' lists 1 case; the listed cases are used (an edited or "
        "cut-down copy?)")
    assert case_count_warnings(task, report)[0].startswith("Task91_Two: 1 training case, the catalog lists 5")
    more = case_count_warnings(replace(task, num_training=0), report)[0]
    assert more.startswith("Task91_Two: 1 training case, more than the 0 the catalog lists")
    two = [Case(name, tmp_path / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz") for name in ("a", "b")]
    stored = ValidationReport(two, [], {"a": "LPS", "b": "RAS"})
    assert orientation_warnings(task, stored)[0].startswith(
        "Task91_Two: images stored in 2 orientations: LPS (1 case), RAS (1, e.g. b); ")
