"""Fingerprint -> plan, as nnU-Net derives its plans; `plan.json` in the task's preprocessed folder.

The plan fixes what the cache holds (normalisation, target spacing, crop to the non-zero region; hashed into
the cache folder's name) and what training uses by default (2D and 3D patch and batch sizes, sized for a
memory budget: a CPU default or `gpu_budget(GB)`). A person may edit `plan.json`: a changed patch or batch
size is used by the next runs (runs that set `patch_size` / `batch_size` in their spec override it anyway); a
changed target spacing or normalisation builds a new cache next to the old one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medseg_bench.checks import shown
from medseg_bench.data.io import load_json_object, write_json_atomic
from medseg_bench.data.msd import Case
from medseg_bench.data.resample import ANISOTROPY_THRESHOLD, target_shape
from medseg_bench.errors import DataError
from medseg_bench.spec import TaskSpec

T = TypeVar("T")

# Bump when the cached arrays of the same plan change (it is part of the cache folder's hash).
# 6: resampled label maps as nnU-Net's to the voxel: float64 scores, an exact tie to the nearest voxel's
#    label, background outside the non-zero mask a label of its own while resampling (nnU-Net's -1); a
#    separate (thick) axis taken nearest at nnU-Net's coordinates (6 slices to 7 repeated slice 2 where
#    nnU-Net repeats slice 3); images resampled with skimage's interpolator in float64 (was scipy's
#    affine_transform: the last bit); a training case's foreground counted into the non-zero mask of a
#    z-score (nnU-Net's `seg >= 0`).
# 5: spline-resampled images clipped to their input range, per slice when the thick axis goes on its own
#    (nnU-Net's skimage `resize(clip=True)`); resampled shapes as nnU-Net's `compute_new_shape` rounds them.
# 4: no axis resampled on its own when two share the coarsest spacing.
# 3: the crop box is the image's alone (2 also covered label voxels).
CACHE_FORMAT = 6
# A batch may hold at most this fraction of all the dataset's voxels (nnU-Net's rule against overfitting).
MAX_DATASET_FRACTION_PER_BATCH = 0.05
MIN_BATCH = 2
PATCH_MULTIPLE_3D = 8  # three poolings
PATCH_MULTIPLE_2D = 32  # five poolings (smp encoders)
# nnU-Net fits 3D patches of 128^3 with batch 2 (4.2 M voxels) and 2D patches of 192x160 with batch ~105
# (3.2 M pixels) into 8 GB; per GB that is:
GPU_VOXELS_PER_GB_3D = 4 * 128**3 // 8
GPU_PIXELS_PER_GB_2D = 400_000


@dataclass(frozen=True)
class Budget:
    """How much one training batch may hold: voxels (3D) and pixels (2D) per batch, and patch caps."""

    name: str
    batch_voxels_3d: int
    batch_pixels_2d: int
    max_patch_3d: int
    max_patch_2d: int
    max_batch_3d: int
    max_batch_2d: int


# Calibrated so that one step takes well under a second on 2 CPU cores
# (Hippocampus: patch 40x56x40 batch 4, patch 64x64 batch 32).
CPU_BUDGET = Budget("cpu", 4 * 40 * 56 * 40, 32 * 64 * 64, 128, 256, 8, 64)


def gpu_budget(memory_gb: float) -> Budget:
    """The budget of a GPU with `memory_gb` GB (mixed precision, nnU-Net-sized networks)."""
    if not 0 < memory_gb < float("inf"):  # NaN too; inf would overflow the voxel counts
        raise DataError(f"GPU memory must be a positive finite number of GB, not {memory_gb}")
    return Budget(
        f"gpu-{memory_gb:g}GB",
        int(memory_gb * GPU_VOXELS_PER_GB_3D),
        int(memory_gb * GPU_PIXELS_PER_GB_2D),
        256,
        1024,
        256,
        1024,
    )


@dataclass(frozen=True)
class Plan:
    task: str
    normalization: str  # "zscore" (per case) | "ct" (clip + z-score with dataset foreground statistics)
    ct_clip: tuple[float, float] | None
    ct_mean: float | None
    ct_std: float | None
    median_spacing: tuple[float, float, float]  # original, (z, y, x)
    target_spacing: tuple[float, float, float]  # of the cache, (z, y, x)
    crop_to_nonzero: bool
    median_shape: tuple[int, int, int]  # in the cache: after cropping and resampling
    budget: str  # what the patch and batch sizes were sized for: "cpu" or "gpu-<N>GB"
    patch_3d: tuple[int, int, int]
    batch_3d: int
    patch_2d: tuple[int, int]
    batch_2d: int
    # normalization "per_channel" (plans made since pipeline version 5): one entry per channel, either
    # {"scheme": "ct", "clip": [low, high], "mean": m, "std": s} or {"scheme": "zscore", "nonzero_mask": b}.
    # Older plans have none: "zscore"/"ct" then applies to every channel as it did (see `normalize`).
    channel_normalization: tuple[dict[str, Any], ...] | None = None

    @property
    def preprocessing_hash(self) -> str:
        """Hash of what changes cached arrays (not patch/batch sizes); an older plan keeps its hash."""
        keys = ("task", "normalization", "ct_clip", "ct_mean", "ct_std", "target_spacing", "crop_to_nonzero")
        key = {k: getattr(self, k) for k in keys} | {"cache_format": CACHE_FORMAT}
        if self.channel_normalization is not None:
            key["channel_normalization"] = list(self.channel_normalization)
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The plan's fields that set the cached arrays (as JSON holds them): what a run trained on."""
        return preprocessing_of(self.to_dict())

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.channel_normalization is None:
            del data["channel_normalization"]  # an older plan is written back as it was read
        return data

    @classmethod
    def from_dict(cls, data: object, source: Path | str = "plan") -> Plan:
        """A plan from its JSON; every field's type and value is checked (DataError naming `source`)."""
        if not isinstance(data, dict):
            raise DataError(f"{source}: invalid plan (not a JSON object but {_json_kind(data)})")
        per_channel = "channel_normalization" in data or data.get("normalization") == "per_channel"
        names = [f.name for f in fields(cls) if f.name != "channel_normalization" or per_channel]
        if set(data) != set(names):
            raise DataError(
                f"{source}: not a plan (missing: {sorted(set(names) - set(data))}, "
                f"unknown: {sorted(set(data) - set(names))})"
            )
        try:
            values = {name: _PLAN_FIELD_CHECKS[name](name, data[name]) for name in names}
        except ValueError as exc:
            raise DataError(f"{source}: invalid plan ({exc})") from None
        if values["normalization"] == "ct" and None in (
            values["ct_clip"],
            values["ct_mean"],
            values["ct_std"],
        ):
            raise DataError(f"{source}: normalization 'ct' needs ct_clip, ct_mean and ct_std")
        if values["normalization"] != "per_channel" and "channel_normalization" in values:
            raise DataError(f"{source}: channel_normalization goes with normalization 'per_channel', not "
                            f"{values['normalization']!r}")
        if values["normalization"] == "per_channel" and (values["ct_clip"], values["ct_mean"],
                                                         values["ct_std"]) != (None, None, None):
            raise DataError(f"{source}: normalization 'per_channel' keeps its CT statistics in "
                            "channel_normalization; set ct_clip, ct_mean and ct_std to null")
        return cls(**values)


