"""RoI ops on features holding NaN / +inf / -inf: torchvision's numbers, not the matrix products'.

torchvision reads only the 4 bilinear neighbours of each sample (RoIAlign) or the pixels of each
bin (RoIPool), so a non-finite value elsewhere has no effect; our RoIAlign multiplies whole
windows by weight matrices (0 * nan = nan) and must correct for that. References here are
independent: plain-Python loops over samples/bins with torchvision's formulas, and torchvision.
"""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import mrcnn_ref._checks as checks
import mrcnn_ref.ops.roi_align as ra
import mrcnn_ref.ops.roi_pool as rp
from mrcnn_ref import backend
from mrcnn_ref.emulated import count_syncs
from mrcnn_ref.ops.roi_align import (roi_align, roi_align_backward, roi_align_forward, roi_align_max,
                                     roi_align_max_backward, roi_align_max_forward)
from mrcnn_ref.ops.roi_pool import roi_pool, roi_pool_backward, roi_pool_forward
from mrcnn_ref.ops.roi_warp import roi_warp, roi_warp_backward, roi_warp_forward

SPECIAL = (np.nan, np.inf, -np.inf)
FORWARD = {"roi_align": (roi_align_forward, roi_align_backward),
           "roi_align_max": (roi_align_max_forward, roi_align_max_backward),
           "roi_warp": (roi_warp_forward, roi_warp_backward)}


# ------------------------------------------------------------------ independent references
def _round_half_away(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def _geometry(box, scale, aligned, warp=False):
    """(y1, h, x1, w) of one RoI, per torchvision's RoIAlign (RoIWarp: rounded corners, scale 1)."""
    if warp:
        x1, y1, x2, y2 = (_round_half_away(float(v) * scale) for v in box[1:])
        return y1, max(y2 - y1, 1.0), x1, max(x2 - x1, 1.0)
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * scale - off for v in box[1:])
    h, w = y2 - y1, x2 - x1
    if not aligned:
        h, w = max(h, 1.0), max(w, 1.0)
    return y1, h, x1, w


def _axis(start, size, n_bins, sr):
    """Per bin, the sample coordinates along one axis (torchvision's expression order)."""
    grid = sr if sr > 0 else math.ceil(size / n_bins)
    b = size / n_bins
    return [[start + p * b + (i + 0.5) * b / grid for i in range(grid)] for p in range(n_bins)]


def _neighbours(c, length):
    """(low, high, weight_low, weight_high) of a coordinate, or None outside [-1, length]."""
    if c < -1.0 or c > length:
        return None
    c = max(c, 0.0)
    low = int(c)
    if low >= length - 1:
        low = high = length - 1
        c = float(low)
    else:
        high = low + 1
    frac = c - low
    return low, high, 1.0 - frac, frac


def _samples(box, shape, out, scale, sr, aligned, warp=False):
    """Yield ``(p, q, reads)`` per sample of a RoI; ``reads``: [(h, w, weight)] of its 4
    neighbours (weight 0 included), or None for a sample outside the map."""
    _, _, H, W = shape
    y1, h, x1, w = _geometry(box, scale, aligned, warp)
    ys, xs = _axis(y1, h, out[0], sr), _axis(x1, w, out[1], sr)
    for p in range(out[0]):
        for q in range(out[1]):
            for y in ys[p]:
                for x in xs[q]:
                    ny, nx = _neighbours(y, H), _neighbours(x, W)
                    if ny is None or nx is None:
                        yield p, q, None
                        continue
                    yl, yh, wyl, wyh = ny
                    xl, xh, wxl, wxh = nx
                    yield p, q, [(yl, xl, wyl * wxl), (yl, xh, wyl * wxh),
                                 (yh, xl, wyh * wxl), (yh, xh, wyh * wxh)]


