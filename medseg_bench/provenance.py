"""Provenance: what a run's numbers came from (package versions, the code's git revision, Python, host, CPU
and the instruction set torch uses, GPU), recorded in each run's `env.json` and in its events."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from medseg_bench.settings import REPO_ROOT

# Every package a run's numbers go through: torchvision (the fcn arch), timm (tu-* encoders), edt (surface
# distances where installed, else scipy's; None in env.json when it is not).
PACKAGES = ("medseg-bench", "torch", "pytorch-lightning", "monai", "segmentation-models-pytorch", "numpy",
            "scipy", "SimpleITK", "pandas", "torchvision", "timm", "edt")


def git_revision(root: Path = REPO_ROOT) -> str:
    """The commit of the source checkout at `root` (with `+dirty`), or `unknown` for an installed package.

    Only a repository whose top folder is `root` is the source: an installed package's folder is often
    inside another repository (a virtual environment in a project's folder), whose commit git would give.
    Git's own variables are left out of its environment: `GIT_DIR` would name another repository too.
    A checkout owned by another user (a lab's shared one, a container's root over a mounted folder) is
    trusted at `root` alone (`safe.directory`): git refused it as "dubious ownership", so its runs recorded
    `unknown`, yet this process runs that checkout's code already.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    trusted = f"safe.directory={root.resolve()}"  # not an enclosing repository: its top is another folder

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-c", trusted, *args], cwd=root, env=env, capture_output=True,
                              text=True, timeout=5)

    try:
        found = git("rev-parse", "--show-toplevel", "HEAD")
        lines = found.stdout.split("\n")
        if found.returncode != 0 or len(lines) < 2 or Path(lines[0]).resolve() != root.resolve():
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return lines[1].strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def code_revision() -> str:
    """`git_revision()` of the checkout this process runs, read once, when its first run starts (the modules
    a run uses are imported by then): a commit made while a sweep goes on is not what its later runs ran."""
    return git_revision()


# Environment variables that cap the instruction set of torch's CPU kernels (ATen's, oneDNN's, MKL's).
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name with its family and model numbers (Linux: /proc/cpuinfo; a VM may show only
    "AMD EPYC", the numbers tell its generation), else what `platform` knows, else `unknown`."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as info:
            for line in info:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break  # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = (fields.get("model name") or fields.get("Processor") or fields.get("cpu model")
            or platform.processor())
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if fields.get(key)]
    if not name:
        return "unknown"
    return f"{name} ({', '.join(numbers)})" if numbers else name


# What each attempt's `start`/`resume` event records of `environment()` (env.json holds only the last
# attempt's): a run resumed on another CPU, instruction set or thread count, which changes its last bits, is
# seen in its events, not only its code and packages.
ATTEMPT_FIELDS = ("git_revision", "versions", "python", "cpu", "cpu_capability", "isa_limits",
                  "torch_threads", "gpu")


def attempt_record(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of `environment()` an attempt's event records (`ATTEMPT_FIELDS`)."""
    return {key: env.get(key) for key in ATTEMPT_FIELDS}


def environment() -> dict[str, Any]:
    import torch

    versions: dict[str, str | None] = {}
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
        "git_revision": code_revision(),
        "cpu_count": os.cpu_count(),
        # The CPU and the instruction set torch's kernels use (oneDNN's convolutions pick theirs from the same
        # CPU unless an ISA_LIMITS variable caps it): floating-point results differ between instruction sets
        # with the same packages (the README, "Training").
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
