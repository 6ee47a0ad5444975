"""What the stages that read every case before the cache need in memory, and so how many cases each reads at
once: validation (`validate.check_case` with `deep`: the label map and the image read whole, a NIfTI's raw
bytes read again for NaN and inf) and the fingerprint (`fingerprint.case_fingerprint`: the image as float32,
the label map, the non-zero box, the foreground sample).

What either holds is known from the case's headers before a voxel is read (`StoredCase`: the image's voxels,
channels and bytes per value, and the label map's). A plain NIfTI header is read here, its first bytes
(`_nifti_shape_and_type`): through ITK, the headers of Task04_Hippocampus's 200 cases took 0.45 s of the 2.1
its validation took; any other file is read through ITK (`io.read_geometry_and_type`). `ReadStage` counts
what a stage holds per byte stored and per voxel: `read_bytes` is an upper envelope of the peak resident
memory measured above a worker's own (`bench/preprocess_memory.py`, the same cases as the cache build's,
stored as NIfTI, gzipped NIfTI and MetaImage), `least_read_bytes` counts only arrays certainly held at the
same time. Their peaks are a fraction
of the cache build's, but a large CT case with many workers at once could still pass a container's limit.

A case whose `least_read_bytes` exceed the memory this process may use (`checks.usable_memory`, less what
the process holds of it already, SimpleITK's libraries mapped first: `io.sitk_module`) is never read:
validation lists it as a bad case (`read_problem`: its image, what it needs and what there is), excluded
from the usable cases as a corrupt one, and reads the others; the fingerprint, which reads only the
cases validation kept, stops before it reads a voxel, naming the case's image. Else as many cases are read at
once as fit by `read_bytes` (`preprocess_memory.items_at_once`, as the cache build): validation's threads
share one process and so every limit, `ulimit -v` too; the fingerprint's worker processes share the
machine's or a cgroup's, beside each one's own memory and the intensity sample the fingerprint gathers from
them.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medseg_bench.checks import MemoryLimit
from medseg_bench.data.io import read_geometry_and_type
from medseg_bench.data.metaimage import UNPARSED, Header, MetaHeader
from medseg_bench.data.msd import Case
from medseg_bench.data.nifti import image_bytes_limit, parse_nifti_header
from medseg_bench.data.preprocess_memory import WORKER_BYTES, items_at_once, need_problem
from medseg_bench.errors import DataError


@dataclass(frozen=True)
class StoredCase:
    """A case's image and label map as their headers declare them: the image's shape (z, y, x), channels and
    bytes per value as stored (int16: 2), and the label map's voxels and bytes per value."""

    image: Path
    shape: tuple[int, ...]
    channels: int
    value_bytes: int
    label_voxels: int
    label_value_bytes: int

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PerVoxel:
    """Bytes per voxel: `per_channel` for each channel (its float32 copy: 4), `per_value` for each byte a
    channel's value is stored in (ITK's image: 1; with a copy of its stored type: 2), `per_label_value` for
    each byte a label value is stored in, `per_voxel` for each voxel (the uint8 label map, masks)."""

    per_channel: int
    per_value: int
    per_label_value: int
    per_voxel: int

    def bytes(self, size: StoredCase) -> int:
        voxels = max(size.voxels, size.label_voxels)
        return (size.voxels * size.channels * (self.per_channel + self.per_value * size.value_bytes)
                + size.label_voxels * self.per_label_value * size.label_value_bytes + voxels * self.per_voxel)


@dataclass(frozen=True)
class ReadStage:
    """A stage that reads every case: what it is called in messages (`doing`), its peak (`peak`, and
    `per_sample` bytes for each value of the foreground sample it draws: the float32 sample, numpy's int64
    indices to draw it, its pickled copy on the way back) and what it certainly holds at once (`least`)."""

    doing: str
    peak: PerVoxel
    least: PerVoxel
    per_sample: int = 0


