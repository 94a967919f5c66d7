"""2-D convolution and transposed convolution, forward and backward, as im2col + one matrix product.

Convolution (really cross-correlation, as in every deep-learning library) of an input
``x (N, Cin, H, W)`` with a weight ``w (Cout, Cin, kh, kw)``::

    out[n, o, i, j] = b[o] + sum_{c, u, v} w[o, c, u, v] * xpad[n, c, i*sh + u, j*sw + v]

with ``xpad`` the input zero-padded by ``padding`` on every side and the output size
``Ho = (H + 2*ph - kh) // sh + 1`` (and likewise ``Wo``).

**im2col.** Gather every ``Cin x kh x kw`` window of ``xpad`` into one column of a matrix
``cols (Cin*kh*kw, N*Ho*Wo)``; the convolution is then a single matrix product::

    out2d (Cout, N*Ho*Wo) = w.reshape(Cout, Cin*kh*kw) @ cols

The windows are a zero-copy strided view of ``xpad`` (``as_strided``: the window axes reuse
the image axes' strides); making the column matrix contiguous is the one copy im2col costs, after
which BLAS does all the arithmetic.

**Backward.** With ``dout (N, Cout, Ho, Wo)``:

* ``db = dout.sum((0, 2, 3))``;
* ``dw = dout2d (Cout, N*Ho*Wo) @ cols.T`` — the same windows, one more matrix product. The
  forward's column matrix is kept in the cache so backward does not build it again (building it
  is ~10% of a 3×3 convolution's forward+backward). It is ``kh*kw`` times larger than the input;
  set :data:`CACHE_COLUMNS` to ``False`` to keep only the padded input and rebuild it instead
  (less memory, a little more time);
* ``dx`` is itself a convolution: spread ``dout`` back to the input grid by *dilating* it with the
  stride (``stride - 1`` zeros between entries), pad it by ``k - 1 - padding`` and correlate it,
  with stride 1, with the kernel rotated by 180° and with its in/out channels swapped
  (``w_t[c, o, u, v] = w[o, c, kh-1-u, kw-1-v]``). When ``(H + 2p - kh) % stride != 0`` the last
  rows/cols of the input were never touched by a window; their gradient is zero, which we get by
  padding the dilated gradient by that many extra rows/cols at the bottom/right. No scatter is
  needed: it is im2col + one matrix product again.

  With a stride s > 1 the dilated gradient is mostly zeros (s*s times more work), and with
  Cout > Cin its column matrix is larger than the forward one. Then the equivalent *col2im* form
  is cheaper: ``dcols = w2d.T @ dout2d`` and each column is added back into its window (a loop
  over the kh*kw kernel offsets, each a vectorised strided add). The ``dx_method`` argument chooses; "auto"
  picks the smaller temporary.

  When the kernel *equals* the stride and there is no padding (Mask R-CNN's 2×2, stride-2
  deconvolution in the mask head) the windows tile the input without overlap: every input
  pixel belongs to exactly one window, at one kernel offset. Then ``dx`` is one matrix
  product per image, ``(Cin*kh*kw, Cout) @ dout[n] (Cout, Ho*Wo)``, whose ``kh*kw`` blocks are
  written straight into their pixels — no dilation, no zero-filled buffer, no adds
  (``"auto"``'s choice for that case; same numbers).

**Transposed convolution** (``conv_transpose2d``) *is* that input-gradient computation, used as a
forward op: it maps ``(N, Cin, H, W)`` to ``(N, Cout, (H-1)*s - 2p + kh + output_padding, ...)``
with a weight ``(Cin, Cout, kh, kw)`` (PyTorch's layout). Its backward is therefore the forward
convolution: see :func:`conv_transpose2d_forward`.

All functions are array-module generic (NumPy or CuPy via ``xp``) and keep the input dtype
(float32 stays float32).
"""
from __future__ import annotations

from .._checks import check_array, pair
from ..backend import get_array_module

