"""Pipeline version 13's postprocessing: each label on its own (kept for runs of that version and older)."""

import numpy as np
import pytest

from medseg_bench.postprocess import apply_postprocessing, decide_as, load_decision, pooled, save_decision
from medseg_bench.postprocess_per_label import PerLabelDecision, decide_per_label


def test_decision_per_label_follows_mean_dice() -> None:
    ref = np.zeros((10, 12, 12), np.uint8)
    ref[2:6, 2:7, 2:7] = 1
    ref[1:4, 9:11, 1:3] = 2
    pred = ref.copy()
    pred[8, 10, 10] = 1  # a wrong speck: the largest component alone helps label 1
    # Label 2's second component is right in the reference: removing it would hurt.
    pred[6:8, 1:3, 9:11] = 2
    ref[6:8, 1:3, 9:11] = 2
    decision = decide_per_label([pred], [ref], [1, 2, 3])
    as_version_13 = decide_as(13, [pred], [ref], [1, 2, 3], {"both": [1, 2]})  # regions unused
    assert isinstance(as_version_13, PerLabelDecision) and as_version_13.apply == decision.apply
    assert decision.apply == {"1": True, "2": False, "3": False}
    assert decision.dice_postprocessed["1"] == 1.0 > decision.dice_raw["1"]
    assert decision.dice_postprocessed["2"] < decision.dice_raw["2"] == 1.0
    assert np.isnan(decision.dice_raw["3"])  # absent everywhere: never postprocessed
    assert decision.labels == [1]
    assert (apply_postprocessing(pred, decision.steps) == ref).all()


def test_an_ensembles_decision_pools_its_runs_mean_dice() -> None:
    # label 1: the first run's fold gains (0.80 -> 0.85), the second's loses more (0.60 -> 0.50): pooled, no
    # label 2: both gain; label 3: one run saw no case of it (NaN), the other gains: decided by that one
    first = PerLabelDecision({"1": True, "2": True, "3": True}, {"1": 0.8, "2": 0.7, "3": 0.5},
                             {"1": 0.85, "2": 0.75, "3": 0.6})
    second = PerLabelDecision({"1": False, "2": True, "3": False}, {"1": 0.6, "2": 0.5, "3": float("nan")},
                              {"1": 0.5, "2": 0.52, "3": float("nan")})
    decision = pooled([first, second])
    assert isinstance(decision, PerLabelDecision)
    assert decision.labels == [2, 3]
    assert decision.dice_raw["1"] == pytest.approx(0.7)
    assert decision.dice_postprocessed["1"] == pytest.approx(0.675)
    assert decision.dice_raw["3"] == pytest.approx(0.5)
    assert pooled([second]) is second  # one run: its own decision


def test_decision_round_trips(tmp_path) -> None:
    decision = PerLabelDecision({"1": True, "2": False}, {"1": 0.8, "2": 0.9}, {"1": 0.85, "2": 0.7})
    save_decision(decision, tmp_path)
    assert load_decision(tmp_path) == decision
