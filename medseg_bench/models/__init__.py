"""Architectures: one registry entry per name, with a builder per dims it supports.

A builder takes `ModelInputs` and returns a plain `nn.Module` mapping (B, C, *spatial) to (B, K, *spatial)
logits, one tensor (a net that returns a list or dict of outputs is wrapped to return the logits; only
dynunet returns its deep-supervision heads, a tuple, in training); the network knows nothing about
Lightning. Adding an architecture is one decorated function (`@arch(...)`) in `zoo3d.py` (MONAI) or
`zoo2d.py` (torchvision), or one entry of `zoo2d.SMP` (segmentation-models-pytorch); `tests/test_models.py`
runs every registered one forward and backward and checks its declared batch and channel limits.

Each builder declares the spatial `divisor` its input sizes must be a multiple of and the `min_size` below
which it cannot run (e.g. SwinUNETR: 32 and 64); `fit_patch` rounds a planned patch up to what the
architecture accepts, `check_patch` rejects an explicitly given patch it cannot take.

Example:
    >>> net = build_model("unet", "3d", ModelInputs(in_channels=1, num_classes=3, patch_size=(40, 56, 40)))
"""

from __future__ import annotations

import functools
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
Check = Callable[[ModelInputs], None]


@dataclass(frozen=True)
class Variant:
    """One dims of an architecture: its builder and the input sizes it accepts."""

    build: Builder
    divisor: int = 1
    min_size: int = 1
    encoders: tuple[str, ...] | None = None  # None: any smp encoder (2D) or no encoder (3D)
    # Training BatchNorm needs more than one value per channel: `norm_stride` is the downsampling of the
    # deepest batch-normalised map (a batch of 1 at a patch of that size fails), `pooled_norm` says it also
    # normalises globally pooled features (a batch of 1 always fails). `channels_of`: in_channels must
    # divide it (V-Net repeats the input up to 16 channels).
    norm_stride: int | None = None
    pooled_norm: bool = False
    channels_of: int | None = None
    # Raises UsageError for inputs the builder cannot take, without building (DynUNet's poolings depend on
    # patch and spacing): a sweep calls it for every run before any trains.
    check: Check | None = None


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
         min_size: int = 1, encoders: tuple[str, ...] | None = None, norm_stride: int | None = None,
         pooled_norm: bool = False, channels_of: int | None = None,
         check: Check | None = None) -> Callable[[Builder], Builder]:
    """Register `builder` as architecture `name` in `dims` (one entry per name across dims)."""

    def deco(builder: Builder) -> Builder:
        if name not in ARCHS:
            ARCHS.add(name, Architecture(name, description), aliases)
        ARCHS.get(name).variants[dims] = Variant(builder, divisor, min_size, encoders, norm_stride,
                                                 pooled_norm, channels_of, check)
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
        raise UsageError(f"arch '{ARCHS.canonical(name)}' needs --encoder {' or '.join(allowed)}, "
                         f"not '{encoder}'")
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


def check_batch(name: str, dims: str, patch: Sequence[int] | None, batch: int) -> None:
    """UsageError when the architecture cannot train on batches of `batch` patches of `patch` (None: not
    known yet, only what holds at any patch is checked): its BatchNorm would see one value per channel."""
    v = variant(name, dims)
    if batch >= 2:
        return
    canonical = ARCHS.canonical(name)
    if v.pooled_norm:
        raise UsageError(f"arch '{canonical}' ({dims}) batch-normalises globally pooled features, which "
                         f"needs a batch of at least 2 in training: use --batch-size 2 or more, not {batch}")
    if v.norm_stride is not None and patch is not None and all(s < 2 * v.norm_stride for s in patch):
        raise UsageError(f"arch '{canonical}' ({dims}) at patch {'x'.join(map(str, patch))} "
                         f"batch-normalises a map of one voxel (1/{v.norm_stride} of the patch), which "
                         "needs a batch of at least 2 in training: use --batch-size 2 or more, or a "
                         f"--patch-size with a side of at least {2 * v.norm_stride}")


def check_channels(name: str, dims: str, in_channels: int, task: str) -> None:
    """UsageError when the architecture cannot take the task's `in_channels` input channels."""
    v = variant(name, dims)
    if v.channels_of is not None and v.channels_of % in_channels:
        takes = [str(n) for n in range(1, v.channels_of + 1) if v.channels_of % n == 0]
        raise UsageError(f"arch '{ARCHS.canonical(name)}' ({dims}) takes {', '.join(takes[:-1])} or "
                         f"{takes[-1]} input channels (its first layer repeats them to {v.channels_of}), "
                         f"but {task} has {in_channels}")


@functools.cache
def encoder_problem(name: str, dims: str, encoder: str) -> str | None:
    """Why the smp architecture `name` cannot be built over `encoder`, a known smp encoder name (smp refuses
    some pairs in its constructor: UnetPlusPlus and Linknet a `mit_b*` encoder, a dilated decoder an encoder
    without dilation), or None. Built on torch's meta device: no weights are allocated. Only smp's own
    refusal, a ValueError, is a problem; anything else is left to the run. Each pair is built once: a sweep
    asks for every task (10 tasks x 11 archs x 3 encoders took 6 s more to expand without the cache)."""
    if dims != "2d" or variant(name, dims).encoders is not None:
        return None
    import torch

    try:
        with torch.device("meta"):
            variant(name, dims).build(ModelInputs(1, 2, (64, 64), encoder))
    except ValueError as exc:
        return f"smp refuses it ({str(exc).strip().splitlines()[0][:150]})"
    except Exception:  # noqa: BLE001 (not smp's refusal of the pair: the run will say what it is)
        return None
    return None


def check_inputs(name: str, dims: str, inputs: ModelInputs) -> None:
    """UsageError when the architecture cannot be built for `inputs` (its encoder, its own `check`)."""
    v = variant(name, dims)
    if v.encoders is not None:
        check_encoder(name, dims, inputs.encoder)
    if v.check is not None:
        v.check(inputs)


def build_model(name: str, dims: str, inputs: ModelInputs) -> nn.Module:
    check_inputs(name, dims, inputs)
    return variant(name, dims).build(inputs)


def supports(name: str, dims: str) -> bool:
    return dims in ARCHS.get(name).variants


# Registration happens on import of the zoo modules (they import nothing heavy at module level).
from medseg_bench.models import zoo2d, zoo3d  # noqa: E402,F401