def ref_bilinear_pool(x, boxes, out, scale, sr, aligned, reduce="avg", warp=False):
    """torchvision's loop (CUDA kernel: an outside sample reads nothing), avg or max per bin."""
    K, C = len(boxes), x.shape[1]
    vals = {}
    for k, box in enumerate(boxes):
        F = x[int(box[0])]
        for p, q, reads in _samples(box, x.shape, out, scale, sr, aligned, warp):
            v = np.zeros(C)
            if reads is not None:
                with np.errstate(invalid="ignore"):
                    v = sum(wt * F[:, h, w].astype(np.float64) for h, w, wt in reads)
            vals.setdefault((k, p, q), []).append(v)
    res = np.zeros((K, C) + tuple(out))
    with np.errstate(invalid="ignore"):
        for (k, p, q), v in vals.items():
            res[k, :, p, q] = np.max(v, axis=0) if reduce == "max" else np.sum(v, axis=0) / len(v)
    return res


def read_pixels(boxes, shape, out, scale, sr, aligned, warp=False):
    """Per image, the pixels torchvision's CPU kernel reads (with weight 0 too; an outside
    sample reads pixel (0, 0)), dilated by one pixel (float32 coordinates may round otherwise)."""
    _, _, H, W = shape
    seen = {n: set() for n in range(shape[0])}
    for box in boxes:
        n = int(box[0])
        for _, _, reads in _samples(box, shape, out, scale, sr, aligned, warp):
            for h, w, _ in reads or [(0, 0, 0.0)]:
                for dh in (-1, 0, 1):
                    for dw in (-1, 0, 1):
                        seen[n].add((min(max(h + dh, 0), H - 1), min(max(w + dw, 0), W - 1)))
    return seen


def pool_pixels(boxes, shape, out, scale):
    """Per image, the pixels inside some RoIPool bin (torchvision's bin edges), dilated by one."""
    _, _, H, W = shape
    seen = {n: set() for n in range(shape[0])}
    for box in boxes:
        n = int(box[0])
        x1, y1, x2, y2 = (_round_half_away(float(v) * scale) for v in box[1:])
        edges = []
        for s, e, n_bins, length in ((y1, y2, out[0], H), (x1, x2, out[1], W)):
            b = max(e - s + 1, 1) / n_bins
            edges.append([(int(min(max(math.floor(p * b) + s, 0), length)),
                           int(min(max(math.ceil((p + 1) * b) + s, 0), length))) for p in range(n_bins)])
        for hs, he in edges[0]:
            for ws, we in edges[1]:
                for h in range(hs - 1, he + 1):
                    for w in range(ws - 1, we + 1):
                        seen[n].add((min(max(h, 0), H - 1), min(max(w, 0), W - 1)))
    return seen


# ------------------------------------------------------------------ strategies
@st.composite
def problem(draw, dtypes=(np.float64, np.float32)):
    """Features, RoIs (partly outside, tiny, or on a half-pixel grid so that samples fall on
    integral coordinates, where a neighbour is read with weight 0), output size, scale,
    sampling ratio, aligned, dtype, and an rng for planting."""
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    k = draw(st.integers(1, 4))
    scale = draw(st.sampled_from([1.0, 0.5]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from(dtypes))
    x = rng.standard_normal((n, c, h, w))
    xs = rng.uniform(-3 / scale, (w + 3) / scale, (k, 2))
    ys = rng.uniform(-3 / scale, (h + 3) / scale, (k, 2))
    if draw(st.booleans()):
        xs, ys = np.round(xs * 2 * scale) / (2 * scale), np.round(ys * 2 * scale) / (2 * scale)
    boxes = np.stack([rng.integers(0, n, k), xs.min(1), ys.min(1), xs.max(1), ys.max(1)], 1)
    out = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sr = draw(st.sampled_from([2, -1]))
    aligned = draw(st.booleans())
    return x.astype(dtype), boxes.astype(dtype), out, scale, sr, aligned, rng


def plant(x, rng, density, kinds=SPECIAL, avoid=None):
    """A copy of ``x`` with non-finite values at random places (not at ``avoid[n]`` pixels)."""
    x = x.copy()
    mask = rng.random(x.shape) < density
    if avoid is not None:
        for n, pix in avoid.items():
            for h, w in pix:
                mask[n, :, h, w] = False
    x[mask] = rng.choice(np.array(kinds), int(mask.sum())).astype(x.dtype)
    return x, mask


def assert_same(ours, ref, dtype):
    """Equal NaN, +inf and -inf positions; close finite values."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    fin = np.isfinite(ref)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=tol, atol=tol)


def _emulated(fn, x, boxes, *args, **kwargs):
    """``fn`` on the emulated device backend, with device value checks on (the gate of the
    non-finite correction of RoIAlign)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "CHECK_DEVICE_VALUES", True)
        out = fn(backend.to_device(x, "emulated"), backend.to_device(boxes, "emulated"), *args, **kwargs)
    return backend.asnumpy(out)


