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
# # Chapter 03 — RoIPool vs RoIWarp vs RoIAlign
#
# The second stage of a two-stage detector looks at each proposal (a *region of interest*, RoI)
# through a fixed-size window of backbone features — `7 × 7` for the box head, `14 × 14` for the
# mask head. The RoI is given in image pixels; the features live on a grid `stride` times coarser.
# How we cut a `7 × 7` grid out of a fractional rectangle on that coarse grid is the whole story
# of this chapter:
#
# * **RoIPool** (Fast R-CNN) rounds the RoI to whole feature pixels, cuts it into `7 × 7` bins
#   whose edges are rounded to whole pixels again, and takes the **max** of each bin;
# * **RoIWarp** (MNC) rounds the RoI the same way but then reads each bin by **bilinear
#   sampling** (averaged or max-pooled);
# * **RoIAlign** (Mask R-CNN) rounds **nothing**: bins are fractional, a few points per bin are
#   read by bilinear interpolation and averaged (or max-pooled).
#
# The Mask R-CNN paper (He et al. 2017, Table 2c) lays the three out as two yes/no questions and
# one choice — *align?* (no rounding of the RoI), *bilinear?* (fractional sample points), and
# *max or average* per bin:
#
# | layer | align? | bilinear? | per bin |
# |---|---|---|---|
# | RoIPool | no | no | max |
# | RoIWarp | no | yes | max or avg |
# | RoIAlign | yes | yes | max or avg |
#
# This chapter writes each op as slow loops next to the fast library code, measures each one
# against the exact answer to the question *it* asks, and looks at the backward pass.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.model.multilevel_roi import assign_fpn_levels
from mrcnn_ref.ops import roi_align as roi_align_module
from mrcnn_ref.ops import roi_reference
from mrcnn_ref.ops.roi_align import (axis_sample_points, bilinear_sample, roi_align, roi_align_backward,
                                     roi_align_forward, roi_align_max, roi_align_max_backward,
                                     roi_align_max_forward)
from mrcnn_ref.ops.roi_compare import compare_roi_ops, exact_bin_means, linear_ramp_features
from mrcnn_ref.ops.roi_pool import _bin_edges, roi_pool, roi_pool_backward, roi_pool_forward, round_half_away
from mrcnn_ref.ops.roi_warp import roi_warp, roi_warp_backward, roi_warp_forward
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
rng = np.random.default_rng(0)
print("smoke mode:", SMOKE)

# %% [markdown]
# In the pipeline the RoI operation sits between the proposals and the two heads: it is the only
# place where the second stage reads the feature pyramid.

# %%
ax = draw_pipeline(highlight="roi_op")
ax.set_title("this chapter: the RoI operation (RoIAlign in Mask R-CNN)")
plt.show()

# %% [markdown]
# ## Which stride?
#
# Fast R-CNN pools VGG16's last convolution, `conv5_3`, which comes after four `2 × 2`
# max-poolings: its stride is `2⁴ = 16`. (VGG16's fifth pooling, which would make it 32, is the
# layer RoIPool replaces.) The Mask R-CNN paper's RoI-layer comparison uses a ResNet's `C4`
# features, also at stride 16. Mask R-CNN with a feature pyramid (FPN) has levels `P2`–`P5` at
# strides 4 to 32 and reads each RoI from one level chosen by the RoI's size: large boxes go to
# the coarse levels. The classic worked example below uses stride 32 — which is where FPN's rule
# sends a box that large.

# %%
vgg_conv5_3_stride = 2 ** 4              # four 2x2 max-poolings before conv5_3
image, obj, pooled = 800, 665, 7
level = int(assign_fpn_levels(np.array([[0.0, 0.0, obj, obj]]))[0])
stride = 2 ** level
print(f"VGG16 conv5_3 (what Fast R-CNN's RoIPool reads): stride 2^4 = {vgg_conv5_3_stride}")
print(f"FPN level of a {obj} x {obj} box: P{level}, stride 2^{level} = {stride}")

# %% [markdown]
# ## RoIPool's two roundings, in one example
#
# An `800 × 800` image at stride 32 gives a map `800 / 32` pixels on a side; an object of
# `665 × 665` pixels covers `665 / 32` feature pixels. RoIPool rounds that to whole pixels, and
# then rounds the bins (`7` per side) again; RoIAlign keeps both fractions:

# %%
print(f"feature map: {image} / {stride} = {image / stride:g}  ->  {image // stride} x {image // stride}")
roi = obj / stride
print(f"RoI on the map: {obj} / {stride} = {roi:.2f}")
q_bin = int(int(roi) / pooled)
print(f"RoIPool (truncating): quantise {roi:.2f} -> {int(roi)};  bins {int(roi)} / {pooled} = "
      f"{int(roi) / pooled:.2f} -> quantised to {q_bin} x {q_bin}")
print(f"RoIAlign: keep {roi:.2f};  bins {roi:.2f} / {pooled} = {roi / pooled:.2f} x {roi / pooled:.2f}, "
      f"each read at 2 x 2 = 4 bilinear sample points, then max or average")
lost = roi - int(roi)
print(f"what RoIPool's first rounding throws away: {lost:.2f} feature px = {lost * stride:.0f} image px")
bin_lost = int(roi) / pooled - q_bin
print(f"and the bin rounding: {bin_lost:.2f} feature px per bin = {bin_lost * stride:.0f} image px")

# %% [markdown]
# This arithmetic truncates, the simplest way to tell the story. Real RoIPool (Fast R-CNN's Caffe
# layer, torchvision) is slightly different: it **rounds** each corner to the nearest feature
# pixel (halves away from zero), counts pixels inclusively (`size = end - start + 1`), and gives
# bin `p` the pixel range `[floor(p·bin), ceil((p+1)·bin))`, so bins differ in size by a pixel
# and neighbours may overlap. Here is the same box at the top left of the image, in our
# implementation:

