import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import array_shapes

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.elementwise import add_backward, add_forward


def test_hand_computed():
    out, cache = add_forward(np.array([1.0, 2.0]), np.array([0.5, -4.0]))
    np.testing.assert_array_equal(out, [1.5, -2.0])
    dout = np.array([3.0, 4.0])
    da, db = add_backward(dout, cache)
    np.testing.assert_array_equal(da, dout)
    np.testing.assert_array_equal(db, dout)
    da += 1                                      # the two gradients are independent arrays
    np.testing.assert_array_equal(db, dout)
    np.testing.assert_array_equal(dout, [3.0, 4.0])


@given(array_shapes(min_dims=1, max_dims=4, max_side=4), st.integers(0, 999))
def test_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    errs = check_op_gradients(add_forward, add_backward, [a, b], wrt=(0, 1), seed=seed + 1)
    assert max(errs.values()) <= 1e-6, errs


def test_errors():
    with pytest.raises(ValueError, match=r"add_forward: a and b must have the same shape.*\(2, 3\) and \(3, 2\)"):
        add_forward(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="add_forward: a and b must have the same dtype"):
        add_forward(np.zeros(2), np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="add_forward: b must be a floating-point"):
        add_forward(np.zeros(2), np.zeros(2, int))
