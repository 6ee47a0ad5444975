"""The results store: one folder per run, `<results_dir>/<task>/<run_id>/`; the folders are the truth.

Run folder:
    spec.json        the full RunSpec (and run id)
    status.json      {"state": running|done|failed, ...}, written atomically (none yet: pending)
    heartbeat.json   refreshed every few seconds while a process works on the run (pid, host, epoch, loss)
    events.jsonl     one line per event: start (from scratch) | resume, with the attempt's git revision and
                     package versions; then done | failed | interrupted; each with time, pid and host
    .lock            the per-run lock file (see locks.py)
    queued.json      the SLURM job id, when the run was submitted to SLURM
    env.json         package versions, Python, platform, host, git revision, CPU (model, the instruction set
                     torch uses and the variables capping it), torch threads, GPU name
    splits.json      the fold's train/val case ids
    setup.json       the patch and batch size and preprocessing the run started with (a resumed run is held
                     to them, and to its splits.json), and how its training images are stored (orientation,
                     e.g. "RAS", for predict's warning; absent in runs started before 2026-12-02)
    run.log          the run's log
    worker.log       a `--jobs` worker's output, when a sweep ran the run in one
    checkpoints/     last.ckpt, best.ckpt
    logs/            CSV (and TensorBoard) training logs (`.metrics.before_resume.csv` while a resumed
                     attempt's log is merged)
    metrics.csv      per case and label scores on the held-out fold (written before status becomes done)
    predictions/     the held-out cases' label maps as scored, `<case>.nii.gz` in their label file's geometry
                     (written into `.predictions.partial/`, renamed when complete)
    postprocessing.json  the largest-component decision per label (runs with `postprocess`), which predict
                     applies
    summary.json     means of dice, jaccard, hd95, nsd (no nsd in runs finished before 2026-12-01), per-label
                     Dice, case count, metric settings, the plan (which report and predict read), TTA and
                     postprocessing, cost (params, wall and evaluation time, time per epoch, epochs done,
                     device, peak memory, the epoch a resume started at)
    learning_curves.png

`<results_dir>/index.parquet` is a table of every finished run's per-case scores, rebuilt from the folders;
`<results_dir>/.slurm/` holds submitit's job files and logs, `.slurm-submit.lock` serialises submissions.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseg_bench.checks import are_whole, is_number, is_whole, shown
from medseg_bench.data.io import (
    file_in_the_way,
    load_json_object,
    private_temp,
    remove_dead_writers_temps,
    write_json_atomic,
)
from medseg_bench.errors import DamagedRunError, ResultsError
from medseg_bench.locks import exclusive_folder, is_locked
from medseg_bench.spec import RunSpec, run_id_problem

STATES = ("pending", "running", "done", "failed")
# What a sweep shows for a run: STATES, plus `partial` (interrupted, has a checkpoint: it resumes) and
# `queued` (submitted to SLURM, not started yet).
# `damaged`: it finished, but a file it wrote is missing or unreadable now; it is never trained again.
DISPLAY_STATES = ("done", "running", "queued", "partial", "pending", "failed", "damaged")
SETUP_NAME = "setup.json"
QUEUED_NAME = "queued.json"  # {"job_id", "time"}: written by the SLURM launcher when it submits the run
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_STALE_S = 60.0  # a heartbeat older than this from another host means its process is gone
def run_dir(results_dir: Path, spec: RunSpec) -> Path:
    return results_dir / spec.task / spec.run_id


def read_status(folder: Path) -> dict[str, Any]:
    """The run's status; {"state": "pending"} when it has none or it cannot be read (then `finished_damage`
    tells a run that finished, and must not be redone, from one that never got far)."""
    path = folder / "status.json"
    if not path.is_file():
        return {"state": "pending"}
    data, _ = load_json_object(path)
    return data if data is not None else {"state": "pending"}


def write_status(folder: Path, state: str, **extra: Any) -> None:
    assert state in STATES
    write_json_atomic(folder / "status.json",
                      {"state": state, "time": time.time(), "pid": os.getpid(), **extra})


def is_done(folder: Path) -> bool:
    return read_status(folder).get("state") == "done" and (folder / "metrics.csv").is_file()


FINISHED_FILES = ("spec.json", "metrics.csv", "summary.json")


def run_folder_of(path: Path) -> Path | None:
    """The run folder that holds `path` (at any depth: `predictions/`, `checkpoints/`), or None: a folder
    with the run's `spec.json` and its status, summary or events (what `run.py` writes first)."""
    for folder in Path(os.path.realpath(path)).parents:  # `path`'s own folder first
        if (folder / "spec.json").is_file() and any(
                (folder / name).is_file() for name in ("status.json", "summary.json", "events.jsonl")):
            return folder
    return None


