"""Command-line interface: ``mrcnn-ref {train,evaluate,predict}``.

    mrcnn-ref train --config shapes --out runs/shapes [--seed N] [--resume]
    mrcnn-ref evaluate --checkpoint runs/shapes/model.npz --split val --num-images 200 --out runs/eval
    mrcnn-ref predict IMAGE --checkpoint runs/shapes/model.npz --out picture.png

Every command takes ``--backend numpy|cupy|emulated`` (default: numpy, or $MRCNN_REF_BACKEND).

Errors the user can fix (bad config, missing files, a malformed COCO file, a diverged run) are
printed as one line on stderr with exit status 2 — no traceback (set MRCNN_REF_DEBUG=1 to see it).
Every command first calls :func:`mrcnn_ref.memory.retain_freed_memory` (glibc keeps freed blocks
for reuse: ~10 % faster training steps).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrcnn-ref",
        description="Mask R-CNN from scratch in NumPy: train, evaluate and predict.",
    )
    parser.add_argument("--version", action="version", version=f"mrcnn-ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (the main job: --config shapes)",
                       description="Train Mask R-CNN from scratch. Writes OUT/model.npz, periodic "
                                   "checkpoints, OUT/config.json, OUT/history.json and OUT/loss_curves.png.")
    p.add_argument("--config", default="shapes",
                   help="built-in config name (shapes, tiny) or a .json/.toml file (default: shapes)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
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
    _add_backend_option(p)

    p = sub.add_parser("predict", help="draw the detections on one image",
                       description="Detect instances in IMAGE and write a PNG with masks, boxes, "
                                   "labels and scores.")
    p.add_argument("image", help="an image file (PNG/JPEG)")
    p.add_argument("--checkpoint", required=True, help="a model.npz written by train")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--score-thresh", type=float, default=0.5, help="minimum score shown (default 0.5)")
    _add_set_option(p)
    _add_backend_option(p)
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


def _load_for_inference(args):
    """``load_model`` plus the ``--set`` overrides."""
    from .model.config import with_inference_overrides  # noqa: PLC0415
    from .model_io import load_model  # noqa: PLC0415

    model, rcfg, extra = load_model(args.checkpoint, backend=args.backend)
    if args.set:
        model.config = rcfg.model = with_inference_overrides(model.config, args.set)
    return model, rcfg, extra


def _cmd_train(args) -> int:
    from .train import train  # noqa: PLC0415

    t0 = time.perf_counter()
    history = train(args.config, args.out, seed=args.seed, resume=args.resume,
                    iterations=args.iterations, progress=not args.no_progress, backend=args.backend)
    wall = time.perf_counter() - t0
    n = len(history["total"])
    tail = history["total"][-50:]
    print(f"trained {n} iterations in {wall:.0f} s wall "
          f"({sum(history['seconds']) / max(n, 1):.3f} s/iteration); "
          f"final loss (mean of last {len(tail)}): {sum(tail) / max(len(tail), 1):.4f}")
    print(f"wrote {os.path.join(args.out, 'model.npz')} and {os.path.join(args.out, 'loss_curves.png')}")
    return 0


def _cmd_evaluate(args) -> int:
    from .inference import evaluate_model  # noqa: PLC0415
    from .run_config import build_dataset  # noqa: PLC0415

    model, rcfg, extra = _load_for_inference(args)
    if args.coco_annotations or args.coco_images:
        if not (args.coco_annotations and args.coco_images):
            raise ValueError("evaluate: give both --coco-annotations and --coco-images")
        from .data.coco import CocoDataset  # noqa: PLC0415

        dataset = CocoDataset(args.coco_annotations, args.coco_images)
    else:
        # shapes images are generated from their index: any range of a split exists
        n_split = (None if rcfg.train.dataset != "shapes"
                   else max(args.first_image, 0) + max(args.num_images, 1))
        dataset = build_dataset(rcfg.train, args.split, num_images=n_split)
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
    from .inference import predict_image, read_image  # noqa: PLC0415
    from .visualize import save_detections  # noqa: PLC0415

    image = read_image(args.image)
    model, _, extra = _load_for_inference(args)
    det = predict_image(model, image, score_thresh=args.score_thresh)
    names = {c["label"]: c["name"] for c in extra.get("categories", [])}
    save_detections(args.out, image, det, class_names=names,
                    title=f"{len(det['scores'])} detections (score >= {args.score_thresh})")
    for i in range(len(det["scores"])):
        x1, y1, x2, y2 = det["boxes"][i]
        lab = int(det["labels"][i])
        print(f"{names.get(lab, lab)}\t{det['scores'][i]:.3f}\t[{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .backend import backend_name, get_backend, set_backend  # noqa: PLC0415
    from .memory import retain_freed_memory  # noqa: PLC0415
    from .train import TrainingDiverged  # noqa: PLC0415

    retain_freed_memory()   # reuse freed temporaries instead of page-faulting them back (memory.py)
    handler = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict}[args.command]
    previous = get_backend()
    try:
        if args.backend is not None:
            set_backend(args.backend)      # the default for arrays made without an input (images)
        return handler(args)
    except (ValueError, TypeError, TrainingDiverged, FileNotFoundError) as e:
        if os.environ.get("MRCNN_REF_DEBUG"):
            raise
        print(f"mrcnn-ref {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mrcnn-ref {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        set_backend(backend_name(previous))


if __name__ == "__main__":
    sys.exit(main())
