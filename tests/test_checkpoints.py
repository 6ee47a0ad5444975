"""Checkpoints: written atomically (a full disk, a SIGTERM mid-write), read as tensors and plain data only."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_holding_code_is_refused_unread(tmp_path: Path) -> None:
    import pickle

    from medseg_bench.checkpoints import load_weights
    from medseg_bench.errors import DataError

    marker, ckpt = tmp_path / "ran", tmp_path / "last.ckpt"
    torch.save({"state_dict": _RunsCode(marker)}, ckpt)  # a torch archive whose pickle would run code
    marker.unlink(missing_ok=True)
    with pytest.raises(DataError, match="holds more than tensors and plain data; refused unread") as info:
        load_weights(torch.nn.Linear(1, 1), ckpt)
    assert "weights_only set to False" not in str(info.value) and not marker.exists()
    for content in (pickle.dumps({"state_dict": _RunsCode(marker)}), b"hello world, no checkpoint"):
        ckpt.write_bytes(content)  # raw bytes: once a bare "(101)" from a KeyError for the second
        with pytest.raises(DataError, match=r"last\.ckpt: not a loadable medseg-bench checkpoint "
                                            r"\(not a torch checkpoint archive; refused unread\)"):
            load_weights(torch.nn.Linear(1, 1), ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("entries", [{"notes.txt": b"hi"}, {"a/notes.txt": b"hi"}, {},
                                     {"a/version": b"3\n"}, {"a/.format_version": b"1", "a/data.pkl": b"x"}])
def test_a_zip_without_torchs_records_is_refused_unread_in_the_projects_words(
        tmp_path: Path, entries: dict[str, bytes]) -> None:
    # PyTorch's own text came through: 'Expected hasRecord("version") to be true, ... please report an
    # enhancement request to PyTorch'; an empty zip was read as a legacy pickle, called "more than tensors"
    import zipfile

    from medseg_bench.checkpoints import load_weights
    from medseg_bench.errors import DataError

    ckpt = tmp_path / "last.ckpt"
    with zipfile.ZipFile(ckpt, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(DataError) as info:
        load_weights(torch.nn.Linear(1, 1), ckpt)
    assert str(info.value) == (f"{ckpt}: not a loadable medseg-bench checkpoint (not a torch checkpoint "
                               "archive: a zip without torch's records; refused unread)")


def test_a_torch_archive_of_any_folder_name_or_version_record_is_loaded(tmp_path: Path) -> None:
    import io
    import zipfile

    from medseg_bench.checkpoints import load_weights

    net = torch.nn.Linear(1, 1)
    buffer = io.BytesIO()  # saved to a file object: its folder is "archive", not the file's name
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, buffer)
    saved = zipfile.ZipFile(buffer)
    ckpt = tmp_path / "last.ckpt"
    with zipfile.ZipFile(ckpt, "w") as archive:  # `.data/version`, which torch reads in place of `version`
        for name in saved.namelist():
            archive.writestr(name.replace("/version", "/.data/version"), saved.read(name))
    assert torch.equal(load_weights(torch.nn.Linear(1, 1), ckpt).weight, net.weight)


def test_a_checkpoint_of_another_network_says_which_weights_differ(tmp_path: Path) -> None:
    # it said "(Error(s) in loading state_dict for Linear:)", cut at the colon before the keys
    from medseg_bench.checkpoints import load_weights
    from medseg_bench.errors import DataError

    ckpt = tmp_path / "last.ckpt"
    other = torch.nn.Conv1d(1, 1, 1).state_dict()
    torch.save({"state_dict": {f"net.{k}": v for k, v in other.items()}}, ckpt)
    with pytest.raises(DataError) as info:
        load_weights(torch.nn.Linear(2, 1), ckpt)
    assert str(info.value).startswith(f"{ckpt}: not a loadable medseg-bench checkpoint (Error(s) in loading "
                                      "state_dict for Linear: size mismatch for weight")


def test_a_checkpoint_of_another_run_is_named_as_such(tmp_path: Path) -> None:
    from medseg_bench.checkpoints import RUN_ID_KEY, foreign_problem

    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, ckpt)  # written before checkpoints named their run: taken as it is
    assert foreign_problem(ckpt, "run-a") is None
    torch.save({"state_dict": {}, RUN_ID_KEY: "run-a"}, ckpt)
    assert foreign_problem(ckpt, "run-a") is None
    assert foreign_problem(ckpt, "run-b") == (f"{ckpt}: the weights of run run-a, not of run run-b, whose "
                                              "folder it is in")
    ckpt.write_bytes(b"junk")  # loading it says what is wrong
    assert foreign_problem(ckpt, "run-b") is None


def test_a_checkpoint_named_by_a_path_is_mapped(tmp_path: Path) -> None:
    # torch 2.1 maps only a file named by a str: given a Path, every mapped read failed ("f must be a string
    # filename"), taken for a damaged checkpoint: a resumed run's sampler started at epoch 0, a copied-in
    # checkpoint went unnamed, an unfinished run's epoch went unsaid
    from medseg_bench.checkpoints import mapped_checkpoint

    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 12, "state_dict": {"net.w": torch.arange(4.0)}}, ckpt)
    state = mapped_checkpoint(ckpt)
    assert state["global_step"] == 12 and torch.equal(state["state_dict"]["net.w"], torch.arange(4.0))


def test_resuming_reads_a_checkpoint_as_tensors_and_plain_data_only(tmp_path: Path) -> None:
    # Lightning resumes a run through its CheckpointIO; ours always loads with weights_only=True
    # (Lightning before 2.6 asks nothing, and torch before 2.6 then unpickles anything).
    import pickle

    from medseg_bench.checkpoints import AtomicCheckpointIO

    marker, ckpt = tmp_path / "ran", tmp_path / "last.ckpt"
    torch.save({"state_dict": _RunsCode(marker)}, ckpt)
    marker.unlink(missing_ok=True)
    for asked in ({}, {"weights_only": None}, {"weights_only": False}):
        with pytest.raises(pickle.UnpicklingError):
            AtomicCheckpointIO().load_checkpoint(ckpt, **asked)
    assert not marker.exists()
    AtomicCheckpointIO().save_checkpoint({"epoch": 3, "state_dict": {"net.w": torch.ones(2)}}, ckpt)
    assert AtomicCheckpointIO().load_checkpoint(ckpt)["state_dict"]["net.w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("full_at", [1, 3])
def test_a_full_disk_while_a_checkpoint_is_written_names_it_and_keeps_the_last_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full_at: int) -> None:
    # A write failing past torch.save's first made it raise its own RuntimeError ("unexpected pos 46 vs 0"),
    # the OSError only its context: a run on a full disk failed with that, naming no file and no full disk.
    import builtins
    import errno

    from medseg_bench import checkpoints

    ckpt = tmp_path / "last.ckpt"
    io = checkpoints.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3, "state_dict": {"net.w": torch.ones(2)}}, ckpt)

    class _Full:  # a file on a disk that fills up after a few writes, as write(2) reports it
        def __init__(self, path: Path, mode: str) -> None:
            self.file = builtins.open(path, mode)
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes < full_at:
                return self.file.write(data)
            self.file.write(bytes(data)[:8])
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            self.file.flush()

        def __enter__(self) -> _Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    monkeypatch.setattr(checkpoints, "open", _Full, raising=False)
    with pytest.raises(OSError) as info:
        io.save_checkpoint({"epoch": 4, "state_dict": {"net.w": torch.zeros(2)}}, ckpt)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(ckpt)  # not "unexpected pos"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left
    monkeypatch.undo()
    assert io.load_checkpoint(ckpt)["epoch"] == 3  # the last good checkpoint is untouched


def test_a_checkpoint_save_cut_by_sigterm_leaves_no_temp_file_and_the_last_one_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.save cut by the signal raises RuntimeError in the KeyboardInterrupt's place (a run records it as
    # its interruption: tests/test_run.py); the half-written temp file was left until the run resumed.
    from io import FileIO

    from medseg_bench import checkpoints, signals

    ckpt = tmp_path / "last.ckpt"
    io = checkpoints.AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 3, "state_dict": {"net.w": torch.ones(2)}}, ckpt)

    class _CutAtThirdWrite(FileIO):  # SIGTERM lands inside the third write
        writes = 0

        def write(self, data: object) -> int:
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().write(data)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoints, "open", lambda path, mode: _CutAtThirdWrite(path, mode), raising=False)
    with pytest.raises(BaseException) as cut, signals.interruptible():
        io.save_checkpoint({"epoch": 4, "state_dict": {"net.w": torch.zeros(1000)}}, ckpt)
    assert signals.is_stop(cut.value), cut.value
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left
    monkeypatch.undo()
    assert io.load_checkpoint(ckpt)["epoch"] == 3  # the last good checkpoint is untouched


def _saved(ckpt: Path, net: torch.nn.Module, run_id: str) -> None:
    """A checkpoint of `net` as Lightning writes one: its weights, the optimizer's state beside them."""
    from medseg_bench.checkpoints import RUN_ID_KEY

    moments = [{"exp_avg": torch.ones_like(p), "exp_avg_sq": torch.ones_like(p)} for p in net.parameters()]
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "global_step": 3,
                "optimizer_states": [{"state": dict(enumerate(moments))}], RUN_ID_KEY: run_id}, ckpt)


