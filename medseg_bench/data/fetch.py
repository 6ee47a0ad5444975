"""Get a task into DATA_DIR/<Task>/: download (resumable, md5-checked) or import, extract safely, validate.

A task folder is either complete and marked valid (it holds `MARKER`) or absent: everything is assembled in
a temporary folder next to the target and renamed into place at the end.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import re
import shlex
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from medseg_bench.data.io import file_in_the_way, load_json_object, write_json_atomic
from medseg_bench.data.validate import (
    ValidationReport,
    case_count_warnings,
    label_warnings,
    refusal,
    validate_folder,
)
from medseg_bench.errors import DataError, FetchError, FileSystemError, MedsegError, UsageError
from medseg_bench.locks import exclusive
from medseg_bench.spec import TaskSpec, is_md5

MARKER = ".medseg-bench-valid.json"
CHUNK_BYTES = 1 << 20
# tarfile's extraction filters came with Python 3.10.12 and 3.11.4; older ones extract with our checks alone.
TAR_FILTERS = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if TAR_FILTERS else ()
# An entry that cannot be written for one of these reasons clashes with another entry of the archive.
_CLASHES = {
    errno.EISDIR: "the archive also holds a folder of that name",
    errno.ENOTDIR: "the archive holds a file where a folder on its path should be",
    errno.EEXIST: "the archive holds another entry of that name",
}


@dataclass(frozen=True)
class FetchOutcome:
    folder: Path
    already_present: bool
    report: ValidationReport | None
    warnings: tuple[str, ...] = ()
    excluded: int = 0  # of a task already present: cases its validation excluded


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _check_url(url: str) -> None:
    """UsageError unless `url` parses as an http(s) URL with a host (and a numeric port, if any)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
    except ValueError as exc:
        raise UsageError(f"{url}: not a valid URL ({exc})") from None
    if not parts.hostname:
        raise UsageError(f"{url}: not a valid URL (no host)")


def resolve_source(task: TaskSpec, source: str | None, mirror: str | None) -> str:
    if source is not None:
        if not source.strip():
            raise UsageError("--source is empty: give a folder, a .tar archive or an http(s) URL")
        return source
    if task.local_path:
        return task.local_path
    if mirror:
        return f"{mirror.rstrip('/')}/{task.name}.tar"
    if task.url:
        return task.url
    raise UsageError(f"task {task.name} declares no url or local_path; pass --source")


def fetch_task(
    task: TaskSpec,
    data_dir: Path,
    source: str | None = None,
    md5: str | None = None,
    mirror: str | None = None,
    timeout_s: float = 60.0,
    progress: bool = True,
    strict: bool = False,
    say: Callable[[str], object] | None = None,
) -> FetchOutcome:
    """Fetch `task` into `data_dir`; a complete task is left alone.

    With `strict`, any validation problem is fatal (nothing is kept); without it, bad cases are excluded and
    listed in the marker. A case count that differs from the catalog's is a warning (subsets are allowed).
    Two fetches of one task never work at once: the second waits (`say` tells why), then finds it complete.
    An `md5` for a folder is ignored, with a warning.
    """
    if md5 is not None and not is_md5(md5):
        raise UsageError(f"--md5 {md5!r} is not an md5 checksum (32 hexadecimal digits)")
    md5 = md5.strip() if md5 is not None else None
    _check_data_dir(data_dir)
    present = _already_present(task, data_dir, strict)
    if present is not None:
        return present
    origin = resolve_source(task, source, mirror)
    local = None if "://" in origin else Path(origin).expanduser()
    if local is not None and local.is_dir() and data_dir.resolve().is_relative_to(local.resolve()):
        raise UsageError(f"{data_dir}: the data folder is inside the source folder {local}; choose another "
                         "--data-dir")

    def waiting() -> None:
        if say is not None:
            say(f"{task.name}: another fetch of this task is running in {data_dir}; waiting for it")

    with exclusive(data_dir, f".{task.name}.fetch.lock", on_wait=waiting):
        present = _already_present(task, data_dir, strict)  # the fetch we waited for may have finished it
        if present is not None:
            return present
        outcome = _fetch_locked(task, data_dir, origin, md5, timeout_s, progress, strict)
    if md5 is not None and local is not None and local.is_dir():  # said, not silently dropped
        ignored = f"{local}: --md5 ignored: a folder has no checksum (only archives are verified)"
        outcome = replace(outcome, warnings=(ignored, *outcome.warnings))
    return outcome


