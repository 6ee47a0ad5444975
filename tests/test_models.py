"""Every registered arch x dims builds and does forward + backward on a tiny input."""

from __future__ import annotations

import pytest
import torch

from medseg_bench.errors import UnknownNameError, UsageError
from medseg_bench.models import ARCHS, ModelInputs, build_model

TINY = {"2d": (32, 32), "3d": (16, 16, 16)}
CASES = [(name, dims) for name, entry in ARCHS.items() for dims in entry.dims]


@pytest.mark.parametrize(("name", "dims"), CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_forward_backward(name: str, dims: str) -> None:
    torch.manual_seed(0)
    encoder = "resnet18" if dims == "2d" else None
    net = build_model(name, dims, ModelInputs(in_channels=2, num_classes=3, patch_size=TINY[dims], encoder=encoder))
    x = torch.randn(2, 2, *TINY[dims])
    out = net(x)
    assert out.shape == (2, 3, *TINY[dims])
    out.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_alias_and_errors() -> None:
    assert ARCHS.get("deeplabv3plus") is ARCHS.get("deeplab")
    with pytest.raises(UnknownNameError, match="did you mean 'unet'"):
        ARCHS.get("unte")
    with pytest.raises(UsageError, match="has no 3d variant"):
        build_model("deeplab", "3d", ModelInputs(1, 2, TINY["3d"]))
    with pytest.raises(UsageError, match="pretrained encoder weights"):
        build_model("unet", "2d", ModelInputs(1, 2, TINY["2d"], pretrained=True))
