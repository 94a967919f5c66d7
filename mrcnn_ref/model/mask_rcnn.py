"""Mask R-CNN: the whole model, its training loss and its hand-written backward pass.

Forward (training), for one image::

    image (1, 3, H, W) ──backbone+FPN──► P2 P3 P4 P5 P6
        RPN head on P2..P6 ──► objectness, deltas ──► RPN losses (sampled anchors)
                                              └────► proposals (no gradient) ─► + gt boxes
        proposal targets: match, sample 128 RoIs (25 % fg), box and mask targets
        multi-level RoIAlign 7×7 on P2..P5 ──► box head ──► classifier + box losses
        multi-level RoIAlign 14×14 (fg RoIs) ──► mask head ──► mask loss

    total = loss_objectness + loss_rpn_box_reg + loss_classifier + loss_box_reg + loss_mask

Backward (``d total = 1``), the same graph walked in reverse — the order is explicit in
:meth:`MaskRCNN.backward`:

1. mask loss → mask head → multi-level RoI backward → gradients on P2..P5;
2. box losses → box head → multi-level RoI backward → more gradients on P2..P5;
3. RPN losses → RPN head (every level, reverse order) → gradients on P2..P6;
4. the three contributions are summed per level and sent through FPN and backbone.

The proposals are treated as constants (as in the paper's "approximate joint training" and in
torchvision, where they are detached): the gradient computed here is the gradient of the loss with
the proposals held fixed. ``forward_train(..., proposals=...)`` lets a test freeze them so a
finite-difference check of the whole loss sees exactly this function.

With ``feature_mode = "single"`` (:mod:`~mrcnn_ref.model.single_level`) the pyramid is one ResNet
map (C4, stride 16, or C5, stride 32): the RPN runs on it with every anchor size at every position,
and both RoI heads read it; the steps above are otherwise the same.

Batch size 1 (one image per call; average gradients over calls for a larger batch). Images of any
size are accepted: they are zero-padded at the bottom/right to a multiple of 32 (the coarsest
backbone stride); boxes are clipped to the unpadded size.
"""
from __future__ import annotations

import numpy as np

from .._checks import check_array, reads_values
from ..backend import asnumpy, backend_name, get_array_module
from ..nn.module import Module
from .config import MaskRCNNConfig, load_config
from ..data.masks import paste_masks_in_image
from ..ops.losses import log_softmax, sigmoid
from .backbone import resnet50_fpn, resnet_fpn_tiny
from .multilevel_roi import multilevel_roi_backward, multilevel_roi_forward
from .roi_heads import (BoxHead, MaskHead, box_loss_backward, box_loss_forward, mask_head_loss_backward,
                        mask_head_loss_forward, postprocess_detections)
from .single_level import single_level_backbone
from .rpn import (RPNHead, flatten_rpn_outputs, generate_proposals, pyramid_level_anchors,
                  rpn_loss_backward, rpn_loss_forward, rpn_targets, unflatten_rpn_grads)
from .targets import proposal_targets

__all__ = ["MaskRCNN", "LOSS_NAMES", "build_backbone", "NonFiniteOutputs"]

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
PYRAMID_STRIDES = (4, 8, 16, 32, 64)      # P2..P6
ROI_STRIDES = (4, 8, 16, 32)              # P2..P5 feed the RoI heads
SIZE_DIVISIBILITY = 32


def build_backbone(config: MaskRCNNConfig, rng, dtype=np.float32):
    """The ResNet-FPN named by ``config.backbone`` (or, with ``feature_mode = "single"``, its
    ResNet cut at ``single_stride``); returns ``(module, out_channels)``."""
    if config.feature_mode == "single":
        net = single_level_backbone(config.backbone, config.single_stride, rng=rng, dtype=dtype,
                                    **config.backbone_overrides)
        return net, int(net.out_channels)
    factory = {"resnet_fpn_tiny": resnet_fpn_tiny, "resnet50_fpn": resnet50_fpn}[config.backbone]
    net = factory(rng=rng, dtype=dtype, **config.backbone_overrides)
    return net, int(net.out_channels)


class NonFiniteOutputs(FloatingPointError):
    """The network produced NaN/inf values before a loss could be computed (the weights have
    diverged). ``train`` turns it into ``TrainingDiverged``."""


class _Cache:
    """What :meth:`MaskRCNN.backward` needs from the last :meth:`MaskRCNN.forward_train`."""