def _check_data_dir(data_dir: Path) -> None:
    """UsageError when the data folder is a file, or cannot be made because a file is on its path (mkdir
    said "File exists" or "Not a directory", exit 7)."""
    blocker = file_in_the_way(data_dir / "task")  # the data folder itself, or a parent of it
    if blocker == data_dir:
        raise UsageError(f"{data_dir}: the data folder is not a folder; choose another --data-dir")
    if blocker is not None:
        raise UsageError(f"{data_dir}: the data folder cannot be made ({blocker} is not a folder); choose "
                         "another --data-dir")


def _already_present(task: TaskSpec, data_dir: Path, strict: bool) -> FetchOutcome | None:
    target = data_dir / task.name
    if not is_complete(target):
        return None
    # A fetch killed after the rename into place leaves an empty staging folder behind.
    remove_tree(data_dir / f".{task.name}.partial", ignore_errors=True)
    excluded = read_marker(target).get("excluded") or []
    if strict and excluded:
        first = excluded[0]
        raise DataError(f"{first.get('file')}: {first.get('problem')}" + (
            f" and {len(excluded) - 1} more excluded case(s)" if len(excluded) > 1 else "")
            + f" (--strict: {target} was fetched with excluded cases; fix them, then run "
            f"`medseg-bench validate {task.name} --strict`)")
    return FetchOutcome(target, True, None, excluded=len(excluded))


def read_marker(folder: Path) -> dict:
    """The task folder's marker (source, md5, excluded cases); DataError naming it when it is damaged."""
    path = folder / MARKER
    data, why = load_json_object(path)
    excluded = data.get("excluded", []) if data is not None else None
    if not isinstance(excluded, list) or not all(isinstance(e, dict) and isinstance(e.get("case"), str)
                                                 for e in excluded):
        raise DataError(f"{path}: damaged ({why or 'not the marker the fetch wrote'}); run `medseg-bench "
                        f"validate {folder.name}` to rebuild it")
    assert data is not None
    return data


def _fetch_locked(task: TaskSpec, data_dir: Path, origin: str, md5: str | None, timeout_s: float,
                  progress: bool, strict: bool) -> FetchOutcome:
    """`fetch_task`'s work, under the task's fetch lock."""
    target = data_dir / task.name
    staging = data_dir / f".{task.name}.partial"
    local = None if "://" in origin else Path(origin).expanduser()
    if target.exists() or target.is_symlink():
        # The fetch itself only ever renames a complete, marked folder into place: an unmarked one is the
        # user's (a dataset put there by hand, a copy that lost its marker). It is never deleted.
        if local is not None and local.is_dir() and local.resolve() == target.resolve():
            return _validate_in_place(task, target, origin, strict)
        raise DataError(f"{target}: a folder that `medseg-bench fetch` did not make (no {MARKER}) is in the "
                        f"way; nothing was touched: move it away, or check it in place with `medseg-bench "
                        f"fetch {shlex.quote(task.name)} --source {shlex.quote(str(target))}`")
    data_dir.mkdir(parents=True, exist_ok=True)
    if staging.exists() or staging.is_symlink():
        try:
            remove_tree(staging)
        except OSError as exc:
            why = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            raise FileSystemError(f"{staging}: cannot remove what an earlier fetch left there ({why}); "
                                  "remove it by hand") from None
    staging.mkdir()
    try:
        if origin.startswith(("http://", "https://")):
            _check_url(origin)
            verified = _expected_md5(task, md5, origin)
            archive = download(origin, data_dir / ".downloads" / f"{task.name}.tar", verified, timeout_s,
                               progress)
            root = extract_archive(archive, staging)
            in_source = Relocation(staging, f"{archive}:")  # ARCHIVE:member, as the archive holds it
        elif "://" in origin:
            raise UsageError(f"{origin}: only http(s) URLs and local paths are accepted")
        else:
            assert local is not None
            if local.is_dir():
                root, task_folder = import_folder(local, staging)
                in_source = Relocation(root, str(task_folder))
                verified = None  # a folder has no checksum
            elif local.is_file():
                verified = _expected_md5(task, md5, origin)
                verify_md5(local, verified)
                root = extract_archive(local, staging)
                in_source = Relocation(staging, f"{local}:")
            elif local.exists():
                raise FetchError(f"{local}: not a folder or a .tar archive")
            else:
                raise FetchError(f"{local}: no such file or folder")
        try:
            report = validate_folder(root, task)
        except DataError as exc:  # dataset.json itself: named where the user has it
            raise DataError(in_source(str(exc))) from None
        if report.problems and (strict or not report.usable_cases):
            raise _fatal(_renamed(report, in_source), strict)  # nothing kept: named where the user has them
        report = _renamed(report, Relocation(root, str(target)))  # kept: named where they are now
        warnings = tuple(case_count_warnings(task, report) + label_warnings(root, task))
        warnings = tuple(Relocation(root, str(target))(w) for w in warnings)
        _write_marker(root, task, origin, verified, report)
        root.rename(target)
    finally:
        remove_tree(staging, ignore_errors=True)
    return FetchOutcome(target, False, report, warnings)


