"""The local launcher: runs one after another in this process, or `jobs` at a time in worker processes.

With GPUs each worker sees one GPU (CUDA_VISIBLE_DEVICES); on a CPU the cores are divided between workers
(torch threads). Workers report through their run folders (status, heartbeat), which this process polls.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg_bench.errors import MedsegError, RunError, UsageError
from medseg_bench.finished import FinishedReads, damaged_runs_error, finished_damage
from medseg_bench.progress import PlainReporter
from medseg_bench.results import (
    INDEX_NAME,
    check_run_folders,
    check_writable,
    checked_state,
    index_not_rebuilt,
    run_dir,
    warn_on_stderr,
    write_index,
)
from medseg_bench.run_folder import is_done, is_live, read_json
from medseg_bench.signals import STOP_SIGNALS, deferred, received
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.worker import (
    EXIT_BUSY,
    EXIT_DAMAGED,
    EXIT_DONE,
    EXIT_SKIPPED,
    LAST_CHECKPOINT,
    CheckpointStamp,
    failure_message,
    record_unrecorded_failure,
    refuse_unresumable,
    run_one,
    skip_note,
    stamp_argument,
)

if TYPE_CHECKING:
    from medseg_bench.data.preprocess import PlannedTask

POLL_S = 1.0
STOP_GRACE_S = 10.0  # an interrupted worker that has not exited by then is killed


def default_num_workers(spec: RunSpec) -> int:
    """DataLoader workers: augmentation runs in workers; without augmentation on a CPU they only compete."""
    import torch

    if torch.cuda.is_available():
        return min(8, os.cpu_count() or 1)
    return 1 if spec.aug != "none" else 0


def prepare_locked(task: str, data_dir: Path, num_folds: int, progress: bool = False,
                   own_slices: bool = False, say: Callable[[str], object] | None = None) -> Any:
    """`prepare_task` under a lock per task in the data dir: concurrent sweeps (or array jobs) starting on a
    fresh cache take turns; the first builds it, the others find it complete (`say` told that they wait,
    `preprocess.task_lock`). `own_slices`: also the cache of 2D runs that keep their slices
    (`RunSpec.own_slice_spacing`)."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import prepare_task, task_lock, usable_cases

    spec = get_task(task)
    usable_cases(spec, data_dir)  # not fetched there (a mistyped --data-dir): one line, and no lock file made
    with task_lock(task, data_dir, say):
        return prepare_task(spec, data_dir, num_folds, progress=progress, own_slices=own_slices)


def plan_locked(task: str, data_dir: Path, num_folds: int,
                say: Callable[[str], object] | None = None) -> PlannedTask:
    """`preprocess.plan_task` (plan and splits, no cache) under the task's lock, as `prepare_locked`. `say` is
    told of a task not planned yet (its fingerprint reads every case), once it is known to be fetched: a task
    not fetched was said to be planned, then stopped the sweep as not fetched."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import plan_task, task_lock, usable_cases
    from medseg_bench.data.splits import splits_file

    spec = get_task(task)
    usable_cases(spec, data_dir)
    root = data_dir / "preprocessed" / task
    if say is not None and not (root / "plan.json").is_file():
        say(f"planning {task} (fingerprint, plan, {num_folds}-fold splits)")
    elif say is not None and not splits_file(root, num_folds).is_file():  # the plan `plan` made
        say(f"planning {task} ({num_folds}-fold splits)")
    with task_lock(task, data_dir, say):
        return plan_task(spec, data_dir, num_folds, progress=True)


def plan_tasks(runs: list[RunSpec], data_dir: Path, say: Callable[[str], object] | None = None,
               into: dict[tuple[str, int], PlannedTask] | None = None) -> dict[tuple[str, int], PlannedTask]:
    """`plan_locked` of each task of `runs` once (`prepared_key`): its fingerprint, plan and splits, made
    where there are none, its cache not built: what `check_runs` and `check_evaluation_memory` read. `say`
    is told of a task not planned yet (its fingerprint reads every case). `into`: the tasks planned already
    (added to, and returned), not planned again."""
    planned = {} if into is None else into
    for spec in runs:
        if prepared_key(spec) not in planned:
            planned[prepared_key(spec)] = plan_locked(spec.task, data_dir, spec.num_folds, say)
    return planned


def prepared_key(spec: RunSpec) -> tuple[str, int]:
    """What a run's `PreparedTask` is shared by: its task and number of folds."""
    return spec.task, spec.num_folds


