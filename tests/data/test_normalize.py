from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.normalize import channel_schemes, mean_std, normalize
from medseg_bench.data.plan import Plan, make_plan
from medseg_bench.errors import DataError
from tests.conftest import write_task_file


def _fingerprint(shapes: list[list[int]], cropped: list[list[int]]) -> dict:
    return {"spacings_zyx": [[1.0, 1.0, 1.0]] * len(shapes), "shapes_zyx": shapes,
            "cropped_shapes_zyx": cropped,
            "foreground_intensity": [{"mean": 10.0, "std": 2.0, "p00_5": 1.0, "p99_5": 20.0}]}


def _plan(home: Path, *schemes: dict) -> Plan:
    write_task_file(home, "Task92_CT", ct=True)
    plan = make_plan(get_task("Task92_CT"), _fingerprint([[8, 8, 8]] * 3, [[8, 8, 8]] * 3))
    return replace(plan, channel_normalization=schemes)


def test_a_ct_channel_takes_the_datasets_foreground_statistics(home: Path) -> None:
    write_task_file(home, "Task92_CT", ct=True)
    schemes = channel_schemes(get_task("Task92_CT"), _fingerprint([[8, 8, 8]] * 3, [[8, 8, 8]] * 3))
    assert schemes == ({"scheme": "ct", "clip": [1.0, 20.0], "mean": 10.0, "std": 2.0},)


@pytest.mark.parametrize(("cropped_depth", "use_mask"), [(8, False), (6, False), (5, True)])
def test_the_non_zero_mask_is_used_when_cropping_leaves_under_three_quarters_of_the_median_case(
        home: Path, cropped_depth: int, use_mask: bool) -> None:
    # 6x8x8 of 8x8x8 keeps exactly 3/4 (no mask, nnU-Net's strict <); 5x8x8 keeps 0.625 (skull-stripped MRI).
    write_task_file(home, "Task93_MR", channels=2)
    fp = _fingerprint([[8, 8, 8]] * 3, [[cropped_depth, 8, 8]] * 3)
    schemes = channel_schemes(get_task("Task93_MR"), fp)
    assert schemes == ({"scheme": "zscore", "nonzero_mask": use_mask},) * 2


def test_channels_are_normalised_by_their_own_scheme(home: Path) -> None:
    # A CT task with a second, non-CT channel (CT + PET): the PET channel was normalised with CT's statistics.
    plan = _plan(home, {"scheme": "ct", "clip": [1.0, 20.0], "mean": 10.0, "std": 2.0},
                 {"scheme": "zscore", "nonzero_mask": False})
    rng = np.random.default_rng(0)
    image = np.stack([rng.uniform(-50, 50, (8, 8, 8)), rng.normal(5.0, 3.0, (8, 8, 8))]).astype(np.float32)
    out = normalize(image, plan)
    assert out[0].min() == pytest.approx((1.0 - 10.0) / 2.0) and out[0].max() == pytest.approx(5.0)
    assert abs(float(out[1].mean())) < 1e-5 and float(out[1].std()) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(DataError, match="normalises 2 channel"):
        normalize(image[:1], plan)


def test_foreground_where_the_image_is_zero_is_z_scored_with_the_mask(home: Path) -> None:
    """nnU-Net z-scores within `seg >= 0`: the non-zero mask and a training case's labels where the image is
    zero (a lesion cut by skull stripping); a case to predict has no label, so only the non-zero mask."""
    plan = _plan(home, {"scheme": "zscore", "nonzero_mask": True})
    rng = np.random.default_rng(0)
    image = np.zeros((1, 6, 10, 10), np.float32)
    image[:, 1:5, 2:8, 2:8] = rng.normal(50, 5, (1, 4, 6, 6))
    label = np.zeros((6, 10, 10), np.uint8)
    label[2, 2:5, 8] = 1  # foreground just outside the brain, where the image is zero
    with_label, without = normalize(image, plan, label)[0], normalize(image, plan)[0]
    inside = np.zeros((6, 10, 10), bool)
    inside[1:5, 2:8, 2:8] = True
    assert np.all(without[~inside] == 0)
    mask = inside | (label > 0)
    values = image[0][mask]
    expected = (image[0] - values.mean()) / values.std()
    np.testing.assert_allclose(with_label[mask], expected[mask], rtol=1e-6)
    assert np.all(with_label[label > 0] < -5) and np.all(with_label[~mask] == 0)


def test_intensities_whose_squares_overflow_float32_are_z_scored_in_float64(home: Path) -> None:
    """Intensities near 1e30 gave float32 an infinite std and a normalised image of zeros (a network trained
    on blank input without a word); the same image scaled down normalises alike, and ordinary intensities keep
    numpy's float32 statistics to the bit (nnU-Net's)."""
    plan = _plan(home, {"scheme": "zscore", "nonzero_mask": False})
    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 3.0, (1, 8, 8, 8)).astype(np.float32)
    huge = normalize(image * np.float32(1e30), plan)
    assert np.isfinite(huge).all() and float(np.abs(huge).max()) > 1.0
    np.testing.assert_allclose(huge, normalize(image, plan), rtol=1e-4, atol=1e-5)
    assert mean_std(image) == (float(image.mean()), float(image.std()))
