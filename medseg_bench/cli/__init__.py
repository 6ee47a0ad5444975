"""The `medseg-bench` command line: one module per command, added to one Typer app in `app.py`."""

from __future__ import annotations


def check_range(option: str, value: float | None, least: float, most: float | None = None) -> None:
    """UsageError "--OPTION must be at least LEAST, not VALUE" (or "from LEAST to MOST"): every command's
    words for a number out of range (typer's `min=` words it otherwise, and its words change)."""
    from medseg_bench.errors import UsageError

    if value is None or (value >= least and (most is None or value <= most)):
        return
    wanted = f"at least {_number(least)}" if most is None else f"from {_number(least)} to {_number(most)}"
    raise UsageError(f"{option} must be {wanted}, not {_number(value)}")


def _number(value: float) -> str:
    """1000000 as itself (`:g` writes 1e+06), 0.1 as 0.1."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"

