"""conv2d / conv_transpose2d: hand-computed values, a naive loop reference, gradient checks,
the transpose == conv-backward identity, PyTorch cross-checks and input validation."""
import functools

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops import conv as conv_module
from mrcnn_ref.ops.conv import (conv2d_backward, conv2d_forward, conv2d_output_size,
                                conv_transpose2d_backward, conv_transpose2d_forward, im2col)


def naive_conv2d(x, w, b, stride, padding):
    """Six nested loops, straight from the definition (independent reference)."""
    (sh, sw), (ph, pw) = stride, padding
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    xp_ = np.zeros((n, cin, h + 2 * ph, wd + 2 * pw))
    xp_[:, :, ph:ph + h, pw:pw + wd] = x
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, cout, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp_[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    if b is not None:
        out += b[None, :, None, None]
    return out


@st.composite
def conv_cases(draw, transpose=False):
    n = draw(st.integers(1, 2))
    cin = draw(st.integers(1, 3))
    cout = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    if transpose:
        ph, pw = min(ph, kh - 1), min(pw, kw - 1)
        oph, opw = draw(st.integers(0, sh - 1)), draw(st.integers(0, sw - 1))
        h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        assume((h - 1) * sh - 2 * ph + kh + oph >= 1 and (w - 1) * sw - 2 * pw + kw + opw >= 1)
    else:
        oph = opw = 0
        h = draw(st.integers(max(1, kh - 2 * ph), 7))
        w = draw(st.integers(max(1, kw - 2 * pw), 7))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return dict(n=n, cin=cin, cout=cout, k=(kh, kw), s=(sh, sw), p=(ph, pw), op=(oph, opw),
                hw=(h, w), bias=bias, seed=seed)


def _arrays(case, transpose=False):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["cin"]) + case["hw"])
    wshape = ((case["cin"], case["cout"]) if transpose else (case["cout"], case["cin"])) + case["k"]
    w = rng.standard_normal(wshape)
    b = rng.standard_normal(case["cout"]) if case["bias"] else None
    return x, w, b


def test_hand_computed_2x2_stride2():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    w = np.ones((1, 1, 2, 2))
    out, _ = conv2d_forward(x, w, np.array([0.5]), stride=2)
    # block sums: [0+1+4+5, 2+3+6+7; 8+9+12+13, 10+11+14+15] + 0.5
    np.testing.assert_array_equal(out[0, 0], [[10.5, 18.5], [42.5, 50.5]])


