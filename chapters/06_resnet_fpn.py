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
# # Chapter 06 — The ResNet-FPN feature pyramid
#
# Objects in an image come in every size: a 10-pixel circle and a 100-pixel square should both be
# found. A detector therefore needs features at several **scales**. The backbone Mask R-CNN uses,
# the Feature Pyramid Network (FPN; Lin et al. 2017), has three parts — a **bottom-up** pathway, a
# **top-down** pathway and **lateral connections** — which fuse the levels so that every level has
# **strong semantics and strong spatial information** at the same time.
#
# The FPN paper (Fig. 1) frames this as four ways to get multi-scale features:
#
# | design | how | cost / weakness |
# |---|---|---|
# | (a) featurized **image pyramid** | resize the image to several scales, run the whole ConvNet on each | accurate but several times the compute and memory; usually test-time only |
# | (b) **single feature map** | one ConvNet, predict only from its last (stride 16 or 32) map — Fast/Faster R-CNN | fast, but a small object is one or two pixels at stride 32 |
# | (c) **pyramidal feature hierarchy** | predict from the ConvNet's own intermediate maps (SSD) | free, but the high-resolution early maps have weak, low-level semantics |
# | (d) **Feature Pyramid Network** | (c) plus a top-down pathway that upsamples the strong coarse features and adds them to every finer level through 1×1 lateral convs | all levels semantically strong, at little extra cost |
#
# In this chapter we build (d) on a ResNet: look at the shape of every level, look at the feature
# maps on a synthetic shapes image, and compute and *measure* the receptive field of each level.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

from mrcnn_ref.model import backbone as backbone_mod
from mrcnn_ref.model.backbone import ResNet, ResNetFPN, receptive_fields, resnet_fpn_tiny
from mrcnn_ref.model.fpn import FPN
from mrcnn_ref.nn import blocks
from mrcnn_ref.visualize import draw_pipeline

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
IMAGE_SIZE = 128
print("smoke mode:", SMOKE)

# %% [markdown]
# The backbone is the first stage of the pipeline: everything after it — the RPN and, through
# RoIAlign, both heads — reads the pyramid it makes.

# %%
ax = draw_pipeline(highlight="backbone")
ax.set_title("this chapter: the backbone and its feature pyramid")
plt.show()

# %% [markdown]
# ## The bottom-up pathway: a ResNet
#
# A ResNet is a stem (7×7 stride-2 conv and a stride-2 max-pool: stride 4) followed by four stages
# of residual blocks; each stage after the first halves the resolution. The outputs of the four
# stages are called **C2, C3, C4, C5** — the index is $\log_2$ of the stride (4, 8, 16, 32).
# A residual block computes `relu(branch(x) + shortcut(x))`; its backward sends the same gradient
# down both paths of the sum and adds the two input gradients:

# %%
print(inspect.getsource(blocks._Residual.forward))
print(inspect.getsource(blocks._Residual.backward))
print(inspect.getsource(ResNet.forward))
print(inspect.getsource(ResNet.backward))

# %% [markdown]
# Note `d = g if d is None else d + g` in `ResNet.backward`: C3 is both an *output* (it goes to
# the FPN) and the *input* of stage 4, so its gradient is the sum of the two.
#
# ## The top-down pathway and lateral connections: FPN
#
# * a 1×1 **lateral** conv brings every $C_l$ to the same number of channels (256 in Mask R-CNN,
#   64 in our tiny model);
# * starting from the top, $M_5 = \mathrm{lat}_5(C_5)$ and
#   $M_l = \mathrm{lat}_l(C_l) + \mathrm{upsample}(M_{l+1})$ — nearest-neighbour upsampling to the
#   exact size of the lateral map, so odd image sizes work;
# * a 3×3 **output** conv turns each $M_l$ into $P_l$;
# * $P_6$ is $P_5$ subsampled with stride 2 (a max-pool with a 1×1 window), an extra coarse level
#   for the largest anchors.
#
# The backward runs the other way, fine to coarse: the gradient reaching $M_l$ flows both into the
# lateral conv and, through the upsampling's backward (a sum over the 2×2 copies), into $M_{l+1}$.

# %%
print(inspect.getsource(FPN.forward))
print(inspect.getsource(FPN.backward))
print(inspect.getsource(ResNetFPN.forward))
print(inspect.getsource(ResNetFPN.backward))

# %% [markdown]
# ## Shapes per level
#
# The tiny preset (stem 16 channels, one basic block per stage, widths 16/32/64/128, FPN 64
# channels, GroupNorm) is fast enough to train on a 2-core CPU; the ResNet-50 layout of the paper
# is `backbone_mod.resnet50_fpn()` (bottleneck blocks 3/4/6/3, FPN 256 channels).

