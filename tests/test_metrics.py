"""Metrics against reference values: DeepMind's surface-distance, MONAI, brute force, and analytic boxes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medseg_bench.errors import DataError, UnknownNameError, UsageError
from medseg_bench.metrics import (
    METRIC_NAMES,
    METRICS,
    MetricSettings,
    compute_assd,
    compute_dice,
    compute_hausdorff,
    compute_hd95,
    compute_jaccard,
    compute_nsd,
    compute_precision,
    compute_recall,
    compute_surface_distances,
    compute_volume_diff,
    evaluate_case,
    evaluate_folders,
)
from medseg_bench.metrics import surface as surface_module
from medseg_bench.metrics.surface import _code_to_weight

SPACING_3D = (2.5, 1.0, 0.8)  # array (z, y, x) order: thick slices
SPACING_2D = (0.7, 1.3)


def blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Smooth random blobs (one or a few components), fixed by the generator's seed."""
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.55


def blob_pairs(dims: int, count: int, size: int = 14) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7 + dims)
    pairs = []
    while len(pairs) < count:
        pred, ref = blob(rng, (size,) * dims), blob(rng, (size,) * dims)
        if pred.any() and ref.any():
            pairs.append((pred, ref))
    return pairs


# --- brute force: explicit enumeration of surface elements, pairwise distances --------------------------


def brute_force_elements(mask: np.ndarray, spacing: tuple[float, ...], surface: str):
    """(grid positions, weights) of every surface element, by looping over the grid.

    Positions are integer grid indices (voxels, or corners offset by half a voxel), so that distances computed
    from index differences times the spacing are exact, as in scipy's distance transform.
    """
    padded = np.pad(mask.astype(int), 1)
    positions, weights = [], []
    if surface == "voxel":
        for index in itertools.product(*(range(n) for n in mask.shape)):
            if not mask[index]:
                continue
            neighbours = []
            for axis in range(mask.ndim):
                for step in (-1, 1):
                    moved = list(np.array(index) + 1)
                    moved[axis] += step
                    neighbours.append(padded[tuple(moved)])
            if min(neighbours) == 0:
                positions.append(index)
                weights.append(1.0)
        return np.array(positions).reshape(-1, mask.ndim), np.array(weights)
    table = _code_to_weight(tuple(spacing))
    offsets = list(itertools.product((0, 1), repeat=mask.ndim))  # DeepMind bit order: first offset = top bit
    for corner in itertools.product(*(range(n + 1) for n in mask.shape)):
        code = 0
        for offset in offsets:
            code = (code << 1) | int(padded[tuple(c + o for c, o in zip(corner, offset, strict=True))])
        if code not in (0, 2 ** len(offsets) - 1):
            positions.append(corner)
            weights.append(table[code])
    return np.array(positions), np.array(weights)


def brute_force_metrics(pred, ref, spacing, surface, tolerance_mm):
    p_pos, p_w = brute_force_elements(pred, spacing, surface)
    r_pos, r_w = brute_force_elements(ref, spacing, surface)
    steps_mm = (p_pos[:, None, :] - r_pos[None, :, :]) * np.asarray(spacing)
    pairwise = np.sqrt((steps_mm**2).sum(-1))
    p_to_r, r_to_p = pairwise.min(axis=1), pairwise.min(axis=0)

    def percentile(d, w):
        if surface == "voxel":
            return np.percentile(d, 95)
        order = np.argsort(d)
        cumulative = np.cumsum(w[order]) / w.sum()
        return d[order][min(np.searchsorted(cumulative, 0.95), d.size - 1)]

    return {
        "hd": max(p_to_r.max(), r_to_p.max()),
        "hd95": max(percentile(p_to_r, p_w), percentile(r_to_p, r_w)),
        "assd": (p_to_r @ p_w + r_to_p @ r_w) / (p_w.sum() + r_w.sum()),
        "nsd": (p_w[p_to_r <= tolerance_mm].sum() + r_w[r_to_p <= tolerance_mm].sum())
        / (p_w.sum() + r_w.sum()),
    }


def our_metrics(pred, ref, spacing, surface, tolerance_mm):
    sd = compute_surface_distances(pred, ref, spacing, surface)
    return {
        "hd": compute_hausdorff(sd),
        "hd95": compute_hd95(sd),
        "assd": compute_assd(sd),
        "nsd": compute_nsd(sd, tolerance_mm),
    }


