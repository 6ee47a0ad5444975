"""`sweep/dry_run.py`: each run's state and the cost estimate from finished runs (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_bench.files import write_json_atomic
from medseg_bench.results import run_dir
from medseg_bench.run_folder import append_event, write_status
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.dry_run import dry_run_lines, estimate_seconds
from tests.conftest import finished_summary

TASK = "Task04_Hippocampus"


def _spec(seed: int = 0, **kw: object) -> RunSpec:
    return RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed, epochs=4,
                   **kw)  # type: ignore[arg-type]


def _finish(folder: Path, per_epoch_s: float, eval_s: float, spec: RunSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1,0.5,False,False\n")
    cost = {"time_per_epoch_s": per_epoch_s, "eval_time_s": eval_s}
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id, cost=cost))
    write_status(folder, "done")


def test_dry_run_states_and_cost_estimate(tmp_path: Path) -> None:
    done, partial, pending = _spec(0), _spec(1), _spec(2)
    other_arch = RunSpec(task=TASK, dims="2d", arch="deeplab", loss="dice_ce", aug="none", encoder="resnet18",
                         epochs=10)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    ckpt = run_dir(tmp_path, partial) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    seconds, matched = estimate_seconds([partial, pending, other_arch], tmp_path)
    # same (dims, arch): 4 epochs x 30 s + 20 s each; the 2D deeplab run falls back to all runs: 10 x 30 + 20
    assert matched == 2 and seconds == pytest.approx(2 * (4 * 30 + 20) + (10 * 30 + 20))
    capped = estimate_seconds([_spec(3, max_minutes=1.0)], tmp_path)
    assert capped is not None and capped[0] == pytest.approx(60 + 20)
    planned = dry_run_lines([done, partial, pending], tmp_path, tmp_path / "data")
    lines = planned.lines
    # not fetched yet: the sweep stops there (exit 3), and so ends the dry run, having listed every run and
    # the cost all the same (it exited 0, a step left, while the sweep exited 3)
    assert planned.exit_code == 3
    assert [line.split()[0] for line in lines[:3]] == ["done", "partial", "pending"]
    assert "3 runs: 1 done, 1 partial, 1 pending" in lines
    assert lines[-1].startswith("cost of the 2 runs left: about 5 min on one worker (2 estimated")
    # a sweep stops at a task not fetched before it trains anything: the dry run says so, and how to fetch
    # it into that data dir (the command without --data-dir fetched into the default one)
    assert lines[-2] == (f"{tmp_path / 'data' / TASK}: task not fetched (or incomplete); the sweep would "
                         f"stop: run `medseg-bench fetch {TASK} --data-dir {tmp_path / 'data'}` first")


def test_a_dry_run_reads_each_finished_run_once_and_others_only_for_a_cost(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing left to run: only the sweep's own runs are read (a results dir of a thousand other runs was
    read whole to estimate a cost of nothing). Runs left: every finished run is read, each once."""
    from medseg_bench.sweep import dry_run

    specs = [_spec(seed) for seed in range(4)]
    for spec in specs:
        _finish(run_dir(tmp_path, spec), per_epoch_s=30.0, eval_s=20.0, spec=spec)
    reads: list[Path] = []
    real = dry_run.read_finished_run
    monkeypatch.setattr(dry_run, "read_finished_run", lambda folder: reads.append(folder) or real(folder))
    lines = dry_run_lines(specs[:1], tmp_path, tmp_path / "data").lines
    assert lines[0].startswith("done ") and lines[-1] == "cost: none, no run left to train"
    assert reads == [run_dir(tmp_path, specs[0])]
    reads.clear()
    lines = dry_run_lines([specs[0], _spec(9)], tmp_path, tmp_path / "data").lines
    assert lines[-1].startswith("cost of the 1 run left")
    assert sorted(reads) == sorted(run_dir(tmp_path, spec) for spec in specs)


