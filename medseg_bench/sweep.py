"""Sweeps: expand axes into run specs (validating every name first), then run what is not done yet."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from medseg_bench.augment import AUGS
from medseg_bench.data.catalog import task_registry
from medseg_bench.errors import RunError, UsageError
from medseg_bench.losses import LOSSES
from medseg_bench.models import ARCHS, DEFAULT_ENCODER
from medseg_bench.progress import PlainReporter
from medseg_bench.results import check_writable, is_done, run_dir
from medseg_bench.spec import DIMS, RunSpec


@dataclass
class SweepRequest:
    """The axes of a sweep (lists) and its fixed settings."""

    tasks: list[str]
    archs: list[str]
    losses: list[str]
    augs: list[str]
    dims: list[str] | None = None  # None: every dims each arch supports
    encoders: list[str] = field(default_factory=lambda: [DEFAULT_ENCODER])
    folds: list[int] = field(default_factory=lambda: [0])
    seeds: list[int] = field(default_factory=lambda: [0])
    num_folds: int = 5
    epochs: int = 10
    max_minutes: float | None = None
    iters_per_epoch: int = 50
    batch_size: int | None = None
    optimizer: str = "adamw"
    lr: float | None = None


def expand(request: SweepRequest) -> tuple[list[RunSpec], list[str]]:
    """All run specs of `request`, plus one line per combination that cannot exist (skipped).

    Every name is checked before anything runs: a typo fails with a did-you-mean and exit code 2.
    """
    tasks = task_registry()
    task_specs = [tasks.get(t) for t in request.tasks]
    archs = [ARCHS.get(a) for a in request.archs]
    losses = [LOSSES.canonical(x) for x in request.losses]
    augs = [AUGS.canonical(x) for x in request.augs]
    for d in request.dims or []:
        if d not in DIMS:
            raise UsageError(f"unknown dims '{d}'; choose from {', '.join(DIMS)}")
    runs: list[RunSpec] = []
    skipped: list[str] = []
    for task in task_specs:
        for dims in DIMS:
            if request.dims is not None and dims not in request.dims:
                continue
            for entry in archs:
                if dims not in entry.builders:
                    if request.dims is not None:
                        skipped.append(f"{entry.name} in {dims}: skipped, '{entry.name}' has no {dims} variant "
                                       f"(it supports {', '.join(entry.dims)})")
                    continue
                encoders: list[str | None] = list(request.encoders) if dims == "2d" else [None]
                for encoder, loss, aug, fold, seed in itertools.product(
                        encoders, losses, augs, request.folds, request.seeds):
                    runs.append(RunSpec(
                        task=task.name, dims=dims, arch=entry.name, loss=loss, aug=aug, encoder=encoder,
                        fold=fold, num_folds=request.num_folds, seed=seed, epochs=request.epochs,
                        max_minutes=request.max_minutes, iters_per_epoch=request.iters_per_epoch,
                        batch_size=request.batch_size, optimizer=request.optimizer, lr=request.lr,
                        task_version=task.version))
    unique = list(dict.fromkeys(runs))
    if not unique:
        raise UsageError("the sweep expands to no runs")
    return unique, skipped


def default_num_workers(spec: RunSpec) -> int:
    """DataLoader workers: augmentation runs in workers; without augmentation on a CPU they only compete."""
    import torch

    if torch.cuda.is_available():
        return min(8, os.cpu_count() or 1)
    return 1 if spec.aug != "none" else 0


def run_sweep(runs: list[RunSpec], results_dir: Path, data_dir: Path, reporter: PlainReporter,
              fail_fast: bool = False, num_workers: int | None = None) -> dict[str, list[str]]:
    """Run every pending run in order; finished runs are skipped. Raises RunError if any run failed."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.preprocess import prepare_task
    from medseg_bench.run import execute_run

    check_writable(results_dir)
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    reporter.start(len(runs))
    prepared = {}
    try:
        for spec in runs:
            folder = run_dir(results_dir, spec)
            if is_done(folder):
                reporter.skip(spec.run_id, "already done")
                outcome["skipped"].append(spec.run_id)
                continue
            key = (spec.task, spec.num_folds)
            if key not in prepared:
                reporter.say(f"preparing {spec.task} (plan, cache, {spec.num_folds}-fold splits)")
                prepared[key] = prepare_task(get_task(spec.task), data_dir, spec.num_folds, progress=True)
            reporter.run_start(spec.run_id)
            workers = default_num_workers(spec) if num_workers is None else num_workers
            try:
                summary = execute_run(spec, prepared[key], folder, reporter, workers)
            except RunError as exc:
                reporter.run_end(spec.run_id, None, str(exc))
                outcome["failed"].append(spec.run_id)
                if fail_fast:
                    break
                continue
            reporter.run_end(spec.run_id, summary)
            outcome["done"].append(spec.run_id)
    finally:
        reporter.close()
    if outcome["failed"]:
        raise RunError(f"{len(outcome['failed'])} of {len(runs)} runs failed: {', '.join(outcome['failed'])}")
    return outcome
