"""Get a task into DATA_DIR/<Task>/: download (resumable, md5-checked) or import, extract safely, validate.

A task folder is either complete and marked valid (it holds `MARKER`) or absent: everything is assembled in
a temporary folder next to the target and renamed into place at the end.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from medseg_bench.data.archive import MAX_ARCHIVE_MEMBERS, extract_archive, task_root
from medseg_bench.data.download import download, request_url, shown_url, verify_md5
from medseg_bench.data.nnunet_raw import convert as convert_nnunet_raw
from medseg_bench.data.nnunet_raw import is_nnunet_raw
from medseg_bench.data.validate import (
    ValidationReport,
    refusal,
    report_warnings,
    validate_folder,
)
from medseg_bench.errors import DataError, FetchError, FileSystemError, MedsegError, UsageError
from medseg_bench.files import file_in_the_way, kind_of, load_json_object, write_json_atomic
from medseg_bench.locks import exclusive
from medseg_bench.spec import TaskSpec
from medseg_bench.task_fields import is_md5

MARKER = ".medseg-bench-valid.json"
# The most entries (files and folders, at any depth) a folder to import may hold, as an archive
# (`archive.MAX_ARCHIVE_MEMBERS`): a folder of millions of files was walked, then copied, for hours.
MAX_SOURCE_ENTRIES = MAX_ARCHIVE_MEMBERS


@dataclass(frozen=True)
class FetchOutcome:
    folder: Path
    already_present: bool
    report: ValidationReport | None
    warnings: tuple[str, ...] = ()
    excluded: int = 0  # of a task already present: cases its validation excluded


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def task_command(command: str, task: str, data_dir: Path, *options: str) -> str:
    """`medseg-bench COMMAND TASK OPTIONS` for the task in `data_dir`: `--data-dir` only where it is not the
    default one (without it the command would act on the default data folder, not the one asked for)."""
    from medseg_bench.settings import get_settings

    default = Path(os.path.abspath(get_settings().data_dir)) == Path(os.path.abspath(data_dir))
    words = [command, shlex.quote(task), *options]
    if not default:
        words += ["--data-dir", shlex.quote(str(data_dir))]
    return "medseg-bench " + " ".join(words)


def fetch_command(task: str, data_dir: Path) -> str:
    """The command that fetches `task` into `data_dir`."""
    return task_command("fetch", task, data_dir)


def check_in_place_command(folder: Path) -> str:
    """The command that checks a task folder `DATA_DIR/<Task>` put there by hand in place, and marks it."""
    return task_command("fetch", folder.name, folder.parent, "--source", shlex.quote(str(folder)))


def unfetched(folder: Path, stop: str = "") -> MedsegError:
    """The error of a task folder `DATA_DIR/<Task>` that is not fetched (`not_fetched`), a usage error where
    the data folder is a file or under one (exit 2, as fetch says it)."""
    problem = _data_dir_problem(folder.parent)
    if problem is not None:
        return UsageError(problem + (f" ({stop})" if stop else ""))
    return DataError(not_fetched(folder, stop))


def not_fetched(folder: Path, stop: str = "") -> str:
    """The problem of a task folder `DATA_DIR/<Task>` that is not fetched, `stop` (what that stops, if
    said), and the command that mends it: fetch the task; where a folder fetch did not make is there, check
    it in place (a plain fetch refuses it)."""
    stop = f"{stop}: " if stop else ""
    if folder.is_dir():
        return (f"{folder}: a folder that `medseg-bench fetch` did not make (no {MARKER}); {stop}check it in "
                f"place with `{check_in_place_command(folder)}`")
    return (f"{folder}: task not fetched (or incomplete); {stop}run "
            f"`{fetch_command(folder.name, folder.parent)}` first")


def _check_url(url: str) -> None:
    """UsageError unless `url` parses as an http(s) URL with a host (and a numeric port, if any) that can be
    sent (`download.request_url`), without a user or password: urllib sends neither (it asked the host
    `user:secret@host`), which was retried 4 times; the password is never shown."""
    from urllib.parse import urlsplit

    shown = shown_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number in range)
        request_url(url)
    except ValueError as exc:
        raise UsageError(f"{shown}: not a valid URL ({exc})") from None
    if not parts.hostname:
        raise UsageError(f"{shown}: not a valid URL (no host)")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"{shown}: a URL with a user or password is not fetched (they would not be sent); "
                         "download the archive yourself and pass it with --source FILE")


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
        outcome = _fetch_locked(task, data_dir, origin, md5, timeout_s, progress, strict, say)
    if md5 is not None and local is not None and local.is_dir():  # said, not silently dropped
        ignored = f"{local}: --md5 ignored: a folder has no checksum (only archives are verified)"
        outcome = replace(outcome, warnings=(ignored, *outcome.warnings))
    return outcome


def _check_data_dir(data_dir: Path) -> None:
    """UsageError when the data folder is a file, or cannot be made because a file is on its path (mkdir
    said "File exists" or "Not a directory", exit 7)."""
    problem = _data_dir_problem(data_dir)
    if problem is not None:
        raise UsageError(problem)


def _data_dir_problem(data_dir: Path) -> str | None:
    """Why `data_dir` cannot be the data folder: it is a file or a broken link, or one is on its path (which,
    worded as for `--results-dir`: `files.kind_of`)."""
    blocker = file_in_the_way(data_dir, itself=True)
    if blocker == data_dir:
        return f"{data_dir}: the data folder is {kind_of(data_dir)}, not a folder; choose another --data-dir"
    if blocker is not None:
        return (f"{data_dir}: the data folder cannot be made ({blocker} is {kind_of(blocker)}, not a "
                "folder); choose another --data-dir")
    return None


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
            f"`{task_command('validate', task.name, data_dir, '--strict')}`)")
    return FetchOutcome(target, True, None, excluded=len(excluded))


def read_marker(folder: Path) -> dict:
    """The task folder's marker (source, md5, excluded cases); DataError naming it when it is damaged."""
    path = folder / MARKER
    data, why = load_json_object(path)
    excluded = data.get("excluded", []) if data is not None else None
    if not isinstance(excluded, list) or not all(isinstance(e, dict) and isinstance(e.get("case"), str)
                                                 for e in excluded):
        raise DataError(f"{path}: damaged ({why or 'not the marker the fetch wrote'}); run "
                        f"`{task_command('validate', folder.name, folder.parent)}` to rebuild it")
    assert data is not None
    return data