# The plan fields that set the cached arrays (a changed one builds a new cache), as `preprocessing_hash`.
PREPROCESSING_FIELDS = ("target_spacing", "crop_to_nonzero", "normalization", "ct_clip", "ct_mean", "ct_std",
                        "channel_normalization")


def preprocessing_of(plan: dict[str, Any]) -> dict[str, Any]:
    """`PREPROCESSING_FIELDS` of a plan's JSON (a run's `summary.json` holds its plan), as JSON holds them."""
    return json.loads(json.dumps({key: plan.get(key) for key in PREPROCESSING_FIELDS}))


def preprocessing_change(then: dict[str, Any], now: dict[str, Any]) -> str:
    """How the preprocessing `now` differs from `then` (both `preprocessing_of`), for one line; "" if not."""
    changed = [key for key in PREPROCESSING_FIELDS if then.get(key) != now.get(key)]
    if changed == ["target_spacing"]:
        old, new = ("x".join(f"{v:g}" for v in plan["target_spacing"] or []) for plan in (then, now))
        return f"target spacing {old} mm, plan.json now {new} mm"
    return f"{', '.join(changed)} other than plan.json's now" if changed else ""


def _json_kind(value: object) -> str:
    kinds = ((list, "a list"), (str, "a string"), (bool, "a boolean"), (int, "a number"), (float, "a number"))
    return next((kind for cls, kind in kinds if isinstance(value, cls)), "null" if value is None else "?")


