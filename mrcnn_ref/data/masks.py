"""Instance-mask utilities: boxes from masks, mini-masks, mask targets, pasting masks back.

Conventions (the whole project): boxes are ``(x1, y1, x2, y2)`` in *continuous* pixel coordinates,
no ``+1``. Pixel ``(row r, col c)`` covers the unit square ``[c, c+1) x [r, r+1)`` and its centre is
at ``(c + 0.5, r + 0.5)``. So the tight box around a mask is ``x1 = min col``, ``x2 = max col + 1``.

Resampling between an image-sized mask and a small ``M x M`` grid laid over a box is bilinear and
*separable*: a resize of a box region is "rows weights @ mask @ column weights^T". This file builds
those weight matrices for all boxes at once and does one batched matmul, so there is no Python loop
over instances.

The coordinate mapping (used by :func:`paste_masks_in_image` and :func:`expand_mask`): the grid has
``M`` cells spread evenly over ``[x1, x2)``; cell ``j`` has its centre at
``x1 + (j + 0.5) (x2 - x1) / M``. An image pixel centre ``x + 0.5`` therefore falls at grid
coordinate::

    u = (x + 0.5 - x1) / (x2 - x1) * M - 0.5            (clamped to [0, M - 1])

and its value is ``(1 - t) * grid[floor(u)] + t * grid[floor(u) + 1]`` with ``t = u - floor(u)``.
Pixels whose centre lies outside the box get 0. :func:`minimize_mask` samples the other way round:
grid cell centres are mapped to image pixel coordinates ``p = X - 0.5`` (``X`` continuous), clamped
to the pixel centres inside the box (as if the box were cropped first), and the mask is interpolated
bilinearly there.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, check_positive_int, pair, reads_values
from ..backend import get_array_module
from ..ops.roi_align import roi_align

_PASTE_CHUNK_VALUES = 1 << 24

__all__ = [
    "masks_to_boxes",
    "minimize_mask",
    "expand_mask",
    "mask_targets_for_rois",
    "paste_masks_in_image",
    "pixel_to_grid_weights",
    "mask_iou",
]


def masks_to_boxes(masks):
    """Tight boxes around binary masks.

    masks: (n, H, W) bool (or any dtype; nonzero = inside).
    Returns (n, 4) float32 ``(x1, y1, x2, y2)`` with ``x1 = min col``, ``x2 = max col + 1`` (continuous
    coordinates). An empty mask gets the box ``(0, 0, 0, 0)``.
    """
    where = "masks_to_boxes"
    check_array(masks, "masks", where, ndim=3)
    xp = get_array_module(masks)
    n, h, w = masks.shape
    m = masks.astype(bool)
    rows = m.any(axis=2)  # (n, H): which rows contain a mask pixel
    cols = m.any(axis=1)  # (n, W)
    nonempty = rows.any(axis=1)
    # first / last True via argmax on the array and its reverse
    y1 = xp.argmax(rows, axis=1)
    y2 = h - xp.argmax(rows[:, ::-1], axis=1)
    x1 = xp.argmax(cols, axis=1)
    x2 = w - xp.argmax(cols[:, ::-1], axis=1)
    boxes = xp.stack([x1, y1, x2, y2], axis=1).astype(xp.float32)
    return xp.where(nonempty[:, None], boxes, xp.float32(0))   # not a mask write: no read-back


def _check_boxes(boxes, name, where):
    check_array(boxes, name, where, shape=(None, 4))
    if boxes.size and reads_values(boxes):
        xp = get_array_module(boxes)
        b = boxes.astype(xp.float64)
        if not bool(xp.isfinite(b).all()):
            raise ValueError(f"{where}: {name} contains NaN or inf values")
        if bool(((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any()):
            raise ValueError(f"{where}: {name} must have x2 > x1 and y2 > y1 for every box")
    return boxes


def _grid_to_pixel_weights(lo, hi, n_pixels, m, xp, dtype):
    """Weights mapping an m-cell grid over [lo, hi) onto image pixels 0..n_pixels-1.

    lo, hi: (R,) box edges. Returns A (R, n_pixels, m) with ``image[p] = sum_j A[r, p, j] grid[j]``:
    bilinear in the grid coordinate u = (p + 0.5 - lo) / (hi - lo) * m - 0.5 (clamped), zero rows for
    pixels whose centre is outside [lo, hi).
    """
    r = lo.shape[0]
    centres = xp.arange(n_pixels, dtype=dtype) + 0.5                      # (P,)
    lo = lo.astype(dtype)[:, None]
    hi = hi.astype(dtype)[:, None]
    u = (centres[None, :] - lo) / (hi - lo) * m - 0.5                      # (R, P)
    inside = (centres[None, :] >= lo) & (centres[None, :] < hi)
    u = xp.clip(u, 0, m - 1)
    u0 = xp.floor(u)
    t = u - u0
    u0 = u0.astype(xp.int64)
    u1 = xp.minimum(u0 + 1, m - 1)
    a = xp.zeros((r, n_pixels, m), dtype=dtype)
    ri = xp.arange(r)[:, None]
    pi = xp.arange(n_pixels)[None, :]
    inside_f = inside.astype(dtype)
    # u0 and u1 may coincide (at the clamp); add so the weights still sum to 1.
    a[ri, pi, u0] += (1 - t) * inside_f
    a[ri, pi, u1] += t * inside_f
    return a


def pixel_to_grid_weights(lo, hi, n_pixels, m, xp, dtype):
    """Weights sampling image pixels 0..n_pixels-1 at the m cell centres of a grid over [lo, hi).

    Returns B (R, m, n_pixels) with ``grid[j] = sum_p B[r, j, p] image[p]``: cell centre
    X = lo + (j + 0.5)(hi - lo)/m, pixel coordinate p = X - 0.5 clamped to [lo, hi - 1] (the
    centres of the pixels inside the box) and to the image, bilinear.
    """
    r = lo.shape[0]
    j = xp.arange(m, dtype=dtype) + 0.5
    lo = lo.astype(dtype)[:, None]
    hi = hi.astype(dtype)[:, None]
    p = lo + j[None, :] * (hi - lo) / m - 0.5                              # (R, m)
    # Stay on the pixel centres inside the box (like cropping first, then resizing with edge
    # padding), and inside the image.
    p = xp.minimum(xp.maximum(p, lo), hi - 1)
    p = xp.clip(p, 0, n_pixels - 1)
    p0 = xp.floor(p)
    t = p - p0
    p0 = p0.astype(xp.int64)
    p1 = xp.minimum(p0 + 1, n_pixels - 1)
    b = xp.zeros((r, m, n_pixels), dtype=dtype)
    ri = xp.arange(r)[:, None]
    ji = xp.arange(m)[None, :]
    b[ri, ji, p0] += 1 - t
    b[ri, ji, p1] += t
    return b


def minimize_mask(boxes, masks, mini_shape=(56, 56)):
    """Crop each mask to its box and resize it to ``mini_shape`` (matterport's "mini-masks").

    Storing (n, 56, 56) instead of (n, H, W) saves memory for large images; the price is a little
    detail lost on big objects. :func:`expand_mask` undoes it.

    boxes: (n, 4) ``(x1, y1, x2, y2)``, usually :func:`masks_to_boxes` of the masks; masks: (n, H, W).
    Each mini-mask cell takes the bilinear sample of the mask at its centre, thresholded at 0.5.
    Returns (n, mh, mw) bool.
    """
    where = "minimize_mask"
    check_array(masks, "masks", where, ndim=3)
    _check_boxes(boxes, "boxes", where)
    mh, mw = pair(mini_shape, "mini_shape", where)
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"{where}: boxes and masks must have the same length, got {boxes.shape[0]} "
                         f"and {masks.shape[0]}")
    xp = get_array_module(boxes, masks)
    n, h, w = masks.shape
    if n == 0:
        return xp.zeros((0, mh, mw), dtype=bool)
    dtype = xp.float32
    by = pixel_to_grid_weights(boxes[:, 1], boxes[:, 3], h, mh, xp, dtype)   # (n, mh, H)
    bx = pixel_to_grid_weights(boxes[:, 0], boxes[:, 2], w, mw, xp, dtype)   # (n, mw, W)
    vals = by @ masks.astype(dtype) @ bx.transpose(0, 2, 1)                  # (n, mh, mw)
    return vals >= 0.5


def paste_masks_in_image(mask_probs, boxes, image_size, threshold=0.5):
    """Resize each M x M mask to its box and place it in a blank image (the seeds' ``unmold_mask``).

    mask_probs: (R, M, M) float probabilities (or (R, Mh, Mw)); boxes: (R, 4) ``(x1, y1, x2, y2)``
    in image coordinates (may extend past the image); image_size: (h, w).
    Returns (R, h, w) bool: ``bilinear(mask_probs) >= threshold`` inside each box, False outside.

    Vectorised over RoIs: with row weights Ay (R, h, M) and column weights Ax (R, w, M) (see the
    module docstring for the mapping) the resized masks are ``Ay @ mask_probs @ Ax^T``.
    """
    where = "paste_masks_in_image"
    check_array(mask_probs, "mask_probs", where, ndim=3)
    _check_boxes(boxes, "boxes", where)
    h, w = pair(image_size, "image_size", where)
    if boxes.shape[0] != mask_probs.shape[0]:
        raise ValueError(f"{where}: mask_probs and boxes must have the same length, got "
                         f"{mask_probs.shape[0]} and {boxes.shape[0]}")
    xp = get_array_module(mask_probs, boxes)
    r, mh, mw = mask_probs.shape
    if r == 0:
        return xp.zeros((0, h, w), dtype=bool)
    dtype = mask_probs.dtype if np.issubdtype(mask_probs.dtype, np.floating) else xp.float32
    out = xp.empty((r, h, w), dtype=bool)
    # RoIs are processed in chunks so the float (chunk, h, w) intermediate stays ~ 16M values.
    step = max(1, _PASTE_CHUNK_VALUES // (h * w))
    for s in range(0, r, step):
        b, p = boxes[s:s + step], mask_probs[s:s + step].astype(dtype)
        ay = _grid_to_pixel_weights(b[:, 1], b[:, 3], h, mh, xp, dtype)      # (r, h, Mh)
        ax = _grid_to_pixel_weights(b[:, 0], b[:, 2], w, mw, xp, dtype)      # (r, w, Mw)
        full = ay @ p @ ax.transpose(0, 2, 1)                                # (r, h, w)
        # Pixels outside the box have all-zero weights (value 0); exclude them explicitly so
        # that a threshold <= 0 cannot switch them on.
        inside = (ay.sum(axis=2)[:, :, None] > 0) & (ax.sum(axis=2)[:, None, :] > 0)
        out[s:s + step] = (full >= threshold) & inside
    return out


def expand_mask(boxes, mini_masks, image_shape):
    """Undo :func:`minimize_mask`: resize each mini-mask to its box in an image of ``image_shape``.

    boxes: (n, 4); mini_masks: (n, mh, mw) bool; image_shape: (h, w) (extra trailing entries, like
    a channel count, are ignored). Returns (n, h, w) bool.
    """
    where = "expand_mask"
    check_array(mini_masks, "mini_masks", where, ndim=3)
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) < 2:
        raise ValueError(f"{where}: image_shape must be a tuple (h, w[, c]), got {image_shape!r}")
    xp = get_array_module(boxes, mini_masks)
    return paste_masks_in_image(mini_masks.astype(xp.float32), boxes,
                                (int(image_shape[0]), int(image_shape[1])))


def mask_targets_for_rois(gt_masks, matched_gt, rois, M=28, gt_boxes=None):
    """Mask-head training targets: each matched ground-truth mask cropped to its RoI, resized to M x M.

    gt_masks: (G, H, W) full-image masks, or (G, mh, mw) mini-masks (then pass ``gt_boxes``);
    matched_gt: (R,) int, the ground-truth index of each RoI; rois: (R, 4) ``(x1, y1, x2, y2)`` in
    image coordinates; gt_boxes: (G, 4), only for mini-masks: the boxes the mini-masks were cut from.
    Returns (R, M, M) float (dtype of ``rois`` if floating, else float32) with values in {0, 1}.

    Implementation: the masks become 1-channel float maps (G, 1, H, W) and
    ``roi_align(maps, [matched_gt, rois], M, aligned=True) >= 0.5`` (the batch index of each RoI is
    its matched ground truth). ``aligned=True`` is the correct continuous-coordinate sampling (pixel
    centre at x + 0.5); with it, an RoI equal to the box of a rectangular mask at least M pixels on
    each side gives an all-ones target (each edge sample lies at least 1/4 pixel inside, so its
    bilinear value is >= 0.75 per axis and >= 0.5625 in a corner). For RoIs much *smaller* than M
    the corner cells of a rectangle can drop below 0.5: a corner sample is the product of two edge
    ramps (e.g. 0.68 * 0.59 for a 10 x 5 box and M = 28). That is bilinear RoIAlign's behaviour,
    kept on purpose so targets are exactly what RoIAlign sees. For mini-masks the RoI is first
    expressed in the mini-mask's own coordinates, ``u = (x - gx1) / (gx2 - gx1) * mw``.
    """

    where = "mask_targets_for_rois"
    check_array(gt_masks, "gt_masks", where, ndim=3)
    check_array(matched_gt, "matched_gt", where, ndim=1)
    check_array(rois, "rois", where, shape=(None, 4), finite=True)
    M = check_positive_int(M, "M", where)
    if not np.issubdtype(matched_gt.dtype, np.integer):
        raise TypeError(f"{where}: matched_gt must be an integer array, got {matched_gt.dtype}")
    if matched_gt.shape[0] != rois.shape[0]:
        raise ValueError(f"{where}: matched_gt and rois must have the same length, got "
                         f"{matched_gt.shape[0]} and {rois.shape[0]}")
    xp = get_array_module(gt_masks, matched_gt, rois)
    g = gt_masks.shape[0]
    r = rois.shape[0]
    dtype = rois.dtype if np.issubdtype(rois.dtype, np.floating) else xp.float32
    if r == 0:
        return xp.zeros((0, M, M), dtype=dtype)
    if reads_values(matched_gt) and bool(((matched_gt < 0) | (matched_gt >= g)).any()):
        raise ValueError(f"{where}: matched_gt must index gt_masks (0..{g - 1}), got values out of range")
    boxes = rois.astype(dtype)
    if gt_boxes is not None:
        _check_boxes(gt_boxes, "gt_boxes", where)
        if gt_boxes.shape[0] != g:
            raise ValueError(f"{where}: gt_boxes must have one box per mini-mask ({g}), got "
                             f"{gt_boxes.shape[0]}")
        mh, mw = gt_masks.shape[1:]
        gb = gt_boxes.astype(dtype)[matched_gt]
        sx = mw / (gb[:, 2] - gb[:, 0])
        sy = mh / (gb[:, 3] - gb[:, 1])
        boxes = xp.stack([(boxes[:, 0] - gb[:, 0]) * sx, (boxes[:, 1] - gb[:, 1]) * sy,
                          (boxes[:, 2] - gb[:, 0]) * sx, (boxes[:, 3] - gb[:, 1]) * sy], axis=1)
    maps = gt_masks.astype(dtype)[:, None]                                  # (G, 1, H, W)
    rois5 = xp.concatenate([matched_gt.astype(dtype)[:, None], boxes], axis=1)
    out = roi_align(maps, rois5, (M, M), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return (out[:, 0] >= 0.5).astype(dtype)


def mask_iou(dt_masks, gt_masks, iscrowd=None):
    """IoU of binary masks: (D, H, W), (G, H, W) bool -> (D, G) float64 (crowd: inter / dt area).

    Intersections for all pairs at once are one matrix product of the flattened masks, restricted
    to the pixels covered by some ground truth (the only ones that can intersect). NumPy or CuPy
    (the result lives with the masks); ``mask_iou(m, m)`` is the IoU matrix of one set, as Matrix
    NMS (:mod:`mrcnn_ref.model.tta`) uses it; the COCO evaluation (:mod:`mrcnn_ref.evaluate`) too.
    """
    xp = get_array_module(dt_masks, gt_masks)
    if len(dt_masks) == 0 or len(gt_masks) == 0:
        return xp.zeros((len(dt_masks), len(gt_masks)), dtype=xp.float64)
    d = xp.asarray(dt_masks, dtype=bool).reshape(len(dt_masks), -1)
    g = xp.asarray(gt_masks, dtype=bool).reshape(len(gt_masks), -1)
    crowd = (xp.zeros(len(g), dtype=bool) if iscrowd is None
             else xp.asarray(iscrowd, dtype=bool).reshape(-1))
    ka = xp.count_nonzero(d, axis=1).astype(xp.float64)
    kb = xp.count_nonzero(g, axis=1).astype(xp.float64)
    support = xp.flatnonzero(g.any(axis=0))
    ftype = xp.float32 if support.size < 2 ** 24 else xp.float64   # exact integer counts
    # einsum rather than @: a product this thin gains nothing from (oversubscribed) BLAS threads
    inter = xp.einsum("dp,gp->dg", d[:, support].astype(ftype),
                      g[:, support].astype(ftype)).astype(xp.float64)
    union = xp.where(crowd[None, :], ka[:, None], ka[:, None] + kb[None, :] - inter)
    return xp.where(inter > 0, inter / xp.where(inter > 0, union, 1.0), 0.0)
