"""``Module``: a tiny layer abstraction over the project's forward/backward op pairs.

Every op in :mod:`mrcnn_ref.ops` is a pair ``op_forward(...) -> (out, cache)`` /
``op_backward(dout, cache) -> grads``. A :class:`Module` owns the parameters of such an op and
remembers its caches, so a network reads like ordinary code::

    y = conv(x)              # forward: computes, and PUSHES the op's cache on conv's stack
    dx = conv.backward(dy)   # backward: POPS the most recent cache, ACCUMULATES (+=) conv.grads

Conventions
-----------
* ``self.params``: ``dict[str, array]`` of this module's own parameters; ``self.grads``: same keys
  and shapes. Sub-modules are attributes (registered automatically when assigned) or the children
  of a :class:`Sequential` / :class:`ModuleList`; full names are dotted paths such as
  ``"layer1.0.conv1.weight"``.
* The cache stack is LIFO, so a module may be applied several times before backward — weight
  sharing, e.g. one RPN head run on every FPN level — as long as the backward calls come in the
  reverse order of the forward calls. Gradients of the shared parameters add up.
* :meth:`zero_grad` sets every gradient to 0 and clears every cache stack (call it once per
  training iteration).
* Share a module by *calling* it several times, not by assigning the same object to two
  attributes (that would list its parameters twice and the optimizer would update them twice).
* A module with ``requires_grad = False`` (see :meth:`freeze`) still back-propagates ``dx`` but
  leaves its parameter gradients at zero.
"""
from __future__ import annotations

import numpy as np

from ..backend import asnumpy, get_array_module, to_device

__all__ = ["Module", "Sequential", "ModuleList"]


