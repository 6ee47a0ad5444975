"""MetaImage files (`.mha`, `.mhd`) checked complete before ITK reads their voxels, from the header as ITK's
MetaIO reads it: `Key = value` lines up to `ElementDataFile`, the voxels on the line after it (`LOCAL`) or in
the file it names.

SimpleITK 2.2 reads a MetaImage whose voxel data is cut short without an error (the missing voxels whatever
its buffer held); later versions fail, printing "data not read completely" (`itk_output`). Checked here, both
give the one error, with the bytes found and declared.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from medseg_bench.errors import DataError

# Bytes of one value of each MetaIO element type (MetaIO's MET_ValueTypeSize: MET_LONG is 4 bytes in a
# MetaImage, whatever a C long holds); an `_ARRAY` type's values are as large
_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}
# How far into a file its header's `ElementDataFile` line is looked for (ITK writes a header of ~400 bytes)
HEADER_SEARCH_BYTES = 65536


@dataclass(frozen=True)
class MetaHeader:
    """A MetaImage header's fields, `ElementDataFile` the last, and where in its file the header ends (where
    `LOCAL` voxels begin: the byte after the `ElementDataFile` line); `head`: the file's first bytes as read
    (latin-1: one character a byte), up to that end but for a `LIST` header's, whose data file names follow
    it (an `.mha`'s voxels are not held: validation keeps every case's header while it runs)."""

    fields: dict[str, str]
    end_offset: int
    head: str

    def lines_after(self) -> list[str]:
        """The lines after the header within what was read: a `LIST`'s data file names."""
        return self.head[self.end_offset:].splitlines()


def is_metaimage(path: Path) -> bool:
    """Whether `path` is named as a MetaImage header (`.mha`, `.mhd`, in any case)."""
    return path.name.lower().endswith((".mha", ".mhd"))


def read_header(path: Path) -> MetaHeader | None:
    """The header of the MetaImage `path`; None for another format, an unreadable file, or a header whose
    `ElementDataFile` line is not within its first HEADER_SEARCH_BYTES (ITK's read names what is wrong)."""
    if not is_metaimage(path):
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_SEARCH_BYTES)
    except OSError:
        return None
    text = head.decode("latin-1")
    fields: dict[str, str] = {}
    at = 0
    while at < len(text):
        newline = text.find("\n", at)
        end = len(text) if newline < 0 else newline + 1
        key, equals, value = text[at:end].partition("=")
        at = end
        if not equals:
            continue
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            if newline < 0 and len(head) == HEADER_SEARCH_BYTES:
                return None  # the line goes on past what was read
            listed = value.upper().split()[:1] == ["LIST"]  # as `io.data_file_outside` reads it
            return MetaHeader(fields, at, text if listed else text[:at])
    return None


class Unparsed(Enum):
    """What a function that reads a MetaImage header gets where its caller parsed none (`UNPARSED`): it
    parses it itself (`header_of`). A caller that checks a file several ways parses it once and passes the
    `read_header` result (None too) to each, so that its checks read one header, not a copy each parsed again
    (no cache: nothing kept past the call that parsed it)."""

    UNPARSED = "unparsed"


UNPARSED = Unparsed.UNPARSED
# A MetaImage header as a caller passes it on: `read_header`'s result, or UNPARSED where it parsed none
Header = MetaHeader | None | Unparsed


def header_of(path: Path, header: Header) -> MetaHeader | None:
    """`header` as the caller parsed it, or `read_header(path)` where it parsed none (UNPARSED)."""
    return read_header(path) if isinstance(header, Unparsed) else header


def separate_data_file(path: Path, value: str) -> Path | None:
    """The one file holding the voxels of the MetaImage header `path` whose `ElementDataFile` is `value`,
    beside the header unless `value` is absolute; None for data in the header file itself (`LOCAL`), a list
    or pattern of files (`LIST`, `slice%03d.raw 1 40 1`)."""
    if not value or value.upper() in ("LOCAL", "LIST") or " " in value or "%" in value:
        return None
    return path.parent / value


def _true(value: str) -> bool:
    return value[:1] in ("T", "t", "1")  # as MetaIO reads `True`, `true`, `1`


