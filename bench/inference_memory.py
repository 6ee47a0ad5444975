"""Benchmark: the memory predicting one preprocessed case needs, measured, against `inference_memory`'s count.

Each case runs `inference.predict_ensemble_probabilities` (what `predict` runs for an image; the sweep's
evaluation runs the same sliding window and mapping back) in a process of its own, on the CPU, with networks
of one 1 x 1 (x 1) convolution: their activations on a batch of tiles are small, as `least_bytes` and
`peak_bytes` leave a network's own out. Preprocessing is stood in for by a random resampled image of the
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

Usage:
    .venv/bin/python bench/inference_memory.py [--output bench/results/inference_memory.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

from medseg_bench.inference_memory import (  # noqa: E402
    PEAK_FACTOR,
    PEAK_SLACK,
    InferenceSize,
    least_bytes,
    peak_bytes,
)
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

_CHILD = r"""
import json, sys
from types import SimpleNamespace
import numpy as np
import torch
from torch import nn
from medseg_bench.data import preprocess
from medseg_bench.data.resample import nonzero_box
from medseg_bench.inference import Member, predict_ensemble_probabilities

dims, channels, outputs, regions, shape, spacing, target, version, tta, probabilities, members, patch = (
    json.loads(sys.argv[1]))
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
ensemble = [Member(conv(channels, outputs, 1), dims, tuple(patch), tta, 0, version, False, paint)
            for _ in range(members)]
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


def measure(case: tuple) -> dict:
    # every array of 64 KiB or more mapped for itself and returned when freed: else glibc serves arrays up to
    # 32 MiB from memory the warm-up freed, already counted in the process's own, and a case's arrays of
    # that size went uncounted (measured below the arrays it certainly held)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([*case, PATCH[case[0]]])], env=env,
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
    worst_least, worst_peak = max(r[1] for r in rows), min(r[2] for r in rows)
    command = "bench/inference_memory.py" + (
        "" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
    lines = [
        "# Memory of predicting one case: measured, and as predict and the sweep count it",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}, on the CPU. Command: "
        f"`.venv/bin/python {command}`. Peak resident memory of `predict_ensemble_probabilities` above the "
        "process's own (MiB), networks of one 1 x 1 convolution; in brackets, the ratio to it. "
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
    ]
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
