"""A finished run read back whole and checked: its `spec.json`, `summary.json` and `metrics.csv`, as `report`
reads them. A finished run that lost or damaged a file since is never trained again over what it wrote
(`finished_damage`); reading it names the file and the problem (`read_finished_run`)."""

from __future__ import annotations

import csv
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medseg_bench.checks import are_whole, is_amount, is_number, is_whole, shown
from medseg_bench.errors import DamagedRunError, ResultsError
from medseg_bench.files import load_json_object
from medseg_bench.run_folder import read_events
from medseg_bench.spec import RunSpec, run_id_problem

FINISHED_FILES = ("spec.json", "metrics.csv", "summary.json")


def finished_damage(folder: Path) -> str | None:
    """Why a run that finished can no longer be read as finished ("<file>: <problem>"), or None.

    A run has finished when its status says `done`, when `events.jsonl` records `done` (appended only after
    the status says so), or when it wrote `summary.json` and its status file is gone or unreadable (a run
    interrupted between its summary and its status has a readable `running` status: it completes on resume).
    Such a run is never trained again, which would overwrite what it wrote: sweep, status and report name
    the file instead.
    """
    found = _damaged_file(folder)
    return f"{found[0]}: {found[1]}" if found else None


def damaged_runs_error(damage: list[str], fate: str) -> ResultsError:
    """The one error a sweep ends with when it left finished runs as they are (`fate`: "not trained again",
    "not submitted"): how many, and what to do. Each run's `damage` is named by the sweep's line for it, not
    here again (it was said twice: that line, then this error naming the first run's)."""
    runs = "1 finished run is" if len(damage) == 1 else f"{len(damage)} finished runs are"
    left = "it is" if len(damage) == 1 else "they are"
    return ResultsError(f"{runs} damaged (named above), left as {left}, {fate}: restore the file, move the "
                        "run folder away, or delete it to run it again")


def _damaged_file(folder: Path) -> tuple[Path, str] | None:
    return _finished_files(folder)[0]


def _absent(path: Path) -> str:
    """Why `path` is not a file to read: "missing", or "not a file" (a folder, a socket, a broken link's
    target... where one is: `metrics.csv: missing` named a folder that was there)."""
    return "not a file" if path.exists() else "missing"


def _finished_files(folder: Path) -> tuple[tuple[Path, str] | None, dict[str, Any], dict[str, Any]]:
    """(what is damaged, as `_damaged_file`, spec.json, summary.json): the two objects as read for the checks
    (empty where the run has not finished, or a file is damaged), so that a finished run's are read once."""
    status_path = folder / "status.json"
    status, why = load_json_object(status_path) if status_path.is_file() else (None, _absent(status_path))
    said_done = status is not None and status.get("state") == "done"
    done_event = any(event.get("event") == "done" for event in read_events(folder))
    if not (said_done or done_event or (status is None and (folder / "summary.json").is_file())):
        return None, {}, {}
    if status is None:
        return (status_path, f"{why}, but the run finished"), {}, {}
    if not said_done:
        return (status_path, f"says {status.get('state')!r}, but events.jsonl records that the run "
                "finished"), {}, {}
    for name in FINISHED_FILES:
        if not (folder / name).is_file():
            return (folder / name, f"{_absent(folder / name)}, but the run finished"), {}, {}
    read: dict[str, dict[str, Any]] = {}
    for name in ("spec.json", "summary.json"):  # cheap to check here; metrics.csv's rows: read_finished_run
        data, why = load_json_object(folder / name)
        if data is None:
            return (folder / name, f"{why}, but the run finished"), {}, {}
        problem = summary_problem(data, folder) if name == "summary.json" else spec_problem(data, folder)
        if problem:
            return (folder / name, problem), {}, {}
        read[name] = data
    return None, read["spec.json"], read["summary.json"]


