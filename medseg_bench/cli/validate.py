"""`medseg-bench validate TASK`: check a fetched task again and update its list of excluded cases."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer


def validate(
    task: Annotated[str, typer.Argument(metavar="TASK", help="Task name, e.g. Task04_Hippocampus.")],
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Any problem is fatal (exit 3). Default: bad cases are listed and excluded."
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder. Default: $MEDSEG_BENCH_HOME/data.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Cases checked at the same time.")] = 2,
) -> None:
    """Re-validate a fetched task: labels present, geometry and label values consistent, no NaN/inf.

    Every problem is printed with its file. The task's list of excluded cases is updated, so a fixed file is
    used again by the next sweep (and a newly broken one is excluded).
    """
    from rich.console import Console
    from rich.markup import escape

    from medseg_bench.cli import MAX_PROCESSES, check_range

    check_range("--workers", workers, 1, MAX_PROCESSES)
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import MARKER, is_complete, record_validation, unfetched
    from medseg_bench.data.msd import training_cases
    from medseg_bench.data.validate import (
        PROBLEMS_SHOWN,
        problem_lines,
        refusal,
        report_warnings,
        validate_folder,
    )
    from medseg_bench.errors import one_line
    from medseg_bench.progress import step_bar
    from medseg_bench.settings import get_settings

    spec = get_task(task)
    folder = (data_dir or get_settings().data_dir) / spec.name
    if not is_complete(folder):
        raise unfetched(folder)
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per message, file names whole
    total = len(training_cases(folder))
    with contextlib.ExitStack() as bar:
        advance: list[Callable[[], None]] = []

        def start(at_once: int) -> None:  # the bar, once it is known how many cases are read at once
            limited = f", {at_once} at a time (memory)" if at_once < workers else ""  # why it is slower
            advance.append(bar.enter_context(step_bar(f"validating{limited}", total, console,
                                                      console.is_terminal)))

        report = validate_folder(folder, spec, workers=workers, on_case=lambda: advance[0](), on_start=start)
    changed = record_validation(folder, report)
    for warning in report_warnings(spec, report, folder):
        console.print(f"[yellow]warning:[/yellow] {escape(one_line(warning))}")  # names from dataset.json
    problems = report.problems
    if problems and (strict or not report.usable_cases):
        # Fatal: the error line names the first bad file and its problem; the others are listed before it.
        for line in problem_lines(problems, folder / MARKER, excluded=False, skip=1):
            console.print(f"[red]problem:[/red] {escape(line)}")
        raise refusal(report, "--strict" if strict else "no usable training case left")
    for line in problem_lines(problems, folder / MARKER):
        console.print(f"[yellow]warning:[/yellow] {escape(line)}")
    if report.excluded:
        excluded = sorted(one_line(case) for case in report.excluded)  # case ids are file names
        listed = ", ".join(excluded[:PROBLEMS_SHOWN]) + (
            f" and {len(excluded) - PROBLEMS_SHOWN} more" if len(excluded) > PROBLEMS_SHOWN else "")
        console.print(f"[yellow]warning:[/yellow] excluded from training: {escape(listed)}")
    typer.echo(
        f"{spec.name}: {len(report.usable_cases)} of {len(report.cases)} training "
        f"case{'' if len(report.cases) == 1 else 's'} valid in {folder}"
        + ("; list of excluded cases updated" if changed else "")
    )
