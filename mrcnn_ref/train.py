"""Training loop: SGD on the Mask R-CNN loss, checkpoints, resume, loss curves.

The whole run is described by a :class:`RunConfig` = a model config (:class:`MaskRCNNConfig`) plus
a :class:`TrainConfig` (data, schedule, optimiser, checkpoints). ``mrcnn-ref train --config shapes``
calls :func:`train` with the ``"shapes"`` preset.

Reproducibility. Every random choice of iteration ``it`` (which images, flips, sampled anchors and
RoIs) comes from ``np.random.default_rng([seed, it])``, and the model is initialised from
``default_rng(seed)``. The state of a run after iteration ``it`` is therefore fully described by
the parameters, the optimiser's momentum buffers and ``it`` — exactly what a checkpoint stores —
so ``--resume`` continues with the *same* losses the uninterrupted run would have produced.

Safety. Checkpoints are written atomically (temp file + rename, :mod:`mrcnn_ref.nn.checkpoint`).
A loss or gradient that becomes NaN/inf stops training with :class:`TrainingDiverged` *before*
the optimiser step, so the parameters on disk (the last periodic checkpoint) are the last good ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, fields

import numpy as np

from ._io import write_json
from .backend import backend_name
from .model.config import INFERENCE_KEYS, MaskRCNNConfig, load_config, with_inference_overrides
from .nn.checkpoint import load_checkpoint, save_checkpoint
from .nn.optim import SGD, AdamW, WarmupCosineLR, WarmupMultiStepLR, clip_grad_norm, global_grad_norm
from .parallel import GradientWorkers, can_fork, share_parameters

__all__ = ["TrainConfig", "RunConfig", "TrainingDiverged", "load_run_config", "build_dataset",
           "train", "sample_forward_backward", "load_model", "load_bundled_model", "plot_loss_curves", "RUN_PRESETS",
           "BUNDLED_CHECKPOINT", "export_model", "bundled_or_trained_model", "summarize_history"]

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient) became NaN or infinite; training stopped before the update."""


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


def _train_config_from_dict(d: dict) -> TrainConfig:
    unknown = sorted(set(d) - set(_TRAIN_FIELDS))
    if unknown:
        raise ValueError(f"train config: unknown key(s) {unknown}; valid keys are {sorted(_TRAIN_FIELDS)}")
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    for k, v in kw.items():
        if _TRAIN_FIELDS[k].type == "float" and isinstance(v, int) and not isinstance(v, bool):
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
    # Measured on this project's 2-core CPU (README "Training status"). Mask AP grows with the
    # number of images seen (1 image/step: 0.61 after 3,000 steps, 0.71 after 5,000, 0.77 after
    # 9,000), so the recipe maximises images per second: two processes (workers), one image each
    # per step. Steps: 9,000 took 15 min 17 s on a slow day of the AMD machine of the first
    # sessions; on the Intel machine of the 2026-12 sessions 8,500 took 17-21 min. Since
    # 2026-12-02 (fourth session) the preset stops at 6,000: with the second box-regression pass
    # at inference (`box_refine`) three seeds gave val bbox AP 0.870 / 0.870 / 0.869 and segm AP
    # 0.861 / 0.874 / 0.867 in 13:29 / 13:46 / 13:59 there, 14:54 in a slower hour (8,500 steps:
    # bbox 0.896, segm 0.894, segm AP50 0.972 against 0.963). lr: with 2 images per step, 8,500
    # steps, 0.02 gave segm AP 0.827 / bbox 0.822 and 0.01 gave 0.816 / 0.819 (one image per step:
    # 0.005 and 0.01 equal after 3,000 steps, 0.02 trained badly, 0.0025 slower). With the usual
    # 100-step warm-up, lr 0.02 left the box head stuck (classifier and box losses flat near 0.9)
    # for ~1,800 steps; a 1,000-step warm-up removed that plateau: segm AP 0.842 / bbox 0.832.
    # Since 2026-12-02 (sixth session) the preset uses AdamW (lr 0.003, decoupled weight decay
    # 0.05), still 6,000 steps. Training images had scored like held-out ones, so SGD was
    # under-training; AdamW's per-weight step sizes train further in the same time. Seed 0, val:
    # bbox AP 0.903 / segm AP 0.916 / segm AP50 0.981 in 13:28 (AMD machine; 0.908 / 0.922 / 0.981
    # on the Intel one), against SGD's 0.870 / 0.861 / 0.963. The choice was made on the tuning
    # images 2000-2299 (segm AP 0.930 against 0.882).
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
    return RunConfig(model=model_cfg, train=_train_config_from_dict(train_d), name=d.get("name", name))


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
    ext = os.path.splitext(s)[1].lower()
    try:
        if ext == ".json":
            with open(s, encoding="utf-8") as f:
                d = json.load(f)
        elif ext == ".toml":
            import tomllib  # noqa: PLC0415 - Python >= 3.11

            with open(s, "rb") as f:
                d = tomllib.load(f)
        else:
            raise ValueError(f"config file {s!r} must end in .json or .toml")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {s!r} is not valid JSON: {e}") from None
    except ModuleNotFoundError:
        raise ValueError(f"reading TOML ({s}) needs Python >= 3.11; use a JSON config") from None
    return _run_config_from_dict(d, os.path.splitext(os.path.basename(s))[0])


