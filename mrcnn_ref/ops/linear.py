"""Fully connected (linear) layer: ``out = x @ w.T + b``, forward and backward.

PyTorch's weight layout: ``w (out_features, in_features)``. ``x`` may have any number of leading
axes ``(..., in_features)``; they are flattened into one batch axis for a single matrix product.

Backward with ``dout (..., out_features)``::

    dx = dout @ w                  (..., in)
    dw = dout2d.T @ x2d            (out, in)     (sum over every leading position)
    db = dout2d.sum(0)             (out,)
"""
from __future__ import annotations

from .._checks import check_array

__all__ = ["linear_forward", "linear_backward"]


def linear_forward(x, w, b=None):
    """Affine map ``out = x @ w.T + b``.

    Parameters
    ----------
    x : (..., in) float array (at least 1-D; typically (N, in)).
    w : (out, in) array of the same dtype.
    b : (out,) array or None.

    Returns ``(out (..., out), cache)``.
    """
    where = "linear_forward"
    check_array(x, "x", where, floating=True)
    check_array(w, "w", where, ndim=2, floating=True)
    if x.ndim < 1:
        raise ValueError(f"{where}: x must have at least 1 dimension (..., in), got a scalar")
    if x.dtype != w.dtype:
        raise TypeError(f"{where}: x and w must have the same dtype, got x {x.dtype} and w {w.dtype}")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"{where}: feature mismatch: x has in={x.shape[-1]} (shape {tuple(x.shape)}) "
                         f"but w expects {w.shape[1]} (w shape {tuple(w.shape)})")
    if b is not None:
        check_array(b, "b", where, shape=(w.shape[0],), floating=True)
        if b.dtype != x.dtype:
            raise TypeError(f"{where}: b must have the dtype of x ({x.dtype}), got {b.dtype}")
    x2d = x.reshape(-1, x.shape[-1])
    out = x2d @ w.T
    if b is not None:
        out += b
    return out.reshape(x.shape[:-1] + (w.shape[0],)), (x2d, x.shape, w, b is not None)


def linear_backward(dout, cache):
    """Gradients of :func:`linear_forward`: ``(dx (..., in), dw (out, in), db (out,) or None)``."""
    x2d, x_shape, w, has_bias = cache
    dout2d = dout.reshape(-1, w.shape[0])
    dx = (dout2d @ w).reshape(x_shape)
    dw = dout2d.T @ x2d
    db = dout2d.sum(axis=0) if has_bias else None
    return dx, dw, db