class MaskRCNN(Module):
    """Mask R-CNN with a ResNet-FPN backbone, every backward written by hand.

    ``MaskRCNN(config, rng)``: config a :class:`MaskRCNNConfig` or preset name; rng a
    ``numpy.random.Generator`` (or seed) used to initialise the weights and, afterwards, to sample
    anchors and RoIs during training (pass ``rng=`` to :meth:`forward_train` to control sampling).
    backend: where the parameters live ('numpy', 'cupy', 'emulated'; default: the default backend
    of :mod:`mrcnn_ref.backend`). Weights are always drawn on the host, so a seed gives the same
    model on every backend.

    Methods: :meth:`forward_train` → ``(losses dict, total)``; :meth:`backward` fills
    ``named_grads()``; :meth:`predict` → detections; plus ``named_parameters``, ``named_grads``,
    ``zero_grad``, ``load_parameters``, ``astype`` from :class:`~mrcnn_ref.nn.module.Module`.
    """

    def __init__(self, config="shapes", rng=None, dtype=np.float32, backend=None):
        super().__init__()
        cfg = load_config(config)
        rng = np.random.default_rng(rng)
        self.config = cfg
        self.backbone, c = build_backbone(cfg, rng, dtype)
        a = cfg.num_anchors_per_location
        self.rpn = RPNHead(c, a, rng=rng, dtype=dtype)
        self.box_head = BoxHead(c, cfg.box_roi_size, cfg.box_head_dim, cfg.num_classes, rng=rng,
                                dtype=dtype)
        mask_channels = 1 if cfg.mask_class_agnostic else cfg.num_classes
        self.mask_head = MaskHead(c, cfg.mask_head_convs, cfg.mask_head_channels, mask_channels,
                                  rng=rng, dtype=dtype)
        if cfg.feature_mode == "fpn":
            self.pyramid_strides, self.roi_strides = PYRAMID_STRIDES, ROI_STRIDES
        else:
            self.pyramid_strides = self.roi_strides = (cfg.single_stride,)
        self.rng = rng
        self._anchor_cache = {}
        self._train_cache = None
        self.last_proposals = None
        self.to(backend_name() if backend is None else backend)

    # ------------------------------------------------------------------ helpers
    def prepare_image(self, images, where):
        check_array(images, "images", where, ndim=4, floating=True, finite=True)
        if images.shape[0] != 1 or images.shape[1] != 3:
            raise ValueError(f"{where}: images must have shape (1, 3, H, W) (batch size 1), got "
                             f"{tuple(images.shape)}")
        dt = self.dtype
        if images.dtype != dt:
            raise TypeError(f"{where}: images dtype {images.dtype} does not match the model's "
                            f"parameters ({dt}); cast one of them")
        xp = get_array_module(images)
        h, w = images.shape[2:]
        ph = -h % SIZE_DIVISIBILITY
        pw = -w % SIZE_DIVISIBILITY
        if ph or pw:
            images = xp.pad(images, ((0, 0), (0, 0), (0, ph), (0, pw)))
        return images, (h, w)

    def _anchors(self, features):
        """Anchors for the pyramid's feature shapes (cached per shape)."""
        xp = get_array_module(features[0])
        key = (tuple(f.shape[2:] for f in features), str(features[0].dtype), xp.__name__)
        if key not in self._anchor_cache:
            cfg = self.config
            if cfg.feature_mode == "fpn":
                self._anchor_cache[key] = pyramid_level_anchors(
                    [f.shape[2:] for f in features], PYRAMID_STRIDES, cfg.anchor_sizes, cfg.anchor_ratios,
                    dtype=features[0].dtype, xp=xp, scales=cfg.anchor_scales)
            else:   # one map: every level's sizes (x scales) at every position, as the C4 RPN
                sizes = tuple(float(s) * float(sc) for s in cfg.anchor_sizes for sc in cfg.anchor_scales)
                self._anchor_cache[key] = pyramid_level_anchors(
                    [features[0].shape[2:]], self.pyramid_strides, (1.0,), cfg.anchor_ratios,
                    dtype=features[0].dtype, xp=xp, scales=sizes)
        return self._anchor_cache[key]

    def _roi_kwargs(self):
        cfg = self.config
        return dict(strides=self.roi_strides, roi_op=cfg.roi_op, sampling_ratio=cfg.roi_sampling_ratio,
                    aligned=cfg.roi_aligned, canonical_size=cfg.roi_canonical_size,
                    canonical_level=cfg.roi_canonical_level)

    def _roi_features(self, feats):
        """The maps the RoI heads read: P2..P5 of the pyramid, or the one single-level map."""
        return feats[:len(self.roi_strides)]

    @staticmethod
    def _rois5(boxes):
        xp = get_array_module(boxes)
        return xp.concatenate([xp.zeros((boxes.shape[0], 1), dtype=boxes.dtype), boxes], axis=1)

    def clear_caches(self):
        """Drop every layer's cached activations (keeps the gradients)."""
        for _, mod in self.named_modules():
            mod._stack.clear()
        self.rpn._levels_stack.clear()
        self._train_cache = None

    def zero_grad(self):
        super().zero_grad()
        self.clear_caches()

    # ------------------------------------------------------------------ training
    def forward_train(self, images, targets, rng=None, proposals=None):
        """Training losses of one image.

        images: (1, 3, H, W) float, the model's dtype. targets: dict with ``boxes`` (G, 4) float,
        ``labels`` (G,) int in 1..K-1, ``masks`` (G, H, W) bool/uint8 (G may be 0).
        rng: Generator for anchor/RoI sampling (default: the model's). proposals: optional (P, 4)
        to use instead of the RPN's (to freeze them, e.g. in a gradient check).
        Returns ``(losses, total)``: a dict of the five losses (Python floats) and their sum.
        Stores what :meth:`backward` needs, and the proposals used in ``self.last_proposals``.
        """
        where = "MaskRCNN.forward_train"
        cfg = self.config
        rng = self.rng if rng is None else rng
        images, (h, w) = self.prepare_image(images, where)
        xp = get_array_module(images)
        dtype = images.dtype
        if not isinstance(targets, dict) or "boxes" not in targets or "labels" not in targets:
            raise TypeError(f"{where}: targets must be a dict with 'boxes', 'labels' and 'masks'")
        gt_boxes = xp.asarray(targets["boxes"], dtype=dtype).reshape(-1, 4)
        gt_labels = xp.asarray(targets["labels"]).astype(xp.int64).reshape(-1)
        gt_masks = targets.get("masks")
        if gt_masks is not None:
            gt_masks = xp.asarray(gt_masks)
            if gt_masks.ndim != 3 or gt_masks.shape[0] != gt_boxes.shape[0] or gt_masks.shape[1:] != (h, w):
                raise ValueError(f"{where}: targets['masks'] must have shape ({gt_boxes.shape[0]}, {h}, "
                                 f"{w}), got {tuple(gt_masks.shape)}")
        if gt_labels.shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"{where}: targets has {gt_boxes.shape[0]} boxes but "
                             f"{gt_labels.shape[0]} labels")
        if (gt_labels.size and reads_values(gt_labels)
                and (int(gt_labels.min()) < 1 or int(gt_labels.max()) >= cfg.num_classes)):
            raise ValueError(f"{where}: target labels must lie in 1..{cfg.num_classes - 1}, got "
                             f"{int(gt_labels.min())}..{int(gt_labels.max())}")
        c = _Cache()
        c.padded_shape, c.image_size = images.shape, (h, w)

        # 1. backbone + FPN
        feats = self.backbone(images)                              # [P2..P6] (single: [C])
        c.feat_shapes = [f.shape for f in feats]

        # 2. RPN head, targets, losses
        obj_levels, dlt_levels = self.rpn(feats)
        c.obj_shapes = [o.shape for o in obj_levels]
        obj, dlt = flatten_rpn_outputs(obj_levels, dlt_levels)     # (1, T), (1, T, 4)
        if not bool(xp.isfinite(obj).all() & xp.isfinite(dlt).all()):     # one read
            # decoding inf deltas into proposals would fail deep inside; say what happened instead
            raise NonFiniteOutputs(f"{where}: the RPN produced NaN/inf objectness or box deltas "
                                   "(the weights have diverged)")
        anchors, _, counts = self._anchors(feats)
        rpn_t = rpn_targets(anchors, gt_boxes, rng=rng, fg_iou=cfg.rpn_fg_iou, bg_iou=cfg.rpn_bg_iou,
                            batch_size=cfg.rpn_batch_size, positive_fraction=cfg.rpn_positive_fraction)
        (l_obj, l_rpn_box), c.rpn_loss = rpn_loss_forward(obj[0], dlt[0], rpn_t,
                                                          beta=cfg.rpn_smooth_l1_beta)

        # 3. proposals (constants for the rest of the graph)
        if proposals is None:
            proposals, _ = generate_proposals(
                obj[0], dlt[0], anchors, counts, (h, w), pre_nms_top_n=cfg.rpn_pre_nms_top_n_train,
                post_nms_top_n=cfg.rpn_post_nms_top_n_train, nms_thresh=cfg.rpn_nms_thresh,
                min_size=cfg.rpn_min_size)
        proposals = xp.asarray(proposals, dtype=dtype)
        c.proposals = proposals
        self.last_proposals = proposals     # (P, 4), for inspection / freezing

        # 4. sample RoIs and their targets
        t = proposal_targets(proposals, gt_boxes, gt_labels, gt_masks, rng=rng,
                             batch_size_per_image=cfg.box_batch_size_per_image,
                             positive_fraction=cfg.box_positive_fraction, fg_iou=cfg.box_fg_iou,
                             bg_iou_low=cfg.box_bg_iou_low, box_weights=cfg.box_weights,
                             mask_size=cfg.mask_size)
        c.roi_targets = t
        rois5 = self._rois5(t["rois"])

        # 5. box branch
        box_feats, c.box_roi = multilevel_roi_forward(self._roi_features(feats), rois5, cfg.box_roi_size,
                                                      **self._roi_kwargs())
        class_logits, box_deltas = self.box_head(box_feats)
        (l_cls, l_box), c.box_loss = box_loss_forward(class_logits, box_deltas, t["labels"],
                                                      t["regression_targets"], beta=cfg.box_smooth_l1_beta)

        # 6. mask branch (foreground RoIs only; none -> no mask loss). With mask_rois_per_image
        #    > 0 a random subset of at most that many foreground RoIs trains the mask head.
        nf = t["num_fg"]
        c.has_mask = nf > 0 and t["mask_targets"] is not None
        if c.has_mask:
            sel = xp.arange(nf)
            if 0 < cfg.mask_rois_per_image < nf:
                sel = xp.asarray(np.sort(rng.choice(nf, cfg.mask_rois_per_image, replace=False)))
            mask_feats, c.mask_roi = multilevel_roi_forward(self._roi_features(feats), rois5[sel],
                                                            cfg.mask_roi_size, **self._roi_kwargs())
            mask_logits = self.mask_head(mask_feats)
            mask_labels = t["labels"][sel]
            if cfg.mask_class_agnostic:                          # the head's one channel
                mask_labels = xp.zeros_like(mask_labels)
            l_mask, c.mask_loss = mask_head_loss_forward(mask_logits, mask_labels,
                                                         t["mask_targets"][sel], kind=cfg.mask_loss)
        else:
            l_mask = xp.zeros((), dtype=dtype)

        values = asnumpy(xp.stack([xp.asarray(v, dtype=dtype) for v in
                                   (l_obj, l_rpn_box, l_cls, l_box, l_mask)]))   # one read
        losses = {k: float(v) for k, v in zip(LOSS_NAMES, values)}
        total = float(sum(values))
        self._train_cache = c
        return losses, total

    def backward(self, image_grad=True):
        """Back-propagate ``d total / d total = 1`` through everything; accumulates into the grads.

        Call after :meth:`forward_train`; returns the gradient w.r.t. the (unpadded) image, or
        None with ``image_grad=False`` (training needs only the parameters' gradients; the stem
        convolution then skips its input gradient, ~2 % of a shapes step).
        """
        c = self._train_cache
        if c is None:
            raise RuntimeError("MaskRCNN.backward: call forward_train first (once per backward)")
        self._train_cache = None
        xp = get_array_module(c.proposals)
        dtype = c.proposals.dtype
        d_feats = [xp.zeros(s, dtype=dtype) for s in c.feat_shapes]   # dP2..dP6

        # 1. mask branch: loss -> mask head -> RoI features -> P2..P5
        if c.has_mask:
            d_mask_logits = mask_head_loss_backward(1.0, c.mask_loss)
            d_mask_feats = self.mask_head.backward(d_mask_logits)
            for i, g in enumerate(multilevel_roi_backward(d_mask_feats, c.mask_roi)):
                d_feats[i] += g

        # 2. box branch: losses -> box head -> RoI features -> P2..P5
        d_logits, d_deltas = box_loss_backward(1.0, 1.0, c.box_loss)
        d_box_feats = self.box_head.backward(d_logits, d_deltas)
        for i, g in enumerate(multilevel_roi_backward(d_box_feats, c.box_roi)):
            d_feats[i] += g

        # 3. RPN: losses -> flattened outputs -> per-level maps -> RPN head -> P2..P6
        d_obj, d_dlt = rpn_loss_backward(1.0, 1.0, c.rpn_loss)      # (T,), (T, 4)
        d_obj_levels, d_dlt_levels = unflatten_rpn_grads(d_obj[None], d_dlt[None], c.obj_shapes)
        for i, g in enumerate(self.rpn.backward(d_obj_levels, d_dlt_levels)):
            d_feats[i] += g

        # 4. FPN + backbone
        d_images = self.backbone.backward(d_feats, need_dx=image_grad)
        if not image_grad:
            return None
        h, w = c.image_size
        return d_images[:, :, :h, :w]

    # ------------------------------------------------------------------ inference
    def predict(self, images, score_thresh=None):
        """Detections for one image (1, 3, H, W): the paper's inference.

        Backbone and FPN, the RPN's proposals, the box head on them, per-class NMS
        (:func:`~mrcnn_ref.model.roi_heads.postprocess_detections`), then the mask head on the
        detected boxes, each mask pasted into the image. Returns a dict of NumPy/CuPy arrays:
        ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) int64 in 1..K-1, ``masks`` (D, H, W)
        bool (the class's mask probability >= ``mask_threshold``), sorted by decreasing score.
        The config's test-time refinements (flip and scale views, a second box pass, mask
        rescoring, Matrix NMS) are :class:`mrcnn_ref.model.tta.TestTimePredictor`'s.
        """
        cfg = self.config
        padded, (h, w) = self.prepare_image(images, "MaskRCNN.predict")
        xp = get_array_module(padded)
        try:
            feats = self.backbone(padded)
            proposals = self.proposals(feats, (h, w))
            class_logits, box_deltas = self.box_outputs(feats, proposals)
            boxes, scores, labels = self.detections(class_logits, box_deltas, proposals, (h, w),
                                                    score_thresh)
            if boxes.shape[0] > 0:
                masks = paste_masks_in_image(self.mask_probs(feats, boxes, labels), boxes, (h, w),
                                             threshold=cfg.mask_threshold)
            else:
                masks = xp.zeros((0, h, w), dtype=bool)
        finally:
            self.clear_caches()
        return dict(boxes=boxes, scores=scores, labels=labels, masks=masks)

    def proposals(self, feats, image_size):
        """The RPN's test-time proposals ``(P, 4)`` for the pyramid ``feats`` of an image of
        ``image_size = (h, w)``."""
        cfg = self.config
        obj_levels, dlt_levels = self.rpn(feats)
        obj, dlt = flatten_rpn_outputs(obj_levels, dlt_levels)
        anchors, _, counts = self._anchors(feats)
        proposals, _ = generate_proposals(
            obj[0], dlt[0], anchors, counts, image_size, pre_nms_top_n=cfg.rpn_pre_nms_top_n_test,
            post_nms_top_n=cfg.rpn_post_nms_top_n_test, nms_thresh=cfg.rpn_nms_thresh,
            min_size=cfg.rpn_min_size)
        return proposals

    def detections(self, class_logits, box_deltas, proposals, image_size, score_thresh=None):
        """Box-head outputs -> ``(boxes, scores, labels)`` after per-class NMS, with the config's
        thresholds (``score_thresh`` overrides the config's)."""
        cfg = self.config
        return postprocess_detections(
            class_logits, box_deltas, proposals, image_size,
            score_thresh=cfg.score_thresh if score_thresh is None else score_thresh,
            nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
            box_weights=cfg.box_weights, min_size=cfg.box_min_size)

    def box_outputs(self, feats, boxes):
        """Box head on ``boxes (P, 4)``: ``(class_logits (P, K), box_deltas (P, 4K))``."""
        cfg = self.config
        box_feats, _ = multilevel_roi_forward(self._roi_features(feats), self._rois5(boxes), cfg.box_roi_size,
                                              **self._roi_kwargs())
        return self.box_head(box_feats)

    def mask_probs(self, feats, boxes, labels):
        """Mask head on ``boxes (D, 4)``: the probabilities ``(D, M, M)`` of each box's class."""
        cfg = self.config
        xp = get_array_module(boxes)
        mask_feats, _ = multilevel_roi_forward(self._roi_features(feats), self._rois5(boxes), cfg.mask_roi_size,
                                               **self._roi_kwargs())
        logits = self.mask_head(mask_feats)                       # (D, K, M, M); K = 1 class-agnostic
        rows = xp.arange(boxes.shape[0])
        if cfg.mask_class_agnostic:
            labels = xp.zeros_like(labels)
        if cfg.mask_loss == "sigmoid":
            return sigmoid(logits[rows, labels])
        return xp.exp(log_softmax(logits, axis=1))[rows, labels]
