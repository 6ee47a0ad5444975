"""The SLURM launcher without a cluster: its options, and what a job does when its run is held elsewhere.
(`tests/sweep/test_slurm_cluster.py` runs it on a one-node SLURM cluster.)"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit

from medseg_bench.errors import RunError, UsageError
from medseg_bench.files import write_json_atomic
from medseg_bench.locks import RunLock, exclusive
from medseg_bench.results import run_dir, run_state
from medseg_bench.run_folder import QUEUED_NAME, append_event
from medseg_bench.spec import RunSpec
from medseg_bench.sweep import job_files, slurm
from medseg_bench.sweep.slurm import SlurmOptions, parse_time_minutes, submit
from tests.conftest import fake_squeue

TASK = "Task04_Hippocampus"


@pytest.mark.parametrize(("value", "minutes"), [
    ("90", 90), ("30:00", 30), ("0:30", 1), ("12:00:00", 720), ("1:30:01", 91), ("1-12", 2160),
    ("1-0:30", 1470), ("2-00:00:00", 2880), (" 45 ", 45)])
def test_time_is_read_as_sbatch_reads_it(value: str, minutes: int) -> None:
    # `30:00` is half an hour for sbatch; it was read as HH:MM, 30 hours (and `1-12` as a day and 12 minutes)
    assert parse_time_minutes(value) == minutes


@pytest.mark.parametrize(("value", "message"), [
    ("-5", "--time takes minutes, MM:SS, HH:MM:SS"), ("1:-30", "--time takes"), ("1:2:3:4", "--time takes"),
    ("2-", "--time takes"), ("soon", "--time takes"), ("UNLIMITED", "--time takes"), ("１０", "--time takes"),
    ("0", "--time must be at least one minute, not '0'"), ("0:00:00", "at least one minute")])
def test_a_time_sbatch_would_read_otherwise_is_refused(value: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):  # '-5' was taken as 5 minutes, '1:-30' as 30
        parse_time_minutes(value)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("gpus_per_job", -1, "--gpus-per-job must be at least 0, not -1"),
    ("cpus_per_job", 0, "--cpus-per-job must be at least 1, not 0"),
    ("cpus_per_job", -4, "--cpus-per-job must be at least 1, not -4"),
    ("array_parallelism", 0, "--array-parallelism must be at least 1, not 0"),
    ("mem_gb", 0.0,
     "--mem-gb must be at least 0.001 (1 MB; sbatch reads 0 as all of a node's memory), not 0"),
    ("mem_gb", 0.0005, "not 0.0005"), ("mem_gb", -2.0, "not -2"), ("mem_gb", float("nan"), "not nan"),
    ("mem_gb", float("inf"), "not inf"), ("time", "soon", "--time takes"),
    ("partition", "gpu\ntouch /tmp/pwned", "--partition 'gpu"),
    ("partition", "gpu\ntouch /tmp/pwned", "a line break or control character cannot go into the SLURM job "
                                          "script")])
def test_options_sbatch_would_refuse_or_misread_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SlurmOptions(**{field: value}).check()  # type: ignore[arg-type]


def test_a_results_dir_with_a_line_break_is_refused_before_any_submission(tmp_path: Path) -> None:
    # submitit quotes the job's log paths (`$(touch x)`, `;` stay text) but a line break in them ended the
    # `#SBATCH --output='...` line: what followed it was a command of the job script. `$(...)` and `;` pass.
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string("python job", folder=str(tmp_path / "r$(touch x);y" / ".slurm" / "%j"))
    assert not any(line.startswith(("touch", "y")) for line in script.splitlines())
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    results = tmp_path / "r\ntouch pwned\n#"
    with pytest.raises(UsageError, match=r"^--results-dir '.*r\\ntouch pwned\\n#': a line break or control "
                                         r"character cannot go into the SLURM job script \(the line after it "
                                         r"would run as a command\)$"):
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)
    assert not results.exists()


def test_the_defaults_and_the_least_values_pass() -> None:
    SlurmOptions().check()
    SlurmOptions(gpus_per_job=0, cpus_per_job=1, mem_gb=0.001, array_parallelism=1, time="1").check()


def _queued_run(results: Path, seed: int, job: str) -> RunSpec:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed)
    folder = run_dir(results, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / QUEUED_NAME, {"job_id": job, "time": time.time()})
    return spec


def test_a_run_whose_job_is_still_queued_is_not_submitted_again(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    runs = [_queued_run(results, 0, "42_0"), _queued_run(results, 1, "42_1")]
    fake_squeue(tmp_path, monkeypatch, ["42_0|PENDING|Priority", "42_1|RUNNING|None"])
    said: list[str] = []
    assert submit(runs, results, tmp_path, SlurmOptions(), say=said.append) == slurm.Submission()
    assert said == [f"queued   T/{runs[0].run_id}: already in the queue as job 42_0 (PENDING: Priority)",
                    f"queued   T/{runs[1].run_id}: already in the queue as job 42_1 (RUNNING)",
                    "nothing to submit"]


def test_without_an_answer_from_squeue_nothing_is_submitted(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """squeue failing (a busy or unreachable controller) read as 'no job queued': every queued run was
    submitted a second time."""
    results = tmp_path / "r"
    (spec,) = runs = [_queued_run(results, 0, "42_0")]
    fake_squeue(tmp_path, monkeypatch, None)
    monkeypatch.setattr(submitit, "AutoExecutor", None)  # never reached
    with pytest.raises(RunError) as caught:
        submit(runs, results, tmp_path, SlurmOptions(), say=lambda line: None)
    assert str(caught.value) == (
        f"cannot tell whether job 42_0 of T/{spec.run_id} is still in SLURM's queue: squeue failed: "
        "slurm_load_jobs error: Unable to contact slurm controller (connect failure); nothing submitted")
    assert not (results / ".slurm").exists()
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RunError, match="still in SLURM's queue: squeue is not on PATH; nothing submitted"):
        submit(runs, results, tmp_path, SlurmOptions(), say=lambda line: None)


def _job_runs(spec: RunSpec, results: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SlurmRun's job for `spec` with training replaced: the list fills with 'trained' when the run trains
    (and the job then fails, as that stand-in run does)."""
    import medseg_bench.run
    from medseg_bench.sweep import local

    trained: list[str] = []

    def execute_run(*args: object) -> None:
        trained.append("trained")
        raise RunError("stand-in run")

    monkeypatch.setattr(local, "prepare_locked", lambda *a, **k: SimpleNamespace(plan=None))
    monkeypatch.setattr(medseg_bench.run, "execute_run", execute_run)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7_1"))
    monkeypatch.setattr(slurm, "BUSY_POLL_S", 0.05)
    return trained


