import json
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.errors import DataError
from medseg_bench.postprocess import (
    NNUNET_POSTPROCESS_FROM,
    Decision,
    Step,
    apply_postprocessing,
    decide,
    decide_as,
    keep_largest_component,
    load_decision,
    pooled,
    pooling_problem,
    save_decision,
)
from medseg_bench.postprocess_per_label import PerLabelDecision
from tests.conftest import postprocessing_decision


def _pred_with_speck() -> np.ndarray:
    pred = np.zeros((10, 12, 12), np.uint8)
    pred[2:6, 2:7, 2:7] = 1  # the organ
    pred[8, 10, 10] = 1  # a false-positive speck
    pred[1:4, 9:11, 1:3] = 2
    return pred


def _names(decision: Decision) -> list[str]:
    return [step.name for step in decision.steps]


def test_keep_largest_component_removes_only_smaller_parts_of_that_label() -> None:
    pred = _pred_with_speck()
    out = keep_largest_component(pred, 1)
    assert out[8, 10, 10] == 0 and (out[2:6, 2:7, 2:7] == 1).all()
    assert (out == 2).sum() == (pred == 2).sum()  # other labels untouched
    assert pred[8, 10, 10] == 1  # input not modified
    diagonal = np.zeros((4, 4, 4), np.uint8)
    diagonal[0, 0, 0] = diagonal[1, 1, 1] = 1  # corner-touching voxels are one component (full connectivity)
    assert (keep_largest_component(diagonal, 1) == diagonal).all()
    twins = np.zeros((6, 6, 6), np.uint8)
    twins[0:2, 0:2, 0:2] = twins[4:6, 4:6, 4:6] = 1  # two components tied for largest: both kept (nnU-Net)
    twins[0, 5, 0] = 1
    kept = keep_largest_component(twins, 1)
    assert kept.sum() == 16 and kept[0, 5, 0] == 0


def test_a_steps_mask_is_its_labels_together_and_removed_voxels_become_background() -> None:
    pred = _pred_with_speck()
    pred[6, 2:7, 2:7] = 2  # label 2 touching the organ: one component of labels 1 and 2 together
    out = keep_largest_component(pred, (1, 2))
    assert out[8, 10, 10] == 0 and (out[1:4, 9:11, 1:3] == 0).all()  # both labels' smaller components
    assert (out[6, 2:7, 2:7] == 2).all() and (out[2:6, 2:7, 2:7] == 1).all()  # labels kept as they were
    steps = [Step("region", "both", (1, 2)), Step("label", "1", (1,))]
    assert (apply_postprocessing(pred, steps) == out).all()
    assert apply_postprocessing(pred, []) is pred


