"""Benchmark: HD95 + NSD on a CT-sized pair (512 x 512 x 200 voxels, 0.8 x 0.8 x 2.5 mm) with an organ.

Compares, on the same inputs in one run:
  - ours: `compute_surface_distances` once, then `compute_hd95` and `compute_nsd` (medseg_bench.metrics);
  - MONAI: `compute_hausdorff_distance(percentile=95)` + `compute_surface_dice` (two calls, as MONAI is used);
  - MedPy: `medpy.metric.binary.hd95` (HD95 only; MedPy has no NSD). MedPy is not a dependency of the
    package: install it into the venv for the benchmark only (`.venv/bin/pip install medpy`); it is skipped
    when missing.

Each method runs in its own process: once with its memory measured, then `--repeats` timed runs of which
the fastest is reported (MedPy: the first run only, it is slow). Peak extra memory is the rise of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs) over its resident set just before
the first run; where the reset is not allowed, tracemalloc (numpy allocations only).

Usage:
    .venv/bin/python bench/metrics.py [--repeats 3] [--output bench/results/metrics.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SHAPE_ZYX = (200, 512, 512)
SPACING_ZYX = (2.5, 0.8, 0.8)  # array order; (0.8, 0.8, 2.5) mm in image x, y, z
TOLERANCE_MM = 1.0
MiB = 1024 * 1024


# Semi-axes (z, y, x) in mm of the lumpy ellipsoid standing for the organ.
ORGANS = {
    "liver-sized (19 x 15 x 15 cm)": (75.0, 75.0, 95.0),
    "kidney-sized (11 x 5 x 6 cm)": (55.0, 25.0, 30.0),
}


def organ_pair(radii_mm: tuple[float, float, float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A lumpy ellipsoid with the given semi-axes (z, y, x) in mm, and a plausible prediction of it.

    The prediction is the reference with a different smooth boundary perturbation, moved by one voxel in
    plane, plus a small false-positive blob elsewhere in the body: HD95 of a few mm, NSD well below 1.
    """
    rng = np.random.default_rng(seed)
    centre_mm = np.array([250.0, 205.0, 195.0])
    radii_mm = np.array(radii_mm)

    def lumpy(shift_vox: tuple[int, int, int]) -> np.ndarray:
        mask = np.zeros(SHAPE_ZYX, bool)
        lo = [int((c - 1.3 * r) / s) for c, r, s in zip(centre_mm, radii_mm, SPACING_ZYX, strict=True)]
        hi = [int((c + 1.3 * r) / s) + 1 for c, r, s in zip(centre_mm, radii_mm, SPACING_ZYX, strict=True)]
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        axes = zip(grids, SPACING_ZYX, centre_mm, radii_mm, strict=True)
        radius = sum(((g * s - c) / r) ** 2 for g, s, c, r in axes)
        noise = ndimage.gaussian_filter(rng.standard_normal([b - a for a, b in zip(lo, hi, strict=True)]), 6)
        noise *= 0.08 / noise.std()  # boundary moves by about +-8 % of the radius, smoothly
        box = tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, shift_vox, strict=True))
        mask[box] = np.sqrt(radius) <= 1.0 + noise
        return mask

    ref = lumpy((0, 0, 0))
    pred = lumpy((0, 1, 1))
    island_vox = [0.1 * r / s for r, s in zip(radii_mm, SPACING_ZYX, strict=True)]  # a tenth of the organ
    z, y, x = np.ogrid[:SHAPE_ZYX[0], :SHAPE_ZYX[1], :SHAPE_ZYX[2]]
    island = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), (150, 400, 100), island_vox, strict=True))
    pred |= island <= 1
    return pred, ref


