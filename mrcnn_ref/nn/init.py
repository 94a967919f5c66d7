"""Parameter initialisation from a seeded ``np.random.Generator`` (always on the host, then cast).

* :func:`kaiming_normal` — He et al. (2015): ``N(0, 2 / fan)`` keeps the activation variance
  constant through ReLU layers. Like torchvision's ResNet we use ``mode="fan_out"``:
  ``fan_out = out_channels * kh * kw`` (the number of outputs each input value feeds).
* :func:`normal` — ``N(0, std²)`` with a fixed std (the detection heads' predictors use small
  std: 0.01 for class scores, 0.001 for box deltas, so training starts from near-zero outputs).
* biases start at 0; normalisation layers start at weight 1, bias 0.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["as_generator", "kaiming_normal", "normal", "zeros", "ones"]


def as_generator(rng) -> np.random.Generator:
    """``None`` -> a fresh default generator (seed 0, reproducible); an int -> seeded; a Generator -> itself."""
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be None, an int seed or a np.random.Generator, got {type(rng).__name__}")


def kaiming_normal(shape, fan_out: int, rng=None, dtype=np.float32):
    """Array of ``shape`` drawn from ``N(0, 2 / fan_out)`` (ReLU gain, fan_out mode)."""
    std = math.sqrt(2.0 / fan_out)
    return (as_generator(rng).standard_normal(shape) * std).astype(dtype)


def normal(shape, std: float, rng=None, dtype=np.float32):
    """Array of ``shape`` drawn from ``N(0, std²)``."""
    return (as_generator(rng).standard_normal(shape) * float(std)).astype(dtype)


def zeros(shape, dtype=np.float32):
    return np.zeros(shape, dtype=dtype)


def ones(shape, dtype=np.float32):
    return np.ones(shape, dtype=dtype)
