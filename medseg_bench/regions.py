"""Region-based training (`RunSpec.target == "regions"`), as nnU-Net v2 trains a task with regions (BraTS).

The network has one output channel per region of the task file, in its order; each channel's target is the
region's mask (the union of its labels), built from the label map on the fly (`region_targets`: the cache
keeps label maps); the loss is a sigmoid one (`losses.REGION_LOSSES`). A prediction is each region's sigmoid
probability over 0.5, painted into a label map in the task file's order (`paint`, nnU-Net's
`regions_class_order`), each region painting the one label it adds: the label of the region that is in no
later region (`region_labels`). Task01_BrainTumour's whole tumour (1, 2, 3), tumour core (2, 3) and enhancing
tumour (3) paint 1, 2 and 3: a voxel in all three is 3, later regions painting over earlier ones.

Example:
    >>> region_labels({"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]})
    (1, 2, 3)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg_bench.errors import UsageError

if TYPE_CHECKING:
    import torch


def regions_problem(regions: Mapping[str, Sequence[int]], labels: Sequence[int]) -> str | None:
    """Why a task with `regions` (its task file's order) and label values `labels` cannot be trained region
    by region, or None: no regions; a region holding the background; a foreground label in no region (never
    predicted); a region that adds no label, or more than one, beyond the regions after it (its voxels could
    not be painted with one label: Task03_Liver's one region, liver and cancer, cannot tell its two labels
    apart)."""
    if not regions:
        return "it has no regions (its task file declares none)"
    for name, members in regions.items():
        if 0 in members:
            return f"region '{name}' holds the background, 0"
    covered = {label for members in regions.values() for label in members}
    outside = sorted(set(labels) - {0} - covered)
    if outside:
        return f"label(s) {', '.join(map(str, outside))} in no region would never be predicted"
    names = list(regions)
    for i, name in enumerate(names):
        later = {label for other in names[i + 1:] for label in regions[other]}
        adds = sorted(set(regions[name]) - later)
        if len(adds) != 1:
            what = "no label" if not adds else f"labels {', '.join(map(str, adds))}"
            return (f"its regions cannot be painted into a label map in their order: region '{name}' adds "
                    f"{what} beyond the regions after it (each must add exactly one)")
    return None


def region_labels(regions: Mapping[str, Sequence[int]],
                  labels: Sequence[int] | None = None) -> tuple[int, ...]:
    """The label each region paints, in the task file's order: its one label in no later region (UsageError,
    saying why, where `regions_problem` finds one; `labels`: the task's label values, default those in the
    regions)."""
    covered = sorted({label for members in regions.values() for label in members} | {0})
    problem = regions_problem(regions, covered if labels is None else labels)
    if problem is not None:
        raise UsageError(f"target regions: {problem}")
    names = list(regions)
    return tuple(min(set(regions[name]) - {label for other in names[i + 1:] for label in regions[other]})
                 for i, name in enumerate(names))


def task_region_labels(task: Any) -> tuple[int, ...]:
    """`region_labels` of a `TaskSpec`, its name in the UsageError."""
    try:
        return region_labels(task.regions, list(task.labels))
    except UsageError as exc:
        raise UsageError(f"{task.name}: {exc}") from None


def output_channels(spec: Any, task: Any) -> int:
    """The channels run `spec`'s network predicts on `task`: one per region, or one per class."""
    return len(task.regions) if spec.target == "regions" else int(task.num_classes)


def region_members(task: Any) -> tuple[tuple[int, ...], ...]:
    """Each region's labels, in the task file's order."""
    return tuple(tuple(members) for members in task.regions.values())


def region_targets(label: torch.Tensor, members: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, R, *spatial) float masks, one per region (the union of its labels), of a (B, 1, *spatial) label
    map: nnU-Net's `ConvertSegmentationToRegionsTransform`."""
    import torch

    masks = [torch.isin(label, torch.tensor(list(labels), dtype=label.dtype, device=label.device))
             for labels in members]
    return torch.cat(masks, dim=1).float()


def paint(masks: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """A (Z, Y, X) uint8 label map from (R, Z, Y, X) boolean region masks: each region painted with its label
    (`region_labels`) in order, a later region over an earlier one; no region: background (nnU-Net's
    `convert_probabilities_to_segmentation` with `regions_class_order`)."""
    if masks.shape[0] != len(labels):
        raise ValueError(f"{masks.shape[0]} region masks, {len(labels)} labels to paint them with")
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for mask, label in zip(masks, labels, strict=True):
        out[mask] = label
    return out


def paint_probabilities(probabilities: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """`paint` of (R, Z, Y, X) sigmoid probabilities, each region where its probability is over 0.5."""
    return paint(probabilities > 0.5, labels)


def recorded_regions(task: Any) -> list[dict[str, Any]]:
    """The regions a region run trains on, in order, as its setup.json records them (a list: JSON objects'
    keys are written sorted; `regions_change` compares them with the task file's later: the network's
    channels are the regions in this order)."""
    return [{"name": name, "labels": [int(label) for label in members]}
            for name, members in task.regions.items()]


def regions_change(setup: Mapping[str, Any], task: Any) -> str | None:
    """What differs between the regions a region run's setup.json recorded and the task file's now (a change
    of their labels or order would paint its channels as other labels, silently), or None (the same, or a
    run that recorded none: not a region run)."""
    then = setup.get("regions")
    if then is None:
        return None
    return _recorded_change("regions", then, recorded_regions(task),
                            lambda regions: "; ".join(f"{r['name']}={','.join(map(str, r['labels']))}"
                                                      for r in regions))


def _recorded_change(what: str, then: Any, now: Any, show: Any) -> str | None:
    """"the run trained on WHAT THEN; the task file declares NOW", each as `show` writes it (a value it cannot
    write, from an edited setup.json, as Python's repr), or None where they are the same."""
    if then == now:
        return None

    def shown(recorded: Any) -> str:
        try:
            return str(show(recorded))
        except (TypeError, KeyError):
            return repr(recorded)

    return f"the run trained on {what} {shown(then)}; the task file declares {shown(now)}"


def recorded_labels(task: Any) -> list[dict[str, Any]]:
    """The task's labels as a run's setup.json records them, by value (`labels_change` compares them with
    the task file's later: a label network's channels are these values, and a region run paints them)."""
    return [{"value": int(value), "name": str(name)} for value, name in sorted(task.labels.items())]


def labels_change(setup: Mapping[str, Any], task_version: int, task: Any) -> str | None:
    """What differs between the labels a run's setup.json recorded and the task file's now, or None. A run
    started before 2026-12-04 recorded none: the task file's `version` it trained on (its spec's
    `task_version`) stands for them. A label removed made predict's checkpoint load fail with PyTorch's
    "size mismatch" (blamed on the checkpoint); two names swapped painted each as the other, silently."""
    then = setup.get("labels")
    if then is None:
        if task_version != task.version:
            return (f"the run trained on version {task_version} of the task file, which is version "
                    f"{task.version} now (its labels may differ; the run recorded none)")
        return None
    return _recorded_change("labels", then, recorded_labels(task),
                            lambda labels: ", ".join(f"{label['value']}={label['name']}" for label in labels))
