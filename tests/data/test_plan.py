"""Plan: target spacing (nnU-Net's anisotropic rule), patch and batch sizes for a memory budget, overrides."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.plan import (
    CACHE_FORMAT,
    CPU_BUDGET,
    MIN_BATCH,
    Plan,
    fit_patch_and_batch,
    gpu_budget,
    in_plane,
    make_plan,
    model_spacing,
    read_plan,
    slice_axis,
    target_spacing,
)
from medseg_bench.data.preprocess import prepare_task
from medseg_bench.errors import DataError
from tests.conftest import make_synthetic_task, write_task_file


def test_isotropic_target_is_the_median() -> None:
    spacings = np.array([[1.0, 1.0, 1.0], [1.2, 0.9, 0.9], [0.8, 1.1, 1.1]])
    shapes = np.array([[36, 50, 35]] * 3)
    assert target_spacing(spacings, shapes) == (1.0, 1.0, 1.0)


def test_thick_slices_take_the_10th_percentile() -> None:
    z = np.array([5.0, 5.0, 5.0, 2.5, 1.5, 5.0, 5.0, 3.0, 5.0, 4.0])
    spacings = np.stack([z, np.full(10, 0.7), np.full(10, 0.7)], axis=1)
    few_slices = np.array([[40, 512, 512]] * 10)
    target = target_spacing(spacings, few_slices)
    assert target[0] == pytest.approx(np.percentile(z, 10)) and target[1:] == (0.7, 0.7)
    # Many slices (not "few voxels" along z): the median stays.
    assert target_spacing(spacings, np.array([[400, 512, 512]] * 10))[0] == 5.0
    # Never finer than in-plane.
    fine = np.stack([np.array([0.5, 0.5] + [5.0] * 8), np.full(10, 1.5), np.full(10, 1.5)], axis=1)
    assert target_spacing(fine, few_slices)[0] == pytest.approx(1.5, abs=1e-4)  # not the 10th percentile, 0.5


def test_cpu_budget_keeps_the_hippocampus_sizes() -> None:
    dataset = 200 * 35 * 50 * 35
    assert fit_patch_and_batch((35, 50, 35), 8, 128, CPU_BUDGET.batch_voxels_3d, 8, dataset) == (
        (40, 56, 40),
        4,
    )
    assert fit_patch_and_batch((50, 35), 32, 256, CPU_BUDGET.batch_pixels_2d, 64, dataset) == ((64, 64), 32)


@pytest.mark.parametrize("gb", [4, 8, 16, 40])
def test_gpu_patches_fit_the_budget(gb: float) -> None:
    budget = gpu_budget(gb)
    median = (140, 170, 138)  # BraTS-like, 1 mm
    patch, batch = fit_patch_and_batch(
        median,
        8,
        budget.max_patch_3d,
        budget.batch_voxels_3d,
        budget.max_batch_3d,
        484 * int(np.prod(median)),
    )
    assert all(p % 8 == 0 for p in patch) and batch >= MIN_BATCH
    assert batch * int(np.prod(patch)) <= budget.batch_voxels_3d
    assert all(p <= m + 8 for p, m in zip(patch, median, strict=True))


def test_more_memory_never_means_smaller_batches_of_voxels() -> None:
    median, dataset = (140, 170, 138), 484 * 140 * 170 * 138
    sizes = []
    for gb in (2, 4, 8, 16, 32):
        budget = gpu_budget(gb)
        patch, batch = fit_patch_and_batch(
            median, 8, budget.max_patch_3d, budget.batch_voxels_3d, budget.max_batch_3d, dataset
        )
        sizes.append(batch * int(np.prod(patch)))
    assert sizes == sorted(sizes)
    with pytest.raises(DataError):
        gpu_budget(0)


def test_batch_is_capped_at_5_percent_of_the_dataset() -> None:
    patch, batch = fit_patch_and_batch((20, 20, 20), 8, 128, 10**9, 10**6, dataset_voxels=100 * 24**3)
    assert patch == (24, 24, 24) and batch == 5
    # nnU-Net rounds the cap: 5 % of 130 patches is 6.5 -> 6 (round half to even), of 139 is 6.95 -> 7.
    _, batch = fit_patch_and_batch((20, 20, 20), 8, 128, 10**9, 10**6, dataset_voxels=139 * 24**3)
    assert batch == 7


def _fingerprint(spacings: list[list[float]], shapes: list[list[int]]) -> dict:
    return {
        "spacings_zyx": spacings,
        "shapes_zyx": shapes,
        "cropped_shapes_zyx": shapes,
        "foreground_intensity": [{"mean": 10.0, "std": 2.0, "p00_5": 1.0, "p99_5": 20.0}],
    }


def test_make_plan_resamples_the_median_shape(home: Path) -> None:
    write_task_file(home, "Task92_CT", ct=True)
    fp = _fingerprint([[5.0, 0.8, 0.8], [2.5, 0.8, 0.8], [5.0, 0.8, 0.8]], [[40, 400, 400]] * 3)
    plan = make_plan(get_task("Task92_CT"), fp, gpu_budget(8))
    assert plan.target_spacing[0] == pytest.approx(3.0)  # 10th percentile of (2.5, 5, 5)
    assert plan.median_shape == (67, 400, 400)  # 40 slices of 5 mm at 3 mm
    assert plan.normalization == "per_channel" and plan.budget == "gpu-8GB"
    assert plan.channel_normalization == ({"scheme": "ct", "clip": [1.0, 20.0], "mean": 10.0, "std": 2.0},)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_2d_plans_slice_along_the_coarsest_axis(home: Path) -> None:
    # Thick slices stored along numpy axis 2 (ITK x): 2D patches are in plane, (Z, Y), not across the slices.
    write_task_file(home, "Task92_CT", ct=True)
    fp = _fingerprint([[0.8, 0.8, 5.0]] * 3, [[300, 200, 40]] * 3)
    plan = make_plan(get_task("Task92_CT"), fp, gpu_budget(8))
    assert slice_axis(plan.target_spacing) == 2
    assert plan.patch_2d[0] >= plan.patch_2d[1] and plan.patch_2d[1] > 40
    assert model_spacing(plan.target_spacing, "2d") == (0.8, 0.8)
    assert model_spacing(plan.target_spacing, "3d") == (0.8, 0.8, 5.0)
    assert slice_axis((1.0, 1.0, 1.0)) == 0 and slice_axis((3.0, 0.7, 0.7)) == 0  # ties, and MSD's storage
    assert in_plane((10, 20, 30), 1) == (10, 30)


def _fetched(home: Path, tmp_path: Path) -> Path:
    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    data = tmp_path / "data"
    fetch_task(get_task("Task90_Synth"), data, str(src), progress=False)
    return data


def test_plan_json_edits_are_honoured(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path)
    task = get_task("Task90_Synth")
    first = prepare_task(task, data, num_folds=3, workers=1)
    path = data / "preprocessed" / "Task90_Synth" / "plan.json"
    edited = json.loads(path.read_text()) | {"patch_3d": [8, 16, 16], "batch_3d": 3}
    path.write_text(json.dumps(edited))
    second = prepare_task(task, data, num_folds=3, workers=1)
    assert second.plan.patch_3d == (8, 16, 16) and second.plan.batch_3d == 3
    assert second.cache_dir == first.cache_dir  # patch sizes do not touch the cache
    path.write_text(json.dumps(edited | {"target_spacing": [2.0, 1.0, 1.0]}))
    third = prepare_task(task, data, num_folds=3, workers=1)
    assert third.cache_dir != first.cache_dir
    assert (third.cache_dir / "complete.json").is_file()
    assert np.load(third.cache_dir / f"{third.case_ids[0]}.seg.npy").shape == (6, 20, 20)


def test_broken_plan_json_is_named(home: Path, tmp_path: Path) -> None:
    # Each field's checks: tests/data/test_plan_fields.py.
    data = _fetched(home, tmp_path)
    prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = data / "preprocessed" / "Task90_Synth" / "plan.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"batch_3d": 2.7}))
    with pytest.raises(DataError) as info:
        read_plan(path)
    assert str(info.value) == f"{path}: invalid plan (batch_3d must be a whole number, not 2.7)"


@pytest.mark.parametrize(("edit", "message"), [
    ({"task": "Task09_Spleen"}, "a plan of task 'Task09_Spleen', not of Task90_Synth: restore its"),
    ({"channel_normalization": [{"scheme": "zscore", "nonzero_mask": False}] * 2},
     r"channel_normalization has 2 entries, but Task90_Synth has 1 channel\(s\) \(MR0\): one entry per"),
])
def test_a_plan_json_that_cannot_be_the_tasks_is_named_not_replaced(home: Path, tmp_path: Path, edit: dict,
                                                                    message: str) -> None:
    data = _fetched(home, tmp_path)
    prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = data / "preprocessed" / "Task90_Synth" / "plan.json"
    edited = json.loads(path.read_text()) | edit
    path.write_text(json.dumps(edited))
    with pytest.raises(DataError, match=message) as info:
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    assert str(info.value).startswith(f"{path}: ")
    assert json.loads(path.read_text()) == edited


@pytest.mark.parametrize("content", ["[1, 2]", '"plan"', "null"])
def test_plan_json_that_is_no_object_is_named_not_replaced(home: Path, tmp_path: Path, content: str) -> None:
    data = _fetched(home, tmp_path)
    root = data / "preprocessed" / "Task90_Synth"
    root.mkdir(parents=True)
    (root / "plan.json").write_text(content)
    with pytest.raises(DataError, match=r"plan.json: invalid plan \(not a JSON object but ") as info:
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    assert str(root / "plan.json") in str(info.value)
    assert (root / "plan.json").read_text() == content  # the user's file is kept


def test_plan_of_an_older_version_is_derived_again(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path)
    root = data / "preprocessed" / "Task90_Synth"
    root.mkdir(parents=True)
    # pipeline version 1's plan.json
    first = {"task": "Task90_Synth", "normalization": "zscore", "ct_clip": None, "ct_mean": None,
             "ct_std": None, "median_shape": [8, 20, 20], "median_spacing": [1.0, 1.0, 1.0],
             "patch_3d": [8, 16, 16], "batch_3d": 2, "patch_2d": [16, 16], "batch_2d": 8}
    (root / "plan.json").write_text(json.dumps(first))
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    assert prepared.plan.target_spacing == (1.0, 1.0, 1.0)
    assert "target_spacing" in json.loads((root / "plan.json").read_text())


def test_an_edited_plan_without_target_spacing_is_named_not_replaced(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path)
    prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = data / "preprocessed" / "Task90_Synth" / "plan.json"
    edited = json.loads(path.read_text()) | {"batch_3d": 7}
    edited["target_spacing_zyx"] = edited.pop("target_spacing")  # a typo made while editing
    path.write_text(json.dumps(edited))
    with pytest.raises(DataError, match=r"plan.json: not a plan \(missing: \['target_spacing'\]"):
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    assert json.loads(path.read_text()) == edited  # the user's edits are kept


@pytest.mark.parametrize("name", ["plan.json", "splits_3fold.json"])
def test_a_plan_or_splits_file_that_is_not_utf8_is_named(home: Path, tmp_path: Path, name: str) -> None:
    data = _fetched(home, tmp_path)
    prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = data / "preprocessed" / "Task90_Synth" / name
    path.write_bytes(path.read_text().encode("utf-16"))  # saved by an editor in another encoding
    with pytest.raises(DataError, match=f"{name}: unreadable"):
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)


def test_a_damaged_fingerprint_is_computed_again(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path)
    first = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    root = data / "preprocessed" / "Task90_Synth"
    (root / "plan.json").unlink()
    for content in (b"null", "{}".encode("utf-16")):
        (root / "fingerprint.json").write_bytes(content)
        again = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
        assert again.plan == first.plan
        (root / "plan.json").unlink()


def test_a_plan_made_before_version_5_is_read_and_kept_as_it_was(home: Path) -> None:
    # Its cache, and every run that trained on it, stay valid: one normalisation for all channels, no
    # channel_normalization key, the same preprocessing hash; its CT fields are still checked.
    write_task_file(home, "Task92_CT", ct=True)
    new = make_plan(get_task("Task92_CT"), _fingerprint([[1.0, 1.0, 1.0]] * 3, [[36, 50, 35]] * 3))
    old = {k: v for k, v in json.loads(json.dumps(new.to_dict())).items() if k != "channel_normalization"} | {
        "normalization": "ct", "ct_clip": [1.0, 20.0], "ct_mean": 10.0, "ct_std": 2.0}
    plan = Plan.from_dict(old)
    assert plan.channel_normalization is None and json.loads(json.dumps(plan.to_dict())) == old
    assert plan.preprocessing_hash != new.preprocessing_hash
    keys = ("task", "normalization", "ct_clip", "ct_mean", "ct_std", "target_spacing", "crop_to_nonzero")
    key = {k: old[k] for k in keys} | {"ct_clip": (1.0, 20.0), "target_spacing": (1.0, 1.0, 1.0),
                                       "cache_format": CACHE_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    assert plan.preprocessing_hash == digest
    with pytest.raises(DataError, match="ct_clip must be two finite numbers, low then high"):
        Plan.from_dict(old | {"ct_clip": [10, -10]})
    with pytest.raises(DataError, match="channel_normalization goes with normalization 'per_channel', not"):
        Plan.from_dict(old | {"channel_normalization": new.to_dict()["channel_normalization"]})
