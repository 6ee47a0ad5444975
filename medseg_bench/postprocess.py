"""Largest-connected-component postprocessing, decided on a run's held-out cases as nnU-Net v2 decides it.

nnU-Net v2's `determine_postprocessing`, for runs of pipeline version 14 on (`NNUNET_POSTPROCESS_FROM`):

1. The foreground step: the mask of every foreground label together keeps only its largest component, the
   rest set to background. Applied when the foreground mean Dice rises and no candidate's mean Dice falls.
2. Only where there is more than one candidate: each candidate in turn (labels by value, regions in the task
   file's order), on the result so far, keeps only the largest component of its mask (removed voxels to
   background); applied when its own mean Dice rises.

The candidates are the task's foreground labels or, for a task with `regions` (nnU-Net's `has_regions`), its
regions: a region's mask is the union of its labels, and it is the regions' Dice that is compared (the
foreground step's mask is still every foreground label). Means as nnU-Net's `compute_metrics_on_folder`: a
candidate's over the cases, leaving out those where prediction and reference both lack it (Dice NaN; NaN when
every case does); the foreground mean is the mean of the candidates' means, NaN when one is NaN. A comparison
with NaN is false: such a step is not applied. Components tied for largest all stay, as nnU-Net's
`remove_all_but_largest_component`. Deciding and reporting on the same fold is nnU-Net's practice; it flatters
the postprocessed score slightly.

Runs of pipeline version 13 and older decided each label on its own (`postprocess_per_label`); they are
decided and predicted as they were: `load_decision` reads either file.

An ensemble (`pooled`): nnU-Net decides on the pooled cross-validation predictions; here each run recorded,
per candidate, its mean Dice and number of cases in four states (as predicted, after the foreground step, its
own step alone, both), from which a label's Dice after any decision follows (removing another label's voxels
never changes it): for label tasks `pooled` decides as `decide` on the runs' cases together, exactly (its
means to rounding: a weighted mean of means). For
regions, a region's Dice also depends on the steps of earlier regions it overlaps: a run whose own decision
applied the same earlier steps as the pooled one gives its own trial's numbers (exact), another its numbers
without the other regions' steps (an approximation where an applied earlier region overlaps this one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from scipy import ndimage

from medseg_bench.errors import DataError

if TYPE_CHECKING:
    from typing import TypeAlias

    from medseg_bench.case_spill import SpilledArrays
    from medseg_bench.postprocess_per_label import PerLabelDecision

T = TypeVar("T")

FILENAME = "postprocessing.json"
NNUNET_POSTPROCESS_FROM = 14  # pipeline version: nnU-Net v2's procedure; each label on its own before
FORMAT = 2  # `postprocessing.json`'s: 1, the per-label file, has no `format`
KINDS = ("foreground", "label", "region")
STATES = ("raw", "foreground", "own", "foreground_own")  # a candidate's Dice: as predicted, after which steps


def _largest_only(mask: np.ndarray) -> np.ndarray:
    """`mask`'s largest (fully connected) component; components tied for largest all of them."""
    components, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return sizes[components] == sizes.max()


def keep_largest_component(pred: np.ndarray, labels: int | Sequence[int]) -> np.ndarray:
    """A copy of `pred` where only the largest (fully connected) component of the mask of `labels` (together)
    keeps its labels, the rest background; components tied for largest all kept, as nnU-Net's
    `remove_all_but_largest_component`."""
    mask = np.isin(pred, labels)
    out = pred.copy()
    out[mask & ~_largest_only(mask)] = 0
    return out


@dataclass(frozen=True)
class Step:
    """One largest-component step: the mask of `labels` together keeps its largest component only.

    `kind`: "foreground" (every foreground label), "label" (`name` the label's value) or "region" (a task's
    region, by its name)."""

    kind: str
    name: str
    labels: tuple[int, ...]

    @property
    def title(self) -> str:
        return "the foreground" if self.kind == "foreground" else f"{self.kind} {self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Step:
        if data["kind"] not in KINDS:
            raise ValueError(f"unknown step kind {data['kind']!r}")
        return cls(str(data["kind"]), str(data["name"]), tuple(int(v) for v in data["labels"]))


def apply_postprocessing(pred: np.ndarray, steps: Iterable[Step]) -> np.ndarray:
    """`pred` with each step applied in order (a copy where any is)."""
    for step in steps:
        pred = keep_largest_component(pred, step.labels)
    return pred


