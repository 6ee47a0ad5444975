"""Every format says the same: tied places in the ranking across tasks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from medseg_bench.report import Report, print_rich, render, report_from_results
from medseg_bench.results import load_results
from tests.report.fake_results import with_tied_ranking

TIED = [("1", "3d-unet-dice_ce-light"), ("2.5", "2d-unet.resnet18-dice_ce-none"),
        ("2.5", "3d-unet-dice-none")]


def _terminal(report: Report) -> str:
    buffer = io.StringIO()
    print_rich(report, Console(file=buffer, width=200, force_terminal=False))
    return buffer.getvalue()


@pytest.mark.parametrize("top", [None, 2])
def test_tied_configurations_share_their_place_in_every_format(fake_results: Path, top: int | None) -> None:
    report = report_from_results(with_tied_ranking(load_results(fake_results)), fake_results,
                                 metrics=["dice"], top=top)
    shown = TIED[:top]
    markdown, latex, page = (render(report, fmt, {}) for fmt in ("markdown", "latex", "html"))
    assert isinstance(markdown, str) and isinstance(latex, str) and isinstance(page, str)
    ranking = markdown.split("## Ranking across tasks")[1]
    assert [line.split(" | ")[:2] for line in ranking.splitlines() if line.startswith("| ")][1:] == \
        [[f"| {place}", config] for place, config in shown]
    for place, config in shown:
        assert f"{place} & {config.replace('_', chr(92) + '_')} & " in latex
        assert f'<tr><td class="r">{place}</td><td>{config}</td>' in page
    terminal = _terminal(report).split("Ranking across tasks")[1]
    assert [line.split()[:2] for line in terminal.splitlines() if "unet" in line] == [list(p) for p in shown]
    data = json.loads(render(report, "json"))  # type: ignore[arg-type]
    assert [(r["rank"], r["config"]) for r in data["ranking"]] == [(float(p), c) for p, c in shown]
    assert [r["mean_rank"] for r in data["ranking"]] == [1, 2.5, 2.5][:top]  # the numbers as they were

