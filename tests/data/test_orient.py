"""Reorienting an array without resampling: the same arrays ITK's DICOMOrient gives, and back."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medseg_bench.data.io import Geometry
from medseg_bench.data.orient import is_orientation, reorientation

# every orientation: one letter of each world axis, in every order
CODES = ["".join(letters) for axes in itertools.permutations(("LR", "PA", "SI"))
         for letters in itertools.product(*axes)]


def test_there_are_48_orientations_and_others_are_refused() -> None:
    assert len(CODES) == 48 and all(map(is_orientation, CODES))
    for bad in ("RRS", "SIL", "RA", "ras", None, "RASX"):
        assert not is_orientation(bad)
    with pytest.raises(ValueError, match="not an orientation: 'SIL'"):
        reorientation("RAS", "SIL")


@pytest.mark.parametrize("source", ["LPS", "RAS", "PRS", "ILA"])
def test_arrays_match_itks_dicomorient_and_come_back(source: str) -> None:
    import SimpleITK as sitk

    array = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    image = sitk.DICOMOrient(sitk.GetImageFromArray(array), source)  # the same scan stored `source`
    image.SetSpacing((0.5, 1.0, 2.0))
    stored = sitk.GetArrayFromImage(image)
    spacing_zyx = tuple(reversed(image.GetSpacing()))
    geometry = Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetSize())
    assert geometry.orientation == source
    for target in CODES:
        turned = sitk.DICOMOrient(image, target)
        change = reorientation(source, target)
        assert np.array_equal(change.apply(stored), sitk.GetArrayFromImage(turned)), target
        assert change.spacing(spacing_zyx) == tuple(reversed(turned.GetSpacing())), target
        assert np.array_equal(change.undo(change.apply(stored)), stored), target
        assert change.identity == (target == source)
    channels = np.stack([stored, stored + 100])  # (C, Z, Y, X): channels stay first
    change = reorientation(source, "RAS")
    assert np.array_equal(change.apply(channels)[1], change.apply(stored) + 100)
