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
# # Chapter 10 — Evaluation the COCO way
#
# A detector does not answer "yes" or "no"; it returns a *ranked list* of detections, each with a
# box (and a mask), a category and a score. The Mask R-CNN paper (He et al. 2017) reports its
# results as COCO **AP**, the number every detection paper compares. This chapter builds that
# number up from the pieces:
#
# 1. **IoU** between a detection and a ground-truth object, for boxes and for masks;
# 2. **matching**: at an IoU threshold `t`, detections are taken in score order and each claims the
#    best still-unclaimed ground truth with IoU ≥ `t` (true positive) or none (false positive);
# 3. a **precision–recall curve** per category, made monotone and read at 101 recall points
#    (0, 0.01, …, 1): their mean is the **AP** at `t`;
# 4. the average over 10 thresholds `t = 0.50, 0.55, …, 0.95` (**AP**), the single thresholds
#    0.50 (**AP50**, the PASCAL VOC criterion) and 0.75 (**AP75**), the same for small / medium /
#    large objects (**APs / APm / APl**: area below 32², between 32² and 96², above 96² pixels), all
#    with at most 100 detections per image (**maxDets**).
#
# Everything is computed by `mrcnn_ref.evaluate.coco_evaluate`, our own implementation, which we
# check against the reference, `pycocotools`, at the end. To see what each kind of error does to
# the numbers *independently of how good our model is*, most of the chapter evaluates fake
# "predictions" made by damaging the ground truth in controlled ways.

# %%
import contextlib
import inspect
import io
import json
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from skimage import draw, morphology

from mrcnn_ref import evaluate as ev
from mrcnn_ref.data.masks import mask_iou, masks_to_boxes
from mrcnn_ref.data.shapes import CATEGORIES, ShapesDataset
from mrcnn_ref.evaluate import (box_iou_xywh, coco_evaluate, detections_to_coco_results, summarize,
                                write_coco_results)
from mrcnn_ref.inference import evaluate_model, predict_image
from mrcnn_ref.model_io import bundled_or_trained_model
from mrcnn_ref.visualize import draw_detections, draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
N_IMAGES = 16 if SMOKE else 100          # val images for the perturbation experiments
N_MODEL = 3 if SMOKE else 20             # val images the model is evaluated on
TRAIN_ITERS = 10 if SMOKE else 300       # only used when no bundled checkpoint exists
NAMES = {c["id"]: c["name"] for c in CATEGORIES}

# %%
ax = draw_pipeline(highlight="outputs")
ax.set_title("this chapter: how good are the outputs?")
plt.show()

# %% [markdown]
# ## 1. IoU for boxes and for masks
#
# *Intersection over union*: the area two regions share divided by the area they cover together.
# Chapter 01 used it to suppress duplicates in NMS; in evaluation it decides whether a detection
# *found* an object. COCO boxes are `[x, y, w, h]` in
# continuous pixel coordinates (no "+1"). For masks the areas are pixel counts; all pairwise
# intersections are one product of the flattened masks. The *crowd* branch (a ground truth marked
# `iscrowd`, a region holding many objects) replaces the union by the detection's own area; our
# shapes have no crowds.

# %%
print(inspect.getsource(box_iou_xywh))
print(inspect.getsource(mask_iou))

# %% [markdown]
# IoU is scale-free, but pixels are not: a one-pixel error on the outline costs a small object
# much more IoU than a large one. For a disc of radius `r`, eroding or dilating the mask by one
# pixel gives IoU ≈ `((r − 1) / r)²` or `(r / (r + 1))²`, and shifting its box by one pixel in x and
# y costs about as much. This is why the high thresholds of COCO AP (0.85–0.95) are so hard for small
# objects, and why APs is usually far below APl.

