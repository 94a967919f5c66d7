"""The second stage: box head (classification + class-specific box regression) and mask head.

Box head (Fast R-CNN with FPN's "2fc" head)::

    RoI features (R, C, 7, 7) → flatten → FC(D) → ReLU → FC(D) → ReLU ─┬→ FC(K)   class logits
                                                                         └→ FC(4K)  deltas per class

Mask head (Mask R-CNN, FPN variant, fewer convs in our presets)::

    RoI features (R, C, 14, 14) → [3×3 conv → ReLU] × n → 2×2 deconv, stride 2 → ReLU → 1×1 conv
    → (R, K, 28, 28) mask logits, one mask per class

Losses (for the sampled RoIs S of an image, foreground first):

* ``loss_classifier`` — softmax cross-entropy, mean over S;
* ``loss_box_reg`` — smooth L1 (beta 1/9) between the *ground-truth class's* 4 deltas and the
  targets, summed over the foreground RoIs and divided by |S| (torchvision's normalisation);
* ``loss_mask`` — per-pixel sigmoid BCE on the gt class's mask channel, mean over the foreground
  RoIs' pixels (or the softmax-over-classes ablation).

Inference (:func:`postprocess_detections`): softmax scores, class-specific decode with weights
(10, 10, 5, 5), clip, drop scores < 0.05 and tiny boxes, NMS 0.5 per class, keep the top 100.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..boxes import clip_boxes, decode_boxes, remove_small_boxes
from ..nms import batched_nms
from ..nn.layers import Conv2d, ConvTranspose2d, Flatten, Linear, ReLU
from ..nn.module import Sequential
from ..ops import losses
from ..ops.losses import (log_softmax, smooth_l1_backward, smooth_l1_forward, softmax_cross_entropy_backward,
                          softmax_cross_entropy_forward)
from ..nn.module import Module

__all__ = ["BoxHead", "MaskHead", "box_loss_forward", "box_loss_backward", "mask_head_loss_forward",
           "mask_head_loss_backward", "postprocess_detections"]


class BoxHead(Module):
    """Two shared FC layers and the two sibling predictors.

    in_channels C, roi_size s (7), hidden_dim D, num_classes K (with background).
    ``forward(x (R, C, s, s)) -> (class_logits (R, K), box_deltas (R, 4K))``;
    ``backward(d_class_logits, d_box_deltas) -> dx (R, C, s, s)``.
    Predictor init: N(0, 0.01²) for the classifier, N(0, 0.001²) for the box regressor.
    """

    def __init__(self, in_channels, roi_size, hidden_dim, num_classes, rng=None, dtype=np.float32):
        super().__init__()

        self.num_classes = int(num_classes)
        self.fcs = Sequential(Flatten(),
                              Linear(in_channels * roi_size * roi_size, hidden_dim, rng=rng, dtype=dtype),
                              ReLU(),
                              Linear(hidden_dim, hidden_dim, rng=rng, dtype=dtype),
                              ReLU())
        self.cls_score = Linear(hidden_dim, num_classes, rng=rng, dtype=dtype, init_std=0.01)
        self.bbox_pred = Linear(hidden_dim, 4 * num_classes, rng=rng, dtype=dtype, init_std=0.001)

    def forward(self, x):
        h = self.fcs(x)
        return self.cls_score(h), self.bbox_pred(h)

    def backward(self, d_class_logits, d_box_deltas):
        dh = self.bbox_pred.backward(d_box_deltas)      # reverse order of the forward
        dh = dh + self.cls_score.backward(d_class_logits)
        return self.fcs.backward(dh)


class MaskHead(Module):
    """``num_convs`` 3×3 convs (+ReLU), a 2×2 stride-2 transposed conv (+ReLU), a 1×1 conv to K.

    ``forward(x (R, C, m, m)) -> (R, K, 2m, 2m)`` logits; ``backward(d_logits) -> dx``.
    """

    def __init__(self, in_channels, num_convs, channels, num_classes, rng=None, dtype=np.float32):
        super().__init__()

        layers, c = [], in_channels
        for _ in range(num_convs):
            layers += [Conv2d(c, channels, 3, padding=1, rng=rng, dtype=dtype), ReLU()]
            c = channels
        layers += [ConvTranspose2d(c, channels, 2, stride=2, rng=rng, dtype=dtype), ReLU(),
                   Conv2d(channels, num_classes, 1, rng=rng, dtype=dtype)]
        self.layers = Sequential(*layers)

    def forward(self, x):
        return self.layers(x)

    def backward(self, d_logits):
        return self.layers.backward(d_logits)


def box_loss_forward(class_logits, box_deltas, labels, regression_targets, beta=1.0 / 9.0):
    """Fast R-CNN losses of the sampled RoIs.

    class_logits: (S, K); box_deltas: (S, 4K); labels: (S,) int (0 = background);
    regression_targets: (S, 4) (rows of background RoIs are ignored).
    Returns ``((loss_classifier, loss_box_reg), cache)``:
    ``loss_classifier = mean_S CE``; ``loss_box_reg = sum_{fg} smoothL1(deltas[gt class]) / S``.
    """

    xp = get_array_module(class_logits)
    s = class_logits.shape[0]
    l_cls, c_cls = softmax_cross_entropy_forward(class_logits, labels, reduction="mean")
    fg = xp.nonzero(labels > 0)[0]
    cols = 4 * labels[fg][:, None] + xp.arange(4)[None, :]      # (F, 4) gt class's 4 columns
    pred = box_deltas[fg[:, None], cols]
    l_box, c_box = smooth_l1_forward(pred, regression_targets[fg].astype(box_deltas.dtype),
                                     beta=beta, reduction="sum", normalizer=max(s, 1))
    return (l_cls, l_box), (c_cls, c_box, fg, cols, box_deltas.shape, box_deltas.dtype, xp)


def box_loss_backward(d_cls_loss, d_box_loss, cache):
    """Gradients w.r.t. class_logits (S, K) and box_deltas (S, 4K)."""

    c_cls, c_box, fg, cols, dshape, dtype, xp = cache
    d_logits = softmax_cross_entropy_backward(d_cls_loss, c_cls)
    d_deltas = xp.zeros(dshape, dtype=dtype)
    d_deltas[fg[:, None], cols] = smooth_l1_backward(d_box_loss, c_box)   # (row, col) pairs unique
    return d_logits, d_deltas


def mask_head_loss_forward(mask_logits, labels, mask_targets, kind="sigmoid"):
    """Mask loss on the foreground RoIs: ``kind`` "sigmoid" (per-class BCE, the paper) or
    "softmax" (per-pixel softmax over classes). mask_logits (F, K, M, M); labels (F,) in 1..K-1;
    mask_targets (F, M, M). Returns ``(loss, cache)``."""

    if kind == "sigmoid":
        loss, cache = losses.mask_loss_forward(mask_logits, labels, mask_targets)
    elif kind == "softmax":
        loss, cache = losses.mask_loss_softmax_forward(mask_logits, labels, mask_targets)
    else:
        raise ValueError(f"mask_head_loss_forward: kind must be 'sigmoid' or 'softmax', got {kind!r}")
    return loss, (kind, cache)


def mask_head_loss_backward(d_loss, cache):

    kind, c = cache
    if kind == "sigmoid":
        return losses.mask_loss_backward(d_loss, c)
    return losses.mask_loss_softmax_backward(d_loss, c)


def postprocess_detections(class_logits, box_deltas, proposals, image_size, *, score_thresh=0.05,
                           nms_thresh=0.5, detections_per_img=100, box_weights=(10.0, 10.0, 5.0, 5.0),
                           min_size=1e-2):
    """Detections of one image from the box head's outputs.

    class_logits: (P, K); box_deltas: (P, 4K); proposals: (P, 4); image_size: (h, w).
    Every (proposal, foreground class) pair is a candidate box with score softmax[class]; the
    candidates go through: score > score_thresh, width and height >= min_size, NMS per class,
    top ``detections_per_img`` by score.
    Returns ``(boxes (D, 4), scores (D,), labels (D,) int64 in 1..K-1)``.
    """

    xp = get_array_module(class_logits)
    p, k = class_logits.shape
    scores = xp.exp(log_softmax(class_logits, axis=1))                   # (P, K)
    boxes = decode_boxes(box_deltas, proposals.astype(box_deltas.dtype), weights=box_weights)
    boxes = clip_boxes(boxes.reshape(p * k, 4), (float(image_size[0]), float(image_size[1])))
    boxes = boxes.reshape(p, k, 4)[:, 1:].reshape(-1, 4)                 # drop background
    labels = xp.broadcast_to(xp.arange(1, k, dtype=xp.int64)[None, :], (p, k - 1)).reshape(-1)
    scores = scores[:, 1:].reshape(-1)
    keep = xp.nonzero(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, min_size)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh, max_keep=int(detections_per_img))
    return boxes[keep], scores[keep], labels[keep]