@pytest.mark.parametrize("surface", ["area", "voxel"])
@pytest.mark.parametrize("dims", [2, 3])
def test_matches_brute_force_enumeration(dims, surface):
    spacing = SPACING_3D if dims == 3 else SPACING_2D
    for pred, ref in blob_pairs(dims, 3, size=9 if dims == 3 else 16):
        expected = brute_force_metrics(pred, ref, spacing, surface, tolerance_mm=1.3)
        actual = our_metrics(pred, ref, spacing, surface, tolerance_mm=1.3)
        for name in expected:
            assert actual[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-9), name


# --- DeepMind's surface-distance (PyPI `surface-distance`, its own code) ----------------------------------


def deepmind_metrics(pred, ref, spacing, tolerance_mm):
    sd_pkg = pytest.importorskip("surface_distance")
    dm = sd_pkg.compute_surface_distances(ref, pred, spacing)  # its order is (ground truth, prediction)
    areas_ref, areas_pred = dm["surfel_areas_gt"], dm["surfel_areas_pred"]
    pooled = dm["distances_gt_to_pred"] @ areas_ref + dm["distances_pred_to_gt"] @ areas_pred
    return {
        "hd": sd_pkg.compute_robust_hausdorff(dm, 100),
        "hd95": sd_pkg.compute_robust_hausdorff(dm, 95),
        "assd": pooled / (areas_ref.sum() + areas_pred.sum()),
        "nsd": sd_pkg.compute_surface_dice_at_tolerance(dm, tolerance_mm),
    }


@pytest.mark.parametrize("dims", [2, 3])
def test_area_convention_matches_deepmind(dims):
    spacing = SPACING_3D if dims == 3 else SPACING_2D
    for tolerance_mm in (0.8, 1.0, 2.5):  # 0.8 and 2.5 are grid distances: the float32 edge case
        for pred, ref in blob_pairs(dims, 4, size=20):
            expected = deepmind_metrics(pred, ref, spacing, tolerance_mm)
            actual = our_metrics(pred, ref, spacing, "area", tolerance_mm)
            for name in expected:
                assert actual[name] == pytest.approx(expected[name], rel=1e-6), (name, tolerance_mm)


def test_area_table_matches_deepmind():
    lookup = pytest.importorskip("surface_distance.lookup_tables")
    for spacing in [(1.0, 1.0, 1.0), SPACING_3D]:
        expected = lookup.create_table_neighbour_code_to_surface_area(spacing)
        np.testing.assert_allclose(_code_to_weight(spacing), expected, rtol=1e-12)
    expected_2d = lookup.create_table_neighbour_code_to_contour_length(SPACING_2D)
    np.testing.assert_allclose(_code_to_weight(SPACING_2D), expected_2d, rtol=1e-12)


def test_masks_touching_the_image_border_match_deepmind():
    ref = np.zeros((6, 10, 10), bool)
    ref[:, :4, :] = True  # touches five of the six faces of the image
    pred = np.zeros_like(ref)
    pred[1:, :6, 2:] = True
    expected = deepmind_metrics(pred, ref, SPACING_3D, 1.0)
    actual = our_metrics(pred, ref, SPACING_3D, "area", 1.0)
    for name in expected:
        assert actual[name] == pytest.approx(expected[name], rel=1e-6), name


@pytest.mark.parametrize(("margin_mm", "neighbour_mm"), [(0.0, 0.0), (0.0, 10.0), (5.0, 10.0)])
@pytest.mark.parametrize("surface", ["area", "voxel"])
def test_stray_islands_and_disjoint_masks_match_brute_force(monkeypatch, margin_mm, neighbour_mm, surface):
    """In-plane distance transforms run on per-slice crops (the slice's surface box plus a margin, grown to
    hold the other surface's nearby elements); points outside a crop they need go to a k-d tree. Zero margin
    and no growth send many points down that path."""
    monkeypatch.setattr(surface_module, "_MARGIN_MM", margin_mm)
    monkeypatch.setattr(surface_module, "_NEIGHBOUR_MM", neighbour_mm)
    ref = np.zeros((10, 24, 24), bool)
    ref[2:7, 4:14, 5:15] = True
    pred = np.roll(ref, (1, 2), axis=(0, 1))
    pred[8:10, 20:23, 0:2] = True  # a stray island in a far corner
    hollow = ref.copy()
    hollow[3:6, 7:11, 8:12] = False
    cube = np.zeros_like(ref)
    cube[4, 8:10, 9:11] = True  # inside the hollow: the boxes overlap, the surfaces are apart
    far = np.zeros_like(ref)
    far[7:10, 18:24, 18:24] = True  # boxes disjoint
    for a, b in [(pred, ref), (ref, pred), (cube, hollow), (hollow, cube), (far, ref)]:
        expected = brute_force_metrics(a, b, SPACING_3D, surface, tolerance_mm=1.0)
        actual = our_metrics(a, b, SPACING_3D, surface, tolerance_mm=1.0)
        for name in expected:
            assert actual[name] == pytest.approx(expected[name], rel=1e-6), name


