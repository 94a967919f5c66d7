"""Tests for mrcnn_ref.evaluate: our COCO AP against hand-computed values and pycocotools."""
import contextlib
import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mrcnn_ref.data.rle import rle_decode, rle_encode, rle_encode_uncompressed, rle_to_bbox
from mrcnn_ref.evaluate import (
    box_iou_xywh,
    coco_evaluate,
    detections_to_coco_results,
    mask_iou,
    summarize,
    write_coco_results,
)

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


# ------------------------------------------------------------------ helpers
def _rect_mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), bool)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _one_image_gt(boxes, cats=(1,), size=(100, 100), crowd=None):
    """A single-image gt with box annotations [x, y, w, h] (area = w*h)."""
    anns = []
    for i, b in enumerate(boxes):
        anns.append({"id": i + 1, "image_id": 1, "category_id": cats[i % len(cats)], "bbox": list(b),
                     "area": float(b[2] * b[3]), "iscrowd": int(crowd[i]) if crowd else 0})
    return {"images": [{"id": 1, "height": size[0], "width": size[1]}],
            "annotations": anns, "categories": [{"id": c} for c in sorted(set(cats))]}


def _iou(a, b):
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    i = ix * iy
    return i / (a[2] * a[3] + b[2] * b[3] - i)


# ------------------------------------------------------------------ hand-made cases
def test_perfect_detection():
    gt = _one_image_gt([[10, 10, 40, 40]])                                # area 1600: medium
    res = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}]
    m = coco_evaluate(gt, res)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
    assert m["APm"] == pytest.approx(1.0)
    assert m["APs"] == -1 and m["APl"] == -1                              # no gt in those ranges
    assert m["AR1"] == 1.0 and m["AR100"] == 1.0   # recall has no epsilon


def test_single_detection_iou_0p6():
    # shifted by 10 px on a 40-wide box: IoU = 30*40 / (2*1600 - 1200) = 0.6 exactly
    gt_box, dt_box = [10, 10, 40, 40], [20, 10, 40, 40]
    assert _iou(gt_box, dt_box) == pytest.approx(0.6)
    gt = _one_image_gt([gt_box])
    res = [{"image_id": 1, "category_id": 1, "bbox": dt_box, "score": 0.5}]
    m = coco_evaluate(gt, res)
    # matched at t = 0.50, 0.55, 0.60 (IoU >= t) -> precision 1 at all 101 recall points there,
    # 0 at the 7 higher thresholds: AP = 3/10.
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == 0.0
    assert m["AP"] == pytest.approx(0.3)
    assert m["AR100"] == pytest.approx(0.3)


def test_false_positive_before_true_positive():
    # two gts; detections (by score): FP, TP(gt1), TP(gt2)
    gt = _one_image_gt([[0, 0, 20, 20], [50, 50, 20, 20]])
    res = [{"image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10], "score": 0.9},
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8},
           {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.7}]
    m = coco_evaluate(gt, res, return_arrays=True)
    # precision after each det: 0, 1/2, 2/3 at recall 0, .5, 1 -> monotone: 2/3 everywhere
    assert m["AP"] == pytest.approx(2 / 3)
    np.testing.assert_allclose(m["precision"][:, :, 0, 0, -1], 2 / 3)
    assert m["AR1"] == 0.0 and m["AR10"] == 1.0


def test_duplicate_is_false_positive_and_crowd_absorbs():
    gt = _one_image_gt([[0, 0, 20, 20], [40, 40, 40, 40]], crowd=[0, 1])
    res = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8},   # duplicate
           {"image_id": 1, "category_id": 1, "bbox": [45, 45, 10, 10], "score": 0.95},  # in crowd
           {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.85}]  # in crowd
    m = coco_evaluate(gt, res)
    # crowd dets are ignored; sequence TP then FP: precision 1 up to recall 1 -> AP 1
    assert m["AP"] == pytest.approx(1.0)
    # without the crowd flag the two small boxes would be false positives (IoU < 0.5)
    gt["annotations"][1]["iscrowd"] = 0
    assert coco_evaluate(gt, res)["AP"] < 0.6


def test_box_and_mask_iou_hand():
    d = [[0, 0, 10, 10]]
    g = [[5, 0, 10, 10], [0, 0, 5, 5]]
    np.testing.assert_allclose(box_iou_xywh(d, g), [[50 / 150, 25 / 100]])
    np.testing.assert_allclose(box_iou_xywh(d, g, [0, 1]), [[50 / 150, 25 / 100]])
    np.testing.assert_allclose(box_iou_xywh(g[1:], d, [1]), [[1.0]])     # inter / det area
    dm = _rect_mask(20, 20, 0, 0, 10, 10)[None]
    gm = np.stack([_rect_mask(20, 20, 5, 0, 15, 10), _rect_mask(20, 20, 0, 0, 5, 5)])
    np.testing.assert_allclose(mask_iou(dm, gm), [[50 / 150, 25 / 100]])
    np.testing.assert_allclose(mask_iou(gm[1:], dm, [1]), [[1.0]])


