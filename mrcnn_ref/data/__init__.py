"""mrcnn_ref.data: datasets (built-in shapes, COCO format), mask utilities, RLE, transforms.

* :mod:`.shapes` — :class:`ShapesDataset`, the synthetic squares/circles/triangles data;
* :mod:`.coco` — :class:`CocoDataset`, bring your own COCO instances JSON + image folder;
* :mod:`.masks` — boxes from masks, mini-masks, mask-head targets, pasting masks into images;
* :mod:`.rle` — COCO run-length encoding and polygon rasterisation;
* :mod:`.transforms` — horizontal flip augmentation and the model's input normalisation.
"""
from .coco import CocoDataset
from .masks import (expand_mask, mask_targets_for_rois, masks_to_boxes, minimize_mask,
                    paste_masks_in_image)
from .shapes import CATEGORIES, ShapesDataset
from .transforms import hflip, random_hflip, to_model_input

__all__ = [
    "CATEGORIES",
    "CocoDataset",
    "ShapesDataset",
    "expand_mask",
    "hflip",
    "mask_targets_for_rois",
    "masks_to_boxes",
    "minimize_mask",
    "paste_masks_in_image",
    "random_hflip",
    "to_model_input",
]