def test_hand_computed_padding_and_backward():
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    w = np.array([[[[0.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]]]])   # 2*x[i,j] + x[i+1,j+1]
    out, cache = conv2d_forward(x, w, None, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[2 + 4, 4], [6, 8]])
    dx, dw, db = conv2d_backward(np.ones_like(out), cache)
    assert db is None
    # x[0,0] used by out[0,0] with weight 2; x[1,1] by out[1,1] (2) and out[0,0] (1)
    np.testing.assert_array_equal(dx[0, 0], [[2, 2], [2, 3]])
    # dw[u, v] = sum of the padded input under the 2x2 output grid shifted by (u, v)
    np.testing.assert_array_equal(dw[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


def test_im2col_columns_are_the_windows():
    x = np.arange(2 * 3 * 5 * 4, dtype=float).reshape(2, 3, 5, 4)
    cols, (ho, wo) = im2col(x, 2, 3, 2, 1)
    assert (ho, wo) == (2, 2) and cols.shape == (3 * 2 * 3, 2 * 2 * 2)
    np.testing.assert_array_equal(cols[:, 1 * 4 + 1 * 2 + 1], x[1, :, 2:4, 1:4].ravel())


@given(conv_cases())
def test_conv2d_matches_naive_loops(case):
    x, w, b = _arrays(case)
    out, _ = conv2d_forward(x, w, b, case["s"], case["p"])
    np.testing.assert_allclose(out, naive_conv2d(x, w, b, case["s"], case["p"]), rtol=1e-12, atol=1e-12)
    assert out.shape[2:] == conv2d_output_size(*case["hw"], case["k"], case["s"], case["p"])


@given(conv_cases())
def test_conv2d_gradcheck(case):
    x, w, b = _arrays(case)
    wrt = (0, 1, 2) if b is not None else (0, 1)
    errs = check_op_gradients(conv2d_forward, conv2d_backward, [x, w, b, case["s"], case["p"]],
                              wrt=wrt, seed=case["seed"] + 1)
    assert max(errs.values()) <= 1e-6, errs


@given(conv_cases(transpose=True))
def test_conv_transpose2d_gradcheck(case):
    x, w, b = _arrays(case, transpose=True)
    wrt = (0, 1, 2) if b is not None else (0, 1)
    errs = check_op_gradients(conv_transpose2d_forward, conv_transpose2d_backward,
                              [x, w, b, case["s"], case["p"], case["op"]], wrt=wrt, seed=case["seed"] + 1)
    assert max(errs.values()) <= 1e-6, errs


@given(conv_cases(transpose=True))
def test_conv_transpose_is_conv_input_gradient(case):
    x, w, _ = _arrays(case, transpose=True)
    out, _ = conv_transpose2d_forward(x, w, None, case["s"], case["p"], case["op"])
    # a conv2d with weight w maps Cout -> Cin channels and an (Hout, Wout) image to x's size
    y = np.zeros((x.shape[0], w.shape[1]) + out.shape[2:])
    fwd, cache = conv2d_forward(y, w, None, case["s"], case["p"])
    assert fwd.shape == x.shape
    dx, _, _ = conv2d_backward(x, cache)
    np.testing.assert_allclose(out, dx, rtol=0, atol=1e-12)


@given(conv_cases())
def test_dx_methods_agree(case):
    """dilate + flipped-kernel convolution and col2im are two spellings of the same gradient."""
    x, w, b = _arrays(case)
    out, _ = conv2d_forward(x, w, b, case["s"], case["p"])
    dout = np.random.default_rng(case["seed"] + 1).standard_normal(out.shape)
    args = (dout, w, case["hw"], case["s"], case["p"])
    a = conv_module._input_grad_transposed(*args)
    c = conv_module._input_grad_col2im(*args)
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, conv_module._input_grad(*args), rtol=0, atol=1e-12)


@given(st.integers(1, 2), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**16))
def test_tiled_dx_agrees_with_the_general_methods(n, cin, cout, kh, kw, ho, wo, seed):
    """kernel == stride, no padding: the windows tile the input and dx is one product per pixel
    block. "auto" takes that path (checked with a spy); the numbers are those of both general
    methods and of the naive loops' transpose (conv_transpose2d = dx of conv2d)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, kh, kw))
    dout = rng.standard_normal((n, cout, ho, wo))
    args = (dout, w, (ho * kh, wo * kw), (kh, kw), (0, 0))
    tiled = conv_module._input_grad_tiled(dout, w, (ho * kh, wo * kw))
    np.testing.assert_allclose(tiled, conv_module._input_grad_transposed(*args), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tiled, conv_module._input_grad_col2im(*args), rtol=0, atol=1e-12)
    calls = []
    orig = conv_module._input_grad_tiled
    conv_module._input_grad_tiled = lambda *a: calls.append(1) or orig(*a)
    try:
        np.testing.assert_array_equal(conv_module._input_grad(*args), tiled)
        # one leftover row: the windows no longer tile, a general method is used
        conv_module._input_grad(dout, w, (ho * kh + 1, wo * kw), (kh, kw), (0, 0))
    finally:
        conv_module._input_grad_tiled = orig
    assert calls == [1]


def test_mask_head_deconvolution_takes_the_tiled_path_and_matches_loops():
    """The mask head's 2x2 stride-2 transposed convolution, float32, against the definition:
    out[n, o, 2i+u, 2j+v] = b[o] + sum_c x[n, c, i, j] w[c, o, u, v]."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4, 6)).astype(np.float32)
    w = rng.standard_normal((5, 7, 2, 2)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    out, _ = conv_transpose2d_forward(x, w, b, 2, 0)
    ref = np.zeros((3, 7, 8, 12))
    for u in range(2):
        for v in range(2):
            ref[:, :, u::2, v::2] = np.einsum("ncij,co->noij", x.astype(np.float64), w[:, :, u, v])
    ref += b[None, :, None, None]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@given(conv_cases())
def test_cached_and_rebuilt_columns_give_the_same_gradients(case):
    """CACHE_COLUMNS only trades memory for time: the backward is identical either way, and with
    it off the cache holds the padded input, not the (kh*kw times larger) column matrix."""
    x, w, b = _arrays(case)
    grads, kinds = [], []
    for flag in (True, False):
        old = conv_module.CACHE_COLUMNS
        conv_module.CACHE_COLUMNS = flag
        try:
            out, cache = conv2d_forward(x, w, b, case["s"], case["p"])
        finally:
            conv_module.CACHE_COLUMNS = old
        kinds.append(cache[0][0])
        dout = np.random.default_rng(case["seed"] + 2).standard_normal(out.shape)
        grads.append(conv2d_backward(dout, cache))
    assert kinds == ["cols", "xpad"]
    for a, c in zip(*grads):
        if a is None:
            assert c is None
        else:
            np.testing.assert_array_equal(a, c)


def _check_need_dx(case, forward, backward, transpose):
    x, w, b = _arrays(case, transpose=transpose)
    out, cache = forward(x, w, b, case["s"], case["p"], *([case["op"]] if transpose else []))
    dout = np.random.default_rng(case["seed"] + 1).standard_normal(out.shape)
    dx, dw, db = backward(dout, cache)
    none, dw2, db2 = backward(dout, cache, need_dx=False)
    assert dx is not None and dx.shape == x.shape and none is None
    np.testing.assert_array_equal(dw2, dw)
    assert (db is None and db2 is None) or np.array_equal(db2, db)


@given(conv_cases())
def test_conv2d_need_dx_false_skips_only_dx(case):
    """``need_dx=False`` returns None for dx and exactly the same dw and db."""
    _check_need_dx(case, conv2d_forward, conv2d_backward, transpose=False)


@given(conv_cases(transpose=True))
def test_conv_transpose2d_need_dx_false_skips_only_dx(case):
    _check_need_dx(case, conv_transpose2d_forward, conv_transpose2d_backward, transpose=True)


@pytest.mark.parametrize("method", ["transposed", "col2im"])
def test_each_dx_method_gradchecks(method):
    rng = np.random.default_rng(7)
    backward = functools.partial(conv2d_backward, dx_method=method)
    transposed = functools.partial(conv_transpose2d_forward, dx_method=method)
    for stride, padding, shape in [(1, 1, (2, 3, 5, 6)), (2, 1, (1, 3, 7, 6)), ((3, 2), (0, 2), (2, 3, 8, 5))]:
        x, w = rng.standard_normal(shape), rng.standard_normal((2, 3, 3, 2))
        errs = check_op_gradients(conv2d_forward, backward, [x, w, None, stride, padding], wrt=(0,))
        assert errs[0] <= 1e-6, (method, stride, padding, errs)
        xt, wt = rng.standard_normal((1, 3, 3, 4)), rng.standard_normal((3, 2, 3, 3))
        errs = check_op_gradients(transposed, conv_transpose2d_backward,
                                  [xt, wt, None, stride, padding], wrt=(0, 1))
        assert max(errs.values()) <= 1e-6, (method, stride, padding, errs)


def test_bad_dx_method():
    out, cache = conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="dx_method"):
        conv2d_backward(out, cache, dx_method="scatter")


