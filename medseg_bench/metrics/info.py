"""What each metric is (the registry) and how it is computed (the settings recorded with every result)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from medseg_bench.errors import UsageError
from medseg_bench.registry import Registry

SURFACE_CONVENTIONS = ("area", "voxel")
EMPTY_POLICIES = ("penalize", "nan")


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, direction and unit, for reports, sweeps and rankings."""

    name: str
    higher_is_better: bool
    unit: str
    description: str


# This order is the column order of every results table.
_METRIC_INFOS = (
    MetricInfo("dice", True, "", "Dice similarity coefficient 2|P∩R| / (|P|+|R|)"),
    MetricInfo("jaccard", True, "", "Jaccard index (IoU) |P∩R| / |P∪R|"),
    MetricInfo("precision", True, "", "positive predictive value |P∩R| / |P|"),
    MetricInfo("recall", True, "", "sensitivity |P∩R| / |R|"),
    MetricInfo("volume_diff", False, "", "absolute relative volume difference ||P|-|R|| / |R|"),
    MetricInfo("hd", False, "mm", "Hausdorff distance: largest surface-to-surface distance, both directions"),
    MetricInfo("hd95", False, "mm", "max of the two directed 95th-percentile surface distances"),
    MetricInfo("assd", False, "mm", "average symmetric surface distance, pooled over both surfaces"),
    MetricInfo("nsd", True, "", "normalised surface Dice: share of both surfaces within the tolerance"),
)

# The headline metrics: a run's summary.json means and the report's default columns.
HEADLINE_METRICS = ("dice", "jaccard", "hd95", "nsd")

METRICS: Registry[MetricInfo] = Registry("metric")
for _info in _METRIC_INFOS:
    METRICS.add(_info.name, _info)

METRIC_NAMES: tuple[str, ...] = tuple(info.name for info in _METRIC_INFOS)


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
            raise UsageError(f"unknown surface convention '{self.surface}'; choose area or voxel")
        if self.empty_policy not in EMPTY_POLICIES:
            raise UsageError(f"unknown empty-mask policy '{self.empty_policy}'; choose penalize or nan")
        if not (math.isfinite(self.nsd_tolerance_mm) and self.nsd_tolerance_mm >= 0):
            raise UsageError(f"NSD tolerance must be a finite distance >= 0 mm, got {self.nsd_tolerance_mm}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
