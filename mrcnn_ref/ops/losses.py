"""Losses of Mask R-CNN, each a forward/backward pair with a hand-written gradient.

The training objective of Mask R-CNN is the multi-task loss (He et al., 2017)

    L = L_cls + L_box + L_mask

* ``L_cls`` — softmax cross-entropy over K classes (Fast R-CNN):
  :func:`softmax_cross_entropy_forward`.  The RPN's objectness term is a binary version of it:
  :func:`bce_with_logits_forward`.
* ``L_box`` — smooth L1 on the box-regression deltas: :func:`smooth_l1_forward`.
* ``L_mask`` — per-pixel sigmoid binary cross-entropy on the ground-truth class's mask channel
  only, averaged over the RoIs' pixels: :func:`mask_loss_forward`.  The multinomial alternative
  (softmax across classes per pixel, Table 2(b) of the paper) is :func:`mask_loss_softmax_forward`.

Every ``*_forward`` returns ``(loss, cache)`` and every ``*_backward(dloss, cache)`` returns the
gradient of the **first** argument (logits / predictions) only: targets, labels and weights are
constants during training.  (For smooth L1 the gradient w.r.t. ``target`` is just ``-d_pred``.)

Numerical stability: nothing here ever evaluates ``exp`` of a large positive number.  Softmax uses
the log-sum-exp trick ``log sum_k e^{x_k} = m + log sum_k e^{x_k - m}`` with ``m = max_k x_k``; the
binary cross-entropy with logits uses ``max(x, 0) - x t + log1p(exp(-|x|))``; the sigmoid uses
``exp(-|x|)``.  Logits of +-1000 give finite losses and gradients.

Reductions: ``"mean"``, ``"sum"`` or ``"none"`` (per-element losses, then ``dloss`` has their
shape).  Where an op takes ``normalizer``, a given positive number replaces the denominator:
the loss is ``sum(weighted per-element losses) / normalizer`` (with ``reduction`` "mean" or "sum";
it is an error with "none").  That is how a caller divides a box loss summed over the sampled
RoIs' coordinates by the number of sampled RoIs.

All functions are generic over the array module (NumPy or CuPy) of their inputs and compute in
the floating dtype of the logits / predictions; scalar losses are returned as 0-d arrays.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, check_same_shape, reads_values
from ..backend import get_array_module

__all__ = [
    "sigmoid",
    "log_softmax",
    "softmax_cross_entropy_forward",
    "softmax_cross_entropy_backward",
    "smooth_l1_forward",
    "smooth_l1_backward",
    "bce_with_logits_forward",
    "bce_with_logits_backward",
    "mask_loss_forward",
    "mask_loss_backward",
    "mask_loss_softmax_forward",
    "mask_loss_softmax_backward",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def sigmoid(x):
    """Numerically stable logistic function ``1 / (1 + exp(-x))``, elementwise, any shape.

    Uses ``e = exp(-|x|) <= 1`` so that nothing overflows: ``1/(1+e)`` for ``x >= 0`` and
    ``e/(1+e)`` for ``x < 0``.
    """
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def log_softmax(x, axis=-1):
    """Numerically stable ``log(softmax(x))`` along ``axis`` (log-sum-exp trick), any shape."""
    xp = get_array_module(x)
    m = xp.max(x, axis=axis, keepdims=True)
    z = x - m
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def _check_reduction(reduction, where):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{where}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_normalizer(normalizer, reduction, where):
    if normalizer is None:
        return None
    if isinstance(normalizer, bool) or not isinstance(normalizer, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: normalizer must be a positive number or None, "
                        f"got {type(normalizer).__name__}")
    normalizer = float(normalizer)
    if not (np.isfinite(normalizer) and normalizer > 0):
        raise ValueError(f"{where}: normalizer must be a positive finite number, got {normalizer}")
    if reduction == "none":
        raise ValueError(f"{where}: normalizer cannot be combined with reduction='none'")
    return normalizer


def _check_int_labels(labels, name, where, shape):
    check_array(labels, name, where, shape=shape)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where}: {name} must be an integer array (class indices), got {labels.dtype}")
    return labels


def _check_weights(weights, like, where, shape=None):
    """Weights: a floating array broadcastable to ``like.shape`` (or of exactly ``shape``)."""
    if weights is None:
        return None
    check_array(weights, "weights", where, floating=True, finite=True)
    if shape is not None:
        check_array(weights, "weights", where, shape=shape)
    else:
        try:
            b = np.broadcast_shapes(tuple(weights.shape), tuple(like.shape))
        except ValueError:
            b = None
        if b != tuple(like.shape):
            raise ValueError(f"{where}: weights must have a shape broadcastable to {tuple(like.shape)}, "
                             f"got {tuple(weights.shape)}")
    xp = get_array_module(like)
    return xp.asarray(weights).astype(like.dtype, copy=False)


def _dloss_array(dloss, xp, dtype):
    return xp.asarray(dloss, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# softmax cross-entropy  (Fast R-CNN L_cls)
# ----------------------------------------------------------------------------------------------
def softmax_cross_entropy_forward(logits, labels, weights=None, reduction="mean", ignore_index=-1,
                                  normalizer=None):
    """Softmax cross-entropy of class scores: Fast R-CNN's classification loss ``L_cls``.

    Per row ``l_i = -log softmax(logits_i)[labels_i] = logsumexp(logits_i) - logits_i[labels_i]``.

    Parameters
    ----------
    logits : (N, K) float array of class scores.
    labels : (N,) integer array, each in ``[0, K)`` or equal to ``ignore_index``.
    weights : optional (N,) float array of per-row weights (e.g. ``class_weight[labels]``).
    reduction : ``"mean"`` (default) — ``sum_i w_i l_i / sum_i w_i`` over the non-ignored rows
        (``w_i = 1`` without weights, i.e. the plain mean over the non-ignored rows; this is
        ``torch.nn.functional.cross_entropy``'s convention for class weights); 0 when there is no
        non-ignored row (or the weights sum to 0).  ``"sum"`` — ``sum_i w_i l_i``.  ``"none"`` —
        the (N,) vector ``w_i l_i`` with 0 on ignored rows.
    ignore_index : int label value whose rows contribute nothing (default -1).
    normalizer : optional positive number; the loss is then ``sum_i w_i l_i / normalizer``.

    Returns ``(loss, cache)``: a 0-d array (or (N,) for ``"none"``) and the cache for the backward.
    """
    where = "softmax_cross_entropy_forward"
    check_array(logits, "logits", where, ndim=2, floating=True)
    n, k = logits.shape
    _check_int_labels(labels, "labels", where, shape=(n,))
    _check_reduction(reduction, where)
    normalizer = _check_normalizer(normalizer, reduction, where)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"{where}: ignore_index must be an int, got {type(ignore_index).__name__}")
    xp = get_array_module(logits, labels)
    valid = labels != ignore_index
    if n and reads_values(labels) and not bool(xp.all(~valid | ((labels >= 0) & (labels < k)))):
        raise ValueError(f"{where}: labels must lie in [0, {k}) (or equal ignore_index={ignore_index}), "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")
    w = _check_weights(weights, logits, where, shape=(n,))

    safe = xp.where(valid, labels, 0)
    logp = log_softmax(logits, axis=1)
    rows = xp.arange(n)
    per_row = -logp[rows, safe]
    coef = valid.astype(logits.dtype)          # per-row factor d loss / d l_i (before dloss)
    if w is not None:
        coef = coef * w
    per_row = per_row * coef

    if reduction == "none":
        loss = per_row
    else:
        total = xp.sum(per_row)
        if normalizer is not None:
            denom = xp.asarray(normalizer, dtype=logits.dtype)
        elif reduction == "mean":
            d = xp.sum(coef)
            denom = xp.where(d != 0, d, 1).astype(logits.dtype)  # no rows (or zero weight) -> 0
        else:
            denom = xp.asarray(1, dtype=logits.dtype)
        coef = coef / denom
        loss = (total / denom).astype(logits.dtype)
    cache = (xp.exp(logp), safe, coef, reduction)
    return loss, cache


def softmax_cross_entropy_backward(dloss, cache):
    """Gradient of :func:`softmax_cross_entropy_forward` w.r.t. ``logits``: (N, K).

    ``d l_i / d logits_i = softmax(logits_i) - onehot(labels_i)``, scaled by the row's weight and
    the reduction's denominator; ignored rows get exactly 0.  ``dloss`` is a scalar, or (N,) for
    ``reduction="none"``.
    """
    probs, safe, coef, reduction = cache
    xp = get_array_module(probs)
    dloss = _dloss_array(dloss, xp, probs.dtype)
    n = probs.shape[0]
    g = probs.copy()
    g[xp.arange(n), safe] -= 1
    return g * (coef * dloss)[:, None]     # dloss: scalar, or (N,) for reduction="none"


# ----------------------------------------------------------------------------------------------
# smooth L1  (Fast R-CNN L_box)
# ----------------------------------------------------------------------------------------------
def smooth_l1_forward(pred, target, beta=1.0, weights=None, reduction="sum", normalizer=None):
    """Smooth L1 (Huber-like) loss of box-regression deltas: Fast R-CNN's ``L_box``.

    Elementwise, with ``x = pred - target``::

        l(x) = 0.5 * x**2 / beta     if |x| < beta
               |x| - 0.5 * beta      otherwise

    (the same numbers as ``torch.nn.functional.smooth_l1_loss(pred, target, beta=beta)``).
    ``beta = 1`` is the Fast R-CNN definition; ``beta = 0`` is plain L1 ``|x|`` (handled without
    dividing by zero).  Quadratic near 0 (gradient ``x / beta`` shrinks smoothly to 0), linear far
    away (gradient ``sign(x)``, bounded: outliers cannot blow up the update as with L2).

    Parameters
    ----------
    pred, target : float arrays of the same shape, e.g. (N, 4) deltas.
    beta : float >= 0, the switch point between the quadratic and the linear piece.
    weights : optional float array broadcastable to ``pred.shape`` (e.g. (N, 1) or (N, 4) 0/1
        weights that keep only the positive RoIs); multiplies the per-element losses.
    reduction : ``"sum"`` (default) — ``sum w l``; ``"mean"`` — ``sum w l / pred.size`` (0 for an
        empty input); ``"none"`` — ``w l`` with ``pred``'s shape.
    normalizer : optional positive number; the loss is then ``sum w l / normalizer`` (e.g. the
        number of sampled anchors or RoIs).

    Returns ``(loss, cache)``.
    """
    where = "smooth_l1_forward"
    check_same_shape(pred, target, "pred", "target", where)
    if isinstance(beta, bool) or not isinstance(beta, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: beta must be a number >= 0, got {type(beta).__name__}")
    beta = float(beta)
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"{where}: beta must be a finite number >= 0, got {beta}")
    _check_reduction(reduction, where)
    normalizer = _check_normalizer(normalizer, reduction, where)
    w = _check_weights(weights, pred, where)
    xp = get_array_module(pred, target)

    x = pred - target.astype(pred.dtype, copy=False)
    ax = xp.abs(x)
    if beta == 0.0:
        per = ax
        grad = xp.sign(x)
    else:
        quad = ax < beta
        per = xp.where(quad, 0.5 * x * x / beta, ax - 0.5 * beta)
        grad = xp.where(quad, x / beta, xp.sign(x))
    if w is not None:
        per = per * w
        grad = grad * w
    if reduction == "none":
        loss = per
        scale = 1.0
    else:
        if normalizer is not None:
            scale = 1.0 / normalizer
        elif reduction == "mean":
            scale = 1.0 / pred.size if pred.size else 0.0
        else:
            scale = 1.0
        loss = (xp.sum(per) * scale).astype(pred.dtype)
    grad = (grad * scale).astype(pred.dtype, copy=False)
    return loss, (grad, reduction)


def smooth_l1_backward(dloss, cache):
    """Gradient of :func:`smooth_l1_forward` w.r.t. ``pred`` (shape of ``pred``).

    ``d l / d x = x / beta`` inside ``|x| < beta``, ``sign(x)`` outside (``sign(x)`` everywhere for
    beta = 0, with 0 at x = 0, as torch), times weights and the reduction's factor.  The gradient
    w.r.t. ``target`` is the negative of this.
    """
    grad, reduction = cache
    xp = get_array_module(grad)
    return grad * _dloss_array(dloss, xp, grad.dtype)


# ----------------------------------------------------------------------------------------------
# binary cross-entropy with logits  (RPN objectness)
# ----------------------------------------------------------------------------------------------
def _bce_elementwise(x, t, xp):
    """Stable ``-t log s(x) - (1-t) log(1-s(x))`` = ``max(x,0) - x t + log1p(exp(-|x|))``."""
    return xp.maximum(x, 0) - x * t + xp.log1p(xp.exp(-xp.abs(x)))


def bce_with_logits_forward(logits, targets, weights=None, reduction="mean", normalizer=None):
    """Binary cross-entropy on logits: the RPN's objectness loss.

    Elementwise ``l = -t log sigmoid(x) - (1 - t) log(1 - sigmoid(x))``, computed stably as
    ``max(x, 0) - x t + log1p(exp(-|x|))`` (never ``log(0)`` nor ``exp`` overflow); the same numbers
    as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    Parameters
    ----------
    logits : float array, any shape (e.g. (A,) sampled anchors).
    targets : float array of the same shape, values in [0, 1] (0/1 labels or soft targets).
    weights : optional float array broadcastable to ``logits.shape``; multiplies each ``l``.
    reduction : ``"mean"`` (default) — ``sum w l / logits.size`` (as torch; 0 for an empty
        input); ``"sum"``; ``"none"`` — ``w l`` elementwise.
    normalizer : optional positive number; the loss is then ``sum w l / normalizer``.

    Returns ``(loss, cache)``.
    """
    where = "bce_with_logits_forward"
    check_same_shape(logits, targets, "logits", "targets", where)
    _check_reduction(reduction, where)
    normalizer = _check_normalizer(normalizer, reduction, where)
    w = _check_weights(weights, logits, where)
    xp = get_array_module(logits, targets)
    t = targets.astype(logits.dtype, copy=False)
    if t.size and reads_values(t) and not bool(xp.all((t >= 0) & (t <= 1))):
        raise ValueError(f"{where}: targets must lie in [0, 1]")

    per = _bce_elementwise(logits, t, xp)
    grad = sigmoid(logits) - t
    if w is not None:
        per = per * w
        grad = grad * w
    if reduction == "none":
        loss = per
    else:
        if normalizer is not None:
            scale = 1.0 / normalizer
        elif reduction == "mean":
            scale = 1.0 / logits.size if logits.size else 0.0
        else:
            scale = 1.0
        loss = (xp.sum(per) * scale).astype(logits.dtype)
        grad = grad * scale
    return loss, (grad.astype(logits.dtype, copy=False), reduction)


def bce_with_logits_backward(dloss, cache):
    """Gradient of :func:`bce_with_logits_forward` w.r.t. ``logits``: ``(sigmoid(x) - t) * w``,
    times the reduction's factor and ``dloss`` (a scalar, or ``logits``-shaped for "none")."""
    grad, reduction = cache
    xp = get_array_module(grad)
    return grad * _dloss_array(dloss, xp, grad.dtype)


# ----------------------------------------------------------------------------------------------
# mask losses  (Mask R-CNN L_mask)
# ----------------------------------------------------------------------------------------------
def _check_mask_args(mask_logits, labels, mask_targets, where):
    check_array(mask_logits, "mask_logits", where, ndim=4, floating=True)
    r, k, mh, mw = mask_logits.shape
    _check_int_labels(labels, "labels", where, shape=(r,))
    check_array(mask_targets, "mask_targets", where, shape=(r, mh, mw))
    if not (np.issubdtype(mask_targets.dtype, np.floating) or mask_targets.dtype == np.bool_
            or np.issubdtype(mask_targets.dtype, np.integer)):
        raise TypeError(f"{where}: mask_targets must be a float, bool or integer array, "
                        f"got {mask_targets.dtype}")
    xp = get_array_module(mask_logits, labels, mask_targets)
    if r and reads_values(labels) and not bool(xp.all((labels >= 0) & (labels < k))):
        raise ValueError(f"{where}: labels must lie in [0, K) = [0, {k}) (they index the channels of "
                         f"mask_logits), got values in [{int(labels.min())}, {int(labels.max())}]")
    t = mask_targets.astype(mask_logits.dtype, copy=False)
    if t.size and reads_values(t) and not bool(xp.all((t >= 0) & (t <= 1))):
        raise ValueError(f"{where}: mask_targets must lie in [0, 1]")
    return xp, t


def mask_loss_forward(mask_logits, labels, mask_targets):
    """Mask R-CNN's mask loss ``L_mask``: per-pixel sigmoid BCE on the ground-truth class's channel.

    For RoI ``r`` only channel ``labels[r]`` of its K predicted masks enters the loss; the other
    K-1 channels receive exactly zero gradient, so classes do not compete for pixels (the
    classification branch decides the class).  The loss is the mean over all ``R * M * M``
    pixels::

        L = 1/(R M M) sum_{r,i,j} bce(mask_logits[r, labels[r], i, j], mask_targets[r, i, j])

    Class-index convention: ``labels`` index the channels of ``mask_logits`` directly.  With a
    head that has one channel per class including background (channel 0, as in torchvision), pass
    the foreground class ids 1..K-1; with a head that has only foreground channels, the caller
    maps class ``c`` to ``c - 1``.  Only positive RoIs should be passed (the paper: ``L_mask`` is
    defined on positive RoIs only).

    Parameters
    ----------
    mask_logits : (R, K, M, M) float array (non-square (R, K, H, W) works the same).
    labels : (R,) integer array in ``[0, K)``.
    mask_targets : (R, M, M) array with values in [0, 1] (binary masks, or soft targets).

    Returns ``(loss, cache)``: a 0-d array; ``R = 0`` gives 0 (and a zero/empty gradient).
    """
    where = "mask_loss_forward"
    xp, t = _check_mask_args(mask_logits, labels, mask_targets, where)
    r, k, mh, mw = mask_logits.shape
    rows = xp.arange(r)
    x = mask_logits[rows, labels]                       # (R, M, M) gathered GT-class channel
    n = r * mh * mw
    scale = 1.0 / n if n else 0.0
    loss = (xp.sum(_bce_elementwise(x, t, xp)) * scale).astype(mask_logits.dtype)
    g = ((sigmoid(x) - t) * scale).astype(mask_logits.dtype, copy=False)
    return loss, (g, labels, mask_logits.shape)


def mask_loss_backward(dloss, cache):
    """Gradient of :func:`mask_loss_forward` w.r.t. ``mask_logits``: (R, K, M, M).

    ``(sigmoid(x) - t) / (R M M)`` on channel ``labels[r]`` of RoI ``r``, exactly 0 elsewhere.
    """
    g, labels, shape = cache
    xp = get_array_module(g)
    d = xp.zeros(shape, dtype=g.dtype)
    d[xp.arange(shape[0]), labels] = g * _dloss_array(dloss, xp, g.dtype)
    return d


def mask_loss_softmax_forward(mask_logits, labels, mask_targets):
    """The multinomial alternative to ``L_mask`` (Mask R-CNN, Table 2(b)): softmax across classes.

    Each pixel of RoI ``r`` is a K-way classification over the channels of ``mask_logits[r]``.
    Channel 0 is **background**.  The target distribution at pixel (i, j) with ``t =
    mask_targets[r, i, j]`` puts mass ``t`` on class ``labels[r]`` and ``1 - t`` on class 0: for a
    binary mask, the target class is ``labels[r]`` inside the mask and 0 (background) outside.
    (If ``labels[r] == 0`` every pixel's target is background.)  The loss is the cross-entropy
    averaged over all ``R * M * M`` pixels::

        L = -1/(R M M) sum_{r,i,j} [ t log p_{labels[r]} + (1 - t) log p_0 ],
        p = softmax(mask_logits[r, :, i, j])

    which for 0/1 targets equals ``torch.nn.functional.cross_entropy`` with per-pixel integer
    targets.  Unlike :func:`mask_loss_forward`, every channel gets a gradient: raising one class's
    probability at a pixel lowers all the others' — classes compete.

    Shapes as in :func:`mask_loss_forward` (K >= 2 is needed for a non-trivial softmax; K = 1 gives
    a zero loss).  Returns ``(loss, cache)``; ``R = 0`` gives 0.
    """
    where = "mask_loss_softmax_forward"
    xp, t = _check_mask_args(mask_logits, labels, mask_targets, where)
    r, k, mh, mw = mask_logits.shape
    logp = log_softmax(mask_logits, axis=1)             # (R, K, M, M)
    rows = xp.arange(r)
    lp_fg = logp[rows, labels]                          # (R, M, M)
    lp_bg = logp[:, 0]
    n = r * mh * mw
    scale = 1.0 / n if n else 0.0
    loss = (-xp.sum(t * lp_fg + (1 - t) * lp_bg) * scale).astype(mask_logits.dtype)
    return loss, (xp.exp(logp), t, labels, scale)


def mask_loss_softmax_backward(dloss, cache):
    """Gradient of :func:`mask_loss_softmax_forward` w.r.t. ``mask_logits``: (R, K, M, M).

    Per pixel ``softmax(x) - q`` with ``q`` the target distribution (``t`` on ``labels[r]``,
    ``1 - t`` on class 0), divided by ``R M M``.
    """
    probs, t, labels, scale = cache
    xp = get_array_module(probs)
    r = probs.shape[0]
    g = probs.copy()
    g[:, 0] -= 1 - t
    g[xp.arange(r), labels] -= t          # (labels == 0 is fine: the two updates add up to 1)
    return g * (scale * _dloss_array(dloss, xp, probs.dtype))
