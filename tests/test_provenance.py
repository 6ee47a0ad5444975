"""`provenance.py`: what a run records of where its numbers came from (CPU, instruction-set caps, package
versions, the checkout's git revision and uncommitted change, read once per process, or the commit pip
installed the package from)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch

import medseg_bench.provenance as provenance
from medseg_bench.provenance import (
    SOURCE_DIFF_NAME,
    CodeRecord,
    SourceDiff,
    cpu_model,
    environment,
    git_revision,
    read_code,
    write_environment,
)


def test_a_run_records_the_cpu_it_ran_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert cpu_model(str(info)) == "AMD EPYC (cpu family 25, model 17)"  # a VM's bare name; its generation
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # no model name (aarch64): platform's, if any
    assert cpu_model(str(info)) == (platform.processor() or "unknown")
    assert cpu_model(str(tmp_path / "none")) == (platform.processor() or "unknown")
    env = environment()
    for package in ("torch", "torchvision", "timm", "edt"):  # fcn, tu-* encoders, surface distances
        assert env["versions"][package] == metadata.version(package)
    assert env["cpu"] == cpu_model() and env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # caps oneDNN's convolutions: other float results
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert environment()["isa_limits"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_a_run_records_the_memory_it_was_held_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run killed in a container or a SLURM job left no trace of the limit that killed it
    from medseg_bench.checks import MemoryLimit, usable_memory

    limit = usable_memory()
    env = environment()
    assert env["memory_limit_bytes"] == (limit.limit_bytes if limit else None)
    assert env["memory_limit"] == (limit.named if limit else None)
    job = MemoryLimit(8 * 2**30, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(provenance, "usable_memory", lambda: job)
    env = environment()
    assert (env["memory_limit_bytes"], env["memory_limit"]) == (
        8 * 2**30, "the container's or job's memory limit, cgroup memory.max")
    monkeypatch.setattr(provenance, "usable_memory", lambda: None)
    assert environment()["memory_limit_bytes"] is None


def test_runs_record_the_revision_their_process_started_with(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # A commit, or another edit, made while a sweep goes on: every run records the code the first one ran,
    # its revision and its diff read together (a diff read later would not be that revision's change).
    first = CodeRecord("aaa111+dirty", SourceDiff(b"first change\n", "a" * 64, 13))
    second = CodeRecord("bbb222+dirty", SourceDiff(b"second change\n", "b" * 64, 14))
    records = iter([first, second])
    monkeypatch.setattr(provenance, "read_code", lambda: next(records))
    provenance.code_record.cache_clear()
    try:
        for run in ("run-1", "run-2"):
            env = write_environment(tmp_path / run)
            assert env["git_revision"] == "aaa111+dirty"
            assert env["source_diff"] == {"file": SOURCE_DIFF_NAME, "sha256": "a" * 64, "size_bytes": 13,
                                          "cut": False}
            assert json.loads((tmp_path / run / "env.json").read_text()) == env
            assert (tmp_path / run / SOURCE_DIFF_NAME).read_bytes() == b"first change\n"
    finally:
        provenance.code_record.cache_clear()


def test_a_run_of_clean_code_has_no_diff_not_even_an_earlier_attempts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # env.json and source.diff are the last attempt's: a resume from a clean checkout removes the diff
    (tmp_path / SOURCE_DIFF_NAME).write_bytes(b"an earlier attempt's change\n")
    monkeypatch.setattr(provenance, "read_code", lambda: CodeRecord("aaa111"))
    provenance.code_record.cache_clear()
    try:
        env = write_environment(tmp_path)
    finally:
        provenance.code_record.cache_clear()
    assert env["git_revision"] == "aaa111" and env["source_diff"] is None and env["installed_from"] is None
    assert not (tmp_path / SOURCE_DIFF_NAME).exists()


def test_env_json_is_the_record_the_attempt_took(tmp_path: Path) -> None:
    # the worker reads `environment()` once per attempt, for its `start`/`resume` event, and env.json is
    # written from that same record (read twice, the two could differ: another thread count, a memory limit)
    attempt = {**environment(), "torch_threads": 12345}
    assert write_environment(tmp_path, attempt) is attempt
    assert json.loads((tmp_path / "env.json").read_text()) == attempt


def test_git_revision_is_the_checkouts_own_never_an_enclosing_repositorys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "tracked.txt").write_text("a")
    git("add", "tracked.txt")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert git_revision(tmp_path) == head
    (tmp_path / "tracked.txt").write_text("b")
    assert git_revision(tmp_path) == head + "+dirty"
    # An installed package in a virtual environment inside another project's repository: not its source.
    site_packages = tmp_path / ".venv" / "lib" / "site-packages"
    site_packages.mkdir(parents=True)
    assert git_revision(site_packages) == "unknown"
    monkeypatch.setenv("GIT_DIR", str(tmp_path / ".git"))  # another repository, named by git's variable
    outside = tmp_path.parent / f"{tmp_path.name}-installed"
    outside.mkdir()
    assert git_revision(outside) == "unknown"
    assert git_revision(tmp_path / "no such folder") == "unknown"


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="chown to another user needs root")
def test_git_revision_of_a_checkout_another_user_owns(tmp_path: Path) -> None:
    """A shared checkout, or a container's root over a mounted one: git calls it "dubious ownership" and
    answers nothing, so its runs recorded `unknown`; it is the code this process runs, so its commit."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    run = functools.partial(subprocess.run, cwd=checkout, check=True, capture_output=True, text=True)
    run(["git", "init", "-q"])
    (checkout / "tracked.txt").write_text("a")
    run(["git", "add", "tracked.txt"])
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "first"])
    head = run(["git", "rev-parse", "HEAD"]).stdout.strip()
    for path in [checkout, *checkout.rglob("*")]:
        os.chown(path, 65534, 65534, follow_symlinks=False)  # nobody
    assert git_revision(checkout) == head
    (checkout / "tracked.txt").write_text("b")
    assert git_revision(checkout) == head + "+dirty"
    code = read_code(checkout)  # and its change, read by git under the same trust
    assert isinstance(code.diff, SourceDiff) and b"-a\n" in code.diff.text and b"+b\n" in code.diff.text
    inside = checkout / "site-packages"  # still never an enclosing repository's commit
    inside.mkdir()
    assert git_revision(inside) == "unknown"


