# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 07 — The Region Proposal Network and its proposals
#
# Chapter 02 laid anchors over the image and labelled them; chapter 06 built the feature pyramid
# P2..P6. The **Region Proposal Network** (RPN) joins the two: a small convolutional head slides
# over every pyramid level and, for every anchor, says *how likely it covers an object* and *how to
# move it onto the object*. The best few hundred moved anchors, after non-maximum suppression, are
# the **proposals** the second stage (RoIAlign + box and mask heads) looks at.
#
# In Faster R-CNN (Ren et al. 2015) the RPN sits on a single VGG feature map: a 3×3 conv with 512
# channels first mixes each position with its 3×3 neighbourhood, then a 1×1 conv gives 18 numbers
# per position (9 anchors × 2 scores, object / background) and a sibling 1×1 conv gives 36
# (9 anchors × 4 box deltas). The proposals are the moved anchors, clipped to the image, with
# degenerate boxes dropped, thinned by NMS, the top 300 kept.
#
# Two things change with FPN (Mask R-CNN): the head is **shared** by all pyramid levels, and each
# level has anchors of **one** size (three ratios), so A = 3 anchors per position. (The shapes model
# refines this with three scales per level, 1, 2^(1/3), 2^(2/3), as RetinaNet does — A = 9 — because
# shapes objects of 10–60 px otherwise get a single positive anchor at IoU ≈ 0.5.) We also use one
# logit per anchor with a sigmoid instead of two scores with a softmax (they are equivalent: a
# two-way softmax of `(a, b)` is `sigmoid(a - b)`), as torchvision does.
#
# Plan: 1. the head and its weight sharing; 2. anchors per level and the output layout;
# 3. RPN targets; 4. RPN losses; 5. objectness maps of a trained model; 6. proposals before and
# after NMS; 7. proposal recall; 8. why no gradient flows through the proposals.

# %%
import inspect
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.boxes import box_iou, clip_boxes, decode_boxes, remove_small_boxes
from mrcnn_ref.data.transforms import to_model_input
from mrcnn_ref.model.mask_rcnn import PYRAMID_STRIDES, MaskRCNN
from mrcnn_ref.model.rpn import (RPNHead, flatten_rpn_outputs, generate_proposals,
                                 pyramid_level_anchors, rpn_loss_backward, rpn_loss_forward,
                                 rpn_targets, unflatten_rpn_grads)
from mrcnn_ref.nms import batched_nms
from mrcnn_ref.ops.losses import sigmoid
from mrcnn_ref.model_io import bundled_or_trained_model
from mrcnn_ref.run_config import build_dataset
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
LEVELS = ["P2", "P3", "P4", "P5", "P6"]
LEVEL_COLORS = plt.cm.plasma(np.linspace(0.0, 0.85, 5))


def draw_box(ax, b, color="r", lw=1.0, alpha=1.0, ls="-"):
    x1, y1, x2, y2 = (float(v) for v in b)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=lw,
                           alpha=alpha, ls=ls))


# %% [markdown]
# Where this chapter sits: the RPN reads the pyramid of chapter 06 and hands its proposals to
# RoIAlign (chapter 03) and the heads (chapter 08).

# %%
ax = draw_pipeline(highlight=["rpn", "proposals"])
ax.set_title("this chapter: the RPN and its proposals")
plt.show()

# %% [markdown]
# ## A trained model
#
# The pictures need an RPN that has learnt something. If the package ships the trained shapes
# checkpoint we use it; otherwise we train the `"tiny"` run (64×64 shapes images, a very small
# ResNet-FPN) for a short while right here. **In that case the pictures come from a briefly
# trained model**: the objectness maps are blurry and the recall is low. They look much better with
# the bundled checkpoint (`mrcnn_ref/checkpoints/shapes.npz`). Everything that is *checked* below
# holds for any model, trained or not.

# %%
model, run_cfg, source = bundled_or_trained_model(30 if SMOKE else 1500)
print("model:", source)
cfg = model.config
IMAGE_SIZE = run_cfg.train.image_size
val = build_dataset(run_cfg.train, "val", num_images=6 if SMOKE else 50)
print(f"model '{cfg.name}': {IMAGE_SIZE}x{IMAGE_SIZE} images, anchor sizes {cfg.anchor_sizes} on "
      f"P2..P6 (strides {PYRAMID_STRIDES}), scales {cfg.anchor_scales}, ratios {cfg.anchor_ratios}; "
      f"{len(val)} validation images")

