"""A run's training log across attempts (Lightning's CSV logger starts `logs/metrics.csv` afresh on a
resume: the earlier epochs' rows are set aside and merged back) and its learning curves plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medseg_bench.files import atomic_binary, write_csv_atomic

log = logging.getLogger(__name__)


def csv_logger(run_dir: Path) -> Any:
    """Lightning's CSVLogger, writing `run_dir/logs/metrics.csv`, whose writes a stop signal never cuts in
    two (`signals.deferred`: it takes effect when the write ends). Cut in two, Lightning had recorded a new
    column but not yet rewritten the file's header, and its clean-up after the interruption appended rows
    of four fields under a header of three: the resumed run failed reading its own log."""
    from pytorch_lightning.loggers import CSVLogger

    from medseg_bench.signals import deferred

    class _WholeWrites(CSVLogger):
        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            with deferred():
                super().log_metrics(metrics, step)

        def save(self) -> None:
            with deferred():
                super().save()

    return _WholeWrites(run_dir, name="logs", version="")


def read_log(path: Path) -> Any:
    """A training log as a DataFrame; rows that do not parse (more fields than its header: a log a kill cut
    in the middle of a rewrite, or written before `csv_logger`) are left out with a warning in the run's log,
    never the run's failure: the log only draws the learning curves."""
    import pandas as pd

    try:
        return pd.read_csv(path)
    except pd.errors.ParserError:
        bad: list[list[str]] = []
        frame = pd.read_csv(path, engine="python", on_bad_lines=lambda row: bad.append(row))
        log.warning("%s: %d malformed row(s) left out of the training log", path, len(bad))
        return frame


def keep_csv_log(log_dir: Path) -> None:
    """Lightning's CSV logger deletes `metrics.csv` when it starts again: set the rows aside first (adding to
    those of earlier interruptions), so the learning curves of a resumed run cover all its epochs."""
    import pandas as pd

    current, kept = log_dir / "metrics.csv", log_dir / ".metrics.before_resume.csv"
    frames = [read_log(p) for p in (kept, current) if p.is_file() and p.stat().st_size > 0]
    if len(frames) == 2 and "epoch" in frames[0] and "epoch" in frames[1]:
        # an epoch logged, then redone after a kill before its checkpoint: the later attempt's rows only
        frames[0] = frames[0][~frames[0]["epoch"].isin(frames[1]["epoch"])]
    if frames:
        write_csv_atomic(pd.concat(frames, ignore_index=True), kept)


def merge_csv_log(log_dir: Path, start_epoch: int) -> None:
    """`metrics.csv` = the set-aside rows of epochs before `start_epoch`, then this attempt's rows."""
    import pandas as pd

    current, kept = log_dir / "metrics.csv", log_dir / ".metrics.before_resume.csv"
    if not kept.is_file():
        return
    old = read_log(kept)
    old = old[old["epoch"] < start_epoch] if "epoch" in old else old.iloc[0:0]
    old = old.drop_duplicates(keep="last")  # an epoch redone after a second kill logs the same rows (CPU)
    new = read_log(current) if current.is_file() and current.stat().st_size > 0 else old.iloc[0:0]
    write_csv_atomic(pd.concat([old, new], ignore_index=True), current)
    kept.unlink()


def save_learning_curves(run_dir: Path) -> Path | None:
    """Plot train loss and validation Dice per epoch from the CSV log into `learning_curves.png`."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.is_file():
        return None
    frame = read_log(path)
    if "epoch" not in frame:
        return None
    per_epoch = frame.groupby("epoch").agg({c: "max" for c in ("train_loss", "val_dice") if c in frame})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    if "train_loss" in per_epoch:
        ax.plot(per_epoch.index + 1, per_epoch["train_loss"], "o-", label="train loss", color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss")
    if "val_dice" in per_epoch:
        twin = ax.twinx()
        twin.plot(per_epoch.index + 1, per_epoch["val_dice"], "s-", label="val Dice", color="tab:orange")
        twin.set_ylabel("val pseudo-Dice")
        twin.set_ylim(0, 1)
    ax.set_title(run_dir.name, fontsize=8)
    fig.tight_layout()
    out = run_dir / "learning_curves.png"
    try:
        with atomic_binary(out) as fh:  # a full disk names the plot and leaves no empty one
            fig.savefig(fh, dpi=100, format="png")
    finally:
        plt.close(fig)
    return out