def _commit_all(checkout: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=checkout,
                              check=True, capture_output=True, text=True).stdout.strip()

    if not (checkout / ".git").exists():
        git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "a commit")
    return git("rev-parse", "HEAD")


def test_a_dirty_checkout_records_its_change_to_be_recovered(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # `<commit>+dirty` alone: the code a run ran could not be recovered, nor two runs' changes told apart
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "model.py").write_text("depth = 4\n")
    (checkout / "weights.bin").write_bytes(bytes(range(256)))
    head = _commit_all(checkout)
    assert read_code(checkout) == CodeRecord(head)  # clean: no diff
    (checkout / "model.py").write_text("depth = 5\n")
    (checkout / "weights.bin").write_bytes(bytes(range(255, -1, -1)))  # binary: kept, as git apply takes it
    (checkout / "scratch.py").write_text("untracked, not the code a run imports\n")
    # a user's configuration changes no byte of it (colour, no a/ b/ prefixes, another algorithm)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".gitconfig").write_text(
        "[color]\n\tui = always\n[diff]\n\tnoprefix = true\n\talgorithm = patience\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))  # git's own variables are left out, as ever
    code = read_code(checkout)
    assert code.revision == head + "+dirty" and isinstance(code.diff, SourceDiff)
    assert b"-depth = 4\n+depth = 5\n" in code.diff.text and b"a/model.py" in code.diff.text
    assert b"scratch.py" not in code.diff.text and b"\x1b[" not in code.diff.text
    assert code.diff.sha256 == hashlib.sha256(code.diff.text).hexdigest()
    assert code.source_diff() == {"file": SOURCE_DIFF_NAME, "sha256": code.diff.sha256,
                                  "size_bytes": len(code.diff.text), "cut": False}
    # the recorded commit and source.diff give the code the run ran
    monkeypatch.delenv("GIT_DIR")
    copy = tmp_path / "copy"
    subprocess.run(["git", "clone", "-q", str(checkout), str(copy)], check=True)
    (copy / "source.diff").write_bytes(code.diff.text)
    subprocess.run(["git", "checkout", "-q", head], cwd=copy, check=True)
    subprocess.run(["git", "apply", "source.diff"], cwd=copy, check=True)
    assert (copy / "model.py").read_text() == "depth = 5\n"
    assert (copy / "weights.bin").read_bytes() == bytes(range(255, -1, -1))
    # another change, another sha256: runs with different uncommitted changes are told apart
    (checkout / "model.py").write_text("depth = 6\n")
    other = read_code(checkout)
    assert other.revision == code.revision and isinstance(other.diff, SourceDiff)
    assert other.diff.sha256 != code.diff.sha256


