"""`metrics/evaluate.py`: a case's rows (empty masks, labels, regions, 2D, bad input, properties) and
folders of label maps."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg_bench.errors import DataError, UsageError
from medseg_bench.metrics import (
    METRIC_NAMES,
    MetricSettings,
    compute_dice,
    evaluate_case,
    evaluate_folders,
)
from tests.metrics.reference import SPACING_2D, SPACING_3D, blob, blob_pairs, brute_force_metrics

# --- empty masks, labels, shapes ---------------------------------------------------------------------------


def label_maps(pred_has: bool, ref_has: bool):
    pred = np.zeros((8, 12, 12), np.uint8)
    ref = np.zeros_like(pred)
    if pred_has:
        pred[2:5, 3:8, 3:8] = 1
    if ref_has:
        ref[3:6, 3:8, 4:9] = 1
    return pred, ref


DIAGONAL_MM = math.sqrt((8 * 2.5) ** 2 + 12**2 + (12 * 0.8) ** 2)


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_both_masks_empty_gives_nan_and_flags(policy):
    row = evaluate_case(*label_maps(False, False), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert all(math.isnan(row[name]) for name in METRIC_NAMES)
    assert row["ref_empty"] and row["pred_empty"]


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_missed_structure_is_penalised(policy):
    row = evaluate_case(*label_maps(False, True), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert (row["dice"], row["jaccard"], row["recall"], row["nsd"], row["volume_diff"]) == (0, 0, 0, 0, 1)
    assert row["pred_empty"] and not row["ref_empty"]
    for name in ("hd", "hd95", "assd"):
        assert row[name] == pytest.approx(DIAGONAL_MM) if policy == "penalize" else math.isnan(row[name])
    assert row["precision"] == 0 if policy == "penalize" else math.isnan(row["precision"])


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_false_positive_structure_is_penalised(policy):
    row = evaluate_case(*label_maps(True, False), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert (row["dice"], row["jaccard"], row["precision"], row["nsd"]) == (0, 0, 0, 0)
    assert math.isnan(row["volume_diff"])  # relative to an empty reference: undefined under any policy
    assert row["ref_empty"] and not row["pred_empty"]
    for name in ("hd", "hd95", "assd"):
        assert row[name] == pytest.approx(DIAGONAL_MM) if policy == "penalize" else math.isnan(row[name])
    assert row["recall"] == 0 if policy == "penalize" else math.isnan(row["recall"])


def test_multi_label_with_missing_label_and_region():
    pred, ref = label_maps(True, True)
    ref[6:8, 0:2, 0:2] = 3  # label 3 only in the reference, label 2 nowhere
    pred[6:8, 0:2, 0:3] = 3
    rows = evaluate_case(pred, ref, SPACING_3D, [1, 2, 3], regions={"all": [1, 3]})
    assert [row["label"] for row in rows] == [1, 2, 3, "all"]
    assert all(math.isnan(rows[1][name]) for name in METRIC_NAMES)
    assert rows[2]["dice"] == pytest.approx(2 * 4 / (4 + 6))
    union = evaluate_case((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), SPACING_3D, [1])[0]
    assert {k: rows[3][k] for k in METRIC_NAMES} == pytest.approx({k: union[k] for k in METRIC_NAMES})
    single = evaluate_case((pred == 1).astype(np.uint8), (ref == 1).astype(np.uint8), SPACING_3D, [1])[0]
    assert {k: rows[0][k] for k in METRIC_NAMES} == pytest.approx({k: single[k] for k in METRIC_NAMES})


def test_2d_label_maps():
    pred, ref = blob_pairs(2, 1, size=24)[0]
    row = evaluate_case(pred.astype(np.int64), ref.astype(np.int64), SPACING_2D, [1])[0]
    expected = brute_force_metrics(pred, ref, SPACING_2D, "area", 1.0)
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert row["dice"] == pytest.approx(compute_dice(pred, ref))


def test_one_voxel_structure():
    ref = np.zeros((5, 5, 5), np.uint8)
    ref[2, 2, 2] = 1
    perfect = evaluate_case(ref, ref, SPACING_3D, [1])[0]
    assert [perfect[k] for k in ("dice", "hd", "hd95", "assd", "nsd")] == [1, 0, 0, 0, 1]
    moved = np.roll(ref, 1, axis=0)  # one slice further: 2.5 mm
    row = evaluate_case(moved, ref, SPACING_3D, [1])[0]
    assert row["dice"] == 0 and row["hd"] == pytest.approx(2.5) and row["hd95"] == pytest.approx(2.5)
    expected = brute_force_metrics(moved.astype(bool), ref.astype(bool), SPACING_3D, "area", 1.0)
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_raise_domain_errors():
    pred, ref = label_maps(True, True)
    with pytest.raises(DataError, match="shape"):
        evaluate_case(pred, ref[:-1], SPACING_3D, [1])
    with pytest.raises(DataError, match="integer"):
        evaluate_case(pred.astype(float), ref, SPACING_3D, [1])
    with pytest.raises(DataError, match="spacing"):
        evaluate_case(pred, ref, (1.0, 1.0), [1])
    with pytest.raises(UsageError, match="background"):
        evaluate_case(pred, ref, SPACING_3D, [0])
    with pytest.raises(UsageError, match="surface"):
        MetricSettings(surface="mesh")


# --- properties -----------------------------------------------------------------------------------------

masks_3d = arrays(bool, st.tuples(*(st.integers(1, 6),) * 3))
spacings = st.tuples(*(st.sampled_from([0.5, 0.8, 1.0, 2.5]),) * 3)
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(mask=masks_3d, spacing=spacings, surface=st.sampled_from(["area", "voxel"]))
def test_metrics_of_identical_masks_are_perfect(mask, spacing, surface):
    labels = mask.astype(np.uint8)
    row = evaluate_case(labels, labels, spacing, [1], MetricSettings(surface=surface))[0]
    if not mask.any():
        assert math.isnan(row["dice"])
        return
    perfect = {"dice": 1, "jaccard": 1, "precision": 1, "recall": 1, "volume_diff": 0,
               "hd": 0, "hd95": 0, "assd": 0, "nsd": 1}
    assert {k: row[k] for k in perfect} == perfect


@fast
@given(data=st.data(), spacing=spacings, surface=st.sampled_from(["area", "voxel"]))
def test_dice_and_distances_symmetric_and_ordered(data, spacing, surface):
    shape = data.draw(st.tuples(*(st.integers(1, 6),) * 3))
    a = data.draw(arrays(bool, shape)).astype(np.uint8)
    b = data.draw(arrays(bool, shape)).astype(np.uint8)
    ab = evaluate_case(a, b, spacing, [1], MetricSettings(surface=surface))[0]
    ba = evaluate_case(b, a, spacing, [1], MetricSettings(surface=surface))[0]
    for name in ("dice", "jaccard", "hd", "hd95", "assd", "nsd"):
        assert ab[name] == pytest.approx(ba[name], nan_ok=True), name
    if a.any() or b.any():
        assert ab["hd"] >= ab["hd95"] - 1e-9 and ab["hd95"] >= 0 and 0 <= ab["nsd"] <= 1


# --- folders ----------------------------------------------------------------------------------------------


def write_case(folder: Path, name: str, labels: np.ndarray, origin=(0.0, 0.0, 0.0)) -> None:
    """Write a label map at spacing (0.8, 1.0, 2.5) mm in x, y, z order, i.e. SPACING_3D in array order."""
    from medseg_bench.data.io import Geometry, write_label

    geometry = Geometry((0.8, 1.0, 2.5), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1), labels.shape[::-1])
    write_label(labels, geometry, folder / f"{name}.nii.gz")


def test_evaluate_folders_rows_and_geometry_checks(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred, ref = label_maps(True, True)
    write_case(pred_dir, "b", pred)
    write_case(ref_dir, "b", ref)
    ref2 = ref.copy()
    ref2[0, 0, 0] = 2
    write_case(pred_dir, "a", pred)
    write_case(ref_dir, "a", ref2)
    frame = evaluate_folders(pred_dir, ref_dir, labels=None, workers=1)
    assert list(frame.columns[:2]) == ["case", "label"]
    assert list(zip(frame["case"], frame["label"], strict=True)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    in_memory = evaluate_case(pred, ref, SPACING_3D, [1])[0]  # (0.8, 1, 2.5) in x, y, z order
    assert frame.iloc[2]["hd95"] == pytest.approx(in_memory["hd95"])
    assert frame.iloc[3][["ref_empty", "pred_empty"]].tolist() == [True, True]

    write_case(pred_dir, "c", pred, origin=(0.0, 0.0, 5.0))
    write_case(ref_dir, "c", ref)
    with pytest.raises(DataError, match=r"c\.nii\.gz.*geometry differs.*ref/c\.nii\.gz.*origin"):
        evaluate_folders(pred_dir, ref_dir, labels=[1])
    # Validation accepts a label whose origin is off by under 1% of the largest spacing; so does evaluation
    # (it used a far tighter tolerance, refusing predictions of cases the run had trained and scored).
    write_case(pred_dir, "c", pred, origin=(0.0, 0.0, 0.02))
    assert len(evaluate_folders(pred_dir, ref_dir, labels=[1], workers=1)) == 3
    write_case(pred_dir, "d", pred)
    with pytest.raises(DataError, match=r"pred/d\.nii\.gz: no reference of case 'd' in .*ref"):
        evaluate_folders(pred_dir, ref_dir, labels=[1])


def test_evaluate_folders_in_parallel_matches_inline(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("x", "y", "z"):
        write_case(tmp_path / "pred", name, blob(rng, (8, 16, 16)).astype(np.uint8))
        write_case(tmp_path / "ref", name, blob(rng, (8, 16, 16)).astype(np.uint8))
    inline = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=1)
    parallel = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=2)
    assert parallel.equals(inline)


def test_evaluate_folders_scores_2d_and_single_slice_maps_in_2d(tmp_path):
    """docs/metrics.md's worked example as a 2D NIfTI and as a 3D one of one slice: the documented values."""
    from medseg_bench.data.io import Geometry, write_label

    ref = np.zeros((3, 4), np.uint8)
    ref[0:2] = 1
    pred = np.roll(ref, 1, axis=0)
    flat = Geometry((1.0, 2.5), (0.0, 0.0), (1, 0, 0, 1), (4, 3))
    slab = Geometry((1.0, 2.5, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 3, 1))
    for folder, labels in ((tmp_path / "pred", pred), (tmp_path / "ref", ref)):
        write_label(labels, flat, folder / "flat.nii.gz")
        write_label(labels[None], slab, folder / "slab.nii.gz")
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1]).set_index("case")
    in_memory = evaluate_case(pred, ref, (2.5, 1.0), [1])[0]
    assert in_memory["assd"] == pytest.approx(1.1127, abs=1e-4)
    assert in_memory["nsd"] == pytest.approx(0.5915, abs=1e-4)
    # A run scores its held-out cases with evaluate_case on arrays: a one-slice volume is 2D there too.
    slab_in_memory = evaluate_case(pred[None], ref[None], (4.0, 2.5, 1.0), [1])[0]
    for case in ("flat", "slab"):
        for name in ("dice", "hd", "hd95", "assd", "nsd"):
            assert frame.loc[case, name] == pytest.approx(in_memory[name]), (case, name)
            assert slab_in_memory[name] == pytest.approx(in_memory[name]), name


