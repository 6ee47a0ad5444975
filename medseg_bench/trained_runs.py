"""The runs `predict` takes: a run folder or a checkpoint in one, read and checked before any network is
loaded (a spec of this version; finished, or refused with what to do; the plan and patch it trained with; its
postprocessing decision), an ensemble's runs checked to be of one task and plan, and each run's network built
with its weights, as it was trained (`member`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_bench.errors import DataError, UsageError
from medseg_bench.files import read_json_object


def run_folder_and_checkpoint(run_or_checkpoint: Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) for a run folder (its last.ckpt) or a checkpoint inside a run folder."""
    if run_or_checkpoint.is_dir():
        folder, checkpoint = run_or_checkpoint, run_or_checkpoint / "checkpoints" / "last.ckpt"
    elif run_or_checkpoint.is_file():
        checkpoint = run_or_checkpoint
        folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    else:
        raise UsageError(f"{run_or_checkpoint}: no such run folder or checkpoint")
    if not (folder / "spec.json").is_file():
        if run_or_checkpoint.is_dir():
            raise DataError(f"{folder}: not a run folder (no spec.json in it: a run folder is "
                            "RESULTS/TASK/RUN_ID)")
        # the file given, named: its folder alone was, as if the user had given that
        raise DataError(f"{run_or_checkpoint}: not a run's checkpoint (no spec.json in {folder}: give a run "
                        "folder, RESULTS/TASK/RUN_ID, or a checkpoint in its checkpoints/)")
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint missing ({_why_no_checkpoint(folder)})")
    return folder, checkpoint


def _why_no_checkpoint(folder: Path) -> str:
    """Why a run folder has no checkpoint, by the run's state: deleted since it finished, it failed without
    one (with its error: it said "the run has not finished an epoch" of a run that diverged after one), it is
    being trained or queued, or it has not finished an epoch."""
    from medseg_bench.results import run_state
    from medseg_bench.run_folder import read_status

    state = run_state(folder)
    if state in ("done", "damaged"):  # it said "the run has not finished an epoch"
        return ("deleted since the run finished; restore it, or move the run folder away and train it again "
                "with `medseg-bench sweep`")
    if state == "failed":
        error = str(read_status(folder).get("error") or "").strip().splitlines()
        said = f": {error[0]}" if error else ""
        return (f"the run failed without one{said}; see {folder / 'run.log'}; the same `medseg-bench sweep` "
                "command retries it")
    if state == "running":
        return "a process is training the run now and has not saved one yet"
    if state == "queued":
        return "the run is submitted to SLURM and has not saved one yet"
    return "the run has not finished an epoch"


def _epochs_in(checkpoint: Path, iters_per_epoch: int) -> int | None:
    """The epochs the checkpoint's training steps make, or None where it cannot be read (it is mapped, not
    read: its tensors stay on disk)."""
    from medseg_bench.checkpoints import mapped_checkpoint
    from medseg_bench.checks import is_whole

    try:
        state = mapped_checkpoint(checkpoint)
    except Exception:  # noqa: BLE001 - a damaged checkpoint: loading it says so, with or without this
        return None
    step = state.get("global_step") if isinstance(state, dict) else None
    return step // iters_per_epoch if isinstance(step, int) and is_whole(step) else None


def unfinished(folder: Path, checkpoint: Path, spec: Any) -> tuple[str, str] | None:
    """(what, advice) for a run that has not finished: "FOLDER: not finished (STATE, epoch N of M)" and what
    to do; None for a finished one (done, or done and a file lost since: its checkpoint is final all the
    same)."""
    from medseg_bench.results import run_state

    state = run_state(folder)
    if state in ("done", "damaged"):
        return None
    epochs = _epochs_in(checkpoint, spec.iters_per_epoch)
    epoch = f", epoch {epochs} of {spec.epochs}" if epochs is not None else ""
    if state == "running":
        advice = "a process is training it now; wait until it is done"
    elif state == "queued":
        advice = ("it is submitted to SLURM (queued.json); wait until its job has finished it (`medseg-bench "
                  "status` says whether the job is still queued)")
    elif state == "failed":
        advice = f"it failed (see {folder / 'run.log'}); the same `medseg-bench sweep` command retries it"
    elif epochs is not None and epochs >= spec.epochs:
        advice = ("it trained but was not evaluated; finish it with `medseg-bench sweep` (the same command "
                  "evaluates it)")
    else:
        advice = ("its last checkpoint is mid-training; finish it with `medseg-bench sweep` (the same "
                  "command resumes it)")
    return f"{folder}: not finished ({state}{epoch})", advice


