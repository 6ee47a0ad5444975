"""Score label maps: one case in memory (`evaluate_case`), or folders of label files in parallel.

One pass finds every label's bounding box (scipy.ndimage.find_objects); each label is then scored on the
union of its prediction and reference boxes only, and all distance metrics come from one set of distances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from medseg_bench.errors import DataError, UsageError
from medseg_bench.metrics.info import METRIC_NAMES, METRICS, Measured, MetricSettings
from medseg_bench.metrics.surface import (
    nonzero_box,
    set_distance_threads,
    surface_distances_in_box,
    union_box,
)

if TYPE_CHECKING:
    import pandas as pd

    from medseg_bench.data.io import Geometry
    from medseg_bench.spec import TaskSpec

DEFAULT_SETTINGS = MetricSettings()
Box = tuple[slice, ...]


def evaluate_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing_mm: Sequence[float],
    labels: Sequence[int],
    settings: MetricSettings = DEFAULT_SETTINGS,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> list[dict[str, object]]:
    """Every metric for each label (then each region, a union of labels) of one prediction/reference pair.

    `pred` and `ref` are integer label maps of the same 2D or 3D shape; `spacing_mm` is in the same axis order
    as the arrays; a 3D pair one voxel thick along an axis is scored as the 2D pair it is (`evaluate`, and a
    run's held-out cases, alike). Returns one dict per label then per region, with keys `label` (the label
    value or region name), the metric names of `METRICS` (distances in mm), `ref_empty` and `pred_empty`.

    Example:
        >>> rows = evaluate_case(pred, ref, spacing_mm=(2.5, 0.8, 0.8), labels=[1, 2])
        >>> rows[0]["hd95"]
    """
    pred, ref, spacing = _one_slice_as_2d(*_validated(pred, ref, spacing_mm))
    targets: list[tuple[int | str, tuple[int, ...]]] = [(int(label), (int(label),)) for label in labels]
    targets += [(str(name), tuple(int(v) for v in values)) for name, values in (regions or {}).items()]
    for _, values in targets:
        if not values or min(values) < 1:
            raise UsageError(f"labels to evaluate must be >= 1 (0 is background), got {list(values)}")
    max_label = max((max(values) for _, values in targets), default=0)
    pred_boxes = _label_boxes(pred, max_label)
    ref_boxes = _label_boxes(ref, max_label)
    diagonal_mm = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True)))
    return [
        {"label": key, **_score(pred, ref, spacing, values, pred_boxes, ref_boxes, settings, diagonal_mm)}
        for key, values in targets
    ]


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    labels: Sequence[int] | None = None,
    settings: MetricSettings = DEFAULT_SETTINGS,
    workers: int = 1,
    regions: Mapping[str, Sequence[int]] | None = None,
    allow_missing: bool = False,
    task: TaskSpec | None = None,
) -> pd.DataFrame:
    """Score every prediction in `pred_dir` (NIfTI, NRRD, MHA, MHD) against the reference of the same case
    name in `ref_dir` (in any of those formats).

    Returns one row per case and label (column `case` first, then `label`, the metrics, `ref_empty`,
    `pred_empty`), sorted by case. `labels=None` scores `task`'s foreground labels, as a run of it scores its
    held-out cases; without a task, every nonzero label found in any reference or prediction (a label only
    predictions hold is scored: its false positives give Dice 0). Cases run in `workers` processes (1 =
    inline). Raises DataError for a missing reference, for a reference without a prediction (unless
    `allow_missing`; `missing_predictions` lists them), for a NIfTI file cut short, for a prediction whose
    geometry (size, spacing, origin, direction) differs from its reference's, or, with a `task`, for a file
    holding a value that is not one of its labels. A label map with a single slice (a 2D file, or a 3D one of
    one slice) is scored in 2D: contour lengths and in-plane distances.
    """
    import pandas as pd

    pairs, missing = _file_pairs(Path(pred_dir), Path(ref_dir))
    if missing and not allow_missing:
        _refuse_missing(missing, Path(pred_dir))
    if labels is None and task is not None:
        labels = task.foreground_labels
    wanted = None if labels is None else tuple(int(label) for label in labels)
    known = None if task is None else (task.name, tuple(sorted(task.labels)))
    jobs = [(case, pred, ref, wanted, settings, dict(regions or {}), known) for case, pred, ref in pairs]
    if workers <= 1 or len(jobs) == 1:
        results = [_evaluate_file_pair(*job) for job in jobs]
    else:
        from medseg_bench.data.parallel import worker_pool

        # Spawned workers that die with us; Ctrl-C or an error cancels the queued cases at once.
        with worker_pool(min(workers, len(jobs)), set_distance_threads, (1,)) as pool:
            assert pool is not None
            results = list(pool.map(_evaluate_file_pair, *zip(*jobs, strict=True)))
    rows = [row for case_rows in results for row in case_rows]
    if wanted is None:  # each case scored its own labels: give every case a row (both empty) for all of them
        found = sorted({row["label"] for row in rows if isinstance(row["label"], int)})
        rows = _complete_rows(rows, [case for case, _, _ in pairs], found, list(regions or {}))
    columns = ["case", "label", *METRIC_NAMES, "ref_empty", "pred_empty"]
    return pd.DataFrame(rows, columns=columns)


def summarize_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per label over the cases where it is defined (NaN skipped), with counts.

    `n_cases` counts all cases; `n_both_empty` counts the cases left out because both masks were empty.
    """
    import pandas as pd

    means = []
    for label, group in frame.groupby("label", sort=False):
        both_empty = group["ref_empty"] & group["pred_empty"]
        row: dict[str, object] = {"label": label}
        row.update({name: float(group[name].mean(skipna=True)) for name in METRIC_NAMES})
        row.update(n_cases=len(group), n_both_empty=int(both_empty.sum()))
        means.append(row)
    return pd.DataFrame(means, columns=["label", *METRIC_NAMES, "n_cases", "n_both_empty"])