def lumpy_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An organ-like lumpy ellipsoid (or ellipse), a prediction of it with other lumps, moved by one voxel and
    with a stray island in a corner: caps, bulges and far points, as in bench/metrics.py but small."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]

    def lumpy(shift: int) -> np.ndarray:
        radius = sum(((g - n / 2 - shift * (axis > 0)) / (0.35 * n)) ** 2
                     for axis, (g, n) in enumerate(zip(grids, shape, strict=True)))
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
        return np.sqrt(radius) <= 1.0 + noise * (0.1 / noise.std())

    ref, pred = lumpy(0), lumpy(1)
    pred[(slice(0, 3),) * len(shape)] = True  # the island
    return pred, ref


@pytest.mark.parametrize(("margin_mm", "neighbour_mm"), [(0.0, 0.0), (5.0, 10.0)])
@pytest.mark.parametrize("surface", ["area", "voxel"])
@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((24, 56, 60), (2.5, 0.8, 0.8)), ((40, 40, 40), (1.0, 1.0, 1.0)), ((80, 90), (0.7, 1.3))],
)
def test_every_distance_matches_a_full_distance_transform(
    monkeypatch, margin_mm, neighbour_mm, surface, shape, spacing
):
    """Element by element, against scipy's distance transform of the whole box (float64)."""
    monkeypatch.setattr(surface_module, "_MARGIN_MM", margin_mm)
    monkeypatch.setattr(surface_module, "_NEIGHBOUR_MM", neighbour_mm)
    for seed in range(2):
        pred, ref = lumpy_pair(shape, seed)
        sd = compute_surface_distances(pred, ref, spacing, surface)
        box = surface_module.union_box([surface_module.nonzero_box(pred), surface_module.nonzero_box(ref)])
        grids = [surface_module._surface_elements(surface_module._zero_padded(m[box]), spacing, surface)
                 for m in (pred, ref)]
        (pred_border, pred_index, _), (ref_border, ref_index, _) = grids
        to_ref = ndimage.distance_transform_edt(~ref_border, sampling=spacing).ravel()[pred_index]
        to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing).ravel()[ref_index]
        np.testing.assert_allclose(sd.pred_to_ref_mm, to_ref, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(sd.ref_to_pred_mm, to_pred, rtol=1e-6, atol=1e-9)


def test_area_weighted_percentile_matches_a_full_sort():
    """The percentile sorts only the upper part of the distances; check it against sorting them all."""
    rng = np.random.default_rng(3)
    for size in [1, 2, 5, 20, 100, 1000, 20000]:
        for _ in range(5):
            distances = rng.integers(0, 40, size) * 0.5  # many ties, as on a grid
            weights = rng.choice([0.5, 1.0, 2.0, 3.25], size)  # sums exact in binary floating point
            for percentile in (50.0, 95.0, 99.0, 100.0):
                order = np.argsort(distances, kind="stable")
                cumulative = np.cumsum(weights[order]) / weights.sum()
                index = min(int(np.searchsorted(cumulative, percentile / 100)), size - 1)
                expected = distances[order[index]]
                assert surface_module._percentile(distances, weights, percentile, "area") == expected


# --- analytic: a box and the same box moved by k slices ---------------------------------------------------


def shifted_boxes(k: int, side: int = 60, slices: int = 12):
    shape = (slices + k + 4, side + 4, side + 4)
    ref = np.zeros(shape, bool)
    ref[2 : 2 + slices, 2 : 2 + side, 2 : 2 + side] = True
    pred = np.roll(ref, k, axis=0)
    return pred, ref


def analytic_box_metrics(k: int, tolerance_mm: float, side: int = 60, slices: int = 12):
    """Surfaces of an a x a x H box and its copy moved by c = k slices (spacing 2.5, 1, 1 mm), in closed form.

    Per surface (both directions are alike): the far cap is at distance c; the cap inside the other box at
    min(c, distance to the nearest side wall); the walls alongside the other box at 0; the wall strip of
    height c beyond it at its height h. HD = HD95 = c, and ASSD integrates these over the continuous surface.
    For NSD the grid matters at these sizes: surface elements sit on voxel corners, each standing for half a
    voxel either side, so a band of elements within t of an edge is s * (floor(t / s) + 1/2) wide, not t.
    """
    a, height, c = float(side), slices * 2.5, k * 2.5
    inner_cap_sum = 4 * (a * c**2 / 2 - 2 * c**3 / 3) + c * (a - 2 * c) ** 2
    wall_strip_sum = 4 * a * c**2 / 2
    total_area = 2 * a * a + 4 * a * height

    def band_mm(spacing_mm: float) -> float:
        return min(c, spacing_mm * (math.floor(tolerance_mm / spacing_mm) + 0.5))

    in_plane, along_z = band_mm(1.0), band_mm(2.5)
    within = 4 * a * (height - c) + 4 * a * along_z + (a * a - (a - 2 * in_plane) ** 2)
    if tolerance_mm >= c:  # every element is within c of the other surface
        within = total_area
    return {
        "hd": c,
        "hd95": c,
        "assd": (a * a * c + inner_cap_sum + wall_strip_sum) / total_area,
        "nsd": within / total_area,
    }


@pytest.mark.parametrize("k", [1, 2, 3])
def test_boxes_offset_by_k_slices_match_analytic_values(k):
    pred, ref = shifted_boxes(k)
    for tolerance_mm in (1.0, 2.0, 3.0):
        expected = analytic_box_metrics(k, tolerance_mm)
        rows = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), (2.5, 1.0, 1.0), [1],
                             MetricSettings(nsd_tolerance_mm=tolerance_mm))
        for name, value in expected.items():
            assert rows[0][name] == pytest.approx(value, rel=0.01), (name, tolerance_mm)


