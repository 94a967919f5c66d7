"""Linear-ramp ground truth: aligned RoIAlign-avg is exact, the quantised ops are not."""
import functools

import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.ops.roi_compare import compare_roi_ops, exact_bin_means, linear_ramp_features


def test_ramp_convention():
    f = linear_ramp_features(2, 3, 4, a=[1.0, 2.0], b=[10.0, 0.0], c=[0.0, 1.0], N=2)
    assert f.shape == (2, 2, 3, 4)
    # pixel (i, j) holds f at (x, y) = (j + .5, i + .5)
    assert f[1, 0, 2, 3] == pytest.approx(3.5 + 10 * 2.5)
    assert f[0, 1, 0, 0] == pytest.approx(2 * 0.5 + 1)


def test_exact_bin_means_hand():
    # box [0, 4] x [0, 2] at scale 0.5 -> [0, 2] x [0, 1]; 2 bins along x: centres x = .5, 1.5, y = .5
    m = exact_bin_means(np.array([[0, 0, 0, 4, 2.0]]), (1, 2), 0.5, a=1.0, b=2.0, c=3.0)
    np.testing.assert_allclose(m[0, 0], [[0.5 + 1 + 3, 1.5 + 1 + 3]])


@st.composite
def inside_boxes(draw):
    h, w = draw(st.integers(4, 12)), draw(st.integers(4, 12))
    scale = draw(st.sampled_from([1.0, 0.5, 0.125]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    k = draw(st.integers(1, 4))
    # at least 1 feature pixel inside the map, so no sample is clamped (samples stay in
    # [0.5, W - 0.5] in continuous coordinates, where bilinear interpolation is exact)
    xs = rng.uniform(1.0, w - 1.0, (k, 2)) / scale
    ys = rng.uniform(1.0, h - 1.0, (k, 2)) / scale
    boxes = np.stack([np.zeros(k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)
    a, b, c = rng.uniform(-3, 3, 3)
    out = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return h, w, scale, boxes, (a, b, c), out, draw(st.sampled_from([-1, 1, 2, 3]))


@given(inside_boxes())
def test_aligned_roi_align_is_exact_on_ramps(problem):
    h, w, scale, boxes, (a, b, c), out, sr = problem
    f = linear_ramp_features(1, h, w, a, b, c)
    res = compare_roi_ops(f, boxes, out, scale, sampling_ratio=sr,
                          exact=functools.partial(exact_bin_means, a=a, b=b, c=c),
                          ops=("roi_align_aligned", "roi_align"))
    assert res["roi_align_aligned"]["max_abs_error"] <= 1e-9
    # aligned=False reads pixel i at coordinate i: a constant half-pixel shift, error .5 (a + b)
    # (for RoIs at least 1 pixel wide and high; smaller ones are stretched to 1 pixel)
    big = ((boxes[:, 3] - boxes[:, 1]) * scale >= 1) & ((boxes[:, 4] - boxes[:, 2]) * scale >= 1)
    diff = res["roi_align"]["output"] - exact_bin_means(boxes, out, scale, a, b, c)
    np.testing.assert_allclose(diff[big], 0.5 * (a + b), atol=1e-9)


def test_quantised_ops_are_not_exact():
    f = linear_ramp_features(1, 16, 16, a=1.0, b=0.5, c=0.0)
    boxes = np.array([[0, 1.3, 2.1, 9.7, 12.2]])
    res = compare_roi_ops(f, boxes, 7, 1.0, sampling_ratio=2,
                          exact=functools.partial(exact_bin_means, a=1.0, b=0.5, c=0.0))
    assert res["roi_align_aligned"]["max_abs_error"] < 1e-12
    for name in ("roi_pool", "roi_warp", "roi_align_max"):
        assert res[name]["max_abs_error"] > 0.1, name
    # RoIPool takes the max pixel of rounded bins: here it overshoots by more than a pixel step
    assert res["roi_pool"]["mean_abs_error"] > res["roi_warp"]["mean_abs_error"] > 0


def test_compare_without_exact_and_errors():
    f = linear_ramp_features(2, 8, 8)
    res = compare_roi_ops(f, np.array([[0, 1, 1, 5, 5.0]]), 2)
    assert set(res) == {"roi_pool", "roi_warp", "roi_align_max", "roi_align", "roi_align_aligned"}
    assert np.isnan(res["roi_pool"]["max_abs_error"])
    with pytest.raises(ValueError, match="unknown op"):
        compare_roi_ops(f, np.array([[0, 1, 1, 5, 5.0]]), 2, ops=("roi_magic",))
    with pytest.raises(ValueError, match="exact has shape"):
        compare_roi_ops(f, np.array([[0, 1, 1, 5, 5.0]]), 2, exact=np.zeros((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="linear_ramp_features"):
        linear_ramp_features(0, 4, 4)
