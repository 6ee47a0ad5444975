"""What a value read back from a JSON file the project wrote must be: the one place that says what a whole
number, a list of sizes or a spacing is, and how a bad value is shown in a one-line error."""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

NO_MEMORY_LIMIT_BYTES = 2**62  # cgroup v1 writes "no limit" as 2**63 less a page; any value past this is none
MAX_SIZE = 2**31 - 1  # a patch side or batch past it is a typo (1e300 is a whole number too)
MAX_COUNT = 2**63 - 1  # the largest int64, what the results index holds: epochs or iterations past it
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: a learning rate past it overflows the step
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a learning rate below it is 0 in a step


def shown(value: object, limit: int = 60) -> str:
    """`value` as JSON (a tuple as a list), cut to `limit` characters."""
    text = json.dumps(list(value) if isinstance(value, tuple) else value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_whole(value: object, least: int = 0) -> bool:
    """An int (not a bool, not 2.0) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def are_whole(value: object, count: int | None = None, least: int = 0) -> bool:
    """A non-empty list of `count` (any number, if None) ints of at least `least` each."""
    return (isinstance(value, list) and bool(value) and (count is None or len(value) == count)
            and all(is_whole(v, least) for v in value))


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_amount(value: object) -> bool:
    """A finite number of at least 0 (a time, a size): not NaN or inf, which JSON files may hold."""
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def is_spacing(value: object) -> bool:
    """Three positive finite numbers (mm)."""
    return isinstance(value, list) and len(value) == 3 and all(
        is_number(v) and math.isfinite(v) and v > 0 for v in value)


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class MemoryLimit:
    """A bound on the memory this process may use: `limit_bytes`, and what sets it (`kind`, `origin`), of
    which the process held `held_bytes` already when it was read (`usable_memory`): what is left for a case is
    `available_bytes`.

    Most limits are shared: the machine's memory and a cgroup's bound this process and every worker it starts
    together. `ulimit -v` (`per_process`) bounds each process alone (its workers inherit it, each its own):
    it bounds what one case may need, not how many worker processes may each hold one; `shared` is then the
    least limit they do share, which does (None where none is known).

    What a process holds of a limit: of `ulimit -v`, its whole address space (VmSize: the interpreter, numpy,
    SimpleITK's libraries; torch's mappings, about 5 GiB, in a process that imported it), which the limit
    bounds whether touched or not; of a shared limit, its resident memory (VmRSS; not the cgroup's whole
    usage, which counts reclaimable page cache and other processes). A check made in a worker process reads
    its own; one made in the parent for its pool's workers counts the parent's, a fair upper estimate of a
    spawned worker's that does not import torch (the parent's libraries and more)."""

    limit_bytes: int
    kind: str  # "the machine's memory", "the container's or job's memory limit", ...
    origin: str = ""  # the file or setting it was read from: "cgroup memory.max", "RLIMIT_AS"
    per_process: bool = False
    shared: MemoryLimit | None = None
    held_bytes: int = 0  # of it held by the process already (VmSize of `ulimit -v`, else VmRSS); 0: not known

    @property
    def available_bytes(self) -> int:
        """What is left of the limit for a case: `limit_bytes` less what the process holds (at least 0). The
        one place a limit becomes the bytes a check holds a need to."""
        return max(0, self.limit_bytes - self.held_bytes)

    @property
    def shared_bytes(self) -> int | None:
        """What this process and the worker processes it starts may use together: `available_bytes` of a
        shared limit, `shared`'s of a per-process one (None where none is known). Threads share their
        process's memory, a per-process limit too: `available_bytes` bounds them together."""
        if not self.per_process:
            return self.available_bytes
        return self.shared.available_bytes if self.shared is not None else None

    @property
    def named(self) -> str:
        """What sets it, without the number: "the container's or job's memory limit, cgroup memory.max"."""
        return f"{self.kind}, {self.origin}" if self.origin else self.kind

    @property
    def accounted(self) -> str:
        """`named`, with the limit and what the process held of it where it held some: "the process's
        address-space limit, ulimit -v, RLIMIT_AS: 2.86 GiB, 1.25 GiB of it held already"."""
        if not self.held_bytes:
            return self.named
        return f"{self.named}: {self.limit_bytes / 2**30:.3g} GiB, {self._held_text}"

    @property
    def room(self) -> str:
        """What a need is held to, for a message: "the 1.61 GiB this process may use (the process's
        address-space limit, ulimit -v, RLIMIT_AS: 2.86 GiB, 1.25 GiB of it held already)"."""
        return f"the {self.available_bytes / 2**30:.3g} GiB this process may use ({self.accounted})"

    @property
    def _held_text(self) -> str:
        return f"{self.held_bytes / 2**30:.3g} GiB of it held already"

    def __str__(self) -> str:
        """What sets it, with its size: "the container's or job's memory limit (cgroup memory.max, 8 GiB)",
        and what the process held of it where it held some ("..., 8 GiB, 0.3 GiB of it held already)")."""
        amount = f"{self.limit_bytes / 2**30:.4g} GiB" + (f", {self._held_text}" if self.held_bytes else "")
        return f"{self.kind} ({self.origin}, {amount})" if self.origin else f"{self.kind} ({amount})"


