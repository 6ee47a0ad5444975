"""Benchmark: our training loop against a bare PyTorch loop, and Dice reached after N minutes of CPU training.

Mode `overhead` (default): the same network (MONAI 3D UNet 16-32-64-128, 2 residual units), the same batches
(our DataLoader: batch 4 of 40x56x40 Hippocampus patches, no augmentation, main process), the same loss
(DiceCE), optimiser (AdamW, cosine) and gradient clipping (12) are run by
  - ours: `medseg_bench.training.train` (Lightning, checkpoints, CSV/TensorBoard logging, validation), and
  - bare: a plain `for batch in loader: forward, backward, clip, step` loop.
Each epoch's training time is measured the same way for both (data loading + steps, validation excluded);
the first epoch is warm-up and dropped. The two alternate `--repeats` times, so machine load hits both alike.

Mode `quality` (`--minutes 5,10,15`): trains the best 2D and 3D configurations of the CPU survey on
Hippocampus (fold 0) once, with the largest budget as the run's `max_minutes` (so the learning rate decays
over that wall-clock budget, as any `--max-time` run's does), snapshots the weights at the first epoch end
after each budget, and scores every snapshot on the held-out fold with full-volume inference (mean
foreground Dice). The smaller budgets are therefore points on the way of the longest run, not runs of their
own. Long: about the largest budget times the number of configurations, plus evaluation.

Usage:
    .venv/bin/python bench/train.py [--cases 40] [--epochs 4] [--iters 20] [--repeats 2]
    .venv/bin/python bench/train.py --minutes 5,10,15 [--cases 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseg_bench.provenance import cpu_model  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus"
TASK = "Task04_Hippocampus"
# The best configurations of each dims on Hippocampus in our sweeps (see README); override with --configs.
QUALITY_CONFIGS = ["3d:unet::dice_ce:none", "2d:unet:resnet34:dice_ce:none"]
QUALITY_EPOCHS = 1000  # the cosine schedule's length in quality mode: the budget, not the epochs, ends a run


def prepare(home: Path, num_cases: int):
    """Import the first `num_cases` shared Hippocampus cases into `home` and prepare them (plan, cache)."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import prepare_task

    source = home / "src" / TASK
    meta = json.loads((SHARED / "dataset.json").read_text())
    meta["training"] = meta["training"][:num_cases]
    meta["numTraining"] = len(meta["training"])
    for sub in ("imagesTr", "labelsTr"):
        (source / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(SHARED / entry[key], source / entry[key])
    (source / "dataset.json").write_text(json.dumps(meta))
    task = get_task(TASK)
    fetch_task(task, home / "data", str(source))
    return prepare_task(task, home / "data", 5, own_slices=True)  # 2D runs: their cache too


def bare_epochs(spec, prepared, epochs: int) -> list[tuple[float, float]]:
    """Per-epoch training times of a plain PyTorch loop over our loader, model, loss and optimiser."""
    import pytorch_lightning as pl
    import torch

    from medseg_bench.augment import AUGS
    from medseg_bench.data.datamodule import make_loaders
    from medseg_bench.losses import build_loss
    from medseg_bench.spec import DEFAULT_LR
    from medseg_bench.training import GRAD_CLIP, build_network, resolve_patch_and_batch

    pl.seed_everything(spec.seed, verbose=False)
    patch, batch = resolve_patch_and_batch(spec, prepared)
    split = prepared.splits[spec.fold]
    cache = prepared.cache_for(spec.own_slice_spacing)
    loader, _ = make_loaders(cache, split["train"], split["val"], spec.dims, patch, batch,
                             spec.iters_per_epoch, spec.seed, AUGS.get(spec.aug), 0)
    net = build_network(spec, prepared).train()
    loss_fn = build_loss(spec.loss, prepared.task.num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=DEFAULT_LR["adamw"], weight_decay=1e-4)
    total = epochs * spec.iters_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total)
                                                                                / total)))
    times = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        start, cpu = time.perf_counter(), time.process_time()
        for image, label in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(image), label)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
        times.append((time.perf_counter() - start, time.process_time() - cpu))
    return times


def ours_epochs(spec, prepared, run_dir: Path) -> list[tuple[float, float]]:
    """Per-epoch training times of `train()`: from epoch start to the end of its last training batch, so
    validation and checkpointing (which the bare loop does not do) are not counted."""
    import pytorch_lightning as pl

    from medseg_bench.training import train

    class StepTimer(pl.Callback):
        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []
            self.start = self.cpu = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            self.start, self.cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch,
                               batch_idx: int) -> None:
            if batch_idx == spec.iters_per_epoch - 1:
                self.times.append((time.perf_counter() - self.start, time.process_time() - self.cpu))

    shutil.rmtree(run_dir, ignore_errors=True)
    timer = StepTimer()
    train(spec, prepared, run_dir, extra_callbacks=[timer])
    return timer.times


