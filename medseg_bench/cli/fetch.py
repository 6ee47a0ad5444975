"""`medseg-bench fetch TASK`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def fetch(
    task: Annotated[
        str, typer.Argument(metavar="TASK",
                            help="Task name, e.g. Task04_Hippocampus (see `medseg-bench list tasks`).")
    ],
    source: Annotated[
        str | None,
        typer.Option(
            help="Local MSD folder (or nnU-Net v2 raw dataset folder, imported in MSD's layout), local .tar, "
            "or mirror URL. Default: the task file's local_path or URL (or $MEDSEG_BENCH_MIRROR/<Task>.tar)."
        ),
    ] = None,
    md5: Annotated[
        str | None, typer.Option(help="Expected md5 of the archive (overrides the catalog's).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder. Default: $MEDSEG_BENCH_HOME/data.")
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Any validation problem is fatal (exit 3, nothing kept); default: bad cases are "
            "excluded from training with a warning.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds without data from the server before a download attempt fails (retried)."
        ),
    ] = 60.0,
) -> None:
    """Get TASK into DATA_DIR/TASK: checksummed, resumable, extracted safely, validated."""
    from rich.console import Console
    from rich.markup import escape

    from medseg_bench.cli import check_range

    check_range("--timeout", timeout, 0.1, 86400)
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.download import shown_url
    from medseg_bench.data.fetch import MARKER, fetch_task
    from medseg_bench.data.validate import problem_lines
    from medseg_bench.errors import one_line
    from medseg_bench.settings import get_settings

    settings = get_settings()
    spec = get_task(task)
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, file names whole
    outcome = fetch_task(
        spec,
        data_dir or settings.data_dir,
        source,
        md5,
        settings.mirror,
        timeout_s=timeout,
        progress=console.is_terminal,
        strict=strict,
        say=lambda line: console.print(escape(one_line(line))),
    )
    if outcome.already_present:
        excluded = (f" ({outcome.excluded} case(s) excluded, listed in {outcome.folder / MARKER})"
                    if outcome.excluded else "")
        ignored = ""
        if source is not None and not _same_place(source, outcome.folder):  # it went unsaid
            ignored = (f"; --source {shown_url(source)} not imported (move {outcome.folder} away to import "
                       "it instead)")
        typer.echo(f"{spec.name}: already fetched and validated in {outcome.folder}{excluded}; nothing to do"
                   + ignored)
        return
    report = outcome.report
    assert report is not None
    for warning in outcome.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(one_line(warning))}")  # names from dataset.json
    for line in problem_lines(report.problems, outcome.folder / MARKER):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")
    usable = len(report.usable_cases)
    typer.echo(
        f"{spec.name}: {usable} usable training case{'' if usable == 1 else 's'} in {outcome.folder}"
        + (f" ({len(report.excluded)} excluded)" if report.excluded else "")
    )


def _same_place(source: str, folder: Path) -> bool:
    """Whether `--source` names the task folder itself (checked in place), not an archive or folder."""
    import os

    return "://" not in source and os.path.realpath(source) == os.path.realpath(folder)
