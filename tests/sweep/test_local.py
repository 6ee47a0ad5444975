"""`sweep/local.py`: the sequential and `--jobs` loops (worker slots, what a stop records of the runs its
workers were on, a run held elsewhere), finished runs with a bad value or damaged, heartbeats shown."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from medseg_bench.files import write_json_atomic
from medseg_bench.locks import RunLock
from medseg_bench.progress import PlainReporter
from medseg_bench.results import run_dir
from medseg_bench.run_folder import append_event, write_heartbeat, write_status
from medseg_bench.spec import RunSpec
from medseg_bench.sweep import local
from tests.conftest import finished_summary, stand_in_task


def _spec(seed: int = 0) -> RunSpec:
    return RunSpec(task="Task04_Hippocampus", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed,
                   epochs=4)


def _stopped_parallel(tmp_path: Path, specs: list[RunSpec], total: int) -> tuple[dict[str, list[str]], str]:
    """`local._parallel`, 2 slots, until a test's sleep raises KeyboardInterrupt; (outcome, what was said)."""
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=200))
        reporter.start(total)
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        with pytest.raises(KeyboardInterrupt):
            local._parallel(specs, tmp_path, tmp_path / "data", reporter, False, 0, 2, outcome)
        reporter.close()
    return outcome, (tmp_path / "out.txt").read_text()


@pytest.mark.parametrize("exit_code", [local.EXIT_DONE, 130])
def test_a_run_finished_before_the_stop_reached_the_loop_is_recorded_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exit_code: int) -> None:
    # Ctrl-C with --jobs 2 once summed up "2 stopped while training" of two runs recorded done: their workers
    # had finished between two polls of the loop, or as the signal came (exit 130, the run done on disk).
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    workers: list[subprocess.Popen[bytes]] = []

    def finished_worker(spec: RunSpec, folder: Path, *args: object) -> subprocess.Popen[bytes]:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
        (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
        write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id))
        write_status(folder, "done")
        workers.append(subprocess.Popen([sys.executable, "-c", f"raise SystemExit({exit_code})"]))
        return workers[-1]

    def stopped(_: float) -> None:  # Ctrl-C in the loop's sleep, after the worker has ended
        workers[-1].wait()
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "_start_worker", finished_worker)
    monkeypatch.setattr(local.time, "sleep", stopped)
    monkeypatch.setattr(local, "_slots", lambda jobs: (jobs, [None] * jobs))
    outcome, said = _stopped_parallel(tmp_path, [spec], 1)
    assert outcome["done"] == [spec.run_id] and not outcome["failed"]
    assert f"[1/1] {spec.run_id}: done, mean Dice 0.5000" in said
    assert "sweep finished: 1 trained (of 1 run)" in said


@pytest.mark.parametrize(("beat", "stop_at", "stopped_while"), [
    ({"epoch": 0}, 1, "training"),
    ({"epoch": 1, "epochs": 1, "stage": "evaluating"}, 2, "evaluating"),
])
def test_a_run_stopped_with_jobs_is_counted_by_the_stage_its_heartbeat_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, beat: dict[str, object], stop_at: int,
        stopped_while: str) -> None:
    # Ctrl-C with --jobs within a poll of a worker's first heartbeat: its run, which had started (and resumes
    # next time), was summed up as "not reached", with the runs no worker had begun. A run stopped after its
    # training, while its worker predicted and scored the held-out cases, was summed up as "stopped while
    # training".
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    workers: list[subprocess.Popen[bytes]] = []

    def worker(spec: RunSpec, folder: Path, *args: object) -> subprocess.Popen[bytes]:
        folder.mkdir(parents=True, exist_ok=True)
        workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        write_json_atomic(folder / "heartbeat.json", {"time": time.time() + 1, "pid": workers[-1].pid,
                                                      "host": socket.gethostname(), **beat})
        return workers[-1]

    sleep = time.sleep
    calls = []

    def stopped(seconds: float) -> None:  # Ctrl-C in the loop's stop_at-th sleep (the stop's waits sleep too)
        calls.append(seconds)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        sleep(min(seconds, 0.01) if len(calls) < stop_at else seconds)

    monkeypatch.setattr(local, "_start_worker", worker)
    monkeypatch.setattr(local.time, "sleep", stopped)
    monkeypatch.setattr(local, "_slots", lambda jobs: (jobs, [None] * jobs))
    _, said = _stopped_parallel(tmp_path, [spec], 2)
    assert workers[-1].poll() is not None  # stopped
    assert f"{spec.run_id}: training" in said
    assert f"sweep finished: 1 stopped while {stopped_while}, 1 not reached (of 2 runs)" in said


def test_fail_fast_with_jobs_stops_the_runs_training_beside_the_failed_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The run training beside the failed one trained on to its end (the help: "stop at the first failed run").
    specs = [RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1, seed=seed)
             for seed in (0, 1, 2)]
    workers: list[subprocess.Popen[bytes]] = []

    def worker(spec: RunSpec, folder: Path, *args: object) -> subprocess.Popen[bytes]:
        folder.mkdir(parents=True, exist_ok=True)
        if spec.seed == 0:  # fails at once, its error recorded
            write_status(folder, "failed", error="boom")
            workers.append(subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"]))
        else:  # trains for a minute
            workers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
            write_json_atomic(folder / "heartbeat.json", {"time": time.time() + 1, "pid": workers[-1].pid,
                                                          "host": socket.gethostname(), "epoch": 0})
        return workers[-1]

    sleep = time.sleep
    monkeypatch.setattr(local, "_start_worker", worker)
    monkeypatch.setattr(local.time, "sleep", lambda seconds: sleep(min(seconds, 0.2)))
    monkeypatch.setattr(local, "_slots", lambda jobs: (jobs, [None] * jobs))
    outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                           "damage")}
    started = time.monotonic()
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=200))
        reporter.start(3)
        local._parallel(specs, tmp_path, tmp_path / "data", reporter, True, 0, 2, outcome)
        reporter.close()
    assert time.monotonic() - started < 30 and len(workers) == 2  # the third never started
    assert all(process.poll() is not None for process in workers)  # the second stopped, not waited for
    assert outcome["failed"] == [specs[0].run_id] and not outcome["done"]
    assert "sweep finished: 1 failed, 1 stopped while training, 1 not reached (of 3 runs)" in (
        tmp_path / "out.txt").read_text()


