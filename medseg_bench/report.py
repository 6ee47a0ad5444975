"""Leaderboards from the results store: one row per configuration, folds and seeds pooled.

A case's score is the mean over the task's foreground labels (labels whose reference and prediction are both
empty give NaN and are left out of that mean); rows report mean and std of case scores.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_bench.errors import UsageError

CONFIG_COLUMNS = ["task", "dims", "arch", "encoder", "loss", "aug"]
TABLE_METRICS = ["dice", "jaccard", "hd95"]
FORMATS = ("markdown", "csv", "json")


def leaderboard(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """One row per (task, configuration), best first by `metric` within each task."""
    from medseg_bench.metrics import METRICS

    info = METRICS.get(metric)
    metrics = list(dict.fromkeys([*TABLE_METRICS, info.name]))
    missing = [m for m in metrics if m not in results]
    if missing:
        raise UsageError(f"metric(s) {', '.join(missing)} not in these results")
    foreground = results[pd.to_numeric(results["label"], errors="coerce") > 0]
    per_case = (foreground.groupby([*CONFIG_COLUMNS, "run_id", "case"], dropna=False)[metrics]
                .mean().reset_index())
    rows = []
    for key, group in per_case.groupby(CONFIG_COLUMNS, dropna=False):
        row: dict[str, Any] = dict(zip(CONFIG_COLUMNS, key, strict=True))
        runs = results[results["run_id"].isin(group["run_id"].unique())]
        row["runs"] = int(group["run_id"].nunique())
        row["cases"] = int(len(group))
        for m in metrics:
            row[f"{m}_mean"] = float(np.nanmean(group[m])) if group[m].notna().any() else float("nan")
            row[f"{m}_std"] = float(np.nanstd(group[m])) if group[m].notna().any() else float("nan")
        labels = foreground[foreground["run_id"].isin(group["run_id"].unique())]
        for label, values in labels.groupby("label")[info.name]:
            row[f"{info.name}_label_{label}"] = float(np.nanmean(values))
        cost = runs.drop_duplicates("run_id")
        row["params"] = int(cost["params"].iloc[0]) if cost["params"].notna().any() else None
        row["train_time_s"] = float(cost["train_time_s"].mean()) if cost["train_time_s"].notna().any() else None
        row["run_ids"] = sorted(group["run_id"].unique().tolist())
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table.sort_values(["task", f"{info.name}_mean"], ascending=[True, not info.higher_is_better],
                              na_position="last", kind="stable").reset_index(drop=True)
    table.attrs["metric"] = info.name
    return table


def _config_name(row: pd.Series) -> str:
    arch = f"{row['arch']} ({row['encoder']})" if row["encoder"] else row["arch"]
    return f"{row['dims']} {arch}"


def _display_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    metric = table.attrs.get("metric", "dice")
    label_cols = [c for c in table.columns if c.startswith(f"{metric}_label_")]
    headers = ["task", "configuration", "loss", "aug", "runs", "cases", "Dice", "Jaccard", "HD95 (mm)",
               *[f"{metric} label {c.rsplit('_', 1)[-1]}" for c in label_cols], "params (M)", "train (min)"]
    rows = []
    for _, row in table.iterrows():
        rows.append([
            row["task"], _config_name(row), row["loss"], row["aug"], str(row["runs"]), str(row["cases"]),
            f"{row['dice_mean']:.4f} ± {row['dice_std']:.4f}",
            f"{row['jaccard_mean']:.4f} ± {row['jaccard_std']:.4f}",
            f"{row['hd95_mean']:.2f} ± {row['hd95_std']:.2f}",
            *[f"{row[c]:.4f}" for c in label_cols],
            f"{row['params'] / 1e6:.2f}" if pd.notna(row["params"]) else "",
            f"{row['train_time_s'] / 60:.1f}" if pd.notna(row["train_time_s"]) else "",
        ])
    return headers, rows


def to_markdown(table: pd.DataFrame) -> str:
    headers, rows = _display_rows(table)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    flat = table.copy()
    flat["run_ids"] = flat["run_ids"].map(";".join)
    return flat.to_csv(index=False)


def to_json(table: pd.DataFrame) -> str:
    records = json.loads(table.to_json(orient="records"))
    return json.dumps({"metric": table.attrs.get("metric", "dice"), "rows": records}, indent=2) + "\n"


def render(table: pd.DataFrame, fmt: str) -> str:
    renderers = {"markdown": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in renderers:
        raise UsageError(f"unknown format '{fmt}'; choose from {', '.join(FORMATS)}")
    return renderers[fmt](table)


def print_rich(table: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    headers, rows = _display_rows(table)
    out = Table(title=f"leaderboard (by {table.attrs.get('metric', 'dice')}, best first)")
    for h in headers:
        out.add_column(h, overflow="fold")
    for i, r in enumerate(rows):
        out.add_row(*r, style="bold green" if i == 0 else None)
    Console().print(out)


def build_report(results_dir: Path, metric: str = "dice", task: str | None = None) -> pd.DataFrame:
    from medseg_bench.results import load_results

    results = load_results(results_dir)
    if task is not None:
        results = results[results["task"] == task]
        if results.empty:
            raise UsageError(f"no finished runs for task '{task}' in {results_dir}")
    return leaderboard(results, metric)
