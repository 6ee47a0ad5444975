"""A network's activations on a tile, counted on the meta device: what predicting a case on the CPU holds
beside the sliding window's arrays."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medseg_bench.forward_memory import ForwardBytes, forward_bytes, planned_forward_bytes
from medseg_bench.models import ARCHS, ModelInputs


def test_the_tensors_a_forward_pass_holds_at_once_are_counted_not_its_weights_nor_its_input() -> None:
    # a tile of 8^3: the first convolution's 4 channels (8 KiB) beside their ReLU (out of place, 8 KiB);
    # then the ReLU's beside the last convolution's 2 channels (4 KiB), the first's let go
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 1))
    assert forward_bytes(net, 1, (8, 8, 8)) == ForwardBytes(peak=2 * 4 * 512 * 4, largest=4 * 512 * 4)
    # in place, a view: nothing more
    inplace = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.Identity())
    assert forward_bytes(inplace, 1, (8, 8, 8)) == ForwardBytes(peak=4 * 512 * 4, largest=4 * 512 * 4)
    wide = nn.Sequential(nn.Conv3d(1, 4000, 1), nn.Conv3d(4000, 1, 1))  # 16 MB of weights, 32 KB of tile
    assert forward_bytes(wide, 1, (2, 2, 2)).peak == 4000 * 8 * 4 + 8 * 4


def test_a_trained_network_is_counted_as_the_same_network_built_on_the_meta_device() -> None:
    """predict counts its loaded networks without copying or running them; a sweep builds each run's
    network on the meta device, weightless: the same count. The network's mode is left as it was."""
    inputs = ModelInputs(1, 3, (32, 48, 32), spacing=(1.0, 1.0, 1.0), tiny=True)
    net = ARCHS.get("dynunet").variants["3d"].build(inputs)
    tile = torch.randn(1, 1, *inputs.patch_size)
    with torch.no_grad():
        before = net.eval()(tile)
    net.train()
    counted = forward_bytes(net, 1, inputs.patch_size)
    assert net.training
    assert counted == planned_forward_bytes("dynunet", "3d", inputs)
    # its weights (some shared by two modules) and the heads it keeps between passes are its own again
    assert not any(tensor.is_meta for tensor in [*net.parameters(), *net.buffers(), *net.heads])
    with torch.no_grad():
        assert torch.equal(net.eval()(tile), before)
    assert counted is not None and counted.peak > 2 * counted.largest  # skip connections held to the decoder


def test_the_activations_grow_with_the_tile_and_the_networks_width() -> None:
    small = planned_forward_bytes("dynunet", "3d", ModelInputs(1, 3, (32, 32, 32), spacing=(1.0,) * 3))
    large = planned_forward_bytes("dynunet", "3d", ModelInputs(1, 3, (64, 64, 64), spacing=(1.0,) * 3))
    narrow = planned_forward_bytes("dynunet", "3d", ModelInputs(1, 3, (64, 64, 64), spacing=(1.0,) * 3,
                                                                tiny=True))  # 8 first-level features, not 32
    assert small is not None and large is not None and narrow is not None
    assert large.peak > 7 * small.peak
    assert large.peak > 3 * narrow.peak
    # 32 features of 64^3 at full resolution, float32; the decoder's concatenation of two such
    assert large.largest == 2 * 32 * 64**3 * 4


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_architecture_is_counted_on_the_meta_device(name: str) -> None:
    """The sweep's pre-check counts each run's network: none of the registered is left uncounted."""
    from medseg_bench.models import fit_patch, variant

    for dims in ARCHS.get(name).dims:
        encoder = variant(name, dims).encoders[0] if variant(name, dims).encoders else None
        patch = fit_patch(name, dims, (64, 64, 64) if dims == "3d" else (128, 128))
        inputs = ModelInputs(1, 2, patch, encoder, spacing=(1.0,) * len(patch))
        counted = planned_forward_bytes(name, dims, inputs)
        assert counted is not None and counted.peak >= counted.largest >= 2 * 4 * 64**2, (name, dims)
        assert counted.peak < 2**33


def test_an_operation_without_a_meta_form_leaves_the_network_uncounted() -> None:
    class Host(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + float(x.sum().item())  # reads a value: no meta form

    assert forward_bytes(Host(), 1, (4, 4)) is None
