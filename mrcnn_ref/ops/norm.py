"""Group normalisation and frozen batch normalisation, forward and backward.

**GroupNorm** (Wu & He, 2018) splits the ``C`` channels of every sample into ``G`` groups and
normalises each (sample, group) by its own mean and variance over ``C/G x H x W`` values::

    xhat = (x - mean_g) / sqrt(var_g + eps)      (biased variance, per sample and group)
    y    = gamma[c] * xhat + beta[c]

No statistic is shared across the batch, so it behaves the same at batch size 1 or 2 (detection
training) as at 256 — unlike BatchNorm, whose batch statistics are too noisy with tiny batches.
Backward, per (sample, group) with ``M = C/G*H*W`` and ``g = dy * gamma``::

    dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)
    dgamma = sum_{n,h,w} dy * xhat,   dbeta = sum_{n,h,w} dy

**Frozen BatchNorm** is what a detector does with an ImageNet-pretrained ResNet's BatchNorm
layers: the running statistics are *constants*, so the layer is a per-channel affine map::

    scale = gamma / sqrt(running_var + eps),  shift = beta - running_mean * scale,  y = x*scale + shift
"""
from __future__ import annotations

from .._checks import check_array, check_positive_int

__all__ = [
    "group_norm_forward",
    "group_norm_backward",
    "frozen_batch_norm_forward",
    "frozen_batch_norm_backward",
]


def _channel_param(p, name, where, x):
    check_array(p, name, where, shape=(x.shape[1],), floating=True)
    if p.dtype != x.dtype:
        raise TypeError(f"{where}: {name} must have the dtype of x ({x.dtype}), got {p.dtype}")
    return p


def _per_channel(p, ndim):
    """(C,) -> (1, C, 1, ..., 1) for broadcasting against an (N, C, *) array."""
    return p.reshape((1, -1) + (1,) * (ndim - 2))


def group_norm_forward(x, gamma, beta, num_groups, eps=1e-5):
    """Group normalisation (same numbers as ``F.group_norm``).

    Parameters
    ----------
    x : (N, C, H, W) float array (any (N, C, *) works).
    gamma, beta : (C,) per-channel scale and shift, dtype of x.
    num_groups : int dividing C. eps : added to the variance.

    Returns ``(out, cache)``, out shaped like x.
    """
    where = "group_norm_forward"
    check_array(x, "x", where, floating=True)
    if x.ndim < 2:
        raise ValueError(f"{where}: x must have shape (N, C, *), got {tuple(x.shape)}")
    _channel_param(gamma, "gamma", where, x)
    _channel_param(beta, "beta", where, x)
    g = check_positive_int(num_groups, "num_groups", where)
    n, c = x.shape[:2]
    if c % g:
        raise ValueError(f"{where}: num_groups={g} must divide the number of channels C={c} "
                         f"(x shape {tuple(x.shape)})")
    xg = x.reshape(n, g, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    xc = xg - mean
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / (var + eps) ** 0.5
    xhat = (xc * rstd).reshape(x.shape)
    out = xhat * _per_channel(gamma, x.ndim) + _per_channel(beta, x.ndim)
    return out.astype(x.dtype, copy=False), (xhat, rstd, gamma, g)


def group_norm_backward(dout, cache):
    """Gradients of :func:`group_norm_forward`: ``(dx, dgamma (C,), dbeta (C,))``."""
    xhat, rstd, gamma, g = cache
    axes = (0,) + tuple(range(2, dout.ndim))
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    n = dout.shape[0]
    dxhat = (dout * _per_channel(gamma, dout.ndim)).reshape(n, g, -1)
    xh = xhat.reshape(n, g, -1)
    dx = (dxhat - dxhat.mean(axis=-1, keepdims=True)
          - xh * (dxhat * xh).mean(axis=-1, keepdims=True)) * rstd
    return dx.reshape(dout.shape).astype(dout.dtype, copy=False), dgamma, dbeta


def frozen_batch_norm_forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Batch normalisation with frozen statistics: ``y = x * scale + shift`` per channel.

    Parameters
    ----------
    x : (N, C, H, W) float array (any (N, C, *) works).
    gamma, beta, running_mean, running_var : (C,), dtype of x. Nothing is estimated from the batch.

    Returns ``(out, cache)``. Equals ``F.batch_norm(x, running_mean, running_var, gamma, beta,
    training=False, eps=eps)``.
    """
    where = "frozen_batch_norm_forward"
    check_array(x, "x", where, floating=True)
    if x.ndim < 2:
        raise ValueError(f"{where}: x must have shape (N, C, *), got {tuple(x.shape)}")
    for name, p in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var)):
        _channel_param(p, name, where, x)
    inv_std = 1.0 / (running_var + eps) ** 0.5
    scale = gamma * inv_std
    shift = beta - running_mean * scale
    out = x * _per_channel(scale, x.ndim) + _per_channel(shift, x.ndim)
    return out, (x, running_mean, inv_std, scale)


def frozen_batch_norm_backward(dout, cache):
    """Gradients of :func:`frozen_batch_norm_forward`: ``(dx, dgamma (C,), dbeta (C,))``.

    ``dx = dout * scale``. ``dgamma`` and ``dbeta`` are returned even though a frozen layer
    usually does not update them (a caller that trains them may); the running statistics are
    constants and get no gradient.
    """
    x, running_mean, inv_std, scale = cache
    axes = (0,) + tuple(range(2, dout.ndim))
    dx = dout * _per_channel(scale, dout.ndim)
    xhat = (x - _per_channel(running_mean, x.ndim)) * _per_channel(inv_std, x.ndim)
    dgamma = (dout * xhat).sum(axis=axes)
    dbeta = dout.sum(axis=axes)
    return dx, dgamma, dbeta
