"""The preprocessed cache: one set of uncompressed `.npy` files per case, per (task, preprocessing hash).

Layout of `<data_dir>/preprocessed/<Task>/`:
    fingerprint.json, plan.json, splits_<k>fold.json
    <hash>/<case>.img.npy   float32 (C, Z, Y, X), normalised
    <hash>/<case>.seg.npy   uint8 (Z, Y, X)
    <hash>/<case>.json      properties: original geometry (spacing, origin, direction, shape), crop box,
                            preprocessed spacing, paths of the original image and label and what they were
                            (`sources`: size, modification time, md5), foreground sample coordinates; written
                            last: a case without it is unfinished and rebuilt
    <hash>-2d/...           the same for 2D runs that keep each case's slice spacing (`own_slices`), only
                            where that differs from <hash>/ on some case

Cached arrays are cropped to the non-zero region and resampled to the plan's target spacing (`own_slices`:
in plane only, as nnU-Net's 2d configuration); `resample.to_original` maps a prediction back onto the
original image grid.

Every prepare checks that each case's image and label are still the files its entry was made from
(`check_sources`): one replaced since (a task fetched again into the same data dir, a label corrected) stops
it with one line naming the file, as the fingerprint, plan and cache describe the earlier data. A file only
touched or copied (another time, the same md5), or a data dir moved, is recorded anew.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medseg_bench.checks import are_whole, is_spacing, shown, usable_memory
from medseg_bench.data.fetch import is_complete, read_marker, unfetched
from medseg_bench.data.io import Geometry, read_label, sitk_module
from medseg_bench.data.msd import Case, training_cases
from medseg_bench.data.normalize import nonzero_mask, normalize
from medseg_bench.data.parallel import default_workers, parallel_map, pool_size, worker_pool
from medseg_bench.data.plan import (
    Budget,
    Plan,
    check_declared_labels,
    load_or_make_plan,
    slice_target_spacing,
)
from medseg_bench.data.preprocess_memory import CaseSize, cases_at_once
from medseg_bench.data.resample import (
    crop,
    nonzero_box,
    resample_image,
    resample_label,
    separate_axis,
    target_shape,
)
from medseg_bench.data.splits import load_or_make_splits
from medseg_bench.data.validate import read_case
from medseg_bench.errors import DataError, first_line
from medseg_bench.files import atomic_binary, load_json_object, write_json_atomic
from medseg_bench.spec import TaskSpec

FOREGROUND_SAMPLES = 2000


@dataclass(frozen=True)
class PreparedTask:
    """A task ready for training: its plan, its cache folder(s) and its splits."""

    task: TaskSpec
    plan: Plan
    cache_dir: Path
    case_ids: list[str]
    splits: list[dict[str, list[str]]]
    # the cache of runs that keep each case's slice spacing (`RunSpec.own_slice_spacing`): `cache_dir` when
    # no case's slices are resampled; None when `prepare_task` was not asked for it
    own_slices_dir: Path | None = None

    def cache_for(self, own_slices: bool) -> Path:
        """The cache a run reads: `own_slices` as its spec's `own_slice_spacing`."""
        if not own_slices:
            return self.cache_dir
        if self.own_slices_dir is None:
            raise RuntimeError(f"{self.task.name}: prepared without the cache of 2D runs that keep their "
                               "slices (prepare_task(own_slices=True))")
        return self.own_slices_dir


@dataclass(frozen=True)
class PlannedTask:
    """A task planned and split, its cache not (necessarily) built: what an interrupted run's setup is checked
    against before a sweep builds the cache (`sweep.worker.setup_problem`), a build a changed target spacing
    makes long."""

    task: TaskSpec
    plan: Plan
    root: Path  # <data_dir>/preprocessed/<Task>: plan.json, the splits files, the caches
    case_ids: list[str]
    splits: list[dict[str, list[str]]]