def test_a_job_waits_for_a_lock_an_earlier_attempt_still_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A run held by a dying earlier attempt (a node slow to kill it, a network file system's lock outliving
    a failed node): the job waits for the lock and runs it, where it ended at once, successfully, unrun."""
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    trained = _job_runs(spec, tmp_path, monkeypatch)
    monkeypatch.setattr(slurm, "BUSY_WAIT_S", 30.0)
    earlier = RunLock(run_dir(tmp_path, spec))
    assert earlier.acquire()

    def sleep(seconds: float) -> None:  # the earlier attempt ends while the job waits (no race with a timer)
        earlier.release()
        time.sleep(seconds)

    monkeypatch.setattr(slurm, "time", SimpleNamespace(sleep=sleep, monotonic=time.monotonic, time=time.time))
    with pytest.raises(RunError, match="stand-in run"):
        slurm.SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
    assert trained == ["trained"]
    assert capsys.readouterr().err == (f"run T/{spec.run_id} is held by process {os.getpid()} on "
                                       f"{socket.gethostname()}: waiting up to 30 s for it to end\n")


def test_a_job_that_leaves_its_run_to_another_process_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    trained = _job_runs(spec, tmp_path, monkeypatch)
    monkeypatch.setattr(slurm, "BUSY_WAIT_S", 1.0)
    with RunLock(run_dir(tmp_path, spec)) as other:
        assert other.acquire()
        assert slurm.SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)() == "busy"
    assert trained == []
    holder = f"process {os.getpid()} on {socket.gethostname()}"
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"warning: job 7_1 leaves run T/{spec.run_id} to {holder}, which has held it for 1 s "
        f"({run_dir(tmp_path, spec) / '.lock'}); if `medseg-bench status` shows the run partial or pending "
        "later, sweep again to submit it")


def _fake_sbatch(monkeypatch: pytest.MonkeyPatch,
                 on_submit: Callable[[], object] = lambda: None,
                 on_answer: Callable[[], object] = lambda: None) -> list[str]:
    """submitit's executor without SLURM: each job submitted calls `on_submit` and gets the next id of array
    9; the list returned fills with them; `on_answer` is called as the batch ends (submitit runs sbatch
    there, then moves each job's files into place)."""
    job_ids: list[str] = []

    class Executor:
        def __init__(self, **kwargs: object) -> None:
            pass

        def update_parameters(self, **kwargs: object) -> None:
            pass

        @contextmanager
        def batch(self) -> Iterator[None]:
            yield
            on_answer()

        def submit(self, job: object) -> SimpleNamespace:
            on_submit()
            job_ids.append(f"9_{len(job_ids)}")
            return SimpleNamespace(job_id=job_ids[-1])

    monkeypatch.setattr(submitit, "AutoExecutor", Executor)
    return job_ids


def test_a_job_that_starts_before_its_submission_is_recorded_is_not_shown_queued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """queued.json is written once sbatch has answered; a job can start before that. Its time was taken then,
    later than the job's `start`, so a run interrupted before its first checkpoint said `queued` (and status
    'left the queue without starting the run') though it had started."""
    results = tmp_path / "r"
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")

    def job_starts_at_once() -> None:
        run_dir(results, spec).mkdir(parents=True)
        append_event(run_dir(results, spec), "start")
        append_event(run_dir(results, spec), "interrupted")

    _fake_sbatch(monkeypatch, job_starts_at_once)
    submitted = submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None).jobs
    assert submitted == [(spec, "9_0")]
    assert run_state(run_dir(results, spec)) == "pending"


