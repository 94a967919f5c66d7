"""Flip test-time augmentation, mask rescoring and Matrix NMS (mrcnn_ref.model.tta) and their
use in predict."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mrcnn_ref.boxes import decode_boxes, hflip_boxes
from mrcnn_ref.data.masks import paste_masks_in_image
from mrcnn_ref.model.config import get_preset, with_inference_overrides
from mrcnn_ref.model.tta import (TestTimePredictor, average_box_outputs, maskness, matrix_nms_decay, resize_images,
                                unflip_masks)
from mrcnn_ref.ops.losses import log_softmax


def _random_boxes(rng, n, w=64.0, h=48.0):
    x1 = rng.uniform(0, w - 4, n)
    y1 = rng.uniform(0, h - 4, n)
    return np.stack([x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)], axis=1)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), k=st.integers(2, 5))
def test_mirrored_deltas_decode_to_the_mirrored_box(seed, n, k):
    """The tx -> -tx rule, checked by geometry: a delta predicted for the mirrored proposal,
    decoded there and mirrored back, is the box its tx-negated copy decodes to here."""
    rng = np.random.default_rng(seed)
    props = _random_boxes(rng, n)
    d_m = rng.normal(0, 1, (n, 4 * k))
    logits = rng.normal(0, 2, (n, k))
    w = 64.0
    in_mirror = decode_boxes(d_m, hflip_boxes(props, w), weights=(10.0, 10.0, 5.0, 5.0))
    back = hflip_boxes(in_mirror.reshape(-1, 4), w).reshape(n, 4 * k)
    # average of the mirror's opinion with itself, moved into the image frame
    _, d_avg = average_box_outputs([(logits, _negate_tx(d_m, k), False), (logits, d_m, True)])
    np.testing.assert_allclose(decode_boxes(d_avg, props, weights=(10.0, 10.0, 5.0, 5.0)), back,
                               rtol=1e-10, atol=1e-9)


def _negate_tx(d, k):
    out = d.reshape(d.shape[0], k, 4).copy()
    out[:, :, 0] *= -1
    return out.reshape(d.shape)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), k=st.integers(2, 5))
def test_averaged_logits_give_the_mean_probabilities(seed, n, k):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 3, (n, k)), rng.normal(0, 3, (n, k))
    d = rng.normal(0, 1, (n, 4 * k))
    logits, deltas = average_box_outputs([(a, d, False), (b, _negate_tx(d, k), True)])
    mean_p = 0.5 * (np.exp(log_softmax(a, axis=1)) + np.exp(log_softmax(b, axis=1)))
    np.testing.assert_allclose(np.exp(log_softmax(logits, axis=1)), mean_p, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(deltas, d, rtol=1e-12)       # consistent views: nothing changes


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), k=st.integers(2, 5), views=st.integers(1, 4))
def test_average_box_outputs_over_several_views(seed, n, k, views):
    """Any number of views: the mean probability and the mean delta, mirrors' tx negated."""
    rng = np.random.default_rng(seed)
    outs = [(rng.normal(0, 3, (n, k)), rng.normal(0, 1, (n, 4 * k)), bool(rng.integers(2)))
            for _ in range(views)]
    before = [(c.copy(), d.copy()) for c, d, _ in outs]
    logits, deltas = average_box_outputs(outs)
    mean_p = np.mean([np.exp(log_softmax(c, axis=1)) for c, _, _ in outs], axis=0)
    np.testing.assert_allclose(np.exp(log_softmax(logits, axis=1)), mean_p, rtol=1e-12, atol=1e-15)
    here = [(_negate_tx(d, k) if m else d) for _, d, m in outs]
    np.testing.assert_allclose(deltas, np.mean(here, axis=0), rtol=1e-12, atol=1e-15)
    for (c, d, _), (c0, d0) in zip(outs, before):       # the inputs are not changed
        np.testing.assert_array_equal(c, c0)
        np.testing.assert_array_equal(d, d0)


def test_average_box_outputs_checks_its_input():
    z = np.zeros((3, 4))
    with pytest.raises(ValueError, match="class_logits of shape"):
        average_box_outputs([(z, np.zeros((3, 16)), False), (np.zeros((2, 4)), np.zeros((3, 16)), True)])
    with pytest.raises(ValueError, match="box deltas of shape"):
        average_box_outputs([(z, np.zeros((3, 12)), False)])
    with pytest.raises(ValueError, match="non-empty list"):
        average_box_outputs([])
    with pytest.raises(ValueError, match="triple"):
        average_box_outputs([(z, np.zeros((3, 16)))])


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), h2=st.integers(1, 70), w2=st.integers(1, 70),
       seed=st.integers(0, 2**31 - 1))
