"""Is the winner of a task significantly better? Paired Wilcoxon tests (top vs each other configuration, Holm
corrected) and a Friedman test across all configurations, on per-case scores of one metric."""

from __future__ import annotations

from typing import Any

import pandas as pd

from medseg_bench.report.stats import ALPHA, friedman, holm, paired_wilcoxon
from medseg_bench.report.tables import case_means, higher_is_better


def significance(scores: pd.DataFrame, table: pd.DataFrame, metric: str,
                 alpha: float = ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per task: the top configuration of `table` against each other one, and a Friedman test.

    Pairs are cases (a case's samples, one per seed, averaged first). Returns (pairs, friedman): pairs has
    `task`, `top`, `other`, `n`, `median_diff` (top - other), `statistic`, `p`, `p_holm`, `differs`
    (p_holm < alpha), `better` (when they differ: the configuration the signed ranks favour, W+ against W-,
    ties dropped as the test drops them) and `note`; friedman has `task`, `k`, `n`, `statistic`, `p`,
    `differs`, `note`.
    """

    higher = higher_is_better(metric)
    pair_rows: list[dict[str, Any]] = []
    friedman_rows: list[dict[str, Any]] = []
    for task, group in table.groupby("task", sort=False):
        configs = group["config"].tolist()
        task_scores = scores[(scores["task"] == task) & scores["config"].isin(configs)]
        # each configuration's rows, split once (selecting them from the task's rows for each configuration
        # took time that grew with the square of their number)
        of_config = dict(iter(task_scores.groupby("config", sort=False)))
        by_case = {config: case_means(of_config.get(config, task_scores.iloc[:0]), metric)
                   for config in configs}
        top = configs[0]
        top_scores = by_case[top]
        task_pairs = []
        for other in configs[1:]:
            test = paired_wilcoxon(top_scores, by_case[other])
            task_pairs.append({"task": task, "top": top, "other": other, "n": test.n,
                               "median_diff": test.median_diff, "statistic": test.statistic, "p": test.pvalue,
                               "note": test.note, "favours": test.favours})
        adjusted = holm([row["p"] for row in task_pairs])
        for row, p_holm in zip(task_pairs, adjusted, strict=True):
            row["p_holm"] = float(p_holm)
            row["differs"] = bool(p_holm < alpha)
            top_better = (row.pop("favours") > 0) == higher
            row["better"] = (top if top_better else row["other"]) if row["differs"] else ""
        pair_rows += task_pairs
        wide = task_scores.pivot_table(index="case", columns="config", values=metric, aggfunc="mean",
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