class _PythonWrites:
    """A file for `np.save` that is not a file object to numpy: it writes through Python's `write`, whose
    OSError says why (ENOSPC: "No space left on device"), not through C's fwrite, whose short write numpy
    reports as "61880 requested and 12160 written" (no errno: a full disk read as an unknown failure)."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_binary(path) as fh:  # a full disk names the array not written, and leaves no temp
        np.save(_PythonWrites(fh), array)


def case_target_spacing(plan: Plan, spacing_zyx: Sequence[float],
                        own_slices: bool = False) -> tuple[float, ...]:
    """The spacing a case of `spacing_zyx` is resampled to: the plan's target, or with `own_slices` its own
    along the slice axis (`plan.slice_target_spacing`)."""
    target = tuple(plan.target_spacing)
    return slice_target_spacing(target, spacing_zyx) if own_slices else target


def resampling(cropped_shape: Sequence[int], spacing_zyx: Sequence[float],
               target_zyx: Sequence[float]) -> tuple[tuple[int, ...], int | None]:
    """What resampling a cropped case to `target_zyx` does: the new shape, and the axis resampled on its own
    (None also when nothing is resampled). Two targets with the same answer give the same arrays."""
    shape = target_shape(cropped_shape, spacing_zyx, target_zyx)
    moved = shape != tuple(int(s) for s in cropped_shape)
    return shape, separate_axis(spacing_zyx, target_zyx) if moved else None


def crop_box(image: np.ndarray, plan: Plan) -> list[list[int]]:
    """The region of a (C, Z, Y, X) image the cache keeps: its non-zero box, or all of it."""
    return nonzero_box(image) if plan.crop_to_nonzero else [[0, int(s)] for s in image.shape[1:]]


def _outside_matters(cropped: np.ndarray, plan: Plan, new_shape: Sequence[int]) -> bool:
    """Whether nnU-Net's rule for resampling a label map can change it (`crop_to_nonzero`: background outside
    the non-zero mask of the image, any channel, holes filled, is labelled -1 first): not when nothing is
    resampled, without a crop to the non-zero region, or with no zero voxel in the crop box."""
    if not plan.crop_to_nonzero or tuple(new_shape) == tuple(cropped.shape[1:]):
        return False
    return not np.any(cropped != 0, axis=0).all()


def preprocess_image(image: np.ndarray, spacing_zyx: Sequence[float], plan: Plan,
                     label: np.ndarray | None = None, own_slices: bool = False,
                     ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """What the cache applies to a (C, Z, Y, X) image (and its label): crop to the non-zero region, normalise,
    resample to the plan's target spacing (`own_slices`: in plane only, `case_target_spacing`). Returns both
    arrays and the grid properties that `resample.to_original` needs to map a prediction back (crop box,
    original and preprocessed spacing/shape).
    """
    original_shape = [int(s) for s in image.shape[1:]]
    box = crop_box(image, plan)
    cropped = crop(image, box)
    target = case_target_spacing(plan, spacing_zyx, own_slices)
    new_shape, separate = resampling(cropped.shape[1:], spacing_zyx, target)
    per_channel = plan.normalization == "per_channel"
    outside = label is not None and _outside_matters(cropped, plan, new_shape)
    # The non-zero mask, filled once for both uses: the crop's equals the whole image's mask cropped (the box
    # holds every non-zero voxel, so no hole crosses its faces).
    masked = per_channel and any(s.get("nonzero_mask") for s in plan.channel_normalization or ())
    mask = nonzero_mask(cropped) if outside or masked else None
    if per_channel:  # crop, then normalise with the cropped case's statistics
        normalized = normalize(cropped, plan, None if label is None else crop(label, box), mask)
    else:  # an older plan: normalised before cropping, its per-case mask rule seeing the whole image
        normalized = crop(normalize(image, plan), box)
    normalized = np.ascontiguousarray(resample_image(normalized, new_shape, separate), dtype=np.float32)
    if label is not None:
        label = np.ascontiguousarray(resample_label(crop(label, box), new_shape, separate,
                                                    ~mask if outside and mask is not None else None))
    grid = {"shape_original_zyx": original_shape, "spacing_original_zyx": list(spacing_zyx),
            "spacing_preprocessed_zyx": list(target), "crop_box": box}
    return normalized, label, grid


def preprocess_case(case: Case, plan: Plan, out_dir: Path, own_slices: bool = False,
                    task: TaskSpec | None = None) -> str:
    """Read, crop, normalise, resample and store one case; return its id. Safe to run in a worker process.
    With `task`, its channels and label values are checked against the task's (`validate.read_case`)."""
    sources = {"image": source_record(case.image), "label": source_record(case.label)}  # before it is read
    image, geom, label = read_case(case, task)
    spacing = geom.spacing_zyx
    normalized, resampled, grid = preprocess_image(image, spacing, plan, label, own_slices)
    assert resampled is not None
    label = resampled
    rng = np.random.default_rng(0)
    foreground: dict[str, list[list[int]]] = {}
    for value in np.unique(label):
        if value == 0:
            continue
        coords = np.argwhere(label == value)
        take = rng.choice(len(coords), min(FOREGROUND_SAMPLES, len(coords)), replace=False)
        foreground[str(int(value))] = coords[np.sort(take)].tolist()
    _save_npy_atomic(out_dir / f"{case.case_id}.img.npy", normalized)
    _save_npy_atomic(out_dir / f"{case.case_id}.seg.npy", label)
    write_json_atomic(
        out_dir / f"{case.case_id}.json",
        {
            "case_id": case.case_id,
            "image": str(case.image),
            "label": str(case.label),
            "sources": sources,
            "shape_zyx": list(label.shape),
            "geometry": geom.to_dict(),  # of the original image
            **grid,
            "foreground": foreground,
        },
        compact=True,
        durable=False,
    )
    return case.case_id