# ------------------------------------------------------------------ the issue's example
def test_issue_example():
    x = np.zeros((1, 1, 20, 20))
    x[0, 0, 14, 14] = np.nan                 # no sample of the RoI reads pixel (14, 14)
    boxes = np.array([[0, 1, 1, 6, 6.0]])
    for path in ra.PATHS:
        out = roi_align(x, boxes, 4, 1.0, 2, path=path)
        assert out.shape == (1, 1, 4, 4) and not np.isnan(out).any()
        np.testing.assert_array_equal(out, 0.0)
        assert not np.isnan(roi_align_max(x, boxes, 4, 1.0, 2, path=path)).any()
    assert not np.isnan(roi_warp(x, boxes, 4, 1.0, 2)).any()
    assert not np.isnan(_emulated(roi_align, x, boxes, 4, 1.0, 2)).any()
    # a NaN that samples read makes their bins (and only those) NaN: samples along each axis
    # at 1.3125, 1.9375 | 2.5625, 3.1875 | ..., so pixel 2 is read by bins 0 and 1
    x[0, 0, 14, 14] = 0.0
    x[0, 0, 2, 2] = np.nan
    for path in ra.PATHS:
        nan = np.isnan(roi_align(x, boxes, 4, 1.0, 2, path=path))
        assert nan[0, 0, :2, :2].all() and nan.sum() == 4


def test_hand_values_at_sampled_points():
    # box [1, 3]^2, one bin, one sample at (2, 2): an integral point, so it reads (2, 2) with
    # weight 1 and (2, 3), (3, 2), (3, 3) with weight 0
    boxes = np.array([[0, 1, 1, 3, 3.0]])
    cases = [((2, 2), np.inf, np.inf), ((2, 2), -np.inf, -np.inf), ((2, 2), np.nan, np.nan),
             ((3, 3), np.inf, np.nan),     # 0 * inf
             ((2, 3), np.nan, np.nan),     # a NaN read with weight 0
             ((1, 2), np.inf, 2.0),        # not a neighbour: no effect
             ((4, 4), np.nan, 2.0)]
    for (h, w), v, expect in cases:
        x = np.zeros((1, 1, 6, 6))
        x[0, 0, 2, 2] = 2.0
        x[0, 0, h, w] = v
        for path in ra.PATHS:
            got = roi_align(x, boxes, 1, 1.0, 1, path=path)[0, 0, 0, 0]
            np.testing.assert_array_equal(got, expect, err_msg=f"{(h, w)} = {v}, path {path}")
    # the last row/column: both neighbours are pixel H-1, one with weight 0 -> inf gives NaN
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 3, 3] = np.inf
    assert np.isnan(roi_align(x, np.array([[0, 3, 3, 4, 4.0]]), 1, 1.0, 1)[0, 0, 0, 0])
    # +inf and -inf read by one bin: NaN; read with weights > 0 only: ±inf
    x = np.zeros((1, 1, 6, 6))
    x[0, 0, 1, 1], x[0, 0, 3, 3] = np.inf, -np.inf
    out = roi_align(x, np.array([[0, 0, 0, 4, 4.0]]), 2, 1.0, 2)[0, 0]    # samples at .5, 1.5, ...
    np.testing.assert_array_equal(out, [[np.inf, 0.0], [0.0, -np.inf]])
    out = roi_align(x, np.array([[0, 0, 0, 4, 4.0]]), 1, 1.0, 2)[0, 0, 0, 0]
    assert np.isnan(out)


