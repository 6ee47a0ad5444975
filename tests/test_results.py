"""Results store: per-run locks (also across a kill -9), heartbeat, events, temp-file cleanup, the index."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from medseg_bench.data.io import write_json_atomic
from medseg_bench.errors import ResultsError
from medseg_bench.locks import RunLock, is_locked
from medseg_bench.results import (
    INDEX_NAME,
    append_event,
    check_run_folders,
    checked_state,
    load_results,
    read_events,
    run_dir,
    run_state,
    write_heartbeat,
    write_index,
    write_status,
)
from medseg_bench.spec import RunSpec
from medseg_bench.sweep.dry_run import dry_run_lines
from medseg_bench.sweep.worker import Heartbeat, clean_temp_files
from tests.conftest import finished_summary


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    assert not is_locked(tmp_path)
    assert first.acquire()
    assert is_locked(tmp_path) and not second.acquire()
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())
    first.release()
    assert not is_locked(tmp_path) and second.acquire()
    second.release()


def test_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from medseg_bench.locks import RunLock; "
            "assert RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert is_locked(tmp_path) and not RunLock(tmp_path).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        lock = RunLock(tmp_path)
        assert lock.acquire()  # no stale-lock cleanup needed: the kernel dropped it
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_forked_child_does_not_keep_a_killed_parents_lock(tmp_path: Path) -> None:
    # DataLoader workers are forked while a run's lock is held; they used to hold it for ~5 s after the
    # sweep was killed, so an immediate rerun skipped the run as "running in another process".
    code = ("import os, sys, time; from pathlib import Path; from medseg_bench.locks import RunLock\n"
            "assert RunLock(Path(sys.argv[1])).acquire()\n"
            "child = os.fork()\n"
            "if child == 0:\n    os.write(1, b'child ready\\n'); time.sleep(60); os._exit(0)\n"
            "os.write(1, f'{child}\\n'.encode()); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert holder.stdout is not None
        # both lines, in either order: the child has run its fork handler (which closes its copy of the lock)
        # once it prints; killing the parent before that left the lock held a moment longer on a busy machine.
        # One os.write a line: print() could interleave the two ("11493child ready", then the newline).
        lines = [holder.stdout.readline().strip() for _ in range(2)]
        child = int(next(line for line in lines if line.isdigit()))
        assert is_locked(tmp_path)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # the forked child lives on
        assert not is_locked(tmp_path) and RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
        if child:
            os.kill(child, signal.SIGKILL)


def test_a_probe_does_not_make_a_real_attempt_fail(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            is_locked(tmp_path)

    (tmp_path / ".lock").touch()
    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(200):
            lock = RunLock(tmp_path)
            assert lock.acquire()
            lock.release()
    finally:
        stop.set()
        prober.join()


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


def _fake_run(results: Path, seed: int) -> None:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed)
    folder = results / "T" / spec.run_id
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    frame = pd.DataFrame({"case": ["a", "b"], "label": [1, 1], "dice": [0.5, seed / 10], "ref_empty": False,
                          "pred_empty": False})
    frame.to_csv(folder / "metrics.csv", index=False)
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id, num_cases=2))
    write_status(folder, "done")
    append_event(folder, "done")


def _rebuild(results: str) -> int:
    for _ in range(5):
        write_index(Path(results))
    return 0


def test_index_is_rebuilt_from_the_folders_and_concurrent_writers_never_corrupt_it(tmp_path: Path) -> None:
    write_index(tmp_path)
    assert pd.read_parquet(tmp_path / INDEX_NAME).empty
    for seed in range(6):
        _fake_run(tmp_path, seed)
    with ProcessPoolExecutor(2) as pool:
        assert list(pool.map(_rebuild, [str(tmp_path)] * 4)) == [0] * 4
    table = pd.read_parquet(tmp_path / INDEX_NAME)
    assert len(table) == 12 and table["run_id"].nunique() == 6
    assert sorted(table.loc[table["case"] == "b", "dice"]) == [s / 10 for s in range(6)]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_rebuilding_the_index_removes_the_temp_a_killed_sweep_left(tmp_path: Path) -> None:
    # A sweep killed (-9) while it wrote the index left `.index.parquet.HOST.PID.tmp`: nothing removed it.
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone
    left = tmp_path / f".{INDEX_NAME}.{socket.gethostname()}.{dead.pid}.tmp"
    left.write_bytes(b"PAR1 cut short")
    write_index(tmp_path)
    assert not left.exists() and pd.read_parquet(tmp_path / INDEX_NAME).empty


HEADER = "case,label,dice,ref_empty,pred_empty\n"
_SPEC = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=1).to_dict()


@pytest.mark.parametrize(("name", "damage", "problem"), [
    # A damaged status file once made a finished run "pending": trained again, its summary replaced.
    ("status.json", "{", "not valid JSON"),
    ("status.json", "[]", "not a JSON object, but the run finished"),
    ("status.json", '{"state": "running"}', "says 'running', but events.jsonl records that the run finished"),
    ("spec.json", "{", "not valid JSON"),
    ("spec.json", "[]", "not a JSON object"),
    ("spec.json", '{"task": "T"}', "lacks dims, arch, loss, aug"),
    ("summary.json", "", "not valid JSON"),
    ("metrics.csv", "x,y\n1,2\n", "lacks the column(s) case, label, dice, ref_empty, pred_empty"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\n", "has 1 rows, summary.json counts 2 (cases x labels)"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,0.", "a row is cut short"),
    # Text among the scores once crashed report (a traceback) while sweep and status called the run done.
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,abc,False,False\n",
     "dice is 'abc' in row 2, not a number"),
    ("metrics.csv", HEADER + "a,1,True,False,False\nb,1,False,False,False\n",
     "dice is 'True' in row 1, not a number"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,0.5,no,False\n",
     "ref_empty is 'no' in row 2, not True or False"),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,far,False,False",
     "hd95 is 'far' in row 2, not a number"),
    # Scores a metric cannot take ranked their configuration first (inf) or were averaged in (a Dice of 5).
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,inf,False,False\n",
     "dice is 'inf' in row 2, not a score from 0 to 1"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,5,False,False\n",
     "dice is '5.0' in row 2, not a score from 0 to 1"),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,-1,False,False",
     "hd95 is '-1' in row 2, not a finite value of at least 0"),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,-inf,False,False",
     "hd95 is '-inf' in row 2, not a finite value of at least 0"),
    # A spec.json field of the wrong type crashed status and the index (pyarrow), and report (pandas).
    *[("spec.json", json.dumps(_SPEC | fields), problem) for fields, problem in [
        ({"fold": "0"}, "'fold' must be a whole number, not \"0\""),
        ({"arch": ["unet"]}, "'arch' must be text, not [\"unet\"]"),
        ({"encoder": 5}, "'encoder' must be text or null, not 5"),
        ({"pipeline_version": "x"}, "'pipeline_version' must be a whole number, not \"x\""),
        ({"lr": True}, "'lr' must be a number or null, not true"),
        ({"fold": 7}, "fold 7 outside 0..4"),
        ({"colour": "red"}, "unknown key(s) colour"),
    ]],
    # A summary.json field of the wrong type crashed report, status and sweep (one such run stopped a sweep).
    *[("summary.json", json.dumps(finished_summary(**{"num_cases": 2, **fields})), problem)
      for fields, problem in [
          ({"cost": "zzz"}, "'cost' must be an object, not \"zzz\""),
          ({"cost": None}, "'cost' must be an object, not null"),
          ({"per_label_dice": 5}, "'per_label_dice' must be an object, not 5"),
          ({"num_cases": "2"}, "'num_cases' must be a whole number, not \"2\""),
          ({"num_cases": None}, "'num_cases' must be a whole number, not null"),
          ({"cost": {"params": "24M"}}, "'cost.params' must be a number, not \"24M\""),
          ({"cost": {"train_time_s": True}}, "'cost.train_time_s' must be a number, not true"),
          ({"cost": {"device": 0}}, "'cost.device' must be text, not 0"),
          ({"metric_settings": "area"}, "'metric_settings' must be an object, not \"area\""),
          ({"plan": [40, 56, 40]}, "'plan' must be an object, not [40, 56, 40]"),
          ({"plan": {"patch_3d": 40}}, "'plan.patch_3d' must be 3 positive whole numbers, not 40"),
          ({"plan": {"patch_2d": [64, "64"]}},
           "'plan.patch_2d' must be 2 positive whole numbers, not [64, \"64\"]"),
          ({"plan": {"batch_3d": 0}}, "'plan.batch_3d' must be a positive whole number, not 0"),
          ({"per_label_dice": None}, "'per_label_dice' must be an object, not null"),
          ({"plan": {"patch_2d": None}}, "'plan.patch_2d' must be 2 positive whole numbers, not null"),
      ]],
    # A summary emptied or cut down to a few fields read as a finished run (every version wrote these).
    ("summary.json", '{"state": "done"}', "lacks 'run_id', which every finished run writes"),
    *[("summary.json", json.dumps({k: v for k, v in finished_summary(num_cases=2).items() if k != key}),
       f"lacks {key!r}, which every finished run writes") for key in ("num_cases", "per_label_dice", "plan")],
    ("summary.json", json.dumps(finished_summary(num_cases=2) | {"cost": {"device": "cpu"}}),
     "lacks 'cost.params', which every finished run writes"),
    ("summary.json", json.dumps(finished_summary(num_cases=2) | {"plan": {"patch_3d": [8, 8, 8]}}),
     "lacks 'plan.batch_3d', which every finished run writes"),
])
def test_a_damaged_finished_run_is_named_never_read_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: str, problem: str) -> None:
    for seed in range(3):
        _fake_run(tmp_path, seed)
    damaged = sorted((tmp_path / "T").iterdir())[1]
    (damaged / name).write_text(damage)
    with pytest.raises(ResultsError) as info:
        load_results(tmp_path)
    assert str(info.value).startswith(f"{damaged / name}: {problem}")
    state, named = checked_state(damaged)  # status and SLURM submission agree
    assert state == "damaged" and named is not None and named.startswith(f"{damaged / name}: {problem}")
    if name == "summary.json":  # read without metrics.csv too: a sweep's worker and its dry run agree
        from medseg_bench.results import finished_damage, run_state

        assert finished_damage(damaged) == named and run_state(damaged) == "damaged"
    assert checked_state(sorted((tmp_path / "T").iterdir())[0]) == ("done", None)
    assert str(info.value).endswith("move its run folder away to report without it, or delete the folder to "
                                    "run it again")
    skipped: list[str] = []
    table = load_results(tmp_path, skip_damaged=skipped.append)  # the index: the others, and a warning
    assert table["run_id"].nunique() == 2 and damaged.name not in set(table["run_id"])
    assert skipped == [str(info.value)]
    write_index(tmp_path)
    assert f"warning: {info.value}" in capsys.readouterr().err
    assert set(pd.read_parquet(tmp_path / INDEX_NAME)["run_id"]) == set(table["run_id"])


def test_empty_scores_and_null_or_absent_summary_fields_are_no_damage(tmp_path: Path) -> None:
    # An empty cell is a score both empty masks leave undefined (NaN); summary fields older versions did not
    # write (tta, postprocessing, some costs), or costs they wrote as null (not measured), are fine too.
    for seed in range(2):
        _fake_run(tmp_path, seed)
    first, second = sorted((tmp_path / "T").iterdir())
    (first / "metrics.csv").write_text(HEADER + "a,1,,True,True\nb,1,0.5,false,FALSE\n")
    cost = {"params": None, "peak_memory_mb": 1.5e3, "device": None, "time_per_epoch_s": None}
    summary = finished_summary(num_cases=2, cost=cost)
    assert "tta" not in summary and "postprocessing" not in summary and "first_step_at" not in summary["cost"]
    write_json_atomic(second / "summary.json", summary)
    assert checked_state(first) == ("done", None) and checked_state(second) == ("done", None)
    table = load_results(tmp_path)
    assert table["dice"].isna().sum() == 1 and table["run_id"].nunique() == 2
    # absent numbers are NaN in number columns (None made them object columns under pandas 3)
    numbers = ["fold", "seed", "epochs", "max_minutes", "params", "train_time_s", "time_per_epoch_s",
               "peak_memory_mb"]
    assert [c for c in numbers if table[c].dtype.kind not in "if"] == []


@pytest.mark.parametrize("name", ["status.json", "spec.json", "metrics.csv", "summary.json"])
def test_a_finished_run_that_lost_a_file_is_named_not_dropped(tmp_path: Path, name: str) -> None:
    from medseg_bench.results import finished_damage, run_state

    for seed in range(2):
        _fake_run(tmp_path, seed)
    damaged = sorted((tmp_path / "T").iterdir())[1]
    (damaged / name).unlink()
    problem = f"{damaged / name}: missing, but the run finished"
    assert finished_damage(damaged) == problem and run_state(damaged) == "damaged"
    with pytest.raises(ResultsError, match="^" + re.escape(problem)):
        load_results(tmp_path)


def test_run_files_of_the_wrong_json_shape_are_no_crash(tmp_path: Path) -> None:
    from medseg_bench.results import is_live, read_status, run_state

    folder = tmp_path / "T" / "r"
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('"done"')
    (folder / "events.jsonl").write_text('42\n{"event": "start", "time": "soon"}\n')
    (folder / "heartbeat.json").write_text('{"time": null}')
    assert read_status(folder) == {"state": "pending"} and read_events(folder) == [
        {"event": "start", "time": "soon"}]
    assert not is_live(folder) and run_state(folder) == "pending"


def test_exclusive_serialises_processes(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from medseg_bench.locks import exclusive\n"
            "with exclusive(Path(sys.argv[1])):\n"
            "    open(sys.argv[2], 'a').write('in\\n'); time.sleep(0.3)\n"
            "    open(sys.argv[2], 'a').write('out\\n')")
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d"), str(log)]) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    assert log.read_text().split() == ["in", "out"] * 3  # never two inside at once


def test_run_settings_fill_in_what_a_spec_left_to_defaults_or_the_plan() -> None:
    from medseg_bench.results import run_settings

    written = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none").to_dict()
    older = {k: v for k, v in written.items() if k not in ("tta", "postprocess", "class_weights")}
    summary = {"plan": {"patch_3d": [40, 56, 40], "batch_3d": 2}}
    assert run_settings(older, summary) == run_settings(written, summary)  # keys added later: their defaults
    settings = run_settings(written, summary)
    assert settings["lr"] == 3e-3 and settings["patch_size"] == [40, 56, 40] and settings["batch_size"] == 2
    assert run_settings({**written, "lr": 3e-3}, summary) == settings


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
            num_cases=2 if task == "T9" else 1, per_label_dice={label: 0.5 for label in labels}))
        write_status(folder, "done")
    write_index(tmp_path)
    index = pd.read_parquet(tmp_path / INDEX_NAME)
    assert sorted(index["label"]) == ["1", "1", "1", "whole"] and set(index["task"]) == {"T1", "T9"}


@pytest.mark.parametrize("name", ["spec.json", "summary.json"])
def test_a_finished_runs_json_cut_short_is_damage(tmp_path: Path, name: str) -> None:
    from medseg_bench.results import finished_damage, run_state

    _fake_run(tmp_path, 0)
    (folder,) = (tmp_path / "T").iterdir()
    (folder / name).write_text((folder / name).read_text()[:20])
    assert (finished_damage(folder) or "").startswith(f"{folder / name}: not valid JSON")
    assert run_state(folder) == "damaged"


def test_a_finished_runs_spec_edited_after_the_run_is_damaged_an_older_versions_is_not(
        tmp_path: Path) -> None:
    # spec.json edited (epochs 10 -> 5, still a valid spec): sweep skipped it as done for --epochs 10, while
    # the report pooled and labelled it as a 5-epoch run.
    from medseg_bench.spec import spec_hash_of

    for seed in range(2):
        _fake_run(tmp_path, seed)
    edited, renamed = sorted((tmp_path / "T").iterdir())
    spec = json.loads((edited / "spec.json").read_text())
    write_json_atomic(edited / "spec.json", spec | {"epochs": 5})
    expected = spec_hash_of({k: v for k, v in (spec | {"epochs": 5}).items() if k != "run_id"})
    state, damage = checked_state(edited)
    assert state == "damaged"
    assert damage == (f"{edited / 'spec.json'}: edited after the run: its settings hash to {expected}, its "
                      f"run id ends in {edited.name[-10:]}")
    write_json_atomic(edited / "spec.json", spec)
    assert checked_state(edited)[0] == "done"
    moved = renamed.parent / "3d-unet-dice_ce-none-f0-s1-0000000000"
    renamed.rename(moved)
    assert checked_state(moved)[1] == (f"{moved / 'spec.json'}: its run_id \"{renamed.name}\" is not its "
                                       "folder's name")
    moved.rename(renamed)
    # A run of an older version: its spec.json lacks the keys added since, and its id hashes what it holds.
    old = {k: v for k, v in spec.items() if k not in ("run_id", "postprocess", "tta", "class_weights")}
    old["pipeline_version"] = 3
    old_id = f"3d-unet-dice_ce-none-f0-s0-{spec_hash_of(old)}"
    edited.rename(edited.parent / old_id)
    write_json_atomic(edited.parent / old_id / "spec.json", {"run_id": old_id, **old})
    assert checked_state(edited.parent / old_id)[0] == "done"
    assert load_results(tmp_path)["run_id"].nunique() == 2


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

    def load(results_dir: Path, skip_damaged: object = None) -> pd.DataFrame:
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
