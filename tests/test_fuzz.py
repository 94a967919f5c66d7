"""Fuzzing the public API with hypothesis: every input gives the reference's result or a clear error.

One property for every target: an input either gives a result equal to an independent reference
(torchvision for box_iou / nms / batched_nms / roi_align / roi_pool, a slow pure-Python loop for
encode_boxes / decode_boxes, pycocotools and the unmutated file for the loaders) or raises
``ValueError`` / ``TypeError`` -- never another exception, never a hang, never a silently wrong
result (e.g. NaN from finite inputs, a loaded file whose content differs from what it says).

Inputs stay small (a few boxes, maps of a few pixels, files of a few hundred bytes), so the file
runs in well under a minute; ``max_examples`` is set per test. How many cases each target got is
counted as the tests run and reported at the end of the module: a line
``fuzz cases per target (accepted / all): box_iou 180/240, ...`` in pytest's output (no ``-s``
needed; "accepted" cases returned a result, the others raised a clear error) and the file
``fuzz_counts.json`` in pytest's temporary base folder (its path is on the same line).
``HYPOTHESIS_PROFILE=dev`` (random, not derandomised) explores new inputs on each run, and
``MRCNN_REF_FUZZ_SCALE=10`` runs ten times as many cases per target.
"""
from __future__ import annotations

import contextlib
import copy
import io as _io
import json
import math
import os
import signal
import warnings
import zipfile
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mrcnn_ref.boxes import box_iou, decode_boxes, encode_boxes
from mrcnn_ref.nms import batched_nms, nms

# --------------------------------------------------------------------------------------------
# bookkeeping: cases per target, a time limit per case, "ok or a clear error"
# --------------------------------------------------------------------------------------------
COUNTS: Counter = Counter()          # calls per target
ACCEPTED: Counter = Counter()        # ... of which returned a result (the rest: a clear error)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")     # pycocotools vs NumPy 2


SCALE = max(1, int(os.environ.get("MRCNN_REF_FUZZ_SCALE", "1")))      # e.g. 10 for a long hunt


def fuzz(max_examples):
    """Settings of one fuzz target: its number of cases (times ``MRCNN_REF_FUZZ_SCALE``)."""
    return settings(max_examples=max_examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


CLEAR_ERRORS = (ValueError, TypeError)
CASE_SECONDS = 20           # one case (a few boxes, a tiny file) takes milliseconds: more is a hang


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request, tmp_path_factory):
    yield
    if not COUNTS:
        return
    path = tmp_path_factory.getbasetemp() / "fuzz_counts.json"
    table = {k: {"cases": COUNTS[k], "accepted": ACCEPTED[k]} for k in sorted(COUNTS)}
    path.write_text(json.dumps(table, indent=1))
    line = ("fuzz cases per target (accepted / all): "
            + ", ".join(f"{k} {v['accepted']}/{v['cases']}" for k, v in table.items()) + f" ({path})")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with (capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()):
        print(f"\n{line}")


class _Hang(BaseException):      # not an Exception: no `except Exception` in a library hides it
    pass


@contextlib.contextmanager
def _time_limit(seconds=CASE_SECONDS):
    """Fail (not hang) when one case runs longer than ``seconds`` (main thread, POSIX)."""
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover
        yield
        return

    def handler(signum, frame):
        raise _Hang(f"one fuzz case ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def outcome(target, fn, *args, **kwargs):
    """Run ``fn``; return ``(True, result)`` or ``(False, error)`` for a ValueError/TypeError with a
    one-line message. Any other exception (or a hang) fails the test."""
    COUNTS[target] += 1
    with _time_limit():
        try:
            result = fn(*args, **kwargs)
            ACCEPTED[target] += 1
            return True, result
        except CLEAR_ERRORS as e:
            msg = str(e)
            assert msg.strip() and "\n" not in msg, f"{target}: unclear error message {msg!r}"
            return False, e


# --------------------------------------------------------------------------------------------
# strategies shared by the array targets
# --------------------------------------------------------------------------------------------
# coordinates on a coarse grid (many ties, duplicates and overlaps) plus arbitrary floats
coord = st.one_of(st.integers(-4, 12).map(float), st.floats(-4, 12, allow_nan=False, width=32))


@st.composite
def box_arrays(draw, max_n=8, dtype=None, proper=False, n=None):
    """(N, 4) boxes (``n`` of them, or 0..max_n); ``proper``: x2 >= x1 and y2 >= y1 (zero-size
    boxes allowed)."""
    n = draw(st.integers(0, max_n)) if n is None else n
    dt = dtype or draw(st.sampled_from([np.float32, np.float64]))
    rows = []
    for _ in range(n):
        x1, y1, x2, y2 = (draw(coord) for _ in range(4))
        if proper:
            x1, x2 = min(x1, x2), max(x1, x2)
            y1, y2 = min(y1, y2), max(y1, y2)
        rows.append([x1, y1, x2, y2])
    return np.asarray(rows, dtype=dt).reshape(n, 4)


def junk():
    """Values that are not what an array argument should be."""
    return st.one_of(
        st.none(), st.integers(-3, 3), st.floats(), st.text(max_size=3), st.booleans(),
        st.lists(st.floats(-5, 5), max_size=5),
        hnp.arrays(st.sampled_from([np.int64, np.int32, np.bool_, np.float16, np.complex64]),
                   hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)),
        hnp.arrays(np.float64, hnp.array_shapes(min_dims=0, max_dims=3, max_side=5),
                   elements=st.floats(allow_nan=True, allow_infinity=True)),
    )


def or_junk(valid):
    """Half the time a valid value, half the time junk."""
    return st.booleans().flatmap(lambda ok: valid if ok else junk())


def torch_modules():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    return torch, tv_ops


# --------------------------------------------------------------------------------------------
# box_iou
# --------------------------------------------------------------------------------------------
@fuzz(200)
@given(st.data())
def test_box_iou_equals_torchvision(data):
    torch, tv = torch_modules()
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    fmt = data.draw(st.sampled_from(["xyxy", "xywh", "cxcywh"]))
    a, b = data.draw(box_arrays(dtype=dt)), data.draw(box_arrays(dtype=dt))
    ok, got = outcome("box_iou", box_iou, a, b, fmt=fmt)
    assert ok, got
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if fmt != "xyxy":
        ta, tb = tv.box_convert(ta, fmt, "xyxy"), tv.box_convert(tb, fmt, "xyxy")
    ref = tv.box_iou(ta, tb).numpy()
    assert got.shape == ref.shape and got.dtype == a.dtype
    tol = 1e-6 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol, equal_nan=True)
    if fmt == "xyxy" and len(a) and len(b):      # NaN only where torchvision gives NaN: 0/0
        assert np.array_equal(np.isnan(got), np.isnan(ref))