def test_evaluate_folders_refuses_references_without_prediction(tmp_path):
    pred, ref = label_maps(True, True)
    for name in ("a", "b", "c"):
        write_case(tmp_path / "ref", name, ref)
    write_case(tmp_path / "pred", "b", pred)
    with pytest.raises(DataError, match=r"ref/a\.nii\.gz: no prediction of case 'a' in .*pred "
                                        r"\(and 1 more\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1])
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], allow_missing=True)
    assert frame["case"].tolist() == ["b"]


def test_evaluate_folders_scores_a_label_only_predictions_hold(tmp_path):
    """Without labels, a label no reference holds is scored where it is predicted (false positives, Dice 0),
    not left out; a case without it in either gets its both-empty row."""
    pred, ref = label_maps(True, True)
    spurious = pred.copy()
    spurious[0, 0, 0:2] = 2
    write_case(tmp_path / "pred", "a", spurious)
    write_case(tmp_path / "pred", "b", pred)
    for name in ("a", "b"):
        write_case(tmp_path / "ref", name, ref)
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1)
    frame = frame.set_index(["case", "label"])
    assert frame.index.tolist() == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    spurious_row = frame.loc[("a", 2), ["dice", "precision", "ref_empty", "pred_empty"]]
    assert spurious_row.tolist() == [0, 0, True, False]
    assert np.isnan(frame.loc[("b", 2), "dice"]) and frame.loc[("b", 2), "pred_empty"]


