"""COCO-style detection / instance-segmentation evaluation (AP, AP50, AP75, APs/m/l, AR).

Our own implementation of the COCO metric, written to give the same numbers as
``pycocotools.cocoeval.COCOeval`` (which the tests use as the reference; the package does not
import it). The recipe:

**Per image and category** (``_evaluate_image``):

1. detections are sorted by score, descending, with a *stable* sort (ties keep file order), and at
   most ``max_dets`` are kept;
2. an IoU matrix (detections x ground truths) is computed: box IoU on ``[x, y, w, h]`` boxes
   (no +1) for ``iou_type="bbox"``, mask IoU for ``"segm"``. For a *crowd* ground truth the
   "IoU" is ``intersection / detection area`` instead;
3. each ground truth gets an *ignore* flag for each area range: crowd, or its ``"area"`` field
   outside the range (``all`` [0, 1e10], ``small`` [0, 32²], ``medium`` [32², 96²],
   ``large`` [96², 1e10], bounds inclusive);
4. at each IoU threshold t in 0.50:0.05:0.95, detections are matched greedily in score order: a
   detection takes the unmatched, non-ignored ground truth of highest IoU ≥ t (the last one in
   annotation order on ties); only if there is none does it look at the ignored ground truths
   (crowds can absorb any number of detections). A detection matched to an ignored ground truth
   is ignored; so is an unmatched detection whose area lies outside the area range.

**Per category, across images** (``_accumulate``): all detections (the first ``m`` per image for
``maxDets = m``) are sorted by score (stable, images in increasing id order), non-ignored ones are
cumulated into TP and FP counts, recall = TP / #non-ignored-GT and precision = TP / (TP + FP);
precision is made monotone (running max from the right) and read at the 101 recall points
0, 0.01, …, 1 (the first detection whose recall reaches the point; 0 beyond the last recall).
Entries with no ground truth of the category stay −1.

**Summary**: AP = mean of all valid (> −1) precision entries over IoU thresholds, recall points and
categories; AP50 / AP75 at one threshold; APs/APm/APl per area range; AR = mean best recall.
A metric with no valid entry is −1.

Two details follow pycocotools on purpose, so the numbers agree with ``COCO.loadRes``:

* the *area of a detection* (for the small/medium/large split) is its box area ``w * h`` when the
  result has a non-empty ``"bbox"``, else its mask area — even for ``iou_type="segm"`` (results
  written by :func:`detections_to_coco_results` carry both, so their box area is used);
* ground-truth *polygons* are rasterised with :func:`mrcnn_ref.data.rle.polygons_to_mask`
  (pixel centres inside the polygon), which differs from pycocotools' upsampled rasteriser on
  boundary pixels; with RLE ground truth (what our datasets write) the results are identical.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ._io import write_json
from .backend import asnumpy
from .data.masks import mask_iou
from .data.rle import polygons_to_mask, rle_area, rle_decode, rle_encode, rle_to_bbox

__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "RECALL_THRESHOLDS",
    "box_iou_xywh",
    "coco_evaluate",
    "detections_to_coco_results",
    "mask_iou",
    "summarize",
    "write_coco_results",
]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RANGES = (("all", 0.0, 1e5 ** 2), ("small", 0.0, 32.0 ** 2),
               ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, 1e5 ** 2))


# --------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------
def box_iou_xywh(dt, gt, iscrowd=None):
    """IoU of boxes in COCO ``[x, y, w, h]`` form (no +1): (D, 4), (G, 4) -> (D, G) float64.

    For ground truths with ``iscrowd[g]`` true, the union is replaced by the detection's area
    (the fraction of the detection inside the crowd region).
    """
    dt = np.asarray(dt, np.float64).reshape(-1, 4)
    gt = np.asarray(gt, np.float64).reshape(-1, 4)
    crowd = (np.zeros(len(gt), bool) if iscrowd is None
             else np.asarray(iscrowd, bool).reshape(-1))
    iw = (np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2])
          - np.maximum(dt[:, None, 0], gt[None, :, 0]))
    ih = (np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3])
          - np.maximum(dt[:, None, 1], gt[None, :, 1]))
    overlap = (iw > 0) & (ih > 0)
    inter = np.where(overlap, iw * ih, 0.0)
    da = dt[:, 2] * dt[:, 3]
    ga = gt[:, 2] * gt[:, 3]
    union = np.where(crowd[None, :], da[:, None], da[:, None] + ga[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


# --------------------------------------------------------------------------------------------
# input parsing
# --------------------------------------------------------------------------------------------
def _need(d, keys, what, where="coco_evaluate"):
    if not isinstance(d, dict):
        raise TypeError(f"{where}: each {what} must be a dict, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where}: {what} is missing key(s) {missing}: {_short(d)}")


def _short(d):
    s = repr({k: v for k, v in d.items() if k != "segmentation"})
    return s if len(s) < 200 else s[:200] + "..."


def _number(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(v)):
        raise ValueError(f"coco_evaluate: {what} must be a finite number, got {v!r}")
    return float(v)


def _bbox(v, what):
    if not isinstance(v, (list, tuple, np.ndarray)) or len(v) != 4:
        raise ValueError(f"coco_evaluate: {what} must be [x, y, w, h], got {v!r}")
    return [_number(x, what) for x in v]


def _segm_mask(seg, h, w, what):
    """Decode a COCO segmentation (polygons, compressed or uncompressed RLE) to a (h, w) mask."""
    if isinstance(seg, dict):
        try:
            m = rle_decode(seg)
        except (TypeError, ValueError) as e:
            raise ValueError(f"coco_evaluate: {what} is not a valid RLE: {e}") from None
        if m.shape != (h, w):
            raise ValueError(f"coco_evaluate: {what} has size {list(m.shape)} but its image is "
                             f"{h}x{w}")
        return m
    if isinstance(seg, (list, tuple)):
        try:
            return polygons_to_mask([list(p) for p in seg], h, w)
        except (TypeError, ValueError) as e:
            raise ValueError(f"coco_evaluate: {what} is not a valid polygon list: {e}") from None
    raise ValueError(f"coco_evaluate: {what} must be an RLE dict or a list of polygons, "
                     f"got {type(seg).__name__}")


def _parse_gt(gt, iou_type):
    if not isinstance(gt, dict):
        raise TypeError(f"coco_evaluate: gt must be a COCO instances dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in gt or not isinstance(gt[key], list):
            raise ValueError(f"coco_evaluate: gt must have a list under {key!r}")
    sizes = {}
    for im in gt["images"]:
        _need(im, ["id"] + (["height", "width"] if iou_type == "segm" else []), "gt image")
        sizes[im["id"]] = (int(im["height"]), int(im["width"])) if iou_type == "segm" else None
    cat_ids = []
    for c in gt["categories"]:
        _need(c, ["id"], "gt category")
        cat_ids.append(c["id"])
    cat_set = set(cat_ids)
    need = ["id", "image_id", "category_id", "area",
            "bbox" if iou_type == "bbox" else "segmentation"]
    groups = defaultdict(list)
    for a in gt["annotations"]:
        _need(a, need, "gt annotation")
        if a["image_id"] not in sizes:
            raise ValueError(f"coco_evaluate: gt annotation {a['id']} refers to unknown image id "
                             f"{a['image_id']!r}")
        if a["category_id"] not in cat_set:
            raise ValueError(f"coco_evaluate: gt annotation {a['id']} refers to unknown category "
                             f"id {a['category_id']!r}")
        groups[a["image_id"], a["category_id"]].append(a)
    return sorted(sizes), sizes, sorted(cat_set), groups


def _parse_results(results, sizes, cat_set, iou_type):
    if not isinstance(results, (list, tuple)):
        raise TypeError(f"coco_evaluate: results must be a list of dicts (COCO results format), "
                        f"got {type(results).__name__}")
    groups = defaultdict(list)
    for i, r in enumerate(results):
        _need(r, ["image_id", "category_id", "score"], f"result [{i}]")
        if iou_type == "bbox" and "bbox" not in r and "segmentation" not in r:
            raise ValueError(f"coco_evaluate: result [{i}] needs a 'bbox' for iou_type='bbox': "
                             f"{_short(r)}")
        if iou_type == "segm" and "segmentation" not in r:
            raise ValueError(f"coco_evaluate: result [{i}] needs a 'segmentation' (RLE) for "
                             f"iou_type='segm': {_short(r)}")
        if r["image_id"] not in sizes:
            raise ValueError(f"coco_evaluate: result [{i}] refers to image id {r['image_id']!r}, "
                             f"which is not in gt['images']")
        if r["category_id"] not in cat_set:
            raise ValueError(f"coco_evaluate: result [{i}] refers to category id "
                             f"{r['category_id']!r}, which is not in gt['categories']")
        score = _number(r["score"], f"result [{i}] score")
        has_box = "bbox" in r and len(r["bbox"]) > 0
        if has_box:
            box = _bbox(r["bbox"], f"result [{i}] bbox")
            area = box[2] * box[3]                       # as COCO.loadRes: box area if a box
        else:
            seg = r["segmentation"]
            if not isinstance(seg, dict):
                raise ValueError(f"coco_evaluate: result [{i}] segmentation must be an RLE dict")
            try:
                box, area = rle_to_bbox(seg), float(rle_area(seg))
            except (TypeError, ValueError) as e:
                raise ValueError(f"coco_evaluate: result [{i}] segmentation is not a valid "
                                 f"RLE: {e}") from None
        groups[r["image_id"], r["category_id"]].append(
            {"score": score, "bbox": box, "area": area, "index": i,
             "segmentation": r.get("segmentation")})
    return groups


# --------------------------------------------------------------------------------------------
# per image and category
# --------------------------------------------------------------------------------------------
def _greedy_match(ious, gt_ignore, gt_crowd, thresholds):
    """COCO greedy matching for all (area range, IoU threshold) rows at once.

    ious: (D, G), detections already in score order. gt_ignore: (A, G) bool. gt_crowd: (G,) bool.
    Returns matched (A, T, D) bool and matched_to_ignored (A, T, D) bool.
    The loop runs over detections (the matching is sequential in score order); every step is
    vectorised over the A*T rows and the G ground truths.
    """
    D, G = ious.shape
    A, T = gt_ignore.shape[0], len(thresholds)
    thr = np.tile(np.minimum(thresholds, 1 - 1e-10), A)[:, None]           # (A*T, 1)
    ign = np.repeat(gt_ignore, T, axis=0)                                   # (A*T, G)
    taken = np.zeros((A * T, G), bool)
    matched = np.zeros((A * T, D), bool)
    to_ignored = np.zeros((A * T, D), bool)
    rows = np.arange(A * T)
    for d in range(D):
        iou = ious[d][None, :]
        ok = iou >= thr
        # first choice: unmatched, non-ignored ground truths; then ignored ones (crowds reusable)
        best = np.zeros(A * T, np.int64)
        found = np.zeros(A * T, bool)
        for cand, ignored in ((ok & ~ign & ~taken, False),
                              (ok & ign & (gt_crowd[None, :] | ~taken), True)):
            has = cand.any(axis=1) & ~found
            if not has.any():
                continue
            score = np.where(cand, iou, -1.0)
            last_max = G - 1 - np.argmax(score[:, ::-1], axis=1)          # last index on ties
            best = np.where(has, last_max, best)
            if ignored:
                to_ignored[:, d] = has
            found |= has
        matched[:, d] = found
        taken[rows[found], best[found]] = True
    return matched.reshape(A, T, D), to_ignored.reshape(A, T, D)


def _evaluate_image(gts, dts, iou_type, max_dets, gt_masks=None, dt_masks=None):
    """Match one image's detections of one category. Returns a dict (see _accumulate)."""
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:max_dets]
    dts = [dts[i] for i in order]
    crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], bool)
    g_area = np.array([float(g["area"]) for g in gts], np.float64)
    d_area = np.array([d["area"] for d in dts], np.float64)
    lo = np.array([a[1] for a in AREA_RANGES])[:, None]
    hi = np.array([a[2] for a in AREA_RANGES])[:, None]
    gt_ignore = crowd[None, :] | (g_area[None, :] < lo) | (g_area[None, :] > hi)     # (A, G)
    A, T, D = len(AREA_RANGES), len(IOU_THRESHOLDS), len(dts)
    if D and len(gts):
        if iou_type == "bbox":
            ious = box_iou_xywh([d["bbox"] for d in dts], [g["bbox"] for g in gts], crowd)
        else:
            ious = mask_iou(dt_masks[order], gt_masks, crowd)
        matched, dt_ignore = _greedy_match(ious, gt_ignore, crowd, IOU_THRESHOLDS)
    else:
        matched = np.zeros((A, T, D), bool)
        dt_ignore = np.zeros((A, T, D), bool)
    d_out = (d_area[None, :] < lo) | (d_area[None, :] > hi)                          # (A, D)
    dt_ignore |= ~matched & d_out[:, None, :]
    return {"scores": np.array([d["score"] for d in dts], np.float64),
            "matched": matched, "ignore": dt_ignore,
            "num_gt": (~gt_ignore).sum(axis=1)}


