"""A CPU stand-in for CuPy's host/device boundary: the ``"emulated"`` backend.

No GPU is needed to find the mistakes that would stop the CuPy path: an implicit conversion of a
device array to NumPy, a NumPy array mixed into a device computation, a NumPy scalar where CuPy
returns a 0-d array, and — the costly one — every read of a device value back to the host, each of
which is a synchronisation on a real GPU. This module imitates those rules of CuPy on top of
NumPy, so the suite can run the whole device code path in CI:

* :class:`EmulatedArray` wraps a NumPy array ("device memory"). ``np.asarray(a)`` raises
  ``TypeError`` exactly like CuPy ("Implicit conversion to a NumPy array is not allowed");
  ``a.get()`` / :func:`asnumpy` copy it back explicitly.
* :data:`xp` is the array module: ``xp.zeros``, ``xp.maximum``, ``xp.add.at``, … are NumPy's
  functions that take and return device arrays. A NumPy array given to any of them (or to an
  operator) is refused with ``TypeError``, as CuPy refuses it; only ``xp.asarray``/``xp.array``
  take host data (a host→device copy). Reductions and scalar indexing return 0-d arrays, not
  NumPy scalars. ``xp.sort``/``xp.argsort`` are stable, as CuPy's radix sorts are.
* Every device→host transfer is counted with the ``file:line`` that caused it: ``.get()``,
  ``float()``/``int()``/``bool()``/``item()``/``tolist()``/formatting, ``nonzero`` and its
  relatives (``flatnonzero``, one-argument ``where``, ``argwhere``, ``unique``, ``bincount``,
  ``compress``, ``extract``), and indexing with a boolean mask (its output size must be read).
  :func:`count_syncs` collects them for a block of code.

The numbers are NumPy's own, so a result computed on this backend equals the NumPy backend's
wherever the code takes the same path (a scatter-add takes ``xp.add.at`` here, the NumPy backend
a faster ``bincount``: float32 sums may differ in the last bits).
"""
from __future__ import annotations

import collections
import contextlib
import operator
import os
import sys
import types

import numpy as np

from . import backend as _backend

__all__ = ["EmulatedArray", "xp", "asnumpy", "count_syncs", "SyncCount", "sync_total"]

_THIS = os.path.abspath(__file__)
_BACKEND = os.path.join(os.path.dirname(_THIS), "backend.py")
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))
_PKG_ROOT = os.path.dirname(os.path.dirname(_THIS))

_IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
             "construct a NumPy array explicitly.")


# ----------------------------------------------------------------------------------------------
# counting device -> host transfers
# ----------------------------------------------------------------------------------------------
class SyncCount:
    """Device→host transfers seen inside :func:`count_syncs`: ``total`` and ``by_site``
    (a ``Counter`` of ``"path:line"``, the first caller outside this module and NumPy)."""

    def __init__(self):
        self.total = 0
        self.by_site: collections.Counter = collections.Counter()

    def report(self, top: int = 10) -> str:
        lines = [f"{self.total} device->host transfers"]
        lines += [f"  {n:4d}  {site}" for site, n in self.by_site.most_common(top)]
        return "\n".join(lines)


_active: list[SyncCount] = []
_total = 0


def sync_total() -> int:
    """All device→host transfers of the emulated backend since the process started."""
    return _total


@contextlib.contextmanager
def count_syncs():
    """``with count_syncs() as c: ...`` — ``c.total`` and ``c.by_site`` afterwards."""
    c = SyncCount()
    _active.append(c)
    try:
        yield c
    finally:
        _active.remove(c)


def _caller_site() -> str:
    f = sys._getframe(2)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if fn not in (_THIS, _BACKEND) and not fn.startswith(_NUMPY_DIR):
            break
        f = f.f_back
    if f is None:
        return "?"
    fn = os.path.abspath(f.f_code.co_filename)
    if fn.startswith(_PKG_ROOT + os.sep):
        fn = os.path.relpath(fn, _PKG_ROOT)
    return f"{fn}:{f.f_lineno}"