def prepare_tasks(runs: list[RunSpec], data_dir: Path, say: Callable[[str], object],
                  when: str = "") -> dict[tuple[str, int], Any]:
    """Plan, cache and split each task of `runs` once (`prepared_key`), with the cache of 2D runs that keep
    their slices where some run needs it: `--dims 3d,2d` prepared a task twice, the second time for it.
    `say` is told of a task only where something of it is to be built, and of what (`_to_build`); one whose
    plan, splits and caches all exist is read without a word."""
    own_slices: dict[tuple[str, int], bool] = {}
    for spec in runs:
        key = prepared_key(spec)
        own_slices[key] = own_slices.get(key, False) or spec.own_slice_spacing
    prepared: dict[tuple[str, int], Any] = {}
    for (task, folds), own in own_slices.items():
        building = _to_build(task, data_dir, folds, own)
        if building:
            say(f"preparing {task} ({', '.join(building)}){when}")
        prepared[task, folds] = prepare_locked(task, data_dir, folds, progress=True, own_slices=own, say=say)
    return prepared


def _to_build(task: str, data_dir: Path, num_folds: int, own_slices: bool) -> list[str]:
    """What `prepare_locked` would build of `task`, in the order it builds them: its plan where there is none,
    a cache not finished (`preprocess.caches_to_build`, as the build decides it), its splits file where there
    is none; nothing where all are there. A sweep plans and splits a task (`plan_tasks`, "planning ...")
    before it prepares it, so this is mostly the cache alone: it said "(plan, cache, 5-fold splits)" after
    them. All three where that cannot be told here (a plan or task it cannot read: the preparation says what
    is wrong)."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.plan import plan_for_task, read_plan
    from medseg_bench.data.preprocess import caches_to_build, usable_cases
    from medseg_bench.data.splits import splits_file

    cache = "cache; for 2D runs, each case at its own slice spacing where that differs" if own_slices \
        else "cache"
    splits = f"{num_folds}-fold splits"
    root = data_dir / "preprocessed" / task
    path = root / "plan.json"
    if not path.is_file():
        return ["plan", cache, splits]
    try:
        spec = get_task(task)
        plan = plan_for_task(read_plan(path), spec, path)
        caches = caches_to_build(usable_cases(spec, data_dir), plan, root, own_slices)
    except (MedsegError, OSError):
        return ["plan", cache, splits]
    return [what for what, due in ((cache, bool(caches)),
                                   (splits, not splits_file(root, num_folds).is_file())) if due]


def run_sweep(runs: list[RunSpec], results_dir: Path, data_dir: Path, reporter: PlainReporter,
              fail_fast: bool = False, num_workers: int | None = None, jobs: int = 1) -> dict[str, list[str]]:
    """Run every pending run; finished runs are skipped, runs held by another process too.

    Raises RunError at the end if any run failed; the index is rebuilt either way.
    """
    check_writable(results_dir)
    # "damage": what is wrong with each damaged run, for the error at the end
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": [], "busy": [], "damaged": [],
                                     "damage": []}
    reporter.start(len(runs))
    # the finished runs as read to be skipped, for an index the results dir lacks when no run trains after
    reads = FinishedReads() if not (results_dir / INDEX_NAME).is_file() else None
    try:
        todo, unnoted = _finished(runs, results_dir, data_dir, reporter, outcome, reads)
        if todo:
            reads = None  # no run's table held while others train: the index reads them once they are done
        planned: dict[tuple[str, int], PlannedTask] = {}  # what the refusals planned, not planned again
        checked: dict[str, CheckpointStamp] = {}  # checkpoints the refusals passed: not loaded again to check
        # with fail_fast, stopped at the first run failed there, before any other trains (or any cache is
        # built), the other interrupted runs left as they are
        todo = refuse_unresumable_runs(todo, results_dir, data_dir, lambda spec, error: _refused(
            spec, error, reporter, outcome), planned, checked, fail_fast=fail_fast)
        # what a run can train on, whether its cache and its evaluation fit in memory, are the fingerprint's,
        # the plan's and the splits' to say: checked before the cache is built (an hour of a large task's),
        # in the order the sweep would meet them
        planned = plan_tasks(todo, data_dir, reporter.say, into=planned)
        check_runs(todo, lambda spec: planned[prepared_key(spec)])
        check_cache_memory(todo, planned, data_dir)
        check_evaluation_memory(todo, planned, data_dir)
        prepared = prepare_tasks(todo, data_dir, reporter.say)  # here, before any run (or worker) reads them
        built = {task for task, _ in prepared}  # a task with runs to train: its cache may be new
        _late_notes([spec for spec in unnoted if spec.task in built], results_dir, data_dir, reporter)
        if jobs <= 1:
            _sequential(todo, results_dir, reporter, prepared, fail_fast, num_workers, outcome, checked)
        else:
            _parallel(todo, results_dir, data_dir, reporter, fail_fast, num_workers, jobs, outcome, checked)
    finally:
        reporter.close()
        if outcome["done"] or outcome["skipped"] and not (results_dir / INDEX_NAME).is_file():
            try:
                write_index(results_dir, reads=reads, named=outcome["damage"])  # each said by its line
            except OSError as exc:  # a full disk: say so, but never in place of the runs' own outcome
                warn_on_stderr(f"{index_not_rebuilt(results_dir, exc)}; `medseg-bench status` rebuilds it")
    damaged = damaged_runs_error(outcome["damage"], "not trained again") if outcome["damage"] else None
    if outcome["failed"]:
        if damaged is not None:  # exit 5 names the failed runs; the damaged ones' fate still needs this line
            warn_on_stderr(str(damaged))
        of = f"{len(runs)} run{'' if len(runs) == 1 else 's'}"
        raise RunError(f"{len(outcome['failed'])} of {of} failed: {', '.join(outcome['failed'])}")
    if damaged is not None:
        raise damaged
    return outcome


def _finished(runs: list[RunSpec], results_dir: Path, data_dir: Path, reporter: PlainReporter,
              outcome: dict[str, list[str]], reads: FinishedReads | None = None,
              ) -> tuple[list[RunSpec], list[RunSpec]]:
    """Record the finished runs (skipped, or damaged: never trained again); return the others, and the runs
    skipped without a note (`_late_notes`). A finished run is read as `report` reads it, so a metrics.csv cut
    short is named here too (and kept in `reads`)."""
    check_run_folders(results_dir, runs)
    todo, unnoted = [], []
    for spec in runs:
        folder = run_dir(results_dir, spec)
        state, damage = checked_state(folder, reads)
        if state == "damaged":
            _record(spec, "damaged", reporter, outcome, error=damage)
        elif state == "done":
            note = skip_note(spec, data_dir, folder)
            _record(spec, "skipped", reporter, outcome, error=note)
            if note is None:
                unnoted.append(spec)
        else:
            todo.append(spec)
    return todo, unnoted


def _late_notes(skipped: list[RunSpec], results_dir: Path, data_dir: Path, reporter: PlainReporter) -> None:
    """A line for each run skipped without a note that has one once the sweep built its task's cache: one
    trained on other data than the cache now holds, where no cache was built when it was skipped (a
    preprocessed folder deleted, a case replaced since: said only by the next sweep)."""
    for spec in skipped:
        note = skip_note(spec, data_dir, run_dir(results_dir, spec))
        if note is not None:
            reporter.say(f"{spec.task}/{spec.run_id} (skipped, already done): {note}")


def refuse_unresumable_runs(runs: list[RunSpec], results_dir: Path, data_dir: Path,
                            refused: Callable[[RunSpec, str], object],
                            planned: dict[tuple[str, int], PlannedTask] | None = None,
                            checked: dict[str, CheckpointStamp] | None = None,
                            fail_fast: bool = False) -> list[RunSpec]:
    """The runs that go ahead: an interrupted run that cannot resume (`worker.refuse_unresumable`: its task's
    plan or splits changed since it started, or its last checkpoint is corrupt or foreign) fails here, with
    the message `run_one` gives (`refused(spec, message)` is told), before the cache is built: the others
    train on it, and where no run is left no cache is built. Only a task with interrupted runs is planned
    here (`plan_locked`), and only then is torch imported (a sweep of finished runs imports none). Both
    launchers ask it first. `planned` keeps the tasks planned here for the checks that follow
    (`plan_tasks(into=)`), and `checked` the stamps of the checkpoints that passed, by run id, for `run_one`
    (`worker.refuse_unresumable`). With `fail_fast`, the first run it fails is the last it looks at: none goes
    ahead, and the interrupted runs after it are left as they are (no task planned for them either)."""
    planned = {} if planned is None else planned
    left = []
    for spec in runs:  # in the sweep's order: the first task's plan first
        outcome = None
        if (run_dir(results_dir, spec) / LAST_CHECKPOINT).is_file():
            plan_tasks([spec], data_dir, into=planned)
            outcome = refuse_unresumable(spec, planned[prepared_key(spec)], results_dir, checked)
        if outcome is None:
            left.append(spec)
            continue
        refused(spec, outcome.error or "")
        if fail_fast:
            return []
    return left


def _refused(spec: RunSpec, error: str, reporter: PlainReporter, outcome: dict[str, list[str]]) -> None:
    """An interrupted run `refuse_unresumable_runs` failed before it started: counted failed, said so."""
    outcome["failed"].append(spec.run_id)
    reporter.refuse(spec.run_id, error)


def _record(spec: RunSpec, kind: str, reporter: PlainReporter, outcome: dict[str, list[str]],
            summary: dict[str, Any] | None = None, error: str | None = None) -> None:
    outcome[kind].append(spec.run_id)
    if kind == "skipped":
        reporter.skip(spec.run_id, "already done" + (f"; {error}" if error else ""))
    elif kind == "busy":
        reporter.skip(spec.run_id, "running in another process")
    elif kind == "damaged":
        outcome["damage"].append(error or spec.run_id)
        reporter.skip(spec.run_id, f"finished, but damaged: {error}")
    else:
        reporter.run_end(spec.run_id, summary, error)


def check_runs(runs: list[RunSpec], prepared_for: Callable[[RunSpec], Any]) -> None:
    """UsageError, before any run trains, when some run cannot train on its task's plan (`check_trainable`:
    what `expand` cannot know before the plan exists, such as a patch DynUNet cannot pool at the plan's
    spacing, or a plan.json edited to a batch BatchNorm cannot train on). Names the first such run and
    counts the others. No run to check imports nothing (training imports torch and Lightning: a sweep whose
    every run is done took 8 s and 1 GB for it)."""
    if not runs:
        return
    from medseg_bench.training import check_trainable

    problems: list[tuple[str, str]] = []
    for spec in runs:
        try:
            check_trainable(spec, prepared_for(spec))
        except UsageError as exc:
            problems.append((spec.run_id, str(exc)))
    if problems:
        run_id, message = problems[0]
        others = len(problems) - 1
        more = f" ({others} more run{'s' * (others > 1)} cannot train either)" if others else ""
        raise UsageError(f"run {run_id} cannot train: {message}{more}; nothing was trained (leave such "
                         "runs out with --exclude)")


def check_cache_memory(runs: list[RunSpec], planned: dict[tuple[str, int], PlannedTask],
                       data_dir: Path) -> None:
    """DataError, before anything is built, naming a case of a cache the sweep would build that cannot be
    preprocessed even alone in the memory this process may use (`preprocess.check_caches_fit`), once per
    task, for its 2D runs' own cache too where some run keeps its slices (as `prepare_tasks`)."""
    from medseg_bench.data.preprocess import check_caches_fit, usable_cases

    for key in dict.fromkeys(map(prepared_key, runs)):  # a task whose every run was refused builds nothing
        task = planned[key]
        own_slices = any(spec.own_slice_spacing for spec in runs if prepared_key(spec) == key)
        check_caches_fit(usable_cases(task.task, data_dir), task.plan, task.root, own_slices)