def test_a_diff_over_the_limit_is_cut_and_hashed_whole(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data.csv").write_text("0\n")
    _commit_all(tmp_path)
    (tmp_path / "data.csv").write_text("".join(f"{i}\n" for i in range(10_000)))  # a tracked file rewritten
    whole = read_code(tmp_path).diff
    assert isinstance(whole, SourceDiff) and not whole.cut
    monkeypatch.setattr(provenance, "MAX_DIFF_BYTES", 1000)
    cut = read_code(tmp_path).diff
    assert isinstance(cut, SourceDiff) and cut.cut and cut.text == whole.text[:1000]
    assert cut.sha256 == whole.sha256 == hashlib.sha256(whole.text).hexdigest()
    assert cut.size_bytes == len(whole.text) and cut.record()["cut"] is True


def test_a_diff_git_cannot_give_is_said_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model.py").write_text("a\n")
    head = _commit_all(tmp_path)
    (tmp_path / "model.py").write_text("b\n")
    monkeypatch.setattr(provenance, "DIFF_ARGS", ("diff", "--no-such-option"))
    code = read_code(tmp_path)
    assert code.revision == head + "+dirty"  # the revision is recorded all the same
    assert code.source_diff() == {"error": "git diff failed (exit 129)"}


def _installed(site_packages: Path, direct_url: dict[str, object] | None,
               monkeypatch: pytest.MonkeyPatch) -> None:
    """medseg-bench installed into `site_packages` as pip installs it, `direct_url.json` holding
    `direct_url` (none: a wheel from the registry); `importlib.metadata` finds that distribution."""
    (site_packages / "medseg_bench").mkdir(parents=True, exist_ok=True)
    (site_packages / "medseg_bench" / "__init__.py").write_text("")
    dist_info = site_packages / "medseg_bench-0.1.0.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: medseg-bench\nVersion: 0.1.0\n")
    (dist_info / "direct_url.json").unlink(missing_ok=True)
    if direct_url is not None:
        (dist_info / "direct_url.json").write_text(json.dumps(direct_url))
    found = metadata.PathDistribution(dist_info)
    monkeypatch.setattr(provenance.metadata, "distribution",
                        lambda name: found if name == "medseg-bench" else metadata.distribution(name))


def test_an_installation_from_git_records_its_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `pip install git+https://...@v1.2`: no checkout, but pip wrote the commit in direct_url.json (PEP 610);
    # the virtual environment inside a project's own repository, whose commit is not this code's
    (tmp_path / "project.txt").write_text("another project")
    _commit_all(tmp_path)
    site_packages = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    commit = "0123456789abcdef0123456789abcdef01234567"
    _installed(site_packages, {"url": "https://user:token@github.com/lab/medseg-bench.git",
                               "vcs_info": {"vcs": "git", "commit_id": commit, "requested_revision": "v1.2"}},
               monkeypatch)
    assert git_revision(site_packages) == "unknown"  # no checkout of its own
    code = read_code(site_packages)
    assert code == CodeRecord(commit, None, {"url": "https://github.com/lab/medseg-bench.git", "vcs": "git",
                                             "commit_id": commit, "requested_revision": "v1.2"})
    assert code.source_diff() is None  # pip installed the commit as it is
    # a copy of the package run from elsewhere (PYTHONPATH) is not that installation's commit
    elsewhere = tmp_path / "copy"
    (elsewhere / "medseg_bench").mkdir(parents=True)
    (elsewhere / "medseg_bench" / "__init__.py").write_text("")
    assert read_code(elsewhere) == CodeRecord("unknown")


def test_an_installation_without_a_commit_records_unknown(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    site_packages = tmp_path / "site-packages"
    _installed(site_packages, None, monkeypatch)  # a released wheel: its version is in `versions`
    assert read_code(site_packages) == CodeRecord("unknown")
    _installed(site_packages, {"url": "https://files.example/medseg_bench-0.1.0-py3-none-any.whl",
                               "archive_info": {"hash": "sha256=" + "c" * 64}}, monkeypatch)
    assert read_code(site_packages) == CodeRecord("unknown", None, {
        "url": "https://files.example/medseg_bench-0.1.0-py3-none-any.whl",
        "archive_hash": "sha256=" + "c" * 64})
    _installed(site_packages, {"url": "https://hg.example/medseg-bench",
                               "vcs_info": {"vcs": "hg", "commit_id": "0123abcd"}}, monkeypatch)
    assert read_code(site_packages).revision == "unknown"  # not a git commit: env.json's `git_revision`
    # an editable installation of a folder that is no git checkout: the folder is named, no commit
    source = tmp_path / "source"
    _installed(source, {"url": source.resolve().as_uri(), "dir_info": {"editable": True}}, monkeypatch)
    assert read_code(source) == CodeRecord("unknown", None, {"url": source.resolve().as_uri(),
                                                             "editable": True})
    assert read_code(site_packages) == CodeRecord("unknown")  # that editable installation is not this code
