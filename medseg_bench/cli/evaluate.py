"""`medseg-bench evaluate`: score a folder of predicted label maps against references of the same name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

FORMATS = ("csv", "json", "markdown")
MEAN_CASE = ""  # the `case` of the CSV's mean rows: no case id is empty


def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predicted label maps (NIfTI, NRRD, MHA, MHD).")],
    ref: Annotated[Path, typer.Option(help="Folder of reference label maps, paired with the predictions by "
                                           "case name (the file name without its suffix; formats may "
                                           "differ).")],
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels, e.g. 1,2 (default: the task's with --task, "
                                      "else every label in the references or the predictions).")
    ] = None,
    regions: Annotated[
        str | None,
        typer.Option(help="Label unions scored as one structure, after the labels: NAME=LABELS;... e.g. "
                          "'whole=1,2,3;core=2,3;enhancing=3'. Their rows carry the name as label."),
    ] = None,
    regions_from: Annotated[
        str | None,
        typer.Option(metavar="TASK", help="Score the regions a task file declares instead, e.g. "
                                          "Task01_BrainTumour (see `medseg-bench list tasks`)."),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(metavar="TASK", help="Score as a run of TASK does: its foreground labels, its NSD "
                                          "tolerance and its regions, if it declares any (--labels, "
                                          "--nsd-tolerance, --regions still win); a value that is not one of "
                                          "its labels is an error."),
    ] = None,
    nsd_tolerance: Annotated[
        float | None, typer.Option(help="NSD tolerance in mm. Default: the task's (--task or "
                                        "--regions-from), else 1.0.")
    ] = None,
    surface: Annotated[
        str, typer.Option(help="Surface: area (DeepMind surfels) or voxel (boundary voxels, as MONAI/MedPy).")
    ] = "area",
    empty_policy: Annotated[
        str, typer.Option(help="One mask empty: penalize (distances = image diagonal) or nan.")
    ] = "penalize",
    fmt: Annotated[str | None, typer.Option(
        "--format", help="csv, json or markdown (default: from --output's extension, else markdown).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write to this file instead of stdout.")] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes scoring cases in parallel (default: CPU cores).")
    ] = None,
    allow_missing: Annotated[
        bool, typer.Option("--allow-missing", help="Score only the references that have a prediction (a note "
                                "counts the others) instead of stopping at the first reference without one.")
    ] = False,
) -> None:
    """Per case and label (then region): Dice, Jaccard, precision, recall, volume difference, HD, HD95, ASSD
    (mm), NSD; then the means."""
    from medseg_bench.cli import check_folder
    from medseg_bench.errors import UsageError, one_line
    from medseg_bench.metrics import MetricSettings, evaluate_folders, summarize_cases
    from medseg_bench.metrics.evaluate import missing_predictions

    check_folder("--pred", pred)  # a file given for either was "prediction folder not found", exit 3
    check_folder("--ref", ref)
    if output is not None:
        from medseg_bench.report.formats import check_output_file

        check_output_file(output)  # before scoring, which can take minutes
    if fmt is None and output is not None:
        from medseg_bench.report.formats import EXTENSIONS

        fmt = EXTENSIONS.get(output.suffix.lower(), "markdown")  # another extension (.txt): text, markdown
        if fmt not in FORMATS:
            raise UsageError(f"'{output.name}' asks for {fmt}; evaluate writes csv, json or markdown (.csv, "
                             ".json, .md): pass --format or change the name")
    fmt = fmt or "markdown"
    if fmt not in FORMATS:
        from medseg_bench.registry import choice_hint

        raise UsageError(f"unknown format '{fmt}'; {choice_hint(fmt, FORMATS)}")
    if output is not None:
        from medseg_bench.report.formats import check_output_format

        check_output_format(fmt, output)  # `--format csv -o scores.json`: as report, refused
    if task is not None and regions_from is not None:
        raise UsageError("give --task or --regions-from, not both")
    if regions is not None and regions_from is not None:
        raise UsageError("give --regions or --regions-from, not both")
    spec = _task(task or regions_from)
    if regions_from is not None and not spec.regions:
        raise UsageError(f"--regions-from: task {spec.name} declares no regions ({spec.source_file})")
    tolerance = nsd_tolerance if nsd_tolerance is not None else spec.nsd_tolerance_mm if spec else 1.0
    settings = MetricSettings(nsd_tolerance_mm=tolerance, surface=surface, empty_policy=empty_policy)
    wanted = _parse_labels(labels)
    if wanted is not None and task is not None:
        _check_task_labels("--labels", wanted, spec)
    groups: dict[str, list[int]] | None
    if regions is not None:
        groups = _parse_regions(regions)
        if spec:
            _check_task_labels("--regions", [v for values in groups.values() for v in values], spec)
    else:  # the task's (--task or --regions-from), if it declares any
        groups = {name: list(v) for name, v in spec.regions.items()} if spec and spec.regions else None
    from medseg_bench.cli import MAX_PROCESSES, check_range

    # by default one a core, held to what --workers may ask for: a machine of more cores than that is no typo
    processes = workers if workers is not None else min(os.cpu_count() or 1, MAX_PROCESSES)

    check_range("--workers", processes, 1, MAX_PROCESSES)
    cases = evaluate_folders(pred, ref, wanted, settings, workers=processes, regions=groups,
                             allow_missing=allow_missing, task=spec if task is not None else None)
    if cases.empty:  # no --labels, --task or --regions, and every label map is background only
        from medseg_bench.errors import DataError

        raise DataError(f"nothing to score: no reference in {ref} or prediction in {pred} holds a nonzero "
                        "label; give --labels or --task to score labels that are absent (both masks empty: "
                        "NaN)")
    if allow_missing:
        missing = missing_predictions(pred, ref)
        if missing:
            scored = cases["case"].nunique()
            typer.secho(
                one_line(f"note: {len(missing)} reference(s) in {ref} have no prediction in {pred} (first: "
                         f"{missing[0].name}); scored the {scored} case(s) that have one"),  # a file name
                err=True,
            )
    if task is None and wanted is None:
        _note_prediction_only_labels(cases)
    if regions is not None and spec is None and wanted is None:  # no task: against the references' labels
        found = set(_labels_in_references(cases))
        for name, values in (groups or {}).items():
            for value in sorted(set(values) - found):
                typer.secho(f"note: --regions: label {value} of region '{name}' is in no reference (labels "
                            f"found: {', '.join(map(str, sorted(found))) or 'none'})", err=True)
    means = summarize_cases(cases)
    for row in means.itertuples():
        if row.n_both_empty:
            kind = "region" if isinstance(row.label, str) else "label"
            of = f"{row.n_cases} case{'' if row.n_cases == 1 else 's'}"
            typer.secho(
                f"note: {kind} {row.label}: {row.n_both_empty} of {of} "
                f"{'has' if row.n_both_empty == 1 else 'have'} both masks empty "
                "(metrics NaN, left out of the mean)",
                err=True,
            )
    text = _render(cases, means, settings.to_dict(), fmt)
    if output is None:
        typer.echo(text, nl=False)
        return
    from medseg_bench.report.formats import write_atomic

    write_atomic(output, text)
    typer.secho(f"wrote {len(cases)} per-case rows and {len(means)} mean row(s) to {output}", err=True)


def _parse_labels(text: str | None) -> list[int] | None:
    from medseg_bench.errors import UsageError

    if text is None:
        return None
    values = _label_list(text)
    if values is None:
        raise UsageError(f"--labels must be comma-separated integers from 1 to 255 (label maps hold 0..255), "
                         f"got '{text}'")
    return values


def _label_list(text: str) -> list[int] | None:
    """'1, 2,2' -> [1, 2]; None unless it is a non-empty comma-separated list of integers in 1..255."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return None
    return sorted(set(values)) if values and min(values) >= 1 and max(values) <= 255 else None


