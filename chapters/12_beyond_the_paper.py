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
# # Chapter 12 — Beyond the paper: test-time refinements
#
# **An optional chapter. Nothing here is part of Mask R-CNN as published** (He et al. 2017): the
# paper's inference is `MaskRCNN.predict` — backbone, proposals, box head, per-class NMS, mask
# head — and chapters 01–10 are complete without this one. What follows are five refinements
# that later work added *at test time*. They cost no training, leave the weights alone, and each is
# one switch of the model config (off by default, on in the `"shapes"` preset):
#
# | refinement | config field | from |
# |---|---|---|
# | a mirrored view, averaged | `test_flip` | test-time augmentation, as in Detectron2 |
# | enlarged views, averaged | `test_scales` | the same, at several sizes |
# | a second box-regression pass | `box_refine` | iterative box regression (Gidaris & Komodakis 2015) |
# | each score times its mask's quality | `mask_rescoring` | "maskness", SOLOv2 (Wang et al. 2020) |
# | score decay of overlapping masks | `matrix_nms` | Matrix NMS, SOLOv2 |
#
# All five live in `mrcnn_ref.model.tta`, run by one object, `TestTimePredictor(model)`, which
# `predict_image` and `evaluate_model` (chapter 10) use. The views re-run the highlighted stages
# below on other versions of the image; the proposals stay those of the image itself.
#
# Plan: 1. the predictor, and the paper's inference inside it; 2. flip and scale views;
# 3. a second look at each box; 4. mask rescoring; 5. Matrix NMS; 6. what they add, on a few
# images; 7. tuning an inference setting without touching the test set.

# %%
import inspect
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_ref.boxes import box_iou
from mrcnn_ref.data.masks import mask_iou, pixel_to_grid_weights
from mrcnn_ref.data.shapes import CATEGORIES, ShapesDataset
from mrcnn_ref.data.transforms import to_model_input
from mrcnn_ref.inference import evaluate_model
from mrcnn_ref.model import tta
from mrcnn_ref.model.config import with_inference_overrides
from mrcnn_ref.model.tta import TestTimePredictor
from mrcnn_ref.model_io import bundled_or_trained_model
from mrcnn_ref.visualize import draw_detections, draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
N_MODEL = 3 if SMOKE else 20             # val (and tuning) images the model is evaluated on
TRAIN_ITERS = 10 if SMOKE else 300       # only used when no bundled checkpoint exists
NAMES = {c["id"]: c["name"] for c in CATEGORIES}
ALL_OFF = {"test_flip": False, "test_scales": [1.0], "box_refine": False, "mask_rescoring": False,
           "matrix_nms": "off"}

# %%
ax = draw_pipeline(highlight=["backbone", "roi_op", "box_head", "mask_head", "outputs"])
ax.set_title("test-time refinements: other views through the highlighted stages, then rescoring")
plt.show()

# %% [markdown]
# ## 1. One predictor, with the paper's inference inside
#
# `TestTimePredictor.__call__` follows `MaskRCNN.predict` step by step and adds the refinements
# where they act: the box head sees the proposals in every view, the second box pass runs after
# the per-class NMS, the mask head runs in every view, and the scores are rescored at the end.
# With every refinement off (`tta.uses_refinements(config)` is false) it simply *is*
# `model.predict`.

# %%
print(inspect.getsource(tta.uses_refinements))
print(inspect.getsource(TestTimePredictor.__call__))

# %% [markdown]
# The model is the bundled checkpoint if the package ships one; otherwise the "tiny" configuration
# is trained here for a few iterations, **and then the detections are poor** (everything checked
# below holds for any model). `with_inference_overrides` gives a copy of the model's config with
# inference fields changed; assigning it to `model.config` changes how the predictor runs.

# %%
model, run_cfg, source = bundled_or_trained_model(TRAIN_ITERS)
base_cfg = model.config
print("model:", source)
print("its test-time settings:", {k: getattr(base_cfg, k) for k in ALL_OFF}, "->",
      "refinements on" if tta.uses_refinements(base_cfg) else "no refinements")
