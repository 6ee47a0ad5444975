"""`medseg-bench predict`: label maps for a folder of images from a finished run (or one of its checkpoints),
or from an ensemble of runs of one task, plan and target (their softmax probabilities averaged, as nnU-Net
ensembles; a region run's sigmoid region probabilities, each region over 0.5 painted into a label map in the
task file's order, `regions.py`).
A run that has not finished (interrupted, failed, or training now) is refused unless `--allow-unfinished`: its
last checkpoint is from mid-training, where nnU-Net predicts from `checkpoint_final`.

Each image is normalised, cropped and resampled as the run's plan says, predicted (with the run's TTA setting
unless overridden), mapped back to its own grid, postprocessed as the run decided, and written under the
image's file name, in its format, with the source image's spacing, origin and direction, so it opens over the
image in 3D Slicer or ITK-SNAP. An image stored in another orientation than the training images is predicted
as stored with a warning, or with `--reorient` as if stored like them (`data/orient.py`)."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from medseg_bench import trained_runs
from medseg_bench.errors import DataError, UsageError, one_line

# each network's activations on a tile, by patch and channels (`_tile_forward`)
_TILE_FORWARD: weakref.WeakKeyDictionary[Any, dict[tuple[Any, int], int]] = weakref.WeakKeyDictionary()


def _echo(text: str, err: bool = False) -> None:
    """A line of predict's output, control characters escaped: it names image files, as a dataset's folder
    (MSD's imagesTs, an archive's) names them, and runs' folders."""
    typer.echo(one_line(text), err=err)


