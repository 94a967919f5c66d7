"""Region Proposal Network (Faster R-CNN, Ren et al. 2015) on an FPN pyramid.

Three parts:

* :class:`RPNHead` — a small conv net slid over every pyramid level with the SAME weights: a 3×3
  conv (+ ReLU) followed by two sibling 1×1 convs, one giving A objectness logits and one giving
  4A box deltas per position (A anchors per position: one size per level × the aspect ratios).
  Weight sharing is plain: the layers' cache stacks remember every level's forward, and
  :meth:`RPNHead.backward` pops them in reverse level order; the shared weights' gradients add up.
* :func:`rpn_targets` / :func:`rpn_loss_forward` — label anchors (IoU >= 0.7 positive, < 0.3
  negative, each gt's best anchor positive), sample 256 per image (half positive at most), and
  score them: binary cross-entropy over the sampled anchors, smooth L1 on the positives' deltas.
  Both terms are divided by the number of sampled anchors, as torchvision does. The smooth-L1
  ``beta`` is 1/9 (torchvision's RPN) by default; ``rpn_smooth_l1_beta`` in the config changes it.
* :func:`generate_proposals` — decode the deltas at the anchors, clip to the image, drop tiny
  boxes, keep the top-k per level, NMS (0.7) within each level, keep the top-k per image. No
  gradient flows through the proposals (Mask R-CNN trains the two stages "approximately jointly").

Layouts. Level ``l`` of the head outputs objectness (N, A, H, W) and deltas (N, 4A, H, W). Anchors
are ordered (y, x, a) (:func:`mrcnn_ref.anchors.grid_anchors`), so the outputs are flattened the same
way: objectness → (N, H·W·A) and deltas (N, A, 4, H, W) → (N, H·W·A, 4). Concatenating the levels
gives one row per anchor of the whole pyramid.
"""
from __future__ import annotations

import numpy as np

from ..backend import asnumpy, get_array_module, top_k_descending
from ..anchors import generate_anchors, grid_anchors, label_anchors, sample_labels
from ..boxes import clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from ..nms import batched_nms
from ..nn.layers import Conv2d, ReLU
from ..ops.losses import (bce_with_logits_backward, bce_with_logits_forward, smooth_l1_backward,
                          smooth_l1_forward)
from ..nn.module import Module

__all__ = ["RPNHead", "flatten_rpn_outputs", "unflatten_rpn_grads", "pyramid_level_anchors",
           "rpn_targets", "rpn_loss_forward", "rpn_loss_backward", "generate_proposals"]


class RPNHead(Module):
    """Shared RPN head: conv3×3(C→C) + ReLU, then conv1×1(C→A) objectness and conv1×1(C→4A) deltas.

    Weights are N(0, 0.01²), biases 0 (as Faster R-CNN / torchvision).

    ``forward(features)`` takes the list of pyramid maps ``[(N, C, H_l, W_l)]`` and returns
    ``(objectness list [(N, A, H_l, W_l)], deltas list [(N, 4A, H_l, W_l)])``;
    ``backward(d_objectness list, d_deltas list)`` returns the list of feature gradients.
    """

    def __init__(self, in_channels: int, num_anchors: int, rng=None, dtype=np.float32):
        super().__init__()

        self.num_anchors = int(num_anchors)
        self.conv = Conv2d(in_channels, in_channels, 3, padding=1, rng=rng, dtype=dtype, init_std=0.01)
        self.relu = ReLU()
        self.cls_logits = Conv2d(in_channels, num_anchors, 1, rng=rng, dtype=dtype, init_std=0.01)
        self.bbox_pred = Conv2d(in_channels, 4 * num_anchors, 1, rng=rng, dtype=dtype, init_std=0.01)
        self._levels_stack = []

    def forward(self, features):
        objectness, deltas = [], []
        for x in features:                       # the same layers on every level
            t = self.relu(self.conv(x))
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        self._levels_stack.append(len(features))
        return objectness, deltas

    __call__ = forward

    def backward(self, d_objectness, d_deltas):
        n_levels = self._levels_stack.pop()
        if len(d_objectness) != n_levels or len(d_deltas) != n_levels:
            raise ValueError(f"RPNHead.backward: expected {n_levels} gradients per output, got "
                             f"{len(d_objectness)} and {len(d_deltas)}")
        d_features = [None] * n_levels
        for lvl in reversed(range(n_levels)):   # reverse order of the forward calls (LIFO caches)
            dt = self.bbox_pred.backward(d_deltas[lvl])
            dt = dt + self.cls_logits.backward(d_objectness[lvl])
            dt = self.relu.backward(dt)
            d_features[lvl] = self.conv.backward(dt)
        return d_features

    def zero_grad(self):
        super().zero_grad()
        self._levels_stack.clear()


