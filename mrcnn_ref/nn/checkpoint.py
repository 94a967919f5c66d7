"""Safe checkpoints: one ``.npz`` file, written atomically, read without pickle.

File layout (``np.savez``; every entry is a plain numeric array):

* ``param/<name>`` — one array per model parameter (``model.named_parameters()``);
* ``optim/<path>`` — every array found in the optimizer state (nested dicts are flattened with
  ``/``: ``SGD.state_dict()["momentum_buffer"]["conv.weight"]`` -> ``optim/momentum_buffer/conv.weight``);
* ``meta`` — a 0-d unicode string array holding JSON: ``format`` version, ``config``,
  ``rng_state`` (e.g. ``np.random.Generator.bit_generator.state``, which is JSON-able), ``extra``,
  and the non-array leaves of the optimizer state.

Safety:

* **Atomic write.** The file is written to a temporary file in the *same directory* and then
  ``os.replace``-d over the target; an exception or a crash mid-write leaves the previous
  checkpoint untouched (the temp file is removed).
* **No pickle.** :func:`load_checkpoint` uses ``np.load(allow_pickle=False)``, so a file cannot run
  code when loaded; object arrays are refused with a message naming the file and the array.
* **Validation.** A file that is not a zip archive, a damaged or truncated one (whatever part the
  damage hits: data, headers, flags, names), an array name found twice, a ``meta`` that is not a
  JSON object of the documented fields, optimizer entries that clash, a parameter that is not a
  floating-point array or holds NaN/inf: each is one :class:`CheckpointError` naming the file
  (and the array). With ``expected`` (a dict of shapes, or of arrays such as
  ``model.named_parameters()``), missing, unexpected or mis-shaped parameters are reported by name.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .._io import atomic_write
from ..backend import asnumpy

__all__ = ["save_checkpoint", "load_checkpoint", "FORMAT_VERSION", "CheckpointError"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe or does not match what was expected."""


def _flatten(tree, prefix, arrays, scalars):
    for k, v in tree.items():
        if not isinstance(k, str) or "/" in k:
            raise ValueError(f"save_checkpoint: optimizer state keys must be strings without '/', got {k!r}")
        path = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            _flatten(v, path, arrays, scalars)
        elif hasattr(v, "shape") and hasattr(v, "dtype"):
            arrays[path] = np.asarray(asnumpy(v))
        else:
            scalars[path] = v


def _one_line(e) -> str:
    return " ".join(str(e).split())


def _unflatten(flat: dict, where: str = "load_checkpoint") -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        parts = path.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CheckpointError(f"{where}: optimizer state entry {path!r} lies inside another "
                                      "entry that is not a group")
        if parts[-1] in node:
            raise CheckpointError(f"{where}: optimizer state entry {path!r} clashes with another entry")
        node[parts[-1]] = v
    return out


def _jsonable(obj, what):
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: {what} must be JSON-serialisable (dicts, lists, str, "
                        f"int, float, bool, None): {e}") from None


