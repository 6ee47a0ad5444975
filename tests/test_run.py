"""What a finished run records about its scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg_bench.run import summary_means


def test_summary_means_are_the_reports_case_means() -> None:
    # case a: 0.9 and 0.5; case b: 0.9 and both masks empty (NaN). The report's mean is (0.7 + 0.9) / 2 = 0.8;
    # pooling the three label rows would give 0.7667.
    rows = pd.DataFrame({"case": ["a", "a", "b", "b"], "label": [1, 2, 1, 2],
                         "dice": [0.9, 0.5, 0.9, float("nan")], "hd95": [1.0, 3.0, 2.0, float("nan")]})
    assert summary_means(rows) == {"dice": pytest.approx(0.8), "hd95": pytest.approx(2.0)}


def test_summary_means_hold_every_headline_metric_nsd_included() -> None:
    # NSD, a headline metric of metrics.csv and the report, was left out of summary.json's means
    nan = float("nan")
    rows = pd.DataFrame({"case": ["a", "a", "b", "b"], "label": [1, 2, 1, 2], "dice": [0.9, 0.5, 0.9, nan],
                         "jaccard": [0.8, 0.4, 0.8, nan], "hd95": [1.0, 3.0, 2.0, nan],
                         "nsd": [1.0, 0.6, 0.5, nan], "precision": [0.9, 0.9, 0.9, nan]})
    assert summary_means(rows) == {"dice": pytest.approx(0.8), "jaccard": pytest.approx(0.7),
                                   "hd95": pytest.approx(2.0), "nsd": pytest.approx((0.8 + 0.5) / 2)}


def test_a_run_log_line_that_cannot_be_written_prints_no_traceback(tmp_path, capsys) -> None:
    import errno
    import logging

    from medseg_bench.run import _RunLog

    class _FullStream:
        def write(self, text: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

    handler = _RunLog(tmp_path / "run.log", delay=True)
    handler.stream = _FullStream()  # type: ignore[assignment]
    log = logging.getLogger("medseg_bench.test_run_log")
    log.addHandler(handler)
    try:
        log.error("a line on a full disk")
    finally:
        log.removeHandler(handler)
    assert "Logging error" not in capsys.readouterr().err


def test_a_2d_run_on_thick_slices_trains_and_is_scored_at_each_cases_slice_spacing(home, tmp_path) -> None:
    """Pipeline version 11, as nnU-Net's 2d configuration: on slices of 2-5 mm (the plan's 2.3 mm) a 2D run
    reads the cache that keeps each case's slices; its held-out predictions are on the original grids, and
    `predict` on the raw images (which preprocesses them the same way) gives them again exactly."""
    import json
    import shutil

    import numpy as np
    from typer.testing import CliRunner

    from medseg_bench.cli.app import app
    from medseg_bench.data.io import read_label
    from tests.conftest import make_anisotropic_ct_task, write_task_file

    runner = CliRunner()
    write_task_file(home, "Task93_Aniso", ct=True)
    src = make_anisotropic_ct_task(tmp_path / "src" / "Task93_Aniso")
    assert runner.invoke(app, ["fetch", "Task93_Aniso", "--source", str(src)]).exit_code == 0
    results = tmp_path / "results"
    sweep = runner.invoke(app, ["sweep", "--task", "Task93_Aniso", "--dims", "2d", "--arch", "unet", "--loss",
                                "dice_ce", "--aug", "none", "--epochs", "1", "--iters-per-epoch", "2",
                                "--batch-size", "2", "--num-folds", "2", "--results-dir", str(results)])
    assert sweep.exit_code == 0, sweep.output
    assert "cache; for 2D runs, each case at its own slice spacing where that differs" in sweep.output
    caches = sorted(p.name for p in (home / "data" / "preprocessed" / "Task93_Aniso").iterdir() if p.is_dir())
    assert len(caches) == 2 and caches[1] == f"{caches[0]}-2d"
    (run,) = (results / "Task93_Aniso").iterdir()
    held_out = json.loads((run / "splits.json").read_text())["val"]
    images = tmp_path / "held_out"
    images.mkdir()
    for case in held_out:
        shutil.copy(src / "imagesTr" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    out = tmp_path / "p"
    predicted = runner.invoke(app, ["predict", str(run), "--images", str(images), "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    for case in held_out:
        scored, _ = read_label(run / "predictions" / f"{case}.nii.gz")
        assert scored.shape == read_label(src / "labelsTr" / f"{case}.nii.gz")[0].shape
        assert np.array_equal(read_label(out / f"{case}.nii.gz")[0], scored)


def test_a_runs_metric_settings_record_its_tasks_regions_and_the_report_shows_them(home, tmp_path) -> None:
    """A region's scores mean what its labels were when the run was scored: the run records them with its
    metric settings (the report JSON's `metric_conventions`; runs of two definitions are flagged as not
    comparable), and every format's settings note shows them."""
    import json

    from typer.testing import CliRunner

    from medseg_bench.cli.app import app
    from tests.conftest import make_synthetic_task, write_task_file

    runner = CliRunner()
    task_file = write_task_file(home, "Task94_Regions")
    with task_file.open("a") as fh:  # not A-Z (yaml.safe_dump would sort them)
        fh.write("regions:\n  whole: [1, 2]\n  inner: [2]\n")
    src = make_synthetic_task(tmp_path / "src" / "Task94_Regions")
    assert runner.invoke(app, ["fetch", "Task94_Regions", "--source", str(src)]).exit_code == 0
    results = tmp_path / "results"
    sweep = runner.invoke(app, ["sweep", "--task", "Task94_Regions", "--dims", "3d", "--arch", "unet",
                                "--loss", "dice_ce", "--aug", "none", "--epochs", "1", "--iters-per-epoch",
                                "2", "--batch-size", "2", "--num-folds", "2", "--results-dir", str(results)])
    assert sweep.exit_code == 0, sweep.output
    (run,) = (results / "Task94_Regions").iterdir()
    settings = json.loads((run / "summary.json").read_text())["metric_settings"]
    assert settings["regions"] == [{"name": "whole", "labels": [1, 2]}, {"name": "inner", "labels": [2]}]
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "json"])
    assert report.exit_code == 0, report.output
    conventions = json.loads(report.stdout)["provenance"]["metric_conventions"]["Task94_Regions"]
    assert [c["regions"] for c in conventions] == [settings["regions"]]
    markdown = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "markdown"])
    assert "regions=(whole: 1+2; inner: 2), surface=" in markdown.stdout, markdown.stdout
    assert markdown.stdout.index("Dice whole") < markdown.stdout.index("Dice inner")  # the task file's order


