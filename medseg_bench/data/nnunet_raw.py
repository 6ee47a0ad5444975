"""Importing an nnU-Net v2 raw dataset (`nnUNet_raw/DatasetNNN_Name`) as an MSD-layout task folder.

nnU-Net v2 keeps one file per channel (`imagesTr/CASE_0000.nii.gz`, `CASE_0001.nii.gz`, ...), labels as
`labelsTr/CASE.nii.gz`, and a `dataset.json` with `channel_names` (or the older `modality`), `labels` (name ->
value) and `file_ending`, but no list of training cases. `fetch --source` copies such a folder and, in its
copy, turns it into MSD's layout, which the rest of the pipeline reads: a one-channel image is renamed
`imagesTr/CASE<ending>` (case ids stay nnU-Net's), a multi-channel one stacked into one 4D NIfTI
`imagesTr/CASE.nii.gz` (channels along the fourth axis, as MSD stores them; float32 where the channel files'
types differ, as nnU-Net reads every channel); `dataset.json` is written in MSD's form, the original kept as
`dataset.nnunet.json`. The user's folder is never changed; `imagesTs/` is copied as it is.

A case whose channel files cannot be stacked stays in the task, listed under `NOT_IMPORTED` in its
`dataset.json` with the file and the problem, so that validation (at fetch, and every `validate` after)
excludes it with that reason, as it excludes any bad case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg_bench.data.io import (
    IMAGE_SUFFIXES,
    Geometry,
    data_file_outside,
    metaimage_data_file,
    read_sitk_image,
    sitk_module,
    write_checked,
)
from medseg_bench.data.metaimage import MetaHeader, read_header
from medseg_bench.data.nifti import count_nonfinite
from medseg_bench.errors import DataError
from medseg_bench.files import parse_json, write_json_atomic

ORIGINAL_JSON = "dataset.nnunet.json"
NOT_IMPORTED = "medseg_bench_not_imported"  # dataset.json: [{"case", "image", "label", "problem"}]
CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Conversion:
    """What converting wrote: `sources` maps each image written to the user's file(s) it came from (for
    messages about it); `warnings`: what the dataset holds that is not imported, or disagrees with itself."""

    sources: dict[Path, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def is_nnunet_raw(root: Path) -> bool:
    """Whether `root` holds an nnU-Net v2 raw dataset: its dataset.json has `file_ending` and no MSD
    `training` list."""
    try:
        data = parse_json((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # MSD's reader names the problem
    return isinstance(data, dict) and "training" not in data and "file_ending" in data


def convert(root: Path, say: Callable[[str], object] = lambda line: None) -> Conversion:
    """Turn the nnU-Net v2 raw dataset in `root` (a copy: files are renamed and removed) into MSD's layout."""
    json_path = root / "dataset.json"
    data = parse_json(json_path.read_text(encoding="utf-8"))
    if "dataset" in data:
        raise DataError(f"{json_path}: lists its files per case ('dataset'), which medseg-bench does not "
                        "read; lay them out as imagesTr/CASE_0000<file_ending> and "
                        "labelsTr/CASE<file_ending>")
    channels = _channel_names(data, json_path)
    ending = _file_ending(data, json_path)
    declared = _labels(data, json_path)  # before any case is converted
    labels_dir, images_dir = root / "labelsTr", root / "imagesTr"
    if not labels_dir.is_dir():
        raise DataError(f"{labels_dir}: missing (an nnU-Net v2 dataset keeps its label maps there)")
    labels = sorted(p for p in labels_dir.iterdir()
                    if p.name.endswith(ending) and not p.name.startswith(".") and p.is_file())
    if not labels:
        raise DataError(f"{labels_dir}: no label maps ending in {ending} (dataset.json's file_ending)")
    done = Conversion(warnings=[*_unlabelled(images_dir, labels, ending),
                                *_past_channels(images_dir, labels, ending, len(channels)),
                                *_count_warning(data, json_path, labels)])
    how = (f"each case's {len(channels)} channel files stacked into one 4D image" if len(channels) > 1
           else "each CASE_0000 image renamed CASE")
    cases = f"{len(labels)} case{'' if len(labels) == 1 else 's'}"
    say(f"{root.name}: an nnU-Net v2 dataset of {cases}, imported in MSD's layout ({how})")
    training, not_imported = [], []
    for label in labels:
        case_id = label.name[:-len(ending)]
        files = [images_dir / f"{case_id}_{index:04d}{ending}" for index in range(len(channels))]
        image = images_dir / f"{case_id}{ending if len(files) == 1 else '.nii.gz'}"
        entry = {"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"}
        problem = _join(files, image, done, root)
        if problem:
            at_fault, why = problem
            not_imported.append(entry | {"file": f"./imagesTr/{at_fault.name}", "problem": why})
        else:
            training.append(entry)
    if not training:
        first = not_imported[0]
        raise DataError(f"{images_dir / Path(first['file']).name}: {first['problem']}; so is every other "
                        f"case of the {len(labels)}: nothing to import")
    (root / ORIGINAL_JSON).write_text(json_path.read_text(encoding="utf-8"), encoding="utf-8")
    msd: dict[str, Any] = {"name": data.get("name", root.name), "modality": dict(enumerate(channels)),
                           "training": training, "numTraining": len(training), NOT_IMPORTED: not_imported}
    if declared is not None:
        msd["labels"] = declared
    write_json_atomic(json_path, json.loads(json.dumps(msd)))  # integer keys as JSON strings
    return done