def _fetch_locked(task: TaskSpec, data_dir: Path, origin: str, md5: str | None, timeout_s: float,
                  progress: bool, strict: bool, say: Callable[[str], object] | None = None) -> FetchOutcome:
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
                        f"way; nothing was touched: move it away, or check it in place with "
                        f"`{check_in_place_command(target)}`")
    data_dir.mkdir(parents=True, exist_ok=True)
    if staging.exists() or staging.is_symlink():
        try:
            remove_tree(staging)
        except OSError as exc:
            why = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            raise FileSystemError(f"{staging}: cannot remove what an earlier fetch left there ({why}); "
                                  "remove it by hand") from None
    staging.mkdir()
    in_source: Callable[[str], str]  # names a file of the copy as the user has it (folder, ARCHIVE:member)
    try:
        if origin.lower().startswith(("http://", "https://")):  # a scheme's case does not matter
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
                try:
                    verify_md5(local, verified)
                except FetchError as exc:
                    if md5 is not None:
                        raise
                    raise FetchError(f"{exc}: not {task.name}'s official archive? pass the md5 of your own "
                                     "with --md5") from None
                root = extract_archive(local, staging)
                in_source = Relocation(staging, f"{local}:")
            elif local.exists():
                raise FetchError(f"{local}: not a folder or a .tar archive")
            else:
                raise FetchError(f"{local}: no such file or folder")
        conversion = None
        try:
            if is_nnunet_raw(root):  # one file per channel, no training list: into MSD's layout, in the copy
                conversion = convert_nnunet_raw(root, say or (lambda line: None))
                renames = [Relocation(written, source) for written, source in conversion.sources.items()]
                in_source = _chained(renames, in_source)
            report = validate_folder(root, task)
        except DataError as exc:  # dataset.json itself: named where the user has it
            raise DataError(in_source(str(exc))) from None
        if report.problems and (strict or not report.usable_cases):
            raise _fatal(_renamed(report, in_source), strict)  # nothing kept: named where the user has them
        if conversion is not None:  # a converted image's problem names the user's file too
            report = _with_sources(report, conversion.sources, in_source)
        report = _renamed(report, Relocation(root, str(target)))  # kept: named where they are now
        warnings = tuple(Relocation(root, str(target))(w) for w in _users_json(
            report_warnings(task, report, root), root, in_source if conversion is not None else None))
        if conversion is not None:  # about the dataset the user has: named there
            warnings = tuple(in_source(w) for w in conversion.warnings) + warnings
        try:
            _write_marker(root, task, origin, verified, report)
            root.rename(target)
        except OSError as exc:
            raise _unfinished(exc, root, target) from None
    finally:
        remove_tree(staging, ignore_errors=True)
    return FetchOutcome(target, False, report, warnings)


