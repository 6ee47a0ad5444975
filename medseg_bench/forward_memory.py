"""What a network's forward pass holds at once, counted without computing it: its activations on a tile.
Imports torch: import it where it is used.

On the CPU, predicting a case runs the network on a batch of tiles (`inference._sliding_window`), under
`torch.no_grad` in float32: each layer's output lives until the layers that read it are done (a U-Net's skip
connections until the decoder takes them), so the peak is several full-resolution feature maps per tile, not
one. `forward_bytes` counts it: one tile (1, C, *patch) goes through the network on torch's meta device
(shapes only, no arithmetic: well under a second), a dispatch mode noting each tensor each operation makes and
letting it go when its storage is freed; the most bytes alive at once (`peak`) and the largest single
tensor (`largest`). Every operation is the one the CPU runs, so every tensor counted is held at once there
too: a DynUNet at a 128^3 tile holds 1.3 GiB of them. The CPU's peak, measured, is 1.0 to 2.1 times the
count (`bench/inference_memory.py`'s forward-pass table): the kernels' own buffers are not seen, most
oneDNN's copy of a convolution's input of few channels in its blocked layout of 16 (a 3D U-Net's last
convolution, of 2 or 3 classes). Each sample of a batch goes through alone (instance norm, eval-mode batch
norm, attention within a sample): a batch of n tiles holds n times one tile's.

The network's weights are not among them: a process predicting with it holds them before and after each
case, as its own; a sweep's check before training, when no network is built yet, counts them apart
(`planned_weight_bytes`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from medseg_bench.models import ModelInputs, build_model


@dataclass(frozen=True)
class ForwardBytes:
    """One tile's forward pass: the most bytes its tensors hold at once (the network's output among them,
    not its input), and the largest of them."""

    peak: int
    largest: int


def forward_bytes(net: nn.Module, channels: int, patch: Sequence[int]) -> ForwardBytes | None:
    """What `net` holds at once on one (1, `channels`, *`patch`) float32 tile in eval mode under no_grad,
    counted on the meta device: its parameters and buffers stood in for by meta tensors of their shapes
    (`_on_meta`), so a trained network on the CPU is neither copied nor run, and left as it was. None where
    an operation has no meta form (a network that cannot be counted: its activations are left out)."""
    training = net.training
    kept = _kept_state(net)
    stand_ins = _on_meta(net)
    tile = torch.empty((1, channels, *patch), device="meta")
    counter = _LiveTensors([*net.parameters(), *net.buffers(), tile])
    try:
        with torch.no_grad(), counter:
            net.eval()(tile)
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        return None
    finally:
        stand_ins()
        kept()
        net.train(training)
    return ForwardBytes(counter.peak, counter.largest)


def _on_meta(net: nn.Module) -> Callable[[], None]:
    """Puts a meta tensor of each parameter's and buffer's shape in its place (one for a tensor shared by
    several modules, as DynUNet's encoder is), and returns what puts the tensors back. (torch's
    `functional_call` left half of DynUNet's shared parameters meta.)"""
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    stand_in: dict[int, torch.Tensor] = {}
    for module in net.modules():
        groups: list[tuple[dict[str, Any], bool]] = [(module._parameters, True), (module._buffers, False)]
        for group, parameters in groups:
            for name, value in group.items():
                if value is None:
                    continue
                if id(value) not in stand_in:
                    meta = torch.empty_like(value, device="meta")
                    stand_in[id(value)] = nn.Parameter(meta, requires_grad=False) if parameters else meta
                swapped.append((group, name, value))
                group[name] = stand_in[id(value)]

    def restore() -> None:
        for group, name, value in swapped:
            group[name] = value

    return restore


def _kept_state(net: nn.Module) -> Callable[[], None]:
    """What puts back each module's own attributes as they are now: a network may keep tensors of its last
    forward pass (DynUNet its deep-supervision heads, in a list its skip layers share), which would be meta
    tensors after counting, and its next pass on the CPU fail on them. Lists are restored in place."""
    saved = [(module, dict(vars(module))) for module in net.modules()]
    lists = [(value, list(value)) for _, attributes in saved for value in attributes.values()
             if isinstance(value, list)]

    def restore() -> None:
        for module, attributes in saved:
            vars(module).clear()
            vars(module).update(attributes)
        for value, contents in lists:
            value[:] = contents

    return restore


@functools.lru_cache(maxsize=64)
def planned_forward_bytes(arch: str, dims: str, inputs: ModelInputs) -> ForwardBytes | None:
    """`forward_bytes` of the network `arch` builds for `inputs` (a run's, `training.model_inputs`), built on
    the meta device (`_planned_network`). Once per network: a sweep's pre-check asks it for every run's
    cases."""
    return forward_bytes(_planned_network(arch, dims, inputs), inputs.in_channels, inputs.patch_size)


@functools.lru_cache(maxsize=64)
def planned_weight_bytes(arch: str, dims: str, inputs: ModelInputs) -> int:
    """`weight_bytes` of the network `arch` builds for `inputs`, built on the meta device
    (`_planned_network`): what a process that builds and loads it holds of it on the CPU (the 2D U-Net's
    ResNet-34: 93 MiB). Once per network."""
    return weight_bytes(_planned_network(arch, dims, inputs))


def weight_bytes(net: nn.Module) -> int:
    """The bytes of `net`'s parameters and buffers, each tensor once (DynUNet's encoder shares some)."""
    return sum(tensor.numel() * tensor.element_size() for tensor in [*net.parameters(), *net.buffers()])


def _planned_network(arch: str, dims: str, inputs: ModelInputs) -> nn.Module:
    """The network `arch` builds for `inputs`, on the meta device without weights (one that cannot be,
    SwinUNETR, on the CPU) and without pretrained ones, which change no shape."""
    inputs = dataclasses.replace(inputs, pretrained=False)
    try:
        with torch.device("meta"):
            return build_model(arch, dims, inputs)
    except (NotImplementedError, RuntimeError):  # an initialisation that reads values (`.item()`)
        return build_model(arch, dims, inputs)


class _LiveTensors(TorchDispatchMode):
    """Each operation's new tensors, by storage (a view or an in-place result adds none, nor a view of the
    `existing` tensors, the weights and input), kept until their storage is freed: `peak`, the most bytes
    alive after any operation, `largest` the largest storage."""

    def __init__(self, existing: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.alive: list[tuple[Any, int]] = []  # (weak reference to a storage, its bytes)
        self.existing = {StorageWeakRef(tensor.untyped_storage()).cdata for tensor in existing}
        self.peak = self.largest = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.alive = [(ref, n) for ref, n in self.alive if not ref.expired()]
        known = self.existing | {ref.cdata for ref, _ in self.alive}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ref = StorageWeakRef(storage)
                if ref.cdata not in known:
                    known.add(ref.cdata)
                    self.alive.append((ref, storage.nbytes()))
                    self.largest = max(self.largest, storage.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self.alive))
        return out