def _join(files: list[Path], target: Path, done: Conversion, root: Path) -> tuple[Path, str] | None:
    """Put a case's channel `files` into `target`: renamed when one, stacked when several. Returns the file
    at fault and why, when they cannot be. A channel file that takes its voxels from a file outside the
    dataset's folder `root` (a MetaImage's `ElementDataFile`) is one: it was read, then deleted with it.
    Each file's MetaImage header is parsed once, and that one passed to its checks, its read and its removal.
    """
    headers: dict[Path, MetaHeader | None] = {}
    for path in files:
        if not path.is_file():
            return path, "missing (one file per channel: CASE_0000, CASE_0001, ...)"
        headers[path] = read_header(path)
        outside = data_file_outside(path, root, headers[path])
        if outside is not None:
            return path, f"its data file {outside} lies outside the dataset's folder"
    if len(files) == 1:
        files[0].rename(target)
        done.sources[target] = str(files[0])
        return None
    sitk = sitk_module()
    images: list[Any] = []
    for path in files:
        try:  # ITK reads a NIfTI cut short, and its NaN voxels, as zeros: each file is checked as stored
            nonfinite = count_nonfinite(path)
            image = read_sitk_image(path, headers[path])
        except DataError as exc:
            return path, str(exc).removeprefix(f"{path}: ")
        if nonfinite:
            return path, "image holds NaN or inf voxels"
        if image.GetNumberOfComponentsPerPixel() != 1:
            return path, (f"{image.GetNumberOfComponentsPerPixel()} components per voxel; each channel file "
                          "of an nnU-Net dataset holds one")
        if image.GetDimension() != 3:
            return path, f"a {image.GetDimension()}D image; each channel file of an nnU-Net dataset is 3D"
        if images:
            differs = channel_mismatch(files[0], _geometry(images[0]), _geometry(image))
            if differs:
                return path, differs
            image.CopyInformation(images[0])  # within the tolerance of a label against its image
        images.append(image)
    if len({image.GetPixelID() for image in images}) > 1:  # int16 CT beside float PET: no channel cut
        images = [sitk.Cast(image, sitk.sitkFloat32) for image in images]
    joined = sitk.JoinSeries(images)
    voxels = joined.GetNumberOfPixels() * joined.GetSizeOfPixelComponent()
    write_checked(joined, target, target, voxels)  # a full disk stops the import, naming the file
    for path in files:
        data_file = metaimage_data_file(path, headers[path])  # an .mhd's voxels: their own file, in `root`
        path.unlink()
        if data_file is not None and data_file.is_file():
            data_file.unlink()
    done.sources[target] = f"{files[0]} (and its other channel files)"
    return None


def channel_mismatch(first: Path, first_geometry: Geometry, geometry: Geometry) -> str:
    """How a case's channel file's geometry differs from its first channel file's (`first`), for one line
    naming the file, its own value first (as validation names a label's against its image's; it was said
    second); "" when within the tolerance of a label against its image."""
    differs = geometry.mismatch(first_geometry)
    return f"its geometry is not {first.name}'s: {differs}" if differs else ""


def _geometry(image: Any) -> Geometry:
    return Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetSize())


def _channel_names(data: dict[str, Any], json_path: Path) -> list[str]:
    names = data.get("channel_names", data.get("modality"))  # nnU-Net v2 still reads the older name
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
    if "ignore" in labels:
        raise DataError(f"{json_path}: labels has nnU-Net's 'ignore' label ({labels['ignore']}: voxels left "
                        "unannotated, which nnU-Net leaves out of its loss); medseg-bench trains on every "
                        "voxel: give those voxels a class, or leave the dataset to nnU-Net")
    if any(isinstance(value, list) for value in labels.values()):
        return None
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in labels.values()):
        raise DataError(f"{json_path}: labels must map label names to whole numbers")
    return {value: str(name) for name, value in sorted(labels.items(), key=lambda item: item[1])}


def _unlabelled(images_dir: Path, labels: list[Path], ending: str) -> list[str]:
    """A warning naming channel files of cases without a label map (nnU-Net refuses such a dataset)."""
    cases = {label.name[:-len(ending)] for label in labels}
    orphans = sorted(path for path in images_dir.glob(f"*{ending}") if not path.name.startswith(".")
                     and (match := CHANNEL_FILE.match(path.name[:-len(ending)]))
                     and match["case"] not in cases)
    if not orphans:
        return []
    more = f" and {len(orphans) - 1} more" if len(orphans) > 1 else ""
    return [f"{orphans[0]}{more}: no label map in labelsTr for its case: not imported"]