def overhead(args: argparse.Namespace, home: Path) -> str:
    import torch

    from medseg_bench.spec import RunSpec

    prepared = prepare(home, args.cases)
    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=args.epochs,
                   iters_per_epoch=args.iters, batch_size=4, patch_size=(40, 56, 40))
    results: dict[str, list[float]] = {"bare": [], "ours": []}
    cpu_results: dict[str, list[float]] = {"bare": [], "ours": []}
    for repeat in range(args.repeats):
        for name in ("bare", "ours") if repeat % 2 == 0 else ("ours", "bare"):
            times = (bare_epochs(spec, prepared, args.epochs) if name == "bare"
                     else ours_epochs(spec, prepared, home / "run"))
            per_step = [wall / args.iters for wall, _ in times[1:]]  # first epoch: warm-up
            results[name].extend(per_step)
            cpu_results[name].extend(cpu / args.iters for _, cpu in times[1:])
            print(f"repeat {repeat + 1} {name}: " + ", ".join(f"{s:.3f}" for s in per_step) + " s/step",
                  flush=True)
    stats = {name: {"min wall": min(results[name]), "median wall": statistics.median(results[name]),
                    "min CPU": min(cpu_results[name]), "median CPU": statistics.median(cpu_results[name])}
             for name in ("bare", "ours")}
    slower = {key: 100 * (stats["ours"][key] / stats["bare"][key] - 1) for key in stats["bare"]}

    def row(name: str, label: str) -> str:
        return "| " + label + " | " + " | ".join(f"{v:.3f}" for v in stats[name].values()) + " |"

    verdict = "meets" if slower["min wall"] <= 10 else "misses"
    lines = [
        "# Training loop overhead: ours (Lightning) vs a bare PyTorch loop",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"host: {platform.node()}, {cpu_model()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, shared with other users; load "
        f"average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}); "
        f"torch {torch.__version__}.",
        "",
        f"MONAI 3D UNet 16-32-64-128 (2 residual units), batch 4 of 40x56x40 Hippocampus patches "
        f"({args.cases} cases, fold 0), DiceCE, AdamW + cosine, gradient clipping 12, no augmentation, data "
        f"loading in the main process. {args.repeats} alternating repeats x {args.epochs - 1} timed epochs x "
        f"{args.iters} steps (first epoch of each run dropped as warm-up; validation and checkpoints not "
        f"timed). Seconds per step, per timed epoch: the minimum (the epoch least disturbed by other jobs on "
        f"the machine, as `timeit` reports) and the median:",
        "",
        "| loop | min wall | median wall | min process CPU | median process CPU |",
        "|---|---|---|---|---|",
        row("bare", "bare PyTorch"),
        row("ours", "ours (`training.train`)"),
        "| ours vs bare | " + " | ".join(f"{v:+.1f}%" for v in slower.values()) + " |",
        "",
        f"Ours {verdict} the target (at most 10% slower than the bare loop) by the minimum wall time per "
        f"step ({slower['min wall']:+.1f}%). Medians move with other load on the machine (see the per-epoch "
        "times below); CPU time counts the second core's work on the same steps.",
        "",
        "Per-step times of every timed epoch (s): bare " + ", ".join(f"{t:.3f}" for t in results["bare"])
        + "; ours " + ", ".join(f"{t:.3f}" for t in results["ours"]) + ".",
        "",
        f"Reproduce: `.venv/bin/python bench/train.py --cases {args.cases} --epochs {args.epochs} "
        f"--iters {args.iters} --repeats {args.repeats}" + (f" --output {args.output}" if args.output else "")
        + "`",
    ]
    return "\n".join(lines) + "\n"