__all__ = [
    "conv2d_forward",
    "conv2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "conv2d_output_size",
    "im2col",
]


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def conv2d_output_size(h: int, w: int, kernel_size, stride=1, padding=0) -> tuple[int, int]:
    """Output spatial size ``((h + 2p - kh) // sh + 1, (w + 2p - kw) // sw + 1)`` of a convolution."""
    kh, kw = pair(kernel_size, "kernel_size", "conv2d_output_size")
    sh, sw = pair(stride, "stride", "conv2d_output_size")
    ph, pw = pair(padding, "padding", "conv2d_output_size", allow_zero=True)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _pad_crop(x, top: int, bottom: int, left: int, right: int, dilation=(1, 1)):
    """Dilate ``x (N, C, H, W)`` by ``dilation`` (insert d-1 zeros between entries), then pad
    (positive amounts, zeros) or crop (negative amounts) each side. One allocation."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    dh, dw = dilation
    hd, wd = (h - 1) * dh + 1, (w - 1) * dw + 1
    out = xp.zeros((n, c, hd + max(top, 0) + max(bottom, 0), wd + max(left, 0) + max(right, 0)),
                   dtype=x.dtype)
    t, l0 = max(top, 0), max(left, 0)
    out[:, :, t:t + hd:dh, l0:l0 + wd:dw] = x
    ct, cl = max(-top, 0), max(-left, 0)
    cb, cr = max(-bottom, 0), max(-right, 0)
    if ct or cl or cb or cr:
        out = out[:, :, ct:out.shape[2] - cb, cl:out.shape[3] - cr]
    return out


def im2col(xpad, kh: int, kw: int, sh: int, sw: int):
    """Column matrix of an (already padded) input ``xpad (N, C, Hp, Wp)``.

    Returns ``(cols, (Ho, Wo))`` with ``cols (C*kh*kw, N*Ho*Wo)`` C-contiguous: column
    ``(n, i, j)`` holds the window ``xpad[n, :, i*sh:i*sh+kh, j*sw:j*sw+kw]`` flattened in
    ``(c, u, v)`` order — the same order as ``w.reshape(Cout, C*kh*kw)``.
    """
    xp = get_array_module(xpad)
    n, c, hp, wp = xpad.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    # (N, C, Ho, Wo, kh, kw): a view, no copy. Element (n, c, i, j, u, v) is
    # xpad[n, c, i*sh + u, j*sw + v], so its strides are those of xpad with the two image axes
    # repeated: stepped by the stride for (i, j), by one pixel for (u, v).
    s_n, s_c, s_h, s_w = xpad.strides
    win = xp.lib.stride_tricks.as_strided(xpad, (n, c, ho, wo, kh, kw),
                                          (s_n, s_c, sh * s_h, sw * s_w, s_h, s_w))
    # (C, kh, kw, N, Ho, Wo): the innermost axis walks along image rows, so the copy streams
    cols = xp.ascontiguousarray(win.transpose(1, 4, 5, 0, 2, 3))
    return cols.reshape(c * kh * kw, n * ho * wo), (ho, wo)


def _correlate(xpad, w2d, kh, kw, sh, sw):
    """``out (N, Cout, Ho, Wo)`` = correlation of ``xpad`` with ``w2d (Cout, C*kh*kw)``; also the cols."""
    n = xpad.shape[0]
    cols, (ho, wo) = im2col(xpad, kh, kw, sh, sw)
    out2d = w2d @ cols                                   # one big BLAS call
    out = out2d.reshape(w2d.shape[0], n, ho, wo).transpose(1, 0, 2, 3)
    return get_array_module(xpad).ascontiguousarray(out), cols


def _input_grad_transposed(dout, w, in_hw, stride, padding):
    """``dx`` as a convolution: dilate ``dout`` by the stride, pad it by ``k - 1 - p`` (plus the
    leftover rows/cols at the bottom/right), correlate with the 180°-rotated kernel whose in/out
    channels are swapped. im2col + one matrix product."""
    cout, cin, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    h, wd = in_hw
    ho, wo = dout.shape[2], dout.shape[3]
    rh = h + 2 * ph - kh - (ho - 1) * sh                 # leftover rows never reached by a window
    rw = wd + 2 * pw - kw - (wo - 1) * sw
    dpad = _pad_crop(dout, kh - 1 - ph, kh - 1 - ph + rh, kw - 1 - pw, kw - 1 - pw + rw,
                     dilation=(sh, sw))
    w_rot = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)   # (Cin, Cout, kh, kw)
    w2d = get_array_module(w).ascontiguousarray(w_rot).reshape(cin, cout * kh * kw)
    dx, _ = _correlate(dpad, w2d, kh, kw, 1, 1)
    return dx


def _input_grad_col2im(dout, w, in_hw, stride, padding):
    """``dx`` the other way round: ``dcols = w2d.T @ dout2d`` (one matrix product), then add every
    column back into the window it was read from (*col2im*). The fold loops over the ``kh*kw``
    kernel offsets only; each step is one strided, vectorised add over all images, channels and
    output pixels (windows of the same offset never overlap, so no scatter is needed)."""
    xp = get_array_module(dout)
    cout, cin, kh, kw = w.shape
    sh, sw = stride
    ph, pw = padding
    h, wd = in_hw
    n, _, ho, wo = dout.shape
    dout2d = xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(cout, n * ho * wo)
    dcols = (w.reshape(cout, cin * kh * kw).T @ dout2d).reshape(cin, kh, kw, n, ho, wo)
    dxpad = xp.zeros((cin, n, h + 2 * ph, wd + 2 * pw), dtype=dout.dtype)
    for u in range(kh):
        for v in range(kw):
            dxpad[:, :, u:u + (ho - 1) * sh + 1:sh, v:v + (wo - 1) * sw + 1:sw] += dcols[:, u, v]
    dx = dxpad[:, :, ph:ph + h, pw:pw + wd].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(dx)


def _input_grad_tiled(dout, w, in_hw):
    """``dx`` when the windows tile the input (kernel == stride, no padding, no leftover
    rows/cols): input pixel ``(i*kh + u, j*kw + v)`` receives only ``w[:, :, u, v]^T dout[:, :, i, j]``.
    One batched matrix product, then each kernel offset's block is copied to its pixels."""
    xp = get_array_module(dout)
    cout, cin, kh, kw = w.shape
    n, _, ho, wo = dout.shape
    # (N, Cin*kh*kw, Ho*Wo) = (Cin*kh*kw, Cout) @ (N, Cout, Ho*Wo)
    blocks = xp.matmul(w.reshape(cout, cin * kh * kw).T, dout.reshape(n, cout, ho * wo))
    blocks = blocks.reshape(n, cin, kh, kw, ho, wo)
    dx = xp.empty((n, cin) + tuple(in_hw), dtype=dout.dtype)
    for u in range(kh):
        for v in range(kw):
            dx[:, :, u::kh, v::kw] = blocks[:, :, u, v]
    return dx


