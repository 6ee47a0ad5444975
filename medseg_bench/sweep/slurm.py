"""The SLURM launcher (submitit): the pending runs of a sweep become one job array, one run per job.

Every job writes only its own run folder in the shared results dir, under the run's lock. A job that times
out is requeued (SLURM signals the job before the end, USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise; a
preempted job gets that signal only where the cluster sets PreemptParameters=preempt_send_user_signal, else
SIGTERM), and the requeued job resumes the run from `checkpoints/last.ckpt`. The signal first stops
the run as Ctrl-C does, so that it records `interrupted`; only then does submitit's handler checkpoint the
callable and `scontrol requeue` the job, which has SLURM kill it (SIGKILL KillWait seconds later). Left to
interrupt training itself, that handler started the kill before the run's bookkeeping, and a requeue that
failed (or a job timed out too often) marked the run failed instead of interrupted. SIGTERM (scancel, a
preemption without the warning) stops the run the same way, without the requeue: SLURM requeues a preempted
job itself where its PreemptMode says so.
Submitit's own files (the pickled job, its stdout/stderr) go to `<results_dir>/.slurm/`. A job unpickles its
callable from there, so whoever can write that file runs code as the job's user: the folder is made the
submitter's alone (0o700), a results dir every user can write to is refused and one a group can write to
warned of (`sweep/job_files.py`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit

from medseg_bench.errors import RunError, UsageError, first_line, one_line
from medseg_bench.files import write_json_atomic
from medseg_bench.locks import LOCK_NAME, exclusive
from medseg_bench.results import check_run_folders, checked_state, run_dir, write_index
from medseg_bench.run_folder import QUEUED_NAME, read_json
from medseg_bench.signals import deferred, interruptible, is_stop, received
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.job_files import check_private_results, job_folder

if TYPE_CHECKING:
    from medseg_bench.sweep.worker import CheckpointStamp, Outcome


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str = "12:00:00"
    gpus_per_job: int = 0
    cpus_per_job: int = 4
    mem_gb: float = 16.0
    array_parallelism: int = 64
    num_workers: int | None = None

    def check(self) -> None:
        """Refuse a value sbatch would refuse only after the cache is built, or would read otherwise than
        meant (`--mem=0` is all of a node's memory), with the option's name."""
        parse_time_minutes(self.time)
        if self.partition is not None:
            script_value("--partition", self.partition)
        for option, value, least in (("--gpus-per-job", self.gpus_per_job, 0),
                                     ("--cpus-per-job", self.cpus_per_job, 1),
                                     ("--array-parallelism", self.array_parallelism, 1)):
            if value < least:
                raise UsageError(f"{option} must be at least {least}, not {value}")
        # submitit writes whole MB: less than 1 MB would reach sbatch as --mem=0, a whole node's memory
        if not math.isfinite(self.mem_gb) or self.mem_gb * 1024 < 1:
            raise UsageError(f"--mem-gb must be at least 0.001 (1 MB; sbatch reads 0 as all of a node's "
                             f"memory), not {self.mem_gb:g}")


def script_value(what: str, value: str) -> None:
    """UsageError for a value that submitit writes into the job script's `#SBATCH` lines (quoted, so `$(...)`
    and `;` stay text) holding a line break or another control character: the line after it would be a
    command of its own, which the job runs."""
    if not value.isprintable():
        raise UsageError(f"{what} '{one_line(value)}': a line break or control character cannot go into the "
                         "SLURM job script (the line after it would run as a command)")


# sbatch's --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours, days-hours:minutes,
# days-hours:minutes:seconds
_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", re.ASCII)


def parse_time_minutes(value: str) -> int:
    """A SLURM time limit, read as sbatch reads `--time`, in minutes (seconds rounded up, as SLURM does).

    Two numbers are minutes:seconds and a day prefix is followed by hours (`30:00` is half an hour, `1-12`
    a day and a half), as sbatch reads them."""
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise UsageError(f"--time takes minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (as sbatch), "
                         f"not '{value}'")
    days, first, second, third = (int(group) if group else 0 for group in match.groups())
    if match.group(1) is None and match.group(4) is None:  # minutes[:seconds]
        hours, minutes, seconds = 0, first, second
    else:  # [days-]hours[:minutes[:seconds]]
        hours, minutes, seconds = first, second, third
    total = (days * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    if total < 1:
        raise UsageError(f"--time must be at least one minute, not '{value}'")
    return total


# A job whose run is held by another process retries this long: the holder may be an earlier attempt
# still ending (see `until_free`)
BUSY_WAIT_S = 180.0
BUSY_POLL_S = 5.0
SUBMIT_LOCK = ".slurm-submit.lock"  # in the results dir


class SlurmRun(submitit.helpers.Checkpointable):
    """One run as a SLURM job; requeued (same callable) on timeout or preemption, then resumes."""

    def __init__(self, spec: dict[str, Any], results_dir: str, data_dir: str,
                 num_workers: int | None, checked: CheckpointStamp | None = None) -> None:
        self.spec, self.results_dir, self.data_dir = spec, results_dir, data_dir
        self.num_workers = num_workers
        # the stamp of the last checkpoint the submission's check passed (`local.refuse_unresumable_runs`):
        # the job's check loads it only where it changed since (a requeued attempt's newer one), or where
        # its node stats it otherwise (a network file system's device number)
        self.checked = checked

    def __call__(self) -> str:
        import torch

        from medseg_bench.sweep.local import default_num_workers, prepare_locked
        from medseg_bench.sweep.worker import run_one

        spec = RunSpec.from_dict(self.spec)
        env = submitit.JobEnvironment()
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # the CPUs SLURM gave the job
        warning = preempt_signal()
        requeue = signal.getsignal(warning)  # submitit's: checkpoint(), scontrol requeue, exit
        # SIGTERM too: scancel, a preemption without the warning, the time limit itself. submitit only logs it
        # ("Bypassing signal SIGTERM"), so a job preparing the task ran on until SLURM's SIGKILL
        with interruptible(tuple(dict.fromkeys((warning, signal.SIGTERM)))):
            try:
                prepared = prepare_locked(spec.task, Path(self.data_dir), spec.num_folds,
                                          own_slices=spec.own_slice_spacing)
                workers = default_num_workers(spec) if self.num_workers is None else self.num_workers
                outcome = until_free(spec, Path(self.results_dir), env.job_id, lambda: run_one(
                    spec, prepared, Path(self.results_dir), num_workers=workers,
                    extra_event={"job_id": env.job_id}, checked=getattr(self, "checked", None)))
            except BaseException as exc:  # a stop, as `signals.is_stop` tells it: submitit requeues
                if not is_stop(exc) or received() != warning or not callable(requeue):
                    raise
                requeue(warning, None)  # the run has recorded `interrupted`; a second warning is ignored
                raise
        if outcome.kind in ("failed", "damaged"):
            raise RunError(outcome.error or f"run {spec.run_id} failed")
        if outcome.kind == "done":
            write_index(Path(self.results_dir))
        elif outcome.kind == "skipped":
            print(f"run {spec.task}/{spec.run_id} is already done: nothing to do"
                  + (f" ({outcome.error})" if outcome.error else ""), flush=True)
        return outcome.kind


def until_free(spec: RunSpec, results_dir: Path, job_id: str, attempt: Callable[[], Outcome]) -> Outcome:
    """`attempt()` (the run, as `run_one`), again every BUSY_POLL_S for BUSY_WAIT_S while another process
    holds the run's lock: an earlier attempt may still be ending (its node slow to kill it, a lock on a
    network file system that outlives a failed node for a lease time). Each wait, and a run left to the
    holder, is said in the job's log: the job ends without the run, as nothing else would say."""
    outcome = attempt()
    if outcome.kind != "busy":
        return outcome
    lock = run_dir(results_dir, spec) / LOCK_NAME
    print(f"run {spec.task}/{spec.run_id} is held by {_holder(lock)}: waiting up to {BUSY_WAIT_S:.0f} s "
          "for it to end", file=sys.stderr, flush=True)
    deadline = time.monotonic() + BUSY_WAIT_S
    while outcome.kind == "busy" and time.monotonic() < deadline:
        time.sleep(BUSY_POLL_S)
        outcome = attempt()
    if outcome.kind == "busy":
        print(f"warning: job {job_id} leaves run {spec.task}/{spec.run_id} to {_holder(lock)}, which has "
              f"held it for {BUSY_WAIT_S:.0f} s ({lock}); if `medseg-bench status` shows the run partial or "
              "pending later, sweep again to submit it", file=sys.stderr, flush=True)
    return outcome