val = ShapesDataset("val", num_images=N_MODEL, image_size=run_cfg.train.image_size)
images = [to_model_input(val[i]["image"])[None] for i in range(N_MODEL)]


def predict_with(settings, image, score_thresh=None):
    """The predictor's detections on ``image`` with ``settings`` on top of the model's config."""
    model.config = with_inference_overrides(base_cfg, settings)
    try:
        return TestTimePredictor(model)(image, score_thresh)
    finally:
        model.config = base_cfg


paper = [predict_with(ALL_OFF, x) for x in images]
model.config = with_inference_overrides(base_cfg, ALL_OFF)
plain = [model.predict(x) for x in images]
model.config = base_cfg
print("detections per image with every refinement off:", [len(d["scores"]) for d in paper])

# %% [markdown]
# ## 2. Views: the mirror, and an enlarged copy
#
# **Flip test-time augmentation** runs the network a second time on the mirrored image and
# averages the box head's class probabilities and box deltas for the same (mirrored) proposals,
# and the mask head's probabilities for the same (mirrored) boxes. The model was trained with
# random flips, so the mirror is an equally good second opinion; two opinions average out some of
# each one's errors. One thing needs care: a box shift `tx` to the right *in the mirror* is a
# shift to the left here, so the mirror's `tx` changes sign.
#
# **An enlarged view** (`test_scales=[1.0, 1.5]`) does the same with the image enlarged 1.5×
# (bilinear): every shape covers 1.5 × 1.5 times as many cells of each feature map — a 20-px shape
# 7.5 × 7.5 cells of P2 instead of 5 × 5 — while the box deltas, being relative to the proposal,
# need no correction, and a mask predicted in the enlarged box is already in box coordinates.
# With `test_flip` the enlarged copy's mirror is a fourth view.

# %%
print(inspect.getsource(tta.average_box_outputs))
print(inspect.getsource(tta.resize_images))

# %% [markdown]
# Resizing is two matrix products per channel, `Ry @ image @ Rx.T`. Each row of `Ry` holds the two
# weights of linear interpolation between the pixel centres either side of the output sample (at
# `(j + 0.5) · H / H2 − 0.5`: chapter 03's half-pixel convention, which makes a box edge at `x`
# land at `x · H2 / H`). These are the very weights with which mini-masks crop and resize a mask to
# its box (`data.masks`), for the "box" that is the whole image. The four views of one image:

# %%
ry = pixel_to_grid_weights(np.zeros(1), np.full(1, 4.0), 4, 6, np, np.float64)[0]
print("4 pixels -> 6: rows are output samples, columns input pixels\n", ry.round(3))
image = val[0]["image"].astype(np.float32).transpose(2, 0, 1)[None] / 255.0      # (1, 3, H, W)
h, w = image.shape[2:]
big = tta.resize_images(image, (round(1.5 * h), round(1.5 * w)))
views = {"the image": image, "mirrored": image[..., ::-1], "enlarged 1.5×": big,
         "enlarged, mirrored": big[..., ::-1]}
fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.5, 1.5]})
for ax, (name, v) in zip(axes, views.items()):
    ax.imshow(np.clip(v[0].transpose(1, 2, 0), 0, 1))
    ax.set_title(f"{name}: {v.shape[3]}×{v.shape[2]}"), ax.set_axis_off()
plt.show()

# %% [markdown]
# ## 3. A second look at each box
#
# The box head regresses each *proposal* to a box; it was trained on proposals overlapping an
# object at IoU ≥ 0.5, so one step of regression gets a loose proposal close, not exactly onto the
# object. Its output is a better box than its input — and nothing stops us from giving it that
# box again: pool the features inside each final detection, run the box head once more (in every
# view, averaged as before) and move the box by the deltas of its own class. This is **iterative
# box regression** (Gidaris & Komodakis 2015; Cascade R-CNN's "iterative BBox" baseline, which it
# then improves on with heads trained for each stage). The detections and their scores stay those
# of the first pass; only their boxes move, and with them the masks, which the mask head predicts
# inside the box. On the first validation image, one pass against two (green: ground truth):

# %%
print(inspect.getsource(TestTimePredictor.refine_boxes))

