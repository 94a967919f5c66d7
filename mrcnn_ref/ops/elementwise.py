"""Elementwise addition (residual connections), forward and backward.

``out = a + b`` passes the upstream gradient unchanged to both summands.
"""
from __future__ import annotations

from .._checks import check_same_shape

__all__ = ["add_forward", "add_backward"]


def add_forward(a, b):
    """``out = a + b`` for two arrays of the same shape and dtype (no broadcasting).

    Returns ``(out, cache)`` (the cache is empty: the backward needs nothing).
    """
    where = "add_forward"
    check_same_shape(a, b, "a", "b", where, note=" (no broadcasting)")
    if a.dtype != b.dtype:
        raise TypeError(f"{where}: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    return a + b, None


def add_backward(dout, cache):
    """``(da, db) = (dout, dout)``, returned as two independent copies (safe to modify in place)."""
    return dout.copy(), dout.copy()
