"""Benchmark: the memory each stage that reads a case needs, measured, against what medseg-bench counts.

Each case is a synthetic image (1 to 4 channels of int16, float32 or float64 noise, its first eighth of rows
zero so that it is cropped, a label map of 2 to 9 values in 4-voxel blocks, stored as uint8, int16 or
float32) written as NIfTI, gzipped NIfTI or MetaImage. Each stage reads it in a process of its own: the
peak resident memory of the call above the process's memory before it (Linux: `/proc/self/clear_refs` resets
the peak, `VmHWM` reads it). The stages: validation (`validate.check_case`, deep), the fingerprint
(`fingerprint.case_fingerprint`, channel 0 sampled, 2.5 million values a case as a CT task of 40 cases draws;
25 million for two cases) and the cache build (`preprocess.preprocess_case`). The cases cover up- and
downsampling, a separate slice axis (spacing 5 x 1 x 1 mm), and nothing resampled.

The first table gives, per case, the cache build's measured peak, `peak_bytes` less the worker's own
`WORKER_BYTES` (what the cache build counts a case to need, the envelope of these measurements: its
coefficients came from them) and `least_bytes` (what the case certainly holds at once: a case over the
memory this process may use is refused), and their ratios to the measured peak: `peak_bytes` must be at least
1, `least_bytes` at most 1. The second table gives the same of validation and the fingerprint
(`read_memory.read_bytes`, `least_read_bytes`, counted from the headers).

Usage:
    .venv/bin/python bench/preprocess_memory.py [--output bench/results/preprocess_memory.md]
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
from medseg_bench.data.read_memory import (  # noqa: E402
    FINGERPRINT,
    VALIDATION,
    StoredCase,
    least_read_bytes,
    read_bytes,
)
from medseg_bench.provenance import cpu_model  # noqa: E402

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "preprocess_memory.md"
MiB = 2**20
SAMPLES = 2_500_000  # the fingerprint's sample of a case: 10**8 values over a CT task of 40 cases
# channels, shape (z, y, x), spacing, target spacing (mm), voxel type, label values, file suffix, label's
# voxel type, fingerprint sample
CASES: list[tuple[int, tuple[int, int, int], tuple[float, ...], tuple[float, ...], str, int, str, str,
                  int]] = [
    (1, (64, 256, 256), (3, 1, 1), (1, 1, 1), "float32", 3, ".nii", "uint8", SAMPLES),
    (2, (64, 256, 256), (3, 1, 1), (1, 1, 1), "float32", 3, ".nii.gz", "uint8", SAMPLES),
    (4, (40, 160, 160), (1, 1, 1), (1, 1, 1), "float32", 4, ".mha", "uint8", SAMPLES),
    (4, (40, 160, 160), (1, 1, 1), (0.7, 0.7, 0.7), "float32", 4, ".nii.gz", "float32", SAMPLES),
    (3, (40, 160, 160), (1, 1, 1), (0.5, 0.5, 0.5), "int16", 4, ".nii", "int16", SAMPLES),
    (1, (64, 256, 256), (5, 1, 1), (1, 1, 1), "int16", 2, ".nii.gz", "uint8", SAMPLES),
    (1, (64, 256, 256), (5, 1, 1), (2.5, 1, 1), "float64", 2, ".nii.gz", "float32", SAMPLES),
    (1, (16, 512, 512), (5, 0.8, 0.8), (1.5, 0.8, 0.8), "int16", 3, ".mha", "int16", SAMPLES),
    (2, (100, 200, 200), (1, 1, 1), (2, 2, 2), "float32", 3, ".nii", "float32", SAMPLES),
    (1, (100, 200, 200), (1, 1, 1), (2, 2, 2), "float64", 3, ".nii", "uint8", SAMPLES),
    (4, (60, 200, 200), (1, 1, 1), (2, 2, 2), "int16", 3, ".nii.gz", "int16", SAMPLES),
    (1, (32, 512, 512), (1, 0.5, 0.5), (1, 1, 1), "int16", 3, ".nii.gz", "int16", SAMPLES),
    (1, (128, 128, 128), (1, 1, 1), (1, 1, 1), "float64", 9, ".nii.gz", "float32", SAMPLES),
    (1, (64, 128, 128), (1, 1, 1), (1, 1, 1), "int16", 2, ".nii", "uint8", 10 * SAMPLES),
    (2, (64, 128, 128), (1, 1, 1), (1, 1, 1), "float32", 6, ".mha", "float32", 10 * SAMPLES),
    (1, (20, 300, 300), (4, 0.7, 0.7), (4, 0.5, 0.5), "float32", 3, ".nii.gz", "uint8", SAMPLES),
    (1, (30, 200, 200), (1, 1, 1), (5, 1, 1), "float32", 3, ".nii", "int16", SAMPLES),
    (1, (200, 100, 100), (1, 1, 1), (1, 2, 2), "float32", 3, ".mha", "uint8", SAMPLES),
]

_WRITE = r"""
import json, sys
from pathlib import Path
import numpy as np
import SimpleITK as sitk

