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


def test_decision_round_trips_and_bad_file_is_a_data_error(tmp_path) -> None:
    decision = Decision({"1": True, "2": False}, {"1": 0.8, "2": 0.9}, {"1": 0.85, "2": 0.7})
    save_decision(decision, tmp_path)
    assert load_decision(tmp_path) == decision
    assert load_decision(tmp_path / "nothing") is None
    (tmp_path / "postprocessing.json").write_text("{\"apply\": 3}")
    with pytest.raises(DataError, match="postprocessing.json: malformed"):
        load_decision(tmp_path)
