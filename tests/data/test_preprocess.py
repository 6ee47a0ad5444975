"""Plan, cache and splits: normalisation per modality, multi-channel 4D input, partial caches, determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.io import read_label, write_label
from medseg_bench.data.preprocess import (
    caches_to_build,
    is_built,
    load_case,
    prepare_task,
    stored_orientation,
    usable_cases,
)
from medseg_bench.data.splits import make_splits
from medseg_bench.errors import DataError
from tests.conftest import make_synthetic_task, write_task_file


def _fetched(home: Path, tmp_path: Path, name: str, **kw: object) -> Path:
    channels = int(kw.get("channels", 1))  # type: ignore[arg-type]
    write_task_file(home, name, channels=channels, ct=bool(kw.get("ct", False)))
    src = make_synthetic_task(tmp_path / "src" / name, **kw)  # type: ignore[arg-type]
    data = tmp_path / "data"
    fetch_task(get_task(name), data, str(src), progress=False)
    return data


def test_multimodal_4d_becomes_channels(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path, "Task91_Multi", channels=3)
    prepared = prepare_task(get_task("Task91_Multi"), data, num_folds=3, workers=1)
    image, label, props = load_case(prepared.cache_dir, prepared.case_ids[0])
    assert image.shape == (3, 12, 20, 20) and label.shape == (12, 20, 20)
    assert image.dtype == np.float32 and label.dtype == np.uint8
    for c in range(3):  # per-case z-score per channel
        assert abs(float(image[c].mean())) < 1e-3 and abs(float(image[c].std()) - 1) < 1e-3
    assert props["geometry"]["spacing"] == [1.0, 1.0, 1.0]
    assert prepared.plan.patch_3d == (16, 24, 24) and prepared.plan.patch_2d == (32, 32)


def test_ct_is_clipped_and_scaled_with_foreground_statistics(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path, "Task92_CT", ct=True)
    prepared = prepare_task(get_task("Task92_CT"), data, num_folds=3, workers=1)
    plan = prepared.plan
    assert plan.normalization == "per_channel" and plan.channel_normalization is not None
    (scheme,) = plan.channel_normalization
    assert scheme["scheme"] == "ct"
    lo, hi = scheme["clip"]
    # Foreground HU ~ N(-100, 200) (label 1) and N(300, 200) (label 2): 0.5/99.5 percentiles near -620/820.
    assert -750 < lo < -450 and 650 < hi < 950
    fp = json.loads((data / "preprocessed" / "Task92_CT" / "fingerprint.json").read_text())
    assert fp["foreground_intensity"][0]["p99_5"] == hi
    image, _, _ = load_case(prepared.cache_dir, prepared.case_ids[0])
    assert image.max() <= (hi - scheme["mean"]) / scheme["std"] + 1e-4


def test_cache_is_reused_and_partial_cache_finished(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path, "Task90_Synth")
    task = get_task("Task90_Synth")
    prepared = prepare_task(task, data, num_folds=3, workers=1)
    first = prepared.cache_dir / f"{prepared.case_ids[0]}.img.npy"
    mtime = first.stat().st_mtime_ns
    # Simulate a build killed half-way: one case lost its properties file, the completion marker is gone.
    (prepared.cache_dir / "complete.json").unlink()
    (prepared.cache_dir / f"{prepared.case_ids[1]}.json").unlink()
    (prepared.cache_dir / f".{prepared.case_ids[2]}.img.npy.tmp").write_bytes(b"half")
    again = prepare_task(task, data, num_folds=3, workers=1)
    assert first.stat().st_mtime_ns == mtime  # finished cases are not redone
    assert (again.cache_dir / f"{prepared.case_ids[1]}.json").is_file()
    assert not list(again.cache_dir.glob(".*.tmp"))


def test_a_full_disk_while_caching_names_the_array_not_written(tmp_path: Path) -> None:
    from medseg_bench.data.preprocess import _save_npy_atomic
    from medseg_bench.files import private_temp

    target = tmp_path / "case_001.img.npy"
    private_temp(target).symlink_to("/dev/full")  # every write: ENOSPC, with no file name
    with pytest.raises(OSError) as info:
        _save_npy_atomic(target, np.zeros((4, 4), np.float32))
    assert info.value.filename == str(target) and "No space left" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_disk_that_fills_part_way_through_an_array_says_why(tmp_path: Path) -> None:
    # numpy wrote a file object through C's fwrite, whose short write it reported without an errno:
    # "error: FILE: 61880 requested and 12160 written" on a full disk. A file-size limit cuts writes as a
    # full disk does, part way (EFBIG instead of ENOSPC), without a disk to fill.
    import subprocess
    import sys

    script = (
        "import errno, resource, signal, sys\n"
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from medseg_bench.data.preprocess import _save_npy_atomic\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (12160, 12160))\n"
        "try:\n"
        "    _save_npy_atomic(Path(sys.argv[1]), np.zeros((10, 100, 100), np.float32))\n"
        "except OSError as exc:\n"
        "    print(exc.errno == errno.EFBIG, exc.filename, exc.strerror)\n"
    )
    target = tmp_path / "case_001.img.npy"
    out = subprocess.run([sys.executable, "-c", script, str(target)], capture_output=True, text=True,
                         check=True).stdout
    assert out == f"True {target} File too large\n"
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cache_entry_is_named(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path, "Task90_Synth")
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = prepared.cache_dir / f"{prepared.case_ids[0]}.img.npy"
    path.write_bytes(b"garbage")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: corrupt cache entry"):  # the file, named
        load_case(prepared.cache_dir, prepared.case_ids[0])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_a_damaged_cache_stops_prepare_before_any_run(home: Path, tmp_path: Path, damage: str) -> None:
    # It was found only by the run that happened to sample the case (exit 5 then), or trained on.
    data = _fetched(home, tmp_path, "Task90_Synth")
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = prepared.cache_dir / f"{prepared.case_ids[-1]}.seg.npy"
    if damage == "garbage":
        path.write_bytes(b"garbage")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-10])
    else:
        path.unlink()
    with pytest.raises(DataError, match=rf"^{path}: corrupt cache entry .*; delete {prepared.cache_dir} to"):
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)



def test_a_label_the_task_file_no_longer_declares_stops_prepare_naming_the_file(
        home: Path, tmp_path: Path) -> None:
    # The task file's labels edited after preprocessing (2 removed): the cached label maps still held 2, and
    # every run failed with "index 2 is out of bounds for dimension 1 with size 2", no file named.
    data = _fetched(home, tmp_path, "Task90_Synth")
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = write_task_file(home, "Task90_Synth", labels={0: "background", 1: "outer"})
    with pytest.raises(DataError) as error:
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    cases = len(prepared.case_ids)
    assert str(error.value) == (f"{path}: label value(s) 2 (in {cases} of {cases} cases) of Task90_Synth's "
                                "label maps not among its labels (0, 1), edited since the task was "
                                "preprocessed: declare every value the label maps hold")
    write_task_file(home, "Task90_Synth", labels={0: "background", 1: "outer", 2: "core", 3: "new"})
    again = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    assert again.cache_dir == prepared.cache_dir


@pytest.mark.parametrize("stage", ["fingerprint", "cache"])
@pytest.mark.parametrize("replaced", ["image", "label"])
def test_a_file_replaced_since_validation_is_named_by_the_stage_that_reads_it(
        home: Path, tmp_path: Path, stage: str, replaced: str) -> None:
    # A label value past the task's classes failed the run that trained on it ("index 4 is out of bounds for
    # dimension 1 with size 4", no file named); an image of 1 channel for a task of 2 failed the cache with
    # "the plan of Task91_Multi normalises 2 channel(s); this image has 1", and the fingerprint took it.
    import shutil

    data = _fetched(home, tmp_path, "Task91_Multi", channels=2)
    task = get_task("Task91_Multi")
    if stage == "cache":  # fingerprint and plan made; the cache is built again (an edited plan, say)
        shutil.rmtree(prepare_task(task, data, num_folds=3, workers=1).cache_dir)
    case = data / "Task91_Multi" / ("imagesTr" if replaced == "image" else "labelsTr") / "case_001.nii.gz"
    other = make_synthetic_task(tmp_path / "other", num_cases=2, channels=1)  # the same shape
    if replaced == "image":
        shutil.copy(other / "imagesTr" / "case_001.nii.gz", case)
        problem = "image has 1 modality, the task declares 2"
    else:
        label, geometry = read_label(case)
        label[label == 2] = 5
        write_label(label, geometry, case)
        problem = "label values [5] not among Task91_Multi's labels (0, 1, 2)"
    with pytest.raises(DataError) as error:
        prepare_task(task, data, num_folds=3, workers=1)
    assert str(error.value) == (f"{case}: {problem} (changed since Task91_Multi was validated? "
                                "`validate Task91_Multi` checks it)")


def _damaged_properties(text: str, damage: str) -> str:
    props = json.loads(text)
    if damage == "no crop_box":
        del props["crop_box"]
    elif damage == "foreground of pairs":
        props["foreground"] = {k: [c[:2] for c in coords] for k, coords in props["foreground"].items()}
    elif damage == "crop box past the image":
        props["crop_box"][0][1] = props["shape_original_zyx"][0] + 1
    return json.dumps(props)


@pytest.mark.parametrize("damage", ["{", '{"foo": 1}', "[]", "no crop_box", "foreground of pairs",
                                    "crop box past the image"])
def test_a_damaged_case_json_stops_prepare_before_any_run(home: Path, tmp_path: Path, damage: str) -> None:
    # It was found by the run that read it: a bare KeyError 'crop_box' after training (exit 5), or for "{"
    # a message naming `<case>` without `.json`.
    data = _fetched(home, tmp_path, "Task90_Synth")
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    path = prepared.cache_dir / f"{prepared.case_ids[-1]}.json"
    path.write_text(damage if damage[0] in "{[" else _damaged_properties(path.read_text(), damage))
    named, cache = re.escape(str(path)), re.escape(str(prepared.cache_dir))
    with pytest.raises(DataError, match=rf"^{named}: corrupt cache entry \(.+\); delete {cache} to rebuild$"):
        prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1)
    if damage in ("{", "[]"):  # what a run reads, if damaged after the check (its fields: the check's)
        with pytest.raises(DataError, match=rf"^{named}: corrupt cache entry"):
            load_case(prepared.cache_dir, prepared.case_ids[-1])


def test_not_fetched_is_a_clear_error(home: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run `medseg-bench fetch Task04_Hippocampus` first"):
        prepare_task(get_task("Task04_Hippocampus"), home / "data")  # the default data dir
    with pytest.raises(DataError, match=f"run `medseg-bench fetch Task04_Hippocampus --data-dir {tmp_path}` "
                                        "first"):
        prepare_task(get_task("Task04_Hippocampus"), tmp_path)


def test_splits_are_deterministic_disjoint_and_cover() -> None:
    ids = [f"c{i:03d}" for i in range(23)]
    a, b = make_splits(ids, 5), make_splits(list(reversed(ids)), 5)
    assert a == b
    vals = [set(f["val"]) for f in a]
    assert set().union(*vals) == set(ids) and sum(len(v) for v in vals) == 23
    for fold in a:
        assert not set(fold["train"]) & set(fold["val"])
    with pytest.raises(DataError):
        make_splits(ids[:3], 5)


def test_user_splits_file_is_honoured(home: Path, tmp_path: Path) -> None:
    data = _fetched(home, tmp_path, "Task90_Synth")
    task = get_task("Task90_Synth")
    ids = sorted(prepare_task(task, data, num_folds=3, workers=1).case_ids)
    custom = [
        {"train": ids[2:], "val": ids[:2]},
        {"train": ids[:2] + ids[4:], "val": ids[2:4]},
        {"train": ids[:4], "val": ids[4:]},
    ]
    (data / "preprocessed" / "Task90_Synth" / "splits_3fold.json").write_text(json.dumps(custom))
    assert prepare_task(task, data, num_folds=3, workers=1).splits == custom


@pytest.mark.parametrize(("splits", "problem"), [
    ({"train": [], "val": []}, 'not a list of folds, each {"train": [case ids], "val": [case ids]}'),
    ([{"train": ["x"]}] * 3, 'fold 0 is not {"train": [case ids], "val": [case ids]}'),
    ([{"train": [1], "val": [2]}] * 3, "fold 0 is not"),
    ("overlap", "fold 1 trains on held-out case(s) "),
    ("empty", "fold 2 holds out no case"),
    ("no training", "fold 2 trains on no case"),
    ("val twice", "fold 1 lists case(s) case_002, case_003 twice in its val list"),
    ("train twice", "fold 0 lists case(s) case_003 twice in its train list"),
])
def test_a_malformed_user_splits_file_is_one_line(home: Path, tmp_path: Path, splits: object,
                                                    problem: str) -> None:
    # A JSON object or a fold without "val" was a traceback (TypeError/KeyError); a held-out case also in
    # training, or a fold holding out nothing, was accepted and inflated or emptied that fold's scores.
    data = _fetched(home, tmp_path, "Task90_Synth")
    task = get_task("Task90_Synth")
    ids = sorted(prepare_task(task, data, num_folds=3, workers=1).case_ids)
    if splits == "overlap":
        splits = [{"train": ids[2:], "val": ids[:2]}, {"train": ids, "val": ids[2:4]},
                  {"train": ids[:4], "val": ids[4:]}]
    elif splits == "empty":
        splits = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2] + ids[4:], "val": ids[2:4]},
                  {"train": ids, "val": []}]
    elif splits == "no training":  # numpy's "high <= 0" when the run drew its first batch
        splits = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2] + ids[4:], "val": ids[2:4]},
                  {"train": [], "val": ids[4:]}]
    elif splits == "val twice":  # trained, then scored each twice: the new run's metrics.csv "damaged"
        splits = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2] + ids[4:], "val": ids[2:4] * 2},
                  {"train": ids[:4], "val": ids[4:]}]
    elif splits == "train twice":  # accepted without a word
        splits = [{"train": ids[2:] + ids[3:4], "val": ids[:2]},
                  {"train": ids[:2] + ids[4:], "val": ids[2:4]}, {"train": ids[:4], "val": ids[4:]}]
    path = data / "preprocessed" / "Task90_Synth" / "splits_3fold.json"
    path.write_text(json.dumps(splits))
    with pytest.raises(DataError) as info:
        prepare_task(task, data, num_folds=3, workers=1)
    assert str(info.value).startswith(f"{path}: {problem}"), str(info.value)


@pytest.mark.parametrize("damage", ["{", "[]", ""])
def test_a_damaged_cache_marker_is_rebuilt_from_the_cases_on_disk(home: Path, tmp_path: Path,
                                                                   damage: str) -> None:
    # complete.json cut short was a JSONDecodeError traceback; it is ours, so the cache is checked and kept.
    data = _fetched(home, tmp_path, "Task90_Synth")
    task = get_task("Task90_Synth")
    prepared = prepare_task(task, data, num_folds=3, workers=1)
    first = prepared.cache_dir / f"{prepared.case_ids[0]}.img.npy"
    mtime = first.stat().st_mtime_ns
    (prepared.cache_dir / "complete.json").write_text(damage)
    cases = usable_cases(task, data)
    assert not is_built(prepared.cache_dir, cases)  # what `sweep --dry-run` counts as a cache to build
    assert caches_to_build(cases, prepared.plan, prepared.cache_dir.parent) == [(prepared.cache_dir, False)]
    again = prepare_task(task, data, num_folds=3, workers=1)
    assert is_built(again.cache_dir, cases) and not is_built(again.cache_dir, cases[1:])
    assert first.stat().st_mtime_ns == mtime  # nothing was preprocessed again
    assert json.loads((again.cache_dir / "complete.json").read_text())["cases"] == sorted(prepared.case_ids)


def test_crop_box_does_not_depend_on_the_label(home: Path, tmp_path: Path) -> None:
    # A held-out case is cropped as `predict` crops an image: on its non-zero voxels alone. Label voxels where
    # the image is zero once widened the box, so a run's score depended on its reference.
    from dataclasses import replace

    from medseg_bench.data.preprocess import preprocess_image

    data = _fetched(home, tmp_path, "Task93_Crop")
    plan = replace(prepare_task(get_task("Task93_Crop"), data, num_folds=3, workers=1).plan,
                   crop_to_nonzero=True)
    image = np.zeros((1, 12, 20, 20), np.float32)
    image[0, 2:8, 4:14, 4:14] = np.random.default_rng(0).normal(2, 1, (6, 10, 10))
    label = np.zeros((12, 20, 20), np.uint8)
    label[5:11, 10:18, 10:18] = 1
    with_label, cropped_label, grid = preprocess_image(image, (1.0, 1.0, 1.0), plan, label)
    alone, _, grid_alone = preprocess_image(image, (1.0, 1.0, 1.0), plan)
    assert grid["crop_box"] == grid_alone["crop_box"] == [[2, 8], [4, 14], [4, 14]]
    assert np.array_equal(with_label, alone)
    assert cropped_label is not None and cropped_label.shape == (6, 10, 10)


def test_two_equally_coarse_axes_are_resampled_together(home: Path, tmp_path: Path) -> None:
    # nnU-Net resamples no axis on its own when two share the coarsest spacing; cache format 3 took the first.
    from dataclasses import replace

    from medseg_bench.data.preprocess import preprocess_image
    from medseg_bench.data.resample import resample_image, resample_label

    data = _fetched(home, tmp_path, "Task90_Synth")
    plan = replace(prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1).plan,
                   target_spacing=(1.0, 1.0, 1.0), crop_to_nonzero=False)
    rng = np.random.default_rng(0)
    image = rng.normal(5.0, 1.0, (1, 6, 6, 20)).astype(np.float32)
    label = (rng.random((6, 6, 20)) > 0.5).astype(np.uint8)
    out, out_label, _ = preprocess_image(image, (3.5, 3.5, 1.0), plan, label)
    assert out.shape == (1, 21, 21, 20)
    normalized = (image - image.mean()) / image.std()
    assert np.allclose(out, resample_image(normalized, (21, 21, 20), separate_axis=None), atol=1e-4)
    assert not np.allclose(out, resample_image(normalized, (21, 21, 20), separate_axis=0), atol=1e-2)
    assert np.array_equal(out_label, resample_label(label, (21, 21, 20), separate_axis=None))


def test_labels_are_resampled_with_nnunets_outside_region(home: Path, tmp_path: Path) -> None:
    """Background outside the image's non-zero mask (holes filled, any channel) is its own label while the
    label map is resampled, as nnU-Net's -1; a hole inside the mask is not."""
    from dataclasses import replace

    from medseg_bench.data.preprocess import preprocess_image
    from medseg_bench.data.resample import resample_label

    data = _fetched(home, tmp_path, "Task90_Synth")
    plan = replace(prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1).plan,
                   target_spacing=(1.0, 0.8, 0.8))
    image = np.full((1, 4, 20, 20), 5.0, np.float32)
    image[:, :, 5:12, :4] = 0.0  # open to the edge: outside the mask
    image[:, :, 15, 15] = 0.0  # a hole: inside
    label = np.zeros((4, 20, 20), np.uint8)
    label[:, 5:12, 4:9] = 1
    label[:, 8:10, 1:3] = 2
    _, out_label, _ = preprocess_image(image, (1.0, 0.67, 0.67), plan, label)
    outside = np.zeros(label.shape, bool)
    outside[:, 5:12, :4] = True
    assert np.array_equal(out_label, resample_label(label, (4, 17, 17), outside=outside))
    assert not np.array_equal(out_label, resample_label(label, (4, 17, 17)))


