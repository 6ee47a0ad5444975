"""What a run folder says about its run while it is pending, running or stopped: `status.json`,
`heartbeat.json`, `events.jsonl` and the SLURM launcher's `queued.json` (the folder's layout: `results.py`).
Each is written atomically or appended whole, so any reader may look at any time."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from medseg_bench.files import load_json_object, parse_json, write_json_atomic
from medseg_bench.locks import is_locked

STATES = ("pending", "running", "done", "failed")
ATTEMPT_EVENTS = ("start", "resume")  # the events that begin an attempt, and those that end one
END_EVENTS = ("done", "failed", "interrupted")
QUEUED_NAME = "queued.json"  # {"job_id", "time"}: written by the SLURM launcher when it submits the run
# the held-out cases while postprocessing is decided (`case_spill.spill_folder`); a killed attempt's is
# removed when the run is next taken up (`worker.clean_temp_files`), not only by its next evaluation
SPILL_NAME = ".evaluation.partial"
HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_STALE_S = 60.0  # a heartbeat older than this from another host means its process is gone


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


def write_heartbeat(folder: Path, **progress: Any) -> None:
    write_json_atomic(folder / "heartbeat.json",
                      {"time": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **progress})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when missing or unreadable (every such file is written atomically)."""
    try:
        data = parse_json(path.read_text())
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
            event = parse_json(line)
        except ValueError:
            continue
        if isinstance(event, dict):  # a line torn by a crash, or edited: skipped
            events.append(event)
    return events


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


def unfinished_state(folder: Path, queue: bool = True) -> str:
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


def unrecorded_end(folder: Path, held_here: bool = False) -> dict[str, Any] | None:
    """The start or resume event of the run's last attempt where nothing recorded how it ended (no `done`,
    `failed` or `interrupted` after it) and no process holds the run (`held_here`: the caller holds its lock,
    no other can): its process was killed (SIGKILL, the kernel's out-of-memory killer, a node lost). None
    otherwise."""
    if not held_here and is_locked(folder):
        return None
    events = [e for e in read_events(folder) if e.get("event") in ATTEMPT_EVENTS + END_EVENTS]
    if events and events[-1].get("event") in ATTEMPT_EVENTS:
        return events[-1]
    return None


def unqueued_state(folder: Path) -> str:
    """The state of a queued run whose SLURM job left the queue without starting it: failed, partial or
    pending, as before it was submitted."""
    return unfinished_state(folder, queue=False)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0
