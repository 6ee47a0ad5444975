"""`medseg-bench plan TASK`: print, re-size for a GPU or the CPU, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from tests.conftest import make_synthetic_task, write_task_file

runner = CliRunner()


def _fetched(home: Path, tmp_path: Path) -> Path:
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", shape=(24, 48, 40))
    write_task_file(home, "Task90_Synth")
    assert runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)]).exit_code == 0
    return home / "data" / "preprocessed" / "Task90_Synth"


def test_print_creates_fingerprint_and_plan(home: Path, tmp_path: Path) -> None:
    root = _fetched(home, tmp_path)
    result = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for text in (
        "target spacing",
        "1 x 1 x 1",
        "24 x 48 x 40",
        "per-case z-score",
        "24 x 48 x 40, batch",
        "class 2 (core)",
        "foreground intensity, MR0",
    ):
        assert text in result.output, text
    assert (root / "plan.json").is_file() and (root / "fingerprint.json").is_file()


def test_a_plan_is_shown_with_the_fingerprint_it_was_made_from(home: Path, tmp_path: Path) -> None:
    """A fingerprint.json of the earlier format is shown as it is (the plan's statistics come from it), not
    computed again just to print it; a plan made anew computes it again."""
    root = _fetched(home, tmp_path)
    assert runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"]).exit_code == 0
    fp = json.loads((root / "fingerprint.json").read_text())
    fp["format"] = 2  # which sampled every channel
    fp["foreground_intensity"][0] = {"channel": 0, "modality": "MR0", "mean": 1234.5, "std": 1.0,
                                     "p00_5": 0.0, "p99_5": 9.0}
    (root / "fingerprint.json").write_text(json.dumps(fp))
    shown = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"])
    assert shown.exit_code == 0 and "mean 1234" in shown.output
    assert json.loads((root / "fingerprint.json").read_text())["format"] == 2
    (root / "plan.json").unlink()
    remade = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"])
    assert remade.exit_code == 0 and "mean 1234" not in remade.output
    assert json.loads((root / "fingerprint.json").read_text())["format"] == 3
    assert "not sampled (z-scored per case" in remade.output


def test_resize_for_gpu_then_cpu_keeps_preprocessing(home: Path, tmp_path: Path) -> None:
    root = _fetched(home, tmp_path)
    cpu = json.loads(runner.invoke(app, ["plan", "Task90_Synth", "--cpu", "--json"]).output)
    assert cpu["budget"] == "cpu"
    gpu = runner.invoke(app, ["plan", "Task90_Synth", "--gpu-memory-gb", "24", "--json"])
    assert gpu.exit_code == 0, gpu.output
    stored = json.loads((root / "plan.json").read_text())
    assert json.loads(gpu.output) == stored and stored["budget"] == "gpu-24GB"
    same = {
        k: v for k, v in stored.items() if k not in ("budget", "patch_3d", "batch_3d", "patch_2d", "batch_2d")
    }
    assert same == {k: v for k, v in cpu.items() if k in same}
    both = runner.invoke(app, ["plan", "Task90_Synth", "--cpu", "--gpu-memory-gb", "8"])
    assert both.exit_code == 2 and "exclude each other" in both.output


def test_unfetched_task(home: Path) -> None:
    result = runner.invoke(app, ["plan", "Task04_Hippocampus"])
    assert result.exit_code == 3 and "run `medseg-bench fetch Task04_Hippocampus` first" in result.output


def test_absurd_gpu_memory_is_one_line_and_keeps_the_plan(home: Path, tmp_path: Path) -> None:
    root = _fetched(home, tmp_path)
    assert runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1", "--json"]).exit_code == 0
    before = (root / "plan.json").read_text()
    for value in ("inf", "-inf", "nan", "1e6", "0.1", "0"):
        result = runner.invoke(app, ["plan", "Task90_Synth", f"--gpu-memory-gb={value}"])
        assert result.exit_code == 2, result.output
        expected = "error: --gpu-memory-gb must be a number of GB from 0.5 to 10000, not"
        assert result.output.startswith(expected), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert (root / "plan.json").read_text() == before


def test_plan_works_under_the_lock_a_sweep_builds_the_task_under(home: Path, tmp_path: Path,
                                                                 monkeypatch) -> None:
    # Two writers of plan.json at once (`plan --cpu` while a sweep builds the task) take turns.
    import fcntl
    import os

    from medseg_bench.data import plan as plan_module

    root = _fetched(home, tmp_path)
    lock = root.parent / ".Task90_Synth.lock"
    original = plan_module.load_or_make_plan
    held = []

    def check(*args, **kwargs):
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return original(*args, **kwargs)

    monkeypatch.setattr(plan_module, "load_or_make_plan", check)
    assert runner.invoke(app, ["plan", "Task90_Synth", "--cpu", "--workers", "1"]).exit_code == 0
    assert held == [True]


@pytest.mark.parametrize(("cases", "holds"), [(3, "none of the 3 training cases holds a"),
                                               (1, "its one training case holds no")])
def test_a_task_without_any_foreground_is_refused_not_planned_with_made_up_ct_statistics(
        home: Path, tmp_path: Path, cases: int, holds: str) -> None:
    import numpy as np

    from tests.conftest import write_image

    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=cases, ct=True)
    for label in (src / "labelsTr").iterdir():
        write_image(label, np.zeros((12, 20, 20), np.uint8))
    write_task_file(home, "Task90_Synth", ct=True)
    assert runner.invoke(app, ["fetch", "Task90_Synth", "--source", str(src)]).exit_code == 0
    result = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"])
    assert result.exit_code == 3, result.output
    assert result.output == (
        f"error: {home / 'data' / 'Task90_Synth' / 'labelsTr'}: {holds} "
        "foreground label (1 outer, 2 core): nothing to learn, and no foreground to take CT intensity "
        "statistics from\n")
    assert not (home / "data" / "preprocessed" / "Task90_Synth" / "plan.json").exists()


def test_the_memory_to_preprocess_a_case_is_shown(home: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import medseg_bench.checks
    import medseg_bench.data.io
    from medseg_bench.checks import MemoryLimit

    def shown(limit: MemoryLimit | None = None) -> str:
        if limit is not None:
            monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: limit)
        result = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        return result.output

    root = _fetched(home, tmp_path)
    # six cases of one size, the first named; the worker's own 256 MiB and 1.7 MiB
    assert ("memory to preprocess        │ at most 0.254 GiB a case (the largest, case_000.nii.gz); 1 at "
            "once within the machine's memory (") in shown()
    plan = json.loads((root / "plan.json").read_text())
    (root / "plan.json").write_text(json.dumps(plan | {"target_spacing": [0.1, 0.1, 0.1]}))
    job = "the container's or job's memory limit"
    # 240 x 480 x 400 voxels a case: one at a time
    assert (f"at most 1.5 GiB a case (the largest, case_000.nii.gz); 1 at once within {job} (cgroup "
            "memory.max, 1 GiB)") in shown(MemoryLimit(2**30, job, "cgroup memory.max"))
    each = MemoryLimit(7 * 2**28, "the process's address-space limit", "ulimit -v, RLIMIT_AS",
                       per_process=True, shared=MemoryLimit(8 * 2**30, job, "cgroup memory.max"))
    # the limit each case is held to by what it certainly needs, 0.344 GiB: not by the 1.5 GiB at most
    assert (f"1 at once within {job} (cgroup memory.max, 8 GiB); each case needs at least 0.344 GiB, within "
            "the process's address-space limit (ulimit -v, RLIMIT_AS, 1.75 GiB)") in shown(each)
    # what the process holds of it, SimpleITK mapped first as the cache build maps it, is not there for a case
    order: list[str] = []
    real_sitk = medseg_bench.data.io.sitk_module
    monkeypatch.setattr(medseg_bench.data.io, "sitk_module", lambda: order.append("SimpleITK") or real_sitk())
    held = MemoryLimit(2**30, job, "cgroup memory.max", held_bytes=2**28)
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: order.append("memory") or held)
    assert (f"1 at once within {job} (cgroup memory.max, 1 GiB, 0.25 GiB of it held already)") in shown()
    assert order == ["SimpleITK", "memory"]
    output = shown(MemoryLimit(2**28, job, "cgroup memory.max"))
    assert "at most 1.5 GiB a case (the largest, case_000.nii.gz); cannot be built here: " in output
    assert ("case_000.nii.gz: preprocessing it needs at least 0.344 GiB at once (1 channel(s), 240 x 480 x "
            "400 voxels at the plan's target spacing), more than the 0.25 GiB this process may use") in output


def test_the_memory_row_shows_paths_with_square_brackets_as_they_are(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # the row holds the image's and plan.json's paths: rich read "[old]" in them as markup and dropped it
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit

    home = tmp_path / "h[old]"
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(home))
    monkeypatch.delenv("MEDSEG_BENCH_MIRROR", raising=False)
    root = _fetched(home, tmp_path)
    job = MemoryLimit(2**12, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: job)
    result = runner.invoke(app, ["plan", "Task90_Synth", "--workers", "1"], env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    assert f"cannot be built here: {home / 'data' / 'Task90_Synth' / 'imagesTr'}" in result.output
    assert f'set a coarser "target_spacing" in {root / "plan.json"}' in result.output
