"""Augmentation presets, the same names in 2D and 3D: adding one is one `AUGS.add` entry (a name and its
steps, see "presets" below); `medseg-bench list augs` shows them.

Each step draws its parameters from a seeded generator, then calls a deterministic twin with them, so what was
applied can be logged and replayed (as TorchIO does). Steps work on numpy arrays: image (C, *spatial) float32,
label (*spatial) uint8, and run inside DataLoader workers.

Rotation, scaling and elastic deformation read around the patch, as nnU-Net's do: `draw_plan` draws every
step first, `input_shape` says how large a region the patch's leading resampling steps read, the caller crops
that region from the volume around the patch's centre, and `apply_plan` returns the patch. Corners of a
rotated patch then hold the image, not zeros (unless the region leaves the volume).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from medseg_bench.registry import Registry

Params = dict[str, Any]
Arrays = tuple[np.ndarray, np.ndarray]
Shape = tuple[int, ...]
Plan = list[tuple["Step", Params]]
Draw = Callable[[np.random.Generator, Shape, "int | None"], "Params | None"]


@dataclass(frozen=True)
class Step:
    """One augmentation: applied with `probability`, with parameters from `draw(rng, patch_shape,
    thick_axis)` (spatial shape; None from `draw`: the step decided not to act, as nnU-Net's spatial
    transform, which rotates and scales each with its own probability).

    A resampling step has `reads(params, out_shape)`: the input shape it reads to write an output of
    `out_shape` (centred on the same point); its `apply` writes `params["out_shape"]` when given (else the
    input's shape)."""

    name: str
    probability: float
    draw: Draw
    apply: Callable[[np.ndarray, np.ndarray, Params], Arrays]
    reads: Callable[[Params, Shape], Shape] | None = None
    chance: str = ""  # how often it acts, when `draw` decides more than `probability` says (for `list augs`)

    def describe(self) -> str:
        return f"{self.name} ({self.chance or f'{self.probability:g}'})"


AUGS: Registry[tuple[Step, ...]] = Registry("aug")


# Spatial steps that act in plane only on thick-slice 3D patches (nnU-Net's "dummy 2D" augmentation).
IN_PLANE_STEPS = ("affine", "elastic", "lowres")


def draw_plan(steps: tuple[Step, ...], rng: np.random.Generator, shape: Sequence[int],
              thick_axis: int | None = None) -> Plan:
    """The steps that fire and their parameters, drawn in order (applying draws nothing more).

    `thick_axis` (3D patches of anisotropic data: `resample.anisotropic_axis` of the target spacing):
    rotation, scaling, elastic deformation and simulated low resolution act in the plane across it, the same
    on every slice, as nnU-Net does, rather than smearing thick slices into each other. The random draws are
    the same either way, so isotropic data is augmented exactly as before.
    """
    plan: Plan = []
    shape = tuple(int(s) for s in shape)
    thick_axis = thick_axis if len(shape) == 3 else None
    for step in steps:
        if rng.random() >= step.probability:
            continue
        params = step.draw(rng, shape, thick_axis)
        if params is None:
            continue
        if thick_axis is not None and step.name in IN_PLANE_STEPS:
            params = {**params, "thick_axis": thick_axis}
        plan.append((step, params))
    return plan


def _output_shapes(plan: Plan, out_shape: Sequence[int]) -> tuple[list[Shape | None], Shape]:
    """Per step, the shape a leading resampling step writes (None: the step keeps its input's shape), and
    the region the first one reads. Leading: before any step that is not resampling; later ones resample
    the patch in place."""
    leading = 0
    while leading < len(plan) and plan[leading][0].reads is not None:
        leading += 1
    shapes: list[Shape | None] = [None] * len(plan)
    shape = tuple(int(s) for s in out_shape)
    for index in reversed(range(leading)):
        step, params = plan[index]
        shapes[index] = shape
        assert step.reads is not None
        shape = step.reads(params, shape)
    return shapes, shape


def input_shape(plan: Plan, out_shape: Sequence[int]) -> Shape:
    """The region (same centre as the patch) that `apply_plan` reads to write a patch of `out_shape`."""
    return _output_shapes(plan, out_shape)[1]


def apply_plan(image: np.ndarray, label: np.ndarray, plan: Plan, out_shape: Sequence[int] | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Params]]]:
    """Apply drawn steps; returns the patch and the (name, params) of what was applied.

    With `out_shape`, the arrays are the region `input_shape(plan, out_shape)` around the patch. Without,
    they are the patch itself and resampling reads nothing around it (corners of a rotation fill with zeros:
    pipeline version 5 and older)."""
    shapes: list[Shape | None] = [None] * len(plan)
    if out_shape is not None:
        shapes, region = _output_shapes(plan, out_shape)
        if tuple(label.shape) != region:
            raise ValueError(f"augmentation reads {region}, got {tuple(label.shape)}")
    applied: list[tuple[str, Params]] = []
    for (step, params), shape in zip(plan, shapes, strict=True):
        if step.reads is not None:
            params = {**params, "out_shape": list(shape if shape is not None else label.shape)}
        image, label = step.apply(image, label, params)
        applied.append((step.name, params))
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label), applied


