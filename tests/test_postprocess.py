import numpy as np
import pytest

from medseg_bench.errors import DataError
from medseg_bench.postprocess import (
    Decision,
    apply_postprocessing,
    decide,
    keep_largest_component,
    load_decision,
    save_decision,
)


def _pred_with_speck() -> np.ndarray:
    pred = np.zeros((10, 12, 12), np.uint8)
    pred[2:6, 2:7, 2:7] = 1  # the organ
    pred[8, 10, 10] = 1  # a false-positive speck
    pred[1:4, 9:11, 1:3] = 2
    return pred


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


def test_decision_per_label_follows_mean_dice() -> None:
    ref = _pred_with_speck()
    ref[8, 10, 10] = 0  # the speck is wrong: LCC helps label 1
    preds = [_pred_with_speck()]
    # Label 2's second component is right in the reference: removing it would hurt.
    preds[0][6:8, 1:3, 9:11] = 2
    ref[6:8, 1:3, 9:11] = 2
    decision = decide(preds, [ref], [1, 2, 3])
    assert decision.apply == {"1": True, "2": False, "3": False}
    assert decision.dice_postprocessed["1"] == 1.0 > decision.dice_raw["1"]
    assert decision.dice_postprocessed["2"] < decision.dice_raw["2"] == 1.0
    assert np.isnan(decision.dice_raw["3"])  # absent everywhere: never postprocessed
    assert decision.labels == [1]
    fixed = apply_postprocessing(preds[0], decision.labels)
    assert (fixed == ref).all()


def test_an_ensembles_decision_pools_its_runs_mean_dice() -> None:
    from medseg_bench.postprocess import pooled

    # label 1: the first run's fold gains (0.80 -> 0.85), the second's loses more (0.60 -> 0.50): pooled, no
    # label 2: both gain; label 3: one run saw no case of it (NaN), the other gains: decided by that one
    first = Decision({"1": True, "2": True, "3": True}, {"1": 0.8, "2": 0.7, "3": 0.5},
                     {"1": 0.85, "2": 0.75, "3": 0.6})
    second = Decision({"1": False, "2": True, "3": False}, {"1": 0.6, "2": 0.5, "3": float("nan")},
                      {"1": 0.5, "2": 0.52, "3": float("nan")})
    decision = pooled([first, second])
    assert decision.labels == [2, 3]
    assert decision.dice_raw["1"] == pytest.approx(0.7)
    assert decision.dice_postprocessed["1"] == pytest.approx(0.675)
    assert decision.dice_raw["3"] == pytest.approx(0.5)
    assert pooled([second]) is second  # one run: its own decision


def test_decision_round_trips_and_bad_file_is_a_data_error(tmp_path) -> None:
    decision = Decision({"1": True, "2": False}, {"1": 0.8, "2": 0.9}, {"1": 0.85, "2": 0.7})
    save_decision(decision, tmp_path)
    assert load_decision(tmp_path) == decision
    assert load_decision(tmp_path / "nothing") is None
    (tmp_path / "postprocessing.json").write_text("{\"apply\": 3}")
    with pytest.raises(DataError, match="postprocessing.json: malformed"):
        load_decision(tmp_path)


def test_run_records_tta_and_postprocessing_decision(home, tmp_path) -> None:
    """A tiny run with --tta --postprocess: decision, both scores and the applied labels in its outputs."""
    import json

    import pandas as pd

    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import prepare_task
    from medseg_bench.run import execute_run
    from medseg_bench.spec import RunSpec
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task95_Post")
    src = make_synthetic_task(tmp_path / "src" / "Task95_Post", num_cases=4)
    fetch_task(get_task("Task95_Post"), home / "data", str(src), progress=False)
    prepared = prepare_task(get_task("Task95_Post"), home / "data", num_folds=2, workers=1)
    spec = RunSpec(task="Task95_Post", dims="3d", arch="unet", loss="dice_ce", aug="light", num_folds=2,
                   epochs=1, iters_per_epoch=2, batch_size=2, patch_size=(16, 16, 16), tta=True,
                   postprocess=True)
    folder = tmp_path / "run"
    summary = execute_run(spec, prepared, folder)
    assert summary["tta"] is True
    post = summary["postprocessing"]
    assert set(post["apply"]) == {"1", "2"} and set(post["dice_raw"]) == {"1", "2"}
    assert post["labels_postprocessed"] == [int(k) for k, v in sorted(post["apply"].items()) if v]
    for key, applied in post["apply"].items():  # applied exactly where it raised the mean Dice
        raw, lcc = post["dice_raw"][key], post["dice_postprocessed"][key]
        assert applied == (lcc > raw)
    assert load_decision(folder) == Decision.from_dict(post)
    frame = pd.read_csv(folder / "metrics.csv")
    per_label = frame.groupby("label")["dice"].mean()
    for key, applied in post["apply"].items():  # metrics.csv scores the decided predictions
        expected = post["dice_postprocessed"][key] if applied else post["dice_raw"][key]
        if np.isfinite(expected):
            assert per_label[int(key)] == pytest.approx(expected)
    assert json.loads((folder / "summary.json").read_text())["postprocessing"] == post


def test_a_runs_predictions_folder_holds_the_postprocessed_maps_it_scored(home, tmp_path,
                                                                          monkeypatch) -> None:
    """predictions/ = what metrics.csv scored (here with every label postprocessed); an earlier attempt's
    folders are replaced, not mixed in."""
    import pandas as pd
    from scipy import ndimage

    import medseg_bench.postprocess as postprocess
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.io import read_label
    from medseg_bench.data.preprocess import prepare_task
    from medseg_bench.metrics import evaluate_folders
    from medseg_bench.run import execute_run
    from medseg_bench.spec import RunSpec
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task95_Post")
    src = make_synthetic_task(tmp_path / "src" / "Task95_Post", num_cases=4)
    fetch_task(get_task("Task95_Post"), home / "data", str(src), progress=False)
    prepared = prepare_task(get_task("Task95_Post"), home / "data", num_folds=2, workers=1)
    spec = RunSpec(task="Task95_Post", dims="3d", arch="unet", loss="dice_ce", aug="light", num_folds=2,
                   epochs=1, iters_per_epoch=2, batch_size=2, patch_size=(16, 16, 16), postprocess=True)
    decide = postprocess.decide
    monkeypatch.setattr(postprocess, "decide", lambda preds, refs, labels: Decision(
        {str(k): True for k in labels}, decide(preds, refs, labels).dice_raw, {}))
    folder = tmp_path / "run"
    for stale in (folder / ".predictions.partial", folder / "predictions"):  # a killed attempt's
        stale.mkdir(parents=True)
        (stale / "stale.nii.gz").write_text("old")
    execute_run(spec, prepared, folder)
    held_out = prepared.splits[0]["val"]
    assert sorted(p.name for p in folder.iterdir() if "predictions" in p.name) == ["predictions"]
    written = sorted(p.name for p in (folder / "predictions").iterdir())
    assert written == sorted(f"{case}.nii.gz" for case in held_out)
    for case in held_out:
        labels, _ = read_label(folder / "predictions" / f"{case}.nii.gz")
        for value in (1, 2):  # postprocessed: one component of each label at most
            assert ndimage.label(labels == value, structure=np.ones((3, 3, 3)))[1] <= 1
    scored = evaluate_folders(folder / "predictions", src / "labelsTr", None, workers=1, allow_missing=True)
    own = pd.read_csv(folder / "metrics.csv")
    assert np.allclose(scored["dice"].to_numpy(float), own["dice"].to_numpy(float), equal_nan=True)