def quality(args: argparse.Namespace, home: Path) -> str:
    import numpy as np
    import pytorch_lightning as pl
    import torch

    from medseg_bench.run import evaluate_fold
    from medseg_bench.spec import RunSpec
    from medseg_bench.training import build_network, load_weights, train

    budgets = sorted(float(m) for m in args.minutes.split(","))
    prepared = prepare(home, args.cases)

    class Snapshots(pl.Callback):
        """Save the weights when a budget is passed (checked at each epoch end, on Lightning's train clock:
        the one `max_minutes` and the learning-rate decay use)."""

        def __init__(self, run_dir: Path) -> None:
            self.run_dir = run_dir
            self.taken: dict[float, tuple[float, int]] = {}  # budget -> (minutes elapsed, steps done)

        def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
            from pytorch_lightning.callbacks import Timer

            clock = next(c for c in trainer.callbacks if isinstance(c, Timer))
            elapsed = clock.time_elapsed("train") / 60
            for budget in budgets:
                if budget not in self.taken and elapsed >= budget - 1e-6:
                    trainer.save_checkpoint(self.run_dir / f"at_{budget:g}min.ckpt")
                    self.taken[budget] = (elapsed, trainer.global_step)

    rows = []
    iters = RunSpec.__dataclass_fields__["iters_per_epoch"].default
    for config in args.configs.split(","):
        dims, arch, encoder, loss, aug = config.split(":")
        spec = RunSpec(task=TASK, dims=dims, arch=arch, encoder=encoder or None, loss=loss, aug=aug,
                       epochs=args.quality_epochs, max_minutes=max(budgets))
        run_dir = home / "quality" / spec.run_id
        snapshots = Snapshots(run_dir)
        train(spec, prepared, run_dir, extra_callbacks=[snapshots])
        for budget in budgets:
            path = run_dir / f"at_{budget:g}min.ckpt"
            if not path.is_file():  # the run ended (all epochs) before this budget: its final weights count
                path = run_dir / "checkpoints" / "last.ckpt"
            net = load_weights(build_network(spec, prepared), path)
            frame = evaluate_fold(net, spec, prepared, "cuda" if torch.cuda.is_available() else "cpu")
            fg = frame[frame["label"].astype(str) != "0"]
            dice = float(np.nanmean(fg["dice"]))
            taken = snapshots.taken.get(budget)
            at, steps = (f"{taken[0]:.2f}", str(taken[1])) if taken is not None else ("end of run", "-")
            rows.append(f"| {config} | {budget:g} | {at} | {steps} | {dice:.3f} |")
            print(rows[-1], flush=True)
    lines = [
        "# Validation Dice after N minutes of CPU training (Task04_Hippocampus, fold 0)",
        "",
        f"Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"host: {platform.node()}, {cpu_model()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads); load average (1, 5, 15 min) at "
        f"the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}.",
        "",
        f"{args.cases} cases, fold 0 (the rest train, this fold is held out), defaults of the sweep (AdamW "
        f"lr 3e-3, plan's patch and batch, {iters} iterations per epoch, seed 0), one run per configuration "
        f"with max_minutes {max(budgets):g}: the learning rate decays over that wall-clock budget. "
        "Weights are snapshotted at the first epoch end after each budget (the column says when, on the "
        "run's train clock, which includes its per-epoch validation); each snapshot "
        "is scored on the held-out cases with full-volume inference in the original geometry: mean "
        "foreground Dice over both labels and all held-out cases.",
        "",
        "| configuration (dims:arch:encoder:loss:aug) | budget (min) | snapshot at (min) | steps "
        "| mean fg Dice |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Reproduce: `.venv/bin/python bench/train.py --minutes {args.minutes} --cases {args.cases} "
        f"--configs {args.configs}"
        + (f" --quality-epochs {args.quality_epochs}" if args.quality_epochs != QUALITY_EPOCHS else "")
        + (f" --output {args.output}" if args.output else "") + "`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40, help="Hippocampus cases to use (of 200)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--minutes", help="time-to-quality mode: budgets in minutes, e.g. 5,10,15")
    parser.add_argument("--configs", default=",".join(QUALITY_CONFIGS))
    parser.add_argument("--quality-epochs", type=int, default=QUALITY_EPOCHS,
                        help="cosine schedule length (quality)")
    parser.add_argument("--output", type=Path, help="default: bench/results/train.md (or train_quality.md)")
    args = parser.parse_args()
    if not (SHARED / "dataset.json").is_file():
        sys.exit(f"{SHARED}: shared Hippocampus data not found")
    with tempfile.TemporaryDirectory(prefix="medseg-bench-train-") as tmp:
        home = Path(tmp)
        os.environ["MEDSEG_BENCH_HOME"] = str(home)
        report = quality(args, home) if args.minutes else overhead(args, home)
    results = Path(__file__).resolve().parent / "results"
    output = args.output or results / ("train_quality.md" if args.minutes else "train.md")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = output.with_name(f".{output.name}.tmp")
    tmp_out.write_text(report)
    tmp_out.replace(output)
    print(report)


if __name__ == "__main__":
    main()