@given(seed=st.integers(0, 2**31 - 1), d=st.integers(0, 6), g=st.integers(0, 6),
       h=st.integers(1, 9), w=st.integers(1, 9))
def test_mask_iou_is_pairwise_iou(seed, d, g, h, w):
    """Against the definition, pair by pair (crowd: intersection over the detection's area);
    also the IoU matrix of one set with itself, as Matrix NMS uses it. Empty masks give 0."""
    rng = np.random.default_rng(seed)
    dm = rng.random((d, h, w)) < rng.uniform(0.05, 0.9)
    gm = rng.random((g, h, w)) < rng.uniform(0.05, 0.9)
    if g:
        gm[0] = False if rng.random() < 0.3 else gm[0]
    crowd = rng.random(g) < 0.3

    def ref(a, b, cr):
        out = np.zeros((len(a), len(b)))
        for i in range(len(a)):
            for j in range(len(b)):
                inter = np.logical_and(a[i], b[j]).sum()
                union = a[i].sum() if cr[j] else np.logical_or(a[i], b[j]).sum()
                out[i, j] = inter / union if inter else 0.0
        return out

    np.testing.assert_allclose(mask_iou(dm, gm, crowd), ref(dm, gm, crowd), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mask_iou(dm, dm), ref(dm, dm, np.zeros(d, bool)), rtol=0, atol=1e-12)


def test_tie_in_iou_goes_to_the_later_gt(tmp_path):
    # d1 overlaps g1 and g2 with IoU 0.5 each: pycocotools gives it the *later* gt (g2), which
    # leaves g1 for d2 (IoU 1). Taking g1 first would make d2 a false positive at t = 0.5.
    gt = _one_image_gt([[0, 0, 10, 10], [10, 0, 10, 10]])
    res = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10], "score": 0.9},
           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}]
    m = coco_evaluate(gt, res)
    assert m["AP50"] == pytest.approx(1.0)
    # t >= 0.55: FP then TP -> precision 1/2 on recall points 0..0.5 (51 of 101)
    assert m["AP"] == pytest.approx((1 + 9 * 51 * 0.5 / 101) / 10)
    ev = _pycocotools_eval(tmp_path, gt, res, "bbox")
    np.testing.assert_allclose([m[k] for k in KEYS], ev.stats, rtol=0, atol=1e-12)


def test_no_gt_gives_minus_one():
    gt = {"images": [{"id": 1}], "annotations": [], "categories": [{"id": 1}]}
    res = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    m = coco_evaluate(gt, res)
    assert all(m[k] == -1 for k in KEYS)


def test_no_results_gives_zero():
    gt = _one_image_gt([[10, 10, 40, 40]])
    m = coco_evaluate(gt, [])
    assert m["AP"] == 0.0 and m["AR100"] == 0.0


# ------------------------------------------------------------------ bad input
def test_bad_input():
    gt = _one_image_gt([[10, 10, 40, 40]])
    ok = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9}
    with pytest.raises(ValueError, match="image id 7.*not in gt"):
        coco_evaluate(gt, [dict(ok, image_id=7)])
    with pytest.raises(ValueError, match="category id 3.*not in gt"):
        coco_evaluate(gt, [dict(ok, category_id=3)])
    with pytest.raises(ValueError, match=r"result \[0\] is missing key\(s\) \['score'\]"):
        coco_evaluate(gt, [{k: v for k, v in ok.items() if k != "score"}])
    with pytest.raises(ValueError, match=r"gt annotation is missing key\(s\) \['segmentation'\]"):
        coco_evaluate(gt, [ok], iou_type="segm")
    gt_s = json.loads(json.dumps(gt))
    gt_s["annotations"][0]["segmentation"] = [[10, 10, 50, 10, 50, 50, 10, 50]]
    with pytest.raises(ValueError, match="needs a 'segmentation'"):
        coco_evaluate(gt_s, [ok], iou_type="segm")
    seg = {"size": [99, 100], "counts": [9900]}
    with pytest.raises(ValueError, match=r"result \[0\] segmentation has size \[99, 100\]"):
        coco_evaluate(gt_s, [dict(ok, segmentation=seg)], iou_type="segm")
    with pytest.raises(ValueError, match="iou_type"):
        coco_evaluate(gt, [ok], iou_type="keypoints")
    with pytest.raises(ValueError, match="bbox must be"):
        coco_evaluate(gt, [dict(ok, bbox=[1, 2, 3])])
    with pytest.raises(ValueError, match="score must be a finite number"):
        coco_evaluate(gt, [dict(ok, score=float("nan"))])
    with pytest.raises(ValueError, match="gt must have a list under 'images'"):
        coco_evaluate({"annotations": [], "categories": []}, [])
    bad = json.loads(json.dumps(gt))
    del bad["annotations"][0]["area"]
    with pytest.raises(ValueError, match="gt annotation is missing key"):
        coco_evaluate(bad, [ok])
    with pytest.raises(ValueError, match="max_dets"):
        coco_evaluate(gt, [ok], max_dets=0)


