"""`medseg-bench sweep`: sweep files, overrides, --exclude, dry runs, `status` (without training); then real
tiny sweeps on real Hippocampus cases (parallel workers, a run held by another process, the index)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.files import write_json_atomic
from medseg_bench.locks import RunLock
from medseg_bench.models import ARCHS
from medseg_bench.results import INDEX_NAME
from medseg_bench.run_folder import read_events, write_status
from medseg_bench.spec import spec_hash_of
from medseg_bench.sweep.spec_file import load_sweep_file
from tests.conftest import TINY_SWEEP, fake_squeue, fetch_subset, finished_summary

runner = CliRunner()
SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
# a dry run in a home where no task is fetched: it lists the runs, then ends as the sweep would, on the task
# not fetched (a data error)
NOT_FETCHED = 3


def _sweep(tmp_path: Path, *args: str) -> object:
    return runner.invoke(app, ["sweep", "--results-dir", str(tmp_path / "r"), *args])


def test_config_with_flag_overrides_and_exclude(home: Path, tmp_path: Path) -> None:
    quick = str(SWEEPS / "quick.yaml")
    result = _sweep(tmp_path, "--config", quick, "--dry-run")
    assert result.exit_code == NOT_FETCHED, result.output
    assert "4 runs: 4 pending" in result.output and "2d-unet.resnet18-focal-none-f0-s0-" in result.output
    assert "epochs=3 iters=10 opt=adamw batch_size=4" in result.output
    result = _sweep(tmp_path, "--config", quick, "--loss", "dice_ce", "--epochs", "1", "--exclude", "dims=2d",
                    "--dry-run")
    assert result.exit_code == NOT_FETCHED, result.output
    assert "1 run: 1 pending" in result.output and "3d-unet-dice_ce-none-f0-s0-" in result.output
    assert "epochs=1 " in result.output and "1 combination(s) removed by --exclude" in result.output
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


def _run_ids(output: str) -> list[str]:
    return sorted(word for line in output.splitlines() for word in line.split()
                  if word.startswith("Task04_Hippocampus/"))


def test_a_sweep_file_or_flags_in_any_order_give_the_same_run_ids(home: Path, tmp_path: Path) -> None:
    # Every setting a flag gives has its sweep-file key: a sweep with --tta or --class-weights could not be
    # written down as a file (tta: an unknown key), so its run ids could not be reproduced from one.
    flags = ["--task", "Task04_Hippocampus", "--arch", "unet", "--dims", "3d,2d", "--loss", "dice_ce,focal",
             "--aug", "light", "--epochs", "1", "--iters-per-epoch", "5", "--seed", "0,1", "--tta",
             "--postprocess", "--class-weights", "0.5,1,2", "--lr", "1e-3"]
    given = _sweep(tmp_path, *flags, "--dry-run")
    assert given.exit_code == NOT_FETCHED, given.output
    ids = _run_ids(given.output)
    assert len(ids) == 8 and all("-light-" in i for i in ids)
    pairs = [flags[i:i + 2] if flags[i + 1:i + 2] and not flags[i + 1].startswith("--") else [flags[i]]
             for i in range(len(flags)) if flags[i].startswith("--")]
    reordered = _sweep(tmp_path, *[word for pair in reversed(pairs) for word in pair], "--dry-run")
    assert _run_ids(reordered.output) == ids
    config = tmp_path / "sweep.yaml"
    config.write_text("seed: [1, 0]\nlr: 1e-3\nclass_weights: [1, 2, 4]\npostprocess: true\ntta: true\n"
                      "iters_per_epoch: 5\nepochs: 1\naug: light\nloss: [focal, dice_ce]\ndims: [2d, 3d]\n"
                      "arch: unet\ntask: Task04_Hippocampus\npretrained: false\n")
    from_file = _sweep(tmp_path, "--config", str(config), "--dry-run")
    assert from_file.exit_code == NOT_FETCHED, from_file.output
    assert _run_ids(from_file.output) == ids
    untested = _sweep(tmp_path, "--config", str(config), "--no-tta", "--dry-run")  # a flag overrides
    assert untested.exit_code == NOT_FETCHED and not set(_run_ids(untested.output)) & set(ids)
    without = _sweep(tmp_path, *[flag for flag in flags if flag != "--tta"], "--dry-run")
    assert _run_ids(untested.output) == _run_ids(without.output)
    config.write_text("task: Task04_Hippocampus\ntta: yes please\n")
    bad = _sweep(tmp_path, "--config", str(config))
    assert bad.exit_code == 2 and f"{config}: 'tta' takes true or false, not 'yes please'" in bad.output


def test_a_repeated_axis_flag_adds_its_values_as_a_comma_does(home: Path, tmp_path: Path) -> None:
    # `--arch unet --arch deeplab` kept the last value alone (click's default for a one-value option), and
    # said nothing: a sweep of half the runs asked for.
    commas = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--arch", "unet,deeplab", "--loss",
                    "dice_ce,ce", "--dims", "2d", "--seed", "0,1", "--folds", "0,1", "--dry-run")
    assert commas.exit_code == NOT_FETCHED, commas.output
    ids = _run_ids(commas.output)
    assert len(ids) == 16
    repeated = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--arch", "unet", "--arch", "deeplab",
                      "--loss", "dice_ce", "--loss", "ce", "--dims", "2d", "--seed", "0", "--seed", "1",
                      "--folds", "0", "--fold", "1", "--dry-run")  # --fold: the sweep file's key
    assert repeated.exit_code == NOT_FETCHED, repeated.output
    assert _run_ids(repeated.output) == ids
    bad = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--seed", "0", "--seed", "x", "--dry-run")
    assert bad.exit_code == 2 and "--seed takes comma-separated integers, not '0,x'" in bad.output


def test_config_with_unknown_keys_exit_2_listing_them(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text("task: Task04_Hippocampus\narchs: [unet]\nlearning_rate: 0.1\n")
    result = _sweep(tmp_path, "--config", str(config))
    assert result.exit_code == 2
    assert f"{config}: unknown keys archs, learning_rate" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "Task04_Hippocampus", "--launcher", "pbs"], "unknown launcher 'pbs'"),
    (["--task", "Task04_Hippocampus", "--jobs", "0"], "--jobs must be from 1 to 1024"),
    (["--task", "Task04_Hippocampus", "--launcher", "slurm", "--time", "soon"], "--time takes"),
    (["--task", "Task04_Hippocampus", "--launcher", "slurm", "--mem-gb", "0"],
     "--mem-gb must be at least 0.001"),
    (["--task", "Task04_Hippocampus", "--launcher", "slurm", "--cpus-per-job", "0"],
     "--cpus-per-job must be at least 1, not 0"),
    (["--task", "Task04_Hippocampus", "--exclude", "colour=red"], "unknown key 'colour'"),
    (["--arch", "unet"], "no task given"),
    (["--task", "Task04_Hippocampus", "--batch-size", "0"], "batch_size must be at least 1, not 0"),
    (["--task", "Task04_Hippocampus", "--lr", "-1"], "lr must be a positive number"),
    # the runs failed (exit 5): an overflow at the first step, MemoryError
    (["--task", "Task04_Hippocampus", "--lr", "1e300"], "lr must be at most 3.4e+38"),
    (["--task", "Task04_Hippocampus", "--batch-size", "3000000000"], "batch_size must be at most 2147483647"),
    (["--task", "Task04_Hippocampus", "--workers", "-1"], "--workers must be from 0 to 1024, not -1"),
    (["--config", "/nonexistent/sweep.yaml"],
     "/nonexistent/sweep.yaml: no such sweep file (the package's own, by name: quick, survey; e.g. "
     "--config quick)"),
])
def test_bad_options_exit_2(home: Path, tmp_path: Path, args: list[str], message: str) -> None:
    result = _sweep(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--time", "soon"], "--time takes"),
    (["--mem-gb", "0"], "--mem-gb must be at least 0.001"),
    (["--array-parallelism", "0"], "--array-parallelism must be at least 1, not 0"),
    (["--partition", "a\nb"], "a line break or control character cannot go into the SLURM job script"),
])
def test_a_slurm_dry_run_refuses_what_the_submission_would(home: Path, tmp_path: Path, args: list[str],
                                                           message: str) -> None:
    # the dry run listed the runs and exited 0, where the submission refuses the option before any work
    pytest.importorskip("submitit")
    result = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--launcher", "slurm", *args, "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.output and "pending" not in result.output
    fine = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--launcher", "slurm", "--dry-run")
    assert fine.exit_code == NOT_FETCHED and "pending" in fine.output, fine.output


@pytest.mark.parametrize("unsafe", ["mode 777", ".slurm a link"])
def test_a_slurm_dry_run_refuses_a_results_dir_the_submission_refuses(home: Path, tmp_path: Path,
                                                                      unsafe: str) -> None:
    # the dry run listed the runs and exited 0, where the submission refused the results dir with exit 6
    pytest.importorskip("submitit")
    results = tmp_path / "r"
    results.mkdir()
    if unsafe == "mode 777":
        results.chmod(0o777)
        said = f"{results}: results dir is writable by every user (mode 777, no sticky bit)"
    else:
        (results / ".slurm").symlink_to(tmp_path)
        said = f"{results / '.slurm'}: not a folder of yours (a link to {tmp_path})"
    result = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--launcher", "slurm", "--dry-run")
    assert result.exit_code == 6, result.output
    assert said in result.output and "pending" not in result.output
    if unsafe == "mode 777":
        assert not (results / ".slurm").exists()  # checked, not made


def test_a_sweep_file_past_the_limits_exits_2_before_any_work(home: Path, tmp_path: Path) -> None:
    config = tmp_path / "s.yaml"
    config.write_text("task: Task04_Hippocampus\narch: unet\ndims: 3d\nlr: 1e300\n")
    result = _sweep(tmp_path, "--config", str(config))
    assert result.exit_code == 2, result.output
    assert "lr must be at most 3.4e+38" in result.output and "preparing" not in result.output


def test_survey_sweep_dry_run(home: Path, tmp_path: Path) -> None:
    missing = [a for a in load_sweep_file(SWEEPS / "survey.yaml")["archs"] if a not in ARCHS]
    if missing:
        pytest.skip(f"architectures not registered yet: {', '.join(missing)}")
    result = _sweep(tmp_path, "--config", str(SWEEPS / "survey.yaml"), "--dry-run")
    assert result.exit_code == NOT_FETCHED, result.output
    assert "360 runs: 360 pending" in result.output


def test_status_shows_every_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "r"
    fake_squeue(tmp_path, monkeypatch, ["42_3|PENDING|Priority"])  # whatever SLURM this machine has
    assert runner.invoke(app, ["status", "--results-dir", str(results)]).exit_code == 6
    spec = {"task": "T", "dims": "3d", "arch": "unet", "loss": "dice_ce", "aug": "none"}
    done = f"3d-unet-dice_ce-none-f0-s0-{spec_hash_of(spec)}"  # a run's spec.json matches its id
    b, c, d = (f"{name}-{spec_hash_of(spec)}" for name in "bcd")
    for name, state in [(done, "done"), (b, "failed"), (c, "running"), (d, None)]:
        folder = results / "T" / name
        folder.mkdir(parents=True)
        write_json_atomic(folder / "spec.json", {"run_id": name, **spec})
        if state == "done":
            (folder / "metrics.csv").write_text("case,label,dice,ref_empty,pred_empty\nx,1,0.5,False,False\n")
            write_json_atomic(folder / "summary.json", finished_summary(run_id=name))
        if state:
            error = {"error": "RuntimeError: out of memory"} if state == "failed" else {}
            write_status(folder, state, **error)
        else:
            write_json_atomic(folder / "queued.json", {"job_id": "42_3", "time": time.time()})
    result = runner.invoke(app, ["status", "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert f"done     T/{done}" in lines
    assert f"failed   T/{b}  RuntimeError: out of memory" in lines
    assert f"pending  T/{c}" in lines  # said running, but its process is gone and it has no checkpoint
    assert f"queued   T/{d}  job 42_3 (PENDING: Priority)" in lines
    assert lines[-1] == "4 runs: 1 done, 1 failed, 1 pending, 1 queued"  # no warning: nothing is damaged
    assert pd.read_parquet(results / "index.parquet")["run_id"].tolist() == [done]


def test_status_shows_a_running_runs_heartbeat_even_a_hand_edited_one(tmp_path: Path) -> None:
    spec = {"task": "T", "dims": "3d", "arch": "unet", "loss": "dice_ce", "aug": "none"}
    folder = tmp_path / "r" / "T" / f"e-{spec_hash_of(spec)}"  # a run's spec.json matches its id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    write_json_atomic(folder / "spec.json", {"run_id": folder.name, **spec})
    write_status(folder, "running")
    for loss, shown in ((0.25, "0.2500"), ("abc", "?"), (None, "?")):
        write_json_atomic(folder / "heartbeat.json", {"time": time.time(), "pid": 1, "host": "elsewhere",
                                                      "epoch": 2, "epochs": 5, "loss": loss})
        result = runner.invoke(app, ["status", "--results-dir", str(tmp_path / "r")])
        assert result.exit_code == 0, result.output  # was a ValueError traceback for "abc"
        assert f"running  T/{folder.name}  epoch 2/5 loss {shown}" in result.output.splitlines()
    # trained, evaluating its held-out cases (the heartbeat's stage from the end of training on)
    beat = {"time": time.time(), "pid": 1, "host": "elsewhere", "epoch": 5, "epochs": 5, "loss": 0.5}
    write_json_atomic(folder / "heartbeat.json", {**beat, "stage": "evaluating"})
    result = runner.invoke(app, ["status", "--results-dir", str(tmp_path / "r")])
    assert f"running  T/{folder.name}  epoch 5/5 loss 0.5000  evaluating" in result.output.splitlines()


def _unconfigured_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """srun and sbatch on PATH that fail as on a machine without a SLURM configuration; sbatch leaves a
    file `sbatch-called` beside them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text(
        f"#!/bin/sh\ntouch '{bin_dir}/sbatch-called'\n"
        "echo 'sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host' >&2\n"
        "echo 'sbatch: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir / "sbatch-called"


def test_an_unconfigured_sbatch_is_one_line_and_leaves_nothing(shared_task: Path, home: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # sbatch present but not configured: its fatal line is the one quoted, and the job files are removed.
    from tests.conftest import TINY_SWEEP, fetch_subset

    fetch_subset(shared_task, tmp_path)
    _unconfigured_sbatch(tmp_path, monkeypatch)
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), "--launcher", "slurm",
                                 "--partition", "debug"])
    assert result.exit_code == 5, result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: sbatch failed: sbatch: fatal: Could not establish a configuration source")
    assert "res_nsearch" not in result.output  # sbatch's stderr, printed by submitit before it raised
    assert [p for p in (results / ".slurm").rglob("*") if p.is_file()] == []


