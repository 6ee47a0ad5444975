"""The dataset fingerprint (nnU-Net's term): what the plan is derived from, saved as `fingerprint.json`.

Per case: shape, spacing, shape after cropping to the non-zero region, label voxel counts, and a sample of
foreground intensities per modality. Over the dataset: foreground intensity statistics per modality
(mean, std, median, percentiles 0.5 / 99.5, min, max) and class frequencies.
"""

from __future__ import annotations

import zlib
from concurrent.futures import Executor

import numpy as np

from medseg_bench.data.io import read_image, read_label
from medseg_bench.data.msd import Case
from medseg_bench.data.parallel import parallel_map
from medseg_bench.data.resample import nonzero_box
from medseg_bench.errors import DataError
from medseg_bench.spec import TaskSpec

FOREGROUND_SAMPLES_PER_CASE = 10_000


def case_fingerprint(case: Case, num_samples: int = FOREGROUND_SAMPLES_PER_CASE) -> dict:
    """Statistics of one case (worker-safe). `samples` holds one float32 array per channel (not JSON)."""
    image, geom = read_image(case.image)
    label, _ = read_label(case.label)
    if label.shape != image.shape[1:]:
        raise DataError(f"{case.label}: label shape {label.shape} differs from image shape {image.shape[1:]}")
    box = nonzero_box(image)
    foreground = label > 0
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    count = int(foreground.sum())
    pick = np.sort(rng.choice(count, min(num_samples, count), replace=False)) if count else np.zeros(0, int)
    samples = [image[c][foreground][pick].astype(np.float32) for c in range(image.shape[0])]
    values, voxels = np.unique(label, return_counts=True)
    return {
        "case": case.case_id,
        "shape_zyx": list(label.shape),
        "spacing_zyx": [float(s) for s in geom.spacing_zyx],
        "cropped_shape_zyx": [hi - lo for lo, hi in box],
        "class_voxels": {str(int(v)): int(n) for v, n in zip(values, voxels, strict=True)},
        "samples": samples,
    }


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:  # no foreground anywhere: neutral statistics rather than NaN
        return {k: 0.0 for k in ("mean", "std", "median", "p00_5", "p99_5", "min", "max")} | {"std": 1.0}
    values = values.astype(np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "p00_5": float(np.percentile(values, 0.5)),
        "p99_5": float(np.percentile(values, 99.5)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def fingerprint(
    task: TaskSpec,
    cases: list[Case],
    workers: int | None = None,
    progress: bool = False,
    pool: Executor | None = None,
) -> dict:
    """Fingerprint of `cases` (read in parallel, in `pool` when given)."""
    per_case = parallel_map(case_fingerprint, cases, workers, progress, "fingerprint", pool)
    total_voxels = sum(int(np.prod(c["shape_zyx"])) for c in per_case)
    labels = sorted({int(v) for c in per_case for v in c["class_voxels"]} | set(task.labels))
    foreground_voxels = sum(n for c in per_case for v, n in c["class_voxels"].items() if v != "0")
    classes = {}
    for value in labels:
        voxels = sum(c["class_voxels"].get(str(value), 0) for c in per_case)
        classes[str(value)] = {
            "name": task.labels.get(value, "?"),
            "voxel_fraction": voxels / max(total_voxels, 1),
            "foreground_fraction": voxels / max(foreground_voxels, 1) if value != 0 else None,
            "cases_present": sum(1 for c in per_case if c["class_voxels"].get(str(value), 0) > 0),
        }
    channels = len(per_case[0]["samples"]) if per_case else 0
    intensity = []
    for c in range(channels):
        stats = _intensity_stats(np.concatenate([case["samples"][c] for case in per_case]))
        modality = task.modalities[c] if c < len(task.modalities) else str(c)
        intensity.append({"channel": c, "modality": modality, **stats})
    return {
        "task": task.name,
        "num_cases": len(per_case),
        "cases": [c["case"] for c in per_case],
        "shapes_zyx": [c["shape_zyx"] for c in per_case],
        "spacings_zyx": [c["spacing_zyx"] for c in per_case],
        "cropped_shapes_zyx": [c["cropped_shape_zyx"] for c in per_case],
        "foreground_intensity": intensity,
        "class_frequencies": classes,
    }
