"""Expand the axes of a sweep into run specs (every name validated first), less the `--exclude` matches."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from medseg_bench.augment import AUGS, mirrors
from medseg_bench.data.catalog import task_registry
from medseg_bench.errors import UsageError
from medseg_bench.losses import LOSSES, region_loss_problem
from medseg_bench.models import (
    ARCHS,
    DEFAULT_ENCODER,
    check_batch,
    check_channels,
    check_encoder,
    check_patch,
    encoder_problem,
    variant,
)
from medseg_bench.regions import regions_problem
from medseg_bench.registry import choice_hint
from medseg_bench.spec import DEFAULT_LR, DIMS, TARGETS, RunSpec, TaskSpec

# The axes a sweep varies and an --exclude rule can name (RunSpec field names).
AXES = ("task", "dims", "arch", "encoder", "loss", "aug", "target", "fold", "seed")


@dataclass
class SweepRequest:
    """The axes of a sweep (lists), its fixed settings, and exclusion rules."""

    tasks: list[str]
    archs: list[str] = field(default_factory=lambda: ["unet"])
    losses: list[str] = field(default_factory=lambda: ["dice_ce"])
    augs: list[str] = field(default_factory=lambda: ["none"])
    targets: list[str] = field(default_factory=lambda: ["labels"])  # "regions": nnU-Net's region training
    dims: list[str] | None = None  # None: every dims each arch supports
    encoders: list[str] | None = None  # None: each 2D arch's default (resnet34; fcn: resnet50)
    folds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    num_folds: int = 5
    epochs: int = 10
    max_minutes: float | None = None
    iters_per_epoch: int = 50
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    optimizer: str = "adamw"
    lr: float | None = None
    pretrained: bool = False
    class_weights: tuple[float, ...] | None = None
    tta: bool = False
    postprocess: bool = False
    exclude: list[str] = field(default_factory=list)  # rules like "arch=deeplab,aug=heavy"


# One combination of the axes, as an --exclude rule reads it: each of `AXES` -> its value as text.
Combination = dict[str, str]


@dataclass
class _Skips:
    """The lines of combinations that cannot exist (an arch without the dims, an encoder it refuses, ...),
    each with how many combinations it skips and how many of them a rule of --exclude names: a rule that names
    some matches them too (it was said to match no combination where the user excluded an arch the encoder had
    skipped already), and a line whose every combination is excluded is moot: left out, its combinations
    counted as excluded. Counted as they come, not kept (a large grid kept hundreds of MB of them), and not
    even counted without rules."""

    request: SweepRequest
    targets: list[str]
    rules: list[dict[str, str]]
    counts: dict[str, list[int]] = field(default_factory=dict)  # line -> [combinations, those a rule names]
    used: set[int] = field(default_factory=set)  # the rules that name some
    encoders: dict[str, list[str]] = field(default_factory=dict)  # an encoder's line -> the encoders it names

    def add(self, line: str, task: str, dims: str, arch: str, encoders: list[str | None],
            losses: list[str], augs: list[str], named: list[str] | None = None) -> None:
        """`line`, skipping `arch` in `dims` on `task` with each of `encoders`, `losses`, `augs` and each of
        the sweep's targets, folds and seeds; `named`: the encoders the line names."""
        if named:
            self.encoders.setdefault(line, []).extend(named)
        if not self.rules:
            return
        for encoder, loss, aug, target, fold, seed in itertools.product(
                encoders, losses, augs, self.targets, self.request.folds, self.request.seeds):
            self.add_one(line, {"task": task, "dims": dims, "arch": arch, "encoder": str(encoder),
                                "loss": loss, "aug": aug, "target": target, "fold": str(fold),
                                "seed": str(seed)})

    def add_one(self, line: str, combination: Combination) -> None:
        counts = self.counts.setdefault(line, [0, 0])
        counts[0] += 1
        matched = [i for i, rule in enumerate(self.rules) if _matches(combination, rule)]
        if matched:
            counts[1] += 1
            self.used.update(matched)


