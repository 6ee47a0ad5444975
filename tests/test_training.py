"""Training: the same spec gives the same metrics on CPU; deep supervision trains; a killed run resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.preprocess import prepare_task
from medseg_bench.errors import UsageError
from medseg_bench.spec import RunSpec
from medseg_bench.training import resolve_patch_and_batch, run_tta, train
from tests.conftest import copy_subset, make_synthetic_task, write_task_file

TASK = "Task94_Train"


@pytest.fixture
def prepared(home: Path, tmp_path: Path):
    write_task_file(home, TASK)
    src = make_synthetic_task(tmp_path / "src" / TASK, num_cases=4)
    fetch_task(get_task(TASK), home / "data", str(src), progress=False)
    return prepare_task(get_task(TASK), home / "data", num_folds=2, workers=1, own_slices=True)


def _spec(**kw: object) -> RunSpec:
    values: dict = {"task": TASK, "dims": "3d", "arch": "unet", "loss": "dice_ce", "aug": "light",
                    "num_folds": 2,
                    "epochs": 2, "iters_per_epoch": 2, "batch_size": 2, "patch_size": (16, 16, 16)}
    values.update(kw)
    return RunSpec(**values)


@pytest.mark.parametrize("dims", [pytest.param("2d", marks=pytest.mark.slow), "3d"])
def test_same_spec_gives_identical_metrics_and_weights(prepared, tmp_path: Path, dims: str) -> None:
    spec = _spec(dims=dims, patch_size=(32, 32), encoder="resnet18") if dims == "2d" else _spec()
    first = train(spec, prepared, tmp_path / "a")
    second = train(spec, prepared, tmp_path / "b")
    log_a = pd.read_csv(tmp_path / "a" / "logs" / "metrics.csv")
    log_b = pd.read_csv(tmp_path / "b" / "logs" / "metrics.csv")
    assert log_a["train_loss"].notna().sum() == 2 and log_a["val_dice"].notna().sum() == 2
    pd.testing.assert_frame_equal(log_a, log_b)  # bit-identical losses and validation Dice, every epoch
    for (name, a), b in zip(first.net.state_dict().items(), second.net.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    other_seed = train(_spec(dims=dims, seed=1, **({"patch_size": (32, 32), "encoder": "resnet18"}
                                                   if dims == "2d" else {})), prepared, tmp_path / "c")
    assert not all(torch.equal(a, b) for a, b in zip(first.net.state_dict().values(),
                                                     other_seed.net.state_dict().values(), strict=True))


def test_a_run_finished_training_but_not_evaluation_keeps_its_log_and_cost(prepared, tmp_path: Path) -> None:
    # A kill after the last epoch's checkpoint (during evaluation): the rerun trains nothing, and must keep
    # the learning curve and the training time of the attempt that did the work.
    first = train(_spec(), prepared, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["medseg_bench_run_id"] == _spec().run_id  # each checkpoint names its run
    states = saved["callbacks"]
    (carried,) = [state["train_time_s"] for state in states.values() if "train_time_s" in state]
    again = train(_spec(), prepared, tmp_path / "run")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv"), log)
    assert len(again.epoch_times_s) == 2
    assert again.epoch_times_s[0] == pytest.approx(first.epoch_times_s[0], 0.01)
    # the first attempt's training time, as its checkpoint carries it (taken after both epochs, before the
    # final save: 90% of the first attempt's total, asserted here before, failed once on a busy disk)
    assert sum(first.epoch_times_s) < carried <= first.train_time_s
    # an attempt that took no step adds no training time (it added its restore), and keeps the memory peak of
    # the attempt that trained (it reported its restore's alone, and ranked best)
    assert again.train_time_s == carried
    (peak,) = [state["peak_memory_mb"] for state in states.values() if "peak_memory_mb" in state]
    assert 0 < peak <= first.peak_memory_mb and again.peak_memory_mb >= peak
    assert first.resumed_at_epoch is None and again.resumed_at_epoch == 3  # resumed after its 2 epochs


class _CheckpointAtEachLine:
    """A reporter that notes, as each epoch's line is said, which epoch `last.ckpt` holds then."""

    def __init__(self, last: Path) -> None:
        self.last, self.seen = last, []  # type: ignore[var-annotated]

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        held = torch.load(self.last, weights_only=True)["epoch"] + 1 if self.last.is_file() else None
        self.seen.append((epoch, held))


