"""The dataset fingerprint (nnU-Net's term): what the plan is derived from, saved as `fingerprint.json`.

Per case: shape, spacing, shape after cropping to the non-zero region, label voxel counts, and a sample of
foreground intensities per CT channel. Over the dataset: foreground intensity statistics of each CT channel
(mean, std, median, percentiles 0.5 / 99.5, min, max: what it is clipped and z-scored with) and class
frequencies. Other channels are z-scored per case with their own statistics, so theirs are not sampled
(nnU-Net samples them too and uses them for nothing; 10^8 float32 voxels are 400 MB and about 3 s a channel).

The intensity sample is nnU-Net v2's (`DatasetFingerprintExtractor`): 10^8 voxels over the dataset, the same
number from every case, drawn with replacement from the foreground (label > 0) inside the non-zero box by a
`RandomState(1234)` made anew for each case, channel after channel (a channel before a CT channel advances it
as nnU-Net's draw for it would); the statistics are numpy's on the float32 concatenation. So a CT task's clip
bounds, mean and std are nnU-Net's (`bench/nnunet_parity.py` checks).

Only as many cases are read at once as fit in the memory this process may use, beside every worker's own and
the sample gathered here (`read_memory.reads_at_once`, from the cases' headers); a case that cannot be read
even alone stops it before any is read, naming its image.
"""

from __future__ import annotations

from concurrent.futures import Executor
from functools import partial

import numpy as np

from medseg_bench.checks import usable_memory
from medseg_bench.data.io import sitk_module
from medseg_bench.data.msd import Case
from medseg_bench.data.normalize import mean_std
from medseg_bench.data.parallel import parallel_map, pool_size
from medseg_bench.data.read_memory import FINGERPRINT, reads_at_once, stored_cases
from medseg_bench.data.resample import nonzero_box
from medseg_bench.data.validate import read_case
from medseg_bench.spec import TaskSpec

# nnU-Net's `num_foreground_voxels_for_intensitystats` (10e7) and `collect_foreground_intensities` seed
FOREGROUND_VOXELS_FOR_STATS = 10**8
SAMPLE_SEED = 1234
# 3: CT channels only are sampled. 2: nnU-Net's sample (above), of every channel. 1 (no "format" key): up to
# 10,000 voxels per case without replacement, from the whole image's foreground. A fingerprint of another
# format is computed again; an existing plan keeps the statistics it was made with.
FINGERPRINT_FORMAT = 3


def case_fingerprint(case: Case, num_samples: int, sampled: tuple[int, ...] | None = None,
                     task: TaskSpec | None = None) -> dict:
    """Statistics of one case (worker-safe). `samples` holds one float32 array per channel (not JSON): the
    sample for the channels in `sampled` (default: all), empty for the others. With `task`, its channels and
    label values are checked against the task's (`validate.read_case`)."""
    image, geom, label = read_case(case, task)
    box = nonzero_box(image)
    inside = tuple(slice(lo, hi) for lo, hi in box)
    foreground = label[inside] > 0
    rs = np.random.RandomState(SAMPLE_SEED)
    wanted = range(image.shape[0]) if sampled is None else sampled
    last = max(wanted, default=-1)
    count = int(np.count_nonzero(foreground))
    samples = []
    for c in range(image.shape[0]):
        if c in wanted and count:
            samples.append(rs.choice(image[c][inside][foreground], num_samples, replace=True))
            continue
        if count and c < last:  # what `choice` draws, so that a later channel's sample is nnU-Net's
            rs.randint(0, count, size=num_samples)
        samples.append(np.zeros(0, np.float32))
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
    """nnU-Net's statistics of the float32 sample (numpy's float32 mean and std, as its fingerprint, or
    float64's where those overflow: `normalize.mean_std`)."""
    if values.size == 0:  # no foreground anywhere: neutral statistics rather than NaN
        return {k: 0.0 for k in ("mean", "std", "median", "p00_5", "p99_5", "min", "max")} | {"std": 1.0}
    p00_5, median, p99_5 = np.percentile(values, (0.5, 50.0, 99.5))
    mean, std = mean_std(values)
    return {
        "mean": mean,
        "std": std,
        "median": float(median),
        "p00_5": float(p00_5),
        "p99_5": float(p99_5),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
    }


def fingerprint(
    task: TaskSpec,
    cases: list[Case],
    workers: int | None = None,
    progress: bool = False,
    pool: Executor | None = None,
) -> dict:
    """Fingerprint of `cases` (read in parallel, in `pool` when given; as many at once as fit in memory)."""
    per_case_samples = int(FOREGROUND_VOXELS_FOR_STATS // max(len(cases), 1))
    sampled = tuple(c for c in range(task.num_channels) if task.is_ct_channel(c))
    read = partial(case_fingerprint, num_samples=per_case_samples, sampled=sampled, task=task)
    running = pool_size(pool, workers, len(cases))
    # the float32 sample of every sampled channel, gathered here from the workers
    gathered = 4 * per_case_samples * len(cases) * len(sampled)
    sitk_module()  # mapped before `usable_memory` counts what the process holds: a worker reads through it
    at_once = reads_at_once(FINGERPRINT, stored_cases(cases), running, usable_memory(),
                            samples=per_case_samples * len(sampled), held=gathered)
    limited = f", {at_once} at a time (memory)" if at_once < running else ""
    per_case = parallel_map(read, cases, workers, progress, f"fingerprint{limited}", pool, at_once)
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
        modality = task.modalities[c] if c < len(task.modalities) else str(c)
        if c not in sampled:
            intensity.append({"channel": c, "modality": modality, "sampled": False})
            continue
        sample = np.concatenate([case["samples"][c] for case in per_case]).astype(np.float32, copy=False)
        intensity.append({"channel": c, "modality": modality, "sampled": True, **_intensity_stats(sample)})
    return {
        "format": FINGERPRINT_FORMAT,
        "task": task.name,
        "num_cases": len(per_case),
        "cases": [c["case"] for c in per_case],
        "shapes_zyx": [c["shape_zyx"] for c in per_case],
        "spacings_zyx": [c["spacing_zyx"] for c in per_case],
        "cropped_shapes_zyx": [c["cropped_shape_zyx"] for c in per_case],
        "foreground_intensity": intensity,
        "class_frequencies": classes,
    }
