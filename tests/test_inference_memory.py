"""The memory predicting a case needs: a case whose inference cannot fit is named before any work on it
(predict), or before any run trains (sweep, whose runs evaluate their held-out cases)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from medseg_bench.checks import MemoryLimit
from medseg_bench.errors import DataError
from medseg_bench.inference_memory import (
    DECISION_BYTES,
    FORWARD_FACTOR,
    PEAK_FACTOR,
    PEAK_SLACK,
    SCORE_BYTES,
    SCORE_PEAK_BYTES,
    InferenceSize,
    check_evaluations,
    check_fits,
    check_held_out,
    forward_pass_bytes,
    least_bytes,
    peak_bytes,
    scoring_bytes,
    scoring_peak_bytes,
)
from medseg_bench.spec import RunSpec

MIB = 2**20
JOB = "the container's or job's memory limit"
IMAGE = Path("/data/imagesTs/a.nii.gz")


def _size(**changes: object) -> InferenceSize:
    fields: dict = {"image": IMAGE, "channels": 2, "outputs": 3, "original": (100, 200, 200),
                    "cropped": (100, 150, 200), "resampled": (50, 100, 100), "patch": (32, 64, 64)}
    return InferenceSize(**(fields | changes))


def test_least_bytes_counts_the_window_or_the_mapping_back_whichever_holds_more() -> None:
    resampled, cropped, original = 50 * 100 * 100, 100 * 150 * 200, 100 * 200 * 200
    # the stitched logits, the window's weight and the normalised logits, beside the image (2 channels)
    window = 8 * 3 * resampled + 4 * resampled
    assert least_bytes(_size(cropped=(50, 100, 100), original=(50, 100, 100))) == 8 * resampled + window
    back = 4 * 3 * resampled + 10 * cropped  # upsampled back to the crop: more than the window
    assert least_bytes(_size()) == 8 * resampled + back
    assert least_bytes(_size(held=1000)) == 8 * resampled + back + 1000
    probabilities = 4 * 3 * resampled + 8 * 3 * original  # on the original grid, and its weighted copy
    assert least_bytes(_size(probabilities=True)) == 8 * resampled + probabilities


def test_least_bytes_grows_with_what_the_prediction_holds() -> None:
    same = {"cropped": (50, 100, 100), "original": (50, 100, 100)}
    label = least_bytes(_size(**same))
    assert least_bytes(_size(**same, regions=True)) > label  # float64 sigmoids and their logits' copy
    assert least_bytes(_size(**same, members=2)) > label  # the ensemble's running sum
    assert least_bytes(_size(**same, outputs=14)) > 3 * label
    assert least_bytes(_size(**same, on_gpu=True)) < label  # the window's arrays on the GPU
    padded = _size(**same, patch=(64, 128, 128))  # padded up to the patch: a larger window
    assert least_bytes(padded) > label + 8 * 3 * (64 * 128 * 128 - 50 * 100 * 100)
    assert least_bytes(_size(**same, dims="2d", patch=(64, 64))) > 0
    whole = _size(**same, dims="2d", patch=(64, 64), pipeline_version=9, tta=True)  # padded to 128 x 128
    assert least_bytes(whole) >= 8 * 50 * 100 * 100 + 4 * 2 * 50 * 128 * 128 + 4 * 3 * 50 * 128 * 128


def test_peak_bytes_is_above_least_bytes() -> None:
    for size in (_size(), _size(regions=True), _size(dims="2d", patch=(64, 64), pipeline_version=10)):
        assert peak_bytes(size) >= PEAK_FACTOR * least_bytes(size) + PEAK_SLACK


def test_the_networks_activations_count_for_each_tile_of_a_forward_pass_on_the_cpu() -> None:
    """The sliding window passes `TILE_BATCH` tiles at once (fewer where the case has fewer), 2D up to
    `SLICE_BATCH` slices' tiles: each holds the network's activations (`tile_forward`) and its input."""
    tile = 32 * 64 * 64
    one = _size(resampled=(32, 64, 64), tile_forward=10**8)  # the case is one tile
    assert forward_pass_bytes(one) == 10**8 + 4 * 2 * tile
    many = _size(tile_forward=10**8)  # 50 x 100 x 100: 3 tiles along each axis, 4 at once
    assert forward_pass_bytes(many) == 4 * (10**8 + 4 * 2 * tile)
    resampled, k = 50 * 100 * 100, 3
    # beside the image (2 channels), the window's weight and logits, while the network runs
    assert least_bytes(many) == 8 * resampled + 4 * resampled + 4 * k * resampled + forward_pass_bytes(many)
    assert least_bytes(_size(tile_forward=2 * 10**8)) == least_bytes(many) + 4 * 10**8  # a wider network
    assert peak_bytes(many) >= FORWARD_FACTOR * forward_pass_bytes(many)
    assert least_bytes(_size(tile_forward=0)) < least_bytes(many)
    # on a GPU the activations are the GPU's
    gpu = dataclasses.replace(many, on_gpu=True)
    assert forward_pass_bytes(gpu) == 0 and least_bytes(gpu) == least_bytes(_size(on_gpu=True))
    # 2D: 32 slices of 50, one tile of each at once; 2 slices: 2 tiles of each (4 at once)
    plane = _size(dims="2d", patch=(64, 64), tile_forward=10**6)
    assert forward_pass_bytes(plane) == 32 * (10**6 + 4 * 2 * 64 * 64)
    two = dataclasses.replace(plane, resampled=(2, 100, 100))
    assert forward_pass_bytes(two) == 4 * (10**6 + 8 * 64 * 64)
    # version 10 and older: 32 whole slices padded to 128 x 128, a tile's activations scaled to them
    whole = dataclasses.replace(plane, pipeline_version=10)
    assert forward_pass_bytes(whole) == 32 * (4 * 2 * 128 * 128 + 4 * 10**6)


def test_check_fits_names_the_image_what_it_needs_and_what_there_is() -> None:
    size = _size()
    need = least_bytes(size)
    check_fits(size, MemoryLimit(need, JOB), "never said")
    check_fits(size, None, "never said")
    with pytest.raises(DataError) as refused:
        check_fits(size, MemoryLimit(need - 1, JOB, "cgroup memory.max"), "check its spacing")
    assert str(refused.value) == (
        f"{IMAGE}: predicting it needs at least {need / 2**30:.3g} GiB at once (3 class(es), 50 x 100 x 100 "
        f"voxels at the plan's target spacing), more than the {(need - 1) / 2**30:.3g} GiB this process may "
        "use (the container's or job's memory limit, cgroup memory.max); run with more memory, or check its "
        "spacing")
    with pytest.raises(DataError, match=r"\(3 region\(s\), "):
        check_fits(_size(regions=True), MemoryLimit(need - 1, JOB), "check its spacing")
    # torch's 5 GiB of mappings count against `ulimit -v`: what the process holds is not the case's
    each = MemoryLimit(need + 5 * 2**30, "the process's address-space limit", "ulimit -v, RLIMIT_AS",
                       per_process=True, held_bytes=5 * 2**30)
    check_fits(size, each, "never said")
    limit = f"{(need + 5 * 2**30) / 2**30:.3g}"
    with pytest.raises(DataError, match=rf"more than the {(need - 1) / 2**30:.3g} GiB this process may use "
                                        rf"\(the process's address-space limit, ulimit -v, RLIMIT_AS: "
                                        rf"{limit} GiB, 5 GiB of it held already\); "):
        check_fits(size, dataclasses.replace(each, held_bytes=5 * 2**30 + 1), "check its spacing")


def test_scoring_bytes_counts_the_label_map_read_beside_the_prediction_on_the_original_grid() -> None:
    original = 100 * 200 * 200
    assert scoring_bytes(_size()) == 0  # predict scores nothing
    scored = _size(scored=True)
    # the uint8 prediction, the label map as ITK holds it (a byte a voxel at least) and its uint8 copy: no
    # float32 copy, nor its rounded one, counted any longer (they are not made for an integer label map)
    assert scoring_bytes(scored) == SCORE_BYTES * original == (1 + 1 + 1) * original
    assert scoring_bytes(_size(scored=True, outputs=9, regions=True)) == scoring_bytes(scored)  # in turn
    assert scoring_bytes(_size(scored=True, postprocess=True)) == scoring_bytes(scored)
    larger = [scoring_bytes(_size(scored=True, original=(n, 200, 200))) for n in (50, 100, 400)]
    assert larger == sorted(larger) and larger[0] < larger[-1]
    # the larger of predicting and scoring: not their sum, the probabilities let go before the label is read;
    # scoring the larger where the case was cropped much (mapping back holds 10 bytes a voxel of the crop)
    assert least_bytes(scored) == least_bytes(_size()) > scoring_bytes(scored)
    cropped = {"cropped": (50, 100, 100), "resampled": (25, 50, 50)}
    predicting = least_bytes(_size(**cropped))
    scored = _size(scored=True, **cropped)
    assert least_bytes(scored) == max(predicting, scoring_bytes(scored)) == scoring_bytes(scored)
    upsampled = _size(scored=True, resampled=(200, 400, 400))
    assert least_bytes(upsampled) == least_bytes(_size(resampled=(200, 400, 400))) > scoring_bytes(upsampled)
    assert least_bytes(_size(scored=True, held=1000, **cropped)) == scoring_bytes(scored) + 1000


def test_scoring_peak_bytes_is_the_envelope_of_scoring_and_of_the_decision() -> None:
    original = 100 * 200 * 200
    assert scoring_peak_bytes(_size()) == 0
    scored, decided = _size(scored=True), _size(scored=True, postprocess=True)
    assert scoring_peak_bytes(scored) == PEAK_FACTOR * SCORE_PEAK_BYTES * original + PEAK_SLACK
    assert scoring_peak_bytes(scored) > PEAK_FACTOR * scoring_bytes(scored)  # the metrics hold more
    assert scoring_peak_bytes(decided) == PEAK_FACTOR * DECISION_BYTES * original + PEAK_SLACK
    assert peak_bytes(decided) == scoring_peak_bytes(decided) > peak_bytes(_size())
    assert peak_bytes(decided) >= least_bytes(decided)


def test_check_fits_names_the_image_and_its_scoring_where_scoring_holds_more() -> None:
    cropped = {"cropped": (50, 100, 100), "resampled": (25, 50, 50)}  # scoring holds more than predicting
    size = _size(scored=True, **cropped)
    need = least_bytes(size)
    check_fits(size, MemoryLimit(need, JOB), "never said")
    check_fits(_size(**cropped), MemoryLimit(need - 1, JOB), "never said")  # predicting it alone fits
    with pytest.raises(DataError) as refused:
        check_fits(size, MemoryLimit(need - 1, JOB), "set a coarser spacing", "RUN")
    assert str(refused.value) == (
        f"{IMAGE}: scoring it needs at least {need / 2**30:.3g} GiB at once (100 x 200 x 200 voxels as "
        f"stored: its label map read beside its prediction), more than the {(need - 1) / 2**30:.3g} GiB this "
        "process may use (the container's or job's memory limit); run with more memory (run RUN scores it to "
        "evaluate, after training; nothing was trained)")


def _fetched_and_prepared(src: Path, tmp_path: Path):
    """Task90_Synth fetched from `src` into `tmp_path / "data"` and prepared, 2 folds: (the task, its data
    dir)."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import prepare_task

    data = tmp_path / "data"
    task = get_task("Task90_Synth")
    fetch_task(task, data, str(src), progress=False)
    return prepare_task(task, data, num_folds=2, workers=1), data


