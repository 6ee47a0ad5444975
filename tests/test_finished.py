"""A finished run read back: damage to any of its files is named, never read as it is, never trained over."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from medseg_bench.errors import ResultsError
from medseg_bench.files import write_json_atomic
from medseg_bench.results import (
    INDEX_NAME,
    checked_state,
    load_results,
    run_state,
    write_index,
)
from medseg_bench.spec import RunSpec
from tests.conftest import dice_means, fake_finished_run, finished_summary

HEADER = "case,label,dice,ref_empty,pred_empty\n"
_PARAMS, _FINITE = "a whole number from 0 to 2**53", "a finite number of at least 0"
_SPEC = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", seed=1).to_dict()


@pytest.mark.parametrize(("name", "damage", "problem"), [
    # A damaged status file once made a finished run "pending": trained again, its summary replaced.
    ("status.json", "{", "not valid JSON"),
    ("status.json", "[]", "not a JSON object, but the run finished"),
    ("status.json", '{"state": "running"}', "says 'running', but events.jsonl records that the run finished"),
    ("spec.json", "{", "not valid JSON"),
    ("spec.json", "[]", "not a JSON object"),
    ("spec.json", '{"task": "T"}', "lacks dims, arch, loss, aug"),
    ("summary.json", "", "not valid JSON"),
    ("metrics.csv", "x,y\n1,2\n", "lacks the column(s) case, label, dice, ref_empty, pred_empty"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\n", "has 1 row, summary.json counts 2 (cases x labels)"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,0.", "a row is cut short"),
    # Rows edited by hand: an empty case name was counted as a case of its own (cases 4, samples 5, the Dice
    # moved), a label the run never scored got a column of its own (dice_label_7), 1.5 too.
    ("metrics.csv", HEADER + "a,1,0.5,False,False\n,1,0.5,False,False\n", "case is empty in row 2"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\n  ,1,0.5,False,False\n", "case is empty in row 2"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,,0.5,False,False\n", "label is empty in row 2"),
    # text pandas reads as missing by default is read as written: a label the run never scored
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,NA,0.5,False,False\n",
     "label 'NA' in row 2 is none of the run's labels (1, as summary.json's per_label_dice holds them)"),
    *[("metrics.csv", HEADER + f"a,1,0.5,False,False\nb,{label},0.5,False,False\n",
       f"label '{label}' in row 2 is none of the run's labels (1, as summary.json's per_label_dice holds "
       "them)")
      for label in ("7", "1.5", "01")],
    ("metrics.csv", HEADER + "a,1,0.5,False,False\na,1,0.5,False,False\n",
     "case 'a' is scored for label '1' twice (again in row 2)"),
    # Text among the scores once crashed report (a traceback) while sweep and status called the run done.
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,abc,False,False\n",
     "dice is 'abc' in row 2, not a number"),
    ("metrics.csv", HEADER + "a,1,True,False,False\nb,1,False,False,False\n",
     "dice is 'True' in row 1, not a number"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,0.5,no,False\n",
     "ref_empty is 'no' in row 2, not True or False"),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,far,False,False",
     "hd95 is 'far' in row 2, not a number"),
    # Scores a metric cannot take ranked their configuration first (inf) or were averaged in (a Dice of 5).
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,inf,False,False\n",
     "dice is 'inf' in row 2, not a score from 0 to 1"),
    ("metrics.csv", HEADER + "a,1,0.5,False,False\nb,1,5,False,False\n",
     "dice is '5.0' in row 2, not a score from 0 to 1"),
    # Every Dice set to 1 ranked the run first, its summary.json (written from the same scores) saying less.
    ("metrics.csv", HEADER + "a,1,1.0,False,False\nb,1,1.0,False,False\n",
     "its mean Dice of label 1 is 1, but summary.json, written from the same scores, says 0."),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,-1,False,False",
     "hd95 is '-1' in row 2, not a finite value of at least 0"),
    ("metrics.csv", HEADER.replace("dice,", "dice,hd95,") + "a,1,0.5,1,False,False\nb,1,0.5,-inf,False,False",
     "hd95 is '-inf' in row 2, not a finite value of at least 0"),
    # A spec.json field of the wrong type crashed status and the index (pyarrow), and report (pandas).
    *[("spec.json", json.dumps(_SPEC | fields), problem) for fields, problem in [
        ({"fold": "0"}, "'fold' must be a whole number, not \"0\""),
        ({"arch": ["unet"]}, "'arch' must be text, not [\"unet\"]"),
        ({"encoder": 5}, "'encoder' must be text or null, not 5"),
        ({"pipeline_version": "x"}, "'pipeline_version' must be a whole number, not \"x\""),
        ({"lr": True}, "'lr' must be a number or null, not true"),
        ({"fold": 7}, "fold 7 outside 0..4"),
        ({"colour": "red"}, "unknown key(s) colour"),
    ]],
    # A summary.json field of the wrong type crashed report, status and sweep (one such run stopped a sweep).
    *[("summary.json", json.dumps(finished_summary(**{"num_cases": 2, **fields})), problem)
      for fields, problem in [
          ({"cost": "zzz"}, "'cost' must be an object, not \"zzz\""),
          ({"cost": None}, "'cost' must be an object, not null"),
          ({"per_label_dice": 5}, "'per_label_dice' must be an object of numbers, not 5"),
          # Text where a mean belongs passed as finished (the report read its scores from metrics.csv).
          ({"per_label_dice": {"1": "x"}},
           "'per_label_dice' must be an object of numbers, not {\"1\": \"x\"}"),
          ({"mean": []}, "'mean' must be an object of numbers, not []"),
          ({"mean": {"dice": "0.9"}}, "'mean' must be an object of numbers, not {\"dice\": \"0.9\"}"),
          # Another run's summary copied in passed: its costs and metric settings reported as this run's.
          ({"run_id": "zzz"}, "its run_id \"zzz\" is not its folder's name"),
          ({"num_cases": "2"}, "'num_cases' must be a whole number, not \"2\""),
          ({"num_cases": None}, "'num_cases' must be a whole number, not null"),
          ({"cost": {"params": "24M"}}, f"'cost.params' must be {_PARAMS}, not \"24M\""),
          # Numbers no run measures: params of 2**64 crashed status and the index (pyarrow), 10**400 the
          # report (pandas); inf or NaN costs were reported as they were.
          *[({"cost": {"params": params}}, f"'cost.params' must be {_PARAMS}, not {shown}") for params, shown
            in [(2**64, 2**64), (10**400, str(10**400)[:57] + "..."), (-1, -1), (2.5, 2.5)]],
          ({"cost": {"peak_memory_mb": math.inf}}, f"'cost.peak_memory_mb' must be {_FINITE}, not Infinity"),
          ({"cost": {"train_time_s": math.nan}}, f"'cost.train_time_s' must be {_FINITE}, not NaN"),
          ({"cost": {"time_per_epoch_s": -1.0}}, f"'cost.time_per_epoch_s' must be {_FINITE}, not -1.0"),
          ({"cost": {"epoch_times_s": [0.5, math.inf]}},
           "'cost.epoch_times_s' must be a list of finite numbers of at least 0, not [0.5, Infinity]"),
          ({"cost": {"epochs_done": 1.5}},
           "'cost.epochs_done' must be a whole number of at least 0, not 1.5"),
          ({"cost": {"train_time_s": True}}, f"'cost.train_time_s' must be {_FINITE}, not true"),
          ({"cost": {"device": 0}}, "'cost.device' must be text, not 0"),
          ({"metric_settings": "area"}, "'metric_settings' must be an object, not \"area\""),
          ({"plan": [40, 56, 40]}, "'plan' must be an object, not [40, 56, 40]"),
          ({"plan": {"patch_3d": 40}}, "'plan.patch_3d' must be 3 positive whole numbers, not 40"),
          ({"plan": {"patch_2d": [64, "64"]}},
           "'plan.patch_2d' must be 2 positive whole numbers, not [64, \"64\"]"),
          ({"plan": {"batch_3d": 0}}, "'plan.batch_3d' must be a positive whole number, not 0"),
          ({"per_label_dice": None}, "'per_label_dice' must be an object of numbers, not null"),
          ({"plan": {"patch_2d": None}}, "'plan.patch_2d' must be 2 positive whole numbers, not null"),
      ]],
    # A summary emptied or cut down to a few fields read as a finished run (every version wrote these).
    ("summary.json", '{"state": "done"}', "lacks 'run_id', which every finished run writes"),
    *[("summary.json", json.dumps({k: v for k, v in finished_summary(num_cases=2).items() if k != key}),
       f"lacks {key!r}, which every finished run writes") for key in ("num_cases", "per_label_dice", "plan")],
    ("summary.json", json.dumps(finished_summary(num_cases=2) | {"cost": {"device": "cpu"}}),
     "lacks 'cost.params', which every finished run writes"),
    ("summary.json", json.dumps(finished_summary(num_cases=2) | {"plan": {"patch_3d": [8, 8, 8]}}),
     "lacks 'plan.batch_3d', which every finished run writes"),
])
def test_a_damaged_finished_run_is_named_never_read_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: str, problem: str) -> None:
    for seed in range(3):
        fake_finished_run(tmp_path, seed)
    damaged = sorted((tmp_path / "T").iterdir())[1]
    (damaged / name).write_text(damage)
    with pytest.raises(ResultsError) as info:
        load_results(tmp_path)
    assert str(info.value).startswith(f"{damaged / name}: {problem}")
    state, named = checked_state(damaged)  # status and SLURM submission agree
    assert state == "damaged" and named is not None and named.startswith(f"{damaged / name}: {problem}")
    if name == "summary.json":  # read without metrics.csv too: a sweep's worker and its dry run agree
        from medseg_bench.finished import finished_damage
        from medseg_bench.results import run_state

        assert finished_damage(damaged) == named and run_state(damaged) == "damaged"
    assert checked_state(sorted((tmp_path / "T").iterdir())[0]) == ("done", None)
    assert str(info.value).endswith("move its run folder away to report without it, or delete the folder to "
                                    "run it again")
    skipped: list[str] = []
    table = load_results(tmp_path, skip_damaged=skipped.append)  # the index: the others, and a warning
    assert table["run_id"].nunique() == 2 and damaged.name not in set(table["run_id"])
    assert skipped == [str(info.value)]
    write_index(tmp_path)
    assert f"warning: {info.value}" in capsys.readouterr().err
    assert set(pd.read_parquet(tmp_path / INDEX_NAME)["run_id"]) == set(table["run_id"])


def test_empty_scores_and_null_or_absent_summary_fields_are_no_damage(tmp_path: Path) -> None:
    # An empty cell is a score both empty masks leave undefined (NaN); summary fields older versions did not
    # write (tta, postprocessing, some costs), or costs they wrote as null (not measured), are fine too.
    for seed in range(2):
        fake_finished_run(tmp_path, seed)
    first, second = sorted((tmp_path / "T").iterdir())
    (first / "metrics.csv").write_text(HEADER + "a,1,,True,True\nb,1,0.5,false,FALSE\n")
    _with_dice_means(first)
    cost = {"params": None, "peak_memory_mb": 1.5e3, "device": None, "time_per_epoch_s": None}
    summary = finished_summary(run_id=second.name, num_cases=2, cost=cost, per_label_dice=dice_means(second))
    assert "tta" not in summary and "postprocessing" not in summary and "first_step_at" not in summary["cost"]
    write_json_atomic(second / "summary.json", summary)
    assert checked_state(first) == ("done", None) and checked_state(second) == ("done", None)
    table = load_results(tmp_path)
    assert table["dice"].isna().sum() == 1 and table["run_id"].nunique() == 2
    # absent numbers are NaN in number columns (None made them object columns under pandas 3)
    numbers = ["fold", "seed", "epochs", "max_minutes", "params", "train_time_s", "time_per_epoch_s",
               "peak_memory_mb"]
    assert [c for c in numbers if table[c].dtype.kind not in "if"] == []


@pytest.mark.parametrize("folder_instead", [False, True])
@pytest.mark.parametrize("name", ["status.json", "spec.json", "metrics.csv", "summary.json"])
def test_a_finished_run_that_lost_a_file_is_named_not_dropped(tmp_path: Path, name: str,
                                                               folder_instead: bool) -> None:
    from medseg_bench.finished import finished_damage

    for seed in range(2):
        fake_finished_run(tmp_path, seed)
    damaged = sorted((tmp_path / "T").iterdir())[1]
    (damaged / name).unlink()
    if folder_instead:  # named "missing" while it was there
        (damaged / name).mkdir()
    problem = f"{damaged / name}: {'not a file' if folder_instead else 'missing'}, but the run finished"
    assert finished_damage(damaged) == problem and run_state(damaged) == "damaged"
    with pytest.raises(ResultsError, match="^" + re.escape(problem)):
        load_results(tmp_path)


@pytest.mark.parametrize("name", ["spec.json", "summary.json"])
def test_a_finished_runs_json_cut_short_is_damage(tmp_path: Path, name: str) -> None:
    from medseg_bench.finished import finished_damage

    fake_finished_run(tmp_path, 0)
    (folder,) = (tmp_path / "T").iterdir()
    (folder / name).write_text((folder / name).read_text()[:20])
    assert (finished_damage(folder) or "").startswith(f"{folder / name}: not valid JSON")
    assert run_state(folder) == "damaged"


def test_a_finished_runs_spec_edited_after_the_run_is_damaged_an_older_versions_is_not(
        tmp_path: Path) -> None:
    # spec.json edited (epochs 10 -> 5, still a valid spec): sweep skipped it as done for --epochs 10, while
    # the report pooled and labelled it as a 5-epoch run.
    from medseg_bench.spec import spec_hash_of

    for seed in range(2):
        fake_finished_run(tmp_path, seed)
    edited, renamed = sorted((tmp_path / "T").iterdir())
    spec = json.loads((edited / "spec.json").read_text())
    write_json_atomic(edited / "spec.json", spec | {"epochs": 5})
    expected = spec_hash_of({k: v for k, v in (spec | {"epochs": 5}).items() if k != "run_id"})
    state, damage = checked_state(edited)
    assert state == "damaged"
    assert damage == (f"{edited / 'spec.json'}: edited after the run: its settings hash to {expected}, its "
                      f"run id ends in {edited.name[-10:]}")
    write_json_atomic(edited / "spec.json", spec)
    assert checked_state(edited)[0] == "done"
    moved = renamed.parent / "3d-unet-dice_ce-none-f0-s1-0000000000"
    renamed.rename(moved)
    assert checked_state(moved)[1] == (f"{moved / 'spec.json'}: its run_id \"{renamed.name}\" is not its "
                                       "folder's name")
    moved.rename(renamed)
    # A run of an older version: its spec.json lacks the keys added since, and its id hashes what it holds.
    old = {k: v for k, v in spec.items() if k not in ("run_id", "postprocess", "tta", "class_weights")}
    old["pipeline_version"] = 3
    old_id = f"3d-unet-dice_ce-none-f0-s0-{spec_hash_of(old)}"
    edited.rename(edited.parent / old_id)
    write_json_atomic(edited.parent / old_id / "spec.json", {"run_id": old_id, **old})
    summary = json.loads((edited.parent / old_id / "summary.json").read_text())
    write_json_atomic(edited.parent / old_id / "summary.json", summary | {"run_id": old_id})
    assert checked_state(edited.parent / old_id)[0] == "done"
    assert load_results(tmp_path)["run_id"].nunique() == 2


def test_a_finished_run_under_another_tasks_folder_is_damaged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A Task T run copied under U/: status counted it as U's, `report --task U` printed T's table, and the
    # index held its rows twice.
    import shutil

    fake_finished_run(tmp_path, 0)
    (original,) = (tmp_path / "T").iterdir()
    copy = tmp_path / "U" / original.name
    shutil.copytree(original, copy)
    problem = f"{copy / 'spec.json'}: its task is 'T', but its run folder is under 'U'"
    assert checked_state(copy) == ("damaged", problem) and checked_state(original) == ("done", None)
    with pytest.raises(ResultsError, match="^" + re.escape(problem)):
        load_results(tmp_path, tasks=["U"])
    write_index(tmp_path)
    assert f"warning: {problem}" in capsys.readouterr().err
    assert len(pd.read_parquet(tmp_path / INDEX_NAME)) == 2  # the original's two rows, once


def _run_with(results: Path, metrics: str, per_label_dice: list[str], num_cases: int = 2) -> Path:
    fake_finished_run(results, 0)
    (folder,) = (results / "T").iterdir()
    (folder / "metrics.csv").write_text(HEADER + metrics)
    summary = json.loads((folder / "summary.json").read_text())
    write_json_atomic(folder / "summary.json", summary | {
        "num_cases": num_cases, "per_label_dice": {label: 0.5 for label in per_label_dice}})
    return folder


# Every case scored for labels 1 and 2 and a region (Task01's regions are named in the label column).
REGION_ROWS = "".join(f"{case},{label},0.5,False,False\n"
                      for case in "ab" for label in ("1", "2", "whole tumour"))


def test_a_finished_run_with_regions_is_done(tmp_path: Path) -> None:
    folder = _run_with(tmp_path, REGION_ROWS, ["1", "2", "whole tumour"])
    assert checked_state(folder) == ("done", None)
    assert sorted(set(load_results(tmp_path)["label"])) == ["1", "2", "whole tumour"]


@pytest.mark.parametrize(("name", "metrics", "per_label_dice", "problem"), [
    # per_label_dice edited to one label blamed metrics.csv: "has 6 rows, summary.json counts 2"
    ("summary.json", REGION_ROWS, ["1"],
     "per_label_dice holds label(s) 1, but metrics.csv scores 1, 2, whole tumour for each case"),
    ("summary.json", REGION_ROWS, ["1", "2", "3", "whole tumour"],
     "per_label_dice holds label(s) 1, 2, 3, whole tumour, but metrics.csv scores 1, 2, whole tumour for "
     "each case"),
    # a case renamed in one row: as many rows as the summary counts, no label twice
    ("metrics.csv", REGION_ROWS.replace("b,2,", "c,2,"), ["1", "2", "whole tumour"],
     "case 'b' (row 4) has no row for label(s) 2"),
    ("metrics.csv", REGION_ROWS.replace("b,whole tumour,", "b,whole,"), ["1", "2", "whole tumour"],
     "label 'whole' in row 6 is none of the run's labels (1, 2, whole tumour, as summary.json's "
     "per_label_dice holds them)"),
])
def test_metrics_rows_and_per_label_dice_that_disagree_name_the_edited_file(
        tmp_path: Path, name: str, metrics: str, per_label_dice: list[str], problem: str) -> None:
    folder = _run_with(tmp_path, metrics, per_label_dice)
    assert checked_state(folder) == ("damaged", f"{folder / name}: {problem}")


def test_a_well_formed_run_is_read_without_the_row_checks_and_its_json_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A report of 1000 runs spent 15 s in the checks that name a damaged metrics.csv's first problem (about
    # 50 pandas operations a run), and read each run's spec.json and summary.json twice: once to check them,
    # once to return them. A table as run.py writes it passes one pass over its rows instead; any other
    # (every damage the tests above name) still goes through the checks.
    from medseg_bench import files, finished

    folder = _run_with(tmp_path, REGION_ROWS, ["1", "2", "whole tumour"])
    fake_finished_run(tmp_path, seed=3)  # a run of the `T` task's layout: labels of one value

    def unused(*args: object) -> None:
        raise AssertionError("a well-formed metrics.csv went through the row checks")

    for name in ("_whole_table", "_bad_row", "_bad_cell"):
        monkeypatch.setattr(finished, name, unused)
    reads: list[str] = []
    real = files.load_json_object
    monkeypatch.setattr(finished, "load_json_object", lambda path: reads.append(path.name) or real(path))
    for run in sorted((tmp_path / "T").iterdir()):
        reads.clear()
        spec, summary, frame = finished.read_finished_run(run)
        assert sorted(reads) == ["spec.json", "status.json", "summary.json"]
        assert spec["run_id"] == run.name and summary["run_id"] == run.name and len(frame) > 1
    assert checked_state(folder) == ("done", None)
    monkeypatch.undo()
    (folder / "metrics.csv").write_text(HEADER + REGION_ROWS.replace("b,2,", "c,2,"))  # the checks name it
    assert checked_state(folder) == ("damaged", f"{folder / 'metrics.csv'}: case 'b' (row 4) has no row for "
                                     "label(s) 2")


# Every metric, as run.py writes them; a row of each mask state: its scores where defined, empty where not.
ALL_HEADER = "case,label,dice,jaccard,precision,recall,volume_diff,hd,hd95,assd,nsd,ref_empty,pred_empty\n"
ROW = {"both": ",,,,,,,,,True,True", "neither": "0.8,0.7,0.9,0.8,0.1,4,3,1,0.9,False,False",
       "pred": "0,0,,0,1,,,,0,False,True", "ref": "0,0,0,,,,,,0,True,False",
       "pred_penalized": "0,0,0,0,1,50,50,50,0,False,True"}  # the "penalize" policy: HD the diagonal


def _written(results: Path, rows: str) -> Path:
    folder = _run_with(results, "", ["1"])
    (folder / "metrics.csv").write_text(ALL_HEADER + rows)
    return _with_dice_means(folder)


def _with_dice_means(folder: Path) -> Path:
    """`folder` with its summary.json's per-label Dice as run.py would write them from its metrics.csv."""
    summary = json.loads((folder / "summary.json").read_text())
    write_json_atomic(folder / "summary.json", summary | {"per_label_dice": dice_means(folder)})
    return folder


