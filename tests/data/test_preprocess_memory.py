"""The memory preprocessing needs: a case that cannot fit is named before the cache build starts, and fewer
cases are preprocessed at once than there are workers when only that many fit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from medseg_bench.checks import MemoryLimit
from medseg_bench.data import preprocess
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.preprocess import prepare_task
from medseg_bench.data.preprocess_memory import (
    WORKER_BYTES,
    CaseSize,
    cases_at_once,
    least_bytes,
    peak_bytes,
)
from medseg_bench.errors import DataError
from tests.conftest import make_synthetic_task, write_task_file

MIB = 2**20
JOB = "the container's or job's memory limit"


def _size(resampled: tuple[int, int, int], channels: int = 1) -> CaseSize:
    return CaseSize(Path("/data/imagesTr/a.nii.gz"), channels, (100, 200, 200), (100, 150, 200), resampled)


def test_least_and_peak_bytes_count_the_copies_of_a_case() -> None:
    same = _size((100, 150, 200), channels=2)
    read, cropped = 100 * 200 * 200, 100 * 150 * 200
    assert least_bytes(same) == 9 * read + 8 * cropped  # nothing resampled: no stacked copies
    finer = _size((200, 300, 400), channels=2)
    assert least_bytes(finer) == 9 * read + 8 * cropped + 16 * 8 * cropped
    assert peak_bytes(finer) == WORKER_BYTES + 18 * read + 48 * cropped + 34 * 8 * cropped
    assert peak_bytes(finer) > least_bytes(finer)


def test_cases_at_once_as_many_of_the_largest_as_fit() -> None:
    sizes = [_size((100, 150, 200)), _size((50, 75, 100))]
    peak = peak_bytes(sizes[0])
    own = peak - WORKER_BYTES  # a case's, above its worker's own memory
    assert cases_at_once(sizes, 8, MemoryLimit(8 * WORKER_BYTES + 3 * own + 1, JOB), Path("plan.json")) == 3
    assert cases_at_once(sizes, 8, MemoryLimit(8 * WORKER_BYTES + 3 * own - 1, JOB), Path("plan.json")) == 2
    assert cases_at_once(sizes, 2, MemoryLimit(3 * peak + 1, JOB), Path("plan.json")) == 2
    assert cases_at_once(sizes, 8, MemoryLimit(peak - 1, JOB), Path("plan.json")) == 1  # alone, may fit
    assert cases_at_once(sizes, 8, None, Path("plan.json")) == 8
    assert cases_at_once([], 8, MemoryLimit(1, JOB), Path("plan.json")) == 8


def test_cases_at_once_counts_the_idle_workers_own_memory() -> None:
    # the cache build's pool keeps every worker (the fingerprint started them all): 3 cases fitted 3 peaks,
    # but 8 workers hold 8 times their own memory, 5 of them idle
    size = _size((100, 150, 200))
    limit = MemoryLimit(3 * peak_bytes(size) + 1, JOB)
    assert 8 * WORKER_BYTES > limit.limit_bytes  # the workers alone: no room for a second case
    assert cases_at_once([size], 8, limit, Path("plan.json")) == 1


def test_a_per_process_limit_bounds_each_case_not_how_many_run_at_once() -> None:
    # `ulimit -v` as large as 2 cases in a job of 20: every worker process has its own; the job's bounds them
    size = _size((100, 150, 200))
    peak = peak_bytes(size)
    job = MemoryLimit(8 * WORKER_BYTES + 5 * (peak - WORKER_BYTES), JOB, "cgroup memory.max")
    each = MemoryLimit(2 * peak, "the process's address-space limit", "ulimit -v, RLIMIT_AS",
                       per_process=True, shared=job)
    assert cases_at_once([size], 8, each, Path("plan.json")) == 5
    assert cases_at_once([size], 8, job, Path("plan.json")) == 5
    unshared = MemoryLimit(2 * peak, each.kind, each.origin, per_process=True)  # no shared limit known
    assert cases_at_once([size], 8, unshared, Path("plan.json")) == 8
    # and it still refuses a case over it alone: what the case certainly holds is mapped in its process
    tight = MemoryLimit(least_bytes(size) - 1, each.kind, each.origin, per_process=True, shared=job)
    with pytest.raises(DataError, match=r"\(the process's address-space limit, ulimit -v, RLIMIT_AS\); run"):
        cases_at_once([size], 8, tight, Path("plan.json"))


def test_a_case_that_cannot_fit_alone_is_named_with_the_plan_to_change() -> None:
    huge = _size((1000, 1500, 2000))
    with pytest.raises(DataError) as info:
        cases_at_once([_size((10, 15, 20)), huge], 2, MemoryLimit(8 * 2**30, JOB, "cgroup memory.max"),
                      Path("/d/preprocessed/T/plan.json"))
    message = str(info.value)
    assert message.startswith("/data/imagesTr/a.nii.gz: preprocessing it needs at least 22.4 GiB at once "
                              "(1 channel(s), 1000 x 1500 x 2000 voxels at the plan's target spacing), more "
                              "than the 8 GiB this process may use (the container's or job's memory limit, "
                              "cgroup memory.max)")
    assert message.endswith('set a coarser "target_spacing" in /d/preprocessed/T/plan.json')
    assert "\n" not in message


def _fetched(home: Path, tmp_path: Path) -> Path:
    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4)
    data = tmp_path / "data"
    fetch_task(get_task("Task90_Synth"), data, str(src), progress=False)
    return data


def _refine(data: Path, spacing: list[float]) -> Path:
    plan_file = data / "preprocessed" / "Task90_Synth" / "plan.json"
    plan = json.loads(plan_file.read_text())
    plan["target_spacing"] = spacing
    plan_file.write_text(json.dumps(plan))
    return plan_file


def test_a_target_spacing_too_fine_for_memory_stops_before_the_cache_is_built(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 12 x 20 x 20 voxels at 1 mm, resampled to 0.1 mm: 1000 times the voxels (39 MB at least a case)
    data = _fetched(home, tmp_path)
    task = get_task("Task90_Synth")
    first = prepare_task(task, data, num_folds=3, workers=1)
    plan_file = _refine(data, [0.1, 0.1, 0.1])
    monkeypatch.setattr(preprocess, "usable_memory", lambda: MemoryLimit(32 * MIB, JOB, "cgroup memory.max"))
    images = re.escape(str(data / "Task90_Synth" / "imagesTr"))
    with pytest.raises(DataError, match=rf"^{images}/case_000\S*: preprocessing it needs at least .* GiB at "
                                        rf"once .*{re.escape(str(plan_file))}$"):
        prepare_task(task, data, num_folds=3, workers=1)
    written = {p.parent.name for p in plan_file.parent.glob("*/*.npy")}
    assert written == {first.cache_dir.name}  # nothing of the finer cache


def test_fewer_cases_at_once_than_workers_where_memory_is_short(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _fetched(home, tmp_path)
    task = get_task("Task90_Synth")
    prepare_task(task, data, num_folds=3, workers=1)
    _refine(data, [0.5, 1.0, 1.0])
    calls: list[dict[str, Any]] = []
    real_map = preprocess.parallel_map

    def spy(fn: Any, items: Any, workers: Any = None, progress: bool = False, description: str = "",
            pool: Any = None, at_once: int | None = None) -> Any:
        calls.append({"description": description, "at_once": at_once, "pool": pool})
        return real_map(fn, items, workers, progress, description, pool, at_once)

    monkeypatch.setattr(preprocess, "parallel_map", spy)
    order: list[str] = []  # SimpleITK, which a worker reads through, mapped before what is held is read
    real_sitk = preprocess.sitk_module
    monkeypatch.setattr(preprocess, "sitk_module", lambda: order.append("SimpleITK") or real_sitk())
    monkeypatch.setattr(preprocess, "usable_memory",
                        lambda: order.append("memory") or MemoryLimit(WORKER_BYTES + 4 * MIB, JOB))
    prepared = prepare_task(task, data, num_folds=3, workers=2)
    assert order == ["SimpleITK", "memory"]
    assert [c["at_once"] for c in calls] == [1]
    assert calls[0]["pool"] is not None
    assert calls[0]["description"] == "preprocessing 4 cases, 1 at a time (memory)"
    assert len(list(prepared.cache_dir.glob("*.img.npy"))) == 4
