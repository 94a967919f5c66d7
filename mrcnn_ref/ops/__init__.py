"""Differentiable ops, each a pair ``name_forward(...) -> (out, cache)`` / ``name_backward(dout, cache)``.

Backwards return gradients in argument order (one array, or a tuple whose i-th entry is the
gradient of the i-th argument). Every pair is gradient-checked in float64 in ``tests/``.

=================  ==========================================================================
file               ops
=================  ==========================================================================
roi_align.py       roi_align, roi_align_max (the paper's max-over-samples variant)
roi_pool.py        roi_pool (Fast R-CNN's quantised max pooling)
roi_warp.py        roi_warp (bilinear sampling on quantised RoI coordinates)
roi_compare.py     compare_roi_ops: all four against the exact bin means of a known function
conv.py            conv2d, conv_transpose2d (im2col + one matmul)
linear.py          linear
activations.py     relu
pooling.py         max_pool2d
upsample.py        upsample_nearest2d (FPN top-down path)
elementwise.py     add (residuals, FPN merges)
norm.py            group_norm, frozen_batch_norm
losses.py          softmax cross-entropy, smooth L1, BCE with logits, mask losses
=================  ==========================================================================
"""
from .activations import relu_backward, relu_forward
from .conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                   conv_transpose2d_forward)
from .elementwise import add_backward, add_forward
from .linear import linear_backward, linear_forward
from .losses import (bce_with_logits_backward, bce_with_logits_forward, log_softmax, mask_loss_backward,
                     mask_loss_forward, mask_loss_softmax_backward, mask_loss_softmax_forward, sigmoid,
                     smooth_l1_backward, smooth_l1_forward, softmax_cross_entropy_backward,
                     softmax_cross_entropy_forward)
from .norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                   group_norm_forward)
from .pooling import max_pool2d_backward, max_pool2d_forward
from .roi_align import (roi_align_backward, roi_align_forward, roi_align_max,
                        roi_align_max_backward, roi_align_max_forward)
from .roi_compare import compare_roi_ops, linear_ramp_features
from .roi_pool import roi_pool_backward, roi_pool_forward
from .roi_warp import roi_warp_backward, roi_warp_forward
from .upsample import upsample_nearest2d_backward, upsample_nearest2d_forward

# The functional forms roi_align / roi_pool / roi_warp are exported from ``mrcnn_ref`` itself
# (as torchvision.ops does); here the names ``roi_align``, ``roi_pool``, ``roi_warp`` stay the
# submodules, so ``import mrcnn_ref.ops.roi_align`` keeps meaning the file.
__all__ = sorted(name for name, obj in dict(globals()).items()
                 if not name.startswith("_") and callable(obj) and not isinstance(obj, type(__builtins__)))