def test_slurm_submits_nothing_when_a_run_cannot_train_on_the_plan(shared_task: Path, home: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import fetch_subset

    fetch_subset(shared_task, tmp_path)
    called = _unconfigured_sbatch(tmp_path, monkeypatch)
    result = runner.invoke(app, ["sweep", "--task", "Task04_Hippocampus", "--arch", "dynunet", "--dims", "3d",
                                 "--loss", "dice_ce", "--aug", "none", "--patch-size", "12,12,12",
                                 "--results-dir", str(tmp_path / "results"), "--launcher", "slurm"])
    assert result.exit_code == 2, result.output
    assert "cannot train: dynunet pools patch 12x12x12 fewer than twice" in result.output.splitlines()[-1]
    assert not called.exists() and not (tmp_path / "results" / ".slurm").exists()
    cached = home / "data" / "preprocessed" / "Task04_Hippocampus"
    assert not list(cached.glob("*/complete.json"))  # planned and checked before the cache is built


def test_slurm_names_a_file_in_a_run_folders_place_before_preparing_the_task(home: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    # Submission found it only after planning and caching the task (minutes on a large one).
    from medseg_bench.results import run_dir
    from medseg_bench.sweep import local
    from medseg_bench.sweep.expand import expand
    from medseg_bench.sweep.spec_file import build_request
    from tests.conftest import TINY_SWEEP

    _unconfigured_sbatch(tmp_path, monkeypatch)
    prepared: list[str] = []
    for step in ("plan_locked", "prepare_locked"):  # planned (checked against its plan), then its cache
        monkeypatch.setattr(local, step, lambda task, *args, **kwargs: prepared.append(task))
    results = tmp_path / "results"
    args = dict(zip(TINY_SWEEP[::2], TINY_SWEEP[1::2], strict=True))
    (spec,), _ = expand(build_request({}, {"tasks": [args["--task"]], "archs": [args["--arch"]],
                                           "losses": [args["--loss"]], "augs": [args["--aug"]],
                                           "dims": [args["--dims"]], "epochs": int(args["--epochs"]),
                                           "iters_per_epoch": int(args["--iters-per-epoch"]),
                                           "batch_size": int(args["--batch-size"])}))
    folder = run_dir(results, spec)
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), "--launcher", "slurm"])
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {folder}: not a run folder (a file is where run {spec.run_id} keeps its results); "
        "move it away")
    assert prepared == [] and "preparing" not in result.output