def spec_problem(spec: dict[str, Any], folder: Path) -> str | None:
    """Why a finished run's spec.json cannot be read as its spec, or None: a key the report needs missing, a
    value of the wrong type (it would crash the report and the index, or be pooled as another), settings
    edited after the run (its run id no longer theirs), or its run folder under another task's folder (status
    and `report --task` counted it as a run of that task, and the index held it twice)."""
    problem = (RunSpec.problem({k: v for k, v in spec.items() if k != "run_id"})
               or run_id_problem(spec, folder.name))
    if problem is None and spec["task"] != folder.parent.name:
        problem = f"its task is {spec['task']!r}, but its run folder is under {folder.parent.name!r}"
    return problem


def _optional(fits: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or fits(value)

_OBJECT = (lambda value: isinstance(value, dict)), "an object"
# scores: NaN where no case defined one (json writes it as NaN)
_SCORES = (lambda value: isinstance(value, dict) and all(map(is_number, value.values())),
           "an object of numbers")
_AMOUNT = _optional(is_amount), "a finite number of at least 0"
# A count of parameters a float64 holds exactly (2**53, 9e15; the largest networks have ~1e12): the report
# and the index take it as a number (pyarrow failed on 2**64, pandas on 10**400).
MAX_PARAMS = 2**53


def _is_params_count(value: object) -> bool:
    return is_whole(value) and isinstance(value, int) and value <= MAX_PARAMS


# The fields every version that wrote summary.json wrote (`run.py`, from the first on): a finished run that
# lacks one had its summary emptied or edited, not written by an older version. Those added later (`tta`,
# `postprocessing`, `cost.first_step_at`, `cost.resumed_at_epoch`, `cost.epoch_times_s`) may be absent.
SUMMARY_ALWAYS_WRITTEN = (
    "run_id", "mean", "per_label_dice", "num_cases", "metric_settings", "cost", "plan",
    *(f"cost.{key}" for key in ("params", "train_time_s", "eval_time_s", "epochs_done", "time_per_epoch_s",
                                "peak_memory_mb", "device")),
    *(f"plan.{key}" for key in ("patch_3d", "batch_3d", "patch_2d", "batch_2d")),
)


# summary.json's fields that sweep, status and report read ("parent.key": a field of an object), each with
# what it must be; null only where every version may have written it (a cost it did not measure).
SUMMARY_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "num_cases": (is_whole, "a whole number"),
    "mean": _SCORES,
    "per_label_dice": _SCORES,
    "metric_settings": _OBJECT,
    "cost": _OBJECT,
    "cost.params": (_optional(_is_params_count), "a whole number from 0 to 2**53"),
    **{f"cost.{key}": _AMOUNT for key in ("train_time_s", "time_per_epoch_s", "peak_memory_mb",
                                          "eval_time_s")},
    "cost.epochs_done": (_optional(is_whole), "a whole number of at least 0"),
    "cost.epoch_times_s": (_optional(lambda value: isinstance(value, list) and all(map(is_amount, value))),
                           "a list of finite numbers of at least 0"),
    "cost.device": (_optional(lambda value: isinstance(value, str)), "text"),
    "plan": _OBJECT,
    "plan.patch_2d": (lambda value: are_whole(value, 2, least=1), "2 positive whole numbers"),
    "plan.patch_3d": (lambda value: are_whole(value, 3, least=1), "3 positive whole numbers"),
    "plan.batch_2d": (lambda value: is_whole(value, 1), "a positive whole number"),
    "plan.batch_3d": (lambda value: is_whole(value, 1), "a positive whole number"),
}


def summary_problem(summary: dict[str, Any], folder: Path) -> str | None:
    """What is wrong with a finished run's summary.json: a field every version writes missing
    (`SUMMARY_ALWAYS_WRITTEN`), one of the wrong type (`SUMMARY_FIELDS`), or a run id not its folder's
    (another run's summary copied in: its costs and metric settings reported as this run's); None when
    nothing is."""
    for key, (fits, kind) in SUMMARY_FIELDS.items():
        holder, name = _holder(summary, key)
        if isinstance(holder, dict) and name in holder and not fits(holder[name]):
            return f"{key!r} must be {kind}, not {shown(holder[name])}"
    for key in SUMMARY_ALWAYS_WRITTEN:
        holder, name = _holder(summary, key)
        if isinstance(holder, dict) and name not in holder:
            return f"lacks {key!r}, which every finished run writes"
    if summary["run_id"] != folder.name:
        return f"its run_id {shown(summary['run_id'])} is not its folder's name"
    return None