@fuzz(100)
@given(or_junk(box_arrays()), or_junk(box_arrays()),
       st.sampled_from(["xyxy", "xywh", "cxcywh", "xy", 3, None]))
def test_box_iou_refuses_bad_input(a, b, fmt):
    ok, got = outcome("box_iou", box_iou, a, b, fmt=fmt)
    if ok:      # accepted: then both were valid (N, 4) float boxes, and the result is (N, M)
        assert a.ndim == 2 and a.shape[1] == 4 and a.dtype.kind == "f" and np.isfinite(a).all()
        assert b.ndim == 2 and b.shape[1] == 4 and b.dtype.kind == "f" and np.isfinite(b).all()
        assert got.shape == (a.shape[0], b.shape[0])


# --------------------------------------------------------------------------------------------
# nms / batched_nms
# --------------------------------------------------------------------------------------------
thresholds = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]), st.floats(0, 1))
methods = st.sampled_from(["auto", "greedy", "sparse", "matrix"])
max_keeps = st.one_of(st.none(), st.integers(0, 6))


def _nms_inputs(data):
    dt = data.draw(st.sampled_from([np.float32, np.float64]))
    proper = data.draw(st.booleans())
    boxes = data.draw(box_arrays(max_n=12, dtype=dt, proper=proper))
    s = data.draw(st.lists(st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(-2, 2, width=32)),
                           min_size=len(boxes), max_size=len(boxes)))
    return boxes, np.asarray(s, dtype=dt)


@fuzz(300)
@given(st.data(), thresholds, methods, max_keeps)
def test_nms_equals_torchvision(data, t, method, max_keep):
    torch, tv = torch_modules()
    boxes, scores = _nms_inputs(data)
    ok, got = outcome("nms", nms, boxes, scores, t, method, max_keep=max_keep)
    assert ok, got
    ref = tv.nms(torch.from_numpy(boxes), torch.from_numpy(scores), t).numpy()[:max_keep]
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, ref)


def _reference_batched(torch, tv, boxes, scores, idxs, t):
    """Exact per-class torchvision NMS, merged by decreasing score (ties: lower index first).
    (torchvision.ops.batched_nms offsets the boxes per class, which is not exact for boxes with
    negative coordinates or in float32; the property is NMS within each class.)"""
    keep = []
    for c in np.unique(idxs):
        sel = np.flatnonzero(idxs == c)
        k = tv.nms(torch.from_numpy(boxes[sel]), torch.from_numpy(scores[sel]), t).numpy()
        keep.extend(sel[k].tolist())
    keep = np.asarray(keep, dtype=np.int64)
    order = np.lexsort((keep, -scores[keep].astype(np.float64)))
    return keep[order]


@fuzz(300)
@given(st.data(), thresholds, methods, max_keeps, st.sampled_from([np.int64, np.int32]))
def test_batched_nms_equals_torchvision_per_class(data, t, method, max_keep, idx_dtype):
    torch, tv = torch_modules()
    boxes, scores = _nms_inputs(data)
    idxs = np.asarray(data.draw(st.lists(st.integers(-1, 3), min_size=len(boxes), max_size=len(boxes))),
                      dtype=idx_dtype)
    ok, got = outcome("batched_nms", batched_nms, boxes, scores, idxs, t, method, max_keep=max_keep)
    assert ok, got
    ref = _reference_batched(torch, tv, boxes, scores, idxs, t)[:max_keep]
    np.testing.assert_array_equal(got, ref)


@fuzz(120)
@given(or_junk(box_arrays(n=4)), or_junk(hnp.arrays(np.float64, st.sampled_from([4, 4, 0, 3]))),
       or_junk(hnp.arrays(np.int64, st.sampled_from([4, 4, 3]), elements=st.integers(0, 3))),
       st.one_of(st.floats(), st.integers(-1, 2), st.none(), st.text(max_size=2), st.booleans()),
       st.one_of(methods, st.text(max_size=3), st.none()),
       st.one_of(max_keeps, st.integers(-3, -1), st.floats(0, 3), st.booleans()))
def test_nms_refuses_bad_input(boxes, scores, idxs, t, method, max_keep):
    for target, fn, args in (("nms", nms, (boxes, scores, t, method)),
                             ("batched_nms", batched_nms, (boxes, scores, idxs, t, method))):
        ok, got = outcome(target, fn, *args, max_keep=max_keep)
        if ok:      # accepted: then everything was valid and the result is a valid index list
            assert boxes.ndim == 2 and boxes.shape[1] == 4 and np.isfinite(boxes).all()
            assert scores.shape == (len(boxes),) and not np.isnan(scores).any()
            assert 0 <= float(t) <= 1
            assert got.dtype == np.int64 and got.ndim == 1 and len(set(got.tolist())) == len(got)
            assert ((got >= 0) & (got < len(boxes))).all()


# --------------------------------------------------------------------------------------------
# roi_align / roi_pool (called, never changed here)
# --------------------------------------------------------------------------------------------
@st.composite
def roi_problems(draw):
    n = draw(st.integers(1, 2))
    c = draw(st.integers(1, 2))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dt = draw(st.sampled_from([np.float32, np.float64]))
    feats = draw(hnp.arrays(dt, (n, c, h, w), elements=st.floats(-4, 4, width=32)))
    scale = draw(st.sampled_from([0.25, 0.5, 1.0, 2.0]))
    k = draw(st.integers(0, 4))
    rois = []
    for _ in range(k):
        b = draw(st.integers(0, n - 1))
        xs = [draw(st.floats(-3, (w + 3) / scale, width=32)) for _ in range(2)]
        ys = [draw(st.floats(-3, (h + 3) / scale, width=32)) for _ in range(2)]
        if draw(st.booleans()):
            xs, ys = sorted(xs), sorted(ys)
        rois.append([b, xs[0], ys[0], xs[1], ys[1]])
    rois = np.asarray(rois, dtype=dt).reshape(k, 5)
    out = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    return feats, rois, out, scale


@fuzz(200)
@given(roi_problems(), st.integers(-1, 3), st.booleans(), st.sampled_from(["auto", "dense", "window"]),
       st.booleans())
