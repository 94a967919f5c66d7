"""Non-maximum suppression (NMS): keep the local maxima of the detection scores.

Greedy NMS, with the semantics of ``torchvision.ops.nms``:

1. sort the boxes by decreasing score (a *stable* sort: equal scores keep the lower index first);
2. take the best remaining box and keep it;
3. discard every remaining box whose IoU with it is **strictly greater** than ``iou_threshold``;
4. repeat from 2 until no box remains.

The IoU of two zero-area boxes is ``0/0 = nan``, and ``nan > t`` is false: such boxes never
suppress each other (as in torchvision).

Three implementations, chosen automatically, give the same result:

* ``"matrix"`` -- for a few hundred boxes per category (RPN proposals of one FPN level, the
  detections of one class): compute the whole ``k x k`` matrix "box i suppresses box j" (IoU > t,
  i before j in score order) at once, pack each row into one Python integer of k bits, and run the
  greedy loop over the boxes with one bitwise OR per kept box (``dead |= row[i]``). The IoUs are
  vectorised; the loop is over boxes, never over pairs. Used by ``"auto"`` when every category
  has at most ``_MATRIX_MAX`` boxes.

* ``"greedy"`` -- the textbook loop: its Python loop runs once per *kept* box; each step computes
  the IoU of the kept box with the remaining candidates only and then compresses the candidate
  list. Fast when boxes overlap a lot (few boxes survive, e.g. RPN proposals around objects).
* ``"sparse"`` -- first find, fully vectorised, every pair that *could* suppress (a sweep over boxes
  sorted by x1 with a bound on IoU: the 2-D IoU never exceeds the 1-D IoU of the x-intervals, so a
  partner's x1 must lie before ``x2 - t*w``), keep the pairs with IoU > t as a graph of edges
  "higher-scored box -> lower-scored box", and resolve the greedy order on that graph in rounds: a
  box is *kept* once none of its predecessors can still be kept, *suppressed* once one of them is
  kept. Fast when boxes are spread out (many survive).

**Only the best few kept boxes wanted** (``max_keep=K``). A box's fate depends only on the boxes
scored above it, so the first ``K`` boxes the greedy loop keeps -- in score order -- are final the
moment they are kept: ``nms(..., max_keep=K)`` is exactly ``nms(...)[:K]``, and the greedy loop
can stop there. The RPN needs this: it keeps the best 256 of ~1,700 candidates per image, and
stopping after 256 kept boxes reads a third of them. ``"auto"`` then uses the greedy loop.
"""
from __future__ import annotations

import numpy as np

from ._checks import check_array, reads_values
from .backend import asnumpy, get_array_module, is_host

__all__ = ["nms", "batched_nms"]


def _check_threshold(t, where):
    if isinstance(t, bool) or not isinstance(t, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where}: iou_threshold must be a number, got {type(t).__name__}")
    if not (0.0 <= float(t) <= 1.0):
        raise ValueError(f"{where}: iou_threshold must be in [0, 1], got {t}")
    return float(t)


def _check_boxes_scores(boxes, scores, where):
    check_array(boxes, "boxes", where, shape=(None, 4), floating=True, finite=True)
    check_array(scores, "scores", where, ndim=1, floating=True)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{where}: scores must have one entry per box, got {scores.shape[0]} scores "
                         f"for {boxes.shape[0]} boxes")
    xp = get_array_module(boxes, scores)
    if scores.size and reads_values(scores) and bool(xp.isnan(scores).any()):
        raise ValueError(f"{where}: scores contains NaN values")


def nms(boxes, scores, iou_threshold: float, method: str = "auto", *, max_keep=None):
    """Greedy non-maximum suppression (same signature and result as ``torchvision.ops.nms``).

    boxes: (N, 4) floating (x1, y1, x2, y2); scores: (N,) floating; iou_threshold in [0, 1].
    method: ``"auto"`` (default), ``"greedy"``, ``"sparse"`` or ``"matrix"`` (see the module
    docstring); all return the same indices.
    max_keep: ``None`` (all kept boxes, torchvision's behaviour) or an int ``K >= 0``: only the
    ``K`` best kept boxes, the same as ``nms(...)[:K]`` but with an early exit.
    Returns (K,) int64 indices of the kept boxes, sorted by decreasing score (an empty array for
    N = 0), in the array module of ``boxes``. CuPy inputs are processed on the host.
    """
    where = "nms"
    _check_boxes_scores(boxes, scores, where)
    t = _check_threshold(iou_threshold, where)
    return _nms(boxes, scores, t, None, method, where, _check_max_keep(max_keep, where))


