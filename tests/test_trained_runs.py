"""The runs predict takes, read before any network is loaded (the command: tests/cli/test_predict.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_bench.errors import DataError, UsageError
from medseg_bench.run_folder import write_status
from medseg_bench.spec import RunSpec
from medseg_bench.trained_runs import TrainedRun, check_ensemble, ensemble_decision, run_folder_and_checkpoint


def _folder(tmp_path: Path, seed: int = 0) -> tuple[Path, RunSpec]:
    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=seed)
    folder = tmp_path / spec.run_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"run_id": spec.run_id, **spec.to_dict()}))
    return folder, spec


def test_a_run_is_its_folder_or_a_checkpoint_in_it(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    with pytest.raises(UsageError, match="no such run folder or checkpoint"):
        run_folder_and_checkpoint(tmp_path / "nowhere")
    with pytest.raises(DataError, match="checkpoint missing \\(the run has not finished an epoch\\)"):
        run_folder_and_checkpoint(folder)
    write_status(folder, "done")
    (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\n")
    with pytest.raises(DataError, match="checkpoint missing \\(deleted since the run finished"):
        run_folder_and_checkpoint(folder)
    best = folder / "checkpoints" / "best.ckpt"
    best.write_bytes(b"")
    assert run_folder_and_checkpoint(best) == (folder, best)
    with pytest.raises(DataError, match="not a run folder \\(no spec.json in it: a run folder is "
                                        "RESULTS/TASK/RUN_ID\\)"):
        run_folder_and_checkpoint(tmp_path)  # a task folder given for a run folder: no checkpoint was given
    (tmp_path / "other.ckpt").write_bytes(b"")
    with pytest.raises(DataError) as info:  # its folder alone was named, as if given for a run folder
        run_folder_and_checkpoint(tmp_path / "other.ckpt")
    assert str(info.value) == (f"{tmp_path / 'other.ckpt'}: not a run's checkpoint (no spec.json in "
                               f"{tmp_path}: give a run folder, RESULTS/TASK/RUN_ID, or a checkpoint in its "
                               "checkpoints/)")


@pytest.mark.parametrize(("state", "why"), [
    ("running", "a process is training the run now and has not saved one yet"),
    ("queued", "the run is submitted to SLURM and has not saved one yet"),
    ("partial", "the run has not finished an epoch")])
def test_a_missing_checkpoint_is_explained_by_the_runs_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             state: str, why: str) -> None:
    from medseg_bench import results

    folder, _ = _folder(tmp_path)
    monkeypatch.setattr(results, "run_state", lambda _: state)
    with pytest.raises(DataError, match=f"checkpoint missing \\({why}\\)$"):
        run_folder_and_checkpoint(folder)


def test_an_ensemble_takes_each_run_once_and_pools_decisions_only_when_all_have_one(tmp_path: Path) -> None:
    from medseg_bench.postprocess_per_label import PerLabelDecision
    from tests.conftest import postprocessing_decision

    (one, spec), (two, other) = _folder(tmp_path, 0), _folder(tmp_path, 1)

    class Plan:
        preprocessing_hash = "abc"

    decision = postprocessing_decision(True, {1: True, 2: False})
    runs = [TrainedRun(one, one / "checkpoints" / "last.ckpt", spec, Plan(), decision),
            TrainedRun(two, two / "checkpoints" / "last.ckpt", other, Plan(), None)]
    check_ensemble(runs)
    with pytest.raises(UsageError, match="the same run and checkpoint as"):
        check_ensemble([runs[0], runs[0]])
    said: list[str] = []
    assert ensemble_decision(runs, said.append) is None
    assert said == [f"postprocessing: none, {two} has no decision (1 of 2 runs)"]
    runs[1].decision = decision
    assert ensemble_decision(runs, said.append).steps == decision.steps  # pooled
    # a run of pipeline version 13 (each label on its own) and one of 14 (nnU-Net v2's): not pooled
    runs[1].decision = PerLabelDecision({"1": True}, {"1": 0.5}, {"1": 0.6})
    assert ensemble_decision(runs, said.append) is None
    assert said[-1] == ("postprocessing: none, their runs decided by different procedures (each label on its "
                        "own up to pipeline version 13, as nnU-Net v2 from version 14)")
