"""2-D max pooling, forward and backward (PyTorch's ``F.max_pool2d`` semantics).

Each output pixel is the maximum of a ``kh x kw`` window of the input padded with ``-inf``::

    out[n, c, i, j] = max_{u, v} xpad[n, c, i*sh + u, j*sw + v],   Ho = (H + 2*ph - kh) // sh + 1

(floor output size; ``stride`` defaults to ``kernel_size``; ``padding <= kernel_size // 2``.)

The gradient of a max flows only to the element that won: the backward sends ``dout[n, c, i, j]``
to the window's argmax. Ties go to the *first* maximum in row-major window order. Overlapping
windows (stride < kernel) can pick the same input pixel several times; those contributions add
up, which we do with one vectorised scatter-add (``np.bincount`` on the flat indices).
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, pair
from ..backend import get_array_module, scatter_add

__all__ = ["max_pool2d_forward", "max_pool2d_backward"]


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max pooling over ``kernel_size`` windows.

    Parameters
    ----------
    x : (N, C, H, W) float array.
    kernel_size : int or pair. stride : int, pair, or None (= kernel_size). padding : int or pair,
        at most half the kernel size (implicit ``-inf`` padding, as PyTorch).

    Returns
    -------
    out : (N, C, Ho, Wo), ``Ho = (H + 2*ph - kh) // sh + 1``.
    cache : the flat input index of every window's argmax, and the input shape.
    """
    where = "max_pool2d_forward"
    check_array(x, "x", where, ndim=4, floating=True)
    kh, kw = pair(kernel_size, "kernel_size", where)
    sh, sw = (kh, kw) if stride is None else pair(stride, "stride", where)
    ph, pw = pair(padding, "padding", where, allow_zero=True)
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{where}: padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    n, c, h, w = x.shape
    if kh > h + 2 * ph or kw > w + 2 * pw:
        raise ValueError(f"{where}: kernel ({kh}, {kw}) is larger than the padded input "
                         f"({h + 2 * ph}, {w + 2 * pw}) (x shape {tuple(x.shape)})")
    xp = get_array_module(x)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ph or pw:
        xpad = xp.full((n, c, h + 2 * ph, w + 2 * pw), -np.inf, dtype=x.dtype)
        xpad[:, :, ph:ph + h, pw:pw + w] = x
    else:
        xpad = x
    win = xp.lib.stride_tricks.sliding_window_view(xpad, (kh, kw), axis=(2, 3))
    win = win[:, :, ::sh, ::sw][:, :, :ho, :wo].reshape(n, c, ho, wo, kh * kw)   # copy
    arg = win.argmax(axis=-1)                            # first maximum wins on ties
    out = xp.take_along_axis(win, arg[..., None], axis=-1)[..., 0]
    # argmax -> (row, col) in the unpadded input -> flat index into x
    rows = xp.arange(ho).reshape(ho, 1) * sh + arg // kw - ph
    cols = xp.arange(wo).reshape(1, wo) * sw + arg % kw - pw
    base = (xp.arange(n * c).reshape(n, c, 1, 1) * (h * w))
    flat = base + rows * w + cols
    return out, (flat, x.shape)


def max_pool2d_backward(dout, cache):
    """``dx (N, C, H, W)``: each ``dout`` entry added to the input position of its window's argmax."""
    flat, x_shape = cache
    xp = get_array_module(dout)
    dx = xp.zeros(int(np.prod(x_shape)), dtype=dout.dtype)
    scatter_add(dx, flat.ravel(), dout.ravel())
    return dx.reshape(x_shape)
