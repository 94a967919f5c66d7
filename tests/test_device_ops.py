"""Every op on every backend gives NumPy's numbers, and its outputs and gradients stay on the device.

Each test runs on the ``device`` fixture (numpy, emulated, and cupy where a GPU is; see
``conftest.py``): the op is run once on the NumPy inputs (the reference) and once on the same
inputs moved to the device; the device results must live there (``device.is_array``) and, brought
back, equal the reference — to ~1e-10 for float64, ~1e-5 for float32 (the device paths may add in
another order), exactly for integers and booleans. The ``emulated`` backend refuses what CuPy
refuses (implicit conversions, NumPy arrays mixed in, NumPy-only calls), so a host-only line in an
op fails here even without a GPU.
"""
import numpy as np
import pytest

from mrcnn_ref.anchors import generate_anchors, grid_anchors, label_anchors, sample_labels
from mrcnn_ref.boxes import (HEAD_BOX_WEIGHTS, box_area, box_iou, box_xywh_to_xyxy, box_xyxy_to_xywh,
                             clip_boxes, decode_boxes, encode_boxes, hflip_boxes, remove_small_boxes)
from mrcnn_ref.data.masks import (expand_mask, mask_targets_for_rois, masks_to_boxes, minimize_mask,
                                  paste_masks_in_image)
from mrcnn_ref.model.backbone import resnet_fpn_tiny
from mrcnn_ref.model.multilevel_roi import (ROI_OPS, get_roi_op, multilevel_roi_backward,
                                            multilevel_roi_forward)
from mrcnn_ref.nms import batched_nms, nms
from mrcnn_ref.ops import losses
from mrcnn_ref.ops.activations import relu_backward, relu_forward
from mrcnn_ref.ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                                conv_transpose2d_forward)
from mrcnn_ref.ops.linear import linear_backward, linear_forward
from mrcnn_ref.ops.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward,
                                group_norm_backward, group_norm_forward)
from mrcnn_ref.ops.pooling import max_pool2d_backward, max_pool2d_forward
from mrcnn_ref.ops.upsample import upsample_nearest2d_backward, upsample_nearest2d_forward

RNG = np.random.default_rng(2024)          # the module-level inputs below
_TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


# ------------------------------------------------------------------------------------ helpers
def _tree(f, x):
    """Apply ``f`` to every leaf of nested lists / tuples / dicts."""
    if isinstance(x, (list, tuple)):
        return type(x)(_tree(f, v) for v in x)
    if isinstance(x, dict):
        return {k: _tree(f, v) for k, v in x.items()}
    return f(x)


def _to(device, x):
    """Every NumPy array in ``x`` moved to ``device`` (numbers, tuples of ints, None stay)."""
    return _tree(lambda a: device.to(a) if isinstance(a, np.ndarray) else a, x)


def _assert_same(device, got, want, tol=None):
    """``got`` (device results) lives on ``device`` and equals ``want`` (NumPy results)."""
    if want is None:
        assert got is None
        return
    if isinstance(want, dict):                    # named gradients: compare key by key
        assert got.keys() == want.keys()
        got, want = [got[k] for k in want], list(want.values())
    if isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(device, g, w, tol)
        return
    # the NumPy backend's reductions give NumPy scalars: host values, as everything there
    assert device.is_array(got) or (device.name == "numpy" and isinstance(got, np.generic)), type(got)
    host, want = device.host(got), np.asarray(want)
    assert host.shape == want.shape and host.dtype == want.dtype, (host.shape, host.dtype, want.dtype)
    if want.dtype.kind == "f":
        t = _TOL[want.dtype] if tol is None else tol
        np.testing.assert_allclose(host, want, rtol=t, atol=t)
    else:
        np.testing.assert_array_equal(host, want)


def _check_fn(device, fn, args, kwargs=None):
    """``fn(*args, **kwargs)`` on the device equals it on NumPy."""
    kwargs = kwargs or {}
    _assert_same(device, fn(*_to(device, args), **_to(device, kwargs)), fn(*args, **kwargs))


def _check_pair(device, fwd, bwd, args, kwargs=None, tol=None):
    """A forward/backward pair on the device equals it on NumPy: the forward's output, and the
    backward's gradients for one random upstream gradient."""
    kwargs = kwargs or {}
    out, cache = fwd(*args, **kwargs)
    dout = np.asarray(np.random.default_rng(0).standard_normal(np.shape(out))).astype(out.dtype)
    grads = bwd(dout, cache)
    d_out, d_cache = fwd(*_to(device, args), **_to(device, kwargs))
    _assert_same(device, d_out, out, tol)
    _assert_same(device, bwd(device.to(dout), d_cache), grads, tol)


