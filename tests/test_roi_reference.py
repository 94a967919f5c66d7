"""The loop references of mrcnn_ref.ops.roi_reference: hand values, the vectorised ops (forward and
backward, both RoIAlign paths) and torchvision."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.ops import roi_reference as ref
from mrcnn_ref.ops.roi_align import (PATHS, roi_align_backward, roi_align_forward, roi_align_max_backward,
                                     roi_align_max_forward)
from mrcnn_ref.ops.roi_align import roi_align_max
from mrcnn_ref.ops.roi_pool import roi_pool_backward, roi_pool_forward
from mrcnn_ref.ops.roi_warp import roi_warp_backward, roi_warp_forward

F5 = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)   # F[i, j] = 5 i + j


def test_c_round():
    assert [ref.c_round(v) for v in (-2.5, -1.5, -0.5, -0.2, 0.5, 1.5, 2.4, 2.5)] == [-3, -2, -1, 0, 1, 2, 2, 3]


def test_hand_values():
    # RoIPool, box [0,4]^2: size 5, 2 bins of 2.5 -> rows/cols [0, 3) and [2, 5)
    out, arg = ref.roi_pool_reference(F5, np.array([[0, 0, 0, 4, 4.0]]), 2)
    np.testing.assert_array_equal(out[0, 0], [[12, 14], [22, 24]])
    np.testing.assert_array_equal(arg[0, 0], [[12, 14], [22, 24]])      # F[i, j] = 5 i + j = flat index
    # RoIAlign, box [0,4]^2, 1 bin, 2x2 samples at 1 and 3 -> mean of 6, 8, 16, 18; max 18
    box = np.array([[0, 0, 0, 4, 4.0]])
    assert ref.roi_align_reference(F5, box, 1, sampling_ratio=2)[0, 0, 0, 0] == pytest.approx(12.0)
    assert ref.roi_align_reference(F5, box, 1, sampling_ratio=2, mode="max")[0, 0, 0, 0] == pytest.approx(18.0)
    # the bilinear worked example: corners 50, 100 / 150, 200 read at (457.142857, 571.428571)
    f = np.array([[[[50.0, 100.0], [150.0, 200.0]]]])
    y, x = 400 * 800 / 700 - 457, 400 * 1000 / 700 - 571
    v = sum(w * f[0, 0, r, c] for r, c, w in ref.bilinear_neighbours(y, x, 2, 2))
    assert v == pytest.approx(85.714, abs=1e-3)
    # outside [-1, H]: no neighbours; the last row/column is clamped
    assert ref.bilinear_neighbours(-1.5, 0.0, 5, 5) == []
    assert ref.bilinear_neighbours(4.5, 4.5, 5, 5) == [(4, 4, 1.0), (4, 4, 0.0), (4, 4, 0.0), (4, 4, 0.0)]
    # RoIWarp: box [0.4, 2.6] rounds to [0, 3] -> RoIAlign on [0, 3]: 1 sample at 1.5 -> 5*1.5 + 1.5
    assert ref.roi_warp_reference(F5, np.array([[0, 0.4, 0.4, 2.6, 2.6]]), 1, 1.0, 1)[0, 0, 0, 0] == 9.0


@st.composite
def problem(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    k = draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, c, h, w))
    xs = rng.uniform(-2 / scale, (w + 2) / scale, (k, 2))      # partly outside the map too
    ys = rng.uniform(-2 / scale, (h + 2) / scale, (k, 2))
    if draw(st.booleans()):   # half-pixel coordinates: rounding ties, samples on pixel lines
        xs, ys = np.round(xs * 2 * scale) / (2 * scale), np.round(ys * 2 * scale) / (2 * scale)
    boxes = np.stack([rng.integers(0, n, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1).astype(np.float64)
    size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return x, boxes, size, scale, draw(st.sampled_from([-1, 1, 2, 3]))


@given(problem())
def test_roi_pool_matches_reference(prob):
    x, boxes, size, scale, _ = prob
    out, cache = roi_pool_forward(x, boxes, size, scale)
    r_out, arg = ref.roi_pool_reference(x, boxes, size, scale)
    np.testing.assert_allclose(out, r_out, rtol=0, atol=1e-12)
    d = np.random.default_rng(1).standard_normal(out.shape)
    np.testing.assert_allclose(roi_pool_backward(d, cache), ref.roi_pool_reference_backward(d, arg, boxes, x.shape),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["avg", "max"])
@given(prob=problem(), aligned=st.booleans())
def test_roi_align_matches_reference(path, mode, prob, aligned):
    x, boxes, size, scale, sr = prob
    fwd, bwd = (roi_align_forward, roi_align_backward) if mode == "avg" else (roi_align_max_forward,
                                                                             roi_align_max_backward)
    out, cache = fwd(x, boxes, size, scale, sr, aligned, path=path)
    np.testing.assert_allclose(out, ref.roi_align_reference(x, boxes, size, scale, sr, aligned, mode),
                               rtol=0, atol=1e-12)
    d = np.random.default_rng(1).standard_normal(out.shape)
    np.testing.assert_allclose(bwd(d, cache), ref.roi_align_reference_backward(d, x, boxes, size, scale, sr,
                                                                               aligned, mode),
                               rtol=0, atol=1e-12)


@given(problem())
def test_roi_warp_matches_reference(prob):
    x, boxes, size, scale, sr = prob
    out, cache = roi_warp_forward(x, boxes, size, scale, sr)
    np.testing.assert_allclose(out, ref.roi_warp_reference(x, boxes, size, scale, sr), rtol=0, atol=1e-12)
    d = np.random.default_rng(1).standard_normal(out.shape)
    np.testing.assert_allclose(roi_warp_backward(d, cache),
                               ref.roi_warp_reference_backward(d, x, boxes, size, scale, sr), rtol=0, atol=1e-12)
    # RoIWarp-max: RoIAlign-max on the rounded box (scale 1, aligned=False), as the references define it
    rounded = np.array([[b[0]] + [float(ref.c_round(v * scale)) for v in b[1:]] for b in boxes]).reshape(-1, 5)
    np.testing.assert_allclose(roi_align_max(x, rounded, size, 1.0, sr, False),
                               ref.roi_warp_reference(x, boxes, size, scale, sr, mode="max"), rtol=0, atol=1e-12)


@given(problem())
def test_references_match_torchvision(prob):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, size, scale, sr = prob
    xt, bt = torch.tensor(x), torch.tensor(boxes)
    np.testing.assert_allclose(ref.roi_pool_reference(x, boxes, size, scale)[0],
                               tv.ops.roi_pool(xt, bt, size, scale).numpy(), rtol=0, atol=1e-12)
    for aligned in (False, True):
        np.testing.assert_allclose(ref.roi_align_reference(x, boxes, size, scale, sr, aligned),
                                   tv.ops.roi_align(xt, bt, size, scale, sr, aligned).numpy(), rtol=0, atol=1e-12)
