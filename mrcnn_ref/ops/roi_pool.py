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

Vectorised as a separable *range max* with sparse tables (see :func:`roi_pool_forward`): the max
over any range of length L is the max of two overlapping power-of-two ranges, read from tables
built once; no Python loop over RoIs, bins, channels or pixels. Backward is one scatter-add of
the gradients to the argmax pixels.
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


def _floor_log2(n, xp):
    """floor(log2(n)) for integer arrays n >= 1 (exact, also at powers of two)."""
    j = xp.floor(xp.log2(n.astype(np.float64))).astype(np.int64)
    j = xp.where((1 << (j + 1)) <= n, j + 1, j)
    return xp.where((1 << j) > n, j - 1, j)


def _range_max_tables(v, pos, axis, levels, xp):
    """Sparse tables of range maxima along ``axis``: level j holds, at index i, the max of ``v``
    over ``[i, i + 2**j)`` and the carried ``pos`` (the winner's position) of its first maximum
    (ties keep the earlier half). Returns ``(levels, *v.shape)`` stacked values and positions.
    Entries whose range would run past the end are left uninitialised: they are never queried.
    """
    n = v.shape[axis]
    tv = xp.empty((levels,) + v.shape, dtype=v.dtype)
    tp = xp.empty((levels,) + v.shape, dtype=pos.dtype)
    tv[0], tp[0] = v, pos
    for j in range(1, levels):
        half, cnt = 1 << (j - 1), n - (1 << j) + 1
        if cnt <= 0:
            break
        sl = lambda a, b: (j,) + (slice(None),) * axis + (slice(a, b),)  # noqa: E731
        pl = (j - 1,) + (slice(None),) * axis + (slice(0, cnt),)
        pr = (j - 1,) + (slice(None),) * axis + (slice(half, half + cnt),)
        take_right = tv[pr] > tv[pl]                       # strict: ties keep the earlier half
        tv[sl(0, cnt)] = xp.where(take_right, tv[pr], tv[pl])
        tp[sl(0, cnt)] = xp.where(take_right, tp[pr], tp[pl])
    return tv, tp


def roi_pool_forward(input, boxes, output_size, spatial_scale: float = 1.0):
    """RoIPool forward.

    input: (N, C, H, W) float features. boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` (or a list
    of per-image (K_i, 4) arrays). output_size: int or (PH, PW). spatial_scale: 1 / stride.
    Returns ``(out (K, C, PH, PW), cache)``; ``cache`` holds the flat NHWC index of each output's
    argmax pixel (-1 for empty bins).

    Implementation: a separable range max with sparse tables. Stage 1 answers "max over the
    columns of bin q" for every row of each RoI's row window as the max of two overlapping
    power-of-two ranges, read from tables built once over the whole map; stage 2 does the same
    over the rows of each bin on stage 1's result. Ties keep the earlier half in both stages, so
    the winner is the first maximum in row-major order (first row holding the max, first column
    in that row), exactly like a row-major scan with strict ``>``.
    """
    where = "roi_pool_forward"
    xp, rois, (ph, pw), scale = _check_roi_args(input, boxes, output_size, spatial_scale, where)
    N, C, H, W = input.shape
    K = rois.shape[0]
    b = rois[:, 0].astype(np.int64)
    hs, he = _bin_edges(rois[:, 2], rois[:, 4], scale, ph, H, xp)     # (K, PH)
    ws, we = _bin_edges(rois[:, 1], rois[:, 3], scale, pw, W, xp)     # (K, PW)
    out = xp.zeros((K, ph, pw, C), dtype=input.dtype)
    arg = xp.full((K, ph, pw, C), -1, dtype=np.int64)
    if K == 0:
        return out.transpose(0, 3, 1, 2), (arg, input.shape, input.dtype)
    lw = xp.maximum(we - ws, 1)
    lh = xp.maximum(he - hs, 1)
    jw_all = _floor_log2(lw, xp)
    jh_all = _floor_log2(lh, xp)
    # stage-1 tables over columns of the whole map (NHWC: one contiguous C-vector per pixel)
    F = xp.ascontiguousarray(input.transpose(0, 2, 3, 1))                # (N, H, W, C)
    col = xp.broadcast_to(xp.arange(W, dtype=np.int32)[None, None, :, None], F.shape)
    Jw = int(jw_all.max()) + 1
    TV, TA = _range_max_tables(F, col, 2, Jw, xp)
    TV = TV.reshape(Jw * N * H * W, C)
    TA = TA.reshape(Jw * N * H * W, C)
    # RoI row windows: rows r0 .. r0 + extent - 1 cover all its bins
    r0 = xp.where(he[:, -1] > hs[:, 0], hs[:, 0], 0)
    extent = xp.maximum(he[:, -1] - r0, 1)
    for sel_np in _chunks(asnumpy(extent), np.full(K, pw), C * (1 + ph)):
        sel = xp.asarray(sel_np)
        k = int(sel.shape[0])
        Sh = int(extent[sel].max())
        rows = xp.minimum(r0[sel][:, None] + xp.arange(Sh), H - 1)                     # (k, Sh)
        jw = jw_all[sel]                                                                 # (k, PW)
        left = xp.minimum(ws[sel], W - 1)
        right = xp.minimum(xp.maximum(we[sel] - (1 << jw), 0), W - 1)
        base = ((jw[:, None, :] * N + b[sel][:, None, None]) * H + rows[:, :, None]) * W  # (k, Sh, PW)
        f1, f2 = base + left[:, None, :], base + right[:, None, :]
        v1, v2 = xp.take(TV, f1, axis=0), xp.take(TV, f2, axis=0)                       # (k, Sh, PW, C)
        t2 = v2 > v1
        R = xp.where(t2, v2, v1)
        Acol = xp.where(t2, xp.take(TA, f2, axis=0), xp.take(TA, f1, axis=0))
        del v1, v2, t2
        # stage 2: range max over the rows of each bin, on the window
        jh = jh_all[sel]                                                                 # (k, PH)
        Jh = int(jh.max()) + 1
        # carry the winner's position inside the window as one int: local_row * W + column
        local = (xp.arange(Sh, dtype=np.int32)[None, :, None, None] * W + Acol).astype(np.int32)
        RV, RP = _range_max_tables(R, local, 1, Jh, xp)
        lo = hs[sel] - r0[sel][:, None]                                                  # (k, PH)
        lo = xp.clip(lo, 0, Sh - 1)
        hi = xp.clip(xp.maximum(he[sel] - r0[sel][:, None] - (1 << jh), 0), 0, Sh - 1)
        kk = xp.arange(k)[:, None, None]
        qq = xp.arange(pw)[None, None, :]
        jj = jh[:, :, None]
        a1 = (jj, kk, lo[:, :, None], qq)
        a2 = (jj, kk, hi[:, :, None], qq)
        v1, v2 = RV[a1], RV[a2]                                                          # (k, PH, PW, C)
        t2 = v2 > v1
        m = xp.where(t2, v2, v1)
        best = xp.where(t2, RP[a2], RP[a1]).astype(np.int64)
        pix = (b[sel][:, None, None, None] * H + r0[sel][:, None, None, None]) * W + best
        nonempty = ((he[sel] > hs[sel])[:, :, None] & (we[sel] > ws[sel])[:, None, :])[..., None]
        out[sel] = xp.where(nonempty, m, 0)
        arg[sel] = xp.where(nonempty, pix, -1)
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