# %%
x1, x2 = np.array([0.0]), np.array([float(obj)])
start, end = round_half_away(x1 / stride)[0], round_half_away(x2 / stride)[0]
print(f"corners {x1[0]:g}, {x2[0]:g} px -> {x1[0] / stride:.2f}, {x2[0] / stride:.2f} -> rounded {start:g}, {end:g};"
      f" size = {end - start + 1:g} pixels")
lo, hi = _bin_edges(x1, x2, 1 / stride, pooled, image // stride, np)
print("RoIPool bins (pixel ranges):", [f"[{a},{b})" for a, b in zip(lo[0], hi[0])])
coords, grid = axis_sample_points(x1 / stride, (x2 - x1) / stride, pooled, 2, np)
print("RoIAlign sample x-coordinates (2 per bin):\n", np.round(coords[0], 3))
print(inspect.getsource(_bin_edges))
print(inspect.getsource(axis_sample_points))

# %% [markdown]
# ## Bilinear interpolation
#
# RoIAlign reads a feature map at fractional points. The classic worked example: an image of
# `1000 × 800` is resized to `700 × 700`; which value goes to the resized pixel `(400, 400)`? It
# maps back to `(x, y) = (400 · 1000/700, 400 · 800/700)`, between the four pixels `(571, 457)`,
# `(572, 457)`, `(571, 458)`, `(572, 458)` with values 50, 100, 150, 200. Bilinear interpolation
# weights each corner by the area of the opposite sub-rectangle; with `dx`, `dy` the fractional
# parts of `x` and `y`:
# `f = [1 − dx, dx] · [[50, 150], [100, 200]] · [1 − dy, dy]ᵀ`.
# The write-up evaluates this with weights rounded to five digits.
#
# Our library does this read with the same code RoIAlign uses inside (`_bilinear_axis`: weights
# and neighbours along one axis, with the boundary rules of torchvision):

# %%
print(inspect.getsource(roi_align_module._bilinear_axis))
print(inspect.getsource(bilinear_sample))

# %%
worked_answer = 85.7145          # the write-up's value, computed with 5-digit weights
x_src, y_src = 400 * 1000 / 700, 400 * 800 / 700
dx, dy = x_src - 571, y_src - 457
print(f"source point: (x, y) = ({x_src:.5f}, {y_src:.5f});  dx = {dx:.5f}, dy = {dy:.5f}")
corners = np.array([[50.0, 100.0],     # row y=457: x=571, x=572
                    [150.0, 200.0]])   # row y=458
v_bilinear = float(bilinear_sample(corners, dy, dx))
# the formula above with its 5-digit weights
wx = np.round(np.array([1 - dx, dx]), 5)
wy = np.round(np.array([1 - dy, dy]), 5)
v_rounded = wx @ np.array([[50, 150], [100, 200]]) @ wy
# and through roi_align itself: a 1-pixel RoI centred on the point, 1 sample per bin
fmap = corners[None, None]
box = np.array([[0, dx - 0.5, dy - 0.5, dx + 0.5, dy + 0.5]])
v_roi_align = float(roi_align(fmap, box, 1, sampling_ratio=1)[0, 0, 0, 0])
print(f"weights x {wx}, y {wy}")
print(f"bilinear_sample: {v_bilinear:.5f}   5-digit weights: {v_rounded:.4f}   "
      f"roi_align: {v_roi_align:.5f}   (write-up: {worked_answer})")

# %% [markdown]
# ## The definitions as loops
#
# Before the fast code, the definitions themselves, one scalar at a time
# (`mrcnn_ref.ops.roi_reference`): loops over RoIs, bins, channels and sample points, with
# torchvision's rules. RoIPool: round the corners (`round(x · scale)`, halves away from zero),
# count pixels inclusively, bin edges by floor and ceil, clip to the map, max with the first
# maximum winning ties, an empty bin gives 0:

# %%
print(inspect.getsource(roi_reference._pool_bins))
print(inspect.getsource(roi_reference.roi_pool_reference))

# %% [markdown]
# RoIAlign: no rounding; `grid × grid` sample points per bin (`sampling_ratio`, or
# `ceil(bin size)` when adaptive) at the centres of a regular sub-grid; each sample reads its 4
# neighbours bilinearly (nothing outside `[-1, H] × [-1, W]`, clamped at the last row and
# column); the bin is the mean (or the max) of its samples. RoIWarp is the same on the rounded
# box:

# %%
print(inspect.getsource(roi_reference.bilinear_neighbours))
print(inspect.getsource(roi_reference._align_geometry))
print(inspect.getsource(roi_reference._align_bins))
print(inspect.getsource(roi_reference._bilinear_pool))

# %% [markdown]
# The loops and the vectorised ops must agree on random inputs — boxes partly outside the map,
# fixed and adaptive sampling, both `aligned` settings, forward and backward — to the last few
# bits of a float64 (`atol = 1e-12`):

# %%
def random_rois(rng, n_img, H, W, scale, k):
    xs = rng.uniform(-2 / scale, (W + 2) / scale, (k, 2))
    ys = rng.uniform(-2 / scale, (H + 2) / scale, (k, 2))
    return np.stack([rng.integers(0, n_img, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)


ref_x = rng.standard_normal((2, 2, 9, 11))
ref_boxes = random_rois(rng, 2, 9, 11, 0.5, 6)
ref_d = rng.standard_normal((6, 2, 7, 7))
worst = {}
out, cache = roi_pool_forward(ref_x, ref_boxes, 7, 0.5)
r_out, r_arg = roi_reference.roi_pool_reference(ref_x, ref_boxes, 7, 0.5)
worst["RoIPool"] = max(np.abs(out - r_out).max(),
                       np.abs(roi_pool_backward(ref_d, cache)
                              - roi_reference.roi_pool_reference_backward(ref_d, r_arg, ref_boxes, ref_x.shape)).max())
for sr in (2, -1):
    for aligned in (False, True):
        for mode, fwd, bwd in (("avg", roi_align_forward, roi_align_backward),
                               ("max", roi_align_max_forward, roi_align_max_backward)):
            out, cache = fwd(ref_x, ref_boxes, 7, 0.5, sr, aligned)
            r_out = roi_reference.roi_align_reference(ref_x, ref_boxes, 7, 0.5, sr, aligned, mode)
            r_grad = roi_reference.roi_align_reference_backward(ref_d, ref_x, ref_boxes, 7, 0.5, sr, aligned, mode)
            worst[f"RoIAlign-{mode}, sampling {sr}, aligned={aligned}"] = max(
                np.abs(out - r_out).max(), np.abs(bwd(ref_d, cache) - r_grad).max())
    out, cache = roi_warp_forward(ref_x, ref_boxes, 7, 0.5, sr)
    worst[f"RoIWarp-avg, sampling {sr}"] = max(
        np.abs(out - roi_reference.roi_warp_reference(ref_x, ref_boxes, 7, 0.5, sr)).max(),
        np.abs(roi_warp_backward(ref_d, cache)
               - roi_reference.roi_warp_reference_backward(ref_d, ref_x, ref_boxes, 7, 0.5, sr)).max())
for name, err in worst.items():
    print(f"{name:<40} largest |vectorised - loops|, forward and backward: {err:.1e}")
assert max(worst.values()) <= 1e-12, worst

# %% [markdown]
# ## How RoIAlign is computed here
#
# The loops above are far too slow for training. A sample's bilinear weights are a product of a
# *row* weight and a *column* weight, and so is "is the sample inside the map". So a whole
# RoIAlign bin — the average over its grid of samples — is `Ay[p] · F · Ax[q]ᵀ`, where `Ay`
# (`PH × H`) holds each output row's averaged row weights and `Ax` (`PW × W`) the column weights.
# For RoI `k` the whole `PH × PW` output of channel `c` is `Ay[k] @ F[b, c] @ Ax[k].T`: two
# matrix products, and the backward pass is their transpose. The implementation builds `Ay`/`Ax`
# for all RoIs at once with one scatter-add, then either multiplies with the whole map (dense
# path, best when RoIs are large compared with the map) or gathers only the window of pixels
# each RoI touches (window path, best on large maps). (RoIPool's fast path is a range-maximum
# table over the map; its module docstring explains it.)

# %%
print(inspect.getsource(roi_align_module._window_matrices))
print(inspect.getsource(roi_align_module._dense_forward))
print(inspect.getsource(roi_align_forward))

# %% [markdown]
# ## Bins and sample points, drawn
#
# A `12 × 12` feature map (stride 32) and one RoI; `3 × 3` output so the drawing stays legible.
# In these plots pixel `(i, j)` is the square centred on `(j, i)` (as `imshow` draws it) — the
# coordinate RoIAlign with `aligned=False` reads it at. RoIPool's bins are unions of whole pixels
# (shaded), RoIWarp samples a snapped rectangle, RoIAlign samples the true one (dashed).

# %%
H = W = 12
feat = rng.standard_normal((1, 1, H, W))
box_img = np.array([37.0, 52.0, 300.0, 330.0])   # x1, y1, x2, y2 in image pixels
s, P, SR = 1 / 32, 3, 2
fb = box_img * s
fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
for ax, name in zip(axes, ["RoIPool", "RoIWarp", "RoIAlign"]):
    ax.imshow(feat[0, 0], cmap="Greys", alpha=0.35)
    ax.add_patch(Rectangle((fb[0], fb[1]), fb[2] - fb[0], fb[3] - fb[1], fill=False, ls="--", color="k", lw=1.5))
    ax.set_title(name)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
colors = plt.cm.tab10(np.arange(P * P) % 10)
hs, he = _bin_edges(np.array([box_img[1]]), np.array([box_img[3]]), s, P, H, np)
ws, we = _bin_edges(np.array([box_img[0]]), np.array([box_img[2]]), s, P, W, np)
for p in range(P):
    for q in range(P):
        axes[0].add_patch(Rectangle((ws[0, q] - 0.5, hs[0, p] - 0.5), we[0, q] - ws[0, q], he[0, p] - hs[0, p],
                                    color=colors[p * P + q], alpha=0.35, lw=0))
for ax, (x0, y0, xe, ye) in [(axes[1], round_half_away(fb)), (axes[2], fb)]:
    bw, bh = max(xe - x0, 1) / P, max(ye - y0, 1) / P
    for t in range(P + 1):
        ax.plot([x0 + t * bw] * 2, [y0, y0 + P * bh], color="tab:blue", lw=1)
        ax.plot([x0, x0 + P * bw], [y0 + t * bh] * 2, color="tab:blue", lw=1)
    cy, _ = axis_sample_points(np.array([y0]), np.array([max(ye - y0, 1)]), P, SR, np)
    cx, _ = axis_sample_points(np.array([x0]), np.array([max(xe - x0, 1)]), P, SR, np)
    yy, xx = np.meshgrid(cy.ravel(), cx.ravel(), indexing="ij")
    ax.plot(xx.ravel(), yy.ravel(), "o", color="tab:red", ms=3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Measuring the error: a ramp with known answers
#
# To compare the ops numerically we need the right answer. Take features that sample a linear
# ramp `f(x, y) = a·x + b·y + c` at pixel centres: feature pixel `(i, j)` covers the unit square
# `[j, j+1] × [i, i+1]` of the map (image pixels `[j·stride, (j+1)·stride)`) and holds
# `f(j + 0.5, i + 0.5)`, its centre — Detectron2's convention, the one `aligned=True` follows.
# For a bin `[x0, x1] × [y0, y1]` of the (continuous) RoI both answers are known exactly:
#
# * the **mean** of `f` over the bin is `f` at the bin centre (`exact_bin_means`);
# * the **max** of `f` over the bin is `f` at the corner where it is largest:
#   the mean `+ |a|·(x1 − x0)/2 + |b|·(y1 − y0)/2`.
#
# Each op is scored against the answer to the question it asks: the max ops (RoIPool,
# RoIWarp-max, RoIAlign-max) against the bin's continuous **max**, the average ops (RoIWarp,
# RoIAlign) against the bin's continuous **mean**. (Scoring a max op against the mean measures
# mostly max − mean — half a bin's rise of the ramp — not where the op reads.)
#
# All boxes have the same size and random positions. Then every error splits into a **bias**
# (the mean signed error: what the op does wherever the box lies) and a **spread** (the standard
# deviation of the signed error over boxes: what changes with where the box falls relative to
# the pixel grid — the quantisation). `compare_roi_ops` runs the ops it knows; RoIWarp-max and
# RoIAlign-max with `aligned=False` we run ourselves (RoIWarp-max is RoIAlign-max on the rounded
# box, which is how `roi_warp` defines the average version).

# %%
print(inspect.getsource(linear_ramp_features))
print(inspect.getsource(compare_roi_ops))

# %%
Hr = Wr = 40
a, b, c = 1.0, 0.5, 0.0
stride_r, side, P, SR = 16, 150.0, 7, 2          # a 150 x 150 box at stride 16: 9.375 feature px
s_r = 1 / stride_r
K = 50 if SMOKE else 500
ramp = linear_ramp_features(1, Hr, Wr, a, b, c)


def random_boxes(rng, k, side, stride, H, W):
    """k boxes side x side (image px) at random positions, one feature pixel away from the border."""
    x0 = rng.uniform(stride, (W - 1) * stride - side, k)
    y0 = rng.uniform(stride, (H - 1) * stride - side, k)
    return np.stack([np.zeros(k), x0, y0, x0 + side, y0 + side], 1)


def ramp_targets(boxes, P, s):
    """The exact continuous mean ("avg") and max ("max") of the ramp over every bin: (K, 1, P, P)."""
    mean = exact_bin_means(boxes, P, s, a, b, c)
    half_w = (boxes[:, 3] - boxes[:, 1]) * s / P / 2
    half_h = (boxes[:, 4] - boxes[:, 2]) * s / P / 2
    return {"avg": mean, "max": mean + (abs(a) * half_w + abs(b) * half_h)[:, None, None, None]}


def snap(boxes, s):
    """The rounded RoI in feature coordinates (RoIWarp's first step): use with spatial_scale 1."""
    out = boxes.copy()
    out[:, 1:] = round_half_away(boxes[:, 1:] * s)
    return out


def ramp_outputs(boxes):
    """Every row of the paper's table (and aligned=True RoIAlign) on the ramp:
    [(layer, align?, bilinear?, per bin, output)]."""
    t = ramp_targets(boxes, P, s_r)
    mx = compare_roi_ops(ramp, boxes, P, s_r, exact=t["max"], sampling_ratio=SR, ops=("roi_pool", "roi_align_max"))
    av = compare_roi_ops(ramp, boxes, P, s_r, exact=t["avg"], sampling_ratio=SR,
                         ops=("roi_warp", "roi_align", "roi_align_aligned"))
    return t, [("RoIPool", "no", "no", "max", mx["roi_pool"]["output"]),
               ("RoIWarp", "no", "yes", "max", roi_align_max(ramp, snap(boxes, s_r), P, 1.0, SR, False)),
               ("RoIWarp", "no", "yes", "avg", av["roi_warp"]["output"]),
               ("RoIAlign", "yes", "yes", "max", roi_align_max(ramp, boxes, P, s_r, SR, False)),
               ("RoIAlign", "yes", "yes", "avg", av["roi_align"]["output"]),
               ("RoIAlign aligned=True", "yes", "yes", "max", mx["roi_align_max"]["output"]),
               ("RoIAlign aligned=True", "yes", "yes", "avg", av["roi_align_aligned"]["output"])]


def score(out, target):
    e = out - target
    return {"mean_abs": float(np.abs(e).mean()), "max_abs": float(np.abs(e).max()),
            "bias": float(e.mean()), "spread": float(e.std())}


boxes = random_boxes(rng, K, side, stride_r, Hr, Wr)
targets, rows = ramp_outputs(boxes)
table, outputs = {}, {}
print(f"{K} boxes of {side:g} x {side:g} px at stride {stride_r} on a {Hr}x{Wr} ramp f = {a}x + {b}y + {c} "
      f"(feature px); {P}x{P} bins, {SR}x{SR} samples")
print(f"{'layer':<23}{'align?':<8}{'bilinear?':<11}{'bin':<5}{'target':<16}"
      f"{'mean|err|':>10}{'max|err|':>10}{'bias':>9}{'spread':>9}")
for layer, align, bilinear, agg, out in rows:
    target = "continuous max" if agg == "max" else "continuous mean"
    outputs[(layer, agg)] = out
    table[(layer, agg)] = r = score(out, targets[agg])
    print(f"{layer:<23}{align:<8}{bilinear:<11}{agg:<5}{target:<16}"
          f"{r['mean_abs']:>10.4f}{r['max_abs']:>10.4f}{r['bias']:>+9.4f}{r['spread']:>9.4f}")

# %% [markdown]
# Reading the table:
#
# * **Spread** is what rounding does: only the layers that round the RoI (RoIPool, RoIWarp) have
#   one. RoIAlign's error is the same for every box, wherever it lies — it follows the box
#   exactly. This box-to-box jitter is the *misalignment* the Mask R-CNN paper removes.
# * **Bias** is a fixed offset, the same for every box, set by each op's own rules. With
#   `aligned=False` RoIAlign reads pixel `i` as the point `i`, half a pixel away from the
#   centre it stands for, so the average is off by `0.5·(a + b)`; with `aligned=True` it is exact.
#   RoIAlign-max's largest sample sits half a sub-bin inside the bin's high corner, so it falls
#   short of the continuous max by `(a·bin_w + b·bin_h) / (2·sampling_ratio)`; with
#   `aligned=False` the half-pixel offset partly cancels that. RoIPool's bins reach past the
#   true ones (the inclusive end pixel, the outward `ceil`).
#
# The cell below checks the two formulas and shows what scoring RoIPool against the wrong target
# would have said:

# %%
bin_w = bin_h = side * s_r / P
pred_max_bias = -(a * bin_w + b * bin_h) / (2 * SR)
pred_shift = 0.5 * (a + b)
pool_vs_mean = score(outputs[("RoIPool", "max")], targets["avg"])
print(f"bins {bin_w:.4f} feature px; RoIAlign-max (aligned=True) bias: predicted {pred_max_bias:+.4f}, "
      f"measured {table[('RoIAlign aligned=True', 'max')]['bias']:+.4f}")
print(f"RoIAlign-avg (aligned=False) bias: predicted 0.5(a + b) = {pred_shift:+.4f}, "
      f"measured {table[('RoIAlign', 'avg')]['bias']:+.4f}")
print(f"RoIPool scored against the bin MEAN: mean |err| {pool_vs_mean['mean_abs']:.4f}; "
      f"against the bin MAX (its own target): {table[('RoIPool', 'max')]['mean_abs']:.4f}")

# %% [markdown]
# (Does half a pixel matter once a model is trained on it? For the shapes preset the half-pixel
# shift helped a little in a two-seed comparison — `docs/recipe.md` has the measurement — so the
# preset uses it: `roi_aligned` in `mrcnn_ref/model/config.py`.)
#
# ## Error as the box slides across a pixel
#
# Slide one box right by a fraction of a feature pixel and follow the mean signed error of its
# bins. RoIAlign's error stays flat (at its bias); RoIPool's and RoIWarp's jump whenever a
# corner's rounding flips: a box that moves by less than a pixel on the map (up to a whole
# stride in image pixels) can give the same pooled features, and a tiny move can change them a
# lot.

# %%
shifts = np.linspace(0, 2, 21 if SMOKE else 81)
base = np.array([0, 3.2, 4.1, 21.7, 17.3]) * stride_r
slide = {}
for d in shifts:
    bx = (base + np.array([0, d, 0, d, 0]) * stride_r)[None]
    t, rws = ramp_outputs(bx)
    for layer, _, _, agg, out in rws:
        slide.setdefault((layer, agg), []).append(float((out - t[agg]).mean()))
layer_color = {"RoIPool": "tab:blue", "RoIWarp": "tab:orange", "RoIAlign": "tab:green",
               "RoIAlign aligned=True": "tab:red"}
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for (layer, agg), e in slide.items():
    ax = axes[0] if agg == "max" else axes[1]
    ax.plot(shifts, e, label=layer, color=layer_color[layer], ls="--" if "aligned" in layer else "-")
for ax, agg in zip(axes, ["max (vs continuous max)", "avg (vs continuous mean)"]):
    ax.set_xlabel("box shift (feature pixels)")
    ax.set_title(f"per-bin {agg}")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend()
axes[0].set_ylabel("mean signed error over the bins")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Quantisation error in image pixels
#
# How far does RoIPool's rounding move a bin? Compare its bin edges with the same formulas
# without any rounding (`start = x1·scale`, `size = end − start + 1`, edges at `start + p·size/7`),
# for many random boxes, and convert the displacement back to image pixels (× stride). RoIWarp
# rounds only the corners, so its bin edges move less; RoIAlign's do not move at all. The right
# panel divides by the bin's width in image pixels (box size / 7): the same displacement is a
# small fraction of a large box's bin and more than a whole bin of a small box at a coarse
# stride.

# %%
strides = [4, 8, 16, 32]
sizes = np.geomspace(16, 512, 12 if SMOKE else 30)
M = 300 if SMOKE else 3000
FAR = 10 ** 9                     # a map so large that nothing is clipped: rounding only


def edge_displacement(x1, x2, stride, P=7):
    """Mean |edge - unrounded edge| over all bin edges, in image pixels: (RoIPool, RoIWarp)."""
    sc = 1 / stride
    lo, hi = _bin_edges(x1, x2, sc, P, FAR, np)                       # RoIPool's pixel ranges
    start, end = x1 * sc, x2 * sc
    size = np.maximum(end - start + 1, 1)
    p = np.arange(P)
    lo_c = start[:, None] + p * (size / P)[:, None]
    hi_c = start[:, None] + (p + 1) * (size / P)[:, None]
    pool = np.concatenate([np.abs(lo - lo_c), np.abs(hi - hi_c)], 1).mean() * stride
    rs, re = round_half_away(start), round_half_away(end)              # RoIWarp: corners only
    q = np.arange(P + 1)
    warp_edges = rs[:, None] + q * (np.maximum(re - rs, 1) / P)[:, None]
    true_edges = start[:, None] + q * (np.maximum(end - start, 1) / P)[:, None]
    warp = np.abs(warp_edges - true_edges).mean() * stride
    return pool, warp


disp = {}
for st in strides:
    for sz in sizes:
        x1 = rng.uniform(0, 1024, M)
        x2 = x1 + sz * np.exp(rng.uniform(-0.1, 0.1, M))                # sizes spread +-10 %
        disp[st, sz] = edge_displacement(x1, x2, st)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for i, st in enumerate(strides):
    col = plt.cm.viridis(i / (len(strides) - 1))
    pool = np.array([disp[st, sz][0] for sz in sizes])
    warp = np.array([disp[st, sz][1] for sz in sizes])
    axes[0].plot(sizes, pool, color=col)
    axes[0].plot(sizes, warp, color=col, ls="--")
    axes[1].plot(sizes, pool / (sizes / 7), color=col, label=f"RoIPool, stride {st}")
    axes[1].plot(sizes, warp / (sizes / 7), color=col, ls="--", label=f"RoIWarp, stride {st}")
for ax in axes:
    ax.set_xscale("log")
    ax.set_xticks([16, 32, 64, 128, 256, 512], labels=["16", "32", "64", "128", "256", "512"])
    ax.minorticks_off()
    ax.set_xlabel("box size (image px)")
axes[0].set_ylabel("mean bin-edge displacement (image px)")
axes[0].set_ylim(0, None)
axes[1].set_ylabel("... in bin widths (box size / 7)")
axes[1].set_yscale("log")
axes[1].axhline(1, color="k", lw=0.5)
axes[1].legend(fontsize=8, loc="lower left")
axes[0].set_title("bin edges moved by rounding (solid RoIPool, dashed RoIWarp)")
axes[1].set_title("the same, relative to the bin")
plt.tight_layout()
plt.show()
mean_disp = {st: [np.mean([disp[st, sz][i] for sz in sizes]) for i in (0, 1)] for st in strides}
print("mean bin-edge displacement: image px, px / stride, and RoIPool's in bin widths for the smallest and "
      "largest box")
print(f"{'stride':>6}{'RoIPool px':>12}{'/ stride':>10}{'RoIWarp px':>12}{'/ stride':>10}"
      f"{f'bins, {sizes[0]:.0f} px':>16}{f'bins, {sizes[-1]:.0f} px':>16}")
for st in strides:
    pool, warp = mean_disp[st]
    print(f"{st:>6}{pool:>12.2f}{pool / st:>10.2f}{warp:>12.2f}{warp / st:>10.2f}"
          f"{disp[st, sizes[0]][0] / (sizes[0] / 7):>16.2f}{disp[st, sizes[-1]][0] / (sizes[-1] / 7):>16.2f}")

# %% [markdown]
# The dips are box sizes for which RoIPool's pixel count (`end − start + 1`) is often a
# multiple of 7: then its bins are whole pixels and need no second rounding.

# %% [markdown]
# ## The backward pass
#
# All these ops are linear in the features once the choice of pixels is made, so the gradient of
# one output bin is a map over the feature pixels: which pixels did this bin read, and with what
# weight? RoIPool read one pixel that mattered, its argmax: the whole gradient goes there.
# RoIAlign-avg read each sample's 4 bilinear neighbours: the gradient spreads over up to
# `4 × grid²` pixels with weights summing to 1 (when all samples lie inside the map).
# RoIAlign-max passes it to the 4 neighbours of its largest sample. Below: one bin of a `3 × 3`
# output at stride 16, from the library's backward, checked against the loops.

# %%
Hg = Wg = 14
feat_g = rng.standard_normal((1, 1, Hg, Wg))
box_g = np.array([[0, 37.0, 52.0, 171.0, 190.0]])      # image px, stride 16
s_g, Pg, bin_pq = 1 / 16, 3, (1, 1)
dout = np.zeros((1, 1, Pg, Pg))
dout[0, 0][bin_pq] = 1.0
grad_maps = {}
out, cache = roi_pool_forward(feat_g, box_g, Pg, s_g)
grad_maps["RoIPool (max)"] = roi_pool_backward(dout, cache)[0, 0]
_, arg_ref = roi_reference.roi_pool_reference(feat_g, box_g, Pg, s_g)
out, cache = roi_align_max_forward(feat_g, box_g, Pg, s_g, SR)
grad_maps["RoIAlign-max"] = roi_align_max_backward(dout, cache)[0, 0]
out, cache = roi_align_forward(feat_g, box_g, Pg, s_g, SR)
grad_maps["RoIAlign (avg)"] = roi_align_backward(dout, cache)[0, 0]
ref_maps = {"RoIAlign-max": roi_reference.roi_align_reference_backward(dout, feat_g, box_g, Pg, s_g, SR,
                                                                      mode="max")[0, 0],
            "RoIAlign (avg)": roi_reference.roi_align_reference_backward(dout, feat_g, box_g, Pg, s_g, SR)[0, 0]}
hs, he = _bin_edges(box_g[:, 2], box_g[:, 4], s_g, Pg, Hg, np)
ws, we = _bin_edges(box_g[:, 1], box_g[:, 3], s_g, Pg, Wg, np)
fbg = box_g[0, 1:] * s_g                                   # aligned=False: pixel i is the point i
bw_g, bh_g = (fbg[2] - fbg[0]) / Pg, (fbg[3] - fbg[1]) / Pg
p, q = bin_pq
cy, _ = axis_sample_points(np.array([fbg[1]]), np.array([fbg[3] - fbg[1]]), Pg, SR, np)
cx, _ = axis_sample_points(np.array([fbg[0]]), np.array([fbg[2] - fbg[0]]), Pg, SR, np)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
for ax, (name, g) in zip(axes, grad_maps.items()):
    im = ax.imshow(g, cmap="magma", vmin=0, vmax=max(g.max(), 1e-12))
    if name.startswith("RoIPool"):
        ax.add_patch(Rectangle((ws[0, q] - 0.5, hs[0, p] - 0.5), we[0, q] - ws[0, q], he[0, p] - hs[0, p],
                               fill=False, color="tab:cyan", lw=2))
    else:
        ax.add_patch(Rectangle((fbg[0] + q * bw_g, fbg[1] + p * bh_g), bw_g, bh_g, fill=False, ls="--",
                               color="tab:cyan", lw=2))
        yy, xx = np.meshgrid(cy[0, p], cx[0, q], indexing="ij")
        ax.plot(xx.ravel(), yy.ravel(), "o", color="tab:green", ms=5)
    n_px = int((g != 0).sum())
    ax.set_title(f"{name}: {n_px} pixel{'s' if n_px != 1 else ''}, sum {g.sum():.3f}")
    plt.colorbar(im, ax=ax, fraction=0.046)
plt.suptitle(f"gradient of output bin {bin_pq} w.r.t. the features (bin outlined, samples in green)")
plt.tight_layout()
plt.show()
pool_pixel = int(np.flatnonzero(grad_maps["RoIPool (max)"])[0])
print(f"RoIPool's gradient pixel: {divmod(pool_pixel, Wg)}, the loops' argmax: "
      f"{divmod(int(arg_ref[0, 0][bin_pq]), Wg)}")
for name, g in ref_maps.items():
    print(f"{name}: largest |library - loops| = {np.abs(grad_maps[name] - g).max():.1e}")

# %% [markdown]
# ### Gradient checks
#
# Every op's backward is checked against centered finite differences in float64
# (`check_op_gradients`, relative error ≤ 1e-6). RoIPool and the max variants are only piecewise
# linear: at a tie two pixels (or samples) swap places within the finite-difference step and
# the check breaks. The features are therefore a shuffled `0, 1, 2, …`: no two pixels are closer
# than 1, far more than the step of 1e-6.

# %%
Hc = Wc = 8
feat_c = rng.permutation(2 * Hc * Wc).reshape(1, 2, Hc, Wc).astype(np.float64)
lo_hi = np.sort(rng.uniform(0, Wc * 16, (3, 2, 2)), axis=1)           # (box, [low, high], [x, y]) image px
boxes_c = np.column_stack([np.zeros(3), lo_hi[:, 0, 0], lo_hi[:, 0, 1], lo_hi[:, 1, 0], lo_hi[:, 1, 1]])
grad_ops = {
    "RoIPool": (roi_pool_forward, roi_pool_backward, {}),
    "RoIWarp (avg)": (roi_warp_forward, roi_warp_backward, dict(sampling_ratio=SR)),
    "RoIAlign (avg)": (roi_align_forward, roi_align_backward, dict(sampling_ratio=SR)),
    "RoIAlign (avg), aligned=True": (roi_align_forward, roi_align_backward, dict(sampling_ratio=SR, aligned=True)),
    "RoIAlign-max": (roi_align_max_forward, roi_align_max_backward, dict(sampling_ratio=SR)),
    "RoIAlign-max, adaptive sampling": (roi_align_max_forward, roi_align_max_backward, dict(sampling_ratio=-1)),
}
grad_errors = {}
for name, (fwd, bwd, kw) in grad_ops.items():
    grad_errors[name] = check_op_gradients(fwd, bwd, [feat_c, boxes_c],
                                           kwargs=dict(output_size=(3, 2), spatial_scale=1 / 16, **kw))[0]
    print(f"{name:<34} relative error {grad_errors[name]:.1e}")
print(inspect.getsource(check_op_gradients))

# %% [markdown]
# ### The output as a function of a box coordinate
#
# The gradient with respect to the *features* is one side; the other is how the output moves
# when the *box* moves. Slide the left edge `x1` of one box across a few feature pixels and
# follow one output bin next to that edge. RoIPool's and RoIWarp's outputs are step functions
# of `x1`: flat between the points where a rounding flips, so their derivative with respect to
# the box is 0 almost everywhere and undefined at the steps. RoIAlign's output is continuous (piecewise
# linear): a small move of the box gives a small, proportional change. (Our ops, like
# torchvision's, return no gradient for the boxes: training treats the proposals as constants,
# what Faster R-CNN calls "approximate joint training" — it ignores the derivative with respect
# to the proposal boxes' coordinates.)
#
# A numerical test of continuity: halve the step of the sweep. A continuous curve's largest jump
# between neighbouring points halves too; a step function's does not.

# %%
feat_s = rng.standard_normal((1, 1, 16, 16))
box_s = np.array([0, 32.0, 40.0, 150.0, 170.0])   # x1 at 2.0 feature px: roundings flip at 2.5, 3.5, 4.5
bin_s = (3, 0)                    # the bin at the moving edge


def sweep(step, span=48.0):
    xs = np.arange(0.0, span + step / 2, step)
    bx = np.repeat(box_s[None], len(xs), 0)
    bx[:, 1] += xs
    return xs, {"RoIPool": roi_pool(feat_s, bx, 7, 1 / 16)[:, 0][:, bin_s[0], bin_s[1]],
                "RoIWarp": roi_warp(feat_s, bx, 7, 1 / 16, SR)[:, 0][:, bin_s[0], bin_s[1]],
                "RoIAlign": roi_align(feat_s, bx, 7, 1 / 16, SR)[:, 0][:, bin_s[0], bin_s[1]]}


step = 1.0 if SMOKE else 0.25
_, curves = sweep(step)
xs_half, curves_half = sweep(step / 2)
jump = {name: (np.abs(np.diff(curves[name])).max(), np.abs(np.diff(curves_half[name])).max()) for name in curves}
plt.figure(figsize=(8, 4))
for name, v in curves_half.items():
    if name == "RoIAlign":
        plt.plot(xs_half, v, label=name, lw=2)
    else:
        plt.step(xs_half, v, where="post", label=name)
plt.xlabel("shift of the box's x1 (image px, stride 16)")
plt.ylabel(f"output bin {bin_s}")
plt.title("the output as a function of a box coordinate")
plt.legend()
plt.show()
for name, (j1, j2) in jump.items():
    print(f"{name:<9} largest jump: step {step:g} px -> {j1:.4f};  step {step / 2:g} px -> {j2:.4f}  "
          f"(ratio {j2 / j1:.2f}); {len(np.unique(curves_half[name]))} distinct values in {len(curves_half[name])}")

# %% [markdown]
# ## What this means for a trained model
#
# The ramp measures where each op reads, nothing more; it does not say how much a trained network
# suffers from RoIPool's jitter, or gains from RoIAlign. That is measured by an **ablation
# study**: train the same model with each RoI layer, everything else fixed, and compare the AP.
# The Mask R-CNN paper does exactly this: its Table 2c trains a ResNet-50-C4 model (stride 16)
# with each layer of the table above, and Table 2d compares RoIPool with RoIAlign on
# ResNet-50-C5 features at stride 32, for masks and for boxes. In the paper RoIWarp does about as
# well as RoIPool and clearly worse than RoIAlign — alignment, not bilinear sampling, is what
# matters — max and average do about equally once nothing is rounded, the gains are largest at
# the strict AP75, and larger at stride 32 than at stride 16. In this repository the RoI layer is
# a model setting (`roi_op`: `roi_align`, `roi_align_max`, `roi_warp` or `roi_pool`, with
# `roi_aligned` for the half-pixel shift), so the ablation can be run on the shapes data
# (exercise 7).

# %% [markdown]
# ## Check

# %%
assert abs(v_bilinear - worked_answer) < 1e-3 and abs(v_roi_align - worked_answer) < 1e-3
assert abs(v_rounded - worked_answer) < 1e-3
assert (level, stride, vgg_conv5_3_stride) == (5, 32, 16)
# the loop references and the vectorised ops agree (forward and backward)
assert max(worst.values()) <= 1e-12
# ramp: aligned RoIAlign-avg is exact; the aligned=False one is off by exactly half a pixel
assert table[("RoIAlign aligned=True", "avg")]["max_abs"] < 1e-9, "aligned RoIAlign should be exact on a ramp"
assert abs(table[("RoIAlign", "avg")]["bias"] - pred_shift) < 1e-9 and table[("RoIAlign", "avg")]["spread"] < 1e-9
# RoIAlign-max falls short of the continuous max by half a sub-bin, for every box
assert np.abs(outputs[("RoIAlign aligned=True", "max")] - targets["max"] - pred_max_bias).max() < 1e-9
# only the layers that round jitter with the box position
for (layer, agg), r in table.items():
    spread = r["spread"]
    assert (spread > 0.1) if layer in ("RoIPool", "RoIWarp") else (spread < 1e-9), (layer, agg, spread)
# RoIPool scored against the mean mostly measures max - mean
assert pool_vs_mean["mean_abs"] > 1.5 * table[("RoIPool", "max")]["mean_abs"]
# RoIWarp-max is RoIAlign-max on the snapped box: its average twin is roi_warp
assert np.abs(roi_align(ramp, snap(boxes, s_r), P, 1.0, SR, False) - outputs[("RoIWarp", "avg")]).max() < 1e-12
# the sliding box: RoIAlign's error is flat, RoIPool's and RoIWarp's jump
assert np.ptp(slide[("RoIAlign", "avg")]) < 1e-9 and np.ptp(slide[("RoIPool", "max")]) > 0.1
assert np.ptp(slide[("RoIWarp", "avg")]) > 0.1
# image-pixel displacement grows with the stride (in proportion); RoIWarp moves less than RoIPool
assert 6 < np.mean([disp[32, sz][0] for sz in sizes]) / np.mean([disp[4, sz][0] for sz in sizes]) < 10
assert all(disp[k][1] < disp[k][0] for k in disp)
# backward: RoIPool's bin gradient is one pixel, its argmax; RoIAlign's is the loops' bilinear spread
g_pool = grad_maps["RoIPool (max)"]
assert (g_pool != 0).sum() == 1 and g_pool.sum() == 1.0 and pool_pixel == arg_ref[0, 0][bin_pq]
assert (grad_maps["RoIAlign (avg)"] != 0).sum() > 4 and abs(grad_maps["RoIAlign (avg)"].sum() - 1) < 1e-12
assert all(np.abs(grad_maps[n] - ref_maps[n]).max() < 1e-12 for n in ref_maps)
assert max(grad_errors.values()) <= 1e-6, grad_errors
# output vs box coordinate: RoIAlign continuous (jumps halve with the step), RoIPool steps
assert jump["RoIAlign"][1] < 0.7 * jump["RoIAlign"][0]
assert jump["RoIPool"][1] > 0.9 * jump["RoIPool"][0]
print("checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Redo the 665-px example with stride 16 (Fast R-CNN's VGG16 `conv5_3`) and stride 4 (FPN's
#    `P2`): how many image pixels can RoIPool's first rounding lose now? And the bin rounding?
# 2. The ramp table uses boxes of one size. Rerun it for sizes from 32 to 512 px. Which columns
#    change with the size, and which stay? Predict RoIAlign-max's bias for each size first.
# 3. Move a box partly outside the map. Which samples are zeroed and which clamped
#    (`roi_reference.bilinear_neighbours` answers it sample by sample)? Why does aligned
#    RoIAlign stop being exact, and by how much?
# 4. Replace `roi_reference.c_round` with Python's `round` (halves to even) and find a box for
#    which the loop RoIPool then disagrees with `roi_pool`. How often does that happen for random
#    boxes on a half-pixel grid?
# 5. The window path gathers each RoI's pixel window; the dense path multiplies with the whole map.
#    Time both (`roi_align(..., path="dense")` / `path="window"`) for a 64×64 and a
#    256×256 map and find the crossover.
# 6. Use a quadratic `f(x, y) = x²`: bilinear interpolation is no longer exact. How does
#    RoIAlign's error against the exact bin mean fall with `sampling_ratio`?
# 7. The ablation, small: train the shapes model with each `roi_op` (a config file
#    `{"preset": "shapes", "model": {"roi_op": "roi_pool"}}` given to `mrcnn-ref train --config`),
#    same seed, and evaluate on shapes training images the run does not train on
#    (`mrcnn-ref evaluate --split train --first-image 2000 --num-images 300`). Which AP moves
#    most: AP50 or AP75? Then a second seed: is the difference larger than the seed-to-seed one?

# %% [markdown]
# ## Summary
#
# * RoIPool rounds the RoI and its bins to whole pixels and takes a max: outputs step, one pixel gets the gradient.
# * RoIAlign rounds nothing: its bilinear samples follow the box, and the gradient spreads over their neighbours.
# * Against its own exact target only a layer that rounds jitters with box position; an ablation prices that.
