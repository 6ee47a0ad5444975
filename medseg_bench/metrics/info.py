"""What each metric is and how it is computed (the registry), and the settings recorded with every result.

Adding a metric is one decorated function here: `@metric(...)` registers its name, direction, unit and report
title with a function of `Measured` (one label of one case). The registration order is the column order of a
run's `metrics.csv`, of `evaluate` and of the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from medseg_bench.errors import UsageError
from medseg_bench.metrics.surface import (
    SurfaceDistances,
    compute_assd,
    compute_hausdorff,
    compute_hd95,
    compute_nsd,
)
from medseg_bench.registry import Registry, choice_hint

SURFACE_CONVENTIONS = ("area", "voxel")
EMPTY_POLICIES = ("penalize", "nan")


@dataclass(frozen=True)
class MetricSettings:
    """How surface metrics are computed; recorded with every result so that numbers stay comparable.

    Attributes:
        nsd_tolerance_mm: distance up to which a surface element counts as matched, for NSD.
        surface: "area" (surfels on the voxel-corner grid weighted by area, DeepMind's convention) or
            "voxel" (unweighted boundary voxels: mask minus its erosion, as MONAI and MedPy).
        empty_policy: "penalize" (one mask empty -> HD/HD95/ASSD = image diagonal in mm, precision or
            recall 0) or "nan" (those values NaN). Both masks empty -> NaN under either policy.
    """

    nsd_tolerance_mm: float = 1.0
    surface: str = "area"
    empty_policy: str = "penalize"

    def __post_init__(self) -> None:
        if self.surface not in SURFACE_CONVENTIONS:
            raise UsageError(f"unknown surface convention '{self.surface}'; "
                             f"{choice_hint(self.surface, SURFACE_CONVENTIONS)}")
        if self.empty_policy not in EMPTY_POLICIES:
            raise UsageError(f"unknown empty-mask policy '{self.empty_policy}'; "
                             f"{choice_hint(self.empty_policy, EMPTY_POLICIES)}")
        if not (math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm >= 0):
            raise UsageError(f"NSD tolerance must be a finite distance >= 0 mm, got {self.nsd_tolerance_mm}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Measured:
    """What a metric scores one label of one case from, never with both masks empty (every metric is NaN
    then): the true-positive and mask voxel counts, the distances between the two surfaces (None when one
    mask is empty), the settings and the image's diagonal in mm."""

    tp: int
    n_pred: int
    n_ref: int
    distances: SurfaceDistances | None
    settings: MetricSettings
    diagonal_mm: float

    @property
    def undefined(self) -> float:
        """A share whose own mask is empty while the other is not: 0 under "penalize", else NaN."""
        return 0.0 if self.settings.empty_policy == "penalize" else math.nan

    @property
    def worst_mm(self) -> float:
        """A distance with one mask empty: the image's diagonal under "penalize", else NaN."""
        return self.diagonal_mm if self.settings.empty_policy == "penalize" else math.nan


Compute = Callable[[Measured], float]


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, direction, unit and report title, for scoring, reports and rankings, and how it is
    computed (`needs_surfaces`: it reads `Measured.distances`)."""

    name: str
    higher_is_better: bool
    unit: str
    description: str
    title: str
    compute: Compute
    needs_surfaces: bool = False


METRICS: Registry[MetricInfo] = Registry("metric")
_ORDER: list[str] = []


def metric(name: str, higher_is_better: bool, unit: str, title: str, description: str,
           needs_surfaces: bool = False) -> Callable[[Compute], Compute]:
    """Register `compute` as metric `name`; a score from 0 to 1 when higher is better, else at least 0 (what
    a run's metrics.csv is checked against)."""

    def deco(compute: Compute) -> Compute:
        METRICS.add(name, MetricInfo(name, higher_is_better, unit, description, title, compute,
                                     needs_surfaces))
        _ORDER.append(name)
        return compute

    return deco


@metric("dice", True, "", "Dice", "Dice similarity coefficient 2|P∩R| / (|P|+|R|)")
def _dice(m: Measured) -> float:
    return 2 * m.tp / (m.n_pred + m.n_ref)


@metric("jaccard", True, "", "Jaccard", "Jaccard index (IoU) |P∩R| / |P∪R|")
def _jaccard(m: Measured) -> float:
    return m.tp / (m.n_pred + m.n_ref - m.tp)


@metric("precision", True, "", "Precision", "positive predictive value |P∩R| / |P|")
def _precision(m: Measured) -> float:
    return m.tp / m.n_pred if m.n_pred else m.undefined


@metric("recall", True, "", "Recall", "sensitivity |P∩R| / |R|")
def _recall(m: Measured) -> float:
    return m.tp / m.n_ref if m.n_ref else m.undefined


@metric("volume_diff", False, "", "Vol. diff", "absolute relative volume difference ||P|-|R|| / |R|")
def _volume_diff(m: Measured) -> float:
    return abs(m.n_pred - m.n_ref) / m.n_ref if m.n_ref else math.nan  # no volume to be relative to


@metric("hd", False, "mm", "HD", "Hausdorff distance: largest surface-to-surface distance, both directions",
        needs_surfaces=True)
def _hd(m: Measured) -> float:
    return m.worst_mm if m.distances is None else compute_hausdorff(m.distances)


@metric("hd95", False, "mm", "HD95", "max of the two directed 95th-percentile surface distances",
        needs_surfaces=True)
def _hd95(m: Measured) -> float:
    return m.worst_mm if m.distances is None else compute_hd95(m.distances)


@metric("assd", False, "mm", "ASSD", "average symmetric surface distance, pooled over both surfaces",
        needs_surfaces=True)
def _assd(m: Measured) -> float:
    return m.worst_mm if m.distances is None else compute_assd(m.distances)


@metric("nsd", True, "", "NSD", "normalised surface Dice: share of both surfaces within the tolerance",
        needs_surfaces=True)
def _nsd(m: Measured) -> float:
    return 0.0 if m.distances is None else compute_nsd(m.distances, m.settings.nsd_tolerance_mm)


# Every metric, in registration order: the column order of every results table.
METRIC_NAMES: tuple[str, ...] = tuple(_ORDER)

# The headline metrics: a run's summary.json means and the report's default columns.
HEADLINE_METRICS = ("dice", "jaccard", "hd95", "nsd")
