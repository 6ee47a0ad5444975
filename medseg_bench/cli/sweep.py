"""`medseg-bench sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg_bench.errors import UsageError


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def _ints(value: str, option: str) -> list[int]:
    try:
        return [int(v) for v in _names(value)]
    except ValueError:
        raise UsageError(f"{option} takes comma-separated integers, not '{value}'") from None


def sweep(
    task: Annotated[str, typer.Option(help="Task name(s), comma-separated.")],
    arch: Annotated[str, typer.Option(help="Architecture(s), e.g. unet,deeplab (see `list archs`).")] = "unet",
    loss: Annotated[str, typer.Option(help="Loss(es), e.g. dice_ce,ce (see `list losses`).")] = "dice_ce",
    aug: Annotated[str, typer.Option(help="Augmentation preset(s): none, light, heavy.")] = "none",
    dims: Annotated[str | None, typer.Option(
        help="2d and/or 3d. Default: each arch in every dims it supports, 2D first.")] = None,
    encoder: Annotated[str, typer.Option(help="2D encoder(s) (any smp encoder name).")] = "resnet34",
    folds: Annotated[str, typer.Option(help="Fold(s) to hold out, comma-separated.")] = "0",
    num_folds: Annotated[int, typer.Option(help="Number of cross-validation folds.")] = 5,
    seed: Annotated[str, typer.Option(help="Seed(s), comma-separated: a sweep axis.")] = "0",
    epochs: Annotated[int, typer.Option(help="Epochs per run.")] = 10,
    max_minutes: Annotated[float | None, typer.Option(
        "--max-minutes", "--max-time", help="Wall-time budget per run in minutes (whichever comes first).")] = None,
    iters_per_epoch: Annotated[int, typer.Option(help="Training iterations per epoch.")] = 50,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. Default: from the task plan.")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw (cosine) or sgd (Nesterov 0.99, poly).")] = "adamw",
    lr: Annotated[float | None, typer.Option(help="Learning rate. Default: 3e-3 adamw, 1e-2 sgd.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("results"),
    data_dir: Annotated[Path | None, typer.Option(help="Data folder. Default: $MEDSEG_BENCH_HOME/data.")] = None,
    workers: Annotated[int | None, typer.Option(help="DataLoader workers. Default: 1 with augmentation on "
                                                     "CPU, else 0; GPU: up to 8.")] = None,
    fail_fast: Annotated[bool, typer.Option(help="Stop at the first failed run.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the expanded runs and their status; train nothing.")] = False,
) -> None:
    """Train every combination of the axes and evaluate each on its held-out fold.

    Finished runs (same spec, same run id) are skipped; an interrupted run resumes from its last checkpoint.
    """
    from medseg_bench.progress import make_reporter
    from medseg_bench.results import read_status, run_dir
    from medseg_bench.settings import get_settings
    from medseg_bench.sweep import SweepRequest, expand, run_sweep

    request = SweepRequest(
        tasks=_names(task), archs=_names(arch), losses=_names(loss), augs=_names(aug),
        dims=_names(dims) or None, encoders=_names(encoder), folds=_ints(folds, "--folds"),
        seeds=_ints(seed, "--seed"), num_folds=num_folds, epochs=epochs, max_minutes=max_minutes,
        iters_per_epoch=iters_per_epoch, batch_size=batch_size, optimizer=optimizer, lr=lr)
    runs, skipped = expand(request)
    for line in skipped:
        typer.echo(line)
    if dry_run:
        for spec in runs:
            state = read_status(run_dir(results_dir, spec)).get("state", "pending")
            typer.echo(f"{state:8s} {spec.task}/{spec.run_id}")
        typer.echo(f"{len(runs)} runs")
        return
    run_sweep(runs, results_dir, data_dir or get_settings().data_dir, make_reporter(), fail_fast, workers)