# %%
radii = np.arange(3, 41)
iou_erode, iou_dilate, iou_shift = [], [], []
for r in radii:
    n = 2 * r + 9
    m = np.zeros((n, n), bool)
    m[draw.disk((n // 2, n // 2), r, shape=m.shape)] = True
    stack = np.stack([morphology.erosion(m, morphology.disk(1)),       # bool in, bool out
                      morphology.dilation(m, morphology.disk(1))])
    iou_erode.append(mask_iou(stack[:1], m[None])[0, 0])
    iou_dilate.append(mask_iou(stack[1:], m[None])[0, 0])
    box = masks_to_boxes(m[None]).astype(np.float64)[0]
    xywh = np.array([box[0], box[1], box[2] - box[0], box[3] - box[1]])
    iou_shift.append(box_iou_xywh(xywh[None] + [1, 1, 0, 0], xywh[None])[0, 0])

fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(radii, iou_erode, "o-", ms=3, label="mask eroded by 1 px")
ax.plot(radii, iou_dilate, "s-", ms=3, label="mask dilated by 1 px")
ax.plot(radii, iou_shift, "^-", ms=3, label="box shifted by (1, 1) px")
ax.plot(radii, ((radii - 1) / radii) ** 2, "k:", lw=1, label="((r-1)/r)²")
for t in (0.5, 0.75, 0.95):
    ax.axhline(t, color="gray", lw=0.7, ls="--")
ax.axvline(32 / np.sqrt(np.pi), color="tab:red", lw=0.8)
ax.text(32 / np.sqrt(np.pi) + 0.5, 0.45, "area 32²\n(small | medium)", color="tab:red", fontsize=8)
ax.set_xlabel("disc radius r (pixels)"), ax.set_ylabel("IoU with the exact object")
ax.set_title("One pixel of error, by object size")
ax.legend(loc="lower right", fontsize=8)
plt.show()

# %% [markdown]
# ## 2. Matching detections to ground truth
#
# For one image and one category, detections are sorted by score (a *stable* sort: ties keep their
# order in the results file) and at most `maxDets = 100` are kept. Then, at each IoU threshold
# `t`, they are matched **greedily in score order**: a detection takes the still-unmatched ground
# truth with the highest IoU ≥ `t`. It is a true positive (TP) if it finds one, a false positive
# (FP) otherwise. A ground truth nobody claims is a miss (false negative). There is no global
# optimisation (no Hungarian algorithm): a confident but sloppy detection can "steal" a ground
# truth from a better, less confident one.
#
# Ground truths can also be *ignored* — crowds, and, for APs/APm/APl, objects outside the area
# range. A detection that can only match an ignored ground truth is dropped from the count
# (neither TP nor FP), and so is an unmatched detection whose own area is outside the range. Our
# implementation runs the matching for all 4 area ranges × 10 thresholds at once, looping only
# over detections (the matching is sequential by nature):

# %%
print(inspect.getsource(ev._greedy_match))

# %% [markdown]
# A hand example: two ground truths, three detections of one category in one image. `d1`
# (score 0.9) is a sloppy hit on `g1`, `d2` (0.8) a near-perfect duplicate on `g1`, `d3` (0.7) a
# so-so hit on `g2`.

# %%
g = np.array([[10, 10, 20, 20], [40, 10, 20, 20]], np.float64)           # x, y, w, h
d = np.array([[12, 11, 20, 20], [11, 10, 20, 20], [46, 10, 20, 20]], np.float64)
ious = box_iou_xywh(d, g)
print("IoU (rows d1..d3, columns g1, g2):\n", np.round(ious, 3))
no_ignore = np.zeros((1, 2), bool)
matched, _ = ev._greedy_match(ious, no_ignore, np.zeros(2, bool), ev.IOU_THRESHOLDS)
print("\n   t    d1  d2  d3")
for t, row in zip(ev.IOU_THRESHOLDS, matched[0]):
    print(f"{t:5.2f}  " + "  ".join("TP" if x else "FP" for x in row))

# %% [markdown]
# At `t = 0.5` the sloppy `d1` comes first and takes `g1`, so the much better `d2` is a
# duplicate, a false positive. From `t = 0.75` on, `d1` no longer qualifies and `d2` gets `g1`;
# `d3` (IoU 0.54) fails. At 0.95 nobody is right. Averaging over thresholds rewards *precise*
# localisation, not just finding the object.
#
# ## 3. Precision, recall and 101-point interpolated AP
#
# For one category, the detections of *all* images are pooled and sorted by score. Walking down
# the list, after `k` detections
#
# * recall = (TPs so far) / (number of ground-truth objects),
# * precision = (TPs so far) / `k`.
#
# This zig-zag curve is made monotone by replacing each precision by the best precision at any
# higher recall (the "envelope"), then read at the 101 recall points 0, 0.01, …, 1 — at each
# point, the first position in the list that reaches that recall; 0 where the list never gets
# there. AP is the mean of the 101 values (PASCAL VOC 2007 used 11 points, VOC 2010+ the exact
# area under the envelope; COCO's 101 points are close to the latter). The library does this for
# all thresholds, categories, area ranges and maxDets at once:

# %%
print(inspect.getsource(ev._accumulate))

# %% [markdown]
# A worked example with eight ground-truth objects (one per image, so every detection either is
# exact or lies elsewhere) and ten detections whose TP/FP pattern in score order is
# `T F T T F T F F T F`. We compute AP here in a *different* way from the library — interpolated
# precision at recall `r` = the best precision at any recall ≥ `r` — and compare with
# `coco_evaluate`.

# %%
pattern = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 0], bool)
n_gt = 8
ctp = np.cumsum(pattern)
precision_raw = ctp / np.arange(1, len(pattern) + 1)
recall_raw = ctp / n_gt
r_points = np.linspace(0, 1, 101)
p_interp = np.array([precision_raw[recall_raw >= r].max() if (recall_raw >= r).any() else 0.0
                     for r in r_points])
ap_hand = p_interp.mean()

# the same situation as COCO files: image i holds object i at [10, 10, 20, 20]
toy_gt = {"images": [{"id": i, "height": 64, "width": 64} for i in range(1, n_gt + 1)],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20],
                           "area": 400, "iscrowd": 0} for i in range(1, n_gt + 1)],
          "categories": [{"id": 1, "name": "thing"}]}