def candidate_steps(labels: Sequence[int], regions: Mapping[str, Sequence[int]] | None = None) -> list[Step]:
    """Step 2's candidates: the task's regions in its file's order where it has any, else its labels."""
    if regions:
        return [Step("region", name, tuple(int(v) for v in members)) for name, members in regions.items()]
    return [Step("label", str(label), (int(label),)) for label in labels]


@dataclass(frozen=True)
class Mean:
    """A mean Dice over the cases where it is defined, and their number (NaN over none)."""

    dice: float
    cases: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Mean:
        defined = [v for v in values if not math.isnan(v)]
        return cls(float(np.mean(defined)) if defined else math.nan, len(defined))

    @classmethod
    def pooled(cls, means: Iterable[Mean]) -> Mean:
        """The mean over every case of `means` together."""
        counted = [m for m in means if m.cases]
        cases = sum(m.cases for m in counted)
        return cls(sum(m.dice * m.cases for m in counted) / cases if cases else math.nan, cases)

    def to_dict(self) -> dict[str, Any]:
        return {"mean_dice": self.dice, "cases": self.cases}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Mean:
        return cls(float(data["mean_dice"]), int(data["cases"]))


@dataclass(frozen=True)
class Trial:
    """A candidate's step tried on the result so far: its mean Dice before and after; applied when higher."""

    before: Mean
    after: Mean

    @property
    def applied(self) -> bool:
        return self.after.dice > self.before.dice

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "before": self.before.to_dict(), "after": self.after.to_dict()}