def test_two_submissions_to_one_results_dir_take_turns(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The second submission waits for the first, then finds its runs queued: at once, both submitted them."""
    results = tmp_path / "r"
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    sbatch_calls = _fake_sbatch(monkeypatch)
    fake_squeue(tmp_path, monkeypatch, ["9_0|PENDING|Priority"])
    said: list[str] = []
    results.mkdir()
    with exclusive(results, slurm.SUBMIT_LOCK):  # the first submission, between its squeue and its sbatch
        second = threading.Thread(target=submit, args=([spec], results, tmp_path, SlurmOptions(),
                                                       said.append))
        second.start()
        deadline = time.monotonic() + 60  # a join of fixed length raced a slow thread start on a busy machine
        while not said and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.is_alive() and said == ["waiting for another submission to this results dir to finish"]
        run_dir(results, spec).mkdir(parents=True)  # what the first submission then writes
        write_json_atomic(run_dir(results, spec) / QUEUED_NAME, {"job_id": "9_0", "time": time.time()})
    second.join(10.0)
    assert not second.is_alive()
    assert said[1:] == [f"queued   T/{spec.run_id}: already in the queue as job 9_0 (PENDING: Priority)",
                        "nothing to submit"]
    assert sbatch_calls == []


def test_ctrl_c_while_jobs_are_recorded_waits_until_every_one_is(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch has answered for the whole array; a Ctrl-C while their queued.json files are written left the
    later runs unrecorded, and the next sweep submitted them a second time. It now takes effect after."""
    import signal

    from medseg_bench.signals import interruptible

    results = tmp_path / "r"
    specs = [RunSpec(task="T", dims="3d", arch="unet", loss=loss, aug="none") for loss in ("dice_ce", "dice")]
    _fake_sbatch(monkeypatch)

    def say(line: str) -> None:
        if line.startswith("submitted"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt), interruptible():
        submit(specs, results, tmp_path, SlurmOptions(), say=say)
    assert [slurm.queued_job(run_dir(results, spec)) for spec in specs] == ["9_0", "9_1"]


def test_ctrl_c_as_sbatch_answers_waits_until_every_job_is_recorded(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C after sbatch answered, while submitit still moved the array's files into place (the batch's
    end): the sweep left at once, no queued.json named the jobs, and the next sweep submitted the runs again
    (and submitit's files were left in RESULTS/.slurm)."""
    import signal

    from medseg_bench.signals import interruptible

    results = tmp_path / "r"
    specs = [RunSpec(task="T", dims="3d", arch="unet", loss=loss, aug="none") for loss in ("dice_ce", "dice")]
    _fake_sbatch(monkeypatch, on_answer=lambda: os.kill(os.getpid(), signal.SIGINT))
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt), interruptible():
        submit(specs, results, tmp_path, SlurmOptions(), say=said.append)
    assert [slurm.queued_job(run_dir(results, spec)) for spec in specs] == ["9_0", "9_1"]
    assert said[-2:] == [f"submitted T/{spec.run_id} as job 9_{i}" for i, spec in enumerate(specs)]


@pytest.mark.parametrize("requeue_fails", [False, True])
def test_slurm_warning_signal_records_interrupted_before_the_job_is_requeued(
        requeue_fails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM's warning signal (USR2) stops the run as Ctrl-C does; submitit's handler (checkpoint, `scontrol
    requeue`, which has SLURM kill the job KillWait seconds later) runs only once the run has recorded
    `interrupted`. A requeue that fails leaves the run interrupted, not failed: the next sweep resubmits
    it."""
    import os
    import signal
    from types import SimpleNamespace

    import submitit

    import medseg_bench.run
    from medseg_bench.run_folder import read_events
    from medseg_bench.sweep import local
    from medseg_bench.sweep.slurm import SlurmRun

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    seen_by_submitit: list[list[str]] = []

    def submitit_handler(signum: int, frame: object) -> None:
        seen_by_submitit.append([e["event"] for e in read_events(folder)])
        if requeue_fails:
            raise submitit.core.utils.UncompletedJobError("Job not requeued: timed-out too many times.")
        raise SystemExit(-1)

    def execute_run(*args: object) -> None:
        os.kill(os.getpid(), signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption
        time.sleep(5)
        raise AssertionError("the warning signal did not stop the run")

    monkeypatch.setattr(local, "prepare_locked", lambda *a, **k: SimpleNamespace(plan=None))
    monkeypatch.setattr(medseg_bench.run, "execute_run", execute_run)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        with pytest.raises(submitit.core.utils.UncompletedJobError if requeue_fails else SystemExit):
            SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # restored
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert seen_by_submitit == [["start", "interrupted"]]
    events = read_events(folder)
    assert events[-1]["reason"] == "SIGUSR2" and events[0]["job_id"] == "7"
    assert run_state(folder) == "pending"  # not failed (this stand-in run wrote no checkpoint)


@pytest.mark.parametrize("when", ["preparing", "training"])
def test_slurm_sigterm_stops_the_job_at_once(when: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (scancel; a preemption without the warning signal; the end of the time limit) stops the job as
    Ctrl-C does, wherever it is: submitit only logs it ('Bypassing signal SIGTERM'), so a job preparing the
    task ran on until SLURM's SIGKILL, and its run was left 'running' for the heartbeat to expire. The
    warning signal's handler (a requeue) is not called: SLURM requeues a preempted job itself."""
    import os
    import signal
    from types import SimpleNamespace

    import submitit

    import medseg_bench.run
    from medseg_bench.run_folder import read_events
    from medseg_bench.sweep import local
    from medseg_bench.sweep.slurm import SlurmRun

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    called: list[int] = []

    def terminated(*args: object, **kwargs: object) -> SimpleNamespace:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the job")

    if when == "preparing":
        monkeypatch.setattr(local, "prepare_locked", terminated)
    else:
        monkeypatch.setattr(local, "prepare_locked", lambda *a, **k: SimpleNamespace(plan=None))
        monkeypatch.setattr(medseg_bench.run, "execute_run", terminated)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))

    def bypass(signum: int, frame: object) -> None:  # submitit's SIGTERM handler; its USR2 one, the same
        called.append(signum)

    requeue = bypass
    previous = signal.signal(signal.SIGTERM, bypass), signal.signal(signal.SIGUSR2, requeue)
    try:
        with pytest.raises((KeyboardInterrupt, SystemExit)):
            SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
        assert signal.getsignal(signal.SIGTERM) is bypass and signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGUSR2, previous[1])
    assert called == []
    events = read_events(folder)
    if when == "preparing":
        assert events == [] and run_state(folder) == "pending"
    else:
        assert [e["event"] for e in events] == ["start", "interrupted"] and events[-1]["reason"] == "SIGTERM"
        assert run_state(folder) == "pending"


