"""Inference: mirroring TTA averages over every flip; 2D slice-wise and 3D sliding window keep shapes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from medseg_bench.inference import _gaussian, _tile_starts, predict_labels, predict_probabilities


class _Shifted(nn.Module):
    """Not flip-equivariant: class logits depend on the position along every axis."""

    def __init__(self, ndim: int) -> None:
        super().__init__()
        self.ndim = ndim
        self.conv = (nn.Conv2d if ndim == 2 else nn.Conv3d)(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = sum(torch.linspace(0, 1, s).reshape([-1 if i == a else 1 for i in range(self.ndim)])
                   for a, s in enumerate(x.shape[2:]))
        return self.conv(x) + torch.stack([ramp, -ramp])[None]


def _combos(ndim: int) -> list[tuple[int, ...]]:
    axes = list(range(2, 2 + ndim))
    return [c for r in range(ndim + 1) for c in itertools.combinations(axes, r)]


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_tta_averages_the_logits_over_all_mirrorings(dims: str) -> None:
    # nnU-Net's `_internal_maybe_mirror_and_predict`: flip, predict, flip back, average the logits; softmax.
    torch.manual_seed(0)
    ndim = 2 if dims == "2d" else 3
    net = _Shifted(ndim).eval()
    image = np.random.default_rng(0).normal(size=(1, 8, 32, 32)).astype(np.float32)
    patch = (32, 32) if dims == "2d" else (8, 32, 32)  # one tile: the window adds nothing
    plain = predict_probabilities(net, image, dims, patch)
    tta = predict_probabilities(net, image, dims, patch, tta=True)
    assert plain.shape == tta.shape == (2, 8, 32, 32)
    assert np.allclose(tta.sum(0), 1, atol=1e-5) and not np.allclose(plain, tta, atol=1e-3)
    with torch.no_grad():
        x = torch.from_numpy(image)
        x = x.permute(1, 0, 2, 3) if dims == "2d" else x[None]
        combos = _combos(ndim)
        logits = sum(torch.flip(net(torch.flip(x, c)), c) for c in combos) / len(combos)
        ref = torch.softmax(logits, 1)
        ref = ref.permute(1, 0, 2, 3) if dims == "2d" else ref[0]
        # Version 9 and older: the softmax of each flip, averaged.
        old = sum(torch.flip(torch.softmax(net(torch.flip(x, c)), 1), c) for c in combos) / len(combos)
        old = old.permute(1, 0, 2, 3) if dims == "2d" else old[0]
    assert np.allclose(tta, ref.numpy(), atol=1e-5) and not np.allclose(tta, old.numpy(), atol=1e-3)
    legacy = predict_probabilities(net, image, dims, patch, tta=True, pipeline_version=9)
    assert np.allclose(legacy, old.numpy(), atol=1e-5)


def test_tta_flips_each_padded_tile() -> None:
    # nnU-Net pads the image to the patch (centred, the odd voxel after) and mirrors the padded tile; version
    # 9 mirrored the volume and padded after, so an odd padding put each flip one voxel off.
    net = _Shifted(3).eval()
    image = np.random.default_rng(4).normal(size=(1, 5, 13, 16)).astype(np.float32)
    tta = predict_probabilities(net, image, "3d", (8, 16, 16), tta=True)
    with torch.no_grad():
        padded = torch.nn.functional.pad(torch.from_numpy(image)[None], (0, 0, 1, 2, 1, 2))  # 5->8, 13->16
        logits = sum(torch.flip(net(torch.flip(padded, c)), c) for c in _combos(3)) / 8
        ref = torch.softmax(logits, 1)[0, :, 1:6, 1:14]
    assert np.allclose(tta, ref.numpy(), atol=1e-5)


def test_tiles_and_gaussian_are_nnunets() -> None:
    # Reference values from nnunetv2 2.8.1's compute_steps_for_sliding_window and compute_gaussian.
    assert [_tile_starts(s, p) for s, p in zip((110, 40, 64), (64, 40, 32), strict=True)] == [
        [0, 23, 46], [0], [0, 16, 32]]
    assert [_tile_starts(s, p) for s, p in zip((200, 57, 129), (64, 56, 40), strict=True)] == [
        [0, 27, 54, 82, 109, 136], [0, 1], [0, 18, 36, 53, 71, 89]]
    weight = _gaussian((8, 16, 16))
    assert weight[4, 8, 8] == 1.0  # the peak at patch // 2, half a voxel off-centre on even sides
    assert weight[3, 8, 8] == pytest.approx(0.6065306663513184, rel=1e-6)
    assert weight[0, 8, 8] == pytest.approx(0.000335462624207139, rel=1e-5)
    assert weight[7, 15, 15] == pytest.approx(5.315785145398877e-08, rel=1e-4)
    assert weight.min() == weight[0, 0, 0] == pytest.approx(3.775134371775124e-11, rel=1e-4)


def test_the_window_stitches_a_pointwise_net_exactly() -> None:
    # Weights normalised voxel by voxel, padding cropped away: a 1x1x1 convolution's logits come back as is,
    # on an image smaller than the patch along one axis and several tiles long along the others.
    torch.manual_seed(1)
    net = nn.Conv3d(2, 3, 1).eval()
    image = np.random.default_rng(5).normal(size=(2, 6, 41, 70)).astype(np.float32)
    probs = predict_probabilities(net, image, "3d", (8, 16, 24))
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(image)[None]), 1)[0]
    assert np.allclose(probs, expected.numpy(), atol=1e-5)


def test_flip_equivariant_net_is_unchanged_by_tta() -> None:
    net = nn.Conv3d(1, 3, 1).eval()  # pointwise: mirroring changes nothing
    image = np.random.default_rng(1).normal(size=(1, 12, 20, 18)).astype(np.float32)
    plain = predict_probabilities(net, image, "3d", (8, 16, 16))
    assert np.allclose(plain, predict_probabilities(net, image, "3d", (8, 16, 16), tta=True), atol=1e-5)
    labels = predict_labels(net, image, "3d", (8, 16, 16))
    assert labels.shape == (12, 20, 18) and labels.dtype == np.uint8


def test_2d_slices_are_padded_and_cropped_back() -> None:
    net = nn.Conv2d(1, 2, 1).eval()
    image = np.random.default_rng(2).normal(size=(1, 3, 37, 45)).astype(np.float32)  # not multiples of 32
    probs = predict_probabilities(net, image, "2d", (64, 64))
    assert probs.shape == (2, 3, 37, 45)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(image).permute(1, 0, 2, 3)), 1).permute(1, 0, 2, 3)
    assert np.allclose(probs, expected.numpy(), atol=1e-5)


def test_2d_slices_along_the_plans_slice_axis() -> None:
    # A volume stored with its thick axis last (numpy axis 2) is sliced along that axis: each 2D input is an
    # in-plane slice of shape (Z, Y), and the probabilities come back in the volume's own axis order.
    seen: list[tuple[int, ...]] = []

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return self.conv(x)

    net = Probe().eval()
    image = np.random.default_rng(3).normal(size=(1, 40, 36, 5)).astype(np.float32)
    probs = predict_probabilities(net, image, "2d", (64, 64), slice_axis=2)
    assert probs.shape == (2, 40, 36, 5)
    assert {shape[1:] for shape in seen} == {(1, 64, 64)} and sum(shape[0] for shape in seen) == 5
    with torch.no_grad():
        slices = torch.from_numpy(image).permute(3, 0, 1, 2)  # (X, C, Z, Y)
        expected = torch.softmax(net.conv(slices), 1).permute(1, 2, 3, 0)
    assert np.allclose(probs, expected.numpy(), atol=1e-5)
    assert np.array_equal(predict_labels(net, image, "2d", (64, 64), slice_axis=2), probs.argmax(0))


def test_2d_runs_slide_nnunets_window_within_each_slice() -> None:
    """From version 11, as nnU-Net's 2d configuration: slices larger than the 2D patch are tiled (its steps
    and Gaussian, in plane), smaller ones padded to the patch; the slices batched together come out as each
    would alone. Version 10 put each whole slice through the network, padded to a multiple of 32."""
    from medseg_bench.inference import _sliding_window

    seen: list[tuple[int, ...]] = []

    class Probe(_Shifted):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            return super().forward(x)

    torch.manual_seed(2)
    net = Probe(2).eval()
    image = np.random.default_rng(6).normal(size=(1, 5, 70, 20)).astype(np.float32)  # 70 > 32 > 20
    probs = predict_probabilities(net, image, "2d", (32, 32))
    assert probs.shape == (2, 5, 70, 20) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert {shape[1:] for shape in seen} == {(1, 32, 32)}
    assert sum(shape[0] for shape in seen) == 5 * len(_tile_starts(70, 32))  # 4 tiles a slice
    with torch.no_grad():
        alone = [torch.softmax(_sliding_window(torch.from_numpy(image[:, z][None]), (32, 32), net), 1)[0]
                 for z in range(5)]
    assert np.allclose(probs, torch.stack(alone, 1).numpy(), atol=1e-6)
    seen.clear()
    old = predict_probabilities(net, image, "2d", (32, 32), pipeline_version=10)
    assert {shape[1:] for shape in seen} == {(1, 96, 32)}  # whole slices, padded to multiples of 32
    assert not np.allclose(old, probs, atol=1e-3)


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_region_runs_take_each_regions_sigmoid_of_the_logits_averaged_over_mirrorings(dims: str) -> None:
    """nnU-Net's predictor for region-based training: the logits averaged over tiles and flips, then each
    channel's sigmoid (not a softmax over them); a region run's labels paint the regions over 0.5."""
    from medseg_bench.regions import paint

    torch.manual_seed(0)
    ndim = 2 if dims == "2d" else 3
    net = _Shifted(ndim).eval()
    image = np.random.default_rng(0).normal(size=(1, 8, 32, 32)).astype(np.float32)
    patch = (32, 32) if dims == "2d" else (8, 32, 32)
    regions = predict_probabilities(net, image, dims, patch, tta=True, regions=True)
    with torch.no_grad():
        x = torch.from_numpy(image)
        x = x.permute(1, 0, 2, 3) if dims == "2d" else x[None]
        combos = _combos(ndim)
        logits = sum(torch.flip(net(torch.flip(x, c)), c) for c in combos) / len(combos)
        ref = torch.sigmoid(logits)
        ref = ref.permute(1, 0, 2, 3) if dims == "2d" else ref[0]
    assert regions.shape == (2, 8, 32, 32) and regions.dtype == np.float64
    assert np.allclose(regions, ref.numpy(), atol=1e-5) and not np.allclose(regions.sum(0), 1, atol=1e-2)
    labels = predict_labels(net, image, dims, patch, tta=True, paint=(1, 2))
    assert np.array_equal(labels, paint(ref.numpy() > 0.5, (1, 2)))
    assert set(np.unique(labels)) == ({0, 1, 2} if dims == "2d" else {1})  # 3D: region 1 everywhere
    with pytest.raises(ValueError, match="no region run is of pipeline version 9"):
        predict_probabilities(net, image, dims, patch, pipeline_version=9, regions=True)


@pytest.mark.parametrize("log_space", [True, False])
def test_region_probabilities_map_back_as_logits_and_outside_the_box_are_no_region(log_space: bool) -> None:
    """nnU-Net resamples a region run's logits to the original grid, then takes their sigmoid; outside the
    crop box no region is predicted. Through `to_label_map`, the regions over 0.5 painted."""
    from medseg_bench.data.resample import _class_back, to_original_regions
    from medseg_bench.inference import to_label_map
    from medseg_bench.regions import paint

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 4, (2, 5, 9, 8))
    probs = 1 / (1 + np.exp(-logits))  # float64, as `predict_probabilities` gives them
    props = {"crop_box": [[1, 9], [2, 14], [0, 10]], "shape_original_zyx": [10, 16, 10],
             "spacing_original_zyx": [2.0, 0.75, 0.8], "spacing_preprocessed_zyx": [3.2, 1.0, 1.0]}
    mapped = to_original_regions(probs, props, log_space, nnunet_resize=True)
    assert mapped.shape == (2, 10, 16, 10) and mapped.dtype == np.float32
    assert (mapped[:, 0] == 0).all() and (mapped[:, :, :2] == 0).all()  # outside the box
    values = logits if log_space else probs
    back = np.stack([_class_back(v, (8, 12, 10), 0, False, True) for v in values])
    expected = 1 / (1 + np.exp(-back)) if log_space else back
    assert np.allclose(mapped[:, 1:9, 2:14], expected, atol=1e-5)
    labels = to_label_map(probs, props, 12 if log_space else 9, paint=(1, 2))
    assert np.array_equal(labels, paint(mapped > 0.5, (1, 2)))
    assert labels[0].max() == 0 and set(np.unique(labels)) == {0, 1, 2}