# %% [markdown]
# ## 1. The RPN head, shared across the pyramid
#
# `RPNHead` is three convolutions: `conv` (3×3, C→C, + ReLU), then two siblings on its output,
# `cls_logits` (1×1, C→A) and `bbox_pred` (1×1, C→4A). All weights start as N(0, 0.01²), biases 0,
# as in the Faster R-CNN paper.

# %%
print(inspect.getsource(RPNHead))

# %% [markdown]
# **Weight sharing without an autograd.** `forward` simply calls the *same* three layer objects
# on P2, P3, …, P6. Every call of a layer pushes its cache (the input and whatever the backward
# needs) onto that layer's **cache stack**, so after one forward the 3×3 conv holds five caches,
# one per level. `backward` walks the levels in *reverse* order, so each `pop()` returns the cache
# of the matching level (last in, first out), and every layer *adds* the level's weight gradient
# to its `grads` — the gradient of a shared weight is the sum over the places it was used.
#
# Sharing means the head has the same number of parameters whatever the number of levels, and a
# pattern learnt on a large object at P5 (say, "a corner of a square") is immediately usable on a
# small object at P2: FPN's levels are built to carry features of the same meaning at every scale.

# %%
sample = val[0]
x = to_model_input(sample)[None]                     # (1, 3, H, W)
feats = model.backbone(x)                            # [P2..P6]
obj_levels, dlt_levels = model.rpn(feats)
print("cache stack lengths after one forward:",
      {name: len(getattr(model.rpn, name)._stack) for name in ("conv", "relu", "cls_logits", "bbox_pred")})
for name, f, o, d in zip(LEVELS, feats, obj_levels, dlt_levels):
    print(f"{name}: features {tuple(f.shape)} -> objectness {tuple(o.shape)}, deltas {tuple(d.shape)}")
model.zero_grad()                                    # we only looked: drop the caches

c, a = model.rpn.conv.in_ch, model.rpn.num_anchors
n_head = sum(v.size for v in model.rpn.named_parameters().values())
print(f"RPN head parameters: 9·C² + C + (C + 1)·A + (C + 1)·4A = {n_head:,} (C = {c}, A = {a}); "
      f"separate heads per level would need {5 * n_head:,}")

# %% [markdown]
# A small experiment makes the sharing concrete: the gradient of one forward/backward over three
# levels equals the sum of three separate one-level forward/backward passes (float64, random
# features and random upstream gradients).

# %%
rng = np.random.default_rng(0)
head = RPNHead(4, 3, rng=rng, dtype=np.float64)
levels = [rng.standard_normal((1, 4, s, s)) for s in (8, 4, 2)]
d_obj = [rng.standard_normal((1, 3, s, s)) for s in (8, 4, 2)]
d_dlt = [rng.standard_normal((1, 12, s, s)) for s in (8, 4, 2)]

head.zero_grad()
head(levels)
d_feats_joint = head.backward(d_obj, d_dlt)
joint = {k: v.copy() for k, v in head.named_grads().items()}

summed = {k: np.zeros_like(v) for k, v in joint.items()}
for lvl in range(3):
    head.zero_grad()
    head([levels[lvl]])
    d_feat = head.backward([d_obj[lvl]], [d_dlt[lvl]])[0]
    np.testing.assert_allclose(d_feat, d_feats_joint[lvl], rtol=1e-12, atol=1e-12)
    for k, v in head.named_grads().items():
        summed[k] += v
for k in joint:
    print(f"{k:18s} max |joint - sum of per-level| = {np.abs(joint[k] - summed[k]).max():.1e}")
    np.testing.assert_allclose(joint[k], summed[k], rtol=1e-12, atol=1e-12)

# %% [markdown]
# ## 2. Anchors per level and the layout of the outputs
#
# Each level `l` of stride `s_l` gets anchors of size `anchor_sizes[l]` (times each of
# `anchor_scales`) and the three ratios,
# at every position of its H_l × W_l grid (chapter 02), listed in the order (y, x, a).
# `flatten_rpn_outputs` turns the head's maps into the *same* order: objectness (N, A, H, W) →
# (N, H·W·A) and deltas (N, 4A, H, W) → (N, A, 4, H, W) → (N, H·W·A, 4); the levels are
# concatenated, so row `t` of the flattened outputs belongs to anchor `t` of the whole pyramid.

# %%
print(inspect.getsource(pyramid_level_anchors))
print(inspect.getsource(flatten_rpn_outputs))

# %%
feat_shapes = [tuple(f.shape[2:]) for f in feats]
anchors, anchor_level, counts = pyramid_level_anchors(feat_shapes, PYRAMID_STRIDES, cfg.anchor_sizes,
                                                      cfg.anchor_ratios, dtype=np.float32,
                                                      scales=cfg.anchor_scales)