def finished_damage(folder: Path) -> str | None:
    """Why a run that finished can no longer be read as finished ("<file>: <problem>"), or None.

    A run has finished when its status says `done`, when `events.jsonl` records `done` (appended only after
    the status says so), or when it wrote `summary.json` and its status file is gone or unreadable (a run
    interrupted between its summary and its status has a readable `running` status: it completes on resume).
    Such a run is never trained again, which would overwrite what it wrote: sweep, status and report name
    the file instead.
    """
    found = _damaged_file(folder)
    return f"{found[0]}: {found[1]}" if found else None


def damaged_runs_error(damage: list[str], fate: str) -> ResultsError:
    """The one error a sweep ends with when it left finished runs as they are (`fate`: "not trained again",
    "not submitted"): the first run's damage, and how many more."""
    more = f" (and {len(damage) - 1} more finished run(s) like it)" if len(damage) > 1 else ""
    return ResultsError(f"{damage[0]}{more}; left as it is, {fate}: restore the file, move the run folder "
                        "away, or delete it to run it again")


def _damaged_file(folder: Path) -> tuple[Path, str] | None:
    status_path = folder / "status.json"
    status, why = load_json_object(status_path) if status_path.is_file() else (None, "missing")
    said_done = status is not None and status.get("state") == "done"
    done_event = any(event.get("event") == "done" for event in read_events(folder))
    if not (said_done or done_event or (status is None and (folder / "summary.json").is_file())):
        return None
    if status is None:
        return status_path, f"{why}, but the run finished"
    if not said_done:
        return status_path, f"says {status.get('state')!r}, but events.jsonl records that the run finished"
    for name in FINISHED_FILES:
        if not (folder / name).is_file():
            return folder / name, "missing, but the run finished"
    for name in ("spec.json", "summary.json"):  # cheap to check here; metrics.csv's rows: read_finished_run
        data, why = load_json_object(folder / name)
        if data is None:
            return folder / name, f"{why}, but the run finished"
        problem = summary_problem(data) if name == "summary.json" else spec_problem(data, folder.name)
        if problem:
            return folder / name, problem
    return None


def spec_problem(spec: dict[str, Any], folder_name: str) -> str | None:
    """Why a finished run's spec.json cannot be read as its spec, or None: a key the report needs missing, a
    value of the wrong type (it would crash the report and the index, or be pooled as another), or settings
    edited after the run (its run id no longer theirs)."""
    return RunSpec.problem({k: v for k, v in spec.items() if k != "run_id"}) or run_id_problem(spec,
                                                                                             folder_name)