def test_slurm_refuses_a_results_dir_every_user_can_write_before_preparing_the_task(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A SLURM job unpickles what submitit keeps in RESULTS/.slurm/: anyone who can write there runs code as
    # you
    from medseg_bench.sweep import job_files, local
    from tests.conftest import TINY_SWEEP

    called = _unconfigured_sbatch(tmp_path, monkeypatch)
    prepared: list[str] = []
    for step in ("plan_locked", "prepare_locked"):  # planned (checked against its plan), then its cache
        monkeypatch.setattr(local, step, lambda task, *args, **kwargs: prepared.append(task))
    results = tmp_path / "results"
    results.mkdir()
    results.chmod(0o777)
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), "--launcher", "slurm"])
    assert result.exit_code == 6, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        f"error: {results}: results dir is writable by every user (mode 777, no sticky bit): ")
    assert prepared == [] and not called.exists() and not (results / ".slurm").exists()
    results.chmod(0o775)  # a group's: said once, on stderr, and the submission goes on (to the task stand-in)
    monkeypatch.setattr(job_files, "_private_group", lambda gid: False)
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), "--launcher", "slurm"])
    assert result.stderr.startswith(f"warning: {results}: results dir is writable by group ")
    assert result.stderr.count("results dir is writable by group") == 1 and prepared


