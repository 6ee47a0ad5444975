import pytest
import torch

from medseg_bench.errors import UsageError
from medseg_bench.losses import (
    LOSSES,
    REGION_LOSSES,
    build_loss,
    deep_supervision_weights,
    region_loss_problem,
)

WEIGHTABLE = [name for name in LOSSES if name != "generalized_dice"]


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)], ids=["2d", "3d"])
def test_loss_runs_and_prefers_the_truth(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, *shape))
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss_fn = build_loss(name, 3)
    random_logits = torch.randn(2, 3, *shape, requires_grad=True)
    loss = loss_fn(random_logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and random_logits.grad is not None
    assert loss_fn(onehot * 20 - 10, target) < loss.detach()


@pytest.mark.parametrize("name", WEIGHTABLE)
def test_class_weights_shift_the_loss_towards_the_weighted_class(name: str) -> None:
    # Class 1 predicted perfectly, class 2 badly: weighting class 2 up must raise the loss, down lower it.
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8))
    logits = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float() * 8 - 4
    logits[:, 2] = torch.randn(2, 8, 8)
    plain = build_loss(name, 3)(logits, target)
    up = build_loss(name, 3, (1.0, 1.0, 4.0))(logits, target)
    down = build_loss(name, 3, (1.0, 1.0, 0.25))(logits, target)
    assert down < up and not torch.isclose(plain, up)


def test_class_weight_errors() -> None:
    with pytest.raises(UsageError, match=r"one value per class \(3, background first\), got 2"):
        build_loss("dice_ce", 3, (1.0, 2.0))
    with pytest.raises(UsageError, match="finite, >= 0"):
        build_loss("dice_ce", 3, (1.0, -1.0, 1.0))
    with pytest.raises(UsageError, match="generalized_dice' weights classes itself"):
        build_loss("generalized_dice", 3, (1.0, 1.0, 1.0))


def test_deep_supervision_weights_halve_and_sum_to_one() -> None:
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_deep_supervision_loss_over_heads() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    heads = torch.randn(2, 2, 3, 6, 6, 6)  # (B, heads, K, *spatial) as DynUNet returns in training
    loss_fn = build_loss("dice_ce", 3)
    expected = 2 / 3 * loss_fn(heads[:, 0], target) + 1 / 3 * loss_fn(heads[:, 1], target)
    assert torch.isclose(loss_fn(heads, target), expected)


def test_deep_supervision_heads_at_their_own_resolution_score_the_label_downsampled_to_them() -> None:
    # nnU-Net (pipeline version 8): heads (full, 1/2, 1/4) against the label downsampled nearest-exact, i.e.
    # the voxel nearest each low-resolution centre: index 2i + 1 at 1/2, 4i + 2 at 1/4
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 8, 8, 8))
    heads = (torch.randn(2, 3, 8, 8, 8), torch.randn(2, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2))
    loss_fn = build_loss("dice_ce", 3)
    expected = (4 / 7 * loss_fn(heads[0], target) + 2 / 7 * loss_fn(heads[1], target[..., 1::2, 1::2, 1::2])
                + 1 / 7 * loss_fn(heads[2], target[..., 2::4, 2::4, 2::4]))
    assert torch.isclose(loss_fn(heads, target), expected)


def test_dice_focal_is_the_dice_of_dice_plus_the_focal_of_focal() -> None:
    # MONAI's DiceFocalLoss makes its focal term a per-channel sigmoid loss that never sees the background.
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    combined = build_loss("dice_focal", 3)(logits, target)
    parts = build_loss("dice", 3)(logits, target) + build_loss("focal", 3)(logits, target)
    assert combined == pytest.approx(float(parts))
    background = logits.clone().requires_grad_(True)
    build_loss("dice_focal", 3)(background, target).backward()
    assert background.grad is not None and background.grad[:, 0].abs().max() > 0  # the focal term trains it


@pytest.mark.parametrize("name", WEIGHTABLE)
def test_class_weights_count_by_their_ratios(name: str) -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    one = build_loss(name, 3, (0.5, 1.0, 1.0))(logits, target)
    assert build_loss(name, 3, (1.0, 2.0, 2.0))(logits, target) == pytest.approx(float(one))


@pytest.mark.parametrize("name", WEIGHTABLE)
def test_equal_class_weights_are_the_unweighted_loss(name: str) -> None:
    # Why `--class-weights 1,1,1` is recorded as no weights (sweep.expand.canonical_weights): the same loss.
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    plain = build_loss(name, 3)(logits, target)
    assert build_loss(name, 3, (2.0, 2.0, 2.0))(logits, target) == pytest.approx(float(plain), rel=1e-6)


@pytest.mark.parametrize("name", list(REGION_LOSSES))
@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)], ids=["2d", "3d"])
def test_region_form_runs_and_prefers_the_truth(name: str, shape: tuple[int, ...]) -> None:
    """Every region form (`target: regions`): sigmoid channels, one per region, against the region masks of
    the label map (BraTS-like nested regions of labels 1-3)."""
    torch.manual_seed(0)
    regions = ((1, 2, 3), (2, 3), (3,))
    target = torch.randint(0, 4, (2, 1, *shape))
    masks = torch.cat([torch.isin(target, torch.tensor(r)) for r in regions], dim=1).float()
    loss_fn = build_loss(name, 4, regions=regions)
    random_logits = torch.randn(2, 3, *shape, requires_grad=True)
    loss = loss_fn(random_logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and random_logits.grad is not None
    assert loss_fn(masks * 20 - 10, target) < loss.detach()
    heads = (random_logits.detach(), random_logits.detach()[(slice(None), slice(None),
                                                               *(slice(None, None, 2),) * len(shape))])
    assert torch.isfinite(loss_fn(heads, target))  # deep supervision: the label map downsampled, then masks


def test_dice_ce_on_regions_is_sigmoid_dice_over_every_region_plus_bce() -> None:
    """nnU-Net's DC_and_BCE_loss (weights 1 and 1, Dice with the batch as one sample, every channel
    foreground), up to its smoothing; written out by hand."""
    torch.manual_seed(3)
    regions = ((1, 2), (2,))
    logits, target = torch.randn(2, 2, 6, 6, 6), torch.randint(0, 3, (2, 1, 6, 6, 6))
    masks = torch.cat([torch.isin(target, torch.tensor(r)) for r in regions], dim=1).float()
    p = torch.sigmoid(logits)
    axes = (0, 2, 3, 4)
    dice = 1 - (2 * (p * masks).sum(axes) + 1e-5) / (p.sum(axes) + masks.sum(axes) + 1e-5)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, masks)
    expected = dice.mean() + bce
    found = build_loss("dice_ce", 3, regions=regions)(logits, target)
    assert found == pytest.approx(float(expected), rel=1e-5)


def test_a_loss_without_a_region_form_and_class_weights_are_refused_for_regions() -> None:
    assert "focal" not in REGION_LOSSES and region_loss_problem("dice_ce") is None
    with pytest.raises(UsageError, match=r"^loss 'focal' has no region form \(sigmoid channels, one per "
                                         r"region\): target regions trains with dice_ce$"):
        build_loss("focal", 3, regions=((1, 2), (2,)))
    with pytest.raises(UsageError, match="^class weights with target regions"):
        build_loss("dice_ce", 3, (1.0, 1.0, 2.0), regions=((1, 2), (2,)))