def test_resize_images_matches_scikit_image(h, w, h2, w2, seed):
    """Bilinear with half-pixel centres and edge clamping: scikit-image's order-1 resize with
    mode "edge" and no anti-aliasing (an independent implementation)."""
    from skimage.transform import resize

    x = np.random.default_rng(seed).random((2, 3, h, w))
    ours = resize_images(x, (h2, w2))
    ref = resize(x, (2, 3, h2, w2), order=1, mode="edge", anti_aliasing=False)
    assert ours.shape == (2, 3, h2, w2) and ours.dtype == x.dtype
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_resize_images_keeps_float32_and_boxes_scale_with_it():
    """A rectangle drawn at box (8, 12, 28, 20) in a 32 x 40 image, enlarged 1.5x, lies at the
    1.5x box (x1, y1, x2, y2) = (12, 18, 42, 30) in the view: continuous coordinates scale."""
    img = np.zeros((1, 3, 32, 40), np.float32)
    img[:, :, 12:20, 8:28] = 1.0
    view = resize_images(img, (48, 60))
    assert view.dtype == np.float32
    ys, xs = np.nonzero(view[0, 0] >= 0.5)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (12, 18, 42, 30)
    np.testing.assert_array_equal(resize_images(img, (32, 40)), img)          # same size: a copy
    with pytest.raises(ValueError, match="pair of positive ints"):
        resize_images(img, (48,))
    with pytest.raises(ValueError, match="pair of positive ints"):
        resize_images(img, (48, 0))


@settings(max_examples=30)
@given(probs=arrays(np.float64, (3, 7, 7), elements=st.sampled_from([0.05, 0.3, 0.7, 0.95])),
       seed=st.integers(0, 2**31 - 1))
def test_unflipped_mask_pastes_to_the_mirror_of_the_mirrors_paste(probs, seed):
    """Pasting the mirror's mask (flipped back) at the box here gives the mirror image of pasting
    it at the mirrored box in the mirror."""
    rng = np.random.default_rng(seed)
    # generic corners: a box edge exactly on a pixel centre is a tie that the half-open
    # "pixel centre inside the box" rule breaks differently on the two sides
    boxes = _random_boxes(rng, 3, w=40.0, h=40.0)
    here = paste_masks_in_image(unflip_masks(probs), boxes, (40, 40))
    there = paste_masks_in_image(probs, hflip_boxes(boxes, 40), (40, 40))[:, :, ::-1]
    assert (here != there).mean() <= 0.002       # a few pixels may sit exactly on the 0.5 level


def test_maskness_by_hand():
    p = np.zeros((3, 2, 2))
    p[0] = [[0.9, 0.7], [0.2, 0.4]]           # kept: 0.9, 0.7 -> 0.8
    p[1] = 1.0
    # p[2]: nothing >= 0.5 -> 0
    np.testing.assert_allclose(maskness(p), [0.8, 1.0, 0.0])
    np.testing.assert_allclose(maskness(p, threshold=0.3), [(0.9 + 0.7 + 0.4) / 3, 1.0, 0.0])


@given(probs=arrays(np.float32, (4, 5, 5), elements=st.floats(0, 1, width=32)))
def test_maskness_lies_between_threshold_and_one(probs):
    m = maskness(probs)
    assert m.dtype == np.float32 and m.shape == (4,)
    nonempty = (probs >= 0.5).any(axis=(1, 2))
    assert np.all(m[~nonempty] == 0)
    assert np.all((m[nonempty] >= 0.5) & (m[nonempty] <= 1.0))