def excluded_cases(folder: Path) -> set[str]:
    """Case ids that the task's marker lists as excluded by validation."""
    return {entry["case"] for entry in read_marker(folder).get("excluded", [])}


def usable_cases(task: TaskSpec, data_dir: Path) -> list[Case]:
    """The training cases of a fetched task, less those its validation excluded."""
    folder = data_dir / task.name
    if not is_complete(folder):
        raise unfetched(folder)
    excluded = excluded_cases(folder)
    cases = [c for c in training_cases(folder) if c.case_id not in excluded]
    if not cases:
        raise DataError(f"{folder}: no usable training cases")
    return cases


def task_lock(task: str, data_dir: Path,
              say: Callable[[str], object] | None = None) -> contextlib.AbstractContextManager[None]:
    """The lock a task is planned and its caches built under (`DATA_DIR/preprocessed/.<Task>.lock`): by a
    sweep, its `--jobs` workers and SLURM jobs, and `plan`, one at a time. `say` is told once where another
    process holds it: a sweep started beside another one sat silent for the minutes the other took."""
    from medseg_bench.locks import exclusive

    def waiting() -> None:
        if say is not None:
            say(f"{task}: another process is planning it or building its cache in "
                f"{data_dir / 'preprocessed'}; waiting for it")

    return exclusive(data_dir / "preprocessed", f".{task}.lock", on_wait=waiting)


def prepare_task(
    task: TaskSpec,
    data_dir: Path,
    num_folds: int = 5,
    workers: int | None = None,
    progress: bool = False,
    budget: Budget | None = None,
    own_slices: bool = False,
) -> PreparedTask:
    """Fingerprint, plan, cache and split a fetched task; every step is skipped when its artifact exists.

    `budget` re-sizes the plan's patches and batches (see `plan.load_or_make_plan`). `own_slices`: also the
    cache of 2D runs that keep each case's slice spacing (`PreparedTask.cache_for`), built only where some
    case's slices are resampled in the 3D cache.
    """
    cases = usable_cases(task, data_dir)
    own_slices_dir = None
    with worker_pool(workers or default_workers(len(cases))) as pool:  # one pool for every stage
        planned = _plan_and_split(task, cases, data_dir, num_folds, budget, progress, pool)
        plan, root = planned.plan, planned.root
        cache_dir = root / plan.preprocessing_hash
        build_cache(cases, plan, cache_dir, workers=workers, progress=progress, pool=pool, task=task)
        if own_slices:
            own_slices_dir = cache_dir
            if not _same_with_own_slices(cache_dir, cases, plan):
                own_slices_dir = root / f"{plan.preprocessing_hash}-2d"
                build_cache(cases, plan, own_slices_dir, workers=workers, progress=progress, pool=pool,
                            own_slices=True, task=task)
    return PreparedTask(task, plan, cache_dir, planned.case_ids, planned.splits, own_slices_dir)