channels, shape, spacing, dtype, labels, suffix, label_dtype, folder = json.loads(sys.argv[1])
folder = Path(folder)
rng = np.random.default_rng(0)


def write(array, path):
    if array.ndim == 3:
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(spacing[::-1])
    else:
        itk = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in array])
        itk.SetSpacing([*spacing[::-1], 1.0])
    sitk.WriteImage(itk, str(path), useCompression=suffix == ".nii.gz")


for name, size in (("", shape), ("warm-", (8, 32, 32))):  # a small case of the same kind to warm up on
    image = rng.normal(0, 100, (channels, *size)).astype(dtype)
    image[:, :, : size[1] // 8] = 0  # a zero band: the case is cropped, its label resampled with an outside
    blocks = rng.integers(0, labels, tuple(s // 4 + 1 for s in size)).astype(np.uint8)
    label = np.kron(blocks, np.ones((4, 4, 4), np.uint8))[: size[0], : size[1], : size[2]]
    write(image if channels > 1 else image[0], folder / f"{name}image{suffix}")
    write(label.astype(label_dtype), folder / f"{name}label{suffix}")
"""

_CHILD = r"""
import gc, json, sys
from pathlib import Path
from medseg_bench.data.fingerprint import case_fingerprint
from medseg_bench.data.msd import Case
from medseg_bench.data.plan import Plan
from medseg_bench.data.preprocess import preprocess_case
from medseg_bench.data.validate import check_case
from medseg_bench.spec import TaskSpec

stage, channels, spacing, target, labels, suffix, samples, folder = json.loads(sys.argv[1])
folder = Path(folder)
task = TaskSpec(name="Bench", labels={v: str(v) for v in range(labels)}, modalities=["CT"] * channels,
                tensor_image_size="4D" if channels > 1 else "3D")
plan = Plan(task="Bench", normalization="per_channel", ct_clip=None, ct_mean=None, ct_std=None,
            median_spacing=tuple(spacing), target_spacing=tuple(target), crop_to_nonzero=True,
            median_shape=(1, 1, 1), budget="cpu", patch_3d=(16, 16, 16), batch_3d=2, patch_2d=(16, 16),
            batch_2d=2, channel_normalization=({"scheme": "zscore", "nonzero_mask": True},) * channels)


def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def run(name):
    case = Case("case", folder / f"{name}image{suffix}", folder / f"{name}label{suffix}")
    out = folder / f"{name}out-{stage}"
    out.mkdir()
    if stage == "validate":
        problems = check_case(case, task, set(task.labels), deep=True)
        assert not problems, problems
        return {}
    if stage == "fingerprint":
        result = case_fingerprint(case, samples, (0,), task)
        __import__("pickle").dumps(result)  # what a worker sends back
        return {}
    preprocess_case(case, plan, out)
    props = json.loads((out / "case.json").read_text())
    return {"cropped": [hi - lo for lo, hi in props["crop_box"]], "resampled": props["shape_zyx"]}


run("warm-")  # what a worker's first case loads (scipy's zoom, ITK's readers) is its own memory, not a case's
gc.collect()
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # the peak resident memory starts again from now
before = status("VmRSS:")
found = run("") | {"own": before}
print(json.dumps({"peak": status("VmHWM:") - before, **found}))
"""

STAGES = ("validate", "fingerprint", "preprocess")


def _run(script: str, arguments: list) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, json.dumps(arguments)], env=env,
                          capture_output=True, text=True, check=True).stdout


def measure(case: tuple) -> dict:
    """Each stage's peak (bytes) on the case, and the cache build's cropped and resampled shapes."""
    channels, shape, spacing, target, dtype, labels, suffix, label_dtype, samples = case
    found: dict = {}
    with tempfile.TemporaryDirectory(prefix="medseg-bench-memory-") as folder:
        _run(_WRITE, [channels, shape, spacing, dtype, labels, suffix, label_dtype, folder])
        for stage in STAGES:
            out = _run(_CHILD, [stage, channels, spacing, target, labels, suffix, samples, folder])
            result = json.loads(out.strip().splitlines()[-1])
            found[stage] = result.pop("peak")
            found["own"] = max(found.get("own", 0), result.pop("own"))
            found |= result
    return found


def _ratio(estimate: int, measured: int) -> str:
    return f"{estimate / MiB:.0f} ({estimate / measured:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    rows, read_rows, found_own = [], [], []
    value_bytes = {"int16": 2, "float32": 4, "float64": 8, "uint8": 1}
    for case in CASES:
        channels, shape, spacing, target, dtype, labels, suffix, label_dtype, samples = case
        found = measure(case)
        found_own.append(found["own"])
        size = CaseSize(Path("image.nii"), channels, shape, tuple(found["cropped"]),
                        tuple(found["resampled"]))
        peak = found["preprocess"]
        estimate, least = peak_bytes(size) - WORKER_BYTES, least_bytes(size)
        described = f"{channels} x {' x '.join(map(str, shape))} {dtype}, {labels} labels"
        row = (f"| {described} | "
               f"{' x '.join(f'{s:g}' for s in spacing)} to {' x '.join(f'{s:g}' for s in target)} | "
               f"{' x '.join(map(str, found['resampled']))} | {peak / MiB:.0f} | "
               f"{_ratio(estimate, peak)} | {_ratio(least, peak)} |")
        rows.append((row, estimate / peak, least / peak))
        stored = StoredCase(Path("image"), shape, channels, value_bytes[dtype], math.prod(shape),
                            value_bytes[label_dtype])
        cells, ratios = [], []
        for stage, name, drawn in ((VALIDATION, "validate", 0), (FINGERPRINT, "fingerprint", samples)):
            measured = found[name]
            counted, certain = read_bytes(stage, stored, drawn), least_read_bytes(stage, stored)
            cells.append(f"{measured / MiB:.0f} | {_ratio(counted, measured)} | {_ratio(certain, measured)}")
            ratios.append((counted / measured, certain / measured, peak / measured))
        read_row = (f"| {described}, {suffix}, {label_dtype} label | {samples / 1e6:g} M | "
                    f"{' | '.join(cells)} | {' / '.join(f'{r[2]:.1f}' for r in ratios)} |")
        read_rows.append((read_row, ratios))
        print(row, read_row, sep="\n", flush=True)
    worst_peak, worst_least = min(r[1] for r in rows), max(r[2] for r in rows)
    read_peak = min(r[0] for _, ratios in read_rows for r in ratios)
    read_least = max(r[1] for _, ratios in read_rows for r in ratios)
    below = [r[2] for _, ratios in read_rows for r in ratios]
    own = max(found_own)
    command = "bench/preprocess_memory.py" + (
        "" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
    lines = [
        "# Memory of reading and preprocessing one case: measured, and as medseg-bench counts it",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}. Command: "
        f"`.venv/bin/python {command}`. Peak resident memory of each stage's call above the process's own "
        "(MiB); in brackets, the ratio to it. Each process reads a small case of the same kind first: what "
        "a worker loads for its first case is its own memory, counted as such (`WORKER_BYTES`, "
        f"{WORKER_BYTES // MiB} MiB; the most measured after that first case: {own / MiB:.0f} MiB).",
        "",
        "## The cache build",
        "",
        f"`peak_bytes` (less the worker's own {WORKER_BYTES // MiB} MiB) decides how many cases are "
        "preprocessed at once and must be at least the measured peak (ratio 1 or more); `least_bytes` "
        "refuses a case that cannot fit and must be at most it.",
        "",
        "| case | spacing to target (mm) | resampled | measured | peak_bytes | least_bytes |",
        "|---|---|---|---|---|---|",
        *(r[0] for r in rows),
        "",
        f"Smallest ratio of `peak_bytes`: {worst_peak:.2f}; largest of `least_bytes`: {worst_least:.2f}"
        + ("." if worst_peak >= 1 and worst_least <= 1 else " (out of bounds: the coefficients in "
           "`medseg_bench/data/preprocess_memory.py` need measuring again)."),
        "",
        "## Validation and the fingerprint",
        "",
        "The same cases as stored (file format, the label map's voxel type) and the fingerprint's sample of "
        "channel 0 (values). `read_bytes` decides how many cases each reads at once and must be at least the "
        "measured peak; `least_read_bytes` refuses a case and must be at most it; both are counted from the "
        "headers (`read_memory.py`). Last column: the cache build's peak over validation's / the "
        "fingerprint's.",
        "",
        "| case | sample | validate: measured | read_bytes | least_read_bytes | fingerprint: measured | "
        "read_bytes | least_read_bytes | cache build / each |",
        "|---|---|---|---|---|---|---|---|---|",
        *(r[0] for r in read_rows),
        "",
        f"Smallest ratio of `read_bytes`: {read_peak:.2f}; largest of `least_read_bytes`: {read_least:.2f}"
        + ("." if read_peak >= 1 and read_least <= 1 else " (out of bounds: the coefficients in "
           "`medseg_bench/data/read_memory.py` need measuring again).")
        + f" The cache build's peak is {min(below):.1f} to {max(below):.1f} times theirs.",
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