def build_dataset(tcfg: TrainConfig, split: str = "train", num_images=None):
    """The dataset named by the train config (a fixed shapes split, or the user's COCO files).

    The shapes splits are always generated with dataset seed 0, so every run (whatever its
    ``--seed``) trains on the same images and is evaluated on the same held-out ``val`` images.
    """
    if tcfg.dataset == "shapes":
        from .data.shapes import ShapesDataset  # noqa: PLC0415

        if split not in ("train", "val"):
            raise ValueError(f"shapes dataset: split must be 'train' or 'val', got {split!r}")
        n = num_images if num_images is not None else (tcfg.num_train_images if split == "train" else None)
        return ShapesDataset(split=split, num_images=n, image_size=tcfg.image_size, seed=0)
    from .data.coco import CocoDataset  # noqa: PLC0415

    return CocoDataset(tcfg.coco_annotations, tcfg.coco_images)


def _num_classes(dataset) -> int:
    return int(dataset.num_classes)


def _schedule(tcfg: TrainConfig):
    if tcfg.lr_schedule == "cosine":
        return WarmupCosineLR(tcfg.base_lr, tcfg.iterations, warmup_iters=tcfg.warmup_iters,
                              warmup_factor=tcfg.warmup_factor)
    milestones = [int(round(f * tcfg.iterations)) for f in tcfg.lr_steps]
    return WarmupMultiStepLR(tcfg.base_lr, warmup_iters=tcfg.warmup_iters,
                             warmup_factor=tcfg.warmup_factor, milestones=milestones, gamma=tcfg.gamma)


def _sample_targets(sample, xp):
    return {"boxes": xp.asarray(sample["boxes"]), "labels": xp.asarray(sample["labels"]),
            "masks": xp.asarray(sample["masks"])}


def sample_forward_backward(model, sample, rng, xp=np):
    """One training sample through the model: the forward pass (its losses) and, if the total
    loss is finite, the backward pass, which *adds* to the model's gradients (no gradient with
    respect to the image). ``sample``: a dataset sample (dict with ``image``, ``boxes``,
    ``labels``, ``masks``); ``rng``: the generator for the anchor and RoI sampling; ``xp``: the
    array module to compute in. Returns ``(losses, total)`` as ``forward_train``."""
    from .data.transforms import to_model_input  # noqa: PLC0415

    image = xp.asarray(to_model_input(sample))[None]
    losses, total = model.forward_train(image, _sample_targets(sample, xp), rng=rng)
    if math.isfinite(total):
        model.backward(image_grad=False)
    return losses, total


def _trained_fields(model_cfg: MaskRCNNConfig) -> dict:
    """The model config fields that shape the weights, JSON-normalised (``--resume`` compares
    these; inference-only settings such as ``nms_thresh`` may differ)."""
    d = json.loads(json.dumps(model_cfg.to_dict()))
    return {k: v for k, v in d.items() if k not in INFERENCE_KEYS}


def _checkpoint_path(out_dir, it=None):
    return os.path.join(out_dir, "model.npz" if it is None else f"checkpoint_{it:06d}.npz")


