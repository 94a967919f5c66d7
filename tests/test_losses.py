"""Tests for mrcnn_ref.ops.losses: gradient checks, torch cross-checks, hand values, stability,
input validation and the "non-target mask channels get exactly zero gradient" property.

Arrays are created with NumPy and moved to the default backend's module ``xp`` (NumPy, or CuPy with
MRCNN_REF_BACKEND=cupy), so the same tests exercise both backends.
"""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.backend import asnumpy, get_backend
from mrcnn_ref.gradcheck import check_op_gradients, rel_error
from mrcnn_ref.ops.losses import (
    bce_with_logits_backward,
    bce_with_logits_forward,
    log_softmax,
    mask_loss_backward,
    mask_loss_forward,
    mask_loss_softmax_backward,
    mask_loss_softmax_forward,
    sigmoid,
    smooth_l1_backward,
    smooth_l1_forward,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)

TOL = 1e-6
xp = get_backend()  # numpy, or cupy with MRCNN_REF_BACKEND=cupy (module-level: hypothesis-friendly)
seeds = st.integers(0, 2**32 - 1)
reductions = st.sampled_from(["mean", "sum", "none"])


def _rng(seed):
    return np.random.default_rng(seed)


def _ce_inputs(seed, n, k, with_ignore=True, scale=1.5):
    # moderate logits: a nearly saturated softmax has a tiny loss computed with absolute round-off
    # ~1e-16, which centered differences (h = 1e-6) turn into a large *relative* gradient error even
    # though the analytic gradient is right (extreme logits are tested separately)
    rng = _rng(seed)
    logits = rng.standard_normal((n, k)) * scale
    labels = rng.integers(0, k, size=n)
    if with_ignore and n:
        labels[rng.random(n) < 0.3] = -1
    return logits, labels


def _away_from_beta(x, beta, gap=1e-3):
    """Move entries of x whose |x| is within gap of beta (the smooth-L1 kink) off it."""
    ax = np.abs(x)
    near = np.abs(ax - beta) < gap
    x = x.copy()
    x[near] = np.sign(x[near] + (x[near] == 0)) * (beta + 3 * gap)
    if beta == 0:  # L1 kink at 0
        small = np.abs(x) < gap
        x[small] = 3 * gap
    return x


def _mask_inputs(seed, r, k, m, soft=False):
    rng = _rng(seed)
    logits = rng.standard_normal((r, k, m, m)) * 2
    labels = rng.integers(0, k, size=r)
    targets = rng.random((r, m, m)) if soft else (rng.random((r, m, m)) > 0.5).astype(np.float64)
    return logits, labels, targets


# ---------------------------------------------------------------------------------------------
# helpers: sigmoid / log_softmax
# ---------------------------------------------------------------------------------------------
def test_sigmoid_and_log_softmax_hand_values():
    x = xp.asarray([-1000.0, -2.0, 0.0, 2.0, 1000.0])
    s = asnumpy(sigmoid(x))
    np.testing.assert_allclose(s, [0.0, 1 / (1 + math.e ** 2), 0.5, 1 / (1 + math.e ** -2), 1.0], rtol=1e-15)
    ls = asnumpy(log_softmax(xp.asarray([[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0, 0.0]]), axis=1))
    np.testing.assert_allclose(ls[0], -math.log(4), rtol=1e-15)
    assert np.isfinite(ls).all() and ls[1, 0] == pytest.approx(-2 * math.exp(-1000) or 0.0, abs=1e-300)
    assert ls[1, 2] == pytest.approx(-2000.0)


# ---------------------------------------------------------------------------------------------
# softmax cross-entropy
# ---------------------------------------------------------------------------------------------
@given(seed=seeds, n=st.integers(1, 6), k=st.integers(2, 5), reduction=reductions,
       use_w=st.booleans(), use_norm=st.booleans())
def test_softmax_ce_gradcheck(seed, n, k, reduction, use_w, use_norm):
    logits, labels = _ce_inputs(seed, n, k)
    kwargs = {"reduction": reduction}
    if use_w:
        kwargs["weights"] = xp.asarray(_rng(seed + 1).random(n) + 0.1)
    if use_norm and reduction != "none":
        kwargs["normalizer"] = 3.5
    err = check_op_gradients(softmax_cross_entropy_forward, softmax_cross_entropy_backward,
                             [xp.asarray(logits), xp.asarray(labels)], kwargs=kwargs, seed=seed % 1000)
    assert err[0] <= TOL


