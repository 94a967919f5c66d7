import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.boxes import (
    DEFAULT_BBOX_CLAMP,
    HEAD_BOX_WEIGHTS,
    RPN_BOX_WEIGHTS,
    box_area,
    box_iou,
    box_xywh_to_xyxy,
    box_xyxy_to_xywh,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    remove_small_boxes,
)


def make_boxes(n, seed, lo=0.0, hi=100.0, min_wh=0.0, max_wh=50.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(min_wh, max_wh, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


@st.composite
def box_arrays(draw, min_n=0, max_n=8, min_wh=0.0):
    n = draw(st.integers(min_n, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    return make_boxes(n, seed, min_wh=min_wh)


# ---------------------------------------------------------------- hand-computed values

def test_area_and_iou_by_hand():
    a = np.array([[0.0, 0.0, 10.0, 10.0]])
    b = np.array([[5.0, 5.0, 15.0, 15.0], [10.0, 0.0, 20.0, 10.0], [0.0, 0.0, 10.0, 10.0],
                  [2.0, 2.0, 4.0, 6.0]])
    np.testing.assert_allclose(box_area(b), [100.0, 100.0, 100.0, 8.0])
    # overlap 5x5 = 25, union 175; touching edge -> 0; identical -> 1; contained 8/100
    np.testing.assert_allclose(box_iou(a, b), [[25 / 175, 0.0, 1.0, 0.08]])
    assert box_iou(a, b).shape == (1, 4)


def test_iou_degenerate_boxes_follow_torchvision():
    z = np.array([[1.0, 1.0, 1.0, 1.0]])
    big = np.array([[0.0, 0.0, 2.0, 2.0]])
    assert math.isnan(box_iou(z, z)[0, 0])  # 0 / 0, as torchvision
    assert box_iou(z, big)[0, 0] == 0.0


def test_iou_float32_stays_float32():
    b = make_boxes(3, 0).astype(np.float32)
    assert box_iou(b, b).dtype == np.float32


def test_clip_and_remove_small():
    b = np.array([[-5.0, -3.0, 50.0, 20.0], [10.0, 10.0, 200.0, 300.0]])
    np.testing.assert_array_equal(clip_boxes(b, (30, 40)), [[0, 0, 40, 20], [10, 10, 40, 30]])
    small = np.array([[0, 0, 2, 10], [0, 0, 3, 3], [1, 1, 4, 3.5], [0, 0, 2.9, 5]], dtype=float)
    np.testing.assert_array_equal(remove_small_boxes(small, 3.0), [1])
    assert remove_small_boxes(small, 3.0).dtype == np.int64
    np.testing.assert_array_equal(remove_small_boxes(small, 0.0), [0, 1, 2, 3])


def test_encode_by_hand():
    p = np.array([[0.0, 0.0, 10.0, 20.0]])  # centre (5, 10), w 10, h 20
    g = np.array([[2.0, 4.0, 22.0, 24.0]])  # centre (12, 14), w 20, h 20
    d = encode_boxes(g, p)
    np.testing.assert_allclose(d, [[0.7, 0.2, math.log(2.0), 0.0]])
    d10 = encode_boxes(g, p, HEAD_BOX_WEIGHTS)
    np.testing.assert_allclose(d10, [[7.0, 2.0, 5 * math.log(2.0), 0.0]])
    np.testing.assert_allclose(decode_boxes(d10, p, HEAD_BOX_WEIGHTS), g)
    assert RPN_BOX_WEIGHTS == (1.0, 1.0, 1.0, 1.0)


def test_decode_clamps_width():
    p = np.array([[0.0, 0.0, 16.0, 16.0]])
    d = np.array([[0.0, 0.0, 100.0, -2.0]])
    out = decode_boxes(d, p)
    w = out[0, 2] - out[0, 0]
    assert np.isfinite(out).all()
    np.testing.assert_allclose(w, 16 * math.exp(DEFAULT_BBOX_CLAMP))  # = 1000
    np.testing.assert_allclose(w, 1000.0)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 16 * math.exp(-2.0))


def test_decode_class_specific_shape():
    p = make_boxes(5, 1, min_wh=1.0)
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 12))
    out = decode_boxes(d, p, HEAD_BOX_WEIGHTS)
    assert out.shape == (5, 12)
    for k in range(3):  # each class block decodes like a K = 1 call
        np.testing.assert_allclose(out[:, 4 * k:4 * k + 4],
                                   decode_boxes(np.ascontiguousarray(d[:, 4 * k:4 * k + 4]), p,
                                                HEAD_BOX_WEIGHTS))


def test_xywh_roundtrip_by_hand():
    b = np.array([[1.0, 2.0, 4.0, 8.0]])
    np.testing.assert_array_equal(box_xyxy_to_xywh(b), [[1, 2, 3, 6]])
    np.testing.assert_array_equal(box_xywh_to_xyxy(box_xyxy_to_xywh(b)), b)


# ---------------------------------------------------------------- properties

@given(box_arrays(min_n=1, min_wh=0.5), box_arrays(min_n=1, min_wh=0.5))
def test_iou_properties(a, b):
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert np.all((iou >= 0) & (iou <= 1 + 1e-12))
    np.testing.assert_allclose(box_iou(b, a), iou.T, rtol=1e-12, atol=0)
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0, rtol=1e-12)


