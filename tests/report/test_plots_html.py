"""Figures are real PNGs with content; the HTML report is one self-contained file; Chromium renders it."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medseg_bench.report import Report, build_report, render
from medseg_bench.report.plots import make_plots, slug, write_plots


@pytest.fixture(scope="module")
def report_and_plots(fake_results: Path) -> tuple[Report, dict[str, bytes]]:
    report = build_report(fake_results, group_by="aug")
    return report, make_plots(report)


def _pixels(png: bytes) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_every_figure_is_a_png_with_content(report_and_plots: tuple[Report, dict[str, bytes]],
                                            tmp_path: Path) -> None:
    _, plots = report_and_plots
    kinds = ("dice_cases", "hd95_cases", "learning_curves", "cost_quality")
    expected = {f"{task}_{kind}.png" for task in ("Task90_Alpha", "Task91_Beta") for kind in kinds}
    expected.add("rank_heatmap.png")
    assert set(plots) == expected
    for name, png in plots.items():
        pixels = _pixels(png)
        assert pixels.shape[0] > 150 and pixels.shape[1] > 300, name
        assert pixels[..., :3].std() > 0.05, f"{name} looks blank"
    written = write_plots(plots, tmp_path / "figures")
    assert sorted(p.name for p in written) == sorted(plots)
    assert (tmp_path / "figures" / "rank_heatmap.png").read_bytes() == plots["rank_heatmap.png"]


def _figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Figures the plot functions make, kept open instead of saved as PNG."""
    from medseg_bench.report import plots

    kept: list[Any] = []
    monkeypatch.setattr(plots, "_png", lambda fig: kept.append(fig) or b"")
    return kept


