"""The training loop: minibatch gradient descent on the Mask R-CNN loss.

One step, as in any textbook loop::

    lr     = schedule(it)                      # warm-up, then cosine or steps
    grads  = mean over the step's images of d loss / d params     (forward + backward)
    norm   = ||grads||;  stop if it is not finite
    grads *= min(1, max_norm / norm)           # clipping
    optimizer.step(grads, lr)                  # SGD with momentum, or AdamW

``mrcnn-ref train --config shapes`` calls :func:`train` with the ``"shapes"`` run
(:mod:`mrcnn_ref.run_config`); the run folder's files are described in :mod:`mrcnn_ref.run_folder`.

Reproducibility. Every random choice of image ``j`` of step ``it`` (which image, flip, sampled
anchors and RoIs) comes from ``np.random.default_rng([seed, it, j])``, and the model is
initialised from ``default_rng(seed)``. The state of a run after iteration ``it`` is therefore
fully described by the parameters, the optimiser's buffers and ``it`` — exactly what a checkpoint
stores — so ``--resume`` continues with the *same* losses the uninterrupted run would have had.

Safety. A loss or gradient that becomes NaN/inf stops training with :class:`TrainingDiverged`
*before* the optimiser step, so the parameters on disk (the last periodic checkpoint) are the last
good ones.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm   # the console bar (tqdm.auto warns in notebooks without ipywidgets)

from .backend import backend_name, is_host
from .data.images import default_max_side
from .data.transforms import random_hflip, to_model_input
from .model.config import load_config
from .model.mask_rcnn import LOSS_NAMES, MaskRCNN
from .nn.checkpoint import CheckpointError, load_checkpoint
from .nn.optim import SGD, AdamW, WarmupCosineLR, WarmupMultiStepLR, clip_grad_norm, global_grad_norm
from .parallel import GradientWorkers, can_fork, share_parameters
from .run_config import TrainConfig, build_dataset, load_run_config, trained_fields
from .run_folder import RunFolder
from .visualize import plot_loss_curves

__all__ = ["train", "TrainingDiverged", "sample_forward_backward", "update_parameters", "StepImages",
           "lr_schedule", "build_optimizer", "LOSS_KEYS"]

LOSS_KEYS = LOSS_NAMES


class TrainingDiverged(RuntimeError):
    """The loss (or the gradient) became NaN or infinite; training stopped before the update."""


def lr_schedule(tcfg: TrainConfig):
    """The learning rate as a function of the iteration: warm-up, then cosine or steps."""
    if tcfg.lr_schedule == "cosine":
        return WarmupCosineLR(tcfg.base_lr, tcfg.iterations, warmup_iters=tcfg.warmup_iters,
                              warmup_factor=tcfg.warmup_factor)
    milestones = [int(round(f * tcfg.iterations)) for f in tcfg.lr_steps]
    return WarmupMultiStepLR(tcfg.base_lr, warmup_iters=tcfg.warmup_iters,
                             warmup_factor=tcfg.warmup_factor, milestones=milestones, gamma=tcfg.gamma)


def build_optimizer(tcfg: TrainConfig, params: dict):
    """SGD with momentum (the paper) or AdamW, as the train config says."""
    if tcfg.optimizer == "adamw":
        return AdamW(params, lr=tcfg.base_lr, betas=tcfg.adam_betas, eps=tcfg.adam_eps,
                     weight_decay=tcfg.weight_decay)
    return SGD(params, lr=tcfg.base_lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)


def sample_forward_backward(model, sample, rng, xp=np):
    """One training sample through the model: the forward pass (its losses) and, if the total
    loss is finite, the backward pass, which *adds* to the model's gradients (no gradient with
    respect to the image). ``sample``: a dataset sample (dict with ``image``, ``boxes``,
    ``labels``, ``masks``, on the host); ``rng``: the generator for the anchor and RoI sampling;
    ``xp``: the array module to compute in (the sample is moved there once). Returns
    ``(losses, total)`` as ``forward_train``."""
    image = xp.asarray(to_model_input(sample))[None]
    targets = {k: xp.asarray(sample[k]) for k in ("boxes", "labels", "masks")}
    losses, total = model.forward_train(image, targets, rng=rng)
    if math.isfinite(total):
        model.backward(image_grad=False)
    return losses, total


class StepImages:
    """Forward + backward of one step's images, in this process and in helper processes.

    Image ``j`` of step ``it`` draws everything random from its own generator seeded
    ``[seed, it, j]``, so the result does not depend on which process computes it. Process ``w``
    handles the images ``j = w, w + n_proc, ...``; process 0 is this one (see
    :mod:`mrcnn_ref.parallel`). ``run(it)`` leaves the step's *summed* gradients in the model and
    returns ``[(losses, total)]`` per image; it stops after a non-finite loss (before its backward).
    """

    def __init__(self, model, dataset, tcfg: TrainConfig, seed: int, n_proc: int):
        self.model, self.dataset, self.tcfg, self.seed = model, dataset, tcfg, seed
        self.xp = model.array_module
        self.jobs = [list(range(w, tcfg.images_per_batch, n_proc)) for w in range(n_proc)]
        self.workers = self.blas_limit = None
        if n_proc > 1:   # the parameters are shared already (share_parameters, before the optimizer)
            self.blas_limit = threadpool_limits(limits=1, user_api="blas")   # inherited by the forks
            self.workers = GradientWorkers(model, self.compute, n_proc - 1)

    def compute(self, job):
        """Forward + backward of the images ``js`` of step ``it`` (``job = (it, js)``) in this
        process's model; returns ``[(losses, total)]``."""
        it, js = job
        out = []
        for j in js:
            rng = np.random.default_rng([self.seed, it, j])
            sample = self.dataset[int(rng.integers(len(self.dataset)))]
            if self.tcfg.hflip:
                sample = random_hflip(sample, rng)
            out.append(sample_forward_backward(self.model, sample, rng, self.xp))
            if not math.isfinite(out[-1][1]):
                break
        return out

    def run(self, it):
        helpers = range(1, len(self.jobs))
        for w in helpers:                          # the helpers start first ...
            self.workers.submit(w - 1, (it, self.jobs[w]))
        self.model.zero_grad()                     # ... while this process clears its grads
        results = self.compute((it, self.jobs[0]))
        for w in helpers:
            results += self.workers.collect(w - 1)
        grads = self.model.named_grads()
        for w in helpers:                          # fixed order: the run is reproducible
            for k, g in grads.items():
                g += self.workers.grads[w - 1][k]
        return results

    def close(self):
        if self.workers is not None:
            self.workers.close()
        if self.blas_limit is not None:
            self.blas_limit.restore_original_limits()


