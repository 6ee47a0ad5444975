"""Cache build time: medseg-bench vs nnU-Net v2 `nnUNetv2_plan_and_preprocess -c 2d 3d_fullres`.

Both start from the same MSD folder (default: the 200 shared Hippocampus cases) and do the same kind of work:
read every case, fingerprint the dataset, plan, then crop/normalise/resample and write a cache. Both get
the same number of worker processes (the machine's cores) and both are timed as fresh processes
(interpreter start and imports included). Not timed: importing the folder (`medseg-bench fetch --source`,
which also validates every case) and converting it to nnU-Net's raw layout.

nnU-Net is installed into its own venv (default /tmp/nnunet-venv) on first use: torch==2.14.1 and
torchvision==0.29.1 first (served from the local package index; any other version downloads gigabytes), then
nnunetv2.

    .venv/bin/python bench/preprocess.py [--source ../shared/data/Task04_Hippocampus] [--repeats 3]
        [--output bench/results/preprocess.md]

Prints a table and writes it to --output (bench/results/preprocess.md, which the README quotes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "Task04_Hippocampus"
NNUNET_VENV = Path("/tmp/nnunet-venv")
DATASET_ID = 4
DEFAULT_TASK = "Task04_Hippocampus"
DEFAULT_REPEATS = 3
DEFAULT_WORKERS = os.cpu_count() or 1
DEFAULT_OUTPUT = REPO / "bench" / "results" / "preprocess.md"

OURS = """
import sys
from pathlib import Path
from medseg_bench.data.catalog import get_task
from medseg_bench.data.preprocess import prepare_task
if __name__ == "__main__":
    prepared = prepare_task(get_task(sys.argv[1]), Path(sys.argv[2]), 5, workers=int(sys.argv[3]))
    print(prepared.cache_dir)
"""

# Run by nnU-Net's venv (blosc2 reads its arrays): our cached arrays against nnU-Net's preprocessed ones.
COMPARE = """
import json, os, sys
import blosc2
import numpy as np
ours, theirs = sys.argv[1:3]
result = {"cases": 0, "voxels": 0, "other_shape": 0, "image_max_abs": 0.0, "label_voxels": 0}
for name in sorted(os.listdir(theirs)):
    if not name.endswith(".b2nd") or name.endswith("_seg.b2nd"):
        continue
    case = name[:-len(".b2nd")]
    their_image = blosc2.open(urlpath=os.path.join(theirs, name), mode="r")[:]
    their_label = np.maximum(blosc2.open(urlpath=os.path.join(theirs, case + "_seg.b2nd"), mode="r")[:][0], 0)
    image = np.load(os.path.join(ours, case + ".img.npy"))
    label = np.load(os.path.join(ours, case + ".seg.npy"))
    result["cases"] += 1
    result["voxels"] += their_label.size
    if image.shape != their_image.shape:
        result["other_shape"] += 1
        result["label_voxels"] += their_label.size
        continue
    result["image_max_abs"] = max(result["image_max_abs"], float(np.abs(image - their_image).max()))
    result["label_voxels"] += int((label != their_label).sum())
