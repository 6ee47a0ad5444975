"""Every registered arch x dims builds and does forward + backward on a tiny input; patch rules; encoders."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from medseg_bench.errors import UnknownNameError, UsageError
from medseg_bench.models import (
    ARCHS,
    ModelInputs,
    build_model,
    check_batch,
    check_channels,
    check_inputs,
    check_patch,
    fit_patch,
    variant,
)
from medseg_bench.models.zoo3d import dynunet_topology

CASES = [(name, dims) for name, entry in ARCHS.items() for dims in entry.dims]


def _encoder(name: str, dims: str) -> str | None:
    """A 2D arch's first allowed encoder (torchvision's FCN: its own backbones), else smp's resnet18."""
    if dims != "2d":
        return None
    allowed = variant(name, dims).encoders
    return allowed[0] if allowed else "resnet18"


def _tiny_size(name: str, dims: str) -> tuple[int, ...]:
    return fit_patch(name, dims, (16, 16) if dims == "2d" else (16, 16, 16))


def _logits(out: torch.Tensor | tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    # Deep-supervision nets return their heads in training mode (dynunet: a tuple, full resolution first; up
    # to pipeline version 7, stacked as (B, heads, K, *spatial)); the first is the full output.
    if isinstance(out, tuple):
        return out[0]
    return out[:, 0] if out.ndim == x.ndim + 1 else out


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_forward_backward(name: str, dims: str) -> None:
    torch.manual_seed(0)
    size = _tiny_size(name, dims)
    encoder = _encoder(name, dims)
    net = build_model(name, dims, ModelInputs(in_channels=2, num_classes=3, patch_size=size, encoder=encoder,
                                              spacing=(1.0,) * len(size), tiny=True))
    x = torch.randn(2 if dims == "2d" else 1, 2, *size)
    out = _logits(net(x), x)
    assert out.shape == (x.shape[0], 3, *size)
    out.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with torch.no_grad():
        assert net.eval()(x).shape == out.shape  # inference always gives plain logits


def _trains(name: str, dims: str, size: tuple[int, ...], batch: int, channels: int = 1) -> bool:
    try:
        encoder = _encoder(name, dims)
        inputs = ModelInputs(in_channels=channels, num_classes=3, patch_size=size, encoder=encoder,
                             spacing=(1.0,) * len(size), tiny=True)
        net = build_model(name, dims, inputs).train()
        net(torch.randn(batch, channels, *size))
    except (ValueError, RuntimeError, AssertionError):
        return False
    return True


def _refused(check: Callable[[], None]) -> bool:
    try:
        check()
    except UsageError:
        return True
    return False


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_batch_of_one_is_refused_exactly_where_batchnorm_cannot_train(name: str, dims: str) -> None:
    v = variant(name, dims)
    smallest = fit_patch(name, dims, (16,) * (2 if dims == "2d" else 3))
    if name == "dynunet":
        smallest = (16, 16, 16)  # it pools twice at least (its own error otherwise)
    # 3D nets: twice the smallest patch only where BatchNorm makes the patch matter (the others are slow)
    sizes = [smallest] + ([tuple(2 * s for s in smallest)] if dims == "2d" or v.norm_stride else [])
    for size in sizes:
        trains = _trains(name, dims, size, 1)
        assert trains != _refused(lambda size=size: check_batch(name, dims, size, 1)), (size, trains)
        assert _trains(name, dims, size, 2)
        assert not _refused(lambda size=size: check_batch(name, dims, size, 2))
    if v.pooled_norm:  # refused before its patch is known
        with pytest.raises(UsageError, match="globally pooled.*--batch-size 2 or more"):
            check_batch(name, dims, None, 1)
    else:
        check_batch(name, dims, None, 1)


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_channel_counts_are_refused_exactly_where_the_arch_cannot_take_them(name: str, dims: str) -> None:
    size = (16, 16, 16) if name == "dynunet" else fit_patch(name, dims, (16,) * (2 if dims == "2d" else 3))
    refused = _refused(lambda: check_channels(name, dims, 3, "TaskX"))
    batch = 1 if dims == "3d" and not _refused(lambda: check_batch(name, dims, size, 1)) else 2
    assert refused != _trains(name, dims, size, batch, 3)


def test_patch_fitting_and_errors() -> None:
    assert fit_patch("swinunetr", "3d", (40, 56, 40)) == (64, 64, 64)
    assert fit_patch("unetr", "3d", (40, 56, 40)) == (48, 64, 48)
    assert fit_patch("pan", "2d", (64, 64)) == (128, 128)
    assert fit_patch("dynunet", "3d", (40, 56, 40)) == (40, 56, 40)
    check_patch("unet", "2d", (64, 64))
    with pytest.raises(UsageError, match="multiples of 32.*--patch-size 64,64,64"):
        check_patch("swinunetr", "3d", (40, 56, 40))
    assert variant("deeplabv3plus", "2d") is variant("deeplab", "2d")


def test_dynunet_follows_spacing_like_nnunet() -> None:
    kernels, strides = dynunet_topology((20, 192, 160), (5.0, 0.8, 0.8))
    assert strides[0] == [1, 1, 1] and len(strides) == len(kernels) <= 6
    assert kernels[0] == [1, 3, 3] and strides[1] == [1, 2, 2]  # in-plane first while z is 6x coarser
    assert any(s[0] == 2 for s in strides)  # z is pooled once the in-plane spacing has caught up
    _, iso = dynunet_topology((40, 56, 40), (1.0, 1.0, 1.0))
    assert iso == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]  # 40 -> 5 and 56 -> 7: no feature map below 4


