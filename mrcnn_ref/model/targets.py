"""Proposal targets: which RoIs the second stage trains on, and what each should predict.

For one image, given the RPN's proposals and the ground truth (boxes, class labels, masks):

1. **Add the ground-truth boxes to the proposals.** Early in training the RPN proposes junk; the
   gt boxes guarantee at least one perfect foreground RoI per object.
2. **Match by IoU.** Each RoI takes the gt box it overlaps most. IoU >= ``fg_iou`` (0.5) → the
   gt's class label (foreground); IoU in ``[bg_iou_low, fg_iou)`` → 0 (background); IoU below
   ``bg_iou_low`` → dropped (label -1). Fast R-CNN used ``bg_iou_low = 0.1`` (hard-ish negatives);
   torchvision / Detectron use 0.
3. **Sample** ``batch_size_per_image`` RoIs with at most ``positive_fraction`` (25 %) foreground,
   the rest background (fewer when there are not enough). Sampling uses a NumPy ``Generator``, so a
   reseeded generator reproduces it exactly (the whole-loss gradient check relies on this).
4. **Box regression targets** for every sampled RoI: ``encode_boxes(gt, roi, weights=(10,10,5,5))``
   (only the foreground ones are used by the loss).
5. **Mask targets** for the foreground RoIs: the matched gt mask cropped to the RoI and resized to
   M×M (:func:`mrcnn_ref.data.masks.mask_targets_for_rois`).

An image without ground truth gives only background RoIs and an empty (0, M, M) mask target.
The sampled RoIs are returned foreground first, then background.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, check_positive_int
from ..backend import asnumpy, get_array_module
from ..boxes import box_iou, encode_boxes
from ..data.masks import mask_targets_for_rois

__all__ = ["match_proposals", "sample_rois", "proposal_targets"]


def match_proposals(proposals, gt_boxes, gt_labels, fg_iou: float = 0.5, bg_iou_low: float = 0.0):
    """Label every proposal by its best-overlapping gt box.

    proposals: (P, 4); gt_boxes: (G, 4); gt_labels: (G,) int in 1..K-1.
    Returns ``(labels (P,) int64, matched_gt (P,) int64, max_iou (P,))``: labels are the gt class
    (IoU >= fg_iou), 0 (bg_iou_low <= IoU < fg_iou) or -1 (IoU < bg_iou_low, ignored).
    With G == 0 every proposal is background with matched_gt 0 and IoU 0.
    """

    xp = get_array_module(proposals)
    p, g = proposals.shape[0], gt_boxes.shape[0]
    if g == 0:
        return (xp.zeros(p, dtype=xp.int64), xp.zeros(p, dtype=xp.int64),
                xp.zeros(p, dtype=proposals.dtype))
    iou = box_iou(proposals, gt_boxes)                   # (P, G)
    matched = xp.argmax(iou, axis=1).astype(xp.int64)
    max_iou = iou[xp.arange(p), matched]
    labels = gt_labels.astype(xp.int64)[matched]
    labels = xp.where(max_iou >= fg_iou, labels, 0)
    labels = xp.where(max_iou < bg_iou_low, -1, labels)
    return labels, matched, max_iou


def sample_rois(labels, batch_size_per_image: int, positive_fraction: float, rng):
    """Sample foreground (label > 0) and background (label == 0) indices; -1 is never sampled.

    Up to ``int(batch_size_per_image * positive_fraction)`` foreground, then background to fill
    the batch. Returns ``(fg_idx, bg_idx)`` as int64 arrays of the labels' array module.
    """
    xp = get_array_module(labels)
    lab = asnumpy(labels)
    fg = np.nonzero(lab > 0)[0]
    bg = np.nonzero(lab == 0)[0]
    n_fg = min(int(batch_size_per_image * positive_fraction), fg.size)
    n_bg = min(batch_size_per_image - n_fg, bg.size)
    fg = fg[rng.permutation(fg.size)[:n_fg]]
    bg = bg[rng.permutation(bg.size)[:n_bg]]
    return xp.asarray(fg, dtype=xp.int64), xp.asarray(bg, dtype=xp.int64)


def proposal_targets(proposals, gt_boxes, gt_labels, gt_masks=None, *, rng,
                     batch_size_per_image: int = 128, positive_fraction: float = 0.25,
                     fg_iou: float = 0.5, bg_iou_low: float = 0.0,
                     box_weights=(10.0, 10.0, 5.0, 5.0), mask_size: int = 28,
                     add_gt_as_proposals: bool = True):
    """Training targets of the box and mask heads for one image.

    proposals: (P, 4) RPN proposals (no gradient flows into them); gt_boxes: (G, 4);
    gt_labels: (G,) int in 1..K-1; gt_masks: (G, H, W) bool/uint8 or None (no mask targets);
    rng: ``numpy.random.Generator`` for the sampling.

    Returns a dict:
      ``rois`` (S, 4) sampled RoIs (foreground first), ``labels`` (S,) int64 (0 = background),
      ``regression_targets`` (S, 4) encoded deltas to the matched gt (meaningful for fg only),
      ``matched_gt`` (S,) int64, ``num_fg`` int, ``mask_targets`` (num_fg, M, M) in {0, 1}
      (None when gt_masks is None).
    """

    where = "proposal_targets"
    check_array(proposals, "proposals", where, shape=(None, 4), floating=True)
    check_array(gt_boxes, "gt_boxes", where, shape=(None, 4))
    check_array(gt_labels, "gt_labels", where, ndim=1)
    if gt_labels.shape[0] != gt_boxes.shape[0]:
        raise ValueError(f"{where}: gt_labels ({gt_labels.shape[0]}) and gt_boxes "
                         f"({gt_boxes.shape[0]}) must have the same length")
    if gt_masks is not None:
        check_array(gt_masks, "gt_masks", where, ndim=3)
        if gt_masks.shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"{where}: gt_masks ({gt_masks.shape[0]}) and gt_boxes "
                             f"({gt_boxes.shape[0]}) must have the same length")
    check_positive_int(batch_size_per_image, "batch_size_per_image", where)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"{where}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    xp = get_array_module(proposals)
    dtype = proposals.dtype
    gt_boxes = gt_boxes.astype(dtype, copy=False)
    if add_gt_as_proposals and gt_boxes.shape[0] > 0:
        proposals = xp.concatenate([proposals, gt_boxes], axis=0)

    labels, matched, _ = match_proposals(proposals, gt_boxes, gt_labels, fg_iou, bg_iou_low)
    fg_idx, bg_idx = sample_rois(labels, batch_size_per_image, positive_fraction, rng)
    keep = xp.concatenate([fg_idx, bg_idx])
    rois = proposals[keep]
    labels = labels[keep]
    labels[fg_idx.size:] = 0
    matched = matched[keep]
    if gt_boxes.shape[0] > 0:
        reg = encode_boxes(gt_boxes[matched], rois, weights=box_weights).astype(dtype, copy=False)
    else:
        reg = xp.zeros((rois.shape[0], 4), dtype=dtype)
    num_fg = int(fg_idx.size)
    mask_targets = None
    if gt_masks is not None:
        if num_fg > 0:
            mask_targets = mask_targets_for_rois(gt_masks, matched[:num_fg], rois[:num_fg],
                                                 M=mask_size).astype(dtype, copy=False)
        else:
            mask_targets = xp.zeros((0, mask_size, mask_size), dtype=dtype)
    return dict(rois=rois, labels=labels, regression_targets=reg, matched_gt=matched,
                num_fg=num_fg, mask_targets=mask_targets)
