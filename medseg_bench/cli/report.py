"""`medseg-bench report`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def report(
    results_dir: Annotated[Path, typer.Option(help="Results folder written by `sweep`.")] = Path("results"),
    fmt: Annotated[str, typer.Option("--format", help="markdown, csv or json.")] = "markdown",
    metric: Annotated[str, typer.Option(help="Metric that orders the rows (see `list metrics`).")] = "dice",
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
) -> None:
    """Leaderboard of finished runs, best first; a rich table on a terminal, markdown otherwise."""
    from medseg_bench.report import FORMATS, build_report, print_rich, render
    from medseg_bench.errors import UsageError

    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    table = build_report(results_dir, metric, task)
    if fmt == "markdown" and sys.stdout.isatty():
        print_rich(table)
        return
    typer.echo(render(table, fmt), nl=False)