def test_outside_sample_reads_nothing():
    # a sample outside [-1, H] x [-1, W] reads no pixel (torchvision's CUDA kernel; its CPU
    # kernel reads pixel (0, 0) with weight 0 there, so it would give NaN here)
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 0, 0] = np.nan
    for path in ra.PATHS:
        np.testing.assert_array_equal(roi_align(x, np.array([[0, -4, -4, -2, -2.0]]), 1, 1.0, 1,
                                                path=path), 0.0)


# ------------------------------------------------------------------ no effect outside the reads
@given(problem(), st.sampled_from(list(FORWARD)), st.sampled_from([0.05, 0.3, 1.0]))
def test_unread_values_have_no_effect(prob, op, density):
    x, boxes, out, scale, sr, aligned, rng = prob
    if op == "roi_warp":
        aligned = False
    fwd, bwd = FORWARD[op]
    args = (out, scale, sr) if op == "roi_warp" else (out, scale, sr, aligned)
    reads = read_pixels(boxes, x.shape, out, scale, sr, aligned, warp=op == "roi_warp")
    bad, mask = plant(x, rng, density, avoid=reads)
    zeroed = np.where(mask, 0, bad).astype(x.dtype)
    paths = ra.PATHS if op != "roi_warp" else ("auto",)
    for path in paths:
        kw = {} if op == "roi_warp" else {"path": path}
        o_bad, c_bad = fwd(bad, boxes, *args, **kw)
        o_zero, c_zero = fwd(zeroed, boxes, *args, **kw)
        np.testing.assert_array_equal(o_bad, o_zero)
        assert np.isfinite(o_bad).all()
        d = rng.standard_normal(o_bad.shape).astype(x.dtype)
        np.testing.assert_array_equal(bwd(d, c_bad), bwd(d, c_zero))   # backward ignores values
    fn = {"roi_align": roi_align, "roi_align_max": roi_align_max, "roi_warp": roi_warp}[op]
    np.testing.assert_array_equal(_emulated(fn, bad, boxes, *args), _emulated(fn, zeroed, boxes, *args))


# ------------------------------------------------------------------ at sampled points
@given(problem(dtypes=(np.float64,)), st.sampled_from([0.05, 0.2, 0.5]), st.booleans(),
       st.sampled_from([SPECIAL, (np.nan,), (np.inf,), (np.inf, -np.inf)]))
def test_matches_reference_loop(prob, density, use_max, kinds):
    """Avg and max against the per-sample loop (pixel (0, 0) included: outside samples read
    nothing), on every path and on the emulated device."""
    x, boxes, out, scale, sr, aligned, rng = prob
    bad, _ = plant(x, rng, density, kinds)
    ref = ref_bilinear_pool(bad, boxes, out, scale, sr, aligned, "max" if use_max else "avg")
    fn = roi_align_max if use_max else roi_align
    for path in ra.PATHS:
        assert_same(fn(bad, boxes, out, scale, sr, aligned, path=path), ref, x.dtype)
        # on a device, "auto" is the device path; "dense" / "window" force a host path there
        assert_same(_emulated(fn, bad, boxes, out, scale, sr, aligned, path=path), ref, x.dtype)


@given(problem(), st.sampled_from([0.05, 0.2, 0.5]),
       st.sampled_from([SPECIAL, (np.nan,), (np.inf,), (np.inf, -np.inf)]))