def test_a_results_dir_every_user_can_write_is_refused_before_any_submission(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SLURM job unpickles the callable submitit keeps in RESULTS/.slurm/: whoever can replace that file
    runs code as the job's user. A results dir every user can write to (no sticky bit) is refused."""
    from medseg_bench.errors import ResultsError

    results = tmp_path / "r"
    results.mkdir()
    results.chmod(0o777)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    sbatch_calls = _fake_sbatch(monkeypatch)
    with pytest.raises(ResultsError) as caught:
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)
    assert str(caught.value) == (
        f"{results}: results dir is writable by every user (mode 777, no sticky bit): any of them could "
        f"replace the jobs submitit pickles in {results / '.slurm'}, which your SLURM jobs unpickle, running "
        "their code as you; `chmod o-w` it (or `chmod +t`), or give another --results-dir")
    assert sbatch_calls == [] and not (results / ".slurm").exists()
    results.chmod(0o1777)  # sticky, as /tmp: nobody else can rename or remove the .slurm folder made below
    assert submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None).jobs == [(spec, "9_0")]


def test_the_job_folder_is_the_submitters_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RESULTS/.slurm was made with the umask (0o775 under umask 002: the group could put a job of its own
    there); it is now made 0o700, and an older one tightened."""
    results = tmp_path / "r"
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    _fake_sbatch(monkeypatch)
    old = os.umask(0o002)
    try:
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)
        assert (results / ".slurm").stat().st_mode & 0o777 == 0o700
        (results / ".slurm").chmod(0o775)
        submit([RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=1)], results,
               tmp_path, SlurmOptions(), say=lambda line: None)
        assert (results / ".slurm").stat().st_mode & 0o777 == 0o700
    finally:
        os.umask(old)


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_job_folder_that_is_not_the_submitters_folder_is_refused(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.errors import ResultsError

    results = tmp_path / "r"
    results.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if kind == "link":  # another user's folder, or one that user can write to
        (results / ".slurm").symlink_to(elsewhere)
    else:
        (results / ".slurm").write_text("")
    sbatch_calls = _fake_sbatch(monkeypatch)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    what = f"a link to {elsewhere}" if kind == "link" else "a file"
    with pytest.raises(ResultsError, match=rf"^{results / '.slurm'}: not a folder of yours \({what}\); "
                                           r"submitit keeps the jobs your SLURM jobs unpickle in it: move it "
                                           r"away$"):
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)
    assert sbatch_calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a folder to another user")
def test_a_job_folder_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.errors import ResultsError

    results = tmp_path / "r"
    (results / ".slurm").mkdir(parents=True, mode=0o700)
    os.chown(results / ".slurm", 12345, 12345)
    _fake_sbatch(monkeypatch)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    with pytest.raises(ResultsError, match=r"\.slurm: not a folder of yours \(owned by user 12345\)"):
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)


def test_a_results_dir_a_group_can_write_is_warned_of(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Writable by a group with other members (a lab's shared folder): they could replace the pickled jobs
    too; said once, before the cache is built (`check_private_results`), not refused: the group may be
    trusted. A user's own group (user private groups, umask 002) is no one else, and the sticky bit protects
    the job folder."""
    import grp

    results = tmp_path / "r"
    results.mkdir()
    results.chmod(0o775)
    said: list[str] = []
    monkeypatch.setattr(job_files, "_private_group", lambda gid: True)
    job_files.check_private_results(results, said.append)
    assert said == []
    monkeypatch.setattr(job_files, "_private_group", lambda gid: False)
    job_files.check_private_results(results, said.append)
    group = grp.getgrgid(results.stat().st_gid).gr_name
    assert said == [f"warning: {results}: results dir is writable by group '{group}' (mode 775): its members "
                    f"could replace the jobs submitit pickles in {results / '.slurm'}, which your SLURM jobs "
                    "unpickle, running their code as you; `chmod g-w` it unless you trust them all"]
    results.chmod(0o1775)
    said.clear()
    job_files.check_private_results(results, said.append)
    assert said == []


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a folder to another user")
def test_a_results_dir_of_another_user_is_warned_of(tmp_path: Path) -> None:
    results = tmp_path / "r"
    results.mkdir(mode=0o755)
    os.chown(results, 12345, os.getegid())
    said: list[str] = []
    job_files.check_private_results(results, said.append)
    assert said == [f"warning: {results}: results dir belongs to user 12345, who could replace the jobs "
                    f"submitit pickles in {results / '.slurm'}, which your SLURM jobs unpickle, running "
                    "their code as you; use a results dir of your own unless you trust them"]