def release_freed_memory() -> None:
    """Hand back to the system what this process freed but its C allocator kept (glibc's `malloc_trim(0)`,
    after a garbage collection), so that what it holds (`MemoryLimit.held_bytes`: VmRSS) is what it uses.
    After training on Task04_Hippocampus a sweep held 1758 MiB, 1274 after this, with a 2D U-Net, and 1191,
    975 after it, with a 3D U-Net (`bench/held_memory.py`): its evaluation, which counts what the process
    holds against its limit, has the difference to spare. Nothing more than the collection where the C
    library has no such call (musl, macOS)."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)


def usable_memory(root: Path = Path("/")) -> MemoryLimit | None:
    """The memory this process may use: the least of the machine's physical memory, its cgroup's limit (a
    container's, a Kubernetes pod's, a SLURM job's `--mem`) and its address-space limit (`ulimit -v`); None
    where none is known. `root` stands for `/` (tests build a fake `/proc` and `/sys` under it).

    Past a cgroup's limit the kernel kills the process, far below the machine's memory: a sweep killed so
    loses its last lines and its run shows as pending. A file that cannot be read, or holds anything but a
    number, counts as no limit: never an exception. Where the address-space limit leaves the least, it carries
    the least of the others as its `shared` limit (it bounds each process alone, they all of them). Each
    carries what the process holds of it now (`MemoryLimit.held_bytes`: /proc/self/status's VmSize of the
    address-space limit, VmRSS of a shared one), read at each call: a worker process's check counts its
    own."""
    limits = [limit for limit in (_physical(), _cgroup_limit(root)) if limit]
    shared = min(limits, key=lambda limit: limit.limit_bytes) if limits else None
    held = _held_bytes(root)
    if shared is not None:
        shared = replace(shared, held_bytes=held.get("VmRSS", 0))
    each = _address_space_limit()
    if each is not None:
        # the least by what is left: torch's 5 GiB of mappings count against `ulimit -v` alone
        each = replace(each, shared=shared, held_bytes=held.get("VmSize", 0))
        if shared is None or each.available_bytes < shared.available_bytes:
            return each
    return shared


def _held_bytes(root: Path) -> dict[str, int]:
    """What this process holds, from /proc/self/status under `root`: its address space ("VmSize") and
    resident memory ("VmRSS"), in bytes; a field missing or odd (not Linux, no /proc) is left out: held 0."""
    held = {}
    for line in _read_small(root / "proc/self/status", 1 << 16).splitlines():
        name, _, value = line.partition(":")
        amount, _, unit = value.strip().partition(" ")
        if name in ("VmSize", "VmRSS") and amount.isdigit() and amount.isascii() and unit == "kB":
            held[name] = int(amount) * 1024
    return held


def _physical() -> MemoryLimit | None:
    memory = machine_memory()
    return MemoryLimit(memory, "the machine's memory") if memory and memory > 0 else None


def _cgroup_limit(root: Path) -> MemoryLimit | None:
    """The smallest memory limit of this process's cgroup and its ancestors: cgroup v2's `memory.max` (the
    unified hierarchy, `0::PATH` in /proc/self/cgroup) and cgroup v1's `memory.limit_in_bytes` (the memory
    controller's `N:memory:PATH`); both where a machine mounts both (hybrid). Each is read where
    /proc/self/mountinfo says its hierarchy is mounted (`_cgroup_mounts`: v2 beside v1 at
    /sys/fs/cgroup/unified, v1's memory controller at /cgroup/memory or with cpu at
    /sys/fs/cgroup/cpu,memory), PATH taken below the mount's own root (a container's cgroup mounted as the
    mount point); at the usual mount point where mountinfo names no mount of the hierarchy that holds
    PATH."""
    mounts = _cgroup_mounts(root)
    found: list[MemoryLimit] = []
    for line in _read_small(root / "proc/self/cgroup", 1 << 16).splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            kind, usual, name = "cgroup2", root / "sys/fs/cgroup", "memory.max"
        elif "memory" in controllers.split(","):
            kind, usual, name = "memory", root / "sys/fs/cgroup" / controllers, "memory.limit_in_bytes"
            if not usual.is_dir():
                usual = root / "sys/fs/cgroup/memory"  # "cpu,memory" mounted under one name
        else:
            continue
        places = [(point, below) for mount_kind, mount_root, point in mounts
                  if mount_kind == kind and (below := _path_below(path, mount_root)) is not None]
        for folder, below in places or [(usual, path)]:
            found.extend(MemoryLimit(limit_bytes, "the container's or job's memory limit", f"cgroup {name}")
                         for limit_bytes in _limits_along(folder, below, name))
    return min(found, key=lambda limit: limit.limit_bytes) if found else None


@functools.cache
def _cgroup_mounts(root: Path) -> tuple[tuple[str, str, Path], ...]:
    """The cgroup hierarchies /proc/self/mountinfo lists that may hold a memory limit, as (kind, the
    cgroup path mounted, where under `root`): "cgroup2" for v2's unified hierarchy, "memory" for a v1
    hierarchy with the memory controller; () where it cannot be read. A line is `ID PARENT MAJ:MIN ROOT
    MOUNT-POINT OPTIONS [TAGS...] - TYPE SOURCE SUPER-OPTIONS`, a space in a path written `\\040`.

    Parsed once per process and `root`: the mounts do not change under a running process (validation asked
    for them at each image it read, 0.1 ms each time), a cgroup's limit may, and its files are read at each
    call (`_limits_along`). A test that rewrites a fake tree's mountinfo calls `_cgroup_mounts.cache_clear()`.
    """
    mounts = []
    for line in _read_small(root / "proc/self/mountinfo", 1 << 22).splitlines():
        before, dash, after = line.partition(" - ")
        fields, described = before.split(), after.split()
        if not dash or len(fields) < 5 or len(described) < 3:
            continue
        kind = described[0]
        if kind == "cgroup" and "memory" in described[2].split(","):
            kind = "memory"
        elif kind != "cgroup2":
            continue
        point = _unescaped(fields[4])
        if not point.startswith("/") or ".." in point.split("/"):
            continue  # not a mount point the kernel writes: read nothing outside `root`
        mounts.append((kind, _unescaped(fields[3]), root / point.lstrip("/")))
    return tuple(mounts)


def _unescaped(field: str) -> str:
    """A mountinfo path with the kernel's octal escapes (`\\040` for a space) undone."""
    return re.sub(r"\\([0-7]{3})", lambda found: chr(int(found.group(1), 8)), field)


