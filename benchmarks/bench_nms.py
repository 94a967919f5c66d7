"""NMS timings: mrcnn_ref.nms (NumPy) side by side with torchvision.ops.nms on the CPU.

    python benchmarks/bench_nms.py [--n 5000] [--repeats 10] [--threads 1]

Target: 5,000 boxes no slower than torchvision's CPU nms. Cases (float32, 1000x1000 image):
  * random     -- boxes 5..100 px spread uniformly: most boxes survive (sparse solver);
  * random_big -- boxes 5..300 px: more overlap, about half survive;
  * clustered  -- jittered copies of 5 objects, like RPN proposals: few survive (greedy loop).
("matrix", the full suppression matrix, is what "auto" picks for <= 1,024 boxes per category; at
5,000 boxes it is shown for comparison only.)
Every case also checks that both libraries keep the same indices. The median of ``--repeats``
runs after one warm-up run is printed, for each method ("auto" is the default).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mrcnn_ref.nms import nms  # noqa: E402


def random_boxes(n, rng, max_size=100.0):
    xy = rng.uniform(0, 1000, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(5, max_size, (n, 2))], axis=1)


def clustered_boxes(n, rng, k=5):
    c = rng.uniform(100, 900, (k, 4))
    c[:, 2:] = c[:, :2] + rng.uniform(50, 200, (k, 2))
    b = c[rng.integers(0, k, n)] + rng.normal(0, 10, (n, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    return b


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    try:
        import torch
        import torchvision
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = torchvision = None
        print("torchvision not installed: timing mrcnn_ref only")
    rng = np.random.default_rng(0)
    cases = [("random", lambda: random_boxes(args.n, rng)),
             ("random_big", lambda: random_boxes(args.n, rng, 300.0)),
             ("clustered", lambda: clustered_boxes(args.n, rng))]
    print(f"{'case':11s} {'iou_t':>5s} {'kept':>5s} {'torchvision':>12s} "
          f"{'auto':>9s} {'greedy':>9s} {'sparse':>9s} {'matrix':>9s}   (ms, median of {args.repeats})")
    for name, make in cases:
        b = make().astype(np.float32)
        s = rng.random(args.n).astype(np.float32)
        for t in (0.5, 0.7):
            keep = nms(b, s, t)
            tv = "-"
            if torchvision is not None:
                tb, ts = torch.from_numpy(b), torch.from_numpy(s)
                ref = torchvision.ops.nms(tb, ts, t).numpy()
                assert np.array_equal(keep, ref), f"{name}: result differs from torchvision"
                tv = f"{median_ms(lambda: torchvision.ops.nms(tb, ts, t), args.repeats):9.2f}"
            ours = [median_ms(lambda m=m: nms(b, s, t, method=m), args.repeats)
                    for m in ("auto", "greedy", "sparse", "matrix")]
            print(f"{name:11s} {t:5.1f} {len(keep):5d} {tv:>12s} " + " ".join(f"{v:9.2f}" for v in ours))


if __name__ == "__main__":
    main()