def remove_tree(folder: Path, ignore_errors: bool = False) -> None:
    """`shutil.rmtree`, with every folder under `folder` made owner-writable first: a staging copy of a
    read-only source made by an older version kept the source's modes, and an entry cannot be removed from a
    read-only folder (except by root)."""
    try:
        if folder.is_symlink() or not folder.is_dir():
            folder.unlink(missing_ok=True)
            return
        make_owner_writable(folder, files=False)
    except OSError:
        if not ignore_errors:
            raise
    shutil.rmtree(folder, ignore_errors=ignore_errors)  # with ignore_errors: whatever it can


def make_owner_writable(folder: Path, files: bool = True) -> None:
    """Give the owner read, write and search permission on `folder` and every folder under it, and write
    permission on every file (with `files`); links are not followed."""
    _add_mode(folder, stat.S_IRWXU)
    for parent, dirs, names in os.walk(folder):  # top-down: a folder is opened after its mode was fixed
        for name in dirs:
            _add_mode(Path(parent, name), stat.S_IRWXU)
        for name in names if files else ():
            _add_mode(Path(parent, name), stat.S_IWUSR)


def _add_mode(path: Path, bits: int) -> None:
    mode = path.lstat().st_mode
    if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _validate_in_place(task: TaskSpec, target: Path, origin: str, strict: bool) -> FetchOutcome:
    """`--source DATA_DIR/<Task>`: the folder is already where it belongs; validate it and mark it."""
    report = validate_folder(target, task)
    if report.problems and (strict or not report.usable_cases):
        raise _fatal(report, strict, kept="nothing was changed")
    _write_marker(target, task, origin, None, report)
    return FetchOutcome(target, False, report, tuple(case_count_warnings(task, report)
                                                     + label_warnings(target, task)))


def _fatal(report: ValidationReport, strict: bool, kept: str = "nothing was kept") -> DataError:
    return refusal(report, f"--strict: {kept}" if strict else f"no usable training case: {kept}")


def _write_marker(root: Path, task: TaskSpec, origin: str, md5: str | None, report: ValidationReport) -> None:
    local = None if "://" in origin else Path(origin).expanduser().resolve()
    write_json_atomic(root / MARKER, {
        "task": task.name,
        "source": str(local) if local is not None else origin,
        "md5": md5,  # the checksum that was verified; None for a folder
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cases": len(report.cases),
        "excluded": _excluded_entries(report),
    })


@dataclass(frozen=True)
class Relocation:
    """Rewrites every path under `prefix` in a text (a file name, an error message) to start with `to`."""

    prefix: Path
    to: str

    def __call__(self, text: str) -> str:
        sep = "" if self.to.endswith(":") else "/"
        to = self.to.rstrip(":")
        for written in sorted({str(self.prefix), str(self.prefix.resolve())}, key=len, reverse=True):
            text = text.replace(written + "/", self.to + sep)  # longest first: one may hold the other
            text = re.sub(re.escape(written) + r"(?![\w.-])", lambda _: to, text)  # a path, not a template
        return text


def _renamed(report: ValidationReport, rename: Callable[[str], str]) -> ValidationReport:
    return replace(report, problems=[replace(p, file=rename(p.file), message=rename(p.message))
                                     for p in report.problems])


def _excluded_entries(report: ValidationReport) -> list[dict[str, str]]:
    return [{"case": p.case_id, "file": p.file, "problem": p.message} for p in report.problems]


