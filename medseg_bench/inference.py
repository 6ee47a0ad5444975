"""Full-volume inference: a Gaussian-weighted sliding window over the volume (3D) or within each slice (2D),
as nnU-Net v2's predictor does.

From pipeline version 10 (`NNUNET_INFERENCE_FROM`) the 3D window is nnU-Net's (`_sliding_window`: its tile
steps, Gaussian, padding), and mirroring test-time augmentation averages the network's logits over every flip
of each tile (nnU-Net's `_internal_maybe_mirror_and_predict`), then takes the softmax. From version 11
(`SLICE_WINDOW_FROM`) 2D runs slide the same window within each slice, with a 2D patch, as nnU-Net's 2d
configuration; before, each whole slice went through the network at once, padded to a multiple of 32. Runs
of version 9 and older are predicted as they were evaluated: MONAI's `sliding_window_inference`, the softmax
averaged over flips of the whole volume (or slice).

A run with `target: regions` (`regions.py`) is predicted the same way with a sigmoid for the softmax (the
logits averaged over tiles and flips, then each region's sigmoid, as nnU-Net's predictor for region-based
training); its probabilities are mapped back to the original grid as logits (`resample.to_original_regions`),
an ensemble's averaged as probabilities (nnU-Net's ensembling), each region kept over 0.5 and painted into a
label map (`regions.paint`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from medseg_bench.regions import paint_probabilities
from medseg_bench.spec import PIPELINE_VERSION

SLICE_MULTIPLE = 32
SLICE_BATCH = 32
TILE_BATCH = 4  # tiles per forward pass (instance norm and eval-mode batch norm: the same as one at a time)
TILE_STEP = 0.5  # nnU-Net's tile_step_size: tiles overlap by at least half a patch
NNUNET_INFERENCE_FROM = 10
SLICE_WINDOW_FROM = 11
NNUNET_RESIZE_FROM = 12


def _flips(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    axes = range(2, 2 + ndim)
    if not tta:
        return [()]
    return [combo for r in range(ndim + 1) for combo in itertools.combinations(axes, r)]


def _flip_mean(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flips: list[tuple[int, ...]],
               softmax: bool = False) -> torch.Tensor:
    """`run`'s output for `x` averaged over `flips` (each flipped back), in float32: the logits (nnU-Net's
    `_internal_maybe_mirror_and_predict`), or with `softmax` each flip's softmax (version 9 and older)."""
    total = None
    for axes in flips:
        out = run(torch.flip(x, axes)) if axes else run(x)
        out = (torch.softmax(out, dim=1) if softmax else out).float()
        out = torch.flip(out, axes) if axes else out
        total = out if total is None else total + out
    assert total is not None
    return total / len(flips)


