"""3D architectures from MONAI. DynUNet is configured from the patch size and voxel spacing as nnU-Net does.

Feature sizes are the published/MONAI defaults; `ModelInputs.tiny` shrinks them for the unit tests only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from medseg_bench.models import ModelInputs, arch

if TYPE_CHECKING:
    import torch
    from torch import nn

MIN_FEATURE_MAP = 4
BASE_FILTERS, MAX_FILTERS = 32, 320


def dynunet_topology(patch_size: Sequence[int], spacing: Sequence[float] | None
                     ) -> tuple[list[list[int]], list[list[int]]]:
    """(kernel sizes, strides) per resolution level, by nnU-Net v2's rule (`get_pool_and_conv_props` with a
    minimum feature map of 4 and no limit on the depth).

    Each level halves the axes at least 2 * 4 voxels long whose spacing is less than twice the finest among
    them (a lone such axis must be at least 3 * 4 long); an axis's kernel becomes 3 once its spacing is less
    than twice the finest of all, and stays 3 (in-plane convolutions first on very anisotropic data). The
    first level has stride 1, the bottleneck kernel 3. nnU-Net pads its own patch to a multiple of the total
    stride; ours is given, so an axis of odd length is not halved.

    >>> dynunet_topology((40, 56, 40), (1.0, 1.0, 1.0))[1]
    [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    """
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in (spacing or [1.0] * len(sizes))]
    kernel = [1] * len(sizes)
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while True:
        axes = [a for a, size in enumerate(sizes) if size >= 2 * MIN_FEATURE_MAP]
        if not axes:
            break
        finest = min(spacings[a] for a in axes)
        axes = [a for a in axes if spacings[a] / finest < 2 and sizes[a] % 2 == 0]
        if not axes or (len(axes) == 1 and sizes[axes[0]] < 3 * MIN_FEATURE_MAP):
            break
        least = min(spacings)
        kernel = [3 if k == 3 or sp / least < 2 else 1 for k, sp in zip(kernel, spacings, strict=True)]
        kernels.append(list(kernel))
        strides.append([2 if a in axes else 1 for a in range(len(sizes))])
        for a in axes:
            sizes[a] //= 2
            spacings[a] *= 2
    kernels.append([3] * len(sizes))  # the bottleneck
    return kernels, strides


def dynunet_topology_v6(patch_size: Sequence[int], spacing: Sequence[float] | None
                        ) -> tuple[list[list[int]], list[list[int]]]:
    """Up to pipeline version 6 (kept so that such runs' checkpoints load): at most 5 poolings, an axis
    halved while its spacing is at most twice the finest of all axes, its kernel 3 while that holds."""
    sizes = [int(s) for s in patch_size]
    spacings = [float(s) for s in (spacing or [1.0] * len(sizes))]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    while len(strides) <= 5:
        finest = min(spacings)
        ratio = [sp / finest for sp in spacings]
        stride = [2 if r <= 2 and s % 2 == 0 and s // 2 >= MIN_FEATURE_MAP else 1
                  for r, s in zip(ratio, sizes, strict=True)]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if r <= 2 else 1 for r in ratio])
        strides.append(stride)
        sizes = [s // st for s, st in zip(sizes, stride, strict=True)]
        spacings = [sp * st for sp, st in zip(spacings, stride, strict=True)]
    kernels.append([3] * len(sizes))  # the bottleneck
    return kernels, strides


def _dynunet_kernels_and_strides(inputs: ModelInputs) -> tuple[list[list[int]], list[list[int]]]:
    version = inputs.pipeline_version
    topology = dynunet_topology if version is None or version >= 7 else dynunet_topology_v6
    return topology(inputs.patch_size, inputs.spacing)


def _check_dynunet(inputs: ModelInputs) -> None:
    """MONAI's DynUNet needs two poolings; its own error names kernel and stride lists."""
    _, strides = _dynunet_kernels_and_strides(inputs)
    if len(strides) < 3:
        from medseg_bench.errors import UsageError

        spacing = "x".join(f"{s:g}" for s in inputs.spacing) if inputs.spacing else "1x1x1"
        raise UsageError(f"dynunet pools patch {'x'.join(map(str, inputs.patch_size))} fewer than twice "
                         f"at spacing {spacing} mm (strides {strides[1:]}): a side is halved only while "
                         f"even and at least {2 * MIN_FEATURE_MAP}, and an odd side holds finer-spaced ones "
                         "back; use even sides, e.g. multiples of 8, each at least 16")


@arch("dynunet", "3d", "nnU-Net's U-Net (Isensee 2021), MONAI DynUNet configured from patch size and "
      "spacing, with deep supervision in training", divisor=1, min_size=8, check=_check_dynunet)
def _dynunet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import DynUNet

    version = inputs.pipeline_version
    current = version is None or version >= 7
    kernels, strides = _dynunet_kernels_and_strides(inputs)
    base = 8 if inputs.tiny else BASE_FILTERS
    filters = [min(base * 2**i, MAX_FILTERS) for i in range(len(strides))]
    # nnU-Net has a head at every decoder resolution and gives the lowest weight 0: the useful heads are full
    # resolution down to 1/2^(poolings - 2). MONAI's are the full-resolution output plus `deep_supr_num` more.
    heads = len(strides) - 3
    # Its transposed convolutions have a bias (nnU-Net's conv_bias: True), from pipeline version 7; the other
    # convolutions need none before instance norm.
    # From pipeline version 8 the heads stay at their own resolution, as nnU-Net's (`_native_heads`).
    cls = _native_heads(DynUNet) if version is None or version >= 8 else DynUNet
    return cls(3, inputs.in_channels, inputs.num_classes, kernels, strides, strides[1:], filters=filters,
               norm_name=("INSTANCE", {"affine": True}), deep_supervision=heads >= 1,
               deep_supr_num=max(heads, 1), res_block=False, trans_bias=current)


@functools.cache
def _native_heads(dynunet: type) -> type:
    """MONAI's DynUNet whose training output is nnU-Net's: a tuple of the full-resolution logits and each
    deep-supervision head at its own resolution (1/2, 1/4, ...), not the heads upsampled (nearest) and
    stacked. Same parameters, same inference output. Built once per process."""

    class DynUNetNativeHeads(dynunet):
        def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
            out = self.output_block(self.skip_layers(x))  # the skip layers fill self.heads on the way
            if self.training and self.deep_supervision:
                return (out, *self.heads)
            return out

    return DynUNetNativeHeads


@arch("unet", "3d", "U-Net", divisor=8, min_size=16)
def _monai_unet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import UNet

    channels = (4, 8, 16, 32) if inputs.tiny else (16, 32, 64, 128)
    return UNet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes,
                channels=channels, strides=(2, 2, 2), num_res_units=2)


@arch("basicunet", "3d", "BasicUNet (MONAI), the plain 4-level 3D U-Net", divisor=16, min_size=32)
def _basicunet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import BasicUNet

    features = (4, 4, 8, 16, 32, 4) if inputs.tiny else (32, 32, 64, 128, 256, 32)
    return BasicUNet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes,
                     features=features)


