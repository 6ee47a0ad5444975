"""`provenance.py`: what a run records of where its numbers came from (CPU, instruction-set caps, package
versions, the checkout's git revision, read once per process)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import torch

from medseg_bench.provenance import cpu_model, environment, git_revision


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


def test_runs_record_the_revision_their_process_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg_bench.provenance as provenance

    revisions = iter(["aaa111", "bbb222+dirty"])  # a commit made while a sweep goes on
    monkeypatch.setattr(provenance, "git_revision", lambda: next(revisions))
    provenance.code_revision.cache_clear()
    try:
        assert [provenance.environment()["git_revision"] for _ in range(2)] == ["aaa111", "aaa111"]
    finally:
        provenance.code_revision.cache_clear()


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
    inside = checkout / "site-packages"  # still never an enclosing repository's commit
    inside.mkdir()
    assert git_revision(inside) == "unknown"