@pytest.mark.parametrize("stage", ["training", "evaluating"])
def test_a_run_stopped_in_this_process_is_counted_by_the_stage_it_was_in(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    # The sequential sweep: a Ctrl-C while the run predicted its held-out cases was summed up as "stopped
    # while training"
    from types import SimpleNamespace

    import medseg_bench.run as run_module

    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("SIGINT")

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    prepared = stand_in_task(tmp_path, monkeypatch)
    monkeypatch.setattr(run_module, "train", interrupt if stage == "training" else (
        lambda *args: SimpleNamespace(device="cpu")))
    monkeypatch.setattr(run_module, "save_learning_curves", lambda folder: None)
    monkeypatch.setattr(run_module, "build_network", lambda *args: None)
    monkeypatch.setattr(run_module, "load_weights", lambda net, path: net)
    monkeypatch.setattr(run_module, "evaluate_fold", interrupt)  # predicting the held-out cases
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=200))
        reporter.start(2)
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        with pytest.raises(KeyboardInterrupt):
            local._sequential([spec, _spec()], tmp_path, reporter, {local.prepared_key(spec): prepared,
                                                                   local.prepared_key(_spec()): prepared},
                              False, 0, outcome)
        reporter.close()
    said = (tmp_path / "out.txt").read_text()
    assert f"sweep finished: 1 stopped while {stage}, 1 not reached (of 2 runs)" in said
    beat = json.loads((run_dir(tmp_path, spec) / "heartbeat.json").read_text())
    assert beat.get("stage") == ("evaluating" if stage == "evaluating" else None)  # what --jobs reads


def test_a_run_held_by_another_sweep_is_not_said_to_be_training(tmp_path: Path) -> None:
    # Two sweeps on one results dir: the one that found the run held printed "[1/1] RUN: training" and then
    # "RUN: skipped (running in another process)".
    from medseg_bench.results import run_dir

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    lock = RunLock(run_dir(tmp_path, spec))
    assert lock.acquire()
    try:
        with open(tmp_path / "out.txt", "w") as out:
            reporter = PlainReporter(Console(file=out, highlight=False, width=200))
            reporter.start(1)
            outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy",
                                                                   "damaged", "damage")}
            local._sequential([spec], tmp_path, reporter, {local.prepared_key(spec): None}, False, 0, outcome)
            reporter.close()
    finally:
        lock.release()
    assert outcome["busy"] == [spec.run_id]
    said = (tmp_path / "out.txt").read_text()
    assert f"{spec.run_id}: skipped (running in another process)" in said
    assert "training" not in said, said


def test_parallel_slots_one_gpu_each_or_cpu_threads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import subprocess

    import torch

    from medseg_bench.sweep import local

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert local._slots(3) == (2, ["0", "1"])  # never more jobs than GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert local._slots(3) == (3, [None, None, None])
    seen: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, env, **kw: seen.append((argv, env)))
    local._start_worker(_spec(), tmp_path / "run", tmp_path, tmp_path / "data", "1", threads=4, workers=0)
    argv, env = seen[0]
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert argv[1:3] == ["-m", "medseg_bench.sweep"] and argv[argv.index("--threads") + 1] == "4"
    assert RunSpec.from_dict(json.loads(argv[argv.index("--spec") + 1])) == _spec()
    # the run's spec is in its folder before the worker starts: `status` listed no run for the seconds a
    # worker took to import torch and hold it ("no runs here", exit 6); it lists it pending
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["run_id"] == _spec().run_id
    from medseg_bench.results import run_state

    assert run_state(tmp_path / "run") == "pending"


def _finished_run(results: Path, spec: RunSpec) -> Path:
    folder = run_dir(results, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id))
    write_status(folder, "done")
    append_event(folder, "done")
    return folder


@pytest.mark.parametrize(("name", "damage", "problem"), [
    ("summary.json", {"per_label_dice": 5}, "'per_label_dice' must be an object of numbers, not 5"),
    ("summary.json", {"cost": "zzz"}, "'cost' must be an object, not \"zzz\""),
    ("summary.json", {"num_cases": "1"}, "'num_cases' must be a whole number, not \"1\""),
    ("metrics.csv", None, "dice is 'abc' in row 1, not a number"),
])
def test_a_sweep_names_a_finished_run_with_a_bad_value_and_carries_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: dict[str, object] | None,
        problem: str) -> None:
    # Such a run crashed the sweep (TypeError, AttributeError, or pyarrow's while writing the index), the
    # other runs "not reached"; it is damaged, as a run that lost a file is: named, left out, exit 6.
    import pandas as pd

    from medseg_bench.errors import ResultsError
    from medseg_bench.progress import PlainReporter
    from medseg_bench.results import INDEX_NAME
    from medseg_bench.sweep.local import run_sweep

    results = tmp_path / "results"
    specs = [_spec(seed) for seed in range(3)]
    folders = [_finished_run(results, spec) for spec in specs]
    damaged = folders[1] / name
    if damage is None:
        damaged.write_text("case,label,dice,ref_empty,pred_empty\nc,1,abc,False,False\n")
    else:
        write_json_atomic(damaged, {**json.loads(damaged.read_text()), **damage})
    before = {p.name: p.read_bytes() for p in folders[1].iterdir() if p.is_file()}
    with pytest.raises(ResultsError) as info:
        run_sweep(specs, results, tmp_path / "data", PlainReporter())
    assert str(info.value) == ("1 finished run is damaged (named above), left as it is, not trained again: "
                               "restore the file, move the run folder away, or delete it to run it again")
    out, err = capsys.readouterr()
    assert f"{specs[1].run_id}: skipped (finished, but damaged: {damaged}: {problem})" in out
    assert out.count("skipped (already done)") == 2 and "sweep finished: 3 skipped" in out
    assert err == ""  # the index leaves it out: its line said what is damaged, not a warning again
    assert set(pd.read_parquet(results / INDEX_NAME)["run_id"]) == {specs[0].run_id, specs[2].run_id}
    assert {p.name: p.read_bytes() for p in folders[1].iterdir() if p.is_file()} == before


