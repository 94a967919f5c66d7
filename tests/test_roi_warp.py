"""RoIWarp: definition (RoIAlign on rounded boxes), hand values, gradient checks, errors."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from mrcnn_ref.gradcheck import check_op_gradients
from mrcnn_ref.ops.roi_align import roi_align
from mrcnn_ref.ops.roi_warp import roi_warp, roi_warp_backward, roi_warp_forward

F5 = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)   # F[i, j] = 5 i + j


def test_hand_values():
    # box [0.4, 2.4]^2 rounds to [0, 2]^2; 2x2 samples at .5, 1.5: mean of a ramp = value at the
    # centre (1, 1) = 6. RoIAlign (no rounding) reads the centre (1.4, 1.4) = 8.4
    b = np.array([[0, 0.4, 0.4, 2.4, 2.4]])
    assert roi_warp(F5, b, 1, sampling_ratio=2)[0, 0, 0, 0] == pytest.approx(6.0)
    assert roi_align(F5, b, 1, sampling_ratio=2)[0, 0, 0, 0] == pytest.approx(8.4)
    # halves round away from zero: [0.5, 2.5] -> [1, 3]: centre (2, 2) -> 12
    assert roi_warp(F5, np.array([[0, 0.5, 0.5, 2.5, 2.5]]), 1, sampling_ratio=2)[0, 0, 0, 0] == pytest.approx(12.0)
    # spatial scale: [2, 6] * 0.5 = [1, 3]: centre (2, 2) -> 12
    assert roi_warp(F5, np.array([[0, 2, 2, 6, 6.0]]), 1, 0.5, 2)[0, 0, 0, 0] == pytest.approx(12.0)


@st.composite
def warp_problem(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w, k = draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(0, 4))
    scale = draw(st.sampled_from([1.0, 0.5, 0.25]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((n, c, h, w))
    xs = rng.uniform(-3 / scale, (w + 3) / scale, (k, 2))
    ys = rng.uniform(-3 / scale, (h + 3) / scale, (k, 2))
    boxes = np.stack([rng.integers(0, n, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)
    return x, boxes, (draw(st.integers(1, 4)), draw(st.integers(1, 4))), scale, draw(st.sampled_from([-1, 1, 2, 3]))


@given(warp_problem())
def test_is_roi_align_on_rounded_boxes(problem):
    x, boxes, out_size, scale, sr = problem
    rounded = boxes.copy()
    rounded[:, 1:] = np.sign(boxes[:, 1:] * scale) * np.floor(np.abs(boxes[:, 1:] * scale) + 0.5)
    expect = roi_align(x, rounded, out_size, 1.0, sr, aligned=False)
    np.testing.assert_allclose(roi_warp(x, boxes, out_size, scale, sr), expect, rtol=0, atol=1e-12)


@given(warp_problem())
def test_invariant_to_subpixel_shift(problem):
    """Quantisation: moving a box by less than what changes its rounding changes nothing."""
    x, boxes, out_size, scale, sr = problem
    v = boxes[:, 1:] * scale
    frac = v - np.floor(v)
    # shift every coordinate towards the centre of its rounding cell, staying in the cell
    target = np.where(frac < 0.5, np.floor(v) + 0.25, np.floor(v) + 0.75)
    moved = boxes.copy()
    moved[:, 1:] = target / scale
    np.testing.assert_allclose(roi_warp(x, moved, out_size, scale, sr),
                               roi_warp(x, boxes, out_size, scale, sr), rtol=0, atol=1e-12)


@given(warp_problem())
def test_gradcheck(problem):
    x, boxes, out_size, scale, sr = problem
    err = check_op_gradients(roi_warp_forward, roi_warp_backward, [x, boxes],
                             kwargs=dict(output_size=out_size, spatial_scale=scale, sampling_ratio=sr))
    assert err[0] <= 1e-6


def test_errors():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ValueError, match="roi_warp_forward: input"):
        roi_warp(np.zeros((1, 4, 4)), np.array([[0, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match="batch index"):
        roi_warp(x, np.array([[1, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(TypeError, match="sampling_ratio"):
        roi_warp(x, np.array([[0, 0, 0, 2, 2.0]]), 2, 1.0, "2")
