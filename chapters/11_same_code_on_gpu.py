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
# # Chapter 11 — The same code on the GPU
#
# Every op of the previous chapters is written once, against an array module: it asks its inputs
# which **array module** they belong to and calls that module, `xp`. Arrays in
# host memory give NumPy; arrays on an NVIDIA GPU give CuPy, which has NumPy's functions with the
# same names. One source, two machines. The sections: 1. the `xp` idea; 2. the **host/device
# boundary**, which the `emulated` backend imitates on the CPU so that CI runs the device code
# path without a GPU; 3. **synchronisations** (device→host reads), counted site by site on one
# training step; 4. three places where the library keeps them few.

# %%
import inspect
import linecache
import math
import os

import matplotlib.pyplot as plt
import numpy as np

import mrcnn_ref
from mrcnn_ref import _checks, backend
from mrcnn_ref.backend import asnumpy, get_array_module, to_device
from mrcnn_ref.boxes import box_iou, clip_boxes
from mrcnn_ref.emulated import count_syncs
from mrcnn_ref.model.mask_rcnn import MaskRCNN
from mrcnn_ref.nms import _to_host
from mrcnn_ref.nn.optim import global_grad_norm
from mrcnn_ref.ops import roi_align as ra
from mrcnn_ref.run_config import build_dataset, load_run_config
from mrcnn_ref.train import StepImages, build_optimizer, lr_schedule, sample_forward_backward, update_parameters

SMOKE = os.environ.get("MRCNN_REF_SMOKE") == "1"
PRESET = "tiny" if SMOKE else "shapes"    # run config of the training step
N_STEPS = 1 if SMOKE else 3               # training steps counted on the emulated backend
print("backends available here:", backend.available_backends())

# %% [markdown]
# ## 1. One source, the module chosen by where the arrays live
#
# `get_array_module(*arrays)` looks at the arrays' types and returns their module (the default
# backend when there is no array to look at, e.g. to create anchors). `clip_boxes` is a typical
# op: validation, then `xp = get_array_module(boxes)`, then only `xp.` calls. Below,
# `to_device(a, "emulated")` copies host arrays to the emulated "device", the same two ops run on
# both, and `asnumpy` brings the device results back.

# %%
print(inspect.getsource(get_array_module))
print(inspect.getsource(clip_boxes))
rng = np.random.default_rng(0)
xy = rng.uniform(-5, 40, (6, 2))          # every box keeps some area inside the 48x48 image
boxes_h = np.concatenate([xy, xy + rng.uniform(6, 30, (6, 2))], axis=1).astype(np.float32)
boxes_d = to_device(boxes_h, "emulated")
print("modules:", get_array_module(boxes_h).__name__, "|", get_array_module(boxes_d).__name__)
with count_syncs() as c_ops:
    clip_d = clip_boxes(boxes_d, (48, 48))
    iou_d = box_iou(clip_d, clip_d)
clip_h = clip_boxes(boxes_h, (48, 48))
iou_h = box_iou(clip_h, clip_h)
print(f"results on the device: {type(iou_d).__name__}; max |host - device|: clip "
      f"{np.abs(asnumpy(clip_d) - clip_h).max()}, iou {np.abs(asnumpy(iou_d) - iou_h).max()}")
print("device->host reads inside the two ops:", c_ops.total)

# %% [markdown]
# ## 2. The host/device boundary
#
# On a GPU, host memory and device memory are separate. CuPy never copies between them behind
# your back: converting a device array to NumPy, or mixing a NumPy array into a device
# computation, is a `TypeError`. A reduction returns a 0-d device array, not a Python number:
# the value stays on the device until you ask for it. The `emulated` backend (`EmulatedArray`
# wrapping a NumPy buffer) imitates these rules, so a mistake that would stop the CuPy path
# fails in CI on a CPU too.

