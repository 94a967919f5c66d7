"""RoIPool (Fast R-CNN) forward/backward, with torchvision's semantics.

RoIPool *quantises twice*: the RoI's corners are rounded to the feature grid, and the rounded RoI
is cut into ``PH × PW`` bins whose edges are rounded outwards to whole pixels; each bin outputs the
max of its pixels. Per RoI and axis (shown for y, ``round`` = half away from zero)::

    start = round(y1 * spatial_scale)          end = round(y2 * spatial_scale)
    size  = max(end - start + 1, 1)            bin = size / PH
    hstart(p) = clip(floor(p * bin) + start, 0, H)
    hend(p)   = clip(ceil((p + 1) * bin) + start, 0, H)

A bin ``[hstart, hend) × [wstart, wend)`` that is empty outputs 0 (and gets no gradient). Ties
go to the first maximum in row-major scan order (strict ``>``), and the backward pass routes each
output's gradient to that argmax pixel.

Vectorised: bins are padded to the largest bin of a chunk of RoIs (RoIs sorted by bin area so
that padding stays small), the padded pixels are gathered in NHWC layout (one contiguous C-vector
per pixel; padding repeats the bin's first pixel); the max over the flattened (row, column) window and
the first position holding it give the first maximum in row-major order. Backward is one scatter-add of the gradients to the argmax pixels.
"""
from __future__ import annotations

import numpy as np

from ..backend import asnumpy, get_array_module, scatter_add
from .roi_align import _check_roi_args, _chunks

__all__ = ["roi_pool", "roi_pool_forward", "roi_pool_backward", "round_half_away"]

def round_half_away(v):
    """Round to nearest, halves away from zero (C's ``round``; NumPy's ``round`` is half-to-even)."""
    xp = get_array_module(v)
    return xp.sign(v) * xp.floor(xp.abs(v) + 0.5)


def _bin_edges(c1, c2, scale, n_bins, length, xp):
    """(K, n_bins) int64 bin starts/ends along one axis, clipped to [0, length]."""
    start = round_half_away(c1 * scale)
    end = round_half_away(c2 * scale)
    size = xp.maximum(end - start + 1, 1)
    bin_size = size / n_bins
    p = xp.arange(n_bins, dtype=c1.dtype)
    lo = xp.floor(p[None, :] * bin_size[:, None]) + start[:, None]
    hi = xp.ceil((p[None, :] + 1) * bin_size[:, None]) + start[:, None]
    lo = xp.clip(lo, 0, length).astype(np.int64)
    hi = xp.clip(hi, 0, length).astype(np.int64)
    return lo, hi


def roi_pool_forward(input, boxes, output_size, spatial_scale: float = 1.0):
    """RoIPool forward.

    input: (N, C, H, W) float features. boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` (or a list
    of per-image (K_i, 4) arrays). output_size: int or (PH, PW). spatial_scale: 1 / stride.
    Returns ``(out (K, C, PH, PW), cache)``; ``cache`` holds the flat NHWC index of each output's
    argmax pixel (-1 for empty bins).
    """
    where = "roi_pool_forward"
    xp, rois, (ph, pw), scale = _check_roi_args(input, boxes, output_size, spatial_scale, where)
    N, C, H, W = input.shape
    K = rois.shape[0]
    b = rois[:, 0].astype(np.int64)
    hs, he = _bin_edges(rois[:, 2], rois[:, 4], scale, ph, H, xp)     # (K, PH)
    ws, we = _bin_edges(rois[:, 1], rois[:, 3], scale, pw, W, xp)     # (K, PW)
    lh = asnumpy((he - hs).max(axis=1)) if K else np.zeros(0, np.int64)
    lw = asnumpy((we - ws).max(axis=1)) if K else np.zeros(0, np.int64)
    out = xp.zeros((K, ph, pw, C), dtype=input.dtype)
    arg = xp.full((K, ph, pw, C), -1, dtype=np.int64)
    F = xp.ascontiguousarray(input.transpose(0, 2, 3, 1)).reshape(N * H * W, C)
    for sel_np in _chunks(np.maximum(lh, 1), np.maximum(lw, 1), ph * pw * C):
        sel = xp.asarray(sel_np)
        Lh, Lw = int(max(lh[sel_np].max(), 1)), int(max(lw[sel_np].max(), 1))
        i = xp.arange(Lh)
        j = xp.arange(Lw)
        rows = hs[sel][:, :, None] + i                                   # (k, PH, Lh)
        cols = ws[sel][:, :, None] + j                                   # (k, PW, Lw)
        # padding positions repeat the bin's first pixel: a duplicate never changes the max and,
        # coming later in scan order, never wins a tie -> no -inf masking pass needed
        rows = xp.minimum(xp.where(rows < he[sel][:, :, None], rows, hs[sel][:, :, None]), H - 1)
        cols = xp.minimum(xp.where(cols < we[sel][:, :, None], cols, ws[sel][:, :, None]), W - 1)
        pix = ((b[sel][:, None, None, None, None] * H + rows[:, :, None, :, None]) * W
               + cols[:, None, :, None, :])                              # (k, PH, PW, Lh, Lw)
        k = int(sel.shape[0])
        pix = pix.reshape(k, ph, pw, Lh * Lw)
        vals = xp.take(F, pix, axis=0)                                   # (k, PH, PW, L, C)
        m = vals.max(axis=3)                                             # (k, PH, PW, C)
        # first maximum in row-major scan: smallest window position holding the max (reductions
        # over axis 3 with contiguous C-vectors are fast; argmax over a middle axis is not)
        L = Lh * Lw
        small = np.int16 if L < np.iinfo(np.int16).max else np.int64
        pos = xp.where(vals == m[:, :, :, None, :], xp.arange(L, dtype=small)[:, None], small(L)).min(axis=3)
        nonempty = ((he[sel] > hs[sel])[:, :, None] & (we[sel] > ws[sel])[:, None, :])[..., None]
        out[sel] = xp.where(nonempty, m, 0)
        arg[sel] = xp.where(nonempty, xp.take_along_axis(pix, pos.astype(np.int64), axis=3), -1)
    cache = (arg, input.shape, input.dtype)
    return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)), cache


def roi_pool_backward(dout, cache):
    """Gradient of :func:`roi_pool_forward` w.r.t. ``input``: dout (K, C, PH, PW) -> (N, C, H, W).

    Each output's gradient is added to its argmax pixel (several outputs may share one pixel)."""
    arg, (N, C, H, W), dtype = cache
    xp = get_array_module(dout)
    d = xp.asarray(dout, dtype=dtype).transpose(0, 2, 3, 1)          # (K, PH, PW, C)
    grad = xp.zeros(N * H * W * C, dtype=dtype)
    valid = arg >= 0
    flat = arg * C + xp.arange(C)
    scatter_add(grad, flat[valid], d[valid])
    return xp.ascontiguousarray(grad.reshape(N, H, W, C).transpose(0, 3, 1, 2))


def roi_pool(input, boxes, output_size, spatial_scale: float = 1.0):
    """``torchvision.ops.roi_pool`` equivalent: (N, C, H, W), boxes -> (K, C, PH, PW)."""
    return roi_pool_forward(input, boxes, output_size, spatial_scale)[0]
