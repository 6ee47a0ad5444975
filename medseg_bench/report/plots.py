"""Report figures (matplotlib, Agg, PNG bytes): per-case box/strip plots, learning curves, a rank heat-map and
cost vs quality with the Pareto front. `make_plots` returns {file name: PNG}; `write_plots` saves them."""

from __future__ import annotations

import inspect
import io
import math
import re
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from medseg_bench.report.build import Report
from medseg_bench.report.display import confidence_text, format_rank, metric_title
from medseg_bench.report.tables import case_means, compute_kinds, higher_is_better

DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _horizontal(ax: Any) -> dict[str, Any]:
    """boxplot's keyword for horizontal boxes: `orientation` from matplotlib 3.10 (deprecating `vert`)."""
    return {"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters \
        else {"vert": False}


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return buffer.getvalue()


# The most characters of a figure's name a task's name gives: file systems take 255 bytes a name, and a
# longer task name stopped `--plots` (`File name too long`)
SLUG_MAX = 120


def shown(text: str) -> str:
    """A name from the results as a figure draws it: on one line, its control characters escaped (`\\x1b`)
    as the tables write them (the font has no glyph for them: matplotlib warned, in several lines each)."""
    from medseg_bench.report.formats import one_line

    return one_line(text)


def slug(text: str) -> str:
    """`text` as the start of a figure's file name: itself where it holds only letters, digits, `.`, `_` and
    `-` and is at most `SLUG_MAX` long; else those, the rest as `_`, cut to leave room for `-` and 8 hex
    digits of its CRC32, which end it, so that tasks whose names differ only there (`Task 1`, `Task_1`), or
    past the cut, never share a file (one task's figures took the other's place)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    if safe == text and len(safe) <= SLUG_MAX:
        return safe
    return f"{safe[:SLUG_MAX - 9]}-{zlib.crc32(text.encode('utf-8', 'surrogateescape')):08x}"


class Style(NamedTuple):
    """How a configuration is drawn: its colour, its points' marker and fill, its line's style."""

    color: Any
    marker: str
    fill: str
    linestyle: str


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*")
FILLS = ("full", "none", "left", "right", "bottom", "top")
LINESTYLES = ("-", "--", ":", "-.")


def _styles(configs: list[str]) -> dict[str, Style]:
    """A colour per configuration (tab10, or tab20 past 10), and past the palette's last colour a marker, fill
    and line style of each round of colours: configurations 0, 20 and 40 had one colour and looked alike.
    Distinct for 240 configurations (12 markers and 4 line styles, whose rounds repeat together after 12)."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    rounds = [i // cmap.N for i in range(len(configs))]
    return {c: Style(cmap(i % cmap.N), MARKERS[r % len(MARKERS)], FILLS[r % len(FILLS)],
                     LINESTYLES[r % len(LINESTYLES)])
            for (i, c), r in zip(enumerate(configs), rounds, strict=True)}


def case_distribution(report: Report, task: str, metric: str) -> bytes:
    """Horizontal box plot with the per-case scores on top, one row per configuration, best at the top."""
    plt = _pyplot()
    rows = report.table[report.table["task"] == task]
    configs = rows["config"].tolist()
    scores = report.scores[report.scores["task"] == task]
    of_config = dict(iter(scores.groupby("config", sort=False)))  # split once, not selected per configuration
    # A case's samples (its seeds) averaged first, as every statistic of the table is computed.
    data = [case_means(of_config.get(c, scores.iloc[:0]), metric).dropna().to_numpy(float) for c in configs]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.55 * len(configs)))
    positions = np.arange(len(configs))[::-1]  # rank 1 on top
    nonempty = [i for i, d in enumerate(data) if d.size]
    if nonempty:
        ax.boxplot([data[i] for i in nonempty], positions=positions[nonempty], **_horizontal(ax), widths=0.6,
                   showfliers=False, patch_artist=True,
                   boxprops={"facecolor": "#dde6f0", "edgecolor": "#4a6a8a"},
                   medianprops={"color": "#c0392b", "linewidth": 1.6})
    rng = np.random.default_rng(0)  # jitter only: fixed so the figure is reproducible
    for values, y in zip(data, positions, strict=True):
        jitter = rng.uniform(-0.18, 0.18, values.size)
        ax.scatter(values, y + jitter, s=12, color="#1f3b57", alpha=0.6, zorder=3)
    # The table's rank, ties shared (1.5), not the row's position
    labels = [f"{format_rank(r)}. {shown(c)}" for r, c in zip(rows["rank"], configs, strict=True)]
    ax.set_yticks(positions, labels, fontsize=9)
    ax.set_ylim(-0.7, len(configs) - 0.3)
    ax.set_xlabel(f"per-case {metric_title(metric)} (mean over foreground labels)")
    better = "higher" if higher_is_better(metric) else "lower"
    ax.set_title(f"{shown(task)}: {metric_title(metric)} per case ({better} is better; "
                 f"ordered by {metric_title(report.metric)} rank)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


LOGGED = ("train_loss", "val_dice")


def _epoch_log(folder: Path) -> pd.DataFrame | None:
    """A run's training log's epoch column and those of `LOGGED` it has (Lightning writes a row for each,
    per epoch), as numbers; None where it has none, or cannot be read. A value that is no number (a log
    edited or damaged: `abc` where an epoch goes) is left out, its row too where it is the epoch: a training
    log only draws the curves, and such a cell stopped the report with a TypeError."""
    path = folder / "logs" / "metrics.csv"
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    if "epoch" not in frame:
        return None
    columns = [c for c in LOGGED if c in frame]
    if not columns:
        return None
    numbers = frame[["epoch", *columns]].apply(pd.to_numeric, errors="coerce")
    numbers = numbers[np.isfinite(numbers["epoch"])]
    return numbers if len(numbers) else None


def learning_curves(report: Report, task: str) -> bytes | None:
    """Train loss and validation Dice per epoch, one line per configuration (mean over its runs; band:
    min–max)."""
    plt = _pyplot()
    rows = report.table[report.table["task"] == task]
    styles = _styles(rows["config"].tolist())
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for _, row in rows.iterrows():
        logs = [log for run_id in row["run_ids"]
                if (log := _epoch_log(report.results_dir / task / run_id)) is not None]
        if not logs:
            continue
        logged = pd.concat(logs, keys=range(len(logs)), names=["run", None])
        # each run's mean per epoch, of every run in one pass (one per run took a third of a report's figures)
        combined = logged.groupby(["run", "epoch"])[[c for c in LOGGED if c in logged]].mean()
        for ax, column in ((loss_ax, "train_loss"), (dice_ax, "val_dice")):
            if column not in combined:
                continue
            stats = combined[column].groupby("epoch").agg(["mean", "min", "max"]).dropna()
            if stats.empty:
                continue
            epochs = stats.index.to_numpy() + 1
            style = styles[row["config"]]
            ax.plot(epochs, stats["mean"], marker=style.marker, linestyle=style.linestyle, ms=3,
                    color=style.color, label=shown(row["config"]))
            if len(logs) > 1:
                # arrays: under pandas 2, numpy.ma (in fill_between) mistakes Series._data for the values
                ax.fill_between(epochs, stats["min"].to_numpy(), stats["max"].to_numpy(),
                                color=styles[row["config"]].color, alpha=0.15)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    loss_ax.set(xlabel="epoch", ylabel="train loss", title="training loss")
    dice_ax.set(xlabel="epoch", ylabel="validation Dice", title="validation Dice")
    for ax in (loss_ax, dice_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = loss_ax.get_legend_handles_labels()
    if not handles:
        handles, labels = dice_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.045 * math.ceil(len(labels) / 3)))
    fig.suptitle(f"{shown(task)}: learning curves (mean over runs; band: min–max)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def rank_heatmap(report: Report) -> bytes:
    """Configurations x tasks, cell = the configuration's mean metric rank in that task; last column:
    the mean rank."""
    plt = _pyplot()
    ranking = report.ranking
    task_columns = [c for c in ranking.columns if c.startswith("rank[")]
    values = ranking[[*task_columns, "mean_rank"]].to_numpy(float)
    labels = [shown(c[5:-1]) for c in task_columns] + ["mean rank"]
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(labels), 1.2 + 0.5 * len(ranking)))
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="#eeeeee")  # grey: not run on that task
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(ranking)), [shown(c) for c in ranking["config"]], fontsize=9)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (i, j), value in np.ndenumerate(values):
        text = format_rank(value)
        ax.text(j, i, text, ha="center", va="center", fontsize=8,
                color="white" if not math.isnan(value) and value > middle else "black")
    ax.axvline(len(task_columns) - 0.5, color="white", linewidth=3)
    fig.colorbar(image, ax=ax, label="rank (1 = best)", shrink=0.8)
    ax.set_title("rank per task (mean over metrics)", fontsize=10)
    return _png(fig)


