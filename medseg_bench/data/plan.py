"""Dataset fingerprint -> plan (normalisation, patch and batch sizes), as nnU-Net derives its plans.

Both are JSON files a person can open: `fingerprint.json` and `plan.json` in the task's preprocessed folder.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg_bench.data.io import read_geometry, read_image, read_label
from medseg_bench.data.msd import Case
from medseg_bench.spec import TaskSpec

# Voxels per batch on a CPU, calibrated so one step takes well under a second on 2 cores.
BATCH_VOXELS_3D = 4 * 40 * 56 * 40
BATCH_PIXELS_2D = 32 * 64 * 64
MAX_PATCH_3D = 128
MAX_PATCH_2D = 256
CT_SAMPLES_PER_CASE = 10_000


@dataclass(frozen=True)
class Plan:
    task: str
    normalization: str  # "zscore" (per case) | "ct" (clip + z-score with dataset foreground statistics)
    ct_clip: tuple[float, float] | None
    ct_mean: float | None
    ct_std: float | None
    median_shape: tuple[int, int, int]
    median_spacing: tuple[float, float, float]
    patch_3d: tuple[int, int, int]
    batch_3d: int
    patch_2d: tuple[int, int]
    batch_2d: int

    @property
    def preprocessing_hash(self) -> str:
        """Hash of what changes cached arrays (not patch/batch sizes)."""
        key = {k: getattr(self, k) for k in ("task", "normalization", "ct_clip", "ct_mean", "ct_std")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        values = dict(data)
        for key in ("ct_clip", "median_shape", "median_spacing", "patch_3d", "patch_2d"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def _round_up(value: float, multiple: int, cap: int) -> int:
    return int(min(cap, max(multiple, int(np.ceil(value / multiple)) * multiple)))


def fingerprint(task: TaskSpec, cases: list[Case]) -> dict:
    """Per-case shapes and spacings (headers only), plus CT foreground intensity samples when needed."""
    shapes, spacings = [], []
    for case in cases:
        geom, _ = read_geometry(case.image)
        shapes.append(list(reversed(geom.size[:3])))
        spacings.append(list(geom.spacing_zyx))
    result: dict = {"task": task.name, "num_cases": len(cases), "shapes_zyx": shapes, "spacings_zyx": spacings}
    if task.imaging == "CT":
        rng = np.random.default_rng(0)
        samples = []
        for case in cases:
            image, _ = read_image(case.image)
            label, _ = read_label(case.label)
            foreground = image[0][label > 0]
            if foreground.size:
                take = min(CT_SAMPLES_PER_CASE, foreground.size)
                samples.append(rng.choice(foreground, take, replace=False))
        values = np.concatenate(samples) if samples else np.zeros(1, np.float32)
        result["ct_foreground"] = {
            "p00_5": float(np.percentile(values, 0.5)),
            "p99_5": float(np.percentile(values, 99.5)),
            "mean": float(values.mean()),
            "std": float(values.std()),
        }
    return result


def make_plan(task: TaskSpec, fp: dict) -> Plan:
    median_shape = tuple(int(v) for v in np.median(np.array(fp["shapes_zyx"]), axis=0))
    median_spacing = tuple(float(v) for v in np.median(np.array(fp["spacings_zyx"]), axis=0))
    patch_3d = tuple(_round_up(v, 8, MAX_PATCH_3D) for v in median_shape)
    patch_2d = tuple(_round_up(v, 32, MAX_PATCH_2D) for v in median_shape[1:])
    batch_3d = int(np.clip(BATCH_VOXELS_3D // int(np.prod(patch_3d)), 2, 8))
    batch_2d = int(np.clip(BATCH_PIXELS_2D // int(np.prod(patch_2d)), 4, 64))
    ct = fp.get("ct_foreground")
    return Plan(
        task=task.name,
        normalization="ct" if ct else "zscore",
        ct_clip=(ct["p00_5"], ct["p99_5"]) if ct else None,
        ct_mean=ct["mean"] if ct else None,
        ct_std=max(ct["std"], 1e-6) if ct else None,
        median_shape=median_shape,  # type: ignore[arg-type]
        median_spacing=median_spacing,  # type: ignore[arg-type]
        patch_3d=patch_3d,  # type: ignore[arg-type]
        batch_3d=batch_3d,
        patch_2d=patch_2d,  # type: ignore[arg-type]
        batch_2d=batch_2d,
    )


def normalize(image: np.ndarray, plan: Plan) -> np.ndarray:
    """Normalise a (C, Z, Y, X) image as the plan says; returns float32."""
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        channel = image[c].astype(np.float32, copy=False)
        if plan.normalization == "ct":
            assert plan.ct_clip is not None and plan.ct_mean is not None and plan.ct_std is not None
            out[c] = (np.clip(channel, *plan.ct_clip) - plan.ct_mean) / plan.ct_std
            continue
        nonzero = channel != 0
        # Skull-stripped MRI (BraTS): statistics over the brain only, background stays 0 (as nnU-Net).
        use_mask = nonzero.mean() < 0.75 and nonzero.any()
        values = channel[nonzero] if use_mask else channel
        mean, std = float(values.mean()), float(values.std())
        out[c] = (channel - mean) / max(std, 1e-8)
        if use_mask:
            out[c][~nonzero] = 0.0
    return out


def load_or_make_plan(task: TaskSpec, cases: list[Case], folder: Path) -> Plan:
    """Read `plan.json` from `folder`, or compute fingerprint and plan and write both."""
    from medseg_bench.data.io import write_json_atomic

    plan_path = folder / "plan.json"
    if plan_path.is_file():
        return Plan.from_dict(json.loads(plan_path.read_text()))
    fp = fingerprint(task, cases)
    write_json_atomic(folder / "fingerprint.json", fp)
    plan = make_plan(task, fp)
    write_json_atomic(plan_path, plan.to_dict())
    return plan
