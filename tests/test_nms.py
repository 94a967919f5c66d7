import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.nms import batched_nms, nms

METHODS = ["auto", "greedy", "sparse", "matrix"]


def nms_reference(boxes, scores, iou_threshold, idxs=None):
    """Plain-loop greedy NMS, written for clarity: an independent reference (test only)."""
    n = len(boxes)
    order = sorted(range(n), key=lambda i: -scores[i])  # Python's sort is stable
    suppressed = [False] * n
    keep = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        x1, y1, x2, y2 = boxes[i]
        area_i = (x2 - x1) * (y2 - y1)
        for j in order[a + 1:]:
            if suppressed[j] or (idxs is not None and idxs[j] != idxs[i]):
                continue
            u1, v1, u2, v2 = boxes[j]
            w = max(0.0, min(x2, u2) - max(x1, u1))
            h = max(0.0, min(y2, v2) - max(y1, v1))
            inter = w * h
            union = area_i + (u2 - u1) * (v2 - v1) - inter
            if union > 0 and inter / union > iou_threshold:
                suppressed[j] = True
    return np.array(keep, dtype=np.int64)


@st.composite
def nms_problems(draw, max_n=40):
    """Random boxes with duplicates, tied scores and zero-area boxes mixed in."""
    n = draw(st.integers(0, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    spread = draw(st.sampled_from([20.0, 60.0, 200.0]))
    xy = rng.uniform(0, spread, (n, 2))
    wh = rng.uniform(1, 40, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    if n >= 4 and draw(st.booleans()):
        k = n // 4
        boxes[rng.choice(n, k, replace=False)] = boxes[rng.choice(n, k)]  # exact duplicates
    if n >= 4 and draw(st.booleans()):
        z = rng.choice(n, 2, replace=False)
        boxes[z, 2:] = boxes[z, :2]  # zero-area boxes
    if draw(st.booleans()):
        scores = rng.integers(0, 4, n).astype(np.float64)  # many ties
    else:
        scores = rng.random(n)
    t = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]))
    classes = rng.integers(0, draw(st.integers(1, 4)), n)
    return boxes, scores, t, classes


# ---------------------------------------------------------------- hand-traced

def test_seed_example_four_boxes():
    # Seed 004: boxes A, B, C, D with scores S1 < S2 < S3 < S4. D is kept and suppresses C;
    # B is kept and suppresses A.
    boxes = np.array([[50.0, 0, 70, 20],     # A: overlaps B
                      [52.0, 2, 72, 22],     # B
                      [1.0, 1, 21, 21],      # C: overlaps D
                      [0.0, 0, 20, 20]])     # D
    scores = np.array([0.6, 0.7, 0.8, 0.9])
    for m in METHODS:
        np.testing.assert_array_equal(nms(boxes, scores, 0.6, method=m), [3, 1])
    # with a threshold above their IoU nothing is suppressed
    iou_dc = (19 * 19) / (800 - 19 * 19)
    np.testing.assert_array_equal(nms(boxes, scores, iou_dc + 1e-9), [3, 2, 1, 0])
    # IoU exactly at the threshold is not suppressed (strict >)
    b = np.array([[0.0, 0, 2, 2], [0.0, 0, 2, 1]])  # IoU = 2 / 4 = 0.5 exactly
    np.testing.assert_array_equal(nms(b, np.array([1.0, 0.5]), 0.5), [0, 1])
    np.testing.assert_array_equal(nms(b, np.array([1.0, 0.5]), 0.49), [0])


def test_ties_keep_lower_index_first():
    b = np.array([[0.0, 0, 10, 10]] * 3 + [[100.0, 100, 110, 110]])
    s = np.array([0.5, 0.5, 0.5, 0.5])
    for m in METHODS:
        np.testing.assert_array_equal(nms(b, s, 0.5, method=m), [0, 3])