def plan_task(task: TaskSpec, data_dir: Path, num_folds: int = 5, workers: int | None = None,
              progress: bool = False) -> PlannedTask:
    """`prepare_task`'s steps before the cache: fingerprint (where there is no plan), plan and split a
    fetched task. A sweep checks its interrupted runs against them before it builds the cache."""
    cases = usable_cases(task, data_dir)
    # a pool starts no process until it is given work: none where the task has its plan
    with worker_pool(workers or default_workers(len(cases))) as pool:
        return _plan_and_split(task, cases, data_dir, num_folds, None, progress, pool)


def _plan_and_split(task: TaskSpec, cases: list[Case], data_dir: Path, num_folds: int, budget: Budget | None,
                    progress: bool, pool: Executor | None) -> PlannedTask:
    """The plan (made where there is none) and the splits (made where there are none) of `cases`; split before
    the cache is built, so that a splits file the sweep refuses stops it before that build."""
    root = data_dir / "preprocessed" / task.name
    plan = load_or_make_plan(task, cases, root, budget, progress=progress, pool=pool)
    check_declared_labels(task, cases, root)
    case_ids = sorted(c.case_id for c in cases)
    return PlannedTask(task, plan, root, case_ids, load_or_make_splits(root, case_ids, num_folds,
                                                                       task.group_pattern))


def _same_with_own_slices(cache_dir: Path, cases: list[Case], plan: Plan) -> bool:
    """Whether every case of the (built) 3D cache would be resampled alike at its own slice spacing: then
    2D runs that keep their slices read the 3D cache (Task04_Hippocampus: no case is resampled at all)."""
    geometries = []
    for case in cases:
        props = _case_properties(cache_dir / f"{case.case_id}.json")
        geometries.append(([hi - lo for lo, hi in props["crop_box"]], props["spacing_original_zyx"]))
    return _resampled_alike(geometries, plan)


def _resampled_alike(geometries: Sequence[tuple[Sequence[int], Sequence[float]]], plan: Plan) -> bool:
    """Whether every case of these (cropped shape, spacing) is resampled alike at its own slice spacing."""
    return all(resampling(cropped, spacing, case_target_spacing(plan, spacing))
               == resampling(cropped, spacing, case_target_spacing(plan, spacing, own_slices=True))
               for cropped, spacing in geometries)


def build_cache(
    cases: list[Case],
    plan: Plan,
    cache_dir: Path,
    workers: int | None = None,
    progress: bool = False,
    pool: Executor | None = None,
    own_slices: bool = False,
    task: TaskSpec | None = None,
) -> None:
    """Build the missing cases of the cache (in parallel); finished cases are kept, partial ones redone.
    `own_slices`: each case keeps its slice spacing (`preprocess_image`); `task`: see `preprocess_case`."""
    if is_built(cache_dir, cases):
        check_cache(cache_dir, cases)
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    for leftover in cache_dir.glob(".*.tmp"):
        leftover.unlink()
    todo = [c for c in cases if not (cache_dir / f"{c.case_id}.json").is_file()]
    if todo:
        running = pool_size(pool, workers, len(todo))
        sitk_module()  # mapped before `usable_memory` counts what the process holds: a worker reads by it
        at_once = cases_at_once(case_sizes(todo, plan, cache_dir.parent, own_slices), running,
                                usable_memory(), cache_dir.parent / "plan.json")
        limited = f", {at_once} at a time (memory)" if at_once < running else ""
        parallel_map(
            partial(preprocess_case, plan=plan, out_dir=cache_dir, own_slices=own_slices, task=task),
            todo,
            workers,
            progress,
            f"preprocessing {len(todo)} case{'' if len(todo) == 1 else 's'}{limited}",
            pool,
            at_once,
        )
    check_cache(cache_dir, cases)  # the cases kept from before as well
    record = {"cases": sorted(c.case_id for c in cases), "plan": plan.to_dict()}
    write_json_atomic(cache_dir / "complete.json", record | {"own_slices": True} if own_slices else record)