obj_flat, dlt_flat = flatten_rpn_outputs(obj_levels, dlt_levels)     # (1, T), (1, T, 4)
print(f"{'level':5s} {'stride':>6s} {'grid':>7s} {'anchor size':>11s} {'anchors':>8s}")
for name, s, (h, w), size, n in zip(LEVELS, PYRAMID_STRIDES, feat_shapes, cfg.anchor_sizes, counts):
    print(f"{name:5s} {s:6d} {h:3d}x{w:<3d} {size:11d} {n:8d}")
print(f"total {len(anchors)} anchors; flattened objectness {obj_flat.shape}, deltas {dlt_flat.shape}")

# %% [markdown]
# The layouts must agree entry by entry: the logit the head wrote at level `l`, anchor `a`,
# position `(y, x)` must sit in row `start_l + (y·W_l + x)·A + a` of the flattened output, next to
# the anchor of that cell (with torchvision's offset 0 the anchor's centre is `(x·s_l, y·s_l)`).

# %%
starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
for lvl, (o, d) in enumerate(zip(obj_levels, dlt_levels)):
    _, A, H, W = o.shape
    yy, xx, aa = np.meshgrid(np.arange(H), np.arange(W), np.arange(A), indexing="ij")
    rows = starts[lvl] + (yy * W + xx) * A + aa
    assert np.array_equal(obj_flat[0, rows], o[0, aa, yy, xx])
    assert np.array_equal(dlt_flat[0, rows, 2], d[0, aa * 4 + 2, yy, xx])     # the tw channel
    centres = (anchors[rows, :2] + anchors[rows, 2:]) / 2
    np.testing.assert_allclose(centres[..., 0], xx * PYRAMID_STRIDES[lvl], atol=1e-4)
    np.testing.assert_allclose(centres[..., 1], yy * PYRAMID_STRIDES[lvl], atol=1e-4)
    assert np.all(anchor_level[rows] == lvl)
print("head outputs, flattened outputs and anchors line up on every level")

# %% [markdown]
# ## 3. RPN targets
#
# Training needs, for every image, a label per anchor and a regression target per positive
# anchor. `rpn_targets` is chapter 02's two steps: `label_anchors` (IoU ≥ 0.7 → positive, < 0.3 →
# negative, each object's best anchors positive too) and `sample_labels` (a mini-batch of
# `rpn_batch_size` anchors, at most half positive), then the targets `encode_boxes(gt, anchor)`.
# The positives come first in `sampled`, so the loss can pick them with `sampled[:num_pos]`.

# %%
print(inspect.getsource(rpn_targets))

# %%
gt = sample["boxes"].astype(np.float32)
targets = rpn_targets(anchors, gt, rng=np.random.default_rng(0), fg_iou=cfg.rpn_fg_iou,
                      bg_iou=cfg.rpn_bg_iou, batch_size=cfg.rpn_batch_size,
                      positive_fraction=cfg.rpn_positive_fraction)
pos = targets["sampled"][:targets["num_pos"]]
neg = targets["sampled"][targets["num_pos"]:]
print(f"{len(gt)} objects; sampled {len(targets['sampled'])} anchors: {targets['num_pos']} positive, "
      f"{len(neg)} negative")
print("positives per level:", {n: int((anchor_level[pos] == lvl).sum()) for lvl, n in enumerate(LEVELS)})
print("object sizes sqrt(w·h):", np.round(np.sqrt((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])), 1))

fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(sample["image"])
for i in pos:
    draw_box(ax, anchors[i], LEVEL_COLORS[anchor_level[i]], lw=1.2)
for b in gt:
    draw_box(ax, b, "white", lw=2, ls="--")
for lvl, n in enumerate(LEVELS):
    ax.plot([], [], color=LEVEL_COLORS[lvl], label=n)
ax.legend(loc="upper right", fontsize=8)
ax.set_xlim(-8, IMAGE_SIZE + 8), ax.set_ylim(IMAGE_SIZE + 8, -8)
ax.set_title("positive anchors coloured by level\n(ground truth dashed white)", fontsize=10)
plt.show()