def _check_max_keep(k, where):
    if k is None:
        return None
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{where}: max_keep must be None or an int >= 0, got {type(k).__name__} {k!r}")
    if k < 0:
        raise ValueError(f"{where}: max_keep must be None or an int >= 0, got {k!r}")
    return int(k)


def batched_nms(boxes, scores, idxs, iou_threshold: float, method: str = "auto", *, max_keep=None):
    """NMS independently within each category (same result as ``torchvision.ops.batched_nms``).

    boxes: (N, 4) floating; scores: (N,) floating; idxs: (N,) integer category of each box;
    iou_threshold in [0, 1]. Boxes of different categories never suppress each other. Instead of
    offsetting the boxes per category (torchvision's trick) we simply ignore the pairs whose
    categories differ, which is exact. ``max_keep``: as in :func:`nms` (the best ``K`` kept boxes
    over all categories).
    Returns (K,) int64 indices of the kept boxes, sorted by decreasing score.
    """
    where = "batched_nms"
    _check_boxes_scores(boxes, scores, where)
    check_array(idxs, "idxs", where, ndim=1)
    if not np.issubdtype(idxs.dtype, np.integer):
        raise TypeError(f"{where}: idxs must be an integer array, got {idxs.dtype}")
    if idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"{where}: idxs must have one entry per box, got {idxs.shape[0]} for "
                         f"{boxes.shape[0]} boxes")
    t = _check_threshold(iou_threshold, where)
    return _nms(boxes, scores, t, idxs, method, where, _check_max_keep(max_keep, where))


def _nms(boxes, scores, t, idxs, method, where, max_keep=None):
    if method not in ("auto", "greedy", "sparse", "matrix"):
        raise ValueError(f"{where}: method must be 'auto', 'greedy', 'sparse' or 'matrix', "
                         f"got {method!r}")
    xp = get_array_module(boxes, scores)
    n = boxes.shape[0]
    if n == 0 or max_keep == 0:
        return xp.zeros((0,), dtype=xp.int64)
    # The selection is sequential and index-heavy: it runs on the host, in the boxes' own dtype
    # so that IoUs round exactly as torchvision's; the indices are returned on the input's device.
    b, s, c = _to_host(xp, boxes, scores, idxs)
    order = np.argsort(-s, kind="stable")
    b = b[order]
    c = None if c is None else c[order]
    groups = None
    if method == "matrix" or (method == "auto" and max_keep is None):
        groups = _category_groups(c, n)
        if method == "auto" and max(g.size for g in groups) > _MATRIX_MAX:
            groups = None
    if groups is not None:
        keep = _matrix(b, t, groups)
    elif method == "sparse":
        keep = _sparse(b, t, c, n, _candidate_pairs(b, t))
    else:   # with max_keep, "auto" is the greedy loop with its early exit (no hand-over)
        keep = _greedy(b, t, c, switch=(method == "auto" and max_keep is None), max_keep=max_keep)
    return xp.asarray(order[keep[:max_keep]].astype(np.int64))


def _to_host(xp, boxes, scores, idxs):
    """Host copies of boxes, scores and idxs: one device->host transfer for all three (packed
    into float64 columns, exact for float32/float64 values and integers below 2**53)."""
    if is_host(xp):
        return boxes, scores, idxs
    cols = [boxes.astype(xp.float64), scores.astype(xp.float64)[:, None]]
    if idxs is not None:
        cols.append(idxs.astype(xp.float64)[:, None])
    host = asnumpy(xp.concatenate(cols, axis=1))
    c = None if idxs is None else host[:, 5].astype(idxs.dtype)
    return host[:, :4].astype(boxes.dtype), host[:, 4].astype(scores.dtype), c


# Rough costs (seconds) used by method="auto" to decide when to hand over from the greedy loop
# to the sparse solver: one greedy block costs _STEP + _PER_PAIR_DENSE * kept * remaining, the
# sparse solver about _PER_PAIR per candidate pair.
_STEP, _PER_PAIR_DENSE, _PER_PAIR = 60e-6, 8e-9, 20e-9
_BLOCK = 32