toy_res, next_img = [], 1
for k, is_tp in enumerate(pattern):
    if is_tp:      # an exact hit on the next not yet found object
        toy_res.append({"image_id": next_img, "category_id": 1, "bbox": [10, 10, 20, 20],
                        "score": 1.0 - 0.05 * k})
        next_img += 1
    else:          # a box on empty background of image 1
        toy_res.append({"image_id": 1, "category_id": 1, "bbox": [40, 40, 15, 15],
                        "score": 1.0 - 0.05 * k})
toy = coco_evaluate(toy_gt, toy_res, "bbox", return_arrays=True)
print(f"AP by hand: {ap_hand:.6f}   coco_evaluate AP50: {toy['AP50']:.6f}   AP: {toy['AP']:.6f}")
print("(the hits are exact, so every threshold gives the same value)")

fig, ax = plt.subplots(figsize=(6, 4))
ax.step(recall_raw, precision_raw, "o-", where="post", color="lightgray", label="raw precision")
ax.plot(recall_raw, precision_raw, "o", color="gray")
ax.plot(r_points, toy["precision"][0, :, 0, 0, -1], ".", ms=4, color="tab:blue",
        label="interpolated, at the 101 recall points")
ax.set_xlabel("recall"), ax.set_ylabel("precision"), ax.set_ylim(-0.03, 1.05)
ax.set_title(f"T F T T F T F F T F with 8 objects: AP = {ap_hand:.3f}")
ax.legend(loc="lower left", fontsize=8)
plt.show()

# %% [markdown]
# Five hits for eight objects: the three objects never found cap recall at 5/8 = 0.625, so the
# last 37 of the 101 recall points contribute 0 — **misses cost AP linearly**. A false positive
# costs according to where it sits in the ranking: the one at position 2 lowers the precision of
# every hit after it, the ones at positions 7 and 8 only that of the last hit (recall 0.5 → 0.625
# is reached at precision 5/9), and the one at position 10, after the last hit, costs nothing.
#
# ## 4. Perturbing the ground truth
#
# Now the real thing: the ground truth of `ShapesDataset("val")` as a COCO dict (`ds.to_coco`,
# RLE masks, areas = visible pixel counts), and "predictions" made from that same ground truth,
# damaged on purpose. `make_predictions` moves masks, erodes or dilates them, drops some, adds
# false positives, swaps categories, duplicates detections, and scores them with a chosen
# *ranking quality*. Boxes are always the tight boxes of the damaged masks, so bbox and segm AP
# see the same damage.

# %%
ds = ShapesDataset("val")
samples = [ds[i] for i in range(N_IMAGES)]
gt = ds.to_coco(range(N_IMAGES))
areas = np.array([a["area"] for a in gt["annotations"]])
print(f"{N_IMAGES} images, {len(gt['annotations'])} objects; areas {areas.min()}..{areas.max()} px: "
      f"{np.sum(areas < 32 ** 2)} small, {np.sum((areas >= 32 ** 2) & (areas < 96 ** 2))} medium, "
      f"{np.sum(areas >= 96 ** 2)} large")


def shift_mask(m, dy, dx):
    """m moved by (dy, dx) whole pixels; what leaves the image is lost."""
    out = np.zeros_like(m)
    ys, xs = np.nonzero(m)
    ys, xs = ys + dy, xs + dx
    ok = (ys >= 0) & (ys < m.shape[0]) & (xs >= 0) & (xs < m.shape[1])
    out[ys[ok], xs[ok]] = True
    return out


