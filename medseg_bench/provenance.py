"""Provenance: what a run's numbers came from (package versions, the code's git revision and uncommitted
change, Python, host, CPU and the instruction set torch uses, GPU), recorded in each run's `env.json` (and
`source.diff`) and in its events."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import socket
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from medseg_bench.checks import usable_memory
from medseg_bench.files import atomic_binary, write_json_atomic
from medseg_bench.settings import REPO_ROOT

# Every package a run's numbers go through: torchvision (the fcn arch), timm (tu-* encoders), edt (surface
# distances where installed, else scipy's; None in env.json when it is not).
PACKAGES = ("medseg-bench", "torch", "pytorch-lightning", "monai", "segmentation-models-pytorch", "numpy",
            "scipy", "SimpleITK", "pandas", "torchvision", "timm", "edt")

SOURCE_DIFF_NAME = "source.diff"  # beside env.json: a dirty checkout's `git diff HEAD`, then its new files
MAX_DIFF_BYTES = 4 * 2**20  # of it kept; its sha256 and size are of the whole
# The folders whose untracked files (those git does not ignore) make a checkout dirty and go into source.diff
# as new files: what a run reads of the checkout, the package (a new module that an edited tracked file
# imports) and the task catalog (`settings.packaged_tasks_dir`: a new task file). Not the rest: a notebook or
# a scratch script beside them is not the code a run ran, yet would make every run of that checkout dirty;
# a sweep file's settings are in each run's spec.json; results and data are no code and could be GBs.
UNTRACKED_FOLDERS = ("medseg_bench", "tasks")
# An untracked file larger than this is not diffed (git would hold all of it in memory, and its patch would
# mostly not be kept whole): env.json names it with its size and sha256, read as a stream. Code is seldom so
# long; a checkpoint or a volume left in the package folder is.
MAX_UNTRACKED_FILE_BYTES = MAX_DIFF_BYTES
GIT_TIMEOUT_S = 5
DIFF_TIMEOUT_S = 30
# The diff as git gives it whatever the user's configuration (colour, external diff tools, text conversion,
# another algorithm or prefixes would change its bytes and sha256), binary files as `git apply` takes them.
DIFF_ARGS = ("diff", "--binary", "--full-index", "--no-color", "--no-ext-diff", "--no-textconv",
             "--no-renames", "--diff-algorithm=myers", "--unified=3", "--src-prefix=a/", "--dst-prefix=b/")


@dataclass(frozen=True)
class SourceDiff:
    """A dirty checkout's uncommitted change, read with its revision: its tracked files' (`git diff HEAD`),
    then its untracked files in `UNTRACKED_FOLDERS` as new files; `untracked_skipped` names those left out."""

    text: bytes  # the first MAX_DIFF_BYTES of it
    sha256: str  # of the whole diff
    size_bytes: int
    # {"path", "reason"} each, a symbolic link's "target", a large file's "size_bytes" and "sha256"
    untracked_skipped: tuple[dict[str, Any], ...] = ()

    @property
    def cut(self) -> bool:
        return self.size_bytes > len(self.text)

    def record(self) -> dict[str, Any]:
        """env.json's `source_diff` (`untracked_skipped` only where a file was left out)."""
        record = {"file": SOURCE_DIFF_NAME, "sha256": self.sha256, "size_bytes": self.size_bytes,
                  "cut": self.cut}
        if self.untracked_skipped:
            record["untracked_skipped"] = list(self.untracked_skipped)
        return record


@dataclass(frozen=True)
class CodeRecord:
    """What a run records of the code it ran: `revision` (env.json's `git_revision`), the uncommitted change
    of a dirty checkout (`diff`: a `SourceDiff`, or why it could not be read), and where pip installed the
    package from (`installed_from`) when it runs installed."""

    revision: str
    diff: SourceDiff | str | None = None
    installed_from: dict[str, Any] | None = None

    def source_diff(self) -> dict[str, Any] | None:
        """env.json's `source_diff`: None for a clean checkout or an installed package."""
        if isinstance(self.diff, str):
            return {"error": self.diff}
        return None if self.diff is None else self.diff.record()


