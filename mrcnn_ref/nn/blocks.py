"""Residual blocks (He et al., 2016): ``out = relu(branch(x) + shortcut(x))``.

* :class:`BasicBlock` (ResNet-18/34): branch = conv3×3(stride) → norm → relu → conv3×3 → norm.
* :class:`Bottleneck` (ResNet-50/101): branch = conv1×1 → norm → relu → conv3×3(stride) → norm →
  relu → conv1×1 (×4 channels) → norm. The stride sits on the 3×3 conv (the "ResNet v1.5" layout
  used by torchvision and Detectron2).

The shortcut is the identity when shapes agree, otherwise a strided 1×1 conv + norm
("projection shortcut"). Backward mirrors forward: the upstream gradient goes through the final
ReLU, then is sent *unchanged* down both paths of the addition, and the two input gradients add::

    d_sum = relu.backward(dout)
    dx    = branch.backward(d_sum) + shortcut.backward(d_sum)

Norm layers are chosen by name with :func:`make_norm`: ``"gn"`` (GroupNorm, trainable — the
default here, since it does not depend on batch size), ``"frozen_bn"`` (FrozenBatchNorm2d, as in
ImageNet-pretrained detectors) or ``"none"``.
"""
from __future__ import annotations

import math

import numpy as np

from .layers import Conv2d, FrozenBatchNorm2d, GroupNorm, Identity, ReLU
from .module import Module, Sequential

__all__ = ["make_norm", "BasicBlock", "Bottleneck"]


def make_norm(kind: str, channels: int, gn_groups: int = 32, dtype=np.float32) -> Module:
    """A normalisation layer for ``channels`` channels: ``"gn"``, ``"frozen_bn"`` or ``"none"``.

    For GroupNorm the number of groups is ``gcd(gn_groups, channels)`` so that it always divides
    the channel count (32 groups for 256 channels; 16 for 16 channels with ``gn_groups=32``).
    """
    if kind == "gn":
        return GroupNorm(math.gcd(int(gn_groups), int(channels)), channels, dtype=dtype)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels, dtype=dtype)
    if kind in ("none", None):
        return Identity()
    raise ValueError(f"make_norm: unknown norm {kind!r}; expected 'gn', 'frozen_bn' or 'none'")


class _Residual(Module):
    """``relu(branch(x) + shortcut(x))`` with explicit backward."""

    def _make_shortcut(self, in_ch, out_ch, stride, norm, gn_groups, rng, dtype):
        if stride == 1 and in_ch == out_ch:
            return Identity()
        return Sequential(Conv2d(in_ch, out_ch, 1, stride=stride, bias=False, rng=rng, dtype=dtype),
                          make_norm(norm, out_ch, gn_groups, dtype))

    def forward(self, x):
        s = self.branch(x) + self.shortcut(x)
        return self.relu(s)

    def backward(self, dout):
        d_sum = self.relu.backward(dout)
        return self.branch.backward(d_sum) + self.shortcut.backward(d_sum)

    def extra_repr(self):
        return f"{self.in_ch}->{self.out_ch}, stride={self.stride}"


class BasicBlock(_Residual):
    """Two 3×3 convs; ``in_ch -> out_ch``, spatial size divided by ``stride``."""

    expansion = 1

    def __init__(self, in_ch, out_ch, stride=1, norm="gn", gn_groups=32, rng=None, dtype=np.float32):
        super().__init__()
        self.in_ch, self.out_ch, self.stride = in_ch, out_ch, stride
        self.branch = Sequential(
            Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, out_ch, gn_groups, dtype),
            ReLU(),
            Conv2d(out_ch, out_ch, 3, padding=1, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, out_ch, gn_groups, dtype),
        )
        self.shortcut = self._make_shortcut(in_ch, out_ch, stride, norm, gn_groups, rng, dtype)
        self.relu = ReLU()


class Bottleneck(_Residual):
    """1×1 (reduce to ``mid_ch``) → 3×3 (stride) → 1×1 (expand to ``out_ch``, usually 4·mid_ch)."""

    expansion = 4

    def __init__(self, in_ch, mid_ch, out_ch, stride=1, norm="gn", gn_groups=32, rng=None,
                 dtype=np.float32):
        super().__init__()
        self.in_ch, self.mid_ch, self.out_ch, self.stride = in_ch, mid_ch, out_ch, stride
        self.branch = Sequential(
            Conv2d(in_ch, mid_ch, 1, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, mid_ch, gn_groups, dtype),
            ReLU(),
            Conv2d(mid_ch, mid_ch, 3, stride=stride, padding=1, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, mid_ch, gn_groups, dtype),
            ReLU(),
            Conv2d(mid_ch, out_ch, 1, bias=False, rng=rng, dtype=dtype),
            make_norm(norm, out_ch, gn_groups, dtype),
        )
        self.shortcut = self._make_shortcut(in_ch, out_ch, stride, norm, gn_groups, rng, dtype)
        self.relu = ReLU()
