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
# # Chapter 05 — Backprop by hand: convolution as im2col, transposed convolution, GroupNorm
#
# Everything in Mask R-CNN that is not a box operation is a small set of layers: convolutions
# (backbone, FPN, RPN, heads), ReLU, max pooling (the ResNet stem), nearest-neighbour upsampling
# (the FPN top-down path), residual additions, normalisation layers, fully connected layers (the
# box head) and one **transposed convolution** in the mask head, which enlarges the feature map
# for mask prediction (14×14 → 28×28 in the paper). FCN (Long et al. 2015), the network the mask
# branch is modelled on, upsamples its last feature map the same way ("deconvolution").
#
# In `mrcnn_ref` every one of these is a pair `name_forward(...) -> (out, cache)` /
# `name_backward(dout, cache) -> grads` with the gradient written by hand. This chapter derives
# the interesting ones:
#
# 1. **convolution = im2col + one matrix product** (and a naive loop to check it against);
# 2. its **backward**: `dw` from the same columns, `dx` as a convolution of the *dilated* output
#    gradient with the *flipped* kernel;
# 3. **transposed convolution is the backward of a convolution** — and why a stride-2 transposed
#    convolution can draw a checkerboard;
# 4. **GroupNorm** (and frozen BatchNorm): why detectors trained with 1–2 images per GPU do not
#    use ordinary BatchNorm;
# 5. the **gradient checks** that prove every backward.

# %%
import inspect
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops import conv
from mrcnn_ref.ops.activations import relu_backward, relu_forward
from mrcnn_ref.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                                conv_transpose2d_forward, im2col)
from mrcnn_ref.ops.elementwise import add_backward, add_forward
from mrcnn_ref.ops.linear import linear_backward, linear_forward
from mrcnn_ref.ops.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward,
                                group_norm_backward, group_norm_forward)
from mrcnn_ref.ops.pooling import max_pool2d_backward, max_pool2d_forward
from mrcnn_ref.ops.upsample import upsample_nearest2d_backward, upsample_nearest2d_forward

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
rng = np.random.default_rng(0)
print("smoke mode:", SMOKE)

# %% [markdown]
# ## 1. Convolution as im2col + matrix product
#
# A convolution layer (strictly a cross-correlation — no kernel flip in the forward pass, as in
# every deep-learning library) with input $x \in \mathbb{R}^{N\times C_{in}\times H\times W}$,
# weight $w \in \mathbb{R}^{C_{out}\times C_{in}\times k_h\times k_w}$, stride $s$ and zero
# padding $p$ computes
#
# $$\mathrm{out}[n,o,i,j] = b[o] + \sum_{c,u,v} w[o,c,u,v]\; x_{pad}[n,c,\,i s+u,\,j s+v],
# \qquad H_o = \left\lfloor \frac{H + 2p - k_h}{s} \right\rfloor + 1 .$$
#
# Written as loops it is six nested `for`s — correct, and hopelessly slow in Python. Here is that
# naive version, written in this notebook only as a reference:

