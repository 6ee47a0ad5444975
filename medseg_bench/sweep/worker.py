"""One run of a sweep, the same way under every launcher: take the run's lock, re-check that it is not done,
record the attempt, keep a heartbeat, execute it.

`main()` is the entry point of a local parallel job (`python -m medseg_bench.sweep`), which the local launcher
starts once per run with the spec as JSON (no shell involved).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medseg_bench.checks import are_whole, is_whole
from medseg_bench.errors import MedsegError, RunError
from medseg_bench.files import load_json_object
from medseg_bench.finished import finished_damage
from medseg_bench.locks import RunLock
from medseg_bench.provenance import attempt_record, environment
from medseg_bench.results import SETUP_NAME, run_dir
from medseg_bench.run_folder import (
    HEARTBEAT_INTERVAL_S,
    SPILL_NAME,
    append_event,
    is_done,
    read_events,
    read_json,
    read_status,
    unrecorded_end,
    write_heartbeat,
    write_status,
)
from medseg_bench.signals import deferred, exit_now, interruptible, is_stop, received, stop_reason, undeferred
from medseg_bench.spec import RunSpec

if TYPE_CHECKING:
    from medseg_bench.data.preprocess import PlannedTask, PreparedTask

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"  # in a run folder: an interrupted run resumes from it

# Exit codes of a worker process; the local launcher reads them.
EXIT_DONE, EXIT_FAILED, EXIT_SKIPPED, EXIT_BUSY, EXIT_DAMAGED = 0, 5, 10, 11, 12


@dataclass
class Outcome:
    kind: str  # done | failed | skipped | busy | damaged (finished, a file of it lost since: left as it is)
    summary: dict[str, Any] | None = None
    error: str | None = None


class Heartbeat:
    """Rewrites `heartbeat.json` every `interval_s` from a thread, and at each epoch end with its progress;
    from the end of training on, with `"stage": "evaluating"` (how a `--jobs` launcher tells a run stopped
    while evaluating from one stopped while training).

    It is the `run.RunReporter` the run sees; it forwards epochs and the evaluation's start to the sweep's
    reporter, if any.
    """

    def __init__(self, folder: Path, run_id: str, forward: Any = None,
                 interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.folder, self.run_id, self.forward, self.interval_s = folder, run_id, forward, interval_s
        self.progress: dict[str, Any] = {"run_id": run_id}
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{run_id}", daemon=True)

    def _beat(self) -> None:
        with self._write_lock:
            try:
                write_heartbeat(self.folder, **self.progress)
            except OSError:
                pass  # a missed beat only makes the run look stale sooner; the lock still protects it

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat()

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        self.progress.update(epoch=epoch, epochs=epochs, loss=train_loss, val_dice=val_dice)
        self._beat()
        if self.forward is not None:
            self.forward.epoch_end(run_id, epoch, epochs, train_loss, val_dice)

    def evaluating(self, run_id: str) -> None:
        self.progress.update(stage="evaluating")
        self._beat()
        if self.forward is not None:
            self.forward.evaluating(run_id)


def clean_temp_files(folder: Path) -> list[Path]:
    """Remove temp files that a killed writer left in a run folder (never read: every write renames), and
    the held-out cases a killed evaluation spilled (`SPILL_NAME`: a fold's predictions and label maps, GBs
    on a CT task, else kept while the resumed run trains)."""
    leftovers = [p for p in [*folder.glob(".*.tmp"), *folder.glob("*/.*.tmp")] if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    spill = folder / SPILL_NAME
    if spill.is_dir() and not spill.is_symlink():
        shutil.rmtree(spill, ignore_errors=True)
        leftovers.append(spill)
    return leftovers


def _is_split(data: dict[str, Any]) -> bool:
    return all(isinstance(data.get(key), list) and all(isinstance(case, str) for case in data[key])
               for key in ("train", "val"))


def _is_setup(data: dict[str, Any], sides: int) -> bool:
    """A setup.json of a run whose patches have `sides` sides (2D: 2, 3D: 3)."""
    return (are_whole(data.get("patch_size"), sides, least=1) and is_whole(data.get("batch_size"), least=1)
            and isinstance(data.get("preprocessing", {}), dict))  # absent in runs before it was recorded


def _started_with(path: Path, what: str, fits: Callable[[dict[str, Any]], bool],
                  shape: str) -> tuple[dict[str, Any] | None, str | None]:
    """What an interrupted run recorded when it started (its `what`), or why that record is unusable.

    (None, None) when the run has no such file (a run from before it was written, or one that never got that
    far: nothing holds its resume, as ever); a file there that cannot be read, or is not `shape`, fails the
    run: resuming without the guard it stands for would mix two setups under one run id."""
    if not path.is_file():
        return None, None
    data, why = load_json_object(path)
    if data is not None and fits(data):
        return data, None
    return None, (f"{path}: {why or f'not {shape}'}; the run started with the {what} this file records and "
                  "resumes only with it: restore the file, or delete the run folder to train from scratch")


def setup_problem(spec: RunSpec, prepared: PlannedTask | PreparedTask, folder: Path) -> str | None:
    """Why an interrupted run cannot resume with the task as it is now, or None: its fold's split, the patch
    or batch size it took from the plan, or the plan's preprocessing (target spacing, normalisation: another
    cache) changed since it started (resuming would mix two setups under one run id, and score held-out cases
    it trained on), or the file that records them is damaged. It reads the task's plan and splits, not its
    cache: a sweep asks it before the cache is built (`refuse_unresumable`), and `run_one` again."""
    from medseg_bench.data.plan import preprocessing_change
    from medseg_bench.regions import labels_change, regions_change
    from medseg_bench.training import resolve_patch_and_batch

    then, problem = _started_with(folder / "splits.json", "split", _is_split,
                                  'an object with "train" and "val", each a list of case ids')
    if problem:
        return problem
    if then is not None and then != prepared.splits[spec.fold]:
        changed = len(set(then["val"]) ^ set(prepared.splits[spec.fold]["val"]))
        differ = f"{changed} held-out {'case differs' if changed == 1 else 'cases differ'}"
        return (f"{folder / 'splits.json'}: the run started with another split of fold {spec.fold} than "
                f"the task's splits file gives now ({differ}); restore that file, or "
                "delete the run folder to start over")
    sides = 2 if spec.dims == "2d" else 3  # a patch of other sides was said to differ from the plan's
    setup, problem = _started_with(folder / SETUP_NAME, "patch and batch size",
                                   lambda data: _is_setup(data, sides),
                                   f'an object with "patch_size", a list of {sides} positive whole numbers, '
                                   'and "batch_size", a positive whole number')
    if problem:
        return problem
    change = preprocessing_change(setup["preprocessing"], prepared.plan.preprocessing) if (
        setup is not None and "preprocessing" in setup) else ""
    if change:
        return (f"{folder / SETUP_NAME}: the run started with {change}: restore plan.json, or delete the run "
                "folder to start over")
    # a region run's channels are its task's regions, in order: another set would train them as others
    regions = regions_change(setup, prepared.task) if setup is not None and "regions" in setup else None
    if regions:
        return (f"{folder / SETUP_NAME}: {regions}: restore the task file's regions, or delete the run "
                "folder to start over")
    # the same for its labels, recorded from 2026-12-04 (the task file's version is in the run id)
    labels = labels_change(setup, spec.task_version, prepared.task) if setup and "labels" in setup else None
    if labels:  # a label network's channels are the labels: two swapped resumed, training each as the other
        return (f"{folder / SETUP_NAME}: {labels}: restore the task file's labels, or delete the run folder "
                "to start over")
    patch, batch = resolve_patch_and_batch(spec, prepared)
    if setup is not None and (setup["patch_size"] != list(patch) or setup["batch_size"] != batch):
        old = "x".join(map(str, setup["patch_size"]))
        return (f"{folder / SETUP_NAME}: the run started with patch {old}, batch {setup['batch_size']}; "
                f"plan.json now gives {'x'.join(map(str, patch))}, batch {batch}: restore plan.json, or "
                "delete the run folder to start over")
    return None


def checkpoint_problem(spec: RunSpec, prepared: Any, checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (corrupt, foreign, or not plain tensors), or None.

    Our checkpoints are written atomically, so a bad one was put there from outside: it is refused, not
    silently replaced, and the message says how to start over. The network is built from the spec and the
    plan alone (`training.build_network`: the task's channels and labels, the plan's patch and spacing), so
    `prepared` may be a `PlannedTask`, its cache not built: a sweep asks it before the build.
    """
    from medseg_bench.checkpoints import resume_problem
    from medseg_bench.training import build_network

    # weights_only=True: no code runs; a foreign checkpoint, resumed, would train on as this run. Mapped, the
    # check reads the weights alone: Lightning's load that follows is the one full read of the file.
    problem = resume_problem(build_network(spec, prepared), checkpoint, spec.run_id)
    return f"{problem}; delete it to train run {spec.run_id} from scratch" if problem else None