def _path_below(path: str, mount_root: str) -> str | None:
    """Cgroup `path` relative to `mount_root`, the cgroup a mount shows at its mount point ("/" for the whole
    hierarchy); None where `path` is not at or below it, or not a plain cgroup path ("/../x": a process
    outside its cgroup namespace's root)."""
    parts = [part for part in path.strip().split("/") if part]
    above = [part for part in mount_root.split("/") if part]
    if any(part in (".", "..") for part in parts + above) or parts[:len(above)] != above:
        return None
    return "/".join(parts[len(above):])


def _limits_along(folder: Path, path: str, name: str) -> list[int]:
    """The limits in `name` of cgroup `path` under `folder` and of each of its ancestors up to `folder`. At a
    usual mount point, whose root mountinfo did not give, a container's own cgroup is often mounted as
    `folder` itself, its path on the host not below it: the ancestors' files that do not exist count as no
    limit, `folder`'s own is read in any case."""
    parts = [part for part in path.strip().split("/") if part]
    if any(part in (".", "..") for part in parts):  # not a cgroup path: read nothing outside `folder`
        parts = []
    limits = []
    for depth in range(len(parts), -1, -1):
        limit_bytes = _limit_in(folder.joinpath(*parts[:depth]) / name)
        if limit_bytes is not None:
            limits.append(limit_bytes)
    return limits


def _limit_in(file: Path) -> int | None:
    """A cgroup limit file's bytes; None for "max", a value past `NO_MEMORY_LIMIT_BYTES`, or anything odd."""
    text = _read_small(file, 64).strip()
    if not text.isdigit() or not text.isascii():
        return None  # "max", missing, unreadable, garbage, negative
    value = int(text)
    return value if 0 < value < NO_MEMORY_LIMIT_BYTES else None


def _read_small(file: Path, most_bytes: int) -> str:
    """The first `most_bytes` of `file` as text; "" where it cannot be read."""
    try:
        with open(file, "rb") as handle:
            return handle.read(most_bytes).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def _address_space_limit() -> MemoryLimit | None:
    """`ulimit -v`: past it an allocation fails (MemoryError), it is not killed, but no batch fits past it."""
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, AttributeError, ValueError, OSError):  # not on Windows
        return None
    if soft == resource.RLIM_INFINITY or not 0 < soft < NO_MEMORY_LIMIT_BYTES:
        return None
    return MemoryLimit(soft, "the process's address-space limit", "ulimit -v, RLIMIT_AS", per_process=True)
