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
# # Chapter 02 — Anchors and RPN targets
#
# Chapter 01 slid windows of several sizes over the image and scored every one. Faster R-CNN keeps
# the idea but makes it cheap: the windows become **anchors**, a fixed set of reference boxes
# placed at every position of a convolutional feature map, and a small network, the **Region
# Proposal Network** (RPN), scores every anchor (object or not) and regresses deltas (chapter 01,
# section 3) that move it onto the object. In the Faster R-CNN paper (Ren et al. 2015) the anchors
# are boxes of fixed size, 9 of them at every position: three areas (128², 256², 512²) times three
# aspect ratios (1:1, 1:2, 2:1). To train the RPN every anchor needs a **label** (object /
# background / ignore) and, for the objects, a regression target. This chapter builds all of it:
#
# 1. the 9 base anchors and their tiling over a feature map (where exactly is an anchor's centre?);
# 2. the FPN variant: one anchor size per pyramid level;
# 3. labeling anchors against ground-truth boxes by IoU (the paper's labelling rules);
# 4. the balanced mini-batch of 256 anchors.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.anchors import (FASTER_RCNN_ANCHORS, FPN_ANCHORS, generate_anchors, grid_anchors,
                               label_anchors, pyramid_anchors, sample_labels)
from mrcnn_ref.boxes import box_iou, encode_boxes
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"


def draw_box(ax, b, color="r", lw=1.2, alpha=1.0, ls="-"):
    x1, y1, x2, y2 = (float(v) for v in b)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=lw,
                           alpha=alpha, ls=ls))


# %% [markdown]
# Anchors and their labels belong to the RPN stage of Mask R-CNN, highlighted below; chapter 07
# builds the network that scores them and turns them into proposals.

# %%
ax = draw_pipeline(highlight="rpn")
ax.set_title("this chapter: the anchors the RPN scores, and its training targets", fontsize=10)
plt.show()

# %% [markdown]
# ## 1. The nine base anchors
#
# An anchor of **size** `s` and **aspect ratio** `r = h / w` (torchvision's definition) keeps the
# area of an `s x s` square: `w = s / sqrt(r)`, `h = s * sqrt(r)`. `generate_anchors` returns
# them centred at `(0, 0)`, ratios outer and sizes inner (torchvision's order). One difference
# from torchvision: it rounds the base anchors to whole pixels, we keep them exact.

# %%
print(inspect.getsource(generate_anchors))
base9 = generate_anchors(**{"sizes": FASTER_RCNN_ANCHORS["sizes_per_level"][0],
                            "aspect_ratios": FASTER_RCNN_ANCHORS["aspect_ratios"]})
print(np.round(base9, 1))

# %%
fig, ax = plt.subplots(figsize=(7, 5.5))
ax.add_patch(Rectangle((0, 0), 800, 600, fill=False, edgecolor="k", lw=2))
colors = {0.5: "tab:blue", 1.0: "tab:green", 2.0: "tab:red"}
for (r, s), b in zip([(r, s) for r in (0.5, 1.0, 2.0) for s in (128, 256, 512)], base9):
    draw_box(ax, b + [400, 300, 400, 300], colors[r], lw=1.5)
for r, c in colors.items():
    ax.plot([], [], color=c, label=f"ratio h/w = {r}")
ax.plot(400, 300, "k+", ms=12)
ax.set_xlim(-300, 1100), ax.set_ylim(900, -300), ax.set_aspect("equal"), ax.legend(loc="lower right")
ax.set_title("the 9 Faster R-CNN anchors at one position of an 800x600 image")
plt.show()

# %% [markdown]
# ## 2. Tiling: one set of anchors per feature-map position
#
# A backbone of stride 16 turns an 800x600 image into a 50x38 feature map (the paper quotes about
# 60x40 for its ~1000x600 images). Every position gets all 9 anchors: 50·38·9 = 17,100
# anchors. The RPN's 1x1 convolutions output, per position, 9 scores and 9·4 deltas — one per
# anchor — so the anchors must be listed in the same order as the network's outputs:
# **(y, x, a)**, row-major cells then anchors.
#
# Where is the centre of the anchors of cell `(y, x)`? torchvision puts it at
# `(x * stride, y * stride)` — the top-left corner of the image patch the cell covers. Centring it
# on the patch, `((x + 0.5) * stride, (y + 0.5) * stride)`, is just as valid (the network learns
# either); `grid_anchors(..., offset=0.5)` does that. We follow torchvision by default.

# %%
print(inspect.getsource(grid_anchors))

