"""Benchmark: the memory predicting one preprocessed case needs, measured, against `inference_memory`'s count.

Each case runs `inference.predict_ensemble_probabilities` (what `predict` runs for an image; the sweep's
evaluation runs the same sliding window and mapping back) in a process of its own, on the CPU, with networks
of one 1 x 1 (x 1) convolution, whose activations on a batch of tiles are small, and then (`NETWORK_CASES`)
with the registry's networks, random weights, whose activations `least_bytes` counts (`tile_forward`, from
`forward_memory`). Preprocessing is stood in for by a random resampled image of the
case's shape at the plan's target spacing, made inside the measured call, as predict makes it there. The
peak resident memory of that call is read above the process's memory before it (Linux:
`/proc/self/clear_refs` resets the peak, `VmHWM` reads it), every array of 64 KiB or more mapped on its own
(`MALLOC_MMAP_THRESHOLD_`: else memory the warm-up freed is reused uncounted). The cases cover 2D and 3D
runs, label and region runs, pipeline versions 9 (MONAI's window, whole-volume flips), 11 and the current
one, mirroring, ensembles, the probabilities mapped back (`predict --save-probabilities`), up- and
downsampling with and without a separate slice axis, and 2 to 14 classes. The table gives, per case, the
measured peak, `least_bytes` (what the case certainly holds at once: a case over the memory this process may
use is refused) and `peak_bytes` (the envelope), and their ratios to the measured peak: `least_bytes` must
be at most 1, `peak_bytes` at least 1.

A second table measures one forward pass of a network on a batch of tiles in a process of its own
(`FORWARD_CASES`: the registry's 3D and 2D networks, tiles of 64^3 to 128^3 and 128^2 to 256^2, 1 to 32 at
once), against `forward_memory`'s count of it on the meta device (what it certainly holds), the largest
single tensor, and the envelope `peak_bytes` takes for it (`FORWARD_FACTOR`).

A third table measures what an evaluation (`run.evaluate_fold`) holds after predicting a case, as it calls
them: its prediction (uint8, on the original grid) read beside the label map (`io.read_label`, from a
`.nii.gz`), the prediction written (`io.write_label`) and every metric of `evaluate_case` for each label (and
region); with postprocessing, both spilled to disk (`case_spill`), the decision (`postprocess.decide_as`)
and the decided prediction scored. The synthetic cases: an ellipsoid split into the labels along x, the
prediction the reference moved by (1, 2, 2) voxels with a stray blob of each label in a corner of the grid
(every label's box is the whole grid, and the largest-component step has components to remove), some with a
share of the voxels scattered stray labels (an untrained network's prediction). Against them
`scoring_bytes` (what scoring certainly holds) and `scoring_peak_bytes` (its envelope).

Usage:
    .venv/bin/python bench/inference_memory.py [--output bench/results/inference_memory.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

from medseg_bench.forward_memory import planned_forward_bytes  # noqa: E402
from medseg_bench.inference_memory import (  # noqa: E402
    DECISION_BYTES,
    FORWARD_FACTOR,
    PEAK_FACTOR,
    PEAK_SLACK,
    SCORE_BYTES,
    SCORE_PEAK_BYTES,
    InferenceSize,
    least_bytes,
    peak_bytes,
    scoring_bytes,
    scoring_peak_bytes,
)
from medseg_bench.models import ModelInputs, variant  # noqa: E402
from medseg_bench.provenance import cpu_model  # noqa: E402
from medseg_bench.spec import PIPELINE_VERSION  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "inference_memory.md"
MiB = 2**20
V = PIPELINE_VERSION
# dims, channels, outputs (classes or regions), regions, shape as stored (z, y, x), spacing, target spacing
# (mm), pipeline version, mirroring, probabilities mapped back, ensemble members
CASES: list[tuple[str, int, int, bool, tuple[int, int, int], tuple[float, ...], tuple[float, ...], int, bool,
                  bool, int]] = [
    ("3d", 1, 3, False, (64, 256, 256), (3, 1, 1), (1, 1, 1), V, False, False, 1),
    ("3d", 1, 3, False, (64, 256, 256), (3, 1, 1), (1, 1, 1), V, False, True, 1),
    ("3d", 1, 9, False, (128, 128, 128), (1, 1, 1), (1, 1, 1), V, False, False, 1),
    ("3d", 1, 14, False, (64, 128, 128), (1, 1, 1), (1, 1, 1), V, False, True, 1),
    ("3d", 2, 4, False, (100, 200, 200), (1, 1, 1), (2, 2, 2), V, False, False, 1),
    ("3d", 2, 4, False, (100, 200, 200), (1, 1, 1), (2, 2, 2), V, False, True, 1),
    ("3d", 1, 2, False, (20, 300, 300), (4, 0.7, 0.7), (4, 0.5, 0.5), V, False, False, 1),
    ("3d", 1, 3, False, (16, 512, 512), (5, 0.8, 0.8), (1.5, 0.8, 0.8), V, True, False, 1),
    ("3d", 1, 3, False, (96, 160, 160), (1, 1, 1), (1, 1, 1), V, False, False, 3),
    ("3d", 4, 3, True, (80, 160, 160), (1, 1, 1), (1, 1, 1), V, False, False, 1),
    ("3d", 1, 3, True, (40, 200, 200), (1, 1, 1), (1.5, 1.5, 1.5), V, False, True, 1),
    ("3d", 1, 4, False, (40, 256, 256), (5, 1, 1), (2.5, 1, 1), 11, False, False, 1),
    ("3d", 1, 3, False, (96, 160, 160), (1, 1, 1), (1, 1, 1), 9, False, False, 1),
    ("3d", 1, 2, False, (64, 160, 160), (1, 1, 1), (1, 1, 1), 9, True, False, 1),
    ("2d", 1, 3, False, (16, 512, 512), (5, 0.8, 0.8), (5, 0.8, 0.8), V, False, False, 1),
    ("2d", 1, 5, False, (40, 256, 256), (1, 0.5, 0.5), (1, 1, 1), V, True, True, 1),
    ("2d", 2, 2, True, (48, 256, 256), (1, 1, 1), (1, 1, 1), V, False, False, 1),
    ("2d", 1, 3, False, (48, 200, 200), (1, 1, 1), (1, 1, 1), 10, False, False, 1),
    ("2d", 1, 3, False, (48, 200, 200), (1, 1, 1), (1, 1, 1), 9, True, False, 1),
]
PATCH = {"3d": (48, 64, 64), "2d": (64, 64)}
# predicting with the registry's networks (random weights) on the CPU, their activations among what is held:
# arch, dims, channels, classes, shape as stored (z, y, x) at 1 mm, patch, pipeline version
NETWORK_CASES: list[tuple[str, str, int, int, tuple[int, int, int], tuple[int, ...], int]] = [
    ("dynunet", "3d", 1, 3, (96, 96, 96), (64, 64, 64), V),
    ("dynunet", "3d", 1, 3, (128, 128, 128), (128, 128, 128), V),
    ("unet", "3d", 1, 2, (128, 128, 128), (96, 96, 96), V),
    ("unet", "2d", 1, 3, (40, 256, 256), (256, 256), V),
    ("unet", "2d", 1, 3, (40, 200, 200), (128, 128), 10),
]
# one forward pass of a batch of tiles, as the sliding window makes it (`torch.cat`) and runs it on the CPU:
# arch, dims, classes, patch, tiles at once
FORWARD_CASES: list[tuple[str, str, int, tuple[int, ...], int]] = [
    ("dynunet", "3d", 3, (64, 64, 64), 1),
    ("dynunet", "3d", 3, (64, 64, 64), 4),
    ("dynunet", "3d", 3, (96, 96, 96), 2),
    ("dynunet", "3d", 3, (128, 128, 128), 1),
    ("dynunet", "3d", 3, (128, 128, 128), 2),
    ("unet", "3d", 2, (96, 96, 96), 4),
    ("unet", "3d", 14, (96, 96, 96), 1),
    ("segresnet", "3d", 3, (96, 96, 96), 2),
    ("basicunet", "3d", 3, (96, 96, 96), 1),
    ("attentionunet", "3d", 3, (96, 96, 96), 1),
    ("vnet", "3d", 3, (64, 64, 64), 2),
    ("unetr", "3d", 3, (96, 96, 96), 1),
    ("swinunetr", "3d", 3, (64, 64, 64), 1),
    ("unet", "2d", 3, (128, 128), 32),
    ("unet", "2d", 3, (256, 256), 8),
    ("unet", "2d", 3, (256, 256), 32),
    ("unetplusplus", "2d", 3, (256, 256), 8),
    ("upernet", "2d", 3, (256, 256), 8),
    ("segformer", "2d", 3, (256, 256), 8),
    ("deeplab", "2d", 3, (256, 256), 8),
    ("fcn", "2d", 3, (256, 256), 4),  # over its default encoder, ResNet-50
]
# shape as stored (z, y, x), labels, with regions (each label with those above it, as BraTS's), postprocessed,
# spacing (mm), the share of voxels a stray label
SCORING_CASES: list[tuple[tuple[int, int, int], int, bool, bool, tuple[float, ...], float]] = [
    ((64, 128, 128), 3, False, False, (1, 1, 1), 0.0),
    ((128, 256, 256), 1, False, False, (1, 1, 1), 0.0),
    ((128, 256, 256), 3, False, False, (1, 1, 1), 0.0),
    ((128, 256, 256), 8, False, False, (1, 1, 1), 0.0),
    ((128, 256, 256), 3, True, False, (1, 1, 1), 0.0),
    ((128, 256, 256), 3, False, True, (1, 1, 1), 0.0),
    ((128, 256, 256), 3, True, True, (1, 1, 1), 0.0),
    ((40, 256, 256), 3, False, False, (5, 0.8, 0.8), 0.0),
    ((200, 384, 384), 3, False, False, (1, 0.8, 0.8), 0.0),
    ((200, 384, 384), 3, False, True, (1, 0.8, 0.8), 0.0),
    ((400, 512, 512), 3, False, False, (1, 0.8, 0.8), 0.0),
    ((400, 512, 512), 3, False, True, (1, 0.8, 0.8), 0.0),
    ((128, 256, 256), 3, False, False, (1, 1, 1), 0.001),
    ((128, 256, 256), 3, False, False, (1, 1, 1), 0.01),
    ((128, 256, 256), 3, False, True, (1, 1, 1), 0.01),
    ((128, 256, 256), 3, False, False, (1, 1, 1), 0.05),
]
NOISE_BOUND = 0.01  # the envelope is held to predictions with at most this share of stray voxels

_CHILD = r"""
import json, sys
from types import SimpleNamespace
import numpy as np
import torch
from torch import nn
from medseg_bench.data import preprocess
from medseg_bench.data.resample import nonzero_box
from medseg_bench.inference import Member, predict_ensemble_probabilities