@arch("segresnet", "3d", "SegResNet (Myronenko 2018), residual encoder, MONAI", divisor=8, min_size=8)
def _segresnet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes,
                     init_filters=8 if inputs.tiny else 16)


@arch("attentionunet", "3d", "Attention U-Net (Oktay 2018), attention-gated skips, MONAI", divisor=8,
      min_size=8, norm_stride=8)
def _attentionunet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    channels = (4, 8, 16, 32) if inputs.tiny else (16, 32, 64, 128)
    return AttentionUnet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes,
                         channels=channels, strides=(2, 2, 2))


@arch("vnet", "3d", "V-Net (Milletari 2016), MONAI", divisor=16, min_size=32, channels_of=16)
def _vnet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import VNet

    # VNet's widths are fixed (16 doubling to 256); only the dropout is configurable. Its batch norm needs
    # more than one value at the 1/16 bottleneck: at least 32 voxels per side (batch size 1 included).
    return VNet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes)


@arch("unetr", "3d", "UNETR (Hatamizadeh 2022), ViT encoder over 16^3 patches, MONAI", divisor=16,
      min_size=16)
def _unetr(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import UNETR

    size: dict[str, Any] = (
        {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 4} if inputs.tiny else {}
    )
    return UNETR(in_channels=inputs.in_channels, out_channels=inputs.num_classes, img_size=inputs.patch_size,
                 spatial_dims=3, **size)


@arch("swinunetr", "3d", "Swin UNETR (Hatamizadeh 2022), Swin transformer encoder, MONAI", divisor=32,
      min_size=64)
def _swinunetr(inputs: ModelInputs) -> nn.Module:
    import inspect

    from monai.networks.nets import SwinUNETR

    # MONAI < 1.5 requires img_size (deprecated since 1.3, used only to check the patch); 1.5 removed it
    size: dict[str, Any] = ({"img_size": tuple(inputs.patch_size)}
                            if "img_size" in inspect.signature(SwinUNETR).parameters else {})
    return SwinUNETR(in_channels=inputs.in_channels, out_channels=inputs.num_classes, spatial_dims=3,
                     feature_size=12 if inputs.tiny else 24, **size)