def save_checkpoint(path, params: dict, optimizer_state: dict | None = None, config: dict | None = None,
                    rng_state: dict | None = None, extra: dict | None = None) -> str:
    """Write a checkpoint atomically to ``path`` (``.npz`` appended if missing). Returns the path.

    ``params``: name -> array (NumPy or CuPy; stored as NumPy). ``optimizer_state``: e.g.
    ``SGD.state_dict()``. ``config``, ``rng_state``, ``extra``: JSON-able dicts.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    if not isinstance(params, dict):
        raise TypeError(f"save_checkpoint: params must be a dict name -> array, got {type(params).__name__}")
    entries = {}
    for k, v in params.items():
        a = np.asarray(asnumpy(v))
        if a.dtype == object:
            raise TypeError(f"save_checkpoint: parameter {k!r} is an object array; only numeric arrays are stored")
        entries[f"param/{k}"] = a
    opt_scalars: dict = {}
    if optimizer_state is not None:
        opt_arrays: dict = {}
        _flatten(optimizer_state, "", opt_arrays, opt_scalars)
        for k, a in opt_arrays.items():
            entries[f"optim/{k}"] = a
    meta = {
        "format": FORMAT_VERSION,
        "config": _jsonable(config, "config"),
        "rng_state": _jsonable(rng_state, "rng_state"),
        "extra": _jsonable(extra, "extra"),
        "has_optimizer": optimizer_state is not None,
        "optimizer_scalars": _jsonable(opt_scalars, "optimizer_state (non-array values)"),
    }
    entries["meta"] = np.array(json.dumps(meta))

    with atomic_write(path, binary=True) as f:
        np.savez(f, **entries)
    return path


def _expected_shapes(expected) -> dict:
    out = {}
    for k, v in expected.items():
        out[k] = tuple(v.shape) if hasattr(v, "shape") else tuple(int(d) for d in v)
    return out


def load_checkpoint(path, expected: dict | None = None) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``dict(params=..., optimizer_state=..., config=..., rng_state=..., extra=...)``
    (``optimizer_state`` is ``None`` when none was saved). With ``expected`` (name -> shape tuple,
    or name -> array) the parameter names and shapes must match exactly; otherwise a
    :class:`CheckpointError` (a ``ValueError``) names the file and the offending arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if os.path.isdir(path):
        raise CheckpointError(f"load_checkpoint: {path!r} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"load_checkpoint: checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"load_checkpoint: {path!r} cannot be read: {e.strerror}") from None
    if magic != b"PK\x03\x04":        # an .npz file is a zip archive
        raise CheckpointError(f"load_checkpoint: {path!r} is not a .npz checkpoint (not a zip archive)")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any damage to the archive
        raise CheckpointError(f"load_checkpoint: {path!r} is damaged or truncated ({type(e).__name__}: "
                              f"{e})") from None
    with npz:
        arrays = {}
        duplicates = sorted({n for n in npz.files if npz.files.count(n) > 1})
        if duplicates:      # "x" and "x.npy" are both the array "x": which one is meant?
            raise CheckpointError(f"load_checkpoint: {path!r} is damaged: array name(s) {duplicates[:10]} "
                                  "appear twice in the archive")
        for name in npz.files:
            try:
                arrays[name] = npz[name]
            except ValueError as e:
                if "allow_pickle" in str(e):
                    raise CheckpointError(
                        f"load_checkpoint: {path!r}: array {name!r} holds Python objects (pickle) and was "
                        f"refused (loading uses allow_pickle=False)") from None
                raise CheckpointError(f"load_checkpoint: {path!r} is damaged: array {name!r} cannot be "
                                      f"read ({_one_line(e)})") from None
            except Exception as e:  # noqa: BLE001 - damage shows as many errors: BadZipFile, EOFError,
                # zlib.error, RuntimeError ("encrypted": a flipped flag bit), NotImplementedError
                # (a flipped compression method), MemoryError (a flipped shape), ...
                raise CheckpointError(f"load_checkpoint: {path!r} is damaged or truncated: array {name!r} "
                                      f"cannot be read ({type(e).__name__}: {_one_line(e)})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"load_checkpoint: {path!r} has no 'meta' entry; not a mrcnn_ref checkpoint")
    meta_array = arrays.pop("meta")
    if meta_array.shape != () or meta_array.dtype.kind != "U":
        raise CheckpointError(f"load_checkpoint: {path!r}: 'meta' must be a JSON string, got an array "
                              f"of dtype {meta_array.dtype} and shape {meta_array.shape}")
    try:
        meta = json.loads(str(meta_array[()]))
    except (ValueError, TypeError, RecursionError) as e:
        raise CheckpointError(f"load_checkpoint: {path!r}: 'meta' is not valid JSON: "
                              f"{_one_line(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"load_checkpoint: {path!r}: 'meta' must be a JSON object, got "
                              f"{type(meta).__name__}")
    fmt = meta.get("format")
    if isinstance(fmt, bool) or fmt != FORMAT_VERSION:
        raise CheckpointError(f"load_checkpoint: {path!r} has format version {fmt!r}; "
                              f"this version of mrcnn_ref reads version {FORMAT_VERSION}")
    for key in ("config", "rng_state", "extra", "optimizer_scalars"):
        if not (meta.get(key) is None or isinstance(meta[key], dict)):
            raise CheckpointError(f"load_checkpoint: {path!r}: meta[{key!r}] must be an object or null, "
                                  f"got {type(meta[key]).__name__}")
    if not isinstance(meta.get("has_optimizer", False), bool):
        raise CheckpointError(f"load_checkpoint: {path!r}: meta['has_optimizer'] must be true or false, "
                              f"got {meta['has_optimizer']!r}")
    params, optim, other = {}, {}, []
    for name, a in arrays.items():
        if name.startswith("param/"):
            params[name[len("param/"):]] = a
        elif name.startswith("optim/"):
            optim[name[len("optim/"):]] = a
        else:
            other.append(name)
    if other:
        raise CheckpointError(f"load_checkpoint: {path!r} has unexpected array(s) {sorted(other)[:10]} "
                              f"(expected 'param/<name>', 'optim/<name>' and 'meta')")
    for group, entries in (("param", params), ("optim", optim)):
        for k, a in entries.items():
            if a.dtype.kind != "f":
                raise CheckpointError(f"load_checkpoint: {path!r}: {group}/{k} has dtype {a.dtype}; "
                                      "parameters and optimizer buffers are floating-point arrays")
            if not np.isfinite(a).all():
                raise CheckpointError(f"load_checkpoint: {path!r}: {group}/{k} holds NaN or inf values "
                                      "(the run had diverged, or the file is damaged)")
    if expected is not None:
        want = _expected_shapes(expected)
        missing = sorted(set(want) - set(params))
        unexpected = sorted(set(params) - set(want))
        bad = [f"param/{k}: file {tuple(params[k].shape)} vs expected {want[k]}"
               for k in sorted(want) if k in params and tuple(params[k].shape) != want[k]]
        problems = []
        if missing:
            problems.append(f"missing array(s) {['param/' + k for k in missing[:10]]}")
        if unexpected:
            problems.append(f"unexpected array(s) {['param/' + k for k in unexpected[:10]]}")
        if bad:
            problems.append(f"mis-shaped array(s) {bad[:10]}")
        if problems:
            raise CheckpointError(f"load_checkpoint: {path!r} does not match the model: " + "; ".join(problems))
    optimizer_state = None
    if meta.get("has_optimizer"):
        flat = dict(meta.get("optimizer_scalars") or {})
        both = sorted(set(flat) & set(optim))
        if both:
            raise CheckpointError(f"load_checkpoint: {path!r}: optimizer state entry(ies) {both[:10]} "
                                  "are both an array and a value")
        flat.update(optim)
        optimizer_state = _unflatten(flat, f"load_checkpoint: {path!r}")
    elif optim:
        raise CheckpointError(f"load_checkpoint: {path!r} has optimizer arrays {sorted(optim)[:5]} but "
                              "its meta says it has no optimizer state")
    return dict(params=params, optimizer_state=optimizer_state, config=meta.get("config"),
                rng_state=meta.get("rng_state"), extra=meta.get("extra"))
