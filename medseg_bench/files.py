"""The project's own files: JSON read back (a damaged file named, not a traceback) and JSON, CSV and binary
files written atomically (a temp beside the file, renamed over it; a temp per process where two may write one
file; a killed writer's temp removed), a failure naming the file; and what stands in a folder's way."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medseg_bench.errors import DataError, exception_chain


def parse_json(text: str) -> Any:
    """`json.loads`, where every malformed text is a ValueError: also JSON nested deeper than Python's
    recursion limit (`[[[[...`, a RecursionError, was a traceback); an integer of over 4300 digits already
    is one."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def load_json_object(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the JSON object in `path`, "") or (None, why not): cannot read, not valid JSON, or not an object.

    Callers raise their own error with the reason, each with the advice that fits the file."""
    try:
        data = parse_json(path.read_text())
    except OSError as exc:
        return None, f"cannot read ({exc.strerror or exc})"
    except ValueError as exc:
        return None, f"not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    return data, ""


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or a DataError naming the file and why not (`load_json_object`)."""
    data, why = load_json_object(path)
    if data is None:
        raise DataError(f"{path}: {why}")
    return data


def write_json_atomic(path: Path, data: object, compact: bool = False, durable: bool = True) -> None:
    """Write JSON to a temp file in the same folder, then rename over `path`.

    `compact` writes one line with the C encoder (about 10x faster for large coordinate lists);
    `durable=False` skips the fsync, for files that can be rebuilt (the cache).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_temp(path)
    if compact:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    else:
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
    with failure_names(path, tmp):
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        tmp.replace(path)
    remove_dead_writers_temps(path)


def write_csv_atomic(frame: Any, path: Path) -> None:
    """A pandas DataFrame as CSV (no index) through a temp file beside `path`, renamed over it; a killed or
    interrupted write leaves `path` as it was (see `failure_names`)."""
    tmp = path.with_name(f".{temp_stem(path.name)}.tmp")
    with failure_names(path, tmp):
        frame.to_csv(tmp, index=False)
        tmp.replace(path)


NAME_MAX = 255  # bytes in a file name: Linux's file systems, APFS, NTFS (in UTF-16 units)
TEMP_STEM_MAX = 150  # bytes of a file's name in its temp's: room left for `.HOST.PID.tmp` (a host name: 64)


def temp_stem(name: str) -> str:
    """`name` as it goes into its temp file's name: itself, or where longer than `TEMP_STEM_MAX` bytes, its
    start and a hash of the whole (`START~0123456789`), so that the temp's name stays within the file
    system's `NAME_MAX` (a case file of 240 characters: its cache's temps were "File name too long")."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) <= TEMP_STEM_MAX:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:10]
    start = encoded[:TEMP_STEM_MAX - len(digest) - 1].decode("utf-8", "ignore")  # no character cut in two
    return f"{start}~{digest}"


def private_temp(path: Path) -> Path:
    """The temp file through which this process writes `path` atomically: named after the host and process,
    so two processes writing one file at once (`plan` beside a sweep, SLURM jobs on a shared folder) never
    rename each other's half-written temp into place, or away; `.NAME.*.tmp` (NAME: `temp_stem`), as
    leftover clean-ups expect."""
    return path.with_name(f".{temp_stem(path.name)}.{socket.gethostname()}.{os.getpid()}.tmp")


def remove_dead_writers_temps(path: Path) -> None:
    """Delete the temps of `path` that a process on this host left when it was killed mid-write (its pid is
    gone); a live writer's temp, or another host's, is left alone."""
    host = socket.gethostname()
    stem = temp_stem(path.name)
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*.tmp"):
        writer_host, _, pid = tmp.name[len(stem) + 2:-len(".tmp")].rpartition(".")
        if writer_host == host and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def broken_link(path: Path) -> str | None:
    """Why `path` is a link that leads to nothing ("a link to T, which does not exist", "a link that leads
    back to itself"); None when it is no link or leads to something."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a link that leads back to itself"
        if exc.errno == errno.ENOENT:
            return f"a link to {os.readlink(path)}, which does not exist"
        return f"a link that cannot be followed ({exc.strerror or exc})"
    return None


def not_a_file(path: Path) -> str | None:
    """Why `path`, where a file should be, is none: a broken link (`broken_link`), a folder, or another kind
    of entry (a named pipe would block its read); None for a file, or for nothing at all (missing)."""
    why = broken_link(path)
    if why is not None:
        return why
    if path.is_dir():
        return "a folder, not a file"
    if path.exists() and not path.is_file():
        return "not a regular file (a named pipe, socket or device)"
    return None


def kind_of(path: Path) -> str:
    """What `path`, standing where a folder should be (`file_in_the_way`), is: a broken link, or a file."""
    return broken_link(path) or "a file"


def file_in_the_way(path: Path, itself: bool = False) -> Path | None:
    """The nearest existing parent of `path` (or `path` itself, with `itself`) when it is not a folder (mkdir
    then says "File exists")."""
    for parent in [path, *path.parents] if itself else path.parents:
        if parent.exists() or parent.is_symlink():
            return None if parent.is_dir() else parent
    return None


@contextmanager
def atomic_binary(path: Path) -> Iterator[Any]:
    """A binary file to write `path` through: this process's temp file (`private_temp`), renamed over `path`
    when the block ends; on an error or interruption `path` is left as it was (`failure_names`)."""
    tmp = private_temp(path)
    with failure_names(path, tmp):
        with open(tmp, "wb") as fh:
            yield fh
        tmp.replace(path)


@contextmanager
def failure_names(path: Path, tmp: Path) -> Iterator[None]:
    """For an atomic write of `path` through `tmp`: an OSError without a file name (a full disk reported by
    write or fsync) gets `path`'s, so the error names what was not written, also where the writer raised its
    own error in its place (torch.save's "unexpected pos" when a write fails past its first: the OSError is
    its context), and one naming `tmp` (a read-only folder; a rename onto a folder) gets `path`'s in its
    place: the user knows `path`, not the temp; on any error or interruption the temp file is removed."""
    try:
        yield
    except BaseException as exc:  # also Ctrl-C, SIGTERM, or torch's error for a save they cut
        tmp.unlink(missing_ok=True)
        cause = _os_error_behind(exc)
        if cause is not None and cause.filename in (None, str(tmp), tmp):
            raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from exc
        raise


def _os_error_behind(exc: BaseException) -> OSError | None:
    """`exc` if an OSError, else the first OSError that a writer's own error was raised while handling
    (`errors.exception_chain`); None when an interruption is in that chain: the interruption is the cause."""
    chain = list(exception_chain(exc))
    if any(isinstance(e, KeyboardInterrupt) for e in chain):
        return None
    return next((e for e in chain if isinstance(e, OSError)), None)
