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
# # Chapter 01 — Boxes, IoU and non-maximum suppression
#
# A detector answers two questions for every object: *what* is it (classification) and *where*
# is it (localisation): object detection is classification plus localisation. "Where" is a box,
# and before any network we need three tools that every later chapter uses:
#
# 1. a **box convention** and the **intersection over union** (IoU) of two boxes;
# 2. **non-maximum suppression** (NMS), which turns many overlapping detections into one per
#    object — told with *sliding windows*, the way detection was done before R-CNN (Girshick et
#    al. 2014);
# 3. the **box encoding** (deltas) a network regresses to move a box onto an object.
#
# **Convention.** A box is `(x1, y1, x2, y2)` in *continuous* pixel coordinates: pixel `(row i,
# column j)` covers the unit square `[j, j+1) x [i, i+1)`, so the box covering pixels 2..5 of a
# row is `x1 = 2, x2 = 6` and its width is `x2 - x1 = 4`. There is **no `+1`** (the original
# R-CNN code used inclusive integer corners and `x2 - x1 + 1`; torchvision and we do not).

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.boxes import (HEAD_BOX_WEIGHTS, RPN_BOX_WEIGHTS, box_area, box_iou, decode_boxes,
                             encode_boxes)
from mrcnn_ref.nms import batched_nms, nms
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"


def draw_box(ax, b, color="r", lw=1.5, alpha=1.0, label=None, fill=False):
    x1, y1, x2, y2 = (float(v) for v in b)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=fill, edgecolor=color,
                           facecolor=color if fill else "none", lw=lw, alpha=alpha))
    if label:
        ax.text(x1, y1 - 1, label, color=color, fontsize=9, va="bottom")


# %% [markdown]
# The whole of Mask R-CNN, which chapters 02–08 build piece by piece, is the diagram below. The
# tools of this chapter are used at the two highlighted stages: the RPN's proposals and the final
# detections are both decoded from box deltas and thinned out by NMS.

# %%
ax = draw_pipeline(highlight=["proposals", "outputs"])
ax.set_title("Mask R-CNN at test time: this chapter's tools work at the highlighted stages")
plt.show()

# %% [markdown]
# ## 1. Area and IoU
#
# $$\mathrm{IoU}(A, B) = \frac{|A \cap B|}{|A \cup B|} = \frac{|A\cap B|}{|A| + |B| - |A\cap B|}$$
#
# The intersection of two boxes is a box: its top-left corner is the larger of the two top-left
# corners, its bottom-right the smaller of the bottom-right corners, and its width and height are
# clipped at 0 when the boxes do not meet. `box_iou` computes this for all pairs at once by
# broadcasting an `(N, 1, 2)` against a `(1, M, 2)` array — no loops:

# %%
print(inspect.getsource(box_area))
print(inspect.getsource(box_iou))

# %% [markdown]
# Two 10x10 boxes shifted by 5 pixels in x and y overlap in a 5x5 square: IoU = 25 / (100 + 100
# − 25) = 1/7. The right panel slides one box across the other: IoU falls from 1 much faster
# than the overlap of the x-ranges, because both width and height shrink. The worked NMS example
# of section 2 treats an IoU above 0.6 as "the same object".

# %%
a = np.array([[0.0, 0.0, 10.0, 10.0]])
b = np.array([[5.0, 5.0, 15.0, 15.0]])
print("IoU =", box_iou(a, b)[0, 0], " expected 1/7 =", 1 / 7)

fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
ax = axes[0]
draw_box(ax, a[0], "tab:blue", label="A")
draw_box(ax, b[0], "tab:orange", label="B")
draw_box(ax, [5, 5, 10, 10], "tab:green", fill=True, alpha=0.4)
ax.set_xlim(-2, 17), ax.set_ylim(17, -2), ax.set_aspect("equal")
ax.set_title(f"IoU(A, B) = 25 / 175 = {box_iou(a, b)[0, 0]:.3f}")
shifts = np.linspace(0, 12, 121)
moved = np.stack([shifts, shifts * 0, shifts + 10, shifts * 0 + 10], axis=1)
axes[1].plot(shifts, box_iou(a, moved)[0], label="shift in x only")
moved_xy = np.stack([shifts, shifts, shifts + 10, shifts + 10], axis=1)
axes[1].plot(shifts, box_iou(a, moved_xy)[0], label="shift in x and y")
axes[1].axhline(0.6, color="gray", ls=":", label="0.6")
axes[1].set_xlabel("shift (pixels)"), axes[1].set_ylabel("IoU"), axes[1].legend()
axes[1].set_title("IoU of a 10x10 box with a shifted copy")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Sliding windows and non-maximum suppression
#
# Before R-CNN, detection slid **windows of several sizes** over the image, row by row and column
# by column, and classified each crop. Neighbouring windows overlap the same object and all score
# high, so every window size leaves a cluster of overlapping, high-scoring boxes per object;
# **non-maximum suppression** keeps only the local maxima.
#
# We replace the CNN classifier with a toy score on a synthetic image: for a window and an
# object *k* with `n_k` of its pixels inside the window,
# `score = max_k  (n_k / window area) * (n_k / object area)` — the window must be *full* of the
# object and cover *all* of it, which is an IoU-like criterion. Pixel counts in every window come
# from one integral image per object (a cumulative sum), so all windows are scored at once.