# %%
def naive_conv2d(x, w, b, stride=1, padding=0):
    """Straight from the definition: loop over output pixels (and let NumPy do the inner sum)."""
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, cout, ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = xpad[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            for o in range(cout):
                out[:, o, i, j] = (window * w[o]).sum(axis=(1, 2, 3))
    if b is not None:
        out += b[None, :, None, None]
    return out

# %% [markdown]
# The trick every fast CPU implementation uses: **gather each $C_{in}\times k_h\times k_w$
# window into one column** of a matrix (*im2col*), after which the whole convolution is a single
# matrix product that BLAS runs at full speed:
#
# $$\underbrace{\mathrm{out}}_{C_{out}\times N H_o W_o}
#   = \underbrace{w}_{C_{out}\times C_{in}k_hk_w}\;
#     \underbrace{\mathrm{cols}}_{C_{in}k_hk_w\times N H_o W_o}.$$
#
# The windows come free: a strided *view* holds all of them without copying anything. Element
# $(n, c, i, j, u, v)$ of the view is `xpad[n, c, i*s + u, j*s + v]`, so `as_strided` only has to
# be told `xpad`'s strides with the two image axes repeated — stepped by the stride for $(i, j)$,
# by one pixel for $(u, v)$. Making the column matrix contiguous is the one copy im2col pays. The
# library code:

# %%
print(inspect.getsource(im2col))
print(inspect.getsource(conv._correlate))
print(inspect.getsource(conv2d_forward))

# %% [markdown]
# A tiny example: one image, one channel, $4\times 4$ pixels numbered 0–15, a $3\times 3$
# kernel, stride 1, no padding. There are $2\times 2$ windows, so `cols` is $9 \times 4$; its
# column $(i, j)$ is the window whose top-left corner is $(i, j)$.

# %%
x_tiny = np.arange(16.0).reshape(1, 1, 4, 4)
cols_tiny, (ho, wo) = im2col(x_tiny, 3, 3, 1, 1)
print("x =\n", x_tiny[0, 0])
print(f"output {ho}x{wo}; cols (9 x {cols_tiny.shape[1]}) =\n", cols_tiny)

w_tiny = np.arange(9.0).reshape(1, 1, 3, 3) / 10
out_tiny, _ = conv2d_forward(x_tiny, w_tiny)
print("w.reshape(1, 9) @ cols =", (w_tiny.reshape(1, 9) @ cols_tiny).ravel())
print("conv2d_forward      =", out_tiny.ravel())
print("naive loops         =", naive_conv2d(x_tiny, w_tiny, None).ravel())

# %%
fig, axes = plt.subplots(1, 5, figsize=(15, 3.2), gridspec_kw=dict(width_ratios=[1, 1, 1, 1, 1.4]))
colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
for k, ax in enumerate(axes[:4]):
    i, j = divmod(k, 2)
    ax.imshow(x_tiny[0, 0], cmap="Greys", vmin=-8, vmax=24)
    for (r, c), v in np.ndenumerate(x_tiny[0, 0]):
        ax.text(c, r, int(v), ha="center", va="center", fontsize=9)
    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 3, 3, fill=False, lw=3, ec=colors[k]))
    ax.set_title(f"window ({i}, {j}) -> column {k}")
    ax.set_xticks([]), ax.set_yticks([])
ax = axes[4]
ax.imshow(cols_tiny, cmap="Greys", vmin=-8, vmax=24, aspect="auto")
for (r, c), v in np.ndenumerate(cols_tiny):
    ax.text(c, r, int(v), ha="center", va="center", fontsize=8, color=colors[c])
