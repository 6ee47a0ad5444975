import pytest
import torch

from medseg_bench.losses import LOSSES


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(8, 8), (6, 6, 6)], ids=["2d", "3d"])
def test_loss_runs_and_prefers_the_truth(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, *shape))
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    loss_fn = LOSSES.get(name)(3)
    random_logits = torch.randn(2, 3, *shape, requires_grad=True)
    loss = loss_fn(random_logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and random_logits.grad is not None
    assert loss_fn(onehot * 20 - 10, target) < loss.detach()