def _three_labels() -> tuple[np.ndarray, np.ndarray]:
    """One case: an organ of labels 1, 3 and 2 together; a separate small part of label 2 that is right, and
    a wrong speck of label 1 and of label 3."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:8, 2:8, 2:8] = 1
    ref[2:8, 2:8, 8:10] = 3
    ref[8:10, 2:8, 2:8] = 2
    ref[15:17, 15:17, 15:17] = 2
    pred = ref.copy()
    pred[15:17, 2:4, 15:17] = 1
    pred[2:4, 15:17, 15:17] = 3
    return pred, ref


def test_the_foreground_step_is_refused_when_one_label_gets_worse() -> None:
    """It raises the foreground mean Dice (labels 1 and 3 lose their specks) but removes label 2's right
    part: not applied (nnU-Net's rule); step 2 then removes the specks label by label."""
    pred, ref = _three_labels()
    decision = decide([pred], [ref], [1, 2, 3])
    foreground = decision.to_dict()["foreground"]
    assert foreground["dice_after"] > foreground["dice_before"]
    assert foreground["worse"] == ["2"] and foreground["applied"] is False
    assert _names(decision) == ["1", "3"]  # label 2's own step would remove its right part: refused
    assert [c.trial.applied for c in decision.candidates] == [True, False, True]
    fixed = apply_postprocessing(pred, decision.steps)
    assert (fixed == ref).all()


def test_the_foreground_step_applies_where_it_helps_then_each_label_on_its_result() -> None:
    """A wrong part of label 2 larger than the organ's label-2 core: the foreground step removes it; label 2's
    own step (each label on its own, as before version 14) would have kept it and removed the core."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:9, 2:9, 2:9] = 1
    ref[4:6, 4:6, 4:6] = 2  # the core, 8 voxels
    pred = ref.copy()
    pred[14:17, 14:17, 14:17] = 2  # 27 voxels, wrong
    pred[0, 19, 0] = 1  # a wrong speck of label 1
    decision = decide([pred], [ref], [1, 2])
    assert decision.foreground_applied and _names(decision) == ["foreground"]
    for candidate in decision.candidates:  # step 2 tried on the foreground step's result
        assert candidate.trial is not None and candidate.trial.before == candidate.scores["foreground"]
        assert not candidate.trial.applied  # nothing left to remove
    assert (apply_postprocessing(pred, decision.steps) == ref).all()
    assert decide_as(NNUNET_POSTPROCESS_FROM - 1, [pred], [ref], [1, 2]).labels == [1]  # kept the wrong part


def test_a_task_with_one_label_skips_step_two() -> None:
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:6, 2:7, 2:7] = 1
    pred = ref.copy()
    pred[8, 10, 10] = 1
    decision = decide([pred], [ref], [1])
    assert _names(decision) == ["foreground"]  # not the label's step after it: step 2 is skipped
    (candidate,) = decision.candidates
    assert candidate.trial is None and set(candidate.scores) == {"raw", "foreground"}
    one_region = decide([pred], [ref], [1], {"organ": [1]})
    assert _names(one_region) == ["foreground"] and one_region.candidates[0].trial is None


def _region_case() -> tuple[np.ndarray, np.ndarray]:
    """An organ of labels 1, 2 and 3 (inner to outer 3, 2, 1), a separate right part of label 3, and a wrong
    part of labels 2 and 3 (one component of the core region) beside it."""
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[2:10, 2:10, 2:10] = 1
    ref[3:8, 3:8, 3:8] = 2
    ref[4:6, 4:6, 4:6] = 3
    ref[14:16, 2:4, 2:4] = 3
    pred = ref.copy()
    pred[13:15, 13:15, 13:15] = 2
    pred[15:17, 13:15, 13:15] = 3
    return pred, ref


def test_a_task_with_regions_decides_on_its_regions_dice_in_order_on_the_result_so_far() -> None:
    """nnU-Net's `has_regions`: the candidates are the regions, in the task file's order, their Dice the one
    compared (as the report scores them, `evaluate_case`); each on the result of the steps before it."""
    from medseg_bench.metrics import evaluate_case

    pred, ref = _region_case()
    regions = {"core": [2, 3], "enhancing": [3]}
    decision = decide([pred], [ref], [1, 2, 3], regions)
    assert [(c.step.kind, c.step.name, c.step.labels) for c in decision.candidates] == [
        ("region", "core", (2, 3)), ("region", "enhancing", (3,))]
    assert decision.to_dict()["foreground"]["worse"] == ["enhancing"]  # its right part is not the largest
    assert _names(decision) == ["core"]
    rows = {row["label"]: row
            for row in evaluate_case(pred, ref, (1.0, 1.0, 1.0), [1, 2, 3], regions=regions)}
    core, enhancing = decision.candidates
    assert core.scores["raw"].dice == pytest.approx(rows["core"]["dice"])
    assert core.trial is not None and core.trial.before.dice == pytest.approx(rows["core"]["dice"])
    after_core = keep_largest_component(pred, (2, 3))
    assert (apply_postprocessing(pred, decision.steps) == after_core).all()
    # enhancing is tried on the core step's result, which took its right part too
    enhancing_after_core = evaluate_case(after_core, ref, (1.0, 1.0, 1.0), [3])[0]["dice"]
    assert enhancing.trial is not None and enhancing.trial.before.dice == pytest.approx(enhancing_after_core)
    assert enhancing.trial.before.dice < enhancing.scores["raw"].dice and not enhancing.trial.applied
    labels_only = decide([pred], [ref], [1, 2, 3])  # the labels' Dice decide otherwise: label 2's step
    assert _names(labels_only) == ["2"]
    assert (apply_postprocessing(pred, labels_only.steps) != after_core).any()


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A reference of two labels (label 2 absent from some cases) and a prediction with scattered errors."""
    ref = np.zeros((12, 14, 14), np.uint8)
    z, y = rng.integers(1, 4, 2)
    ref[z:z + 6, y:y + 7, 2:9] = 1
    if rng.random() < 0.7:
        ref[z + 2:z + 4, y + 2:y + 4, 3:6] = 2
    pred = ref.copy()
    for _ in range(rng.integers(0, 4)):  # wrong specks of either label, or holes, anywhere
        a, b, c = rng.integers(0, 12, 3)
        pred[a:a + 2, b:b + 2, c:c + 2] = rng.integers(0, 3)
    return pred, ref


def test_pooling_runs_decides_labels_as_on_their_cases_together() -> None:
    """Each run's record (four mean Dice per label, with their numbers of cases) makes the pooled decision the
    one on the runs' held-out cases together: steps and numbers."""
    differed = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        cases = [_random_case(rng) for _ in range(9)]
        folds = [cases[:3], cases[3:5], cases[5:]]
        runs = [decide([p for p, _ in fold], [r for _, r in fold], [1, 2]) for fold in folds]
        together = decide([p for p, _ in cases], [r for _, r in cases], [1, 2])
        ensemble = pooled(runs)
        assert isinstance(ensemble, Decision)
        assert ensemble.steps == together.steps, seed
        for mine, theirs in zip(ensemble.candidates, together.candidates, strict=True):
            assert mine.trial is not None and theirs.trial is not None
            assert mine.trial.before.cases == theirs.trial.before.cases
            assert mine.trial.after.dice == pytest.approx(theirs.trial.after.dice, nan_ok=True)
            for state, mean in theirs.scores.items():
                assert mine.scores[state].dice == pytest.approx(mean.dice, nan_ok=True)
        differed += any(run.steps != together.steps for run in runs)
    assert differed > 5  # the folds' own decisions often differ from the pooled one


def test_pooling_regions_is_exact_where_the_runs_took_the_same_earlier_steps() -> None:
    regions = {"whole": [1, 2], "inner": [2]}
    exact = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        cases = [_random_case(rng) for _ in range(8)]
        runs = [decide([p for p, _ in fold], [r for _, r in fold], [1, 2], regions)
                for fold in (cases[:4], cases[4:])]
        together = decide([p for p, _ in cases], [r for _, r in cases], [1, 2], regions)
        ensemble = pooled(runs)
        assert isinstance(ensemble, Decision)
        assert ensemble.foreground_applied == together.foreground_applied  # exact always
        first, alone = ensemble.candidates[0].trial, together.candidates[0].trial  # the first region's too
        assert first is not None and alone is not None and first.applied == alone.applied
        assert first.after.dice == pytest.approx(alone.after.dice, nan_ok=True)
        same_path = all(run.foreground_applied == ensemble.foreground_applied
                        and run.candidates[0].trial.applied == ensemble.candidates[0].trial.applied
                        for run in runs)
        if same_path:
            exact += 1
            assert ensemble.steps == together.steps, seed
            assert ensemble.candidates[1].trial.after.dice == pytest.approx(
                together.candidates[1].trial.after.dice, nan_ok=True)
    assert exact > 10


def test_an_ensemble_pools_only_decisions_of_one_procedure_and_candidates() -> None:
    first = postprocessing_decision(True, {1: True, 2: True})
    legacy = PerLabelDecision({"1": True}, {"1": 0.5}, {"1": 0.6})
    assert pooled([first]) is first  # one run: its own decision
    assert pooling_problem([first, first]) is None
    assert "different procedures" in (pooling_problem([first, legacy]) or "")
    other_labels = postprocessing_decision(True, {1: True})
    assert "different labels or regions" in (pooling_problem([first, other_labels]) or "")
    with pytest.raises(DataError, match="not pooled: their runs decided by different procedures"):
        pooled([first, legacy])
    # label 1: both runs' step applied; label 2: one run's gains as much as the other's loses (equal cases)
    both = pooled([postprocessing_decision(False, {1: True, 2: True}),
                   postprocessing_decision(False, {1: True, 2: False})])
    assert isinstance(both, Decision) and _names(both) == ["1"]


def test_decision_round_trips_and_bad_file_is_a_data_error(tmp_path) -> None:
    pred, ref = _three_labels()
    empty = np.zeros_like(ref)
    decision = decide([pred, empty], [ref, empty], [1, 2, 3])  # the second case's Dice NaN: not counted
    save_decision(decision, tmp_path)
    assert load_decision(tmp_path) == decision
    written = json.loads((tmp_path / "postprocessing.json").read_text())
    assert written["format"] == 2
    assert written["steps"] == [{"kind": "label", "name": "1", "labels": [1]},
                                {"kind": "label", "name": "3", "labels": [3]}]
    raw = decision.candidates[0].scores["raw"]
    assert written["candidates"][0]["scores"]["raw"] == {"mean_dice": raw.dice, "cases": 1}
    assert load_decision(tmp_path / "nothing") is None
    for bad in ("{\"apply\": 3}", "{\"format\": 3}", "{\"format\": 2, \"steps\": [{\"kind\": \"lcc\"}]}"):
        (tmp_path / "postprocessing.json").write_text(bad)
        with pytest.raises(DataError, match="postprocessing.json: malformed"):
            load_decision(tmp_path)


def test_a_version_13_runs_decision_is_read_and_applied_per_label(tmp_path) -> None:
    """The file a run of pipeline version 13 wrote: each label on its own, as it was decided."""
    (tmp_path / "postprocessing.json").write_text(json.dumps({
        "apply": {"1": True, "2": False}, "dice_raw": {"1": 0.8, "2": 0.9},
        "dice_postprocessed": {"1": 0.85, "2": 0.7}, "labels_postprocessed": [1]}))
    decision = load_decision(tmp_path)
    assert isinstance(decision, PerLabelDecision)
    assert decision.steps == (Step("label", "1", (1,)),)
    pred = _pred_with_speck()
    pred[8, 0, 0] = 2
    assert (apply_postprocessing(pred, decision.steps) == keep_largest_component(pred, 1)).all()
    assert isinstance(decide_as(13, [pred], [pred], [1, 2]), PerLabelDecision)
    assert isinstance(decide_as(NNUNET_POSTPROCESS_FROM, [pred], [pred], [1, 2]), Decision)


def _prepared_task(home: Path, tmp_path: Path, **task_fields: object) -> tuple[object, Path]:
    """Task95_Post (`task_fields` added to its task file), fetched from 4 synthetic cases and prepared for 2
    folds; and its source folder."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import prepare_task
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task95_Post", **task_fields)
    src = make_synthetic_task(tmp_path / "src" / "Task95_Post", num_cases=4)
    fetch_task(get_task("Task95_Post"), home / "data", str(src), progress=False)
    return prepare_task(get_task("Task95_Post"), home / "data", num_folds=2, workers=1), src


def _spec(**fields: object) -> object:
    """A tiny postprocessed run of Task95_Post."""
    from medseg_bench.spec import RunSpec

    return RunSpec(task="Task95_Post", dims="3d", arch="unet", loss="dice_ce", aug="light", num_folds=2,
                   epochs=1, iters_per_epoch=2, batch_size=2, patch_size=(16, 16, 16), postprocess=True,
                   **fields)  # type: ignore[arg-type]


def test_run_records_tta_and_postprocessing_decision(home, tmp_path) -> None:
    """A tiny run with --tta --postprocess: decision, its scores and the applied steps in its outputs."""
    import pandas as pd

    from medseg_bench.run import execute_run

    prepared, _ = _prepared_task(home, tmp_path)
    folder = tmp_path / "run"
    summary = execute_run(_spec(tta=True), prepared, folder)
    assert summary["tta"] is True
    post = summary["postprocessing"]
    assert post["format"] == 2 and [c["name"] for c in post["candidates"]] == ["1", "2"]
    applied = [c["name"] for c in post["candidates"] if c["trial"]["applied"]]
    assert [s["name"] for s in post["steps"]] == ["foreground"] * post["foreground"]["applied"] + applied
    decision = load_decision(folder)
    assert decision == Decision.from_dict(post)
    assert isinstance(decision, Decision)
    frame = pd.read_csv(folder / "metrics.csv")
    per_label = frame.groupby("label")["dice"].mean()
    for candidate in decision.candidates:  # metrics.csv scores the decided predictions
        assert candidate.trial is not None
        final = candidate.trial.after if candidate.trial.applied else candidate.trial.before
        if np.isfinite(final.dice):
            assert per_label[int(candidate.step.name)] == pytest.approx(final.dice)
    assert json.loads((folder / "summary.json").read_text())["postprocessing"] == post


def test_a_runs_predictions_folder_holds_the_postprocessed_maps_it_scored(home, tmp_path,
                                                                          monkeypatch) -> None:
    """predictions/ = what metrics.csv scored (here with every label postprocessed); an earlier attempt's
    folders are replaced, not mixed in. The task's regions are what the decision is given."""
    import pandas as pd
    from scipy import ndimage

    import medseg_bench.postprocess as postprocess
    from medseg_bench.data.io import read_label
    from medseg_bench.metrics import evaluate_folders
    from medseg_bench.run import execute_run

    prepared, src = _prepared_task(home, tmp_path, regions={"inner": [2], "whole": [1, 2]})
    given = []

    def every_label(preds: object, refs: object, labels: list[int], regions: dict[str, list[int]],
                    store: object) -> object:
        given.append((labels, regions))
        assert (folder / ".evaluation.partial" / "predictions").is_dir()  # decided from the cases on disk
        return postprocessing_decision(False, {k: True for k in labels})

    monkeypatch.setattr(postprocess, "decide", every_label)
    folder = tmp_path / "run"
    for stale in (folder / ".predictions.partial", folder / "predictions"):  # a killed attempt's
        stale.mkdir(parents=True)
        (stale / "stale.nii.gz").write_text("old")
    execute_run(_spec(), prepared, folder)
    assert given == [([1, 2], {"inner": [2], "whole": [1, 2]})]
    held_out = prepared.splits[0]["val"]
    assert sorted(p.name for p in folder.iterdir() if "predictions" in p.name) == ["predictions"]
    assert not (folder / ".evaluation.partial").exists()
    written = sorted(p.name for p in (folder / "predictions").iterdir())
    assert written == sorted(f"{case}.nii.gz" for case in held_out)
    for case in held_out:
        labels, _ = read_label(folder / "predictions" / f"{case}.nii.gz")
        for value in (1, 2):  # postprocessed: one component of each label at most
            assert ndimage.label(labels == value, structure=np.ones((3, 3, 3)))[1] <= 1
    scored = evaluate_folders(folder / "predictions", src / "labelsTr", None, workers=1, allow_missing=True,
                              regions=given[0][1])
    own = pd.read_csv(folder / "metrics.csv")
    assert np.allclose(scored["dice"].to_numpy(float), own["dice"].to_numpy(float), equal_nan=True)


def test_a_version_13_run_decides_each_label_on_its_own_as_it_did(home, tmp_path, monkeypatch) -> None:
    """A run spec of pipeline version 13 run by this code decides, records and scores as that version did:
    `postprocess_per_label`, on label Dice alone though the task has regions."""
    import medseg_bench.postprocess_per_label as per_label
    from medseg_bench.run import execute_run

    prepared, _ = _prepared_task(home, tmp_path, regions={"inner": [2], "whole": [1, 2]})
    given = []
    decide_per_label = per_label.decide_per_label

    def recorded(preds: list, refs: list, labels: list[int]) -> PerLabelDecision:
        given.append(labels)
        return decide_per_label(preds, refs, labels)

    monkeypatch.setattr(per_label, "decide_per_label", recorded)
    summary = execute_run(_spec(pipeline_version=13), prepared, tmp_path / "run")
    assert given == [[1, 2]]
    post = summary["postprocessing"]
    assert set(post) == {"apply", "dice_raw", "dice_postprocessed", "labels_postprocessed"}
    assert isinstance(load_decision(tmp_path / "run"), PerLabelDecision)
