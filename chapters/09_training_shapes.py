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
# # Chapter 09 — Training Mask R-CNN on the shapes data
#
# Chapters 02–08 built every piece of the network and every loss, each with its backward pass.
# Training puts them in one loop: draw an image, run the forward pass, add the five losses, run the
# backward pass, update the weights — a few thousand times. Faster R-CNN (Ren et al. 2015) already
# trains its two stages jointly on four losses, two for the RPN and two for the box head, combined
# as a weighted sum; Mask R-CNN (He et al. 2017) adds the fifth, the mask loss. We use weight 1
# for all five, as the paper and torchvision do.
#
# Plan: 1. one training iteration — the loop, the learning-rate schedule, SGD with momentum and
# weight decay, AdamW, gradient clipping and the NaN guard; 2. the loss curves of a short live run
# and of the shipped checkpoint; 3. its detections on validation images; 4. how to train (and
# resume, and export) a model yourself.

# %%
import dataclasses
import inspect
import json
import os
import tempfile
import textwrap
import time

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_ref import parallel
from mrcnn_ref import train as train_module
from mrcnn_ref.data.masks import mask_iou
from mrcnn_ref.data.shapes import CATEGORIES, ShapesDataset
from mrcnn_ref.inference import predict_image
from mrcnn_ref.model.mask_rcnn import MaskRCNN
from mrcnn_ref.model_io import (BUNDLED_CHECKPOINT, bundled_or_trained_model, export_model,
                                load_bundled_model, load_model, summarize_history)
from mrcnn_ref.nn.checkpoint import load_checkpoint
from mrcnn_ref.nn.optim import SGD, AdamW, WarmupCosineLR, clip_grad_norm, default_no_decay
from mrcnn_ref.run_config import TrainConfig, load_run_config
from mrcnn_ref.train import (LOSS_KEYS, StepImages, TrainingDiverged, lr_schedule,
                             sample_forward_backward, train, update_parameters)
from mrcnn_ref.visualize import draw_detections, draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
LIVE_ITERS = 8 if SMOKE else 200          # the live training run of section 2
FALLBACK_ITERS = 30 if SMOKE else 1500    # only used when no checkpoint ships (section 3)
N_SHOW = 4 if SMOKE else 6                # validation images drawn in section 3
N_CHECK = 8 if SMOKE else 24              # validation images checked in section 3
NAMES = {c["id"]: c["name"] for c in CATEGORIES}
print("smoke mode:", SMOKE)
T0 = time.perf_counter()


def quiet(*args, **kwargs):
    """A `log` function for train() that prints nothing."""


def run_train(config, out_dir, log=quiet, **kwargs):
    """train() without progress bar or log lines."""
    return train(config, out_dir=out_dir, progress=False, log=log, **kwargs)


# %% [markdown]
# Every stage with weights (highlighted) learns at once, from the sum of the five losses:

# %%
ax = draw_pipeline(highlight=["backbone", "rpn", "box_head", "mask_head"])
ax.set_title("training: the four stages with weights learn together from the five losses")
plt.show()

# %% [markdown]
# ## 1. One training iteration
#
# ### The loop
#
# `mrcnn_ref.train.train` is the whole training procedure; `mrcnn-ref train` calls it. The
# module's docstring gives one step in five lines (printed first below). The step's images are
# `StepImages`' job: image `j` of step `it` makes its own random generator
# `default_rng([seed, it, j])` — which image, the horizontal flip (with probability ½, Fast R-CNN's
# only augmentation), the sampled anchors and RoIs all come from it, so a run is reproducible and
# can be resumed exactly (section 4) — and `sample_forward_backward` runs `forward_train` (the five
# losses) and `backward`, which *adds* to the gradients. `run` hands some images to helper
# processes (below) and adds their gradients to this process's in a fixed order. Last, the body of
# the training loop from the learning rate to the update (the rest of `train` builds the model,
# the optimiser and the run folder, records the history and writes checkpoints).

# %%
print("\n\n".join(train_module.__doc__.split("\n\n")[:3]), "\n")
print(inspect.getsource(StepImages.compute))
print(inspect.getsource(StepImages.run))
src = inspect.getsource(train_module)                  # wherever in the module the loop lives
start = src.rindex("\n", 0, src.index("for it in range(")) + 1
end = src.index("\n", src.index("update_parameters(model, optim, n_img, lr"))
print(textwrap.dedent(src[start:end]))
print(inspect.getsource(update_parameters))

# %% [markdown]
# The five losses, in the order `forward_train` returns them (chapter 07 for the first two,
# chapter 08 for the other three):
#
# | key | what | on which samples |
# |---|---|---|
# | `loss_objectness` | binary cross-entropy of the RPN's object/background logit | the sampled anchors (≤ 256 per image) |
# | `loss_rpn_box_reg` | smooth L1 of the RPN's box deltas | the positive sampled anchors |
# | `loss_classifier` | softmax cross-entropy over the K classes (background included) | the sampled RoIs (`box_batch_size_per_image` per image, ≤ 25 % foreground) |
# | `loss_box_reg` | smooth L1 of the class-specific box deltas, true class only | the foreground RoIs |
# | `loss_mask` | per-pixel sigmoid cross-entropy of the true class's mask | the foreground RoIs |
#
# The model is trained on their plain sum, `total`.

