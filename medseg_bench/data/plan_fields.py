"""What each field of a `plan.json` may hold: the file is the user's to edit, so every value read back is
checked (a whole number may be written 2.0, not 2.7 or "2"); a bad one is a ValueError naming the field and
showing the value, for `Plan.from_dict` to turn into one line naming the file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medseg_bench.checks import MAX_SIZE, shown


def json_kind(value: object) -> str:
    kinds = ((list, "a list"), (str, "a string"), (bool, "a boolean"), (int, "a number"), (float, "a number"))
    return next((kind for cls, kind in kinds if isinstance(value, cls)), "null" if value is None else "?")


def _whole(value: object) -> int | None:
    """`value` as an int when it is a whole number (2 or 2.0, not 2.7, True or "2"), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value) if np.isfinite(value) else None


def _sequence(key: str, value: object, length: int) -> list[object]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise ValueError(f"{key} needs {length} values, not {shown(value)}")
    return list(value)


def _check_text(choices: tuple[str, ...] | None = None) -> Callable[[str, object], str]:
    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or (choices is not None and value not in choices):
            expected = " or ".join(repr(c) for c in choices) if choices else "a string"
            raise ValueError(f"{key} must be {expected}, not {shown(value)}")
        return value

    return check


def _check_flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {shown(value)}")
    return value


def _check_spacing(key: str, value: object) -> tuple[float, ...]:
    numbers = [_finite(v) for v in _sequence(key, value, 3)]
    if any(v is None or v <= 0 for v in numbers):
        raise ValueError(f"{key} must be positive finite numbers (mm), not {shown(value)}")
    return tuple(v for v in numbers if v is not None)


def _check_sizes(length: int) -> Callable[[str, object], tuple[int, ...]]:
    def check(key: str, value: object) -> tuple[int, ...]:
        numbers = [_whole(v) for v in _sequence(key, value, length)]
        if any(v is None or not 1 <= v <= MAX_SIZE for v in numbers):
            raise ValueError(f"{key} must be positive whole numbers up to {MAX_SIZE}, not {shown(value)}")
        return tuple(v for v in numbers if v is not None)

    return check


def _check_batch(key: str, value: object) -> int:
    number = _whole(value)
    if number is None:
        raise ValueError(f"{key} must be a whole number, not {shown(value)}")
    if not 1 <= number <= MAX_SIZE:
        raise ValueError(f"{key} must be at least 1 and at most {MAX_SIZE}, not {shown(value)}")
    return number


def _check_ct_clip(key: str, value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (_finite(v) for v in _sequence(key, value, 2))
    if low is None or high is None or low > high:
        raise ValueError(f"{key} must be two finite numbers, low then high, not {shown(value)}")
    return low, high


def _check_ct_stat(positive: bool) -> Callable[[str, object], float | None]:
    def check(key: str, value: object) -> float | None:
        if value is None:
            return None
        number = _finite(value)
        if number is None or (positive and number <= 0):
            kind = "a positive finite number" if positive else "a finite number"
            raise ValueError(f"{key} must be {kind}, not {shown(value)}")
        return number

    return check


def _check_channels(key: str, value: object) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{key} needs one entry per channel, not {shown(value)}")
    entries = []
    for index, entry in enumerate(value):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict) or entry.get("scheme") not in ("ct", "zscore"):
            raise ValueError(f'{where} must be {{"scheme": "ct", ...}} or {{"scheme": "zscore", ...}}, '
                             f"not {shown(entry)}")
        if entry["scheme"] == "zscore":
            if set(entry) != {"scheme", "nonzero_mask"}:
                raise ValueError(f'{where}: a z-score channel has "scheme" and "nonzero_mask", not '
                                 f"{sorted(entry)}")
            entries.append({"scheme": "zscore", "nonzero_mask": _check_flag(f"{where}.nonzero_mask",
                                                                            entry["nonzero_mask"])})
            continue
        if set(entry) != {"scheme", "clip", "mean", "std"}:
            raise ValueError(f'{where}: a CT channel has "scheme", "clip", "mean" and "std", not '
                             f"{sorted(entry)}")
        clip = _check_ct_clip(f"{where}.clip", entry["clip"])
        mean = _check_ct_stat(positive=False)(f"{where}.mean", entry["mean"])
        std = _check_ct_stat(positive=True)(f"{where}.std", entry["std"])
        if clip is None or mean is None or std is None:
            raise ValueError(f"{where}: a CT channel needs clip, mean and std")
        entries.append({"scheme": "ct", "clip": list(clip), "mean": mean, "std": std})
    return tuple(entries)


PLAN_FIELD_CHECKS: dict[str, Callable[[str, object], Any]] = {
    "task": _check_text(),
    "normalization": _check_text(("per_channel", "zscore", "ct")),
    "ct_clip": _check_ct_clip,
    "ct_mean": _check_ct_stat(positive=False),
    "ct_std": _check_ct_stat(positive=True),
    "median_spacing": _check_spacing,
    "target_spacing": _check_spacing,
    "crop_to_nonzero": _check_flag,
    "median_shape": _check_sizes(3),
    "budget": _check_text(),
    "patch_3d": _check_sizes(3),
    "batch_3d": _check_batch,
    "patch_2d": _check_sizes(2),
    "batch_2d": _check_batch,
    "channel_normalization": _check_channels,
}