def check_evaluation_memory(runs: list[RunSpec], prepared: dict[tuple[str, int], Any],
                            data_dir: Path) -> None:
    """DataError, before any run trains (and before the cache is built: `prepared` may hold a task's plan and
    splits alone, `PlannedTask`), naming a held-out case some run's evaluation cannot predict in the memory
    this process may use (`inference_memory.check_evaluations`, sized from the fingerprint), once per
    task."""
    if not runs:
        return
    from medseg_bench.checks import usable_memory
    from medseg_bench.inference_memory import check_evaluations

    memory = usable_memory()
    for key, task in prepared.items():
        check_evaluations([spec for spec in runs if prepared_key(spec) == key], task, data_dir, memory)


def _sequential(runs: list[RunSpec], results_dir: Path, reporter: PlainReporter, prepared: dict[Any, Any],
                fail_fast: bool, num_workers: int | None, outcome: dict[str, list[str]],
                checked: dict[str, CheckpointStamp] | None = None) -> None:
    began: set[str] = set()  # said to be training: the others that fail, failed before they started

    def start(run_id: str) -> None:
        began.add(run_id)
        reporter.run_start(run_id)

    for spec in runs:
        task = prepared[prepared_key(spec)]
        workers = default_num_workers(spec) if num_workers is None else num_workers
        result = run_one(spec, task, results_dir, reporter, workers, started=start,
                         checked=(checked or {}).get(spec.run_id))
        if result.kind == "failed" and spec.run_id not in began:  # its resume check, under the lock
            _refused(spec, result.error or "", reporter, outcome)
        else:
            _record(spec, result.kind, reporter, outcome, result.summary, result.error)
        if result.kind == "failed" and fail_fast:
            break


