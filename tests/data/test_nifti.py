"""`data/nifti.py`: NIfTI-1 and -2 headers of either byte order, files cut short, damaged gzip streams and
NaN/inf voxels found as stored (ITK reads the first two without an error and turns the last into 0)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.nifti import check_nifti_complete, count_nonfinite, parse_nifti_header
from medseg_bench.errors import DataError

SHAPE_XYZ = (5, 4, 3)


def nifti_bytes(version: int, endian: str, values: np.ndarray | None = None) -> bytes:
    """A minimal single-file NIfTI-1 or NIfTI-2 float32 volume of SHAPE_XYZ (4 extension bytes, all zero)."""
    dims = (3, *SHAPE_XYZ, 1, 1, 1, 1)
    if version == 1:
        header = bytearray(348)
        struct.pack_into(f"{endian}i", header, 0, 348)
        struct.pack_into(f"{endian}8h", header, 40, *dims)
        struct.pack_into(f"{endian}2h", header, 70, 16, 32)  # float32
        struct.pack_into(f"{endian}f", header, 108, 352.0)
        header[344:348] = b"n+1\0"
    else:
        header = bytearray(540)
        struct.pack_into(f"{endian}i", header, 0, 540)
        header[4:12] = b"n+2\0\r\n\x1a\n"
        struct.pack_into(f"{endian}2h", header, 12, 16, 32)
        struct.pack_into(f"{endian}8q", header, 16, *dims)
        struct.pack_into(f"{endian}q", header, 168, 544)
    if values is None:
        values = np.zeros(SHAPE_XYZ[::-1], np.float32)
    return bytes(header) + b"\0" * 4 + values.astype(f"{endian}f4").tobytes()


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_header_declares_size_in_both_versions_and_byte_orders(version: int, endian: str,
                                                                tmp_path: Path) -> None:
    raw = nifti_bytes(version, endian)
    header = parse_nifti_header(raw)
    assert header is not None and header.declared_bytes == len(raw) and header.endian == endian
    path = tmp_path / "x.nii"
    path.write_bytes(raw)
    check_nifti_complete(path)  # complete: no error
    path.write_bytes(raw[:-8])
    with pytest.raises(DataError, match=rf"x.nii: truncated \({len(raw) - 8} bytes of the {len(raw)} the"):
        check_nifti_complete(path)


@pytest.mark.parametrize("version", [1, 2])
def test_gzip_stream_shorter_than_declared(version: int, tmp_path: Path) -> None:
    raw = nifti_bytes(version, "<")
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(raw[:-8]))  # a complete gzip stream of a cut-short file
    with pytest.raises(DataError, match="truncated"):
        check_nifti_complete(path)
    path.write_bytes(gzip.compress(raw)[:-12])  # a cut-short gzip stream
    with pytest.raises(DataError, match=r"x.nii.gz: unreadable \(gzip stream cut short\)"):
        check_nifti_complete(path)


def test_nonfinite_counted_in_nifti2_and_big_endian(tmp_path: Path) -> None:
    values = np.zeros(SHAPE_XYZ[::-1], np.float32)
    values[1, 2, 3] = np.nan
    values[0, 0, 0] = np.inf
    for version, endian in ((1, ">"), (2, "<"), (2, ">")):
        path = tmp_path / f"v{version}.nii"
        path.write_bytes(nifti_bytes(version, endian, values))
        assert count_nonfinite(path) == 2


def test_not_nifti_is_not_judged(tmp_path: Path) -> None:
    assert parse_nifti_header(b"\0" * 600) is None
    path = tmp_path / "x.mha"
    path.write_bytes(b"ObjectType = Image\n")
    check_nifti_complete(path)
    assert count_nonfinite(path) == 0