# %%
print(inspect.getsource(resnet_fpn_tiny))
print("tiny:     ", backbone_mod.TINY_CONFIG)
print("ResNet-50:", backbone_mod.RESNET50_CONFIG)
model = resnet_fpn_tiny(rng=np.random.default_rng(0))
print(f"tiny ResNet-FPN: {model.num_parameters():,} parameters")

try:
    from mrcnn_ref.data.shapes import ShapesDataset
    ds = ShapesDataset(split="train", num_images=4, image_size=IMAGE_SIZE, seed=0)
    image_u8 = ds[0]["image"]
except ImportError:  # the dataset module is optional for this chapter
    from skimage.draw import disk, polygon
    image_u8 = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40, np.uint8)
    image_u8[disk((40, 40), 18, shape=image_u8.shape[:2])] = (220, 60, 60)
    image_u8[polygon([70, 120, 120], [90, 70, 120], shape=image_u8.shape[:2])] = (60, 200, 90)


def to_input(img_u8):
    """(H, W, 3) uint8 -> (1, 3, H, W) float32, roughly zero mean and unit variance."""
    x = img_u8.astype(np.float32) / 255.0
    x = (x - x.mean(axis=(0, 1))) / (x.std(axis=(0, 1)) + 1e-6)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


x = to_input(image_u8)
C = model.body(x)
P = model.fpn(C)
model.zero_grad()  # we only looked: drop the caches the forward calls pushed

rf = receptive_fields(model)
print(f"{'level':6s} {'shape (N, C, H, W)':22s} {'stride':>6s} {'theoretical RF (px)':>20s}")
for name, f in list(zip(["C2", "C3", "C4", "C5"], C)) + list(zip(["P2", "P3", "P4", "P5", "P6"], P)):
    stride = IMAGE_SIZE // f.shape[-1]
    print(f"{name:6s} {str(f.shape):22s} {stride:6d} {rf[name][0]:20d}")

# %% [markdown]
# ## Feature maps on a shapes image
#
# Below: the input image and the mean absolute activation over channels of each $P_l$. The model
# is **untrained** (Kaiming-random weights), so these are responses of random filters — still,
# edges and blobs show up, and you can see the resolution halve at every level. After training
# (later chapters) small shapes light up on the fine levels and large ones on the coarse levels.

# %%
fig, axes = plt.subplots(1, 6, figsize=(16, 3))
axes[0].imshow(image_u8)
axes[0].set_title(f"image {IMAGE_SIZE}×{IMAGE_SIZE}")
for ax, name, p in zip(axes[1:], ["P2", "P3", "P4", "P5", "P6"], P):
    ax.imshow(np.abs(p[0]).mean(axis=0), cmap="magma")
    ax.set_title(f"{name}  {p.shape[-2]}×{p.shape[-1]} (stride {IMAGE_SIZE // p.shape[-1]})")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Receptive fields: theory
#
# The **theoretical receptive field** of a unit is the set of input pixels that can influence it.
# Walking the layers in order with a kernel $k$ and stride $s$ each,
#
# $$ r \leftarrow r + (k-1)\,j, \qquad j \leftarrow j\,s \qquad (r = j = 1 \text{ at the input}),$$
#
# where $j$ is the distance in image pixels between neighbouring units ("jump"). For C2 of the
# tiny model: 7×7/2 → $r=7$, 3×3/2 max-pool → $r = 7 + 2\cdot 2 = 11$, two 3×3 convs at jump 4 →
# $r = 11 + 8 + 8 = 27$. The FPN changes the picture: $P_2$ is built from $M_2 = \mathrm{lat}(C_2) +
# \mathrm{up}(M_3)$, and $M_3$ contains $C_5$ — so **every P level sees (at least) C5's receptive
# field**, the whole 128-pixel image here. That is the "strong semantics at every level" of FPN.

# %%
print(inspect.getsource(receptive_fields))
for name in ["C2", "C3", "C4", "C5", "P2", "P3", "P4", "P5", "P6"]:
    print(f"{name}: receptive field {rf[name][0]:4d} px, stride {rf[name][1]:3d}")

# %% [markdown]
# ## Receptive fields: measured by backpropagation
#
# The **effective** receptive field (Luo et al., 2016) is measured with the backward pass we wrote:
# put a one-hot gradient at the centre pixel of one level (all channels), zeros elsewhere, run the
# backward to the image, and look at $|\partial / \partial\,\mathrm{image}|$. Convolutions are
# local, so the gradient is exactly zero outside the theoretical receptive field.
#
# One subtlety: **GroupNorm** normalises with a mean and variance over the whole feature map, so
# with GroupNorm *every* output depends (a little) on *every* pixel — the gradient is non-zero
# everywhere. To see the geometry we measure on the same architecture with frozen batch norm (a
# per-channel affine map, which is local), then show how little GroupNorm's global coupling adds.