def test_roi_align_equals_torchvision(problem, sampling_ratio, aligned, path, as_list):
    torch, tv = torch_modules()
    from mrcnn_ref import roi_align

    feats, rois, out, scale = problem
    boxes = rois
    if as_list:     # the per-image list form: [(K_0, 4), (K_1, 4), ...]
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(feats.shape[0])]
        rois = np.concatenate([np.concatenate([np.full((len(b), 1), i, rois.dtype), b], 1)
                               for i, b in enumerate(boxes)]).reshape(-1, 5)
    ok, got = outcome("roi_align", roi_align, feats, boxes, out, scale, sampling_ratio, aligned, path=path)
    assert ok, got
    assert np.isfinite(got).all()
    try:
        ref = tv.roi_align(torch.from_numpy(feats), torch.from_numpy(rois), out, scale, sampling_ratio,
                           aligned).numpy()
    except (RuntimeError, ValueError):
        # torchvision fails on an inverted RoI with aligned=True and adaptive sampling (a negative
        # sample count: "cannot create std::vector larger than max_size()"); ours reads no
        # sample there and gives 0, as for an empty RoI
        assert aligned and sampling_ratio <= 0
        inverted = (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])
        assert inverted.any()
        return
    assert got.shape == ref.shape and got.dtype == feats.dtype
    tol = 1e-5 if feats.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@fuzz(150)
@given(roi_problems())
def test_roi_pool_equals_torchvision(problem):
    torch, tv = torch_modules()
    from mrcnn_ref import roi_pool

    feats, rois, out, scale = problem
    ok, got = outcome("roi_pool", roi_pool, feats, rois, out, scale)
    assert ok, got
    ref = tv.roi_pool(torch.from_numpy(feats), torch.from_numpy(rois), out, scale).numpy()
    assert got.shape == ref.shape and got.dtype == feats.dtype
    np.testing.assert_array_equal(got, ref)


@fuzz(120)
@given(or_junk(hnp.arrays(np.float64, (1, 1, 3, 3))),
       or_junk(hnp.arrays(np.float64, (2, 5), elements=st.floats(-2, 4))),
       st.one_of(st.integers(-1, 3), st.tuples(st.integers(0, 2), st.integers(0, 2)), st.none(),
                 st.floats(0, 3), st.text(max_size=2), st.lists(st.integers(1, 2), max_size=3)),
       st.one_of(st.floats(), st.sampled_from([0.5, 1.0]), st.integers(-1, 1), st.none()),
       st.one_of(st.integers(-2, 3), st.floats(0, 2), st.none()),
       st.one_of(st.booleans(), st.integers(0, 1), st.none()))
def test_roi_ops_refuse_bad_input(feats, boxes, out, scale, sampling_ratio, aligned):
    from mrcnn_ref import roi_align, roi_pool

    for target, fn, args in (("roi_align", roi_align, (feats, boxes, out, scale, sampling_ratio, aligned)),
                             ("roi_pool", roi_pool, (feats, boxes, out, scale))):
        ok, got = outcome(target, fn, *args)
        if ok:
            assert feats.ndim == 4 and feats.dtype.kind == "f"
            assert np.isfinite(boxes).all() and math.isfinite(scale) and scale > 0
            if np.isfinite(feats).all():
                assert np.isfinite(got).all(), f"{target}: NaN/inf from finite inputs"


# --------------------------------------------------------------------------------------------
# encode_boxes / decode_boxes against a pure-Python loop
# --------------------------------------------------------------------------------------------
def _ref_encode(g, p, w):
    out = []
    for (g1, g2, g3, g4), (p1, p2, p3, p4) in zip(g.tolist(), p.tolist()):
        pw, ph, gw, gh = p3 - p1, p4 - p2, g3 - g1, g4 - g2
        px, py, gx, gy = p1 + 0.5 * pw, p2 + 0.5 * ph, g1 + 0.5 * gw, g2 + 0.5 * gh
        out.append([w[0] * (gx - px) / pw, w[1] * (gy - py) / ph,
                    w[2] * math.log(gw / pw), w[3] * math.log(gh / ph)])
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def _ref_decode(d, p, w, clamp):
    out = []
    for row, (p1, p2, p3, p4) in zip(d.tolist(), p.tolist()):
        pw, ph = p3 - p1, p4 - p2
        px, py = p1 + 0.5 * pw, p2 + 0.5 * ph
        r = []
        for k in range(0, len(row), 4):
            tx, ty, tw, th = row[k:k + 4]
            cx, cy = tx / w[0] * pw + px, ty / w[1] * ph + py
            bw = math.exp(min(tw / w[2], clamp)) * pw
            bh = math.exp(min(th / w[3], clamp)) * ph
            r += [cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh]
        out.append(r)
    return np.asarray(out, dtype=np.float64).reshape(d.shape)


@st.composite
def sized_boxes(draw, n):
    rows = []
    for _ in range(n):
        x, y = draw(st.floats(-1e3, 1e3)), draw(st.floats(-1e3, 1e3))
        bw, bh = draw(st.floats(1e-2, 1e3)), draw(st.floats(1e-2, 1e3))
        rows.append([x, y, x + bw, y + bh])
    return np.asarray(rows, dtype=np.float64).reshape(n, 4)


weights_st = st.one_of(st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]),
                       st.tuples(*[st.floats(0.1, 20)] * 4))


@fuzz(200)
@given(st.data(), weights_st)
def test_encode_decode_equal_python_loop_and_round_trip(data, weights):
    n = data.draw(st.integers(0, 6))
    g, p = data.draw(sized_boxes(n)), data.draw(sized_boxes(n))
    ok, d = outcome("encode_boxes", encode_boxes, g, p, weights)
    assert ok, d
    np.testing.assert_allclose(d, _ref_encode(g, p, weights), rtol=1e-9, atol=1e-9)
    assert np.isfinite(d).all()
    ok, back = outcome("decode_boxes", decode_boxes, d, p, weights, math.inf)
    assert ok, back
    np.testing.assert_allclose(back, g, rtol=1e-9, atol=1e-6 * (1 + np.abs(g).max(initial=0)))
    # decode of arbitrary deltas (K classes side by side), default clamp
    k = data.draw(st.integers(1, 3))
    deltas = data.draw(hnp.arrays(np.float64, (n, 4 * k), elements=st.floats(-8, 8)))
    clamp = data.draw(st.one_of(st.just(math.log(1000 / 16)), st.floats(-2, 5)))
    ok, boxes = outcome("decode_boxes", decode_boxes, deltas, p, weights, clamp)
    assert ok, boxes
    np.testing.assert_allclose(boxes, _ref_decode(deltas, p, weights, clamp), rtol=1e-9, atol=1e-7)
    assert np.isfinite(boxes).all()
    # float32 in, float32 out, finite
    ok, d32 = outcome("encode_boxes", encode_boxes, g.astype(np.float32), p.astype(np.float32), weights)
    assert ok and d32.dtype == np.float32 and np.isfinite(d32).all()


