"""Slow, plain-Python references for RoIPool, RoIAlign (average and max) and RoIWarp.

One scalar at a time: loops over RoIs, channels, bins and sample points, written straight from
the semantics in the docstrings of :mod:`mrcnn_ref.ops.roi_pool` and :mod:`mrcnn_ref.ops.roi_align`
(torchvision's). Nothing here is vectorised and nothing is shared with the fast ops, so the two can
check each other (``tests/test_roi_reference.py``, chapter 03). Use them on small inputs only.

All functions take ``input`` (N, C, H, W) and ``rois`` (K, 5) ``[batch_index, x1, y1, x2, y2]`` in
image coordinates, compute in Python floats (float64) and return float64 NumPy arrays.

RoIPool, per RoI and axis (``round`` = half away from zero)::

    start = round(x1 * scale)     end = round(x2 * scale)     size = max(end - start + 1, 1)
    bin p covers the pixels [clip(floor(p * size / P) + start), clip(ceil((p + 1) * size / P) + start))

and outputs the max of its pixels (the first one in row-major order wins a tie; an empty bin
outputs 0). The gradient of a bin goes to that one pixel.

RoIAlign, per RoI and axis::

    start = x1 * scale - offset   size = x2 * scale - offset - start   (offset 0.5 if aligned;
    if not aligned: size = max(size, 1))        grid = sampling_ratio or ceil(size / P)
    sample i of bin p:  x = start + p * size / P + (i + 0.5) * (size / P) / grid

Each sample is read by bilinear interpolation of its 4 neighbours (0 outside ``[-1, H] × [-1, W]``,
clamped at the border); a bin outputs the mean of its ``grid_h * grid_w`` samples (mode "avg") or
their max (mode "max"; 0 when the bin has no sample). RoIWarp is RoIAlign (``aligned=False``,
scale 1) on the box rounded to the feature grid, ``round(x * scale)``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["c_round", "roi_pool_reference", "roi_pool_reference_backward", "roi_align_reference",
           "roi_align_reference_backward", "roi_warp_reference", "roi_warp_reference_backward",
           "bilinear_neighbours"]


def c_round(v: float) -> int:
    """Round to nearest, halves away from zero (C's ``round``)."""
    r = math.floor(abs(v) + 0.5)
    return int(r) if v >= 0 else -int(r)


def _pair(output_size):
    return (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)


# ---------------------------------------------------------------------------------------- RoIPool
def _pool_bins(roi, scale, ph, pw, H, W):
    """Yield ``(p, q, hstart, hend, wstart, wend)`` for every bin of one RoI (pixel ranges)."""
    _, x1, y1, x2, y2 = (float(v) for v in roi)
    start_w, end_w = c_round(x1 * scale), c_round(x2 * scale)
    start_h, end_h = c_round(y1 * scale), c_round(y2 * scale)
    bin_w = max(end_w - start_w + 1, 1) / pw
    bin_h = max(end_h - start_h + 1, 1) / ph
    for p in range(ph):
        hstart = min(max(math.floor(p * bin_h) + start_h, 0), H)
        hend = min(max(math.ceil((p + 1) * bin_h) + start_h, 0), H)
        for q in range(pw):
            wstart = min(max(math.floor(q * bin_w) + start_w, 0), W)
            wend = min(max(math.ceil((q + 1) * bin_w) + start_w, 0), W)
            yield p, q, hstart, hend, wstart, wend


def roi_pool_reference(input, rois, output_size, spatial_scale: float = 1.0):
    """RoIPool by loops. Returns ``(out (K, C, PH, PW), argmax (K, C, PH, PW))``; ``argmax`` holds
    the winning pixel as ``(y, x)``'s flat index ``y * W + x`` in its image and channel (-1 for an
    empty bin)."""
    N, C, H, W = input.shape
    ph, pw = _pair(output_size)
    K = len(rois)
    out = np.zeros((K, C, ph, pw))
    argmax = np.full((K, C, ph, pw), -1, dtype=np.int64)
    for k in range(K):
        n = int(rois[k][0])
        for p, q, hs, he, ws, we in _pool_bins(rois[k], spatial_scale, ph, pw, H, W):
            if he <= hs or we <= ws:
                continue                                  # empty bin: 0, no argmax
            for c in range(C):
                best, where = -math.inf, -1
                for y in range(hs, he):
                    for x in range(ws, we):
                        v = float(input[n, c, y, x])
                        if v > best:                      # strict: the first maximum wins
                            best, where = v, y * W + x
                out[k, c, p, q] = best
                argmax[k, c, p, q] = where
    return out, argmax


def roi_pool_reference_backward(dout, argmax, rois, input_shape):
    """Gradient of RoIPool w.r.t. its input by loops: each output's gradient goes to its argmax."""
    N, C, H, W = input_shape
    grad = np.zeros(input_shape)
    K, _, ph, pw = argmax.shape
    for k in range(K):
        n = int(rois[k][0])
        for c in range(C):
            for p in range(ph):
                for q in range(pw):
                    a = int(argmax[k, c, p, q])
                    if a >= 0:
                        grad[n, c, a // W, a % W] += float(dout[k, c, p, q])
    return grad


# ------------------------------------------------------------------------------- RoIAlign, RoIWarp
def bilinear_neighbours(y: float, x: float, H: int, W: int):
    """The pixels a sample at ``(y, x)`` reads and their weights: a list of ``(row, col, weight)``
    (4 entries; empty when the sample lies outside ``[-1, H] × [-1, W]``)."""
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(math.floor(y)), int(math.floor(x))
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return [(y_low, x_low, hy * hx), (y_low, x_high, hy * lx),
            (y_high, x_low, ly * hx), (y_high, x_high, ly * lx)]


def _align_geometry(roi, scale, aligned, warp):
    """``(y_start, height, x_start, width)`` of one RoI on the feature map."""
    _, x1, y1, x2, y2 = (float(v) for v in roi)
    if warp:                       # RoIWarp: corners rounded, then RoIAlign(aligned=False, scale 1)
        x1, y1, x2, y2 = (float(c_round(v * scale)) for v in (x1, y1, x2, y2))
        scale, aligned = 1.0, False
    offset = 0.5 if aligned else 0.0
    xs, ys = x1 * scale - offset, y1 * scale - offset
    w, h = x2 * scale - offset - xs, y2 * scale - offset - ys
    if not aligned:
        w, h = max(w, 1.0), max(h, 1.0)
    return ys, h, xs, w


def _align_bins(roi, scale, ph, pw, sampling_ratio, aligned, warp, H, W):
    """Yield ``(p, q, samples, count)`` for every bin of one RoI: ``samples`` is a list (one entry
    per sample point, in (iy, ix) row-major order) of :func:`bilinear_neighbours` lists, ``count``
    the divisor of the average."""
    ys, h, xs, w = _align_geometry(roi, scale, aligned, warp)
    bin_h, bin_w = h / ph, w / pw
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(h / ph)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(w / pw)
    count = max(grid_h * grid_w, 1)
    for p in range(ph):
        for q in range(pw):
            samples = []
            for iy in range(grid_h):
                y = ys + p * bin_h + (iy + 0.5) * bin_h / grid_h
                for ix in range(grid_w):
                    x = xs + q * bin_w + (ix + 0.5) * bin_w / grid_w
                    samples.append(bilinear_neighbours(y, x, H, W))
            yield p, q, samples, count


def _read(fmap, neighbours):
    return sum(wt * float(fmap[r, c]) for r, c, wt in neighbours)


def _bilinear_pool(input, rois, output_size, scale, sampling_ratio, aligned, mode, warp):
    N, C, H, W = input.shape
    ph, pw = _pair(output_size)
    out = np.zeros((len(rois), C, ph, pw))
    for k, roi in enumerate(rois):
        n = int(roi[0])
        for p, q, samples, count in _align_bins(roi, scale, ph, pw, sampling_ratio, aligned, warp, H, W):
            for c in range(C):
                values = [_read(input[n, c], s) for s in samples]
                if mode == "avg":
                    out[k, c, p, q] = sum(values) / count
                elif values:
                    out[k, c, p, q] = max(values)     # max() returns the first maximum
    return out


def _bilinear_pool_backward(dout, input, rois, output_size, scale, sampling_ratio, aligned, mode, warp):
    N, C, H, W = input.shape
    ph, pw = _pair(output_size)
    grad = np.zeros(input.shape)
    for k, roi in enumerate(rois):
        n = int(roi[0])
        for p, q, samples, count in _align_bins(roi, scale, ph, pw, sampling_ratio, aligned, warp, H, W):
            for c in range(C):
                g = float(dout[k, c, p, q])
                if mode == "avg":
                    chosen, share = samples, g / count
                elif samples:                          # max: only the (first) largest sample
                    values = [_read(input[n, c], s) for s in samples]
                    chosen, share = [samples[values.index(max(values))]], g
                else:
                    chosen, share = [], 0.0
                for s in chosen:
                    for r, col, wt in s:
                        grad[n, c, r, col] += share * wt
    return grad


def roi_align_reference(input, rois, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                        aligned: bool = False, mode: str = "avg"):
    """RoIAlign by loops: (K, C, PH, PW). ``mode``: "avg" (RoIAlign) or "max" (RoIAlign-max)."""
    return _bilinear_pool(input, rois, output_size, spatial_scale, sampling_ratio, aligned, mode, False)


def roi_align_reference_backward(dout, input, rois, output_size, spatial_scale: float = 1.0,
                                 sampling_ratio: int = -1, aligned: bool = False, mode: str = "avg"):
    """Gradient of :func:`roi_align_reference` w.r.t. ``input`` by loops: each sample's share of its
    bin's gradient (1/count for "avg"; all of it for the argmax sample with "max") goes to its 4
    neighbours with their bilinear weights. ``input`` gives the shape (and, for "max", the argmax)."""
    return _bilinear_pool_backward(dout, input, rois, output_size, spatial_scale, sampling_ratio, aligned,
                                   mode, False)


def roi_warp_reference(input, rois, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
                       mode: str = "avg"):
    """RoIWarp by loops: RoIAlign (``aligned=False``) on the corners rounded to the feature grid."""
    return _bilinear_pool(input, rois, output_size, spatial_scale, sampling_ratio, False, mode, True)


def roi_warp_reference_backward(dout, input, rois, output_size, spatial_scale: float = 1.0,
                                sampling_ratio: int = -1, mode: str = "avg"):
    """Gradient of :func:`roi_warp_reference` w.r.t. ``input`` by loops."""
    return _bilinear_pool_backward(dout, input, rois, output_size, spatial_scale, sampling_ratio, False,
                                   mode, True)