def _record_sync():
    global _total
    _total += 1
    if _active:
        site = _caller_site()
        for c in _active:
            c.total += 1
            c.by_site[site] += 1


# ----------------------------------------------------------------------------------------------
# wrapping and unwrapping
# ----------------------------------------------------------------------------------------------
def _refuse_host(x):
    raise TypeError(f"Unsupported type {type(x)}: a NumPy array cannot be mixed with device arrays "
                    "(move it with xp.asarray first)")


def _unwrap(x, host_ok=False):
    """Device arrays -> their NumPy buffer; NumPy arrays refused unless ``host_ok``."""
    if isinstance(x, EmulatedArray):
        return x._a
    if isinstance(x, np.ndarray):
        return x if host_ok else _refuse_host(x)
    if isinstance(x, (list, tuple)) and any(isinstance(v, (EmulatedArray, np.ndarray, list, tuple))
                                            for v in x):
        return type(x)(_unwrap(v, host_ok) for v in x)
    return x


def _wrap(r):
    """NumPy results -> device arrays (NumPy scalars become 0-d arrays, as in CuPy)."""
    if isinstance(r, np.ndarray):
        return EmulatedArray(r)
    if isinstance(r, np.generic):
        return EmulatedArray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _is_bool_index(k) -> bool:
    if isinstance(k, EmulatedArray):
        return k.dtype == np.bool_
    if isinstance(k, np.ndarray):
        return k.dtype == np.bool_
    if isinstance(k, tuple):
        return any(_is_bool_index(v) for v in k)
    return False


def _index(key):
    """An index for the wrapped buffer: device arrays unwrapped; host integer arrays and lists
    are accepted (a host->device copy, as CuPy does)."""
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, EmulatedArray):
        return key._a
    return key


# ----------------------------------------------------------------------------------------------
# the device array
# ----------------------------------------------------------------------------------------------
def _on_device(fn):
    """``fn`` (a NumPy function or method) taking and returning device arrays."""
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    call.__name__ = getattr(fn, "__name__", "call")
    return call


def _read_back(convert):
    """A method that converts the buffer to a Python value: one device->host transfer."""
    def method(self, *args):
        _record_sync()
        return convert(self._a, *args)
    return method


def _binary(op):
    def method(self, other):
        return _wrap(op(self._a, _unwrap(other)))
    return method


def _rbinary(op):
    def method(self, other):
        return _wrap(op(_unwrap(other), self._a))
    return method


def _inplace(op):
    def method(self, other):
        op(self._a, _unwrap(other), out=self._a)
        return self
    return method