def record_validation(folder: Path, report: ValidationReport) -> bool:
    """Rewrite the marker's list of excluded cases after a re-validation; True when it changed."""
    marker = folder / MARKER
    try:
        data = read_marker(folder)
    except DataError:  # damaged: this validation rebuilds it
        data = {"task": folder.name, "rebuilt": True}
    excluded = _excluded_entries(report)
    if data.get("excluded") == excluded and data.get("cases") == len(report.cases):
        return False
    data.update(excluded=excluded, cases=len(report.cases), validated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_json_atomic(marker, data)
    return True


def _expected_md5(task: TaskSpec, md5: str | None, origin: str) -> str:
    expected = md5 or task.md5
    if not expected:
        raise UsageError(
            f"{origin}: no checksum known for {task.name}; pass --md5 (verification cannot be skipped)"
        )
    return expected.lower()


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    actual = md5_of(path)
    if actual != expected.lower():
        raise FetchError(f"{path}: md5 mismatch (expected {expected}, got {actual})")


def download(
    url: str, dest: Path, md5: str, timeout_s: float = 60.0, progress: bool = True, attempts: int = 4
) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with HTTP Range; verified by md5 before it is kept.

    A resumed request carries `If-Range` with the validator (strong ETag, else Last-Modified) of the response
    the part file began with, kept beside it in `dest.part.validator`: if the file on the server has changed
    since, the server sends all of it and the download starts over instead of splicing two files.
    """
    if dest.is_file():
        if md5_of(dest) == md5:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error = ""
    for attempt in range(attempts):
        try:
            _download_once(url, part, timeout_s, progress)
            break
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, FetchError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 416:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            reason = getattr(exc, "reason", None) or exc
            last_error = (
                f"no data from the server for {timeout_s:g} s (timed out)"
                if isinstance(reason, TimeoutError)
                else f"{type(exc).__name__}: {exc}" if isinstance(exc, http.client.HTTPException)
                else str(reason)
            )
            time.sleep(min(2.0**attempt, 8.0) * 0.25)
    else:
        raise FetchError(f"{url}: download failed after {attempts} attempts ({last_error}); rerun to resume")
    _validator_file(part).unlink(missing_ok=True)
    actual = md5_of(part)
    if actual != md5:
        part.unlink()
        raise FetchError(f"{url}: md5 mismatch (expected {md5}, got {actual}); the download was discarded")
    part.replace(dest)
    return dest


def _validator_file(part: Path) -> Path:
    return part.with_name(part.name + ".validator")


def _validator(headers: http.client.HTTPMessage) -> str | None:
    """What identifies this version of the file for `If-Range` (RFC 9110 13.1.5): a strong ETag; without
    one, Last-Modified; nothing when the ETag is weak (neither may then be sent)."""
    etag = headers.get("ETag")
    if etag:
        return None if etag.startswith("W/") else etag
    return headers.get("Last-Modified")


def _download_once(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {}
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _validator_file(part)
        if validator.is_file():
            headers["If-Range"] = validator.read_text().strip()
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 (scheme checked by caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # range not satisfiable: the part file is already whole (a fetch stopped while
            # it checked the md5), or bad
            whole = re.fullmatch(r"bytes \*/(\d+)", (exc.headers.get("Content-Range") or "").strip())
            if whole is not None and int(whole.group(1)) == have:
                return  # every byte is here: the md5 check decides
            part.unlink(missing_ok=True)  # start over
        raise
    with response:
        fresh = not (have and response.status == 206)
        if not fresh:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range") or "")
            if start is not None and int(start.group(1)) != have:
                part.unlink()
                raise FetchError(f"{url}: the server sent bytes from {start.group(1)} when asked from "
                                 f"{have}; starting over")
        else:
            # a whole file: the server ignored the range, or the file changed since the part began (If-Range)
            have = 0
        length = _content_length(response.headers)
        total = have + length if length is not None else None
        mode = "ab" if have else "wb"
        try:
            fh = open(part, mode)  # noqa: SIM115 - closed below; its write errors are ours, not the server's
        except OSError as exc:
            raise FileSystemError(f"{part}: cannot write the download ({exc.strerror or exc})") from None
        if fresh:  # once the part file holds this response's start (truncated), not before
            _remember_validator(part, _validator(response.headers))
        with fh, _progress(progress, url, total, have) as advance:
            received = 0
            while chunk := response.read1(CHUNK_BYTES):  # what has come: a stall keeps it
                try:
                    fh.write(chunk)
                except OSError as exc:  # disk full: retrying cannot help; the part file is kept to resume
                    raise FileSystemError(f"{part}: cannot write the download ({exc.strerror or exc}); "
                                          "rerun to resume once there is room") from None
                received += len(chunk)
                advance(len(chunk))
        if length is not None and received < length:
            raise FetchError(f"{url}: connection closed after {have + received} of {total} bytes")


def _content_length(headers: http.client.HTTPMessage) -> int | None:
    """The body's length, or None when the header is absent or malformed ("5, 5"): then the body is read
    until the server closes it, and the md5 check decides."""
    value = (headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def _remember_validator(part: Path, validator: str | None) -> None:
    """Keep the validator of the response a new part file begins with (none: resumed without If-Range)."""
    path = _validator_file(part)
    try:
        if validator is None or not re.fullmatch(r"[\x20-\x7e]{1,200}", validator):
            path.unlink(missing_ok=True)
        else:
            path.write_text(validator)
    except OSError as exc:
        reason = exc.strerror or exc
        raise FileSystemError(f"{path}: cannot write the download's validator ({reason})") from None


class _progress:
    """A rich download bar (bytes, rate, ETA), or nothing."""

    def __init__(self, enabled: bool, url: str, total: int | None, done: int) -> None:
        self.enabled, self.url, self.total, self.done = enabled, url, total, done

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            TextColumn("download"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.__enter__()
        task_id = self.bar.add_task("download", total=self.total, completed=self.done)
        return lambda n: self.bar.advance(task_id, n)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bar.__exit__(None, None, None)


def extract_archive(archive: Path, staging: Path) -> Path:
    """Extract a tar safely into `staging` and return the folder that holds dataset.json.

    Every entry is checked before anything is written (`_check_member`), and again just before it is written,
    through the links extracted so far (`_check_destination`): these checks alone refuse what matters of what
    tarfile's "data" filter refuses, for Pythons without it; where it exists, the filter checks too. Entries
    come out as the filter makes them (`_drop_privileges`). An entry that clashes with another (a file and a
    folder of one name) is the archive's fault; a disk that cannot take it is not.
    """
    try:
        tar = tarfile.open(archive)
    except (tarfile.TarError, EOFError, OSError) as exc:
        first = str(exc).splitlines()[0].rstrip(":")
        raise FetchError(f"{archive}: not a readable tar archive ({first})") from None
    entry: list[str] = []  # the name of the entry being extracted
    try:
        with tar:
            for member in tar.getmembers():
                _check_member(archive, member)
                _drop_privileges(member)
            _extract(tar, archive, staging, entry)
    except _FILTER_ERRORS as exc:
        raise FetchError(f"{archive}: unsafe archive entry ({exc})") from None
    except OSError as exc:
        raise _extraction_error(archive, staging, exc, entry[0] if entry else None) from None
    except (tarfile.TarError, EOFError) as exc:
        raise FetchError(f"{archive}: corrupt or truncated archive ({exc})") from None
    root = _task_root(staging, archive)
    _check_links(archive, root)
    return root


def _extract(tar: tarfile.TarFile, archive: Path, staging: Path, entry: list[str]) -> None:
    """Extract every entry of `tar` into `staging`, each checked just before it is written; `entry` holds the
    name of the one being extracted."""
    inside = os.path.realpath(staging)

    def one_by_one() -> Iterator[tarfile.TarInfo]:  # extractall takes each when it writes it
        for member in tar.getmembers():
            entry[:] = [member.name]
            _check_destination(archive, inside, member)
            yield member

    if TAR_FILTERS:
        tar.extractall(staging, members=one_by_one(), filter="data")
    else:
        tar.extractall(staging, members=one_by_one(), numeric_owner=True)


def _extraction_error(archive: Path, staging: Path, exc: OSError, entry: str | None) -> MedsegError:
    reason = exc.strerror or str(exc)
    if exc.errno in _CLASHES:
        named = f"entry '{entry}'" if entry is not None else "an entry"
        return FetchError(f"{archive}: {named} cannot be extracted ({reason}: {_CLASHES[exc.errno]})")
    if exc.errno is not None:  # writing failed (disk full, permissions): not the archive's fault
        return FileSystemError(f"{staging.parent}: cannot extract {archive} here ({reason})")
    return FetchError(f"{archive}: corrupt or truncated archive ({exc})")  # e.g. a bad gzip


def _drop_privileges(member: tarfile.TarInfo) -> None:
    """The entry's mode and owner as the "data" filter sets them, on the archive's own entry (where a hard
    link whose target is missing reads it): no setuid, setgid or sticky bit, no write for group or others,
    files readable and writable by their owner, folders also searchable; owned by whoever extracts."""
    mode = member.mode & 0o755
    if member.isdir():
        mode |= 0o700
    elif not member.issym():
        mode = (mode if mode & 0o100 else mode & ~0o111) | 0o600
    member.mode = mode
    member.uid, member.gid, member.uname, member.gname = os.geteuid(), os.getegid(), "", ""


def _check_destination(archive: Path, inside: str, member: tarfile.TarInfo) -> None:
    """FetchError when `member`, about to be written under the resolved folder `inside`, would land outside
    it, or is a link that points outside it, following the links extracted before it (the "data" filter's
    check): `p -> q/..` while `q` does not exist, then `q -> ..`, then `p/file` pass each entry's check."""
    path = os.path.join(inside, member.name)
    if os.path.commonpath([os.path.realpath(path), inside]) != inside:
        raise FetchError(f"{archive}: unsafe archive entry '{member.name}' (written through a link pointing "
                         "outside)")
    if member.issym() or member.islnk():
        target = os.path.join(os.path.dirname(path) if member.issym() else inside, member.linkname)
        if os.path.commonpath([os.path.realpath(target), inside]) != inside:
            raise FetchError(f"{archive}: unsafe archive entry '{member.name}' (link pointing outside)")


def _check_links(archive: Path, root: Path) -> None:
    """FetchError when a symbolic link under the extracted task folder `root` resolves outside it. Checked on
    disk, after extraction: a chain of links (`a -> b/c/..` with `b/c -> ..`) passes every entry's own check
    and tarfile's filter, which bound links to the extraction folder, one level above the task."""
    inside = root.resolve()
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            entry = path.relative_to(root.parent).as_posix()
            try:
                target = path.resolve()
            except (RuntimeError, OSError):  # a loop (RuntimeError up to Python 3.12)
                raise FetchError(f"{archive}: unsafe archive entry '{entry}' (a loop of links)") from None
            if not target.is_relative_to(inside):
                raise FetchError(f"{archive}: unsafe archive entry '{entry}' (link pointing outside the task "
                                 "folder)")


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in Path(name).parts:
        raise FetchError(f"{archive}: unsafe archive entry '{name}' (absolute path or '..')")
    if member.isdev():  # character and block devices, FIFOs
        raise FetchError(f"{archive}: unsafe archive entry '{name}' (device file or FIFO)")
    if member.issym() or member.islnk():
        # A symbolic link is relative to its own folder, a hard link to the archive's root.
        target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname) if member.issym()
                                  else member.linkname)
        if os.path.isabs(member.linkname) or target == ".." or target.startswith("../"):
            raise FetchError(f"{archive}: unsafe archive entry '{name}' (link pointing outside)")


