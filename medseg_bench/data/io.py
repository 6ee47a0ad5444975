"""Image I/O with SimpleITK: arrays in (C, Z, Y, X) / (Z, Y, X) order with their geometry.

SimpleITK reverses axis order between the image (x, y, z) and the numpy array (z, y, x); `Geometry` keeps
the image-order values (as ITK reports them) and offers `spacing_zyx` for array-order work.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg_bench.data.itk_output import Printed, captured, captured_for
from medseg_bench.data.metaimage import (
    HEADER_SEARCH_BYTES,
    UNPARSED,
    Header,
    MetaHeader,
    check_header_complete,
    header_of,
    is_metaimage,
    separate_data_file,
)
from medseg_bench.data.nifti import NIFTI2_HEADER_BYTES, check_nifti_complete, count_nonfinite, too_large
from medseg_bench.errors import DataError, FileSystemError
from medseg_bench.files import atomic_binary, failure_names, not_a_file, temp_stem

# The image files medseg-bench reads (through SimpleITK) in folders given to it: predict's images, evaluate's
# label maps, a task's cases
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def image_suffix(path: Path) -> str:
    """A file's image suffix (IMAGE_SUFFIXES) in lower case, as ITK's writers need it (`A.NII.GZ` ->
    `.nii.gz`); "" for another file."""
    return next((suffix for suffix in IMAGE_SUFFIXES if path.name.lower().endswith(suffix)), "")


def case_name(path: Path) -> str:
    """A file's name without its image suffix, in any case (`case_001.nii.gz`, `case_001.NII.GZ` ->
    `case_001`)."""
    suffix = image_suffix(path)
    return path.name[: -len(suffix)] if suffix else path.stem


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (IMAGE_SUFFIXES, in any case: ITK reads `.NII.GZ` too), sorted; hidden
    ones (temporary files, macOS `._` forks) left out; a broken link, or a folder or a named pipe of such a
    name (left out without a word until 2026-12-04), is a DataError naming it."""
    found = []
    for path in sorted(folder.iterdir()):
        if not path.name.lower().endswith(IMAGE_SUFFIXES) or path.name.startswith("."):
            continue
        why = not_a_file(path)
        if why is not None:  # it was left out without a word: a case less to predict, or to score
            raise DataError(f"{path}: {why}")
        found.append(path)
    return found


def files_by_case(folder: Path, role: str) -> dict[str, Path]:
    """A folder's image files (`image_files`) by case name; two files of one case (`a.nii.gz` and `a.nrrd`,
    `A.nii.gz` and `A.NII.GZ`) are a DataError naming both: either could be the one meant. `role` names what
    the files are, with its article ("a prediction")."""
    found: dict[str, Path] = {}
    for path in image_files(folder):
        name = case_name(path)
        if name in found:
            raise DataError(f"{path}: {found[name].name} beside it is {role} of the same case '{name}'; keep "
                            "one of the two")
        found[name] = path
    return found


@dataclass(frozen=True)
class Geometry:
    """Physical geometry of an image, in ITK (x, y, z) order."""

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    size: tuple[int, ...]

    @property
    def spacing_zyx(self) -> tuple[float, ...]:
        """Spacing in numpy array axis order (spatial axes only)."""
        return tuple(reversed(self.spacing[:3]))

    @property
    def orientation(self) -> str | None:
        """Where each image axis (x, y, z as stored) points, as DICOM letters in ITK's LPS world: "RAS" for
        MSD's usual direction diag(-1, -1, 1); None where not 3D. An oblique direction gets the nearest
        orientation as ITK's DICOMOrient names it: the largest direction cosine picks its image and world axes
        first, then the largest of the rest; among equal cosines (45 degrees), ITK's order: the higher world
        axis, then the higher image axis."""
        if len(self.direction) != 9:
            return None
        matrix = np.asarray(self.direction, dtype=float).reshape(3, 3)  # rows: world axes; columns: image
        world: dict[int, int] = {}  # image axis -> the world axis it runs along
        for _, row, axis in sorted((-abs(matrix[w, a]), -w, -a) for w in range(3) for a in range(3)):
            if -axis not in world and -row not in world.values():
                world[-axis] = -row
        letters = ("LR", "PA", "SI")
        return "".join(letters[world[axis]][0 if matrix[world[axis], axis] > 0 else 1] for axis in range(3))

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    def mismatch(self, other: Geometry) -> str:
        """How `other` differs from this geometry ("" when it does not), e.g. "origin (0, 0, 0) vs (0, 0, 1)".

        One tolerance for validation (label against image) and evaluation (prediction against reference), so a
        case that validation accepts is never refused by `evaluate`: spacing relative 1e-3, direction 1e-3,
        origin 1% of the largest spacing.
        """
        if tuple(self.size) != tuple(other.size):
            return f"size {_fmt(self.size)} vs {_fmt(other.size)}"
        origin_tol = 1e-2 * max(self.spacing, default=1.0)
        checks = (("spacing", 1e-3, 1e-4), ("direction", 0.0, 1e-3), ("origin", 0.0, origin_tol))
        for name, rtol, atol in checks:
            mine, theirs = getattr(self, name), getattr(other, name)
            if len(mine) != len(theirs) or not np.allclose(mine, theirs, rtol=rtol, atol=atol):
                return f"{name} {_fmt(mine)} vs {_fmt(theirs)}"
        return ""

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            size=tuple(int(v) for v in data["size"]),
        )


