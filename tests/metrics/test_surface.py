"""`metrics/surface.py` against reference values: DeepMind's surface-distance, MONAI, brute force, and
analytic boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseg_bench.metrics import (
    MetricSettings,
    compute_assd,
    compute_hausdorff,
    compute_hd95,
    compute_nsd,
    compute_surface_distances,
    evaluate_case,
)
from medseg_bench.metrics import surface as surface_module
from medseg_bench.metrics.surface import _code_to_weight
from tests.metrics.reference import SPACING_2D, SPACING_3D, blob_pairs, brute_force_metrics


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


# MONAI 1.5+'s surface Dice passes get_mask_edges its own deprecated `always_return_as_numpy`: its warning,
# not ours
@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy.*:FutureWarning")
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


def test_nsd_counts_a_distance_equal_to_the_tolerance():
    # 2.5 mm = sqrt((3 * 0.8)^2 + 0.7^2) exactly; float rounding must not leave such elements out (DeepMind's
    # package does here, and gives 0.25).
    pred, ref = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    pred[2, 4], ref[6, 5] = True, True
    distances = compute_surface_distances(pred, ref, (0.8, 0.7), surface="area")
    within = [d <= 2.5 + 1e-12 for d in (*distances.pred_to_ref_mm, *distances.ref_to_pred_mm)]
    assert compute_nsd(distances, 2.5) == pytest.approx(0.5) and 0 < sum(within) < len(within)
