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
# # Chapter 04 — Losses and gradient checking
#
# Mask R-CNN is trained with one objective per RoI, the **multi-task loss**
#
# $$L = L_{cls} + L_{box} + L_{mask}.$$
#
# The classification and box terms are Fast R-CNN's (Girshick 2015); the mask term is new in
# Mask R-CNN (He et al. 2017). The Mask R-CNN paper also makes the design decision this chapter
# illustrates: a per-pixel softmax would make the classes **compete**, so Mask R-CNN uses an
# independent sigmoid per class instead, and only positive RoIs contribute to $L_{mask}$.
#
# | term | what it scores | loss | in `mrcnn_ref.ops.losses` |
# |---|---|---|---|
# | $L_{cls}$ | K-way class of each sampled RoI | softmax cross-entropy | `softmax_cross_entropy_forward` |
# | $L_{box}$ | box-regression deltas of positive RoIs | smooth L1 | `smooth_l1_forward` |
# | $L_{mask}$ | $M\times M$ mask of positive RoIs, GT class channel only | per-pixel sigmoid BCE | `mask_loss_forward` |
# | RPN objectness | object / not object per sampled anchor | binary cross-entropy with logits | `bce_with_logits_forward` |
#
# Every loss is a forward/backward pair with a **hand-written** gradient. The second half of the
# chapter is about how we know those gradients are right: **gradient checking** with centered
# finite differences.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_ref import gradcheck
from mrcnn_ref.gradcheck import check_op_gradients, numerical_gradient, rel_error
from mrcnn_ref.ops import losses
from mrcnn_ref.ops.losses import (
    bce_with_logits_backward, bce_with_logits_forward, log_softmax, mask_loss_backward,
    mask_loss_forward, mask_loss_softmax_backward, mask_loss_softmax_forward, sigmoid,
    smooth_l1_backward, smooth_l1_forward, softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
rng = np.random.default_rng(0)
print("smoke mode:", SMOKE)

# %% [markdown]
# ## 1. $L_{cls}$: softmax cross-entropy, and why log-sum-exp matters
#
# For class scores $x \in \mathbb{R}^K$ and true class $y$,
# $\ell = -\log \mathrm{softmax}(x)_y = \log\sum_k e^{x_k} - x_y$, and its gradient is the
# famously simple $\partial\ell/\partial x = \mathrm{softmax}(x) - \mathrm{onehot}(y)$.
#
# Computed naively, $e^{x_k}$ overflows for $x_k \gtrsim 710$ in float64 (and $\gtrsim 89$ in
# float32), and the result is `inf - inf = nan`. The fix is to subtract the maximum first:
# $\log\sum_k e^{x_k} = m + \log\sum_k e^{x_k - m}$ with $m = \max_k x_k$; now every exponent is
# $\le 0$ and the largest term is exactly 1.

# %%
print(inspect.getsource(log_softmax))
print(inspect.getsource(softmax_cross_entropy_forward))
print(inspect.getsource(softmax_cross_entropy_backward))

# %%
big = np.array([[1000.0, 0.0, -5.0]])
with np.errstate(over="ignore", invalid="ignore"):
    naive = -np.log(np.exp(big[0, 0]) / np.exp(big).sum())
stable, _ = softmax_cross_entropy_forward(big, np.array([0]))
print(f"naive  -log softmax(x)_0 = {naive}")
print(f"stable -log softmax(x)_0 = {float(stable):.3e}")
loss_wrong_class, _ = softmax_cross_entropy_forward(big, np.array([1]))
print(f"stable, true class 1     = {float(loss_wrong_class)}  (= 1000 - 0, exactly)")

# %% [markdown]
# ## 2. $L_{box}$: smooth L1 vs L2 vs L1
#
# Fast R-CNN regresses box deltas with the **smooth L1** loss (with $x$ = prediction − target)
#
# $$\mathrm{smooth}_{L_1}(x) = \begin{cases} 0.5\,x^2/\beta & |x| < \beta \\ |x| - 0.5\,\beta & \text{otherwise.}\end{cases}$$
#
# Fast R-CNN's definition is $\beta = 1$; Detectron-style RoI heads use
# $\beta = 1/9$; $\beta = 0$ is plain L1. Near zero it is quadratic, so the gradient $x/\beta$
# fades smoothly to 0 (no oscillation around the optimum as with L1); far away it is linear, so the
# gradient is bounded by 1 — a badly wrong box (an outlier) cannot produce the huge update L2's
# gradient $x$ would.

# %%
print(inspect.getsource(smooth_l1_forward))

# %%
xs = np.linspace(-3, 3, 601)
zeros = np.zeros_like(xs)
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
ax[0].plot(xs, 0.5 * xs ** 2, "k--", label="L2: 0.5 x²")
ax[0].plot(xs, np.abs(xs), "k:", label="L1: |x|")
ax[1].plot(xs, xs, "k--", label="L2")
ax[1].plot(xs, np.sign(xs), "k:", label="L1")
for beta in (1.0, 0.5, 1 / 9):
    per, cache = smooth_l1_forward(xs, zeros, beta=beta, reduction="none")
    ax[0].plot(xs, per, label=f"smooth L1, β={beta:.3g}")
    ax[1].plot(xs, smooth_l1_backward(np.ones_like(xs), cache), label=f"smooth L1, β={beta:.3g}")
ax[0].set(title="loss", xlabel="x = pred − target", ylim=(0, 3))
ax[1].set(title="gradient d loss / d x", xlabel="x = pred − target", ylim=(-3, 3))
ax[0].legend()
ax[1].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. RPN objectness: binary cross-entropy *with logits*
#
# With $s = \sigma(x)$, BCE is $-t\log s - (1-t)\log(1-s)$. Computed from probabilities it breaks
# as soon as $s$ rounds to exactly 1 (for $x \gtrsim 37$ in float64): $\log(1 - 1) = -\infty$.
# Rewritten in the logit, it becomes
#
# $$\ell(x, t) = \max(x, 0) - x\,t + \log\left(1 + e^{-|x|}\right),$$
#
# which never exponentiates a positive number and never takes $\log 0$. Its gradient is again
# simple: $\partial\ell/\partial x = \sigma(x) - t$ (and $\sigma$ itself is computed from
# $e^{-|x|}$). A logit of 0 costs $\log 2$ whatever the target.

# %%
print(inspect.getsource(sigmoid))
print(inspect.getsource(bce_with_logits_forward))

# %%
x = np.linspace(-60, 60, 1201)
t = np.zeros_like(x)                         # "background" anchor: the loss should be ~ x for x >> 0
with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
    s = 1 / (1 + np.exp(-x))
    naive_bce = -t * np.log(s) - (1 - t) * np.log(1 - s)
stable_bce, _ = bce_with_logits_forward(x, t, reduction="none")
plt.figure(figsize=(6, 4))
plt.plot(x, stable_bce, label="stable: max(x,0) − x t + log1p(exp(−|x|))", lw=3, alpha=0.5)
plt.plot(x, np.where(np.isfinite(naive_bce), naive_bce, np.nan), "r", label="naive: from σ(x)")
first_inf = x[~np.isfinite(naive_bce)].min()
plt.axvline(first_inf, color="r", ls=":", label=f"naive is inf from x = {first_inf:.1f}")
plt.xlabel("logit x (target t = 0)")
plt.ylabel("loss")
plt.legend()
plt.show()
print("stable loss at x = +1000 and x = -1000, t = 0:",
      bce_with_logits_forward(np.array([1000.0, -1000.0]), np.zeros(2), reduction="none")[0])

# %% [markdown]
# ## 4. $L_{mask}$: one sigmoid per class, only on the ground-truth class's channel
#
# The mask head predicts $K$ masks of $M\times M$ logits per RoI — one per class. For a positive
# RoI of class $k$, **only channel $k$ enters the loss**: per-pixel sigmoid BCE against the
# $M\times M$ target, averaged over $R\cdot M\cdot M$. The other $K-1$ channels get exactly zero
# gradient. `labels` index the channels directly (channel 0 is background in a head that has one
# channel per class, so positive RoIs carry labels $1..K-1$).
#
# The alternative is the FCN-style **multinomial** mask: a softmax across the $K$ channels at every
# pixel, target class $k$ inside the mask and background (class 0) outside. Its gradient
# $\mathrm{softmax} - \mathrm{onehot}$ touches every channel: raising class 1 at a pixel lowers class 2
# there. The paper's Table 2(b) found the softmax version about 5.5 mask AP worse.

# %%
print(inspect.getsource(mask_loss_forward))
print(inspect.getsource(mask_loss_backward))
print(inspect.getsource(mask_loss_softmax_forward))

# %% [markdown]
# ### A toy where the classes compete
#
# Two RoIs: one of class 1 whose mask is a disk, one of class 2 whose mask is a square that
# overlaps the disk. The "mask head" is just a learnable tensor $\theta$ of shape $(K=3, M, M)$ —
# the same logits for every RoI, i.e. a head that **cannot see which class the RoI is**. That is
# the point: with independent sigmoids it does not need to, because channel 1 is trained only by
# class-1 RoIs and channel 2 only by class-2 RoIs. With the softmax, the class-2 RoI pushes channel 1
# *down* wherever it wants class 2 or background, so the channels fight for the pixels and settle
# at ambiguous probabilities. (A real head sees RoI features and can partly resolve the conflict,
# but then it must solve classification too — Mask R-CNN leaves that to the box branch.)
#
# We train both with plain gradient descent, using only the library's forward/backward pairs.

# %%
M = 12 if SMOKE else 28
steps = 150 if SMOKE else 400
yy, xx = np.mgrid[0:M, 0:M] + 0.5
disk = ((xx - 0.38 * M) ** 2 + (yy - 0.5 * M) ** 2 < (0.28 * M) ** 2).astype(np.float64)
square = ((np.abs(xx - 0.65 * M) < 0.22 * M) & (np.abs(yy - 0.5 * M) < 0.22 * M)).astype(np.float64)
labels = np.array([1, 2])
targets = np.stack([disk, square])                     # (R=2, M, M)
R, K = 2, 3


def train(forward, backward, steps, lr):
    theta = np.zeros((K, M, M))
    for _ in range(steps):
        logits = np.broadcast_to(theta, (R, K, M, M)).copy()
        loss, cache = forward(logits, labels, targets)
        theta -= lr * backward(1.0, cache).sum(axis=0)  # the head is shared by both RoIs
    return theta, float(loss)


lr = 2.0 * R * M * M                                  # the loss is a mean over R*M*M pixels
theta_sig, loss_sig = train(mask_loss_forward, mask_loss_backward, steps, lr)
theta_soft, loss_soft = train(mask_loss_softmax_forward, mask_loss_softmax_backward, steps, lr)
p_sig = sigmoid(theta_sig)                                     # independent per-class probabilities
p_soft = np.exp(log_softmax(theta_soft, axis=0))               # competing probabilities
print(f"final loss: sigmoid {loss_sig:.4f}   softmax {loss_soft:.4f} (its optimum here is > 0)")

fig, ax = plt.subplots(3, 3, figsize=(9, 9))
panels = [(disk, "target, class 1 (disk)"), (square, "target, class 2 (square)"),
          (disk * square, "overlap of the two targets"),
          (p_sig[1], "sigmoid: P(class 1)"), (p_sig[2], "sigmoid: P(class 2)"),
          (p_sig[0], "sigmoid: channel 0 (untrained)"),
          (p_soft[1], "softmax: p(class 1)"), (p_soft[2], "softmax: p(class 2)"),
          (p_soft[0], "softmax: p(background)")]
for a, (img, title) in zip(ax.ravel(), panels):
    im = a.imshow(img, vmin=0, vmax=1, cmap="viridis")
    a.set_title(title, fontsize=9)
    a.axis("off")
fig.colorbar(im, ax=ax, shrink=0.6)
plt.show()


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


overlap = (disk > 0) & (square > 0)
print(f"sigmoid masks (p > 0.5): IoU with disk {iou(p_sig[1] > 0.5, disk > 0):.3f}, "
      f"with square {iou(p_sig[2] > 0.5, square > 0):.3f}")
print(f"softmax p(class 1) on the overlap: {p_soft[1][overlap].mean():.3f}, "
      f"on the disk-only part: {p_soft[1][(disk > 0) & ~overlap].mean():.3f}")
print(f"softmax masks (p > 0.5): IoU with disk {iou(p_soft[1] > 0.5, disk > 0):.3f}")

# %% [markdown]
# The sigmoid head recovers both shapes perfectly, overlap included, and its channel 0 never
# received a gradient (no RoI has label 0), so it still sits at $\sigma(0) = 1/2$. The softmax head converges to
# $p_1 = p_2 = 1/2$ on the overlap and $p_1 = p_0 = 1/2$ on the rest of the disk (each pixel's
# targets disagree between the two RoIs, and the best a shared softmax can do is split the mass),
# so thresholding at 0.5 recovers nothing: every pixel of the disk sits on the decision threshold,
# a coin flip decided by round-off.
#
# ## 5. The multi-task loss on a mini-batch
#
# Putting the terms together for a batch of sampled RoIs, the way the RoI heads will do it:
# $L_{cls}$ over all sampled RoIs (label 0 = background), $L_{box}$ only on positives but divided
# by the number of sampled RoIs (the `normalizer`), $L_{mask}$ only on positives.

# %%
n_roi, n_cls, Mm = 8, 4, 7
roi_labels = np.array([2, 0, 1, 0, 0, 3, 0, 2])               # 0 = background
pos = np.flatnonzero(roi_labels > 0)
cls_logits = rng.standard_normal((n_roi, n_cls))
box_pred = rng.standard_normal((n_roi, 4)) * 0.2            # deltas for each RoI's GT class
box_target = rng.standard_normal((n_roi, 4)) * 0.2
mask_logits = rng.standard_normal((len(pos), n_cls, Mm, Mm))
mask_targets = (rng.random((len(pos), Mm, Mm)) > 0.5).astype(np.float64)

L_cls, c_cls = softmax_cross_entropy_forward(cls_logits, roi_labels)
L_box, c_box = smooth_l1_forward(box_pred, box_target, beta=1 / 9,
                                 weights=(roi_labels > 0).astype(np.float64)[:, None],
                                 reduction="sum", normalizer=n_roi)
L_mask, c_mask = mask_loss_forward(mask_logits, roi_labels[pos], mask_targets)
L = L_cls + L_box + L_mask
print(f"L = {float(L_cls):.4f} (cls) + {float(L_box):.4f} (box) + {float(L_mask):.4f} (mask) = {float(L):.4f}")
# dL/dL_term = 1 for each term: every head's backward gets dloss = 1
d_cls = softmax_cross_entropy_backward(1.0, c_cls)
d_box = smooth_l1_backward(1.0, c_box)
d_mask = mask_loss_backward(1.0, c_mask)
print("box gradient is zero on background RoIs:", bool((d_box[roi_labels == 0] == 0).all()))
print("mask gradient shapes:", d_mask.shape, " nonzero channels per RoI:",
      [int(np.abs(d_mask[i]).sum(axis=(1, 2)).astype(bool).sum()) for i in range(len(pos))])

# %% [markdown]
# ## 6. Gradient checking
#
# A backward pass written by hand is easy to get subtly wrong (a missing factor, a transposed
# index) and the model may still train — badly. So every backward in `mrcnn_ref` is compared with
# **finite differences** of its forward in float64:
#
# * one-sided: $\dfrac{f(x + h) - f(x)}{h} = f'(x) + \tfrac{h}{2} f''(x) + O(h^2)$ — error $O(h)$;
# * centered: $\dfrac{f(x + h) - f(x - h)}{2h} = f'(x) + \tfrac{h^2}{6} f'''(x) + O(h^4)$ — the even
#   terms of the Taylor series cancel, error $O(h^2)$.
#
# Shrinking $h$ is not free: $f$ is computed with a round-off error of about $\varepsilon|f|$
# ($\varepsilon \approx 2.2\times10^{-16}$), which the division by $h$ turns into $\sim\varepsilon/h$.
# The total error is therefore V-shaped in $h$: the best one-sided $h$ is $\sim\sqrt{\varepsilon}
# \approx 10^{-8}$ (error $\sim10^{-8}$), the best centered $h$ is $\sim\varepsilon^{1/3} \approx
# 10^{-5}$ (error $\sim10^{-11}$). The library uses centered differences with $h = 10^{-6}$ and
# compares with the **relative error** $\|a-b\| / (\|a\| + \|b\|)$, required to be $\le 10^{-6}$.
# For an op with an array output we contract it with a random upstream gradient `dout`, so the
# checked function is the scalar $\sum \mathrm{op}(x) \cdot \mathrm{dout}$.

# %%
print(inspect.getsource(numerical_gradient))
print(inspect.getsource(rel_error))
print(inspect.getsource(check_op_gradients))

# %%
# error of one-sided vs centered differences against the exact (hand-written) gradient of BCE
xg = rng.standard_normal(6) * 2
tg = rng.random(6)
_, cache = bce_with_logits_forward(xg, tg)
exact = bce_with_logits_backward(1.0, cache)


def f():
    return float(bce_with_logits_forward(xg, tg)[0])


def one_sided_gradient(f, x, h):
    f0, g = f(), np.zeros_like(x)
    for i in range(x.size):
        old = x[i]
        x[i] = old + h
        g[i] = (f() - f0) / h
        x[i] = old
    return g


hs = np.logspace(-13, -1, 25 if SMOKE else 49)
err_one = [rel_error(one_sided_gradient(f, xg, h), exact) for h in hs]
err_cen = [rel_error(numerical_gradient(f, xg, h=h), exact) for h in hs]
plt.figure(figsize=(6, 4.5))
plt.loglog(hs, err_one, "o-", ms=3, label="one-sided (f(x+h) − f(x)) / h")
plt.loglog(hs, err_cen, "s-", ms=3, label="centered (f(x+h) − f(x−h)) / 2h")
plt.loglog(hs, 0.1 * hs, "k:", label="∝ h")
plt.loglog(hs, 0.1 * hs ** 2, "k--", label="∝ h²")
plt.loglog(hs, 1e-16 / hs, "k-.", lw=0.8, label="round-off ∝ ε/h")
plt.axvline(1e-6, color="gray", lw=0.8)
plt.axhline(1e-6, color="r", lw=0.8, label="tolerance 1e-6")
plt.ylim(1e-13, 1)
plt.xlabel("step h")
plt.ylabel("relative error of the gradient")
plt.legend(fontsize=7, loc="lower left")
plt.show()
i6 = np.argmin(np.abs(hs - 1e-6))
print(f"at h = 1e-6: one-sided {err_one[i6]:.1e}, centered {err_cen[i6]:.1e}")

# %% [markdown]
# Now every loss in this chapter against its own forward. Inputs are kept away from kinks (smooth L1
# at $|x| = \beta$) — at a kink the function is not differentiable and finite differences straddling
# it measure an average of two slopes, not a bug. Logits are moderate: at a saturated softmax the
# loss is tiny and its absolute round-off, divided by $h$, would dominate the *relative* error.

# %%
nR, nK, nM = (2, 3, 4) if SMOKE else (3, 4, 7)
x_cls = rng.standard_normal((6, 4))
y_cls = np.array([0, 3, -1, 2, 1, 1])                        # -1: ignored row
p_box = rng.standard_normal((5, 4))
beta_box = 0.5
mag = np.where(rng.random((5, 4)) < 0.5, rng.uniform(0.05, 0.4, (5, 4)), rng.uniform(0.6, 2.0, (5, 4)))
t_box = p_box - mag * rng.choice([-1, 1], (5, 4))           # |x| in both pieces, never near β = 0.5
x_bce, t_bce = rng.standard_normal(16) * 2, rng.random(16)
x_m = rng.standard_normal((nR, nK, nM, nM))
y_m = rng.integers(1, nK, nR)
t_m = (rng.random((nR, nM, nM)) > 0.5).astype(np.float64)

checks = {
    "softmax cross-entropy (mean, ignore)": (softmax_cross_entropy_forward, softmax_cross_entropy_backward,
                                             [x_cls, y_cls], {}),
    "smooth L1 (β=0.5, normalizer 5)": (smooth_l1_forward, smooth_l1_backward, [p_box, t_box],
                                         {"beta": beta_box, "normalizer": 5}),
    "smooth L1 (reduction='none')": (smooth_l1_forward, smooth_l1_backward, [p_box, t_box],
                                     {"beta": beta_box, "reduction": "none"}),
    "BCE with logits (mean)": (bce_with_logits_forward, bce_with_logits_backward, [x_bce, t_bce], {}),
    "mask loss (sigmoid)": (mask_loss_forward, mask_loss_backward, [x_m, y_m, t_m], {}),
    "mask loss (softmax)": (mask_loss_softmax_forward, mask_loss_softmax_backward, [x_m, y_m, t_m], {}),
}
errors = {}
for name, (fwd, bwd, args, kw) in checks.items():
    errors[name] = check_op_gradients(fwd, bwd, args, kwargs=kw)[0]
    print(f"{name:40s} rel. error {errors[name]:.2e}")

# %% [markdown]
# A gradient check is only worth something if it can fail. Two deliberately wrong backwards: the
# mask loss without its $1/(R M M)$ averaging factor, and the cross-entropy gradient without the
# $-\mathrm{onehot}$ term (just the softmax).

# %%
def mask_backward_missing_factor(dloss, cache):
    return mask_loss_backward(dloss, cache) * (nR * nM * nM)


def ce_backward_forgot_onehot(dloss, cache):
    probs, safe, coef, reduction = cache
    return probs * (coef * dloss)[:, None]


err_wrong_mask = check_op_gradients(mask_loss_forward, mask_backward_missing_factor, [x_m, y_m, t_m])[0]
err_wrong_ce = check_op_gradients(softmax_cross_entropy_forward, ce_backward_forgot_onehot, [x_cls, y_cls])[0]
print(f"wrong mask backward: rel. error {err_wrong_mask:.2f}")
print(f"wrong CE backward:   rel. error {err_wrong_ce:.2f}")

# %% [markdown]
# ## Check
#
# Every hand-written backward agrees with centered differences to $10^{-6}$, the wrong ones are
# caught, the sigmoid mask gradient is exactly zero off the ground-truth channel (the softmax one is
# not), the stable losses stay finite where the naive ones overflow, and the toy shows the
# competition.

# %%
assert all(e <= 1e-6 for e in errors.values()), errors
assert err_wrong_mask > 0.5 and err_wrong_ce > 0.1, (err_wrong_mask, err_wrong_ce)
assert err_cen[i6] < 1e-6 and err_cen[i6] < err_one[i6] / 10 and min(err_cen) < min(err_one) / 10

_, c_sig = mask_loss_forward(x_m, y_m, t_m)
_, c_soft = mask_loss_softmax_forward(x_m, y_m, t_m)
g_sig, g_soft = mask_loss_backward(1.0, c_sig), mask_loss_softmax_backward(1.0, c_soft)
off = np.ones((nR, nK), bool)
off[np.arange(nR), y_m] = False
assert (g_sig[off] == 0).all() and np.abs(g_soft[off]).max() > 0

assert not np.isfinite(naive) and np.isfinite(float(stable))
assert np.isfinite(stable_bce).all() and not np.isfinite(naive_bce).all()
assert iou(p_sig[1] > 0.5, disk > 0) > 0.95 and iou(p_sig[2] > 0.5, square > 0) > 0.95
assert abs(p_soft[1][overlap].mean() - 0.5) < 0.05 and (p_sig[0] == 0.5).all()
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. Show that for $K = 2$ (background + one class) the softmax mask loss equals the sigmoid BCE on
#    $x_1 - x_0$. Verify it numerically with `mask_loss_softmax_forward` and `bce_with_logits_forward`.
# 2. Make smooth L1 check fail *honestly*: put one entry of `pred - target` exactly at $\beta$ and
#    rerun `check_op_gradients`. How large is the error, and why is it not a bug?
# 3. Repeat the error-vs-$h$ plot in float32 (cast inside `f`). Where is the best $h$ now, and why
#    does the library insist on float64 for gradient checks?
# 4. In the toy of section 4, give the head one extra input per RoI — a one-hot of its class added
#    to the logits through a learnable $(K, K)$ matrix — and retrain the softmax version. Does the
#    competition disappear? What does that say about coupling mask prediction and classification?
# 5. Run `check_op_gradients` on the softmax cross-entropy of the single row `[[6.0, -8.0]]` with
#    label 0. The relative error is far above $10^{-6}$ although the backward is right. Explain it
#    with the round-off term of section 6 (how large are the loss and its gradient?), and find an
#    $h$ for which the check passes.

# %% [markdown]
# ## Summary
#
# * Each loss is a forward/backward pair; log-sum-exp and logits keep them finite at any input.
# * Smooth L1 is quadratic near 0 and linear far away; the mask loss is one sigmoid per class.
# * Centered finite differences in float64 check every hand-written gradient to ≤ 1e-6.