# %%
img = 128
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, off in zip(axes, (0.0, 0.5)):
    a = grid_anchors(generate_anchors([32], [1.0]), (img // 16, img // 16), 16, offset=off)
    centres = (a[:, :2] + a[:, 2:]) / 2
    ax.add_patch(Rectangle((0, 0), img, img, fill=False, edgecolor="k", lw=2))
    for g in range(0, img + 1, 16):
        ax.axhline(g, color="0.85", lw=0.5), ax.axvline(g, color="0.85", lw=0.5)
    ax.plot(centres[:, 0], centres[:, 1], "o", ms=3)
    draw_box(ax, a[9], "tab:red")  # the anchor of cell (y=1, x=1)
    ax.set_xlim(-20, img + 20), ax.set_ylim(img + 20, -20), ax.set_aspect("equal")
    ax.set_title(f"offset = {off}: centres at ((x+{off})·16, (y+{off})·16)\n"
                 "red: the 32x32 anchor of cell (y=1, x=1)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### FPN: one size per level
#
# With a feature pyramid (FPN, chapter 06) small objects are detected on the fine levels and
# large ones on the coarse levels, so each level gets **one** size (and three ratios): 32 on P2
# (stride 4), 64 on P3 (8), 128 on P4 (16), 256 on P5 (32), 512 on P6 (64). The preset
# `FPN_ANCHORS` holds this; `pyramid_anchors` returns the per-level lists and their concatenation.

# %%
print(FPN_ANCHORS)
size = 256 if SMOKE else 800
feature_sizes = [(size // s, size // s) for s in FPN_ANCHORS["strides"]]
per_level, all_anchors = pyramid_anchors(feature_sizes, **FPN_ANCHORS)
for s, fs, a in zip(FPN_ANCHORS["strides"], feature_sizes, per_level):
    print(f"stride {s:2d}: feature map {fs}, {len(a):6d} anchors")
print("total:", len(all_anchors), "anchors for a", size, "x", size, "image")

fig, ax = plt.subplots(figsize=(6, 6))
ax.add_patch(Rectangle((0, 0), size, size, fill=False, edgecolor="k", lw=2))
cmap = plt.cm.plasma
for lvl, (s, fs, a) in enumerate(zip(FPN_ANCHORS["strides"], feature_sizes, per_level)):
    cy, cx = fs[0] // 2, fs[1] // 2
    i = (cy * fs[1] + cx) * 3                                 # the 3 anchors of the centre cell
    for b in a[i:i + 3]:
        draw_box(ax, b, cmap(lvl / 5), lw=1.5)
    ax.plot([], [], color=cmap(lvl / 5), label=f"P{lvl + 2} (stride {s})")
ax.set_xlim(-size * 0.3, size * 1.3), ax.set_ylim(size * 1.3, -size * 0.3), ax.set_aspect("equal")
ax.legend(loc="lower right"), ax.set_title("FPN anchors of the centre cell, per level")
plt.show()

# %% [markdown]
# ## 3. Labeling anchors: object, background, or ignored
#
# The Faster R-CNN paper's rules (Sec. 3.1.2):
#
# * IoU ≥ 0.7 with some ground truth → **positive** (1);
# * the anchor(s) with the highest IoU for a ground truth → **positive** too, so that small or
#   oddly shaped objects that no anchor reaches 0.7 on still get one (*low-quality matches*;
#   ties all count);
# * IoU < 0.3 with every ground truth → **negative** (0);
# * anything in between → **ignored** (−1), and so are anchors crossing the image border when
#   `image_size` is given.
#
# `matched_gt_idx` tells which ground truth each anchor regresses to.

# %%
print(inspect.getsource(label_anchors))

# %% [markdown]
# We label anchors on an image from the synthetic shapes dataset (128x128, a few squares, circles
# and triangles). For objects of 10–50 pixels we use sizes 16, 32, 64 at stride 8 with the three
# ratios: 16·16·9 = 2,304 anchors.

# %%
try:
    from mrcnn_ref.data.shapes import ShapesDataset
    sample = ShapesDataset(split="train", num_images=8, image_size=128, seed=0)[6]
    image, gt = sample["image"], sample["boxes"].astype(np.float64)
except ImportError:  # fallback when the dataset module is not available
    from skimage.draw import disk
    image = np.full((128, 128, 3), 30, dtype=np.uint8)
    image[20:50, 15:60] = (200, 60, 60)
    image[disk((90, 85), 20)] = (60, 200, 60)
    gt = np.array([[15, 20, 60, 50], [65, 70, 105, 110]], dtype=np.float64)

anchors = grid_anchors(generate_anchors([16, 32, 64], [0.5, 1.0, 2.0], dtype=np.float64),
                       (16, 16), 8, offset=0.5)
labels, matched = label_anchors(anchors, gt, pos_iou=0.7, neg_iou=0.3)
print(len(gt), "objects,", len(anchors), "anchors:",
      {"positive": int((labels == 1).sum()), "negative": int((labels == 0).sum()),
       "ignored": int((labels == -1).sum())})


def show_labels(ax, lab, title, show_ignored=True):
    ax.imshow(image)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    neg = lab == 0
    ax.plot(centres[neg, 0], centres[neg, 1], ".", color="white", ms=2, alpha=0.4)
    if show_ignored:
        for b in anchors[lab == -1]:
            draw_box(ax, b, "orange", lw=0.4, alpha=0.25)
    for b in anchors[lab == 1]:
        draw_box(ax, b, "lime", lw=1.0)
    for b in gt:
        draw_box(ax, b, "red", lw=2, ls="--")
    ax.set_xlim(-16, 144), ax.set_ylim(144, -16)
    ax.set_title(title)


fig, ax = plt.subplots(figsize=(6, 6))
show_labels(ax, labels, "positives (green), ignored (orange), negative centres (white dots);\n"
            "ground truth dashed red")
plt.show()

# %% [markdown]
# The positives are the targets of the RPN's box regression, with `RPN_BOX_WEIGHTS = (1, 1, 1, 1)`:

# %%
pos = np.flatnonzero(labels == 1)
targets = encode_boxes(gt[matched[pos]], anchors[pos])
print("regression targets (tx, ty, tw, th) of the first positives:\n", np.round(targets[:5], 3))

# %% [markdown]
# ## 4. The balanced mini-batch
#
# Almost all anchors are background. Training on all of them would teach the RPN to say "no
# object" everywhere, so each image contributes a **mini-batch of 256 anchors**, up to half of
# them positive (the paper's ratio of 1:1), filled with negatives when fewer than 128 positives
# exist. `sample_labels` keeps the sampled anchors' labels and sets all others to −1 (ignored by
# the loss). It is deterministic given a `np.random.Generator`.

# %%
print(inspect.getsource(sample_labels))
rng = np.random.default_rng(0)
batch = sample_labels(labels, batch_size=256, positive_fraction=0.5, rng=rng)
print("sampled:", int((batch == 1).sum()), "positives,", int((batch == 0).sum()), "negatives")
fig, ax = plt.subplots(figsize=(6, 6))
show_labels(ax, batch, "the 256-anchor mini-batch: all positives (green)\n"
            "+ random negatives (white dots) to fill", show_ignored=False)
plt.show()

# %% [markdown]
# ## Check
#
# The assertions below fail if the labeling rules are broken: every ground truth has at least
# one positive anchor (and its best anchor is positive), positives have IoU ≥ 0.7 or are some
# object's best anchor, negatives have IoU < 0.3 with every object; and the mini-batch holds 256
# anchors with all positives (fewer than 128 here) and negatives for the rest. The 9-anchor set
# has the areas and ratios of the paper.

# %%
iou = box_iou(anchors, gt)
best_for_gt = iou.max(axis=0)
assert np.all((iou[labels == 1] == best_for_gt).any(axis=0)), "a ground truth has no positive anchor"
is_best = (iou == best_for_gt).any(axis=1)
assert np.all((iou.max(axis=1)[labels == 1] >= 0.7) | is_best[labels == 1])
assert np.all(iou.max(axis=1)[labels == 0] < 0.3)
n_pos = int((labels == 1).sum())
assert int((batch == 1).sum()) == min(n_pos, 128)
assert int((batch == 1).sum() + (batch == 0).sum()) == 256
w, h = base9[:, 2] - base9[:, 0], base9[:, 3] - base9[:, 1]
np.testing.assert_allclose(np.sort(w * h), np.repeat([128.0**2, 256.0**2, 512.0**2], 3), rtol=1e-5)
np.testing.assert_allclose(sorted(set(np.round(h / w, 4))), [0.5, 1.0, 2.0])
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Turn off the low-quality matches (`allow_low_quality=False`). Which objects lose all their
#    positive anchors, and why are they the small or elongated ones?
# 2. Pass `image_size=(128, 128)` to `label_anchors`: how many anchors cross the border? The
#    original Faster R-CNN ignores them during training; what would the RPN never learn then?
# 3. Compare `offset=0` and `offset=0.5` on this image: does the number of positives change?
# 4. torchvision rounds its base anchors. How far (in IoU) is torchvision's rounded 128-pixel,
#    ratio-0.5 anchor from ours?
# 5. Count the anchors of the FPN preset on a 1024x1024 image. What fraction sits on P2?

# %% [markdown]
# ## Summary
#
# * Anchors: fixed boxes (sizes × ratios) tiled over a feature map in the RPN's output order.
# * Positive at IoU ≥ 0.7 or as an object's best anchor, negative below 0.3, ignored in between.
# * Each image trains the RPN on 256 sampled anchors, at most half of them positive.
