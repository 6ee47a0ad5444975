"""Benchmark: what augmentation costs per training sample, and what reading around the patch changes.

For each augmentation preset and pipeline version 5 (rotation, scaling and elastic deformation resample the
patch alone), 6 (they read the volume around it, as nnU-Net's spatial transform), 7 (heavy's elastic
deformation and nnunet's noise as nnU-Net's; version 8 augments as 7) and 9 (nnunet's low resolution as
batchgeneratorsv2's, torch's `interpolate`), draws the same training samples of Task04_Hippocampus fold 0
(the sweep's plan: patch, batch, foreground oversampling) in the main process and reports:
  - milliseconds per sample (crop + augmentation, one CPU thread's work: a DataLoader worker's load);
  - among samples that were rotated or scaled, the share of patch voxels that are exactly zero. The
    normalised MRI is non-zero inside the volume, so a zero is padding: outside the volume, or (version 5)
    outside the patch that was rotated or scaled;
  - the share of samples that differ from one version to the next (same seeds, same draws).

Usage:
    .venv/bin/python bench/augment.py [--cases 200] [--samples 400]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from publish import publish  # noqa: E402
from train import SHARED, TASK, prepare  # noqa: E402  (bench/train.py: the shared cases, imported once)

from medseg_bench.provenance import cpu_model  # noqa: E402

VERSIONS = (5, 6, 7, 9)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "augment.md"


def measure(prepared, dims: str, arch: str, encoder: str | None, preset: str, samples: int
            ) -> dict[int, tuple[float, float, int, list]]:
    """Per version: (ms per sample, zero share in rotated/scaled samples, their count, the samples)."""
    import numpy as np

    from medseg_bench.augment import AUGS
    from medseg_bench.data.datamodule import CaseStore, PatchDataset
    from medseg_bench.spec import RunSpec
    from medseg_bench.training import network_spacing, resolve_patch_and_batch, run_slice_axis

    spec = RunSpec(task=TASK, dims=dims, arch=arch, encoder=encoder, loss="dice_ce", aug=preset)
    patch, batch = resolve_patch_and_batch(spec, prepared)
    store = CaseStore(prepared.cache_for(spec.own_slice_spacing), prepared.splits[0]["train"],
                      run_slice_axis(spec, network_spacing(prepared)))
    for case_id in store.case_ids:  # open every case's memory maps before timing
        store[case_id]
    out: dict[int, tuple[float, float, int, list]] = {}
    for version in VERSIONS:
        data = PatchDataset(store, dims, patch, samples, seed=0, aug_steps=AUGS.get(preset), batch_size=batch,
                            pipeline_version=version)
        start = time.perf_counter()
        drawn = [data.draw(i) for i in range(samples)]
        ms = (time.perf_counter() - start) * 1000 / samples
        zeros = [float((image == 0).mean()) for image, _, applied in drawn
                 if any(name == "affine" for name, _ in applied)]
        out[version] = (ms, float(np.mean(zeros)) if zeros else float("nan"), len(zeros), drawn)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200, help="Hippocampus cases to use (of 200)")
    parser.add_argument("--samples", type=int, default=400, help="training samples per preset and version")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if not (SHARED / "dataset.json").is_file():
        sys.exit(f"{SHARED}: shared Hippocampus data not found")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medseg-bench-augment-") as tmp:
        os.environ["MEDSEG_BENCH_HOME"] = tmp
        prepared = prepare(Path(tmp), args.cases)
        for dims, arch, encoder in (("3d", "unet", None), ("2d", "unet", "resnet34")):
            for preset in ("none", "light", "heavy", "nnunet"):
                result = measure(prepared, dims, arch, encoder, preset, args.samples)
                count = result[5][2]
                differ = [sum(not (np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]))
                              for a, b in zip(result[v][3], result[w][3], strict=True)) / args.samples
                          for v, w in zip(VERSIONS[:-1], VERSIONS[1:], strict=True)]
                ms = " / ".join(f"{result[v][0]:.2f}" for v in VERSIONS)
                zeros = " / ".join(f"{result[v][1]:.1%}" for v in VERSIONS) + f" ({count})" if count else "-"
                changed = " / ".join(f"{d:.1%}" for d in differ)
                rows.append(f"| {dims} | {preset} | {ms} | {zeros} | {changed} |")
                print(rows[-1], flush=True)
    versions = " / ".join(f"v{v}" for v in VERSIONS)
    steps = " / ".join(f"v{v}→v{w}" for v, w in zip(VERSIONS[:-1], VERSIONS[1:], strict=True))
    report = "\n".join([
        "# Augmentation: cost per training sample, and reading around the patch (Task04_Hippocampus, fold 0)",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"host: {platform.node()}, {cpu_model()} "
        f"({os.cpu_count()} CPUs, 1 thread); load average (1, 5, 15 min) at the end: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}.",
        "",
        f"{args.cases} cases, fold 0's training cases, {args.samples} samples per row (seed 0, the plan's "
        "patch and batch of a U-Net, 2D: ResNet-34 encoder). Version 5 resamples the patch alone; version 6 "
        "reads the volume around it; version 7 gives heavy nnU-Net's elastic deformation and nnunet "
        "nnU-Net's noise (version 8 augments as 7); version 9 gives nnunet batchgeneratorsv2's low "
        "resolution. Zero share: among samples that were rotated or scaled (how many in brackets; "
        "the same samples in each version), the share of patch voxels that are exactly zero (padding: "
        "outside the volume, or in version 5 also outside the patch before it was rotated or scaled).",
        "",
        f"| dims | preset | ms per sample, {versions} | zero share, {versions} (samples) "
        f"| samples that differ, {steps} |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Reproduce: `.venv/bin/python bench/augment.py --cases {args.cases} --samples {args.samples}"
        + ("" if args.output == DEFAULT_OUTPUT else f" --output {args.output}") + "`",
    ]) + "\n"
    publish(report, args.output)


if __name__ == "__main__":
    main()
