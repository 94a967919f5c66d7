import numpy as np
import pytest

from mrcnn_ref.gradcheck import check_op_gradients, numerical_gradient, numerical_gradient_sampled, rel_error


def test_numerical_gradient_of_a_known_function():
    x = np.array([0.3, -1.2, 2.0])
    g = numerical_gradient(lambda: float(np.sum(np.sin(x) * x ** 2)), x)
    exact = np.cos(x) * x ** 2 + 2 * x * np.sin(x)
    assert rel_error(g, exact) < 1e-9
    np.testing.assert_array_equal(x, [0.3, -1.2, 2.0])  # restored


def test_sampled_matches_full():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5))
    f = lambda: float(np.sum(np.tanh(x) ** 2))
    full = numerical_gradient(f, x)
    idx, vals = numerical_gradient_sampled(f, x, num_samples=7, rng=0)
    assert len(idx) == 7
    np.testing.assert_allclose(vals, full.reshape(-1)[idx], rtol=1e-12)


def test_rel_error_properties():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.ones(3), -np.ones(3)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        rel_error(np.ones(3), np.ones(4))


def _square_forward(x, w):
    return x * x * w, (x, w)


def _square_backward(dout, cache):
    x, w = cache
    return 2 * x * w * dout, x * x * dout


def _wrong_backward(dout, cache):
    x, w = cache
    return x * w * dout, x * x * dout


def test_check_op_gradients_accepts_right_and_rejects_wrong_backward():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    errs = check_op_gradients(_square_forward, _square_backward, (x, w), wrt=(0, 1))
    assert max(errs.values()) < 1e-8
    errs = check_op_gradients(_square_forward, _wrong_backward, (x, w), wrt=(0,))
    assert errs[0] > 1e-2


def test_float32_is_refused():
    x = np.ones(3, dtype=np.float32)
    with pytest.raises(TypeError, match="float64"):
        numerical_gradient(lambda: float(x.sum()), x)