# --- voxel convention against MONAI --------------------------------------------------------------------


def test_voxel_convention_matches_monai():
    pytest.importorskip("monai")
    import torch
    from monai.metrics import compute_average_surface_distance as monai_assd
    from monai.metrics import compute_hausdorff_distance as monai_hd
    from monai.metrics import compute_surface_dice as monai_nsd

    for pred, ref in blob_pairs(3, 3, size=20):
        p, r = (torch.from_numpy(m)[None, None].float() for m in (pred, ref))
        expected = {
            "hd": float(monai_hd(p, r, spacing=SPACING_3D)),
            "hd95": float(monai_hd(p, r, percentile=95, spacing=SPACING_3D)),
            "assd": float(monai_assd(p, r, symmetric=True, spacing=SPACING_3D)),
            "nsd": float(monai_nsd(p, r, [1.0], include_background=True, spacing=SPACING_3D)),
        }
        actual = our_metrics(pred, ref, SPACING_3D, "voxel", 1.0)
        for name in expected:
            assert actual[name] == pytest.approx(expected[name], rel=1e-5), name


# --- empty masks, labels, shapes ---------------------------------------------------------------------------


def label_maps(pred_has: bool, ref_has: bool):
    pred = np.zeros((8, 12, 12), np.uint8)
    ref = np.zeros_like(pred)
    if pred_has:
        pred[2:5, 3:8, 3:8] = 1
    if ref_has:
        ref[3:6, 3:8, 4:9] = 1
    return pred, ref


