"""Architectures: one registry entry per name, with a builder per dims it supports.

A builder takes `ModelInputs` and returns a plain `nn.Module` mapping (B, C, *spatial) to (B, K, *spatial)
logits; the network knows nothing about Lightning. Adding an architecture is one decorated function in
`zoo2d.py` (segmentation-models-pytorch, torchvision) or `zoo3d.py` (MONAI).

Each builder declares the spatial `divisor` its input sizes must be a multiple of and the `min_size` below
which it cannot run (e.g. SwinUNETR: 32 and 64); `fit_patch` rounds a planned patch up to what the
architecture accepts, `check_patch` rejects an explicitly given patch it cannot take.

Example:
    >>> net = build_model("unet", "3d", ModelInputs(in_channels=1, num_classes=3, patch_size=(40, 56, 40)))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from medseg_bench.errors import UsageError
from medseg_bench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

DEFAULT_ENCODER = "resnet34"


@dataclass(frozen=True)
class ModelInputs:
    """What a builder may use. `spacing` (mm, z-y-x) lets DynUNet choose anisotropic kernels and strides;
    `tiny` asks for the smallest configuration the constructor allows (tests only)."""

    in_channels: int
    num_classes: int
    patch_size: tuple[int, ...]
    encoder: str | None = None
    pretrained: bool = False
    spacing: tuple[float, ...] | None = None
    tiny: bool = False
    pipeline_version: int | None = None  # the run's: a builder may keep an older run's network (None: now)


Builder = Callable[[ModelInputs], "nn.Module"]


@dataclass(frozen=True)
class Variant:
    """One dims of an architecture: its builder and the input sizes it accepts."""

    build: Builder
    divisor: int = 1
    min_size: int = 1
    encoders: tuple[str, ...] | None = None  # None: any smp encoder (2D) or no encoder (3D)


@dataclass
class Architecture:
    name: str
    description: str
    variants: dict[str, Variant] = field(default_factory=dict)

    @property
    def dims(self) -> list[str]:
        return sorted(self.variants)  # "2d" sorts before "3d"

    @property
    def builders(self) -> dict[str, Builder]:
        return {dims: variant.build for dims, variant in self.variants.items()}


ARCHS: Registry[Architecture] = Registry("arch")


def arch(name: str, dims: str, description: str, aliases: tuple[str, ...] = (), divisor: int = 1,
         min_size: int = 1, encoders: tuple[str, ...] | None = None) -> Callable[[Builder], Builder]:
    """Register `builder` as architecture `name` in `dims` (one entry per name across dims)."""

    def deco(builder: Builder) -> Builder:
        if name not in ARCHS:
            ARCHS.add(name, Architecture(name, description), aliases)
        ARCHS.get(name).variants[dims] = Variant(builder, divisor, min_size, encoders)
        return builder

    return deco


def variant(name: str, dims: str) -> Variant:
    entry = ARCHS.get(name)
    if dims not in entry.variants:
        raise UsageError(f"arch '{entry.name}' has no {dims} variant (it supports {', '.join(entry.dims)})")
    return entry.variants[dims]


def check_encoder(name: str, dims: str, encoder: str | None) -> None:
    """Raise UsageError when `name` in `dims` cannot use `encoder` (e.g. FCN with a non-ResNet-50/101)."""
    allowed = variant(name, dims).encoders
    if allowed is not None and encoder not in allowed:
        raise UsageError(f"arch '{ARCHS.canonical(name)}' needs --encoder {' or '.join(allowed)} "
                         f"(torchvision's FCN backbones), not '{encoder}'")
    if allowed is None and dims == "2d" and encoder is not None:
        from medseg_bench.models.zoo2d import check_smp_encoder

        check_smp_encoder(encoder)


def fit_patch(name: str, dims: str, patch: Sequence[int]) -> tuple[int, ...]:
    """`patch` rounded up to the architecture's divisor and minimum size."""
    v = variant(name, dims)
    return tuple(max(v.min_size, -(-int(s) // v.divisor) * v.divisor) for s in patch)


def check_patch(name: str, dims: str, patch: Sequence[int]) -> None:
    """UsageError when the architecture cannot take `patch` (not a multiple of its divisor, too small)."""
    fitted = fit_patch(name, dims, patch)
    if fitted != tuple(patch):
        v = variant(name, dims)
        raise UsageError(f"arch '{ARCHS.canonical(name)}' ({dims}) needs patch sides that are multiples of "
                         f"{v.divisor} and at least {v.min_size}: use --patch-size "
                         f"{','.join(map(str, fitted))} instead of {','.join(map(str, patch))}")


def build_model(name: str, dims: str, inputs: ModelInputs) -> nn.Module:
    v = variant(name, dims)
    if v.encoders is not None:
        check_encoder(name, dims, inputs.encoder)
    return v.build(inputs)


def supports(name: str, dims: str) -> bool:
    return dims in ARCHS.get(name).variants


# Registration happens on import of the zoo modules (they import nothing heavy at module level).
from medseg_bench.models import zoo2d, zoo3d  # noqa: E402,F401