print(json.dumps(result))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Run `cmd` (no shell) and return its wall time in seconds; fail loudly with its output."""
    return run_output(cmd, env)[0]


def run_output(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run `cmd` (no shell); its wall time in seconds and its last line of output."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(
            f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    lines = proc.stdout.strip().splitlines()
    return elapsed, lines[-1] if lines else ""


def ensure_nnunet(venv: Path) -> Path:
    exe = venv / "bin" / "nnUNetv2_plan_and_preprocess"
    if exe.is_file():
        return exe
    print(f"installing nnunetv2 into {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.14.1", "torchvision==0.29.1"], check=True)
    subprocess.run([*pip, "nnunetv2"], check=True)
    return exe


def to_nnunet_raw(source: Path, raw: Path) -> str:
    """nnU-Net v2 raw layout (`<case>_0000.nii.gz` per channel, v2 dataset.json) with symlinks to `source`."""
    meta = json.loads((source / "dataset.json").read_text())
    name = f"Dataset{DATASET_ID:03d}_{meta.get('name', source.name).split('_')[-1]}"
    folder = raw / name
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for entry in meta["training"]:
        image, label = source / entry["image"], source / entry["label"]
        case = image.name.removesuffix(".nii.gz")
        (folder / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(image.resolve())
        (folder / "labelsTr" / f"{case}.nii.gz").symlink_to(label.resolve())
    labels = {str(v): int(k) for k, v in meta["labels"].items()}
    (folder / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {str(k): v for k, v in meta["modality"].items()},
                "labels": labels,
                "numTraining": len(meta["training"]),
                "file_ending": ".nii.gz",
            },
            indent=2,
        )
    )
    return name


def reproduce(args: argparse.Namespace) -> str:
    """The command line that measures the same thing: every option that differs from its default."""
    command = ".venv/bin/python bench/preprocess.py"
    options = (("--source", args.source, DEFAULT_SOURCE), ("--task", args.task, DEFAULT_TASK),
               ("--repeats", args.repeats, DEFAULT_REPEATS), ("--nnunet-venv", args.nnunet_venv, NNUNET_VENV),
               ("--workers", args.workers, DEFAULT_WORKERS), ("--output", args.output, DEFAULT_OUTPUT))
    for flag, value, default in options:
        if value != default:
            command += f" {flag} {value}"
    return command + (" --skip-nnunet" if args.skip_nnunet else "")


def main() -> None:
    sys.path.insert(0, str(REPO))
    from medseg_bench.provenance import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="MSD task folder")
    parser.add_argument("--task", default=DEFAULT_TASK)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS,
                        help="builds of our cache (median reported)")
    parser.add_argument("--nnunet-venv", type=Path, default=NNUNET_VENV)
    parser.add_argument("--skip-nnunet", action="store_true")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where the table goes (default: bench/results/preprocess.md, which the README "
                             "quotes: a trial run elsewhere keeps it)")
    args = parser.parse_args()
    if not (args.source / "dataset.json").is_file():
        sys.exit(f"{args.source}: no dataset.json")
    num_cases = len(json.loads((args.source / "dataset.json").read_text())["training"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    try:
        env = dict(os.environ, MEDSEG_BENCH_HOME=str(tmp / "home"))
        cli = str(Path(sys.executable).with_name("medseg-bench"))
        fetch_s = run([cli, "fetch", args.task, "--source", str(args.source)], env)
        data = tmp / "home" / "data"
        ours = []
        for _ in range(args.repeats):
            shutil.rmtree(data / "preprocessed", ignore_errors=True)
            ours_cmd = [sys.executable, "-c", OURS, args.task, str(data), str(args.workers)]
            seconds, cache_dir = run_output(ours_cmd, env)
            ours.append(seconds)
        ours_s = statistics.median(ours)
        nnunet_s = None
        same: dict[str, dict] = {}
        if not args.skip_nnunet:
            exe = ensure_nnunet(args.nnunet_venv)
            raw = tmp / "nnUNet_raw"
            to_nnunet_raw(args.source, raw)
            nn_env = dict(
                os.environ,
                nnUNet_raw=str(raw),
                nnUNet_preprocessed=str(tmp / "nnUNet_preprocessed"),
                nnUNet_results=str(tmp / "nnUNet_results"),
            )
            w = str(args.workers)
            nnunet_s = run(
                [str(exe), "-d", str(DATASET_ID), "-c", "2d", "3d_fullres", "-npfp", w, "-np", w, w], nn_env
            )
            python = str(args.nnunet_venv / "bin" / "python")
            for config in ("3d_fullres", "2d"):
                pattern = f"Dataset{DATASET_ID:03d}_*/nnUNetPlans_{config}"
                (theirs,) = (tmp / "nnUNet_preprocessed").glob(pattern)
                same[config] = json.loads(run_output([python, "-c", COMPARE, cache_dir, str(theirs)])[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = f"{ours_s / nnunet_s:.3f} (target <= 0.25)" if nnunet_s else "-"
    load = os.getloadavg()
    rows = [
        (
            "medseg-bench cache (fingerprint, plan, cache, splits)",
            f"{ours_s:.1f}",
            ", ".join(f"{t:.1f}" for t in ours),
        ),
        ("nnUNetv2_plan_and_preprocess -c 2d 3d_fullres", f"{nnunet_s:.1f}" if nnunet_s else "not run", ""),
        ("(not timed above) medseg-bench fetch --source: copy + validate", f"{fetch_s:.1f}", ""),
    ]
    lines = [
        "# Cache build: medseg-bench vs nnU-Net v2",
        "",
        f"{num_cases} cases of {args.task} from `{args.source}`; {args.workers} worker processes each; "
        f"{os.cpu_count()} cores ({cpu_model()}), load average after the run "
        f"{load[0]:.1f} (the machine is shared); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| what | wall time (s) | runs |",
        "|---|---:|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Ours / nnU-Net: {ratio}.",
        "",
        *[f"Our cache against nnU-Net's `{config}` arrays ({c['cases']} cases, {c['voxels']:,} voxels; "
          "nnU-Net's label -1, background outside the non-zero mask, read as 0): "
          f"{c['other_shape']} cases of another shape, images differ by at most {c['image_max_abs']:.2e}, "
          f"{c['label_voxels']} label voxels differ."
          for config, c in same.items()],
        "",
        f"Reproduce: `{reproduce(args)}`" + ("" if args.skip_nnunet else
                                             f" (installs nnunetv2 into {args.nnunet_venv} once)") + ".",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(text)
    tmp_out.replace(out)


if __name__ == "__main__":
    main()
