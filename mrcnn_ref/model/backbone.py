"""ResNet backbone (C2..C5) and the ResNet-FPN feature pyramid (P2..P6).

ResNet layout (He et al., 2016)::

    stem:   conv 7×7 stride 2 (pad 3) → norm → relu → max-pool 3×3 stride 2 (pad 1)   stride 4
    layer1: blocks, stride 1                                                     → C2, stride 4
    layer2: blocks, first one stride 2                                           → C3, stride 8
    layer3: blocks, first one stride 2                                           → C4, stride 16
    layer4: blocks, first one stride 2                                           → C5, stride 32

Presets:

* :func:`resnet_fpn_tiny` — fast on a 2-core CPU for 128×128 images: stem 16 channels, one
  :class:`~mrcnn_ref.nn.blocks.BasicBlock` per stage, widths 16/32/64/128, FPN 64 channels,
  GroupNorm.
* :func:`resnet50_fpn` — the ResNet-50 layout (bottleneck blocks 3/4/6/3, widths 64/128/256/512
  expanded ×4 to 256…2048 channels, FPN 256 channels) as in the Mask R-CNN paper; frozen batch
  norm by default (the layout pretrained ImageNet weights expect).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_array_module
from ..nn.blocks import BasicBlock, Bottleneck, make_norm
from ..nn.init import as_generator
from ..nn.layers import Conv2d, MaxPool2d, ReLU
from ..nn.module import Module, Sequential
from .fpn import FPN

__all__ = ["ResNet", "ResNetFPN", "BackboneConfig", "TINY_CONFIG", "RESNET50_CONFIG",
           "resnet_fpn_tiny", "resnet50_fpn", "receptive_fields"]


@dataclass
class BackboneConfig:
    """Everything needed to rebuild a ResNet-FPN (JSON-able via :meth:`to_dict`)."""

    block: str = "basic"                 # "basic" or "bottleneck"
    layers: tuple = (1, 1, 1, 1)         # blocks per stage (layer1..layer4)
    stem_channels: int = 16
    widths: tuple = (16, 32, 64, 128)    # per stage; bottleneck output = 4 × width
    fpn_channels: int = 64
    norm: str = "gn"                     # "gn", "frozen_bn" or "none"
    gn_groups: int = 8
    dtype: str = "float32"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"], d["widths"] = list(self.layers), list(self.widths)
        return d

    @classmethod
    def from_any(cls, config) -> "BackboneConfig":
        if isinstance(config, cls):
            return config
        if isinstance(config, dict):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(config) - names)
            if unknown:
                raise ValueError(f"BackboneConfig: unknown key(s) {unknown}; known: {sorted(names)}")
            c = dict(config)
            for k in ("layers", "widths"):
                if k in c:
                    c[k] = tuple(int(v) for v in c[k])
            return cls(**c)
        raise TypeError(f"BackboneConfig: expected a BackboneConfig or dict, got {type(config).__name__}")


TINY_CONFIG = BackboneConfig()
RESNET50_CONFIG = BackboneConfig(block="bottleneck", layers=(3, 4, 6, 3), stem_channels=64,
                                 widths=(64, 128, 256, 512), fpn_channels=256, norm="frozen_bn",
                                 gn_groups=32)


class ResNet(Module):
    """``forward(x (N,3,H,W)) -> [C2, C3, C4, C5]`` (strides 4, 8, 16, 32);
    ``backward([dC2..dC5]) -> dx`` (``None`` entries count as zero).

    ``self.out_channels`` lists the channels of C2..C5. ``num_stages`` (1..4, default 4) builds only
    the first stages: 3 stops at C4 (stride 16), and forward/backward then take 3 maps.
    """

    def __init__(self, block="basic", layers=(1, 1, 1, 1), stem_channels=16, widths=(16, 32, 64, 128),
                 norm="gn", gn_groups=8, in_channels=3, rng=None, dtype=np.float32, num_stages=4):
        super().__init__()
        rng = as_generator(rng)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"ResNet: block must be 'basic' or 'bottleneck', got {block!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"ResNet: layers and widths need 4 entries (one per stage), got {layers}, {widths}")
        if num_stages not in (1, 2, 3, 4):
            raise ValueError(f"ResNet: num_stages must be 1, 2, 3 or 4, got {num_stages!r}")
        self.block_kind = block
        self.stem = Sequential(
            Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, stem_channels, gn_groups, dtype),
            ReLU(),
            MaxPool2d(3, stride=2, padding=1),
        )
        in_ch = stem_channels
        self.out_channels = []
        for s, (n_blocks, width) in enumerate(zip(layers[:num_stages], widths[:num_stages])):
            blocks = []
            for b in range(int(n_blocks)):
                stride = 2 if (s > 0 and b == 0) else 1
                if block == "basic":
                    blk = BasicBlock(in_ch, width, stride, norm, gn_groups, rng, dtype)
                else:
                    blk = Bottleneck(in_ch, width, 4 * width, stride, norm, gn_groups, rng, dtype)
                blocks.append(blk)
                in_ch = blk.out_ch
            setattr(self, f"layer{s + 1}", Sequential(*blocks))
            self.out_channels.append(in_ch)
        self.strides = [4, 8, 16, 32][:num_stages]

    def stages(self):
        return [getattr(self, f"layer{s + 1}") for s in range(len(self.strides))]

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for stage in self.stages():
            x = stage(x)
            feats.append(x)
        self._push([(f.shape, f.dtype) for f in feats])
        return feats

    def backward(self, grads, need_dx=True):
        """``grads [dC2..dC5]`` (None: zeros) -> ``d_images``; None with ``need_dx=False``, which
        skips the stem convolution's input gradient."""
        n = len(self.strides)
        if len(grads) != n:
            raise ValueError(f"{self.describe()}: backward expects {n} gradients (one per stage, "
                             f"[dC2..dC{n + 1}]), got {len(grads)}")
        meta = self._pop()
        xp = get_array_module(*grads)
        d = None
        for stage, g, (shape, dtype) in reversed(list(zip(self.stages(), grads, meta))):
            if g is None:
                g = xp.zeros(shape, dtype)
            d = g if d is None else d + g  # C_l feeds both the output list and the next stage
            d = stage.backward(d)
        for layer in reversed(self.stem.layers[1:]):
            d = layer.backward(d)
        return self.stem[0].backward(d, need_dx=need_dx)