# Coefficients of this form at least 1.1 times every peak `bench/preprocess_memory.py` measured, none below
# what `least` counts, the least sum of their ratios to it. The label map is read in its stored type, no
# float32 copy of it made (`io.read_label`; its copies and masks counted 2 bytes a stored value and 7 a voxel
# in validation's, 4 and 1 in the fingerprint's, before): validation's peak is where the image is read beside
# it. Validation certainly holds, as it reads the image (`io.read_image`), ITK's image, numpy's float32 copy
# of it (a stored float32's copy: as large) and the uint8 label map read before (it counted ITK's image and a
# copy of its stored type: 2 bytes a voxel of a uint8 image, which read as float32 beside ITK's held 5, and a
# case that fit by it failed with numpy's `Unable to allocate`, exit 8); the fingerprint the float32 image
# beside ITK's label map and its uint8 copy.
VALIDATION = ReadStage("validating", peak=PerVoxel(2, 3, 1, 5), least=PerVoxel(4, 1, 0, 1))
FINGERPRINT = ReadStage("fingerprinting", peak=PerVoxel(4, 0, 2, 3), least=PerVoxel(4, 0, 1, 1),
                        per_sample=14)


def stored_case(case: Case, most_bytes: int | None = None,
                headers: Mapping[Path, MetaHeader | None] | None = None) -> StoredCase | None:
    """What the case's headers declare; None where either cannot be read (validation names the problem), as
    one declaring more than `most_bytes` of voxels (`nifti.image_bytes_limit`, found here where not given).
    `headers`: its files' MetaImage headers where the caller parsed them (`metaimage.read_header`; validation
    passes the same to its checks of the case), else parsed here."""
    most = image_bytes_limit() if most_bytes is None else most_bytes
    known: Mapping[Path, Header] = headers or {}
    try:
        shape, channels, value_bytes = _shape_and_type(case.image, most, known.get(case.image, UNPARSED))
        label, _, label_value_bytes = _shape_and_type(case.label, most, known.get(case.label, UNPARSED))
    except (DataError, OSError):
        return None
    return StoredCase(case.image, shape, channels, value_bytes, math.prod(label), label_value_bytes)


def _shape_and_type(path: Path, most_bytes: int,
                    header: Header = UNPARSED) -> tuple[tuple[int, ...], int, int]:
    """The image's shape (z, y, x), channels and bytes per value as ITK reads them: a plain NIfTI's from its
    first bytes (`_nifti_shape_and_type`), any other's through ITK (from its MetaImage `header` where the
    caller parsed it), which refuses one declaring more than `most_bytes` of voxels (`nifti.too_large`), and
    what it cannot read."""
    found = _nifti_shape_and_type(path, most_bytes)
    if found is not None:
        return found
    geometry, channels, value_bytes = read_geometry_and_type(path, header)
    return tuple(reversed(geometry.size)), channels, value_bytes


# NIfTI datatype codes of one plain number per value, and its bytes: uint8, int16, int32, float32, float64,
# int8, uint16, uint32, int64, uint64 (not complex, RGB or long double: ITK reads those otherwise)
_NIFTI_VALUE_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}