def test_mr_channels_are_z_scored_after_cropping_with_one_mask_rule(home: Path, tmp_path: Path) -> None:
    # Version 4 z-scored before cropping and chose the non-zero mask case by case: a zero border of 19 % of
    # the volume moved the tissue's mean to +0.36 here. nnU-Net crops first, decides the mask per dataset.
    from dataclasses import replace

    from medseg_bench.data.plan import Plan
    from medseg_bench.data.preprocess import preprocess_image

    data = _fetched(home, tmp_path, "Task90_Synth")
    plan = prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1).plan
    assert plan.channel_normalization == ({"scheme": "zscore", "nonzero_mask": False},)  # no zero border
    rng = np.random.default_rng(0)
    image = np.zeros((1, 20, 20, 20), np.float32)
    image[0, :, 1:19, 0:19] = rng.normal(50.0, 10.0, (20, 18, 19))  # 81 % non-zero
    unit = (1.0, 1.0, 1.0)
    tissue, _, grid = preprocess_image(image, unit, replace(plan, target_spacing=unit))
    assert grid["crop_box"] == [[0, 20], [1, 19], [0, 19]]
    assert abs(float(tissue.mean())) < 1e-4 and float(tissue.std()) == pytest.approx(1.0, abs=1e-4)
    old = Plan.from_dict({k: v for k, v in plan.to_dict().items() if k != "channel_normalization"}
                         | {"normalization": "zscore", "target_spacing": [1.0, 1.0, 1.0]})
    legacy, _, _ = preprocess_image(image, unit, old)  # a run on a version-4 plan is predicted as it trained
    assert float(legacy.mean()) > 0.3
    # Skull-stripped data (the mask rule on): statistics inside the non-zero mask, holes filled, 0 outside.
    ball = np.zeros((1, 20, 20, 20), np.float32)
    zz, yy, xx = np.mgrid[:20, :20, :20]
    inside = (zz - 10) ** 2 + (yy - 10) ** 2 + (xx - 10) ** 2 < 64
    ball[0][inside] = rng.normal(50.0, 10.0, int(inside.sum()))
    ball[0, 10, 10, 10] = 0.0  # a hole: inside the mask all the same
    masked = replace(plan, target_spacing=unit,
                     channel_normalization=({"scheme": "zscore", "nonzero_mask": True},))
    out, _, grid = preprocess_image(ball, unit, masked)
    box = [slice(a, b) for a, b in grid["crop_box"]]
    kept = inside[tuple(box)]
    assert float(out[0][kept].mean()) == pytest.approx(0.0, abs=1e-4) and (out[0][~kept] == 0).all()
    hole = tuple(10 - b.start for b in box)
    assert out[0][hole] < -3  # the filled hole is inside the mask: (0 - 50) / 10, not 0


