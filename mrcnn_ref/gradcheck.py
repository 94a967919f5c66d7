"""Gradient checking by centered finite differences (float64).

For a scalar function ``f`` the centered difference

    df/dx_i  ~=  (f(x + h e_i) - f(x - h e_i)) / (2 h)

has error O(h^2); with h = 1e-6 in float64 it agrees with an exact gradient to ~1e-9 relative.
To check an op ``y = op(x)`` whose output is an array, we contract it with a fixed random
"upstream gradient" ``dout`` and check the scalar ``L = sum(op(x) * dout)``: its gradient is exactly
what ``op_backward(dout, cache)`` must return.

Functions here:

* :func:`numerical_gradient` — the whole gradient of a scalar function of one array;
* :func:`numerical_gradient_sampled` — only at a random sample of entries (large arrays);
* :func:`rel_error` — ``||a - b|| / max(||a|| + ||b||, tiny)`` (0 when both are zero);
* :func:`check_op_gradients` — run an op's forward/backward pair and compare every requested
  argument's analytic gradient with the numerical one; returns the relative errors.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from .backend import asnumpy, get_array_module

__all__ = ["numerical_gradient", "numerical_gradient_sampled", "rel_error", "check_op_gradients"]


def _require_float64(x, name="x"):
    if not (hasattr(x, "dtype") and x.dtype == np.float64):
        raise TypeError(f"gradient checks need a float64 array for {name}, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    if not x.flags.c_contiguous:
        raise ValueError(f"gradient checks perturb {name} in place: pass a C-contiguous array")


def _centered_differences(f: Callable[[], float], x, indices, h: float) -> np.ndarray:
    """``(f(x + h e_i) - f(x - h e_i)) / 2h`` at each flat index i of ``x`` (perturbed in place)."""
    flat = x.reshape(-1)   # a view: x is C-contiguous (checked by the callers)
    values = np.empty(len(indices))
    for j, i in enumerate(indices):
        old = float(flat[i])
        flat[i] = old + h
        fp = float(f())
        flat[i] = old - h
        fm = float(f())
        flat[i] = old
        values[j] = (fp - fm) / (2.0 * h)
    return values


def numerical_gradient(f: Callable[[], float], x, h: float = 1e-6):
    """Centered-difference gradient of the scalar ``f()`` with respect to the array ``x``.

    ``f`` takes no arguments and reads ``x``, which is perturbed **in place** one entry at a time
    and restored afterwards. Returns an array shaped like ``x`` (float64).
    """
    _require_float64(x)
    xp = get_array_module(x)
    values = _centered_differences(f, x, range(x.size), h)
    return xp.asarray(values).reshape(x.shape)


def numerical_gradient_sampled(f: Callable[[], float], x, num_samples: int = 50,
                               h: float = 1e-6, rng=None, indices=None):
    """Centered differences at a random sample of flat indices of ``x``.

    Returns ``(indices, values)``: the flat indices checked and the numerical derivatives there.
    Pass ``indices`` to choose them yourself.
    """
    _require_float64(x)
    if indices is None:
        rng = np.random.default_rng(rng)
        k = min(int(num_samples), x.size)
        indices = rng.choice(x.size, size=k, replace=False)
    indices = np.asarray(indices, dtype=np.int64)
    return indices, _centered_differences(f, x, indices, h)


def rel_error(a, b) -> float:
    """Relative error ``||a - b|| / (||a|| + ||b||)`` in float64 (0.0 when both are all zero)."""
    a = np.asarray(asnumpy(a), dtype=np.float64)
    b = np.asarray(asnumpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)


def check_op_gradients(forward: Callable, backward: Callable, args: Sequence, wrt: Iterable[int] = (0,),
                       kwargs: dict | None = None, h: float = 1e-6, num_samples: int | None = None,
                       seed: int = 0, dout=None) -> dict[int, float]:
    """Compare an op's hand-written backward with centered finite differences.

    ``forward(*args, **kwargs) -> (out, cache)`` and ``backward(dout, cache) -> grads`` follow the
    project's convention: ``grads`` is one array (the gradient of ``args[0]``) or a tuple whose
    i-th entry is the gradient of ``args[i]``. For ops whose output is a scalar loss, ``dout`` is 1.

    ``wrt`` lists the argument positions to check (each must be a float64 array). With
    ``num_samples`` set, only that many random entries of each argument are checked (big arrays).
    Returns ``{position: relative error}``.
    """
    kwargs = kwargs or {}
    args = list(args)
    out, cache = forward(*args, **kwargs)
    rng = np.random.default_rng(seed)
    xp = get_array_module(out)
    if dout is None:
        if np.ndim(out) == 0:
            dout = 1.0
        else:
            dout = xp.asarray(rng.standard_normal(np.shape(out)))
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def loss():
        o, _ = forward(*args, **kwargs)
        return float(xp.sum(o * dout))

    errors = {}
    for pos in wrt:
        x = args[pos]
        _require_float64(x, f"argument {pos}")
        g = grads[pos]
        if g is None:
            raise ValueError(f"backward returned None for argument {pos}")
        if num_samples is None:
            num = numerical_gradient(loss, x, h=h)
            errors[pos] = rel_error(g, num)
        else:
            idx, num = numerical_gradient_sampled(loss, x, num_samples=num_samples, h=h, rng=rng)
            errors[pos] = rel_error(asnumpy(g).reshape(-1)[idx], num)
    return errors