def _unfinished(exc: OSError, root: Path, target: Path) -> FileSystemError:
    """The error of a marker not written or a rename into place that failed (a disk that held the cases
    but not the marker), named where it would have been, `target`'s: the staging copy `root` is removed and
    the user never saw it."""
    where = Relocation(root, str(target))(str(exc.filename)) if exc.filename else str(target)
    return FileSystemError(f"{where}: {exc.strerror or exc}; the task folder could not be finished, nothing "
                           "was kept")


def _users_json(warnings: list[str], root: Path, in_source: Callable[[str], str] | None) -> list[str]:
    """`warnings`, where the task's dataset.json was written by an import (`in_source` given): those about
    that file (its labels, its channels: nnU-Net's `channel_names` became its `modality`) name the user's
    dataset.json it was written from, not the generated one in the data dir."""
    if in_source is None:
        return warnings
    written = f"{root / 'dataset.json'}: "
    return [in_source(w) if w.startswith(written) else w for w in warnings]


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
    return FetchOutcome(target, False, report, tuple(report_warnings(task, report, target)))


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


def _chained(renames: list[Relocation], then: Callable[[str], str]) -> Callable[[str], str]:
    """`then` after each of `renames` (a converted file named as the user's file it came from)."""
    def rename(text: str) -> str:
        for relocation in renames:
            text = relocation(text)
        return then(text)

    return rename


def _renamed(report: ValidationReport, rename: Callable[[str], str]) -> ValidationReport:
    return replace(report, problems=[replace(p, file=rename(p.file), message=rename(p.message))
                                     for p in report.problems])