# %% [markdown]
# ### Images per step, processes, and the preset
#
# The paper trains with 16 images per step (2 on each of 8 GPUs), lr 0.02, momentum 0.9 and weight
# decay 0.0001 — `TrainConfig`'s defaults, apart from the batch. A smaller batch gives a noisier
# gradient, and the "linear scaling rule" (Goyal et al. 2017: scale the lr with the batch size)
# says the lr should shrink with it. The `"shapes"` preset, printed below, is sized for a 2-core
# CPU: a few images per step, computed in `workers` processes at once (data parallelism). Our
# model is small, so one step is many small array operations that a second BLAS thread hardly
# speeds up; two processes, each on its own image, get through more images per second.
# `docs/recipe.md` records how each of the preset's numbers was chosen, and what else was tried.
#
# How the processes cooperate (`mrcnn_ref.parallel`): the parameters are moved into one block of
# shared memory *before* the worker is forked, so both processes read the same weights; each step
# the worker gets its image indices, runs forward and backward on its own copy of the model,
# writes its gradients into a shared buffer and replies with its losses. Only the main process
# updates the weights, and only while the worker waits for its next job.

# %%
print(inspect.getsource(parallel.share_parameters))
shapes_cfg = load_run_config("shapes")
tcfg = shapes_cfg.train
paper = TrainConfig()                  # the defaults: the paper's SGD settings
print(tcfg)

# %% [markdown]
# ### Warm-up, then a cosine
#
# At the start the network is random and its gradients are large and unreliable; a full-size step
# then can throw the weights far away. **Warm-up** ramps the lr linearly from
# `warmup_factor · base_lr` to `base_lr` over the first `warmup_iters` iterations. After that the
# lr follows half a **cosine** down to 0 at the last iteration: large steps early to make
# progress, small steps late to settle in a minimum. (The paper divides the lr by 10 at fixed
# iterations instead — the `"step"` schedule, also available.)

# %%
print(inspect.getsource(lr_schedule))
print(inspect.getsource(WarmupCosineLR))

# %%
cosine = lr_schedule(tcfg)
step = lr_schedule(dataclasses.replace(tcfg, lr_schedule="step"))
its = np.arange(tcfg.iterations)
lr_cos = np.array([cosine(i) for i in its])
lr_step = np.array([step(i) for i in its])

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for ax, n in zip(axes, (tcfg.iterations, 3 * tcfg.warmup_iters)):
    ax.plot(its[:n], lr_cos[:n], label=f"cosine (the '{shapes_cfg.name}' preset)")
    ax.plot(its[:n], lr_step[:n], "--", label=f"step: × {tcfg.gamma} at {list(tcfg.lr_steps)} of the run")
    ax.axvline(tcfg.warmup_iters, color="gray", lw=0.8, ls=":")
    ax.set_xlabel("iteration"), ax.set_ylabel("learning rate"), ax.grid(alpha=0.3)
axes[0].set_title(f"the whole run: {tcfg.iterations} iterations, base lr {tcfg.base_lr}")
axes[1].set_title(f"the first {3 * tcfg.warmup_iters} iterations: warm-up over {tcfg.warmup_iters}")
axes[0].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### SGD with momentum, and which parameters decay
#
# `SGD.step` is PyTorch's update: the gradient `g` gets `weight_decay · p` added (for the
# parameters that decay), the momentum buffer becomes `buf = momentum · buf + g`, and the
# parameter moves by `−lr · buf`. Momentum 0.9 makes each step roughly an average of the last ~10
# gradients, which smooths the noise of a few images. Weight decay (an L2 penalty
# `weight_decay/2 · ‖p‖²`) is applied only to conv and linear weights: **biases and the
# normalisation layers' scale and shift get none** (`default_no_decay`: names ending in `bias`, and
# every 1-D parameter) — shrinking a GroupNorm scale or a bias towards zero regularises nothing
# useful. Below, two steps of `SGD.step` on three small arrays — a conv-like weight (decays), its
# bias and a norm scale (neither decays) — next to the same update written out by hand.

# %%
print(inspect.getsource(default_no_decay))
print(inspect.getsource(SGD.step))

# %%
rng = np.random.default_rng(0)
toy = {"conv.weight": rng.standard_normal((2, 3)), "conv.bias": rng.standard_normal(2),
       "gn.weight": rng.standard_normal(3)}
