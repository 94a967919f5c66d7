"""Tests for mrcnn_ref.data.masks: boxes from masks, mini-masks, mask targets, pasting."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.transform import resize

from mrcnn_ref.backend import asnumpy
from mrcnn_ref.data.masks import (expand_mask, mask_targets_for_rois, masks_to_boxes,
                                  minimize_mask, paste_masks_in_image)
from mrcnn_ref.data.shapes import ShapesDataset


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def rect_mask(h, w, x1, y1, x2, y2):
    m = np.zeros((h, w), dtype=bool)
    m[y1:y2, x1:x2] = True
    return m


# ----------------------------------------------------------------------------- masks_to_boxes
def test_masks_to_boxes_hand_values():
    m = np.zeros((3, 6, 8), dtype=bool)
    m[0, 2, 3] = True                      # one pixel: (3, 2, 4, 3)
    m[1, 1:4, 2:7] = True                  # rectangle
    m[1, 5, 0] = True                      # plus a stray pixel at the bottom-left
    boxes = masks_to_boxes(m)              # m[2] empty
    np.testing.assert_array_equal(boxes, [[3, 2, 4, 3], [0, 1, 7, 6], [0, 0, 0, 0]])
    assert boxes.dtype == np.float32
    assert masks_to_boxes(np.zeros((0, 4, 4), bool)).shape == (0, 4)


@given(st.data())
def test_masks_to_boxes_matches_loop_reference(data):
    n = data.draw(st.integers(1, 4))
    h, w = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    seed = data.draw(st.integers(0, 2**31))
    m = np.random.default_rng(seed).random((n, h, w)) < 0.1
    ref = np.zeros((n, 4), np.float32)
    for k in range(n):
        ys, xs = np.nonzero(m[k])
        if len(xs):
            ref[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    np.testing.assert_array_equal(masks_to_boxes(m), ref)


def test_masks_to_boxes_rejects_bad_input():
    with pytest.raises(ValueError, match="masks_to_boxes: masks"):
        masks_to_boxes(np.zeros((4, 4), bool))
    with pytest.raises(TypeError, match="masks_to_boxes: masks"):
        masks_to_boxes([[[True]]])


# ----------------------------------------------------------------------------- paste
def test_paste_identity_when_grid_matches_box():
    """Box of integer size equal to M: every pixel centre sits on a grid cell centre."""
    rng = np.random.default_rng(0)
    probs = rng.random((2, 5, 5))
    boxes = np.array([[3, 2, 8, 7], [0, 0, 5, 5]], dtype=np.float64)
    out = paste_masks_in_image(probs, boxes, (10, 12))
    want = np.zeros((2, 10, 12), bool)
    want[0, 2:7, 3:8] = probs[0] >= 0.5
    want[1, 0:5, 0:5] = probs[1] >= 0.5
    np.testing.assert_array_equal(out, want)


@settings(max_examples=30)
@given(st.data())
def test_paste_matches_skimage_resize_for_integer_boxes(data):
    """skimage's order-1 resize with mode='edge' uses the same centre-aligned mapping."""
    m = data.draw(st.integers(2, 9))
    bw, bh = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    x1, y1 = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    seed = data.draw(st.integers(0, 2**31))
    probs = np.random.default_rng(seed).random((1, m, m))
    out = paste_masks_in_image(probs, np.array([[x1, y1, x1 + bw, y1 + bh]], float), (30, 30))
    ref_vals = resize(probs[0], (bh, bw), order=1, mode="edge", anti_aliasing=False)
    want = np.zeros((30, 30), bool)
    want[y1:y1 + bh, x1:x1 + bw] = ref_vals >= 0.5
    np.testing.assert_array_equal(out[0], want)