def _matches(combination: Combination, rule: dict[str, str]) -> bool:
    return all(combination[key] == value for key, value in rule.items())


def _encoders(arch: str, dims: str,
              requested: list[str] | None) -> tuple[list[str | None], list[tuple[str, list[str]]]]:
    """The encoders `arch` runs with in `dims`: the requested ones it can take, or its default; [None] for
    3D. With them, a line for the others (skipped, as an arch without that dims is), each with the encoders
    it names."""
    if dims != "2d":
        return [None], []
    own = variant(arch, dims).encoders  # None: any smp encoder
    if requested is None:
        return [own[0] if own else DEFAULT_ENCODER], []
    skips: list[tuple[str, list[str]]] = []
    usable: list[str | None] = [e for e in requested if own is None or e in own]
    for encoder in usable:
        check_encoder(arch, dims, encoder)  # an unknown smp name: did-you-mean, exit 2
    if own is not None and len(usable) < len(requested):
        left_out = [e for e in requested if e not in own]
        skips.append((f"{arch} with --encoder {', '.join(left_out)}: skipped, '{arch}' takes "
                      f"{' or '.join(own)}", left_out))
    # a pair smp refuses to build (unetplusplus over mit_b0) failed its runs after the task was prepared
    refused = {e: problem for e in usable if e is not None and (problem := encoder_problem(arch, dims, e))}
    skips += [(f"{arch} with --encoder {e}: skipped, {problem}", [e]) for e, problem in refused.items()]
    return [e for e in usable if e not in refused], skips


def _unused_encoders(given: list[str], runs: list[RunSpec], accepted: set[str], two_d_archs: bool,
                     two_d: bool) -> list[str]:
    """The line, if any, for the `given` encoders no run of `runs` uses, each named once: not one every 2D
    arch of the sweep refused (their lines say so), but one a 2D arch takes whose runs are gone, or any where
    the sweep has no 2D arch at all. `accepted`: the encoders some 2D arch takes; `two_d_archs`: whether any
    2D arch was asked for; `two_d`: whether a 2D run is left."""
    used = {spec.encoder for spec in runs}
    unused = [e for e in dict.fromkeys(given) if e not in used and (e in accepted or not two_d_archs)]
    if not unused:
        return []
    names = ",".join(unused)
    if not two_d:
        return [f"--encoder {names}: unused, no run of the sweep is 2D (3D nets take no encoder)"]
    return [f"--encoder {names}: unused, --exclude removed every run that takes it"]


def _canonical_name(key: str, value: str) -> str:
    """The registered name of an arch, loss, aug or task given by a name or alias; UsageError if none."""
    if key == "arch":
        return ARCHS.get(value).name
    if key == "loss":
        return LOSSES.canonical(value)
    if key == "aug":
        return AUGS.canonical(value)
    return task_registry().get(value).name


