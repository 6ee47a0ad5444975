"""Crop and resampling to the target spacing, and the way back to the original image grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data import resample
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.io import read_geometry, read_label, write_label
from medseg_bench.data.preprocess import load_case, original_label, prepare_task
from medseg_bench.data.resample import (
    anisotropic_axis,
    crop,
    nonzero_box,
    resample_image,
    resample_label,
    resample_probabilities,
    separate_axis,
    target_shape,
    to_original,
    to_original_probabilities,
)
from tests.conftest import make_anisotropic_ct_task, write_task_file


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2 * float((x & y).sum()) / max(int(x.sum() + y.sum()), 1)


def test_nonzero_box_covers_any_channel() -> None:
    image = np.zeros((2, 6, 8, 10), np.float32)
    image[0, 1:3, 2:4, 3:5] = 1
    image[1, 4, 6, 8] = -2  # negative values are non-zero too
    box = nonzero_box(image)
    assert box == [[1, 5], [2, 7], [3, 9]]
    assert nonzero_box(image[:1]) == [[1, 3], [2, 4], [3, 5]]
    assert crop(image, box).shape == (2, 4, 5, 6)
    assert nonzero_box(np.zeros((1, 3, 4, 5))) == [[0, 3], [0, 4], [0, 5]]


def test_target_shape_and_anisotropy() -> None:
    assert target_shape((10, 100, 100), (5.0, 0.8, 0.8), (2.0, 0.8, 0.8)) == (25, 100, 100)
    assert target_shape((1, 4, 4), (1.0, 1.0, 1.0), (5.0, 1.0, 1.0)) == (1, 4, 4)  # never 0
    assert anisotropic_axis((5.0, 0.8, 0.8)) == 0
    assert anisotropic_axis((1.0, 1.0, 1.2)) is None
    assert anisotropic_axis((3.5, 3.5, 1.0)) == 0  # the augmentation's thick axis: the first coarsest


def test_separate_axis_is_nnunets_rule() -> None:
    """nnU-Net's `determine_do_sep_z_and_axis`: the current spacing decides when it is anisotropic, else the
    new one; no axis on its own when two or three share the coarsest spacing."""
    assert separate_axis((5.0, 0.8, 0.8), (1.0, 0.8, 0.8)) == 0
    assert separate_axis((1.0, 1.0, 1.0), (1.0, 3.5, 1.0)) == 1
    assert separate_axis((1.0, 1.0, 1.2), (1.0, 1.0, 1.0)) is None
    assert separate_axis((1.0, 1.0, 4.0), (4.0, 1.0, 1.0)) == 2  # the current spacing first
    assert separate_axis((0.24, 1.25, 1.25), (0.5, 0.5, 0.5)) is None  # nnU-Net's own example
    assert separate_axis((1.0, 1.0, 1.0), (3.5, 3.5, 1.0)) is None
    assert separate_axis((5.0, 5.0, 5.0), (1.0, 1.0, 1.0)) is None


def test_to_original_resamples_from_the_preprocessed_spacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mapping back goes from the preprocessed spacing to the original one, so that is asked first (as
    nnU-Net's export); the two disagree when both are anisotropic along different axes."""
    asked = []

    def spy(current: tuple, new: tuple) -> int | None:
        asked.append((list(current), list(new)))
        return separate_axis(current, new)

    monkeypatch.setattr(resample, "separate_axis", spy)
    props = {"crop_box": [[0, 4], [0, 4], [0, 4]], "shape_original_zyx": [4, 4, 4],
             "spacing_original_zyx": [4.0, 1.0, 1.0], "spacing_preprocessed_zyx": [1.0, 1.0, 4.0]}
    assert to_original(np.ones((4, 4, 4), np.uint8), props).shape == (4, 4, 4)
    assert asked == [([1.0, 1.0, 4.0], [4.0, 1.0, 1.0])]