def flatten_rpn_outputs(objectness, deltas):
    """Concatenate the per-level head outputs in anchor order (level, y, x, a).

    objectness: list of (N, A, H, W); deltas: list of (N, 4A, H, W).
    Returns ``(obj (N, T), dlt (N, T, 4))`` with T = sum_l H_l W_l A.
    """
    xp = get_array_module(objectness[0])
    objs, dlts = [], []
    for o, d in zip(objectness, deltas):
        n, a, h, w = o.shape
        objs.append(o.transpose(0, 2, 3, 1).reshape(n, h * w * a))
        dlts.append(d.reshape(n, a, 4, h, w).transpose(0, 3, 4, 1, 2).reshape(n, h * w * a, 4))
    return xp.concatenate(objs, axis=1), xp.concatenate(dlts, axis=1)


def unflatten_rpn_grads(d_obj, d_dlt, shapes):
    """Inverse of :func:`flatten_rpn_outputs` for gradients.

    d_obj: (N, T); d_dlt: (N, T, 4); shapes: the objectness shapes [(N, A, H, W)] per level.
    Returns ``(list of (N, A, H, W), list of (N, 4A, H, W))``.
    """
    d_objs, d_dlts, start = [], [], 0
    for (n, a, h, w) in shapes:
        stop = start + h * w * a
        d_objs.append(d_obj[:, start:stop].reshape(n, h, w, a).transpose(0, 3, 1, 2))
        d_dlts.append(d_dlt[:, start:stop].reshape(n, h, w, a, 4).transpose(0, 3, 4, 1, 2)
                      .reshape(n, 4 * a, h, w))
        start = stop
    return d_objs, d_dlts


def pyramid_level_anchors(feature_shapes, strides, sizes, ratios, dtype=np.float32, xp=np, scales=(1.0,)):
    """Anchors of every level, ordered (y, x, a) within a level, levels concatenated.

    feature_shapes: [(H_l, W_l)]; strides: [s_l]; sizes: one base anchor size per level; ratios:
    h/w; scales: multipliers of the level's size (FPN uses one; RetinaNet three per octave,
    1, 2^(1/3), 2^(2/3)), so A = len(ratios) * len(scales) anchors per location.
    Returns ``(anchors (T, 4), level_of_anchor (T,) int64, counts per level list)``.
    """

    all_anchors, level_ids, counts = [], [], []
    for lvl, ((h, w), stride, size) in enumerate(zip(feature_shapes, strides, sizes)):
        level_sizes = tuple(float(size) * float(sc) for sc in scales)
        base = generate_anchors(level_sizes, tuple(ratios), dtype=dtype, xp=xp)  # (A, 4) centred at 0
        a = grid_anchors(base, (int(h), int(w)), stride)                      # (h*w*A, 4), (y, x, a)
        all_anchors.append(a)
        level_ids.append(xp.full(a.shape[0], lvl, dtype=xp.int64))
        counts.append(a.shape[0])
    return xp.concatenate(all_anchors, axis=0), xp.concatenate(level_ids), counts


def rpn_targets(anchors, gt_boxes, *, rng, fg_iou=0.7, bg_iou=0.3, batch_size=256,
                positive_fraction=0.5):
    """Sampled anchors and their targets for one image.

    anchors: (T, 4); gt_boxes: (G, 4) (G may be 0: then every sampled anchor is negative).
    Returns a dict: ``sampled`` (S,) anchor indices (positives first), ``labels`` (S,) float 1/0,
    ``num_pos`` int, ``regression_targets`` (num_pos, 4) (weights (1, 1, 1, 1)).
    """

    xp = get_array_module(anchors)
    gt_boxes = gt_boxes.astype(anchors.dtype, copy=False)
    labels, matched = label_anchors(anchors, gt_boxes, pos_iou=fg_iou, neg_iou=bg_iou)
    # the sampling draws from a host generator: the labels are read once and sampled there
    lab = sample_labels(asnumpy(labels), batch_size=batch_size, positive_fraction=positive_fraction,
                        rng=rng)
    pos = np.nonzero(lab == 1)[0]
    neg = np.nonzero(lab == 0)[0]
    sampled = xp.asarray(np.concatenate([pos, neg]), dtype=xp.int64)
    pos_x = xp.asarray(pos, dtype=xp.int64)
    if pos.size:
        reg = encode_boxes(gt_boxes[xp.asarray(matched)[pos_x]], anchors[pos_x]).astype(anchors.dtype)
    else:
        reg = xp.zeros((0, 4), dtype=anchors.dtype)
    tgt = xp.zeros(sampled.shape[0], dtype=anchors.dtype)
    tgt[:pos.size] = 1
    return dict(sampled=sampled, labels=tgt, num_pos=int(pos.size), regression_targets=reg)