toy_grads = [{k: rng.standard_normal(v.shape) for k, v in toy.items()} for _ in range(2)]
start_toy = {k: v.copy() for k, v in toy.items()}
sgd = SGD(toy, lr=0.1, momentum=0.9, weight_decay=0.01)
for g in toy_grads:
    sgd.step({k: v.copy() for k, v in g.items()})

by_hand = {}
for k, p0 in start_toy.items():
    p, buf = p0.copy(), np.zeros_like(p0)
    wd = 0.0 if k.endswith("bias") or p0.ndim == 1 else 0.01
    for g in toy_grads:
        buf = 0.9 * buf + (g[k] + wd * p)
        p = p - 0.1 * buf
    by_hand[k] = p
    print(f"{k:12s} weight decay {wd:<5} max |SGD.step - by hand| = {np.abs(toy[k] - p).max():.1e}")

# %% [markdown]
# ### AdamW: a step size for every weight
#
# SGD moves every weight by `lr · g`, so a layer whose gradients are 100 times smaller than
# another's learns 100 times slower. In a network trained from scratch the gradient scale differs
# a lot from layer to layer, and one lr cannot suit them all. **Adam** (Kingma & Ba 2015) divides
# each weight's step by a running estimate of its own gradient's size. It keeps two exponential
# averages per weight, of the gradient (`m`, factor β₁) and of its square (`v`, factor β₂), and
# steps by `lr · m̂ / (√v̂ + ε)`, where the hats divide out the bias of averages that start at zero
# (`m̂ = m / (1 − β₁ᵗ)` at step `t`). At the first step this is `lr · g / |g| = lr · sign(g)`:
# every weight moves by the same amount `lr`, whatever the scale of its gradient.
#
# **AdamW** (Loshchilov & Hutter 2019) changes how weight decay enters. An L2 term added to the
# gradient would also be divided by `√v̂`, so weights with large gradients would hardly decay.
# AdamW instead shrinks the weight directly, `p ← p − lr · wd · p`, outside the adaptive step
# ("decoupled"), so its `weight_decay` is a rate per unit of lr, not SGD's L2 coefficient. The same
# parameters are exempt. Our `AdamW.step` is `torch.optim.AdamW`'s update (a test compares them):

# %%
print(inspect.getsource(AdamW.step))

# %% [markdown]
# The figure takes one real gradient of the randomly initialised shapes model, on one training
# image, and plots for every weight array, in network order, the size of the first step relative
# to the weights, ‖Δp‖ / ‖p‖: for SGD at the paper's settings, for AdamW at the preset's. Both
# work on float64 copies, so that the check below can compare them with the formula to many
# digits.

# %%
model_shapes = MaskRCNN(shapes_cfg.model, rng=np.random.default_rng(0))
params = model_shapes.named_parameters()
optim = SGD(params, lr=paper.base_lr, momentum=paper.momentum, weight_decay=paper.weight_decay)
sample = ShapesDataset(split="train", num_images=1, image_size=tcfg.image_size, seed=0)[0]
model_shapes.zero_grad()
sample_forward_backward(model_shapes, sample, np.random.default_rng(0))    # as one image of train()
real_grads = {k: v.astype(np.float64) for k, v in model_shapes.named_grads().items()}
weight_names = [k for k, p in params.items() if p.ndim >= 2]


def first_step(opt_class, lr, **kwargs):
    """One step of opt_class on float64 copies of the parameters with real_grads.

    Returns (‖Δp‖ / ‖p‖ for each array of weight_names, {name: Δp = p_before - p_after})."""
    p0 = {k: v.astype(np.float64) for k, v in params.items()}
    opt_class(p0, lr=lr, **kwargs).step({k: v.copy() for k, v in real_grads.items()})
    steps = {k: params[k] - p0[k] for k in params}
    return np.array([np.linalg.norm(steps[k]) / np.linalg.norm(params[k]) for k in weight_names]), steps


rel_sgd, steps_sgd = first_step(SGD, optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay)
rel_adamw, steps_adamw = first_step(AdamW, tcfg.base_lr, betas=tcfg.adam_betas, eps=tcfg.adam_eps,
                                    weight_decay=tcfg.weight_decay)

parts = [k.split(".")[1] if k.startswith("backbone.") else k.split(".")[0] for k in weight_names]
fig, ax = plt.subplots(figsize=(12, 4))
ax.semilogy(rel_sgd, "o-", ms=3, label=f"SGD, lr {optim.lr}")
ax.semilogy(rel_adamw, "s-", ms=3, label=f"AdamW, lr {tcfg.base_lr}")
for i in range(len(parts)):
    if i == 0 or parts[i] != parts[i - 1]:                   # body, fpn, rpn, box_head, ...
        ax.axvline(i - 0.5, color="gray", lw=0.8, ls=":")
        ax.annotate(parts[i], (i, 1.0), xycoords=("data", "axes fraction"), fontsize=8,
                    va="top", xytext=(2, -2), textcoords="offset points")
