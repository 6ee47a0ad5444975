"""Everything a report shows, computed once: tables, ranking, tests, and where every number came from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medseg_bench.checks import is_whole
from medseg_bench.errors import ResultsError, UsageError
from medseg_bench.files import load_json_object
from medseg_bench.report.significance import significance
from medseg_bench.report.stats import ALPHA, DEFAULT_RESAMPLES, DEFAULT_SEED
from medseg_bench.report.tables import (
    cross_task_ranking,
    group_effect,
    leaderboard,
    resolve_metrics,
    sample_scores,
    shared_cases,
    top_k,
    top_ranked,
    with_config,
)
from medseg_bench.results import (
    SETUP_NAME,
    finished_runs,
    load_results,
    no_finished_runs,
    require_results_dir,
    warn_on_stderr,
)
from medseg_bench.run_folder import read_json


@dataclass
class Report:
    """A leaderboard and what goes with it. `table` is best first within each task (after `--top`); `pairs`
    holds the winner of each task against every other configuration, also those `--top` leaves out."""

    metric: str
    metrics: list[str]
    table: pd.DataFrame
    scores: pd.DataFrame  # per (configuration, case, fold, seed) scores of every metric
    ranking: pd.DataFrame
    pairs: pd.DataFrame
    friedman: pd.DataFrame
    groups: pd.DataFrame | None
    provenance: dict[str, Any]
    settings: dict[str, Any]
    results_dir: Path
    label_names: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> label value -> name
    # task -> config -> metric -> [runs whose metrics.csv lacks its column, runs]: see `absent_metrics`
    absent_metrics: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)
    # `table` and `ranking` before `--top` (None: the same): what is best in a column is decided over them
    full_table: pd.DataFrame | None = None
    full_ranking: pd.DataFrame | None = None

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(self.table["task"]))


def provenance(results_dir: Path, table: pd.DataFrame) -> dict[str, Any]:
    """Per run: spec axes, fold, seed, package versions, git revision (with a dirty checkout's diff, or where
    pip installed the code from), device and metric settings; per task: the distinct metric settings (more
    than one means its numbers are not comparable)."""
    from medseg_bench import __version__
    from medseg_bench.metrics import METRICS

    runs: dict[str, Any] = {}
    conventions: dict[str, list[dict[str, Any]]] = {}
    data_sets: dict[str, dict[str, dict[str, Any]]] = {}
    for _, row in table.iterrows():
        for run_id in row["run_ids"]:
            folder = results_dir / row["task"] / run_id
            spec, summary = (read_json(folder / n) for n in ("spec.json", "summary.json"))  # checked as read
            env, setup = _record(folder / "env.json"), _record(folder / SETUP_NAME)
            settings = summary.get("metric_settings", {})
            data = _data_record(setup)
            if data is not None:
                seen_data = data_sets.setdefault(row["task"], {}).setdefault(
                    data["digest"], {"cases": data["cases"], "runs": 0})
                seen_data["runs"] += 1
            runs[run_id] = {
                "task": row["task"], "config": row["config"], "fold": spec.get("fold"),
                "seed": spec.get("seed"), "epochs": spec.get("epochs"),
                "versions": _object_or_none(env, "versions") or {},
                "git_revision": env.get("git_revision"), "source_diff": _object_or_none(env, "source_diff"),
                "installed_from": _object_or_none(env, "installed_from"), "python": env.get("python"),
                "device": summary.get("cost", {}).get("device"), "gpu": env.get("gpu"),
                "cpu": env.get("cpu"), "cpu_capability": env.get("cpu_capability"),
                "isa_limits": _object_or_none(env, "isa_limits") or {},
                "torch_threads": env.get("torch_threads"),
                "metric_settings": settings, "data": data,
            }
            seen = conventions.setdefault(row["task"], [])
            if settings not in seen:
                seen.append(settings)
    return {
        "generated_by": {"medseg_bench": __version__, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                  time.gmtime())},
        "results_dir": str(results_dir),
        "metric_conventions": conventions,
        "data_sets": {task: dict(sorted(sets.items())) for task, sets in sorted(data_sets.items())},
        "metrics": {m: {"higher_is_better": METRICS.get(m).higher_is_better, "unit": METRICS.get(m).unit,
                        "description": METRICS.get(m).description}
                    for m in table.attrs.get("metrics", [])},
        "runs": dict(sorted(runs.items())),
    }


# What the report leaves out of a run's provenance when its file cannot be read.
RECORDED = {"env.json": "its package versions, git revision and machine",
            SETUP_NAME: "the data it trained on"}


def _record(path: Path) -> dict[str, Any]:
    """A run's env.json or setup.json, or {} with a warning naming it where it is there but damaged (an empty
    or edited file emptied the report's provenance without a word: versions {}, git revision null); {} without
    one where it is absent (setup.json: runs started before 2026-12-02)."""
    if not path.exists():
        return {}
    data, why = load_json_object(path)
    if data is None:
        warn_on_stderr(f"{path}: {why}: {RECORDED[path.name]} left out of the report's provenance")
        return {}
    return data


def _object_or_none(record: dict[str, Any], key: str) -> dict[str, Any] | None:
    """`record[key]` where it is a JSON object, else None (absent from runs made before it was recorded, or
    an env.json edited or damaged since: `"versions": [1]` stopped an HTML report with an AttributeError)."""
    value = record.get(key)
    return value if isinstance(value, dict) else None


def _data_record(setup: dict[str, Any]) -> dict[str, Any] | None:
    """What a run's setup.json says of the data it trained and was scored on (`{"cases", "digest"}`), or None
    where it says nothing usable (runs started before 2026-12-02, a cache recording no md5s)."""
    data = setup.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("digest"), str):
        return None
    cases = data.get("cases")
    return {"cases": cases if is_whole(cases) else None, "digest": data["digest"]}


def absent_metrics(absent_columns: dict[str, list[str]], table: pd.DataFrame,
                   metrics: list[str]) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Per task, configuration and metric of `metrics`: `[runs whose metrics.csv has no column for it, runs]`,
    for the configurations with any such run; `absent_columns` is `load_results`' `attrs["absent_metrics"]`.

    A run scored before a metric was added lacks its column: its scores of it are NaN in `load_results`, as
    those of a label with both masks empty, so the configuration shows `–` for it and ranks last on it (or,
    where only some of its runs lack it, is scored from the others)."""
    absent: dict[str, dict[str, dict[str, list[int]]]] = {}
    for _, row in table.iterrows():
        lacking = dict.fromkeys(metrics, 0)
        for run_id in row["run_ids"]:
            for m in absent_columns.get(f"{row['task']}/{run_id}", []):
                if m in lacking:
                    lacking[m] += 1
        found = {m: [n, len(row["run_ids"])] for m, n in lacking.items() if n}
        if found:
            absent.setdefault(row["task"], {})[row["config"]] = found
    return absent