def _optional(fits: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or fits(value)


_OBJECT = (lambda value: isinstance(value, dict)), "an object"
_NUMBER = _optional(is_number), "a number"
# The fields every version that wrote summary.json wrote (`run.py`, from the first on): a finished run that
# lacks one had its summary emptied or edited, not written by an older version. Those added later (`tta`,
# `postprocessing`, `cost.first_step_at`, `cost.resumed_at_epoch`, `cost.epoch_times_s`) may be absent.
SUMMARY_ALWAYS_WRITTEN = (
    "run_id", "mean", "per_label_dice", "num_cases", "metric_settings", "cost", "plan",
    *(f"cost.{key}" for key in ("params", "train_time_s", "eval_time_s", "epochs_done", "time_per_epoch_s",
                                "peak_memory_mb", "device")),
    *(f"plan.{key}" for key in ("patch_3d", "batch_3d", "patch_2d", "batch_2d")),
)
# summary.json's fields that sweep, status and report read ("parent.key": a field of an object), each with
# what it must be; null only where every version may have written it (a cost it did not measure).
SUMMARY_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "num_cases": (is_whole, "a whole number"),
    "per_label_dice": _OBJECT,
    "metric_settings": _OBJECT,
    "cost": _OBJECT,
    **{f"cost.{key}": _NUMBER for key in ("params", "train_time_s", "time_per_epoch_s", "peak_memory_mb",
                                          "eval_time_s", "epochs_done")},
    "cost.device": (_optional(lambda value: isinstance(value, str)), "text"),
    "plan": _OBJECT,
    "plan.patch_2d": (lambda value: are_whole(value, 2, least=1), "2 positive whole numbers"),
    "plan.patch_3d": (lambda value: are_whole(value, 3, least=1), "3 positive whole numbers"),
    "plan.batch_2d": (lambda value: is_whole(value, 1), "a positive whole number"),
    "plan.batch_3d": (lambda value: is_whole(value, 1), "a positive whole number"),
}


def summary_problem(summary: dict[str, Any]) -> str | None:
    """What is wrong with a finished run's summary.json: a field every version writes missing
    (`SUMMARY_ALWAYS_WRITTEN`), or one of the wrong type (`SUMMARY_FIELDS`); None when nothing is."""
    for key, (fits, kind) in SUMMARY_FIELDS.items():
        holder, name = _holder(summary, key)
        if isinstance(holder, dict) and name in holder and not fits(holder[name]):
            return f"{key!r} must be {kind}, not {shown(holder[name])}"
    for key in SUMMARY_ALWAYS_WRITTEN:
        holder, name = _holder(summary, key)
        if isinstance(holder, dict) and name not in holder:
            return f"lacks {key!r}, which every finished run writes"
    return None


def _holder(summary: dict[str, Any], key: str) -> tuple[object, str]:
    """The object that holds summary field `key` ("parent.name": a field of an object) and its name there; a
    parent is checked before its fields, so one that is no object is reported as itself."""
    parent, _, name = key.rpartition(".")
    return (summary.get(parent) if parent else summary), name


def write_heartbeat(folder: Path, **progress: Any) -> None:
    write_json_atomic(folder / "heartbeat.json",
                      {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **progress})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when missing or unreadable (every such file is written atomically)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def append_event(folder: Path, event: str, **extra: Any) -> None:
    """Append one line to `events.jsonl` (a single small O_APPEND write: whole lines only)."""
    line = json.dumps({"event": event, "time": time.time(), "pid": os.getpid(), "host": socket.gethostname(),
                       **extra}) + "\n"
    fd = os.open(folder / "events.jsonl", os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # end a line torn by a crash, so this one stays readable
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(folder: Path) -> list[dict[str, Any]]:
    path = folder / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):  # a line torn by a crash, or edited: skipped
            events.append(event)
    return events


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_live(folder: Path, stale_after_s: float = HEARTBEAT_STALE_S) -> bool:
    """Is some process working on this run now? Its lock says so on a shared file system; a fresh heartbeat
    from another host (whose pid cannot be checked here) counts too."""
    if is_locked(folder):
        return True
    beat = read_json(folder / "heartbeat.json")
    beat_time = beat.get("time")
    if not isinstance(beat_time, int | float) or time.time() - float(beat_time) > stale_after_s:
        return False
    if beat.get("host") == socket.gethostname():
        return False  # same host and not locked: its process is gone (the kernel dropped the lock)
    return True


def run_state(folder: Path) -> str:
    """One of DISPLAY_STATES, from the run folder alone."""
    if finished_damage(folder):
        return "damaged"
    if is_done(folder):
        return "done"
    return _unfinished_state(folder)


