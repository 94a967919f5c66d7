"""mrcnn_ref — Mask R-CNN from scratch in NumPy, every backward pass written by hand.

Submodules: ``backend`` (NumPy/CuPy switch), ``gradcheck`` (finite differences), ``boxes``, ``nms``,
``anchors``, ``ops`` (forward/backward pairs), ``nn`` (layers, optimizer, checkpoints), ``model``,
``data``.
"""
__version__ = "0.1.0"

from . import backend, gradcheck  # noqa: F401
