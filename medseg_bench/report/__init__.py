"""Reports: leaderboards with confidence intervals, cross-task ranking, significance tests, cost, and plots.

    build_report(results_dir, ...) -> Report      (build.py: tables.py, significance.py, stats.py)
    render(report, fmt) -> str | bytes            (formats.py; html.py; display.py lays out what humans read)
    make_plots(report) -> {name: PNG bytes}       (plots.py)
"""

from medseg_bench.report.build import Report, build_report, report_from_results
from medseg_bench.report.formats import FORMATS, format_for, print_rich, render, write_atomic
from medseg_bench.report.tables import GROUP_AXES, leaderboard

__all__ = ["FORMATS", "GROUP_AXES", "Report", "build_report", "format_for", "leaderboard", "print_rich",
           "render", "report_from_results", "write_atomic"]
