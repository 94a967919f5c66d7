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
# # Chapter 08 — The box and mask heads, and the per-class sigmoid loss
#
# The RPN (chapter 07) hands the second stage a few hundred **proposals**. For each of them the
# second stage answers three questions in parallel: *which class is it* (softmax over K classes,
# background included), *where exactly is the box* (class-specific deltas) and *which pixels
# belong to the object* (a small mask). That is Mask R-CNN (He et al. 2017) in one sentence: it
# keeps Faster R-CNN, extracts features with a ResNet-FPN, and adds a branch that predicts a
# **binary** mask for every RoI; classification, box regression and mask prediction run in
# parallel. This chapter walks the second stage in the order the data flows:
#
# 1. **proposal targets** — which RoIs are trained on and what they should predict;
# 2. **FPN level assignment** — which pyramid level each RoI reads;
# 3. **multi-level RoIAlign** — 7×7 features for the box head, 14×14 for the mask head;
# 4. the **box head** — two FC layers, a class softmax and class-specific deltas;
# 5. the **mask head** — a tiny FCN, 14×14 → 28×28, one mask per class;
# 6. **mask targets** and **pasting masks back** into the image;
# 7. **per-class sigmoid vs softmax across classes** — why the paper decouples mask and class;
# 8. a (trained or briefly trained) model's per-class 28×28 mask probabilities.

# %%
import inspect
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.boxes import box_iou, decode_boxes, encode_boxes
from mrcnn_ref.data.masks import mask_targets_for_rois, masks_to_boxes, paste_masks_in_image
from mrcnn_ref.data.shapes import ShapesDataset
from mrcnn_ref.data.transforms import to_model_input
from mrcnn_ref.model.multilevel_roi import assign_fpn_levels, multilevel_roi_forward
from mrcnn_ref.model.roi_heads import BoxHead, MaskHead, box_loss_forward
from mrcnn_ref.model.targets import match_proposals, proposal_targets, sample_rois
from mrcnn_ref.ops.losses import (mask_loss_backward, mask_loss_forward, mask_loss_softmax_backward,
                                  mask_loss_softmax_forward, sigmoid)
from mrcnn_ref.ops.roi_align import roi_align
from mrcnn_ref.model_io import bundled_or_trained_model
from mrcnn_ref.run_config import build_dataset
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
print("smoke mode:", SMOKE)
T0 = time.perf_counter()


def draw_box(ax, b, color="r", lw=1.2, alpha=1.0, ls="-"):
    x1, y1, x2, y2 = (float(v) for v in b)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, lw=lw,
                           alpha=alpha, ls=ls))


# %% [markdown]
# Where this chapter sits: everything after the proposals. RoIAlign (chapter 03) cuts a
# fixed-size window of features out of the pyramid for every RoI, and the two heads turn it into
# the outputs.

# %%
ax = draw_pipeline(highlight=["roi_op", "box_head", "mask_head", "outputs"])
ax.set_title("this chapter: the second stage")
plt.show()

# %% [markdown]
# ## 0. A model to look at
#
# Sections 1–7 need only the library code; section 3 and section 8 also run a real network. If the
# package ships a trained checkpoint (`mrcnn_ref/checkpoints/shapes.npz`, the "shapes" preset:
# 128×128 images, 4 classes, 28×28 masks) we load it. Otherwise we train the "tiny" preset
# (64×64 images, 7×7 mask RoIs → **14×14** masks) right here: a few seconds in smoke mode, about
# two minutes otherwise. **A briefly trained
# model's pictures are blurry and often wrong; they look much better with the bundled
# checkpoint.** Nothing checked below depends on how good the model is.

# %%
model, run_cfg, source = bundled_or_trained_model(30 if SMOKE else 1500)
cfg = model.config
print(f"model: {source}; K = {cfg.num_classes} classes (with background), "
      f"mask {cfg.mask_size}x{cfg.mask_size}, image size {run_cfg.train.image_size}")
val = build_dataset(run_cfg.train, "val", num_images=8)
print(val)

# %% [markdown]
# ## 1. Proposal targets: which RoIs to train on
#
# The second stage is trained like Fast R-CNN (Girshick 2015): each mini-batch holds 2 images and
# 128 RoIs, 64 per image, of which about **25 %** are foreground, i.e. RoIs with IoU **≥ 0.5**
# with a ground-truth box. `proposal_targets` does it for one image, in five steps
# (see its module docstring): add the gt boxes to the proposals (so there is always at least one
# perfect positive, even when an untrained RPN proposes junk), match each RoI to the gt box it
# overlaps most, sample at most 25 % foreground, encode box-regression targets with weights
# (10, 10, 5, 5), and build mask targets for the foreground RoIs (section 6).

