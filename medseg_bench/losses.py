"""Losses (MONAI implementations): each registry entry builds a callable `(logits, target) -> scalar`.

`logits` is (B, K, *spatial); `target` is (B, 1, *spatial) integer labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from medseg_bench.registry import Registry

if TYPE_CHECKING:
    from torch import nn

LossFactory = Callable[[int], "nn.Module"]
LOSSES: Registry[LossFactory] = Registry("loss")

_SOFTMAX = {"to_onehot_y": True, "softmax": True}


@LOSSES.register("ce")
def cross_entropy(num_classes: int) -> nn.Module:
    from monai.losses import DiceCELoss

    # DiceCELoss with lambda_dice=0 is MONAI's CE that accepts (B, 1, ...) targets.
    return DiceCELoss(**_SOFTMAX, lambda_dice=0.0, lambda_ce=1.0)


@LOSSES.register("dice")
def dice(num_classes: int) -> nn.Module:
    from monai.losses import DiceLoss

    return DiceLoss(**_SOFTMAX, include_background=False, batch=True)


@LOSSES.register("dice_ce")
def dice_ce(num_classes: int) -> nn.Module:
    from monai.losses import DiceCELoss

    return DiceCELoss(**_SOFTMAX, include_background=False, batch=True)


@LOSSES.register("focal")
def focal(num_classes: int) -> nn.Module:
    from monai.losses import FocalLoss

    return FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)


@LOSSES.register("dice_focal")
def dice_focal(num_classes: int) -> nn.Module:
    from monai.losses import DiceFocalLoss

    return DiceFocalLoss(**_SOFTMAX, include_background=False, batch=True, gamma=2.0)


@LOSSES.register("tversky")
def tversky(num_classes: int) -> nn.Module:
    from monai.losses import TverskyLoss

    return TverskyLoss(**_SOFTMAX, include_background=False, batch=True, alpha=0.3, beta=0.7)


@LOSSES.register("generalized_dice")
def generalized_dice(num_classes: int) -> nn.Module:
    from monai.losses import GeneralizedDiceLoss

    return GeneralizedDiceLoss(**_SOFTMAX, include_background=False, batch=True)
