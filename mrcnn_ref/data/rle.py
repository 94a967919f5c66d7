"""COCO run-length encoding (RLE) of binary masks, and polygon rasterisation.

The COCO format stores an instance mask of an ``H x W`` image as a run-length encoding:

* the mask is read in **column-major** (Fortran) order: down the first column, then the second, …;
* it is cut into runs of equal values; the run lengths ("counts") alternate 0-runs and 1-runs and
  **always start with a run of zeros** (of length 0 when the first pixel is set).

Example: the 3x2 mask ``[[0, 1], [1, 1], [0, 0]]`` read column by column is ``0 1 0 | 1 1 0``,
so its counts are ``[1, 1, 1, 2, 1]`` (one 0, one 1, one 0, two 1s, one 0).

The *uncompressed* form keeps the counts as a list of ints: ``{"size": [h, w], "counts": [...]}``.
The *compressed* form (what COCO results files and ``pycocotools.mask.encode`` use) packs them
into a short ASCII string:

1. from the **fourth** count on (index ``i > 2``), a count is replaced by its difference from the
   count two places before (``x_i = c_i - c_{i-2}``): runs of similar length give small numbers;
2. each (signed) number is written as little-endian 5-bit chunks; every chunk becomes one
   character ``48 + chunk + 32 * more`` where ``more`` (bit 0x20) says "another chunk follows";
   writing stops when the rest of the number is all sign bits and the sign bit (0x10) of the last
   chunk agrees with them, so the reader can sign-extend from bit 0x10 of the last chunk.

Encoding is vectorised over pixels (``np.diff`` on the flattened mask); packing loops over the
counts (a few dozen per mask). Decoding of the string is fully vectorised.
"""
from __future__ import annotations

import math

import numpy as np
from skimage.draw import polygon as draw_polygon

from .._checks import check_positive_int

__all__ = [
    "counts_from_string",
    "counts_to_string",
    "polygons_to_mask",
    "rle_area",
    "rle_decode",
    "rle_encode",
    "rle_encode_uncompressed",
    "rle_to_bbox",
]


# --------------------------------------------------------------------------------------------
# counts <-> string
# --------------------------------------------------------------------------------------------
def counts_to_string(counts) -> str:
    """Pack a list of run lengths into COCO's compressed ASCII string (see module docstring)."""
    c = np.asarray(counts, dtype=np.int64)
    x = c.copy()
    if c.size > 3:
        x[3:] = c[3:] - c[1:-2]          # difference to the count two places before, for i > 2
    out = []
    for v in x.tolist():                  # loop over counts (not pixels)
        more = True
        while more:
            chunk = v & 0x1F
            v >>= 5                       # arithmetic shift: keeps the sign
            # stop when the remaining bits are pure sign and the chunk's bit 0x10 carries it
            more = (v != -1) if (chunk & 0x10) else (v != 0)
            out.append(chr(48 + chunk + (0x20 if more else 0)))
    return "".join(out)


def counts_from_string(s) -> np.ndarray:
    """Unpack COCO's compressed counts string (str or bytes) into an int64 array of run lengths.

    Vectorised: chunks are grouped into numbers with ``np.add.reduceat``; the "difference to two
    places before" (for i > 2) is undone with a cumulative sum along the even and odd positions.
    """
    if isinstance(s, str):
        try:
            s = s.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("counts_from_string: counts string has characters outside the RLE "
                             "alphabet (ASCII 48..111)") from None
    elif not isinstance(s, (bytes, bytearray)):
        raise TypeError(f"counts_from_string: counts must be a str or bytes, got {type(s).__name__}")
    b = np.frombuffer(bytes(s), dtype=np.uint8).astype(np.int64) - 48
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (b < 0).any() or (b > 63).any():
        raise ValueError("counts_from_string: counts string has characters outside the RLE "
                         "alphabet (ASCII 48..111)")
    more = (b & 0x20) != 0
    if more[-1]:
        raise ValueError("counts_from_string: counts string ends in the middle of a number")
    ends = np.flatnonzero(~more)                       # last chunk of each number
    starts = np.concatenate([[0], ends[:-1] + 1])
    k = np.arange(b.size) - np.repeat(starts, ends - starts + 1)   # chunk index within number
    if k.max() > 11:                                   # 12 chunks = 60 bits at most
        raise ValueError("counts_from_string: a number in the counts string is too long")
    x = np.add.reduceat((b & 0x1F) << (5 * k), starts)
    nchunks = ends - starts + 1
    neg = (b[ends] & 0x10) != 0                        # sign-extend from bit 0x10 of last chunk
    x = x - np.where(neg, np.left_shift(1, 5 * nchunks), 0)
    cnts = x.copy()
    # c_i = x_i + c_{i-2} for i > 2  =>  c[2::2] = cumsum(x[2::2]), c[1::2] = cumsum(x[1::2])
    cnts[2::2] = np.cumsum(x[2::2])
    cnts[1::2] = np.cumsum(x[1::2])
    return cnts