def is_built(cache_dir: Path, cases: Sequence[Case]) -> bool:
    """Whether the cache in `cache_dir` was finished for exactly `cases` (its `complete.json` lists them):
    `build_cache` then only checks it, else it builds the cases missing. A damaged marker, or one of other
    cases, reads as an unfinished cache."""
    complete = cache_dir / "complete.json"
    marker, _ = load_json_object(complete) if complete.is_file() else (None, "")
    return marker is not None and marker.get("cases") == sorted(c.case_id for c in cases)


def caches_to_build(cases: Sequence[Case], plan: Plan, root: Path,
                    own_slices: bool = False) -> list[tuple[Path, bool]]:
    """The caches `prepare_task` would build for `cases` under `root` (each with its `own_slices`), those not
    built yet (`is_built`): the plan's, and with `own_slices` the one of 2D runs that keep their slices,
    unless the plan's cache, built, serves them as well (`_same_with_own_slices`). What `sweep --dry-run`
    checks."""
    cache_dir = root / plan.preprocessing_hash
    todo = [] if is_built(cache_dir, cases) else [(cache_dir, False)]
    if own_slices:
        if todo:  # the plan's cache not built: each case's geometry from the fingerprint, where it has all
            known = _fingerprint_geometries(cases, plan, root)
            same = len(known) == len(cases) and _resampled_alike(
                [(cropped, spacing) for _, cropped, spacing in known.values()], plan)
        else:
            same = _same_with_own_slices(cache_dir, list(cases), plan)
        if not same:
            own_dir = root / f"{plan.preprocessing_hash}-2d"
            todo += [] if is_built(own_dir, cases) else [(own_dir, True)]
    return todo


def check_caches_fit(cases: Sequence[Case], plan: Plan, root: Path, own_slices: bool = False) -> None:
    """The DataError the cache build stops on before it starts (`build_cache` through `cases_at_once`): a
    case of a cache not built yet (`caches_to_build`) that cannot be preprocessed even alone in the memory
    this process may use (a plan.json edited to a much finer target spacing), from the fingerprint. A sweep
    asks it before it builds anything, and its dry run."""
    from medseg_bench.data.preprocess_memory import check_all_fit

    memory = usable_memory()
    for _, own in caches_to_build(cases, plan, root, own_slices):  # as the cache build decides it
        check_all_fit(case_sizes(cases, plan, root, own), memory, root / "plan.json")


def case_sizes(cases: Sequence[Case], plan: Plan, root: Path, own_slices: bool = False) -> list[CaseSize]:
    """What each case's voxels become through preprocessing (read, cropped, resampled), from the task's
    fingerprint in `root`; the cases it does not hold (or all, where it cannot be read) are left out."""
    fp, _ = load_json_object(root / "fingerprint.json")
    known = _fingerprint_geometries(cases, plan, root, fp)
    if not known:
        return []
    assert fp is not None
    try:
        channels = max(1, len(fp["foreground_intensity"]))
    except (KeyError, TypeError):  # a damaged fingerprint: nothing known
        return []
    sizes = []
    for case in cases:
        if case.case_id in known:
            shape, cropped, spacing = known[case.case_id]
            resampled, _ = resampling(cropped, spacing, case_target_spacing(plan, spacing, own_slices))
            sizes.append(CaseSize(case.image, channels, shape, cropped, resampled))
    return sizes


def _fingerprint_geometries(cases: Sequence[Case], plan: Plan, root: Path, fp: dict | None = None,
                            ) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], list[float]]]:
    """Each case's shape, shape cropped as the plan crops it, and spacing (z, y, x), from the task's
    fingerprint in `root` (`fp`, where read already); those it does not hold (all, where it is damaged) are
    left out."""
    if fp is None:
        fp, _ = load_json_object(root / "fingerprint.json")
    if fp is None:
        return {}
    try:
        index = {case_id: i for i, case_id in enumerate(fp["cases"])}
        known = {}
        for case in cases:
            if case.case_id in index:
                i = index[case.case_id]
                shape = tuple(int(n) for n in fp["shapes_zyx"][i])
                cropped = (tuple(int(n) for n in fp["cropped_shapes_zyx"][i]) if plan.crop_to_nonzero
                           else shape)
                known[case.case_id] = (shape, cropped, [float(v) for v in fp["spacings_zyx"][i]])
        return known
    except (KeyError, IndexError, TypeError, ValueError):  # a damaged fingerprint: nothing known
        return {}