def make_predictions(samples, seed=0, shift=0.0, grow=0, drop=0.0, relabel=0.0, duplicates=0.0,
                     fp_per_image=0, fp_scores=(0.0, 0.3), ranking="random"):
    """COCO results made from the ground truth of ``samples``, damaged in controlled ways.

    shift: each object moves by a random offset, std ``shift`` x sqrt(its area), rounded to pixels.
    grow: dilate (> 0) or erode (< 0) every mask by |grow| pixels (a mask eroded away is dropped).
    drop: fraction of objects left out (misses). relabel: fraction given a wrong category.
    duplicates: fraction detected twice (the copy 2 px off, 0.9 x the score).
    fp_per_image: random discs of a random category, scores uniform in ``fp_scores``.
    ranking: scores of the true detections: "random" (uniform 0.5..1), "iou" (the mask IoU with
    its object: the best possible ranking) or "inverse" (1 - IoU: the worst).
    """
    rng = np.random.default_rng(seed)
    results = []
    for s in samples:
        H, W = s["masks"].shape[1:]
        masks, labels, scores = [], [], []
        for m, lab in zip(s["masks"], s["labels"]):
            if rng.random() < drop:
                continue
            dy, dx = np.round(rng.normal(0, shift * np.sqrt(m.sum()), 2)).astype(int)
            p = shift_mask(m, dy, dx)
            if grow:
                op = morphology.dilation if grow > 0 else morphology.erosion
                p = op(p, morphology.disk(abs(grow)))
            if not p.any():
                continue
            iou = mask_iou(p[None], m[None])[0, 0]
            score = {"random": rng.uniform(0.5, 1.0), "iou": iou, "inverse": 1.0 - iou}[ranking]
            if rng.random() < relabel:
                lab = rng.choice([c for c in NAMES if c != lab])
            masks.append(p), labels.append(lab), scores.append(score)
            if rng.random() < duplicates:
                masks.append(shift_mask(p, 2, 2)), labels.append(lab), scores.append(0.9 * score)
        for _ in range(fp_per_image):
            r = rng.uniform(5, 15)
            cy, cx = rng.uniform(r, H - r, 2)
            fp = np.zeros((H, W), bool)
            fp[draw.disk((cy, cx), r, shape=(H, W))] = True
            masks.append(fp), labels.append(rng.integers(1, 4)), scores.append(rng.uniform(*fp_scores))
        masks = np.array(masks, bool).reshape(-1, H, W)
        results += detections_to_coco_results(s["image_id"], masks_to_boxes(masks), np.array(scores),
                                              np.array(labels, np.int64), masks)
    return results


def evaluate_both(results):
    return {"bbox": coco_evaluate(gt, results, "bbox"), "segm": coco_evaluate(gt, results, "segm")}

# %% [markdown]
# First the sanity check every evaluation code should pass: the ground truth itself, as
# predictions, scores AP = 1 at every threshold.

# %%
perfect = make_predictions(samples)
m_perfect = evaluate_both(perfect)
print(summarize(m_perfect["segm"]))

# %% [markdown]
# `APl` is −1: the shapes are at most about 56 × 56 pixels, so there is no "large" object, and
# pycocotools (and we) report −1 for a metric without ground truth rather than a made-up number.
#
# Now one kind of damage at a time:

# %%
EXPERIMENTS = {
    "perfect": {},
    "shift 5%": {"shift": 0.05},
    "shift 15%": {"shift": 0.15},
    "shift 15%, ranked by IoU": {"shift": 0.15, "ranking": "iou"},
    "shift 15%, ranked by 1-IoU": {"shift": 0.15, "ranking": "inverse"},
    "erode 1 px": {"grow": -1},
    "erode 2 px": {"grow": -2},
    "dilate 1 px": {"grow": 1},
    "drop 30%": {"drop": 0.3},
    "2 FP/img, low scores": {"fp_per_image": 2, "fp_scores": (0.0, 0.4)},
    "2 FP/img, high scores": {"fp_per_image": 2, "fp_scores": (0.5, 1.0)},
    "30% wrong category": {"relabel": 0.3},
    "50% duplicated": {"duplicates": 0.5},
}
predictions, metrics = {}, {}
for name, kw in EXPERIMENTS.items():
    predictions[name] = make_predictions(samples, **kw)
    metrics[name] = evaluate_both(predictions[name])

print(f"{'':28s} {'box AP':>7s} {'AP50':>6s} {'AP75':>6s}  {'mask AP':>7s} {'AP50':>6s} {'AP75':>6s}"
      f" {'APs':>6s} {'APm':>6s}")
for name, mt in metrics.items():
    b, s = mt["bbox"], mt["segm"]
    print(f"{name:28s} {b['AP']:7.3f} {b['AP50']:6.3f} {b['AP75']:6.3f}  {s['AP']:7.3f} "
          f"{s['AP50']:6.3f} {s['AP75']:6.3f} {s['APs']:6.3f} {s['APm']:6.3f}")

