"""The folder where submitit keeps a SLURM sweep's jobs (`RESULTS/.slurm/`), kept out of others' reach.

A SLURM job unpickles its callable from a file submitit writes there (submitit's way; no setting replaces it),
so whoever can write that file runs code as the job's user: the folder is made the submitter's alone
(`job_folder`), a results dir every user can write to (or a folder above it) is refused and one a group or
another user can write to warned of (`check_private_results`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

from medseg_bench.errors import ResultsError

JOB_FOLDER = ".slurm"  # in the results dir: submitit's pickled jobs, job scripts and logs


def _pickles(results_dir: Path) -> str:
    return (f"the jobs submitit pickles in {results_dir / JOB_FOLDER}, which your SLURM jobs unpickle, "
            "running their code as you")


def check_private_results(results_dir: Path, say: Any = print) -> None:
    """ResultsError when every user can write to `results_dir` (without the sticky bit, which keeps others
    from renaming or removing the job folder): any of them could put a pickled job of their own where a SLURM
    job unpickles it. Where a group with others in it can (a lab's shared folder), or another user owns the
    folder, `say` a warning: they may be trusted. A user's own group (user private groups, umask 002) is no
    one else. The folders above it are held to the same (as ssh holds those above `authorized_keys`): who can
    rename an entry of one of them can move the results dir away and put a folder of their own in its place.
    Nothing is said of a folder that does not exist yet."""
    _check_folder(results_dir, "results dir", results_dir, say)
    for above in Path(os.path.abspath(results_dir)).resolve().parents:
        _check_folder(above, f"a folder above results dir {results_dir}", results_dir, say)


def _check_folder(folder: Path, what: str, results_dir: Path, say: Any) -> None:
    """`check_private_results` for one folder, `what` it is to the results dir."""
    try:
        info = os.stat(folder)
    except OSError:
        return
    mode = stat.S_IMODE(info.st_mode)
    replace = "replace" if folder == results_dir else "put a results dir of their own in place of yours, with"
    if info.st_uid not in (os.geteuid(), 0):  # a folder's owner renames what is in it, sticky bit or not
        say(f"warning: {folder}: {what} belongs to user {_user_name(info.st_uid)}, who could {replace} "
            f"{_pickles(results_dir)}; use a results dir of your own unless you trust them")
    if mode & stat.S_ISVTX:
        return
    if mode & stat.S_IWOTH:
        raise ResultsError(f"{folder}: {what} is writable by every user (mode {mode:o}, no sticky bit): "
                           f"any of them could {replace} {_pickles(results_dir)}; `chmod o-w` it (or "
                           "`chmod +t`), or give another --results-dir")
    if mode & stat.S_IWGRP and not _private_group(info.st_gid):
        group = _group_name(info.st_gid)
        say(f"warning: {folder}: {what} is writable by group '{group}' (mode {mode:o}): its members could "
            f"{replace} {_pickles(results_dir)}; `chmod g-w` it unless you trust them all")


def _private_group(gid: int) -> bool:
    """Whether group `gid` is this user's own: their primary group, of their name, with no one else in it."""
    import grp
    import pwd

    try:
        user, group = pwd.getpwuid(os.geteuid()), grp.getgrgid(gid)
    except KeyError:
        return False
    return user.pw_gid == gid and group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_job_folder(results_dir: Path) -> os.stat_result | None:
    """ResultsError where `RESULTS/.slurm` is there and not a folder of this user's (`job_folder`'s check,
    which `sweep --dry-run --launcher slurm` makes without making the folder); its lstat, None where it is not
    there."""
    folder = results_dir / JOB_FOLDER
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return None
    why = ""
    if stat.S_ISLNK(info.st_mode):
        why = f"a link to {os.readlink(folder)}"
    elif not stat.S_ISDIR(info.st_mode):
        why = "a file"
    elif info.st_uid != os.geteuid():
        why = f"owned by user {_user_name(info.st_uid)}"
    if why:
        raise ResultsError(f"{folder}: not a folder of yours ({why}); submitit keeps the jobs your SLURM "
                           "jobs unpickle in it: move it away")
    return info


def job_folder(results_dir: Path) -> Path:
    """`RESULTS/.slurm`, made the submitter's alone (0o700; an older one, made with the umask, tightened),
    before submitit writes a job into it; ResultsError naming it where it is not a folder of this user's (a
    link, a file, another user's: what it holds, another could have written)."""
    folder = results_dir / JOB_FOLDER
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = check_job_folder(results_dir)
    if info is not None and stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder
