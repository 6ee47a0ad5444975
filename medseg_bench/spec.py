"""Specs are data: a task spec (from tasks/<Task>.yaml) and a run spec (one point of a sweep).

Variants are fields of `RunSpec`, never subclasses. The run id is a stable hash of every field that can
change a result; where results are written is not part of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medseg_bench.checks import FLOAT32_MAX, FLOAT32_TINY, MAX_COUNT, MAX_SIZE
from medseg_bench.errors import UsageError
from medseg_bench.registry import choice_hint
from medseg_bench.task_fields import REQUIRED_TASK_KEYS, TASK_KEY_CHECKS, is_int, region_name_problem

# Bump when a change to the pipeline changes results for the same spec (old runs then get new ids).
# 3: evaluation uses the final weights (version 2 evaluated last.ckpt, which Lightning only wrote when
#    validation pseudo-Dice improved: the best epoch on the held-out fold); dice_focal's focal term is the
#    softmax focal loss; class weights count by their ratios only.
# 4: a case's crop box is its image's non-zero region alone (version 3 widened it to cover label voxels where
#    the image is zero, so a held-out case's score depended on its reference; no Task04_Hippocampus case);
#    2D runs slice along the coarsest axis (was always the first); HD95 reaches an exact 95 % share; a
#    held-out one-slice volume is scored in 2D; class weights are recorded scaled (smallest positive 1), so
#    the same ratios are the same run id; 3D patches of thick-slice data are augmented in plane only; a run
#    resumed with DataLoader workers draws its first resumed epoch's samples (it re-drew the first epoch's).
# 5: training patches are placed as nnU-Net places them: inside the volume along every axis it is at least as
#    large as the patch, the volume wholly inside the patch (at a random offset) along a smaller one (centres
#    anywhere left 37 % of a 64x96x96 patch of a 128x160x160 volume as padding on average, and 63 % on
#    Task04_Hippocampus); the last third of every batch is centred on foreground (was a draw per sample: 20 %
#    of batches of 4 had none).
#    New plans normalise per channel as nnU-Net does: crop first, then z-score with the cropped case's
#    statistics, inside the non-zero mask when the dataset's median crop is under 3/4 of a case (decided once,
#    not case by case); CT statistics only for channels named CT (`data.normalize.channel_schemes`). A plan
#    made before keeps its normalisation. No effect on Task04_Hippocampus's arrays.
# 6: rotation, scaling and elastic deformation read the volume around the training patch, as nnU-Net's
#    spatial transform does (they resampled the patch alone, so a rotated patch's corners were zeros, and a
#    patch scaled down was framed by zeros). Runs without augmentation train exactly as in version 5.
# 7: the nnunet preset's Gaussian noise as batchgeneratorsv2 adds it: the drawn `noise_variance` U(0, 0.1) is
#    the standard deviation (it was its square root: noise 4x as strong on average), one field for every
#    channel (was one per channel). heavy's elastic deformation takes nnU-Net v1's ranges (alpha U(0, 900) in
#    3D, U(0, 200) in 2D and in plane; sigma U(9, 13)): it was alpha U(20, 60), sigma U(6, 9), a field of
#    0.24 voxels std in 3D against 1.7. dynunet takes nnU-Net v2's topology (`get_pool_and_conv_props`: no
#    cap of 5 poolings, spacing ratios strictly under 2, the finest spacing among poolable axes) and a bias on
#    its transposed convolutions; unchanged on Task04_Hippocampus but for that bias. Runs of other
#    architectures without augmentation or with light train exactly as in version 6.
# 8: dynunet's deep supervision as nnU-Net's: each head at its own resolution against the label downsampled
#    (nearest-exact) to it; MONAI upsampled every head to full resolution (nearest) against the full label.
#    Runs of every other architecture train exactly as in version 7.
# 9: the nnunet preset's low resolution as batchgeneratorsv2's: torch's `interpolate` (nearest-exact down,
#    linear up), voxel centres aligned; it was scipy's `zoom`, whose grid aligns the corner voxels. Runs of
#    every other augmentation train exactly as in version 8.
# 10: held-out cases are predicted as nnU-Net v2's predictor does (`inference.NNUNET_INFERENCE_FROM`): its
#    sliding window (tile steps spread evenly, its Gaussian; MONAI's stepped by half a patch and pushed the
#    last tile back, and clamped the Gaussian at 1e-3), mirroring TTA averaging the logits over the flips of
#    each tile (it averaged the softmax over flips of the whole volume, padded after flipping), and only for
#    runs whose augmentation mirrors (`training.run_tta`); probabilities are mapped back to the original grid
#    in log space (nnU-Net resamples logits). Training is as in version 9.
# 11: 2D runs train on, and predict, each case at its own slice spacing, as nnU-Net's 2d configuration (the
#    plan's target spacing in plane only; `RunSpec.own_slice_spacing`): they read the 3D cache, whose slices
#    were resampled to the plan's slice spacing (thick-slice CT: slices repeated or skipped). Where no case's
#    slices are resampled (Task04_Hippocampus) both are the same arrays and the runs are as in version 10.
# 12: a thick axis resampled on its own is taken at nnU-Net's nearest slices when a prediction is mapped back
#    to the original grid (`inference.NNUNET_RESIZE_FROM`): scipy's `affine_transform` rounded some halfway
#    coordinates the other way (for 6 % of the slice-count pairs between 20 and 200, e.g. 20 mapped back to
#    22, a slice or two came from the neighbouring one); the mapping is nnU-Net's resampling of its logits
#    to the last bit (`resample._nnunet_resize`, as the cache since format 6). The training code is version
#    11's (its arrays come from the cache, whose format 6 changes resampled tasks for runs of every
#    version); where no case is resampled (Task04_Hippocampus) runs are as in version 11.
# 13: torch's global generator, which draws dropout masks, is seeded at each training step from the run's seed
#    and the step (`training.STEP_SEEDED_FROM`): a resumed run, or one with DataLoader workers (whose
#    iterators draw from it), drew other masks than an uninterrupted run without workers, so one run id gave
#    different results with --workers (found for pspnet and vnet: losses differed from the second epoch).
#    Changes runs of the archs with dropout (vnet, deeplab, deeplabv3, pspnet, fcn). U-Net runs, with and
#    without augmentation, train bit-identically to version 12 (the CPU survey's six U-Net rows), and so does
#    SegResNet (its survey row moved with the machine, not the version: docs/results/README.md).
# 14: --postprocess decides as nnU-Net v2's `determine_postprocessing` (`postprocess.NNUNET_POSTPROCESS_FROM`
#    = 14): first the largest component of the whole foreground (applied when the foreground mean Dice rises
#    and no label's falls), then, with more than one label, each label's on the result so far; on a task
#    with regions (Task01_BrainTumour) the regions are the candidates and their Dice is compared. It decided
#    each label on its own, without the foreground step, and on label Dice alone where regions are scored too.
#    Changes only runs with `postprocess`; the others train and score exactly as in version 13. Runs of
#    version 13 and older keep their per-label decision (`postprocess_per_label`) and predict as they did.
# 15: with a class weight of 0 (`--class-weights 0,1,1`), `ce` and `dice_ce` give a batch whose every voxel is
#    of a class weighted 0 a cross-entropy of 0 (`losses.ZERO_WEIGHT_SAFE_FROM`): torch's weighted mean was
#    0 / 0, NaN, so a CPU run failed on its weights and a GPU run's mixed precision skipped the step and
#    halved its loss scale. Changes only runs with a zero class weight; the others train exactly as in
#    version 14. Runs of version 14 and older build their loss as they did.
PIPELINE_VERSION = 15
MAX_MINUTES = 1e12  # a run's --max-minutes at most: timedelta, which Lightning's clock takes, ends at 1.44e12
OWN_SLICE_SPACING_FROM = 11

DIMS = ("2d", "3d")
OPTIMIZERS = ("adamw", "sgd")  # adamw: cosine schedule; sgd: Nesterov 0.99, poly (nnU-Net's)
# What a run's network predicts: a softmax over the task's labels, or, as nnU-Net trains a task with regions
# (BraTS), one sigmoid channel per region of the task file (`regions.py`). From pipeline version 14.
TARGETS = ("labels", "regions")
REGIONS_FROM = 14
# Fields added after pipeline version 14, written (and hashed) only where they differ from their default: a
# spec that does not use them keeps the run id it had before they existed (its finished runs are skipped).
WRITTEN_UNLESS_DEFAULT = {"target": "labels"}
DEFAULT_LR = {"adamw": 3e-3, "sgd": 1e-2}  # the learning rate when a run spec gives none


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

    def is_ct_channel(self, index: int) -> bool:
        """Whether channel `index` is normalised as CT (nnU-Net's CTNormalization, with the dataset's
        foreground statistics): a channel named CT, or the one channel of a CT task."""
        name = self.modalities[index] if index < len(self.modalities) else ""
        return name.strip().upper() == "CT" or (self.imaging == "CT" and self.num_channels == 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source_file: Path) -> TaskSpec:
        """A task from its YAML mapping; each key's type and value is checked (UsageError naming the file)."""
        known = {f.name for f in fields(cls)} - {"source_file"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{source_file}: unknown keys {', '.join(unknown)}")
        for key in REQUIRED_TASK_KEYS:
            if key not in data:
                raise UsageError(f"{source_file}: missing required key '{key}'")
        values = {key: TASK_KEY_CHECKS[key](key, value, source_file) for key, value in data.items()}
        if 0 not in values["labels"]:
            raise UsageError(f"{source_file}: 'labels' must name 0, the background, as MSD's dataset.json "
                             "does (0: background)")
        gaps = sorted(set(range(max(values["labels"]) + 1)) - set(values["labels"]))
        if gaps:  # a network predicts every value up to the largest: a gap would come out as a label
            raise UsageError(f"{source_file}: 'labels' must be consecutive from 0 (0, 1, 2, ...), as nnU-Net "
                             f"requires: {', '.join(map(str, gaps))} missing; number the labels 0..N in the "
                             "label files and here (BraTS's 4 as 3, say)")
        channels = len(values["modalities"])
        if channels > 1:  # MSD stores a case's modalities along a fourth axis
            if values.setdefault("tensor_image_size", "4D") != "4D":
                raise UsageError(f"{source_file}: 'tensor_image_size' 3D cannot hold {channels} modalities "
                                 "(an MSD image stores them along a fourth axis): use 4D")
        if values.get("local_path"):  # relative to the task file, not to where a command is run
            values["local_path"] = str(source_file.parent / Path(values["local_path"]).expanduser())
        undeclared = sorted({n for members in values.get("regions", {}).values() for n in members}
                            - set(values["labels"]))
        if undeclared:
            raise UsageError(f"{source_file}: 'regions' name labels {undeclared} that 'labels' lacks")
        for region in values.get("regions", {}):
            clash = region_name_problem(region, values["labels"])
            if clash:
                raise UsageError(f"{source_file}: 'regions: {region}' {clash}")
        return cls(**values, source_file=str(source_file))


def _fits(annotation: str, value: object) -> bool:
    """Whether a value read from JSON fits a RunSpec field annotated `annotation` ("int", "float | None",
    "tuple[int, ...] | None", ...); a tuple field is a list in JSON, a float field takes a whole number."""
    base, optional = annotation.removesuffix(" | None"), annotation.endswith(" | None")
    if value is None:
        return optional
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if base.startswith("tuple["):
        item = "int" if base.startswith("tuple[int") else "float"
        return isinstance(value, list | tuple) and all(_fits(item, v) for v in value)
    checks: dict[str, bool] = {"str": isinstance(value, str), "int": is_int(value), "float": number,
                               "bool": isinstance(value, bool)}
    return checks.get(base, False)


def _kind_text(annotation: str) -> str:
    """A RunSpec field's annotation in words, for an error message."""
    base = annotation.removesuffix(" | None")
    words = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
             "tuple[int, ...]": "a list of whole numbers", "tuple[float, ...]": "a list of numbers"}[base]
    return words + (" or null" if annotation.endswith(" | None") else "")


