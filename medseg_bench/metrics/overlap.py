"""Overlap metrics (Dice, Jaccard, precision, recall, volume difference) of two binary masks.

Each `compute_*` function takes boolean masks of the same shape and returns NaN when the metric is
undefined (a zero denominator); `overlap_from_counts` applies the empty-mask policy instead.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def _counts(pred_mask: np.ndarray, ref_mask: np.ndarray) -> tuple[int, int, int]:
    pred = np.asarray(pred_mask, dtype=bool)
    ref = np.asarray(ref_mask, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, reference {ref.shape}")
    return int(np.count_nonzero(pred & ref)), int(np.count_nonzero(pred)), int(np.count_nonzero(ref))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else NAN


def compute_dice(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Dice 2|P∩R| / (|P|+|R|); NaN when both masks are empty."""
    tp, n_pred, n_ref = _counts(pred_mask, ref_mask)
    return _ratio(2 * tp, n_pred + n_ref)


def compute_jaccard(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Jaccard (IoU) |P∩R| / |P∪R|; NaN when both masks are empty."""
    tp, n_pred, n_ref = _counts(pred_mask, ref_mask)
    return _ratio(tp, n_pred + n_ref - tp)


def compute_precision(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Precision |P∩R| / |P|; NaN when the prediction is empty."""
    tp, n_pred, _ = _counts(pred_mask, ref_mask)
    return _ratio(tp, n_pred)


def compute_recall(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Recall (sensitivity) |P∩R| / |R|; NaN when the reference is empty."""
    tp, _, n_ref = _counts(pred_mask, ref_mask)
    return _ratio(tp, n_ref)


def compute_volume_diff(pred_mask: np.ndarray, ref_mask: np.ndarray) -> float:
    """Absolute relative volume difference ||P|-|R|| / |R| (0.1 = 10 %); NaN when the reference is empty.

    Spacing cancels out, so voxel counts suffice.
    """
    _, n_pred, n_ref = _counts(pred_mask, ref_mask)
    return _ratio(abs(n_pred - n_ref), n_ref)


def overlap_from_counts(tp: int, n_pred: int, n_ref: int, empty_policy: str = "penalize") -> dict[str, float]:
    """Every metric that needs no surfaces (Dice, Jaccard, precision, recall, volume difference) from the
    true-positive and mask voxel counts, with the empty-mask policy applied.

    Both empty: every value NaN. Exactly one empty: Dice and Jaccard are 0 by definition; the undefined one
    of precision/recall is 0 under "penalize" and NaN under "nan"; volume_diff is NaN when the reference is
    empty (no volume to be relative to).
    """
    from medseg_bench.metrics.info import METRIC_NAMES, METRICS, Measured, MetricSettings

    infos = [METRICS.get(name) for name in METRIC_NAMES if not METRICS.get(name).needs_surfaces]
    if n_pred == 0 and n_ref == 0:
        return {info.name: NAN for info in infos}
    measured = Measured(tp, n_pred, n_ref, None, MetricSettings(empty_policy=empty_policy), NAN)
    return {info.name: info.compute(measured) for info in infos}