def test_2d_runs_that_keep_their_slices_get_a_cache_of_their_own_on_thick_slices(home: Path,
                                                                                   tmp_path: Path) -> None:
    """nnU-Net's 2d configuration: the plan's spacing in plane, each case's own along the slice axis. On
    slices of 2-5 mm (the plan's 2.3 mm) the 3D cache resamples them, so 2D runs get `<hash>-2d`."""
    from medseg_bench.data.preprocess import original_label
    from medseg_bench.data.resample import to_original
    from tests.conftest import make_anisotropic_ct_task

    write_task_file(home, "Task93_Aniso", ct=True)
    src = make_anisotropic_ct_task(tmp_path / "src" / "Task93_Aniso")
    data = tmp_path / "data"
    fetch_task(get_task("Task93_Aniso"), data, str(src), progress=False)
    without = prepare_task(get_task("Task93_Aniso"), data, num_folds=2, workers=1)
    with pytest.raises(RuntimeError, match="prepared without the cache of 2D runs"):
        without.cache_for(own_slices=True)
    root, cases = without.cache_dir.parent, usable_cases(get_task("Task93_Aniso"), data)
    own_dir = without.cache_dir.with_name(without.cache_dir.name + "-2d")
    # before the 3D cache is built, the fingerprint tells as much (what a dry run and the memory check read)
    built = without.cache_dir.with_name("built")
    without.cache_dir.rename(built)
    assert caches_to_build(cases, without.plan, root, own_slices=True) == [(without.cache_dir, False),
                                                                           (own_dir, True)]
    built.rename(without.cache_dir)
    assert caches_to_build(cases, without.plan, root) == []
    assert caches_to_build(cases, without.plan, root, own_slices=True) == [(own_dir, True)]  # what is built
    prepared = prepare_task(get_task("Task93_Aniso"), data, num_folds=2, workers=1, own_slices=True)
    assert caches_to_build(cases, prepared.plan, root, own_slices=True) == []
    assert prepared.cache_dir == without.cache_dir == prepared.cache_for(own_slices=False)
    assert prepared.own_slices_dir == prepared.cache_dir.with_name(prepared.cache_dir.name + "-2d")
    assert prepared.cache_for(own_slices=True) == prepared.own_slices_dir
    assert json.loads((prepared.own_slices_dir / "complete.json").read_text())["own_slices"] is True
    for case in prepared.case_ids:
        image, label, props = load_case(prepared.own_slices_dir, case)
        z_mm = props["spacing_original_zyx"][0]
        assert image.shape[1:] == label.shape == (8, 32, 32)  # 8 slices kept; 0.8 mm pixels already
        assert props["spacing_preprocessed_zyx"] == pytest.approx([z_mm, 0.8, 0.8])
        assert load_case(prepared.cache_dir, case)[1].shape == (round(8 * z_mm / 2.3), 32, 32)
        # only cropped: mapped back, the cached label is the original exactly
        assert np.array_equal(to_original(np.asarray(label), props), original_label(props)[0])