def test_softmax_ce_hand_values():
    # uniform logits: -log(1/K) per row
    loss, _ = softmax_cross_entropy_forward(xp.zeros((3, 4)), xp.asarray([0, 1, 3]))
    assert float(loss) == pytest.approx(math.log(4), rel=1e-15)
    # one row, logits [0, log 3] label 1: p = 3/4
    loss, cache = softmax_cross_entropy_forward(xp.asarray([[0.0, math.log(3.0)]]), xp.asarray([1]))
    assert float(loss) == pytest.approx(-math.log(0.75), rel=1e-14)
    np.testing.assert_allclose(asnumpy(softmax_cross_entropy_backward(1.0, cache)), [[0.25, -0.25]],
                               rtol=1e-14)
    # weights: mean is sum(w l) / sum(w)
    logits = xp.asarray([[0.0, 0.0], [0.0, math.log(3.0)]])
    loss, _ = softmax_cross_entropy_forward(logits, xp.asarray([0, 1]), weights=xp.asarray([1.0, 3.0]))
    assert float(loss) == pytest.approx((math.log(2) + 3 * -math.log(0.75)) / 4, rel=1e-14)


def test_softmax_ce_ignore_index():
    rng = _rng(0)
    logits = xp.asarray(rng.standard_normal((5, 3)))
    labels = xp.asarray([2, -1, 0, -1, 1])
    loss, cache = softmax_cross_entropy_forward(logits, labels)
    g = asnumpy(softmax_cross_entropy_backward(1.0, cache))
    assert (g[[1, 3]] == 0).all()
    keep = xp.asarray([0, 2, 4])
    loss2, _ = softmax_cross_entropy_forward(logits[keep], labels[keep])
    assert float(loss) == pytest.approx(float(loss2), rel=1e-14)
    # all rows ignored, and no rows at all: 0, no NaN
    loss, cache = softmax_cross_entropy_forward(logits, xp.full((5,), -1))
    assert float(loss) == 0.0
    assert (asnumpy(softmax_cross_entropy_backward(1.0, cache)) == 0).all()
    loss, cache = softmax_cross_entropy_forward(xp.zeros((0, 3)), xp.zeros((0,), dtype=xp.int64))
    assert float(loss) == 0.0 and softmax_cross_entropy_backward(1.0, cache).shape == (0, 3)
    # a custom ignore_index
    loss, _ = softmax_cross_entropy_forward(logits, xp.asarray([2, 7, 0, 7, 1]), ignore_index=7)
    assert float(loss) == pytest.approx(float(loss2), rel=1e-14)


def test_softmax_ce_extreme_logits():
    logits = xp.asarray([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]])
    labels = xp.asarray([1, 2])
    loss, cache = softmax_cross_entropy_forward(logits, labels, reduction="none")
    g = asnumpy(softmax_cross_entropy_backward(xp.ones(2), cache))
    np.testing.assert_allclose(asnumpy(loss), [2000.0, math.log(2)], rtol=1e-12)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, [[1, -1, 0], [0, 0.5, -0.5]], atol=1e-15)


def test_softmax_ce_float32_keeps_dtype():
    logits = xp.asarray(_rng(1).standard_normal((4, 3)), dtype=xp.float32)
    loss, cache = softmax_cross_entropy_forward(logits, xp.asarray([0, 1, 2, 0]))
    assert loss.dtype == xp.float32
    assert softmax_cross_entropy_backward(1.0, cache).dtype == xp.float32


