"""`data/nifti.py`: NIfTI-1 and -2 headers of either byte order, files cut short, damaged gzip streams and
NaN/inf voxels found as stored (ITK reads the first two without an error and turns the last into 0)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.checks import MemoryLimit
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


def _huge_nifti_gz(path: Path, dims_xyz: tuple[int, ...]) -> None:
    """A .nii.gz whose header declares int16 voxels of `dims_xyz` and holds 16 bytes of them."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims_xyz), *dims_xyz, *(1,) * (7 - len(dims_xyz)))
    struct.pack_into("<2h", header, 70, 4, 16)  # int16
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    path.write_bytes(gzip.compress(bytes(header) + b"\0" * 20))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_declaring_more_than_an_image_may_hold_is_refused_unread(
        suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small file whose header declares a huge volume (a decompression bomb) had its stream read whole into
    # memory by count_nonfinite; the bound is the one ITK's reads are held to (io.read_geometry)
    raw = nifti_bytes(1, "<")
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)
    monkeypatch.setattr("medseg_bench.data.nifti.MAX_IMAGE_BYTES", 200)  # its voxels: 5 x 4 x 3 x 4 = 240
    for check in (check_nifti_complete, count_nonfinite):
        with pytest.raises(DataError) as caught:
            check(path)
        assert str(caught.value) == (f"{path}: image too large: its header declares 5 x 4 x 3 voxels of 4 "
                                     "bytes (2.235e-07 GiB), more than the 1.863e-07 GiB medseg-bench reads "
                                     "of one image (MAX_IMAGE_BYTES)")
    monkeypatch.setattr("medseg_bench.data.nifti.MAX_IMAGE_BYTES", 240)
    check_nifti_complete(path)
    machine = MemoryLimit(200, "the machine's memory")
    monkeypatch.setattr("medseg_bench.data.nifti.usable_memory", lambda: machine)
    with pytest.raises(DataError, match=r"more than the 1.863e-07 GiB .* \(the machine's memory\)$"):
        count_nonfinite(path)
    # a container's or SLURM job's cgroup limit, where the kernel kills the process, far below the machine's
    limit = MemoryLimit(200, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr("medseg_bench.data.nifti.usable_memory", lambda: limit)
    for check in (check_nifti_complete, count_nonfinite):
        with pytest.raises(DataError) as caught:
            check(path)
        assert str(caught.value) == (f"{path}: image too large: its header declares 5 x 4 x 3 voxels of 4 "
                                     "bytes (2.235e-07 GiB), more than the 1.863e-07 GiB medseg-bench reads "
                                     "of one image (the container's or job's memory limit, cgroup "
                                     "memory.max)")
    # what the process holds of it already is not there for the image: 240 bytes of which 100 are held
    held = MemoryLimit(240, "the process's address-space limit", "ulimit -v, RLIMIT_AS", per_process=True,
                       held_bytes=100)
    monkeypatch.setattr("medseg_bench.data.nifti.usable_memory", lambda: held)
    with pytest.raises(DataError, match=r"more than the 1.304e-07 GiB medseg-bench reads of one image \(the "
                                        r"process's address-space limit, ulimit -v, RLIMIT_AS: 2.24e-07 GiB, "
                                        r"9.31e-08 GiB of it held already\)$"):
        count_nonfinite(path)


def test_a_huge_volume_with_few_voxels_is_too_large_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "bomb.nii.gz"
    _huge_nifti_gz(path, (30000, 30000, 30000))  # NIfTI-1's largest side is 32767
    with pytest.raises(DataError, match=r"^\S+bomb.nii.gz: image too large: its header declares 30000 x "
                                        r"30000 x 30000 voxels of 2 bytes \(5.029e\+04 GiB\), more than "):
        count_nonfinite(path)


def test_a_gzip_stream_longer_than_its_header_declares_is_refused(tmp_path: Path) -> None:
    # 8 MiB of zeros past a 304-byte NIfTI, 8 KiB compressed: count_nonfinite held all of it in memory.
    # ITK reads the declared bytes and ignores the rest; so does a file a little longer than it declares
    raw = nifti_bytes(1, "<")
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(raw + b"\0" * (1 << 20)))  # nifti.GZIP_SLACK_BYTES past them: read
    assert count_nonfinite(path) == 0
    path.write_bytes(gzip.compress(raw + b"\0" * (8 << 20), compresslevel=1))
    for check in (check_nifti_complete, count_nonfinite):
        with pytest.raises(DataError) as caught:
            check(path)
        assert str(caught.value) == (f"{path}: unreadable (its gzip stream holds more than the {len(raw)} "
                                     "bytes its header declares, and 1 MiB past them)")


def test_a_gzip_stream_whose_header_gives_no_size_is_held_to_an_images_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.nii.gz"
    path.write_bytes(gzip.compress(b"\0" * (3 << 20)))  # no NIfTI header: its size is not declared
    monkeypatch.setattr("medseg_bench.data.nifti.MAX_IMAGE_BYTES", 1 << 20)
    with pytest.raises(DataError) as caught:
        count_nonfinite(path)
    assert str(caught.value) == (f"{path}: unreadable (its gzip stream holds more than the {1 << 20} bytes "
                                 "an image may hold, and 1 MiB past them)")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("version", [1, 2])