def test_float32_preserved():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.zeros(3, np.float32)
    out, cache = conv2d_forward(x, w, b, 2, 1)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in conv2d_backward(out, cache))
    wt = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    out, cache = conv_transpose2d_forward(x, wt, b, 2, 1, 1)
    assert out.shape == (1, 3, 10, 10) and out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in conv_transpose2d_backward(out, cache))


@given(conv_cases())
def test_conv2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = _arrays(case)
    out, cache = conv2d_forward(x, w, b, case["s"], case["p"])
    dout = np.random.default_rng(case["seed"] + 1).standard_normal(out.shape)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    to = F.conv2d(tx, tw, tb, case["s"], case["p"])
    to.backward(torch.tensor(dout))
    dx, dw, db = conv2d_backward(dout, cache)
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=0, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=0, atol=1e-10)


@given(conv_cases(transpose=True))
def test_conv_transpose2d_matches_torch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b = _arrays(case, transpose=True)
    out, cache = conv_transpose2d_forward(x, w, b, case["s"], case["p"], case["op"])
    dout = np.random.default_rng(case["seed"] + 1).standard_normal(out.shape)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    to = F.conv_transpose2d(tx, tw, tb, case["s"], case["p"], case["op"])
    to.backward(torch.tensor(dout))
    dx, dw, db = conv_transpose2d_backward(dout, cache)
    np.testing.assert_allclose(out, to.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dw, tw.grad.numpy(), rtol=0, atol=1e-10)
    if b is not None:
        np.testing.assert_allclose(db, tb.grad.numpy(), rtol=0, atol=1e-10)


def test_errors():
    x = np.zeros((1, 3, 5, 5))
    with pytest.raises(ValueError, match=r"conv2d_forward: channel mismatch: x has Cin=3.*w expects 4"):
        conv2d_forward(x, np.zeros((2, 4, 3, 3)))
    with pytest.raises(ValueError, match="conv2d_forward: x must have 4 dimensions"):
        conv2d_forward(np.zeros((3, 5, 5)), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="conv2d_forward: kernel .* larger than the padded input"):
        conv2d_forward(x, np.zeros((2, 3, 7, 7)), padding=0)
    with pytest.raises(TypeError, match="conv2d_forward: x must be a floating-point"):
        conv2d_forward(np.zeros((1, 3, 5, 5), dtype=np.int64), np.zeros((2, 3, 3, 3)))
    with pytest.raises(TypeError, match="conv2d_forward: x and w must have the same dtype"):
        conv2d_forward(x.astype(np.float32), np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="conv2d_forward: b must have shape"):
        conv2d_forward(x, np.zeros((2, 3, 3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="conv2d_forward: stride must be > 0"):
        conv2d_forward(x, np.zeros((2, 3, 3, 3)), stride=0)
    with pytest.raises(ValueError, match=r"conv_transpose2d_forward: channel mismatch: x has Cin=3"):
        conv_transpose2d_forward(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="conv_transpose2d_forward: output_padding"):
        conv_transpose2d_forward(x, np.zeros((3, 2, 3, 3)), stride=2, output_padding=2)
