"""Architectures: one registry entry per name, with a builder per dims it supports.

A builder takes `ModelInputs` and returns a plain `nn.Module` mapping (B, C, *spatial) to (B, K, *spatial)
logits; the network knows nothing about Lightning. Adding an architecture is one decorated function here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medseg_bench.errors import UsageError
from medseg_bench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

DEFAULT_ENCODER = "resnet34"


@dataclass(frozen=True)
class ModelInputs:
    in_channels: int
    num_classes: int
    patch_size: tuple[int, ...]
    encoder: str | None = None
    pretrained: bool = False


Builder = Callable[[ModelInputs], "nn.Module"]


@dataclass
class Architecture:
    name: str
    description: str
    builders: dict[str, Builder] = field(default_factory=dict)

    @property
    def dims(self) -> list[str]:
        return sorted(self.builders)  # "2d" sorts before "3d"


ARCHS: Registry[Architecture] = Registry("arch")


def arch(name: str, dims: str, description: str, aliases: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Register `builder` as architecture `name` in `dims` (one entry per name across dims)."""

    def deco(builder: Builder) -> Builder:
        if name not in ARCHS:
            ARCHS.add(name, Architecture(name, description), aliases)
        ARCHS.get(name).builders[dims] = builder
        return builder

    return deco


def build_model(name: str, dims: str, inputs: ModelInputs) -> nn.Module:
    entry = ARCHS.get(name)
    if dims not in entry.builders:
        raise UsageError(f"arch '{entry.name}' has no {dims} variant (it supports {', '.join(entry.dims)})")
    return entry.builders[dims](inputs)


def supports(name: str, dims: str) -> bool:
    return dims in ARCHS.get(name).builders


def _smp(cls_name: str) -> Builder:
    def build(inputs: ModelInputs) -> nn.Module:
        import segmentation_models_pytorch as smp

        if inputs.pretrained:
            raise UsageError("pretrained encoder weights are not supported yet: they need a download")
        cls = getattr(smp, cls_name)
        return cls(encoder_name=inputs.encoder or DEFAULT_ENCODER, encoder_weights=None,
                   in_channels=inputs.in_channels, classes=inputs.num_classes)

    return build


arch("unet", "2d", "U-Net (Ronneberger 2015); 2D: smp.Unet with an encoder; 3D: MONAI residual UNet")(_smp("Unet"))
arch("deeplab", "2d", "DeepLabV3+ (Chen 2018), smp.DeepLabV3Plus", aliases=("deeplabv3plus",))(_smp("DeepLabV3Plus"))


@arch("unet", "3d", "U-Net")
def _monai_unet(inputs: ModelInputs) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=inputs.in_channels, out_channels=inputs.num_classes,
                channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2)
