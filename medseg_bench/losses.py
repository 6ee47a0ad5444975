"""Losses (MONAI implementations): each registry entry builds a callable `(logits, target) -> scalar`.

`logits` is (B, K, *spatial); `target` is (B, 1, *spatial) integer labels. A factory takes the number of
classes and optional class weights (one per class, background first); `build_loss` checks the weights and,
for networks with deep supervision, wraps the loss over their heads with nnU-Net's halving weights.

A loss that can train a run with `target: regions` (`regions.py`) has a region form too, registered under
its name in `REGION_LOSSES`: a factory `(num_regions) -> nn.Module` of (B, R, *spatial) logits and
(B, R, *spatial) region masks; `build_loss(..., regions=...)` builds the masks from the label map. Every loss
has one: the sigmoid (multi-label) counterpart of its softmax form, with its hyperparameters. A region form
has no background channel to drop (every region channel is foreground, nnU-Net's `do_bg=True`), so it
scores every channel; its Dice-type terms take the batch as one sample, as the softmax forms' do; its
cross-entropy and focal terms are means over every voxel of every channel.

Example:
    >>> loss_fn = build_loss("dice_ce", num_classes=3, class_weights=(0.5, 1.0, 2.0))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from medseg_bench.errors import UsageError
from medseg_bench.registry import Registry
from medseg_bench.spec import PIPELINE_VERSION

if TYPE_CHECKING:
    import torch
    from torch import nn

Weights = tuple[float, ...] | None
LossFactory = Callable[[int, Weights], "nn.Module"]
LOSSES: Registry[LossFactory] = Registry("loss")
RegionLossFactory = Callable[[int], "nn.Module"]
# The region form of a loss, under the loss's own name: a loss without one cannot train `target: regions`.
REGION_LOSSES: Registry[RegionLossFactory] = Registry("region form of a loss")

_SOFTMAX: dict[str, Any] = {"to_onehot_y": True, "softmax": True}
# The region forms' Dice-type terms: a sigmoid per region channel, every channel (none is a background).
_SIGMOID: dict[str, Any] = {"sigmoid": True, "include_background": True, "batch": True}
# Shared by a loss's softmax and region forms.
FOCAL_GAMMA = 2.0
TVERSKY_ALPHA, TVERSKY_BETA = 0.3, 0.7
# From this pipeline version a weighted cross-entropy is 0, not 0 / 0, on a batch of classes weighted 0 only.
ZERO_WEIGHT_SAFE_FROM = 15


def _tensor(weights: Sequence[float] | None) -> torch.Tensor | None:
    import torch

    return None if weights is None else torch.tensor(list(weights), dtype=torch.float32)


def _foreground(weights: Weights) -> torch.Tensor | None:
    # Dice-type terms skip the background channel, so they take the foreground weights only.
    return None if weights is None else _tensor(weights[1:])


@LOSSES.register("ce")
def cross_entropy(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Cross-entropy over softmax logits (class weights: CE weights)."""
    from monai.losses import DiceCELoss

    # DiceCELoss with lambda_dice=0 is MONAI's CE that accepts (B, 1, ...) targets.
    return DiceCELoss(**_SOFTMAX, lambda_dice=0.0, lambda_ce=1.0, weight=_tensor(class_weights))


@REGION_LOSSES.register("ce")
def bce(num_regions: int) -> nn.Module:
    """Binary cross-entropy over the sigmoid region channels (`BCEWithLogitsLoss`, mean over voxels)."""
    from torch import nn

    return nn.BCEWithLogitsLoss()


