"""The results store: one folder per run, `<results_dir>/<task>/<run_id>/`; the folders are the truth.

Run folder:
    spec.json        the full RunSpec (and run id)
    status.json      {"state": running|done|failed, ...}, written atomically (none yet: pending)
    heartbeat.json   refreshed every few seconds while a process works on the run (pid, host, epoch, loss)
    events.jsonl     one line per event: start (from scratch) | resume, with the attempt's git revision (and
                     diff's sha256), package versions and machine; then done | failed | interrupted; each with
                     time, pid and host
    .lock            the per-run lock file (see locks.py)
    queued.json      the SLURM job id, when the run was submitted to SLURM
    env.json         package versions, Python, platform, host, git revision (`<commit>`, `<commit>+dirty`, or
                     `unknown`; `source_diff`: a dirty checkout's diff's file, sha256, size, whether it was
                     cut and the untracked files left out of it, `untracked_skipped`; `installed_from`: the
                     URL and commit pip installed an installed package from), CPU
                     (model, the instruction set torch uses and the variables capping it), torch threads, GPU,
                     the memory the run was held to and what set it (`memory_limit_bytes`, `memory_limit`)
    source.diff      a dirty checkout's `git diff HEAD` (tracked files; binary ones as `git apply` takes
                     them), then its untracked files in medseg_bench/ and tasks/ as new files (since
                     2026-12-03), its first 4 MiB; none for a clean checkout or an installed package (both of
                     the last attempt, as env.json; absent in runs started before 2026-12-03)
    splits.json      the fold's train/val case ids
    setup.json       the patch and batch size and preprocessing the run started with (a resumed run is held
                     to them, and to its splits.json), and how its training images are stored (orientation,
                     e.g. "RAS", for predict's warning; absent in runs started before 2026-12-02), and
                     the data it trained on (`data`: the fold's number of cases and `source_digest` of
                     their files; absent in runs started before that evening)
    run.log          the run's log
    worker.log       a `--jobs` worker's output, when a sweep ran the run in one
    checkpoints/     last.ckpt, best.ckpt
    logs/            CSV (and TensorBoard) training logs (`.metrics.before_resume.csv` while a resumed
                     attempt's log is merged)
    metrics.csv      per case and label scores on the held-out fold (written before status becomes done)
    predictions/     the held-out cases' label maps as scored, `<case>.nii.gz` in their label file's geometry
                     (written into `.predictions.partial/`, renamed when complete)
    postprocessing.json  the largest-component decision (runs with `postprocess`; `postprocess.py`): the
                     steps predict applies, in order, and each candidate's mean Dice (per label before
                     pipeline version 14)
    summary.json     means of dice, jaccard, hd95, nsd (no nsd in runs finished before 2026-12-01), per-label
                     Dice, case count, metric settings, the plan (which report and predict read), TTA and
                     postprocessing, cost (params, wall and evaluation time, time per epoch, epochs done,
                     device, peak memory, the epoch a resume started at)
    learning_curves.png

What the status, heartbeat and events files say: `run_folder.py`; a finished run read back and checked:
`finished.py`.

`<results_dir>/index.parquet` is a table of every finished run's per-case scores, rebuilt from the folders;
`<results_dir>/.slurm/` holds submitit's job files and logs, `.slurm-submit.lock` serialises submissions.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from medseg_bench.errors import DamagedRunError, ResultsError
from medseg_bench.files import (
    file_in_the_way,
    kind_of,
    load_json_object,
    private_temp,
    remove_dead_writers_temps,
)
from medseg_bench.finished import FinishedReads, finished_damage, read_finished_run, spec_problem
from medseg_bench.locks import exclusive_folder
from medseg_bench.run_folder import is_done, unfinished_state
from medseg_bench.spec import RunSpec

# What a sweep shows for a run: `run_folder.STATES`, plus `partial` (interrupted, has a checkpoint: it
# resumes) and `queued` (submitted to SLURM, not started yet).
# `damaged`: it finished, but a file it wrote is missing or unreadable now; it is never trained again.
DISPLAY_STATES = ("done", "running", "queued", "partial", "pending", "failed", "damaged")
SETUP_NAME = "setup.json"


def run_dir(results_dir: Path, spec: RunSpec) -> Path:
    return results_dir / spec.task / spec.run_id


def run_folder_of(path: Path) -> Path | None:
    """The run folder that holds `path` (at any depth: `predictions/`, `checkpoints/`), or None: a folder
    with the run's `spec.json` and its status, summary or events (what `run.py` writes first)."""
    for folder in Path(os.path.realpath(path)).parents:  # `path`'s own folder first
        if (folder / "spec.json").is_file() and any(
                (folder / name).is_file() for name in ("status.json", "summary.json", "events.jsonl")):
            return folder
    return None