# %%
print(inspect.getsource(match_proposals))
print(inspect.getsource(sample_rois))
print(inspect.getsource(proposal_targets))

# %% [markdown]
# We imitate an RPN's output on a shapes image: many jittered copies of the gt boxes (some good,
# some poor) plus random boxes. Green RoIs are the sampled foreground, red dashed the sampled
# background; the thick white boxes are the ground truth.

# %%
shapes = ShapesDataset("val", num_images=16, image_size=128, seed=0)
sample = max((shapes[i] for i in range(len(shapes))), key=lambda s: len(s["boxes"]))
gt_boxes = sample["boxes"].astype(np.float64)
gt_labels = sample["labels"]
gt_masks = sample["masks"]

rng = np.random.default_rng(0)
n_jit = 40 if SMOKE else 120
g = gt_boxes[rng.integers(len(gt_boxes), size=n_jit)]
wh = np.concatenate([g[:, 2:] - g[:, :2]] * 2, axis=1)
jittered = g + rng.normal(scale=0.25, size=(n_jit, 4)) * wh
xy = rng.uniform(0, 100, size=(n_jit, 2))
random_boxes = np.concatenate([xy, xy + rng.uniform(8, 40, size=(n_jit, 2))], axis=1)
proposals = np.clip(np.concatenate([jittered, random_boxes]), 0, 128)
proposals = proposals[(proposals[:, 2] - proposals[:, 0] > 1) & (proposals[:, 3] - proposals[:, 1] > 1)]

t = proposal_targets(proposals, gt_boxes, gt_labels, gt_masks, rng=np.random.default_rng(1),
                     batch_size_per_image=64, positive_fraction=0.25)
nf = t["num_fg"]
print(f"{len(proposals)} proposals + {len(gt_boxes)} gt boxes -> {len(t['rois'])} sampled RoIs, "
      f"{nf} foreground ({nf / len(t['rois']):.0%}), labels of fg: {t['labels'][:nf].tolist()}")

fig, ax = plt.subplots(1, 2, figsize=(11, 5.2))
ax[0].imshow(sample["image"])
for b in t["rois"][nf:]:
    draw_box(ax[0], b, "tab:red", lw=0.8, ls="--", alpha=0.7)
for b in t["rois"][:nf]:
    draw_box(ax[0], b, "lime", lw=1.0)
for b in gt_boxes:
    draw_box(ax[0], b, "w", lw=2.5)
