"""Training: a LightningModule around a plain `nn.Module`, and `train()` for one run.

Defaults follow nnU-Net where it matters: fixed iterations per epoch, gradient clipping at 12, SGD with
Nesterov momentum 0.99 and poly decay (`optimizer="sgd"`), or AdamW with cosine decay (the default, which
converges faster on short CPU budgets); with a `max_minutes` budget the decay follows whichever of steps and
wall time is further along, so a run stopped by its clock has annealed too. Mixed precision on GPU.
Checkpoints `last.ckpt` (every epoch) and `best.ckpt` (by validation pseudo-Dice) are written atomically into
the run folder.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import resource
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from medseg_bench.augment import AUGS, mirrors
from medseg_bench.checkpoints import RUN_ID_KEY, AtomicCheckpointIO, mapped_checkpoint
from medseg_bench.checks import MemoryLimit, usable_memory
from medseg_bench.data.datamodule import EpochSampler, make_loaders
from medseg_bench.data.plan import model_spacing, slice_axis
from medseg_bench.data.preprocess import PlannedTask, PreparedTask
from medseg_bench.data.resample import anisotropic_axis
from medseg_bench.errors import RunError
from medseg_bench.inference import NNUNET_INFERENCE_FROM
from medseg_bench.losses import build_loss
from medseg_bench.models import (
    ModelInputs,
    build_model,
    check_batch,
    check_channels,
    check_inputs,
    check_patch,
    fit_patch,
)
from medseg_bench.regions import output_channels, region_members, task_region_labels
from medseg_bench.spec import DEFAULT_LR, RunSpec
from medseg_bench.training_log import csv_logger, keep_csv_log, merge_csv_log

log = logging.getLogger("medseg_bench.training")
GRAD_CLIP = 12.0
# From pipeline version 13, torch's global generator (dropout masks) is seeded at every training step from the
# run's seed and the step: before, a resumed run, or one with another number of DataLoader workers (whose
# iterators draw from it), drew other dropout masks than an uninterrupted run (vnet, deeplab, deeplabv3,
# pspnet, fcn: the archs with dropout; U-Net runs train bit-identically to version 12; see spec.py, 13).
STEP_SEEDED_FROM = 13


class TrainingFailed(RunError):
    """Training that gave no result to evaluate: its weights diverged, or it took no step. Its message is the
    run's one line (no exception type before it in `status.json`)."""


def weights_finite(net: nn.Module) -> bool:
    """Whether every floating-point tensor of `net`'s state (weights, and buffers such as BatchNorm's running
    statistics) is finite. The weights, not a step's loss: with mixed precision GradScaler skips a step whose
    gradients overflow, so a healthy run can log an inf loss and keep its weights."""
    tensors = [t for t in net.state_dict().values() if t.is_floating_point()]
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def diverged(when: str) -> TrainingFailed:
    return TrainingFailed(f"training diverged: the network's weights are no longer finite {when} (NaN/inf); "
                          "try a lower --lr")