def test_a_resumes_check_loads_the_checkpoint_once_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # it was read whole (optimizer state and all) to check the weights, then mapped again to read its run,
    # before Lightning read it whole once more to resume
    from medseg_bench.checkpoints import resume_problem

    ckpt, saved = tmp_path / "last.ckpt", torch.nn.Linear(3, 2)
    _saved(ckpt, saved, "run-a")
    loads: list[dict[str, object]] = []
    real_load = torch.load

    def counted(*args: object, **kwargs: object) -> object:
        loads.append(kwargs)
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", counted)
    net = torch.nn.Linear(3, 2)
    assert resume_problem(net, ckpt, "run-a") is None
    assert torch.equal(net.weight, saved.weight)  # the weights checked by loading them
    assert [(kwargs.get("weights_only"), kwargs.get("mmap")) for kwargs in loads] == [(True, True)]
    loads.clear()
    assert resume_problem(torch.nn.Linear(3, 2), ckpt, "run-b") == (
        f"{ckpt}: the weights of run run-a, not of run run-b, whose folder it is in")
    assert len(loads) == 1


def test_a_resumes_check_refuses_as_loading_the_weights_does(tmp_path: Path) -> None:
    import pickle

    from medseg_bench.checkpoints import load_weights, resume_problem
    from medseg_bench.errors import DataError

    ckpt, marker = tmp_path / "last.ckpt", tmp_path / "ran"
    writes = [lambda: ckpt.write_bytes(b"\0not a checkpoint" * 10),  # refused unread
              lambda: torch.save({"state_dict": _RunsCode(marker)}, ckpt),  # code in a torch archive
              lambda: ckpt.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)})),
              lambda: _saved(ckpt, torch.nn.Conv1d(1, 1, 1), "run-a")]  # another network's weights
    for write in writes:
        write()
        marker.unlink(missing_ok=True)
        with pytest.raises(DataError) as info:
            load_weights(torch.nn.Linear(3, 2), ckpt)
        problem = resume_problem(torch.nn.Linear(3, 2), ckpt, "run-a")
        assert problem == str(info.value) and "not a loadable medseg-bench checkpoint" in problem
        assert not marker.exists()


def test_a_checkpoint_that_cannot_be_mapped_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a file system that cannot map a file: its run resumes all the same, as it did when it was read whole
    from medseg_bench.checkpoints import resume_problem

    ckpt, saved = tmp_path / "last.ckpt", torch.nn.Linear(3, 2)
    _saved(ckpt, saved, "run-a")
    real_load = torch.load

    def unmappable(*args: object, **kwargs: object) -> object:
        if kwargs.get("mmap"):
            raise OSError(19, "No such device")  # ENODEV: mmap on a file system that has none
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", unmappable)
    net = torch.nn.Linear(3, 2)
    assert resume_problem(net, ckpt, "run-a") is None and torch.equal(net.bias, saved.bias)
    assert resume_problem(torch.nn.Linear(3, 2), ckpt, "run-b") is not None
