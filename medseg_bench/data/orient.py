"""Reorienting an image's array to another storage orientation, and back, without resampling.

An orientation (`io.Geometry.orientation`) names, for each image axis (x, y, z as stored), the world direction
it runs towards, as DICOM letters in ITK's LPS world ("RAS" for MSD's usual direction diag(-1, -1, 1)). Two
orientations of the same scan differ by a permutation of the axes and flips: `Reorientation` is that
permutation and those flips on the (..., Z, Y, X) array, exact and invertible, as ITK's DICOMOrient gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
