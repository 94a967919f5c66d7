"""RoIAlign (avg and max): hand-computed values, torchvision cross-checks, gradient checks, errors."""
import functools
import numpy as np
import pytest
from hypothesis import given, strategies as st

import mrcnn_ref.ops.roi_align as ra
from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.roi_align import (bilinear_sample, roi_align, roi_align_backward, roi_align_forward,
                                     roi_align_max, roi_align_max_backward, roi_align_max_forward)

# F[i, j] = 5 i + j: a linear ramp, so bilinear reads of it are exact: value(y, x) = 5 y + x.
F5 = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)


@pytest.fixture(params=ra.PATHS)
def path(request):
    """Run a test on both implementation paths (dense whole-axis matrices / gathered windows)."""
    return request.param


# ------------------------------------------------------------------ hand-computed values
def test_hand_values(path):
    roi_align = functools.partial(ra.roi_align, path=path)
    # box [0,4]x[0,4], 1 bin, 2x2 samples: start 0, bin 4, samples at 0 + (i + .5) * 4/2 = 1, 3
    # -> F at (1,1)=6, (1,3)=8, (3,1)=16, (3,3)=18, mean 12
    out = roi_align(F5, np.array([[0, 0, 0, 4, 4.0]]), 1, sampling_ratio=2)
    assert out.shape == (1, 1, 1, 1) and out[0, 0, 0, 0] == pytest.approx(12.0)
    # box [0,1]^2, 1 sample at (.5,.5): bilinear of 0,1,5,6 with weights 1/4 -> 3
    assert roi_align(F5, np.array([[0, 0, 0, 1, 1.0]]), 1, sampling_ratio=1)[0, 0, 0, 0] == pytest.approx(3.0)
    # box [3,6]^2, 2x2 samples at 3.75, 5.25: 5.25 > W=5 is outside (reads 0) but still counts;
    # only (3.75, 3.75) is inside: 5*3.75 + 3.75 = 22.5, averaged over 4 samples -> 5.625
    assert roi_align(F5, np.array([[0, 3, 3, 6, 6.0]]), 1, sampling_ratio=2)[0, 0, 0, 0] == pytest.approx(5.625)
    # box [3.5,4.5]^2: sample at 4.0 = last row/col -> y_low = y_high = 4 -> F[4,4] = 24
    assert roi_align(F5, np.array([[0, 3.5, 3.5, 4.5, 4.5]]), 1, sampling_ratio=1)[0, 0, 0, 0] == pytest.approx(24.0)
    # samples exactly on the validity limits y = H and y = -1 still count (limits are inclusive):
    # box [4,6]^2 -> sample (5, 5) -> clamped to the last pixel F[4,4] = 24
    assert roi_align(F5, np.array([[0, 4, 4, 6, 6.0]]), 1, sampling_ratio=1)[0, 0, 0, 0] == pytest.approx(24.0)
    # box x [1.5, 2.5], y [-1.5, -0.5] -> sample (y=-1, x=2) -> y clamps to 0 -> F[0,2] = 2
    assert roi_align(F5, np.array([[0, 1.5, -1.5, 2.5, -0.5]]), 1, sampling_ratio=1)[0, 0, 0, 0] == pytest.approx(2.0)
    # aligned=True shifts by -0.5: box [0.5, 2.5]^2 -> [0, 2]^2, 2x2 output, 1 sample per bin at
    # .5 and 1.5 -> 5*.5+.5=3, 5*.5+1.5=4, 5*1.5+.5=8, 9
    out = roi_align(F5, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 2, sampling_ratio=1, aligned=True)
    np.testing.assert_allclose(out[0, 0], [[3, 4], [8, 9]])
    # adaptive grid: box [0,4] with output 2 -> ceil(4/2) = 2 samples per bin at .5, 1.5 | 2.5, 3.5
    out = roi_align(F5, np.array([[0, 0, 0, 4, 4.0]]), 2)
    np.testing.assert_allclose(out[0, 0], [[6, 8], [16, 18]])


def test_max_hand_values(path):
    roi_align_max_forward = functools.partial(ra.roi_align_max_forward, path=path)
    # same 4 samples as above (6, 8, 16, 18): max 18, gradient to pixel (3, 3) only
    out, cache = roi_align_max_forward(F5, np.array([[0, 0, 0, 4, 4.0]]), 1, sampling_ratio=2)
    assert out[0, 0, 0, 0] == pytest.approx(18.0)
    g = roi_align_max_backward(np.ones_like(out), cache)
    expect = np.zeros((1, 1, 5, 5))
    expect[0, 0, 3, 3] = 1
    np.testing.assert_allclose(g, expect)
    # box [0,1]^2, samples at .25/.75: max at (.75, .75) = 4.5; gradient = its bilinear weights
    out, cache = roi_align_max_forward(F5, np.array([[0, 0, 0, 1, 1.0]]), 1, sampling_ratio=2)
    assert out[0, 0, 0, 0] == pytest.approx(4.5)
    g = roi_align_max_backward(np.ones_like(out), cache)
    np.testing.assert_allclose(g[0, 0, :2, :2], [[0.0625, 0.1875], [0.1875, 0.5625]])
    assert g.sum() == pytest.approx(1.0)


