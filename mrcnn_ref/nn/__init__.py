"""mrcnn_ref.nn — layers over the op pairs, residual blocks, SGD/AdamW + schedules, safe checkpoints.

* :mod:`~mrcnn_ref.nn.module` — ``Module`` (params/grads dicts, LIFO cache stack), ``Sequential``,
  ``ModuleList``;
* :mod:`~mrcnn_ref.nn.layers` — ``Conv2d``, ``ConvTranspose2d``, ``Linear``, ``ReLU``,
  ``MaxPool2d``, ``GroupNorm``, ``FrozenBatchNorm2d``, ``Flatten``, ``Identity``;
* :mod:`~mrcnn_ref.nn.blocks` — ``BasicBlock``, ``Bottleneck``, ``make_norm``;
* :mod:`~mrcnn_ref.nn.init` — Kaiming / normal initialisation from a seeded generator;
* :mod:`~mrcnn_ref.nn.optim` — ``SGD``, ``AdamW``, ``WarmupMultiStepLR``, ``WarmupCosineLR``,
  ``clip_grad_norm``, ``global_grad_norm``;
* :mod:`~mrcnn_ref.nn.checkpoint` — ``save_checkpoint`` / ``load_checkpoint``.
"""
from .blocks import BasicBlock, Bottleneck, make_norm
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .layers import (Conv2d, ConvTranspose2d, Flatten, FrozenBatchNorm2d, GroupNorm, Identity, Linear,
                     MaxPool2d, ReLU)
from .module import Module, ModuleList, Sequential
from .optim import SGD, AdamW, WarmupCosineLR, WarmupMultiStepLR, clip_grad_norm, global_grad_norm

__all__ = ["Module", "Sequential", "ModuleList", "Conv2d", "ConvTranspose2d", "Linear", "ReLU", "MaxPool2d",
           "GroupNorm", "FrozenBatchNorm2d", "Flatten", "Identity", "BasicBlock", "Bottleneck", "make_norm",
           "SGD", "AdamW", "WarmupMultiStepLR", "WarmupCosineLR", "clip_grad_norm", "global_grad_norm",
           "save_checkpoint",
           "load_checkpoint", "CheckpointError"]