def index_of(path: Path) -> Path | None:
    """The results dir whose index (`INDEX_NAME`, which `write_index` rebuilds) `path` names, whether it was
    written yet or not, or None: a folder with a run folder (its `spec.json`) in a task folder."""
    target = Path(os.path.realpath(path))  # through links, and `missing/..` as a write would take it
    if target.name != INDEX_NAME:
        return None
    folder = target.parent
    return folder if next(folder.glob("*/*/spec.json"), None) is not None else None


def not_a_run(folder: Path) -> str | None:
    """Why `folder`, which holds a spec.json but has not finished, is no run's folder ("<its spec.json>: not
    a run's spec (<problem>)", `finished.spec_problem`'s, as for a finished run), or None. A stray folder with
    a spec.json (`{}`, or a run's copied into another name) was listed by `status` as a pending run that no
    sweep trains and no report reads. An unfinished run's spec.json is `run.py`'s (or a `--jobs` sweep's, as
    its worker starts), written before anything else of the run: a run of an older version still passes (its
    keys take their defaults, its id is its own spec's hash). A finished run's spec is checked with it
    (`checked_state`: damaged); a folder without a spec.json (a run SLURM queued, not started yet) is left
    to its other files."""
    path = folder / "spec.json"
    if not path.is_file() or is_done(folder) or finished_damage(folder):
        return None
    data, why = load_json_object(path)
    problem = why if data is None else spec_problem(data, folder)
    return f"{path}: not a run's spec ({problem})" if problem else None


def run_state(folder: Path) -> str:
    """One of DISPLAY_STATES, from the run folder alone."""
    if finished_damage(folder):
        return "damaged"
    if is_done(folder):
        return "done"
    return unfinished_state(folder)


def check_results_dir(results_dir: Path) -> None:
    """ResultsError when `results_dir`, or a folder on its path, is a file: a sweep said "not writable (File
    exists)", its dry run listed every run as pending, status and report found no runs."""
    try:
        blocker = file_in_the_way(results_dir, itself=True)
    except OSError:
        return  # a path that cannot be looked at: the command's own access names the problem
    if blocker is not None:
        raise ResultsError(f"{results_dir}: not a results dir ({blocker} is {kind_of(blocker)}, not a "
                           "folder)")


def require_results_dir(results_dir: Path) -> None:
    """`check_results_dir`, and a ResultsError where `results_dir` does not exist: `report` said "no finished
    runs to report" of a mistyped --results-dir, where `status` said what was wrong."""
    check_results_dir(results_dir)
    if not results_dir.exists():
        from medseg_bench.settings import DEFAULT_RESULTS_DIR

        default = (" (the default, results, is a folder of the current one)"
                   if results_dir == DEFAULT_RESULTS_DIR else "")
        raise ResultsError(f"{results_dir}: no such results dir{default}; pass the sweep's --results-dir")


def no_finished_runs(results_dir: Path, of: str = "") -> str:
    """"RESULTS: no finished runs[ of TASK] here", and `task_folder_hint`."""
    return f"{results_dir}: no finished runs{f' of {of}' if of else ''} here{task_folder_hint(results_dir)}"


def task_folder_hint(results_dir: Path) -> str:
    """Where `results_dir` is a task's folder of runs (RESULTS/TASK given for RESULTS), a note saying so."""
    if any(results_dir.glob("*/spec.json")):
        return f" (it holds run folders itself: pass the results dir above it, {results_dir.parent})"
    return ""


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


def check_writable(results_dir: Path, make: bool = True) -> None:
    """ResultsError "RESULTS: results dir is not writable (why)" where a sweep could not write its runs: a
    file written and removed in it, which it makes first. With `make=False` (the dry run) a results dir not
    there yet is left so: the first of its missing folders is made and removed again, the same test without
    a trace (the dry run exited 0 where the sweep exited 6 until 2026-12-04)."""
    check_results_dir(results_dir)
    if not make and not results_dir.exists():
        missing = results_dir.absolute()
        while not missing.parent.exists() and missing.parent != missing:
            missing = missing.parent
        try:
            missing.mkdir()
        except FileExistsError:
            return  # made meanwhile: by a sweep, which could
        except OSError as exc:
            raise ResultsError(f"{results_dir}: results dir is not writable ({exc.strerror or exc})") \
                from None
        try:
            missing.rmdir()
        except OSError:
            pass  # another process made something in it meanwhile: theirs
        return
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


