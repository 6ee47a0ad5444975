"""Benchmark: HD95 + NSD on a CT-sized pair (512 x 512 x 200 at 0.8 x 0.8 x 2.5 mm) with an organ-sized structure.

Compares, on the same inputs in one run:
  - ours: `compute_surface_distances` once, then `compute_hd95` and `compute_nsd` (medseg_bench.metrics);
  - MONAI: `compute_hausdorff_distance(percentile=95)` + `compute_surface_dice` (two calls, as MONAI is used);
  - MedPy: `medpy.metric.binary.hd95` (HD95 only; MedPy has no NSD). MedPy is not a dependency of the package:
    install it into the venv for the benchmark only (`.venv/bin/pip install medpy`); it is skipped when missing.

Each method runs once untimed (imports, caches), then `--repeats` timed runs (median reported; MedPy: one run,
it is slow). Peak extra memory is the rise of the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before each method) over its resident set at the start of that method; where the reset
is not allowed it falls back to tracemalloc, which sees numpy allocations only.

Usage:
    .venv/bin/python bench/metrics.py [--repeats 3] [--output bench/results/metrics.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
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


def organ_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A liver-sized lumpy ellipsoid (about 19 x 15 x 15 cm) and a plausible prediction of it.

    The prediction is the reference with a different smooth boundary perturbation, moved by one voxel in
    plane, plus a small false-positive blob: HD95 of a few mm, NSD well below 1, as for a decent model.
    """
    rng = np.random.default_rng(seed)
    centre_mm = np.array([250.0, 205.0, 195.0])
    radii_mm = np.array([75.0, 75.0, 95.0])

    def lumpy(shift_vox: tuple[int, int, int]) -> np.ndarray:
        mask = np.zeros(SHAPE_ZYX, bool)
        lo = [int((c - 1.3 * r) / s) for c, r, s in zip(centre_mm, radii_mm, SPACING_ZYX, strict=True)]
        hi = [int((c + 1.3 * r) / s) + 1 for c, r, s in zip(centre_mm, radii_mm, SPACING_ZYX, strict=True)]
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        radius = sum(((g * s - c) / r) ** 2 for g, s, c, r in zip(grids, SPACING_ZYX, centre_mm, radii_mm, strict=True))
        noise = ndimage.gaussian_filter(rng.standard_normal([b - a for a, b in zip(lo, hi, strict=True)]), 6)
        noise *= 0.08 / noise.std()  # boundary moves by about +-8 % of the radius, smoothly
        box = tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, shift_vox, strict=True))
        mask[box] = np.sqrt(radius) <= 1.0 + noise
        return mask

    ref = lumpy((0, 0, 0))
    pred = lumpy((0, 1, 1))
    z, y, x = np.ogrid[:SHAPE_ZYX[0], :SHAPE_ZYX[1], :SHAPE_ZYX[2]]
    pred |= ((z - 150) / 3) ** 2 + ((y - 400) / 12) ** 2 + ((x - 100) / 12) ** 2 <= 1
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


class PeakMemory:
    """Peak extra memory of a block: VmHWM rise when /proc/self/clear_refs can reset it, else tracemalloc."""

    def __init__(self) -> None:
        self.method = "VmHWM" if self._reset_hwm() else "tracemalloc"
        self.extra_bytes = 0

    @staticmethod
    def _status_kib(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def __enter__(self) -> PeakMemory:
        if self.method == "VmHWM":
            self._reset_hwm()
            self._start = self._status_kib("VmRSS")
        else:
            tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            self.extra_bytes = (self._status_kib("VmHWM") - self._start) * 1024
        else:
            self.extra_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()


def measure(fn: Callable, args: tuple, repeats: int) -> dict[str, object]:
    values = fn(*args)  # untimed: imports and first-call costs
    with PeakMemory() as memory:
        fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "extra_mib": memory.extra_bytes / MiB,
            "memory_method": memory.method, "hd95": values[0], "nsd": values[1], "runs": repeats}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    found = []
    for name in ("numpy", "scipy", "edt", "monai", "torch", "medpy"):
        try:
            from importlib.metadata import version

            found.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - a missing package is simply not listed
            continue
    return ", ".join(found)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median reported)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "metrics.md")
    parser.add_argument("--skip-medpy", action="store_true", help="leave MedPy out (it takes ~20-40 s)")
    args = parser.parse_args(argv)

    pred, ref = organ_pair()
    box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    print(f"pair: {SHAPE_ZYX[::-1]} voxels (x, y, z) at {SPACING_ZYX[::-1]} mm; reference {ref.sum()} voxels, "
          f"prediction {pred.sum()}; union box {tuple(s.stop - s.start for s in box)[::-1]}", file=sys.stderr)

    rows: list[tuple[str, dict[str, object]]] = []
    rows.append(("ours, surface=area (DeepMind surfels)", measure(ours, (pred, ref), args.repeats)))
    rows.append(("ours, surface=voxel (as MONAI)", measure(ours_voxel, (pred, ref), args.repeats)))
    try:
        import torch

        pred_t, ref_t = (torch.from_numpy(m)[None, None] for m in (pred, ref))
        rows.append(("MONAI hausdorff(95) + surface_dice", measure(monai_pair, (pred_t, ref_t), args.repeats)))
    except ImportError:
        print("MONAI not installed: skipped", file=sys.stderr)
    if args.skip_medpy:
        print("MedPy skipped (--skip-medpy)", file=sys.stderr)
    else:
        try:
            import medpy  # noqa: F401

            rows.append(("MedPy hd95 (HD95 only)", measure(medpy_hd95, (pred, ref), 1)))
        except ImportError:
            print("MedPy not installed (.venv/bin/pip install medpy): skipped", file=sys.stderr)

    base = rows[0][1]["time_s"]
    lines = [
        "| method | time (s) | vs ours (area) | peak extra memory (MiB) | HD95 (mm) | NSD @ 1 mm |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        nsd = "-" if r["nsd"] != r["nsd"] else f"{r['nsd']:.4f}"
        lines.append(f"| {name} | {r['time_s']:.3f} | {r['time_s'] / base:.1f}x | {r['extra_mib']:.0f} | "
                     f"{r['hd95']:.3f} | {nsd} |")
    table = "\n".join(lines)
    print(table)
    command = "python bench/metrics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    memory_method = rows[0][1]["memory_method"]
    report = (
        "# Metrics benchmark: HD95 + NSD\n\n"
        f"- date: {dt.date.today().isoformat()}\n"
        f"- machine: {machine()}\n"
        f"- packages: {versions()}\n"
        f"- command: `{command.strip()}`\n"
        f"- input: {SHAPE_ZYX[::-1]} voxels (x, y, z) at {SPACING_ZYX[::-1]} mm, organ-sized lumpy ellipsoid "
        f"(reference {ref.sum()} voxels) and a perturbed, shifted prediction with one false-positive blob\n"
        f"- time: median of {args.repeats} runs after one untimed run (MedPy: one run); memory: peak extra "
        f"resident memory ({memory_method})\n\n"
        f"{table}\n\n"
        "HD95 differs between the area and voxel conventions by design (docs/metrics.md); ours with "
        "surface=voxel computes what MONAI computes.\n"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(report, encoding="utf-8")
    os.replace(tmp, args.output)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