@fuzz(120)
@given(or_junk(box_arrays(n=3, dtype=np.float64)), or_junk(box_arrays(n=3, dtype=np.float64)),
       st.one_of(weights_st, st.tuples(st.floats(), st.floats(), st.floats(), st.floats()),
                 st.lists(st.integers(0, 2), max_size=5), st.none(), st.text(max_size=2)),
       st.one_of(st.floats(), st.none(), st.booleans()))
def test_encode_decode_refuse_bad_input(a, b, weights, clamp):
    """Degenerate boxes (zero or negative width/height) have no regression target: an error, not
    inf/NaN; any accepted input gives finite numbers."""
    ok, got = outcome("encode_boxes", encode_boxes, a, b, weights)
    if ok:
        assert np.isfinite(got).all(), "encode_boxes: NaN/inf from finite inputs"
    ok, got = outcome("decode_boxes", decode_boxes, a, b, weights, clamp)
    if ok:
        assert got.shape == a.shape and np.isfinite(a).all() and np.isfinite(b).all()


# --------------------------------------------------------------------------------------------
# the COCO loader on mutated files
# --------------------------------------------------------------------------------------------
def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    from skimage import io

    d = tmp_path_factory.mktemp("fuzz_coco")
    io.imsave(d / "a.png", _rgb(12, 16, 0), check_contrast=False)
    io.imsave(d / "b.png", np.full((10, 10), 90, np.uint8), check_contrast=False)
    io.imsave(d / "c.png", _rgb(10, 10, 1), check_contrast=False)    # same size as b.png
    return d


def _coco_dict():
    from mrcnn_ref.data.rle import rle_encode, rle_encode_uncompressed

    m1 = np.zeros((12, 16), bool)
    m1[2:6, 9:14] = True
    m2 = np.zeros((10, 10), bool)
    m2[1:4, 2:8] = True
    m2[6:9, 3:5] = True
    crowd = np.zeros((12, 16), bool)
    crowd[8:12, 0:6] = True
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 12, "width": 16},
                   {"id": 2, "file_name": "b.png", "height": 10, "width": 10}],
        "categories": [{"id": 3, "name": "ball"}, {"id": 1, "name": "box"}, {"id": 7, "name": "owl"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [1, 1, 6, 5], "iscrowd": 0, "area": 28.5,
             "segmentation": [[1, 1, 7, 1, 7, 6, 4, 6]]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [9, 2, 5, 4],
             "segmentation": rle_encode(m1)},                                    # no area: computed
            {"id": 12, "image_id": 1, "category_id": 7, "bbox": [0, 8, 6, 4], "iscrowd": 1, "area": 24,
             "segmentation": rle_encode_uncompressed(crowd)},
            {"id": 13, "image_id": 2, "category_id": 7, "bbox": [2, 1, 6, 8], "area": 24,
             "segmentation": rle_encode_uncompressed(m2)},
            {"id": 14, "image_id": 2, "category_id": 3, "bbox": [0.5, 0.5, 9, 9], "area": 40.0,
             "segmentation": [[0.5, 0.5, 9.5, 0.5, 5, 9.5], [1, 8, 3, 8, 2, 9.5]]},
        ],
    }


def _paths(node, prefix=()):
    """Every (path) into a JSON tree: keys of dicts and indices of lists, the root excluded."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out += _paths(v, prefix + (i,))
    return out


def _get(node, path):
    for p in path:
        node = node[p]
    return node


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 20), st.integers(-2 ** 70, 2 ** 70),
    st.sampled_from([0, -1, 2 ** 31, 2 ** 63, 10 ** 30]),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 20),
    st.text(max_size=4), st.sampled_from(["a.png", "b.png", "c.png", "instances.json", "", "0", "P0"]),
)
json_values = st.recursive(json_scalars, lambda ch: st.lists(ch, max_size=4)
                           | st.dictionaries(st.text(max_size=4), ch, max_size=3), max_leaves=6)
coco_keys = st.sampled_from(["id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd",
                             "size", "counts", "name", "file_name", "height", "width", "images",
                             "annotations", "categories", "extra"])


def _nearby(v, draw):
    """A value close to ``v``: the mutations a hand-edited or half-converted file holds."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        half = v // 2 if isinstance(v, int) else v / 2
        return draw(st.sampled_from([v, v + 1, v - 1, -v, v * 2, half, v * 1000, 0, v + 0.5, float(v),
                                     str(v), [v], None]))
    if isinstance(v, str):
        if not v:
            return "0"
        i = draw(st.integers(0, len(v) - 1))
        ch = draw(st.sampled_from(["0", "1", "?", "P", "o", "~", "é", " "]))
        return draw(st.sampled_from([v[:i], v[:i] + ch + v[i + 1:], v + ch, v.upper()]))
    if isinstance(v, list):
        if not v:
            return [0]
        return draw(st.sampled_from([v[:-1], v + v[-1:], v[::-1], [v]]))
    if isinstance(v, dict):
        return [v]
    return None


