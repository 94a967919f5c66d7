"""Layers: thin :class:`~mrcnn_ref.nn.module.Module` wrappers around the ops in :mod:`mrcnn_ref.ops`.

Each layer owns its parameters (PyTorch weight layouts), validates its input with a message that
names the layer — e.g. ``"Conv2d(3->16, k=3) 'stem.conv': expected input with 3 channels, got
shape (1, 4, 32, 32)"`` — calls the op's forward, pushes the op's cache, and in backward pops it,
accumulates the parameter gradients and returns ``dx``.

=====================  =========================  ============================================
layer                  parameters                 input -> output
=====================  =========================  ============================================
Conv2d                 weight (Cout,Cin,kh,kw),   (N,Cin,H,W) -> (N,Cout,H',W')
                       bias (Cout,)
ConvTranspose2d        weight (Cin,Cout,kh,kw),   (N,Cin,H,W) -> (N,Cout,H',W')
                       bias (Cout,)
Linear                 weight (out,in), bias      (N,in) -> (N,out)
ReLU, MaxPool2d,       —                          elementwise / pooling / (N,...) -> (N,prod)
Flatten, Identity
GroupNorm              weight (C,), bias (C,)     (N,C,H,W) -> same
FrozenBatchNorm2d      weight, bias,              (N,C,H,W) -> same; frozen (no param grads)
                       running_mean, running_var
=====================  =========================  ============================================
"""
from __future__ import annotations

import numpy as np

from .._checks import check_positive_int, pair
from ..ops.activations import relu_backward, relu_forward
from ..ops.conv import (conv2d_backward, conv2d_forward, conv_transpose2d_backward,
                        conv_transpose2d_forward)
from ..ops.linear import linear_backward, linear_forward
from ..ops.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                        group_norm_forward)
from ..ops.pooling import max_pool2d_backward, max_pool2d_forward
from . import init
from .module import Module

__all__ = ["Conv2d", "ConvTranspose2d", "Linear", "ReLU", "MaxPool2d", "GroupNorm",
           "FrozenBatchNorm2d", "Flatten", "Identity"]


def _fmt_pair(p):
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


class _Layer(Module):
    """Shared input checks and op-error translation for the leaf layers."""

    def _check_input(self, x, ndim=4, channels=None):
        where = self.describe()
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{where}: expected a NumPy/CuPy array as input, got {type(x).__name__}")
        if not x.dtype.kind == "f":
            raise TypeError(f"{where}: expected a floating-point input (float32/float64), got dtype {x.dtype}")
        dt = self.dtype
        if dt is not None and x.dtype != dt:
            raise TypeError(f"{where}: input dtype {x.dtype} does not match the layer's parameters "
                            f"({dt}); cast the input (x.astype) or the model (model.astype)")
        if x.ndim != ndim:
            want = {4: "(N, C, H, W)", 2: "(N, features)"}.get(ndim, f"{ndim}-D")
            raise ValueError(f"{where}: expected a {ndim}-D input {want}, got shape {tuple(x.shape)}")
        if channels is not None and x.shape[1] != channels:
            what = "channels" if ndim == 4 else "features"
            raise ValueError(f"{where}: expected input with {channels} {what}, got shape {tuple(x.shape)}")
        return x

    def _check_window(self, x, kernel, padding):
        H, W = x.shape[-2:]
        if H + 2 * padding[0] < kernel[0] or W + 2 * padding[1] < kernel[1]:
            raise ValueError(f"{self.describe()}: kernel {kernel} is larger than the padded input "
                             f"({H + 2 * padding[0]}, {W + 2 * padding[1]}) for input shape {tuple(x.shape)}")

    def _call_op(self, fn, *args, **kwargs):
        """Call an op, re-raising its TypeError/ValueError with this layer's name in front."""
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{self.describe()}: {e}") from e


