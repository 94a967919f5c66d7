"""Feature Pyramid Network (Lin et al., 2017) on top of a ResNet's C2..C5.

A ResNet gives a *pyramidal hierarchy* of maps — C2 (stride 4) … C5 (stride 32) — whose
resolution falls as their semantic strength rises. FPN gives every level strong semantics:

* **lateral** 1×1 convs bring each ``C_l`` to ``out_channels`` channels;
* a **top-down** pathway starts at the coarsest level and, level by level, upsamples (nearest
  neighbour, to the exact size of the next lateral map so odd sizes work) and adds the lateral:
  ``M5 = lat5(C5)``, ``M_l = lat_l(C_l) + up(M_{l+1})``;
* a 3×3 **output** conv (padding 1) on each ``M_l`` gives ``P_l`` (reduces upsampling aliasing);
* ``P6 = max_pool(P5, kernel 1, stride 2)`` — plain stride-2 subsampling, an extra coarse level
  for large anchors (as torchvision's ``LastLevelMaxPool``).

Shapes, for an ``(N, 3, H, W)`` image: ``P_l`` is ``(N, out_channels, ~H/2^l, ~W/2^l)``,
strides 4, 8, 16, 32, 64 for P2..P6.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module
from ..nn.layers import Conv2d, MaxPool2d
from ..nn.module import Module, ModuleList
from ..ops.upsample import upsample_nearest2d_backward, upsample_nearest2d_forward

__all__ = ["FPN"]


class FPN(Module):
    """``forward([C2..C5]) -> [P2, P3, P4, P5, P6]``; ``backward([dP2..dP6]) -> [dC2..dC5]``.

    Parameters are named ``lateral.<i>.weight/bias`` and ``output.<i>.weight/bias``
    (``i = 0`` for C2/P2 … ``3`` for C5/P5).
    """

    def __init__(self, in_channels_list, out_channels, rng=None, dtype=np.float32):
        super().__init__()
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.out_channels = int(out_channels)
        self.lateral = ModuleList([Conv2d(c, out_channels, 1, rng=rng, dtype=dtype)
                                   for c in self.in_channels_list])
        self.output = ModuleList([Conv2d(out_channels, out_channels, 3, padding=1, rng=rng, dtype=dtype)
                                  for _ in self.in_channels_list])
        self.p6 = MaxPool2d(1, stride=2)

    def extra_repr(self):
        return f"{self.in_channels_list}->{self.out_channels}"

    def forward(self, features):
        if not isinstance(features, (list, tuple)) or len(features) != len(self.lateral):
            raise ValueError(f"{self.describe()}: expected a list of {len(self.lateral)} feature maps "
                             f"[C2..C5], got {type(features).__name__} of length "
                             f"{len(features) if isinstance(features, (list, tuple)) else '?'}")
        n = len(features)
        up_caches = [None] * n
        outs = [None] * n
        inner = self.lateral[n - 1](features[n - 1])
        outs[n - 1] = self.output[n - 1](inner)
        for i in range(n - 2, -1, -1):
            lat = self.lateral[i](features[i])
            up, up_caches[i] = upsample_nearest2d_forward(inner, size=lat.shape[-2:])
            inner = lat + up
            outs[i] = self.output[i](inner)
        self._push((up_caches, [(o.shape, o.dtype) for o in outs]))
        return outs + [self.p6(outs[-1])]

    def backward(self, grads):
        """``grads = [dP2, ..., dP6]`` (``None`` entries count as zero) -> ``[dC2, ..., dC5]``."""
        n = len(self.lateral)
        if len(grads) != n + 1:
            raise ValueError(f"{self.describe()}: backward expects {n + 1} gradients [dP2..dP6], got {len(grads)}")
        up_caches, out_meta = self._pop()
        xp = get_array_module(*grads)
        dP = list(grads)
        if dP[n] is not None:  # P6 was computed from P5
            d5 = self.p6.backward(dP[n])
            dP[n - 1] = d5 if dP[n - 1] is None else dP[n - 1] + d5
        else:
            self.p6._pop()
        dC = [None] * n
        d_inner_from_below = None  # gradient reaching M_{l} from the finer level's upsampling
        for i in range(n):  # fine to coarse: reverse of the top-down order
            dPi = dP[i] if dP[i] is not None else xp.zeros(*out_meta[i])
            d_inner = self.output[i].backward(dPi)
            if d_inner_from_below is not None:
                d_inner = d_inner + d_inner_from_below
            dC[i] = self.lateral[i].backward(d_inner)
            if i < n - 1:
                # M_i = lat_i + up(M_{i+1}): the same d_inner flows into the upsampling
                d_inner_from_below = upsample_nearest2d_backward(d_inner, up_caches[i])
        return dC