def _boxes(n, seed, lo=0.0, hi=100.0, min_wh=1.0, max_wh=50.0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(min_wh, max_wh, (n, 2))], axis=1)


# ------------------------------------------------------------------------------------ RoI ops
# image coordinates; spatial_scale 0.5 reads a 12 x 14 map of a 24 x 28 image
ROIS = np.array([[0, 2.0, 3.0, 15.5, 12.0],
                 [1, -6.0, -4.0, 9.0, 7.5],          # partly outside (top left)
                 [1, 20.0, 14.0, 35.0, 30.0],        # partly outside (bottom right)
                 [0, 10.2, 10.7, 11.0, 11.3],        # smaller than a feature pixel
                 [1, 0.0, 0.0, 28.0, 24.0],          # the whole image
                 [0, 30.0, 2.0, 40.0, 9.0]])         # wholly outside
ROI_BOXES = {"several": ROIS,
             "per_image_list": [ROIS[ROIS[:, 0] == i, 1:] for i in (0, 1)],
             "empty": np.zeros((0, 5))}
ROI_CASES = ([(op, dict(sampling_ratio=s, aligned=a)) for op in ("roi_align", "roi_align_max")
              for s in (2, -1) for a in (False, True)]
             + [("roi_warp", dict(sampling_ratio=s)) for s in (2, -1)] + [("roi_pool", {})])


@pytest.mark.parametrize("op,kwargs", ROI_CASES,
                         ids=["-".join([o] + [f"{k}={v}" for k, v in kw.items()]) for o, kw in ROI_CASES])
@pytest.mark.parametrize("boxes,dtype", [("several", np.float64), ("several", np.float32),
                                         ("per_image_list", np.float64), ("empty", np.float64)])
def test_roi_ops(device, op, kwargs, boxes, dtype):
    feats = np.random.default_rng(1).standard_normal((2, 3, 12, 14)).astype(dtype)
    rois = _tree(lambda a: a.astype(dtype), ROI_BOXES[boxes])
    fwd, bwd = get_roi_op(op)
    _check_pair(device, fwd, bwd, (feats, rois, (3, 2), 0.5), kwargs)


@pytest.mark.parametrize("op", ROI_OPS)
def test_multilevel_roi(device, op):
    feats = [np.random.default_rng(s).standard_normal((2, 3, s, s)) for s in (16, 8, 4, 2)]
    # sides 8 ... 64 at canonical size 32 reach levels 2 ... 5; level 5 stays empty
    rois = np.array([[0, 1.0, 2.0, 9.0, 9.0], [1, 20.0, 4.0, 36.0, 21.0], [0, 10.0, 30.0, 26.0, 44.0],
                     [1, 8.0, 8.0, 40.0, 40.0], [0, -5.0, 30.0, 30.0, 62.0]])
    _check_pair(device, multilevel_roi_forward, multilevel_roi_backward, (feats, rois, 4),
                dict(roi_op=op, canonical_size=32.0))


# ------------------------------------------------------------------------------------ NMS
@pytest.mark.parametrize("method", ["auto", "greedy", "sparse", "matrix"])
@pytest.mark.parametrize("max_keep", [None, 5])
def test_nms(device, method, max_keep):
    boxes, scores = _boxes(60, 0), np.random.default_rng(0).random(60)
    cats = np.arange(60) % 3
    kw = dict(method=method, max_keep=max_keep)
    _check_fn(device, nms, (boxes, scores, 0.5), kw)
    _check_fn(device, batched_nms, (boxes, scores, cats, 0.5), kw)
    _check_fn(device, nms, (boxes[:0], scores[:0], 0.5), kw)


# ------------------------------------------------------------------------------------ boxes, anchors
BASE = generate_anchors([8, 16], [0.5, 1, 2], dtype=np.float64)
ANCHORS = grid_anchors(BASE, (6, 6), 8)
GT = np.array([[4.0, 4.0, 20.0, 18.0], [20.0, 8.0, 36.0, 40.0], [30.0, 30.0, 31.0, 31.0]])
A, B = _boxes(50, 1), _boxes(30, 2)
BOX_CASES = {
    "box_area": (box_area, (A,)),
    "box_iou": (box_iou, (A, B)),
    "box_iou_cxcywh": (lambda a, b: box_iou(a, b, fmt="cxcywh"), (A, B)),
    "encode_boxes": (lambda g, p: encode_boxes(g, p, HEAD_BOX_WEIGHTS), (B, A[:30])),
    "decode_boxes": (lambda d, p: decode_boxes(d, p, HEAD_BOX_WEIGHTS),
                     (RNG.normal(scale=2.0, size=(30, 8)), A[:30])),
    "clip_boxes": (lambda b: clip_boxes(b, (60, 70)), (A,)),
    "remove_small_boxes": (lambda b: remove_small_boxes(b, 20.0), (A,)),
    "hflip_boxes": (lambda b: hflip_boxes(b, 100), (A,)),
    "xyxy_xywh": (lambda b: box_xywh_to_xyxy(box_xyxy_to_xywh(b)), (A,)),
    "grid_anchors": (lambda b: grid_anchors(b, (5, 7), (8, 6), offset=0.5), (BASE,)),
    "label_anchors": (label_anchors, (ANCHORS, GT)),
    "label_anchors_border": (lambda a, g: label_anchors(a, g, image_size=(40, 44), allowed_border=2.0),
                             (ANCHORS, GT)),
    "label_anchors_no_gt": (label_anchors, (ANCHORS, GT[:0])),
    "sample_labels": (lambda lab: sample_labels(lab, 16, rng=3), (label_anchors(ANCHORS, GT)[0],)),
}


