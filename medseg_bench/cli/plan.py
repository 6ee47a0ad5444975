"""`medseg-bench plan TASK`: show (and optionally re-size) the task's plan, derived from its fingerprint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from medseg_bench.data.plan import Plan

# Far above any accelerator's memory: a larger value is a typo (or `inf`), and would overflow the sizes.
MAX_GPU_MEMORY_GB = 10_000.0
MIN_GPU_MEMORY_GB = 0.5


def plan(
    task: Annotated[str, typer.Argument(
        metavar="TASK", help="Task name, e.g. Task04_Hippocampus (fetched first).")],
    gpu_memory_gb: Annotated[
        float | None,
        typer.Option(
            help=f"Re-size patches and batches for a GPU with this much memory ({MIN_GPU_MEMORY_GB:g} to "
            f"{MAX_GPU_MEMORY_GB:g}) and save the plan. "
            "Default: keep plan.json; a new plan is sized for 8 GB when an NVIDIA GPU is present, "
            "else for the CPU.",
        ),
    ] = None,
    cpu: Annotated[
        bool, typer.Option("--cpu", help="Re-size patches and batches for CPU training and save.")
    ] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder. Default: $MEDSEG_BENCH_HOME/data.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print plan.json as it is stored.")] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes for the fingerprint. Default: cores, at most 8 and the cases."),
    ] = None,
) -> None:
    """Print the plan: target spacing, normalisation, 2D/3D patch and batch sizes, and its fingerprint.

    The plan lives in DATA_DIR/preprocessed/TASK/plan.json; edit it to override (patch or batch sizes apply to
    the next runs; a new target spacing or normalisation builds a new cache), or set --patch-size /
    --batch-size in a sweep.
    """
    from rich.console import Console
    from rich.table import Table

    from medseg_bench.cli import MAX_PROCESSES, check_range

    check_range("--workers", workers, 1, MAX_PROCESSES)
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.plan import CPU_BUDGET, gpu_budget, load_or_make_fingerprint, load_or_make_plan
    from medseg_bench.data.preprocess import excluded_cases, task_lock, usable_cases
    from medseg_bench.errors import UsageError
    from medseg_bench.settings import get_settings

    if cpu and gpu_memory_gb is not None:
        raise UsageError("--cpu and --gpu-memory-gb exclude each other")
    if gpu_memory_gb is not None and not MIN_GPU_MEMORY_GB <= gpu_memory_gb <= MAX_GPU_MEMORY_GB:  # NaN too
        raise UsageError(f"--gpu-memory-gb must be a number of GB from {MIN_GPU_MEMORY_GB:g} to "
                         f"{MAX_GPU_MEMORY_GB:g}, not {gpu_memory_gb:g}")
    spec = get_task(task)
    data = data_dir or get_settings().data_dir
    cases = usable_cases(spec, data)
    excluded = excluded_cases(data / spec.name)
    root = data / "preprocessed" / spec.name
    console = Console(stderr=True, highlight=False)
    budget = CPU_BUDGET if cpu else gpu_budget(gpu_memory_gb) if gpu_memory_gb is not None else None
    # the lock a sweep builds the task under; a line on stderr where another process holds it
    with task_lock(spec.name, data, lambda line: console.print(line, markup=False)):
        result = load_or_make_plan(spec, cases, root, budget, workers, progress=console.is_terminal)
        # the fingerprint the plan was made from, even in an older format
        fp = None if as_json else load_or_make_fingerprint(spec, cases, root, workers, any_format=True)
    if fp is None:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    from rich.markup import escape

    from medseg_bench.progress import StdoutConsole

    out = StdoutConsole(highlight=False)  # `plan | head`: 141 as `cat`, not rich's exit 1
    table = Table(title=escape(f"plan of {spec.name} ({root / 'plan.json'})"), show_header=False)
    table.add_column("key")
    table.add_column("value")

    def fmt(values: tuple) -> str:
        return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    table.add_row("cases", f"{fp['num_cases']}" + (f" ({len(excluded)} excluded)" if excluded else ""))
    table.add_row("median spacing (z, y, x) mm", fmt(result.median_spacing))
    table.add_row("target spacing (z, y, x) mm", fmt(result.target_spacing))
    table.add_row("crop to non-zero region", "yes" if result.crop_to_nonzero else "no")
    table.add_row("median shape in the cache", fmt(result.median_shape))
    # its paths and file names are the user's: "[old]" in one is no markup
    table.add_row("memory to preprocess", escape(_memory_text(cases, result, root, workers)))
    if result.channel_normalization is None:  # a plan made before pipeline version 5: one for all channels
        schemes = [{"scheme": "zscore", "nonzero_mask": None} if result.normalization == "zscore" else
                   {"scheme": "ct", "clip": result.ct_clip, "mean": result.ct_mean, "std": result.ct_std}]
        channels = ["all channels"]
    else:
        schemes, channels = list(result.channel_normalization), list(spec.modalities)
    for channel, scheme in zip(channels, schemes, strict=False):
        table.add_row(f"normalisation, {channel}", _scheme_text(scheme))
    table.add_row("sized for", result.budget)
    table.add_row("3D patch, batch", f"{fmt(result.patch_3d)}, batch {result.batch_3d}")
    table.add_row("2D patch, batch", f"{fmt(result.patch_2d)}, batch {result.batch_2d}")
    for stats in fp["foreground_intensity"]:
        table.add_row(
            f"foreground intensity, {stats['modality']}",
            f"mean {stats['mean']:.4g}, std {stats['std']:.4g}, "
            f"0.5-99.5% [{stats['p00_5']:.4g}, {stats['p99_5']:.4g}]" if stats.get("sampled", True)
            else "not sampled (z-scored per case with its own statistics)",
        )
    for value, cls in fp["class_frequencies"].items():
        table.add_row(
            f"class {value} ({cls['name']})",
            f"{100 * cls['voxel_fraction']:.3g}% of voxels, in {cls['cases_present']} "
            f"case{'' if cls['cases_present'] == 1 else 's'}",
        )
    out.print(table)


def _memory_text(cases: list, plan: Plan, root: Path, workers: int | None) -> str:
    """What the cache build counts a case to need at most (`preprocess_memory.peak_bytes`), the largest, and
    how many cases it preprocesses at once within the memory this process may use."""
    from medseg_bench.checks import usable_memory
    from medseg_bench.data.io import sitk_module
    from medseg_bench.data.parallel import default_workers
    from medseg_bench.data.preprocess import case_sizes
    from medseg_bench.data.preprocess_memory import cases_at_once, least_bytes, peak_bytes
    from medseg_bench.errors import DataError

    sizes = case_sizes(cases, plan, root)
    if not sizes:
        return "not known (no fingerprint of these cases)"
    largest = max(sizes, key=peak_bytes)
    text = f"at most {peak_bytes(largest) / 2**30:.3g} GiB a case (the largest, {largest.image.name})"
    sitk_module()  # as the cache build maps it before it counts what the process holds
    memory = usable_memory()
    if memory is None:
        return text
    try:
        at_once = cases_at_once(sizes, workers or default_workers(len(cases)), memory, root / "plan.json")
    except DataError as exc:
        return f"{text}; cannot be built here: {exc}"
    if not memory.per_process:
        return f"{text}; {at_once} at once within {memory}"
    # `ulimit -v` bounds each worker alone; how many at once, the limit they share (where one is known). A
    # case is held to it by what it certainly needs (`least_bytes`), below the upper estimate shown first:
    # "at most 2.36 GiB a case ..., each case within the 0.95 GiB limit" read as a contradiction
    shared = f"within {memory.shared}" if memory.shared is not None else "(no limit they share known)"
    least = max(least_bytes(size) for size in sizes)
    return (f"{text}; {at_once} at once {shared}; each case needs at least {least / 2**30:.3g} GiB, within "
            f"{memory}")


def _scheme_text(scheme: dict) -> str:
    if scheme["scheme"] == "ct":
        low, high = scheme["clip"]
        return (f"CT: clip to [{low:.1f}, {high:.1f}], z-score with foreground mean {scheme['mean']:.1f}, "
                f"std {scheme['std']:.1f}")
    mask = {True: " within the non-zero mask", False: "", None: " (within the non-zero mask if under 3/4 of "
            "the case)"}[scheme["nonzero_mask"]]
    return f"per-case z-score{mask}"