def test_inference_overrides():
    cfg = get_preset("shapes")
    assert cfg.test_flip and cfg.mask_rescoring
    off = with_inference_overrides(cfg, ["test_flip=false", "score_thresh=0.3"])
    assert off.test_flip is False and off.score_thresh == 0.3 and off.mask_rescoring
    assert with_inference_overrides(cfg, {"mask_rescoring": False}).mask_rescoring is False
    with pytest.raises(ValueError, match="cannot be changed after training"):
        with_inference_overrides(cfg, ["num_classes=3"])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        with_inference_overrides(cfg, ["test_flip"])
    with pytest.raises(ValueError, match="must be JSON"):
        with_inference_overrides(cfg, ["test_flip=yes"])
    with pytest.raises(TypeError, match="true or false"):
        with_inference_overrides(cfg, ["test_flip=1"])
    # a text setting may be given as a bare word (or as a JSON string); a wrong word is an error
    assert with_inference_overrides(cfg, ["matrix_nms=per_class"]).matrix_nms == "per_class"
    assert with_inference_overrides(cfg, ['matrix_nms="off"']).matrix_nms == "off"
    with pytest.raises(ValueError, match="matrix_nms must be one of"):
        with_inference_overrides(cfg, ["matrix_nms=everything"])
    with pytest.raises(ValueError, match="matrix_nms_sigma must be > 0"):
        with_inference_overrides(cfg, ["matrix_nms_sigma=0"])
    assert with_inference_overrides(cfg, ["test_scales=[1, 1.25, 2]"]).test_scales == (1, 1.25, 2)
    for bad, msg in (("[1.5]", "must contain 1.0"), ("[1.0, 1.5, 1.5]", "no factor twice"),
                     ("1.5", "non-empty list"), ("[]", "non-empty list"), ("[1.0, -2]", r"in \(0, 8\]"),
                     ("[1.0, true]", "numbers")):
        with pytest.raises(ValueError, match=msg):
            with_inference_overrides(cfg, [f"test_scales={bad}"])


@pytest.fixture(scope="module")
def bundled():
    from mrcnn_ref.model_io import load_bundled_model

    loaded = load_bundled_model()
    if loaded is None:
        pytest.skip("no bundled checkpoint")
    return loaded


def _val_images(rcfg, n):
    from mrcnn_ref.run_config import build_dataset

    return list(build_dataset(rcfg.train, "val", n))


def test_mask_rescoring_multiplies_the_scores_by_maskness(bundled):
    """Same detections with and without rescoring; the scores differ by exactly the maskness of
    each detection's mask (recomputed here from the mask head), and stay sorted."""
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    base = model.config
    sample = _val_images(rcfg, 1)[0]
    x = to_model_input(sample)[None]
    try:
        model.config = with_inference_overrides(base, {"test_flip": False, "test_scales": [1.0],
                                                       "mask_rescoring": False, "matrix_nms": "off"})
        plain = TestTimePredictor(model)(x)
        feats = model.backbone(model.prepare_image(x, "test")[0])
        probs = model.mask_probs(feats, plain["boxes"], plain["labels"])
        model.clear_caches()
        model.config = with_inference_overrides(base, {"test_flip": False, "test_scales": [1.0],
                                                       "mask_rescoring": True, "matrix_nms": "off"})
        rescored = TestTimePredictor(model)(x)
    finally:
        model.config = base
    assert len(plain["scores"]) > 0
    expected = plain["scores"] * maskness(probs, base.mask_threshold)
    order = np.argsort(-expected, kind="stable")
    np.testing.assert_allclose(rescored["scores"], expected[order], rtol=1e-6)
    np.testing.assert_array_equal(rescored["labels"], plain["labels"][order])
    np.testing.assert_array_equal(rescored["masks"], plain["masks"][order])
    assert np.all(np.diff(rescored["scores"]) <= 0)


@pytest.mark.parametrize("before, after", [
    ({"test_flip": False, "test_scales": [1.0]}, {"test_flip": True, "test_scales": [1.0]}),
    ({"test_flip": True, "test_scales": [1.0]}, {"test_flip": True, "test_scales": [1.0, 1.5]}),
], ids=["flip", "scale"])
def test_tta_views_run_and_do_not_hurt_the_masks(bundled, before, after):
    """On 8 val images: with one more kind of view (the mirror; an enlarged copy) the detections
    change (the views are used) and the mean best mask IoU per ground-truth instance is at least
    as good, up to 0.01."""
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    base = model.config

    def mean_best_iou(settings):
        model.config = with_inference_overrides(base, {**settings, "mask_rescoring": False})
        best, scores = [], []
        for s in _val_images(rcfg, 8):
            det = TestTimePredictor(model)(to_model_input(s)[None])
            scores.append(det["scores"])
            for g, lab in zip(s["masks"], s["labels"]):
                ious = [np.logical_and(g, m).sum() / np.logical_or(g, m).sum()
                        for m, pl in zip(det["masks"], det["labels"]) if pl == lab]
                best.append(max(ious, default=0.0))
        return float(np.mean(best)), np.concatenate(scores)

    try:
        plain, s_plain = mean_best_iou(before)
        more, s_more = mean_best_iou(after)
    finally:
        model.config = base
    assert s_plain.shape != s_more.shape or not np.allclose(s_plain, s_more)
    assert more >= plain - 0.01, (plain, more)