def test_a_sweep_with_a_failed_and_a_damaged_run_names_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Exit 5 named the failed run; the damaged one's "restore the file ..." line was never printed. Then its
    # damage was named twice, by its line and by that warning (three times with the index's warning).
    from types import SimpleNamespace

    from medseg_bench.errors import RunError
    from medseg_bench.progress import PlainReporter
    from medseg_bench.sweep import local
    from medseg_bench.sweep.worker import Outcome

    results = tmp_path / "results"
    damaged, failing, done = _spec(0), _spec(1), _spec(2)
    (_finished_run(results, damaged) / "metrics.csv").unlink()
    _finished_run(results, done)  # skipped: the sweep writes the index, which leaves the damaged run out
    monkeypatch.setattr(local, "plan_locked", lambda *args, **kwargs: SimpleNamespace())
    monkeypatch.setattr(local, "prepare_locked", lambda *args, **kwargs: SimpleNamespace())
    monkeypatch.setattr(local, "check_runs", lambda runs, prepared_for: None)
    monkeypatch.setattr(local, "check_cache_memory", lambda runs, planned, data_dir: None)
    monkeypatch.setattr(local, "check_evaluation_memory", lambda runs, prepared, data_dir: None)
    monkeypatch.setattr(local, "run_one", lambda spec, *args, **kwargs: Outcome("failed", error="boom"))
    with pytest.raises(RunError, match=f"1 of 3 runs failed: {failing.run_id}"):
        local.run_sweep([damaged, failing, done], results, tmp_path / "data", PlainReporter())
    out, err = capsys.readouterr()
    assert err == ("warning: 1 finished run is damaged (named above), left as it is, not trained again: "
                   "restore the file, move the run folder away, or delete it to run it again\n")
    missing = f"{run_dir(results, damaged) / 'metrics.csv'}: missing, but the run finished"
    assert f"{damaged.run_id}: skipped (finished, but damaged: {missing})" in out
    assert (out + err).count(str(run_dir(results, damaged))) == 1, out + err


def test_a_resumed_workers_display_ignores_the_earlier_attempts_heartbeat(tmp_path: Path) -> None:
    # With --jobs, a resumed run showed "epoch 1/3 loss ..." of its previous attempt from the old heartbeat.
    from types import SimpleNamespace

    from medseg_bench.sweep.local import _forward_epochs, _Job

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=3)
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_heartbeat(folder, epoch=1, epochs=3, loss=1.9, val_dice=0.1)  # the killed attempt's last beat
    seen: list[int] = []
    reporter = SimpleNamespace(epoch_end=lambda run_id, epoch, *rest: seen.append(epoch),
                               run_start=lambda run_id: seen.append(0))
    job = _Job(spec, process=SimpleNamespace(pid=os.getpid()), started=time.time() + 1)  # type: ignore[arg-type]
    _forward_epochs(job, tmp_path, reporter)  # type: ignore[arg-type]
    assert seen == []
    job.started = time.time() - 1
    write_heartbeat(folder, epoch=2, epochs=3, loss=1.2, val_dice=0.3)
    _forward_epochs(job, tmp_path, reporter)  # type: ignore[arg-type]
    assert seen == [0, 2]  # "training", then its epoch


def test_a_jobs_run_held_by_another_sweep_shows_none_of_that_sweeps_training(tmp_path: Path) -> None:
    # With --jobs, a run another sweep held was said to be "training", with that sweep's epochs from its
    # heartbeat, then "skipped (running in another process)" when this sweep's worker found it held.
    from types import SimpleNamespace

    from medseg_bench.sweep.local import EXIT_BUSY, _forward_epochs, _Job, _settle

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=3)
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_heartbeat(folder, epoch=1, epochs=3, loss=1.9, val_dice=0.1)  # the other sweep's, this host
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=200))
        reporter.start(1)
        job = _Job(spec, process=SimpleNamespace(pid=os.getpid() + 1), started=time.time() - 1)  # type: ignore[arg-type]
        _forward_epochs(job, tmp_path, reporter)
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        assert _settle(job, EXIT_BUSY, tmp_path, reporter, outcome)
        reporter.close()
    said = (tmp_path / "out.txt").read_text()
    assert outcome["busy"] == [spec.run_id]
    assert said.splitlines()[0] == f"[1/1] {spec.run_id}: skipped (running in another process)", said
    assert "training" not in said and "epoch" not in said


def test_a_run_that_fails_its_resume_check_under_the_lock_is_never_said_to_be_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "[1/1] RUN: training" was said before the check under the lock (a checkpoint changed since the early
    # check), then "failed": said as a run failed before it started, as the early check's refusal is.
    from types import SimpleNamespace

    from medseg_bench.sweep import worker

    spec = _spec(0)
    folder = run_dir(tmp_path, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"changed since")
    monkeypatch.setattr(worker, "resume_refusal", lambda *args: "last.ckpt: not a checkpoint")
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=200))
        reporter.start(1)
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        local._sequential([spec], tmp_path, reporter, {local.prepared_key(spec): SimpleNamespace(plan=None)},
                          False, 0, outcome)
        reporter.close()
    said = (tmp_path / "out.txt").read_text().splitlines()
    assert outcome["failed"] == [spec.run_id]
    assert said[0] == f"[1/1] {spec.run_id}: failed: last.ckpt: not a checkpoint", said
    # its time: 0.0 min, or a tenth more on a loaded machine
    ended = r"sweep finished: 1 failed \(of 1 run\) in 0\.\d min"
    assert len(said) == 2 and re.fullmatch(ended, said[1]), said


