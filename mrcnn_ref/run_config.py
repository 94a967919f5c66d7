"""Run configurations: what ``mrcnn-ref train --config NAME_OR_FILE`` trains.

A run is a :class:`RunConfig`: a model config (:class:`~mrcnn_ref.model.config.MaskRCNNConfig`)
plus a :class:`TrainConfig` (data, schedule, optimiser, checkpoints). Built-in runs are in
:data:`RUN_PRESETS`; a JSON/TOML file holds ``{"model": {...}, "train": {...}}`` and may start
from a preset with ``"preset": "shapes"``. :func:`build_dataset` makes the data set a train config
names (the built-in shapes splits, or the user's COCO files).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields

from .data.coco import CocoDataset
from .data.shapes import ShapesDataset
from .model.config import (INFERENCE_KEYS, MaskRCNNConfig, check_field_types, load_config,
                           read_config_file)

__all__ = ["TrainConfig", "RunConfig", "RUN_PRESETS", "load_run_config", "build_dataset",
           "train_config_from_dict", "trained_fields"]


@dataclass
class TrainConfig:
    """Data, optimiser and schedule of one training run (keys of the ``"train"`` config section)."""

    dataset: str = "shapes"            # "shapes" (built in) or "coco"
    num_train_images: int = 2000       # shapes: size of the training split
    image_size: int = 128              # shapes: image side
    coco_annotations: str = ""         # coco: instances JSON
    coco_images: str = ""              # coco: image folder
    iterations: int = 3000
    images_per_batch: int = 1          # gradients are averaged over this many images per step
    workers: int = 1                   # processes computing a step's images in parallel (Linux; <= images_per_batch)
    optimizer: str = "sgd"             # "sgd" (momentum; the paper) or "adamw"
    base_lr: float = 0.02
    momentum: float = 0.9              # sgd
    weight_decay: float = 1e-4         # sgd: L2 term in the gradient; adamw: decoupled, per unit of lr
    adam_betas: tuple = (0.9, 0.999)   # adamw
    adam_eps: float = 1e-8             # adamw
    lr_schedule: str = "cosine"        # "cosine" or "step"
    lr_steps: tuple = (0.75, 0.9)      # step schedule: fractions of `iterations`
    gamma: float = 0.1
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    clip_grad_norm: float = 10.0       # 0 disables clipping
    hflip: bool = True
    checkpoint_every: int = 500
    log_every: int = 10

    def validate(self) -> "TrainConfig":
        where = "TrainConfig"
        check_field_types(self, where)
        if self.dataset not in ("shapes", "coco"):
            raise ValueError(f"{where}: dataset must be 'shapes' or 'coco', got {self.dataset!r}")
        if self.dataset == "coco" and not (self.coco_annotations and self.coco_images):
            raise ValueError(f"{where}: dataset 'coco' needs coco_annotations (a JSON file) and "
                             "coco_images (a folder)")
        for name in ("num_train_images", "image_size", "iterations", "images_per_batch", "workers",
                     "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{where}: {name} must be a positive int, got {v!r}")
        for name in ("base_lr", "momentum", "weight_decay", "gamma", "warmup_factor", "clip_grad_norm"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{where}: {name} must be a finite number >= 0, got {v!r}")
        if self.base_lr <= 0:
            raise ValueError(f"{where}: base_lr must be > 0, got {self.base_lr}")
        if not self.momentum < 1:
            raise ValueError(f"{where}: momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.warmup_factor <= 1:
            raise ValueError(f"{where}: warmup_factor must be in (0, 1], got {self.warmup_factor}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"{where}: optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if (not isinstance(self.adam_betas, tuple) or len(self.adam_betas) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                           for b in self.adam_betas)):
            raise ValueError(f"{where}: adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if (isinstance(self.adam_eps, bool) or not isinstance(self.adam_eps, (int, float))
                or not math.isfinite(self.adam_eps) or self.adam_eps <= 0):
            raise ValueError(f"{where}: adam_eps must be a finite number > 0, got {self.adam_eps!r}")
        if self.lr_schedule not in ("cosine", "step"):
            raise ValueError(f"{where}: lr_schedule must be 'cosine' or 'step', got {self.lr_schedule!r}")
        if any(not 0 < s < 1 for s in self.lr_steps) or list(self.lr_steps) != sorted(self.lr_steps):
            raise ValueError(f"{where}: lr_steps must be increasing fractions in (0, 1), got {self.lr_steps}")
        if self.workers > self.images_per_batch:
            raise ValueError(f"{where}: workers ({self.workers}) must not exceed images_per_batch "
                             f"({self.images_per_batch}): each process handles at least one image per step")
        if not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ValueError(f"{where}: warmup_iters must be an int >= 0, got {self.warmup_iters!r}")
        return self


_TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}


def train_config_from_dict(d: dict) -> TrainConfig:
    unknown = sorted(set(d) - set(_TRAIN_FIELDS))
    if unknown:
        raise ValueError(f"train config: unknown key(s) {unknown}; valid keys are {sorted(_TRAIN_FIELDS)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    for k, v in kw.items():
        if _TRAIN_FIELDS[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
            if abs(v) > 2 ** 53:
                raise ValueError(f"train config: {k} = {v} is out of range")
            kw[k] = float(v)
    return TrainConfig(**kw).validate()


@dataclass
class RunConfig:
    """Everything ``mrcnn-ref train`` needs: ``{"model": {...}, "train": {...}}``."""

    model: MaskRCNNConfig
    train: TrainConfig
    name: str = "custom"

    def to_dict(self) -> dict:
        t = dataclasses.asdict(self.train)
        t = {k: (list(v) if isinstance(v, tuple) else v) for k, v in t.items()}
        return {"name": self.name, "model": self.model.to_dict(), "train": t}


# Built-in runs. "shapes" is the main job (README); "tiny" is for tests and smoke runs.
RUN_PRESETS: dict[str, dict] = {
    # AdamW (Loshchilov & Hutter 2019), lr 0.003, decoupled weight decay 0.05: the model is
    # limited by training time, not over-fitted, and per-weight step sizes train further than SGD
    # in the same 6,000 steps; two processes of one image each make the most images per second on
    # two cores. Findings and figures: docs/recipe.md, docs/results.md.
    "shapes": {"model": {"preset": "shapes"},
               "train": {"optimizer": "adamw", "base_lr": 0.003, "weight_decay": 0.05,
                         "images_per_batch": 2, "workers": 2, "iterations": 6000,
                         "warmup_iters": 1000, "checkpoint_every": 1000}},
    "tiny": {"model": {"preset": "tiny", "num_classes": 4},
             "train": {"num_train_images": 16, "image_size": 64, "iterations": 20,
                       "warmup_iters": 5, "checkpoint_every": 10, "log_every": 5, "base_lr": 0.01}},
}


def _run_config_from_dict(d: dict, name: str) -> RunConfig:
    if not isinstance(d, dict):
        raise TypeError(f"run config: expected a dict with 'model' and 'train' sections, got {type(d).__name__}")
    d = dict(d)
    base_name = d.pop("preset", None)
    # the config.json a run writes records its seed too, so it can be given back as --config; the
    # seed of a new run is still chosen by train(seed=...) / --seed
    d.pop("seed", None)
    unknown = sorted(set(d) - {"model", "train", "name"})
    if unknown:
        raise ValueError(f"run config {name!r}: unknown section(s) {unknown}; expected 'model', 'train' "
                         "(and optionally 'preset', 'name')")
    for section in ("model", "train"):
        if not isinstance(d.get(section, {}), dict):
            raise ValueError(f"run config {name!r}: the {section!r} section must be a table of keys, "
                             f"got {type(d[section]).__name__}")
    if not isinstance(d.get("name", name), str):
        raise ValueError(f"run config {name!r}: 'name' must be a string, got {d['name']!r}")
    model_d, train_d = dict(d.get("model", {})), dict(d.get("train", {}))
    if base_name is not None:
        if base_name not in RUN_PRESETS:
            raise ValueError(f"run config {name!r}: unknown preset {base_name!r}; choose one of {sorted(RUN_PRESETS)}")
        base = RUN_PRESETS[base_name]
        model_d = {**base["model"], **model_d}
        train_d = {**base["train"], **train_d}
    if "preset" not in model_d and base_name is None and not model_d:
        model_d = {"preset": "shapes"}
    model_cfg = load_config(model_d)
    return RunConfig(model=model_cfg, train=train_config_from_dict(train_d), name=d.get("name", name))


def load_run_config(name_or_path) -> RunConfig:
    """A run config from a preset name (``"shapes"``, ``"tiny"``) or a JSON/TOML file.

    A file holds ``{"model": {...}, "train": {...}}`` and may start from a preset with
    ``"preset": "shapes"``; the ``model`` section may itself name a model preset. Unknown keys
    are errors.
    """
    if isinstance(name_or_path, RunConfig):
        return name_or_path
    if isinstance(name_or_path, dict):
        return _run_config_from_dict(name_or_path, "dict")
    s = os.fspath(name_or_path)
    if s in RUN_PRESETS:
        return _run_config_from_dict(RUN_PRESETS[s], s)
    if not os.path.isfile(s):
        raise ValueError(f"--config {s!r} is neither a built-in config ({sorted(RUN_PRESETS)}) nor an "
                         "existing .json/.toml file")
    d = read_config_file(s)
    try:
        return _run_config_from_dict(d, os.path.splitext(os.path.basename(s))[0])
    except (TypeError, ValueError) as e:
        raise type(e)(f"config file {s!r}: {e}") from None


def build_dataset(tcfg: TrainConfig, split: str = "train", num_images=None, max_side=None):
    """The dataset named by the train config (a fixed shapes split, or the user's COCO files).

    The shapes splits are always generated with dataset seed 0, so every run (whatever its
    ``--seed``) trains on the same images and is evaluated on the same held-out ``val`` images.
    """
    if tcfg.dataset == "shapes":
        if split not in ("train", "val"):
            raise ValueError(f"shapes dataset: split must be 'train' or 'val', got {split!r}")
        n = num_images if num_images is not None else (tcfg.num_train_images if split == "train" else None)
        return ShapesDataset(split=split, num_images=n, image_size=tcfg.image_size, seed=0)
    return CocoDataset(tcfg.coco_annotations, tcfg.coco_images, max_side=max_side)


def trained_fields(model_cfg: MaskRCNNConfig) -> dict:
    """The model config fields that shape the weights, JSON-normalised (``--resume`` compares
    these; inference-only settings such as ``nms_thresh`` may differ)."""
    d = json.loads(json.dumps(model_cfg.to_dict()))
    return {k: v for k, v in d.items() if k not in INFERENCE_KEYS}
