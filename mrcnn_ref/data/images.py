"""One image loader for every command: any file format scikit-image reads, as ``(H, W, 3) uint8``.

What a file may hold, and what it becomes:

* grey ``(H, W)`` or ``(H, W, 1)``: repeated into three channels; grey + alpha ``(H, W, 2)`` and
  RGBA ``(H, W, 4)``: the alpha channel is dropped; palette images are read as RGB(A);
* 8-bit: as it is; 16-bit: the top 8 bits (``v >> 8``, as ``skimage.util.img_as_ubyte``), so the
  same picture saved in 8 or 16 bits gives the same input — never stretched by its own maximum;
* floating point: values in ``[0, 1]`` (scaled by 255 and rounded); NaN/inf or values outside
  ``[0, 1]`` are an error naming the file;
* booleans: 0 or 255.

Images larger than a limit (:func:`check_size`) are refused or resized (:func:`fit_size`) so that
the memory a prediction needs stays bounded; every problem is a one-line ``ValueError`` naming
the file.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image
from skimage import io

__all__ = ["read_image", "to_rgb_uint8", "check_size", "fit_size", "default_max_side"]

#: Images are limited to this many times the model's training image side by default: a prediction
#: with the shapes model's test-time views needs ~1.8 GB at 4 x 128 = 512 px (docs/robustness.md).
MAX_SIDE_FACTOR = 4


def default_max_side(model_image_size: int) -> int:
    """The default limit on an image's longer side for a model trained at ``model_image_size``."""
    return MAX_SIDE_FACTOR * int(model_image_size)


def read_image(path) -> np.ndarray:
    """The image file ``path`` as ``(H, W, 3) uint8`` (see the module docstring)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"image {path!r} is a directory, not an image file")
    if not os.path.isfile(path):
        raise ValueError(f"image {path!r} does not exist")
    try:
        img = io.imread(path)
    except Exception as e:  # noqa: BLE001 - every decoder reports in its own way
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "backend" in detail:           # imageio: no plugin recognised the bytes
            detail = "no image format recognised"
        raise ValueError(f"image {path!r} cannot be read as an image (PNG, JPEG, TIFF, BMP, GIF, ...): "
                         f"{detail}") from None
    return to_rgb_uint8(img, f"image {path!r}")


def to_rgb_uint8(img, what: str = "image") -> np.ndarray:
    """An image array (grey, grey+alpha, RGB, RGBA; bool, 8/16-bit or float) as ``(H, W, 3) uint8``."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] in (1, 2):            # grey (+ alpha)
        img = img[:, :, 0]
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] < 1 or img.shape[1] < 1:
        raise ValueError(f"{what} must be grey, RGB or RGBA (H, W[, C]), got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if img.dtype.kind == "f":
        bad = ~np.isfinite(img)
        if bad.any():
            raise ValueError(f"{what} has {int(bad.sum())} NaN or infinite pixel value(s)")
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{what} is floating point with values in [{lo:g}, {hi:g}]; expected [0, 1]")
        return np.round(img * 255.0).astype(np.uint8)
    raise ValueError(f"{what} has pixel type {img.dtype}; expected 8- or 16-bit integers or floats in [0, 1]")


def check_size(img, max_side: int, what: str = "image", option: str = "--max-image-side"):
    """Refuse an image whose longer side exceeds ``max_side`` (saying how to raise the limit)."""
    h, w = img.shape[:2]
    if max(h, w) > max_side:
        raise ValueError(f"{what} is {w}x{h} pixels, larger than the limit of {max_side} on a side "
                         f"(memory grows with the pixels); raise it with {option} N")
    return img


def fit_size(img, max_side: int):
    """``(image, (fy, fx))``: ``img (H, W, 3) uint8`` shrunk (antialiased) so that its longer side
    is at most ``max_side``, and the factors that take its coordinates back to the original's
    (``(1.0, 1.0)`` when it already fits)."""
    h, w = img.shape[:2]
    if max(h, w) <= max_side:
        return img, (1.0, 1.0)
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    # Pillow's bilinear filter widens with the reduction (an area average): no aliasing, and it
    # works on the uint8 image itself, so memory stays near the image's own size
    small = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size[1], size[0]),
                                                                        Image.Resampling.BILINEAR))
    return small, (h / size[0], w / size[1])
