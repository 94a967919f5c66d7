"""Multi-level RoI feature extraction over an FPN pyramid (forward/backward pair).

An FPN gives feature maps P2..P5 with strides 4, 8, 16, 32 (P6 is for the RPN only). Each RoI is
read from ONE level, chosen by its size (FPN paper, Lin et al. 2017, eq. 1)::

    k = floor(k0 + log2(sqrt(w * h) / 224))        clamped to [2, 5],   k0 = 4

so a 224×224 RoI (the ImageNet pre-training size) reads P4, one half as wide reads P3, and so on.
A tiny ``eps = 1e-6`` is added inside the floor (as torchvision does) so that a RoI whose side is
exactly 224·2^j lands on level k0 + j despite rounding in ``log2``. Both 224 and k0 are config
values (``roi_canonical_size``, ``roi_canonical_level``).

Forward: group the RoIs by level, run the selected RoI op (RoIAlign by default) on each level with
``spatial_scale = 1 / stride``, and scatter the per-level outputs back into the RoIs' original order.
Backward: each RoI's output gradient goes back through the op of *its* level only; the result is
one gradient per feature map (zeros for a level no RoI used).

The loop is over the (at most four) levels, never over RoIs.
"""
from __future__ import annotations

import math

import numpy as np

from .._checks import check_array, check_positive_int
from ..backend import asnumpy, get_array_module
from ..ops.roi_align import (roi_align_backward, roi_align_forward, roi_align_max_backward,
                             roi_align_max_forward)
from ..ops.roi_pool import roi_pool_backward, roi_pool_forward
from ..ops.roi_warp import roi_warp_backward, roi_warp_forward

__all__ = ["assign_fpn_levels", "get_roi_op", "multilevel_roi_forward", "multilevel_roi_backward"]

ROI_OPS = ("roi_align", "roi_align_max", "roi_warp", "roi_pool")
_ROI_OP_PAIRS = {"roi_align": (roi_align_forward, roi_align_backward),
                 "roi_align_max": (roi_align_max_forward, roi_align_max_backward),
                 "roi_warp": (roi_warp_forward, roi_warp_backward),
                 "roi_pool": (roi_pool_forward, roi_pool_backward)}


def assign_fpn_levels(boxes, min_level: int = 2, max_level: int = 5, canonical_size: float = 224.0,
                      canonical_level: int = 4, eps: float = 1e-6):
    """FPN level of each RoI: ``floor(canonical_level + log2(sqrt(area) / canonical_size) + eps)``
    clamped to ``[min_level, max_level]``.

    boxes: (R, 4) ``(x1, y1, x2, y2)`` in image pixels. Returns (R,) int64 levels.
    Degenerate boxes (zero area) go to ``min_level``.
    """
    where = "assign_fpn_levels"
    check_array(boxes, "boxes", where, shape=(None, 4))
    if min_level > max_level:
        raise ValueError(f"{where}: min_level ({min_level}) must be <= max_level ({max_level})")
    xp = get_array_module(boxes)
    b = boxes.astype(xp.float64)
    area = xp.clip((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 0.0, None)
    s = xp.sqrt(area)
    with np.errstate(divide="ignore"):
        k = xp.floor(canonical_level + xp.log2(xp.maximum(s, 1e-12) / canonical_size) + eps)
    return xp.clip(k, min_level, max_level).astype(xp.int64)


def get_roi_op(name: str):
    """``(forward, backward)`` of a RoI op by name: roi_align | roi_align_max | roi_warp | roi_pool.

    Each forward is called as ``forward(feature (N,C,H,W), rois (K,5), output_size, spatial_scale,
    **kwargs) -> (out (K,C,h,w), cache)`` and backward as ``backward(dout, cache) -> d_feature``.
    """
    if name in _ROI_OP_PAIRS:
        return _ROI_OP_PAIRS[name]
    raise ValueError(f"get_roi_op: unknown RoI op {name!r}; choose one of {ROI_OPS}")


def _op_kwargs(name, sampling_ratio, aligned):
    if name in ("roi_align", "roi_align_max"):
        return dict(sampling_ratio=sampling_ratio, aligned=aligned)
    return {}


def multilevel_roi_forward(features, rois, output_size: int, strides=(4, 8, 16, 32),
                           roi_op: str = "roi_align", sampling_ratio: int = 2, aligned: bool = False,
                           canonical_size: float = 224.0, canonical_level: int = 4, levels=None):
    """Pool each RoI from its FPN level.

    features: list of L feature maps, features[i] (N, C, H_i, W_i) with stride ``strides[i]``
        (P2..P5: strides 4, 8, 16, 32; level of features[i] is log2(strides[i])).
    rois: (R, 5) ``(batch_index, x1, y1, x2, y2)`` in image pixels.
    output_size: side of the pooled output (7 for the box head, 14 for the mask head).
    levels: optional (R,) precomputed FPN levels (otherwise :func:`assign_fpn_levels`).
    Returns ``(out (R, C, output_size, output_size), cache)``.
    """
    where = "multilevel_roi_forward"
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise TypeError(f"{where}: features must be a non-empty list of (N, C, H, W) arrays")
    if len(strides) != len(features):
        raise ValueError(f"{where}: got {len(features)} feature maps but {len(strides)} strides")
    for i, f in enumerate(features):
        check_array(f, f"features[{i}]", where, ndim=4, floating=True)
    check_array(rois, "rois", where, shape=(None, 5))
    output_size = check_positive_int(output_size, "output_size", where)
    fwd, _ = get_roi_op(roi_op)
    xp = get_array_module(features[0])
    level_ids = [int(round(math.log2(s))) for s in strides]
    if levels is None:
        levels = assign_fpn_levels(rois[:, 1:], min_level=level_ids[0], max_level=level_ids[-1],
                                   canonical_size=canonical_size, canonical_level=canonical_level)
    n_rois, c = rois.shape[0], features[0].shape[1]
    out = xp.zeros((n_rois, c, output_size, output_size), dtype=features[0].dtype)
    per_level = []  # (feature index, RoI indices, op cache) for levels that have RoIs
    rois = rois.astype(features[0].dtype, copy=False)
    host_levels = asnumpy(levels)      # one read of the levels, not one per level
    for i, (feat, stride, lvl) in enumerate(zip(features, strides, level_ids)):
        idx = np.flatnonzero(host_levels == lvl)
        if idx.size == 0:
            continue
        idx = xp.asarray(idx)
        o, cache = fwd(feat, rois[idx], (output_size, output_size), 1.0 / stride,
                       **_op_kwargs(roi_op, sampling_ratio, aligned))
        out[idx] = o
        per_level.append((i, idx, cache))
    shapes = [f.shape for f in features]
    return out, (per_level, shapes, roi_op, features[0].dtype, xp)


def multilevel_roi_backward(dout, cache):
    """Gradient of the pooled features w.r.t. every feature map.

    dout: (R, C, s, s). Returns a list of arrays shaped like the input feature maps (zeros where
    no RoI read a level).
    """
    per_level, shapes, roi_op, dtype, xp = cache
    _, bwd = get_roi_op(roi_op)
    grads = [xp.zeros(s, dtype=dtype) for s in shapes]
    for i, idx, op_cache in per_level:
        grads[i] += bwd(xp.ascontiguousarray(dout[idx]), op_cache)
    return grads
