"""`data/io.py`: label maps written whole or not at all (full disks, ITK's silent NIfTI writer, killed
writers' temps), images read with their geometry and checked complete, ITK's output kept off stderr, an
oblique image's orientation."""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.io import Geometry, read_image, read_label, write_label
from medseg_bench.errors import DataError


def test_a_2d_image_is_named_as_such(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medseg_bench.data.io import read_image

    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((40, 44), np.float32)), str(path))
    with pytest.raises(DataError, match=r"slice\.nii\.gz: 2D image of size \(44, 40\); a 3D"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_read_image_checks_a_file_cut_short_when_asked(suffix: str, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medseg_bench.data.io import read_image

    path = tmp_path / f"x{suffix}"
    values = np.random.default_rng(0).normal(size=(8, 12, 10)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    assert np.array_equal(read_image(path, check_complete=True)[0][0], values)  # a whole file reads as ever
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    image, _ = read_image(path)  # SimpleITK alone reads it: the missing voxels become 0
    assert image.shape == (1, *values.shape)
    why = r"unreadable \(gzip stream cut short\)" if suffix == ".nii.gz" else r"truncated \(\d+ bytes of the"
    with pytest.raises(DataError, match=rf"^{path}: {why}"):
        read_image(path, check_complete=True)


def test_a_metaimage_cut_short_is_not_called_missing(tmp_path: Path,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    # ITK's MetaImage reader gave "Reason: No such file or directory" for a file that is there, cut short, and
    # printed "MetaImage: M_ReadElementsData: data not read completely" and "   ideal = ..." to stderr itself;
    # SimpleITK 2.2 read it without an error. Its header is held to its size before ITK reads it, with either.
    import SimpleITK as sitk

    from medseg_bench.data.io import read_geometry, read_image

    path = tmp_path / "x.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 12, 10), np.float32)), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    capfd.readouterr()
    with pytest.raises(DataError, match=rf"^{path}: not a readable image \(damaged or cut short: data not "
                                        r"read completely, 3740 of the 3840 bytes of voxel data the header "
                                        r"declares\)$"):
        read_image(path)
    assert capfd.readouterr().err == ""
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementDataFile = LOCAL\n")
    with pytest.raises(DataError, match=rf"^{path}: not a readable image \(damaged or cut short: ElementType "
                                        r"required and not defined\)$"):
        read_geometry(path)  # the header alone: ITK printed four lines about it
    assert capfd.readouterr().err == ""


def test_itk_warnings_do_not_reach_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # ITK printed "WARNING: In .../itkNiftiImageIO.cxx, line 2008 / NiftiImageIO (0x...): <file> has
    # unexpected scales in sform" over three lines for each read, naming fetch's temporary copy.
    from medseg_bench.data.io import read_geometry, sitk_module

    sitk = sitk_module()
    path = tmp_path / "sform.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(path))
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", 1e-6)  # pixdim[1] no longer matches the sform's scale
    path.write_bytes(bytes(data))
    geometry, _ = read_geometry(path)
    assert geometry.spacing[0] == pytest.approx(1e-6)
    assert capfd.readouterr().err == ""


def test_a_label_map_itk_cannot_write_is_one_line_naming_it(tmp_path: Path) -> None:
    """ITK's writers refuse a name they do not know (`.NII.GZ`, `.xyz`) with a RuntimeError: it came out as a
    traceback (exit 1), naming the temporary folder."""
    from medseg_bench.errors import FileSystemError

    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (2, 2, 2))
    for name in ("a.xyz", "A.NII.GZ"):
        with pytest.raises(FileSystemError, match=rf"^{re.escape(str(tmp_path / name))}: not written \("):
            write_label(np.zeros((2, 2, 2), np.uint8), geometry, tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # no temporary folder left


def test_a_label_map_in_a_read_only_folder_names_it_not_the_temporary_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `predict --out` a read-only folder said '.hippocampus_001.nii.gz.tmp-lys6w3vr: Read-only file system'.
    import errno
    import tempfile

    def read_only(prefix: str, dir: str) -> str:
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, f"{prefix}lys6w3vr"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (2, 2, 2))
    with pytest.raises(OSError) as info:
        write_label(np.zeros((2, 2, 2), np.uint8), geometry, tmp_path / "case.nii.gz")
    assert info.value.errno == errno.EROFS and info.value.filename == str(tmp_path / "case.nii.gz")


def test_a_label_map_with_a_long_name_is_written(tmp_path: Path) -> None:
    # its temporary folder `.NAME.tmp-XXXXXXXX` was "File name too long" for a name of 240 characters
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (2, 2, 2))
    path = tmp_path / ("a" * 248 + ".nii.gz")
    write_label(np.ones((2, 2, 2), np.uint8), geometry, path)
    assert read_label(path)[0].sum() == 8 and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("name", ["a.nii.gz", "a.nii"])
@pytest.mark.parametrize("full", [True, False])
def test_a_label_map_itks_nifti_writer_cut_short_is_an_error_not_a_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], name: str,
        full: bool) -> None:
    """ITK's NIfTI writer reports no error for a write the disk refused: on a full disk `predict` left 0-byte
    and 4096-byte label maps, said "3 prediction(s) written" and skipped them when run again. It prints its
    own line to stderr ("** ERROR: NWAD: wrote only ..."), kept off the terminal: the error says it."""
    import collections
    import shutil

    import SimpleITK as sitk

    from medseg_bench.errors import FileSystemError

    write = sitk.WriteImage

    def cut_short(image: object, file_name: str, *args: object) -> None:  # as on a disk that filled up
        write(image, file_name, *args)
        data = Path(file_name).read_bytes()
        Path(file_name).write_bytes(data[:len(data) // 2])
        os.write(2, b"** ERROR: NWAD: wrote only 3744 of 120000 bytes to file\n")

    monkeypatch.setattr(sitk, "WriteImage", cut_short)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9, 0 if full else 10**9))
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (40, 30, 20))
    label = np.random.default_rng(0).integers(0, 3, (20, 30, 40), dtype=np.uint8)
    with pytest.raises(FileSystemError) as error:
        write_label(label, geometry, tmp_path / name)
    found = "unreadable (gzip stream cut short)" if name.endswith(".gz") else "truncated ("
    assert str(error.value).startswith(f"{tmp_path / name}: not written ({'No space left on device: ' * full}"
                                       f"ITK's NIfTI writer reported no error, but the file is {found}")
    assert list(tmp_path.iterdir()) == []  # no label map, no temporary folder
    assert capfd.readouterr().err == ""
    monkeypatch.setattr(sitk, "WriteImage", write)
    write_label(label, geometry, tmp_path / name)  # a whole file: written
    assert (read_label(tmp_path / name)[0] == label).all()