DIAGONAL_MM = math.sqrt((8 * 2.5) ** 2 + 12**2 + (12 * 0.8) ** 2)


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_both_masks_empty_gives_nan_and_flags(policy):
    row = evaluate_case(*label_maps(False, False), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert all(math.isnan(row[name]) for name in METRIC_NAMES)
    assert row["ref_empty"] and row["pred_empty"]


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_missed_structure_is_penalised(policy):
    row = evaluate_case(*label_maps(False, True), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert (row["dice"], row["jaccard"], row["recall"], row["nsd"], row["volume_diff"]) == (0, 0, 0, 0, 1)
    assert row["pred_empty"] and not row["ref_empty"]
    for name in ("hd", "hd95", "assd"):
        assert row[name] == pytest.approx(DIAGONAL_MM) if policy == "penalize" else math.isnan(row[name])
    assert row["precision"] == 0 if policy == "penalize" else math.isnan(row["precision"])


@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_false_positive_structure_is_penalised(policy):
    row = evaluate_case(*label_maps(True, False), SPACING_3D, [1], MetricSettings(empty_policy=policy))[0]
    assert (row["dice"], row["jaccard"], row["precision"], row["nsd"]) == (0, 0, 0, 0)
    assert math.isnan(row["volume_diff"])  # relative to an empty reference: undefined under any policy
    assert row["ref_empty"] and not row["pred_empty"]
    for name in ("hd", "hd95", "assd"):
        assert row[name] == pytest.approx(DIAGONAL_MM) if policy == "penalize" else math.isnan(row[name])
    assert row["recall"] == 0 if policy == "penalize" else math.isnan(row["recall"])


def test_plain_functions_on_empty_masks():
    empty, box = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    box[1:3, 1:3] = True
    assert math.isnan(compute_dice(empty, empty)) and math.isnan(compute_jaccard(empty, empty))
    assert compute_dice(empty, box) == 0 and math.isnan(compute_precision(empty, box))
    assert math.isnan(compute_recall(box, empty)) and math.isnan(compute_volume_diff(box, empty))
    one_empty = compute_surface_distances(empty, box, (1.0, 1.0))
    assert compute_hausdorff(one_empty) == math.inf and compute_nsd(one_empty, 1.0) == 0
    both_empty = compute_surface_distances(empty, empty, (1.0, 1.0))
    assert math.isnan(compute_hd95(both_empty)) and math.isnan(compute_nsd(both_empty, 1.0))


def test_overlap_values_by_hand():
    pred = np.array([[1, 1, 1, 0]], bool)
    ref = np.array([[0, 1, 1, 1]], bool)
    assert compute_dice(pred, ref) == pytest.approx(2 * 2 / 6)
    assert compute_jaccard(pred, ref) == pytest.approx(2 / 4)
    assert compute_precision(pred, ref) == pytest.approx(2 / 3)
    assert compute_recall(pred, ref) == pytest.approx(2 / 3)
    assert compute_volume_diff(pred, ref) == 0


def test_multi_label_with_missing_label_and_region():
    pred, ref = label_maps(True, True)
    ref[6:8, 0:2, 0:2] = 3  # label 3 only in the reference, label 2 nowhere
    pred[6:8, 0:2, 0:3] = 3
    rows = evaluate_case(pred, ref, SPACING_3D, [1, 2, 3], regions={"all": [1, 3]})
    assert [row["label"] for row in rows] == [1, 2, 3, "all"]
    assert all(math.isnan(rows[1][name]) for name in METRIC_NAMES)
    assert rows[2]["dice"] == pytest.approx(2 * 4 / (4 + 6))
    union = evaluate_case((pred > 0).astype(np.uint8), (ref > 0).astype(np.uint8), SPACING_3D, [1])[0]
    assert {k: rows[3][k] for k in METRIC_NAMES} == pytest.approx({k: union[k] for k in METRIC_NAMES})
    single = evaluate_case((pred == 1).astype(np.uint8), (ref == 1).astype(np.uint8), SPACING_3D, [1])[0]
    assert {k: rows[0][k] for k in METRIC_NAMES} == pytest.approx({k: single[k] for k in METRIC_NAMES})


def test_2d_label_maps():
    pred, ref = blob_pairs(2, 1, size=24)[0]
    row = evaluate_case(pred.astype(np.int64), ref.astype(np.int64), SPACING_2D, [1])[0]
    expected = brute_force_metrics(pred, ref, SPACING_2D, "area", 1.0)
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-6)
    assert row["dice"] == pytest.approx(compute_dice(pred, ref))


def test_one_voxel_structure():
    ref = np.zeros((5, 5, 5), np.uint8)
    ref[2, 2, 2] = 1
    perfect = evaluate_case(ref, ref, SPACING_3D, [1])[0]
    assert [perfect[k] for k in ("dice", "hd", "hd95", "assd", "nsd")] == [1, 0, 0, 0, 1]
    moved = np.roll(ref, 1, axis=0)  # one slice further: 2.5 mm
    row = evaluate_case(moved, ref, SPACING_3D, [1])[0]
    assert row["dice"] == 0 and row["hd"] == pytest.approx(2.5) and row["hd95"] == pytest.approx(2.5)
    expected = brute_force_metrics(moved.astype(bool), ref.astype(bool), SPACING_3D, "area", 1.0)
    assert {k: row[k] for k in expected} == pytest.approx(expected, rel=1e-6)


def test_bad_inputs_raise_domain_errors():
    pred, ref = label_maps(True, True)
    with pytest.raises(DataError, match="shape"):
        evaluate_case(pred, ref[:-1], SPACING_3D, [1])
    with pytest.raises(DataError, match="integer"):
        evaluate_case(pred.astype(float), ref, SPACING_3D, [1])
    with pytest.raises(DataError, match="spacing"):
        evaluate_case(pred, ref, (1.0, 1.0), [1])
    with pytest.raises(UsageError, match="background"):
        evaluate_case(pred, ref, SPACING_3D, [0])
    with pytest.raises(UsageError, match="surface"):
        MetricSettings(surface="mesh")


@pytest.mark.parametrize("name", METRIC_NAMES)
@pytest.mark.parametrize("policy", ["penalize", "nan"])
def test_every_metric_scores_within_the_range_a_run_is_checked_against(name: str, policy: str) -> None:
    # A run's metrics.csv is read back by results._bad_cell: a score from 0 to 1 where higher is better, else
    # a finite value of at least 0 (NaN only where a mask is empty). A registered metric outside its range
    # would make every run that scored it read as damaged.
    info = METRICS.get(name)
    rng = np.random.default_rng(3)
    high = 1.0 if info.higher_is_better else math.inf
    settings_ = MetricSettings(empty_policy=policy)
    for trial in range(12):
        ref = (rng.random((6, 9, 8)) < 0.3).astype(np.uint8)
        pred = np.where(rng.random(ref.shape) < 0.25, 1 - ref, ref).astype(np.uint8)
        if trial == 1:
            pred[:] = 0  # a miss
        if trial == 2:
            ref[:] = 0  # a false positive
        if trial == 3:
            pred[:] = 1  # over-segmented: three times the reference's volume
        row = evaluate_case(pred, ref, SPACING_3D, [1], settings_)[0]
        value = row[name]
        in_range = math.isnan(value) or 0 <= value <= high and math.isfinite(value)
        assert info.title and in_range, (trial, value)
        assert not math.isnan(value) or row["ref_empty"] or row["pred_empty"]


def test_registry_names_every_metric_with_direction_and_unit():
    assert set(METRICS) == set(METRIC_NAMES) == {
        "dice", "jaccard", "precision", "recall", "volume_diff", "hd", "hd95", "assd", "nsd",
    }
    assert METRICS.get("hd95").unit == "mm" and not METRICS.get("hd95").higher_is_better
    assert METRICS.get("nsd").higher_is_better
    with pytest.raises(UnknownNameError, match="did you mean 'dice'"):
        METRICS.get("dise")
    defaults = {"nsd_tolerance_mm": 1.0, "surface": "area", "empty_policy": "penalize"}
    assert MetricSettings().to_dict() == defaults


# --- properties -----------------------------------------------------------------------------------------

masks_3d = arrays(bool, st.tuples(*(st.integers(1, 6),) * 3))
spacings = st.tuples(*(st.sampled_from([0.5, 0.8, 1.0, 2.5]),) * 3)
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fast
@given(mask=masks_3d, spacing=spacings, surface=st.sampled_from(["area", "voxel"]))
def test_metrics_of_identical_masks_are_perfect(mask, spacing, surface):
    labels = mask.astype(np.uint8)
    row = evaluate_case(labels, labels, spacing, [1], MetricSettings(surface=surface))[0]
    if not mask.any():
        assert math.isnan(row["dice"])
        return
    perfect = {"dice": 1, "jaccard": 1, "precision": 1, "recall": 1, "volume_diff": 0,
               "hd": 0, "hd95": 0, "assd": 0, "nsd": 1}
    assert {k: row[k] for k in perfect} == perfect


@fast
@given(data=st.data(), spacing=spacings, surface=st.sampled_from(["area", "voxel"]))
def test_dice_and_distances_symmetric_and_ordered(data, spacing, surface):
    shape = data.draw(st.tuples(*(st.integers(1, 6),) * 3))
    a = data.draw(arrays(bool, shape)).astype(np.uint8)
    b = data.draw(arrays(bool, shape)).astype(np.uint8)
    ab = evaluate_case(a, b, spacing, [1], MetricSettings(surface=surface))[0]
    ba = evaluate_case(b, a, spacing, [1], MetricSettings(surface=surface))[0]
    for name in ("dice", "jaccard", "hd", "hd95", "assd", "nsd"):
        assert ab[name] == pytest.approx(ba[name], nan_ok=True), name
    if a.any() or b.any():
        assert ab["hd"] >= ab["hd95"] - 1e-9 and ab["hd95"] >= 0 and 0 <= ab["nsd"] <= 1


# --- folders ----------------------------------------------------------------------------------------------


def write_case(folder: Path, name: str, labels: np.ndarray, origin=(0.0, 0.0, 0.0)) -> None:
    """Write a label map at spacing (0.8, 1.0, 2.5) mm in x, y, z order, i.e. SPACING_3D in array order."""
    from medseg_bench.data.io import Geometry, write_label

    geometry = Geometry((0.8, 1.0, 2.5), origin, (1, 0, 0, 0, 1, 0, 0, 0, 1), labels.shape[::-1])
    write_label(labels, geometry, folder / f"{name}.nii.gz")


def test_evaluate_folders_rows_and_geometry_checks(tmp_path):
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    pred, ref = label_maps(True, True)
    write_case(pred_dir, "b", pred)
    write_case(ref_dir, "b", ref)
    ref2 = ref.copy()
    ref2[0, 0, 0] = 2
    write_case(pred_dir, "a", pred)
    write_case(ref_dir, "a", ref2)
    frame = evaluate_folders(pred_dir, ref_dir, labels=None, workers=1)
    assert list(frame.columns[:2]) == ["case", "label"]
    assert list(zip(frame["case"], frame["label"], strict=True)) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    in_memory = evaluate_case(pred, ref, SPACING_3D, [1])[0]  # (0.8, 1, 2.5) in x, y, z order
    assert frame.iloc[2]["hd95"] == pytest.approx(in_memory["hd95"])
    assert frame.iloc[3][["ref_empty", "pred_empty"]].tolist() == [True, True]

    write_case(pred_dir, "c", pred, origin=(0.0, 0.0, 5.0))
    write_case(ref_dir, "c", ref)
    with pytest.raises(DataError, match=r"c\.nii\.gz.*geometry differs.*ref/c\.nii\.gz.*origin"):
        evaluate_folders(pred_dir, ref_dir, labels=[1])
    # Validation accepts a label whose origin is off by under 1% of the largest spacing; so does evaluation
    # (it used a far tighter tolerance, refusing predictions of cases the run had trained and scored).
    write_case(pred_dir, "c", pred, origin=(0.0, 0.0, 0.02))
    assert len(evaluate_folders(pred_dir, ref_dir, labels=[1], workers=1)) == 3
    write_case(pred_dir, "d", pred)
    with pytest.raises(DataError, match=r"pred/d\.nii\.gz: no reference of case 'd' in .*ref"):
        evaluate_folders(pred_dir, ref_dir, labels=[1])


def test_evaluate_folders_in_parallel_matches_inline(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("x", "y", "z"):
        write_case(tmp_path / "pred", name, blob(rng, (8, 16, 16)).astype(np.uint8))
        write_case(tmp_path / "ref", name, blob(rng, (8, 16, 16)).astype(np.uint8))
    inline = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=1)
    parallel = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=2)
    assert parallel.equals(inline)