# %%
H = W = 64 if SMOKE else 96
yy, xx = np.mgrid[0:H, 0:W]
objects = np.zeros((H, W), dtype=np.int64)                       # 0 background, k = object k
objects[10:30, 8:28] = 1                                         # a 20x20 square
objects[(yy - 0.66 * H) ** 2 + (xx - 0.62 * W) ** 2 < (0.14 * H) ** 2] = 2  # a disc
objects[int(0.55 * H):int(0.55 * H) + 12, 4:20] = 3              # a 16x12 rectangle
num_objects = objects.max()

sizes = [(12, 12), (12, 16), (16, 16), (20, 20), (24, 24), (16, 24), (28, 28)]   # (height, width)
stride = 2
windows = []
for wh, ww in sizes:   # a loop over window *shapes* only; positions are vectorised
    ys, xs = np.mgrid[0:H - wh + 1:stride, 0:W - ww + 1:stride]
    windows.append(np.stack([xs, ys, xs + ww, ys + wh], axis=-1).reshape(-1, 4))
windows = np.concatenate(windows).astype(np.float64)

masks = objects[None] == np.arange(1, num_objects + 1)[:, None, None]   # (K, H, W)
integral = np.zeros((num_objects, H + 1, W + 1))
integral[:, 1:, 1:] = masks.cumsum(1).cumsum(2)
x1, y1, x2, y2 = windows.T.astype(np.int64)
inside = (integral[:, y2, x2] - integral[:, y1, x2] - integral[:, y2, x1] + integral[:, y1, x1])
purity = inside / box_area(windows)[None]
coverage = inside / masks.sum((1, 2))[:, None]
scores = (purity * coverage).max(axis=0)
print(f"{len(windows)} windows, {np.sum(scores > 0.5)} of them score > 0.5")

# %% [markdown]
# NMS, step by step:
#
# * sort all candidate boxes by score and take the best one;
# * go through the others and delete every box whose IoU with it exceeds the threshold;
# * take the best of the boxes still unprocessed and repeat, until none is left.
#
# `nms` has torchvision's semantics: equal scores keep the lower index first, and a box is
# suppressed only when its IoU is **strictly greater** than the threshold. The Python loop runs
# once per *block of kept boxes*, never over pairs; for spread-out boxes a second, fully
# vectorised solver takes over (see the module docstring).

# %%
print(inspect.getsource(nms))

# %%
cand = np.flatnonzero(scores > 0.5)
keep = cand[nms(windows[cand], scores[cand], iou_threshold=0.3)]
fig, axes = plt.subplots(1, 2, figsize=(10, 5))
for ax, idx, title in ((axes[0], cand, f"{len(cand)} windows with score > 0.5"),
                       (axes[1], keep, f"after NMS (IoU > 0.3 suppressed): {len(keep)} boxes")):
    ax.imshow(objects > 0, cmap="gray_r", alpha=0.5)
    for i in idx:
        draw_box(ax, windows[i], plt.cm.viridis(scores[i]), lw=1, alpha=0.8)
    ax.set_title(title)
    ax.set_xlim(0, W), ax.set_ylim(H, 0)