def _check_device(device: str | None) -> str | None:
    """`device` as torch names it (cpu, cuda, cuda:N), checked against this machine, or a UsageError."""
    import re

    import torch

    if device is None:
        return None
    name = device.strip().lower()
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise UsageError(f"--device {device}: not a device; use cpu, cuda or cuda:N (N: a GPU index)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(f"--device {device}: no CUDA GPU on this machine (use --device cpu)")
    if match.group(1) is not None and int(match.group(1)) >= count:
        gpus = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
        raise UsageError(f"--device {device}: this machine has {count} CUDA GPU(s) ({gpus})")
    return name


def _check_out_folder(images: Path, out: Path) -> None:
    """Refuse an --out that is the --images folder (label maps would replace the images of the same name),
    that cannot be a folder (a file, or under one), or that is in a run's folder, before any work."""
    from medseg_bench.files import file_in_the_way, kind_of
    from medseg_bench.results import run_folder_of

    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise UsageError(f"{out}: --out is {kind_of(out)}, not a folder: choose a folder for the label maps")
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise UsageError(f"{out}: --out cannot be made a folder: {blocker} is {kind_of(blocker)}")
    run = run_folder_of(out / "label-map")  # --out itself, or a folder in it
    if run is not None:  # RUN/predictions: --overwrite replaced the held-out predictions its scores are of
        raise UsageError(f"{out}: --out is in the folder of run {run.name}, whose results are never "
                         "replaced: choose a folder outside it")
    same = images.resolve() == out.resolve()
    if not same and images.is_dir() and out.is_dir():
        try:
            same = images.samefile(out)  # the same folder under two paths (a bind mount)
        except OSError:
            same = False
    if same:
        raise UsageError(f"{out}: --out is the --images folder; the label maps would replace the images of "
                         "the same name: choose another --out folder")


@dataclass(frozen=True)
class _Image:
    """One case to predict: its image file, or, in nnU-Net v2's layout, its channel files in order."""

    name: str  # the case's name, which its label map takes
    files: tuple[Path, ...]


def _images(folder: Path, task: Any) -> list[_Image]:
    from medseg_bench.data.io import IMAGE_SUFFIXES, case_name, files_by_case, image_suffix, read_geometry
    from medseg_bench.data.nnunet_raw import channel_files, incomplete_channels

    # one image per case: `a.nii.gz` and `a.mha` would give two label maps of one case (evaluate refuses such
    # a folder), `A.nii.gz` and `A.NII.GZ` one file, and each its own `a.npz`
    images = sorted(files_by_case(folder, "an image").values())
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    groups, note = channel_files(images, task.num_channels)  # a case lacking a channel file: DataError
    if note:
        _echo(note)
    if groups is not None and all(read_geometry(path)[1] == 1 for path in images):
        suffix = image_suffix(images[0])
        more = f", CASE_0001{suffix}, ..." if task.num_channels > 1 else ""
        _echo(f"{folder}: {len(groups)} case(s) in nnU-Net's layout, a file per channel "
                   f"(CASE_0000{suffix}{more}): each label map is named CASE{suffix}")
        return [_Image(name, tuple(files)) for name, files in groups.items()]
    # channel files of a case that lacks one (every case, as a one-case folder): refused as one channel of
    # several, naming the first file instead of the one missing
    gap = "" if note else incomplete_channels(images, task.num_channels)
    if gap and all(read_geometry(path)[1] == 1 for path in images):
        raise DataError(gap)
    return [_Image(case_name(path), (path,)) for path in images]


def _channels_problem(channels: int, task: Any, vector: bool = False) -> str:
    """"" when an image of `channels` channels fits `task`'s models, else what they take and in which order
    (a 4D image's fourth axis, as MSD stores a case's modalities). `vector`: the channels are the values of
    the image's vector pixels (an RGB image's 3)."""
    from medseg_bench.data.io import vector_pixels

    if channels == task.num_channels:
        return ""
    order = ", in this order along the fourth axis" if task.num_channels > 1 else ""
    found = vector_pixels(channels) if vector else f"{channels} channel(s)"
    return (f"{found}, but {task.name} models take {task.num_channels} "
            f"({', '.join(task.modalities)}{order})")


def _check_images(found: list[_Image], task: Any) -> None:
    """Every image's dimensions, channels and voxel spacing (as validate checks a training case's) against
    the task's, from its header, before anything is predicted: a wrong image late in the folder would
    otherwise stop the command with half of it written. A case's channel files share their geometry."""
    from medseg_bench.data.io import layout_problem, read_geometry, vector_components
    from medseg_bench.data.nifti import check_nifti_complete, is_nifti
    from medseg_bench.data.nnunet_raw import channel_mismatch
    from medseg_bench.data.validate import spacing_problem

    for image in found:
        first: Any = None
        channels = 0
        for path in image.files:
            if is_nifti(path) and not path.name.lower().endswith(".gz"):
                # a `.nii` cut short, from its size (until 2026-12-04 named at its turn, the images before it
                # written); a `.nii.gz` is decompressed to its end to tell, so its turn tells
                check_nifti_complete(path)
            geometry, count = read_geometry(path)  # a 4D image's geometry: its three spatial axes
            problem = layout_problem(geometry.size) or spacing_problem(geometry.spacing)
            if not problem and first is not None:
                problem = channel_mismatch(image.files[0], first, geometry)
            if not problem and count > 1 and count != task.num_channels and vector_components(path) > 1:
                problem = _channels_problem(count, task, vector=True)
            if problem:
                raise DataError(f"{path}: {problem}")
            first, channels = first or geometry, channels + count
        problem = _channels_problem(channels, task)
        if problem:
            raise DataError(f"{image.files[0]}: {problem}")


def _check_memory(path: Path, image: Any, spacing_zyx: tuple[float, ...], plan: Any, members: list[Any],
                  classes: int, held: int, probabilities: bool, device: str) -> None:
    """DataError naming the image where preprocessing it as a member sees it cannot fit in the memory this
    process may use (`preprocess_memory.check_fits`): a header whose spacing is far coarser than the training
    images' (10 mm for 1 mm: a thousand times the voxels) was numpy's "Unable to allocate", or the kernel's
    kill in a container or SLURM job, after the images before it were written. Then the same for predicting
    it (`inference_memory.check_fits`): every class's probabilities of the whole case, which a large CT case
    at many classes cannot hold where its preprocessing fit. `classes`: a label run's outputs; `held`: the
    bytes predict holds through it (the image as read); `probabilities`: --save-probabilities. What the
    process holds is read once it has handed back what it freed (`checks.release_freed_memory`, 0.1 s)."""
    from medseg_bench.checks import release_freed_memory, usable_memory
    from medseg_bench.data import preprocess_memory
    from medseg_bench.data.preprocess import case_target_spacing, crop_box, resampling
    from medseg_bench.inference_memory import InferenceSize, check_fits

    release_freed_memory()  # what the networks' loading and the images before it freed: not counted held
    memory = usable_memory()
    if memory is None:
        return
    cropped = tuple(hi - lo for lo, hi in crop_box(image, plan))
    shown = " x ".join(f"{s:g}" for s in spacing_zyx)
    advice = (f"check its spacing ({shown} mm, z y x; the plan's target "
              f"{' x '.join(f'{s:g}' for s in plan.target_spacing)} mm)")
    groups: dict[tuple[int, ...], list[Any]] = {}  # the members that see it alike: one resampled case each
    for member in members:
        resampled, _ = resampling(cropped, spacing_zyx, case_target_spacing(plan, spacing_zyx,
                                                                            member.own_slices))
        groups.setdefault(tuple(resampled), []).append(member)
    channels, shape = int(image.shape[0]), tuple(image.shape[1:])
    for resampled in groups:
        preprocess_memory.check_fits(preprocess_memory.CaseSize(path, channels, shape, cropped, resampled),
                                     memory, advice)
    regions = members[0].paint is not None
    outputs = len(members[0].paint) if regions else classes
    if probabilities:
        advice += ", or leave out --save-probabilities"
    earlier = 0  # the probabilities of the groups predicted before, kept to be averaged
    on_gpu = device.startswith("cuda")
    for resampled, group in groups.items():
        for member in group:
            size = InferenceSize(path, channels, outputs, shape, cropped, resampled, tuple(member.patch_size),
                                 member.dims, member.slice_axis, member.pipeline_version, regions, member.tta,
                                 probabilities or len(groups) > 1, len(group), on_gpu, held + earlier,
                                 tile_forward=0 if on_gpu else _tile_forward(member, channels))
            check_fits(size, memory, advice)
        earlier += (8 if regions else 4) * outputs * math.prod(resampled)


def _tile_forward(member: Any, channels: int) -> int:
    """What `member`'s network holds at once on one tile on the CPU (`forward_memory.forward_bytes`; 0 where
    it cannot be counted), counted once per network and patch: predict checks every image."""
    key = (member.patch_size, channels)
    counted = _TILE_FORWARD.setdefault(member.net, {})
    if key not in counted:
        from medseg_bench.forward_memory import forward_bytes

        found = forward_bytes(member.net, channels, member.patch_size)
        counted[key] = found.peak if found is not None else 0
    return counted[key]


def _read_channels(image: _Image) -> tuple[Any, Any]:
    """A case's (C, Z, Y, X) array and geometry, its channel files stacked in order."""
    import numpy as np

    from medseg_bench.data.io import read_image

    read = [read_image(path, check_complete=True) for path in image.files]  # a cut-short NIfTI reads as 0s
    return (read[0][0] if len(read) == 1 else np.concatenate([array for array, _ in read])), read[0][1]


def _orientation_change(path: Path, stored_as: str | None, trained_as: str | None, reorient: bool) -> Any:
    """The reorientation that `--reorient` applies to an image stored otherwise than the training images
    (None when it is stored alike, or either is unknown); without `--reorient`, a warning and None."""
    from medseg_bench.data.orient import reorientation

    if trained_as is None or stored_as is None or stored_as == trained_as:
        return None
    if reorient:
        _echo(f"{path}: stored {stored_as}, predicted as stored {trained_as} like the training images "
                   "(--reorient); its label map written as the image is stored")
        return reorientation(stored_as, trained_as)
    _echo(f"warning: {path}: its axes are stored {stored_as}, the training images' {trained_as}: the "
               "network sees it turned or mirrored and may segment it badly (predict does not reorient "
               f"unless asked, as nnU-Net); store it {trained_as}, or pass --reorient, to predict it as "
               "trained", err=True)
    return None


def predict(
    runs: Annotated[list[Path], typer.Argument(
        metavar="RUN_OR_CHECKPOINT...",
        help="A finished run's folder (uses checkpoints/last.ckpt) or a checkpoint inside one; several: an "
             "ensemble (the mean of their softmax probabilities, e.g. the folds of a configuration; of "
             "region runs, the mean of their region probabilities: runs of one target).")],
    images: Annotated[Path, typer.Option(
        help="Folder of images (NIfTI, NRRD, MHA, MHD); 4D for multi-channel.")],
    out: Annotated[Path, typer.Option(help="Folder for the predicted label maps (same file names).")],
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Mirroring test-time augmentation. Default: as each run was evaluated.")]
    = None,
    postprocess: Annotated[bool, typer.Option(
        help="Apply the run's largest-component decision (postprocessing.json) when it has one; an "
             "ensemble's runs' decisions pooled.")] = True,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace predictions that already exist in --out.")] = False,
    device: Annotated[str | None, typer.Option(
        help="cpu, cuda or cuda:N (the N-th GPU). Default: cuda when available.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Data folder (a run's plan.json when it has no summary, an older run's training images' "
             "orientation). Default: $MEDSEG_BENCH_HOME/data.")] = None,
    allow_unfinished: Annotated[bool, typer.Option(
        "--allow-unfinished",
        help="Predict with a run that has not finished (interrupted, failed, or training now) from its "
             "last checkpoint, mid-training, with a warning; refused otherwise.")] = False,
    save_probabilities: Annotated[bool, typer.Option(
        "--save-probabilities",
        help="Also write NAME.npz beside each label map: the class probabilities on the image's grid "
             "(`probabilities`, K x Z x Y x X float32; an ensemble's averaged), as nnU-Net's "
             "--save_probabilities, for ensembling or calibration later. A region run's: each region's "
             "sigmoid probability, R x Z x Y x X in the task file's order of regions (not classes: they "
             "overlap and need not sum to 1).")] = False,
    reorient: Annotated[bool, typer.Option(
        "--reorient",
        help="Predict an image stored in another orientation than the run's training images (LPS where "
             "they are RAS) as if stored like them: its axes permuted and flipped, not resampled; the label "
             "map is written as the image is stored. Default: predicted as stored, with a warning (as "
             "nnU-Net).")]
    = False,
) -> None:
    """Predict label maps for every image in a folder with a trained run, or an ensemble of runs."""
    import numpy as np
    import torch

    from medseg_bench.cli import check_folder
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.io import image_suffix, write_label, write_probabilities
    from medseg_bench.data.orient import ensemble_orientation
    from medseg_bench.inference import predict_ensemble_probabilities
    from medseg_bench.locks import exclusive_folder
    from medseg_bench.postprocess import apply_postprocessing, describe

    device = _check_device(device)
    check_folder("--images", images)  # before a run is read
    _check_out_folder(images, out)
    loaded = [trained_runs.read_run(path, postprocess, allow_unfinished,
                                    lambda line: _echo(f"warning: {line}", err=True), data_dir)
              for path in runs]
    trained_runs.check_ensemble(loaded)
    task, plan = get_task(loaded[0].spec.task), loaded[0].plan
    found = _images(images, task)
    _check_images(found, task)
    trained_as = ensemble_orientation([run.folder for run in loaded], task.name, data_dir)
    if reorient and trained_as is None:
        raise UsageError(f"--reorient: how {loaded[0].folder}'s training images are stored is not known here "
                         f"(its setup.json does not say, and {task.name} is not fetched here to read them)")
    members = [trained_runs.member(run, tta) for run in loaded]
    for run, member in zip(loaded, members, strict=True):
        if tta and not member.tta:
            _echo(f"{run.folder}: predicted without --tta: its augmentation '{run.spec.aug}' never "
                       "mirrored a training image (nnU-Net mirrors only along the axes it trained with)")
    decision = trained_runs.ensemble_decision(loaded, _echo)
    if len(loaded) > 1:
        steps = describe(decision.steps) if decision is not None else ""
        post = f"; the largest component kept of {steps} (the runs' decisions pooled)" if steps else ""
        kind = "region probabilities" if loaded[0].spec.target == "regions" else "softmax probabilities"
        _echo(f"ensemble of {len(loaded)} runs: the mean of their {kind}{post}")
    run_device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out.mkdir(parents=True, exist_ok=True)
    # One predict writes into a folder at a time: another's label map, written between this one's check
    # that a file is not there and its write, put two models' label maps in one folder (and lost an .npz).
    with exclusive_folder(out, on_wait=lambda: _echo(
            f"{out}: another predict is writing into it; waiting for it to finish", err=True)):
        written = skipped = 0
        for case in found:
            path = case.files[0]
            target = out / (case.name + image_suffix(path))  # `A.NII.GZ`: `A.nii.gz`, as ITK does
            saved = out / f"{case.name}.npz"  # its probabilities, written before it
            if target.exists() and not overwrite:
                missing = f"; its probabilities {saved.name} are not there: --overwrite writes both" if (
                    save_probabilities and not saved.exists()) else ""
                _echo(f"{target}: exists, skipped (use --overwrite to replace){missing}")
                skipped += 1
                continue
            image, geometry = _read_channels(case)
            problem = _channels_problem(image.shape[0], task)  # its header said otherwise: changed since
            if problem:
                raise DataError(f"{path}: {problem}")
            change = _orientation_change(path, geometry.orientation, trained_as, reorient)
            seen, spacing = (change.apply(image), change.spacing(geometry.spacing_zyx)) if change else (
                image, geometry.spacing_zyx)
            held = image.nbytes + (0 if np.may_share_memory(seen, image) else seen.nbytes)
            _check_memory(path, seen, spacing, plan, members, task.num_classes, held, save_probabilities,
                          run_device)
            labels, probabilities = predict_ensemble_probabilities(members, seen, spacing, plan, run_device,
                                                                   save_probabilities)
            if change is not None:
                labels = change.undo(labels)
                probabilities = change.undo(probabilities) if probabilities is not None else None
            if decision is not None:
                labels = apply_postprocessing(labels, decision.steps)
            if probabilities is not None:  # before the label map: a label map there means both were written
                write_probabilities(probabilities, geometry, saved)
            elif saved.exists():  # an earlier prediction's, not this label map's
                saved.unlink()
                _echo(f"{saved}: removed, the probabilities of the label map replaced "
                           "(--save-probabilities writes them anew)")
            write_label(labels, geometry, target)
            written += 1
            _echo(f"{target}")
    _echo(f"{written} prediction(s) written to {out}" + (f", {skipped} skipped" if skipped else ""))
