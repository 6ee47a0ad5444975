"""Training samples: 2D slices along the plan's slice axis, foreground picks in the same axis order; patches
placed inside the volume and foreground in the last third of every batch, as nnU-Net samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_bench.data.datamodule import CaseStore, PatchDataset, ValidationPatches


def _cached_case(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """One cached case whose thick axis is numpy axis 2, with a foreground box and its sample coordinates."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 30, 24, 6)).astype(np.float32)
    label = np.zeros((30, 24, 6), np.uint8)
    label[10:20, 5:15, 2:4] = 1
    np.save(folder / "c0.img.npy", image)
    np.save(folder / "c0.seg.npy", label)
    coords = np.argwhere(label == 1).tolist()
    (folder / "c0.json").write_text(f'{{"case_id": "c0", "foreground": {{"1": {coords}}}}}')
    return image, label


def test_slice_axis_puts_that_axis_first(tmp_path: Path) -> None:
    image, label = _cached_case(tmp_path / "cache")
    moved_image, moved_label, props = CaseStore(tmp_path / "cache", ["c0"], slice_axis=2)["c0"]
    assert moved_image.shape == (1, 6, 30, 24) and moved_label.shape == (6, 30, 24)
    assert np.array_equal(moved_image[0, 3], image[0, :, :, 3])
    assert np.array_equal(moved_label[3], label[..., 3])
    assert all(moved_label[tuple(c)] == 1 for c in props["foreground"]["1"])  # coordinates follow the axes


def test_2d_samples_are_in_plane_slices(tmp_path: Path) -> None:
    _cached_case(tmp_path / "cache")
    store = CaseStore(tmp_path / "cache", ["c0"], slice_axis=2)
    train = PatchDataset(store, "2d", (32, 32), samples_per_epoch=20, seed=0, aug_steps=())
    shapes = {tuple(train[i][0].shape) for i in range(len(train))}
    assert shapes == {(1, 32, 32)}
    assert any(int(train[i][1].sum()) == 100 for i in range(len(train)))  # a 10 x 10 in-plane slice
    val = ValidationPatches(store, "2d", (32, 32))
    assert len(val) == 2 and all(int(val[i][1].sum()) == 100 for i in range(len(val)))  # slices 2 and 3


def _padding(dataset: PatchDataset) -> list[float]:
    """Per sample: the share of the patch that lies outside the volume (the image is all non-zero)."""
    return [float((dataset[i][0] == 0).float().mean()) for i in range(len(dataset))]


def _ones_case(folder: Path, shape: tuple[int, int, int], box: tuple[slice, ...]) -> None:
    folder.mkdir(parents=True)
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    np.save(folder / "c0.img.npy", np.ones((1, *shape), np.float32))
    np.save(folder / "c0.seg.npy", label)
    coords = np.argwhere(label == 1).tolist()
    (folder / "c0.json").write_text(f'{{"case_id": "c0", "foreground": {{"1": {coords}}}}}')


def test_patches_stay_inside_the_volume_as_nnunet_places_them(tmp_path: Path) -> None:
    # Centres anywhere (version 4) left 37 % of a 64x96x96 patch of a 128x160x160 volume as padding.
    _ones_case(tmp_path / "big", (40, 48, 36), (slice(0, 3), slice(0, 3), slice(33, 36)))  # a corner
    store = CaseStore(tmp_path / "big", ["c0"])
    patches = PatchDataset(store, "3d", (16, 24, 20), samples_per_epoch=60, seed=0, aug_steps=(),
                           batch_size=3)
    assert max(_padding(patches)) == 0.0  # forced-foreground patches at the corner too
    assert [int(patches[i][1].sum() > 0) for i in (2, 5, 8)] == [1, 1, 1]  # the last of every batch of 3
    old = PatchDataset(store, "3d", (16, 24, 20), samples_per_epoch=60, seed=0, aug_steps=(), batch_size=3,
                       pipeline_version=4)
    assert np.mean(_padding(old)) > 0.2  # version 4 runs keep their sampling
    # Smaller than the patch along an axis: the whole volume inside the patch, at a random offset.
    _ones_case(tmp_path / "small", (10, 48, 36), (slice(4, 6), slice(20, 22), slice(10, 12)))
    small = PatchDataset(CaseStore(tmp_path / "small", ["c0"]), "3d", (16, 24, 20), samples_per_epoch=40,
                         seed=0, aug_steps=(), batch_size=2)
    assert {round(p, 6) for p in _padding(small)} == {round(1 - 10 / 16, 6)}
    offsets = {int(np.flatnonzero(small[i][0][0].numpy().any(axis=(1, 2)))[0]) for i in range(len(small))}
    assert len(offsets) > 3 and offsets <= set(range(7))  # a small case is not the same crop every time
    flat = PatchDataset(CaseStore(tmp_path / "small", ["c0"]), "2d", (64, 20), samples_per_epoch=40,
                        seed=0, aug_steps=(), batch_size=2)
    assert {round(p, 6) for p in _padding(flat)} == {round(1 - 48 / 64, 6)}


def test_the_last_third_of_every_batch_is_centred_on_foreground() -> None:
    from medseg_bench.data.datamodule import foreground_forced

    forced = {b: [foreground_forced(i, b) for i in range(2 * b)] for b in (2, 4, 9, 32)}
    assert {b: flags.count(True) // 2 for b, flags in forced.items()} == {2: 1, 4: 1, 9: 3, 32: 11}  # nnU-Net
    assert forced[4] == [False, False, False, True] * 2  # the same positions in every batch
    assert foreground_forced(0, 1) is None  # a batch of one: a draw per sample


def test_rotation_and_scaling_read_the_volume_around_the_patch(tmp_path: Path) -> None:
    # Version 5 rotated and scaled the patch alone: its corners (and a patch scaled down, its frame) were
    # zeros inside the volume. Version 6 reads the volume around the patch, as nnU-Net's spatial transform.
    from medseg_bench.augment import AUGS

    _ones_case(tmp_path / "big", (60, 60, 60), (slice(28, 32), slice(28, 32), slice(28, 32)))
    store = CaseStore(tmp_path / "big", ["c0"])
    spatial = tuple(type(s)(s.name, 1.0, s.draw, s.apply, s.reads) for s in AUGS.get("heavy")
                    if s.name in ("affine", "elastic"))
    def samples(dims: str, patch: tuple[int, ...], steps: tuple, version: int) -> list:
        data = PatchDataset(store, dims, patch, samples_per_epoch=6, seed=0, aug_steps=steps, batch_size=3,
                            pipeline_version=version)
        return [data[i] for i in range(6)]

    for dims, patch in (("3d", (12, 12, 12)), ("2d", (16, 16))):
        # forced-foreground patches (2 and 5) sit near the centre, far from the volume's border: no zeros
        assert [float(s[0].min()) for s in samples(dims, patch, spatial, 6)[2::3]] == [1.0, 1.0]
        assert min(float(s[0].min()) for s in samples(dims, patch, spatial, 5)[2::3]) == 0.0
        # without augmentation, version 5's samples exactly
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
                   for a, b in zip(samples(dims, patch, (), 6), samples(dims, patch, (), 5), strict=True))
