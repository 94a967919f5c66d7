"""RoIPool: hand-computed values, torchvision cross-checks, gradient checks, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.roi_pool import roi_pool, roi_pool_backward, roi_pool_forward, round_half_away

F5 = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)   # F[i, j] = 5 i + j


def test_round_half_away():
    v = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, -2.6])
    np.testing.assert_array_equal(round_half_away(v), [-3, -2, -1, 1, 2, 3, 2, -3])


def test_hand_values():
    # box [0,4]^2: start 0, end 4, size 5, 2 bins of 2.5: rows [0, 3) and [floor(2.5)=2, 5)
    # -> maxima at the bottom-right pixel of each bin: F[2,2]=12, F[2,4]=14, F[4,2]=22, F[4,4]=24
    out = roi_pool(F5, np.array([[0, 0, 0, 4, 4.0]]), 2)
    np.testing.assert_array_equal(out[0, 0], [[12, 14], [22, 24]])
    # box [0.5, 2.5]^2: round half AWAY -> start 1, end 3 -> max F[1:4, 1:4] = F[3,3] = 18
    # (NumPy's half-to-even rounding would give start 0, end 2 -> 12)
    assert roi_pool(F5, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 1)[0, 0, 0, 0] == 18
    # box entirely right of the map: all bins clipped empty -> 0
    assert roi_pool(F5, np.array([[0, 7, 0, 9, 2.0]]), 2).sum() == 0
    # spatial_scale 0.5: [2, 7] -> [1, 3.5] -> start 1, end 4 -> F[1:5, 1:5] max = 24
    assert roi_pool(F5, np.array([[0, 2, 2, 7, 7.0]]), 1, 0.5)[0, 0, 0, 0] == 24


def test_backward_hand_and_ties():
    # constant map: every bin ties; the FIRST pixel in row-major order wins
    x = np.ones((1, 1, 4, 4))
    out, cache = roi_pool_forward(x, np.array([[0, 0, 0, 3, 3.0]]), 2)
    g = roi_pool_backward(np.ones_like(out), cache)
    expect = np.zeros((4, 4))
    expect[0, 0] = expect[0, 2] = expect[2, 0] = expect[2, 2] = 1
    np.testing.assert_array_equal(g[0, 0], expect)
    # overlapping bins share an argmax: gradients add up. size 5 / 2 bins: row/col 2 is in both
    out, cache = roi_pool_forward(-F5, np.array([[0, 0, 0, 4, 4.0]]), 2)   # max at top-left of bins
    g = roi_pool_backward(np.ones_like(out), cache)
    assert g[0, 0, 2, 2] == 1 and g[0, 0, 0, 0] == 1 and g.sum() == 4


@st.composite
def pool_problem(draw, ties=False):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7))
    k = draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, c, h, w))
    if ties:
        x = np.round(x)
    xs = rng.uniform(-3 / scale, (w + 3) / scale, (k, 2))
    ys = rng.uniform(-3 / scale, (h + 3) / scale, (k, 2))
    if draw(st.booleans()):   # coordinates on half-pixels: exercises the rounding rule
        xs, ys = np.round(xs * 2 * scale) / (2 * scale), np.round(ys * 2 * scale) / (2 * scale)
    boxes = np.stack([rng.integers(0, n, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1).astype(np.float64)
    return x, boxes, (draw(st.integers(1, 4)), draw(st.integers(1, 4))), scale


@given(pool_problem(ties=True))
def test_matches_torchvision(problem):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, out_size, scale = problem
    out, cache = roi_pool_forward(x, boxes, out_size, scale)
    d = np.random.default_rng(1).standard_normal(out.shape)
    g = roi_pool_backward(d, cache)
    xt = torch.tensor(x, requires_grad=True)
    ot = tv.ops.roi_pool(xt, torch.tensor(boxes), out_size, scale)
    ot.backward(torch.tensor(d))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-10)


@given(pool_problem())
def test_gradcheck(problem):
    # random normal features: distinct values almost surely, so no ties (kinks) in the max
    x, boxes, out_size, scale = problem
    err = check_op_gradients(roi_pool_forward, roi_pool_backward, [x, boxes],
                             kwargs=dict(output_size=out_size, spatial_scale=scale))
    assert err[0] <= 1e-6


def test_list_boxes_and_float32():
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    b = [np.array([[0.0, 0, 3, 3]], np.float32), np.array([[1.0, 2, 5, 5]], np.float32)]
    out, cache = roi_pool_forward(x, b, 2)
    assert out.dtype == np.float32 and out.shape == (2, 2, 2, 2)
    rois = np.array([[0, 0, 0, 3, 3], [1, 1, 2, 5, 5]], np.float32)
    np.testing.assert_array_equal(out, roi_pool(x, rois, 2))
    assert roi_pool_backward(out, cache).dtype == np.float32


def test_errors():
    x = np.zeros((1, 1, 4, 4))
    ok = np.array([[0, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match="roi_pool_forward: input"):
        roi_pool(np.zeros((4, 4)), ok, 2)
    with pytest.raises(TypeError, match="floating"):
        roi_pool(x.astype(np.int32), ok, 2)
    with pytest.raises(ValueError, match="inf"):
        roi_pool(x, np.array([[0, 0, 0, np.inf, 2.0]]), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_pool(x, np.array([[-1, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        roi_pool(x, ok, (0, 2))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        roi_pool(x, np.zeros((2, 6)), 2)


# --- the two algorithms: float32/float16 NumPy inputs take the 2-D sparse table of packed keys,
# float64 the separable range max; both must give the same outputs and the same argmax.

def _both_paths(x, boxes, out_size, scale):
    """(out, arg) of the packed-key path and of the separable path, on float32 ``x``."""
    from mrcnn_ref.ops import roi_pool as rp
    from mrcnn_ref.ops.roi_common import check_roi_args
    _, rois, (ph, pw), scale = check_roi_args(x, boxes, out_size, scale, "test")
    N, C, H, W = x.shape
    b = rois[:, 0].astype(np.int64)
    hs, he = rp._bin_edges(rois[:, 2], rois[:, 4], scale, ph, H, np)
    ws, we = rp._bin_edges(rois[:, 1], rois[:, 3], scale, pw, W, np)
    return (rp._forward_sparse2d(x, b, hs, he, ws, we, np),
            rp._forward_separable(x, b, hs, he, ws, we, np))


@given(pool_problem(ties=True))
def test_float32_paths_agree(problem):
    x, boxes, out_size, scale = problem
    if len(boxes) == 0:   # K == 0 is answered by roi_pool_forward before either path
        return
    (o1, a1), (o2, a2) = _both_paths(x.astype(np.float32), boxes, out_size, scale)
    np.testing.assert_array_equal(o1, o2)
    np.testing.assert_array_equal(a1, a2)


@given(pool_problem(ties=True))
def test_float32_matches_torchvision(problem):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, out_size, scale = problem
    x = x.astype(np.float32)
    out, cache = roi_pool_forward(x, boxes.astype(np.float32), out_size, scale)
    assert out.dtype == np.float32
    d = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    g = roi_pool_backward(d, cache)
    xt = torch.tensor(x, requires_grad=True)
    ot = tv.ops.roi_pool(xt, torch.tensor(boxes.astype(np.float32)), out_size, scale)
    ot.backward(torch.tensor(d))
    np.testing.assert_array_equal(out, ot.detach().numpy())
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_bins_with_ties_match_torchvision(dtype):
    # a 45x50 map and RoIs up to the whole map: bins up to 45 pixels (sparse-table levels 0..5),
    # values on a coarse grid so that many bins tie
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((2, 3, 45, 50)) * 2).astype(dtype)
    xy = rng.uniform(-5, 55, (40, 4))
    boxes = np.stack([rng.integers(0, 2, 40), np.minimum(xy[:, 0], xy[:, 2]), np.minimum(xy[:, 1], xy[:, 3]),
                      np.maximum(xy[:, 0], xy[:, 2]), np.maximum(xy[:, 1], xy[:, 3])], 1).astype(dtype)
    boxes[0, 1:] = [0, 0, 49, 44]
    for out_size in [(1, 1), (2, 3), (7, 7)]:
        out, cache = roi_pool_forward(x, boxes, out_size)
        d = rng.standard_normal(out.shape).astype(dtype)
        g = roi_pool_backward(d, cache)
        xt = torch.tensor(x, requires_grad=True)
        ot = tv.ops.roi_pool(xt, torch.tensor(boxes), out_size, 1.0)
        ot.backward(torch.tensor(d))
        np.testing.assert_array_equal(out, ot.detach().numpy())
        np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-5 if dtype == np.float32 else 1e-10)


def test_packed_keys_signed_zero_extremes_float16():
    # -0.0 ties with +0.0 (first in row-major order wins), +-inf and the extreme finite floats
    # keep their order; float16 runs in float32 and comes back as float16
    f = np.finfo(np.float32)
    x = np.array([[-0.0, 0.0, -f.max], [f.tiny, -f.tiny, 0.0], [-np.inf, f.max, np.inf]], np.float32)
    x = x.reshape(1, 1, 3, 3)
    box = np.array([[0, 0, 0, 1, 0.0]])                          # row 0, columns 0..1
    pixel = lambda cache: cache[0] // 1 - 1   # noqa: E731  (C = 1: gradient index = pixel + 1)
    out, cache = roi_pool_forward(x, box, 1)
    assert out[0, 0, 0, 0] == 0 and pixel(cache)[0, 0, 0, 0] == 0   # -0.0 (pixel 0) wins the tie
    out, cache = roi_pool_forward(x, np.array([[0, 0, 0, 2, 1.0]]), 1)
    assert out[0, 0, 0, 0] == f.tiny and pixel(cache)[0, 0, 0, 0] == 3
    out, cache = roi_pool_forward(x, np.array([[0, 0, 0, 2, 2.0]]), (3, 1))
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, f.tiny, np.inf])
    np.testing.assert_array_equal(pixel(cache)[0, :, 0, 0], [0, 3, 8])
    out, cache = roi_pool_forward(-x, np.array([[0, 0, 0, 2, 2.0]]), (1, 3))
    np.testing.assert_array_equal(out[0, 0, 0], [np.inf, f.tiny, f.max])
    h = np.random.default_rng(0).standard_normal((1, 2, 5, 6)).astype(np.float16)
    boxes = np.array([[0, 0, 0, 5, 4], [0, 1, 1, 3, 3.0]])
    oh, ch = roi_pool_forward(h, boxes, 2)
    o32, c32 = roi_pool_forward(h.astype(np.float32), boxes, 2)
    assert oh.dtype == np.float16
    np.testing.assert_array_equal(oh, o32)
    np.testing.assert_array_equal(ch[0], c32[0])
    assert roi_pool_backward(np.ones_like(oh), ch).dtype == np.float16