# --- internals -------------------------------------------------------------------------------------------


def _validated(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float]):
    pred, ref = np.asarray(pred), np.asarray(ref)
    for name, array in (("prediction", pred), ("reference", ref)):
        if array.dtype == bool:
            continue
        if not np.issubdtype(array.dtype, np.integer):
            raise DataError(f"{name} label map has dtype {array.dtype}; expected integer labels")
    if pred.shape != ref.shape:
        raise DataError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if pred.ndim not in (2, 3):
        raise DataError(f"label maps must be 2D or 3D, got shape {pred.shape}")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) != pred.ndim or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise DataError(f"spacing {spacing} does not fit {pred.ndim}D label maps of shape {pred.shape}")
    return pred, ref, spacing


def _label_boxes(labels: np.ndarray, max_label: int) -> list[Box | None]:
    """Bounding box of every label 1..max_label (None where the label is absent).

    find_objects is one pass but slow per voxel, so it runs only on the box of all nonzero voxels (see
    `nonzero_box`); in a CT volume that box is usually a small part of the image.
    """
    if max_label < 1:
        return []
    outer = nonzero_box(labels)
    if outer is None:
        return [None] * max_label
    inner = labels[outer].view(np.uint8) if labels.dtype == bool else labels[outer]
    return [None if box is None else _shifted(box, outer) for box in ndimage.find_objects(inner, max_label)]


def _shifted(box: Box, outer: Box) -> Box:
    return tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, outer, strict=True))


def present_labels(labels: np.ndarray) -> list[int]:
    """The nonzero label values present in an integer label map."""
    outer = nonzero_box(labels)
    if outer is None:
        return []
    block = labels[outer]
    return [int(v) for v in np.unique(block) if v > 0]


def _score(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    values: tuple[int, ...],
    pred_boxes: list[Box | None],
    ref_boxes: list[Box | None],
    settings: MetricSettings,
    diagonal_mm: float,
) -> dict[str, object]:
    pred_box = union_box([pred_boxes[v - 1] for v in values])
    ref_box = union_box([ref_boxes[v - 1] for v in values])
    flags = {"ref_empty": ref_box is None, "pred_empty": pred_box is None}
    box = union_box([pred_box, ref_box])
    if box is None:
        return {**dict.fromkeys(METRIC_NAMES, math.nan), **flags}
    pred_mask = _mask(pred[box], values)
    ref_mask = _mask(ref[box], values)
    distances = (None if pred_box is None or ref_box is None
                 else surface_distances_in_box(pred_mask, ref_mask, spacing, settings.surface))
    measured = Measured(int(np.count_nonzero(pred_mask & ref_mask)), int(np.count_nonzero(pred_mask)),
                        int(np.count_nonzero(ref_mask)), distances, settings, diagonal_mm)
    return {**{name: float(METRICS.get(name).compute(measured)) for name in METRIC_NAMES}, **flags}


def _mask(crop: np.ndarray, values: tuple[int, ...]) -> np.ndarray:
    return crop == values[0] if len(values) == 1 else np.isin(crop, values)


def missing_predictions(pred_dir: Path, ref_dir: Path) -> list[Path]:
    """The reference files in `ref_dir` whose case has no prediction in `pred_dir` (in any format)."""
    from medseg_bench.data.io import files_by_case

    preds = files_by_case(Path(pred_dir), "a prediction")
    return [ref for case, ref in files_by_case(Path(ref_dir), "a reference").items() if case not in preds]


def _refuse_missing(missing: list[Path], pred_dir: Path) -> None:
    """The DataError for references without a prediction (`missing`, not empty)."""
    from medseg_bench.data.io import case_name

    first, more = missing[0], len(missing) - 1
    others = f" (and {more} more)" if more else ""
    raise DataError(f"{first}: no prediction of case '{case_name(first)}' in {pred_dir}{others}; predict "
                    "every reference, or allow missing predictions (--allow-missing) to score the others")


