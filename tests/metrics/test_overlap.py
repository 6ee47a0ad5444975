"""`metrics/overlap.py` by hand, and the plain metric functions on empty masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_bench.metrics import (
    compute_dice,
    compute_hausdorff,
    compute_hd95,
    compute_jaccard,
    compute_nsd,
    compute_precision,
    compute_recall,
    compute_surface_distances,
    compute_volume_diff,
)


def test_overlap_values_by_hand():
    pred = np.array([[1, 1, 1, 0]], bool)
    ref = np.array([[0, 1, 1, 1]], bool)
    assert compute_dice(pred, ref) == pytest.approx(2 * 2 / 6)
    assert compute_jaccard(pred, ref) == pytest.approx(2 / 4)
    assert compute_precision(pred, ref) == pytest.approx(2 / 3)
    assert compute_recall(pred, ref) == pytest.approx(2 / 3)
    assert compute_volume_diff(pred, ref) == 0


def test_plain_functions_on_empty_masks():
    empty, box = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    box[1:3, 1:3] = True
    assert math.isnan(compute_dice(empty, empty)) and math.isnan(compute_jaccard(empty, empty))
    assert compute_dice(empty, box) == 0 and math.isnan(compute_precision(empty, box))
    assert math.isnan(compute_recall(box, empty)) and math.isnan(compute_volume_diff(box, empty))
    one_empty = compute_surface_distances(empty, box, (1.0, 1.0))
    assert compute_hausdorff(one_empty) == math.inf and compute_nsd(one_empty, 1.0) == 0
    both_empty = compute_surface_distances(empty, empty, (1.0, 1.0))
    assert math.isnan(compute_hd95(both_empty)) and math.isnan(compute_nsd(both_empty, 1.0))