class Module:
    """Base class: parameters, gradients, a cache stack and named sub-modules."""

    def __init__(self):
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_path", "")
        self.params: dict = {}
        self.grads: dict = {}
        self._stack: list = []
        self.requires_grad = True

    # ------------------------------------------------------------------ registration and names
    def __setattr__(self, name, value):
        if "_modules" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning attributes")
        if isinstance(value, Module):
            self._modules[name] = value
            value._set_path(self._join(name))
        elif name in self._modules:
            del self._modules[name]
        object.__setattr__(self, name, value)

    def _join(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else str(name)

    def _set_path(self, path: str):
        object.__setattr__(self, "_path", path)
        for name, child in self._modules.items():
            child._set_path(self._join(name))

    @property
    def path(self) -> str:
        """This module's dotted name inside the model it belongs to ('' for the root)."""
        return self._path

    def extra_repr(self) -> str:
        """Short description of the layer's configuration (overridden by layers)."""
        return ""

    def describe(self) -> str:
        """E.g. ``"Conv2d(3->16, k=3) 'stem.conv'"`` — used in error messages."""
        s = f"{type(self).__name__}({self.extra_repr()})"
        return f"{s} '{self._path}'" if self._path else s

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()})"]
        for name, child in self._modules.items():
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines)

    def named_modules(self, prefix: str = ""):
        """Yield ``(dotted_name, module)`` for this module and every descendant (pre-order)."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else str(name))

    def children(self):
        return list(self._modules.values())

    # ------------------------------------------------------------------ parameters
    def add_param(self, name: str, value):
        """Register a parameter array (and a zero gradient of the same shape)."""
        if "." in name or "/" in name:
            raise ValueError(f"{self.describe()}: parameter names may not contain '.' or '/', got {name!r}")
        xp = get_array_module(value)
        self.params[name] = value
        self.grads[name] = xp.zeros_like(value)
        return value

    def named_parameters(self) -> dict:
        """All parameters of this module and its descendants, by dotted name (the live arrays)."""
        out = {}
        for prefix, mod in self.named_modules():
            for k, v in mod.params.items():
                out[f"{prefix}.{k}" if prefix else k] = v
        return out

    def named_grads(self) -> dict:
        """The gradients, with the same keys as :meth:`named_parameters` (the live arrays)."""
        out = {}
        for prefix, mod in self.named_modules():
            for k, v in mod.grads.items():
                out[f"{prefix}.{k}" if prefix else k] = v
        return out

    def num_parameters(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self.named_parameters().values()))

    def zero_grad(self):
        """Set every gradient to zero and clear every cache stack (this module and descendants)."""
        for _, mod in self.named_modules():
            for g in mod.grads.values():
                g[...] = 0
            mod._stack.clear()

    def freeze(self):
        """Stop accumulating parameter gradients here and below (``dx`` still flows)."""
        for _, mod in self.named_modules():
            mod.requires_grad = False
        return self

    def unfreeze(self):
        for _, mod in self.named_modules():
            mod.requires_grad = True
        return self

    def _accumulate(self, name: str, g):
        """``grads[name] += g`` unless the module is frozen."""
        if self.requires_grad and g is not None:
            self.grads[name] += g

    def load_parameters(self, params: dict, strict: bool = True):
        """Copy values into the live parameter arrays (in place; dtype/device of the model kept).

        With ``strict`` (default) the keys must match :meth:`named_parameters` exactly; missing,
        unexpected or mis-shaped entries raise a ``ValueError`` listing them. With
        ``strict=False`` missing and unexpected keys are ignored (mis-shaped ones still raise).
        Returns ``(missing, unexpected)`` name lists.
        """
        if not isinstance(params, dict):
            raise TypeError(f"load_parameters: params must be a dict name -> array, got "
                            f"{type(params).__name__}")
        own = self.named_parameters()
        missing = sorted(set(own) - set(params))
        unexpected = sorted(set(params) - set(own))
        bad = [f"{k}: model {tuple(own[k].shape)} vs given {tuple(np.shape(params[k]))}"
               for k in own if k in params and tuple(np.shape(params[k])) != tuple(own[k].shape)]
        problems = []
        if strict and missing:
            problems.append(f"missing {len(missing)} parameter(s): {missing[:10]}")
        if strict and unexpected:
            problems.append(f"unexpected {len(unexpected)} parameter(s): {unexpected[:10]}")
        if bad:
            problems.append(f"shape mismatch for {len(bad)} parameter(s): {bad[:10]}")
        if problems:
            raise ValueError(f"load_parameters ({type(self).__name__}): " + "; ".join(problems))
        for k, dst in own.items():
            if k in params:
                xp = get_array_module(dst)
                src = params[k]
                if xp is np:
                    src = asnumpy(src)
                dst[...] = xp.asarray(src, dtype=dst.dtype)
        return missing, unexpected

    def _map_arrays(self, fn):
        for _, mod in self.named_modules():
            for d in (mod.params, mod.grads):
                for k in list(d):
                    d[k] = fn(d[k])
            mod._stack.clear()

    def astype(self, dtype):
        """Cast all parameters and gradients to ``dtype`` (float32 default, float64 for grad checks).

        The arrays are replaced, so build the optimizer after calling this. Returns ``self``.
        """
        dtype = np.dtype(dtype)
        if not np.issubdtype(dtype, np.floating):
            raise TypeError(f"astype: expected a floating dtype (float32/float64), got {dtype}")
        self._map_arrays(lambda a: a.astype(dtype))
        return self

    def to(self, backend: str):
        """Move every parameter and gradient to a backend ('numpy', 'cupy', 'emulated'; see
        :mod:`mrcnn_ref.backend`). Build the optimizer afterwards. Returns ``self``."""
        self._map_arrays(lambda a: to_device(a, backend))
        return self

    @property
    def array_module(self):
        """The array module (``xp``) the parameters live on (the default one if there are none)."""
        for v in self.named_parameters().values():
            return get_array_module(v)
        return get_array_module()

    @property
    def dtype(self):
        """The dtype of the first parameter (None for parameter-free modules)."""
        for v in self.named_parameters().values():
            return v.dtype
        return None

    # ------------------------------------------------------------------ the cache stack
    def _push(self, cache):
        self._stack.append(cache)

    def _pop(self):
        if not self._stack:
            raise RuntimeError(f"{self.describe()}: backward called more times than forward "
                               f"(the cache stack is empty); each backward must match an earlier "
                               f"forward, in reverse order")
        return self._stack.pop()

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dout):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class Sequential(Module):
    """Children applied in order; backward runs them in reverse (explicitly, for readability).

    Children are named ``"0"``, ``"1"``, … (so parameters read ``"layer1.0.conv1.weight"``).
    """

    def __init__(self, *modules):
        super().__init__()
        self.layers = []
        for m in modules:
            self.append(m)

    def append(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"Sequential: children must be Module instances, got {type(m).__name__}")
        name = str(len(self.layers))
        self._modules[name] = m
        m._set_path(self._join(name))
        self.layers.append(m)
        return self

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout


class ModuleList(Module):
    """A list of named children ("0", "1", …) with no forward of its own (e.g. FPN's per-level convs)."""

    def __init__(self, modules=()):
        super().__init__()
        self.items = []
        for m in modules:
            self.append(m)

    def append(self, m):
        if not isinstance(m, Module):
            raise TypeError(f"ModuleList: items must be Module instances, got {type(m).__name__}")
        name = str(len(self.items))
        self._modules[name] = m
        m._set_path(self._join(name))
        self.items.append(m)
        return self

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __iter__(self):
        return iter(self.items)
