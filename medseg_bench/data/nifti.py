"""NIfTI files read as stored, without ITK: the header's size and type, a file cut short or a damaged gzip
stream (which SimpleITK reads without an error, the missing voxels 0), and NaN/inf voxels (which ITK's reader
turns into 0)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_bench.errors import DataError, first_line

_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
_NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
_GZIP_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """The few NIfTI header fields needed to find and size the voxel data."""

    endian: str  # "<" or ">"
    datatype: int
    vox_offset: int
    data_bytes: int | None  # None when the header does not say (a .hdr/.img pair, odd dims or bitpix)

    @property
    def declared_bytes(self) -> int | None:
        """Bytes a single-file NIfTI must hold: header and extensions up to vox_offset, then the voxels."""
        return None if self.data_bytes is None else self.vox_offset + self.data_bytes


def parse_nifti_header(raw: bytes) -> NiftiHeader | None:
    """NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header of either byte order; None when `raw` is neither."""
    import struct

    for endian in ("<", ">"):
        if len(raw) >= 4 and struct.unpack(f"{endian}i", raw[:4])[0] == _NIFTI1_HEADER_BYTES:
            if len(raw) < _NIFTI1_HEADER_BYTES:
                return None
            dims = struct.unpack(f"{endian}8h", raw[40:56])
            datatype, bitpix = struct.unpack(f"{endian}2h", raw[70:74])
            vox_offset_float = struct.unpack(f"{endian}f", raw[108:112])[0]
            vox_offset = int(vox_offset_float) if math.isfinite(vox_offset_float) else 0
            single_file = raw[344:347] == b"n+1"
            break
        if len(raw) >= 4 and struct.unpack(f"{endian}i", raw[:4])[0] == NIFTI2_HEADER_BYTES:
            if len(raw) < NIFTI2_HEADER_BYTES:
                return None
            datatype, bitpix = struct.unpack(f"{endian}2h", raw[12:16])
            dims = struct.unpack(f"{endian}8q", raw[16:80])
            vox_offset = struct.unpack(f"{endian}q", raw[168:176])[0]
            single_file = raw[4:7] == b"n+2"
            break
    else:
        return None
    ndim = dims[0]
    sizes = dims[1 : ndim + 1]
    if not single_file or not 1 <= ndim <= 7 or any(n < 1 for n in sizes) or bitpix < 1 or bitpix % 8:
        return NiftiHeader(endian, datatype, max(vox_offset, 0), None)
    voxels = 1
    for n in sizes:
        voxels *= int(n)
    return NiftiHeader(endian, datatype, max(vox_offset, 0), voxels * (bitpix // 8))


def _truncated(path: Path, found: int, declared: int) -> DataError:
    return DataError(f"{path}: truncated ({found} bytes of the {declared} the header declares)")


def _gunzip(path: Path, keep: bool) -> tuple[bytes, int]:
    """Decompress a whole .gz stream: (the data if `keep`, else its first bytes; the decompressed length).

    SimpleITK reads a cut-short or damaged gzip stream without an error (the missing voxels become 0), so
    the stream is read to its end here; a damaged one is a DataError naming the file.
    """
    import gzip
    import zlib

    chunks: list[bytes] = []
    length = 0
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_GZIP_CHUNK_BYTES):
                if keep or length < NIFTI2_HEADER_BYTES:
                    chunks.append(chunk)
                length += len(chunk)
    except EOFError:  # Python's wording: "Compressed file ended before the end-of-stream marker was reached"
        raise DataError(f"{path}: unreadable (gzip stream cut short)") from None
    except zlib.error as exc:
        raise DataError(f"{path}: unreadable (corrupt gzip data: {first_line(exc)})") from None
    except OSError as exc:
        why = exc.strerror or first_line(exc)
        if why.startswith("Not a gzipped file"):  # its repr of the magic bytes says nothing to a user
            with open(path, "rb") as raw_fh:
                gzip_magic = raw_fh.read(2) == b"\x1f\x8b"
            why = "data after the end of the gzip stream" if gzip_magic else "not gzip-compressed data"
        raise DataError(f"{path}: unreadable ({why})") from None
    return b"".join(chunks), length


def _read_nifti(path: Path, keep_data: bool) -> tuple[bytes, NiftiHeader | None]:
    """The file's bytes (decompressed; only the header unless `keep_data`) and header, checked complete."""
    if path.name.lower().endswith(".gz"):
        raw, length = _gunzip(path, keep_data)
    else:
        try:
            length = path.stat().st_size
            with open(path, "rb") as fh:
                raw = fh.read() if keep_data else fh.read(NIFTI2_HEADER_BYTES)
        except OSError as exc:
            raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    if length < _NIFTI1_HEADER_BYTES:
        raise DataError(f"{path}: truncated NIfTI header ({length} bytes)")
    header = parse_nifti_header(raw[:NIFTI2_HEADER_BYTES])
    declared = header.declared_bytes if header is not None else None
    if declared is not None and length < declared:
        raise _truncated(path, length, declared)
    return raw, header


def is_nifti(path: Path) -> bool:
    """Whether `path` is named as a NIfTI file (`.nii`, `.nii.gz`, in any case)."""
    return path.name.lower().endswith((".nii", ".nii.gz"))


def check_nifti_complete(path: Path) -> None:
    """DataError when a NIfTI file holds fewer bytes than its header declares, or its gzip stream is damaged.

    SimpleITK reads both without complaint, filling the missing voxels with 0. An uncompressed `.nii` costs a
    header read; a `.nii.gz` is decompressed to its end. Other formats pass.
    """
    if is_nifti(path):
        _read_nifti(path, keep_data=False)


def count_nonfinite(path: Path) -> int:
    """NaN/inf voxels in a NIfTI file, read from the raw data; also checks the file complete.

    ITK's NIfTI reader turns NaN and inf into 0 on reading, so a check on the SimpleITK array would pass
    silently; this reads the stored values. Non-float and non-NIfTI files count 0. A damaged gzip stream or
    a file shorter than its header declares is a DataError (`check_nifti_complete`).
    """
    if not is_nifti(path):
        return 0
    raw, header = _read_nifti(path, keep_data=True)
    if header is None or header.datatype not in _NIFTI_FLOAT_TYPES:
        return 0
    dtype = np.dtype(f"{header.endian}{_NIFTI_FLOAT_TYPES[header.datatype]}")
    count = max(len(raw) - header.vox_offset, 0) // dtype.itemsize
    if header.data_bytes is not None:
        count = min(count, header.data_bytes // dtype.itemsize)
    data = np.frombuffer(raw, dtype, offset=min(header.vox_offset, len(raw)), count=count)
    return int(data.size - np.count_nonzero(np.isfinite(data)))
