"""Reference implementations and test shapes the metric tests share: brute-force surface elements and
distances (explicit enumeration, pairwise distances), smooth random blobs, anisotropic spacings."""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

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
