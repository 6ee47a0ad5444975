"""NIfTI files read as stored, without ITK: the header's size and type, a file cut short or a damaged gzip
stream (which SimpleITK reads without an error, the missing voxels 0), and NaN/inf voxels (which ITK's reader
turns into 0). Also the bound on an image's size that every read of an image is held to (`too_large`), here
and in `io.py`'s reads through ITK."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg_bench.checks import usable_memory
from medseg_bench.errors import DataError, first_line

_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}
_NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
_GZIP_CHUNK_BYTES = 1 << 20
# The most bytes of voxels (voxels x bytes per value x values per voxel, as the header declares them) one
# image may hold; less where this process may use less memory (`image_bytes_limit`). A header is read
# before the voxels, so a small file declaring 50000 x 50000 x 50000 voxels (a decompression bomb) is
# refused without allocating them: ITK allocated them (MemoryError, or the kernel killed the process, and a
# sweep with it).
# MSD's largest image (a liver CT, 512 x 512 x 987 int16) holds 0.5 GiB.
MAX_IMAGE_BYTES = 16 * 2**30
# What a .nii.gz may decompress to past the bytes its header declares (ITK reads those and ignores the rest):
# more is refused, not read to its end (a stream of zeros inflates a thousandfold)
GZIP_SLACK_BYTES = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """The few NIfTI header fields needed to find and size the voxel data."""

    endian: str  # "<" or ">"
    datatype: int
    vox_offset: int
    data_bytes: int | None  # None when the header does not say (a .hdr/.img pair, odd dims or bitpix)
    sizes: tuple[int, ...] = ()  # the image's axes, x first, where `data_bytes` is known
    version: int = 1  # 1 or 2
    # NIfTI-1's intent code and value scaling (ITK reads a vector's values, or scaled ones as float, otherwise
    # than the datatype says); a NIfTI-2's are not read: 0, 0, 0
    intent: int = 0
    scl_slope: float = 0.0
    scl_inter: float = 0.0

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
            intent, datatype, bitpix = struct.unpack(f"{endian}3h", raw[68:74])
            vox_offset_float, slope, inter = struct.unpack(f"{endian}3f", raw[108:120])
            vox_offset = int(vox_offset_float) if math.isfinite(vox_offset_float) else 0
            single_file, version = raw[344:347] == b"n+1", 1
            break
        if len(raw) >= 4 and struct.unpack(f"{endian}i", raw[:4])[0] == NIFTI2_HEADER_BYTES:
            if len(raw) < NIFTI2_HEADER_BYTES:
                return None
            datatype, bitpix = struct.unpack(f"{endian}2h", raw[12:16])
            dims = struct.unpack(f"{endian}8q", raw[16:80])
            vox_offset = struct.unpack(f"{endian}q", raw[168:176])[0]
            single_file, version, intent, slope, inter = raw[4:7] == b"n+2", 2, 0, 0.0, 0.0
            break
    else:
        return None
    ndim = dims[0]
    sizes = dims[1 : ndim + 1]
    scaling = {"version": version, "intent": intent, "scl_slope": slope, "scl_inter": inter}
    if not single_file or not 1 <= ndim <= 7 or any(n < 1 for n in sizes) or bitpix < 1 or bitpix % 8:
        return NiftiHeader(endian, datatype, max(vox_offset, 0), None, **scaling)
    voxels = 1
    for n in sizes:
        voxels *= int(n)
    return NiftiHeader(endian, datatype, max(vox_offset, 0), voxels * (bitpix // 8),
                       tuple(int(n) for n in sizes), **scaling)


def header_bytes(head: bytes) -> tuple[int, int | None]:
    """The bytes of the header a NIfTI file starting with `head` holds, and its version (1 or 2): what its
    sizeof_hdr says (348 or 540, either byte order), or its NIfTI-2 magic ("n+2", "ni2" at byte 4) where
    sizeof_hdr is neither; else (348, None), the least any NIfTI holds. Its first bytes alone tell: a file cut
    short inside its header is refused for it (`_read_nifti`), with no header parsed to declare a size."""
    import struct

    for endian in ("<", ">"):
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] == _NIFTI1_HEADER_BYTES:
            return _NIFTI1_HEADER_BYTES, 1
        if len(head) >= 4 and struct.unpack(f"{endian}i", head[:4])[0] == NIFTI2_HEADER_BYTES:
            return NIFTI2_HEADER_BYTES, 2
    if head[4:8] in (b"n+2\0", b"ni2\0"):
        return NIFTI2_HEADER_BYTES, 2
    return _NIFTI1_HEADER_BYTES, None


def image_bytes_limit() -> int:
    """The most bytes of voxels an image may hold: MAX_IMAGE_BYTES, or the memory this process may use where
    less (`image_bound`)."""
    return image_bound()[0]


def image_bound() -> tuple[int, str]:
    """`image_bytes_limit` and what sets it: MAX_IMAGE_BYTES, or the memory this process may use
    (`checks.usable_memory`: the machine's, or a container's or SLURM job's cgroup limit, less what the
    process holds of it, `MemoryLimit.available_bytes`) where less."""
    memory = usable_memory()
    if memory is None or memory.available_bytes >= MAX_IMAGE_BYTES:
        return MAX_IMAGE_BYTES, "MAX_IMAGE_BYTES"
    return memory.available_bytes, memory.accounted


def too_large(size: Sequence[int], value_bytes: int, components: int = 1) -> str:
    """Why an image whose header declares `size` voxels (ITK's order, x first) of `components` values of
    `value_bytes` bytes each is not read, "" when it may be: more bytes than `image_bytes_limit`."""
    declared = math.prod(int(n) for n in size) * value_bytes * components
    limit, bound = image_bound()
    if declared <= limit:
        return ""
    per_voxel = f"{components} x {value_bytes}" if components > 1 else str(value_bytes)
    return (f"image too large: its header declares {' x '.join(str(int(n)) for n in size)} voxels of "
            f"{per_voxel} bytes ({declared / 2**30:.4g} GiB), more than the {limit / 2**30:.4g} GiB "
            f"medseg-bench reads of one image ({bound})")


def _check_size(path: Path, header: NiftiHeader | None) -> None:
    """DataError naming `path` when `header` declares more voxel bytes than an image may hold."""
    if header is not None and header.data_bytes is not None:
        problem = too_large(header.sizes, header.data_bytes // math.prod(header.sizes))
        if problem:
            raise DataError(f"{path}: {problem}")


def _truncated(path: Path, found: int, declared: int) -> DataError:
    return DataError(f"{path}: truncated ({found} bytes of the {declared} the header declares)")


def _gunzip(path: Path, keep: bool) -> tuple[bytes, int, NiftiHeader | None]:
    """Decompress a whole .gz stream: (the data if `keep`, else its first bytes; the decompressed length; its
    NIfTI header, parsed once, as soon as the stream holds a NIfTI-2 header's bytes, or at its end).

    SimpleITK reads a cut-short or damaged gzip stream without an error (the missing voxels become 0), so
    the stream is read to its end here; a damaged one is a DataError naming the file. So is a header that
    declares more than an image may hold (`too_large`), found before the voxels are read, and a stream that
    goes on GZIP_SLACK_BYTES past what its header declares (or past what an image may hold, where the header
    does not say), found as soon as it does: such a stream, a thousand times its file's size, was read whole.
    """
    import gzip
    import zlib

    chunks: list[bytes] = []
    length = 0
    header: NiftiHeader | None = None
    most: int | None = None  # the decompressed bytes the stream may hold, once its header is read
    past = ""  # what a stream longer than that holds more than
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(_GZIP_CHUNK_BYTES):
                if keep or length < NIFTI2_HEADER_BYTES:
                    chunks.append(chunk)
                length += len(chunk)
                if most is None and length >= NIFTI2_HEADER_BYTES:
                    header = parse_nifti_header(b"".join(chunks)[:NIFTI2_HEADER_BYTES])
                    most, past = _stream_bound(path, header)
                if most is not None and length > most:
                    raise DataError(f"{path}: unreadable (its gzip stream holds more than {past}, and "
                                    f"{GZIP_SLACK_BYTES // 2**20} MiB past them)")
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
    raw = b"".join(chunks)
    if most is None:  # a stream shorter than a NIfTI-2 header: its header parsed here
        header = parse_nifti_header(raw[:NIFTI2_HEADER_BYTES])
        _check_size(path, header)
    return raw, length, header


def _stream_bound(path: Path, header: NiftiHeader | None) -> tuple[int, str]:
    """The decompressed bytes a .nii.gz whose NIfTI header is `header` may hold, and what they are: its
    header's declared bytes, or where its header does not say an image's limit, and GZIP_SLACK_BYTES. A
    header declaring more than an image may hold is a DataError."""
    _check_size(path, header)
    declared = header.declared_bytes if header is not None else None
    if declared is None:
        limit = image_bytes_limit()
        return limit + GZIP_SLACK_BYTES, f"the {limit} bytes an image may hold"
    return declared + GZIP_SLACK_BYTES, f"the {declared} bytes its header declares"


def _read_nifti(path: Path, keep_data: bool) -> tuple[bytes, NiftiHeader | None]:
    """The file's bytes (decompressed; only the header unless `keep_data`) and header, checked complete and
    no larger than an image may be (`too_large`); of an uncompressed file, no more than its header declares
    is read. Its header is parsed once."""
    if path.name.lower().endswith(".gz"):
        raw, length, header = _gunzip(path, keep_data)
    else:
        try:
            length = path.stat().st_size
            with open(path, "rb") as fh:
                raw = fh.read(NIFTI2_HEADER_BYTES)
                header = parse_nifti_header(raw)
                _check_size(path, header)
                if keep_data:
                    declared = header.declared_bytes if header is not None else None
                    raw += fh.read(max((image_bytes_limit() if declared is None else declared) - len(raw), 0))
        except OSError as exc:
            raise DataError(f"{path}: unreadable ({exc.strerror or exc})") from None
    needed, version = header_bytes(raw)
    if length < needed:  # a NIfTI-2 cut between 348 and 540 bytes has no header to declare a size: it passed
        held = (f"{length} of the {needed} bytes of its NIfTI-{version} header" if version
                else f"{length} bytes, fewer than the {needed} of any NIfTI header")
        raise DataError(f"{path}: truncated NIfTI header ({held})")
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