assert set(TASK_KEY_CHECKS) == {f.name for f in fields(TaskSpec)} - {"source_file"}


def spec_hash_of(data: dict[str, Any]) -> str:
    """The hash ending a run id, of a spec as `RunSpec.to_dict` gives it, or as a run's spec.json holds it
    (its run_id left out): spec.json is written from `to_dict`, so this gives an older version's run its
    own id, fields added since and all."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def run_id_problem(data: dict[str, Any], folder_name: str) -> str | None:
    """Why a run's spec.json (`data`) does not match its run id (its own `run_id`, its folder's name): a
    setting edited after the run, which would be pooled as a run it never was; None when it matches."""
    stored = data.get("run_id")
    actual = spec_hash_of({k: v for k, v in data.items() if k != "run_id"})
    if stored != folder_name:
        return f"its run_id {json.dumps(stored)} is not its folder's name"
    if not folder_name.endswith(f"-{actual}"):
        return (f"edited after the run: its settings hash to {actual}, its run id ends in "
                f"{folder_name.rsplit('-', 1)[-1]}")
    return None


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
    postprocess: bool = False  # largest components where they help on the held-out fold (postprocess.py)
    target: str = "labels"  # "regions": one sigmoid channel per task region, as nnU-Net's region training
    task_version: int = 1
    pipeline_version: int = PIPELINE_VERSION

    def __post_init__(self) -> None:
        if self.dims not in DIMS:
            raise UsageError(f"unknown dims '{self.dims}'; {choice_hint(self.dims, DIMS)}")
        if self.target not in TARGETS:
            raise UsageError(f"unknown target '{self.target}'; {choice_hint(self.target, TARGETS)}")
        if self.target == "regions" and self.pipeline_version < REGIONS_FROM:
            raise UsageError(f"target regions exists from pipeline version {REGIONS_FROM}, not in a spec of "
                             f"version {self.pipeline_version}")
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
        # Past these the run failed after its setup (exit 5): a batch of 3e9 with 'MemoryError', a rate past
        # float32's largest with 'value cannot be converted to type float without overflow' at the first
        # step, 1e300 minutes with 'Python int too large to convert to C int' (timedelta).
        # Epochs or iterations past the index's int64 (1e20): the run trained, then every index write (the
        # sweep's, status', report's) failed on it with pyarrow's 'Python int too large to convert to C
        # long', a traceback. Not MAX_SIZE: a finished run of 1e10 epochs (a --max-minutes budget) is sound.
        for name, bound in (("num_folds", MAX_COUNT), ("epochs", MAX_COUNT), ("iters_per_epoch", MAX_COUNT),
                           ("batch_size", MAX_SIZE)):
            value = getattr(self, name)
            if value is not None and value > bound:
                raise UsageError(f"{name} must be at most {bound}, not {value}")
        limits = (("max_minutes", MAX_MINUTES, "about 1.9 million years"),
                  ("lr", FLOAT32_MAX, "the largest float32, the type of the network's weights"))
        for name, most, why in limits:
            value = getattr(self, name)
            if value is not None and not 0 < value < float("inf"):
                raise UsageError(f"{name} must be a positive number, not {value}")
            if value is not None and value > most:
                raise UsageError(f"{name} must be at most {most:.3g} ({why}), not {value:g}")
        if self.lr is not None and self.lr < FLOAT32_TINY:  # 1e-300: accepted, and trained nothing
            raise UsageError(f"lr must be at least {FLOAT32_TINY:.3g} (the smallest normal float32: a "
                             f"smaller rate is 0 to the network's weights), not {self.lr:g}")
        sides = 2 if self.dims == "2d" else 3
        if self.patch_size is not None and (len(self.patch_size) != sides or min(self.patch_size) < 1):
            raise UsageError(f"a {self.dims} patch size is {sides} positive sides, not "
                             f"{','.join(map(str, self.patch_size))}")
        if self.patch_size is not None and max(self.patch_size) > MAX_SIZE:
            raise UsageError(f"a patch side must be at most {MAX_SIZE}, not "
                             f"{','.join(map(str, self.patch_size))}")
        if self.optimizer not in OPTIMIZERS:
            hint = choice_hint(self.optimizer, OPTIMIZERS)
            raise UsageError(f"unknown optimizer '{self.optimizer}'; {hint}")
        if self.class_weights is not None and not all(0 <= w < float("inf") for w in self.class_weights):
            raise UsageError(f"class weights must be finite and >= 0, not {list(self.class_weights)}")

    def to_dict(self) -> dict[str, Any]:
        """The spec as spec.json holds it, and as its hash is taken: every field, but those of
        `WRITTEN_UNLESS_DEFAULT` only where they are not their default."""
        data = asdict(self)
        for key, default in WRITTEN_UNLESS_DEFAULT.items():
            if data[key] == default:
                del data[key]
        for key in ("patch_size", "class_weights"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def problem(cls, data: dict[str, Any]) -> str | None:
        """Why `data` (a run's spec.json without its run_id) is no run spec (`checked`); None if it is one."""
        try:
            cls.checked(data)
        except UsageError as exc:
            return str(exc)
        return None

    @classmethod
    def checked(cls, data: dict[str, Any]) -> RunSpec:
        """The spec `data` (a run's spec.json, its run_id left out) holds; UsageError saying why it holds
        none: a key without a default missing, an unknown key, a value of the wrong type (checked against the
        field's annotation) or out of range. A key an older version's spec lacks takes its default, as it had
        then."""
        missing = [f.name for f in fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise UsageError(f"lacks {', '.join(missing)}")
        annotations = {f.name: str(f.type) for f in fields(cls)}
        unknown = sorted(set(data) - set(annotations))
        if unknown:
            raise UsageError(f"unknown key(s) {', '.join(unknown)}")
        for key, value in data.items():
            if not _fits(annotations[key], value):
                shown = json.dumps(value)
                shown = shown if len(shown) <= 40 else shown[:37] + "..."
                raise UsageError(f"'{key}' must be {_kind_text(annotations[key])}, not {shown}")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        values = dict(data)
        for key in ("patch_size", "class_weights"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    @functools.cached_property
    def spec_hash(self) -> str:
        """Hashed once per spec (frozen): a sweep's loops over 1000 runs asked for each run's id 4 times."""
        return spec_hash_of(self.to_dict())

    @property
    def run_id(self) -> str:
        """Readable and stable: the axes (`-regions` after the augmentation for a region run), then a hash of
        the whole spec."""
        arch = self.arch if self.encoder is None else f"{self.arch}.{self.encoder}"
        target = "-regions" if self.target == "regions" else ""
        return (f"{self.dims}-{arch}-{self.loss}-{self.aug}{target}-f{self.fold}-s{self.seed}-"
                f"{self.spec_hash}")

    @property
    def own_slice_spacing(self) -> bool:
        """Whether the run sees each case at its own slice spacing (2D runs from pipeline version 11, as
        nnU-Net's 2d configuration), not resampled to the plan's (`data.plan.slice_target_spacing`)."""
        return self.dims == "2d" and self.pipeline_version >= OWN_SLICE_SPACING_FROM

    @property
    def config_key(self) -> tuple[str, str, str, str, str, str]:
        """What a leaderboard row aggregates over (folds and seeds are pooled)."""
        return (self.task, self.dims, self.arch, self.encoder or "", self.loss, self.aug)
