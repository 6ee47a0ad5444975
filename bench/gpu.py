"""Benchmark: the GPU path on Task04_Hippocampus (3D DynUNet, mixed precision, DataLoader workers).

Made to run on the lent GPU machine in one short call (`bench/gpu_run.sh`, set up by `bench/gpu_kit.sh`; see
docs/results/README.md, "The GPU measurement"), and anywhere else with a GPU. Every stage is a real
`medseg-bench` command in a subprocess, so this checks the GPU code path end to end: fetch, plan and cache,
`sweep` (Lightning, `16-mixed` precision, pinned memory, DataLoader workers, checkpoints), evaluation on the
held-out fold (sliding-window inference under autocast, metrics in the original geometry), `report`.

Configuration: nnU-Net's 3d_fullres plan for Hippocampus (patch 40x56x40, batch 9), `dynunet` (nnU-Net's
topology, deep supervision), Dice+CE, AdamW with cosine decay, nnU-Net's augmentation (`--aug nnunet`, the
CPU work the DataLoader workers exist for; `--aug none` to leave it out), seed 0, fold 0 of the 200 shared
cases (160 train, 40 held out), 250 iterations per epoch as nnU-Net.

Stages:
  1. throughput: `--probe-epochs` epochs with DataLoader workers 0 and with `--workers`: seconds per epoch
     (median over the epochs after the first, which warms up cuDNN and the workers), iterations/s, GPU
     utilisation (NVML, sampled every 0.2 s, mean over the run's training window: first step to the start of
     evaluation) and peak GPU memory;
  2. budget run: `--minutes` of training (`--max-minutes`, epochs 1000 so the learning rate decays over the
     clock), then the held-out Dice, HD95, epochs done and the same utilisation figures.
Results are written after each stage (a timed-out call still returns the finished ones): OUT/gpu.md,
OUT/gpu.json, the budget run's OUT/report.md and OUT/budget_run.log, and the other commands' OUT/probes.log.

`--smoke` runs the same stages tiny (12 cases, 2 epochs of 2 iterations, batch 2, 0.2-minute budget), on
the CPU when there is no GPU: a check that the script works before device time is spent on it.

Usage:
    .venv/bin/python bench/gpu.py --smoke --out /tmp/gpu-smoke
    .venv/bin/python bench/gpu.py --tables-from bench/results/gpu/gpu.json   # gpu.md again, nothing measured
    python3 bench/gpu.py --source .gpu-kit/Task04_Hippocampus --out "$OUT" [--minutes 3] [--workers 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the other bench scripts, reused below

from train import SHARED, TASK  # noqa: E402

CLI = [sys.executable, "-m", "medseg_bench"]
PUBLISHED = {"1": 0.90, "2": 0.89}  # nnU-Net, MSD Hippocampus test set (anterior, posterior)


class GpuSampler:
    """Samples GPU utilisation (%) and memory in use (MiB) every `period_s` in a thread: NVML when the
    `pynvml` module (nvidia-ml-py) is there, else `nvidia-smi`; no samples without a GPU."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []  # (wall clock, util %, MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.source = "none"

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _reader(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "NVML"

            def read() -> tuple[float, float]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                return float(util.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

            return read
        except Exception:  # noqa: BLE001 - no NVML: try nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        self.source = "nvidia-smi"

        def read_smi() -> tuple[float, float]:
            out = subprocess.run(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            util, mem = out.stdout.strip().split(",")
            return float(util), float(mem)

        return read_smi

    def _loop(self) -> None:
        read = self._reader()
        while read is not None and not self._stop.is_set():
            try:
                util, mem = read()
                self.samples.append((time.time(), util, mem))
            except Exception:  # noqa: BLE001 - a missed sample is not worth stopping the benchmark for
                pass
            self._stop.wait(self.period_s)

    def window(self, start: float, end: float) -> dict[str, float | int | None]:
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"samples": 0, "util_mean": None, "util_median": None, "mem_max_mib": None}
        utils = [u for u, _ in inside]
        return {"samples": len(inside), "util_mean": statistics.fmean(utils),
                "util_median": statistics.median(utils), "mem_max_mib": max(m for _, m in inside)}


def run_cli(args: list[str], env: dict[str, str], log: Path) -> float:
    """Run `medseg-bench ARGS`, showing its output and keeping it in `log`; returns the wall seconds."""
    start = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"$ medseg-bench {' '.join(args)}\n")
        sink.flush()
        proc = subprocess.Popen([*CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sink.write(line)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"medseg-bench {args[0]} failed with exit code {code}; see {log}")
    return time.perf_counter() - start


def evaluation_started_at(run_dir: Path) -> float | None:
    """Wall clock of the run's `evaluating N held-out cases` log line (logging's local-time asctime)."""
    for line in (run_dir / "run.log").read_text().splitlines():
        if "evaluating" in line and "held-out cases" in line:
            stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})", line)
            if stamp:
                return dt.datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def run_figures(results: Path, sampler: GpuSampler, iters: int) -> dict[str, Any]:
    """The one run under `results`: its summary's figures plus utilisation over its training window."""
    (run_dir,) = [p for p in (results / TASK).iterdir() if (p / "summary.json").is_file()]
    summary = json.loads((run_dir / "summary.json").read_text())
    cost = summary["cost"]
    epochs = cost.get("epoch_times_s") or []
    steady = epochs[1:] or epochs
    per_epoch = statistics.median(steady) if steady else None
    start = cost.get("first_step_at")
    end = evaluation_started_at(run_dir)
    gpu = sampler.window(start, end) if start and end else sampler.window(0, 0)
    return {
        "run_id": run_dir.name,
        "device": cost.get("device"),
        "epochs_done": cost.get("epochs_done"),
        "epoch_times_s": epochs,
        "s_per_epoch": per_epoch,
        "iters_per_s": iters / per_epoch if per_epoch else None,
        "train_time_s": cost.get("train_time_s"),
        "eval_time_s": cost.get("eval_time_s"),
        "peak_memory_mb": cost.get("peak_memory_mb"),
        "dice": summary["mean"].get("dice"),
        "hd95": summary["mean"].get("hd95"),
        "per_label_dice": summary.get("per_label_dice", {}),
        "gpu": gpu,
    }


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def write_tables(out: Path, facts: dict[str, Any]) -> None:
    env, conf = facts["environment"], facts["config"]
    device = env["gpu"] or "no GPU (CPU)"
    lines = [
        "# GPU path: 3D DynUNet on Task04_Hippocampus",
        "",
        f"Measured {facts['date']} on {device} (torch {env['torch']}, CUDA {env['cuda']}), {env['cpus']} CPU "
        f"cores, Python {env['python']}. Command: `{facts['command']}`.",
        "",
        f"{conf['cases']} Hippocampus cases, fold 0 ({conf['train_cases']} train / {conf['val_cases']} held "
        f"out); dynunet (nnU-Net topology, deep supervision), patch {conf['patch']}, batch {conf['batch']}, "
        f"Dice+CE, augmentation {conf['aug']}, AdamW (cosine), seed 0, precision {conf['precision']}. Fetch "
        f"and plan: {fmt(facts.get('prepare_s'), 1)} s. GPU utilisation: {facts.get('sampler', 'none')}, "
        "every 0.2 s, mean over each run's training window (first step to the start of evaluation; the "
        "per-epoch validation is inside it). Peak memory: torch's maximum allocated on the GPU (process RSS "
        "on a CPU).",
        "",
    ]
    probes = facts.get("throughput", [])
    if probes:
        lines += [
            f"## Throughput ({conf['probe_epochs']} epochs of {conf['probe_iters']} iterations; s/epoch: "
            "median without the first, warm-up epoch)",
            "",
            "| DataLoader workers | s/epoch | iterations/s | GPU util % (mean / median) | peak memory (MB) "
            "| first epoch s |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in probes:
            gpu, first = row["gpu"], (row["epoch_times_s"] or [None])[0]
            lines.append(
                f"| {row['workers']} | {fmt(row['s_per_epoch'])} | {fmt(row['iters_per_s'], 1)} | "
                f"{fmt(gpu['util_mean'], 0)} / {fmt(gpu['util_median'], 0)} | "
                f"{fmt(row['peak_memory_mb'], 0)} | {fmt(first)} |")
        lines.append("")
    budget = facts.get("budget_run")
    if budget:
        labels, epochs = budget["per_label_dice"], budget["epochs_done"] or 0
        # The budget cuts the last epoch short: it is counted in epochs_done, not in the epoch times (whole
        # epochs only), and how many of its iterations ran is not recorded.
        whole = len(budget["epoch_times_s"] or [])
        per = conf["budget_iters"]
        epochs_text, iters_text = ((f"{whole} + 1 cut short", f"{whole * per} + part of {per}")
                                   if epochs > whole else (str(epochs), str(epochs * per)))
        lines += [
            f"## Budget run ({conf['minutes']:g} minutes of training, {budget['workers']} DataLoader "
            "workers)",
            "",
            "| epochs done | iterations | s/epoch (median) | GPU util % (mean) | Dice (mean fg) | anterior "
            "| posterior | HD95 (mm) | evaluation s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {epochs_text} | {iters_text} | {fmt(budget['s_per_epoch'])} | "
            f"{fmt(budget['gpu']['util_mean'], 0)} | {fmt(budget['dice'], 4)} | {fmt(labels.get('1'), 4)} | "
            f"{fmt(labels.get('2'), 4)} | {fmt(budget['hd95'])} | {fmt(budget['eval_time_s'], 1)} |",
            "",
            f"Published nnU-Net (MSD test set, 5-fold ensemble, 1000 epochs of 250 iterations): "
            f"{PUBLISHED['1']:.2f} anterior / {PUBLISHED['2']:.2f} posterior. Here: one fold of "
            f"cross-validation on {conf['cases']} of the 260 MSD training cases.",
            "",
        ]
    (out / "gpu.md").write_text("\n".join(lines))
    (out / "gpu.json").write_text(json.dumps(facts, indent=2))
    print("\n".join(lines), flush=True)


def environment() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
            "cuda": torch.version.cuda if cuda else None, "cpus": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED, help="Task04_Hippocampus folder (MSD layout)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu",
                        help="folder for gpu.md, gpu.json, report.md and the command logs")
    parser.add_argument("--cases", type=int, help="use the first N cases (default: all)")
    parser.add_argument("--workers", type=int, default=8,
                        help="DataLoader workers of the second probe and of the budget run")
    parser.add_argument("--probe-epochs", type=int, default=3, help="epochs of each throughput probe")
    parser.add_argument("--probe-iters", type=int, default=250, help="iterations per probe epoch")
    parser.add_argument("--minutes", type=float, default=3.0, help="budget run; 0 skips it")
    parser.add_argument("--batch-size", type=int, default=9, help="nnU-Net's 3d_fullres batch (Hippocampus)")
    parser.add_argument("--patch-size", default="40,56,40", help="nnU-Net's 3d_fullres patch (Hippocampus)")
    parser.add_argument("--aug", default="nnunet", help="augmentation preset of every run (default: nnunet)")
    parser.add_argument("--smoke", action="store_true", help="tiny and quick, CPU allowed (see above)")
    parser.add_argument("--tables-from", type=Path, metavar="GPU_JSON",
                        help="measure nothing: write gpu.md again, in --out, from a gpu.json this wrote")
    args = parser.parse_args()
    if args.tables_from:
        facts = json.loads(args.tables_from.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
        write_tables(args.out, facts)
        return
    if args.smoke:
        args.cases, args.probe_epochs, args.probe_iters = args.cases or 12, 2, 2
        args.minutes, args.batch_size, args.workers = 0.2, 2, min(args.workers, 2)
    if not (args.source / "dataset.json").is_file():
        sys.exit(f"{args.source}: no dataset.json there (a Task04_Hippocampus folder in MSD layout)")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="medseg-gpu-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    """Every stage, in `work`; tables into `args.out` after each."""
    env = {**os.environ, "MEDSEG_BENCH_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log, probes_log = args.out / "budget_run.log", args.out / "probes.log"  # returned with the tables
    for path in (log, probes_log):
        path.write_text("")
    facts: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "command": "python3 bench/gpu.py " + " ".join(sys.argv[1:]),
        "environment": environment(),
    }
    source = args.source
    if args.cases is not None:  # the first N cases, as the tests take them
        sys.path.insert(0, str(ROOT))
        from tests.conftest import copy_subset

        source = copy_subset(source, work / "src" / TASK, args.cases)
    num_cases = len(json.loads((source / "dataset.json").read_text())["training"])
    val_cases = num_cases // 5  # fold 0 of 5
    cuda = facts["environment"]["gpu"] is not None
    facts["config"] = {
        "cases": num_cases, "train_cases": num_cases - val_cases, "val_cases": val_cases,
        "patch": args.patch_size.replace(",", "x"), "batch": args.batch_size,
        "precision": "16-mixed" if cuda else "32-true", "aug": args.aug, "probe_epochs": args.probe_epochs,
        "probe_iters": args.probe_iters, "minutes": args.minutes,
        "budget_iters": args.probe_iters if args.smoke else 250}
    common = ["sweep", "--task", TASK, "--arch", "dynunet", "--dims", "3d", "--loss", "dice_ce",
              "--aug", args.aug, "--patch-size", args.patch_size, "--batch-size", str(args.batch_size)]
    with GpuSampler() as sampler:
        start = time.perf_counter()
        run_cli(["fetch", TASK, "--source", str(source)], env, probes_log)
        run_cli(["plan", TASK], env, probes_log)  # fingerprint, plan; the first sweep builds the cache
        facts["prepare_s"] = time.perf_counter() - start
        facts["sampler"] = sampler.source
        facts["throughput"] = []
        for workers in dict.fromkeys((0, args.workers)):
            results = work / f"probe-w{workers}"
            run_cli([*common, "--epochs", str(args.probe_epochs), "--iters-per-epoch",
                     str(args.probe_iters), "--workers", str(workers), "--results-dir", str(results)],
                    env, probes_log)
            figures = run_figures(results, sampler, args.probe_iters)
            facts["throughput"].append({"workers": workers, **figures})
            write_tables(args.out, facts)
        if args.minutes > 0:
            results = work / "budget"
            iters = facts["config"]["budget_iters"]
            run_cli([*common, "--epochs", "1000", "--iters-per-epoch", str(iters), "--max-minutes",
                     str(args.minutes), "--workers", str(args.workers), "--results-dir", str(results)],
                    env, log)
            facts["budget_run"] = {"workers": args.workers, **run_figures(results, sampler, iters)}
            write_tables(args.out, facts)
            run_cli(["report", "--results-dir", str(results), "--format", "markdown", "--output",
                     str(args.out / "report.md")], env, log)


if __name__ == "__main__":
    main()
