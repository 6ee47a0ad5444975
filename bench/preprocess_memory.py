"""Benchmark: the memory preprocessing one case needs, measured, against `preprocess_memory.peak_bytes`.

Each case is a synthetic image (1 to 4 channels of int16, float32 or float64 noise, its first eighth of rows
zero so that it is cropped, a label map of 2 to 9 values in 4-voxel blocks) written as NIfTI, preprocessed
by `preprocess.preprocess_case` in a process of its own: the peak resident memory of that call above the
process's memory before it (Linux: `/proc/self/clear_refs` resets the peak, `VmHWM` reads it). The cases
cover up- and downsampling, a separate slice axis (spacing 5 x 1 x 1 mm), and nothing resampled. The table
gives, per case, the measured peak, `peak_bytes` less the worker's own `WORKER_BYTES` (what the cache build
counts a case to need, the envelope of these measurements: its coefficients came from them) and
`least_bytes` (what the case certainly holds at once: a case over the memory this process may use is
refused), and their ratios to the measured peak: `peak_bytes` must be at least 1, `least_bytes` at most 1.

Usage:
    .venv/bin/python bench/preprocess_memory.py [--output bench/results/preprocess_memory.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

from medseg_bench.data.preprocess_memory import (  # noqa: E402
    WORKER_BYTES,
    CaseSize,
    least_bytes,
    peak_bytes,
)
from medseg_bench.provenance import cpu_model  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "preprocess_memory.md"
MiB = 2**20
# channels, shape (z, y, x), spacing, target spacing (mm), voxel type, label values
CASES: list[tuple[int, tuple[int, int, int], tuple[float, ...], tuple[float, ...], str, int]] = [
    (1, (64, 256, 256), (3, 1, 1), (1, 1, 1), "float32", 3),
    (2, (64, 256, 256), (3, 1, 1), (1, 1, 1), "float32", 3),
    (4, (40, 160, 160), (1, 1, 1), (1, 1, 1), "float32", 4),
    (4, (40, 160, 160), (1, 1, 1), (0.7, 0.7, 0.7), "float32", 4),
    (3, (40, 160, 160), (1, 1, 1), (0.5, 0.5, 0.5), "int16", 4),
    (1, (64, 256, 256), (5, 1, 1), (1, 1, 1), "int16", 2),
    (1, (64, 256, 256), (5, 1, 1), (2.5, 1, 1), "float64", 2),
    (1, (16, 512, 512), (5, 0.8, 0.8), (1.5, 0.8, 0.8), "int16", 3),
    (2, (100, 200, 200), (1, 1, 1), (2, 2, 2), "float32", 3),
    (1, (100, 200, 200), (1, 1, 1), (2, 2, 2), "float64", 3),
    (4, (60, 200, 200), (1, 1, 1), (2, 2, 2), "int16", 3),
    (1, (32, 512, 512), (1, 0.5, 0.5), (1, 1, 1), "int16", 3),
    (1, (128, 128, 128), (1, 1, 1), (1, 1, 1), "float64", 9),
    (1, (64, 128, 128), (1, 1, 1), (1, 1, 1), "int16", 2),
    (2, (64, 128, 128), (1, 1, 1), (1, 1, 1), "float32", 6),
    (1, (20, 300, 300), (4, 0.7, 0.7), (4, 0.5, 0.5), "float32", 3),
    (1, (30, 200, 200), (1, 1, 1), (5, 1, 1), "float32", 3),
    (1, (200, 100, 100), (1, 1, 1), (1, 2, 2), "float32", 3),
]

_CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np
import SimpleITK as sitk
from medseg_bench.data.msd import Case
from medseg_bench.data.plan import Plan
from medseg_bench.data.preprocess import preprocess_case

channels, shape, spacing, target, dtype, labels, folder = json.loads(sys.argv[1])
folder = Path(folder)
rng = np.random.default_rng(0)
image = rng.normal(0, 100, (channels, *shape)).astype(dtype)
image[:, :, : shape[1] // 8] = 0  # a zero band: the case is cropped, its label resampled with an outside
blocks = rng.integers(0, labels, tuple(s // 4 + 1 for s in shape)).astype(np.uint8)
label = np.kron(blocks, np.ones((4, 4, 4), np.uint8))[: shape[0], : shape[1], : shape[2]]


def write(array, path):
    if array.ndim == 3:
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing[::-1])
    else:
        itk = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in array])
        itk.SetSpacing([*spacing[::-1], 1.0])
    sitk.WriteImage(itk, str(path))


write(image if channels > 1 else image[0], folder / "image.nii")
write(label, folder / "label.nii")
del image, label, blocks
plan = Plan(task="Bench", normalization="per_channel", ct_clip=None, ct_mean=None, ct_std=None,
            median_spacing=tuple(spacing), target_spacing=tuple(target), crop_to_nonzero=True,
            median_shape=(1, 1, 1), budget="cpu", patch_3d=(16, 16, 16), batch_3d=2, patch_2d=(16, 16),
            batch_2d=2, channel_normalization=({"scheme": "zscore", "nonzero_mask": True},) * channels)
(folder / "out").mkdir()


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


import gc
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak resident memory starts again from now
before = status("VmRSS:")
preprocess_case(Case("case", folder / "image.nii", folder / "label.nii"), plan, folder / "out")
peak = status("VmHWM:") - before
props = json.loads((folder / "out" / "case.json").read_text())
print(json.dumps({"peak": peak, "cropped": [hi - lo for lo, hi in props["crop_box"]],
                  "resampled": props["shape_zyx"]}))
"""


