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
    shape = [48, 48, 48]
    shape[thick] = 6
    values = np.arange(1, 7, dtype=np.float32)  # slice k holds value k + 1, everywhere in its plane
    image = np.broadcast_to(np.expand_dims(values, [a for a in range(3) if a != thick]), shape)[None].copy()
    label = (image[0] > 3).astype(np.uint8)
    forced = tuple(type(s)(s.name, 1.0, s.draw, s.apply) for s in AUGS.get("heavy")
                   if s.name in ("affine", "elastic", "lowres"))
    centre = tuple(slice(None) if a == thick else slice(22, 26) for a in range(3))  # far from the padding
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


@pytest.mark.parametrize(("shape", "thick"), [((96, 96), None), ((72, 80, 76), None), ((40, 80, 76), 0)],
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
        plan = draw_plan(forced, np.random.default_rng(seed), out, thick)
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
    plan = draw_plan(affine, np.random.default_rng(0), (16, 24, 24))
    with pytest.raises(ValueError, match="augmentation reads"):
        apply_plan(image, label, plan, (16, 24, 24))


def test_nnunet_preset_draws_with_nnunet_probabilities_and_ranges() -> None:
    # nnU-Net v2's nnUNetTrainer.get_training_transforms: rotation and scaling each with p 0.2 (one
    # resampling), noise 0.1, blur 0.2, brightness 0.15, contrast 0.15, low resolution 0.25, inverted gamma
    # 0.1, gamma 0.3, mirroring always.
    from medseg_bench.augment import draw_plan

    steps = AUGS.get("nnunet")
    rng = np.random.default_rng(0)
    plans = [draw_plan(steps, rng, (40, 56, 40)) for _ in range(4000)]
    share = {name: np.mean([any(n.name == name for n, _ in plan) for plan in plans])
             for name in ("affine", "noise", "blur", "brightness", "contrast", "lowres", "gamma_inverted",
                          "gamma", "mirror")}
    expected = {"affine": 1 - 0.8 ** 2, "noise": 0.1, "blur": 0.2, "brightness": 0.15, "contrast": 0.15,
                "lowres": 0.25, "gamma_inverted": 0.1, "gamma": 0.3, "mirror": 1.0}
    assert all(abs(share[k] - v) < 0.03 for k, v in expected.items()), share
    spatial = [p for plan in plans for s, p in plan if s.name == "affine"]
    rotated = [p for p in spatial if any(p["angles_deg"])]
    scaled = [p for p in spatial if p["scale"] != 1.0]
    assert abs(len(rotated) / 4000 - 0.2) < 0.03 and abs(len(scaled) / 4000 - 0.2) < 0.03
    assert max(abs(a) for p in rotated for a in p["angles_deg"]) <= 30.0
    assert all(0.7 <= 1 / p["scale"] <= 1.4 for p in scaled)  # the factor on the sampling grid

    def angles(shape: tuple[int, ...], thick: int | None = None) -> list[list[float]]:
        rng = np.random.default_rng(1)
        return [p["angles_deg"] for _ in range(400) for s, p in draw_plan(steps, rng, shape, thick)
                if s.name == "affine" and any(p["angles_deg"])]

    assert max(abs(a[0]) for a in angles((64, 64))) > 90  # square-ish 2D patches: +-180 deg
    assert max(abs(a[0]) for a in angles((96, 32))) <= 15  # elongated ones: +-15 deg
    thick = angles((12, 64, 64), thick=0)
    assert all(a[1] == a[2] == 0.0 for a in thick) and max(abs(a[0]) for a in thick) > 90  # dummy 2D
    # `list augs` says how often the spatial step acts, not its nominal probability of 1
    assert [s.describe() for s in steps[:2]] == ["affine (rotation 0.2, scaling 0.2)", "noise (0.1)"]


def test_nnunet_intensity_steps_act_per_channel_and_gamma_keeps_the_statistics() -> None:
    from medseg_bench.augment import _apply_nnunet_brightness, _apply_nnunet_contrast, _nnunet_gamma

    rng = np.random.default_rng(0)
    image = np.abs(rng.normal(1.0, 0.5, (2, 12, 12, 12))).astype(np.float32) + 0.1
    label = np.zeros((12, 12, 12), np.uint8)
    ratios = [(_apply_nnunet_brightness(image, label, {"seed": seed})[0] / image).reshape(2, -1)[:, 0]
              for seed in range(10)]
    assert any(abs(r[0] - r[1]) > 1e-3 for r in ratios)  # each channel its own factor
    assert all(0.75 - 1e-6 <= f <= 1.25 + 1e-6 for r in ratios for f in r)
    for seed in range(4):  # within each channel's range (preserve_range)
        contrasted = _apply_nnunet_contrast(image, label, {"seed": seed})[0]
        assert not np.allclose(contrasted, image)
        assert np.all(contrasted.min((1, 2, 3)) >= image.min((1, 2, 3)) - 1e-6)
        assert np.all(contrasted.max((1, 2, 3)) <= image.max((1, 2, 3)) + 1e-6)
    for invert in (False, True):
        out = _nnunet_gamma(invert)(image, label, {"seed": 5})[0]
        assert not np.allclose(out, image)
        assert np.allclose(out.mean((1, 2, 3)), image.mean((1, 2, 3)), atol=1e-4)  # retain_stats
        assert np.allclose(out.std((1, 2, 3)), image.std((1, 2, 3)), atol=1e-4)


def test_nnunet_noise_draws_its_standard_deviation_and_shares_one_field_as_batchgeneratorsv2() -> None:
    # batchgeneratorsv2's GaussianNoiseTransform (nnU-Net: noise_variance=(0, 0.1), synchronize_channels=True)
    # draws sigma = uniform(0, 0.1), passes it to np.random.normal as the scale, and adds one field of shape
    # (1, *spatial) to every channel.
    from medseg_bench.augment import NNUNET_NOISE

    rng = np.random.default_rng(0)
    stds = [NNUNET_NOISE.draw(rng, (40, 56, 40), None)["std"] for _ in range(4000)]  # type: ignore[index]
    assert max(stds) <= 0.1 and abs(np.mean(stds) - 0.05) < 0.003
    image = np.stack([np.zeros((16, 16, 16)), np.ones((16, 16, 16))]).astype(np.float32)
    out = NNUNET_NOISE.apply(image, np.zeros((16, 16, 16), np.uint8), {"std": 0.05, "seed": 3})[0]
    assert out.dtype == np.float32
    assert np.allclose(out[0], out[1] - 1.0, atol=1e-6)  # the same field on both channels
    assert 0.045 < out[0].std() < 0.055


def test_heavy_elastic_deformation_has_nnunets_ranges() -> None:
    # nnU-Net v1's default_3D_augmentation_params (batchgenerators): elastic_deform_alpha (0, 900), sigma
    # (9, 13); 2D and dummy 2D (in plane across a thick axis): alpha (0, 200).
    from medseg_bench.augment import HEAVY_ELASTIC

    rng = np.random.default_rng(0)
    for shape, thick, top in (((40, 56, 40), None, 900), ((56, 40), None, 200), ((12, 64, 64), 0, 200)):
        draws = [HEAVY_ELASTIC.draw(rng, shape, thick) for _ in range(2000)]
        alphas = [d["alpha"] for d in draws if d]
        assert 0 <= min(alphas) < 0.02 * top and 0.98 * top < max(alphas) <= top
        assert all(9 <= d["sigma"] <= 13 for d in draws if d)
    # A field of nnU-Net's size: at the median alpha, a 3D displacement of about 1.7 voxels std per axis (it
    # was 0.24 up to pipeline version 6).
    image, label = _pair((40, 56, 40))
    params = {"seed": 1, "alpha": 450.0, "sigma": 11.0}
    out = HEAVY_ELASTIC.apply(image, label, params)
    from medseg_bench.augment import _field

    assert 1.2 < float(np.mean([d.std() for d in _field(params, (40, 56, 40))])) < 2.2
    assert not np.array_equal(out[1], label)


def test_version_6_runs_keep_their_steps() -> None:
    # A version-6 run resumes with the steps it began with (nnunet's noise: sqrt of the draw as the std, a
    # field per channel; heavy's elastic: alpha U(20, 60), sigma U(6, 9)); every other step, and every other
    # draw, is the same in both versions.
    from medseg_bench.augment import draw_plan, steps_for_version

    image = np.stack([np.zeros((8, 8, 8)), np.ones((8, 8, 8))]).astype(np.float32)
    assert steps_for_version(AUGS.get("light"), 6) == AUGS.get("light")
    for preset, changed in (("nnunet", "noise"), ("heavy", "elastic")):
        steps = steps_for_version(AUGS.get(preset), 7)
        old = steps_for_version(steps, 6)
        assert [s.name for s in old] == [s.name for s in steps]
        assert [a is b for a, b in zip(old, steps, strict=True)] == [s.name != changed for s in steps]
        acted = 0
        for seed in range(300):
            new_plan = draw_plan(steps, np.random.default_rng(seed), (8, 8, 8))
            old_plan = draw_plan(old, np.random.default_rng(seed), (8, 8, 8))
            assert [(s.name, p) for s, p in new_plan if s.name != changed] == \
                [(s.name, p) for s, p in old_plan if s.name != changed]
            for (s_new, p_new), (s_old, p_old) in zip(new_plan, old_plan, strict=True):
                if s_new.name != changed:
                    continue
                acted += 1
                assert p_old["seed"] == p_new["seed"]
                if changed == "noise":
                    assert np.isclose(p_old["std"] ** 2, p_new["std"])  # the same uniform draw
                    out = s_old.apply(image, np.zeros((8, 8, 8), np.uint8), p_old)[0]
                    assert not np.allclose(out[0], out[1] - 1.0, atol=1e-3)  # version 6: a field per channel
                else:
                    assert 20 <= p_old["alpha"] <= 60 and 6 <= p_old["sigma"] <= 9
        assert acted > 10


def test_nnunet_preset_resamples_labels_linearly_per_label() -> None:
    # nnU-Net interpolates each label's mask linearly and keeps the largest; for one label that is the mask
    # interpolated and thresholded at one half, which nearest neighbour is not.
    from scipy import ndimage

    from medseg_bench.augment import _affine_matrix, _apply_affine

    grid = np.indices((20, 24, 22)) - np.array([10, 12, 11])[:, None, None, None]
    label = (np.sqrt((grid ** 2).sum(0)) < 7).astype(np.uint8)
    image = label[None].astype(np.float32)
    params = {"angles_deg": [20.0, -15.0, 10.0], "scale": 1 / 1.2, "out_shape": [20, 24, 22]}
    linear = _apply_affine(image, label, {**params, "label": "linear"})[1]
    nearest = _apply_affine(image, label, params)[1]
    matrix = _affine_matrix(params, 3)
    centre = (np.array(label.shape) - 1) / 2.0
    mask = ndimage.affine_transform(label.astype(np.float32), matrix, centre - matrix @ centre, order=1)
    reference = mask > 0.5
    assert np.array_equal(linear, reference.astype(np.uint8))
    assert not np.array_equal(linear, nearest)
    # several labels: only labels of the input, and background where the region leaves it (even when the
    # input holds no background at all)
    full = np.ones((20, 24, 22), np.uint8) + (grid[0] > 0)
    out = _apply_affine(full[None].astype(np.float32), full, {**params, "label": "linear"})[1]
    assert set(np.unique(out)) == {0, 1, 2} and out[0, 0, 0] == 0


def test_nnunet_low_resolution_is_batchgeneratorsv2s_and_version_8_runs_keep_scipys() -> None:
    # batchgeneratorsv2's SimulateLowResolutionTransform (0.3.6, nnunetv2 2.8.1, torch 2.14) on this input,
    # with the zoom fixed (synchronize_axes=True; ignore_axes=(0,) for the thick axis): the first 12 values
    # and the sum.
    from medseg_bench.augment import NNUNET_LOWRES, _lowres_torch, draw_plan, steps_for_version

    x = (np.arange(5 * 7 * 6).reshape(5, 7, 6) % 11).astype(np.float32)
    expected = {
        (0.6, None): ([0, 1, 2.16667, 2.83333, 4, 5, 0.35714, 1.35714, 2.52381, 3.19048, 4.35714, 5.35714],
                      1056.7071533),
        (0.5, 0): ([1, 1.5, 2.5, 3.5, 4.5, 5, 1.35714, 1.85714, 2.85714, 3.85714, 4.85714, 5.35714], 1029.0),
    }
    for (zoom, thick), (head, total) in expected.items():
        out = _lowres_torch(x, zoom, thick)
        assert out.shape == x.shape and out.dtype == np.float32
        assert np.allclose(out.ravel()[:12], head, atol=1e-5) and np.isclose(out.sum(), total, rtol=1e-6)
    assert _lowres_torch(x[:1, :1], 0.5, None).shape == (1, 1, 6)  # an axis of one stays one voxel
    # Runs of version 8 and older resume with scipy's corner-aligned zoom; every draw is the same.
    steps = AUGS.get("nnunet")
    assert steps_for_version(steps, 9) is steps
    old = steps_for_version(steps, 8)
    assert [a is b for a, b in zip(old, steps, strict=True)] == [s is not NNUNET_LOWRES for s in steps]
    image = np.stack([x, x + 1])
    acted = 0
    for seed in range(200):
        new_plan = draw_plan(steps, np.random.default_rng(seed), x.shape)
        old_plan = draw_plan(old, np.random.default_rng(seed), x.shape)
        assert [(s.name, p) for s, p in new_plan] == [(s.name, p) for s, p in old_plan]
        for (s_new, p), (s_old, _) in zip(new_plan, old_plan, strict=True):
            if s_new is NNUNET_LOWRES:
                new_out = s_new.apply(image, np.zeros(x.shape, np.uint8), p)[0]
                old_out = s_old.apply(image, np.zeros(x.shape, np.uint8), p)[0]
                acted += not np.allclose(new_out, image)
                assert np.array_equal(np.isclose(new_out, image).all((1, 2, 3)),
                                      np.isclose(old_out, image).all((1, 2, 3)))  # the same channels
    assert acted > 10