def test_an_oblique_images_orientation_is_the_one_itks_dicomorient_names() -> None:
    """Each image axis's nearest world axis, the largest direction cosine first, equal ones in ITK's order (a
    per-axis nearest axis gave no orientation for 15 % of random rotations, and an image oblique by exactly
    45 degrees went unwarned and unreoriented; the lower axis first named 1 in 8 compound 45-degree turns
    otherwise than ITK)."""
    import itertools
    import math

    import SimpleITK as sitk

    itk = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines

    def turn(i: int, j: int, angle: float) -> np.ndarray:
        matrix = np.eye(3)
        matrix[i, i] = matrix[j, j] = math.cos(angle)
        matrix[i, j], matrix[j, i] = -math.sin(angle), math.sin(angle)
        return matrix

    rng = np.random.default_rng(0)
    matrices = [np.linalg.qr(rng.normal(size=(3, 3)))[0] for _ in range(300)]
    angles = (math.pi / 4, -math.pi / 4, math.pi / 2)
    for (first, second), a1, a2 in itertools.product(itertools.permutations([(0, 1), (0, 2), (1, 2)], 2),
                                                      angles, angles):  # one or two 45-degree turns
        for order in itertools.permutations(range(3)):
            matrices.append(turn(*first, a1) @ turn(*second, a2) @ np.eye(3)[list(order)])
    for matrix in matrices:
        for stored in (matrix, matrix.astype(np.float32).astype(float)):  # as a NIfTI header rounds it
            direction = tuple(stored.ravel())
            geometry = Geometry((1.0,) * 3, (0.0,) * 3, direction, (2, 2, 2))
            assert geometry.orientation == itk(direction), direction


def test_a_label_value_that_is_not_a_whole_number_is_shown() -> None:
    # "label map holds non-integer or out-of-range values" said which file, not which value: a float label
    # file's rounding artefact (0.99999994 for 1) was not to be told from a 2.5.
    from medseg_bench.data.io import label_values

    values = np.array([0, 1, np.float32(0.99999994), 2.5, 300, np.nan], np.float32)
    with pytest.raises(DataError) as error:
        label_values(values, Path("L.nii.gz"))
    assert str(error.value) == ("L.nii.gz: label map holds non-integer or out-of-range values "
                                "(0.99999994, 2.5, 300, ...)")
    assert label_values(np.array([0.0, 2.0], np.float32), Path("L.nii.gz")).tolist() == [0, 2]


