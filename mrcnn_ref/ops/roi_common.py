"""What the RoI ops (RoIAlign, RoIAlign-max, RoIWarp, RoIPool) share: the validation of their
arguments, RoIs as ``(K, 5)`` arrays, the chunking of RoIs by window area (bounded
temporaries on the host), and the check for non-finite features."""
from __future__ import annotations

import math

import numpy as np

from .._checks import check_array, pair, reads_values
from ..backend import asnumpy, get_array_module

__all__ = ["convert_boxes_to_rois", "check_roi_args", "check_sampling", "chunks_by_area", "CHUNK_ELEMS",
           "has_nonfinite"]

#: Upper bound on the number of elements of the largest temporary (gathered windows) per chunk.
CHUNK_ELEMS = 1 << 23


def convert_boxes_to_rois(boxes, where: str = "convert_boxes_to_rois", xp=None, dtype=None):
    """``boxes`` as a (K, 5) array ``[batch_index, x1, y1, x2, y2]``.

    Accepts a (K, 5) array or, like torchvision, a list of per-image (K_i, 4) arrays (the list
    position is the batch index).
    """
    if isinstance(boxes, (list, tuple)):
        parts = []
        for i, b in enumerate(boxes):
            check_array(b, f"boxes[{i}]", where, shape=(None, 4), floating=True)
            xp_ = get_array_module(b) if xp is None else xp
            idx = xp_.full((b.shape[0], 1), i, dtype=b.dtype)
            parts.append(xp_.concatenate([idx, b], axis=1))
        if not parts:
            xp_ = np if xp is None else xp
            return xp_.zeros((0, 5), dtype=dtype or np.float64)
        xp_ = get_array_module(*boxes) if xp is None else xp
        rois = xp_.concatenate([p.astype(parts[0].dtype, copy=False) for p in parts], axis=0)
    else:
        if not hasattr(boxes, "shape"):
            raise TypeError(f"{where}: boxes must be a (K, 5) array [batch_index, x1, y1, x2, y2] or a "
                            f"list of (K_i, 4) arrays, got {type(boxes).__name__}")
        check_array(boxes, "boxes", where, shape=(None, 5), floating=True)
        rois = boxes
    return rois if dtype is None else rois.astype(dtype, copy=False)


def check_roi_args(input, boxes, output_size, spatial_scale, where):
    """Validate the common arguments; return ``(xp, rois (K, 5) in input dtype, (PH, PW), scale)``."""
    check_array(input, "input", where, ndim=4, floating=True)
    xp = get_array_module(input)
    rois = convert_boxes_to_rois(boxes, where, xp=xp, dtype=input.dtype)
    if get_array_module(rois) is not xp:
        raise TypeError(f"{where}: boxes and input must live on the same device (numpy vs cupy)")
    check_array(rois, "boxes", where, finite=True)
    ph, pw = pair(output_size, "output_size", where)
    if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: spatial_scale must be a number, got {type(spatial_scale).__name__}")
    spatial_scale = float(spatial_scale)
    if not (math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(f"{where}: spatial_scale must be a finite number > 0, got {spatial_scale}")
    if rois.shape[0] and reads_values(rois):
        bidx = rois[:, 0]
        if not bool(xp.all(bidx == xp.floor(bidx))):
            raise ValueError(f"{where}: boxes[:, 0] (batch index) must hold integral values")
        lo, hi = float(bidx.min()), float(bidx.max())
        if lo < 0 or hi >= input.shape[0]:
            raise ValueError(f"{where}: boxes[:, 0] (batch index) must lie in [0, {input.shape[0] - 1}] "
                             f"for an input of batch size {input.shape[0]}, got values in [{lo:g}, {hi:g}]")
    return xp, rois, (ph, pw), spatial_scale


def check_sampling(sampling_ratio, aligned, where):
    if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"{where}: sampling_ratio must be an int (<= 0 means adaptive), got "
                        f"{type(sampling_ratio).__name__}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"{where}: aligned must be a bool, got {type(aligned).__name__}")
    return int(sampling_ratio), bool(aligned)


def chunks_by_area(extent_y, extent_x, n_inner):
    """Split RoIs (sorted by window area) into chunks whose gathered windows stay small."""
    area = asnumpy(extent_y) * asnumpy(extent_x)
    order = np.argsort(area, kind="stable")
    out, start = [], 0
    K = len(order)
    while start < K:
        stop = start + 1
        # grow while (count * max area * inner) stays under budget; areas are sorted ascending
        lo, hi = stop, K
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (mid - start) * int(area[order[mid - 1]]) * n_inner <= CHUNK_ELEMS:
                lo = mid
            else:
                hi = mid - 1
        stop = max(lo, start + 1)
        out.append(order[start:stop])
        start = stop
    return out


def has_nonfinite(input) -> bool:
    """Whether the features hold NaN or ±inf, read like the other value checks
    (:func:`mrcnn_ref._checks.reads_values`): always on the host (one ``isfinite`` pass, far
    cheaper than the op), on a device only with ``MRCNN_REF_CHECK_DEVICE_VALUES=1`` (one
    device->host transfer); otherwise False without reading anything."""
    if input.size == 0 or not reads_values(input):
        return False
    xp = get_array_module(input)
    return not bool(xp.isfinite(input).all())