def _holder(lock: Path) -> str:
    """Who holds a run's lock, as its file says ('pid host', written by the holder)."""
    try:
        pid, host = lock.read_text().split()
    except (OSError, ValueError):
        return "another process"
    return f"process {pid} on {host}"


def preempt_signal() -> int:
    """The signal SLURM sends a job before its time limit or a preemption: submitit's (its sbatch
    `--signal`), USR2 unless SUBMITIT_PREEMPT_SIGNAL names another."""
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    signum = getattr(signal, name, None)
    if not isinstance(signum, signal.Signals):
        raise RunError(f"SUBMITIT_PREEMPT_SIGNAL names no signal: {name}")
    return int(signum)


def squeue_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of those `job_ids` still in its queue (`RUNNING`, `PENDING: Priority`: a pending job's
    reason, which tells a job that waits its turn from one that cannot start, `PENDING: PartitionTimeLimit`);
    a job not in the answer has left the queue. RunError naming why when squeue cannot answer."""
    if not job_ids:
        return {}
    if shutil.which("squeue") is None:
        raise RunError("squeue is not on PATH")
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        raise RunError("squeue gave no answer in 30 s") from None
    except OSError as exc:
        raise RunError(f"squeue could not be run ({exc.strerror or exc})") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        raise RunError(f"squeue failed: {lines[0] if lines else f'exit code {done.returncode}'}")
    wanted = set(job_ids)
    states = {}
    for line in done.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id in wanted:
            states[job_id] = f"{state}: {reason}" if state == "PENDING" and reason not in ("", "None") \
                else state
    return states


def partition_problem(partition: str | None) -> str | None:
    """Why SLURM has no partition `partition`, from `scontrol show partition` (`Partition P not found`), or
    None: it has it, none was given, or scontrol cannot say (not on PATH, no answer, another error: sbatch
    then tells). Asked before a sweep builds its caches: sbatch refused an unknown partition only after."""
    if not partition or shutil.which("scontrol") is None:
        return None
    try:
        done = subprocess.run(["scontrol", "show", "partition", partition], capture_output=True, text=True,
                              timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return None
    said = [line.strip() for line in f"{done.stderr}\n{done.stdout}".splitlines() if line.strip()]
    if done.returncode != 0 and said and "not found" in said[0]:
        return one_line(f"--partition {partition}: SLURM has no such partition (scontrol: {said[0]})")
    return None


def queued_job(folder: Path) -> str | None:
    return read_json(folder / QUEUED_NAME).get("job_id")


@dataclass
class Submission:
    """What a submission did: the runs submitted, with their job ids (`jobs`); what is wrong with each
    finished run found damaged (`damaged`: never submitted, training it again would overwrite what it
    wrote); the interrupted runs that cannot resume (`failed`, their run ids: failed before any job was
    submitted, as the local sweep fails them, `local.refuse_unresumable_runs`)."""

    jobs: list[tuple[RunSpec, str]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def submit(runs: list[RunSpec], results_dir: Path, data_dir: Path, options: SlurmOptions,
           say: Any = print, prepare: Callable[[list[RunSpec]], object] | None = None,
           fail_fast: bool = False) -> Submission:
    """Submit the runs that are neither done, running, nor already in the SLURM queue, as one job array.
    An interrupted run among them that cannot resume fails first, before any cache is built, as in the local
    sweep (`local.refuse_unresumable_runs`: its folder records why, and its job would only fail); with
    `fail_fast`, as the local sweep too, the first such run is failed and nothing else is looked at, prepared
    or submitted (the jobs themselves, once submitted, run apart: `--fail-fast` stops none of them). With
    `prepare` (given the runs left, it builds their tasks' caches), each run left is first checked against
    its plan (`check_runs`, on `local.plan_tasks`: the plan and splits, before any cache is built), then
    prepared; where no run is left, nothing is planned or prepared.

    One submission to a results dir at a time (`SUBMIT_LOCK`): two at once each found the other's runs not
    queued yet and submitted them too, and one whose sbatch failed deleted the other's new job files."""
    script_value("--results-dir", str(results_dir.resolve()))  # its job logs: `#SBATCH --output=...`
    with exclusive(results_dir, SUBMIT_LOCK,
                   on_wait=lambda: say("waiting for another submission to this results dir to finish")):
        return _submit(runs, results_dir, data_dir, options, say, prepare, fail_fast)


def _submit(runs: list[RunSpec], results_dir: Path, data_dir: Path, options: SlurmOptions, say: Any,
            prepare: Callable[[list[RunSpec]], object] | None, fail_fast: bool) -> Submission:
    from medseg_bench.sweep.local import check_runs, plan_tasks, prepared_key, refuse_unresumable_runs

    check_private_results(results_dir, say=lambda line: None)  # `sweep` has said its warning already
    check_run_folders(results_dir, runs)
    folders = {spec.run_id: run_dir(results_dir, spec) for spec in runs}
    queued = {spec.run_id: queued_job(folders[spec.run_id]) for spec in runs}
    try:  # asked before the folders are read: a job that ends meanwhile has left its run's final state
        in_queue, unknown = squeue_states([job for job in queued.values() if job]), None
    except RunError as exc:
        in_queue, unknown = {}, str(exc)
    todo = []
    summary = Submission()
    for spec in runs:
        state, damage = checked_state(folders[spec.run_id])
        job = queued[spec.run_id]
        if state == "damaged":
            summary.damaged.append(damage or spec.run_id)
            say(f"damaged  {spec.task}/{spec.run_id}: {summary.damaged[-1]}; not submitted")
        elif state in ("done", "running"):
            say(f"{state:8s} {spec.task}/{spec.run_id}: not submitted")
        elif job and unknown:  # submitting blind would put a run whose job is still queued in twice
            raise RunError(f"cannot tell whether job {job} of {spec.task}/{spec.run_id} is still in SLURM's "
                           f"queue: {unknown}; nothing submitted")
        elif job and job in in_queue:
            say(f"queued   {spec.task}/{spec.run_id}: already in the queue as job {job} ({in_queue[job]})")
        else:
            todo.append(spec)

    def refused(spec: RunSpec, error: str) -> None:
        summary.failed.append(spec.run_id)
        say(f"failed   {spec.task}/{spec.run_id}: {error}; not submitted")

    planned: dict[tuple[str, int], Any] = {}  # what the refusals planned, not planned again
    checked: dict[str, CheckpointStamp] = {}  # checkpoints the refusals passed: their jobs load them no more
    todo = refuse_unresumable_runs(todo, results_dir, data_dir, refused, planned, checked,
                                   fail_fast=fail_fast)
    if fail_fast and summary.failed:
        say("nothing submitted: --fail-fast stops at the first failed run")
        return summary
    if not todo:
        say("nothing to submit")
        return summary
    if prepare is not None:
        plan_tasks(todo, data_dir, say, into=planned)  # what a run can train on: the plan's, not the cache's
        check_runs(todo, lambda spec: planned[prepared_key(spec)])
        prepare(todo)
    slurm_dir = job_folder(results_dir)
    try:
        executor = submitit.AutoExecutor(folder=slurm_dir / "%j", cluster="slurm")
    except RuntimeError as exc:  # no srun/sbatch where submitit looks for them
        raise RunError(f"SLURM is not usable here: {first_line(exc)}") from None
    timeout_min = parse_time_minutes(options.time)
    params: dict[str, Any] = {
        "name": "medseg-bench", "timeout_min": timeout_min,
        "cpus_per_task": options.cpus_per_job, "mem_gb": options.mem_gb,
        "slurm_array_parallelism": options.array_parallelism,
        # SLURM warns the job this long before its time limit; submitit then requeues it
        "slurm_signal_delay_s": int(min(120, timeout_min * 60 / 4)),
    }
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.gpus_per_job:
        params["gpus_per_node"] = options.gpus_per_job
    executor.update_parameters(**params)
    jobs: list[Any] = []
    before = set(slurm_dir.iterdir())
    # before sbatch: a job may start (and record its attempt) before queued.json is written, and `queued`
    # means submitted and not started since
    submitted_at = time.time()
    # A Ctrl-C from here takes effect once every job sbatch made is recorded: submitit runs sbatch as its
    # batch ends, then moves each job's files into place; one interrupted there (until 2026-12-04) left a job
    # no queued.json names, and its run was submitted again.
    with deferred():
        try:  # submitit prints a failed sbatch's stderr before raising it: the error below quotes its reason
            with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                for spec in todo:
                    jobs.append(executor.submit(SlurmRun(spec.to_dict(), str(results_dir.resolve()),
                                                         str(data_dir.resolve()), options.num_workers,
                                                         checked.get(spec.run_id))))
        except Exception as exc:  # noqa: BLE001 - sbatch errors come as several submitit exception types
            for leftover in set(slurm_dir.iterdir()) - before if slurm_dir.is_dir() else ():
                if leftover.is_file():  # the pickles and job script of a submission that never happened
                    leftover.unlink(missing_ok=True)
            raise RunError(f"sbatch failed: {_sbatch_reason(exc)}") from None
        for spec, job in zip(todo, jobs, strict=True):
            folder = run_dir(results_dir, spec)
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / QUEUED_NAME, {"job_id": job.job_id, "time": submitted_at})
            summary.jobs.append((spec, job.job_id))
            say(f"submitted {spec.task}/{spec.run_id} as job {job.job_id}")
    return summary


def _sbatch_reason(exc: BaseException) -> str:
    """The line of sbatch's output that says why: its `fatal:` line when there is one (an unconfigured client
    prints several `error:` lines first, then `fatal: Could not establish a configuration source`)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    fatal = [line for line in lines if "fatal:" in line]
    return (fatal or lines or [type(exc).__name__])[0]
