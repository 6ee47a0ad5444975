"""Training and validation samples from the preprocessed cache: 3D patches or 2D slices.

Sample `i` of epoch `e` is a pure function of (seed, e, i): the sampler hands out global indices, so
results do not depend on the number of DataLoader workers, and augmentation runs inside the workers.
A third of the samples is centred on a foreground voxel (nnU-Net's oversampling).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medseg_bench.augment import Params, Step, apply_plan, draw_plan, input_shape, steps_for_version
from medseg_bench.data.plan import in_plane
from medseg_bench.data.preprocess import load_case
from medseg_bench.spec import PIPELINE_VERSION

FOREGROUND_FRACTION = 1 / 3


class EpochSampler(Sampler[int]):
    """Yields indices `epoch * n .. epoch * n + n - 1`; Lightning calls `set_epoch` before each epoch."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.n, (self.epoch + 1) * self.n))

    def __len__(self) -> int:
        return self.n


def crop_with_padding(array: np.ndarray, center: Sequence[int] | np.ndarray, size: Sequence[int]
                      ) -> np.ndarray:
    """Crop the last len(size) axes around `center`, zero-padding where the window leaves the array."""
    lead = array.ndim - len(size)
    out = np.zeros(array.shape[:lead] + tuple(size), dtype=array.dtype)
    src, dst = [slice(None)] * lead, [slice(None)] * lead
    for axis, (c, s) in enumerate(zip(center, size, strict=True)):
        start = int(c) - s // 2
        dim = array.shape[lead + axis]
        lo, hi = max(start, 0), min(start + s, dim)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = array[tuple(src)]
    return out


def crop_sample(image: np.ndarray, label: np.ndarray, center: np.ndarray, dims: str,
                patch_size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The 3D patch, or the 2D slice `center[0]` cropped in plane, around `center` (zero-padded)."""
    if dims == "2d":
        z = int(center[0])
        return (crop_with_padding(image[:, z], center[1:], patch_size),
                crop_with_padding(label[z], center[1:], patch_size))
    return crop_with_padding(image, center, patch_size), crop_with_padding(label, center, patch_size)


class CaseStore:
    """Memory-mapped cached cases, opened once per process.

    With `slice_axis` (2D runs: `data.plan.slice_axis` of the target spacing), arrays and foreground
    coordinates are seen with that axis first (views, no copies), so slices are always taken along the first.
    """

    def __init__(self, cache_dir: Path, case_ids: Sequence[str], slice_axis: int = 0) -> None:
        self.cache_dir = cache_dir
        self.case_ids = list(case_ids)
        self.slice_axis = slice_axis
        self._open: dict[str, tuple[np.ndarray, np.ndarray, dict]] = {}

    def __getitem__(self, case_id: str) -> tuple[np.ndarray, np.ndarray, dict]:
        if case_id not in self._open:
            image, label, props = load_case(self.cache_dir, case_id)
            axis = self.slice_axis
            if axis:
                order = [axis, *in_plane(range(3), axis)]
                image, label = np.moveaxis(image, axis + 1, 1), np.moveaxis(label, axis, 0)
                props = {**props, "foreground": {value: [[c[i] for i in order] for c in coords]
                                                 for value, coords in props["foreground"].items()}}
            self._open[case_id] = image, label, props
        return self._open[case_id]


def _pick_center(
    rng: np.random.Generator, label_shape: tuple[int, ...], props: dict, force_foreground: bool
) -> np.ndarray:
    """Pipeline version 4 and older: a foreground voxel, or any voxel, as the patch centre (the patch may
    hang over the border: zero padding)."""
    if force_foreground and props["foreground"]:
        return _foreground_voxel(rng, props["foreground"])
    return np.array([int(rng.integers(s)) for s in label_shape])


def _foreground_voxel(rng: np.random.Generator, foreground: dict[str, list[list[int]]]) -> np.ndarray:
    """A stored voxel of a class drawn among those the case has (each class as likely, however small)."""
    classes = sorted(foreground)
    coords = foreground[classes[int(rng.integers(len(classes)))]]
    return np.array(coords[int(rng.integers(len(coords)))])


def _place_patch(
    rng: np.random.Generator, label_shape: tuple[int, ...], props: dict, force_foreground: bool,
    patch_size: Sequence[int],
) -> np.ndarray:
    """The centre of a training sample: the patch (in plane, for a 2D slice `patch_size` of two sides) stays
    inside the volume along every axis the volume is at least as large as the patch, as nnU-Net v2's
    `get_bbox` keeps it; along a smaller axis the volume lies wholly inside the patch, at a random offset
    (nnU-Net centres it, then its spatial augmentation moves it; without augmentation every sample of a small
    case would be the same crop). A forced-foreground patch is centred on a voxel of a class drawn among
    those present, then moved inside these bounds (the voxel stays in the patch)."""
    lead = len(label_shape) - len(patch_size)  # 1 for a 2D slice of a volume: its slice index is free
    spatial, size = np.array(label_shape[lead:]), np.array(patch_size)
    low, high = np.minimum(spatial - size, 0), np.maximum(spatial - size, 0)  # of the patch's first voxel
    if force_foreground and props["foreground"]:
        voxel = _foreground_voxel(rng, props["foreground"])
        start = np.clip(voxel[lead:] - size // 2, low, high)
        return np.concatenate([voxel[:lead], start + size // 2])
    lead_coords = [int(rng.integers(s)) for s in label_shape[:lead]]
    start = np.array([int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high, strict=True)])
    return np.concatenate([np.array(lead_coords, dtype=int), start + size // 2])


def foreground_forced(index: int, batch_size: int) -> bool | None:
    """nnU-Net's oversampling: the last third of every batch (rounded as nnU-Net rounds: 1 of 2, 1 of 4,
    11 of 32) is centred on foreground. A batch of one has no last third: None, and the caller draws (a
    third of such samples, as nnU-Net's probabilistic oversampling)."""
    first_forced = round(batch_size * (1 - FOREGROUND_FRACTION))
    return None if first_forced >= batch_size else index % batch_size >= first_forced


class PatchDataset(Dataset):
    """Random training samples: 3D patches (`dims="3d"`) or 2D slices (`dims="2d"`) along the store's first
    axis (its `slice_axis` of the cached volume)."""

    def __init__(
        self,
        store: CaseStore,
        dims: str,
        patch_size: Sequence[int],
        samples_per_epoch: int,
        seed: int,
        aug_steps: tuple[Step, ...],
        thick_axis: int | None = None,
        batch_size: int = 1,
        pipeline_version: int = PIPELINE_VERSION,
    ) -> None:
        self.store, self.dims, self.patch_size = store, dims, tuple(patch_size)
        self.samples_per_epoch, self.seed = samples_per_epoch, seed
        self.aug_steps = steps_for_version(aug_steps, pipeline_version)
        self.thick_axis = thick_axis  # 3D patches of thick-slice data: spatial augmentation in plane
        self.batch_size = batch_size  # the sampler yields each batch's indices in order: index % batch_size
        # Pipeline version 4 or older: centres anywhere, foreground by a draw per sample.
        self.legacy = pipeline_version < 5
        # Version 6: rotation, scaling and elastic deformation read the volume around the patch (a margin).
        self.margin = pipeline_version >= 6

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img, seg, _ = self.draw(index)
        return torch.from_numpy(img), torch.from_numpy(seg[None].astype(np.int64))

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Params]]]:
        """Sample `index`: image, label and the augmentation steps applied (name, parameters)."""
        rng = np.random.default_rng([self.seed, index])
        case_id = self.store.case_ids[int(rng.integers(len(self.store.case_ids)))]
        image, label, props = self.store[case_id]
        if self.legacy:
            center = _pick_center(rng, label.shape, props, rng.random() < FOREGROUND_FRACTION)
        else:
            forced = foreground_forced(index, self.batch_size)
            if forced is None:
                forced = rng.random() < FOREGROUND_FRACTION
            center = _place_patch(rng, label.shape, props, forced, self.patch_size)
        plan = draw_plan(self.aug_steps, rng, self.patch_size, self.thick_axis)
        region = input_shape(plan, self.patch_size) if self.margin else self.patch_size
        img, seg = crop_sample(image, label, center, self.dims, region)
        return apply_plan(img, seg, plan, self.patch_size if self.margin else None)


