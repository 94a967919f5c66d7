"""Inference-only refinements: flip and multi-scale test-time augmentation (with a second
box-regression pass), mask rescoring and Matrix NMS.

They go beyond the paper's inference (:meth:`mrcnn_ref.model.mask_rcnn.MaskRCNN.predict`). None
changes training or the weights; each is switched on by a config field (``test_flip``,
``test_scales``, ``box_refine``, ``mask_rescoring``, ``matrix_nms``; off by default, on in the
``shapes`` preset), and :class:`TestTimePredictor` runs them: ``TestTimePredictor(model)(image)``
returns what ``model.predict(image)`` does, refined. With every refinement off it *is*
``model.predict``.

**Test-time augmentation.** The network is run again on other *views* of the image — its mirror
(``x' = w - x``; the model was trained with random horizontal flips, so it knows that view too),
copies enlarged by the factors of ``test_scales`` (bilinear, :func:`resize_images`), and their
mirrors. The proposals come from the image itself; the *same* proposals, carried into each view
(mirrored, scaled), get a second, third, ... opinion from the box head:

* class probabilities are averaged over the views;
* box deltas are averaged after moving a mirror's deltas back into the image's frame: a shift
  ``tx`` to the right in the mirror is a shift to the left here, so ``tx -> -tx``; ``ty``, ``tw``,
  ``th`` do not change. An enlarged view needs no correction (the deltas are relative to the
  proposal, which is enlarged with the image).

With ``box_refine`` the box head runs once more, in every view, on the detections themselves
(after the per-class NMS), and each box moves by the averaged deltas of its own class: iterative
box regression (Gidaris & Komodakis 2015), :meth:`TestTimePredictor.refine_boxes`.

Then the final boxes go through the mask head in every view and the ``M x M`` mask
probabilities are averaged (a mirror's mask flipped back along its columns; a scaled view's mask
is already in box coordinates). Detectron2 calls this TTA (horizontal flip and several test
sizes); each view adds the cost of one more pass. An enlarged view helps small shapes most (an
object of 20 px covers 5 × 5 cells of the stride-4 level P2 in the image, 7.5 × 7.5 at 1.5×;
measured in docs/recipe.md).

**Mask rescoring** ("maskness", from SOLOv2, Wang et al. 2020). A detection's class score says how
sure the box head is of the class, not how good its mask is. Multiplying the score by the mean
probability of the pixels the mask keeps (``p >= threshold``) ranks confident, crisp masks above
hesitant ones — which is what mask AP rewards — at no training cost.

**Matrix NMS** (also SOLOv2). The box NMS keeps two detections whose *boxes* overlap less than
its threshold, even when their *masks* are nearly the same object — a duplicate, or the same
object called two classes. Matrix NMS does not delete anything: it lowers each detection's score
by how much its mask overlaps the masks of higher-scored detections, all pairs at once. With the
detections sorted by score and ``iou[i, j]`` the mask IoU of ``i`` (higher) and ``j`` (lower),

    decay_j = min over i < j of  exp(-sigma * (iou[i, j]**2 - comp_i**2)),
    comp_i  = max over k < i of  iou[k, i]          (how much i is itself overlapped),

so a detection overlapped by one that is itself a duplicate is decayed less. The top detection
keeps its score (decay 1), and every decay is in (0, 1]. SOLOv2 compares masks of one class only
(``per_class``); in the shapes data, where occluded parts are cut out of the masks, the visible
masks of two objects never overlap, so a large mask IoU between *any* two detections means one of
them is wrong (``all_classes``).
"""
from __future__ import annotations

import numbers

import numpy as np

from .._checks import check_array
from ..backend import argsort_descending, get_array_module
from ..boxes import clip_boxes, decode_boxes, hflip_boxes
from ..data.masks import mask_iou, paste_masks_in_image, pixel_to_grid_weights
from ..ops.losses import log_softmax

__all__ = ["TestTimePredictor", "uses_refinements", "average_box_outputs", "resize_images",
           "unflip_masks", "maskness", "matrix_nms_decay"]

# Boxes go into the mirror and back with mrcnn_ref.boxes.hflip_boxes (the flip augmentation's).