def _plausible_edit(data, draw):
    """An edit a real file could hold (most of them valid): another image file, no area, another
    crowd flag or box, renumbered categories, a dropped annotation or category, moved polygon
    points, a random mask as RLE encoded by pycocotools (compressed or not)."""
    from pycocotools import mask as mask_util

    anns, cats, ims = data["annotations"], data["categories"], data["images"]
    op = draw(st.sampled_from(["file", "area", "crowd", "bbox", "renumber", "drop_ann", "drop_cat",
                               "move", "rle", "rle"]))
    if op == "file" and ims:
        draw(st.sampled_from(ims))["file_name"] = draw(st.sampled_from(["a.png", "b.png", "c.png"]))
    elif op == "area" and anns:
        a = draw(st.sampled_from(anns))
        if draw(st.booleans()):
            a.pop("area", None)
        else:
            a["area"] = draw(st.one_of(st.integers(0, 200), st.floats(0, 200), st.floats()))
    elif op == "crowd" and anns:
        draw(st.sampled_from(anns))["iscrowd"] = draw(st.sampled_from([0, 1, True, False, 2, "1"]))
    elif op == "bbox" and anns:
        draw(st.sampled_from(anns))["bbox"] = [draw(st.floats(-1, 10)), draw(st.floats(-1, 10)),
                                              draw(st.floats(0, 12)), draw(st.floats(0, 12))]
    elif op == "renumber" and cats:
        c = draw(st.sampled_from(cats))
        new = draw(st.integers(0, 9))
        for a in anns:
            if a.get("category_id") == c.get("id"):
                a["category_id"] = new
        c["id"] = new
    elif op == "drop_ann" and anns:
        anns.remove(draw(st.sampled_from(anns)))
    elif op == "drop_cat" and cats:
        c = draw(st.sampled_from(cats))
        cats.remove(c)
        data["annotations"] = [a for a in anns if a.get("category_id") != c.get("id")]
    elif op == "move" and anns:
        a = draw(st.sampled_from(anns))
        if isinstance(a.get("segmentation"), list) and a["segmentation"]:
            poly = draw(st.sampled_from(a["segmentation"]))
            if poly:
                j = draw(st.integers(0, len(poly) - 1))
                poly[j] = draw(st.floats(-2, 18))
    elif op == "rle" and anns:
        a = draw(st.sampled_from(anns))
        im = next((im for im in ims if im.get("id") == a.get("image_id")), None)
        if im is not None:
            h, w = im["height"], im["width"]
            m = draw(hnp.arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
            rle = mask_util.encode(np.asfortranarray(m))
            if draw(st.booleans()):
                a["segmentation"] = {"size": [h, w], "counts": rle["counts"].decode()}
            else:
                flat = m.ravel(order="F")
                runs, cur, n = [], 0, 0
                for v in flat.tolist():          # uncompressed counts by a plain loop
                    if v != cur:
                        runs.append(n)
                        cur, n = v, 0
                    n += 1
                runs.append(n)
                a["segmentation"] = {"size": [h, w], "counts": runs}


@st.composite
def mutated_coco(draw):
    data = _coco_dict()
    n_plausible = draw(st.integers(0, 2))
    for _ in range(n_plausible):          # first, while the structure is intact
        _plausible_edit(data, draw)
    for _ in range(draw(st.integers(0 if n_plausible else 1, 2))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        parent, key = _get(data, path[:-1]), path[-1]
        op = draw(st.sampled_from(["delete", "replace", "nearby", "nearby", "add_key"]))
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = draw(json_values)
        elif op == "nearby":
            parent[key] = _nearby(parent[key], draw)
        else:
            target = parent[key] if isinstance(parent[key], dict) else parent
            if isinstance(target, dict):
                target[draw(coco_keys)] = draw(json_values)
            else:
                target.append(draw(json_values))
    return data


def _expected_samples(data, folder):
    """What a loader that accepted ``data`` must return, computed independently: pycocotools
    decodes the RLEs, skimage reads the images, polygons use the documented rasteriser."""
    from pycocotools import mask as mask_util
    from skimage import io

    from mrcnn_ref.data.rle import polygons_to_mask

    cat_ids = sorted(c["id"] for c in data["categories"])
    out = {}
    for im in data["images"]:
        h, w = im["height"], im["width"]
        img = io.imread(os.path.join(folder, im["file_name"]))
        img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
        masks, labels, crowd = [], [], []
        for a in data["annotations"]:
            if a["image_id"] != im["id"]:
                continue
            if a.get("iscrowd", 0):
                x, y, bw, bh = a["bbox"]
                crowd.append([x, y, x + bw, y + bh])
                continue
            seg = a["segmentation"]
            if isinstance(seg, dict):
                rle = (mask_util.frPyObjects(seg, h, w) if isinstance(seg["counts"], list)
                       else {"size": seg["size"], "counts": seg["counts"].encode()})
                m = mask_util.decode(rle).astype(bool)
            else:
                m = polygons_to_mask(seg, h, w)
            if m.any():
                masks.append(m)
                labels.append(cat_ids.index(a["category_id"]) + 1)
        out[im["id"]] = (img, masks, labels, crowd)
    return out


def _shoelace(seg):
    total = 0.0
    for poly in seg:
        xs, ys = poly[0::2], poly[1::2]
        s = sum(xs[i] * ys[(i + 1) % len(xs)] - xs[(i + 1) % len(xs)] * ys[i] for i in range(len(xs)))
        total += abs(s) / 2
    return total


def _check_loaded(ds, data, folder):
    from pycocotools import mask as mask_util

    from mrcnn_ref.evaluate import coco_evaluate

    expected = _expected_samples(data, folder)
    assert sorted(ds.image_ids) == sorted(expected)
    for i, iid in enumerate(ds.image_ids):
        ok, s = outcome("coco_sample", ds.__getitem__, i)
        if not ok:              # a pixel-level problem (e.g. the JSON size is not the file's)
            continue
        img, masks, labels, crowd = expected[iid]
        np.testing.assert_array_equal(s["image"], img)
        assert s["masks"].shape == (len(masks),) + img.shape[:2] and s["masks"].dtype == bool
        for got, want in zip(s["masks"], masks):
            np.testing.assert_array_equal(got, want)
        assert s["labels"].tolist() == labels
        np.testing.assert_allclose(s["crowd_boxes"], np.asarray(crowd, np.float32).reshape(-1, 4))
        assert np.isfinite(s["boxes"]).all()
    gt = ds.to_coco()
    by_id = {a["id"]: a for a in data["annotations"]}
    for a in gt["annotations"]:       # every annotation has an area, COCO's definition if computed
        area = a["area"]
        assert isinstance(area, (int, float)) and math.isfinite(area) and area >= 0
        if "area" in by_id[a["id"]]:
            assert area == by_id[a["id"]]["area"]
        elif isinstance(a["segmentation"], dict):
            seg = a["segmentation"]
            im = next(im for im in data["images"] if im["id"] == a["image_id"])
            rle = (mask_util.frPyObjects(seg, im["height"], im["width"]) if isinstance(seg["counts"], list)
                   else {"size": seg["size"], "counts": seg["counts"].encode()})
            assert area == int(mask_util.area(rle))
        else:
            assert area == pytest.approx(_shoelace(a["segmentation"]))
    for kind in ("bbox", "segm"):     # whatever the loader accepts, the evaluation accepts
        coco_evaluate(gt, [], kind)


def test_coco_unmutated_file_loads_to_its_content(coco_folder):
    from mrcnn_ref.data.coco import CocoDataset

    data = _coco_dict()
    path = coco_folder / "instances.json"
    path.write_text(json.dumps(data))
    ok, ds = outcome("coco_loader", CocoDataset, path, coco_folder)
    assert ok, ds
    assert ds.image_ids == [1, 2] and ds.label_to_cat_id == {1: 1, 2: 3, 3: 7}
    _check_loaded(ds, data, coco_folder)
    assert [len(ds[i]["masks"]) for i in range(2)] == [2, 2]
    assert next(a for a in ds.to_coco()["annotations"] if a["id"] == 11)["area"] == 20


@fuzz(600)
@given(mutated_coco())
def test_coco_loader_on_mutated_files(coco_folder, data):
    from mrcnn_ref.data.coco import CocoDataset

    path = coco_folder / "instances.json"
    text = json.dumps(data)          # NaN/Infinity are written as JSON's extensions
    path.write_text(text)
    ok, ds = outcome("coco_loader", CocoDataset, path, coco_folder)
    if not ok:
        assert "instances.json" in str(ds)          # the file is named
        return
    _check_loaded(ds, json.loads(text), coco_folder)


# --------------------------------------------------------------------------------------------
# run configs
# --------------------------------------------------------------------------------------------
def _field_names():
    from dataclasses import fields

    from mrcnn_ref.model.config import MaskRCNNConfig
    from mrcnn_ref.run_config import TrainConfig

    return [f.name for f in fields(MaskRCNNConfig)], [f.name for f in fields(TrainConfig)]


MODEL_KEYS, TRAIN_KEYS = _field_names()
config_values = st.one_of(
    json_values, st.integers(-2, 4), st.floats(-1, 2), st.sampled_from(["shapes", "tiny", "coco", "sgd"]),
    st.lists(st.one_of(st.integers(-1, 300), st.floats(-1, 300), st.just(10 ** 400)), max_size=6),
    st.just(10 ** 400), st.just(-10 ** 400),
)


def _defaults():
    from mrcnn_ref.model.config import MaskRCNNConfig
    from mrcnn_ref.run_config import TrainConfig

    return (json.loads(json.dumps(MaskRCNNConfig().to_dict())),
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(TrainConfig()).items()})


MODEL_DEFAULTS, TRAIN_DEFAULTS = _defaults()


@st.composite
def setting(draw, keys, defaults, values):
    """(key, value): mostly a real key with a value near its default, sometimes anything."""
    key = draw(st.one_of(st.sampled_from(keys), st.sampled_from(keys), st.sampled_from(keys),
                         st.sampled_from(["preset"]), st.text(max_size=4)))
    if key in defaults and draw(st.integers(0, 2)):
        v = defaults[key]
        if isinstance(v, list) and v and draw(st.booleans()):
            v = list(v)
            j = draw(st.integers(0, len(v) - 1))
            v[j] = _nearby(v[j], draw)
            return key, v
        return key, _nearby(v, draw)
    return key, draw(values)


@st.composite
def run_config_dicts(draw):
    d = draw(st.sampled_from([{"preset": "tiny"}, {"preset": "shapes"}, {"model": {"preset": "tiny"}},
                              {"model": {"preset": "tiny", "num_classes": 3}, "train": {"iterations": 5}},
                              {}]))
    d = copy.deepcopy(d)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "model", "train"]))
        if where == "top":
            key = draw(st.one_of(st.sampled_from(["preset", "model", "train", "name", "seed"]),
                                 st.text(max_size=4)))
            d[key] = draw(config_values)
        else:
            keys = MODEL_KEYS if where == "model" else TRAIN_KEYS
            sec = d.get(where)
            if not isinstance(sec, dict):
                sec = d[where] = {}
            key, value = draw(setting(keys, MODEL_DEFAULTS if where == "model" else TRAIN_DEFAULTS,
                                      config_values))
            sec[key] = value
    return d