# %% [markdown]
# Because each level has a single anchor size, the IoU rule alone spreads the objects over the
# pyramid: a 20-pixel shape matches the 16- or 32-pixel anchors, so it is learnt at P3 or P4, a
# large one at P5. No explicit "which level" rule is needed for the RPN (the RoI heads, by
# contrast, use the FPN paper's level formula to pick one level per RoI).
#
# ## 4. The RPN losses
#
# The Faster R-CNN paper writes the loss as
#
# $$ L(\{p_i\},\{t_i\}) = \frac{1}{N_{cls}}\sum_i L_{cls}(p_i, p_i^*) + \lambda\frac{1}{N_{reg}}\sum_i p_i^* L_{reg}(t_i, t_i^*) $$
#
# with $N_{cls}$ = 256 (the mini-batch), $N_{reg}$ ≈ 2400 (the number of anchor positions) and
# λ = 10, so both terms weigh about the same. We follow torchvision instead: binary cross-entropy
# over the sampled anchors and smooth L1 (β = 1/9) over the positive anchors' deltas, **both
# divided by the number of sampled anchors S**. Only sampled anchors enter the loss; all others get
# a zero gradient.

# %%
print(inspect.getsource(rpn_loss_forward))
print(inspect.getsource(rpn_loss_backward))

# %%
(l_obj, l_box), loss_cache = rpn_loss_forward(obj_flat[0], dlt_flat[0], targets, beta=cfg.rpn_smooth_l1_beta)
g_obj, g_dlt = rpn_loss_backward(1.0, 1.0, loss_cache)
print(f"loss_objectness = {float(l_obj):.4f}, loss_rpn_box_reg = {float(l_box):.4f}")
print(f"anchors with a non-zero objectness gradient: {np.count_nonzero(g_obj)} "
      f"(sampled: {len(targets['sampled'])}); with a non-zero delta gradient: "
      f"{np.count_nonzero(np.abs(g_dlt).sum(axis=1))} (positives: {targets['num_pos']})")

# a centred finite difference on one sampled positive anchor, in float64
o64, d64 = obj_flat[0].astype(np.float64), dlt_flat[0].astype(np.float64)
t64 = {**targets, "labels": targets["labels"].astype(np.float64),
       "regression_targets": targets["regression_targets"].astype(np.float64)}
(_, _), c64 = rpn_loss_forward(o64, d64, t64, beta=cfg.rpn_smooth_l1_beta)
go64, gd64 = rpn_loss_backward(1.0, 1.0, c64)
i_fd, eps = int(targets["sampled"][0]), 1e-6


def total_loss(o, d):
    (lo, lb), _ = rpn_loss_forward(o, d, t64, beta=cfg.rpn_smooth_l1_beta)
    return float(lo) + float(lb)


e_i = np.zeros_like(o64)
e_i[i_fd] = eps
num_obj = (total_loss(o64 + e_i, d64) - total_loss(o64 - e_i, d64)) / (2 * eps)
E_i = np.zeros_like(d64)
E_i[i_fd, 0] = eps
num_dlt = (total_loss(o64, d64 + E_i) - total_loss(o64, d64 - E_i)) / (2 * eps)
print(f"anchor {i_fd}: d/d logit analytic {go64[i_fd]:.8f} numeric {num_obj:.8f}; "
      f"d/d tx analytic {gd64[i_fd, 0]:.8f} numeric {num_dlt:.8f}")

# %% [markdown]
# ## 5. Objectness maps
#
# What does the (trained) RPN think is an object? For each level take the objectness logits of
# the flattened output, apply the sigmoid, reshape the level's slice back to its grid
# (H_l, W_l, A) and take the maximum over the A anchors of a position. Bright cells are positions
# where at least one anchor of that level's size is believed to cover an object: small shapes
# should light up on the fine levels, large ones on the coarse levels.

# %%
def rpn_outputs(sample):
    """Backbone + RPN head on one sample: (per-level objectness, flattened obj (T,), deltas (T, 4),
    anchors (T, 4), level of each anchor (T,), anchors per level, feature shapes)."""
    x = to_model_input(sample)[None]
    try:
        feats = model.backbone(x)
        obj_l, dlt_l = model.rpn(feats)
    finally:
        model.zero_grad()
    shapes = [tuple(f.shape[2:]) for f in feats]
    anc, lvl, cnt = pyramid_level_anchors(shapes, PYRAMID_STRIDES, cfg.anchor_sizes, cfg.anchor_ratios,
                                          scales=cfg.anchor_scales,
                                          dtype=np.float32)
    o, d = flatten_rpn_outputs(obj_l, dlt_l)
    return obj_l, o[0], d[0], anc, lvl, cnt, shapes