def _latest_checkpoint(out_dir):
    """The newest periodic checkpoint in out_dir (by iteration), or None."""
    best = None
    for fn in os.listdir(out_dir):
        if fn.startswith("checkpoint_") and fn.endswith(".npz"):
            try:
                it = int(fn[len("checkpoint_"):-len(".npz")])
            except ValueError:
                continue
            if best is None or it > best[0]:
                best = (it, os.path.join(out_dir, fn))
    return best[1] if best else None


def _save(path, model, optim, rcfg, seed, it, history, categories):
    return save_checkpoint(path, model.named_parameters(), optim.state_dict(),
                           config=rcfg.to_dict(), rng_state=None,
                           extra={"iteration": it, "seed": seed, "history": history,
                                  "categories": categories})


def train(config="shapes", out_dir="runs/shapes", seed: int = 0, resume: bool = False,
          iterations=None, progress: bool = True, log=print, keep_checkpoints: int = 3,
          backend=None):
    """Train Mask R-CNN; returns the loss history (a dict of lists, one entry per iteration).

    Writes ``out_dir/config.json``, ``out_dir/checkpoint_XXXXXX.npz`` every ``checkpoint_every``
    iterations (the newest ``keep_checkpoints`` are kept), ``out_dir/history.json``,
    ``out_dir/loss_curves.png`` and the final ``out_dir/model.npz``.

    ``resume=True`` continues from the newest checkpoint in ``out_dir`` (same seed → same losses
    as an uninterrupted run). ``iterations`` overrides the config's number of iterations.
    ``backend`` ('numpy', 'cupy', 'emulated'; default: the default backend) holds the parameters,
    gradients and optimizer state; the dataset stays on the host and each sample is moved once.
    """
    from .data.transforms import random_hflip  # noqa: PLC0415
    from .model.mask_rcnn import MaskRCNN  # noqa: PLC0415

    rcfg = load_run_config(config)
    if iterations is not None:
        rcfg.train = dataclasses.replace(rcfg.train, iterations=int(iterations)).validate()
    tcfg = rcfg.train
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"train: seed must be an int >= 0, got {seed!r}")
    os.makedirs(out_dir, exist_ok=True)

    dataset = build_dataset(tcfg, "train")
    if len(dataset) == 0:
        raise ValueError("train: the training dataset is empty")
    if _num_classes(dataset) != rcfg.model.num_classes:
        raise ValueError(f"train: the dataset has {_num_classes(dataset) - 1} categories, so the model "
                         f"needs num_classes = {_num_classes(dataset)} (background included), but the "
                         f"config says {rcfg.model.num_classes}")

    # label -> {"id": COCO category id, "name": ...}, stored in every checkpoint for evaluate/predict
    categories = [{"label": int(lab), "id": int(cid),
                   "name": next((c["name"] for c in dataset.categories if c["id"] == cid), str(cid))}
                  for lab, cid in sorted(dataset.label_to_cat_id.items())]
    model = MaskRCNN(rcfg.model, rng=np.random.default_rng(seed), backend=backend)
    xp = model.array_module
    n_proc = tcfg.workers
    if n_proc > 1:
        if xp is not np:
            # each image draws from its own generator, so one process gives the same step
            log(f"train: the {n_proc} workers' images run in this process on the "
                f"{backend_name(xp)} backend (helper processes are for the NumPy backend)")
            n_proc = 1
        elif not can_fork():
            log(f"train: this platform cannot fork; running the {n_proc} workers' images in one process")
            n_proc = 1
        else:
            share_parameters(model)    # the forked workers read the weights the optimizer updates
    if tcfg.optimizer == "adamw":
        optim = AdamW(model.named_parameters(), lr=tcfg.base_lr, betas=tcfg.adam_betas,
                      eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay)
    else:
        optim = SGD(model.named_parameters(), lr=tcfg.base_lr, momentum=tcfg.momentum,
                    weight_decay=tcfg.weight_decay)
    schedule = _schedule(tcfg)
    history = {k: [] for k in (*LOSS_KEYS, "total", "lr", "seconds")}
    start = 0

    if resume:
        path = _latest_checkpoint(out_dir)
        if path is None:
            raise ValueError(f"train --resume: no checkpoint_*.npz in {out_dir!r} to resume from")
        ck = load_checkpoint(path, expected=model.named_parameters())
        saved = ck["config"] or {}
        try:   # through the loader, so fields added to the config since the save get their defaults
            saved_model = _trained_fields(load_config(dict(saved["model"])))
        except (KeyError, TypeError, ValueError):
            saved_model = None
        if saved_model != _trained_fields(rcfg.model):
            raise ValueError(f"train --resume: {path} was written with a different model config; "
                             "resume with the same --config")
        if (ck["extra"] or {}).get("seed") != seed:
            raise ValueError(f"train --resume: {path} was trained with seed {ck['extra'].get('seed')}, "
                             f"not {seed}; pass the same --seed to reproduce the run")
        model.load_parameters(ck["params"])
        optim.load_state_dict(ck["optimizer_state"])
        start = int(ck["extra"]["iteration"])
        history = {k: list(v) for k, v in ck["extra"]["history"].items()}
        log(f"resumed from {path} at iteration {start}")

    write_json({**rcfg.to_dict(), "seed": seed}, os.path.join(out_dir, "config.json"), indent=2)

    n_img = tcfg.images_per_batch

    def compute(job):
        """Forward + backward of the images ``j`` of step ``it`` (``job = (it, [j, ...])``); the
        gradients accumulate in this process's model. Image ``j`` draws everything random (which
        image, flip, anchor and RoI sampling) from its own generator seeded ``[seed, it, j]``, so
        the result does not depend on which process computes it. Returns ``[(losses, total)]``;
        stops after a non-finite loss (before its backward)."""
        it, js = job
        out = []
        for j in js:
            rng = np.random.default_rng([seed, it, j])
            sample = dataset[int(rng.integers(len(dataset)))]
            if tcfg.hflip:
                sample = random_hflip(sample, rng)
            losses, total = sample_forward_backward(model, sample, rng, xp)
            out.append((losses, total))
            if not math.isfinite(total):
                break
        return out

    def diverged(what, it):
        return TrainingDiverged(
            f"{what} at iteration {it}; training stopped before the update. The last good "
            f"checkpoint in {out_dir} is kept ({_latest_checkpoint(out_dir) or 'none written yet'}). "
            "Try a lower base_lr.")

    # process w handles the images j = w, w + n_proc, ...; process 0 is this one
    jobs_of = [list(range(w, n_img, n_proc)) for w in range(n_proc)]
    workers = None
    blas_limit = None
    bar = None
    if n_proc > 1:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415

        blas_limit = threadpool_limits(limits=1, user_api="blas")   # inherited by the forks
        workers = GradientWorkers(model, compute, n_proc - 1)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        bar = tqdm(total=tcfg.iterations, initial=start, desc="train", unit="it", dynamic_ncols=True)
    try:
        for it in range(start, tcfg.iterations):
            t0 = time.perf_counter()
            lr = float(schedule(it))
            try:
                for w in range(1, n_proc):               # the workers start first ...
                    workers.submit(w - 1, (it, jobs_of[w]))
                model.zero_grad()                        # ... while this process clears its grads
                results = compute((it, jobs_of[0]))
                for w in range(1, n_proc):
                    results += workers.collect(w - 1)
            except FloatingPointError as e:          # MaskRCNN's NonFiniteOutputs
                raise diverged(str(e), it) from e
            totals = dict.fromkeys(LOSS_KEYS, 0.0)
            for losses, total in results:
                if not math.isfinite(total):
                    raise diverged(f"loss became {total} ({losses})", it)
                for k in LOSS_KEYS:
                    totals[k] += losses[k] / n_img
            grads = model.named_grads()
            for w in range(1, n_proc):             # fixed order: the run is reproducible
                for k, g in grads.items():
                    g += workers.grads[w - 1][k]
            if n_img > 1:
                for g in grads.values():
                    g /= n_img
            norm = global_grad_norm(grads)           # not finite <=> some entry is NaN/inf
            if not math.isfinite(norm):
                raise TrainingDiverged(
                    f"the gradient became NaN/inf at iteration {it}; training stopped before the "
                    f"update. The last good checkpoint in {out_dir} is kept.")
            if tcfg.clip_grad_norm > 0:
                clip_grad_norm(grads, tcfg.clip_grad_norm, total=norm)
            optim.step(grads, lr=lr)

            for k in LOSS_KEYS:
                history[k].append(totals[k])
            history["total"].append(sum(totals.values()))
            history["lr"].append(lr)
            history["seconds"].append(time.perf_counter() - t0)
            done = it + 1
            if bar is not None:
                bar.update(1)
                if done % tcfg.log_every == 0 or done == tcfg.iterations:
                    window = history["total"][-tcfg.log_every:]
                    bar.set_postfix(loss=f"{np.mean(window):.3f}", lr=f"{lr:.4f}")
            if done % tcfg.checkpoint_every == 0 or done == tcfg.iterations:
                _save(_checkpoint_path(out_dir, done), model, optim, rcfg, seed, done, history, categories)
                _prune_checkpoints(out_dir, keep_checkpoints)
    finally:
        if workers is not None:
            workers.close()
        if blas_limit is not None:
            blas_limit.restore_original_limits()
        if bar is not None:
            bar.close()
        _write_history(out_dir, history)

    _save(_checkpoint_path(out_dir), model, optim, rcfg, seed, tcfg.iterations, history, categories)
    plot_loss_curves(history, os.path.join(out_dir, "loss_curves.png"))
    return history


