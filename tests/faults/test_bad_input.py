"""Images of the wrong dimensionality or modality count, through the real CLI: one line naming the file and
the problem, a documented exit code, and nothing that was already finished (a fetched task, its cache, a
results folder with a finished run) touched."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_synthetic_task, write_image
from tests.faults.conftest import TASK, Ledger, check_done_once, run_cli, sweep_argv

pytestmark = pytest.mark.faults
MULTI = "Task01_BrainTumour"  # declared 4D, 4 modalities (FLAIR, T1w, t1gd, T2w)
BAD_CASE = "case_001"

# kind: (task, channels of the good cases, the bad image (C, Z, Y, X) or (Z, Y, X), the expected problem)
KINDS = {
    "3d image, 4d declared": (MULTI, 4, (12, 20, 20), "image is 3D, the task declares 4D"),
    "4d image, 3d declared": (TASK, 1, (4, 12, 20, 20), "image is 4D, the task declares 3D"),
    "3 of 4 modalities": (MULTI, 4, (3, 12, 20, 20), "image has 3 modalities, the task declares 4"),
}


def _snapshot(*roots: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(fault_home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data home with Task04 (fetched, cached) and a good synthetic Task01 fetched, and a results folder
    holding one finished run: what bad input must leave alone."""
    root = tmp_path_factory.mktemp("bad-input")
    home, results = root / "home", root / "results"
    shutil.copytree(fault_home, home)
    source = make_synthetic_task(root / "src" / MULTI, num_cases=3, channels=4)
    fetched = _cli(home, "fetch", MULTI, "--source", str(source))
    assert fetched.returncode == 0, fetched.stderr
    swept = _cli(home, *sweep_argv(results)[3:])
    assert swept.returncode == 0, swept.stdout + swept.stderr
    return home, results


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`medseg-bench ARGS` in a child, with MEDSEG_BENCH_HOME=home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MEDSEG_BENCH_HOME", str(home))
        patch.delenv("MEDSEG_BENCH_MIRROR", raising=False)
        return run_cli([sys.executable, "-m", "medseg_bench", *args])


def _bad_source(folder: Path, kind: str) -> Path:
    task, channels, shape, _ = KINDS[kind]
    source = make_synthetic_task(folder / task, num_cases=3, channels=channels)
    bad = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    write_image(source / "imagesTr" / f"{BAD_CASE}.nii.gz", bad)
    return source


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_input_is_one_line_and_touches_nothing_finished(finished: tuple[Path, Path], tmp_path: Path,
                                                            ledger: Ledger, kind: str) -> None:
    home, results = finished
    task, _, _, problem = KINDS[kind]
    before = _snapshot(home, results)
    source = _bad_source(tmp_path / "src", kind)
    bad_file = f"imagesTr/{BAD_CASE}.nii.gz"

    # fetch --strict: fatal, nothing kept
    data = tmp_path / "data"
    strict = _cli(home, "fetch", task, "--source", str(source), "--strict", "--data-dir", str(data))
    assert strict.returncode == 3, strict.stdout + strict.stderr
    assert strict.stderr.splitlines() == [
        f"error: {source}/{bad_file}: {problem} (--strict: nothing was kept)"]
    assert not data.exists() or sorted(p.name for p in data.iterdir()) == [f".{task}.fetch.lock"]

    # fetch without --strict: the case is excluded, named in one line where it now lives
    relaxed = _cli(home, "fetch", task, "--source", str(source), "--data-dir", str(data))
    assert relaxed.returncode == 0, relaxed.stderr
    assert f"warning: {data / task}/{bad_file}: {problem} (case excluded from training)" in \
        relaxed.stderr.splitlines()
    assert "2 usable training cases" in relaxed.stdout and "(1 excluded)" in relaxed.stdout

    # every case bad: nothing usable is an error even without --strict
    for image in (source / "imagesTr").iterdir():
        if image != source / bad_file:
            shutil.copy(source / bad_file, image)
    nothing = _cli(home, "fetch", task, "--source", str(source), "--data-dir", str(tmp_path / "data2"))
    assert nothing.returncode == 3, nothing.stderr
    assert nothing.stderr.splitlines() == [
        f"error: {source}/imagesTr/case_000.nii.gz: {problem} and 2 more problem(s) in 2 case(s) "
        "(no usable training case: nothing was kept)"]

    # a file of a fetched task replaced by a bad one (in a copy of the home): validate --strict names it
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    folder = copy / "data" / task
    replaced = folder / json.loads((folder / "dataset.json").read_text())["training"][1]["image"]
    shutil.copy(source / bad_file, replaced)
    checked = _cli(copy, "validate", task, "--strict")
    assert checked.returncode == 3, checked.stdout + checked.stderr
    assert checked.stderr.splitlines()[-1] == f"error: {replaced.resolve()}: {problem} (--strict)"
    assert _snapshot(copy / "data" / "preprocessed") == {
        copy / p.relative_to(home): b for p, b in before.items() if "preprocessed" in p.parts}

    # a bad source for a task that is already complete: nothing to do, nothing touched
    again = _cli(home, "fetch", task, "--source", str(source), "--strict")
    assert again.returncode == 0 and "already fetched and validated" in again.stdout
    ledger.injected += 4
    assert _snapshot(home, results) == before
    check_done_once(results, 1, ledger)