def _unfinished_state(folder: Path, queue: bool = True) -> str:
    """The state of a run that has not finished: running, queued, failed, partial or pending. A run submitted
    to SLURM and not started since is queued, whether it failed or stopped with a checkpoint before (the job
    retries or resumes it); without `queue`, what it is once its job has left the queue unstarted."""
    status = read_status(folder)
    state = status.get("state", "pending")
    if state in ("running", "pending") and is_live(folder):
        return "running"
    if state == "failed" and is_locked(folder):  # retried: its status says failed until the attempt starts
        return "running"
    if queue:
        queued = read_json(folder / QUEUED_NAME)
        last_attempt = max((_number(e.get("time")) for e in read_events(folder)), default=0.0)
        if queued and _number(queued.get("time")) > last_attempt:
            return "queued"
    if state == "failed":
        return "failed"
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return "partial"
    return "pending"


def unqueued_state(folder: Path) -> str:
    """The state of a queued run whose SLURM job left the queue without starting it: failed, partial or
    pending, as before it was submitted."""
    return _unfinished_state(folder, queue=False)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def check_results_dir(results_dir: Path) -> None:
    """ResultsError when `results_dir`, or a folder on its path, is a file: a sweep said "not writable (File
    exists)", its dry run listed every run as pending, status and report found no runs."""
    try:
        blocker = file_in_the_way(results_dir, itself=True)
    except OSError:
        return  # a path that cannot be looked at: the command's own access names the problem
    if blocker is not None:
        raise ResultsError(f"{results_dir}: not a results dir ({blocker} is a file, not a folder)")


def check_run_folders(results_dir: Path, runs: Sequence[RunSpec]) -> None:
    """ResultsError naming the first run whose folder under `results_dir` is a file (or lies below one):
    each such run failed "File exists" and was counted as stopped while training; a dry run listed it as
    pending; SLURM submission failed on it after submitting the runs before it."""
    for spec in runs:
        folder = run_dir(results_dir, spec)
        try:
            blocker = file_in_the_way(folder, itself=True)
        except OSError:
            continue  # a path that cannot be looked at: the run's own access names the problem
        if blocker == folder:
            raise ResultsError(f"{folder}: not a run folder (a file is where run {spec.run_id} keeps its "
                               "results); move it away")
        if blocker is not None and results_dir in blocker.parents:  # the results dir: `check_results_dir`
            raise ResultsError(f"{blocker}: not a folder (run {spec.run_id} keeps its results in {folder}); "
                               "move it away")


def check_writable(results_dir: Path) -> None:
    check_results_dir(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"{results_dir}: results dir is not writable ({exc.strerror or exc})") from None


def finished_runs(results_dir: Path, tasks: Sequence[str] | None = None) -> list[Path]:
    """Folders of finished runs under `results_dir` (of `tasks`, else any), damaged ones included (reading
    them names the damage: a finished run never drops out of a report silently)."""
    if not results_dir.is_dir():
        return []
    folders = {p.parent for task in (tasks or ["*"])
               for name in ("spec.json", "status.json", "summary.json", "events.jsonl")
               for p in results_dir.glob(f"{task}/*/{name}")}
    return sorted(f for f in folders if is_done(f) or finished_damage(f))


METRICS_COLUMNS = ("case", "label", "dice", "ref_empty", "pred_empty")


def _corrupt(path: Path, problem: str) -> DamagedRunError:
    return DamagedRunError(f"{path}: {problem}", "move its run folder away to report without it, or delete "
                           "the folder to run it again")


def _read_json_object(path: Path) -> dict[str, Any]:
    data, why = load_json_object(path)
    if data is None:
        raise _corrupt(path, why)
    return data


def read_finished_run(folder: Path):
    """A finished run's spec, summary and per-case scores; ResultsError naming the file when one is damaged.

    Every file is written atomically, so damage means a file was edited, truncated or lost after the fact.
    """
    import pandas as pd

    damage = _damaged_file(folder)
    if damage:
        raise _corrupt(*damage)
    spec = _read_json_object(folder / "spec.json")  # checked by _damaged_file (`spec_problem`)
    summary = _read_json_object(folder / "summary.json")
    path = folder / "metrics.csv"
    try:
        # Text, whatever the task: a label column of numbers (Task09) and one with region names (Task01)
        # must concatenate into one index.
        frame = pd.read_csv(path, dtype={"case": str, "label": str})
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise _corrupt(path, f"cannot be read as CSV ({str(exc).splitlines()[0]})") from None
    absent = [c for c in METRICS_COLUMNS if c not in frame.columns]
    if absent:
        raise _corrupt(path, f"lacks the column(s) {', '.join(absent)}")
    expected = summary.get("num_cases", 0) * len(summary.get("per_label_dice") or {}) or len(frame)
    if len(frame) != expected:
        raise _corrupt(path, f"has {len(frame)} rows, summary.json counts {expected} (cases x labels)")
    if frame[list(METRICS_COLUMNS[3:])].isna().any().any():
        raise _corrupt(path, "a row is cut short (truncated?)")
    problem = _bad_cell(frame)
    if problem:
        raise _corrupt(path, problem)
    return spec, summary, frame