def test_a_folder_above_the_results_dir_that_others_can_write_is_held_to_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A results dir of the user's alone inside a folder every user can write to (no sticky bit): any of them
    could rename it away and put one of their own, with a pickled job, in its place. Refused as the results
    dir itself would be, before anything is submitted; a folder a group can write to above it is warned of;
    the sticky bit (as /tmp's) protects it."""
    import grp
    import re

    from medseg_bench.errors import ResultsError

    shared = tmp_path / "shared"
    results = shared / "lab" / "r"
    results.mkdir(parents=True, mode=0o700)
    shared.chmod(0o777)
    sbatch_calls = _fake_sbatch(monkeypatch)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    pickles = (f"the jobs submitit pickles in {results / '.slurm'}, which your SLURM jobs unpickle, running "
               "their code as you")
    with pytest.raises(ResultsError, match=re.escape(
            f"{shared}: a folder above results dir {results} is writable by every user (mode 777, no sticky "
            f"bit): any of them could put a results dir of their own in place of yours, with {pickles}; "
            "`chmod o-w` it (or `chmod +t`), or give another --results-dir")):
        submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None)
    assert sbatch_calls == [] and not (results / ".slurm").exists()
    # a results dir not made yet is judged by the folders above it
    with pytest.raises(ResultsError, match=rf"^{shared}: a folder above results dir {shared / 'new'} is "):
        job_files.check_private_results(shared / "new", lambda line: None)
    shared.chmod(0o775)
    said: list[str] = []
    monkeypatch.setattr(job_files, "_private_group", lambda gid: False)
    job_files.check_private_results(results, said.append)
    group = grp.getgrgid(shared.stat().st_gid).gr_name
    assert said == [f"warning: {shared}: a folder above results dir {results} is writable by group "
                    f"'{group}' (mode 775): its members could put a results dir of their own in place of "
                    f"yours, with {pickles}; `chmod g-w` it unless you trust them all"]
    shared.chmod(0o1777)
    said.clear()
    job_files.check_private_results(results, said.append)
    assert said == []
    assert submit([spec], results, tmp_path, SlurmOptions(), say=lambda line: None).jobs == [(spec, "9_0")]