# %%
a = to_device(np.arange(6, dtype=np.float32).reshape(2, 3), "emulated")
xp = get_array_module(a)
for label, attempt in [("np.asarray(device array)", lambda: np.asarray(a)),
                       ("device array + NumPy array", lambda: a + np.ones(3, np.float32)),
                       ("xp.maximum(device, NumPy)", lambda: xp.maximum(a, np.zeros(3, np.float32)))]:
    try:
        attempt()
        print(f"{label}: no error")
    except TypeError as e:
        print(f"{label}: TypeError: {e}")
s = a.sum()
print("a.sum() is a", type(s).__name__, "of shape", s.shape)
print("the explicit ways back:", asnumpy(a).tolist(), "and", float(s))

# %% [markdown]
# ## 3. Why synchronisations matter
#
# A GPU runs kernels asynchronously: a CuPy call only *queues* a kernel and returns at once, so
# the Python code races ahead of the GPU while the queue fills. Any read of a device **value** on
# the host — `float()`, `int()`, `bool()` (every `if` on an array), `.get()`/`asnumpy`, `nonzero`
# and `flatnonzero`, boolean-mask indexing `x[mask]` (the result's size must be known), printing —
# has to wait until everything queued before it has run, and the GPU then idles until Python
# queues more. With a read per parameter or per RoI, a small model's step can spend more time
# waiting than computing.
#
# The emulated backend counts every such read with the `file:line` that caused it:
# `with count_syncs() as c:` gives `c.total` and `c.by_site`. `MaskRCNN(config, rng,
# backend="emulated")` places the parameters there (`model.to(name)` moves a model,
# `model.array_module` says where it lives; the CLI takes `--backend`). Below is one iteration of
# `train`'s loop, in one process, for the run config `PRESET`: `StepImages.run` draws the step's
# images and sends each through `sample_forward_backward`; then `update_parameters` averages the
# gradients, takes their norm, clips and lets the optimizer step.

# %%
print(inspect.getsource(sample_forward_backward))

rcfg = load_run_config(PRESET)
tcfg = rcfg.train
dataset = build_dataset(tcfg, "train")
schedule = lr_schedule(tcfg)


def new_model(backend_name):
    model = MaskRCNN(rcfg.model, rng=np.random.default_rng(0), backend=backend_name)
    return model, build_optimizer(tcfg, model.named_parameters())


def train_step(model, optim, it, seed=0):
    """One step of ``tcfg.images_per_batch`` images; returns the per-image losses and the norm."""
    losses = [lo for lo, _ in StepImages(model, dataset, tcfg, seed, n_proc=1).run(it)]
    norm = update_parameters(model, optim, tcfg.images_per_batch, float(schedule(it)),
                             tcfg.clip_grad_norm)
    return losses, norm


host_model, host_opt = new_model("numpy")
dev_model, dev_opt = new_model("emulated")
print("parameters live on:", host_model.array_module.__name__, "|", dev_model.array_module.__name__)
host_losses, host_norm = train_step(host_model, host_opt, 0)
host_grads = {k: g.copy() for k, g in host_model.named_grads().items()}
counts = []
for it in range(N_STEPS):
    with count_syncs() as c:
        losses, norm = train_step(dev_model, dev_opt, it)
    counts.append(c)
    if it == 0:
        dev_losses, dev_norm = losses, norm
        dev_grads = {k: asnumpy(g) for k, g in dev_model.named_grads().items()}
step0, n_img = counts[0], tcfg.images_per_batch
print(f"{PRESET!r}: {n_img} image(s) per step; device->host reads per step:",
      [c.total for c in counts], f"({step0.total / n_img:.1f} per image in step 0)")
root = os.path.dirname(os.path.dirname(os.path.abspath(mrcnn_ref.__file__)))
for site, n in step0.by_site.most_common():
    path, line = site.rsplit(":", 1)
    code = linecache.getline(os.path.join(root, path), int(line)).strip()
    print(f"{n:3d}  {site:34s} {code[:64]}")