class EmulatedArray:
    """A NumPy array behind CuPy's host/device rules (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, a):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"EmulatedArray wraps a NumPy array, got {type(a).__name__}")
        self._a = a

    # ---- explicit and implicit transfers
    def get(self):
        """Copy to the host (one device->host transfer)."""
        _record_sync()
        return self._a.copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(_IMPLICIT)

    # every conversion to a Python value reads the array back
    __float__, __int__, __complex__, __bool__ = (_read_back(float), _read_back(int),
                                                 _read_back(complex), _read_back(bool))
    __index__, item, tolist = (_read_back(operator.index), _read_back(np.ndarray.item),
                               _read_back(np.ndarray.tolist))
    __str__ = _read_back(str)

    def __repr__(self):
        _record_sync()
        return "emulated_" + repr(self._a)

    def __format__(self, spec):
        _record_sync()
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __contains__(self, v):
        _record_sync()
        return _unwrap(v) in self._a

    def nonzero(self):
        _record_sync()
        return _wrap(self._a.nonzero())

    # ---- shape, size, iteration (host metadata: no transfer)
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: EmulatedArray(self._a.T))
    real = property(lambda self: EmulatedArray(self._a.real))
    imag = property(lambda self: EmulatedArray(self._a.imag))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (EmulatedArray(self._a[i]) for i in range(len(self._a)))

    # ---- indexing
    def __getitem__(self, key):
        if _is_bool_index(key):
            _record_sync()          # the number of selected elements is read back
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if _is_bool_index(key):
            _record_sync()
        self._a[_index(key)] = _unwrap(value, host_ok=True)

    # ---- NumPy protocols: np.exp(a), np.concatenate([a, b]) work on device arrays (as in CuPy)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        args = _unwrap(inputs)
        kw = {k: _unwrap(v) for k, v in kwargs.items()}
        if "out" in kw:
            kw["out"] = tuple(kw["out"])
        result = getattr(ufunc, method)(*args, **kw)
        if method == "at":
            return None
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        own = getattr(xp, func.__name__, None) if getattr(np, func.__name__, None) is func else None
        return (own or _function(func.__name__, func))(*args, **kwargs)

    # ---- methods: NumPy's, on the buffer, device arrays in and out
    def __getattr__(self, name):
        if name.startswith("__"):   # no __array_interface__ & co.: NumPy must not see the buffer
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _on_device(attr) if callable(attr) else _wrap(attr)

    def __copy__(self):
        return EmulatedArray(self._a.copy())

    def __deepcopy__(self, memo):
        return EmulatedArray(self._a.copy())

    def __reduce__(self):
        return (EmulatedArray, (self._a,))

    __hash__ = None

    # ---- operators
    __add__, __radd__, __iadd__ = _binary(np.add), _rbinary(np.add), _inplace(np.add)
    __sub__, __rsub__, __isub__ = _binary(np.subtract), _rbinary(np.subtract), _inplace(np.subtract)
    __mul__, __rmul__, __imul__ = _binary(np.multiply), _rbinary(np.multiply), _inplace(np.multiply)
    __truediv__, __rtruediv__, __itruediv__ = (_binary(np.true_divide), _rbinary(np.true_divide),
                                               _inplace(np.true_divide))
    __floordiv__, __rfloordiv__, __ifloordiv__ = (_binary(np.floor_divide), _rbinary(np.floor_divide),
                                                  _inplace(np.floor_divide))
    __mod__, __rmod__, __imod__ = _binary(np.remainder), _rbinary(np.remainder), _inplace(np.remainder)
    __pow__, __rpow__, __ipow__ = _binary(np.power), _rbinary(np.power), _inplace(np.power)
    __matmul__, __rmatmul__ = _binary(np.matmul), _rbinary(np.matmul)
    __and__, __rand__, __iand__ = _binary(np.bitwise_and), _rbinary(np.bitwise_and), _inplace(np.bitwise_and)
    __or__, __ror__, __ior__ = _binary(np.bitwise_or), _rbinary(np.bitwise_or), _inplace(np.bitwise_or)
    __xor__, __rxor__, __ixor__ = _binary(np.bitwise_xor), _rbinary(np.bitwise_xor), _inplace(np.bitwise_xor)
    __lshift__, __rshift__ = _binary(np.left_shift), _binary(np.right_shift)
    __rlshift__, __rrshift__ = _rbinary(np.left_shift), _rbinary(np.right_shift)
    __lt__, __le__, __gt__, __ge__ = _binary(np.less), _binary(np.less_equal), _binary(np.greater), \
        _binary(np.greater_equal)
    __eq__, __ne__ = _binary(np.equal), _binary(np.not_equal)

    def __neg__(self):
        return _wrap(-self._a)

    def __pos__(self):
        return _wrap(+self._a)

    def __abs__(self):
        return _wrap(abs(self._a))

    def __invert__(self):
        return _wrap(~self._a)


# ----------------------------------------------------------------------------------------------
# the array module
# ----------------------------------------------------------------------------------------------
class _Ufunc:
    """``xp.add`` & co.: NumPy's ufunc on device arrays, with ``at``/``reduce``/``outer``."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__ = uf.__name__
        self.nin, self.nout = uf.nin, uf.nout

    def __call__(self, *args, **kwargs):
        return _on_device(self._uf)(*args, **kwargs)

    def at(self, a, indices, b=None):
        if not isinstance(a, EmulatedArray):
            raise TypeError(f"xp.{self.__name__}.at: the target must be a device array, got "
                            f"{type(a).__name__}")
        args = (_index(indices),) if b is None else (_index(indices), _unwrap(b))
        self._uf.at(a._a, *args)

    def __getattr__(self, name):   # reduce, accumulate, outer, reduceat
        return _on_device(getattr(self._uf, name))