def test_dynunet_topology_is_nnunet_v2s() -> None:
    # Expected values: nnU-Net v2's get_pool_and_conv_props(spacing, patch, 4, 999999) (network_topology.py).
    kernels, strides = dynunet_topology((20, 320, 256), (3.6, 0.6, 0.6))  # MSD Prostate-like: 7 stages
    assert strides == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    assert kernels == [[1, 3, 3], [1, 3, 3]] + [[3, 3, 3]] * 5
    assert len(dynunet_topology((256, 256, 256), (1.0, 1.0, 1.0))[1]) == 7  # no cap at 5 poolings
    kernels, strides = dynunet_topology((96, 160, 160), (1.6, 0.8, 0.8))  # a ratio of exactly 2 is not "< 2"
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3] and len(strides) == 6
    assert dynunet_topology((16, 128, 128), (1.0, 1.0, 1.0))[1] == [  # the finest among poolable axes
        [1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 2]]
    # a lone poolable axis must be at least 12 long
    assert dynunet_topology((16, 16, 40), (1.0, 1.0, 1.0))[1] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert dynunet_topology((40, 57, 40), (1.0, 1.0, 1.0))[1][1] == [2, 1, 2]  # an odd axis is not halved


def test_dynunet_has_nnunets_transposed_bias_and_older_runs_keep_their_network() -> None:
    import torch

    from medseg_bench.models.zoo3d import dynunet_topology_v6

    def build(version: int | None) -> torch.nn.Module:
        inputs = ModelInputs(1, 3, (20, 320, 256), spacing=(3.6, 0.6, 0.6), tiny=True,
                             pipeline_version=version)
        return build_model("dynunet", "3d", inputs)

    for version in (None, 7):
        net = build(version)
        ups = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
        assert len(ups) == 6 and all(m.bias is not None for m in ups)  # nnU-Net: conv_bias True
    old = build(6)  # a version-6 run: its checkpoint has this network's parameters
    ups = [m for m in old.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert len(ups) == 5 and all(m.bias is None for m in ups)
    assert len(dynunet_topology_v6((20, 320, 256), (3.6, 0.6, 0.6))[1]) == 6
    assert set(build(7).state_dict()) != set(old.state_dict())


def test_dynunet_trains_its_heads_at_their_own_resolution_as_nnunet() -> None:
    import torch

    def build(version: int | None) -> torch.nn.Module:
        torch.manual_seed(0)
        inputs = ModelInputs(1, 3, (64, 64, 64), spacing=(1.0, 1.0, 1.0), tiny=True, pipeline_version=version)
        return build_model("dynunet", "3d", inputs)

    x = torch.randn(1, 1, 64, 64, 64)
    net, old = build(None), build(7)
    assert type(build(None)) is type(net)  # the subclass is built once, not on every network
    heads = net.train()(x)
    assert isinstance(heads, tuple)
    assert [tuple(h.shape[2:]) for h in heads] == [(64, 64, 64), (32, 32, 32), (16, 16, 16)]
    stacked = old.train()(x)  # a version-7 run: MONAI's heads, upsampled to full resolution and stacked
    assert stacked.shape == (1, 3, 3, 64, 64, 64)
    assert set(net.state_dict()) == set(old.state_dict())  # the same parameters: only the training output
    old.load_state_dict(net.state_dict())
    assert torch.equal(net.eval()(x), old.eval()(x))
    for full, low in zip(stacked[0], heads, strict=True):  # the same heads, upsampled (nearest) by MONAI
        factor = 64 // low.shape[2]
        up = low[0].repeat_interleave(factor, 1).repeat_interleave(factor, 2).repeat_interleave(factor, 3)
        assert torch.allclose(full, up, atol=1e-5)


@pytest.mark.parametrize("patch", [(40, 56, 41), (12, 12, 12)])
def test_a_dynunet_patch_it_cannot_pool_twice_is_one_line_not_monais_error(patch: tuple[int, ...]) -> None:
    with pytest.raises(UsageError, match=f"dynunet pools patch {'x'.join(map(str, patch))} fewer than twice"):
        build_model("dynunet", "3d", ModelInputs(1, 3, patch, spacing=(1.0, 1.0, 1.0)))


def test_whether_dynunet_can_pool_a_patch_depends_on_the_spacing_and_is_checked_without_building() -> None:
    # 16x8x8: isotropic, every side is halved at once and z (8) is then too short alone; at 3x1x1 mm the
    # in-plane sides are halved first and z (16) later: two poolings.
    with pytest.raises(UsageError, match="pools patch 16x8x8 fewer than twice at spacing 1x1x1 mm"):
        check_inputs("dynunet", "3d", ModelInputs(1, 3, (16, 8, 8), spacing=(1.0, 1.0, 1.0)))
    check_inputs("dynunet", "3d", ModelInputs(1, 3, (16, 8, 8), spacing=(3.0, 1.0, 1.0)))
    net = build_model("dynunet", "3d", ModelInputs(1, 3, (16, 8, 8), spacing=(3.0, 1.0, 1.0), tiny=True))
    assert net.eval()(torch.zeros(1, 1, 16, 8, 8)).shape == (1, 3, 16, 8, 8)


def test_alias_and_errors() -> None:
    assert ARCHS.get("deeplabv3plus") is ARCHS.get("deeplab")
    with pytest.raises(UnknownNameError, match="did you mean 'unet'"):
        ARCHS.get("unte")
    with pytest.raises(UsageError, match="has no 3d variant"):
        build_model("deeplab", "3d", ModelInputs(1, 2, (16, 16, 16)))
    with pytest.raises(UsageError, match="needs --encoder resnet50 or resnet101.*not 'resnet34'"):
        build_model("fcn", "2d", ModelInputs(1, 2, (32, 32), encoder="resnet34"))
    with pytest.raises(UsageError, match="unknown smp encoder 'resnet9'"):
        build_model("unet", "2d", ModelInputs(1, 2, (32, 32), encoder="resnet9"))


@pytest.mark.parametrize(("name", "encoder"), [("unet", "resnet18"), ("fcn", "resnet50")])
def test_pretrained_needs_offline_weights(name: str, encoder: str, tmp_path, monkeypatch) -> None:
    # Empty caches: nothing is downloaded, and the error names the encoder.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    message = f"pretrained weights for encoder '{encoder}' are not available offline"
    with pytest.raises(UsageError, match=message):
        build_model(name, "2d", ModelInputs(1, 2, (32, 32), encoder=encoder, pretrained=True))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, e in ARCHS.items() if "3d" in e.dims])