def _npy_problem(path: Path) -> str | None:
    """Why a cached `.npy` cannot be what we wrote (missing, not an array file, object data, or a size that
    does not match its header), or None. Reads the header only."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(fh)
            offset, size = fh.tell(), os.fstat(fh.fileno()).st_size
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError as exc:
        return f"not a numpy array file ({exc})"
    if dtype.hasobject:
        return "holds objects, not numbers"
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    return None if size == expected else f"{size} bytes, its header says {expected}"


def check_cache(cache_dir: Path, cases: Sequence[Case]) -> None:
    """Check that every case of a finished cache is whole (array headers and sizes, no voxel read; the
    properties its runs read), so a damaged file stops the sweep before any run (exit 3), not the run that
    happens to sample it; and that it was made from the case's files as they are now (`check_sources`)."""
    for case in cases:
        for suffix in (".img.npy", ".seg.npy"):
            path = cache_dir / f"{case.case_id}{suffix}"
            problem = _npy_problem(path)
            if problem:
                raise _corrupt(path, problem)
        path = cache_dir / f"{case.case_id}.json"
        props = _case_properties(path)
        problem = _properties_problem(props)
        if problem:
            raise _corrupt(path, problem)
        check_sources(case, props, path)


def source_record(path: Path) -> dict[str, Any]:
    """What a cache entry records of a file it is made from: size, modification time (ns) and md5. Taken
    before the file is read, so that a file changed while it is read differs from its record."""
    from medseg_bench.data.download import md5_of

    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5_of(path)}


def recorded_source(props: dict[str, Any], what: str) -> dict[str, Any] | None:
    """A cache entry's record (`source_record`) of the file its `what` ("image" or "label") was made from;
    None when it has none with an md5 (an entry written before caches recorded `sources`)."""
    sources = props.get("sources")
    recorded = sources.get(what) if isinstance(sources, dict) else None
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("md5"), str) else None


def check_sources(case: Case, props: dict[str, Any], path: Path) -> None:
    """DataError when the case's image or label is not the file its cache entry `path` was made from: replaced
    or edited since, its md5 differs (its size and time are compared first; the md5 is read only when they
    differ). A file with the same md5 (touched, copied) or at another path (the data dir moved) is recorded
    anew, so the paths evaluation reads are the case's. An entry written before caches recorded `sources` is
    not checked; a missing file is left for `read_case` to name."""
    from medseg_bench.data.download import md5_of

    changed = False
    for what, file in (("image", case.image), ("label", case.label)):
        if props.get(what) != str(file):  # the data dir moved (or was copied) since
            props[what], changed = str(file), True
        recorded = recorded_source(props, what)
        if recorded is None:
            continue
        try:
            stat = file.stat()
        except OSError:
            continue
        if [stat.st_size, stat.st_mtime_ns] == [recorded.get("size"), recorded.get("mtime_ns")]:
            continue
        digest = md5_of(file)
        if digest != recorded["md5"]:
            root = path.parent.parent
            raise DataError(f"{file}: changed since {root.name} was preprocessed (md5 {recorded['md5']}, now "
                            f"{digest}): its fingerprint, plan and cache describe the earlier data; delete "
                            f"{root} to plan and preprocess {root.name} again (a splits file of your own in "
                            "it: keep a copy; finished runs keep their results)")
        recorded.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        changed = True
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache: checked again (md5 read) next time
            write_json_atomic(path, props, compact=True, durable=False)


def _corrupt(path: Path, problem: str) -> DataError:
    return DataError(f"{path}: corrupt cache entry ({problem}); delete {path.parent} to rebuild")


def _case_properties(path: Path) -> dict[str, Any]:
    """A cached case's properties (its `.json`, a JSON object), or a DataError naming the file."""
    if not path.is_file():
        raise _corrupt(path, "missing")
    props, why = load_json_object(path)
    if props is None:
        raise _corrupt(path, why)
    return props


