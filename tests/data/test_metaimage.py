"""`data/metaimage.py`: a MetaImage (`.mha`, or `.mhd` and its data file) whose voxels are cut short is
refused before ITK reads it, in one line with the bytes found and declared (SimpleITK 2.2 read it without an
error, the missing voxels whatever its buffer held; 2.5 said "data not read completely" and printed the
numbers to stderr); a whole one, and one whose size its header does not tell, reads as ever."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.io import read_image
from medseg_bench.data.metaimage import (
    HEADER_SEARCH_BYTES,
    MetaHeader,
    data_problem,
    read_header,
    voxel_bytes,
)
from medseg_bench.errors import DataError

VALUES = np.arange(24, dtype=np.int16).reshape(2, 3, 4)  # (z, y, x): 48 bytes


def _header(*fields: str, data_file: str = "LOCAL", newline: str = "\n") -> bytes:
    """A MetaImage header for VALUES, `fields` before its ElementDataFile line."""
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", "BinaryDataByteOrderMSB = False",
             "CompressedData = False", "DimSize = 4 3 2", "ElementType = MET_SHORT", *fields,
             f"ElementDataFile = {data_file}"]
    return (newline.join(lines) + newline).encode()


def _refusal(path: Path, found: int, declared: int, data_file: Path | None = None,
             compressed: bool = False) -> str:
    where = f"its data file {data_file.name} holds " if data_file is not None else ""
    what = "compressed voxel data" if compressed else "voxel data"
    return (f"{path}: not a readable image (damaged or cut short: data not read completely, {where}{found} "
            f"of the {declared} bytes of {what} the header declares)")


@pytest.mark.parametrize("suffix", [".mha", ".mhd"])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kind", ["3D float32", "3D int16 x 3 components", "4D uint8"])
def test_a_metaimage_one_byte_short_is_refused_naming_its_bytes(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], suffix: str, compressed: bool, kind: str) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    if kind == "3D float32":
        values = rng.normal(size=(8, 12, 10)).astype(np.float32)
        image, channels_first = sitk.GetImageFromArray(values), values[None]
    elif kind == "3D int16 x 3 components":  # ElementNumberOfChannels = 3
        values = rng.integers(-1000, 1000, (8, 12, 10, 3), dtype=np.int16)
        image, channels_first = sitk.GetImageFromArray(values, isVector=True), np.moveaxis(values, -1, 0)
    else:  # NDims = 4, MSD's channels along the fourth axis
        values = rng.integers(0, 255, (2, 8, 12, 10), dtype=np.uint8)
        image, channels_first = sitk.JoinSeries([sitk.GetImageFromArray(v) for v in values]), values
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(image, str(path), compressed)
    (data_file,) = [p for p in tmp_path.iterdir() if p != path] or [path]
    assert np.array_equal(read_image(path, dtype=values.dtype)[0], channels_first)  # whole: read as ever
    compressed_size = re.search(rb"CompressedDataSize = (\d+)", path.read_bytes()[:2000])
    assert (compressed_size is not None) == compressed
    declared = int(compressed_size.group(1)) if compressed_size else values.nbytes
    data_file.write_bytes(data_file.read_bytes()[:-1])
    capfd.readouterr()
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == _refusal(path, declared - 1, declared, None if data_file == path else data_file,
                                       compressed)
    assert capfd.readouterr().err == ""  # ITK did not read it: nothing printed


def test_a_file_longer_than_its_header_declares_reads(tmp_path: Path) -> None:
    path = tmp_path / "x.mha"
    path.write_bytes(_header() + VALUES.tobytes() + b"trailing")  # ITK reads the declared bytes, as ever
    assert np.array_equal(read_image(path, dtype=np.int16)[0][0], VALUES) and data_problem(path) == ""


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_local_voxels_start_after_the_element_data_file_line(tmp_path: Path, newline: str) -> None:
    path = tmp_path / "x.mha"
    head = _header(newline=newline)
    path.write_bytes(head + VALUES.tobytes())
    header = read_header(path)
    assert header is not None and header.end_offset == len(head)
    assert np.array_equal(read_image(path, dtype=np.int16)[0][0], VALUES)
    path.write_bytes(head + VALUES.tobytes()[:-2])  # one voxel short
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == _refusal(path, 46, 48)


@pytest.mark.parametrize(("header_size", "preamble"), [(16, 16), (-1, 16), (-1, 0)])
def test_a_data_files_header_size_is_skipped(tmp_path: Path, header_size: int, preamble: int) -> None:
    """`HeaderSize = N`: the voxels start N bytes into the data file; -1: they are its last bytes."""
    path, data_file = tmp_path / "x.mhd", tmp_path / "x.raw"
    path.write_bytes(_header(f"HeaderSize = {header_size}", data_file=data_file.name))
    data_file.write_bytes(b"J" * preamble + VALUES.tobytes())
    assert np.array_equal(read_image(path, dtype=np.int16)[0][0], VALUES)
    data_file.write_bytes(b"J" * preamble + VALUES.tobytes()[:-1])
    found = 47 if header_size > 0 else preamble + 47  # -1: all the file's bytes count
    if found >= 48:
        assert data_problem(path) == ""  # ITK reads the last 48 bytes: nothing to tell from the size
        return
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == _refusal(path, found, 48, data_file)


def test_a_local_header_size_counts_from_the_files_start(tmp_path: Path) -> None:
    # MetaIO seeks to HeaderSize from the start of the file that holds the voxels, the header's own for LOCAL
    path = tmp_path / "x.mha"
    head = _header("HeaderSize = 300")
    path.write_bytes(head + b"J" * (300 - len(head)) + VALUES.tobytes())
    assert np.array_equal(read_image(path, dtype=np.int16)[0][0], VALUES)
    path.write_bytes(path.read_bytes()[:-48])
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == _refusal(path, 0, 48)


@pytest.mark.parametrize("header", [
    _header().replace(b"BinaryData = True", b"BinaryData = False"),  # voxels as text
    # compressed without CompressedDataSize, in a data file of a type without a size
    _header(data_file="x.zraw").replace(b"CompressedData = False", b"CompressedData = True")
    .replace(b"MET_SHORT", b"MET_OTHER"),
    _header().replace(b"MET_SHORT", b"MET_OTHER"),  # a type without a size
    _header().replace(b"DimSize = 4 3 2", b"DimSize = 4 3"),  # fewer sizes than NDims: ITK's to refuse
    _header(data_file="LIST\nslice0.raw\nslice1.raw"),  # a file per slice
    _header(data_file="slice%d.raw 0 1 1"),
    b"ObjectType = Image\nNDims = 3\n",  # no ElementDataFile
])
def test_a_header_that_does_not_tell_its_size_is_left_to_itk(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "x.mha"
    path.write_bytes(header)
    assert data_problem(path) == ""


def _without_compressed_size(tmp_path: Path, layout: str) -> tuple[Path, Path, np.ndarray]:
    """(header, data file, voxels (z, y, x)) of an image SimpleITK wrote compressed, as `layout` ("mha";
    "zraw": .mhd with its .zraw; "raw": the data file renamed .raw), its CompressedDataSize line taken out
    (as other writers than ITK leave it)."""
    import SimpleITK as sitk

    values = np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40), dtype=np.int16)  # 48000 bytes
    path = tmp_path / ("x.mha" if layout == "mha" else "x.mhd")
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path), True)
    text = re.sub(rb"CompressedDataSize = \d+\n", b"", path.read_bytes())
    data_file = path
    if layout != "mha":
        data_file = tmp_path / f"x.{layout}"
        (tmp_path / "x.zraw").rename(data_file)
        text = text.replace(b"ElementDataFile = x.zraw", f"ElementDataFile = {data_file.name}".encode())
    path.write_bytes(text)
    assert b"CompressedDataSize" not in path.read_bytes() and b"CompressedData = True" in path.read_bytes()
    return path, data_file, values


@pytest.mark.parametrize("layout", ["zraw", "raw"])
def test_compressed_data_without_its_size_reads_when_it_inflates_to_the_voxels(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], layout: str) -> None:
    # ITK reads such a file (MetaIO inflates its data file whole); ours once passed it unchecked, so one cut
    # short was read as whatever ITK's buffer held
    import SimpleITK as sitk

    path, data_file, values = _without_compressed_size(tmp_path, layout)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), values)
    assert data_problem(path) == ""
    assert np.array_equal(read_image(path, dtype=np.int16)[0][0], values)
    whole = data_file.read_bytes()
    data_file.write_bytes(whole + b"trailing")  # MetaIO stops at the stream's end, as zlib does
    assert data_problem(path) == ""
    name = data_file.name
    for damaged, problem in [
        (whole[:-1], f"data not read completely, its data file {name} ends inside its zlib stream"),
        (whole[:len(whole) // 2], f"data not read completely, its data file {name} ends inside its zlib "
                                  "stream"),
        (zlib.compress(values.tobytes()[:-2]),
         f"data not read completely, its data file {name} inflates to 47998 of the 48000 bytes of voxel data "
         "the header declares"),
        (zlib.compress(values.tobytes() + b"xx"), f"its data file {name} inflates to more than the 48000 "
                                                  "bytes of voxel data the header declares"),
        (b"J" + whole, f"its data file {name} is not a whole zlib stream (Error -3 while decompressing data: "
                       "incorrect header check)"),
        (b"", f"data not read completely, its data file {name} ends inside its zlib stream, 0 of the 48000 "
              "bytes of voxel data the header declares inflated"),
    ]:
        data_file.write_bytes(damaged)
        capfd.readouterr()
        with pytest.raises(DataError) as info:
            read_image(path)
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable image (damaged or cut short: {problem}")
        assert "\n" not in message and capfd.readouterr().err == ""  # refused before ITK read it


def test_compressed_data_without_its_size_is_inflated_a_chunk_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # never the data file whole, nor its voxels: a chunk read, inflated, counted and let go
    from medseg_bench.data import metaimage

    path, data_file, _ = _without_compressed_size(tmp_path, "zraw")
    monkeypatch.setattr(metaimage, "INFLATE_CHUNK_BYTES", 1024)
    sizes: list[int] = []
    real = zlib.decompressobj

    class Counted:
        def __init__(self) -> None:
            self._inflater = real()

        def __getattr__(self, name: str) -> object:
            return getattr(self._inflater, name)

        def decompress(self, data: bytes, max_length: int) -> bytes:
            out = self._inflater.decompress(data, max_length)
            sizes.extend((len(data), len(out)))
            return out

    monkeypatch.setattr(metaimage.zlib, "decompressobj", Counted)
    assert data_problem(path) == ""
    assert max(sizes) <= 1024 and len(sizes) >= 2 * 48000 // 1024


def test_compressed_data_in_the_header_file_without_its_size_is_refused(tmp_path: Path) -> None:
    # MetaIO inflates the .mha from its first byte, the header's text: SimpleITK returned other voxels, with
    # "Uncompress failed" on stderr and no error
    import SimpleITK as sitk

    path, _, values = _without_compressed_size(tmp_path, "mha")
    assert not np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), values)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(info.value) == (
        f"{path}: not a readable image (damaged or cut short: compressed voxel data in the header file "
        "itself without CompressedDataSize, which ITK reads wrong (it inflates the file from its first byte, "
        "the header); write it with CompressedDataSize, or as .mhd with its data in a file of its own)")


def test_a_header_past_the_search_is_left_to_itk(tmp_path: Path) -> None:
    path = tmp_path / "x.mha"
    comment = f"Comment = {'x' * HEADER_SEARCH_BYTES}".encode()
    path.write_bytes(_header().replace(b"ObjectType = Image\n", b"ObjectType = Image\n" + comment + b"\n"))
    assert read_header(path) is None and data_problem(path) == ""
    path.write_bytes(_header().rstrip(b"\n"))  # the header file ends on its ElementDataFile line: no voxels
    header = read_header(path)
    assert header is not None and header.end_offset == path.stat().st_size
    assert data_problem(path) == ("data not read completely, 0 of the 48 bytes of voxel data the header "
                                  "declares")


def test_other_formats_pass(tmp_path: Path) -> None:
    path = tmp_path / "x.nii"
    path.write_bytes(_header())  # a NIfTI's name: not looked at here
    assert read_header(path) is None and data_problem(path) == ""


@pytest.mark.parametrize(("fields", "expected"), [
    ({"NDims": "3", "DimSize": "4 3 2", "ElementType": "MET_LONG"}, 96),  # 4 bytes, as in MetaIO
    ({"NDims": "3", "DimSize": "4 3 2", "ElementType": "MET_DOUBLE", "ElementNumberOfChannels": "3"}, 576),
    ({"NDims": "2", "DimSize": "4 3 2", "ElementType": "MET_UCHAR_ARRAY"}, 12),
    ({"NDims": "3", "DimSize": "4 3 two", "ElementType": "MET_UCHAR"}, None),
    ({"NDims": "3", "DimSize": "4 3 2"}, None),
    ({"DimSize": "4 3 2", "ElementType": "MET_UCHAR"}, None),
])
def test_voxel_bytes(fields: dict[str, str], expected: int | None) -> None:
    assert voxel_bytes(fields) == expected


def counted_header_parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The paths `metaimage.read_header` parses from now on, in order, wherever it is called from: every
    module of the package that holds it under that name has it replaced by a counting one."""
    import sys

    parsed: list[Path] = []

    def counted(path: Path) -> MetaHeader | None:
        parsed.append(path)
        return read_header(path)

    for name, module in list(sys.modules.items()):
        if name.startswith("medseg_bench.") and getattr(module, "read_header", None) is read_header:
            monkeypatch.setattr(module, "read_header", counted)
    return parsed