def _settled(tmp_path: Path, spec: RunSpec, code: int) -> tuple[dict[str, list[str]], str]:
    """`local._settle` of a failed worker of `spec` whose pid is this process's (a heartbeat written by this
    process is its own); (outcome, what was said)."""
    from types import SimpleNamespace

    from medseg_bench.sweep.local import _Job, _settle

    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, width=1000))
        reporter.start(1)
        job = _Job(spec, process=SimpleNamespace(pid=os.getpid()), started=time.time() - 1)  # type: ignore[arg-type]
        outcome: dict[str, list[str]] = {kind: [] for kind in ("done", "skipped", "failed", "busy", "damaged",
                                                               "damage")}
        assert not _settle(job, code, tmp_path, reporter, outcome)
    return outcome, (tmp_path / "out.txt").read_text()


@pytest.mark.parametrize("held", [False, True])
def test_a_jobs_run_is_said_to_be_training_only_where_its_worker_held_it(tmp_path: Path, held: bool) -> None:
    # A worker whose run failed its resume check under the lock (no heartbeat of its own: `run_one` starts it
    # after the check) ended with "training", then "failed"; one that held the run and ended before the loop
    # saw its heartbeat is still said to be training first.

    from medseg_bench.sweep.worker import EXIT_FAILED

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=3)
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_status(folder, "failed", error="last.ckpt: not a checkpoint")
    if held:
        write_heartbeat(folder)  # this process's pid: the job's worker below
    outcome, said_text = _settled(tmp_path, spec, EXIT_FAILED)
    said = said_text.splitlines()
    assert outcome["failed"] == [spec.run_id]
    failed = f"[1/1] {spec.run_id}: failed: last.ckpt: not a checkpoint"
    assert said == ([f"[1/1] {spec.run_id}: training"] if held else []) + [failed], said


def test_a_task_is_prepared_once_for_its_3d_and_2d_runs(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    # `--dims 3d,2d` prepared the task for its 3D runs, then again (also the 2D runs' cache) for its 2D runs.
    calls: list[tuple[str, int, bool]] = []

    def prepare_locked(task: str, data_dir: Path, num_folds: int, progress: bool = False,
                       own_slices: bool = False, say: object = None) -> str:
        calls.append((task, num_folds, own_slices))
        return f"{task}/{num_folds}/{own_slices}"

    monkeypatch.setattr(local, "prepare_locked", prepare_locked)
    runs = [RunSpec(task="Task04_Hippocampus", dims=dims, arch="unet", loss="dice_ce", aug="none")
            for dims in ("3d", "2d", "3d")]
    runs.append(RunSpec(task="Task04_Hippocampus", dims="3d", arch="unet", loss="dice_ce", aug="none",
                        num_folds=3, fold=1))
    said: list[str] = []
    prepared = local.prepare_tasks(runs, tmp_path, said.append)
    assert calls == [("Task04_Hippocampus", 5, True), ("Task04_Hippocampus", 3, False)]
    assert [prepared[local.prepared_key(spec)] for spec in runs] == [
        "Task04_Hippocampus/5/True"] * 3 + ["Task04_Hippocampus/3/False"]
    assert said[0] == ("preparing Task04_Hippocampus (plan, cache; for 2D runs, each case at its own slice "
                       "spacing where that differs, 5-fold splits)")


def test_a_sweep_whose_every_run_is_done_imports_no_training_code(tmp_path: Path) -> None:
    # Checking that its runs can train on their plan imported `training` (torch, Lightning) with no run left
    # to check: a sweep that only skipped finished runs took 8 s and 1 GB, whatever their number.
    results = tmp_path / "results"
    for seed in range(2):
        _finished_run(results, _spec(seed))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from medseg_bench.progress import PlainReporter\n"
        "from medseg_bench.spec import RunSpec\n"
        "from medseg_bench.sweep.local import run_sweep\n"
        "specs = [RunSpec(task='Task04_Hippocampus', dims='3d', arch='unet', loss='dice_ce', aug='none', "
        "seed=seed, epochs=4) for seed in range(2)]\n"
        f"outcome = run_sweep(specs, Path({str(results)!r}), Path({str(tmp_path / 'data')!r}), "
        "PlainReporter())\n"
        "print(len(outcome['skipped']), sorted(m for m in ('torch', 'medseg_bench.training') "
        "if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.stdout.splitlines()[-1] == "2 []"


def test_a_sweep_that_only_skips_reads_each_run_once_also_to_write_a_missing_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each finished run was read whole to be skipped, then again to rebuild the index a results dir lacked.
    import pandas as pd

    from medseg_bench import finished, results
    from medseg_bench.results import INDEX_NAME

    folders = [_finished_run(tmp_path / "results", _spec(seed)) for seed in range(3)]
    reads: list[str] = []
    real = finished.read_finished_run

    def counted(folder: Path) -> object:
        reads.append(folder.name)
        return real(folder)

    for module in (finished, results):
        monkeypatch.setattr(module, "read_finished_run", counted)
    outcome = local.run_sweep([_spec(seed) for seed in range(3)], tmp_path / "results", tmp_path / "data",
                              PlainReporter())
    assert len(outcome["skipped"]) == 3
    assert sorted(reads) == sorted(folder.name for folder in folders)
    assert set(pd.read_parquet(tmp_path / "results" / INDEX_NAME)["run_id"]) == set(reads)


def _synthetic_task(home: Path, tmp_path: Path) -> Path:
    """Task90_Synth (4 cases) fetched into tmp_path/data, which is returned; not planned."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    data = tmp_path / "data"
    fetch_task(get_task("Task90_Synth"), data, str(make_synthetic_task(tmp_path / "src" / "Task90_Synth",
                                                                       num_cases=4)), progress=False)
    return data


def test_a_task_not_fetched_is_not_said_to_be_planned(home: Path, tmp_path: Path) -> None:
    # "planning Task05_Prostate (fingerprint, plan, 5-fold splits)" came before the error: not fetched
    from medseg_bench.errors import DataError

    runs = [RunSpec(task="Task04_Hippocampus", dims="3d", arch="unet", loss="dice_ce", aug="none")]
    said: list[str] = []
    with pytest.raises(DataError, match="task not fetched"):
        local.plan_tasks(runs, tmp_path / "data", said.append)
    assert said == []


def test_a_task_whose_plan_cache_and_splits_exist_is_not_said_to_be_prepared(home: Path,
                                                                            tmp_path: Path) -> None:
    # "preparing TASK (plan, cache, 5-fold splits)" was said before every sweep, also where all three existed
    # and nothing was built
    data = _synthetic_task(home, tmp_path)
    runs = [RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)]
    line = "preparing Task90_Synth (plan, cache, 2-fold splits)"
    said: list[str] = []
    key = local.prepared_key(runs[0])
    first = local.prepare_tasks(runs, data, said.append)[key]  # nothing there yet: built, and said
    assert said == [line]
    said.clear()
    assert local.prepare_tasks(runs, data, said.append)[key].splits == first.splits and said == []
    for missing, what in (("splits_2fold.json", "2-fold splits"),
                          (f"{first.plan.preprocessing_hash}/complete.json", "cache")):
        # each one thing to build: said again, naming only it (the plan was named where it existed)
        (data / "preprocessed" / "Task90_Synth" / missing).unlink()
        local.prepare_tasks(runs, data, said.append)
        assert said == [f"preparing Task90_Synth ({what})"], missing
        said.clear()


def _started(results: Path, spec: RunSpec, planned: object) -> Path:
    """`spec`'s folder as a run interrupted on `planned` leaves it: a checkpoint (empty), the split, patch,
    batch and preprocessing it started with."""
    from medseg_bench.training import resolve_patch_and_batch

    folder = run_dir(results, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    patch, batch = resolve_patch_and_batch(spec, planned)  # type: ignore[arg-type]
    write_json_atomic(folder / "splits.json", planned.splits[spec.fold])  # type: ignore[attr-defined]
    write_json_atomic(folder / "setup.json", {"patch_size": list(patch), "batch_size": batch,
                                              "preprocessing": planned.plan.preprocessing})  # type: ignore
    return folder


def _interrupted_on_an_edited_plan(home: Path, tmp_path: Path) -> tuple[Path, RunSpec, RunSpec, Path]:
    """A synthetic task planned and cached at 1 mm, an interrupted run that started on that plan (its
    checkpoint, split and setup recorded), then plan.json edited to 0.5 mm; and a run not started yet.
    Returns the data dir, the interrupted run, the new one, and the task's preprocessed folder."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import prepare_task

    data = _synthetic_task(home, tmp_path)
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    started, fresh = (RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none",
                              num_folds=3, seed=seed, epochs=1) for seed in (0, 1))
    _started(tmp_path / "results", started, prepared)
    plan_file = prepared.cache_dir.parent / "plan.json"
    write_json_atomic(plan_file, json.loads(plan_file.read_text()) | {"target_spacing": [0.5, 0.5, 0.5]})
    return data, started, fresh, prepared.cache_dir.parent


