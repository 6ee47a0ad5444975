"""`medseg-bench predict`: geometry of the source image round-trips; the labels are the model's, unmoved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseg_bench.cli.app import app
from medseg_bench.data.catalog import get_task
from medseg_bench.data.fetch import fetch_task
from medseg_bench.data.io import read_image, read_label
from medseg_bench.data.preprocess import PreparedTask, prepare_task
from medseg_bench.inference import predict_image
from medseg_bench.postprocess import save_decision
from medseg_bench.postprocess_per_label import PerLabelDecision
from medseg_bench.spec import RunSpec
from medseg_bench.training import build_network, resolve_patch_and_batch
from tests.conftest import make_synthetic_task, postprocessing_decision, write_image, write_task_file

runner = CliRunner()
TASK = "Task93_Predict"
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated 90 degrees about z
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # the synthetic task's training images' ("LPS")
ORIGIN = (12.5, -30.0, 4.0)
SPACING = (0.9, 1.1, 1.6)


def _untrained_run(home: Path, tmp_path: Path, arch: str) -> tuple[Path, RunSpec, PreparedTask]:
    """A run folder with its spec and a checkpoint of an untrained 3D `arch`, on a fetched synthetic task."""
    write_task_file(home, TASK)
    src = make_synthetic_task(tmp_path / "src" / TASK, num_cases=4)
    data = home / "data"
    fetch_task(get_task(TASK), data, str(src), progress=False)
    prepared = prepare_task(get_task(TASK), data, num_folds=2, workers=1)
    folder, spec = _untrained_run_of(tmp_path, prepared, arch)
    return folder, spec, prepared


def _untrained_run_of(tmp_path: Path, prepared: PreparedTask, arch: str, dims: str = "3d",
                      seed: int = 0, task: str = TASK, target: str = "labels") -> tuple[Path, RunSpec]:
    spec = RunSpec(task=task, dims=dims, arch=arch, loss="dice_ce", aug="none", num_folds=2, seed=seed,
                   target=target)
    folder = tmp_path / "results" / task / spec.run_id
    (folder / "checkpoints").mkdir(parents=True)
    torch.manual_seed(seed)
    net = build_network(spec, prepared)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               folder / "checkpoints" / "last.ckpt")
    (folder / "spec.json").write_text(json.dumps({"run_id": spec.run_id, **spec.to_dict()}))
    return folder, spec


@pytest.fixture
def run_folder(home: Path, tmp_path: Path) -> tuple[Path, RunSpec, object]:
    """A run folder as `sweep` leaves it (spec, summary with plan, checkpoint) around an untrained 3D UNet."""
    folder, spec, prepared = _untrained_run(home, tmp_path, "unet")
    (folder / "summary.json").write_text(json.dumps({"plan": prepared.plan.to_dict()}))
    return folder, spec, prepared


def _write_oriented(path: Path, array: np.ndarray, spacing: tuple[float, float, float] = SPACING,
                    direction: tuple[float, ...] = DIRECTION) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_predictions_keep_source_geometry(run_folder, tmp_path: Path) -> None:
    import SimpleITK as sitk

    folder, spec, prepared = run_folder
    rng = np.random.default_rng(1)
    array = rng.normal(0, 1, (14, 22, 18)).astype(np.float32)
    array[3:9, 5:15, 4:12] += 3.0
    images = tmp_path / "images"
    _write_oriented(images / "new_case.nii.gz", array)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 prediction(s) written" in result.output
    written = sitk.ReadImage(str(out / "new_case.nii.gz"))
    assert written.GetSize() == (18, 22, 14)
    assert np.allclose(written.GetSpacing(), SPACING) and np.allclose(written.GetOrigin(), ORIGIN)
    assert np.allclose(written.GetDirection(), DIRECTION)
    # The written voxels are the model's prediction on the array as read: no axis swapped or flipped.
    image, geometry = read_image(images / "new_case.nii.gz")
    net = build_network(spec, prepared)
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    patch, _ = resolve_patch_and_batch(spec, prepared)
    expected = predict_image(net, image, geometry.spacing_zyx, prepared.plan, "3d", patch)
    labels, _ = read_label(out / "new_case.nii.gz")
    assert labels.shape == (14, 22, 18) and (labels == expected).all()

    again = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert again.exit_code == 0 and "exists, skipped" in again.output  # nothing silently overwritten
    # --tta for a run that never saw a mirrored image: a line, and the prediction without it.
    mirrored = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out",
                                   str(tmp_path / "t"), "--tta"])
    assert mirrored.exit_code == 0, mirrored.output
    assert "without --tta: its augmentation 'none' never mirrored a training image" in mirrored.output
    assert (read_label(tmp_path / "t" / "new_case.nii.gz")[0] == expected).all()


def test_an_image_named_with_escape_sequences_is_named_escaped(run_folder, tmp_path: Path) -> None:
    # A test set's file names (MSD's imagesTs comes in the archive) reached the terminal as they were
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "c\x1b]0;owned\x07.nii.gz", np.zeros((14, 22, 18), np.float32))
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out",
                                 str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert f"{tmp_path / 'pred'}/c\\x1b]0;owned\\x07.nii.gz\n" in result.output
    assert (tmp_path / "pred" / "c\x1b]0;owned\x07.nii.gz").is_file()


def test_an_image_stored_otherwise_than_the_training_images_is_named(run_folder, tmp_path: Path) -> None:
    """A Hippocampus image stored LPS (the same scan, its x and y axes reversed) where the training images are
    RAS: the network saw it mirrored and predicted Dice 0.39 and 0.20 instead of 0.87 and 0.85, without a
    word."""
    folder, _, _ = run_folder
    noise = np.random.default_rng(3).normal(0, 1, (12, 20, 20)).astype(np.float32)
    _write_oriented(tmp_path / "same" / "a.nii.gz", noise, direction=IDENTITY)
    same = runner.invoke(app, ["predict", str(folder), "--images", str(tmp_path / "same"), "--out",
                               str(tmp_path / "p1")])
    assert same.exit_code == 0, same.output
    assert same.stderr == ""
    turned = tmp_path / "turned" / "b.nii.gz"
    _write_oriented(turned, noise)  # rotated 90 degrees about z: its x axis runs along the world's y
    result = runner.invoke(app, ["predict", str(folder), "--images", str(turned.parent), "--out",
                                 str(tmp_path / "p2")])
    assert result.exit_code == 0, result.output
    assert result.stderr == (f"warning: {turned}: its axes are stored PRS, the training images' LPS: the "
                             "network sees it turned or mirrored and may segment it badly (predict does not "
                             "reorient unless asked, as nnU-Net); store it LPS, or pass --reorient, to "
                             "predict it as trained\n")
    assert (tmp_path / "p2" / "b.nii.gz").is_file()  # predicted all the same, as nnU-Net predicts it


def test_reorient_predicts_an_image_as_stored_like_the_training_images(run_folder, tmp_path: Path) -> None:
    """--reorient: an image stored PRS where the training images are LPS is predicted on its axes permuted
    and flipped to LPS (the same array as the scan stored LPS: the same labels), and written as stored."""
    import SimpleITK as sitk

    folder, _, _ = run_folder
    rng = np.random.default_rng(6)
    array = rng.normal(0, 1, (12, 20, 16)).astype(np.float32)
    array[2:8, 4:12, 3:9] += 3.0
    _write_oriented(tmp_path / "lps" / "a.nii.gz", array, direction=IDENTITY)
    turned = sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "lps" / "a.nii.gz")), "PRS")  # the same scan
    (tmp_path / "prs").mkdir()
    sitk.WriteImage(turned, str(tmp_path / "prs" / "a.nii.gz"))
    as_trained = runner.invoke(app, ["predict", str(folder), "--images", str(tmp_path / "lps"), "--out",
                                     str(tmp_path / "p_lps"), "--reorient"])
    assert as_trained.exit_code == 0 and as_trained.stderr == ""
    assert "--reorient" not in as_trained.stdout  # stored as trained: nothing to do
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "p_lps" / "a.nii.gz")))
    assert len(np.unique(expected)) > 1
    result = runner.invoke(app, ["predict", str(folder), "--images", str(tmp_path / "prs"), "--out",
                                 str(tmp_path / "p_prs"), "--reorient"])
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert (f"{tmp_path / 'prs' / 'a.nii.gz'}: stored PRS, predicted as stored LPS like the training images "
            "(--reorient); its label map written as the image is stored") in result.stdout
    written = sitk.ReadImage(str(tmp_path / "p_prs" / "a.nii.gz"))
    assert written.GetSize() == turned.GetSize()
    assert np.allclose(written.GetDirection(), turned.GetDirection())
    assert np.allclose(written.GetOrigin(), turned.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(sitk.DICOMOrient(written, "LPS")), expected)
    plain = runner.invoke(app, ["predict", str(folder), "--images", str(tmp_path / "prs"), "--out",
                                str(tmp_path / "p_plain")])
    assert plain.exit_code == 0 and "pass --reorient" in plain.stderr  # predicted as stored: other labels
    unturned = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "p_plain" / "a.nii.gz")),
                                                       "LPS"))
    assert not np.array_equal(unturned, expected)


def test_a_metaimage_without_its_data_file_is_refused_before_anything_is_written(run_folder,
                                                                                 tmp_path: Path) -> None:
    """Its header read fine, so `a.nii.gz` was predicted and written before `b.mhd` stopped the command."""
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32), direction=IDENTITY)
    _write_oriented(images / "b.mhd", np.zeros((12, 20, 20), np.float32), direction=IDENTITY)
    (images / "b.raw").unlink()
    args = ["predict", str(folder), "--images", str(images), "--out", str(tmp_path / "p")]
    result = runner.invoke(app, args)
    assert result.exit_code == 3
    assert result.stderr == (f"error: {images / 'b.mhd'}: its data file b.raw (ElementDataFile) is missing; "
                             "keep it beside the header\n")
    assert not (tmp_path / "p").exists()
    (images / "b.mhd").unlink()
    (images / "a.nii.gz").rename(images / "A.NII.GZ")  # read as ITK reads it; its writer needs `.nii.gz`
    upper = runner.invoke(app, args)
    assert upper.exit_code == 0, upper.output
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["A.nii.gz"]


def test_reorient_without_a_known_training_orientation_is_refused_before_any_work(
        run_folder, home: Path, tmp_path: Path) -> None:
    folder, _, _ = run_folder
    shutil.rmtree(home / "data" / TASK)  # no setup.json orientation, and the task not fetched here
    _write_oriented(tmp_path / "images" / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    result = runner.invoke(app, ["predict", str(folder), "--images", str(tmp_path / "images"), "--out",
                                 str(tmp_path / "p"), "--reorient"])
    assert result.exit_code == 2
    assert result.stderr == (f"error: --reorient: how {folder}'s training images are stored is not known "
                             f"here (its setup.json does not say, and {TASK} is not fetched here to read "
                             "them)\n")
    assert not (tmp_path / "p").exists()


def test_the_orientation_a_run_recorded_is_compared_without_the_task_fetched(run_folder, home: Path,
                                                                            tmp_path: Path) -> None:
    """A run's setup.json records how its training images are stored: predict compares with it where the
    task is not fetched (a run folder copied to another machine); a damaged record is named."""
    folder, _, _ = run_folder
    shutil.rmtree(home / "data" / TASK)
    setup = folder / "setup.json"
    setup.write_text(json.dumps({"patch_size": [16, 24, 24], "batch_size": 2, "orientation": "PRS"}))
    noise = np.random.default_rng(4).normal(0, 1, (12, 20, 20)).astype(np.float32)
    _write_oriented(tmp_path / "images" / "a.nii.gz", noise, direction=IDENTITY)
    args = ["predict", str(folder), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "p")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: {tmp_path / 'images' / 'a.nii.gz'}: its axes are stored LPS, "
                                    "the training images' PRS")
    setup.write_text(json.dumps({"patch_size": [16, 24, 24], "batch_size": 2, "orientation": None}))
    unknown = runner.invoke(app, args + ["--overwrite"])  # nothing recorded to compare with: no warning
    assert unknown.exit_code == 0 and unknown.stderr == ""
    setup.write_text(json.dumps({"patch_size": [16, 24, 24], "batch_size": 2, "orientation": 3}))
    damaged = runner.invoke(app, args + ["--overwrite"])
    assert damaged.exit_code == 3
    assert (f'{setup}: orientation must be an orientation such as "RAS" (one of L/R, P/A, S/I each) or null, '
            "not 3") in damaged.output


def test_save_probabilities_writes_each_images_class_probabilities_on_its_grid(run_folder,
                                                                              tmp_path: Path) -> None:
    """nnU-Net's --save_probabilities: NAME.npz beside the label map, the probabilities on the image's own
    grid (here resampled back from the plan's spacing), before postprocessing: the label map is their argmax,
    postprocessed, and itself as without them."""
    from medseg_bench.postprocess import apply_postprocessing

    folder, _, _ = run_folder
    decision = postprocessing_decision(True, {1: True, 2: True})
    save_decision(decision, folder)
    rng = np.random.default_rng(7)
    images = tmp_path / "images"
    array = rng.normal(0, 1, (12, 20, 16)).astype(np.float32)
    array[2:8, 4:12, 3:9] += 3.0
    _write_oriented(images / "a.nii.gz", array, direction=IDENTITY)
    _write_oriented(images / "b.nrrd", array[:, ::-1].copy(), direction=DIRECTION)  # turned: --reorient
    args = ["predict", str(folder), "--images", str(images), "--reorient", "--out"]
    plain = runner.invoke(app, [*args, str(tmp_path / "p1")])
    saved = runner.invoke(app, [*args, str(tmp_path / "p2"), "--save-probabilities"])
    assert plain.exit_code == 0 and saved.exit_code == 0, saved.output
    out = tmp_path / "p2"
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "a.npz", "b.npz", "b.nrrd"]
    postprocessed = 0
    for name in ("a.nii.gz", "b.nrrd"):
        labels, geometry = read_label(out / name)
        assert (labels == read_label(tmp_path / "p1" / name)[0]).all()  # as without --save-probabilities
        with np.load(out / f"{name.split('.')[0]}.npz") as stored:  # no pickle needed
            probabilities = stored["probabilities"]
            assert probabilities.dtype == np.float32 and probabilities.shape == (3, *labels.shape)
            assert np.allclose(probabilities.sum(0), 1.0, atol=1e-5)
            argmax = probabilities.argmax(0).astype(np.uint8)
            assert (apply_postprocessing(argmax, decision.steps) == labels).all()
            postprocessed += int((probabilities.argmax(0) != labels).sum())
            assert np.allclose(stored["spacing"], geometry.spacing)
            assert np.allclose(stored["direction"], geometry.direction)
            assert np.allclose(stored["origin"], geometry.origin)
    assert postprocessed  # the untrained net's scattered labels: the decision removed some
    # a label map without its probabilities is not predicted again without --overwrite, but named
    (out / "a.npz").unlink()
    again = runner.invoke(app, [*args, str(out), "--save-probabilities"])
    assert again.exit_code == 0, again.output
    assert (f"{out / 'a.nii.gz'}: exists, skipped (use --overwrite to replace); its probabilities a.npz are "
            "not there: --overwrite writes both") in again.stdout
    assert not (out / "a.npz").exists()
    # a label map replaced without them: the earlier probabilities, no longer its own, are removed
    replaced = runner.invoke(app, [*args, str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert (f"{out / 'b.npz'}: removed, the probabilities of the label map replaced (--save-probabilities "
            "writes them anew)") in replaced.stdout
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nrrd"]
    _write_oriented(images / "a.mha", array, direction=IDENTITY)  # two images of one case: one a.npz, and
    twice = runner.invoke(app, [*args, str(tmp_path / "p3")])  # two label maps evaluate would refuse
    assert twice.exit_code == 3
    assert twice.stderr == (f"error: {images / 'a.nii.gz'}: a.mha beside it is an image of the same case "
                            "'a'; keep one of the two\n")
    assert not (tmp_path / "p3").exists()


def test_orientation_names_where_each_axis_points() -> None:
    from medseg_bench.data.io import Geometry

    def orientation(direction: tuple[float, ...]) -> str | None:
        return Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), direction, (2, 2, 2)).orientation

    assert orientation((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)) == "RAS"  # MSD's usual header
    assert orientation(IDENTITY) == "LPS"
    assert orientation(DIRECTION) == "PRS"
    tilted = 0.5 ** 0.5  # 45 degrees about z: x and y equally near two world axes, named as ITK names them
    assert orientation((tilted, -tilted, 0.0, tilted, tilted, 0.0, 0.0, 0.0, 1.0)) == "LPS"
    assert Geometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), (2, 2)).orientation is None  # not 3D


def test_postprocessing_decision_is_applied(run_folder, tmp_path: Path) -> None:
    """The run's steps in order (nnU-Net v2's: here the foreground, then label 1), or a version-13 run's
    decision (postprocessing.json of that format): each label on its own, as it was decided."""
    from scipy import ndimage

    from medseg_bench.postprocess import apply_postprocessing

    folder, _, _ = run_folder
    images = tmp_path / "images"
    noise = np.random.default_rng(2).normal(0, 1, (12, 20, 20)).astype(np.float32)
    _write_oriented(images / "a.nii.gz", noise)
    out = tmp_path / "pred"
    checkpoint = folder / "checkpoints" / "last.ckpt"
    args = ["predict", str(checkpoint), "--images", str(images), "--out", str(out), "--overwrite"]
    save_decision(postprocessing_decision(True, {1: True, 2: True}), folder)
    plain = runner.invoke(app, [*args, "--no-postprocess"])
    assert plain.exit_code == 0, plain.output
    raw, _ = read_label(out / "a.nii.gz")
    cube = np.ones((3, 3, 3))
    assert [ndimage.label(raw == v, structure=cube)[1] > 1 for v in (1, 2)] == [True, True]  # scattered
    # components left of the foreground, label 1 and label 2 (None: not the decision's to say)
    for decision, components in ((postprocessing_decision(True, {1: True, 2: False}), (1, 1, None)),
                                 (PerLabelDecision({"1": True, "2": True}, {"1": 0.5, "2": 0.5},
                                                   {"1": 0.6, "2": 0.6}), (None, 1, 1))):
        save_decision(decision, folder)
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        labels, _ = read_label(out / "a.nii.gz")
        assert (labels == apply_postprocessing(raw, decision.steps)).all() and (labels != raw).any()
        for values, count in zip(((1, 2), (1,), (2,)), components, strict=True):
            assert count is None or ndimage.label(np.isin(labels, values), structure=cube)[1] == count


def test_errors_name_the_problem(run_folder, tmp_path: Path) -> None:
    folder, _, _ = run_folder
    missing = runner.invoke(app, ["predict", str(tmp_path / "nope"), "--images", str(tmp_path), "--out",
                                  str(tmp_path / "o")])
    assert missing.exit_code == 2 and "no such run folder or checkpoint" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["predict", str(folder), "--images", str(empty), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "no images" in result.output
    spec = json.loads((folder / "spec.json").read_text())
    (folder / "spec.json").write_text(json.dumps(spec | {"epochs": "8"}))
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and result.stderr == (
        f"error: {folder / 'spec.json'}: not a run spec of this version ('epochs' must be a whole number, "
        "not \"8\")\n")
    (folder / "spec.json").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and "not a run folder" in result.output



def test_a_zip_that_is_no_torch_checkpoint_is_named_in_the_projects_words(run_folder, tmp_path: Path) -> None:
    # It printed PyTorch's text: 'Expected hasRecord("version") to be true, but got false.  (Could this error
    # message be improved?  If so, please report an enhancement request to PyTorch.)'
    import zipfile

    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    ckpt = folder / "checkpoints" / "last.ckpt"
    ckpt.unlink()
    with zipfile.ZipFile(ckpt, "w") as archive:
        archive.writestr("notes/readme.txt", "not weights")
    for given in (folder, ckpt):
        result = runner.invoke(app, ["predict", str(given), "--images", str(images), "--out",
                                     str(tmp_path / "out")])
        assert result.exit_code == 3, result.output
        assert result.stderr == (f"error: {ckpt}: not a loadable medseg-bench checkpoint (not a torch "
                                 "checkpoint archive: a zip without torch's records; refused unread)\n")
    assert not (tmp_path / "out").exists()


def test_a_spec_json_lacking_a_key_exits_3_naming_it(tmp_path: Path) -> None:
    # It was a TypeError's traceback (RunSpec's missing positional arguments), exit 1.
    folder, images = tmp_path / "run", tmp_path / "images"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    (folder / "spec.json").write_text(json.dumps({"task": TASK, "dims": "3d", "arch": "unet"}))
    images.mkdir()
    args = ["predict", str(folder), "--images", str(images), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and result.stderr == (
        f"error: {folder / 'spec.json'}: not a run spec of this version (lacks loss, aug)\n")


def test_an_image_cut_short_exits_3_naming_it(run_folder, tmp_path: Path) -> None:
    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    path = images / "cut.nii.gz"
    _write_oriented(path, np.random.default_rng(2).normal(0, 1, (14, 22, 18)).astype(np.float32))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # `head -c half`: SimpleITK reads it, the lost voxels 0
    assert read_image(path)[0].shape == (1, 14, 22, 18)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: {path}: unreadable (gzip stream cut short)\n"
    assert not (out / "cut.nii.gz").exists()


def test_an_uncompressed_image_cut_short_is_named_before_anything_is_written(run_folder,
                                                                             tmp_path: Path) -> None:
    # It was named at its turn, after the label maps of the images before it were written.
    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    _write_oriented(images / "a.nii.gz", np.zeros((14, 22, 18), np.float32))
    path = images / "z.nii"
    _write_oriented(path, np.zeros((14, 22, 18), np.float32))
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-500])
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stderr == (f"error: {path}: truncated ({size - 500} bytes of the {size} the header "
                             "declares)\n")
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_an_image_with_nan_voxels_exits_3_naming_it(run_folder, tmp_path: Path, suffix: str) -> None:
    # A label map was written (exit 0): ITK reads a NIfTI's NaN as 0, another format keeps it as NaN.
    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    image = np.random.default_rng(2).normal(0, 1, (14, 22, 18)).astype(np.float32)
    image[3, 4, 5] = np.nan
    path = images / f"nan{suffix}"
    _write_oriented(path, image)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stderr == f"error: {path}: image holds NaN or inf voxels\n"
    assert not out.exists() or not list(out.iterdir())


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_out_folder_that_is_the_images_folder_is_refused(run_folder, tmp_path: Path) -> None:
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    (tmp_path / "link").symlink_to(images)
    before = _tree(images)
    for out in (images, tmp_path / "images" / ".." / "images", tmp_path / "link"):
        for extra in (["--overwrite"], []):
            result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out),
                                         *extra])
            assert result.exit_code == 2, result.output
            assert f"error: {out}: --out is the --images folder" in result.output
            assert len(result.output.strip().splitlines()) == 1 and "skipped" not in result.output
            assert _tree(images) == before  # the image is untouched, nothing added


def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(run_folder, tmp_path: Path) -> None:
    # it said `error: outfile: File exists` (exit 7) once the models were loaded, naming no option
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    taken = tmp_path / "outfile"
    taken.write_text("mine")
    under = taken / "sub"
    for out, message in ((taken, f"{taken}: --out is a file, not a folder"),
                         (under, f"{under}: --out cannot be made a folder: {taken} is a file")):
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {message}"), result.output
        assert len(result.output.strip().splitlines()) == 1
    assert taken.read_text() == "mine"


def test_an_out_or_image_that_is_a_broken_link_is_refused_naming_it(run_folder, tmp_path: Path) -> None:
    # --out: a traceback (RuntimeError: Symlink loop) or "File exists", exit 7; an image: left out without a
    # word ("1 prediction(s) written")
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    loop, dangling = tmp_path / "loop", tmp_path / "dangling"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "gone")
    for out, why in ((loop, "a link that leads back to itself"),
                     (dangling, f"a link to {tmp_path / 'gone'}, which does not exist")):
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output == (f"error: {out}: --out is {why}, not a folder: choose a folder for the label "
                                 "maps\n")
        under = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out",
                                    str(out / "x")])
        assert under.exit_code == 2, under.output
        assert under.output == f"error: {out / 'x'}: --out cannot be made a folder: {out} is {why}\n"
    (images / "b.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    out = tmp_path / "o"
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.output == (f"error: {images / 'b.nii.gz'}: a link to {tmp_path / 'gone.nii.gz'}, which "
                             "does not exist\n")
    assert not out.exists() or not list(out.iterdir())


def test_an_out_in_a_runs_folder_is_refused(run_folder, tmp_path: Path) -> None:
    # --out RUN/predictions --overwrite replaced the held-out predictions the run's metrics.csv scores
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    for out in (folder, folder / "predictions", folder / "checkpoints" / "new"):
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out),
                                     "--overwrite"])
        assert result.exit_code == 2, result.output
        assert result.output == (f"error: {out}: --out is in the folder of run {folder.name}, whose results "
                                 "are never replaced: choose a folder outside it\n")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_checkpoint_copied_in_from_another_run_is_refused(run_folder, tmp_path: Path) -> None:
    # another fold's last.ckpt copied into a run folder was used as that run's weights, without a word
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    ckpt = folder / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "medseg_bench_run_id": "3d-unet-dice_ce-none-f1-s0-0123456789"}, ckpt)
    for given in (folder, ckpt):
        result = runner.invoke(app, ["predict", str(given), "--images", str(images), "--out",
                                     str(tmp_path / "out")])
        assert result.exit_code == 3, result.output
        assert result.output == (f"error: {ckpt}: the weights of run 3d-unet-dice_ce-none-f1-s0-0123456789, "
                                 f"not of run {folder.name}, whose folder it is in; predict with that run's "
                                 "own folder\n")
    assert not (tmp_path / "out").exists()
    torch.save({**state, "medseg_bench_run_id": folder.name}, ckpt)  # its own: predicted
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("recorded", [True, False])
def test_a_run_is_refused_where_the_task_files_labels_are_not_those_it_trained_on(
        run_folder, home: Path, tmp_path: Path, recorded: bool) -> None:
    # Two label names swapped in the task file predicted each as the other, silently; a label removed failed
    # the checkpoint's load with PyTorch's "size mismatch", blamed on the checkpoint. A run from before
    # 2026-12-04 recorded no labels: the task file's version it trained on stands for them.
    import yaml

    from medseg_bench.regions import recorded_labels

    folder, _, prepared = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    setup = folder / "setup.json"
    if recorded:
        setup.write_text(json.dumps({"patch_size": list(prepared.plan.patch_3d),
                                     "labels": recorded_labels(get_task(TASK))}))
    task_file = home / "tasks" / f"{TASK}.yaml"
    data = yaml.safe_load(task_file.read_text())
    args = ["predict", str(folder), "--images", str(images), "--out", str(tmp_path / "out")]
    task_file.write_text(yaml.safe_dump({**data, "version": 2}))  # the same labels: a recorded run predicts
    result = runner.invoke(app, args)
    assert result.exit_code == (0 if recorded else 3), result.output
    if not recorded:
        assert result.output == (f"error: {setup}: the run trained on version 1 of the task file, which is "
                                 "version 2 now (its labels may differ; the run recorded none); restore the "
                                 f"task file's labels ({task_file}) to predict with this run\n")
    task_file.write_text(yaml.safe_dump({**data, "labels": {0: "background", 1: "core", 2: "outer"}}))
    result = runner.invoke(app, [*args, "--overwrite"])
    if recorded:
        assert result.exit_code == 3, result.output
        assert result.output == (f"error: {setup}: the run trained on labels 0=background, 1=outer, 2=core; "
                                 "the task file declares 0=background, 1=core, 2=outer; restore the task "
                                 f"file's labels ({task_file}) to predict with this run\n")
    else:  # nothing to tell it by: the version is the one it trained on
        assert result.exit_code == 0, result.output


def test_device_is_checked_before_any_work(run_folder, tmp_path: Path, monkeypatch) -> None:
    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    out = tmp_path / "pred"

    def predict(device: str):
        return runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out),
                                   "--device", device])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for device, message in (("cuda", "--device cuda: no CUDA GPU on this machine"),
                            ("cuda:0", "--device cuda:0: no CUDA GPU on this machine"),
                            ("foo", "--device foo: not a device; use cpu, cuda or cuda:N"),
                            ("cuda:x", "--device cuda:x: not a device"),
                            ("", "--device is empty: give a value")):
        result = predict(device)
        assert result.exit_code == 2, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    result = predict("cuda:1")
    assert result.exit_code == 2
    assert "--device cuda:1: this machine has 1 CUDA GPU(s) (cuda:0)" in result.output
    assert not out.exists()  # refused before anything was written
    result = predict("CPU")
    assert result.exit_code == 0, result.output
    assert (out / "a.nii.gz").is_file()


def _element_data_file(header: Path) -> str:
    lines = [line for line in header.read_text().splitlines() if line.startswith("ElementDataFile")]
    return lines[0].split("=", 1)[1].strip()


def test_mhd_prediction_names_its_own_data_file(run_folder, tmp_path: Path) -> None:
    import shutil

    import SimpleITK as sitk

    folder, _, _ = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "case1.mhd", np.zeros((12, 20, 20), np.float32))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["case1.mhd", "case1.zraw"]  # no temp file left
    assert _element_data_file(out / "case1.mhd") == "case1.zraw"
    moved = tmp_path / "elsewhere"  # the visible pair alone is the whole label map
    moved.mkdir()
    for name in ("case1.mhd", "case1.zraw"):
        shutil.copy(out / name, moved / name)
    written = sitk.ReadImage(str(moved / "case1.mhd"))
    assert written.GetSize() == (20, 20, 12)
    assert np.allclose(written.GetOrigin(), ORIGIN) and np.allclose(written.GetDirection(), DIRECTION)
    labels, _ = read_label(out / "case1.mhd")
    assert (labels == read_label(moved / "case1.mhd")[0]).all()


def test_write_label_mhd_pair_replaces_atomically(tmp_path: Path) -> None:
    import SimpleITK as sitk

    from medseg_bench.data.io import Geometry, write_label

    geometry = Geometry((0.5, 1.0, 2.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (5, 4, 3))
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 2, 3] = 2
    for value in (1, 2):  # the second write replaces the first pair
        labels[0, 0, 0] = value
        write_label(labels, geometry, tmp_path / "out" / "case1.mhd")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["case1.mhd", "case1.zraw"]
    assert _element_data_file(tmp_path / "out" / "case1.mhd") == "case1.zraw"
    image = sitk.ReadImage(str(tmp_path / "out" / "case1.mhd"))
    assert (sitk.GetArrayFromImage(image) == labels).all()
    assert np.allclose(image.GetSpacing(), (0.5, 1.0, 2.0))
    assert np.allclose(image.GetOrigin(), (1.0, 2.0, 3.0))


def test_an_unfinished_run_predicts_with_the_patch_it_trained_with(home: Path, tmp_path: Path) -> None:
    # No summary.json yet: predict took the patch from the task's current plan.json, which may have changed
    # since; for dynunet the patch shapes the network, so its weights no longer loaded.
    folder, spec, prepared = _untrained_run(home, tmp_path, "dynunet")
    patch, batch = resolve_patch_and_batch(spec, prepared)
    data = home / "data"
    (folder / "setup.json").write_text(json.dumps({"patch_size": list(patch), "batch_size": batch}))
    plan_path = data / "preprocessed" / TASK / "plan.json"
    plan_path.write_text(json.dumps(json.loads(plan_path.read_text()) | {"patch_3d": [8, 8, 8]}))
    images = tmp_path / "images"
    noise = np.random.default_rng(3).normal(0, 1, (12, 20, 20)).astype(np.float32)
    _write_oriented(images / "a.nii.gz", noise)
    args = ["predict", str(folder), "--images", str(images), "--out", str(tmp_path / "pred"),
            "--allow-unfinished"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (folder / "setup.json").write_text(json.dumps({"patch_size": [16, 0, 16], "batch_size": batch}))
    damaged = runner.invoke(app, [*args, "--overwrite"])
    assert damaged.exit_code == 3
    assert "setup.json: patch_size must be 3 positive whole numbers" in damaged.output
    # The target spacing edited since the run started: its images would be resampled otherwise than it trained
    (folder / "setup.json").write_text(json.dumps({"patch_size": list(patch), "batch_size": batch,
                                                   "preprocessing": prepared.plan.preprocessing}))
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    plan_path.write_text(json.dumps(json.loads(plan_path.read_text()) | {"target_spacing": [1.5, 1.0, 1.0]}))
    moved = runner.invoke(app, [*args, "--overwrite"])
    assert moved.exit_code == 3, moved.output
    assert "setup.json: the run trained with target spacing 1x1x1 mm, plan.json now 1.5x1x1 mm" in (
        moved.output)


def _loaded_net(folder: Path, spec: RunSpec, prepared: PreparedTask) -> torch.nn.Module:
    net = build_network(spec, prepared)
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    return net


@pytest.mark.parametrize("slice_mm", [1.6, 1.0])
def test_an_ensemble_predicts_the_mean_of_its_runs_probabilities(run_folder, tmp_path: Path,
                                                                  slice_mm: float) -> None:
    """A 3D and a 2D run (nnU-Net ensembles 3d_fullres and 2d). At 1.6 mm slices (the plan's 1 mm) the 2D run
    sees the image at its own slice spacing: each run's probabilities are mapped back to the image's grid,
    then averaged, as nnU-Net's exported ones. At 1 mm both see the same array: averaged, then mapped back."""
    from medseg_bench.data.preprocess import preprocess_image
    from medseg_bench.data.resample import to_original, to_original_probabilities
    from medseg_bench.inference import predict_probabilities
    from medseg_bench.training import run_slice_axis

    folder, spec, prepared = run_folder
    other, other_spec = _untrained_run_of(tmp_path, prepared, "unet", dims="2d", seed=1)
    (other / "summary.json").write_text(json.dumps({"plan": prepared.plan.to_dict()}))
    images = tmp_path / "images"
    array = np.random.default_rng(4).normal(0, 1, (14, 22, 18)).astype(np.float32)
    array[3:9, 5:15, 4:12] += 3.0
    _write_oriented(images / "a.nii.gz", array, (*SPACING[:2], slice_mm))
    out = tmp_path / "pred"
    args = ["predict", str(folder), str(other), "--images", str(images), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 runs: the mean of their softmax probabilities" in result.output

    image, geometry = read_image(images / "a.nii.gz")
    probs, grids, shapes = [], [], []
    for f, s in ((folder, spec), (other, other_spec)):
        resampled, _, grid = preprocess_image(image, geometry.spacing_zyx, prepared.plan,
                                              own_slices=s.own_slice_spacing)
        patch, _ = resolve_patch_and_batch(s, prepared)
        probs.append(predict_probabilities(_loaded_net(f, s, prepared), resampled, s.dims, patch,
                                           slice_axis=run_slice_axis(s, prepared.plan.target_spacing)))
        grids.append(grid)
        shapes.append(resampled.shape)
    if slice_mm == 1.0:
        assert shapes[0] == shapes[1]
        expected = to_original((probs[0] + probs[1]) / 2, grids[0], log_space=True)
    else:
        assert shapes[0][1] == 22 and shapes[1][1] == 14  # 1.6 mm slices: resampled for the 3D run only
        mapped = [to_original_probabilities(p, g, log_space=True) for p, g in zip(probs, grids, strict=True)]
        expected = ((mapped[0] + mapped[1]) / 2).argmax(0)
    labels, _ = read_label(out / "a.nii.gz")
    assert (labels == expected).all()
    alone = [to_original(p, g, log_space=True) for p, g in zip(probs, grids, strict=True)]
    assert all((labels != a).any() for a in alone)  # neither run's own prediction

    # postprocessing: the runs' decisions pooled; none when one run has no decision
    args.append("--overwrite")
    save_decision(postprocessing_decision(False, {1: True, 2: True}), folder)
    one = runner.invoke(app, args)
    assert one.exit_code == 0
    assert f"postprocessing: none, {other} has no decision (1 of 2 runs)" in one.output
    assert (read_label(out / "a.nii.gz")[0] == expected).all()
    save_decision(postprocessing_decision(False, {1: True, 2: False}), other)
    both = runner.invoke(app, args)
    assert both.exit_code == 0
    assert "; the largest component kept of label 1 (the runs' decisions pooled)" in both.output
    from scipy import ndimage

    pooled_labels, _ = read_label(out / "a.nii.gz")
    cube = np.ones((3, 3, 3))
    assert ndimage.label(pooled_labels == 1, structure=cube)[1] == 1
    assert ndimage.label(expected == 1, structure=cube)[1] > 1  # so the step did something
    assert ((pooled_labels == 2) == (expected == 2)).all()  # label 2 left as predicted


def test_an_ensemble_takes_each_run_once_and_one_plan(run_folder, tmp_path: Path) -> None:
    folder, _, prepared = run_folder
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32))
    out = tmp_path / "pred"
    twice = runner.invoke(app, ["predict", str(folder), str(folder / "checkpoints" / "last.ckpt"),
                                "--images", str(images), "--out", str(out)])
    assert twice.exit_code == 2 and "the same run and checkpoint as" in twice.output
    copy = tmp_path / "elsewhere" / folder.name  # a copy of the run folder is the same run
    shutil.copytree(folder, copy)
    copied = runner.invoke(app, ["predict", str(folder), str(copy), "--images", str(images), "--out",
                                 str(out)])
    assert copied.exit_code == 2 and "an ensemble takes each once" in copied.output
    # another task: refused as well (the spec names the task; the catalog knows Task04_Hippocampus)
    spec = json.loads((copy / "spec.json").read_text())
    (copy / "spec.json").write_text(json.dumps(spec | {"task": "Task04_Hippocampus"}))
    other_task = runner.invoke(app, ["predict", str(folder), str(copy), "--images", str(images), "--out",
                                     str(out)])
    assert other_task.exit_code == 2
    assert f"a run of Task04_Hippocampus, but {folder} is of {TASK}" in other_task.output
    other, _ = _untrained_run_of(tmp_path, prepared, "unet", seed=1)
    coarser = prepared.plan.to_dict() | {"target_spacing": [2.0, 2.0, 2.0]}
    (other / "summary.json").write_text(json.dumps({"plan": coarser}))
    mixed = runner.invoke(app, ["predict", str(folder), str(other), "--images", str(images), "--out",
                                str(out)])
    assert mixed.exit_code == 2 and "trained on another preprocessing" in mixed.output
    assert not out.exists()  # refused before anything was written