def pareto_front(cost: np.ndarray, quality: np.ndarray, higher: bool = True) -> np.ndarray:
    """Indices of the points no other point beats on both cost (lower) and quality, sorted by cost."""
    q = quality if higher else -quality
    order = np.lexsort((-q, cost))
    front, best = [], -np.inf
    for i in order:
        if np.isfinite(cost[i]) and np.isfinite(q[i]) and q[i] > best:
            front.append(i)
            best = q[i]
    return np.array(front, dtype=int)


# Where a task's configurations trained on CPU and on GPU: each kind's marker (a configuration's colour and
# fill stay its own), and each kind's Pareto front
KIND_MARKERS = {"GPU": "o", "CPU": "s", "mixed": "X", "": "d"}
KIND_NAMES = {"GPU": "circles", "CPU": "squares"}
FRONT_STYLES = {"GPU": ("--", "#c0392b"), "CPU": (":", "#6c3483")}


def cost_quality(report: Report, task: str, metric: str) -> bytes | None:
    """Training hours per run vs mean score (bars: the report's bootstrap CI); the Pareto front joined and
    ringed. Where the task's configurations trained on CPU and on GPU (a CPU-hour and a GPU-hour are not one
    measure: one front put both on one axis), each kind has its marker and its own front; a configuration
    whose runs trained on both (`mixed`), or that records no device, is in neither."""
    plt = _pyplot()
    rows = report.table[report.table["task"] == task].reset_index(drop=True)
    cost = rows["train_hours"].to_numpy(float)
    quality = rows[f"{metric}_mean"].to_numpy(float)
    if not np.isfinite(cost).any() or not np.isfinite(quality).any():
        return None
    kinds = rows["compute"].fillna("").astype(str).to_numpy() if "compute" in rows else np.full(len(rows), "")
    recorded = compute_kinds(kinds)
    several = len(recorded) > 1
    compute = "/".join(recorded)
    styles = _styles(rows["config"].tolist())
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, row in rows.iterrows():
        low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
        err = None
        if np.isfinite([low, high]).all():
            err = [[max(0.0, quality[i] - low)], [max(0.0, high - quality[i])]]
        style = styles[row["config"]]
        kind = str(kinds[i])
        marker = KIND_MARKERS.get(kind, "d") if several else style.marker
        ax.errorbar(cost[i], quality[i], yerr=err, fmt=marker, fillstyle=style.fill, ms=7, capsize=3,
                    color=style.color,
                    label=shown(row["config"]) + (f" ({kind})" if several and kind else ""))
    # a configuration that trained on both has no hours (NaN: no point) and is on no front
    fronts = [(k, np.flatnonzero(kinds == k)) for k in recorded] if several \
        else [("", np.flatnonzero(kinds != "mixed"))]
    for kind, members in fronts:
        front = members[pareto_front(cost[members], quality[members], higher_is_better(metric))]
        if not front.size:
            continue
        linestyle, color = FRONT_STYLES.get(kind, FRONT_STYLES["GPU"])
        ax.plot(cost[front], quality[front], linestyle, color=color, linewidth=1.2,
                label=f"Pareto front ({kind})" if kind else "Pareto front")
        ax.scatter(cost[front], quality[front], s=160, facecolors="none", edgecolors=color, linewidths=1.5,
                   zorder=4)
    ax.set_xlabel(f"{compute or 'compute'}-hours per training run")
    ax.set_ylabel(f"mean {metric_title(metric)} ({confidence_text(report.settings['confidence'])} CI)")
    title = f"{shown(task)}: cost vs quality"
    if several:
        marks = [f"{KIND_NAMES[k]} {k}" for k in ("GPU", "CPU") if k in kinds]
        title += f" (a CPU-hour and a GPU-hour are not one measure: {', '.join(marks)}, a front of each)"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def make_plots(report: Report) -> dict[str, bytes]:
    """Every figure of the report, by file name: per task box plots (the ranking metric, plus Dice and HD95
    when in the table), learning curves and cost vs quality; then the rank heat-map. Text is drawn as it is,
    never as mathtext: a task, configuration or label name from a results folder with two `$` (`$\\foo$`)
    stopped the report with matplotlib's parse error."""
    import matplotlib

    _pyplot()
    with matplotlib.rc_context({"text.parse_math": False}):
        return _make_plots(report)