def test_resampling_keeps_smooth_images_and_identity_is_free() -> None:
    z, y, x = np.indices((6, 20, 20), dtype=np.float32)
    image = (0.5 * z + 0.1 * y - 0.2 * x)[None]
    assert np.array_equal(resample_image(image, (6, 20, 20)), image)
    up = resample_image(image, (12, 20, 20), separate_axis=None)
    assert up.shape == (1, 12, 20, 20) and up.dtype == np.float32
    # A linear ramp stays (nearly) a ramp away from the borders; voxel centres stay aligned.
    z_source = (np.arange(12) + 0.5) * 0.5 - 0.5
    assert np.allclose(up[0, 3:-3, 10, 10], 0.5 * z_source[3:-3] + 1 - 2, atol=0.01)
    constant = np.full((1, 5, 7, 9), 3.0, np.float32)
    assert np.allclose(resample_image(constant, (11, 3, 20), separate_axis=0), 3.0, atol=1e-5)


def test_label_resampling_keeps_values_and_shapes() -> None:
    label = np.zeros((8, 30, 30), np.uint8)
    label[2:6, 5:25, 5:25] = 1
    label[3:5, 10:20, 10:20] = 3  # a label value that is not consecutive
    out = resample_label(label, (16, 15, 15), separate_axis=0)
    assert out.shape == (16, 15, 15) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 1, 3}


def test_label_ties_go_to_the_nearest_label_as_nnunets_resize_segmentation() -> None:
    """The expected maps are nnU-Net's (`resample_data_or_seg_to_shape(is_seg=True)`, nnunetv2 2.8.1)."""
    # halving [0, 1, 1, 0]: both output voxels lie halfway between a 0 and a 1 (the lowest label: 0, 0)
    label = np.array([0, 1, 1, 0], np.uint8).reshape(1, 1, 4)
    assert resample_label(label, (1, 1, 2)).tolist() == [[[1, 0]]]
    # the same slice by slice, the thick axis taken nearest
    slices = np.array([[0, 1, 1, 0], [2, 2, 0, 0]], np.uint8).reshape(2, 1, 4)
    assert resample_label(slices, (3, 1, 2), separate_axis=0).tolist() == [[[1, 0]], [[2, 0]], [[2, 0]]]
    # three labels meet and the nearest voxel's label (3) is not among the tied (1 and 2): the lowest of them
    block = np.array([3, 1, 1, 1, 2, 2, 2, 3], np.uint8).reshape(2, 2, 2)
    assert resample_label(block, (1, 1, 1)).tolist() == [[[1]]]
    # a near tie (0.4000000000000004 against 0.3999999999999996 in float64) is none; float32 made it a tie
    noise = np.random.default_rng(0).integers(0, 4, (6, 8, 10)).astype(np.uint8)
    assert resample_label(noise, (4, 5, 6))[2, 0, 3] == 0


def test_a_thick_axis_is_taken_at_nnunets_nearest_slices() -> None:
    """6 slices to 7: slice 3's centre maps to 2.5 in exact arithmetic; nnU-Net (`map_coordinates` at its
    coordinates, nnunetv2 2.8.1) takes slice 3 there, scipy's `affine_transform` took slice 2."""
    image = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None], (1, 6, 4, 4))
    assert resample_image(image, (7, 4, 4), separate_axis=0)[0, :, 0, 0].tolist() == [0, 1, 2, 3, 3, 4, 5]
    assert resample_label(image[0].astype(np.uint8), (7, 4, 4), separate_axis=0)[:, 0, 0].tolist() == [
        0, 1, 2, 3, 3, 4, 5]


@pytest.mark.parametrize("log_space", [False, True])
def test_mapping_back_takes_nnunets_nearest_slices_from_version_12(log_space: bool) -> None:
    """20 preprocessed slices back to 22: nnU-Net (`map_coordinates` at its coordinates, nnunetv2 2.8.1)
    takes slices 0-5, 5-15, 15-19; version 11's `affine_transform` took 14 for the second 15."""
    props = {"crop_box": [[0, 22], [0, 3], [0, 3]], "shape_original_zyx": [22, 3, 3],
             "spacing_original_zyx": [4.0, 0.8, 0.8], "spacing_preprocessed_zyx": [4.4, 0.8, 0.8]}
    odd = np.zeros((2, 20, 3, 3), np.float32)  # class 1 on the odd slices: the class tells the slice's parity
    odd[1, 1::2] = 1
    odd[0] = 1 - odd[1]
    nnunet = [0, 1, 2, 3, 4, 5, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15, 16, 17, 18, 19]
    new = to_original(odd, props, log_space, nnunet_resize=True)[:, 0, 0].tolist()
    assert new == [i % 2 for i in nnunet]
    old = to_original(odd, props, log_space)[:, 0, 0].tolist()
    assert old == [i % 2 for i in nnunet[:16]] + [0] + [i % 2 for i in nnunet[17:]]
    probabilities = to_original_probabilities(odd, props, log_space, nnunet_resize=True)
    assert probabilities.argmax(0)[:, 0, 0].tolist() == new