@pytest.mark.parametrize("case", list(BOX_CASES))
def test_boxes_and_anchors(device, case):
    fn, args = BOX_CASES[case]
    _check_fn(device, fn, args)


# ------------------------------------------------------------------------------------ losses
N, K, R, M = 7, 4, 3, 5
LABELS = np.array([0, 3, -1, 2, 1, 1, 0])                       # -1: ignored
PRED, TARGET = RNG.standard_normal((N, 4)), RNG.standard_normal((N, 4))
LOGITS = RNG.standard_normal((N, K)) * 3
MASK_ARGS = (RNG.standard_normal((R, K, M, M)) * 2, np.array([1, 0, 3]), RNG.random((R, M, M)) > 0.5)
LOSS_CASES = {
    "ce_mean": ("softmax_cross_entropy", (LOGITS, LABELS), {}),
    "ce_weights_sum": ("softmax_cross_entropy", (LOGITS, LABELS),
                       dict(weights=RNG.random(N), reduction="sum")),
    "ce_none": ("softmax_cross_entropy", (LOGITS, LABELS), dict(reduction="none")),
    "ce_normalizer": ("softmax_cross_entropy", (LOGITS, LABELS), dict(normalizer=5.0)),
    "smooth_l1": ("smooth_l1", (PRED, TARGET), dict(beta=1.0 / 9)),
    "smooth_l1_beta0_weights_mean": ("smooth_l1", (PRED, TARGET),
                                     dict(beta=0.0, weights=(RNG.random((N, 1)) > 0.5) * 1.0,
                                          reduction="mean")),
    "smooth_l1_none": ("smooth_l1", (PRED, TARGET), dict(reduction="none")),
    "bce": ("bce_with_logits", (LOGITS, (RNG.random((N, K)) > 0.5) * 1.0), {}),
    "bce_weights_normalizer": ("bce_with_logits", (LOGITS, RNG.random((N, K))),
                               dict(weights=RNG.random((N, 1)), reduction="sum", normalizer=3.0)),
    "bce_none": ("bce_with_logits", (LOGITS, RNG.random((N, K))), dict(reduction="none")),
    "mask": ("mask_loss", MASK_ARGS, {}),
    "mask_softmax": ("mask_loss_softmax", MASK_ARGS, {}),
}


@pytest.mark.parametrize("case", list(LOSS_CASES))
def test_losses(device, case):
    name, args, kwargs = LOSS_CASES[case]
    fwd, bwd = getattr(losses, f"{name}_forward"), getattr(losses, f"{name}_backward")
    _check_pair(device, fwd, bwd, args, kwargs)


@pytest.mark.parametrize("fn", [losses.sigmoid, losses.log_softmax])
def test_loss_helpers(device, fn):
    _check_fn(device, fn, (LOGITS * 100,))


