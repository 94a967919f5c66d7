"""Proposal targets (match, sample, encode, mask targets) and the model config."""
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.model.config import MaskRCNNConfig, get_preset, load_config
from mrcnn_ref.model.targets import match_proposals, proposal_targets, sample_rois


def _boxes(rng, n, size=64.0, min_wh=4.0):
    xy = rng.uniform(0, size - min_wh - 1, (n, 2))
    wh = rng.uniform(min_wh, size / 2, (n, 2))
    return np.concatenate([xy, np.minimum(xy + wh, size)], axis=1)


# ----------------------------------------------------------------------------------- config
def test_presets_and_overrides(tmp_path):
    tiny = get_preset("tiny")
    assert tiny.num_classes == 3 and tiny.image_size == 64
    shapes = load_config("shapes")
    assert shapes.num_classes == 4 and shapes.roi_op == "roi_align" and shapes.mask_size == 28
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"preset": "tiny", "roi_op": "roi_pool", "box_bg_iou_low": 0.1}))
    c = load_config(str(p))
    assert c.roi_op == "roi_pool" and c.box_bg_iou_low == 0.1 and c.num_classes == 3
    t = tmp_path / "c.toml"
    t.write_text('preset = "shapes"\nmask_loss = "softmax"\nanchor_sizes = [8, 16, 32, 64, 128]\n')
    c2 = load_config(str(t))
    assert c2.mask_loss == "softmax" and c2.anchor_sizes == (8, 16, 32, 64, 128)
    assert MaskRCNNConfig(**dict(get_preset("tiny").to_dict(), anchor_sizes=(1, 2, 3, 4, 5))).validate()


def test_config_json_round_trip():
    from mrcnn_ref.model.mask_rcnn import MaskRCNN
    for name in ("tiny", "shapes"):
        cfg = get_preset(name)
        back = load_config(json.loads(json.dumps(cfg.to_dict())))
        assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(cfg.to_dict(), sort_keys=True)
    # a model rebuilt from the serialised config has the same parameter names and shapes
    a = MaskRCNN("tiny", rng=0)
    b = MaskRCNN(json.loads(json.dumps(a.config.to_dict())), rng=1)
    assert {k: v.shape for k, v in a.named_parameters().items()} == \
        {k: v.shape for k, v in b.named_parameters().items()}
    b.load_parameters(a.named_parameters())


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown config key"):
        load_config({"preset": "tiny", "num_clases": 3})
    with pytest.raises(ValueError, match="roi_op"):
        load_config({"roi_op": "roi_magic"})
    with pytest.raises(ValueError, match="preset"):
        load_config("no_such_preset")
    with pytest.raises(ValueError, match="box_bg_iou_low"):
        load_config({"box_bg_iou_low": 0.6})
    with pytest.raises(TypeError):
        load_config(3.5)
    p = tmp_path / "c.yaml"
    p.write_text("x: 1")
    with pytest.raises(ValueError, match=".json or .toml"):
        load_config(str(p))