def _file_pairs(pred_dir: Path, ref_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    """(case, prediction, reference) for every prediction, paired by case name: `a.nii.gz` with `a.nii.gz`, or
    with `a.nrrd` (formats may differ; the geometry is checked); and the references without a prediction."""
    from medseg_bench.data.io import IMAGE_SUFFIXES, files_by_case

    for folder, role in ((pred_dir, "prediction"), (ref_dir, "reference")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {role} folder not found")
    suffixes = ", ".join("*" + s for s in IMAGE_SUFFIXES)
    preds = files_by_case(pred_dir, "a prediction")
    if not preds:
        raise DataError(f"{pred_dir}: no prediction files ({suffixes})")
    refs = files_by_case(ref_dir, "a reference")
    if not refs:  # else the first prediction's "no reference of case ...", as if one case lacked its file
        raise DataError(f"{ref_dir}: no reference files ({suffixes})")
    pairs = []
    for case, pred in preds.items():
        if case not in refs:
            raise DataError(f"{pred}: no reference of case '{case}' in {ref_dir}")
        pairs.append((case, pred, refs[case]))
    return pairs, [ref for case, ref in refs.items() if case not in preds]


def _evaluate_file_pair(
    case: str,
    pred_path: Path,
    ref_path: Path,
    labels: tuple[int, ...] | None,
    settings: MetricSettings,
    regions: dict[str, Sequence[int]],
    known: tuple[str, tuple[int, ...]] | None = None,
) -> list[dict[str, object]]:
    """Worker: read, check geometry (and, with `known` = (task name, its label values), the values), score;
    `labels=None`: the labels either file holds. Top level so that spawned processes can import it."""
    pred, pred_geometry = _read_label_map(pred_path)
    ref, ref_geometry = _read_label_map(ref_path)
    problem = pred_geometry.mismatch(ref_geometry)
    if problem:
        raise DataError(f"{pred_path}: geometry differs from reference {ref_path} ({problem})")
    pred_labels, ref_labels = present_labels(pred), present_labels(ref)
    if known is not None:
        _check_known_values(pred_path, pred_labels, known)
        _check_known_values(ref_path, ref_labels, known)
    if labels is None:
        labels = tuple(sorted(set(ref_labels) | set(pred_labels)))
    rows = evaluate_case(pred, ref, ref_geometry.spacing_zyx, labels, settings, regions)
    return [{"case": case, **row} for row in rows]


def _check_known_values(path: Path, present: list[int], known: tuple[str, tuple[int, ...]]) -> None:
    """A value that is not one of the task's labels is an error, as `validate` excludes such a case from runs
    (a run's networks predict the task's labels only)."""
    task_name, values = known
    extra = sorted(set(present) - set(values))
    if extra:
        raise DataError(f"{path}: label values {extra} not among {task_name}'s labels "
                        f"({', '.join(map(str, values))})")


def _read_label_map(path: Path) -> tuple[np.ndarray, Geometry]:
    """A label map as read_label gives it, (Z, Y, X); a 2D file as a (Y, X) array, with its 2D geometry.

    The file is checked complete first, and free of NaN and inf: SimpleITK reads a NIfTI cut short as if its
    missing voxels were 0, and a NIfTI's NaN and inf voxels as 0 (background)."""
    from medseg_bench.data.io import read_geometry, read_label
    from medseg_bench.data.nifti import count_nonfinite

    if count_nonfinite(path):
        raise DataError(f"{path}: label map holds NaN or inf voxels")
    try:
        return read_label(path)
    except DataError:
        geometry, channels = read_geometry(path)
        if len(geometry.size) != 2 or channels != 1:
            raise
    return _read_2d_label(path, geometry)


def _read_2d_label(path: Path, geometry: Geometry) -> tuple[np.ndarray, Geometry]:
    """A 2D single-channel label map as a (Y, X) uint8 array, checked as read_label checks 3D ones."""
    from medseg_bench.data.io import label_values, read_sitk_image, sitk_module

    image = read_sitk_image(path)
    values = sitk_module().GetArrayViewFromImage(image)  # ITK's buffer: `image` held while it is checked
    if values.ndim != 2:
        raise DataError(f"{path}: unsupported image layout with array shape {values.shape}")
    return label_values(values, path), geometry


def _one_slice_as_2d(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A 3D pair of one slice (shape (1, Y, X), or one row or column) as the 2D pair it is, with 2 spacings.

    Scored in 3D, the slab's two faces would count as surface: every voxel of the mask would be a surface
    element, and ASSD and NSD would measure the masks' overlap rather than their outlines.
    """
    if pred.ndim != 3 or [n == 1 for n in pred.shape].count(True) != 1:
        return pred, ref, spacing
    axis = pred.shape.index(1)
    kept = tuple(s for a, s in enumerate(spacing) if a != axis)
    return np.take(pred, 0, axis=axis), np.take(ref, 0, axis=axis), kept


def _complete_rows(
    rows: list[dict[str, object]], cases: list[str], labels: list[int], region_names: list[str]
) -> list[dict[str, object]]:
    by_key = {(row["case"], row["label"]): row for row in rows}
    empty = {**dict.fromkeys(METRIC_NAMES, math.nan), "ref_empty": True, "pred_empty": True}
    return [
        by_key.get((case, key), {"case": case, "label": key, **empty})
        for case in cases
        for key in [*labels, *region_names]
    ]