# --------------------------------------------------------------------------------------------
# accumulate over images
# --------------------------------------------------------------------------------------------
def _accumulate(per_cat, n_cats, max_dets_list):
    """Precision (T, R, K, A, M) and recall (T, K, A, M) arrays; −1 where undefined."""
    T, R, A, M = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(AREA_RANGES), len(max_dets_list)
    precision = -np.ones((T, R, n_cats, A, M))
    recall = -np.ones((T, n_cats, A, M))
    for k, entries in enumerate(per_cat):
        if not entries:
            continue
        scores = np.concatenate([e["scores"] for e in entries])
        rank = np.concatenate([np.arange(len(e["scores"])) for e in entries])
        matched = np.concatenate([e["matched"] for e in entries], axis=2)        # (A, T, N)
        ignore = np.concatenate([e["ignore"] for e in entries], axis=2)
        num_gt = np.sum([e["num_gt"] for e in entries], axis=0)                 # (A,)
        for m, md in enumerate(max_dets_list):
            keep = rank < md
            order = np.argsort(-scores[keep], kind="mergesort")
            tm = matched[:, :, keep][:, :, order]
            ti = ignore[:, :, keep][:, :, order]
            tp = np.cumsum(tm & ~ti, axis=2).astype(np.float64)
            fp = np.cumsum(~tm & ~ti, axis=2).astype(np.float64)
            n = tp.shape[2]
            for a in range(A):
                if num_gt[a] == 0:
                    continue
                rc = tp[a] / num_gt[a]                                          # (T, n)
                pr = tp[a] / (fp[a] + tp[a] + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if n else 0.0
                if n == 0:
                    precision[:, :, k, a, m] = 0.0
                    continue
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]       # monotone
                for t in range(T):
                    idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")
                    precision[t, :, k, a, m] = np.where(idx < n, pr[t, np.minimum(idx, n - 1)], 0)
    return precision, recall