def _label_names(tasks: list[str]) -> dict[str, dict[str, str]]:
    """Each task's label names, from the catalog; a task no longer in it shows its labels as values. A task
    file the catalog cannot load is its error, as for every command that reads the catalog (it was taken for
    every task missing: each table of the report headed by label values, exit 0)."""
    from medseg_bench.data.catalog import task_registry

    catalog = task_registry()
    return {task: {str(k): v for k, v in catalog.get(task).labels.items()}
            for task in tasks if task in catalog}


def report_from_results(results: pd.DataFrame, results_dir: Path, metric: str = "dice",
                        metrics: list[str] | None = None, group_by: str | None = None, top: int | None = None,
                        confidence: float = 0.95, n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = DEFAULT_SEED, alpha: float = ALPHA) -> Report:
    """Build a Report from `load_results()`'s frame; `results_dir` is where the run folders are."""
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be between 0 and 1, got {confidence}")
    ranking_metric, chosen = resolve_metrics(results, metric, metrics)
    configured = with_config(results)  # once for both tables
    compared = shared_cases(sample_scores(configured, chosen))  # the cases the leaderboard compares
    full = leaderboard(configured, ranking_metric, chosen, confidence, n_resamples, seed, compared)
    del configured
    ranking = cross_task_ranking(full, chosen)
    places = ranking.set_index("config")  # each row's configuration's place across tasks: in CSV and parquet
    full["cross_task_rank"] = full["config"].map(places["rank"])
    full["cross_task_mean_rank"] = full["config"].map(places["mean_rank"])
    table = top_k(full, top)
    scores = compared[0]
    # Tests over every configuration, and every pair kept: --top shortens the leaderboard and the ranking,
    # not the Holm family, the Friedman test or the list of pairs (each is the shown winner against another).
    pairs, friedman_table = significance(scores, full, ranking_metric, alpha)
    shown = pd.MultiIndex.from_frame(table[["task", "config"]])
    scores = scores[pd.MultiIndex.from_frame(scores[["task", "config"]]).isin(shown)].reset_index(drop=True)
    groups = group_effect(full, group_by, chosen) if group_by else None
    every = ranking
    if top is not None:  # and the configurations tied with the top-th
        ranking = top_ranked(ranking, top).reset_index(drop=True)
    settings = {"metric": ranking_metric, "metrics": chosen, "confidence": confidence,
                "bootstrap_resamples": n_resamples, "bootstrap_seed": seed, "alpha": alpha,
                "group_by": group_by, "top": top, "case_sets": full.attrs["case_sets"]}
    return Report(ranking_metric, chosen, table, scores, ranking, pairs, friedman_table, groups,
                  provenance(results_dir, full), settings, results_dir,
                  _label_names(list(full["task"].unique())),
                  absent_metrics(results.attrs.get("absent_metrics", {}), full, chosen),
                  full_table=full, full_ranking=every)


def _task_name(name: str, have: set[str]) -> str:
    """`name` as the catalog spells it (an unknown one: did-you-mean, exit 2), unless results carry it as is
    (a task whose file has gone since still reports)."""
    if name in have:
        return name
    from medseg_bench.data.catalog import task_registry

    return task_registry().canonical(name)


def build_report(results_dir: Path, metric: str = "dice", task: list[str] | str | None = None,
                 **options: Any) -> Report:
    """Load the finished runs under `results_dir` (only those of `task`, when given: a damaged run of another
    task does not stop it) and build their Report."""
    require_results_dir(results_dir)
    if not task:
        return report_from_results(load_results(results_dir), results_dir, metric, **options)
    have = {folder.parent.name for folder in finished_runs(results_dir)}
    wanted = [_task_name(t, have) for t in ([task] if isinstance(task, str) else list(task))]
    unknown = [t for t in wanted if t not in have]
    if unknown:  # a known task without runs here: nothing to report (as `status --task` says it)
        raise ResultsError(f"{no_finished_runs(results_dir, unknown[0])} "
                           f"(tasks with results: {', '.join(sorted(have)) or 'none'})")
    return report_from_results(load_results(results_dir, tasks=wanted), results_dir, metric, **options)
