"""Fingerprint: shapes, spacings, foreground intensities per modality, class frequencies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.fingerprint import FINGERPRINT_FORMAT, _intensity_stats, case_fingerprint, fingerprint
from medseg_bench.data.io import read_image, read_label
from medseg_bench.data.msd import Case, training_cases
from medseg_bench.data.plan import load_or_make_fingerprint
from medseg_bench.spec import TaskSpec
from tests.conftest import make_synthetic_task, write_image, write_task_file


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
    # MRI channels are z-scored per case with their own statistics: nothing to sample for them
    assert fp["foreground_intensity"] == [{"channel": 0, "modality": "MR0", "sampled": False},
                                          {"channel": 1, "modality": "MR1", "sampled": False}]


def test_a_ct_channel_after_another_is_sampled_as_nnunet_samples_it(home: Path, tmp_path: Path) -> None:
    """Only the CT channel is sampled; the MRI channel before it still advances the `RandomState` as
    nnU-Net's draw for it does, so the CT statistics are those of nnU-Net's sample of both channels."""
    write_task_file(home, "Task91_Multi", channels=2, modalities=["MR", "CT"])
    folder = make_synthetic_task(tmp_path / "Task91_Multi", num_cases=4, channels=2)
    cases = training_cases(folder)
    fp = fingerprint(get_task("Task91_Multi"), cases, workers=1)
    assert fp["foreground_intensity"][0] == {"channel": 0, "modality": "MR", "sampled": False}
    per_case = 40_000 // len(cases)  # tests/conftest.py's sample size
    both = [case_fingerprint(c, per_case)["samples"] for c in cases]  # every channel drawn, as nnU-Net
    assert all(len(s[0]) == per_case for s in both)
    expected = _intensity_stats(np.concatenate([s[1] for s in both]))
    assert fp["foreground_intensity"][1] == {"channel": 1, "modality": "CT", "sampled": True, **expected}
    values = np.concatenate([read_image(c.image)[0][1][read_label(c.label)[0] > 0] for c in cases])
    stats = fp["foreground_intensity"][1]
    assert values.min() <= stats["min"] <= stats["p00_5"] < stats["median"] < stats["p99_5"]
    assert stats["p99_5"] <= stats["max"] <= values.max()
    assert stats["mean"] == pytest.approx(values.mean(), abs=0.05 * float(values.std()))


def _case(folder: Path, name: str, image: np.ndarray, label: np.ndarray) -> Case:
    write_image(folder / "imagesTr" / name, image)
    write_image(folder / "labelsTr" / name, label)
    return Case(name.removesuffix(".nii.gz"), folder / "imagesTr" / name, folder / "labelsTr" / name)


def test_every_case_gives_the_same_number_of_samples_drawn_with_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nnU-Net's sample: 10^8 / cases from each case, so a case with 3 foreground voxels weighs as much as
    one with 2,000 (without replacement it would give 3 and weigh nothing)."""
    monkeypatch.setattr("medseg_bench.data.fingerprint.FOREGROUND_VOXELS_FOR_STATS", 10_000)
    big = np.zeros((10, 20, 20), np.uint8)
    big[:, :10, :] = 1
    small = np.zeros((10, 20, 20), np.uint8)
    small[5, 5, 5:8] = 1
    cases = [_case(tmp_path, "a.nii.gz", np.full(big.shape, 10, np.float32), big),
             _case(tmp_path, "b.nii.gz", np.full(small.shape, 20, np.float32), small)]
    per_case = [case_fingerprint(c, 5_000)["samples"][0] for c in cases]
    assert [len(s) for s in per_case] == [5_000, 5_000]
    stats = fingerprint(TaskSpec("Task99_X", {0: "bg", 1: "fg"}, ["CT"], "CT"), cases, workers=1)
    assert stats["foreground_intensity"][0]["mean"] == pytest.approx(15.0)
    assert stats["foreground_intensity"][0]["median"] == pytest.approx(15.0)


def test_the_sample_is_nnunets_draw_from_the_foreground_inside_the_non_zero_box(tmp_path: Path) -> None:
    """Foreground in the zero border (cropped away) is not sampled, and the draw is `RandomState(1234)`'s
    `choice` with replacement over the cropped foreground in C order, channel after channel."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 30, (2, 8, 16, 16)).astype(np.float32)
    image[:, :, :3] = 0.0  # a zero border, with foreground in it
    label = np.zeros((8, 16, 16), np.uint8)
    label[2:6, 1:9, 4:12] = 1
    case = _case(tmp_path, "c.nii.gz", image, label)
    samples = case_fingerprint(case, 1_000)["samples"]
    assert min(s.min() for s in samples) > 0  # the border's zeros are not in it
    image, _ = read_image(case.image)  # as stored (the writer's float32)
    rs = np.random.RandomState(1234)
    for c in range(2):
        expected = rs.choice(image[c][:, 3:][label[:, 3:] > 0], 1_000, replace=True)
        np.testing.assert_array_equal(samples[c], expected)


def test_parallel_and_serial_agree(home: Path, tmp_path: Path) -> None:
    write_task_file(home, "Task90_Synth")
    cases = training_cases(make_synthetic_task(tmp_path / "Task90_Synth", num_cases=3))
    assert fingerprint(get_task("Task90_Synth"), cases, workers=2) == fingerprint(
        get_task("Task90_Synth"), cases, workers=1
    )


def test_a_fingerprint_of_the_earlier_format_is_computed_again(home: Path, tmp_path: Path) -> None:
    """One written before nnU-Net's sample (no "format") holds other CT statistics: it is not reused."""
    write_task_file(home, "Task90_Synth")
    cases = training_cases(make_synthetic_task(tmp_path / "Task90_Synth", num_cases=3))
    folder = tmp_path / "pre"
    first = load_or_make_fingerprint(get_task("Task90_Synth"), cases, folder, workers=1)
    assert first["format"] == FINGERPRINT_FORMAT
    old = {k: v for k, v in first.items() if k != "format"} | {"foreground_intensity": "of format 1"}
    (folder / "fingerprint.json").write_text(json.dumps(old))
    assert load_or_make_fingerprint(get_task("Task90_Synth"), cases, folder, workers=1) == first
    assert json.loads((folder / "fingerprint.json").read_text()) == first
