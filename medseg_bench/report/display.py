"""What a human-readable report shows, independent of the format: titled sections of notes and tables whose
cells are text plus a `best` flag. Markdown, LaTeX, HTML and the terminal each render these."""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from medseg_bench.report.build import Report
from medseg_bench.report.tables import (
    HARDWARE_BOUND,
    best_in,
    best_rows,
    compute_kinds,
    higher_is_better,
    label_columns,
)


@dataclass(frozen=True)
class Cell:
    text: str
    best: bool = False


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]]
    align: list[str]  # "l" or "r" per column
    caption: str = ""


@dataclass
class Section:
    """A heading, then notes (plain text) and tables in reading order."""

    title: str
    level: int = 2
    items: list[str | Table] = field(default_factory=list)
    task: str | None = None  # the task this section is about (its plots go with it)


def as_written(text: str) -> str:
    """A name as it is: what `sections` puts in its notes by default (markdown escapes them, `md_name`)."""
    return text


def metric_title(metric: str, unit: bool = True) -> str:
    """The metric's title in a report, with its unit in parentheses (`unit=False`: without)."""
    from medseg_bench.metrics import METRICS

    info = METRICS.get(metric)
    return f"{info.title} ({info.unit})" if unit and info.unit else info.title


def _digits(metric: str) -> int:
    from medseg_bench.metrics import METRICS

    return 2 if METRICS.get(metric).unit else 4


def _num(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}f}"  # type: ignore[arg-type]


def _significant(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.{digits}g}"  # type: ignore[arg-type]


def confidence_text(level: float) -> str:
    """0.95 -> '95%', 0.975 -> '97.5%', 0.999 -> '99.9%' (a whole percent would show 98% and 100%)."""
    return f"{round(level * 100, 6):g}%"


def mean_rank_text(value: float) -> str:
    """A mean rank to two places, halves rounded up: mean ranks are fractions with small denominators, so
    exact halves are common and Python's rounding (half to even, 2.125 -> 2.12, 2.375 -> 2.38) read as
    inconsistent; 2.125 -> 2.13."""
    if value is None or math.isnan(value):
        return "–"
    exact = decimal.Decimal(repr(round(float(value), 9)))
    return str(exact.quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP))


def format_rank(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f}" if float(value).is_integer() else mean_rank_text(value).rstrip("0")


