"""`medseg-bench report` through the Typer app: formats, --output, --plots, filters, errors and exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from tests.report.fake_results import respecified, write_fake_results

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_results(tmp_path_factory.mktemp("cli-report") / "results")


def invoke(*args: str) -> object:
    return runner.invoke(app, ["report", *args])


def test_markdown_is_the_default_off_a_terminal(results: Path) -> None:
    result = invoke("--results-dir", str(results))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# medseg-bench report\n")
    for heading in ("## Task90_Alpha", "## Task91_Beta", "## Ranking across tasks"):
        assert heading in result.output
    assert "| # | configuration | runs | cases | empty | Dice |" in result.output


def test_a_terminal_gets_rich_tables_unless_a_format_is_asked_for(results: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import medseg_bench.cli.report as command

    terminal = types.SimpleNamespace(isatty=lambda: True)
    monkeypatch.setattr(command, "sys", types.SimpleNamespace(stdout=terminal))
    shown = invoke("--results-dir", str(results))
    assert shown.exit_code == 0, shown.output
    assert "Ranking across tasks" in shown.output and not shown.output.startswith("# medseg-bench report")
    # the rich view points to --format markdown for per-label columns: that must give markdown
    asked = invoke("--results-dir", str(results), "--format", "markdown")
    assert asked.exit_code == 0, asked.output
    assert asked.output.startswith("# medseg-bench report\n")


def test_csv_is_one_row_per_configuration(results: Path) -> None:
    result = invoke("--results-dir", str(results), "--format", "csv", "--task", "Task90_Alpha")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    assert len(table) == 3 and set(table["task"]) == {"Task90_Alpha"}
    assert table["dice_mean"].is_monotonic_decreasing and table["rank"].tolist() == [1, 2, 3]
    for column in ("dice_ci_low", "hd95_ci_high", "nsd_label_2", "train_hours", "peak_memory_mb", "run_ids"):
        assert column in table


def test_json_schema_and_provenance(results: Path) -> None:
    result = invoke("--results-dir", str(results), "--format", "json", "--metrics", "dice,hd95")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["schema_version"] == 1 and data["settings"]["metrics"] == ["dice", "hd95"]
    assert {"leaderboard", "ranking", "significance", "case_scores", "provenance"} <= set(data)
    row = data["leaderboard"][0]
    assert row["dice_label_2"] is not None and "nsd_mean" not in row
    assert set(row["run_ids"]) <= set(data["provenance"]["runs"])
    hd95 = data["provenance"]["metrics"]["hd95"]
    assert hd95["higher_is_better"] is False and hd95["unit"] == "mm"
    assert data["provenance"]["metric_conventions"]["Task90_Alpha"][0]["surface"] == "area"
    assert len(data["case_scores"]) == 3 * 12 + 2 * 12


@pytest.mark.parametrize(("name", "check"), [
    ("out.md", lambda b: b.startswith(b"# medseg-bench report")),
    ("out.csv", lambda b: b.startswith(b"task,dims,arch")),
    ("out.json", lambda b: json.loads(b)["schema_version"] == 1),
    ("out.tex", lambda b: b"\\toprule" in b and b"\\bottomrule" in b),
    ("out.html", lambda b: b.startswith(b"<!DOCTYPE html>") and b"data:image/png;base64," in b),
    ("out.parquet", lambda b: b[:4] == b"PAR1"),
])
def test_output_format_from_the_extension(results: Path, tmp_path: Path, name: str, check: object) -> None:
    target = tmp_path / "sub" / name
    result = invoke("--results-dir", str(results), "--output", str(target))
    assert result.exit_code == 0, result.output
    assert check(target.read_bytes())  # type: ignore[operator]
    assert not list(target.parent.glob(".*.tmp"))  # the atomic write left nothing behind


@pytest.mark.parametrize(("fmt", "name", "fix"), [
    ("csv", "rep.json", ".csv"), ("json", "rep.md", ".json"), ("markdown", "rep.HTML", ".md"),
    ("latex", "rep.parquet", ".tex")])
def test_a_format_that_the_output_extension_contradicts_is_refused_before_any_work(
        tmp_path: Path, fmt: str, name: str, fix: str) -> None:
    # --format csv --output rep.json wrote CSV into rep.json, over the JSON report that was there
    target = tmp_path / "out" / name
    target.parent.mkdir()
    target.write_text("the report that was there")
    result = invoke("--results-dir", str(tmp_path / "none"), "--format", fmt, "--output", str(target))
    assert result.exit_code == 2, result.output  # before reading runs: an empty results dir would be exit 6
    assert result.output == (f"error: --format {fmt} but --output {target} is a {target.suffix} name: drop "
                             f"--format, or name the file {fix}\n")
    assert target.read_text() == "the report that was there"


@pytest.mark.parametrize(("fmt", "name"), [("csv", "rep.csv"), ("markdown", "rep.markdown"),
                                           ("html", "rep.htm"), ("csv", "rep.txt"), ("json", "rep")])
def test_a_format_the_output_name_agrees_with_or_does_not_name_is_written(
        results: Path, tmp_path: Path, fmt: str, name: str) -> None:
    target = tmp_path / name
    result = invoke("--results-dir", str(results), "--task", "Task91_Beta", "--format", fmt, "--output",
                    str(target))
    assert result.exit_code == 0, result.output
    assert f"wrote {fmt} report to {target}" in result.output


def test_output_through_a_link_a_fifo_or_a_full_device(results: Path, tmp_path: Path) -> None:
    # The atomic rename replaced a link with a file (its target left as it was), a FIFO with a file (its
    # reader got nothing), and, as root, /dev/full and /dev/stdout themselves, reporting success.
    import os
    import threading

    target = tmp_path / "kept.csv"
    target.write_text("old")
    (tmp_path / "link.csv").symlink_to(target)
    assert invoke("--results-dir", str(results), "--output", str(tmp_path / "link.csv")).exit_code == 0
    assert (tmp_path / "link.csv").is_symlink() and target.read_text().startswith("task,dims,arch")
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    assert invoke("--results-dir", str(results), "--output", str(fifo)).exit_code == 0
    reader.join(30)
    assert received[0].startswith(b"task,dims,arch") and fifo.is_fifo()
    if Path("/dev/full").exists():
        full = invoke("--results-dir", str(results), "--output", "/dev/full", "--format", "csv")
        assert full.exit_code == 6
        assert "error: /dev/full: cannot write (No space left on device)" in full.output
        assert Path("/dev/full").is_char_device()


def test_parquet_round_trips(results: Path, tmp_path: Path) -> None:
    target = tmp_path / "board.parquet"
    assert invoke("--results-dir", str(results), "-o", str(target)).exit_code == 0
    table = pd.read_parquet(target)
    assert len(table) == 5 and table["dice_mean"].between(0, 1).all()


def test_plots_folder(results: Path, tmp_path: Path) -> None:
    result = invoke("--results-dir", str(results), "--task", "Task91_Beta", "--plots", str(tmp_path / "figs"),
                    "--format", "csv")
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["Task91_Beta_cost_quality.png", "Task91_Beta_dice_cases.png",
                     "Task91_Beta_hd95_cases.png", "Task91_Beta_learning_curves.png", "rank_heatmap.png"]


def test_output_onto_a_runs_own_file_is_refused(results: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    summary = next(copy.glob("*/*/summary.json"))
    before = summary.read_bytes()
    result = invoke("--results-dir", str(copy), "--format", "json", "--output", str(summary))
    assert result.exit_code == 6, result.output
    assert result.stderr == (f"error: {summary}: cannot write (a file of run {summary.parent.name}, whose "
                             "results are never replaced; give another name)\n")
    assert summary.read_bytes() == before


def test_output_onto_the_results_dirs_index_is_refused(results: Path, tmp_path: Path) -> None:
    # It replaced the per-case scores `status` and `sweep` rebuild with the leaderboard, without a word.
    import shutil

    from medseg_bench.results import INDEX_NAME, write_index

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    index = write_index(copy)
    before = index.read_bytes()
    for out in (index, copy / "Task90_Alpha" / ".." / INDEX_NAME):
        result = invoke("--results-dir", str(copy), "--output", str(out))
        assert result.exit_code == 6, result.output
        assert result.stderr == (f"error: {out}: cannot write (the index of results dir {copy.resolve()}, "
                                 "which status and sweep rebuild from its run folders; give another name)\n")
    assert index.read_bytes() == before
    index.unlink()  # not rebuilt yet: still its name, which the next status would write over the report
    result = invoke("--results-dir", str(copy), "--output", str(index))
    assert result.exit_code == 6 and "cannot write (the index of results dir" in result.stderr
    assert not index.exists()
    elsewhere = tmp_path / "reports" / INDEX_NAME  # a file of that name in another folder is written
    result = invoke("--results-dir", str(copy), "--output", str(elsewhere))
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(elsewhere)) == 5


def test_an_unwritable_output_or_plots_folder_is_one_line(results: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for option, target in (("--output", blocker / "report.md"), ("--plots", blocker / "figs")):
        result = invoke("--results-dir", str(results), "--task", "Task91_Beta", option, str(target))
        assert result.exit_code == 6, result.output
        last = result.output.strip().splitlines()[-1]
        assert last.startswith(f"error: {target}"), last
        assert last.endswith(f": cannot write ({blocker} is not a folder)"), last
        assert "Traceback" not in result.output
    assert blocker.read_text() == "not a folder"


def test_a_plots_folder_whose_name_is_too_long_is_exit_6(results: Path, tmp_path: Path) -> None:
    # the figure's path was looked at outside write_atomic's handling: OSError, exit 7, not README's 6
    target = tmp_path / ("x" * 300)
    result = invoke("--results-dir", str(results), "--task", "Task91_Beta", "--plots", str(target))
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines()[-1].endswith(": cannot write (File name too long)")
    assert "Traceback" not in result.output


def test_an_output_that_cannot_be_written_is_refused_before_the_report_is_built(tmp_path: Path) -> None:
    # was found only after the runs were read and the intervals bootstrapped (a name too long, here: a
    # permission bit stops no root)
    target = tmp_path / ("x" * 300 + ".md")
    result = invoke("--results-dir", str(tmp_path / "none"), "--output", str(target))
    assert result.exit_code == 6, result.output  # "no finished runs" had it read the results dir first
    assert result.output == f"error: {target}: cannot write (File name too long)\n"


def _text_in_row_2(text: str) -> str:
    lines = text.splitlines()
    cells = lines[2].split(",")
    cells[2] = "abc"  # the dice column
    return "\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n"


def _summary_with(**fields: object) -> Callable[[str], str]:
    return lambda text: json.dumps({**json.loads(text), **fields})


@pytest.mark.parametrize(("name", "edit", "problem"), [
    ("metrics.csv", lambda text: text[:40], "lacks the column(s) ref_empty, pred_empty"),  # cut short
    ("metrics.csv", _text_in_row_2, "dice is 'abc' in row 2, not a number"),
    ("summary.json", _summary_with(cost="zzz"), "'cost' must be an object, not \"zzz\""),
    ("summary.json", _summary_with(per_label_dice=5), "'per_label_dice' must be an object of numbers, not 5"),
])
def test_a_damaged_run_stops_the_report_and_status_names_it(
        results: Path, tmp_path: Path, name: str, edit: Callable[[str], str], problem: str) -> None:
    # A file cut short, or a value of the wrong type (each of those once crashed report with a traceback, and
    # status and sweep, or they called the run done).
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    damaged = sorted((copy / "Task91_Beta").iterdir())[0] / name
    damaged.write_text(edit(damaged.read_text()))
    result = invoke("--results-dir", str(copy))
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines() == [
        f"error: {damaged}: {problem}; move its run folder away to report without it, or delete the folder "
        "to run it again"]
    status = runner.invoke(app, ["status", "--results-dir", str(copy)])
    assert status.exit_code == 0, status.output
    run = f"{damaged.parent.parent.name}/{damaged.parent.name}"
    assert f"damaged  {run}  {damaged}: {problem}\n" in status.output
    assert "10 runs: 1 damaged, 9 done" in status.output
    assert status.output.count(f"{damaged}: {problem}") == 1  # its line; not the index rebuild's warning too
    quiet = runner.invoke(app, ["status", "--results-dir", str(copy), "-q"])
    assert quiet.output.count(f"{damaged}: {problem}") == 1  # no line: the warning says it
    index = pd.read_parquet(copy / "index.parquet")  # rebuilt by status, without it
    assert index["run_id"].nunique() == 9 and damaged.parent.name not in set(index["run_id"])


def test_group_by_top_and_metric(results: Path) -> None:
    result = invoke("--results-dir", str(results), "--group-by", "loss", "--format", "csv")
    table = pd.read_csv(io.StringIO(result.output))
    assert result.exit_code == 0
    assert set(table.columns) >= {"task", "loss", "configs", "dice_mean", "mean_rank"}
    assert sorted(table[table["task"] == "Task90_Alpha"]["loss"]) == ["dice", "dice_ce"]
    top = invoke("--results-dir", str(results), "--top", "1", "--metric", "hd95", "--format", "csv")
    table = pd.read_csv(io.StringIO(top.output))
    assert top.exit_code == 0 and len(table) == 2 and (table["rank"] == 1).all()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--format", "pdf"], 2, "unknown format 'pdf'"),
    (["--output", "x.docx"], 2, "cannot tell the format of 'x.docx'"),
    (["--format", "parquet"], 2, "parquet is a binary format"),
    (["--metric", "dise"], 2, "did you mean 'dice'"),
    (["--metrics", "dice,hd96"], 2, "unknown metric 'hd96'"),
    (["--group-by", "optimizer"], 2, "cannot group by 'optimizer'"),
    (["--top", "0"], 2, "--top must be at least 1"),
    (["--task", "Task99_None"], 2, "unknown task 'Task99_None'"),
    (["--task", "Task09_Spleen"], 6, "no finished runs of Task09_Spleen here"),  # as `status --task` says
])
def test_bad_input_is_one_line_and_an_exit_code(results: Path, args: list[str], code: int,
                                                message: str) -> None:
    result = invoke("--results-dir", str(results), *args)
    assert result.exit_code == code, result.output
    assert message in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--metric", "dicee"], "unknown metric 'dicee'; did you mean 'dice'?"),
    (["--metrics", "dice,foo"], "unknown metric 'foo'"),
    (["--confidence", "1.5"], "--confidence must be between 0 and 1 (0.95: 95 % intervals), not 1.5"),
    (["--confidence", "nan"], "--confidence must be between 0 and 1 (0.95: 95 % intervals), not nan"),
])
def test_a_bad_value_is_named_before_the_results_are_read(tmp_path: Path, args: list[str],
                                                          message: str) -> None:
    # They were checked once the results were read: an empty results dir said "no finished runs here", exit 6.
    result = invoke("--results-dir", str(tmp_path), *args)
    assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1


def test_no_results(tmp_path: Path) -> None:
    result = invoke("--results-dir", str(tmp_path))
    assert result.exit_code == 6 and result.output == f"error: {tmp_path}: no finished runs here\n"


def test_a_missing_results_dir_or_a_tasks_folder_given_for_it_is_said_as_status_says_it(
        tmp_path: Path) -> None:
    # Both said "no finished runs to report": a mistyped --results-dir, and RESULTS/TASK given for RESULTS.
    from tests.conftest import fake_finished_run

    missing = invoke("--results-dir", str(tmp_path / "nowhere"))
    assert missing.exit_code == 6 and missing.output == (
        f"error: {tmp_path / 'nowhere'}: no such results dir; pass the sweep's --results-dir\n")
    assert runner.invoke(app, ["status", "--results-dir", str(tmp_path / "nowhere")]).output == missing.output
    results = tmp_path / "results"
    fake_finished_run(results, 0, "T")
    hint = f" (it holds run folders itself: pass the results dir above it, {results})\n"
    given = invoke("--results-dir", str(results / "T"))
    assert given.exit_code == 6 and given.output == f"error: {results / 'T'}: no finished runs here{hint}"
    status = runner.invoke(app, ["status", "--results-dir", str(results / "T")])
    assert status.exit_code == 6 and status.output == f"error: {results / 'T'}: no runs here{hint}"
    assert invoke("--results-dir", str(results)).exit_code == 0


def test_runs_that_differ_in_a_setting_are_never_pooled(results: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    longer = sorted((copy / "Task91_Beta").glob("3d-*"))[0]  # one of its two runs: trained longer
    respecified(longer, epochs=8)
    result = invoke("--results-dir", str(copy), "--task", "Task91_Beta", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    assert sorted(table["config"]) == ["2d-unet.resnet18-dice_ce-none", "3d-unet-dice_ce-light [epochs=4]",
                                       "3d-unet-dice_ce-light [epochs=8]"]
    assert set(table.loc[table["config"].str.startswith("3d"), "runs"]) == {1}


def test_runs_that_differ_in_a_setting_across_tasks_are_never_pooled(results: Path, tmp_path: Path) -> None:
    # Task91_Beta's 3d-unet-dice_ce-light trained with class weights, Task90_Alpha's without: the ranking
    # across tasks pooled them as one configuration run on both tasks, and JSON did not say which was which.
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    for run in sorted((copy / "Task91_Beta").glob("3d-unet-dice_ce-light-*")):
        respecified(run, class_weights=[1000.0, 1.0])
    result = invoke("--results-dir", str(copy), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    ranking = {row["config"]: row for row in data["ranking"]}
    weighted, plain = ("3d-unet-dice_ce-light [class_weights=1000.0x1.0]",
                       "3d-unet-dice_ce-light [class_weights=default]")
    assert ranking[weighted]["tasks"] == ranking[plain]["tasks"] == 1
    assert ranking[weighted]["rank[Task90_Alpha]"] is None and ranking[plain]["rank[Task91_Beta]"] is None
    assert ranking["2d-unet.resnet18-dice_ce-none"]["tasks"] == 2  # the same settings: still one row
    rows = {(row["task"], row["config"]): row for row in data["leaderboard"]}
    assert rows[("Task91_Beta", weighted)]["settings"]["class_weights"] == [1000.0, 1.0]
    assert rows[("Task90_Alpha", plain)]["settings"]["class_weights"] is None
    assert all(row["settings"]["lr"] == rows[("Task90_Alpha", plain)]["settings"]["lr"] is not None
               for row in data["leaderboard"])
    csv = invoke("--results-dir", str(copy), "--format", "csv")
    table = pd.read_csv(io.StringIO(csv.output)).set_index(["task", "config"])
    assert json.loads(table.loc[("Task91_Beta", weighted), "settings"])["class_weights"] == [1000.0, 1.0]