def _whole(value: object) -> int | None:
    """`value` as an int when it is a whole number (2 or 2.0, not 2.7, True or "2"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if np.isfinite(value) else None


def _sequence(key: str, value: object, length: int) -> list[object]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"{key} needs {length} values, not {shown(value)}")
    return list(value)


def _check_text(choices: tuple[str, ...] | None = None) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or (choices is not None and value not in choices):
            expected = " or ".join(repr(c) for c in choices) if choices else "a string"
            raise ValueError(f"{key} must be {expected}, not {shown(value)}")
        return value

    return check


def _check_flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {shown(value)}")
    return value


def _check_spacing(key: str, value: object) -> tuple[float, ...]:
    numbers = [_finite(v) for v in _sequence(key, value, 3)]
    if any(v is None or v <= 0 for v in numbers):
        raise ValueError(f"{key} must be positive finite numbers (mm), not {shown(value)}")
    return tuple(v for v in numbers if v is not None)


MAX_SIZE = 2**31 - 1  # a patch side or batch past it is a typo (1e300 is a whole number too)


def _check_sizes(length: int) -> Callable[[str, object], tuple[int, ...]]:
    def check(key: str, value: object) -> tuple[int, ...]:
        numbers = [_whole(v) for v in _sequence(key, value, length)]
        if any(v is None or not 1 <= v <= MAX_SIZE for v in numbers):
            raise ValueError(f"{key} must be positive whole numbers up to {MAX_SIZE}, not {shown(value)}")
        return tuple(v for v in numbers if v is not None)

    return check


def _check_batch(key: str, value: object) -> int:
    number = _whole(value)
    if number is None:
        raise ValueError(f"{key} must be a whole number, not {shown(value)}")
    if not 1 <= number <= MAX_SIZE:
        raise ValueError(f"{key} must be at least 1 and at most {MAX_SIZE}, not {shown(value)}")
    return number


def _check_ct_clip(key: str, value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (_finite(v) for v in _sequence(key, value, 2))
    if low is None or high is None or low > high:
        raise ValueError(f"{key} must be two finite numbers, low then high, not {shown(value)}")
    return low, high


def _check_ct_stat(positive: bool) -> Callable[[str, object], float | None]:
    def check(key: str, value: object) -> float | None:
        if value is None:
            return None
        number = _finite(value)
        if number is None or (positive and number <= 0):
            kind = "a positive finite number" if positive else "a finite number"
            raise ValueError(f"{key} must be {kind}, not {shown(value)}")
        return number

    return check


def _check_channels(key: str, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{key} needs one entry per channel, not {shown(value)}")
    entries = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict) or entry.get("scheme") not in ("ct", "zscore"):
            raise ValueError(f'{where} must be {{"scheme": "ct", ...}} or {{"scheme": "zscore", ...}}, '
                             f"not {shown(entry)}")
        if entry["scheme"] == "zscore":
            if set(entry) != {"scheme", "nonzero_mask"}:
                raise ValueError(f'{where}: a z-score channel has "scheme" and "nonzero_mask", not '
                                 f"{sorted(entry)}")
            entries.append({"scheme": "zscore", "nonzero_mask": _check_flag(f"{where}.nonzero_mask",
                                                                            entry["nonzero_mask"])})
            continue
        if set(entry) != {"scheme", "clip", "mean", "std"}:
            raise ValueError(f'{where}: a CT channel has "scheme", "clip", "mean" and "std", not '
                             f"{sorted(entry)}")
        clip = _check_ct_clip(f"{where}.clip", entry["clip"])
        mean = _check_ct_stat(positive=False)(f"{where}.mean", entry["mean"])
        std = _check_ct_stat(positive=True)(f"{where}.std", entry["std"])
        if clip is None or mean is None or std is None:
            raise ValueError(f"{where}: a CT channel needs clip, mean and std")
        entries.append({"scheme": "ct", "clip": list(clip), "mean": mean, "std": std})
    return tuple(entries)


_PLAN_FIELD_CHECKS: dict[str, Callable[[str, object], Any]] = {
    "task": _check_text(),
    "normalization": _check_text(("per_channel", "zscore", "ct")),
    "ct_clip": _check_ct_clip,
    "ct_mean": _check_ct_stat(positive=False),
    "ct_std": _check_ct_stat(positive=True),
    "median_spacing": _check_spacing,
    "target_spacing": _check_spacing,
    "crop_to_nonzero": _check_flag,
    "median_shape": _check_sizes(3),
    "budget": _check_text(),
    "patch_3d": _check_sizes(3),
    "batch_3d": _check_batch,
    "patch_2d": _check_sizes(2),
    "batch_2d": _check_batch,
    "channel_normalization": _check_channels,
}
assert set(_PLAN_FIELD_CHECKS) == {f.name for f in fields(Plan)}


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[float, float, float]:
    """Median spacing; for thick slices the 10th percentile along the low-resolution axis (nnU-Net's rule).

    The rule applies when that axis is over 3x coarser than the others and has over 3x fewer voxels (median
    shape), so that resampling to the median does not blow up the in-plane resolution loss.
    """
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(3) if a != worst]
    coarse_spacing = target[worst] > ANISOTROPY_THRESHOLD * max(target[others])
    few_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
    if coarse_spacing and few_voxels:
        spacing = float(np.percentile(spacings[:, worst], 10))
        if spacing < max(target[others]):  # never finer than the in-plane spacing
            spacing = max(float(max(target[others])), spacing) + 1e-5
        target[worst] = spacing
    return tuple(float(v) for v in target)  # type: ignore[return-value]


def _round_up(value: float, multiple: int, cap: int) -> int:
    return int(min(cap, max(multiple, int(np.ceil(value / multiple)) * multiple)))


def fit_patch_and_batch(
    median_shape: tuple[int, ...],
    multiple: int,
    max_patch: int,
    batch_voxels: int,
    max_batch: int,
    dataset_voxels: int,
) -> tuple[tuple[int, ...], int]:
    """Patch: the median shape rounded up, shrunk until `MIN_BATCH` patches fit `batch_voxels`, always along
    the axis where the patch is largest relative to the median shape (nnU-Net). Batch: what fits, capped."""
    patch = [_round_up(s, multiple, max_patch) for s in median_shape]
    while MIN_BATCH * int(np.prod(patch)) > batch_voxels:
        shrinkable = [a for a in range(len(patch)) if patch[a] > multiple]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: (patch[a] / max(median_shape[a], 1), patch[a]))
        patch[axis] -= multiple
    voxels = int(np.prod(patch))
    batch = min(
        # nnU-Net rounds the 5 % cap (`bs_corresponding_to_5_percent`; a plan.json written when it was
        # floored keeps its batch)
        batch_voxels // voxels, max_batch, round(MAX_DATASET_FRACTION_PER_BATCH * dataset_voxels / voxels)
    )
    return tuple(patch), max(MIN_BATCH, batch)


def slice_axis(spacing_zyx: Sequence[float]) -> int:
    """The array axis 2D models slice along: the coarsest (nnU-Net transposes it first), the first on ties.

    For MSD data (thick slices stored along z) it is axis 0; a volume stored with its thick axis elsewhere is
    still sliced in plane, not across its slices.
    """
    return int(np.argmax(np.asarray(spacing_zyx, dtype=float)))


def slice_target_spacing(target_zyx: Sequence[float], spacing_zyx: Sequence[float]) -> tuple[float, ...]:
    """What a case of `spacing_zyx` is resampled to for a 2D run that keeps its slices (nnU-Net's 2d
    configuration): the plan's `target_zyx` in plane, the case's own spacing along the slice axis."""
    axis = slice_axis(target_zyx)
    return tuple(float(spacing_zyx[a] if a == axis else t) for a, t in enumerate(target_zyx))


def in_plane(values: Sequence[T], axis: int) -> tuple[T, ...]:
    """`values` (one per spatial axis) without the slicing axis: a 2D model's view of a shape or spacing."""
    return tuple(v for i, v in enumerate(values) if i != axis)


def model_spacing(spacing_zyx: Sequence[float], dims: str) -> tuple[float, ...]:
    """The spacing of what a model sees: the volume's (3D), or its slices' in-plane spacing (2D)."""
    spacing = tuple(float(v) for v in spacing_zyx)
    return spacing if dims == "3d" else in_plane(spacing, slice_axis(spacing))


def make_plan(task: TaskSpec, fp: dict, budget: Budget = CPU_BUDGET) -> Plan:
    spacings = np.array(fp["spacings_zyx"], dtype=float)
    cropped = np.array(fp["cropped_shapes_zyx"], dtype=float)
    target = target_spacing(spacings, cropped)
    resampled = np.array([target_shape(s, sp, target) for s, sp in zip(cropped, spacings, strict=True)])
    median_shape = tuple(int(v) for v in np.median(resampled, axis=0))
    dataset_voxels = int(np.prod(resampled, axis=1).sum())
    patch_3d, batch_3d = fit_patch_and_batch(
        median_shape,
        PATCH_MULTIPLE_3D,
        budget.max_patch_3d,
        budget.batch_voxels_3d,
        budget.max_batch_3d,
        dataset_voxels,
    )
    patch_2d, batch_2d = fit_patch_and_batch(
        in_plane(median_shape, slice_axis(target)),
        PATCH_MULTIPLE_2D,
        budget.max_patch_2d,
        budget.batch_pixels_2d,
        budget.max_batch_2d,
        dataset_voxels,
    )
    return Plan(
        task=task.name,
        normalization="per_channel",
        ct_clip=None,
        ct_mean=None,
        ct_std=None,
        channel_normalization=channel_schemes(task, fp),
        median_spacing=tuple(float(v) for v in np.median(spacings, axis=0)),  # type: ignore[arg-type]
        target_spacing=target,
        crop_to_nonzero=True,
        median_shape=median_shape,  # type: ignore[arg-type]
        budget=budget.name,
        patch_3d=patch_3d,  # type: ignore[arg-type]
        batch_3d=batch_3d,
        patch_2d=patch_2d,  # type: ignore[arg-type]
        batch_2d=batch_2d,
    )


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
        mean, std = float(values.mean()), float(values.std())
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
        mean, std = float(values.mean()), float(values.std())
        out[c] = (channel - mean) / max(std, 1e-8)
        if inside is not None:
            out[c][~inside] = 0.0
    return out


def read_plan(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise DataError(f"{path}: unreadable plan ({exc})") from None
    return Plan.from_dict(data, path)


def load_or_make_fingerprint(
    task: TaskSpec,
    cases: list[Case],
    folder: Path,
    workers: int | None = None,
    progress: bool = False,
    pool: Executor | None = None,
    any_format: bool = False,
) -> dict:
    """`fingerprint.json` in `folder` if it covers exactly `cases` in this format (`any_format`: in any, e.g.
    to show the one an existing plan was made from); else computed and written."""
    from medseg_bench.data.fingerprint import FINGERPRINT_FORMAT, fingerprint

    path = folder / "fingerprint.json"
    if path.is_file():
        fp = load_json_object(path)[0] or {}  # unreadable or damaged: computed again
        if fp.get("cases") == [c.case_id for c in cases] and (
                fp.get("format") == FINGERPRINT_FORMAT or any_format and "foreground_intensity" in fp):
            return fp
    fp = fingerprint(task, cases, workers, progress, pool)
    write_json_atomic(path, fp)
    return fp


def load_or_make_plan(
    task: TaskSpec,
    cases: list[Case],
    folder: Path,
    budget: Budget | None = None,
    workers: int | None = None,
    progress: bool = False,
    pool: Executor | None = None,
) -> Plan:
    """Read `plan.json` from `folder`, or compute fingerprint and plan and write both.

    With a `budget`, an existing plan is re-sized for it (preprocessing unchanged) and rewritten.
    """
    plan_path = folder / "plan.json"
    if plan_path.is_file() and not _written_by_this_version(plan_path):
        plan_path.unlink()  # a plan of the earliest development versions (no target spacing): derived again
    if plan_path.is_file() and budget is None:
        return _for_task(read_plan(plan_path), task, plan_path)
    fp = load_or_make_fingerprint(task, cases, folder, workers, progress, pool)
    _check_foreground(task, fp, cases)
    plan = make_plan(task, fp, budget or default_budget())
    if plan_path.is_file():  # keep the user's preprocessing choices, re-size patches and batches only
        old = _for_task(read_plan(plan_path), task, plan_path)
        plan = Plan.from_dict(
            old.to_dict()
            | {k: getattr(plan, k) for k in ("budget", "patch_3d", "batch_3d", "patch_2d", "batch_2d")}
        )
    write_json_atomic(plan_path, plan.to_dict())
    return plan


def _for_task(plan: Plan, task: TaskSpec, path: Path) -> Plan:
    """`plan`, or DataError when it cannot be `task`'s (an edited or copied plan.json)."""
    if plan.task != task.name:
        raise DataError(f"{path}: a plan of task {plan.task!r}, not of {task.name}: restore its \"task\", or "
                        "delete the file to plan the task again")
    channels = plan.channel_normalization
    if channels is not None and len(channels) != task.num_channels:
        raise DataError(f"{path}: channel_normalization has {len(channels)} entries, but {task.name} has "
                        f"{task.num_channels} channel(s) ({', '.join(task.modalities)}): one entry per "
                        "channel")
    return plan


def check_declared_labels(task: TaskSpec, cases: list[Case], folder: Path) -> None:
    """DataError naming the task file when the label maps hold a value it no longer declares (its labels
    edited since the fingerprint, plan and cache were made: the cached label maps would index past the
    network's classes), as `fingerprint.json` of these `cases` records them. A value it records is one
    validation and the fingerprint read under the task file of that time."""
    fp = load_json_object(folder / "fingerprint.json")[0] or {}
    classes = fp.get("class_frequencies")
    if fp.get("cases") != [c.case_id for c in cases] or not isinstance(classes, dict):
        return  # computed again (or never read): each case's label is checked as it is read
    present = {value: entry.get("cases_present") for value, entry in classes.items()
               if isinstance(entry, dict)}
    held = {int(value): n for value, n in present.items()
            if value.isdigit() and int(value) not in task.labels and isinstance(n, int) and n > 0}
    if held:
        values = ", ".join(f"{v} (in {n} of {len(cases)} cases)" for v, n in sorted(held.items()))
        labels = ", ".join(str(k) for k in sorted(task.labels))
        raise DataError(f"{task.source_file or task.name}: label value(s) {values} of {task.name}'s "
                        f"label maps not among its labels ({labels}), edited since the task was "
                        "preprocessed: declare every value the label maps hold")


def _check_foreground(task: TaskSpec, fp: dict, cases: list[Case]) -> None:
    """DataError when no training case holds a foreground label: nothing to learn, and a CT channel's
    statistics (clip, mean, std) would be made up (clip to [0, 0])."""
    classes = fp.get("class_frequencies", {})
    if cases and not any(classes.get(str(v), {}).get("cases_present", 0) for v in task.foreground_labels):
        names = ", ".join(f"{v} {task.labels[v]}" for v in task.foreground_labels)
        ct = any(map(task.is_ct_channel, range(task.num_channels)))
        raise DataError(f"{cases[0].label.parent}: none of the {len(cases)} training cases holds a "
                        f"foreground label ({names}): nothing to learn"
                        + (", and no foreground to take CT intensity statistics from" if ct else ""))


def _written_by_this_version(path: Path) -> bool:
    """False only for a plan of the earliest development versions, recognised by its exact set of keys (no
    target spacing, no budget); any other plan, edited by hand or not, is left for `read_plan` to check."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return True  # let read_plan name the problem
    return not isinstance(data, dict) or set(data) != _FIRST_PLAN_KEYS


# The keys of `plan.json` before fingerprinting (pipeline version 1), whose plan is derived again.
_FIRST_PLAN_KEYS = {"task", "normalization", "ct_clip", "ct_mean", "ct_std", "median_shape", "median_spacing",
                    "patch_3d", "batch_3d", "patch_2d", "batch_2d"}


def default_budget() -> Budget:
    """8 GB on a machine with an NVIDIA GPU, else the CPU budget.

    Asks torch only when it is already imported (importing it costs seconds); else looks for the driver.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        has_gpu = bool(torch.cuda.is_available())
    else:
        gpus = Path("/proc/driver/nvidia/gpus")
        has_gpu = gpus.is_dir() and any(gpus.iterdir())
    return gpu_budget(8) if has_gpu else CPU_BUDGET