@LOSSES.register("dice")
def dice(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Soft Dice over the batch, foreground classes only (Milletari 2016)."""
    from monai.losses import DiceLoss

    return DiceLoss(**_SOFTMAX, include_background=False, batch=True, weight=_foreground(class_weights))


@REGION_LOSSES.register("dice")
def sigmoid_dice(num_regions: int) -> nn.Module:
    """Soft Dice over the sigmoid region channels, every one (no background channel to drop)."""
    from monai.losses import DiceLoss

    return DiceLoss(**_SIGMOID)


@LOSSES.register("dice_ce")
def dice_ce(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Soft Dice (foreground) + cross-entropy, nnU-Net's default loss."""
    from monai.losses import DiceCELoss

    # MONAI drops the background weight for the Dice term itself.
    return DiceCELoss(**_SOFTMAX, include_background=False, batch=True, weight=_tensor(class_weights))


@REGION_LOSSES.register("dice_ce")
def dice_bce(num_regions: int) -> nn.Module:
    """Soft Dice over the sigmoid region channels + binary cross-entropy, nnU-Net's `DC_and_BCE_loss`."""
    # Not MONAI's DiceCELoss(sigmoid=True): its CE term is a softmax cross-entropy for more than one channel.
    # Every region channel is foreground (nnU-Net's do_bg=True); batch Dice as `dice_ce`'s.
    return _Sum(sigmoid_dice(num_regions), bce(num_regions))


@LOSSES.register("focal")
def focal(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Softmax focal loss, gamma 2 (Lin 2017)."""
    from monai.losses import FocalLoss

    return FocalLoss(to_onehot_y=True, use_softmax=True, gamma=FOCAL_GAMMA, weight=_tensor(class_weights))


@REGION_LOSSES.register("focal")
def sigmoid_focal(num_regions: int) -> nn.Module:
    """Sigmoid (binary) focal loss per region channel, gamma 2 (mean over voxels)."""
    from monai.losses import FocalLoss

    # use_softmax=False: MONAI's sigmoid focal loss, no alpha (as `focal`), every channel.
    return FocalLoss(include_background=True, use_softmax=False, gamma=FOCAL_GAMMA)


@LOSSES.register("dice_focal")
def dice_focal(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Soft Dice (foreground) + the softmax focal loss of `focal`."""
    # Not MONAI's DiceFocalLoss: its focal term is a per-channel sigmoid (binary) focal loss without the
    # background channel, whatever `softmax` says; this is the Dice of `dice` plus the focal loss of `focal`.
    return _Sum(dice(num_classes, class_weights), focal(num_classes, class_weights))


@REGION_LOSSES.register("dice_focal")
def sigmoid_dice_focal(num_regions: int) -> nn.Module:
    """Soft Dice over the sigmoid region channels + the sigmoid focal loss of `focal`'s region form."""
    return _Sum(sigmoid_dice(num_regions), sigmoid_focal(num_regions))


@LOSSES.register("tversky")
def tversky(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Tversky loss, alpha 0.3 / beta 0.7: false negatives weigh more (Salehi 2017)."""
    from monai.losses import TverskyLoss

    tversky_args: dict[str, Any] = {**_SOFTMAX, "include_background": False, "batch": True,
                                    "alpha": TVERSKY_ALPHA, "beta": TVERSKY_BETA}
    if class_weights is None:
        return TverskyLoss(**tversky_args)
    return _WeightedPerClass(TverskyLoss(**tversky_args, reduction="none"), class_weights[1:])


@REGION_LOSSES.register("tversky")
def sigmoid_tversky(num_regions: int) -> nn.Module:
    """Tversky loss over the sigmoid region channels, every one, alpha 0.3 / beta 0.7 as `tversky`."""
    from monai.losses import TverskyLoss

    return TverskyLoss(**_SIGMOID, alpha=TVERSKY_ALPHA, beta=TVERSKY_BETA)


@LOSSES.register("generalized_dice")
def generalized_dice(num_classes: int, class_weights: Weights = None) -> nn.Module:
    """Generalized Dice, classes weighted by inverse squared volume (Sudre 2017)."""
    from monai.losses import GeneralizedDiceLoss

    if class_weights is not None:
        raise UsageError("loss 'generalized_dice' weights classes itself (inverse squared volume); "
                         "drop --class-weights or choose another loss")
    return GeneralizedDiceLoss(**_SOFTMAX, include_background=False, batch=True)


@REGION_LOSSES.register("generalized_dice")
def sigmoid_generalized_dice(num_regions: int) -> nn.Module:
    """Generalized Dice over the sigmoid region channels, regions weighted by inverse squared volume."""
    from monai.losses import GeneralizedDiceLoss

    # Every channel; a region absent from the batch takes the largest weight of the others (MONAI's rule).
    return GeneralizedDiceLoss(**_SIGMOID)


def _Sum(*terms: nn.Module) -> nn.Module:  # noqa: N802 - a factory
    from torch import nn

    class Sum(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.terms = nn.ModuleList(terms)

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return sum((term(logits, target) for term in self.terms), logits.new_zeros(()))

    return Sum()


def _WeightedPerClass(per_class: nn.Module, weights: Sequence[float]) -> nn.Module:  # noqa: N802 - a factory
    from torch import nn

    class WeightedPerClass(nn.Module):
        """Weighted mean over classes of a loss computed with reduction="none" (one value per class)."""

        weights: torch.Tensor  # a buffer (registered below)

        def __init__(self) -> None:
            super().__init__()
            self.inner = per_class
            self.register_buffer("weights", _tensor(weights))

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            values = self.inner(logits, target).reshape(-1)
            return (values * self.weights).sum() / self.weights.sum().clamp_min(1e-12)

    return WeightedPerClass()


def deep_supervision_weights(num_heads: int) -> list[float]:
    """nnU-Net's weights for heads at full, 1/2, 1/4, ... resolution: 1, 1/2, 1/4, ..., summing to 1."""
    raw = [0.5**i for i in range(num_heads)]
    return [w / sum(raw) for w in raw]


def _downsampled(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A (B, 1, *spatial) label map at `shape`, nearest-exact (as DownsampleSegForDSTransform of nnU-Net)."""
    import torch.nn.functional as F

    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest-exact").to(target.dtype)


def _with_deep_supervision(loss: nn.Module) -> nn.Module:
    from torch import nn

    class DeepSupervision(nn.Module):
        """Passes plain logits through; sums the loss over deep-supervision heads with nnU-Net's weights: a
        tuple of heads at their own resolution (version-8 dynunet), or (B, heads, K, *spatial) upsampled."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = loss

        def forward(self, logits: Any, target: torch.Tensor) -> torch.Tensor:
            """`logits`: a tensor, or a tuple of heads (full resolution first) from a version-8 dynunet."""
            if isinstance(logits, (tuple, list)):
                # nnU-Net's: each head at its own resolution, against the label downsampled to it
                weights = deep_supervision_weights(len(logits))
                return sum(w * self.inner(head, _downsampled(target, head.shape[2:]))
                           for head, w in zip(logits, weights, strict=True))
            if logits.ndim == target.ndim:
                return self.inner(logits, target)
            weights = deep_supervision_weights(logits.shape[1])
            # Up to pipeline version 7: MONAI's DynUNet upsampled every head to full resolution, stacked.
            return sum(w * self.inner(logits[:, i], target) for i, w in enumerate(weights))

    return DeepSupervision()


def region_loss_problem(name: str) -> str | None:
    """Why loss `name` cannot train a run with `target: regions` (it has no region form), or None."""
    canonical = LOSSES.canonical(name)
    if canonical in REGION_LOSSES:
        return None
    return (f"loss '{canonical}' has no region form (sigmoid channels, one per region): target regions "
            f"trains with {', '.join(REGION_LOSSES)}")


def _on_regions(loss: nn.Module, members: Sequence[Sequence[int]]) -> nn.Module:
    from torch import nn

    from medseg_bench.regions import region_targets

    class OnRegions(nn.Module):
        """`loss` of the logits and the region masks of the (B, 1, *spatial) label map (`region_targets`)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = loss

        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return self.inner(logits, region_targets(target, members))

    return OnRegions()


def build_loss(name: str, num_classes: int, class_weights: Weights = None,
               regions: Sequence[Sequence[int]] | None = None,
               pipeline_version: int = PIPELINE_VERSION) -> nn.Module:
    """Loss `name` with class weights checked against `num_classes`; deep-supervision aware. `regions`: each
    region's labels, for a run with `target: regions` (the loss's region form, `REGION_LOSSES`; no class
    weights: a region is no class). `pipeline_version`: that version's loss (a resumed run keeps its own)."""
    if regions is not None:
        problem = region_loss_problem(name)
        if problem is not None:
            raise UsageError(problem)
        if class_weights is not None:
            raise UsageError("class weights with target regions: they weigh classes of a softmax, and a "
                             "region run's channels are regions; drop --class-weights or train target labels")
        region_form = REGION_LOSSES.get(LOSSES.canonical(name))
        return _with_deep_supervision(_on_regions(region_form(len(regions)), regions))
    factory = LOSSES.get(name)
    if class_weights is not None:
        if len(class_weights) != num_classes:
            raise UsageError(f"class weights need one value per class ({num_classes}, background first), "
                             f"got {len(class_weights)}: {list(class_weights)}")
        if any(not 0 <= w < float("inf") for w in class_weights) or not any(w > 0 for w in class_weights[1:]):
            raise UsageError(f"class weights must be finite, >= 0 and not all zero on the foreground, "
                             f"not {list(class_weights)}")
        # Only their ratios count: MONAI's Dice and focal terms scale with the weights themselves (cross-
        # entropy does not), so 1,2,2 and 0.5,1,1 would weigh Dice against CE differently.
        given = [w for w in class_weights if w > 0]
        mean = sum(class_weights) / len(class_weights)
        class_weights = tuple(w / mean for w in class_weights)
        # the loss holds them as float32: a positive weight under its smallest normal value was 0 (or lost its
        # digits) there, so 1,1,1e300 trained as 0,0,1 under its own run id
        from medseg_bench.checks import FLOAT32_TINY

        if any(0 < w < FLOAT32_TINY for w in class_weights):
            raise UsageError(f"class weights from {min(given):g} to {max(given):g} are further apart than "
                             "the loss's float32 holds (the smallest would be 0): keep them within a factor "
                             "of 1e+37, or give 0 to leave a class out")
    loss = factory(num_classes, class_weights)
    if class_weights is not None and 0 in class_weights and pipeline_version >= ZERO_WEIGHT_SAFE_FROM:
        _zero_weight_safe(loss)
    return _with_deep_supervision(loss)


def _zero_weight_safe(loss: nn.Module) -> None:
    """Each weighted `nn.CrossEntropyLoss` inside `loss` (MONAI's DiceCELoss holds one) whose weights hold a 0
    swapped, in place, for one whose value on a batch of classes weighted 0 only is 0: torch's weighted mean
    divides by the weights of the voxels' classes, 0 there (NaN: a CPU run failed, a GPU run skipped its
    step). Same weights, same state-dict keys (a checkpoint loads either way); any other batch is unchanged,
    to the bit."""
    from torch import nn

    class ZeroWeightSafeCrossEntropy(nn.CrossEntropyLoss):
        def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if (self.weight is not None and self.reduction == "mean" and not target.is_floating_point()
                    and not bool((self.weight > 0)[target].any())):
                return (input * 0).sum()  # no voxel weighs: nothing to learn from, a gradient of 0
            return super().forward(input, target)

    for parent in list(loss.modules()):
        for child_name, child in list(parent.named_children()):
            if (type(child) is nn.CrossEntropyLoss and child.weight is not None
                    and bool((child.weight == 0).any())):
                setattr(parent, child_name, ZeroWeightSafeCrossEntropy(
                    weight=child.weight, ignore_index=child.ignore_index, reduction=child.reduction,
                    label_smoothing=child.label_smoothing))
