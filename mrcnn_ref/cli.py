"""Command-line interface: ``mrcnn-ref {train,evaluate,predict,book,ablation}``.

    mrcnn-ref train --config shapes --out runs/shapes [--seed N] [--resume]
    mrcnn-ref evaluate --checkpoint runs/shapes/model.npz --split val --num-images 200 --out runs/eval
    mrcnn-ref predict IMAGE --checkpoint runs/shapes/model.npz --out picture.png
    mrcnn-ref book --out site/ [--smoke] [--chapters 01 03] [--timeout SECONDS]
    mrcnn-ref ablation --study roi-ops --out runs/roi-ops [--seeds 0 1] [--iterations N] [--num-images N]

Every command but ``book`` and ``ablation`` takes ``--backend numpy|cupy|emulated`` (default: numpy, or
$MRCNN_REF_BACKEND).

Errors the user can fix (bad config, missing files, a malformed COCO file, a diverged run, a folder
that cannot be written) are printed as one line on stderr with exit status 2 — no traceback
(``--debug`` or MRCNN_REF_DEBUG=1 shows it).
``book`` exits 1, with one line naming each failed chapter, when a chapter raises or times out.
Every command first calls :func:`mrcnn_ref.memory.retain_freed_memory` (glibc keeps freed blocks
for reuse: ~10 % faster training steps).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .ablation import STUDIES, run_ablation
from .backend import backend_name, get_backend, set_backend
from .book import DEFAULT_TIMEOUT, ChapterFailed, build_book
from .data.coco import CocoDataset
from .data.images import default_max_side, fit_size
from .inference import evaluate_model, predict_image, read_image
from .memory import retain_freed_memory
from .model.config import with_inference_overrides
from .model_io import load_model
from .run_config import build_dataset
from .train import TrainingDiverged, train
from .visualize import save_detections


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrcnn-ref",
        description="Mask R-CNN from scratch in NumPy: train, evaluate and predict.",
    )
    parser.add_argument("--version", action="version", version=f"mrcnn-ref {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (the main job: --config shapes)",
                       description="Train Mask R-CNN from scratch. Writes OUT/model.npz, periodic "
                                   "checkpoints, OUT/config.json, OUT/history.json and OUT/loss_curves.png.")
    p.add_argument("--config", default="shapes",
                   help="built-in config name (shapes, tiny) or a .json/.toml file (default: shapes)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a run, moving that run aside to OUT.old-N")
    _add_max_side_option(p)
    p.add_argument("--iterations", type=int, default=None, help="override the config's iterations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_backend_option(p)

    p = sub.add_parser("evaluate", help="COCO-style bbox and mask AP on held-out images",
                       description="Predict on a split and write EVAL/ground_truth.json, "
                                   "EVAL/predictions.json and EVAL/metrics.json.")
    p.add_argument("--checkpoint", required=True, help="a model.npz written by train")
    p.add_argument("--split", default="val", help="shapes split: val (default) or train")
    p.add_argument("--num-images", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--first-image", type=int, default=0,
                   help="index of the first image (default 0). Shapes: `--split train --first-image "
                        "2000` gives training-split images the recipe never trains on (it uses the "
                        "first 2,000): a tuning set apart from val")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--coco-annotations", default=None, help="evaluate on a COCO instances JSON instead")
    p.add_argument("--coco-images", default=None, help="image folder for --coco-annotations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_set_option(p)
    _add_max_side_option(p)
    _add_backend_option(p)

    p = sub.add_parser("predict", help="draw the detections on one image",
                       description="Detect instances in IMAGE and write a PNG with masks, boxes, "
                                   "labels and scores.")
    p.add_argument("image", help="an image file (PNG/JPEG)")
    p.add_argument("--checkpoint", required=True, help="a model.npz written by train")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--score-thresh", type=float, default=0.5, help="minimum score shown (default 0.5)")
    _add_set_option(p)
    _add_max_side_option(p)
    _add_backend_option(p)

    p = sub.add_parser("book", help="execute the chapters and render them as HTML pages",
                       description="Execute the chapter notebooks (copies: the committed .ipynb files "
                                   "are only read) with chapters/ as working directory and write "
                                   "OUT/NN_topic.html with their outputs and OUT/index.html. Needs "
                                   'the book extra: pip install -e ".[book]".')
    p.add_argument("--out", required=True, help="output folder (created; its parent must exist)")
    p.add_argument("--smoke", action="store_true",
                   help="run the chapters small and fast (MRCNN_REF_SMOKE=1); default: full mode")
    p.add_argument("--chapters", nargs="+", default=None, metavar="NN",
                   help="only these chapters, by number or name (e.g. 01 03); default: all")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="time allowed to each chapter's cells in all (default 1800)")
    p.add_argument("--chapters-dir", default=None, metavar="DIR",
                   help="where the NN_topic.ipynb files are (default: the checkout's chapters/)")
    p.add_argument("--mathjax-url", default=None, metavar="URL",
                   help="load MathJax 2 from here instead of a CDN, to read the maths offline "
                        "(e.g. Debian's libjs-mathjax: file:///usr/share/javascript/mathjax/"
                        "MathJax.js?config=TeX-AMS_CHTML-full,Safe)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("ablation", help="train and score every row of one of the paper's Table 2 studies",
                       description="Train every variant of a study (mrcnn_ref/configs/ablations/STUDY/"
                                   "*.json) for each seed in OUT/VARIANT/seedK, score it on the shapes "
                                   "validation images, and write OUT/results.json, OUT/table.md and "
                                   "OUT/chart.png. Run it again to resume: finished runs are kept.")
    p.add_argument("--study", required=True, help=f"one of: {', '.join(STUDIES)}")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    p.add_argument("--iterations", type=int, default=None, help="override the configs' iterations")
    p.add_argument("--num-images", type=int, default=None,
                   help="validation images to score (default: all 200)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _add_backend_option(p):
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="where the arrays live: numpy (default, or $MRCNN_REF_BACKEND), cupy (an "
                        "NVIDIA GPU, the 'gpu' extra) or emulated (CuPy's host/device rules on the "
                        "CPU, for tests)")


def _add_set_option(p):
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change an inference setting of the checkpoint's config, e.g. "
                        "test_flip=false, 'test_scales=[1.0]', mask_rescoring=false, matrix_nms=off, "
                        "score_thresh=0.3 (repeatable; lists and numbers in JSON)")


def _add_max_side_option(p):
    p.add_argument("--max-image-side", type=int, default=None, metavar="N",
                   help="largest image side (default: 4 x the model's training image size); predict "
                        "shrinks a larger image, evaluate refuses it: memory grows with the pixels")


def _max_side(args, model_image_size):
    if args.max_image_side is None:
        return default_max_side(model_image_size)
    if args.max_image_side < 32:
        raise ValueError(f"--max-image-side must be an int >= 32, got {args.max_image_side}")
    return args.max_image_side


def _load_for_inference(args):
    """``load_model`` plus the ``--set`` overrides."""
    model, rcfg, extra = load_model(args.checkpoint, backend=args.backend)
    if args.set:
        model.config = rcfg.model = with_inference_overrides(model.config, args.set)
    return model, rcfg, extra


def _cmd_train(args) -> int:
    t0 = time.perf_counter()
    history = train(args.config, args.out, seed=args.seed, resume=args.resume,
                    iterations=args.iterations, progress=not args.no_progress, backend=args.backend,
                    overwrite=args.overwrite,
                    max_image_side=None if args.max_image_side is None else _max_side(args, 0))
    wall = time.perf_counter() - t0
    n = len(history["total"])
    tail = history["total"][-50:]
    print(f"trained {n} iterations in {wall:.0f} s wall "
          f"({sum(history['seconds']) / max(n, 1):.3f} s/iteration); "
          f"final loss (mean of last {len(tail)}): {sum(tail) / max(len(tail), 1):.4f}")
    print(f"wrote {os.path.join(args.out, 'model.npz')} and {os.path.join(args.out, 'loss_curves.png')}")
    return 0


def _cmd_evaluate(args) -> int:
    model, rcfg, extra = _load_for_inference(args)
    max_side = _max_side(args, rcfg.model.image_size)
    if args.coco_annotations or args.coco_images:
        if not (args.coco_annotations and args.coco_images):
            raise ValueError("evaluate: give both --coco-annotations and --coco-images")
        dataset = CocoDataset(args.coco_annotations, args.coco_images, max_side=max_side)
        if extra.get("categories"):       # the data's categories must be the model's
            dataset.check_categories(extra["categories"])
    else:
        # shapes images are generated from their index: any range of a split exists
        n_split = (None if rcfg.train.dataset != "shapes"
                   else max(args.first_image, 0) + max(args.num_images, 1))
        dataset = build_dataset(rcfg.train, args.split, num_images=n_split, max_side=max_side)
    # at most what the data holds from --first-image on; evaluate_model checks the arguments
    num = min(args.num_images, max(len(dataset) - args.first_image, 1))
    res = evaluate_model(model, dataset, args.out, num_images=num, progress=not args.no_progress,
                         first_image=args.first_image)
    b, s = res["bbox"], res["segm"]
    print(f"{num} images, {res['seconds_per_image']:.3f} s/image")
    print(f"bbox AP {b['AP']:.4f}  AP50 {b['AP50']:.4f}  AP75 {b['AP75']:.4f}")
    print(f"segm AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  AP75 {s['AP75']:.4f}")
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def _cmd_predict(args) -> int:
    out = args.out
    if os.path.isdir(out):            # a folder: the picture is named after the image
        out = os.path.join(out, os.path.splitext(os.path.basename(args.image))[0] + "_prediction.png")
    image = read_image(args.image)
    model, rcfg, extra = _load_for_inference(args)
    small, (fy, fx) = fit_size(image, _max_side(args, rcfg.model.image_size))
    if small is not image:
        h, w = image.shape[:2]
        print(f"the {w}x{h} image is predicted and drawn at {small.shape[1]}x{small.shape[0]} "
              "(--max-image-side); boxes below are in the original's pixels")
    det = predict_image(model, small, score_thresh=args.score_thresh)
    names = {c["label"]: c["name"] for c in extra.get("categories", [])}
    save_detections(out, small, det, class_names=names,
                    title=f"{len(det['scores'])} detections (score >= {args.score_thresh})")
    for i in range(len(det["scores"])):
        x1, y1, x2, y2 = det["boxes"][i] * [fx, fy, fx, fy]
        lab = int(det["labels"][i])
        print(f"{names.get(lab, lab)}\t{det['scores'][i]:.3f}\t[{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    print(f"wrote {out}")
    return 0


def _cmd_book(args) -> int:
    t0 = time.perf_counter()
    try:
        results = build_book(args.out, args.chapters, smoke=args.smoke,
                             timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
                             chapters_dir=args.chapters_dir, progress=not args.no_progress,
                             mathjax_url=args.mathjax_url)
    except ChapterFailed as e:
        n_failed = sum(not r.ok for r in e.results)
        print(f"wrote {len(e.results)} chapter pages ({n_failed} failed: their pages show the error) "
              f"and {os.path.join(args.out, 'index.html')}")
        print(f"mrcnn-ref book: error: {e}", file=sys.stderr)
        return 1
    mode = "smoke" if args.smoke else "full"
    print(f"built {len(results)} chapters ({mode} mode) in {time.perf_counter() - t0:.0f} s")
    print(f"wrote {os.path.join(args.out, 'index.html')}")
    return 0


def _cmd_ablation(args) -> int:
    t0 = time.perf_counter()
    run_ablation(args.study, args.out, seeds=args.seeds, iterations=args.iterations,
                 num_images=args.num_images, progress=not args.no_progress)
    print(f"study {args.study} done in {time.perf_counter() - t0:.0f} s; see "
          f"{os.path.join(args.out, 'table.md')}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    retain_freed_memory()   # reuse freed temporaries instead of page-faulting them back (memory.py)
    handler = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict,
               "book": _cmd_book, "ablation": _cmd_ablation}[args.command]
    previous = get_backend()
    try:
        if getattr(args, "backend", None) is not None:   # book has no --backend
            set_backend(args.backend)      # the default for arrays made without an input (images)
        return handler(args)
    except (ValueError, TypeError, TrainingDiverged, OSError, RuntimeError) as e:
        # RuntimeError: a helper process of the training died (mrcnn_ref.parallel)
        if args.debug or os.environ.get("MRCNN_REF_DEBUG"):
            raise
        print(f"mrcnn-ref {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrcnn-ref {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_backend(backend_name(previous))


def _one_line(e: BaseException) -> str:
    """An exception as one line: an OSError as 'path: reason', anything else its first line."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
