"""The `medseg-bench` command line: one module per command, added to one Typer app in `app.py`."""

from __future__ import annotations


def check_range(option: str, value: float | None, least: float, most: float | None = None) -> None:
    """UsageError "--OPTION must be at least LEAST, not VALUE" (or "from LEAST to MOST"): every command's
    words for a number out of range (typer's `min=` words it otherwise, and its words change)."""
    from medseg_bench.errors import UsageError

    if value is None or (value >= least and (most is None or value <= most)):
        return
    wanted = f"at least {least:g}" if most is None else f"from {least:g} to {most:g}"
    raise UsageError(f"{option} must be {wanted}, not {value:g}")

