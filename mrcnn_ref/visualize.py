"""Pictures: detections (masks, boxes, labels, scores) drawn over an image; loss curves; the
Mask R-CNN pipeline as a diagram."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from .backend import asnumpy
from .model.mask_rcnn import LOSS_NAMES

__all__ = ["draw_detections", "save_detections", "overlay_masks", "plot_loss_curves", "draw_pipeline",
           "PALETTE"]

# distinct colours (RGB in [0, 1]) for instances
PALETTE = np.array([
    [0.90, 0.10, 0.10], [0.10, 0.60, 0.95], [0.15, 0.75, 0.25], [0.95, 0.70, 0.05],
    [0.60, 0.20, 0.85], [0.05, 0.80, 0.80], [0.95, 0.40, 0.70], [0.55, 0.35, 0.15],
])


def overlay_masks(image, masks, alpha=0.45):
    """Blend each boolean mask (N, H, W) into a copy of ``image`` (H, W, 3) in its own colour."""
    img = np.asarray(asnumpy(image), dtype=np.float64)
    if img.max() > 1.0:
        img = img / 255.0
    masks = np.asarray(asnumpy(masks), dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != img.shape[:2]:
        raise ValueError(f"overlay_masks: masks must have shape (N, {img.shape[0]}, {img.shape[1]}), "
                         f"got {masks.shape}")
    out = img.copy()
    for i, m in enumerate(masks):
        out[m] = (1 - alpha) * out[m] + alpha * PALETTE[i % len(PALETTE)]
    return out


def draw_detections(image, boxes, labels=None, scores=None, masks=None, class_names=None, ax=None,
                    title=None):
    """Draw detections on a matplotlib axis (a new figure when ``ax`` is None); returns the axis.

    image (H, W, 3) uint8 or float; boxes (N, 4) xyxy; labels (N,) ints; scores (N,); masks
    (N, H, W) bool; class_names: dict or list label -> name.
    """

    boxes = np.asarray(asnumpy(boxes), dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    shown = overlay_masks(image, masks) if masks is not None and len(masks) else (
        np.asarray(asnumpy(image)) / (255.0 if np.asarray(asnumpy(image)).max() > 1 else 1.0))
    # extent: pixel i spans [i, i + 1], so boxes in continuous coordinates land on their edges
    ax.imshow(shown, extent=(0, shown.shape[1], shown.shape[0], 0))
    for i in range(n):
        x1, y1, x2, y2 = boxes[i]
        color = PALETTE[i % len(PALETTE)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        text = []
        if labels is not None:
            lab = int(asnumpy(labels)[i])
            name = class_names[lab] if class_names is not None and (
                (isinstance(class_names, dict) and lab in class_names) or
                (not isinstance(class_names, dict) and 0 <= lab < len(class_names))) else str(lab)
            text.append(name)
        if scores is not None:
            text.append(f"{float(asnumpy(scores)[i]):.2f}")
        if text:
            ax.text(x1, y1 - 1, " ".join(text), color="white", fontsize=7, va="bottom",
                    bbox=dict(facecolor=color, alpha=0.8, pad=1, edgecolor="none"))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def save_detections(path, image, det: dict, class_names=None, title=None):
    """Write a PNG of ``image`` with the detections dict (boxes, labels, scores, masks).

    Uses a standalone :class:`matplotlib.figure.Figure` (no pyplot): the global backend and the
    open pyplot figures are left alone."""

    h, w = np.asarray(asnumpy(image)).shape[:2]
    fig = Figure(figsize=(max(4, w / 40), max(4, h / 40)))
    ax = fig.subplots()
    draw_detections(image, det["boxes"], det.get("labels"), det.get("scores"), det.get("masks"),
                    class_names=class_names, ax=ax, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_loss_curves(history: dict, path: str, smooth: int = 25):
    """Save a PNG with each loss (moving average over ``smooth`` iterations) and the total.

    Draws on a standalone :class:`matplotlib.figure.Figure` (no pyplot), so it neither switches
    the global backend nor leaves a figure open — a notebook keeps showing its own plots."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for k in (*LOSS_NAMES, "total"):
        v = np.asarray(history.get(k, []), dtype=float)
        if v.size == 0:
            continue
        w = max(1, min(smooth, v.size))
        avg = np.convolve(v, np.ones(w) / w, mode="valid")
        ax = axes[1] if k == "total" else axes[0]
        ax.plot(np.arange(w - 1, v.size), avg, label=k)
    for ax, title in zip(axes, ("losses", "total loss")):
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(f"{title} (moving average over {smooth})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def draw_pipeline(ax=None, highlight=None):
    """Draw Mask R-CNN's inference as boxes and arrows on a matplotlib axis; returns the axis.

    image -> backbone + FPN -> RPN -> proposals -> RoIAlign (which also reads the FPN features)
    -> box head and mask head -> boxes, classes, masks. ``highlight``: a stage name or a list of
    them, coloured to show "you are here"; the names are ``image``, ``backbone``, ``rpn``,
    ``proposals``, ``roi_op``, ``box_head``, ``mask_head``, ``outputs``. Each stage's patch and
    label carry the stage name as their ``gid``. A new figure is made when ``ax`` is None.
    """
    #        name         label                      centre (x, y)
    stages = [("image", "image", (0.6, 1.5)),
              ("backbone", "backbone\n+ FPN", (2.0, 1.5)),
              ("rpn", "RPN", (3.4, 1.5)),
              ("proposals", "proposals", (4.8, 1.5)),
              ("roi_op", "RoIAlign", (6.2, 1.5)),
              ("box_head", "box head", (7.7, 2.35)),
              ("mask_head", "mask head", (7.7, 0.65)),
              ("outputs", "boxes,\nclasses,\nmasks", (9.3, 1.5))]
    names = [name for name, _, _ in stages]
    wanted = [] if highlight is None else [highlight] if isinstance(highlight, str) else list(highlight)
    unknown = [h for h in wanted if h not in names]
    if unknown:
        raise ValueError(f"draw_pipeline: unknown stage {unknown[0]!r}; the stages are {', '.join(names)}")
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 2.6))
    w, h = 1.1, 0.75
    centre = {}
    for name, label, (x, y) in stages:
        on = name in wanted
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                               facecolor="#f6b93b" if on else "#eceff1",
                               edgecolor="#b35900" if on else "#607d8b", linewidth=2.0 if on else 1.0)
        patch.set_gid(name)
        ax.add_patch(patch)
        ax.text(x, y, label, ha="center", va="center", fontsize=9,
                fontweight="bold" if on else "normal", gid=name)
        centre[name] = (x, y)

    def arrow(a, b, rad=0.0):
        (xa, ya), (xb, yb) = centre[a], centre[b]
        ax.add_patch(FancyArrowPatch((xa + w / 2, ya) if rad == 0 else (xa, ya - h / 2),
                                     (xb - w / 2, yb) if rad == 0 else (xb, yb - h / 2),
                                     arrowstyle="-|>", mutation_scale=12, color="#455a64", lw=1.2,
                                     connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))

    for a, b in (("image", "backbone"), ("backbone", "rpn"), ("rpn", "proposals"),
                 ("proposals", "roi_op"), ("roi_op", "box_head"), ("roi_op", "mask_head"),
                 ("box_head", "outputs"), ("mask_head", "outputs")):
        arrow(a, b)
    arrow("backbone", "roi_op", rad=0.25)              # RoIAlign reads the FPN features
    ax.text(4.1, 0.38, "features P2-P5", ha="center", va="center", fontsize=7, color="#455a64")
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 2.9)
    ax.set_axis_off()
    return ax
