"""Reading an MSD-layout task folder: dataset.json and its training cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_bench.errors import DataError
from medseg_bench.files import parse_json


@dataclass(frozen=True)
class Case:
    """One training case: an image and its label map."""

    case_id: str
    image: Path
    label: Path


def case_id_from_path(path: Path) -> str:
    """A task file's case id: its name without its image suffix, matched in the case it is written in (as
    ever: a task's case ids, which splits and caches are keyed by, do not change)."""
    from medseg_bench.data.io import IMAGE_SUFFIXES

    return next((path.name[: -len(s)] for s in IMAGE_SUFFIXES if path.name.endswith(s)), path.stem)


def read_dataset_json(folder: Path) -> dict[str, Any]:
    path = folder / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: dataset.json missing")
    try:
        data = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON (nested too deeply too), or not UTF-8
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("training"), list):
        if isinstance(data, dict) and "file_ending" in data and "training" not in data:
            raise DataError(f"{path}: an nnU-Net v2 dataset (no 'training' list); `medseg-bench fetch TASK "
                            "--source FOLDER` imports a copy of it in MSD's layout, the folder as it is")
        raise DataError(f"{path}: no 'training' list")
    return data


def _inside(folder: Path, relative: object, json_path: Path) -> Path:
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{json_path}: training entry path {relative!r} is not a string")
    if "\x00" in relative or any(len(part.encode("utf-8", "surrogateescape")) > 255
                                  for part in Path(relative).parts):
        raise DataError(f"{json_path}: entry {relative!r} is no file name (a NUL byte, or a name over 255 "
                        "bytes)")
    candidate = _resolved(folder / relative, json_path, relative)
    root = folder.resolve()
    if candidate != root and root not in candidate.parents:
        raise DataError(f"{json_path}: entry '{relative}' points outside the task folder")
    return candidate


def _resolved(path: Path, json_path: Path, relative: str) -> Path:
    """`path` with its links followed; a file that is a loop of links as itself in its followed folder (it
    cannot be read: validation names it, `files.broken_link`)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a loop of links: RuntimeError before Python 3.13
        pass
    try:
        return path.parent.resolve() / path.name
    except (OSError, RuntimeError):
        raise DataError(f"{json_path}: entry '{relative}' is in a folder that is a link leading back to "
                        "itself") from None


def training_cases(folder: Path) -> list[Case]:
    """The training cases that dataset.json lists, with paths checked to stay inside `folder`.

    macOS resource forks (`._name.nii.gz`) are skipped. Missing files are not checked here (see validate).
    """
    data = read_dataset_json(folder)
    json_path = folder / "dataset.json"
    cases: list[Case] = []
    seen: set[str] = set()
    for entry in data["training"]:
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{json_path}: training entry {entry!r} needs 'image' and 'label'")
        image = _inside(folder, entry["image"], json_path)
        label = _inside(folder, entry["label"], json_path)
        if image.name.startswith("._"):
            continue
        case_id = case_id_from_path(image)
        if case_id in seen:
            raise DataError(f"{json_path}: case '{case_id}' listed twice")
        seen.add(case_id)
        cases.append(Case(case_id, image, label))
    if not cases:
        raise DataError(f"{json_path}: the training list is empty")
    return cases


def declared_labels(folder: Path, data: dict[str, Any] | None = None) -> set[int]:
    """The label values dataset.json declares (`data`: its contents, when already read)."""
    data = read_dataset_json(folder) if data is None else data
    labels = data.get("labels", {})
    if not isinstance(labels, dict):
        raise DataError(f"{folder / 'dataset.json'}: 'labels' must map label values to names, e.g. "
                        '{"0": "background", "1": "tumour"}')
    try:
        return {int(k) for k in labels}
    except (TypeError, ValueError):
        raise DataError(f"{folder / 'dataset.json'}: label keys must be integers") from None


def not_imported(folder: Path, data: dict[str, Any] | None = None) -> list[tuple[Case, Path, str]]:
    """The cases an import left out of the training list (an nnU-Net dataset's case whose channel files could
    not be stacked, `nnunet_raw.NOT_IMPORTED`), each with the file at fault and the problem, so that every
    validation excludes them with their reason."""
    from medseg_bench.data.nnunet_raw import NOT_IMPORTED

    data = read_dataset_json(folder) if data is None else data
    json_path = folder / "dataset.json"
    entries = data.get(NOT_IMPORTED) or []
    keys = ("image", "label", "file", "problem")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and all(isinstance(e.get(k), str) for k in keys) for e in entries):
        raise DataError(f"{json_path}: {NOT_IMPORTED} must list {{image, label, file, problem}} entries")
    return [(Case(case_id_from_path(Path(e["image"])), _inside(folder, e["image"], json_path),
                  _inside(folder, e["label"], json_path)),
             _inside(folder, e["file"], json_path), e["problem"]) for e in entries]
