"""Region-based training's targets and painting (`regions.py`), as nnU-Net v2's for BraTS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_bench.errors import UsageError
from medseg_bench.regions import (
    paint,
    paint_probabilities,
    region_labels,
    region_targets,
    regions_problem,
    task_region_labels,
)

BRATS = {"whole_tumour": [1, 2, 3], "tumour_core": [2, 3], "enhancing_tumour": [3]}
# overlapping, not nested: b shares 2 with a and 3 with c
CHAIN = {"a": [1, 2], "b": [2, 3], "c": [3]}


def test_brats_regions_paint_the_label_each_adds_in_the_task_files_order() -> None:
    assert region_labels(BRATS) == (1, 2, 3)
    assert region_labels(CHAIN) == (1, 2, 3)
    assert region_labels({"whole": [1, 2], "inner": [2]}) == (1, 2)
    assert region_labels({"one": [1]}) == (1,)


@pytest.mark.parametrize("regions", [BRATS, CHAIN], ids=["nested", "overlapping"])
def test_a_label_map_painted_from_its_own_region_masks_is_itself(regions: dict[str, list[int]]) -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, (2, 1, 5, 6, 7))
    masks = region_targets(torch.from_numpy(label), list(regions.values()))
    assert masks.shape == (2, 3, 5, 6, 7) and masks.dtype == torch.float32
    for r, members in enumerate(regions.values()):  # each mask: the union of the region's labels
        assert np.array_equal(masks[:, r].numpy() > 0, np.isin(label[:, 0], members))
    for b in range(2):
        assert np.array_equal(paint(masks[b].numpy() > 0, region_labels(regions)), label[b, 0])


def test_later_regions_paint_over_earlier_ones_where_predicted_masks_disagree() -> None:
    # voxel 0: whole only; 1: enhancing only (no whole, no core: still 3, nnU-Net's order); 2: whole and
    # enhancing without core (3); 3: whole and core (2); 4: nothing (background); 5: core only (2)
    masks = np.array([[1, 0, 1, 1, 0, 0],
                      [0, 0, 0, 1, 0, 1],
                      [0, 1, 1, 0, 0, 0]], dtype=bool)
    assert paint(masks, region_labels(BRATS)).tolist() == [1, 3, 3, 2, 0, 2]
    # overlapping regions: b over a, c over b
    assert paint(masks, region_labels(CHAIN)).tolist() == [1, 3, 3, 2, 0, 2]


def test_probabilities_are_painted_where_over_one_half() -> None:
    probabilities = np.array([[0.5, 0.51, 0.9, 0.2], [0.0, 0.0, 0.7, 0.6]], dtype=np.float32)
    assert paint_probabilities(probabilities, (1, 2)).tolist() == [0, 1, 2, 2]
    with pytest.raises(ValueError, match="2 region masks, 3 labels"):
        paint(probabilities > 0.5, (1, 2, 3))


@pytest.mark.parametrize(("regions", "labels", "problem"), [
    ({}, [0, 1, 2], "it has no regions (its task file declares none)"),
    ({"liver_and_cancer": [1, 2]}, [0, 1, 2],
     "region 'liver_and_cancer' adds labels 1, 2 beyond the regions after it (each must add exactly one)"),
    ({"enhancing": [3], "core": [2, 3], "whole": [1, 2, 3]}, [0, 1, 2, 3],
     "region 'enhancing' adds no label beyond the regions after it"),  # BraTS's regions in reverse order
    ({"a": [1, 2], "b": [2], "c": [2, 3]}, [0, 1, 2, 3], "region 'b' adds no label"),
    ({"whole": [1, 2]}, [0, 1, 2, 3], "label(s) 3 in no region would never be predicted"),
    ({"all": [0, 1]}, [0, 1], "region 'all' holds the background, 0"),
])
def test_regions_that_cannot_be_painted_unambiguously_are_refused(regions: dict[str, list[int]],
                                                                   labels: list[int], problem: str) -> None:
    found = regions_problem(regions, labels)
    assert found is not None and problem in found
    with pytest.raises(UsageError, match="target regions: "):
        region_labels(regions, labels)


def test_the_task_files_regions_paint_for_brats_only(home) -> None:
    """Of the MSD task files, Task01_BrainTumour's regions paint its labels; Liver's, Prostate's and
    Pancreas's one region of two labels cannot tell them apart; the others have none."""
    from medseg_bench.data.catalog import task_registry

    tasks = task_registry()
    painted = {}
    for name in tasks:
        task = tasks.get(name)
        if regions_problem(task.regions, list(task.labels)) is None:
            painted[name] = task_region_labels(task)
    assert painted == {"Task01_BrainTumour": (1, 2, 3)}
    with pytest.raises(UsageError, match=r"^Task03_Liver: target regions: its regions cannot be painted"):
        task_region_labels(tasks.get("Task03_Liver"))
    with pytest.raises(UsageError, match=r"^Task04_Hippocampus: target regions: it has no regions"):
        task_region_labels(tasks.get("Task04_Hippocampus"))