def _past_channels(images_dir: Path, labels: list[Path], ending: str, channels: int) -> list[str]:
    """A warning naming channel files of labelled cases past dataset.json's `channels` (`CASE_0004` of four
    channel_names): not imported, as nnU-Net reads none of them (it was said nowhere)."""
    cases = {label.name[:-len(ending)] for label in labels}
    past = sorted(path for path in images_dir.glob(f"*{ending}") if not path.name.startswith(".")
                  and (match := CHANNEL_FILE.match(path.name[:-len(ending)]))
                  and match["case"] in cases and int(match["channel"]) >= channels)
    if not past:
        return []
    more = f" and {len(past) - 1} more" if len(past) > 1 else ""
    return [f"{past[0]}{more}: a channel past the {channels} of dataset.json's channel_names: not imported"]


def _count_warning(data: dict[str, Any], json_path: Path, labels: list[Path]) -> list[str]:
    count = data.get("numTraining")
    if count is None or count == len(labels):
        return []
    maps = f"{len(labels)} label map{'' if len(labels) == 1 else 's'}"
    return [f"{json_path}: numTraining is {count}, labelsTr holds {maps}: all of them imported"]


def _channel_groups(images: list[Path]) -> tuple[dict[str, dict[int, Path]], list[Path]]:
    """`images` grouped by case as nnU-Net v2 names channel files (`CASE_0000`: case, channel, file), and
    the files not so named."""
    from medseg_bench.data.io import case_name

    groups: dict[str, dict[int, Path]] = {}
    strays = []
    for path in images:
        match = CHANNEL_FILE.match(case_name(path))
        if match is None:
            strays.append(path)
        else:
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    return groups, strays


def _gap(case: str, files: dict[int, Path], channels: int, example: str) -> str:
    """The first channel file case `case` lacks, or has past the task's `channels`, in one line naming it;
    "" when it has exactly the task's. `example`: how a file of the layout is named."""
    from medseg_bench.data.io import case_name

    wanted = set(range(channels))
    if set(files) == wanted:
        return ""
    suffix = files[min(files)].name[len(case_name(files[min(files)])):]
    odd = min(wanted ^ set(files))
    what = "missing" if odd in wanted else f"a channel past the task's {channels}"
    where = files[min(files)].parent / f"{case}_{odd:04d}{suffix}"
    return f"{where}: {what} (nnU-Net's layout, {example}CASE_0000 to CASE_{channels - 1:04d})"


def incomplete_channels(images: list[Path], channels: int) -> str:
    """For a task of several `channels`, where every file of `images` is named as a channel file of one of
    them (`CASE_0000` to `CASE_{channels - 1}`) and no case has them all, as when a case's folder lacks a
    file: the first file missing, in one line naming it; where a case has all of the task's channel files
    and more (`CASE_0004` of a 4-channel task: its first file was blamed for holding one channel), the first
    file past them; "" otherwise (`channel_files` names the gap where some case is complete). The caller
    checks that each file holds one channel."""
    groups, strays = _channel_groups(images)
    if channels < 2 or strays or not groups:
        return ""
    cases = sorted(groups.items())
    past = [(case, files) for case, files in cases if set(range(channels)) < set(files)]
    if past:
        return _gap(*past[0], channels, "")
    if any(max(files) >= channels for files in groups.values()):
        return ""
    return next(filter(None, (_gap(case, files, channels, "") for case, files in cases)), "")


def channel_files(images: list[Path], channels: int) -> tuple[dict[str, list[Path]] | None, str]:
    """`images` (a folder's image files) grouped by case as nnU-Net v2 names channel files, `CASE_0000...`,
    each case's files in channel order, and "". None when they are not so named: with "" when no case has
    exactly the task's channels (a folder of MSD images, one file a case, numbered `img_0000`, `img_0001`
    or not), with a note naming a file when some are and others are not named so. DataError naming the
    file when some cases have their channels and another lacks one or has one more."""
    groups, strays = _channel_groups(images)
    complete = [case for case, files in sorted(groups.items()) if set(files) == set(range(channels))]
    if not complete:
        return None, ""
    example = groups[complete[0]][0].name
    if strays:
        return None, (f"{strays[0]}: not named as nnU-Net names a channel file (CASE_0000...), as {example} "
                      "is: each file is taken as a case of its own")
    for case, files in sorted(groups.items()):
        gap = _gap(case, files, channels, f"as {example}: ")
        if gap:
            raise DataError(gap)
    return {case: [files[index] for index in range(channels)] for case, files in sorted(groups.items())}, ""
