"""Atomic file writes: write to a temporary file in the target's folder, then ``os.replace`` it.

An exception or a crash part-way leaves the previous file untouched (the temp file is removed), so
a checkpoint or a results file is never half-written. The file gets the permissions of any newly
created file (``0o666`` less the umask), not the temporary file's private ``0o600``.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, binary: bool = False):
    """``with atomic_write(path) as f: ...`` — ``f`` is a temp file renamed over ``path`` on success."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(obj, path, indent=None) -> str:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent)
    return os.fspath(path)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
