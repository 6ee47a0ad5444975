"""`metrics/info.py`: the registry names every metric with its direction and unit, and each stays within the
range a run's metrics.csv is checked against."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_bench.errors import UnknownNameError
from medseg_bench.metrics import (
    METRIC_NAMES,
    METRICS,
    MetricSettings,
    evaluate_case,
)
from tests.metrics.reference import SPACING_3D


def test_registry_names_every_metric_with_direction_and_unit():
    # each metric named in docs/metrics.md: tests/cli/test_listing.py
    assert set(METRICS) == set(METRIC_NAMES) >= {"dice", "jaccard", "hd95", "nsd"}
    assert METRICS.get("hd95").unit == "mm" and not METRICS.get("hd95").higher_is_better
    assert METRICS.get("nsd").higher_is_better
    with pytest.raises(UnknownNameError, match="did you mean 'dice'"):
        METRICS.get("dise")
    defaults = {"nsd_tolerance_mm": 1.0, "surface": "area", "empty_policy": "penalize"}
    assert MetricSettings().to_dict() == defaults


@pytest.mark.parametrize("name", METRIC_NAMES)
@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_every_metric_scores_within_the_range_a_run_is_checked_against(name: str, policy: str) -> None:
    # A run's metrics.csv is read back by finished._bad_cell: a score from 0 to 1 where higher is better, else
    # a finite value of at least 0 (NaN only where a mask is empty). A registered metric outside its range
    # would make every run that scored it read as damaged.
    info = METRICS.get(name)
    rng = np.random.default_rng(3)
    high = 1.0 if info.higher_is_better else math.inf
    settings_ = MetricSettings(empty_policy=policy)
    for trial in range(12):
        ref = (rng.random((6, 9, 8)) < 0.3).astype(np.uint8)
        pred = np.where(rng.random(ref.shape) < 0.25, 1 - ref, ref).astype(np.uint8)
        if trial == 1:
            pred[:] = 0  # a miss
        if trial == 2:
            ref[:] = 0  # a false positive
        if trial == 3:
            pred[:] = 1  # over-segmented: three times the reference's volume
        row = evaluate_case(pred, ref, SPACING_3D, [1], settings_)[0]
        value = row[name]
        in_range = math.isnan(value) or 0 <= value <= high and math.isfinite(value)
        assert info.title and in_range, (trial, value)
        assert not math.isnan(value) or row["ref_empty"] or row["pred_empty"]