def test_full_size_3d_builds(name: str) -> None:
    """The real (not tiny) configurations at the Hippocampus patch, fitted to each architecture."""
    size = fit_patch(name, "3d", (40, 56, 40))
    net = build_model(name, "3d", ModelInputs(1, 3, size, spacing=(1.0, 1.0, 1.0)))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_an_smp_entry_declares_its_encoders_and_constructor_options() -> None:
    # What an smp class that takes only some encoders, or further arguments, needs of its one SMP entry.
    import torch

    from medseg_bench.models import ModelInputs
    from medseg_bench.models.zoo2d import Smp, _smp

    entry = Smp("Unet", "test entry", encoders=("resnet18", "resnet34"),
                options=(("decoder_channels", (32, 16, 8, 8, 4)),))
    inputs = ModelInputs(in_channels=1, num_classes=3, patch_size=(32, 32))
    net = _smp(entry)(inputs).eval()
    assert len(net.encoder.layer1) == 2  # ResNet-18's (ResNet-34 has 3): the entry's default encoder
    assert net.segmentation_head[0].in_channels == 4  # the last decoder_channels
    assert net(torch.zeros(1, 1, 32, 32)).shape == (1, 3, 32, 32)
    assert len(_smp(entry)(ModelInputs(1, 3, (32, 32), encoder="resnet34")).encoder.layer1) == 3
