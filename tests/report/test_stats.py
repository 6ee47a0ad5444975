"""Report statistics against scipy on fixed inputs: bootstrap, ranks with ties, Holm, Wilcoxon, Friedman."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from medseg_bench.report.plots import pareto_front
from medseg_bench.report.stats import bootstrap_ci, friedman, holm, paired_wilcoxon, rank_values

VALUES = np.array([0.81, 0.77, 0.92, 0.64, 0.88, 0.71, 0.85, 0.79, 0.90, 0.58, 0.83, 0.75])


def test_bootstrap_is_reproducible_and_keyed() -> None:
    first = bootstrap_ci(VALUES, seed=3, key="a")
    assert first == bootstrap_ci(VALUES, seed=3, key="a")
    assert first != bootstrap_ci(VALUES, seed=4, key="a")
    assert first != bootstrap_ci(VALUES, seed=3, key="b")


def test_bootstrap_matches_scipy_percentile_interval() -> None:
    low, high = bootstrap_ci(VALUES, confidence=0.95, n_resamples=20000, seed=1)
    ref = sps.bootstrap((VALUES,), np.mean, confidence_level=0.95, n_resamples=20000, method="percentile",
                        random_state=np.random.default_rng(2)).confidence_interval
    # Different random draws: agreement to Monte Carlo error, far tighter than the interval's width (~0.1).
    assert low == pytest.approx(ref.low, abs=0.006) and high == pytest.approx(ref.high, abs=0.006)
    assert low < VALUES.mean() < high


def test_bootstrap_edge_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert all(math.isnan(v) for v in bootstrap_ci([float("nan")]))
    assert all(math.isnan(v) for v in bootstrap_ci([0.5, float("nan")]))  # one case: no interval
    assert bootstrap_ci([0.7, 0.7, float("nan"), 0.7]) == (0.7, 0.7)
    narrow = bootstrap_ci(VALUES, confidence=0.5, seed=0)
    wide = bootstrap_ci(VALUES, confidence=0.99, seed=0)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_ranks_with_ties_match_scipy() -> None:
    dice = [0.8, 0.9, 0.8, 0.7, 0.9]
    assert rank_values(dice, higher_is_better=True).tolist() == [3.5, 1.5, 3.5, 5.0, 1.5]
    hd95 = [4.0, 2.0, 2.0, 9.0]
    assert rank_values(hd95, higher_is_better=False).tolist() == sps.rankdata(hd95).tolist()
    assert sps.rankdata(hd95).tolist() == [3, 1.5, 1.5, 4]
    assert rank_values([0.5, float("nan"), 0.9, float("nan")], True).tolist() == [2.0, 3.5, 1.0, 3.5]


def test_holm_on_known_values() -> None:
    # Holm: sorted p (0.01, 0.02, 0.03, 0.04) * (4, 3, 2, 1) = (0.04, 0.06, 0.06, 0.04) -> running max.
    adjusted = holm([0.03, 0.01, 0.04, 0.02])
    assert adjusted.tolist() == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # capped at 1
    with_nan = holm([0.01, float("nan"), 0.04])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1])
    assert with_nan[2] == pytest.approx(0.04)


def test_paired_wilcoxon_pairs_by_index_and_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_tuples([(f"case_{i}", i % 2, 0) for i in range(15)],
                                      names=["case", "fold", "seed"])
    a = pd.Series(rng.uniform(0.6, 0.9, 15), index=index)
    b = pd.Series(a.to_numpy() - rng.normal(0.03, 0.04, 15), index=index)
    b.iloc[3] = np.nan  # unpaired: dropped
    shuffled = b.sample(frac=1.0, random_state=1).drop(index[5])  # other order, one case missing
    test = paired_wilcoxon(a, shuffled)
    keep = [i for i in range(15) if i not in (3, 5)]
    ref = sps.wilcoxon(a.to_numpy()[keep], b.to_numpy()[keep])
    assert test.n == 13
    assert test.statistic == pytest.approx(ref.statistic) and test.pvalue == pytest.approx(ref.pvalue)
    assert test.median_diff == pytest.approx(np.median(a.to_numpy()[keep] - b.to_numpy()[keep]))


def test_paired_wilcoxon_degenerate_inputs() -> None:
    a = pd.Series([0.5, 0.6, 0.7], index=["x", "y", "z"])
    same = paired_wilcoxon(a, a.copy())
    assert same.pvalue == 1.0 and same.note == "identical scores"
    disjoint = paired_wilcoxon(a, pd.Series([0.1], index=["w"]))
    assert disjoint.n == 0 and math.isnan(disjoint.pvalue)


def test_friedman_matches_scipy_on_complete_cases() -> None:
    rng = np.random.default_rng(5)
    table = pd.DataFrame(rng.uniform(0.5, 0.9, (10, 4)), columns=list("abcd"))
    table.loc[2, "c"] = np.nan  # this case is left out for every configuration
    test = friedman(table)
    complete = table.drop(index=2)
    ref = sps.friedmanchisquare(*complete.to_numpy().T)
    assert (test.n, test.k) == (9, 4)
    assert test.statistic == pytest.approx(ref.statistic) and test.pvalue == pytest.approx(ref.pvalue)
    two = friedman(table[["a", "b"]])
    assert math.isnan(two.pvalue) and "3 configurations" in two.note


def test_pareto_front() -> None:
    cost = np.array([1.0, 2.0, 3.0, 2.5, 0.5, np.nan])
    dice = np.array([0.7, 0.8, 0.85, 0.75, 0.6, 0.99])
    assert pareto_front(cost, dice).tolist() == [4, 0, 1, 2]  # 3 is beaten by 1; NaN cost is not on it
    hd95 = np.array([5.0, 3.0, 4.0])
    assert pareto_front(np.array([1.0, 2.0, 3.0]), hd95, higher=False).tolist() == [0, 1]


def test_the_direction_of_a_paired_test_ignores_ties_as_the_test_does() -> None:
    # Equal on 9 cases, a ahead on 8: the median difference is 0, yet every untied pair favours a.
    a = pd.Series([0.8] * 9 + [0.85] * 8)
    b = pd.Series([0.8] * 17)
    test = paired_wilcoxon(a, b)
    assert test.median_diff == 0.0 and test.pvalue < 0.01 and test.favours == 1
    assert paired_wilcoxon(b, a).favours == -1


def test_means_equal_but_for_the_last_bits_tie() -> None:
    first, second = (0.1 + 0.2 + 0.3) / 3, (0.3 + 0.2 + 0.1) / 3
    assert first != second  # summed in another order
    assert rank_values([first, second, 0.1], higher_is_better=True).tolist() == [1.5, 1.5, 3.0]