def _number(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def voxel_bytes(fields: dict[str, str]) -> int | None:
    """Bytes of the uncompressed voxels a header declares: DimSize's product x ElementNumberOfChannels x
    the element type's bytes; None where a field is missing, malformed or of a type without a size."""
    ndims = _number(fields.get("NDims"))
    channels = _number(fields.get("ElementNumberOfChannels", "1"))
    element = _ELEMENT_BYTES.get(fields.get("ElementType", "").removesuffix("_ARRAY"))
    try:
        sizes = [int(value) for value in fields.get("DimSize", "").split()]
    except ValueError:
        return None
    if ndims is None or ndims < 1 or len(sizes) < ndims or channels is None or element is None:
        return None
    return math.prod(sizes[:ndims]) * channels * element


def data_problem(path: Path) -> str:
    """What is wrong with the voxel data of the MetaImage `path` (`header_data_problem`), its header read
    here."""
    header = read_header(path)
    return "" if header is None else header_data_problem(path, header)


def header_data_problem(path: Path, header: MetaHeader) -> str:
    """What is wrong with the voxel data of the MetaImage `path`, whose header `read_header` gave as `header`
    (passed in, so that a read that parsed it once, `io.read_image`, does not parse it again): "" when its
    file holds at least the bytes its header declares (the voxels, or `CompressedDataSize` bytes of
    compressed data) past the header (`LOCAL`) or past `HeaderSize` bytes of its data file, and where that
    cannot be told (voxels as text, a list of data files), else e.g. "data not read completely, 3740 of the
    3840 bytes of voxel data the header declares". Compressed data without `CompressedDataSize` (other
    writers than ITK omit it): `_undeclared_compressed_problem`."""
    fields = header.fields
    if not _true(fields.get("BinaryData", "True")):
        return ""  # numbers as text: their length says nothing of their count
    value = fields["ElementDataFile"]
    data_file = path if value.upper() == "LOCAL" else separate_data_file(path, value)
    compressed = _true(fields.get("CompressedData", "False"))
    if compressed and fields.get("CompressedDataSize") is None and data_file is not None:
        return _undeclared_compressed_problem(path, data_file, voxel_bytes(fields))
    if compressed:
        declared, what = _number(fields.get("CompressedDataSize")), "compressed voxel data"
    else:
        declared, what = voxel_bytes(fields), "voxel data"
    if declared is None or data_file is None:
        return ""
    start = header.end_offset if data_file is path else 0
    header_size = _number(fields.get("HeaderSize")) or 0
    if header_size > 0:  # MetaIO's reader skips to this offset of the data's file (the header's, for LOCAL)
        start = header_size
    elif header_size == -1:  # the data are the file's last bytes
        start = 0
    try:
        found = max(data_file.stat().st_size - start, 0)
    except OSError:
        return ""  # a missing data file is named before (`io._check_readable`)
    if found >= declared:
        return ""
    where = "" if data_file is path else f"its data file {data_file.name} holds "
    return f"data not read completely, {where}{found} of the {declared} bytes of {what} the header declares"


# How much of a compressed data file is read, and inflated, at a time (`_inflated_bytes`)
INFLATE_CHUNK_BYTES = 1 << 20


def _undeclared_compressed_problem(path: Path, data_file: Path, declared: int | None) -> str:
    """What is wrong with the compressed voxel data of the MetaImage `path` whose header has no
    `CompressedDataSize`: MetaIO then takes its data file, from its first byte to its last, for one zlib
    stream, and inflates it into the voxels' bytes. "" where the data file is one zlib stream that inflates to
    exactly the `declared` voxel bytes (bytes after its end ITK leaves unread), or where the voxel bytes
    cannot be told (ITK's to judge); a stream cut short, damaged or inflating to another size is named. The
    header file's own data (`LOCAL`) is refused: MetaIO inflates that file from its first byte, the header's
    text, and SimpleITK returns whatever its buffer held, with "Uncompress failed" on stderr and no error."""
    if data_file is path:
        return ("compressed voxel data in the header file itself without CompressedDataSize, which ITK "
                "reads wrong (it inflates the file from its first byte, the header); write it with "
                "CompressedDataSize, or as .mhd with its data in a file of its own")
    if declared is None:
        return ""
    try:
        inflated, ended = _inflated_bytes(data_file, declared)
    except OSError:
        return ""  # a missing data file is named before (`io._check_readable`)
    except zlib.error as exc:
        return f"its data file {data_file.name} is not a whole zlib stream ({exc})"
    if inflated > declared:
        return (f"its data file {data_file.name} inflates to more than the {declared} bytes of voxel data "
                "the header declares")
    if not ended:
        return (f"data not read completely, its data file {data_file.name} ends inside its zlib stream, "
                f"{inflated} of the {declared} bytes of voxel data the header declares inflated")
    if inflated < declared:
        return (f"data not read completely, its data file {data_file.name} inflates to {inflated} of the "
                f"{declared} bytes of voxel data the header declares")
    return ""


def _inflated_bytes(data_file: Path, limit: int) -> tuple[int, bool]:
    """(bytes the zlib stream that `data_file` begins with inflates to, whether the stream ended), read and
    inflated INFLATE_CHUNK_BYTES at a time, what it inflates to counted and let go: the file is never held
    whole, nor its voxels. Stops once past `limit` bytes. zlib.error for a stream that is not zlib's."""
    inflater = zlib.decompressobj()
    total = 0
    with open(data_file, "rb") as fh:
        while not inflater.eof and total <= limit:
            chunk = inflater.unconsumed_tail or fh.read(INFLATE_CHUNK_BYTES)
            if not chunk:  # the file read: what zlib still holds of it (less than its window)
                total += len(inflater.flush())
                break
            total += len(inflater.decompress(chunk, INFLATE_CHUNK_BYTES))
    return total, inflater.eof


def check_metaimage_complete(path: Path) -> None:
    """DataError naming `path` when it is a MetaImage whose voxel data is cut short (`data_problem`), in the
    words of a read through ITK that found it so. Other formats pass; a header read and a stat."""
    check_header_complete(path, read_header(path))


def check_header_complete(path: Path, header: MetaHeader | None) -> None:
    """`check_metaimage_complete` of `path` from its header as `read_header` gave it, read by the caller;
    None (another format, or a header ITK's read will judge) passes. A stat."""
    problem = header_data_problem(path, header) if header is not None else ""
    if problem:
        raise DataError(f"{path}: not a readable image (damaged or cut short: {problem})")
