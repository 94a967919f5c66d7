"""Multi-level RoI extraction, box head, mask head, their losses, and detection post-processing."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_ref.gradcheck import check_op_gradients, numerical_gradient_sampled, rel_error
from mrcnn_ref.model.multilevel_roi import (assign_fpn_levels, multilevel_roi_backward,
                                            multilevel_roi_forward)
from mrcnn_ref.model.roi_heads import (BoxHead, MaskHead, box_loss_backward, box_loss_forward,
                                       mask_head_loss_backward, mask_head_loss_forward,
                                       postprocess_detections)


# ----------------------------------------------------------------------------------- levels
def test_assign_fpn_levels_hand_values():
    # sqrt(area) = 224 -> level 4; 112 -> 3; 448 -> 5; 56 -> 2; 896 -> clamped to 5; 10 -> 2
    sides = np.array([224.0, 112.0, 448.0, 56.0, 896.0, 10.0, 223.0, 160.0])
    boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
    np.testing.assert_array_equal(assign_fpn_levels(boxes), [4, 3, 5, 2, 5, 2, 3, 3])
    # non-square: sqrt(w h) counts, 112 x 448 -> sqrt = 224 -> 4
    assert assign_fpn_levels(np.array([[0.0, 0.0, 112.0, 448.0]]))[0] == 4
    # configurable canonical size (small images): 32 px at canonical 32 -> level 4
    assert assign_fpn_levels(np.array([[0.0, 0.0, 32.0, 32.0]]), canonical_size=32.0)[0] == 4
    with pytest.raises(ValueError, match="assign_fpn_levels"):
        assign_fpn_levels(np.zeros((3, 5)))


@given(side=st.floats(1.0, 2000.0))
def test_assign_fpn_levels_formula(side):
    k = assign_fpn_levels(np.array([[5.0, 5.0, 5.0 + side, 5.0 + side]]))[0]
    assert k == min(5, max(2, math.floor(4 + math.log2(side / 224.0) + 1e-6)))


# ----------------------------------------------------------------------------------- multi-level
def _pyramid(rng, c=2, size=64):
    return [rng.standard_normal((1, c, size // s, size // s)) for s in (4, 8, 16, 32)]


def test_multilevel_routes_each_roi_to_its_level():
    from mrcnn_ref.ops.roi_align import roi_align_forward
    rng = np.random.default_rng(0)
    feats = _pyramid(rng, size=256)
    rois = np.array([[0, 10.0, 10.0, 40.0, 40.0],       # small -> P2
                     [0, 20.0, 20.0, 200.0, 180.0],     # ~170 -> P3
                     [0, 3.0, 5.0, 250.0, 251.0]])      # ~247 -> P4
    out, cache = multilevel_roi_forward(feats, rois, 7)
    lv = assign_fpn_levels(rois[:, 1:])
    np.testing.assert_array_equal(lv, [2, 3, 4])
    for i, l in enumerate(lv):
        ref, _ = roi_align_forward(feats[l - 2], rois[i:i + 1], (7, 7), 1.0 / 2 ** l, sampling_ratio=2,
                                   aligned=False)
        np.testing.assert_allclose(out[i], ref[0], rtol=1e-12, atol=1e-12)
    grads = multilevel_roi_backward(np.ones_like(out), cache)
    assert [g.shape for g in grads] == [f.shape for f in feats]
    assert np.all(grads[3] == 0) and all(np.any(g != 0) for g in grads[:3])


@settings(max_examples=10)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6),
       op=st.sampled_from(["roi_align", "roi_align_max", "roi_pool", "roi_warp"]))
def test_multilevel_gradient(seed, n, op):
    rng = np.random.default_rng(seed)
    feats = _pyramid(rng, size=128)
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(8, 120, (n, 2))
    rois = np.concatenate([np.zeros((n, 1)), xy, np.minimum(xy + wh, 127.0)], axis=1)
    if op in ("roi_pool", "roi_align_max"):
        # max ops: keep values distinct (away from ties, so the max is differentiable)
        feats = [f + np.arange(f.size).reshape(f.shape) * 1e-3 for f in feats]

    def fwd(f0, f1, f2, f3):
        return multilevel_roi_forward([f0, f1, f2, f3], rois, 4, roi_op=op, sampling_ratio=2)

    def bwd(dout, cache):
        return tuple(multilevel_roi_backward(dout, cache))

    try:
        errs = check_op_gradients(fwd, bwd, feats, wrt=(0, 1, 2, 3), num_samples=15, seed=seed)
    except ImportError:
        pytest.skip(f"{op} not available")
    assert max(errs.values()) <= 1e-6


# ----------------------------------------------------------------------------------- heads
@settings(max_examples=5)
@given(seed=st.integers(0, 1000))
def test_box_head_and_loss_gradients(seed):
    rng = np.random.default_rng(seed)
    head = BoxHead(2, 3, 8, 3, rng=rng).astype(np.float64)
    for p in head.named_parameters().values():
        p[...] = rng.standard_normal(p.shape) * 0.3
    x = rng.standard_normal((6, 2, 3, 3))
    labels = np.array([1, 2, 2, 0, 0, 0])
    reg = rng.standard_normal((6, 4)) * 0.5

    def loss_value():
        cl, bd = head(x)
        (a, b), _ = box_loss_forward(cl, bd, labels, reg)
        head.zero_grad()
        return float(a + b)

    cl, bd = head(x)
    (a, b), cache = box_loss_forward(cl, bd, labels, reg)
    dcl, dbd = box_loss_backward(1.0, 1.0, cache)
    dx = head.backward(dcl, dbd)
    grads = {k: v.copy() for k, v in head.named_grads().items()}
    params = head.named_parameters()
    for name in params:
        idx, num = numerical_gradient_sampled(loss_value, params[name], num_samples=5, rng=seed)
        assert rel_error(grads[name].reshape(-1)[idx], num) <= 1e-6, name
    idx, num = numerical_gradient_sampled(loss_value, x, num_samples=10, rng=seed)
    assert rel_error(dx.reshape(-1)[idx], num) <= 1e-6


def test_box_loss_hand_values():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0], [0.5, 0.5, 0.5]])
    deltas = np.zeros((3, 12))
    deltas[1, 8:12] = [0.1, -0.2, 1.0, 0.0]          # class 2 columns of RoI 1
    deltas[1, 4:8] = 99.0                             # another class: must not matter
    labels = np.array([0, 2, 0])
    reg = np.array([[9.0, 9, 9, 9], [0.0, 0.0, 0.0, 0.5], [9.0, 9, 9, 9]])
    (l_cls, l_box), _ = box_loss_forward(logits, deltas, labels, reg)
    lse = lambda v: np.log(np.sum(np.exp(v)))  # noqa: E731
    ref_cls = np.mean([lse(logits[0]) - 2.0, lse(logits[1]) - 3.0, lse(logits[2]) - 0.5])
    d = np.abs([0.1, -0.2, 1.0, -0.5])
    ref_box = np.where(d < 1 / 9, 4.5 * d ** 2, d - 0.5 / 9).sum() / 3
    np.testing.assert_allclose([float(l_cls), float(l_box)], [ref_cls, ref_box], rtol=1e-12)


@settings(max_examples=5)
@given(seed=st.integers(0, 1000), kind=st.sampled_from(["sigmoid", "softmax"]))
def test_mask_head_and_loss_gradients(seed, kind):
    rng = np.random.default_rng(seed)
    head = MaskHead(2, 1, 3, 3, rng=rng).astype(np.float64)
    for p in head.named_parameters().values():    # nonzero biases: no ReLU input exactly at 0
        p[...] = rng.standard_normal(p.shape) * 0.5
    x = rng.standard_normal((3, 2, 4, 4))
    labels = np.array([1, 2, 1])
    tgt = (rng.uniform(size=(3, 8, 8)) > 0.5).astype(np.float64)

    def loss_value():
        out = head(x)
        v, _ = mask_head_loss_forward(out, labels, tgt, kind=kind)
        head.zero_grad()
        return float(v)

    out = head(x)
    assert out.shape == (3, 3, 8, 8)
    _, cache = mask_head_loss_forward(out, labels, tgt, kind=kind)
    dx = head.backward(mask_head_loss_backward(1.0, cache))
    grads = {k: v.copy() for k, v in head.named_grads().items()}
    for name, p in head.named_parameters().items():
        idx, num = numerical_gradient_sampled(loss_value, p, num_samples=5, rng=seed)
        assert rel_error(grads[name].reshape(-1)[idx], num) <= 1e-6, name
    idx, num = numerical_gradient_sampled(loss_value, x, num_samples=10, rng=seed)
    assert rel_error(dx.reshape(-1)[idx], num) <= 1e-6
    with pytest.raises(ValueError, match="kind"):
        mask_head_loss_forward(out, labels, tgt, kind="hinge")


# ----------------------------------------------------------------------------------- inference
def test_postprocess_detections_hand_example():
    from mrcnn_ref.boxes import encode_boxes
    proposals = np.array([[10.0, 10.0, 30.0, 30.0], [11.0, 11.0, 31.0, 31.0], [40.0, 5.0, 60.0, 25.0]])
    k = 3
    logits = np.full((3, k), -5.0)
    logits[0, 1] = 5.0            # strong class 1
    logits[1, 1] = 4.0            # overlaps RoI 0, same class -> suppressed
    logits[2, 2] = 5.0            # class 2 elsewhere
    deltas = np.zeros((3, 4 * k))
    target = np.array([[12.0, 12.0, 28.0, 30.0]])
    deltas[0, 4:8] = encode_boxes(target, proposals[:1], weights=(10, 10, 5, 5))[0]
    boxes, scores, labels = postprocess_detections(logits, deltas, proposals, (64, 50),
                                                   score_thresh=0.5)
    assert labels.tolist() == [1, 2]
    np.testing.assert_allclose(boxes[0], target[0], atol=1e-9)
    np.testing.assert_allclose(boxes[1], [40.0, 5.0, 50.0, 25.0])     # clipped to width 50
    p = np.exp(5.0) / (np.exp(5.0) + 2 * np.exp(-5.0))
    np.testing.assert_allclose(scores, [p, p])
    # a low threshold keeps class-1 RoI 1 only if it does not overlap > 0.5: it does, so still 2 + others
    b2, s2, l2 = postprocess_detections(logits, deltas, proposals, (64, 50), score_thresh=1e-3,
                                        detections_per_img=2)
    assert b2.shape == (2, 4) and np.all(np.diff(s2) <= 0)


def test_multilevel_matches_torchvision_multiscale_roialign():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((1, 3, 512 // s, 512 // s)) for s in (4, 8, 16, 32)]
    xy = rng.uniform(0, 10, (12, 2))
    boxes = np.concatenate([xy, xy + np.geomspace(20, 500, 12)[:, None] * rng.uniform(0.9, 1.0, (12, 2))],
                           axis=1)
    rois = np.concatenate([np.zeros((12, 1)), boxes], axis=1)
    assert len(set(assign_fpn_levels(boxes).tolist())) == 4          # every level is used
    out, cache = multilevel_roi_forward(feats, rois, 7, sampling_ratio=2)
    dout = rng.standard_normal(out.shape)
    grads = multilevel_roi_backward(dout, cache)

    pooler = ops.MultiScaleRoIAlign(["p2", "p3", "p4", "p5"], output_size=7, sampling_ratio=2)
    tf = {f"p{i + 2}": torch.tensor(f, requires_grad=True) for i, f in enumerate(feats)}
    ref = pooler(tf, [torch.tensor(boxes)], [(512, 512)])
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-10)
    (ref * torch.tensor(dout)).sum().backward()
    for i, g in enumerate(grads):
        np.testing.assert_allclose(g, tf[f"p{i + 2}"].grad.numpy(), rtol=1e-10, atol=1e-10)


def test_box_loss_matches_torchvision_fastrcnn_loss():
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    rng = np.random.default_rng(3)
    s, k = 10, 4
    logits = rng.standard_normal((s, k))
    deltas = rng.standard_normal((s, 4 * k)) * 0.3
    labels = np.array([1, 3, 2, 2, 0, 0, 0, 1, 0, 0])
    reg = rng.standard_normal((s, 4)) * 0.3
    (l_cls, l_box), cache = box_loss_forward(logits, deltas, labels, reg)
    d_logits, d_deltas = box_loss_backward(1.0, 1.0, cache)
    tl = torch.tensor(logits, requires_grad=True)
    td = torch.tensor(deltas, requires_grad=True)
    ref_cls, ref_box = roi_heads.fastrcnn_loss(tl, td, [torch.tensor(labels)], [torch.tensor(reg)])
    np.testing.assert_allclose([float(l_cls), float(l_box)], [ref_cls.item(), ref_box.item()], rtol=1e-10)
    (ref_cls + ref_box).backward()
    np.testing.assert_allclose(d_logits, tl.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(d_deltas, td.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_postprocess_matches_torchvision():
    torch = pytest.importorskip("torch")
    roi_heads = pytest.importorskip("torchvision.models.detection.roi_heads")
    rng = np.random.default_rng(7)
    p, k = 60, 4
    xy = rng.uniform(0, 90, (p, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(4, 40, (p, 2))], axis=1)
    logits = rng.standard_normal((p, k)) * 2
    deltas = rng.standard_normal((p, 4 * k))
    heads = roi_heads.RoIHeads(None, None, None, 0.5, 0.5, 128, 0.25, (10.0, 10.0, 5.0, 5.0),
                               score_thresh=0.1, nms_thresh=0.5, detections_per_img=25)
    tb, ts, tl = heads.postprocess_detections(torch.tensor(logits), torch.tensor(deltas),
                                              [torch.tensor(proposals)], [(100, 110)])
    boxes, scores, labels = postprocess_detections(logits, deltas, proposals, (100, 110), score_thresh=0.1,
                                                   nms_thresh=0.5, detections_per_img=25)
    assert boxes.shape == (25, 4)
    np.testing.assert_allclose(boxes, tb[0].numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(scores, ts[0].numpy(), rtol=1e-10)
    np.testing.assert_array_equal(labels, tl[0].numpy())