ax[0].set_title(f"sampled RoIs: {nf} fg (green), {len(t['rois']) - nf} bg (red)")
_, _, max_iou = match_proposals(np.concatenate([proposals, gt_boxes]), gt_boxes, gt_labels)
ax[1].hist(max_iou, bins=20, range=(0, 1), color="0.6", label="all proposals (+gt)")
ax[1].axvline(0.5, color="k", ls="--", label="fg threshold 0.5")
ax[1].set_xlabel("max IoU with a gt box"), ax[1].set_ylabel("count"), ax[1].legend()
ax[1].set_title("max IoU of the proposals (+ gt boxes)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The regression targets of the foreground RoIs are the chapter-01 deltas **divided by the
# standard deviations (0.1, 0.1, 0.2, 0.2)**, i.e. multiplied by the weights (10, 10, 5, 5). For
# RoIs with IoU ≥ 0.5 the raw deltas are small (a few tenths); the weights bring them to roughly
# unit scale, so the smooth-L1 loss (β = 1/9) is balanced against the classification loss:

# %%
fg_rois = t["rois"][:nf]
matched = gt_boxes[t["matched_gt"][:nf]]
raw = encode_boxes(matched, fg_rois, weights=(1.0, 1.0, 1.0, 1.0))
weighted = encode_boxes(matched, fg_rois, weights=(10.0, 10.0, 5.0, 5.0))
print("std of raw deltas      (dx, dy, dw, dh):", np.round(raw.std(axis=0), 3))
print("std of weighted targets (10, 10, 5, 5):  ", np.round(weighted.std(axis=0), 3))
np.testing.assert_allclose(weighted, t["regression_targets"][:nf])

# %% [markdown]
# ## 2. Which FPN level does a RoI read?
#
# The FPN paper (eq. 1) assigns a RoI of width `w` and height `h` (input-image pixels) to level
#
# $$k = \left\lfloor k_0 + \log_2\!\left(\sqrt{wh}\,/\,224\right)\right\rfloor, \qquad k_0 = 4,$$
#
# clamped to P2..P5: a 224×224 RoI (the ImageNet pre-training size) reads P4 (stride 16), one half
# as wide reads P3, twice as wide P5. Small objects read the fine, high-resolution P2; large ones
# the coarse P5 whose features are semantically stronger.

# %%
print(inspect.getsource(assign_fpn_levels))

# %%
sides = np.array([8, 16, 32, 56, 64, 100, 111, 112, 128, 200, 224, 300, 448, 500, 896, 1200], float)
sq = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
lv224 = assign_fpn_levels(sq)
lv_cfg = assign_fpn_levels(sq, canonical_size=cfg.roi_canonical_size,
                           canonical_level=cfg.roi_canonical_level)
print(f"{'sqrt(wh)':>9} | {'4 + log2(s/224)':>15} | level (224) | "
      f"level ({cfg.name}: {cfg.roi_canonical_size:g})")
for s, a, b in zip(sides, lv224, lv_cfg):
    print(f"{s:9.0f} | {4 + np.log2(s / 224):15.3f} | P{a:<10d} | P{b}")

s_plot = np.logspace(np.log2(4), np.log2(1500), 400, base=2)
boxes_plot = np.stack([0 * s_plot, 0 * s_plot, s_plot, s_plot], axis=1)
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.step(s_plot, assign_fpn_levels(boxes_plot), where="post", label="canonical 224 (paper)")
ax.step(s_plot, assign_fpn_levels(boxes_plot, canonical_size=32.0), where="post", ls="--",
        label="canonical 32 (the tiny preset)")
ax.axvspan(10, 60, color="orange", alpha=0.2, label="shapes objects (~10–60 px)")
ax.set_xscale("log"), ax.set_yticks([2, 3, 4, 5]), ax.set_yticklabels(["P2", "P3", "P4", "P5"])
ax.set_xlabel("sqrt(w h) of the RoI [px]"), ax.set_ylabel("FPN level"), ax.legend(loc="upper left")
ax.set_title("FPN level assignment")
plt.tight_layout()
plt.show()

# %% [markdown]
# **What this means on 128-px shapes images.** With the paper's canonical size 224, every RoI
# smaller than 112×112 lands on P2: `4 + log2(60/224) = 2.1`, so *all* shape objects (10–60 px)
# and practically all proposals of a 128-px image read **P2 only**; P3–P5 still feed the RPN and
# (through the top-down pathway) enrich P2, but the RoI heads never read them directly. That is
# the right choice for small objects (P2 has stride 4, so a 20-px object still covers 5×5
# feature cells), and it keeps the "shapes" preset identical to the paper. The "tiny" preset
# (64-px images) sets `roi_canonical_size = 32` instead, so its RoIs spread over all four levels
# and the multi-level code path is exercised in tests.

# %% [markdown]
# ## 3. Multi-level RoIAlign
#
# `multilevel_roi_forward` groups the RoIs by level, runs RoIAlign (chapter 03) on each level with
# `spatial_scale = 1/stride`, and scatters the results back into the RoIs' order. The loop is
# over the (at most four) levels, never over RoIs; the backward sends each RoI's gradient to its
# own level only.

# %%
print(inspect.getsource(multilevel_roi_forward))

# %% [markdown]
# We run the model's backbone on an image and pool RoIs of many sizes. Each RoI's output must be
# exactly what plain `roi_align` gives on the level it was assigned to. With the model's own
# canonical size (224 for "shapes": every RoI on P2, see section 2) and once more with canonical
# size 32, which spreads the same RoIs over the levels.

# %%
img_size = run_cfg.train.image_size
vsample = max((val[i] for i in range(len(val))),             # most classes, then most objects
              key=lambda s: (len(set(s["labels"].tolist())), len(s["boxes"])))
x_img = to_model_input(vsample)[None]
feats = model.backbone(x_img)                               # [P2, P3, P4, P5, P6]
model.clear_caches()
print("pyramid:", [tuple(f.shape) for f in feats])
rs = np.random.default_rng(2)
n_r = 12
c_xy = rs.uniform(0, img_size, size=(n_r, 2))
side = np.exp(rs.uniform(np.log(4), np.log(img_size), size=(n_r, 1)))
rois = np.clip(np.concatenate([c_xy - side / 2, c_xy + side / 2], axis=1), 0, img_size)
rois5 = np.concatenate([np.zeros((n_r, 1)), rois], axis=1).astype(np.float32)
kw = dict(strides=(4, 8, 16, 32), roi_op="roi_align", sampling_ratio=cfg.roi_sampling_ratio,
          aligned=cfg.roi_aligned, canonical_size=cfg.roi_canonical_size,
          canonical_level=cfg.roi_canonical_level)


def pool_and_reference(canonical_size):
    """Multi-level RoIAlign, and the same RoIs pooled one by one with roi_align on their level."""
    k_ = {**kw, "canonical_size": canonical_size}
    out, _ = multilevel_roi_forward(feats[:4], rois5, cfg.box_roi_size, **k_)
    lv_ = assign_fpn_levels(rois, canonical_size=canonical_size, canonical_level=cfg.roi_canonical_level)
    ref_ = np.stack([roi_align(feats[lv - 2], rois5[i:i + 1], cfg.box_roi_size, 1.0 / 2 ** lv,
                               sampling_ratio=cfg.roi_sampling_ratio, aligned=cfg.roi_aligned)[0]
                     for i, lv in enumerate(lv_)])
    print(f"canonical size {canonical_size:5g}: pooled {out.shape}, RoIs on P2..P5 = "
          f"{np.bincount(lv_, minlength=6)[2:].tolist()}, max |multilevel - roi_align on the "
          f"assigned level| = {float(np.abs(out - ref_).max()):.2e}")
    return out, ref_, lv_


pooled, ref, _ = pool_and_reference(cfg.roi_canonical_size)           # the model's setting
pooled32, ref32, levels32 = pool_and_reference(32.0)                    # spread over the levels

# %% [markdown]
# ## 4. The box head
#
# FPN's "2fc" head: flatten the 7×7×C RoI features, two fully connected layers with ReLU (width
# 1024 in the paper, 256 in our "shapes" preset), then two siblings: `cls_score` gives K logits
# (softmax over classes, background = 0) and `bbox_pred` gives **4K** deltas — one box per class.
# The loss only looks at the 4 deltas of the *ground-truth* class of each foreground RoI; at test
# time each class's box is decoded from its own 4 deltas (weights (10, 10, 5, 5)) and NMS runs per
# class.

# %%
print(inspect.getsource(BoxHead))
print(inspect.getsource(box_loss_forward))

# %%
K = cfg.num_classes
logits, deltas = model.box_head(pooled)
model.clear_caches()
print("class logits:", logits.shape, " box deltas:", deltas.shape, "= (R, 4K), K =", K)
per_class = deltas.reshape(-1, K, 4)                       # row r, class k -> 4 deltas
boxes_per_class = decode_boxes(deltas, rois.astype(np.float32), weights=cfg.box_weights)
print("decoded boxes per class:", boxes_per_class.shape, "(R, 4K): class k's box is columns 4k..4k+3")
np.testing.assert_allclose(boxes_per_class.reshape(-1, K, 4)[:, 2],
                           decode_boxes(per_class[:, 2], rois.astype(np.float32), weights=cfg.box_weights),
                           rtol=1e-5, atol=1e-4)

# %% [markdown]
# ## 5. The mask head
#
# A small fully convolutional network on 14×14 RoI features: a few 3×3 convs (+ReLU; the paper's
# FPN head has four with 256 channels, our presets use fewer), a 2×2 **transposed convolution**
# with stride 2 (chapter 05) that doubles the side to 28×28, and a 1×1 conv to **K** channels: one
# 28×28 mask logit map per class. Unlike the FC box head, the mask stays a spatial map all the
# way, which is why a pixel-accurate RoIAlign matters (chapter 03).

# %%
print(inspect.getsource(MaskHead))

# %%
demo_head = MaskHead(in_channels=16, num_convs=2, channels=8, num_classes=4,
                     rng=np.random.default_rng(0), dtype=np.float64)
h = np.random.default_rng(3).normal(size=(3, 16, 14, 14))
print(f"{'input':<22}{tuple(h.shape)}")
for layer in demo_head.layers:
    h = layer(h)
    print(f"{type(layer).__name__:<22}{tuple(h.shape)}")
mask_head_out_shape = h.shape

# %% [markdown]
# ## 6. Mask targets, and pasting masks back into the image
#
# The target of a foreground RoI is its matched gt mask **cropped to the RoI and resized to
# 28×28** (bilinear, threshold 0.5). Note: *to the RoI*, not to the gt box — a RoI that cuts
# off half the object gets a target with half the object, because the head must predict the mask
# relative to the box it is given. `mask_targets_for_rois` does it with RoIAlign itself
# (`aligned=True`) on the masks viewed as 1-channel images, so targets are sampled exactly the way
# features are.

# %%
print(inspect.getsource(mask_targets_for_rois))

# %%
M = 28
n_show = min(nf, 5)
tg = t["mask_targets"][:n_show]
fig, axes = plt.subplots(2, n_show, figsize=(2.3 * n_show, 4.8), squeeze=False)
for j in range(n_show):
    r = t["rois"][j]
    gm = gt_masks[t["matched_gt"][j]]
    x1, y1 = np.floor(np.minimum(r[:2], gt_boxes[t["matched_gt"][j], :2])).astype(int) - 2
    x2, y2 = np.ceil(np.maximum(r[2:], gt_boxes[t["matched_gt"][j], 2:])).astype(int) + 2
    x1, y1 = max(x1, 0), max(y1, 0)
    axes[0, j].imshow(gm[y1:y2, x1:x2], cmap="gray", extent=(x1, x2, y2, y1))
    draw_box(axes[0, j], r, "lime", lw=1.5)
    axes[0, j].set_title(f"gt mask + RoI {j}", fontsize=9)
    axes[1, j].imshow(tg[j], cmap="gray", vmin=0, vmax=1)
    axes[1, j].set_title(f"{M}x{M} target", fontsize=9)
for a in axes.ravel():
    a.set_xticks([]), a.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# At test time the opposite step, `paste_masks_in_image` (`unmold_mask` in matterport's
# implementation): resize the predicted 28×28 probabilities bilinearly to the detected box,
# threshold at 0.5, place them in an empty image. The round trip *target → paste* on the
# object's own box should give back almost the original mask: only detail finer than a 1/28 of
# the box is lost.

# %%
print(inspect.getsource(paste_masks_in_image))

# %%
big = int(np.argmax(gt_masks.reshape(len(gt_masks), -1).sum(axis=1)))
box_big = masks_to_boxes(gt_masks[big:big + 1]).astype(np.float64)
target_big = mask_targets_for_rois(gt_masks, np.array([big]), box_big, M=M)
pasted = paste_masks_in_image(target_big, box_big, gt_masks.shape[1:])[0]
inter = np.logical_and(pasted, gt_masks[big]).sum()
roundtrip_iou = inter / np.logical_or(pasted, gt_masks[big]).sum()
x1, y1, x2, y2 = box_big[0].astype(int)
fig, ax = plt.subplots(1, 4, figsize=(11, 3))
ax[0].imshow(gt_masks[big][y1:y2, x1:x2], cmap="gray"), ax[0].set_title("gt mask (in its box)")
ax[1].imshow(target_big[0], cmap="gray"), ax[1].set_title(f"{M}x{M} target")
ax[2].imshow(pasted[y1:y2, x1:x2], cmap="gray"), ax[2].set_title("pasted back")
diff = pasted[y1:y2, x1:x2].astype(int) - gt_masks[big][y1:y2, x1:x2].astype(int)
ax[3].imshow(diff, cmap="bwr", vmin=-1, vmax=1), ax[3].set_title(f"difference (IoU {roundtrip_iou:.3f})")
for a in ax:
    a.set_xticks([]), a.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 7. Per-class sigmoid, not a softmax across classes
#
# Semantic segmentation FCNs classify each pixel with a softmax over all classes and a multinomial
# cross-entropy, so the masks of all classes compete. Mask R-CNN uses a per-pixel sigmoid and a
# binary loss instead: for a RoI of true class k the loss is computed on the k-th mask only, masks
# do not compete across classes, and classification is left to the classification branch. The
# paper's ablation (Table 2(b), ResNet-50-C4): softmax 24.8 mask AP, **sigmoid 30.3** (+5.5).
#
# The two losses in the library (chapter 04 checks their gradients):

# %%
print(inspect.getsource(mask_loss_forward))
print(inspect.getsource(mask_loss_softmax_forward))

# %% [markdown]
# **A constructed example.** One RoI, K = 3 channels (0 background, 1 "circle", 2 "square"). The
# RoI's object is a circle (label 1) and its target is a disc. The head predicts channel 1 well
# (+2 inside the disc, −2 outside), but channel 2 is confident (+4, −4 elsewhere) on a square that
# overlaps the disc — e.g. because a square object partly covers the same RoI, which is exactly
# what the square channel is supposed to say. Channel 0 is 0 everywhere.
#
# * **Sigmoid**: the loss only reads channel 1. The square channel's opinion is irrelevant: it
#   gets exactly zero gradient, and the loss is the same as if channel 2 were silent.
# * **Softmax**: at each pixel the three channels share one probability, and the target
#   distribution is "circle" inside the disc and "background" everywhere else. In the overlap,
#   `p_circle = e² / (1 + e² + e⁴) ≈ 0.12`, so the loss there is `−log 0.12 ≈ 2.1` per pixel; in
#   the rest of the square the target says *background*, `p_bg = 1 / (1 + e⁻² + e⁴) ≈ 0.018` and
#   the loss is ≈ 4 per pixel. The gradient pushes channel 2 *down* over the whole square (and
#   channel 0 up) — the square mask is punished for being right about a different object.

# %%
Mx = 28
yy, xx = np.mgrid[0:Mx, 0:Mx] + 0.5
disc = ((xx - 11) ** 2 + (yy - 14) ** 2 <= 8.5 ** 2).astype(np.float64)
square = ((np.abs(xx - 20) <= 7) & (np.abs(yy - 14) <= 7)).astype(np.float64)
logit_c = np.zeros((1, 3, Mx, Mx))
logit_c[0, 1] = np.where(disc > 0, 2.0, -2.0)
logit_c[0, 2] = np.where(square > 0, 4.0, -4.0)
lab = np.array([1])
tgt = disc[None]

l_sig, c_sig = mask_loss_forward(logit_c, lab, tgt)
g_sig = mask_loss_backward(1.0, c_sig)
l_soft, c_soft = mask_loss_softmax_forward(logit_c, lab, tgt)
g_soft = mask_loss_softmax_backward(1.0, c_soft)

silent = logit_c.copy()
silent[0, 2] = -4.0                                          # the square channel says "nothing"
l_sig_silent = mask_loss_forward(silent, lab, tgt)[0]
l_soft_silent = mask_loss_softmax_forward(silent, lab, tgt)[0]
print(f"{'':28}{'sigmoid':>10}{'softmax':>10}")
print(f"{'square channel confident':28}{float(l_sig):10.4f}{float(l_soft):10.4f}")
print(f"{'square channel silent':28}{float(l_sig_silent):10.4f}{float(l_soft_silent):10.4f}")
overlap = (disc > 0) & (square > 0)
print(f"overlap: {int(overlap.sum())} of {Mx * Mx} pixels; softmax p_circle there = "
      f"{float(c_soft[0][0, 1][overlap].mean()):.3f}")
per_pixel = -np.log(np.where(disc > 0, c_soft[0][0, 1], c_soft[0][0, 0]))   # softmax CE per pixel
sq_only = (square > 0) & (disc == 0)
print(f"softmax loss per pixel: overlap {per_pixel[overlap].mean():.3f}, square outside the disc "
      f"{per_pixel[sq_only].mean():.3f}, elsewhere {per_pixel[square == 0].mean():.3f}")
print("gradient norm per channel (bg, circle, square):")
print("  sigmoid:", np.round([float(np.abs(g_sig[0, k]).sum()) for k in range(3)], 5))
print("  softmax:", np.round([float(np.abs(g_soft[0, k]).sum()) for k in range(3)], 5))

# %%
fig, axes = plt.subplots(2, 4, figsize=(13, 6.2))
axes[0, 0].imshow(disc, cmap="gray"), axes[0, 0].set_title("target (label 1, circle)")
axes[1, 0].imshow(disc + 2 * square, cmap="viridis"), axes[1, 0].set_title("disc, square, overlap")
vmax = max(np.abs(g_sig).max(), np.abs(g_soft).max())
names = ["0 bg", "1 circle (gt)", "2 square"]
for row, (g_, lname) in enumerate([(g_sig, "sigmoid"), (g_soft, "softmax")]):
    for k in range(3):
        a = axes[row, k + 1]
        im = a.imshow(g_[0, k], cmap="bwr", vmin=-vmax, vmax=vmax)
        a.set_title(f"{lname}: dL/dx, ch {names[k]}", fontsize=9)
for a in axes.ravel():
    a.set_xticks([]), a.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.6, label="gradient (red: push logit down)")