def _tiles(w, in_hw, out_hw, stride, padding):
    """Whether a convolution's windows tile its input exactly (kernel == stride, no padding)."""
    kh, kw = w.shape[2:]
    return ((kh, kw) == tuple(stride) and tuple(padding) == (0, 0)
            and tuple(in_hw) == (out_hw[0] * kh, out_hw[1] * kw))


#: How :func:`conv2d_backward` (and so :func:`conv_transpose2d_forward`) computes ``dx``, their
#: ``dx_method`` argument: ``"transposed"`` (dilate + flipped-kernel convolution), ``"col2im"``, or
#: ``"auto"``: the transposed convolution unless col2im needs a smaller temporary matrix — which
#: is the case for every stride > 1 (the dilated gradient is mostly zeros: s*s times more work)
#: and when Cout > Cin — or, when the windows tile the input (kernel == stride, no padding), the
#: direct per-pixel product (:func:`_input_grad_tiled`). All give the same numbers (tested
#: against each other and against PyTorch).
DX_METHODS = ("auto", "transposed", "col2im")


def _input_grad(dout, w, in_hw, stride, padding, method="auto"):
    """Gradient of ``conv2d(x, w, stride, padding)`` w.r.t. ``x (N, Cin, H, W)``, given ``dout``.

    Dispatches on ``method`` (:data:`DX_METHODS`) to :func:`_input_grad_transposed` or
    :func:`_input_grad_col2im` ("auto": or :func:`_input_grad_tiled` when the windows tile).
    """
    if method not in DX_METHODS:
        raise ValueError(f"conv2d_backward: dx_method must be one of {DX_METHODS}, got {method!r}")
    if method == "auto" and _tiles(w, in_hw, dout.shape[2:], stride, padding):
        return _input_grad_tiled(dout, w, in_hw)
    if method == "auto":
        cout, cin, kh, kw = w.shape
        h, wd = in_hw
        # elements of the column matrix each method builds (both multiply it with a weight matrix)
        transposed = cout * kh * kw * h * wd
        col2im = cin * kh * kw * dout.shape[2] * dout.shape[3]
        method = "col2im" if col2im < transposed else "transposed"
    if method == "transposed":
        return _input_grad_transposed(dout, w, in_hw, stride, padding)
    return _input_grad_col2im(dout, w, in_hw, stride, padding)