class _ConvLayer(_Layer):
    """What Conv2d and ConvTranspose2d share: hyper-parameters, initialisation, repr, backward.

    Subclasses set ``_backward_op`` and ``_weight_shape(in_ch, out_ch, kh, kw)``.
    """

    _backward_op = None

    def __init__(self, where, in_ch, out_ch, kernel_size, stride, padding, bias, rng, dtype, init_std):
        super().__init__()
        self.in_ch = check_positive_int(in_ch, "in_ch", where)
        self.out_ch = check_positive_int(out_ch, "out_ch", where)
        self.kernel_size = pair(kernel_size, "kernel_size", where)
        self.stride = pair(stride, "stride", where)
        self.padding = pair(padding, "padding", where, allow_zero=True)
        kh, kw = self.kernel_size
        shape = self._weight_shape(self.in_ch, self.out_ch, kh, kw)
        if init_std is None:   # Kaiming normal, fan_out mode: fan_out = Cout * kh * kw for both layouts
            w = init.kaiming_normal(shape, fan_out=self.out_ch * kh * kw, rng=rng, dtype=dtype)
        else:
            w = init.normal(shape, init_std, rng=rng, dtype=dtype)
        self.add_param("weight", w)
        if bias:
            self.add_param("bias", init.zeros((self.out_ch,), dtype=dtype))

    @staticmethod
    def _weight_shape(in_ch, out_ch, kh, kw):
        raise NotImplementedError

    def extra_repr(self):
        s = f"{self.in_ch}->{self.out_ch}, k={_fmt_pair(self.kernel_size)}"
        if self.stride != (1, 1):
            s += f", s={_fmt_pair(self.stride)}"
        if self.padding != (0, 0):
            s += f", p={_fmt_pair(self.padding)}"
        return s

    def backward(self, dout, need_dx=True):
        """Accumulates the parameter gradients, returns ``dx`` — or None with ``need_dx=False``
        (the op then skips computing it: for a first layer, whose input is the image)."""
        dx, dw, db = type(self)._backward_op(dout, self._pop(), need_dx=need_dx)
        self._accumulate("weight", dw)
        if "bias" in self.params:
            self._accumulate("bias", db)
        return dx


class Conv2d(_ConvLayer):
    """2-D convolution (cross-correlation), PyTorch layout: weight ``(Cout, Cin, kh, kw)``.

    ``init_std=None`` -> Kaiming normal, fan_out mode (as torchvision's ResNet); a float ->
    ``N(0, init_std²)``. Bias starts at 0. Output size ``H' = (H + 2p - kh) // s + 1``.
    """

    _backward_op = staticmethod(conv2d_backward)

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, bias=True, rng=None,
                 dtype=np.float32, init_std=None):
        super().__init__("Conv2d", in_ch, out_ch, kernel_size, stride, padding, bias, rng, dtype, init_std)

    @staticmethod
    def _weight_shape(in_ch, out_ch, kh, kw):
        return (out_ch, in_ch, kh, kw)

    def forward(self, x):
        self._check_input(x, 4, self.in_ch)
        self._check_window(x, self.kernel_size, self.padding)
        out, cache = self._call_op(conv2d_forward, x, self.params["weight"], self.params.get("bias"),
                                   stride=self.stride, padding=self.padding)
        self._push(cache)
        return out


class ConvTranspose2d(_ConvLayer):
    """Transposed convolution, PyTorch layout: weight ``(Cin, Cout, kh, kw)``.

    Output size ``H' = (H - 1) s - 2p + kh + output_padding``. Init as :class:`Conv2d`
    (Kaiming fan_out with ``fan_out = Cout * kh * kw``, or ``N(0, init_std²)``).
    """

    _backward_op = staticmethod(conv_transpose2d_backward)

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, padding=0, output_padding=0, bias=True,
                 rng=None, dtype=np.float32, init_std=None):
        super().__init__("ConvTranspose2d", in_ch, out_ch, kernel_size, stride, padding, bias, rng,
                         dtype, init_std)
        self.output_padding = pair(output_padding, "output_padding", "ConvTranspose2d", allow_zero=True)

    @staticmethod
    def _weight_shape(in_ch, out_ch, kh, kw):
        return (in_ch, out_ch, kh, kw)

    def forward(self, x):
        self._check_input(x, 4, self.in_ch)
        out, cache = self._call_op(conv_transpose2d_forward, x, self.params["weight"],
                                   self.params.get("bias"), stride=self.stride, padding=self.padding,
                                   output_padding=self.output_padding)
        self._push(cache)
        return out


class Linear(_Layer):
    """Fully connected layer ``y = x W^T + b``, weight ``(out_f, in_f)``, input ``(N, in_f)``."""

    def __init__(self, in_f, out_f, bias=True, rng=None, dtype=np.float32, init_std=None):
        super().__init__()
        self.in_f = check_positive_int(in_f, "in_f", "Linear")
        self.out_f = check_positive_int(out_f, "out_f", "Linear")
        shape = (self.out_f, self.in_f)
        if init_std is None:
            w = init.kaiming_normal(shape, fan_out=self.out_f, rng=rng, dtype=dtype)
        else:
            w = init.normal(shape, init_std, rng=rng, dtype=dtype)
        self.add_param("weight", w)
        if bias:
            self.add_param("bias", init.zeros((self.out_f,), dtype=dtype))

    def extra_repr(self):
        return f"{self.in_f}->{self.out_f}"

    def forward(self, x):
        self._check_input(x, 2, self.in_f)
        out, cache = self._call_op(linear_forward, x, self.params["weight"], self.params.get("bias"))
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dw, db = linear_backward(dout, self._pop())
        self._accumulate("weight", dw)
        if "bias" in self.params:
            self._accumulate("bias", db)
        return dx