plt.show()

# %% [markdown]
# With the sigmoid loss the square channel (and the background channel) get **no gradient at
# all**: each class's mask is learned only from RoIs of that class, and the class decision is
# left to the box head's classifier. With the softmax every channel is pulled at every pixel, the
# overlap region dominates the gradient, and the mask branch is forced to do classification as
# well.

# %% [markdown]
# ## 8. What a model predicts: K masks per RoI
#
# The mask head predicts a mask for **every** class for every RoI; inference keeps only the
# channel of the class the box head chose. Below: a validation image's objects (using their gt
# boxes as RoIs, so the picture does not depend on the detector finding them), the RoI crop, and
# the sigmoid probabilities of every foreground class channel. The gt class's channel is framed
# in green. With a well-trained model (the bundled checkpoint) the gt-class channel is the sharp
# silhouette of the object; a briefly trained model gives blobs and checkerboard patterns (the
# 2×2 stride-2 deconvolution's signature before it has learned much). Other classes' channels are
# *not* trained on these RoIs, so they may show anything (often a similar silhouette: the features
# say "object here" for every class).

# %%
names_by_label = {c["id"]: c["name"] for c in val.categories}
# largest object of each class first, then the rest by decreasing size
by_size = np.argsort(-(vsample["boxes"][:, 2:] - vsample["boxes"][:, :2]).prod(axis=1))
_, first_of_class = np.unique(vsample["labels"][by_size], return_index=True)
first = by_size[np.sort(first_of_class)].tolist()
order = first + [int(i) for i in by_size if int(i) not in first]
vboxes = vsample["boxes"][order].astype(np.float32)
vlabels = vsample["labels"][order]
n_obj = min(len(vboxes), 3)
mfeats, _ = multilevel_roi_forward(feats[:4], np.concatenate([np.zeros((n_obj, 1), np.float32),
                                                              vboxes[:n_obj]], axis=1),
                                   cfg.mask_roi_size, **kw)
