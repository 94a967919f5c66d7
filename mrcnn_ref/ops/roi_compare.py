"""Numerical comparison of RoIPool, RoIWarp, RoIAlign-max and RoIAlign-avg against an exact answer.

What should a RoI op output? A natural ground truth: treat the feature map as samples of a
*continuous* function ``f(x, y)`` and ask for the **mean of f over each bin** of the RoI. For a
function whose bin means we know in closed form — a linear ramp ``f(x, y) = a·x + b·y + c`` — we can
measure each op's error exactly.

Coordinates (the convention everything here is built on):

* continuous feature-map coordinates ``(x, y)`` are image coordinates times ``spatial_scale``;
  the feature map covers ``[0, W] × [0, H]`` and **pixel (i, j) covers the unit square
  ``[j, j+1] × [i, i+1]``, so its value is f at the pixel centre ``(x, y) = (j + 0.5, i + 0.5)``**
  (:func:`linear_ramp_features`).
* RoIAlign with ``aligned=True`` uses exactly this convention: it shifts box coordinates by
  -0.5 pixel, so a continuous point ``u`` is read at index coordinate ``u - 0.5``, and index
  coordinate ``i`` *is* pixel ``i``. Bilinear interpolation reproduces a linear function exactly
  between pixel centres, and the average of a linear function over the midpoints of a regular
  sub-grid equals its mean over the bin — so RoIAlign-avg with ``aligned=True`` is **exact** on a
  ramp for any RoI whose samples stay within ``[0.5, W - 0.5] × [0.5, H - 0.5]`` (no clamping).
* With ``aligned=False`` (the original RoIAlign and torchvision's default) pixel ``i`` is read as
  the value at ``u = i``: a constant half-pixel shift, error ``0.5·(a + b)`` on a ramp.
* RoIPool and RoIWarp round the RoI to whole pixels (and RoIPool the bins too): their error depends
  on where the box falls relative to the pixel grid. RoIAlign-max picks the largest sample, which on
  a ramp is biased towards the bin's upper corner.

For a bin ``[x0, x1] × [y0, y1]`` the mean of a linear ``f`` is f at the bin centre
(:func:`exact_bin_means`).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_positive_int, pair
from ..backend import asnumpy, get_array_module
from .roi_align import convert_boxes_to_rois, roi_align, roi_align_max
from .roi_pool import roi_pool
from .roi_warp import roi_warp

__all__ = ["linear_ramp_features", "exact_bin_means", "compare_roi_ops", "ROI_COMPARE_OPS"]

ROI_COMPARE_OPS = ("roi_pool", "roi_warp", "roi_align_max", "roi_align", "roi_align_aligned")


def _coeffs(v, C, xp, dtype):
    v = xp.asarray(v, dtype=dtype)
    return xp.broadcast_to(v.reshape(-1), (C,)) if v.ndim else xp.full((C,), v, dtype=dtype)


def linear_ramp_features(C: int, H: int, W: int, a=1.0, b=0.0, c=0.0, N: int = 1, xp=np,
                         dtype=np.float64):
    """(N, C, H, W) features sampling ``f(x, y) = a·x + b·y + c`` at pixel centres.

    ``features[n, ch, i, j] = a[ch]·(j + 0.5) + b[ch]·(i + 0.5) + c[ch]`` (``a``, ``b``, ``c``
    scalars or length-C sequences), i.e. pixel ``(i, j)`` represents the continuous point
    ``(x, y) = (j + 0.5, i + 0.5)`` of feature-map coordinates.
    """
    where = "linear_ramp_features"
    C, H, W, N = (check_positive_int(v, n, where) for v, n in ((C, "C"), (H, "H"), (W, "W"), (N, "N")))
    a, b, c = (_coeffs(v, C, xp, dtype) for v in (a, b, c))
    x = xp.arange(W, dtype=dtype) + 0.5
    y = xp.arange(H, dtype=dtype) + 0.5
    f = a[:, None, None] * x[None, None, :] + b[:, None, None] * y[None, :, None] + c[:, None, None]
    return xp.ascontiguousarray(xp.broadcast_to(f, (N, C, H, W)))


def exact_bin_means(boxes, output_size, spatial_scale: float = 1.0, a=1.0, b=0.0, c=0.0, C: int = 1):
    """Exact mean of ``f(x, y) = a·x + b·y + c`` over every bin of every RoI: (K, C, PH, PW).

    boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` (image coordinates) or a list of (K_i, 4).
    The RoI in feature coordinates is ``[x1·s, x2·s] × [y1·s, y2·s]``, split into ``PH × PW`` equal
    bins; a linear function's mean over a rectangle is its value at the rectangle's centre.
    """
    where = "exact_bin_means"
    rois = convert_boxes_to_rois(boxes, where)
    xp = get_array_module(rois)
    ph, pw = pair(output_size, "output_size", where)
    dtype = rois.dtype
    a, b, c = (_coeffs(v, C, xp, dtype) for v in (a, b, c))
    s = float(spatial_scale)
    x1, y1, x2, y2 = (rois[:, i] * s for i in range(1, 5))
    cx = x1[:, None] + (xp.arange(pw, dtype=dtype)[None, :] + 0.5) * ((x2 - x1) / pw)[:, None]   # (K, PW)
    cy = y1[:, None] + (xp.arange(ph, dtype=dtype)[None, :] + 0.5) * ((y2 - y1) / ph)[:, None]   # (K, PH)
    return (a[None, :, None, None] * cx[:, None, None, :] + b[None, :, None, None] * cy[:, None, :, None]
            + c[None, :, None, None])


def compare_roi_ops(features, boxes, output_size, spatial_scale: float = 1.0, exact=None,
                    sampling_ratio: int = 2, ops=ROI_COMPARE_OPS) -> dict:
    """Run several RoI ops on the same features and boxes and measure each against ``exact``.

    features: (N, C, H, W). boxes: (K, 5) or list of (K_i, 4). exact: None, a (K, C, PH, PW)
    array of the desired outputs, or a callable ``exact(boxes, output_size, spatial_scale)``
    returning one (e.g. a ``functools.partial`` of :func:`exact_bin_means`).
    ops: names among ``ROI_COMPARE_OPS``: ``roi_pool``, ``roi_warp`` (sampling_ratio samples),
    ``roi_align_max`` and ``roi_align_aligned`` (both ``aligned=True``), ``roi_align``
    (``aligned=False``, torchvision's default).

    Returns ``{name: {"output": array, "max_abs_error": float, "mean_abs_error": float}}``
    (errors are NaN when ``exact`` is None).
    """
    runners = {
        "roi_pool": lambda: roi_pool(features, boxes, output_size, spatial_scale),
        "roi_warp": lambda: roi_warp(features, boxes, output_size, spatial_scale, sampling_ratio),
        "roi_align_max": lambda: roi_align_max(features, boxes, output_size, spatial_scale, sampling_ratio, True),
        "roi_align": lambda: roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, False),
        "roi_align_aligned": lambda: roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, True),
    }
    unknown = [o for o in ops if o not in runners]
    if unknown:
        raise ValueError(f"compare_roi_ops: unknown op(s) {unknown}; expected names from {ROI_COMPARE_OPS}")
    if callable(exact):
        exact = exact(boxes, output_size, spatial_scale)
    ref = None if exact is None else np.asarray(asnumpy(exact), dtype=np.float64)
    result = {}
    for name in ops:
        out = runners[name]()
        entry = {"output": out, "max_abs_error": float("nan"), "mean_abs_error": float("nan")}
        if ref is not None:
            o = np.asarray(asnumpy(out), dtype=np.float64)
            if o.shape != ref.shape:
                raise ValueError(f"compare_roi_ops: exact has shape {ref.shape}, but {name} gives {o.shape}")
            err = np.abs(o - ref)
            entry["max_abs_error"] = float(err.max(initial=0.0))
            entry["mean_abs_error"] = float(err.mean()) if err.size else 0.0
        result[name] = entry
    return result