def objectness_maps(obj, counts, shapes):
    """sigmoid(logits) per level, reshaped to (H_l, W_l, A), max over the anchors -> (H_l, W_l)."""
    maps, start = [], 0
    for n, (h, w) in zip(counts, shapes):
        p = sigmoid(obj[start:start + n]).reshape(h, w, n // (h * w))
        maps.append(p.max(axis=2))
        start += n
    return maps


show = [val[i] for i in range(2 if SMOKE else 4)]
fig, axes = plt.subplots(len(show), 6, figsize=(15, 2.6 * len(show)), squeeze=False)
all_maps = []
for row, s in zip(axes, show):
    obj_l, o, d, anc, lvl, cnt, shapes = rpn_outputs(s)
    maps = objectness_maps(o, cnt, shapes)
    all_maps.append((maps, obj_l, shapes))
    row[0].imshow(s["image"])
    for b in s["boxes"]:
        draw_box(row[0], b, "white", lw=1.5, ls="--")
    row[0].set_title("image + ground truth", fontsize=9)
    for ax, name, m, size in zip(row[1:], LEVELS, maps, cfg.anchor_sizes):
        ax.imshow(m, cmap="magma", vmin=0, vmax=1)
        ax.set_title(f"{name} {m.shape[0]}x{m.shape[1]}, anchors {size}px\nmax p = {m.max():.2f}",
                     fontsize=9)
for ax in axes.ravel():
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Proposals: top-k per level, decode, clip, NMS
#
# `generate_proposals` turns the T scored anchors of one image into a few hundred boxes:
#
# 1. **per level**, keep the `pre_nms_top_n` anchors with the highest objectness (per level so
#    that the many P2 anchors do not crowd out the few coarse ones);
# 2. **decode** their deltas at their anchors (chapter 01's box coding), **clip** to the image,
#    drop boxes narrower or lower than `min_size`;
# 3. **NMS at 0.7 within each level** (`batched_nms` with the level as the category);
# 4. keep the `post_nms_top_n` best boxes of the whole image. NMS is told so (`max_keep`) and
#    stops as soon as it has kept that many: greedy NMS decides a box by the boxes scored above
#    it only, so the first K boxes it keeps are final — the result is exactly "NMS, then the
#    first K", for about a third of the work (the cell below checks the equality).

# %%
print(inspect.getsource(generate_proposals))

# %% [markdown]
# The set *before* NMS is not returned, so we rebuild it from the same building blocks
# (`argsort`, `decode_boxes`, `clip_boxes`, `remove_small_boxes`), then run `batched_nms` on it
# ourselves — the result must be exactly what `generate_proposals` returns.

# %%
def proposals_before_nms(obj, dlt, anchors, counts, image_size, pre_nms_top_n, min_size):
    """Steps 1-2 of generate_proposals: (boxes (M, 4), logits (M,), level (M,))."""
    idx, lvl, start = [], [], 0
    for level, n in enumerate(counts):
        top = np.argsort(-obj[start:start + n], kind="stable")[:min(pre_nms_top_n, n)]
        idx.append(top + start)
        lvl.append(np.full(len(top), level))
        start += n
    idx, lvl = np.concatenate(idx), np.concatenate(lvl)
    boxes = clip_boxes(decode_boxes(dlt[idx], anchors[idx]), image_size)
    keep = remove_small_boxes(boxes, min_size)
    return boxes[keep], obj[idx][keep], lvl[keep]


PRE, POST = cfg.rpn_pre_nms_top_n_test, cfg.rpn_post_nms_top_n_test
s = val[0]
h, w = s["image"].shape[:2]
_, o, d, anc, lvl_of_anchor, cnt, shapes = rpn_outputs(s)
props, prop_logits = generate_proposals(o, d, anc, cnt, (h, w), pre_nms_top_n=PRE, post_nms_top_n=POST,
                                        nms_thresh=cfg.rpn_nms_thresh, min_size=cfg.rpn_min_size)
b_all, s_all, l_all = proposals_before_nms(o, d, anc, cnt, (h, w), PRE, cfg.rpn_min_size)
keep_all = batched_nms(b_all, s_all, l_all, cfg.rpn_nms_thresh)       # every box NMS keeps
keep = keep_all[:POST]
assert np.array_equal(batched_nms(b_all, s_all, l_all, cfg.rpn_nms_thresh, max_keep=POST), keep)
print(f"pre_nms_top_n = {PRE} per level, post_nms_top_n = {POST}, NMS IoU {cfg.rpn_nms_thresh}")
print(f"{'level':5s} {'before NMS':>10s} {'after NMS':>10s} {'in top':>7s}")
for lvl, name in enumerate(LEVELS):
    print(f"{name:5s} {int((l_all == lvl).sum()):10d} {int((l_all[keep_all] == lvl).sum()):10d} "
          f"{int((l_all[keep] == lvl).sum()):7d}")
print("generate_proposals returned", len(props), "proposals")

# %%
DRAW = 150                                   # draw at most this many boxes (the best) per panel
by_score = np.argsort(-s_all, kind="stable")
fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
panels = [(by_score[:DRAW], f"before NMS: {len(b_all)} boxes (top {PRE} per level)\n"
           f"the best {min(DRAW, len(b_all))} drawn", 0.35),
          (keep_all[:DRAW], f"after NMS {cfg.rpn_nms_thresh} within each level: {len(keep_all)}\n"
           f"the best {min(DRAW, len(keep_all))} drawn", 0.6),
          (keep[:10], "the 10 best proposals, with sigmoid(logit)", 1.0)]
for ax, (sel, title, alpha) in zip(axes, panels):
    ax.imshow(s["image"])
    for j in sel[::-1]:                      # best drawn last (on top)
        draw_box(ax, b_all[j], LEVEL_COLORS[l_all[j]], lw=0.8 if alpha < 1 else 1.6, alpha=alpha)
    for b in s["boxes"]:
        draw_box(ax, b, "white", lw=2, ls="--")
    ax.set_xlim(-2, w + 2), ax.set_ylim(h + 2, -2)
    ax.set_title(title, fontsize=10)
for j in keep[:10]:
    axes[2].text(b_all[j, 0] + 1, b_all[j, 1] + 3, f"{float(sigmoid(s_all[j])):.2f}", color="yellow",
                 fontsize=7)
for lvl, name in enumerate(LEVELS):
    axes[0].plot([], [], color=LEVEL_COLORS[lvl], label=name)
axes[0].legend(loc="lower right", fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. How many proposals do we need? Recall
#
# The second stage can only find an object some proposal overlaps. The **recall** of the first
# N proposals is the fraction of ground-truth boxes that have a proposal with IoU ≥ a threshold
# among them. We use a larger budget here (1000 per level before NMS, 300 after) and read off the
# first N = 1, 5, 10, …, 300; for comparison, the dashed lines rank the *anchors themselves* by
# objectness (deltas set to zero) — what the box regression adds.
#
# `np.maximum.accumulate` over the (proposals × objects) IoU matrix gives, for every prefix of the
# sorted proposals, each object's best IoU so far, so every N is read from one matrix.

# %%
NS = [1, 5, 10, 20, 50, 100, 300]
THRESHOLDS = (0.5, 0.7)
n_recall_images = len(val)


def best_iou_by_prefix(boxes, gt, ns):
    """(len(ns), G): for each n, every object's best IoU among the first n boxes."""
    if len(boxes) == 0:
        return np.zeros((len(ns), len(gt)))
    best = np.maximum.accumulate(box_iou(boxes, gt), axis=0)     # (P, G)
    return best[[min(n, len(boxes)) - 1 for n in ns]]


best = {"proposals": [], "anchors": []}
for i in range(n_recall_images):
    s = val[i]
    h, w = s["image"].shape[:2]
    gt = s["boxes"].astype(np.float32)
    _, o, d, anc, _, cnt, _ = rpn_outputs(s)
    for kind, dd in (("proposals", d), ("anchors", np.zeros_like(d))):
        p, _ = generate_proposals(o, dd, anc, cnt, (h, w), pre_nms_top_n=1000, post_nms_top_n=max(NS),
                                  nms_thresh=cfg.rpn_nms_thresh, min_size=cfg.rpn_min_size)
        best[kind].append(best_iou_by_prefix(p, gt, NS))
recall = {(kind, t): (np.concatenate(best[kind], axis=1) >= t).mean(axis=1)
          for kind in best for t in THRESHOLDS}
n_gt = np.concatenate(best["proposals"], axis=1).shape[1]

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for t, color in zip(THRESHOLDS, ("tab:blue", "tab:red")):
    ax.plot(NS, recall[("proposals", t)], "o-", color=color, label=f"proposals, IoU ≥ {t}")
    ax.plot(NS, recall[("anchors", t)], "s--", color=color, alpha=0.6, label=f"anchors only, IoU ≥ {t}")
ax.set_xscale("log"), ax.set_xticks(NS), ax.set_xticklabels(NS)
ax.set_ylim(-0.02, 1.02), ax.grid(alpha=0.3), ax.legend(fontsize=8)
ax.set_xlabel("number of proposals kept (best first)"), ax.set_ylabel("recall")
ax.set_title(f"RPN recall over {n_recall_images} validation images ({n_gt} objects)", fontsize=10)
plt.show()
for t in THRESHOLDS:
    print(f"IoU ≥ {t}: " + ", ".join(f"N={n}: {r:.2f}" for n, r in zip(NS, recall[("proposals", t)])))

# %% [markdown]
# With a well-trained RPN and only a few objects per image, a handful of proposals already reaches
# most of them at IoU 0.5 (the briefly trained model needs more). The 0.7 curve is lower: a box
# must then fit tightly, which is where the regression (solid vs dashed) matters. On COCO the paper's RPN needs a few
# hundred to a thousand proposals per image for a high recall.
#
# ## 8. No gradient flows through the proposals
#
# The proposals are computed from the RPN's outputs (their coordinates are `decode_boxes` of the
# predicted deltas), and the box and mask losses depend on them — so, strictly, those losses have
# a gradient with respect to the RPN's deltas, through RoIAlign's dependence on the box
# coordinates. The Faster R-CNN paper (Sec. 3.2) lists three ways to train the two stages:
#
# * **alternating training** — four steps: train the RPN, train Fast R-CNN on its proposals,
#   re-train the RPN with the shared convs frozen, fine-tune Fast R-CNN (more rounds of the
#   cycle gave the paper negligible gains);
# * **approximate joint training** — one network, all losses summed, but the proposals are treated
#   as *constants*: the derivative with respect to the proposal coordinates is ignored. Simple, and
#   about as accurate while much faster to train;
# * **non-approximate joint training** — needs an RoI pooling that is differentiable with respect
#   to the box coordinates (the paper's "RoI warping"); rarely used.
#
# Mask R-CNN and torchvision (which detaches the proposals) use approximate joint training, and
# so do we: `generate_proposals` returns plain arrays and `MaskRCNN.backward` has no step that
# sends anything back through them. The RPN head gets gradient **only from the two RPN losses**;
# the box and mask losses reach the shared backbone, not the RPN head:

# %%
print(inspect.getsource(MaskRCNN.backward))

# %% [markdown]
# We can verify it: the RPN head's gradient after a full training forward/backward (all five
# losses) must equal the gradient of the two RPN losses alone, computed with the same sampled
# anchors (the sampling draws from the same fresh generator first in both cases).

# %%
s = val[0]
x = to_model_input(s)[None]
tgt = {"boxes": s["boxes"], "labels": s["labels"], "masks": s["masks"]}

model.zero_grad()
losses, total = model.forward_train(x, tgt, rng=np.random.default_rng(7))
model.backward()
full = {k: v.copy() for k, v in model.rpn.named_grads().items()}
backbone_full = {k: v.copy() for k, v in model.backbone.named_grads().items()}
print({k: round(v, 4) for k, v in losses.items()})

model.zero_grad()
feats = model.backbone(x)
obj_l, dlt_l = model.rpn(feats)
o, d = flatten_rpn_outputs(obj_l, dlt_l)
anc, _, cnt = pyramid_level_anchors([f.shape[2:] for f in feats], PYRAMID_STRIDES, cfg.anchor_sizes,
                                    cfg.anchor_ratios, dtype=np.float32, scales=cfg.anchor_scales)
t_rpn = rpn_targets(anc, s["boxes"].astype(np.float32), rng=np.random.default_rng(7), fg_iou=cfg.rpn_fg_iou,
                bg_iou=cfg.rpn_bg_iou, batch_size=cfg.rpn_batch_size,
                positive_fraction=cfg.rpn_positive_fraction)
_, c_rpn = rpn_loss_forward(o[0], d[0], t_rpn, beta=cfg.rpn_smooth_l1_beta)
g_o, g_d = rpn_loss_backward(1.0, 1.0, c_rpn)
model.rpn.backward(*unflatten_rpn_grads(g_o[None], g_d[None], [q.shape for q in obj_l]))
rpn_only = {k: v.copy() for k, v in model.rpn.named_grads().items()}
model.zero_grad()

for k in full:
    print(f"rpn.{k:18s} |full - RPN losses only| max = {np.abs(full[k] - rpn_only[k]).max():.1e}, "
          f"|grad| max = {np.abs(full[k]).max():.1e}")
print("the backbone does get gradient from the second stage: |grad| max over the backbone =",
      f"{max(np.abs(v).max() for v in backbone_full.values()):.1e}")

# %% [markdown]
# ## Check
#
# The assertions below hold for any model, trained or not:
#
# * the objectness maps have the feature maps' spatial shapes (and the head's outputs are
#   (N, A, H_l, W_l)); the map built from the flattened logits equals the max over the head's
#   own (A, H, W) output;
# * our rebuilt "before NMS" set followed by `batched_nms` gives exactly `generate_proposals`'s
#   output; no two boxes NMS kept on the same level overlap with IoU > 0.7; the proposals lie inside
#   the image, are at least `min_size` wide and high, and come sorted by score;
# * recall is non-decreasing in the number of proposals and lower at IoU 0.7 than at 0.5;
# * the RPN head's gradient comes from the RPN losses only; the loss gradient is non-zero only on
#   sampled anchors (objectness) and positive anchors (deltas) and agrees with finite differences.

# %%
for maps, obj_l, shapes in all_maps:
    for m, o_l, hw in zip(maps, obj_l, shapes):
        assert m.shape == hw, (m.shape, hw)
        assert o_l.shape == (1, cfg.num_anchors_per_location, *hw)
        np.testing.assert_allclose(m, sigmoid(o_l[0]).max(axis=0), rtol=1e-6)
        assert np.all((m >= 0) & (m <= 1))

assert np.array_equal(b_all[keep], props) and np.array_equal(s_all[keep], prop_logits)
for lvl in range(len(LEVELS)):
    kb = b_all[keep_all][l_all[keep_all] == lvl]
    iou = box_iou(kb, kb)
    np.fill_diagonal(iou, 0.0)
    assert iou.size == 0 or iou.max() <= cfg.rpn_nms_thresh, (LEVELS[lvl], iou.max())
h, w = val[0]["image"].shape[:2]
assert np.all(props[:, 0] >= 0) and np.all(props[:, 1] >= 0)
assert np.all(props[:, 2] <= w) and np.all(props[:, 3] <= h)
assert np.all(props[:, 2] - props[:, 0] >= cfg.rpn_min_size)
assert np.all(props[:, 3] - props[:, 1] >= cfg.rpn_min_size)
assert np.all(np.diff(prop_logits) <= 0), "proposals must come sorted by decreasing score"
assert len(props) <= POST

for kind in ("proposals", "anchors"):
    for t in THRESHOLDS:
        r = recall[(kind, t)]
        assert np.all((r >= 0) & (r <= 1)) and np.all(np.diff(r) >= 0), (kind, t, r)
    assert np.all(recall[(kind, 0.7)] <= recall[(kind, 0.5)])

for k in full:
    np.testing.assert_allclose(full[k], rpn_only[k], rtol=1e-5, atol=1e-7, err_msg=k)
sampled = np.zeros(len(g_obj), bool)
sampled[targets["sampled"]] = True
positive = np.zeros(len(g_obj), bool)
positive[pos] = True
assert np.all(g_obj[~sampled] == 0) and np.all(g_dlt[~positive] == 0)
assert abs(go64[i_fd] - num_obj) <= 1e-6 * max(1.0, abs(num_obj))
assert abs(gd64[i_fd, 0] - num_dlt) <= 1e-6 * max(1.0, abs(num_dlt))
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Run the recall curve with NMS thresholds 0.5 and 0.9. Which threshold helps at N = 10, which
#    at N = 300, and why? (Think of duplicates crowding the top of the list.)
# 2. Take the top-k over *all* levels together instead of per level (one `argsort` over the whole
#    pyramid). How many of the first 100 proposals come from P2 now? What happens to the recall of
#    large objects?
# 3. Replace the shared head by one head per level (five `RPNHead`s). Count the parameters and
#    train the tiny run for the same number of iterations: is the recall better or worse?
# 4. Faster R-CNN's RPN outputs 2 scores per anchor with a softmax. Show that a two-way softmax with
#    logits `(a, b)` equals `sigmoid(a − b)`, and that its cross-entropy gradient w.r.t. `a − b`
#    is the sigmoid's. What is gained by the second output?
# 5. Non-approximate joint training: write down d(RoIAlign output)/d(x1) for one bin (chapter 03's
#    bilinear sampling), and chain it through `decode_boxes` to the RPN's `tx`. Why can a box
#    that NMS removed never receive this gradient?
# 6. Turn off the low-quality matches in `label_anchors` (chapter 02) for the RPN targets and
#    retrain: which objects lose recall at IoU 0.5 first?

# %% [markdown]
# ## Summary
#
# * One small conv head, shared by P2–P6, gives every anchor an objectness logit and 4 deltas.
# * Proposals: top-k per level, decoded, clipped, small boxes dropped, NMS per level, best kept.
# * The proposals are constants for the second stage: its losses do not reach the RPN head.
