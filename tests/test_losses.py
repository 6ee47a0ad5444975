import re

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


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1e300), (1e-300, 1.0, 1.0), (1.0, 1e-39, 1.0),
                                     (1e-320, 1.0, 2.0)])
def test_class_weights_float32_cannot_hold_are_refused(weights: tuple[float, ...]) -> None:
    # scaled by their mean and held as float32, 1,1,1e300 was the loss of 0,0,1 under a run id of its own
    with pytest.raises(UsageError, match=r"^class weights from \S+ to \S+ are further apart than the loss"):
        build_loss("dice_ce", 3, weights)
    build_loss("dice_ce", 3, (1.0, 1.0, 1e36))  # within float32's range: taken
    build_loss("dice_ce", 3, (0.0, 1.0, 2.0))  # 0 leaves a class out, as before


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
    assert torch.isfinite(random_logits.grad).all()
    assert loss_fn(masks * 20 - 10, target) < loss.detach()
    heads = (random_logits.detach(), random_logits.detach()[(slice(None), slice(None),
                                                               *(slice(None, None, 2),) * len(shape))])
    assert torch.isfinite(loss_fn(heads, target))  # deep supervision: the label map downsampled, then masks


def test_every_loss_has_a_region_form() -> None:
    """A user comparing losses on region training has them all (`REGION_LOSSES`, under each loss's name)."""
    assert list(REGION_LOSSES) == list(LOSSES)
    assert all(region_loss_problem(name) is None for name in LOSSES)


# The region forms written out by hand, in float64, from the sigmoid probabilities `p` of the logits and
# the region masks `m` (B, R, *spatial): Dice-type terms sum over the batch and space (the batch as one
# sample) and average over every region channel (none is a background); smoothing 1e-5 as MONAI's.
SMOOTH = 1e-5


def _batch_sum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(0, *range(2, x.ndim)))  # one value per region channel