def _mean_valid(s):
    s = s[s > -1]
    return float(np.mean(s)) if s.size else -1.0


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------
def coco_evaluate(gt: dict, results: list, iou_type: str = "bbox", max_dets: int = 100,
                  return_arrays: bool = False) -> dict:
    """COCO AP of ``results`` against the ground truth ``gt``; same numbers as pycocotools.

    gt: a COCO instances dict (``images`` with ``id`` [and ``height``/``width`` for segm],
        ``annotations`` with ``id, image_id, category_id, area, bbox`` or ``segmentation``
        [, ``iscrowd``], ``categories`` with ``id``). Every image and category in it is evaluated.
    results: COCO results list: dicts with ``image_id, category_id, score`` and ``bbox``
        ``[x, y, w, h]`` and/or ``segmentation`` (RLE with str/bytes or list counts).
    iou_type: ``"bbox"`` or ``"segm"``.  max_dets: detections kept per image and category.
    return_arrays: also return ``precision`` (T=10, R=101, K, A=4, M) and ``recall`` (T, K, A, M)
        (−1 where undefined; M indexes ``max_dets_list``) and their axes, e.g. for PR curves.

    Returns a dict with ``AP, AP50, AP75, APs, APm, APl`` (at ``max_dets``) and ``AR1, AR10,
    AR<max_dets>, ARs, ARm, ARl``; each −1 when undefined (no ground truth), as pycocotools.
    """
    where = "coco_evaluate"
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"{where}: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"{where}: max_dets must be a positive int, got {max_dets!r}")
    max_dets = int(max_dets)
    max_dets_list = sorted({m for m in (1, 10, max_dets) if m <= max_dets})
    img_ids, sizes, cat_ids, gt_groups = _parse_gt(gt, iou_type)
    dt_groups = _parse_results(results, sizes, set(cat_ids), iou_type)

    per_cat = [[] for _ in cat_ids]
    for img in img_ids:
        for k, cat in enumerate(cat_ids):
            gts = gt_groups.get((img, cat), [])
            dts = dt_groups.get((img, cat), [])
            if not gts and not dts:
                continue
            gt_masks = dt_masks = None
            if iou_type == "segm" and gts and dts:
                h, w = sizes[img]
                gt_masks = np.stack([_segm_mask(g["segmentation"], h, w,
                                                f"gt annotation {g['id']} segmentation")
                                     for g in gts])
                dt_masks = np.stack([_segm_mask(d["segmentation"], h, w,
                                                f"result [{d['index']}] segmentation")
                                     for d in dts])
            per_cat[k].append(_evaluate_image(gts, dts, iou_type, max_dets, gt_masks, dt_masks))

    precision, recall = _accumulate(per_cat, len(cat_ids), max_dets_list)
    m = len(max_dets_list) - 1
    t50 = np.where(IOU_THRESHOLDS == 0.5)[0]
    t75 = np.where(IOU_THRESHOLDS == 0.75)[0]
    out = {
        "AP": _mean_valid(precision[:, :, :, 0, m]),
        "AP50": _mean_valid(precision[t50][:, :, :, 0, m]),
        "AP75": _mean_valid(precision[t75][:, :, :, 0, m]),
        "APs": _mean_valid(precision[:, :, :, 1, m]),
        "APm": _mean_valid(precision[:, :, :, 2, m]),
        "APl": _mean_valid(precision[:, :, :, 3, m]),
    }
    for i, md in enumerate(max_dets_list):
        out[f"AR{md}"] = _mean_valid(recall[:, :, 0, i])
    out["ARs"] = _mean_valid(recall[:, :, 1, m])
    out["ARm"] = _mean_valid(recall[:, :, 2, m])
    out["ARl"] = _mean_valid(recall[:, :, 3, m])
    if return_arrays:
        out.update(precision=precision, recall=recall, iou_thresholds=IOU_THRESHOLDS.copy(),
                   recall_thresholds=RECALL_THRESHOLDS.copy(), category_ids=list(cat_ids),
                   area_ranges=[a[0] for a in AREA_RANGES], max_dets_list=max_dets_list)
    return out