ax.set_xlabel("weight array (network order)"), ax.set_ylabel("‖Δp‖ / ‖p‖ after one step")
ax.set_title("first step on one real gradient of the untrained shapes model")
ax.legend(fontsize=8, loc="lower right"), ax.grid(alpha=0.3)
plt.show()


def spread(r):
    """Largest over smallest relative step."""
    return r.max() / r.min()


for name, r in (("SGD", rel_sgd), ("AdamW", rel_adamw)):
    print(f"{name:6s} relative step from {r.min():.1e} ({weight_names[r.argmin()]}) "
          f"to {r.max():.1e} ({weight_names[r.argmax()]}): ratio {spread(r):,.0f}")

# %% [markdown]
# SGD's relative steps spread over orders of magnitude (the ratio printed above): weights
# initialised small would move by many times their own size in one full-lr step (one reason for
# the warm-up), while the layers whose gradients are tiny at the start would hardly move at all.
# AdamW's relative step is about `lr` over the weights' RMS: it depends on how a layer was
# initialised, not on its gradient, and its spread is far smaller.

# %% [markdown]
# ### Gradient clipping and the NaN guard
#
# One bad image (an object the network has never seen, a freak proposal) can produce a gradient
# many times larger than usual. `clip_grad_norm` computes the norm of *all* gradients together,
# `‖g‖ = sqrt(Σ_k ‖g_k‖²)`, and if it exceeds `max_norm` scales every gradient by the same factor
# so that it equals `max_norm`. The direction of the step is kept, only its length is capped.
#
# If the lr is far too large the weights blow up and the loss becomes `inf` or `NaN`; a single
# NaN gradient would poison every parameter through the update, and the next checkpoint would
# save garbage. So `train` checks the loss after each forward pass and the gradient norm before
# the step: if either is not finite it raises `TrainingDiverged` **before** the update, and the
# last periodic checkpoint on disk is still the last good model. We try both on the tiny run (ten
# iterations, no warm-up) with an absurd base lr of 10, with and without clipping.

# %%
print(inspect.getsource(clip_grad_norm))
MAX_NORM = tcfg.clip_grad_norm
g_big = {k: 100 * v.copy() for k, v in toy_grads[0].items()}
big_before = np.concatenate([v.ravel() for v in g_big.values()])
norm_big = clip_grad_norm(g_big, MAX_NORM)
big_after = np.concatenate([v.ravel() for v in g_big.values()])
print(f"a large gradient: norm {norm_big:.1f} -> {np.linalg.norm(big_after):.4f}")


def tiny_run(base_lr, clip, iterations=10):
    """The tiny preset for a few iterations at base_lr; (history, out_dir, the error or None)."""
    out = tempfile.mkdtemp(prefix="mrcnn_ref_ch09_")
    cfg = {"preset": "tiny", "train": {"iterations": iterations, "checkpoint_every": iterations,
                                       "base_lr": base_lr, "warmup_iters": 0, "clip_grad_norm": clip}}
    try:
        with np.errstate(all="ignore"):            # the overflow is the point of the experiment
            return run_train(cfg, out), out, None
    except TrainingDiverged as e:
        with open(os.path.join(out, "history.json")) as f:    # written even when training stops
            return json.load(f), out, e


runs = {f"clip {MAX_NORM:g}": tiny_run(10.0, MAX_NORM), "no clipping": tiny_run(10.0, 0)}
for name, (hist, out, err) in runs.items():
    print(f"base lr 10, {name}: {len(hist['total'])} iterations, last loss {hist['total'][-1]:.3g}; "
          + (f"stopped: {str(err)[:100]}..." if err else "finished"))
    print(f"    files written: {sorted(os.listdir(out))}")

# %% [markdown]
# The clipped run finishes, with a loss far above a normal run's: clipping does not make a bad lr
# good (warm-up and a sane base lr do that), it is insurance against the rare bad step. The
# unclipped run stopped before any checkpoint was due, so it wrote only `history.json`, with the
# iterations it completed.
#
# ### Check: the pieces of one iteration
#
# * `SGD.step` equals the update by hand; the bias and norm scale got no weight decay, and in the
#   shapes model exactly the arrays with `ndim ≥ 2` decay;
# * on the real gradient, AdamW's first step is `lr · g / (|g| + ε)` plus the decoupled decay
#   `lr · wd · p` where the weight decays — so it is `lr · sign(g)` wherever `|g| ≫ ε` — and SGD's
#   relative steps spread over a far wider range than AdamW's;
# * clipping brought the large gradient's norm to `max_norm` without turning it;
# * the cosine schedule starts at `warmup_factor · base_lr`, reaches `base_lr` at the end of the
#   warm-up and falls monotonically after it;
# * without clipping, the absurd lr stopped with `TrainingDiverged` before writing any
#   checkpoint, with only finite losses in its history; the clipped run finished.

