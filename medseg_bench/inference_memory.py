"""What predicting one case needs in memory, once it is preprocessed: a case that cannot fit is refused before
any work on it (`predict`), or before any run trains (`sweep`, whose runs evaluate their held-out cases).

Inference holds arrays of the whole resampled case for every class (or region): the sliding window's
Gaussian-weighted logits and their normalised copy, the softmax (a region run's sigmoid in float64, with its
float64 copy of the logits), an ensemble's running sum; then, mapping back to the original grid, the
probabilities with each class's resampled scores (`resample.to_original`), and, where the probabilities
themselves are mapped back (`predict --save-probabilities`, an ensemble of 2D and 3D runs, every region
run), all of them on the cropped and original grids. On a large CT case at many classes that is many times
the case, where its preprocessing fit (`preprocess_memory`). On the CPU the network's own activations on a
batch of tiles (`forward_pass_bytes`: `inference.TILE_BATCH` tiles at once, 2D a batch of slices' tiles)
are held beside the window's arrays: they do not grow with the case, but a DynUNet's at 128^3 tiles hold
1.3 GiB each, counted on the meta device from the network itself (`forward_memory`; `tile_forward`). On a
GPU the sliding window's arrays and the activations are the GPU's: the host holds the probabilities copied
back.

An evaluation (`run.evaluate_fold`) then scores the case against its label map on the original grid, its
image and probabilities let go: reading the label map (`io.read_label`: ITK's buffer, checked in its own
type, and its uint8 copy) beside the prediction certainly holds 3 bytes per voxel as stored (`scoring_bytes`),
more than mapping back holds (10 bytes a voxel of the crop) where the case was cropped to a small part of its
grid and resampled coarser. The metrics then score each
label and region in turn, on the box of its prediction and reference, at most the grid: their number does
not count, but what they hold on a box as large as the grid is more than the reading, up to 10 bytes per
voxel with regions (`SCORE_PEAK_BYTES`), and the postprocessing decision's largest component
(`ndimage.label`'s int32 components, their sizes per voxel in int64) up to 17, both in the envelope only: a
box may be small (`bench/inference_memory.py`'s scoring rows; a prediction of many scattered voxels holds
more, its surface elements' distances). An evaluation's case needs the larger of predicting and scoring it;
`predict` scores nothing.

`least_bytes` counts only arrays that are certainly held at the same time (host memory); a case whose
`least_bytes` exceed what this process may use (`checks.usable_memory`) cannot be predicted (or scored).
`peak_bytes` is an upper envelope of the peak resident memory measured above a process's own
(`bench/inference_memory.py`), `PEAK_FACTOR` times what predicting certainly holds (the network's forward
pass `FORWARD_FACTOR` times: measured 1.0 to 2.1 times its count) and `PEAK_SLACK` above it, or scoring's
(`scoring_peak_bytes`) where larger. Neither counts the network's weights, held by the process before and
after each case as its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg_bench.checks import MemoryLimit
from medseg_bench.data.preprocess_memory import CaseSize
from medseg_bench.errors import DataError
from medseg_bench.spec import PIPELINE_VERSION

# the envelope of `bench/inference_memory.py`'s measurements: `least_bytes` times this, and this much above
PEAK_FACTOR, PEAK_SLACK = 1.5, 64 * 2**20
# and of a network's forward pass on the CPU against what it certainly holds (`forward_pass_bytes`): oneDNN
# converts a convolution's input of few channels to its blocked layout, channels padded to 16, unseen
FORWARD_FACTOR = 2.5
# scoring, per voxel of the original grid: the label map read (ITK's buffer, at least a byte a voxel, and
# its uint8 copy) beside the prediction (uint8), what it certainly holds; the metrics at their most measured
# (each region's masks of a prediction and label map whose boxes are the grid); the postprocessing decision
# at its worst (`_largest_only` of a mask of several components: the prediction, its mask and copy, the
# int32 components, their sizes per voxel (int64) and the mask kept)
SCORE_BYTES, SCORE_PEAK_BYTES, DECISION_BYTES = 3, 10, 17
BATCH_COPIES = 5  # of a batch of whole slices (2D, version 10 and older): its logits, flips and softmax


@dataclass(frozen=True)
class InferenceSize:
    """A case's voxel counts through inference (z, y, x): at the plan's target spacing (`resampled`, what the
    network sees), cropped (what the prediction is resampled back to) and as stored (`original`), with what
    decides the arrays held for them: the run's network (its patch, 2D or 3D, pipeline version), its
    outputs, and what is asked of the prediction."""

    image: Path  # what a refusal names
    channels: int
    outputs: int  # classes (the background among them), or a region run's regions
    original: tuple[int, ...]
    cropped: tuple[int, ...]
    resampled: tuple[int, ...]
    patch: tuple[int, ...]  # the network's patch: 3D, or 2D in the plane of `slice_axis`
    dims: str = "3d"
    slice_axis: int = 0
    pipeline_version: int = PIPELINE_VERSION
    regions: bool = False
    tta: bool = False
    probabilities: bool = False  # the probabilities mapped back too, not only the label map
    members: int = 1  # networks averaged on this resampled case (an ensemble's)
    on_gpu: bool = False
    held: int = 0  # bytes the caller holds throughout (predict: the image as read)
    scored: bool = False  # scored against its label map on the original grid, after (an evaluation's case)
    postprocess: bool = False  # and the postprocessing decided on it (`spec.postprocess`)
    # what one tile's forward pass through the network holds at once (`forward_memory.forward_bytes`), on the
    # CPU; 0: not counted (on a GPU, the activations are the GPU's)
    tile_forward: int = 0
    # the network's weights on the CPU where the process does not hold them yet (the sweep's check before
    # training, `forward_memory.weight_bytes`); 0 where it holds them (its own already) or they are the GPU's
    weights: int = 0


def least_bytes(size: InferenceSize) -> int:
    """Memory the case's inference certainly holds at once, on the host: the resampled image (float32),
    `held` and the network's `weights`, with the larger of the sliding window's arrays (`_window_bytes`; an
    ensemble's running sum beside them) and what mapping back holds (`_back_bytes`); for a case `scored`, the
    larger of that and `scoring_bytes`."""
    predicting = _predicting_bytes(size, forward_pass_bytes(size))
    return size.held + size.weights + max(predicting, scoring_bytes(size))


def _predicting_bytes(size: InferenceSize, forward: int) -> int:
    """What predicting holds at once, with `forward` bytes for one forward pass of the network."""
    resampled = math.prod(size.resampled)
    total = (8 if size.regions else 4) * size.outputs * resampled if size.members > 1 else 0
    return 4 * size.channels * resampled + max(total + _window_bytes(size, forward), _back_bytes(size))


def scoring_bytes(size: InferenceSize) -> int:
    """What scoring a `scored` case certainly holds at once, its prediction's probabilities let go (0 for a
    case not scored): `SCORE_BYTES` per voxel of its original grid, the label map read beside the prediction.
    The same for any number of labels and regions, and with the postprocessing decision: what the metrics
    and the decision hold grows with the boxes of what they score, which may be small, and is counted in
    the envelope only (`scoring_peak_bytes`)."""
    return SCORE_BYTES * math.prod(size.original) if size.scored else 0


def _window_bytes(size: InferenceSize, forward: int) -> int:
    """What the sliding window (`inference.predict_probabilities`) certainly holds at once beside its input,
    on the host: the case padded up to the patch, the stitched logits (float32, for every class) with the
    window's weight per voxel, their normalised copy, and the probabilities; or while the network runs, its
    activations on a batch of tiles (`forward`, `forward_pass_bytes`) beside the window's weight (and the
    logits, where there is more than one batch); on a GPU only what is copied back. 2D: each slice batch's
    probabilities and their concatenation, or the network's activations beside the slices."""
    from medseg_bench.inference import NNUNET_INFERENCE_FROM, SLICE_WINDOW_FROM

    k, c = size.outputs, size.channels
    resampled = math.prod(size.resampled)
    per_class = 8 if size.regions else 4  # the probabilities: a region run's sigmoid in float64
    if size.dims == "3d":
        padded = math.prod(max(s, p) for s, p in zip(size.resampled, size.patch, strict=True))
        if size.on_gpu:
            return per_class * k * resampled
        copy = 4 * c * padded if padded != resampled else 0
        if size.pipeline_version < NNUNET_INFERENCE_FROM:  # MONAI's output and its softmax; a sum over flips
            return copy + max(4 * k * padded + 4 * k * resampled + 4 * k * resampled * size.tta, forward)
        # the logits and the window's weight, with the logits normalised; then their softmax (a region run's
        # float64 copy and sigmoid) beside them
        activation = (16 if size.regions else 4) * k * resampled
        tiles, per_pass = _tiles(size)
        running = 4 * padded + (4 * k * padded if tiles > per_pass else 0) + forward
        return copy + max(8 * k * padded + 4 * padded, 4 * k * padded + activation, running)
    if size.pipeline_version < SLICE_WINDOW_FROM:  # whole slices, padded to a multiple of 32 and the patch
        padded = size.resampled[size.slice_axis] * _padded_plane(size)
        kept = per_class * k * (resampled if size.on_gpu else padded)  # on the host, each batch's padded
        return 4 * c * padded + max(kept + per_class * k * resampled, forward)
    moved = 4 * c * resampled if c > 1 or size.slice_axis != 0 else 0  # the slices made contiguous
    return moved + max(2 * per_class * k * resampled, forward)