def test_paste_fractional_box_and_clipping():
    probs = np.ones((1, 4, 4))
    # pixel centres inside [2.4, 6.6) x [-3, 2.5): cols 2..6 (centres 2.5..6.5), rows 0..1
    out = paste_masks_in_image(probs, np.array([[2.4, -3.0, 6.6, 2.5]]), (5, 8))
    want = np.zeros((5, 8), bool)
    want[0:2, 2:7] = True
    np.testing.assert_array_equal(out[0], want)
    # threshold <= 0 never switches on pixels outside the box
    out0 = paste_masks_in_image(np.zeros((1, 4, 4)), np.array([[1.0, 1.0, 3.0, 3.0]]), (5, 5),
                                threshold=0.0)
    np.testing.assert_array_equal(out0[0], rect_mask(5, 5, 1, 1, 3, 3))


def test_paste_errors_and_empty():
    assert paste_masks_in_image(np.zeros((0, 28, 28)), np.zeros((0, 4)), (7, 9)).shape == (0, 7, 9)
    with pytest.raises(ValueError, match="paste_masks_in_image: boxes"):
        paste_masks_in_image(np.zeros((1, 4, 4)), np.array([[2.0, 0, 1, 3]]), (5, 5))
    with pytest.raises(ValueError, match="same length"):
        paste_masks_in_image(np.zeros((2, 4, 4)), np.array([[0.0, 0, 1, 3]]), (5, 5))


# ----------------------------------------------------------------------------- mini-masks
def test_minimize_rectangle_is_full_and_expand_restores_it():
    m = rect_mask(40, 50, 7, 3, 31, 20)[None]
    boxes = masks_to_boxes(m)
    mini = minimize_mask(boxes, m, (56, 56))
    assert mini.shape == (1, 56, 56) and mini.all()
    back = expand_mask(boxes, mini, (40, 50, 3))
    np.testing.assert_array_equal(back, m)


def test_minimize_expand_roundtrip_on_shapes():
    ds = ShapesDataset("val", num_images=6)
    for i in range(6):
        s = ds[i]
        mini = minimize_mask(s["boxes"], s["masks"], (56, 56))
        back = expand_mask(s["boxes"], mini, s["image"].shape)
        for a, b in zip(s["masks"], back):
            assert iou(a, b) >= 0.9
            assert (b & ~a).sum() <= 0.1 * a.sum()       # little spill outside the shape


def test_minimize_mask_errors():
    with pytest.raises(ValueError, match="same length"):
        minimize_mask(np.array([[0.0, 0, 2, 2]]), np.zeros((2, 4, 4), bool))
    with pytest.raises(ValueError, match="minimize_mask: boxes"):
        minimize_mask(np.array([[0.0, 0, 0, 2]]), np.zeros((1, 4, 4), bool))


# ----------------------------------------------------------------------------- mask targets


def _need_roi_align():
    return pytest.importorskip("mrcnn_ref.ops.roi_align")


@pytest.mark.parametrize("box", [(5, 7, 15, 12), (0, 0, 40, 30), (10, 4, 33, 29), (3, 2, 31, 30),
                                 (0, 1, 37, 29)])