def test_evaluate_folders_with_a_task_scores_its_labels_and_refuses_other_values(tmp_path):
    """As a run scores its held-out cases: the task's foreground labels, present or not; a value the task does
    not have is an error naming the file and the values (validation excludes such a case from a run)."""
    from medseg_bench.data.catalog import get_task

    task = get_task("Task04_Hippocampus")  # labels 0, 1, 2
    pred, ref = label_maps(True, True)
    write_case(tmp_path / "pred", "a", pred)
    write_case(tmp_path / "ref", "a", ref)  # label 1 only: label 2 is both-empty, a row all the same
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1, task=task)
    assert frame["label"].tolist() == [1, 2]
    assert frame.iloc[1][["ref_empty", "pred_empty"]].tolist() == [True, True]
    chosen = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [2], workers=1, task=task)
    assert chosen["label"].tolist() == [2]
    odd = pred.copy()
    odd[0, 0, 0:2] = (3, 7)
    write_case(tmp_path / "pred", "a", odd)
    with pytest.raises(DataError, match=r"^\S*pred/a\.nii\.gz: label values \[3, 7\] not among "
                                        r"Task04_Hippocampus's labels \(0, 1, 2\)$"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1, task=task)
    write_case(tmp_path / "pred", "a", pred)
    write_case(tmp_path / "ref", "a", odd)
    with pytest.raises(DataError, match=r"ref/a\.nii\.gz: label values \[3, 7\] not among"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=1, task=task)