def test_a_checkpoint_save_cut_by_sigterm_leaves_the_run_interrupted_not_failed(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen once in `make test-faults`: a sweep's SIGTERM landed while Lightning saved a checkpoint; torch's
    # zip writer raised RuntimeError in the KeyboardInterrupt's place, and the run was marked failed (a rerun
    # skipped it as failed) instead of interrupted (a rerun resumes it).
    import signal

    import medseg_bench.run as run_module
    from medseg_bench import signals
    from medseg_bench.results import run_dir
    from medseg_bench.run_folder import read_events, read_status
    from medseg_bench.spec import RunSpec
    from medseg_bench.sweep import worker
    from tests.conftest import save_cut_by_signal, stand_in_task

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    prepared = stand_in_task(tmp_path, monkeypatch)
    monkeypatch.setattr(run_module, "train", lambda *args: save_cut_by_signal(signal.SIGTERM))
    with pytest.raises(KeyboardInterrupt, match="SIGTERM") as stopped, signals.interruptible():
        worker.run_one(spec, prepared, tmp_path)  # type: ignore[arg-type]
    assert "unexpected pos" in str(stopped.value.__cause__)  # torch's error, kept as the cause
    folder = run_dir(tmp_path, spec)
    events = read_events(folder)
    assert [e["event"] for e in events] == ["start", "interrupted"] and events[-1]["reason"] == "SIGTERM"
    assert read_status(folder)["state"] == "running"  # as any interrupted run leaves it (not "failed")
    log = (folder / "run.log").read_text()
    assert "interrupted (SIGTERM): it resumes when run again" in log and "failed" not in log


@pytest.mark.parametrize(("raised", "asked"), [
    (MemoryError(), "an allocation failed"),  # Python's own: its line was 'MemoryError: MemoryError'
    (MemoryError("Unable to allocate 24.4 TiB for an array with shape (1, 40, 56, 3000000000)"),
     "Unable to allocate 24.4 TiB for an array with shape (1, 40, 56, 3000000000)"),
])
def test_a_run_out_of_memory_fails_saying_so_and_what_to_lower(
        tmp_path, monkeypatch: pytest.MonkeyPatch, raised: MemoryError, asked: str) -> None:

    import medseg_bench.run as run_module
    from medseg_bench.results import run_dir
    from medseg_bench.run_folder import read_status
    from medseg_bench.spec import RunSpec
    from medseg_bench.sweep import worker
    from tests.conftest import stand_in_task

    def out_of_memory(*args: object) -> None:
        raise raised

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", batch_size=100_000_000)
    prepared = stand_in_task(tmp_path, monkeypatch, batch=100_000_000)
    monkeypatch.setattr(run_module, "train", out_of_memory)
    outcome = worker.run_one(spec, prepared, tmp_path)  # type: ignore[arg-type]
    line = f"out of memory ({asked}): lower --batch-size or --patch-size"
    folder = run_dir(tmp_path, spec)
    assert outcome.kind == "failed" and outcome.error is not None
    assert outcome.error.startswith(f"run {spec.run_id} failed: {line} (log: ")
    assert read_status(folder)["state"] == "failed" and read_status(folder)["error"] == line


def test_a_run_of_a_dirty_checkout_keeps_its_change_beside_env_json(
        home, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`<commit>+dirty` alone: the code the run ran could not be recovered. Its diff is in the run folder, its
    sha256 in env.json, in the attempt's event and in the report's provenance."""
    import json

    from typer.testing import CliRunner

    from medseg_bench import provenance
    from medseg_bench.cli.app import app
    from medseg_bench.run_folder import read_events
    from tests.conftest import make_synthetic_task, write_task_file

    change = b"--- a/medseg_bench/losses.py\n+++ b/medseg_bench/losses.py\n-smooth = 1e-5\n+smooth = 1.0\n"
    code = provenance.CodeRecord("0123abc+dirty", provenance.SourceDiff(change, "d" * 64, len(change)))
    monkeypatch.setattr(provenance, "code_record", lambda: code)
    runner = CliRunner()
    write_task_file(home, "Task95_Dirty")
    src = make_synthetic_task(tmp_path / "src" / "Task95_Dirty")
    assert runner.invoke(app, ["fetch", "Task95_Dirty", "--source", str(src)]).exit_code == 0
    results = tmp_path / "results"
    sweep = runner.invoke(app, ["sweep", "--task", "Task95_Dirty", "--dims", "3d", "--arch", "unet",
                                "--loss", "dice_ce", "--aug", "none", "--epochs", "1", "--iters-per-epoch",
                                "1", "--batch-size", "2", "--num-folds", "2", "--results-dir", str(results)])
    assert sweep.exit_code == 0, sweep.output
    (run,) = (results / "Task95_Dirty").iterdir()
    recorded = {"file": "source.diff", "sha256": "d" * 64, "size_bytes": len(change), "cut": False}
    assert (run / "source.diff").read_bytes() == change
    env = json.loads((run / "env.json").read_text())
    assert env["git_revision"] == "0123abc+dirty" and env["source_diff"] == recorded
    assert read_events(run)[0]["source_diff"] == recorded
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "json"])
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["provenance"]["runs"][run.name]["source_diff"] == recorded


def test_a_region_run_trains_scores_postprocesses_and_predicts_beside_a_label_run(home, tmp_path) -> None:
    """Target regions end to end on a tiny two-channel task with nested regions (as BraTS's): trained with
    sigmoid region channels, scored from its painted label maps like the label run (labels and regions),
    postprocessed on its label maps, told apart from the label run in the report, and `predict` on the raw
    images gives its held-out predictions again exactly."""
    import json
    import shutil

    import numpy as np
    from typer.testing import CliRunner

    from medseg_bench.cli.app import app
    from medseg_bench.data.io import read_label
    from tests.conftest import make_synthetic_task, write_task_file

    runner = CliRunner()
    task_file = write_task_file(home, "Task91_Glioma", channels=2)
    with task_file.open("a") as fh:  # in this order (yaml.safe_dump would sort them)
        fh.write("regions:\n  whole: [1, 2]\n  inner: [2]\n")
    src = make_synthetic_task(tmp_path / "src" / "Task91_Glioma", channels=2)
    assert runner.invoke(app, ["fetch", "Task91_Glioma", "--source", str(src)]).exit_code == 0
    results = tmp_path / "results"
    sweep = runner.invoke(app, ["sweep", "--task", "Task91_Glioma", "--dims", "3d", "--arch", "unet",
                                "--loss", "dice_ce", "--aug", "none", "--target", "labels,regions",
                                "--postprocess", "--epochs", "1", "--iters-per-epoch", "2", "--batch-size",
                                "2", "--num-folds", "2", "--results-dir", str(results)])
    assert sweep.exit_code == 0, sweep.output
    runs = {json.loads((run / "spec.json").read_text()).get("target", "labels"): run
            for run in (results / "Task91_Glioma").iterdir()}
    assert sorted(runs) == ["labels", "regions"] and "-none-regions-f0-s0-" in runs["regions"].name
    region_run = runs["regions"]
    metrics = [json.loads((run / "summary.json").read_text()) for run in (runs["labels"], region_run)]
    assert metrics[0]["metric_settings"] == metrics[1]["metric_settings"]  # scored alike
    assert set(metrics[1]["per_label_dice"]) == set(metrics[0]["per_label_dice"]) == {
        "1", "2", "whole", "inner"}
    assert metrics[1]["postprocessing"] is not None and (region_run / "postprocessing.json").is_file()
    report = runner.invoke(app, ["report", "--results-dir", str(results), "--format", "markdown"])
    assert report.exit_code == 0, report.output
    assert "3d-unet-dice_ce-none [target=labels]" in report.stdout
    assert "3d-unet-dice_ce-none [target=regions]" in report.stdout

    held_out = json.loads((region_run / "splits.json").read_text())["val"]
    images = tmp_path / "held_out"
    images.mkdir()
    for case in held_out:
        shutil.copy(src / "imagesTr" / f"{case}.nii.gz", images / f"{case}.nii.gz")
    out = tmp_path / "p"
    predicted = runner.invoke(app, ["predict", str(region_run), "--images", str(images), "--out", str(out)])
    assert predicted.exit_code == 0, predicted.output
    for case in held_out:
        scored, _ = read_label(region_run / "predictions" / f"{case}.nii.gz")
        assert set(np.unique(scored)) <= {0, 1, 2}
        assert np.array_equal(read_label(out / f"{case}.nii.gz")[0], scored)
    # its setup.json records the regions its channels are: predict refuses a task file that changed them since
    setup = json.loads((region_run / "setup.json").read_text())
    assert setup["regions"] == [{"name": "whole", "labels": [1, 2]}, {"name": "inner", "labels": [2]}]
    assert "regions" not in json.loads((runs["labels"] / "setup.json").read_text())
    task_file.write_text(task_file.read_text().replace("inner: [2]", "inner: [1]"))
    changed = runner.invoke(app, ["predict", str(region_run), "--images", str(images), "--out",
                                  str(tmp_path / "changed")])
    assert changed.exit_code == 3, changed.output
    assert changed.stderr == (f"error: {region_run / 'setup.json'}: the run trained on regions whole=1,2; "
                              "inner=2; the task file declares whole=1,2; inner=1; restore the task file's "
                              f"regions ({task_file}) to predict with this run\n")


SHAPE = (10, 16, 16)
Cases = dict[str, tuple[np.ndarray, np.ndarray]]  # each case's prediction and label map


def _held_out_cases(count: int) -> Cases:
    """Synthetic held-out cases (prediction, label map) whose postprocessing decision applies steps: labels
    1 and 2 touching; predicted with specks away from them (the foreground step removes them) and a piece of
    one label touching the other only (kept by the foreground step, removed by its label's own)."""
    rng = np.random.default_rng(7)
    cases = {}
    for index in range(count):
        label = np.zeros(SHAPE, np.uint8)
        top = int(rng.integers(1, 3))
        label[top:top + 4, 2:8, 2:8] = 1
        label[top:top + 4, 8:12, 2:8] = 2
        pred = label.copy()
        pred[8, int(rng.integers(0, 16)), 14] = int(rng.integers(1, 3))  # a speck
        if index % 2:
            pred[top:top + 2, 12, 2:4] = 1  # touching label 2, not label 1
        else:
            pred[top:top + 2, 1, 2:4] = 2  # touching label 1, not label 2
        if index == count - 1:
            pred[pred == 2] = 0  # label 2 missed: its Dice 0
        cases[f"case_{index:02d}"] = pred, label
    return cases


def _evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cases: Cases, version: int,
              regions: dict[str, list[int]], track=None) -> tuple[pd.DataFrame, Path]:
    """`evaluate_fold` of a postprocessed run on `cases` (each case's prediction and label map as given, new
    arrays each time they are asked for, passed through `track`), its predictions saved; the frame and where
    they are."""
    from types import SimpleNamespace

    import medseg_bench.checks as checks
    import medseg_bench.data.preprocess as preprocess
    import medseg_bench.inference as inference
    import medseg_bench.run as run_module
    from medseg_bench.data.io import Geometry
    from medseg_bench.run import evaluate_fold
    from medseg_bench.spec import RunSpec

    track = track or (lambda array, case: array)
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()), SHAPE[::-1])
    monkeypatch.setattr(checks, "usable_memory", lambda: None)
    monkeypatch.setattr(run_module, "resolve_patch_and_batch", lambda *args: ((16, 16, 16), 2))
    monkeypatch.setattr(run_module, "network_spacing", lambda *args: (1.0, 1.0, 1.0))
    monkeypatch.setattr(run_module, "load_case",
                        lambda cache, case_id, mmap: (np.zeros((1, 2, 2, 2)), None, {"case": case_id}))
    monkeypatch.setattr(inference, "predict_probabilities", lambda *args, **kwargs: None)
    monkeypatch.setattr(inference, "to_label_map",
                        lambda probs, props, *args: track(cases[props["case"]][0].copy(), props["case"]))
    monkeypatch.setattr(preprocess, "original_label",
                        lambda props: (track(cases[props["case"]][1].copy(), props["case"]), geometry))
    task = SimpleNamespace(foreground_labels=(1, 2), regions=regions, nsd_tolerance_mm=1.0)
    prepared = SimpleNamespace(task=task, splits=[{"train": [], "val": list(cases)}],
                               cache_for=lambda own: None)
    spec = RunSpec(task="Task04_Hippocampus", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2,
                   postprocess=True, pipeline_version=version)
    saved = tmp_path / f"saved-{version}-{len(regions)}"
    saved.mkdir()
    spill = tmp_path / "run" / ".evaluation.partial"
    (spill / "predictions").mkdir(parents=True, exist_ok=True)
    for case in cases:  # a killed attempt's, of other predictions: never read
        np.save(spill / "predictions" / f"{case}.npy", np.full(SHAPE, 2, np.uint8))
    frame = evaluate_fold(None, spec, prepared, "cpu", save_to=saved, spill_to=spill)  # type: ignore[arg-type]
    assert not spill.exists()
    return frame, saved


@pytest.mark.parametrize("version", [13, 14])
@pytest.mark.parametrize("regions", [{}, {"whole": [1, 2], "inner": [2]}])
def test_a_postprocessed_evaluation_decides_and_scores_from_disk_as_in_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int, regions: dict[str, list[int]]) -> None:
    """The held-out cases written to disk and read back one at a time (`case_spill`) give the decision, the
    scores and the saved predictions that deciding on them all held in memory gives, for labels and regions,
    nnU-Net v2's decision and version 13's per label."""
    import json

    from medseg_bench.data.io import read_label
    from medseg_bench.metrics import MetricSettings, evaluate_case
    from medseg_bench.postprocess import apply_postprocessing, decide_as

    cases = _held_out_cases(5)
    frame, saved = _evaluate(tmp_path, monkeypatch, cases, version, regions)
    preds, labels = [p for p, _ in cases.values()], [r for _, r in cases.values()]
    decision = decide_as(version, preds, labels, [1, 2], regions or None)  # every case in memory
    assert len(decision.steps) >= 2  # the result so far rewritten, foreground first (version 14)
    assert json.dumps(frame.attrs["postprocessing"].to_dict()) == json.dumps(decision.to_dict())
    rows = []
    for case, (pred, label) in cases.items():
        decided = apply_postprocessing(pred, decision.steps)
        assert np.array_equal(read_label(saved / f"{case}.nii.gz")[0], decided)
        rows += [{"case": case, **row} for row in evaluate_case(
            decided, label, (1.0, 1.0, 1.0), (1, 2), MetricSettings(nsd_tolerance_mm=1.0),
            regions=regions or None)]
    pd.testing.assert_frame_equal(frame, pd.DataFrame(rows))