def _weight_grad(dout, cols, kh, kw, cin):
    """``dw (Cout, Cin, kh, kw)`` = ``dout2d (Cout, N*Ho*Wo) @ cols.T`` (one matrix product).

    Computed as its transpose, ``(cols @ dout2d.T).T``: the same numbers, but OpenBLAS runs this
    long-and-thin product (inner dimension N*Ho*Wo, output only Cout x Cin*kh*kw) 15-60 % faster
    with the larger dimension as the rows of the result (measured on the project's machines)."""
    xp = get_array_module(dout)
    cout = dout.shape[1]
    dout2d = xp.ascontiguousarray(dout.transpose(1, 0, 2, 3)).reshape(cout, -1)
    return xp.ascontiguousarray((cols @ dout2d.T).T).reshape(cout, cin, kh, kw)


#: Whether :func:`conv2d_forward` keeps its column matrix for the backward pass (faster) or only
#: the padded input (``kh*kw`` times less memory for a ``kh x kw`` kernel). Same numbers either way.
CACHE_COLUMNS = True


def _validate(where, x, w, b, stride, padding, x_channels_axis_of_w):
    check_array(x, "x", where, ndim=4, floating=True)
    check_array(w, "w", where, ndim=4, floating=True)
    if x.dtype != w.dtype:
        raise TypeError(f"{where}: x and w must have the same dtype, got x {x.dtype} and w {w.dtype} "
                        f"(cast one of them explicitly)")
    cin_w = w.shape[x_channels_axis_of_w]
    if x.shape[1] != cin_w:
        raise ValueError(f"{where}: channel mismatch: x has Cin={x.shape[1]} (shape {tuple(x.shape)}) "
                         f"but w expects {cin_w} (w shape {tuple(w.shape)})")
    cout = w.shape[1 - x_channels_axis_of_w]
    if b is not None:
        check_array(b, "b", where, shape=(cout,), floating=True)
        if b.dtype != x.dtype:
            raise TypeError(f"{where}: b must have the dtype of x ({x.dtype}), got {b.dtype}")
    return pair(stride, "stride", where), pair(padding, "padding", where, allow_zero=True)


# ---------------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------------
def conv2d_forward(x, w, b=None, stride=1, padding=0):
    """2-D convolution (cross-correlation), NCHW, PyTorch weight layout.

    Parameters
    ----------
    x : (N, Cin, H, W) float array.
    w : (Cout, Cin, kh, kw) array of the same dtype.
    b : (Cout,) array or None.
    stride, padding : int or (h, w) pair; zero padding on both sides.

    Returns
    -------
    out : (N, Cout, Ho, Wo) with ``Ho = (H + 2*ph - kh) // sh + 1``.
    cache : what :func:`conv2d_backward` needs (the column matrix — or, with
        :data:`CACHE_COLUMNS` off, the padded input — shapes, weight).
    """
    where = "conv2d_forward"
    (sh, sw), (ph, pw) = _validate(where, x, w, b, stride, padding, 1)
    n, cin, h, wd = x.shape
    cout, _, kh, kw = w.shape
    if kh > h + 2 * ph or kw > wd + 2 * pw:
        raise ValueError(f"{where}: kernel ({kh}, {kw}) is larger than the padded input "
                         f"({h + 2 * ph}, {wd + 2 * pw}) (x shape {tuple(x.shape)}, padding {(ph, pw)})")
    xpad = _pad_crop(x, ph, ph, pw, pw) if (ph or pw) else x
    out, cols = _correlate(xpad, w.reshape(cout, cin * kh * kw), kh, kw, sh, sw)
    if b is not None:
        out += b.reshape(1, cout, 1, 1)
    kept = ("cols", cols) if CACHE_COLUMNS else ("xpad", xpad)
    cache = (kept, (h, wd), w, (sh, sw), (ph, pw), b is not None)
    return out, cache


def conv2d_backward(dout, cache, need_dx=True, dx_method="auto"):
    """Gradients of :func:`conv2d_forward`.

    dout : (N, Cout, Ho, Wo). Returns ``(dx (N, Cin, H, W), dw (Cout, Cin, kh, kw), db (Cout,) or None)``.
    ``need_dx=False`` skips ``dx`` (returned as None) where nothing needs it — the first layer's
    input is the image — which saves the backward's second matrix product. ``dx_method``: how
    ``dx`` is computed (:data:`DX_METHODS`; the same numbers).
    """
    (kind, kept), in_hw, w, stride, padding, has_bias = cache
    cout, cin, kh, kw = w.shape
    cols = kept if kind == "cols" else im2col(kept, kh, kw, *stride)[0]
    dw = _weight_grad(dout, cols, kh, kw, cin)
    del cols                                             # a rebuilt one is freed before dx builds its own
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    dx = _input_grad(dout, w, in_hw, stride, padding, dx_method) if need_dx else None
    return dx, dw, db