mask_logits = model.mask_head(mfeats)                          # (n, K, m, m)
model.clear_caches()
mask_probs = sigmoid(mask_logits)
print("mask logits:", mask_logits.shape)

fig, axes = plt.subplots(n_obj, K, figsize=(2.4 * K, 2.5 * n_obj), squeeze=False)
for i in range(n_obj):
    x1, y1, x2, y2 = np.round(vboxes[i]).astype(int)
    axes[i, 0].imshow(vsample["image"][y1:y2, x1:x2])
    axes[i, 0].set_title(f"RoI {i}: {names_by_label[int(vlabels[i])]}", fontsize=9)
    for k in range(1, K):
        a = axes[i, k]
        a.imshow(mask_probs[i, k], cmap="magma", vmin=0, vmax=1)
        a.set_title(f"p(mask | {names_by_label.get(k, k)})", fontsize=9)
        if k == int(vlabels[i]):
            for sp in a.spines.values():
                sp.set_edgecolor("lime"), sp.set_linewidth(3)
for a in axes.ravel():
    a.set_xticks([]), a.set_yticks([])
plt.suptitle(f"per-class {cfg.mask_size}x{cfg.mask_size} mask probabilities ({source})", fontsize=10)
plt.tight_layout()
plt.show()

# %%
det = model.predict(x_img)
print(f"full predict(): {len(det['boxes'])} detections with score >= {cfg.score_thresh};",
      "masks", det["masks"].shape, "(pasted into the image, one per detection)")