def update_parameters(model, optim, n_img: int, lr: float, max_norm: float) -> float:
    """The update after the backward passes of a step's ``n_img`` images, whose gradients the
    model holds summed: average them, take their global norm, clip to ``max_norm`` (0: no
    clipping) and let ``optim`` step with ``lr``. Returns the norm before clipping; a norm that is
    not finite (some gradient entry is NaN/inf) raises ``FloatingPointError`` before the update."""
    grads = model.named_grads()
    if n_img > 1:
        for g in grads.values():
            g /= n_img
    norm = global_grad_norm(grads)
    if not math.isfinite(norm):
        raise FloatingPointError("the gradient became NaN/inf")
    if max_norm > 0:
        clip_grad_norm(grads, max_norm, total=norm)
    optim.step(grads, lr=lr)
    return norm


def _helper_processes(tcfg, xp, log) -> int:
    """How many processes compute a step's images: ``workers``, or 1 where helpers cannot run."""
    if tcfg.workers == 1:
        return 1
    if not is_host(xp):    # each image draws from its own generator: one process, same numbers
        log(f"train: the {tcfg.workers} workers' images run in this process on the "
            f"{backend_name(xp)} backend (helper processes are for the NumPy backend)")
        return 1
    if not can_fork():
        log(f"train: this platform cannot fork; running the {tcfg.workers} workers' images in one process")
        return 1
    return tcfg.workers