# %% [markdown]
# What the table says:
#
# * **Localisation errors** (shift, erode, dilate) barely touch AP50 but pull AP75 and, through
#   the strict thresholds, AP down. One pixel of erosion moves box and mask IoU by about the same
#   amount (the box loses a pixel on each side, the mask its outline: `((w − 2) / w)²` either
#   way), a lot for an error one can hardly see — and, as section 1 predicted, it costs small
#   objects (APs) more than medium ones (APm). Erosion hurts more than dilation by the same
#   amount: removing a ring of pixels is a larger *relative* change than adding one.
# * **Ranking matters** even though the detections are identical: with the same 15 % shifts,
#   scoring the accurate detections higher ("ranked by IoU") gives a clearly higher AP75 / AP than
#   random scores, and ranking the worst first gives a lower one. A detector's score should
#   predict its localisation quality (Mask Scoring R-CNN and IoU-Net are built on this).
# * **Misses** cost linearly: dropping 30 % of the objects caps recall at about 0.7 and AP at about
#   0.7, whatever the threshold.
# * **False positives** cost only if they are ranked above true detections: two per image with
#   scores below every true detection cost *nothing*; the same two with high scores cost a lot.
#   This is why detectors output up to 100 low-scored detections per image — extra recall is free.
#   (APm stays 1 even with the high-scored ones: the fake discs are all smaller than 32², and an
#   unmatched detection outside an area range does not count in that range.)
# * A **wrong category** is both a miss (in the right category) and a false positive (in the
#   wrong one); **duplicates** (what NMS removes) are false positives interleaved with the true ones.
#
# ## 5. Sweeps
#
# Turning one knob at a time:

