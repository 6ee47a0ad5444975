"""Benchmark: CLI start-up and the sweep engine's per-run overhead.

Measures, on this machine:
  - `medseg-bench --help` and `--version` latency (median of N process launches; target < 0.5 s, which needs
    the heavy libraries imported lazily inside commands);
  - per-run overhead of `medseg-bench sweep`: from launching the command to the run's first training step,
    split into (a) launch -> run started (CLI import, sweep expansion, task preparation from the cache, run
    folder setup) and (b) run started -> first training step (data loaders, model build, Lightning set-up).
    The run is the smallest possible one (3D U-Net, 1 epoch of 1 iteration) on 10 Hippocampus cases from
    ../shared, fetched and cached before timing starts.

Usage:
    .venv/bin/python bench/sweep.py [--repeats 5] [--output bench/results/sweep.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
CLI = [sys.executable, "-m", "medseg_bench"]
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "sweep.md"


def launch_latency(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*CLI, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def small_task(workdir: Path, env: dict[str, str], source: Path) -> None:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import copy_subset

    src = copy_subset(source, workdir / "src" / "Task04_Hippocampus", 10)
    fetch_or_exit([*CLI, "fetch", "Task04_Hippocampus", "--source", str(src)], env)


def fetch_or_exit(command: list[str], env: dict[str, str]) -> None:
    """Run `medseg-bench fetch`; its error line, not a traceback, where it fails."""
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command[-4:])}: exit {done.returncode}: {done.stderr.strip()}")


def run_overhead(workdir: Path, env: dict[str, str], seed: int) -> tuple[float, float, float]:
    results = workdir / f"results-{seed}"
    start = time.time()
    subprocess.run([*CLI, "sweep", "--task", "Task04_Hippocampus", "--arch", "unet", "--dims", "3d",
                    "--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "2", "--seed", str(seed),
                    "--results-dir", str(results)], check=True, env=env, capture_output=True)
    run = next((results / "Task04_Hippocampus").iterdir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    started = next(e["time"] for e in events if e["event"] == "start")
    first_step = json.loads((run / "summary.json").read_text())["cost"]["first_step_at"]
    total = time.time() - start
    return started - start, first_step - started, total


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from medseg_bench.provenance import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--source", type=Path, default=SHARED,
                        help="Task04_Hippocampus's MSD folder (10 of its cases are used); default: "
                             "../shared's")
    args = parser.parse_args()
    if not (args.source / "dataset.json").is_file():
        sys.exit(f"{args.source}: Task04_Hippocampus not found (no dataset.json): pass --source")
    help_s = launch_latency(["--help"], args.repeats)
    version_s = launch_latency(["--version"], args.repeats)
    workdir = Path(tempfile.mkdtemp(prefix="medseg-bench-sweep-"))
    env = {**os.environ, "MEDSEG_BENCH_HOME": str(workdir / "home")}
    try:
        small_task(workdir, env, args.source)
        run_overhead(workdir, env, seed=100)  # builds plan, cache and splits; not timed
        rows = [run_overhead(workdir, env, seed) for seed in range(args.repeats)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    launch = statistics.median(r[0] for r in rows)
    setup = statistics.median(r[1] for r in rows)
    total = statistics.median(r[2] for r in rows)
    lines = [
        "# Sweep engine overhead",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), "
        f"Python {platform.python_version()}, "
        f"median of {args.repeats}. Command: `.venv/bin/python bench/sweep.py --repeats {args.repeats}"
        + ("" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
        + ("" if args.source == SHARED else f" --source {args.source}") + "`.",
        "",
        "| what | seconds |",
        "|---|---|",
        f"| `medseg-bench --help` (process launch to exit; target < 0.5) | {help_s:.3f} |",
        f"| `medseg-bench --version` | {version_s:.3f} |",
        f"| sweep: launch to run started (imports, expansion, cached task, run folder) | {launch:.2f} |",
        f"| sweep: run started to first training step (loaders, model, Lightning set-up) | {setup:.2f} |",
        f"| sweep: launch to first training step (per-run overhead) | {launch + setup:.2f} |",
        f"| whole 1-iteration run incl. evaluation of 2 cases (for scale) | {total:.2f} |",
        "",
    ]
    text = "\n".join(lines)
    publish(text, args.output)


if __name__ == "__main__":
    main()
