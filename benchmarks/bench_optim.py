"""What the optimizer costs in a shapes training step: SGD.step and AdamW.step on the shapes
model's parameters, next to one image's forward + backward.

    python benchmarks/bench_optim.py [--rounds 10] [--steps 20] [--checkpoint CK]

The parameters and gradients are those of the shipped shapes model (or ``--checkpoint``), the
gradient of one training image. The three are timed in alternating rounds (the order flips every
round), so a drift of the machine's speed hits them alike; printed are each one's median time
per call. A training step of the shapes recipe runs one optimizer step per two images (one in
each process), so the optimizer's share of a step is about ``step / (2 x forward+backward)``
when the two processes run side by side, and less when they do not.
One BLAS thread, as in each training process.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps per round")
    ap.add_argument("--checkpoint", default=os.path.join(REPO, "mrcnn_ref", "checkpoints", "shapes.npz"))
    args = ap.parse_args()
    for name in ("rounds", "steps"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if not os.path.exists(args.checkpoint):
        ap.error(f"checkpoint not found: {args.checkpoint}")
    return args


def main():
    args = _parse()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    sys.path.insert(0, REPO)
    import numpy as np  # noqa: PLC0415

    from mrcnn_ref.memory import retain_freed_memory  # noqa: PLC0415
    from mrcnn_ref.nn.optim import SGD, AdamW  # noqa: PLC0415
    from mrcnn_ref.model_io import load_model  # noqa: PLC0415
    from mrcnn_ref.run_config import build_dataset  # noqa: PLC0415
    from mrcnn_ref.train import sample_forward_backward  # noqa: PLC0415

    retain_freed_memory()
    model, rc, _ = load_model(args.checkpoint)
    tcfg = rc.train
    sample = build_dataset(tcfg, "train", 1)[0]
    model.zero_grad()
    sample_forward_backward(model, sample, np.random.default_rng(0))
    grads = {k: v.copy() for k, v in model.named_grads().items()}
    params = model.named_parameters()
    # each optimizer on its own copy of the weights, so the model itself stays as loaded
    optimizers = {
        "SGD.step": SGD({k: v.copy() for k, v in params.items()}, lr=0.02, momentum=0.9, weight_decay=1e-4),
        "AdamW.step": AdamW({k: v.copy() for k, v in params.items()}, lr=tcfg.base_lr,
                            betas=tcfg.adam_betas, eps=tcfg.adam_eps, weight_decay=tcfg.weight_decay),
    }

    def forward_backward():
        model.zero_grad()
        sample_forward_backward(model, sample, np.random.default_rng(0))

    calls = {k: (lambda o=o: o.step(grads)) for k, o in optimizers.items()}
    calls["forward+backward (1 image)"] = forward_backward
    reps = {k: args.steps for k in optimizers}
    reps["forward+backward (1 image)"] = max(1, args.steps // 10)
    names = list(calls)
    for k in names:                                  # warm-up
        calls[k]()
    times = {k: [] for k in names}
    for r in range(args.rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            for _ in range(reps[k]):
                calls[k]()
            times[k].append((time.perf_counter() - t0) / reps[k])
    n_params = sum(p.size for p in params.values())
    print(f"{args.rounds} rounds, {n_params:,} parameters ({len(params)} arrays), 1 BLAS thread, "
          f"checkpoint {os.path.relpath(args.checkpoint)}")
    med = {k: float(np.median(times[k])) * 1e3 for k in names}
    for k in names:
        t = np.array(times[k]) * 1e3
        print(f"  {k:28s} median {med[k]:8.2f} ms  (rounds {t.min():.2f}-{t.max():.2f})")
    fb = med["forward+backward (1 image)"]
    for k in optimizers:
        print(f"  {k:28s} = {med[k] / (2 * fb):.1%} of two images' forward+backward")


if __name__ == "__main__":
    main()
