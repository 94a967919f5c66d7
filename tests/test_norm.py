import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward,
                                group_norm_backward, group_norm_forward)


@st.composite
def gn_cases(draw):
    g = draw(st.integers(1, 3))
    c = g * draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), c, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    per_group = shape[2] * shape[3] * (c // g)
    if per_group < 3:
        # dx is dout projected away from the directions 1 and xhat within each group; with 1 or 2
        # values per group nothing is left (xhat is 0 or +-1 whatever x is) but eps effects, and
        # finite differences would measure round-off. Use >= 3 values per group.
        shape = shape[:3] + (-(-3 * shape[3] // per_group),)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2 + 1
    return x, rng.standard_normal(c), rng.standard_normal(c), g, seed


def _bn_arrays(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return (rng.standard_normal(shape), rng.standard_normal(c), rng.standard_normal(c),
            rng.standard_normal(c), rng.uniform(0.1, 2.0, c))


def test_group_norm_hand_computed():
    x = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 14.0]).reshape(1, 2, 2, 2)
    out, _ = group_norm_forward(x, np.array([1.0, 2.0]), np.array([0.0, 1.0]), 2, eps=0.0)
    # channel 0: mean 2.5, var 1.25; channel 1: mean 11, var 3
    np.testing.assert_allclose(out[0, 0].ravel(), (np.arange(1, 5) - 2.5) / np.sqrt(1.25), rtol=1e-14)
    np.testing.assert_allclose(out[0, 1].ravel(), 2 * np.array([-1, -1, -1, 3]) / np.sqrt(3) + 1, rtol=1e-14)
    out1, _ = group_norm_forward(x, np.ones(2), np.zeros(2), 1, eps=0.0)   # one group over both
    assert abs(out1.mean()) < 1e-14 and abs(out1.var() - 1) < 1e-14


@given(gn_cases())
def test_group_norm_gradcheck(case):
    x, gamma, beta, g, seed = case
    # dout must not come from the same random stream as x (dout = affine(x) would make dx ~ 0)
    errs = check_op_gradients(group_norm_forward, group_norm_backward, [x, gamma, beta, g],
                              wrt=(0, 1, 2), seed=seed + 1)
    assert max(errs.values()) <= 1e-6, errs


@given(gn_cases())
def test_group_norm_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, gamma, beta, g, seed = case
    out, cache = group_norm_forward(x, gamma, beta, g)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    to = torch.nn.functional.group_norm(tx, g, tg, tb, eps=1e-5)
    to.backward(torch.tensor(dout))
    for ours, ref in zip((out,) + group_norm_backward(dout, cache), (to.detach(), tx.grad, tg.grad, tb.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-10)


def test_frozen_bn_hand_computed():
    x = np.array([1.0, 3.0, -2.0, 0.0]).reshape(1, 2, 2, 1)
    out, cache = frozen_batch_norm_forward(x, np.array([2.0, 1.0]), np.array([0.0, 5.0]),
                                           np.array([1.0, 0.0]), np.array([4.0, 0.25]), eps=0.0)
    # ch0: (x - 1)/2*2 = x - 1 ; ch1: x/0.5 + 5
    np.testing.assert_array_equal(out.ravel(), [0.0, 2.0, 1.0, 5.0])
    dx, dgamma, dbeta = frozen_batch_norm_backward(np.ones_like(out), cache)
    np.testing.assert_array_equal(dx.ravel(), [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(dgamma, [(0 + 2) / 2, (-2 + 0) / 0.5])
    np.testing.assert_array_equal(dbeta, [2.0, 2.0])


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 999))
def test_frozen_bn_gradcheck(n, c, h, w, seed):
    args = list(_bn_arrays((n, c, h, w), seed))
    errs = check_op_gradients(frozen_batch_norm_forward, frozen_batch_norm_backward, args,
                              wrt=(0, 1, 2), seed=seed + 1)
    assert max(errs.values()) <= 1e-6, errs


@given(st.integers(1, 2), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3), st.integers(0, 999))
def test_frozen_bn_matches_torch(n, c, h, w, seed):
    torch = pytest.importorskip("torch")
    x, gamma, beta, mean, var = _bn_arrays((n, c, h, w), seed)
    out, cache = frozen_batch_norm_forward(x, gamma, beta, mean, var)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    to = torch.nn.functional.batch_norm(tx, torch.tensor(mean), torch.tensor(var), tg, tb,
                                        training=False, eps=1e-5)
    to.backward(torch.tensor(dout))
    for ours, ref in zip((out,) + frozen_batch_norm_backward(dout, cache),
                         (to.detach(), tx.grad, tg.grad, tb.grad)):
        np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=1e-10)


def test_dtype_and_errors():
    x = np.ones((1, 4, 2, 2), np.float32)
    p = np.ones(4, np.float32)
    out, cache = group_norm_forward(x, p, p, 2)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in group_norm_backward(out, cache))
    out, cache = frozen_batch_norm_forward(x, p, p, p, p)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in frozen_batch_norm_backward(out, cache))
    with pytest.raises(ValueError, match=r"group_norm_forward: num_groups=3 must divide .* C=4"):
        group_norm_forward(x, p, p, 3)
    with pytest.raises(ValueError, match="group_norm_forward: gamma must have shape"):
        group_norm_forward(x, np.ones(3, np.float32), p, 2)
    with pytest.raises(TypeError, match="group_norm_forward: gamma must have the dtype of x"):
        group_norm_forward(x, np.ones(4), p, 2)
    with pytest.raises(TypeError, match="group_norm_forward: num_groups must be an int"):
        group_norm_forward(x, p, p, 2.0)
    with pytest.raises(ValueError, match="frozen_batch_norm_forward: running_var must have shape"):
        frozen_batch_norm_forward(x, p, p, p, np.ones(2, np.float32))
