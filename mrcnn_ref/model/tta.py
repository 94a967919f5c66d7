"""Inference-only refinements: horizontal-flip test-time augmentation, mask rescoring and
Matrix NMS.

None changes training or the weights; each is switched on by a config field (``test_flip``,
``mask_rescoring``, ``matrix_nms``; off by default, on in the ``shapes`` preset) and used by
:meth:`mrcnn_ref.model.mask_rcnn.MaskRCNN.predict`.

**Flip test-time augmentation.** The network is run a second time on the mirrored image
(``x' = w - x``; the model was trained with random horizontal flips, so it knows that view too).
For the *same* proposals, mirrored, the box head gives a second opinion:

* class probabilities are averaged, ``p = (p + p') / 2``;
* box deltas are averaged after moving the mirror's deltas back into the image's frame: a shift
  ``tx`` to the right in the mirror is a shift to the left here, so ``tx -> -tx``; ``ty``, ``tw``,
  ``th`` do not change.

Then the final boxes go through the mask head in both views and the ``M x M`` mask probabilities
are averaged (the mirror's mask flipped back along its columns). Detectron2 calls this
horizontal-flip TTA; it doubles the cost of inference.

**Mask rescoring** ("maskness", from SOLOv2, Wang et al. 2020). A detection's class score says how
sure the box head is of the class, not how good its mask is. Multiplying the score by the mean
probability of the pixels the mask keeps (``p >= threshold``) ranks confident, crisp masks above
hesitant ones — which is what mask AP rewards — at no training cost.

**Matrix NMS** (also SOLOv2). The box NMS keeps two detections whose *boxes* overlap less than
its threshold, even when their *masks* are nearly the same object — a duplicate, or the same
object called two classes. Matrix NMS does not delete anything: it lowers each detection's score
by how much its mask overlaps the masks of higher-scored detections, all pairs at once. With the
detections sorted by score and ``iou[i, j]`` the mask IoU of ``i`` (higher) and ``j`` (lower),

    decay_j = min over i < j of  exp(-sigma * (iou[i, j]**2 - comp_i**2)),
    comp_i  = max over k < i of  iou[k, i]          (how much i is itself overlapped),

so a detection overlapped by one that is itself a duplicate is decayed less. The top detection
keeps its score (decay 1), and every decay is in (0, 1]. SOLOv2 compares masks of one class only
(``per_class``); in the shapes data, where occluded parts are cut out of the masks, the visible
masks of two objects never overlap, so a large mask IoU between *any* two detections means one of
them is wrong (``all_classes``).
"""
from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_array
from ..backend import get_array_module
from ..evaluate import mask_iou

__all__ = ["average_flipped_box_outputs", "unflip_masks", "maskness", "matrix_nms_decay"]

# Boxes go into the mirror and back with mrcnn_ref.boxes.hflip_boxes (the flip augmentation's).


def average_flipped_box_outputs(class_logits, box_deltas, class_logits_mirror, box_deltas_mirror):
    """Combine the box head's outputs for proposals and for the same proposals in the mirror.

    class_logits, class_logits_mirror: (P, K); box_deltas, box_deltas_mirror: (P, 4K).
    Returns ``(class_logits, box_deltas)`` ready for
    :func:`~mrcnn_ref.model.roi_heads.postprocess_detections`: the logits are ``log`` of the
    averaged softmax probabilities (their softmax *is* that average, since it sums to 1), the
    deltas the mean of the two with the mirror's ``tx`` negated.
    """
    from ..ops.losses import log_softmax  # noqa: PLC0415

    where = "average_flipped_box_outputs"
    check_array(class_logits, "class_logits", where, ndim=2)
    check_array(box_deltas, "box_deltas", where, ndim=2)
    p, k = class_logits.shape
    if class_logits_mirror.shape != (p, k):
        raise ValueError(f"{where}: class_logits_mirror must have shape {(p, k)}, got "
                         f"{tuple(class_logits_mirror.shape)}")
    if box_deltas.shape != (p, 4 * k) or box_deltas_mirror.shape != (p, 4 * k):
        raise ValueError(f"{where}: box deltas must have shape {(p, 4 * k)}, got "
                         f"{tuple(box_deltas.shape)} and {tuple(box_deltas_mirror.shape)}")
    xp = get_array_module(class_logits)
    probs = 0.5 * (xp.exp(log_softmax(class_logits, axis=1))
                   + xp.exp(log_softmax(class_logits_mirror, axis=1)))
    tiny = np.finfo(probs.dtype).tiny
    logits = xp.log(xp.maximum(probs, tiny))
    mirrored = box_deltas_mirror.reshape(p, k, 4).copy()
    mirrored[:, :, 0] *= -1                                   # tx: right in the mirror = left here
    deltas = 0.5 * (box_deltas.reshape(p, k, 4) + mirrored)
    return logits, deltas.reshape(p, 4 * k)


