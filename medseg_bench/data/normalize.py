"""Intensity normalisation of a case's channels as its plan says (nnU-Net v2's schemes): the scheme of each
channel is decided once per dataset when planning (`channel_schemes`), applied per case when caching or
predicting (`normalize`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medseg_bench.errors import DataError
from medseg_bench.spec import TaskSpec

if TYPE_CHECKING:
    from medseg_bench.data.plan import Plan


def channel_schemes(task: TaskSpec, fp: dict) -> tuple[dict[str, Any], ...]:
    """nnU-Net v2's normalisation per channel: a channel named CT (or the one channel of a CT task) is clipped
    to its foreground 0.5-99.5 percentiles over the training set and z-scored with its foreground mean and
    std; any other channel is z-scored per case, within the non-zero mask when cropping to it shrinks the
    median case below 3/4 of its size (skull-stripped MRI), as nnU-Net decides it once per dataset."""
    schemes: list[dict[str, Any]] = []
    for index in range(task.num_channels):
        if task.is_ct_channel(index):
            stats = fp["foreground_intensity"][index]
            schemes.append({"scheme": "ct", "clip": [stats["p00_5"], stats["p99_5"]], "mean": stats["mean"],
                            "std": max(stats["std"], 1e-6)})
        else:
            shapes = np.array(fp["shapes_zyx"], dtype=float)
            cropped = np.array(fp["cropped_shapes_zyx"], dtype=float)
            use_mask = bool(np.median(np.prod(cropped, axis=1) / np.prod(shapes, axis=1)) < 0.75)
            schemes.append({"scheme": "zscore", "nonzero_mask": use_mask})
    return tuple(schemes)


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of float32 intensities as numpy computes them in float32 (nnU-Net's
    numbers), or in float64 where those overflow: intensities near 1e30 (squares beyond float32) gave an
    infinite std, and every voxel normalised to 0 (a network trained on blank images, without a word)."""
    with np.errstate(over="ignore"):
        mean, std = float(values.mean()), float(values.std())
    if not (np.isfinite(mean) and np.isfinite(std)):
        wide = values.astype(np.float64)
        mean, std = float(wide.mean()), float(wide.std())
    return mean, std


def nonzero_mask(image: np.ndarray) -> np.ndarray:
    """Voxels non-zero in any channel of a (C, Z, Y, X) image, holes filled (nnU-Net's
    `create_nonzero_mask`)."""
    from scipy.ndimage import binary_fill_holes

    return np.asarray(binary_fill_holes(np.any(image != 0, axis=0)), dtype=bool)


def normalize(image: np.ndarray, plan: Plan, label: np.ndarray | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise a (C, Z, Y, X) image as the plan says; returns float32. `mask`: the image's `nonzero_mask`
    when the caller has it already (a "per_channel" plan computes it otherwise).

    A "per_channel" plan normalises each channel by its scheme (`channel_schemes`); the caller has cropped the
    image first, so the statistics are those of the cropped case, as in nnU-Net. A channel z-scored within
    the non-zero mask takes, with the case's `label`, its foreground voxels into the mask too (nnU-Net's
    `seg >= 0`: a training case's labels where the image is zero; a case to predict has none). Older plans
    keep their rule: every channel CT-normalised ("ct"), or z-scored per case ("zscore") over the whole
    uncropped image, or over its non-zero voxels when they are under 3/4 of it, decided case by case.
    """
    if plan.normalization == "per_channel":
        return _normalize_channels(image, plan, label, mask)
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
        mean, std = mean_std(values)
        out[c] = (channel - mean) / max(std, 1e-8)
        if use_mask:
            out[c][~nonzero] = 0.0
    return out


def _normalize_channels(image: np.ndarray, plan: Plan, label: np.ndarray | None,
                        mask: np.ndarray | None) -> np.ndarray:
    schemes = plan.channel_normalization or ()
    if len(schemes) != image.shape[0]:
        raise DataError(f"the plan of {plan.task} normalises {len(schemes)} channel(s); this image has "
                        f"{image.shape[0]}")
    out = np.empty_like(image, dtype=np.float32)
    if any(s.get("nonzero_mask") for s in schemes):
        mask = nonzero_mask(image) if mask is None else mask
        if label is not None:
            mask = mask | (label != 0)  # a new array: the caller's mask is not changed
    else:
        mask = None
    for c, scheme in enumerate(schemes):
        channel = image[c].astype(np.float32, copy=False)
        if scheme["scheme"] == "ct":
            out[c] = (np.clip(channel, *scheme["clip"]) - scheme["mean"]) / scheme["std"]
            continue
        inside = mask if scheme["nonzero_mask"] and mask is not None and mask.any() else None
        values = channel[inside] if inside is not None else channel
        mean, std = mean_std(values)
        out[c] = (channel - mean) / max(std, 1e-8)
        if inside is not None:
            out[c][~inside] = 0.0
    return out