# %% [markdown]
# ## Check
#
# Each assertion below fails if the corresponding piece is wrong: the sampling must respect the
# 25 % cap and the IoU threshold; level assignment must match the formula; multi-level RoIAlign
# must equal RoIAlign on the assigned level; the heads must have the right output shapes; the
# sigmoid loss must give exactly zero gradient to the non-target channels while the softmax gives
# them non-zero gradient; mask target → paste must recover a large mask with IoU ≥ 0.8.

# %%
# 1. proposal targets: fg fraction <= 25 %, fg IoU >= 0.5, bg IoU < 0.5, gt boxes included
S = len(t["rois"])
assert nf <= int(0.25 * 64) and nf / S <= 0.25, (nf, S)
iou_s = box_iou(t["rois"], gt_boxes).max(axis=1)
assert np.all(iou_s[:nf] >= 0.5) and np.all(iou_s[nf:] < 0.5)
assert np.all(t["labels"][:nf] == gt_labels[t["matched_gt"][:nf]]) and np.all(t["labels"][nf:] == 0)
assert t["mask_targets"].shape == (nf, 28, 28) and set(np.unique(t["mask_targets"])) <= {0.0, 1.0}
many = np.tile(gt_boxes, (40, 1))                              # plenty of perfect positives
t_many = proposal_targets(many, gt_boxes, gt_labels, rng=np.random.default_rng(0),
                          batch_size_per_image=64, positive_fraction=0.25)