_HOST_INPUT = {"array", "asarray", "asanyarray"}          # host -> device copies
_SYNCING = {"nonzero", "flatnonzero", "argwhere", "unique", "bincount", "compress", "extract",
            "asnumpy"}


def _function(name, fn):
    host_ok = name in _HOST_INPUT
    syncing = name in _SYNCING

    def f(*args, **kwargs):
        if syncing or (name == "where" and len(args) + len(kwargs) == 1):
            _record_sync()
        a = _unwrap(args, host_ok)
        k = {key: _unwrap(v, host_ok) for key, v in kwargs.items()}
        return _wrap(fn(*a, **k))
    f.__name__ = name
    f.__doc__ = fn.__doc__
    return f


def _stable(fn):
    def f(a, axis=-1, kind=None):
        if kind not in (None, "stable"):
            raise ValueError(f"{fn.__name__}: only a stable sort exists on the device, got kind={kind!r}")
        return _wrap(fn(_unwrap(a), axis=axis, kind="stable"))
    f.__name__ = fn.__name__
    return f


def _repeat(a, repeats, axis=None):
    if isinstance(repeats, (EmulatedArray, np.ndarray)):
        raise TypeError("repeat: on the device, repeats must be an int, list or tuple (a device "
                        "array would have to be read back)")
    return _wrap(np.repeat(_unwrap(a), repeats, axis=axis))


def _asarray(a, dtype=None, copy=None, order=None):
    """``xp.asarray``: host data is copied to the "device" (never a view of host memory)."""
    if isinstance(a, EmulatedArray):
        out = np.asarray(a._a, dtype=dtype, order=order)
        return EmulatedArray(out.copy() if copy else out)
    return EmulatedArray(np.array(_unwrap(a, host_ok=True), dtype=dtype, order=order, copy=True))


def _asnumpy(a):
    if isinstance(a, EmulatedArray):
        return a.get()
    return np.asarray(a)


class _Namespace(types.ModuleType):
    """NumPy's namespace with device arrays: functions wrapped, dtypes and constants as they are."""

    def __init__(self, name, source, overrides):
        super().__init__(name)
        self._source = source
        self._cache = dict(overrides)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        cache = self.__dict__["_cache"]
        if name in cache:
            return cache[name]
        attr = getattr(self.__dict__["_source"], name)
        if isinstance(attr, np.ufunc):
            out = _Ufunc(attr)
        elif isinstance(attr, types.ModuleType):
            out = _Namespace(f"{self.__name__}.{name}", attr, {})
        elif callable(attr) and not isinstance(attr, type):
            out = _function(name, attr)
        else:
            out = attr                 # dtypes, classes, constants (float32, inf, newaxis, ...)
        cache[name] = out
        return out


#: The emulated backend's array module (use as ``xp``).
xp = _Namespace("mrcnn_ref.emulated.xp", np, {
    "ndarray": EmulatedArray,
    "asnumpy": _asnumpy,
    "asarray": _asarray,
    "sort": _stable(np.sort),
    "argsort": _stable(np.argsort),
    "repeat": _repeat,
})

#: Copy a device array to the host (one counted transfer); NumPy input is returned as it is.
asnumpy = _asnumpy

# importing this module makes the backend known to mrcnn_ref.backend
_backend.register_backend("emulated", xp, EmulatedArray, lambda a: a.get())
