"""`medseg-bench sweep`: from flags, a sweep file, or both (flags win)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer

from medseg_bench.cli import print_coloured
from medseg_bench.errors import UsageError

LAUNCHERS = ("local", "slurm")


def _ints(value: str | list[str] | None, option: str) -> list[int] | None:
    from medseg_bench.cli import comma_list

    try:
        return [int(v) for v in comma_list(option, value) or []] or None
    except ValueError:
        shown = value if isinstance(value, str) else ",".join(value or [])
        raise UsageError(f"{option} takes comma-separated integers, not '{shown}'") from None


def _floats(value: str | None, option: str) -> tuple[float, ...] | None:
    from medseg_bench.cli import comma_list

    try:
        return tuple(float(v) for v in comma_list(option, value) or []) or None
    except ValueError:
        raise UsageError(f"{option} takes comma-separated numbers, not '{value}'") from None


def sweep(
    config: Annotated[Path | None, typer.Option(
        help="Sweep file (YAML): axes and settings; flags override it. A bare name (quick, survey) is the "
             "package's own sweep file of that name.")] = None,
    # The names are examples: `list` prints what the registries hold (importing them here would slow --help).
    task: Annotated[list[str] | None, typer.Option(
        metavar="TASK,...",
        help="Task name(s), comma-separated or repeated, as every axis (`medseg-bench list tasks`).")] = None,
    arch: Annotated[list[str] | None, typer.Option(
        metavar="ARCH,...",
        help="Architecture(s), e.g. unet,deeplab (`medseg-bench list archs`). Default: unet.")] = None,
    loss: Annotated[list[str] | None, typer.Option(
        metavar="LOSS,...",
        help="Loss(es), e.g. dice_ce,focal (`medseg-bench list losses`). Default: dice_ce.")] = None,
    aug: Annotated[list[str] | None, typer.Option(
        metavar="AUG,...",
        help="Augmentation preset(s), e.g. none,light (`medseg-bench list augs`). Default: none.")] = None,
    target: Annotated[list[str] | None, typer.Option(
        metavar="TARGET,...",
        help="labels (softmax over the task's labels) and/or regions (one sigmoid channel per region of the "
             "task file, as nnU-Net trains BraTS; a task with regions only), comma-separated. Default: "
             "labels.")] = None,
    dims: Annotated[list[str] | None, typer.Option(
        metavar="DIMS,...",
        help="2d and/or 3d. Default: each arch in every dims it supports, 2D first.")] = None,
    encoder: Annotated[list[str] | None, typer.Option(
        metavar="ENCODER,...",
        help="2D encoder(s) (smp names; fcn: resnet50, resnet101). Default: resnet34 (fcn: resnet50).",
    )] = None,
    folds: Annotated[list[str] | None, typer.Option(
        "--folds", "--fold", metavar="FOLD,...",
        help="Fold(s) to hold out, comma-separated (--fold too: the sweep file's key). Default: 0.")] = None,
    num_folds: Annotated[int | None, typer.Option(help="Number of cross-validation folds. Default: 5.")] \
        = None,
    seed: Annotated[list[str] | None, typer.Option(
        metavar="SEED,...", help="Seed(s), comma-separated: a sweep axis. Default: 0.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        help="Drop combinations matching every key=value, e.g. 'arch=deeplab,aug=heavy'. Repeatable; added "
             "to the sweep file's rules.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs per run. Default: 10.")] = None,
    max_minutes: Annotated[float | None, typer.Option(
        "--max-minutes", "--max-time", help="Wall-time budget per run in minutes (whichever comes first).")] \
        = None,
    iters_per_epoch: Annotated[int | None, typer.Option(help="Training iterations per epoch. Default: 50.")] \
        = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. Default: from the task plan.")] = None,
    patch_size: Annotated[str | None, typer.Option(
        help="Patch size, e.g. 32,32,32 (3D) or 64,64 (2D). Default: from the task plan.")] = None,
    optimizer: Annotated[str | None, typer.Option(
        help="adamw (cosine) or sgd (Nesterov 0.99, poly). Default: adamw.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate. Default: 3e-3 adamw, 1e-2 sgd.")] = None,
    pretrained: Annotated[bool | None, typer.Option(
        "--pretrained/--no-pretrained",
        help="2D: ImageNet encoder weights; they must already be on this machine.")] = None,
    class_weights: Annotated[str | None, typer.Option(
        help="Loss class weights, one per class, background first, e.g. 0.5,1,2.")] = None,
    tta: Annotated[bool | None, typer.Option(
        "--tta/--no-tta", help="Evaluate with mirroring test-time augmentation (part of the run id).")] \
        = None,
    postprocess: Annotated[bool | None, typer.Option(
        "--postprocess/--no-postprocess",
        help="Largest-component postprocessing decided on the held-out fold as nnU-Net v2 decides it (the "
             "whole foreground, then each label or region where it helps); the steps and their mean Dice in "
             "postprocessing.json.")] = None,
    results_dir: Annotated[Path, typer.Option(help="Where run folders go.")] = Path("results"),
    data_dir: Annotated[Path | None, typer.Option(help="Data folder. Default: $MEDSEG_BENCH_HOME/data.")] \
        = None,
    workers: Annotated[int | None, typer.Option(
        help="DataLoader workers per run. Default: 1 with augmentation on CPU, else 0; GPU: up to 8.",
    )] = None,
    jobs: Annotated[int, typer.Option(help="Local launcher: runs in parallel (one per GPU; CPU threads are "
                                           "divided between them).")] = 1,
    launcher: Annotated[str, typer.Option(help="local or slurm.")] = "local",
    partition: Annotated[str | None, typer.Option(help="SLURM partition.")] = None,
    gpus_per_job: Annotated[int, typer.Option(help="SLURM: GPUs per job.")] = 0,
    cpus_per_job: Annotated[int, typer.Option(help="SLURM: CPUs per job.")] = 4,
    mem_gb: Annotated[float, typer.Option(help="SLURM: memory per job in GB.")] = 16.0,
    time: Annotated[str, typer.Option("--time", help="SLURM: time limit per job, as sbatch's --time "
                                                     "(HH:MM:SS, D-HH:MM:SS, minutes, MM:SS); a job that "
                                                     "hits it is requeued and resumes.")] = "12:00:00",
    array_parallelism: Annotated[int, typer.Option(help="SLURM: most array jobs running at once.")] = 64,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed run.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the expanded runs, their state and the estimated cost; train nothing.")] \
        = False,
) -> None:
    """Train every combination of the axes and evaluate each on its held-out fold.

    Finished runs (same spec, same run id) are skipped; an interrupted run resumes from its last checkpoint.
    """
    from medseg_bench.sweep.expand import expand
    from medseg_bench.sweep.spec_file import build_request, load_sweep_file

    if launcher not in LAUNCHERS:
        from medseg_bench.registry import choice_hint

        raise UsageError(f"unknown launcher '{launcher}'; {choice_hint(launcher, LAUNCHERS)}")
    from medseg_bench.cli import MAX_PROCESSES, check_range, comma_list

    check_range("--jobs", jobs, 1, MAX_PROCESSES)
    check_range("--workers", workers, 0, MAX_PROCESSES)
    overrides: dict[str, Any] = {
        "tasks": comma_list("--task", task), "archs": comma_list("--arch", arch),
        "losses": comma_list("--loss", loss), "augs": comma_list("--aug", aug),
        "targets": comma_list("--target", target),
        "dims": comma_list("--dims", dims), "encoders": comma_list("--encoder", encoder),
        "folds": _ints(folds, "--folds"),
        "seeds": _ints(seed, "--seed"), "num_folds": num_folds, "epochs": epochs, "max_minutes": max_minutes,
        "iters_per_epoch": iters_per_epoch, "batch_size": batch_size, "optimizer": optimizer, "lr": lr,
        "patch_size": tuple(_ints(patch_size, "--patch-size") or []) or None, "exclude": exclude or [],
        "pretrained": pretrained, "class_weights": _floats(class_weights, "--class-weights"), "tta": tta,
        "postprocess": postprocess}
    if launcher == "local":  # given to the local launcher, a SLURM option would be lost without a word
        import inspect

        defaults = inspect.signature(sweep).parameters
        slurm = {"partition": partition, "gpus_per_job": gpus_per_job, "cpus_per_job": cpus_per_job,
                 "mem_gb": mem_gb, "time": time, "array_parallelism": array_parallelism}
        given = [f"--{name.replace('_', '-')}" for name, value in slurm.items()
                 if value != defaults[name].default]
        if given:
            typer.echo(f"{', '.join(given)}: for SLURM only, unused by the local launcher (--launcher slurm "
                       "submits to SLURM)")
    request = build_request(load_sweep_file(config) if config else {}, overrides)
    runs, skipped = expand(request)
    for line in skipped:
        typer.echo(line)
    from medseg_bench.settings import get_settings

    data = data_dir or get_settings().data_dir
    if dry_run:
        if launcher == "slurm":  # what the submission refuses before any work, the dry run too (it exited 0)
            _slurm_options(results_dir, partition, time, gpus_per_job, cpus_per_job, mem_gb,
                           array_parallelism, workers)
            from medseg_bench.sweep.job_files import check_job_folder, check_private_results

            # a results dir others can write to, or a RESULTS/.slurm not yours: exit 6 (0 until 2026-12-04)
            check_private_results(results_dir, lambda line: print_coloured(line, "yellow"))
            check_job_folder(results_dir)
            from medseg_bench.sweep.slurm import partition_problem

            unknown = partition_problem(partition)
            if unknown:
                raise UsageError(unknown)
        from medseg_bench.results import check_writable
        from medseg_bench.sweep.dry_run import dry_run_lines

        check_writable(results_dir, make=False)  # as the sweep begins, both launchers: exit 6
        planned = dry_run_lines(runs, results_dir, data, launcher, fail_fast)
        for line in planned.lines:
            typer.echo(line)
        if planned.exit_code:  # what the sweep would end with (a stop, runs it fails): said above
            from medseg_bench.cli.app import print_error

            print_error(planned.verdict)
            raise typer.Exit(planned.exit_code)
        return
    import signal

    from medseg_bench import signals
    with signals.interruptible():  # SIGTERM stops the sweep the way Ctrl-C does
        try:
            if launcher == "slurm":
                _submit(runs, results_dir, data, partition, time, gpus_per_job, cpus_per_job, mem_gb,
                        array_parallelism, workers, fail_fast)
                return
            from medseg_bench.progress import make_reporter
            from medseg_bench.sweep.local import run_sweep

            run_sweep(runs, results_dir, data, make_reporter(), fail_fast, workers, jobs)
        except BaseException as exc:
            if not signals.is_stop(exc):  # Ctrl-C or SIGTERM, however it surfaced (see signals.is_stop)
                raise
            signum = signals.received()
            from medseg_bench.errors import Interrupted

            stop = Interrupted(f"sweep interrupted ({signal.Signals(signum or signal.SIGINT).name}): "
                               "finished runs are kept; rerun the same command to resume the others",
                               signum or signal.SIGINT)
            if signum is None:
                raise stop from None
            from medseg_bench.cli.app import print_error

            print_error(str(stop))  # as the app prints every error
            signals.exit_now(stop.exit_code)


def _slurm_options(results_dir: Path, partition: str | None, time: str, gpus_per_job: int,
                   cpus_per_job: int, mem_gb: float, array_parallelism: int, workers: int | None) -> Any:
    """The SLURM options, checked (UsageError for a value sbatch would refuse or misread, as for a results
    dir that cannot go into the job script), as `SlurmOptions`."""
    try:
        from medseg_bench.sweep.slurm import SlurmOptions, script_value
    except ModuleNotFoundError as exc:
        if exc.name != "submitit":
            raise  # a broken install of our own: its traceback, not advice that would not help
        raise UsageError("--launcher slurm needs submitit: pip install submitit (in a checkout: pip install "
                         "-e '.[slurm]')") from None
    options = SlurmOptions(partition=partition, time=time, gpus_per_job=gpus_per_job,
                           cpus_per_job=cpus_per_job, mem_gb=mem_gb, array_parallelism=array_parallelism,
                           num_workers=workers)
    options.check()  # a bad value fails before any work
    script_value("--results-dir", str(results_dir.resolve()))
    return options


def _submit(runs: list[Any], results_dir: Path, data_dir: Path, partition: str | None, time: str,
            gpus_per_job: int, cpus_per_job: int, mem_gb: float, array_parallelism: int,
            workers: int | None, fail_fast: bool = False) -> None:
    options = _slurm_options(results_dir, partition, time, gpus_per_job, cpus_per_job, mem_gb,
                             array_parallelism, workers)
    import shutil

    from medseg_bench.results import check_run_folders, check_writable
    from medseg_bench.sweep.job_files import check_private_results
    from medseg_bench.sweep.local import prepare_tasks
    from medseg_bench.sweep.slurm import submit

    if shutil.which("sbatch") is None:  # before the cache is built: submitit would fail after it
        raise UsageError("--launcher slurm: no SLURM client here (sbatch is not on PATH); run on a login "
                         "node of the cluster, or use the local launcher")
    from medseg_bench.sweep.slurm import partition_problem

    unknown = partition_problem(options.partition)  # sbatch refused it only after the caches were built
    if unknown:
        raise UsageError(unknown)
    check_writable(results_dir)
    # others who can write to it could run code as your jobs: refused, or a warning
    check_private_results(results_dir, lambda line: print_coloured(line, "yellow"))
    check_run_folders(results_dir, runs)  # before the cache is built, as the local sweep does

    def prepare(todo: list[Any]) -> None:  # the caches of the runs left to submit, once it is known which
        prepare_tasks(todo, data_dir, typer.echo, " before submitting")

    summary = submit(runs, results_dir, data_dir, options, say=typer.echo, prepare=prepare,
                     fail_fast=fail_fast)
    if summary.jobs:
        count = len(summary.jobs)
        typer.echo(f"{count} job{'' if count == 1 else 's'} submitted; follow them with "
                   f"`medseg-bench status --results-dir {shlex.quote(str(results_dir))}`")
    from medseg_bench.finished import damaged_runs_error

    damaged = damaged_runs_error(summary.damaged, "not submitted") if summary.damaged else None
    if summary.failed:  # as the local sweep ends: exit 5 names the failed runs, a line names the damaged ones
        from medseg_bench.errors import RunError
        from medseg_bench.results import warn_on_stderr

        if damaged is not None:
            warn_on_stderr(str(damaged))
        of = f"{len(runs)} run{'' if len(runs) == 1 else 's'}"
        raise RunError(f"{len(summary.failed)} of {of} failed: {', '.join(summary.failed)}")
    if damaged is not None:
        raise damaged