# ------------------------------------------------------------------------------------ layers
X = RNG.standard_normal((2, 4, 8, 7))
LAYER_CASES = {
    # dx by the flipped-kernel convolution (Cout < Cin), by col2im (stride 2), tiled (kernel = stride)
    "conv2d_3x3": (conv2d_forward, conv2d_backward,
                   (X, RNG.standard_normal((3, 4, 3, 3)), RNG.standard_normal(3)), dict(padding=1)),
    "conv2d_3x3_stride2": (conv2d_forward, conv2d_backward,
                           (X, RNG.standard_normal((5, 4, 3, 3)), RNG.standard_normal(5)),
                           dict(stride=2, padding=1)),
    "conv2d_2x2_stride2_nobias": (conv2d_forward, conv2d_backward,
                                  (X[..., :6], RNG.standard_normal((5, 4, 2, 2))), dict(stride=2)),
    "conv_transpose2d_2x2": (conv_transpose2d_forward, conv_transpose2d_backward,
                             (X, RNG.standard_normal((4, 3, 2, 2)), RNG.standard_normal(3)), dict(stride=2)),
    "conv_transpose2d_3x3_outpad": (conv_transpose2d_forward, conv_transpose2d_backward,
                                    (X, RNG.standard_normal((4, 2, 3, 3))),
                                    dict(stride=2, padding=1, output_padding=1)),
    "group_norm": (group_norm_forward, group_norm_backward,
                   (X, RNG.standard_normal(4), RNG.standard_normal(4), 2), {}),
    "frozen_batch_norm": (frozen_batch_norm_forward, frozen_batch_norm_backward,
                          (X, RNG.standard_normal(4), RNG.standard_normal(4), RNG.standard_normal(4),
                           RNG.random(4) + 0.5), {}),
    "max_pool_3x3_stride2_pad1": (max_pool2d_forward, max_pool2d_backward, (X, 3, 2, 1), {}),
    "max_pool_2x2": (max_pool2d_forward, max_pool2d_backward, (X, 2), {}),
    "upsample_scale2": (upsample_nearest2d_forward, upsample_nearest2d_backward, (X,), dict(scale_factor=2)),
    "upsample_size": (upsample_nearest2d_forward, upsample_nearest2d_backward, (X,), dict(size=(13, 11))),
    "upsample_size_multiple": (upsample_nearest2d_forward, upsample_nearest2d_backward, (X,),
                               dict(size=(24, 14))),
    "linear": (linear_forward, linear_backward,
               (X[0, 0], RNG.standard_normal((5, 7)), RNG.standard_normal(5)), {}),
    "linear_3d_nobias": (linear_forward, linear_backward, (X[0], RNG.standard_normal((5, 7))), {}),
    "relu": (relu_forward, relu_backward, (X,), {}),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layers(device, case):
    fwd, bwd, args, kwargs = LAYER_CASES[case]
    _check_pair(device, fwd, bwd, args, kwargs)


def test_backbone(device):
    """resnet_fpn_tiny moved with ``Module.to``: forward, input gradient and parameter gradients."""
    m = resnet_fpn_tiny(rng=4, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 64, 64))
    P = m(x)
    dP = [rng.standard_normal(p.shape) for p in P]
    dx = m.backward(dP)
    grads = {k: v.copy() for k, v in m.named_grads().items()}
    m.zero_grad()
    m.to(device.name)
    _assert_same(device, m(device.to(x)), P, tol=1e-9)
    _assert_same(device, m.backward(_to(device, dP)), dx, tol=1e-9)
    _assert_same(device, m.named_grads(), grads, tol=1e-9)


# ------------------------------------------------------------------------------------ masks
GT_MASKS = np.zeros((3, 20, 24), dtype=bool)
GT_MASKS[0, 2:12, 3:15] = True
GT_MASKS[1, 8:19, 10:23] = True
GT_MASKS[2, 5:9, 1:4] = True
MASK_ROIS = np.array([[2.5, 1.0, 16.0, 13.5], [9.0, 7.5, 25.0, 21.0], [0.0, 4.0, 5.0, 10.0],
                      [-3.0, 0.5, 12.0, 9.0]])
MATCHED = np.array([0, 1, 2, 0])
MASK_CASES = {
    "paste_masks_in_image": (lambda p, b: paste_masks_in_image(p, b, (20, 24)),
                             (RNG.random((4, 7, 7)), MASK_ROIS)),
    "paste_masks_in_image_empty": (lambda p, b: paste_masks_in_image(p, b, (20, 24)),
                                   (np.zeros((0, 7, 7)), MASK_ROIS[:0])),
    "mask_targets_for_rois": (lambda g, m, r: mask_targets_for_rois(g, m, r, M=6),
                              (GT_MASKS, MATCHED, MASK_ROIS)),
    "mask_targets_for_rois_mini": (lambda g, m, r, b: mask_targets_for_rois(g, m, r, M=6, gt_boxes=b),
                                   (minimize_mask(masks_to_boxes(GT_MASKS), GT_MASKS, (8, 8)), MATCHED,
                                    MASK_ROIS, masks_to_boxes(GT_MASKS))),
    "masks_to_boxes": (masks_to_boxes, (GT_MASKS,)),
    "minimize_expand_mask": (lambda b, m: expand_mask(b, minimize_mask(b, m, (8, 8)), (20, 24)),
                             (masks_to_boxes(GT_MASKS), GT_MASKS)),
}


@pytest.mark.parametrize("case", list(MASK_CASES))
def test_masks(device, case):
    fn, args = MASK_CASES[case]
    _check_fn(device, fn, args)
