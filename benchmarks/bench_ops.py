"""Side-by-side timings of our NumPy RoI ops and NMS against torchvision's CPU kernels.

Run:  python benchmarks/bench_ops.py [--repeat 5] [--threads 1] [--float64]

Workload (float32 by default): N=2 images, C=256 channels, a 64x64 feature map (stride 16 of a
1024x1024 image, spatial_scale 1/16), 512 random boxes inside the image, 7x7 output,
sampling_ratio 2; NMS on 5,000 random boxes. For each op it prints our time, torchvision's time
(when torch/torchvision are importable) and the ratio ours / torchvision (< 1: we are faster).
Both run in this one process with the same thread count (``--threads``; BLAS for us, intra-op
threads for torch) so the comparison is fair. Timings are the median of ``--repeat`` runs after a
warm-up run.
"""
from __future__ import annotations

import argparse
import os
import sys
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for BLAS and torch (default: leave the libraries' defaults)")
    p.add_argument("--rois", type=int, default=512)
    p.add_argument("--nms-boxes", type=int, default=5000)
    p.add_argument("--float64", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


ARGS = _parse()
if ARGS.threads:  # must be set before NumPy loads its BLAS
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mrcnn_ref.ops.roi_align import roi_align_backward, roi_align_forward  # noqa: E402
from mrcnn_ref.ops.roi_pool import roi_pool_backward, roi_pool_forward  # noqa: E402

try:
    import torch
    import torchvision

    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
except Exception:  # torch is optional
    torch = torchvision = None

try:
    from mrcnn_ref.nms import nms as our_nms
except Exception:  # nms written by another module; keep the RoI benchmarks usable without it
    our_nms = None


def timeit(fn, repeat):
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def random_boxes(rng, n, size=1024.0):
    """``n`` boxes (x1, y1, x2, y2) inside a size x size image: two sorted uniform draws per axis."""
    xs = np.sort(rng.uniform(0, size, (n, 2)), axis=1)
    ys = np.sort(rng.uniform(0, size, (n, 2)), axis=1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)


def main():
    dtype = np.float64 if ARGS.float64 else np.float32
    rng = np.random.default_rng(ARGS.seed)
    N, C, H, W, K, P, SR, SCALE = 2, 256, 64, 64, ARGS.rois, 7, 2, 1.0 / 16
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = np.concatenate([rng.integers(0, N, (K, 1)).astype(np.float64), random_boxes(rng, K)], 1).astype(dtype)
    rows = []

    # --- ours
    out, cache = roi_align_forward(x, rois, P, SCALE, SR)
    dout = rng.standard_normal(out.shape).astype(dtype)
    ours = {
        "roi_align forward": timeit(lambda: roi_align_forward(x, rois, P, SCALE, SR), ARGS.repeat),
        "roi_align backward": timeit(lambda: roi_align_backward(dout, cache), ARGS.repeat),
    }
    ours["roi_align forward+backward"] = timeit(
        lambda: roi_align_backward(dout, roi_align_forward(x, rois, P, SCALE, SR)[1]), ARGS.repeat)
    pout, pcache = roi_pool_forward(x, rois, P, SCALE)
    ours["roi_pool forward"] = timeit(lambda: roi_pool_forward(x, rois, P, SCALE), ARGS.repeat)
    ours["roi_pool forward+backward"] = timeit(
        lambda: roi_pool_backward(dout, roi_pool_forward(x, rois, P, SCALE)[1]), ARGS.repeat)
    nb = random_boxes(rng, ARGS.nms_boxes).astype(dtype)
    # NMS boxes: smaller boxes (up to 128 px) so that the overlap pattern resembles detections
    nb[:, 2:] = nb[:, :2] + rng.uniform(8, 128, (ARGS.nms_boxes, 2))
    scores = rng.random(ARGS.nms_boxes).astype(dtype)
    if our_nms is not None:
        ours["nms (5,000 boxes, IoU 0.5)"] = timeit(lambda: our_nms(nb, scores, 0.5), ARGS.repeat)
    else:
        ours["nms (5,000 boxes, IoU 0.5)"] = float("nan")

    # --- torchvision
    theirs = {}
    if torchvision is not None:
        xt = torch.from_numpy(x).requires_grad_(True)
        rt = torch.from_numpy(rois)
        dt = torch.from_numpy(dout)
        ops = torchvision.ops

        def tv_align_fb():
            xt.grad = None
            ops.roi_align(xt, rt, P, SCALE, SR).backward(dt)

        def tv_align_b():
            o = ops.roi_align(xt, rt, P, SCALE, SR)
            xt.grad = None
            t = time.perf_counter()
            o.backward(dt)
            return time.perf_counter() - t

        def tv_pool_fb():
            xt.grad = None
            ops.roi_pool(xt, rt, P, SCALE).backward(dt)

        with torch.no_grad():
            theirs["roi_align forward"] = timeit(lambda: ops.roi_align(xt, rt, P, SCALE, SR), ARGS.repeat)
            theirs["roi_pool forward"] = timeit(lambda: ops.roi_pool(xt, rt, P, SCALE), ARGS.repeat)
            nbt, st = torch.from_numpy(nb), torch.from_numpy(scores)
            theirs["nms (5,000 boxes, IoU 0.5)"] = timeit(lambda: ops.nms(nbt, st, 0.5), ARGS.repeat)
        tv_align_b()
        theirs["roi_align backward"] = float(np.median([tv_align_b() for _ in range(ARGS.repeat)]))
        theirs["roi_align forward+backward"] = timeit(tv_align_fb, ARGS.repeat)
        theirs["roi_pool forward+backward"] = timeit(tv_pool_fb, ARGS.repeat)

        # sanity: same numbers (float32 tolerance)
        np.testing.assert_allclose(out, ops.roi_align(xt, rt, P, SCALE, SR).detach().numpy(), atol=1e-3)
        np.testing.assert_allclose(pout, ops.roi_pool(xt, rt, P, SCALE).detach().numpy(), atol=1e-5)

    print(f"N={N} C={C} map {H}x{W} rois={K} out {P}x{P} sampling_ratio={SR} scale=1/16 "
          f"dtype={np.dtype(dtype).name} threads={ARGS.threads or 'default'} repeat={ARGS.repeat}")
    if torchvision is None:
        print("(torch/torchvision not importable: our timings only)")
    if our_nms is None:
        print("(mrcnn_ref.nms not importable: nms row left empty)")
    print(f"{'op':<30} {'ours [ms]':>10} {'torchvision [ms]':>17} {'ours/tv':>8}")
    for name, t in ours.items():
        tv = theirs.get(name, float("nan"))
        rows.append((name, t, tv))
        print(f"{name:<30} {t * 1e3:>10.1f} {tv * 1e3:>17.1f} {t / tv if tv == tv else float('nan'):>8.2f}")
    return rows


if __name__ == "__main__":
    main()
