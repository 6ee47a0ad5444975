"""Fingerprint: shapes, spacings, foreground intensities per modality, class frequencies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.fingerprint import fingerprint
from medseg_bench.data.io import read_image, read_label
from medseg_bench.data.msd import training_cases
from tests.conftest import make_synthetic_task, write_task_file


def test_statistics_per_modality_and_class_frequencies(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task91_Multi", channels=2)
    folder = make_synthetic_task(tmp_path / "Task91_Multi", num_cases=4, channels=2)
    cases = training_cases(folder)
    fp = fingerprint(get_task("Task91_Multi"), cases, workers=1)
    assert fp["num_cases"] == 4 and fp["cases"] == [c.case_id for c in cases]
    assert fp["shapes_zyx"] == [[12, 20, 20]] * 4 and fp["spacings_zyx"] == [[1.0, 1.0, 1.0]] * 4
    labels = [read_label(c.label)[0] for c in cases]
    counts = np.bincount(np.concatenate([lb.ravel() for lb in labels]), minlength=3)
    for value in (0, 1, 2):
        assert fp["class_frequencies"][str(value)]["voxel_fraction"] == pytest.approx(
            counts[value] / counts.sum()
        )
        assert fp["class_frequencies"][str(value)]["cases_present"] == 4
    assert fp["class_frequencies"]["1"]["foreground_fraction"] == pytest.approx(counts[1] / counts[1:].sum())
    assert [s["modality"] for s in fp["foreground_intensity"]] == ["MR0", "MR1"]
    for c, stats in enumerate(fp["foreground_intensity"]):  # all foreground voxels fit in the sample here
        values = np.concatenate(
            [read_image(case.image)[0][c][lb > 0] for case, lb in zip(cases, labels, strict=True)]
        )
        assert stats["mean"] == pytest.approx(values.mean(), rel=1e-5)
        assert stats["p99_5"] == pytest.approx(np.percentile(values, 99.5), rel=1e-5)
        assert stats["min"] <= stats["p00_5"] < stats["median"] < stats["p99_5"] <= stats["max"]


def test_parallel_and_serial_agree(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task90_Synth")
    cases = training_cases(make_synthetic_task(tmp_path / "Task90_Synth", num_cases=3))
    assert fingerprint(get_task("Task90_Synth"), cases, workers=2) == fingerprint(
        get_task("Task90_Synth"), cases, workers=1
    )
