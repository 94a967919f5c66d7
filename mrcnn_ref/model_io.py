"""Trained models on disk: load a checkpoint into a :class:`MaskRCNN`, export the small
parameters-only copy that ships with the package, and the shipped model itself.
"""
from __future__ import annotations

import math
import os
import tempfile
import time

import numpy as np

from .model.config import load_config, with_inference_overrides
from .model.mask_rcnn import LOSS_NAMES, MaskRCNN
from .nn.checkpoint import load_checkpoint, save_checkpoint
from .run_config import RunConfig, train_config_from_dict
from .train import train

__all__ = ["load_model", "load_bundled_model", "BUNDLED_CHECKPOINT", "export_model",
           "summarize_history", "bundled_or_trained_model"]


def load_model(checkpoint_path, backend=None):
    """Rebuild a trained model from a checkpoint: returns ``(model, run_config, extra)``.

    ``backend``: where the parameters go ('numpy', 'cupy', 'emulated'; default: the default
    backend); a checkpoint holds host arrays and loads onto any of them."""
    path = os.fspath(checkpoint_path)
    ck = load_checkpoint(path)          # a missing, damaged or foreign file: one CheckpointError
    cfg = ck["config"]
    if not isinstance(cfg, dict) or "model" not in cfg or "train" not in cfg:
        raise ValueError(f"checkpoint {path!r} has no run config (was it written by mrcnn-ref train?)")
    rcfg = RunConfig(model=load_config(dict(cfg["model"])), train=train_config_from_dict(dict(cfg["train"])),
                     name=cfg.get("name", "custom"))
    model = MaskRCNN(rcfg.model, rng=np.random.default_rng(0), backend=backend)
    model.load_parameters(ck["params"])
    return model, rcfg, ck["extra"] or {}


#: Where the small trained checkpoint that ships with the package lives (used by the chapters).
BUNDLED_CHECKPOINT = os.path.join(os.path.dirname(__file__), "checkpoints", "shapes.npz")


def load_bundled_model(backend=None):
    """The shipped shapes checkpoint as ``(model, run_config, extra)``, or ``None`` if absent.

    The chapters use it to show real detections without training first; see README for the
    command that reproduces it.
    """
    if not os.path.isfile(BUNDLED_CHECKPOINT):
        return None
    return load_model(BUNDLED_CHECKPOINT, backend=backend)


def summarize_history(history: dict, max_points: int = 500) -> dict:
    """A compact loss history: the mean of each loss (and of lr, seconds) over consecutive windows
    of ``ceil(n / max_points)`` iterations (the last window may be shorter). Returns ``{"iteration": [...], key: [...]}`` where
    ``iteration`` is the last iteration (1-based) of each window."""
    keys = [k for k in (*LOSS_NAMES, "total", "lr", "seconds") if history.get(k)]
    if not keys:
        return {}
    n = min(len(history[k]) for k in keys)
    if n == 0:
        return {}
    step = max(1, math.ceil(n / int(max_points)))
    ends = list(range(step, n, step)) + [n]
    out = {"iteration": ends}
    for k in keys:
        v = np.asarray(history[k][:n], dtype=np.float64)
        out[k] = [float(f"{v[a:b].mean():.6g}") for a, b in zip([0, *ends[:-1]], ends)]
    return out


def export_model(checkpoint_path, out_path, inference_overrides=None):
    """Write a parameters-only copy of a training checkpoint — what ships as
    :data:`BUNDLED_CHECKPOINT`: no optimizer state, and the loss history reduced by
    :func:`summarize_history` (``extra["loss_history"]``, ≤ 500 points per loss, for plotting).
    ``inference_overrides`` (a dict of :data:`~mrcnn_ref.model.config.INFERENCE_KEYS` values, e.g.
    ``{"matrix_nms": "all_classes"}``) changes the exported model's inference settings, as
    ``evaluate --set`` does. Returns ``out_path``."""
    ck = load_checkpoint(os.fspath(checkpoint_path))
    config = ck["config"]
    if inference_overrides:
        if not isinstance(config, dict) or "model" not in config:
            raise ValueError(f"export_model: {os.fspath(checkpoint_path)!r} has no run config to override")
        model_cfg = with_inference_overrides(load_config(dict(config["model"])), inference_overrides)
        config = {**config, "model": model_cfg.to_dict()}
    extra = dict(ck["extra"] or {})
    history = extra.pop("history", None) or {}
    extra["final_loss"] = (history.get("total") or [None])[-1]
    extra["loss_history"] = summarize_history(history)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    return save_checkpoint(out_path, ck["params"], None, config=config, rng_state=None, extra=extra)


def bundled_or_trained_model(fallback_iterations: int):
    """The shipped shapes model, or — when none ships — the ``"tiny"`` run trained right now for
    ``fallback_iterations`` in a temporary folder. Returns ``(model, run_config, description)``.

    The chapters use it so they always have *some* trained model to show.
    """
    bundled = load_bundled_model()
    if bundled is not None:
        model, rcfg, _ = bundled
        return model, rcfg, f"the bundled checkpoint ({BUNDLED_CHECKPOINT})"
    out_dir = tempfile.mkdtemp(prefix="mrcnn_ref_tiny_")
    t0 = time.perf_counter()
    train({"preset": "tiny", "train": {"iterations": int(fallback_iterations),
                                       "checkpoint_every": int(fallback_iterations)}},
          out_dir=out_dir, progress=False, log=lambda *a, **k: None)
    model, rcfg, _ = load_model(os.path.join(out_dir, "model.npz"))
    return model, rcfg, (f"no bundled checkpoint: the tiny run trained for {fallback_iterations} "
                         f"iterations just now ({time.perf_counter() - t0:.1f} s)")