def test_where_no_case_is_resampled_2d_runs_read_the_3d_cache(home: Path, tmp_path: Path) -> None:
    """1 mm isotropic cases (as Task04_Hippocampus): keeping the slices changes nothing, nothing is built."""
    data = _fetched(home, tmp_path, "Task90_Synth", num_cases=4)
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=2, workers=1, own_slices=True)
    assert prepared.own_slices_dir == prepared.cache_dir
    cases, root = usable_cases(get_task("Task90_Synth"), data), prepared.cache_dir.parent
    assert caches_to_build(cases, prepared.plan, root, own_slices=True) == []  # none to build for them
    assert [p.name for p in prepared.cache_dir.parent.iterdir() if p.is_dir()] == [prepared.cache_dir.name]
    # nor before the 3D cache is built (a dry run announced a `-2d` cache the sweep never built), unless the
    # fingerprint does not hold every case: then the larger outcome is counted
    import shutil

    shutil.rmtree(prepared.cache_dir)
    assert caches_to_build(cases, prepared.plan, root, own_slices=True) == [(prepared.cache_dir, False)]
    fingerprint = root / "fingerprint.json"
    fp = json.loads(fingerprint.read_text())
    fingerprint.write_text(json.dumps(fp | {"cases": fp["cases"][1:]}))
    assert caches_to_build(cases, prepared.plan, root, own_slices=True)[1:] == [
        (prepared.cache_dir.with_name(prepared.cache_dir.name + "-2d"), True)]


