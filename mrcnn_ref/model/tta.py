"""Inference-only refinements: horizontal-flip test-time augmentation and mask rescoring.

Neither changes training or the weights; both are switched on by config fields
(``test_flip``, ``mask_rescoring``; off by default, on in the ``shapes`` preset) and used by
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
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array
from ..backend import get_array_module

__all__ = ["average_flipped_box_outputs", "unflip_masks", "maskness"]

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
