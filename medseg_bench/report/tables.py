"""Leaderboard tables from per-case results: one row per configuration, folds and seeds pooled.

A *sample* is one held-out case scored by one run: (case, fold, seed). Its score for a metric is the mean over
the task's foreground labels (integer label values > 0; region rows get their own columns but stay out of that
mean). Labels whose reference and prediction are both empty score NaN: they are left out of every mean and
counted in `both_empty`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from medseg_bench.errors import UsageError
from medseg_bench.metrics.info import HEADLINE_METRICS
from medseg_bench.registry import choice_hint
from medseg_bench.report.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_ci, rank_values

CONFIG_AXES = ["dims", "arch", "encoder", "loss", "aug"]
CONFIG_COLUMNS = ["task", *CONFIG_AXES]
SAMPLE_COLUMNS = ["case", "fold", "seed"]
DEFAULT_METRICS = HEADLINE_METRICS
GROUP_AXES = ("arch", "loss", "aug", "dims", "encoder")


def config_name(dims: str, arch: str, encoder: str, loss: str, aug: str) -> str:
    """`<dims>-<arch>[.<encoder>]-<loss>-<aug>`, the run id without fold, seed and hash."""
    return f"{dims}-{arch}.{encoder}-{loss}-{aug}" if encoder else f"{dims}-{arch}-{loss}-{aug}"


def higher_is_better(metric: str) -> bool:
    from medseg_bench.metrics import METRICS

    return METRICS.get(metric).higher_is_better


def resolve_metrics(results: pd.DataFrame, metric: str, metrics: list[str] | None) -> tuple[str, list[str]]:
    """The ranking metric's canonical name and the table's metrics (ranking metric first), checked."""
    from medseg_bench.metrics import METRICS

    ranking = METRICS.get(metric).name
    if metrics:
        wanted = [METRICS.get(m).name for m in metrics]
    else:
        wanted = [m for m in DEFAULT_METRICS if m in results]
    chosen = list(dict.fromkeys([ranking, *wanted]))
    missing = [m for m in chosen if m not in results]
    if missing:
        raise UsageError(f"metric(s) {', '.join(missing)} not in these results")
    return ranking, chosen


def with_config(results: pd.DataFrame) -> pd.DataFrame:
    """`load_results`' frame with each row's configuration (`config`, told apart by its settings where runs
    differ in one, `_told_apart`); a frame that has its `config` already is returned as it is, so that a
    report names the configurations of its 80 000 rows once, not once per table, and holds no second copy."""
    if "config" in results:
        return results
    frame = results.copy(deep=False)  # columns are replaced or added, never written into: `results` unchanged
    frame["encoder"] = frame["encoder"].fillna("").astype(str)
    for column in ("fold", "seed"):
        if column not in frame:
            frame[column] = 0
    names: dict[tuple[Any, ...], str] = {}  # a name per combination of the axes, not per row
    frame["config"] = [names[key] if key in names else names.setdefault(key, config_name(*key))
                       for key in zip(*(frame[axis].tolist() for axis in CONFIG_AXES), strict=True)]
    if "run_settings" in frame:
        frame["config"] = _told_apart(frame)
    return frame


def _told_apart(frame: pd.DataFrame) -> pd.Series:
    """Configuration names, with `[setting=value, ...]` where runs of one configuration differ in a setting
    that changes results (epochs, lr, class weights, the patch a plan edit changed, ...): never pooled, in a
    task or across tasks.

    A setting is shown when two runs of the configuration anywhere in the report differ in it (`lr` in one
    task, class weights in another: two rows of the cross-task ranking, each with one task), and then in
    every task the configuration has, so that the same settings are the same name across tasks (one row of
    the ranking). A setting that differs from task to task by nature (`results.TASK_SETTINGS`: the plan's
    patch, target spacing, ...) is shown only where it splits the configuration within some task."""
    import json

    from medseg_bench.results import TASK_SETTINGS

    names = frame["config"].copy()
    # each row's settings as a number: the groups below copy three small columns, not every column (the
    # settings' text, 350 bytes a row, was 55 MB of a report of 1000 runs)
    codes, texts = pd.factorize(frame["run_settings"], use_na_sentinel=False)
    narrow = pd.DataFrame({"config": frame["config"], "task": frame["task"], "settings": codes},
                          index=frame.index)
    for config, group in narrow.groupby("config", sort=False):
        parsed = {v: json.loads(texts[v]) for v in group["settings"].unique()}
        keys = sorted({k for settings in parsed.values() for k in settings})

        def differ(variants: list[dict[str, Any]], key: str) -> bool:
            return len({json.dumps(p.get(key), sort_keys=True) for p in variants}) > 1

        everywhere = list(parsed.values())
        in_tasks = [[parsed[v] for v in in_task["settings"].unique()]
                    for _, in_task in group.groupby("task", sort=False)]
        differing = [k for k in keys if (any(differ(v, k) for v in in_tasks) if k in TASK_SETTINGS
                                         else differ(everywhere, k))]
        if not differing:
            continue
        for variant, settings in parsed.items():
            shown = ", ".join(f"{k}={_setting_text(settings.get(k))}" for k in differing)
            names.loc[group.index[group["settings"] == variant]] = f"{config} [{shown}]"
    return names


def _setting_text(value: Any) -> str:
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _is_foreground_label(labels: pd.Series) -> pd.Series:
    return pd.to_numeric(labels, errors="coerce").fillna(0) > 0


def sample_scores(results: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per (configuration, case, fold, seed): each metric averaged over the foreground labels."""
    frame = with_config(results)
    keys = ["task", "config", *CONFIG_AXES, *SAMPLE_COLUMNS]
    foreground = frame.loc[_is_foreground_label(frame["label"]), [*keys, *metrics]]
    # Runs of one configuration that differ only in other spec fields (epochs, ...) are pooled here too.
    scores = foreground.groupby(keys, dropna=False)[metrics].mean().reset_index()
    return scores.sort_values(keys, kind="stable").reset_index(drop=True)