sites = step0.by_site.most_common()[::-1]
fig, ax = plt.subplots(figsize=(8, 0.32 * len(sites) + 1.2))
ax.barh([s for s, _ in sites], [n for _, n in sites], color="tab:red")
ax.set_xlabel("device->host reads in one training step")
ax.xaxis.get_major_locator().set_params(integer=True)
ax.set_title(f"{step0.total} reads in one step ({PRESET!r}, {n_img} image(s), emulated backend)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Each read is of one of three kinds. A **decision** on the host: is the RPN output finite, what
# are the losses, is the gradient norm finite. A **size that depends on the data**: how many
# proposals survive the size filter and NMS, how many RoIs go to each FPN level or are foreground,
# how many samples a RoIAlign bin takes. **Sampling with the host's generator**: the RPN's and box
# head's balanced sampling draw from a NumPy `Generator`, so one seed gives the same run on every
# backend. None is per RoI or per parameter; NMS runs on the host after one packed transfer:

# %%
print(inspect.getsource(_to_host))

# %% [markdown]
# ## 4. With and without: three places that avoid reads
#
# **Value checks.** Public functions check shapes and dtypes (host metadata, free) and values
# (finite, in range), which must be read. `reads_values` runs the value checks on host arrays
# always, on a device only when `_checks.CHECK_DEVICE_VALUES` is set (environment
# `MRCNN_REF_CHECK_DEVICE_VALUES=1`), for debugging. The same step with the checks on:

# %%
print(inspect.getsource(_checks.reads_values))
chk_model, chk_opt = new_model("emulated")
saved = _checks.CHECK_DEVICE_VALUES
_checks.CHECK_DEVICE_VALUES = True
try:
    with count_syncs() as c_checks:
        train_step(chk_model, chk_opt, 0)
finally:
    _checks.CHECK_DEVICE_VALUES = saved
print(f"step 0 with device value checks: {c_checks.total} reads; without: {step0.total}")
print("added by the checks:", dict((c_checks.by_site - step0.by_site).most_common(6)))

# %% [markdown]
# **The gradient norm.** Clipping and the divergence guard need `sqrt(sum_k ||g_k||²)` over all
# parameters. Written the obvious way, with one `float()` per parameter, each parameter costs a
# read; `global_grad_norm` adds the parts on the device and reads the sum once. (The gradients
# are those of one image's forward and backward pass, before any clipping.)

# %%
print(inspect.getsource(global_grad_norm))
dev_model.zero_grad()
sample_forward_backward(dev_model, dataset[0], np.random.default_rng(0), dev_model.array_module)
grads = dev_model.named_grads()
with count_syncs() as c_naive:
    naive = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
with count_syncs() as c_global:
    fused = global_grad_norm(grads)
print(f"{len(grads)} parameters: naive {naive:.6f} with {c_naive.total} reads; "
      f"global_grad_norm {fused:.6f} with {c_global.total} read(s)")

# %% [markdown]
# **RoIAlign without data-dependent shapes.** On the host (chapter 03), RoIAlign saves work by
# looking at the RoIs: the window path gathers only the rows and columns each RoI touches, in
# chunks sized by the windows' areas (`chunks_by_area` reads the extents, then each chunk's
# largest window is read); the dense path skips the bands of rows no RoI touches and takes each
# image's RoIs with `nonzero`. Each of those is a shape computed from the data, so on a GPU each
# is a read:

# %%
print(inspect.getsource(ra._separable_forward))
print(inspect.getsource(ra._dense_forward))

# %% [markdown]
# On a device, `_device_forward` uses whole-axis weight matrices instead: more multiply-adds, but
# every shape follows from the arguments' shapes, so nothing is read. To see what the host paths
# would cost there, `roi_reads` forces them on device arrays (`path="window"` or `"dense"`) and
# counts the reads of a forward and backward pass.

# %%
print(inspect.getsource(ra._device_forward))


def roi_reads(size, path, sampling_ratio=2, n_rois=64):
    r = np.random.default_rng(1)
    feat = to_device(r.standard_normal((1, 16, size, size)).astype(np.float32), "emulated")
    xy = r.uniform(0, 3 * size, (n_rois, 2))     # image coordinates; the map is at stride 4
    rois = to_device(np.concatenate([np.zeros((n_rois, 1)), xy, np.minimum(
        xy + r.uniform(4, 2 * size, (n_rois, 2)), 4 * size)], 1).astype(np.float32), "emulated")
    with count_syncs() as c:
        out, cache = ra.roi_align_forward(feat, rois, 7, 0.25, sampling_ratio, True,
                                          path="auto" if path == "device" else path)
        ra.roi_align_backward(out, cache)
    host_out = ra.roi_align_forward(asnumpy(feat), asnumpy(rois), 7, 0.25, sampling_ratio, True)[0]
    return c.total, float(np.abs(asnumpy(out) - host_out).max())


roi_counts = {}
for size in (32, 64):
    for path in ("device", "window", "dense"):
        roi_counts[size, path], err = roi_reads(size, path)
        print(f"{size}x{size} map, {path:6s} path: {roi_counts[size, path]:2d} reads (max |diff| {err:.1e})")
adaptive = roi_reads(32, "device", sampling_ratio=-1)[0]
print(f"device path with an adaptive sampling grid (sampling_ratio=-1): {adaptive} read")

# %% [markdown]
# The dense path reads in every band of rows of every image, so its count grows with the map; the
# window path reads the window sizes and, per chunk of RoIs, their largest extents. The device
# path reads nothing with a fixed sampling ratio; with an adaptive one the samples per bin,
# `ceil(roi size / bins)`, are values, and their maximum is read once to size the arrays.
#
# ## Check
#
# The emulated step gives the NumPy step's losses and gradients (only the order of some float32
# sums differs); a step stays within 15 reads per image; the device value checks add reads; the
# norm is read once and equals the naive one; RoIAlign's device path reads nothing.

# %%
for h, d in zip(host_losses, dev_losses):
    for k in h:
        np.testing.assert_allclose(d[k], h[k], rtol=1e-5, err_msg=k)
np.testing.assert_allclose(dev_norm, host_norm, rtol=1e-5)
for k, g in host_grads.items():
    np.testing.assert_allclose(dev_grads[k], g, rtol=1e-5, atol=1e-5 * float(np.abs(g).max()), err_msg=k)
assert all(c.total <= 15 * n_img for c in counts), [c.total for c in counts]
assert c_checks.total > step0.total, (c_checks.total, step0.total)
assert c_global.total == 1 and c_naive.total == len(grads), (c_global.total, c_naive.total)
assert math.isclose(naive, fused, rel_tol=1e-5), (naive, fused)
assert roi_counts[32, "device"] == roi_counts[64, "device"] == 0 and c_ops.total == 0
assert roi_counts[64, "dense"] > roi_counts[32, "dense"], roi_counts
print("all checks passed")

# %% [markdown]
# ## Exercises
#
# 1. **Find a hidden read.** Count `if (x < 0).any(): x = xp.maximum(x, 0)` and
#    `x[x > 0].sum()` with `count_syncs`, then rewrite both without a read (`xp.where`).
# 2. **Inference.** Count the reads of `mrcnn_ref.inference.predict_image` on an emulated model and
#    draw the same bar chart. Which sites are new, and which could share one packed transfer?
# 3. **The minimum-size filter.** `remove_small_boxes` keeps boxes with a `nonzero`. Give small
#    boxes the score `-inf` instead: which read disappears, and what must NMS then do?
# 4. **The cost of no reads.** Count the multiply-adds of `_device_forward` and of the window path
#    for the RoIs of one step. With a GPU (`backend="cupy"`), time both: when is a read worth it?
#
# ## Summary
#
# * One source runs on NumPy or CuPy: every op takes `xp = get_array_module(...)` from its inputs.
# * The emulated backend imitates CuPy's host/device rules on the CPU and counts each device→host read.
# * Reads are kept few: value checks only when debugging, packed transfers, shapes independent of data.