# --------------------------------------------------------------------------------------------
# encode / decode
# --------------------------------------------------------------------------------------------
def _check_mask(mask, where):
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise TypeError(f"{where}: mask must be a 2-D NumPy array, got {type(mask).__name__}")
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{where}: mask must have 2 dimensions (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
            raise TypeError(f"{where}: mask must be a bool (or 0/1 numeric) array, got {mask.dtype}")
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise ValueError(f"{where}: mask must be binary (only 0 and 1), got other values")
        mask = mask != 0
    return mask


def _mask_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a (H, W) bool mask in column-major order, starting with a 0-run."""
    flat = mask.ravel(order="F")
    n = flat.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1           # indices where a new run starts
    bounds = np.concatenate([[0], change, [n]])
    runs = np.diff(bounds)
    if flat[0]:
        runs = np.concatenate([[0], runs])                       # counts start with a 0-run
    return runs.astype(np.int64)


def rle_encode_uncompressed(mask) -> dict:
    """Encode a (H, W) binary mask as uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}``."""
    mask = _check_mask(mask, "rle_encode_uncompressed")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": _mask_counts(mask).tolist()}


def rle_encode(mask) -> dict:
    """Encode a (H, W) binary mask as compressed COCO RLE ``{"size": [h, w], "counts": str}``.

    The string equals ``pycocotools.mask.encode(np.asfortranarray(mask))["counts"].decode()``.
    """
    mask = _check_mask(mask, "rle_encode")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(_mask_counts(mask))}


def _size_value(v):
    """An RLE size entry as an int, or None if it is not a finite, integral number >= 0."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        return None
    if not math.isfinite(v) or v < 0 or int(v) != v:
        return None
    return int(v)


#: Largest h * w an RLE may describe: its run lengths are summed in int64.
_MAX_PIXELS = 2 ** 60


def _rle_parts(rle, where):
    """Validate an RLE dict and return (h, w, counts int64 array)."""
    if not isinstance(rle, dict):
        raise TypeError(f"{where}: rle must be a dict with keys 'size' and 'counts', "
                        f"got {type(rle).__name__}")
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: rle must have keys 'size' and 'counts', got {sorted(map(str, rle))}")
    size = rle["size"]
    hw = ([_size_value(v) for v in size]
          if isinstance(size, (list, tuple, np.ndarray)) and np.ndim(size) == 1 else [])
    if len(hw) != 2 or None in hw:
        raise ValueError(f"{where}: rle['size'] must be [h, w] with non-negative ints, got {size!r}")
    h, w = hw
    if h * w > _MAX_PIXELS:
        raise ValueError(f"{where}: rle['size'] {h}x{w} is too large")
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        cnts = counts_from_string(counts)
    else:
        cnts = np.asarray(counts)
        if cnts.ndim != 1 or (cnts.size and not np.issubdtype(cnts.dtype, np.integer)):
            raise ValueError(f"{where}: rle['counts'] must be a str/bytes or a list of ints")
        if cnts.size and cnts.dtype == np.uint64 and int(cnts.max()) > _MAX_PIXELS:
            raise ValueError(f"{where}: rle['counts'] has a run longer than the {h}x{w} mask")
        cnts = cnts.astype(np.int64)
    if (cnts < 0).any():
        raise ValueError(f"{where}: rle['counts'] has negative run lengths")
    # Each run must fit in the mask, and the sum is checked in float64 too: int64 sums of huge
    # runs wrap around, and a wrapped sum that happens to equal h * w would let np.repeat
    # allocate (or crash on) an absurd mask.
    if cnts.size and (int(cnts.max()) > h * w
                      or float(cnts.sum(dtype=np.float64)) > 2.0 * h * w + 1.0
                      or int(cnts.sum()) != h * w):
        total = sum(cnts.tolist())
        raise ValueError(f"{where}: run lengths sum to {total} but size {h}x{w} has {h * w} pixels")
    if not cnts.size and h * w:
        raise ValueError(f"{where}: run lengths sum to 0 but size {h}x{w} has {h * w} pixels")
    return h, w, cnts