def _fmt(values: tuple[float, ...] | tuple[int, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@functools.cache
def sitk_module():  # imported lazily so that `--help` stays fast
    """SimpleITK, its warnings off: ITK prints them to stderr over several lines, naming the file as opened
    (`fetch`'s temporary copy, say); what matters of a file we check and say in one line ourselves."""
    import SimpleITK as sitk

    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


def _check_readable(path: Path, header: Header = UNPARSED) -> MetaHeader | None:
    """DataError naming `path` where it is no file ITK should read: missing, a macOS resource fork, a
    `.nii.gz` that ITK would read another file for, a MetaImage whose data file is missing. Returns its
    MetaImage header (`metaimage.read_header`; None for another format), read once here (or by the caller,
    `header`) and passed on to the read that follows (`_read_checked`), not parsed again."""
    if not path.is_file():
        why = not_a_file(path) or "file not found"
        raise DataError(f"{path}: {why}")
    if path.name.startswith("._"):
        raise DataError(f"{path}: macOS resource-fork file, not an image")
    if path.name.lower().endswith(".nii.gz") and path.with_name(path.name[:-3]).is_file():
        # ITK's NIfTI reader, asked for NAME.nii.gz, opens NAME.nii where both exist: an old uncompressed
        # file would be read in its place without a word
        raise DataError(f"{path}: {path.name[:-3]} lies beside it, and ITK reads that file for either name; "
                        "remove or rename one of the two")
    parsed = header_of(path, header)
    data_file = separate_data_file(path, parsed.fields["ElementDataFile"]) if parsed is not None else None
    if data_file is not None and not data_file.is_file():
        raise DataError(f"{path}: its data file {data_file.name} (ElementDataFile) is missing; keep it "
                        "beside the header")
    return parsed


def _element_data_file(path: Path, header: Header = UNPARSED) -> tuple[str, list[str], str] | None:
    """The field of a MetaImage header (`.mhd`, `.mha`: `ElementDataFile`; `header` where the caller parsed
    it) or a NRRD file's (`data file`) that names the file(s) holding the voxels: its value, the lines after
    it (a `LIST`'s file names) and the field's name; None for another format, or a header without one."""
    if is_metaimage(path):
        parsed = header_of(path, header)  # None where unreadable: the read that follows names the problem
        if parsed is None:
            return None
        return parsed.fields["ElementDataFile"], parsed.lines_after(), "ElementDataFile"
    if not path.name.lower().endswith(".nrrd"):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_SEARCH_BYTES).decode("latin-1")
    except OSError:
        return None  # the read that follows names the problem
    lines = head.splitlines()
    for at, line in enumerate(lines):
        if at and not line.strip():
            break  # a NRRD header ends at its first empty line; its voxels follow
        key, _, value = line.partition(":")
        if key.strip() in ("data file", "datafile"):
            return value.strip(), lines[at + 1:], key.strip()
    return None


def metaimage_data_file(path: Path, header: Header = UNPARSED) -> Path | None:
    """The separate data file a MetaImage header (`.mhd`, `.mha`; `header` where the caller parsed it) names
    in `ElementDataFile`; None for data in the header file itself (`LOCAL`), a list or pattern of files, or
    another format."""
    parsed = header_of(path, header)
    return separate_data_file(path, parsed.fields["ElementDataFile"]) if parsed is not None else None


def data_file_outside(path: Path, folder: Path, header: Header = UNPARSED) -> str | None:
    """"NAME (FIELD)" for a file that the MetaImage header or NRRD file `path` takes its voxels from
    (`ElementDataFile`, `data file`: one file, a `LIST` of them, or a pattern's `slice%03d.raw`) that lies
    outside `folder`, links followed; None where there is none. ITK reads whatever the header names,
    `/home/you/notes.txt` or `../../x` too: a dataset's header read the user's files as voxels, and an import
    that stacks channel files deleted them. `header`: its MetaImage header where the caller parsed it."""
    found = _element_data_file(path, header)
    if found is None or not found[0] or found[0].upper() == "LOCAL":
        return None
    value, after, field = found
    names = ([line.strip() for line in after if line.strip()] if value.split()[0].upper() == "LIST"
             else [value, value.split()[0]])
    inside = os.path.realpath(folder)
    for name in names:
        if os.path.commonpath([os.path.realpath(path.parent / name), inside]) != inside:
            return f"{name} ({field})"
    return None


COMPLEX_PIXELS = "complex pixels are not supported (one real value per voxel expected)"


def vector_pixels(components: int) -> str:
    """What an image of `components` values per voxel (an RGB image's 3) is called in messages."""
    return f"RGB/vector pixels ({components} components per voxel)"


def _is_complex(pixel_id: int) -> bool:
    sitk = sitk_module()
    return pixel_id in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)