def _coords_and_area(b):
    """``(x1, y1, x2, y2, area)`` of boxes ``b (N, 4)``, each a contiguous (N,) array."""
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _iou_rows(x1, y1, x2, y2, area, rows, cols):
    """IoU of boxes ``rows`` (K,) against boxes ``cols`` (R,) -> (K, R), torchvision's rounding:
    ``inter / ((area_i + area_j) - inter)``."""
    w = np.minimum(x2[rows, None], x2[None, cols])
    w -= np.maximum(x1[rows, None], x1[None, cols])
    h = np.minimum(y2[rows, None], y2[None, cols])
    h -= np.maximum(y1[rows, None], y1[None, cols])
    np.clip(w, 0, None, out=w)
    np.clip(h, 0, None, out=h)
    inter = np.multiply(w, h, out=w)
    union = area[rows, None] + area[None, cols]
    union -= inter
    return np.divide(inter, union, out=inter)


#: "auto" uses the suppression-matrix method when no category has more boxes than this
#: (a k x k float matrix: 4 MB for k = 1024).
_MATRIX_MAX = 1024


def _category_groups(c, n):
    """Positions (in score order) of each category's boxes, each group still in score order."""
    if c is None:
        return [np.arange(n)]
    by_cat = np.argsort(c, kind="stable")
    return np.split(by_cat, np.flatnonzero(np.diff(c[by_cat])) + 1)


def _matrix(b, t, groups):
    """Greedy NMS per group from its full suppression matrix. b: (N, 4) in score order; groups:
    arrays of positions in score order. Returns the kept positions, ascending (= by score)."""
    keep = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for g in groups:
            rows = np.arange(g.size)
            sup = np.triu(_iou_rows(*_coords_and_area(b[g]), rows, rows) > t, 1)   # (k, k)
            packed = np.packbits(sup, axis=1, bitorder="little")     # row i: bit j = i suppresses j
            dead = 0
            for i in range(g.size):
                if not (dead >> i) & 1:
                    keep.append(g[i])
                    dead |= int.from_bytes(packed[i].tobytes(), "little")
    return np.sort(np.asarray(keep, dtype=np.int64))


def _greedy(b, t, c, switch=False, max_keep=None):
    """Greedy NMS in blocks. b: (N, 4) sorted by decreasing score. Returns kept positions (with
    ``max_keep``, it stops once that many are kept: the first ``max_keep`` are then exact).

    The remaining candidates are a list in score order. Each step takes the first ``_BLOCK`` of
    them, resolves the greedy order inside the block exactly (a small IoU matrix; the Python loop
    runs over the block's boxes with bit masks, never over pairs), then removes from the rest every
    candidate that a box kept in this block suppresses, and compresses the list.

    With ``switch``, the remaining work is estimated from the suppression rate so far; when the
    sparse solver looks cheaper, the remaining candidates -- an NMS problem of their own, in the
    same order -- are handed to it.
    """
    n = b.shape[0]
    x1, y1, x2, y2, area = _coords_and_area(b)
    pos = np.arange(n)            # remaining candidates (positions in score order)
    keep = []
    bits = 1 << np.arange(_BLOCK, dtype=np.int64)
    last_size, last_check = n, np.inf
    with np.errstate(invalid="ignore", divide="ignore"):
        while pos.size:
            r = pos.size
            if switch and r < last_size and r > 4 * _BLOCK:
                steps = r / max(last_size - r, 1)                  # blocks still to come
                greedy_cost = steps * (_STEP + _PER_PAIR_DENSE * _BLOCK * r / 2)
                if greedy_cost > 1e-3 and r < 0.7 * last_check:
                    last_check = r
                    sub = b[pos]
                    sub_c = None if c is None else c[pos]
                    if _count_pairs(sub, t) * _PER_PAIR < greedy_cost:
                        sub_keep = _sparse(sub, t, sub_c, r, _candidate_pairs(sub, t))
                        return np.concatenate([np.asarray(keep, dtype=np.int64), pos[sub_keep]])
            last_size = r
            blk, pos = pos[:_BLOCK], pos[_BLOCK:]
            k = blk.size
            sup = _iou_rows(x1, y1, x2, y2, area, blk, blk) > t      # (k, k)
            if c is not None:
                sup &= c[blk, None] == c[None, blk]
            sup = np.triu(sup, 1)
            masks = (sup * bits[:k]).sum(axis=1).tolist()              # row i: who i suppresses
            dead, kept = 0, []
            for i in range(k):
                if not (dead >> i) & 1:
                    kept.append(i)
                    dead |= masks[i]
            kb = blk[kept]
            keep.extend(kb.tolist())
            if max_keep is not None and len(keep) >= max_keep:
                break
            if pos.size:
                hit = _iou_rows(x1, y1, x2, y2, area, kb, pos) > t     # (kb, R)
                if c is not None:
                    hit &= c[kb, None] == c[None, pos]
                pos = pos[~hit.any(axis=0)]
    return np.asarray(keep, dtype=np.int64)