@pytest.mark.parametrize("version", [13, 14])
def test_a_postprocessed_evaluation_holds_one_held_out_case_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """Every array of a case (its prediction and label map, as predicted, read back or postprocessed) is
    counted while it lives: no two cases' are ever held at once, from predicting to scoring (the decision
    held every case's prediction and label map: about 5 GiB on a CT fold)."""
    import weakref

    import medseg_bench.postprocess as postprocess
    from medseg_bench.case_spill import SpilledArrays

    live: dict[int, str] = {}  # id of each living array -> its case
    most: list[int] = [0]

    def track(array: np.ndarray, case: str) -> np.ndarray:
        live[id(array)] = case
        weakref.finalize(array, live.pop, id(array), None)
        most[0] = max(most[0], len(set(live.values())))
        return array

    read, keep = SpilledArrays.__getitem__, postprocess.keep_largest_component
    monkeypatch.setattr(SpilledArrays, "__getitem__", lambda self, index: track(read(self, index),
                                                                                 self.cases[index]))
    monkeypatch.setattr(postprocess, "keep_largest_component",
                        lambda pred, labels: track(keep(pred, labels), live[id(pred)]))
    cases = _held_out_cases(6)
    frame, _ = _evaluate(tmp_path, monkeypatch, cases, version, {}, track)
    assert frame["case"].nunique() == 6 and frame.attrs["postprocessing"].steps
    assert most[0] == 1