def test_an_ensemble_takes_runs_trained_on_images_stored_one_way(run_folder, home: Path,
                                                                 tmp_path: Path) -> None:
    """Only the first run's training orientation was consulted: with --reorient an image was turned for the
    ensemble's other run too, and the result depended on the order of the runs. A run whose setup.json records
    none reads the fetched task's images (its `null` once stopped --reorient there)."""
    folder, _, prepared = run_folder
    other, _ = _untrained_run_of(tmp_path, prepared, "unet", seed=1)
    (other / "summary.json").write_text((folder / "summary.json").read_text())
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((12, 20, 20), np.float32), direction=IDENTITY)
    (other / "setup.json").write_text(json.dumps({"patch_size": [16, 24, 24], "batch_size": 2,
                                                  "orientation": "PRS"}))
    for runs, reorient in (([folder, other], ["--reorient"]), ([other, folder], ["--reorient"]),
                           ([folder, other], [])):  # the task's images (LPS) against the record (PRS)
        result = runner.invoke(app, ["predict", *map(str, runs), "--images", str(images), "--out",
                                     str(tmp_path / "out"), *reorient])
        assert result.exit_code == 2, result.output
        assert "an ensemble takes runs trained on images stored one way" in result.stderr
        assert not (tmp_path / "out").exists()
    (other / "setup.json").write_text(json.dumps({"patch_size": [16, 24, 24], "batch_size": 2,
                                                  "orientation": None}))  # none recorded: the task's
    agreed = runner.invoke(app, ["predict", str(folder), str(other), "--images", str(images), "--out",
                                 str(tmp_path / "out"), "--reorient"])
    assert agreed.exit_code == 0, agreed.output
    assert agreed.stderr == "" and "--reorient" not in agreed.stdout  # stored LPS, as the task's images


