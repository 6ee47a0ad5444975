"""Get a task into DATA_DIR/<Task>/: download (resumable, md5-checked) or import, extract safely, validate.

A task folder is either complete and marked valid (it holds `MARKER`) or absent: everything is assembled in
a temporary folder next to the target and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from medseg_bench.data.io import write_json_atomic
from medseg_bench.data.validate import ValidationReport, case_count_warnings, validate_folder
from medseg_bench.errors import DataError, FetchError, UsageError
from medseg_bench.locks import exclusive
from medseg_bench.spec import TaskSpec

MARKER = ".medseg-bench-valid.json"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class FetchOutcome:
    folder: Path
    already_present: bool
    report: ValidationReport | None
    warnings: tuple[str, ...] = ()


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def resolve_source(task: TaskSpec, source: str | None, mirror: str | None) -> str:
    if source:
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
    """
    present = _already_present(task, data_dir)
    if present is not None:
        return present
    origin = resolve_source(task, source, mirror)

    def waiting() -> None:
        if say is not None:
            say(f"{task.name}: another fetch of this task is running in {data_dir}; waiting for it")

    with exclusive(data_dir, f".{task.name}.fetch.lock", on_wait=waiting):
        present = _already_present(task, data_dir)  # the fetch we waited for may have finished it
        if present is not None:
            return present
        return _fetch_locked(task, data_dir, origin, md5, timeout_s, progress, strict)


def _already_present(task: TaskSpec, data_dir: Path) -> FetchOutcome | None:
    target = data_dir / task.name
    if not is_complete(target):
        return None
    # A fetch killed after the rename into place leaves an empty staging folder behind.
    shutil.rmtree(data_dir / f".{task.name}.partial", ignore_errors=True)
    return FetchOutcome(target, True, None)


