"""Leaderboard semantics on the fixed fake results: means, counts, cost, ranks, tests, grouping, top-K."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg_bench.errors import ResultsError, UnknownNameError, UsageError
from medseg_bench.report import build_report
from medseg_bench.report.tables import cross_task_ranking, group_effect, leaderboard, top_k
from medseg_bench.results import load_results

TOP_ALPHA = "3d-unet-dice_ce-light"


def _raw(fake_results: Path, task: str, prefix: str) -> pd.DataFrame:
    frames = []
    for folder in sorted((fake_results / task).glob(f"{prefix}-f*")):
        frame = pd.read_csv(folder / "metrics.csv")
        frame["run"] = folder.name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_means_counts_and_cost_from_the_run_folders(fake_results: Path) -> None:
    table = leaderboard(load_results(fake_results))
    row = table[(table["task"] == "Task90_Alpha") & (table["config"] == TOP_ALPHA)].iloc[0]
    raw = _raw(fake_results, "Task90_Alpha", TOP_ALPHA)
    per_case = raw.groupby(["run", "case"])["dice"].mean()  # NaN (both empty) left out of the label mean
    assert row["dice_mean"] == pytest.approx(per_case.mean())
    assert row["dice_std"] == pytest.approx(per_case.std(ddof=1))
    assert row["dice_label_2"] == pytest.approx(raw[raw["label"] == 2]["dice"].mean())
    assert row["dice_ci_low"] < row["dice_mean"] < row["dice_ci_high"]
    assert (row["runs"], row["cases"], row["samples"]) == (2, 12, 12)
    assert (row["empty_ref"], row["both_empty"]) == (2, 1)  # fold 0: both empty (NaN); fold 1: false positive
    assert row["hd95_n"] == 12 and row["folds"] == [0, 1] and row["seeds"] == [0]
    assert row["train_hours"] == pytest.approx((5400 + 5460) / 2 / 3600)
    assert row["train_hours_total"] == pytest.approx((5400 + 5460) / 3600)
    assert row["compute"] == "GPU" and row["params"] == 5_600_000 and row["peak_memory_mb"] == 560
    beta = table[(table["task"] == "Task91_Beta")].iloc[0]
    assert (beta["cases"], beta["samples"]) == (6, 12)  # two seeds of one fold: each case twice
    assert math.isnan(beta["dice_label_2"])


def test_rows_are_ranked_within_each_task(fake_results: Path) -> None:
    table = leaderboard(load_results(fake_results), metric="hd95")
    for _, rows in table.groupby("task"):
        assert rows["hd95_mean"].is_monotonic_increasing  # lower is better
        assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
    dice_table = leaderboard(load_results(fake_results), metric="dice")
    for _, rows in dice_table.groupby("task"):
        assert rows["dice_mean"].is_monotonic_decreasing


def test_unknown_or_missing_metric(fake_results: Path) -> None:
    results = load_results(fake_results)
    with pytest.raises(UnknownNameError, match="did you mean 'dice'"):
        leaderboard(results, metric="dise")
    with pytest.raises(UsageError, match="nsd"):
        leaderboard(results.drop(columns=["nsd"]), metrics=["dice", "nsd"])
    assert "nsd_mean" not in leaderboard(results.drop(columns=["nsd"]))  # the default set adapts


def _table(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["task", "config", "dice_mean", "hd95_mean"])
    for axis in ("dims", "arch", "encoder", "loss", "aug"):
        frame[axis] = frame["config"]
    return frame


def test_cross_task_ranking_averages_ranks_with_ties() -> None:
    table = _table([
        ("A", "x", 0.9, 2.0), ("A", "y", 0.9, 3.0), ("A", "z", 0.5, 3.0),
        ("B", "x", 0.6, 5.0), ("B", "y", 0.7, 4.0),
    ])
    ranking = cross_task_ranking(table, ["dice", "hd95"]).set_index("config")
    # A: dice ranks x 1.5, y 1.5, z 3; hd95 ranks x 1, y 2.5, z 2.5. B: dice x 2, y 1; hd95 x 2, y 1; z was
    # not run on B: last there (3 for both metrics), not left out of its mean (which would give it 2.75).
    assert ranking.loc["x", "rank[A]"] == pytest.approx(1.25)
    assert ranking.loc["y", "rank[A]"] == pytest.approx(2)
    assert ranking.loc["x", "mean_rank"] == pytest.approx((1.5 + 1 + 2 + 2) / 4)
    assert ranking.loc["y", "mean_rank"] == pytest.approx((1.5 + 2.5 + 1 + 1) / 4)
    assert ranking.loc["z", "mean_rank"] == pytest.approx((3 + 2.5 + 3 + 3) / 4)
    assert math.isnan(ranking.loc["z", "rank[B]"]) and ranking.loc["z", "tasks"] == 1
    assert list(ranking.index) == ["y", "x", "z"]  # best first
    # A configuration run on one task only, best there (w, y), does not top one second on both (x): x 2, w
    # and y (1 + 4) / 2, v 3. Leaving the missing task out, w and y would be 1.
    ranking = cross_task_ranking(_table([("A", "w", 0.95, 1.0), ("A", "x", 0.8, 2.0), ("A", "v", 0.7, 3.0),
                                         ("B", "y", 0.9, 1.0), ("B", "x", 0.8, 2.0), ("B", "v", 0.7, 3.0)]),
                                 ["dice", "hd95"])
    assert ranking["config"].tolist() == ["x", "w", "y", "v"]
    assert ranking["mean_rank"].tolist() == pytest.approx([2.0, 2.5, 2.5, 3.0])


def test_significance_pairs_by_case_fold_and_seed(fake_results: Path) -> None:
    from scipy.stats import wilcoxon

    report = build_report(fake_results)
    pairs = report.pairs[report.pairs["task"] == "Task90_Alpha"].set_index("other")
    assert set(pairs["top"]) == {TOP_ALPHA}
    top = _raw(fake_results, "Task90_Alpha", TOP_ALPHA).groupby(["run", "case"])["dice"].mean()
    other = _raw(fake_results, "Task90_Alpha", "3d-unet-dice-none").groupby(["run", "case"])["dice"].mean()
    # Runs of the two configurations have the same fold/seed suffix order, so the case order lines up.
    ref = wilcoxon(top.to_numpy(), other.to_numpy())
    row = pairs.loc["3d-unet-dice-none"]
    assert row["p"] == pytest.approx(ref.pvalue) and row["n"] == 12
    p_small, p_large = sorted(pairs["p"])  # Holm with two tests: 2 * smaller, then max(that, larger)
    expected = {p_small: min(1.0, 2 * p_small), p_large: max(min(1.0, 2 * p_small), p_large)}
    for _, pair in pairs.iterrows():
        assert pair["p_holm"] == pytest.approx(expected[pair["p"]])
        assert pair["differs"] == (pair["p_holm"] < 0.05)
    friedman = report.friedman.set_index("task")
    assert friedman.loc["Task90_Alpha", "k"] == 3 and friedman.loc["Task90_Alpha", "n"] == 12
    assert "3 configurations" in friedman.loc["Task91_Beta", "note"]


def test_group_effect_and_top_k(fake_results: Path) -> None:
    table = leaderboard(load_results(fake_results))
    groups = group_effect(table, "loss", ["dice"]).set_index(["task", "loss"])
    alpha = table[table["task"] == "Task90_Alpha"]
    assert groups.loc[("Task90_Alpha", "dice_ce"), "configs"] == 2
    assert groups.loc[("Task90_Alpha", "dice_ce"), "dice_mean"] == pytest.approx(
        alpha[alpha["loss"] == "dice_ce"]["dice_mean"].mean())
    with pytest.raises(UsageError, match="cannot group by"):
        group_effect(table, "optimizer", ["dice"])
    top = top_k(table, 1)
    assert top.groupby("task").size().tolist() == [1, 1] and top.iloc[0]["config"] == TOP_ALPHA
    with pytest.raises(UsageError):
        top_k(table, 0)


def test_top_k_keeps_the_configurations_tied_with_the_kth(tmp_path: Path) -> None:
    # unet and segresnet score every case alike (rank 2.5 both): --top 2 kept one of them, picked by name
    from medseg_bench.report import render, report_from_results

    cases = {f"c{i}": {"1": 0.8 + 0.01 * i} for i in range(6)}
    rows = [*_rows("T", "dynunet", {c: {"1": s["1"] + 0.05} for c, s in cases.items()}),
            *_rows("T", "unet", cases), *_rows("T", "segresnet", cases),
            *_rows("T", "swinunetr", {c: {"1": s["1"] - 0.05} for c, s in cases.items()})]
    table = leaderboard(pd.DataFrame(rows), metrics=["dice"])
    assert table["rank"].tolist() == [1, 2.5, 2.5, 4]
    assert top_k(table, 2)["config"].tolist() == table["config"].tolist()[:3]
    assert top_k(table, 3)["config"].tolist() == table["config"].tolist()[:3]
    assert top_k(table, 1)["config"].tolist() == ["3d-dynunet-dice_ce-none"]
    report = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"], top=2)
    assert len(report.table) == 3 and len(report.ranking) == 3
    assert set(report.scores["config"]) == set(report.table["config"])
    assert "and those tied with the 2nd (so a table may hold more)" in render(report, "markdown")


def test_top_k_keeps_the_configurations_tied_with_the_kth_across_tasks(fake_results: Path) -> None:
    from medseg_bench.report import report_from_results
    from tests.report.fake_results import with_tied_ranking

    tied = with_tied_ranking(load_results(fake_results))
    report = report_from_results(tied, fake_results, metrics=["dice"], top=2)
    assert report.ranking["rank"].tolist() == [1, 2.5, 2.5]  # both tied second: neither left out
    assert len(report_from_results(tied, fake_results, metrics=["dice"], top=1).ranking) == 1


def test_report_filters_and_provenance(fake_results: Path) -> None:
    report = build_report(fake_results, task=["Task91_Beta"], top=1)
    assert report.tasks == ["Task91_Beta"] and len(report.table) == 1
    assert report.pairs["other"].tolist() == ["3d-unet-dice_ce-light"]  # not shown, tested all the same
    runs = report.provenance["runs"]
    assert len(runs) == 4  # provenance covers every run behind the full leaderboard of the task
    first = next(iter(runs.values()))
    assert first["git_revision"] == "0123abc" and first["versions"]["torch"] == "2.4.0"
    assert report.provenance["metric_conventions"]["Task91_Beta"] == [
        {"empty_policy": "penalize", "nsd_tolerance_mm": 1.0, "surface": "area"}]
    with pytest.raises(UsageError, match="unknown task 'Task99_None'"):
        build_report(fake_results, task="Task99_None")
    with pytest.raises(ResultsError, match="no finished runs of Task09_Spleen here"):
        build_report(fake_results, task="Task09_Spleen")  # a known task without runs here


def test_a_damaged_run_of_another_task_does_not_stop_a_task_report(fake_results: Path,
                                                                    tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(fake_results, copy)
    damaged = sorted((copy / "Task91_Beta").iterdir())[0] / "summary.json"
    damaged.unlink()
    with pytest.raises(ResultsError, match=f"^{damaged}: missing, but the run finished"):
        build_report(copy)
    assert set(build_report(copy, task="Task90_Alpha").table["task"]) == {"Task90_Alpha"}


def test_regions_stay_out_of_the_case_mean_and_labels_get_names(tmp_path: Path) -> None:
    from medseg_bench.report import render, report_from_results

    rows = []
    for config_loss, offset in (("dice_ce", 0.0), ("dice", -0.1)):
        for case in ("a", "b", "c"):
            for label, dice in (("1", 0.8), ("2", 0.6), ("3", 0.4), ("whole_tumour", 0.95),
                                ("tumour_core", 0.9), ("enhancing_tumour", 0.85)):  # as evaluated
                rows.append({"run_id": f"run-{config_loss}", "case": case, "label": label,
                             "dice": dice + offset, "hd95": 2.0, "ref_empty": False, "pred_empty": False,
                             "task": "Task01_BrainTumour", "dims": "3d", "arch": "unet", "encoder": "",
                             "loss": config_loss, "aug": "none",
                             "fold": 0, "seed": 0, "params": 10, "train_time_s": 36.0, "device": "cpu"})
    report = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice", "hd95"])
    top = report.table.iloc[0]
    assert top["dice_mean"] == pytest.approx((0.8 + 0.6 + 0.4) / 3)  # the region is not a label
    assert top["dice_label_whole_tumour"] == pytest.approx(0.95) and top["compute"] == "CPU"
    labels = [c for c in report.table.columns if c.startswith("dice_label_")]
    assert labels == ["dice_label_1", "dice_label_2", "dice_label_3", "dice_label_whole_tumour",
                      "dice_label_tumour_core", "dice_label_enhancing_tumour"]  # the task's order, not A-Z
    text = render(report, "markdown")
    names = report.label_names["Task01_BrainTumour"]
    for value in ("1", "2", "3"):
        assert f"Dice {names[value]}" in text
    assert "Dice whole_tumour" in text and "CPU-h/run" in text


@pytest.mark.parametrize("values", [[True, False, None], ["True", "False", None], [1.0, 0.0, float("nan")],
                                    [True, False, False]])
def test_empty_flags_of_any_dtype(values: list[object]) -> None:
    from medseg_bench.report.tables import _flag

    assert _flag(pd.DataFrame({"ref_empty": values}), "ref_empty").tolist() == [True, False, False]
    assert _flag(pd.DataFrame({"other": values}), "ref_empty").tolist() == [False, False, False]


def test_a_significant_pair_names_the_side_the_signed_ranks_favour() -> None:
    from medseg_bench.report.significance import significance

    cases = [f"c{i:02d}" for i in range(17)]
    rows = [{"task": "T", "config": "A", "case": c, "fold": 0, "seed": 0,
             "dice": 0.8 + (0.05 if i >= 9 else 0)} for i, c in enumerate(cases)]
    rows += [{"task": "T", "config": "B", "case": c, "fold": 0, "seed": 0, "dice": 0.8} for c in cases]
    table = pd.DataFrame({"task": ["T", "T"], "config": ["A", "B"]})
    pairs, _ = significance(pd.DataFrame(rows), table, "dice")
    assert pairs.iloc[0]["median_diff"] == 0.0 and pairs.iloc[0]["differs"]
    assert pairs.iloc[0]["better"] == "A"  # was B: the sign of a zero median


def test_several_seeds_of_a_case_are_one_case(fake_results: Path) -> None:
    # Task91_Beta's runs are seeds 0 and 1 of fold 0: 6 cases, 12 samples.
    report = build_report(fake_results, task="Task91_Beta")
    row = report.table.iloc[0]
    assert (row["cases"], row["samples"], row["dice_n"]) == (6, 12, 6)
    per_case = report.scores[report.scores["config"] == row["config"]].groupby("case")["dice"].mean()
    assert row["dice_mean"] == pytest.approx(per_case.mean())
    assert row["dice_std"] == pytest.approx(per_case.std(ddof=1))
    assert report.pairs.iloc[0]["n"] == 6


@pytest.mark.parametrize("k", [1, 2])
def test_top_k_shortens_the_tables_not_the_tests_or_their_pairs(fake_results: Path, k: int) -> None:
    # --top 1 dropped every pair (each is the winner against a configuration not shown), --top 2 all but one
    full, top = build_report(fake_results), build_report(fake_results, top=k)
    assert top.friedman.set_index("task").loc["Task90_Alpha", "k"] == 3  # every configuration
    pd.testing.assert_frame_equal(top.pairs, full.pairs)
    assert len(top.pairs) == 3  # Task90_Alpha: 2, Task91_Beta: 1
    scored = set(zip(top.scores["task"], top.scores["config"], strict=True))
    assert scored == set(zip(top.table["task"], top.table["config"], strict=True))


def test_a_report_with_one_configuration_shown_lists_every_pair(fake_results: Path) -> None:
    import json

    from medseg_bench.report import render

    report = build_report(fake_results, top=1)
    markdown = render(report, "markdown")
    assert isinstance(markdown, str) and "Ranking across tasks" in markdown
    assert "| 3d-unet-dice_ce-light vs | n |" in markdown  # Task90_Alpha's pairs table
    for other in report.pairs["other"]:
        assert f"| {other} | " in markdown
    assert "Every pair is listed, also the 2 configuration(s) that --top 1 leaves out" in markdown
    data = json.loads(render(report, "json"))
    assert [(p["task"], p["other"]) for p in data["significance"]["pairs"]] == list(
        zip(report.pairs["task"], report.pairs["other"], strict=True))
    assert len(data["leaderboard"]) == 2  # one row per task


def _rows(task: str, arch: str, cases: dict[str, dict[str, float]], fold: int = 0, seed: int = 0,
          settings: str = '{"epochs": 4}') -> list[dict[str, object]]:
    """load_results rows of one run: `cases` maps a case to its label scores."""
    run_id = f"3d-{arch}-dice_ce-none-f{fold}-s{seed}-{abs(hash((task, settings))) % 10**6:06d}"
    return [{"run_id": run_id, "case": case, "label": label, "dice": dice, "hd95": 2.0,
             "ref_empty": dice != dice, "pred_empty": dice != dice, "task": task, "dims": "3d", "arch": arch,
             "encoder": "", "loss": "dice_ce", "aug": "none", "fold": fold, "seed": seed, "params": 10,
             "train_time_s": 36.0, "device": "cpu", "run_settings": settings}
            for case, labels in cases.items() for label, dice in labels.items()]


def test_configurations_are_compared_on_the_cases_all_of_them_scored(tmp_path: Path) -> None:
    from medseg_bench.report import render, report_from_results

    easy = {f"e{i}": {"1": 0.9 + 0.005 * i} for i in range(8)}
    hard = {f"h{i}": {"1": 0.4} for i in range(8)}
    rows = _rows("T", "unet", easy) + _rows("T", "unet", hard, fold=1)  # two folds, one of them hard
    rows += _rows("T", "segresnet", {c: {"1": s["1"] - 0.02} for c, s in easy.items()})  # fold 0 only
    report = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    table = report.table.set_index("config")
    # unet is better on every case both scored; on its own cases its mean would be 0.66 against 0.90
    assert table.index[0] == "3d-unet-dice_ce-none" and table["rank"].tolist() == [1.0, 2.0]
    assert table.loc["3d-unet-dice_ce-none", "dice_mean"] == pytest.approx(np.mean([s["1"] for s in
                                                                                   easy.values()]))
    assert table["cases"].tolist() == [8, 8] and table["cases_left_out"].tolist() == [8, 0]
    assert report.settings["case_sets"] == {"T": {"shared": 8, "left_out": {"3d-unet-dice_ce-none": 8}}}
    assert set(report.scores["case"]) == set(easy) and report.pairs.iloc[0]["n"] == 8
    assert "over the 8 cases all of them scored (cases left out: 3d-unet-dice_ce-none: 8)" in \
        render(report, "markdown")
    # No case in common: each keeps its own cases, with a warning.
    rows = _rows("T", "unet", easy) + _rows("T", "segresnet", hard, fold=1)
    report = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    assert report.table["cases"].tolist() == [8, 8] and report.table["cases_left_out"].tolist() == [0, 0]
    assert "WARNING: the configurations of this task share no scored case" in render(report, "markdown")
    same = report_from_results(pd.DataFrame(_rows("T", "unet", easy) + _rows("T", "segresnet", easy)),
                               tmp_path, metrics=["dice"])
    assert same.settings["case_sets"] == {} and "scored different cases" not in render(same, "markdown")


def test_one_configuration_is_one_name_across_tasks_and_keeps_its_interval(tmp_path: Path) -> None:
    from medseg_bench.report import report_from_results

    cases = {f"c{i}": {"1": 0.8 + 0.01 * i} for i in range(6)}
    rows = [*_rows("A", "unet", cases), *_rows("A", "dynunet", cases), *_rows("B", "unet", cases),
            *_rows("B", "dynunet", cases)]
    before = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    rows += _rows("B", "unet", cases, settings='{"epochs": 8}')  # a variant in one task only
    after = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    ranking = after.ranking.set_index("config")
    assert "3d-unet-dice_ce-none [epochs=4]" in ranking.index and ranking.loc[
        "3d-unet-dice_ce-none [epochs=4]", "tasks"] == 2  # one row over both tasks, not one per task
    assert set(after.table[after.table["task"] == "A"]["config"]) == {"3d-unet-dice_ce-none [epochs=4]",
                                                                      "3d-dynunet-dice_ce-none"}
    old = before.table.set_index(["task", "config"]).loc[("A", "3d-unet-dice_ce-none")]
    new = after.table.set_index(["task", "config"]).loc[("A", "3d-unet-dice_ce-none [epochs=4]")]
    assert (old["dice_ci_low"], old["dice_ci_high"]) == (new["dice_ci_low"], new["dice_ci_high"])


def test_a_setting_that_differs_between_tasks_splits_the_configuration_unless_tasks_differ_in_it(
        tmp_path: Path) -> None:
    # lr differs only from one task to the other: once one row across tasks (`tasks 2`), now two, each run
    # on one task; the patch a task's plan gives differs from task to task by nature: one row.
    from medseg_bench.report import report_from_results

    cases = {f"c{i}": {"1": 0.8 + 0.01 * i} for i in range(6)}
    rows = [*_rows("A", "unet", cases, settings='{"lr": 0.001, "patch_size": [64, 64, 64]}'),
            *_rows("B", "unet", cases, settings='{"lr": 0.01, "patch_size": [32, 32, 32]}'),
            *_rows("A", "dynunet", cases, settings='{"lr": 0.001, "patch_size": [64, 64, 64]}'),
            *_rows("B", "dynunet", cases, settings='{"lr": 0.001, "patch_size": [32, 32, 32]}')]
    report = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    ranking = report.ranking.set_index("config")
    assert ranking["tasks"].to_dict() == {"3d-dynunet-dice_ce-none": 2, "3d-unet-dice_ce-none [lr=0.001]": 1,
                                          "3d-unet-dice_ce-none [lr=0.01]": 1}
    assert ranking.loc["3d-unet-dice_ce-none [lr=0.01]", "rank[A]"] != ranking.loc[
        "3d-unet-dice_ce-none [lr=0.01]", "rank[A]"]  # NaN: not run on A, so ranked last there
    settings = report.table.set_index(["task", "config"])["settings"]
    assert settings[("B", "3d-unet-dice_ce-none [lr=0.01]")] == {"lr": 0.01, "patch_size": [32, 32, 32]}
    # Within a task the patch still splits a configuration (a plan edit), and is then shown in every task.
    rows += _rows("A", "dynunet", cases, fold=1, settings='{"lr": 0.001, "patch_size": [48, 48, 48]}')
    names = set(report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"]).table["config"])
    assert {n for n in names if "dynunet" in n} == {"3d-dynunet-dice_ce-none [patch_size=64x64x64]",
                                                    "3d-dynunet-dice_ce-none [patch_size=48x48x48]",
                                                    "3d-dynunet-dice_ce-none [patch_size=32x32x32]"}


def test_per_label_columns_count_a_case_once_as_the_mean_does(tmp_path: Path) -> None:
    from medseg_bench.report import report_from_results

    rows = _rows("T", "unet", {"a": {"1": 0.9, "2": 0.9}}, seed=0)
    rows += _rows("T", "unet", {"a": {"1": 0.9, "2": 0.9}}, seed=1)  # case a twice (two seeds)
    rows += _rows("T", "unet", {"b": {"1": 0.5, "2": 0.5}}, fold=1)
    row = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"]).table.iloc[0]
    assert row["dice_mean"] == row["dice_label_1"] == row["dice_label_2"] == pytest.approx(0.7)


def test_configurations_whose_mean_ranks_tie_share_their_rank(fake_results: Path) -> None:
    from tests.report.fake_results import with_tied_ranking

    table = leaderboard(with_tied_ranking(load_results(fake_results)), metrics=["dice"])
    assert table["rank"].tolist() == [1, 2, 3, 1, 2]  # no tie within a task
    ranking = cross_task_ranking(table, ["dice"])
    assert ranking["config"].tolist() == [TOP_ALPHA, "2d-unet.resnet18-dice_ce-none", "3d-unet-dice-none"]
    assert ranking["mean_rank"].tolist() == [1, 2.5, 2.5]
    assert ranking["rank"].tolist() == [1, 2.5, 2.5]  # as the leaderboard's ties; once places 1, 2, 3
    assert ranking.columns.tolist()[:2] == ["config", "rank"]


def test_runs_of_a_task_trained_on_different_data_are_warned_of(tmp_path: Path) -> None:
    """setup.json's data digest (the task's cases' files): runs of one task on another subset or on relabelled
    files were pooled and ranked without a word; runs recording no digest (older ones) are not counted."""
    import json

    from medseg_bench.report import render, report_from_results

    cases = {f"c{i}": {"1": 0.8 + 0.01 * i} for i in range(6)}
    rows = _rows("T", "unet", cases) + _rows("T", "segresnet", cases) + _rows("T", "unet", cases, seed=1)
    ids = list(dict.fromkeys(row["run_id"] for row in rows))

    def record(run_id: str, data: object) -> None:
        (tmp_path / "T" / run_id).mkdir(parents=True, exist_ok=True)
        (tmp_path / "T" / run_id / "setup.json").write_text(json.dumps({"data": data}))

    for run_id in ids:
        record(run_id, {"cases": 12, "digest": "aaaa"})
    same = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    assert same.provenance["data_sets"] == {"T": {"aaaa": {"cases": 12, "runs": 3}}}
    assert "different data sets" not in render(same, "markdown")
    record(ids[1], {"cases": 20, "digest": "bbbb"})
    record(ids[2], None)  # started before setup.json recorded its data
    other = report_from_results(pd.DataFrame(rows), tmp_path, metrics=["dice"])
    assert other.provenance["data_sets"] == {"T": {"aaaa": {"cases": 12, "runs": 1},
                                                   "bbbb": {"cases": 20, "runs": 1}}}
    assert other.provenance["runs"][ids[1]]["data"] == {"cases": 20, "digest": "bbbb"}
    assert other.provenance["runs"][ids[2]]["data"] is None
    assert ("WARNING: runs of this task trained and were scored on 2 different data sets (aaaa (12 cases): "
            "1 run; bbbb (20 cases): 1 run; the digest of") in render(other, "markdown").replace("\n", " ")


def test_a_report_names_each_configuration_once_not_each_row_and_leaves_the_results_as_they_are(
        fake_results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The leaderboard and the per-case scores each copied the results and named every row's configuration
    # (2 x 80 000 names, and two copies, for 1000 runs of 40 cases x 2 labels); a report now does it once,
    # per combination of the axes, on a shallow copy.
    from medseg_bench.report import tables
    from medseg_bench.report.build import report_from_results

    results = load_results(fake_results)
    before = results.copy()
    named: list[tuple[str, ...]] = []
    real = tables.config_name
    monkeypatch.setattr(tables, "config_name", lambda *axes: named.append(axes) or real(*axes))
    report = report_from_results(results, fake_results)
    configs = results[tables.CONFIG_AXES].fillna("").drop_duplicates()
    # once per combination in `with_config`, once per leaderboard row for its interval's key
    assert len(named) == len(configs) + len(report.full_table) < len(results)
    pd.testing.assert_frame_equal(results, before)  # its encoder column not filled in, no column added
    configured = tables.with_config(results)
    assert "config" not in results and tables.with_config(configured) is configured
