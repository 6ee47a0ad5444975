"""Full-volume inference: slice by slice (2D) or MONAI sliding window with Gaussian weighting (3D).

Optional mirroring test-time augmentation averages the softmax over all flips of the spatial axes (nnU-Net
averages the flips' logits, then takes the softmax).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

SLICE_MULTIPLE = 32
SLICE_BATCH = 32


def _flips(ndim: int, tta: bool) -> list[tuple[int, ...]]:
    axes = range(2, 2 + ndim)
    if not tta:
        return [()]
    return [combo for r in range(ndim + 1) for combo in itertools.combinations(axes, r)]


def _mirrored_softmax(net: nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]],
                      run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    total = None
    for axes in flips:
        xin = torch.flip(x, axes) if axes else x
        prob = torch.softmax(run(xin), dim=1)
        prob = torch.flip(prob, axes) if axes else prob
        total = prob if total is None else total + prob
    assert total is not None
    return total / len(flips)


@torch.no_grad()
def predict_probabilities(net: nn.Module, image: np.ndarray, dims: str, patch_size: Sequence[int],
                          device: torch.device | str = "cpu", tta: bool = False, slice_axis: int = 0,
                          ) -> np.ndarray:
    """Softmax probabilities (K, Z, Y, X) for a normalised (C, Z, Y, X) image; 2D nets see its slices along
    `slice_axis` (`data.plan.slice_axis` of the target spacing)."""
    net = net.eval().to(device)
    amp = torch.autocast("cuda", dtype=torch.float16) if str(device).startswith("cuda") else nullcontext()
    with amp:
        if dims == "3d":
            from monai.inferers import sliding_window_inference

            x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)

            def run(xin: torch.Tensor) -> torch.Tensor:
                # `net` returns one tensor, so the stitched result is one too (not a tuple or dict of them).
                out = sliding_window_inference(xin, tuple(patch_size), sw_batch_size=4, predictor=net,
                                               overlap=0.5, mode="gaussian")
                return cast(torch.Tensor, out)

            probs = _mirrored_softmax(net, x, _flips(3, tta), run)[0]
            return probs.float().cpu().numpy()
        slices = _predict_slices(net, np.moveaxis(image, slice_axis + 1, 1), patch_size, device, tta)
        return np.moveaxis(slices, 1, slice_axis + 1)


def _predict_slices(net: nn.Module, image: np.ndarray, patch_size: Sequence[int], device: torch.device | str,
                    tta: bool) -> np.ndarray:
    _, z, h, w = image.shape
    ph = max(int(np.ceil(h / SLICE_MULTIPLE)) * SLICE_MULTIPLE, patch_size[0])
    pw = max(int(np.ceil(w / SLICE_MULTIPLE)) * SLICE_MULTIPLE, patch_size[1])
    top, left = (ph - h) // 2, (pw - w) // 2
    slices = np.zeros((z, image.shape[0], ph, pw), dtype=np.float32)
    slices[:, :, top:top + h, left:left + w] = np.moveaxis(image, 1, 0)
    out = []
    for start in range(0, z, SLICE_BATCH):
        x = torch.from_numpy(slices[start:start + SLICE_BATCH]).to(device)
        probs = _mirrored_softmax(net, x, _flips(2, tta), net)
        out.append(probs[:, :, top:top + h, left:left + w].float().cpu())
    return torch.cat(out).permute(1, 0, 2, 3).numpy()


def predict_labels(net: nn.Module, image: np.ndarray, dims: str, patch_size: Sequence[int],
                   device: torch.device | str = "cpu", tta: bool = False, slice_axis: int = 0) -> np.ndarray:
    """Label map (Z, Y, X) uint8 for a normalised (C, Z, Y, X) image."""
    probs = predict_probabilities(net, image, dims, patch_size, device, tta, slice_axis)
    return probs.argmax(0).astype(np.uint8)



@dataclass(frozen=True)
class Member:
    """One trained network of an ensemble, and how it predicts (as its run was trained and evaluated)."""

    net: nn.Module
    dims: str
    patch_size: tuple[int, ...]
    tta: bool = False
    slice_axis: int = 0


def predict_image(net: nn.Module, image: np.ndarray, spacing_zyx: Sequence[float], plan: Any, dims: str,
                  patch_size: Sequence[int], device: torch.device | str = "cpu",
                  tta: bool = False, slice_axis: int = 0) -> np.ndarray:
    """Label map (Z, Y, X) uint8 on the grid of a raw (C, Z, Y, X) image with voxel spacing `spacing_zyx`.

    The image goes through what the cache applies (`preprocess.preprocess_image`: crop to the non-zero
    region, normalise, resample to the plan's target spacing); the probabilities are resampled back and the
    crop is undone (outside: background).
    A 2D net slices along `slice_axis`, the run's (`training.run_slice_axis`).
    """
    return predict_ensemble([Member(net, dims, tuple(patch_size), tta, slice_axis)], image, spacing_zyx, plan,
                            device)


def predict_ensemble(members: Sequence[Member], image: np.ndarray, spacing_zyx: Sequence[float], plan: Any,
                     device: torch.device | str = "cpu") -> np.ndarray:
    """`predict_image` for several networks trained on the same preprocessing (`plan`): the mean of their
    softmax probabilities, as `nnUNetv2_ensemble` ensembles configurations (`nnUNetv2_predict -f 0 1 2 3 4`
    averages the folds' logits instead). Averaging before mapping back is exact: the probabilities are
    resampled linearly."""
    from medseg_bench.data.preprocess import preprocess_image
    from medseg_bench.data.resample import to_original

    resampled, _, grid = preprocess_image(image, spacing_zyx, plan)
    total: np.ndarray | None = None
    for member in members:
        probs = predict_probabilities(member.net, resampled, member.dims, member.patch_size, device,
                                      member.tta, member.slice_axis)
        if total is None:
            total = probs
        else:
            total += probs
    assert total is not None, "an ensemble needs at least one member"
    if len(members) > 1:
        total /= len(members)
    return to_original(total, grid)
