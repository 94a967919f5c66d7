"""mrcnn_ref.model — the Mask R-CNN network.

Submodules: ``config`` (MaskRCNNConfig, presets, load_config), ``backbone`` / ``fpn`` (ResNet-FPN),
``rpn`` (RPN head, anchors per level, RPN targets/losses, proposals), ``targets`` (proposal
targets), ``multilevel_roi`` (FPN level assignment + RoI feature extraction), ``roi_heads`` (box and
mask heads, their losses, detection post-processing), ``mask_rcnn`` (the whole model).
"""
from .config import MaskRCNNConfig, load_config  # noqa: F401
from .mask_rcnn import MaskRCNN  # noqa: F401

__all__ = ["MaskRCNN", "MaskRCNNConfig", "load_config"]