def _make_plots(report: Report) -> dict[str, bytes]:
    plots: dict[str, bytes] = {}
    box_metrics = list(dict.fromkeys([report.metric, *[m for m in ("dice", "hd95") if m in report.metrics]]))
    for task in report.tasks:
        prefix = slug(task)
        for metric in box_metrics:
            plots[f"{prefix}_{metric}_cases.png"] = case_distribution(report, task, metric)
        curves = learning_curves(report, task)
        if curves is not None:
            plots[f"{prefix}_learning_curves.png"] = curves
        scatter = cost_quality(report, task, report.metric)
        if scatter is not None:
            plots[f"{prefix}_cost_quality.png"] = scatter
    plots["rank_heatmap.png"] = rank_heatmap(report)
    return plots


def task_figures(plots: dict[str, bytes], task: str) -> list[str]:
    """The names in `plots` that belong to `task` (exact names, so `Task01_A` never takes `Task01_A_B`'s)."""
    from medseg_bench.metrics import METRIC_NAMES

    kinds = {"learning_curves.png", "cost_quality.png", *(f"{m}_cases.png" for m in METRIC_NAMES)}
    prefix = slug(task) + "_"
    return [name for name in plots if name.startswith(prefix) and name[len(prefix):] in kinds]


def write_plots(plots: dict[str, bytes], folder: Path) -> list[Path]:
    from medseg_bench.report.formats import write_atomic

    paths = []  # write_atomic makes the folder, and names the file it could not write
    for name, png in plots.items():
        write_atomic(folder / name, png)
        paths.append(folder / name)
    return paths