def _git_env() -> dict[str, str]:
    # Git's own variables are left out: `GIT_DIR` would name another repository.
    return {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}


def _git_command(root: Path, *args: str) -> list[str]:
    # safe.directory: not an enclosing repository's folder, its top is another folder. core.quotePath: a
    # name's bytes past ASCII quoted in the diff's headers as by default (`DIFF_ARGS`), whatever the user set.
    return ["git", "-c", f"safe.directory={root.resolve()}", "-c", "core.quotePath=true", *args]


def _read_checkout(root: Path, with_diff: bool) -> CodeRecord:
    """The checkout whose top folder is `root`: its commit (`+dirty`) and, with `with_diff`, the change."""
    env = _git_env()

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(_git_command(root, *args), cwd=root, env=env, capture_output=True,
                              timeout=GIT_TIMEOUT_S)

    try:
        found = git("rev-parse", "--show-toplevel", "HEAD")
        lines = os.fsdecode(found.stdout).split("\n")
        if found.returncode != 0 or len(lines) < 2 or Path(lines[0]).resolve() != root.resolve():
            return CodeRecord("unknown")
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        # -z: names as they are (spaces, newlines, bytes that are no UTF-8); sorted: the diff's order is fixed
        listed = git("ls-files", "--others", "--exclude-standard", "-z", "--", *UNTRACKED_FOLDERS)
        untracked = sorted(name for name in listed.stdout.split(b"\0") if name and listed.returncode == 0)
    except (OSError, subprocess.SubprocessError):
        return CodeRecord("unknown")
    commit = lines[1].strip()
    if not dirty and not untracked:
        return CodeRecord(commit)
    return CodeRecord(commit + "+dirty", _read_diff(root, commit, env, untracked) if with_diff else None)


