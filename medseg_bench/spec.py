"""Specs are data: a task spec (from tasks/<Task>.yaml) and a run spec (one point of a sweep).

Variants are fields of `RunSpec`, never subclasses. The run id is a stable hash of every field that can
change a result; where results are written is not part of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medseg_bench.errors import UsageError

# Bump when a change to the pipeline changes results for the same spec (old runs then get new ids).
PIPELINE_VERSION = 2

DIMS = ("2d", "3d")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task: where to get it and what it contains."""

    name: str
    labels: dict[int, str]
    modalities: list[str]
    imaging: str = "MRI"
    version: int = 1
    description: str = ""
    url: str | None = None
    md5: str | None = None
    local_path: str | None = None
    tensor_image_size: str = "3D"
    num_training: int | None = None
    num_test: int | None = None
    nsd_tolerance_mm: float = 1.0
    regions: dict[str, list[int]] = field(default_factory=dict)
    reference_dice: dict[str, float] = field(default_factory=dict)
    citation: str = ""
    # Regex over case ids; its `patient` group (or the whole match) names one patient.
    group_pattern: str | None = None
    source_file: str = ""

    @property
    def foreground_labels(self) -> list[int]:
        return sorted(k for k in self.labels if k != 0)

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def num_channels(self) -> int:
        return len(self.modalities)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source_file: Path) -> TaskSpec:
        known = {f.name for f in fields(cls)} - {"source_file"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{source_file}: unknown keys {', '.join(unknown)}")
        for key in ("name", "labels", "modalities"):
            if key not in data:
                raise UsageError(f"{source_file}: missing required key '{key}'")
        values = dict(data)
        try:
            values["labels"] = {int(k): str(v) for k, v in data["labels"].items()}
            values["modalities"] = [str(m) for m in data["modalities"]]
            values["regions"] = {str(k): [int(x) for x in v] for k, v in (data.get("regions") or {}).items()}
            reference = data.get("reference_dice") or {}
            values["reference_dice"] = {str(k): float(v) for k, v in reference.items()}
        except (AttributeError, TypeError, ValueError) as exc:
            raise UsageError(f"{source_file}: malformed task file ({exc})") from None
        if values["imaging"] not in ("CT", "MRI", "other"):
            raise UsageError(f"{source_file}: imaging must be CT, MRI or other, not {values['imaging']!r}")
        return cls(**values, source_file=str(source_file))


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training + evaluation run."""

    task: str
    dims: str
    arch: str
    loss: str
    aug: str
    encoder: str | None = None  # 2D (smp) encoder name; None for 3D nets
    fold: int = 0
    num_folds: int = 5
    seed: int = 0
    epochs: int = 10
    max_minutes: float | None = None
    iters_per_epoch: int = 50
    batch_size: int | None = None  # None: from the plan
    patch_size: tuple[int, ...] | None = None  # None: from the plan
    optimizer: str = "adamw"
    lr: float | None = None  # None: the optimizer's default
    nsd_tolerance_mm: float | None = None  # None: the task's default
    pretrained: bool = False  # 2D: ImageNet encoder weights (must be available offline)
    class_weights: tuple[float, ...] | None = None  # one per class, background first; None: unweighted
    tta: bool = False  # mirroring test-time augmentation at evaluation
    postprocess: bool = False  # largest-connected-component per label where it helps on the held-out fold
    task_version: int = 1
    pipeline_version: int = PIPELINE_VERSION

    def __post_init__(self) -> None:
        if self.dims not in DIMS:
            raise UsageError(f"unknown dims '{self.dims}'; choose from {', '.join(DIMS)}")
        if self.num_folds < 2:
            raise UsageError(f"num_folds must be at least 2 (one fold is held out), not {self.num_folds}")
        if not 0 <= self.fold < self.num_folds:
            raise UsageError(f"fold {self.fold} outside 0..{self.num_folds - 1}")
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"seed must be in 0..{2**32 - 1}, not {self.seed}")
        for name in ("epochs", "iters_per_epoch", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, not {value}")
        for name in ("max_minutes", "lr"):
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise UsageError(f"{name} must be a positive number, not {value}")
        sides = 2 if self.dims == "2d" else 3
        if self.patch_size is not None and (len(self.patch_size) != sides or min(self.patch_size) < 1):
            raise UsageError(f"a {self.dims} patch size is {sides} positive sides, not "
                             f"{','.join(map(str, self.patch_size))}")
        if self.optimizer not in ("adamw", "sgd"):
            raise UsageError(f"unknown optimizer '{self.optimizer}'; choose from adamw, sgd")
        if self.class_weights is not None and not all(0 <= w < float("inf") for w in self.class_weights):
            raise UsageError(f"class weights must be finite and >= 0, not {list(self.class_weights)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("patch_size", "class_weights"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        values = dict(data)
        for key in ("patch_size", "class_weights"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @property
    def spec_hash(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]

    @property
    def run_id(self) -> str:
        """Readable and stable: the axes, then a hash of the whole spec."""
        arch = self.arch if self.encoder is None else f"{self.arch}.{self.encoder}"
        return f"{self.dims}-{arch}-{self.loss}-{self.aug}-f{self.fold}-s{self.seed}-{self.spec_hash}"

    @property
    def config_key(self) -> tuple[str, str, str, str, str, str]:
        """What a leaderboard row aggregates over (folds and seeds are pooled)."""
        return (self.task, self.dims, self.arch, self.encoder or "", self.loss, self.aug)