def _interrupted_with_a_bad_checkpoint(home: Path, tmp_path: Path) -> tuple[Path, RunSpec, RunSpec, Path]:
    """A synthetic task planned and split, its cache not built; an interrupted run that started on that plan,
    whose checkpoints/last.ckpt is no checkpoint (its setup as the plan gives it); and a run not started yet.
    Returns the data dir, the interrupted run, the new one, and the task's preprocessed folder."""
    data = _synthetic_task(home, tmp_path)
    planned = local.plan_locked("Task90_Synth", data, 3)
    started, fresh = (RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none",
                              num_folds=3, seed=seed, epochs=1) for seed in (0, 1))
    folder = _started(tmp_path / "results", started, planned)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    return data, started, fresh, planned.root


REFUSED = ("setup.json: the run started with target spacing 1x1x1 mm, plan.json now 0.5x0.5x0.5 mm: restore "
           "plan.json, or delete the run folder to start over")


def bad_checkpoint(spec: RunSpec) -> str:
    """What follows the run folder in the refusal of `_interrupted_with_a_bad_checkpoint`'s run."""
    return (f"checkpoints/last.ckpt: not a loadable medseg-bench checkpoint (not a torch checkpoint archive; "
            f"refused unread); delete it to train run {spec.run_id} from scratch")


def test_an_interrupted_run_the_plan_changed_under_fails_before_any_cache_is_built(
        home: Path, tmp_path: Path) -> None:
    # It failed only once the new plan's cache was built (minutes to hours), and no run was left to read it.
    from medseg_bench.errors import RunError
    from medseg_bench.run_folder import read_events, read_status

    data, started, _, root = _interrupted_on_an_edited_plan(home, tmp_path)
    caches = sorted(p.name for p in root.iterdir() if p.is_dir())
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, soft_wrap=True))
        with pytest.raises(RunError, match=f"^1 of 1 run failed: {started.run_id}$"):
            local.run_sweep([started], tmp_path / "results", data, reporter)
    said = (tmp_path / "out.txt").read_text().splitlines()
    folder = run_dir(tmp_path / "results", started)
    assert said[0] == f"[1/1] {started.run_id}: failed: {folder / REFUSED}"  # no "preparing", no "training"
    assert said[1].startswith("sweep finished: 1 failed (of 1 run) in ")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == caches  # no cache of the new plan
    assert read_status(folder)["error"] == str(folder / REFUSED)
    assert [e["event"] for e in read_events(folder)] == ["failed"]
    assert f"ERROR not resumed: {folder / REFUSED}" in (folder / "run.log").read_text()


@pytest.mark.parametrize("fail_fast", [False, True])
def test_the_other_runs_of_a_sweep_go_ahead_after_an_interrupted_run_is_refused(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_fast: bool) -> None:
    from medseg_bench.errors import RunError

    data, started, fresh, _ = _interrupted_on_an_edited_plan(home, tmp_path)
    prepared_for: list[list[str]] = []
    trained: list[str] = []
    monkeypatch.setattr(local, "prepare_tasks", lambda runs, *args: prepared_for.append(
        [spec.run_id for spec in runs]) or {})
    monkeypatch.setattr(local, "check_runs", lambda runs, prepared_for: None)
    monkeypatch.setattr(local, "_sequential", lambda runs, *args: trained.extend(s.run_id for s in runs))
    reporter = PlainReporter(Console(file=io.StringIO()))
    with pytest.raises(RunError, match=f"^1 of 2 runs failed: {started.run_id}$"):
        local.run_sweep([started, fresh], tmp_path / "results", data, reporter, fail_fast=fail_fast)
    # the cache is built for the run that goes ahead (with --fail-fast: none goes ahead, none is built)
    assert prepared_for == [[] if fail_fast else [fresh.run_id]]
    assert trained == ([] if fail_fast else [fresh.run_id])