def _activation(logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """Probabilities of (B, K, *spatial) logits: the softmax (float32), or each region's sigmoid (`regions`)
    in float64, whose logit `resample.to_original_regions` takes again to map it back as nnU-Net maps logits:
    float32's sigmoid is 1 from a logit of 17 on, a confident network's everyday value (float64's: 37)."""
    return torch.sigmoid(logits.double()) if regions else torch.softmax(logits, dim=1).float()


def mapping_back(pipeline_version: int) -> dict[str, bool]:
    """How a run's probabilities are mapped back to the original grid (`resample.to_original`'s options): as
    logarithms from version 10, so that the class is the one nnU-Net's resampled logits give; resampled as
    nnU-Net resamples, its nearest slices along a thick axis included, from version 12
    (`NNUNET_RESIZE_FROM`)."""
    return {"log_space": pipeline_version >= NNUNET_INFERENCE_FROM,
            "nnunet_resize": pipeline_version >= NNUNET_RESIZE_FROM}


@functools.lru_cache(maxsize=8)
def _gaussian(patch: tuple[int, ...]) -> np.ndarray:
    """nnU-Net's `compute_gaussian`: a unit impulse at `patch // 2` blurred with sigma `patch / 8`, peak 1,
    its zeros raised to its smallest non-zero weight (float32; nnU-Net keeps it in float16)."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    weight = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    weight /= weight.max()
    weight[weight == 0] = weight[weight > 0].min()
    weight = weight.astype(np.float32)
    weight.flags.writeable = False
    return weight


def _tile_starts(size: int, tile: int) -> list[int]:
    """nnU-Net's `compute_steps_for_sliding_window` along one axis (`size` >= `tile`): as few tiles as steps
    of at most half a tile need, spread evenly from 0 to `size - tile`."""
    n = int(np.ceil((size - tile) / (tile * TILE_STEP))) + 1
    return [0] if n == 1 else [int(np.round((size - tile) / (n - 1) * i)) for i in range(n)]


def _sliding_window(x: torch.Tensor, patch: tuple[int, ...],
                    predict: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Gaussian-weighted logits of a (B, C, *spatial) tensor, stitched from `predict` on patch-sized tiles, as
    nnU-Net's `predict_sliding_window_return_logits`: zero padding up to the patch (centred, the odd voxel
    after), its tile steps, its Gaussian; accumulated in float32. The B images (a volume, or slices of one
    size) are tiled alike and go through `predict` together, each as it would alone."""
    shape = tuple(x.shape[2:])
    short = [max(p - s, 0) for s, p in zip(shape, patch, strict=True)]
    low = [d // 2 for d in short]
    if any(short):  # torch's pad lists the last axis first
        x = torch.nn.functional.pad(x, [v for d, lo in zip(short[::-1], low[::-1], strict=True)
                                        for v in (lo, d - lo)])
    size = tuple(x.shape[2:])
    weight = torch.tensor(_gaussian(tuple(patch)), device=x.device)  # a copy: the cache stays read-only
    boxes = [tuple(slice(a, a + p) for a, p in zip(start, patch, strict=True))
             for start in itertools.product(*(_tile_starts(s, p) for s, p in zip(size, patch, strict=True)))]
    out: torch.Tensor | None = None
    count = torch.zeros(size, device=x.device)
    images = x.shape[0]
    per_call = max(1, TILE_BATCH // images)  # tiles per forward pass: TILE_BATCH, or one per image
    for first in range(0, len(boxes), per_call):
        group = boxes[first:first + per_call]
        logits = predict(torch.cat([x[(slice(None), slice(None), *box)] for box in group])).float()
        if out is None:
            out = torch.zeros((images, logits.shape[1], *size), device=x.device)
        for box, tiles in zip(group, logits.split(images), strict=True):
            out[(slice(None), slice(None), *box)] += tiles * weight
            count[box] += weight
    assert out is not None
    inside = tuple(slice(lo, lo + s) for lo, s in zip(low, shape, strict=True))
    return (out / count)[(slice(None), slice(None), *inside)]


@torch.no_grad()
def predict_probabilities(net: nn.Module, image: np.ndarray, dims: str, patch_size: Sequence[int],
                          device: torch.device | str = "cpu", tta: bool = False, slice_axis: int = 0,
                          pipeline_version: int = PIPELINE_VERSION, regions: bool = False) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) for a normalised (C, Z, Y, X) image; 2D nets see its slices along
    `slice_axis` (`data.plan.slice_axis` of the target spacing). `pipeline_version`: the run's (see the
    module docstring). `regions`: a region run's, each channel's sigmoid (R, Z, Y, X), float64 (see
    `_activation`)."""
    net = net.eval().to(device)
    legacy = pipeline_version < NNUNET_INFERENCE_FROM
    if regions and legacy:
        raise ValueError(f"no region run is of pipeline version {pipeline_version}")
    amp = torch.autocast("cuda", dtype=torch.float16) if str(device).startswith("cuda") else nullcontext()
    with amp:
        if dims == "3d":
            x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
            flips = _flips(3, tta)
            if legacy:
                from monai.inferers import sliding_window_inference

                def run(xin: torch.Tensor) -> torch.Tensor:
                    # `net` returns one tensor, so the stitched result is one too (not a tuple or dict).
                    out = sliding_window_inference(xin, tuple(patch_size), sw_batch_size=4, predictor=net,
                                                   overlap=0.5, mode="gaussian")
                    return cast(torch.Tensor, out)

                probs = _flip_mean(run, x, flips, softmax=True)[0]
            else:
                logits = _sliding_window(x, tuple(patch_size), lambda tile: _flip_mean(net, tile, flips))
                probs = _activation(logits, regions)[0]
            return probs.cpu().numpy()
        image = np.moveaxis(image, slice_axis + 1, 1)
        if pipeline_version >= SLICE_WINDOW_FROM:
            slices = _slice_window(net, image, tuple(patch_size), device, tta, regions)
        else:
            slices = _predict_slices(net, image, patch_size, device, tta, legacy, regions)
        return np.moveaxis(slices, 1, slice_axis + 1)


def _slice_window(net: nn.Module, image: np.ndarray, patch: tuple[int, ...], device: torch.device | str,
                  tta: bool, regions: bool = False) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) of a (C, Z, Y, X) image, slice by slice along Z, each slice through
    nnU-Net's sliding window with the 2D `patch` (`_sliding_window`; its tiles' logits averaged over the
    flips of both axes with `tta`), SLICE_BATCH slices per forward pass."""
    flips = _flips(2, tta)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, 1, 0)))  # (Z, C, Y, X)
    out = []
    for start in range(0, slices.shape[0], SLICE_BATCH):
        x = slices[start:start + SLICE_BATCH].to(device)
        logits = _sliding_window(x, patch, lambda tile: _flip_mean(net, tile, flips))
        out.append(_activation(logits, regions).cpu())
    return torch.cat(out).permute(1, 0, 2, 3).numpy()