def rpn_loss_forward(objectness, deltas, targets, beta=1.0 / 9.0):
    """RPN losses of one image.

    objectness: (T,) logits; deltas: (T, 4); targets: from :func:`rpn_targets`.
    ``loss_objectness = sum_sampled BCE / S``, ``loss_rpn_box = sum_pos smoothL1 / S`` with S the
    number of sampled anchors (torchvision's normalisation). Returns
    ``((loss_objectness, loss_rpn_box), cache)``.
    """

    xp = get_array_module(objectness)
    sampled, num_pos = targets["sampled"], targets["num_pos"]
    s = max(int(sampled.shape[0]), 1)
    l_obj, c_obj = bce_with_logits_forward(objectness[sampled], targets["labels"], reduction="sum",
                                           normalizer=s)
    pos = sampled[:num_pos]
    l_box, c_box = smooth_l1_forward(deltas[pos], targets["regression_targets"], beta=beta,
                                     reduction="sum", normalizer=s)
    return (l_obj, l_box), (sampled, pos, c_obj, c_box, objectness.shape, deltas.shape,
                            objectness.dtype, xp)


def rpn_loss_backward(d_obj_loss, d_box_loss, cache):
    """Gradients of the two RPN losses w.r.t. objectness (T,) and deltas (T, 4)."""

    sampled, pos, c_obj, c_box, oshape, dshape, dtype, xp = cache
    d_obj = xp.zeros(oshape, dtype=dtype)
    d_dlt = xp.zeros(dshape, dtype=dtype)
    d_obj[sampled] = bce_with_logits_backward(d_obj_loss, c_obj)    # indices are unique
    d_dlt[pos] = smooth_l1_backward(d_box_loss, c_box)
    return d_obj, d_dlt


def generate_proposals(objectness, deltas, anchors, level_counts, image_size, *, pre_nms_top_n,
                       post_nms_top_n, nms_thresh=0.7, min_size=1e-3):
    """Proposals of one image (no gradient).

    objectness: (T,) logits; deltas: (T, 4); anchors: (T, 4); level_counts: anchors per level;
    image_size: (h, w) of the unpadded image (boxes are clipped to it).
    Per level: top ``pre_nms_top_n`` by score; then decode, clip, remove boxes smaller than
    ``min_size``; NMS at ``nms_thresh`` within each level (batched_nms with the level as category);
    keep the best ``post_nms_top_n`` overall. Returns ``(boxes (P, 4), scores (P,) logits)``.
    """

    xp = get_array_module(objectness)
    idx_all, lvl_all, start = [], [], 0
    for lvl, n in enumerate(level_counts):
        scores = objectness[start:start + n]
        k = min(int(pre_nms_top_n), n)
        top = top_k_descending(scores, k)
        idx_all.append(top + start)
        lvl_all.append(xp.full(k, lvl, dtype=xp.int64))
        start += n
    idx = xp.concatenate(idx_all)
    lvl = xp.concatenate(lvl_all)
    boxes = decode_boxes(deltas[idx], anchors[idx])
    boxes = clip_boxes(boxes, (float(image_size[0]), float(image_size[1])))
    scores = objectness[idx]
    keep = remove_small_boxes(boxes, min_size)
    boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
    # the best post_nms_top_n kept boxes = NMS followed by [:post_nms_top_n], with an early exit
    keep = batched_nms(boxes, scores, lvl, nms_thresh, max_keep=int(post_nms_top_n))
    return boxes[keep], scores[keep]
