"""Extract an MSD task archive (tar, any compression) safely: no entry lands outside the folder, no link
points out of it, no device file, no setuid bit, no more entries than MAX_ARCHIVE_MEMBERS, nor more bytes or
entries than the disk has room for; on Pythons with tarfile's "data" filter it checks as well.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

from medseg_bench.errors import DataError, FetchError, FileSystemError, MedsegError

# tarfile's extraction filters came with Python 3.10.12 and 3.11.4; older ones extract with our checks alone.
TAR_FILTERS = hasattr(tarfile, "data_filter")
_FILTER_ERRORS: tuple[type[Exception], ...] = (tarfile.FilterError,) if TAR_FILTERS else ()
# The most entries an archive may hold: MSD's largest task, BrainTumour, has 1,234 images and labels (twice as
# many with the macOS `._` files some archives carry). A tar of millions of empty files, a few MB compressed,
# was listed whole before any check, then extracted for hours into as many inodes; it is refused while its
# entries are listed, at the first past this bound.
MAX_ARCHIVE_MEMBERS = 100_000
# An entry that cannot be written for one of these reasons clashes with another entry of the archive.
_CLASHES = {
    errno.EISDIR: "the archive also holds a folder of that name",
    errno.ENOTDIR: "the archive holds a file where a folder on its path should be",
    errno.EEXIST: "the archive holds another entry of that name",
}


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
            for count, member in enumerate(tar, 1):  # read one at a time: no list of millions first
                if count > MAX_ARCHIVE_MEMBERS:
                    raise FetchError(f"{archive}: too many entries (more than {MAX_ARCHIVE_MEMBERS}; an MSD "
                                     "task archive holds a few thousand at most)")
                _check_member(archive, member)
                _drop_privileges(member)
            _check_room(archive, staging, tar.getmembers())
            _extract(tar, archive, staging, entry)
    except _FILTER_ERRORS as exc:
        raise FetchError(f"{archive}: unsafe archive entry ({exc})") from None
    except OSError as exc:
        raise _extraction_error(archive, staging, exc, entry[0] if entry else None) from None
    except (tarfile.TarError, EOFError) as exc:
        raise FetchError(f"{archive}: corrupt or truncated archive ({exc})") from None
    root = task_root(staging, archive)
    if root.is_symlink():  # fetch would move the link into place, not the task: DATA_DIR/<Task> -> anywhere
        raise FetchError(f"{archive}: unsafe archive entry '{root.relative_to(staging).as_posix()}' (the "
                         "task folder is a link)")
    _check_links(archive, root)
    return root


def _check_room(archive: Path, staging: Path, members: list[tarfile.TarInfo]) -> None:
    """FileSystemError, before anything is written, when the archive's files hold more bytes than `staging`'s
    file system has free: a compressed archive of zeros (a "tar bomb", a thousand times its size) filled the
    disk, for every process on it, before the extraction failed; or when its entries outnumber the free
    inodes (a file system that counts none, as btrfs, says 0 of 0 and is not asked)."""
    needed = sum(member.size for member in members if member.isreg())
    free = shutil.disk_usage(staging).free
    if needed > free:
        raise FileSystemError(f"{staging.parent}: cannot extract {archive} here (its files hold {needed} "
                              f"bytes, {free} are free)")
    try:
        counts = os.statvfs(staging)
    except (AttributeError, OSError):  # no statvfs (Windows): the extraction's own error names a full disk
        return
    if counts.f_files and len(members) > counts.f_favail:
        need = f"{len(members)} entr{'y needs' if len(members) == 1 else 'ies need'}"
        raise FileSystemError(f"{staging.parent}: cannot extract {archive} here (its {need} as many "
                              f"inodes, {counts.f_favail} are free)")


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
        at = f", at entry '{entry}'" if entry is not None else ""
        return FileSystemError(f"{staging.parent}: cannot extract {archive} here ({reason}{at})")
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
    if member.isreg() and os.path.islink(path):  # tarfile opens the link and writes into what it points to
        raise FetchError(f"{archive}: entry '{member.name}' cannot be extracted (the archive holds a link of "
                         "that name before it, which it would be written through, over another file)")
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


def task_root(staging: Path, source: Path) -> Path:
    if (staging / "dataset.json").is_file():
        return staging
    candidates = sorted(p for p in staging.iterdir() if p.is_dir() and (p / "dataset.json").is_file())
    if len(candidates) > 1:
        hint = (f"pass one of them, as --source {source / candidates[0].name}" if source.is_dir()
                else "one task per archive")
        raise DataError(f"{source}: several task folders ({', '.join(p.name for p in candidates)}); {hint}")
    if not candidates:
        raise DataError(f"{source}: no MSD task folder (with dataset.json) found")
    return candidates[0]
