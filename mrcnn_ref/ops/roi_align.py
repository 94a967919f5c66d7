"""RoIAlign (average and max) forward/backward, with torchvision's semantics.

RoIAlign (Mask R-CNN, He et al. 2017) reads a fixed-size ``PH × PW`` feature grid for each region
of interest (RoI) *without rounding any coordinate*: the RoI is split into ``PH × PW`` bins, each bin
gets a regular grid of sample points, every sample is read from the feature map by **bilinear
interpolation** of its 4 neighbouring pixels, and the samples of a bin are averaged (the paper notes
max works about as well; :func:`roi_align_max` gives that variant).

Semantics (the same numbers as ``torchvision.ops.roi_align``), per RoI and per axis (shown for y)::

    offset = 0.5 if aligned else 0
    start  = y1 * spatial_scale - offset          # no rounding
    size   = y2 * spatial_scale - offset - start   # if not aligned: size = max(size, 1)
    bin    = size / PH
    grid   = sampling_ratio if sampling_ratio > 0 else ceil(size / PH)   # samples per bin
    y(p, i) = start + p * bin + (i + 0.5) * bin / grid          i = 0 .. grid-1

A sample with ``y < -1`` or ``y > H`` lies outside the map: it reads 0 but still counts in the
average. Otherwise ``y`` is clamped to ``>= 0``, ``y_low = floor(y)``, ``y_high = y_low + 1``; at the
last row (``y_low >= H - 1``) both neighbours are row ``H - 1`` and ``y = H - 1``. With
``ly = y - y_low`` the row weights are ``(1 - ly, ly)``. The bin value is
``sum over samples / max(grid_h * grid_w, 1)``.

Why it is fast in NumPy — separability
--------------------------------------
The weight of pixel ``(h, w)`` in output ``(p, q)`` is a product ``Ay[p, h] * Ax[q, w]``: bilinear
weights factorise into a row part and a column part, and so does the validity of a sample
(inside iff inside along y *and* along x). Averaging over the ``grid_h × grid_w`` samples of a bin
therefore also factorises, and for RoI ``k`` reading image ``b``::

    out[k, c] = Ay[k] @ F[b, c] @ Ax[k].T        Ay[k]: (PH, H),  Ax[k]: (PW, W)

where ``Ay[k][p]`` holds the row weights averaged over the bin's ``grid_h`` samples (divided by
``grid_h``), likewise ``Ax``. The backward pass is the transpose, ``dF[b, c] += Ay[k].T @ dout[k, c]
@ Ax[k]``. Each RoI only touches a window of rows/columns, so ``Ay``/``Ax`` are stored in *window*
coordinates (rows ``y0[k] .. y0[k] + Sh``) and only that window of the map is gathered: two small
matrix products per RoI, batched over RoIs, no Python loop over RoIs, channels or pixels.

RoIAlign-max applies the same machinery with one matrix row per *sample* (not per bin): the
products give every sample's bilinear value, and the max is taken over the samples of each bin.

Non-finite features (NaN, ±inf)
-------------------------------
A matrix product multiplies *every* pixel of the window, most of them by a weight 0, and
``0 * nan = 0 * inf = nan``: a NaN anywhere in the window would spread to every output of the
RoI. torchvision reads only the 4 neighbours of each sample, and computes
``w1*v1 + w2*v2 + w3*v3 + w4*v4`` for them even where a weight is 0. So, per bin:

* a NaN that some sample reads (as a neighbour, weight zero or not) makes the output NaN;
* an inf read with a weight 0 gives NaN (``0 * inf``): the high neighbour of a sample at an
  integral coordinate, and the duplicated neighbour at the last row/column;
* an inf read only with weights > 0 gives ±inf (NaN if both +inf and -inf are read);
* a value no sample reads has no effect (a sample outside ``[-1, H] × [-1, W]`` reads nothing).

When the features hold a non-finite value (one ``isfinite`` check, see
:func:`~mrcnn_ref.ops.roi_common.has_nonfinite`), the products are computed with those entries
replaced by 0, and then the outputs whose bin reads one are set to NaN or ±inf by the rules
above (:func:`_nonfinite_fixup`). Which bins read which pixels is separable again: with ``T``
(touch: 1 where some real, valid sample of bin row ``p`` has ``h`` as its low or high neighbour)
and ``Z`` (1 where such a read has weight 0) per axis, bin ``(p, q)`` reads pixel ``(h, w)``
iff ``Ty[p, h] * Tx[q, w] > 0``, and with weight 0 iff ``Zy[p, h] * Tx[q, w] + Ty[p, h] * Zx[q, w]
> 0``; the same matrix products applied to indicator maps (isnan, isposinf, isneginf, isinf)
count them. Finite features skip all this, so their numbers are unchanged. On a device the
check reads a value back, so it runs only where value checks do
(``MRCNN_REF_CHECK_DEVICE_VALUES=1``); otherwise a non-finite feature spreads over its RoI's
window as in the plain product. RoIAlign-max does the same per sample, before the max (a NaN
sample wins the max, as in ``np.max``).

(torchvision's CPU kernel, unlike its CUDA kernel, lets a sample outside the map read pixel
``(0, 0)`` of the channel with weights 0, so there a non-finite ``F[n, c, 0, 0]`` turns every bin
with an outside sample into NaN; we follow the CUDA kernel, where such a sample reads nothing.)

The backward pass does not look at the features (RoIAlign is linear in them): the gradient
w.r.t. a non-finite feature is what it would be for a finite one, as in torchvision.
"""
from __future__ import annotations