def case_means(samples: pd.DataFrame, metric: str) -> pd.Series:
    """`metric` per case id: the mean of its samples (one per seed, or per run), NaN-skipping.

    Statistics are over cases, as the report says: several seeds of one case are one case, not several
    independent ones, so they neither narrow an interval nor weigh a case more than another."""
    return samples.groupby("case", sort=True)[metric].mean()


def shared_cases(scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """`scores` (of `sample_scores`) kept, in each task, to the cases that every configuration of the task
    scored, so that configurations are ranked and tested on the same cases.

    Returns them and, for each task whose configurations scored different cases, `{"shared": n,
    "left_out": {config: cases of it left out}}`. Configurations that share no case at all are kept whole
    (`shared` 0): the report then warns that its ranks compare different cases."""
    kept, differ = [], {}
    for task, group in scores.groupby("task", sort=False):
        cases = {config: set(c) for config, c in group.groupby("config", sort=True)["case"]}
        shared = set.intersection(*cases.values())
        left_out = {config: len(c - shared) for config, c in cases.items() if c - shared}
        if left_out:
            differ[str(task)] = {"shared": len(shared), "left_out": left_out}
            if shared:
                group = group[group["case"].isin(shared)]
        kept.append(group)
    return pd.concat(kept).reset_index(drop=True), differ


def _flag(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(False, index=frame.index)
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool)
    # Read back from CSV or parquet with gaps: strings, objects or floats.
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])


# A run's costs that depend on its hardware: a CPU's and a GPU's are not one measure
HARDWARE_BOUND = ("train_hours", "peak_memory_mb", "time_per_epoch_s")


def compute_kinds(values: Any) -> list[str]:
    """The kinds of compute, `CPU` and `GPU`, of a `compute` column's values (`mixed`: both; empty: none)."""
    kinds = {str(c) for c in values if c}
    return sorted(kinds - {"mixed"} | ({"CPU", "GPU"} if "mixed" in kinds else set()))


def _device_kind(devices: pd.Series) -> str:
    return _one_kind({"CPU" if str(d).lower().startswith("cpu") else "GPU" for d in devices.dropna()})


def _one_kind(kinds: set[str]) -> str:
    """The kind of compute of runs or configurations whose kinds are `kinds`: `mixed` for more than one."""
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "")


def _mean_or_nan(values: pd.Series) -> float:
    numbers = pd.to_numeric(values, errors="coerce").dropna()
    return float(numbers.mean()) if len(numbers) else math.nan


