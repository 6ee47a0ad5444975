"""What each key of a task file (`tasks/<Task>.yaml`) may hold: every value is checked as it is read, and a
bad one is a UsageError naming the file and the key (`TaskSpec.from_dict` in spec.py applies them)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

from medseg_bench.errors import UsageError


def is_int(value: object) -> TypeGuard[int]:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def region_name_problem(name: str, labels: dict[int, str]) -> str | None:
    """Why a region's name cannot be told apart from a label in results and reports, or None: a region's
    scores are rows of metrics.csv's `label` column and report columns `<metric>_label_<name>`, titled by
    name, as a label's are by its value and its name."""
    if not name.strip():
        return "is empty: give the region a name"
    try:
        float(name)
    except ValueError:
        pass
    else:
        return "is a number, which the report reads as a label value: give the region a name"
    same = [value for value, label in labels.items() if label.casefold() == name.casefold()]
    if same:
        return f"is also label {same[0]}'s name: the report could not tell their columns apart; rename one"
    if "_label_" in name:
        return "holds '_label_', which separates a metric from a label in the report's columns"
    return None


# Task file checks: each takes (key, value, file) and returns the value to store, or raises UsageError.
REQUIRED_TASK_KEYS = ("name", "imaging", "labels", "modalities")


_IMAGING = ("CT", "MRI", "other")


_TENSOR_IMAGE_SIZES = ("3D", "4D")


_Check = Callable[[str, Any, Path], Any]


def _bad(source_file: Path, key: str, expected: str, value: object) -> UsageError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UsageError(f"{source_file}: '{key}' must be {expected}, not {shown}")


def is_md5(text: str) -> bool:
    """32 hexadecimal digits (surrounding blanks allowed): a task file's `md5`, or `fetch --md5`."""
    return re.fullmatch(r"[0-9a-fA-F]{32}", text.strip()) is not None


def _text(key: str, value: object, source_file: Path) -> str:
    if not isinstance(value, str):
        raise _bad(source_file, key, "a string", value)
    return value


def _name(key: str, value: object, source_file: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _bad(source_file, key, "a non-empty string", value)
    return value


def _task_name(key: str, value: object, source_file: Path) -> str:
    """A task's name is a folder name under DATA_DIR, the cache and RESULTS: `..` or `.` would put the task
    one folder up, or in the data folder itself; a leading dot would hide it (or meet `.slurm`)."""
    name = _name(key, value, source_file)
    if not name[0].isalnum() or any(ch in name for ch in "/\\\x00"):
        raise _bad(source_file, key, "a folder name that starts with a letter or digit, without / or \\",
                   value)
    return name


def _optional_name(key: str, value: object, source_file: Path) -> str | None:
    return None if value is None else _name(key, value, source_file)


def _md5(key: str, value: object, source_file: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_md5(value):
        raise _bad(source_file, key, "32 hexadecimal digits in quotes", value)
    return value.strip().lower()


def _choice(choices: tuple[str, ...]) -> _Check:
    def check(key: str, value: object, source_file: Path) -> str:
        if value not in choices:
            raise _bad(source_file, key, f"one of {', '.join(choices)}", value)
        return str(value)

    return check


def _count(minimum: int, optional: bool) -> _Check:
    def check(key: str, value: object, source_file: Path) -> int | None:
        if value is None and optional:
            return None
        if not is_int(value) or value < minimum:
            raise _bad(source_file, key, f"a whole number >= {minimum}", value)
        return value

    return check


def _tolerance_mm(key: str, value: object, source_file: Path) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise _bad(source_file, key, "a finite distance >= 0 (mm)", value)
    return float(value)


def _labels(key: str, value: object, source_file: Path) -> dict[int, str]:
    if not isinstance(value, dict) or not value:
        raise _bad(source_file, key, "a mapping of label values to names", value)
    labels: dict[int, str] = {}
    for number, label_name in value.items():
        as_int = int(number) if isinstance(number, str) and number.strip().isdigit() else number
        if not is_int(as_int) or not 0 <= as_int <= 255:
            raise _bad(source_file, key, "keyed by label values 0..255", number)
        if not isinstance(label_name, str) or not label_name.strip():
            raise _bad(source_file, f"{key}: {number}", "a non-empty name", label_name)
        if as_int in labels:
            raise UsageError(f"{source_file}: '{key}' names label value {as_int} twice")
        labels[as_int] = label_name
    return labels


def _modalities(key: str, value: object, source_file: Path) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(m, str) and m.strip() for m in value):
        raise _bad(source_file, key, "a list of modality names, one per channel", value)
    return list(value)


def _regions(key: str, value: object, source_file: Path) -> dict[str, list[int]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(source_file, key, "a mapping of region names to label lists", value)
    regions: dict[str, list[int]] = {}
    for region, members in value.items():
        if region is None:  # `null:` or `~:`, which str() made a region named "None"
            raise _bad(source_file, key, "a mapping of region names to label lists (a name is missing)",
                       value)
        if not isinstance(members, list) or not members or not all(is_int(m) for m in members):
            raise _bad(source_file, f"{key}: {region}", "a non-empty list of label values", members)
        regions[str(region)] = [int(m) for m in members]
    return regions


def _reference_dice(key: str, value: object, source_file: Path) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(source_file, key, "a mapping of label or region names to Dice scores", value)
    for label_name, dice in value.items():
        if not isinstance(dice, (int, float)) or isinstance(dice, bool) or not 0 <= dice <= 1:
            raise _bad(source_file, f"{key}: {label_name}", "a Dice score in 0..1", dice)
    return {str(k): float(v) for k, v in value.items()}


def _group_pattern(key: str, value: object, source_file: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(source_file, key, "a regular expression in quotes", value)
    try:
        re.compile(value)
    except re.error as exc:
        raise UsageError(f"{source_file}: '{key}' {value!r} is not a valid regular expression ({exc})") \
            from None
    return value


TASK_KEY_CHECKS: dict[str, _Check] = {
    "name": _task_name,
    "labels": _labels,
    "modalities": _modalities,
    "imaging": _choice(_IMAGING),
    "version": _count(1, optional=False),
    "description": _text,
    "url": _optional_name,
    "md5": _md5,
    "local_path": _optional_name,
    "tensor_image_size": _choice(_TENSOR_IMAGE_SIZES),
    "num_training": _count(0, optional=True),
    "num_test": _count(0, optional=True),
    "nsd_tolerance_mm": _tolerance_mm,
    "regions": _regions,
    "reference_dice": _reference_dice,
    "citation": _text,
    "group_pattern": _group_pattern,
}
