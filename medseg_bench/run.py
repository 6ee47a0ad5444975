"""One run, start to finish: record the spec, train (or resume), evaluate the held-out fold, write results.

Status goes pending -> running -> done | failed; `metrics.csv` and `summary.json` are written (atomically)
before the status says done, so a finished run is never half-written.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medseg_bench.checkpoints import load_weights
from medseg_bench.data.preprocess import PreparedTask, load_case, source_digest, stored_orientation
from medseg_bench.errors import RunError, first_line
from medseg_bench.files import write_csv_atomic, write_json_atomic
from medseg_bench.provenance import write_environment
from medseg_bench.regions import recorded_labels, recorded_regions, task_region_labels
from medseg_bench.results import SETUP_NAME
from medseg_bench.run_folder import SPILL_NAME, write_status
from medseg_bench.signals import caused_by_stop, stop_reason
from medseg_bench.spec import RunSpec
from medseg_bench.training import (
    EpochReporter,
    TrainingFailed,
    build_network,
    network_spacing,
    resolve_patch_and_batch,
    run_slice_axis,
    run_tta,
    train,
)
from medseg_bench.training_log import save_learning_curves

log = logging.getLogger("medseg_bench.run")


PREDICTIONS = "predictions"


def evaluate_fold(net: Any, spec: RunSpec, prepared: PreparedTask, device: str, tta: bool | None = None,
                  save_to: Path | None = None, spill_to: Path | None = None):
    """Full-volume predictions on the fold's held-out cases, scored per case and label (a DataFrame).

    `tta`: mirroring test-time augmentation, by default as the spec says (`training.run_tta`).

    A run with `target: regions` predicts each region's sigmoid and paints the regions into a label map
    (`regions.py`); it is scored from that label map exactly as a label run is, its labels and regions.

    With `spec.postprocess`, largest-component postprocessing is decided on these cases as nnU-Net v2 decides
    it (on the task's regions where it has any; per label for runs of pipeline version 13 and older:
    `postprocess.decide_as`) and the scores are of the decided predictions; the decision is in
    `frame.attrs["postprocessing"]`. As nnU-Net, it decides from the cases on disk, one held at a time: each
    case's prediction and label map are written to `spill_to` (a temporary folder where None; emptied first,
    removed at the end: `case_spill.spill_folder`) and read back for each step tried, then for its score.
    With `save_to`, each scored prediction is written there as `<case>.nii.gz` in its label file's geometry
    (nnU-Net's `fold_k/validation/`): `medseg-bench evaluate` on that folder gives the same scores.
    """
    import pandas as pd

    from medseg_bench.case_spill import SpilledArrays, spill_folder
    from medseg_bench.checks import release_freed_memory, usable_memory
    from medseg_bench.data.io import write_label
    from medseg_bench.data.preprocess import original_label
    from medseg_bench.inference import predict_probabilities, to_label_map
    from medseg_bench.inference_memory import check_held_out
    from medseg_bench.metrics import MetricSettings, evaluate_case
    from medseg_bench.postprocess import apply_postprocessing, decide_as

    task = prepared.task
    patch, _ = resolve_patch_and_batch(spec, prepared)
    paint = task_region_labels(task) if spec.target == "regions" else None
    settings = MetricSettings(nsd_tolerance_mm=spec.nsd_tolerance_mm or task.nsd_tolerance_mm)
    rows: list[dict[str, Any]] = []

    def score(case_id: str, pred: np.ndarray, label: np.ndarray, geometry: Any) -> None:
        if save_to is not None:
            write_label(pred, geometry, save_to / f"{case_id}.nii.gz")
        for row in evaluate_case(pred, label, geometry.spacing_zyx, task.foreground_labels, settings,
                                 regions=task.regions or None):
            rows.append({"case": case_id, **row})

    slice_axis = run_slice_axis(spec, network_spacing(prepared))
    tta = run_tta(spec, tta)
    release_freed_memory()  # what training freed: not counted as held against the cases' memory
    memory = usable_memory()

    def predict(case_id: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """The case's prediction, original label map and geometry; its image and probabilities let go before
        the label map is read (reading it holds several times its voxels: `inference_memory`'s scoring)."""
        image, _, props = load_case(prepared.cache_for(spec.own_slice_spacing), case_id, mmap=False)
        # a case that cannot fit: a clear failure, not the kernel's kill (the sweep checked, a SLURM job not)
        check_held_out(spec, prepared, props, image.shape, device, memory)
        # Scored in the original image geometry against the original label (the cache is cropped/resampled).
        probs = predict_probabilities(net, image, spec.dims, patch, device, tta, slice_axis,
                                      spec.pipeline_version, regions=paint is not None)
        pred = to_label_map(probs, props, spec.pipeline_version, paint)
        del image, probs
        return (pred, *original_label(props))

    held_out = prepared.splits[spec.fold]["val"]
    decision = None
    if not spec.postprocess:
        for case_id in held_out:
            score(case_id, *predict(case_id))
    else:
        with spill_folder(spill_to) as folder:
            preds, labels = SpilledArrays(folder / "predictions"), SpilledArrays(folder / "labels")
            geometries = []
            for case_id in held_out:
                pred, label, geometry = predict(case_id)
                preds.append(case_id, pred)
                labels.append(case_id, label)
                geometries.append(geometry)
                del pred, label  # before the next case is predicted
            decision = decide_as(spec.pipeline_version, preds, labels, task.foreground_labels,
                                 task.regions or None, SpilledArrays(folder / "postprocessed", held_out))
            for index, case_id in enumerate(held_out):  # each case read when scored, let go after
                score(case_id, apply_postprocessing(preds[index], decision.steps), labels[index],
                      geometries[index])
    frame = pd.DataFrame(rows)
    # the regions too, where the task has any: what a region's scores are of, and whether two runs' compare
    # (a list, as JSON files are written with sorted keys: the task file's order)
    regions = [{"name": name, "labels": list(labels)} for name, labels in task.regions.items()]
    frame.attrs["metric_settings"] = settings.to_dict() | ({"regions": regions} if regions else {})
    frame.attrs["postprocessing"] = decision
    return frame


class _RunLog(logging.FileHandler):
    """`run.log`. A line it cannot write (a full disk) is dropped without logging's traceback on stderr: the
    run's own error, which names the file it could not write, is what its line reports."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def summary_means(foreground: Any) -> dict[str, float]:
    """`summary.json`'s means of the headline metrics (Dice, Jaccard, HD95, NSD) over a run's foreground label
    rows, taken as the report takes them: each case's labels averaged, then the cases (NaN, both masks empty,
    left out at each step). Runs finished before 2026-12-01 have no NSD here."""
    from medseg_bench.metrics.info import HEADLINE_METRICS

    by_case = foreground.groupby("case")
    return {m: float(by_case[m].mean().mean()) for m in HEADLINE_METRICS if m in foreground}


def failure_text(exc: BaseException) -> str:
    """The line a failed run reports for `exc`: its message's first line; a file the system named; a
    MemoryError (numpy's names what it asked for, Python's often nothing: 'MemoryError: MemoryError') as
    out of memory, with what to lower."""
    if isinstance(exc, MemoryError):
        asked = first_line(exc) if str(exc).strip() else "an allocation failed"
        return f"out of memory ({asked}): lower --batch-size or --patch-size"
    message = first_line(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{message}: {exc.filename}"
    return message


class RunReporter(EpochReporter, Protocol):
    """What a run tells of its progress: each epoch (`EpochReporter`), then that its training is over and
    its evaluation (predicting and scoring the held-out cases) begins: a stop after it is one while
    evaluating."""

    def evaluating(self, run_id: str) -> None: ...


def execute_run(spec: RunSpec, prepared: PreparedTask, folder: Path, reporter: RunReporter | None = None,
                num_workers: int = 0, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run `spec` in `folder` (resuming from its last checkpoint); returns the summary. Raises RunError.
    `env`: the attempt's `provenance.environment()`, as its event recorded it, for env.json (read anew when
    None)."""
    folder.mkdir(parents=True, exist_ok=True)
    handler = _RunLog(folder / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
        write_environment(folder, env)  # env.json, and source.diff where the checkout is dirty
        write_json_atomic(folder / "splits.json", prepared.splits[spec.fold])
        resuming = (folder / "checkpoints" / "last.ckpt").is_file()
        if not resuming or not (folder / SETUP_NAME).is_file():  # this training's: a resume is held to it
            patch, batch = resolve_patch_and_batch(spec, prepared)
            # the training images' orientation: predict warns about an image stored otherwise
            cache, split = prepared.cache_for(spec.own_slice_spacing), prepared.splits[spec.fold]
            orientation = stored_orientation(cache, split["train"])
            # the data's identity: its files' md5s, wherever the data dir lies (splits.json: each case's role)
            data = {"cases": len(split["train"]) + len(split["val"]),
                    "digest": source_digest(cache, [*split["train"], *split["val"]])}
            setup = {"patch_size": list(patch), "batch_size": batch,
                     "preprocessing": prepared.plan.preprocessing, "orientation": orientation, "data": data,
                     "labels": recorded_labels(prepared.task)}  # what its channels mean: predict checks
            if spec.target == "regions":  # its channels, in order: predict refuses a task file changed since
                setup["regions"] = recorded_regions(prepared.task)
            write_json_atomic(folder / SETUP_NAME, setup)
        write_status(folder, "running")
        log.info("run %s: training", spec.run_id)
        result = train(spec, prepared, folder, reporter, num_workers)
        if reporter is not None:
            reporter.evaluating(spec.run_id)
        save_learning_curves(folder)
        log.info("run %s: evaluating %d held-out cases", spec.run_id, len(prepared.splits[spec.fold]["val"]))
        net = load_weights(build_network(spec, prepared), folder / "checkpoints" / "last.ckpt")
        start = time.perf_counter()
        # Written under a temporary name, published whole: an attempt cut short leaves only the temporary one.
        partial = folder / f".{PREDICTIONS}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        frame = evaluate_fold(net, spec, prepared, result.device, save_to=partial,
                              spill_to=folder / SPILL_NAME)
        shutil.rmtree(folder / PREDICTIONS, ignore_errors=True)  # an attempt's killed before `done`
        partial.mkdir(exist_ok=True)
        partial.rename(folder / PREDICTIONS)
        eval_time_s = time.perf_counter() - start  # scoring and writing the predictions
        write_csv_atomic(frame, folder / "metrics.csv")
        decision = frame.attrs.get("postprocessing")
        if decision is not None:
            from medseg_bench.postprocess import save_decision

            save_decision(decision, folder)  # before summary.json: `predict` applies it
        fg = frame[frame["label"].astype(str).isin([str(v) for v in prepared.task.foreground_labels])]
        summary = {
            "run_id": spec.run_id,
            "mean": summary_means(fg),
            "per_label_dice": {str(k): float(v) for k, v in frame.groupby("label")["dice"].mean().items()},
            "num_cases": int(frame["case"].nunique()),
            "metric_settings": frame.attrs.get("metric_settings", {}),
            "cost": {
                "params": result.params,
                "train_time_s": result.train_time_s,
                "first_step_at": result.first_step_at,
                "eval_time_s": eval_time_s,
                "epochs_done": result.epochs_done,
                "resumed_at_epoch": result.resumed_at_epoch,
                "time_per_epoch_s": float(np.mean(result.epoch_times_s)) if result.epoch_times_s else None,
                "epoch_times_s": [round(t, 4) for t in result.epoch_times_s],  # every attempt's epochs
                "peak_memory_mb": result.peak_memory_mb,
                "device": result.device,
            },
            "plan": prepared.plan.to_dict(),
            "tta": run_tta(spec),  # what the evaluation did
            # The steps applied, in order, and the mean Dice before and after each tried (postprocess.py).
            "postprocessing": decision.to_dict() if decision is not None else None,
        }
        write_json_atomic(folder / "summary.json", summary)
        write_status(folder, "done")
        log.info("run %s: done, mean foreground Dice %.4f", spec.run_id,
                 summary["mean"].get("dice", float("nan")))
        return summary
    except BaseException as exc:
        message = failure_text(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) or caused_by_stop(exc):  # not failed: it resumes
            log.warning("run %s interrupted (%s): it resumes when run again", spec.run_id,
                        stop_reason(exc))
            if isinstance(exc, Exception):  # raised while the signal's KeyboardInterrupt unwound
                raise KeyboardInterrupt(stop_reason(exc)) from exc
        else:
            log.error("run %s failed: %s\n%s", spec.run_id, message, traceback.format_exc())
            # the exception's type, where it says more than the line does (not 'MemoryError: out of memory')
            error = message if isinstance(exc, MemoryError | TrainingFailed) else (
                f"{type(exc).__name__}: {message}")
            try:
                write_status(folder, "failed", error=error)
            except OSError:
                pass
        if isinstance(exc, Exception):
            raise RunError(f"run {spec.run_id} failed: {message} (log: {folder / 'run.log'})") from exc
        raise
    finally:
        root.removeHandler(handler)
        try:
            handler.close()
        except OSError:  # a full disk: the run's own error (or result) matters more than its log's last flush
            pass