def test_mask_target_of_box_mask_fills(box):
    _need_roi_align()
    x1, y1, x2, y2 = box
    masks = np.stack([rect_mask(30, 40, x1, y1, x2, y2), np.ones((30, 40), bool)])
    M = 28 if min(x2 - x1, y2 - y1) >= 23 else 4
    t = mask_targets_for_rois(masks, np.array([0]), np.array([box], np.float64), M=M)
    assert t.shape == (1, M, M) and t.dtype == np.float64
    assert (t == 1).all()
    # an RoI twice as wide (extending right) is half filled
    t2 = mask_targets_for_rois(masks, np.array([0]), np.array([[x1, y1, 2 * x2 - x1, y2]], float), M=M)
    np.testing.assert_array_equal(t2[0], np.repeat([[1] * (M // 2) + [0] * (M // 2)], M, axis=0))


def test_mask_target_small_box_loses_only_corners():
    """Documented bilinear corner effect for RoIs smaller than M: 10 x 5 box, M = 28."""
    _need_roi_align()
    masks = rect_mask(30, 40, 5, 7, 15, 12)[None]
    t = mask_targets_for_rois(masks, np.array([0]), np.array([[5.0, 7, 15, 12]]), M=28)[0]
    assert t[1:-1].all() and t[:, 1:-1].all()
    assert t[0, 0] == t[0, -1] == t[-1, 0] == t[-1, -1] == 0


def test_mask_target_matches_naive_reference():
    """Cell (i, j) = bilinear sample of the mask at the bin centre (1 sample per bin for RoIs < M)."""
    _need_roi_align()
    rng = np.random.default_rng(3)
    mask = rng.random((12, 14)) < 0.5
    box = np.array([2.3, 1.7, 11.1, 9.4])
    M = 16
    t = mask_targets_for_rois(mask[None], np.array([0]), box[None], M=M)[0]

    def sample(y, x):  # bilinear at continuous (y, x), aligned: pixel coordinate = X - 0.5
        y, x = max(y - 0.5, 0.0), max(x - 0.5, 0.0)
        y0, x0 = int(y), int(x)
        y1, x1 = min(y0 + 1, 11), min(x0 + 1, 13)
        ty, tx = y - y0, x - x0
        return ((1 - ty) * (1 - tx) * mask[y0, x0] + (1 - ty) * tx * mask[y0, x1]
                + ty * (1 - tx) * mask[y1, x0] + ty * tx * mask[y1, x1])

    bw, bh = (box[2] - box[0]) / M, (box[3] - box[1]) / M
    ref = np.array([[sample(box[1] + (i + 0.5) * bh, box[0] + (j + 0.5) * bw) >= 0.5
                     for j in range(M)] for i in range(M)])
    np.testing.assert_array_equal(t, ref.astype(float))


def test_mask_targets_pick_the_matched_gt_and_values_are_binary():
    _need_roi_align()
    ds = ShapesDataset("val", num_images=3)
    s = ds[2]
    masks, boxes = s["masks"], s["boxes"].astype(np.float64)
    g = len(masks)
    matched = np.arange(g)[::-1].copy()
    t = mask_targets_for_rois(masks, matched, boxes[matched], M=14)
    assert set(np.unique(t).tolist()) <= {0.0, 1.0}
    for r in range(g):
        single = mask_targets_for_rois(masks[matched[r]:matched[r] + 1], np.array([0]),
                                       boxes[matched[r]][None], M=14)
        np.testing.assert_array_equal(t[r], single[0])


def test_paste_of_target_recovers_the_shape():
    """paste(target(mask)) ~ mask for shapes of at least 20 px: IoU >= 0.9."""
    _need_roi_align()
    ds = ShapesDataset("train", num_images=12)
    for i in range(12):
        s = ds[i]
        boxes = s["boxes"].astype(np.float64)
        keep = (boxes[:, 2] - boxes[:, 0] >= 20) & (boxes[:, 3] - boxes[:, 1] >= 20)
        if not keep.any():
            continue
        masks, boxes = s["masks"][keep], boxes[keep]
        t = mask_targets_for_rois(masks, np.arange(len(masks)), boxes, M=28)
        pasted = paste_masks_in_image(t, boxes, masks.shape[1:])
        for a, b in zip(masks, pasted):
            assert iou(a, b) >= 0.9


def test_mask_targets_from_mini_masks_agree_with_full_masks():
    _need_roi_align()
    ds = ShapesDataset("train", num_images=4)
    for i in range(4):
        s = ds[i]
        masks, gt_boxes = s["masks"], s["boxes"].astype(np.float64)
        g = len(masks)
        rng = np.random.default_rng(i)
        matched = rng.integers(0, g, size=6)
        jitter = rng.uniform(-3, 3, size=(6, 4))
        rois = gt_boxes[matched] + jitter
        full = mask_targets_for_rois(masks, matched, rois, M=28)
        mini = minimize_mask(gt_boxes, masks, (56, 56))
        from_mini = mask_targets_for_rois(mini, matched, rois, M=28, gt_boxes=gt_boxes)
        for a, b in zip(full, from_mini):
            assert iou(a > 0, b > 0) >= 0.85


def test_mask_targets_errors_and_empty():
    _need_roi_align()
    masks = np.zeros((2, 8, 8), bool)
    assert mask_targets_for_rois(masks, np.zeros(0, np.int64), np.zeros((0, 4))).shape == (0, 28, 28)
    with pytest.raises(ValueError, match="matched_gt"):
        mask_targets_for_rois(masks, np.array([2]), np.array([[0.0, 0, 4, 4]]))
    with pytest.raises(TypeError, match="matched_gt"):
        mask_targets_for_rois(masks, np.array([0.0]), np.array([[0.0, 0, 4, 4]]))
    with pytest.raises(ValueError, match="gt_boxes"):
        mask_targets_for_rois(masks, np.array([0]), np.array([[0.0, 0, 4, 4]]),
                              gt_boxes=np.zeros((1, 4)))


# ----------------------------------------------------------------------------- xp-generic
def test_functions_run_on_the_default_backend(xp):
    ds = ShapesDataset("val", num_images=1)
    s = ds[0]
    masks = xp.asarray(s["masks"])
    boxes = masks_to_boxes(masks)
    np.testing.assert_array_equal(asnumpy(boxes), s["boxes"])
    mini = minimize_mask(boxes, masks, (28, 28))
    back = expand_mask(boxes, mini, s["image"].shape)
    np.testing.assert_array_equal(asnumpy(back), expand_mask(s["boxes"], asnumpy(mini), (128, 128)))


def test_paste_chunking_gives_the_same_result(monkeypatch):
    import mrcnn_ref.data.masks as masks_mod

    rng = np.random.default_rng(1)
    probs = rng.random((7, 6, 6))
    x1y1 = rng.uniform(-3, 15, (7, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(1, 12, (7, 2))], axis=1)
    whole = paste_masks_in_image(probs, boxes, (20, 21))
    monkeypatch.setattr(masks_mod, "_PASTE_CHUNK_VALUES", 2 * 20 * 21)   # chunks of 2 RoIs
    np.testing.assert_array_equal(paste_masks_in_image(probs, boxes, (20, 21)), whole)
    assert whole.any()


@settings(max_examples=20)
@given(st.data())
def test_paste_matches_per_pixel_reference_for_fractional_boxes(data):
    """Pixel (r, c) takes the bilinear value at u = (c + 0.5 - x1) / (x2 - x1) * M - 0.5 (clamped)."""
    m = data.draw(st.integers(2, 7))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(-4, 10, 2)
    x2, y2 = x1 + rng.uniform(0.8, 14), y1 + rng.uniform(0.8, 14)
    probs = rng.random((1, m, m))
    h, w = 12, 13
    out = paste_masks_in_image(probs, np.array([[x1, y1, x2, y2]]), (h, w))[0]

    def coord(p, lo, hi):
        u = min(max((p + 0.5 - lo) / (hi - lo) * m - 0.5, 0.0), m - 1.0)
        i0 = int(np.floor(u))
        return i0, min(i0 + 1, m - 1), u - i0

    want = np.zeros((h, w), bool)
    for r in range(h):
        for c in range(w):
            if not (x1 <= c + 0.5 < x2 and y1 <= r + 0.5 < y2):
                continue
            a0, a1, ty = coord(r, y1, y2)
            b0, b1, tx = coord(c, x1, x2)
            p = probs[0]
            v = ((1 - ty) * ((1 - tx) * p[a0, b0] + tx * p[a0, b1])
                 + ty * ((1 - tx) * p[a1, b0] + tx * p[a1, b1]))
            want[r, c] = v >= 0.5
    np.testing.assert_array_equal(out, want)