def _with_sources(report: ValidationReport, sources: dict[Path, str],
                  in_source: Callable[[str], str]) -> ValidationReport:
    """Each problem of a converted file with the user's file it came from. Both sides' paths resolved: a
    problem names its file resolved (`msd`'s entries are), the conversion as the staging folder was given,
    relative under a relative --data-dir (whose problems named no source until 2026-12-04)."""
    resolved = {path.resolve(): source for path, source in sources.items()}
    return replace(report, problems=[
        replace(p, imported_from=in_source(resolved[Path(p.file).resolve()]))
        if Path(p.file).resolve() in resolved else p
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


def import_folder(folder: Path, staging: Path) -> tuple[Path, Path]:
    """Copy a local MSD-layout folder (dataset.json, imagesTr, labelsTr, imagesTs), skipping `._*` files; the
    copy is the owner's to write, whatever the source's modes.

    A folder that holds one task folder (the extracted archive's parent, say) is searched one level down,
    as an archive is."""
    if not (folder / "dataset.json").is_file():
        inner = sorted(p for p in _counted(folder, _listed(folder)) if p.is_dir()
                       and (p / "dataset.json").is_file()) if folder.is_dir() else []
        if len(inner) > 1:
            task_root(folder, folder)  # several: the same one-line error as for an archive
        if not inner:
            raise DataError(f"{folder / 'dataset.json'}: dataset.json missing")
        folder = inner[0]
    _check_source_entries(folder)
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


def _check_source_entries(folder: Path) -> None:
    """Refuse a link in a folder to import that leads out of it, or to a folder, and anything that is neither
    a file nor a folder (`_check_plain`): the copy follows links, so
    `imagesTr/x.nii.gz -> /etc/passwd` would copy that file into the task, and a link to a folder would
    copy the tree it leads to (all of it, for a link to `/`; without end, for one to a folder above it).
    A link to a file inside the folder is copied as that file. `._*` files and the marker are not copied."""
    root = folder.resolve()
    for link in _counted(folder, _walked(folder)):
        if link.name.startswith("._") or link.name == MARKER:
            continue
        if not link.is_symlink():
            _check_plain(link)
            continue
        try:
            target = link.resolve()
        except (OSError, RuntimeError):  # a loop of links: RuntimeError before Python 3.13
            raise DataError(f"{link}: a link that leads back to itself") from None
        if target != root and root not in target.parents:
            raise DataError(f"{link}: a link to {target}, outside {folder}; fetch copies only what the "
                            "folder holds: copy the file in its place")
        if target.is_dir():
            raise DataError(f"{link}: a link to the folder {target}; fetch copies files, not links to "
                            "folders: copy the folder in its place")
        _check_plain(target, link)


def _counted(folder: Path, entries: Iterator[Path]) -> Iterator[Path]:
    """`entries` of `folder`, a DataError at the first past `MAX_SOURCE_ENTRIES` (before the rest is
    listed)."""
    for count, entry in enumerate(entries, 1):
        if count > MAX_SOURCE_ENTRIES:
            raise DataError(f"{folder}: too many entries (more than {MAX_SOURCE_ENTRIES}; an MSD task folder "
                            "holds a few thousand at most)")
        yield entry


def _listed(folder: Path) -> Iterator[Path]:
    """`folder`'s entries one at a time, as the system lists them (`os.scandir`; `Path.iterdir` reads a
    folder's every name first)."""
    with os.scandir(folder) as listing:
        for entry in listing:
            yield Path(entry.path)


def _walked(folder: Path) -> Iterator[Path]:
    """Every entry below `folder`, each folder's before what it holds, listed one at a time (`os.walk` reads
    a folder's every name before it yields any: millions, for a folder of millions). Links to folders are
    given, not followed; a folder that cannot be listed is passed over, as by `os.walk` (the copy names
    it)."""
    pending = [folder]
    while pending:
        parent = pending.pop()
        try:
            listing = os.scandir(parent)
        except OSError:
            continue
        with listing:
            while True:
                try:
                    entry = next(listing)
                except StopIteration:
                    break
                except OSError:  # the folder went away, or a read failed, while listed: as os.walk
                    break
                try:
                    is_folder = entry.is_dir(follow_symlinks=False)
                except OSError:  # as os.walk: not descended into; its own checks name it
                    is_folder = False
                if is_folder:
                    pending.append(Path(entry.path))
                yield Path(entry.path)


def _check_plain(path: Path, named: Path | None = None) -> None:
    """Refuse what is neither a file nor a folder: the copy blocked for ever opening a named pipe, and read a
    device (`/dev/zero`: without end) as if it were a file."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise DataError(f"{named or path}: a link to {path}, which does not exist") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
                stat.S_IFBLK: "a device"}.get(stat.S_IFMT(mode), "not a file")
        raise DataError(f"{named or path}: {kind}, not a file; fetch copies files and folders only")