def _numbers(runs: pd.DataFrame, column: str) -> pd.Series:
    if column not in runs:
        return pd.Series([], dtype=float)
    return pd.to_numeric(runs[column], errors="coerce").dropna()


def _cost(runs: pd.DataFrame) -> dict[str, Any]:
    """Cost of one configuration from its runs (one row per run): hours are per run and in total. Where its
    runs trained on CPU and on GPU (`mixed`), the costs the hardware bounds are NaN: a mean of CPU- and
    GPU-hours, or the larger of a process's and a GPU's memory, is no measure (until 2026-12-04 they were
    shown)."""
    params, train_s = _numbers(runs, "params"), _numbers(runs, "train_time_s")
    memory, epoch_s = _numbers(runs, "peak_memory_mb"), _numbers(runs, "time_per_epoch_s")
    compute = _device_kind(runs["device"]) if "device" in runs else ""
    cost = {
        "params": int(params.iloc[0]) if len(params) else None,
        "train_hours": float(train_s.mean() / 3600) if len(train_s) else math.nan,
        "train_hours_total": float(train_s.sum() / 3600) if len(train_s) else math.nan,
        "compute": compute,
        "peak_memory_mb": float(memory.max()) if len(memory) else math.nan,
        "time_per_epoch_s": float(epoch_s.mean()) if len(epoch_s) else math.nan,
    }
    if compute == "mixed":
        cost.update(dict.fromkeys([*HARDWARE_BOUND, "train_hours_total"], math.nan))
    return cost


def leaderboard(results: pd.DataFrame, metric: str = "dice", metrics: list[str] | None = None,
                confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED,
                compared: tuple[pd.DataFrame, dict[str, Any]] | None = None) -> pd.DataFrame:
    """One row per (task, configuration), best first by `metric` within each task.

    Columns: the configuration axes and `config`; `rank` (within the task, ties averaged); `runs`, `cases`
    (distinct case ids), `samples` (scored (case, fold, seed)), `empty_ref` and `both_empty` (label
    evaluations with an empty reference / both masks empty); per metric, over cases (a case's samples
    averaged first, `case_means`): `<m>_mean`, `<m>_std`, `<m>_ci_low`, `<m>_ci_high` (percentile bootstrap
    of the mean, resampling cases), `<m>_n` (cases with a score) and
    `<m>_label_<label>` (mean per label or region); cost; `settings` (the runs' result-changing settings,
    `results.run_settings`, or None); `run_ids`. `compared`: `shared_cases(sample_scores(
    results, metrics))` when the caller has it already.
    """
    ranking, chosen = resolve_metrics(results, metric, metrics)
    frame = with_config(results)
    scores, differ = compared if compared is not None else shared_cases(sample_scores(frame, chosen))
    fg_mask = _is_foreground_label(frame["label"])
    rows = []
    runs_at = frame.groupby(["task", "config"], sort=False).indices  # each configuration's rows, by position
    for (task, config), group in scores.groupby(["task", "config"], sort=True):
        runs = frame.take(runs_at[(task, config)])  # a configuration's rows at a time, not all at once
        scored = runs[runs["case"].isin(set(group["case"]))]  # rows of the cases it is compared on
        first = group.iloc[0]
        row: dict[str, Any] = {"task": task, **{a: first[a] for a in CONFIG_AXES}, "config": config}
        row["runs"] = int(runs["run_id"].nunique())
        row["folds"] = sorted(int(f) for f in runs["fold"].dropna().unique())
        row["seeds"] = sorted(int(s) for s in runs["seed"].dropna().unique())
        row["cases"] = int(group["case"].nunique())
        sets = differ.get(task)  # cases it scored that another configuration did not: left out
        row["cases_left_out"] = int(sets["left_out"].get(config, 0)) if sets and sets["shared"] else 0
        row["samples"] = int(len(group))
        fg_runs = scored[fg_mask.loc[scored.index]]
        ref_empty = _flag(fg_runs, "ref_empty")
        row["empty_ref"] = int(ref_empty.sum())
        row["both_empty"] = int((ref_empty & _flag(fg_runs, "pred_empty")).sum())
        # The interval's generator is keyed on the configuration without its `[setting=...]`, which another
        # run's settings can add.
        key = config_name(*(first[a] for a in CONFIG_AXES))
        for m in chosen:
            values = case_means(group, m).to_numpy(float)
            valid = values[~np.isnan(values)]
            row[f"{m}_mean"] = float(valid.mean()) if valid.size else math.nan
            row[f"{m}_std"] = float(valid.std(ddof=1)) if valid.size > 1 else math.nan
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = bootstrap_ci(
                valid, confidence, n_resamples, seed, key=f"{task}/{key}/{m}")
            row[f"{m}_n"] = int(valid.size)
        labelled = frame.loc[scored.index, ["label", "case", *chosen]]
        labelled = labelled.assign(label=labelled["label"].astype(str))
        for m in chosen:  # over cases, as the summary: a case's samples (seeds) averaged first
            per_case = labelled.assign(**{m: pd.to_numeric(labelled[m], errors="coerce")}) \
                .groupby(["label", "case"], sort=False)[m].mean()
            for label, values in per_case.groupby(level="label", sort=False):
                row[f"{m}_label_{label}"] = _mean_or_nan(values)
        row.update(_cost(runs.drop_duplicates("run_id")))
        row["settings"] = _settings_of(runs)
        row["run_ids"] = sorted(runs["run_id"].unique().tolist())
        rows.append(row)
    table = pd.DataFrame(rows)
    table = _order_labels(table, chosen)
    higher = higher_is_better(ranking)
    table = table.sort_values(["task", f"{ranking}_mean"], ascending=[True, not higher], na_position="last",
                              kind="stable").reset_index(drop=True)
    table.insert(table.columns.get_loc("config") + 1, "rank",
                 table.groupby("task")[f"{ranking}_mean"].transform(lambda v: rank_values(v, higher)))
    table.attrs.update(metric=ranking, metrics=chosen, confidence=confidence, n_resamples=n_resamples,
                       seed=seed, case_sets=differ)
    return table