def _views_seen_by_the_backbone(bundled, monkeypatch, settings):
    """Predict on a 100 x 77 crop of a val image with inference ``settings``; returns the crop as
    model input, the detections and every input the backbone saw, in order."""
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    x = to_model_input(np.ascontiguousarray(_val_images(rcfg, 1)[0]["image"][:100, :77]))[None]
    inputs = []
    real_forward = model.backbone.forward

    def spy(v):
        inputs.append(np.array(v))
        return real_forward(v)

    monkeypatch.setattr(model.backbone, "forward", spy)
    base = model.config
    try:
        model.config = with_inference_overrides(base, settings)
        det = TestTimePredictor(model)(x)
    finally:
        model.config = base
    assert det["masks"].shape[1:] == (100, 77) and len(det["boxes"]) > 0
    return x, det, inputs


def test_flip_tta_on_an_image_whose_size_is_not_a_multiple_of_32(bundled, monkeypatch):
    """The second view is the mirror of the *unpadded* image, padded on the right like the image
    itself (mirroring the padded image would move the content by the padding's width, and the
    mirrored proposals, computed with the image's width, would miss it)."""
    _, _, inputs = _views_seen_by_the_backbone(bundled, monkeypatch, {"test_flip": True, "test_scales": [1.0]})
    assert len(inputs) == 2
    image, mirror = inputs
    assert image.shape == mirror.shape and image.shape[2:] == (128, 96)      # padded to /32
    np.testing.assert_array_equal(mirror[:, :, :100, :77], image[:, :, :100, :77][:, :, :, ::-1])
    np.testing.assert_array_equal(mirror[:, :, 100:], image[:, :, 100:])        # the same padding
    np.testing.assert_array_equal(mirror[:, :, :, 77:], image[:, :, :, 77:])


def test_scaled_views_are_the_resized_image_and_its_mirror(bundled, monkeypatch):
    """With test_scales [1.0, 1.5] and the flip, the backbone sees four views: the image, its
    mirror, the image enlarged to round(1.5 * size) by :func:`resize_images`, and that view's
    mirror — each padded on the bottom/right to a multiple of 32. The proposals of the first view,
    carried into the enlarged one, are its boxes times the per-axis factors of the rounded size."""
    x, _, inputs = _views_seen_by_the_backbone(bundled, monkeypatch,
                                               {"test_flip": True, "test_scales": [1.0, 1.5]})
    assert [v.shape[2:] for v in inputs] == [(128, 96), (128, 96), (160, 128), (160, 128)]
    big = resize_images(x, (150, 116))
    np.testing.assert_array_equal(inputs[2][:, :, :150, :116], big)
    np.testing.assert_array_equal(inputs[3][:, :, :150, :116], resize_images(x[:, :, :, ::-1], (150, 116)))
    np.testing.assert_allclose(inputs[3][:, :, :150, :116], big[:, :, :, ::-1], atol=1e-6)
    assert not inputs[2][:, :, 150:].any() and not inputs[2][:, :, :, 116:].any()
    model = bundled[0]
    boxes = np.array([[10.0, 20.0, 30.5, 60.0]], np.float32)
    np.testing.assert_allclose(TestTimePredictor.boxes_in_view(boxes, False, 1.5, (100, 77)),
                               [[10 * 116 / 77, 20 * 1.5, 30.5 * 116 / 77, 60 * 1.5]], rtol=1e-6)
    np.testing.assert_allclose(TestTimePredictor.boxes_in_view(boxes, True, 1.5, (100, 77)),
                               [[(77 - 30.5) * 116 / 77, 30.0, (77 - 10) * 116 / 77, 90.0]], rtol=1e-6)


# ----------------------------------------------------------------------------- Matrix NMS
masks_st = st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 7), st.integers(1, 9), st.integers(1, 9))


def _random_masks(seed, d, h, w):
    """``d`` random (h, w) masks of random density, some of them near-copies of an earlier one
    (duplicates), sometimes one empty."""
    rng = np.random.default_rng(seed)
    m = rng.random((d, h, w)) < rng.uniform(0.1, 0.9)
    for i in range(1, d):
        if rng.random() < 0.3:                       # a near-duplicate of an earlier mask
            m[i] = m[rng.integers(0, i)] ^ (rng.random((h, w)) < 0.1)
    if d and rng.random() < 0.3:
        m[rng.integers(0, d)] = False                # an empty mask
    return m


