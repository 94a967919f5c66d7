"""Sample transforms: horizontal flip (the only augmentation Mask R-CNN needs here) and model input.

A *sample* is the dict the datasets return: ``"image"`` (H, W, 3) uint8, ``"boxes"`` (n, 4)
``(x1, y1, x2, y2)``, ``"labels"`` (n,), ``"masks"`` (n, H, W) bool, ``"image_id"``, and for COCO
data optionally ``"crowd_boxes"`` (k, 4). Transforms return a *new* dict and never modify their input.

Flipping an image of width W left-right maps a continuous x to ``W - x``, so a box
``(x1, y1, x2, y2)`` becomes ``(W - x2, y1, W - x1, y2)`` (x1 and x2 swap roles; no ``-1`` because
coordinates are continuous), and pixel column c goes to column ``W - 1 - c``.

Model input: ``to_model_input`` scales the image to [0, 1] and normalises each channel with
``MEAN = (0.5, 0.5, 0.5)`` and ``STD = (0.25, 0.25, 0.25)``, i.e. ``x = (pixel / 255 - 0.5) / 0.25``
in [-2, 2]; the network is trained from scratch, so there are no ImageNet statistics to match.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array
from ..backend import asnumpy, get_array_module
from ..boxes import hflip_boxes

__all__ = ["MEAN", "STD", "hflip", "random_hflip", "to_model_input"]

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def _check_sample(sample, where):
    if not isinstance(sample, dict):
        raise TypeError(f"{where}: sample must be a dict (as returned by a dataset), got "
                        f"{type(sample).__name__}")
    if "image" not in sample:
        raise ValueError(f"{where}: sample has no 'image' entry")
    check_array(sample["image"], "sample['image']", where, ndim=(2, 3))


def hflip(sample):
    """Mirror a sample left-right: image columns, box x-coordinates (x1' = W - x2, x2' = W - x1),
    mask columns (and ``crowd_boxes`` if present). Other entries are copied unchanged.
    """
    where = "hflip"
    _check_sample(sample, where)
    image = sample["image"]
    w = image.shape[1]
    out = dict(sample)
    out["image"] = image[:, ::-1].copy()
    for key in ("boxes", "crowd_boxes"):
        if key in sample:
            b = check_array(sample[key], f"sample[{key!r}]", where, shape=(None, 4))
            out[key] = hflip_boxes(b, w)
    if "masks" in sample:
        m = check_array(sample["masks"], "sample['masks']", where, ndim=3)
        if m.shape[2] != w:
            raise ValueError(f"{where}: sample['masks'] has width {m.shape[2]} but the image has "
                             f"width {w}")
        out["masks"] = m[:, :, ::-1].copy()
    return out


def random_hflip(sample, rng, p=0.5):
    """``hflip(sample)`` with probability p (one draw from the NumPy Generator ``rng``), else a copy."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"random_hflip: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"random_hflip: p must be a probability in [0, 1], got {p!r}")
    if rng.random() < p:
        return hflip(sample)
    _check_sample(sample, "random_hflip")
    return dict(sample)


def to_model_input(sample, dtype=np.float32, xp=None):
    """The network input for a sample: (3, H, W) float image, ``(pixel / 255 - MEAN) / STD``.

    sample: a dataset sample (dict) or directly an (H, W, 3) / (H, W) image array (grey is
    repeated to 3 channels); dtype: float dtype of the result; xp: array module to put the result
    in (default: the module of the image, NumPy for a NumPy image).
    """
    where = "to_model_input"
    if isinstance(sample, dict):
        _check_sample(sample, where)
        image = sample["image"]
    else:
        image = check_array(sample, "sample", where, ndim=(2, 3))
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise TypeError(f"{where}: dtype must be a floating dtype, got {np.dtype(dtype)}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = image.repeat(3, axis=2)
    if image.shape[2] != 3:
        raise ValueError(f"{where}: image must have 3 channels (H, W, 3), got shape {tuple(image.shape)}")
    if xp is None:
        xp = get_array_module(image)
    image = asnumpy(image) if xp is np else xp.asarray(image)
    img = image.astype(dtype).transpose(2, 0, 1)
    mean = xp.asarray(MEAN, dtype=dtype)[:, None, None]
    std = xp.asarray(STD, dtype=dtype)[:, None, None]
    return xp.ascontiguousarray((img / np.dtype(dtype).type(255) - mean) / std)