def test_empty_and_single():
    for m in METHODS:
        out = nms(np.zeros((0, 4)), np.zeros(0), 0.5, method=m)
        assert out.dtype == np.int64 and out.shape == (0,)
        np.testing.assert_array_equal(nms(np.array([[0.0, 0, 1, 1]]), np.array([0.3]), 0.5), [0])
    out = batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), 0.5)
    assert out.dtype == np.int64 and out.shape == (0,)


def test_batched_by_hand():
    b = np.array([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [0.5, 0.5, 10.5, 10.5]])
    s = np.array([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(nms(b, s, 0.5), [0])
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 1, 0]), 0.5), [0, 1])
    np.testing.assert_array_equal(batched_nms(b, s, np.array([0, 1, 2]), 0.5), [0, 1, 2])


def test_large_chain_all_methods_agree():
    # a long chain: each box overlaps only its neighbours -> every other box is kept
    n = 3000
    x = np.arange(n) * 6.0
    b = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], axis=1)
    s = np.linspace(1, 0, n)
    expected = np.arange(0, n, 2)
    for m in METHODS:
        np.testing.assert_array_equal(nms(b, s, 0.2, method=m), expected)


def test_large_random_all_methods_agree():
    rng = np.random.default_rng(3)
    for spread in (100.0, 1000.0):
        xy = rng.uniform(0, spread, (4000, 2))
        b = np.concatenate([xy, xy + rng.uniform(5, 80, (4000, 2))], axis=1).astype(np.float32)
        s = rng.random(4000).astype(np.float32)
        c = rng.integers(0, 3, 4000)
        ref = nms(b, s, 0.6, method="greedy")
        for m in ("auto", "sparse", "matrix"):
            np.testing.assert_array_equal(nms(b, s, 0.6, method=m), ref)
        ref = batched_nms(b, s, c, 0.6, method="greedy")
        for m in ("auto", "sparse", "matrix"):
            np.testing.assert_array_equal(batched_nms(b, s, c, 0.6, method=m), ref)


def test_rpn_like_levels_all_methods_agree():
    """Proposals as the RPN makes them on a 128-px image: five levels (the categories) of up to
    500 heavily overlapping boxes around a few objects, NMS 0.7 -- the case "auto" sends to the
    suppression-matrix method."""
    rng = np.random.default_rng(7)
    centres = rng.uniform(20, 108, (4, 2))
    boxes, levels = [], []
    for lvl, n in enumerate((500, 500, 500, 144, 36)):
        c = centres[rng.integers(0, 4, n)] + rng.normal(0, 6, (n, 2))
        half = rng.uniform(4, 40, (n, 2)) * (1 + lvl) / 3
        boxes.append(np.clip(np.concatenate([c - half, c + half], axis=1), 0, 128))
        levels.append(np.full(n, lvl))
    b = np.concatenate(boxes).astype(np.float32)
    s = rng.random(len(b)).astype(np.float32)
    c = np.concatenate(levels)
    ref = nms_reference(b, s, 0.7, c)
    for m in METHODS:
        np.testing.assert_array_equal(batched_nms(b, s, c, 0.7, method=m), ref)


# ---------------------------------------------------------------- properties

@given(nms_problems())
def test_nms_matches_reference(problem):
    boxes, scores, t, classes = problem
    ref = nms_reference(boxes, scores, t)
    for m in METHODS:
        np.testing.assert_array_equal(nms(boxes, scores, t, method=m), ref)
    ref = nms_reference(boxes, scores, t, classes)
    for m in METHODS:
        np.testing.assert_array_equal(batched_nms(boxes, scores, classes, t, method=m), ref)


@given(nms_problems())
def test_nms_result_properties(problem):
    boxes, scores, t, _ = problem
    keep = nms(boxes, scores, t)
    assert keep.dtype == np.int64
    assert np.all(np.diff(scores[keep]) <= 0)          # sorted by decreasing score
    assert len(np.unique(keep)) == len(keep)
    if len(keep) > 1:                                  # no two kept boxes overlap by more than t
        from mrcnn_ref.boxes import box_iou
        iou = box_iou(boxes[keep], boxes[keep])
        np.fill_diagonal(iou, 0)
        assert not np.any(iou > t)