def _holder(summary: dict[str, Any], key: str) -> tuple[object, str]:
    """The object that holds summary field `key` ("parent.name": a field of an object) and its name there; a
    parent is checked before its fields, so one that is no object is reported as itself."""
    parent, _, name = key.rpartition(".")
    return (summary.get(parent) if parent else summary), name

METRICS_COLUMNS = ("case", "label", "dice", "ref_empty", "pred_empty")


def _corrupt(path: Path, problem: str) -> DamagedRunError:
    return DamagedRunError(f"{path}: {problem}", "move its run folder away to report without it, or delete "
                           "the folder to run it again")


# The cell texts pandas reads as missing by default (`pandas._libs.parsers.STR_NA_VALUES`, private): how a
# metrics.csv's score columns are read.
NA_TEXTS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
            "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


def read_finished_run(folder: Path):
    """A finished run's spec, summary and per-case scores; ResultsError naming the file when one is damaged.

    Every file is written atomically, so damage means a file was edited, truncated or lost after the fact.
    """
    import pandas as pd

    damage, spec, summary = _finished_files(folder)  # spec.json and summary.json, read and checked
    if damage:
        raise _corrupt(*damage)
    path = folder / "metrics.csv"
    try:
        # Text, whatever the task: a label column of numbers (Task09) and one with region names (Task01)
        # must concatenate into one index. Names as written: a case or region named `NA` or `None` is no
        # missing cell (pandas' default reading made every run that scored one damaged); scores as pandas
        # reads numbers (`nan`, `NA`, ... missing).
        names = {"case": [""], "label": [""]}
        numbers = {column: NA_TEXTS for column in _header(path) if column not in names}
        frame = pd.read_csv(path, dtype={"case": str, "label": str}, keep_default_na=False,
                            na_values=numbers | names)
    except (OSError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        raise _corrupt(path, f"cannot be read as CSV ({str(exc).splitlines()[0]})") from None
    absent = [c for c in METRICS_COLUMNS if c not in frame.columns]
    if absent:
        raise _corrupt(path, f"lacks the column(s) {', '.join(absent)}")
    labels = list(summary.get("per_label_dice") or {})
    if _as_written(frame, summary["num_cases"], labels):
        _check_dice_means(frame, summary, path)
        return spec, summary, frame
    if labels and _whole_table(frame, summary["num_cases"]) and set(frame["label"]) != set(labels):
        # metrics.csv scores every case for the same labels, and as many cases as the summary counts: the
        # per-label means run.py wrote from it (one per label it holds) were edited, not the rows
        raise _corrupt(folder / "summary.json", f"per_label_dice holds label(s) {', '.join(labels)}, but "
                       f"metrics.csv scores {', '.join(sorted(set(frame['label'])))} for each case")
    expected = summary.get("num_cases", 0) * len(labels) or len(frame)
    if len(frame) != expected:
        rows = f"{len(frame)} row{'' if len(frame) == 1 else 's'}"
        raise _corrupt(path, f"has {rows}, summary.json counts {expected} (cases x labels)")
    if frame[list(METRICS_COLUMNS[3:])].isna().any().any():
        raise _corrupt(path, "a row is cut short (truncated?)")
    problem = _bad_row(frame, labels) or _bad_cell(frame) or _unscored(frame, path)
    if problem:
        raise _corrupt(path, problem)
    _check_dice_means(frame, summary, path)
    return spec, summary, frame


def _check_dice_means(frame: Any, summary: dict[str, Any], path: Path) -> None:
    """Refuse a metrics.csv whose mean Dice of a label is not the one summary.json's `per_label_dice` gives:
    run.py writes both from the same table (the mean over the cases that define it), so one of them was edited
    since; the report ranks by the rows (a column of Dice set to 1 ranked a run first, its summary 0.06)."""
    means = frame.groupby("label", sort=False)["dice"].mean()
    for label, written in summary["per_label_dice"].items():
        mean = means.get(label)
        if mean is None or (math.isnan(mean) and math.isnan(written)):
            continue
        if not math.isclose(mean, written, rel_tol=1e-9, abs_tol=1e-9):
            raise _corrupt(path, f"its mean Dice of label {label} is {mean:.6g}, but summary.json, written "
                           f"from the same scores, says {written:.6g}: one of the two was edited")


def _header(path: Path) -> list[str]:
    """The column names of the CSV `path`, as pandas reads them (its first line; none for an empty file, which
    pandas refuses next): read alone, not through pandas, which costs a read of its own."""
    with open(path, newline="", encoding="utf-8-sig") as file:  # a BOM, as pandas, dropped
        return next(csv.reader(file), [])


def _as_written(frame: Any, num_cases: int, labels: list[str]) -> bool:
    """Is metrics.csv as run.py writes it: `num_cases` cases, each with one row per label of `labels` and
    nothing else, every score a number in its metric's range or empty where its row's masks leave it undefined
    (`_undefined_when`), both flags True or False? Then none of
    `read_finished_run`'s checks of its rows would find a problem, and they are skipped: one pass over the
    rows and one over the scores, where those checks, which name the first problem, take about 50 pandas
    operations (15 ms a run; 15 s of a report of 1000 runs). False sends the table through them."""
    import numpy as np
    import pandas as pd

    from medseg_bench.metrics.info import METRIC_NAMES, METRICS

    flags, dtypes = METRICS_COLUMNS[3:], frame.dtypes.to_dict()  # a column's dtype without making a Series
    if not labels or frame.empty or not all(pd.api.types.is_bool_dtype(dtypes[c]) for c in flags):
        return False
    known = set(labels)
    cases, names = frame["case"].tolist(), frame["label"].tolist()
    for case, label in zip(cases, names, strict=True):
        if not (isinstance(case, str) and case.strip() and isinstance(label, str) and label.strip()
                and label in known):
            return False
    if len(set(zip(cases, names, strict=True))) != len(frame):  # a case's label twice
        return False
    # every label known and none twice: as many rows as cases x labels means every case has each label
    if len(set(cases)) != num_cases or len(frame) != num_cases * len(labels):
        return False
    scores = [c for c in frame.columns if c not in ("case", "label", *flags)]
    if not all(pd.api.types.is_numeric_dtype(dtypes[c]) and not pd.api.types.is_bool_dtype(dtypes[c])
               for c in scores):
        return False
    metrics = [c for c in scores if c in METRIC_NAMES]
    table = frame[[*metrics, *flags]].to_numpy(dtype=float)  # one copy: the scores, then the flags as 0/1
    values = table[:, :len(metrics)]
    high = np.array([1.0 if METRICS.get(m).higher_is_better else np.inf for m in metrics])
    empty = np.isnan(values)
    if empty.any() and (empty & ~_may_be_empty(table[:, len(metrics):] != 0, metrics)).any():
        return False  # a score emptied by hand
    with np.errstate(invalid="ignore"):
        fits = empty | ((values >= 0.0) & (values <= high) & np.isfinite(values))
    return bool(fits.all())


@functools.cache
def _undefined_when(metrics: tuple[str, ...]) -> tuple[Any, Any]:
    """For each of `metrics`, whether it is undefined (NaN, an empty cell in metrics.csv) where only the
    prediction is empty, and where only the reference is: what its definition gives there under the "nan"
    empty-mask policy, which leaves undefined every score that "penalize" fills in (Dice is 0 under either).
    Where neither mask is empty every metric is defined (a mask that is not empty has a surface); where both
    are, none is (`metrics.evaluate._score`)."""
    import numpy as np

    from medseg_bench.metrics.info import METRICS, Measured, MetricSettings

    settings = MetricSettings(empty_policy="nan")

    def undefined(n_pred: int, n_ref: int) -> Any:
        measured = Measured(0, n_pred, n_ref, None, settings, math.nan)
        return np.array([math.isnan(METRICS.get(m).compute(measured)) for m in metrics], dtype=bool)

    return undefined(0, 1), undefined(1, 0)


def _may_be_empty(flags: Any, metrics: list[str]) -> Any:
    """A (rows, metrics) array: may this row's score of this metric be empty, by its row's flags (`flags`: a
    (rows, 2) bool array, ref_empty and pred_empty)?"""
    ref_empty, pred_empty = flags[:, :1], flags[:, 1:2]
    pred_only, ref_only = _undefined_when(tuple(metrics))
    return ((ref_empty & pred_empty) | (pred_empty & ~ref_empty & pred_only)
            | (ref_empty & ~pred_empty & ref_only))


def _whole_table(frame: Any, num_cases: int) -> bool:
    """Does metrics.csv hold `num_cases` named cases, each scored once for the same labels?"""
    if frame["case"].isna().any() or frame["label"].isna().any() or frame.duplicated(["case", "label"]).any():
        return False
    per_case = frame.groupby("case")["label"].agg(frozenset)
    return len(per_case) == num_cases and per_case.nunique() == 1


def _bad_row(frame: Any, labels: list[str]) -> str | None:
    """The first row of a run's metrics.csv that names no case, or no label the run scored
    (`labels`, the keys of summary.json's per_label_dice: run.py writes one per label and region it scored),
    or repeats a case's label, or a case that lacks one of those labels; None when every case has each label
    once. Labels are compared as text: a region's name (Task01's "whole tumour"), or a label value as
    written."""
    for column in ("case", "label"):  # read as written: only an empty cell is missing
        empty = frame[column].isna() | (frame[column].str.strip() == "")
        if empty.any():
            return f"{column} is empty in row {int(empty.to_numpy().argmax()) + 1}"
    if labels:
        unknown = ~frame["label"].isin(labels)
        if unknown.any():
            row = int(unknown.to_numpy().argmax())
            return (f"label {frame['label'].iloc[row]!r} in row {row + 1} is none of the run's labels "
                    f"({', '.join(labels)}, as summary.json's per_label_dice holds them)")
    twice = frame.duplicated(["case", "label"])
    if twice.any():
        row = int(twice.to_numpy().argmax())
        return (f"case {frame['case'].iloc[row]!r} is scored for label {frame['label'].iloc[row]!r} twice "
                f"(again in row {row + 1})")
    if labels:  # every label known and none twice: a case with fewer rows lacks one
        rows = frame.groupby("case", sort=False)["label"]
        short = rows.size() < len(labels)
        if short.any():
            case = short.index[short.to_numpy().argmax()]
            held = rows.get_group(case)
            lacking = [label for label in labels if label not in set(held)]
            return (f"case {case!r} (row {int(held.index[0]) + 1}) has no row for label(s) "
                    f"{', '.join(lacking)}")
    return None


def _bad_cell(frame: Any) -> str | None:
    """The first cell of a run's metrics.csv that its column cannot hold, or None: every column but case and
    label holds numbers (an empty cell is NaN, which `_unscored` holds to an empty mask), each in its
    metric's range, the two flags True or False."""
    import pandas as pd

    from medseg_bench.metrics.info import METRIC_NAMES, METRICS

    for column in frame.columns.drop(["case", "label"]):
        values = frame[column]
        if column in METRICS_COLUMNS[3:]:
            if pd.api.types.is_bool_dtype(values):
                continue
            bad, kind = ~values.astype(str).str.lower().isin(["true", "false"]), "True or False"
        elif pd.api.types.is_bool_dtype(values):  # a column of True/False reads as bools
            bad, kind = values.notna(), "a number"
        elif (not pd.api.types.is_numeric_dtype(values)
              and (text := values.notna() & pd.to_numeric(values, errors="coerce").isna()).any()):
            bad, kind = text, "a number"
        elif column in METRIC_NAMES:  # a number, but one the metric cannot take (inf, a Dice of 5, HD95 -1)
            numbers = pd.to_numeric(values, errors="coerce")
            info = METRICS.get(column)
            low, high = (0.0, 1.0) if info.higher_is_better else (0.0, math.inf)
            bad = numbers.notna() & ~((numbers >= low) & (numbers <= high) & numbers.abs().lt(math.inf))
            kind = "a score from 0 to 1" if high == 1.0 else "a finite value of at least 0"
        else:
            continue
        if bad.any():
            row = int(bad.to_numpy().argmax())
            return f"{column} is {str(values.iloc[row])!r} in row {row + 1}, not {kind}"
    return None


def _unscored(frame: Any, path: Path) -> str | None:
    """The first score of a run's metrics.csv (`path`, read into `frame`) left empty, or NaN, where its row's
    masks define it, or None: run.py writes an empty cell (NaN) only for a score an empty mask leaves
    undefined (`_undefined_when`), so one emptied by hand, which the report averaged around, is damage.
    After `_bad_cell`: numbers and flags."""
    import numpy as np
    import pandas as pd

    from medseg_bench.metrics.info import METRIC_NAMES

    metrics = [c for c in frame.columns if c in METRIC_NAMES]
    # bools, or text _bad_cell took for True or False
    flags = np.column_stack([frame[c].astype(str).str.lower() == "true" for c in METRICS_COLUMNS[3:]])
    values = frame[metrics].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = np.isnan(values) & ~_may_be_empty(flags, metrics)
    if not bad.any():
        return None
    row, column = divmod(int(bad.argmax()), len(metrics))  # the first in reading order
    ref_empty, pred_empty = bool(flags[row, 0]), bool(flags[row, 1])
    masks = ("only the prediction is empty" if pred_empty else "only the reference is empty" if ref_empty
             else "neither mask is empty")
    return f"{metrics[column]} is {_no_score(path, row, metrics[column])} in row {row + 1}, where {masks}, " \
        "which leaves it defined"


def _no_score(path: Path, row: int, column: str) -> str:
    """What the cell of `row`, `column` of `path` holds, that pandas read as NaN: "empty", "NaN" (`nan`, as
    a float reads it), or the text itself (`NA`, `null`): a cell of `nan` was said to be empty. Read again as
    text, only for the message."""
    text = _cell_text(path, row, column)
    if text is None:
        return "empty or NaN"
    if not text:
        return "empty"
    try:
        return "NaN" if math.isnan(float(text)) else repr(text)
    except ValueError:
        return repr(text)


def _cell_text(path: Path, row: int, column: str) -> str | None:
    """The text of the cell of `row`, `column` of the CSV `path`, stripped, as written (pandas reads `nan`,
    `NA`, `null`, ... as missing); None where it cannot be read again (changed since). Only for messages."""
    import pandas as pd

    try:
        return str(pd.read_csv(path, dtype=str, keep_default_na=False)[column].iloc[row]).strip()
    except (OSError, ValueError, KeyError, IndexError):
        return None


# The files whose contents `read_finished_run` reads (status.json, events.jsonl: `finished_damage`).
READ_FILES = ("status.json", "events.jsonl", *FINISHED_FILES)


def _stamp(folder: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """Each of READ_FILES' inode, size and modification time (None: absent): every one is replaced by a rename
    or appended to, so a file changed since has another stamp."""
    stamps: list[tuple[int, int, int] | None] = []
    for name in READ_FILES:
        try:
            found = os.stat(folder / name)
        except OSError:
            stamps.append(None)
            continue
        stamps.append((found.st_ino, found.st_size, found.st_mtime_ns))
    return tuple(stamps)


class FinishedReads:
    """`read_finished_run` for a command that reads every finished run twice (`status` checks each, then
    rebuilds the index from them; it read every run's files and checked every metrics.csv twice): a run is
    read again only where one of its files changed since (`_stamp`), as one finishing or damaged in between.
    Holds what it read (each run's metrics table) until it is dropped."""

    def __init__(self) -> None:
        self._read: dict[Path, tuple[object, Any]] = {}

    def read(self, folder: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
        stamp = _stamp(folder)
        kept = self._read.get(folder)
        if kept is None or kept[0] != stamp:
            try:
                found: Any = read_finished_run(folder)
            except DamagedRunError as exc:
                found = exc
            kept = self._read[folder] = (stamp, found)
        if isinstance(kept[1], DamagedRunError):
            raise kept[1]
        return kept[1]