def test_backward_hand(path):
    roi_align_forward = functools.partial(ra.roi_align_forward, path=path)
    # 1 sample at (.5, .5): gradient 1/4 to each of the 4 neighbours
    out, cache = roi_align_forward(F5, np.array([[0, 0, 0, 1, 1.0]]), 1, sampling_ratio=1)
    g = roi_align_backward(np.ones_like(out), cache)
    assert g[0, 0, :2, :2] == pytest.approx(np.full((2, 2), 0.25))
    assert g.sum() == pytest.approx(1.0)


def test_bilinear_sample_seed_example():
    # seed 004: corner values 50 (571,457), 100 (572,457), 150 (571,458), 200 (572,458)
    f = np.array([[50.0, 100.0], [150.0, 200.0]])
    v = bilinear_sample(f, 457.14286 - 457, 571.42857 - 571)
    assert v == pytest.approx(85.714, abs=1e-3)


def test_list_of_boxes_and_empty():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 7))
    b0 = np.array([[0.5, 1.0, 4.0, 5.5]])
    b1 = np.array([[1.0, 0.2, 6.3, 3.1], [0.0, 0.0, 2.0, 2.0]])
    a = roi_align(x, [b0, b1], (2, 3), 1.0, 2)
    rois = np.concatenate([np.c_[[0.0], b0], np.c_[[1.0, 1.0], b1]])
    np.testing.assert_array_equal(a, roi_align(x, rois, (2, 3), 1.0, 2))
    out, cache = roi_align_forward(x, np.zeros((0, 5)), 2)
    assert out.shape == (0, 3, 2, 2)
    assert not roi_align_backward(out, cache).any()
    assert roi_align_max(x, np.zeros((0, 5)), 2).shape == (0, 3, 2, 2)


def test_float32_dtype():
    x = np.random.default_rng(0).standard_normal((1, 2, 8, 8)).astype(np.float32)
    out, cache = roi_align_forward(x, np.array([[0, 1.0, 1, 6, 7]], dtype=np.float32), 3, 1.0, 2)
    assert out.dtype == np.float32
    assert roi_align_backward(out, cache).dtype == np.float32