def parse_exclude(rule: str) -> dict[str, str]:
    """`"arch=deeplab,aug=heavy"` -> {"arch": "deeplab", "aug": "heavy"}; names are made canonical."""
    parsed: dict[str, str] = {}
    for part in (p.strip() for p in rule.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise UsageError(f"exclude rule '{rule}': '{part}' is not key=value")
        if key not in AXES:
            raise UsageError(f"exclude rule '{rule}': unknown key '{key}'; {choice_hint(key, AXES)}")
        if key in parsed:  # the last value won without a word: arch=unet,arch=deeplab dropped deeplab only
            raise UsageError(f"exclude rule '{rule}': {key} is given twice; a rule drops the runs that match "
                             "all its pairs: give one rule for each (--exclude arch=a --exclude arch=b)")
        if key in ("arch", "loss", "aug", "task"):
            try:  # named with its rule, as the other keys' values are (a flag of the sweep had it too)
                value = _canonical_name(key, value)
            except UsageError as exc:
                raise UsageError(f"exclude rule '{rule}': {exc}") from None
        elif key == "dims" and value not in DIMS:
            raise UsageError(f"exclude rule '{rule}': unknown dims '{value}'; {choice_hint(value, DIMS)}")
        elif key == "target" and value not in TARGETS:
            raise UsageError(f"exclude rule '{rule}': unknown target '{value}'; "
                             f"{choice_hint(value, TARGETS)}")
        elif key == "encoder":
            from medseg_bench.models.zoo2d import check_smp_encoder

            try:
                check_smp_encoder(value)  # a typo would exclude nothing: did-you-mean, exit 2
            except UsageError as exc:
                raise UsageError(f"exclude rule '{rule}': {exc}") from None
        elif key in ("fold", "seed"):
            if not value.isdigit():
                raise UsageError(f"exclude rule '{rule}': {key} takes a whole number, not '{value}'")
            value = str(int(value))  # "00" is seed 0
        parsed[key] = value
    if not parsed:
        raise UsageError(f"exclude rule '{rule}' is empty")
    return parsed


def is_excluded(spec: RunSpec, rules: list[dict[str, str]]) -> bool:
    """True when every key=value of some rule matches `spec`."""
    return any(all(str(getattr(spec, key)) == value for key, value in rule.items()) for rule in rules)


def canonical_weights(weights: tuple[float, ...] | None) -> tuple[float, ...] | None:
    """Class weights scaled so that the smallest positive one is 1 (12 significant digits): `0.5,1,2` and
    `1,2,4` are one loss (only ratios count, see `losses.build_loss`), so they are one run id. Equal weights
    (`1,1,1`) are the unweighted loss: None, the run id of no weights."""
    positive = [w for w in weights or () if w > 0]
    if weights is None or not positive:
        return weights
    scaled = tuple(float(f"{w / min(positive):.12g}") for w in weights)
    if not all(math.isfinite(w) for w in scaled):
        return weights  # 1e-320,1,2: kept as typed
    return None if all(w == 1.0 for w in scaled) else scaled


def _region_refusals(tasks: list[TaskSpec], losses: list[str],
                     class_weights: tuple[float, ...] | None) -> dict[tuple[str, str], str]:
    """(task, loss) -> the line that skips its runs with `target: regions`, for those that cannot have them:
    a task without regions, or whose regions cannot be painted into a label map (`regions.regions_problem`),
    a loss without a region form (`losses.REGION_LOSSES`), class weights (a region is no class)."""
    refusals: dict[tuple[str, str], str] = {}
    for task in tasks:
        problem = regions_problem(task.regions, list(task.labels))
        for loss in losses:
            if problem is not None:
                why = f"{task.name} with --target regions: skipped, {problem}"
            elif (loss_problem := region_loss_problem(loss)) is not None:
                why = f"loss {loss} with --target regions: skipped, {loss_problem}"
            elif class_weights is not None:
                why = ("--class-weights with --target regions: skipped, class weights weigh a softmax's "
                       "classes, and a region run's channels are regions")
            else:
                continue
            refusals[(task.name, loss)] = why
    return refusals


def expand(request: SweepRequest) -> tuple[list[RunSpec], list[str]]:
    """All run specs of `request`, plus one line per combination that cannot exist or is excluded.

    Every name is checked before anything runs: a typo fails with a did-you-mean and exit code 2.
    """
    if not request.tasks:
        raise UsageError("no task given: use --task or `task:` in the sweep file")
    tasks = task_registry()
    # each value once, by its registered name (`--seed 0,0,1`, `--arch deeplab,deeplabv3plus`: the runs were
    # one, but "removed by --exclude" counted each spelling)
    task_specs = list({spec.name: spec for spec in (tasks.get(t) for t in request.tasks)}.values())
    archs = list({entry.name: entry for entry in (ARCHS.get(a) for a in request.archs)}.values())
    losses = list(dict.fromkeys(LOSSES.canonical(x) for x in request.losses))
    augs = list(dict.fromkeys(AUGS.canonical(x) for x in request.augs))
    request = replace(request, folds=list(dict.fromkeys(request.folds)),
                      seeds=list(dict.fromkeys(request.seeds)),
                      encoders=None if request.encoders is None else list(dict.fromkeys(request.encoders)))
    for d in request.dims or []:
        if d not in DIMS:
            raise UsageError(f"unknown dims '{d}'; {choice_hint(d, DIMS)}")
    targets = list(dict.fromkeys(request.targets))
    for t in targets:
        if t not in TARGETS:
            raise UsageError(f"unknown target '{t}'; {choice_hint(t, TARGETS)}")
    if not targets:
        raise UsageError("no target given (an empty target list): name labels or regions")
    if request.encoders is not None and not request.encoders:
        raise UsageError("no encoder given (an empty encoder list): name one, or leave it out for the "
                         "default")
    if request.encoders:  # every name, also where no run is 2D (a typo was said to be unused, and ignored)
        from medseg_bench.models.zoo2d import check_smp_encoder

        for name in request.encoders:
            check_smp_encoder(name)
    rules = [parse_exclude(rule) for rule in request.exclude]
    for given, rule in zip(request.exclude, rules, strict=True):
        if "fold" in rule and int(rule["fold"]) >= request.num_folds:
            folds = f"{request.num_folds} fold{'' if request.num_folds == 1 else 's'}"
            raise UsageError(f"exclude rule '{given}': fold {rule['fold']} does not exist, the sweep has "
                             f"{folds} (0 to {request.num_folds - 1})")
    if request.class_weights is not None and "labels" in targets:
        from medseg_bench.losses import build_loss

        for task in task_specs:  # wrong length or a loss that cannot weight classes: before anything runs
            for loss in losses:
                try:
                    build_loss(loss, task.num_classes, request.class_weights)
                except UsageError as exc:  # which task's classes, in a sweep of several
                    raise UsageError(f"{task.name}: {exc}") from None
    # The optimizer's default learning rate, given explicitly, is the same run (the same run id) as none;
    # class weights with the same ratios are the same loss, so the same run: scaled so the smallest is 1.
    lr = None if request.lr == DEFAULT_LR.get(request.optimizer) else request.lr
    class_weights = canonical_weights(request.class_weights)
    runs: list[RunSpec] = []
    skipped: list[str] = []
    excluded, used = 0, set[int]()
    # the encoders asked for that some 2D arch of the sweep takes (before --exclude); one every 2D arch
    # refused (fcn alone given resnet34) is named by their lines, not said to be unused as well
    accepted: set[str] = set()
    two_d_archs = False
    # Combinations that cannot train region by region: skipped with a line each (all of them: the sweep
    # expands to no runs, and says why), as an arch without the dims asked for.
    no_regions = _region_refusals(task_specs, losses, class_weights) if "regions" in targets else {}
    skips = _Skips(request, targets, rules)
    for task in task_specs:
        for dims in DIMS:
            if request.dims is not None and dims not in request.dims:
                continue
            for entry in archs:
                if dims not in entry.builders:
                    if request.dims is not None:
                        line = (f"{entry.name} in {dims}: skipped, '{entry.name}' has no {dims} variant (it "
                                f"supports {', '.join(entry.dims)})")
                        skipped.append(line)
                        skips.add(line, task.name, dims, entry.name, [None], losses, augs)
                    continue
                encoders, encoder_skips = _encoders(entry.name, dims, request.encoders)
                for line, named in encoder_skips:
                    skipped.append(line)
                    skips.add(line, task.name, dims, entry.name, [*named], losses, augs, named=named)
                if dims == "2d":
                    two_d_archs = True
                    accepted.update(e for e in encoders if e is not None)
                if request.patch_size is not None:
                    sides = 2 if dims == "2d" else 3
                    if len(request.patch_size) != sides:
                        given = ",".join(map(str, request.patch_size))
                        raise UsageError(
                            f"--patch-size {given} has {len(request.patch_size)} sides, but the sweep has "
                            f"{dims} runs ({entry.name}), which need {sides}: set --dims to match it")
                    check_patch(entry.name, dims, request.patch_size)
                if request.batch_size is not None:  # the planned patch is checked when the run starts
                    check_batch(entry.name, dims, request.patch_size, request.batch_size)
                try:
                    check_channels(entry.name, dims, task.num_channels, task.name)
                except UsageError as exc:  # this task only, as an arch without the dims: a line, not an error
                    skipped.append(line := f"{entry.name} on {task.name}: skipped, {exc}")
                    skips.add(line, task.name, dims, entry.name, encoders, losses, augs)
                    continue
                for encoder, loss, aug, target, fold, seed in itertools.product(
                        encoders, losses, augs, targets, request.folds, request.seeds):
                    refusal = no_regions.get((task.name, loss)) if target == "regions" else None
                    if refusal is not None:
                        skipped.append(refusal)
                        skips.add_one(refusal, {"task": task.name, "dims": dims, "arch": entry.name,
                                                "encoder": str(encoder), "loss": loss, "aug": aug,
                                                "target": target, "fold": str(fold), "seed": str(seed)})
                        continue
                    spec = RunSpec(
                        task=task.name, dims=dims, arch=entry.name, loss=loss, aug=aug, encoder=encoder,
                        fold=fold, num_folds=request.num_folds, seed=seed, epochs=request.epochs,
                        max_minutes=request.max_minutes, iters_per_epoch=request.iters_per_epoch,
                        batch_size=request.batch_size, patch_size=request.patch_size,
                        optimizer=request.optimizer, lr=lr, task_version=task.version,
                        pretrained=request.pretrained and dims == "2d", class_weights=class_weights,
                        tta=request.tta and mirrors(aug), postprocess=request.postprocess, target=target)
                    if request.tta and not spec.tta:
                        skipped.append(f"--tta with aug {aug}: evaluated without it, '{aug}' never mirrors a "
                                       "training image (nnU-Net mirrors only along the axes it trained with)")
                    matched = [i for i, rule in enumerate(rules) if is_excluded(spec, [rule])]
                    if matched:
                        excluded += 1
                        used.update(matched)
                        continue
                    runs.append(spec)
    # a line of combinations skipped for another reason, which a rule excludes too: the rule matched them;
    # where it (or others) matched every one, the line is moot, and they are removed by --exclude (an arch
    # the user excluded was said to be skipped, then the rule to match nothing)
    used.update(skips.used)
    for line, (combinations, ruled_out) in skips.counts.items():
        if combinations and ruled_out == combinations:
            skipped = [kept for kept in skipped if kept != line]
            excluded += combinations
            accepted.update(skips.encoders.get(line, []))  # taken by --exclude: "unused" where no run has it
    if excluded:
        skipped.append(f"{excluded} combination(s) removed by --exclude")
    skipped += [f"exclude rule '{given}' matches no combination of this sweep: nothing removed by it"
                for i, given in enumerate(request.exclude) if i not in used]
    skipped = list(dict.fromkeys(skipped))  # a line per arch and dims, not per task
    # Both decided on the runs left after --exclude: one that removed every 2D run leaves them unused too.
    two_d = any(r.dims == "2d" for r in runs)
    if request.encoders is not None and runs:
        skipped += _unused_encoders(request.encoders, runs, accepted, two_d_archs, two_d)
    if request.pretrained and runs and not two_d:  # the same run ids without it
        skipped.append("--pretrained: unused, no run of the sweep is 2D (3D nets have no pretrained encoder)")
    unique = list(dict.fromkeys(runs))
    if not unique:
        raise UsageError("the sweep expands to no runs" + (f" ({'; '.join(skipped)})" if skipped else ""))
    return unique, skipped