def test_evaluate_folders_scores_2d_and_single_slice_maps_in_2d(tmp_path):
    """docs/metrics.md's worked example as a 2D NIfTI and as a 3D one of one slice: the documented values."""
    from medseg_bench.data.io import Geometry, write_label

    ref = np.zeros((3, 4), np.uint8)
    ref[0:2] = 1
    pred = np.roll(ref, 1, axis=0)
    flat = Geometry((1.0, 2.5), (0.0, 0.0), (1, 0, 0, 1), (4, 3))
    slab = Geometry((1.0, 2.5, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (4, 3, 1))
    for folder, labels in ((tmp_path / "pred", pred), (tmp_path / "ref", ref)):
        write_label(labels, flat, folder / "flat.nii.gz")
        write_label(labels[None], slab, folder / "slab.nii.gz")
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1]).set_index("case")
    in_memory = evaluate_case(pred, ref, (2.5, 1.0), [1])[0]
    assert in_memory["assd"] == pytest.approx(1.1127, abs=1e-4)
    assert in_memory["nsd"] == pytest.approx(0.5915, abs=1e-4)
    # A run scores its held-out cases with evaluate_case on arrays: a one-slice volume is 2D there too.
    slab_in_memory = evaluate_case(pred[None], ref[None], (4.0, 2.5, 1.0), [1])[0]
    for case in ("flat", "slab"):
        for name in ("dice", "hd", "hd95", "assd", "nsd"):
            assert frame.loc[case, name] == pytest.approx(in_memory[name]), (case, name)
            assert slab_in_memory[name] == pytest.approx(in_memory[name]), name


