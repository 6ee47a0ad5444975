"""What a value read back from a JSON file the project wrote must be: the one place that says what a whole
number, a list of sizes or a spacing is, and how a bad value is shown in a one-line error."""

from __future__ import annotations

import json
import math
import os

MAX_SIZE = 2**31 - 1  # a patch side or batch past it is a typo (1e300 is a whole number too)
FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32: a learning rate past it overflows the step
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a learning rate below it is 0 in a step


def shown(value: object, limit: int = 60) -> str:
    """`value` as JSON (a tuple as a list), cut to `limit` characters."""
    text = json.dumps(list(value) if isinstance(value, tuple) else value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_whole(value: object, least: int = 0) -> bool:
    """An int (not a bool, not 2.0) of at least `least`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def are_whole(value: object, count: int | None = None, least: int = 0) -> bool:
    """A non-empty list of `count` (any number, if None) ints of at least `least` each."""
    return (isinstance(value, list) and bool(value) and (count is None or len(value) == count)
            and all(is_whole(v, least) for v in value))


def is_number(value: object) -> bool:
    """An int or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_amount(value: object) -> bool:
    """A finite number of at least 0 (a time, a size): not NaN or inf, which JSON files may hold."""
    return (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def is_spacing(value: object) -> bool:
    """Three positive finite numbers (mm)."""
    return isinstance(value, list) and len(value) == 3 and all(
        is_number(v) and math.isfinite(v) and v > 0 for v in value)


def machine_memory() -> int | None:
    """Bytes of physical memory of this machine (None where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None
