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



def _box(centre: np.ndarray, size: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(int(c) - s // 2, int(c) - s // 2 + s) for c, s in zip(centre, size, strict=True))


@pytest.mark.parametrize(("shape", "thick"), [((48, 48), None), ((40, 48, 44), None), ((40, 48, 44), 0)],
                         ids=["2d", "3d", "3d-thick"])
def test_resampling_reads_around_the_patch_as_if_the_volume_were_transformed(
        shape: tuple[int, ...], thick: int | None) -> None:
    # Version 6: a patch of the volume rotated, scaled and deformed about the patch's centre, read from the
    # region `input_shape` names; version 5 resampled the patch alone, and its corners were zeros.
    from scipy import ndimage

    from medseg_bench.augment import _affine_matrix, apply_plan, draw_plan, input_shape

    rng = np.random.default_rng(1)
    volume = ndimage.gaussian_filter(rng.normal(size=shape), 2).astype(np.float32)[None] + 5.0
    label = (volume[0] > 5.0).astype(np.uint8)
    out = (10, 14) if len(shape) == 2 else (10, 14, 12)
    centre = np.array(shape) // 2
    forced = tuple(type(s)(s.name, 1.0, s.draw, s.apply, s.reads) for s in AUGS.get("heavy")
                   if s.name in ("affine", "elastic", "mirror"))
    zero_corners = 0
    for seed in range(6):
        plan = draw_plan(forced, np.random.default_rng(seed), len(shape), thick)
        region = input_shape(plan, out)
        assert all(r >= o and (r - o) % 2 == 0 for r, o in zip(region, out, strict=True))
        if thick is not None:
            assert region[thick] == out[thick]  # nothing moves along a thick axis: nothing read beyond it
        box = _box(centre, region)
        img, seg, applied = apply_plan(volume[(slice(None), *box)], label[box], plan, out)
        assert img.shape == (1, *out) and seg.shape == out
        assert [name for name, _ in applied] == ["affine", "elastic", "mirror"]
        assert float(img.min()) > 3.0  # the volume everywhere: no zero corners
        # The affine alone, read from its region, is the whole volume transformed about the patch's centre.
        affine = plan[:1]
        box = _box(centre, input_shape(affine, out))
        mine = apply_plan(volume[(slice(None), *box)], label[box], affine, out)[0][0]
        matrix = _affine_matrix(plan[0][1], len(shape))
        out_centre = (np.array(out) - 1) / 2.0
        offset = centre - np.array(out) // 2 + out_centre - matrix @ out_centre
        whole = ndimage.affine_transform(volume[0], matrix, offset, output_shape=out, order=1)
        assert np.allclose(mine, whole, atol=1e-4)
        patch = _box(centre, out)
        zero_corners += float(apply_plan(volume[(slice(None), *patch)], label[patch], affine)[0].min()) == 0.0
    assert zero_corners > 0  # the patch alone (no margin) does fill corners with zeros: the test can tell


def test_a_region_of_the_wrong_shape_is_refused() -> None:
    from medseg_bench.augment import apply_plan, draw_plan

    image, label = _pair((16, 24, 24))
    affine = tuple(type(s)(s.name, 1.0, s.draw, s.apply, s.reads) for s in AUGS.get("heavy")[:1])
    plan = draw_plan(affine, np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="augmentation reads"):
        apply_plan(image, label, plan, (16, 24, 24))