def _task_root(staging: Path, source: Path) -> Path:
    if (staging / "dataset.json").is_file():
        return staging
    candidates = sorted(p for p in staging.iterdir() if p.is_dir() and (p / "dataset.json").is_file())
    if len(candidates) > 1:
        raise DataError(f"{source}: several MSD task folders ({', '.join(p.name for p in candidates)}); "
                        "one task per archive")
    if not candidates:
        raise DataError(f"{source}: no MSD task folder (with dataset.json) found")
    return candidates[0]


def import_folder(folder: Path, staging: Path) -> tuple[Path, Path]:
    """Copy a local MSD-layout folder (dataset.json, imagesTr, labelsTr, imagesTs), skipping `._*` files; the
    copy is the owner's to write, whatever the source's modes.

    A folder that holds one task folder (the extracted archive's parent, say) is searched one level down,
    as an archive is."""
    if not (folder / "dataset.json").is_file():
        inner = sorted(p for p in folder.iterdir() if p.is_dir() and (p / "dataset.json").is_file()) \
            if folder.is_dir() else []
        if len(inner) > 1:
            _task_root(folder, folder)  # several: the same one-line error as for an archive
        if not inner:
            raise DataError(f"{folder / 'dataset.json'}: dataset.json missing")
        folder = inner[0]
    root = staging / folder.name
    try:
        shutil.copytree(folder, root, ignore=shutil.ignore_patterns("._*", MARKER), symlinks=False)
        make_owner_writable(root)  # copytree copies modes: a read-only source made a copy fetch cannot mark
    except shutil.Error as exc:  # one (source, destination, reason) per file that failed: name the first
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        if not failures:
            raise FileSystemError(f"{folder}: copy failed ({exc})") from None
        src, _dst, why = failures[0]
        why = re.sub(r"^\[Errno \d+\] ([^:]+)(:.*)?$", r"\1", str(why))  # the reason, not both paths again
        more = f" and {len(failures) - 1} more file(s)" if len(failures) > 1 else ""
        raise FileSystemError(f"{src}: cannot copy it into {staging.parent} ({why}){more}") from None
    return root, folder