def _finite_tree(v):
    if isinstance(v, dict):
        return all(_finite_tree(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return all(_finite_tree(x) for x in v)
    if isinstance(v, float):
        return math.isfinite(v)
    return True


@pytest.fixture(scope="module")
def config_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz_config")


def test_run_config_presets_load_to_their_content():
    from mrcnn_ref.model.config import PRESETS
    from mrcnn_ref.run_config import RUN_PRESETS, load_run_config

    for name, preset in RUN_PRESETS.items():
        ok, cfg = outcome("run_config", load_run_config, name)
        assert ok, cfg
        model = {**PRESETS[preset["model"]["preset"]], **preset["model"]}
        for k, v in model.items():
            if k != "preset":
                assert getattr(cfg.model, k) == v, k
        for k, v in preset["train"].items():
            assert getattr(cfg.train, k) == v, k


@fuzz(400)
@given(run_config_dicts())
def test_run_config_loader(config_folder, d):
    from mrcnn_ref.run_config import RunConfig, load_run_config

    ok, cfg = outcome("run_config", load_run_config, copy.deepcopy(d))
    path = config_folder / "run.json"
    path.write_text(json.dumps(d))
    ok_file, cfg_file = outcome("run_config", load_run_config, path)
    assert ok_file == ok, (cfg, cfg_file)
    if not ok:
        assert type(cfg_file) is type(cfg) and str(path) in str(cfg_file)
        return
    assert isinstance(cfg, RunConfig)
    as_dict = cfg.to_dict()
    assert _finite_tree(as_dict)
    norm = json.loads(json.dumps(as_dict))         # tuples and lists alike
    from_file = json.loads(json.dumps(cfg_file.to_dict()))
    assert from_file in (norm, {**norm, "name": "run"})
    again = load_run_config(norm)                  # the config.json a run writes, read back
    assert json.loads(json.dumps(again.to_dict())) == norm


@fuzz(60)
@given(st.binary(max_size=60), st.sampled_from([".json", ".toml"]))
def test_config_files_of_random_bytes(config_folder, raw, ext):
    from mrcnn_ref.model.config import load_config
    from mrcnn_ref.run_config import load_run_config

    path = config_folder / f"random{ext}"
    path.write_bytes(raw)
    outcome("run_config", load_run_config, path)
    outcome("model_config", load_config, path)


@fuzz(200)
@given(st.lists(setting(MODEL_KEYS, MODEL_DEFAULTS, config_values), max_size=3).map(dict))
def test_model_config_loader(d):
    from mrcnn_ref.model.config import MaskRCNNConfig, load_config

    ok, cfg = outcome("model_config", load_config, dict(d))
    if ok:
        assert isinstance(cfg, MaskRCNNConfig) and _finite_tree(cfg.to_dict())
        norm = json.loads(json.dumps(cfg.to_dict()))
        assert json.loads(json.dumps(load_config(norm).to_dict())) == norm


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def _base_checkpoint():
    rng = np.random.default_rng(0)
    params = {"stem.weight": rng.standard_normal((2, 3)).astype(np.float32),
              "head.bias": rng.standard_normal(3)}
    optim = {"momentum_buffer": {k: np.ones_like(v) for k, v in params.items()}, "lr": 0.1, "step": 4}
    return params, optim, {"name": "tiny", "num_classes": 3}, {"state": {"a": 1}}, \
        {"iteration": 4, "categories": [{"label": 1, "id": 5, "name": "x"}]}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    from mrcnn_ref.nn.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("fuzz_ckpt")
    params, optim, config, rng_state, extra = _base_checkpoint()
    path = save_checkpoint(d / "base.npz", params, optim, config, rng_state, extra)
    with open(path, "rb") as f:
        return _Saved(d, f.read())


class _Saved(tuple):
    """(folder, bytes of the saved checkpoint), with a short repr for hypothesis' reports."""

    def __new__(cls, folder, raw):
        return super().__new__(cls, (folder, raw))

    def __repr__(self):
        return f"<checkpoint of {len(self[1])} bytes in {self[0]}>"


def _same_as_base(out, params_only=False):
    params, optim, config, rng_state, extra = _base_checkpoint()
    assert sorted(out["params"]) == sorted(params)
    for k, v in params.items():
        assert out["params"][k].dtype == v.dtype
        np.testing.assert_array_equal(out["params"][k], v)
    if params_only:
        return
    assert out["config"] == config and out["rng_state"] == rng_state and out["extra"] == extra
    st_ = out["optimizer_state"]
    assert st_["lr"] == 0.1 and st_["step"] == 4
    assert sorted(st_["momentum_buffer"]) == sorted(params)


def _load(folder, raw, expected=None):
    from mrcnn_ref.nn.checkpoint import load_checkpoint

    path = folder / "mutated.npz"
    path.write_bytes(raw)
    return outcome("checkpoint", load_checkpoint, path, expected)


def _members(raw):
    with zipfile.ZipFile(_io.BytesIO(raw)) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def _zip(members):
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _npy(a, allow_pickle=False):
    buf = _io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_checkpoint_unmutated_file_loads_to_its_content(checkpoint_bytes):
    folder, raw = checkpoint_bytes
    for expected in (None, {k: v.shape for k, v in _base_checkpoint()[0].items()}):
        ok, out = _load(folder, raw, expected)
        assert ok, out
        _same_as_base(out)


@fuzz(300)
@given(st.data())
def test_checkpoint_flipped_and_truncated(checkpoint_bytes, data):
    folder, raw = checkpoint_bytes
    b = bytearray(raw)
    if data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= data.draw(st.integers(1, 255))
    else:
        b = b[:data.draw(st.integers(0, len(b) - 1))]
    expected = data.draw(st.sampled_from([None, {k: v.shape for k, v in _base_checkpoint()[0].items()}]))
    ok, out = _load(folder, bytes(b), expected)
    if ok:          # a flip that hit no data (a timestamp, a name's case, ...): the same content
        _same_as_base(out)


@fuzz(250)
@given(st.data())
def test_checkpoint_renamed_or_replaced_members(checkpoint_bytes, data):
    """Members renamed, dropped, added or replaced (int / object / NaN / complex / ... arrays),
    'meta' replaced by random JSON: an error, or a checkpoint whose every array and field has the
    documented type and whose untouched parameters are the saved ones."""
    folder, raw = checkpoint_bytes
    members = _members(raw)
    names = [n for n, _ in members]
    i = data.draw(st.integers(0, len(members) - 1))
    name, payload = members[i]
    op = data.draw(st.sampled_from(["rename", "replace", "meta", "drop", "add"]))
    touched = {name}
    if op == "rename":
        new = data.draw(st.one_of(
            st.sampled_from(["meta.npy", "param/stem.weight.npy", "param/x.npy", "optim/lr.npy",
                             "optim/momentum_buffer.npy", "optim/momentum_buffer/head.bias/x.npy",
                             "param/.npy", "other.npy", "param/stem.weight", "param/head.bias",
                             "PARAM/head.bias.npy", "meta"]),
            st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=12)))
        assume(new not in names)
        members[i] = (new, payload)
        touched.add(new)
    elif op in ("replace", "add"):
        shape = data.draw(st.sampled_from([(2, 3), (3,), (), (0,), (1, 2, 3)]))
        kind = data.draw(st.sampled_from(["int", "object", "nan", "inf", "complex", "bool", "str",
                                          "float", "float16"]))
        a = {"int": lambda: np.arange(int(np.prod(shape))).reshape(shape),
             "object": lambda: np.full(shape, None, dtype=object),
             "nan": lambda: np.full(shape, np.nan),
             "inf": lambda: np.full(shape, -np.inf, dtype=np.float32),
             "complex": lambda: np.ones(shape, np.complex64),
             "bool": lambda: np.ones(shape, bool),
             "str": lambda: np.full(shape, "1.0"),
             "float": lambda: np.ones(shape),
             "float16": lambda: np.ones(shape, np.float16)}[kind]()
        blob = _npy(a, allow_pickle=kind == "object")
        if op == "replace":
            members[i] = (name, blob)
        else:
            new = data.draw(st.sampled_from(["param/new.npy", "optim/new.npy", "optim/lr/x.npy",
                                             "optim/momentum_buffer/extra.npy", "optim/step.npy"]))
            members.append((new, blob))
            touched.add(new)
    elif op == "meta":
        meta = data.draw(st.one_of(
            json_values,
            st.fixed_dictionaries({"format": st.sampled_from([1, 1.0, 2, None, "1", True])},
                                  optional={"config": json_values, "extra": json_values,
                                            "rng_state": json_values, "has_optimizer": json_values,
                                            "optimizer_scalars": json_values})))
        members = [(n, _npy(np.array(json.dumps(meta)))) if n == "meta.npy" else (n, p) for n, p in members]
        touched = {"meta.npy"}
    else:
        del members[i]
    shapes = {k: v.shape for k, v in _base_checkpoint()[0].items()}
    expected = shapes if data.draw(st.booleans()) else None
    ok, out = _load(folder, _zip(members), expected)
    if not ok:
        return
    for key in ("config", "rng_state", "extra", "optimizer_state"):
        assert out[key] is None or isinstance(out[key], dict), (key, out[key])
    for group in ("params", "optimizer_state"):
        arrays = out[group] or {}
        stack = [arrays]
        while stack:
            node = stack.pop()
            for v in node.values():
                if isinstance(v, dict):
                    stack.append(v)
                elif isinstance(v, np.ndarray):
                    assert v.dtype.kind == "f" and np.isfinite(v).all(), (group, v)
    if expected is not None:
        assert {k: v.shape for k, v in out["params"].items()} == expected
    base = _base_checkpoint()[0]
    untouched = [k for k in base if not any(t.startswith(f"param/{k}") for t in touched)]
    for k in untouched:
        assert k in out["params"], f"parameter {k} was not touched but did not load"
        np.testing.assert_array_equal(out["params"][k], base[k])
        assert out["params"][k].dtype == base[k].dtype
    if not any(t.startswith("param/") for t in touched) and "meta.npy" not in touched:
        assert sorted(out["params"]) == sorted(base)
    if touched <= {n for n in names if n.startswith("param/")} and op != "drop":
        _same_as_base({**out, "params": base})        # everything else is unchanged


def test_counts_are_recorded():
    """The bookkeeping itself: cases were counted for the targets above."""
    assert COUNTS["box_iou"] > 0 and COUNTS["coco_loader"] > 0


# --------------------------------------------------------------------------------------------
# what the fuzzing found, pinned: fixed bugs stay fixed ...
# --------------------------------------------------------------------------------------------
def test_found_encode_boxes_of_zero_size_boxes_is_an_error():
    g = np.array([[0.0, 0.0, 4.0, 4.0]])
    for p, name in ((np.array([[1.0, 1.0, 1.0, 3.0]]), "proposals"),       # was NaN / inf
                    (np.array([[1.0, 1.0, 3.0, 0.5]]), "proposals")):
        with pytest.raises(ValueError, match=f"encode_boxes: {name} must have positive widths"):
            encode_boxes(g, p)
    with pytest.raises(ValueError, match="reference_boxes must have positive widths .* box 0"):
        encode_boxes(np.zeros((1, 4)), g)                                    # was -inf


def test_found_rpn_min_size_zero_is_refused():
    """Zero-size proposals would reach encode_boxes in the box-head targets."""
    from mrcnn_ref.model.config import load_config

    with pytest.raises(ValueError, match="rpn_min_size must be > 0"):
        load_config({"preset": "tiny", "rpn_min_size": 0})
    assert load_config({"preset": "tiny", "rpn_min_size": 0.5}).rpn_min_size == 0.5


@pytest.mark.parametrize("key,value", [("num_classes", 10 ** 400), ("rpn_fg_iou", 10 ** 400),
                                       ("anchor_sizes", [10 ** 400] * 5), ("matrix_nms_sigma", -10 ** 400),
                                       ("box_head_dim", 2 ** 60)])
def test_found_huge_ints_in_model_configs_are_a_value_error(key, value):
    """Were OverflowError (float(10**400), math.isfinite) or accepted (a 2**60-wide layer)."""
    from mrcnn_ref.model.config import load_config

    with pytest.raises(ValueError, match=f"{key} must be a (non-empty list of )?finite number"):
        load_config({"preset": "tiny", key: value})


def _rezip(raw, edit):
    """The checkpoint ``raw`` with its members ``[(name, bytes)]`` passed through ``edit``."""
    return _zip(edit(_members(raw)))


@pytest.mark.parametrize("case,match", [
    ("meta_list", "'meta' must be a JSON object"),                    # was AttributeError
    ("meta_int_array", "'meta' must be a JSON string"),                # was AttributeError
    ("scalars_not_dict", r"meta\['optimizer_scalars'\] must be an object"),     # was TypeError
    ("config_list", r"meta\['config'\] must be an object"),            # was returned as it was
    ("clash", "both an array and a value"),                            # was silently overwritten
    ("nested_clash", "inside another entry"),                          # was AttributeError
    ("twice", r"\['param/head.bias'\] appear twice"),                 # was another array's values
    ("encrypted_flag", "damaged or truncated"),                        # was RuntimeError
    ("compression", "damaged or truncated"),                           # was NotImplementedError
    ("header", "is damaged: array 'param/head.bias' cannot be read"),  # was called "pickle"
])
def test_found_damaged_checkpoints_are_one_checkpoint_error(checkpoint_bytes, case, match):
    from mrcnn_ref.nn.checkpoint import CheckpointError, load_checkpoint

    folder, raw = checkpoint_bytes
    meta = json.loads(str(np.load(_io.BytesIO(dict(_members(raw))["meta.npy"]))[()]))

    def with_meta(**changes):
        blob = _npy(np.array(json.dumps({**meta, **changes})))
        return lambda ms: [(n, blob if n == "meta.npy" else b) for n, b in ms]

    edits = {
        "meta_list": lambda ms: [(n, _npy(np.array("[1, 2]")) if n == "meta.npy" else b) for n, b in ms],
        "meta_int_array": lambda ms: [(n, _npy(np.arange(3)) if n == "meta.npy" else b) for n, b in ms],
        "scalars_not_dict": with_meta(optimizer_scalars=[1]),
        "config_list": with_meta(config=["tiny"]),
        "clash": with_meta(optimizer_scalars={"lr": 0.1, "momentum_buffer/head.bias": 1}),
        "nested_clash": with_meta(optimizer_scalars={"lr": 0.1, "momentum_buffer": 3}),
        "twice": lambda ms: ms + [("param/head.bias", dict(ms)["param/head.bias.npy"])],
        "header": lambda ms: [(n, b.replace(b"'descr'", b"'Xescr'") if n == "param/head.bias.npy" else b)
                              for n, b in ms],        # a broken .npy header, CRC intact
    }
    if case in edits:
        data = _rezip(raw, edits[case])
    else:
        b = bytearray(raw)
        start = raw.index(b"PK\x01\x02")                     # first central directory entry
        if case == "encrypted_flag":
            b[start + 8] |= 1                                 # general-purpose flag bit 0
        else:
            b[start + 10] = 99                                # compression method
        data = bytes(b)
    path = folder / "found.npz"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=match) as e:
        load_checkpoint(path)
    assert "found.npz" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------
# ... and in the run config and RoIAlign
# --------------------------------------------------------------------------------------------
def test_found_train_config_huge_int_is_a_value_error():
    from mrcnn_ref.run_config import load_run_config

    with pytest.raises(ValueError, match="base_lr"):
        load_run_config({"preset": "tiny", "train": {"base_lr": 10 ** 400}})


def test_found_run_config_sections_must_be_tables():
    from mrcnn_ref.run_config import load_run_config

    with pytest.raises((ValueError, TypeError), match="model"):
        load_run_config({"preset": "tiny", "model": [["num_classes", 3]]})


def test_found_roi_align_refuses_an_impossible_sample_grid():
    from mrcnn_ref import roi_align

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)          # "invalid value encountered in cast"
        with pytest.raises(ValueError):
            roi_align(np.ones((1, 1, 3, 3)), np.array([[0.0, 0.0, 0.0, 1.0, 1.0]]), 2, 1e30, -1, False)