class _StopAtEndOfEpoch:
    """A sweep's reporter that interrupts its run, as Ctrl-C would, as epoch `epoch` (1-based) is said to have
    ended: after that epoch's checkpoint, as the next epoch starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, run_id: str, epoch: int, epochs: int, train_loss: float, val_dice: float) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt("SIGINT")


def test_an_unfinished_run_is_refused_unless_allowed_and_then_named(run_folder, tmp_path: Path) -> None:
    """A real run interrupted in epoch 2 of 3 left its last.ckpt from mid-training: predict wrote label maps
    from it, exit 0, alone or in an ensemble with a finished run, without a word."""
    from medseg_bench.results import run_state
    from medseg_bench.sweep.worker import run_one

    finished, _, prepared = run_folder
    spec = RunSpec(task=TASK, dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2, epochs=3,
                   iters_per_epoch=1, batch_size=2, patch_size=(16, 16, 16))
    with pytest.raises((KeyboardInterrupt, SystemExit)):  # Lightning may turn Ctrl-C into exit(1)
        run_one(spec, prepared, tmp_path / "results", reporter=_StopAtEndOfEpoch(1))
    folder = tmp_path / "results" / TASK / spec.run_id
    assert run_state(folder) == "partial" and (folder / "checkpoints" / "last.ckpt").is_file()
    images = tmp_path / "images"
    noise = np.random.default_rng(5).normal(0, 1, (12, 20, 20)).astype(np.float32)
    _write_oriented(images / "a.nii.gz", noise, direction=IDENTITY)  # as the training images: no warning
    out = tmp_path / "pred"
    advice = ("its last checkpoint is mid-training; finish it with `medseg-bench sweep` (the same command "
              "resumes it), or pass --allow-unfinished")
    for given in ([folder], [folder / "checkpoints" / "last.ckpt"], [finished, folder]):
        refused = runner.invoke(app, ["predict", *map(str, given), "--images", str(images), "--out",
                                      str(out)])
        assert refused.exit_code == 2, refused.output
        assert refused.stderr == f"error: {folder}: not finished (partial, epoch 1 of 3): {advice}\n"
        assert not out.exists()  # before any work
    allowed = runner.invoke(app, ["predict", str(finished), str(folder), "--images", str(images), "--out",
                                  str(out), "--allow-unfinished"])
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stderr == (f"warning: {folder}: not finished (partial, epoch 1 of 3): predicting with "
                              "last.ckpt all the same (--allow-unfinished)\n")
    assert (out / "a.nii.gz").is_file()
    # a run that failed, and one that trained every epoch but was not evaluated, say so
    (folder / "status.json").write_text(json.dumps({"state": "failed", "error": "RuntimeError: boom"}))
    failed = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert failed.exit_code == 2
    assert (f"{folder}: not finished (failed, epoch 1 of 3): it failed (see {folder / 'run.log'}); the same "
            "`medseg-bench sweep` command retries it, or pass --allow-unfinished") in failed.stderr
    (folder / "status.json").write_text(json.dumps({"state": "running"}))
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps(json.loads(spec_path.read_text()) | {"epochs": 1}))
    trained = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert trained.exit_code == 2
    assert "not finished (partial, epoch 1 of 1): it trained but was not evaluated" in trained.stderr
    import time

    (folder / "queued.json").write_text(json.dumps({"job_id": "7_0", "time": time.time() + 1}))
    queued = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert queued.exit_code == 2  # submitted to SLURM again: its job will finish it
    assert ("not finished (queued, epoch 1 of 1): it is submitted to SLURM (queued.json); wait until its job "
            "has finished it (`medseg-bench status` says whether the job is still queued)") in queued.stderr


def _write(path: Path, image: object) -> None:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_an_image_the_task_cannot_take_is_refused_before_anything_is_written(run_folder, tmp_path: Path
                                                                               ) -> None:
    import SimpleITK as sitk

    folder, _, _ = run_folder
    volume = np.random.default_rng(3).normal(0, 1, (12, 20, 20)).astype(np.float32)
    micro = sitk.GetImageFromArray(volume)
    micro.SetSpacing((1e-6, 1.1, 1.6))
    wrong = {  # each after a good image in the folder's order: checked from every header first
        "b_slice.nii.gz": (sitk.GetImageFromArray(volume[4]), "2D image of size (20, 20); a 3D (or 4D "
                                                              "multi-modal) image expected"),
        "b_two.nii.gz": (sitk.JoinSeries([sitk.GetImageFromArray(c) for c in (volume, -volume)]),
                         "2 channel(s), but Task93_Predict models take 1 (MR0)"),
        "b_vector.nrrd": (sitk.GetImageFromArray(np.stack([volume] * 3, -1), isVector=True),
                          "RGB/vector pixels (3 components per voxel), but Task93_Predict models take 1 "
                          "(MR0)"),
        "b_complex.nii.gz": (sitk.GetImageFromArray(volume.astype(np.complex64)),  # "2 channel(s)" before
                             "complex pixels are not supported (one real value per voxel expected)"),
        "b_5d.nii.gz": (sitk.Image([20, 20, 12, 2, 2], sitk.sitkFloat32),
                        "5D image of size (20, 20, 12, 2, 2); a 3D (or 4D multi-modal) image expected"),
        # as validate refuses a training case's (a label map was written from it, exit 0)
        "b_microns.nii.gz": (micro, "voxel spacing (1e-06, 1.1, 1.6) mm is outside 0.001-1000 mm (a header "
                                    "in other units, or a broken one)"),
    }
    for name, (image, problem) in wrong.items():
        images, out = tmp_path / name / "images", tmp_path / name / "pred"
        _write_oriented(images / "a.nii.gz", volume)
        _write(images / name, image)
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
        assert result.exit_code == 3, result.output
        assert result.stderr == f"error: {images / name}: {problem}\n"
        assert not out.exists()  # not a.nii.gz either


MULTI = "Task94_PredictMulti"


def test_a_4d_image_reaches_the_network_in_the_tasks_modality_order(home: Path, tmp_path: Path) -> None:
    """Channels are the fourth axis's, in order, as the cache gives them to training (MSD's 4D layout)."""
    import SimpleITK as sitk

    from medseg_bench.data.preprocess import load_case

    write_task_file(home, MULTI, channels=2)
    src = make_synthetic_task(tmp_path / "src" / MULTI, num_cases=4, channels=2)
    fetch_task(get_task(MULTI), home / "data", str(src), progress=False)
    prepared = prepare_task(get_task(MULTI), home / "data", num_folds=2, workers=1)
    # Training's side: cached channel c is the file's channel c, z-scored on its own.
    case = prepared.case_ids[0]
    cached, _, _ = load_case(prepared.cache_dir, case)
    raw = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "imagesTr" / f"{case}.nii.gz")))  # (C, Z, Y, X)
    for c in range(2):
        assert np.corrcoef(cached[c].ravel(), raw[c].ravel())[0, 1] > 0.999

    spec = RunSpec(task=MULTI, dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    folder = tmp_path / "results" / MULTI / spec.run_id
    (folder / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    net = build_network(spec, prepared)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               folder / "checkpoints" / "last.ckpt")
    (folder / "spec.json").write_text(json.dumps({"run_id": spec.run_id, **spec.to_dict()}))
    (folder / "summary.json").write_text(json.dumps({"plan": prepared.plan.to_dict()}))
    rng = np.random.default_rng(5)
    channels = [rng.normal(0, 1, (12, 20, 20)).astype(np.float32) * s + m for s, m in ((1, 0), (5, 40))]
    channels[0][2:8, 4:12, 5:14] += 4.0
    images, out = tmp_path / "images", tmp_path / "pred"
    four_d = sitk.JoinSeries([sitk.GetImageFromArray(c) for c in channels])
    four_d.SetSpacing((0.9, 1.1, 1.6, 1.0))
    _write(images / "multi.nii.gz", four_d)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    labels, geometry = read_label(out / "multi.nii.gz")
    assert labels.shape == (12, 20, 20) and np.allclose(geometry.spacing, (0.9, 1.1, 1.6))
    patch, _ = resolve_patch_and_batch(spec, prepared)
    image = np.stack(channels)
    expected = predict_image(net, image, (1.6, 1.1, 0.9), prepared.plan, "3d", patch)
    swapped = predict_image(net, image[::-1].copy(), (1.6, 1.1, 0.9), prepared.plan, "3d", patch)
    assert (labels == expected).all() and (labels != swapped).any()  # so the order is seen

    _write(images / "one.nii.gz", sitk.GetImageFromArray(channels[0]))  # one modality of the two
    one = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert one.exit_code == 3
    assert one.stderr == (f"error: {images / 'one.nii.gz'}: 1 channel(s), but {MULTI} models take 2 "
                          "(MR0, MR1, in this order along the fourth axis)\n")


def test_a_finished_runs_deleted_checkpoint_is_named_as_deleted(run_folder, tmp_path: Path) -> None:
    # It said "the run has not finished an epoch" of a run status shows as done.
    from medseg_bench.results import run_state
    from medseg_bench.run_folder import write_status

    folder, _, _ = run_folder
    assert run_state(folder) in ("done", "damaged")  # finished (its hand-made summary lacks fields)
    checkpoint = folder / "checkpoints" / "last.ckpt"
    checkpoint.unlink()
    args = ["predict", str(folder), "--images", str(tmp_path), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and result.stderr == (
        f"error: {checkpoint}: checkpoint missing (deleted since the run finished; restore it, or move the "
        "run folder away and train it again with `medseg-bench sweep`)\n")
    (folder / "summary.json").unlink()
    write_status(folder, "pending")
    result = runner.invoke(app, args)
    assert result.exit_code == 3 and result.stderr == (
        f"error: {checkpoint}: checkpoint missing (the run has not finished an epoch)\n")
    # a run that diverged after its first epoch fails without a checkpoint: it said "not finished an epoch"
    write_status(folder, "failed", error="training loss is no longer finite after epoch 1\nTraceback ...")
    result = runner.invoke(app, [*args, "--allow-unfinished"])
    assert result.exit_code == 3 and result.stderr == (
        f"error: {checkpoint}: checkpoint missing (the run failed without one: training loss is no longer "
        f"finite after epoch 1; see {folder / 'run.log'}; the same `medseg-bench sweep` command retries "
        "it)\n")


def test_a_second_predict_into_the_same_folder_waits_then_skips_what_the_first_wrote(run_folder,
                                                                                      tmp_path: Path) -> None:
    # Two predicts into one --out at once: the second wrote its label maps over the first's, without
    # --overwrite, between its check that a file was not there and its write (and removed the first's .npz).
    import subprocess
    import sys

    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    _write_oriented(images / "new_case.nii.gz", np.zeros((14, 22, 18), np.float32))
    out.mkdir()
    first = np.ones((14, 22, 18), np.uint8)
    _write_oriented(tmp_path / "first.nii.gz", first)  # what the first predict writes, as it ends
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, shutil, sys, time\n"
         f"fd = os.open({str(out)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(3)\n"
         f"shutil.copy({str(tmp_path / 'first.nii.gz')!r}, {str(out / 'new_case.nii.gz')!r})\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    finally:
        holder.wait(30)
    assert result.exit_code == 0, result.output
    assert f"{out}: another predict is writing into it; waiting for it to finish" in result.output
    assert "new_case.nii.gz: exists, skipped" in result.output and "0 prediction(s) written" in result.output
    assert (read_label(out / "new_case.nii.gz")[0] == first).all()
    assert sorted(path.name for path in out.iterdir()) == ["new_case.nii.gz"]  # no lock file left


def test_channel_files_in_nnunets_layout_are_one_case_each(run_folder, home: Path, tmp_path: Path) -> None:
    # nnU-Net v2 names a test image's channel files CASE_0000, CASE_0001, ... and its label map CASE: each
    # file was predicted as a case of its own, named CASE_0000 (and refused as one channel of two).
    folder, _, _ = run_folder
    rng = np.random.default_rng(3)
    arrays = {name: rng.normal(0, 1, (10, 20, 16)).astype(np.float32) for name in ("a", "b")}
    msd, raw = tmp_path / "msd", tmp_path / "raw"
    for name, array in arrays.items():
        _write_oriented(msd / f"{name}.nii.gz", array)
        _write_oriented(raw / f"{name}_0000.nii.gz", array)
    for images, out in ((msd, tmp_path / "p_msd"), (raw, tmp_path / "p_raw")):
        result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert f"{raw}: 2 case(s) in nnU-Net's layout, a file per channel (CASE_0000.nii.gz): each label map " \
        "is named CASE.nii.gz" in result.output
    assert sorted(p.name for p in (tmp_path / "p_raw").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    for name in arrays:
        assert (read_label(tmp_path / "p_raw" / f"{name}.nii.gz")[0]
                == read_label(tmp_path / "p_msd" / f"{name}.nii.gz")[0]).all()

    # Two channels: the files stacked in channel order, as the 4D image MSD would store.
    two = "Task94_Two"
    write_task_file(home, two, channels=2)
    fetch_task(get_task(two), home / "data", str(make_synthetic_task(tmp_path / "src2" / two, num_cases=4,
                                                                     channels=2)), progress=False)
    prepared = prepare_task(get_task(two), home / "data", num_folds=2, workers=1)
    spec = RunSpec(task=two, dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    run = tmp_path / "results" / two / spec.run_id
    (run / "checkpoints").mkdir(parents=True)
    net = build_network(spec, prepared)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}},
               run / "checkpoints" / "last.ckpt")
    (run / "spec.json").write_text(json.dumps({"run_id": spec.run_id, **spec.to_dict()}))
    (run / "summary.json").write_text(json.dumps({"plan": prepared.plan.to_dict()}))
    stacked = np.stack([arrays["a"], arrays["b"] * 2.0])
    write_image(tmp_path / "msd2" / "c.nii.gz", stacked, (1.0, 1.0, 1.0))
    for index, channel in enumerate(stacked):
        write_image(tmp_path / "raw2" / f"c_{index:04d}.nii.gz", channel, (1.0, 1.0, 1.0))
    for images in ("msd2", "raw2"):
        result = runner.invoke(app, ["predict", str(run), "--images", str(tmp_path / images), "--out",
                                     str(tmp_path / f"p_{images}"), "--allow-unfinished"])
        assert result.exit_code == 0, result.output
    raw_labels, msd_labels = (read_label(tmp_path / f"p_{name}" / "c.nii.gz")[0] for name in ("raw2", "msd2"))
    assert (raw_labels == msd_labels).all()
    lacking = tmp_path / "raw3"  # one case, its second channel file missing
    write_image(lacking / "c_0000.nii.gz", stacked[0], (1.0, 1.0, 1.0))
    result = runner.invoke(app, ["predict", str(run), "--images", str(lacking), "--out",
                                 str(tmp_path / "p_lacking"), "--allow-unfinished"])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {lacking / 'c_0001.nii.gz'}: missing (nnU-Net's layout, CASE_0000 to CASE_0001)")
    assert not (tmp_path / "p_lacking").exists()
    # one case with a channel file past the task's: it blamed c_0000 for holding one channel
    write_image(lacking / "c_0001.nii.gz", stacked[1], (1.0, 1.0, 1.0))
    write_image(lacking / "c_0002.nii.gz", stacked[1], (1.0, 1.0, 1.0))
    result = runner.invoke(app, ["predict", str(run), "--images", str(lacking), "--out",
                                 str(tmp_path / "p_lacking"), "--allow-unfinished"])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {lacking / 'c_0002.nii.gz'}: a channel past the task's 2 (nnU-Net's layout, CASE_0000 to "
        "CASE_0001)")
    write_image(tmp_path / "raw2" / "c_0001.nii.gz", stacked[1], (1.0, 1.0, 2.0))  # another grid
    result = runner.invoke(app, ["predict", str(run), "--images", str(tmp_path / "raw2"), "--out",
                                 str(tmp_path / "p_bad"), "--allow-unfinished"])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'raw2' / 'c_0001.nii.gz'}: its geometry is not c_0000.nii.gz's: spacing "
        "(1, 1, 2) vs (1, 1, 1)")


def test_a_folder_partly_in_nnunets_layout_is_named(run_folder, tmp_path: Path) -> None:
    # A stray file among channel files: each file predicted as a case of its own without a word (label maps
    # named CASE_0000, which evaluate cannot pair); a channel past the task's: the wrong file was blamed.
    folder, _, _ = run_folder
    array = np.random.default_rng(0).normal(0, 1, (10, 20, 16)).astype(np.float32)
    mixed = tmp_path / "mixed"
    _write_oriented(mixed / "a_0000.nii.gz", array)
    _write_oriented(mixed / "b.nii.gz", array)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(mixed), "--out",
                                 str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert (f"{mixed / 'b.nii.gz'}: not named as nnU-Net names a channel file (CASE_0000...), as "
            "a_0000.nii.gz is: each file is taken as a case of its own") in result.output
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a_0000.nii.gz", "b.nii.gz"]
    extra = tmp_path / "extra"
    for name in ("a_0000", "b_0000", "b_0001"):
        _write_oriented(extra / f"{name}.nii.gz", array)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(extra), "--out",
                                 str(tmp_path / "q")])
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {extra / 'b_0001.nii.gz'}: a channel past the task's 1 (nnU-Net's layout, as a_0000.nii.gz: "
        "CASE_0000 to CASE_0000)")
    assert not (tmp_path / "q").exists()


def test_data_dir_says_where_a_runs_task_was_fetched(run_folder, home: Path, tmp_path: Path) -> None:
    # predict read the plan.json of a run without a summary only from $MEDSEG_BENCH_HOME/data: a task fetched
    # with --data-dir elsewhere could not be predicted with.
    import shutil

    folder, _, _ = run_folder
    (folder / "summary.json").unlink()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(home / "data"), str(elsewhere))
    images = tmp_path / "images"
    _write_oriented(images / "a.nii.gz", np.zeros((10, 20, 16), np.float32))
    args = ["predict", str(folder), "--images", str(images), "--out", str(tmp_path / "p"),
            "--allow-unfinished"]
    lost = runner.invoke(app, args)
    assert lost.exit_code == 3 and "run has no summary.json and" in lost.output
    found = runner.invoke(app, [*args, "--data-dir", str(elsewhere)])
    assert found.exit_code == 0, found.output
    assert (tmp_path / "p" / "a.nii.gz").is_file()


def test_a_finished_run_whose_weights_are_not_finite_is_refused_before_anything_is_written(
        run_folder, tmp_path: Path) -> None:
    # A run that diverged (--lr 1e10), finished as done before such runs failed: predict wrote NaN
    folder, spec, _ = run_folder
    checkpoint = folder / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    next(iter(state["state_dict"].values())).fill_(float("nan"))
    torch.save(state, checkpoint)
    images = tmp_path / "images"
    _write_oriented(images / "case.nii.gz", np.zeros((14, 22, 18), np.float32))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out),
                                 "--save-probabilities"])
    assert result.exit_code == 3 and result.stderr == (
        f"error: {checkpoint}: the network's weights are not finite (NaN/inf): run {spec.run_id} diverged in "
        "training; move its folder away and train it again with a lower --lr\n")
    assert not out.exists()


REGION_TASK = "Task92_RegionPredict"


def _region_runs(home: Path, tmp_path: Path) -> tuple[PreparedTask, list[tuple[Path, RunSpec]]]:
    """A two-channel task with nested regions (whole: 1, 2; inner: 2), and three untrained 3D UNet runs of
    it: two with target regions (seeds 0 and 1), one with target labels."""
    task_file = write_task_file(home, REGION_TASK, channels=2)
    with task_file.open("a") as fh:  # in this order (yaml.safe_dump would sort them)
        fh.write("regions:\n  whole: [1, 2]\n  inner: [2]\n")
    src = make_synthetic_task(tmp_path / "src" / REGION_TASK, num_cases=4, channels=2)
    fetch_task(get_task(REGION_TASK), home / "data", str(src), progress=False)
    prepared = prepare_task(get_task(REGION_TASK), home / "data", num_folds=2, workers=1)
    runs = []
    for seed, target in ((0, "regions"), (1, "regions"), (0, "labels")):
        folder, spec = _untrained_run_of(tmp_path, prepared, "unet", seed=seed, task=REGION_TASK,
                                         target=target)
        (folder / "summary.json").write_text(json.dumps({"plan": prepared.plan.to_dict()}))
        runs.append((folder, spec))
    return prepared, runs


def test_region_runs_predict_label_maps_painted_from_their_mean_region_probabilities(home: Path,
                                                                                     tmp_path: Path) -> None:
    """An ensemble of region runs averages their sigmoid region probabilities (nnU-Net's ensembling), maps
    them back as logits, and paints the regions over 0.5 in the task file's order; --save-probabilities
    writes the regions' probabilities. Region and label runs do not ensemble."""
    from medseg_bench.data.preprocess import preprocess_image
    from medseg_bench.data.resample import to_original_regions
    from medseg_bench.inference import predict_probabilities
    from medseg_bench.regions import paint

    prepared, [(first, spec), (second, _), (labels_run, _)] = _region_runs(home, tmp_path)
    images = tmp_path / "images"
    array = np.random.default_rng(4).normal(0, 1, (2, 14, 22, 18)).astype(np.float32)
    array[:, 3:9, 5:15, 4:12] += 3.0
    write_image(images / "a.nii.gz", array, SPACING)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(first), str(second), "--images", str(images), "--out",
                                 str(out), "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 runs: the mean of their region probabilities" in result.output

    image, geometry = read_image(images / "a.nii.gz")
    resampled, _, grid = preprocess_image(image, geometry.spacing_zyx, prepared.plan)
    patch, _ = resolve_patch_and_batch(spec, prepared)
    probs = [predict_probabilities(_loaded_net(f, spec, prepared), resampled, "3d", patch, regions=True)
             for f in (first, second)]
    expected = to_original_regions((probs[0] + probs[1]) / 2, grid, log_space=True, nnunet_resize=True)
    labels, _ = read_label(out / "a.nii.gz")
    assert np.array_equal(labels, paint(expected > 0.5, (1, 2)))
    assert set(np.unique(labels)) == {0, 1, 2}
    with np.load(out / "a.npz") as stored:
        regions = stored["probabilities"]
    assert regions.shape == (2, *labels.shape) and regions.dtype == np.float32
    assert np.allclose(regions, expected, atol=1e-6) and np.array_equal(paint(regions > 0.5, (1, 2)), labels)
    alone = runner.invoke(app, ["predict", str(first), "--images", str(images), "--out",
                                str(tmp_path / "one")])
    assert alone.exit_code == 0, alone.output
    single = paint(to_original_regions(probs[0], grid, log_space=True, nnunet_resize=True) > 0.5, (1, 2))
    assert np.array_equal(read_label(tmp_path / "one" / "a.nii.gz")[0], single)
    assert (single != labels).any()  # the ensemble is neither run's own prediction

    mixed = runner.invoke(app, ["predict", str(first), str(labels_run), "--images", str(images), "--out",
                                str(tmp_path / "mixed")])
    assert mixed.exit_code == 2
    assert mixed.stderr == (f"error: {labels_run}: a run with target labels, but {first} has target regions; "
                            "an ensemble averages one kind of probabilities (label softmax or region "
                            "sigmoids): give runs of one target\n")
    assert not (tmp_path / "mixed").exists()


def test_an_image_too_large_to_preprocess_in_the_memory_there_is_exits_3_naming_it(
        run_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a header spacing ten times the training images' (10 mm): a thousand times the voxels once resampled to
    # the plan's 1 mm; the allocation failed part way through, or the kernel killed predict in a container
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit

    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    rng = np.random.default_rng(2)
    _write_oriented(images / "a_fine.nii.gz", rng.normal(0, 1, (14, 22, 18)).astype(np.float32),
                    spacing=(1.0, 1.0, 1.0), direction=IDENTITY)
    coarse = images / "b_coarse.nii.gz"
    _write_oriented(coarse, rng.normal(0, 1, (14, 22, 18)).astype(np.float32), spacing=(10.0, 10.0, 10.0),
                    direction=IDENTITY)
    limit = MemoryLimit(32 * 2**20, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: limit)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stderr == (
        f"error: {coarse}: preprocessing it needs at least 0.0414 GiB at once (1 channel(s), 140 x 220 x "
        "180 voxels at the plan's target spacing), more than the 0.0312 GiB this process may use (the "
        "container's or job's memory limit, cgroup memory.max); run with more memory, or check its spacing "
        "(10 x 10 x 10 mm, z y x; the plan's target 1 x 1 x 1 mm)\n")
    assert (out / "a_fine.nii.gz").is_file() and not (out / "b_coarse.nii.gz").exists()


def test_an_image_whose_inference_cannot_fit_in_the_memory_there_is_exits_3_naming_it(
        run_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # preprocessing a large case at the plan's own spacing fits; every class's probabilities of it, the
    # sliding window's logits and their normalised copy do not: refused before any work on it, not killed
    import medseg_bench.checks
    from medseg_bench.checks import MemoryLimit

    folder, _, _ = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    rng = np.random.default_rng(3)
    _write_oriented(images / "a_small.nii.gz", rng.normal(0, 1, (14, 22, 18)).astype(np.float32),
                    spacing=(1.0, 1.0, 1.0), direction=IDENTITY)
    large = images / "b_large.nii.gz"
    _write_oriented(large, rng.normal(0, 1, (60, 120, 120)).astype(np.float32), spacing=(1.0, 1.0, 1.0),
                    direction=IDENTITY)
    limit = MemoryLimit(16 * 2**20, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: limit)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out),
                                 "--save-probabilities"])
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: {large}: predicting it needs at least ")
    assert result.stderr.endswith(
        " class(es), 60 x 120 x 120 voxels at the plan's target spacing), more than the 0.0156 GiB this "
        "process may use (the container's or job's memory limit, cgroup memory.max); run with more memory, "
        "or check its spacing (1 x 1 x 1 mm, z y x; the plan's target 1 x 1 x 1 mm), or leave out "
        "--save-probabilities\n")
    assert (out / "a_small.nii.gz").is_file() and not (out / "b_large.nii.gz").exists()
    assert not (out / "b_large.npz").exists()


