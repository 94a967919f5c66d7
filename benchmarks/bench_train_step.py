"""One shapes training step (forward + backward of one image), this checkout against another revision.

    python benchmarks/bench_train_step.py [--against REV | --against-checkpoint CK] [--rounds 16] [--steps 8] [--threads 1]

Both versions of the package are imported into this one process (``REV`` is exported with
``git archive`` into a temporary folder as the package ``mrcnn_ref_rev``; the package imports
itself relatively, so both can live side by side), both load the same checkpoint (the shipped
shapes model, or ``--checkpoint``) and step through the same training images with the same
random generators. They run in alternating rounds of ``--steps`` steps (the order flips every
round), so a drift of the machine's speed hits both alike; printed are each version's median time
per step and the median of the per-round ratios. The losses of the two versions are compared too:
a pure speed-up must give the same numbers. Without ``--against`` only this checkout is timed.

``--against-checkpoint CK`` instead compares two *models* with this checkout's code: the one of
``--checkpoint`` and the one of ``CK`` (say, a run with ``"mask_head_channels": 32``), each named
by its path. Use trained models, so that each proposes and samples RoIs as in real training.
Their losses differ, of course.

One BLAS thread, as each of the two training processes of the shapes recipe uses. Like the CLI, it
first calls ``mrcnn_ref.memory.retain_freed_memory`` (freed temporaries are reused).
"""
from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default=None, help="git revision to compare with (e.g. HEAD~3, a tag)")
    ap.add_argument("--against-checkpoint", default=None,
                    help="a second model (checkpoint) to compare with, this checkout's code for both")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="steps per round")
    ap.add_argument("--images", type=int, default=40, help="training images cycled through")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "mrcnn_ref", "checkpoints", "shapes.npz"))
    args = ap.parse_args()
    for name in ("rounds", "steps", "images", "threads"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if args.against and args.against_checkpoint:
        ap.error("give --against (a revision) or --against-checkpoint (a model), not both")
    for ck in (args.checkpoint, args.against_checkpoint):
        if ck is not None and not os.path.exists(ck):
            ap.error(f"checkpoint not found: {ck}")
    return args


def _export(rev, dest):
    """The package at git revision ``rev`` as ``dest/mrcnn_ref_rev``."""
    try:
        archive = subprocess.run(["git", "-C", REPO, "archive", rev, "mrcnn_ref"], check=True,
                                 capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"bench_train_step: cannot export revision {rev!r}: {e.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    os.rename(os.path.join(dest, "mrcnn_ref"), os.path.join(dest, "mrcnn_ref_rev"))


def _for_package(pkg, checkpoint):
    """``checkpoint``, or — when its model config has keys that package ``pkg`` (an older
    revision) does not know, such as inference settings added since — a temporary copy without
    them (they do not touch the training step)."""
    import dataclasses  # noqa: PLC0415
    import importlib  # noqa: PLC0415

    from mrcnn_ref.nn.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415

    config_cls = importlib.import_module(f"{pkg}.model.config").MaskRCNNConfig
    known = {f.name for f in dataclasses.fields(config_cls)}
    ck = load_checkpoint(checkpoint)
    model_cfg = dict(ck["config"]["model"])
    unknown = sorted(set(model_cfg) - known)
    if not unknown:
        return checkpoint
    print(f"  ({pkg}: dropping config keys it does not know: {unknown})")
    config = {**ck["config"], "model": {k: v for k, v in model_cfg.items() if k in known}}
    path = os.path.join(tempfile.mkdtemp(prefix="bench_train_step_"), "model.npz")
    return save_checkpoint(path, ck["params"], None, config=config, extra=ck["extra"])


class _Version:
    """One package version's model and images, and a step function."""

    def __init__(self, pkg, checkpoint, n_images):
        import importlib  # noqa: PLC0415

        def find(name, *modules):   # where this version of the package keeps ``name``
            for m in modules:
                try:
                    return getattr(importlib.import_module(f"{pkg}.{m}"), name)
                except (ImportError, AttributeError):
                    continue
            raise ImportError(f"{pkg} has no {name}")

        self.transforms = importlib.import_module(f"{pkg}.data.transforms")
        load_model = find("load_model", "model_io", "train")
        self.model, rc, _ = load_model(_for_package(pkg, checkpoint))
        ds = find("build_dataset", "run_config", "train")(rc.train, "train", n_images)
        self.samples = [ds[i] for i in range(n_images)]
        # as training calls it: without the image gradient, where the revision knows the option
        self.backward_kw = ({"image_grad": False}
                            if "image_grad" in inspect.signature(self.model.backward).parameters else {})

    def step(self, i):
        import numpy as np  # noqa: PLC0415

        s = self.samples[i % len(self.samples)]
        self.model.zero_grad()
        x = self.transforms.to_model_input(s)[None]
        targets = {k: np.asarray(s[k]) for k in ("boxes", "labels", "masks")}
        _, total = self.model.forward_train(x, targets, rng=np.random.default_rng(i))
        self.model.backward(**self.backward_kw)
        return total


def main():
    args = _parse()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    sys.path.insert(0, REPO)
    import numpy as np  # noqa: PLC0415

    from mrcnn_ref.memory import retain_freed_memory  # noqa: PLC0415

    retain_freed_memory()
    tmp = None
    if args.against:                                # export first: a bad revision fails at once
        tmp = tempfile.TemporaryDirectory()
        _export(args.against, tmp.name)
        sys.path.insert(0, tmp.name)
    if args.against_checkpoint:                     # two models: name them by their files
        first, second = (os.path.relpath(c) for c in (args.checkpoint, args.against_checkpoint))
        if first == second:
            first, second = first + " (1)", second + " (2)"
        versions = {first: _Version("mrcnn_ref", args.checkpoint, args.images),
                    second: _Version("mrcnn_ref", args.against_checkpoint, args.images)}
    else:
        versions = {"this checkout": _Version("mrcnn_ref", args.checkpoint, args.images)}
    if args.against:
        versions[args.against] = _Version("mrcnn_ref_rev", args.checkpoint, args.images)
    names = list(versions)
    for v in versions.values():                     # warm-up
        for i in range(3):
            v.step(i)
    times = {k: [] for k in names}
    losses = {k: [] for k in names}
    for r in range(args.rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for i in range(args.steps):
                losses[k].append(versions[k].step(r * args.steps + i))
            times[k].append((time.perf_counter() - t0) / args.steps)
    print(f"{args.rounds} rounds x {args.steps} steps, {args.threads} BLAS thread(s), "
          f"{args.images} images, checkpoint {os.path.relpath(args.checkpoint)}")
    for k in names:
        t = np.array(times[k]) * 1e3
        print(f"  {k:16s} median {np.median(t):7.1f} ms/step  (rounds {t.min():.1f}-{t.max():.1f})")
    if len(names) == 2:
        ratio = np.array(times[names[0]]) / np.array(times[names[1]])
        same = all(np.array_equal(a, b) for a, b in zip(losses[names[0]], losses[names[1]]))
        print(f"  {names[0]} / {names[1]}: median ratio {np.median(ratio):.3f} "
              f"(rounds {ratio.min():.3f}-{ratio.max():.3f}); losses identical: "
              f"{same if args.against else 'n/a (two models)'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