def summarize(metrics: dict) -> str:
    """A printable table of the metrics returned by :func:`coco_evaluate` (pycocotools layout)."""
    if not isinstance(metrics, dict) or "AP" not in metrics:
        raise ValueError("summarize: metrics must be the dict returned by coco_evaluate")
    ar_keys = sorted((k for k in metrics if k[:2] == "AR" and k[2:].isdigit()), key=lambda k: int(k[2:]))
    md = int(ar_keys[-1][2:]) if ar_keys else 100
    rows = [("AP", "Average Precision", "0.50:0.95", "all", md),
            ("AP50", "Average Precision", "0.50", "all", md),
            ("AP75", "Average Precision", "0.75", "all", md),
            ("APs", "Average Precision", "0.50:0.95", "small", md),
            ("APm", "Average Precision", "0.50:0.95", "medium", md),
            ("APl", "Average Precision", "0.50:0.95", "large", md)]
    rows += [(k, "Average Recall", "0.50:0.95", "all", int(k[2:])) for k in ar_keys]
    rows += [("ARs", "Average Recall", "0.50:0.95", "small", md),
             ("ARm", "Average Recall", "0.50:0.95", "medium", md),
             ("ARl", "Average Recall", "0.50:0.95", "large", md)]
    lines = []
    for key, name, iou, area, m in rows:
        if key in metrics:
            short = "(AP)" if name.startswith("Average P") else "(AR)"
            lines.append(f" {name:<18} {short} @[ IoU={iou:<9} | area={area:>6} | "
                         f"maxDets={m:>3d} ] = {metrics[key]:6.3f}")
    return "\n".join(lines)


