"""What ITK's C++ code prints to stderr on its own, kept off the terminal around a SimpleITK call.

ITK's MetaImage reader (`.mha`, `.mhd`) writes its complaints to `std::cerr`, file descriptor 2, itself
("MetaImage: M_ReadElementsData: data not read completely", then "   ideal = 247520 : actual = 247420"),
before SimpleITK raises its own error; SimpleITK's switch for ITK's warnings does not reach it. `captured`
points descriptor 2 at a temporary file for the call: what a call that failed printed is for its error to use
(`Printed.detail`); what a call that succeeded printed is written to stderr after it, as it would have been.

Only MetaImage files are read through it (`captured_for`): other readers (NIfTI, MSD's format) do not print
this way, and their reads stay free to run at once in threads.

Descriptor 2 belongs to the whole process, so one call is captured at a time (a lock, held through the call):
two threads redirecting it at once would each restore the other's copy and leave stderr in a file. A fork
waits for the call in progress, so a child (a DataLoader worker, the preparation pool) starts with the real
stderr and makes its own capture file. Text another thread writes to stderr in the milliseconds a failing call
takes goes with that call's output.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO


@dataclass
class Printed:
    """What the captured call printed to stderr, once the `captured` block is left."""

    text: str = ""

    @property
    def detail(self) -> str:
        """Its first line without the printer's names ("MetaImage: M_ReadElementsData: data not read
        completely" gives "data not read completely"); "" when nothing was printed. A line with terminal
        control codes is another thread's (a progress bar redrawn during the call), never ITK's."""
        lines = [line.strip() for line in self.text.splitlines() if line.strip() and "\x1b" not in line]
        if not lines:
            return ""
        line = re.sub(r"^(?:[A-Za-z_]\w*: )+", "", lines[0]).rstrip(".")
        word = line.split(" ", 1)[0]
        if word[:1].isupper() and word[1:].islower():  # "Cannot open data file" reads on in our message
            line = line[0].lower() + line[1:]
        return line[:160]


_lock = threading.Lock()
_capture: IO[bytes] | None = None  # this process's capture file, made on first use and emptied after each


def _capture_file() -> IO[bytes] | None:
    global _capture
    if _capture is None:
        with contextlib.suppress(OSError):  # no writable temporary folder: the call prints as it always did
            _capture = tempfile.TemporaryFile(buffering=0)
    return _capture


def _take(capture: IO[bytes]) -> bytes:
    """The capture file's contents; the file is left empty."""
    fd = capture.fileno()
    size = os.fstat(fd).st_size
    if not size:
        return b""
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, size)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    return data


def _flush_stderr() -> None:
    if sys.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.flush()


@contextmanager
def captured() -> Iterator[Printed]:
    """Descriptor 2 in a temporary file for the block (one SimpleITK call); see the module's docstring."""
    printed = Printed()
    with _lock:
        capture = _capture_file()
        saved = _dup_stderr() if capture is not None else None
        if capture is None or saved is None:  # the call prints as it always did
            yield printed
            return
        _flush_stderr()  # Python's own text, written before the call, goes where it always went
        failed = True
        try:  # the redirection inside: a signal handled just after it (Ctrl-C) still finds fd 2 restored
            os.dup2(capture.fileno(), 2)
            yield printed
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            data = _take(capture)
            printed.text = data.decode(errors="replace")
            if data and not failed:
                with contextlib.suppress(OSError):
                    os.write(2, data)


# The readers that print to std::cerr themselves: ITK's MetaIO.
PRINTING_SUFFIXES = (".mha", ".mhd")


def captured_for(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Printed]:
    """`captured()` for a file whose reader prints on its own (MetaImage), else a block that captures
    nothing (a NIfTI read takes no lock)."""
    if str(path).lower().endswith(PRINTING_SUFFIXES):
        return captured()
    return contextlib.nullcontext(Printed())


def _dup_stderr() -> int | None:
    try:
        return os.dup(2)
    except OSError:  # no descriptor 2 (closed): nothing to keep off it
        return None


def _before_fork() -> None:
    _lock.acquire()


def _in_child() -> None:
    global _capture
    _capture = None  # the parent's file: its offset is shared with the parent's descriptor
    _lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_lock.release, after_in_child=_in_child)