def test_an_epochs_line_is_said_once_its_checkpoint_is_written(prepared, tmp_path: Path) -> None:
    # The line was said before Lightning's checkpoint callbacks wrote the epoch: a kill right after it
    # resumed the run an epoch before the one it said was done.
    reporter = _CheckpointAtEachLine(tmp_path / "run" / "checkpoints" / "last.ckpt")
    train(_spec(epochs=3, iters_per_epoch=1), prepared, tmp_path / "run", reporter=reporter)
    assert reporter.seen == [(1, 1), (2, 2), (3, 3)]


def test_dynunet_trains_with_deep_supervision(prepared, tmp_path: Path) -> None:
    # 32^3 at 1 mm: three poolings, so one extra head at 1/2 resolution besides the output (nnU-Net's rule).
    spec = _spec(arch="dynunet", patch_size=(32, 32, 32), epochs=1, class_weights=(0.5, 1.0, 2.0))
    patch, _ = resolve_patch_and_batch(spec, prepared)
    result = train(spec, prepared, tmp_path / "run")
    x = torch.zeros(1, 1, *patch)
    heads = result.net.train()(x)  # while training: the output and each head at its own resolution
    assert [tuple(h.shape) for h in heads] == [(1, 3, *patch), (1, 3, *(s // 2 for s in patch))]
    assert result.net.eval()(x).shape == (1, 3, *patch)
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert log["train_loss"].dropna().between(0, 10).all()


def test_killed_run_resumes_at_epoch_2(shared_task: Path, home: Path, tmp_path: Path) -> None:
    """Start a sweep in a subprocess, SIGKILL it once epoch 1's checkpoint exists, rerun: it resumes."""
    src = copy_subset(shared_task, tmp_path / "src" / "Task04_Hippocampus", 10)
    runner = CliRunner()
    assert runner.invoke(app, ["fetch", "Task04_Hippocampus", "--source", str(src)]).exit_code == 0
    results = tmp_path / "results"
    # 3D UNet (1.2 M parameters): small checkpoints, so the test spends its time training, not writing.
    args = ["sweep", "--task", "Task04_Hippocampus", "--dims", "3d", "--arch", "unet", "--loss", "dice_ce",
            "--epochs", "3", "--iters-per-epoch", "6", "--batch-size", "2", "--patch-size", "16,32,32",
            "--results-dir", str(results)]
    env = {**os.environ, "MEDSEG_BENCH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "medseg_bench", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        checkpoint = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(results.glob("Task04_Hippocampus/*/checkpoints/last.ckpt"))
            if found:
                checkpoint = found[0]
                break
            time.sleep(0.05)
        assert checkpoint is not None and proc.poll() is None, "no epoch-1 checkpoint before the run ended"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (checkpoint.parent.parent / "summary.json").exists()
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 0  # killed during epoch 2

    moved = tmp_path / "moved"  # the results folder moved before the rerun: it resumes all the same, quietly
    results.rename(moved)
    args[args.index(str(results))] = str(moved)
    folder = moved / checkpoint.relative_to(results).parent.parent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rerun = runner.invoke(app, args)
    assert rerun.exit_code == 0, rerun.output
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]  # Lightning's, on stderr
    log_text = (folder / "run.log").read_text()
    assert "resumed from checkpoints/last.ckpt at epoch 2 of 3" in log_text
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["cost"]["epochs_done"] == 3
    assert len(summary["cost"]["epoch_times_s"]) == 3  # epoch 1 from the killed attempt's checkpoint, 2, 3
    assert summary["cost"]["train_time_s"] > sum(summary["cost"]["epoch_times_s"][1:])
    epochs = pd.read_csv(folder / "logs" / "metrics.csv")
    assert sorted(epochs.dropna(subset=["val_dice"])["epoch"]) == [0, 1, 2]  # epoch 1's log kept, none twice


def test_learning_rate_decays_by_steps_or_by_the_clock_whichever_is_further() -> None:
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import Timer

    from medseg_bench.training import SegmentationModule

    net = torch.nn.Conv3d(1, 2, 1)
    by_steps = SegmentationModule(net, torch.nn.Identity(), 2, "adamw", 1e-3, total_steps=1000)
    assert by_steps.progress(250) == 0.25
    assert by_steps.progress(5000) == 1.0
    timed = SegmentationModule(net, torch.nn.Identity(), 2, "sgd", 1e-2, total_steps=1000, max_seconds=60)
    assert timed.progress(100) == 0.1  # no trainer attached yet: steps only
    clock = Timer(duration={"seconds": 60})
    clock._offset = 30.0  # 30 s of training already done (as restored from a checkpoint)
    timed._trainer = SimpleNamespace(callbacks=[clock])
    assert timed.progress(100) == 0.5  # the clock is further along than the steps
    assert timed.progress(900) == 0.9  # the steps are further along than the clock
    clock._offset = 600.0
    assert timed.progress(100) == 1.0  # past the budget: fully decayed, never beyond
    optimizer = timed.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert optimizer.get_last_lr()[0] == 0.0  # poly decay at progress 1


def test_a_runs_peak_memory_is_its_own() -> None:
    # One sweep process runs its runs one after another; each was charged the peak of those before it.
    import numpy as np

    from medseg_bench.training import _peak_memory_mb, _reset_peak_memory

    big = np.ones(400 * 2**20 // 8)  # 400 MB, touched
    del big
    before = _peak_memory_mb(cuda=False)
    _reset_peak_memory(cuda=False)
    after = _peak_memory_mb(cuda=False)
    assert before - after > 300, (before, after)


@pytest.mark.parametrize(("platform", "maxrss", "mb"), [("linux", 2048, 2.0), ("darwin", 2 * 2**20, 2.0)])
def test_the_peak_without_proc_is_in_mb_on_each_platform(
    monkeypatch: pytest.MonkeyPatch, platform: str, maxrss: int, mb: float
) -> None:
    # Where /proc/self/status cannot be read, getrusage's ru_maxrss is kilobytes on Linux, bytes on macOS.
    import types

    from medseg_bench import training

    real_read = Path.read_text

    def no_proc(self: Path, *args: object, **kwargs: object) -> str:
        if str(self).startswith("/proc/"):
            raise OSError("no /proc here")
        return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", no_proc)
    usage = types.SimpleNamespace(RUSAGE_SELF=0,
                                  getrusage=lambda who: types.SimpleNamespace(ru_maxrss=maxrss))
    monkeypatch.setattr(training, "resource", usage)
    monkeypatch.setattr(training.sys, "platform", platform)
    assert training._peak_memory_mb(cuda=False) == mb


class _StopAtEpoch(pl.Callback):
    """Stops training as epoch `epoch` (0-based) starts, after the previous epoch's checkpoint: a kill."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt("SIGTERM")


def test_a_resumed_run_with_loader_workers_trains_as_an_uninterrupted_one(prepared, tmp_path: Path) -> None:
    # With DataLoader workers, the first resumed epoch re-drew the first epoch's samples: the loader fetched
    # its indices before Lightning set the resumed epoch on the sampler.
    spec = _spec(aug="none", epochs=3)
    train(spec, prepared, tmp_path / "whole", num_workers=1)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(spec, prepared, tmp_path / "cut", num_workers=1, extra_callbacks=[_StopAtEpoch(1)])
    assert torch.load(tmp_path / "cut" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 0
    train(spec, prepared, tmp_path / "cut", num_workers=1)
    whole = pd.read_csv(tmp_path / "whole" / "logs" / "metrics.csv")
    resumed = pd.read_csv(tmp_path / "cut" / "logs" / "metrics.csv")
    assert whole["train_loss"].dropna().tolist() == resumed["train_loss"].dropna().tolist()


def test_a_run_with_dropout_trains_alike_resumed_and_with_loader_workers(prepared, tmp_path: Path) -> None:
    # Dropout masks came from torch's global generator, seeded once per attempt and drawn from by each new
    # DataLoader iterator: pspnet's losses differed from the second epoch with --workers 1, or once resumed.
    spec = _spec(dims="2d", arch="pspnet", encoder="resnet18", patch_size=(32, 32), aug="none", epochs=3)
    train(spec, prepared, tmp_path / "w0", num_workers=0)
    train(spec, prepared, tmp_path / "w1", num_workers=1)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(spec, prepared, tmp_path / "cut", extra_callbacks=[_StopAtEpoch(1)])
    train(spec, prepared, tmp_path / "cut")
    losses = [pd.read_csv(tmp_path / name / "logs" / "metrics.csv")["train_loss"].dropna().tolist()
              for name in ("w0", "w1", "cut")]
    assert losses[0] == losses[1] == losses[2] and len(losses[0]) == 3
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for name in ("w0", "w1", "cut")]
    assert all(torch.equal(weights[0][k], other[k]) for other in weights[1:] for k in weights[0])


def test_a_plan_edited_to_a_batch_batchnorm_cannot_train_on_stops_the_run_before_it_trains(
        prepared, tmp_path: Path) -> None:
    import dataclasses

    one = dataclasses.replace(prepared, plan=dataclasses.replace(prepared.plan, batch_2d=1))
    with pytest.raises(UsageError, match="arch 'deeplab' .2d. batch-normalises globally pooled features"):
        train(_spec(dims="2d", arch="deeplab", encoder="resnet18", patch_size=(32, 32), batch_size=None), one,
              tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_tta_applies_to_runs_whose_augmentation_mirrors() -> None:
    from dataclasses import replace

    spec = RunSpec(task="Task04_Hippocampus", dims="3d", arch="unet", loss="dice_ce", aug="none", tta=True)
    assert not run_tta(spec) and not run_tta(spec, requested=True)
    assert run_tta(replace(spec, aug="nnunet")) and not run_tta(replace(spec, aug="nnunet"), requested=False)
    assert run_tta(replace(spec, pipeline_version=9))  # an older run is evaluated and predicted as it was


@pytest.mark.parametrize(("dims", "version", "cache"), [("2d", 11, "-2d"), ("2d", 10, ""), ("3d", 11, "")])
def test_a_2d_run_trains_on_the_cache_that_keeps_its_slices(home: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch, dims: str,
                                                             version: int, cache: str) -> None:
    """On thick slices (2-5 mm, the plan's 2.3 mm) a version-11 2D run's samples come from `<hash>-2d/`;
    older 2D runs and 3D runs keep the 3D cache."""
    import medseg_bench.training as training
    from tests.conftest import make_anisotropic_ct_task

    write_task_file(home, "Task93_Aniso", ct=True)
    src = make_anisotropic_ct_task(tmp_path / "src" / "Task93_Aniso")
    fetch_task(get_task("Task93_Aniso"), home / "data", str(src), progress=False)
    prepared = prepare_task(get_task("Task93_Aniso"), home / "data", num_folds=2, workers=1, own_slices=True)
    seen = []

    def loaders(cache_dir: Path, *args: object, **kwargs: object) -> None:
        seen.append(cache_dir)
        raise KeyboardInterrupt  # enough: the cache is chosen

    monkeypatch.setattr(training, "make_loaders", loaders)
    spec = _spec(task="Task93_Aniso", dims=dims, pipeline_version=version,
                 **({"patch_size": (32, 32), "encoder": "resnet18"} if dims == "2d" else {}))
    with pytest.raises(KeyboardInterrupt):
        train(spec, prepared, tmp_path / "run")
    assert seen == [prepared.cache_dir.with_name(prepared.cache_dir.name + cache)]


def test_a_2d_run_of_pipeline_version_3_keeps_slicing_the_first_axis() -> None:
    # Trained on slices along axis 0 whatever the spacing; predict and rescoring must give it the same.
    from types import SimpleNamespace

    from medseg_bench.training import run_slice_axis

    prepared = SimpleNamespace(plan=SimpleNamespace(target_spacing=(0.8, 0.8, 4.0)))
    spec = RunSpec(task="T", dims="2d", arch="unet", loss="dice_ce", aug="none")
    assert run_slice_axis(spec, prepared.plan.target_spacing) == 2
    old = RunSpec(**{**spec.to_dict(), "pipeline_version": 3})
    assert run_slice_axis(old, prepared.plan.target_spacing) == 0


def test_a_diverged_run_fails_at_the_epoch_its_weights_are_no_longer_finite(prepared, tmp_path: Path) -> None:
    # --lr 1e10: 'epoch 1/1 loss nan val Dice 0.0000', then 'done, mean Dice 0.0000', ranked by the report
    from medseg_bench.training import TrainingFailed

    with pytest.raises(TrainingFailed) as failed:
        train(_spec(lr=1e10), prepared, tmp_path / "run")
    assert str(failed.value) == ("training diverged: the network's weights are no longer finite after "
                                 "epoch 1 (NaN/inf); try a lower --lr")
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before the epoch's checkpoints


def test_a_step_with_an_inf_loss_that_leaves_the_weights_finite_does_not_fail_the_run(
        prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As with mixed precision on a GPU, where GradScaler skips a step whose gradients overflow: the logged
    # loss is inf, the weights are as before, and the run trains on.
    from medseg_bench import training

    real = training.build_loss

    def inf_at_first(*args: object) -> torch.nn.Module:
        loss_fn = real(*args)  # type: ignore[arg-type]
        calls = []

        class InfOnce(torch.nn.Module):
            def forward(self, out: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
                calls.append(1)
                loss = loss_fn(out, label)
                return loss * 0 + float("inf") if len(calls) == 1 else loss  # no gradient at the first step

        return InfOnce()

    monkeypatch.setattr(training, "build_loss", inf_at_first)
    result = train(_spec(), prepared, tmp_path / "run")
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert log["train_loss"].dropna().tolist()[0] == float("inf") and result.epochs_done == 2


def test_a_run_resumed_from_non_finite_weights_fails_before_it_is_evaluated(prepared, tmp_path: Path) -> None:
    from medseg_bench.training import TrainingFailed

    train(_spec(), prepared, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    next(iter(checkpoint["state_dict"].values())).fill_(float("nan"))
    torch.save(checkpoint, last)
    # resumed after its last epoch: no epoch ends, the weights are checked before they are evaluated
    with pytest.raises(TrainingFailed, match="no longer finite after step 4 "):
        train(_spec(), prepared, tmp_path / "run")


def test_a_run_that_took_no_training_step_fails(prepared, tmp_path: Path) -> None:
    # --max-minutes 1e-9: 'Time limit reached' before the first step, and the initial weights were evaluated
    from medseg_bench.training import TrainingFailed

    with pytest.raises(TrainingFailed) as failed:
        train(_spec(max_minutes=1e-9), prepared, tmp_path / "run")
    assert str(failed.value) == "no training step within --max-minutes 1e-09: raise it"
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_run_that_gave_no_result_is_a_failed_run_with_one_line(prepared, tmp_path: Path) -> None:
    from medseg_bench.results import run_dir
    from medseg_bench.run_folder import read_events, read_status
    from medseg_bench.sweep.worker import run_one

    spec = _spec(max_minutes=1e-9)
    outcome = run_one(spec, prepared, tmp_path / "results")
    line = "no training step within --max-minutes 1e-09: raise it"
    assert outcome.kind == "failed" and outcome.error is not None  # exit 5, as every failed run of a sweep
    assert outcome.error.startswith(f"run {spec.run_id} failed: {line} (log: ")
    folder = run_dir(tmp_path / "results", spec)
    assert read_status(folder)["state"] == "failed" and read_status(folder)["error"] == line
    assert [e["event"] for e in read_events(folder)] == ["start", "failed"]
    assert not (folder / "summary.json").exists()


def test_a_batch_whose_input_alone_exceeds_the_machines_memory_fails_before_anything_is_built(
        prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --batch-size 1e8 grew its batch until the kernel killed the sweep: the run showed as pending, not failed
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.training import check_batch_memory

    check_batch_memory((16, 16, 16), 2, 1, memory=MemoryLimit(2 * 16**3 * 5, "the machine's memory"))  # fits
    with pytest.raises(MemoryError, match=r"^one batch of 2 16x16x16 patches \(1 channel\(s\)\) needs "
                       r"3.815e-05 GiB for its input alone, more than the 3.81e-05 GiB this process may use "
                       r"\(the machine's memory\)$"):
        check_batch_memory((16, 16, 16), 2, 1, memory=MemoryLimit(2 * 16**3 * 5 - 1, "the machine's memory"))
    # the limit would hold it, not beside what the process holds of it already
    with pytest.raises(MemoryError, match=r"more than the 3.81e-05 GiB this process may use \(the process's "
                       r"address-space limit, ulimit -v, RLIMIT_AS: 1 GiB, 1 GiB of it held already\)$"):
        check_batch_memory((16, 16, 16), 2, 1, memory=MemoryLimit(
            2**30, "the process's address-space limit", "ulimit -v, RLIMIT_AS", per_process=True,
            held_bytes=2**30 - 2 * 16**3 * 5 + 1))
    with pytest.raises(MemoryError, match="one batch of 100000000 16x16x16 patches"):
        train(_spec(batch_size=100_000_000), prepared, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    monkeypatch.setattr("medseg_bench.training.usable_memory",
                        lambda: MemoryLimit(2 * 16**3 * 5 - 1, "the machine's memory"))
    with pytest.raises(MemoryError, match="one batch of 2 16x16x16 patches"):
        train(_spec(), prepared, tmp_path / "run")


def test_a_batch_past_a_containers_or_jobs_memory_limit_fails_naming_that_limit(
        prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # In a container or a SLURM job with --mem, the kernel kills the process at its cgroup's limit, far below
    # the machine's memory, which alone was checked: the sweep was killed and its run showed as pending
    from medseg_bench import checks

    cgroup = tmp_path / "root"
    (cgroup / "proc/self").mkdir(parents=True)
    (cgroup / "proc/self/cgroup").write_text("0::/job_7/step_0\n")
    (cgroup / "sys/fs/cgroup/job_7/step_0").mkdir(parents=True)
    (cgroup / "sys/fs/cgroup/job_7/step_0/memory.max").write_text("max\n")
    (cgroup / "sys/fs/cgroup/job_7/memory.max").write_text(f"{2 * 16**3 * 5 - 1}\n")
    monkeypatch.setattr(checks, "machine_memory", lambda: 64 * 2**30)
    real = checks.usable_memory
    monkeypatch.setattr("medseg_bench.training.usable_memory", lambda: real(cgroup))
    with pytest.raises(MemoryError, match=r"^one batch of 2 16x16x16 patches \(1 channel\(s\)\) needs "
                       r"3.815e-05 GiB for its input alone, more than the 3.81e-05 GiB this process may use "
                       r"\(the container's or job's memory limit, cgroup memory.max\)$"):
        train(_spec(), prepared, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_region_runs_validation_dice_is_each_regions_sigmoid_against_its_mask() -> None:
    """nnU-Net's pseudo-Dice for region training: each channel over 0 (its sigmoid over 0.5) against the
    region's mask, every channel counted (no background channel)."""
    from medseg_bench.training import SegmentationModule

    label = torch.tensor([0, 1, 2, 2, 1, 0]).reshape(1, 1, 6, 1)
    logits = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0],  # whole (1, 2): 2 hits, 1 false, 2 missed
                           [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0]]).reshape(1, 2, 6, 1)  # inner (2): exact
    module = SegmentationModule(lambda image: logits, torch.nn.Identity(), 2, "adamw", 1e-3,  # type: ignore[arg-type]
                                total_steps=1, regions=((1, 2), (2,)))
    module.on_validation_epoch_start()
    module.validation_step((torch.zeros(1, 1, 6, 1), label), 0)
    assert module._counts.tolist() == [[2, 2], [1, 0], [2, 0]]  # tp, fp, fn per region


def test_a_region_run_trains_a_sigmoid_channel_per_region(home: Path, tmp_path: Path, prepared,
                                                          softmax_only_loss: str) -> None:
    """Target regions: the network's channels are the task's regions (two here, of three classes), trained
    with dice_ce's region form, or another loss's (focal's); a task without regions, or a loss without a
    region form, is refused before anything is built."""
    name = "Task94_Regions"
    task_file = write_task_file(home, name)
    with task_file.open("a") as fh:  # in this order (yaml.safe_dump would sort them)
        fh.write("regions:\n  whole: [1, 2]\n  inner: [2]\n")
    src = make_synthetic_task(tmp_path / "src" / name, num_cases=4)
    fetch_task(get_task(name), home / "data", str(src), progress=False)
    regions = prepare_task(get_task(name), home / "data", num_folds=2, workers=1)
    result = train(_spec(task=name, target="regions", epochs=1, aug="none"), regions, tmp_path / "run")
    assert result.net.eval()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    log = pd.read_csv(tmp_path / "run" / "logs" / "metrics.csv")
    assert log["train_loss"].dropna().between(0, 10).all() and log["val_dice"].dropna().between(0, 1).all()
    with pytest.raises(UsageError, match=f"^{TASK}: target regions: it has no regions"):
        train(_spec(target="regions"), prepared, tmp_path / "refused")
    focal = train(_spec(task=name, target="regions", loss="focal", epochs=1, aug="none"), regions,
                  tmp_path / "focal")
    assert focal.net.eval()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    focal_log = pd.read_csv(tmp_path / "focal" / "logs" / "metrics.csv")
    assert focal_log["train_loss"].dropna().between(0, 10).all()
    with pytest.raises(UsageError, match=f"^loss '{softmax_only_loss}' has no region form"):
        train(_spec(task=name, target="regions", loss=softmax_only_loss), regions, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_an_epoch_cut_short_by_the_clock_is_not_counted_as_an_epochs_time() -> None:
    # --max-minutes stopping within an epoch: its 3 of 5 steps were averaged in as an epoch, and the mean
    # time per epoch (and the dry run's seconds per iteration) came out too small.
    from types import SimpleNamespace

    from medseg_bench.training import _ProgressCallback

    progress = _ProgressCallback("r", 3, None, iters_per_epoch=5)
    trainer = SimpleNamespace(callback_metrics={}, current_epoch=0)
    for steps in (5, 3):
        progress.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
        for index in range(steps):
            progress.on_train_batch_start(trainer, None, None, index)  # type: ignore[arg-type]
        if steps == 3:
            assert progress.state_dict()["epoch_times_s"] == progress.epoch_times_s  # a checkpoint now
        progress.on_train_epoch_end(trainer, None)  # type: ignore[arg-type]
    assert len(progress.epoch_times_s) == 1
