"""Single-level backbone: one ResNet map (C4 at stride 16 or C5 at stride 32), no FPN.

Before FPN, Faster/Mask R-CNN read every RoI from one feature map of the ResNet: the paper's
"ResNet-C4" model pools RoIs from the last map of stage 4 (stride 16), and its Table 2d compares
RoIPool and RoIAlign on the last map of stage 5 (stride 32). This module is that backbone::

    image (N, 3, H, W) ──stem, layer1..layer3──► C4 (N, C, H/16, W/16)        stride 16
                       ──          ..layer4 ──► C5 (N, C, H/32, W/32)        stride 32

``forward(images) -> [C]`` (a list of one map, so it drops into the code written for a pyramid);
``backward([dC], need_dx) -> d_images``. For stride 16 the ResNet is built with three stages only
(no unused layer4 parameters). The RPN and both RoI heads of :class:`~mrcnn_ref.model.mask_rcnn.MaskRCNN`
read this one map (``feature_mode = "single"``); there is no top-down pathway.

Differences from the paper's C4 model: its box head is ResNet's stage 5 on 14×14 RoI features
(the "res5 head"); ours keeps the config's two-FC box head and conv mask head on the RoI features
of this one map, so the single-level and FPN models differ only in where the RoI features come
from.
"""
from __future__ import annotations

import numpy as np

from ..nn.init import as_generator
from ..nn.module import Module
from .backbone import RESNET50_CONFIG, TINY_CONFIG, BackboneConfig, ResNet

__all__ = ["SingleLevelBackbone", "single_level_backbone", "SINGLE_STRIDES"]

#: The strides a single-level model may read: 16 (C4) or 32 (C5).
SINGLE_STRIDES = (16, 32)
_STAGES = {16: 3, 32: 4}


class SingleLevelBackbone(Module):
    """A ResNet cut at the stage of ``stride``: ``forward(images (N,3,H,W)) -> [C (N, C, H/s, W/s)]``,
    ``backward([dC], need_dx=True) -> d_images`` (None with ``need_dx=False``).

    ``config``: a :class:`~mrcnn_ref.model.backbone.BackboneConfig` or a dict of its fields
    (``fpn_channels`` is not used). Attributes: ``out_channels`` (channels of the map),
    ``strides`` ``[stride]``, ``config``.
    """

    def __init__(self, config=None, stride: int = 16, rng=None):
        super().__init__()
        if stride not in SINGLE_STRIDES:
            raise ValueError(f"SingleLevelBackbone: stride must be one of {SINGLE_STRIDES}, got {stride!r}")
        cfg = BackboneConfig.from_any(TINY_CONFIG if config is None else config)
        self.config = cfg
        self.body = ResNet(cfg.block, cfg.layers, cfg.stem_channels, cfg.widths, cfg.norm, cfg.gn_groups,
                           rng=as_generator(rng), dtype=np.dtype(cfg.dtype), num_stages=_STAGES[stride])
        self.out_channels = self.body.out_channels[-1]
        self.strides = [int(stride)]

    def extra_repr(self):
        return f"{self.config.block}, layers={list(self.config.layers)}, stride={self.strides[0]}"

    def forward(self, images):
        return [self.body(images)[-1]]

    def backward(self, grads, need_dx=True):
        if len(grads) != 1:
            raise ValueError(f"{self.describe()}: backward expects one gradient [dC], got {len(grads)}")
        n = len(self.body.strides)
        return self.body.backward([None] * (n - 1) + [grads[0]], need_dx=need_dx)


def single_level_backbone(preset: str, stride: int, rng=None, dtype=np.float32, **overrides):
    """The ResNet of a backbone preset (``"resnet_fpn_tiny"`` or ``"resnet50_fpn"``), cut at
    ``stride`` (16 or 32); keyword overrides change :class:`BackboneConfig` fields."""
    base = {"resnet_fpn_tiny": TINY_CONFIG, "resnet50_fpn": RESNET50_CONFIG}[preset]
    cfg = dict(base.to_dict(), dtype=np.dtype(dtype).name, **overrides)
    return SingleLevelBackbone(cfg, stride=stride, rng=rng)
