import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.pooling import max_pool2d_backward, max_pool2d_forward


@st.composite
def pool_cases(draw):
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 7))
    w = draw(st.integers(max(1, kw - 2 * pw), 7))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    # distinct values 1 apart (plus jitter): no ties, so finite differences never cross a kink
    x = (rng.permutation(n * c * h * w) + rng.uniform(0, 0.5, n * c * h * w)).reshape(n, c, h, w)
    return x, (kh, kw), stride, (ph, pw), seed


def test_hand_computed():
    x = np.array([[[[1.0, 5.0, 2.0, 0.0],
                    [3.0, 4.0, 8.0, 1.0],
                    [0.0, 2.0, 6.0, 7.0],
                    [9.0, 1.0, 6.0, 7.0]]]])
    out, cache = max_pool2d_forward(x, 2)
    np.testing.assert_array_equal(out[0, 0], [[5.0, 8.0], [9.0, 7.0]])
    dx = max_pool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), cache)
    # tie 7/7 in the last window: the first in row-major order (row 2, col 3) wins
    np.testing.assert_array_equal(dx[0, 0], [[0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 4], [3, 0, 0, 0]])


def test_overlapping_windows_accumulate():
    x = np.array([[[[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]]]])
    out, cache = max_pool2d_forward(x, 2, stride=1)
    np.testing.assert_array_equal(out[0, 0], [[9, 9], [9, 9]])
    dx = max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    assert dx[0, 0, 1, 1] == 4.0 and dx.sum() == 4.0


def test_padding_is_minus_infinity():
    x = -np.ones((1, 1, 2, 2))
    out, _ = max_pool2d_forward(x, 3, stride=1, padding=1)
    np.testing.assert_array_equal(out, -np.ones((1, 1, 2, 2)))


@given(pool_cases())
def test_gradcheck(case):
    x, k, s, p, seed = case
    errs = check_op_gradients(max_pool2d_forward, max_pool2d_backward, [x, k, s, p], seed=seed + 1)
    assert errs[0] <= 1e-6, errs


@given(pool_cases())
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    x, k, s, p, seed = case
    x = np.round(x)                       # integer values: ties do happen (first max must win)
    out, cache = max_pool2d_forward(x, k, s, p)
    dout = np.random.default_rng(seed).standard_normal(out.shape)
    tx = torch.tensor(x, requires_grad=True)
    to = torch.nn.functional.max_pool2d(tx, k, s, p)
    to.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, to.detach().numpy())
    np.testing.assert_allclose(max_pool2d_backward(dout, cache), tx.grad.numpy(), rtol=0, atol=1e-10)


def test_dtype_and_errors():
    out, cache = max_pool2d_forward(np.ones((1, 1, 4, 4), np.float32), 2)
    assert out.dtype == np.float32 and max_pool2d_backward(out, cache).dtype == np.float32
    with pytest.raises(ValueError, match="max_pool2d_forward: padding .* at most half"):
        max_pool2d_forward(np.ones((1, 1, 4, 4)), 2, padding=2)
    with pytest.raises(ValueError, match="max_pool2d_forward: x must have 4 dimensions"):
        max_pool2d_forward(np.ones((1, 4, 4)), 2)
    with pytest.raises(ValueError, match="max_pool2d_forward: kernel .* larger"):
        max_pool2d_forward(np.ones((1, 1, 2, 2)), 3)
    with pytest.raises(TypeError, match="max_pool2d_forward: x must be a floating-point"):
        max_pool2d_forward(np.ones((1, 1, 4, 4), int), 2)