def _hand_bce(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return -(m * p.log() + (1 - m) * (1 - p).log()).mean()


def _hand_dice(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (1 - (2 * _batch_sum(p * m) + SMOOTH) / (_batch_sum(p) + _batch_sum(m) + SMOOTH)).mean()


def _hand_focal(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # Lin 2017 with a sigmoid per channel, gamma 2, no alpha: -(1 - p_t)^2 log p_t, a mean over every voxel
    return -(m * (1 - p) ** 2 * p.log() + (1 - m) * p**2 * (1 - p).log()).mean()


def _hand_tversky(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    tp, fp, fn = _batch_sum(p * m), _batch_sum(p * (1 - m)), _batch_sum((1 - p) * m)
    return (1 - (tp + SMOOTH) / (tp + 0.3 * fp + 0.7 * fn + SMOOTH)).mean()


def _hand_generalized_dice(p: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    # Sudre 2017: one ratio over all regions, each weighted by its inverse squared volume in the batch; a
    # region absent from the batch takes the largest of the other weights (MONAI's rule for its infinite one)
    volume = _batch_sum(m)
    w = torch.where(volume > 0, 1 / volume.clamp_min(1) ** 2, 0.0)
    w = torch.where(volume > 0, w, w.max())
    return 1 - (2 * (w * _batch_sum(p * m)).sum() + SMOOTH) / ((w * (_batch_sum(p) + volume)).sum() + SMOOTH)


HAND_REGION_FORMS = {
    "ce": _hand_bce,
    "dice": _hand_dice,
    "dice_ce": lambda p, m: _hand_dice(p, m) + _hand_bce(p, m),  # nnU-Net's DC_and_BCE_loss, weights 1 and 1
    "dice_focal": lambda p, m: _hand_dice(p, m) + _hand_focal(p, m),
    "focal": _hand_focal,
    "generalized_dice": _hand_generalized_dice,
    "tversky": _hand_tversky,
}


@pytest.mark.parametrize("name", list(REGION_LOSSES))
@pytest.mark.parametrize("labels", [3, 2], ids=["every-region", "a-region-absent"])
def test_region_form_is_its_formula_written_out_by_hand(name: str, labels: int) -> None:
    """Each region form against its sigmoid formula on a small tensor; with labels 0-1 only, the second
    region (label 2) is absent from the batch."""
    torch.manual_seed(3)
    regions = ((1, 2), (2,))
    logits, target = torch.randn(2, 2, 6, 6, 6), torch.randint(0, labels, (2, 1, 6, 6, 6))
    masks = torch.cat([torch.isin(target, torch.tensor(r)) for r in regions], dim=1).double()
    expected = HAND_REGION_FORMS[name](torch.sigmoid(logits.double()), masks)
    found = build_loss(name, 3, regions=regions)(logits, target)
    assert found == pytest.approx(float(expected), rel=1e-5)


def test_every_region_form_is_written_out_by_hand() -> None:
    assert sorted(HAND_REGION_FORMS) == list(REGION_LOSSES)


@pytest.mark.parametrize("name", list(REGION_LOSSES))
def test_region_form_gradients_are_finite_even_for_saturated_logits(name: str) -> None:
    """Logits of +-60 (a sigmoid of exactly 0 or 1 in float32), right and wrong, beside ordinary ones."""
    torch.manual_seed(4)
    regions = ((1, 2, 3), (2, 3), (3,))
    target = torch.randint(0, 4, (2, 1, 6, 6, 6))
    masks = torch.cat([torch.isin(target, torch.tensor(r)) for r in regions], dim=1).float()
    logits = torch.randn(2, 3, 6, 6, 6)
    logits[0] = (masks[0] * 2 - 1) * 60  # sure and right
    logits[1, 0] = (1 - masks[1, 0] * 2) * 60  # sure and wrong
    logits.requires_grad_(True)
    loss = build_loss(name, 4, regions=regions)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 0].abs().sum() > 0  # the sure and wrong channel is still trained


def test_a_loss_without_a_region_form_and_class_weights_are_refused_for_regions(
        softmax_only_loss: str) -> None:
    assert softmax_only_loss in LOSSES and softmax_only_loss not in REGION_LOSSES
    assert region_loss_problem("dice_ce") is None
    # the region losses named from the registry: a loss added with its region form is among them
    forms = ", ".join(sorted(REGION_LOSSES))
    with pytest.raises(UsageError, match=rf"^loss '{softmax_only_loss}' has no region form \(sigmoid "
                                         rf"channels, one per region\): target regions trains with "
                                         rf"{re.escape(forms)}$"):
        build_loss(softmax_only_loss, 3, regions=((1, 2), (2,)))
    build_loss(softmax_only_loss, 3)  # as any loss, with target labels
    for name in REGION_LOSSES:
        with pytest.raises(UsageError, match="^class weights with target regions"):
            build_loss(name, 3, (1.0, 1.0, 2.0), regions=((1, 2), (2,)))


@pytest.mark.parametrize("name", ["ce", "dice_ce"])
def test_a_batch_of_classes_weighted_0_only_gives_a_finite_loss_from_version_15(name: str) -> None:
    """torch's weighted cross-entropy divides by the weights of the voxels' classes: 0 / 0 where each is 0
    (NaN: a CPU run failed on its weights, a GPU run skipped the step). Version 14's loss is kept as it
    was."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    background = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    loss = build_loss(name, 3, (0.0, 1.0, 1.0))(logits, background)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    if name == "ce":
        assert float(loss.detach()) == 0.0 and not logits.grad.any()
    assert torch.isnan(build_loss(name, 3, (0.0, 1.0, 1.0), pipeline_version=14)(logits, background))
    # any other batch: the same loss, to the bit, as version 14's, and the same state-dict keys
    mixed = torch.randint(0, 3, (2, 1, 4, 4))
    now = build_loss(name, 3, (0.0, 1.0, 1.0))
    then = build_loss(name, 3, (0.0, 1.0, 1.0), pipeline_version=14)
    assert torch.equal(now(logits, mixed), then(logits, mixed))
    assert now.state_dict().keys() == then.state_dict().keys()
