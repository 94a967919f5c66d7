"""Forward + backward timings: mrcnn_ref (NumPy) side by side with torch CPU (when installed).

    python benchmarks/bench_layers.py [--repeats 10] [--threads 2] [--malloc-default]

Cases (float32):
  * conv3x3 64->64, batch 2, 64x64, padding 1 — target: NumPy within 2x of torch;
  * the tiny ResNet-FPN backbone (resnet_fpn_tiny) on a 1x3x128x128 image.
NumPy and torch are timed in alternating blocks of 5 steps (see ``interleaved_times``), so a
machine whose speed drifts during the run (a shared VM can drift by 2x within minutes) slows both
alike; the median of each and the median of the ratios of same-round steps are printed. NumPy's
BLAS threads follow OMP_NUM_THREADS / OPENBLAS_NUM_THREADS; set them to the same value as
``--threads`` for a fair comparison (this script sets them before importing NumPy when they are
unset). Like the CLI, it first calls ``mrcnn_ref.memory.retain_freed_memory`` (freed temporaries
are reused instead of page-faulted back in; ``--malloc-default`` skips it, to see the difference).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc-default", action="store_true",
                    help="leave glibc's malloc as it is (default: mrcnn_ref.memory.retain_freed_memory, "
                         "as the CLI does; the same process runs torch, so both get it)")
    return ap.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(ARGS.threads))

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mrcnn_ref.memory import retain_freed_memory  # noqa: E402
from mrcnn_ref.model.backbone import resnet_fpn_tiny  # noqa: E402
from mrcnn_ref.nn.layers import Conv2d  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_times(fns, repeats, warmup=2, block=5, pause=0.3):
    """Time the functions in alternating blocks: ``block`` timed runs of the first, then of the
    second, ..., until each has ``repeats`` runs. Each block starts after a ``pause`` and one
    untimed run, because the thread pools of the two libraries (OpenBLAS, OpenMP) keep spinning
    for a while after their last call; alternating single steps would make each run against the
    other's spinning threads and slow both down ~3x. Returns, per function, the list of seconds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = [[] for _ in fns]
    while len(out[0]) < repeats:
        for times, fn in zip(out, fns):
            time.sleep(pause)
            fn()
            times += [_timed(fn) for _ in range(min(block, repeats - len(times)))]
    return out


def numpy_conv():
    rng = np.random.default_rng(0)
    conv = Conv2d(64, 64, 3, padding=1, rng=rng)
    x = rng.standard_normal((2, 64, 64, 64)).astype(np.float32)
    dout = rng.standard_normal((2, 64, 64, 64)).astype(np.float32)

    def step():
        conv(x)
        conv.backward(dout)
        conv.zero_grad()

    return step


def numpy_backbone():
    rng = np.random.default_rng(0)
    m = resnet_fpn_tiny(rng=rng)
    x = rng.standard_normal((1, 3, 128, 128)).astype(np.float32)
    douts = [np.ones_like(p) for p in m(x)]
    m.zero_grad()

    def step():
        m(x)
        m.backward(douts)
        m.zero_grad()

    return step


def torch_conv(torch):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    x = torch.randn(2, 64, 64, 64, requires_grad=True)
    dout = torch.randn(2, 64, 64, 64)

    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).backward(dout)

    return step


def torch_backbone(torch):
    """The same tiny architecture built from torch.nn modules (GroupNorm, basic blocks, FPN)."""
    nn, F = torch.nn, torch.nn.functional
    from mrcnn_ref.model.backbone import TINY_CONFIG
    from mrcnn_ref.nn.blocks import make_norm

    cfg = TINY_CONFIG

    def gn(c):
        return nn.GroupNorm(make_norm("gn", c, cfg.gn_groups).num_groups, c)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.branch = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), gn(cout), nn.ReLU(),
                                        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), gn(cout))
            self.short = (nn.Identity() if stride == 1 and cin == cout else
                          nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), gn(cout)))

        def forward(self, x):
            return F.relu(self.branch(x) + self.short(x))

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            c = cfg.stem_channels
            self.stem = nn.Sequential(nn.Conv2d(3, c, 7, 2, 3, bias=False), gn(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            stages, cin = [], c
            for i, w in enumerate(cfg.widths):
                stages.append(Block(cin, w, 1 if i == 0 else 2))
                cin = w
            self.stages = nn.ModuleList(stages)
            self.lat = nn.ModuleList([nn.Conv2d(w, cfg.fpn_channels, 1) for w in cfg.widths])
            self.out = nn.ModuleList([nn.Conv2d(cfg.fpn_channels, cfg.fpn_channels, 3, 1, 1) for _ in cfg.widths])

        def forward(self, x):
            x = self.stem(x)
            cs = []
            for s in self.stages:
                x = s(x)
                cs.append(x)
            inner = self.lat[3](cs[3])
            outs = [self.out[3](inner)]
            for i in (2, 1, 0):
                lat = self.lat[i](cs[i])
                inner = lat + F.interpolate(inner, size=lat.shape[-2:], mode="nearest")
                outs.insert(0, self.out[i](inner))
            return outs + [F.max_pool2d(outs[-1], 1, 2)]

    m = Tiny()
    x = torch.randn(1, 3, 128, 128)

    def step():
        m.zero_grad(set_to_none=True)
        sum(p.sum() for p in m(x)).backward()

    return step


def main(args):
    retained = False if args.malloc_default else retain_freed_memory()
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    rows = [("conv3x3 64->64, 2x64x64x64 (fwd+bwd)", numpy_conv, torch_conv),
            ("tiny ResNet-FPN, 1x3x128x128 (fwd+bwd)", numpy_backbone, torch_backbone)]
    print(f"threads={args.threads}  repeats={args.repeats}  retain_freed_memory={retained}  "
          "(medians after warm-up, interleaved)")
    print(f"{'case':42s} {'numpy':>10s} {'torch':>10s} {'numpy/torch':>12s}")
    for name, fnp, ftorch in rows:
        if torch is None:
            (t_np,) = interleaved_times([fnp()], args.repeats)
            print(f"{name:42s} {statistics.median(t_np) * 1e3:8.1f}ms {'n/a':>10s} {'n/a':>12s}")
            continue
        t_np, t_t = interleaved_times([fnp(), ftorch(torch)], args.repeats)
        ratio = statistics.median(a / b for a, b in zip(t_np, t_t))
        print(f"{name:42s} {statistics.median(t_np) * 1e3:8.1f}ms {statistics.median(t_t) * 1e3:8.1f}ms "
              f"{ratio:11.2f}x")
    print("target: conv3x3 numpy/torch <= 2x")


if __name__ == "__main__":
    main(ARGS)
