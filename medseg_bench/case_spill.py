"""A fold's held-out cases on disk while their postprocessing is decided: one `.npy` per case, read back
memory-mapped when a step needs it, so an evaluation holds one case at a time, as nnU-Net decides from the
fold's predictions written to disk. Held in memory, a CT fold's label maps and predictions (26 cases of
512 x 512 x 400 voxels) were about 5 GiB beside the inference of its last case.

The folder is the evaluation's alone: emptied before it is written (what a killed attempt left is never read)
and removed when the evaluation ends, however it ends (`spill_folder`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import overload

import numpy as np

from medseg_bench.errors import FileSystemError
from medseg_bench.files import atomic_binary


class SpilledArrays(Sequence[np.ndarray]):
    """One array per case, `FOLDER/<case>.npy`: `cases`, those it is made for, written by index, then those
    appended. An item is read when asked for, memory-mapped and read-only; `self[i] = array` writes one
    whole (a temp file renamed over it, so an array read from the old file before stays as it was). A write
    the disk refuses is a FileSystemError naming the file."""

    def __init__(self, folder: Path, cases: Sequence[str] = ()) -> None:
        self.folder = folder
        self.cases = list(cases)
        folder.mkdir(parents=True, exist_ok=True)

    def append(self, case_id: str, array: np.ndarray) -> None:
        self.cases.append(case_id)
        self[len(self.cases) - 1] = array

    def path(self, index: int) -> Path:
        return self.folder / f"{self.cases[index]}.npy"

    def __len__(self) -> int:
        return len(self.cases)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        return np.load(self.path(index), mmap_mode="r", allow_pickle=False)

    def __setitem__(self, index: int, array: np.ndarray) -> None:
        path = self.path(index)
        try:
            with atomic_binary(path) as fh:
                np.save(fh, array, allow_pickle=False)
        except OSError as exc:  # a full disk: named as the file (`files.failure_names`)
            raise FileSystemError(f"{exc.filename or path}: not written ({exc.strerror or exc})") from None


@contextmanager
def spill_folder(folder: Path | None) -> Iterator[Path]:
    """`folder`, emptied of what an earlier attempt left there, and removed when the block ends (an error or
    an interruption too: a killed process's is removed by the next attempt); where None, a temporary folder
    of the system's."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="medseg-bench-evaluation-") as temporary:
            yield Path(temporary)
        return
    shutil.rmtree(folder, ignore_errors=True)
    try:
        folder.mkdir(parents=True)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
