"""RPN: shared head (weight sharing over levels), output layout, targets, losses, proposals."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_ref.gradcheck import check_op_gradients, numerical_gradient_sampled, rel_error
from mrcnn_ref.model.rpn import (RPNHead, flatten_rpn_outputs, generate_proposals, pyramid_level_anchors,
                                 rpn_loss_backward, rpn_loss_forward, rpn_targets, unflatten_rpn_grads)


def _head_and_feats(seed, c=3, a=3, shapes=((6, 5), (3, 3), (2, 1))):
    rng = np.random.default_rng(seed)
    head = RPNHead(c, a, rng=rng).astype(np.float64)
    for p in head.named_parameters().values():      # larger weights so the ReLU matters
        p[...] = rng.standard_normal(p.shape) * 0.5
    feats = [rng.standard_normal((1, c, h, w)) for h, w in shapes]
    return head, feats, rng


@settings(max_examples=8)
@given(seed=st.integers(0, 1000))
def test_rpn_head_gradients_with_weight_sharing(seed):
    head, feats, rng = _head_and_feats(seed)
    objs, dlts = head(feats)
    r_obj = [rng.standard_normal(o.shape) for o in objs]
    r_dlt = [rng.standard_normal(d.shape) for d in dlts]
    head.zero_grad()

    def loss():
        o, d = head(feats)
        val = sum(float(np.sum(a * b)) for a, b in zip(o, r_obj)) + \
            sum(float(np.sum(a * b)) for a, b in zip(d, r_dlt))
        head.zero_grad()
        return val

    head(feats)
    d_feats = head.backward(r_obj, r_dlt)
    grads = {k: v.copy() for k, v in head.named_grads().items()}
    params = head.named_parameters()
    for name in ("conv.weight", "conv.bias", "cls_logits.weight", "bbox_pred.weight", "bbox_pred.bias"):
        idx, num = numerical_gradient_sampled(loss, params[name], num_samples=6, rng=seed)
        assert rel_error(grads[name].reshape(-1)[idx], num) <= 1e-6, name
    for i, f in enumerate(feats):
        idx, num = numerical_gradient_sampled(loss, f, num_samples=6, rng=seed)
        assert rel_error(d_feats[i].reshape(-1)[idx], num) <= 1e-6


def test_flatten_matches_anchor_order_and_unflatten_inverts():
    rng = np.random.default_rng(0)
    a = 3
    objs = [rng.standard_normal((1, a, h, w)) for h, w in ((4, 3), (2, 2))]
    dlts = [rng.standard_normal((1, 4 * a, h, w)) for h, w in ((4, 3), (2, 2))]
    obj, dlt = flatten_rpn_outputs(objs, dlts)
    assert obj.shape == (1, 4 * 3 * a + 4 * a) and dlt.shape == (1, 4 * 3 * a + 4 * a, 4)
    # row of (level 0, y=2, x=1, anchor 2)
    r = (2 * 3 + 1) * a + 2
    assert obj[0, r] == objs[0][0, 2, 2, 1]
    np.testing.assert_array_equal(dlt[0, r], dlts[0][0, 4 * 2:4 * 2 + 4, 2, 1])
    # level 1, y=1, x=0, anchor 1
    r = 36 + (1 * 2 + 0) * a + 1
    np.testing.assert_array_equal(dlt[0, r], dlts[1][0, 4:8, 1, 0])
    o2, d2 = unflatten_rpn_grads(obj, dlt, [o.shape for o in objs])
    for x, y in zip(o2 + d2, objs + dlts):
        np.testing.assert_array_equal(x, y)


def test_anchor_layout_matches_head_layout():
    anchors, lvl, counts = pyramid_level_anchors([(4, 3), (2, 2)], (4, 8), (8, 16), (0.5, 1.0, 2.0),
                                                 dtype=np.float64)
    assert counts == [36, 12] and anchors.shape == (48, 4)
    np.testing.assert_array_equal(lvl, [0] * 36 + [1] * 12)
    # anchor (level 0, y=2, x=1, a): centre at (x*4, y*4) with offset 0 (torchvision's convention)
    r = (2 * 3 + 1) * 3
    cx = (anchors[r:r + 3, 0] + anchors[r:r + 3, 2]) / 2
    cy = (anchors[r:r + 3, 1] + anchors[r:r + 3, 3]) / 2
    np.testing.assert_allclose(cx, 4.0, atol=0.5)
    np.testing.assert_allclose(cy, 8.0, atol=0.5)
    areas = (anchors[:36, 2] - anchors[:36, 0]) * (anchors[:36, 3] - anchors[:36, 1])
    np.testing.assert_allclose(areas, 64.0, rtol=0.1)


def _targets(seed, n_gt=2):
    rng = np.random.default_rng(seed)
    anchors, _, counts = pyramid_level_anchors([(8, 8), (4, 4)], (4, 8), (8, 16), (0.5, 1.0, 2.0),
                                               dtype=np.float64)
    xy = rng.uniform(0, 20, (n_gt, 2))
    gt = np.concatenate([xy, xy + rng.uniform(6, 12, (n_gt, 2))], axis=1)
    t = rpn_targets(anchors, gt, rng=np.random.default_rng(seed), batch_size=32, positive_fraction=0.5)
    return anchors, counts, gt, t, rng


def test_rpn_targets_structure():
    anchors, counts, gt, t, _ = _targets(3)
    s, npos = t["sampled"].size, t["num_pos"]
    assert 1 <= npos <= 16 and s == 32 and len(set(t["sampled"].tolist())) == s
    np.testing.assert_array_equal(t["labels"], [1.0] * npos + [0.0] * (s - npos))
    from mrcnn_ref.boxes import box_iou, decode_boxes
    iou = box_iou(anchors[t["sampled"]], gt).max(axis=1)
    assert np.all(iou[npos:] < 0.3)
    dec = decode_boxes(t["regression_targets"], anchors[t["sampled"][:npos]])
    assert np.all(box_iou(dec, gt).max(axis=1) > 1 - 1e-9)
    # no gt: only negatives
    t0 = rpn_targets(anchors, np.zeros((0, 4)), rng=np.random.default_rng(0), batch_size=32)
    assert t0["num_pos"] == 0 and t0["sampled"].size == 32 and t0["regression_targets"].shape == (0, 4)


@settings(max_examples=10)
@given(seed=st.integers(0, 1000))
def test_rpn_loss_gradients_and_values(seed):
    anchors, counts, gt, t, rng = _targets(seed)
    obj = rng.standard_normal(anchors.shape[0])
    dlt = rng.standard_normal((anchors.shape[0], 4)) * 0.3
    w = rng.uniform(0.5, 2.0, 2)

    def fwd(o, d):
        (a, b), cache = rpn_loss_forward(o, d, t)
        return w[0] * a + w[1] * b, cache

    def bwd(dout, cache):
        return rpn_loss_backward(w[0] * dout, w[1] * dout, cache)

    errs = check_op_gradients(fwd, bwd, [obj, dlt], wrt=(0, 1), num_samples=30, seed=seed)
    assert max(errs.values()) <= 1e-6
    # hand reference: mean BCE over the sampled anchors; smooth L1 (beta 1/9) summed over positives / S
    (l_obj, l_box), _ = rpn_loss_forward(obj, dlt, t)
    s, npos = t["sampled"], t["num_pos"]
    x, y = obj[s], t["labels"]
    ref_obj = np.mean(np.log1p(np.exp(-x)) * y + np.log1p(np.exp(x)) * (1 - y))
    diff = np.abs(dlt[s[:npos]] - t["regression_targets"])
    ref_box = np.where(diff < 1 / 9, 0.5 * diff ** 2 * 9, diff - 0.5 / 9).sum() / s.size
    np.testing.assert_allclose([float(l_obj), float(l_box)], [ref_obj, ref_box], rtol=1e-10)


def test_generate_proposals_properties():
    rng = np.random.default_rng(0)
    anchors, _, counts = pyramid_level_anchors([(16, 16), (8, 8)], (4, 8), (8, 16), (0.5, 1.0, 2.0),
                                               dtype=np.float64)
    obj = rng.standard_normal(anchors.shape[0])
    dlt = rng.standard_normal((anchors.shape[0], 4)) * 0.2
    boxes, scores = generate_proposals(obj, dlt, anchors, counts, (60, 50), pre_nms_top_n=100,
                                       post_nms_top_n=40, nms_thresh=0.7)
    assert boxes.shape[0] <= 40 and boxes.shape == (scores.size, 4)
    assert np.all(boxes[:, 0::2] >= 0) and np.all(boxes[:, 0::2] <= 50)
    assert np.all(boxes[:, 1::2] >= 0) and np.all(boxes[:, 1::2] <= 60)
    assert np.all(np.diff(scores) <= 0)
    # every proposal is one of the top-100 anchors of its level, decoded
    from mrcnn_ref.boxes import box_iou, clip_boxes, decode_boxes
    top0 = np.argsort(-obj[:counts[0]])[:100]
    top1 = counts[0] + np.argsort(-obj[counts[0]:])[:100]
    cand = np.concatenate([top0, top1])
    dec = clip_boxes(decode_boxes(dlt[cand], anchors[cand]), (60, 50))
    for b, s in zip(boxes, scores):
        j = np.nonzero(np.isclose(obj[cand], s))[0]
        assert any(np.allclose(dec[k], b) for k in j)
    # within a level no two kept boxes overlap more than the NMS threshold
    lvl_of = np.array([0 if np.any(np.isclose(obj[top0], s)) else 1 for s in scores])
    for lv in (0, 1):
        b = boxes[lvl_of == lv]
        iou = box_iou(b, b) - np.eye(len(b))
        assert np.all(iou <= 0.7 + 1e-12)


def test_generate_proposals_matches_torchvision():
    torch = pytest.importorskip("torch")
    rpn_mod = pytest.importorskip("torchvision.models.detection.rpn")
    rng = np.random.default_rng(11)
    anchors, _, counts = pyramid_level_anchors([(16, 16), (8, 8), (4, 4)], (4, 8, 16), (8, 16, 32),
                                               (0.5, 1.0, 2.0), dtype=np.float64)
    obj = rng.standard_normal(anchors.shape[0])
    dlt = rng.standard_normal((anchors.shape[0], 4)) * 0.3
    boxes, scores = generate_proposals(obj, dlt, anchors, counts, (60, 64), pre_nms_top_n=150,
                                       post_nms_top_n=80, nms_thresh=0.7, min_size=1e-3)
    net = rpn_mod.RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, dict(training=150, testing=150),
                                        dict(training=80, testing=80), 0.7).eval()
    decoded = net.box_coder.decode(torch.tensor(dlt), [torch.tensor(anchors)]).reshape(1, -1, 4)
    tb, ts = net.filter_proposals(decoded, torch.tensor(obj)[None], [(60, 64)], counts)
    np.testing.assert_allclose(boxes, tb[0].numpy(), rtol=1e-10, atol=1e-10)
    # torchvision returns sigmoid probabilities, we return the logits
    np.testing.assert_allclose(1 / (1 + np.exp(-scores)), ts[0].numpy(), rtol=1e-10)


def test_rpn_loss_matches_torchvision():
    torch = pytest.importorskip("torch")
    rpn_mod = pytest.importorskip("torchvision.models.detection.rpn")
    anchors, counts, gt, t, rng = _targets(5)
    obj = rng.standard_normal(anchors.shape[0])
    dlt = rng.standard_normal((anchors.shape[0], 4)) * 0.3
    (l_obj, l_box), cache = rpn_loss_forward(obj, dlt, t)
    d_obj, d_dlt = rpn_loss_backward(1.0, 1.0, cache)
    # torchvision re-samples inside compute_loss: give it labels for exactly our sampled anchors
    # (-1 elsewhere) and a batch size that takes all of them
    labels = -np.ones(anchors.shape[0])
    labels[t["sampled"]] = t["labels"]
    reg = np.zeros_like(dlt)
    reg[t["sampled"][:t["num_pos"]]] = t["regression_targets"]
    n = t["sampled"].size
    net = rpn_mod.RegionProposalNetwork(None, None, 0.7, 0.3, n, t["num_pos"] / n + 1e-9,
                                        dict(training=1, testing=1), dict(training=1, testing=1), 0.7)
    to = torch.tensor(obj[:, None], requires_grad=True)
    td = torch.tensor(dlt, requires_grad=True)
    ro, rb = net.compute_loss(to, td, [torch.tensor(labels)], [torch.tensor(reg)])
    np.testing.assert_allclose([float(l_obj), float(l_box)], [ro.item(), rb.item()], rtol=1e-10)
    (ro + rb).backward()
    np.testing.assert_allclose(d_obj, to.grad.numpy()[:, 0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_dlt, td.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_anchor_scales_multiply_the_anchors_per_location():
    from mrcnn_ref.model.config import load_config
    from mrcnn_ref.model.mask_rcnn import MaskRCNN

    shapes, strides = [(4, 4), (2, 2)], [8, 16]
    one, _, c1 = pyramid_level_anchors(shapes, strides, (16, 32), (0.5, 1.0, 2.0))
    two, _, c2 = pyramid_level_anchors(shapes, strides, (16, 32), (0.5, 1.0, 2.0), scales=(1.0, 2.0))
    assert c2 == [2 * c for c in c1]
    areas = np.unique(np.round((two[:, 2] - two[:, 0]) * (two[:, 3] - two[:, 1])))
    np.testing.assert_allclose(areas, [16 ** 2, 32 ** 2, 64 ** 2])
    cfg = load_config({"preset": "tiny", "anchor_scales": [1.0, 1.5]})
    assert cfg.num_anchors_per_location == 6
    model = MaskRCNN(cfg, rng=np.random.default_rng(0))
    rng = np.random.default_rng(1)
    img = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    masks = np.zeros((1, 64, 64), bool)
    masks[0, 10:30, 12:40] = True
    losses, total = model.forward_train(img, {"boxes": np.array([[12., 10., 40., 30.]], np.float32),
                                              "labels": np.array([1]), "masks": masks}, rng=rng)
    assert np.isfinite(total)
    model.backward()
