import pytest

from medseg_bench.errors import UsageError
from medseg_bench.spec import RunSpec


def _spec(**kw: object) -> RunSpec:
    base: dict[str, object] = {"task": "Task04_Hippocampus", "dims": "3d", "arch": "unet", "loss": "dice_ce",
                               "aug": "none"}
    base.update(kw)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_run_id_is_stable_and_readable() -> None:
    a, b = _spec(), _spec()
    assert a.run_id == b.run_id
    assert a.run_id.startswith("3d-unet-dice_ce-none-f0-s0-")
    assert RunSpec.from_dict(a.to_dict()).run_id == a.run_id


@pytest.mark.parametrize("change", [{"seed": 1}, {"epochs": 11}, {"lr": 0.01}, {"patch_size": (8, 8, 8)}])
def test_every_result_field_changes_the_id(change: dict[str, object]) -> None:
    assert _spec(**change).run_id != _spec().run_id


def test_known_id_does_not_drift() -> None:
    # Guards against accidental changes of the hashing, which would orphan finished runs: change this
    # value only together with PIPELINE_VERSION.
    assert _spec().spec_hash == "abb68a1ee1"


@pytest.mark.parametrize(("bad", "message"), [
    ({"dims": "4d"}, "unknown dims '4d'"),
    ({"fold": 5}, "fold 5 outside 0..4"),
    ({"num_folds": 1}, "num_folds must be at least 2"),
    ({"epochs": 0}, "epochs must be at least 1, not 0"),
    ({"iters_per_epoch": 0}, "iters_per_epoch must be at least 1, not 0"),
    ({"batch_size": 0}, "batch_size must be at least 1, not 0"),  # 0 used to mean "from the plan", silently
    ({"seed": -1}, "seed must be in 0..4294967295"),
    ({"lr": -1.0}, "lr must be a positive number, not -1.0"),
    ({"lr": float("nan")}, "lr must be a positive number, not nan"),
    ({"max_minutes": 0.0}, "max_minutes must be a positive number"),
    ({"patch_size": (32, 32)}, "a 3d patch size is 3 positive sides, not 32,32"),
    ({"dims": "2d", "patch_size": (32, 0)}, "a 2d patch size is 2 positive sides, not 32,0"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
])
def test_invalid_specs(bad: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _spec(**bad)
