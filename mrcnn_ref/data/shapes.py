"""The built-in synthetic dataset: squares, circles and triangles on a plain background.

Every image is generated on demand from its own random generator
``np.random.default_rng([seed, split_code, i])``, so ``ds[i]`` is the same whatever order images are
read in, needs no files, and the train (``split_code`` 0) and val (``split_code`` 1) splits never
share an image. Default sizes: 2000 training and 200 validation images.

How an image is made:

* a random background colour, and 1 to ``max_instances`` shapes, each with a random category
  (1 square, 2 circle, 3 triangle), size, position (centre inside the image, the shape mostly
  inside) and colour. A shape colour is at least ``MIN_COLOR_DISTANCE`` (Euclidean, RGB) from the
  background and ``MIN_COLOR_DISTANCE / 2`` from the other shapes' colours, so every instance
  can be told apart by colour.
* shapes are painted in order, later ones on top. A later shape hides parts of earlier ones, and the
  hidden parts are *removed* from the earlier masks: the masks are what is visible, they never
  overlap, and every box is tight around its visible mask.
* occlusion is kept moderate: a new shape is only accepted if every earlier shape keeps at least
  ``MIN_VISIBLE_FRACTION`` (30 %) of its own area and at least ``MIN_AREA`` (40) pixels visible, and
  the new shape itself has ``MIN_AREA`` pixels inside the image. Otherwise its position and size are
  drawn again (at most ``MAX_TRIES`` times); a shape that still does not fit is left out, so an image
  can end up with fewer shapes than first drawn (never fewer than one).
* a little Gaussian pixel noise (std ``noise_std``, default 4 grey levels) is added to the image
  (not to the masks), so a model cannot rely on exact colour values.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
from skimage.draw import disk, polygon

from .._checks import check_positive_int
from .masks import masks_to_boxes
from .rle import rle_encode

__all__ = ["CATEGORIES", "ShapesDataset"]

CATEGORIES = [
    {"id": 1, "name": "square"},
    {"id": 2, "name": "circle"},
    {"id": 3, "name": "triangle"},
]
SPLIT_CODES = {"train": 0, "val": 1}
DEFAULT_NUM_IMAGES = {"train": 2000, "val": 200}
MIN_COLOR_DISTANCE = 120.0
MIN_VISIBLE_FRACTION = 0.3
MIN_AREA = 40
MAX_TRIES = 20


def _random_color(rng, avoid, min_dists):
    """A random RGB colour at least min_dists[k] away from each colour in avoid (bounded retries)."""
    best, best_margin = None, -np.inf
    for _ in range(50):
        c = rng.integers(0, 256, size=3)
        if not avoid:
            return c
        d = np.sqrt(((np.asarray(avoid, dtype=np.float64) - c) ** 2).sum(axis=1))
        margin = float((d - np.asarray(min_dists)).min())
        if margin >= 0:
            return c
        if margin > best_margin:
            best, best_margin = c, margin
    return best


def _draw_shape(category, cx, cy, s, size):
    """Full (unoccluded, clipped to the image) mask of one shape as (rows, cols) pixel indices.

    s is the half-size: half the side of a square, the radius of a circle, the circumradius of the
    (upward-pointing, equilateral) triangle.
    """
    shape = (size, size)
    if category == 1:
        rr, cc = polygon([cy - s, cy - s, cy + s, cy + s], [cx - s, cx + s, cx + s, cx - s], shape)
    elif category == 2:
        rr, cc = disk((cy, cx), s, shape=shape)
    else:
        half = s * np.sqrt(3) / 2
        rr, cc = polygon([cy - s, cy + s / 2, cy + s / 2], [cx, cx + half, cx - half], shape)
    return rr, cc


class ShapesDataset:
    """Synthetic instance-segmentation dataset (squares, circles, triangles); see the module docs.

    ShapesDataset(split="train", num_images=None, image_size=128, seed=0, max_instances=4,
                  noise_std=4.0, cache_size=256)

    ``ds[i]`` is a dict:

    * ``"image"``: (H, W, 3) uint8;
    * ``"boxes"``: (n, 4) float32 ``(x1, y1, x2, y2)``, tight around the visible mask in continuous
      coordinates (x1 = min col, x2 = max col + 1);
    * ``"labels"``: (n,) int64 category ids (1 square, 2 circle, 3 triangle; 0 is background);
    * ``"masks"``: (n, H, W) bool visible masks (disjoint);
    * ``"image_id"``: ``i + 1``.

    Generation is lazy; the last ``cache_size`` samples are kept in a small LRU cache (0 disables
    it). Returned arrays are copies, so changing them does not change the cache.
    """

    categories = CATEGORIES
    num_classes = len(CATEGORIES) + 1                  # including the background (label 0)
    cat_id_to_label = {c["id"]: c["id"] for c in CATEGORIES}   # labels are the category ids
    label_to_cat_id = {c["id"]: c["id"] for c in CATEGORIES}

    def __init__(self, split="train", num_images=None, image_size=128, seed=0, max_instances=4,
                 noise_std=4.0, cache_size=256):
        where = "ShapesDataset"
        if split not in SPLIT_CODES:
            raise ValueError(f"{where}: split must be 'train' or 'val', got {split!r}")
        self.split = split
        self.split_code = SPLIT_CODES[split]
        self.num_images = (DEFAULT_NUM_IMAGES[split] if num_images is None
                           else check_positive_int(num_images, "num_images", where, allow_zero=True))
        self.image_size = check_positive_int(image_size, "image_size", where)
        if self.image_size < 32:
            raise ValueError(f"{where}: image_size must be >= 32, got {image_size}")
        self.seed = check_positive_int(seed, "seed", where, allow_zero=True)
        self.max_instances = check_positive_int(max_instances, "max_instances", where)
        if not isinstance(noise_std, (int, float)) or noise_std < 0:
            raise ValueError(f"{where}: noise_std must be a number >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        self.cache_size = check_positive_int(cache_size, "cache_size", where, allow_zero=True)
        self._cache: OrderedDict[int, dict] = OrderedDict()

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self):
        return self.num_images

    def __getitem__(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"ShapesDataset: index must be an int, got {type(i).__name__}")
        n = self.num_images
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"ShapesDataset: index {i} out of range for {n} images")
        i = int(i)
        sample = self._cache.get(i)
        if sample is None:
            sample = self._generate(i)
            if self.cache_size:
                self._cache[i] = sample
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in sample.items()}

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        return (f"ShapesDataset(split={self.split!r}, num_images={self.num_images}, "
                f"image_size={self.image_size}, seed={self.seed}, max_instances={self.max_instances})")

    # ------------------------------------------------------------------ generation
    def _generate(self, i):
        size = self.image_size
        rng = np.random.default_rng([self.seed, self.split_code, i])
        bg = rng.integers(0, 256, size=3)
        n_wanted = int(rng.integers(1, self.max_instances + 1))
        full = []          # full (clipped) masks of the accepted shapes, in painting order
        visible = []       # their currently visible parts
        labels = []
        colors = []
        for _ in range(n_wanted):
            category = int(rng.integers(1, 4))
            for _try in range(MAX_TRIES):
                s = rng.uniform(0.08, 0.22) * size
                cx, cy = rng.uniform(0.6 * s, size - 0.6 * s, size=2)
                rr, cc = _draw_shape(category, cx, cy, s, size)
                if rr.size < MIN_AREA:
                    continue
                m = np.zeros((size, size), dtype=bool)
                m[rr, cc] = True
                ok = True
                for f, v in zip(full, visible):
                    left = np.count_nonzero(v & ~m)
                    if left < MIN_AREA or left < MIN_VISIBLE_FRACTION * np.count_nonzero(f):
                        ok = False
                        break
                if ok:
                    break
            else:
                continue   # no acceptable placement: leave this shape out
            for v in visible:
                v &= ~m
            full.append(m)
            visible.append(m.copy())
            labels.append(category)
            colors.append(_random_color(rng, [bg] + colors,
                                        [MIN_COLOR_DISTANCE] + [MIN_COLOR_DISTANCE / 2] * len(colors)))
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = bg
        for m, c in zip(full, colors):
            image[m] = c
        if self.noise_std > 0:
            noisy = rng.standard_normal(image.shape, dtype=np.float32)
            noisy *= self.noise_std
            noisy += image
            noisy += 0.5                                   # round half up by truncation below
            np.clip(noisy, 0, 255, out=noisy)
            image = noisy.astype(np.uint8)
        masks = (np.stack(visible) if visible else np.zeros((0, size, size), dtype=bool))
        return {
            "image": image,
            "boxes": masks_to_boxes(masks),
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": masks,
            "image_id": i + 1,
        }

    # ------------------------------------------------------------------ COCO export
    def image_info(self, i):
        """The COCO ``images`` entry of image i."""
        return {"id": i + 1, "file_name": f"shapes_{self.split}_{i:06d}.png",
                "height": self.image_size, "width": self.image_size}

    def to_coco(self, indices=None):
        """The ground truth as a COCO instances dict (what ``evaluate`` compares predictions with).

        indices: which images (default: all). Annotations get ids 1, 2, ... in image order, an RLE
        segmentation (compressed, from :func:`mrcnn_ref.data.rle.rle_encode`), ``bbox`` ``[x, y, w, h]``
        (the tight box of the visible mask), ``area`` = visible mask pixel count and ``iscrowd`` 0.
        """

        if indices is None:
            indices = range(len(self))
        images, annotations = [], []
        ann_id = 1
        for i in indices:
            sample = self[int(i)]
            images.append(self.image_info(int(i)))
            for box, label, mask in zip(sample["boxes"], sample["labels"], sample["masks"]):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append({
                    "id": ann_id,
                    "image_id": sample["image_id"],
                    "category_id": int(label),
                    "segmentation": rle_encode(mask),
                    "area": int(mask.sum()),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": 0,
                })
                ann_id += 1
        return {"images": images, "annotations": annotations,
                "categories": [dict(c) for c in CATEGORIES]}