# %%
def input_gradient(m, x, level, kind):
    """|d image| for a one-hot gradient at the centre of a C level ('C') or P level ('P')."""
    m.zero_grad()
    if kind == "C":
        feats = m.body(x)
    else:
        feats = m(x)
    grads = [np.zeros_like(f) for f in feats]
    g = grads[level]
    g[0, :, g.shape[2] // 2, g.shape[3] // 2] = 1.0
    dx = m.body.backward(grads) if kind == "C" else m.backward(grads)
    m.zero_grad()
    return np.abs(dx[0]).sum(axis=0)


def support_extent(a):
    """Height and width of the bounding box of the non-zero entries."""
    rows, cols = np.nonzero(a)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


local = resnet_fpn_tiny(rng=np.random.default_rng(0), norm="frozen_bn")
levels = [("C", i, f"C{i + 2}") for i in range(4)] + [("P", i, f"P{i + 2}") for i in range(5)]
if SMOKE:
    levels = [lv for lv in levels if lv[2] in ("C2", "C3", "C4", "P2", "P6")]
measured = {}
for kind, i, name in levels:
    measured[name] = input_gradient(local, x, i, kind)
    h, w = support_extent(measured[name])
    print(f"{name}: gradient support {h}×{w} px  (theoretical RF {rf[name][0]} px, image {IMAGE_SIZE} px)")

fig, axes = plt.subplots(1, len(levels), figsize=(2.6 * len(levels), 2.8))
for ax, (kind, i, name) in zip(axes, levels):
    a = measured[name]
    ax.imshow(np.log10(a + a.max() * 1e-6), cmap="viridis")
    ax.set_title(f"{name}: log|d image|", fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# The C levels grow as the theory says (27, 51, 99 px), and the P levels reach the whole image.
# Notice also that the gradient is concentrated near the centre — the effective receptive field is
# much smaller than the theoretical one (roughly Gaussian; Luo et al.).
#
# Now the GroupNorm model: how much of the gradient lies inside C2's theoretical window?

# %%
gn_grad = input_gradient(model, x, 0, "C")
half = rf["C2"][0] // 2
cy = cx = IMAGE_SIZE // 2
inside = np.zeros_like(gn_grad, dtype=bool)
inside[max(cy - half - 4, 0):cy + half + 4, max(cx - half - 4, 0):cx + half + 4] = True
frac = gn_grad[inside].sum() / gn_grad.sum()
print(f"GroupNorm model, C2 centre: non-zero pixels {np.count_nonzero(gn_grad)} of {gn_grad.size}; "
      f"{100 * frac:.2f}% of the gradient mass within the C2 window")

# %% [markdown]
# ## Check
#
# The strides (image size / map size) must be 4, 8, 16, 32, 64 for P2..P6, and the measured
# gradient support must fit inside the theoretical receptive field at every level.

# %%
strides = [IMAGE_SIZE // p.shape[-1] for p in P]
assert strides == [4, 8, 16, 32, 64], strides
assert all(IMAGE_SIZE % p.shape[-1] == 0 for p in P)
for name, a in measured.items():
    h, w = support_extent(a)
    assert h <= rf[name][0] and w <= rf[name][0], (name, h, w, rf[name])
    assert np.count_nonzero(a) > 0, name
assert support_extent(measured["C2"])[0] < IMAGE_SIZE  # C2 really is local
print("strides", strides, "— all gradient supports within the theoretical receptive fields")

# %% [markdown]
# ## Exercises
#
# 1. Change the stem's 7×7 conv to three 3×3 convs (stride 2, 1, 1). Recompute C2's theoretical
#    receptive field by hand, then with `receptive_fields`.
# 2. Build `resnet_fpn_tiny(layers=(2, 2, 2, 2))`. How do the receptive fields of C2..C5 change?
#    Measure them with `input_gradient`.
# 3. Replace nearest upsampling in the top-down pathway by a *bilinear* one (write the
#    forward/backward pair). Does the receptive field of P2 change? Why might the 3×3 output
#    conv matter less then?
# 4. Remove the top-down pathway (`P_l = out_l(lat_l(C_l))`, design (c)). What is P2's receptive
#    field now? Why does that hurt small objects that need context to be recognised?
# 5. Count the FLOPs of one forward pass of the tiny model on a 128×128 image level by level.
#    Where does most of the compute go — the ResNet body or the FPN?

# %% [markdown]
# ## Summary
#
# * A ResNet gives C2–C5 at strides 4–32; the FPN adds a top-down path and 1×1 lateral convs.
# * Every level P2–P6 then has the same channels and sees at least C5's receptive field.
# * The backward pass measures a receptive field: the input gradient of one output unit.
