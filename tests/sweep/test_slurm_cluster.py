"""The SLURM launcher against a real one-node SLURM cluster on localhost (scripts/slurm_local.sh).

Marked `slurm`: needs root; installs slurm-wlm and munge with apt-get when missing; starts munged, slurmctld
and slurmd and stops them (by pid) at the end. Not in the default run: `pytest -m slurm`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.results import INDEX_NAME, run_state
from medseg_bench.run_folder import read_events
from tests.conftest import TINY_SWEEP, fetch_subset

pytestmark = pytest.mark.slurm
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "slurm_local.sh"
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("starting SLURM daemons needs root")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURMCTLD_PORT": str(_free_port()), "SLURMD_PORT": str(_free_port())}
    started = subprocess.run([str(SCRIPT), "start", str(state)], env=env, capture_output=True, text=True,
                             timeout=900)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield state / "slurm.conf"
    finally:
        subprocess.run([str(SCRIPT), "stop", str(state)], timeout=120)


def _squeue_empty(job_prefixes: set[str]) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True,
                         check=True).stdout
    return not any(line.split("_")[0] in job_prefixes for line in out.split())


def _wait(predicate: object, timeout_s: float, what: str, results: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + _what_happened(results)
        time.sleep(0.5)


def _what_happened(results: Path | None) -> str:
    """For a failed wait or check: each run's events and the end of every job's log, and of slurmctld's and
    slurmd's (CI shows only the failure)."""
    if results is None:
        return ""
    lines = [f"\nsqueue: {subprocess.run(['squeue', '-h', '-r'], capture_output=True, text=True).stdout}"]
    for folder in sorted((results / "Task04_Hippocampus").iterdir()):
        lines.append(f"{folder.name} events: {read_events(folder)}")
    logs = sorted((results / ".slurm").glob("*/*_log.*"))
    if "SLURM_CONF" in os.environ:
        state = Path(os.environ["SLURM_CONF"]).parent
        logs += [state / "log" / "slurmctld.log", state / "log" / "slurmd.log"]
    for log in logs:
        if log.is_file():
            tail = log.read_text(errors="replace").splitlines()[-40:]
            lines.append(f"--- {log.name}:\n" + "\n".join(tail))
    return "\n".join(lines)


def _job_ids(folders: list[Path]) -> dict[Path, str]:
    return {f: json.loads((f / "queued.json").read_text())["job_id"] for f in folders}


def test_array_sweep_then_scancel_mid_run_and_resume(slurm_conf: Path, shared_task: Path, home: Path,
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--seed", "0,1,2", "--epochs", "6", "--iters-per-epoch", "12",
               "--results-dir", str(results), "--launcher", "slurm", "--partition", "debug",
               "--cpus-per-job", "1", "--mem-gb", "2", "--time", "00:20:00"]
    submitted = runner.invoke(app, command)
    assert submitted.exit_code == 0, submitted.output
    assert submitted.output.count("submitted Task04_Hippocampus/") == 3
    folders = sorted((results / "Task04_Hippocampus").iterdir())
    jobs = _job_ids(folders)
    assert len({j.split("_")[0] for j in jobs.values()}) == 1  # one array

    # cancel the first run seen training past its first checkpoint
    def started() -> Path | None:
        return next((f for f in folders if run_state(f) == "running"
                     and (f / "checkpoints" / "last.ckpt").is_file()), None)

    _wait(lambda: started() is not None, 300, "a run to write its first checkpoint", results)
    victim = started()
    assert victim is not None
    subprocess.run(["scancel", jobs[victim]], check=True)
    _wait(lambda: _squeue_empty({j.split("_")[0] for j in jobs.values()}), 600, "the array to finish",
          results)
    status = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert status.exit_code == 0, status.output
    assert status.output.splitlines()[-1] == "3 runs: 2 done, 1 partial", status.output
    assert run_state(victim) == "partial"

    again = runner.invoke(app, command)  # the same sweep again: only the cancelled run is submitted
    assert again.exit_code == 0, again.output
    assert again.output.count("submitted Task04_Hippocampus/") == 1 and victim.name in again.output
    assert again.output.count(": not submitted") == 2
    _wait(lambda: _squeue_empty({_job_ids([victim])[victim].split("_")[0]}), 600, "the resubmitted job",
          results)

    for folder in folders:
        events = [e["event"] for e in read_events(folder)]
        assert run_state(folder) == "done", (folder.name, events)
        if folder == victim:  # scancel's SIGTERM stops the job as Ctrl-C does: recorded as interrupted
            assert events == ["start", "interrupted", "resume", "done"], events
            assert read_events(folder)[1]["reason"] == "SIGTERM"
        else:
            assert events == ["start", "done"], folder.name
    final = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert final.output.splitlines()[-1] == "3 runs: 3 done"
    assert pd.read_parquet(results / INDEX_NAME)["run_id"].nunique() == 3


def test_preempted_job_is_requeued_and_resumes(slurm_conf: Path, shared_task: Path, home: Path,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM warns a job it is about to be preempted or to time out with a signal (USR2 for submitit); the job
    requeues itself and, when it starts again, resumes from its last checkpoint."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_conf))
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--seed", "5", "--epochs", "6", "--iters-per-epoch", "12",
               "--results-dir", str(results), "--launcher", "slurm", "--cpus-per-job", "1", "--mem-gb", "2",
               "--time", "00:20:00"]
    submitted = runner.invoke(app, command)
    assert submitted.exit_code == 0, submitted.output
    (folder,) = (results / "Task04_Hippocampus").iterdir()
    (job,) = _job_ids([folder]).values()
    _wait(lambda: run_state(folder) == "running" and (folder / "checkpoints" / "last.ckpt").is_file(), 300,
          "the first checkpoint", results)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)  # what SLURM sends before preemption
    _wait(lambda: "interrupted" in [e["event"] for e in read_events(folder)], 120,
          "the run to record its interruption", results)

    def pending_again() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip() == "PENDING"

    _wait(pending_again, 120, "the requeued job", results)
    # SLURM holds a requeued job back until the node no longer refuses its revoked credential (cred_expire,
    # 20 s in slurm_local.sh). Started earlier by hand (`scontrol update StartTime=now`), the job was killed
    # at once ("Job credential revoked") now and then, and left the queue unfinished.
    _wait(lambda: _squeue_empty({job.split("_")[0]}), 600, "the requeued job to finish", results)
    events = read_events(folder)
    assert [e["event"] for e in events] == ["start", "interrupted", "resume", "done"], \
        _what_happened(results)
    assert events[1]["reason"] == "SIGUSR2"  # stopped by the signal itself, before submitit requeued the job
    assert {e.get("job_id") for e in read_events(folder) if e["event"] in ("start", "resume")} == {job}
    assert run_state(folder) == "done"
