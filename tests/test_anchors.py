import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.anchors import (
    FASTER_RCNN_ANCHORS,
    FPN_ANCHORS,
    generate_anchors,
    grid_anchors,
    label_anchors,
    pyramid_anchors,
    sample_labels,
)
from mrcnn_ref.boxes import box_area, box_iou


# ---------------------------------------------------------------- hand-computed values

def test_size_128_ratio_1_at_stride_16():
    base = generate_anchors([128], [1.0])
    np.testing.assert_array_equal(base, [[-64, -64, 64, 64]])
    a = grid_anchors(base, (2, 3), 16)
    assert a.shape == (6, 4)
    # (y, x) order: row 0 -> x = 0, 16, 32; row 1 -> y = 16
    np.testing.assert_array_equal(a[:4], [[-64, -64, 64, 64], [-48, -64, 80, 64],
                                          [-32, -64, 96, 64], [-64, -48, 64, 80]])
    a_half = grid_anchors(base, (2, 3), 16, offset=0.5)   # centre on the cell: (8, 8)
    np.testing.assert_array_equal(a_half[0], [-56, -56, 72, 72])


def test_generate_anchors_shapes_and_ratios():
    base = generate_anchors([128, 256, 512], [0.5, 1.0, 2.0], dtype=np.float64)
    assert base.shape == (9, 4) and base.dtype == np.float64
    w = base[:, 2] - base[:, 0]
    h = base[:, 3] - base[:, 1]
    np.testing.assert_allclose(w * h, np.tile([128.0**2, 256.0**2, 512.0**2], 3))  # area = size^2
    np.testing.assert_allclose(h / w, np.repeat([0.5, 1.0, 2.0], 3))              # ratio = h / w
    np.testing.assert_allclose(base[:, :2], -base[:, 2:])                          # centred at 0
    np.testing.assert_allclose(base[0], [-128 / math.sqrt(2), -64 / math.sqrt(2),
                                         128 / math.sqrt(2), 64 / math.sqrt(2)])


def test_presets():
    per, allx = pyramid_anchors([(8, 8)], **FASTER_RCNN_ANCHORS)
    assert len(per) == 1 and allx.shape == (8 * 8 * 9, 4)
    sizes = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    per, allx = pyramid_anchors(sizes, **FPN_ANCHORS)
    assert [p.shape[0] for p in per] == [h * w * 3 for h, w in sizes]
    assert allx.shape == (sum(h * w * 3 for h, w in sizes), 4)
    for level, (p, size) in enumerate(zip(per, (32, 64, 128, 256, 512))):
        np.testing.assert_allclose(box_area(p.astype(np.float64)), size**2, rtol=1e-5)
        stride = FPN_ANCHORS["strides"][level]
        np.testing.assert_allclose((p[3, :2] + p[3, 2:]) / 2, [stride, 0], atol=1e-4)  # cell (0, 1)


@given(st.integers(1, 5), st.integers(1, 5), st.sampled_from([4, 8, 16, 32]),
       st.sampled_from([0.0, 0.5]))
def test_grid_centres(h, w, stride, offset):
    base = generate_anchors([32, 64], [0.5, 1, 2], dtype=np.float64)
    a = grid_anchors(base, (h, w), stride, offset).reshape(h, w, 6, 4)
    centre = (a[..., :2] + a[..., 2:]) / 2
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    np.testing.assert_allclose(centre[..., 0], ((xs + offset) * stride)[..., None] + 0 * centre[..., 0],
                               atol=1e-9)
    np.testing.assert_allclose(centre[..., 1], ((ys + offset) * stride)[..., None] + 0 * centre[..., 1],
                               atol=1e-9)
    np.testing.assert_allclose(a - a[:1, :1], (a - a[:1, :1])[..., :1, :].repeat(6, axis=2),
                               atol=1e-9)  # every anchor of a cell is shifted alike


def test_label_anchors_by_hand():
    anchors = np.array([[0.0, 0, 10, 10],      # IoU 1 with gt 0 -> positive
                        [0.0, 0, 10, 5],       # IoU 0.5 -> ignored
                        [0.0, 0, 10, 2],       # IoU 0.2 -> negative
                        [50.0, 50, 60, 60],    # no overlap -> negative
                        [100.0, 100, 110, 108],  # gt 1's best (IoU 0.8 / ... ) -> positive
                        [100.0, 100, 110, 104]])
    gt = np.array([[0.0, 0, 10, 10], [100.0, 100, 110, 112]])
    labels, matched = label_anchors(anchors, gt, allow_low_quality=False)
    assert labels.dtype == np.int8 and matched.dtype == np.int64
    # anchor 4: IoU 80/120 = 0.667 -> ignored without the low-quality rule
    np.testing.assert_array_equal(labels, [1, -1, 0, 0, -1, -1])  # anchor 5: IoU 40/120
    labels, matched = label_anchors(anchors, gt)
    np.testing.assert_array_equal(labels, [1, -1, 0, 0, 1, -1])
    np.testing.assert_array_equal(matched[[0, 4]], [0, 1])