def _resume(folder, model, optim, rcfg, seed, log):
    """Load the newest intact checkpoint of ``folder``; returns ``(iteration, history)``. A damaged
    one (a crash while the disk filled, a copy cut short) is skipped with a message."""
    found = folder.checkpoints()
    if not found:
        raise ValueError(f"train --resume: no checkpoint_*.npz in {folder.path!r} to resume from")
    for _, path in reversed(found):
        try:
            ck = load_checkpoint(path, expected=model.named_parameters())
            break
        except CheckpointError as e:
            log(f"train --resume: skipping {path}: {e}")
    else:
        raise ValueError(f"train --resume: no intact checkpoint in {folder.path!r} "
                         f"({len(found)} damaged)")
    saved = ck["config"] or {}
    try:   # through the loader, so fields added to the config since the save get their defaults
        saved_model = trained_fields(load_config(dict(saved["model"])))
    except (KeyError, TypeError, ValueError):
        saved_model = None
    if saved_model != trained_fields(rcfg.model):
        raise ValueError(f"train --resume: {path} was written with a different model config; "
                         "resume with the same --config")
    if (ck["extra"] or {}).get("seed") != seed:
        raise ValueError(f"train --resume: {path} was trained with seed {ck['extra'].get('seed')}, "
                         f"not {seed}; pass the same --seed to reproduce the run")
    model.load_parameters(ck["params"])
    optim.load_state_dict(ck["optimizer_state"])
    log(f"resumed from {path} at iteration {int(ck['extra']['iteration'])}")
    return int(ck["extra"]["iteration"]), {k: list(v) for k, v in ck["extra"]["history"].items()}


def _mean_losses(results, n_img, it, diverged) -> dict:
    """The step's losses averaged over its images; a non-finite one stops training."""
    totals = dict.fromkeys(LOSS_KEYS, 0.0)
    for losses, total in results:
        if not math.isfinite(total):
            raise diverged(f"loss became {total} ({losses})", it)
        for k in LOSS_KEYS:
            totals[k] += losses[k] / n_img
    return totals


def _categories(dataset) -> list:
    """label -> {"id": COCO category id, "name": ...}, stored in every checkpoint."""
    return [{"label": int(lab), "id": int(cid),
             "name": next((c["name"] for c in dataset.categories if c["id"] == cid), str(cid))}
            for lab, cid in sorted(dataset.label_to_cat_id.items())]


def train(config="shapes", out_dir="runs/shapes", seed: int = 0, resume: bool = False,
          iterations=None, progress: bool = True, log=print, keep_checkpoints: int = 3,
          backend=None, overwrite: bool = False, max_image_side=None):
    """Train Mask R-CNN; returns the loss history (a dict of lists, one entry per iteration).

    Writes ``out_dir/config.json``, ``out_dir/checkpoint_XXXXXX.npz`` every ``checkpoint_every``
    iterations (the newest ``keep_checkpoints`` are kept), ``out_dir/history.json``,
    ``out_dir/loss_curves.png`` and the final ``out_dir/model.npz``.

    ``resume=True`` continues from the newest checkpoint in ``out_dir`` (same seed → same losses
    as an uninterrupted run). ``iterations`` overrides the config's number of iterations.
    ``backend`` ('numpy', 'cupy', 'emulated'; default: the default backend) holds the parameters,
    gradients and optimizer state; the dataset stays on the host and each sample is moved once.

    A fresh run refuses an ``out_dir`` that holds a run, unless ``overwrite`` (the old run is moved
    aside to ``out_dir.old-N``); a lock file refuses a second run in the same folder at the same
    time; ``config.json`` and ``history.json`` are written once the first step has succeeded.
    COCO images larger than ``max_image_side`` (default 4 x the model's image size) are refused
    when the annotations are loaded.
    """
    rcfg = load_run_config(config)
    if iterations is not None:
        rcfg.train = dataclasses.replace(rcfg.train, iterations=int(iterations)).validate()
    tcfg = rcfg.train
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"train: seed must be an int >= 0, got {seed!r}")
    max_side = default_max_side(rcfg.model.image_size) if max_image_side is None else int(max_image_side)
    dataset = build_dataset(tcfg, "train", max_side=max_side)
    if len(dataset) == 0:
        raise ValueError("train: the training dataset is empty")
    if int(dataset.num_classes) != rcfg.model.num_classes:
        raise ValueError(f"train: the dataset has {int(dataset.num_classes) - 1} categories, so the model "
                         f"needs num_classes = {int(dataset.num_classes)} (background included), but the "
                         f"config says {rcfg.model.num_classes}")

    folder = RunFolder(out_dir)
    if resume and overwrite:
        raise ValueError("train: --resume continues the run in --out and --overwrite moves it aside; "
                         "give one of them")
    if overwrite:
        moved = folder.move_aside()
        if moved:
            log(f"train: moved the run that was in {folder.path} to {moved}")
    elif not resume:
        folder.check_fresh()
    with folder.lock():
        return _train_in(folder, rcfg, dataset, seed, resume, progress, log, keep_checkpoints, backend)


