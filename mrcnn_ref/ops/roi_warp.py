"""RoIWarp (MNC, Dai et al. 2016) forward/backward: bilinear sampling on a *quantised* RoI.

The Mask R-CNN paper compares three ways to read a RoI's features: RoIPool (quantised RoI,
quantised bins, max), RoIWarp (quantised RoI, then bilinear sampling — "RoIWarp ... overlooked the
alignment problem and was implemented in [MNC] as quantizing RoI just like RoIPool") and RoIAlign
(no quantisation at all). There is no reference implementation with a fixed convention, so ours
is defined precisely as:

    RoIWarp(F, boxes, s) = RoIAlign(F, boxes', scale 1, aligned=False)
    with boxes' = round(boxes * s)  (round half away from zero, exactly as RoIPool rounds)

i.e. the RoI's four scaled coordinates are snapped to integer feature-pixel positions, then the
bins are sampled bilinearly (``sampling_ratio`` samples per bin, adaptive when <= 0) and averaged,
with all of RoIAlign's boundary rules (a RoI is at least 1 pixel wide and high). With
``aligned=False`` RoIAlign treats pixel ``(i, j)`` as the value at continuous point ``(y=i, x=j)``,
so the snapped RoI starts and ends exactly on pixels. The only difference from RoIAlign is the
first rounding — which is what the paper's Table 2c isolates.

Backward is RoIAlign's (the op is linear in the features; the rounded coordinates are constants).
NaN/inf features are handled by RoIAlign's rules too: only the bins whose samples read one are
affected (see :mod:`mrcnn_ref.ops.roi_align`).
"""
from __future__ import annotations

from .roi_align import bilinear_pool_backward, bilinear_pool_forward
from .roi_common import check_roi_args, check_sampling
from .roi_pool import round_half_away

__all__ = ["roi_warp", "roi_warp_forward", "roi_warp_backward"]


def roi_warp_forward(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1):
    """RoIWarp forward: RoIAlign-avg on RoI coordinates rounded to the feature grid.

    input: (N, C, H, W) float. boxes: (K, 5) ``[batch_index, x1, y1, x2, y2]`` (or a list of
    per-image (K_i, 4) arrays). output_size: int or (PH, PW). spatial_scale: 1 / stride.
    sampling_ratio: bilinear samples per bin and axis (<= 0: ``ceil(roi_size / output_size)``).
    Returns ``(out (K, C, PH, PW), cache)``.
    """
    where = "roi_warp_forward"
    xp, rois, (ph, pw), scale = check_roi_args(input, boxes, output_size, spatial_scale, where)
    sampling_ratio, _ = check_sampling(sampling_ratio, False, where)
    x1 = round_half_away(rois[:, 1] * scale)
    y1 = round_half_away(rois[:, 2] * scale)
    x2 = round_half_away(rois[:, 3] * scale)
    y2 = round_half_away(rois[:, 4] * scale)
    h = xp.maximum(y2 - y1, 1.0)
    w = xp.maximum(x2 - x1, 1.0)
    return bilinear_pool_forward(input, rois, ph, pw, y1, h, x1, w, sampling_ratio, "avg")


def roi_warp_backward(dout, cache):
    """Gradient of :func:`roi_warp_forward` w.r.t. ``input``: (K, C, PH, PW) -> (N, C, H, W)."""
    return bilinear_pool_backward(dout, cache)


def roi_warp(input, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1):
    """RoIWarp output only (see :func:`roi_warp_forward`)."""
    return roi_warp_forward(input, boxes, output_size, spatial_scale, sampling_ratio)[0]
