"""The training log across attempts and the learning curves plot."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_learning_curves_are_written_atomically_and_a_full_disk_names_them(tmp_path: Path) -> None:
    # savefig wrote straight onto learning_curves.png: a full disk left it empty, with no file named.
    import errno

    from medseg_bench.files import private_temp
    from medseg_bench.training_log import save_learning_curves

    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text("epoch,train_loss,val_dice\n0,1.5,\n0,,0.4\n1,1.1,0.6\n")
    out = save_learning_curves(tmp_path)
    assert out == tmp_path / "learning_curves.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = out.read_bytes()
    private_temp(out).symlink_to("/dev/full")  # every write: ENOSPC, with no file name
    with pytest.raises(OSError) as info:
        save_learning_curves(tmp_path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out)
    assert out.read_bytes() == before  # the plot of before, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learning_curves.png", "logs"]


def test_a_resumed_runs_log_keeps_the_epochs_before_the_resume_once(tmp_path: Path) -> None:
    # Lightning's CSV logger starts metrics.csv afresh on a resume: the learning curves showed only the last
    # attempt's epochs. An epoch logged, then redone after a kill before its checkpoint (with other values, as
    # on a GPU), is kept once, as redone (it was kept twice).
    import pandas as pd

    from medseg_bench.training_log import keep_csv_log, merge_csv_log

    log = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [0.9, 0.8, 0.7]}).to_csv(log, index=False)
    keep_csv_log(tmp_path)  # killed after epoch 2 was logged, before its checkpoint: resumes at epoch 2
    pd.DataFrame({"epoch": [2, 3], "train_loss": [0.65, 0.6]}).to_csv(log, index=False)
    keep_csv_log(tmp_path)  # killed again during epoch 3: resumes at epoch 3
    pd.DataFrame({"epoch": [3, 4], "train_loss": [0.55, 0.5]}).to_csv(log, index=False)
    merge_csv_log(tmp_path, start_epoch=3)
    merged = pd.read_csv(log)
    assert merged["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert merged["train_loss"].tolist() == [0.9, 0.8, 0.65, 0.55, 0.5]
    assert not (tmp_path / ".metrics.before_resume.csv").exists()



def test_a_log_with_rows_longer_than_its_header_is_read_without_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A stop signal between Lightning's new column and its header rewrite left rows of four fields under a
    # header of three: the resumed run failed ("ParserError: Expected 3 fields in line 3, saw 4").
    import pandas as pd

    from medseg_bench.training_log import keep_csv_log, merge_csv_log, save_learning_curves

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "metrics.csv").write_text("epoch,step,train_loss\n0,49,0.9\n0,49,0.9,0.7\n1,99,0.8\n")
    keep_csv_log(logs)
    assert "1 malformed row(s) left out of the training log" in caplog.text
    (logs / "metrics.csv").write_text("epoch,step,train_loss,val_dice\n2,149,0.7,0.8\n")
    merge_csv_log(logs, start_epoch=2)
    merged = pd.read_csv(logs / "metrics.csv")
    assert merged["epoch"].tolist() == [0, 1, 2] and merged["val_dice"].isna().tolist() == [True, True, False]
    (logs / "metrics.csv").write_text("epoch,step,train_loss\n0,49,0.9\n0,49,0.9,0.7\n")
    assert save_learning_curves(tmp_path) == tmp_path / "learning_curves.png"


def test_the_training_log_is_written_whole_when_a_stop_signal_lands_in_a_write(tmp_path: Path) -> None:
    # The signal took effect in the middle of Lightning's header rewrite: the file was left with the old
    # header, and the clean-up's save appended the new column's rows under it.
    import os
    import signal

    import pandas as pd
    from lightning_fabric.loggers.csv_logs import _ExperimentWriter

    from medseg_bench import signals
    from medseg_bench.training_log import csv_logger

    logger = csv_logger(tmp_path)
    logger.log_metrics({"train_loss": 0.9}, step=0)
    logger.save()
    real = _ExperimentWriter._rewrite_with_new_header

    def signalled(self: _ExperimentWriter, fieldnames: list[str]) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # lands here, before the header is rewritten
        real(self, fieldnames)

    _ExperimentWriter._rewrite_with_new_header = signalled  # type: ignore[method-assign]
    try:
        with signals.interruptible(), pytest.raises(KeyboardInterrupt):
            logger.log_metrics({"train_loss": 0.8, "val_dice": 0.7}, step=1)
            logger.save()
    finally:
        _ExperimentWriter._rewrite_with_new_header = real  # type: ignore[method-assign]
    logger.save()  # Lightning's clean-up after the interruption
    frame = pd.read_csv(tmp_path / "logs" / "metrics.csv")  # the ParserError came here
    assert frame["val_dice"].isna().tolist() == [True, False]