def _settings_of(runs: pd.DataFrame) -> dict[str, Any] | None:
    """The result-changing settings (`results.run_settings`) the runs of one leaderboard row share (runs that
    differ in one are never one row), or None where the results do not record them."""
    import json

    if "run_settings" not in runs:
        return None
    settings: dict[str, Any] = json.loads(runs["run_settings"].iloc[0])
    return settings


def label_columns(table: pd.DataFrame, metric: str) -> list[str]:
    prefix = f"{metric}_label_"
    return [c for c in table.columns if c.startswith(prefix)]


def _label_sort_key(column: str) -> tuple[int, float]:
    """Label values in order, then regions, which keep theirs (a stable sort)."""
    label = column.rsplit("_label_", 1)[1]
    try:
        return (0, float(label))
    except ValueError:
        return (1, 0.0)


def _order_labels(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per-label columns in label order (values, then regions in the order of the task file, as evaluation
    writes them: Task01's whole, core, enhancing tumour), right after their metric's summary."""
    fixed = [c for c in table.columns if "_label_" not in c]
    ordered: list[str] = []
    for column in fixed:
        ordered.append(column)
        for m in metrics:
            if column == f"{m}_n":
                ordered += sorted(label_columns(table, m), key=_label_sort_key)
    return table[ordered]


def top_k(table: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """The first `k` rows of each task (the table is ordered best first), and every row tied with the k-th
    (the same `rank`): a cut never chooses between configurations that tie, so more than `k` may be kept."""
    if k is None:
        return table
    if k < 1:
        raise UsageError(f"--top must be at least 1, got {k}")
    kept = pd.concat([top_ranked(group, k) for _, group in table.groupby("task", sort=False)])
    out = kept.reset_index(drop=True)
    out.attrs.update(table.attrs)
    return out


def top_ranked(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The first `k` rows of `frame` (ordered by its `rank`, best first) and those tied with the k-th."""
    if len(frame) <= k:
        return frame
    return frame[frame["rank"] <= frame["rank"].iloc[k - 1]]


def cross_task_ranking(table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """MSD-style ranking: rank the configurations within each task for each metric (ties averaged), then
    average those ranks. A configuration missing from a task ranks last there (tied with any other missing
    or without a score), as one without a score does: skipping a task is no advantage.

    Columns: `config`, `rank` (by `mean_rank`, 1 = best; configurations whose mean ranks tie share the mean
    of the positions they span, as the leaderboard's `rank`), the axes, `mean_rank`, `tasks` (how many it has
    results on), `rank[<task>]` (the mean of its metric ranks within that task; NaN where it has no results).
    Sorted best first.
    """
    configs = sorted(table["config"].unique())
    long = []
    for task, group in table.groupby("task", sort=True):
        present = group.set_index("config")
        for m in metrics:
            values = present[f"{m}_mean"].reindex(configs).to_numpy(float)  # missing: NaN, ranked last
            ranks = rank_values(values, higher_is_better(m))
            long += [{"task": task, "config": c, "metric": m, "rank": r, "present": c in present.index}
                     for c, r in zip(configs, ranks, strict=True)]
    ranks = pd.DataFrame(long)
    shown = ranks[ranks["present"]]
    per_task = shown.pivot_table(index="config", columns="task", values="rank", aggfunc="mean") \
        .reindex(index=configs, columns=sorted(table["task"].unique()))
    overall = ranks.groupby("config")["rank"].mean()
    axes = table.drop_duplicates("config").set_index("config")[CONFIG_AXES]
    out = axes.loc[overall.index].copy()
    out["mean_rank"] = overall
    out["tasks"] = per_task.notna().sum(axis=1)
    for task in per_task.columns:
        out[f"rank[{task}]"] = per_task[task]
    out = out.reset_index().sort_values(["mean_rank", "config"], kind="stable").reset_index(drop=True)
    out.insert(out.columns.get_loc("config") + 1, "rank", rank_values(out["mean_rank"], False))
    out.attrs["metrics"] = list(metrics)
    return out


def group_effect(table: pd.DataFrame, axis: str, metrics: list[str]) -> pd.DataFrame:
    """Marginal effect of one axis: per task and axis value, the mean over the configurations that have it
    (each configuration weighted equally, whatever else it varies), their spread, and their mean rank; their
    kind of compute (`compute`: `CPU`, `GPU`, `mixed`, or empty where unrecorded) and mean training hours per
    run, NaN for `mixed` (until 2026-12-04 a mean of CPU- and GPU-hours)."""
    if axis not in GROUP_AXES:
        raise UsageError(f"cannot group by '{axis}'; {choice_hint(axis, GROUP_AXES)}")
    ranking = table.attrs.get("metric", metrics[0])
    rows = []
    for (task, level), group in table.groupby(["task", axis], sort=True):
        row: dict[str, Any] = {"task": task, axis: level, "configs": len(group),
                               "mean_rank": float(group["rank"].mean())}
        for m in metrics:
            means = group[f"{m}_mean"].dropna()
            row[f"{m}_mean"] = float(means.mean()) if len(means) else math.nan
            row[f"{m}_std"] = float(means.std(ddof=1)) if len(means) > 1 else math.nan
            row[f"{m}_min"] = float(means.min()) if len(means) else math.nan
            row[f"{m}_max"] = float(means.max()) if len(means) else math.nan
        # CPU- and GPU-hours are not one measure: a group of configurations that trained on both has none
        row["compute"] = _one_kind({str(k) for k in group["compute"] if k} if "compute" in group else set())
        row["train_hours"] = math.nan if row["compute"] == "mixed" else float(group["train_hours"].mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    out = out.sort_values(["task", f"{ranking}_mean"], ascending=[True, not higher_is_better(ranking)],
                          na_position="last", kind="stable").reset_index(drop=True)
    out.attrs.update(table.attrs, group_by=axis)
    return out


def best_rows(table: pd.DataFrame, column: str, higher: bool) -> set[int]:
    """Index labels of the best value of `column` within each task (all of them when tied)."""
    best: set[int] = set()
    for _, rows in table.groupby("task", sort=False):
        best |= best_in(rows, rows, column, higher)
    return best


def best_in(shown: pd.DataFrame, everyone: pd.DataFrame, column: str, higher: bool) -> set[Any]:
    """Index labels of the rows of `shown` that hold the best value of `column` among `everyone` (a task's
    rows before --top: none when its best is not shown; all of them when tied, equal but for the last bits:
    tied)."""
    if column not in everyone or column not in shown:
        return set()
    values = pd.to_numeric(everyone[column], errors="coerce").round(12).dropna()
    if values.empty:
        return set()
    target = values.max() if higher else values.min()
    mine = pd.to_numeric(shown[column], errors="coerce").round(12)
    return set(mine.index[mine == target])
