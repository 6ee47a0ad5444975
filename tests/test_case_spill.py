"""A fold's held-out cases on disk while their postprocessing is decided."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg_bench.case_spill import SpilledArrays, spill_folder
from medseg_bench.errors import FileSystemError
from medseg_bench.files import private_temp


def test_spilled_arrays_read_back_each_case_as_written_and_rewritten(tmp_path: Path) -> None:
    arrays = SpilledArrays(tmp_path / "predictions")
    first, second = np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.ones((3, 3, 3), np.int16)
    arrays.append("case_a", first)
    arrays.append("case_b", second)
    assert len(arrays) == 2 and arrays.path(1) == tmp_path / "predictions" / "case_b.npy"
    read = arrays[0]
    assert np.array_equal(read, first) and read.dtype == np.uint8 and not read.flags.writeable
    assert [a.shape for a in arrays[1:]] == [(3, 3, 3)] and np.array_equal(list(arrays)[1], second)
    arrays[0] = first * 2  # renamed over the file: the array read before stays as it was
    assert np.array_equal(arrays[0], first * 2) and np.array_equal(read, first)
    made_for = SpilledArrays(tmp_path / "postprocessed", ["case_a", "case_b"])
    made_for[1] = second
    assert len(made_for) == 2 and np.array_equal(made_for[1], second)


def test_a_spilled_array_the_disk_refuses_is_one_line_naming_its_file(tmp_path: Path) -> None:
    arrays = SpilledArrays(tmp_path)
    private_temp(tmp_path / "case_a.npy").symlink_to("/dev/full")  # every write: ENOSPC, with no file name
    with pytest.raises(FileSystemError) as full:
        arrays.append("case_a", np.zeros((8, 8, 8), np.uint8))
    assert str(full.value) == f"{tmp_path / 'case_a.npy'}: not written (No space left on device)"
    assert list(tmp_path.iterdir()) == []  # its temp file removed


def test_a_spill_folder_is_emptied_first_and_removed_however_the_evaluation_ends(tmp_path: Path) -> None:
    folder = tmp_path / "run" / ".evaluation.partial"
    (folder / "predictions").mkdir(parents=True)
    (folder / "predictions" / "case_a.npy").write_text("a killed attempt's")
    with spill_folder(folder) as spill:
        assert spill == folder and list(folder.iterdir()) == []
        SpilledArrays(folder / "labels").append("case_a", np.zeros(3))
    assert not folder.exists()
    with pytest.raises(KeyboardInterrupt), spill_folder(folder):
        SpilledArrays(folder / "labels").append("case_a", np.zeros(3))
        raise KeyboardInterrupt
    assert not folder.exists() and (tmp_path / "run").is_dir()
    with spill_folder(None) as temporary:
        assert temporary.is_dir()
    assert not temporary.exists()