def check_finished(run: Path, checkpoint: Path, spec: Any, allow_unfinished: bool,
                   warn: Callable[[str], object]) -> None:
    """Refuse a run that has not finished (exit 2), or, with --allow-unfinished, `warn` that it predicts with
    it all the same."""
    found = unfinished(run, checkpoint, spec)
    if found is None:
        return
    what, advice = found
    if not allow_unfinished:
        raise UsageError(f"{what}: {advice}, or pass --allow-unfinished")
    warn(f"{what}: predicting with {checkpoint.name} all the same (--allow-unfinished)")


def trained_patch(folder: Path, spec: Any) -> tuple[int, ...] | None:
    """The patch the run trained with (its setup.json), which the network's shape may depend on (dynunet): a
    run without a summary would otherwise take it from a plan.json that may have changed since."""
    from medseg_bench.results import SETUP_NAME

    path = folder / SETUP_NAME
    if not path.is_file():
        return None  # a run from before setup.json: its spec and plan say it
    patch = read_json_object(path).get("patch_size")
    sides = 2 if spec.dims == "2d" else 3
    if not (isinstance(patch, list) and len(patch) == sides
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in patch)):
        raise DataError(f"{path}: patch_size must be {sides} positive whole numbers, not {patch!r}")
    return tuple(patch)


def trained_plan(folder: Path, task: str, data_dir: Path | None = None) -> Any:
    """The plan the run trained with: from its summary.json, else the task's current plan.json (in
    `data_dir`, default the settings')."""
    from medseg_bench.data.plan import Plan, preprocessing_change
    from medseg_bench.results import SETUP_NAME
    from medseg_bench.settings import get_settings

    summary = folder / "summary.json"
    root = data_dir or get_settings().data_dir
    source = summary if summary.is_file() else root / "preprocessed" / task / "plan.json"
    if not source.is_file():
        raise DataError(f"{folder}: run has no summary.json and {source} does not exist; cannot normalise")
    data = read_json_object(source)
    try:
        plan = Plan.from_dict(data["plan"] if source == summary else data)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{source}: malformed plan ({exc})") from None
    setup = folder / SETUP_NAME
    trained = read_json_object(setup).get("preprocessing") if source != summary and setup.is_file() else None
    change = preprocessing_change(trained, plan.preprocessing) if isinstance(trained, dict) else ""
    if change:  # an unfinished run, and plan.json edited since it started: its images would be preprocessed
        raise DataError(f"{setup}: the run trained with {change}; restore plan.json to predict with it")
    return plan


@dataclass
class TrainedRun:
    """A run given to predict, read (spec, plan, postprocessing decision) but its network not yet loaded."""

    folder: Path
    checkpoint: Path
    spec: Any  # RunSpec
    plan: Any  # Plan
    decision: Any  # postprocess.AnyDecision | None


def read_run(run_or_checkpoint: Path, postprocess: bool, allow_unfinished: bool = False,
             warn: Callable[[str], object] = lambda line: None, data_dir: Path | None = None) -> TrainedRun:
    """A run given to predict (its folder, or a checkpoint in it), read and checked: a spec of this version,
    finished (or `allow_unfinished`), the plan it trained with; `postprocess`: its decision too."""
    from medseg_bench.checkpoints import foreign_problem
    from medseg_bench.postprocess import load_decision
    from medseg_bench.spec import RunSpec

    folder, checkpoint = run_folder_and_checkpoint(run_or_checkpoint)
    spec_data = read_json_object(folder / "spec.json")
    spec_data.pop("run_id", None)
    try:
        spec = RunSpec.checked(spec_data)
    except UsageError as exc:
        raise DataError(f"{folder / 'spec.json'}: not a run spec of this version ({exc})") from None
    check_finished(folder, checkpoint, spec, allow_unfinished, warn)
    foreign = foreign_problem(checkpoint, folder.name)  # copied in from another run: not this run's weights
    if foreign is not None:
        raise DataError(f"{foreign}; predict with that run's own folder")
    check_labels(folder, spec)
    return TrainedRun(folder, checkpoint, spec, trained_plan(folder, spec.task, data_dir),
                load_decision(folder) if postprocess else None)