def test_the_estimate_scales_with_iterations_and_the_work_of_a_step(tmp_path: Path) -> None:
    # The finished run: 50 iterations of batch 2 x 40x56x40 at 30 s per epoch (0.6 s per iteration).
    done = _spec(0)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=0.0, spec=done)
    summary = json.loads((run_dir(tmp_path, done) / "summary.json").read_text())
    summary["plan"].update({"patch_3d": [40, 56, 40], "batch_3d": 2})
    write_json_atomic(run_dir(tmp_path, done) / "summary.json", summary)
    assert estimate_seconds([_spec(1)], tmp_path) == (pytest.approx(4 * 30), 1)
    assert estimate_seconds([_spec(1, iters_per_epoch=500)], tmp_path) == (pytest.approx(4 * 300), 1)
    bigger = _spec(1, batch_size=4, patch_size=(40, 56, 40))  # twice the voxels a step
    assert estimate_seconds([bigger], tmp_path) == (pytest.approx(4 * 60), 1)


def test_the_dry_run_reads_each_finished_run_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Once for its state and once more for the cost estimate: every metrics.csv was parsed twice.
    import medseg_bench.results as results
    import medseg_bench.sweep.dry_run as dry_run

    done, damaged, pending = _spec(0), _spec(1), _spec(2)
    for spec in (done, damaged):
        _finish(run_dir(tmp_path, spec), per_epoch_s=30.0, eval_s=20.0, spec=spec)
    (run_dir(tmp_path, damaged) / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1\n")
    reads: list[str] = []
    real = results.read_finished_run

    def counted(folder: Path):  # type: ignore[no-untyped-def]
        reads.append(folder.name)
        return real(folder)

    monkeypatch.setattr(results, "read_finished_run", counted)
    monkeypatch.setattr(dry_run, "read_finished_run", counted)
    lines = dry_run_lines([done, damaged, pending], tmp_path, tmp_path / "data").lines
    assert [line.split()[0] for line in lines[:3]] == ["done", "damaged", "pending"]
    assert lines[-1].startswith("cost of the 1 run left: about 2 min on one worker (1 estimated")
    assert sorted(reads) == sorted([done.run_id, damaged.run_id])


def test_a_damaged_finished_run_is_no_basis_for_the_estimate(tmp_path: Path) -> None:
    done, damaged = _spec(0), _spec(1)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    _finish(run_dir(tmp_path, damaged), per_epoch_s=30.0, eval_s=20.0, spec=damaged)
    write_json_atomic(run_dir(tmp_path, damaged) / "summary.json", {"cost": "zzz"})  # was an AttributeError
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(4 * 30 + 20), 1)
    assert dry_run_lines([done, damaged], tmp_path, tmp_path / "data").lines[1].split()[0] == "damaged"
    # metrics.csv cut short: `status` and a sweep call it damaged; the dry run called it done and used it
    _finish(run_dir(tmp_path, damaged), per_epoch_s=300.0, eval_s=20.0, spec=damaged)
    (run_dir(tmp_path, damaged) / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nc,1\n")
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(4 * 30 + 20), 1)
    assert dry_run_lines([done, damaged], tmp_path, tmp_path / "data").lines[1].split()[0] == "damaged"


@pytest.mark.parametrize(("edit", "seconds"), [
    ({"iters_per_epoch": "2"}, 4 * 30 + 20), ({"dims": 3}, 4 * 30 + 20),
    ({"patch_size": ["a"]}, 4 * 30 + 20),
])
def test_a_finished_run_whose_spec_was_edited_crashes_no_estimate(tmp_path: Path, edit: dict[str, object],
                                                                  seconds: float) -> None:
    # The dry run's estimate crashed on it (exit 1, a traceback); such a run is damaged (`RunSpec.problem`).
    done, edited = _spec(0), _spec(1)
    _finish(run_dir(tmp_path, done), per_epoch_s=30.0, eval_s=20.0, spec=done)
    _finish(run_dir(tmp_path, edited), per_epoch_s=300.0, eval_s=20.0, spec=edited)
    spec_path = run_dir(tmp_path, edited) / "spec.json"
    write_json_atomic(spec_path, json.loads(spec_path.read_text()) | edit)
    assert estimate_seconds([_spec(2)], tmp_path) == (pytest.approx(seconds), 1)


