"""`sweep --dry-run`: the expanded runs with their state, and what the rest will cost (from finished runs)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg_bench.checks import are_whole, is_whole
from medseg_bench.errors import DataError, ResultsError, UsageError
from medseg_bench.finished import finished_damage, read_finished_run
from medseg_bench.results import check_run_folders, checked_state, finished_runs, run_dir
from medseg_bench.run_folder import is_done
from medseg_bench.spec import RunSpec, TaskSpec
from medseg_bench.sweep.worker import skip_note, task_plan

if TYPE_CHECKING:
    from medseg_bench.data.plan import Plan
    from medseg_bench.data.preprocess import PlannedTask, PreparedTask


def settings_text(spec: RunSpec) -> str:
    parts = [f"epochs={spec.epochs}", f"iters={spec.iters_per_epoch}", f"opt={spec.optimizer}"]
    for name in ("max_minutes", "batch_size", "patch_size", "lr", "class_weights"):
        value = getattr(spec, name)
        if isinstance(value, tuple):  # patch 32x48x32, class weights 1,2.5,4
            value = ("x" if name == "patch_size" else ",").join(f"{v:g}" for v in value)
        if value is not None:
            parts.append(f"{name}={value}")
    parts += [name for name in ("pretrained", "tta", "postprocess") if getattr(spec, name)]
    return " ".join(parts)


Cost = tuple[float, float, float | None]  # seconds per iteration, evaluation seconds, voxels per iteration


def _voxels_per_iteration(batch: object, patch: object) -> float | None:
    """Batch x patch voxels, the work of one training step (None when either is unknown)."""
    sides = list(patch) if isinstance(patch, tuple) else patch
    if not is_whole(batch, least=1) or not are_whole(sides, least=1):
        return None
    return float(math.prod([batch, *sides]))  # type: ignore[list-item, misc]


# A finished run's folder -> its spec and summary, or None when it is damaged (its cost is not to be trusted)
Finished = dict[Path, "tuple[dict[str, Any], dict[str, Any]] | None"]


def read_finished(results_dir: Path, known: Finished | None = None) -> Finished:
    """Every finished run under `results_dir`, read whole as `report` and `status` read it (`checked_state`
    of such a folder is "done" exactly when it is read here), once for its state and its cost: those in
    `known` (read already) are not read again."""
    finished: Finished = dict(known or {})
    for folder in finished_runs(results_dir):
        if folder not in finished:
            finished[folder] = _read_one(folder)
    return finished


def _read_one(folder: Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    try:
        spec, summary, _ = read_finished_run(folder)
    except ResultsError:
        return None
    return spec, summary


def observed_costs(finished: Finished) -> dict[tuple[str, str], list[Cost]]:
    """(dims, arch) -> the per-iteration and evaluation cost of the `finished` runs that are not damaged."""
    costs: dict[tuple[str, str], list[Cost]] = defaultdict(list)
    for spec, summary in filter(None, finished.values()):
        cost, plan, dims, arch = (summary.get("cost") or {}, summary.get("plan") or {}, spec.get("dims"),
                                  spec.get("arch"))
        per_epoch, iters = _number(cost.get("time_per_epoch_s")), spec.get("iters_per_epoch") or 50
        train_s, epochs_done = _number(cost.get("train_time_s")), _number(cost.get("epochs_done"))
        if per_epoch is None and train_s and epochs_done:
            per_epoch = train_s / epochs_done
        if per_epoch and is_whole(iters, least=1) and isinstance(dims, str) and isinstance(arch, str):
            voxels = _voxels_per_iteration(spec.get("batch_size") or plan.get(f"batch_{dims}"),
                                           spec.get("patch_size") or plan.get(f"patch_{dims}"))
            costs[(dims, arch)].append((per_epoch / iters, _number(cost.get("eval_time_s")) or 0.0, voxels))
    return costs


def _number(value: object) -> float | None:
    """`value` when a finite number (a run's summary.json edited by hand may hold anything), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def estimate_seconds(specs: list[RunSpec], results_dir: Path, finished: Finished | None = None,
                     data_dir: Path | None = None) -> tuple[float, int] | None:
    """Estimated seconds for `specs`, from finished runs of the same (dims, arch), else all finished runs
    (`finished`, those under `results_dir` when not given).

    Returns (seconds, how many specs had a same-(dims, arch) basis), or None without any finished run.
    """
    costs = observed_costs(read_finished(results_dir) if finished is None else finished)
    pooled = [c for values in costs.values() for c in values]
    if not pooled:
        return None
    total, matched = 0.0, 0
    for spec in specs:
        basis = costs.get((spec.dims, spec.arch))
        matched += basis is not None
        basis = basis or pooled
        # Per iteration, scaled by the work of a step where both the run (its spec, else its task's plan
        # in `data_dir`: a plan.json edited to a patch 700 times larger was estimated as the runs before
        # it) and a finished run give it.
        batch, patch = spec.batch_size, spec.patch_size
        plan = task_plan(data_dir, spec.task) if data_dir is not None and not (batch and patch) else None
        voxels = _voxels_per_iteration(batch or getattr(plan, f"batch_{spec.dims}", None),
                                       patch or getattr(plan, f"patch_{spec.dims}", None))
        per_iteration = sum(c[0] * (voxels / c[2] if voxels and c[2] else 1.0) for c in basis) / len(basis)
        evaluation = sum(c[1] for c in basis) / len(basis)
        epochs_s = per_iteration * spec.iters_per_epoch * spec.epochs
        if spec.max_minutes:
            epochs_s = min(epochs_s, spec.max_minutes * 60)
        total += epochs_s + evaluation
    return total, matched


