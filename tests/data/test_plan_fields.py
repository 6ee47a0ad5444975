from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.plan import Plan, make_plan
from medseg_bench.errors import DataError


def _plan(home: Path) -> dict:
    fingerprint = {"spacings_zyx": [[1.0, 1.0, 1.0]] * 3, "shapes_zyx": [[36, 50, 35]] * 3,
                   "cropped_shapes_zyx": [[36, 50, 35]] * 3, "foreground_intensity": []}
    return make_plan(get_task("Task04_Hippocampus"), fingerprint).to_dict()


@pytest.mark.parametrize(
    "edit,message",
    [
        ({"patch_3d": [16, 16]}, "patch_3d needs 3 values"),
        ({"batch_2d": 0}, "batch_2d must be at least 1"),
        ({"target_spacing": [0, 1, 1]}, "target_spacing must be positive"),
        ({"normalization": "minmax"}, "normalization must be"),
        ({"surprise": 1}, "unknown"),
        ({"target_spacing": [1, 1, float("nan")]}, r"target_spacing must be positive finite numbers \(mm\), "
                                                    r"not \[1, 1, NaN\]"),
        ({"target_spacing": [1, 1, "2"]}, "target_spacing must be positive finite numbers"),
        ({"batch_3d": 2.7}, "batch_3d must be a whole number, not 2.7"),
        ({"batch_2d": True}, "batch_2d must be a whole number, not true"),
        ({"patch_2d": [16.5, 16]}, r"patch_2d must be positive whole numbers up to 2147483647, not "
                                   r"\[16.5, 16\]"),
        ({"batch_3d": 1e300}, "batch_3d must be at least 1 and at most 2147483647, not 1e"),  # whole, too
        ({"patch_3d": [16, 16, 2**31]}, "patch_3d must be positive whole numbers up to 2147483647"),
        ({"crop_to_nonzero": "yes"}, "crop_to_nonzero must be true or false"),
        ({"channel_normalization": [{"scheme": "ct", "clip": [10, -10], "mean": 0, "std": 1}]},
         r"channel_normalization\[0\].clip must be two finite numbers, low then high"),
        ({"channel_normalization": [{"scheme": "ct", "clip": [-10, 10], "mean": 0, "std": 0}]},
         r"channel_normalization\[0\].std must be a positive finite number, not 0"),
        ({"channel_normalization": [{"scheme": "minmax"}]}, r"channel_normalization\[0\] must be"),
        ({"channel_normalization": [{"scheme": "zscore", "nonzero_mask": 1}]}, "nonzero_mask must be true"),
        ({"channel_normalization": []}, "channel_normalization needs one entry per channel"),
        ({"ct_mean": 3.0}, "normalization 'per_channel' keeps its CT statistics in channel_normalization"),
    ],
)
def test_each_field_of_an_edited_plan_is_checked(home: Path, edit: dict, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        Plan.from_dict(_plan(home) | edit, "plan.json")
    assert str(info.value).startswith("plan.json: ")


def test_whole_float_batch_is_read_as_an_int(home: Path) -> None:
    assert Plan.from_dict(_plan(home) | {"batch_3d": 3.0}).batch_3d == 3