# ------------------------------------------------------------------ strategies
@st.composite
def roi_problem(draw, inside=False):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7))
    k = draw(st.integers(0 if not inside else 1, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    if inside:
        xs = rng.uniform(0, w / scale, (k, 2))
        ys = rng.uniform(0, h / scale, (k, 2))
    else:  # partly outside the map, and some tiny boxes
        xs = rng.uniform(-3 / scale, (w + 3) / scale, (k, 2))
        ys = rng.uniform(-3 / scale, (h + 3) / scale, (k, 2))
        tiny = rng.random(k) < 0.3
        xs[tiny, 1] = xs[tiny, 0] + rng.uniform(0, 0.3, tiny.sum())
    boxes = np.stack([rng.integers(0, n, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1).astype(np.float64)
    out_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    sr = draw(st.sampled_from([-1, 0, 1, 2, 3]))
    aligned = draw(st.booleans())
    return x, boxes, out_size, scale, sr, aligned


# ------------------------------------------------------------------ torchvision cross-check
@given(roi_problem(), st.sampled_from(["auto", "dense", "window"]))
def test_matches_torchvision(problem, path_name):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, out_size, scale, sr, aligned = problem
    out, cache = roi_align_forward(x, boxes, out_size, scale, sr, aligned, path=path_name)
    d = np.random.default_rng(1).standard_normal(out.shape)
    g = roi_align_backward(d, cache)
    xt = torch.tensor(x, requires_grad=True)
    ot = tv.ops.roi_align(xt, torch.tensor(boxes), out_size, scale, sr, aligned)
    ot.backward(torch.tensor(d))
    np.testing.assert_allclose(out, ot.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-10)


# ------------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("fwd, bwd", [(roi_align_forward, roi_align_backward),
                                      (roi_align_max_forward, roi_align_max_backward)],
                         ids=["avg", "max"])
@given(problem=roi_problem())
def test_gradcheck(fwd, bwd, problem):
    x, boxes, out_size, scale, sr, aligned = problem
    err = check_op_gradients(fwd, bwd, [x, boxes],
                             kwargs=dict(output_size=out_size, spatial_scale=scale, sampling_ratio=sr,
                                         aligned=aligned))
    assert err[0] <= 1e-6


@given(roi_problem())
def test_max_upper_bounds_avg(problem):
    """Max over a bin's samples >= their mean (same samples), and the paths agree."""
    x, boxes, out_size, scale, sr, aligned = problem
    avg = roi_align(x, boxes, out_size, scale, sr, aligned)
    mx = roi_align_max(x, boxes, out_size, scale, sr, aligned)
    assert np.all(mx >= avg - 1e-12)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("fn", [roi_align, roi_align_max])
def test_errors(fn):
    x = np.zeros((2, 1, 4, 4))
    ok = np.array([[0, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match="input"):
        fn(np.zeros((1, 4, 4)), ok, 2)
    with pytest.raises(TypeError, match="floating"):
        fn(np.zeros((1, 1, 4, 4), dtype=np.int64), ok, 2)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        fn(x, np.zeros((1, 4)), 2)
    with pytest.raises(ValueError, match="NaN"):
        fn(x, np.array([[0, 0, np.nan, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="batch index"):
        fn(x, np.array([[2, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="integral"):
        fn(x, np.array([[0.5, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="output_size"):
        fn(x, ok, 0)
    with pytest.raises(ValueError, match="output_size"):
        fn(x, ok, (2, -1))
    with pytest.raises(ValueError, match="spatial_scale"):
        fn(x, ok, 2, -1.0)
    with pytest.raises(TypeError, match="sampling_ratio"):
        fn(x, ok, 2, 1.0, 1.5)
    with pytest.raises(TypeError, match="boxes"):
        fn(x, "boxes", 2)
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        fn(x, [np.zeros((1, 5))], 2)


@pytest.mark.parametrize("path_name", ["dense", "window"])
def test_larger_map_matches_torchvision(path_name):
    """A map taller than one band of the dense path (and RoIs spanning several bands)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 41, 37))
    xs = np.sort(rng.uniform(-20, 37 * 8 + 20, (12, 2)), axis=1)
    ys = np.sort(rng.uniform(-20, 41 * 8 + 20, (12, 2)), axis=1)
    boxes = np.stack([rng.integers(0, 2, 12), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1).astype(np.float64)
    for sr, aligned in [(2, False), (-1, True)]:
        out, cache = roi_align_forward(x, boxes, (7, 5), 1 / 8, sr, aligned, path=path_name)
        d = rng.standard_normal(out.shape)
        g = roi_align_backward(d, cache)
        xt = torch.tensor(x, requires_grad=True)
        ot = tv.ops.roi_align(xt, torch.tensor(boxes), (7, 5), 1 / 8, sr, aligned)
        ot.backward(torch.tensor(d))
        np.testing.assert_allclose(out, ot.detach().numpy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(g, xt.grad.numpy(), rtol=0, atol=1e-10)
        mx, mcache = roi_align_max_forward(x, boxes, (7, 5), 1 / 8, sr, aligned)
        assert np.all(mx >= out - 1e-12)


def _max_reference(x, boxes, out_size, scale, sr, aligned):
    """Loop-by-loop RoIAlign-max from the definition (bilinear_sample at every sample point)."""
    ph, pw = out_size
    off = 0.5 if aligned else 0.0
    out = np.zeros((len(boxes), x.shape[1], ph, pw))
    for k, (bi, x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = x1 * scale - off, y1 * scale - off
        w, h = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            w, h = max(w, 1.0), max(h, 1.0)
        gh = sr if sr > 0 else int(np.ceil(h / ph))
        gw = sr if sr > 0 else int(np.ceil(w / pw))
        if gh * gw == 0:
            continue
        for p in range(ph):
            for q in range(pw):
                ys = sy + p * h / ph + (np.arange(gh) + 0.5) * (h / ph) / gh
                xs = sx + q * w / pw + (np.arange(gw) + 0.5) * (w / pw) / gw
                yy, xx = np.meshgrid(ys, xs, indexing="ij")
                for c in range(x.shape[1]):
                    out[k, c, p, q] = bilinear_sample(x[int(bi), c], yy, xx).max()
    return out


@given(roi_problem())
def test_max_matches_loop_reference(problem):
    x, boxes, out_size, scale, sr, aligned = problem
    np.testing.assert_allclose(roi_align_max(x, boxes, out_size, scale, sr, aligned),
                               _max_reference(x, boxes, out_size, scale, sr, aligned), rtol=0, atol=1e-10)
