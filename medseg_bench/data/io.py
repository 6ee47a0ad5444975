"""Image I/O with SimpleITK: arrays in (C, Z, Y, X) / (Z, Y, X) order with their geometry.

SimpleITK reverses axis order between the image (x, y, z) and the numpy array (z, y, x); `Geometry` keeps
the image-order values (as ITK reports them) and offers `spacing_zyx` for array-order work.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from medseg_bench.errors import DataError


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

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Geometry:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data["direction"]),
            size=tuple(int(v) for v in data["size"]),
        )


def _sitk():  # imported lazily so that `--help` stays fast
    import SimpleITK as sitk

    return sitk


def _check_readable(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.name.startswith("._"):
        raise DataError(f"{path}: macOS resource-fork file, not an image")


def read_geometry(path: Path) -> tuple[Geometry, int]:
    """Read only the header: geometry (spatial axes) and the number of channels."""
    sitk = _sitk()
    _check_readable(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable image ({_first_line(exc)})") from None
    return _geometry_and_channels(
        reader.GetSpacing(),
        reader.GetOrigin(),
        reader.GetDirection(),
        reader.GetSize(),
        reader.GetNumberOfComponents(),
    )


def _geometry_and_channels(spacing, origin, direction, size, components: int) -> tuple[Geometry, int]:
    dim = len(size)
    if dim == 4:  # MSD 4D tasks: last image axis is the channel
        channels = int(size[3])
        direction3 = tuple(direction[r * 4 + c] for r in range(3) for c in range(3))
        geom = Geometry(tuple(spacing[:3]), tuple(origin[:3]), direction3, tuple(size[:3]))
        return geom, channels
    geom = Geometry(tuple(spacing), tuple(origin), tuple(direction), tuple(size))
    return geom, int(components)


def read_image(path: Path, dtype: type = np.float32) -> tuple[np.ndarray, Geometry]:
    """Read an image as a (C, Z, Y, X) array (C=1 for 3D images) plus its spatial geometry."""
    sitk = _sitk()
    _check_readable(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable image ({_first_line(exc)})") from None
    geom, channels = _geometry_and_channels(
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
        image.GetSize(),
        image.GetNumberOfComponentsPerPixel(),
    )
    array = sitk.GetArrayFromImage(image)
    if image.GetDimension() == 4:
        pass  # already (C, Z, Y, X)
    elif image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    else:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != channels:
        raise DataError(f"{path}: unsupported image layout with array shape {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype), geom


def read_label(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read a label map as a (Z, Y, X) uint8 array; non-integer values are an error."""
    array, geom = read_image(path, dtype=np.float32)
    if array.shape[0] != 1:
        raise DataError(f"{path}: label map has {array.shape[0]} channels, expected 1")
    values = array[0]
    if (
        not np.all(np.isfinite(values))
        or np.any(values != np.round(values))
        or values.min() < 0
        or values.max() > 255
    ):
        raise DataError(f"{path}: label map holds non-integer or out-of-range values")
    return values.astype(np.uint8), geom


def write_label(array: np.ndarray, geometry: Geometry, path: Path) -> None:
    """Write a (Z, Y, X) label map with the given geometry, atomically."""
    sitk = _sitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.astype(np.uint8)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{_suffix(path)}")
    sitk.WriteImage(image, str(tmp), True)
    tmp.replace(path)


def _suffix(path: Path) -> str:
    name = path.name
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = lines[-1] if lines else type(exc).__name__
    return msg[:160]


def write_json_atomic(path: Path, data: object, compact: bool = False, durable: bool = True) -> None:
    """Write JSON to a temp file in the same folder, then rename over `path`.

    `compact` writes one line with the C encoder (about 10x faster for large coordinate lists);
    `durable=False` skips the fsync, for files that can be rebuilt (the cache).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if compact:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    else:
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    tmp.replace(path)


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}


def count_nonfinite(path: Path) -> int:
    """NaN/inf voxels in a NIfTI-1 file, read from the raw data.

    ITK's NIfTI reader turns NaN and inf into 0 on reading, so a check on the SimpleITK array would pass
    silently; this reads the stored values. Non-float and non-NIfTI files count 0.
    """
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    if not path.name.endswith((".nii", ".nii.gz")):
        return 0
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
    if len(raw) < 348:
        raise DataError(f"{path}: truncated NIfTI header")
    for endian in ("<", ">"):
        if np.frombuffer(raw[:4], f"{endian}i4")[0] == 348:
            break
    else:
        return 0  # NIfTI-2 or not NIfTI: nothing to say here
    datatype = int(np.frombuffer(raw[70:72], f"{endian}i2")[0])
    if datatype not in _NIFTI_FLOAT_TYPES:
        return 0
    offset = int(np.frombuffer(raw[108:112], f"{endian}f4")[0])
    data = np.frombuffer(
        raw,
        f"{endian}{_NIFTI_FLOAT_TYPES[datatype]}",
        offset=offset,
        count=(len(raw) - offset) // np.dtype(_NIFTI_FLOAT_TYPES[datatype]).itemsize,
    )
    return int(data.size - np.count_nonzero(np.isfinite(data)))