# %%
refine_dets = {r: predict_with({**ALL_OFF, "box_refine": r}, images[0], 0.3) for r in (False, True)}
gt_boxes = np.asarray(val[0]["boxes"], dtype=np.float64)
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, r in zip(axes, (False, True)):
    d = refine_dets[r]
    draw_detections(val[0]["image"], d["boxes"], d["labels"], d["scores"], class_names=NAMES, ax=ax,
                    title="second pass" if r else "one pass (the paper)")
    for x1, y1, x2, y2 in gt_boxes:
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
plt.show()
for j in range(len(refine_dets[False]["scores"])):
    before, after = refine_dets[False]["boxes"][j], refine_dets[True]["boxes"][j]
    iou = [box_iou(b[None].astype(np.float64), gt_boxes).max(initial=0.0) for b in (before, after)]
    name = NAMES[int(refine_dets[False]["labels"][j])]
    print(f"{name:9s} moved by {np.abs(after - before).max():5.2f} px, "
          f"IoU with the nearest ground-truth box {iou[0]:.3f} -> {iou[1]:.3f}")

# %% [markdown]
# ## 4. Mask rescoring
#
# The class score says how sure the box head is of the *class*; mask AP ranks *masks*. SOLOv2's
# **maskness** is the mean probability of the pixels a mask keeps (`p ≥ 0.5`): near 1 for a crisp
# mask, near 0.5 for a hesitant, blurry one. `mask_rescoring` multiplies each score by it, which
# moves hesitant masks down the ranking. Two made-up 28×28 mask probabilities of the same disc:

# %%
print(inspect.getsource(tta.maskness))

# %%
yy, xx = np.mgrid[0:28, 0:28] + 0.5
dist = np.hypot(yy - 14, xx - 14) - 9.0                      # < 0 inside a disc of radius 9
crisp = 1 / (1 + np.exp(dist / 0.5))                         # sharp edge
hesitant = 0.35 + 0.3 / (1 + np.exp(dist / 3.0))             # soft edge, never sure
probs = np.stack([crisp, hesitant]).astype(np.float32)
mness = tta.maskness(probs)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, p, name, m in zip(axes, probs, ("crisp", "hesitant"), mness):
    im = ax.imshow(p, vmin=0, vmax=1, cmap="viridis")
    ax.contour(p >= 0.5, levels=[0.5], colors="w", linewidths=1)
    ax.set_title(f"{name}: maskness {m:.3f}"), ax.set_axis_off()
fig.colorbar(im, ax=axes, shrink=0.8, label="mask probability")
plt.show()

# %% [markdown]
# ## 5. Matrix NMS
#
# The box NMS runs per class, so two detections survive together whenever their *boxes* overlap
# less than its threshold — even if their *masks* cover the same pixels: a duplicate, or the same
# shape called a square and a triangle. Each such pair puts a confident false positive into the
# ranking. In the shapes data the visible masks of two objects never overlap (occluded parts are
# cut out), so a large mask IoU between any two detections means one of them is wrong. **Matrix
# NMS** (SOLOv2) deletes nothing: it multiplies each detection's score by a decay that shrinks
# with its mask IoU to every higher-scored detection, compensated when that one is itself
# overlapped — all pairs at once, from one IoU matrix (chapter 10's `mask_iou` of the detections'
# masks with themselves). A duplicate drops far down the ranking, where it costs AP50 little, and
# is still there if it happens to be the better mask at a strict IoU threshold. The shapes preset
# applies it across classes (`matrix_nms="all_classes"`; SOLOv2's own is `"per_class"`).

# %%
print(inspect.getsource(tta.matrix_nms_decay))

# %%
canvas = np.zeros((3, 40, 60), bool)
canvas[0, 8:28, 6:26] = True                                  # a square
canvas[1, 9:29, 8:28] = True                                  # the square again, 2 px off
canvas[2, 12:30, 36:54] = True                                # another object
toy_scores = np.array([0.9, 0.8, 0.7])
decay = tta.matrix_nms_decay(canvas, toy_scores, sigma=base_cfg.matrix_nms_sigma)
toy_iou = mask_iou(canvas, canvas)
fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
for i, ax in enumerate(axes):
    ax.imshow(canvas.sum(0), cmap="Greys", alpha=0.3), ax.imshow(canvas[i], cmap="Reds", alpha=0.6)
    ax.set_title(f"score {toy_scores[i]} × decay {decay[i]:.3f} = {toy_scores[i] * decay[i]:.3f}",
                 fontsize=9)
    ax.set_axis_off()
