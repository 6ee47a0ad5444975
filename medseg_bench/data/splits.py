"""Deterministic k-fold splits over case ids (independent of the run seed), saved as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg_bench.data.io import write_json_atomic
from medseg_bench.errors import DataError

SPLIT_SEED = 12345


def make_splits(case_ids: list[str], num_folds: int) -> list[dict[str, list[str]]]:
    if len(case_ids) < num_folds:
        raise DataError(f"{len(case_ids)} usable cases cannot be split into {num_folds} folds")
    ordered = sorted(case_ids)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ordered))
    folds = np.array_split(order, num_folds)
    splits = []
    for k in range(num_folds):
        val = sorted(ordered[i] for i in folds[k])
        train = sorted(c for c in ordered if c not in set(val))
        splits.append({"train": train, "val": val})
    return splits


def load_or_make_splits(folder: Path, case_ids: list[str], num_folds: int) -> list[dict[str, list[str]]]:
    """`splits_<k>fold.json` in `folder`: made once, then honoured (a user may replace it with their own)."""
    path = folder / f"splits_{num_folds}fold.json"
    if path.is_file():
        try:
            splits = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: invalid JSON ({exc})") from None
        known = set(case_ids)
        for fold in splits:
            unknown = sorted((set(fold["train"]) | set(fold["val"])) - known)
            if unknown:
                raise DataError(f"{path}: lists cases that are not usable: {', '.join(unknown[:5])}")
        if len(splits) != num_folds:
            raise DataError(f"{path}: holds {len(splits)} folds, expected {num_folds}")
        return splits
    splits = make_splits(case_ids, num_folds)
    write_json_atomic(path, splits)
    return splits