# %%
for k in toy:
    np.testing.assert_allclose(toy[k], by_hand[k], rtol=1e-12, atol=1e-12, err_msg=k)
assert sgd.decay == {"conv.weight": 0.01, "conv.bias": 0.0, "gn.weight": 0.0}
assert all((optim.decay[k] > 0) == (p.ndim >= 2) for k, p in params.items())

lr, wd, eps = tcfg.base_lr, tcfg.weight_decay, tcfg.adam_eps
for k in params:
    g, p = real_grads[k], params[k].astype(np.float64)      # float64, like the steps
    decay = wd * p if p.ndim >= 2 else 0.0
    np.testing.assert_allclose(steps_adamw[k], lr * g / (np.abs(g) + eps) + lr * decay,
                               rtol=1e-9, atol=1e-15, err_msg=k)
    clear = np.abs(g) > 1e-4                      # |g| ≫ ε: the step is lr · sign(g) to 1e-4
    np.testing.assert_allclose((steps_adamw[k] - lr * decay)[clear], lr * np.sign(g[clear]),
                               rtol=1e-4, err_msg=k)
assert spread(rel_sgd) > 10 * spread(rel_adamw), (spread(rel_sgd), spread(rel_adamw))

assert norm_big > MAX_NORM and abs(np.linalg.norm(big_after) - MAX_NORM) < 1e-4
np.testing.assert_allclose(big_after, big_before * (MAX_NORM / norm_big), rtol=1e-5)

assert abs(lr_cos[0] - tcfg.warmup_factor * tcfg.base_lr) < 1e-12
no_warmup = WarmupCosineLR(tcfg.base_lr, tcfg.iterations)
assert abs(cosine(tcfg.warmup_iters) - no_warmup(tcfg.warmup_iters)) < 1e-12
assert np.all(np.diff(lr_cos[:tcfg.warmup_iters + 1]) > 0)        # warm-up: rising
assert np.all(np.diff(lr_cos[tcfg.warmup_iters:]) <= 0)           # then falling
assert lr_cos.max() <= tcfg.base_lr and lr_cos[-1] < 1e-3 * tcfg.base_lr

hist_bad, out_bad, err_bad = runs["no clipping"]
assert isinstance(err_bad, TrainingDiverged), "the unclipped run was expected to diverge"
assert not any(f.endswith(".npz") for f in os.listdir(out_bad)), os.listdir(out_bad)
assert np.all(np.isfinite(hist_bad["total"])) and len(hist_bad["total"]) < 10
assert runs[f"clip {MAX_NORM:g}"][2] is None and len(runs[f"clip {MAX_NORM:g}"][0]["total"]) == 10
print("all checks passed")

# %% [markdown]
# ## 2. Loss curves: a short live run, and the shipped checkpoint's
#
# Now the real thing, on the `"tiny"` run preset (printed below): a few small training images, the
# tiny ResNet-FPN, a short warm-up, then a cosine over the run — a few seconds. The loss is noisy
# from iteration to iteration (every iteration sees a different image, with different objects and
# different sampled anchors and RoIs), so the figure shows a moving average next to the raw values.

# %%
live_spec = {"preset": "tiny", "train": {"iterations": LIVE_ITERS, "checkpoint_every": LIVE_ITERS}}
live_cfg = load_run_config(live_spec)
print(live_cfg.train)
live_dir = tempfile.mkdtemp(prefix="mrcnn_ref_ch09_live_")
t_live = time.perf_counter()
live = run_train(live_spec, live_dir)
print(f"{LIVE_ITERS} iterations in {time.perf_counter() - t_live:.1f} s")


