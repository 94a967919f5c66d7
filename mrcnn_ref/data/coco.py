"""Bring your own data: a COCO-format instance-segmentation dataset (JSON + image folder).

``CocoDataset(annotation_file, image_dir)`` reads a COCO "instances" JSON file::

    {"images":      [{"id", "file_name", "height", "width"}, ...],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h],
                      "segmentation": polygons or RLE, "iscrowd": 0/1 (optional, default 0),
                      "area": (optional, see below)}, ...],
     "categories":  [{"id", "name"}, ...]}

and returns, for ``ds[i]``, the same dict as :class:`~mrcnn_ref.data.shapes.ShapesDataset` plus
``"crowd_boxes"``:

* ``"image"`` (H, W, 3) uint8 (grey images are repeated to 3 channels, an alpha channel is dropped);
* ``"boxes"`` (n, 4) float32 ``(x1, y1, x2, y2)``, tight around each decoded mask (like the shapes
  data; the JSON ``bbox`` is only used for validation and for crowd regions);
* ``"labels"`` (n,) int64: contiguous labels ``1..K`` (0 is background), see ``cat_id_to_label``
  and ``label_to_cat_id``; labels follow the sorted category ids;
* ``"masks"`` (n, H, W) bool;
* ``"image_id"``: the COCO image id;
* ``"crowd_boxes"`` (k, 4) float32 xyxy of the ``iscrowd`` annotations. Crowd regions are not
  training instances (they are left out of boxes/labels/masks); a trainer may use them to ignore
  proposals that fall on a crowd.

Segmentations may be polygons (list of ``[x1, y1, x2, y2, ...]``, continuous pixel coordinates) or
RLE, compressed (``counts`` a string) or uncompressed (``counts`` a list of ints).

Everything that can be checked without reading pixels is checked when the dataset is created, and
a malformed file fails with a ``ValueError`` naming the file and the annotation (or image) id:
missing keys, ids that are not integers, unknown image or category ids, duplicate ids, categories
without a name, boxes with zero/negative size or outside the image (beyond ``box_tolerance``
pixels), polygons of fewer than 3 points, RLEs whose size does not match the image or whose
counts do not decode to exactly ``h * w`` pixels (compressed strings are decoded here, not when
the image is read), an ``area`` that is not a finite number >= 0, image files that do not exist.
An image without annotations is fine.
Images are read lazily (``skimage.io.imread``) when a sample is requested. An annotation whose
mask comes out empty (a polygon thinner than a pixel) is dropped from that sample.

``category_ids``: optionally train on a subset of the categories; annotations of the other
categories are ignored (they must still be valid).

**area.** COCO evaluation splits objects into small / medium / large by the ground truth's
``"area"`` field (not by its box), for ``bbox`` and ``segm`` alike, so :meth:`CocoDataset.to_coco`
must carry one for every annotation. A file without it (many converters leave it out) is not
refused: the area is computed from the segmentation when the file is loaded, the way COCO's own
files define it: the pixel count of an RLE (what ``pycocotools.mask.area`` gives), and for
polygons the geometric (shoelace) area, summed over the annotation's polygons (COCO's own
polygon areas are such non-integral values). A given ``area`` is kept as it is. Likewise a
missing ``iscrowd`` is written as 0 by :meth:`CocoDataset.to_coco` (pycocotools reads it).

:meth:`CocoDataset.check_categories` compares the categories with a trained model's (the
``categories`` list stored in a checkpoint) before evaluating the model on this data.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from skimage import io

from .images import check_size, to_rgb_uint8
from .masks import masks_to_boxes
from .rle import polygons_to_mask, rle_area, rle_decode

__all__ = ["CocoDataset"]


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _polygon_area(seg) -> float:
    """Geometric area of COCO polygons (shoelace formula), summed over the polygons."""
    total = 0.0
    for poly in seg:
        p = np.asarray(poly, dtype=np.float64)
        x, y = p[0::2], p[1::2]
        total += abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0
    return total


class CocoDataset:
    """A COCO instances JSON + image folder as a dataset of samples (see the module docstring)."""

    def __init__(self, annotation_file, image_dir, category_ids=None, box_tolerance=1.0, max_side=None):
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        self.box_tolerance = float(box_tolerance)
        self.max_side = None if max_side is None else int(max_side)   # refuse larger images
        fname = self.annotation_file
        try:
            with open(fname, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ValueError(f"{fname}: annotation file not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{fname}: not valid JSON ({e})") from None
        if not os.path.isdir(self.image_dir):
            raise ValueError(f"{fname}: image_dir {self.image_dir!r} is not a directory")
        self.coco = data
        self._validate_and_index(data, category_ids)

    # ------------------------------------------------------------------ validation
    def _err(self, msg):
        return ValueError(f"{self.annotation_file}: {msg}")

    def _validate_and_index(self, data, category_ids):
        if not isinstance(data, dict):
            raise self._err("top level must be a JSON object with 'images', 'annotations', "
                            "'categories'")
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise self._err(f"missing top-level key {key!r}")
            if not isinstance(data[key], list):
                raise self._err(f"{key!r} must be a list, got {type(data[key]).__name__}")

        # categories
        cats = {}
        for c in data["categories"]:
            if not isinstance(c, dict) or "id" not in c or not _is_int(c["id"]):
                raise self._err(f"every category needs an integer 'id', got {c!r}")
            if c["id"] in cats:
                raise self._err(f"category id {c['id']} appears twice")
            if not isinstance(c.get("name"), str):
                got = f"got {c['name']!r}" if "name" in c else "it has none"
                raise self._err(f"category {c['id']}: needs a 'name' (a string), {got}")
            cats[int(c["id"])] = dict(c)
        if category_ids is None:
            used = sorted(cats)
        else:
            if (isinstance(category_ids, (str, bytes)) or not hasattr(category_ids, "__iter__")
                    or not all(_is_int(c) for c in category_ids)):
                raise TypeError(f"CocoDataset: category_ids must be a list of integer category "
                                f"ids, got {category_ids!r}")
            used = sorted({int(c) for c in category_ids})
            unknown = [c for c in used if c not in cats]
            if unknown:
                raise self._err(f"category_ids {unknown} are not in the file's categories "
                                f"{sorted(cats)}")
        if not used:
            raise self._err("no categories")
        self.cat_id_to_label = {cid: k + 1 for k, cid in enumerate(used)}
        self.label_to_cat_id = {k + 1: cid for k, cid in enumerate(used)}
        self.categories = [cats[cid] for cid in used]

        # images
        images = {}
        for im in data["images"]:
            if not isinstance(im, dict):
                raise self._err(f"every image must be an object, got {im!r}")
            for key in ("id", "file_name", "height", "width"):
                if key not in im:
                    raise self._err(f"image {im.get('id', '?')}: missing key {key!r}")
            iid = im["id"]
            if not _is_int(iid):
                raise self._err(f"image id {iid!r} is not an integer")
            if iid in images:
                raise self._err(f"image id {iid} appears twice")
            if not (_is_int(im["height"]) and _is_int(im["width"]) and im["height"] > 0
                    and im["width"] > 0):
                raise self._err(f"image {iid}: height and width must be positive integers, got "
                                f"{im['height']!r} x {im['width']!r}")
            if self.max_side is not None and max(im["height"], im["width"]) > self.max_side:
                raise self._err(f"image {iid} is {im['width']}x{im['height']} pixels, larger than the "
                                f"limit of {self.max_side} on a side; raise it with --max-image-side N")
            if not isinstance(im["file_name"], str) or not im["file_name"]:
                raise self._err(f"image {iid}: file_name must be a non-empty string, got "
                                f"{im['file_name']!r}")
            path = os.path.join(self.image_dir, im["file_name"])
            if not os.path.isfile(path):
                raise self._err(f"image {iid}: image file {path!r} not found")
            images[int(iid)] = im
        self._images = images
        self.image_ids = sorted(images)

        # annotations
        tol = self.box_tolerance
        anns_by_image = {iid: [] for iid in images}
        seen = set()
        for a in data["annotations"]:
            if not isinstance(a, dict):
                raise self._err(f"every annotation must be an object, got {a!r}")
            aid = a.get("id", "?")
            where = f"annotation id {aid}"
            for key in ("id", "image_id", "category_id", "bbox", "segmentation"):
                if key not in a:
                    raise self._err(f"{where}: missing key {key!r}")
            for key in ("id", "image_id", "category_id"):
                if not _is_int(a[key]):
                    raise self._err(f"{where}: {key} must be an integer, got {a[key]!r}")
            if aid in seen:
                raise self._err(f"{where}: id appears twice")
            seen.add(aid)
            if a["image_id"] not in images:
                raise self._err(f"{where}: image_id {a['image_id']!r} is not in 'images'")
            if a["category_id"] not in cats:
                raise self._err(f"{where}: category_id {a['category_id']!r} is not in 'categories'")
            im = images[a["image_id"]]
            h, w = im["height"], im["width"]
            bbox = a["bbox"]
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(_is_number(v) and math.isfinite(v) for v in bbox)):
                raise self._err(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            x, y, bw, bh = (float(v) for v in bbox)
            if bw <= 0 or bh <= 0:
                raise self._err(f"{where}: bbox {bbox} has zero or negative width/height")
            if x < -tol or y < -tol or x + bw > w + tol or y + bh > h + tol:
                raise self._err(f"{where}: bbox {bbox} lies outside the {w}x{h} image "
                                f"(tolerance {tol} px)")
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1, True, False):
                raise self._err(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
            seg_area = self._check_segmentation(a["segmentation"], h, w, where)
            if "area" in a:
                if not (_is_number(a["area"]) and math.isfinite(a["area"]) and a["area"] >= 0):
                    raise self._err(f"{where}: area must be a finite number >= 0, got {a['area']!r}")
            else:      # COCO evaluation needs it (small/medium/large): computed, see the docstring
                a = {**a, "area": seg_area()}
            if "iscrowd" not in a:     # optional here, but pycocotools' evaluation reads it
                a = {**a, "iscrowd": 0}
            if a["category_id"] in self.cat_id_to_label:
                anns_by_image[a["image_id"]].append(a)
        self._anns = anns_by_image

    def _check_segmentation(self, seg, h, w, where):
        """Validate a segmentation; return a function computing its area (called only when the
        annotation has no ``area``)."""
        if isinstance(seg, dict):
            if "size" not in seg or "counts" not in seg:
                raise self._err(f"{where}: RLE segmentation needs 'size' and 'counts'")
            size = seg["size"]
            if (not isinstance(size, list) or len(size) != 2 or not all(map(_is_int, size))
                    or list(size) != [h, w]):
                raise self._err(f"{where}: RLE size {size!r} does not match the image "
                                f"size [{h}, {w}]")
            counts = seg["counts"]
            if not (isinstance(counts, str) or (isinstance(counts, list)
                                                and all(_is_int(c) and c >= 0 for c in counts))):
                raise self._err(f"{where}: RLE counts must be a string or a list of "
                                f"non-negative ints")
            if isinstance(counts, list) and sum(counts) != h * w:
                raise self._err(f"{where}: RLE counts sum to {sum(counts)}, expected "
                                f"{h * w} (= {h} x {w})")
            try:                         # decodes a compressed string; checks runs and their sum
                area = rle_area(seg)
            except (TypeError, ValueError) as e:
                why = str(e).removeprefix("rle_area: ").removeprefix("counts_from_string: ")
                raise self._err(f"{where}: RLE counts do not decode to a {h}x{w} mask ({why})") from None
            return lambda: area
        if not isinstance(seg, list) or not seg:
            raise self._err(f"{where}: segmentation must be a non-empty list of polygons or an "
                            f"RLE dict, got {seg!r}")
        for k, poly in enumerate(seg):
            if (not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2
                    or not all(_is_number(v) and math.isfinite(v) for v in poly)):
                n = len(poly) if isinstance(poly, (list, tuple)) else "?"
                raise self._err(f"{where}: polygon {k} must be a flat list [x1, y1, x2, y2, ...] "
                                f"of at least 3 points (6 finite numbers), got {n} values")
        return lambda: _polygon_area(seg)

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self):
        return len(self.image_ids)

    @property
    def num_classes(self):
        """Number of classes including the background (K + 1)."""
        return len(self.categories) + 1

    def __repr__(self):
        return (f"CocoDataset({self.annotation_file!r}, {self.image_dir!r}: {len(self)} images, "
                f"{len(self.categories)} categories)")

    def _read_image(self, info):
        path = os.path.join(self.image_dir, str(info["file_name"]))
        try:
            img = io.imread(path)
        except Exception as e:  # unreadable/corrupt file
            raise ValueError(f"{self.annotation_file}: image {info['id']}: cannot read {path!r} "
                             f"({e})") from None
        img = to_rgb_uint8(img, f"{self.annotation_file}: image {info['id']}: {path!r}")
        if self.max_side is not None:
            check_size(img, self.max_side, f"{self.annotation_file}: image {info['id']}: {path!r}")
        if img.shape[:2] != (info["height"], info["width"]):
            raise ValueError(f"{self.annotation_file}: image {info['id']}: {path!r} is "
                             f"{img.shape[1]}x{img.shape[0]} but the JSON says "
                             f"{info['width']}x{info['height']}")
        return np.ascontiguousarray(img)

    def _decode(self, seg, h, w):
        if isinstance(seg, dict):
            return rle_decode(seg)
        return polygons_to_mask(seg, h, w)

    def __getitem__(self, i):
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"CocoDataset: index must be an int, got {type(i).__name__}")
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"CocoDataset: index {i} out of range for {n} images")
        iid = self.image_ids[int(i)]
        info = self._images[iid]
        h, w = info["height"], info["width"]
        image = self._read_image(info)
        masks, labels, crowd = [], [], []
        for a in self._anns[iid]:
            if a.get("iscrowd", 0):
                x, y, bw, bh = (float(v) for v in a["bbox"])
                crowd.append([x, y, x + bw, y + bh])
                continue
            m = self._decode(a["segmentation"], h, w)
            if not m.any():
                continue
            masks.append(m)
            labels.append(self.cat_id_to_label[a["category_id"]])
        masks = np.stack(masks) if masks else np.zeros((0, h, w), dtype=bool)
        return {
            "image": image,
            "boxes": masks_to_boxes(masks),
            "labels": np.asarray(labels, dtype=np.int64),
            "masks": masks,
            "image_id": int(iid),
            "crowd_boxes": np.asarray(crowd, dtype=np.float32).reshape(-1, 4),
        }

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # ------------------------------------------------------------------ a model's categories
    def check_categories(self, categories):
        """Check that a trained model's categories are this dataset's; raise ``ValueError`` if not.

        categories: the model's ``[{"label": int, "id": int, "name": str}, ...]`` (the list a
        checkpoint stores, one entry per foreground label ``1..K``). The model's label ``L`` must
        mean this dataset's ``label_to_cat_id[L]`` with the same name: evaluation maps predicted
        labels to category ids with the dataset's table, so any difference (another count,
        a category id the model does not know or that this dataset lacks, another label or name
        for an id) would score the predictions against the wrong categories.
        """
        where = "check_categories"
        if not isinstance(categories, (list, tuple)):
            raise TypeError(f"{where}: categories must be a list of {{'label', 'id', 'name'}} "
                            f"dicts (a checkpoint's), got {type(categories).__name__}")
        model = {}
        for c in categories:
            if (not isinstance(c, dict) or not _is_int(c.get("label")) or not _is_int(c.get("id"))
                    or not isinstance(c.get("name"), str)):
                raise ValueError(f"{where}: each of the model's categories must be "
                                 f"{{'label': int, 'id': int, 'name': str}}, got {c!r}")
            if c["id"] in model:
                raise ValueError(f"{where}: the model's categories list category id {c['id']} twice")
            model[int(c["id"])] = (int(c["label"]), c["name"])
        names = {int(c["id"]): c["name"] for c in self.categories}
        ours = {cid: (lab, names[cid]) for lab, cid in self.label_to_cat_id.items()}
        desc = f"{self.annotation_file}: the model's categories do not match the dataset's"
        unknown = sorted(set(ours) - set(model))
        missing = sorted(set(model) - set(ours))
        if unknown:
            hint = (f"; to evaluate on the model's categories only, load the data with "
                    f"category_ids={sorted(model)}" if not missing else "")
            raise ValueError(f"{desc}: category id(s) {unknown[:10]} "
                             f"({', '.join(repr(names[i]) for i in unknown[:3])}) are not known to the "
                             f"model, which has {len(model)} categories (ids {sorted(model)[:20]}), the "
                             f"dataset {len(ours)}{hint}")
        if missing:
            raise ValueError(f"{desc}: the model has {len(model)} categories, the dataset "
                             f"{len(ours)}; model category id(s) {missing[:10]} are not in the dataset")
        for cid in sorted(ours):
            (lab, name), (mlab, mname) = ours[cid], model[cid]
            if name != mname:
                raise ValueError(f"{desc}: category id {cid} is {name!r} in the dataset but "
                                 f"{mname!r} in the model")
            if lab != mlab:
                raise ValueError(f"{desc}: category id {cid} ({name!r}) is label {lab} in the "
                                 f"dataset but label {mlab} in the model")

    # ------------------------------------------------------------------ COCO export
    def to_coco(self, indices=None):
        """The ground truth of the chosen images (default all) as a COCO instances dict.

        Keeps the file's own annotations (crowd ones included) and category ids, restricted to the
        used categories; map predicted labels back with ``label_to_cat_id`` before comparing.
        """
        if indices is None:
            indices = range(len(self))
        ids = [self.image_ids[int(i)] for i in indices]
        return {
            "images": [dict(self._images[iid]) for iid in ids],
            "annotations": [dict(a) for iid in ids for a in self._anns[iid]],
            "categories": [dict(c) for c in self.categories],
        }