def _bad_cell(frame: Any) -> str | None:
    """The first cell of a run's metrics.csv that its column cannot hold, or None: every column but case and
    label holds numbers (an empty cell is NaN: both masks empty), each in its metric's range, the two flags
    True or False."""
    import pandas as pd

    from medseg_bench.metrics.info import METRIC_NAMES, METRICS

    for column in frame.columns.drop(["case", "label"]):
        values = frame[column]
        if column in METRICS_COLUMNS[3:]:
            if pd.api.types.is_bool_dtype(values):
                continue
            bad, kind = ~values.astype(str).str.lower().isin(["true", "false"]), "True or False"
        elif pd.api.types.is_bool_dtype(values):  # a column of True/False reads as bools
            bad, kind = values.notna(), "a number"
        elif (not pd.api.types.is_numeric_dtype(values)
              and (text := values.notna() & pd.to_numeric(values, errors="coerce").isna()).any()):
            bad, kind = text, "a number"
        elif column in METRIC_NAMES:  # a number, but one the metric cannot take (inf, a Dice of 5, HD95 -1)
            numbers = pd.to_numeric(values, errors="coerce")
            info = METRICS.get(column)
            low, high = (0.0, 1.0) if info.higher_is_better else (0.0, math.inf)
            bad = numbers.notna() & ~((numbers >= low) & (numbers <= high) & numbers.abs().lt(math.inf))
            kind = "a score from 0 to 1" if high == 1.0 else "a finite value of at least 0"
        else:
            continue
        if bad.any():
            row = int(bad.to_numpy().argmax())
            return f"{column} is {str(values.iloc[row])!r} in row {row + 1}, not {kind}"
    return None


# Spec fields besides the configuration axes (dims, arch, encoder, loss, aug) and the pooled ones (fold,
# seed) that change a run's numbers: runs that differ in one are never pooled as one configuration.
RESULT_SETTINGS = ("epochs", "iters_per_epoch", "max_minutes", "batch_size", "patch_size", "optimizer", "lr",
                   "num_folds", "pretrained", "class_weights", "tta", "postprocess", "nsd_tolerance_mm",
                   "task_version", "pipeline_version")


def checked_state(folder: Path) -> tuple[str, str | None]:
    """`run_state`, with a finished run read whole as `report` reads it (its metrics.csv rows included), and
    what is damaged ("<file>: <problem>") when the state is `damaged`: `status`, sweeps and SLURM submission
    agree with `report` on which runs are done. Each run's files are read once."""
    if is_done(folder):
        try:
            read_finished_run(folder)  # names any damage, `finished_damage`'s included
        except DamagedRunError as exc:
            return "damaged", exc.damage
        return "done", None
    damage = finished_damage(folder)
    return ("damaged", damage) if damage else (_unfinished_state(folder), None)