@pytest.mark.parametrize("fail_fast", [False, True])
def test_fail_fast_fails_the_first_interrupted_run_that_cannot_resume_and_leaves_the_others(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_fast: bool) -> None:
    # --fail-fast failed every interrupted run the plan changed under, each recorded failed in its folder,
    # where it stops at the first failed run of a sweep
    import shutil

    from medseg_bench.errors import RunError
    from medseg_bench.run_folder import read_status

    data, first, fresh, _ = _interrupted_on_an_edited_plan(home, tmp_path)
    trained: list[str] = []
    monkeypatch.setattr(local, "prepare_tasks", lambda runs, *args: {})
    monkeypatch.setattr(local, "check_runs", lambda runs, prepared_for: None)
    monkeypatch.setattr(local, "_sequential", lambda runs, *args: trained.extend(s.run_id for s in runs))
    second = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3,
                     seed=2, epochs=1)  # interrupted on the same plan as the first
    shutil.copytree(run_dir(tmp_path / "results", first), run_dir(tmp_path / "results", second))
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, soft_wrap=True))
        failed = first.run_id if fail_fast else f"{first.run_id}, {second.run_id}"
        with pytest.raises(RunError, match=f"^{1 if fail_fast else 2} of 3 runs failed: {failed}$"):
            local.run_sweep([first, second, fresh], tmp_path / "results", data, reporter, fail_fast=fail_fast)
    said = (tmp_path / "out.txt").read_text().splitlines()
    folder = run_dir(tmp_path / "results", second)
    assert trained == ([] if fail_fast else [fresh.run_id])
    if fail_fast:
        assert said[-1].startswith("sweep finished: 1 failed, 2 not reached (of 3 runs) in ")
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "setup.json", "splits.json"]
        assert (folder / "checkpoints" / "last.ckpt").is_file()  # interrupted as it was: it resumes later
    else:
        assert read_status(folder)["error"] == str(folder / REFUSED)


def test_a_run_held_by_another_process_is_left_to_it_not_refused(home: Path, tmp_path: Path) -> None:
    from medseg_bench.run_folder import read_status
    from medseg_bench.sweep.local import plan_locked
    from medseg_bench.sweep.worker import refuse_unresumable

    data, started, _, _ = _interrupted_on_an_edited_plan(home, tmp_path)
    folder = run_dir(tmp_path / "results", started)
    planned = plan_locked("Task90_Synth", data, 3)
    lock = RunLock(folder)
    assert lock.acquire()
    try:
        # `run_one` says it is busy
        assert refuse_unresumable(started, planned, tmp_path / "results") is None
        assert read_status(folder).get("state") != "failed"
    finally:
        lock.release()
    refused = refuse_unresumable(started, planned, tmp_path / "results")
    assert refused is not None and refused.kind == "failed" and refused.error == str(folder / REFUSED)


def test_an_interrupted_run_with_a_bad_checkpoint_fails_before_any_cache_is_built(
        home: Path, tmp_path: Path) -> None:
    # It was refused only once the cache was built: the network it is checked against is built from the spec
    # and the plan alone, so the checkpoint is checked with the plan and splits, before the build.
    from medseg_bench.errors import RunError
    from medseg_bench.run_folder import read_events, read_status

    data, started, _, root = _interrupted_with_a_bad_checkpoint(home, tmp_path)
    assert [p for p in root.iterdir() if p.is_dir()] == []  # planned and split, no cache
    with open(tmp_path / "out.txt", "w") as out:
        reporter = PlainReporter(Console(file=out, highlight=False, soft_wrap=True))
        with pytest.raises(RunError, match=f"^1 of 1 run failed: {started.run_id}$"):
            local.run_sweep([started], tmp_path / "results", data, reporter)
    folder = run_dir(tmp_path / "results", started)
    refused = f"{folder}/{bad_checkpoint(started)}"
    said = (tmp_path / "out.txt").read_text().splitlines()
    assert said[0] == f"[1/1] {started.run_id}: failed: {refused}"  # no "preparing", no "training"
    assert [p for p in root.iterdir() if p.is_dir()] == []  # still no cache
    assert read_status(folder)["error"] == refused
    assert [e["event"] for e in read_events(folder)] == ["failed"]
    assert f"ERROR not resumed: {refused}" in (folder / "run.log").read_text()


def _with_its_own_checkpoint(home: Path, tmp_path: Path) -> tuple[Path, RunSpec, Any, Path]:
    """An interrupted run whose last.ckpt is its own network's, its task planned (no cache): (the data dir,
    the run, its plan, its checkpoint)."""
    import torch

    from medseg_bench.checkpoints import RUN_ID_KEY
    from medseg_bench.training import build_network

    data, started, _, _ = _interrupted_with_a_bad_checkpoint(home, tmp_path)
    planned = local.plan_locked("Task90_Synth", data, 3)
    checkpoint = run_dir(tmp_path / "results", started) / "checkpoints" / "last.ckpt"
    net = build_network(started, planned)  # type: ignore[arg-type]
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                RUN_ID_KEY: started.run_id}, checkpoint)
    return data, started, planned, checkpoint


def test_an_interrupted_run_with_its_own_checkpoint_goes_ahead(home: Path, tmp_path: Path) -> None:
    """The early check builds the run's network from the plan (no cache) and loads the checkpoint into it:
    a checkpoint of this run's network passes it, one of another network's shape does not."""
    import torch

    from medseg_bench.checkpoints import RUN_ID_KEY
    from medseg_bench.sweep.worker import refuse_unresumable
    from medseg_bench.training import build_network

    _, started, planned, checkpoint = _with_its_own_checkpoint(home, tmp_path)
    assert refuse_unresumable(started, planned, tmp_path / "results") is None
    other = RunSpec(task="Task90_Synth", dims="3d", arch="dynunet", loss="dice_ce", aug="none", num_folds=3,
                    epochs=1)
    torch.save({"state_dict": {f"net.{k}": v for k, v in build_network(other, planned).state_dict().items()},
                RUN_ID_KEY: started.run_id}, checkpoint)  # type: ignore[arg-type]
    refused = refuse_unresumable(started, planned, tmp_path / "results")
    assert refused is not None and refused.error is not None
    assert refused.error.startswith(f"{checkpoint}: not a loadable medseg-bench checkpoint (Error(s) in "
                                    "loading state_dict for ")