# Spec fields besides the configuration axes (dims, arch, encoder, loss, aug) and the pooled ones (fold,
# seed) that change a run's numbers: runs that differ in one are never pooled as one configuration.
RESULT_SETTINGS = ("epochs", "iters_per_epoch", "max_minutes", "batch_size", "patch_size", "optimizer", "lr",
                   "num_folds", "pretrained", "class_weights", "tta", "postprocess", "target",
                   "nsd_tolerance_mm", "task_version", "pipeline_version")
# Of `run_settings`' keys, those that differ from task to task by nature (a task's plan gives its patch,
# batch, target spacing and preprocessing; a task file its version): the report tells runs apart by them
# within a task only. Runs of one configuration that differ in any other setting are told apart across tasks.
TASK_SETTINGS = ("patch_size", "batch_size", "target_spacing", "preprocessing", "task_version")


def checked_state(folder: Path, reads: FinishedReads | None = None) -> tuple[str, str | None]:
    """`run_state`, with a finished run read whole as `report` reads it (its metrics.csv rows included), and
    what is damaged ("<file>: <problem>") when the state is `damaged`: `status`, sweeps and SLURM submission
    agree with `report` on which runs are done. Each run's files are read once; with `reads`, kept there for
    `write_index`."""
    if is_done(folder):
        try:
            (reads.read if reads else read_finished_run)(folder)  # names any damage, `finished_damage`'s too
        except DamagedRunError as exc:
            return "damaged", exc.damage
        return "done", None
    damage = finished_damage(folder)
    return ("damaged", damage) if damage else (unfinished_state(folder), None)


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
                 tasks: Sequence[str] | None = None, reads: FinishedReads | None = None):
    """All per-case, per-label scores of finished runs, joined with their specs and cost (a DataFrame).

    A damaged run raises ResultsError naming its file; with `skip_damaged`, it is left out and the message
    goes to that callback instead (never silently). `attrs["absent_metrics"]`: "task/run_id" -> the metrics
    its metrics.csv has no column for (scored before they existed; NaN in the frame, as a label with both
    masks empty is: only the file tells the two apart). `reads`: runs read already, not read again where
    their files are unchanged.
    """

    from medseg_bench.metrics.info import METRIC_NAMES

    check_results_dir(results_dir)

    rows = _Rows()
    runs: dict[str, list[Any]] = {key: [] for key in RUN_COLUMNS}  # per run: its value of each column
    absent: dict[str, list[str]] = {}
    for folder in finished_runs(results_dir, tasks):
        try:
            spec, summary, frame = (reads.read if reads else read_finished_run)(folder)
        except ResultsError as exc:
            if skip_damaged is None:
                raise
            skip_damaged(str(exc))
            continue
        lacking = [name for name in METRIC_NAMES if name not in frame.columns]
        if lacking:
            absent[f"{spec.get('task')}/{folder.name}"] = lacking
        cost = summary.get("cost", {})
        runs["run_id"].append(folder.name)
        for key in ("task", "dims", "arch", "encoder", "loss", "aug"):
            runs[key].append(spec.get(key))
        # an absent number is NaN, not None: every run's columns then have the same dtype, whichever pandas
        # (pandas 3 keeps an all-None column's object dtype in the concatenation; pandas 2 warned it would)
        numbers = {key: spec.get(key) for key in ("fold", "seed", "epochs", "max_minutes")}
        numbers.update({key: cost.get(key) for key in ("params", "train_time_s", "time_per_epoch_s",
                                                        "peak_memory_mb")})
        for key, value in numbers.items():
            runs[key].append(math.nan if value is None else value)
        runs["device"].append(cost.get("device"))
        runs["run_settings"].append(json.dumps(run_settings(spec, summary), sort_keys=True))
        rows.add(frame)
    if not rows.lengths:
        raise ResultsError(no_finished_runs(results_dir))
    table = rows.joined(runs)
    table["encoder"] = table["encoder"].fillna("")
    table.attrs["absent_metrics"] = absent
    return table


