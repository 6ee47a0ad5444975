"""One exception hierarchy for every domain error; the CLI maps each to a one-line message and exit code.

Exit codes (documented in the README):
    1  unexpected internal error (a bug: please report it)
    2  usage error: unknown name, bad option value, bad spec file
    3  data error: missing/corrupt/inconsistent input files
    4  fetch error: download failed, checksum mismatch, unsafe archive
    5  run error: one or more runs of a sweep failed
    6  results error: results dir unwritable, or no results to report
    7  file system error not caught more precisely: a file or folder could not be read or written (missing
       folder, permission denied, disk full, read-only file system); the message names the path
    8  out of memory: an allocation the machine could not make (a failed run in a sweep: 5)
  130  any command interrupted by Ctrl-C (SIGINT); 143: by SIGTERM; 129: by SIGHUP, its terminal closed
       (128 + the signal number, as shells say)
  141  the reader of the output went away (SIGPIPE, `... | head`): stops quietly
"""

from __future__ import annotations

from collections.abc import Iterator


def one_line(text: str) -> str:
    """`text` with control characters escaped: a file name from a dataset or archive cannot forge lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it was raised from or while handling (`__cause__`, else `__context__`), and so on;
    not past a `raise ... from None`, which handled the earlier exception on purpose."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None else (
            None if link.__suppress_context__ else link.__context__)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MedsegError(Exception):
    """Base of all errors that the CLI reports as one line with an exit code."""

    exit_code = 1


class UsageError(MedsegError):
    """Bad option value or spec: the user can fix the command line."""

    exit_code = 2


class UnknownNameError(UsageError):
    """A registry lookup failed (unknown arch, loss, aug, metric or task)."""


class DataError(MedsegError):
    """Input data is missing, corrupt, or inconsistent."""

    exit_code = 3


class FetchError(MedsegError):
    """Getting a dataset failed: network, checksum, or unsafe archive."""

    exit_code = 4


class RunError(MedsegError):
    """A training/evaluation run failed."""

    exit_code = 5


class ResultsError(MedsegError):
    """The results store cannot be written or holds nothing to report."""

    exit_code = 6


class DamagedRunError(ResultsError):
    """A finished run's file is damaged or lost; `damage` is "<file>: <problem>", the message adds advice."""

    def __init__(self, damage: str, advice: str) -> None:
        super().__init__(f"{damage}; {advice}")
        self.damage = damage


class FileSystemError(MedsegError):
    """An OSError no command turned into a more precise error: one line with the path, not a traceback."""

    exit_code = 7

    @classmethod
    def from_os_error(cls, exc: OSError) -> FileSystemError:
        where = f"{exc.filename}: " if exc.filename else ""
        return cls(f"{where}{exc.strerror or exc}")


class OutOfMemory(MedsegError):
    """An allocation the machine could not make (often from an absurd input: a spacing of 1e6 mm, a target
    spacing of 1e-9 mm, 10^11 bootstrap resamples): one line with what was asked, not a traceback."""

    exit_code = 8

    @classmethod
    def from_memory_error(cls, exc: MemoryError) -> OutOfMemory:
        asked = one_line(str(exc)) or "an allocation failed"
        return cls(f"out of memory: {asked}; check the input's sizes and spacings, or use a larger machine")

    @classmethod
    def from_import_error(cls, exc: ImportError) -> OutOfMemory | None:
        """A library the loader could not map into memory (`ulimit -v` below what torch's libraries take,
        about 5 GiB of address space: `libtorch_cpu.so: failed to map segment from shared object`), or None
        for any other ImportError."""
        text = one_line(str(exc))
        if not any(sign in text.lower() for sign in _LOADER_OUT_OF_MEMORY):
            return None
        from medseg_bench.checks import usable_memory

        memory = usable_memory()
        within = f" within {memory}" if memory is not None else ""
        return cls(f"out of memory: a library could not be loaded{within} ({text}); run with more memory "
                   "(torch's libraries alone take about 5 GiB of address space: raise `ulimit -v`)")


# what the dynamic loader (glibc's dlopen) says when mapping a shared library fails for want of memory
_LOADER_OUT_OF_MEMORY = ("failed to map segment from shared object", "cannot allocate memory",
                         "cannot map zero-fill pages")


class Interrupted(MedsegError):
    """A command stopped by SIGINT or SIGTERM: nothing finished is lost; a sweep's interrupted run resumes."""

    exit_code = 130

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