def ours(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from medseg_bench.metrics import compute_hd95, compute_nsd, compute_surface_distances

    distances = compute_surface_distances(pred, ref, SPACING_ZYX, surface="area")
    return compute_hd95(distances), compute_nsd(distances, TOLERANCE_MM)


def ours_voxel(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from medseg_bench.metrics import compute_hd95, compute_nsd, compute_surface_distances

    distances = compute_surface_distances(pred, ref, SPACING_ZYX, surface="voxel")
    return compute_hd95(distances), compute_nsd(distances, TOLERANCE_MM)


def monai_pair(pred_t, ref_t) -> tuple[float, float]:
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    hd95 = compute_hausdorff_distance(pred_t, ref_t, percentile=95, spacing=SPACING_ZYX)
    nsd = compute_surface_dice(pred_t, ref_t, [TOLERANCE_MM], include_background=True, spacing=SPACING_ZYX)
    return float(hd95), float(nsd)


def medpy_hd95(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    from medpy.metric.binary import hd95

    return float(hd95(pred, ref, voxelspacing=SPACING_ZYX)), float("nan")


# name shown -> (function, module to import first, whether inputs are torch tensors)
METHODS: dict[str, tuple[Callable, str, bool]] = {
    "ours, surface=area (DeepMind surfels)": (ours, "medseg_bench.metrics", False),
    "ours, surface=voxel (as MONAI)": (ours_voxel, "medseg_bench.metrics", False),
    "MONAI hausdorff(95) + surface_dice": (monai_pair, "monai.metrics", True),
    "MedPy hd95 (HD95 only)": (medpy_hd95, "medpy.metric.binary", False),
}


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_method(name: str, data_dir: Path, repeats: int) -> dict[str, object]:
    """In a fresh process: import, load the inputs, then one measured call (memory) and `repeats` timed calls.

    Memory is the rise of the peak resident set (VmHWM, reset through /proc/self/clear_refs) over the
    resident set just before the first call, so nothing earlier in the run and no allocator cache from an
    earlier call hides or inflates it. Where the reset is refused, tracemalloc (numpy allocations only).
    """
    import importlib

    fn, module, as_tensors = METHODS[name]
    importlib.import_module(module)
    pred, ref = np.load(data_dir / "pred.npy"), np.load(data_dir / "ref.npy")
    if as_tensors:
        import torch

        pred, ref = (torch.from_numpy(m)[None, None] for m in (pred, ref))
    try:
        Path("/proc/self/clear_refs").write_text("5")
        memory_method, start_kib = "VmHWM", _status_kib("VmRSS")
    except OSError:
        memory_method, start_kib = "tracemalloc", 0
        tracemalloc.start()
    first_start, first_cpu = time.perf_counter(), time.process_time()
    values = fn(pred, ref)
    first_s, first_cpu_s = time.perf_counter() - first_start, time.process_time() - first_cpu
    if memory_method == "VmHWM":
        extra_bytes = (_status_kib("VmHWM") - start_kib) * 1024
    else:
        extra_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn(pred, ref)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    return {"time_s": min(times) if times else first_s, "cpu_s": min(cpu_times) if cpu_times else first_cpu_s,
            "extra_mib": extra_bytes / MiB, "memory_method": memory_method,
            "hd95": values[0], "nsd": values[1], "runs": max(len(times), 1)}


def measure(name: str, data_dir: Path, repeats: int) -> dict[str, object] | None:
    """`run_method` in a child process; None (with a note) when the method's package is missing."""
    import json
    import subprocess

    command = [sys.executable, __file__, "--child", name, "--data", str(data_dir), "--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if "ModuleNotFoundError" in last:
            hint = " (.venv/bin/pip install medpy)" if "medpy" in last else ""
            print(f"{name}: skipped, {last}{hint}", file=sys.stderr)
            return None
        raise RuntimeError(f"{name} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    from medseg_bench.provenance import cpu_model

    model = cpu_model()
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def versions() -> str:
    found = []
    for name in ("numpy", "scipy", "edt", "monai", "torch", "medpy"):
        try:
            from importlib.metadata import version

            found.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            continue
    return ", ".join(found)


def run_all(organ: str, radii_mm: tuple[float, float, float], args: argparse.Namespace) -> tuple[str, str]:
    """Every method on one pair; returns the markdown table and a one-line description of the pair."""
    import tempfile

    pred, ref = organ_pair(radii_mm)
    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    box_size = tuple(s.stop - s.start for s in box)[::-1]
    summary = (f"Reference {ref.sum()} voxels, prediction {pred.sum()}; box holding both {box_size} voxels "
               "(x, y, z).")
    print(f"{organ}: {summary}", file=sys.stderr)
    rows: list[tuple[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "pred.npy", pred)
        np.save(Path(tmp) / "ref.npy", ref)
        for name in METHODS:
            if name.startswith("MedPy") and args.skip_medpy:
                print(f"{name}: skipped (--skip-medpy)", file=sys.stderr)
                continue
            repeats = 0 if name.startswith("MedPy") else args.repeats  # one run: it takes ~30 s
            result = measure(name, Path(tmp), repeats)
            if result is not None:
                rows.append((name, result))
                print(f"  {name}: {result['time_s']:.3f} s, CPU {result['cpu_s']:.3f} s", file=sys.stderr)
    base_wall, base_cpu = rows[0][1]["time_s"], rows[0][1]["cpu_s"]
    lines = [
        "| method | wall time (s) | wall / ours (area) | CPU time (s) | CPU / ours (area) "
        "| peak extra memory (MiB) | HD95 (mm) | NSD @ 1 mm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        nsd = "-" if r["nsd"] != r["nsd"] else f"{r['nsd']:.4f}"
        lines.append(f"| {name} | {r['time_s']:.3f} | {r['time_s'] / base_wall:.1f}x | {r['cpu_s']:.3f} | "
                     f"{r['cpu_s'] / base_cpu:.1f}x | {r['extra_mib']:.0f} | {r['hd95']:.3f} | {nsd} |")
    table = "\n".join(lines)
    print(f"\n{organ}\n{table}\n")
    return table, summary


def main(argv: list[str] | None = None) -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (the fastest reported)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "metrics.md")
    parser.add_argument("--skip-medpy", action="store_true", help="leave MedPy out (it takes ~30 s)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_method(args.child, args.data, args.repeats)))
        return

    sections = []
    for organ, radii_mm in ORGANS.items():
        table, summary = run_all(organ, radii_mm, args)
        sections.append(f"## {organ}\n\n{summary}\n\n{table}\n")
    command = "python bench/metrics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = (
        "# Metrics benchmark: HD95 + NSD\n\n"
        f"- date: {dt.date.today().isoformat()}\n"
        f"- machine: {machine()}\n"
        f"- packages: {versions()}\n"
        f"- command: `{command.strip()}`\n"
        f"- input: {SHAPE_ZYX[::-1]} voxels (x, y, z) at {SPACING_ZYX[::-1]} mm; an organ-shaped lumpy "
        "ellipsoid and a prediction of it (other boundary perturbation, moved one voxel in plane, a small "
        "false-positive blob elsewhere)\n"
        f"- time: fastest of {args.repeats} runs after a first run (MedPy: the first run only), each method "
        "in its own process; CPU time (user + system of the process) is shown too because it is less "
        "disturbed by other load on the machine than wall time: load average (1 min) at the end of the run "
        f"{os.getloadavg()[0]:.1f}; memory: rise of the peak resident memory during the first run\n\n"
        + "\n".join(sections)
        + "\nHD95 differs between the area and voxel conventions by design (docs/metrics.md); ours with "
        "surface=voxel computes what MONAI computes. MedPy uses boundary voxels too, but its HD95 is the "
        "95th percentile of both directions' distances pooled, not the larger of the two directed ones.\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = args.output.with_name(f".{args.output.name}.tmp")
    tmp_path.write_text(report, encoding="utf-8")
    os.replace(tmp_path, args.output)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