def test_matches_torchvision(prob, density, kinds):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, out, scale, sr, aligned, rng = prob
    # torchvision's CPU kernel lets an outside sample read pixel (0, 0) (weight 0): keep it finite
    bad, _ = plant(x, rng, density, kinds, avoid={n: {(0, 0)} for n in range(x.shape[0])})
    xt = torch.tensor(bad, requires_grad=True)
    ref = tv.ops.roi_align(xt, torch.tensor(boxes), out, scale, sr, aligned)
    d = rng.standard_normal(ref.shape).astype(x.dtype)
    ref.backward(torch.tensor(d))
    for path in ra.PATHS:
        o, cache = roi_align_forward(bad, boxes, out, scale, sr, aligned, path=path)
        assert_same(o, ref.detach().numpy(), x.dtype)
        # the gradient does not depend on the values, in torchvision as here
        tol = 1e-10 if x.dtype == np.float64 else 2e-5
        np.testing.assert_allclose(roi_align_backward(d, cache), xt.grad.numpy(), rtol=tol, atol=tol)
    # RoIWarp is RoIAlign on rounded boxes at scale 1
    rounded = np.concatenate([boxes[:, :1], np.vectorize(_round_half_away)(boxes[:, 1:] * scale)], 1)
    ref = tv.ops.roi_align(torch.tensor(bad), torch.tensor(rounded.astype(x.dtype)), out, 1.0, sr, False)
    got = roi_warp(bad, boxes, out, scale, sr)
    # (a RoI thinner than 1 pixel after rounding is widened to 1 by both)
    assert_same(got, ref.numpy(), x.dtype)


# ------------------------------------------------------------------ RoIPool
@st.composite
def pool_problem(draw):
    x, boxes, out, scale, _, _, rng = draw(problem())
    if draw(st.booleans()):
        x = np.round(x)                      # ties
    return x, boxes, out, scale, rng


@given(pool_problem(), st.sampled_from([0.05, 0.3, 0.8, 1.0]),
       st.sampled_from([SPECIAL, (np.nan,), (-np.inf,), (np.nan, -np.inf), (np.inf,)]))
def test_roi_pool_matches_torchvision(prob, density, kinds):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    x, boxes, out, scale, rng = prob
    bad, _ = plant(x, rng, density, kinds)
    o, cache = roi_pool_forward(bad, boxes, out, scale)
    d = rng.standard_normal(o.shape).astype(x.dtype)
    xt = torch.tensor(bad, requires_grad=True)
    ref = tv.ops.roi_pool(xt, torch.tensor(boxes), out, scale)
    ref.backward(torch.tensor(d))
    np.testing.assert_array_equal(o, ref.detach().numpy())          # NaN is never selected
    tol = 0 if x.dtype == np.float64 else 1e-6      # float32 sums of several gradients: order
    np.testing.assert_allclose(roi_pool_backward(d, cache), xt.grad.numpy(), rtol=tol, atol=tol)
    assert not np.isnan(o).any()
    np.testing.assert_array_equal(backend.asnumpy(roi_pool(backend.to_device(bad, "emulated"),
                                                           backend.to_device(boxes, "emulated"),
                                                           out, scale)), o)


