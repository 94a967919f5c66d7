"""Running a trained model: over a dataset (COCO-style evaluation files) or on one image file.

``evaluate_model`` is what ``mrcnn-ref evaluate`` runs: it predicts on ``num_images`` images of a
split and writes ``ground_truth.json`` (COCO instances), ``predictions.json`` (COCO results, RLE
masks) and ``metrics.json`` (``{"bbox": {...}, "segm": {...}}`` from the project's own
:func:`mrcnn_ref.evaluate.coco_evaluate`). Those files can be re-checked with pycocotools.
"""
from __future__ import annotations

import os
import time

import numpy as np
from tqdm import tqdm   # the console bar (tqdm.auto warns in notebooks without ipywidgets)

from ._io import write_json
from .backend import asnumpy
from .data.images import read_image  # noqa: F401 - re-exported
from .data.transforms import to_model_input
from .model.tta import TestTimePredictor
from .evaluate import coco_evaluate, detections_to_coco_results, summarize, write_coco_results

__all__ = ["evaluate_model", "predict_image", "read_image"]

# the one image loader (mrcnn_ref.data.images), re-exported for the CLI and the chapters


def _predict_sample(model, image_uint8):
    """Detections on one host image, computed where the model's parameters live, as host arrays."""
    xp = model.array_module
    x = xp.asarray(to_model_input(image_uint8))[None]
    det = TestTimePredictor(model)(x)
    return {k: asnumpy(v) for k, v in det.items()}


def evaluate_model(model, dataset, out_dir, num_images=None, label_to_cat_id=None, progress=True,
                   log=print, first_image: int = 0) -> dict:
    """Predict on ``num_images`` images of ``dataset`` from index ``first_image`` on (default:
    all from the first) and score them the COCO way.

    Returns ``{"bbox": metrics, "segm": metrics, "seconds_per_image": s}`` and writes the three
    JSON files into ``out_dir``.
    """
    if isinstance(first_image, bool) or not isinstance(first_image, int) or first_image < 0:
        raise ValueError(f"evaluate: first_image must be an int >= 0, got {first_image!r}")
    if num_images is not None and int(num_images) <= 0:
        raise ValueError(f"evaluate: num_images must be > 0, got {num_images}")
    if first_image >= len(dataset):
        raise ValueError(f"evaluate: first_image {first_image} is past the last image "
                         f"({len(dataset)} images)")
    n = len(dataset) - first_image if num_images is None else int(num_images)
    if first_image + n > len(dataset):
        raise ValueError(f"evaluate: asked for images {first_image}..{first_image + n - 1} but the "
                         f"split has only {len(dataset)}")
    os.makedirs(out_dir, exist_ok=True)
    label_to_cat_id = label_to_cat_id or dict(dataset.label_to_cat_id)
    indices = list(range(first_image, first_image + n))
    gt = dataset.to_coco(indices)
    results = []
    it = indices
    if progress:

        it = tqdm(indices, desc="evaluate", unit="img", dynamic_ncols=True)
    t0 = time.perf_counter()
    for i in it:
        sample = dataset[i]
        det = _predict_sample(model, sample["image"])
        results += detections_to_coco_results(sample["image_id"], det["boxes"], det["scores"],
                                              det["labels"], det["masks"], category_ids=label_to_cat_id)
    seconds = (time.perf_counter() - t0) / n
    write_json(gt, os.path.join(out_dir, "ground_truth.json"), indent=1)
    write_coco_results(results, os.path.join(out_dir, "predictions.json"))
    metrics = {"bbox": coco_evaluate(gt, results, "bbox"), "segm": coco_evaluate(gt, results, "segm")}
    write_json(metrics, os.path.join(out_dir, "metrics.json"), indent=1)
    for kind in ("bbox", "segm"):
        log(f"{kind}:\n{summarize(metrics[kind])}")
    return {**metrics, "seconds_per_image": seconds}


def predict_image(model, image_uint8, score_thresh=0.5) -> dict:
    """Detections (NumPy arrays) on one (H, W, 3) uint8 image, kept above ``score_thresh``."""
    if (isinstance(score_thresh, bool) or not isinstance(score_thresh, (int, float, np.floating))
            or not 0.0 <= score_thresh <= 1.0):
        raise ValueError(f"predict: the score threshold must be a number in [0, 1], got {score_thresh!r}")
    det = _predict_sample(model, image_uint8)
    keep = det["scores"] >= score_thresh
    return {k: v[keep] for k, v in det.items()}
