"""Segmentation metrics: overlap (Dice, Jaccard, precision, recall, volume difference) and surface distances
(HD, HD95, ASSD, NSD) in mm, with documented surface conventions and empty-mask policy (docs/metrics.md).

Example:
    >>> from medseg_bench.metrics import evaluate_case, MetricSettings
    >>> settings = MetricSettings(nsd_tolerance_mm=2.0, surface="area")
    >>> rows = evaluate_case(pred, ref, spacing_mm=(2.5, 0.8, 0.8), labels=[1, 2], settings=settings)
"""

from medseg_bench.metrics.evaluate import evaluate_case, evaluate_folders, summarize_cases
from medseg_bench.metrics.info import HEADLINE_METRICS, METRIC_NAMES, METRICS, MetricInfo, MetricSettings
from medseg_bench.metrics.overlap import (
    compute_dice,
    compute_jaccard,
    compute_precision,
    compute_recall,
    compute_volume_diff,
    overlap_from_counts,
)
from medseg_bench.metrics.surface import (
    SurfaceDistances,
    compute_assd,
    compute_hausdorff,
    compute_hd95,
    compute_nsd,
    compute_surface_distances,
    distance_metrics,
    set_distance_threads,
)

__all__ = [
    "HEADLINE_METRICS",
    "METRICS",
    "METRIC_NAMES",
    "MetricInfo",
    "MetricSettings",
    "SurfaceDistances",
    "compute_assd",
    "compute_dice",
    "compute_hausdorff",
    "compute_hd95",
    "compute_jaccard",
    "compute_nsd",
    "compute_precision",
    "compute_recall",
    "compute_surface_distances",
    "compute_volume_diff",
    "distance_metrics",
    "evaluate_case",
    "evaluate_folders",
    "overlap_from_counts",
    "set_distance_threads",
    "summarize_cases",
]
