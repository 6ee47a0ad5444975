"""Parity with nnU-Net v2: the same inputs through medseg-bench's code and through nnunetv2's own functions.

Checks, on fixed synthetic inputs (seeded; no data needed):
- sliding-window inference: a 3D U-Net with seeded random weights (TorchScript, so both venvs run the very
  same network) predicts volumes smaller than the patch (odd padding), of one tile, and of many tiles, with
  and without mirroring TTA: our `inference.predict_probabilities` against nnU-Net's
  `nnUNetPredictor.predict_sliding_window_return_logits` (its tiles, Gaussian, padding and mirroring), as
  shipped (float16 buffers) and with float32 buffers; the same for a 2D U-Net (smp, resnet18 encoder) with a
  2D patch, which nnU-Net slides within each slice (its 2d configuration; ours from pipeline version 11).
  nnU-Net averages the logits over the flips, and so do we from pipeline version 10;
- forward resampling of images (cubic, separate thick axis nearest) and label maps, and mapping class
  probabilities back: our `data.resample` against nnU-Net's `resample_data_or_seg_to_shape`
  (`default_resampling.py`), on six geometries: isotropic and thick-slice, two halving (every label boundary a
  tie), two whose thick-axis coordinates fall halfway between slices;
- the dataset fingerprint's foreground intensity statistics (what a CT channel is clipped and z-scored with):
  our `data.fingerprint.fingerprint` against nnU-Net's `DatasetFingerprintExtractor.run` on the same synthetic
  CT cases (NIfTI files of five spacings; a zero border that cropping removes, with foreground in it, and a
  zero region inside the crop box open to the volume's edge, with foreground against it and in it, which
  nnU-Net labels -1 before it resamples);
- the whole preprocessing of those cases, and of five synthetic skull-stripped two-channel MRI cases (z-scored
  within the non-zero mask; a lesion across the brain's edge): our plan's target spacing and cache
  (`data.plan.make_plan`, `data.preprocess.preprocess_case`: crop, normalisation, resampling) against
  nnU-Net's `plan_experiments` and `preprocess` (3d_fullres; 2d against our cache of 2D runs at each case's
  slices).

nnU-Net runs in its own venv (default /tmp/nnunet-venv; installed on first use as bench/preprocess.py does).

    .venv/bin/python bench/nnunet_parity.py [--nnunet-venv /tmp/nnunet-venv]

Prints a table and writes bench/results/nnunet_parity.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

from bench.preprocess import NNUNET_VENV, ensure_nnunet  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PATCH = (16, 32, 32)
NUM_CLASSES = 3
# (name, image shape): smaller than the patch with odd padding, exactly one tile, many tiles on every axis
VOLUMES = [("smaller than the patch (odd padding)", (11, 25, 24)), ("one tile", PATCH),
           ("many tiles", (45, 90, 61))]
PATCH_2D = (64, 64)
VOLUMES_2D = [("2D, slices smaller than the patch (odd padding)", (3, 41, 50)),
              ("2D, slices of one tile", (2, *PATCH_2D)), ("2D, slices of many tiles", (3, 150, 97))]
# (name, shape, spacing, target spacing): zyx
GEOMETRIES = [("isotropic 1.25 -> 1 mm", (24, 30, 28), (1.25, 1.25, 1.25), (1.0, 1.0, 1.0)),
              ("thick slices 5 x 0.7 -> 4.2 x 0.8 mm", (10, 60, 52), (5.0, 0.7, 0.7), (4.2, 0.8, 0.8)),
              # halving: every label boundary falls halfway between two voxels, an exact tie
              ("isotropic 0.5 -> 1 mm", (40, 44, 36), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
              ("thick slices 5 x 0.5 -> 5 x 1 mm", (8, 64, 60), (5.0, 0.5, 0.5), (5.0, 1.0, 1.0)),
              # 6 slices to 7: a thick-axis coordinate halfway between two slices in exact arithmetic
              ("6 thick slices -> 7", (6, 40, 36), (5.0, 0.8, 0.8), (30 / 7, 0.8, 0.8)),
              # mapped back from 20 slices to 22: a halfway coordinate again (pipeline version 12)
              ("22 thick slices -> 20", (22, 36, 32), (4.0, 0.8, 0.8), (4.4, 0.8, 0.8))]

DEFAULT_OUTPUT = REPO / "bench" / "results" / "nnunet_parity.md"
NNUNET_SIDE = """
import json
import os
import sys
os.environ["nnUNet_raw"] = sys.argv[1] + "/raw"
os.environ["nnUNet_preprocessed"] = sys.argv[1] + "/preprocessed"
os.environ["nnUNet_results"] = sys.argv[1] + "/results"
from types import SimpleNamespace
import numpy as np
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor


def inference_and_resampling(work):
    inputs = np.load(work + "/inputs.npz")
    out = {}
    import functools
    import nnunetv2.inference.predict_from_raw_data as predict_module
    shipped_gaussian, shipped_half = predict_module.compute_gaussian, torch.half
    for dims, precision, tta in ((d, p, t) for d in ("", "2d") for p in ("16", "32") for t in (False, True)):
        # "32": the same code with float32 buffers and Gaussian (nnU-Net's are float16, where the
        # Gaussian's smallest weights, near a tile's corners, underflow and the stitched logits there are
        # coarsely quantized)
        torch.half = shipped_half if precision == "16" else torch.float32
        predict_module.compute_gaussian = shipped_gaussian if precision == "16" else functools.partial(
            shipped_gaussian, dtype=torch.float32)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                    perform_everything_on_device=False, device=torch.device("cpu"),
                                    allow_tqdm=False)
        predictor.network = torch.jit.load(work + f"/net{dims}.pt")
        predictor.configuration_manager = SimpleNamespace(patch_size=list(inputs[f"patch{dims}"]))
        predictor.label_manager = SimpleNamespace(num_segmentation_heads=int(inputs["classes"]))
        predictor.allowed_mirroring_axes = (0, 1) if dims else (0, 1, 2)
        for i in range(int(inputs[f"volumes{dims}"])):
            x = torch.from_numpy(inputs[f"volume{dims}{i}"])
            with torch.no_grad():
                logits = predictor.predict_sliding_window_return_logits(x).float().numpy()
                out[f"logits{dims}{i}_{int(tta)}_{precision}"] = logits
    torch.half = shipped_half
    for i in range(int(inputs["geometries"])):
        spacing, target = inputs[f"spacing{i}"], inputs[f"target{i}"]
        new_shape = inputs[f"new_shape{i}"]
        resample = functools.partial(resample_data_or_seg_to_shape, order_z=0, force_separate_z=None)
        out[f"image{i}"] = resample(inputs[f"image{i}"], new_shape, spacing, target, is_seg=False, order=3)
        out[f"label{i}"] = resample(inputs[f"label{i}"], new_shape, spacing, target, is_seg=True, order=1)
        # back from the target spacing to the original, as nnU-Net's export resamples logits
        out[f"back{i}"] = resample(inputs[f"logits_small{i}"], inputs[f"image{i}"].shape[1:], target, spacing,
                                   is_seg=False, order=1)
    np.savez(work + "/nnunet.npz", **out)


if __name__ == "__main__":  # the fingerprint's pool spawns processes that import this file
    torch.set_num_threads(2)
    work = sys.argv[1]
    inference_and_resampling(work)
    fp = DatasetFingerprintExtractor(FINGERPRINT_DATASET, num_processes=2).run()
    with open(work + "/fingerprint.json", "w") as f:
        json.dump(fp["foreground_intensity_properties_per_channel"][0], f)
    # the whole preprocessing: plan, then crop, normalise and resample every case (2d and 3d_fullres)
    import blosc2
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments, preprocess
    arrays = {}
    for dataset in (FINGERPRINT_DATASET, MR_DATASET):
        if dataset != FINGERPRINT_DATASET:
            DatasetFingerprintExtractor(dataset, num_processes=2).run()
        dataset_id = int(dataset[len("Dataset"):].split("_")[0])
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=("2d", "3d_fullres"), num_processes=(2, 2),
                   show_progress_bar=False)
        folder = os.path.join(work, "preprocessed", dataset)
        with open(os.path.join(folder, "nnUNetPlans.json")) as f:
            plans = json.load(f)
        for config in ("2d", "3d_fullres"):
            arrays[f"{dataset}/{config}_spacing"] = np.array(plans["configurations"][config]["spacing"])
            masks = plans["configurations"][config]["use_mask_for_norm"]
            arrays[f"{dataset}/{config}_mask"] = np.array(masks)
            for name in sorted(os.listdir(os.path.join(folder, "nnUNetPlans_" + config))):
                if name.endswith(".b2nd"):
                    path = os.path.join(folder, "nnUNetPlans_" + config, name)
                    key = f"{dataset}/{config}/{name[:-len('.b2nd')]}"
                    arrays[key] = blosc2.open(urlpath=path, mode="r")[:]
    np.savez(work + "/preprocessed.npz", **arrays)