# ------------------------------------------------------------------ results helpers
def test_detections_to_coco_results_and_write(tmp_path):
    masks = np.stack([_rect_mask(30, 40, 2, 3, 12, 9), _rect_mask(30, 40, 20, 10, 35, 28)])
    boxes = np.array([[2, 3, 12, 9], [20, 10, 35, 28]], np.float32)
    res = detections_to_coco_results(5, boxes, np.array([0.9, 0.3]), np.array([0, 1]), masks,
                                     category_ids=[7, 9])
    assert [r["category_id"] for r in res] == [7, 9]
    assert res[0]["bbox"] == [2.0, 3.0, 10.0, 6.0] and res[1]["score"] == pytest.approx(0.3)
    assert isinstance(res[0]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(rle_decode(res[1]["segmentation"]), masks[1])
    p = write_coco_results(res, tmp_path / "res.json")
    assert json.load(open(p)) == res
    with pytest.raises(ValueError, match="same length"):
        detections_to_coco_results(1, boxes, np.array([0.5]), np.array([0, 1]))
    # round trip through evaluation: detections equal to the gt -> AP 1
    gt = {"images": [{"id": 5, "height": 30, "width": 40}], "categories": [{"id": 7}, {"id": 9}],
          "annotations": [{"id": i + 1, "image_id": 5, "category_id": c, "iscrowd": 0,
                           "area": float(masks[i].sum()), "bbox": rle_to_bbox(rle_encode(masks[i])),
                           "segmentation": rle_encode(masks[i])} for i, c in enumerate([7, 9])]}
    assert coco_evaluate(gt, res, "segm")["AP"] == pytest.approx(1.0)
    assert coco_evaluate(gt, res, "bbox")["AP"] == pytest.approx(1.0)
    text = summarize(coco_evaluate(gt, res, "segm"))
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] =  1.000" in text


