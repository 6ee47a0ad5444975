"""Importing an nnU-Net v2 raw dataset (`nnUNet_raw/DatasetNNN_Name`) as an MSD-layout task folder.

nnU-Net v2 keeps one file per channel (`imagesTr/CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ...), labels as
`labelsTr/CASE.nii.gz`, and a `dataset.json` with `channel_names`, `labels` (name -> value) and
`file_ending`, but no list of training cases. `fetch --source` copies such a folder and, in its copy, turns
it into MSD's layout, which the rest of the pipeline reads: a one-channel image is renamed
`imagesTr/CASE<ending>` (case ids stay nnU-Net's), a multi-channel one stacked into one 4D NIfTI
`imagesTr/CASE.nii.gz` (channels along the fourth axis, as MSD stores them); `dataset.json` is written in
MSD's form, the original kept as `dataset.nnunet.json`. The user's folder is never changed; `imagesTs/` is
copied as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_bench.data.io import IMAGE_SUFFIXES, Geometry, read_sitk_image, sitk_module, write_json_atomic
from medseg_bench.data.itk_output import captured
from medseg_bench.data.msd import Case
from medseg_bench.data.validate import Problem
from medseg_bench.errors import DataError

ORIGINAL_JSON = "dataset.nnunet.json"


@dataclass
class Conversion:
    """What converting wrote: `sources` maps each image written to the user's file(s) it came from (for
    messages about it); `problems`: cases left out, each with the file and what is wrong with it."""

    sources: dict[Path, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)  # the cases of `problems`

    def rename(self, text: str) -> str:
        """`text` with each image written named as the user's file(s) it came from."""
        for written, source in sorted(self.sources.items(), key=lambda item: -len(str(item[0]))):
            text = _replaced(text, str(written), source)
        return text


def _replaced(text: str, path: str, by: str) -> str:
    """`text` with `path` (a whole path, not the start of a longer name) replaced by `by`."""
    return re.sub(re.escape(path) + r"(?![\w.-])", lambda _: by, text)


def is_nnunet_raw(root: Path) -> bool:
    """Whether `root` holds an nnU-Net v2 raw dataset: its dataset.json has `channel_names` and
    `file_ending`, and no MSD `training` list."""
    try:
        data = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # MSD's reader names the problem
    return isinstance(data, dict) and "training" not in data and {"channel_names", "file_ending"} <= set(data)


def convert(root: Path, say: Callable[[str], object] = lambda line: None) -> Conversion:
    """Turn the nnU-Net v2 raw dataset in `root` (a copy: files are renamed and removed) into MSD's layout."""
    json_path = root / "dataset.json"
    data = json.loads(json_path.read_text(encoding="utf-8"))
    channels = _channel_names(data, json_path)
    ending = _file_ending(data, json_path)
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: missing (an nnU-Net v2 dataset keeps its label maps there)")
    labels = sorted(p for p in labels_dir.iterdir()
                    if p.name.endswith(ending) and not p.name.startswith(".") and p.is_file())
    if not labels:
        raise DataError(f"{labels_dir}: no label maps ending in {ending} (dataset.json's file_ending)")
    done = Conversion()
    how = (f"each case's {len(channels)} channel files stacked into one 4D image" if len(channels) > 1
           else "each CASE_0000 image renamed CASE")
    say(f"{root.name}: an nnU-Net v2 dataset of {len(labels)} cases, imported in MSD's layout ({how})")
    training = []
    for label in labels:
        case_id = label.name[:-len(ending)]
        files = [images_dir / f"{case_id}_{index:04d}{ending}" for index in range(len(channels))]
        problem = _join(files, images_dir / f"{case_id}{ending if len(files) == 1 else '.nii.gz'}", done)
        if problem:
            done.problems.append(Problem(case_id, str(problem[0]), problem[1]))
            done.cases.append(Case(case_id, problem[0], label))
            continue
        image = f"./imagesTr/{case_id}{ending if len(files) == 1 else '.nii.gz'}"
        training.append({"image": image, "label": f"./labelsTr/{label.name}"})
    if not training:
        first = done.problems[0]
        raise DataError(f"{first}; so is every other case of the {len(labels)}: nothing to import")
    (root / ORIGINAL_JSON).write_text(json_path.read_text(encoding="utf-8"), encoding="utf-8")
    msd: dict[str, Any] = {"name": data.get("name", root.name), "modality": dict(enumerate(channels)),
                           "training": training, "numTraining": len(training)}
    labels_declared = _labels(data, json_path)
    if labels_declared is not None:
        msd["labels"] = labels_declared
    write_json_atomic(json_path, json.loads(json.dumps(msd)))  # integer keys as JSON strings
    return done