def test_an_image_that_is_a_link_to_itself_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "img.nii.gz"
    path.symlink_to(path.name)
    with pytest.raises(DataError, match=r"img\.nii\.gz: a link that leads back to itself$"):
        read_image(path)


def test_a_folder_or_pipe_named_as_an_image_is_named_not_read_or_skipped(tmp_path: Path) -> None:
    # `read_image` said "file not found" of a folder that is there; `image_files` (predict's --images,
    # evaluate's folders) left it out without a word: a case less to predict or to score.
    from medseg_bench.data.io import image_files

    folder = tmp_path / "img.nii.gz"
    folder.mkdir()
    with pytest.raises(DataError, match=r"img\.nii\.gz: a folder, not a file$"):
        read_image(folder)
    with pytest.raises(DataError, match=r"img\.nii\.gz: a folder, not a file$"):
        image_files(tmp_path)
    folder.rmdir()
    os.mkfifo(folder)
    with pytest.raises(DataError, match=r"img\.nii\.gz: not a regular file \(a named pipe, socket or dev"):
        image_files(tmp_path)


def _huge_header(path: Path, side: int = 30000) -> None:
    """An image file of `path`'s format whose header declares side x side x side int16 voxels, with 16 bytes
    of them: a small file that SimpleITK's read allocated whole (54 TB here; MemoryError, or the kernel's
    OOM killer ended the process where the allocation fit)."""
    import gzip

    import SimpleITK as sitk

    sizes = f"{side} {side} {side}"
    if path.name.endswith(".nrrd"):
        path.write_bytes(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {sizes}\nendian: little\n"
                         "encoding: raw\n\n".encode() + b"\0" * 16)
    elif path.name.endswith(".mha"):
        path.write_bytes(f"ObjectType = Image\nNDims = 3\nDimSize = {sizes}\nElementType = MET_SHORT\n"
                         "ElementDataFile = LOCAL\n".encode() + b"\0" * 16)
    else:  # ITK's own NIfTI-1 of 2 x 2 x 2 voxels, its header's sides changed (int16: 32767 at most)
        small = path.with_name(".small.nii")
        sitk.WriteImage(sitk.Image(2, 2, 2, sitk.sitkInt16), str(small))
        raw = bytearray(small.read_bytes())
        small.unlink()
        struct.pack_into("<3h", raw, 42, side, side, side)
        path.write_bytes(gzip.compress(bytes(raw)))


@pytest.mark.parametrize("name", ["huge.nii.gz", "huge.mha", "huge.nrrd"])
def test_a_header_declaring_a_huge_volume_is_refused_from_the_header(name: str, tmp_path: Path) -> None:
    from medseg_bench.data.io import read_geometry

    path = tmp_path / name
    _huge_header(path)
    with pytest.raises(DataError) as caught:
        read_geometry(path)  # validate and predict read every header first: nothing is allocated
    assert re.fullmatch(rf"{re.escape(str(path))}: image too large: its header declares 30000 x 30000 x "
                        r"30000 voxels of 2 bytes \(5\.029e\+04 GiB\), more than the [0-9.e+]+ GiB "
                        r"medseg-bench reads of one image \((MAX_IMAGE_BYTES|the .+)\)",
                        str(caught.value))


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("vector", [False, True])
def test_every_read_of_an_image_is_held_to_the_limit(suffix: str, vector: bool, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    from medseg_bench.data.io import read_geometry, read_sitk_image

    path = tmp_path / f"x{suffix}"
    values = np.zeros((4, 5, 6, 3) if vector else (4, 5, 6), np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=vector), str(path))
    read_image(path, check_complete=True)
    monkeypatch.setattr("medseg_bench.data.nifti.MAX_IMAGE_BYTES", values.size - 1)
    per_voxel = "3 x 1" if vector else "1"
    message = (rf"^{re.escape(str(path))}: image too large: its header declares 6 x 5 x 4 voxels of "
               rf"{per_voxel} bytes")
    for read in (read_geometry, read_image, read_sitk_image):  # nnU-Net import and evaluate's 2D maps read
        with pytest.raises(DataError, match=message):             # through read_sitk_image
            read(path)
    if suffix == ".nii.gz" and not vector:
        with pytest.raises(DataError, match=message):
            read_image(path, check_complete=True)  # its NIfTI check, before ITK


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_nifti_cut_short_inside_its_header_is_named_so(suffix: str, tmp_path: Path) -> None:
    # Cut within its header, ITK could not read the header at all, and the message was ITK's "Unable to
    # determine ImageIO reader" (`predict`'s header checks); cut later, "gzip stream cut short": both say it.
    import SimpleITK as sitk

    from medseg_bench.data.io import read_geometry

    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 12, 10), np.float32)), str(path))
    path.write_bytes(path.read_bytes()[:60])
    why = (r"unreadable \(gzip stream cut short\)" if suffix == ".nii.gz"
           else r"truncated NIfTI header \(60 of the 348 bytes of its NIfTI-1 header\)")
    with pytest.raises(DataError, match=rf"^{path}: {why}$"):
        read_geometry(path)