plt.show()
print(f"mask IoU of the square and its duplicate: {toy_iou[0, 1]:.3f}; "
      f"with the other object: {toy_iou[0, 2]:.3f}")

# %% [markdown]
# ## 6. What they add, on a few images
#
# Each refinement switched on in turn, on top of the ones before it, evaluated the COCO way on the
# first validation images. **On a handful of images the differences are noise**; the preset's
# figures with and without the refinements on the 200 validation images, and their cost in
# inference time, are in `docs/results.md`.

# %%
steps = {"the paper's inference": ALL_OFF}
for name, key, value in (("+ mirrored view", "test_flip", True),
                         ("+ enlarged views", "test_scales", [1.0, 1.5]),
                         ("+ second box pass", "box_refine", True),
                         ("+ mask rescoring", "mask_rescoring", True),
                         ("+ Matrix NMS", "matrix_nms", "all_classes")):
    steps[name] = {**list(steps.values())[-1], key: value}
ablation = {}
for name, settings in steps.items():
    model.config = with_inference_overrides(base_cfg, settings)
    ablation[name] = evaluate_model(model, val, tempfile.mkdtemp(), progress=False,
                                    log=lambda *a: None)
model.config = base_cfg
print(f"{N_MODEL} val images                  bbox AP  segm AP  segm AP50  s/image")
for name, m in ablation.items():
    print(f"{name:30s} {m['bbox']['AP']:7.3f}  {m['segm']['AP']:7.3f}  {m['segm']['AP50']:9.3f}"
          f"  {m['seconds_per_image']:7.2f}")

fig, ax = plt.subplots(figsize=(9, 3.5))
xs = np.arange(len(ablation))
for off, key, kind in ((-0.2, "AP", "bbox"), (0.0, "AP", "segm"), (0.2, "AP50", "segm")):
    ax.bar(xs + off, [m[kind][key] for m in ablation.values()], width=0.2, label=f"{kind} {key}")
ax.set_xticks(xs, list(ablation), rotation=15, fontsize=8), ax.set_ylim(0, 1.2)
ax.set_title(f"each refinement added to the ones before, on {N_MODEL} validation images")
ax.legend(fontsize=8, loc="upper center", ncol=3)
plt.show()

# %% [markdown]
# ## 7. Tuning an inference setting without touching the test set
#
# Every inference setting (score threshold, NMS threshold, the refinements) can be tuned after
# training — but not on the images the AP is reported on, or the reported AP flatters the model.
# The shapes data make a clean tuning set easy: images are generated from their index, and the
# recipe trains on the first `num_train_images` of the training split only, so the images after
# them are unseen training-split images, apart from the validation split.
# `mrcnn-ref evaluate --split train --first-image N --num-images M` scores them; the preset's
# choices were made that way (`docs/recipe.md`). One such choice is the per-class NMS threshold:
# shapes overlap and nest, so two objects of one class often have boxes at IoU above 0.5, and NMS
# at 0.5 deletes one of them. The same comparison on a few tuning images:

# %%
n_train = run_cfg.train.num_train_images
tuning = ShapesDataset("train", num_images=n_train + N_MODEL, image_size=run_cfg.train.image_size)
for thresh in (0.5, 0.7):
    model.config = with_inference_overrides(base_cfg, {"nms_thresh": thresh})
    m = evaluate_model(model, tuning, tempfile.mkdtemp(), first_image=n_train, progress=False,
                       log=lambda *a: None)
    print(f"NMS {thresh}: training-split images {n_train}..{n_train + N_MODEL - 1}  "
          f"bbox AP {m['bbox']['AP']:.3f}  segm AP {m['segm']['AP']:.3f}")
