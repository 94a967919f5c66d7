import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import array_shapes

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.activations import relu_backward, relu_forward


def _away_from_zero(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.05, 0.5, x)      # keep clear of the kink (h = 1e-6)


def test_hand_computed():
    x = np.array([-2.0, -0.0, 0.0, 1e-300, 3.0])
    out, cache = relu_forward(x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 1e-300, 3.0])
    np.testing.assert_array_equal(relu_backward(np.full(5, 7.0), cache), [0, 0, 0, 7.0, 7.0])
    # a NaN stays NaN (as torch.relu), it is not hidden as 0; it is not "> 0", so no gradient
    out, cache = relu_forward(np.array([np.nan, -1.0]))
    assert np.isnan(out[0]) and out[1] == 0 and not cache.any()


@given(array_shapes(min_dims=1, max_dims=4, max_side=4), st.integers(0, 999))
def test_gradcheck(shape, seed):
    x = _away_from_zero(shape, seed)
    errs = check_op_gradients(relu_forward, relu_backward, [x], seed=seed + 1)
    assert errs[0] <= 1e-6, errs


@given(array_shapes(min_dims=1, max_dims=4, max_side=5), st.integers(0, 999))
def test_matches_torch(shape, seed):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(seed).standard_normal(shape)
    x.flat[0] = 0.0                                   # torch's gradient at 0 is 0 too
    out, cache = relu_forward(x)
    dout = np.random.default_rng(seed + 1).standard_normal(shape)
    tx = torch.tensor(x, requires_grad=True)
    to = torch.relu(tx)
    to.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, to.detach().numpy())
    np.testing.assert_array_equal(relu_backward(dout, cache), tx.grad.numpy())


def test_dtype_and_errors():
    out, cache = relu_forward(np.ones(3, np.float32))
    assert out.dtype == np.float32 and relu_backward(np.ones(3, np.float32), cache).dtype == np.float32
    with pytest.raises(TypeError, match="relu_forward: x must be a floating-point"):
        relu_forward(np.ones(3, int))
    with pytest.raises(TypeError, match="relu_forward: x must be a NumPy/CuPy array"):
        relu_forward([1.0, 2.0])