def _predict_slices(net: nn.Module, image: np.ndarray, patch_size: Sequence[int], device: torch.device | str,
                    tta: bool, legacy: bool, regions: bool = False) -> np.ndarray:
    _, z, h, w = image.shape
    ph = max(int(np.ceil(h / SLICE_MULTIPLE)) * SLICE_MULTIPLE, patch_size[0])
    pw = max(int(np.ceil(w / SLICE_MULTIPLE)) * SLICE_MULTIPLE, patch_size[1])
    top, left = (ph - h) // 2, (pw - w) // 2
    slices = np.zeros((z, image.shape[0], ph, pw), dtype=np.float32)
    slices[:, :, top:top + h, left:left + w] = np.moveaxis(image, 1, 0)
    flips = _flips(2, tta)
    out = []
    for start in range(0, z, SLICE_BATCH):
        x = torch.from_numpy(slices[start:start + SLICE_BATCH]).to(device)
        if legacy:
            probs = _flip_mean(net, x, flips, softmax=True)
        else:
            probs = _activation(_flip_mean(net, x, flips), regions)
        out.append(probs[:, :, top:top + h, left:left + w].cpu())
    return torch.cat(out).permute(1, 0, 2, 3).numpy()


def predict_labels(net: nn.Module, image: np.ndarray, dims: str, patch_size: Sequence[int],
                   device: torch.device | str = "cpu", tta: bool = False, slice_axis: int = 0,
                   pipeline_version: int = PIPELINE_VERSION,
                   paint: Sequence[int] | None = None) -> np.ndarray:
    """Label map (Z, Y, X) uint8 for a normalised (C, Z, Y, X) image. `paint`: a region run's label for each
    region (`regions.region_labels`)."""
    probs = predict_probabilities(net, image, dims, patch_size, device, tta, slice_axis, pipeline_version,
                                  regions=paint is not None)
    if paint is not None:
        return paint_probabilities(probs, paint)
    return probs.argmax(0).astype(np.uint8)


def to_label_map(probabilities: np.ndarray, props: dict, pipeline_version: int,
                 paint: Sequence[int] | None = None) -> np.ndarray:
    """The label map on a cached case's original grid of its probabilities in preprocessed space, as
    `mapping_back` says for the run's version: the class of the resampled softmax, or with `paint` (a region
    run's) each region whose resampled logit is over 0 (its sigmoid over 0.5), painted in order."""
    from medseg_bench.data.resample import to_original, to_original_regions

    way = mapping_back(pipeline_version)
    if paint is None:
        return to_original(probabilities, props, **way)
    return paint_probabilities(to_original_regions(probabilities, props, **way), paint)


@dataclass(frozen=True)
class Member:
    """One trained network of an ensemble, and how it predicts (as its run was trained and evaluated)."""

    net: nn.Module
    dims: str
    patch_size: tuple[int, ...]
    tta: bool = False
    slice_axis: int = 0
    pipeline_version: int = PIPELINE_VERSION
    own_slices: bool = False  # sees each image at its own slice spacing (`RunSpec.own_slice_spacing`)
    paint: tuple[int, ...] | None = None  # a region run's: the label each region paints (`regions.py`)


def predict_image(net: nn.Module, image: np.ndarray, spacing_zyx: Sequence[float], plan: Any, dims: str,
                  patch_size: Sequence[int], device: torch.device | str = "cpu",
                  tta: bool = False, slice_axis: int = 0,
                  pipeline_version: int = PIPELINE_VERSION, own_slices: bool = False,
                  paint: Sequence[int] | None = None) -> np.ndarray:
    """Label map (Z, Y, X) uint8 on the grid of a raw (C, Z, Y, X) image with voxel spacing `spacing_zyx`.

    The image goes through what the cache applies (`preprocess.preprocess_image`: crop to the non-zero
    region, normalise, resample to the plan's target spacing, or with `own_slices` in plane only); the
    probabilities are resampled back and the crop is undone (outside: background).
    A 2D net slices along `slice_axis`, the run's (`training.run_slice_axis`). `paint`: a region run's label
    for each region.
    """
    return predict_ensemble([Member(net, dims, tuple(patch_size), tta, slice_axis, pipeline_version,
                                    own_slices, None if paint is None else tuple(paint))],
                            image, spacing_zyx, plan, device)