ax.set_title("cols = im2col(x): one window per column")
ax.set_xlabel("column (output pixel)"), ax.set_ylabel("row (c, u, v)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Random shapes with stride and padding agree with the loops too, and the speed difference is
# large even at modest sizes:

# %%
for (n, cin, cout, h, wd, k, s, p) in [(2, 3, 4, 7, 6, 3, 1, 1), (1, 2, 3, 9, 8, 3, 2, 0), (2, 3, 2, 8, 8, 5, 3, 2)]:
    x = rng.standard_normal((n, cin, h, wd))
    w = rng.standard_normal((cout, cin, k, k))
    b = rng.standard_normal(cout)
    diff = np.abs(conv2d_forward(x, w, b, s, p)[0] - naive_conv2d(x, w, b, s, p)).max()
    print(f"x {x.shape}, w {w.shape}, stride {s}, padding {p}: max |im2col - loops| = {diff:.1e}")

size = 16 if SMOKE else 32
x_big = rng.standard_normal((2, 16, size, size))
w_big = rng.standard_normal((16, 16, 3, 3))


def best_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, min(times)


ref, t_loop = best_time(lambda: naive_conv2d(x_big, w_big, None, 1, 1))
(fast, _), t_fast = best_time(lambda: conv2d_forward(x_big, w_big, None, 1, 1))
print(f"\n{x_big.shape} * {w_big.shape}: loops {t_loop * 1e3:.1f} ms, im2col {t_fast * 1e3:.2f} ms, "
      f"max diff {np.abs(ref - fast).max():.1e}")

# %% [markdown]
# ## 2. The backward pass
#
# Given the upstream gradient $\partial L/\partial\,\mathrm{out}$ (`dout`, shaped like the
# output) we need three gradients.
#
# * **Bias.** Each $b[o]$ is added to every output pixel of channel $o$:
#   `db = dout.sum((0, 2, 3))`.
# * **Weight.** In matrix form $\mathrm{out} = W\,\mathrm{cols}$, so
#   $\partial L/\partial W = \mathrm{dout}\;\mathrm{cols}^\top$ — the **same columns** we built in
#   the forward pass, one more matrix product. (The cache keeps the padded input and im2col
#   rebuilds the columns: caching them would hold $k_hk_w$ times the input's memory per layer.)
# * **Input.** $\partial L/\partial\,\mathrm{cols} = W^\top \mathrm{dout}$, and each column would
#   then have to be added back to the window it came from (*col2im*, a scatter-add with
#   overlaps). There is a neater way: read the sum the other way round. Input pixel $x[c, a]$
#   (1-D to keep notation light) receives $w[o,c,u]\,\mathrm{dout}[o,i]$ from every output $i$ with
#   $i s + u - p = a$. Put `dout` on the input grid by **dilating** it — insert $s-1$ zeros
#   between entries, so that $\mathrm{dout}[i]$ sits at position $is$ — and the sum over $u$
#   becomes an ordinary stride-1 correlation of the dilated gradient, padded by $k-1-p$, with
#   the **kernel rotated by 180°** and its in/out channels **swapped**:
#
# $$\frac{\partial L}{\partial x} = \mathrm{corr}\Big(\mathrm{pad}_{k-1-p}\big(\mathrm{dilate}_s(\mathrm{dout})\big),\;
#   \mathrm{rot}_{180}(w)^{\,c\leftrightarrow o}\Big).$$
#
# It is a convolution again, so it is im2col + one matrix product again — no scatter. One
# detail: when $(H + 2p - k) \bmod s \ne 0$ the last rows/columns of the input are never covered
# by any window (their gradient is zero); padding the bottom/right of the dilated gradient by that
# many extra rows/columns produces exactly those zeros.

# %%
print(inspect.getsource(conv._pad_crop))
print(inspect.getsource(conv._input_grad_transposed))
print(inspect.getsource(conv._weight_grad))
print(inspect.getsource(conv2d_backward))

# %% [markdown]
# **A practical twist.** With stride $s > 1$ the dilated gradient is mostly zeros, so the
# transposed-convolution form does $s^2$ times more arithmetic than necessary, and its column
# matrix has $C_{out}k_hk_w$ rows instead of $C_{in}k_hk_w$. For those layers the library uses the
# equivalent *col2im* form — $\partial L/\partial\,\mathrm{cols} = W^\top\mathrm{dout}$, then each
# column is added back into its window, one vectorised strided add per kernel offset — and
# `conv2d_backward(..., dx_method="auto")` picks whichever builds the smaller temporary matrix. Both are the
# same numbers (the tests compare them), and both are checked below against the scatter loops.

# %%
print(inspect.getsource(conv._input_grad_col2im))
print(inspect.getsource(conv._input_grad))


# %% [markdown]
# An independent check of `dx`: the *scatter* formulation written as loops — every output pixel
# adds $w \cdot \mathrm{dout}$ into the window it read. Then the picture of the "gather" form we
# actually use: a single-channel example with stride 2 and a leftover column.

# %%
def naive_conv2d_input_grad(dout, w, x_shape, stride, padding):
    """col2im as loops: scatter w * dout[n, o, i, j] into the window that produced out[n, o, i, j]."""
    n, cin, h, wd = x_shape
    cout, _, kh, kw = w.shape
    dxpad = np.zeros((n, cin, h + 2 * padding, wd + 2 * padding))
    for i in range(dout.shape[2]):
        for j in range(dout.shape[3]):
            dxpad[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "no,ocuv->ncuv", dout[:, :, i, j], w)
    return dxpad[:, :, padding:padding + h, padding:padding + wd]


x = rng.standard_normal((1, 1, 6, 7))          # (6 + 2 - 3) % 2 == 1: one leftover row
w = rng.standard_normal((1, 1, 3, 3))
out, cache = conv2d_forward(x, w, None, stride=2, padding=1)
dout = rng.standard_normal(out.shape)
dx, dw, _ = conv2d_backward(dout, cache)
dx_naive = naive_conv2d_input_grad(dout, w, x.shape, 2, 1)
dx_transposed = conv._input_grad_transposed(dout, w, x.shape[2:], (2, 2), (1, 1))
dx_col2im = conv._input_grad_col2im(dout, w, x.shape[2:], (2, 2), (1, 1))
dx_err = max(np.abs(d - dx_naive).max() for d in (dx, dx_transposed, dx_col2im))
print("max |dx - naive scatter| over conv2d_backward, transposed form, col2im form =", dx_err)

k, s, p = 3, 2, 1
rh = x.shape[2] + 2 * p - k - (dout.shape[2] - 1) * s          # leftover rows (1) and cols (0)
rw = x.shape[3] + 2 * p - k - (dout.shape[3] - 1) * s
dilated = conv._pad_crop(dout, k - 1 - p, k - 1 - p + rh, k - 1 - p, k - 1 - p + rw, dilation=(s, s))
print("leftover rows/cols:", rh, rw, "; dilated + padded gradient:", dilated.shape[2:])
fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
for ax, img, title in zip(axes, [dout[0, 0], dilated[0, 0], w[0, 0, ::-1, ::-1], dx[0, 0]],
                          [f"dout {dout.shape[2:]}", f"dilated by 2, padded {dilated.shape[2:]}",
                           "kernel rotated 180°", f"dx {dx.shape[2:]} (= x's shape)"]):
    ax.imshow(img, cmap="coolwarm", vmin=-2.5, vmax=2.5)
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# **When the windows tile.** If the kernel *equals* the stride and there is no padding — the
# mask head's $2\times2$, stride-2 transposed convolution (chapter 08) is exactly this `dx` — the
# windows do not overlap: every input pixel $(i k_h + u,\ j k_w + v)$ belongs to one window, at one
# kernel offset $(u, v)$, and receives $w[:, :, u, v]^\top\,\mathrm{dout}[:, :, i, j]$ and nothing
# else. No dilation, no zero-filled buffer, no adds: one matrix product per image, whose
# $k_h k_w$ blocks are copied straight to their pixels. `"auto"` takes this path for such layers.

# %%
print(inspect.getsource(conv._input_grad_tiled))
x2 = rng.standard_normal((2, 3, 6, 8))
w2 = rng.standard_normal((4, 3, 2, 2))
out2, cache2 = conv2d_forward(x2, w2, None, stride=2, padding=0)
dout2 = rng.standard_normal(out2.shape)
dx_tiled = conv._input_grad_tiled(dout2, w2, x2.shape[2:])
tiled_err = np.abs(dx_tiled - naive_conv2d_input_grad(dout2, w2, x2.shape, 2, 0)).max()
print("2x2 kernel, stride 2: max |tiled dx - naive scatter| =", tiled_err)

# %% [markdown]
# ## 3. Transposed convolution *is* the backward of a convolution
#
# Look at what `_input_grad` does: it maps a small $(H_o, W_o)$ gradient to a larger
# $(H, W)$ image, with learnable weights. Used as a *forward* layer, that map is the
# **transposed convolution** (a.k.a. "deconvolution" or "fractionally strided
# convolution"). As a linear map on flattened images, a convolution is a sparse matrix $A$ and
# its input gradient is $A^\top$ — hence "transposed".
#
# So `conv_transpose2d_forward` simply *calls* the conv backward's input-gradient code, with a
# weight in PyTorch's layout $(C_{in}, C_{out}, k_h, k_w)$; the output size is
# $(H-1)s - 2p + k + \text{output\_padding}$, where `output_padding` picks among the sizes that
# all convolve down to $H$ (the leftover rows of section 2). And its backward is the
# *forward* convolution:

# %%
print(inspect.getsource(conv_transpose2d_forward))
print(inspect.getsource(conv_transpose2d_backward))

# %%
# The identity, numerically: conv_transpose2d(x, w) == conv2d_backward's dx for a convolution
# with the same weight whose *output* has x's shape.
x = rng.standard_normal((2, 4, 5, 6))
w = rng.standard_normal((4, 3, 3, 3))               # (Cin=4, Cout=3, 3, 3)
y_t, _ = conv_transpose2d_forward(x, w, None, stride=2, padding=1, output_padding=1)
y0 = np.zeros((2, 3) + y_t.shape[2:])               # any input of the output's shape
out0, cache0 = conv2d_forward(y0, w, None, stride=2, padding=1)    # maps 3 -> 4 channels
dx_conv, _, _ = conv2d_backward(x, cache0)
identity_err = np.abs(y_t - dx_conv).max()
print(f"conv_transpose2d output {y_t.shape}; conv2d maps it back to {out0.shape}; "
      f"max |transpose - conv backward dx| = {identity_err:.1e}")

# %% [markdown]
# **Upsampling by 2 and the checkerboard.** With stride 2 each input pixel "stamps" a copy of
# the kernel onto the output, stamps 2 pixels apart. If the kernel size is not a multiple of the
# stride the stamps overlap unevenly: some output pixels receive contributions from 1 input
# pixel, others from 2 or 4. Feed a constant image and an all-ones kernel and the overlap count
# appears directly: a **checkerboard**. Kernel 2 (Mask R-CNN's mask head uses a $2\times2$,
# stride-2 transposed convolution) tiles the output exactly; kernel 4 with padding 1 overlaps
# evenly everywhere except at the border.

# %%
ones = np.ones((1, 1, 6, 6))
cases = [(3, 1, 1, "k=3, s=2, p=1, op=1"), (2, 0, 0, "k=2, s=2 (mask head)"), (4, 1, 0, "k=4, s=2, p=1")]
fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
for ax, (k, p, op, title) in zip(axes, cases):
    up, _ = conv_transpose2d_forward(ones, np.ones((1, 1, k, k)), None, stride=2, padding=p, output_padding=op)
    im = ax.imshow(up[0, 0], cmap="viridis", vmin=0, vmax=4)
    values = ", ".join(str(int(v)) for v in np.unique(up))
    ax.set_title(f"{title}\n{ones.shape[2:]} -> {up.shape[2:]}; values {{{values}}}", fontsize=10)
    ax.set_xticks([]), ax.set_yticks([])
fig.colorbar(im, ax=axes, shrink=0.8, label="number of overlapping stamps")
plt.show()

# %% [markdown]
# ## 4. The other layers, in brief
#
# The remaining backwards are short enough to read in one go:
#
# * **ReLU** passes the gradient where $x > 0$ and blocks it elsewhere (0 at the kink, like PyTorch).
# * **Max pooling** sends each output's gradient to its window's argmax (first maximum on ties);
#   overlapping windows (the ResNet stem's $3\times3$, stride 2) accumulate by a scatter-add.
# * **Nearest upsampling** (FPN top-down) copies each pixel into a $2\times2$ block, so the
#   backward sums each block; with an explicit output size the copies are irregular and the
#   backward is a scatter-add (`np.bincount`).
# * **Addition** (residuals, FPN lateral + top-down) hands the same gradient to both summands.
# * **Linear** ($y = x W^\top + b$): $dx = dy\,W$, $dW = dy^\top x$, $db = \sum dy$.

# %%
for fn in (relu_backward, max_pool2d_backward, upsample_nearest2d_backward, add_backward, linear_backward):
    print(inspect.getsource(fn))

# %% [markdown]
# ## 5. GroupNorm — normalising without the batch
#
# BatchNorm normalises each channel with the mean and variance over the **batch** and the pixels.
# A detector trains on large images, so it fits only 1–2 images per GPU: the batch statistics are
# then estimated from one or two images and are extremely noisy — and they couple the images in a
# batch, so an image's features depend on which other image happens to be next to it.
#
# **GroupNorm** (Wu & He, 2018) computes the statistics **per sample**, over groups of $C/G$
# channels and all pixels: nothing depends on the batch, so it behaves identically at batch size
# 1 and 256. (LayerNorm is the case $G = 1$, InstanceNorm $G = C$.) The figure shows which values
# share one mean/variance for each scheme.

# %%
N_demo, C_demo, G_demo = 4, 8, 4
fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
schemes = {
    "BatchNorm: per channel,\nacross the batch": lambda n, c: c,
    "LayerNorm (G = 1)": lambda n, c: n,
    "InstanceNorm (G = C)": lambda n, c: n * C_demo + c,
    f"GroupNorm (G = {G_demo})": lambda n, c: n * G_demo + c // (C_demo // G_demo),
}
for ax, (title, group_of) in zip(axes, schemes.items()):
    ids = np.array([[group_of(n, c) for c in range(C_demo)] for n in range(N_demo)])
    ax.imshow(ids % 10, cmap="tab10", vmin=0, vmax=9, alpha=0.75)
    # thick lines wherever two neighbouring cells belong to different groups
    for n in range(N_demo):
        for c in range(C_demo):
            if c + 1 < C_demo and ids[n, c] != ids[n, c + 1]:
                ax.plot([c + 0.5, c + 0.5], [n - 0.5, n + 0.5], "k", lw=2.5)
            if n + 1 < N_demo and ids[n, c] != ids[n + 1, c]:
                ax.plot([c - 0.5, c + 0.5], [n + 0.5, n + 0.5], "k", lw=2.5)
    ax.set_title(title)
    ax.set_xlabel("channel C (each cell = all H x W pixels)")
    ax.set_ylabel("sample N")
    ax.set_xticks(range(C_demo)), ax.set_yticks(range(N_demo))
plt.suptitle("each outlined region shares one mean and variance", y=1.04)
plt.show()

# %%
print(inspect.getsource(group_norm_forward))
print(inspect.getsource(group_norm_backward))

# %% [markdown]
# An experiment makes the batch-size problem concrete. Fix one image $x_0$ and normalise it
# together with $B-1$ other random images (each with its own brightness and contrast, as real
# images have); repeat with different companions and measure how much $x_0$'s normalised
# features move. With batch statistics they move a lot at $B = 2$ and only slowly settle as the
# batch grows; with GroupNorm they do not move at all.

# %%
def batch_norm_train(x, eps=1e-5):
    """Training-mode BatchNorm without affine: statistics over (N, H, W) per channel."""
    mu = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    return (x - mu) / np.sqrt(var + eps)


C, HW = 8, 6
x0 = rng.standard_normal((1, C, HW, HW)) * 2 + 1
gamma, beta = np.ones(C), np.zeros(C)
batch_sizes = [2, 4, 8, 16, 32]
trials = 20 if SMOKE else 100
bn_spread, gn_spread = [], []
for bsz in batch_sizes:
    bn_outs, gn_outs = [], []
    for _ in range(trials):
        contrast = rng.uniform(0.5, 3.0, (bsz - 1, 1, 1, 1))
        brightness = rng.uniform(-2.0, 2.0, (bsz - 1, 1, 1, 1))
        others = rng.standard_normal((bsz - 1, C, HW, HW)) * contrast + brightness
        batch = np.concatenate([x0, others])
        bn_outs.append(batch_norm_train(batch)[0])
        gn_outs.append(group_norm_forward(batch, gamma, beta, num_groups=4)[0][0])
    bn_spread.append(np.std(bn_outs, axis=0).mean())
    gn_spread.append(np.std(gn_outs, axis=0).mean())

plt.figure(figsize=(6, 3.5))
plt.plot(batch_sizes, bn_spread, "o-", label="batch statistics (BatchNorm, training)")
plt.plot(batch_sizes, gn_spread, "s-", label="GroupNorm (G = 4)")
plt.xscale("log", base=2)
plt.xlabel("batch size")
plt.ylabel("std of x0's normalised features\nacross different companions")
plt.legend()
plt.title("the same image, normalised in different batches")
plt.show()
print("BatchNorm spread:", np.round(bn_spread, 3), " GroupNorm spread:", np.round(gn_spread, 12))

# %% [markdown]
# **Frozen BatchNorm.** The other common answer: take a backbone pretrained on ImageNet (where
# batches were large) and **freeze** its BatchNorm layers — the running mean and variance become
# constants and the layer collapses to a per-channel affine map
# $y = x \cdot \gamma/\sqrt{\sigma^2_{run} + \epsilon} + (\beta - \mu_{run}\gamma/\sqrt{\sigma^2_{run}+\epsilon})$.
# Its backward is trivial: $dx = dy \cdot \mathrm{scale}$. (Our backward also returns $d\gamma$,
# $d\beta$, for a caller that wants to train them.)

# %%
print(inspect.getsource(frozen_batch_norm_forward))
print(inspect.getsource(frozen_batch_norm_backward))

# %% [markdown]
# ## 6. Proof: gradient checks for every op
#
# Each hand-written backward is compared with centered finite differences in float64
# (`check_op_gradients`, chapter 04). Inputs are chosen away from kinks: distinct values for max
# pooling (no ties), no values near 0 for ReLU. A relative error around $10^{-9}$–$10^{-11}$ is
# what exact gradients look like; a wrong one is of order 1.

# %%
def distinct(shape):
    """Values at least ~0.5 apart: no ties in max pooling."""
    size = int(np.prod(shape))
    return (rng.permutation(size) + rng.uniform(0, 0.5, size)).reshape(shape)


def away_from_zero(shape):
    v = rng.standard_normal(shape)
    return np.where(np.abs(v) < 0.1, 0.5, v)


r = rng.standard_normal
checks = [
    ("conv2d 3x3 s1 p1", conv2d_forward, conv2d_backward,
     [r((2, 3, 5, 5)), r((4, 3, 3, 3)), r(4), 1, 1], (0, 1, 2), ("x", "w", "b")),
    ("conv2d 3x3 s2 p1 (leftover)", conv2d_forward, conv2d_backward,
     [r((1, 2, 6, 7)), r((3, 2, 3, 3)), r(3), 2, 1], (0, 1, 2), ("x", "w", "b")),
    ("conv2d 2x3 s(2,3) p(0,2)", conv2d_forward, conv2d_backward,
     [r((2, 2, 5, 6)), r((2, 2, 2, 3)), None, (2, 3), (0, 2)], (0, 1), ("x", "w")),
    ("conv_transpose2d 2x2 s2", conv_transpose2d_forward, conv_transpose2d_backward,
     [r((2, 3, 3, 4)), r((3, 2, 2, 2)), r(2), 2, 0, 0], (0, 1, 2), ("x", "w", "b")),
    ("conv_transpose2d 3x3 s2 p1 op1", conv_transpose2d_forward, conv_transpose2d_backward,
     [r((1, 2, 3, 3)), r((2, 3, 3, 3)), r(3), 2, 1, 1], (0, 1, 2), ("x", "w", "b")),
    ("linear", linear_forward, linear_backward, [r((4, 5)), r((3, 5)), r(3)], (0, 1, 2), ("x", "w", "b")),
    ("relu", relu_forward, relu_backward, [away_from_zero((2, 3, 4))], (0,), ("x",)),
    ("max_pool2d 3x3 s2 p1", max_pool2d_forward, max_pool2d_backward,
     [distinct((2, 2, 7, 6)), 3, 2, 1], (0,), ("x",)),
    ("upsample_nearest2d x2", upsample_nearest2d_forward, upsample_nearest2d_backward,
     [r((2, 2, 3, 4)), 2], (0,), ("x",)),
    ("add", add_forward, add_backward, [r((2, 3, 4)), r((2, 3, 4))], (0, 1), ("a", "b")),
    ("group_norm G=2", group_norm_forward, group_norm_backward,
     [r((2, 4, 3, 3)) * 2 + 1, r(4), r(4), 2], (0, 1, 2), ("x", "gamma", "beta")),
    ("frozen_batch_norm", frozen_batch_norm_forward, frozen_batch_norm_backward,
     [r((2, 3, 3, 3)), r(3), r(3), r(3), rng.uniform(0.5, 2, 3)], (0, 1, 2), ("x", "gamma", "beta")),
]
# nearest upsampling to an explicit (odd) size: the scatter-add backward
checks.append(("upsample_nearest2d size=(5, 7)", lambda x: upsample_nearest2d_forward(x, size=(5, 7)),
               upsample_nearest2d_backward, [r((1, 2, 3, 3))], (0,), ("x",)))

rows = []
for name, fwd, bwd, args, wrt, names in checks:
    errs = check_op_gradients(fwd, bwd, args, wrt=wrt, seed=len(rows) + 100)
    for pos, argname in zip(wrt, names):
        rows.append((name, argname, errs[pos]))

print(f"{'op':34s} {'arg':6s} rel. error")
print("-" * 54)
for name, argname, err in rows:
    print(f"{name:34s} {argname:6s} {err:.2e}")

# %% [markdown]
# ### Check
# Every analytic gradient must match finite differences to $10^{-6}$, the transposed
# convolution must equal the convolution's input gradient, im2col must equal the naive loops,
# and GroupNorm must not depend on the batch while batch statistics do.

# %%
worst = max(err for _, _, err in rows)
assert worst <= 1e-6, f"a gradient check failed: worst relative error {worst:.2e}"
assert identity_err <= 1e-12, identity_err
assert np.abs(fast - ref).max() <= 1e-9
assert dx_err <= 1e-12, dx_err
assert tiled_err <= 1e-12, tiled_err
assert max(gn_spread) <= 1e-12 and bn_spread[0] > 0.05, (gn_spread, bn_spread)
print(f"all {len(rows)} gradient checks pass (worst {worst:.1e}); conv_transpose2d == conv2d input gradient")

# %% [markdown]
# ## Exercises
#
# 1. **Two ways to `dx`.** Call `conv2d_backward` with `dx_method="transposed"` and `"col2im"` and time
#    `conv2d_backward` for a $3\times3$, 64-channel layer at stride 1 and at stride 2, and for
#    $C_{in} = 16, C_{out} = 64$. How large is each method's temporary column matrix? Does the
#    `"auto"` rule pick the faster one?
# 2. **Dilated convolution.** Add a `dilation` argument to `conv2d_forward` (hint: the windows of
#    a dilated kernel are the same `as_strided` view with the $(u, v)$ strides multiplied by the
#    dilation). What does its input gradient become?
# 3. **Checkerboard by size.** For stride 2, tabulate the number of distinct overlap counts of a
#    constant input for kernel sizes 1–6. Which sizes are checkerboard-free? Why does
#    resize-then-convolve (nearest upsampling followed by a $3\times3$ convolution) avoid the
#    artefact entirely?
# 4. **GroupNorm limits.** Show numerically that `group_norm_forward` with `num_groups=1` equals a
#    LayerNorm over $(C, H, W)$ and with `num_groups=C` an InstanceNorm. Derive the backward for
#    $G = 1$ on paper and compare with `group_norm_backward`.
# 5. **Why 1e-6?** Rerun the gradient-check table in float32 (cast the inputs; use $h = 10^{-3}$).
#    What relative errors do you get, and why can finite differences not certify a gradient in
#    float32?

# %% [markdown]
# ## Summary
#
# * A convolution is im2col plus one matrix product; its backward reuses the same columns.
# * A transposed convolution is a convolution's input gradient, used as a forward layer.
# * GroupNorm normalises within one image, so it works with one or two images per step.