# ------------------------------------------------------------------ pycocotools agreement
def synthetic_case(seed, n_images=12, n_cats=3, size=(128, 160)):
    """Random gt + results: crowds, empty images, duplicates, score ties, all area ranges."""
    rng = np.random.default_rng(seed)
    h, w = size
    images, anns, results = [], [], []
    cat_ids = [3, 8, 11][:n_cats] + [20]            # category 20 never gets a detection
    for img_id in rng.permutation(np.arange(1, n_images + 1) * 7).tolist():
        images.append({"id": img_id, "height": h, "width": w, "file_name": f"{img_id}.png"})
        n_gt = 0 if rng.random() < 0.15 else int(rng.integers(1, 7))
        gt_masks = []
        for _ in range(n_gt):
            side = rng.choice([rng.integers(4, 30), rng.integers(33, 95), rng.integers(100, 127)])
            bw = int(min(side * rng.uniform(0.7, 1.3), w - 1))
            bh = int(min(side * rng.uniform(0.7, 1.3), h - 1))
            square = rng.random() < 0.15             # area exactly on a range bound: 32² or 96²
            if square:
                bw = bh = int(rng.choice([32, 96]))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            m = _rect_mask(h, w, x0, y0, x0 + bw, y0 + bh)
            if not square and rng.random() < 0.5:    # cut a notch: not a plain rectangle
                m[y0:y0 + bh // 3, x0:x0 + bw // 3] = False
            crowd = int(rng.random() < 0.1)
            cat = int(rng.choice(cat_ids))
            seg = rle_encode_uncompressed(m) if crowd else rle_encode(m)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "segmentation": seg, "area": float(m.sum()), "bbox": rle_to_bbox(seg),
                         "iscrowd": crowd})
            gt_masks.append((cat, x0, y0, bw, bh))
            if rng.random() < 0.1:                   # an exact duplicate gt: IoU ties
                anns.append(dict(anns[-1], id=len(anns) + 1))
                gt_masks.append((cat, x0, y0, bw, bh))
        if rng.random() < 0.15:
            continue                                 # an image without detections
        dets = []
        for cat, x0, y0, bw, bh in gt_masks:
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):        # missed / found / duplicate
                if cat == 20:
                    continue
                dx, dy = rng.normal(0, 0.12, 2) * (bw, bh)
                sx, sy = rng.uniform(0.8, 1.2, 2)
                dets.append((cat, int(x0 + dx), int(y0 + dy), max(int(bw * sx), 1),
                             max(int(bh * sy), 1)))
        for _ in range(int(rng.integers(0, 5))):                      # false positives
            bw, bh = (int(v) for v in rng.integers(3, 80, 2))
            dets.append((int(rng.choice(cat_ids[:-1])), int(rng.integers(0, w - 3)),
                         int(rng.integers(0, h - 3)), bw, bh))
        if rng.random() < 0.5:                                        # FP with area 32² or 96²
            side = int(rng.choice([32, 96]))
            dets.append((int(rng.choice(cat_ids[:-1])), int(rng.integers(0, w - side)),
                         int(rng.integers(0, h - side)), side, side))
        for cat, x0, y0, bw, bh in dets:
            m = _rect_mask(h, w, x0, y0, x0 + bw, y0 + bh)
            if rng.random() < 0.5:                   # notch: mask area < box area
                m[max(y0, 0):max(y0 + bh // 4, 0), max(x0, 0):max(x0 + bw // 4, 0)] = False
            if not m.any():
                continue
            score = float(np.round(rng.uniform(0.05, 1.0), 1))        # coarse: many score ties
            box = rle_to_bbox(rle_encode(m))
            box = [box[0] + rng.uniform(-1, 1), box[1] + rng.uniform(-1, 1), box[2], box[3]]
            results.append({"image_id": img_id, "category_id": cat, "bbox": box, "score": score,
                            "segmentation": rle_encode(m)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": c, "name": f"c{c}"} for c in cat_ids]}
    return gt, results


def _pycocotools_eval(tmp_path, gt, results, iou_type):
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    gp, rp = tmp_path / "gt.json", tmp_path / "res.json"
    gp.write_text(json.dumps(gt))
    write_coco_results(results, rp)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_mod.COCO(str(gp))
        coco_dt = coco_gt.loadRes(str(rp))
        ev = cocoeval_mod.COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools(tmp_path, seed, iou_type):
    gt, results = synthetic_case(seed)
    if iou_type == "segm" and seed % 2:
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]   # mask areas
    ev = _pycocotools_eval(tmp_path, gt, results, iou_type)
    ours = coco_evaluate(json.loads(json.dumps(gt)),
                         json.load(open(tmp_path / "res.json")), iou_type, return_arrays=True)
    np.testing.assert_allclose([ours[k] for k in KEYS], ev.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["precision"], ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], ev.eval["recall"], rtol=0, atol=1e-12)
    assert 0.05 < ours["AP"] < 0.95                   # a non-trivial case
    assert min(ours["APs"], ours["APm"], ours["APl"]) > -1


def test_matches_pycocotools_bbox_only_results(tmp_path):
    gt, results = synthetic_case(7, n_images=6)
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    for a in gt["annotations"]:
        a["area"] = a["area"] * 1.1                   # gt 'area' field, not the box, sets the range
    ev = _pycocotools_eval(tmp_path, gt, results, "bbox")
    ours = coco_evaluate(gt, results, "bbox", return_arrays=True)
    np.testing.assert_allclose([ours[k] for k in KEYS], ev.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["precision"], ev.eval["precision"], rtol=0, atol=1e-12)


def test_max_dets_matches_pycocotools_arrays(tmp_path):
    gt, results = synthetic_case(5, n_images=8)
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    coco_mod = pytest.importorskip("pycocotools.coco")
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    write_coco_results(results, tmp_path / "res.json")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_mod.COCO(str(tmp_path / "gt.json"))
        ev = cocoeval_mod.COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "res.json")), "bbox")
        ev.params.maxDets = [1, 2]
        ev.evaluate()
        ev.accumulate()
    ours = coco_evaluate(gt, results, "bbox", max_dets=2, return_arrays=True)
    assert ours["max_dets_list"] == [1, 2] and "AR2" in ours
    np.testing.assert_allclose(ours["precision"], ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours["recall"], ev.eval["recall"], rtol=0, atol=1e-12)


def test_polygon_gt_close_to_pycocotools(tmp_path):
    # Polygon ground truth is rasterised differently (pixel centres vs pycocotools' upsampled
    # edge walk): the AP is close, not identical.
    gt, results = synthetic_case(2)
    for a in gt["annotations"]:
        if not a["iscrowd"]:
            x, y, bw, bh = a["bbox"]                  # an octagon with fractional corners
            fx, fy = np.array([0.3, 0.7, 1, 1, 0.7, 0.3, 0, 0]), np.array([0, 0, 0.3, 0.7, 1, 1, 0.7, 0.3])
            a["segmentation"] = [np.stack([x + fx * bw, y + fy * bh], 1).ravel().tolist()]
    ev = _pycocotools_eval(tmp_path, gt, results, "segm")
    ours = coco_evaluate(gt, results, "segm")
    diff = np.abs(np.array([ours[k] for k in KEYS]) - ev.stats)
    assert diff.max() < 0.03 and ours["AP"] > 0.02