def _matrix_nms_reference(masks, labels, sigma):
    """The formula of the tta docstring, one detection at a time."""
    d = masks.shape[0]

    def iou(a, b):
        if labels is not None and labels[a] != labels[b]:
            return 0.0
        union = np.logical_or(masks[a], masks[b]).sum()
        return np.logical_and(masks[a], masks[b]).sum() / union if union else 0.0

    comp = [max([iou(k, i) for k in range(i)], default=0.0) for i in range(d)]
    return np.array([min([np.exp(-sigma * (iou(i, j) ** 2 - comp[i] ** 2)) for i in range(j)], default=1.0)
                     for j in range(d)])


@given(case=masks_st, sigma=st.floats(0.1, 10.0), per_class=st.booleans())
@settings(max_examples=60, deadline=None)
def test_matrix_nms_decay_matches_the_formula(case, sigma, per_class):
    seed, d, h, w = case
    m = _random_masks(seed, d, h, w)
    rng = np.random.default_rng(seed + 1)
    scores = np.sort(rng.random(d))[::-1]
    labels = rng.integers(1, 3, d) if per_class else None
    got = matrix_nms_decay(m, scores, labels, sigma=sigma)
    np.testing.assert_allclose(got, _matrix_nms_reference(m, labels, sigma), rtol=1e-12, atol=1e-15)
    assert np.all((got > 0) & (got <= 1.0))
    if d:
        assert got[0] == 1.0


def test_matrix_nms_decay_by_hand():
    """A duplicate of the top mask (IoU 1) is decayed by exp(-sigma); a disjoint mask is not; a
    mask overlapping only the duplicate is compensated (the duplicate is itself overlapped)."""
    m = np.zeros((4, 4, 8), dtype=bool)
    m[0, :, :2] = True                   # top
    m[1, :, :2] = True                   # its duplicate
    m[2, :, 6:] = True                   # disjoint from both
    m[3, :, 1:3] = True                  # IoU 1/3 with the top and with the duplicate
    f = matrix_nms_decay(m, np.array([0.9, 0.8, 0.7, 0.6]), sigma=2.0)
    np.testing.assert_allclose(f[:3], [1.0, np.exp(-2.0), 1.0])
    # row 0: exp(-2/9); row 1 (duplicate, comp 1): exp(-2 (1/9 - 1)) > 1; the min is row 0's
    np.testing.assert_allclose(f[3], np.exp(-2.0 / 9))
    # per class: a duplicate of another class is left alone
    f = matrix_nms_decay(m, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 2, 1, 2]), sigma=2.0)
    np.testing.assert_allclose(f, [1.0, 1.0, 1.0, np.exp(-2.0 / 9)])


