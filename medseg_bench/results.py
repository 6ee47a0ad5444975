"""The results store: one folder per run, `<results_dir>/<task>/<run_id>/`; the folders are the truth.

Run folder:
    spec.json        the full RunSpec (and run id)
    status.json      {"state": pending|running|done|failed, ...}, written atomically
    env.json         versions, git revision, host, device
    splits.json      the fold's train/val case ids
    run.log          the run's log
    checkpoints/     last.ckpt, best.ckpt
    logs/            CSV (and TensorBoard) training logs
    metrics.csv      per case and label scores on the held-out fold (written before status becomes done)
    summary.json     means, cost (params, wall time, time per epoch, peak memory)
    learning_curves.png
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg_bench.data.io import write_json_atomic
from medseg_bench.errors import ResultsError
from medseg_bench.settings import REPO_ROOT
from medseg_bench.spec import RunSpec

STATES = ("pending", "running", "done", "failed")
PACKAGES = ("medseg-bench", "torch", "pytorch-lightning", "monai", "segmentation-models-pytorch", "numpy",
            "scipy", "SimpleITK", "pandas")


def run_dir(results_dir: Path, spec: RunSpec) -> Path:
    return results_dir / spec.task / spec.run_id


def read_status(folder: Path) -> dict[str, Any]:
    path = folder / "status.json"
    if not path.is_file():
        return {"state": "pending"}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"state": "pending"}  # a status file is written atomically; unreadable means foreign: redo


def write_status(folder: Path, state: str, **extra: Any) -> None:
    assert state in STATES
    write_json_atomic(folder / "status.json", {"state": state, "time": time.time(), "pid": os.getpid(), **extra})


def is_done(folder: Path) -> bool:
    return read_status(folder).get("state") == "done" and (folder / "metrics.csv").is_file()


def check_writable(results_dir: Path) -> None:
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"{results_dir}: results dir is not writable ({exc.strerror or exc})") from None


def git_revision() -> str:
    """The source checkout's commit (with `+dirty`), or `unknown` for an installed package."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "git_revision": git_revision(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def finished_runs(results_dir: Path) -> list[Path]:
    """Folders of finished runs under `results_dir` (any task)."""
    if not results_dir.is_dir():
        return []
    return sorted(p.parent for p in results_dir.glob("*/*/spec.json") if is_done(p.parent))


def load_results(results_dir: Path):
    """All per-case, per-label scores of finished runs, joined with their specs and cost (a DataFrame)."""
    import pandas as pd

    frames = []
    for folder in finished_runs(results_dir):
        spec = json.loads((folder / "spec.json").read_text())
        summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
        frame = pd.read_csv(folder / "metrics.csv")
        frame.insert(0, "run_id", folder.name)
        for key in ("task", "dims", "arch", "encoder", "loss", "aug", "fold", "seed", "epochs", "max_minutes"):
            frame[key] = spec.get(key)
        for key in ("params", "train_time_s", "time_per_epoch_s", "peak_memory_mb", "device"):
            frame[key] = summary.get("cost", {}).get(key)
        frames.append(frame)
    if not frames:
        raise ResultsError(f"{results_dir}: no finished runs to report")
    table = pd.concat(frames, ignore_index=True)
    table["encoder"] = table["encoder"].fillna("")
    return table