@pytest.fixture
def prepared(home: Path, tmp_path: Path):
    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    return _fetched_and_prepared(make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4,
                                                     shape=(12, 40, 40)), tmp_path)


def test_the_sweep_and_its_dry_run_refuse_a_run_whose_evaluation_cannot_fit(
        prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hours of training, then the kernel's kill in the evaluation: refused before any run trains, once per
    task, naming a held-out case of the run's fold; the dry run says the same line, exit 3."""
    import medseg_bench.checks
    from medseg_bench.sweep.dry_run import dry_run_lines
    from medseg_bench.sweep.local import check_evaluation_memory

    task, data = prepared
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    check_evaluations([spec], task, data, MemoryLimit(2**40, JOB))
    check_evaluations([spec], task, data, None)
    memory = MemoryLimit(100_000, JOB, "cgroup memory.max")  # the cache built: no case fits in 100 kB
    with pytest.raises(DataError) as refused:
        check_evaluations([spec], task, data, memory)
    message = str(refused.value)
    held_out = task.splits[0]["val"][0]
    assert message.startswith(f"{data / 'Task90_Synth' / 'imagesTr' / held_out}.nii.gz: predicting it needs ")
    assert message.endswith(f"; run with more memory, or set a coarser \"target_spacing\" in "
                            f"{data / 'preprocessed' / 'Task90_Synth' / 'plan.json'} (run {spec.run_id} "
                            "predicts it to evaluate, after training; nothing was trained)")
    monkeypatch.setattr(medseg_bench.checks, "usable_memory", lambda: memory)
    with pytest.raises(DataError) as swept:
        check_evaluation_memory([spec], {("Task90_Synth", 2): task}, data)
    assert str(swept.value) == message
    planned = dry_run_lines([spec], tmp_path / "results", data)
    assert planned.exit_code == 3, planned.lines
    assert f"Task90_Synth: the sweep would stop: {message}" in planned.lines


def test_an_evaluation_refuses_a_held_out_case_it_cannot_fit(prepared) -> None:
    """What a SLURM job's evaluation meets, whose memory the sweep that submitted it did not know: a failed
    run with the line, not the kernel's kill."""
    from medseg_bench.data.preprocess import load_case

    task, _ = prepared
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    case_id = task.splits[0]["val"][0]
    image, _, props = load_case(task.cache_dir, case_id)
    check_held_out(spec, task, props, image.shape, "cpu", MemoryLimit(2**40, JOB))
    plan_file = task.cache_dir.parent / "plan.json"
    pattern = rf"^{re.escape(props['image'])}: predicting it needs at least .* in {re.escape(str(plan_file))}"
    with pytest.raises(DataError, match=pattern + "$"):
        check_held_out(spec, task, props, image.shape, "cpu", MemoryLimit(100_000, JOB))
    assert json.loads((task.cache_dir / f"{case_id}.json").read_text())["image"] == props["image"]


def test_a_case_only_the_networks_activations_cannot_fit_is_refused_naming_them(prepared) -> None:
    """On the CPU, the network's feature maps on a batch of tiles are host memory: a case whose arrays fit
    but not beside them is refused in one line naming the image and the activations, before any run trains
    (beside the network's weights, which the evaluation's process will hold: none is built yet) and by the
    evaluation itself (whose process holds its network already); on a GPU they are the GPU's."""
    from medseg_bench.data.preprocess import case_sizes, load_case, usable_cases
    from medseg_bench.forward_memory import planned_forward_bytes, planned_weight_bytes
    from medseg_bench.inference_memory import run_size
    from medseg_bench.training import build_network, model_inputs

    task, data = prepared
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="dynunet", loss="dice_ce", aug="none", num_folds=2)
    cases = {case.case_id: case for case in usable_cases(task.task, data)}
    by_image = {size.image: size for size in case_sizes(list(cases.values()), task.plan,
                                                        data / "preprocessed" / "Task90_Synth")}
    held_out = [run_size(spec, task, by_image[cases[case_id].image], built=False)
                for case_id in task.splits[0]["val"]]
    counted = planned_forward_bytes("dynunet", "3d", model_inputs(spec, task))
    weights = planned_weight_bytes("dynunet", "3d", model_inputs(spec, task))
    built = build_network(spec, task)
    assert weights == sum(t.numel() * 4 for t in [*built.parameters(), *built.buffers()]) > 2**20
    assert counted is not None and all(size.tile_forward == counted.peak > 0 for size in held_out)
    assert all(size.weights == weights for size in held_out)
    without = max(least_bytes(dataclasses.replace(size, tile_forward=0, weights=0)) for size in held_out)
    first = held_out[0]
    need = least_bytes(first)
    assert need > without + weights  # every case fits but for the network
    memory = MemoryLimit(without, JOB)
    patch = " x ".join(map(str, first.patch))
    activations = f"activations on 1 tile(s) of {patch} voxels at once, on the CPU"
    room = (f"more than the {without / 2**30:.3g} GiB this process may use ({JOB}); run with more memory, "
            "or predict on a GPU")
    with pytest.raises(DataError) as refused:
        check_evaluations([spec], task, data, memory)
    assert str(refused.value) == (
        f"{first.image}: predicting it needs at least {need / 2**30:.3g} GiB at once (the network's weights "
        f"({weights / 2**20:.3g} MiB) and {activations}), {room} (run {spec.run_id} predicts it to evaluate, "
        "after training; nothing was trained)")
    case_id = task.splits[0]["val"][0]
    image, _, props = load_case(task.cache_dir, case_id)
    with pytest.raises(DataError) as evaluating:
        check_held_out(spec, task, props, image.shape, "cpu", memory)
    need = least_bytes(dataclasses.replace(first, weights=0))
    assert str(evaluating.value) == (f"{props['image']}: predicting it needs at least {need / 2**30:.3g} GiB "
                                     f"at once (the network's {activations}), {room}")
    check_held_out(spec, task, props, image.shape, "cuda:0", memory)