def predict_ensemble(members: Sequence[Member], image: np.ndarray, spacing_zyx: Sequence[float], plan: Any,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """The label map of `predict_ensemble_probabilities`, without the probabilities."""
    return predict_ensemble_probabilities(members, image, spacing_zyx, plan, device)[0]


def predict_ensemble_probabilities(members: Sequence[Member], image: np.ndarray, spacing_zyx: Sequence[float],
                                   plan: Any, device: torch.device | str = "cpu",
                                   with_probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """`predict_image` for several networks trained on the same plan: the mean of their softmax
    probabilities, as `nnUNetv2_ensemble` ensembles configurations (`nnUNetv2_predict -f 0 1 2 3 4` averages
    the folds' logits instead).

    Networks that see the image alike (the same resampled array) are averaged where they predict and mapped
    back as one prediction (`resample.to_original`, as `mapping_back` says for the members' pipeline version:
    from version 10 in log space, which for one network is nnU-Net's resampling of its logits). Where they
    see it differently (2D runs at the image's own slice spacing beside 3D runs, on an image whose slices
    the plan resamples), each group's probabilities are mapped back to the original grid first
    (`resample.to_original_probabilities`, what nnU-Net exports to ensemble) and averaged there, each network
    weighing the same.

    Returns the label map and, `with_probabilities`, the class probabilities on the image's grid, (K, Z, Y, X)
    float32 (`to_original_probabilities`, what nnU-Net's `--save_probabilities` exports); else None.

    Region runs (`Member.paint`; an ensemble holds region runs only, of one task) are averaged as sigmoid
    probabilities, as nnU-Net ensembles them, mapped back as logits (`resample.to_original_regions`) and
    painted (`regions.paint`); their probabilities are the regions', (R, Z, Y, X), 0 outside the crop box.
    """
    from medseg_bench.data.preprocess import case_target_spacing, crop_box, preprocess_image, resampling
    from medseg_bench.data.resample import to_original, to_original_probabilities, to_original_regions

    assert members, "an ensemble needs at least one member"
    paint = members[0].paint
    if any(m.paint != paint for m in members):
        raise ValueError("an ensemble of region and label runs (or of regions painted otherwise)")
    cropped = [hi - lo for lo, hi in crop_box(image, plan)]
    groups: dict[tuple[Any, ...], list[Member]] = {}  # by what resampling does: each preprocessed once
    for member in members:
        key = resampling(cropped, spacing_zyx, case_target_spacing(plan, spacing_zyx, member.own_slices))
        groups.setdefault(key, []).append(member)
    mapped = []  # per group: mean probabilities, grid, how to map back, members
    for group in groups.values():
        resampled, _, grid = preprocess_image(image, spacing_zyx, plan, own_slices=group[0].own_slices)
        ways = [mapping_back(m.pipeline_version) for m in group]
        way = {option: all(w[option] for w in ways) for option in ways[0]}  # mixed versions: the older way
        mapped.append((_mean_probabilities(group, resampled, device), grid, way, len(group)))
    if paint is not None:  # regions: painted from the probabilities on the image's grid, one group or more
        regions = np.asarray(sum(to_original_regions(probs, grid, **way) * (n / len(members))
                                 for probs, grid, way, n in mapped), dtype=np.float32)
        return paint_probabilities(regions, paint), (regions if with_probabilities else None)
    if len(mapped) == 1 and not with_probabilities:
        probs, grid, way, _ = mapped[0]
        return to_original(probs, grid, **way), None
    original = np.asarray(sum(to_original_probabilities(probs, grid, **way) * (n / len(members))
                              for probs, grid, way, n in mapped), dtype=np.float32)
    if len(mapped) == 1:  # the labels as without the probabilities: the argmax of the resampled logits
        probs, grid, way, _ = mapped[0]
        return to_original(probs, grid, **way), original
    return original.argmax(0).astype(np.uint8), original


def _mean_probabilities(members: Sequence[Member], image: np.ndarray,
                        device: torch.device | str) -> np.ndarray:
    """The mean of `members`' class probabilities for one preprocessed image."""
    total: np.ndarray | None = None
    for member in members:
        probs = predict_probabilities(member.net, image, member.dims, member.patch_size, device, member.tta,
                                      member.slice_axis, member.pipeline_version,
                                      regions=member.paint is not None)
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(members) if len(members) > 1 else total