def test_one_check_of_a_nifti_parses_its_header_once(suffix: str, version: int, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # its header was parsed twice from the same bytes: once to bound the read, once to check it complete
    from medseg_bench.data import nifti
    from medseg_bench.data.io import read_image

    parsed: list[bytes] = []

    def counted(raw: bytes) -> nifti.NiftiHeader | None:
        parsed.append(raw)
        return parse_nifti_header(raw)

    monkeypatch.setattr(nifti, "parse_nifti_header", counted)
    values = np.zeros(SHAPE_XYZ[::-1], np.float32)
    values[1, 2, 3] = np.nan
    raw = nifti_bytes(version, "<", values)
    path = tmp_path / f"x{suffix}"
    write = gzip.compress if suffix == ".nii.gz" else bytes
    path.write_bytes(write(raw))
    for check in (check_nifti_complete, count_nonfinite):
        parsed.clear()
        check(path)
        assert len(parsed) == 1
    parsed.clear()
    with pytest.raises(DataError, match="NaN or inf"):
        read_image(path, check_complete=True)
    assert len(parsed) == 1
    path.write_bytes(write(raw[:400 if version == 1 else 300]))  # shorter than a NIfTI-2 header: a gzip
    parsed.clear()  # stream's is parsed at its end
    with pytest.raises(DataError, match="truncated"):
        check_nifti_complete(path)
    assert len(parsed) == 1


def _cut(version: int, endian: str, size: int) -> bytes:
    return nifti_bytes(version, endian)[:size]


def _magic_only(size: int) -> bytes:
    """A NIfTI-2 whose sizeof_hdr is lost (0), its magic left to say what it is, cut to `size` bytes."""
    return bytes(4) + nifti_bytes(2, "<")[4:size]


def _data_cut(found: int, declared: int) -> str:
    return f"truncated ({found} bytes of the {declared} the header declares)"


def _header_cut(found: int, needed: int, version: int | None) -> str:
    if version is None:
        return f"truncated NIfTI header ({found} bytes, fewer than the {needed} of any NIfTI header)"
    return f"truncated NIfTI header ({found} of the {needed} bytes of its NIfTI-{version} header)"


# A file too short for the header its first bytes say it starts: a NIfTI-2 cut between 348 and 540 bytes
# passed (no header parsed, so no size declared, and taken as complete)
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(("raw", "why"), [
    pytest.param(b"", _header_cut(0, 348, None), id="empty"),
    pytest.param(b"\0\0\0\0", _header_cut(4, 348, None), id="4-zero-bytes"),
    pytest.param(_cut(1, "<", 4), _header_cut(4, 348, 1), id="nifti1-4"),
    pytest.param(_cut(1, ">", 347), _header_cut(347, 348, 1), id="nifti1-347-be"),
    pytest.param(_cut(2, "<", 4), _header_cut(4, 540, 2), id="nifti2-4"),
    pytest.param(_cut(2, "<", 348), _header_cut(348, 540, 2), id="nifti2-348"),
    pytest.param(_cut(2, ">", 400), _header_cut(400, 540, 2), id="nifti2-400-be"),
    pytest.param(_cut(2, "<", 539), _header_cut(539, 540, 2), id="nifti2-539"),
    pytest.param(_magic_only(400), _header_cut(400, 540, 2), id="nifti2-magic-only-400"),
    # whole headers, cut inside the gap before vox_offset (NIfTI-1's 352, NIfTI-2's 544) or at its start
    pytest.param(_cut(1, "<", 348), _data_cut(348, 592), id="nifti1-348"),
    pytest.param(_cut(1, "<", 350), _data_cut(350, 592), id="nifti1-350"),
    pytest.param(_cut(2, "<", 540), _data_cut(540, 784), id="nifti2-540"),
    pytest.param(_cut(2, ">", 542), _data_cut(542, 784), id="nifti2-542-be"),
])
def test_a_file_cut_short_inside_its_header_or_before_its_voxels_is_refused(
        suffix: str, raw: bytes, why: str, tmp_path: Path) -> None:
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix == ".nii.gz" else raw)  # a whole gzip stream of the cut
    for check in (check_nifti_complete, count_nonfinite):
        with pytest.raises(DataError) as caught:
            check(path)
        assert str(caught.value) == f"{path}: {why}"


@pytest.mark.parametrize("version", [1, 2])
def test_a_gzip_stream_cut_inside_the_header_is_cut_short(version: int, tmp_path: Path) -> None:
    raw = nifti_bytes(version, "<")
    stored = gzip.compress(raw, compresslevel=0)  # stored blocks: the cut lands 200 bytes into the header
    path = tmp_path / "x.nii.gz"
    path.write_bytes(stored[:10 + 5 + 200])  # the gzip header, a block's header, 200 bytes of the NIfTI's
    for check in (check_nifti_complete, count_nonfinite):
        with pytest.raises(DataError) as caught:
            check(path)
        assert str(caught.value) == f"{path}: unreadable (gzip stream cut short)"


def test_a_nifti2_cut_inside_its_header_is_named_so_when_read_through_itk(tmp_path: Path) -> None:
    from medseg_bench.data.io import read_geometry

    path = tmp_path / "x.nii"
    path.write_bytes(_cut(2, "<", 400))
    with pytest.raises(DataError) as caught:
        read_geometry(path)
    assert str(caught.value) == f"{path}: {_header_cut(400, 540, 2)}"


def test_whole_headers_of_either_version_are_sized_from_their_first_bytes() -> None:
    from medseg_bench.data.nifti import header_bytes

    assert header_bytes(nifti_bytes(1, ">")) == (348, 1)
    assert header_bytes(nifti_bytes(2, "<")) == (540, 2)
    assert header_bytes(b"\0" * 600) == (348, None)  # not NIfTI: ITK's read judges it