def augment(image: np.ndarray, label: np.ndarray, steps: tuple[Step, ...], rng: np.random.Generator,
            thick_axis: int | None = None) -> tuple[np.ndarray, np.ndarray, list[tuple[str, Params]]]:
    """Draw and apply a preset on a patch alone (no margin)."""
    return apply_plan(image, label, draw_plan(steps, rng, label.shape, thick_axis))


def _span(extent: np.ndarray, out_shape: Shape) -> Shape:
    """Voxels read along each axis to sample a span of `extent` voxels (plus the neighbours linear
    interpolation reads), never fewer than `out_shape`, with its parity (so both share a centre voxel)."""
    out = np.array(out_shape)
    need = np.where(extent <= out - 1 + 1e-6, out, np.ceil(extent - 1e-6).astype(int) + 3)
    need = need + (need - out) % 2
    return tuple(int(n) for n in need)


# --- spatial -------------------------------------------------------------------------------------------


def _apply_mirror(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    for axis in p["axes"]:
        image = np.flip(image, axis + 1)
        label = np.flip(label, axis)
    return image, label


def _draw_mirror(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params:
    return {"axes": [a for a in range(len(shape)) if rng.random() < 0.5]}


def _rotation_matrix(angles_deg: list[float]) -> np.ndarray:
    if len(angles_deg) == 1:
        a = np.deg2rad(angles_deg[0])
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    matrix = np.eye(3)
    for axis, angle in enumerate(angles_deg):
        a = np.deg2rad(angle)
        i, j = [k for k in range(3) if k != axis]
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
        matrix = rot @ matrix
    return matrix


def _affine_matrix(p: Params, ndim: int) -> np.ndarray:
    """Output to input coordinates (about the centres): rotation, then 1 / scale."""
    thick = p.get("thick_axis")
    if thick is None:
        return _rotation_matrix(p["angles_deg"]) / p["scale"]
    # about the thick axis only, scaled in plane only
    angles = [a if axis == thick else 0.0 for axis, a in enumerate(p["angles_deg"])]
    inverse_scale = np.array([1.0 if axis == thick else 1.0 / p["scale"] for axis in range(ndim)])
    return _rotation_matrix(angles) @ np.diag(inverse_scale)


def _reads_affine(p: Params, out_shape: Shape) -> Shape:
    return _span(np.abs(_affine_matrix(p, len(out_shape))) @ (np.array(out_shape) - 1), out_shape)


def _apply_affine(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    out_shape = tuple(p.get("out_shape", label.shape))
    matrix = _affine_matrix(p, label.ndim)
    offset = (np.array(label.shape) - 1) / 2.0 - matrix @ ((np.array(out_shape) - 1) / 2.0)
    out = np.stack([ndimage.affine_transform(ch, matrix, offset, output_shape=out_shape, order=1,
                                             mode="constant", cval=0.0) for ch in image])
    if p.get("label") != "linear":  # nearest neighbour
        return out, ndimage.affine_transform(label, matrix, offset, output_shape=out_shape, order=0,
                                             mode="constant", cval=0)
    # nnU-Net's: each label's mask interpolated linearly, the largest wins (background beyond the region)
    labels = np.union1d([0], np.unique(label)).astype(label.dtype)
    scores = [ndimage.affine_transform((label == value).astype(np.float32), matrix, offset,
                                       output_shape=out_shape, order=1, mode="constant",
                                       cval=1.0 if value == 0 else 0.0) for value in labels]
    return out, labels[np.argmax(np.stack(scores), axis=0)]


def _draw_affine(max_deg: float, scale: tuple[float, float]) -> Draw:
    def draw(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params:
        count = 1 if len(shape) == 2 else 3
        return {"angles_deg": [float(rng.uniform(-max_deg, max_deg)) for _ in range(count)],
                "scale": float(rng.uniform(*scale))}

    return draw


@lru_cache(maxsize=1)  # `reads`, then `apply`, of the same step
def _elastic_field(seed: int, alpha: float, sigma: float, thick: int | None, shape: Shape
                   ) -> tuple[np.ndarray, ...]:
    """The displacement along each axis of an output of `shape` (computed once for `reads` and `apply`)."""
    field_rng = np.random.default_rng(seed)
    if thick is None:
        return tuple(ndimage.gaussian_filter(field_rng.uniform(-1, 1, shape), sigma) * alpha for _ in shape)
    # one in-plane field for every slice; nothing moves along the thick axis
    plane = tuple(s for axis, s in enumerate(shape) if axis != thick)
    return tuple(np.zeros((1,) * len(shape)) if axis == thick else np.expand_dims(
        ndimage.gaussian_filter(field_rng.uniform(-1, 1, plane), sigma) * alpha, thick)
        for axis in range(len(shape)))


def _field(p: Params, shape: Shape) -> tuple[np.ndarray, ...]:
    return _elastic_field(p["seed"], p["alpha"], p["sigma"], p.get("thick_axis"), tuple(shape))


def _reads_elastic(p: Params, out_shape: Shape) -> Shape:
    reach = np.array([np.abs(d).max() for d in _field(p, out_shape)])
    return _span(np.array(out_shape) - 1 + 2 * reach, out_shape)


def _apply_elastic(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    out_shape = tuple(p.get("out_shape", label.shape))
    shift = (np.array(label.shape) - np.array(out_shape)) / 2.0
    ndim = len(out_shape)
    field = _field(p, out_shape)
    coords = [np.broadcast_to(np.arange(size, dtype=np.float32).reshape([-1 if a == axis else 1
                                                                        for a in range(ndim)])
                              + field[axis] + shift[axis], out_shape)
              for axis, size in enumerate(out_shape)]
    out = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="constant") for ch in image])
    seg = ndimage.map_coordinates(label, coords, order=0, mode="constant")
    return out, seg


def _draw_elastic(alpha_3d: tuple[float, float], alpha_in_plane: tuple[float, float],
                  sigma: tuple[float, float]) -> Draw:
    """Field magnitude `alpha_3d` on 3D patches, `alpha_in_plane` on 2D ones and in plane across a thick
    axis (dummy 2D); field smoothing `sigma` (voxels)."""
    def draw(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params:
        alpha = alpha_in_plane if len(shape) == 2 or thick is not None else alpha_3d
        return {"seed": int(rng.integers(2**31)), "alpha": float(rng.uniform(*alpha)),
                "sigma": float(rng.uniform(*sigma))}

    return draw


def _lowres(ch: np.ndarray, zoom: float, thick: int | None, order: int) -> np.ndarray:
    """`ch` downsampled by `zoom` (nearest), then upsampled back with spline `order`."""
    shape = np.array(ch.shape)
    small = np.maximum(1, np.round(shape * zoom)).astype(int)
    if thick is not None:
        small[thick] = shape[thick]  # thick slices are low resolution already
    down = ndimage.zoom(ch, small / shape, order=0)
    return ndimage.zoom(down, shape / np.array(down.shape), order=order)[tuple(slice(0, s) for s in shape)]


def _apply_lowres(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return np.stack([_lowres(ch, p["zoom"], p.get("thick_axis"), 3) for ch in image]), label


# --- intensity -----------------------------------------------------------------------------------------


def _apply_scale_shift(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return image * p["scale"] + p["shift"], label


def _apply_noise(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    noise = np.random.default_rng(p["seed"]).normal(0.0, p["std"], image.shape).astype(np.float32)
    return image + noise, label


def _apply_blur(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return np.stack([ndimage.gaussian_filter(ch, p["sigma"]) for ch in image]), label


def _contrast(ch: np.ndarray, factor: float) -> np.ndarray:
    """Spread about the mean by `factor`, within the channel's range."""
    mean, lo, hi = ch.mean(), ch.min(), ch.max()
    return np.clip((ch - mean) * factor + mean, lo, hi)


def _apply_contrast(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return np.stack([_contrast(ch, p["factor"]) for ch in image]), label


def _gamma(ch: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma on the channel's range (kept)."""
    lo, hi = float(ch.min()), float(ch.max())
    span = max(hi - lo, 1e-8)
    return np.power((ch - lo) / span, gamma) * span + lo


def _apply_gamma(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return np.stack([_gamma(ch, p["gamma"]) for ch in image]), label


def _uniform(key: str, low: float, high: float) -> Draw:
    return lambda rng, shape, thick: {key: float(rng.uniform(low, high))}


def _seeded(key: str, low: float, high: float) -> Draw:
    return lambda rng, shape, thick: {key: float(rng.uniform(low, high)), "seed": int(rng.integers(2**31))}


# --- nnU-Net v2's default training transforms (nnUNetTrainer.get_training_transforms) -------------------
# Intensity steps act per channel, each channel with its own draws from the step's seed, as there.


def _bg_contrast(rng: np.random.Generator, low: float, high: float) -> float:
    """batchgenerators' BGContrast: half the factors below 1, half above."""
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def _draw_nnunet_spatial(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params | None:
    """Rotation (p 0.2) and scaling (p 0.2), drawn independently, applied as one resampling. Rotation:
    +-30 deg about each axis in 3D; in plane +-180 deg on thick-slice 3D ("dummy 2D") and square-ish 2D
    patches (sides within 1.5x), +-15 deg on elongated 2D ones. Scaling: a factor in (0.7, 1.4) on the
    sampling grid (above 1, objects look smaller). Labels are resampled as nnU-Net's: each label's mask
    linearly, the largest wins."""
    rotate, scale = rng.random() < 0.2, rng.random() < 0.2
    if not (rotate or scale):
        return None
    if len(shape) == 2:
        limits = [180.0 if max(shape) / min(shape) <= 1.5 else 15.0]
    else:
        limits = [180.0 if axis == thick else 0.0 for axis in range(3)] if thick is not None else [30.0] * 3
    angles = [float(rng.uniform(-limit, limit)) if rotate and limit else 0.0 for limit in limits]
    factor = float(rng.uniform(0.7, 1.4)) if scale else 1.0
    return {"angles_deg": angles, "scale": 1.0 / factor, "label": "linear"}


def _per_channel(image: np.ndarray, p: Params,
                 change: Callable[[np.ndarray, np.random.Generator], np.ndarray], p_channel: float = 1.0
                 ) -> np.ndarray:
    """`change` each channel (with probability `p_channel`), with draws from the step's seed."""
    rng = np.random.default_rng(p["seed"])
    return np.stack([change(ch, rng) if rng.random() < p_channel else ch for ch in image])


def _draw_seed(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params:
    return {"seed": int(rng.integers(2**31))}


def _apply_shared_noise(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    """One noise field added to every channel (nnU-Net's `synchronize_channels=True`)."""
    noise = np.random.default_rng(p["seed"]).normal(0.0, p["std"], image.shape[1:]).astype(np.float32)
    return image + noise[None], label


def _nnunet_noise_v6(rng: np.random.Generator, shape: Shape, thick: int | None) -> Params:
    """Pipeline version 6 read `noise_variance` as a variance (std up to 0.32), a field per channel."""
    variance = rng.uniform(0.0, 0.1)
    return {"std": float(np.sqrt(variance)), "seed": int(rng.integers(2**31))}


def _apply_nnunet_blur(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    def blur(ch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ndimage.gaussian_filter(ch, [float(rng.uniform(0.5, 1.0)) for _ in range(ch.ndim)])

    return _per_channel(image, p, blur, 0.5), label


def _apply_nnunet_brightness(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return _per_channel(image, p, lambda ch, rng: ch * _bg_contrast(rng, 0.75, 1.25)), label


def _apply_nnunet_contrast(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
    return _per_channel(image, p, lambda ch, rng: _contrast(ch, _bg_contrast(rng, 0.75, 1.25))), label


def _lowres_torch(ch: np.ndarray, zoom: float, thick: int | None) -> np.ndarray:
    """batchgeneratorsv2's SimulateLowResolutionTransform on one channel: torch's `interpolate` down by
    `zoom` (nearest-exact), then back up (linear), voxel centres aligned (`align_corners=False`)."""
    import torch
    from torch.nn.functional import interpolate

    small = [max(1, round(n * zoom)) for n in ch.shape]
    if thick is not None:
        small[thick] = ch.shape[thick]  # nnU-Net's `ignore_axes` on dummy-2D patches
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[ch.ndim]
    with torch.no_grad():
        down = interpolate(torch.from_numpy(np.ascontiguousarray(ch, dtype=np.float32))[None, None], small,
                           mode="nearest-exact")
        return interpolate(down, ch.shape, mode=mode)[0, 0].numpy()


def _nnunet_lowres(resample: Callable[[np.ndarray, float, int | None], np.ndarray]
                   ) -> Callable[[np.ndarray, np.ndarray, Params], Arrays]:
    """Each channel with p 0.5, its own zoom U(0.5, 1) for all axes (nnU-Net's `synchronize_axes`)."""
    def apply(image: np.ndarray, label: np.ndarray, p: Params) -> Arrays:
        def lowres(ch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            return resample(ch, float(rng.uniform(0.5, 1.0)), p.get("thick_axis"))

        return _per_channel(image, p, lowres, 0.5), label

    return apply


def _nnunet_gamma(invert: bool) -> Callable[[np.ndarray, np.ndarray, Params], Arrays]:
    """Gamma in (0.7, 1.5) on the channel's range (of the inverted image with `invert`), then its mean and
    standard deviation restored."""
    def gamma(ch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sign = -1.0 if invert else 1.0
        ch = ch * sign
        mean, std = ch.mean(), ch.std()
        ch = _gamma(ch, _bg_contrast(rng, 0.7, 1.5))
        ch = (ch - ch.mean()) * (std / max(float(ch.std()), 1e-7)) + mean
        return ch * sign

    return lambda image, label, p: (_per_channel(image, p, gamma), label)


# --- presets: adding one is one entry here -------------------------------------------------------------

MIRROR = Step("mirror", 1.0, _draw_mirror, _apply_mirror)
# nnU-Net's `noise_variance=(0, 0.1)` is drawn as the standard deviation: batchgeneratorsv2's
# GaussianNoiseTransform passes the drawn value to `np.random.normal` as its scale.
NNUNET_NOISE = Step("noise", 0.1, _seeded("std", 0.0, 0.1), _apply_shared_noise)
# nnU-Net's elastic deformation (v1's default_3D/2D_augmentation_params, batchgenerators; v2 leaves it out).
HEAVY_ELASTIC = Step("elastic", 0.2, _draw_elastic((0, 900), (0, 200), (9, 13)), _apply_elastic,
                     _reads_elastic)
NNUNET_LOWRES = Step("lowres", 0.25, _draw_seed, _nnunet_lowres(_lowres_torch))
# The light and heavy presets' steps, by name: a new preset reuses a step (which `_OLDER_STEPS` then
# keeps treating as that step) rather than copying it.
LIGHT_AFFINE = Step("affine", 0.3, _draw_affine(15.0, (0.9, 1.1)), _apply_affine, _reads_affine)
LIGHT_SCALE_SHIFT = Step("scale_shift", 0.3,
                         lambda rng, shape, thick: {"scale": float(rng.uniform(0.9, 1.1)),
                                                    "shift": float(rng.uniform(-0.1, 0.1))},
                         _apply_scale_shift)
HEAVY_AFFINE = Step("affine", 0.2, _draw_affine(30.0, (0.7, 1.4)), _apply_affine, _reads_affine)
HEAVY_NOISE = Step("noise", 0.1, _seeded("std", 0.0, 0.3), _apply_noise)
HEAVY_BLUR = Step("blur", 0.2, _uniform("sigma", 0.5, 1.0), _apply_blur)
HEAVY_BRIGHTNESS = Step("brightness", 0.15,
                        lambda rng, shape, thick: {"scale": float(rng.uniform(0.75, 1.25)), "shift": 0.0},
                        _apply_scale_shift)
HEAVY_CONTRAST = Step("contrast", 0.15, _uniform("factor", 0.75, 1.25), _apply_contrast)
HEAVY_LOWRES = Step("lowres", 0.25, _uniform("zoom", 0.5, 1.0), _apply_lowres)
HEAVY_GAMMA = Step("gamma", 0.3, _uniform("gamma", 0.7, 1.5), _apply_gamma)

# Steps that a pipeline version changed, as runs of older versions apply them: {version: {step: older step}},
# the older step used by runs before that version. Each draws as many numbers as its successor, so the other
# steps' draws match.
_OLDER_STEPS = {
    7: {
        NNUNET_NOISE: Step("noise", 0.1, _nnunet_noise_v6, _apply_noise),
        # a field of 0.24 voxels std in 3D
        HEAVY_ELASTIC: Step("elastic", 0.2, _draw_elastic((20, 60), (20, 60), (6, 9)), _apply_elastic,
                            _reads_elastic),
    },
    9: {  # scipy's `zoom`, whose grid aligns the corner voxels, not the voxel centres
        NNUNET_LOWRES: Step("lowres", 0.25, _draw_seed,
                            _nnunet_lowres(lambda ch, zoom, thick: _lowres(ch, zoom, thick, 1))),
    },
}

AUGS.add("none", ())
AUGS.add("light", (LIGHT_AFFINE, LIGHT_SCALE_SHIFT, MIRROR))
AUGS.add("heavy", (  # after nnU-Net's default training transforms
    HEAVY_AFFINE, HEAVY_ELASTIC, HEAVY_NOISE, HEAVY_BLUR, HEAVY_BRIGHTNESS, HEAVY_CONTRAST, HEAVY_LOWRES,
    HEAVY_GAMMA, MIRROR,
))
AUGS.add("nnunet", (  # nnU-Net v2's default training transforms, in its order, with its probabilities
    Step("affine", 1.0, _draw_nnunet_spatial, _apply_affine, _reads_affine, "rotation 0.2, scaling 0.2"),
    NNUNET_NOISE,
    Step("blur", 0.2, _draw_seed, _apply_nnunet_blur),
    Step("brightness", 0.15, _draw_seed, _apply_nnunet_brightness),
    Step("contrast", 0.15, _draw_seed, _apply_nnunet_contrast),
    NNUNET_LOWRES,
    Step("gamma_inverted", 0.1, _draw_seed, _nnunet_gamma(invert=True)),
    Step("gamma", 0.3, _draw_seed, _nnunet_gamma(invert=False)),
    MIRROR,
))


def steps_for_version(steps: tuple[Step, ...], pipeline_version: int) -> tuple[Step, ...]:
    """`steps` as a run of `pipeline_version` applies them, so that a run resumes as it began
    (`_OLDER_STEPS`): before version 7, the nnunet preset's noise had a std up to 0.32, a field per channel,
    and heavy's elastic field was about a seventh of nnU-Net's in 3D; before version 9, the nnunet preset's
    low resolution resampled on scipy's corner-aligned grid."""
    for version, older in _OLDER_STEPS.items():
        if pipeline_version < version:
            steps = tuple(older.get(step, step) for step in steps)
    return steps


def mirrors(aug: str) -> bool:
    """Whether preset `aug` mirrors training samples (along every axis, each with p 0.5): what mirroring
    test-time augmentation assumes of a network."""
    return any(step.name == MIRROR.name for step in AUGS.get(aug))