def test_a_run_whose_evaluation_cannot_fit_stops_the_sweep_before_the_cache_is_built(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The held-out cases' sizes are the fingerprint's and the plan's, not the cache's: the sweep stopped
    on them only after building the cache (an hour on a large task). Now it stops first, nothing built."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import plan_task
    from medseg_bench.errors import DataError

    data = _synthetic_task(home, tmp_path)
    plan_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)  # fingerprinted, planned, split
    root = data / "preprocessed" / "Task90_Synth"
    before = sorted(p.name for p in root.iterdir())
    memory = MemoryLimit(100_000, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: memory)
    # the cache's memory, checked just before (tested on its own): 100 kB fits neither, the evaluation here
    monkeypatch.setattr(local, "check_cache_memory", lambda *args: None)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    with pytest.raises(DataError, match=r"predicting it needs at least .*nothing was trained\)$"):
        local.run_sweep([spec], tmp_path / "results", data, PlainReporter())
    assert sorted(p.name for p in root.iterdir()) == before  # no cache folder
    assert not any(p.is_dir() for p in root.iterdir())
    assert not run_dir(tmp_path / "results", spec).exists()



def _resumable(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               between: Callable[[Path], object] = lambda checkpoint: None
               ) -> tuple[RunSpec, Path, list[str], list[RunSpec]]:
    """An interrupted run whose last.ckpt is its own, for a sweep (its cache not built, its training not
    run): (the run, its checkpoint, each load of that checkpoint to check it, the runs trained). `between`
    runs after the sweep's early check and before `run_one` (where the sweep builds the cache)."""
    import medseg_bench.run as run_module
    from medseg_bench import checkpoints

    _, started, planned, checkpoint = _with_its_own_checkpoint(home, tmp_path)
    loads: list[str] = []
    real = checkpoints._read
    monkeypatch.setattr(checkpoints, "_read",
                        lambda path, mapped: loads.append(str(path)) or real(path, mapped))

    def prepare(runs: list[RunSpec], *args: object) -> dict[object, object]:
        between(checkpoint)
        return {local.prepared_key(spec): planned for spec in runs}

    trained: list[RunSpec] = []
    monkeypatch.setattr(local, "prepare_tasks", prepare)
    monkeypatch.setattr(run_module, "execute_run", lambda spec, *rest: trained.append(spec) or {})
    return started, checkpoint, loads, trained