def check_labels(folder: Path, spec: Any) -> None:
    """DataError, before any network is loaded, where the task file's labels are not those the run trained on
    (`regions.labels_change`): its channels would be painted as other labels."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.regions import labels_change
    from medseg_bench.results import SETUP_NAME

    task = get_task(spec.task)
    setup = folder / SETUP_NAME
    change = labels_change(read_json_object(setup) if setup.is_file() else {}, spec.task_version, task)
    if change:
        raise DataError(f"{setup}: {change}; restore the task file's labels ({task.source_file}) to predict "
                        "with this run")


def member(run: TrainedRun, tta: bool | None) -> Any:
    """The run's network with its weights, and how it predicts (inference.Member), as it was trained."""
    from medseg_bench.checkpoints import load_weights
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.plan import model_spacing
    from medseg_bench.inference import Member
    from medseg_bench.models import ModelInputs, build_model, fit_patch
    from medseg_bench.regions import output_channels, regions_change, task_region_labels
    from medseg_bench.results import SETUP_NAME
    from medseg_bench.training import run_slice_axis, run_tta, weights_finite

    spec, plan, task = run.spec, run.plan, get_task(run.spec.task)
    patch = trained_patch(run.folder, spec) or (tuple(spec.patch_size) if spec.patch_size else fit_patch(
        spec.arch, spec.dims, plan.patch_2d if spec.dims == "2d" else plan.patch_3d))
    spacing = model_spacing(plan.target_spacing, spec.dims)
    # a region run: a channel per region, painted as the task file orders them (refused where they cannot be,
    # or where they are not the regions it trained on)
    paint = task_region_labels(task) if spec.target == "regions" else None
    setup = run.folder / SETUP_NAME
    change = regions_change(read_json_object(setup), task) if paint and setup.is_file() else None
    if change:
        raise DataError(f"{setup}: {change}; restore the task file's regions ({task.source_file}) to predict "
                        "with this run")
    inputs = ModelInputs(task.num_channels, output_channels(spec, task), patch, spec.encoder, spacing=spacing,
                         pipeline_version=spec.pipeline_version)
    net = load_weights(build_model(spec.arch, spec.dims, inputs), run.checkpoint)
    if not weights_finite(net):  # a run that diverged, finished before such runs failed: it predicted NaN
        raise DataError(f"{run.checkpoint}: the network's weights are not finite (NaN/inf): run "
                        f"{spec.run_id} diverged in training; move its folder away and train it again with a "
                        "lower --lr")
    return Member(net, spec.dims, tuple(patch), run_tta(spec, tta), run_slice_axis(spec, plan.target_spacing),
                  spec.pipeline_version, spec.own_slice_spacing, paint)


def check_ensemble(runs: list[TrainedRun]) -> None:
    """Runs of one ensemble: each run's checkpoint once, one task, one preprocessing, one target (their
    probabilities are averaged: a softmax over labels and regions' sigmoids are not one space). Checked before
    any network is loaded."""
    first = runs[0]
    seen: dict[tuple[str, str], Path] = {}
    for run in runs:
        key = (run.spec.run_id, run.checkpoint.name)  # a copy of a run folder is the same run
        if key in seen:
            raise UsageError(f"{run.checkpoint}: the same run and checkpoint as {seen[key]}; an ensemble "
                             "takes each once")
        seen[key] = run.checkpoint
        if run.spec.task != first.spec.task:
            raise UsageError(f"{run.folder}: a run of {run.spec.task}, but {first.folder} is of "
                             f"{first.spec.task}; an ensemble takes runs of one task")
        if run.spec.target != first.spec.target:
            raise UsageError(f"{run.folder}: a run with target {run.spec.target}, but {first.folder} has "
                             f"target {first.spec.target}; an ensemble averages one kind of probabilities "
                             "(label softmax or region sigmoids): give runs of one target")
        if run.plan.preprocessing_hash != first.plan.preprocessing_hash:
            raise UsageError(f"{run.folder}: trained on another preprocessing of {run.spec.task} than "
                             f"{first.folder} (plan {run.plan.preprocessing_hash}, not "
                             f"{first.plan.preprocessing_hash}); an ensemble takes runs of one plan")


def ensemble_decision(runs: list[TrainedRun], say: Callable[[str], object] = lambda line: None) -> Any:
    """The postprocessing decision of the runs, pooled; None, with a note to `say`, when one of several has
    none, or they cannot be pooled (`postprocess.pooling_problem`: runs of pipeline version 13 and 14 on)."""
    from medseg_bench.postprocess import pooled, pooling_problem

    missing = [run.folder for run in runs if run.decision is None]
    if len(missing) == len(runs):
        return None
    if missing:
        say(f"postprocessing: none, {missing[0]} has no decision ({len(missing)} of {len(runs)} runs)")
        return None
    problem = pooling_problem([run.decision for run in runs])
    if problem is not None:
        say(f"postprocessing: none, {problem}")
        return None
    return pooled([run.decision for run in runs])
