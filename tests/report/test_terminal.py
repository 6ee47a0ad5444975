"""The rich terminal view: every section and configuration shown, nothing cut off on a narrow terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from medseg_bench.report import build_report, print_rich


@pytest.mark.parametrize("width", [200, 90])
def test_terminal_view(fake_results: Path, width: int) -> None:
    buffer = io.StringIO()
    print_rich(build_report(fake_results), Console(file=buffer, width=width, force_terminal=False))
    text = buffer.getvalue()
    for expected in ("Task90_Alpha", "Task91_Beta", "Ranking across tasks", "Friedman test", "GPU-h/run",
                     "p (Holm)"):
        assert expected in text
    assert max(len(line) for line in text.splitlines()) <= width
    if width == 200:  # wide enough: whole values on one line each
        for expected in ("3d-unet-dice_ce-light", "0.8313 ± 0.1227", "[0.7573, 0.8744]"):
            assert expected in text
        assert "wrap inside their cells" not in text
    else:  # values break inside their cells: said once, with what to do
        assert " ".join(text.split()).count("(tables wider than the terminal's 90 columns wrap inside their "
                                            "cells: widen it, or use --format markdown)") == 1


def test_control_characters_in_names_are_shown_escaped(tmp_path: Path) -> None:
    """A run folder's task name (someone else's results folder) holding escape sequences reached the terminal
    as it was: it could clear the screen, set the window's title or forge lines; markdown is printed there
    too."""
    from medseg_bench.report import render
    from tests.conftest import fake_finished_run

    task = "T\x1b[2J\x1b]0;owned\x07[bold]x"
    for seed in (1, 2):
        fake_finished_run(tmp_path / "r", seed, task=task)
    report = build_report(tmp_path / "r")
    buffer = io.StringIO()
    print_rich(report, Console(file=buffer, width=400, force_terminal=False))
    markdown = render(report, "markdown")
    assert isinstance(markdown, str)
    shown = "T\\x1b[2J\\x1b]0;owned\\x07[bold]x"
    for text, name in ((buffer.getvalue(), shown), (markdown, shown.replace("\\", "\\\\"))):
        assert "\x1b" not in text and "\x07" not in text
        assert name in text  # markdown's backslashes escaped: rendered, it shows as the terminal does


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


@pytest.mark.parametrize("width", range(60, 131, 5))
def test_no_cell_is_cut_off_where_a_tables_headers_are_wider_than_its_cells(fake_results: Path,
                                                                             width: int) -> None:
    # The ranking across tasks (cells: ranks; headers: task names) fitted by its cells but not its headers:
    # held to its cells' widths, rich narrowed some columns, widened them back and cut off the last ones at
    # the terminal's edge (80 columns: a task's ranks were gone, without a word). Every digit of every
    # title, note, header and cell must be printed, wrapped or not.
    from medseg_bench.report.display import Table, sections

    report = build_report(fake_results)
    expected = 0
    for section in sections(report, compact=True):
        expected += _digits(section.title)
        for item in section.items:
            if isinstance(item, Table):
                expected += _digits(item.caption or "") + sum(_digits(h) for h in item.headers)
                expected += sum(_digits(cell.text) for row in item.rows for cell in row)
            else:
                expected += _digits(item)
    buffer = io.StringIO()
    print_rich(report, Console(file=buffer, width=width, force_terminal=False))
    text = buffer.getvalue()
    narrow = f"(tables wider than the terminal's {width} columns wrap"
    assert _digits(text) == expected + (_digits(str(width)) if narrow in " ".join(text.split()) else 0)