def average_box_outputs(views):
    """Combine the box head's outputs for the same proposals seen in several views of the image.

    views: a list of ``(class_logits (P, K), box_deltas (P, 4K), mirrored)`` triples, one per view
    (the image itself, its mirror, an enlarged copy, ...); ``mirrored`` says whether that view is
    the left-right mirror. Returns ``(class_logits, box_deltas)`` ready for
    :func:`~mrcnn_ref.model.roi_heads.postprocess_detections`: the logits are ``log`` of the
    averaged softmax probabilities (their softmax *is* that average, since it sums to 1), the
    deltas the mean over the views, with each mirror's ``tx`` negated. A scaled view needs no
    correction: the deltas are offsets and log-sizes *relative to the proposal*, which scale with it.
    """
    where = "average_box_outputs"
    if not isinstance(views, (list, tuple)) or not views:
        raise ValueError(f"{where}: views must be a non-empty list of (class_logits, box_deltas, "
                         f"mirrored) triples, got {views!r}")
    shape = None
    probs = deltas = None
    for i, view in enumerate(views):
        if not isinstance(view, (list, tuple)) or len(view) != 3:
            raise ValueError(f"{where}: views[{i}] must be a (class_logits, box_deltas, mirrored) "
                             f"triple, got {type(view).__name__}")
        logits, box_deltas, mirrored = view
        check_array(logits, f"views[{i}] class_logits", where, ndim=2)
        check_array(box_deltas, f"views[{i}] box_deltas", where, ndim=2)
        p, k = shape = shape or logits.shape
        if logits.shape != (p, k) or box_deltas.shape != (p, 4 * k):
            raise ValueError(f"{where}: every view needs class_logits of shape {(p, k)} and box "
                             f"deltas of shape {(p, 4 * k)}; views[{i}] has {tuple(logits.shape)} "
                             f"and {tuple(box_deltas.shape)}")
        xp = get_array_module(logits)
        d = box_deltas.reshape(p, k, 4)
        if mirrored:
            d = d.copy()
            d[:, :, 0] *= -1                                  # tx: right in the mirror = left here
        pr = xp.exp(log_softmax(logits, axis=1))
        probs = pr if probs is None else probs + pr
        deltas = d if deltas is None else deltas + d
    n = len(views)
    probs, deltas = probs / n, deltas / n
    tiny = np.finfo(probs.dtype).tiny
    return xp.log(xp.maximum(probs, tiny)), deltas.reshape(p, 4 * k)


def resize_images(images, size):
    """Bilinear resize of ``images (N, C, H, W)`` to ``size = (H2, W2)`` (no anti-aliasing: for
    enlarging). Separable: each channel becomes ``Ry @ image @ Rx.T``, whose 1-D interpolation
    matrices are those of mini-masks' crop-and-resize
    (:func:`mrcnn_ref.data.masks.pixel_to_grid_weights`) for the "box" that is the whole image:
    output sample ``j`` reads the input at ``(j + 0.5) * H / H2 - 0.5`` (half-pixel centres, so a
    box edge at ``x`` lands at ``x * H2 / H``), clamped to the edge pixels. The weights are built in
    float64 and cast to the images' dtype. Keeps the dtype and the array module."""
    where = "resize_images"
    check_array(images, "images", where, ndim=4, floating=True)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in size)):
        raise ValueError(f"{where}: size must be a pair of positive ints (H2, W2), got {size!r}")
    xp = get_array_module(images)
    _, _, h, w = images.shape

    def weights(n_in, n_out):                         # (n_out, n_in)
        return pixel_to_grid_weights(xp.zeros(1), xp.full(1, float(n_in)), n_in, int(n_out), xp,
                                      xp.float64)[0].astype(images.dtype)

    return xp.ascontiguousarray(xp.matmul(xp.matmul(weights(h, size[0]), images), weights(w, size[1]).T))


def unflip_masks(mask_probs_mirror):
    """``(R, M, M)`` mask probabilities predicted for mirrored boxes, in the image's frame: the
    mask grid of a mirrored box is the original's with its columns reversed."""
    check_array(mask_probs_mirror, "mask_probs_mirror", "unflip_masks", ndim=3)
    return mask_probs_mirror[:, :, ::-1]