def rle_decode(rle) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes or uncompressed list counts) into a (H, W) bool mask."""
    h, w, cnts = _rle_parts(rle, "rle_decode")
    values = np.arange(cnts.size) % 2 == 1                         # 0-run, 1-run, 0-run, ...
    flat = np.repeat(values, cnts)
    return flat.reshape(w, h).T.copy()                             # column-major -> (H, W)


def rle_area(rle) -> int:
    """Number of foreground pixels of an RLE (sum of the 1-runs)."""
    _, _, cnts = _rle_parts(rle, "rle_area")
    return int(cnts[1::2].sum())


def rle_to_bbox(rle) -> list[float]:
    """Tight box ``[x, y, w, h]`` (pixel units, COCO style) around the foreground; zeros if empty.

    Computed from the runs without decoding: a 1-run covering linear (column-major) indices
    ``s..e`` spans columns ``s // h .. e // h``; within one column it spans rows ``s % h .. e % h``,
    across a column boundary it touches every row.
    """
    h, w, cnts = _rle_parts(rle, "rle_to_bbox")
    ends = np.cumsum(cnts)
    starts = ends - cnts
    ones = (np.arange(cnts.size) % 2 == 1) & (cnts > 0)
    if not ones.any():
        return [0.0, 0.0, 0.0, 0.0]
    s, e = starts[ones], ends[ones] - 1
    xs, xe = s // h, e // h
    same = xs == xe
    ys = np.where(same, s % h, 0)
    ye = np.where(same, e % h, h - 1)
    x0, x1, y0, y1 = xs.min(), xe.max(), ys.min(), ye.max()
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


# --------------------------------------------------------------------------------------------
# polygons
# --------------------------------------------------------------------------------------------
def polygons_to_mask(polygons, h: int, w: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` into a (h, w) bool mask (union).

    Coordinates are continuous pixel coordinates: pixel ``(row r, col c)`` is the unit square
    ``[c, c+1) x [r, r+1)``, and it is set when its **centre** ``(c + 0.5, r + 0.5)`` lies inside
    the polygon (``skimage.draw.polygon``).

    Note: pycocotools (``mask.frPyObjects``) rasterises differently — it walks the polygon edges on
    a 5x upsampled grid and rounds — so the two masks differ by about one boundary pixel row; they
    agree closely (IoU >= 0.9) for polygons that are not tiny, but not exactly.
    """
    where = "polygons_to_mask"
    h = check_positive_int(h, "h", where)
    w = check_positive_int(w, "w", where)
    if not isinstance(polygons, (list, tuple)):
        raise TypeError(f"{where}: polygons must be a list of [x1, y1, x2, y2, ...] lists, "
                        f"got {type(polygons).__name__}")
    mask = np.zeros((h, w), dtype=bool)
    for i, poly in enumerate(polygons):
        p = np.asarray(poly, dtype=np.float64)
        if p.ndim != 1 or p.size < 6 or p.size % 2:
            raise ValueError(f"{where}: polygons[{i}] must be a flat list [x1, y1, x2, y2, ...] of "
                             f"at least 3 points, got {p.size} numbers")
        if not np.isfinite(p).all():
            raise ValueError(f"{where}: polygons[{i}] contains NaN or inf")
        rr, cc = draw_polygon(p[1::2] - 0.5, p[0::2] - 0.5, shape=(h, w))
        mask[rr, cc] = True
    return mask