def test_dry_run_lines_show_every_setting_that_tells_two_runs_apart() -> None:
    from medseg_bench.sweep.dry_run import settings_text

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="light", patch_size=(32, 48, 32),
                   class_weights=(1.0, 2.5, 4.0), tta=True, postprocess=True)
    assert settings_text(spec) == ("epochs=10 iters=50 opt=adamw patch_size=32x48x32 class_weights=1,2.5,4 "
                                   "tta postprocess")


def test_dry_run_without_history_says_so(tmp_path: Path) -> None:
    lines = dry_run_lines([_spec()], tmp_path, tmp_path / "data").lines
    assert lines[-1].startswith("cost: no finished runs")


def test_dry_run_leaves_damaged_runs_out_of_the_work_left(tmp_path: Path) -> None:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, spec)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "summary.json", {"cost": {}})
    append_event(folder, "done")  # finished, then its status.json was lost: never trained again
    planned = dry_run_lines([spec], tmp_path, tmp_path / "data")
    lines = planned.lines
    assert lines[0].startswith("damaged  T/") and lines[1] == "1 run: 1 damaged"
    assert lines[-1] == "cost: none, no run left to train"
    assert planned.exit_code == 6  # as the sweep ends on a damaged run (the dry run exited 0)


def test_a_task_not_fetched_ends_the_dry_run_as_the_sweep_after_every_line(tmp_path: Path) -> None:
    """A damaged run of one task and a task not fetched: the sweep stops on the task (exit 3), its dry run
    exited 6 (it took a task not fetched for a step left, exit 0). Still a preview: every run is listed, the
    line that says how to fetch the task, and the cost."""
    damaged = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    folder = run_dir(tmp_path, damaged)
    folder.mkdir(parents=True)
    write_json_atomic(folder / "summary.json", {"cost": {}})
    append_event(folder, "done")
    other = RunSpec(task="Task05_Prostate", dims="3d", arch="unet", loss="dice_ce", aug="none")
    planned = dry_run_lines([damaged, other], tmp_path, tmp_path / "data")
    assert planned.exit_code == 3, planned.lines
    assert [line.split()[0] for line in planned.lines[:3]] == ["damaged", "pending", "2"]
    assert any(line.startswith(f"{tmp_path / 'data' / 'Task05_Prostate'}: task not fetched (or incomplete); "
                               "the sweep would stop: run `medseg-bench fetch Task05_Prostate")
               for line in planned.lines), planned.lines
    assert planned.lines[-1].startswith("cost: no finished runs")


@pytest.mark.parametrize("edit, problem", [
    ({"task": "Task01_BrainTumour"}, "a plan of task 'Task01_BrainTumour', not of Task04_Hippocampus"),
    ({"channel_normalization": [{"scheme": "zscore", "nonzero_mask": False}] * 2},
     "channel_normalization has 2 entries, but Task04_Hippocampus has 1 channel(s)"),
])
def test_the_dry_run_stops_on_a_plan_json_that_cannot_be_the_tasks(tmp_path: Path, edit: dict,
                                                                   problem: str) -> None:
    """The sweep refuses a plan.json of another task, or of another number of channels (`plan_for_task`):
    its dry run said nothing of it and exited 0."""
    plan = {"task": TASK, "normalization": "per_channel", "ct_clip": None, "ct_mean": None, "ct_std": None,
            "median_spacing": [1.0, 1.0, 1.0], "target_spacing": [1.0, 1.0, 1.0], "crop_to_nonzero": True,
            "median_shape": [35, 50, 35], "budget": "cpu", "patch_3d": [40, 56, 40], "batch_3d": 4,
            "patch_2d": [64, 64], "batch_2d": 32,
            "channel_normalization": [{"scheme": "zscore", "nonzero_mask": False}]}
    path = tmp_path / "data" / "preprocessed" / TASK / "plan.json"
    path.parent.mkdir(parents=True)
    write_json_atomic(path, plan)
    as_is = dry_run_lines([_spec()], tmp_path / "results", tmp_path / "data")  # fine, but not fetched here
    assert not any(line.startswith(f"{TASK}: the sweep would stop") for line in as_is.lines), as_is.lines
    write_json_atomic(path, plan | edit)
    planned = dry_run_lines([_spec()], tmp_path / "results", tmp_path / "data")
    assert planned.exit_code == 3, planned.lines
    assert f"{TASK}: the sweep would stop: {path}: {problem}" in "\n".join(planned.lines)