class _FiniteWeights(pl.Callback):
    """Stops a run whose weights are no longer finite at an epoch's end, once its validation is done, before
    its checkpoints are written (Lightning runs checkpoint callbacks last): a diverged run (`--lr 1e10`:
    'loss nan val Dice 0.0000') was evaluated, recorded as done and ranked, and `predict` wrote NaN."""

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, module)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._check(trainer, module)  # an epoch without validation too

    @staticmethod
    def _check(trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not weights_finite(module):
            raise diverged(f"after epoch {trainer.current_epoch + 1}")


class EpochReporter(Protocol):
    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None: ...


class SegmentationModule(pl.LightningModule):
    """Optimises `net` with `loss_fn`; logs `train_loss` and the validation pseudo-Dice `val_dice`."""

    def __init__(self, net: nn.Module, loss_fn: nn.Module, num_classes: int, optimizer: str, lr: float,
                 total_steps: int, max_seconds: float | None = None, step_seed: int | None = None,
                 run_id: str | None = None, regions: Sequence[Sequence[int]] | None = None) -> None:
        """`regions`: each region's labels, for a run with `target: regions` (`num_classes` is then the
        number of regions, the network's sigmoid channels); the pseudo-Dice is then the regions'."""
        super().__init__()
        self.net, self.loss_fn, self.num_classes = net, loss_fn, num_classes
        self.optimizer_name, self.lr, self.total_steps = optimizer, lr, max(1, total_steps)
        self.max_seconds, self.step_seed, self.run_id = max_seconds, step_seed, run_id
        self.regions = None if regions is None else tuple(tuple(r) for r in regions)
        self._counts = torch.zeros(3, num_classes, dtype=torch.float64)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Each checkpoint names its run (`checkpoints.RUN_ID_KEY`): one copied into another run's folder is
        refused there, not used as that run's weights."""
        if self.run_id is not None:
            checkpoint[RUN_ID_KEY] = self.run_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """With `step_seed`, torch's generators (CPU and CUDA: dropout) start each step from (seed, step), as
        the samples do: a resumed run, or one with DataLoader workers, draws as an uninterrupted one."""
        if self.step_seed is not None:
            state = np.random.SeedSequence([self.step_seed, self.global_step]).generate_state(1)[0]
            torch.manual_seed(int(state))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        image, label = batch
        loss = self.loss_fn(self.net(image), label)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=image.shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(3, self.num_classes, dtype=torch.float64)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        image, label = batch
        if self.regions is not None:  # each region: sigmoid over 0.5, against its mask (nnU-Net's)
            from medseg_bench.regions import region_targets

            predicted, truth = self.net(image) > 0, region_targets(label, self.regions) > 0
            for k in range(self.num_classes):
                p, t = predicted[:, k], truth[:, k]
                self._counts[0, k] += (p & t).sum().item()
                self._counts[1, k] += (p & ~t).sum().item()
                self._counts[2, k] += (~p & t).sum().item()
            return
        pred = self.net(image).argmax(1)
        target = label[:, 0]
        for k in range(1, self.num_classes):
            p, t = pred == k, target == k
            self._counts[0, k] += (p & t).sum().item()
            self._counts[1, k] += (p & ~t).sum().item()
            self._counts[2, k] += (~p & t).sum().item()

    def on_validation_epoch_end(self) -> None:
        tp, fp, fn = self._counts if self.regions is not None else self._counts[:, 1:]  # label 0: background
        denom = 2 * tp + fp + fn
        present = denom > 0
        dice = (2 * tp[present] / denom[present]).mean().item() if present.any() else float("nan")
        self.log("val_dice", dice, prog_bar=False)

    def progress(self, step: int) -> float:
        """Fraction of the budget used, in [0, 1]: steps of `epochs`, or wall time of `max_minutes` when
        that is further along, so a run cut by its time budget ends with its learning rate decayed (as one
        that runs all its epochs does) instead of stopping at a high rate."""
        done = min(step, self.total_steps) / self.total_steps
        if self.max_seconds:
            from pytorch_lightning.callbacks import Timer

            # Lightning sets `Trainer.callbacks` in its callback connector without declaring it on the class.
            callbacks = self.trainer.callbacks if self._trainer else []  # type: ignore[attr-defined]
            timers = [c for c in callbacks if isinstance(c, Timer)]
            if timers:  # Lightning's own max_time clock: it survives a resume (saved in the checkpoint)
                done = max(done, min(1.0, timers[0].time_elapsed("train") / self.max_seconds))
        return done

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.99,
                                                         nesterov=True, weight_decay=3e-5)
            decay = lambda step: (1 - self.progress(step)) ** 0.9  # noqa: E731
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
            decay = lambda step: 0.5 * (1 + math.cos(math.pi * self.progress(step)))  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _ProgressCallback(pl.Callback):
    """Epoch times and training time, carried in the checkpoint, so a resumed run's cost counts every
    checkpointed epoch of every attempt (an epoch cut short by a kill is redone, and counted once)."""

    def __init__(self, run_id: str, epochs: int, reporter: EpochReporter | None, iters_per_epoch: int = 0,
                 cuda: bool = False) -> None:
        self.run_id, self.epochs, self.reporter = run_id, epochs, reporter
        self.iters_per_epoch, self.cuda = iters_per_epoch, cuda
        # every whole epoch of the run, earlier attempts' first: one --max-minutes cut short is left out (its
        # time made the mean, `time_per_epoch_s`, and the dry run's seconds per iteration, too small)
        self.epoch_times_s: list[float] = []
        self.earlier_peak_mb = 0.0  # the memory peak of earlier attempts, up to their last checkpoint
        self._steps = 0  # in the open epoch
        self.start_epoch = 0
        self.first_step_at: float | None = None  # wall clock (epoch seconds) of this process's first step
        self.earlier_train_time_s = 0.0  # training time of earlier attempts, up to their last checkpoint
        self.epochs_trained = 0  # by this attempt
        self._start = 0.0
        self._epoch_open = False
        self._pending: tuple[int, float, float] | None = None  # an ended epoch not said: epoch, loss, dice
        self._attempt_start = time.perf_counter()

    def start_attempt(self) -> float:
        """Start this attempt's training clock (setup before `fit` is not training); returns its start."""
        self._attempt_start = time.perf_counter()
        return self._attempt_start

    def state_dict(self) -> dict[str, Any]:
        # Saved after on_train_epoch_end (Lightning runs checkpoint callbacks last), or at the end of an
        # epoch's validation, before it, where that epoch is still open.
        now = time.perf_counter()
        current = [now - self._start] if self._epoch_open and self._whole_epoch() else []
        return {"epoch_times_s": [*self.epoch_times_s, *current], "train_time_s": self.train_time_s(now),
                "peak_memory_mb": self.peak_memory_mb()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch_times_s = [float(t) for t in state_dict.get("epoch_times_s", [])]
        self.earlier_train_time_s = float(state_dict.get("train_time_s", 0.0))
        self.earlier_peak_mb = float(state_dict.get("peak_memory_mb", 0.0))

    def train_time_s(self, now: float) -> float:
        """Training time of every attempt: this one's only where it took a step (one that resumed to
        evaluate, after the last epoch, added its restore to the run's training time)."""
        stepped = self.first_step_at is not None
        return self.earlier_train_time_s + (now - self._attempt_start if stepped else 0.0)

    def peak_memory_mb(self) -> float:
        """The run's memory peak over every attempt (a resumed run's was its last attempt's alone: one that
        only evaluated was charged its checkpoint's restore, and ranked best)."""
        return max(self.earlier_peak_mb, _peak_memory_mb(self.cuda))

    def _whole_epoch(self) -> bool:
        return not self.iters_per_epoch or self._steps >= self.iters_per_epoch

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start_epoch = trainer.current_epoch
        if self.start_epoch:
            log.info("run %s: resumed from checkpoints/last.ckpt at epoch %d of %d", self.run_id,
                     self.start_epoch + 1, self.epochs)

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._report()
        self._start = time.perf_counter()
        self._epoch_open = True
        self._steps = 0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        self._steps += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self._whole_epoch():
            self.epoch_times_s.append(time.perf_counter() - self._start)
        self._epoch_open = False
        self.epochs_trained += 1
        metrics = trainer.callback_metrics
        loss = float(metrics.get("train_loss", float("nan")))
        dice = float(metrics.get("val_dice", float("nan")))
        # Said once the epoch's checkpoint is written: Lightning runs checkpoint callbacks after the others,
        # so a line said here named an epoch that a kill in the next half second took back (resumed before
        # it).
        self._pending = (trainer.current_epoch + 1, loss, dice)

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._report()

    def _report(self) -> None:
        """Say the epoch that ended last, now that its checkpoint is on disk (the next epoch starts, or
        training ends); a run that fails writing it says nothing of it."""
        if self._pending is not None and self.reporter is not None:
            self.reporter.epoch_end(self.run_id, self._pending[0], self.epochs, *self._pending[1:])
        self._pending = None


@dataclass
class TrainResult:
    net: nn.Module
    params: int
    train_time_s: float
    epoch_times_s: list[float] = field(default_factory=list)
    epochs_done: int = 0
    # 1-based epoch this process started at, when it resumed (epochs + 1: it resumed after the last epoch)
    resumed_at_epoch: int | None = None
    first_step_at: float | None = None  # wall clock of the first training step (see bench/sweep.py)
    peak_memory_mb: float = 0.0
    device: str = "cpu"


def resolve_patch_and_batch(spec: RunSpec,
                            prepared: PreparedTask | PlannedTask) -> tuple[tuple[int, ...], int]:
    """Patch and batch size of a run: the spec's, else the plan's, rounded up to what the arch accepts
    (a patch given in the spec must already fit: it is part of the run id). Its plan is all it reads."""
    plan = prepared.plan
    batch = spec.batch_size or (plan.batch_2d if spec.dims == "2d" else plan.batch_3d)
    if spec.patch_size is not None:
        check_patch(spec.arch, spec.dims, spec.patch_size)
        return tuple(spec.patch_size), int(batch)
    planned = plan.patch_2d if spec.dims == "2d" else plan.patch_3d
    return fit_patch(spec.arch, spec.dims, planned), int(batch)


def network_spacing(prepared: PreparedTask | PlannedTask) -> tuple[float, ...]:
    """Voxel spacing (z, y, x) of the arrays the network sees: the cache's target spacing if it has one."""
    plan = prepared.plan
    return tuple(getattr(plan, "target_spacing", None) or plan.median_spacing)


def _reset_peak_memory(cuda: bool) -> None:
    """Start a run's memory peak now: a sweep runs its runs one after another in one process, and each used
    to be charged the largest peak of the runs before it."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak RSS (VmHWM)
    except OSError:
        pass


def _peak_memory_mb(cuda: bool) -> float:
    """GPU memory torch allocated at most, or the process's peak RSS, since `_reset_peak_memory`."""
    if cuda:
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere since the process started; getrusage gives kilobytes on Linux, bytes on macOS (getrusage(2)).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_slice_axis(spec: RunSpec, spacing_zyx: Sequence[float]) -> int:
    """The axis a 2D run slices volumes of `spacing_zyx` along (`data.plan.slice_axis`), for training,
    evaluation and `predict` alike; 0 (unused) for a 3D run, and for a run of pipeline version 3 or older,
    which was trained on slices along the first axis."""
    if spec.dims != "2d" or spec.pipeline_version < 4:
        return 0
    return slice_axis(spacing_zyx)


def run_tta(spec: RunSpec, requested: bool | None = None) -> bool:
    """Whether run `spec` is predicted with mirroring TTA: `requested`, or by default its spec's `tta`. From
    pipeline version 10 (`inference.NNUNET_INFERENCE_FROM`) only when its augmentation mirrored the training
    samples: nnU-Net mirrors at inference only along the axes it mirrored in training, and a network that
    never saw a mirrored image predicts poorly on one (a 3D U-Net without augmentation on Hippocampus: Dice
    0.88 without TTA, 0.18 with it)."""
    tta = spec.tta if requested is None else requested
    return tta and (spec.pipeline_version < NNUNET_INFERENCE_FROM or mirrors(spec.aug))


def model_inputs(spec: RunSpec, prepared: PreparedTask | PlannedTask) -> ModelInputs:
    """What run `spec`'s network is built from on `prepared`'s plan (its patch, the plan's spacing)."""
    patch, _ = resolve_patch_and_batch(spec, prepared)
    spacing = model_spacing(network_spacing(prepared), spec.dims)
    return ModelInputs(prepared.task.num_channels, output_channels(spec, prepared.task), patch, spec.encoder,
                       pretrained=spec.pretrained, spacing=spacing, pipeline_version=spec.pipeline_version)


def check_trainable(spec: RunSpec, prepared: PreparedTask | PlannedTask) -> None:
    """UsageError when run `spec` cannot train on `prepared`'s plan, found without building anything: a patch
    or batch (given, or the plan's, perhaps edited) its network cannot take, the task's channel count, a
    patch DynUNet cannot pool twice at the plan's spacing. A sweep asks it of every run before any trains."""
    patch, batch = resolve_patch_and_batch(spec, prepared)
    if spec.target == "regions":  # as `sweep` refuses them; a run given another way, or a task file edited
        task_region_labels(prepared.task)
        build_loss(spec.loss, prepared.task.num_classes, spec.class_weights, region_members(prepared.task),
                   spec.pipeline_version)
    check_batch(spec.arch, spec.dims, patch, batch)
    check_channels(spec.arch, spec.dims, prepared.task.num_channels, prepared.task.name)
    check_inputs(spec.arch, spec.dims, model_inputs(spec, prepared))


def check_batch_memory(patch: Sequence[int], batch: int, channels: int,
                       memory: MemoryLimit | None = None) -> None:
    """MemoryError, before anything is built, when one batch's input (float32 channels and a label map) alone
    is larger than the memory this process may use (`memory`, or `checks.usable_memory`: the machine's, or a
    container's or SLURM job's cgroup limit where less, less what the process holds of it): such a batch
    (--batch-size 1e8) grew until the kernel killed the sweep, whose run then showed as pending, not
    failed."""
    memory = usable_memory() if memory is None else memory
    needed = batch * math.prod(patch) * (4 * channels + 1)
    if memory is not None and needed > memory.available_bytes:
        shape = "x".join(str(p) for p in patch)
        raise MemoryError(f"one batch of {batch} {shape} patches ({channels} channel(s)) needs "
                          f"{needed / 2**30:.4g} GiB for its input alone, more than {memory.room}")


def build_network(spec: RunSpec, prepared: PreparedTask | PlannedTask) -> nn.Module:
    check_channels(spec.arch, spec.dims, prepared.task.num_channels, prepared.task.name)
    return build_model(spec.arch, spec.dims, model_inputs(spec, prepared))


def train(spec: RunSpec, prepared: PreparedTask, run_dir: Path, reporter: EpochReporter | None = None,
          num_workers: int = 0, extra_callbacks: list[pl.Callback] | None = None) -> TrainResult:
    """Train (or resume) one run; checkpoints and logs go into `run_dir`. `extra_callbacks`: benchmarks."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    _quiet_lightning()
    pl.seed_everything(spec.seed, workers=True, verbose=False)
    patch, batch = resolve_patch_and_batch(spec, prepared)
    check_trainable(spec, prepared)  # also a plan.json edited to batch 1, before anything is written
    check_batch_memory(patch, batch, prepared.task.num_channels)
    split = prepared.splits[spec.fold]
    train_loader, val_loader = make_loaders(
        prepared.cache_for(spec.own_slice_spacing), split["train"], split["val"], spec.dims, patch, batch,
        spec.iters_per_epoch, spec.seed, AUGS.get(spec.aug), num_workers,
        run_slice_axis(spec, network_spacing(prepared)),
        anisotropic_axis(network_spacing(prepared)), pipeline_version=spec.pipeline_version)
    net = build_network(spec, prepared)
    regions = region_members(prepared.task) if spec.target == "regions" else None
    loss_fn = build_loss(spec.loss, prepared.task.num_classes, spec.class_weights, regions,
                         spec.pipeline_version)
    module = SegmentationModule(net, loss_fn, output_channels(spec, prepared.task),
                                spec.optimizer, spec.lr or DEFAULT_LR[spec.optimizer],
                                spec.epochs * spec.iters_per_epoch,
                                spec.max_minutes * 60 if spec.max_minutes else None,
                                spec.seed if spec.pipeline_version >= STEP_SEEDED_FROM else None,
                                run_id=spec.run_id, regions=regions)
    cuda = torch.cuda.is_available()
    ckpt_dir = run_dir / "checkpoints"
    progress = _ProgressCallback(spec.run_id, spec.epochs, reporter, spec.iters_per_epoch, cuda)
    loggers: list[Any] = [csv_logger(run_dir)]  # its writes whole, whatever signal lands
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="logs", version="tb"))
    except ImportError:
        pass
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        max_epochs=spec.epochs,
        max_time=timedelta(minutes=spec.max_minutes) if spec.max_minutes else None,
        precision="16-mixed" if cuda else "32-true",
        gradient_clip_val=GRAD_CLIP,
        deterministic=not cuda,
        logger=loggers,
        callbacks=[
            # best.ckpt by validation pseudo-Dice; last.ckpt every epoch, whatever validation says
            # (Lightning's save_last writes `last` only when the monitored checkpoint is saved: it was a copy
            # of best, so evaluation and resumption used weights picked on the held-out fold).
            ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_dice", mode="max", save_top_k=1,
                            enable_version_counter=False),
            ModelCheckpoint(dirpath=ckpt_dir, filename="last", enable_version_counter=False),
            _FiniteWeights(),  # before `progress`, which reports the epoch
            progress,
            *(extra_callbacks or []),
        ],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, spec.iters_per_epoch),
        default_root_dir=run_dir,
    )
    last = ckpt_dir / "last.ckpt"
    resuming = last.is_file()
    if resuming:
        keep_csv_log(run_dir / "logs")
        # With loader workers, the first resumed epoch's indices are fetched when its iterator is made, before
        # Lightning sets the epoch on the sampler: set it here, from the steps the checkpoint has done
        # (every epoch is `iters_per_epoch` steps), or that epoch re-draws the first epoch's samples.
        try:
            done = mapped_checkpoint(last).get("global_step", 0)
        except Exception:  # noqa: BLE001 - a bad checkpoint: Lightning's restore says so, below
            done = 0
        if isinstance(train_loader.sampler, EpochSampler):
            train_loader.sampler.set_epoch(int(done) // spec.iters_per_epoch)
    progress.start_attempt()
    _reset_peak_memory(cuda)
    with _no_nan_fill():
        trainer.fit(module, train_loader, val_loader, ckpt_path=last if last.is_file() else None)
        # A run that took no step is no result: --max-minutes 1e-9 ran out before the first, and the run was
        # evaluated (Dice 0.05) with the network's initial weights.
        if not trainer.global_step:
            raise TrainingFailed(f"no training step within --max-minutes {spec.max_minutes:g}: raise it"
                                 if spec.max_minutes else "no training step was taken")
        if not weights_finite(module):  # stopped by its clock within an epoch, or resumed after its last
            raise diverged(f"after step {trainer.global_step}")
        # The weights evaluation and `predict` use: the final ones, also when --max-minutes stopped training
        # in the middle of an epoch (after its last epoch-end checkpoint).
        trainer.save_checkpoint(last)
    train_time_s = progress.train_time_s(time.perf_counter())
    # The first epoch this attempt trained; when it trained none (killed during evaluation, after the last
    # epoch's checkpoint), every logged epoch is from before.
    first = progress.start_epoch if progress.epochs_trained else trainer.current_epoch
    merge_csv_log(run_dir / "logs", first)
    resumed_at = progress.start_epoch + 1 if progress.start_epoch else None
    if resuming and not progress.epochs_trained:  # Lightning starts no training, so on_train_start is not run
        resumed_at = trainer.current_epoch + 1
        log.info("run %s: resumed from checkpoints/last.ckpt after its last epoch (%d of %d): evaluating",
                 spec.run_id, trainer.current_epoch, spec.epochs)
    peak_mb = progress.peak_memory_mb()
    return TrainResult(
        net=module.net.eval(),
        params=sum(p.numel() for p in net.parameters()),
        train_time_s=train_time_s,
        epoch_times_s=progress.epoch_times_s,
        epochs_done=trainer.current_epoch,
        resumed_at_epoch=resumed_at,
        first_step_at=progress.first_step_at,
        peak_memory_mb=peak_mb,
        device="cuda" if cuda else "cpu",
    )


@contextmanager
def _no_nan_fill() -> Iterator[None]:
    """Deterministic mode (`deterministic=True`, on CPU) also fills every new uninitialised tensor with NaN
    (`torch.utils.deterministic.fill_uninitialized_memory`), a debugging aid that cost about a third of each
    training step (bench/train.py: 6500 `fill_` calls per 10 steps against 220). Our kernels never read
    uninitialised memory, so results stay bit-identical (tests/test_training.py checks two runs match)."""
    if importlib.util.find_spec("torch.utils.deterministic") is None:  # torch 2.1: no flag, and no fill
        yield
        return
    import torch.utils.deterministic as deterministic

    # The flag is a property of the module's runtime class (torch swaps it in): invisible to type checkers.
    before = deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        deterministic.fill_uninitialized_memory = before  # type: ignore[attr-defined]


def _quiet_lightning() -> None:
    """Lightning's info lines (and tips) go to the run log, not the console; the sweep display reports."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    warnings.filterwarnings("ignore", message=".*treespec.*")
    warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # A resumed run's folder holds its logs and checkpoints by design; Lightning's advice does not apply
    # (keep_csv_log keeps the log, and last.ckpt is the checkpoint it resumes from).
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    # A run folder moved or copied before it resumes: best.ckpt's tracking restarts (evaluation and predict
    # use last.ckpt), which is all this warning says.
    warnings.filterwarnings("ignore", message=".*The dirpath has changed.*")