@dataclass
class _Job:
    spec: RunSpec
    process: subprocess.Popen[bytes]
    epoch: int = 0
    started: float = field(default_factory=time.time)  # older heartbeats are an earlier attempt's
    announced: bool = False  # "training" said: once its worker's own heartbeat shows it holds the run
    evaluating: bool = False  # its heartbeat's stage said so: the reporter told once


def _slots(jobs: int) -> tuple[int, list[str | None]]:
    """(jobs, device per slot): one GPU per job when there are GPUs, else CPU threads split between jobs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        jobs = min(jobs, gpus)
        return jobs, [str(i) for i in range(jobs)]
    return jobs, [None] * jobs


def _parallel(runs: list[RunSpec], results_dir: Path, data_dir: Path, reporter: PlainReporter,
              fail_fast: bool, num_workers: int | None, jobs: int, outcome: dict[str, list[str]],
              checked: dict[str, CheckpointStamp] | None = None) -> None:
    jobs, devices = _slots(jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    todo = list(runs)
    active: dict[int, _Job] = {}
    failed = False
    try:
        while todo or active:
            free = [slot for slot in range(jobs) if slot not in active]
            while free and todo:
                spec = todo.pop(0)
                folder = run_dir(results_dir, spec)
                if is_live(folder):
                    _record(spec, "busy", reporter, outcome)
                    continue
                slot = free.pop(0)
                workers = default_num_workers(spec) if num_workers is None else num_workers
                with deferred():  # a stop between the start and the bookkeeping: a worker nobody stops
                    active[slot] = _Job(spec, _start_worker(spec, folder, results_dir, data_dir,
                                                            devices[slot], threads, workers,
                                                            (checked or {}).get(spec.run_id)))
            time.sleep(POLL_S)
            for slot, job in list(active.items()):
                _forward_epochs(job, results_dir, reporter)
                code = job.process.poll()
                if code is None:
                    continue
                del active[slot]
                failed = not _settle(job, code, results_dir, reporter, outcome) or failed
            if failed and fail_fast:
                # no other run starts, and the runs training beside the failed one are stopped, as an
                # interruption stops them (they resume next time): they trained on to their end, where the
                # help says the sweep stops at the first failed run
                break
    finally:
        _stop_workers([job.process for job in active.values()])
        for job in active.values():  # held by its worker before the loop saw so, or evaluating since
            _forward_epochs(job, results_dir, reporter)
        for job in active.values():  # stopped: a run that had finished first is recorded as it ended, also
            code = job.process.poll()  # where the signal reached its worker after the run was done
            if code != EXIT_SKIPPED and is_done(run_dir(results_dir, job.spec)):
                code = EXIT_DONE
            if code in (EXIT_DONE, EXIT_SKIPPED):
                _settle(job, code, results_dir, reporter, outcome)


def _settle(job: _Job, code: int, results_dir: Path, reporter: PlainReporter,
            outcome: dict[str, list[str]]) -> bool:
    """Record how a worker's run ended (its exit `code`); False when it failed."""
    folder = run_dir(results_dir, job.spec)
    ran = code not in (EXIT_SKIPPED, EXIT_BUSY, EXIT_DAMAGED)
    if ran and not job.announced:
        if code != EXIT_DONE and not _holds_run(job, results_dir):  # failed before it trained: its resume
            outcome["failed"].append(job.spec.run_id)  # check under the lock, or an error before it held it
            reporter.refuse(job.spec.run_id, _failed(folder, code))
            return False
        job.announced = True  # ended before the loop saw its heartbeat
        reporter.run_start(job.spec.run_id)
    if code == EXIT_SKIPPED or (code == EXIT_DONE and is_done(folder)):
        kind = "done" if code == EXIT_DONE else "skipped"
        _record(job.spec, kind, reporter, outcome, read_json(folder / "summary.json"))
    elif code == EXIT_BUSY:
        _record(job.spec, "busy", reporter, outcome)
    elif code == EXIT_DAMAGED:  # lost a file after this sweep looked: named as such, not "failed"
        _record(job.spec, "damaged", reporter, outcome, error=finished_damage(folder))
    else:
        _record(job.spec, "failed", reporter, outcome, error=_failed(folder, code))
        return False
    return True