@dataclass(frozen=True)
class Candidate:
    """A label or region: its mean Dice in each of `STATES` (the pooling record) and its step-2 trial (None
    where the task has one candidate: step 2 is skipped)."""

    step: Step
    scores: dict[str, Mean]
    trial: Trial | None = None

    def to_dict(self) -> dict[str, Any]:
        scores = {state: mean.to_dict() for state, mean in self.scores.items()}
        return self.step.to_dict() | {"scores": scores} | (
            {"trial": self.trial.to_dict()} if self.trial is not None else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        trial = data.get("trial")
        return cls(Step.from_dict(data), {str(k): Mean.from_dict(v) for k, v in data["scores"].items()},
                   Trial(Mean.from_dict(trial["before"]), Mean.from_dict(trial["after"])) if trial else None)


def _foreground_mean(candidates: Sequence[Candidate], state: str) -> float:
    return float(np.mean([c.scores[state].dice for c in candidates]))  # NaN where one is, as nnU-Net's


def _worse(candidates: Sequence[Candidate]) -> list[str]:
    """The candidates whose mean Dice the foreground step lowers."""
    return [c.step.name for c in candidates if c.scores["foreground"].dice < c.scores["raw"].dice]


def _foreground_applies(candidates: Sequence[Candidate]) -> bool:
    return _foreground_mean(candidates, "foreground") > _foreground_mean(candidates, "raw") and not _worse(
        candidates)


@dataclass(frozen=True)
class Decision:
    """nnU-Net v2's decision: `steps`, what predict applies in order; `foreground`, the foreground step tried;
    `candidates`, the labels or regions with their scores and trials."""

    foreground: Step
    candidates: tuple[Candidate, ...]
    steps: tuple[Step, ...]

    @property
    def foreground_applied(self) -> bool:
        return _foreground_applies(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        foreground = self.foreground.to_dict() | {
            "applied": self.foreground_applied, "worse": _worse(self.candidates),
            "dice_before": _foreground_mean(self.candidates, "raw"),
            "dice_after": _foreground_mean(self.candidates, "foreground")}
        return {"format": FORMAT, "steps": [step.to_dict() for step in self.steps], "foreground": foreground,
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def of(cls, foreground: Step, candidates: Sequence[Candidate]) -> Decision:
        """The decision the candidates' scores and trials make: the foreground step where it applies, then
        each candidate's whose trial applies."""
        steps = [foreground] if _foreground_applies(candidates) else []
        steps += [c.step for c in candidates if c.trial is not None and c.trial.applied]
        return cls(foreground, tuple(candidates), tuple(steps))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        if data["format"] != FORMAT:
            raise ValueError(f"format {data['format']!r}, not {FORMAT}")
        return cls(Step.from_dict(data["foreground"]),
                   tuple(Candidate.from_dict(c) for c in data["candidates"]),
                   tuple(Step.from_dict(s) for s in data["steps"]))


def _dice(pred_mask: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> float:
    ref_mask = np.isin(ref, labels)
    denom = int(pred_mask.sum()) + int(ref_mask.sum())
    return math.nan if denom == 0 else 2 * int((pred_mask & ref_mask).sum()) / denom


def dice_before_after(pred: np.ndarray, ref: np.ndarray, step: Step) -> tuple[float, float]:
    """`step`'s candidate's Dice on `pred`, and after `step`."""
    mask = np.isin(pred, step.labels)
    return _dice(mask, ref, step.labels), _dice(_largest_only(mask), ref, step.labels)


def _scores(steps: Sequence[Step], foreground: Step, preds: Sequence[np.ndarray],
            refs: Sequence[np.ndarray]) -> list[dict[str, Mean]]:
    """Each candidate's mean Dice in each of `STATES`; with one candidate (step 2 skipped) the first two."""
    states = STATES if len(steps) > 1 else STATES[:2]
    values: list[dict[str, list[float]]] = [{state: [] for state in states} for _ in steps]

    def score(pred: np.ndarray, ref: np.ndarray) -> None:
        trimmed = keep_largest_component(pred, foreground.labels)
        for step, cell in zip(steps, values, strict=True):
            for source, (before, after) in ((pred, ("raw", "own")),
                                            (trimmed, ("foreground", "foreground_own"))):
                dice, own = dice_before_after(source, ref, step)
                cell[before].append(dice)
                if after in cell:
                    cell[after].append(own)

    per_case(score, preds, refs)
    return [{state: Mean.of(v) for state, v in cell.items()} for cell in values]


def per_case(function: Callable[[np.ndarray, np.ndarray], T], preds: Sequence[np.ndarray],
             refs: Sequence[np.ndarray]) -> list[T]:
    """`function(pred, ref)` for each case in turn, one case's arrays held at a time: the next case is read
    once the last one's are let go (a loop's variables would hold them while the next are read; where the
    cases are on disk, `case_spill`, each is read when asked for)."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions, {len(refs)} references")
    return [function(preds[index], refs[index]) for index in range(len(preds))]


def _applied(preds: Sequence[np.ndarray], step: Step, store: SpilledArrays | None) -> Sequence[np.ndarray]:
    """`preds` after `step`: written into `store` case by case where given (`preds` may be `store` itself),
    else copies in memory."""
    if store is None:
        return [keep_largest_component(pred, step.labels) for pred in preds]
    for index in range(len(preds)):
        store[index] = keep_largest_component(preds[index], step.labels)
    return store


def decide(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], labels: Sequence[int],
           regions: Mapping[str, Sequence[int]] | None = None,
           store: SpilledArrays | None = None) -> Decision:
    """nnU-Net v2's decision on these cases (the module's docstring): `labels`, the task's foreground labels;
    `regions`, its regions, where it has any (then the candidates). `store`: where the result so far is kept
    case by case, as nnU-Net writes it to disk (an evaluation then holds one case at a time; `preds` and
    `refs` read from disk too, `case_spill`); without it, a copy of every case in memory."""
    foreground = Step("foreground", "foreground", tuple(int(v) for v in labels))
    steps = candidate_steps(labels, regions)
    scored = [Candidate(step, scores) for step, scores in zip(steps, _scores(steps, foreground, preds, refs),
                                                                strict=True)]
    if len(steps) == 1:
        return Decision.of(foreground, scored)
    current = preds
    if _foreground_applies(scored):
        current = _applied(current, foreground, store)
    candidates = []
    for candidate in scored:  # on the result so far
        pairs = per_case(partial(dice_before_after, step=candidate.step), current, refs)
        trial = Trial(Mean.of([p[0] for p in pairs]), Mean.of([p[1] for p in pairs]))
        candidates.append(Candidate(candidate.step, candidate.scores, trial))
        if trial.applied:
            current = _applied(current, candidate.step, store)
    return Decision.of(foreground, candidates)


def _run_trial(decision: Decision, index: int, foreground: bool, applied: list[bool]) -> Trial:
    """A run's numbers for candidate `index`'s trial on the pooled decision's result so far (`foreground`
    applied or not, `applied` the earlier candidates' steps): its own trial where its decision had applied the
    same steps, else its scores without the other candidates' steps (exact for labels: see the module)."""
    own = [c.trial.applied for c in decision.candidates[:index] if c.trial is not None]
    trial = decision.candidates[index].trial
    if trial is not None and decision.foreground_applied == foreground and own == applied:
        return trial
    scores = decision.candidates[index].scores
    return Trial(scores["foreground"], scores["foreground_own"]) if foreground else Trial(scores["raw"],
                                                                                           scores["own"])


def _pooled(decisions: Sequence[Decision]) -> Decision:
    first = decisions[0]
    scored = [Candidate(c.step, {state: Mean.pooled(d.candidates[i].scores[state] for d in decisions)
                                 for state in c.scores}) for i, c in enumerate(first.candidates)]
    if len(scored) == 1:
        return Decision.of(first.foreground, scored)
    foreground = _foreground_applies(scored)
    candidates: list[Candidate] = []
    for i, candidate in enumerate(scored):
        applied = [c.trial.applied for c in candidates if c.trial is not None]
        trials = [_run_trial(d, i, foreground, applied) for d in decisions]
        candidates.append(Candidate(candidate.step, candidate.scores, Trial(
            Mean.pooled(t.before for t in trials), Mean.pooled(t.after for t in trials))))
    return Decision.of(first.foreground, candidates)


AnyDecision: TypeAlias = "Decision | PerLabelDecision"


def decide_as(pipeline_version: int, preds: Sequence[np.ndarray], refs: Sequence[np.ndarray],
              labels: Sequence[int], regions: Mapping[str, Sequence[int]] | None = None,
              store: SpilledArrays | None = None) -> AnyDecision:
    """The decision a run of `pipeline_version` makes: nnU-Net v2's from `NNUNET_POSTPROCESS_FROM` (`store`:
    `decide`'s), each label on its own before (regions unused; it keeps no result so far)."""
    from medseg_bench.postprocess_per_label import decide_per_label

    if pipeline_version >= NNUNET_POSTPROCESS_FROM:
        return decide(preds, refs, labels, regions, store)
    return decide_per_label(preds, refs, labels)


def pooling_problem(decisions: Sequence[AnyDecision]) -> str | None:
    """Why the decisions cannot be pooled (decided by other procedures, or of other candidates); None if they
    can."""
    if len({type(d) for d in decisions}) > 1:
        return ("their runs decided by different procedures (each label on its own up to pipeline version "
                f"{NNUNET_POSTPROCESS_FROM - 1}, as nnU-Net v2 from version {NNUNET_POSTPROCESS_FROM})")
    tried = {(d.foreground, tuple(c.step for c in d.candidates))
             for d in decisions if isinstance(d, Decision)}
    return "their runs decided on different labels or regions" if len(tried) > 1 else None


def pooled(decisions: Sequence[AnyDecision]) -> AnyDecision:
    """One decision for an ensemble of runs (e.g. the folds of a configuration), each decided on its own
    held-out cases, as on their cases together (the module's docstring: exact for labels). Runs of pipeline
    version 13 and older pool as they did (`pooled_per_label`). Raises DataError for decisions
    `pooling_problem` refuses."""
    from medseg_bench.postprocess_per_label import PerLabelDecision, pooled_per_label

    if len(decisions) == 1:
        return decisions[0]
    problem = pooling_problem(decisions)
    if problem is not None:
        raise DataError(f"postprocessing decisions not pooled: {problem}")
    if isinstance(decisions[0], PerLabelDecision):
        return pooled_per_label([d for d in decisions if isinstance(d, PerLabelDecision)])
    return _pooled([d for d in decisions if isinstance(d, Decision)])


def describe(steps: Sequence[Step]) -> str:
    """The steps for a person, in order: 'the foreground, then label 1'."""
    return ", then ".join(step.title for step in steps)


def save_decision(decision: AnyDecision, folder: Path) -> Path:
    from medseg_bench.files import write_json_atomic

    path = folder / FILENAME
    write_json_atomic(path, decision.to_dict())
    return path


def decision_from_dict(data: Mapping[str, Any]) -> AnyDecision:
    """A decision as `to_dict` wrote it: nnU-Net v2's (a `format`), or a per-label one (pipeline version 13
    and older: `apply`)."""
    from medseg_bench.postprocess_per_label import PerLabelDecision

    return PerLabelDecision.from_dict(data) if "apply" in data else Decision.from_dict(data)


def load_decision(folder: Path) -> AnyDecision | None:
    """The run's decision, or None when the run was not postprocessed."""
    path = folder / FILENAME
    if not path.is_file():
        return None
    from medseg_bench.files import parse_json

    try:
        return decision_from_dict(parse_json(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: malformed postprocessing decision ({exc})") from None
