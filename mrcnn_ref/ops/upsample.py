"""Nearest-neighbour 2-D upsampling, forward and backward (the FPN top-down path).

With an integer ``scale_factor`` s every input pixel becomes an ``s x s`` block::

    out[n, c, i, j] = x[n, c, i // s, j // s]

so the backward sums the upstream gradient over each block (a reshape and a sum).

With an explicit output ``size=(H2, W2)`` (needed when FPN levels are not exactly 2x apart, e.g.
odd sizes), output row ``i`` reads input row ``floor(i * H / H2)`` — PyTorch's ``'nearest'`` rule,
computed like PyTorch in float32 (``scale = float32(H) / float32(H2)``), clamped to ``H - 1``.
Several output pixels may read the same input pixel, so the backward is a scatter-add
(``np.bincount`` on flat indices). When ``size`` is an exact integer multiple of the input size
the rule reduces to blocks again and the fast reshape-and-sum path is used.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, check_positive_int, pair
from ..backend import get_array_module, scatter_add

__all__ = ["upsample_nearest2d_forward", "upsample_nearest2d_backward", "nearest_source_index"]


def nearest_source_index(in_size: int, out_size: int, xp=np):
    """Input index read by each of ``out_size`` output positions (PyTorch 'nearest', float32 scale)."""
    if out_size == in_size:
        return xp.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    src = xp.floor(xp.arange(out_size, dtype=xp.float32) * scale).astype(xp.int64)
    return xp.minimum(src, in_size - 1)


def upsample_nearest2d_forward(x, scale_factor=2, size=None):
    """Nearest-neighbour upsampling of ``x (N, C, H, W)``.

    Either ``scale_factor`` (positive int, the default 2) giving ``(N, C, s*H, s*W)``, or
    ``size=(H2, W2)`` (takes precedence) giving ``(N, C, H2, W2)``. Returns ``(out, cache)``.
    """
    where = "upsample_nearest2d_forward"
    check_array(x, "x", where, ndim=4, floating=True)
    xp = get_array_module(x)
    n, c, h, w = x.shape
    if size is None:
        s = check_positive_int(scale_factor, "scale_factor", where)
        return _blocks(x, s, s), ("blocks", x.shape, (s, s))
    h2, w2 = pair(size, "size", where)
    # the source indices depend on the sizes only: computed on the host, moved once if needed
    ih = nearest_source_index(h, h2, np)
    iw = nearest_source_index(w, w2, np)
    if h2 % h == 0 and w2 % w == 0:
        # an integer ratio (the usual FPN case): every pixel becomes an sh x sw block, when the
        # indices say so (they do; checked rather than assumed, it costs O(H2 + W2))
        sh, sw = h2 // h, w2 // w
        if (ih == np.arange(h2) // sh).all() and (iw == np.arange(w2) // sw).all():
            return _blocks(x, sh, sw), ("blocks", x.shape, (sh, sw))
    ih, iw = xp.asarray(ih), xp.asarray(iw)
    out = x[:, :, ih[:, None], iw[None, :]]
    return out, ("gather", x.shape, (ih, iw))


def _blocks(x, sh, sw):
    """Repeat every pixel of ``x (N, C, H, W)`` into an ``sh x sw`` block (one broadcast copy)."""
    n, c, h, w = x.shape
    return get_array_module(x).broadcast_to(x[:, :, :, None, :, None], (n, c, h, sh, w, sw)).reshape(
        n, c, h * sh, w * sw)


def upsample_nearest2d_backward(dout, cache):
    """``dx (N, C, H, W)``: the upstream gradient summed over the output pixels that read each input."""
    kind, (n, c, h, w), extra = cache
    if kind == "blocks":
        sh, sw = extra
        return dout.reshape(n, c, h, sh, w, sw).sum(axis=(3, 5))
    ih, iw = extra
    xp = get_array_module(dout)
    within = (ih[:, None] * w + iw[None, :])                        # (H2, W2) into one image
    flat = xp.arange(n * c).reshape(n, c, 1, 1) * (h * w) + within  # (N, C, H2, W2)
    dx = xp.zeros(n * c * h * w, dtype=dout.dtype)
    scatter_add(dx, flat.ravel(), dout.ravel())
    return dx.reshape(n, c, h, w)