# A file as a check found it: its device, inode, size, modification and change times (ns). Every checkpoint is
# written to a temp file and renamed (another inode), and an edit in place changes its size or times: its
# change time also where the modification time is set back (another run's checkpoint of the same network,
# written over it in place, then `touch -r`: of its size, inode and time, it was evaluated as this run's).
CheckpointStamp = tuple[int, int, int, int, int]


def checkpoint_stamp(path: Path) -> CheckpointStamp | None:
    """`path`'s `CheckpointStamp`, or None where it cannot be stat'ed."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns


def resume_refusal(spec: RunSpec, prepared: PlannedTask | PreparedTask, folder: Path,
                   checked: CheckpointStamp | None = None) -> str | None:
    """Why the interrupted run in `folder` cannot resume: its setup changed (`setup_problem`), else its last
    checkpoint is corrupt or foreign (`checkpoint_problem`); None where it can. Neither reads the cache.
    `checked`: the last checkpoint's stamp when the sweep's early check passed it (`refuse_unresumable`);
    where the file still has that stamp it is the file checked, and is not loaded again to check it."""
    last = folder / LAST_CHECKPOINT
    problem = setup_problem(spec, prepared, folder)  # JSON files: cheap, and read again under the lock
    if problem or (checked is not None and checkpoint_stamp(last) == checked):
        return problem
    return checkpoint_problem(spec, prepared, last)


def early_refusal(spec: RunSpec, planned: PlannedTask, folder: Path) -> str | None:
    """`resume_refusal` as a sweep asks it before the cache is built: None also for a run that cannot train
    on its plan at all (a UsageError: a patch its network cannot take, the task's channels), which
    `local.check_runs` names with every other such run, as for a run not started."""
    from medseg_bench.errors import UsageError

    try:
        return resume_refusal(spec, planned, folder)
    except UsageError:
        return None


def plan_changed_since(spec: RunSpec, plan: Any, folder: Path) -> str | None:
    """A note when a finished run took its preprocessing, or its patch or batch size, from a plan that has
    changed since: it stays as it is (finished runs are never redone), and the note says how to train anew."""
    from medseg_bench.data.plan import preprocessing_change, preprocessing_of

    if plan is None:
        return None
    then = read_json(folder / "summary.json").get("plan") or {}
    change = preprocessing_change(preprocessing_of(then), plan.preprocessing) if then else ""
    if change:
        return (f"trained with {change}: it keeps its result (the report shows the two apart); sweep into "
                "another --results-dir, or move its folder away, to train it on the new plan")
    if spec.patch_size is not None and spec.batch_size is not None:
        return None
    old_patch, old_batch = then.get(f"patch_{spec.dims}"), then.get(f"batch_{spec.dims}")
    new_patch, new_batch = list(getattr(plan, f"patch_{spec.dims}")), getattr(plan, f"batch_{spec.dims}")
    if old_patch is None or old_batch is None:
        return None
    patch_changed = spec.patch_size is None and list(old_patch) != new_patch
    batch_changed = spec.batch_size is None and old_batch != new_batch
    if not (patch_changed or batch_changed):
        return None
    return (f"trained with patch {'x'.join(map(str, old_patch))}, batch {old_batch}; the plan now says "
            f"{'x'.join(map(str, new_patch))}, batch {new_batch}: --patch-size/--batch-size train those as "
            "runs of their own")


@functools.lru_cache(maxsize=16)
def _digest_of(cache_dir: Path, cases: tuple[str, ...], built_ns: int) -> str | None:
    """`source_digest`, once per cache build and case list (a sweep of finished runs skips hundreds, all of
    one task's runs listing its every case)."""
    from medseg_bench.data.preprocess import source_digest

    return source_digest(cache_dir, cases)


def data_changed_since(folder: Path, cache_dir: Path) -> str | None:
    """A note when a finished run trained and was scored on other data than the task's cache now holds (its
    setup.json's `data` digest against `preprocess.source_digest` of its cases in `cache_dir`: another data
    dir, a case replaced): it stays as it is, and the report warns of the two. None where either says
    nothing (a run started before setup.json recorded its data, a cache not built or lacking a case)."""
    recorded = read_json(folder / SETUP_NAME).get("data")
    split = read_json(folder / "splits.json")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("digest"), str):
        return None
    cases = [c for role in ("train", "val") for c in split.get(role, []) if isinstance(c, str)]
    complete = cache_dir / "complete.json"
    now = _digest_of(cache_dir, tuple(sorted(cases)), complete.stat().st_mtime_ns) if cases and \
        complete.is_file() else None
    if now is None or now == recorded["digest"]:
        return None
    return (f"trained on other data than the task's cache now holds (data {recorded['digest']}, now {now}): "
            "it keeps its result (the report warns of runs on different data); sweep into another "
            "--results-dir to train it on this data")


def skip_note(spec: RunSpec, data_dir: Path, folder: Path) -> str | None:
    """What a skipped finished run in `folder` is said with: `plan_changed_since`, against the task's current
    plan.json (read, not made: a skip builds nothing), or else `data_changed_since`, against the cache of that
    plan where it is built; None where neither has a note. The sweep's skip line and its dry run's."""
    plan = task_plan(data_dir, spec.task)
    note = plan_changed_since(spec, plan, folder)
    if note is None and plan is not None:
        note = data_changed_since(folder, data_dir / "preprocessed" / spec.task / plan.preprocessing_hash)
    return note


def task_plan(data_dir: Path, task: str) -> Any:
    """`task`'s plan.json in `data_dir` as it is now (read, not made), or None where there is none or it
    cannot be read: for the notes of skipped runs and the dry run's cost estimate."""
    path = data_dir / "preprocessed" / task / "plan.json"
    try:
        return _parsed_plan(path, path.stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=16)
def _parsed_plan(path: Path, mtime_ns: int) -> Any:
    """The plan in `path`, parsed once per version of the file (a sweep of finished runs skips hundreds)."""
    from medseg_bench.data.plan import read_plan
    from medseg_bench.errors import DataError

    try:
        return read_plan(path)
    except DataError:
        return None


def _not_resumed(folder: Path, problem: str) -> Outcome:
    """Record that the interrupted run in `folder` (its lock held) is not resumed, and why: failed."""
    write_status(folder, "failed", error=problem)
    append_event(folder, "failed", error=problem)
    with open(folder / "run.log", "a", encoding="utf-8") as log_file:  # where exit 5 points
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR not resumed: {problem}\n")
    return Outcome("failed", error=problem)


def refuse_unresumable(spec: RunSpec, planned: PlannedTask, results_dir: Path,
                       checked: dict[str, CheckpointStamp] | None = None) -> Outcome | None:
    """The failed Outcome of an interrupted run that cannot resume (`resume_refusal`, as `early_refusal` asks
    it: the task's plan and splits changed since it started, or its last checkpoint is corrupt or foreign),
    recorded in its folder as `run_one` records it, but before the sweep builds the cache (a plan.json
    edited to another target spacing took hours to build, only for its runs to be refused then). None for a
    run that may go ahead, and for one another process holds: `run_one` says so. A checkpoint that passed
    is stamped in `checked` (by run id, `checkpoint_stamp`), for `run_one` under the run's lock: the same
    file is not loaded again to check it, one replaced or changed since is."""
    from medseg_bench.errors import UsageError

    folder = run_dir(results_dir, spec)
    last = folder / LAST_CHECKPOINT
    if not last.is_file():
        return None
    lock = RunLock(folder)
    if not lock.acquire():
        return None
    try:  # decided under the lock, once: another process may have finished it, or started over
        if is_done(folder) or not last.is_file():
            return None
        before = checkpoint_stamp(last)
        try:
            problem = resume_refusal(spec, planned, folder)
        except UsageError:  # as `early_refusal`: `local.check_runs` names it; its checkpoint is unchecked
            return None
        if problem:
            return _not_resumed(folder, problem)
        if checked is not None and before is not None and checkpoint_stamp(last) == before:
            checked[spec.run_id] = before  # the file loaded was this one: not replaced during the check
        return None
    finally:
        lock.release()


def run_one(spec: RunSpec, prepared: Any, results_dir: Path, reporter: Any = None,
            num_workers: int = 0, extra_event: dict[str, Any] | None = None,
            started: Callable[[str], None] | None = None, checked: CheckpointStamp | None = None) -> Outcome:
    """Execute `spec` unless it is done or another process holds it; never raises for a failed run.
    `started(run_id)` is called once the run is this process's to train: it holds the run, and an
    interrupted run passed its resume check (a run that failed it was said to be training, then failed, and
    none is called for it). `checked`: the stamp of the last
    checkpoint the sweep's early check passed (`refuse_unresumable`), so that the check under the lock
    loads it only where it changed since (`resume_refusal`)."""
    from medseg_bench.run import execute_run

    folder = run_dir(results_dir, spec)
    damage = finished_damage(folder)
    if damage:
        return Outcome("damaged", error=damage)
    if is_done(folder):
        return Outcome("skipped", error=plan_changed_since(spec, prepared.plan, folder))
    lock = RunLock(folder)
    if not lock.acquire():
        return Outcome("busy")
    try:
        if is_done(folder):  # finished by another process between the check above and the lock
            return Outcome("skipped", error=plan_changed_since(spec, prepared.plan, folder))
        clean_temp_files(folder)
        last = folder / LAST_CHECKPOINT
        resumed = last.is_file()
        if resumed:
            problem = resume_refusal(spec, prepared, folder, checked)
            if problem:
                return _not_resumed(folder, problem)
        if started is not None:  # the run is this process's to train: never for one busy, done or refused
            started(spec.run_id)
        # The attempt's bookkeeping is never cut in two: a stop signal stops the run itself at once
        # (`undeferred`), but one that lands between the run's end and its last event waits for that event
        # (once, a SIGTERM just after a run finished left it without its `done` event).
        with deferred():
            # each attempt's code, packages and machine (env.json holds the last one's)
            env = environment()  # env.json records the same
            append_event(folder, "resume" if resumed else "start", **attempt_record(env),
                         **(extra_event or {}))
            beat = Heartbeat(folder, spec.run_id, reporter)
            beat.start()
            stopped: BaseException | None = None
            try:
                with undeferred():
                    summary = execute_run(spec, prepared, folder, beat, num_workers, env)
            except RunError as exc:
                beat.stop()
                append_event(folder, "failed", error=str(exc))
                return Outcome("failed", error=str(exc))
            except BaseException as exc:  # Ctrl-C, SIGTERM, or submitit's exit on requeue: it resumes later
                stopped = exc
            beat.stop()
            if stopped is None or is_done(folder):  # stopped after it wrote `done`: it is done all the same
                append_event(folder, "done")
            else:
                append_event(folder, "interrupted", reason=stop_reason(stopped))
        if stopped is not None:
            raise stopped
        return Outcome("done", summary=summary)
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one medseg-bench run (started by the local launcher).")
    parser.add_argument("--spec", required=True, help="the RunSpec as JSON")
    parser.add_argument("--results-dir", required=True, type=Path)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--parent", type=int, default=0,
                        help="pid of the launcher: this worker is stopped (SIGTERM) when it dies")
    parser.add_argument("--checked", type=_stamp_argument, default=None,
                        help="DEV:INODE:SIZE:MTIME_NS:CTIME_NS of the last checkpoint the launcher's "
                        "check passed")
    args = parser.parse_args(argv)
    if args.parent:
        _stop_with_parent(args.parent)
    import torch

    from medseg_bench.sweep.local import prepare_locked

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    spec = RunSpec.from_dict(json.loads(args.spec))
    with interruptible():  # SIGTERM from the launcher (or anyone): stop now, as Ctrl-C does
        try:
            prepared = prepare_locked(spec.task, args.data_dir, spec.num_folds,
                                      own_slices=spec.own_slice_spacing)
            outcome = run_one(spec, prepared, args.results_dir, num_workers=args.workers,
                              checked=args.checked)
        except BaseException as exc:
            if is_stop(exc):  # also Lightning's exit(1) for a KeyboardInterrupt, or torch.save cut by one
                exit_now(128 + (received() or 2))
            if not isinstance(exc, MedsegError):
                raise
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if outcome.kind in ("failed", "damaged"):
        print(f"error: {outcome.error}", file=sys.stderr)
    codes = {"done": EXIT_DONE, "failed": EXIT_FAILED, "skipped": EXIT_SKIPPED, "busy": EXIT_BUSY,
             "damaged": EXIT_DAMAGED}
    return codes[outcome.kind]