def test_matrix_nms_decay_bad_input():
    m = np.zeros((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="sorted in decreasing order"):
        matrix_nms_decay(m, np.array([0.1, 0.5]))
    with pytest.raises(ValueError, match="scores must have shape"):
        matrix_nms_decay(m, np.array([0.5]))
    with pytest.raises(ValueError, match="labels must have shape"):
        matrix_nms_decay(m, np.array([0.5, 0.1]), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="sigma must be a number > 0"):
        matrix_nms_decay(m, np.array([0.5, 0.1]), sigma=0.0)
    with pytest.raises(ValueError, match="sigma must be a number > 0"):
        matrix_nms_decay(m, np.array([0.5, 0.1]), sigma="2")
    assert matrix_nms_decay(np.zeros((0, 3, 3), dtype=bool), np.zeros(0)).shape == (0,)
    np.testing.assert_array_equal(matrix_nms_decay(m, np.array([0.5, 0.1]), sigma=np.float32(2.0)), [1.0, 1.0])


@pytest.mark.parametrize("mode,rescoring", [("all_classes", True), ("per_class", True), ("all_classes", False)])
def test_predict_with_matrix_nms_decays_the_scores(bundled, mode, rescoring):
    """Same detections with and without Matrix NMS; the scores differ by exactly the decay of
    the masks predict returned without it, and are sorted again."""
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    base = model.config
    found_decay = False
    try:
        for sample in _val_images(rcfg, 6):
            x = to_model_input(sample)[None]
            model.config = with_inference_overrides(base, {"test_flip": False, "test_scales": [1.0],
                                                           "matrix_nms": "off", "mask_rescoring": rescoring})
            plain = TestTimePredictor(model)(x)
            model.config = with_inference_overrides(base, {"test_flip": False, "test_scales": [1.0],
                                                           "matrix_nms": mode, "mask_rescoring": rescoring})
            decayed = TestTimePredictor(model)(x)
            f = matrix_nms_decay(plain["masks"], plain["scores"],
                                 plain["labels"] if mode == "per_class" else None, sigma=base.matrix_nms_sigma)
            expected = plain["scores"] * f.astype(plain["scores"].dtype)
            order = np.argsort(-expected, kind="stable")
            np.testing.assert_array_equal(decayed["scores"], expected[order])
            np.testing.assert_array_equal(decayed["labels"], plain["labels"][order])
            np.testing.assert_array_equal(decayed["masks"], plain["masks"][order])
            np.testing.assert_array_equal(decayed["boxes"], plain["boxes"][order])
            found_decay |= bool(np.any(f < 0.99))
    finally:
        model.config = base
    assert found_decay, "no detection overlapped another on these images: the test proved nothing"


_ONE_VIEW = {"test_flip": False, "test_scales": [1.0], "mask_rescoring": False, "matrix_nms": "off"}


def test_box_refine_moves_each_detection_by_its_own_class_deltas(bundled):
    """With ``box_refine`` the detections (same scores, labels, order) are those without it, each
    moved by the deltas the box head predicts for its class *at the detection itself* — computed
    here from the head and ``decode_boxes``, then clipped to the image."""
    from mrcnn_ref.boxes import clip_boxes
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    base = model.config
    moved = 0.0
    try:
        for sample in _val_images(rcfg, 4):
            x = to_model_input(sample)[None]
            model.config = with_inference_overrides(base, {**_ONE_VIEW, "box_refine": False})
            plain = TestTimePredictor(model)(x)
            feats = model.backbone(model.prepare_image(x, "test")[0])
            _, deltas = model.box_outputs(feats, plain["boxes"])
            model.clear_caches()
            model.config = with_inference_overrides(base, {**_ONE_VIEW, "box_refine": True})
            refined = TestTimePredictor(model)(x)
            d = len(plain["scores"])
            own = deltas.reshape(d, base.num_classes, 4)[np.arange(d), plain["labels"]]
            h, w = x.shape[2:]
            expected = clip_boxes(decode_boxes(own, plain["boxes"], weights=base.box_weights), (h, w))
            np.testing.assert_array_equal(refined["scores"], plain["scores"])
            np.testing.assert_array_equal(refined["labels"], plain["labels"])
            np.testing.assert_allclose(refined["boxes"], expected, rtol=1e-5, atol=1e-3)
            moved = max(moved, float(np.abs(refined["boxes"] - plain["boxes"]).max(initial=0.0)))
    finally:
        model.config = base
    assert moved > 0.05, "no detection moved: the test proved nothing"


def test_box_refine_brings_the_boxes_closer_to_the_objects(bundled):
    """On 8 val images, with the preset's four views: the same detections (score >= 0.3; no
    rescoring or Matrix NMS, so none is dropped or reordered) overlap their nearest ground-truth
    box more after the second regression pass — most of them, and by a positive median."""
    from mrcnn_ref.boxes import box_iou
    from mrcnn_ref.data.transforms import to_model_input

    model, rcfg, _ = bundled
    base = model.config
    gains = []
    try:
        for s in _val_images(rcfg, 8):
            x, gt = to_model_input(s)[None], np.asarray(s["boxes"], dtype=np.float64)
            nearest = []
            for refine in (False, True):
                model.config = with_inference_overrides(base, {"box_refine": refine, "score_thresh": 0.3,
                                                               "mask_rescoring": False, "matrix_nms": "off"})
                det = TestTimePredictor(model)(x)
                nearest.append(box_iou(det["boxes"].astype(np.float64), gt).max(axis=1, initial=0.0))
            gains.extend(nearest[1] - nearest[0])
    finally:
        model.config = base
    gains = np.array(gains)
    assert len(gains) >= 10
    assert np.mean(gains > 0) > 0.5 and np.median(gains) > 0, (np.mean(gains > 0), np.median(gains))


def test_box_refine_must_be_a_bool():
    with pytest.raises(TypeError, match="box_refine must be true or false"):
        with_inference_overrides(get_preset("shapes"), ["box_refine=1"])
