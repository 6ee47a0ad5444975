"""Benchmark: how the commands that read a results dir scale with the number of finished runs.

Builds, in a temporary folder, a results dir of N finished runs (N = 50, 200, 1000 by default) as a sweep
leaves them: the runs `sweep` expands from the flags of `SWEEPS` (two tasks, 3D architectures, losses,
augmentation presets, five folds, seeds), each folder with its spec.json (its run id as `RunSpec.run_id`
gives it), status.json, events.jsonl (a start event with the attempt's environment, then done), env.json,
setup.json (with a data digest), splits.json, summary.json, metrics.csv (40 held-out cases x 2 labels, every
metric column), logs/metrics.csv and run.log; and a data dir holding each task's plan.json only (what a
sweep that skips finished runs reads). Then times, in a process of its own each, with `/usr/bin/time` for
the peak resident memory:
  - `medseg-bench status` (every run's line; it also rebuilds index.parquet);
  - `medseg-bench report --format markdown`;
  - `medseg-bench report --format html` (its figures included);
  - `medseg-bench sweep ... --dry-run` with every run done;
  - `medseg-bench sweep ...` with every run done (the skip path: every run read, none trained).

The code timed is this checkout's (PYTHONPATH), so a checkout of another commit measures that commit.

Usage:
    .venv/bin/python bench/results_scale.py [--sizes 50,200,1000] [--repeats 1]
        [--output bench/results/results_scale.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

if TYPE_CHECKING:
    from medseg_bench.spec import RunSpec

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "results_scale.md"
CASES_PER_FOLD = 40
NUM_FOLDS = 5
LABELS = ("1", "2")
MiB = 1024

_AXES = ["--task", "Task04_Hippocampus,Task05_Prostate", "--dims", "3d",
         "--folds", ",".join(map(str, range(NUM_FOLDS))), "--epochs", "8"]
# Runs per sweep: 2 tasks x archs x losses x augs x 5 folds x seeds.
SWEEPS: dict[int, list[str]] = {
    50: [*_AXES, "--arch", "unet,segresnet,dynunet,attentionunet,basicunet"],
    200: [*_AXES, "--arch", "unet,segresnet,dynunet,attentionunet,basicunet", "--loss", "dice_ce,dice",
          "--aug", "none,light"],
    1000: [*_AXES, "--arch", "unet,segresnet,dynunet,attentionunet,basicunet", "--loss", "dice_ce,dice",
           "--aug", "none,light", "--seed", "0,1,2,3,4"],
}
PLAN = {"batch_2d": 32, "batch_3d": 4, "budget": "cpu", "crop_to_nonzero": True, "ct_clip": None,
        "ct_mean": None, "ct_std": None, "median_shape": [35, 50, 35], "median_spacing": [1.0, 1.0, 1.0],
        "normalization": "per_channel", "patch_2d": [64, 64], "patch_3d": [40, 56, 40],
        "target_spacing": [1.0, 1.0, 1.0]}
VERSIONS = {"medseg-bench": "0.1.0", "torch": "2.14.1", "pytorch-lightning": "2.6.6", "monai": "1.6.1",
            "segmentation-models-pytorch": "0.6.0", "numpy": "2.4.6", "scipy": "1.17.1",
            "SimpleITK": "2.5.7", "pandas": "3.1.1", "torchvision": "0.29.1", "timm": "1.0.31",
            "edt": "3.1.2"}
ENV = {"cpu": "AMD EPYC (cpu family 26, model 2)", "cpu_capability": "AVX512", "cpu_count": 2,
       "git_revision": "c0a53530020bad736b09212ef4c2cfe92f195147", "gpu": None, "host": "vm",
       "isa_limits": {}, "platform": "Linux-6.18.44-x86_64-with-glibc2.36", "python": "3.11.7",
       "torch_threads": 2, "versions": VERSIONS}


@functools.cache
def plan_of(task: str) -> dict[str, object]:
    """The plan a task's runs trained with (a copy of a real Hippocampus plan, with the task's channels)."""
    from medseg_bench.data.catalog import get_task

    channels = get_task(task).num_channels
    return {**PLAN, "task": task,
            "channel_normalization": [{"nonzero_mask": False, "scheme": "zscore"}] * channels}


def _dump(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def write_run(results: Path, spec: RunSpec, rng: np.random.Generator) -> None:
    """One finished run folder as `run.py` leaves it (no checkpoints or predictions: nothing reads them)."""
    from medseg_bench.metrics.info import METRIC_NAMES
    from medseg_bench.results import SETUP_NAME
    from tests.conftest import finished_summary

    run_id, task, fold = spec.run_id, spec.task, spec.fold
    folder = results / task / run_id
    (folder / "logs").mkdir(parents=True)
    _dump(folder / "spec.json", {"run_id": run_id, **spec.to_dict()})
    # a configuration's quality, the same in every fold and seed; each case's scores drawn around it
    quality = 0.75 + (zlib.crc32(run_id.rsplit("-f", 1)[0].encode()) % 1000) / 10_000
    cases = [f"case_{fold * CASES_PER_FOLD + i:03d}" for i in range(CASES_PER_FOLD)]
    every = [f"case_{i:03d}" for i in range(CASES_PER_FOLD * NUM_FOLDS)]
    dice = np.clip(quality + rng.normal(0, 0.03, (len(cases), len(LABELS))), 0.0, 1.0)
    lines = [",".join(["case", "label", *METRIC_NAMES, "ref_empty", "pred_empty"])]
    for c, case in enumerate(cases):
        for k, label in enumerate(LABELS):
            d = float(dice[c, k])
            hd95 = 1.0 + (1 - d) * 10 + float(rng.uniform(0, 0.5))
            values = {"dice": d, "jaccard": d / (2 - d), "precision": min(1.0, d + 0.02),
                      "recall": max(0.0, d - 0.02), "volume_diff": 1 - d, "hd": hd95 * 1.6, "hd95": hd95,
                      "assd": hd95 / 4, "nsd": min(1.0, d + 0.08)}
            lines.append(",".join([case, label, *(repr(values[m]) for m in METRIC_NAMES), "False", "False"]))
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    epoch_s = float(rng.uniform(6, 9))
    cost = {"device": "cpu", "epoch_times_s": [round(epoch_s, 4)] * spec.epochs, "epochs_done": spec.epochs,
            "eval_time_s": 4.5, "first_step_at": 1796250616.3, "params": 1187766, "peak_memory_mb": 1730.1,
            "resumed_at_epoch": None, "time_per_epoch_s": epoch_s, "train_time_s": epoch_s * spec.epochs}
    means = dice.mean(axis=0)
    _dump(folder / "summary.json", finished_summary(
        run_id=run_id, num_cases=len(cases), cost=cost, plan=plan_of(task), postprocessing=None, tta=False,
        mean={"dice": float(means.mean()), "jaccard": 0.78, "hd95": 1.23, "nsd": 0.97},
        per_label_dice={label: float(means[k]) for k, label in enumerate(LABELS)},
        metric_settings={"empty_policy": "penalize", "nsd_tolerance_mm": 1.0, "surface": "area"}))
    _dump(folder / "env.json", ENV)
    preprocessing = {key: plan_of(task)[key] for key in ("channel_normalization", "crop_to_nonzero",
                                                          "ct_clip", "ct_mean", "ct_std", "normalization",
                                                          "target_spacing")}
    _dump(folder / SETUP_NAME, {"batch_size": 4, "patch_size": [40, 56, 40], "orientation": "RAS",
                                "data": {"cases": len(every), "digest": "0899a0d5117a05a4"},
                                "preprocessing": preprocessing})
    _dump(folder / "splits.json", {"train": [c for c in every if c not in cases], "val": cases})
    start = 1796250614.7
    events = [{"event": "start", "time": start, "pid": 24913, "host": "vm",
               **{key: ENV[key] for key in ("git_revision", "versions", "python", "cpu", "cpu_capability",
                                            "isa_limits", "torch_threads", "gpu")}},
              {"event": "done", "time": start + 70, "pid": 24913, "host": "vm"}]
    (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    _dump(folder / "status.json", {"pid": 24913, "state": "done", "time": start + 69})
    _dump(folder / "heartbeat.json", {"epoch": spec.epochs, "epochs": spec.epochs,
                                      "host": "vm", "pid": 24913, "run_id": run_id, "time": start + 68})
    log = ["epoch,step,train_loss,val_dice"]
    for epoch in range(spec.epochs):
        log += [f"{epoch},{(epoch + 1) * 50 - 1},,{quality * (1 - 0.5 ** (epoch + 1)):.6f}",
                f"{epoch},{(epoch + 1) * 50 - 1},{0.9 * 0.7 ** epoch:.6f},"]
    (folder / "logs" / "metrics.csv").write_text("\n".join(log) + "\n")
    (folder / "run.log").write_text(f"2026-12-02 22:30:15,731 INFO medseg_bench.run: run {run_id}: training\n"
                                    * 5)


def build(workdir: Path, size: int) -> tuple[Path, Path]:
    """A results dir of the `size` runs `SWEEPS[size]` expands to, every one finished, and a home whose data
    dir holds each task's plan.json; returns (results dir, home)."""
    from medseg_bench.data.plan import read_plan
    from medseg_bench.sweep.expand import expand
    from medseg_bench.sweep.spec_file import build_request

    runs = expand_flags(SWEEPS[size], build_request, expand)
    assert len(runs) == size, f"{len(runs)} runs expanded for size {size}"
    results, home = workdir / f"results-{size}", workdir / f"home-{size}"
    rng = np.random.default_rng(size)
    for spec in runs:
        write_run(results, spec, rng)
    for task in sorted({spec.task for spec in runs}):
        path = home / "data" / "preprocessed" / task / "plan.json"
        path.parent.mkdir(parents=True)
        _dump(path, plan_of(task))
        read_plan(path)  # a plan the sweep reads as such
    return results, home