import numpy as np

from ..backend import asnumpy, get_array_module, is_host, scatter_add
from .roi_common import (CHUNK_ELEMS, check_roi_args, check_sampling, chunks_by_area, convert_boxes_to_rois,
                         has_nonfinite)

__all__ = [
    "roi_align", "roi_align_forward", "roi_align_backward",
    "roi_align_max", "roi_align_max_forward", "roi_align_max_backward",
    "bilinear_sample", "convert_boxes_to_rois", "axis_sample_points",
    "bilinear_pool_forward", "bilinear_pool_backward",
]



# ----------------------------------------------------------------------------------------------
# sample points and separable weight matrices
# ----------------------------------------------------------------------------------------------
def axis_sample_points(start, size, n_bins: int, sampling_ratio: int, xp=np, g_max=None):
    """Sample coordinates along one axis.

    start, size: (K,) RoI start and extent (already scaled, offset, and size-clamped).
    g_max: the largest grid, if the caller knows it (adaptive sampling reads it otherwise).
    Returns ``(coords (K, n_bins, G), grid (K,) int)``: ``coords[k, p, i]`` is sample ``i`` of bin
    ``p``; only ``i < grid[k]`` are real samples (G = max grid; padded entries are meaningless).
    """
    bin_size = size / n_bins
    if sampling_ratio > 0:
        grid = xp.full(start.shape, sampling_ratio, dtype=np.int64)
    else:
        grid = xp.ceil(size / n_bins).astype(np.int64)
    if sampling_ratio > 0:
        g_max = sampling_ratio
    elif g_max is None:   # adaptive: the largest grid is read back (a device->host transfer)
        g_max = max(int(grid.max()) if grid.size else 1, 1)
    safe = xp.maximum(grid, 1).astype(start.dtype)
    p = xp.arange(n_bins, dtype=start.dtype)
    i = xp.arange(g_max, dtype=start.dtype)
    coords = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]
              + (i[None, None, :] + 0.5) * bin_size[:, None, None] / safe[:, None, None])
    return coords, grid


def _bilinear_axis(coords, length: int, xp):
    """Neighbours and weights along one axis with torchvision's boundary rules.

    Returns ``(low, high, w_low, w_high)`` (int64, int64, float, float), weights zeroed for samples
    outside ``[-1, length]``.
    """
    valid = (coords >= -1.0) & (coords <= length)
    c = xp.maximum(coords, 0)
    low = xp.floor(c)
    edge = low >= length - 1
    low = xp.where(edge, length - 1, low)
    c = xp.where(edge, low, c)
    low = low.astype(np.int64)
    high = xp.where(edge, low, low + 1)
    frac = c - low
    w_high = xp.where(valid, frac, 0)
    w_low = xp.where(valid, 1 - frac, 0)
    low = xp.where(valid, low, 0)
    high = xp.where(valid, high, 0)
    return low, high, w_low, w_high


def bilinear_sample(feature, y, x):
    """Bilinear value of a 2-D map at continuous points, with RoIAlign's boundary rules.

    feature: (H, W). y, x: arrays of equal shape (pixel-index coordinates: pixel ``(i, j)`` holds
    the value at ``(y=i, x=j)``). Returns the interpolated values (0 outside ``[-1, H] × [-1, W]``).
    This is exactly the per-sample read used inside :func:`roi_align`.
    """
    xp = get_array_module(feature)
    y = xp.asarray(y, dtype=feature.dtype)
    x = xp.asarray(x, dtype=feature.dtype)
    H, W = feature.shape
    yl, yh, wyl, wyh = _bilinear_axis(y, H, xp)
    xl, xh, wxl, wxh = _bilinear_axis(x, W, xp)
    return (wyl * wxl * feature[yl, xl] + wyl * wxh * feature[yl, xh]
            + wyh * wxl * feature[yh, xl] + wyh * wxh * feature[yh, xh])