def maskness(mask_probs, threshold=0.5):
    """Mean probability of the pixels each mask keeps (``p >= threshold``); 0 for an empty mask.

    mask_probs: (R, M, M) in [0, 1]. Returns (R,) in [threshold, 1] (0 for an empty mask).
    """
    check_array(mask_probs, "mask_probs", "maskness", ndim=3)
    xp = get_array_module(mask_probs)
    keep = mask_probs >= threshold
    n = keep.sum(axis=(1, 2))
    total = xp.where(keep, mask_probs, 0).sum(axis=(1, 2))
    return xp.where(n > 0, total / xp.maximum(n, 1), 0).astype(mask_probs.dtype)


def matrix_nms_decay(masks, scores, labels=None, sigma=2.0):
    """SOLOv2's Matrix NMS (Gaussian kernel): the factor (D,) to multiply each score by.

    masks: (D, H, W) bool; scores: (D,) sorted in decreasing order (as ``predict`` returns them);
    labels: (D,) class ids to decay only within a class, or None to compare all detections.
    sigma > 0: larger decays overlapping detections more (SOLOv2's default 2.0). Returns factors
    in (0, 1]; the first detection's is 1. See the module docstring for the formula. The mask
    IoUs are :func:`mrcnn_ref.data.masks.mask_iou`'s, the COCO evaluation's own.
    """
    where = "matrix_nms_decay"
    check_array(masks, "masks", where, ndim=3)
    xp = get_array_module(masks)
    d = masks.shape[0]
    if scores.shape != (d,):
        raise ValueError(f"{where}: scores must have shape ({d},) to match masks, got {tuple(scores.shape)}")
    if labels is not None and labels.shape != (d,):
        raise ValueError(f"{where}: labels must have shape ({d},) to match masks, got {tuple(labels.shape)}")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise ValueError(f"{where}: sigma must be a number > 0, got {sigma!r}")
    if d > 1 and bool(xp.any(scores[1:] > scores[:-1])):
        raise ValueError(f"{where}: scores must be sorted in decreasing order")
    if d == 0:
        return xp.ones(0, dtype=xp.float64)
    iou = xp.triu(mask_iou(masks, masks), k=1)            # iou[i, j] for i < j (i scores higher)
    if labels is not None:
        iou = iou * (labels[:, None] == labels[None, :])
    comp = iou.max(axis=0)                                # comp_i = max over k < i of iou[k, i]
    factors = xp.exp(-sigma * (iou ** 2 - comp[:, None] ** 2))
    above = xp.triu(xp.ones((d, d), dtype=bool), k=1)     # only higher-scored detections decay j
    decay = xp.where(above, factors, xp.inf).min(axis=0)
    decay[0] = 1.0                                        # (entry (0, j) has comp_0 = 0: decay <= 1)
    return decay


def uses_refinements(config) -> bool:
    """Whether a model config asks for any test-time refinement."""
    return bool(config.test_flip or tuple(config.test_scales) != (1.0,) or config.box_refine
                or config.mask_rescoring or config.matrix_nms != "off")