def test_label_anchors_border_and_empty():
    anchors = np.array([[-5.0, 0, 10, 10], [0.0, 0, 10, 10], [20.0, 20, 30, 31]])
    gt = np.array([[-5.0, 0, 10, 10]])
    labels, _ = label_anchors(anchors, gt, image_size=(30, 30))
    # anchor 0 crosses the border: ignored even though it matches exactly; 1 becomes gt's best
    np.testing.assert_array_equal(labels, [-1, 1, -1])
    labels, _ = label_anchors(anchors, gt, image_size=(30, 30), allowed_border=5)
    np.testing.assert_array_equal(labels, [1, -1, 0])
    labels, matched = label_anchors(anchors, np.zeros((0, 4)))
    np.testing.assert_array_equal(labels, [0, 0, 0])
    np.testing.assert_array_equal(matched, [-1, -1, -1])


@st.composite
def labeling_problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    base = generate_anchors([8, 16], [0.5, 1, 2], dtype=np.float64)
    anchors = grid_anchors(base, (6, 6), 8, offset=0.5)
    g = draw(st.integers(0, 5))
    xy = rng.uniform(0, 40, (g, 2))
    gt = np.concatenate([xy, xy + rng.uniform(3, 20, (g, 2))], axis=1)
    return anchors, gt


@given(labeling_problems(), st.booleans())
def test_label_rules_hold(problem, low_quality):
    anchors, gt = problem
    labels, matched = label_anchors(anchors, gt, 0.7, 0.3, allow_low_quality=low_quality)
    assert set(np.unique(labels)) <= {-1, 0, 1}
    if len(gt) == 0:
        assert np.all(labels == 0)
        return
    iou = box_iou(anchors, gt)
    best = iou.max(axis=1)
    np.testing.assert_array_equal(iou[np.arange(len(anchors)), matched], best)
    assert np.all(labels[best >= 0.7] == 1)
    gt_max = iou.max(axis=0)
    is_gt_best = ((iou == gt_max) & (gt_max > 0)).any(axis=1) if low_quality else np.zeros(len(anchors), bool)
    np.testing.assert_array_equal(labels == 1, (best >= 0.7) | is_gt_best)
    np.testing.assert_array_equal(labels == 0, (best < 0.3) & ~is_gt_best)
    if low_quality:  # every ground truth has at least one positive anchor
        assert np.all((iou[labels == 1] == gt_max).any(axis=0) | (gt_max == 0))


@given(st.integers(0, 300), st.integers(0, 600), st.integers(1, 300), st.integers(0, 99))
def test_sample_labels_rules(n_pos, n_neg, batch, seed):
    rng = np.random.default_rng(seed)
    labels = np.array([1] * n_pos + [0] * n_neg + [-1] * 50, dtype=np.int8)
    labels = labels[rng.permutation(labels.size)]
    out = sample_labels(labels, batch, 0.5, np.random.default_rng(seed))
    assert out.dtype == labels.dtype and out.shape == labels.shape
    n_p, n_n = int((out == 1).sum()), int((out == 0).sum())
    assert n_p == min(int(batch * 0.5), n_pos)
    assert n_n == min(batch - n_p, n_neg)
    assert np.all(labels[out == 1] == 1) and np.all(labels[out == 0] == 0)
    again = sample_labels(labels, batch, 0.5, np.random.default_rng(seed))
    np.testing.assert_array_equal(out, again)  # deterministic given the generator


def test_sample_labels_by_hand():
    labels = np.array([1, 1, 1, 0, 0, -1], dtype=np.int8)
    out = sample_labels(labels, batch_size=4, positive_fraction=0.5, rng=0)
    assert (out == 1).sum() == 2 and (out == 0).sum() == 2 and out[5] == -1


# ---------------------------------------------------------------- torchvision

@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([(4, 8), (8, 16), (16, 32)]),
       st.sampled_from([(16, 32), (32,), (8, 64)]))
