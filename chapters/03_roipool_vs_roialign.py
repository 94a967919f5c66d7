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
#   sampling**;
# * **RoIAlign** (Mask R-CNN) rounds **nothing**: bins are fractional, a few points per bin are
#   read by bilinear interpolation and averaged (or max-pooled).

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from mrcnn_ref.ops import roi_align as roi_align_module
from mrcnn_ref.ops.roi_align import axis_sample_points, bilinear_sample, roi_align, roi_align_forward
from mrcnn_ref.ops.roi_compare import compare_roi_ops, exact_bin_means, linear_ramp_features
from mrcnn_ref.ops.roi_pool import _bin_edges, roi_pool, round_half_away
from mrcnn_ref.ops.roi_warp import roi_warp
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
rng = np.random.default_rng(0)

# %% [markdown]
# In the pipeline the RoI operation sits between the proposals and the two heads: it is the only
# place where the second stage reads the feature pyramid.

# %%
ax = draw_pipeline(highlight="roi_op")
ax.set_title("this chapter: the RoI operation (RoIAlign in Mask R-CNN)")
plt.show()

# %% [markdown]
# ## RoIPool's two roundings, in one example
#
# An `800 × 800` image goes through VGG16 (stride 32), giving a `25 × 25` map; an object of
# `665 × 665` pixels covers `665 / 32 = 20.78` feature pixels.

# %%
image, stride, obj, pooled = 800, 32, 665, 7
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

# %% [markdown]
# This arithmetic truncates (20.78 → 20, 2.86 → 2), the simplest way to tell the story.
# Real RoIPool (Fast R-CNN's Caffe layer, torchvision) is slightly different: it **rounds** each
# corner to the nearest feature pixel (halves away from zero), counts pixels inclusively
# (`size = end - start + 1`), and gives bin `p` the pixel range `[floor(p·bin), ceil((p+1)·bin))`,
# so bins are 2 *or* 3 pixels and neighbours may overlap. Here is the same 665-px box at the top
# left of the image, in our implementation:

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
# RoIAlign reads a feature map at fractional points. A worked example: an image of
# `1000 × 800` is resized to `700 × 700`; which value goes to the resized pixel `(400, 400)`? It
# maps back to `(400 · 1000/700, 400 · 800/700) = (571.43, 457.14)`, between the four pixels
# `(571, 457)`, `(572, 457)`, `(571, 458)`, `(572, 458)` with values 50, 100, 150, 200. Bilinear
# interpolation weights each corner by the area of the opposite sub-rectangle:
# `f = [0.57143 0.42857] [[50, 150], [100, 200]] [0.85714 0.14286]^T = 85.7145`.
#
# Our library does this read with the same code RoIAlign uses inside (`_bilinear_axis`: weights
# and neighbours along one axis, with the boundary rules of torchvision):

# %%
print(inspect.getsource(roi_align_module._bilinear_axis))
print(inspect.getsource(bilinear_sample))

# %%
x_src, y_src = 400 * 1000 / 700, 400 * 800 / 700
print(f"source point: ({x_src:.5f}, {y_src:.5f})")
corners = np.array([[50.0, 100.0],     # row y=457: x=571, x=572
                    [150.0, 200.0]])   # row y=458
v_bilinear = float(bilinear_sample(corners, y_src - 457, x_src - 571))
# the formula above with its 5-digit weights
wx = np.array([0.57143, 0.42857])
wy = np.array([0.85714, 0.14286])
v_rounded = wx @ np.array([[50, 150], [100, 200]]) @ wy
# and through roi_align itself: a 1-pixel RoI centred on the point, 1 sample per bin
fmap = corners[None, None]
box = np.array([[0, x_src - 571 - 0.5, y_src - 457 - 0.5, x_src - 571 + 0.5, y_src - 457 + 0.5]])
v_roi_align = float(roi_align(fmap, box, 1, sampling_ratio=1)[0, 0, 0, 0])
print(f"bilinear_sample: {v_bilinear:.5f}   5-digit weights: {v_rounded:.4f}   "
      f"roi_align: {v_roi_align:.5f}")

# %% [markdown]
# ## How RoIAlign is computed here
#
# A sample's bilinear weights are a product of a *row* weight and a *column* weight, and so is
# "is the sample inside the map". So a whole RoIAlign bin — the average over its grid of samples —
# is `Ay[p] · F · Ax[q]ᵀ`, where `Ay` (`PH × H`) holds each output row's averaged row weights and
# `Ax` (`PW × W`) the column weights. For RoI `k` the whole `PH × PW` output of channel `c` is
# `Ay[k] @ F[b, c] @ Ax[k].T`: two matrix products, and the backward pass is their transpose. The
# implementation builds `Ay`/`Ax` for all RoIs at once with one scatter-add, then either multiplies
# with the whole map (dense path, best when RoIs are large compared with the map) or gathers only
# the window of pixels each RoI touches (window path, best on large maps).

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
# ## Measuring the error: a ramp with known bin averages
#
# To compare the ops numerically we need the "right" answer. Take features that sample a linear
# ramp `f(x, y) = a·x + b·y + c` at pixel centres — pixel `(i, j)` holds `f(j + 0.5, i + 0.5)` —
# and ask each op for the **mean of f over each bin** of the (continuous) RoI, which for a linear
# function is simply f at the bin centre. With `aligned=True` (the half-pixel shift of Detectron2)
# RoIAlign-avg is *exact* on such a ramp, as long as no sample is clamped at the border; the
# original `aligned=False` is off by a constant half pixel; RoIPool and RoIWarp err by whatever the
# rounding moved. (Does half a pixel matter once a model is trained on it? For the shapes preset
# it helped a little — `docs/recipe.md` has the measurement — so the preset uses it: `roi_aligned`
# in `mrcnn_ref/model/config.py`.)
# `compare_roi_ops` runs them all:

# %%
print(inspect.getsource(linear_ramp_features))
print(inspect.getsource(compare_roi_ops))

# %%
Hr = Wr = 32 if SMOKE else 64
a, b, c = 1.0, 0.5, 0.0
ramp = linear_ramp_features(1, Hr, Wr, a, b, c)
K = 20 if SMOKE else 200
stride_r = 16
xs = np.sort(rng.uniform(1, Wr - 1, (K, 2)), axis=1) * stride_r
ys = np.sort(rng.uniform(1, Hr - 1, (K, 2)), axis=1) * stride_r
boxes = np.stack([np.zeros(K), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)
exact = exact_bin_means(boxes, 7, 1 / stride_r, a, b, c)
table = compare_roi_ops(ramp, boxes, 7, 1 / stride_r, exact=exact, sampling_ratio=2)
print(f"{K} random RoIs on a {Hr}x{Wr} ramp f = {a}x + {b}y + {c} (feature px), 7x7 bins, 2x2 samples")
print(f"{'op':<20}{'mean |error|':>14}{'max |error|':>14}")
for name, r in table.items():
    print(f"{name:<20}{r['mean_abs_error']:>14.4f}{r['max_abs_error']:>14.4f}")

# %% [markdown]
# ## Error as the box slides across a pixel
#
# Slide one box right by a fraction of a feature pixel. RoIAlign's error stays 0 (aligned) or at
# the constant half-pixel bias (not aligned); RoIPool and RoIWarp jump whenever a corner's rounding
# flips — the **misalignment** the Mask R-CNN paper blames for poor masks: a box that moves by less
# than a pixel on the map (up to 31 image pixels at stride 32!) gives the same pooled features.

# %%
shifts = np.linspace(0, 2, 21 if SMOKE else 81)
base = np.array([0, 3.2, 4.1, 21.7, 17.3]) * stride_r
errs = {name: [] for name in table}
for d in shifts:
    bx = base + np.array([0, d, 0, d, 0]) * stride_r
    res = compare_roi_ops(ramp, bx[None], 7, 1 / stride_r, exact=exact_bin_means(bx[None], 7, 1 / stride_r, a, b, c))
    for name in errs:
        errs[name].append(res[name]["mean_abs_error"])
plt.figure(figsize=(7, 4))
for name, e in errs.items():
    plt.plot(shifts, e, label=name)
plt.xlabel("box shift (feature pixels)")
plt.ylabel("mean |output - exact bin mean|")
plt.legend()
plt.title("Quantisation error on a linear ramp")
plt.show()

# %% [markdown]
# ## Check

# %%
assert abs(v_bilinear - 85.7145) < 1e-3 and abs(v_roi_align - 85.7145) < 1e-3
assert abs(v_rounded - 85.7145) < 1e-3
assert table["roi_align_aligned"]["max_abs_error"] < 1e-9, "aligned RoIAlign should be exact on a ramp"
assert table["roi_pool"]["mean_abs_error"] > 0.1, "RoIPool should not be exact on a ramp"
assert max(errs["roi_align_aligned"]) < 1e-9 and max(errs["roi_warp"]) > 0.1
print("checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Redo the 665-px example with stride 16 (VGG conv4): how many image pixels can RoIPool's
#    first rounding lose now? And the bin rounding?
# 2. On the ramp, RoIAlign-max is biased. Predict its error from the bin size and `sampling_ratio`
#    (hint: the largest sample sits a quarter bin from the bin's high corner), then check with
#    `compare_roi_ops`.
# 3. Move a box partly outside the map. Which samples are zeroed and which clamped? Why does
#    aligned RoIAlign stop being exact, and by how much?
# 4. The window path gathers each RoI's pixel window; the dense path multiplies with the whole map.
#    Time both (`roi_align(..., path="dense")` / `path="window"`) for a 64×64 and a
#    256×256 map and find the crossover.
# 5. Use a quadratic `f(x, y) = x²`: bilinear interpolation is no longer exact. How does
#    RoIAlign's error fall with `sampling_ratio`?

# %% [markdown]
# ## Summary
#
# * RoIPool rounds a RoI and its bins to whole feature pixels: a small shift may change nothing.
# * RoIAlign rounds nothing: bilinear samples at fractional points, averaged per bin.
# * On a linear ramp aligned RoIAlign is exact; RoIPool and RoIWarp err by what rounding moved.
