"""Format-independent report text."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg_bench.report.build import report_from_results
from medseg_bench.report.display import _p_relation, ranking_table
from medseg_bench.results import load_results


def test_a_p_value_reads_as_prose() -> None:
    assert _p_relation(0.0123) == "= 0.0123"
    assert _p_relation(1e-9) == "< 0.0001"  # once "p = < 0.0001"


def test_the_ranking_bolds_the_best_of_each_column_also_when_it_is_not_rank_1(fake_results: Path) -> None:
    results = load_results(fake_results)
    # 3d-unet-dice-none: second by Dice in Task90_Alpha, first by HD95 there; the Dice winner is second by
    # HD95, so both have the task rank (1 + 2) / 2 = 1.5, the column's best, and neither has a rank of 1
    dice_loss = (results["task"] == "Task90_Alpha") & (results["loss"] == "dice")
    results.loc[dice_loss, "hd95"] -= 3
    report = report_from_results(results, fake_results, metrics=["dice", "hd95"])
    table = ranking_table(report)
    alpha = table.headers.index("Task90_Alpha")
    cells = {row[1].text: row[alpha] for row in table.rows}
    assert cells["3d-unet-dice_ce-light"].text == cells["3d-unet-dice-none"].text == "1.5"
    assert cells["3d-unet-dice_ce-light"].best and cells["3d-unet-dice-none"].best
    assert not cells["2d-unet.resnet18-dice_ce-none"].best
    mean_rank = table.headers.index("mean rank")
    assert [row[mean_rank].best for row in table.rows] == [True, False, False]


def test_a_mean_rank_rounds_its_halves_up() -> None:
    from medseg_bench.report.display import format_rank, mean_rank_text

    # mean ranks are fractions of small denominators: 2.125 is exact, and Python's rounding gave 2.12 beside
    # 2.375 -> 2.38
    assert [mean_rank_text(v) for v in (2.125, 2.375, 1.0, 2 / 3, 12.005)] == ["2.13", "2.38", "1.00", "0.67",
                                                                             "12.01"]
    assert [format_rank(v) for v in (2.125, 1.5, 3.0, float("nan"))] == ["2.13", "1.5", "3", "–"]
    assert mean_rank_text(float("nan")) == "–"


def test_the_confidence_level_is_shown_as_given() -> None:
    from medseg_bench.report.display import confidence_text

    assert [confidence_text(c) for c in (0.95, 0.975, 0.999)] == ["95%", "97.5%", "99.9%"]  # once 98%, 100%


@pytest.mark.parametrize("top", [None, 1, 2])
def test_configurations_whose_mean_ranks_tie_share_their_place(fake_results: Path, top: int | None) -> None:
    from tests.report.fake_results import with_tied_ranking

    report = report_from_results(with_tied_ranking(load_results(fake_results)), fake_results,
                                 metrics=["dice"], top=top)
    table = ranking_table(report)
    places = [(row[0].text, row[1].text) for row in table.rows]
    expected = [("1", "3d-unet-dice_ce-light"), ("2.5", "2d-unet.resnet18-dice_ce-none"),
                ("2.5", "3d-unet-dice-none")]
    # once 1, 2, 3: the second looked better than the third; --top 2 keeps both tied second
    assert places == expected[:{None: 3, 1: 1, 2: 3}[top]]


def test_bold_under_top_is_the_best_of_every_configuration_not_of_those_shown(fake_results: Path) -> None:
    # Under --top 1 bold marked the best of the shown rows only: Task90_Alpha's winner by Dice was bold for
    # HD95 and params, which a configuration --top left out had better (lower), while the report said
    # "Bold: best in its column within the task"; and in the ranking, a task's column bolded a rank that
    # another configuration beat there.
    from medseg_bench.report import render
    from medseg_bench.report.display import task_table

    results = load_results(fake_results)
    hidden = (results["task"] == "Task90_Alpha") & (results["loss"] == "dice")  # 3d-unet-dice-none
    results.loc[hidden, "hd95"] -= 3
    results.loc[hidden, "params"] = 1_000_000
    report = report_from_results(results, fake_results, metrics=["dice", "hd95"], top=1)
    table = task_table(report, "Task90_Alpha")
    (row,) = table.rows
    cell = {header: row[i] for i, header in enumerate(table.headers)}
    assert row[1].text == "3d-unet-dice_ce-light" and cell["Dice"].best
    assert not cell["HD95 (mm)"].best and not cell["params (M)"].best  # 3d-unet-dice-none's, not shown
    full = task_table(report_from_results(results, fake_results, metrics=["dice", "hd95"]), "Task90_Alpha")
    column = full.headers.index("params (M)")
    assert [(r[1].text, r[column].best) for r in full.rows if r[column].best] == [("3d-unet-dice-none", True)]
    ranking = ranking_table(report)
    (first,) = ranking.rows
    beta = ranking.headers.index("Task91_Beta")
    assert first[1].text == "3d-unet-dice_ce-light" and not first[beta].best  # second in Task91_Beta
    assert first[ranking.headers.index("mean rank")].best
    assert "a column whose best --top leaves out has none bold" in render(report, "markdown")


def test_the_friedman_note_counts_one_configuration_in_the_singular(tmp_path: Path) -> None:
    # "(1 configurations, 2 complete cases)" on a task with a single configuration
    from medseg_bench.report import build_report
    from medseg_bench.report.display import significance_section
    from tests.conftest import fake_finished_run

    for seed in (1, 2):
        fake_finished_run(tmp_path / "r", seed)
    notes, _ = significance_section(build_report(tmp_path / "r"), "T")
    assert "needs at least 3 configurations (1 configuration, 2 complete cases)." in notes[0]


def test_cpu_and_gpu_costs_side_by_side_say_their_kind_and_none_is_bold(fake_results: Path) -> None:
    # A CPU run's 0.713 h was bolded over GPU runs' hours under one "CPU/GPU-h/run" header, and nothing on
    # the row said which was which; peak memory (RAM or GPU memory) and s/epoch alike.
    from medseg_bench.report.display import task_table

    results = load_results(fake_results)
    on_cpu = (results["task"] == "Task90_Alpha") & (results["loss"] == "dice")  # 3d-unet-dice-none
    results.loc[on_cpu, "device"] = "cpu"
    table = task_table(report_from_results(results, fake_results, metrics=["dice"]), "Task90_Alpha")
    cells = {row[1].text: {h: row[i] for i, h in enumerate(table.headers)} for row in table.rows}
    assert "CPU/GPU-h/run" in table.headers
    for config, row in cells.items():
        kind = "CPU" if config == "3d-unet-dice-none" else "GPU"
        for header in ("CPU/GPU-h/run", "peak mem (MiB)", "s/epoch"):
            assert row[header].text.endswith(f" {kind}") and not row[header].best, (config, header)
    assert any(row["params (M)"].best for row in cells.values())  # a count is one measure on any machine
    one_kind = task_table(report_from_results(load_results(fake_results), fake_results, metrics=["dice"]),
                          "Task90_Alpha")
    hours = one_kind.headers.index("GPU-h/run")
    assert [row[hours].best for row in one_kind.rows].count(True) == 1
    assert not any(row[hours].text.endswith("GPU") for row in one_kind.rows)


def test_the_group_effect_never_averages_cpu_and_gpu_hours(fake_results: Path) -> None:
    # `--group-by` averaged CPU- and GPU-hours of a group's configurations under "CPU/GPU-h/run", its cells
    # saying no kind; with `--top 1` the header's kind was that of the configurations shown, the numbers
    # those of all of them
    import math

    from medseg_bench.report.display import group_table, sections

    results = load_results(fake_results)
    on_cpu = (results["task"] == "Task90_Alpha") & (results["loss"] == "dice")  # 3d-unet-dice-none
    results.loc[on_cpu, "device"] = "cpu"
    by_dims = report_from_results(results, fake_results, metrics=["dice"], group_by="dims")
    groups = by_dims.groups.set_index(["task", "dims"])  # type: ignore[union-attr]
    assert groups.loc[("Task90_Alpha", "3d"), "compute"] == "mixed"  # 3d-unet-dice_ce-light on GPU
    assert math.isnan(groups.loc[("Task90_Alpha", "3d"), "train_hours"])
    assert groups.loc[("Task90_Alpha", "2d"), "compute"] == "GPU"
    table = group_table(by_dims, "Task90_Alpha")
    hours = {row[0].text: row[-1].text for row in table.rows}
    assert table.headers[-1] == "CPU/GPU-h/run" and hours["3d"] == "–" and hours["2d"].endswith(" GPU")
    notes = [item for s in sections(by_dims) for item in s.items if isinstance(item, str)]
    assert any("a CPU-hour and a GPU-hour are not one measure" in note for note in notes)
    by_loss = report_from_results(results, fake_results, metrics=["dice"], group_by="loss", top=1)
    table = group_table(by_loss, "Task90_Alpha")  # --top 1 shows a GPU configuration only
    hours = {row[0].text: row[-1].text for row in table.rows}
    assert table.headers[-1] == "CPU/GPU-h/run"
    assert hours["dice"].endswith(" CPU") and hours["dice_ce"].endswith(" GPU")
    one_kind = report_from_results(load_results(fake_results), fake_results, metrics=["dice"],
                                   group_by="loss")
    table = group_table(one_kind, "Task90_Alpha")
    assert table.headers[-1] == "GPU-h/run" and not any(row[-1].text.endswith("GPU") for row in table.rows)
    assert not any("not one measure" in item for s in sections(one_kind) for item in s.items
                   if isinstance(item, str))


def test_a_configuration_trained_on_cpu_and_on_gpu_has_no_hardware_bound_cost(fake_results: Path) -> None:
    # its hours were a mean of CPU- and GPU-hours, its peak memory the larger of RAM and GPU memory, under a
    # "GPU/mixed-h/run" header
    import math

    from medseg_bench.report.display import task_table

    results = load_results(fake_results)
    config = (results["task"] == "Task90_Alpha") & (results["loss"] == "dice")  # 3d-unet-dice-none
    one_run = results.loc[config, "run_id"].iloc[0]
    results.loc[config & (results["run_id"] == one_run), "device"] = "cpu"
    assert results.loc[config, "run_id"].nunique() > 1  # the others stay on the GPU
    report = report_from_results(results, fake_results, metrics=["dice"])
    table = report.table
    row = table[(table["task"] == "Task90_Alpha") & (table["config"] == "3d-unet-dice-none")]
    assert row["compute"].item() == "mixed"
    assert all(math.isnan(row[c].item()) for c in ("train_hours", "train_hours_total", "peak_memory_mb",
                                                    "time_per_epoch_s"))
    table = task_table(report, "Task90_Alpha")
    assert "CPU/GPU-h/run" in table.headers and not any("mixed" in h for h in table.headers)
    cells = {r[1].text: r for r in table.rows}
    assert cells["3d-unet-dice-none"][table.headers.index("CPU/GPU-h/run")].text == "–"
