"""Anchors: reference boxes tiled over feature maps, and the RPN's anchor labels.

Faster R-CNN places ``A`` reference boxes ("anchors") of several sizes and aspect ratios at every
position of a feature map; the RPN predicts, for each anchor, an objectness score and the deltas
(see :mod:`mrcnn_ref.boxes`) that move it onto an object.

* :func:`generate_anchors` -- the ``A`` base anchors, centred at (0, 0). For an aspect ratio
  ``r = h / w`` (torchvision's definition) and a size ``s`` the anchor has the area of an
  ``s x s`` square: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``. Order: ratios outer, sizes inner
  (torchvision's). **Difference:** torchvision rounds the base anchors to integers; we do not, so
  every anchor has exactly area ``s**2`` and aspect ratio ``r``.
* :func:`grid_anchors` -- the base anchors shifted to every feature-map position. The anchor centre
  for cell ``(y, x)`` is ``((x + offset) * stride, (y + offset) * stride)``: ``offset=0``
  (torchvision's convention) puts it on the cell's top-left corner, ``offset=0.5`` on the centre of
  the image patch the cell covers. Order: (y, x, a) -- row-major cells, then anchors.
* :func:`pyramid_anchors` -- one grid per feature level; presets :data:`FASTER_RCNN_ANCHORS`
  (one stride-16 map, 3 sizes x 3 ratios = 9 anchors per position) and :data:`FPN_ANCHORS` (one size
  per level: 32 ... 512 at strides 4 ... 64, 3 ratios each).
* :func:`label_anchors` -- 1 (object), 0 (background) or -1 (ignored) for each anchor, by IoU with
  the ground truth; :func:`sample_labels` -- the balanced mini-batch of 256 anchors.
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import check_array, check_positive_int, pair
from .backend import asnumpy, get_array_module, get_backend
from .boxes import box_iou

__all__ = [
    "FASTER_RCNN_ANCHORS",
    "FPN_ANCHORS",
    "generate_anchors",
    "grid_anchors",
    "pyramid_anchors",
    "label_anchors",
    "sample_labels",
]

#: Faster R-CNN (VGG16/ResNet C4): one feature map of stride 16, sizes 128, 256, 512 x ratios
#: 0.5, 1, 2 = 9 anchors per position. Use as ``pyramid_anchors(feature_sizes, **FASTER_RCNN_ANCHORS)``.
FASTER_RCNN_ANCHORS = {
    "strides": (16,),
    "sizes_per_level": ((128.0, 256.0, 512.0),),
    "aspect_ratios": (0.5, 1.0, 2.0),
}
#: FPN: one size per level, 32 ... 512 on P2 ... P6 (strides 4 ... 64), ratios 0.5, 1, 2.
FPN_ANCHORS = {
    "strides": (4, 8, 16, 32, 64),
    "sizes_per_level": ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
    "aspect_ratios": (0.5, 1.0, 2.0),
}


def _positive_numbers(values, name, where):
    if isinstance(values, (int, float, np.integer, np.floating)) and not isinstance(values, bool):
        values = (values,)
    try:
        vals = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a sequence of numbers, got {values!r}") from None
    if not vals:
        raise ValueError(f"{where}: {name} must not be empty")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{where}: {name} must be finite and > 0, got {vals}")
    return vals


def generate_anchors(sizes, aspect_ratios, dtype=np.float32, xp=None):
    """Base anchors centred at (0, 0).

    sizes: sequence of S anchor sizes (sqrt of the area, pixels); aspect_ratios: sequence of R
    ratios ``h / w``. Returns (R * S, 4) boxes ``(-w/2, -h/2, w/2, h/2)`` with ``w = size / sqrt(r)``
    and ``h = size * sqrt(r)``, ordered ratios outer, sizes inner (as torchvision, but unrounded).
    xp: array module (default: the default backend).
    """
    where = "generate_anchors"
    sizes = np.asarray(_positive_numbers(sizes, "sizes", where))
    ratios = np.asarray(_positive_numbers(aspect_ratios, "aspect_ratios", where))
    h_ratio = np.sqrt(ratios)
    ws = (sizes[None, :] / h_ratio[:, None]).reshape(-1)
    hs = (sizes[None, :] * h_ratio[:, None]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / 2
    xp = get_backend() if xp is None else xp
    return xp.asarray(base.astype(dtype))


def grid_anchors(base_anchors, feature_size, stride, offset: float = 0.0):
    """Tile base anchors over a feature map.

    base_anchors: (A, 4) floating, centred at 0 (from :func:`generate_anchors`).
    feature_size: (h, w) of the feature map; stride: image pixels per feature cell (int or
    (stride_y, stride_x)); offset: anchor centre of cell (y, x) is
    ``((x + offset) * stride_x, (y + offset) * stride_y)`` -- 0 is torchvision's convention, 0.5
    the centre of the cell's image patch.
    Returns (h * w * A, 4) anchors in the dtype and array module of ``base_anchors``, ordered
    (y, x, a): anchor ``a`` of cell ``(y, x)`` is row ``(y * w + x) * A + a``.
    """
    where = "grid_anchors"
    check_array(base_anchors, "base_anchors", where, shape=(None, 4), floating=True, finite=True)
    if not isinstance(feature_size, (tuple, list)) or len(feature_size) != 2:
        raise ValueError(f"{where}: feature_size must be a pair (height, width), got {feature_size!r}")
    fh, fw = pair(tuple(feature_size), "feature_size", where, allow_zero=True)
    if isinstance(stride, (tuple, list)):
        if len(stride) != 2:
            raise ValueError(f"{where}: stride must be a number or a pair (sy, sx), got {stride!r}")
        sy, sx = _positive_numbers(stride, "stride", where)
    else:
        sy = sx = _positive_numbers(stride, "stride", where)[0]
    if isinstance(offset, bool) or not isinstance(offset, (int, float, np.integer, np.floating)) \
            or not math.isfinite(offset):
        raise TypeError(f"{where}: offset must be a finite number, got {offset!r}")
    xp = get_array_module(base_anchors)
    dt = base_anchors.dtype
    cx = (xp.arange(fw, dtype=xp.float64) + offset) * sx
    cy = (xp.arange(fh, dtype=xp.float64) + offset) * sy
    cy, cx = xp.meshgrid(cy, cx, indexing="ij")                              # (h, w)
    shifts = xp.stack([cx, cy, cx, cy], axis=-1).reshape(-1, 1, 4).astype(dt)  # (h*w, 1, 4)
    return (shifts + base_anchors[None, :, :]).reshape(-1, 4)


def pyramid_anchors(feature_sizes, strides, sizes_per_level, aspect_ratios, offset: float = 0.0,
                    dtype=np.float32, xp=None):
    """Anchors for every level of a feature pyramid.

    feature_sizes: L pairs (h, w); strides: L strides; sizes_per_level: L sequences of sizes;
    aspect_ratios: ratios (shared by all levels) or L sequences of ratios; offset: see
    :func:`grid_anchors`. Presets: ``pyramid_anchors(sizes, **FPN_ANCHORS)``.
    Returns ``(per_level, all_anchors)``: a list of L arrays (h_l * w_l * A_l, 4) and their
    concatenation (sum_l h_l * w_l * A_l, 4).
    """
    where = "pyramid_anchors"
    feature_sizes, strides, sizes_per_level = list(feature_sizes), list(strides), list(sizes_per_level)
    n = len(feature_sizes)
    if n == 0:
        raise ValueError(f"{where}: feature_sizes must not be empty")
    if len(strides) != n or len(sizes_per_level) != n:
        raise ValueError(f"{where}: feature_sizes, strides and sizes_per_level must have the same "
                         f"length, got {n}, {len(strides)} and {len(sizes_per_level)}")
    ratios = list(aspect_ratios)
    if ratios and isinstance(ratios[0], (tuple, list)):
        if len(ratios) != n:
            raise ValueError(f"{where}: per-level aspect_ratios must have {n} entries, got {len(ratios)}")
    else:
        ratios = [ratios] * n
    per_level = [grid_anchors(generate_anchors(sz, r, dtype=dtype, xp=xp), fs, st, offset=offset)
                 for fs, st, sz, r in zip(feature_sizes, strides, sizes_per_level, ratios)]
    mod = get_array_module(per_level[0])
    return per_level, mod.concatenate(per_level, axis=0)


def label_anchors(anchors, gt_boxes, pos_iou: float = 0.7, neg_iou: float = 0.3,
                  allow_low_quality: bool = True, image_size=None, allowed_border: float = 0.0):
    """RPN training labels: which anchors are objects, background, or ignored.

    anchors: (A, 4) floating; gt_boxes: (G, 4) floating (G may be 0).
    Rules (Faster R-CNN), with ``iou = box_iou(anchors, gt_boxes)`` and ``best = iou.max(1)``:

    * ``best >= pos_iou`` -> 1 (positive); ``best < neg_iou`` -> 0 (negative); otherwise -1;
    * ``allow_low_quality``: for each ground truth, its best anchor(s) -- every anchor whose IoU
      equals that ground truth's maximum, ties included -- are positive too, so that no object is
      left without a positive anchor. A ground truth that overlaps no anchor at all (maximum IoU
      0) is skipped; torchvision's Matcher would instead mark every anchor with IoU 0 positive.
    * ``image_size=(h, w)``: anchors that cross the image border by more than ``allowed_border``
      pixels get -1 and take no part in the rules above (the original Faster R-CNN ignores them
      during training).
    * no ground truth: every (inside) anchor is negative.

    Returns ``(labels, matched_gt_idx)``: (A,) int8 in {1, 0, -1} and (A,) int64, the index of
    the ground truth with the highest IoU (ties: the lowest index; -1 when G = 0). Only the
    positives' matches are meaningful regression targets.
    """
    where = "label_anchors"
    check_array(anchors, "anchors", where, shape=(None, 4), floating=True, finite=True)
    check_array(gt_boxes, "gt_boxes", where, shape=(None, 4), floating=True, finite=True)
    for name, v in (("pos_iou", pos_iou), ("neg_iou", neg_iou)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where}: {name} must be a number, got {type(v).__name__}")
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{where}: {name} must be in [0, 1], got {v}")
    if neg_iou > pos_iou:
        raise ValueError(f"{where}: neg_iou ({neg_iou}) must be <= pos_iou ({pos_iou})")
    xp = get_array_module(anchors, gt_boxes)
    n = anchors.shape[0]
    inside = xp.ones((n,), dtype=bool)
    if image_size is not None:
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
            raise ValueError(f"{where}: image_size must be None or a pair (height, width), got "
                             f"{image_size!r}")
        h, w = (float(v) for v in image_size)
        b = float(allowed_border)
        inside = ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
                  & (anchors[:, 2] <= w + b) & (anchors[:, 3] <= h + b))
    # labels are chosen with xp.where, not boolean-mask writes (which read the mask's size back
    # from a GPU)
    unset = xp.full((n,), -1, dtype=xp.int8)
    if gt_boxes.shape[0] == 0:
        return xp.where(inside, 0, unset).astype(xp.int8), xp.full((n,), -1, dtype=xp.int64)
    iou = box_iou(anchors, gt_boxes)                       # (A, G)
    iou = xp.where(xp.isnan(iou), 0, iou)                  # zero-area pairs: no overlap
    iou = xp.where(inside[:, None], iou, -1)               # outside anchors never win anything
    matched = xp.argmax(iou, axis=1).astype(xp.int64)
    best = xp.max(iou, axis=1)
    labels = xp.where(inside & (best < neg_iou), 0, unset)
    labels = xp.where(inside & (best >= pos_iou), 1, labels)
    if allow_low_quality:
        gt_best = xp.max(iou, axis=0)                      # (G,)
        is_best = (iou == gt_best[None, :]) & (gt_best[None, :] > 0)
        labels = xp.where(is_best.any(axis=1), 1, labels)
    return labels.astype(xp.int8), matched


def sample_labels(labels, batch_size: int = 256, positive_fraction: float = 0.5, rng=None):
    """Balanced mini-batch of anchors (or RoIs) for the classification loss.

    labels: (A,) integer in {1, 0, -1}. Samples at most ``int(batch_size * positive_fraction)``
    positives uniformly at random, then fills the batch with negatives (fewer if there are not
    enough). rng: ``np.random.Generator`` (or a seed); the result is deterministic given it.
    Returns new labels (same dtype and array module): 1 / 0 for the sampled anchors, -1 elsewhere.
    """
    where = "sample_labels"
    check_array(labels, "labels", where, ndim=1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where}: labels must be an integer array, got {labels.dtype}")
    batch_size = check_positive_int(batch_size, "batch_size", where)
    if isinstance(positive_fraction, bool) \
            or not isinstance(positive_fraction, (int, float, np.integer, np.floating)) \
            or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"{where}: positive_fraction must be a number in [0, 1], got "
                         f"{positive_fraction!r}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    xp = get_array_module(labels)
    host = asnumpy(labels)
    pos = np.flatnonzero(host == 1)
    neg = np.flatnonzero(host == 0)
    num_pos = min(int(batch_size * positive_fraction), pos.size)
    num_neg = min(batch_size - num_pos, neg.size)
    out = np.full(host.shape, -1, dtype=host.dtype)
    out[rng.permutation(pos)[:num_pos]] = 1
    out[rng.permutation(neg)[:num_neg]] = 0
    return xp.asarray(out)