def test_the_case_plot_shows_a_point_per_case_seeds_averaged_as_the_table(
        fake_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.report.plots import case_distribution

    report = build_report(fake_results)
    figures = _figures(monkeypatch)
    case_distribution(report, "Task91_Beta", "dice")  # two seeds of 6 cases per configuration
    points = [c.get_offsets()[:, 0] for c in figures[0].axes[0].collections if len(c.get_offsets())]
    rows = report.table[report.table["task"] == "Task91_Beta"]
    assert [len(p) for p in points] == rows["cases"].tolist() == [6, 6]
    assert [p.mean() for p in points] == pytest.approx(rows["dice_mean"].tolist())


def test_the_case_plot_labels_rows_with_the_tables_rank_ties_shared(
        fake_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.report import report_from_results
    from medseg_bench.report.plots import case_distribution
    from medseg_bench.results import load_results

    results = load_results(fake_results)
    tied = (results["task"] == "Task90_Alpha") & ((results["loss"] == "dice") | (results["dims"] == "2d"))
    results.loc[tied & results["dice"].notna(), "dice"] = 0.5  # the same Dice on every case: a tie
    report = report_from_results(results, fake_results, metrics=["dice"])
    figures = _figures(monkeypatch)
    case_distribution(report, "Task90_Alpha", "dice")
    axis = figures[0].axes[0]
    top_down = sorted(axis.get_yticklabels(), key=lambda label: -label.get_position()[1])
    assert report.table["rank"].tolist()[:3] == [1, 2.5, 2.5]
    assert [label.get_text() for label in top_down] == [  # once 1., 2., 3.: as if the second were better
        "1. 3d-unet-dice_ce-light", "2.5. 2d-unet.resnet18-dice_ce-none", "2.5. 3d-unet-dice-none"]


def test_the_cost_plot_names_the_reports_confidence_level(fake_results: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from medseg_bench.report.plots import cost_quality

    figures = _figures(monkeypatch)
    cost_quality(build_report(fake_results, confidence=0.975), "Task90_Alpha", "dice")
    assert figures[0].axes[0].get_ylabel() == "mean Dice (97.5% CI)"


def test_learning_curves_skip_runs_without_logs(fake_results: Path, tmp_path: Path) -> None:
    copy = tmp_path / "results"
    shutil.copytree(fake_results, copy)
    for log in copy.glob("Task91_Beta/*/logs/metrics.csv"):
        log.unlink()
    plots = make_plots(build_report(copy, task="Task91_Beta"))
    assert "Task91_Beta_learning_curves.png" not in plots and "Task91_Beta_dice_cases.png" in plots


def test_html_is_self_contained(report_and_plots: tuple[Report, dict[str, bytes]]) -> None:
    report, plots = report_and_plots
    page = render(report, "html", plots)
    assert isinstance(page, str) and page.startswith("<!DOCTYPE html>")
    images = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(images) == len(plots) and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing to fetch
    assert "<link" not in page and "<script" not in page
    # Per task: leaderboard + tests; group effect per task; ranking; the folded provenance table.
    assert page.count("<table>") == 2 + 2 + 2 + 1 + 1
    assert "Effect of aug" in page and "3d-unet-dice_ce-light" in page
    assert "Provenance: 10 runs" in page and page.count("0123abc") == 10


def test_provenance_names_each_runs_gpu_or_else_its_cpu(fake_results: Path, tmp_path: Path) -> None:
    # floating-point results can differ between CPUs (and their instruction sets) with the same packages
    results = tmp_path / "results"
    shutil.copytree(fake_results, results)
    env_file = sorted(results.glob("*/*/env.json"))[0]
    env = json.loads(env_file.read_text())
    env.update(gpu=None, cpu="AMD EPYC (cpu family 25, model 17)", cpu_capability="AVX512",
               isa_limits={"ONEDNN_MAX_CPU_ISA": "AVX2"}, torch_threads=2)
    env_file.write_text(json.dumps(env))
    page = render(build_report(results), "html", {})
    assert page.count("NVIDIA A100") == 9
    assert page.count("AMD EPYC (cpu family 25, model 17) AVX512 ONEDNN_MAX_CPU_ISA=AVX2") == 1
    runs = build_report(results).provenance["runs"]
    assert runs[env_file.parent.name]["cpu_capability"] == "AVX512"
    # the threads change results in the last digits: recorded in env.json, left out of the report
    assert runs[env_file.parent.name]["torch_threads"] == 2
    assert {run["torch_threads"] for name, run in runs.items() if name != env_file.parent.name} == {None}


def test_provenance_tells_runs_of_different_uncommitted_changes_apart(fake_results: Path,
                                                                      tmp_path: Path) -> None:
    # `0123abc+dirty` twice: one commit, but not necessarily the same code; the diffs' sha256 tell
    results = tmp_path / "results"
    shutil.copytree(fake_results, results)
    env_files = sorted(results.glob("*/*/env.json"))
    diffs = {"file": "source.diff", "sha256": "a1" * 32, "size_bytes": 120, "cut": False}, {
        "file": "source.diff", "sha256": "b2" * 32, "size_bytes": 4 * 2**20 + 1, "cut": True}
    for env_file, diff in zip(env_files, [*diffs, {"error": "git diff failed (exit 129)"}], strict=False):
        env = json.loads(env_file.read_text())
        env.update(git_revision="0123abc+dirty", source_diff=diff)
        env_file.write_text(json.dumps(env))
    commit = "4567def" * 5 + "45678"
    installed = json.loads(env_files[3].read_text())
    installed.update(git_revision=commit, source_diff=None, installed_from={
        "url": "https://github.com/lab/medseg-bench.git", "vcs": "git", "commit_id": commit,
        "requested_revision": "v1.2"})
    env_files[3].write_text(json.dumps(installed))
    report = build_report(results)
    runs = report.provenance["runs"]
    assert runs[env_files[0].parent.name]["source_diff"] == diffs[0]
    assert runs[env_files[3].parent.name]["installed_from"]["commit_id"] == commit
    assert runs[env_files[4].parent.name]["source_diff"] is None  # a run made before it was recorded
    page = render(report, "html", {})
    assert page.count("0123abc+dirty, diff sha256 a1a1a1a1a1a1<") == 1
    assert page.count("0123abc+dirty, diff sha256 b2b2b2b2b2b2<") == 1
    assert page.count("0123abc+dirty, diff not recorded: git diff failed (exit 129)<") == 1
    assert page.count(f"{commit}, installed from https://github.com/lab/medseg-bench.git (v1.2)<") == 1
    assert page.count("0123abc<") == len(env_files) - 4  # the clean ones as before


def test_figures_go_with_their_own_task() -> None:
    from medseg_bench.report.plots import task_figures

    plots = dict.fromkeys(["T_A_dice_cases.png", "T_A_B_dice_cases.png", "T_A_B_cost_quality.png",
                           "rank_heatmap.png"], b"")
    assert task_figures(plots, "T_A") == ["T_A_dice_cases.png"]
    assert task_figures(plots, "T_A_B") == ["T_A_B_dice_cases.png", "T_A_B_cost_quality.png"]


def test_names_from_a_results_folder_are_drawn_and_escaped_as_they_are(tmp_path: Path) -> None:
    # Someone else's results folder: a task named with two `$` stopped the report with matplotlib's
    # mathtext error (a traceback, exit 1); markup in it is text in the HTML page, never a tag.
    from tests.conftest import fake_finished_run

    task = "T<img src=x onerror=alert(1)>$\\foo$"
    for seed in (1, 2):
        fake_finished_run(tmp_path / "r", seed, task=task)
    report = build_report(tmp_path / "r")
    plots = make_plots(report)
    assert f"{slug(task)}_dice_cases.png" in plots
    page = render(report, "html", plots)
    assert isinstance(page, str)
    assert "<img src=x" not in page and "T&lt;img src=x onerror=alert(1)&gt;$\\foo$" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_html_renders_in_headless_chromium(report_and_plots: tuple[Report, dict[str, bytes]],
                                           tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    report, plots = report_and_plots
    page = tmp_path / "report.html"
    page.write_text(render(report, "html", plots))  # type: ignore[arg-type]
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
               page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = _pixels(shot.read_bytes())
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels[..., :3].std() > 0.05, "the screenshot is blank"
    # The top of the page holds the title and the first table: dark text on white, not a single colour.
    assert (pixels[:400, :, :3] < 0.3).mean() > 0.002


def test_learning_curves_average_each_runs_epochs_then_the_runs(
        fake_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every run's log is averaged per epoch in one pass over all of them (one groupby per run was a third of
    # the figures' time at 1000 runs): each epoch's two rows (loss, Dice) of a run first, then the runs; a
    # run that logged no Dice is left out of the Dice curve only, one without a log of both.
    from medseg_bench.report.plots import learning_curves

    copy = tmp_path / "results"
    shutil.copytree(fake_results, copy)
    runs = sorted((copy / "Task91_Beta").glob("2d-*"))
    assert len(runs) == 2
    lines = ["epoch,step,train_loss,val_dice", "0,9,,0.5", "0,9,1.0,", "0,9,3.0,", "1,19,,0.7", "1,19,0.5,"]
    (runs[0] / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")  # epoch 0's loss logged twice
    (runs[1] / "logs" / "metrics.csv").write_text("epoch,step,train_loss\n0,9,4.0\n1,19,1.5\n")
    for other in (copy / "Task91_Beta").glob("3d-*"):
        (other / "logs" / "metrics.csv").unlink()
    report = build_report(copy, task="Task91_Beta")
    figures = _figures(monkeypatch)
    learning_curves(report, "Task91_Beta")
    loss_axis, dice_axis = figures[0].axes[:2]
    (loss,), (dice,) = loss_axis.get_lines(), dice_axis.get_lines()
    assert list(loss.get_xdata()) == [1, 2] and list(loss.get_ydata()) == [3.0, 1.0]  # (2, 4) and (0.5, 1.5)
    assert list(dice.get_ydata()) == [0.5, 0.7]
    band = loss_axis.collections[0].get_paths()[0].vertices[:, 1]  # min-max over the runs: 2-4, 0.5-1.5
    assert {2.0, 4.0, 0.5, 1.5} <= set(np.round(band, 6))


def test_learning_curves_leave_out_what_a_damaged_log_holds_that_is_no_number(
        fake_results: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An epoch `abc` (a log edited or damaged after the run) stopped `report --plots` and `--format html` with
    # a TypeError traceback, exit 1: its row is left out, as is a loss that is no number; the rest is drawn.
    from medseg_bench.report.plots import learning_curves

    copy = tmp_path / "results"
    shutil.copytree(fake_results, copy)
    runs = sorted((copy / "Task91_Beta").glob("2d-*"))
    lines = ["epoch,step,train_loss,val_dice", "abc,9,7.0,0.9", "0,9,oops,0.5", "0,9,1.0,", "1,19,0.5,0.7"]
    (runs[0] / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")
    for other in (copy / "Task91_Beta").glob("*"):
        if other.is_dir() and other != runs[0]:
            (other / "logs" / "metrics.csv").unlink()
    report = build_report(copy, task="Task91_Beta")
    figures = _figures(monkeypatch)
    assert learning_curves(report, "Task91_Beta") is not None
    loss_axis, dice_axis = figures[0].axes[:2]
    (loss,), (dice,) = loss_axis.get_lines(), dice_axis.get_lines()
    assert list(loss.get_xdata()) == [1, 2] and list(loss.get_ydata()) == [1.0, 0.5]
    assert list(dice.get_ydata()) == [0.5, 0.7]
    assert "Task91_Beta_learning_curves.png" in make_plots(report)


def test_provenance_of_an_env_json_whose_objects_are_not_objects(fake_results: Path, tmp_path: Path) -> None:
    # env.json is not among the files whose damage stops a report: an edited one whose `versions` or
    # `isa_limits` is no JSON object stopped `--format html` with an AttributeError traceback (exit 1).
    results = tmp_path / "results"
    shutil.copytree(fake_results, results)
    env_file = sorted(results.glob("*/*/env.json"))[0]
    env = json.loads(env_file.read_text())
    env.update(versions=["torch"], isa_limits=5)
    env_file.write_text(json.dumps(env))
    report = build_report(results)
    run = report.provenance["runs"][env_file.parent.name]
    assert run["versions"] == {} and run["isa_limits"] == {}
    assert env_file.parent.name in render(report, "html", {})
    assert json.loads(render(report, "json"))["provenance"]["runs"][env_file.parent.name]["versions"] == {}


@pytest.mark.parametrize("damage", ["", "[]", "{\"versions\": "])
@pytest.mark.parametrize("name", ["env.json", "setup.json"])
def test_a_damaged_env_or_setup_json_is_named_where_its_provenance_is_left_out(
        fake_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
        damage: str) -> None:
    # An emptied env.json gave a report without its run's versions and git revision, and a setup.json the
    # data digest the different-data warning is made from, without a word.
    results = tmp_path / "results"
    shutil.copytree(fake_results, results)
    folder = sorted(results.glob("*/*/env.json"))[0].parent
    build_report(results)
    assert capsys.readouterr().err == ""  # a fake run has no setup.json: absent is no damage
    (folder / name).write_text(damage)
    report = build_report(results)
    assert report.provenance["runs"][folder.name]["versions"] == ({} if name == "env.json" else {
        "medseg-bench": "0.1.0", "torch": "2.4.0"})
    why = {"": "not valid JSON", "[]": "not a JSON object", "{\"versions\": ": "not valid JSON"}[damage]
    left_out = {"env.json": "its package versions, git revision and machine",
                "setup.json": "the data it trained on"}
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"warning: {folder / name}: {why}") and line.endswith(
        f"{left_out[name]} left out of the report's provenance")


def test_tasks_whose_names_differ_only_where_a_file_name_cannot_keep_their_figures(tmp_path: Path) -> None:
    # `T 1` and `T_1` were both `T_1_dice_cases.png`: the second task's figures replaced the first's, in
    # --plots and in the HTML page (each task's section showing the same plot).
    from tests.conftest import fake_finished_run

    for task in ("T 1", "T_1"):
        for seed in (1, 2):
            fake_finished_run(tmp_path / "r", seed, task=task)
    plots = make_plots(build_report(tmp_path / "r"))
    cases = sorted(name for name in plots if name.endswith("_dice_cases.png"))
    assert len(cases) == 2 and "T_1_dice_cases.png" in cases  # a name a file can hold is kept as it is
    assert slug("T 1") != slug("T_1") == "T_1"


def test_figures_of_a_long_task_name_have_names_a_file_system_takes(tmp_path: Path) -> None:
    # a task named with 300 characters made 320-character file names: --plots stopped with exit 7, "File name
    # too long"; two names alike in their first 120 characters still get files of their own
    long = "Task" + "x" * 300
    assert len(slug(long)) == len(slug(long + "y")) == 120 and slug(long) != slug(long + "y")
    assert slug(long)[:111] == long[:111] and slug("Task_1") == "Task_1"
    assert len(slug("ü" * 300)) <= 120 and len(slug("üa" * 300)) == 120
    plots = {f"{slug(name)}_learning_curves.png": b"png" for name in (long, long + "y")}
    written = write_plots(plots, tmp_path / "figs")
    assert len({p.name for p in written}) == 2 and all(p.read_bytes() == b"png" for p in written)


def test_a_figure_that_cannot_be_written_is_a_results_error(tmp_path: Path) -> None:
    # `write_atomic` looked at the path before its `try`: a name too long escaped as an OSError (exit 7)
    from medseg_bench.errors import ResultsError

    target = tmp_path / ("x" * 300 + ".png")
    with pytest.raises(ResultsError, match=r"cannot write \(File name too long\)"):
        write_plots({target.name: b"png"}, tmp_path)


def test_control_characters_in_names_are_escaped_in_the_page_and_the_figures(fake_results: Path) -> None:
    # An escape sequence in a configuration's or task's name reached the HTML page raw, and each figure that
    # drew it had matplotlib warn, in several lines, `Glyph 27 missing from font`
    import warnings

    from medseg_bench.report import report_from_results
    from medseg_bench.results import load_results

    results = load_results(fake_results)
    results.loc[results["loss"] == "dice", "loss"] = "dice\x1b[31mRED\x0c"
    results.loc[results["task"] == "Task91_Beta", "task"] = "Task91\x1b]0;title\x07"
    report = report_from_results(results, fake_results, metrics=["dice"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots = make_plots(report)
    assert [str(w.message) for w in caught] == []
    assert "Task90_Alpha_learning_curves.png" in plots  # the renamed configuration's curves drawn
    page = render(report, "html", plots)
    assert isinstance(page, str)
    assert not any(ch in page for ch in "\x1b\x07\x0c")
    assert "3d-unet-dice\\x1b[31mRED -none" in page  # a form feed breaks a line: a space, as in markdown
    assert "Task91\\x1b]0;title\\x07" in page


def _many(n: int, kinds: list[str], results_dir: Path) -> Any:
    """A report of `n` configurations of task T, the i-th trained on `kinds[i % len(kinds)]`, each with a
    run whose training log has two epochs: what the cost and curve figures read."""
    from types import SimpleNamespace

    import pandas as pd

    configs = [f"c{i:03d}" for i in range(n)]
    for config in configs:
        log = results_dir / "T" / f"{config}-run" / "logs" / "metrics.csv"
        log.parent.mkdir(parents=True)
        log.write_text("epoch,train_loss,val_dice\n0,1.0,0.5\n1,0.8,0.6\n")
    quality = np.linspace(0.5, 0.9, n)
    table = pd.DataFrame({"task": "T", "config": configs, "rank": np.arange(n, 0, -1.0),
                          "train_hours": np.linspace(1, 2, n),
                          "compute": [kinds[i % len(kinds)] for i in range(n)],
                          "dice_mean": quality, "dice_ci_low": quality - 0.01, "dice_ci_high": quality + 0.01,
                          "run_ids": [[f"{c}-run"] for c in configs]})
    return SimpleNamespace(table=table, results_dir=results_dir, settings={"confidence": 0.95})


def test_a_hundred_configurations_are_told_apart_in_the_figures(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # tab20 and `i % 20`: configurations 0, 20, 40, ... were drawn alike, in colour and marker
    from medseg_bench.report.plots import cost_quality, learning_curves

    figures = _figures(monkeypatch)
    report = _many(100, ["GPU"], tmp_path)
    cost_quality(report, "T", "dice")
    learning_curves(report, "T")
    points = [c.lines[0] for c in figures[0].axes[0].containers]
    lines = figures[1].axes[0].lines
    assert len(points) == len(lines) == 100
    assert len({(str(p.get_color()), p.get_marker(), p.get_fillstyle()) for p in points}) == 100
    assert len({(str(line.get_color()), line.get_marker(), line.get_linestyle()) for line in lines}) == 100
    assert points[0].get_marker() == "o" and lines[0].get_linestyle() == "-"  # the first 20 as before


def test_cpu_and_gpu_hours_have_their_own_markers_and_pareto_fronts(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # CPU- and GPU-hours on one axis with one Pareto front: a cheap CPU run "beat" costlier GPU runs
    from medseg_bench.report.plots import cost_quality

    figures = _figures(monkeypatch)
    cost_quality(_many(6, ["GPU", "CPU"], tmp_path), "T", "dice")
    ax = figures[0].axes[0]
    points = {c.get_label(): c.lines[0] for c in ax.containers}
    assert {label: p.get_marker() for label, p in points.items() if label.startswith("c000")} == \
        {"c000 (GPU)": "o"}
    assert {p.get_marker() for label, p in points.items() if label.endswith("(CPU)")} == {"s"}
    fronts = {line.get_label(): line for line in ax.lines if line.get_label().startswith("Pareto")}
    assert sorted(fronts) == ["Pareto front (CPU)", "Pareto front (GPU)"]
    # hours 1 to 2 and quality rising with them: every configuration is on its kind's front
    assert len(fronts["Pareto front (GPU)"].get_xdata()) == len(fronts["Pareto front (CPU)"].get_xdata()) == 3
    assert "not one measure" in ax.get_title()
    figures.clear()
    cost_quality(_many(3, ["GPU"], tmp_path / "one"), "T", "dice")
    assert [line.get_label() for line in figures[0].axes[0].lines if line.get_label().startswith("Pareto")] \
        == ["Pareto front"]


def test_a_configuration_trained_on_cpu_and_gpu_is_on_no_front(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # an all-mixed task had one front over averaged CPU+GPU hours; {GPU, mixed}'s title named squares CPU
    import math

    from medseg_bench.report.plots import cost_quality

    figures = _figures(monkeypatch)
    for kinds in (["mixed"], ["GPU", "mixed"]):
        report = _many(4, kinds, tmp_path / kinds[0])
        report.table.loc[report.table["compute"] == "mixed", "train_hours"] = math.nan  # as tables._cost
        drawn = cost_quality(report, "T", "dice")
        if kinds == ["mixed"]:  # no configuration has hours of one kind: no figure
            assert drawn is None and not figures
            continue
        ax = figures[0].axes[0]
        assert [line.get_label() for line in ax.lines if line.get_label().startswith("Pareto")] == [
            "Pareto front (GPU)"]
        said = "(a CPU-hour and a GPU-hour are not one measure: circles GPU, a front of each)"
        assert said in ax.get_title()
