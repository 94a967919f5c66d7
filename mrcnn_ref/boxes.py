"""Axis-aligned boxes: area, IoU, clipping, filtering, and the box-regression encoding.

Convention (the same as torchvision's): a box is ``(x1, y1, x2, y2)`` in *continuous* pixel
coordinates, with ``x1 <= x2`` and ``y1 <= y2``. Pixel ``(i, j)`` covers the square
``[j, j+1) x [i, i+1)``, so a box's width is ``x2 - x1`` -- there is **no** ``+ 1`` (the original
R-CNN / Detectron code used inclusive integer corners and ``x2 - x1 + 1``; we do not).

Box regression (R-CNN, appendix C) describes a target box ``g`` relative to a proposal ``p`` by
four numbers that are invariant to translation and scale::

    tx = wx * (gx - px) / pw        ty = wy * (gy - py) / ph
    tw = ww * log(gw / pw)          th = wh * log(gh / ph)

where ``(px, py)`` is the centre ``(x1 + 0.5 w, y1 + 0.5 h)`` and ``pw, ph`` the width and height.
The weights ``(wx, wy, ww, wh)`` only rescale the targets so that the regression loss sees numbers of
about unit size: ``(1, 1, 1, 1)`` for the RPN and ``(10, 10, 5, 5)`` for the box head (Fast/Faster
R-CNN as in torchvision and Detectron). :func:`decode_boxes` inverts :func:`encode_boxes`; it clamps
``tw, th`` (after dividing by the weights) at ``log(1000 / 16)`` so that ``exp`` cannot overflow.

Every function works on NumPy or CuPy arrays (``xp = get_array_module(boxes)``).
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import check_array, reads_values
from .backend import get_array_module

__all__ = [
    "RPN_BOX_WEIGHTS",
    "HEAD_BOX_WEIGHTS",
    "DEFAULT_BBOX_CLAMP",
    "box_area",
    "box_iou",
    "clip_boxes",
    "remove_small_boxes",
    "encode_boxes",
    "decode_boxes",
    "box_xyxy_to_xywh",
    "box_xywh_to_xyxy",
    "hflip_boxes",
]

#: Regression weights of the RPN (anchors -> proposals).
RPN_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
#: Regression weights of the Fast R-CNN box head (proposals -> detections).
HEAD_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
#: Largest ``tw, th`` fed to ``exp`` when decoding: a box grows at most 1000/16 = 62.5 times.
DEFAULT_BBOX_CLAMP = math.log(1000.0 / 16)


def _boxes(x, name, where, finite=True):
    """Validate an (N, 4) floating box array."""
    return check_array(x, name, where, shape=(None, 4), floating=True, finite=finite)


def _weights(weights, where):
    try:
        w = tuple(float(v) for v in weights)
    except TypeError:
        raise TypeError(f"{where}: weights must be a sequence of 4 numbers, got {weights!r}") from None
    if len(w) != 4:
        raise ValueError(f"{where}: weights must have 4 entries (wx, wy, ww, wh), got {len(w)}")
    if not all(math.isfinite(v) and v > 0 for v in w):
        raise ValueError(f"{where}: weights must be finite and > 0, got {w}")
    return w


def box_area(boxes):
    """Area of each box.

    boxes: (N, 4) floating array of (x1, y1, x2, y2). Returns (N,) ``(x2 - x1) * (y2 - y1)``.
    """
    _boxes(boxes, "boxes", "box_area")
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2, fmt: str = "xyxy"):
    """Pairwise intersection-over-union.

    boxes1: (N, 4), boxes2: (M, 4) floating boxes in format ``fmt``: ``"xyxy"`` (x1, y1, x2, y2;
    the default and the project's convention), ``"xywh"`` (COCO: corner + size) or ``"cxcywh"``
    (centre + size) — torchvision's ``fmt`` argument. Returns (N, M) with
    ``iou[i, j] = |b1_i ∩ b2_j| / |b1_i ∪ b2_j|``, in the dtype of the inputs.

    Same numbers as ``torchvision.ops.box_iou``, including its edge case: two zero-area boxes have
    intersection 0 and union 0, so their IoU is ``0 / 0 = nan`` (computed without a warning). A
    zero-area box against a box with positive area gets 0.
    """
    where = "box_iou"
    _boxes(boxes1, "boxes1", where)
    _boxes(boxes2, "boxes2", where)
    if fmt != "xyxy":
        boxes1, boxes2 = _to_xyxy(boxes1, fmt, where), _to_xyxy(boxes2, fmt, where)
    xp = get_array_module(boxes1, boxes2)
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = xp.maximum(boxes1[:, None, :2], boxes2[None, :, :2])   # (N, M, 2) top-left of overlap
    rb = xp.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])   # (N, M, 2) bottom-right
    wh = xp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def _to_xyxy(boxes, fmt, where):
    xp = get_array_module(boxes)
    if fmt == "xywh":
        return xp.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    if fmt == "cxcywh":
        return xp.concatenate([boxes[:, :2] - 0.5 * boxes[:, 2:], boxes[:, :2] + 0.5 * boxes[:, 2:]], axis=1)
    raise ValueError(f"{where}: fmt must be 'xyxy', 'xywh' or 'cxcywh', got {fmt!r}")


def clip_boxes(boxes, image_size):
    """Clip boxes to the image: x to ``[0, w]``, y to ``[0, h]`` (torchvision's clip_boxes_to_image).

    boxes: (N, 4) floating; image_size: (h, w). Returns a new (N, 4) array.
    """
    where = "clip_boxes"
    _boxes(boxes, "boxes", where, finite=False)
    h, w = _image_size(image_size, where)
    xp = get_array_module(boxes)
    out = xp.empty_like(boxes)
    out[:, 0::2] = xp.minimum(xp.maximum(boxes[:, 0::2], 0), w)
    out[:, 1::2] = xp.minimum(xp.maximum(boxes[:, 1::2], 0), h)
    return out


def _image_size(image_size, where):
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(f"{where}: image_size must be a pair (height, width), got {image_size!r}")
    h, w = image_size
    for name, v in (("height", h), ("width", w)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{where}: image_size {name} must be a number, got {type(v).__name__}")
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{where}: image_size {name} must be finite and > 0, got {v}")
    return float(h), float(w)


def remove_small_boxes(boxes, min_size: float):
    """Indices of the boxes whose width and height are both ``>= min_size`` (as torchvision).

    boxes: (N, 4) floating. Returns (K,) int64 indices in increasing order.
    """
    where = "remove_small_boxes"
    _boxes(boxes, "boxes", where)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: min_size must be a number, got {type(min_size).__name__}")
    if not (math.isfinite(min_size) and min_size >= 0):
        raise ValueError(f"{where}: min_size must be finite and >= 0, got {min_size}")
    xp = get_array_module(boxes)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return xp.nonzero(keep)[0].astype(xp.int64)


def _centres(boxes):
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(reference_boxes, proposals, weights=RPN_BOX_WEIGHTS):
    """Regression targets that move each proposal onto its reference (ground-truth) box.

    reference_boxes: (N, 4) target boxes g; proposals: (N, 4) boxes p (anchors or proposals), both
    floating (x1, y1, x2, y2) with positive widths and heights (a ``ValueError`` otherwise: a
    zero-size box has no target, and torchvision's inf/NaN would poison a loss).
    weights: (wx, wy, ww, wh), ``RPN_BOX_WEIGHTS`` (1, 1, 1, 1) or ``HEAD_BOX_WEIGHTS`` (10, 10, 5, 5).
    Returns (N, 4) deltas ``(tx, ty, tw, th)``::

        tx = wx (gx - px) / pw,  ty = wy (gy - py) / ph,  tw = ww log(gw / pw),  th = wh log(gh / ph)

    Same numbers as torchvision's ``BoxCoder(weights).encode_single(reference_boxes, proposals)``.
    """
    where = "encode_boxes"
    _boxes(reference_boxes, "reference_boxes", where)
    _boxes(proposals, "proposals", where)
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(f"{where}: reference_boxes and proposals must have the same length, got "
                         f"{reference_boxes.shape[0]} and {proposals.shape[0]}")
    wx, wy, ww, wh = _weights(weights, where)
    xp = get_array_module(reference_boxes, proposals)
    px, py, pw, ph = _centres(proposals)
    gx, gy, gw, gh = _centres(reference_boxes)
    # a box of zero (or negative) width or height has no target: x / 0 and log(0) would give
    # inf/NaN silently (torchvision's encode does); on a device only when values are checked
    if proposals.shape[0] and reads_values(proposals, reference_boxes):
        for name, w_, h_ in (("proposals", pw, ph), ("reference_boxes", gw, gh)):
            bad = ~((w_ > 0) & (h_ > 0))
            if bool(bad.any()):
                i = int(xp.flatnonzero(bad)[0])
                box = (proposals if name == "proposals" else reference_boxes)[i]
                raise ValueError(f"{where}: {name} must have positive widths and heights (x2 > x1, "
                                 f"y2 > y1); box {i} is {[float(v) for v in box]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        return xp.stack([wx * (gx - px) / pw,
                         wy * (gy - py) / ph,
                         ww * xp.log(gw / pw),
                         wh * xp.log(gh / ph)], axis=1)


def decode_boxes(deltas, boxes, weights=RPN_BOX_WEIGHTS, clamp: float = DEFAULT_BBOX_CLAMP):
    """Apply regression deltas to boxes: the inverse of :func:`encode_boxes`.

    deltas: (N, 4K) floating, ``(tx, ty, tw, th)`` for each of K classes side by side (K = 1 for
    the RPN; class-specific box heads predict K > 1 boxes per RoI).
    boxes: (N, 4) the boxes the deltas are relative to (anchors or proposals).
    weights: as in :func:`encode_boxes`. clamp: ``tw / ww`` and ``th / wh`` are clamped to at most
    this value before ``exp`` (default ``log(1000 / 16)``).
    Returns (N, 4K) decoded boxes in the dtype of ``deltas``::

        cx = tx / wx * pw + px,   w = exp(min(tw / ww, clamp)) * pw,   x1, x2 = cx -+ w / 2

    Same numbers as torchvision's ``BoxCoder(weights, clamp).decode_single(deltas, boxes)``.
    """
    where = "decode_boxes"
    check_array(deltas, "deltas", where, ndim=2, floating=True, finite=True)
    if deltas.shape[1] % 4 != 0 or deltas.shape[1] == 0:
        raise ValueError(f"{where}: deltas must have shape (N, 4K), got {tuple(deltas.shape)}")
    _boxes(boxes, "boxes", where)
    if deltas.shape[0] != boxes.shape[0]:
        raise ValueError(f"{where}: deltas and boxes must have the same length, got "
                         f"{deltas.shape[0]} and {boxes.shape[0]}")
    wx, wy, ww, wh = _weights(weights, where)
    if isinstance(clamp, bool) or not isinstance(clamp, (int, float, np.integer, np.floating)) \
            or math.isnan(clamp):
        raise TypeError(f"{where}: clamp must be a number, got {clamp!r}")
    xp = get_array_module(deltas, boxes)
    px, py, pw, ph = _centres(boxes.astype(deltas.dtype, copy=False))
    px, py, pw, ph = px[:, None], py[:, None], pw[:, None], ph[:, None]
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = xp.minimum(deltas[:, 2::4] / ww, clamp)
    dh = xp.minimum(deltas[:, 3::4] / wh, clamp)
    cx = dx * pw + px
    cy = dy * ph + py
    half_w = 0.5 * (xp.exp(dw) * pw)
    half_h = 0.5 * (xp.exp(dh) * ph)
    out = xp.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=2)  # (N, K, 4)
    return out.reshape(deltas.shape[0], deltas.shape[1]).astype(deltas.dtype, copy=False)


def box_xyxy_to_xywh(boxes):
    """(x1, y1, x2, y2) -> (x, y, w, h), the COCO ``bbox`` format (top-left corner + size).

    boxes: (N, 4) floating. Returns a new (N, 4) array.
    """
    check_array(boxes, "boxes", "box_xyxy_to_xywh", shape=(None, 4), floating=True)
    xp = get_array_module(boxes)
    out = xp.array(boxes, copy=True)
    out[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    return out


def box_xywh_to_xyxy(boxes):
    """(x, y, w, h) (COCO ``bbox``) -> (x1, y1, x2, y2). boxes: (N, 4) floating; returns (N, 4)."""
    check_array(boxes, "boxes", "box_xywh_to_xyxy", shape=(None, 4), floating=True)
    xp = get_array_module(boxes)
    out = xp.array(boxes, copy=True)
    out[:, 2:] = boxes[:, :2] + boxes[:, 2:]
    return out


def hflip_boxes(boxes, width):
    """Boxes ``(N, 4)`` ``(x1, y1, x2, y2)`` of an image ``width`` pixels wide, in the left-right
    mirror of that image: ``(width - x2, y1, width - x1, y2)``. Its own inverse. Used by the flip
    augmentation (:func:`mrcnn_ref.data.transforms.hflip`) and the flip test-time augmentation
    (:mod:`mrcnn_ref.model.tta`)."""
    check_array(boxes, "boxes", "hflip_boxes", shape=(None, 4))
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out