def _parse_regions(text: str) -> dict[str, list[int]]:
    """'whole=1,2,3;core=2,3' -> {'whole': [1, 2, 3], 'core': [2, 3]}; a UsageError names what is wrong."""
    import re

    from medseg_bench.errors import UsageError

    found: dict[str, list[int]] = {}
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        name, sep, values = (piece.strip() for piece in item.partition("="))
        if not sep or not name or not values:
            raise UsageError(f"--regions: '{item}' is not NAME=LABELS (e.g. 'whole=1,2,3;core=2,3')")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]*", name):
            raise UsageError(f"--regions: region name '{name}' must start with a letter and hold only "
                             "letters, digits, '_', '.' and '-'")
        if name in found:
            raise UsageError(f"--regions: region '{name}' is given twice")
        labels = _label_list(values)
        if labels is None:
            raise UsageError(f"--regions: region '{name}' needs comma-separated labels from 1 to 255, got "
                             f"'{values}'")
        found[name] = labels
    if not found:
        raise UsageError(f"--regions: no region in '{text}' (e.g. 'whole=1,2,3;core=2,3')")
    return found


def _check_task_labels(option: str, values: list[int], spec: Any) -> None:
    from medseg_bench.errors import UsageError

    unknown = sorted(set(values) - set(spec.labels))
    if unknown:
        raise UsageError(f"{option}: label {unknown[0]} is not a label of {spec.name} "
                         f"({', '.join(f'{k}={n}' for k, n in spec.labels.items() if k)})")


