"""Is the winner of a task significantly better? Paired Wilcoxon tests (top vs each other configuration, Holm
corrected) and a Friedman test across all configurations, on per-sample scores of one metric."""

from __future__ import annotations

from typing import Any

import pandas as pd

from medseg_bench.report.stats import ALPHA, friedman, holm, paired_wilcoxon
from medseg_bench.report.tables import SAMPLE_COLUMNS, higher_is_better


def _by_sample(scores: pd.DataFrame, config: str, metric: str) -> pd.Series:
    rows = scores[scores["config"] == config]
    return rows.set_index(SAMPLE_COLUMNS)[metric]


def significance(scores: pd.DataFrame, table: pd.DataFrame, metric: str,
                 alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per task: the top configuration of `table` against each other one, and a Friedman test.

    Samples pair by (case, fold, seed). Returns (pairs, friedman): pairs has `task`, `top`, `other`, `n`,
    `median_diff` (top - other), `statistic`, `p`, `p_holm`, `differs` (p_holm < alpha), `better` (the
    configuration with the better median score when they differ) and `note`; friedman has `task`, `k`, `n`,
    `statistic`, `p`, `differs`, `note`.
    """
    higher = higher_is_better(metric)
    pair_rows: list[dict[str, Any]] = []
    friedman_rows: list[dict[str, Any]] = []
    for task, group in table.groupby("task", sort=False):
        configs = group["config"].tolist()
        task_scores = scores[(scores["task"] == task) & scores["config"].isin(configs)]
        top = configs[0]
        top_scores = _by_sample(task_scores, top, metric)
        task_pairs = []
        for other in configs[1:]:
            test = paired_wilcoxon(top_scores, _by_sample(task_scores, other, metric))
            task_pairs.append({"task": task, "top": top, "other": other, "n": test.n,
                               "median_diff": test.median_diff, "statistic": test.statistic, "p": test.pvalue,
                               "note": test.note})
        adjusted = holm([row["p"] for row in task_pairs])
        for row, p_holm in zip(task_pairs, adjusted, strict=True):
            row["p_holm"] = float(p_holm)
            row["differs"] = bool(p_holm < alpha)
            top_better = (row["median_diff"] > 0) == higher
            row["better"] = (top if top_better else row["other"]) if row["differs"] else ""
        pair_rows += task_pairs
        wide = task_scores.pivot_table(index=SAMPLE_COLUMNS, columns="config", values=metric, aggfunc="mean",
                                       dropna=False)
        wide = wide.reindex(columns=configs)
        overall = friedman(wide)
        friedman_rows.append({"task": task, "k": overall.k, "n": overall.n, "statistic": overall.statistic,
                              "p": overall.pvalue, "differs": bool(overall.pvalue < alpha),
                              "note": overall.note})
    pair_columns = ["task", "top", "other", "n", "median_diff", "statistic", "p", "p_holm", "differs",
                    "better", "note"]
    pairs = pd.DataFrame(pair_rows, columns=pair_columns)
    friedman_table = pd.DataFrame(friedman_rows,
                                  columns=["task", "k", "n", "statistic", "p", "differs", "note"])
    pairs.attrs.update(metric=metric, alpha=alpha)
    friedman_table.attrs.update(metric=metric, alpha=alpha)
    return pairs, friedman_table
