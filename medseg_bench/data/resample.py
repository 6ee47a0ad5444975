"""Geometry between an original image and its preprocessed form, both ways.

Forward (cache build): crop to the non-zero region, then resample to the plan's target spacing. Images use
third-order splines, label maps linear interpolation of their one-hot encoding (as nnU-Net). When a volume is
anisotropic (lowest resolution over 3x the highest), the low-resolution axis is resampled separately with
nearest-neighbour interpolation, so that thick slices are not smeared into each other; when two axes share the
lowest resolution, none is (`separate_axis`, nnU-Net's rule).

Backward (evaluation): `to_original` maps a prediction (labels or class probabilities) in preprocessed space
onto the original image grid: resample to the cropped shape, then paste into the crop box; the result has the
original shape, and the cached properties carry the original spacing, origin and direction.

All arrays are in numpy (Z, Y, X) order; spacings too (`Geometry.spacing_zyx`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

ANISOTROPY_THRESHOLD = 3.0

CropBox = list[list[int]]  # [[lo, hi], ...] per spatial axis, hi exclusive


def nonzero_box(image: np.ndarray) -> CropBox:
    """Bounding box of voxels that are non-zero in any channel of a (C, Z, Y, X) image.

    The label plays no part (as in nnU-Net): a held-out case's crop, and so its score, must not depend on its
    reference. An all-zero image keeps its full extent.
    """
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return [[0, int(s)] for s in mask.shape]
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def crop(array: np.ndarray, box: CropBox) -> np.ndarray:
    """Crop the last len(box) axes of `array` to `box`."""
    lead = (slice(None),) * (array.ndim - len(box))
    return array[lead + tuple(slice(lo, hi) for lo, hi in box)]


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Shape of a volume of `shape` at `spacing` once resampled to `target_spacing` (at least 1 per axis)."""
    return tuple(
        # In nnU-Net's order of operations (`compute_new_shape`): n * s / t rounds otherwise in some .5 cases.
        max(1, int(round(s / t * n))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def anisotropic_axis(spacing: Sequence[float]) -> int | None:
    """The coarsest axis of `spacing` when it is over 3x the finest (the first, when several are), else None.

    Augmentation takes it as the thick axis of a 3D patch; resampling takes `separate_axis`, which asks more.
    """
    values = np.asarray(spacing, dtype=float)
    return int(np.argmax(values)) if values.max() / values.min() > ANISOTROPY_THRESHOLD else None


def separate_axis(current_spacing: Sequence[float], new_spacing: Sequence[float]) -> int | None:
    """The axis to resample on its own when going from `current_spacing` to `new_spacing`, or None.

    nnU-Net's `determine_do_sep_z_and_axis`: the coarsest axis of the current spacing when that is
    anisotropic, else of the new one when that is; None when neither is, and None when two or three axes
    share that coarsest spacing (e.g. (0.24, 1.25, 1.25) mm: then all axes are resampled together).
    """
    for spacing in (current_spacing, new_spacing):
        if anisotropic_axis(spacing) is not None:
            values = np.asarray(spacing, dtype=float)
            coarse = np.flatnonzero(values.max() / values == 1)
            return int(coarse[0]) if coarse.size == 1 else None
    return None


def _resample_axes(volume: np.ndarray, new_shape: Sequence[int], order: int) -> np.ndarray:
    """Resample one (Z, Y, X) float volume to `new_shape`, voxel centres aligned (like `skimage` resize)."""
    from scipy.ndimage import affine_transform

    new_shape = tuple(int(s) for s in new_shape)
    if tuple(volume.shape) == new_shape:
        return volume.astype(np.float32, copy=False)
    scale = np.asarray(volume.shape, dtype=float) / np.asarray(new_shape, dtype=float)
    offset = 0.5 * scale - 0.5
    with warnings.catch_warnings():  # older SciPy (1.15) notes a 1-D matrix (the diagonal) changed in 0.18
        warnings.filterwarnings("ignore", "The behavior of affine_transform with a 1-D array", UserWarning)
        return affine_transform(
            volume,
            scale,
            offset=offset,
            output_shape=new_shape,
            order=order,
            mode="nearest",
            prefilter=order > 1,
            output=np.float32,
        )


def _resample_volume(
    volume: np.ndarray,
    new_shape: Sequence[int],
    order: int,
    separate_axis: int | None,
) -> np.ndarray:
    """How runs of pipeline version 11 and older map predictions back: scipy's `affine_transform` in float32,
    the separate axis nearest, which rounds some coordinates that are halfway in exact arithmetic the other
    way than nnU-Net (6 slices to 7: 0 1 2 2 3 4 5 where nnU-Net takes 0 1 2 3 3 4 5; `_nnunet_resize`)."""
    if separate_axis is None or tuple(volume.shape) == tuple(new_shape):
        return _resample_axes(volume, new_shape, order)
    in_plane = list(new_shape)
    in_plane[separate_axis] = volume.shape[separate_axis]
    return _resample_axes(_resample_axes(volume, in_plane, order), new_shape, 0)


def _nearest_slices(volume: np.ndarray, size: int, axis: int) -> np.ndarray:
    """`volume` resampled to `size` along `axis` by nearest neighbour, as nnU-Net resamples a separate axis:
    scipy's order-0 `map_coordinates` (round half up, then clamp; mode "nearest") at its voxel-centre
    coordinates, computed in its order, so that halfway coordinates round as they do there."""
    n = volume.shape[axis]
    if n == size:
        return volume
    centres = float(n) / size * (np.arange(size) + 0.5) - 0.5
    return np.take(volume, np.clip(np.floor(centres + 0.5), 0, n - 1).astype(np.intp), axis=axis)


def resample_image(
    image: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None, order: int = 3
) -> np.ndarray:
    """Resample a (C, Z, Y, X) image channel by channel, as nnU-Net resamples it to the last bit (spline of
    `order`, clipped to the input's range, per slice when `separate_axis` goes on its own: `_nnunet_resize`);
    float32."""
    shape = tuple(int(s) for s in new_shape)
    if tuple(image.shape[1:]) == shape:
        return image.astype(np.float32, copy=False)
    return np.stack([_nnunet_resize(image[c], shape, order, separate_axis, output=np.float32, clip=True)
                     for c in range(image.shape[0])])


def _nnunet_resize(volume: np.ndarray, new_shape: tuple[int, ...], order: int, separate_axis: int | None,
                   output: type = np.float64, clip: bool = False) -> np.ndarray:
    """One volume resampled as nnU-Net's `resample_data_or_seg` does it, to the last bit: skimage's `resize`
    (`mode="edge"`, no anti-aliasing; `clip`: to the input's range), i.e. scipy's `zoom` on voxel centres in
    float64, over the whole volume, or slice by slice with the separate axis then taken nearest at nnU-Net's
    coordinates (`_nearest_slices`); cast to `output` at the end, as nnU-Net stores into its input's dtype.

    For label maps (order 0) and label masks (order 1) exact scores matter: ties are decided by equality, and
    float32 scores, or another interpolator's rounding, turn some of nnU-Net's near ties into ties and back.
    """
    from scipy.ndimage import zoom

    if tuple(volume.shape) == tuple(new_shape):
        return volume.astype(output, copy=False)

    def resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        factors = np.divide(array.shape, shape)  # skimage's expression, so zoom rounds as it does
        source = array.astype(np.float64, copy=False)
        out = zoom(source, [1 / f for f in factors], order=order, mode="nearest", grid_mode=True,
                   output=np.float64 if clip else output)
        if clip:
            np.clip(out, source.min(), source.max(), out=out)
        return out.astype(output, copy=False)

    if separate_axis is None:
        return resize(volume, new_shape)
    plane = [s for a, s in enumerate(new_shape) if a != separate_axis]
    n = volume.shape[separate_axis]
    step_shape = list(new_shape)
    step_shape[separate_axis] = n
    step: np.ndarray = np.empty(step_shape, dtype=output)
    for i in range(n):
        index = (slice(None),) * separate_axis + (i,)
        step[index] = resize(volume[index], plane)
    return _nearest_slices(step, new_shape[separate_axis], separate_axis)


def resample_label(
    label: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None,
    outside: np.ndarray | None = None,
) -> np.ndarray:
    """Resample a (Z, Y, X) label map by linear interpolation of each class's mask, then argmax; uint8.

    nnU-Net's `resize_segmentation` (batchgenerators' `seg_tiebreak="nearest"`) to the voxel: an exact tie (a
    voxel halfway between two labels, as at every boundary of an even resize factor) goes to the nearest
    voxel's label when that is one of the tied labels, else to the lowest of them. `outside` (a boolean map
    of `label`'s shape): background there is a label of its own below all others while resampling, and
    background again after, as nnU-Net's label -1 outside the non-zero mask (`crop_to_nonzero`). Classes are
    visited one at a time: a few arrays of the output size in memory (two of float64), not one per class.
    """
    shape = tuple(int(s) for s in new_shape)
    if tuple(label.shape) == shape:
        return label.astype(np.uint8, copy=False)
    seg = label.astype(np.int16)
    if outside is not None:
        seg[outside & (label == 0)] = -1
    nearest = _nnunet_resize(seg, shape, 0, separate_axis, output=np.int16)
    out = np.zeros(shape, dtype=np.int16)
    best = np.full(shape, -1.0)
    nearest_on_top = np.zeros(shape, dtype=bool)  # the nearest voxel's label has the top score (above 0)
    for value in np.unique(seg):
        score = _nnunet_resize(seg == value, shape, 1, separate_axis)
        is_nearest = nearest == value
        nearest_on_top |= is_nearest & (score == best) & (score > 0)
        better = score > best
        np.copyto(nearest_on_top, is_nearest & (score > 0), where=better)
        np.copyto(out, value, where=better)
        np.maximum(best, score, out=best)
        del score, better, is_nearest
    np.copyto(out, nearest, where=nearest_on_top)
    return np.maximum(out, 0).astype(np.uint8)


def resample_probabilities(
    probabilities: np.ndarray, new_shape: Sequence[int], separate_axis: int | None = None,
    log_space: bool = False, nnunet_resize: bool = False,
) -> np.ndarray:
    """Resample (K, Z, Y, X) class probabilities linearly and return the argmax label map (uint8).

    `log_space`: their logarithms are resampled. nnU-Net resamples a network's logits; for the softmax of one
    set of logits, log p_k = z_k - logsumexp(z) differs from z_k by the same amount for every class, so the
    argmax is nnU-Net's (probabilities under float32's smallest normal number are taken as that number).
    `nnunet_resize`: resampled as nnU-Net resamples (pipeline version 12, `_class_back`).
    """
    best = np.full(tuple(new_shape), -np.inf, dtype=np.float32)
    out = np.zeros(tuple(new_shape), dtype=np.uint8)
    for k in range(probabilities.shape[0]):
        score = _class_back(probabilities[k], new_shape, separate_axis, log_space, nnunet_resize)
        better = score > best
        out[better] = k
        best[better] = score[better]
    return out


def _class_back(probabilities: np.ndarray, new_shape: Sequence[int], separate_axis: int | None,
                log_space: bool, nnunet_resize: bool) -> np.ndarray:
    """One class's probabilities (their logarithms with `log_space`) resampled linearly towards the original
    grid, float32: with `nnunet_resize` (pipeline version 12) exactly as nnU-Net resamples its logits
    (`_nnunet_resize`: its nearest slices along a separate axis), else as runs of version 11 and older were
    (`_resample_volume`)."""
    values = probabilities.astype(np.float32, copy=False)
    if log_space:
        values = np.log(np.maximum(values, np.finfo(np.float32).tiny))
    if nnunet_resize:
        return _nnunet_resize(values, tuple(int(s) for s in new_shape), 1, separate_axis, output=np.float32)
    return _resample_volume(values, new_shape, 1, separate_axis)


def _way_back(props: dict) -> tuple[CropBox, list[int], int | None]:
    """A cached case's crop box, cropped shape, and the axis resampled on its own going back to it: from
    the preprocessed spacing to the original one (nnU-Net's export), the preprocessed asked first."""
    box: CropBox = props["crop_box"]
    separate = separate_axis(props["spacing_preprocessed_zyx"], props["spacing_original_zyx"])
    return box, [hi - lo for lo, hi in box], separate


def to_original_probabilities(probabilities: np.ndarray, props: dict, log_space: bool = False,
                              nnunet_resize: bool = False) -> np.ndarray:
    """(K, Z, Y, X) class probabilities in preprocessed space as probabilities on the original grid (float32;
    outside the crop box: background), what nnU-Net exports to ensemble configurations.

    `log_space`: the logarithms are resampled, then normalised (softmax): for the softmax of one set of
    logits that is the softmax of nnU-Net's resampled logits. Else the probabilities are resampled.
    """
    box, cropped_shape, separate = _way_back(props)
    inside = np.stack([_class_back(p, cropped_shape, separate, log_space, nnunet_resize)
                       for p in probabilities])
    if log_space:
        inside = np.exp(inside - inside.max(axis=0, keepdims=True))
        inside /= inside.sum(axis=0, keepdims=True)
    full = np.zeros((probabilities.shape[0], *props["shape_original_zyx"]), dtype=np.float32)
    full[0] = 1.0
    full[(slice(None), *(slice(lo, hi) for lo, hi in box))] = inside
    return full


def to_original_regions(probabilities: np.ndarray, props: dict, log_space: bool = False,
                        nnunet_resize: bool = False) -> np.ndarray:
    """(R, Z, Y, X) region (sigmoid) probabilities of a region run in preprocessed space as probabilities on
    the original grid (float32; outside the crop box: 0, no region).

    `log_space`: each region's logit, log(p / (1 - p)), is resampled, then its sigmoid taken: for the sigmoid
    of a network's logits that is nnU-Net's export, which resamples the logits and then applies the sigmoid
    (`inference` gives them in float64, which tells a probability from 1 up to a logit of 37; those within
    its resolution of 0 or 1 are taken as the nearest it tells apart from them: the side of 0.5 each is on is
    kept). Else the probabilities are resampled.
    """
    box, cropped_shape, separate = _way_back(props)
    inside = []
    for p in probabilities.astype(np.float64, copy=False):
        if log_space:
            p = np.clip(p, np.finfo(np.float64).tiny, 1 - np.finfo(np.float64).epsneg)
            logit = _class_back(np.log(p) - np.log1p(-p), cropped_shape, separate, False, nnunet_resize)
            inside.append((1 / (1 + np.exp(-logit.astype(np.float64)))).astype(np.float32))
        else:
            inside.append(_class_back(p, cropped_shape, separate, False, nnunet_resize))
    full = np.zeros((probabilities.shape[0], *props["shape_original_zyx"]), dtype=np.float32)
    full[(slice(None), *(slice(lo, hi) for lo, hi in box))] = np.stack(inside) if inside else 0
    return full


def to_original(prediction: np.ndarray, props: dict, log_space: bool = False,
                nnunet_resize: bool = False) -> np.ndarray:
    """Map a prediction in preprocessed space back to the original image grid of a cached case.

    `prediction` is a (Z, Y, X) label map or (K, Z, Y, X) class probabilities (`log_space`: resampled as
    logarithms, `resample_probabilities`); `props` the case's cached properties (`load_case`). Returns a
    uint8 label map of the original shape; voxels outside the crop box are background.
    """
    box, cropped_shape, separate = _way_back(props)
    if prediction.ndim == 4:
        inside = resample_probabilities(prediction, cropped_shape, separate, log_space, nnunet_resize)
    else:
        inside = resample_label(prediction, cropped_shape, separate)
    full = np.zeros(tuple(props["shape_original_zyx"]), dtype=np.uint8)
    full[tuple(slice(lo, hi) for lo, hi in box)] = inside
    return full
