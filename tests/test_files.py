"""The project's own files written atomically: a full disk, two writers, a killed writer's temp, a stop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def test_a_full_disk_names_the_file_not_written_and_leaves_no_temp(tmp_path: Path) -> None:
    from medseg_bench.files import private_temp, write_json_atomic

    private_temp(tmp_path / "summary.json").symlink_to("/dev/full")  # every write: ENOSPC, with no file name
    with pytest.raises(OSError) as info:
        write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert info.value.filename == str(tmp_path / "summary.json") and "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _write_often(path: Path, value: int, times: int) -> None:
    from medseg_bench.files import write_json_atomic

    for _ in range(times):
        write_json_atomic(path, {"writer": value, "padding": list(range(2000))})


def test_two_processes_writing_one_file_never_take_each_others_temp(tmp_path: Path) -> None:
    # `plan` beside a sweep, or SLURM jobs: with one shared temp name, one writer's rename moved the other's
    # half-written temp into place or away ("No such file or directory" on its own rename).
    import json
    import multiprocessing

    path = tmp_path / "plan.json"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_often, args=(path, value, 300)) for value in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
    assert [writer.exitcode for writer in writers] == [0, 0]
    assert json.loads(path.read_text())["writer"] in (1, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_a_temp_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess

    from medseg_bench.files import private_temp, write_json_atomic

    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone
    host = socket.gethostname()
    left = tmp_path / f".plan.json.{host}.{dead.pid}.tmp"
    others = [tmp_path / f".plan.json.{host}.{os.getppid()}.tmp",  # a live writer's
              tmp_path / f".plan.json.other-host.{dead.pid}.tmp",
              tmp_path / f".splits.json.{host}.{dead.pid}.tmp"]
    for temp in [left, *others]:
        temp.write_text("{half")
    write_json_atomic(tmp_path / "plan.json", {"a": 1})
    assert not left.exists() and all(temp.exists() for temp in others)
    assert not private_temp(tmp_path / "plan.json").exists()


def test_an_interrupted_csv_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    # The learning-curve CSVs of a resumed run (training.py) were written without clean-up: a SIGTERM there
    # left `logs/.metrics.csv.tmp` until the run resumed.
    import pandas as pd

    from medseg_bench.files import write_csv_atomic

    target = tmp_path / "metrics.csv"
    write_csv_atomic(pd.DataFrame({"epoch": [0]}), target)

    class _CutShort:
        def to_csv(self, path: Path, index: bool) -> None:
            Path(path).write_text("epoch\n0\n1")
            raise KeyboardInterrupt("SIGTERM")

    with pytest.raises(KeyboardInterrupt):
        write_csv_atomic(_CutShort(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"] and target.read_text() == "epoch\n0\n"


def test_a_long_file_name_gets_a_temp_name_that_fits(tmp_path: Path) -> None:
    # A case named with 240 characters: `.NAME.img.npy.HOST.PID.tmp` was "File name too long"; the next write
    # still removes a killed writer's temp of it.
    import subprocess

    from medseg_bench.files import NAME_MAX, private_temp, write_json_atomic

    path = tmp_path / ("é" * 120 + "x" * 7 + ".img.npy")  # 255 bytes, the most a name may have
    temp = private_temp(path)
    assert temp.name.startswith(".") and temp.name.endswith(".tmp") and len(temp.name.encode()) < NAME_MAX
    assert private_temp(path.with_name("é" * 120 + "y" * 7 + ".img.npy")) != temp  # a hash of the whole
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = temp.with_name(temp.name.replace(f".{os.getpid()}.tmp", f".{dead.pid}.tmp"))
    left.write_text("{half")
    write_json_atomic(path, {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_a_write_refused_names_the_file_not_its_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `plan --cpu` on a read-only data dir said '.plan.json.vm.4121.tmp: Read-only file system'.
    import errno

    from medseg_bench.files import atomic_binary, private_temp, write_json_atomic

    real_open = open

    def read_only(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if "w" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", read_only)
    path = tmp_path / "plan.json"
    for write in (lambda: write_json_atomic(path, {"a": 1}), lambda: atomic_binary(path).__enter__()):
        with pytest.raises(OSError) as info:
            write()
        assert info.value.errno == errno.EROFS and info.value.filename == str(path), info.value
    assert not private_temp(path).exists()


def test_json_nested_past_the_recursion_limit_is_malformed_json_not_a_traceback(tmp_path: Path) -> None:
    from medseg_bench.files import load_json_object
    from medseg_bench.run_folder import read_events, read_json

    path = tmp_path / "summary.json"
    path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")  # a results folder from someone else
    assert load_json_object(path) == (None, "not valid JSON (nested too deeply)")
    assert read_json(path) == {}
    (tmp_path / "events.jsonl").write_text("[" * 100_000 + "\n" + '{"event": "done"}\n')
    assert read_events(tmp_path) == [{"event": "done"}]
