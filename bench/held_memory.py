"""Benchmark: memory a sweep holds as its evaluation starts, before and after handing back what it freed.

The evaluation checks each held-out case against the memory the process may use less what it holds (VmRSS,
`checks.MemoryLimit.held_bytes`). After training, glibc's allocator keeps much of what was freed; the
evaluation first calls `checks.release_freed_memory` (a garbage collection, then `malloc_trim(0)`). For a 2D
U-Net (ResNet-34) and a 3D U-Net on the 200 Task04_Hippocampus cases of ../shared (fold 0, no augmentation,
`--epochs E --iters-per-epoch I`), this records VmRSS just before that call and just after it, in the sweep's
own process (no `--jobs`), through a wrapper around it.

Usage:
    .venv/bin/python bench/held_memory.py [--epochs 2] [--iters 20] [--output bench/results/held_memory.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/publish.py

from publish import publish  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "Task04_Hippocampus"
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "held_memory.md"
CLI = [sys.executable, "-m", "medseg_bench"]

# The sweep, in this process, with `release_freed_memory` wrapped: VmRSS before and after, appended to the
# file named by argv[1] (the `if` keeps spawned pool workers, which import no `-c` main, from running it)
SWEEP = """
import json, sys
from medseg_bench import checks
from medseg_bench.cli.app import main

def rss():
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))

if __name__ == "__main__":
    record, real = sys.argv[1], checks.release_freed_memory

    def wrapped():
        before = rss()
        real()
        with open(record, "a") as fh:
            fh.write(json.dumps({"before": before, "after": rss()}) + "\\n")

    checks.release_freed_memory = wrapped
    sys.argv = ["medseg-bench", *sys.argv[2:]]
    main()
"""


def measure(dims: str, epochs: int, iters: int, workdir: Path, env: dict[str, str]) -> dict[str, int]:
    record = workdir / f"{dims}.jsonl"
    subprocess.run([sys.executable, "-c", SWEEP, str(record), "sweep", "--task", "Task04_Hippocampus",
                    "--dims", dims, "--arch", "unet", "--loss", "dice_ce", "--aug", "none", "--epochs",
                    str(epochs), "--iters-per-epoch", str(iters), "--results-dir",
                    str(workdir / "results")], check=True, env=env, stdout=subprocess.DEVNULL)
    lines = record.read_text().splitlines()
    if len(lines) != 1:
        raise SystemExit(f"{record}: {len(lines)} evaluations recorded, not 1")
    return json.loads(lines[0])


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from medseg_bench.provenance import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--source", type=Path, default=SHARED,
                        help="Task04_Hippocampus's MSD folder (its 200 cases); default: ../shared's")
    args = parser.parse_args()
    if not (args.source / "dataset.json").is_file():
        sys.exit(f"{args.source}: Task04_Hippocampus not found (no dataset.json): pass --source")
    workdir = Path(tempfile.mkdtemp(prefix="medseg-bench-held-"))
    env = {**os.environ, "MEDSEG_BENCH_HOME": str(workdir / "home")}
    try:
        fetched = subprocess.run([*CLI, "fetch", "Task04_Hippocampus", "--source", str(args.source)], env=env,
                                 capture_output=True, text=True)
        if fetched.returncode:  # fetch's line, not a CalledProcessError traceback hiding it
            sys.exit(f"fetch {args.source}: exit {fetched.returncode}: {fetched.stderr.strip()}")
        rows = {dims: measure(dims, args.epochs, args.iters, workdir, env) for dims in ("2d", "3d")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mib = 2**20
    command = (f".venv/bin/python bench/held_memory.py --epochs {args.epochs} --iters {args.iters}"
               + ("" if args.output == DEFAULT_OUTPUT else f" --output {args.output}")
               + ("" if args.source == SHARED else f" --source {args.source}"))
    lines = [
        "# Memory held when the evaluation starts",
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(`{platform.platform()}`, {cpu_model()}), Python {platform.python_version()}. "
        f"Command: `{command}`. Task04_Hippocampus (200 cases), fold 0, {args.epochs} epochs of {args.iters} "
        "iterations, Dice + CE, no augmentation, one sweep process each.",
        "",
        "| run | VmRSS after training (MiB) | after `release_freed_memory` (MiB) | handed back (MiB) |",
        "|---|---|---|---|",
        *(f"| {dims} unet | {row['before'] / mib:.0f} | {row['after'] / mib:.0f} | "
          f"{(row['before'] - row['after']) / mib:.0f} |" for dims, row in rows.items()),
        "",
    ]
    publish("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