def _summary_cell(row: pd.Series, metric: str, compact: bool = False) -> str:
    digits = _digits(metric)
    mean = row[f"{metric}_mean"]
    if math.isnan(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if not math.isnan(row[f"{metric}_std"]):
        text += f" ± {row[f'{metric}_std']:.{digits}f}"
    interval = f"[{_num(row[f'{metric}_ci_low'], digits)}, {_num(row[f'{metric}_ci_high'], digits)}]"
    return text + ("\n" if compact else " ") + interval


def _label_title(report: Report, task: str, column: str) -> str:
    label = column.rsplit("_label_", 1)[1]
    return report.label_names.get(task, {}).get(label, label)


def task_table(report: Report, task: str, compact: bool = False, part: str = "all") -> Table:
    """One row per configuration of `task`, best first; bold (best) per metric and cost column.

    `compact` (the terminal): no per-label columns, the interval on a second line of its cell. `part`:
    "all", "quality" (no cost columns) or "cost" (only cost columns).
    """
    rows = report.table[report.table["task"] == task]
    show_samples = bool((rows["samples"] != rows["cases"]).any()) and part != "cost"
    compute = "/".join(compute_kinds(rows["compute"])) or "compute"
    counts = [] if part == "cost" else ["runs", "cases", *(["samples"] if show_samples else []), "empty"]
    headers = ["#", "configuration", *counts]
    align = ["r", "l", *["r"] * len(counts)]
    columns: list[tuple[str, str, bool, object]] = []  # (header, column, higher_is_better, formatter)
    for m in report.metrics if part != "cost" else []:
        higher = higher_is_better(m)
        columns.append((metric_title(m), f"{m}_mean", higher, lambda r, m=m: _summary_cell(r, m, compact)))
        for col in [] if compact else label_columns(rows, m):
            if rows[col].notna().any():
                title = f"{metric_title(m, unit=False)} {_label_title(report, task, col)}"
                columns.append((title, col, higher, lambda r, col=col, m=m: _num(r[col], _digits(m))))
    full = report.full_table if report.full_table is not None else report.table
    everyone = full[full["task"] == task]
    # CPU and GPU rows side by side: their hours, memory and epoch times are not one measure; each such cell
    # says its kind, and none is bold (a CPU-hour was bolded over GPU-hours)
    mixed = len(compute_kinds(everyone["compute"])) > 1

    def kind(r: pd.Series, text: str) -> str:
        return with_kind(text, r["compute"], mixed)

    columns += [] if part == "quality" else [
        ("params (M)", "params", False, lambda r: _num(r["params"] / 1e6 if r["params"] else None, 2)),
        (f"{compute}-h/run", "train_hours", False, lambda r: kind(r, _significant(r["train_hours"]))),
        ("peak mem (MiB)", "peak_memory_mb", False, lambda r: kind(r, _num(r["peak_memory_mb"], 0))),
        ("s/epoch", "time_per_epoch_s", False, lambda r: kind(r, _num(r["time_per_epoch_s"], 1))),
    ]
    # Best over every configuration of the task, also those --top leaves out: a column whose best is not
    # shown has no bold cell.
    best = {column: set() if mixed and column in HARDWARE_BOUND else best_in(rows, everyone, column, higher)
            for _, column, higher, _ in columns}
    out_rows = []
    for idx, row in rows.iterrows():
        cells = [Cell(format_rank(row["rank"])), Cell(row["config"])]
        if part != "cost":
            cells += [Cell(str(row["runs"])), Cell(str(row["cases"]))]
            cells += [Cell(str(row["samples"]))] if show_samples else []
            cells.append(Cell(f"{row['empty_ref']} ({row['both_empty']})"))
        cells += [Cell(fmt(row), idx in best[column]) for _, column, _, fmt in columns]  # type: ignore[operator]
        out_rows.append(cells)
    headers += [h for h, _, _, _ in columns]
    align += ["r"] * len(columns)
    return Table(headers, out_rows, align)


# Cost columns whose values depend on the hardware a run trained on (CPU or GPU): compared within a kind only


def _p(value: float) -> str:
    if math.isnan(value):
        return "–"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def _p_relation(value: float) -> str:
    """`= 0.0123` or `< 0.0001`, for prose."""
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def _unlisted_note(report: Report, task: str, pairs: pd.DataFrame) -> str:
    """A sentence on the pairs whose other configuration `--top` leaves out of the task's table (listed all
    the same: each is the shown winner's test), or "" when there are none."""
    listed = set(report.table.loc[report.table["task"] == task, "config"])
    unlisted = int((~pairs["other"].isin(listed)).sum())
    if not unlisted:
        return ""
    top = report.settings["top"]
    return (f" Every pair is listed, also the {unlisted} configuration(s) that --top {top} leaves out of the "
            "table above.")


def significance_section(report: Report, task: str,
                         name: Callable[[str], str] = as_written) -> tuple[list[str], Table | None]:
    """Notes (configuration names in them through `name`) and the table of the winner's paired tests."""
    metric = report.metric
    alpha = report.settings["alpha"]
    notes = []
    friedman = report.friedman[report.friedman["task"] == task]
    if len(friedman):
        f = friedman.iloc[0]
        if f["note"]:
            k, n = int(f["k"]), int(f["n"])
            counts = f"{k} configuration{'' if k == 1 else 's'}, {n} complete case{'' if n == 1 else 's'}"
            notes.append(f"Friedman test ({metric_title(metric)}): not run, {f['note']} ({counts}).")
        else:
            verdict = "the configurations differ" if f["differs"] else "no difference shown"
            p_text = _p_relation(f["p"])
            notes.append(f"Friedman test ({metric_title(metric)}) across {f['k']} configurations on the "
                         f"{f['n']} cases all of them have: χ² = {f['statistic']:.2f}, p {p_text}: "
                         f"{verdict} at α = {alpha}.")
    pairs = report.pairs[report.pairs["task"] == task]
    if pairs.empty:
        return notes, None
    top = pairs.iloc[0]["top"]
    differing = pairs[pairs["differs"]]["other"].tolist()
    notes.append(f"Paired Wilcoxon signed-rank tests of {name(top)} against each other configuration on "
                 f"per-case {metric_title(metric)} (paired by case, its seeds averaged; Holm-corrected): "
                 + (f"differs at α = {alpha} from {', '.join(map(name, differing))}." if differing
                    else f"no pair differs at α = {alpha}.") + _unlisted_note(report, task, pairs))
    rows = []
    for _, pair in pairs.iterrows():
        verdict = f"yes, {pair['better']} better" if pair["differs"] else "no"
        median_diff = _num(pair["median_diff"], _digits(metric))
        rows.append([Cell(pair["other"]), Cell(str(pair["n"])), Cell(median_diff),
                     Cell(_num(pair["statistic"], 1)), Cell(_p(pair["p"])), Cell(_p(pair["p_holm"])),
                     Cell(verdict, bool(pair["differs"]))])
    headers = [f"{top} vs", "n", "median Δ", "W", "p", "p (Holm)", f"differs at {alpha}"]
    return notes, Table(headers, rows, ["l", "r", "r", "r", "r", "r", "l"])


def ranking_table(report: Report) -> Table:
    ranking = report.ranking
    task_columns = [c for c in ranking.columns if c.startswith("rank[")]
    headers = ["#", "configuration", "mean rank", "tasks", *[c[5:-1] for c in task_columns]]
    # Bold: the lowest of each column, ties all bold. A task's column holds mean ranks over metrics, so its
    # best can be 1.25, or 1.5 for two configurations each first on half the metrics: not always 1.
    # Over every configuration, also those --top leaves out: a task's best may not be listed (no bold then).
    everyone = report.full_ranking if report.full_ranking is not None else ranking
    best = {c: best_in(ranking, everyone, c, False) for c in ["mean_rank", *task_columns]}
    rows = []
    for idx, row in ranking.iterrows():
        rows.append([Cell(format_rank(row["rank"])), Cell(row["config"]),
                     Cell(mean_rank_text(row["mean_rank"]), idx in best["mean_rank"]),
                     Cell(str(row["tasks"])),
                     *[Cell(format_rank(row[c]), idx in best[c]) for c in task_columns]])
    return Table(headers, rows, ["r", "l", "r", "r", *["r"] * len(task_columns)])


def with_kind(text: str, kind: object, several: bool) -> str:
    """A hardware-bound cost's cell: where a task's rows trained on `several` kinds of compute, with its
    row's kind (`0.713 CPU`), but for a cell without a number."""
    return f"{text} {kind}" if several and kind and text != "–" else text


def group_table(report: Report, task: str) -> Table:
    groups = report.groups
    assert groups is not None
    axis = groups.attrs["group_by"]
    rows_frame = groups[groups["task"] == task]
    # The kinds of the groups themselves (of every configuration, as their numbers: the header took the kind
    # of those --top shows); where they differ each cell says its kind, and a group that trained on both
    # shows – (a CPU-hour and a GPU-hour are not one measure: their mean was shown)
    shown_kinds = compute_kinds(rows_frame.get("compute", []))
    mixed = len(shown_kinds) > 1
    headers = [axis, "configs", "mean rank", *[metric_title(m) for m in report.metrics],
               f"{'/'.join(shown_kinds) or 'compute'}-h/run"]  # the leaderboard's (it said "train h/run")
    best = {m: best_rows(rows_frame, f"{m}_mean", higher_is_better(m)) for m in report.metrics}
    rows = []
    for idx, row in rows_frame.iterrows():
        cells = [Cell(str(row[axis]) or "(none)"), Cell(str(row["configs"])),
                 Cell(mean_rank_text(row["mean_rank"]))]
        for m in report.metrics:
            d = _digits(m)
            text = _num(row[f"{m}_mean"], d)
            if not math.isnan(row[f"{m}_std"]):
                text += f" ± {row[f'{m}_std']:.{d}f} ({_num(row[f'{m}_min'], d)}–{_num(row[f'{m}_max'], d)})"
            cells.append(Cell(text, idx in best[m]))
        cells.append(Cell(with_kind(_significant(row["train_hours"]), row.get("compute"), mixed)))
        rows.append(cells)
    return Table(headers, rows, ["l", "r", "r", *["r"] * (len(report.metrics) + 1)])


def settings_text(settings: dict[str, Any]) -> str:
    """A run's metric settings on one line: `empty_policy=penalize, ..., regions=(whole: 1+2+3; core: 2+3)`
    (`regions` as `run.evaluate_fold` records them)."""
    def shown(value: object) -> str:
        if isinstance(value, list) and all(isinstance(r, dict) and isinstance(r.get("labels"), list)
                                           for r in value):  # regions: [{"name": ..., "labels": [...]}]
            return "(" + "; ".join(f"{r.get('name')}: {'+'.join(map(str, r['labels']))}" for r in value) + ")"
        return str(value)

    return ", ".join(f"{k}={shown(v)}" for k, v in sorted(settings.items()))


def _settings_note(report: Report, task: str, name: Callable[[str], str]) -> str:
    conventions = report.provenance["metric_conventions"].get(task, [])
    if not conventions:
        return "Metric settings: not recorded."
    parts = [name(settings_text(c)) or "not recorded" for c in conventions]  # region names among them
    if len(parts) == 1:
        return f"Metric settings: {parts[0]}."
    return "WARNING: runs of this task used different metric settings (" + "; ".join(parts) + "): their " \
           "numbers are not comparable."


def _data_note(report: Report, task: str, name: Callable[[str], str]) -> str | None:
    """A warning when the task's runs trained and were scored on different data (setup.json's digests of
    their cases' files differ: another subset of the task, a corrected label, another release)."""
    sets = report.provenance.get("data_sets", {}).get(task, {})
    if len(sets) < 2:
        return None
    listed = "; ".join(f"{name(digest)} ({n['cases']} case{'s' if n['cases'] != 1 else ''}): "
                       f"{n['runs']} run{'s' if n['runs'] != 1 else ''}"
                       for digest, n in sets.items())
    return (f"WARNING: runs of this task trained and were scored on {len(sets)} different data sets "
            f"({listed}; the digest of their cases' image and label files, setup.json's data): their "
            "numbers are not comparable; each run's is in --format json's provenance.runs.")


def _case_set_note(report: Report, task: str, name: Callable[[str], str]) -> str | None:
    sets = report.settings.get("case_sets", {}).get(task)
    if not sets:
        return None
    left = "; ".join(f"{name(config)}: {n}" for config, n in sets["left_out"].items())
    if not sets["shared"]:
        return ("WARNING: the configurations of this task share no scored case: each row is over its own "
                f"cases, and its ranks compare different cases (cases only some have: {left}).")
    return (f"The configurations of this task scored different cases: every number and test is over the "
            f"{sets['shared']} case{'' if sets['shared'] == 1 else 's'} all of them scored (cases left out: "
            f"{left}).")


def _absent_metric_note(report: Report, task: str, name: Callable[[str], str]) -> str | None:
    """Which configurations have runs scored before a metric existed; how to score their predictions (its
    code span holds the task's name as it is: markdown shows a code span's text as written)."""
    absent = report.absent_metrics.get(task)
    if not absent:
        return None
    counts = [counts for metrics in absent.values() for counts in metrics.values()]

    def runs(lacking: int, total: int) -> str:
        of = f"{total} run{'' if total == 1 else 's'}"
        return f"all {of}" if lacking == total > 1 else f"{lacking} of {of}"

    listed = "; ".join(f"{name(config)}: " + ", ".join(f"{metric_title(m, unit=False)} ({runs(*n)})"
                                               for m, n in metrics.items())
                       for config, metrics in absent.items())
    effects = []
    if any(lacking == total for lacking, total in counts):
        effects.append("where every run of a configuration lacks a metric, it shows – and ranks last on it")
    if any(lacking < total for lacking, total in counts):
        effects.append("where only some runs of a configuration lack a metric, its score comes from the "
                       "others")
    effects_text = "; ".join(effects)
    return (f"Runs scored before a metric existed have no column for it in their metrics.csv: {listed}. "
            f"{effects_text[0].upper()}{effects_text[1:]}. `medseg-bench evaluate --pred RUN/predictions "
            f"--ref labelsTr --allow-missing --task {task}` scores the predictions of such a run on every "
            f"metric, apart from this report, which reads the metrics.csv of each run as it is.")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def sections(report: Report, compact: bool = False, name: Callable[[str], str] = as_written) -> list[Section]:
    """The report as sections: an introduction, one per task, the group effect, the ranking across tasks.

    `compact` leaves out the per-label columns (for the terminal). `name`: how a name from the results (a
    configuration, region, task) is written into a note, whose own text is the report's (markdown escapes
    the names, `formats.md_name`, and keeps the notes' code spans); titles, captions and cells are names or
    numbers, which each format escapes whole."""
    s = report.settings
    direction = "higher" if higher_is_better(report.metric) else "lower"
    intro: list[str | Table] = [
        f"Ranked by {metric_title(report.metric)} ({direction} is better). A case scores the mean over the "
        f"task's foreground labels; folds are pooled, and a case's seeds averaged. Cells: mean ± std "
        f"[{confidence_text(s['confidence'])} percentile bootstrap CI of the mean, "
        f"{s['bootstrap_resamples']} resamples, seed {s['bootstrap_seed']}] over cases. Bold: best in its "
        "column within the task" + (" (of all its configurations: a column whose best --top leaves out has "
                                    "none bold)." if s["top"] else "."),
        "empty: label evaluations with an empty reference (in parentheses: both masks empty, scored NaN and "
        "left out of the means). Cost: parameters, training hours per run, peak memory, seconds per epoch.",
    ]
    if compact:
        intro.append("Per-label columns: see --format markdown, html or latex.")
    if s["top"]:
        top = f"{s['top']} configuration{'' if s['top'] == 1 else 's'}"
        intro.append(f"Only the top {top} of each task, and of the ranking across tasks, "
                     f"are shown, and those tied with the {_ordinal(s['top'])} (so a table may hold more); "
                     "the significance tests cover, and list, every configuration.")
    out = [Section("medseg-bench report", 1, intro)]
    for task in report.tasks:
        items: list[str | Table] = [_settings_note(report, task, name)]
        items += [note for note in (_data_note(report, task, name), _case_set_note(report, task, name),
                                    _absent_metric_note(report, task, name)) if note]
        if compact:  # two narrower tables fit a terminal better than one wide one
            items += [task_table(report, task, True, "quality"), task_table(report, task, True, "cost")]
        else:
            items.append(task_table(report, task))
        section = Section(task, 2, items, task=task)
        notes, table = significance_section(report, task, name)
        section.items += notes
        if table is not None:
            section.items.append(table)
        out.append(section)
    if report.groups is not None:
        axis = report.groups.attrs["group_by"]
        groups = Section(f"Effect of {axis}", 2, [
            f"Per task and {axis}: the mean over the configurations with that {axis} of their mean score "
            "(each configuration weighted equally, whatever else it varies) ± the std across them (min–max), "
            "and their mean rank within the task."])
        of_task = report.groups.groupby("task", sort=False)
        if any(len(compute_kinds(rows.get("compute", []))) > 1 for _, rows in of_task):
            groups.items.append("Hours: where a task's configurations trained on CPU and on GPU, each cell "
                                f"says its kind, and a {axis} whose configurations trained on both shows –: "
                                "a CPU-hour and a GPU-hour are not one measure.")
        for task in report.tasks:
            table = group_table(report, task)
            table.caption = task
            groups.items.append(table)
        out.append(groups)
    metrics = ", ".join(metric_title(m) for m in report.metrics)
    out.append(Section("Ranking across tasks", 2, [
        f"MSD-style: within each task the configurations are ranked for each metric ({metrics}; ties share "
        "the mean of their ranks), and a configuration's mean rank averages those ranks over tasks and "
        "metrics; a configuration not run on a task ranks last there (tied with any other not run or without "
        "a score). Per-task columns: the mean of its metric ranks in that task (– where it was not run; it "
        "counts as last).",
        ranking_table(report)]))
    return out