def _window(reads, K, length, full, xp):
    """``(origin (K,), extent (K,), S)``: per RoI, the first map index and the number of indices
    of a window covering every ``idx`` where ``mask`` holds, over ``reads = [(mask, idx), ...]``
    (arrays of shape (K, ...)); the whole axis when ``full`` (then nothing is read back). A RoI
    without reads gets the window [0, 1)."""
    if full:
        return xp.zeros(K, dtype=np.int64), xp.full(K, length, dtype=np.int64), length
    big = np.iinfo(np.int64).max
    lo = hi = None
    for mask, idx in reads:
        m_lo = xp.where(mask, idx, big).reshape(K, -1).min(axis=1)
        m_hi = xp.where(mask, idx, -1).reshape(K, -1).max(axis=1)
        lo = m_lo if lo is None else xp.minimum(lo, m_lo)
        hi = m_hi if hi is None else xp.maximum(hi, m_hi)
    empty = hi < 0
    origin = xp.where(empty, 0, lo)
    extent = xp.where(empty, 1, hi - origin + 1)
    return origin, extent, int(extent.max())


def _row_base(K, P, G, S, per_sample, xp):
    """``(K, P, G)`` offsets of each sample's matrix row in a flat (K, R, S) array: row ``p`` (bin
    rows, R = P) or ``p * G + i`` (one row per sample, R = P * G)."""
    R = P * G if per_sample else P
    if per_sample:
        rows = xp.arange(R).reshape(1, P, G)
    else:
        rows = xp.broadcast_to(xp.arange(P)[None, :, None], (1, P, G))
    return (xp.arange(K)[:, None, None] * R + rows) * S


def _window_matrices(coords, grid, length, per_sample, xp, dtype, full=False):
    """Weight matrices in window coordinates along one axis.

    coords (K, P, G), grid (K,). Returns ``(A, origin, extent)``:
    ``A`` (K, R, S) with ``R = P`` (bin-averaged, divided by grid) or ``R = P*G`` (one row per
    sample, undivided) and ``S = max extent``; ``origin`` (K,) first map index of each window.
    """
    K, P, G = coords.shape
    low, high, wl, wh = _bilinear_axis(coords, length, xp)
    real = xp.arange(G)[None, None, :] < grid[:, None, None]
    wl = xp.where(real, wl, 0).astype(dtype, copy=False)
    wh = xp.where(real, wh, 0).astype(dtype, copy=False)
    if not per_sample:
        inv = (1.0 / xp.maximum(grid, 1)).astype(dtype)
        wl = wl * inv[:, None, None]
        wh = wh * inv[:, None, None]
    R = P * G if per_sample else P
    if K == 0:   # no RoIs: whole-axis width when full (the device path multiplies by the map)
        z = xp.zeros(0, dtype=np.int64)
        return xp.zeros((0, R, length if full else 1), dtype=dtype), z, z
    # window: the map indices touched by samples with nonzero weight
    origin, extent, S = _window([(wl != 0, low), (wh != 0, high)], K, length, full, xp)
    base = _row_base(K, P, G, S, per_sample, xp)
    idx = xp.concatenate([(base + low - origin[:, None, None]).ravel(),
                          (base + high - origin[:, None, None]).ravel()])
    vals = xp.concatenate([wl.ravel(), wh.ravel()])
    if is_host(xp):     # fewer entries to add; on a device the zeros are added instead (no read-back)
        keep = vals != 0
        idx, vals = idx[keep], vals[keep]
    elif not full:      # ... at index 0: a zero weight's neighbour may lie outside the window
        idx = xp.where(vals != 0, idx, 0)
    A = xp.zeros(K * R * S, dtype=dtype)
    scatter_add(A, idx, vals)
    return A.reshape(K, R, S), origin, extent