class _Stream:
    """A diff read in parts as git writes it: its first `MAX_DIFF_BYTES` kept, the whole hashed, counted."""

    def __init__(self) -> None:
        self.digest, self.kept, self.size = hashlib.sha256(), bytearray(), 0

    def add(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        if len(self.kept) < MAX_DIFF_BYTES:
            self.kept += chunk[:MAX_DIFF_BYTES - len(self.kept)]


def _read_diff(root: Path, commit: str, env: dict[str, str], untracked: list[bytes]) -> SourceDiff | str:
    """The checkout's tracked files against `commit` (`git diff HEAD`, HEAD as read with the status: a commit
    made meanwhile changes neither), then each of `untracked` (paths from the top, sorted) as a new file's
    patch (`git diff --no-index /dev/null PATH`, headers `a/PATH b/PATH` as `git apply` takes them), read as
    one stream within `DIFF_TIMEOUT_S`: its first `MAX_DIFF_BYTES` kept, the whole hashed (a changed data
    file a GB long costs no GB of memory); or why it could not be read. Symbolic links, folders (a nested
    repository) and files over `MAX_UNTRACKED_FILE_BYTES` are left out, each named in `untracked_skipped`:
    git would diff a link to a folder as that folder, and hold a large file whole."""
    diff, skipped = _Stream(), []
    deadline = time.monotonic() + DIFF_TIMEOUT_S
    code = _git_into(diff, root, env, [*DIFF_ARGS, commit, "--"], deadline)
    if code != 0:
        return code if isinstance(code, str) else f"git diff failed (exit {code})"
    for path in untracked:
        left_out = _left_out(root, path, deadline)
        if left_out is not None:
            skipped.append(left_out)
            continue
        before = diff.size
        name = os.fsdecode(path)  # the same bytes again, as git's argument
        code = _git_into(diff, root, env, [*DIFF_ARGS, "--no-index", "--", "/dev/null", name], deadline)
        if isinstance(code, str):
            return code
        # 1: a difference, as from /dev/null there always is; git says some errors with 1 too, and no patch
        if code != 1 or diff.size == before:
            return f"git diff of untracked {_shown(path)} failed (exit {code})"
    return SourceDiff(bytes(diff.kept), diff.digest.hexdigest(), diff.size, tuple(skipped))


def _git_into(diff: _Stream, root: Path, env: dict[str, str], args: list[str], deadline: float) -> int | str:
    """Run git with `args` at `root`, its output added to `diff`: its exit status, or why it has none (it did
    not run, or ran past `deadline`, the whole diff's, and was killed)."""
    try:
        proc = subprocess.Popen(_git_command(root, *args), cwd=root, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except OSError as exc:
        return f"git diff did not run ({exc.strerror or exc})"
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(max(deadline - time.monotonic(), 0), stop)
    timer.start()
    try:
        assert proc.stdout is not None
        while chunk := proc.stdout.read(1 << 16):
            diff.add(chunk)
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return f"git diff took over {DIFF_TIMEOUT_S} s" if timed_out.is_set() else code


def _shown(path: bytes) -> str:
    """A path from git as env.json shows it: bytes that are no UTF-8 as `\\xff`."""
    return path.decode("utf-8", "backslashreplace")


def _left_out(root: Path, path: bytes, deadline: float) -> dict[str, Any] | None:
    """Why the untracked file `root/path` is not diffed, None where it is: `SourceDiff.untracked_skipped`.
    A file over the limit is recorded by its size and sha256, hashed until `deadline` (the whole diff's):
    one many GB long is recorded by its size alone, not hashed past it."""
    full = os.path.join(os.fsencode(root), path)
    record: dict[str, Any] = {"path": _shown(path)}
    try:
        found = os.lstat(full)
        if stat.S_ISLNK(found.st_mode):
            return {**record, "reason": "a symbolic link", "target": _shown(os.readlink(full))}
        if not stat.S_ISREG(found.st_mode):
            return {**record, "reason": "not a file (a folder git lists whole: a nested repository)"}
        if found.st_size <= MAX_UNTRACKED_FILE_BYTES:
            return None
        digest = hashlib.sha256()
        with open(full, "rb") as fh:
            while chunk := fh.read(1 << 20):
                if time.monotonic() > deadline:
                    return {**record, "reason": f"over {MAX_UNTRACKED_FILE_BYTES} bytes, not hashed within "
                                                f"{DIFF_TIMEOUT_S} s", "size_bytes": found.st_size}
                digest.update(chunk)
    except OSError as exc:
        return {**record, "reason": f"not read ({exc.strerror or exc})"}
    return {**record, "reason": f"over {MAX_UNTRACKED_FILE_BYTES} bytes", "size_bytes": found.st_size,
            "sha256": digest.hexdigest()}


def git_revision(root: Path = REPO_ROOT) -> str:
    """The commit of the source checkout at `root` (with `+dirty`), or `unknown` where it is none.

    Only a repository whose top folder is `root` is the source: an installed package's folder is often
    inside another repository (a virtual environment in a project's folder), whose commit git would give.
    Git's own variables are left out of its environment: `GIT_DIR` would name another repository too.
    A checkout owned by another user (a lab's shared one, a container's root over a mounted folder) is
    trusted at `root` alone (`safe.directory`): git refused it as "dubious ownership", so its runs recorded
    `unknown`, yet this process runs that checkout's code already.
    """
    return _read_checkout(root, with_diff=False).revision


def installed_from(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """Where pip installed the medseg-bench whose package is `root/medseg_bench` from: its `direct_url.json`
    (PEP 610) as `{"url", "vcs", "commit_id", "requested_revision", "editable", "archive_hash"}`, the keys it
    has; None for a wheel from a registry (pip writes none) or where no such installation is this code.

    The installed distribution counts only where its files are the ones this process runs (an editable one:
    where its folder is `root`): a copy run from elsewhere, with a `git+URL` installation in the environment
    beside it, is not that commit. A URL's user and password are left out: env.json is shared with results.
    """
    try:
        dist = metadata.distribution("medseg-bench")
        data = json.loads(dist.read_text("direct_url.json") or "null")
    except (metadata.PackageNotFoundError, OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return None
    editable = _field(data, "dir_info").get("editable") is True
    url = urlsplit(data["url"])
    if editable:
        runs_this = url.scheme == "file" and Path(url2pathname(url.path)).resolve() == root.resolve()
    else:
        installed = Path(str(dist.locate_file("medseg_bench/__init__.py")))
        runs_this = installed.resolve() == (root / "medseg_bench" / "__init__.py").resolve()
    if not runs_this:
        return None
    record: dict[str, Any] = {"url": urlunsplit(url._replace(netloc=url.netloc.rpartition("@")[2]))}
    vcs = _field(data, "vcs_info")
    record.update({key: vcs[key] for key in ("vcs", "commit_id", "requested_revision")
                   if isinstance(vcs.get(key), str)})
    if editable:
        record["editable"] = True
    archive = _field(data, "archive_info")
    if isinstance(archive.get("hash"), str):
        record["archive_hash"] = archive["hash"]
    return record


def _field(data: dict[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` where it is an object, else {}."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def read_code(root: Path = REPO_ROOT) -> CodeRecord:
    """The code this process runs, read now: the checkout at `root` (its commit, and the uncommitted change of
    a dirty one, in the same moment), else the commit pip installed it from (`installed_from`: a `git+URL`
    installation's `commit_id`), else `unknown` (a released wheel: `versions` names it)."""
    checkout = _read_checkout(root, with_diff=True)
    if checkout.revision != "unknown":
        return checkout
    source = installed_from(root)
    commit = str((source or {}).get("commit_id", ""))
    from_git = (source or {}).get("vcs") == "git" and _COMMIT.fullmatch(commit) is not None
    return CodeRecord(commit if from_git else "unknown", None, source)


_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256 object names


@functools.cache
def code_record() -> CodeRecord:
    """`read_code()` of the code this process runs, read once, when its first run starts (the modules a run
    uses are imported by then): a commit or an edit made while a sweep goes on is not what its later runs
    ran. The revision and the diff are cached together, so every run's `source.diff` is its revision's."""
    return read_code()


def code_revision() -> str:
    """`code_record()`'s revision: env.json's `git_revision`."""
    return code_record().revision


def write_environment(folder: Path, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `env` (`environment()` when None: the attempt's own, as its `start`/`resume` event recorded it)
    to `folder/env.json`, and a dirty checkout's change to `folder/source.diff` (first: env.json names it; an
    earlier attempt's is removed where this one's code has none); returns it."""
    env = environment() if env is None else env
    diff = code_record().diff
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(diff, SourceDiff):
        with atomic_binary(folder / SOURCE_DIFF_NAME) as fh:
            fh.write(diff.text)
    else:
        (folder / SOURCE_DIFF_NAME).unlink(missing_ok=True)
    write_json_atomic(folder / "env.json", env)
    return env


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
ATTEMPT_FIELDS = ("git_revision", "source_diff", "versions", "python", "cpu", "cpu_capability",
                  "isa_limits", "torch_threads", "gpu")


def attempt_record(env: dict[str, Any]) -> dict[str, Any]:
    """The fields of `environment()` an attempt's event records (`ATTEMPT_FIELDS`)."""
    return {key: env.get(key) for key in ATTEMPT_FIELDS}


def environment() -> dict[str, Any]:
    """env.json's fields (`write_environment` writes it, with `source.diff`)."""
    import torch

    code = code_record()
    memory = usable_memory()

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
        "git_revision": code.revision,
        "source_diff": code.source_diff(),  # the change of a dirty checkout, in source.diff beside env.json
        "installed_from": code.installed_from,
        "cpu_count": os.cpu_count(),
        # The CPU and the instruction set torch's kernels use (oneDNN's convolutions pick theirs from the same
        # CPU unless an ISA_LIMITS variable caps it): floating-point results differ between instruction sets
        # with the same packages (the README, "Training").
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_limits": {name: os.environ[name] for name in ISA_LIMITS if name in os.environ},
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # The memory the batch and image guards held the run to: a container's or SLURM job's limit, where
        # the kernel kills the process, or the machine's (`checks.usable_memory`)
        "memory_limit_bytes": memory.limit_bytes if memory else None,
        "memory_limit": memory.named if memory else None,
    }
