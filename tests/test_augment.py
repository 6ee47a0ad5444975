"""Augmentation presets: run in 2D and 3D, are reproducible, and keep image and label aligned."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_bench.augment import AUGS, augment


def _pair(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    label = np.zeros(shape, np.uint8)
    center = tuple(s // 2 for s in shape)
    grid = np.indices(shape)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center, strict=True)))
    label[dist < min(shape) / 4] = 1
    label[(dist < min(shape) / 4) & (grid[0] < center[0])] = 2
    image = label[None].astype(np.float32) * 10.0 + rng.normal(0, 0.01, (1, *shape)).astype(np.float32)
    return image, label


@pytest.mark.parametrize("preset", list(AUGS))
@pytest.mark.parametrize("shape", [(32, 32), (16, 24, 24)], ids=["2d", "3d"])
def test_presets_keep_alignment_and_are_reproducible(preset: str, shape: tuple[int, ...]) -> None:
    image, label = _pair(shape)
    for seed in range(6):
        out_img, out_seg, applied = augment(image, label, AUGS.get(preset), np.random.default_rng(seed))
        assert out_img.shape == image.shape and out_seg.shape == label.shape
        assert out_img.dtype == np.float32 and out_seg.dtype == label.dtype
        again = augment(image, label, AUGS.get(preset), np.random.default_rng(seed))
        assert np.array_equal(again[0], out_img) and np.array_equal(again[1], out_seg) and again[2] == applied
        if any(name in ("noise", "blur", "lowres", "contrast", "gamma", "brightness", "scale_shift")
               for name, _ in applied):
            continue  # intensity steps change the image->label function; spatial alignment is checked below
        # The label is a function of the image (label * 10): spatial steps must move both the same way.
        inside = out_seg > 0
        assert np.abs(out_img[0][inside] / 10.0 - out_seg[inside]).mean() < 0.35
        assert (out_img[0][~inside] < 5).mean() > 0.97


def test_spatial_alignment_under_every_spatial_step() -> None:
    image, label = _pair((16, 24, 24))
    steps = tuple(s for s in AUGS.get("heavy") if s.name in ("affine", "elastic", "mirror"))
    forced = tuple(type(s)(s.name, 1.0, s.draw, s.apply) for s in steps)
    out_img, out_seg, applied = augment(image, label, forced, np.random.default_rng(3))
    assert [name for name, _ in applied] == ["affine", "elastic", "mirror"]
    predicted = np.clip(np.round(out_img[0] / 10.0), 0, 2).astype(np.uint8)
    assert (predicted == out_seg).mean() > 0.97


def test_none_is_identity() -> None:
    image, label = _pair((8, 8))
    out_img, out_seg, applied = augment(image, label, AUGS.get("none"), np.random.default_rng(0))
    assert applied == [] and np.array_equal(out_img, image) and np.array_equal(out_seg, label)


@pytest.mark.parametrize("thick", [0, 2])
def test_thick_slices_are_augmented_in_plane_only(thick: int) -> None:
    # Rotations, scaling, elastic deformation and low resolution used to act across thick slices too (2.5 mm
    # CT slices smeared into each other); as nnU-Net, they now act in plane, the same on every slice.
    shape = [24, 24, 24]
    shape[thick] = 6
    values = np.arange(1, 7, dtype=np.float32)  # slice k holds value k + 1, everywhere in its plane
    image = np.broadcast_to(np.expand_dims(values, [a for a in range(3) if a != thick]), shape)[None].copy()
    label = (image[0] > 3).astype(np.uint8)
    forced = tuple(type(s)(s.name, 1.0, s.draw, s.apply) for s in AUGS.get("heavy")
                   if s.name in ("affine", "elastic", "lowres"))
    centre = tuple(slice(None) if a == thick else slice(10, 14) for a in range(3))  # far from the padding
    mixed_somewhere = False
    for seed in range(4):
        rng = np.random.default_rng(seed)
        out_img, out_seg, applied = augment(image, label, forced, rng, thick_axis=thick)
        assert [p["thick_axis"] for _, p in applied] == [thick] * 3
        inner, inner_seg = out_img[0][centre], out_seg[centre]
        for k in range(6):
            assert np.allclose(np.take(inner, k, axis=thick), k + 1, rtol=1e-3), (seed, k)  # no slice mixing
            assert (np.take(inner_seg, k, axis=thick) == int(k + 1 > 3)).all()
        # The same draws without a thick axis mix slices: the test can tell the difference.
        mixed = augment(image, label, forced, np.random.default_rng(seed))[0][0][centre]
        mixed_somewhere |= not all(np.allclose(np.take(mixed, k, axis=thick), k + 1, rtol=1e-3)
                                   for k in range(6))
    assert mixed_somewhere


def test_isotropic_data_is_augmented_exactly_as_before() -> None:
    image, label = _pair((16, 24, 24))
    for seed in range(4):
        plain = augment(image, label, AUGS.get("heavy"), np.random.default_rng(seed))
        explicit = augment(image, label, AUGS.get("heavy"), np.random.default_rng(seed), thick_axis=None)
        assert np.array_equal(plain[0], explicit[0]) and plain[2] == explicit[2]