def _join(files: list[Path], target: Path, done: Conversion) -> tuple[Path, str] | None:
    """Put a case's channel `files` into `target`: renamed when one, stacked when several. Returns the file
    at fault and why, when they cannot be."""
    for path in files:
        if not path.is_file():
            return path, "missing (one file per channel: CASE_0000, CASE_0001, ...)"
    if len(files) == 1:
        files[0].rename(target)
        done.sources[target] = str(files[0])
        return None
    sitk = sitk_module()
    images: list[Any] = []
    for path in files:
        try:
            image = read_sitk_image(path)
        except DataError as exc:
            return path, str(exc).removeprefix(f"{path}: ")
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            return path, f"a {image.GetDimension()}D image; each channel file of an nnU-Net dataset is 3D"
        if images:
            first = images[0]
            differs = _geometry(first).mismatch(_geometry(image))
            if differs:
                return path, f"its geometry is not {files[0].name}'s: {differs}"
            image = sitk.Cast(image, first.GetPixelID())
            image.CopyInformation(first)  # within the tolerance of a label against its image
        images.append(image)
    with captured():
        sitk.WriteImage(sitk.JoinSeries(images), str(target), True)
    for path in files:
        path.unlink()
    done.sources[target] = f"{files[0]} (and its other channel files)"
    return None


def _geometry(image: Any) -> Geometry:
    return Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetSize())


def _channel_names(data: dict[str, Any], json_path: Path) -> list[str]:
    names = data["channel_names"]
    if not isinstance(names, dict) or not names or set(names) != {str(i) for i in range(len(names))}:
        raise DataError(f"{json_path}: channel_names must map 0, 1, ... to channel names, e.g. "
                        '{"0": "T2"}')
    return [str(names[str(i)]) for i in range(len(names))]


def _file_ending(data: dict[str, Any], json_path: Path) -> str:
    ending = data["file_ending"]
    if not isinstance(ending, str) or ending.lower() not in IMAGE_SUFFIXES:
        raise DataError(f"{json_path}: file_ending {ending!r}; medseg-bench reads "
                        f"{', '.join(IMAGE_SUFFIXES)} images")
    return ending


def _labels(data: dict[str, Any], json_path: Path) -> dict[int, str] | None:
    """MSD's `labels` (value -> name) from nnU-Net's (name -> value); None for a region-based dataset (a
    name of several values): the task file's labels then decide which values a label map may hold."""
    labels = data.get("labels")
    if not isinstance(labels, dict):
        raise DataError(f"{json_path}: labels must map label names to values, e.g. "
                        '{"background": 0, "tumour": 1}')
    if any(isinstance(value, list) for value in labels.values()):
        return None
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in labels.values()):
        raise DataError(f"{json_path}: labels must map label names to whole numbers")
    return {value: str(name) for name, value in sorted(labels.items(), key=lambda item: item[1])}


CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def channel_files(images: list[Path], channels: int) -> dict[str, list[Path]] | None:
    """`images` (a folder's image files) grouped by case as nnU-Net v2 names channel files, `CASE_0000...`,
    each case's files in channel order; None when they are not all so named: every file `CASE_NNNN` and
    every case with exactly channels 0 to `channels` - 1 (a folder of MSD images, one file a case, is
    None unless each file of a one-channel task ends in `_0000`)."""
    from medseg_bench.data.io import case_name

    groups: dict[str, dict[int, Path]] = {}
    for path in images:
        match = CHANNEL_FILE.match(case_name(path))
        if match is None:
            return None
        groups.setdefault(match["case"], {})[int(match["channel"])] = path
    if not groups or any(sorted(files) != list(range(channels)) for files in groups.values()):
        return None
    return {case: [files[index] for index in range(channels)] for case, files in sorted(groups.items())}
