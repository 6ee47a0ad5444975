"""Training samples: 2D slices along the plan's slice axis, foreground picks in the same axis order."""

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