def _header(path: Path, header: Header = UNPARSED) -> Any:
    """ITK's reader of `path` with its header read (`_read_information`), the file checked first as every
    read of a user's image is (`_check_readable`, from its MetaImage `header` where the caller parsed it)."""
    _check_readable(path, header)
    return _read_information(path)


def _read_information(path: Path) -> Any:
    """ITK's reader of `path` with its header read and checked: a complex-valued image is a DataError (ITK
    counts its real and imaginary parts as 2 components: "image is 4D", "2 channel(s)"; read, its imaginary
    part was dropped with numpy's ComplexWarning), and so is one that declares more voxel bytes than an
    image may hold (`nifti.too_large`): ITK allocates what the header declares before it reads a voxel."""
    sitk = sitk_module()
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_for(path) as printed:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        # a NIfTI cut short inside its header: say so, as for one cut later, not ITK's "Unable to determine
        # ImageIO reader" (`predict` said that of a .nii.gz whose first bytes only were left)
        check_nifti_complete(path)
        raise DataError(f"{path}: not a readable image ({_itk_reason(exc, printed)})") from None
    if _is_complex(reader.GetPixelID()):
        raise DataError(f"{path}: {COMPLEX_PIXELS}")
    problem = too_large(reader.GetSize(), _value_bytes(reader.GetPixelID()), reader.GetNumberOfComponents())
    if problem:
        raise DataError(f"{path}: {problem}")
    return reader