def _failed(folder: Path, code: int) -> str:
    """Why the worker of the run in `folder` failed (exit `code`), recorded in the run folder where the
    worker was killed before it could record it, so that `status` shows the run failed with this line."""
    message = failure_message(folder, code)
    record_unrecorded_failure(folder, message)
    return message


def _stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    """Interrupted: each worker gets the signal the sweep got (SIGINT, SIGTERM or SIGHUP; else SIGTERM): it
    records `interrupted` with that reason, keeps its last checkpoint and exits at once; SIGKILL for any still
    there after STOP_GRACE_S. Their runs resume next time."""
    import signal

    # stopped by its closed stdout (SIGPIPE, `signals.pipe_closed`), which workers ignore: SIGTERM
    got = received()
    signum = got if got is not None and got in STOP_SIGNALS else signal.SIGTERM
    for process in processes:
        if process.poll() is None:
            process.send_signal(signum)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_worker(spec: RunSpec, folder: Path, results_dir: Path, data_dir: Path, device: str | None,
                  threads: int, workers: int,
                  checked: CheckpointStamp | None = None) -> subprocess.Popen[bytes]:
    """A worker process for `spec`; `checked`: the stamp of its last checkpoint as this sweep's early check
    passed it (`worker.refuse_unresumable`), which the worker does not load again to check while unchanged."""
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "spec.json").is_file():  # `status` lists the run (pending) while its worker starts: it
        # said "no runs here" for the seconds a worker takes to import torch and hold its run
        from medseg_bench.files import write_json_atomic

        write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    command = [sys.executable, "-m", "medseg_bench.sweep", "--spec", json.dumps(spec.to_dict()),
               "--results-dir", str(results_dir), "--data-dir", str(data_dir), "--threads", str(threads),
               "--workers", str(workers), "--parent", str(os.getpid()),
               *(["--checked", stamp_argument(checked)] if checked is not None else [])]
    with open(folder / "worker.log", "ab") as log:
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def _forward_epochs(job: _Job, results_dir: Path, reporter: PlainReporter) -> None:
    """Say "training" once the job's worker holds its run (its own heartbeat, by pid: another process's
    is not this job's, nor is an earlier attempt's), then each epoch it finishes, then that it evaluates
    (the heartbeat's `stage`: a stop after it is counted as one while evaluating)."""
    beat = _own_heartbeat(job, results_dir)
    if beat is None:
        return
    if not job.announced:
        job.announced = True
        reporter.run_start(job.spec.run_id)
    epoch = int(beat.get("epoch") or 0)
    if epoch > job.epoch:
        job.epoch = epoch
        reporter.epoch_end(job.spec.run_id, epoch, int(beat.get("epochs") or job.spec.epochs),
                           float(beat.get("loss", float("nan"))), float(beat.get("val_dice", float("nan"))))
    if beat.get("stage") == "evaluating" and not job.evaluating:
        job.evaluating = True
        reporter.evaluating(job.spec.run_id)


def _own_heartbeat(job: _Job, results_dir: Path) -> dict[str, Any] | None:
    """The heartbeat of the job's run where its worker wrote it in this attempt (by pid and host, since the
    job started), else None: its worker held the run and passed its resume check (`run_one` starts the
    heartbeat then)."""
    beat = read_json(run_dir(results_dir, job.spec) / "heartbeat.json")
    beat_time = beat.get("time")
    if not isinstance(beat_time, int | float) or beat_time < job.started:
        return None
    if beat.get("pid") != job.process.pid or beat.get("host") != socket.gethostname():
        return None
    return beat


def _holds_run(job: _Job, results_dir: Path) -> bool:
    return _own_heartbeat(job, results_dir) is not None