def test_the_networks_weights_alone_are_named_where_its_activations_are_not_counted(prepared,
                                                                                     monkeypatch) -> None:
    # a network whose forward pass has no meta form (its activations not counted): its weights still are
    import medseg_bench.forward_memory
    from medseg_bench.data.preprocess import case_sizes, usable_cases
    from medseg_bench.inference_memory import run_size

    task, data = prepared
    monkeypatch.setattr(medseg_bench.forward_memory, "planned_forward_bytes", lambda *args: None)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="dynunet", loss="dice_ce", aug="none", num_folds=2)
    cases = {case.case_id: case for case in usable_cases(task.task, data)}
    sizes = case_sizes(list(cases.values()), task.plan, data / "preprocessed" / "Task90_Synth")
    counted = [run_size(spec, task, size, built=False) for size in sizes]
    without = max(least_bytes(dataclasses.replace(size, weights=0)) for size in counted)
    with pytest.raises(DataError, match=r"GiB at once \(the network's weights \([0-9.]+ MiB\), on the CPU\), "
                                        r"more than"):
        check_evaluations([spec], task, data, MemoryLimit(without, JOB))
    check_evaluations([spec], task, data, MemoryLimit(max(least_bytes(size) for size in counted), JOB))


def test_a_postprocessed_evaluation_counts_one_held_out_case_at_a_time(prepared) -> None:
    """The postprocessing decision reads the held-out cases back from disk (`case_spill`): a run that
    postprocesses needs no more memory to evaluate than its largest case's inference, where the label maps
    and predictions of the cases before it were counted too."""
    from medseg_bench.data.preprocess import case_sizes, usable_cases
    from medseg_bench.inference_memory import run_size

    task, data = prepared
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2,
                   postprocess=True)
    cases = {case.case_id: case for case in usable_cases(task.task, data)}
    sizes = {size.image: size for size in case_sizes(list(cases.values()), task.plan,
                                                     data / "preprocessed" / "Task90_Synth", False)}
    held_out = [sizes[cases[case_id].image] for case_id in task.splits[0]["val"]]
    assert len(held_out) > 1
    largest = max(least_bytes(run_size(spec, task, case, built=False)) for case in held_out)
    check_evaluations([spec], task, data, MemoryLimit(largest, JOB))
    with pytest.raises(DataError):
        check_evaluations([spec], task, data, MemoryLimit(largest - 1, JOB))