# ---------------------------------------------------------------------------------------------
# conv_transpose2d
# ---------------------------------------------------------------------------------------------
def conv_transpose2d_forward(x, w, b=None, stride=1, padding=0, output_padding=0, dx_method="auto"):
    """Transposed convolution ("deconvolution"), NCHW, PyTorch weight layout.

    A transposed convolution is *the backward of a convolution with respect to its input*. Take
    the convolution ``conv2d(y, w, stride, padding)`` whose weight ``w (Cin, Cout, kh, kw)`` maps
    ``Cout`` channels to ``Cin`` channels. It sends an image ``y (N, Cout, Hout, Wout)`` to
    ``(N, Cin, H, W)``; its input gradient sends ``(N, Cin, H, W)`` back to ``(N, Cout, Hout, Wout)``.
    That input gradient, applied to ``x``, is ``conv_transpose2d(x, w)``: so this function literally
    calls :func:`conv2d_backward`'s ``dx`` computation (dilate ``x`` by the stride, pad, correlate
    with the flipped kernel). ``output_padding`` picks ``Hout`` among the sizes that all convolve
    down to ``H`` — it plays the role of conv2d's leftover rows/cols.

    Consequently its backward is the forward convolution: ``dx = conv2d(dout, w, stride, padding)``,
    ``dw`` is the weight gradient of that convolution with ``x`` in the role of its output
    gradient (same windows of ``dout``, one matrix product), ``db = dout.sum((0, 2, 3))``.

    Parameters
    ----------
    x : (N, Cin, H, W). w : (Cin, Cout, kh, kw). b : (Cout,) or None.
    stride, padding, output_padding : int or pair; ``output_padding < stride`` (as in PyTorch).

    Returns
    -------
    out : (N, Cout, Hout, Wout), ``Hout = (H - 1)*sh - 2*ph + kh + oph``. cache.
    """
    where = "conv_transpose2d_forward"
    (sh, sw), (ph, pw) = _validate(where, x, w, b, stride, padding, 0)
    oph, opw = pair(output_padding, "output_padding", where, allow_zero=True)
    if oph >= sh or opw >= sw:
        raise ValueError(f"{where}: output_padding {(oph, opw)} must be smaller than stride {(sh, sw)}")
    n, cin, h, wd = x.shape
    _, cout, kh, kw = w.shape
    hout = (h - 1) * sh - 2 * ph + kh + oph
    wout = (wd - 1) * sw - 2 * pw + kw + opw
    if hout <= 0 or wout <= 0:
        raise ValueError(f"{where}: output size ({hout}, {wout}) is not positive for x shape "
                         f"{tuple(x.shape)}, kernel ({kh}, {kw}), stride {(sh, sw)}, padding {(ph, pw)}")
    out = _input_grad(x, w, (hout, wout), (sh, sw), (ph, pw), dx_method)
    if b is not None:
        out += b.reshape(1, cout, 1, 1)
    cache = (x, w, (sh, sw), (ph, pw), b is not None)
    return out, cache


def conv_transpose2d_backward(dout, cache, need_dx=True):
    """Gradients of :func:`conv_transpose2d_forward`.

    dout : (N, Cout, Hout, Wout). Returns ``(dx (N, Cin, H, W), dw (Cin, Cout, kh, kw), db or None)``:
    ``dx`` is the ordinary convolution of ``dout`` with ``w`` (same stride/padding); None with
    ``need_dx=False`` (as :func:`conv2d_backward`).
    """
    x, w, (sh, sw), (ph, pw), has_bias = cache
    cin, cout, kh, kw = w.shape
    dpad = _pad_crop(dout, ph, ph, pw, pw) if (ph or pw) else dout
    if need_dx:
        dx, cols = _correlate(dpad, w.reshape(cin, cout * kh * kw), kh, kw, sh, sw)
    else:
        dx, cols = None, im2col(dpad, kh, kw, sh, sw)[0]
    dw = _weight_grad(x, cols, kh, kw, cout)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