@pytest.mark.parametrize("rows", [("both", "neither"), ("pred", "ref"), ("pred_penalized", "neither")])
def test_scores_empty_where_a_mask_leaves_them_undefined_are_no_damage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows: tuple[str, str]) -> None:
    from medseg_bench import finished

    folder = _written(tmp_path, f"a,1,{ROW[rows[0]]}\nb,1,{ROW[rows[1]]}\n")
    for name in ("_whole_table", "_bad_row", "_bad_cell", "_unscored"):  # as written: the fast path
        monkeypatch.setattr(finished, name, lambda *args: pytest.fail("went through the row checks"))
    assert checked_state(folder) == ("done", None)


@pytest.mark.parametrize(("row", "column", "masks"), [
    # a Dice emptied by hand was averaged around: the report's mean Dice rose
    ("neither", "dice", "neither mask is empty"),
    ("neither", "hd95", "neither mask is empty"),
    ("neither", "nsd", "neither mask is empty"),
    ("pred", "dice", "only the prediction is empty"),  # Dice 0, whichever the empty-mask policy
    ("pred", "recall", "only the prediction is empty"),
    ("ref", "precision", "only the reference is empty"),
    ("pred_penalized", "jaccard", "only the prediction is empty"),
])
def test_a_score_emptied_where_its_masks_define_it_is_damage(
        tmp_path: Path, row: str, column: str, masks: str) -> None:
    cells = ROW[row].split(",")
    index = ALL_HEADER.strip().split(",").index(column) - 2
    cells[index] = ""
    folder = _written(tmp_path, f"a,1,{ROW['both']}\nb,1,{','.join(cells)}\n")
    problem = f"{column} is empty in row 2, where {masks}, which leaves it defined"
    assert checked_state(folder) == ("damaged", f"{folder / 'metrics.csv'}: {problem}")
    with pytest.raises(ResultsError, match=re.escape(problem)):
        load_results(tmp_path)