@pytest.mark.parametrize("name", ["x.mha", "x.mhd"])
def test_one_read_of_an_image_parses_its_header_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    name: str) -> None:
    # read_image parsed a MetaImage's header twice: for its data file (`_check_readable`), then for its size
    # (`check_metaimage_complete`); read_sitk_image, which checks no data file, parses it once
    import SimpleITK as sitk

    from medseg_bench.data.io import (
        data_file_outside,
        read_geometry,
        read_label,
        read_sitk_image,
        vector_components,
    )

    parsed = counted_header_parses(monkeypatch)
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(VALUES), str(path))
    for read in (read_image, read_label, read_sitk_image):
        parsed.clear()
        read(path)
        assert parsed == [path]
    header = read_header(path)  # parsed by the caller (validation's checks of a case): not parsed again
    parsed.clear()
    read_geometry(path, header), vector_components(path, header), data_file_outside(path, tmp_path, header)
    read_image(path, header=header), read_label(path, header), read_sitk_image(path, header)
    assert parsed == []
    data_file = tmp_path / "x.raw" if name == "x.mhd" else path
    data_file.write_bytes(data_file.read_bytes()[:-1])
    parsed.clear()
    with pytest.raises(DataError) as info:  # parsed once, the header still holds the voxels to its size
        read_image(path)
    assert str(info.value) == _refusal(path, 47, 48, data_file if name == "x.mhd" else None)
    assert parsed == [path]


def test_a_vector_label_map_is_refused_from_one_parse_of_its_header(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # read_label parsed it again to tell vector pixels from channels (`vector_components`)
    import SimpleITK as sitk

    from medseg_bench.data.io import read_label

    parsed = counted_header_parses(monkeypatch)
    path = tmp_path / "x.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(DataError, match=r"RGB/vector pixels \(3 components per voxel\); a label map holds"):
        read_label(path)
    assert parsed == [path]


@pytest.mark.parametrize("data_file", ["LOCAL", "LIST\na.raw\nb.raw", "list 2D\na.raw"])
def test_a_header_holds_its_own_bytes_not_the_voxels_after_it(tmp_path: Path, data_file: str) -> None:
    # validation keeps every case's headers while it runs: each held an .mha's first 64 KiB of voxels
    path = tmp_path / "a.mha"
    path.write_bytes(_header(data_file=data_file) + bytes(HEADER_SEARCH_BYTES))
    header = read_header(path)
    assert header is not None
    if data_file == "LOCAL":
        assert header.head == _header().decode() and header.lines_after() == []
    else:  # a LIST's data files are named after it
        assert header.lines_after()[:len(data_file.split("\n")) - 1] == data_file.split("\n")[1:]