@given(box_arrays(min_n=0, min_wh=1.0), box_arrays(min_n=0, min_wh=1.0),
       st.sampled_from([RPN_BOX_WEIGHTS, HEAD_BOX_WEIGHTS, (2.0, 3.0, 0.5, 7.0)]))
def test_encode_decode_roundtrip(g, p, weights):
    # sizes in [1, 50]: size ratios stay below exp(clamp) = 62.5, so decoding is exact
    n = min(len(g), len(p))
    g, p = g[:n], p[:n]
    d = encode_boxes(g, p, weights)
    assert d.shape == (n, 4)
    np.testing.assert_allclose(decode_boxes(d, p, weights), g, rtol=1e-10, atol=1e-9)


@given(box_arrays(min_n=0, max_n=6), st.integers(1, 60), st.integers(1, 60))
def test_clip_property(b, h, w):
    c = clip_boxes(b, (h, w))
    assert np.all(c[:, 0::2] >= 0) and np.all(c[:, 0::2] <= w)
    assert np.all(c[:, 1::2] >= 0) and np.all(c[:, 1::2] <= h)
    inside = (b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= w) & (b[:, 3] <= h)
    np.testing.assert_array_equal(c[inside], b[inside])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: box_iou(np.zeros((3, 3)), np.zeros((2, 4))), ValueError, "boxes1 must have shape"),
    (lambda: box_iou(np.zeros((3, 4), dtype=np.int64), np.zeros((2, 4))), TypeError, "floating"),
    (lambda: box_iou([[0, 0, 1, 1]], np.zeros((2, 4))), TypeError, "array"),
    (lambda: box_iou(np.array([[0, 0, np.nan, 1.0]]), np.zeros((2, 4))), ValueError, "NaN"),
    (lambda: box_area(np.zeros(4)), ValueError, "box_area"),
    (lambda: clip_boxes(np.zeros((1, 4)), (10,)), ValueError, "image_size"),
    (lambda: clip_boxes(np.zeros((1, 4)), (10, -1)), ValueError, "width"),
    (lambda: remove_small_boxes(np.zeros((1, 4)), -1.0), ValueError, "min_size"),
    (lambda: encode_boxes(np.ones((2, 4)), np.ones((3, 4))), ValueError, "same length"),
    (lambda: encode_boxes(np.ones((2, 4)), np.ones((2, 4)), (1, 1, 1)), ValueError, "4 entries"),
    (lambda: encode_boxes(np.ones((2, 4)), np.ones((2, 4)), (1, 1, 0, 1)), ValueError, "> 0"),
    (lambda: decode_boxes(np.ones((2, 5)), np.ones((2, 4))), ValueError, "(N, 4K)"),
    (lambda: decode_boxes(np.ones((2, 4)), np.ones((3, 4))), ValueError, "same length"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc, match=None) as info:
        call()
    assert msg in str(info.value)


