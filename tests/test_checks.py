"""checks.usable_memory: the memory this process may use, read from a fake /proc and /sys under tmp_path."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from medseg_bench import checks
from medseg_bench.checks import MemoryLimit, usable_memory

GIB = 2**30


@pytest.fixture(autouse=True)
def machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine of 64 GiB without an address-space limit, whatever the machine running the tests has."""
    monkeypatch.setattr(checks, "machine_memory", lambda: 64 * GIB)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _tree(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for name, text in files.items():
        path = root / "sys/fs/cgroup" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_without_a_cgroup_limit_the_machines_memory_applies(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/user.slice/session-1.scope\n", {
        "user.slice/session-1.scope/memory.max": "max\n", "user.slice/memory.max": "max\n"})
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")
    assert str(usable_memory(root)) == "the machine's memory (64 GiB)"
    assert usable_memory(tmp_path / "nothing") == MemoryLimit(64 * GIB, "the machine's memory")


def test_a_cgroup_v2_limit_is_the_smallest_of_the_cgroup_and_its_ancestors(tmp_path: Path) -> None:
    # A SLURM job's step sits below the job's cgroup, whose --mem is the smaller limit
    root = _tree(tmp_path, "0::/system.slice/slurmstepd.scope/job_7/step_0\n", {
        "system.slice/slurmstepd.scope/job_7/step_0/memory.max": str(32 * GIB),
        "system.slice/slurmstepd.scope/job_7/memory.max": str(8 * GIB) + "\n",
        "system.slice/slurmstepd.scope/memory.max": "max\n",
        "system.slice/memory.max": "max\n"})
    limit = usable_memory(root)
    assert limit == MemoryLimit(8 * GIB, "the container's or job's memory limit", "cgroup memory.max")
    assert str(limit) == "the container's or job's memory limit (cgroup memory.max, 8 GiB)"
    assert limit is not None and limit.named == "the container's or job's memory limit, cgroup memory.max"


def test_a_containers_own_cgroup_mounted_as_the_root_is_read(tmp_path: Path) -> None:
    # Docker without a cgroup namespace: /proc/self/cgroup names the host's path, /sys/fs/cgroup is the
    # container's own cgroup
    root = _tree(tmp_path, "0::/system.slice/docker-abc.scope\n", {"memory.max": f"{6 * GIB}\n"})
    assert usable_memory(root) == MemoryLimit(6 * GIB, "the container's or job's memory limit",
                                              "cgroup memory.max")


def test_a_cgroup_v1_limit_is_read_from_the_memory_controller(tmp_path: Path) -> None:
    unlimited = "9223372036854771712\n"  # what v1 writes for no limit
    root = _tree(tmp_path, "9:name=systemd:/\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n", {
        "memory/docker/abc/memory.limit_in_bytes": f"{12 * GIB}\n",
        "memory/docker/memory.limit_in_bytes": unlimited,
        "memory/memory.limit_in_bytes": unlimited,
        "cpu,cpuacct/docker/abc/memory.limit_in_bytes": "1\n"})  # not the memory controller's: not read
    assert usable_memory(root) == MemoryLimit(12 * GIB, "the container's or job's memory limit",
                                              "cgroup memory.limit_in_bytes")
    (root / "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes").write_text(unlimited)
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")


@pytest.mark.parametrize("content", ["max\n", "", "garbage\n", "-1\n", "0\n", "1.5e9\n", "\u0661\u0662\n",
                                     "\x00\xff", "99999999999999999999999999\n"])
def test_an_odd_or_unlimited_limit_file_means_no_limit(content: str, tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/job\n", {"job/memory.max": content})
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")


@pytest.mark.parametrize("cgroup", ["", "garbage", "0::", "0::/../../../etc\n", "\xff\xfe::/x", "::::::"])
def test_an_odd_proc_self_cgroup_means_no_limit_and_reads_nothing_outside(cgroup: str,
                                                                         tmp_path: Path) -> None:
    root = _tree(tmp_path, cgroup, {})
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/memory.max").write_text("1\n")  # where "0::/../../../etc" leads from /sys/fs/cgroup
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")


def test_unreadable_files_mean_no_limit(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/job\n", {})
    (root / "sys/fs/cgroup/job/memory.max").mkdir(parents=True)  # a folder, not a file: IsADirectoryError
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")
    (root / "proc/self/cgroup").unlink()
    (root / "proc/self/cgroup").mkdir()
    assert usable_memory(root) == MemoryLimit(64 * GIB, "the machine's memory")


def test_the_address_space_limit_applies_where_smaller(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path, "0::/job\n", {"job/memory.max": str(8 * GIB)})
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4 * GIB, resource.RLIM_INFINITY))
    assert str(usable_memory(root)) == "the process's address-space limit (ulimit -v, RLIMIT_AS, 4 GiB)"
    monkeypatch.setattr(resource, "getrlimit", lambda which: (16 * GIB, resource.RLIM_INFINITY))
    assert usable_memory(root) == MemoryLimit(8 * GIB, "the container's or job's memory limit",
                                              "cgroup memory.max")


def test_the_address_space_limit_bounds_each_process_and_carries_the_limit_they_share(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `ulimit -v 4G` in a job of 8 GiB: each worker may map 4 GiB, all of them together hold 8 GiB at most
    job = MemoryLimit(8 * GIB, "the container's or job's memory limit", "cgroup memory.max")
    root = _tree(tmp_path, "0::/job\n", {"job/memory.max": str(8 * GIB)})
    monkeypatch.setattr(resource, "getrlimit", lambda which: (4 * GIB, resource.RLIM_INFINITY))
    limit = usable_memory(root)
    assert limit == MemoryLimit(4 * GIB, "the process's address-space limit", "ulimit -v, RLIMIT_AS",
                                per_process=True, shared=job)
    assert limit.shared_bytes == 8 * GIB
    assert not job.per_process and job.shared_bytes == 8 * GIB
    monkeypatch.setattr(checks, "machine_memory", lambda: None)
    alone = usable_memory(tmp_path / "no cgroup")
    assert alone is not None and alone.per_process and alone.shared is None and alone.shared_bytes is None


def test_no_memory_known_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "machine_memory", lambda: None)
    assert usable_memory(tmp_path) is None


def test_this_machines_files_give_a_limit_no_larger_than_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real machine's memory and files
    limit = usable_memory()
    physical = checks.machine_memory()
    assert limit is not None and physical is not None and 0 < limit.limit_bytes <= physical