assert t_many["num_fg"] == 16, t_many["num_fg"]                # capped at 25 % of 64

# 2. level assignment = floor(4 + log2(sqrt(wh)/224)) clamped to [2, 5] (away from exact edges)
wh_r = np.random.default_rng(5).uniform(2, 2000, size=(500, 2))
bx = np.concatenate([np.zeros((500, 2)), wh_r], axis=1)
expect = np.clip(np.floor(4 + np.log2(np.sqrt(wh_r.prod(axis=1)) / 224)), 2, 5)
assert np.array_equal(assign_fpn_levels(bx), expect)
assert lv224.tolist()[sides.tolist().index(224)] == 4 and lv224.tolist()[sides.tolist().index(112)] == 3
assert np.all(assign_fpn_levels(np.array([[0, 0, 60.0, 60.0], [0, 0, 10.0, 10.0]])) == 2)  # shapes objects

# 3. multi-level RoIAlign = RoIAlign on the assigned level
assert pooled.shape == (n_r, feats[0].shape[1], cfg.box_roi_size, cfg.box_roi_size)
np.testing.assert_allclose(pooled, ref, rtol=1e-5, atol=1e-6)
np.testing.assert_allclose(pooled32, ref32, rtol=1e-5, atol=1e-6)
assert len(np.unique(levels32)) >= 2, levels32                  # several levels really used