def test_fail_fast_fails_the_first_interrupted_run_that_cannot_resume_and_submits_nothing(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the local sweep with --fail-fast (`local.refuse_unresumable_runs`): the first such run fails, the
    next is left interrupted as it was, and nothing is prepared or submitted; --fail-fast was not passed to
    the submission at all, which failed every such run and submitted the others."""
    import shutil

    from tests.sweep.test_local import REFUSED, _interrupted_on_an_edited_plan

    data, first, fresh, _ = _interrupted_on_an_edited_plan(home, tmp_path)
    results = tmp_path / "results"
    second = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3,
                     seed=2, epochs=1)
    shutil.copytree(run_dir(results, first), run_dir(results, second))
    sbatch_calls = _fake_sbatch(monkeypatch)
    said: list[str] = []
    done = submit([first, second, fresh], results, data, SlurmOptions(), say=said.append,
                  prepare=lambda runs: pytest.fail("prepared"), fail_fast=True)
    assert done == slurm.Submission(failed=[first.run_id]) and sbatch_calls == []
    refused = run_dir(results, first) / REFUSED
    assert said == [f"failed   Task90_Synth/{first.run_id}: {refused}; not submitted",
                    "nothing submitted: --fail-fast stops at the first failed run"]
    assert sorted(p.name for p in run_dir(results, second).iterdir()) == ["checkpoints", "setup.json",
                                                                          "splits.json"]


@pytest.mark.parametrize("why", ["edited plan", "bad checkpoint"])
def test_an_interrupted_run_that_cannot_resume_fails_before_anything_is_built_or_submitted(
        why: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the local sweep (`local.refuse_unresumable_runs`): the submitter built the cache first, then
    submitted a job that could only fail. The run fails with the local sweep's message, status and event;
    the others are prepared and submitted; with no run left, nothing is."""
    from medseg_bench.run_folder import read_events, read_status
    from medseg_bench.sweep import local
    from tests.sweep.test_local import (
        REFUSED,
        _interrupted_on_an_edited_plan,
        _interrupted_with_a_bad_checkpoint,
        bad_checkpoint,
    )

    interrupted = (_interrupted_on_an_edited_plan if why == "edited plan"
                   else _interrupted_with_a_bad_checkpoint)
    data, started, fresh, root = interrupted(home, tmp_path)
    results = tmp_path / "results"
    folder = run_dir(results, started)
    refused = f"{folder / REFUSED}" if why == "edited plan" else f"{folder}/{bad_checkpoint(started)}"
    caches = sorted(p.name for p in root.iterdir() if p.is_dir())
    sbatch_calls = _fake_sbatch(monkeypatch)
    prepared: list[list[str]] = []

    def prepare(runs: list[RunSpec]) -> Callable[[RunSpec], object]:
        prepared.append([spec.run_id for spec in runs])
        raise AssertionError("prepared with no run left")

    said: list[str] = []
    alone = submit([started], results, data, SlurmOptions(), say=said.append, prepare=prepare)
    assert alone == slurm.Submission(failed=[started.run_id])
    assert said == [f"failed   Task90_Synth/{started.run_id}: {refused}; not submitted", "nothing to submit"]
    assert prepared == [] and sbatch_calls == [] and not (results / ".slurm").exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == caches  # no cache built
    assert read_status(folder)["error"] == refused
    assert [e["event"] for e in read_events(folder)] == ["failed"]
    assert f"ERROR not resumed: {refused}" in (folder / "run.log").read_text()
    # with a new run: it alone is prepared (checked against its plan) and submitted; the interrupted run is
    # refused again, as long as what refused it is there
    planned = local.plan_locked("Task90_Synth", data, 3)

    def prepare_fresh(runs: list[RunSpec]) -> Callable[[RunSpec], object]:
        prepared.append([spec.run_id for spec in runs])
        return lambda spec: planned

    both = submit([started, fresh], results, data, SlurmOptions(), say=lambda line: None,
                  prepare=prepare_fresh)
    assert both == slurm.Submission(jobs=[(fresh, "9_0")], failed=[started.run_id])
    assert prepared == [[fresh.run_id]] and sbatch_calls == ["9_0"]


@pytest.mark.parametrize("pickled", ["now", "before the stamp was passed"])
def test_a_job_is_told_the_checkpoint_its_submission_checked(
        pickled: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a --jobs worker (`--checked`): the submission's early check loaded the interrupted run's last
    checkpoint, and its job loaded it again under the run's lock though the file had not changed. A job
    pickled without the stamp (submitted by an earlier version, then requeued) loads it as before."""
    from medseg_bench.sweep import local, worker
    from tests.sweep.test_local import _resumable

    started, checkpoint, loads, trained = _resumable(home, tmp_path, monkeypatch)
    results, data = tmp_path / "results", tmp_path / "data"
    planned = local.plan_locked("Task90_Synth", data, 3)
    _fake_sbatch(monkeypatch)
    made: list[slurm.SlurmRun] = []
    real = slurm.SlurmRun
    monkeypatch.setattr(slurm, "SlurmRun", lambda *args: made.append(real(*args)) or made[-1])
    done = submit([started], results, data, SlurmOptions(), say=lambda line: None, prepare=lambda runs: None)
    assert done.jobs == [(started, "9_0")] and loads == [str(checkpoint)]
    assert made[0].checked == worker.checkpoint_stamp(checkpoint)
    if pickled != "now":
        del made[0].checked
    monkeypatch.setattr(local, "prepare_locked", lambda *args, **kwargs: planned)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="9_0"))
    assert made[0]() == "done" and trained == [started]
    assert loads == [str(checkpoint)] * (1 if pickled == "now" else 2)


@pytest.mark.parametrize(("answer", "problem"), [
    ("echo 'Partition nope not found'; exit 1",
     "--partition nope: SLURM has no such partition (scontrol: Partition nope not found)"),
    ("echo 'PartitionName=nope'", None),
    ("echo 'scontrol: fatal: Could not establish a configuration source' >&2; exit 1", None),  # sbatch tells
    (None, None),  # no scontrol on PATH
])
def test_an_unknown_partition_is_named_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       answer: str | None, problem: str | None) -> None:
    # sbatch refused it only after the sweep had built the task's caches (minutes to hours on a large task)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if answer is not None:
        (bin_dir / "scontrol").write_text(f"#!/bin/sh\n{answer}\n")
        (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) if answer is None else f"{bin_dir}:{os.environ['PATH']}")
    assert slurm.partition_problem("nope") == problem
    assert slurm.partition_problem(None) is None