for i in keep:
    axes[1].text(windows[i, 0], windows[i, 1] - 1, f"{scores[i]:.2f}", color="k", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### A worked example, traced by hand
#
# Four candidates A, B, C, D for the same objects, with scores S1 < S2 < S3 < S4. Take D (best):
# keep it; C overlaps D by more than the threshold 0.6, so C is deleted. Of the rest, B is best:
# keep it; A overlaps B too much, delete it. Nothing is left: the result is **D, B**.

# %%
boxes_abcd = np.array([[50.0, 0, 70, 20],    # A
                       [52.0, 2, 72, 22],    # B
                       [1.0, 1, 21, 21],     # C
                       [0.0, 0, 20, 20]])    # D
scores_abcd = np.array([0.6, 0.7, 0.8, 0.9])   # S1 < S2 < S3 < S4
print("IoU(C, D) =", box_iou(boxes_abcd[2:3], boxes_abcd[3:4])[0, 0],
      " IoU(A, B) =", box_iou(boxes_abcd[0:1], boxes_abcd[1:2])[0, 0])
kept_abcd = nms(boxes_abcd, scores_abcd, 0.6)
print("kept:", ["ABCD"[i] for i in kept_abcd])

# %% [markdown]
# **Per-class NMS.** A detector runs NMS *per category*: a dog box must not suppress the person
# it overlaps. `batched_nms(boxes, scores, idxs, t)` does that, with torchvision's result — it
# simply ignores pairs from different categories.

# %%
print(batched_nms(boxes_abcd, scores_abcd, np.array([0, 0, 1, 0]), 0.6),
      "<- C is in another class than D, so it survives")

# %% [markdown]
# ## 3. Encoding a box relative to another: the regression deltas
#
# A network does not output box corners; it outputs how to **move and rescale** a reference box
# `p` (an anchor or a proposal) onto the object `g` (R-CNN, appendix C):
#
# $$t_x = w_x \frac{g_x - p_x}{p_w},\quad t_y = w_y \frac{g_y - p_y}{p_h},\quad
#   t_w = w_w \log\frac{g_w}{p_w},\quad t_h = w_h \log\frac{g_h}{p_h}$$
#
# with centres `(x1 + w/2, y1 + h/2)`. Dividing by the reference size makes the targets
# independent of the object's scale; the log makes growing and shrinking symmetric. The weights
# only rescale the targets to unit-ish size: `(1, 1, 1, 1)` for the RPN, `(10, 10, 5, 5)` for the
# box head (whose proposals are already close to the objects, so the raw deltas are small).
# Decoding clamps `t_w, t_h` at `log(1000/16)` so that `exp` cannot explode early in training.

# %%
print(inspect.getsource(encode_boxes))
print(inspect.getsource(decode_boxes))

# %%
p = np.array([[20.0, 20.0, 50.0, 40.0]])     # a proposal (30 x 20, centre (35, 30))
g = np.array([[28.0, 14.0, 68.0, 44.0]])     # its object (40 x 30, centre (48, 29))
for name, wts in (("RPN (1,1,1,1)", RPN_BOX_WEIGHTS), ("head (10,10,5,5)", HEAD_BOX_WEIGHTS)):
    d = encode_boxes(g, p, wts)
    print(f"{name:18s} deltas = {np.round(d[0], 4)}   decoded back = {decode_boxes(d, p, wts)[0]}")

d = encode_boxes(g, p)
fig, ax = plt.subplots(figsize=(5, 3.6))
draw_box(ax, p[0], "tab:blue", label="proposal p")
draw_box(ax, g[0], "tab:green", label="object g")
for f in (0.33, 0.66):
    draw_box(ax, decode_boxes(d * f, p)[0], "gray", lw=1, alpha=0.6)
ax.annotate("", xy=(48, 29), xytext=(35, 30), arrowprops=dict(arrowstyle="->"))
ax.set_xlim(10, 75), ax.set_ylim(50, 5), ax.set_aspect("equal")
ax.set_title("decode(f * deltas, p) for f = 1/3, 2/3, 1")
plt.show()

# %% [markdown]
# ## Check
#
# The assertions below fail if `nms` or the box coder is wrong: the worked example must keep
# exactly D then B; every object of the synthetic image must end up with exactly one kept
# window, and that window must overlap the object's true box well; decoding must invert encoding.

# %%
assert kept_abcd.tolist() == [3, 1], kept_abcd            # hand-traced: D, then B
true_boxes = np.array([[xx[m].min(), yy[m].min(), xx[m].max() + 1, yy[m].max() + 1]
                       for m in masks], dtype=np.float64)
iou_kept = box_iou(windows[keep], true_boxes)              # (kept, objects)
assert len(keep) == num_objects, (len(keep), num_objects)
assert sorted(iou_kept.argmax(axis=1).tolist()) == list(range(num_objects))
assert iou_kept.max(axis=0).min() > 0.6, iou_kept
np.testing.assert_allclose(decode_boxes(encode_boxes(g, p, HEAD_BOX_WEIGHTS), p, HEAD_BOX_WEIGHTS), g)
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Change the NMS threshold from 0.3 to 0.6 and 0.1, and the score threshold from 0.5 to 0.3,
#    in the sliding-window example. Which spurious boxes survive at 0.6? What goes wrong at very
#    low thresholds when two objects are close together?
# 2. Write a plain-Python NMS (two nested loops, as in the step-by-step description) and compare its
#    output and its run time with `nms` on 2,000 random boxes.
# 3. *Soft-NMS* does not delete an overlapping box but multiplies its score by `exp(-IoU² / σ)`.
#    Implement it on top of `box_iou` and compare the kept windows.
# 4. Show that `encode_boxes` is invariant to translating and scaling both boxes together. Which
#    of the four deltas change if only the proposal is scaled?
# 5. What IoU does a 10x10 box have with itself shifted by one pixel diagonally? With a 20x20
#    box? Why do small objects make IoU thresholds harsh?

# %% [markdown]
# ## Summary
#
# * A box is `(x1, y1, x2, y2)` in continuous pixel coordinates; `box_iou` compares all pairs.
# * NMS keeps the best box and deletes its overlaps above a threshold (per class: `batched_nms`).
# * A network regresses deltas `(tx, ty, tw, th)` that move a reference box onto an object.