def _nifti_shape_and_type(path: Path, most_bytes: int) -> tuple[tuple[int, ...], int, int] | None:
    """`_shape_and_type` of a `.nii` or `.nii.gz` from its header alone (`nifti.parse_nifti_header`), where
    ITK reads it as the header says: a single-file NIfTI-1 (MSD's) of 3 or 4 axes, none of a single voxel
    (ITK drops such an axis), the fourth the channels; one plain number per value (`_NIFTI_VALUE_BYTES`), no
    intent (a vector's values), unscaled (`scl_slope` 0 or 1 and `scl_inter` 0: ITK reads scaled values as
    float), of at most `most_bytes` of voxels. None for any other file, one that cannot be read so, or
    declares more (ITK's read says why, `io.read_geometry_and_type`), and a `.nii.gz` ITK would read its
    `.nii` for."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        if name.endswith(".gz"):
            if path.with_name(path.name[:-3]).exists():
                return None
            with gzip.open(path, "rb") as fh:
                raw = fh.read(348)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    header = parse_nifti_header(raw) if raw[344:348] == b"n+1\0" else None  # NIfTI-2, or a .hdr/.img pair
    if header is None or header.version != 1 or header.data_bytes is None:
        return None
    sizes, value_bytes = header.sizes, _NIFTI_VALUE_BYTES.get(header.datatype)
    if (len(sizes) not in (3, 4) or any(side < 2 for side in sizes) or header.intent != 0
            or value_bytes is None or header.scl_slope not in (0.0, 1.0) or header.scl_inter != 0.0
            or math.prod(sizes) * value_bytes > most_bytes):
        return None
    return (sizes[2], sizes[1], sizes[0]), sizes[3] if len(sizes) == 4 else 1, value_bytes


def stored_cases(cases: Sequence[Case]) -> list[StoredCase]:
    """`stored_case` of each case whose headers can be read."""
    most = image_bytes_limit()  # once: each finding reads /proc/self/mountinfo and the cgroup's files
    return [size for size in (stored_case(case, most) for case in cases) if size is not None]


def read_bytes(stage: ReadStage, size: StoredCase, samples: int = 0) -> int:
    """At most the memory a worker uses above its own while `stage` reads the case; `samples`: the values
    of the foreground sample it draws of the case (of every sampled channel together)."""
    return stage.peak.bytes(size) + stage.per_sample * samples


def least_read_bytes(stage: ReadStage, size: StoredCase) -> int:
    """Memory `stage` certainly holds at once while it reads the case."""
    return stage.least.bytes(size)


def read_problem(stage: ReadStage, size: StoredCase, memory: MemoryLimit | None) -> str:
    """Why `stage` cannot read the case even alone (`least_read_bytes` past `memory`), "" where it can:
    "validating it needs at least 8.38 GiB at once (1 channel(s), 1000 x 1000 x 1000 voxels of 4 byte(s)),
    more than the 4 GiB this process may use (...); run with more memory", without the image's name."""
    shown = " x ".join(str(n) for n in size.shape)
    return need_problem(stage.doing, least_read_bytes(stage, size),
                        f"{size.channels} channel(s), {shown} voxels of {size.value_bytes} byte(s)", memory)


def check_read_fits(stage: ReadStage, size: StoredCase, memory: MemoryLimit | None) -> None:
    """A DataError naming the case's image when `stage` cannot read it even alone (`read_problem`)."""
    problem = read_problem(stage, size, memory)
    if problem:
        raise DataError(f"{size.image}: {problem}")


def check_all_read_fit(stage: ReadStage, sizes: Sequence[StoredCase], memory: MemoryLimit | None) -> None:
    """A DataError naming the first case's image that `stage` cannot read even alone (`check_read_fits`):
    what `reads_at_once` stops the stage on before any case is read, and what `sweep --dry-run` says."""
    for size in sizes:
        check_read_fits(stage, size, memory)


def reads_at_once(stage: ReadStage, sizes: Sequence[StoredCase], workers: int, memory: MemoryLimit | None,
                  threads: bool = False, samples: int = 0, held: int = 0) -> int:
    """How many of the cases `stage` may read at the same time, at most `workers`: as many of the largest
    as fit by `read_bytes` beside the workers' own memory (`WORKER_BYTES` each; `threads`: once, they share
    one process, whose own is what `memory` says it holds, `WORKER_BYTES` where it says less) and `held`
    bytes more (what the stage's own process gathers). A DataError naming the first case's image that
    cannot be read even alone (`check_read_fits`)."""
    if not sizes or memory is None:
        return workers
    check_all_read_fit(stage, sizes, memory)
    largest = max(read_bytes(stage, size, samples) for size in sizes)
    own = max(0, WORKER_BYTES - memory.held_bytes) if threads else workers * WORKER_BYTES
    return items_at_once(largest, workers, memory, own + held, threads)