def test_predict_hands_back_what_it_freed_before_it_reads_what_it_holds_for_each_image(
        run_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # loading the networks, and predicting the image before, free much that glibc's allocator keeps: counted
    # as held (VmRSS) against each image's memory, it was not free for it
    import medseg_bench.checks

    folder, _, _ = run_folder
    images = tmp_path / "images"
    for name in ("a", "b"):
        _write_oriented(images / f"{name}.nii.gz", np.zeros((14, 22, 18), np.float32),
                        spacing=(1.0, 1.0, 1.0), direction=IDENTITY)
    calls: list[str] = []
    usable = medseg_bench.checks.usable_memory
    monkeypatch.setattr(medseg_bench.checks, "release_freed_memory", lambda: calls.append("released"))
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: calls.append("read") or usable())
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out",
                                 str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert calls == ["released", "read"] * 2


def test_an_image_only_the_networks_activations_cannot_fit_exits_3_naming_them(
        run_folder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the network's feature maps on a batch of tiles are host memory: predict counts them from
    the loaded network (`forward_memory.forward_bytes`), and an image whose arrays would fit but not beside
    them is refused naming them; a coarser spacing would not help."""
    import dataclasses

    import medseg_bench.checks
    import medseg_bench.inference_memory
    from medseg_bench.checks import MemoryLimit
    from medseg_bench.forward_memory import planned_forward_bytes
    from medseg_bench.inference_memory import least_bytes
    from medseg_bench.training import model_inputs

    folder, spec, prepared = run_folder
    images, out = tmp_path / "images", tmp_path / "pred"
    image = images / "a.nii.gz"
    _write_oriented(image, np.random.default_rng(5).normal(0, 1, (14, 22, 18)).astype(np.float32),
                    spacing=(1.0, 1.0, 1.0), direction=IDENTITY)
    checked = []
    check_fits = medseg_bench.inference_memory.check_fits
    monkeypatch.setattr(medseg_bench.inference_memory, "check_fits",
                        lambda size, *args: checked.append(size) or check_fits(size, *args))
    limit = MemoryLimit(2**40, "the container's or job's memory limit", "cgroup memory.max")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: limit)
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    [size] = checked
    counted = planned_forward_bytes(spec.arch, spec.dims, model_inputs(spec, prepared))
    assert counted is not None and size.tile_forward == counted.peak > 0
    need, without = least_bytes(size), least_bytes(dataclasses.replace(size, tile_forward=0))
    assert need > without
    limit = MemoryLimit(without, "the container's or job's memory limit", "cgroup memory.max")
    result = runner.invoke(app, ["predict", str(folder), "--images", str(images), "--out",
                                 str(tmp_path / "b")])
    assert result.exit_code == 3, result.output
    patch = " x ".join(map(str, size.patch))
    assert result.stderr == (
        f"error: {image}: predicting it needs at least {need / 2**30:.3g} GiB at once (the network's "
        f"activations on 1 tile(s) of {patch} voxels at once, on the CPU), more than the "
        f"{without / 2**30:.3g} GiB this process may use (the container's or job's memory limit, cgroup "
        "memory.max); run with more memory, or predict on a GPU\n")