def _properties_problem(props: dict[str, Any]) -> str | None:
    """The first field of a cached case's properties that training, evaluation or prediction reads and that is
    missing or not as `preprocess_case` writes it (e.g. "no 'crop_box'"), or None."""
    checks: list[tuple[str, Callable[[Any], bool]]] = [
        ("label", lambda v: isinstance(v, str)),
        ("shape_original_zyx", lambda v: are_whole(v, 3, least=1)),
        ("spacing_original_zyx", is_spacing),
        ("spacing_preprocessed_zyx", is_spacing),
        ("crop_box", lambda v: _crop_box(v, props["shape_original_zyx"])),  # the shape: checked above
        ("foreground", lambda v: isinstance(v, dict) and all(map(_voxels, v.values()))),
    ]
    for key, valid in checks:
        if key not in props:
            return f"no '{key}'"
        if not valid(props[key]):
            return f"bad '{key}': {shown(props[key])}"
    return None


def _crop_box(box: object, shape: list[int]) -> bool:
    return isinstance(box, list) and len(box) == len(shape) and all(
        are_whole(pair, 2) and 0 <= pair[0] < pair[1] <= n for pair, n in zip(box, shape, strict=True))


def _voxels(coords: object) -> bool:
    """Whether `coords` is a non-empty list of (z, y, x) voxel indices (a class's foreground samples)."""
    try:
        array = np.asarray(coords)
    except ValueError:  # a ragged list
        return False
    return (isinstance(coords, list) and array.ndim == 2 and array.shape[1] == 3 and array.size > 0
            and array.dtype.kind in "iu" and array.min() >= 0)


def load_case(cache_dir: Path, case_id: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Image (C, Z, Y, X), label (Z, Y, X) and properties of one cached case; a DataError names a damaged
    file."""
    props = _case_properties(cache_dir / f"{case_id}.json")
    mode: Literal["r"] | None = "r" if mmap else None
    arrays = []
    for path in (cache_dir / f"{case_id}.img.npy", cache_dir / f"{case_id}.seg.npy"):
        try:
            arrays.append(np.load(path, mmap_mode=mode))
        except (OSError, ValueError) as exc:
            raise _corrupt(path, first_line(exc)) from None
    return arrays[0], arrays[1], props


def case_geometry(props: dict) -> Geometry:
    return Geometry.from_dict(props["geometry"])


def source_digest(cache_dir: Path, case_ids: Sequence[str]) -> str | None:
    """A digest of the files these cached cases were made from: each case id with its image's and label's md5,
    as the cache recorded them (`sources`), in case order. The same data gives the same digest wherever its
    data dir lies; a case replaced, or another subset of the task, another one. None when some case has no
    entry, or one that records no md5 (a cache from before entries recorded them)."""
    import hashlib

    entries = []
    for case_id in sorted(case_ids):
        try:
            props = _case_properties(cache_dir / f"{case_id}.json")
        except DataError:
            return None
        md5s = [record["md5"] for what in ("image", "label") if (record := recorded_source(props, what))]
        if len(md5s) < 2:
            return None
        entries.append([case_id, *md5s])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def stored_orientation(cache_dir: Path, case_ids: Sequence[str]) -> str | None:
    """How most of these cached cases' original images are stored (`Geometry.orientation`, from each case's
    properties: no image is read); None when none of them says."""
    from collections import Counter

    found: Counter[str] = Counter()
    for case_id in case_ids:
        try:
            orientation = case_geometry(_case_properties(cache_dir / f"{case_id}.json")).orientation
        except (DataError, KeyError, TypeError, ValueError):  # an entry without geometry says nothing
            continue
        if orientation is not None:
            found[orientation] += 1
    return found.most_common(1)[0][0] if found else None


def original_label(props: dict) -> tuple[np.ndarray, Geometry]:
    """The original label map of a cached case (read from the task folder), with its geometry."""
    if "label" not in props:
        raise DataError(
            f"case {props.get('case_id')}: cache entry has no label path; delete the cache to rebuild"
        )
    return read_label(Path(props["label"]))
