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
import time
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


def _git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=checkout, check=True, capture_output=True, text=True).stdout


def _files(top: Path, *folders: str) -> dict[bytes, bytes]:
    """The files (and links, as their targets) in `folders` of `top`, by their path's bytes."""
    found = {}
    for folder in folders:
        for path in (top / folder).rglob("*"):
            if path.is_symlink():
                found[os.fsencode(path.relative_to(top))] = b"-> " + os.fsencode(os.readlink(path))
            elif path.is_file():
                found[os.fsencode(path.relative_to(top))] = path.read_bytes()
    return found


def _package_checkout(checkout: Path) -> str:
    """A checkout laid out as medseg-bench's: its package, its tasks, a .gitignore; the commit."""
    (checkout / "medseg_bench" / "models").mkdir(parents=True)
    (checkout / "medseg_bench" / "__init__.py").write_text("")
    (checkout / "medseg_bench" / "models" / "__init__.py").write_text("from . import unet\n")
    (checkout / "medseg_bench" / "models" / "unet.py").write_text("depth = 4\n")
    (checkout / "tasks").mkdir()
    (checkout / "tasks" / "Task01_BrainTumour.yaml").write_text("name: Task01_BrainTumour\n")
    (checkout / ".gitignore").write_text("*.ckpt\n__pycache__/\n")
    return _commit_all(checkout)


