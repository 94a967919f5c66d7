"""Input validation shared by the public functions: clear errors at the boundary.

Each helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape or
values) with a message naming the function, the argument and what was expected.

Checks of an array's *values* (finite, in range, integral) read them, which for an array on a GPU
is a device->host transfer and a synchronisation. They run on host (NumPy) arrays always and on
device arrays only when ``MRCNN_REF_CHECK_DEVICE_VALUES=1`` (or :data:`CHECK_DEVICE_VALUES` is set):
shapes and dtypes are checked everywhere, values on the device only when debugging.
"""
from __future__ import annotations

import os

import numpy as np

from .backend import get_array_module, is_host

#: Check the values of device arrays too (each check is one device->host transfer).
CHECK_DEVICE_VALUES = os.environ.get("MRCNN_REF_CHECK_DEVICE_VALUES", "") not in ("", "0")


def reads_values(*arrays) -> bool:
    """Whether value checks run on these arrays: always on the host, on a device only when
    :data:`CHECK_DEVICE_VALUES` is set."""
    return CHECK_DEVICE_VALUES or is_host(get_array_module(*arrays))


def check_array(x, name: str, where: str, ndim=None, shape=None, floating: bool = False,
                finite: bool = False):
    """Validate an array argument and return it.

    ndim: required number of dimensions (int or tuple of allowed ints).
    shape: tuple with ints for fixed sizes and None for free ones, e.g. (None, 4).
    floating: require a floating dtype. finite: require no NaN/inf.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{where}: {name} must be a NumPy/CuPy array, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise ValueError(f"{where}: {name} must have {' or '.join(map(str, allowed))} dimensions, "
                             f"got shape {tuple(x.shape)}")
    if shape is not None:
        if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{where}: {name} must have shape {want}, got {tuple(x.shape)}")
    if floating and not x.dtype.kind == "f":
        raise TypeError(f"{where}: {name} must be a floating-point array (float32/float64), got {x.dtype}")
    if finite and x.size and reads_values(x):
        xp = get_array_module(x)
        if x.dtype.kind == "f" and not bool(xp.isfinite(x).all()):
            raise ValueError(f"{where}: {name} contains NaN or inf values")
    return x


def check_positive_int(v, name: str, where: str, allow_zero: bool = False) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an int, got {type(v).__name__}")
    if v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{where}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {v}")
    return int(v)


def pair(v, name: str, where: str, allow_zero: bool = False) -> tuple[int, int]:
    """An int or a pair of ints -> (a, b), each validated."""
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{where}: {name} must be an int or a pair of ints, got {v!r}")
        return (check_positive_int(v[0], name, where, allow_zero),
                check_positive_int(v[1], name, where, allow_zero))
    n = check_positive_int(v, name, where, allow_zero)
    return (n, n)


def check_same_shape(a, b, name_a: str, name_b: str, where: str, floating: bool = True, note: str = ""):
    """Validate two arrays that must have the same shape (elementwise ops, losses)."""
    check_array(a, name_a, where, floating=floating)
    check_array(b, name_b, where, floating=floating)
    if a.shape != b.shape:
        raise ValueError(f"{where}: {name_a} and {name_b} must have the same shape{note}, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a, b