def test_a_resumed_runs_checkpoint_is_loaded_once_to_check_it(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The sweep's early check loaded it, then run_one's check under the run's lock loaded it again: the same
    # file, unchanged (its inode, size and time), is not loaded again.
    started, checkpoint, loads, trained = _resumable(home, tmp_path, monkeypatch)
    local.run_sweep([started], tmp_path / "results", tmp_path / "data",
                    PlainReporter(Console(file=io.StringIO())))
    assert loads == [str(checkpoint)] and trained == [started]


@pytest.mark.parametrize("replace", ["renamed", "in place", "in place, its time set back"])
def test_a_checkpoint_replaced_after_the_early_check_is_checked_again(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replace: str) -> None:
    # Another run's checkpoint copied over it between the sweep's check and the run's lock: still refused.
    # In place, it keeps its inode and its size (the same network's weights): its time tells it apart, and
    # its change time where its modification time is set back (`touch -r`: the run was evaluated, done, with
    # the other run's weights).
    import torch

    from medseg_bench.checkpoints import RUN_ID_KEY
    from medseg_bench.errors import RunError
    from medseg_bench.run_folder import read_status

    def foreign(checkpoint: Path) -> None:
        state = torch.load(checkpoint, weights_only=True) | {RUN_ID_KEY: "x" * len(started.run_id)}
        target = checkpoint.with_name("other.ckpt") if replace == "renamed" else checkpoint
        before = checkpoint.stat()
        torch.save(state, target)
        if replace == "renamed":
            os.replace(target, checkpoint)
        else:
            assert checkpoint.stat().st_size == before.st_size
        if replace.endswith("set back"):
            os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert checkpoint.stat().st_mtime_ns == before.st_mtime_ns

    started, checkpoint, loads, trained = _resumable(home, tmp_path, monkeypatch, foreign)
    with pytest.raises(RunError, match=f"^1 of 1 run failed: {started.run_id}$"):
        local.run_sweep([started], tmp_path / "results", tmp_path / "data",
                        PlainReporter(Console(file=io.StringIO())))
    assert loads == [str(checkpoint)] * 2 and trained == []
    error = read_status(run_dir(tmp_path / "results", started))["error"]
    assert error.startswith(f"{checkpoint}: the weights of run {'x' * len(started.run_id)}, not of run "
                            f"{started.run_id}")


def test_a_jobs_worker_is_told_the_checkpoint_the_sweep_checked(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `--jobs N`: the stamp travels to the worker process (`--checked`), whose run_one then loads the
    # checkpoint only where it changed since
    from medseg_bench.sweep import worker

    started, checkpoint, loads, _ = _resumable(home, tmp_path, monkeypatch)
    start_worker = local._start_worker
    stamps: list[object] = []
    monkeypatch.setattr(local, "_start_worker", lambda spec, folder, *args: stamps.append(args[-1]) or
                        subprocess.Popen([sys.executable, "-c", f"raise SystemExit({worker.EXIT_SKIPPED})"]))
    monkeypatch.setattr(local, "POLL_S", 0.01)
    local.run_sweep([started], tmp_path / "results", tmp_path / "data",
                    PlainReporter(Console(file=io.StringIO())), jobs=2)
    assert stamps == [worker.checkpoint_stamp(checkpoint)] and loads == [str(checkpoint)]
    popen: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: popen.append(argv))
    start_worker(started, tmp_path / "run", tmp_path, tmp_path / "data", None, 1, 0, (1, 2, 3, 4, 5))
    assert popen[0][popen[0].index("--checked") + 1] == "1:2:3:4:5"
    passed: list[object] = []
    monkeypatch.setattr(local, "prepare_locked", lambda *args, **kwargs: None)
    monkeypatch.setattr(worker, "run_one", lambda *args, **kwargs: passed.append(kwargs["checked"]) or
                        worker.Outcome("skipped"))
    argv = ["--spec", json.dumps(started.to_dict()), "--results-dir", str(tmp_path), "--data-dir",
            str(tmp_path), "--checked", "1:2:3:4:5"]
    assert worker.main(argv) == worker.EXIT_SKIPPED and passed == [(1, 2, 3, 4, 5)]


def test_a_finished_runs_note_that_the_built_cache_gives_is_said_after_the_build(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A task's preprocessed folder deleted and a case replaced: the finished run was skipped without a word
    (no cache to compare its data with), the cache rebuilt from the new data, and only the next sweep said
    the run had trained on other data."""
    from tests.conftest import fake_finished_run

    results = tmp_path / "results"
    fake_finished_run(results, 0)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=0)
    note = "trained on other data than the task's cache now holds (data a, now b): ..."
    built: list[bool] = []
    monkeypatch.setattr(local, "skip_note", lambda spec, data_dir, folder: note if built else None)
    for step in ("plan_tasks", "check_cache_memory", "check_evaluation_memory"):
        monkeypatch.setattr(local, step, lambda *args, **kwargs: {})
    monkeypatch.setattr(local, "check_runs", lambda *args: None)
    pending = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=1)
    monkeypatch.setattr(local, "prepare_tasks", lambda *args: built.append(True) or {("T", 5): None})
    trained: list[list[RunSpec]] = []
    monkeypatch.setattr(local, "_sequential", lambda todo, *args: trained.append(todo))
    outcome = local.run_sweep([spec, pending], results, tmp_path / "data", PlainReporter())
    assert outcome["skipped"] == [spec.run_id] and trained == [[pending]]
    lines = capsys.readouterr().out.splitlines()
    assert lines.index(f"T/{spec.run_id} (skipped, already done): {note}") > next(
        i for i, line in enumerate(lines) if "already done" in line and spec.run_id in line)


@pytest.mark.parametrize("code", [-9, 143])
def test_a_jobs_worker_killed_in_its_run_leaves_the_run_failed_with_the_sweeps_line(
        tmp_path: Path, code: int) -> None:
    # A --jobs worker SIGKILLed (the out-of-memory killer) mid-run: the sweep said "failed: worker killed by
    # SIGKILL ...", but the run folder still said `running`, and `status` showed it `partial` with no word
    # of why. One SIGTERMed from outside records `interrupted` itself: the sweep says so, the folder keeps it.

    from typer.testing import CliRunner

    from medseg_bench.cli.app import app
    from medseg_bench.run_folder import read_events, read_status

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=3)
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    write_status(folder, "running")
    append_event(folder, "start")
    if code == 143:
        append_event(folder, "interrupted", reason="SIGTERM")
    write_heartbeat(folder)  # this process's pid: the job's worker below
    _, said = _settled(tmp_path, spec, code)
    output = folder / "worker.log"
    shown = CliRunner().invoke(app, ["status", "--results-dir", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    if code == -9:
        error = (f"worker killed by SIGKILL (the kernel's out-of-memory killer sends it: see `dmesg`) before "
                 f"it recorded an error (its output: {output}); the next sweep retries it")
        assert f"{spec.run_id}: failed: {error}" in said
        assert read_status(folder) == {**read_status(folder), "state": "failed", "error": error}
        assert read_events(folder)[-1]["event"] == "failed"
        assert f"failed   T/{spec.run_id}  {error}" in shown.output
    else:
        error = f"worker interrupted by SIGTERM (its output: {output}); the next sweep resumes it"
        assert f"{spec.run_id}: failed: {error}" in said
        assert read_status(folder)["state"] == "running" and read_events(folder)[-1]["event"] == "interrupted"
        assert f"pending  T/{spec.run_id}\n" in shown.output  # no checkpoint; nothing unrecorded to name


def test_a_worker_held_by_another_process_now_is_not_recorded_failed(tmp_path: Path) -> None:
    from medseg_bench.run_folder import read_status
    from medseg_bench.sweep.worker import record_unrecorded_failure

    write_status(tmp_path, "running")
    append_event(tmp_path, "start")
    lock = RunLock(tmp_path)
    assert lock.acquire()
    try:
        assert not record_unrecorded_failure(tmp_path, "killed")  # retried by another sweep already
    finally:
        lock.release()
    assert read_status(tmp_path)["state"] == "running"
    assert record_unrecorded_failure(tmp_path, "killed") and read_status(tmp_path)["error"] == "killed"
    assert not record_unrecorded_failure(tmp_path, "again")  # recorded: its last attempt's end is known


def test_a_sweep_says_it_makes_the_splits_of_a_task_plan_made_the_plan_of(home: Path, shared_task: Path,
                                                                           tmp_path: Path) -> None:
    # `fetch`, `plan`, `sweep` (the README's order): the sweep made splits_5fold.json without a word
    from medseg_bench.settings import get_settings
    from tests.conftest import fetch_subset

    fetch_subset(shared_task, tmp_path)
    data = get_settings().data_dir
    said: list[str] = []
    local.plan_locked("Task04_Hippocampus", data, 2, said.append)
    local.plan_locked("Task04_Hippocampus", data, 3, said.append)  # plan there, 3-fold splits not
    local.plan_locked("Task04_Hippocampus", data, 3, said.append)  # all there: nothing to say
    assert said == ["planning Task04_Hippocampus (fingerprint, plan, 2-fold splits)",
                    "planning Task04_Hippocampus (3-fold splits)"]
    assert (data / "preprocessed" / "Task04_Hippocampus" / "splits_3fold.json").is_file()