def test_background_outside_the_non_zero_mask_is_resampled_as_a_label_of_its_own() -> None:
    """nnU-Net labels it -1 before resampling (`crop_to_nonzero`): where it, background and foreground meet,
    neither -1 nor 0 alone outscores the foreground label. The expected map is nnU-Net's (2.8.1)."""
    label = np.zeros((1, 5, 5), np.uint8)
    label[0, 2:, 2:] = 1
    outside = np.zeros((1, 5, 5), bool)
    outside[0, 2:, :2] = True
    nnunet = np.zeros((1, 8, 8), np.uint8)
    nnunet[0, 3:, 3:] = 1
    assert np.array_equal(resample_label(label, (1, 8, 8), outside=outside), nnunet)
    assert resample_label(label, (1, 8, 8))[0, 3, 3] == 0  # all background one label: it outscores 1 there
    outside[0, 2:, 2:] = True  # foreground outside the mask stays foreground
    assert np.array_equal(resample_label(label, (1, 8, 8), outside=outside), nnunet)


def test_round_trip_to_target_spacing_and_back() -> None:
    """Cropped, resampled to a finer z spacing and mapped back: the same grid, the labels nearly unchanged."""
    rng = np.random.default_rng(1)
    shape, spacing = (10, 48, 44), (4.0, 0.7, 0.7)
    z, y, x = np.indices(shape, dtype=np.float32)
    label = np.zeros(shape, np.uint8)
    label[((y - 22) / 12) ** 2 + ((x - 20) / 10) ** 2 + ((z - 4.5) / 4) ** 2 <= 1] = 1
    label[((y - 22) / 5) ** 2 + ((x - 20) / 5) ** 2 + ((z - 4.5) / 2.5) ** 2 <= 1] = 2
    image = rng.normal(0, 1, (1, *shape)).astype(np.float32) + label
    image[:, :, :6] = 0
    box = nonzero_box(image)
    target = (1.4, 0.7, 0.7)
    new_shape = target_shape([hi - lo for lo, hi in box], spacing, target)
    separate = separate_axis(spacing, target)
    small = resample_label(crop(label, box), new_shape, separate)
    props = {
        "crop_box": box,
        "shape_original_zyx": list(shape),
        "spacing_original_zyx": list(spacing),
        "spacing_preprocessed_zyx": list(target),
    }
    back = to_original(small, props)
    assert back.shape == shape and back.dtype == np.uint8
    assert np.array_equal(back[:, :6], np.zeros_like(back[:, :6]))
    assert dice(back, label, 1) > 0.97 and dice(back, label, 2) > 0.95
    # Probabilities take the same way back (argmax after linear resampling).
    probs = np.stack([small == k for k in range(3)]).astype(np.float32)
    assert np.array_equal(to_original(probs, props), back)


def test_cached_case_maps_back_to_the_original_geometry(home: Path, tmp_path: Path) -> None:
    """End to end on an anisotropic CT-like task: the cache is at the target spacing; a prediction equal to
    the cached label, mapped back, lands on the original grid (shape, spacing, origin, direction exact)."""
    write_task_file(home, "Task93_Aniso", ct=True)
    src = make_anisotropic_ct_task(tmp_path / "src" / "Task93_Aniso")
    data = tmp_path / "data"
    fetch_task(get_task("Task93_Aniso"), data, str(src), progress=False)
    prepared = prepare_task(get_task("Task93_Aniso"), data, num_folds=2, workers=1)
    plan = prepared.plan
    # Slices of 2-5 mm (median 3.5) over 0.8 mm pixels: nnU-Net's rule takes the 10th percentile, 2.3 mm.
    assert plan.target_spacing == pytest.approx((2.3, 0.8, 0.8), abs=1e-5)
    for case in prepared.case_ids:
        image, label, props = load_case(prepared.cache_dir, case)
        assert props["crop_box"][1:] == [[4, 36], [4, 36]]  # the zero border is cropped
        z_mm = props["spacing_original_zyx"][0]
        assert image.shape[1:] == label.shape == (round(8 * z_mm / 2.3), 32, 32)
    case = "ct_000"  # 4 mm slices: resampled to 14 slices of 2.3 mm
    image, label, props = load_case(prepared.cache_dir, case)
    back = to_original(np.asarray(label), props)
    original, geometry = original_label(props)
    assert back.shape == original.shape
    print(dice(back, original, 1), dice(back, original, 2))
    assert dice(back, original, 1) > 0.95 and dice(back, original, 2) > 0.9
    out = tmp_path / "pred.nii.gz"
    write_label(back, geometry, out)
    written, _ = read_geometry(out)
    source, _ = read_geometry(src / "labelsTr" / f"{case}.nii.gz")
    assert written == source
    assert np.array_equal(read_label(out)[0], back)


