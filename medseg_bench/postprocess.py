"""Largest-connected-component postprocessing per label, decided on held-out cases as nnU-Net does.

For each foreground label, every case's prediction is scored (Dice) as it is and with all but the largest
connected component of that label removed (set to background); the label is postprocessed when that raises
the mean Dice over the cases. Labels are decided independently: removing voxels of one label changes no other
label's Dice. The decision and both scores go into the run's `summary.json` and `postprocessing.json`, which
`medseg-bench predict` applies. Deciding and reporting on the same fold is nnU-Net's practice; it flatters the
postprocessed score slightly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

FILENAME = "postprocessing.json"


def keep_largest_component(pred: np.ndarray, label: int) -> np.ndarray:
    """A copy of `pred` where only the largest (fully connected) component of `label` keeps that label;
    components tied for largest all keep it, as nnU-Net's `remove_all_but_largest_component`."""
    mask = pred == label
    components, count = ndimage.label(mask, structure=np.ones((3,) * pred.ndim, dtype=bool))
    out = pred.copy()
    if count <= 1:
        return out
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    out[mask & (sizes[components] != sizes.max())] = 0
    return out


def apply_postprocessing(pred: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """Keep only the largest component of each label in `labels`."""
    for label in labels:
        pred = keep_largest_component(pred, label)
    return pred


def _dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    denom = int(p.sum()) + int(r.sum())
    return float("nan") if denom == 0 else 2 * int((p & r).sum()) / denom


@dataclass
class Decision:
    """Per label: whether to keep the largest component only, with the mean Dice without and with it."""

    apply: dict[str, bool] = field(default_factory=dict)
    dice_raw: dict[str, float] = field(default_factory=dict)
    dice_postprocessed: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[int]:
        return sorted(int(k) for k, v in self.apply.items() if v)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["labels_postprocessed"] = self.labels
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Decision:
        return cls({str(k): bool(v) for k, v in data["apply"].items()},
                   {str(k): float(v) for k, v in data.get("dice_raw", {}).items()},
                   {str(k): float(v) for k, v in data.get("dice_postprocessed", {}).items()})


def decide(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray], labels: Iterable[int]) -> Decision:
    """Decide per label whether largest-component postprocessing raises the mean Dice over the cases."""
    decision = Decision()
    for label in labels:
        raw = [_dice(p, r, label) for p, r in zip(preds, refs, strict=True)]
        lcc = [_dice(keep_largest_component(p, label), r, label) for p, r in zip(preds, refs, strict=True)]
        _settle(decision, str(label), raw, lcc)
    return decision


def _settle(decision: Decision, key: str, raw: Sequence[float], lcc: Sequence[float]) -> None:
    """Record label `key`'s mean Dice without (`raw`) and with (`lcc`) the step; apply it if higher."""
    raw_mean = float(np.nanmean(raw)) if not np.all(np.isnan(raw)) else float("nan")
    lcc_mean = float(np.nanmean(lcc)) if not np.all(np.isnan(lcc)) else float("nan")
    decision.dice_raw[key], decision.dice_postprocessed[key] = raw_mean, lcc_mean
    decision.apply[key] = bool(np.isfinite(raw_mean) and np.isfinite(lcc_mean) and lcc_mean > raw_mean)


def pooled(decisions: Sequence[Decision]) -> Decision:
    """One decision for an ensemble of runs (e.g. the folds of a configuration), each decided on its own
    held-out cases: per label, the runs' mean Dice without and with the largest-component step, averaged over
    the runs (nnU-Net decides on the pooled cross-validation predictions), and the same rule as `decide`."""
    if len(decisions) == 1:
        return decisions[0]
    out = Decision()
    for key in sorted({k for d in decisions for k in d.apply}, key=int):
        _settle(out, key, [d.dice_raw.get(key, float("nan")) for d in decisions],
                [d.dice_postprocessed.get(key, float("nan")) for d in decisions])
    return out


def save_decision(decision: Decision, folder: Path) -> Path:
    from medseg_bench.files import write_json_atomic

    path = folder / FILENAME
    write_json_atomic(path, decision.to_dict())
    return path


def load_decision(folder: Path) -> Decision | None:
    """The run's decision, or None when the run was not postprocessed."""
    from medseg_bench.errors import DataError
    from medseg_bench.files import parse_json

    path = folder / FILENAME
    if not path.is_file():
        return None
    try:
        return Decision.from_dict(parse_json(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: malformed postprocessing decision ({exc})") from None