def _fetch_locked(task: TaskSpec, data_dir: Path, origin: str, md5: str | None, timeout_s: float,
                  progress: bool, strict: bool) -> FetchOutcome:
    """`fetch_task`'s work, under the task's fetch lock."""
    target = data_dir / task.name
    staging = data_dir / f".{task.name}.partial"
    data_dir.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an unmarked folder is a leftover of an interrupted fetch: never trusted
        shutil.rmtree(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        if origin.startswith(("http://", "https://")):
            expected = _expected_md5(task, md5, origin)
            archive = download(
                origin, data_dir / ".downloads" / f"{task.name}.tar", expected, timeout_s, progress
            )
            root = extract_archive(archive, staging)
            in_source = _archive_member_namer(archive, staging)
        elif "://" in origin:
            raise UsageError(f"{origin}: only http(s) URLs and local paths are accepted")
        else:
            local = Path(origin).expanduser()
            if local.is_dir():
                root = import_folder(local, staging)
                in_source = _relocator(root, local)
            elif local.is_file():
                verify_md5(local, _expected_md5(task, md5, origin))
                root = extract_archive(local, staging)
                in_source = _archive_member_namer(local, staging)
            else:
                raise FetchError(f"{local}: no such file or folder")
        report = validate_folder(root, task)
        if report.problems and (strict or not report.usable_cases):
            # Nothing is kept: name each bad file where the user has it (the folder or archive fetched from).
            first, count = _renamed(report, in_source).problems[0], len(report.problems)
            more = f" and {count - 1} more problem(s)" if count > 1 else ""
            why = "(--strict: nothing was kept)" if strict else "(no usable training case: nothing was kept)"
            raise DataError(f"{first}{more} {why}")
        report = _renamed(report, _relocator(root, target))  # the files are kept: name them where they go
        warnings = tuple(case_count_warnings(task, report))
        write_json_atomic(
            root / MARKER,
            {
                "task": task.name,
                "source": origin,
                "md5": md5 or task.md5,
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cases": len(report.cases),
                "excluded": _excluded_entries(report),
            },
        )
        root.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchOutcome(target, False, report, warnings)


def _relocator(root: Path, place: Path) -> Callable[[str], str]:
    """Maps a path under `root` (the staging copy) to the same relative path under `place`."""
    resolved = root.resolve()

    def rename(path: str) -> str:
        try:
            return str(place / Path(path).resolve().relative_to(resolved))
        except ValueError:
            return path

    return rename


def _archive_member_namer(archive: Path, staging: Path) -> Callable[[str], str]:
    """Maps an extracted path to `ARCHIVE:member` (the file as the archive holds it)."""
    resolved = staging.resolve()

    def rename(path: str) -> str:
        try:
            return f"{archive}:{Path(path).resolve().relative_to(resolved).as_posix()}"
        except ValueError:
            return path

    return rename


def _renamed(report: ValidationReport, rename: Callable[[str], str]) -> ValidationReport:
    return replace(report, problems=[replace(p, file=rename(p.file)) for p in report.problems])


def _excluded_entries(report: ValidationReport) -> list[dict[str, str]]:
    return [{"case": p.case_id, "file": p.file, "problem": p.message} for p in report.problems]


def record_validation(folder: Path, report: ValidationReport) -> bool:
    """Rewrite the marker's list of excluded cases after a re-validation; True when it changed."""
    marker = folder / MARKER
    data = json.loads(marker.read_text())
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
    """Download `url` to `dest`, resuming `dest.part` with HTTP Range; verified by md5 before it is kept."""
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
        except (urllib.error.URLError, OSError, TimeoutError, FetchError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code != 416:
                raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            reason = getattr(exc, "reason", None) or exc
            last_error = (
                f"no data from the server for {timeout_s:g} s (timed out)"
                if isinstance(reason, TimeoutError)
                else str(reason)
            )
            time.sleep(min(2.0**attempt, 8.0) * 0.25)
    else:
        raise FetchError(f"{url}: download failed after {attempts} attempts ({last_error}); rerun to resume")
    actual = md5_of(part)
    if actual != md5:
        part.unlink()
        raise FetchError(f"{url}: md5 mismatch (expected {md5}, got {actual}); the download was discarded")
    part.replace(dest)
    return dest


def _download_once(url: str, part: Path, timeout_s: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # noqa: S310 (scheme checked by caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # range not satisfiable: the part file is complete or bad; start over
            part.unlink(missing_ok=True)
        raise
    with response:
        if have and response.status != 206:
            have = 0  # server ignored the range: restart cleanly
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as fh, _progress(progress, url, total, have) as advance:
            received = 0
            while chunk := response.read(CHUNK_BYTES):
                fh.write(chunk)
                received += len(chunk)
                advance(len(chunk))
        if length is not None and received < int(length):
            raise FetchError(f"{url}: connection closed after {have + received} of {total} bytes")


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
    """Extract a tar safely into `staging` and return the folder that holds dataset.json."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _check_member(archive, member)
            tar.extractall(staging, filter="data")
    except tarfile.FilterError as exc:
        raise FetchError(f"{archive}: unsafe archive entry ({exc})") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{archive}: corrupt or truncated archive ({exc})") from None
    return _task_root(staging, archive)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    if name.startswith("/") or ".." in Path(name).parts:
        raise FetchError(f"{archive}: unsafe archive entry '{name}' (absolute path or '..')")
    if member.isdev():
        raise FetchError(f"{archive}: unsafe archive entry '{name}' (device file)")
    if member.issym() or member.islnk():
        link = Path(member.linkname)
        resolved = Path(name).parent / link if member.issym() else link
        if link.is_absolute() or ".." in resolved.parts:
            raise FetchError(f"{archive}: unsafe archive entry '{name}' (link pointing outside)")


def _task_root(staging: Path, source: Path) -> Path:
    if (staging / "dataset.json").is_file():
        return staging
    candidates = [p for p in staging.iterdir() if p.is_dir() and (p / "dataset.json").is_file()]
    if len(candidates) != 1:
        raise DataError(f"{source}: no MSD task folder (with dataset.json) found")
    return candidates[0]


def import_folder(folder: Path, staging: Path) -> Path:
    """Copy a local MSD-layout folder (dataset.json, imagesTr, labelsTr, imagesTs), skipping `._*` files."""
    if not (folder / "dataset.json").is_file():
        raise DataError(f"{folder / 'dataset.json'}: dataset.json missing")
    root = staging / folder.name
    shutil.copytree(folder, root, ignore=shutil.ignore_patterns("._*", MARKER), symlinks=False)
    return root
