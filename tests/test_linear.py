import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.linear import linear_backward, linear_forward

lead_shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple)


def _arrays(lead, fin, fout, bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(lead + (fin,))
    w = rng.standard_normal((fout, fin))
    return x, w, (rng.standard_normal(fout) if bias else None)


def test_hand_computed():
    x = np.array([[1.0, 2.0], [3.0, -1.0]])
    w = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]])
    b = np.array([0.5, 0.0, 1.0])
    out, cache = linear_forward(x, w, b)
    np.testing.assert_array_equal(out, [[1.5, 4.0, -1.0], [3.5, 5.0, 2.0]])
    dx, dw, db = linear_backward(np.ones((2, 3)), cache)
    np.testing.assert_array_equal(dx, [[3.0, 0.0], [3.0, 0.0]])
    np.testing.assert_array_equal(dw, [[4.0, 1.0]] * 3)
    np.testing.assert_array_equal(db, [2.0, 2.0, 2.0])


@given(lead_shapes, st.integers(1, 5), st.integers(1, 5), st.booleans(), st.integers(0, 999))
def test_gradcheck(lead, fin, fout, bias, seed):
    x, w, b = _arrays(lead, fin, fout, bias, seed)
    errs = check_op_gradients(linear_forward, linear_backward, [x, w, b],
                              wrt=(0, 1, 2) if bias else (0, 1), seed=seed + 1)
    assert max(errs.values()) <= 1e-6, errs


@given(lead_shapes, st.integers(1, 5), st.integers(1, 5), st.booleans(), st.integers(0, 999))
def test_matches_torch(lead, fin, fout, bias, seed):
    torch = pytest.importorskip("torch")
    x, w, b = _arrays(lead, fin, fout, bias, seed)
    out, cache = linear_forward(x, w, b)
    assert out.shape == lead + (fout,)
    dout = np.random.default_rng(seed + 1).standard_normal(out.shape)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True) if bias else None
    to = torch.nn.functional.linear(tx, tw, tb)
    to.backward(torch.tensor(dout))
    dx, dw, db = linear_backward(dout, cache)
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=0, atol=1e-10)
    if bias:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=0, atol=1e-10)
    else:
        assert db is None


def test_float32_preserved():
    x, w, b = (a.astype(np.float32) for a in _arrays((4,), 3, 2, True, 0))
    out, cache = linear_forward(x, w, b)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in linear_backward(out, cache))


def test_errors():
    with pytest.raises(ValueError, match=r"linear_forward: feature mismatch: x has in=3.*w expects 4"):
        linear_forward(np.zeros((2, 3)), np.zeros((5, 4)))
    with pytest.raises(TypeError, match="linear_forward: x and w must have the same dtype"):
        linear_forward(np.zeros((2, 3), np.float32), np.zeros((5, 3)))
    with pytest.raises(TypeError, match="linear_forward: x must be a floating-point"):
        linear_forward(np.zeros((2, 3), int), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="linear_forward: b must have shape"):
        linear_forward(np.zeros((2, 3)), np.zeros((5, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="linear_forward: w must have 2 dimensions"):
        linear_forward(np.zeros((2, 3)), np.zeros((5, 3, 1)))