def test_the_dry_run_stops_on_a_damaged_fetch_marker(tmp_path: Path) -> None:
    """The sweep stops on a task folder whose `.medseg-bench-valid.json` is damaged (exit 3, run validate to
    rebuild it): its dry run listed the runs as pending and exited 0."""
    from medseg_bench.data.fetch import MARKER

    marker = tmp_path / "data" / TASK / MARKER
    marker.parent.mkdir(parents=True)
    write_json_atomic(marker, {"excluded": []})
    write_json_atomic(marker.parent / "dataset.json", {"training": [
        {"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"} for i in range(5)]})
    assert dry_run_lines([_spec()], tmp_path / "results", tmp_path / "data").exit_code == 0
    marker.write_text("[]")
    planned = dry_run_lines([_spec()], tmp_path / "results", tmp_path / "data")
    assert planned.exit_code == 3, planned.lines
    assert any(line.startswith(f"{TASK}: the sweep would stop: {marker}: damaged ") for line in planned.lines)


def test_the_dry_run_stops_on_a_splits_file_the_sweep_refuses(tmp_path: Path) -> None:
    """A splits file of the user's that trains on a held-out case stops the sweep (exit 3) before training:
    its dry run listed the runs as pending and exited 0. A task not split yet is split by the sweep: the dry
    run makes no file."""
    from medseg_bench.data.fetch import MARKER

    data = tmp_path / "data"
    task = data / TASK
    (task / "imagesTr").mkdir(parents=True)
    cases = [f"hippocampus_{i:03d}" for i in range(4)]
    write_json_atomic(task / "dataset.json", {"training": [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in cases]})
    write_json_atomic(task / MARKER, {"excluded": []})
    spec = _spec(num_folds=2)
    assert dry_run_lines([spec], tmp_path / "results", data).exit_code == 0
    splits = data / "preprocessed" / TASK / "splits_2fold.json"
    assert not splits.exists()  # not made by a dry run
    splits.parent.mkdir(parents=True)
    second = {"train": cases[2:], "val": cases[:2]}
    write_json_atomic(splits, [{"train": cases[:2], "val": cases[2:]}, second])
    assert dry_run_lines([spec], tmp_path / "results", data).exit_code == 0  # a valid file of the user's
    write_json_atomic(splits, [{"train": cases[:3], "val": cases[2:]}, second])
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert planned.exit_code == 3, planned.lines
    assert (f"{TASK}: the sweep would stop: {splits}: fold 0 trains on held-out case(s) hippocampus_002"
            in planned.lines)
    # more folds than usable cases: the sweep stops as it would make the splits (the dry run said all was
    # well); nothing is written
    more = dry_run_lines([_spec(num_folds=5)], tmp_path / "results", data)
    assert more.exit_code == 3, more.lines
    assert (f"{TASK}: the sweep would stop: 4 usable cases cannot be split into 5 folds; use --num-folds 4 "
            "or fewer (at least 2)") in more.lines
    assert not (splits.parent / "splits_5fold.json").exists()