def _tiles(size: InferenceSize) -> tuple[int, int]:
    """The tiles the sliding window cuts the (padded) case into (2D: a batch of slices into), and how many go
    through the network at once (`inference._sliding_window`: `TILE_BATCH`; 2D, each batch of `SLICE_BATCH`
    slices one tile at a time, or `TILE_BATCH` slices' tiles; MONAI's window of version 9 and older, 4); a
    2D run of version 10 and older: its batch of whole slices, as one tile each."""
    from medseg_bench.inference import SLICE_BATCH, SLICE_WINDOW_FROM, TILE_BATCH, _tile_starts

    if size.dims == "3d":
        tiles = math.prod(len(_tile_starts(max(s, p), p))
                          for s, p in zip(size.resampled, size.patch, strict=True))
        return tiles, min(TILE_BATCH, tiles)
    slices = min(SLICE_BATCH, size.resampled[size.slice_axis])
    if size.pipeline_version < SLICE_WINDOW_FROM:
        return slices, slices
    plane = [s for axis, s in enumerate(size.resampled) if axis != size.slice_axis]
    boxes = math.prod(len(_tile_starts(max(s, p), p)) for s, p in zip(plane, size.patch, strict=True))
    return slices * boxes, slices * min(max(1, TILE_BATCH // slices), boxes)


def forward_pass_bytes(size: InferenceSize) -> int:
    """What one forward pass of the sliding window holds on the host: its batch of tiles (float32, as
    `torch.cat` makes it) and the network's activations on them, `tile_forward` for each tile (0 on a GPU,
    or not counted). A 2D run of version 10 or older passes whole slices padded to a multiple of 32 (and the
    patch): a tile's activations scaled to the slice's area."""
    from medseg_bench.inference import SLICE_WINDOW_FROM

    if size.on_gpu or not size.tile_forward:
        return 0
    _, per_pass = _tiles(size)
    tile = math.prod(size.patch)
    if size.dims == "2d" and size.pipeline_version < SLICE_WINDOW_FROM:
        whole = _padded_plane(size)
        return per_pass * (4 * size.channels * whole + math.ceil(size.tile_forward * whole / tile))
    return per_pass * (4 * size.channels * tile + size.tile_forward)


def _padded_plane(size: InferenceSize) -> int:
    """The voxels of one slice as a 2D run of version 10 or older predicts it whole: each side padded up to a
    multiple of 32 and to the patch (`inference._predict_slices`)."""
    return math.prod(_padded_sides(size))


def _padded_sides(size: InferenceSize) -> tuple[int, ...]:
    from medseg_bench.inference import SLICE_MULTIPLE

    plane = [s for axis, s in enumerate(size.resampled) if axis != size.slice_axis]
    return tuple(max(-(-s // SLICE_MULTIPLE) * SLICE_MULTIPLE, p)
                 for s, p in zip(plane, size.patch, strict=True))


def _back_bytes(size: InferenceSize) -> int:
    """What mapping the probabilities back to the original grid certainly holds at once, they among it."""
    k = size.outputs
    resampled, cropped, original = (math.prod(s) for s in (size.resampled, size.cropped, size.original))
    if size.regions:  # float64 probabilities; each region's on the cropped grid, stacked; the original grid
        return 8 * k * resampled + 8 * k * cropped + 4 * k * original
    # each class's resampled score beside the best so far (float32), the label and where the class is better
    labels = 4 * k * resampled + 10 * cropped
    if not size.probabilities:
        return labels
    # all classes' on the cropped grid, normalised (two copies at once); then on the original grid, beside its
    # weighted copy, or beside the label map's mapping back
    return 4 * k * resampled + max(8 * k * cropped, 8 * k * original, 4 * k * original + 10 * cropped)


def peak_bytes(size: InferenceSize) -> int:
    """At most the memory the case's inference uses above the process's own: the envelope of the measured,
    `PEAK_FACTOR` times `least_bytes` (its network's forward pass `FORWARD_FACTOR` times) and `PEAK_SLACK`
    above; for a 2D run of version 10 or older, which
    predicts `SLICE_BATCH` whole slices at once, `BATCH_COPIES` of such a batch's channels and classes too;
    the network's `weights` beside it where they are counted."""
    from medseg_bench.inference import SLICE_BATCH, SLICE_WINDOW_FROM

    # the network's forward pass at FORWARD_FACTOR times its count, the rest at PEAK_FACTOR
    forward = math.ceil(forward_pass_bytes(size) * FORWARD_FACTOR / PEAK_FACTOR)
    peak = math.ceil(PEAK_FACTOR * (size.held + _predicting_bytes(size, forward))) + PEAK_SLACK
    if size.dims == "2d" and size.pipeline_version < SLICE_WINDOW_FROM:
        batch = min(SLICE_BATCH, size.resampled[size.slice_axis]) * _padded_plane(size)
        peak += BATCH_COPIES * 4 * (size.channels + size.outputs) * batch
    return size.weights + max(peak, scoring_peak_bytes(size))


def scoring_peak_bytes(size: InferenceSize) -> int:
    """At most what scoring a `scored` case uses (0 for one not scored), the envelope of the measured:
    `PEAK_FACTOR` times `SCORE_PEAK_BYTES` (the metrics), or with the postprocessing decision
    `DECISION_BYTES`, per voxel of the original grid, and `PEAK_SLACK` above."""
    if not size.scored:
        return 0
    count = (DECISION_BYTES if size.postprocess else SCORE_PEAK_BYTES) * math.prod(size.original)
    return math.ceil(PEAK_FACTOR * count) + PEAK_SLACK


def check_fits(size: InferenceSize, memory: MemoryLimit | None, advice: str, run_id: str = "") -> None:
    """A DataError naming the case's image when its inference, or for a `scored` case its scoring, cannot
    fit: its `least_bytes` are more than `memory` leaves (`MemoryLimit.available_bytes`: a torch process holds
    about 5 GiB of `ulimit -v` already); `advice`: what else to do than give it more memory, for
    its prediction (a scoring on the original grid has nothing else); `run_id`: the run whose evaluation it
    is, where nothing was trained yet."""
    from medseg_bench.inference import SLICE_WINDOW_FROM

    need = least_bytes(size)
    if memory is None or need <= memory.available_bytes:
        return
    scoring = size.held + size.weights + scoring_bytes(size) == need  # scoring holds more than predicting
    network = least_bytes(dataclasses.replace(size, tile_forward=0, weights=0)) <= memory.available_bytes
    if scoring:
        shown = " x ".join(str(n) for n in size.original)
        doing, what = "scoring it", f"{shown} voxels as stored: its label map read beside its prediction"
    elif network:  # it would fit but for the network's weights or activations: no coarser spacing helps
        held = [f"weights ({size.weights / 2**20:.3g} MiB)"] if size.weights else []
        if forward_pass_bytes(size):
            _, per_pass = _tiles(size)
            whole = size.dims == "2d" and size.pipeline_version < SLICE_WINDOW_FROM  # whole slices, padded
            shown = " x ".join(str(n) for n in (_padded_sides(size) if whole else size.patch))
            held.append(f"activations on {per_pass} tile(s) of {shown} voxels at once")
        doing, what = "predicting it", f"the network's {' and '.join(held)}, on the CPU"
        advice = "predict on a GPU"
    else:
        shown = " x ".join(str(n) for n in size.resampled)
        doing, what = "predicting it", (f"{size.outputs} {'region(s)' if size.regions else 'class(es)'}, "
                                        f"{shown} voxels at the plan's target spacing")
    verb = "scores" if scoring else "predicts"
    then = f" (run {run_id} {verb} it to evaluate, after training; nothing was trained)" if run_id else ""
    raise DataError(
        f"{size.image}: {doing} needs at least {need / 2**30:.3g} GiB at once ({what}), more than "
        f"{memory.room}; run with more memory"
        + ("" if scoring else f", or {advice}") + then)


def run_size(spec: Any, prepared: Any, case: CaseSize, on_gpu: bool = False,
             built: bool = True) -> InferenceSize:
    """What run `spec`'s evaluation predicts and scores of a cached case of `prepared`'s task
    (`run.evaluate_fold`): `case`'s voxels through preprocessing, the run's network, outputs and mirroring,
    then its scoring on the original grid, after the probabilities are let go (`scored`; `postprocess`:
    the decision's envelope too). The evaluation holds no other case beside it: the postprocessing decision
    reads the cases back from disk one at a time (`case_spill`). On the CPU, the network's activations on a
    tile (`tile_forward`) are counted from the network the run builds on its plan, on the meta device
    (`forward_memory.planned_forward_bytes`, once per network: a DynUNet at a 128^3 tile holds 1.3 GiB, 4
    such tiles at once; `bench/inference_memory.py`); on a GPU they are the GPU's, not counted. Where the
    network is not `built` yet (the sweep's check before training: the evaluation's process will hold it, as
    it holds what the check counts), its weights on the CPU are counted (`weights`,
    `forward_memory.planned_weight_bytes`); a process that built it holds them already."""
    from medseg_bench.regions import output_channels
    from medseg_bench.training import (
        model_inputs,
        network_spacing,
        resolve_patch_and_batch,
        run_slice_axis,
        run_tta,
    )

    patch, _ = resolve_patch_and_batch(spec, prepared)
    tile_forward = weights = 0
    if not on_gpu:
        from medseg_bench.forward_memory import planned_forward_bytes, planned_weight_bytes

        inputs = model_inputs(spec, prepared)
        counted = planned_forward_bytes(spec.arch, spec.dims, inputs)
        tile_forward = counted.peak if counted is not None else 0
        weights = 0 if built else planned_weight_bytes(spec.arch, spec.dims, inputs)
    return InferenceSize(case.image, case.channels, output_channels(spec, prepared.task), case.shape,
                         case.cropped, case.resampled, patch, spec.dims,
                         run_slice_axis(spec, network_spacing(prepared)), spec.pipeline_version,
                         spec.target == "regions", run_tta(spec), on_gpu=on_gpu, scored=True,
                         postprocess=spec.postprocess, tile_forward=tile_forward, weights=weights)


def check_evaluations(runs: Sequence[Any], prepared: Any, data_dir: Path, memory: MemoryLimit | None) -> None:
    """A DataError, before any of `runs` (of `prepared`'s task) trains, naming the first case a run's
    evaluation cannot predict or score in `memory` (`check_fits`): hours of training ended in the kernel's
    kill, the run left as if pending. Each run predicts and scores its fold's held-out cases (every case of
    the task where `prepared` has no splits yet), one at a time, beside its network's weights on the CPU
    (`run_size(built=False)`)."""
    if memory is None or not runs:
        return
    import torch

    from medseg_bench.data.preprocess import case_sizes, usable_cases

    root = data_dir / "preprocessed" / prepared.task.name
    cases = {case.case_id: case for case in usable_cases(prepared.task, data_dir)}
    on_gpu = torch.cuda.is_available()
    sizes: dict[bool, dict[str, CaseSize]] = {}  # by whether the cache keeps each case's slice spacing
    for spec in runs:
        own = spec.own_slice_spacing
        if own not in sizes:
            found = case_sizes(list(cases.values()), prepared.plan, root, own)
            by_image = {size.image: size for size in found}
            sizes[own] = {case_id: by_image[case.image] for case_id, case in cases.items()
                          if case.image in by_image}
        held_out = prepared.splits[spec.fold]["val"] if spec.fold < len(prepared.splits) else sorted(cases)
        advice = f"set a coarser \"target_spacing\" in {root / 'plan.json'}"
        for case_id in held_out:
            case = sizes[own].get(case_id)
            if case is not None:
                check_fits(run_size(spec, prepared, case, on_gpu, built=False), memory, advice, spec.run_id)


def check_held_out(spec: Any, prepared: Any, props: dict[str, Any], shape: tuple[int, ...], device: str,
                   memory: MemoryLimit | None) -> None:
    """`check_fits` for a cached case run `spec`'s evaluation is about to predict and score: its properties
    (`props`), its cached (C, Z, Y, X) `shape`. What a SLURM job's evaluation meets, whose memory the
    submitting sweep did not know."""
    if memory is None:
        return
    cropped = tuple(hi - lo for lo, hi in props["crop_box"])
    case = CaseSize(Path(props.get("image", props.get("case_id", "case"))), shape[0],
                    tuple(props["shape_original_zyx"]), cropped, tuple(shape[1:]))
    plan_file = prepared.cache_dir.parent / "plan.json"
    check_fits(run_size(spec, prepared, case, str(device).startswith("cuda")), memory,
               f"set a coarser \"target_spacing\" in {plan_file}")