@dataclass
class DryRun:
    """What `sweep --dry-run` prints, and the exit code the sweep would end with (`exit_code`): that of what
    it would stop on before training that is wrong with the sweep or its plan (`stop_code`: a plan.json it
    cannot read, 3, a data error; a run that cannot train on its plan, 2, a usage error), else 5 where it
    would fail runs (`failed`: interrupted runs that cannot resume, failed before any trains), else 6 where
    it would end on finished runs found damaged (`damaged`), else 0. A task not fetched yet is such a stop
    (3, as the sweep's): its line says how to fetch it, and the other lines are printed as ever, so a dry
    run before fetching still sizes the sweep (it exited 0 there until 2026-12-03)."""

    lines: list[str] = field(default_factory=list)
    stop_code: int = 0
    failed: int = 0
    damaged: int = 0

    def stop(self, line: str, exit_code: int) -> None:
        self.lines.append(line)
        self.stop_code = self.stop_code or exit_code  # the first: where the sweep stops

    @property
    def exit_code(self) -> int:
        """As `local.run_sweep` ends: a stop before training first, then exit 5 for failed runs (its error
        names them; the damaged ones a line), then 6 for damaged runs alone."""
        from medseg_bench.errors import ResultsError, RunError

        if self.stop_code:
            return self.stop_code
        if self.failed:
            return RunError.exit_code
        return ResultsError.exit_code if self.damaged else 0

    @property
    def verdict(self) -> str:
        """The error line the dry run ends with on stderr where `exit_code` is not 0: how the sweep would
        end, the lines above saying why (until 2026-12-04 it exited 2, 3, 5 or 6 with stdout alone)."""
        code = self.exit_code
        if self.stop_code:
            return f"the sweep would stop before training (exit {code}): see the line that says so above"
        if self.failed:
            return f"the sweep would fail {_runs(self.failed)} (exit {code}): see the lines above"
        return f"the sweep would find {_runs(self.damaged, 'finished run')} damaged (exit {code}): see above"


def _runs(count: int, noun: str = "run") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _unfetched(tasks: list[str], data_dir: Path, out: DryRun) -> None:
    """A line for each task with runs left that is not fetched into `data_dir`, or whose fetch marker is
    damaged: the sweep stops on either (exit 3, a data error), so the dry run ends with that code."""
    from medseg_bench.data.fetch import is_complete, read_marker, unfetched

    for task in tasks:
        if not is_complete(data_dir / task):
            error = unfetched(data_dir / task, stop="the sweep would stop")
            out.stop(str(error), error.exit_code)
            continue
        try:
            read_marker(data_dir / task)  # the excluded cases the sweep reads: it listed the runs, exit 0
        except DataError as exc:
            out.stop(f"{task}: the sweep would stop: {exc}", exc.exit_code)


