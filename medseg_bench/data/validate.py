"""Validation of a task folder: each problem is reported with its file; bad cases are excluded, not hidden."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medseg_bench.checks import MemoryLimit, usable_memory
from medseg_bench.data.io import (
    Geometry,
    data_file_outside,
    read_geometry,
    read_image,
    read_label,
    sitk_module,
    vector_components,
    vector_pixels,
)
from medseg_bench.data.metaimage import UNPARSED, Header, MetaHeader, check_header_complete, read_header
from medseg_bench.data.msd import Case, declared_labels, not_imported, read_dataset_json, training_cases
from medseg_bench.data.nifti import check_nifti_complete, count_nonfinite, image_bytes_limit
from medseg_bench.data.read_memory import VALIDATION, StoredCase, read_problem, reads_at_once, stored_case
from medseg_bench.errors import DataError, one_line
from medseg_bench.files import NAME_MAX, not_a_file
from medseg_bench.spec import TaskSpec


@dataclass(frozen=True)
class Problem:
    case_id: str
    file: str
    message: str
    imported_from: str = ""  # the user's file `file` was converted from, where its name differs (nnU-Net's)

    def __str__(self) -> str:
        source = f" (imported from {self.imported_from})" if self.imported_from else ""
        return one_line(f"{self.file}{source}: {self.message}")


@dataclass(frozen=True)
class ValidationReport:
    cases: list[Case]
    problems: list[Problem]
    # case id -> how its image's axes are stored (`Geometry.orientation`), for the cases read that far
    orientations: dict[str, str | None] = field(default_factory=dict)

    @property
    def excluded(self) -> set[str]:
        return {p.case_id for p in self.problems}

    @property
    def usable_cases(self) -> list[Case]:
        bad = self.excluded
        return [c for c in self.cases if c.case_id not in bad]


def check_case(case: Case, task: TaskSpec, allowed_labels: set[int], deep: bool,
               declared: set[int] | None = None,
               orientations: dict[str, str | None] | None = None,
               folder: Path | None = None,
               headers: Mapping[Path, MetaHeader | None] | None = None) -> list[Problem]:
    """All problems of one case; `deep` also reads voxels (label values, NaN/inf, damaged gzip streams).
    `orientations` gets the image's (`Geometry.orientation`) once its header is read. `folder`: the task
    folder, where a file whose header takes its voxels from outside it is a problem (`_read_from_outside`),
    found before anything reads them.

    Each file's MetaImage header is parsed once (`metaimage.read_header`; or by the caller, `headers`:
    `validate_folder`'s memory pre-pass), and that one passed to every check and read of the file: it was
    parsed three times without `deep`, five with it, and twice more by the pre-pass.

    An uncompressed NIfTI shorter than its header declares is caught either way: SimpleITK reads it, and a
    cut-short `.nii.gz`, without complaint (zero-filling the missing voxels), so both are checked on the raw
    bytes. With `deep`, a `.nii` is read once, where its size is checked, its NaN and inf counted then
    (`count_nonfinite`) and reported after the checks of its headers.
    """

    def problem(path: Path, message: str) -> list[Problem]:
        return [Problem(case.case_id, str(path), message)]

    def reason(exc: DataError) -> str:
        return str(exc).split(": ", 1)[-1]

    too_long = case_name_problem(case.case_id)
    if too_long:
        return problem(case.image, too_long)
    for path, what in ((case.image, "image"), (case.label, "label")):
        if not path.is_file():  # a folder of its name was "missing" until 2026-12-04
            why = not_a_file(path)
            return problem(path, f"{what} file is {why}" if why else f"{what} file missing")
    if case.label.samefile(case.image):  # read as a label, an image is "non-integer" or a flood of values
        return problem(case.label, "label is the image file itself (dataset.json names one file for both)")
    known: Mapping[Path, MetaHeader | None] = headers or {}
    headers = {path: known[path] if path in known else read_header(path)  # once both are found files
               for path in (case.image, case.label)}
    image_header, label_header = headers[case.image], headers[case.label]
    outside = _read_from_outside(case, folder, headers) if folder is not None else []
    if outside:
        return outside
    try:
        image_geom, channels = read_geometry(case.image, image_header)
    except DataError as exc:
        return problem(case.image, reason(exc))
    if orientations is not None:
        orientations[case.case_id] = image_geom.orientation
    try:  # vector pixels read as channels: "image is 4D, the task declares 3D" was all it said
        if channels > 1 and channels != task.num_channels and vector_components(case.image, image_header) > 1:
            return problem(case.image, _modalities_problem(channels, task, vector=True))
    except DataError as exc:
        return problem(case.image, reason(exc))
    try:
        label_geom, label_channels = read_geometry(case.label, label_header)
        label_vector = label_channels > 1 and vector_components(case.label, label_header) > 1
    except DataError as exc:
        return problem(case.label, reason(exc))
    if label_vector:
        return problem(case.label, f"{vector_pixels(label_channels)}; a label map holds one value per voxel")
    nonfinite: dict[Path, int] = {}  # a `.nii`'s NaN and inf, counted where `deep` reads it whole here
    for path in (case.image, case.label):  # each a header read and a stat: cheap enough without `deep`
        try:
            if path.name.lower().endswith(".nii") and deep:
                nonfinite[path] = count_nonfinite(path)  # checks it complete as check_nifti_complete
            elif path.name.lower().endswith(".nii"):
                check_nifti_complete(path)
            check_header_complete(path, headers[path])  # a MetaImage cut short; other formats pass
        except DataError as exc:
            return problem(path, reason(exc))
    ndim = 4 if task.tensor_image_size == "4D" else 3
    image_ndim = 4 if channels > 1 or len(image_geom.size) == 4 else len(image_geom.size)
    if image_ndim != ndim and not (ndim == 4 and channels == task.num_channels):
        return problem(case.image, f"image is {image_ndim}D, the task declares {task.tensor_image_size}")
    if channels != task.num_channels:
        return problem(case.image, _modalities_problem(channels, task))
    bad_spacing = spacing_problem(image_geom.spacing)
    if bad_spacing:
        return problem(case.image, bad_spacing)
    mismatch = label_geom.mismatch(image_geom)
    if mismatch:
        return problem(case.label, f"label geometry differs from the image's: {mismatch}")
    if not deep:
        return []
    try:
        label_nonfinite = nonfinite.get(case.label)
        if label_nonfinite is None:
            label_nonfinite = count_nonfinite(case.label)  # also checks the raw file complete
        label, _ = read_label(case.label, label_header)
    except DataError as exc:
        return problem(case.label, reason(exc))
    if label_nonfinite:  # read as 0 (background) by ITK's NIfTI reader
        return problem(case.label, "label map holds NaN or inf voxels")
    extra = sorted(set(_values(label)) - allowed_labels)
    if extra:
        if all(value in task.labels for value in extra):  # the task file's, but dataset.json leaves them out
            return problem(case.label, f"label values {_listed(extra)} not declared in dataset.json")
        # not in the task file that sets the classes (BraTS's original 4, say), nor perhaps in dataset.json
        also = "" if not declared or set(extra) <= declared else " nor declared in dataset.json"
        return problem(case.label, _foreign_labels_problem(extra, task) + also)
    try:
        image, _ = read_image(case.image, header=image_header)
        image_nonfinite = nonfinite.get(case.image)
        if image_nonfinite is None:
            image_nonfinite = count_nonfinite(case.image)  # also checks the raw file complete
    except DataError as exc:
        return problem(case.image, reason(exc))
    if image_nonfinite or not np.all(np.isfinite(image)):
        return problem(case.image, "image holds NaN or inf voxels")
    return []


CACHE_SUFFIX = ".img.npy"  # the longest ending of a case's files in the cache (`preprocess.preprocess_case`)


def case_name_problem(case_id: str) -> str:
    """Why a case's id cannot name its files in the cache (`CASE.img.npy`, and the temps they are written
    through, `files.temp_stem`), "" when it can: a name the file system allows, with the cache's ending past
    `files.NAME_MAX` bytes (every sweep failed on it while building the cache: "File name too long")."""
    size = len(case_id.encode("utf-8", "surrogateescape"))
    if size + len(CACHE_SUFFIX) <= NAME_MAX:
        return ""
    return (f"case name too long for the cache: {size} bytes (with '{CACHE_SUFFIX}', at most "
            f"{NAME_MAX - len(CACHE_SUFFIX)}); rename its files (and their entries in dataset.json)")


def read_case(case: Case, task: TaskSpec | None = None) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """A training case's image (C, Z, Y, X), its geometry and its label map, for the stages that read a
    validated task's voxels (fingerprint, cache). With `task`, what validation found of the arrays is checked
    again: a file replaced since stops the stage with one line naming it (a label value past the task's
    classes failed a run later on an index out of range, with no file named)."""
    image, geometry = read_image(case.image)
    label, _ = read_label(case.label)
    again = f" (changed since {task.name} was validated? `validate {task.name}` checks it)" if task else ""
    if task is not None and image.shape[0] != task.num_channels:
        raise DataError(f"{case.image}: {_modalities_problem(image.shape[0], task)}{again}")
    if label.shape != image.shape[1:]:
        raise DataError(f"{case.label}: label shape {label.shape} differs from image shape {image.shape[1:]}")
    if task is not None:
        extra = sorted(set(_values(label)) - set(task.labels))
        if extra:
            raise DataError(f"{case.label}: {_foreign_labels_problem(extra, task)}{again}")
    return image, geometry, label


def _values(label: np.ndarray) -> list[int]:
    """The values a uint8 label map holds (a bincount: faster than np.unique)."""
    return np.flatnonzero(np.bincount(label.ravel(), minlength=1)).tolist()


def _modalities_problem(channels: int, task: TaskSpec, vector: bool = False) -> str:
    """`vector`: the image's `channels` are the values of its vector pixels (an RGB image's 3)."""
    if vector:
        declared = "1 modality" if task.num_channels == 1 else f"{task.num_channels} modalities"
        return f"{vector_pixels(channels)}, but the task declares {declared} ({', '.join(task.modalities)})"
    return (f"image has {channels} modalit{'y' if channels == 1 else 'ies'}, the task declares "
            f"{task.num_channels}")


def _foreign_labels_problem(extra: list[int], task: TaskSpec) -> str:
    labels = ", ".join(str(k) for k in sorted(task.labels))
    return f"label values {_listed(extra)} not among {task.name}'s labels ({labels})"


SPACING_RANGE_MM = (1e-3, 1e3)


def spacing_problem(spacing: tuple[float, ...]) -> str:
    """Why a voxel spacing (mm, ITK's order) cannot be an image's, "" when it can: a value that is not
    positive and finite, or one outside `SPACING_RANGE_MM`. MSD's spacings are 0.2-10 mm; one of 1e-6 or 1e6
    mm is a header in other units or a broken one: resampled to the task's spacing, such a case would have no
    voxels along that axis, or a million times as many."""
    shown = "(" + ", ".join(f"{v:g}" for v in spacing) + ")"
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        return f"voxel spacing {shown} mm: each must be a positive finite number"
    low, high = SPACING_RANGE_MM
    if not all(low <= v <= high for v in spacing):
        return (f"voxel spacing {shown} mm is outside {low:g}-{high:g} mm "
                "(a header in other units, or a broken one)")
    return ""


VALUES_SHOWN = 10


def _listed(values: list[int]) -> str:
    """`[2, 3]`; past `VALUES_SHOWN` values, those first and how many more (`[..., 11 and 190 more]`)."""
    shown = ", ".join(str(v) for v in values[:VALUES_SHOWN])
    more = f" and {len(values) - VALUES_SHOWN} more" if len(values) > VALUES_SHOWN else ""
    return f"[{shown}{more}]"


def validate_folder(
    folder: Path,
    task: TaskSpec,
    deep: bool = True,
    workers: int = 2,
    on_case: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> ValidationReport:
    """Check every training case of an MSD-layout folder, `workers` at a time (threads), fewer where `deep`
    reads of that many would not fit in the memory this process may use (`read_memory.reads_at_once`, from
    the cases' headers). Structural problems raise DataError. A case whose voxels cannot be read even alone
    there is a problem of its image, as a corrupt one (`_memory_problems`): never read, excluded from the
    usable cases, the others checked. `on_start(at_once)` is told how many are read at once before the first
    is (a progress display says why fewer than `workers`), `on_case()` after each."""
    cases = training_cases(folder)
    declared = declared_labels(folder)
    # The task file's labels set the number of classes the networks predict: a value beyond them cannot train.
    allowed = (declared & set(task.labels)) if declared else set(task.labels)

    orientations: dict[str, str | None] = {}
    headers: dict[Path, MetaHeader | None] = {}  # each file's MetaImage header, parsed once for both passes
    too_large: dict[int, list[Problem]] = {}  # by the case's place in `cases`: its one problem

    def run(at: int) -> list[Problem]:
        found = too_large.get(at) or check_case(cases[at], task, allowed, deep, declared, orientations,
                                                folder, headers)
        if on_case is not None:
            on_case()
        return found

    at_once = max(1, workers)
    if deep:
        sitk_module()  # mapped before `memory` counts what the process holds: every read holds it
        memory = usable_memory()
        sizes = _memory_problems(cases, folder, memory, headers, too_large)
        at_once = reads_at_once(VALIDATION, sizes, at_once, memory, threads=True)
    if on_start is not None:
        on_start(at_once)
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        per_case = list(pool.map(run, range(len(cases))))
    left_out = not_imported(folder)  # by an import, with the problem it found
    return ValidationReport(cases=cases + [case for case, _, _ in left_out],
                            problems=[p for found in per_case for p in found]
                            + [Problem(case.case_id, str(path), problem) for case, path, problem in left_out],
                            orientations=orientations)


def _memory_problems(cases: list[Case], folder: Path, memory: MemoryLimit | None,
                     headers: dict[Path, MetaHeader | None],
                     too_large: dict[int, list[Problem]]) -> list[StoredCase]:
    """The sizes of the cases whose voxels validation may read (`read_memory.stored_case`, from their
    headers), and into `too_large` by its place in `cases` the problem of each that it cannot read even alone
    in `memory`, the memory this process may use (`read_memory.read_problem`: its image, what it needs and
    what there is), which is then not read. `headers` gets each found file's MetaImage header, for
    `check_case`: parsed once. A case with a file that is none, or whose header takes its voxels from outside
    the folder, is neither sized nor read here (`check_case` names it)."""
    most = image_bytes_limit()
    sizes = []
    for at, case in enumerate(cases):
        if not (case.image.is_file() and case.label.is_file()):  # a named pipe would block its read
            continue
        parsed = {path: read_header(path) for path in (case.image, case.label)}
        headers.update(parsed)
        size = None if _read_from_outside(case, folder, parsed) else stored_case(case, most, parsed)
        problem = read_problem(VALIDATION, size, memory) if size is not None else ""
        if problem:
            too_large[at] = [Problem(case.case_id, str(case.image), problem)]
        elif size is not None:
            sizes.append(size)
    return sizes


def _read_from_outside(case: Case, folder: Path,
                       headers: Mapping[Path, MetaHeader | None] | None = None) -> list[Problem]:
    """The case's file whose MetaImage header takes its voxels from a file outside the task `folder`
    (`ElementDataFile = /home/you/notes.txt`): ITK read that file as the case's voxels. `headers`: each
    file's MetaImage header where the caller parsed them (`check_case`)."""
    for path in (case.image, case.label):
        header: Header = headers[path] if headers is not None else UNPARSED
        name = data_file_outside(path, folder, header)
        if name is not None:
            why = f"its data file {name} lies outside the task folder"
            return [Problem(case.case_id, str(path), why)]
    return []


def _same_name(one: str, other: str) -> bool:
    """The same name but for case and spacing ("Non-enhancing  tumor" and "non-enhancing tumor")."""
    return " ".join(one.lower().split()) == " ".join(other.lower().split())


def label_warnings(folder: Path, task: TaskSpec) -> list[str]:
    """Warnings when dataset.json's labels (values, or the names of the same values) or its number of
    modalities are not the task file's: the task file's are the classes and channels runs use."""
    path = folder / "dataset.json"
    data = read_dataset_json(folder)
    declared = declared_labels(folder, data)
    warnings = []
    if declared and declared != set(task.labels):
        warnings.append(f"{path}: labels {sorted(declared)} differ from {task.name}'s {sorted(task.labels)} "
                        "(its task file sets the classes: other label values exclude a case)")
    elif declared:
        names = {int(k): str(v) for k, v in data["labels"].items()}
        renamed = [f"{k}: '{names[k]}' (task file: '{task.labels[k]}')" for k in sorted(names)
                   if not _same_name(names[k], task.labels[k])]
        if renamed:
            warnings.append(f"{path}: names label {'; '.join(renamed)}; the task file's names are used "
                            "(check that the label values mean what the task file says)")
    modalities = data.get("modality")
    if isinstance(modalities, dict) and modalities and len(modalities) != task.num_channels:
        declares = f"{len(modalities)} modalit{'y' if len(modalities) == 1 else 'ies'}"
        warnings.append(f"{path}: declares {declares}, {task.name}'s task file "
                        f"{task.num_channels}; each image's channels are checked against the task file")
    elif isinstance(modalities, dict) and modalities:
        # Channels are taken in the images' order, named by the task file (a "CT" channel is normalised as
        # CT, `predict` asks for them in this order): another order in dataset.json goes unseen otherwise.
        named = {str(k): str(v) for k, v in modalities.items()}
        unlike = [f"{c}: '{named[str(c)]}' (task file: '{name}')" for c, name in enumerate(task.modalities)
                  if str(c) in named and not _same_name(named[str(c)], name)]
        if unlike:
            warnings.append(f"{path}: names channel {'; '.join(unlike)}; each image's channels are taken in "
                            "its order, under the task file's names (check that the orders agree)")
    return warnings


def report_warnings(task: TaskSpec, report: ValidationReport, folder: Path) -> list[str]:
    """What fetch and validate warn of for a task they keep: its case count, its dataset.json's labels and
    modalities, and images stored in more than one orientation."""
    return (case_count_warnings(task, report) + label_warnings(folder, task) + header_warnings(folder, task)
            + orientation_warnings(task, report))


def header_warnings(folder: Path, task: TaskSpec) -> list[str]:
    """Warnings when dataset.json's numTraining is not the number of cases it lists, or its tensorImageSize
    is not its task's (3D for one channel, 4D for several): the listed cases and the task file are used."""
    path = folder / "dataset.json"
    data = read_dataset_json(folder)
    warnings = []
    count, listed = data.get("numTraining"), data.get("training")
    if isinstance(count, int) and not isinstance(count, bool) and isinstance(listed, list) \
            and count != len(listed):
        cases = f"{len(listed)} case{'' if len(listed) == 1 else 's'}"
        warnings.append(f"{path}: numTraining is {count}, 'training' lists {cases}; the listed cases are "
                        "used (an edited or cut-down copy?)")
    size = data.get("tensorImageSize")
    expected = "4D" if task.num_channels > 1 else "3D"
    if isinstance(size, str) and size.strip().upper() in ("3D", "4D") and size.strip().upper() != expected:
        warnings.append(f"{path}: tensorImageSize is {size}, {task.name}'s task file declares "
                        f"{task.num_channels} channel(s) ({expected}); each image's channels are checked "
                        "against the task file")
    return warnings


def orientation_warnings(task: TaskSpec, report: ValidationReport) -> list[str]:
    """A warning when the usable cases' images are not all stored one way (`Geometry.orientation`): neither
    medseg-bench nor nnU-Net reorients them, so a network sees the others mirrored or turned."""
    from collections import Counter

    usable = {c.case_id for c in report.usable_cases}
    seen = {case: o for case, o in report.orientations.items() if case in usable and o is not None}
    found = Counter(seen.values())
    if len(found) < 2:
        return []
    (main, count), *others = found.most_common()
    listed = ", ".join(f"{o} ({n}, e.g. {min(c for c, x in seen.items() if x == o)})" for o, n in others)
    cases = f"{count} case{'' if count == 1 else 's'}"
    return [f"{task.name}: images stored in {len(found)} orientations: {main} ({cases}), {listed}; "
            "neither medseg-bench nor nnU-Net reorients them, so networks see these mirrored or turned: "
            f"store every case {main} for comparable training (MONAI's Orientationd, nibabel's "
            "as_closest_canonical)"]


def case_count_warnings(task: TaskSpec, report: ValidationReport) -> list[str]:
    """Warnings when the number of training cases differs from the catalog's (a subset still works)."""
    expected, found = task.num_training, len(report.cases)
    if expected is None or found == expected:
        return []
    cases = f"{found} training case{'' if found == 1 else 's'}"
    if found < expected:
        return [
            f"{task.name}: {cases}, the catalog lists {expected}: a subset (it works, but "
            "scores are not comparable with results on the full task)"
        ]
    return [
        f"{task.name}: {cases}, more than the {expected} the catalog lists "
        "(another release of the data?)"
    ]


def refusal(report: ValidationReport, reason: str) -> DataError:
    """The one error line of a fetch or validate that refuses a task: the first problem, how many more in how
    many cases, and why they are fatal (`reason`, e.g. "--strict: nothing was kept")."""
    first, rest = report.problems[0], report.problems[1:]
    more = f" and {len(rest)} more problem(s) in {len({p.case_id for p in rest})} case(s)" if rest else ""
    return DataError(f"{first}{more} ({reason})")


PROBLEMS_SHOWN = 10


def problem_lines(problems: list[Problem], listed_in: Path, excluded: bool = True,
                  skip: int = 0) -> list[str]:
    """Lines to print: `problems[skip:PROBLEMS_SHOWN]` one each, then one for the rest (`problem_summary`).

    `excluded`: the cases were excluded from training (a warning), not refused (an error's list)."""
    one, rest = (" (case excluded from training)", " (all excluded from training)") if excluded else ("", "")
    lines = [f"{problem}{one}" for problem in problems[skip:PROBLEMS_SHOWN]]
    summary = problem_summary(problems, listed_in)
    return lines + ([f"{summary}{rest}"] if summary else [])


def problem_summary(problems: list[Problem], listed_in: Path, shown: int = PROBLEMS_SHOWN) -> str | None:
    """One line for the problems past the first `shown` (none when there are no more), counted by kind.

    A task folder whose dataset.json names many absent cases would otherwise print one line per case; every
    problem is still written, with its file, to `listed_in`.
    """
    rest = problems[shown:]
    if not rest:
        return None
    kinds: dict[str, int] = {}
    for problem in rest:
        kinds[problem.message] = kinds.get(problem.message, 0) + 1
    common = sorted(kinds.items(), key=lambda kv: -kv[1])
    counted = "; ".join(f"{message}: {count}" for message, count in common[:3])
    if len(common) > 3:
        counted += f"; {len(common) - 3} other kind(s)"
    cases = len({p.case_id for p in rest})
    return f"{len(rest)} more problem(s) in {cases} case(s) ({counted}); every one is listed in {listed_in}"