# 4./5. head output shapes
assert logits.shape == (n_r, K) and deltas.shape == (n_r, 4 * K)
assert mask_head_out_shape == (3, 4, 28, 28)
assert mask_logits.shape == (n_obj, K, cfg.mask_size, cfg.mask_size)

# 6. target -> paste round trip on a large shape
assert gt_masks[big].sum() >= 400, gt_masks[big].sum()
assert roundtrip_iou >= 0.8, roundtrip_iou

# 7. sigmoid: only the gt channel gets gradient; softmax: all channels do
assert np.all(g_sig[0, 0] == 0) and np.all(g_sig[0, 2] == 0) and np.abs(g_sig[0, 1]).max() > 0
assert np.abs(g_soft[0, 0]).max() > 0 and np.abs(g_soft[0, 2][overlap]).min() > 0
assert np.all(g_soft[0, 2][overlap] > 0)                       # softmax pushes the square down
assert float(l_sig) == float(l_sig_silent)                     # sigmoid ignores the square channel
assert float(l_soft) > float(l_soft_silent) + 0.05             # softmax is hurt by it
print(f"all checks passed ({time.perf_counter() - T0:.1f} s)")

# %% [markdown]
# ## Exercises
#
# 1. **Without the gt boxes.** Call `proposal_targets(..., add_gt_as_proposals=False)` on the
#    random boxes only (`random_boxes`). How many foreground RoIs are left? Why does this matter
#    most in the first iterations of training?
# 2. **The 25 % cap.** Train the tiny preset twice (a few hundred iterations) with
#    `box_positive_fraction` 0.25 and 0.75 (`{"model": {"box_positive_fraction": 0.75}}`) and
#    compare `loss_classifier` and the number of false positives at score 0.5. What goes wrong
#    when background RoIs are rare in the batch?
# 3. **Level assignment.** For the "shapes" preset every RoI reads P2. Change
#    `roi_canonical_size` to 56 and list which levels the shapes objects now read. Would you
#    expect better or worse masks? (Think of the stride of P4 against a 15-px object.)
# 4. **Class-agnostic boxes.** Replace the 4K deltas by 4 (one box for all classes). Which lines
#    of `box_loss_forward` and `postprocess_detections` change? For masks the paper (section 4.2)
#    found a class-agnostic mask nearly as good as class-specific ones (29.7 vs 30.3 mask AP): try
#    `mask_loss_forward` with `labels` all equal to 1 and a 2-channel head.
# 5. **Target resolution.** Repeat the round trip of section 6 with `M = 14` and `M = 56` and plot
#    the IoU against M for a circle of radius 8, 16 and 32 px. Where do the errors sit?
# 6. **Softmax at equal logits.** In the constructed example set channel 2 to exactly channel 1's
#    logits. What is the softmax loss in the overlap region now, and what is the sigmoid loss?
#    Derive `dL/dx` for channel 2 by hand and compare with `mask_loss_softmax_backward`.

# %% [markdown]
# ## Summary
#
# * RoIs are sampled with ≤ 25 % foreground (IoU ≥ 0.5); each reads one FPN level by its size.
# * The box head gives K class scores and 4K deltas; the mask head one M×M mask per class.
# * The mask loss is a per-class sigmoid on the true class's mask only, not a softmax.