def _refused(runs: list[RunSpec], results_dir: Path, data_dir: Path, out: DryRun,
             fail_fast: bool = False) -> list[RunSpec]:
    """`runs` less the interrupted runs the sweep would fail before it builds the cache, each with a line
    saying why (`local.refuse_unresumable_runs`: `worker.early_refusal`, against the task's plan.json and
    splits as they are, or as the sweep would make the splits, and the run's last checkpoint; nothing is
    written), counted in `out.failed`. With `fail_fast`, as the sweep, the first such run is the last looked
    at, and none goes ahead. A task not planned yet is planned by the sweep, which checks its runs then; one
    it would stop on is said so by `_unplannable`."""
    from medseg_bench.sweep.worker import LAST_CHECKPOINT, early_refusal

    planned: dict[tuple[str, int], PlannedTask | None] = {}
    left = []
    for spec in runs:
        folder = run_dir(results_dir, spec)
        if (folder / LAST_CHECKPOINT).is_file():
            key = (spec.task, spec.num_folds)
            if key not in planned:
                planned[key] = _planned_as_is(spec.task, spec.num_folds, data_dir)
            task = planned[key]
            problem = early_refusal(spec, task, folder) if task is not None else None
            if problem:
                out.lines.append(f"{spec.task}/{spec.run_id}: the sweep would fail it: {problem}")
                out.failed += 1
                if fail_fast:
                    out.lines.append("--fail-fast: the sweep would stop at that run, no other run trains")
                    return []
                continue
        left.append(spec)
    return left


