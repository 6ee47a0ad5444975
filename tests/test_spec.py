
import re

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


def test_a_region_run_has_its_own_id_and_a_label_run_the_id_it_had_before_targets() -> None:
    """`target` is written (and hashed) only where it is not "labels": every spec before it keeps its run id
    (the pinned hash below), and spec.json files without it read as label runs."""
    labels, regions = _spec(), _spec(target="regions")
    assert "target" not in labels.to_dict() and labels.spec_hash == _spec(target="labels").spec_hash
    assert regions.to_dict()["target"] == "regions"
    assert regions.run_id.startswith("3d-unet-dice_ce-none-regions-f0-s0-")
    assert regions.spec_hash != labels.spec_hash
    assert RunSpec.checked(regions.to_dict()) == regions and RunSpec.checked(labels.to_dict()) == labels


def test_known_id_does_not_drift() -> None:
    # Guards against accidental changes of the hashing, which would orphan finished runs: change this
    # value only together with PIPELINE_VERSION.
    assert _spec().spec_hash == "cf59358baa"  # PIPELINE_VERSION 15


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
    # past these the run failed after its setup, exit 5: an overflow at the first step, MemoryError, timedelta
    ({"lr": 1e300}, "lr must be at most 3.4e+38 (the largest float32, the type of the network's weights), "
                    "not 1e+300"),
    ({"lr": 3.5e38}, "lr must be at most 3.4e+38"),
    ({"lr": 1e-300}, "lr must be at least 1.18e-38 (the smallest normal float32: a smaller rate is 0 to the "
                     "network's weights), not 1e-300"),  # accepted, and trained nothing
    ({"batch_size": 3_000_000_000}, "batch_size must be at most 2147483647, not 3000000000"),
    # these trained, then every write of index.parquet (sweep, status, report) failed on it: a traceback
    ({"epochs": 10**20}, "epochs must be at most 9223372036854775807, not 100000000000000000000"),
    ({"iters_per_epoch": 10**20},
     "iters_per_epoch must be at most 9223372036854775807, not 100000000000000000000"),
    ({"num_folds": 10**20}, "num_folds must be at most 9223372036854775807, not 100000000000000000000"),
    ({"max_minutes": 1e300}, "max_minutes must be at most 1e+12 (about 1.9 million years), not 1e+300"),
    ({"patch_size": (40, 56, 3_000_000_000)},
     "a patch side must be at most 2147483647, not 40,56,3000000000"),
    ({"patch_size": (32, 32)}, "a 3d patch size is 3 positive sides, not 32,32"),
    ({"dims": "2d", "patch_size": (32, 0)}, "a 2d patch size is 2 positive sides, not 32,0"),
    ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'"),
    ({"target": "classes"}, "unknown target 'classes'; did you mean 'labels'?"),
    ({"target": "x"}, "unknown target 'x'; choose from labels, regions"),
    ({"target": "regions", "pipeline_version": 13},
     "target regions exists from pipeline version 14, not in a spec of version 13"),
])
def test_invalid_specs(bad: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        _spec(**bad)


@pytest.mark.parametrize(("change", "problem"), [
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"epochs": "8"}, "'epochs' must be a whole number, not \"8\""),
    ({"fold": 7}, "fold 7 outside 0..4"),
])
def test_a_spec_json_is_checked_and_built_in_one_step(change: dict[str, object], problem: str) -> None:
    # predict checked a spec.json (which built the spec) and then built it again.
    data = _spec(patch_size=(32, 48, 32)).to_dict()
    assert RunSpec.checked(data) == _spec(patch_size=(32, 48, 32)) and RunSpec.problem(data) is None
    with pytest.raises(UsageError) as info:
        RunSpec.checked(data | change)
    assert str(info.value) == problem == RunSpec.problem(data | change)


def test_a_spec_json_lacking_a_required_key_is_a_usage_error_naming_it() -> None:
    # `checked` let the dataclass's TypeError through: `predict` on such a run folder showed a traceback.
    data = {key: value for key, value in _spec().to_dict().items() if key not in ("arch", "aug")}
    with pytest.raises(UsageError) as info:
        RunSpec.checked(data)
    assert str(info.value) == "lacks arch, aug" == RunSpec.problem(data)


def test_the_largest_values_allowed_make_a_spec() -> None:
    spec = _spec(lr=3.4e38, batch_size=2**31 - 1, max_minutes=1e12, patch_size=(2**31 - 1, 8, 8))
    assert (spec.lr, spec.batch_size, spec.max_minutes) == (3.4e38, 2**31 - 1, 1e12)


def test_a_specs_hash_is_computed_once_and_a_changed_copy_gets_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A sweep skipping 1000 finished runs hashed each run's spec 4 times (its folder, its line, ...).
    import dataclasses
    import pickle

    from medseg_bench import spec as spec_module

    calls: list[int] = []
    real = spec_module.spec_hash_of
    monkeypatch.setattr(spec_module, "spec_hash_of", lambda data: calls.append(1) or real(data))
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
    assert len({spec.run_id for _ in range(4)}) == 1 and len(calls) == 1
    other = dataclasses.replace(spec, seed=1)
    assert other.run_id != spec.run_id and other.run_id.endswith(real(other.to_dict()))
    assert pickle.loads(pickle.dumps(spec)) == spec and pickle.loads(pickle.dumps(spec)).run_id == spec.run_id
    assert spec == RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none")