@given(pool_problem(), st.sampled_from([0.05, 0.3, 1.0]))
def test_roi_pool_unread_values_have_no_effect(prob, density):
    x, boxes, out, scale, rng = prob
    bad, mask = plant(x, rng, density, avoid=pool_pixels(boxes, x.shape, out, scale))
    zeroed = np.where(mask, 0, bad).astype(x.dtype)
    o, cache = roi_pool_forward(bad, boxes, out, scale)
    o0, cache0 = roi_pool_forward(zeroed, boxes, out, scale)
    np.testing.assert_array_equal(o, o0)
    d = rng.standard_normal(o.shape).astype(x.dtype)
    np.testing.assert_array_equal(roi_pool_backward(d, cache), roi_pool_backward(d, cache0))
    for dev in (bad, zeroed):
        got = roi_pool(backend.to_device(dev, "emulated"), backend.to_device(boxes, "emulated"), out, scale)
        np.testing.assert_array_equal(backend.asnumpy(got), o0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_roi_pool_hand_values(dtype):
    # one 3x3 bin at the top left: NaN and -inf are never selected, +inf is; a bin with no
    # selectable pixel gives -FLT_MAX (-inf in float16) and no gradient
    box = np.array([[0, 0, 0, 2, 2.0]], dtype=dtype)
    lowest = np.float32(np.finfo(np.float32).min).astype(dtype) if dtype != np.float16 else -np.inf
    cases = [([np.nan], -10.0, (0, 0)), ([np.inf], np.inf, (1, 1)), ([-np.inf], -10.0, (0, 0)),
             ([np.nan, np.inf], np.inf, (1, 2)), ([np.nan, -np.inf], -10.0, (0, 0)),
             ([np.inf, np.inf], np.inf, (1, 1))]
    for vals, expect, arg in cases:
        x = np.full((1, 1, 4, 4), -20.0, dtype=dtype)
        x[0, 0, 0, 0] = -10.0
        x[0, 0, 3, 3] = np.nan                                 # outside the bin
        for i, v in enumerate(vals):
            x[0, 0, 1, 1 + i] = v
        out, cache = roi_pool_forward(x, box, 1)
        assert out[0, 0, 0, 0] == expect, (vals, out)
        g = roi_pool_backward(np.ones_like(out), cache)
        assert g[0, 0][arg] == 1 and g.sum() == 1
    for fill in (np.nan, -np.inf):
        x = np.full((1, 1, 4, 4), fill, dtype=dtype)
        out, cache = roi_pool_forward(x, box, 1)
        assert out[0, 0, 0, 0] == lowest and out.dtype == dtype
        assert roi_pool_backward(np.ones_like(out), cache).sum() == 0


# ------------------------------------------------------------------ finite inputs and the device
def test_finite_inputs_skip_the_correction(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the non-finite correction ran on finite features")
    monkeypatch.setattr(ra, "_nonfinite_fixup", fail)
    monkeypatch.setattr(rp, "_unselected_bins", fail)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 9))
    boxes = np.array([[0, -2, 1, 6, 5.5], [1, 2, 2, 9, 9.0]])
    for path in ra.PATHS:
        roi_align(x, boxes, 2, 1.0, 2, path=path)
        roi_align_max(x, boxes, 2, 1.0, -1, path=path)
    roi_warp(x, boxes, 2)
    roi_pool(x, boxes, 2)
    roi_pool(x.astype(np.float32), boxes.astype(np.float32), 2)


def test_device_reads_nothing_back_for_the_check():
    # without device value checks, RoIAlign does no check on a device (a NaN then spreads over
    # its RoI's window, as the plain products give), and RoIPool handles NaN without a read
    x = np.zeros((1, 2, 12, 12))
    x[0, 0, 10, 10] = np.nan
    boxes = np.array([[0, 1, 1, 11, 11.0], [0, 1, 1, 5, 5.0]])
    xd, bd = backend.to_device(x, "emulated"), backend.to_device(boxes, "emulated")
    fin = backend.to_device(np.zeros_like(x), "emulated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checks, "CHECK_DEVICE_VALUES", False)
        for fn in (roi_align, roi_pool):
            with count_syncs() as finite:
                fn(fin, bd, 2, 1.0)
            with count_syncs() as nonfinite:
                out = fn(xd, bd, 2, 1.0)
            assert nonfinite.total == finite.total, nonfinite.report()
        np.testing.assert_array_equal(backend.asnumpy(out), roi_pool(x, boxes, 2, 1.0))


@pytest.mark.parametrize("path", ra.PATHS)
@pytest.mark.parametrize("fn", [roi_align, roi_align_max])
def test_forced_paths_on_a_device(fn, path):
    # adaptive grids pad the samples of small RoIs and outside samples weigh 0: on a device these
    # zero weights are added too, at an index inside the window (the window path used to index
    # past its matrix: here the second RoI lies below the map, its window is empty)
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 8))
    boxes = np.array([[0, 10.0, 9.0, 17.0, 16.0], [0, -1.0, 10.0, 3.0, 12.0], [0, 1.0, 0.5, 6.0, 2.0]])
    for aligned in (False, True):
        got = backend.asnumpy(fn(backend.to_device(x, "emulated"), backend.to_device(boxes, "emulated"),
                                 (2, 2), 1.0, -1, aligned, path=path))
        np.testing.assert_allclose(got, fn(x, boxes, (2, 2), 1.0, -1, aligned, path=path), rtol=0, atol=1e-12)
