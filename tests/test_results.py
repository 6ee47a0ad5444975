"""Results store: run states, heartbeat, events, temp-file cleanup, run folders in the way, the index (locks:
test_locks.py; a finished run read back: test_finished.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from medseg_bench.errors import ResultsError
from medseg_bench.files import write_json_atomic
from medseg_bench.locks import RunLock
from medseg_bench.results import (
    INDEX_NAME,
    check_run_folders,
    run_dir,
    run_state,
    write_index,
)
from medseg_bench.run_folder import append_event, read_events, write_heartbeat, write_status
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.dry_run import dry_run_lines
from medseg_bench.sweep.worker import Heartbeat, clean_temp_files
from tests.conftest import dice_means, fake_finished_run, finished_summary


class _Recorder:
    def __init__(self) -> None:
        self.epochs: list[tuple[int, float]] = []

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        self.epochs.append((epoch, val_dice))


def test_heartbeat_refreshes_and_forwards_epochs(tmp_path: Path) -> None:
    recorder = _Recorder()
    beat = Heartbeat(tmp_path, "r1", recorder, interval_s=0.05)
    beat.start()
    try:
        first = json.loads((tmp_path / "heartbeat.json").read_text())["time"]
        deadline = time.monotonic() + 10
        while json.loads((tmp_path / "heartbeat.json").read_text())["time"] == first:
            assert time.monotonic() < deadline, "the heartbeat thread never wrote again"
            time.sleep(0.02)
        beat.epoch_end("r1", 2, 5, 0.7, 0.4)
    finally:
        beat.stop()
    data = json.loads((tmp_path / "heartbeat.json").read_text())
    assert (data["epoch"], data["epochs"], data["val_dice"], data["pid"]) == (2, 5, 0.4, os.getpid())
    assert recorder.epochs == [(2, 0.4)]
    assert not list(tmp_path.glob(".*.tmp"))


def test_events_survive_a_torn_line(tmp_path: Path) -> None:
    append_event(tmp_path, "start")
    with open(tmp_path / "events.jsonl", "a") as fh:
        fh.write('{"event": "res')  # what a kill in the middle of a write could leave
    append_event(tmp_path, "done")
    assert [e["event"] for e in read_events(tmp_path)] == ["start", "done"]


def test_clean_temp_files_only_removes_temp_files(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    leftovers = [tmp_path / ".metrics.csv.tmp", tmp_path / "checkpoints" / ".last.ckpt.tmp"]
    keep = [tmp_path / "metrics.csv", tmp_path / "checkpoints" / "last.ckpt", tmp_path / ".lock"]
    for path in leftovers + keep:
        path.write_text("x")
    assert sorted(clean_temp_files(tmp_path)) == sorted(leftovers)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in leftovers)


def test_clean_temp_files_removes_a_killed_evaluations_spilled_cases(tmp_path: Path) -> None:
    """What `case_spill.spill_folder` held when the run was killed goes when the run is next taken up."""
    from medseg_bench.run_folder import SPILL_NAME

    spill = tmp_path / SPILL_NAME
    spill.mkdir()
    (spill / "case_001.pred.npy").write_bytes(b"x" * 100)
    (tmp_path / "metrics.csv").write_text("x")
    assert clean_temp_files(tmp_path) == [spill]
    assert not spill.exists() and (tmp_path / "metrics.csv").exists()


def _rebuild(results: str) -> int:
    for _ in range(5):
        write_index(Path(results))
    return 0


def test_index_is_rebuilt_from_the_folders_and_concurrent_writers_never_corrupt_it(tmp_path: Path) -> None:
    write_index(tmp_path)
    assert pd.read_parquet(tmp_path / INDEX_NAME).empty
    for seed in range(6):
        fake_finished_run(tmp_path, seed)
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(_rebuild, [str(tmp_path)] * 4)) == [0] * 4
    table = pd.read_parquet(tmp_path / INDEX_NAME)
    assert len(table) == 12 and table["run_id"].nunique() == 6
    assert sorted(table.loc[table["case"] == "b", "dice"]) == [s / 10 for s in range(6)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rebuilding_the_index_removes_the_temp_a_killed_sweep_left(tmp_path: Path) -> None:
    # A sweep killed (-9) while it wrote the index left `.index.parquet.HOST.PID.tmp`: nothing removed it.
    import socket

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone
    left = tmp_path / f".{INDEX_NAME}.{socket.gethostname()}.{dead.pid}.tmp"
    left.write_bytes(b"PAR1 cut short")
    write_index(tmp_path)
    assert not left.exists() and pd.read_parquet(tmp_path / INDEX_NAME).empty


def test_run_files_of_the_wrong_json_shape_are_no_crash(tmp_path: Path) -> None:
    from medseg_bench.results import run_state
    from medseg_bench.run_folder import is_live, read_status

    folder = tmp_path / "T" / "r"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('"done"')
    (folder / "events.jsonl").write_text('42\n{"event": "start", "time": "soon"}\n')
    (folder / "heartbeat.json").write_text('{"time": null}')
    assert read_status(folder) == {"state": "pending"} and read_events(folder) == [
        {"event": "start", "time": "soon"}]
    assert not is_live(folder) and run_state(folder) == "pending"


def test_run_settings_fill_in_what_a_spec_left_to_defaults_or_the_plan() -> None:
    from medseg_bench.results import run_settings

    written = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none").to_dict()
    older = {k: v for k, v in written.items() if k not in ("tta", "postprocess", "class_weights")}
    summary = {"plan": {"patch_3d": [40, 56, 40], "batch_3d": 2}}
    assert run_settings(older, summary) == run_settings(written, summary)  # keys added later: their defaults
    settings = run_settings(written, summary)
    assert settings["lr"] == 3e-3 and settings["patch_size"] == [40, 56, 40] and settings["batch_size"] == 2
    assert run_settings({**written, "lr": 3e-3}, summary) == settings


def test_run_settings_tell_region_runs_from_label_runs() -> None:
    """`target` is one of the settings the report tells runs apart by (`[target=regions]`); a spec.json
    without it (every label run's: it is written only for regions) is a label run's."""
    from medseg_bench.results import run_settings

    labels = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none").to_dict()
    regions = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none",
                      target="regions").to_dict()
    summary = {"plan": {"patch_3d": [40, 56, 40], "batch_3d": 2}}
    assert "target" not in labels and run_settings(labels, summary)["target"] == "labels"
    assert run_settings(regions, summary) == {**run_settings(labels, summary), "target": "regions"}


def test_runs_trained_on_another_preprocessing_are_told_apart() -> None:
    # A plan.json edited between two seeds (another target spacing, normalisation or crop: another cache)
    # pooled both into one leaderboard row.
    from medseg_bench.results import run_settings

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none").to_dict()
    plan = {"patch_3d": [40, 56, 40], "batch_3d": 2, "target_spacing": [1.0, 1.0, 1.0],
            "normalization": "per_channel", "crop_to_nonzero": True,
            "channel_normalization": [{"scheme": "zscore", "nonzero_mask": False}]}
    first = run_settings(spec, {"plan": plan})
    assert first["target_spacing"] == [1.0, 1.0, 1.0] and first["preprocessing"] is not None
    assert run_settings({**spec, "seed": 1}, {"plan": dict(plan)}) == first
    spaced = run_settings(spec, {"plan": plan | {"target_spacing": [1.5, 1.5, 1.5]}})
    assert spaced["target_spacing"] == [1.5, 1.5, 1.5] and spaced["preprocessing"] == first["preprocessing"]
    masked = run_settings(spec, {"plan": plan | {"channel_normalization": [{"scheme": "zscore",
                                                                            "nonzero_mask": True}]}})
    assert masked["preprocessing"] != first["preprocessing"]


def test_the_index_holds_tasks_with_and_without_named_regions(tmp_path: Path) -> None:
    # Task09-like labels read as numbers, Task01-like ones with region names as text: one index all the same.
    for task, labels in (("T9", ["1", "1"]), ("T1", ["1", "whole"])):
        spec = RunSpec(task=task, dims="3d", arch="unet", loss="dice_ce", aug="none")
        folder = tmp_path / task / spec.run_id
        folder.mkdir(parents=True)
        write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
        pd.DataFrame({"case": ["a", "b"] if task == "T9" else ["a", "a"], "label": labels, "dice": [0.5, 0.6],
                      "ref_empty": False, "pred_empty": False}).to_csv(folder / "metrics.csv", index=False)
        write_json_atomic(folder / "summary.json", finished_summary(
            run_id=spec.run_id, num_cases=2 if task == "T9" else 1, per_label_dice=dice_means(folder)))
        write_status(folder, "done")
    write_index(tmp_path)
    index = pd.read_parquet(tmp_path / INDEX_NAME)
    assert sorted(index["label"]) == ["1", "1", "1", "whole"] and set(index["task"]) == {"T1", "T9"}


@pytest.mark.parametrize("caller", ["sweep", "dry run", "slurm"])
@pytest.mark.parametrize("in_the_way", ["run", "task"])
def test_a_file_where_a_run_folder_goes_stops_before_any_run(tmp_path: Path, caller: str,
                                                             in_the_way: str) -> None:
    # Each such run failed with "RUN: File exists" (exit 7) and the summary counted it "stopped while
    # training"; the dry run listed it as pending; SLURM submission failed on it after submitting the others.
    from medseg_bench.progress import PlainReporter
    from medseg_bench.sweep import local
    from medseg_bench.sweep.slurm import SlurmOptions, submit

    results = tmp_path / "results"
    runs = [RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=1, seed=seed)
            for seed in (0, 1)]
    folder = run_dir(results, runs[1])
    blocker = folder if in_the_way == "run" else folder.parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    with pytest.raises(ResultsError) as error:
        if caller == "sweep":
            local._finished(runs, results, tmp_path / "data", PlainReporter(), {})
        elif caller == "dry run":
            dry_run_lines(runs, results, tmp_path / "data")
        else:
            submit(runs, results, tmp_path / "data", SlurmOptions(), say=lambda line: None)
    if in_the_way == "run":
        assert str(error.value) == (f"{folder}: not a run folder (a file is where run {runs[1].run_id} keeps "
                                    "its results); move it away")
    else:
        assert str(error.value) == (f"{blocker}: not a folder (run {runs[0].run_id} keeps its results in "
                                    f"{run_dir(results, runs[0])}); move it away")
    assert blocker.read_text() == "not a folder"
    written = sorted(path for path in results.rglob("*") if path.name != ".slurm-submit.lock")
    assert written == sorted({blocker, blocker.parent} - {results})  # no run folder, no queued file


def test_a_results_dir_that_is_a_file_is_left_to_check_results_dir(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.write_text("a file")
    check_run_folders(results, [RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")])


def test_run_states(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    assert run_state(folder) == "pending"
    write_status(folder, "running")
    assert run_state(folder) == "pending"  # running, but nobody holds it and no checkpoint: starts over
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert run_state(folder) == "partial"
    with RunLock(folder) as lock:
        assert lock.acquire()
        assert run_state(folder) == "running"
    write_heartbeat(folder)  # a fresh heartbeat from this host without the lock: its process is gone
    assert run_state(folder) == "partial"
    beat = json.loads((folder / "heartbeat.json").read_text())
    write_json_atomic(folder / "heartbeat.json", {**beat, "host": "elsewhere"})
    assert run_state(folder) == "running"  # another host's fresh heartbeat counts
    write_json_atomic(folder / "heartbeat.json", {**beat, "host": "elsewhere", "time": time.time() - 3600})
    assert run_state(folder) == "partial"  # ... a stale one does not
    write_status(folder, "failed", error="boom")
    assert run_state(folder) == "failed"
    with RunLock(folder) as lock:  # another sweep retrying it: said "failed" until its attempt had started
        assert lock.acquire()
        assert run_state(folder) == "running"
    write_json_atomic(folder / "heartbeat.json", {**beat, "host": "elsewhere"})  # the failed attempt's last
    assert run_state(folder) == "failed"


def test_queued_until_an_attempt_starts(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    write_json_atomic(folder / "queued.json", {"job_id": "7_0", "time": time.time()})
    assert run_state(folder) == "queued"
    time.sleep(0.01)
    append_event(folder, "start")
    assert run_state(folder) == "pending"


def test_two_index_rebuilds_at_once_leave_the_later_runs_in(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # A rebuild that read the run folders, then wrote after another process's newer index (a sweep finishing
    # a run meanwhile), left that run out of index.parquet until the next rebuild.
    import threading

    import medseg_bench.results as results

    reading, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def load(results_dir: Path, skip_damaged: object = None, reads: object = None) -> pd.DataFrame:
        calls.append(len(calls))
        if len(calls) == 1:  # the slow rebuild: it has read 1 run
            reading.set()
            assert release.wait(30)
            return pd.DataFrame({"run_id": ["a"]})
        return pd.DataFrame({"run_id": ["a", "b"]})  # read after the second run finished

    monkeypatch.setattr(results, "load_results", load)
    slow = threading.Thread(target=write_index, args=(tmp_path,))
    slow.start()
    assert reading.wait(30)
    later = threading.Thread(target=write_index, args=(tmp_path,))
    later.start()
    time.sleep(0.5)  # without a lock the later rebuild has written its index by now
    release.set()
    slow.join(30)
    later.join(30)
    assert sorted(pd.read_parquet(tmp_path / INDEX_NAME)["run_id"]) == ["a", "b"]


@pytest.mark.parametrize("join_every", [2, 64])
def test_load_results_joins_the_runs_as_concatenating_each_with_its_columns_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, join_every: int) -> None:
    # load_results set 17 columns on each run's frame before concatenating them all (5 s of a report of 1000
    # runs; the 1000 frames held 50 MB for 8 MB of rows); it now joins the frames a few at a time as it reads
    # them and sets those columns once on the table. The table is the same, column order and dtypes included:
    # runs with and without an encoder (text and None), one scored before two metrics existed (their columns
    # first appear with a later run), a cost not measured (None), a column of its own, an empty table.
    import math

    from medseg_bench import results as results_module

    monkeypatch.setattr(results_module, "JOIN_EVERY", join_every)

    from medseg_bench.finished import read_finished_run
    from medseg_bench.results import load_results, run_settings
    from tests.report.fake_results import drop_metric_column, write_fake_results

    results = write_fake_results(tmp_path / "results")
    first = sorted((results / "Task90_Alpha").iterdir())[0]
    drop_metric_column(first, "nsd")
    drop_metric_column(first, "hd")
    for seed in range(3):
        fake_finished_run(results, seed)
    plain, extra, empty = sorted((results / "T").iterdir())
    write_json_atomic(plain / "summary.json", finished_summary(
        run_id=plain.name, num_cases=2, cost={"params": None, "device": None, "time_per_epoch_s": None},
        per_label_dice=dice_means(plain)))
    (extra / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty,extra\na,1,,True,True,1\n"
                                       "b,1,0.5,false,FALSE,2\n")
    write_json_atomic(extra / "summary.json", finished_summary(run_id=extra.name, num_cases=2,
                                                               per_label_dice=dice_means(extra)))
    (empty / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\n")
    write_json_atomic(empty / "summary.json", finished_summary(run_id=empty.name, num_cases=0,
                                                               per_label_dice={}))
    frames = []
    for folder in sorted(p.parent for p in results.glob("*/*/spec.json")):
        spec, summary, frame = read_finished_run(folder)
        frame.insert(0, "run_id", folder.name)
        cost = summary.get("cost", {})
        for key in ("task", "dims", "arch", "encoder", "loss", "aug"):
            frame[key] = spec.get(key)
        for key, value in [*((k, spec.get(k)) for k in ("fold", "seed", "epochs", "max_minutes")),
                           *((k, cost.get(k)) for k in ("params", "train_time_s", "time_per_epoch_s",
                                                        "peak_memory_mb"))]:
            frame[key] = math.nan if value is None else value
        frame["device"] = cost.get("device")
        frame["run_settings"] = json.dumps(run_settings(spec, summary), sort_keys=True)
        frames.append(frame)
    import warnings

    with warnings.catch_warnings():  # pandas 2 warns of the empty frame's all-NA columns
        warnings.simplefilter("ignore", FutureWarning)
        expected = pd.concat(frames, ignore_index=True)
    expected["encoder"] = expected["encoder"].fillna("")
    joins: list[int] = []
    concat = pd.concat
    monkeypatch.setattr(pd, "concat", lambda objs, **kw: joins.append(len(objs)) or concat(objs, **kw))
    table = load_results(results)
    monkeypatch.setattr(pd, "concat", concat)
    assert max(joins) <= max(join_every, math.ceil(len(frames) / join_every))  # never every run's at once
    pd.testing.assert_frame_equal(table, expected, check_exact=True)
    columns = list(table.columns)  # a column first seen with a later run: after the run columns
    assert columns.index("run_settings") < columns.index("extra") < columns.index("jaccard")
    assert table.attrs["absent_metrics"][f"Task90_Alpha/{first.name}"] == ["hd", "nsd"]