def test_matches_torchvision_anchor_generator(fh, fw, strides, sizes0):
    torch = pytest.importorskip("torch")
    ag_mod = pytest.importorskip("torchvision.models.detection.anchor_utils")
    il = pytest.importorskip("torchvision.models.detection.image_list")
    # sizes/ratios whose base anchors are integers, so torchvision's rounding changes nothing
    sizes = (sizes0, tuple(2 * v for v in sizes0))
    ratios = ((0.25, 1.0, 4.0),) * 2
    gen = ag_mod.AnchorGenerator(sizes, ratios)
    fh, fw = 2 * fh, 2 * fw                     # so that the coarser level is at least 1x1
    ih, iw = fh * strides[0], fw * strides[0]
    images = il.ImageList(torch.zeros(1, 3, ih, iw, dtype=torch.float64), [(ih, iw)])
    fsizes = [(fh, fw), (ih // strides[1], iw // strides[1])]
    feats = [torch.zeros(1, 4, h, w, dtype=torch.float64) for h, w in fsizes]
    ref = gen(images, feats)[0].numpy()
    strides_tv = [(ih // h, iw // w) for h, w in fsizes]  # torchvision's (stride_y, stride_x)
    ours = np.concatenate([grid_anchors(generate_anchors(sz, ratios[0], dtype=np.float64), fs, st_)
                           for sz, fs, st_ in zip(sizes, fsizes, strides_tv)])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_pyramid_matches_torchvision_anchor_generator():
    torch = pytest.importorskip("torch")
    ag_mod = pytest.importorskip("torchvision.models.detection.anchor_utils")
    il = pytest.importorskip("torchvision.models.detection.image_list")
    sizes, ratios = ((16, 32), (32, 64)), ((0.25, 1.0, 4.0),) * 2
    gen = ag_mod.AnchorGenerator(sizes, ratios)
    images = il.ImageList(torch.zeros(1, 3, 64, 96, dtype=torch.float64), [(64, 96)])
    feats = [torch.zeros(1, 4, 16, 24, dtype=torch.float64), torch.zeros(1, 4, 8, 12, dtype=torch.float64)]
    ref = gen(images, feats)[0].numpy()
    _, ours = pyramid_anchors([(16, 24), (8, 12)], [4, 8], sizes, ratios[0], dtype=np.float64)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_label_rules_match_torchvision_matcher():
    torch = pytest.importorskip("torch")
    _utils = pytest.importorskip("torchvision.models.detection._utils")
    rng = np.random.default_rng(0)
    anchors = grid_anchors(generate_anchors([8, 16], [0.5, 1, 2], dtype=np.float64), (6, 6), 8, 0.5)
    xy = rng.uniform(0, 40, (4, 2))
    gt = np.concatenate([xy, xy + rng.uniform(3, 20, (4, 2))], axis=1)
    m = _utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    ref = m(torch.from_numpy(box_iou(gt, anchors))).numpy()   # >=0 match, -1 below, -2 between
    labels, matched = label_anchors(anchors, gt)
    np.testing.assert_array_equal(labels == 1, ref >= 0)
    np.testing.assert_array_equal(labels == 0, ref == -1)
    np.testing.assert_array_equal(matched[labels == 1], ref[ref >= 0])


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, exc, msg", [
    (lambda: generate_anchors([], [1.0]), ValueError, "sizes"),
    (lambda: generate_anchors([32], [-1.0]), ValueError, "aspect_ratios"),
    (lambda: generate_anchors(["a"], [1.0]), TypeError, "sizes"),
    (lambda: grid_anchors(np.zeros((3, 3)), (2, 2), 16), ValueError, "base_anchors"),
    (lambda: grid_anchors(np.zeros((3, 4)), (2,), 16), ValueError, "feature_size"),
    (lambda: grid_anchors(np.zeros((3, 4)), (2, 2), 0), ValueError, "stride"),
    (lambda: pyramid_anchors([(2, 2)], [4, 8], [[32]], [1.0]), ValueError, "same length"),
    (lambda: label_anchors(np.zeros((3, 4)), np.zeros((1, 4)), pos_iou=1.5), ValueError, "pos_iou"),
    (lambda: label_anchors(np.zeros((3, 4)), np.zeros((1, 4)), 0.3, 0.7), ValueError, "neg_iou"),
    (lambda: label_anchors(np.zeros((3, 4)), np.full((1, 4), np.nan)), ValueError, "NaN"),
    (lambda: sample_labels(np.zeros(3), 4), TypeError, "integer"),
    (lambda: sample_labels(np.zeros(3, dtype=np.int8), 0), ValueError, "batch_size"),
    (lambda: sample_labels(np.zeros(3, dtype=np.int8), 4, 1.5), ValueError, "positive_fraction"),
])
def test_bad_input(call, exc, msg):
    with pytest.raises(exc) as info:
        call()
    assert msg in str(info.value)