def measure(case: tuple) -> dict:
    with tempfile.TemporaryDirectory(prefix="medseg-bench-memory-") as folder:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([*case, folder])], env=env,
                             capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    rows = []
    for case in CASES:
        channels, shape, spacing, target, dtype, labels = case
        found = measure(case)
        size = CaseSize(Path("image.nii"), channels, shape, tuple(found["cropped"]),
                        tuple(found["resampled"]))
        estimate, least = peak_bytes(size) - WORKER_BYTES, least_bytes(size)
        row = (f"| {channels} x {' x '.join(map(str, shape))} {dtype}, {labels} labels | "
               f"{' x '.join(f'{s:g}' for s in spacing)} to {' x '.join(f'{s:g}' for s in target)} | "
               f"{' x '.join(map(str, found['resampled']))} | {found['peak'] / MiB:.0f} | "
               f"{estimate / MiB:.0f} ({estimate / found['peak']:.2f}) | "
               f"{least / MiB:.0f} ({least / found['peak']:.2f}) |")
        rows.append((row, estimate / found["peak"], least / found["peak"]))
        print(row, flush=True)
    worst_peak, worst_least = min(r[1] for r in rows), max(r[2] for r in rows)
    command = "bench/preprocess_memory.py" + (
        "" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
    lines = [
        "# Memory of preprocessing one case: measured, and as the cache build counts it",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}. Command: "
        f"`.venv/bin/python {command}`. Peak resident memory of `preprocess_case` above the process's own "
        "(MiB); in brackets, the ratio to it. `peak_bytes` (less the worker's own "
        f"{WORKER_BYTES // MiB} MiB) decides how many cases are preprocessed at once and must be at least "
        "the measured peak (ratio 1 or more); `least_bytes` refuses a case that cannot fit and must be at "
        "most it.",
        "",
        "| case | spacing to target (mm) | resampled | measured | peak_bytes | least_bytes |",
        "|---|---|---|---|---|---|",
        *(r[0] for r in rows),
        "",
        f"Smallest ratio of `peak_bytes`: {worst_peak:.2f}; largest of `least_bytes`: {worst_least:.2f}"
        + ("." if worst_peak >= 1 and worst_least <= 1 else " (out of bounds: the coefficients in "
           "`medseg_bench/data/preprocess_memory.py` need measuring again)."),
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
