import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.upsample import (nearest_source_index, upsample_nearest2d_backward,
                                    upsample_nearest2d_forward)

small = st.integers(1, 5)


def test_hand_computed_scale():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    out, cache = upsample_nearest2d_forward(x)
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    dout = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(upsample_nearest2d_backward(dout, cache)[0, 0],
                                  [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7], [8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


def test_hand_computed_size():
    # 3 -> 5: floor(i * 3 / 5) = 0, 0, 1, 1, 2
    np.testing.assert_array_equal(nearest_source_index(3, 5), [0, 0, 1, 1, 2])
    x = np.array([[[[1.0, 2.0, 3.0]]]])
    out, cache = upsample_nearest2d_forward(x, size=(2, 5))
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2, 3]] * 2)
    dx = upsample_nearest2d_backward(np.ones((1, 1, 2, 5)), cache)
    np.testing.assert_array_equal(dx[0, 0], [[4, 4, 2]])


@given(small, small, st.integers(1, 3), st.integers(0, 999))
def test_gradcheck_scale(h, w, s, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, h, w))
    errs = check_op_gradients(upsample_nearest2d_forward, upsample_nearest2d_backward, [x, s], seed=seed + 1)
    assert errs[0] <= 1e-6, errs


@given(small, small, st.integers(1, 9), st.integers(1, 9), st.integers(0, 999))
def test_gradcheck_size(h, w, h2, w2, seed):
    x = np.random.default_rng(seed).standard_normal((2, 2, h, w))
    errs = check_op_gradients(upsample_nearest2d_forward, upsample_nearest2d_backward, [x],
                              kwargs=dict(size=(h2, w2)), seed=seed + 1)
    assert errs[0] <= 1e-6, errs


@given(small, small, st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.booleans(),
       st.integers(0, 999))
def test_matches_torch(h, w, s, h2, w2, use_size, seed):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(seed).standard_normal((1, 2, h, w))
    kw = dict(size=(h2, w2)) if use_size else dict(scale_factor=s)
    out, cache = upsample_nearest2d_forward(x, **kw)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    tx = torch.tensor(x, requires_grad=True)
    to = torch.nn.functional.interpolate(tx, mode="nearest", **kw)
    to.backward(torch.tensor(dout))
    np.testing.assert_array_equal(out, to.detach().numpy())
    np.testing.assert_allclose(upsample_nearest2d_backward(dout, cache), tx.grad.numpy(), rtol=0, atol=1e-10)


def test_integer_ratio_size_uses_blocks_and_equals_gather():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    out, cache = upsample_nearest2d_forward(x, size=(8, 15))
    assert cache[0] == "blocks" and cache[2] == (2, 3)
    np.testing.assert_array_equal(out, x[:, :, np.arange(8)[:, None] // 2, np.arange(15)[None, :] // 3])
    dout = np.random.default_rng(1).standard_normal(out.shape)
    dx = upsample_nearest2d_backward(dout, cache)
    _, gather_cache = upsample_nearest2d_forward(x, size=(7, 15))       # not a multiple: gather path
    assert gather_cache[0] == "gather"
    np.testing.assert_allclose(dx, dout.reshape(2, 3, 4, 2, 5, 3).sum(axis=(3, 5)), rtol=0, atol=1e-14)


def test_source_index_matches_torch_exhaustively():
    torch = pytest.importorskip("torch")
    for n_in in range(1, 40):
        for n_out in range(1, 90):
            src = torch.arange(float(n_in)).reshape(1, 1, 1, n_in)
            ref = torch.nn.functional.interpolate(src, size=(1, n_out), mode="nearest")
            np.testing.assert_array_equal(nearest_source_index(n_in, n_out), ref.numpy().ravel())


def test_dtype_and_errors():
    out, cache = upsample_nearest2d_forward(np.ones((1, 1, 2, 3), np.float32), size=(3, 4))
    assert out.dtype == np.float32 and upsample_nearest2d_backward(out, cache).dtype == np.float32
    with pytest.raises(ValueError, match="upsample_nearest2d_forward: scale_factor must be > 0"):
        upsample_nearest2d_forward(np.ones((1, 1, 2, 2)), 0)
    with pytest.raises(TypeError, match="upsample_nearest2d_forward: scale_factor must be an int"):
        upsample_nearest2d_forward(np.ones((1, 1, 2, 2)), 1.5)
    with pytest.raises(ValueError, match="upsample_nearest2d_forward: x must have 4 dimensions"):
        upsample_nearest2d_forward(np.ones((2, 2)))