@pytest.mark.parametrize(("cell", "said"), [("", "empty"), ("nan", "NaN"), ("-NaN", "NaN"), ("NA", "'NA'")])
def test_a_score_left_out_where_its_masks_define_it_is_named_as_the_cell_holds_it(
        tmp_path: Path, cell: str, said: str) -> None:
    # pandas reads `nan` (and `NA`) as NaN: a cell holding the text nan was said to be empty
    cells = ROW["neither"].split(",")
    cells[ALL_HEADER.strip().split(",").index("dice") - 2] = cell
    folder = _written(tmp_path, f"a,1,{ROW['both']}\nb,1,{','.join(cells)}\n")
    problem = f"dice is {said} in row 2, where neither mask is empty, which leaves it defined"
    assert checked_state(folder) == ("damaged", f"{folder / 'metrics.csv'}: {problem}")


@pytest.mark.parametrize("epochs", [10**10, 2**63 - 1])
def test_a_finished_run_of_more_epochs_than_an_int32_holds_is_no_damage(tmp_path: Path, epochs: int) -> None:
    # a budget of --max-minutes alone, with epochs far past what it reaches: trained, reported and indexed
    # (int64 columns), until epochs past 2^31 - 1 were refused and such a run became damaged (report: exit 6)
    from medseg_bench.finished import finished_damage
    from medseg_bench.run_folder import append_event, write_status

    spec = RunSpec(task="T", dims="3d", arch="unet", loss="dice_ce", aug="none", epochs=epochs,
                   iters_per_epoch=epochs, max_minutes=60.0)
    folder = tmp_path / "T" / spec.run_id
    folder.mkdir(parents=True)
    write_json_atomic(folder / "spec.json", {"run_id": spec.run_id, **spec.to_dict()})
    pd.DataFrame({"case": ["a"], "label": [1], "dice": [0.5], "ref_empty": False,
                  "pred_empty": False}).to_csv(folder / "metrics.csv", index=False)
    write_json_atomic(folder / "summary.json", finished_summary(run_id=spec.run_id, num_cases=1))
    write_status(folder, "done")
    append_event(folder, "done")
    assert finished_damage(folder) is None and run_state(folder) == "done"
    assert load_results(tmp_path)["epochs"].tolist() == [epochs]
    assert pd.read_parquet(write_index(tmp_path))["epochs"].tolist() == [epochs]


def test_cases_and_regions_named_as_pandas_reads_missing_cells_are_read_as_written(tmp_path: Path) -> None:
    # A region named `NA` (or `None`, `null`) and a case named `nan` were read as missing cells: every run
    # that scored one was damaged as soon as it finished, and training it again did the same.
    fake_finished_run(tmp_path, 0)
    folder = next((tmp_path / "T").iterdir())
    pd.DataFrame({"case": ["nan", "None", "nan", "None"], "label": ["NA", "NA", "null", "null"],
                  "dice": [0.5, 0.25, math.nan, 1.0], "ref_empty": [False, False, True, False],
                  "pred_empty": [False, False, True, False]}).to_csv(folder / "metrics.csv", index=False)
    write_json_atomic(folder / "summary.json", json.loads((folder / "summary.json").read_text())
                      | {"per_label_dice": {"NA": 0.375, "null": 1.0}})
    assert checked_state(folder) == ("done", None)
    table = load_results(tmp_path)
    assert sorted(zip(table["case"], table["label"], strict=True)) == [
        ("None", "NA"), ("None", "null"), ("nan", "NA"), ("nan", "null")]
    assert table["dice"].isna().sum() == 1  # a score left empty where both masks are is still missing