def test_untracked_code_and_tasks_are_in_the_change_a_run_records(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A new module that an edited tracked file imports, a new task file: the recorded commit and source.diff
    # did not give the code the run ran, and a checkout whose only change was a new file recorded it clean.
    checkout = tmp_path / "checkout"
    head = _package_checkout(checkout)
    (tmp_path / "home").mkdir()  # a user's configuration changes no byte of it, new files' patches included
    (tmp_path / "home" / ".gitconfig").write_text("[color]\n\tui = always\n[diff]\n\tnoprefix = true\n"
                                                  "\tmnemonicPrefix = true\n[core]\n\tquotePath = false\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    models = checkout / "medseg_bench" / "models"
    (models / "my_arch.py").write_text("depth = 5\n")  # untracked, nothing else changed
    assert git_revision(checkout) == head + "+dirty"
    only_new = read_code(checkout)
    assert only_new.revision == head + "+dirty" and isinstance(only_new.diff, SourceDiff)
    new_file = b"medseg_bench/models/my_arch.py"
    assert only_new.diff.text.startswith(b"diff --git a/%s b/%s\nnew file mode 100644\nindex 0000000000" % (
        new_file, new_file))  # as `git apply` takes a new file
    assert b"--- /dev/null\n+++ b/%s\n@@ -0,0 +1 @@\n+depth = 5\n" % new_file in only_new.diff.text

    (models / "__init__.py").write_text("from . import my_arch, unet\n")  # the tracked change importing it
    (models / "my_arch_weights.bin").write_bytes(bytes(range(256)) * 3)  # binary, as git apply takes it
    (models / "empty.py").write_text("")
    (models / "run.sh").write_text("#!/bin/sh\n")
    (models / "run.sh").chmod(0o755)
    (checkout / "tasks" / "Task99_Mine.yaml").write_text("name: Task99_Mine\n")
    (checkout / "tasks" / "new folder").mkdir()
    (checkout / "tasks" / "new folder" / "a task.yaml").write_text("name: spaces\n")
    (checkout / "tasks" / "two\nlines.yaml").write_text("name: newline\n")
    with open(os.path.join(os.fsencode(checkout / "tasks"), b"latin-1 \xe9t\xe9.yaml"), "wb") as fh:
        fh.write(b"name: no UTF-8 name\n")
    (models / "best.ckpt").write_bytes(b"ignored: .gitignore")  # neither ignored files
    (models / "__pycache__").mkdir()
    (models / "__pycache__" / "my_arch.cpython-311.pyc").write_bytes(b"\x00ignored")
    (checkout / "scratch.py").write_text("untracked, outside the package and tasks\n")  # nor files elsewhere
    (checkout / "notebooks").mkdir()
    (checkout / "notebooks" / "try.py").write_text("import medseg_bench\n")

    code, again = read_code(checkout), read_code(checkout)
    assert isinstance(code.diff, SourceDiff) and code == again  # the same bytes and sha256 at each read
    assert code.diff.sha256 == hashlib.sha256(code.diff.text).hexdigest() != only_new.diff.sha256
    assert code.source_diff() == {"file": SOURCE_DIFF_NAME, "sha256": code.diff.sha256,
                                  "size_bytes": len(code.diff.text), "cut": False}
    for absent in (b"best.ckpt", b"__pycache__", b"scratch.py", b"notebooks", b"\x1b["):
        assert absent not in code.diff.text
    # tracked first, then the new files in their paths' order, named as git quotes them
    headers = [line for line in code.diff.text.split(b"\n") if line.startswith(b"diff --git ")]
    assert headers == [b"diff --git a/" + path + b" b/" + path for path in (
        b"medseg_bench/models/__init__.py", b"medseg_bench/models/empty.py", new_file,
        b"medseg_bench/models/my_arch_weights.bin", b"medseg_bench/models/run.sh", b"tasks/Task99_Mine.yaml")
    ] + [b'diff --git "a/tasks/latin-1 \\351t\\351.yaml" "b/tasks/latin-1 \\351t\\351.yaml"',
         b"diff --git a/tasks/new folder/a task.yaml b/tasks/new folder/a task.yaml",
         b'diff --git "a/tasks/two\\nlines.yaml" "b/tasks/two\\nlines.yaml"']

    copy = tmp_path / "copy"
    subprocess.run(["git", "clone", "-q", str(checkout), str(copy)], check=True)
    _git(copy, "checkout", "-q", head)
    (tmp_path / SOURCE_DIFF_NAME).write_bytes(code.diff.text)
    _git(copy, "apply", str(tmp_path / SOURCE_DIFF_NAME))
    recorded = _files(checkout, "medseg_bench", "tasks")
    del recorded[b"medseg_bench/models/best.ckpt"], recorded[b"medseg_bench/models/__pycache__/"
                                                                 b"my_arch.cpython-311.pyc"]
    assert _files(copy, "medseg_bench", "tasks") == recorded  # byte for byte
    assert os.stat(copy / "medseg_bench" / "models" / "run.sh").st_mode & 0o111
    assert not (copy / "scratch.py").exists() and not (copy / "notebooks").exists()


def test_untracked_files_ignored_or_elsewhere_leave_a_checkout_clean(tmp_path: Path) -> None:
    head = _package_checkout(tmp_path)
    (tmp_path / "medseg_bench" / "best.ckpt").write_bytes(b"\x00" * 100)
    (tmp_path / "scratch.py").write_text("print(1)\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text("{}\n")
    assert git_revision(tmp_path) == head and read_code(tmp_path) == CodeRecord(head)


def test_untracked_links_folders_and_large_files_are_named_not_diffed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # git diffs a link to a folder as that folder, and holds a large file whole: env.json names them instead
    head = _package_checkout(tmp_path)
    package = tmp_path / "medseg_bench"
    (package / "models_link").symlink_to("models")
    (package / "unet_link.py").symlink_to("models/unet.py")
    (package / "vendored").mkdir()
    _git(package / "vendored", "init", "-q")  # a repository of its own: git lists its folder
    (package / "vendored" / "lib.py").write_text("x = 1\n")
    (package / "weights.bin").write_bytes(b"\x01" * 101)
    (package / "small.py").write_text("y = 2\n")
    monkeypatch.setattr(provenance, "MAX_UNTRACKED_FILE_BYTES", 100)
    code = read_code(tmp_path)
    assert code.revision == head + "+dirty" and isinstance(code.diff, SourceDiff)
    assert code.diff.untracked_skipped == (
        {"path": "medseg_bench/models_link", "reason": "a symbolic link", "target": "models"},
        {"path": "medseg_bench/unet_link.py", "reason": "a symbolic link", "target": "models/unet.py"},
        {"path": "medseg_bench/vendored/",
         "reason": "not a file (a folder git lists whole: a nested repository)"},
        {"path": "medseg_bench/weights.bin", "reason": "over 100 bytes", "size_bytes": 101,
         "sha256": hashlib.sha256(b"\x01" * 101).hexdigest()})
    assert (code.source_diff() or {})["untracked_skipped"] == list(code.diff.untracked_skipped)  # env.json's
    headers = [line for line in code.diff.text.split(b"\n") if line.startswith(b"diff --git ")]
    assert headers == [b"diff --git a/medseg_bench/small.py b/medseg_bench/small.py"]
    # git's no patch for a file it could not read is said so, never an empty part of the diff
    monkeypatch.setattr(provenance, "_left_out", lambda root, path, deadline: None)
    assert read_code(tmp_path).diff == "git diff of untracked medseg_bench/models_link failed (exit 1)"
    monkeypatch.setattr(provenance, "DIFF_TIMEOUT_S", 0)  # one limit for the whole diff
    assert read_code(tmp_path).diff == "git diff took over 0 s"


def test_a_large_untracked_file_is_hashed_within_the_diffs_time(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # one of many GB was hashed whole, however long that took, past the 30 s the whole diff is given
    big = tmp_path / "weights.bin"
    big.write_bytes(b"\x01" * (3 << 20))
    monkeypatch.setattr(provenance, "MAX_UNTRACKED_FILE_BYTES", 100)
    in_time = provenance._left_out(tmp_path, b"weights.bin", time.monotonic() + 60)
    assert in_time == {"path": "weights.bin", "reason": "over 100 bytes", "size_bytes": 3 << 20,
                       "sha256": hashlib.sha256(big.read_bytes()).hexdigest()}
    late = provenance._left_out(tmp_path, b"weights.bin", time.monotonic() - 1)
    assert late == {"path": "weights.bin", "reason": f"over 100 bytes, not hashed within "
                                                     f"{provenance.DIFF_TIMEOUT_S} s", "size_bytes": 3 << 20}


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