def test_hd95_reaches_an_exact_95_percent_share():
    # 45 isolated voxels: 360 surface elements of equal area, 342 of which are exactly 95 %. Summed in two
    # parts, the share came out a hair under 0.95 and HD95 took the next distance (7.6158 mm, not 7.5498 mm).
    rng = np.random.default_rng(57)
    pred, ref = rng.random((30, 30, 30)) > 0.998, rng.random((30, 30, 30)) > 0.998
    distances = compute_surface_distances(pred, ref, (1.0, 1.0, 1.0), surface="area")

    def first_reaching_95(d: np.ndarray, w: np.ndarray) -> float:  # the definition, in exact fractions
        from fractions import Fraction

        total, acc = sum(Fraction(float(x)) for x in w), Fraction(0)
        for i in np.argsort(d, kind="stable"):
            acc += Fraction(float(w[i]))
            if acc >= Fraction(95, 100) * total:
                return float(d[i])
        raise AssertionError

    expected = max(first_reaching_95(distances.pred_to_ref_mm, distances.pred_weights),
                   first_reaching_95(distances.ref_to_pred_mm, distances.ref_weights))
    assert expected == pytest.approx(7.549834, abs=1e-6)
    assert compute_hd95(distances) == pytest.approx(expected)


def test_evaluate_folders_refuses_references_without_prediction(tmp_path):
    pred, ref = label_maps(True, True)
    for name in ("a", "b", "c"):
        write_case(tmp_path / "ref", name, ref)
    write_case(tmp_path / "pred", "b", pred)
    with pytest.raises(DataError, match=r"ref/a\.nii\.gz: no prediction of case 'a' in .*pred "
                                        r"\(and 1 more\)"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1])
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], allow_missing=True)
    assert frame["case"].tolist() == ["b"]