def test_the_non_zero_mask_is_filled_once_and_equals_the_whole_images_cropped(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resampled, skull-stripped case needs the filled non-zero mask twice (z-score statistics, the label's
    outside region): it is filled once, on the crop, which equals the whole image's mask cropped."""
    from dataclasses import replace

    from medseg_bench.data import normalize as normalize_module
    from medseg_bench.data import preprocess
    from medseg_bench.data.normalize import nonzero_mask
    from medseg_bench.data.resample import crop, nonzero_box

    rng = np.random.default_rng(3)
    for _ in range(20):  # sparse blobs with holes, some touching the image's faces
        image = np.zeros((2, 9, 14, 13), np.float32)
        image[0] = rng.random((9, 14, 13)) < 0.35
        image[1, :, rng.integers(0, 14)] = 2.0
        box = nonzero_box(image)
        assert np.array_equal(nonzero_mask(crop(image, box)), crop(nonzero_mask(image), box))

    data = _fetched(home, tmp_path, "Task90_Synth")
    plan = replace(prepare_task(get_task("Task90_Synth"), data, num_folds=3, workers=1).plan,
                   target_spacing=(1.0, 0.8, 0.8),
                   channel_normalization=({"scheme": "zscore", "nonzero_mask": True},))
    image = np.zeros((1, 6, 20, 20), np.float32)
    image[:, 1:5, 2:18, 3:17] = rng.normal(50, 5, (1, 4, 16, 14))
    image[:, :, 6:9, 3:6] = 0.0  # open to the box's face: outside the mask
    label = np.zeros((6, 20, 20), np.uint8)
    label[1:5, 6:12, 4:10] = 1
    calls: list[tuple[int, ...]] = []

    def counted(array: np.ndarray) -> np.ndarray:
        calls.append(array.shape)
        return nonzero_mask(array)

    monkeypatch.setattr(preprocess, "nonzero_mask", counted)
    monkeypatch.setattr(normalize_module, "nonzero_mask", counted)
    normalized, out_label, grid = preprocess.preprocess_image(image, (1.0, 0.67, 0.67), plan, label)
    assert calls == [(1, 4, 16, 14)]  # once, on the crop
    assert grid["crop_box"] == [[1, 5], [2, 18], [3, 17]]
    assert normalized.shape[1:] == out_label.shape != (4, 16, 14)  # resampled


def test_a_case_changed_since_it_was_cached_stops_prepare(home: Path, tmp_path: Path) -> None:
    """A label edited (or a task fetched again into the same data dir) after its cache was built: training
    read the earlier arrays while evaluation scored against the new label file. Now prepare names the file. A
    file only touched has the same md5 and is recorded anew; so is a moved data dir, whose paths evaluation
    reads."""
    import os
    import shutil

    from medseg_bench.data.preprocess import original_label

    data = _fetched(home, tmp_path, "Task90_Synth")
    task = get_task("Task90_Synth")
    prepared = prepare_task(task, data, num_folds=3, workers=1)
    case = prepared.case_ids[0]
    entry = prepared.cache_dir / f"{case}.json"
    label_path = data / "Task90_Synth" / "labelsTr" / f"{case}.nii.gz"
    recorded = json.loads(entry.read_text())["sources"]
    assert recorded["label"]["size"] == label_path.stat().st_size and len(recorded["image"]["md5"]) == 32

    stat = label_path.stat()
    os.utime(label_path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the same contents
    prepare_task(task, data, num_folds=3, workers=1)
    assert json.loads(entry.read_text())["sources"]["label"]["mtime_ns"] == stat.st_mtime_ns + 10**9

    moved = tmp_path / "moved"
    shutil.move(data, moved)
    again = prepare_task(task, moved, num_folds=3, workers=1)
    new_label = (moved / "Task90_Synth" / "labelsTr" / f"{case}.nii.gz").resolve()
    props = json.loads((again.cache_dir / f"{case}.json").read_text())
    assert props["label"] == str(new_label) and props["image"].startswith(str(moved.resolve()))
    assert original_label(props)[0].shape == read_label(new_label)[0].shape  # read from where it is now

    label, geometry = read_label(new_label)
    label[label == 2] = 1  # a corrected label, same size on disk or not
    write_label(label, geometry, new_label)
    with pytest.raises(DataError) as error:
        prepare_task(task, moved, num_folds=3, workers=1)
    root = moved / "preprocessed" / "Task90_Synth"
    assert re.fullmatch(
        rf"{re.escape(str(new_label))}: changed since Task90_Synth was preprocessed "
        rf"\(md5 [0-9a-f]{{32}}, now [0-9a-f]{{32}}\): its fingerprint, plan and cache describe the earlier "
        rf"data; delete {re.escape(str(root))} to plan and preprocess Task90_Synth again "
        rf"\(a splits file of your own in it: keep a copy; finished runs keep their results\)",
        str(error.value)), str(error.value)
    shutil.rmtree(root)
    assert prepare_task(task, moved, num_folds=3, workers=1).case_ids == prepared.case_ids


def test_the_training_images_orientation_is_read_from_the_cache(home: Path, tmp_path: Path) -> None:
    """The orientation most of the cases are stored in, from their cache entries (no image is read); an
    entry without a geometry, or a case without an entry, does not count."""
    import SimpleITK as sitk

    from medseg_bench.data.msd import training_cases

    data = _fetched(home, tmp_path, "Task92_Turned", num_cases=5)
    for case in training_cases(data / "Task92_Turned")[:3]:  # stored with MSD's usual direction
        for path in (case.image, case.label):
            image = sitk.ReadImage(str(path))
            image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
            sitk.WriteImage(image, str(path))
    prepared = prepare_task(get_task("Task92_Turned"), data, num_folds=2, workers=1)
    ids = prepared.case_ids
    assert stored_orientation(prepared.cache_dir, ids) == "RAS"
    assert stored_orientation(prepared.cache_dir, ids[3:]) == "LPS"
    for case_id in ids[:2]:  # two of the three RAS entries without a geometry: LPS is now most of them
        entry = prepared.cache_dir / f"{case_id}.json"
        props = json.loads(entry.read_text())
        del props["geometry"]
        entry.write_text(json.dumps(props))
    assert stored_orientation(prepared.cache_dir, ids) == "LPS"
    assert stored_orientation(prepared.cache_dir, ["no_such_case"]) is None


def _renamed_case(src: Path, index: int, name: str) -> None:
    """Give case `index` of a synthetic task the file name `name` (its image, label and dataset.json)."""
    meta = json.loads((src / "dataset.json").read_text())
    entry = meta["training"][index]
    for key in ("image", "label"):
        old = src / entry[key]
        old.rename(old.with_name(name))
        entry[key] = str(Path(entry[key]).with_name(name))
    (src / "dataset.json").write_text(json.dumps(meta))


def test_a_long_case_name_is_cached_and_one_too_long_for_the_cache_is_excluded(home: Path,
                                                                             tmp_path: Path) -> None:
    # A case named with 240 characters: its cache's temps (`.NAME.img.npy.HOST.PID.tmp`) were "File name too
    # long" in every sweep; one of 248 fits the file system, but not with '.img.npy' in the cache.
    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth")
    long, too_long = "a" * 240, "b" * 248
    _renamed_case(src, 0, f"{long}.nii.gz")
    _renamed_case(src, 1, f"{too_long}.nii.gz")
    data = tmp_path / "data"
    report = fetch_task(get_task("Task90_Synth"), data, str(src), progress=False).report
    assert report is not None and [str(p).split("/")[-1] for p in report.problems] == [
        f"{too_long}.nii.gz: case name too long for the cache: 248 bytes (with '.img.npy', at most 247); "
        "rename its files (and their entries in dataset.json)"]
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=2, workers=1)
    assert long in prepared.case_ids and too_long not in prepared.case_ids
    assert (prepared.cache_dir / f"{long}.img.npy").is_file()
    assert not list(prepared.cache_dir.glob(".*.tmp"))


def test_the_source_digest_names_the_data_not_where_it_lies(home: Path, tmp_path: Path) -> None:
    """A run records which data it trained on (setup.json's `data`): the same files in another data dir are
    the same digest, another subset or a corrected label another one; a cache entry from before entries
    recorded md5s gives none rather than a digest of nothing."""
    import shutil

    from medseg_bench.data.preprocess import source_digest

    data = _fetched(home, tmp_path, "Task93_Digest", num_cases=4)
    task = get_task("Task93_Digest")
    prepared = prepare_task(task, data, num_folds=2, workers=1)
    ids = prepared.case_ids
    digest = source_digest(prepared.cache_dir, ids)
    assert digest is not None and re.fullmatch(r"[0-9a-f]{16}", digest)
    assert source_digest(prepared.cache_dir, list(reversed(ids))) == digest  # a set of cases, in case order
    assert source_digest(prepared.cache_dir, ids[:3]) != digest
    moved = tmp_path / "elsewhere"
    shutil.copytree(data, moved)
    assert source_digest(prepare_task(task, moved, num_folds=2, workers=1).cache_dir, ids) == digest
    label_path = moved / "Task93_Digest" / "labelsTr" / f"{ids[0]}.nii.gz"
    label, geometry = read_label(label_path)
    label[label == 2] = 1  # a corrected label: the same case ids, other data
    write_label(label, geometry, label_path)
    shutil.rmtree(moved / "preprocessed")
    assert source_digest(prepare_task(task, moved, num_folds=2, workers=1).cache_dir, ids) != digest
    entry = prepared.cache_dir / f"{ids[0]}.json"
    props = json.loads(entry.read_text())
    del props["sources"]
    entry.write_text(json.dumps(props))
    assert source_digest(prepared.cache_dir, ids) is None
    assert source_digest(prepared.cache_dir, ["no_such_case"]) is None


def test_a_task_is_planned_and_split_without_its_cache(home: Path, tmp_path: Path) -> None:
    # what a sweep checks its interrupted runs against before it builds the cache (`sweep.local`)
    from medseg_bench.data.preprocess import plan_task

    data = _fetched(home, tmp_path, "Task90_Synth", num_cases=4)
    planned = plan_task(get_task("Task90_Synth"), data, num_folds=2, workers=1)
    root = data / "preprocessed" / "Task90_Synth"
    assert planned.root == root and not [p for p in root.iterdir() if p.is_dir()]  # no cache
    assert sorted(p.name for p in root.iterdir()) == ["fingerprint.json", "plan.json", "splits_2fold.json"]
    prepared = prepare_task(get_task("Task90_Synth"), data, num_folds=2, workers=1)
    assert (prepared.plan, prepared.case_ids, prepared.splits) == (planned.plan, planned.case_ids,
                                                                   planned.splits)


def test_a_task_whose_lock_another_process_holds_is_waited_for_with_a_line(tmp_path: Path) -> None:
    # A sweep started beside another one that was building the task's cache sat silent for minutes.
    import threading

    from medseg_bench.data.preprocess import task_lock

    lines: list[str] = []
    asked = threading.Event()

    def second() -> None:
        with task_lock("Task04_Hippocampus", tmp_path, lambda line: (lines.append(line), asked.set())):
            lines.append("held")

    with task_lock("Task04_Hippocampus", tmp_path, lines.append):  # free: nothing said
        waiter = threading.Thread(target=second)
        waiter.start()
        assert asked.wait(timeout=30)  # a flock of another open file blocks, in one process too
        assert lines == [f"Task04_Hippocampus: another process is planning it or building its cache in "
                         f"{tmp_path / 'preprocessed'}; waiting for it"]
    waiter.join(timeout=30)
    assert lines[1:] == ["held"]
    assert (tmp_path / "preprocessed" / ".Task04_Hippocampus.lock").is_file()