def test_a_submission_suggests_a_status_command_that_can_be_copied(shared_task: Path, home: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The results folder in the suggested command is quoted for the shell (here it has a space)."""
    import shlex

    from medseg_bench.sweep import slurm
    from tests.conftest import TINY_SWEEP, fetch_subset

    fetch_subset(shared_task, tmp_path)
    _unconfigured_sbatch(tmp_path, monkeypatch)  # on PATH; never called: submit is replaced
    monkeypatch.setattr(slurm, "submit", lambda runs, *args, **kwargs: slurm.Submission(
        [(spec, "9_0") for spec in runs]))
    results = tmp_path / "my results"
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), "--launcher", "slurm"])
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert last == f"1 job submitted; follow them with `medseg-bench status --results-dir '{results}'`"
    assert shlex.split(last.split("`")[1])[-1] == str(results)


def test_slurm_without_submitit_says_how_to_install_it(home: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from tests.conftest import TINY_SWEEP

    monkeypatch.delitem(sys.modules, "medseg_bench.sweep.slurm", raising=False)
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` fails as when it is not installed
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(tmp_path / "r"), "--launcher",
                                 "slurm"])
    assert result.exit_code == 2, result.output
    assert result.output == ("error: --launcher slurm needs submitit: pip install submitit (in a checkout: "
                             "pip install -e '.[slurm]')\n")
    # Any other import failure is a broken install of ours, not a missing extra: not blamed on submitit.
    monkeypatch.setitem(sys.modules, "submitit", None)
    monkeypatch.setitem(sys.modules, "medseg_bench.sweep.slurm", None)
    broken = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(tmp_path / "r"), "--launcher",
                                 "slurm"])
    assert "needs submitit" not in broken.output and isinstance(broken.exception, ModuleNotFoundError)


def test_slurm_fails_an_interrupted_run_that_cannot_resume_as_the_local_sweep_does(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 5 naming the failed run, as the local sweep ends; its line says why; no cache is built for a task
    with no run left, and sbatch is not called."""
    from medseg_bench.results import run_dir
    from tests.sweep.test_local import REFUSED, _interrupted_on_an_edited_plan

    data, started, _, root = _interrupted_on_an_edited_plan(home, tmp_path)
    called = _unconfigured_sbatch(tmp_path, monkeypatch)
    caches = sorted(p.name for p in root.iterdir() if p.is_dir())
    results = tmp_path / "results"
    result = runner.invoke(app, ["sweep", "--task", "Task90_Synth", "--dims", "3d", "--arch", "unet",
                                 "--loss", "dice_ce", "--aug", "none", "--num-folds", "3", "--epochs", "1",
                                 "--data-dir", str(data), "--results-dir", str(results), "--launcher",
                                 "slurm"])
    assert result.exit_code == 5, result.output
    lines = result.output.strip().splitlines()
    assert lines[-3:] == [f"failed   Task90_Synth/{started.run_id}: {run_dir(results, started) / REFUSED}; "
                          "not submitted", "nothing to submit", f"error: 1 of 1 run failed: {started.run_id}"]
    assert "preparing" not in result.output and not called.exists()
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == caches


@pytest.mark.parametrize(("dims", "own_slices"), [("2d,3d", True), ("3d", False)])
def test_slurm_submitter_prepares_the_cache_its_2d_runs_read(
        dims: str, own_slices: bool, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The submitter builds the cache before its jobs start: the one that keeps each case's slices as well
    when some run is 2D (version 11), once per task and fold count."""
    import shutil

    from medseg_bench.sweep import local, slurm

    asked: list[tuple[str, bool]] = []
    submitted: list[str] = []

    def prepare_locked(task: str, data_dir: Path, num_folds: int, progress: bool = False,
                       own_slices: bool = False, say: object = None) -> None:
        asked.append((task, own_slices))

    def submit(runs: list, results_dir: Path, data_dir: Path, options: object, say: object,
               prepare: Callable[[list], object], fail_fast: bool) -> slurm.Submission:
        prepare(runs)  # the real one asks it of the runs left to submit
        submitted.extend(spec.run_id for spec in runs)
        return slurm.Submission()

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/sbatch" if name == "sbatch" else which(name))
    monkeypatch.setattr(local, "prepare_locked", prepare_locked)
    monkeypatch.setattr(slurm, "submit", submit)
    result = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--dims", dims, "--arch", "unet", "--loss",
                    "dice_ce", "--aug", "none", "--launcher", "slurm")
    assert result.exit_code == 0, result.output
    assert asked == [("Task04_Hippocampus", own_slices)]
    assert len(submitted) == len(dims.split(","))


# --- real tiny sweeps on real Hippocampus cases: parallel workers, a run held elsewhere, the index ---------


def test_parallel_sweep_skips_a_run_held_elsewhere_then_finishes_it(shared_task: Path, home: Path,
                                                                    tmp_path: Path) -> None:
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--seed", "0,1,2", "--results-dir", str(results)]
    dry = runner.invoke(app, [*command, "--dry-run"])
    held_id = dry.output.splitlines()[1].split("/")[1].split()[0]  # seed 1
    held = results / "Task04_Hippocampus" / held_id
    lock = RunLock(held)
    assert lock.acquire()  # another sweep is on it
    try:
        result = runner.invoke(app, [*command, "--jobs", "2"])
    finally:
        lock.release()
    assert result.exit_code == 0, result.output
    assert f"{held_id}: skipped (running in another process)" in result.output
    assert result.output.count(": done, mean Dice") == 2
    assert " epoch 2/2  loss " in result.output  # the workers' epochs reach the display through heartbeats
    assert not (held / "status.json").exists()

    again = runner.invoke(app, command)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped (already done)") == 2 and again.output.count(": done, mean Dice") == 1
    for folder in (results / "Task04_Hippocampus").iterdir():
        assert [e["event"] for e in read_events(folder)] == ["start", "done"], folder.name
        assert json.loads((folder / "status.json").read_text())["state"] == "done"
        assert not list(folder.rglob(".*.tmp"))
    index = pd.read_parquet(results / INDEX_NAME)
    assert index["run_id"].nunique() == 3 and set(index["seed"]) == {0, 1, 2}
    dry = runner.invoke(app, [*command, "--seed", "0,1,2,3", "--dry-run"])
    assert "4 runs: 3 done, 1 pending" in dry.output
    assert "(1 estimated from the same dims and arch, 0 from all finished runs)" in dry.output


@pytest.mark.parametrize(("name", "keep", "problem"), [
    ("status.json", 14, "not valid JSON"),  # edited, or cut short by a full disk: was read as pending
    ("metrics.csv", -30, ""),  # its last row cut short: was skipped as done, silently
])
def test_a_finished_run_with_a_damaged_file_is_named_never_trained_again(
        shared_task: Path, home: Path, tmp_path: Path, name: str, keep: int, problem: str) -> None:
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    command = ["sweep", *TINY_SWEEP, "--results-dir", str(results)]
    assert runner.invoke(app, command).exit_code == 0
    (folder,) = (results / "Task04_Hippocampus").iterdir()
    summary = (folder / "summary.json").read_bytes()
    damaged = folder / name
    damaged.write_text(damaged.read_text()[:keep])
    again = runner.invoke(app, command)
    assert again.exit_code == 6, again.output
    assert again.output.strip().splitlines()[-1] == (
        "error: 1 finished run is damaged (named above), left as it is, not trained again: restore the file, "
        "move the run folder away, or delete it to run it again")
    assert again.output.count(f"{damaged}: {problem}") == 1, again.output  # by its line, once
    assert ": done, mean Dice" not in again.output
    assert (folder / "summary.json").read_bytes() == summary
    assert [e["event"] for e in read_events(folder)] == ["start", "done"]
    report = runner.invoke(app, ["report", "--results-dir", str(results)])
    assert report.exit_code == 6 and f"error: {damaged}: {problem}" in report.output
    if name == "status.json":
        status = runner.invoke(app, ["status", "--results-dir", str(results)])
        assert f"damaged  Task04_Hippocampus/{folder.name}" in status.output


def test_runs_that_cannot_train_on_the_plan_stop_the_sweep_before_any_trains(shared_task: Path, home: Path,
                                                                             tmp_path: Path) -> None:
    """What `expand` cannot know before the plan exists (DynUNet's poolings depend on its spacing; a
    plan.json edited to batch 1) is checked for every run once the plan is made, before the first trains."""
    fetch_subset(shared_task, tmp_path)
    results = tmp_path / "results"
    common = ["sweep", "--task", "Task04_Hippocampus", "--loss", "dice_ce", "--aug", "none", "--epochs", "1",
              "--iters-per-epoch", "1", "--results-dir", str(results)]
    result = runner.invoke(app, [*common, "--arch", "dynunet", "--dims", "3d", "--patch-size", "12,12,12",
                                 "--seed", "0,1"])
    assert result.exit_code == 2, result.output
    assert "\n\n" not in result.output  # the cache's progress bars, off a terminal, left an empty line each
    assert "error: run 3d-dynunet-dice_ce-none-f0-s0-" in result.output
    assert ("cannot train: dynunet pools patch 12x12x12 fewer than twice at spacing 1x1x1 mm" in result.output
            and "(1 more run cannot train either); nothing was trained" in result.output)
    assert not (results / "Task04_Hippocampus").exists()
    cached = home / "data" / "preprocessed" / "Task04_Hippocampus"
    assert not list(cached.glob("*/complete.json"))  # planned and checked before the cache is built
    # its dry run, once the plan exists, says so (it listed both runs as pending, the sweep would train them)
    dry = runner.invoke(app, [*common, "--arch", "dynunet", "--dims", "3d", "--patch-size", "12,12,12",
                              "--seed", "0,1", "--dry-run"])
    assert dry.exit_code == 2, dry.output  # the sweep's own exit code: it would stop
    assert ("Task04_Hippocampus: the sweep would stop: run 3d-dynunet-dice_ce-none-f0-s0-" in dry.output
            and "cannot train: dynunet pools patch 12x12x12" in dry.output)
    assert not (results / "index.parquet").exists()  # no run finished: no empty index either
    plan_path = home / "data" / "preprocessed" / "Task04_Hippocampus" / "plan.json"
    plan = json.loads(plan_path.read_text())  # the plan was made: what it says decided
    plan["batch_2d"] = 1
    plan_path.write_text(json.dumps(plan))
    result = runner.invoke(app, [*common, "--arch", "unet,deeplab", "--encoder", "resnet18"])
    assert result.exit_code == 2, result.output
    assert "cannot train: arch 'deeplab' (2d) batch-normalises globally pooled features" in result.output
    assert not (results / "Task04_Hippocampus").exists()  # the 2D U-Net (first in order) did not train
    plan_path.write_text(json.dumps({**plan, "patch_3d": [0, 8, 8]}))
    dry = runner.invoke(app, [*common, "--arch", "unet", "--dims", "3d", "--dry-run"])
    assert dry.exit_code == 3, dry.output  # a plan.json it cannot read: a data error, as the sweep's
    assert f"Task04_Hippocampus: the sweep would stop: {plan_path}: " in dry.output


def test_slurm_options_given_to_the_local_launcher_are_said_to_be_unused(home: Path, tmp_path: Path) -> None:
    from tests.conftest import TINY_SWEEP

    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(tmp_path / "r"), "--dry-run",
                                 "--time", "99", "--mem-gb", "4"])
    assert result.exit_code == NOT_FETCHED, result.output
    assert result.output.splitlines()[0] == ("--mem-gb, --time: for SLURM only, unused by the local launcher "
                                             "(--launcher slurm submits to SLURM)")
    plain = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(tmp_path / "r"), "--dry-run"])
    assert "SLURM" not in plain.output



def test_target_flag_and_sweep_file_key_give_the_same_region_runs(home: Path, tmp_path: Path) -> None:
    flags = ["--task", "Task01_BrainTumour,Task04_Hippocampus", "--dims", "3d", "--target", "labels,regions"]
    given = _sweep(tmp_path, *flags, "--dry-run")
    assert given.exit_code == NOT_FETCHED, given.output
    assert ("Task04_Hippocampus with --target regions: skipped, it has no regions (its task file declares "
            "none)") in given.output
    ids = sorted(line.split()[1] for line in given.output.splitlines() if line.startswith("pending "))
    assert [i.split("/")[0] for i in ids] == ["Task01_BrainTumour"] * 2 + ["Task04_Hippocampus"]
    assert "-none-regions-f0-s0-" in ids[1] and "regions" not in ids[0] + ids[2]
    config = tmp_path / "sweep.yaml"
    config.write_text("task: [Task01_BrainTumour, Task04_Hippocampus]\ndims: 3d\ntarget: [labels, regions]\n")
    from_file = _sweep(tmp_path, "--config", str(config), "--dry-run")
    assert sorted(line.split()[1] for line in from_file.output.splitlines() if line.startswith("pending ")) \
        == ids
    refused = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--target", "regions", "--dry-run")
    assert refused.exit_code == 2
    assert refused.stderr == ("error: the sweep expands to no runs (Task04_Hippocampus with --target "
                              "regions: skipped, it has no regions (its task file declares none))\n")


def test_the_dry_run_exits_5_where_the_sweep_would_fail_an_interrupted_run(home: Path,
                                                                          tmp_path: Path) -> None:
    # The sweep fails an interrupted run its plan changed under and exits 5; its dry run listed the run as one
    # the sweep would fail, and exited 0. --fail-fast reaches the dry run: it stops there, as the sweep.
    from tests.sweep.test_local import _interrupted_on_an_edited_plan

    data, started, fresh, _ = _interrupted_on_an_edited_plan(home, tmp_path)
    args = ["sweep", "--results-dir", str(tmp_path / "results"), "--data-dir", str(data), "--task",
            "Task90_Synth", "--dims", "3d", "--arch", "unet", "--num-folds", "3", "--epochs", "1", "--seed",
            "0,1", "--dry-run"]
    result = runner.invoke(app, args)
    assert result.exit_code == 5, result.output
    assert f"pending  Task90_Synth/{fresh.run_id}" in result.output  # the sweep's runs, one of them refused
    assert f"Task90_Synth/{started.run_id}: the sweep would fail it: " in result.output
    assert "--fail-fast" not in result.output
    fast = runner.invoke(app, [*args, "--fail-fast"])
    assert fast.exit_code == 5, fast.output
    assert "--fail-fast: the sweep would stop at that run, no other run trains" in fast.output


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_slurm_sweep_names_an_unknown_partition_before_any_work(home: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 dry_run: bool) -> None:
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("scontrol", "echo 'Partition nope not found'; exit 1"), ("sbatch", "exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = _sweep(tmp_path, "--task", "Task04_Hippocampus", "--launcher", "slurm", "--partition", "nope",
                    *(["--dry-run"] if dry_run else []))
    assert result.exit_code == 2, result.output
    assert result.output == ("error: --partition nope: SLURM has no such partition (scontrol: Partition nope "
                             "not found)\n")


def test_a_dry_run_that_ends_as_the_sweep_would_fail_says_so_on_stderr(home: Path, tmp_path: Path) -> None:
    # it exited 3 (the task not fetched) with its explanation on stdout alone: `2>err` showed nothing
    result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(tmp_path / "r"), "--dry-run"])
    assert result.exit_code == NOT_FETCHED, result.output
    assert "the sweep would stop" in result.stdout and "error:" not in result.stdout
    assert result.stderr == ("error: the sweep would stop before training (exit 3): see the line that says "
                             "so above\n")


def test_a_dry_run_names_a_results_dir_the_sweep_could_not_write_to(home: Path, tmp_path: Path) -> None:
    # /proc/self takes no folder, for root too; the dry run exited 0 where the sweep exits 6
    results = Path("/proc/self/medseg-bench-results/r")
    for dry_run in ([], ["--dry-run"]):
        result = runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(results), *dry_run])
        assert result.exit_code == 6, result.output
        assert result.output.startswith(f"error: {results}: results dir is not writable ("), result.output
    made = tmp_path / "new" / "results"
    assert runner.invoke(app, ["sweep", *TINY_SWEEP, "--results-dir", str(made), "--dry-run"]).exit_code == 3
    assert not (tmp_path / "new").exists()  # the test left no trace: a dry run writes nothing