(dims, channels, outputs, regions, shape, spacing, target, version, tta, probabilities, members, patch,
 arch) = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
rng = np.random.default_rng(0)


def case(shape):
    # the crop box of an image of `shape` whose first eighth of rows is zero, and its grid at the target
    mask = np.ones((1, *shape), dtype=bool)
    mask[:, :, : shape[1] // 8] = False
    box = nonzero_box(mask)
    cropped = [hi - lo for lo, hi in box]
    resampled, _ = preprocess.resampling(cropped, spacing, target)
    return box, cropped, resampled, {"shape_original_zyx": list(shape), "spacing_original_zyx": list(spacing),
                                     "spacing_preprocessed_zyx": list(target), "crop_box": box}


def predict(shape):
    # `predict_ensemble_probabilities` of an image of `shape`: its preprocessing stood in for by a random
    # image at the target spacing, made inside the call as predict makes it there
    box, cropped, resampled, grid = case(shape)
    preprocess.preprocess_image = lambda *args, **kwargs: (
        rng.standard_normal((channels, *resampled), dtype=np.float32), None, grid)
    preprocess.crop_box = lambda image, plan: box
    labels, probs = predict_ensemble_probabilities(ensemble, np.zeros((channels, 1, 1, 1), np.float32),
                                                   spacing, plan, "cpu", probabilities)
    assert labels.shape == tuple(shape)
    return cropped, resampled


conv = nn.Conv3d if dims == "3d" else nn.Conv2d
paint = tuple(range(1, outputs + 1)) if regions else None


def network():
    if arch is None:
        return conv(channels, outputs, 1)
    from medseg_bench.models import ModelInputs, build_model

    return build_model(arch, dims, ModelInputs(channels, outputs, tuple(patch), spacing=tuple(target),
                                               pipeline_version=version)).eval()


ensemble = [Member(network(), dims, tuple(patch), tta, 0, version, False, paint) for _ in range(members)]
plan = SimpleNamespace(target_spacing=tuple(target))
# the process's own: what the first prediction imports and sets up (scipy.ndimage, MONAI, torch's threads)
predict([max(2, s // 8) for s in shape])


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


import gc
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak resident memory starts again from now
before = status("VmRSS:")
cropped, resampled = predict(shape)
peak = status("VmHWM:") - before
print(json.dumps({"peak": peak, "cropped": cropped, "resampled": list(resampled)}))
"""


_SCORING_CHILD = r"""
import gc, json, sys, tempfile
from pathlib import Path
import numpy as np
from medseg_bench.case_spill import SpilledArrays
from medseg_bench.data.io import Geometry, read_label, write_label
from medseg_bench.metrics import MetricSettings, evaluate_case
from medseg_bench.postprocess import apply_postprocessing, decide_as
from medseg_bench.spec import PIPELINE_VERSION

shape, labels, with_regions, postprocess, spacing, noise = json.loads(sys.argv[1])
foreground = list(range(1, labels + 1))
regions = {f"r{i}": list(range(i, labels + 1)) for i in foreground} if with_regions else None
settings = MetricSettings(nsd_tolerance_mm=1.0)


def write_case(shape, folder):
    # the reference: an ellipsoid of 0.3 times the grid's sides, its labels side by side along x
    ref = np.zeros(shape, np.uint8)
    z, y, x = (np.arange(n, dtype=np.float32) for n in shape)
    across = (((y[:, None] - shape[1] / 2) / (0.3 * shape[1])) ** 2
              + ((x - shape[2] / 2) / (0.3 * shape[2])) ** 2)
    slab = np.minimum(((x - 0.2 * shape[2]) / (0.6 * shape[2]) * labels).astype(int), labels - 1) + 1
    for s in range(shape[0]):
        inside = ((z[s] - shape[0] / 2) / (0.3 * shape[0])) ** 2 + across <= 1
        ref[s][inside] = np.broadcast_to(slab, inside.shape)[inside]
    pred = np.roll(ref, (1, 2, 2), axis=(0, 1, 2))
    for label in foreground:  # a stray blob of each label in a corner: every label's box is the whole grid
        at = tuple(slice(1, 4) if (label >> bit) & 1 == 0 else slice(n - 4, n - 1)
                   for bit, n in enumerate(shape))
        pred[at] = label
    if noise:
        rng = np.random.default_rng(0)
        stray = rng.random(shape, dtype=np.float32) < noise
        pred[stray] = rng.integers(1, labels + 1, int(stray.sum()), dtype=np.uint8)
    geometry = Geometry(tuple(reversed(spacing)), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                        tuple(reversed(shape)))
    write_label(ref, geometry, folder / "label.nii.gz")
    np.save(folder / "prediction.npy", pred)


def score(folder):
    # as `run.evaluate_fold` after `predict`: the prediction held while the label map is read, then written
    # and scored; postprocessed, both spilled, the decision made from disk, the decided prediction scored
    pred = np.load(folder / "prediction.npy")
    label, geometry = read_label(folder / "label.nii.gz")
    if not postprocess:
        write_label(pred, geometry, folder / "scored.nii.gz")
        evaluate_case(pred, label, geometry.spacing_zyx, foreground, settings, regions=regions)
        return
    preds, refs = SpilledArrays(folder / "predictions"), SpilledArrays(folder / "labels")
    preds.append("case", pred)
    refs.append("case", label)
    del pred, label
    decision = decide_as(PIPELINE_VERSION, preds, refs, foreground, regions,
                         SpilledArrays(folder / "postprocessed", ["case"]))
    final = apply_postprocessing(preds[0], decision.steps)
    write_label(final, geometry, folder / "scored.nii.gz")
    evaluate_case(final, refs[0], geometry.spacing_zyx, foreground, settings, regions=regions)


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


with tempfile.TemporaryDirectory() as temporary:
    warm, folder = Path(temporary) / "warm", Path(temporary) / "case"
    warm.mkdir()
    folder.mkdir()
    # the process's own: what the first scoring imports and sets up (SimpleITK, scipy, edt)
    write_case([max(8, s // 8) for s in shape], warm)
    score(warm)
    write_case(shape, folder)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak resident memory starts again from now
    before = status("VmRSS:")
    score(folder)
    print(json.dumps({"peak": status("VmHWM:") - before}))
"""


_FORWARD_CHILD = r"""
import gc, json, sys
import torch
from medseg_bench.models import ModelInputs, build_model

arch, dims, classes, patch, tiles = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
from medseg_bench.models import variant

encoder = variant(arch, dims).encoders[0] if variant(arch, dims).encoders else None
net = build_model(arch, dims, ModelInputs(1, classes, tuple(patch), encoder,
                                          spacing=(1.0,) * len(patch))).eval()


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


with torch.no_grad():
    net(torch.randn(1, 1, *patch))  # the process's own: what the first pass sets up
parts = [torch.randn(1, 1, *patch) for _ in range(tiles)]
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
before = status("VmRSS:")
with torch.no_grad():
    out = net(torch.cat(parts))
print(json.dumps({"peak": status("VmHWM:") - before}))
"""


def measure(case: tuple, child: str = _CHILD) -> dict:
    # every array of 64 KiB or more mapped for itself and returned when freed: else glibc serves arrays up to
    # 32 MiB from memory the warm-up freed, already counted in the process's own, and a case's arrays of
    # that size went uncounted (measured below the arrays it certainly held)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    arguments = [*case, PATCH[case[0]], None] if child == _CHILD and len(case) == 11 else list(case)
    out = subprocess.run([sys.executable, "-c", child, json.dumps(arguments)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _describe(case: tuple) -> str:
    dims, channels, outputs, regions, shape, _, _, version, tta, probabilities, members = case
    what = "regions" if regions else "classes"
    extras = [f"v{version}"] + ["tta"] * tta + ["probabilities"] * probabilities + (
        [f"{members} members"] if members > 1 else [])
    return (f"{dims}, {channels} x {' x '.join(map(str, shape))}, {outputs} {what}, {', '.join(extras)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    rows = []
    for case in CASES:
        dims, channels, outputs, regions, shape, spacing, target, version, tta, probabilities, members = case
        found = measure(case)
        size = InferenceSize(Path("image.nii"), channels, outputs, shape, tuple(found["cropped"]),
                             tuple(found["resampled"]), PATCH[dims], dims, 0, version, regions, tta,
                             probabilities, members)
        least, envelope = least_bytes(size), peak_bytes(size)
        row = (f"| {_describe(case)} | "
               f"{' x '.join(f'{s:g}' for s in spacing)} to {' x '.join(f'{s:g}' for s in target)} | "
               f"{' x '.join(map(str, found['resampled']))} | {found['peak'] / MiB:.0f} | "
               f"{least / MiB:.0f} ({least / found['peak']:.2f}) | "
               f"{envelope / MiB:.0f} ({envelope / found['peak']:.2f}) |")
        rows.append((row, least / found["peak"], envelope / found["peak"]))
        print(row, flush=True)
    for arch, dims, channels, outputs, shape, patch, version in NETWORK_CASES:
        case = (dims, channels, outputs, False, shape, (1.0,) * 3, (1.0,) * 3, version, False, False, 1)
        found = measure((*case, patch, arch))
        inputs = ModelInputs(channels, outputs, patch, spacing=(1.0,) * len(patch), pipeline_version=version)
        counted = planned_forward_bytes(arch, dims, inputs)
        size = InferenceSize(Path("image.nii"), channels, outputs, shape, tuple(found["cropped"]),
                             tuple(found["resampled"]), patch, dims, 0, version,
                             tile_forward=counted.peak if counted else 0)
        least, envelope = least_bytes(size), peak_bytes(size)
        named = _describe(case).replace(dims, f"{dims} {arch}", 1)
        row = (f"| {named}, patch {' x '.join(map(str, patch))} | "
               f"1 x 1 x 1 to 1 x 1 x 1 | {' x '.join(map(str, found['resampled']))} | "
               f"{found['peak'] / MiB:.0f} | {least / MiB:.0f} ({least / found['peak']:.2f}) | "
               f"{envelope / MiB:.0f} ({envelope / found['peak']:.2f}) |")
        rows.append((row, least / found["peak"], envelope / found["peak"]))
        print(row, flush=True)
    worst_least, worst_peak = max(r[1] for r in rows), min(r[2] for r in rows)
    scoring = []
    for case in SCORING_CASES:
        shape, labels, regions, postprocess, spacing, noise = case
        peak = measure(case, _SCORING_CHILD)["peak"]
        size = InferenceSize(Path("image.nii"), 1, labels + 1, shape, shape, shape, PATCH["3d"], scored=True,
                             postprocess=postprocess)
        least, envelope = scoring_bytes(size), scoring_peak_bytes(size)
        extras = [f"{labels} regions"] * regions + ["postprocessed"] * postprocess + (
            [f"{noise:.1%} of voxels stray"] if noise else [])
        voxels = math.prod(shape)
        row = (f"| {' x '.join(map(str, shape))}, {labels} labels{''.join(', ' + e for e in extras)} | "
               f"{' x '.join(f'{s:g}' for s in spacing)} | {voxels / 1e6:.1f} | {peak / MiB:.0f} | "
               f"{peak / voxels:.1f} | {least / MiB:.0f} ({least / peak:.2f}) | "
               f"{envelope / MiB:.0f} ({envelope / peak:.2f}) |")
        scoring.append((row, least / peak, envelope / peak, noise))
        print(row, flush=True)
    forward = []
    for arch, dims, classes, patch, tiles in FORWARD_CASES:
        peak = measure((arch, dims, classes, patch, tiles), _FORWARD_CHILD)["peak"]
        encoder = variant(arch, dims).encoders[0] if variant(arch, dims).encoders else None
        inputs = ModelInputs(1, classes, patch, encoder, spacing=(1.0,) * len(patch))
        counted = planned_forward_bytes(arch, dims, inputs)
        assert counted is not None
        least = tiles * (counted.peak + 4 * math.prod(patch))
        envelope = FORWARD_FACTOR * least + PEAK_SLACK
        row = (f"| {arch} {dims}, {classes} classes | {' x '.join(map(str, patch))} | {tiles} | "
               f"{peak / MiB:.0f} | {least / MiB:.0f} ({least / peak:.2f}) | "
               f"{tiles * counted.largest / MiB:.0f} | {envelope / MiB:.0f} ({envelope / peak:.2f}) |")
        forward.append((row, least / peak, envelope / peak, least <= peak + MiB))
        print(row, flush=True)
    forward_least, forward_peak = max(r[1] for r in forward), min(r[2] for r in forward)
    counted_within = all(r[3] for r in forward)
    bounded = [r for r in scoring if r[3] <= NOISE_BOUND]
    scoring_least, scoring_peak = max(r[1] for r in bounded), min(r[2] for r in bounded)
    noisy = [r for r in scoring if r[3] > NOISE_BOUND]
    command = "bench/inference_memory.py" + (
        "" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
    lines = [
        "# Memory of predicting one case: measured, and as predict and the sweep count it",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}, on the CPU. Command: "
        f"`.venv/bin/python {command}`. Peak resident memory of `predict_ensemble_probabilities` above the "
        "process's own (MiB), networks of one 1 x 1 convolution, or where named the registry's with random "
        "weights (their activations on a batch of tiles counted, `tile_forward`); in brackets, the ratio to "
        "it. "
        "`least_bytes` refuses a case that cannot fit and must be at most the measured peak (ratio 1 or "
        f"less); `peak_bytes` ({PEAK_FACTOR:g} times it and {PEAK_SLACK // MiB} MiB) is the envelope and "
        "must be at least it.",
        "",
        "| case | spacing to target (mm) | resampled | measured | least_bytes | peak_bytes |",
        "|---|---|---|---|---|---|",
        *(r[0] for r in rows),
        "",
        f"Largest ratio of `least_bytes`: {worst_least:.2f}; smallest of `peak_bytes`: {worst_peak:.2f}"
        + ("." if worst_peak >= 1 and worst_least <= 1 else " (out of bounds: the coefficients in "
           "`medseg_bench/inference_memory.py` need measuring again)."),
        "",
        "## One forward pass of the network on a batch of tiles, on the CPU",
        "",
        "Peak resident memory above the process's own (MiB) of one forward pass under `torch.no_grad` in "
        "float32 (as `inference._sliding_window` runs it on the CPU: the tiles concatenated, one channel), "
        "in a process of its own, against what `forward_memory.forward_bytes` counts on the meta device "
        "(`forward_pass_bytes`: each tile's activations and input, what the pass certainly holds; in "
        "brackets its ratio to the measured, at most 1 give or take the measurement's 1 MiB), the largest "
        "single tensor of the pass, and the "
        f"envelope `peak_bytes` takes for it, {FORWARD_FACTOR:g} times the count and {PEAK_SLACK // MiB} MiB "
        "(`FORWARD_FACTOR`, `PEAK_SLACK`; at least 1). oneDNN "
        "converts a convolution's input of few channels (a 3D U-Net's last, of 2 or 3 classes) to a blocked "
        "layout of 16 channels, unseen by the count.",
        "",
        "| network | tile | tiles at once | measured | counted | largest tensor | envelope |",
        "|---|---|---|---|---|---|---|",
        *(r[0] for r in forward),
        "",
        f"Largest ratio of the count: {forward_least:.2f}; smallest of the envelope: {forward_peak:.2f}"
        + ("." if forward_peak >= 1 and counted_within else " (out of bounds: `FORWARD_FACTOR` or "
           "`forward_memory` need measuring again)."),
        "",
        "## Scoring one case on its original grid, as an evaluation does after predicting it",
        "",
        "Peak resident memory above the process's own (MiB) of `run.evaluate_fold`'s steps after its "
        "prediction of a case: the prediction (uint8) held while the label map is read from its `.nii.gz`, "
        "written, and scored on every metric for each label (and region); postprocessed, the decision from "
        "the case spilled to disk, then the decided prediction scored (the module docstring says how the "
        f"cases are made). `scoring_bytes` ({SCORE_BYTES} bytes per voxel as stored: the label map read "
        "beside the prediction) is what an evaluation counts scoring to hold certainly, beside what "
        "predicting holds (the larger refuses a case); `scoring_peak_bytes` the envelope, "
        f"{PEAK_FACTOR:g} times {SCORE_PEAK_BYTES} bytes per voxel (the metrics), or postprocessed "
        f"{DECISION_BYTES}, and {PEAK_SLACK // MiB} MiB.",
        "",
        "| case | spacing (mm) | voxels (M) | measured | bytes per voxel | scoring_bytes "
        "| scoring_peak_bytes |",
        "|---|---|---|---|---|---|---|",
        *(r[0] for r in scoring),
        "",
        f"Largest ratio of `scoring_bytes`: {scoring_least:.2f}; smallest of `scoring_peak_bytes` for "
        f"predictions with at most {NOISE_BOUND:.0%} of their voxels stray: {scoring_peak:.2f}"
        + ("." if scoring_peak >= 1 and scoring_least <= 1 else " (out of bounds: the coefficients in "
           "`medseg_bench/inference_memory.py` need measuring again).")
        + "".join(f" With more stray voxels the surface distances hold more (a ratio of {r[2]:.2f} to the "
                  "envelope): not counted." for r in noisy),
        "",
    ]
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
