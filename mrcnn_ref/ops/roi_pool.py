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

Every bin is a *range max* over a rectangle, computed without a Python loop over RoIs, bins,
channels or pixels, by one of two algorithms (both built on sparse tables: the max over a range
of length L is the max of two overlapping ranges of length ``2**floor(log2 L)``):

* **2-D sparse table with packed keys** (NumPy, float32/float16; the fast path, see
  :func:`_forward_sparse2d`). Each feature value and its pixel index are packed into one int64
  *key* whose integer order is "larger value first, then earlier pixel", so a plain
  ``np.maximum`` of keys yields the max *and* torchvision's first-in-row-major argmax. Tables of
  the max over every ``2**jy × 2**jx`` block of the map are built level by level with contiguous
  ``np.maximum`` calls; each bin is then the max of (up to) four overlapping blocks: four row
  gathers of C keys. (A float64 value fills all 64 bits, leaving no room for the position.)
* **Separable range max** (any dtype and backend; float64 and CuPy use it, see
  :func:`_forward_separable`): 1-D tables along columns for the whole map, then 1-D tables along
  the rows of each RoI's window, carrying the winner's position next to the value.

Backward is one scatter-add of the gradients to the argmax pixels.

Non-finite features, as torchvision: its scan starts from ``maxval = -FLT_MAX`` (the float32
lowest, for every dtype) and takes a pixel only ``if (v > maxval)``, so NaN and -inf are never
selected and +inf is (the first one). A bin whose pixels are all NaN or -inf outputs -FLT_MAX
(-inf in float16) and gets no gradient; NaN and ±inf outside every bin have no effect. We get
this by reading NaN as -inf and then giving a non-empty bin whose max is -inf the value -FLT_MAX
and no argmax (:func:`_unselected_bins`). On the host that runs only when an ``isfinite`` check
finds a non-finite value; on a device always (a few elementwise passes; nothing is read back).
(For finite float64 features below -FLT_MAX, torchvision's rule would also give -FLT_MAX; ours
gives their max — not changed here.)
"""
from __future__ import annotations

import numpy as np

from .._checks import reads_values
from ..backend import asnumpy, get_array_module, scatter_add
from .roi_common import check_roi_args, chunks_by_area, has_nonfinite

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


def _forward_separable(input, b, hs, he, ws, we, xp):
    """RoIPool by a separable range max (any dtype, NumPy or CuPy).

    input (N, C, H, W); b (K,) batch indices; hs/he (K, PH) and ws/we (K, PW) bin edges.
    Returns ``out (K, C, PH, PW)`` and ``arg (K, PH, PW, C)``, the argmax's flat NHW pixel index
    ``(b * H + y) * W + x`` (-1 for empty bins).

    Stage 1 answers "max over the columns of bin q" for every row of each RoI's row window as the
    max of two overlapping power-of-two ranges, read from tables built once over the whole map;
    stage 2 does the same over the rows of each bin on stage 1's result. Ties keep the earlier
    half in both stages, so the winner is the first maximum in row-major order (first row holding
    the max, first column in that row), exactly like a row-major scan with strict ``>``.
    """
    N, C, H, W = input.shape
    K, ph, pw = hs.shape[0], hs.shape[1], ws.shape[1]
    out = xp.zeros((K, ph, pw, C), dtype=input.dtype)
    arg = xp.full((K, ph, pw, C), -1, dtype=np.int64)
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
    for sel_np in chunks_by_area(asnumpy(extent), np.full(K, pw), C * (1 + ph)):
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
    # gradient index (see roi_pool_backward): (pixel + 1) * C + c, empty bins -> c
    idx = (arg + 1) * C + xp.arange(C)
    return xp.ascontiguousarray(out.transpose(0, 3, 1, 2)), idx


# --- fast path: 2-D sparse table of packed (value, position) keys -------------------------------

_ALL = np.uint32(0xFFFFFFFF)


def _sortable_bits(i):
    """int32 bits of float32 values <-> int32 *sortable* bits, whose integer order is the float
    order (the map is its own inverse). Non-negative floats keep their bits; negative ones flip
    their 31 magnitude bits, which reverses their order: ``i ^ ((i >> 31) & 0x7FFFFFFF)``."""
    mask = i >> 31                                          # -1 for negative, 0 otherwise
    mask &= np.int32(0x7FFFFFFF)
    mask ^= i
    return mask


def _forward_sparse2d(input, b, hs, he, ws, we, xp):
    """RoIPool by a 2-D sparse table of packed keys (float32 NumPy arrays; same contract as
    :func:`_forward_separable`). Needs ``(N * H * W + 1) * C < 2**32``.

    Keys, int64 (N, H, W, C): the high 32 bits hold ``sortable(value)`` (signed), the low 32
    bits ``0xFFFFFFFF - g`` (unsigned) with the gradient index ``g = (pixel + 1) * C + c``,
    ``pixel = (n * H + y) * W + x``. For one channel, ``g`` grows with the pixel's row-major
    position, so the max key over any set of pixels is their max value with ties going to the
    first pixel in row-major order: torchvision's argmax rule, however a bin is split into
    overlapping pieces. (-0.0 is turned into +0.0 first, so the two tie as in a ``>`` scan.)

    Tables ``T[jx]`` (N, H, W, C), one per column level ``jx``: at row level ``jy``,
    ``T[jx][n, y, x]`` is the max key over rows ``[y, y + 2**jy)`` × columns ``[x, x + 2**jx)``.
    Row level 0 is built along x (``T[jx] = max(T[jx-1][x], T[jx-1][x + 2**(jx-1)])``), each
    next row level along y, into a spare buffer that is swapped in (no copies). A bin of
    ``lh × lw`` pixels (``jh = floor(log2 lh)``, ``jw = floor(log2 lw)``) is the max of the
    four blocks of ``T[jw]`` at row level ``jh`` anchored at rows {hs, he - 2**jh} × columns
    {ws, we - 2**jw}, so bins are answered grouped by (jh, jw) while the tables pass row level
    ``jh``. When a length is a power of two its two anchors coincide and the second lookup is
    skipped (about half the bins per axis in practice). Work: ``Jy * Jx`` contiguous maxima
    over the map plus up to four row gathers of C keys per bin; memory: ``Jx + 1`` keys per
    feature value.
    """
    N, C, H, W = input.shape
    K, ph, pw = hs.shape[0], hs.shape[1], ws.shape[1]
    lh, lw = he - hs, we - ws                                                  # (K, PH), (K, PW)
    jh = _floor_log2(xp.maximum(lh, 1), xp)
    jw = _floor_log2(xp.maximum(lw, 1), xp)
    # the non-empty bins, as flat indices q into (K, PH, PW)
    nonempty = ((lh > 0)[:, :, None] & (lw > 0)[:, None, :]).ravel()          # (K*PH*PW,)
    q = xp.nonzero(nonempty)[0]
    k, qh, qw = q // (ph * pw), (q // pw) % ph, q % pw
    jy, jx = jh[k, qh], jw[k, qw]
    y_a, y_b = hs[k, qh], he[k, qh] - (1 << jy)           # top rows of the two row blocks
    x_a, x_b = ws[k, qw], we[k, qw] - (1 << jx)           # left columns of the two column blocks
    Jy = int(jh.max()) + 1 if q.shape[0] else 1
    Jx = int(jw.max()) + 1 if q.shape[0] else 1
    # sort the bins by (jy, jx), and then by which second lookups they need:
    # group 0: x only, 1: x and y, 2: y only, 3: none -> "needs x" = groups 0-1, "needs y" = 1-2
    two_x, two_y = x_b > x_a, y_b > y_a
    group = xp.where(two_x, xp.where(two_y, 1, 0), xp.where(two_y, 2, 3))
    key = (jy * Jx + jx) * 4 + group
    order = xp.argsort(key, kind="stable")
    key, q, y_a, y_b, x_a, x_b = (v[order] for v in (key, q, y_a, y_b, x_a, x_b))
    top = (b[k[order]] * H + y_a) * W                     # flat pixel of (n, y_a, 0)
    bottom = top + (y_b - y_a) * W                        # flat pixel of (n, y_b, 0)
    # bounds[((jy * Jx) + jx) * 4 + g]: where group g of levels (jy, jx) starts among the bins
    bounds = asnumpy(xp.searchsorted(key, xp.arange(Jy * Jx * 4 + 1))).tolist()
    # highest row level each column table is needed for (tables past it are not updated)
    need = [int(jy[jx == j].max()) if bool((jx == j).any()) else -1 for j in range(Jx)]
    # row level 0, column level 0: the keys, written as (low, high) word pairs (little-endian)
    keys = xp.empty((N, H, W, C), dtype=np.int64)
    words = keys.view(np.int32).reshape(N, H, W, C, 2)
    bits = (input + np.float32(0)).view(np.int32)         # + 0 turns -0.0 into +0.0
    words[..., 1] = _sortable_bits(bits).transpose(0, 2, 3, 1)
    g = xp.arange(C, (N * H * W + 1) * C, dtype=np.uint32).reshape(N, H, W, C)
    words[..., 0] = (_ALL - g).view(np.int32)
    T = [keys]
    for j in range(1, Jx):                                # column levels (entries past the
        half, cnt = 1 << (j - 1), W - (1 << j) + 1        # right edge stay unset: never read)
        T.append(xp.empty_like(keys))
        xp.maximum(T[j - 1][:, :, :cnt], T[j - 1][:, :, half:half + cnt], out=T[j][:, :, :cnt])
    spare = xp.empty_like(keys)
    # every bin starts as the key of (value +0.0, index c): what empty bins output
    best = xp.empty((K * ph * pw, C), dtype=np.int64)
    best[...] = (_ALL - xp.arange(C, dtype=np.uint32)).astype(np.int64)
    for level in range(Jy):
        for j in range(Jx):
            if level > 0 and need[j] >= level:            # T[j]: rows [y, y + 2**level)
                half, cnt = 1 << (level - 1), H - (1 << level) + 1
                xp.maximum(T[j][:, :cnt], T[j][:, half:half + cnt], out=spare[:, :cnt])
                T[j], spare = spare, T[j]
            g0, g1, g2, g3, g4 = bounds[(level * Jx + j) * 4:(level * Jx + j) * 4 + 5]
            if g0 == g4:
                continue
            flat = T[j].reshape(N * H * W, C)
            m = xp.take(flat, top[g0:g4] + x_a[g0:g4], axis=0)                 # (bins, C)
            for lo, hi, rows, cols in ((g0, g2, top, x_b), (g1, g3, bottom, x_a),
                                       (g1, g2, bottom, x_b)):
                if lo < hi:
                    xp.maximum(m[lo - g0:hi - g0], xp.take(flat, rows[lo:hi] + cols[lo:hi], axis=0),
                               out=m[lo - g0:hi - g0])
            best[q[g0:g4]] = m
    # unpack: the value from the high words, the gradient index from the low words
    words = best.view(np.int32).reshape(K, ph, pw, C, 2)
    idx = _ALL - words[..., 0].view(np.uint32)                                 # (K, PH, PW, C)
    out = xp.empty((K, C, ph, pw), dtype=np.float32)
    out.view(np.int32).transpose(0, 2, 3, 1)[...] = _sortable_bits(words[..., 1])
    return out, idx


def _unselected_bins(out, idx, xp):
    """Non-empty bins whose max came out -inf (every pixel NaN or -inf, NaN having been read as
    -inf): torchvision's scan selects none of their pixels, so they output -FLT_MAX (the float32
    lowest, -inf in float16) with no argmax: their gradient index is ``c`` (the dump pixel).
    out (K, C, PH, PW), idx (K, PH, PW, C)."""
    C = out.shape[1]
    none = out == -xp.inf                                   # empty bins hold 0, never -inf
    f32 = np.finfo(np.float32)
    lowest = float(f32.min) if np.finfo(out.dtype).max >= f32.max else -np.inf
    out = xp.where(none, out.dtype.type(lowest), out)
    idx = xp.where(none.transpose(0, 2, 3, 1), xp.arange(C, dtype=idx.dtype), idx)
    return out, idx


def roi_pool_forward(input, boxes, output_size, spatial_scale: float = 1.0):
    """RoIPool forward.

    input: (N, C, H, W) float features. boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` (or a list
    of per-image (K_i, 4) arrays). output_size: int or (PH, PW). spatial_scale: 1 / stride.
    Returns ``(out (K, C, PH, PW), cache)``; ``cache[0]`` (K, PH, PW, C) holds each output's
    gradient index ``(pixel + 1) * C + c`` with ``pixel = (n * H + y) * W + x`` its argmax
    (``c`` alone for empty bins), see :func:`roi_pool_backward`.

    NumPy float32/float16 inputs use the 2-D sparse table of packed keys
    (:func:`_forward_sparse2d`; float16 computed in float32, which is exact); other dtypes and
    CuPy arrays use the separable range max (:func:`_forward_separable`). Both give the same
    numbers and the same argmax (the first maximum in row-major order). NaN and -inf are never
    selected, as in torchvision (see the module docstring).
    """
    where = "roi_pool_forward"
    xp, rois, (ph, pw), scale = check_roi_args(input, boxes, output_size, spatial_scale, where)
    N, C, H, W = input.shape
    K = rois.shape[0]
    b = rois[:, 0].astype(np.int64)
    hs, he = _bin_edges(rois[:, 2], rois[:, 4], scale, ph, H, xp)     # (K, PH)
    ws, we = _bin_edges(rois[:, 1], rois[:, 3], scale, pw, W, xp)     # (K, PW)
    if K == 0:
        out = xp.zeros((0, C, ph, pw), dtype=input.dtype)
        return out, (xp.zeros((0, ph, pw, C), dtype=np.int64), input.shape, input.dtype)
    # NaN/inf (see the module docstring): checked on the host, handled blindly on a device
    nonfinite = not reads_values(input) or has_nonfinite(input)
    x = xp.where(xp.isnan(input), input.dtype.type(-np.inf), input) if nonfinite else input
    if xp is np and input.dtype in (np.float32, np.float16) and (N * H * W + 1) * C < 2**32:
        out, idx = _forward_sparse2d(x.astype(np.float32, copy=False), b, hs, he, ws, we, xp)
        out = out.astype(input.dtype, copy=False)
    else:
        out, idx = _forward_separable(x, b, hs, he, ws, we, xp)
    if nonfinite:
        out, idx = _unselected_bins(out, idx, xp)
    return out, (idx, input.shape, input.dtype)


def roi_pool_backward(dout, cache):
    """Gradient of :func:`roi_pool_forward` w.r.t. ``input``: dout (K, C, PH, PW) -> (N, C, H, W).

    Each output's gradient is added to its argmax pixel (several outputs may share one pixel):
    one scatter-add into a flat NHWC buffer with one extra *dump* pixel in front, at the
    forward's index ``(pixel + 1) * C + c``; empty bins point into the dump pixel, which is
    dropped, so no masking is needed."""
    idx, (N, C, H, W), dtype = cache
    xp = get_array_module(dout)
    d = xp.asarray(dout, dtype=dtype).transpose(0, 2, 3, 1)          # (K, PH, PW, C)
    grad = xp.zeros((N * H * W + 1) * C, dtype=dtype)
    scatter_add(grad, idx.ravel(), d.ravel())
    grad = grad[C:].reshape(N, H, W, C)
    return xp.ascontiguousarray(grad.transpose(0, 3, 1, 2))


def roi_pool(input, boxes, output_size, spatial_scale: float = 1.0):
    """``torchvision.ops.roi_pool`` equivalent: (N, C, H, W), boxes -> (K, C, PH, PW)."""
    return roi_pool_forward(input, boxes, output_size, spatial_scale)[0]