"""
FINGERPRINT_DATASET = "Dataset901_CTParity"
FINGERPRINT_CASES = 5
MR_DATASET = "Dataset902_MRParity"  # two skull-stripped MRI channels: z-scored within the non-zero mask
MR_SPACINGS_XYZ = [(1.0, 1.0, 1.0), (0.9, 0.9, 1.0), (1.1, 1.1, 1.2), (0.95, 0.95, 0.9), (1.0, 1.0, 1.1)]
# (x, y, z) mm: thick slices (median 3 mm, so the other cases' slices are resampled on their own, nearest),
# and in-plane spacings around the median 0.8 mm (resampled cubic, labels linear)
CT_SPACINGS_XYZ = [(0.8, 0.8, 2.5), (0.75, 0.75, 3.0), (0.9, 0.9, 5.0), (0.72, 0.72, 2.0), (0.8, 0.8, 4.0)]


def _net(dims: str = "3d") -> torch.jit.ScriptModule:
    from medseg_bench.models import ModelInputs, build_model

    torch.manual_seed(0)
    patch, encoder = (PATCH, None) if dims == "3d" else (PATCH_2D, "resnet18")
    net = build_model("unet", dims, ModelInputs(1, NUM_CLASSES, patch, encoder, spacing=(1.0,) * len(patch)))
    with torch.no_grad():
        return torch.jit.trace(net.eval(), torch.zeros(1, 1, *patch))


def _geometry_inputs(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """An image with edges (a bright box, noise) and a three-label map of nested blobs."""
    z, y, x = np.indices(shape, dtype=np.float32)
    centre = [s / 2 for s in shape]
    radius = sum(((axis - c) / s) ** 2 for axis, c, s in zip((z, y, x), centre, shape, strict=True))
    label = np.where(radius < 0.04, 2, np.where(radius < 0.12, 1, 0)).astype(np.uint8)
    image = (label * 3.0 + rng.normal(0, 1, shape)).astype(np.float32)
    return image[None], label[None]


def _ct_dataset(root: Path, rng: np.random.Generator) -> list:
    """Synthetic CT cases, written both in MSD layout (ours) and as nnU-Net raw data (same NIfTI files)."""
    import SimpleITK as sitk

    from medseg_bench.data.msd import Case

    def write(array: np.ndarray, path: Path, spacing_xyz: tuple[float, float, float]) -> None:
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing_xyz)
        sitk.WriteImage(itk, str(path))

    raw = root / "raw" / FINGERPRINT_DATASET
    for sub in ("imagesTr", "labelsTr"):
        (raw / sub).mkdir(parents=True)
    cases = []
    for i in range(FINGERPRINT_CASES):
        shape = (20 + 3 * i, 40, 36 - 2 * i)
        image, label = _geometry_inputs(rng, shape)
        hu = (image[0] * 120 - 300 + rng.normal(0, 40, shape)).astype(np.float32)
        hu[:, :3] = 0.0  # a zero border, which cropping removes: the foreground in it is not sampled
        hu[:, -2:] = 0.0
        label[0, :, 1, :6] = 1
        # a zero region inside the crop box, open to the volume's edge (nnU-Net's label -1 there), foreground
        # against it and in it
        hu[:, 10:16, :5] = 0.0
        label[0, :, 10:16, 5:8] = 1
        label[0, :, 12:14, 2:5] = 2
        name = f"ct_{i:03d}"
        write(hu, raw / "imagesTr" / f"{name}_0000.nii.gz", CT_SPACINGS_XYZ[i])
        write(label[0], raw / "labelsTr" / f"{name}.nii.gz", CT_SPACINGS_XYZ[i])
        cases.append(Case(name, raw / "imagesTr" / f"{name}_0000.nii.gz",
                          raw / "labelsTr" / f"{name}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": FINGERPRINT_CASES, "file_ending": ".nii.gz"}))
    return cases


def _mr_dataset(root: Path, rng: np.random.Generator) -> list:
    """Synthetic skull-stripped two-channel MRI cases: nnU-Net raw data (a file per channel) and, for us, the
    same arrays as MSD's 4D NIfTI; zero outside a "brain" small enough that nnU-Net z-scores within the
    non-zero mask; foreground at the brain's edge, and some of it where the image is zero (cut by the
    skull stripping)."""
    import SimpleITK as sitk

    from medseg_bench.data.msd import Case

    raw, ours = root / "raw" / MR_DATASET, root / "ours_mr_images"
    for folder in (raw / "imagesTr", raw / "labelsTr", ours):
        folder.mkdir(parents=True)

    def volume(array: np.ndarray, spacing_xyz: tuple[float, float, float]) -> sitk.Image:
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing_xyz)
        return itk

    cases = []
    for i, spacing in enumerate(MR_SPACINGS_XYZ):
        shape = (24 + 2 * i, 48, 44 - 2 * i)
        z, y, x = np.indices(shape, dtype=np.float32)
        centre = [s / 2 for s in shape]
        axes = zip((z, y, x), centre, shape, strict=True)
        brain = sum(((a - c) / (0.36 * s)) ** 2 for a, c, s in axes) <= 1
        edge = (centre[0], centre[1], centre[2] + 0.3 * shape[2])  # a lesion across the brain's edge
        lesion = sum(((a - c) / (0.12 * s)) ** 2 for a, c, s in zip((z, y, x), edge, shape, strict=True))
        label = np.where(lesion <= 0.3, 2, np.where(lesion <= 1, 1, 0)).astype(np.uint8)
        label[~brain & (x > edge[2] + 0.06 * shape[2])] = 0  # the lesion's far part outside the brain: gone,
        channels = [np.where(brain, 100 + 40.0 * label + rng.normal(0, 10, shape), 0.0).astype(np.float32),
                    np.where(brain, 60 - 15.0 * label + rng.normal(0, 8, shape), 0.0).astype(np.float32)]
        name = f"mr_{i:03d}"  # its near part kept as foreground where the image is zero
        for c, channel in enumerate(channels):
            sitk.WriteImage(volume(channel, spacing), str(raw / "imagesTr" / f"{name}_{c:04d}.nii.gz"))
        sitk.WriteImage(volume(label, spacing), str(raw / "labelsTr" / f"{name}.nii.gz"))
        sitk.WriteImage(sitk.JoinSeries([volume(channel, spacing) for channel in channels]),
                        str(ours / f"{name}.nii.gz"))
        cases.append(Case(name, ours / f"{name}.nii.gz", raw / "labelsTr" / f"{name}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": len(MR_SPACINGS_XYZ), "file_ending": ".nii.gz"}))
    return cases


def _preprocessing_rows(task: object, dataset_fingerprint: dict, cases: list, theirs: dict[str, np.ndarray],
                        work: Path, dataset: str, kind: str) -> list[tuple]:
    """Our plan and cache of `cases` against nnU-Net's plans and preprocessed arrays of `dataset`: target
    spacing (and, for MRI, whether channels are z-scored within the non-zero mask), then every case's image
    (cropped, normalised, resampled) and label map, for 3d_fullres (our 3D cache) and 2d (our cache of 2D
    runs at each case's slice spacing)."""
    from medseg_bench.data.plan import make_plan
    from medseg_bench.data.preprocess import preprocess_case

    plan = make_plan(task, dataset_fingerprint)  # type: ignore[arg-type]
    theirs = {k[len(dataset) + 1:]: v for k, v in theirs.items() if k.startswith(dataset + "/")}
    rows: list[tuple] = []
    for config, own_slices in (("3d_fullres", False), ("2d", True)):
        ours = plan.target_spacing[1:] if own_slices else plan.target_spacing
        spacing_difference = float(np.abs(np.subtract(ours, theirs[f"{config}_spacing"])).max())
        shown = " x ".join(f"{s:g}" for s in ours)
        rows.append((f"whole preprocessing, {kind} {config}: target spacing (mm)", shown, spacing_difference,
                     None, None))
        if kind == "MR":
            masks = [bool(s.get("nonzero_mask")) for s in plan.channel_normalization or ()]
            same = masks == [bool(m) for m in theirs[f"{config}_mask"]]
            rows.append((f"whole preprocessing, {kind} {config}: z-score within the non-zero mask",
                         ", ".join(map(str, masks)) + ("" if same else " (nnU-Net: otherwise)"), None, None,
                         None))
        out = work / f"ours_{kind}_{config}"
        out.mkdir()
        image_difference, labels_differing, voxels, shapes_differing = 0.0, 0, 0, 0
        for case in cases:
            preprocess_case(case, plan, out, own_slices=own_slices)
            image = np.load(out / f"{case.case_id}.img.npy")
            label = np.load(out / f"{case.case_id}.seg.npy")
            their_image = theirs[f"{config}/{case.case_id}"]
            their_label = np.maximum(theirs[f"{config}/{case.case_id}_seg"][0], 0)  # -1: outside the mask
            voxels += their_label.size
            if image.shape != their_image.shape:
                shapes_differing += 1
                labels_differing += their_label.size
                continue
            image_difference = max(image_difference, float(np.abs(image - their_image).max()))
            labels_differing += int((label != their_label).sum())
        shapes = f"{len(cases)} cases" + (f", {shapes_differing} of other shapes" if shapes_differing else "")
        rows.append((f"whole preprocessing, {kind} {config}: images (crop, normalisation, resampling)",
                     shapes, image_difference, None, voxels))
        rows.append((f"whole preprocessing, {kind} {config}: label maps", shapes, None, labels_differing,
                     voxels))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-venv", type=Path, default=NNUNET_VENV)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    ensure_nnunet(args.nnunet_venv)
    from medseg_bench.data.fingerprint import fingerprint
    from medseg_bench.data.resample import (
        resample_image,
        resample_label,
        resample_probabilities,
        separate_axis,
        target_shape,
    )
    from medseg_bench.inference import predict_probabilities
    from medseg_bench.spec import TaskSpec

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    nets = {"3d": _net("3d"), "2d": _net("2d")}
    inputs: dict[str, np.ndarray] = {
        "patch": np.array(PATCH), "classes": np.array(NUM_CLASSES), "volumes": np.array(len(VOLUMES)),
        "patch2d": np.array(PATCH_2D), "volumes2d": np.array(len(VOLUMES_2D)),
        "geometries": np.array(len(GEOMETRIES))}
    for i, (_, shape) in enumerate(VOLUMES):
        inputs[f"volume{i}"] = rng.normal(0, 1, (1, *shape)).astype(np.float32)
    for i, (_, shape) in enumerate(VOLUMES_2D):
        inputs[f"volume2d{i}"] = rng.normal(0, 1, (1, *shape)).astype(np.float32)
    for i, (_, shape, spacing, target) in enumerate(GEOMETRIES):
        image, label = _geometry_inputs(rng, shape)
        new_shape = target_shape(shape, spacing, target)
        inputs |= {f"image{i}": image, f"label{i}": label, f"spacing{i}": np.array(spacing),
                   f"target{i}": np.array(target), f"new_shape{i}": np.array(new_shape),
                   f"logits_small{i}": rng.normal(0, 3, (NUM_CLASSES, *new_shape)).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        nets["3d"].save(f"{tmp}/net.pt")
        nets["2d"].save(f"{tmp}/net2d.pt")
        np.savez(f"{tmp}/inputs.npz", **inputs)
        cases = _ct_dataset(Path(tmp), rng)
        script = Path(tmp) / "nnunet_side.py"
        mr_cases = _mr_dataset(Path(tmp), rng)
        script.write_text(NNUNET_SIDE.replace("FINGERPRINT_DATASET", repr(FINGERPRINT_DATASET))
                          .replace("MR_DATASET", repr(MR_DATASET)))
        start = time.perf_counter()
        proc = subprocess.run([str(args.nnunet_venv / "bin" / "python"), str(script), tmp],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"nnU-Net side failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                     f"{proc.stderr[-3000:]}")
        nnunet_s = time.perf_counter() - start
        theirs = dict(np.load(f"{tmp}/nnunet.npz"))
        their_stats = json.loads(Path(f"{tmp}/fingerprint.json").read_text())
        task = TaskSpec(name="Task99_CTParity", labels={0: "background", 1: "a", 2: "b"}, modalities=["CT"],
                        imaging="CT")
        dataset_fingerprint = fingerprint(task, cases, workers=2)
        our_stats = dataset_fingerprint["foreground_intensity"][0]
        preprocessed = dict(np.load(f"{tmp}/preprocessed.npz"))
        preprocessing_rows = _preprocessing_rows(task, dataset_fingerprint, cases, preprocessed, Path(tmp),
                                                 FINGERPRINT_DATASET, "CT")
        mr_task = TaskSpec(name="Task98_MRParity", labels={0: "background", 1: "a", 2: "b"},
                           modalities=["T1", "T2"], imaging="MRI", tensor_image_size="4D")
        mr_fingerprint = fingerprint(mr_task, mr_cases, workers=2)
        preprocessing_rows += _preprocessing_rows(mr_task, mr_fingerprint, mr_cases, preprocessed, Path(tmp),
                                                  MR_DATASET, "MR")

    rows = []
    cases_by_dims = (("3d", "", PATCH, VOLUMES), ("2d", "2d", PATCH_2D, VOLUMES_2D))
    for dims, key, patch, volumes, precision in ((*c, p) for c in cases_by_dims for p in ("32", "16")):
        for i, (name, shape) in enumerate(volumes):
            for tta in (False, True):
                ours = predict_probabilities(nets[dims], inputs[f"volume{key}{i}"], dims, patch, tta=tta)
                logits = theirs[f"logits{key}{i}_{int(tta)}_{precision}"]
                ref = torch.softmax(torch.from_numpy(logits), 0).numpy()
                rows.append((f"inference{', TTA' if tta else ''}, nnU-Net's float{precision} buffers: {name}",
                             "x".join(map(str, shape)), float(np.abs(ours - ref).max()),
                             int((ours.argmax(0) != ref.argmax(0)).sum()), int(np.prod(shape))))
    for i, (name, shape, spacing, target) in enumerate(GEOMETRIES):
        new_shape = tuple(int(s) for s in inputs[f"new_shape{i}"])
        forward = separate_axis(spacing, target)
        image = resample_image(inputs[f"image{i}"], new_shape, forward)
        rows.append((f"image resampling: {name}", "x".join(map(str, new_shape)),
                     float(np.abs(image - theirs[f"image{i}"]).max()), None, int(np.prod(new_shape))))
        label = resample_label(inputs[f"label{i}"][0], new_shape, forward)
        rows.append((f"label resampling: {name}", "x".join(map(str, new_shape)), None,
                     int((label != theirs[f"label{i}"][0]).sum()), int(np.prod(new_shape))))
        logits = inputs[f"logits_small{i}"]
        probs = torch.softmax(torch.from_numpy(logits), 0).numpy()
        back = resample_probabilities(probs, shape, separate_axis(target, spacing), log_space=True,
                                      nnunet_resize=True)
        rows.append((f"probabilities mapped back: {name}", "x".join(map(str, shape)), None,
                     int((back != theirs[f"back{i}"].argmax(0)).sum()), int(np.prod(shape))))

    for ours_key, their_key in (("p00_5", "percentile_00_5"), ("p99_5", "percentile_99_5"), ("mean", "mean"),
                                ("std", "std"), ("median", "median"), ("min", "min"), ("max", "max")):
        difference = abs(our_stats[ours_key] - their_stats[their_key])
        rows.append((f"CT fingerprint, foreground {ours_key} ({FINGERPRINT_CASES} cases)",
                     f"{our_stats[ours_key]:.6g}", difference, None, None))
    rows += preprocessing_rows

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{value:.2e}"

    command = ".venv/bin/python bench/nnunet_parity.py" + "".join(  # every option not at its default
        f" {flag} {value}" for flag, value, default in (("--nnunet-venv", args.nnunet_venv, NNUNET_VENV),
                                                        ("--output", args.output, DEFAULT_OUTPUT))
        if value != default)
    lines = [
        "# Parity with nnU-Net v2",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}, torch {torch.__version__}, nnU-Net side "
        f"{nnunet_s:.1f} s. Command: `{command}`.",
        "",
        "| check | shape (fingerprint: our value) | max abs difference | voxels of another class | voxels |",
        "|---|---|---|---|---|",
        *(f"| {name} | {shape} | {cell(diff)} | {'–' if n is None else n} | {total or '–'} |"
          for name, shape, diff, n, total in rows),
        "",
        "Inference differences are probabilities. nnU-Net accumulates the stitched logits in float16 (the "
        "float16 rows: its code as shipped); there its Gaussian's smallest weights, near a tile's corners, "
        "underflow and the logits stitched there are coarsely quantized, which a random network, whose "
        "classes are nearly tied everywhere, shows most. The float32 rows run nnU-Net's same code with "
        "float32 buffers (`torch.half` and `compute_gaussian`'s dtype patched in its process). Image "
        "resampling differences are intensities; the other rows count voxels whose class differs (labels: "
        "an exact tie, as at every boundary when halving, goes to the nearest voxel's label). The "
        "fingerprint rows give our value and its difference from nnU-Net's "
        "`DatasetFingerprintExtractor.run` on the same files: both draw 10^8 / cases voxels per case "
        "with replacement.",
    ]
    text = "\n".join(lines) + "\n"
    publish(text, args.output)


if __name__ == "__main__":
    main()