def test_spline_overshoot_is_clipped_as_nnunets_resize() -> None:
    # skimage's resize(clip=True): the whole volume's range, or each slice's when the thick axis goes alone.
    image = np.zeros((1, 4, 12, 12), np.float32)
    image[0, :, 4:8, 4:8] = 10.0  # a step edge: cubic splines overshoot it
    image[0, 0] *= 0.5  # slices with their own range
    up = resample_image(image, (4, 20, 20))
    assert up.min() >= 0.0 and up.max() <= 10.0
    thick = resample_image(image, (9, 20, 20), separate_axis=0)
    for out in thick[0]:  # order 0 along the thick axis: each slice within its source slice's range
        assert any(src.min() <= out.min() and out.max() <= src.max() for src in image[0])
    assert thick[0].max(axis=(1, 2)).min() <= 5.0  # the half-bright slice kept its own range
    from scipy.ndimage import affine_transform

    scale = np.array([4, 12, 12]) / np.array([4, 20, 20])
    unclipped = affine_transform(image[0], np.diag(scale), offset=0.5 * scale - 0.5, output_shape=(4, 20, 20),
                                 order=3, mode="nearest")
    assert unclipped.max() > 10.0 and unclipped.min() < 0.0  # what was cached before cache format 5


def test_target_shape_rounds_in_nnunets_order() -> None:
    # nnU-Net's compute_new_shape: round(s / t * n). 0.7 / 0.8 * 20 = 17.499999999999996 -> 17, where
    # 20 * 0.7 / 0.8 = 17.5 rounded half to even gave 18.
    assert target_shape((20, 20, 20), (0.7, 0.7, 0.7), (0.8, 0.8, 0.8)) == (17, 17, 17)


def test_log_space_mapping_back_gives_the_argmax_of_resampled_logits() -> None:
    # nnU-Net resamples the logits; resampling log-probabilities gives the same argmax, resampling the
    # probabilities themselves does not everywhere.
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, (3, 6, 7, 5)).astype(np.float32)
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    new_shape = (11, 13, 9)
    expected = np.stack([resample_image(logits[k:k + 1], new_shape, order=1)[0] for k in range(3)]).argmax(0)
    assert np.array_equal(resample_probabilities(probs, new_shape, log_space=True), expected)
    assert not np.array_equal(resample_probabilities(probs, new_shape), expected)


@pytest.mark.parametrize("log_space", [True, False])
def test_probabilities_mapped_back_stay_probabilities_with_the_same_argmax(log_space: bool) -> None:
    """What an ensemble of differently preprocessed runs averages: on the original grid, summing to 1,
    background outside the crop box, and the argmax `to_original` gives."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (3, 5, 9, 8)).astype(np.float32)
    probs = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    props = {"crop_box": [[1, 9], [2, 14], [0, 10]], "shape_original_zyx": [10, 16, 10],
             "spacing_original_zyx": [2.0, 0.75, 0.8], "spacing_preprocessed_zyx": [3.2, 1.0, 1.0]}
    mapped = to_original_probabilities(probs, props, log_space)
    assert mapped.shape == (3, 10, 16, 10) and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped.sum(0), 1.0, atol=1e-5)
    assert (mapped[0, 0] == 1).all() and (mapped[0, :, :2] == 1).all()  # outside the box
    assert np.array_equal(mapped.argmax(0), to_original(probs, props, log_space))