class ValidationPatches(Dataset):
    """A fixed set of validation samples: per held-out case, the patch (3D) or up to 8 foreground slices
    (2D) around its foreground. Used for the per-epoch pseudo-Dice; final scores use full volumes."""

    def __init__(self, store: CaseStore, dims: str, patch_size: Sequence[int]) -> None:
        self.items: list[tuple[str, np.ndarray]] = []
        self.store, self.dims, self.patch_size = store, dims, tuple(patch_size)
        for case_id in store.case_ids:
            _, label, _ = store[case_id]
            coords = np.argwhere(label > 0)
            center = coords.mean(0).round().astype(int) if len(coords) else np.array(label.shape) // 2
            if dims == "3d":
                self.items.append((case_id, center))
                continue
            slices = np.unique(coords[:, 0]) if len(coords) else np.array([label.shape[0] // 2])
            for z in slices[np.linspace(0, len(slices) - 1, min(8, len(slices))).round().astype(int)]:
                self.items.append((case_id, np.array([z, *center[1:]])))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        case_id, center = self.items[index]
        image, label, _ = self.store[case_id]
        img, seg = crop_sample(image, label, center, self.dims, self.patch_size)
        return torch.from_numpy(np.ascontiguousarray(img)), torch.from_numpy(seg[None].astype(np.int64))


def make_loaders(
    cache_dir: Path,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    dims: str,
    patch_size: Sequence[int],
    batch_size: int,
    iters_per_epoch: int,
    seed: int,
    aug_steps: tuple[Step, ...],
    num_workers: int,
    slice_axis: int = 0,
    thick_axis: int | None = None,
    pipeline_version: int = PIPELINE_VERSION,
) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders; 2D runs slice the cached volumes along `slice_axis`; 3D runs on
    thick-slice data (`thick_axis`) augment in plane; `pipeline_version`: that version's sampling and
    augmentation (a resumed run keeps its own)."""
    train = PatchDataset(CaseStore(cache_dir, train_ids, slice_axis), dims, patch_size,
                         iters_per_epoch * batch_size, seed, aug_steps, thick_axis if dims == "3d" else None,
                         batch_size, pipeline_version)
    val = ValidationPatches(CaseStore(cache_dir, val_ids, slice_axis), dims, patch_size)
    common: dict[str, Any] = {
        "num_workers": num_workers,
        "persistent_workers": num_workers > 0,
        "pin_memory": torch.cuda.is_available(),
    }
    train_loader = DataLoader(
        train, batch_size=batch_size, sampler=EpochSampler(len(train)), drop_last=True, **common
    )
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, **common)
    return train_loader, val_loader