# %%
shifts = [0.0, 0.05, 0.1, 0.2, 0.3] if SMOKE else [0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3]
grows = [-2, -1, 0, 1, 2] if SMOKE else [-3, -2, -1, 0, 1, 2, 3]
drops = [0.0, 0.25, 0.5] if SMOKE else [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
fps = [0, 2, 5] if SMOKE else [0, 1, 2, 3, 5, 8]

sweep_shift = [evaluate_both(make_predictions(samples, shift=v)) for v in shifts]
sweep_grow = [evaluate_both(make_predictions(samples, grow=v)) for v in grows]
sweep_drop = [evaluate_both(make_predictions(samples, drop=v)) for v in drops]
sweep_fp_hi = [coco_evaluate(gt, make_predictions(samples, fp_per_image=v, fp_scores=(0.5, 1.0)), "segm")
               for v in fps]
sweep_fp_lo = [coco_evaluate(gt, make_predictions(samples, fp_per_image=v, fp_scores=(0.0, 0.4)), "segm")
               for v in fps]


def curves(ax, xs, sweep, kind, style):
    for key, color in (("AP", "k"), ("AP50", "tab:blue"), ("AP75", "tab:orange")):
        ax.plot(xs, [m[kind][key] if kind else m[key] for m in sweep], style, color=color,
                label=f"{kind or 'segm'} {key}")


fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
curves(axes[0], shifts, sweep_shift, "bbox", "o-")
curves(axes[0], shifts, sweep_shift, "segm", "s--")
axes[0].set_xlabel("shift std / sqrt(area)")
curves(axes[1], grows, sweep_grow, "bbox", "o-")
curves(axes[1], grows, sweep_grow, "segm", "s--")
axes[1].set_xlabel("erode (<0) / dilate (>0), pixels")
curves(axes[2], drops, sweep_drop, "segm", "s--")
axes[2].plot(drops, 1 - np.array(drops), "k:", lw=1, label="1 - drop")
axes[2].set_xlabel("fraction of objects dropped")
curves(axes[3], fps, sweep_fp_hi, None, "o-")
axes[3].plot(fps, [m["AP"] for m in sweep_fp_lo], "kx:", label="segm AP, FPs scored low")
axes[3].set_xlabel("false positives per image (scored high)")
for ax in axes:
    ax.set_ylim(-0.03, 1.03), ax.grid(alpha=0.3)
axes[0].set_ylabel("AP")
axes[0].legend(fontsize=7), axes[1].legend(fontsize=7), axes[2].legend(fontsize=7), axes[3].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Precision–recall curves at several IoU thresholds
#
# `coco_evaluate(..., return_arrays=True)` also returns the interpolated precision array of
# shape `(T=10 thresholds, R=101 recall points, K categories, A=4 area ranges, M maxDets)`; −1
# marks "no ground truth". Here are the category-averaged curves of a realistic mix of errors:
# shifts of 7 %, 10 % misses, one false positive per image, random scores.

# %%
mixed = make_predictions(samples, seed=1, shift=0.07, drop=0.1, fp_per_image=1, fp_scores=(0.3, 0.9))
arrays = coco_evaluate(gt, mixed, "segm", return_arrays=True)
prec = arrays["precision"]                                      # (T, R, K, A, M)
print("precision array:", prec.shape, " max_dets_list:", arrays["max_dets_list"])

fig, ax = plt.subplots(figsize=(6.5, 4.2))
for t_index, color in zip([0, 3, 5, 7, 9], plt.cm.viridis(np.linspace(0, 0.9, 5))):
    p = prec[t_index, :, :, 0, -1]                             # (R, K): area "all", maxDets 100
    valid = p[0] > -1
    ap_t = p[:, valid].mean()
    ax.plot(arrays["recall_thresholds"], p[:, valid].mean(axis=1), color=color,
            label=f"IoU {arrays['iou_thresholds'][t_index]:.2f}: AP = {ap_t:.3f}")
ax.set_xlabel("recall"), ax.set_ylabel("interpolated precision (mean over categories)")
ax.set_title(f"mask PR curves — AP (mean over all 10) = {arrays['AP']:.3f}")
ax.legend(fontsize=8), ax.set_ylim(-0.03, 1.03)
plt.show()

# %% [markdown]
# At IoU 0.5 almost every detection of a real object counts, so the curve stays high until the
# misses cut it off: it drops to 0 at the largest recall the detections reach. At stricter
# thresholds more and more of the shifted detections turn into false positives — including some of
# the best-scored ones, so the curves start below 1 — and the reachable recall shrinks. AP at each
# threshold is the area under its curve; COCO AP is the mean of the ten.
#
# ### maxDets
#
# Only the 100 best-scored detections per image (strictly: per image *and category*, a quirk of
# pycocotools we follow) count. Below, high-scored false positives of the category "square" are
# added to every image that has squares: first exactly as many as fill the cap together with the
# true squares (recall stays 1), then 100, which push every true square out of the top 100: the
# recall of "square" falls to 0 while "circle" is untouched.

# %%
flood_recall = {}
for mode in ("fill the cap", "100 extra"):
    flood = list(perfect)
    for s in samples:
        n_squares = int(np.sum(s["labels"] == 1))
        n_extra = 100 - n_squares if mode == "fill the cap" else 100
        if n_squares:
            flood += [{"image_id": s["image_id"], "category_id": 1, "bbox": [0.0, 0.0, 3.0, 3.0],
                       "score": 2.0} for _ in range(n_extra)]
    r = coco_evaluate(gt, flood, "bbox", return_arrays=True)["recall"]   # (T, K, A, M)
    flood_recall[mode] = r[0, :, 0, -1]                                   # IoU 0.5, all, maxDets 100
    print(f"{mode:13s}: recall at maxDets 100 of 'square' = {r[0, 0, 0, -1]:.2f}, "
          f"'circle' = {r[0, 1, 0, -1]:.2f}")

# %% [markdown]
# ## 7. Our model, evaluated
#
# `mrcnn_ref.inference.evaluate_model` runs the model on the first images of a split and writes
# three files: `ground_truth.json` (COCO instances), `predictions.json` (COCO results with RLE
# masks) and `metrics.json` (our bbox and segm metrics). Any COCO tool can re-check them. It
# predicts with the model config's test-time refinements, which the shapes preset switches on;
# they go beyond Mask R-CNN as published, and the optional chapter 12 explains them.
#
# If the package ships a trained checkpoint (`mrcnn_ref/checkpoints/shapes.npz`) we use it;
# otherwise the "tiny" configuration is trained here for a few iterations. **A briefly trained
# model finds very little, and its AP is near 0** — the numbers and picture look much better with
# the bundled checkpoint. Nothing below depends on the model being good.

# %%
model, run_cfg, source = bundled_or_trained_model(TRAIN_ITERS)
print("model:", source)

val = ShapesDataset("val", num_images=N_MODEL, image_size=run_cfg.train.image_size)
eval_dir = tempfile.mkdtemp()
model_metrics = evaluate_model(model, val, eval_dir, progress=False)
print(sorted(os.listdir(eval_dir)), f"{model_metrics['seconds_per_image']:.2f} s / image")

# %%
sample = val[0]
det = predict_image(model, sample["image"], score_thresh=0.0)
top = np.argsort(-det["scores"])[:5]
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
draw_detections(sample["image"], sample["boxes"], sample["labels"], masks=sample["masks"],
                class_names=NAMES, ax=axes[0], title="ground truth")
draw_detections(sample["image"], det["boxes"][top], det["labels"][top], det["scores"][top],
                det["masks"][top], class_names=NAMES, ax=axes[1], title="5 best-scored detections")
plt.show()

# %% [markdown]
# ## 8. Our AP next to pycocotools'
#
# `pycocotools` (the COCO API) is the reference implementation. It is a test dependency, not a
# runtime one, so it is imported inside a `try`. We write ground truth and predictions to JSON,
# let pycocotools read the files (`COCO`, `loadRes`) and run `COCOeval.evaluate / accumulate /
# summarize`, and run `coco_evaluate` on the *same files*. Its 12 `stats` are, in order, AP, AP50,
# AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl.

# %%
try:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
except ImportError:
    COCO = COCOeval = None
    print("pycocotools is not installed: only our own numbers are shown")

STAT_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def ours_from_files(gt_path, res_path, iou_type):
    with open(gt_path) as f_gt, open(res_path) as f_res:
        m = coco_evaluate(json.load(f_gt), json.load(f_res), iou_type)
    return np.array([m[k] for k in STAT_KEYS])


def pycocotools_from_files(gt_path, res_path, iou_type):
    with contextlib.redirect_stdout(io.StringIO()):           # pycocotools prints a lot
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(res_path)
        e = COCOeval(coco_gt, coco_dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.array(e.stats)


files_dir = tempfile.mkdtemp()
gt_path = os.path.join(files_dir, "ground_truth.json")
with open(gt_path, "w") as f:
    json.dump(gt, f)
cases = {}
for name in EXPERIMENTS:
    res_path = write_coco_results(predictions[name], os.path.join(files_dir, f"{len(cases)}.json"))
    cases[name] = (gt_path, res_path)
cases["mixed (PR curves)"] = (gt_path, write_coco_results(mixed, os.path.join(files_dir, "mixed.json")))
model_files = (os.path.join(eval_dir, "ground_truth.json"), os.path.join(eval_dir, "predictions.json"))
with open(model_files[1]) as f:
    model_has_predictions = len(json.load(f)) > 0     # loadRes cannot read an empty list
if model_has_predictions:
    cases["our model"] = model_files

comparison = {}
print(f"{'':28s} {'type':5s} {'our AP':>8s} {'coco AP':>8s} {'our AP50':>8s} {'coco AP50':>9s} "
      f"{'our AP75':>8s} {'coco AP75':>9s} {'max |diff| (12 stats)':>22s}")
for name, (gp, rp) in cases.items():
    for iou_type in ("bbox", "segm"):
        ours = ours_from_files(gp, rp, iou_type)
        ref = pycocotools_from_files(gp, rp, iou_type) if COCO is not None else None
        comparison[name, iou_type] = (ours, ref)
        if ref is None:
            print(f"{name:28s} {iou_type:5s} {ours[0]:8.4f} {'-':>8s} {ours[1]:8.4f} {'-':>9s} "
                  f"{ours[2]:8.4f} {'-':>9s}")
        else:
            print(f"{name:28s} {iou_type:5s} {ours[0]:8.4f} {ref[0]:8.4f} {ours[1]:8.4f} {ref[1]:9.4f} "
                  f"{ours[2]:8.4f} {ref[2]:9.4f} {np.abs(ours - ref).max():22.1e}")

# %% [markdown]
# The model's own `metrics.json` holds the same numbers as our row "our model" — it was written by
# the same `coco_evaluate`:

# %%
with open(os.path.join(eval_dir, "metrics.json")) as f:
    saved = json.load(f)
print(summarize(saved["segm"]))

# %% [markdown]
# ## Check
#
# What is checked: the perfect predictions score 1; every metric is in [0, 1] (or −1 for "no
# ground truth"); AP50 ≥ AP75 everywhere; the hand-computed AP of the worked example matches; the
# greedy matching of the hand example is as traced; the maxDets cap removes the flooded category's
# recall only; `metrics.json` agrees with a fresh evaluation of the written files; and, when
# pycocotools is importable, all 12 statistics agree with it to 1e-6 on every perturbed prediction
# set and on the model's files.
#
# How sure is "AP50 ≥ AP75"? For **masks** here it is a theorem: the ground-truth masks are
# disjoint, so a detection with IoU ≥ 0.5 with one object shares at least half of itself with it
# and (barring an exact tie) cannot reach 0.5 with another. Each detection then has at most one
# candidate, a prefix of the ranked list has as many TPs as objects it covers at IoU ≥ t, and that
# count can only fall as t rises — so every point of the PR curve, hence AP_t, falls with t
# (asserted on the whole precision array of section 6). For **boxes** it is not: ground-truth boxes of overlapping shapes
# overlap, a detection can qualify for two objects at 0.5 but only one at 0.75, and greedy
# matching can then reorder the TPs — occasionally raising AP75 (or the mean AP) a hair above AP50.
# It holds for the data of this chapter, which the check confirms.

# %%
for kind in ("bbox", "segm"):
    for key in ("AP", "AP50", "AP75", "APs", "APm", "AR100"):
        assert m_perfect[kind][key] == 1.0, (kind, key, m_perfect[kind][key])
all_metrics = [m for m in metrics.values()] + sweep_shift + sweep_grow + sweep_drop
all_metrics += [{"segm": m} for m in sweep_fp_hi + sweep_fp_lo] + [model_metrics]
for mt in all_metrics:
    for kind, m in mt.items():
        if kind not in ("bbox", "segm"):
            continue
        vals = np.array([m[k] for k in STAT_KEYS if m[k] != -1])
        assert np.all((vals >= 0) & (vals <= 1)), (kind, m)
        # 1e-12: two equal APs are means over different arrays and may differ in the last bit
        assert m["AP50"] >= m["AP75"] - 1e-12, (kind, m)
        if kind == "segm":                       # disjoint ground-truth masks: AP_t falls with t
            assert m["AP50"] >= m["AP"] - 1e-12, (kind, m)
valid = prec[:, :, :, 0, -1] > -1                             # PR curves of section 6
assert np.all(np.diff(np.where(valid, prec[:, :, :, 0, -1], 0), axis=0) <= 1e-12)   # stricter t: lower
assert abs(toy["AP"] - ap_hand) < 1e-12 and abs(toy["AP50"] - ap_hand) < 1e-12, (toy["AP"], ap_hand)
assert matched[0, 0].tolist() == [True, False, True]        # t = 0.50: d1 takes g1, d3 takes g2
assert matched[0, 5].tolist() == [False, True, False]       # t = 0.75: only d2 (on g1)
assert not matched[0, -1].any()                             # t = 0.95: nobody
assert flood_recall["fill the cap"][0] == 1.0 and flood_recall["100 extra"][0] == 0.0
assert flood_recall["100 extra"][1] == 1.0                  # other categories unaffected
assert metrics["2 FP/img, low scores"]["segm"]["AP"] == 1.0  # FPs ranked last cost nothing
assert metrics["2 FP/img, high scores"]["segm"]["AP"] < 1.0
fresh = ours_from_files(*model_files, "segm")
np.testing.assert_allclose(fresh, [saved["segm"][k] for k in STAT_KEYS], rtol=0, atol=1e-12)
if COCO is not None:
    for (name, iou_type), (ours, ref) in comparison.items():
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6, err_msg=f"{name} {iou_type}")
    print(f"pycocotools agrees on {len(comparison)} evaluations (12 statistics each)")
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Compute the 11-point (PASCAL VOC 2007) and the all-point (VOC 2010+, area under the
#    envelope) AP of the worked example `T F T T F T F F T F` by hand and compare with the 101-point
#    value. Which one is always the largest?
# 2. Replace the greedy matching by an optimal one (maximum number of matches, e.g. with
#    `scipy.optimize.linear_sum_assignment` on the IoU ≥ t pairs) for the hand example of
#    section 2. Which detections change status? Why might COCO prefer the greedy rule?
# 3. Add a perturbation that *scales* each mask about its centre by a factor (e.g.
#    `skimage.transform.rescale`) and plot AP50 / AP75 / AP against the factor. Is shrinking worse
#    than growing by the same factor? Compare with the IoU of two concentric squares.
# 4. With `ranking="iou"` every true detection gets its exact IoU as score. Write a ranking that
#    is *even better for AP*. (Hint: what should happen to a detection whose IoU is below 0.5?)
# 5. Evaluate the flooded predictions of the maxDets cell with `max_dets=1000`. What happens to
#    the square recall, and why do the results still differ from the perfect predictions?
# 6. Area ranges use the ground truth's `"area"` field. Multiply every ground-truth `"area"` by
#    4 and re-run the perfect predictions and a perturbation: which metrics change and why? (Also
#    check with pycocotools.)

# %% [markdown]
# ## Summary
#
# * Matching is greedy in score order at each IoU threshold; AP averages 101-point precision.
# * Misses cost AP linearly, false positives only above true detections, sloppy boxes at AP75.
# * Our `coco_evaluate` gives pycocotools' 12 statistics on the same files.
