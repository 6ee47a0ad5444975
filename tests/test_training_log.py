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