@given(nms_problems(max_n=150), st.integers(0, 160))
def test_max_keep_is_a_prefix_of_the_full_result(problem, k):
    """max_keep=K returns exactly the K best kept boxes (the greedy loop's early exit), for every
    method, plain and batched; compared with the independent reference."""
    boxes, scores, t, classes = problem
    ref = nms_reference(boxes, scores, t)[:k]
    ref_b = nms_reference(boxes, scores, t, classes)[:k]
    for m in METHODS:
        np.testing.assert_array_equal(nms(boxes, scores, t, method=m, max_keep=k), ref)
        np.testing.assert_array_equal(batched_nms(boxes, scores, classes, t, method=m, max_keep=k), ref_b)


def test_max_keep_rpn_like():
    """The RPN's call: the best 256 of ~1,700 proposals on five levels, float32 (the greedy loop
    stops early; the result is the full NMS cut to 256)."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(20, 108, (4, 2))
    n_per = (500, 500, 500, 144, 36)
    c = np.repeat(np.arange(5), n_per)
    mid = centres[rng.integers(0, 4, c.size)] + rng.normal(0, 6, (c.size, 2))
    half = rng.uniform(4, 40, (c.size, 2)) * (1 + c[:, None]) / 3
    b = np.clip(np.concatenate([mid - half, mid + half], axis=1), 0, 128).astype(np.float32)
    s = rng.random(c.size).astype(np.float32)
    full = batched_nms(b, s, c, 0.7)
    assert len(full) > 256                       # the cut really cuts
    for k in [*range(1, 300), len(full), len(full) + 10]:   # every block boundary of the loop
        np.testing.assert_array_equal(batched_nms(b, s, c, 0.7, max_keep=k), full[:k])


# ---------------------------------------------------------------- torchvision

@given(nms_problems(max_n=60))
def test_matches_torchvision(problem):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    boxes, scores, t, classes = problem
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    ref = tv.ops.nms(tb, ts, t).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, t), ref)
    ref = tv.ops.batched_nms(tb, ts, torch.from_numpy(classes), t).numpy()
    np.testing.assert_array_equal(batched_nms(boxes, scores, classes, t), ref)


def test_matches_torchvision_large_float32():
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    rng = np.random.default_rng(7)
    for spread, n in ((1000.0, 5000), (150.0, 3000)):
        xy = rng.uniform(0, spread, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(5, 150, (n, 2))], axis=1).astype(np.float32)
        s = rng.random(n).astype(np.float32)
        for t in (0.5, 0.7):
            ref = tv.ops.nms(torch.from_numpy(b), torch.from_numpy(s), t).numpy()
            np.testing.assert_array_equal(nms(b, s, t), ref)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: nms(np.zeros((3, 4)), np.zeros(2), 0.5), ValueError, "one entry per box"),
    (lambda: nms(np.zeros((3, 5)), np.zeros(3), 0.5), ValueError, "shape (N, 4)"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), -0.1), ValueError, "iou_threshold"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), 1.5), ValueError, "iou_threshold"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), "0.5"), TypeError, "iou_threshold"),
    (lambda: nms(np.full((3, 4), np.nan), np.zeros(3), 0.5), ValueError, "NaN"),
    (lambda: nms(np.zeros((3, 4)), np.full(3, np.nan), 0.5), ValueError, "NaN"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), 0.5, method="fast"), ValueError, "method"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), 0.5, max_keep=-1), ValueError, "max_keep"),
    (lambda: nms(np.zeros((3, 4)), np.zeros(3), 0.5, max_keep=2.0), TypeError, "max_keep"),
    (lambda: batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(3, dtype=int), 0.5, max_keep=True),
     TypeError, "max_keep"),
    (lambda: batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(3), 0.5), TypeError, "idxs"),
    (lambda: batched_nms(np.zeros((3, 4)), np.zeros(3), np.zeros(2, dtype=int), 0.5),
     ValueError, "idxs"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc) as info:
        call()
    assert msg in str(info.value)