def test_the_dry_run_stops_where_a_case_cannot_be_preprocessed_in_memory(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's cache build refuses a case that cannot fit in memory even alone (a plan.json edited to a
    much finer target spacing), exit 3: its dry run listed the runs as pending and exited 0."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import preprocess
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.errors import DataError
    from medseg_bench.sweep import dry_run
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4)
    data = tmp_path / "data"
    task = get_task("Task90_Synth")
    fetch_task(task, data, str(src), progress=False)
    preprocess.prepare_task(task, data, num_folds=3, workers=1)
    memory = MemoryLimit(32 * 2**20, "the container's or job's memory limit", "cgroup memory.max")
    for module in (medseg_bench.checks, preprocess):
        monkeypatch.setattr(module, "usable_memory", lambda: memory)
    # nor would an evaluation at 0.1 mm, which the sweep checks first (tested on its own): the cache alone
    monkeypatch.setattr(dry_run, "_check_evaluation_memory", lambda *args: None)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    assert dry_run_lines([spec], tmp_path / "results", data).exit_code == 0  # its cache built at 1 mm
    plan_file = data / "preprocessed" / "Task90_Synth" / "plan.json"
    write_json_atomic(plan_file, json.loads(plan_file.read_text()) | {"target_spacing": [0.1, 0.1, 0.1]})
    with pytest.raises(DataError) as refused:
        preprocess.prepare_task(task, data, num_folds=3, workers=1)  # what the sweep stops on, exit 3
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert planned.exit_code == 3, planned.lines
    assert f"Task90_Synth: the sweep would stop: {refused.value}" in planned.lines


