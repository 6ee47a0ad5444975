"""`sweep/worker.py`: a skipped run's plan note, resuming only with the setup a run started with, and the
cache a `--jobs` worker or a SLURM job prepares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_bench.files import write_json_atomic
from medseg_bench.results import run_dir
from medseg_bench.spec import RunSpec

TASK = "Task04_Hippocampus"


def test_a_skipped_run_says_when_the_plan_changed_since_it_trained(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medseg_bench.data.plan import preprocessing_of
    from medseg_bench.sweep.worker import plan_changed_since

    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    trained = {"patch_3d": [40, 56, 40], "batch_3d": 2, "target_spacing": [1.0, 1.0, 1.0],
               "normalization": "per_channel", "crop_to_nonzero": True}
    write_json_atomic(tmp_path / "summary.json", {"plan": trained})
    same = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2, preprocessing=preprocessing_of(trained))
    edited = SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=4, preprocessing=preprocessing_of(trained))
    assert plan_changed_since(spec, same, tmp_path) is None
    assert plan_changed_since(spec, None, tmp_path) is None  # no plan yet: nothing to compare
    assert plan_changed_since(spec, edited, tmp_path) == (
        "trained with patch 40x56x40, batch 2; the plan now says 32x48x32, batch 4: "
        "--patch-size/--batch-size train those as runs of their own")
    fixed = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", patch_size=(40, 56, 40),
                    batch_size=2)
    assert plan_changed_since(fixed, edited, tmp_path) is None  # its spec fixed both: the plan played no part
    # Another target spacing (another cache): a note whatever the spec fixed, since no flag trains it anew.
    spaced = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2,
                             preprocessing=preprocessing_of(trained | {"target_spacing": [1.5, 1.5, 1.5]}))
    note = ("trained with target spacing 1x1x1 mm, plan.json now 1.5x1.5x1.5 mm: it keeps its result (the "
            "report shows the two apart); sweep into another --results-dir, or move its folder away, to "
            "train it on the new plan")
    assert plan_changed_since(spec, spaced, tmp_path) == note
    assert plan_changed_since(fixed, spaced, tmp_path) == note
    masked = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=2,
                             preprocessing=preprocessing_of(trained | {"crop_to_nonzero": False}))
    assert plan_changed_since(spec, masked, tmp_path).startswith(
        "trained with crop_to_nonzero other than plan.json's now: it keeps its result")


def test_an_interrupted_run_resumes_only_with_the_setup_it_started_with(tmp_path: Path) -> None:
    # An edited plan.json or splits file once let a resumed run mix two setups under one run id (and score
    # held-out cases it had trained on), and record the new ones as if they had held throughout.
    from types import SimpleNamespace

    from medseg_bench.sweep.worker import setup_problem

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    plan = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=4, patch_2d=(64, 64), batch_2d=32)
    prepared = SimpleNamespace(plan=plan, splits=[split])
    write_json_atomic(tmp_path / "splits.json", split)
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4})
    assert setup_problem(spec, prepared, tmp_path) is None
    plan.batch_3d = 2
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run started with patch 40x56x40, batch 4; plan.json now gives "
        "40x56x40, batch 2: restore plan.json, or delete the run folder to start over")
    assert setup_problem(RunSpec(**{**spec.to_dict(), "batch_size": 4}), prepared, tmp_path) is None
    plan.batch_3d = 4
    prepared.splits = [{"train": ["a", "b", "d"], "val": ["c"]}]
    problem = setup_problem(spec, prepared, tmp_path)
    assert problem is not None and problem.startswith(
        f"{tmp_path / 'splits.json'}: the run started with another split of fold 0 than the task's splits "
        "file gives now (2 held-out cases differ)")
    # plan.json's target spacing edited: the run would go on training, and be scored, on another cache
    from medseg_bench.data.plan import preprocessing_of

    prepared.splits = [split]
    plan.preprocessing = preprocessing_of({"target_spacing": [1.0, 1.0, 1.0], "normalization": "per_channel"})
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4,
                                                "preprocessing": plan.preprocessing})
    assert setup_problem(spec, prepared, tmp_path) is None
    plan.preprocessing = plan.preprocessing | {"target_spacing": [1.5, 1.5, 1.5]}
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run started with target spacing 1x1x1 mm, plan.json now 1.5x1.5x1.5 "
        "mm: restore plan.json, or delete the run folder to start over")


def test_a_region_run_resumes_only_on_the_regions_it_started_with(tmp_path: Path) -> None:
    # Its network's channels are the task file's regions in their order: an edited task file would have
    # trained (and painted) each channel as another region's.
    from types import SimpleNamespace

    from medseg_bench.sweep.worker import setup_problem

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", target="regions")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    plan = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=4, patch_2d=(64, 64), batch_2d=32)
    task = SimpleNamespace(regions={"whole": [1, 2], "inner": [2]})
    prepared = SimpleNamespace(plan=plan, splits=[split], task=task)
    write_json_atomic(tmp_path / "splits.json", split)
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4,
                                                "regions": [{"name": "whole", "labels": [1, 2]},
                                                            {"name": "inner", "labels": [2]}]})
    assert setup_problem(spec, prepared, tmp_path) is None
    task.regions = {"inner": [2], "whole": [1, 2]}  # the same regions in another order: other channels
    reordered = setup_problem(spec, prepared, tmp_path)
    assert reordered is not None and reordered.endswith(
        "declares inner=2; whole=1,2: restore the task file's regions, or delete the run folder to start "
        "over")
    task.regions = {"whole": [1, 2], "inner": [1]}
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run trained on regions whole=1,2; inner=2; the task file declares "
        "whole=1,2; inner=1: restore the task file's regions, or delete the run folder to start over")


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("setup.json", "{", "not valid JSON"),
    ("setup.json", "[]", "not a JSON object"),
    ("setup.json", "{}", 'not an object with "patch_size", a list of 3 positive whole numbers, and '
     '"batch_size", a positive whole number'),
    # two sides for a 3D run: it said "the run started with patch 40x56 ...: restore plan.json"
    ("setup.json", '{"patch_size": [40, 56], "batch_size": 4}',
     'not an object with "patch_size", a list of 3 positive whole numbers'),
    ("setup.json", '{"patch_size": "40x56x40", "batch_size": 4}', 'not an object with "patch_size"'),
    ("setup.json", '{"patch_size": [40, 56, 40], "batch_size": "4"}', 'not an object with "patch_size"'),
    ("splits.json", "", "not valid JSON"),
    ("splits.json", '{"train": ["a"]}', 'not an object with "train" and "val", each a list of case ids'),
    ("splits.json", '{"train": ["a"], "val": 5}', 'not an object with "train" and "val"'),
])
def test_an_interrupted_run_whose_setup_record_is_damaged_never_resumes_unguarded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, text: str, problem: str) -> None:
    # A setup.json that could not be read counted as none: the run resumed with the plan's new patch and
    # batch, and its summary recorded them as if they had held throughout (a splits.json: another split).
    from types import SimpleNamespace

    import medseg_bench.run as run_module
    from medseg_bench.run_folder import read_events, read_status
    from medseg_bench.sweep import worker

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    prepared = SimpleNamespace(plan=SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=2), splits=[split])
    folder = run_dir(tmp_path, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")  # interrupted after an epoch: it would resume
    write_json_atomic(folder / "splits.json", split)
    write_json_atomic(folder / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4})
    (folder / name).write_text(text)
    expected = f"{folder / name}: {problem}"
    advice = "resumes only with it: restore the file, or delete the run folder to train from scratch"
    found = worker.setup_problem(spec, prepared, folder)
    assert found is not None and found.startswith(expected) and found.endswith(advice)
    trained: list[RunSpec] = []
    monkeypatch.setattr(worker, "checkpoint_problem", lambda *args: None)
    monkeypatch.setattr(run_module, "execute_run", lambda spec, *rest: trained.append(spec) or {})
    outcome = worker.run_one(spec, prepared, tmp_path)  # type: ignore[arg-type]
    assert outcome.kind == "failed" and outcome.error == found and trained == []
    status = read_status(folder)
    assert status["state"] == "failed" and status["error"] == found
    assert [e["event"] for e in read_events(folder)] == ["failed"]
    assert f"ERROR not resumed: {found}" in (folder / "run.log").read_text()
    assert (folder / name).read_text() == text  # left for the user to restore


def test_a_run_folder_without_a_setup_record_resumes_as_before(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # No setup.json or splits.json (a run from before they were written): nothing holds its resume, as ever.
    from types import SimpleNamespace

    import medseg_bench.run as run_module
    from medseg_bench.sweep import worker

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    prepared = SimpleNamespace(plan=SimpleNamespace(patch_3d=(32, 48, 32), batch_3d=2),
                               splits=[{"train": ["a"], "val": ["b"]}])
    folder = run_dir(tmp_path, spec)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert worker.setup_problem(spec, prepared, folder) is None
    trained: list[RunSpec] = []
    monkeypatch.setattr(worker, "checkpoint_problem", lambda *args: None)
    monkeypatch.setattr(run_module, "execute_run", lambda spec, *rest: trained.append(spec) or {})
    assert worker.run_one(spec, prepared, tmp_path).kind == "done"  # type: ignore[arg-type]
    assert trained == [spec]


def test_an_attempt_that_starts_over_records_its_own_setup(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # setup.json kept the first attempt's batch after a restart from scratch (no checkpoint yet) with a new
    # plan, so the restarted run's next resume was refused, and restoring the old plan let a mix through.
    from types import SimpleNamespace

    import medseg_bench.run as run_module

    def stopped(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(run_module, "train", stopped)
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    plan = SimpleNamespace(patch_3d=(32, 32, 32), batch_3d=4, preprocessing={"target_spacing": [1, 1, 1]})
    prepared = SimpleNamespace(plan=plan, splits=[{"train": ["a"], "val": ["b"]}],
                               cache_for=lambda own_slices: tmp_path / "cache",  # no entries: no orientation
                               task=SimpleNamespace(labels={0: "background", 1: "a"}))
    for batch in (4, 2):  # a first attempt, then one from scratch after a plan edit
        plan.batch_3d = batch
        with pytest.raises(KeyboardInterrupt):
            run_module.execute_run(spec, prepared, tmp_path)  # type: ignore[arg-type]
        setup = json.loads((tmp_path / "setup.json").read_text())
        assert setup["batch_size"] == batch and setup["preprocessing"] == {"target_spacing": [1, 1, 1]}
        assert setup["orientation"] is None
        assert setup["labels"] == [{"value": 0, "name": "background"}, {"value": 1, "name": "a"}]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")  # now it resumes: held to batch 2
    plan.batch_3d = 4
    with pytest.raises(KeyboardInterrupt):
        run_module.execute_run(spec, prepared, tmp_path)  # type: ignore[arg-type]
    assert json.loads((tmp_path / "setup.json").read_text())["batch_size"] == 2


@pytest.mark.parametrize(("dims", "own_slices"), [("2d", True), ("3d", False)])
def test_a_worker_and_a_slurm_job_prepare_the_cache_their_run_reads(
        dims: str, own_slices: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started by `--jobs` and a SLURM job each prepare the task themselves: a 2D run of version 11
    asks for the cache that keeps each case's slices (`<hash>-2d/` where it differs), a 3D run does not."""
    from types import SimpleNamespace

    import submitit

    from medseg_bench.errors import DataError
    from medseg_bench.sweep import local, worker
    from medseg_bench.sweep.slurm import SlurmRun

    asked: list[bool] = []

    def prepare_locked(task: str, data_dir: Path, num_folds: int, progress: bool = False,
                       own_slices: bool = False, say: object = None) -> None:
        asked.append(own_slices)
        raise DataError("prepared far enough")

    monkeypatch.setattr(local, "prepare_locked", prepare_locked)
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: SimpleNamespace(job_id="7"))
    spec = RunSpec(task=TASK, dims=dims, arch="unet", loss="dice_ce", aug="none",
                   encoder="resnet18" if dims == "2d" else None)
    assert spec.own_slice_spacing is own_slices
    argv = ["--spec", json.dumps(spec.to_dict()), "--results-dir", str(tmp_path), "--data-dir", str(tmp_path)]
    assert worker.main(argv) == worker.EXIT_FAILED
    with pytest.raises(DataError, match="prepared far enough"):
        SlurmRun(spec.to_dict(), str(tmp_path), str(tmp_path), None)()
    assert asked == [own_slices, own_slices]


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # another run's last.ckpt copied into a run folder would have been trained on as this run
    import torch

    from medseg_bench import checkpoints, training
    from medseg_bench.sweep.worker import checkpoint_problem

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1)
    monkeypatch.setattr(training, "build_network", lambda spec, prepared: torch.nn.Identity())
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, checkpoints.RUN_ID_KEY: "other-run"}, ckpt)
    loads: list[bool] = []  # whether each load of it was mapped: it was read whole, then mapped again
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(bool(kwargs.get("mmap"))) or
                        real_load(*args, **kwargs))
    assert checkpoint_problem(spec, None, ckpt) == (
        f"{ckpt}: the weights of run other-run, not of run {spec.run_id}, whose folder it is in; delete it "
        f"to train run {spec.run_id} from scratch")
    torch.save({"state_dict": {}, checkpoints.RUN_ID_KEY: spec.run_id}, ckpt)
    assert checkpoint_problem(spec, None, ckpt) is None
    assert loads == [True, True]  # once each, mapped: Lightning's load to resume is the one full read