def _touch_matrices(coords, grid, length, per_sample, xp, dtype, full=False):
    """Which map indices the samples *read* along one axis, weight zero or not (for non-finite
    features, see :func:`_nonfinite_fixup`).

    coords (K, P, G), grid (K,). Returns ``(T, Z, origin, extent)``: ``T`` (K, R, S) is 1 where a
    real sample of row ``r`` inside ``[-1, length]`` has index ``origin[k] + s`` as its low or high
    neighbour, ``Z`` is 1 where such a read has weight 0; rows as in :func:`_window_matrices`
    (R = P, or P*G per sample). The window (or the whole axis when ``full``) covers every read,
    so it may be wider than :func:`_window_matrices`' (which covers the nonzero weights only).
    """
    K, P, G = coords.shape
    low, high, wl, wh = _bilinear_axis(coords, length, xp)
    real = xp.arange(G)[None, None, :] < grid[:, None, None]
    read = real & (coords >= -1.0) & (coords <= length)           # the samples that read the map
    R = P * G if per_sample else P
    if K == 0:
        z = xp.zeros(0, dtype=np.int64)
        e = xp.zeros((0, R, length if full else 1), dtype=dtype)
        return e, e, z, z
    origin, extent, S = _window([(read, low), (read, high)], K, length, full, xp)
    base = _row_base(K, P, G, S, per_sample, xp)
    low = xp.where(read, low - origin[:, None, None], 0)          # samples that read nothing
    high = xp.where(read, high - origin[:, None, None], 0)        # point inside, adding 0
    idx = xp.concatenate([(base + low).ravel(), (base + high).ravel()])
    out = []
    for hit in (xp.concatenate([read.ravel(), read.ravel()]),
                xp.concatenate([(read & (wl == 0)).ravel(), (read & (wh == 0)).ravel()])):
        A = xp.zeros(K * R * S, dtype=dtype)
        scatter_add(A, idx, hit.astype(dtype))                       # counts of reads ...
        out.append(xp.minimum(A, 1).reshape(K, R, S))                 # ... -> 0 / 1
    return out[0], out[1], origin, extent


def _gather_windows(F_nhwc, b, oy, ox, Sh, Sw, xp):
    """(k, Sh, Sw, C) windows of ``F_nhwc`` (N, H, W, C) at origins (oy, ox) (clipped at the border)."""
    N, H, W, C = F_nhwc.shape
    rows = xp.minimum(oy[:, None] + xp.arange(Sh)[None, :], H - 1)
    cols = xp.minimum(ox[:, None] + xp.arange(Sw)[None, :], W - 1)
    flat = (b[:, None, None] * H + rows[:, :, None]) * W + cols[:, None, :]
    return xp.take(F_nhwc.reshape(N * H * W, C), flat, axis=0)


def _separable_forward(input, b, Ay, oy, ey, Ax, ox, ex):
    """``out[k, c] = Ay[k] @ window_k(F[b_k, c]) @ Ax[k].T`` for all RoIs -> (K, C, R, Q)."""
    xp = get_array_module(input)
    N, C, H, W = input.shape
    K, R, _ = Ay.shape
    Q = Ax.shape[1]
    out = xp.empty((K, R, Q, C), dtype=input.dtype)
    if K == 0:
        return out.transpose(0, 3, 1, 2), None
    F = xp.ascontiguousarray(input.transpose(0, 2, 3, 1))
    chunks = chunks_by_area(ey, ex, C)
    for sel in chunks:
        sel_x = xp.asarray(sel)
        Sh, Sw = int(ey[sel_x].max()), int(ex[sel_x].max())
        P = _gather_windows(F, b[sel_x], oy[sel_x], ox[sel_x], Sh, Sw, xp)      # (k, Sh, Sw, C)
        k = P.shape[0]
        ay = Ay[sel_x, :, :Sh]                                                    # (k, R, Sh)
        ax = Ax[sel_x, :, :Sw]                                                    # (k, Q, Sw)
        t = xp.matmul(ay, P.reshape(k, Sh, Sw * C)).reshape(k, R, Sw, C)         # rows first
        out[sel_x] = xp.matmul(ax[:, None], t)                                    # (k, R, Q, C)
    return out.transpose(0, 3, 1, 2), chunks


def _separable_backward(dout, input_shape, b, Ay, oy, ey, Ax, ox, ex, chunks):
    """Transpose of :func:`_separable_forward`: ``dF[b_k, c] += Ay[k].T @ dout[k, c] @ Ax[k]``."""
    xp = get_array_module(dout)
    N, C, H, W = input_shape
    grad = xp.zeros(N * H * W * C, dtype=dout.dtype)
    K = Ay.shape[0]
    if K == 0:
        return grad.reshape(N, C, H, W)
    R = Ay.shape[1]
    d = dout.transpose(0, 2, 3, 1)                                                # (K, R, Q, C)
    for sel in chunks:
        sel_x = xp.asarray(sel)
        Sh, Sw = int(ey[sel_x].max()), int(ex[sel_x].max())
        k = len(sel)
        ay = Ay[sel_x, :, :Sh]
        ax = Ax[sel_x, :, :Sw]
        t = xp.matmul(ax[:, None].transpose(0, 1, 3, 2), d[sel_x])              # (k, R, Sw, C)
        dP = xp.matmul(ay.transpose(0, 2, 1), t.reshape(k, R, Sw * C))           # (k, Sh, Sw*C)
        rows = xp.minimum(oy[sel_x][:, None] + xp.arange(Sh)[None, :], H - 1)
        cols = xp.minimum(ox[sel_x][:, None] + xp.arange(Sw)[None, :], W - 1)
        pix = (b[sel_x][:, None, None] * H + rows[:, :, None]) * W + cols[:, None, :]   # (k, Sh, Sw)
        flat = pix[..., None] * C + xp.arange(C)
        scatter_add(grad, flat.ravel(), dP.ravel())
    return xp.ascontiguousarray(grad.reshape(N, H, W, C).transpose(0, 3, 1, 2))