def test_the_dry_run_stops_on_the_line_the_sweep_stops_on_where_neither_evaluation_nor_cache_fits(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep checks, before it builds anything, the caches it would build and then the held-out cases'
    evaluations against the memory (both sized from the fingerprint and the plan): with a plan.json edited to
    a target spacing 10 times finer, where neither fits, the dry run names the line the sweep stops on (it
    once named another: the two checked in other orders)."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import preprocess
    from medseg_bench.errors import DataError
    from medseg_bench.progress import PlainReporter
    from medseg_bench.sweep import local

    data = _prepared_synth(home, tmp_path)
    plan_file = data / "preprocessed" / "Task90_Synth" / "plan.json"
    write_json_atomic(plan_file, json.loads(plan_file.read_text()) | {"target_spacing": [0.1, 0.1, 0.1]})
    memory = MemoryLimit(32 * 2**20, "the container's or job's memory limit", "cgroup memory.max")
    for module in (medseg_bench.checks, preprocess):
        monkeypatch.setattr(module, "usable_memory", lambda: memory)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    planned = local.plan_tasks([spec], data)
    with pytest.raises(DataError, match="predicting it needs at least"):  # nor would an evaluation fit
        local.check_evaluation_memory([spec], planned, data)
    caches = sorted(p.name for p in plan_file.parent.iterdir())
    with pytest.raises(DataError) as refused:
        local.run_sweep([spec], tmp_path / "results", data, PlainReporter())
    assert "preprocessing it needs at least" in str(refused.value)  # the first the sweep would meet
    assert sorted(p.name for p in plan_file.parent.iterdir()) == caches  # nothing built
    said = dry_run_lines([spec], tmp_path / "results", data)
    assert said.exit_code == 3, said.lines
    assert f"Task90_Synth: the sweep would stop: {refused.value}" in said.lines, said.lines


def test_the_dry_run_checks_only_the_caches_the_sweep_would_build(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """2D runs that keep their slices read the 3D cache where no case's slices are resampled (1 mm cases): the
    dry run checked the memory of a `-2d` cache the sweep never builds, and stopped where the sweep trains."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import preprocess
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.sweep import dry_run
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4)
    data = tmp_path / "data"
    task = get_task("Task90_Synth")
    fetch_task(task, data, str(src), progress=False)
    preprocess.prepare_task(task, data, num_folds=3, workers=1)  # the 3D cache only
    memory = MemoryLimit(1024, "the container's or job's memory limit", "cgroup memory.max")
    for module in (medseg_bench.checks, preprocess):
        monkeypatch.setattr(module, "usable_memory", lambda: memory)  # no case fits: a cache to build stops
    # nor would any evaluation: that check (tested on its own) is left out here, the caches' alone tested
    monkeypatch.setattr(dry_run, "_check_evaluation_memory", lambda *args: None)
    spec = RunSpec(task="Task90_Synth", dims="2d", arch="unet", loss="dice_ce", aug="none", num_folds=3,
                   encoder="resnet34")
    assert spec.own_slice_spacing
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert planned.exit_code == 0, planned.lines
    prepared = preprocess.prepare_task(task, data, num_folds=3, workers=1, own_slices=True)  # as the sweep
    assert prepared.own_slices_dir == prepared.cache_dir  # built nothing, stopped on nothing


def test_the_dry_run_says_which_interrupted_runs_the_sweep_would_fail_before_building_the_cache(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupted run whose plan.json changed since it started fails before the sweep builds the cache
    (`local.refuse_unresumable_runs`); the dry run says so, and checks the cache only for the runs that go
    ahead."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import preprocess
    from tests.sweep.test_local import REFUSED, _interrupted_on_an_edited_plan

    data, started, fresh, root = _interrupted_on_an_edited_plan(home, tmp_path)
    (root / "splits_3fold.json").unlink()  # made by the sweep as the run's split was: the same split
    results = tmp_path / "results"
    memory = MemoryLimit(1024, "the container's or job's memory limit", "cgroup memory.max")
    for module in (medseg_bench.checks, preprocess):
        monkeypatch.setattr(module, "usable_memory", lambda: memory)  # the new plan's cache cannot be built
    refused = f"Task90_Synth/{started.run_id}: the sweep would fail it: {run_dir(results, started) / REFUSED}"
    alone = dry_run_lines([started], results, data)
    assert refused in alone.lines
    # no run left to build the cache for: none is built; the sweep ends failing the run, exit 5 (it was 0)
    assert alone.exit_code == 5, alone.lines
    assert alone.lines[-1] == "cost: none, no run left to train"
    both = dry_run_lines([started, fresh], results, data)
    assert refused in both.lines
    assert both.exit_code == 3, both.lines  # the new run's cache is built, and stops the sweep
    # --fail-fast: the sweep fails the interrupted run and stops there, before the new run's cache
    fast = dry_run_lines([started, fresh], results, data, fail_fast=True)
    assert fast.exit_code == 5, fast.lines
    assert fast.lines[-2:] == ["--fail-fast: the sweep would stop at that run, no other run trains",
                               fast.lines[-1]] and fast.lines[-1] == "cost: none, no run left to train"
    assert not (root / "splits_3fold.json").exists()  # nothing written


def test_the_dry_run_says_which_interrupted_runs_the_sweep_would_fail_for_their_checkpoint(
        home: Path, tmp_path: Path) -> None:
    """An interrupted run whose last checkpoint is corrupt fails before the sweep builds the cache, as one
    whose plan changed; the dry run says so, and writes nothing."""
    from medseg_bench.run_folder import read_events
    from tests.sweep.test_local import _interrupted_with_a_bad_checkpoint, bad_checkpoint

    data, started, fresh, _ = _interrupted_with_a_bad_checkpoint(home, tmp_path)
    results = tmp_path / "results"
    folder = run_dir(results, started)
    planned = dry_run_lines([started, fresh], results, data)
    assert planned.exit_code == 5, planned.lines  # as the sweep ends, having trained the other run
    assert (f"Task90_Synth/{started.run_id}: the sweep would fail it: {folder}/{bad_checkpoint(started)}"
            in planned.lines)
    assert not any("would fail" in line for line in planned.lines if fresh.run_id in line)
    assert not (folder / "status.json").exists() and read_events(folder) == []  # nothing written


def test_the_dry_run_stops_where_a_case_cannot_be_fingerprinted_in_memory(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task fetched but not planned yet is fingerprinted first, and the sweep stops on a case that cannot be
    read even alone in the memory it may use (exit 3, naming its image): its dry run listed the runs as
    pending and exited 0. Found from the cases' headers; nothing written. A task whose fingerprint is saved
    is not fingerprinted again: nothing said."""
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.data import fingerprint, preprocess
    from medseg_bench.data.catalog import get_task
    from medseg_bench.errors import DataError
    from tests.sweep.test_local import _synthetic_task

    data = _synthetic_task(home, tmp_path)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    results = tmp_path / "results"
    assert dry_run_lines([spec], results, data).exit_code == 0
    limit: list[MemoryLimit | None] = [MemoryLimit(1024, "the container's or job's memory limit",
                                                   "cgroup memory.max")]
    for module in (medseg_bench.checks, fingerprint):
        monkeypatch.setattr(module, "usable_memory", lambda: limit[0])
    planned = dry_run_lines([spec], results, data)
    assert not (data / "preprocessed").exists()  # nothing written
    with pytest.raises(DataError) as refused:
        preprocess.plan_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)  # as the sweep, exit 3
    assert planned.exit_code == 3, planned.lines
    assert f"Task90_Synth: the sweep would stop: {refused.value}" in planned.lines
    assert str(refused.value).startswith(f"{data / 'Task90_Synth' / 'imagesTr'}/")
    assert " fingerprinting it needs at least " in str(refused.value)
    limit[0] = None
    preprocess.plan_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)  # fingerprinted and planned
    (data / "preprocessed" / "Task90_Synth" / "plan.json").unlink()
    limit[0] = MemoryLimit(1024, "the container's or job's memory limit", "cgroup memory.max")
    assert dry_run_lines([spec], results, data).exit_code == 0  # the saved fingerprint is read, not made
    preprocess.plan_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)  # as the sweep: no stop