def test_softmax_ce_bad_inputs():
    logits = xp.zeros((3, 4))
    f = softmax_cross_entropy_forward
    with pytest.raises(ValueError, match="softmax_cross_entropy_forward: labels must lie in"):
        f(logits, xp.asarray([0, 4, 1]))
    with pytest.raises(ValueError, match="labels must lie in"):
        f(logits, xp.asarray([0, -2, 1]))
    with pytest.raises(TypeError, match="labels must be an integer array"):
        f(logits, xp.asarray([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(3\)"):
        f(logits, xp.asarray([0, 1]))
    with pytest.raises(ValueError, match="logits must have 2 dimensions"):
        f(xp.zeros(3), xp.asarray([0, 1, 2]))
    with pytest.raises(TypeError, match="logits must be a floating-point array"):
        f(xp.zeros((3, 4), dtype=xp.int64), xp.asarray([0, 1, 2]))
    with pytest.raises(TypeError, match="logits must be a NumPy/CuPy array"):
        f([[0.0, 1.0]], xp.asarray([0]))
    with pytest.raises(ValueError, match="reduction must be one of"):
        f(logits, xp.asarray([0, 1, 2]), reduction="avg")
    with pytest.raises(ValueError, match=r"weights must have shape \(3\)"):
        f(logits, xp.asarray([0, 1, 2]), weights=xp.ones(4))
    with pytest.raises(ValueError, match="normalizer must be a positive"):
        f(logits, xp.asarray([0, 1, 2]), normalizer=0)
    with pytest.raises(ValueError, match="normalizer cannot be combined"):
        f(logits, xp.asarray([0, 1, 2]), reduction="none", normalizer=2.0)


# ---------------------------------------------------------------------------------------------
# smooth L1
# ---------------------------------------------------------------------------------------------
@given(seed=seeds, shape=st.sampled_from([(1,), (3, 4), (5, 4), (2, 3, 2)]),
       beta=st.sampled_from([0.0, 1.0 / 9, 0.5, 1.0, 2.0]), reduction=reductions,
       use_w=st.booleans(), use_norm=st.booleans())
def test_smooth_l1_gradcheck(seed, shape, beta, reduction, use_w, use_norm):
    rng = _rng(seed)
    target = rng.standard_normal(shape)
    diff = _away_from_beta(rng.standard_normal(shape) * 2 * max(beta, 0.3), beta)
    pred = target + diff
    # make sure the centered difference (h = 1e-6) never straddles the kink
    assert (np.abs(np.abs(pred - target) - beta) > 1e-4).all()
    kwargs = {"beta": beta, "reduction": reduction}
    if use_w:
        kwargs["weights"] = xp.asarray(rng.random(shape[-1:]))   # broadcast along rows
    if use_norm and reduction != "none":
        kwargs["normalizer"] = 7
    err = check_op_gradients(smooth_l1_forward, smooth_l1_backward,
                             [xp.asarray(pred), xp.asarray(target)], kwargs=kwargs, seed=seed % 1000)
    assert err[0] <= TOL


def test_smooth_l1_hand_values():
    pred = xp.asarray([0.5, -2.0, 0.0, 1.0])
    target = xp.zeros(4)
    loss, cache = smooth_l1_forward(pred, target, beta=1.0, reduction="none")
    np.testing.assert_allclose(asnumpy(loss), [0.125, 1.5, 0.0, 0.5], rtol=1e-15)
    np.testing.assert_allclose(asnumpy(smooth_l1_backward(xp.ones(4), cache)), [0.5, -1.0, 0.0, 1.0])
    loss, _ = smooth_l1_forward(pred, target)              # default: sum, beta=1
    assert float(loss) == pytest.approx(2.125)
    loss, _ = smooth_l1_forward(pred, target, reduction="mean")
    assert float(loss) == pytest.approx(2.125 / 4)
    loss, _ = smooth_l1_forward(pred, target, normalizer=2)
    assert float(loss) == pytest.approx(2.125 / 2)
    # beta = 0 is L1, gradient sign(x) with 0 at x = 0 (no division by zero)
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, cache = smooth_l1_forward(pred, target, beta=0, reduction="none")
        np.testing.assert_array_equal(asnumpy(loss), [0.5, 2.0, 0.0, 1.0])
        np.testing.assert_array_equal(asnumpy(smooth_l1_backward(xp.ones(4), cache)), [1, -1, 0, 1])
    # beta = 0.5: 0.5 x^2 / beta inside, |x| - beta / 2 outside
    loss, _ = smooth_l1_forward(pred, target, beta=0.5, reduction="none")
    np.testing.assert_allclose(asnumpy(loss), [0.25, 1.75, 0.0, 0.75], rtol=1e-15)
    # weights (N, 1) broadcast over the 4 coordinates
    loss, cache = smooth_l1_forward(xp.ones((2, 4)) * 3, xp.zeros((2, 4)), weights=xp.asarray([[1.0], [0.0]]))
    assert float(loss) == pytest.approx(4 * 2.5)
    np.testing.assert_array_equal(asnumpy(smooth_l1_backward(1.0, cache))[1], 0)


def test_smooth_l1_bad_inputs():
    f = smooth_l1_forward
    with pytest.raises(ValueError, match="smooth_l1_forward: pred and target must have the same shape"):
        f(xp.zeros((2, 4)), xp.zeros((4, 2)))
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        f(xp.zeros(2), xp.zeros(2), beta=-1.0)
    with pytest.raises(TypeError, match="beta must be a number"):
        f(xp.zeros(2), xp.zeros(2), beta="1")
    with pytest.raises(TypeError, match="pred must be a floating-point array"):
        f(xp.zeros(2, dtype=xp.int32), xp.zeros(2))
    with pytest.raises(ValueError, match="weights must have a shape broadcastable"):
        f(xp.zeros((2, 4)), xp.zeros((2, 4)), weights=xp.ones(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        f(xp.zeros(2), xp.zeros(2), reduction="max")


# ---------------------------------------------------------------------------------------------
# BCE with logits
# ---------------------------------------------------------------------------------------------
@given(seed=seeds, shape=st.sampled_from([(1,), (7,), (3, 4), (2, 2, 3)]), reduction=reductions,
       soft=st.booleans(), use_w=st.booleans(), use_norm=st.booleans())
def test_bce_gradcheck(seed, shape, reduction, soft, use_w, use_norm):
    rng = _rng(seed)
    logits = rng.standard_normal(shape) * 4
    targets = rng.random(shape) if soft else (rng.random(shape) > 0.5).astype(np.float64)
    kwargs = {"reduction": reduction}
    if use_w:
        kwargs["weights"] = xp.asarray(rng.random(shape))
    if use_norm and reduction != "none":
        kwargs["normalizer"] = 256
    err = check_op_gradients(bce_with_logits_forward, bce_with_logits_backward,
                             [xp.asarray(logits), xp.asarray(targets)], kwargs=kwargs, seed=seed % 1000)
    assert err[0] <= TOL


def test_bce_hand_values():
    # logit 0: -log(1/2) = log 2 for either target; gradient sigmoid(0) - t
    loss, cache = bce_with_logits_forward(xp.zeros(2), xp.asarray([0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(asnumpy(loss), [math.log(2)] * 2, rtol=1e-15)
    np.testing.assert_allclose(asnumpy(bce_with_logits_backward(xp.ones(2), cache)), [0.5, -0.5])
    # x = log 3: sigmoid = 3/4
    loss, cache = bce_with_logits_forward(xp.asarray([math.log(3)]), xp.asarray([1.0]))
    assert float(loss) == pytest.approx(-math.log(0.75), rel=1e-14)
    assert float(bce_with_logits_backward(1.0, cache)[0]) == pytest.approx(-0.25, rel=1e-14)
    # sum / normalizer
    loss, _ = bce_with_logits_forward(xp.zeros(4), xp.ones(4), normalizer=8)
    assert float(loss) == pytest.approx(4 * math.log(2) / 8)
    loss, _ = bce_with_logits_forward(xp.zeros(4), xp.ones(4), reduction="sum")
    assert float(loss) == pytest.approx(4 * math.log(2))


def test_bce_extreme_logits():
    x = xp.asarray([1000.0, -1000.0, 1000.0, -1000.0])
    t = xp.asarray([0.0, 1.0, 1.0, 0.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, cache = bce_with_logits_forward(x, t, reduction="none")
        g = asnumpy(bce_with_logits_backward(xp.ones(4), cache))
    np.testing.assert_array_equal(asnumpy(loss), [1000.0, 1000.0, 0.0, 0.0])
    np.testing.assert_array_equal(g, [1.0, -1.0, 0.0, 0.0])


def test_bce_bad_inputs():
    f = bce_with_logits_forward
    with pytest.raises(ValueError, match="bce_with_logits_forward: logits and targets must have the same shape"):
        f(xp.zeros(3), xp.zeros(4))
    with pytest.raises(ValueError, match="targets must lie in"):
        f(xp.zeros(2), xp.asarray([0.0, 2.0]))
    with pytest.raises(TypeError, match="targets must be a floating-point array"):
        f(xp.zeros(2), xp.asarray([0, 1]))


# ---------------------------------------------------------------------------------------------
# mask losses
# ---------------------------------------------------------------------------------------------
@given(seed=seeds, r=st.integers(1, 3), k=st.integers(1, 4), m=st.integers(1, 4), soft=st.booleans())
def test_mask_loss_gradcheck(seed, r, k, m, soft):
    logits, labels, targets = _mask_inputs(seed, r, k, m, soft)
    err = check_op_gradients(mask_loss_forward, mask_loss_backward,
                             [xp.asarray(logits), xp.asarray(labels), xp.asarray(targets)], seed=seed % 1000)
    assert err[0] <= TOL


@given(seed=seeds, r=st.integers(1, 3), k=st.integers(2, 4), m=st.integers(1, 4), soft=st.booleans())
def test_mask_loss_softmax_gradcheck(seed, r, k, m, soft):
    logits, labels, targets = _mask_inputs(seed, r, k, m, soft)
    err = check_op_gradients(mask_loss_softmax_forward, mask_loss_softmax_backward,
                             [xp.asarray(logits), xp.asarray(labels), xp.asarray(targets)], seed=seed % 1000)
    assert err[0] <= TOL


@given(seed=seeds, r=st.integers(1, 5), k=st.integers(1, 6), m=st.integers(1, 6),
       dloss=st.floats(0.1, 10.0))
def test_mask_loss_zero_gradient_on_other_channels(seed, r, k, m, dloss):
    logits, labels, targets = _mask_inputs(seed, r, k, m, soft=True)
    _, cache = mask_loss_forward(xp.asarray(logits), xp.asarray(labels), xp.asarray(targets))
    g = asnumpy(mask_loss_backward(dloss, cache))
    other = np.ones((r, k), dtype=bool)
    other[np.arange(r), labels] = False
    assert (g[other] == 0.0).all()
    # and the target channel does get the BCE gradient
    x = logits[np.arange(r), labels]
    np.testing.assert_allclose(g[np.arange(r), labels], dloss * (1 / (1 + np.exp(-x)) - targets) / (r * m * m),
                               rtol=1e-12, atol=1e-15)


def test_mask_loss_equals_bce_on_gathered_channel():
    logits, labels, targets = _mask_inputs(3, 4, 3, 5)
    loss, _ = mask_loss_forward(xp.asarray(logits), xp.asarray(labels), xp.asarray(targets))
    ref, _ = bce_with_logits_forward(xp.asarray(logits[np.arange(4), labels]), xp.asarray(targets))
    assert float(loss) == pytest.approx(float(ref), rel=1e-14)


def test_mask_loss_hand_values_and_empty():
    loss, _ = mask_loss_forward(xp.zeros((2, 3, 4, 4)), xp.asarray([1, 2]), xp.ones((2, 4, 4)))
    assert float(loss) == pytest.approx(math.log(2), rel=1e-15)
    loss, _ = mask_loss_softmax_forward(xp.zeros((2, 3, 4, 4)), xp.asarray([1, 2]), xp.ones((2, 4, 4)))
    assert float(loss) == pytest.approx(math.log(3), rel=1e-15)
    for fwd, bwd in [(mask_loss_forward, mask_loss_backward),
                     (mask_loss_softmax_forward, mask_loss_softmax_backward)]:
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            loss, cache = fwd(xp.zeros((0, 3, 4, 4)), xp.zeros((0,), dtype=xp.int64), xp.zeros((0, 4, 4)))
            g = bwd(1.0, cache)
        assert float(loss) == 0.0 and g.shape == (0, 3, 4, 4)


def test_mask_softmax_with_two_channels_is_sigmoid_of_difference():
    # K = 2 (background, foreground): softmax CE == sigmoid BCE on x1 - x0
    logits, _, targets = _mask_inputs(5, 3, 2, 4, soft=True)
    labels = np.ones(3, dtype=np.int64)
    loss, _ = mask_loss_softmax_forward(xp.asarray(logits), xp.asarray(labels), xp.asarray(targets))
    ref, _ = bce_with_logits_forward(xp.asarray(logits[:, 1] - logits[:, 0]), xp.asarray(targets))
    assert float(loss) == pytest.approx(float(ref), rel=1e-13)


def test_mask_losses_extreme_logits():
    logits = np.zeros((2, 3, 2, 2))
    logits[0, 1] = 1000.0
    logits[1, 2] = -1000.0
    logits[:, 0, 0, 0] = -1000.0
    labels = xp.asarray([1, 2])
    targets = xp.asarray(np.array([[[1, 0], [1, 0]], [[0, 1], [0, 1]]], dtype=np.float64))
    for fwd, bwd in [(mask_loss_forward, mask_loss_backward),
                     (mask_loss_softmax_forward, mask_loss_softmax_backward)]:
        loss, cache = fwd(xp.asarray(logits), labels, targets)
        g = asnumpy(bwd(1.0, cache))
        assert np.isfinite(float(loss)) and np.isfinite(g).all()
    loss, _ = mask_loss_forward(xp.asarray(logits), labels, targets)
    assert float(loss) == pytest.approx((2 * 1000.0 + 2 * 1000.0) / 8)


def test_mask_loss_bad_inputs():
    logits = xp.zeros((2, 3, 4, 4))
    for f in (mask_loss_forward, mask_loss_softmax_forward):
        name = f.__name__
        with pytest.raises(ValueError, match=rf"{name}: labels must lie in \[0, K\) = \[0, 3\)"):
            f(logits, xp.asarray([1, 3]), xp.zeros((2, 4, 4)))
        with pytest.raises(ValueError, match="labels must lie in"):
            f(logits, xp.asarray([-1, 0]), xp.zeros((2, 4, 4)))
        with pytest.raises(TypeError, match="labels must be an integer array"):
            f(logits, xp.asarray([1.0, 2.0]), xp.zeros((2, 4, 4)))
        with pytest.raises(ValueError, match=r"mask_targets must have shape \(2, 4, 4\)"):
            f(logits, xp.asarray([1, 2]), xp.zeros((2, 5, 5)))
        with pytest.raises(ValueError, match=r"labels must have shape \(2\)"):
            f(logits, xp.asarray([1, 2, 0]), xp.zeros((2, 4, 4)))
        with pytest.raises(ValueError, match="mask_logits must have 4 dimensions"):
            f(xp.zeros((2, 3, 4)), xp.asarray([1, 2]), xp.zeros((2, 4, 4)))
        with pytest.raises(ValueError, match=r"mask_targets must lie in \[0, 1\]"):
            f(logits, xp.asarray([1, 2]), xp.full((2, 4, 4), 2.0))
    # boolean masks are accepted
    loss, _ = mask_loss_forward(logits, xp.asarray([1, 2]), xp.ones((2, 4, 4), dtype=bool))
    assert float(loss) == pytest.approx(math.log(2))


def test_gradcheck_catches_a_wrong_backward():
    """The gradient checks above can fail: a backward missing the 1/(R M M) factor is caught."""
    logits, labels, targets = _mask_inputs(0, 2, 3, 3)

    def wrong_backward(dloss, cache):
        return mask_loss_backward(dloss, cache) * (2 * 3 * 3)

    err = check_op_gradients(mask_loss_forward, wrong_backward, [logits, labels, targets])
    assert err[0] > 0.5


# ---------------------------------------------------------------------------------------------
# torch cross-checks (float64, forward and backward to 1e-10)
# ---------------------------------------------------------------------------------------------
def _t(a, grad=False):
    torch = pytest.importorskip("torch")
    return torch.tensor(np.asarray(asnumpy(a)), requires_grad=grad)


def _close(a, b):
    a = np.asarray(asnumpy(a), dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@given(seed=seeds, n=st.integers(1, 8), k=st.integers(2, 6), reduction=reductions, use_w=st.booleans())
def test_softmax_ce_matches_torch(seed, n, k, reduction, use_w):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, labels = _ce_inputs(seed, n, k, scale=4)
    if reduction == "mean" and (labels == -1).all():
        labels[0] = 0  # torch returns nan for an all-ignored mean; ours returns 0 (tested above)
    class_w = _rng(seed + 7).random(k) + 0.1 if use_w else None
    row_w = None if class_w is None else xp.asarray(class_w[np.where(labels >= 0, labels, 0)])
    loss, cache = softmax_cross_entropy_forward(xp.asarray(logits), xp.asarray(labels), weights=row_w,
                                                reduction=reduction)
    tx = _t(logits, grad=True)
    ref = F.cross_entropy(tx, torch.tensor(labels), weight=None if class_w is None else torch.tensor(class_w),
                          ignore_index=-1, reduction=reduction)
    _close(loss, ref.detach().numpy())
    dl = _rng(seed + 3).standard_normal(ref.shape)
    ref.backward(torch.tensor(dl, dtype=torch.float64))
    _close(softmax_cross_entropy_backward(xp.asarray(dl), cache), tx.grad.numpy())


@given(seed=seeds, shape=st.sampled_from([(1,), (6, 4), (2, 3, 4)]),
       beta=st.sampled_from([0.0, 1.0 / 9, 0.5, 1.0, 3.0]), reduction=reductions)
def test_smooth_l1_matches_torch(seed, shape, beta, reduction):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng(seed)
    pred, target = rng.standard_normal(shape) * 2, rng.standard_normal(shape)
    pred[..., 0] = target[..., 0]          # exercise x = 0 (torch's L1 subgradient is 0 there)
    loss, cache = smooth_l1_forward(xp.asarray(pred), xp.asarray(target), beta=beta, reduction=reduction)
    tp = _t(pred, grad=True)
    ref = F.smooth_l1_loss(tp, torch.tensor(target), beta=beta, reduction=reduction)
    _close(loss, ref.detach().numpy())
    dl = rng.standard_normal(ref.shape)
    ref.backward(torch.tensor(dl, dtype=torch.float64))
    _close(smooth_l1_backward(xp.asarray(dl), cache), tp.grad.numpy())


@given(seed=seeds, shape=st.sampled_from([(1,), (9,), (3, 5)]), reduction=reductions,
       soft=st.booleans(), use_w=st.booleans(), big=st.booleans())
def test_bce_matches_torch(seed, shape, reduction, soft, use_w, big):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = _rng(seed)
    logits = rng.standard_normal(shape) * (300 if big else 3)
    targets = rng.random(shape) if soft else (rng.random(shape) > 0.5).astype(np.float64)
    w = rng.random(shape) if use_w else None
    loss, cache = bce_with_logits_forward(xp.asarray(logits), xp.asarray(targets),
                                          weights=None if w is None else xp.asarray(w), reduction=reduction)
    tx = _t(logits, grad=True)
    ref = F.binary_cross_entropy_with_logits(tx, torch.tensor(targets),
                                             weight=None if w is None else torch.tensor(w), reduction=reduction)
    _close(loss, ref.detach().numpy())
    dl = rng.standard_normal(ref.shape)
    ref.backward(torch.tensor(dl, dtype=torch.float64))
    _close(bce_with_logits_backward(xp.asarray(dl), cache), tx.grad.numpy())


@given(seed=seeds, r=st.integers(0, 4), k=st.integers(2, 5), m=st.integers(1, 5), soft=st.booleans())
def test_mask_losses_match_torch(seed, r, k, m, soft):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits, labels, targets = _mask_inputs(seed, r, k, m, soft)
    args = (xp.asarray(logits), xp.asarray(labels), xp.asarray(targets))
    dl = float(_rng(seed + 1).standard_normal())
    idx = torch.arange(r)

    # sigmoid mask loss == BCE with logits on the gathered ground-truth channel (mean over R*M*M)
    loss, cache = mask_loss_forward(*args)
    tx = _t(logits, grad=True)
    if r:
        ref = F.binary_cross_entropy_with_logits(tx[idx, torch.tensor(labels)], torch.tensor(targets))
        ref.backward(torch.tensor(dl, dtype=torch.float64))
        _close(loss, ref.detach().numpy())
        _close(mask_loss_backward(dl, cache), tx.grad.numpy())
    else:
        assert float(loss) == 0.0

    # softmax mask loss == cross-entropy with per-pixel targets (class labels[r] inside, 0 outside);
    # soft targets: cross-entropy with class-probability targets
    loss, cache = mask_loss_softmax_forward(*args)
    tx = _t(logits, grad=True)
    if r:
        if soft:
            q = np.zeros_like(logits)
            q[:, 0] += 1 - targets
            q[np.arange(r), labels] += targets
            ref = F.cross_entropy(tx, torch.tensor(q))
        else:
            pix = np.where(targets > 0.5, labels[:, None, None], 0)
            ref = F.cross_entropy(tx, torch.tensor(pix))
        ref.backward(torch.tensor(dl, dtype=torch.float64))
        _close(loss, ref.detach().numpy())
        _close(mask_loss_softmax_backward(dl, cache), tx.grad.numpy())
    else:
        assert float(loss) == 0.0