@pytest.mark.parametrize(("dtype", "value"), [(np.int16, 300), (np.int16, -1), (np.uint16, 300)])
def test_an_integer_label_map_out_of_range_is_refused_in_the_same_line(
    dtype: type, value: int, tmp_path: Path
) -> None:
    """A label map stored as integers is checked in its own type, no longer as float32: a value outside
    0..255 is refused with the line its float32 copy gave."""
    import SimpleITK as sitk

    path = tmp_path / "L.nii.gz"
    label = np.zeros((4, 5, 6), dtype)
    label[2, 3, 4] = value
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    assert sitk.ReadImage(str(path)).GetPixelID() == sitk.GetImageFromArray(label).GetPixelID()
    with pytest.raises(DataError) as error:
        read_label(path)
    assert str(error.value) == f"{path}: label map holds non-integer or out-of-range values ({value})"


def test_a_float_label_maps_rounding_artefact_is_still_refused_and_shown(tmp_path: Path) -> None:
    import SimpleITK as sitk

    path = tmp_path / "L.nii.gz"
    label = np.ones((4, 5, 6), np.float32)
    label[1, 1, 1] = np.float32(0.99999994)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    with pytest.raises(DataError) as error:
        read_label(path)
    assert str(error.value) == f"{path}: label map holds non-integer or out-of-range values (0.99999994)"


@pytest.mark.parametrize(("slope", "inter", "listed"), [(2.0, 0.0, ""), (1.0, 0.5, "0.5, 1.5, 2.5"),
                                                        (300.0, 0.0, "300, 600")])
def test_a_scaled_nifti_label_map_is_checked_on_its_scaled_values(
    slope: float, inter: float, listed: str, tmp_path: Path
) -> None:
    """A NIfTI of int16 whose `scl_slope`/`scl_inter` scale its values is read by ITK as float: its scaled
    values are the ones checked, as float32."""
    import SimpleITK as sitk

    path = tmp_path / "L.nii"
    label = (np.arange(60) % 3).reshape(3, 4, 5).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", slope, inter)  # scl_slope, scl_inter
    path.write_bytes(bytes(raw))
    if not listed:
        assert (read_label(path)[0] == 2 * label).all()
        return
    with pytest.raises(DataError) as error:
        read_label(path)
    assert str(error.value) == f"{path}: label map holds non-integer or out-of-range values ({listed})"


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_a_label_map_is_read_without_full_size_float_copies(dtype: type, tmp_path: Path) -> None:
    """Read as float32 and checked against its rounded copy, a label map held about 10 bytes a voxel in
    numpy's arrays beside ITK's: now an integer one holds its uint8 array alone, a float one that and a
    chunk's temporaries (`LABEL_CHUNK_VOXELS`); its values still checked in every chunk."""
    import tracemalloc

    import SimpleITK as sitk

    from medseg_bench.data.io import LABEL_CHUNK_VOXELS

    path = tmp_path / "L.nii"
    label = (np.arange(4 * 2**20) % 5).reshape(64, 256, 256).astype(dtype)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    tracemalloc.start()
    try:
        read, _ = read_label(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read.dtype == np.uint8 and (read == label).all()
    chunk = 12 * LABEL_CHUNK_VOXELS if dtype == np.float32 else 2**16
    assert peak <= label.size + chunk, peak
    if dtype == np.uint8:
        return  # every value of it is a label
    label[-1, -1, -1] = 300  # in the last chunk
    sitk.WriteImage(sitk.GetImageFromArray(label), str(path))
    with pytest.raises(DataError, match=r"values \(300\)$"):
        read_label(path)