class ResNetFPN(Module):
    """ResNet + FPN: ``forward(images (N,3,H,W)) -> [P2, P3, P4, P5, P6]`` (strides 4…64),
    ``backward([dP2..dP6]) -> d_images``.

    ``config``: a :class:`BackboneConfig` or a dict of its fields (e.g. from a checkpoint).
    Attributes: ``out_channels`` (FPN channels), ``strides`` ``[4, 8, 16, 32, 64]``, ``config``.
    """

    def __init__(self, config=None, rng=None):
        super().__init__()
        cfg = BackboneConfig.from_any(TINY_CONFIG if config is None else config)
        self.config = cfg
        rng = as_generator(rng)
        dtype = np.dtype(cfg.dtype)
        self.body = ResNet(cfg.block, cfg.layers, cfg.stem_channels, cfg.widths, cfg.norm,
                           cfg.gn_groups, rng=rng, dtype=dtype)
        self.fpn = FPN(self.body.out_channels, cfg.fpn_channels, rng=rng, dtype=dtype)
        self.out_channels = cfg.fpn_channels
        self.strides = [4, 8, 16, 32, 64]

    def extra_repr(self):
        return f"{self.config.block}, layers={list(self.config.layers)}, fpn={self.config.fpn_channels}"

    def forward(self, images):
        return self.fpn(self.body(images))

    def backward(self, grads, need_dx=True):
        return self.body.backward(self.fpn.backward(grads), need_dx=need_dx)


def resnet_fpn_tiny(rng=None, dtype=np.float32, **overrides) -> ResNetFPN:
    """The tiny preset (see module docstring); keyword overrides change config fields."""
    cfg = dict(TINY_CONFIG.to_dict(), dtype=np.dtype(dtype).name, **overrides)
    return ResNetFPN(cfg, rng=rng)


def resnet50_fpn(rng=None, dtype=np.float32, **overrides) -> ResNetFPN:
    """The ResNet-50-FPN layout (bottleneck 3/4/6/3, FPN 256 channels)."""
    cfg = dict(RESNET50_CONFIG.to_dict(), dtype=np.dtype(dtype).name, **overrides)
    return ResNetFPN(cfg, rng=rng)


def receptive_fields(model: ResNetFPN) -> dict:
    """Theoretical receptive field (pixels) and stride of every FPN level P2..P6.

    Walks the layers in forward order with the classic recursion
    ``rf += (k - 1) · jump``, ``jump *= stride`` (for each conv / pool of kernel k).
    Along a residual block the 3×3 branch dominates the 1×1 shortcut, so the branch is followed.
    For FPN level P_l the top-down pathway adds the coarser levels' (larger) fields, so
    ``RF(P_l) = max over m >= l of RF(C_m) after the 1×1 lateral`` plus the 3×3 output conv at
    the stride of level l (M_l's receptive field is that of C5 as soon as C5 is added in).
    Returns ``{"C2": (rf, stride), ..., "P6": (rf, stride)}``.
    """
    rf, jump = 1, 1

    def walk(mod):
        nonlocal rf, jump
        if isinstance(mod, (Conv2d, MaxPool2d)):
            k, s = mod.kernel_size[0], mod.stride[0]
            rf += (k - 1) * jump
            jump *= s
        elif isinstance(mod, (BasicBlock, Bottleneck)):
            walk(mod.branch)
        elif isinstance(mod, Sequential):
            for m in mod:
                walk(m)

    out = {}
    walk(model.body.stem)
    for i, stage in enumerate(model.body.stages()):
        walk(stage)
        out[f"C{i + 2}"] = (rf, jump)
    # Top-down: M_l sees C_l and (through upsampling) all coarser C's; nearest upsampling by 2
    # adds at most one coarse pixel, i.e. (2 - 1) * jump_coarse — we include it for an upper bound.
    extra_up = 0
    for lvl in range(5, 1, -1):
        rf_c, jump_c = out[f"C{lvl}"]
        if lvl < 5:
            extra_up += out[f"C{lvl + 1}"][1]  # one coarse pixel of nearest-neighbour replication
        m_rf = max(rf_c, out["C5"][0] + extra_up)
        out[f"P{lvl}"] = (m_rf + 2 * jump_c, jump_c)  # 3×3 output conv at this level's stride
    rf5, j5 = out["P5"]
    out["P6"] = (rf5, 2 * j5)  # kernel-1 pooling: same field, doubled stride
    return dict(sorted(out.items()))
