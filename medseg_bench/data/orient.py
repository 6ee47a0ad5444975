"""Reorienting an image's array to another storage orientation, and back, without resampling; how a run's
training images were stored.

An orientation (`io.Geometry.orientation`) names, for each image axis (x, y, z as stored), the world direction
it runs towards, as DICOM letters in ITK's LPS world ("RAS" for MSD's usual direction diag(-1, -1, 1)). Two
orientations of the same scan differ by a permutation of the axes and flips: `Reorientation` is that
permutation and those flips on the (..., Z, Y, X) array, exact and invertible, as ITK's DICOMOrient gives it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_bench.errors import DataError, UsageError

ORIENTATION_SAMPLE = 25  # training images whose headers say how a run's images were stored

_WORLD_AXIS = {"L": 0, "R": 0, "P": 1, "A": 1, "S": 2, "I": 2}


def is_orientation(code: object) -> bool:
    """Whether `code` names one direction on each world axis, e.g. "RAS" (not "RRS", not "SIL")."""
    return (isinstance(code, str) and len(code) == 3 and all(letter in _WORLD_AXIS for letter in code)
            and len({_WORLD_AXIS[letter] for letter in code}) == 3)


@dataclass(frozen=True)
class Reorientation:
    """Array axes (z, y, x order) of the source image that become each axis of the target, and whether each
    target axis runs the other way; `apply` works on the last three axes of an array (channels first)."""

    source_axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        return self.source_axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        lead = array.ndim - 3
        out = np.transpose(array, (*range(lead), *(lead + a for a in self.source_axes)))
        flipped = tuple(lead + axis for axis, flip in enumerate(self.flips) if flip)
        return np.ascontiguousarray(np.flip(out, flipped) if flipped else out)

    def undo(self, array: np.ndarray) -> np.ndarray:
        lead = array.ndim - 3
        flipped = tuple(lead + axis for axis, flip in enumerate(self.flips) if flip)
        out = np.flip(array, flipped) if flipped else array
        inverse = tuple(int(i) for i in np.argsort(self.source_axes))
        return np.ascontiguousarray(np.transpose(out, (*range(lead), *(lead + a for a in inverse))))

    def spacing(self, spacing_zyx: tuple[float, ...]) -> tuple[float, ...]:
        """The target array's spacing (z, y, x) from the source's."""
        return tuple(spacing_zyx[a] for a in self.source_axes)


def reorientation(source: str, target: str) -> Reorientation:
    """How an array stored `source` ("LPS") is stored `target` ("RAS"). ValueError for a code that is not an
    orientation."""
    for code in (source, target):
        if not is_orientation(code):
            raise ValueError(f"not an orientation: {code!r}")
    # image axis i (x, y, z) is array axis 2 - i
    by_world = {_WORLD_AXIS[letter]: (axis, letter) for axis, letter in enumerate(source)}
    axes: list[int] = []
    flips: list[bool] = []
    for letter in reversed(target):  # target array axes z, y, x: image axes z, y, x
        axis, was = by_world[_WORLD_AXIS[letter]]
        axes.append(2 - axis)
        flips.append(was != letter)
    return Reorientation((axes[0], axes[1], axes[2]), (flips[0], flips[1], flips[2]))


def training_orientation(run_folder: Path, task: str, data_dir: Path | None = None) -> str | None:
    """How a run's training images are stored (`Geometry.orientation`): as its setup.json records, or where
    it records none (a run started before it did), the most common among up to ORIENTATION_SAMPLE of its
    training cases in the task's fetched data (in `data_dir`, default the settings'); None where neither
    says."""
    from medseg_bench.data.io import read_geometry
    from medseg_bench.data.msd import training_cases
    from medseg_bench.files import read_json_object
    from medseg_bench.results import SETUP_NAME
    from medseg_bench.settings import get_settings

    setup = run_folder / SETUP_NAME
    recorded = (read_json_object(setup) if setup.is_file() else {}).get("orientation")
    if recorded is not None:
        if not is_orientation(recorded):
            raise DataError(f"{setup}: orientation must be an orientation such as \"RAS\" (one of L/R, P/A, "
                            f"S/I each) or null, not {recorded!r}")
        return str(recorded)
    splits = run_folder / "splits.json"
    try:
        cases = training_cases((data_dir or get_settings().data_dir) / task)
        trained = read_json_object(splits).get("train") if splits.is_file() else None
        if isinstance(trained, list):
            ids = set(trained)
            cases = [case for case in cases if case.case_id in ids] or cases
        found = Counter(read_geometry(case.image)[0].orientation
                        for case in cases[:ORIENTATION_SAMPLE] if case.image.is_file())
    except (DataError, OSError):  # the task not fetched here: nothing to compare with
        return None
    found.pop(None, None)
    return found.most_common(1)[0][0] if found else None


def ensemble_orientation(run_folders: list[Path], task: str, data_dir: Path | None = None) -> str | None:
    """How the runs' training images are stored (`training_orientation`): one way for all of them, or a
    UsageError naming two runs that disagree (an image would be turned for one and not the other); None where
    none of them says."""
    known = [(folder, found) for folder in run_folders
             if (found := training_orientation(folder, task, data_dir)) is not None]
    for folder, found in known[1:]:
        if found != known[0][1]:
            raise UsageError(f"{folder}: trained on images stored {found}, but {known[0][0]} on images "
                             f"stored {known[0][1]}; an ensemble takes runs trained on images stored one way")
    return known[0][1] if known else None
