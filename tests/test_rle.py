"""Tests for mrcnn_ref.data.rle: COCO run-length encoding."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mrcnn_ref.data.rle import (
    counts_from_string,
    counts_to_string,
    polygons_to_mask,
    rle_area,
    rle_decode,
    rle_encode,
    rle_encode_uncompressed,
    rle_to_bbox,
)


@st.composite
def masks(draw, max_side=24):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["random", "zeros", "ones", "rect"]))
    if kind == "zeros":
        return np.zeros((h, w), bool)
    if kind == "ones":
        return np.ones((h, w), bool)
    if kind == "rect":
        m = np.zeros((h, w), bool)
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        m[y0:y0 + draw(st.integers(1, h)), x0:x0 + draw(st.integers(1, w))] = True
        return m
    return draw(arrays(bool, (h, w)))


# ------------------------------------------------------------------ hand-computed examples
def test_hand_example_counts():
    m = np.array([[0, 1], [1, 1], [0, 0]], bool)   # column-major: 0 1 0 | 1 1 0
    r = rle_encode_uncompressed(m)
    assert r == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}
    # starts with a zero-length 0-run when the first pixel is set
    assert rle_encode_uncompressed(np.ones((2, 2), bool))["counts"] == [0, 4]
    assert rle_encode_uncompressed(np.zeros((2, 3), bool))["counts"] == [6]


def test_hand_example_string():
    # counts [1, 1, 1, 2, 1]: x = [1, 1, 1, 2-1=1, 1-1=0] -> chars chr(48+v) = "11110"
    assert counts_to_string([1, 1, 1, 2, 1]) == "11110"
    # a negative difference: counts [5, 1, 5, 9, 2] -> x = [5, 1, 5, 8, -3];
    # -3 = ...11101 -> one chunk 0b11101 = 29 with sign bit 0x10 set -> chr(48 + 29) = "M"
    assert counts_to_string([5, 1, 5, 9, 2]) == "5158M"
    # 40 needs two chunks: 40 = 0b01000_01000 -> chunk 8 (+0x20 more) then 1 -> "X1"
    assert counts_to_string([40]) == "X1"
    for c in ([1, 1, 1, 2, 1], [5, 1, 5, 9, 2], [40], [0, 1000000, 3]):
        np.testing.assert_array_equal(counts_from_string(counts_to_string(c)), c)


def test_area_and_bbox_hand():
    m = np.zeros((5, 6), bool)
    m[1:3, 2:5] = True
    m[4, 0] = True
    r = rle_encode(m)
    assert rle_area(r) == 7
    assert rle_to_bbox(r) == [0.0, 1.0, 5.0, 4.0]
    assert rle_to_bbox(rle_encode(np.zeros((3, 3), bool))) == [0.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------ properties
@given(masks())
def test_round_trip(m):
    r = rle_encode(m)
    assert isinstance(r["counts"], str) and r["size"] == list(m.shape)
    np.testing.assert_array_equal(rle_decode(r), m)
    np.testing.assert_array_equal(rle_decode({"size": r["size"], "counts": r["counts"].encode()}), m)
    u = rle_encode_uncompressed(m)
    np.testing.assert_array_equal(rle_decode(u), m)
    assert sum(u["counts"]) == m.size
    assert rle_area(r) == rle_area(u) == int(m.sum())
    ys, xs = np.nonzero(m)
    want = ([0.0] * 4 if m.sum() == 0 else
            [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    assert rle_to_bbox(r) == [float(v) for v in want]


@given(st.lists(st.integers(0, 10**7), min_size=0, max_size=30))
def test_counts_string_round_trip(c):
    np.testing.assert_array_equal(counts_from_string(counts_to_string(c)), np.array(c, np.int64))


# ------------------------------------------------------------------ pycocotools reference
@given(masks(max_side=40))
def test_matches_pycocotools(m):
    mask_api = pytest.importorskip("pycocotools.mask")
    ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
    ours = rle_encode(m)
    assert ours["counts"] == ref["counts"].decode("ascii")
    assert ours["size"] == list(ref["size"])
    np.testing.assert_array_equal(rle_decode(ref), m)                 # their bytes, our decoder
    assert rle_area(ref) == int(mask_api.area(ref))
    np.testing.assert_array_equal(rle_to_bbox(ref), mask_api.toBbox(ref))


def test_matches_pycocotools_large_runs():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    m = np.zeros((700, 900), bool)
    m[100:650, 300:880] = True
    m[rng.integers(0, 700, 50), rng.integers(0, 900, 50)] = True
    ref = mask_api.encode(np.asfortranarray(m.astype(np.uint8)))
    assert rle_encode(m)["counts"] == ref["counts"].decode()
    np.testing.assert_array_equal(rle_decode(ref), m)


def test_polygons_square_and_union():
    sq = [10, 10, 20, 10, 20, 20, 10, 20]                   # covers pixels 10..19 x 10..19
    m = polygons_to_mask([sq], 30, 30)
    assert m.sum() == 100 and m[10:20, 10:20].all()
    m2 = polygons_to_mask([sq, [0, 0, 5, 0, 5, 5, 0, 5]], 30, 30)
    assert m2.sum() == 125


def test_polygons_close_to_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    h, w = 60, 80
    checked = 0
    for _ in range(60):
        n = rng.integers(3, 9)                              # jittered regular n-gons (not slivers)
        c = rng.uniform(15, 45, 2)
        rad = rng.uniform(6, 20)
        ang = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
        poly = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1).ravel().tolist()
        ref = mask_api.decode(mask_api.merge(mask_api.frPyObjects([poly], h, w))).astype(bool)
        if ref.sum() < 150:
            continue                                        # tiny slivers: boundary dominates
        ours = polygons_to_mask([poly], h, w)
        iou = (ours & ref).sum() / (ours | ref).sum()
        assert iou >= 0.9, iou
        checked += 1
    assert checked > 25


# ------------------------------------------------------------------ bad input
def test_bad_input():
    with pytest.raises(ValueError, match="rle_encode: mask must have 2 dimensions"):
        rle_encode(np.zeros((2, 2, 2), bool))
    with pytest.raises(TypeError, match="rle_encode"):
        rle_encode([[0, 1]])
    with pytest.raises(ValueError, match="binary"):
        rle_encode(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="rle_decode: run lengths sum to 5"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="'size' and 'counts'"):
        rle_decode({"counts": [1]})
    with pytest.raises(ValueError, match="ends in the middle"):
        counts_from_string("X")
    with pytest.raises(ValueError, match="polygons\\[0\\]"):
        polygons_to_mask([[1, 2, 3, 4]], 10, 10)