def expand_flags(flags: list[str], build_request: Any, expand: Any) -> list[RunSpec]:
    """The runs `medseg-bench sweep FLAGS` expands to (the flags as `cli/sweep.py` reads them)."""
    from medseg_bench.cli import comma_list

    options = dict(zip(flags[::2], flags[1::2], strict=True))
    overrides = {"tasks": comma_list("--task", options.get("--task")),
                 "archs": comma_list("--arch", options.get("--arch")),
                 "losses": comma_list("--loss", options.get("--loss")),
                 "augs": comma_list("--aug", options.get("--aug")),
                 "dims": comma_list("--dims", options.get("--dims")),
                 "folds": [int(f) for f in options["--folds"].split(",")],
                 "seeds": [int(s) for s in options.get("--seed", "0").split(",")],
                 "epochs": int(options["--epochs"])}
    runs, _ = expand(build_request({}, overrides))
    return list(runs)


def timed(args: list[str], env: dict[str, str], repeats: int) -> tuple[float, float]:
    """(seconds, peak resident MiB) of `medseg-bench ARGS`, the median of `repeats` runs by time."""
    measured = []
    for _ in range(repeats):
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", sys.executable, "-m", "medseg_bench", *args],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(f"medseg-bench {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        seconds, kib = done.stderr.strip().splitlines()[-1].split()
        measured.append((float(seconds), int(kib) / MiB))
    return sorted(measured)[len(measured) // 2]


def commands(results: Path, size: int, workdir: Path) -> dict[str, list[str]]:
    where = ["--results-dir", str(results)]
    return {
        "status": ["status", *where],
        "report markdown": ["report", *where, "--format", "markdown"],
        "report html (with figures)": ["report", *where, "--format", "html", "--output",
                                       str(workdir / f"report-{size}.html")],
        "sweep --dry-run (all done)": ["sweep", *SWEEPS[size], *where, "--dry-run"],
        "sweep (all done: skips)": ["sweep", *SWEEPS[size], *where],
    }


def main() -> None:
    from medseg_bench.provenance import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200,1000", help=f"numbers of runs, of {sorted(SWEEPS)}")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SWEEPS]
    if unknown:
        raise SystemExit(f"--sizes: no sweep of {unknown} runs; choose from {sorted(SWEEPS)}")
    workdir = Path(tempfile.mkdtemp(prefix="medseg-bench-scale-"))
    table: dict[str, dict[int, tuple[float, float]]] = {}
    built_s: dict[int, float] = {}
    try:
        for size in sizes:
            start = time.perf_counter()
            results, home = build(workdir, size)
            built_s[size] = time.perf_counter() - start
            env = {**os.environ, "MEDSEG_BENCH_HOME": str(home), "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
            for name, argv in commands(results, size, workdir).items():
                table.setdefault(name, {})[size] = timed(argv, env, args.repeats)
                seconds, mib = table[name][size]
                print(f"{size:5d} runs  {name:30s} {seconds:7.2f} s {mib:7.0f} MiB", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["bench/results_scale.py", *(["--sizes", args.sizes] if args.sizes != "50,200,1000"
                                                    else []),
                        *(["--repeats", str(args.repeats)] if args.repeats != 1 else []),
                        *([] if args.output == DEFAULT_OUTPUT else ["--output", str(args.output)])])
    first, last = sizes[0], sizes[-1]
    lines = [
        "# Commands that read a results dir, by number of finished runs",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}, "
        + (f"median of {args.repeats}" if args.repeats > 1 else "one run each")
        + f". Command: `.venv/bin/python {command}`. Each run: {CASES_PER_FOLD} held-out cases x "
        f"{len(LABELS)} labels; runs of 2 tasks, 3D architectures, losses, augmentations, {NUM_FOLDS} folds "
        "and seeds, as `SWEEPS` in the script expands them. Seconds (wall, the process's whole life: imports "
        "included) and peak resident memory (MiB, `/usr/bin/time`).",
        "",
        "| command | " + " | ".join(f"{s} runs: s, MiB" for s in sizes)
        + (f" | ms per run ({first} to {last})" if len(sizes) > 1 else "") + " |",
        "|---|" + "---|" * (len(sizes) + (len(sizes) > 1)),
    ]
    for name, by_size in table.items():
        cells = [f"{by_size[s][0]:.2f} s, {by_size[s][1]:.0f}" for s in sizes]
        if len(sizes) > 1:
            cells.append(f"{(by_size[last][0] - by_size[first][0]) / (last - first) * 1000:.1f}")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    lines += ["", "Building the synthetic results dir took "
              + ", ".join(f"{built_s[s]:.1f} s ({s} runs)" for s in sizes) + ".", ""]
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
