"""Largest-component postprocessing as runs of pipeline version 13 and older decided it: each foreground label
on its own, on the held-out cases, applied where its largest component alone raises its mean Dice (no
foreground step, labels only, regions or not). Their `postprocessing.json` holds `apply`, `dice_raw`,
`dice_postprocessed` and `labels_postprocessed` (written, not read); `postprocess.load_decision` reads it, and
predict applies it as it was decided.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np

from medseg_bench.postprocess import Step, candidate_steps, dice_before_after, per_case


@dataclass
class PerLabelDecision:
    """Per label: whether to keep the largest component only, with the mean Dice without and with it."""

    apply: dict[str, bool] = field(default_factory=dict)
    dice_raw: dict[str, float] = field(default_factory=dict)
    dice_postprocessed: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[int]:
        return sorted(int(k) for k, v in self.apply.items() if v)

    @property
    def steps(self) -> tuple[Step, ...]:
        """Each applied label's step (in any order: one label's never changes another's voxels)."""
        return tuple(Step("label", str(label), (label,)) for label in self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels_postprocessed"] = self.labels
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerLabelDecision:
        return cls({str(k): bool(v) for k, v in data["apply"].items()},
                   {str(k): float(v) for k, v in data.get("dice_raw", {}).items()},
                   {str(k): float(v) for k, v in data.get("dice_postprocessed", {}).items()})


def decide_per_label(preds: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                     labels: Iterable[int]) -> PerLabelDecision:
    """Version 13's decision: per label, whether its largest component alone raises its mean Dice."""
    decision = PerLabelDecision()
    for step in candidate_steps(list(labels)):
        pairs = per_case(partial(dice_before_after, step=step), preds, refs)
        _settle(decision, step.name, [p[0] for p in pairs], [p[1] for p in pairs])
    return decision


def _settle(decision: PerLabelDecision, key: str, raw: Sequence[float], lcc: Sequence[float]) -> None:
    """Record label `key`'s mean Dice without (`raw`) and with (`lcc`) the step; apply it if higher."""
    raw_mean = float(np.nanmean(raw)) if not np.all(np.isnan(raw)) else float("nan")
    lcc_mean = float(np.nanmean(lcc)) if not np.all(np.isnan(lcc)) else float("nan")
    decision.dice_raw[key], decision.dice_postprocessed[key] = raw_mean, lcc_mean
    decision.apply[key] = bool(np.isfinite(raw_mean) and np.isfinite(lcc_mean) and lcc_mean > raw_mean)


def pooled_per_label(decisions: Sequence[PerLabelDecision]) -> PerLabelDecision:
    """Version 13's pooling: per label, the runs' mean Dice without and with the step averaged over the runs
    (each run's mean counts alike, whatever its number of cases), and the same rule as `decide_per_label`."""
    out = PerLabelDecision()
    for key in sorted({k for d in decisions for k in d.apply}, key=int):
        _settle(out, key, [d.dice_raw.get(key, float("nan")) for d in decisions],
                [d.dice_postprocessed.get(key, float("nan")) for d in decisions])
    return out
