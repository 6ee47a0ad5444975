"""Deterministic k-fold splits over case ids (independent of the run seed), saved as JSON.

Patient-level splitting: when several cases belong to one patient (follow-up scans, several lesions), a task
file may set `group_pattern`, a regular expression over case ids; cases whose ids give the same group (the
named group `patient`, else the first group, else the whole match) are one patient and always land in the same
fold, so no patient is in both the training and the validation set. Example: case ids `pat012_scan2` with
`group_pattern: "^(?P<patient>pat\\d+)_"`. After changing the pattern, delete `splits_<k>fold.json` (a
splits file, once written, is honoured as it is).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medseg_bench.errors import DataError, UsageError
from medseg_bench.files import parse_json, write_json_atomic

SPLIT_SEED = 12345


def case_groups(case_ids: list[str], group_pattern: str) -> dict[str, str]:
    """The patient of each case according to `group_pattern` (see the module docstring)."""
    try:
        pattern = re.compile(group_pattern)
    except re.error as exc:
        raise UsageError(
            f"group_pattern {group_pattern!r} is not a valid regular expression ({exc})"
        ) from None
    groups = {}
    for case in case_ids:
        match = pattern.search(case)
        if match is None:
            raise DataError(f"group_pattern {group_pattern!r} does not match case id '{case}'")
        if "patient" in pattern.groupindex:
            groups[case] = match.group("patient")
        else:
            groups[case] = match.group(1) if pattern.groups else match.group(0)
    return groups


def make_splits(
    case_ids: list[str], num_folds: int, group_pattern: str | None = None
) -> list[dict[str, list[str]]]:
    if len(case_ids) < num_folds:
        cases = f"{len(case_ids)} usable case{'' if len(case_ids) == 1 else 's'}"
        raise DataError(f"{cases} cannot be split into {num_folds} folds{_fewer_folds(len(case_ids))}")
    ordered = sorted(case_ids)
    if group_pattern:
        folds_of_cases = _grouped_folds(ordered, num_folds, case_groups(ordered, group_pattern))
    else:
        order = np.random.default_rng(SPLIT_SEED).permutation(len(ordered))
        folds_of_cases = [[ordered[i] for i in fold] for fold in np.array_split(order, num_folds)]
    splits = []
    for k in range(num_folds):
        val = sorted(folds_of_cases[k])
        held = set(val)
        splits.append({"train": [c for c in ordered if c not in held], "val": val})
    return splits


def _fewer_folds(most: int) -> str:
    """The advice for a split into more folds than there are cases (or patients) to hold out."""
    return f"; use --num-folds {most} or fewer (at least 2)" if most >= 2 else " (2 are the fewest there are)"


def _grouped_folds(ordered: list[str], num_folds: int, groups: dict[str, str]) -> list[list[str]]:
    """Whole patients to folds: shuffled (seeded), then largest first into the smallest fold."""
    members: dict[str, list[str]] = {}
    for case in ordered:
        members.setdefault(groups[case], []).append(case)
    if len(members) < num_folds:
        patients = f"{len(members)} patient{'' if len(members) == 1 else 's'}"
        raise DataError(f"{patients} (by group_pattern) cannot be split into {num_folds} folds"
                        f"{_fewer_folds(len(members))}")
    names = sorted(members)
    shuffled = [names[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(names))]
    shuffled.sort(key=lambda g: -len(members[g]))  # stable: equal sizes keep the shuffled order
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    for group in shuffled:
        smallest = min(range(num_folds), key=lambda k: (len(folds[k]), k))
        folds[smallest].extend(members[group])
    return folds


def splits_file(folder: Path, num_folds: int) -> Path:
    """Where a task's `num_folds`-fold splits are kept in its preprocessed `folder`."""
    return folder / f"splits_{num_folds}fold.json"


def load_or_make_splits(
    folder: Path, case_ids: list[str], num_folds: int, group_pattern: str | None = None
) -> list[dict[str, list[str]]]:
    """`splits_<k>fold.json` in `folder`: made once, then honoured (a user may replace it with their own)."""
    path = splits_file(folder, num_folds)
    if path.is_file():
        try:
            splits = parse_json(path.read_text())
        except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
            raise DataError(f"{path}: unreadable splits file ({exc})") from None
        _check_splits(path, splits, set(case_ids), num_folds)
        return splits
    try:
        splits = make_splits(case_ids, num_folds, group_pattern)
    except DataError as exc:  # the task it is of: a sweep of several tasks named none
        raise DataError(f"{folder.name}: {exc}") from None
    write_json_atomic(path, splits)
    return splits


def _check_splits(path: Path, splits: Any, known: set[str], num_folds: int) -> None:
    """A splits file a user wrote: `num_folds` folds of usable case ids, each holding out at least one case,
    training on at least one and on none it holds out (a held-out case trained on would inflate every score
    of that fold), no case listed twice in a list."""
    fold_shape = '{"train": [case ids], "val": [case ids]}'
    if not isinstance(splits, list):
        raise DataError(f"{path}: not a list of folds, each {fold_shape}")
    for index, fold in enumerate(splits):
        if not (isinstance(fold, dict) and all(isinstance(fold.get(key), list) for key in ("train", "val"))
                and all(isinstance(case, str) for case in fold["train"] + fold["val"])):
            raise DataError(f"{path}: fold {index} is not {fold_shape}")
        unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
        if unknown:
            raise DataError(f"{path}: lists cases that are not usable: {', '.join(unknown[:5])} (excluded "
                            "by validation, or gone); delete it to make new splits of the usable cases (a "
                            "finished run keeps the split it used), or edit it")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            raise DataError(f"{path}: fold {index} trains on held-out case(s) {', '.join(both[:5])}")
        for key in ("val", "train"):  # a held-out case twice was scored twice, and its run then "damaged"
            counts: Counter[str] = Counter(fold[key])
            twice = sorted(case for case, n in counts.items() if n > 1)
            if twice:
                raise DataError(f"{path}: fold {index} lists case(s) {', '.join(twice[:5])} twice in its "
                                f"{key} list")
        if not fold["val"]:
            raise DataError(f"{path}: fold {index} holds out no case")
        if not fold["train"]:  # numpy's "high <= 0" when the first batch was drawn
            raise DataError(f"{path}: fold {index} trains on no case")
    if len(splits) != num_folds:
        folds = f"{len(splits)} fold{'' if len(splits) == 1 else 's'}"
        raise DataError(f"{path}: holds {folds}, expected {num_folds}")