def plot_losses(x, hist, title, window=1):
    """The five losses (left) and the total with the lr (right) of a history against iterations
    ``x``; with ``window > 1`` thin raw curves and thick moving averages over ``window`` values."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    w = max(1, min(window, len(x)))
    for k, color in zip((*LOSS_KEYS, "total"), plt.cm.tab10.colors):
        ax = axes[1] if k == "total" else axes[0]
        if w > 1:
            ax.plot(x, hist[k], color=color, alpha=0.3, lw=0.8)
        mean = np.convolve(hist[k], np.ones(w) / w, mode="valid")
        ax.plot(x[w - 1:], mean, color=color, lw=2, label=k)
    lr_ax = axes[1].twinx()
    lr_ax.plot(x, hist["lr"], "k:", label="lr")
    lr_ax.set_ylabel("learning rate")
    for ax in axes:
        ax.set_yscale("log"), ax.set_xlabel("iteration"), ax.grid(alpha=0.3), ax.legend(fontsize=8)
    lr_ax.legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    plt.tight_layout()
    plt.show()


W = max(1, min(20, LIVE_ITERS // 5))
plot_losses(np.arange(1, LIVE_ITERS + 1), live, f"the live tiny run (thick: mean of {W} iterations)", W)

# %% [markdown]
# Each loss falls at its own pace. The objectness loss drops sharply once the RPN can tell the
# shapes from the plain background; the second-stage losses can only improve once the proposals
# land on the objects. The two box-regression losses are the noisiest: each is an average over
# the few foreground anchors or RoIs of a single image. A run this short is far from a trained
# model — the point here is only that the loop learns.
#
# The package ships one trained model, `mrcnn_ref/checkpoints/shapes.npz`, made with
# `mrcnn-ref train --config shapes` (section 4). `load_bundled_model()` returns
# `(model, run_config, extra)`, or `None` when the file is absent. The shipped file is *exported*
# from a training checkpoint, which keeps a compact version of the per-iteration history,
# `extra["loss_history"]`: `summarize_history` averages every loss (and the lr and the seconds
# per iteration) over consecutive windows, at most 500 points per curve. Without a shipped history
# the figure shows the live run instead, summarised the same way. What to look for: every loss
# should fall, fast at first and then slowly; none should climb steadily (a sign of too large an
# lr, or of a bug in a backward pass); and the curves should flatten towards the end, as the
# cosine brings the lr to 0.

# %%
print(inspect.getsource(summarize_history))
bundled = load_bundled_model()
shipped_cfg, shipped_extra = (None, {}) if bundled is None else bundled[1:]
if bundled is None:
    print(f"no checkpoint ships ({BUNDLED_CHECKPOINT} is absent)")
else:
    print(f"shipped checkpoint {BUNDLED_CHECKPOINT}, run config {shipped_cfg.name!r}:")
    train_fields = shipped_cfg.to_dict()["train"].items()
    print(textwrap.fill(", ".join(f"{k}={json.dumps(v)}" for k, v in train_fields),
                        width=100, initial_indent="  train: ", subsequent_indent=" " * 9))
    print({k: shipped_extra[k] for k in ("iteration", "seed", "final_loss") if k in shipped_extra})
loss_history = shipped_extra.get("loss_history") or summarize_history(live)
plot_losses(np.asarray(loss_history["iteration"]), loss_history,
            f"the shipped checkpoint ({loss_history['iteration'][-1]} iterations, window means)"
            if shipped_extra.get("loss_history") else "no shipped history: the live run, window means")

# %% [markdown]
# ### Check
#
# Every recorded loss of the live run is finite and non-negative, `total` is the sum of the five,
# the recorded learning rates are exactly the schedule's, and — outside smoke mode, where there
# are enough iterations for it to mean something — the mean total loss of the last 20 iterations
# is below that of the first 20. `summarize_history` must not change what the curves say: the
# window means, weighted by the window lengths, give back the mean of the whole run, and the
# windows cover the iterations exactly. A shipped history has one value per window for every
# loss, increasing window ends, and ends at the checkpoint's iteration.

# %%
for k in (*LOSS_KEYS, "total", "lr", "seconds"):
    assert len(live[k]) == LIVE_ITERS, k
    assert np.all(np.isfinite(live[k])) and np.all(np.asarray(live[k]) >= 0), k
np.testing.assert_allclose(live["total"], np.sum([live[k] for k in LOSS_KEYS], axis=0), rtol=1e-9)
np.testing.assert_allclose(live["lr"], [lr_schedule(live_cfg.train)(i) for i in range(LIVE_ITERS)],
                           rtol=1e-12)
n_win = min(20, LIVE_ITERS // 2)
first, last = np.mean(live["total"][:n_win]), np.mean(live["total"][-n_win:])
print(f"mean total loss: first {n_win} iterations {first:.3f}, last {n_win} {last:.3f}")
if not SMOKE:
    assert last < first, (first, last)

s_live = summarize_history(live)
ends = np.asarray(s_live["iteration"])
widths = np.diff(np.concatenate([[0], ends]))
assert ends[-1] == LIVE_ITERS and np.all(widths > 0) and len(ends) <= 500
for k in (*LOSS_KEYS, "total", "lr", "seconds"):
    whole = np.mean(live[k])
    assert len(s_live[k]) == len(ends), k
    assert abs(np.sum(np.asarray(s_live[k]) * widths) / ends[-1] - whole) <= 1e-5 * abs(whole) + 1e-12, k
if shipped_extra.get("loss_history"):
    h = shipped_extra["loss_history"]
    assert set(LOSS_KEYS) <= set(h) and np.all(np.diff(h["iteration"]) > 0)
    assert all(len(h[k]) == len(h["iteration"]) for k in h), {k: len(v) for k, v in h.items()}
    assert h["iteration"][-1] == shipped_extra["iteration"], (h["iteration"][-1], shipped_extra["iteration"])
    assert all(np.all(np.isfinite(h[k])) for k in LOSS_KEYS)
print("all checks passed" + (" (smoke mode: the decrease is not checked)" if SMOKE else ""))

# %% [markdown]
# ## 3. Detections on validation images
#
# The validation split of the shapes data is generated from a different random stream than the
# training split, so these images were never seen in training. `predict_image` runs the model on
# one uint8 image and keeps the detections scoring at least `score_thresh`; `draw_detections`
# draws boxes, labels, scores and masks. If no checkpoint ships, `bundled_or_trained_model`
# trains the tiny preset here instead — **then the detections are poor**; they look much better
# with the shipped model.

# %%
model, run_cfg, source = bundled_or_trained_model(FALLBACK_ITERS)
is_bundled = bundled is not None
print("model:", source)
val = ShapesDataset(split="val", num_images=N_CHECK, image_size=run_cfg.train.image_size)
t_pred = time.perf_counter()
dets = [predict_image(model, val[i]["image"], score_thresh=0.5) for i in range(N_CHECK)]
print(f"{(time.perf_counter() - t_pred) / N_CHECK:.3f} s per image")

fig, axes = plt.subplots(2, N_SHOW, figsize=(3.3 * N_SHOW, 7.4), squeeze=False)
for j in range(N_SHOW):
    s, d = val[j], dets[j]
    draw_detections(s["image"], s["boxes"], s["labels"], masks=s["masks"], class_names=NAMES,
                    ax=axes[0, j])
    draw_detections(s["image"], d["boxes"], d["labels"], d["scores"], d["masks"], class_names=NAMES,
                    ax=axes[1, j])
    axes[0, j].set_title(f"val image {s['image_id']}: ground truth", fontsize=9, pad=12)
    axes[1, j].set_title(f"{len(d['scores'])} detections (score ≥ 0.5)", fontsize=9, pad=12)
plt.tight_layout()
plt.show()

# %% [markdown]
# ### Check
#
# On the first `N_CHECK` validation images: the fraction of ground-truth objects that some
# detection of the **same class** covers with **mask IoU ≥ 0.5**. (The shapes' masks are
# disjoint, so a detection can reach 0.5 with at most one of them — see chapter 10.) For the
# shipped model this must be at least 0.7. For the briefly trained fallback it is printed only.
# Chapter 10 and the CLI's `evaluate` give the full COCO AP.

# %%
found = total = 0
for s, d in zip((val[i] for i in range(N_CHECK)), dets):
    assert np.all(d["scores"] >= 0.5) and d["masks"].shape[1:] == s["masks"].shape[1:]
    if len(s["labels"]) == 0:
        continue
    iou = mask_iou(d["masks"], s["masks"]) if len(d["scores"]) else np.zeros((0, len(s["labels"])))
    same_class = d["labels"][:, None] == s["labels"][None, :]
    found += int(((iou >= 0.5) & same_class).any(axis=0).sum())
    total += len(s["labels"])
frac = found / total
print(f"{found} of {total} objects found (same class, mask IoU >= 0.5): {frac:.2f}")
if is_bundled:
    assert frac >= 0.7, frac
else:
    print("the model is the briefly trained fallback, not the shipped checkpoint: not asserted")
print("all checks passed")

# %% [markdown]
# ## 4. Train it yourself
#
# The shipped model comes from the command line; from the repository root:
#
# ```
# pip install -e .
# mrcnn-ref train --config shapes --out runs/shapes
# mrcnn-ref evaluate --checkpoint runs/shapes/model.npz --split val --num-images 200 --out runs/eval
# ```
#
# `train` shows a progress bar with the running loss and lr and writes into `runs/shapes/`:
# `config.json` (the full run config and seed), `checkpoint_XXXXXX.npz` every `checkpoint_every`
# iterations (the newest three are kept), `history.json` (every loss of every iteration),
# `loss_curves.png` and, at the end, `model.npz`. `evaluate` writes the COCO ground truth, the
# predictions and `metrics.json` (bbox and segm AP, chapter 10) to `runs/eval/`. The measured
# figures of the current recipe — wall time, memory, AP, with their hardware — are in
# `docs/results.md`.
#
# * `--config` takes `shapes`, `tiny` or a JSON/TOML file such as
#   `{"preset": "shapes", "train": {"base_lr": 0.01}, "model": {"roi_op": "roi_pool"}}` (unknown
#   keys are errors); `--iterations N` overrides the length, `--seed S` the seed.
# * `--resume` continues from the newest `checkpoint_*.npz` in `--out`. The checkpoint holds the
#   parameters, the optimiser's buffers, the iteration and the history, and every image draws its
#   randomness from `default_rng([seed, it, j])` — so with the same `--seed` the resumed run
#   produces the *same* losses as an uninterrupted one.
# * `export_model` writes the parameters-only copy that ships as
#   `mrcnn_ref/checkpoints/shapes.npz`: no optimiser state, and the history reduced by
#   `summarize_history`.
#
# The live run of section 2 wrote the same files. We export its `model.npz` and load both back;
# then we try `--resume` (`train(..., resume=True)`) on a short tiny run with a checkpoint
# half-way: we run it once uninterrupted, delete everything written after the checkpoint — as if
# the process had been killed there — and resume.

# %%
print("files of the live run:", sorted(os.listdir(live_dir)))
exported = export_model(os.path.join(live_dir, "model.npz"), os.path.join(live_dir, "exported", "tiny.npz"))
full_ck = load_checkpoint(os.path.join(live_dir, "model.npz"))
exp_ck = load_checkpoint(exported)
for name, path, ck in (("training checkpoint", os.path.join(live_dir, "model.npz"), full_ck),
                       ("exported model", exported, exp_ck)):
    print(f"{name:20s} {os.path.getsize(path) / 1e6:6.2f} MB; optimizer state: "
          f"{'yes' if ck['optimizer_state'] else 'no'}; extra: {sorted(ck['extra'])}")
exp_model, exp_cfg, exp_extra = load_model(exported)

RESUME_ITERS, RESUME_AT = 8, 4
resume_cfg = {"preset": "tiny", "train": {"iterations": RESUME_ITERS, "checkpoint_every": RESUME_AT}}
resume_dir = tempfile.mkdtemp(prefix="mrcnn_ref_ch09_resume_")
uninterrupted = run_train(resume_cfg, resume_dir)
print("after the uninterrupted run:", sorted(os.listdir(resume_dir)))
for fn in (f"checkpoint_{RESUME_ITERS:06d}.npz", "model.npz"):
    os.remove(os.path.join(resume_dir, fn))
messages = []
resumed = run_train(resume_cfg, resume_dir, resume=True, log=messages.append)
print(messages)
print("total loss, uninterrupted:", np.round(uninterrupted["total"], 5))
print("total loss, resumed:      ", np.round(resumed["total"], 5))

# %% [markdown]
# ### Check
#
# The exported file has no optimiser state and no full history, its `loss_history` is
# `summarize_history` of the training history, its `final_loss` is the last total loss, and its
# parameters are the training checkpoint's; the resumed run reproduces the uninterrupted one's
# losses and learning rates.

# %%
assert full_ck["optimizer_state"] and not exp_ck["optimizer_state"]
assert "history" in full_ck["extra"] and "history" not in exp_extra
assert exp_extra["loss_history"] == summarize_history(full_ck["extra"]["history"])
assert exp_extra["final_loss"] == live["total"][-1]
assert exp_cfg.to_dict() == json.loads(json.dumps(live_cfg.to_dict()))     # (JSON: tuples become lists)
for k, v in full_ck["params"].items():
    np.testing.assert_array_equal(exp_ck["params"][k], v, err_msg=k)
assert any("resumed" in m for m in messages), messages
for k in (*LOSS_KEYS, "total", "lr"):
    assert len(resumed[k]) == len(uninterrupted[k]) == RESUME_ITERS, k
    np.testing.assert_allclose(resumed[k], uninterrupted[k], rtol=1e-6, atol=1e-9, err_msg=k)
print(f"all checks passed ({time.perf_counter() - T0:.1f} s for the whole chapter)")

# %% [markdown]
# ## Exercises
#
# 1. **The learning rate.** Train the tiny run for 300 iterations with `base_lr` 0.001, 0.01 and
#    0.05 (`train({"preset": "tiny", "train": {"iterations": 300, "base_lr": ...}}, ...)`) and
#    plot the three total-loss curves (moving average). Which diverges or stalls? Then set
#    `warmup_iters` to 0 for the largest lr: does warm-up matter?
# 2. **SGD or AdamW.** Train the tiny run with `"optimizer": "sgd"` (the paper's settings) and
#    with `"adamw"` for the same iterations, and compare the loss curves. Then redraw the figure
#    of relative first steps for the *tiny* model: is the spread of SGD's steps as wide?
# 3. **Images per step.** Train with `images_per_batch` 1, 2 and 4 for the *same number of
#    images* (so 4×, 2× and 1× the iterations). Compare the noise of the loss curves and the final
#    loss. Does scaling the lr with the batch size (the linear scaling rule) help?
# 4. **The mask loss.** Set `"model": {"mask_loss": "softmax"}` (the softmax across classes of
#    chapter 08) and train the tiny run again. Compare `loss_mask` and the found fraction of
#    section 3. Why is the paper's per-class sigmoid the better choice?
# 5. **Overfit one image.** Use a shapes dataset of one image (`"num_train_images": 1`, flips
#    off) and train until the total loss is near 0. Draw the detections on that image, then on a
#    validation image. What does this test tell you about a new model or a new loss, and why is it
#    the first thing to try when a training run does not learn?

# %% [markdown]
# ## Summary
#
# * One step: lr from the schedule, mean gradient over the step's images, clip, update.
# * Warm-up and a cosine set the lr; AdamW gives every weight a step of about `lr` (SGD: `lr · g`).
# * Each image draws from `default_rng([seed, it, j])`, so a run is reproducible and resumable.