model.config = base_cfg

# %% [markdown]
# ## Check
#
# * With every refinement off the predictor returns exactly `model.predict`'s detections; with
#   only the second box pass on, the same scores and labels in the same order (only boxes move).
# * Averaging a view with its mirror, whose `tx` is negated, gives back the view itself; each row
#   of the resize weights sums to 1.
# * A crisp mask has a higher maskness than a hesitant one, and every maskness lies in [0.5, 1].
# * Matrix NMS keeps the top score, decays the duplicate far down and leaves the separate object
#   alone; inside the predictor it only lowers scores, by exactly `matrix_nms_decay`'s factors.

# %%
for a, b in zip(paper, plain):
    for k in ("boxes", "scores", "labels", "masks"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
np.testing.assert_array_equal(refine_dets[True]["scores"], refine_dets[False]["scores"])
np.testing.assert_array_equal(refine_dets[True]["labels"], refine_dets[False]["labels"])

rng = np.random.default_rng(0)
logits, deltas = rng.standard_normal((5, 4)), rng.standard_normal((5, 16))
mirror = deltas.reshape(5, 4, 4).copy()
mirror[:, :, 0] *= -1
avg_logits, avg_deltas = tta.average_box_outputs([(logits, deltas, False),
                                                  (logits, mirror.reshape(5, 16), True)])
p_avg, p_one = (np.exp(z - z.max(1, keepdims=True)) for z in (avg_logits, logits))
np.testing.assert_allclose(p_avg / p_avg.sum(1, keepdims=True), p_one / p_one.sum(1, keepdims=True), rtol=1e-12)
np.testing.assert_allclose(avg_deltas, deltas, rtol=1e-12)
np.testing.assert_allclose(ry.sum(axis=1), 1.0)

assert mness[0] > mness[1] + 0.2, mness
assert np.all((mness >= 0.5) & (mness <= 1.0)), mness

assert decay[0] == 1.0 and decay[1] < 0.5 and decay[2] == 1.0, decay
d_off = predict_with({"matrix_nms": "off"}, images[0], 0.0)
d_on = predict_with({"matrix_nms": "all_classes"}, images[0], 0.0)
if len(d_off["scores"]):
    factor = tta.matrix_nms_decay(d_off["masks"], d_off["scores"], sigma=base_cfg.matrix_nms_sigma)
    assert factor[0] == 1.0 and np.all((factor > 0) & (factor <= 1.0)), factor
    assert np.all(np.diff(d_on["scores"]) <= 0)
    expected = d_off["scores"] * factor.astype(d_off["scores"].dtype)
    np.testing.assert_allclose(np.sort(d_on["scores"]), np.sort(expected), rtol=1e-6)
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. **Probabilities or logits.** Flip TTA averages *probabilities*. Average the two views' mask
#    *logits* instead (before the sigmoid) and compare the segm AP of section 6. When do the two
#    rules disagree most?
# 2. **Which scale?** Try `test_scales` `[1.0, 1.25]` and `[1.0, 2.0]` on tuning images (not the
#    validation images). Which objects gain from an enlarged view, and which lose — think of a
#    large shape enlarged beyond every object seen in training.
# 3. **A third pass.** Call `refine_boxes` twice. Do the boxes keep moving? Why does Cascade R-CNN
#    train a separate head for each stage instead?
# 4. **Soft-NMS against Matrix NMS.** Soft-NMS decays scores one detection at a time, in order.
#    Implement it with mask IoUs and compare its decays with `matrix_nms_decay` on the toy masks
#    of section 5. Which needs a Python loop, and why does that matter on a GPU (chapter 11)?
# 5. **Maskness threshold.** `maskness` averages the probabilities ≥ 0.5. What would averaging
#    all probabilities reward instead? Try it on the two made-up masks of section 4.

# %% [markdown]
# ## Summary
#
# * Five test-time refinements, none in the paper, each a config switch; all off = `model.predict`.
# * Views (mirror, enlarged) average the heads' outputs; a second box pass re-regresses each box.
# * Maskness and Matrix NMS rescore: hesitant masks and duplicates drop down the ranking.