def _prune_checkpoints(out_dir, keep):
    found = sorted(fn for fn in os.listdir(out_dir) if fn.startswith("checkpoint_") and fn.endswith(".npz"))
    for fn in found[:-keep] if keep > 0 else []:
        try:
            os.remove(os.path.join(out_dir, fn))
        except OSError:
            pass


def _write_history(out_dir, history):
    write_json(history, os.path.join(out_dir, "history.json"))


def plot_loss_curves(history: dict, path: str, smooth: int = 25):
    """Save a PNG with each loss (moving average over ``smooth`` iterations) and the total.

    Draws on a standalone :class:`matplotlib.figure.Figure` (no pyplot), so it neither switches
    the global backend nor leaves a figure open — a notebook keeps showing its own plots."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for k in (*LOSS_KEYS, "total"):
        v = np.asarray(history.get(k, []), dtype=float)
        if v.size == 0:
            continue
        w = max(1, min(smooth, v.size))
        avg = np.convolve(v, np.ones(w) / w, mode="valid")
        ax = axes[1] if k == "total" else axes[0]
        ax.plot(np.arange(w - 1, v.size), avg, label=k)
    for ax, title in zip(axes, ("losses", "total loss")):
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(f"{title} (moving average over {smooth})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def load_model(checkpoint_path, backend=None):
    """Rebuild a trained model from a checkpoint: returns ``(model, run_config, extra)``.

    ``backend``: where the parameters go ('numpy', 'cupy', 'emulated'; default: the default
    backend); a checkpoint holds host arrays and loads onto any of them."""
    from .model.mask_rcnn import MaskRCNN  # noqa: PLC0415

    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} does not exist")
    ck = load_checkpoint(path)
    cfg = ck["config"]
    if not isinstance(cfg, dict) or "model" not in cfg or "train" not in cfg:
        raise ValueError(f"checkpoint {path!r} has no run config (was it written by mrcnn-ref train?)")
    rcfg = RunConfig(model=load_config(dict(cfg["model"])), train=_train_config_from_dict(dict(cfg["train"])),
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
    keys = [k for k in (*LOSS_KEYS, "total", "lr", "seconds") if history.get(k)]
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
    import tempfile  # noqa: PLC0415

    out_dir = tempfile.mkdtemp(prefix="mrcnn_ref_tiny_")
    t0 = time.perf_counter()
    train({"preset": "tiny", "train": {"iterations": int(fallback_iterations),
                                       "checkpoint_every": int(fallback_iterations)}},
          out_dir=out_dir, progress=False, log=lambda *a, **k: None)
    model, rcfg, _ = load_model(os.path.join(out_dir, "model.npz"))
    return model, rcfg, (f"no bundled checkpoint: the tiny run trained for {fallback_iterations} "
                         f"iterations just now ({time.perf_counter() - t0:.1f} s)")