def _value_bytes(pixel_id: int) -> int:
    """Bytes of one value of an ITK pixel type ("vector of 16-bit signed integer": 2); 8 where its name
    gives no size."""
    found = re.search(r"(\d+)-bit", sitk_module().GetPixelIDValueAsString(pixel_id))
    return max(int(found.group(1)) // 8, 1) if found else 8


def vector_components(path: Path, header: Header = UNPARSED) -> int:
    """The values per voxel of a 3D image stored with vector pixels (an RGB image: 3), read from its header;
    1 for one value per voxel and for a 4D image (MSD's channels along the fourth axis). `read_geometry`
    counts either as channels: this tells the two apart, for a message that says which it is. `header`: its
    MetaImage header where the caller parsed it (`metaimage.read_header`), not parsed again."""
    reader = _header(path, header)
    return 1 if reader.GetDimension() == 4 else int(reader.GetNumberOfComponents())


def read_geometry(path: Path, header: Header = UNPARSED) -> tuple[Geometry, int]:
    """Read only the header: geometry (spatial axes) and the number of channels (a 4D image's fourth axis, or
    a vector image's values per voxel, `vector_components`); a complex-valued image is a DataError. `header`:
    its MetaImage header where the caller parsed it (`metaimage.read_header`), not parsed again."""
    geometry, channels, _ = read_geometry_and_type(path, header)
    return geometry, channels


def read_geometry_and_type(path: Path, header: Header = UNPARSED) -> tuple[Geometry, int, int]:
    """`read_geometry`, and the bytes of one value as stored (int16: 2): from the header alone, what reading
    the image will hold (`read_memory.py`)."""
    reader = _header(path, header)
    geometry, channels = _geometry_and_channels(
        reader.GetSpacing(),
        reader.GetOrigin(),
        reader.GetDirection(),
        reader.GetSize(),
        reader.GetNumberOfComponents(),
    )
    return geometry, channels, _value_bytes(reader.GetPixelID())


def _geometry_and_channels(spacing, origin, direction, size, components: int) -> tuple[Geometry, int]:
    dim = len(size)
    if dim == 4:  # MSD 4D tasks: last image axis is the channel
        channels = int(size[3])
        direction3 = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
        geom = Geometry(tuple(spacing[:3]), tuple(origin[:3]), direction3, tuple(size[:3]))
        return geom, channels
    geom = Geometry(tuple(spacing), tuple(origin), tuple(direction), tuple(size))
    return geom, int(components)


def read_image(
    path: Path, dtype: type = np.float32, check_complete: bool = False, header: Header = UNPARSED
) -> tuple[np.ndarray, Geometry]:
    """Read an image as a (C, Z, Y, X) array (C=1 for 3D images) plus its spatial geometry.

    SimpleITK reads a NIfTI cut short (or with a damaged gzip stream) without an error, the missing voxels 0,
    and a NIfTI's NaN and inf voxels as 0: `check_complete` checks the file first (`count_nonfinite`: a
    `.nii.gz` is decompressed twice) and the values read, for files a user hands in (predict, evaluate);
    files of a fetched task were checked when it was validated. `header`: its MetaImage header where the
    caller parsed it (`metaimage.read_header`; validation's checks of a case share one), else parsed here:
    once either way.
    """
    sitk = sitk_module()
    parsed = _check_readable(path, header)
    if check_complete and count_nonfinite(path):
        raise DataError(f"{path}: image holds NaN or inf voxels")
    image, geom, channels = _read_laid_out(path, parsed)
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:
        pass  # already (C, Z, Y, X)
    elif image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != channels:
        raise DataError(f"{path}: unsupported image layout with array shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=dtype)
    if check_complete and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{path}: image holds NaN or inf voxels")  # another format keeps them as read
    return array, geom


def _read_laid_out(path: Path, parsed: MetaHeader | None) -> tuple[Any, Geometry, int]:
    """ITK's image of `path` (its MetaImage header `parsed`, as `_check_readable` gives it), its geometry and
    channels; DataError naming the file where its layout is not a case's (`layout_problem`)."""
    image = _read_checked(path, parsed)
    geom, channels = _geometry_and_channels(
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
        image.GetSize(),
        image.GetNumberOfComponentsPerPixel(),
    )
    problem = layout_problem(image.GetSize())
    if problem:
        raise DataError(f"{path}: {problem}")
    return image, geom, channels


def layout_problem(size: tuple[int, ...]) -> str:
    """What is wrong with an image of `size` (ITK order) as a case: "" for 3D, and for 4D (MSD's channels
    along the fourth axis); else e.g. "2D image of size (35, 51); a 3D (or 4D multi-modal) image expected"."""
    if len(size) in (3, 4):
        return ""
    return f"{len(size)}D image of size {_fmt(tuple(size))}; a 3D (or 4D multi-modal) image expected"


def read_label(path: Path, header: Header = UNPARSED) -> tuple[np.ndarray, Geometry]:
    """Read a label map as a (Z, Y, X) uint8 array; a value that is not an integer in 0..255 is an error.
    `header`: as `read_image`'s.

    Its values are checked on ITK's own buffer, in its pixel type (`label_values`): a map stored as integers
    (uint8 to int64, as its header says) is never copied to float, the uint8 array the only copy made; one
    stored as float, or a NIfTI whose `scl_slope`/`scl_inter` scale its values (ITK reads them as float), is
    checked as float32, a chunk at a time."""
    sitk = sitk_module()
    parsed = _check_readable(path, header)  # parsed here where the caller did not: once for both reads
    image, geom, channels = _read_laid_out(path, parsed)
    if channels != 1:
        if vector_components(path, parsed) > 1:
            raise DataError(f"{path}: {vector_pixels(channels)}; a label map holds one value per voxel")
        raise DataError(f"{path}: label map has {channels} channels, expected 1")
    stored = sitk.GetArrayViewFromImage(image)  # ITK's buffer, no copy: valid while `image` is held
    return label_values(stored[0] if stored.ndim == 4 else stored, path), geom


# voxels of a label map checked at a time: the float checks' temporaries (float32, its rounded copy, masks)
# are a few MiB, not as many full-size arrays
LABEL_CHUNK_VOXELS = 2**20


def label_values(values: np.ndarray, path: Path) -> np.ndarray:
    """`values` (any integer or float type) as a new uint8 array; DataError naming `path` and the first few
    values that are not an integer in 0..255 (a float label file's rounding artefact, 0.99999994 for 1,
    shows as such). Checked a chunk of `LABEL_CHUNK_VOXELS` at a time: integers in their own type (only the
    values out of range copied), floats as float32, so that the values listed are float32's, as for either
    type they always were."""
    labels = np.empty(values.shape, np.uint8)
    flat, out = values.reshape(-1), labels.reshape(-1)
    integer = np.issubdtype(values.dtype, np.integer)
    found = np.empty(0, np.float32)  # the smallest bad values so far, at most four: enough to list three
    for start in range(0, flat.size, LABEL_CHUNK_VOXELS):
        chunk = flat[start:start + LABEL_CHUNK_VOXELS]
        if not integer:
            chunk = chunk.astype(np.float32, copy=False)
        bad = _out_of_range(chunk) if integer else _not_labels(chunk)
        if bad is not None:
            found = np.unique(np.concatenate([found, bad.astype(np.float32)]))[:4]  # NaN sorts last
        elif not found.size:
            out[start:start + chunk.size] = chunk
    if found.size:
        listed = ", ".join(f"{v:.9g}" for v in found[:3].tolist()) + (", ..." if found.size > 3 else "")
        raise DataError(f"{path}: label map holds non-integer or out-of-range values ({listed})")
    return labels


def _not_labels(chunk: np.ndarray) -> np.ndarray | None:
    """The float32 values of `chunk` that are not an integer in 0..255 (NaN, inf too), None where none."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(chunk) | (chunk != np.round(chunk)) | (chunk < 0) | (chunk > 255)
    return chunk[bad] if bad.any() else None


def _out_of_range(chunk: np.ndarray) -> np.ndarray | None:
    """The integers of `chunk` outside 0..255, None where there are none (uint8's never are): its least and
    most value first, no full-size mask where every value is in range."""
    info = np.iinfo(chunk.dtype)
    if not chunk.size or (info.min >= 0 and info.max <= 255):
        return None
    if chunk.min() >= 0 and chunk.max() <= 255:
        return None
    return chunk[(chunk < 0) | (chunk > 255)]


def write_label(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a (Z, Y, X) label map with the given geometry, atomically.

    The file is written under its own name in a hidden temporary folder beside `path`, then moved into place,
    so that a format with a separate data file (`.mhd` + `.zraw`) names and points to `case.zraw`, not to a
    temporary name. The data file is moved first and the header last: a reader never finds the new header
    without its data. Nothing of the temporary folder is left behind, whatever fails.
    """
    import shutil
    import tempfile

    sitk = sitk_module()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # a read-only folder: named as `path`, which the user asked for, not as the temporary folder
        staging = Path(tempfile.mkdtemp(prefix=f".{temp_stem(path.name)}.tmp-", dir=path.parent))
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    staged = staging / path.name
    try:
        write_checked(image, staged, path, array.size)
        written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)  # the header (`path`) last
        for part in written:
            with failure_names(path.parent / part.name, part):
                part.replace(path.parent / part.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_checked(image: Any, path: Path, named: Path, size_bytes: int) -> None:
    """`sitk.WriteImage(image, path)`, compressed; a write ITK refused, or a NIfTI its writer left cut short
    without an error (a full disk), is a FileSystemError naming `named` (the file the user knows, where `path`
    is a temporary name). `size_bytes`: the image's voxel data, to tell a full disk.

    What ITK's writers print themselves ("MetaImage: M_WriteElementsData: ...", NIfTI's "** ERROR: NWAD:
    wrote only 3744 of 120000 bytes") is kept off the terminal: the error says it."""
    sitk = sitk_module()
    with captured():
        try:
            sitk.WriteImage(image, str(path), True)
        except RuntimeError as exc:  # ITK's: no writer for the name, a write that failed
            reason = _itk_last_line(exc).replace(str(path), str(named)).removeprefix("Reason: ")
            raise _not_written(named, reason, path.parent, size_bytes) from None
        try:
            check_nifti_complete(path)
        except DataError as exc:  # ITK's NIfTI writer reports no error for a write the disk refused
            reason = str(exc).removeprefix(f"{path}: ")
            raise _not_written(named, f"ITK's NIfTI writer reported no error, but the file is {reason}",
                               path.parent, size_bytes) from None


def _not_written(path: Path, reason: str, folder: Path, size_bytes: int) -> FileSystemError:
    """The error for an image of `size_bytes` bytes of voxels not written to `path`, "No space left on device"
    first where `folder`'s disk lacks the room for it uncompressed: ITK's NIfTI writer says nothing on a full
    disk (it left a 0-byte or 4096-byte `.nii.gz`, and `predict` said it was written), NRRD "failed to
    write"."""
    import shutil

    try:
        full = shutil.disk_usage(folder).free < size_bytes + NIFTI2_HEADER_BYTES
    except OSError:
        full = False
    if full and "No space" not in reason:
        reason = f"No space left on device: {reason}"
    return FileSystemError(f"{path}: not written ({reason})")


def write_probabilities(probabilities: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write (K, Z, Y, X) class probabilities on an image's grid as a compressed `.npz`, atomically: arrays
    `probabilities` (float32, the image's array order), `spacing`, `origin` and `direction` (ITK's, x first);
    read back with `np.load(path)`, no pickle."""
    with atomic_binary(path) as fh:
        np.savez_compressed(fh, probabilities=probabilities.astype(np.float32, copy=False),
                            spacing=np.asarray(geometry.spacing), origin=np.asarray(geometry.origin),
                            direction=np.asarray(geometry.direction))


def read_sitk_image(path: Path, header: Header = UNPARSED) -> Any:
    """The image `path` as SimpleITK reads it, its header read and checked first (`_read_information`: a
    complex-valued image, `COMPLEX_PIXELS`, and one larger than an image may be, `nifti.too_large`, are
    refused before its voxels are read, and so is a MetaImage whose voxel data is cut short, which SimpleITK
    2.2 reads without an error, `metaimage.check_header_complete`), what ITK prints to stderr on its own
    kept off it (`itk_output`): a file it cannot read is one DataError naming it, what ITK printed about it
    the reason where its error says less. `header`: its MetaImage header where the caller parsed it
    (`metaimage.read_header`), not parsed again."""
    return _read_checked(path, header_of(path, header))


def _read_checked(path: Path, header: MetaHeader | None) -> Any:
    """`read_sitk_image` of `path`, whose MetaImage header the caller read (`read_header`; None for another
    format), so that one read of an image parses it once."""
    reader = _read_information(path)
    check_header_complete(path, header)
    try:
        with captured_for(path) as printed:
            return reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable image ({_itk_reason(exc, printed)})") from None


def _itk_reason(exc: BaseException, printed: Printed) -> str:
    """ITK's reason for a file it failed to read. Its MetaImage reader (.mha, .mhd) blames a file it found
    cut short or damaged on a stale errno ("No such file or directory"; the caller checked that it exists),
    having printed what it found ("data not read completely") to stderr."""
    reason = _itk_last_line(exc)
    if reason.startswith("Reason: ") and "File cannot be read" in str(exc):
        return f"damaged or cut short: {printed.detail or 'ITK cannot read its data'}"
    return reason


def _itk_last_line(exc: BaseException) -> str:
    """The last line of an ITK exception's message (its reason; the lines before name ITK's source file)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(exc).__name__
    return msg[:160]