# ----------------------------------------------------------------------------------- matching
def test_match_proposals_hand_example():
    gt = np.array([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    labels = np.array([1, 2])
    props = np.array([
        [0.0, 0.0, 10.0, 10.0],     # IoU 1 with gt0            -> class 1
        [0.0, 0.0, 10.0, 5.0],      # IoU 0.5 with gt0 (edge)    -> class 1 (>= 0.5)
        [0.0, 0.0, 10.0, 4.0],      # IoU 0.4                    -> background
        [20.0, 20.0, 40.0, 30.0],   # IoU 0.5 with gt1           -> class 2
        [0.0, 0.0, 10.0, 0.5],      # IoU 0.05                   -> ignored with bg_low 0.1
        [50.0, 50.0, 60.0, 60.0],   # IoU 0                      -> ignored with bg_low 0.1
    ])
    lab, matched, iou = match_proposals(props, gt, labels, fg_iou=0.5, bg_iou_low=0.1)
    np.testing.assert_array_equal(lab, [1, 1, 0, 2, -1, -1])
    np.testing.assert_array_equal(matched[:4], [0, 0, 0, 1])
    np.testing.assert_allclose(iou[:5], [1.0, 0.5, 0.4, 0.5, 0.05])
    lab0, _, _ = match_proposals(props, gt, labels, fg_iou=0.5, bg_iou_low=0.0)
    np.testing.assert_array_equal(lab0, [1, 1, 0, 2, 0, 0])


def test_sample_rois_counts_and_reproducibility():
    labels = np.array([1] * 50 + [0] * 300 + [-1] * 20)
    fg, bg = sample_rois(labels, 128, 0.25, np.random.default_rng(0))
    assert fg.size == 32 and bg.size == 96
    assert np.all(labels[fg] > 0) and np.all(labels[bg] == 0)
    assert len(set(fg.tolist())) == 32 and len(set(bg.tolist())) == 96
    fg2, bg2 = sample_rois(labels, 128, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(fg, fg2)
    np.testing.assert_array_equal(bg, bg2)
    # few foreground: background fills the batch
    fg, bg = sample_rois(np.array([2] * 5 + [0] * 300), 128, 0.25, np.random.default_rng(1))
    assert fg.size == 5 and bg.size == 123


@given(seed=st.integers(0, 10_000), n_gt=st.integers(1, 4), n_prop=st.integers(0, 60),
       bg_low=st.sampled_from([0.0, 0.1]))
def test_proposal_targets_properties(seed, n_gt, n_prop, bg_low):
    rng = np.random.default_rng(seed)
    gt = np.round(_boxes(rng, n_gt))          # integer corners: the masks fill the boxes exactly
    gt_labels = rng.integers(1, 4, n_gt)
    props = _boxes(rng, n_prop)
    masks = np.zeros((n_gt, 64, 64), bool)
    for i, (x1, y1, x2, y2) in enumerate(gt):
        masks[i, int(y1):int(y2), int(x1):int(x2)] = True
    t = proposal_targets(props, gt, gt_labels, masks, rng=np.random.default_rng(seed),
                         batch_size_per_image=16, positive_fraction=0.25, fg_iou=0.5, bg_iou_low=bg_low,
                         mask_size=14)
    from mrcnn_ref.boxes import box_iou, decode_boxes
    nf = t["num_fg"]
    rois, labels = t["rois"], t["labels"]
    assert rois.shape[0] <= 16 and 1 <= nf <= 4       # the gt boxes themselves are foreground
    iou = box_iou(rois, gt).max(axis=1)
    assert np.all(labels[:nf] > 0) and np.all(iou[:nf] >= 0.5)
    assert np.all(labels[nf:] == 0) and np.all(iou[nf:] < 0.5) and np.all(iou[nf:] >= bg_low)
    np.testing.assert_array_equal(labels[:nf], gt_labels[t["matched_gt"][:nf]])
    # the regression targets decode back onto the matched gt boxes
    dec = decode_boxes(t["regression_targets"][:nf], rois[:nf], weights=(10, 10, 5, 5))
    np.testing.assert_allclose(dec, gt[t["matched_gt"][:nf]], atol=1e-6)
    assert t["mask_targets"].shape == (nf, 14, 14)
    # a RoI equal to a rectangular gt box gets (almost) an all-ones mask target
    exact = np.nonzero(np.all(np.abs(rois[:nf] - gt[t["matched_gt"][:nf]]) < 1e-9, axis=1))[0]
    for i in exact:
        assert t["mask_targets"][i].mean() > 0.95


def test_gt_boxes_are_added_and_no_gt_gives_background():
    gt = np.array([[5.0, 5.0, 30.0, 30.0]])
    props = np.array([[40.0, 40.0, 60.0, 60.0]])      # no overlap: background
    t = proposal_targets(props, gt, np.array([2]), None, rng=np.random.default_rng(0),
                         batch_size_per_image=8)
    assert t["num_fg"] == 1 and t["labels"].tolist() == [2, 0]
    np.testing.assert_allclose(t["rois"][0], gt[0])
    np.testing.assert_allclose(t["regression_targets"][0], 0.0, atol=1e-12)
    assert t["mask_targets"] is None
    # no ground truth at all
    t = proposal_targets(_boxes(np.random.default_rng(1), 20), np.zeros((0, 4)),
                         np.zeros(0, np.int64), np.zeros((0, 64, 64), bool),
                         rng=np.random.default_rng(0), batch_size_per_image=8, mask_size=14)
    assert t["num_fg"] == 0 and t["rois"].shape == (8, 4) and np.all(t["labels"] == 0)
    assert t["mask_targets"].shape == (0, 14, 14)


def test_proposal_targets_input_errors():
    with pytest.raises(ValueError, match="proposal_targets"):
        proposal_targets(np.zeros((3, 5)), np.zeros((1, 4)), np.ones(1, int), rng=np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        proposal_targets(np.zeros((3, 4)), np.zeros((1, 4)), np.ones(1, int), rng=0)
    with pytest.raises(ValueError, match="same length"):
        proposal_targets(np.zeros((3, 4)), np.zeros((2, 4)), np.ones(1, int), rng=np.random.default_rng(0))