# ---------------------------------------------------------------- torchvision cross-checks

@given(box_arrays(min_n=0), box_arrays(min_n=0))
def test_iou_matches_torchvision(a, b):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    ref = tv.ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(box_iou(a, b), ref, rtol=1e-10, atol=1e-12, equal_nan=True)


def test_iou_degenerate_matches_torchvision():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    b = np.array([[1.0, 1.0, 1.0, 1.0], [0, 0, 2, 2], [1.0, 1.0, 1.0, 3.0]])
    ref = tv.ops.box_iou(torch.from_numpy(b), torch.from_numpy(b)).numpy()
    np.testing.assert_array_equal(np.isnan(box_iou(b, b)), np.isnan(ref))
    np.testing.assert_allclose(box_iou(b, b), ref, equal_nan=True)


@given(box_arrays(min_n=0, max_n=6), st.integers(1, 80), st.integers(1, 80), st.floats(0, 30))
def test_clip_and_small_match_torchvision(b, h, w, m):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    tb = torch.from_numpy(b - 20)
    np.testing.assert_array_equal(clip_boxes(b - 20, (h, w)),
                                  tv.ops.clip_boxes_to_image(tb, (h, w)).numpy())
    np.testing.assert_array_equal(remove_small_boxes(b, m),
                                  tv.ops.remove_small_boxes(torch.from_numpy(b), m).numpy())


@given(box_arrays(min_n=0, min_wh=0.5), box_arrays(min_n=0, min_wh=0.5),
       st.sampled_from([RPN_BOX_WEIGHTS, HEAD_BOX_WEIGHTS]), st.integers(1, 3),
       st.integers(0, 2**31 - 1))
def test_box_coder_matches_torchvision(g, p, weights, k, seed):
    torch = pytest.importorskip("torch")
    _utils = pytest.importorskip("torchvision.models.detection._utils")
    n = min(len(g), len(p))
    g, p = g[:n], p[:n]
    coder = _utils.BoxCoder(weights)
    ref = coder.encode_single(torch.from_numpy(g), torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(encode_boxes(g, p, weights), ref, rtol=1e-10, atol=1e-12)
    d = np.random.default_rng(seed).normal(scale=2.0, size=(n, 4 * k))
    d[:, 2::4] *= 3  # reach the clamp sometimes
    ref = coder.decode_single(torch.from_numpy(d), torch.from_numpy(p)).numpy()
    np.testing.assert_allclose(decode_boxes(d, p, weights), ref, rtol=1e-10, atol=1e-9)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 20))
def test_hflip_boxes_is_an_involution_and_matches_flipped_masks(seed, n):
    from mrcnn_ref.boxes import hflip_boxes
    from mrcnn_ref.data.masks import masks_to_boxes

    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 60, (2, n))
    b = np.stack([x1, y1, x1 + rng.uniform(1, 4, n), y1 + rng.uniform(1, 4, n)], axis=1)
    np.testing.assert_allclose(hflip_boxes(hflip_boxes(b, 64), 64), b, atol=1e-12)
    # integer boxes of rectangle masks: the mirrored mask's tight box is the mirrored box
    x1, y1 = rng.integers(0, 60, 2)
    x2, y2 = x1 + rng.integers(1, 64 - x1 + 1), y1 + rng.integers(1, 64 - y1 + 1)
    m = np.zeros((1, 64, 64), bool)
    m[0, y1:y2, x1:x2] = True
    np.testing.assert_array_equal(masks_to_boxes(m[:, :, ::-1]), hflip_boxes(masks_to_boxes(m), 64))
    with pytest.raises(ValueError, match="hflip_boxes"):
        hflip_boxes(np.zeros((3, 5)), 64)