def test_a_slurm_dry_run_leaves_the_evaluation_memory_to_the_jobs(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SLURM submission does not check the held-out cases against the memory of the machine it submits from
    (each job checks them on its node, `run.evaluate_fold`): its dry run stopped there, exit 3, on a login
    node smaller than the nodes, where the submission went ahead."""
    from typer.testing import CliRunner

    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.cli.app import app
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import prepare_task
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    data = tmp_path / "data"
    fetch_task(get_task("Task90_Synth"), data, str(make_synthetic_task(tmp_path / "src" / "Task90_Synth",
                                                                       num_cases=4)), progress=False)
    prepare_task(get_task("Task90_Synth"), data, num_folds=2, workers=1)  # built: its memory is not checked
    memory = MemoryLimit(100_000, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: memory)  # no evaluation fits here
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    results = tmp_path / "results"
    local = dry_run_lines([spec], results, data)
    assert local.exit_code == 3 and "predicting it needs at least" in local.lines[-2], local.lines
    slurm = dry_run_lines([spec], results, data, launcher="slurm")
    assert slurm.exit_code == 0 and not any("would stop" in line for line in slurm.lines), slurm.lines
    args = ["sweep", "--task", "Task90_Synth", "--arch", "unet", "--loss", "dice_ce", "--aug", "none",
            "--dims", "3d", "--folds", "0", "--num-folds", "2", "--results-dir", str(results), "--data-dir",
            str(data), "--dry-run"]
    assert CliRunner().invoke(app, args).exit_code == 3
    said = CliRunner().invoke(app, [*args, "--launcher", "slurm"])
    assert said.exit_code == 0 and "it needs at least" not in said.output, said.output


def test_the_dry_run_says_which_caches_the_sweep_builds_first(home: Path, tmp_path: Path) -> None:
    """A plan.json edited to another target spacing makes the sweep build a new cache before its first run
    (minutes to hours on a large task): the dry run said only the runs' cost, as if training began at once."""
    from medseg_bench.data.plan import read_plan

    data = _prepared_synth(home, tmp_path)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert not any("builds" in line for line in planned.lines), planned.lines  # built: nothing to say
    plan_file = data / "preprocessed" / "Task90_Synth" / "plan.json"
    write_json_atomic(plan_file, json.loads(plan_file.read_text()) | {"target_spacing": [2.0, 2.0, 2.0]})
    new_cache = plan_file.parent / read_plan(plan_file).preprocessing_hash
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert planned.exit_code == 0, planned.lines
    assert (f"Task90_Synth: the sweep builds its cache (4 cases at 2 x 2 x 2 mm, {new_cache}) first; not in "
            "the cost below") in planned.lines
    assert not new_cache.exists()  # nothing written


def _prepared_synth(home: Path, tmp_path: Path) -> Path:
    """Task90_Synth (4 cases) fetched into tmp_path/data (returned), planned, cached and split in 3."""
    from medseg_bench.data import preprocess
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    data = tmp_path / "data"
    task = get_task("Task90_Synth")
    fetch_task(task, data, str(make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4)),
               progress=False)
    preprocess.prepare_task(task, data, num_folds=3, workers=1)
    return data


