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
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medseg_bench.data.msd import Case
from medseg_bench.data.normalize import channel_schemes
from medseg_bench.data.plan_fields import PLAN_FIELD_CHECKS, json_kind
from medseg_bench.data.resample import ANISOTROPY_THRESHOLD, target_shape
from medseg_bench.errors import DataError
from medseg_bench.files import load_json_object, parse_json, write_json_atomic
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
            raise DataError(f"{source}: invalid plan (not a JSON object but {json_kind(data)})")
        per_channel = "channel_normalization" in data or data.get("normalization") == "per_channel"
        names = [f.name for f in fields(cls) if f.name != "channel_normalization" or per_channel]
        if set(data) != set(names):
            raise DataError(
                f"{source}: not a plan (missing: {sorted(set(names) - set(data))}, "
                f"unknown: {sorted(set(data) - set(names))})"
            )
        try:
            values = {name: PLAN_FIELD_CHECKS[name](name, data[name]) for name in names}
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


assert set(PLAN_FIELD_CHECKS) == {f.name for f in fields(Plan)}


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


def read_plan(path: Path) -> Plan:
    try:
        data = parse_json(path.read_text())
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
    from medseg_bench.data.fingerprint import fingerprint

    fp = saved_fingerprint(cases, folder, any_format)
    if fp is not None:
        return fp
    fp = fingerprint(task, cases, workers, progress, pool)
    write_json_atomic(folder / "fingerprint.json", fp)
    return fp


def saved_fingerprint(cases: list[Case], folder: Path, any_format: bool = False) -> dict | None:
    """`fingerprint.json` in `folder` where it covers exactly `cases` in this format (`any_format`: in any);
    None where the fingerprint is to be computed (no file, one unreadable or damaged, of other cases or of an
    older format): `load_or_make_fingerprint` computes it then, and `sweep --dry-run` checks its memory."""
    from medseg_bench.data.fingerprint import FINGERPRINT_FORMAT

    path = folder / "fingerprint.json"
    if not path.is_file():
        return None
    fp = load_json_object(path)[0] or {}  # unreadable or damaged: computed again
    if fp.get("cases") == [c.case_id for c in cases] and (
            fp.get("format") == FINGERPRINT_FORMAT or any_format and "foreground_intensity" in fp):
        return fp
    return None


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
        return plan_for_task(read_plan(plan_path), task, plan_path)
    fp = load_or_make_fingerprint(task, cases, folder, workers, progress, pool)
    _check_foreground(task, fp, cases)
    plan = make_plan(task, fp, budget or default_budget())
    if plan_path.is_file():  # keep the user's preprocessing choices, re-size patches and batches only
        old = plan_for_task(read_plan(plan_path), task, plan_path)
        plan = Plan.from_dict(
            old.to_dict()
            | {k: getattr(plan, k) for k in ("budget", "patch_3d", "batch_3d", "patch_2d", "batch_2d")}
        )
    write_json_atomic(plan_path, plan.to_dict())
    return plan


def plan_for_task(plan: Plan, task: TaskSpec, path: Path) -> Plan:
    """`plan`, or DataError when it cannot be `task`'s (an edited or copied plan.json): what a sweep and
    `plan` refuse, so `sweep --dry-run` too."""
    if plan.task != task.name:
        raise DataError(f"{path}: a plan of task {plan.task!r}, not of {task.name}: restore its \"task\", or "
                        "delete the file to plan the task again")
    channels = plan.channel_normalization
    if channels is not None and len(channels) != task.num_channels:
        entries = f"{len(channels)} entr{'y' if len(channels) == 1 else 'ies'}"
        raise DataError(f"{path}: channel_normalization has {entries}, but {task.name} has "
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
        of = f"{len(cases)} case{'' if len(cases) == 1 else 's'}"
        values = ", ".join(f"{v} (in {n} of {of})" for v, n in sorted(held.items()))
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
        holds = ("its one training case holds no" if len(cases) == 1
                 else f"none of the {len(cases)} training cases holds a")
        raise DataError(f"{cases[0].label.parent}: {holds} foreground label ({names}): nothing to learn"
                        + (", and no foreground to take CT intensity statistics from" if ct else ""))


def _written_by_this_version(path: Path) -> bool:
    """False only for a plan of the earliest development versions, recognised by its exact set of keys (no
    target spacing, no budget); any other plan, edited by hand or not, is left for `read_plan` to check."""
    try:
        data = parse_json(path.read_text())
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