def _planned_as_is(task: str, num_folds: int, data_dir: Path) -> PlannedTask | None:
    """The plan and splits an interrupted run of `task` would be checked against (`preprocess.plan_task`),
    read, not made: None where the task is not fetched or planned yet, or where the sweep would stop on
    them (said by `_unplannable` and `_unsplittable`)."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.plan import plan_for_task, read_plan
    from medseg_bench.data.preprocess import PlannedTask, usable_cases
    from medseg_bench.data.splits import load_or_make_splits, make_splits, splits_file

    root = data_dir / "preprocessed" / task
    path = root / "plan.json"
    if not is_complete(data_dir / task) or not path.is_file():
        return None
    try:
        task_spec = get_task(task)
        plan = plan_for_task(read_plan(path), task_spec, path)
        case_ids = sorted(c.case_id for c in usable_cases(task_spec, data_dir))
        if splits_file(root, num_folds).is_file():  # read and checked as the sweep reads it
            splits = load_or_make_splits(root, case_ids, num_folds, task_spec.group_pattern)
        else:  # as the sweep would make it
            splits = make_splits(case_ids, num_folds, task_spec.group_pattern)
    except DataError:
        return None
    return PlannedTask(task_spec, plan, root, case_ids, splits)


def _unfingerprintable(runs: list[RunSpec], data_dir: Path, out: DryRun) -> None:
    """A line for each fetched task not planned yet whose fingerprint the sweep would compute (none saved of
    its cases, `plan.saved_fingerprint`) and stop on: a case that cannot be read even alone in the memory
    this process may use (`fingerprint.fingerprint` through `read_memory.reads_at_once`), found from the
    cases' headers as the sweep finds it; nothing is read past them, nothing written. A task planned already
    is not fingerprinted again (its cache's memory is `_check_cache_memory`'s)."""
    from medseg_bench.checks import usable_memory
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.plan import saved_fingerprint
    from medseg_bench.data.preprocess import usable_cases
    from medseg_bench.data.read_memory import FINGERPRINT, check_all_read_fit, stored_cases

    memory = usable_memory()
    for task in sorted({spec.task for spec in runs}):
        root = data_dir / "preprocessed" / task
        if memory is None or not is_complete(data_dir / task) or (root / "plan.json").is_file():
            continue
        if any(line.startswith(f"{task}: the sweep would stop: ") for line in out.lines):
            continue  # on its marker, first
        try:
            cases = usable_cases(get_task(task), data_dir)
        except DataError:  # its case list: not the fingerprint's to say
            continue
        if saved_fingerprint(cases, root) is not None:
            continue
        try:
            check_all_read_fit(FINGERPRINT, stored_cases(cases), memory)
        except DataError as exc:
            out.stop(f"{task}: the sweep would stop: {exc}", exc.exit_code)


def _unplannable(runs: list[RunSpec], data_dir: Path, out: DryRun, evaluations: bool = True) -> None:
    """A line for each task whose plan.json, where the sweep finds one, it would stop on: the plan itself
    (`read_plan`), a run that cannot train on it (`local.check_runs`), a case its cache build cannot fit
    in memory (`_check_cache_memory`), or, with `evaluations` (the local launcher's check), a held-out case
    a run's evaluation cannot predict in memory (`_check_evaluation_memory`): the first of these the sweep
    stops on, in its order. A task not planned yet is planned by the sweep,
    which checks its runs then."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.plan import plan_for_task, read_plan
    from medseg_bench.data.preprocess import PreparedTask
    from medseg_bench.sweep.local import check_runs

    planned: dict[str, PreparedTask] = {}
    for task in sorted({spec.task for spec in runs}):
        path = data_dir / "preprocessed" / task / "plan.json"
        if not path.is_file():
            continue
        try:  # the checks read the task and its plan alone: no cache, no split
            task_spec = get_task(task)  # a plan of another task, or of other channels: refused
            plan = plan_for_task(read_plan(path), task_spec, path)
            planned[task] = PreparedTask(task_spec, plan, path.parent, [], [])
            mine = [spec for spec in runs if spec.task == task]
            # in the sweep's order (`local.run_sweep`), all before it builds anything: the runs on the plan,
            # the caches it would build, the runs' evaluations
            check_runs(mine, lambda spec: planned[spec.task])
            own_slices = any(spec.own_slice_spacing for spec in mine)
            _check_cache_memory(task_spec, plan, path, data_dir, own_slices)
            if evaluations:
                _check_evaluation_memory(mine, planned[task], data_dir)
            _caches_to_build(task_spec, plan, path, data_dir, own_slices, out)
        except (DataError, UsageError) as exc:
            out.stop(f"{task}: the sweep would stop: {exc}", exc.exit_code)


def _caches_to_build(task: TaskSpec, plan: Plan, plan_file: Path, data_dir: Path, own_slices: bool,
                     out: DryRun) -> None:
    """A line for each cache of a planned task the sweep would build before its first run trains (a plan.json
    edited to another target spacing: minutes to hours on a large task, which the cost below leaves out)."""
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.preprocess import caches_to_build, usable_cases

    if not is_complete(data_dir / task.name):
        return
    cases = usable_cases(task, data_dir)
    target = getattr(plan, "target_spacing", None) or plan.median_spacing
    count = f"{len(cases)} case{'' if len(cases) == 1 else 's'}"
    for cache_dir, own in caches_to_build(cases, plan, plan_file.parent, own_slices):
        which = (f"the cache of 2D runs that keep their slices ({count}, each at its own slice spacing"
                 if own else f"its cache ({count} at {' x '.join(f'{v:g}' for v in target)} mm")
        out.lines.append(f"{task.name}: the sweep builds {which}, {cache_dir}) first; not in the cost below")


def _check_cache_memory(task: TaskSpec, plan: Plan, plan_file: Path, data_dir: Path,
                        own_slices: bool) -> None:
    """The DataError the sweep stops on before it builds the cache (`preprocess.check_caches_fit`, which
    `local.check_cache_memory` asks): a case of a cache not built yet that cannot be preprocessed in the
    memory this process may use. A task not fetched is said so by `_unfetched`."""
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.preprocess import check_caches_fit, usable_cases

    if is_complete(data_dir / task.name):
        check_caches_fit(usable_cases(task, data_dir), plan, plan_file.parent, own_slices)


def _check_evaluation_memory(runs: list[RunSpec], prepared: PreparedTask, data_dir: Path) -> None:
    """The DataError the sweep stops on before any run trains (`local.check_evaluation_memory`): a held-out
    case a run's evaluation cannot predict in the memory this process may use, with the folds the sweep
    will use: the task's splits file where it exists, else the splits it would make."""
    import dataclasses

    from medseg_bench.checks import usable_memory
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.preprocess import usable_cases
    from medseg_bench.data.splits import load_or_make_splits, make_splits, splits_file
    from medseg_bench.inference_memory import check_evaluations

    task = prepared.task
    if not runs or not is_complete(data_dir / task.name):
        return
    case_ids = sorted(case.case_id for case in usable_cases(task, data_dir))
    for folds in sorted({spec.num_folds for spec in runs}):
        path = splits_file(prepared.cache_dir, folds)
        try:  # read only: a file not there is not made here
            splits = (load_or_make_splits(prepared.cache_dir, case_ids, folds, task.group_pattern)
                      if path.is_file() else make_splits(case_ids, folds, task.group_pattern))
        except DataError:  # said by `_unsplittable`, which a bad splits file stops on
            continue
        check_evaluations([spec for spec in runs if spec.num_folds == folds],
                          dataclasses.replace(prepared, splits=splits), data_dir, usable_memory())


def _unsplittable(runs: list[RunSpec], data_dir: Path, out: DryRun) -> None:
    """A line for each split of a fetched task the sweep would stop on: a splits file of the user's
    (`splits_<k>fold.json`) that is not k folds of usable cases, or, where there is none, k folds the sweep
    cannot make (fewer usable cases, or patients, than folds). Read only: a missing file is not made here."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import is_complete
    from medseg_bench.data.preprocess import usable_cases
    from medseg_bench.data.splits import load_or_make_splits, make_splits, splits_file

    for task in sorted({spec.task for spec in runs}):
        root = data_dir / "preprocessed" / task
        wanted = sorted({spec.num_folds for spec in runs if spec.task == task})
        paths = {k: splits_file(root, k) for k in wanted}
        if not is_complete(data_dir / task):
            continue
        if any(line.startswith(f"{task}: the sweep would stop: ") for line in out.lines):
            continue  # on its marker or plan, first
        try:
            task_spec = get_task(task)
            case_ids = sorted(c.case_id for c in usable_cases(task_spec, data_dir))
            for k, path in paths.items():
                if path.is_file():  # checked as the sweep reads it
                    load_or_make_splits(root, case_ids, k, task_spec.group_pattern)
                else:  # as the sweep would make it
                    make_splits(case_ids, k, task_spec.group_pattern)
        except DataError as exc:
            out.stop(f"{task}: the sweep would stop: {exc}", exc.exit_code)


def dry_run_lines(runs: list[RunSpec], results_dir: Path, data_dir: Path, launcher: str = "local",
                  fail_fast: bool = False) -> DryRun:
    """What `sweep` with `launcher` (and `fail_fast`) would do with `runs`, and the code it would end with
    (`DryRun.exit_code`). A SLURM submission does not check the held-out cases' evaluation against this
    machine's memory: each job checks them on its node, whose memory (`--mem-gb`) is not this machine's."""
    out = DryRun()
    lines = out.lines
    states: Counter[str] = Counter()
    todo, running = [], set[RunSpec]()
    finished: Finished = {}  # the sweep's own finished runs; the others are read only for a cost to estimate
    check_run_folders(results_dir, runs)  # the sweep would stop on it
    for spec in runs:
        folder = run_dir(results_dir, spec)
        if is_done(folder) or finished_damage(folder):  # finished: read whole, as `finished_runs` finds it
            finished[folder] = _read_one(folder)
            state = "done" if finished[folder] else "damaged"
        else:
            state, _ = checked_state(folder)
        states[state] += 1
        out.damaged += state == "damaged"
        if state not in ("done", "damaged"):  # damaged: never trained again
            todo.append(spec)
        if state == "running":  # the sweep leaves it to the process that holds it
            running.add(spec)
        lines.append(f"{state:8s} {spec.task}/{spec.run_id}  {settings_text(spec)}")
        note = skip_note(spec, data_dir, folder) if state == "done" else None
        if note:  # as the sweep's skip line says it: a plan or the data changed since the run trained
            lines.append(f"{'':8s} {note}")
    runs_word = "run" if len(runs) == 1 else "runs"
    lines.append(f"{len(runs)} {runs_word}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    kept = set(_refused([spec for spec in todo if spec not in running], results_dir, data_dir, out,
                        fail_fast))
    # those the sweep goes on with: none where --fail-fast stops it at a run it fails
    todo = [] if fail_fast and out.failed else [spec for spec in todo if spec in kept or spec in running]
    _unfetched(sorted({spec.task for spec in todo}), data_dir, out)
    _unfingerprintable(todo, data_dir, out)
    _unplannable(todo, data_dir, out, evaluations=launcher == "local")
    _unsplittable(todo, data_dir, out)
    estimate = estimate_seconds(todo, results_dir, read_finished(results_dir, finished),
                                data_dir) if todo else (0.0, 0)
    if not todo:  # it said "cost of the 0 runs left: about 0 s on one worker (0 estimated ..., 0 from ...)"
        lines.append("cost: none, no run left to train")
    elif estimate is None:
        lines.append(f"cost: no finished runs under {results_dir} to estimate from")
    else:
        seconds, matched = estimate
        left = f"{len(todo)} run" + ("" if len(todo) == 1 else "s")
        lines.append(f"cost of the {left} left: about {_hours(seconds)} on one worker ({matched} estimated "
                     f"from the same dims and arch, {len(todo) - matched} from all finished runs)")
    return out


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