def detections_to_coco_results(image_id, boxes, scores, labels, masks=None, category_ids=None):
    """Turn one image's detections into COCO results dicts.

    image_id: the image's COCO id. boxes: (N, 4) ``(x1, y1, x2, y2)``. scores: (N,).
    labels: (N,) ints. category_ids: optional mapping (dict or sequence) label -> COCO category id;
    by default the label is the category id. masks: optional (N, H, W) bool, written as compressed
    RLE (``counts`` a str). Arrays may be NumPy or CuPy.
    Returns a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"[, "segmentation"]}``.
    """
    where = "detections_to_coco_results"
    boxes = np.asarray(asnumpy(boxes), np.float64)
    scores = np.asarray(asnumpy(scores), np.float64).reshape(-1)
    labels = np.asarray(asnumpy(labels)).reshape(-1)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (N, 4), got {boxes.shape}")
    n = len(boxes)
    if scores.shape[0] != n or labels.shape[0] != n:
        raise ValueError(f"{where}: boxes, scores and labels must have the same length, got "
                         f"{n}, {scores.shape[0]}, {labels.shape[0]}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where}: labels must be integers, got {labels.dtype}")
    if masks is not None:
        masks = np.asarray(asnumpy(masks))
        if masks.ndim != 3 or masks.shape[0] != n:
            raise ValueError(f"{where}: masks must have shape (N, H, W) with N={n}, got {masks.shape}")
    if isinstance(image_id, np.integer):
        image_id = int(image_id)                  # JSON-serialisable
    out = []
    for i in range(n):
        lab = int(labels[i])
        cat = lab if category_ids is None else category_ids[lab]
        x1, y1, x2, y2 = boxes[i].tolist()
        cat = int(cat) if isinstance(cat, (int, np.integer)) else cat
        r = {"image_id": image_id, "category_id": cat,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])}
        if masks is not None:
            r["segmentation"] = rle_encode(masks[i] > 0 if masks.dtype != bool else masks[i])
        out.append(r)
    return out


def write_coco_results(results: list, path) -> str:
    """Write a COCO results list to a JSON file (via a temp file and rename); returns the path."""
    if not isinstance(results, list):
        raise TypeError(f"write_coco_results: results must be a list of dicts, got "
                        f"{type(results).__name__}")
    return write_json(results, path)
