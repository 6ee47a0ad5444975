"""`medseg-bench report`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def report(
    results_dir: Annotated[Path, typer.Option(help="Results folder written by `sweep`.")] = Path("results"),
    fmt: Annotated[str | None, typer.Option(
        "--format", help="markdown, csv, json, latex, html or parquet (default: from --output's extension, "
                         "which must then name a format; without --output, markdown, rich tables on a "
                         "terminal). With --output, its extension must not name another format.")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the report to this file (atomically) instead of stdout.")] = None,
    metric: Annotated[str, typer.Option(
        help="Metric that ranks configurations (see `medseg-bench list metrics`).")] = "dice",
    metrics: Annotated[list[str] | None, typer.Option(
        "--metrics", metavar="METRIC,...",
        help="Metrics in the tables and the cross-task ranking (default: dice,jaccard,hd95,nsd, those "
             "present).")] = None,
    task: Annotated[list[str] | None, typer.Option(
        metavar="TASK,...", help="Only these tasks (repeat or comma-separate).")] = None,
    group_by: Annotated[str | None, typer.Option(
        metavar="AXIS",
        help="Also show the marginal effect of one axis: arch, loss, aug, dims or encoder.")] = None,
    top: Annotated[int | None, typer.Option(
        metavar="K", help="Only the K best configurations of each task, and the K best of the ranking "
                          "across tasks, and any tied with the K-th (more than K where they tie; ranks and "
                          "tests still count every configuration, and every pair's test is listed).")] = None,
    plots: Annotated[Path | None, typer.Option(
        help="Write the report's figures (PNG) to this folder.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap confidence intervals.")] = 0,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples per interval (100 to 1000000).")] = 5000,
    confidence: Annotated[float, typer.Option(
        help="Confidence level of the intervals (between 0 and 1).")] = 0.95,
) -> None:
    """Leaderboards per task (mean ± std, bootstrap CI, cost), significance tests, ranking across tasks."""
    from medseg_bench.errors import UsageError
    from medseg_bench.registry import choice_hint
    from medseg_bench.report import FORMATS, GROUP_AXES, build_report, format_for, print_rich, render
    from medseg_bench.report.formats import check_output_file, check_output_format, write_atomic

    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'; {choice_hint(fmt, FORMATS)}")
    if fmt is not None and output is not None:
        check_output_format(fmt, output)
    # On a terminal, without --format or --output: rich tables; an explicit --format markdown is markdown.
    rich = fmt is None and output is None and sys.stdout.isatty()
    if fmt is None:
        fmt = format_for(output) if output is not None else "markdown"
    if fmt == "parquet" and output is None:
        raise UsageError("parquet is a binary format: pass --output FILE.parquet")
    if group_by is not None and group_by not in GROUP_AXES:
        raise UsageError(f"cannot group by '{group_by}'; {choice_hint(group_by, GROUP_AXES)}")
    from medseg_bench.cli import check_range, comma_list

    check_range("--top", top, 1)
    check_range("--seed", seed, 0)
    check_range("--resamples", resamples, 100, 1_000_000)
    if not 0 < confidence < 1:  # before the results are read, as every other value
        raise UsageError(f"--confidence must be between 0 and 1 (0.95: 95 % intervals), not {confidence:g}")
    from medseg_bench.metrics import METRICS

    for name in [metric, *(comma_list("--metrics", metrics) or [])]:
        METRICS.get(name)  # an unknown name: did-you-mean, exit 2 (it was "no finished runs" where none)
    if output is not None:
        check_output_file(output)  # before the report is built (bootstrap intervals can take a while)

    result = build_report(results_dir, metric, comma_list("--task", task),
                          metrics=comma_list("--metrics", metrics), group_by=group_by,
                          top=top, confidence=confidence, n_resamples=resamples, seed=seed)
    figures = None
    if plots is not None or fmt == "html":
        from medseg_bench.report.plots import make_plots, write_plots

        figures = make_plots(result)
        if plots is not None:
            written = write_plots(figures, plots)
            typer.echo(f"wrote {len(written)} figure{'' if len(written) == 1 else 's'} to {plots}", err=True)
    if rich:
        print_rich(result)
        return
    content = render(result, fmt, figures)
    if output is not None:
        write_atomic(output, content)
        typer.echo(f"wrote {fmt} report to {output}", err=True)
    elif isinstance(content, bytes):
        sys.stdout.buffer.write(content)
    else:
        typer.echo(content, nl=False)