def test_each_attempt_records_the_machine_it_ran_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # env.json holds the last attempt's environment only: a run resumed with another thread count (another
    # --jobs) or on another CPU (a SLURM requeue onto other nodes), whose last bits then differ, left its
    # events naming only the code and packages of each attempt.
    from types import SimpleNamespace

    import torch

    from medseg_bench.provenance import ATTEMPT_FIELDS, attempt_record, cpu_model, environment
    from medseg_bench.run_folder import read_events
    from medseg_bench.sweep.worker import run_one

    given: list[object] = []
    monkeypatch.setattr("medseg_bench.run.execute_run", lambda *args: given.append(args[-1]) or {})
    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none")
    assert run_one(spec, SimpleNamespace(plan=None), tmp_path).kind == "done"
    start = read_events(run_dir(tmp_path, spec))[0]
    # env.json is written from the very record the event took (read once per attempt, not twice)
    assert len(given) == 1 and isinstance(given[0], dict)
    assert {key: start.get(key, "absent") for key in ATTEMPT_FIELDS} == attempt_record(given[0])
    recorded = ("git_revision", "source_diff", "versions", "python", "cpu", "cpu_capability", "isa_limits",
                "torch_threads", "gpu")
    env = environment()
    assert start["event"] == "start"
    assert {key: start.get(key, "absent") for key in recorded} == {key: env[key] for key in recorded}
    assert start["cpu"] == cpu_model() and start["torch_threads"] == torch.get_num_threads()
    assert start["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_a_skipped_run_says_when_it_trained_on_other_data_than_the_cache_holds(tmp_path: Path) -> None:
    # A sweep with another data dir (another subset, a relabelled case) skipped finished runs without a word.
    import os

    from medseg_bench.data.preprocess import source_digest
    from medseg_bench.sweep.worker import data_changed_since

    cache, run = tmp_path / "cache", tmp_path / "run"
    run.mkdir()

    def build(label_md5: str) -> None:
        cache.mkdir(exist_ok=True)
        for case in ("a", "b", "c"):
            label = label_md5 if case == "b" else f"lab-{case}"
            write_json_atomic(cache / f"{case}.json", {"case_id": case, "sources": {
                "image": {"md5": f"img-{case}"}, "label": {"md5": label}}})
        write_json_atomic(cache / "complete.json", {"label": label_md5})
        builds.append(label_md5)
        os.utime(cache / "complete.json", ns=(len(builds), len(builds)))  # a new build, a new time

    builds: list[str] = []

    build("lab-b")
    write_json_atomic(run / "splits.json", {"train": ["a", "c"], "val": ["b"]})
    assert data_changed_since(run, cache) is None  # a run started before setup.json recorded its data
    digest = source_digest(cache, ["a", "b", "c"])
    write_json_atomic(run / "setup.json", {"data": {"cases": 3, "digest": digest}})
    assert data_changed_since(run, cache) is None
    build("relabelled")
    now = source_digest(cache, ["a", "b", "c"])
    assert now != digest and data_changed_since(run, cache) == (
        f"trained on other data than the task's cache now holds (data {digest}, now {now}): it keeps its "
        "result (the report warns of runs on different data); sweep into another --results-dir to train it "
        "on this data")
    assert data_changed_since(run, tmp_path / "not-built") is None


def test_a_worker_that_died_without_a_word_is_named_by_its_signal_or_exit_code(tmp_path: Path) -> None:
    # "worker exited with code -9 (log: RUN/run.log)": a run.log that said nothing of a kill from outside.
    from medseg_bench.run_folder import write_status
    from medseg_bench.sweep.worker import failure_message

    output = tmp_path / "worker.log"
    assert failure_message(tmp_path, -9) == (
        "worker killed by SIGKILL (the kernel's out-of-memory killer sends it: see `dmesg`) before it "
        f"recorded an error (its output: {output}); the next sweep retries it")
    assert failure_message(tmp_path, -15).startswith("worker killed by SIGTERM before it recorded an error")
    assert failure_message(tmp_path, 3) == (f"worker exited with code 3 (its output: {output}; the run's "
                                            f"log: {tmp_path / 'run.log'})")
    write_status(tmp_path, "failed", error="training diverged")
    assert failure_message(tmp_path, -9) == "training diverged"  # what the run recorded comes first


def test_a_run_resumes_only_on_the_labels_it_started_with(tmp_path: Path) -> None:
    # Two label names swapped in the task file (its version kept): the run resumed, training each channel
    # as the other label, and predict painted them so.
    from types import SimpleNamespace

    from medseg_bench.regions import recorded_labels
    from medseg_bench.sweep.worker import setup_problem

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    split = {"train": ["a", "b", "c"], "val": ["d"]}
    plan = SimpleNamespace(patch_3d=(40, 56, 40), batch_3d=4, patch_2d=(64, 64), batch_2d=32)
    task = SimpleNamespace(labels={0: "background", 1: "Anterior", 2: "Posterior"}, version=1)
    prepared = SimpleNamespace(plan=plan, splits=[split], task=task)
    write_json_atomic(tmp_path / "splits.json", split)
    write_json_atomic(tmp_path / "setup.json", {"patch_size": [40, 56, 40], "batch_size": 4,
                                                "labels": recorded_labels(task)})
    assert setup_problem(spec, prepared, tmp_path) is None
    task.labels = {0: "background", 1: "Posterior", 2: "Anterior"}
    assert setup_problem(spec, prepared, tmp_path) == (
        f"{tmp_path / 'setup.json'}: the run trained on labels 0=background, 1=Anterior, 2=Posterior; the "
        "task file declares 0=background, 1=Posterior, 2=Anterior: restore the task file's labels, or delete "
        "the run folder to start over")
