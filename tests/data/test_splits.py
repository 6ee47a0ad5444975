"""Splits: deterministic folds; patient-level folds with a task's group_pattern."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.preprocess import prepare_task
from medseg_bench.data.splits import case_groups, make_splits
from medseg_bench.errors import DataError, UsageError
from tests.conftest import make_synthetic_task, write_task_file


def test_ungrouped_splits_are_unchanged_by_the_grouping_code() -> None:
    ids = [f"c{i:03d}" for i in range(23)]
    # Pinned: splits of existing caches must not move (fold 0's held-out cases).
    assert make_splits(ids, 5)[0]["val"] == sorted(make_splits(list(reversed(ids)), 5)[0]["val"])
    assert make_splits(ids, 5) == make_splits(ids, 5, group_pattern=None)


def test_patients_never_span_train_and_val() -> None:
    ids = [f"pat{p:02d}_scan{s}" for p in range(11) for s in range(1 + p % 3)]
    splits = make_splits(ids, 4, group_pattern=r"^(?P<patient>pat\d+)_")
    assert sorted(c for f in splits for c in f["val"]) == sorted(ids)
    for fold in splits:
        val_patients = {c.split("_")[0] for c in fold["val"]}
        train_patients = {c.split("_")[0] for c in fold["train"]}
        assert not val_patients & train_patients
        assert set(fold["train"]) | set(fold["val"]) == set(ids)
    sizes = [len(f["val"]) for f in splits]
    assert max(sizes) - min(sizes) <= 3  # balanced by case count (largest patients first)
    assert splits == make_splits(list(reversed(ids)), 4, group_pattern=r"^(?P<patient>pat\d+)_")


def test_group_pattern_forms() -> None:
    ids = ["a_1", "a_2", "b_1"]
    assert case_groups(ids, r"^(\w)_") == {"a_1": "a", "a_2": "a", "b_1": "b"}
    assert case_groups(ids, r"^\w") == {"a_1": "a", "a_2": "a", "b_1": "b"}
    with pytest.raises(DataError, match="does not match case id 'b_1'"):
        case_groups(ids, r"^a")
    with pytest.raises(UsageError, match="not a valid regular expression"):
        case_groups(ids, r"(")
    with pytest.raises(DataError, match="2 patients"):
        make_splits(ids, 3, group_pattern=r"^(\w)_")


def test_task_file_group_pattern_reaches_the_splits(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task90_Synth", group_pattern=r"^(?P<patient>pat\d)_")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=6)
    meta = json.loads((src / "dataset.json").read_text())
    for i, entry in enumerate(meta["training"]):  # two scans per patient: pat0_s0, pat0_s1, pat1_s0, ...
        for key in ("image", "label"):
            old = src / entry[key]
            entry[key] = entry[key].replace(old.name, f"pat{i // 2}_s{i % 2}.nii.gz")
            old.rename(src / entry[key])
    (src / "dataset.json").write_text(json.dumps(meta))
    data = tmp_path / "data"
    fetch_task(get_task("Task90_Synth"), data, str(src), progress=False)
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    for fold in prepared.splits:
        assert len(fold["val"]) == 2 and fold["val"][0].split("_")[0] == fold["val"][1].split("_")[0]


def test_a_splits_file_naming_excluded_cases_says_how_to_make_new_ones(tmp_path: Path) -> None:
    from medseg_bench.data.splits import load_or_make_splits

    cases = [f"c{i}" for i in range(6)]
    load_or_make_splits(tmp_path, cases, 2)
    with pytest.raises(DataError, match=r"not usable: c0 .*delete it to make new splits"):
        load_or_make_splits(tmp_path, cases[1:], 2)  # c0 excluded since
    (tmp_path / "splits_2fold.json").unlink()
    remade = load_or_make_splits(tmp_path, cases[1:], 2)
    assert all("c0" not in fold["train"] + fold["val"] for fold in remade)


def test_too_many_folds_names_the_task_and_the_folds_that_can_be_made(tmp_path: Path) -> None:
    # A sweep of several tasks said "4 usable cases cannot be split into 5 folds": of which task, and what
    # to do, it did not say.
    from medseg_bench.data.splits import load_or_make_splits

    folder = tmp_path / "preprocessed" / "Task90_Synth"
    folder.mkdir(parents=True)
    cases = [f"case_{i}" for i in range(4)]
    with pytest.raises(DataError, match=r"^Task90_Synth: 4 usable cases cannot be split into 5 folds; use "
                                        r"--num-folds 4 or fewer \(at least 2\)$"):
        load_or_make_splits(folder, cases, 5)
    assert not (folder / "splits_5fold.json").exists()
    with pytest.raises(DataError, match=r"^1 usable case cannot be split into 2 folds \(2 are the fewest "):
        make_splits(cases[:1], 2)
    with pytest.raises(DataError, match=r"^2 patients \(by group_pattern\) cannot be split into 3 folds; use "
                                        r"--num-folds 2 or fewer"):
        make_splits(["a_1", "a_2", "b_1"], 3, group_pattern=r"^[a-z]+")
    assert len(load_or_make_splits(folder, cases, 4)) == 4
