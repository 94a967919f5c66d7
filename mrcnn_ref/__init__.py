"""mrcnn_ref — Mask R-CNN from scratch in NumPy, every backward pass written by hand.

The torchvision-compatible ops are available at the top level::

    from mrcnn_ref import box_iou, nms, batched_nms, roi_align, roi_pool

Submodules: ``backend`` (NumPy/CuPy switch), ``gradcheck`` (finite differences), ``boxes``,
``nms``, ``anchors``, ``ops`` (forward/backward pairs), ``nn`` (layers, optimizer, checkpoints),
``model`` (backbone, FPN, RPN, heads, MaskRCNN), ``data`` (shapes, COCO, masks, RLE),
``evaluate`` (COCO-style AP), ``train``, ``inference``, ``visualize``, ``cli``.
"""
__version__ = "0.1.0"

from . import backend, gradcheck  # noqa: F401
from .boxes import (box_area, box_iou, clip_boxes, decode_boxes, encode_boxes,  # noqa: F401
                    remove_small_boxes)
from .nms import batched_nms, nms  # noqa: F401
from .ops.roi_align import roi_align, roi_align_max  # noqa: F401
from .ops.roi_pool import roi_pool  # noqa: F401
from .ops.roi_warp import roi_warp  # noqa: F401

__all__ = ["__version__", "backend", "gradcheck", "box_area", "box_iou", "clip_boxes", "decode_boxes",
           "encode_boxes", "remove_small_boxes", "nms", "batched_nms", "roi_align", "roi_align_max",
           "roi_pool", "roi_warp"]