def test_the_dry_run_says_what_the_sweep_says_of_a_finished_run_trained_on_another_plan(
        home: Path, tmp_path: Path) -> None:
    # The sweep's skip line says a finished run trained with a patch or batch the plan no longer gives (it is
    # kept, not trained again); its dry run listed the run as `done` without a word.
    from medseg_bench.data.plan import read_plan

    data = _prepared_synth(home, tmp_path)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3)
    folder = run_dir(tmp_path / "results", spec)
    _finish(folder, per_epoch_s=1.0, eval_s=1.0, spec=spec)
    plan = read_plan(data / "preprocessed" / "Task90_Synth" / "plan.json")
    trained = plan.to_dict()  # what run.py records in summary.json
    summary = json.loads((folder / "summary.json").read_text())
    write_json_atomic(folder / "summary.json", summary | {"plan": trained})
    lines = dry_run_lines([spec], tmp_path / "results", data).lines
    assert lines[0].startswith(f"done     Task90_Synth/{spec.run_id}") and lines[1].startswith("1 run: ")
    write_json_atomic(folder / "summary.json", summary | {"plan": trained | {"batch_3d": plan.batch_3d + 1}})
    lines = dry_run_lines([spec], tmp_path / "results", data).lines
    assert lines[1] == " " * 9 + (
        f"trained with patch {'x'.join(map(str, plan.patch_3d))}, batch {plan.batch_3d + 1}; the plan now "
        f"says {'x'.join(map(str, plan.patch_3d))}, batch {plan.batch_3d}: --patch-size/--batch-size train "
        "those as runs of their own")


def test_the_estimate_takes_a_runs_patch_and_batch_from_its_tasks_plan(home: Path, tmp_path: Path) -> None:
    # A plan.json edited to a larger patch was estimated as the runs of the plan before it: the spec alone,
    # which gives no patch, was read for the work of a step.
    from medseg_bench.data.plan import read_plan

    data = _prepared_synth(home, tmp_path)
    plan_file = data / "preprocessed" / "Task90_Synth" / "plan.json"
    plan = read_plan(plan_file)
    done = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3,
                   epochs=4)
    folder = run_dir(tmp_path / "results", done)
    _finish(folder, per_epoch_s=30.0, eval_s=0.0, spec=done)
    summary = json.loads((folder / "summary.json").read_text())
    write_json_atomic(folder / "summary.json", summary | {"plan": plan.to_dict()})
    left = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=3,
                   epochs=4, seed=1)
    assert estimate_seconds([left], tmp_path / "results", data_dir=data) == (pytest.approx(4 * 30), 1)
    patch = list(plan.patch_3d)
    write_json_atomic(plan_file, json.loads(plan_file.read_text()) | {"patch_3d": [patch[0] * 2, *patch[1:]]})
    assert estimate_seconds([left], tmp_path / "results", data_dir=data) == (pytest.approx(4 * 60), 1)
    line = dry_run_lines([done, left], tmp_path / "results", data).lines[-1]
    assert line.startswith("cost of the 1 run left: about 4 min on one worker")