_BAND = 16  # rows per band of the dense path


def _bands(Ay, H):
    """Row bands ``(h0, h1)`` of the map and, per band, a (K,) mask of the RoIs whose weights
    touch it (a RoI only needs the bands its rows fall in)."""
    touched = (Ay != 0).any(axis=1)                                     # (K, H)
    out = []
    for h0 in range(0, H, _BAND):
        h1 = min(H, h0 + _BAND)
        out.append((h0, h1, touched[:, h0:h1].any(axis=1)))
    return out


def _dense_forward(input, b, Ay, Ax):
    """Dense path: ``out[k] = Ay[k] @ F[b_k] @ Ax[k].T`` with whole-axis Ay (K, R, H), Ax (K, Q, W).

    Per image and band of rows ``h0:h1``: ``T = Ax (K_n*Q, W) @ F_n[:, h0:h1] (W, C*bh)`` then a
    batched ``T[k] (Q*C, bh) @ Ay[k, :, h0:h1].T``, summed over the bands a RoI touches. Pure matrix
    products, no gather; cost ~ Q * W * C * (rows of the bands touched) multiply-adds per RoI, so it
    pays off when RoIs are large compared with the map.
    """
    xp = get_array_module(input)
    N, C, H, W = input.shape
    K, R, _ = Ay.shape
    Q = Ax.shape[1]
    out = xp.zeros((K, Q * C, R), dtype=input.dtype)
    for h0, h1, hit in _bands(Ay, H):
        bh = h1 - h0
        step = max(1, CHUNK_ELEMS // max(Q * C * bh, 1))
        for n in range(N):
            idx = xp.nonzero((b == n) & hit)[0]
            if idx.size == 0:
                continue
            Fw = input[n, :, h0:h1, :].transpose(2, 0, 1).reshape(W, C * bh)
            for s in range(0, int(idx.size), step):
                sel = idx[s:s + step]
                k = int(sel.size)
                T = xp.matmul(Ax[sel].reshape(k * Q, W), Fw).reshape(k, Q * C, bh)
                out[sel] += xp.matmul(T, Ay[sel][:, :, h0:h1].transpose(0, 2, 1))
    return out.reshape(K, Q, C, R).transpose(0, 2, 3, 1)


def _dense_backward(dout, input_shape, b, Ay, Ax):
    """Transpose of :func:`_dense_forward` (no scatter: two matrix products per image and band)."""
    xp = get_array_module(dout)
    N, C, H, W = input_shape
    K, R, _ = Ay.shape
    Q = Ax.shape[1]
    gw = xp.zeros((N, W, C, H), dtype=dout.dtype)
    d = xp.ascontiguousarray(dout.transpose(0, 3, 1, 2)).reshape(K, Q * C, R)
    for h0, h1, hit in _bands(Ay, H):
        bh = h1 - h0
        step = max(1, CHUNK_ELEMS // max(Q * C * bh, 1))
        for n in range(N):
            idx = xp.nonzero((b == n) & hit)[0]
            for s in range(0, int(idx.size), step):
                sel = idx[s:s + step]
                k = int(sel.size)
                dT = xp.matmul(d[sel], Ay[sel][:, :, h0:h1])                      # (k, Q*C, bh)
                g = xp.matmul(Ax[sel].reshape(k * Q, W).T, dT.reshape(k * Q, C * bh))
                gw[n, :, :, h0:h1] += g.reshape(W, C, bh)
    return xp.ascontiguousarray(gw.transpose(0, 2, 3, 1))


#: Adaptive sampling refuses more samples per bin side than this (the weight matrices would not fit).
_MAX_ADAPTIVE_GRID = 1 << 16


def _device_forward(input, b, Ay, Ax):
    """The path on a device: ``out[k] = Ay[k] @ F[b_k] @ Ax[k].T`` with whole-axis Ay (K, R, H),
    Ax (K, Q, W) as two batched matrix products per image, RoIs of other images weighted 0.

    No shape depends on the data, so nothing is read back to the host (the host paths choose
    windows, bands and chunks from the RoIs' extents). Memory: a (K, C, R, W) temporary.
    """
    xp = get_array_module(input)
    N = input.shape[0]
    out = 0
    for n in range(N):
        ay = Ay if N == 1 else Ay * (b == n).astype(Ay.dtype)[:, None, None]
        t = xp.matmul(ay[:, None], input[n][None])                    # (K, C, R, W)
        out = out + xp.matmul(t, Ax.transpose(0, 2, 1)[:, None])      # (K, C, R, Q)
    return out


def _device_backward(dout, input_shape, b, Ay, Ax):
    """Transpose of :func:`_device_forward`: ``dF[n] = sum_k Ay[k].T @ dout[k] @ Ax[k]``, the sum
    over RoIs and bin rows as one matrix product ``(H, K*R) @ (K*R, C*W)`` per image."""
    xp = get_array_module(dout)
    N, C, H, W = input_shape
    K, R, _ = Ay.shape
    t = xp.matmul(dout, Ax[:, None])                                  # (K, C, R, W)
    t = t.transpose(0, 2, 1, 3).reshape(K * R, C * W)
    grads = []
    for n in range(N):
        ay = Ay if N == 1 else Ay * (b == n).astype(Ay.dtype)[:, None, None]
        g = xp.matmul(ay.reshape(K * R, H).T, t)                     # (H, C*W)
        grads.append(g.reshape(H, C, W).transpose(1, 0, 2))
    return xp.stack(grads)


PATHS = ("auto", "dense", "window")   # the host paths: a cost model's choice, or one forced


def _use_dense(cy, cx, H, W, K, path="auto"):
    if path not in PATHS:
        raise ValueError(f"roi_align: path must be one of {PATHS}, got {path!r}")
    if path != "auto":
        return path == "dense"
    if K == 0:
        return False
    # window path gathers ~ sum_k extent_y * extent_x pixels per channel (and scatters them back);
    # the dense path does ~ K * Q * H * W multiply-adds per channel in BLAS. A gathered element
    # costs roughly as much as _DENSE_FACTOR multiply-adds.
    span_y = asnumpy(cy.max(axis=(1, 2)) - cy.min(axis=(1, 2))) + 2
    span_x = asnumpy(cx.max(axis=(1, 2)) - cx.min(axis=(1, 2))) + 2
    window = float(np.sum(np.minimum(span_y, H) * np.minimum(span_x, W)))
    dense = float(K) * cx.shape[1] * H * W
    return dense < _DENSE_FACTOR * window


# The window path also pays a scatter-add in backward and its gathers are slow, while the dense
# path skips the row bands no RoI touches: measured forward + backward, the dense path wins in all
# but extreme cases (tiny RoIs on a large map), hence a large factor. Measurements: docs/recipe.md.
_DENSE_FACTOR = 4096.0


def _roi_geometry(rois, spatial_scale, aligned):
    """(K,) start/size along y and x, per the RoIAlign rules (no rounding)."""
    xp = get_array_module(rois)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    x2 = rois[:, 3] * spatial_scale - offset
    y2 = rois[:, 4] * spatial_scale - offset
    w, h = x2 - x1, y2 - y1
    if not aligned:
        w, h = xp.maximum(w, 1.0), xp.maximum(h, 1.0)
    return y1, h, x1, w


def _nonfinite_fixup(vals, input, b, cy, gy, cx, gx, per_sample, kind):
    """Set the outputs whose samples read a non-finite feature, torchvision's way.

    vals (K, C, R, Q): the products computed with the non-finite features replaced by 0 (R, Q
    bins, or samples when ``per_sample``). ``kind``: the path that computed them ("device",
    "dense" or "window"); the same path counts, per output, the reads of NaN, +inf and -inf
    pixels and the zero-weight reads of inf pixels (products of the touch matrices of
    :func:`_touch_matrices` with indicator maps). An output becomes NaN if it reads a NaN, reads
    an inf with weight 0, or reads both +inf and -inf; else ±inf if it reads ±inf; else it keeps
    its value. On the host only the channels holding non-finite values are counted.
    """
    xp = get_array_module(input)
    N, C, H, W = input.shape
    K = vals.shape[0]
    full = kind != "window"
    Ty, Zy, oy, ey = _touch_matrices(cy, gy, H, per_sample, xp, input.dtype, full)
    Tx, Zx, ox, ex = _touch_matrices(cx, gx, W, per_sample, xp, input.dtype, full)
    chans = None
    G = input
    if is_host(xp):
        chans = np.flatnonzero(~np.isfinite(input).all(axis=(0, 2, 3)))
        G = input[:, chans]
    c = G.shape[1]

    def products(F, b, Ay, oy, ey, Ax, ox, ex):
        if kind == "device":
            return _device_forward(F, b, Ay, Ax)
        if kind == "dense":
            return _dense_forward(F, b, Ay, Ax)
        return _separable_forward(F, b, Ay, oy, ey, Ax, ox, ex)[0]

    ind = xp.concatenate([xp.isnan(G), G == xp.inf, G == -xp.inf], axis=1).astype(input.dtype)
    reads = products(ind, b, Ty, oy, ey, Tx, ox, ex) > 0                   # (K, 3c, R, Q)
    cat = xp.concatenate
    zero = products(xp.isinf(G).astype(input.dtype), cat([b, b]), cat([Zy, Ty]), cat([oy, oy]),
                    cat([ey, ey]), cat([Tx, Zx]), cat([ox, ox]), cat([ex, ex])) > 0   # (2K, c, R, Q)
    pos, neg = reads[:, c:2 * c], reads[:, 2 * c:]
    nan = reads[:, :c] | zero[:K] | zero[K:] | (pos & neg)
    old = vals if chans is None else vals[:, chans]
    new = xp.where(nan, xp.nan, xp.where(pos, xp.inf, xp.where(neg, -xp.inf, old))).astype(vals.dtype)
    if chans is None:
        return new
    vals[:, chans] = new
    return vals


def bilinear_pool_forward(input, rois, ph, pw, y_start, y_size, x_start, x_size, sampling_ratio, mode,
                        path="auto"):
    """Shared by roi_align / roi_align_max / roi_warp once the RoI geometry is known. ``path``
    chooses the implementation: "auto" — on the host a cost model picks "dense" or "window", on
    a device the device path; "dense" or "window" force a host path (on a device too, where they
    read the RoIs' extents back). ``mode``:
    "avg" (RoIAlign, RoIWarp) or "max" (RoIAlign-max) over each bin's samples."""
    xp = get_array_module(input)
    N, C, H, W = input.shape
    K = rois.shape[0]
    b = rois[:, 0].astype(np.int64)
    gy_max = gx_max = None
    if sampling_ratio <= 0 and K:      # adaptive grids: both axes' largest in one read
        grids = asnumpy(xp.stack([xp.ceil(y_size / ph).max(), xp.ceil(x_size / pw).max()]))
        if not (np.isfinite(grids).all() and grids.max() <= _MAX_ADAPTIVE_GRID):
            raise ValueError(f"roi_align: adaptive sampling would take {grids.max():g} samples per bin "
                             f"side (RoI size x spatial_scale / output size); check spatial_scale and "
                             f"the boxes, or give a sampling_ratio")
        gy_max, gx_max = (max(int(g), 1) for g in grids)
    cy, gy = axis_sample_points(y_start, y_size, ph, sampling_ratio, xp, gy_max)
    cx, gx = axis_sample_points(x_start, x_size, pw, sampling_ratio, xp, gx_max)
    per_sample = mode == "max"
    device_path = path == "auto" and not is_host(xp)
    dense = True if device_path else _use_dense(cy, cx, H, W, K, path)
    Ay, oy, ey = _window_matrices(cy, gy, H, per_sample, xp, input.dtype, full=dense)
    Ax, ox, ex = _window_matrices(cx, gx, W, per_sample, xp, input.dtype, full=dense)
    nonfinite = K > 0 and has_nonfinite(input)     # NaN/inf: products on zeros, then fixed up
    feats = xp.where(xp.isfinite(input), input, input.dtype.type(0)) if nonfinite else input
    if device_path:
        vals, chunks = _device_forward(feats, b, Ay, Ax), "device"
    elif dense:
        vals, chunks = _dense_forward(feats, b, Ay, Ax), None
    else:
        vals, chunks = _separable_forward(feats, b, Ay, oy, ey, Ax, ox, ex)
    if nonfinite:
        kind = "device" if device_path else "dense" if dense else "window"
        vals = _nonfinite_fixup(vals, input, b, cy, gy, cx, gx, per_sample, kind)
    geo = (b, Ay, oy, ey, Ax, ox, ex, chunks)
    if mode == "avg":
        return vals, (mode, input.shape, geo, None)
    Gy, Gx = cy.shape[2], cx.shape[2]
    v = vals.reshape(K, C, ph, Gy, pw, Gx).transpose(0, 1, 2, 4, 3, 5).reshape(K, C, ph, pw, Gy * Gx)
    real = ((xp.arange(Gy)[None, :, None] < gy[:, None, None])
            & (xp.arange(Gx)[None, None, :] < gx[:, None, None])).reshape(K, 1, 1, 1, Gy * Gx)
    v = xp.where(real, v, -xp.inf)
    arg = xp.argmax(v, axis=-1)          # first maximum in (iy, ix) row-major order
    has = (gy * gx > 0).reshape(K, 1, 1, 1)
    out = xp.where(has, xp.take_along_axis(v, arg[..., None], axis=-1)[..., 0], 0).astype(input.dtype)
    return out, (mode, input.shape, geo, (arg, has, Gy, Gx))


def bilinear_pool_backward(dout, cache):
    mode, shape, (b, Ay, oy, ey, Ax, ox, ex, chunks), extra = cache
    xp = get_array_module(dout)
    dout = xp.asarray(dout, dtype=Ay.dtype)
    if mode == "max":
        arg, has, Gy, Gx = extra
        K, C, ph, pw = dout.shape
        onehot = xp.arange(Gy * Gx) == arg[..., None]
        dv = xp.where(onehot & has[..., None], dout[..., None], 0).astype(dout.dtype)
        dout = dv.reshape(K, C, ph, pw, Gy, Gx).transpose(0, 1, 2, 4, 3, 5).reshape(K, C, ph * Gy, pw * Gx)
    if isinstance(chunks, str):
        return _device_backward(dout, shape, b, Ay, Ax)
    if chunks is None:
        return _dense_backward(dout, shape, b, Ay, Ax)
    return _separable_backward(dout, shape, b, Ay, oy, ey, Ax, ox, ex, chunks)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def _checked_forward(where, mode, input, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                     path):
    """Validate the public arguments, place the RoIs, and run the shared core in ``mode``
    ("avg" for RoIAlign, "max" for RoIAlign-max)."""
    _, rois, (ph, pw), scale = check_roi_args(input, boxes, output_size, spatial_scale, where)
    sampling_ratio, aligned = check_sampling(sampling_ratio, aligned, where)
    y1, h, x1, w = _roi_geometry(rois, scale, aligned)
    return bilinear_pool_forward(input, rois, ph, pw, y1, h, x1, w, sampling_ratio, mode, path)


def roi_align_forward(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                      aligned: bool = False, *, path: str = "auto"):
    """RoIAlign (average of bilinear samples per bin), forward.

    input: (N, C, H, W) float features. boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` in image
    coordinates (or a list of per-image (K_i, 4) arrays). output_size: int or (PH, PW).
    spatial_scale: feature-map pixels per image pixel (1/stride). sampling_ratio: samples per bin
    along each axis (<= 0: adaptive ``ceil(roi_size / output_size)``). aligned: shift by -0.5 pixel
    so that pixel centres sit at half-integers (the "correct" alignment of Detectron2).
    path: the host implementation — "dense" (whole-axis matrices), "window" (gathered windows)
    or "auto" (a cost model picks; same numbers). Returns ``(out (K, C, PH, PW), cache)``.
    NaN/inf features affect only the bins whose samples read them, as in torchvision (see the
    module docstring).
    """
    return _checked_forward("roi_align_forward", "avg", input, boxes, output_size, spatial_scale,
                            sampling_ratio, aligned, path)


def roi_align_backward(dout, cache):
    """Gradient of :func:`roi_align_forward` w.r.t. ``input``: dout (K, C, PH, PW) -> (N, C, H, W)."""
    return bilinear_pool_backward(dout, cache)


def roi_align(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False, *, path: str = "auto"):
    """``torchvision.ops.roi_align`` equivalent: (N, C, H, W), boxes -> (K, C, PH, PW)."""
    return roi_align_forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                             path=path)[0]


def roi_align_max_forward(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                          aligned: bool = False, *, path: str = "auto"):
    """RoIAlign with the MAX over each bin's bilinear samples (the paper's alternative), forward.

    Same sample points as :func:`roi_align_forward`. Choices: a sample outside ``[-1, H] × [-1, W]``
    reads 0 and takes part in the max (as it takes part in the average); ties go to the first
    sample in (iy, ix) row-major order; a RoI with no samples (zero size with ``aligned=True``)
    gives 0; NaN/inf features set the samples that read them as in :func:`roi_align_forward`,
    and a NaN sample wins the max (as in ``np.max``). ``path`` as in :func:`roi_align_forward`.
    Returns ``(out (K, C, PH, PW), cache)``.
    """
    return _checked_forward("roi_align_max_forward", "max", input, boxes, output_size, spatial_scale,
                            sampling_ratio, aligned, path)


def roi_align_max_backward(dout, cache):
    """Gradient of :func:`roi_align_max_forward`: each output's gradient goes to the 4 bilinear
    neighbours of its argmax sample, with that sample's bilinear weights."""
    return bilinear_pool_backward(dout, cache)


def roi_align_max(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                  aligned: bool = False, *, path: str = "auto"):
    """RoIAlign-max output only (see :func:`roi_align_max_forward`)."""
    return roi_align_max_forward(input, boxes, output_size, spatial_scale, sampling_ratio, aligned,
                                 path=path)[0]
