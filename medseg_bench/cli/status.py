"""`medseg-bench status`: what every run under a results dir is doing, from the run folders (and squeue)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medseg_bench.cli import print_coloured


def status(
    results_dir: Annotated[Path, typer.Option(help="The sweep's results dir.")] = Path("results"),
    task: Annotated[list[str] | None, typer.Option(
        metavar="TASK,...", help="Only these tasks (repeat or comma-separate, as sweep's --task).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the counts.")] = False,
) -> None:
    """Queued, running, partial (interrupted, resumes), pending, done, failed and damaged (finished, a file
    lost since) runs, one line each."""
    from collections import Counter

    from medseg_bench.errors import ResultsError, one_line
    from medseg_bench.finished import FinishedReads
    from medseg_bench.results import (
        checked_state,
        index_not_rebuilt,
        not_a_run,
        require_results_dir,
        task_folder_hint,
        warn_on_stderr,
        write_index,
    )
    from medseg_bench.run_folder import read_json, read_status, unqueued_state, unrecorded_end

    require_results_dir(results_dir)
    from medseg_bench.cli import comma_list

    wanted = comma_list("--task", task) or ["*"]
    folders = sorted({p.parent for glob in wanted
                      for name in ("spec.json", "queued.json", "status.json", "summary.json")
                      for p in results_dir.glob(f"{glob}/*/{name}")})
    # a stray folder holding a spec.json was counted as a pending run, that no sweep trains, no report reads
    strays = {folder: why for folder in folders if (why := not_a_run(folder))}
    for why in strays.values():
        warn_on_stderr(f"{why}: not counted as a run")
    folders = [folder for folder in folders if folder not in strays]
    if not folders and task:
        from medseg_bench.data.catalog import task_registry

        known = [task_registry().canonical(name) for name in wanted]  # an unknown name: did-you-mean, exit 2
        tasks = sorted({p.parent.parent.name for p in results_dir.glob("*/*/spec.json")})
        raise ResultsError(f"{results_dir}: no runs of {', '.join(known)} here"
                           + (f" (runs of: {', '.join(tasks)})" if tasks else task_folder_hint(results_dir)))
    if not folders:
        raise ResultsError(f"{results_dir}: no runs here{task_folder_hint(results_dir)}")
    jobs = {f: read_json(f / "queued.json").get("job_id") for f in folders}
    slurm = _slurm_states([j for j in jobs.values() if j])  # asked before the folders are read
    counts: Counter[str] = Counter()
    reads = FinishedReads()  # each finished run read once, for its line and the index
    named: list[str] = []  # damage said on a run's line (not with --quiet, where the warning is all)
    for folder in folders:
        state, damage = checked_state(folder, reads)
        job = jobs[folder]
        extra = ""
        if job:
            extra = f"  job {job}" + (f" ({slurm[job]})" if slurm and job in slurm else "")
        if state == "queued" and job and slurm is not None and job not in slurm:
            # its job ended, or was cancelled, before the run began: nothing will run it
            state = unqueued_state(folder)
            logs = sorted((results_dir / ".slurm" / job).glob("*_log.err"))  # submitit's, where errors go
            extra += " left the queue without starting the run" + (f" (its log: {logs[0]})" if logs else "")
        counts[state] += 1
        if quiet:
            continue
        if state == "running":
            beat = read_json(folder / "heartbeat.json")
            if beat.get("epoch"):  # a heartbeat is only ever shown: a value it cannot be is shown as such
                loss = beat.get("loss")
                shown = f"{loss:.4f}" if isinstance(loss, int | float) and not isinstance(loss, bool) else "?"
                extra += f"  epoch {beat['epoch']}/{beat.get('epochs')} loss {shown}"
            if beat.get("stage") == "evaluating":  # trained: predicting and scoring its held-out cases
                extra += "  evaluating"
        if state == "queued" and read_status(folder).get("state") == "failed":
            extra += "  retries a failed run"
        elif state == "queued" and (folder / "checkpoints" / "last.ckpt").is_file():
            extra += "  resumes from its checkpoint"
        if state == "failed":
            extra += f"  {read_status(folder).get('error', '')}"
        if state in ("partial", "pending") and unrecorded_end(folder):
            extra += ("  its last attempt ended without a record: its process was killed (kill -9, the "
                      "out-of-memory killer: see `dmesg`, or its SLURM job's end)")
        if state == "damaged":
            extra += f"  {damage}"
            named.append(str(damage))  # said on its line: the index rebuild's warning does not say it again
        typer.echo(one_line(f"{state:8s} {folder.parent.name}/{folder.name}{extra}"))  # names from the folder
    runs_word = "run" if len(folders) == 1 else "runs"  # as `sweep --dry-run` counts them
    typer.echo(f"{len(folders)} {runs_word}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    if counts["done"]:
        try:
            write_index(results_dir, reads=reads, named=named)
        except OSError as exc:  # a read-only results dir, a full disk: its answer above stands, as it was
            warn_on_stderr(index_not_rebuilt(results_dir, exc))


def _slurm_states(job_ids: list[str]) -> dict[str, str] | None:
    """squeue's state of the jobs still in the queue; None where it cannot say (no SLURM here: said only
    when squeue is on PATH and fails)."""
    import shutil

    if not job_ids or shutil.which("squeue") is None:
        return None
    try:
        from medseg_bench.sweep.slurm import squeue_states
    except ImportError:  # no submitit
        return None
    from medseg_bench.errors import RunError

    try:
        return squeue_states(job_ids)
    except RunError as exc:
        print_coloured(f"warning: {exc}: the SLURM state of queued runs is unknown", "yellow")
        return None