class TestTimePredictor:
    """Inference with the model config's test-time refinements (see the module docstring).

    ``TestTimePredictor(model)(images (1, 3, H, W), score_thresh=None)`` returns the same dict as
    :meth:`MaskRCNN.predict <mrcnn_ref.model.mask_rcnn.MaskRCNN.predict>`. The steps are the
    paper's, with views added: the proposals come from the image itself; the box head sees them
    in every view (:meth:`box_outputs_in_views`); per-class NMS; with ``box_refine`` the box head
    once more at the detections (:meth:`refine_boxes`); the mask head in every view, averaged;
    with ``mask_rescoring`` each score times its mask's maskness; the masks pasted; with
    ``matrix_nms`` each score times its Matrix NMS decay.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, images, score_thresh=None):
        model, cfg = self.model, self.model.config
        if not uses_refinements(cfg):
            return model.predict(images, score_thresh)
        where = "TestTimePredictor"
        padded, (h, w) = model.prepare_image(images, where)
        xp = get_array_module(padded)
        try:
            feats = model.backbone(padded)
            proposals = model.proposals(feats, (h, w))
            views = [(feats, False, 1.0)]                        # (features, mirrored, scale)
            for s in cfg.test_scales:
                for mirrored in ((False, True) if cfg.test_flip else (False,)):
                    if s != 1.0 or mirrored:
                        views.append((model.backbone(self.view_image(images, mirrored, s, where)),
                                      mirrored, s))
            class_logits, box_deltas = self.box_outputs_in_views(views, proposals, (h, w))
            boxes, scores, labels = model.detections(class_logits, box_deltas, proposals, (h, w),
                                                     score_thresh)
            if boxes.shape[0] > 0 and cfg.box_refine:
                boxes = self.refine_boxes(views, boxes, labels, (h, w))
            if boxes.shape[0] > 0:
                probs = 0
                for f, mirrored, s in views:
                    p = model.mask_probs(f, self.boxes_in_view(boxes, mirrored, s, (h, w)), labels)
                    probs = probs + (unflip_masks(p) if mirrored else p)
                probs = probs / len(views)
                if cfg.mask_rescoring:
                    scores = scores * maskness(probs, cfg.mask_threshold)
                    order = argsort_descending(scores)
                    boxes, scores, labels, probs = boxes[order], scores[order], labels[order], probs[order]
                masks = paste_masks_in_image(probs, boxes, (h, w), threshold=cfg.mask_threshold)
                if cfg.matrix_nms != "off":
                    scores = scores * matrix_nms_decay(
                        masks, scores, labels if cfg.matrix_nms == "per_class" else None,
                        sigma=cfg.matrix_nms_sigma).astype(scores.dtype)
                    order = argsort_descending(scores)
                    boxes, scores, labels, masks = boxes[order], scores[order], labels[order], masks[order]
            else:
                masks = xp.zeros((0, h, w), dtype=bool)
        finally:
            model.clear_caches()
        return dict(boxes=boxes, scores=scores, labels=labels, masks=masks)

    def view_image(self, images, mirrored, scale, where="TestTimePredictor"):
        """A test-time view of ``images (1, 3, H, W)``: mirrored and/or enlarged by ``scale``,
        padded to /32 (the mirror of the *unpadded* image, padded on the right like the image)."""
        view = images[:, :, :, ::-1] if mirrored else images
        if scale != 1.0:
            h, w = images.shape[2:]
            view = resize_images(view, (round(h * scale), round(w * scale)))
        return self.model.prepare_image(view, where)[0]

    @staticmethod
    def boxes_in_view(boxes, mirrored, scale, image_size):
        """``boxes (N, 4)`` of the image in the coordinates of the view :meth:`view_image` makes."""
        h, w = image_size
        if mirrored:
            boxes = hflip_boxes(boxes, w)
        if scale != 1.0:      # the per-axis factors of the rounded view size
            xp = get_array_module(boxes)
            f = xp.asarray([round(w * scale) / w, round(h * scale) / h] * 2, dtype=boxes.dtype)
            boxes = boxes * f
        return boxes

    def box_outputs_in_views(self, views, boxes, image_size):
        """The box head on ``boxes (P, 4)`` of the image in every view ``(features, mirrored,
        scale)``, averaged (:func:`average_box_outputs`); the image alone gives the head's own
        outputs, as in :meth:`MaskRCNN.predict <mrcnn_ref.model.mask_rcnn.MaskRCNN.predict>`."""
        if len(views) == 1:
            return self.model.box_outputs(views[0][0], boxes)
        return average_box_outputs(
            [(*self.model.box_outputs(f, self.boxes_in_view(boxes, mirrored, s, image_size)), mirrored)
             for f, mirrored, s in views])

    def refine_boxes(self, views, boxes, labels, image_size):
        """Iterative box regression (Gidaris & Komodakis 2015; Cascade R-CNN's "iterative BBox"):
        the box head once more, now on the detections ``boxes (D, 4)`` themselves, averaged over
        the test-time ``views``; each box moves by its own class's deltas. The scores stay those
        of the first pass (averaging in the second pass's class probability changed nothing)."""
        xp = get_array_module(boxes)
        _, deltas = self.box_outputs_in_views(views, boxes, image_size)
        own = deltas.reshape(boxes.shape[0], -1, 4)[xp.arange(boxes.shape[0]), labels]   # (D, 4)
        refined = decode_boxes(own, boxes, weights=self.model.config.box_weights)
        return clip_boxes(refined, (float(image_size[0]), float(image_size[1]))).astype(boxes.dtype)