def test_nsd_counts_a_distance_equal_to_the_tolerance():
    # 2.5 mm = sqrt((3 * 0.8)^2 + 0.7^2) exactly; float rounding must not leave such elements out (DeepMind's
    # package does here, and gives 0.25).
    pred, ref = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    pred[2, 4], ref[6, 5] = True, True
    distances = compute_surface_distances(pred, ref, (0.8, 0.7), surface="area")
    within = [d <= 2.5 + 1e-12 for d in (*distances.pred_to_ref_mm, *distances.ref_to_pred_mm)]
    assert compute_nsd(distances, 2.5) == pytest.approx(0.5) and 0 < sum(within) < len(within)


def test_evaluate_folders_scores_a_label_only_predictions_hold(tmp_path):
    """Without labels, a label no reference holds is scored where it is predicted (false positives, Dice 0),
    not left out; a case without it in either gets its both-empty row."""
    pred, ref = label_maps(True, True)
    spurious = pred.copy()
    spurious[0, 0, 0:2] = 2
    write_case(tmp_path / "pred", "a", spurious)
    write_case(tmp_path / "pred", "b", pred)
    for name in ("a", "b"):
        write_case(tmp_path / "ref", name, ref)
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1)
    frame = frame.set_index(["case", "label"])
    assert frame.index.tolist() == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    spurious_row = frame.loc[("a", 2), ["dice", "precision", "ref_empty", "pred_empty"]]
    assert spurious_row.tolist() == [0, 0, True, False]
    assert np.isnan(frame.loc[("b", 2), "dice"]) and frame.loc[("b", 2), "pred_empty"]


def test_evaluate_folders_with_a_task_scores_its_labels_and_refuses_other_values(tmp_path):
    """As a run scores its held-out cases: the task's foreground labels, present or not; a value the task does
    not have is an error naming the file and the values (validation excludes such a case from a run)."""
    from medseg_bench.data.catalog import get_task

    task = get_task("Task04_Hippocampus")  # labels 0, 1, 2
    pred, ref = label_maps(True, True)
    write_case(tmp_path / "pred", "a", pred)
    write_case(tmp_path / "ref", "a", ref)  # label 1 only: label 2 is both-empty, a row all the same
    frame = evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1, task=task)
    assert frame["label"].tolist() == [1, 2]
    assert frame.iloc[1][["ref_empty", "pred_empty"]].tolist() == [True, True]
    chosen = evaluate_folders(tmp_path / "pred", tmp_path / "ref", [2], workers=1, task=task)
    assert chosen["label"].tolist() == [2]
    odd = pred.copy()
    odd[0, 0, 0:2] = (3, 7)
    write_case(tmp_path / "pred", "a", odd)
    with pytest.raises(DataError, match=r"^\S*pred/a\.nii\.gz: label values \[3, 7\] not among "
                                        r"Task04_Hippocampus's labels \(0, 1, 2\)$"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", None, workers=1, task=task)
    write_case(tmp_path / "pred", "a", pred)
    write_case(tmp_path / "ref", "a", odd)
    with pytest.raises(DataError, match=r"ref/a\.nii\.gz: label values \[3, 7\] not among"):
        evaluate_folders(tmp_path / "pred", tmp_path / "ref", [1], workers=1, task=task)