@pytest.fixture
def cropped(home: Path, tmp_path: Path):
    """A task whose images are zero outside their label's box, an eighth of the grid: cropped to it."""
    import SimpleITK as sitk

    from tests.conftest import make_synthetic_task, write_task_file

    write_task_file(home, "Task90_Synth")
    src = make_synthetic_task(tmp_path / "src" / "Task90_Synth", num_cases=4, shape=(24, 80, 80))
    for image in sorted((src / "imagesTr").iterdir()):
        read = sitk.ReadImage(str(image))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(src / "labelsTr" / image.name)))
        inside = sitk.GetImageFromArray(sitk.GetArrayFromImage(read) * (label > 0))
        inside.CopyInformation(read)
        sitk.WriteImage(inside, str(image))
    return _fetched_and_prepared(src, tmp_path)


def test_a_held_out_case_whose_scoring_cannot_fit_is_refused_where_its_prediction_could(
        cropped, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A case cropped to an eighth of its grid, at a target spacing coarser than the images': predicting it
    holds little, scoring it against its label map on its own grid more. The sweep's check, before any run
    trains, and the evaluation's own name the image in one line. (The network's activations on a tile and
    its weights, more than these tiny cases' scoring, are left out here: the test of a case only the
    network's activations cannot fit has them.)"""
    import medseg_bench.forward_memory
    from medseg_bench.data.preprocess import case_sizes, usable_cases
    from medseg_bench.inference_memory import run_size

    monkeypatch.setattr(medseg_bench.forward_memory, "planned_forward_bytes", lambda *args: None)
    monkeypatch.setattr(medseg_bench.forward_memory, "planned_weight_bytes", lambda *args: 0)
    task, data = cropped
    coarse = dataclasses.replace(task, plan=dataclasses.replace(task.plan, target_spacing=(3.0, 3.0, 3.0)))
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2,
                   patch_size=(16, 16, 16))
    cases = {case.case_id: case for case in usable_cases(task.task, data)}
    by_image = {size.image: size for size in case_sizes(list(cases.values()), coarse.plan,
                                                        data / "preprocessed" / "Task90_Synth")}
    held_out = [run_size(spec, coarse, by_image[cases[case_id].image]) for case_id in task.splits[0]["val"]]
    predicting = max(least_bytes(dataclasses.replace(size, scored=False)) for size in held_out)
    first = next(size for size in held_out if scoring_bytes(size) > predicting)
    memory = MemoryLimit(predicting, JOB)
    with pytest.raises(DataError) as refused:
        check_evaluations([spec], coarse, data, memory)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{first.image}: scoring it needs at least ")
    assert message.endswith(f"; run with more memory (run {spec.run_id} scores it to evaluate, after "
                            "training; nothing was trained)")
    check_evaluations([spec], coarse, data, MemoryLimit(max(least_bytes(size) for size in held_out), JOB))
    # the evaluation's own check, before it predicts the case
    from medseg_bench.data.preprocess import load_case

    case_id = next(c for c in task.splits[0]["val"] if by_image[cases[c].image].image == first.image)
    _, _, props = load_case(task.cache_dir, case_id)
    with pytest.raises(DataError, match=rf"^{re.escape(props['image'])}: scoring it needs at least .*more "
                                        r"memory$"):
        check_held_out(spec, coarse, props, (1, *first.resampled), "cpu", memory)