def run_settings(spec: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """A finished run's RESULT_SETTINGS as it trained: the learning rate, patch and batch size it used (from
    the plan when its spec left them open), and the plan's preprocessing (its target spacing, and a digest of
    the normalisation and crop), so runs before and after a plan edit are told apart."""
    import hashlib
    from dataclasses import MISSING, fields

    from medseg_bench.data.plan import preprocessing_of
    from medseg_bench.spec import DEFAULT_LR

    # A key a spec of an older version lacks had its default then: the same run as one that writes it out.
    defaults = {f.name: f.default for f in fields(RunSpec) if f.default is not MISSING}
    settings = {key: spec.get(key, defaults.get(key)) for key in RESULT_SETTINGS}
    optimizer = spec.get("optimizer") or "adamw"
    settings["lr"] = spec.get("lr") or DEFAULT_LR.get(optimizer)
    plan, dims = summary.get("plan") or {}, spec.get("dims")
    if settings["patch_size"] is None and plan.get(f"patch_{dims}") is not None:
        settings["patch_size"] = list(plan[f"patch_{dims}"])
    if settings["batch_size"] is None and plan.get(f"batch_{dims}") is not None:
        settings["batch_size"] = plan[f"batch_{dims}"]
    preprocessing = preprocessing_of(plan) if plan else {}
    settings["target_spacing"] = preprocessing.pop("target_spacing", None)
    digest = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode()).hexdigest()
    settings["preprocessing"] = digest[:6] if preprocessing else None
    return settings


def load_results(results_dir: Path, skip_damaged: Callable[[str], None] | None = None,
                 tasks: Sequence[str] | None = None):
    """All per-case, per-label scores of finished runs, joined with their specs and cost (a DataFrame).

    A damaged run raises ResultsError naming its file; with `skip_damaged`, it is left out and the message
    goes to that callback instead (never silently). `attrs["absent_metrics"]`: "task/run_id" -> the metrics
    its metrics.csv has no column for (scored before they existed; NaN in the frame, as a label with both
    masks empty is: only the file tells the two apart).
    """
    import pandas as pd

    from medseg_bench.metrics.info import METRIC_NAMES

    check_results_dir(results_dir)

    frames = []
    absent: dict[str, list[str]] = {}
    for folder in finished_runs(results_dir, tasks):
        try:
            spec, summary, frame = read_finished_run(folder)
        except ResultsError as exc:
            if skip_damaged is None:
                raise
            skip_damaged(str(exc))
            continue
        lacking = [name for name in METRIC_NAMES if name not in frame.columns]
        if lacking:
            absent[f"{spec.get('task')}/{folder.name}"] = lacking
        frame.insert(0, "run_id", folder.name)
        cost = summary.get("cost", {})
        for key in ("task", "dims", "arch", "encoder", "loss", "aug"):
            frame[key] = spec.get(key)
        # an absent number is NaN, not None: every run's columns then have the same dtype, whichever pandas
        # (pandas 3 keeps an all-None column's object dtype in the concatenation; pandas 2 warned it would)
        numbers = {key: spec.get(key) for key in ("fold", "seed", "epochs", "max_minutes")}
        numbers.update({key: cost.get(key) for key in ("params", "train_time_s", "time_per_epoch_s",
                                                        "peak_memory_mb")})
        for key, value in numbers.items():
            frame[key] = math.nan if value is None else value
        frame["device"] = cost.get("device")
        frame["run_settings"] = json.dumps(run_settings(spec, summary), sort_keys=True)
        frames.append(frame)
    if not frames:
        raise ResultsError(f"{results_dir}: no finished runs to report")
    table = pd.concat(frames, ignore_index=True)
    table["encoder"] = table["encoder"].fillna("")
    table.attrs["absent_metrics"] = absent
    return table


INDEX_NAME = "index.parquet"


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def write_index(results_dir: Path, warn: Callable[[str], None] = warn_on_stderr) -> Path:
    """Rebuild `index.parquet` (every finished run's per-case scores) from the run folders, atomically.

    Each writer renames its own complete temp file into place, so concurrent rebuilds never mix; one at a
    time (a flock on the results dir), each reading the runs once it has the lock, so the last to write has
    read the last run to finish (a rebuild that read the folders first, then wrote after another sweep's
    newer index, left a finished run out). A damaged run is left out of the index, and `warn` is told which
    file and why.
    """
    import pandas as pd

    target = results_dir / INDEX_NAME
    with exclusive_folder(results_dir):
        try:
            table = load_results(results_dir, skip_damaged=warn)
        except ResultsError:  # no finished run
            table = pd.DataFrame({"run_id": pd.Series(dtype=str)})
        tmp = private_temp(target)
        try:
            table.to_parquet(tmp, index=False)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    remove_dead_writers_temps(target)  # a sweep killed while it wrote the index left its temp
    return target