def stamp_argument(stamp: CheckpointStamp) -> str:
    """`stamp` as the worker's `--checked` takes it."""
    return ":".join(map(str, stamp))


def _stamp_argument(text: str) -> CheckpointStamp:
    parts = text.split(":")
    if len(parts) != 5 or not all(part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"not DEV:INODE:SIZE:MTIME_NS:CTIME_NS: {text!r}")
    dev, ino, size, mtime, ctime = map(int, parts)
    return dev, ino, size, mtime, ctime


def _stop_with_parent(parent: int) -> None:
    """On Linux, have the kernel send SIGTERM to this worker when the launcher dies (kill -9 included), so
    that no worker trains on unseen; the run is interrupted as by Ctrl-C and resumes next time."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != parent:  # the launcher died before prctl took effect
        raise SystemExit(128 + 15)


def failure_message(folder: Path, returncode: int) -> str:
    """Why a worker process failed, from its run folder (or its exit code, or the signal that killed it, if
    it died first: "exited with code -9" pointed at a run.log that said nothing of it)."""
    import signal

    status = read_status(folder)
    if status.get("state") == "failed" and status.get("error"):
        return str(status["error"])
    output = f"its output: {folder / 'worker.log'}"
    events = read_events(folder)
    if events and events[-1].get("event") == "interrupted":  # stopped by a signal from outside this sweep
        reason = events[-1].get("reason") or "a stop signal"
        return f"worker interrupted by {reason} ({output}); the next sweep resumes it"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        oom = -returncode == signal.SIGKILL
        why = " (the kernel's out-of-memory killer sends it: see `dmesg`)" if oom else ""
        return (f"worker killed by {name}{why} before it recorded an error ({output}); the next sweep "
                "retries it")
    return f"worker exited with code {returncode} ({output}; the run's log: {folder / 'run.log'})"


def record_unrecorded_failure(folder: Path, error: str) -> bool:
    """Record `error` as the failure of a run whose worker died in an attempt without recording how it ended
    (`unrecorded_end`: killed), so that `status` says what the sweep said (it showed such a run `partial`
    or `pending`, with no word of why). Under the run's lock: a run another process holds now, or one done
    or failed since, is left as it is. True when recorded."""
    if unrecorded_end(folder) is None:
        return False
    lock = RunLock(folder)
    if not lock.acquire():
        return False
    try:
        if is_done(folder) or unrecorded_end(folder, held_here=True) is None:  # none else writes it now
            return False
        write_status(folder, "failed", error=error)
        append_event(folder, "failed", error=error)
        return True
    finally:
        lock.release()