def _pair_ranges(b, t):
    """Sweep over x1 (see :func:`_candidate_pairs`): x-order, and for each box the count of
    later boxes (in x1 order) that may overlap it by IoU > t."""
    n = b.shape[0]
    xo = np.argsort(b[:, 0], kind="stable")
    bs = b[xo]
    w = bs[:, 2] - bs[:, 0]
    # 0.999: a safety margin so that rounding can never drop a genuine pair
    end = np.searchsorted(bs[:, 0], bs[:, 2] - 0.999 * t * w, side="left")
    start = np.arange(1, n + 1)
    return xo, bs, start, np.maximum(end - start, 0)


def _count_pairs(b, t):
    return int(_pair_ranges(b, t)[3].sum())


def _candidate_pairs(b, t):
    """All pairs (p, q) of sorted positions with IoU(b_p, b_q) > t, as two arrays (unordered pairs).

    Uses a sweep over x1: for IoU > t >= 0 the x-intervals must overlap by more than t * width
    (2-D IoU <= 1-D IoU of the x-intervals), so after sorting by x1 the partners of box p with
    x1_q >= x1_p lie in a contiguous range ending at x1_q < x2_p - t * w_p.
    """
    n = b.shape[0]
    xo, bs, start, cnt = _pair_ranges(b, t)
    total = int(cnt.sum())
    p = np.repeat(np.arange(n), cnt)
    # q = start[p] + (0, 1, ..., cnt[p]-1) for each p
    q = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt - start, cnt)
    x1, y1, x2, y2, area = _coords_and_area(bs)
    w = np.minimum(x2[p], x2[q])
    w -= np.maximum(x1[p], x1[q])
    h = np.minimum(y2[p], y2[q])
    h -= np.maximum(y1[p], y1[q])
    np.clip(w, 0, None, out=w)
    np.clip(h, 0, None, out=h)
    inter = np.multiply(w, h, out=w)
    # (area_i + area_j) - inter: the same rounding as the greedy path, since + is commutative
    union = area[p] + area[q]
    union -= inter
    with np.errstate(invalid="ignore", divide="ignore"):
        hit = inter / union > t
    pp, qq = xo[p[hit]], xo[q[hit]]
    return np.minimum(pp, qq), np.maximum(pp, qq)


def _sparse(b, t, c, n, pairs):
    """Resolve greedy NMS on the graph of suppressing pairs (src has the higher score)."""
    src, dst = pairs
    if c is not None:
        same = c[src] == c[dst]
        src, dst = src[same], dst[same]
    state = np.zeros(n, dtype=np.int8)   # 0 undecided, 1 kept, -1 suppressed
    has_in = np.zeros(n, dtype=bool)
    has_in[dst] = True
    state[~has_in] = 1                   # nothing can suppress these: kept
    while True:
        # a box with a kept predecessor is suppressed
        killed = dst[state[src] == 1]
        state[killed[state[killed] == 0]] = -1
        # drop edges that are settled (from suppressed sources or into decided boxes)
        live = (state[src] == 0) & (state[dst] == 0)
        src, dst = src[live], dst[live]
        undecided = state == 0
        if not undecided.any():
            break
        # an undecided box whose predecessors are all suppressed is kept
        blocked = np.zeros(n, dtype=bool)
        blocked[dst] = True
        newly = undecided & ~blocked
        state[newly] = 1
    return np.nonzero(state == 1)[0]