# The columns `load_results` adds to each run's metrics.csv rows: `run_id` first, the others after them.
RUN_COLUMNS = ("run_id", "task", "dims", "arch", "encoder", "loss", "aug", "fold", "seed", "epochs",
               "max_minutes", "params", "train_time_s", "time_per_epoch_s", "peak_memory_mb", "device",
               "run_settings")


# Runs' metrics.csv tables joined at a time as they are read: 1000 tables of 80 rows held 50 MB (pandas' own
# objects) for their 8 MB of rows.
JOIN_EVERY = 64


class _Rows:
    """The runs' metrics.csv rows (`add`), joined into one table with their runs' columns (`joined`)."""

    def __init__(self) -> None:
        self.lengths: list[int] = []  # each run's number of rows
        self._order: dict[str, None] = {}  # the columns, in the order concatenation gives them
        self._joined: list[Any] = []
        self._pending: list[Any] = []

    def add(self, frame: Any) -> None:
        self._order.update(dict.fromkeys(["run_id", *frame.columns, *RUN_COLUMNS[1:]]))  # `run_id` first
        self.lengths.append(len(frame))
        self._pending.append(frame)
        if len(self._pending) == JOIN_EVERY:
            self._join_pending()

    def _join_pending(self) -> None:
        import pandas as pd

        if self._pending:
            self._joined.append(pd.concat(self._pending, ignore_index=True))
            self._pending = []

    def joined(self, runs: dict[str, list[Any]]) -> Any:
        """One table, each row with its run's value of every RUN_COLUMNS column (`runs`), as concatenating
        the runs' frames, each with those columns set, gives it (the columns in the order they first appear;
        a number column float where a run lacks it; text object where one is None), without setting 17
        columns on each of 1000 frames (5 s of a report)."""
        import numpy as np
        import pandas as pd

        self._join_pending()
        table = pd.concat(self._joined, ignore_index=True)
        self._joined = []
        rows = np.repeat(np.arange(len(self.lengths)), self.lengths)  # each row's run
        for key, values in runs.items():
            if any(value is None for value in values):  # None in a run's column: object, as concatenated
                column = pd.Series(values, dtype=object)
            else:
                column = pd.Series(values)
            table[key] = column.take(rows).reset_index(drop=True)
        return table[list(self._order)]


INDEX_NAME = "index.parquet"


def warn_on_stderr(message: str) -> None:
    from medseg_bench.errors import one_line

    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)  # it names run folders


def index_not_rebuilt(results_dir: Path, exc: OSError) -> str:
    """"RESULTS/index.parquet: index not rebuilt (WHY)", the warning of a sweep or `status` that could not
    rebuild the index (a read-only results dir, a full disk). WHY is the OS's word for the error: pyarrow's
    own message names the temp file it opened ("Failed to open local file '.../.index.parquet.HOST.PID.tmp'.
    Detail: [errno 30] Read-only file system"), which `write_index` has removed by then."""
    why = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc))
    return f"{results_dir / INDEX_NAME}: index not rebuilt ({why})"


def write_index(results_dir: Path, warn: Callable[[str], None] = warn_on_stderr,
                reads: FinishedReads | None = None, named: Collection[str] = ()) -> Path:
    """Rebuild `index.parquet` (every finished run's per-case scores) from the run folders, atomically.

    Each writer renames its own complete temp file into place, so concurrent rebuilds never mix; one at a
    time (a flock on the results dir), each reading the runs once it has the lock, so the last to write has
    read the last run to finish (a rebuild that read the folders first, then wrote after another sweep's
    newer index, left a finished run out). A damaged run is left out of the index, and `warn` is told which
    file and why, unless the caller named that damage already (`named`: "<file>: <problem>", as
    `checked_state` gives it; a sweep's line for the run). `reads`: runs the caller read already
    (`checked_state`), read again only where a file of theirs changed since: what the index holds is what
    the folders hold once the lock is taken.
    """
    import pandas as pd

    def left_out(message: str) -> None:
        if not any(message == damage or message.startswith(f"{damage}; ") for damage in named):
            warn(message)

    target = results_dir / INDEX_NAME
    with exclusive_folder(results_dir):
        try:
            table = load_results(results_dir, skip_damaged=left_out, reads=reads)
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