def _labels_in_references(cases: Any) -> list[int]:
    """The labels (not regions) that some scored reference holds."""
    labels = cases[cases["label"].map(lambda v: not isinstance(v, str))]
    return sorted(int(v) for v in labels.loc[~labels["ref_empty"].astype(bool), "label"].unique())


def _note_prediction_only_labels(cases: Any) -> None:
    """Scored labels no reference holds: a label map numbered otherwise than its references, likely."""
    scored = {int(v) for v in cases["label"] if not isinstance(v, str)}
    only = sorted(scored - set(_labels_in_references(cases)))
    if only:
        named = f"label {only[0]} is" if len(only) == 1 else f"labels {', '.join(map(str, only))} are"
        typer.secho(f"note: {named} in no reference, only in predictions: scored as false positives (Dice 0 "
                    "where predicted); give --task or --labels to choose the labels", err=True)


def _task(name: str | None) -> Any:
    from medseg_bench.data.catalog import get_task

    return get_task(name) if name is not None else None


def _render(cases: Any, means: Any, settings: dict[str, object], fmt: str) -> str:
    import json

    import pandas as pd

    columns = list(cases.columns)  # case, label, METRIC_NAMES, flags: a run's metrics.csv order
    if fmt == "csv":  # for people: a case named `=HYPERLINK(...)` is text in a spreadsheet
        from medseg_bench.report.formats import spreadsheet_table

        # a mean row's case is empty: "mean" was also the row of a case named so (`mean.nii.gz`), while no
        # case id is empty (`.nii.gz` is a hidden file, never read)
        mean_rows = means.assign(case=MEAN_CASE, ref_empty="", pred_empty="")[columns]
        joined = pd.concat([cases.astype(object), mean_rows.astype(object)])
        return spreadsheet_table(joined).to_csv(index=False)
    if fmt == "json":
        payload = {
            "settings": settings,
            "cases": _records(cases),
            "means": _records(means),
        }
        return json.dumps(payload, indent=2) + "\n"
    setting_line = ", ".join(f"{key}={value}" for key, value in settings.items())
    return (
        _markdown(cases)
        + "\n**Means per label** (cases with both masks empty are left out and counted in `n_both_empty`)\n\n"
        + _markdown(means)
        + f"\nSettings: {setting_line}; distances in mm.\n"
    )


def _records(frame: Any) -> list[dict[str, object]]:
    import math

    def clean(value: object) -> object:
        if hasattr(value, "item"):
            value = value.item()  # numpy scalar -> Python
        if isinstance(value, float) and not math.isfinite(value):
            return None  # JSON has no NaN
        return value

    return [{key: clean(value) for key, value in row.items()} for row in frame.to_dict(orient="records")]


def _markdown(frame: Any) -> str:
    """A markdown table of `frame`; its text cells (case ids from file names, region names) escaped as the
    report's names are (`md_text`): a case `a|b` added a column, `**x**` was bold, an escape code reached the
    terminal or the `--output` file."""
    from medseg_bench.report.formats import md_text

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "NaN" if value != value else f"{value:.4f}"
        return md_text(value) if isinstance(value, str) else str(value)

    header = "| " + " | ".join(frame.columns) + " |\n"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|\n"
    body = "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))
    return header + rule + body