class ReLU(_Layer):
    """``max(x, 0)`` elementwise (any shape)."""

    def forward(self, x):
        if not hasattr(x, "dtype") or not x.dtype.kind == "f":
            raise TypeError(f"{self.describe()}: expected a floating-point array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        out, cache = relu_forward(x)
        self._push(cache)
        return out

    def backward(self, dout):
        return relu_backward(dout, self._pop())


class MaxPool2d(_Layer):
    """Max pooling over ``kernel_size`` windows (``stride`` defaults to ``kernel_size``)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size", "MaxPool2d")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", "MaxPool2d")
        self.padding = pair(padding, "padding", "MaxPool2d", allow_zero=True)

    def extra_repr(self):
        return f"k={_fmt_pair(self.kernel_size)}, s={_fmt_pair(self.stride)}, p={_fmt_pair(self.padding)}"

    def forward(self, x):
        self._check_input(x, 4)
        self._check_window(x, self.kernel_size, self.padding)
        out, cache = self._call_op(max_pool2d_forward, x, self.kernel_size, stride=self.stride,
                                   padding=self.padding)
        self._push(cache)
        return out

    def backward(self, dout):
        return max_pool2d_backward(dout, self._pop())


class GroupNorm(_Layer):
    """Group normalisation (Wu & He, 2018): statistics over ``C / num_groups`` channels × H × W
    per sample, then a per-channel affine ``weight`` (init 1) and ``bias`` (init 0)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_groups = check_positive_int(num_groups, "num_groups", "GroupNorm")
        self.num_channels = check_positive_int(num_channels, "num_channels", "GroupNorm")
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({num_channels}) must be divisible by "
                             f"num_groups ({num_groups})")
        self.eps = float(eps)
        self.add_param("weight", init.ones((self.num_channels,), dtype=dtype))
        self.add_param("bias", init.zeros((self.num_channels,), dtype=dtype))

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}"

    def forward(self, x):
        self._check_input(x, 4, self.num_channels)
        out, cache = self._call_op(group_norm_forward, x, self.params["weight"], self.params["bias"],
                                   self.num_groups, eps=self.eps)
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = group_norm_backward(dout, self._pop())
        self._accumulate("weight", dgamma)
        self._accumulate("bias", dbeta)
        return dx


class FrozenBatchNorm2d(_Layer):
    """Batch norm with fixed statistics and affine: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    All four vectors are stored in ``params`` (so checkpoints and :meth:`load_parameters` carry
    them), but the layer is created frozen (``requires_grad = False``): its gradients stay zero
    and, having ``ndim == 1``, they get no weight decay either, so SGD never changes them.
    """

    def __init__(self, num_channels, eps=1e-5, dtype=np.float32):
        super().__init__()
        self.num_channels = check_positive_int(num_channels, "num_channels", "FrozenBatchNorm2d")
        self.eps = float(eps)
        C = self.num_channels
        self.add_param("weight", init.ones((C,), dtype=dtype))
        self.add_param("bias", init.zeros((C,), dtype=dtype))
        self.add_param("running_mean", init.zeros((C,), dtype=dtype))
        self.add_param("running_var", init.ones((C,), dtype=dtype))
        self.requires_grad = False

    def extra_repr(self):
        return f"{self.num_channels}"

    def forward(self, x):
        self._check_input(x, 4, self.num_channels)
        p = self.params
        out, cache = self._call_op(frozen_batch_norm_forward, x, p["weight"], p["bias"],
                                   p["running_mean"], p["running_var"], eps=self.eps)
        self._push(cache)
        return out

    def backward(self, dout):
        dx, dgamma, dbeta = frozen_batch_norm_backward(dout, self._pop())
        self._accumulate("weight", dgamma)
        self._accumulate("bias", dbeta)
        return dx


class Flatten(_Layer):
    """``(N, ...) -> (N, prod(...))``."""

    def forward(self, x):
        if not hasattr(x, "shape") or x.ndim < 1:
            raise ValueError(f"{self.describe()}: expected an array with a batch axis, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        self._push(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self._pop())


class Identity(_Layer):
    """Returns its input (a placeholder where a block has no shortcut projection)."""

    def forward(self, x):
        return x

    def backward(self, dout):
        return dout