def test_an_evaluation_lets_the_probabilities_go_before_it_reads_the_label_map(
        prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring holds the label map as read beside the prediction, not beside the image and probabilities
    too: what `inference_memory` counts as the larger of predicting and scoring, not their sum."""
    import weakref

    import numpy as np

    import medseg_bench.data.preprocess
    import medseg_bench.inference
    from medseg_bench.run import evaluate_fold

    task, _ = prepared
    held: list[weakref.ref] = []

    def predict_probabilities(net, image, *args, **kwargs):
        probs = np.zeros((3, *image.shape[1:]), np.float32)
        probs[0] = 1
        held.extend([weakref.ref(image), weakref.ref(probs)])
        return probs

    read = medseg_bench.data.preprocess.original_label

    def original_label(props):
        assert held and all(ref() is None for ref in held), "the image or probabilities still held"
        return read(props)

    monkeypatch.setattr(medseg_bench.inference, "predict_probabilities", predict_probabilities)
    monkeypatch.setattr(medseg_bench.data.preprocess, "original_label", original_label)
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    frame = evaluate_fold(None, spec, task, "cpu")
    assert sorted(frame["case"].unique()) == sorted(task.splits[0]["val"])


def test_an_evaluation_hands_back_what_training_freed_before_it_reads_what_the_process_holds(
        prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    """`checks.release_freed_memory` before `usable_memory`: what the allocator kept after training is not
    counted against the held-out cases' memory."""
    import numpy as np

    import medseg_bench.inference
    from medseg_bench import checks
    from medseg_bench.run import evaluate_fold

    task, _ = prepared
    calls: list[str] = []
    usable = checks.usable_memory
    monkeypatch.setattr(checks, "release_freed_memory", lambda: calls.append("released"))
    monkeypatch.setattr(checks, "usable_memory", lambda: calls.append("read") or usable())
    monkeypatch.setattr(medseg_bench.inference, "predict_probabilities",
                        lambda net, image, *args, **kwargs: np.eye(3, dtype=np.float32)[
                            np.zeros(image.shape[1:], np.int64)].transpose(3, 0, 1, 2))
    spec = RunSpec(task="Task90_Synth", dims="3d", arch="unet", loss="dice_ce", aug="none", num_folds=2)
    evaluate_fold(None, spec, task, "cpu")
    assert calls[:2] == ["released", "read"]


@pytest.mark.slow
def test_every_case_of_the_real_hippocampus_task_fits_an_evaluation(shared_task: Path, home: Path,
                                                                    tmp_path: Path) -> None:
    """The 200 cases of Task04_Hippocampus: each run's held-out cases, predicted and scored, fit in 160 MiB
    (the sweep checks this before any run trains): a few MiB of arrays, and on the CPU the network's
    activations and weights, 2D the most (the smp U-Net's on 32 slices' 64 x 64 tiles at once: 48 MiB; its
    weights, 93 MiB); once the network is built (the evaluation's own check), 56 MiB."""
    from medseg_bench.data.catalog import get_task
    from medseg_bench.data.fetch import fetch_task
    from medseg_bench.data.preprocess import case_sizes, plan_task, usable_cases
    from medseg_bench.inference_memory import run_size

    data = tmp_path / "data"
    task = get_task("Task04_Hippocampus")
    fetch_task(task, data, str(shared_task), progress=False)
    planned = plan_task(task, data, num_folds=5, workers=1)
    runs = [RunSpec(task="Task04_Hippocampus", dims=dims, arch="unet", loss="dice_ce", aug="none", fold=fold,
                    postprocess=postprocess)
            for dims in ("2d", "3d") for fold in range(5) for postprocess in (False, True)]
    check_evaluations(runs, planned, data, MemoryLimit(160 * MIB, JOB))
    with pytest.raises(DataError, match=r"the network's weights \(93.3 MiB\) and activations on 32 tile"):
        check_evaluations(runs, planned, data, MemoryLimit(140 * MIB, JOB))
    cases = usable_cases(task, data)
    assert len(cases) == 200
    sizes = case_sizes(cases, planned.plan, planned.root)
    assert len(sizes) == 200
    counted = [run_size(spec, planned, size) for spec in (runs[0], runs[10]) for size in sizes]  # 2D, 3D
    assert max(least_bytes(dataclasses.replace(size, tile_forward=0)) for size in counted) < 8 * MIB
    assert 40 * MIB < max(least_bytes(size) for size in counted) < 56 * MIB