def unflip_masks(mask_probs_mirror):
    """``(R, M, M)`` mask probabilities predicted for mirrored boxes, in the image's frame: the
    mask grid of a mirrored box is the original's with its columns reversed."""
    check_array(mask_probs_mirror, "mask_probs_mirror", "unflip_masks", ndim=3)
    return mask_probs_mirror[:, :, ::-1]


def maskness(mask_probs, threshold=0.5):
    """Mean probability of the pixels each mask keeps (``p >= threshold``); 0 for an empty mask.

    mask_probs: (R, M, M) in [0, 1]. Returns (R,) in [threshold, 1] (0 for an empty mask).
    """
    check_array(mask_probs, "mask_probs", "maskness", ndim=3)
    xp = get_array_module(mask_probs)
    keep = mask_probs >= threshold
    n = keep.sum(axis=(1, 2))
    total = xp.where(keep, mask_probs, 0).sum(axis=(1, 2))
    return xp.where(n > 0, total / xp.maximum(n, 1), 0).astype(mask_probs.dtype)


def matrix_nms_decay(masks, scores, labels=None, sigma=2.0):
    """SOLOv2's Matrix NMS (Gaussian kernel): the factor (D,) to multiply each score by.

    masks: (D, H, W) bool; scores: (D,) sorted in decreasing order (as ``predict`` returns them);
    labels: (D,) class ids to decay only within a class, or None to compare all detections.
    sigma > 0: larger decays overlapping detections more (SOLOv2's default 2.0). Returns factors
    in (0, 1]; the first detection's is 1. See the module docstring for the formula. The mask
    IoUs are :func:`mrcnn_ref.evaluate.mask_iou`'s, the COCO evaluation's own.
    """
    where = "matrix_nms_decay"
    check_array(masks, "masks", where, ndim=3)
    xp = get_array_module(masks)
    d = masks.shape[0]
    if scores.shape != (d,):
        raise ValueError(f"{where}: scores must have shape ({d},) to match masks, got {tuple(scores.shape)}")
    if labels is not None and labels.shape != (d,):
        raise ValueError(f"{where}: labels must have shape ({d},) to match masks, got {tuple(labels.shape)}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"{where}: sigma must be a number > 0, got {sigma!r}")
    if d > 1 and bool(xp.any(scores[1:] > scores[:-1])):
        raise ValueError(f"{where}: scores must be sorted in decreasing order")
    if d == 0:
        return xp.ones(0, dtype=xp.float64)
    iou = xp.triu(mask_iou(masks, masks), k=1)            # iou[i, j] for i < j (i scores higher)
    if labels is not None:
        iou = iou * (labels[:, None] == labels[None, :])
    comp = iou.max(axis=0)                                # comp_i = max over k < i of iou[k, i]
    factors = xp.exp(-sigma * (iou ** 2 - comp[:, None] ** 2))
    above = xp.triu(xp.ones((d, d), dtype=bool), k=1)     # only higher-scored detections decay j
    decay = xp.where(above, factors, xp.inf).min(axis=0)
    decay[0] = 1.0                                        # (entry (0, j) has comp_0 = 0: decay <= 1)
    return decay