def _train_in(folder, rcfg, dataset, seed, resume, progress, log, keep_checkpoints, backend):
    """:func:`train`'s body, with the run folder locked."""
    tcfg = rcfg.train
    model = MaskRCNN(rcfg.model, rng=np.random.default_rng(seed), backend=backend)
    n_proc = _helper_processes(tcfg, model.array_module, log)
    if n_proc > 1:
        share_parameters(model)   # the forked helpers read the very arrays the optimizer updates
    optim = build_optimizer(tcfg, model.named_parameters())
    schedule = lr_schedule(tcfg)
    start, history = 0, {k: [] for k in (*LOSS_KEYS, "total", "lr", "seconds")}
    if resume:
        start, history = _resume(folder, model, optim, rcfg, seed, log)
    categories = _categories(dataset)

    def diverged(what, it):
        return TrainingDiverged(
            f"{what} at iteration {it}; training stopped before the update. The last good "
            f"checkpoint in {folder.path} is kept ({folder.latest_checkpoint() or 'none written yet'}). "
            "Try a lower base_lr.")

    n_img = tcfg.images_per_batch
    images = StepImages(model, dataset, tcfg, seed, n_proc)
    bar = tqdm(total=tcfg.iterations, initial=start, desc="train", unit="it", dynamic_ncols=True,
               disable=not progress)
    try:
        for it in range(start, tcfg.iterations):
            t0 = time.perf_counter()
            lr = float(schedule(it))
            try:
                results = images.run(it)                        # summed gradients in the model
            except FloatingPointError as e:                     # MaskRCNN's NonFiniteOutputs
                raise diverged(str(e), it) from e
            losses = _mean_losses(results, n_img, it, diverged)
            try:
                update_parameters(model, optim, n_img, lr, tcfg.clip_grad_norm)
            except FloatingPointError as e:                     # before the update
                raise diverged(str(e), it) from e
            if it == start:                                     # the first step worked
                folder.write_config(rcfg, seed)

            for k in LOSS_KEYS:
                history[k].append(losses[k])
            history["total"].append(sum(losses.values()))
            history["lr"].append(lr)
            history["seconds"].append(time.perf_counter() - t0)
            done = it + 1
            bar.update(1)
            if done % tcfg.log_every == 0 or done == tcfg.iterations:
                bar.set_postfix(loss=f"{np.mean(history['total'][-tcfg.log_every:]):.3f}", lr=f"{lr:.4f}")
            if done % tcfg.checkpoint_every == 0 or done == tcfg.iterations:
                folder.save(folder.checkpoint_path(done), model, optim, rcfg, seed, done, history, categories)
                folder.prune(keep_checkpoints)
    finally:
        images.close()
        bar.close()
        if len(history["total"]) > start:                     # only after a step of this run
            folder.write_history(history)

    folder.save(folder.checkpoint_path(), model, optim, rcfg, seed, tcfg.iterations, history, categories)
    plot_loss_curves(history, folder.file("loss_curves.png"))
    return history
