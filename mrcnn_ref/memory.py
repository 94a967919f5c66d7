"""Keeping freed memory in the process: why a NumPy training loop page-faults, and the fix.

Every NumPy temporary — an im2col column matrix, a padded copy, a gradient — is a fresh
``malloc``. glibc serves a large request (above its *mmap threshold*, 128 KiB to 32 MiB depending
on what it has seen) with a new ``mmap`` and gives it back to the kernel on ``free``; a block freed
at the top of the heap beyond the *trim threshold* is handed back too. The next step asks for
the same sizes again, and the kernel must supply fresh zero-filled pages: one page fault per
4 KiB. A 3×3 convolution on a 2×64×64×64 float32 input makes a 19 MB column matrix — ~4,600
pages — and a second one for its input gradient. Measured on the project's 2-core machine:

* the 3×3 convolution of ``benchmarks/bench_layers.py``, forward + backward: ~3,500 page faults
  -> 0 and 38 -> 26 ms (median of 30, three alternating runs each way);
* one training step of the shapes model: ~6,000 page faults -> 0; the last 500 steps of the
  shapes recipe (two processes, resumed from the same checkpoint, run back to back) 89 -> 80 s.

:func:`retain_freed_memory` raises both thresholds (glibc's ``mallopt``), so freed blocks stay
in the process and are reused by the next step. The cost: the process keeps the memory of its
largest step (its resident size no longer shrinks between steps, and may grow a little from
fragmentation: peak resident size of the shapes run 141 -> 170 MB per process). It is
process-wide, so the library never calls it on import: the CLI and the benchmarks do, and so may
your own scripts.

Other C libraries (musl, macOS, Windows) have no ``mallopt`` with these options; there it does
nothing and returns ``False``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MAX_INT = 2 ** 31 - 1


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version          # only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def retain_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Make glibc keep freed blocks of up to ``limit_bytes`` for reuse instead of returning them
    to the kernel (``mallopt`` ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``).

    Allocations larger than the mmap threshold still get their own mapping; glibc may cap the
    threshold (older versions at 32 MiB), in which case the largest value it accepts is used.
    Returns ``True`` when the settings took effect, ``False`` on other C libraries.
    """
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes <= 0:
        raise ValueError(f"retain_freed_memory: limit_bytes must be a positive int, got {limit_bytes!r}")
    libc = _glibc()
    if libc is None:
        return False
    limit = min(limit_bytes, _MAX_INT)
    mmap_ok = False
    for threshold in (limit, 32 << 20):     # glibc refuses thresholds above its heap size / 2
        if libc.mallopt(_M_MMAP_THRESHOLD, min(threshold, limit)):
            mmap_ok = True
            break
    trim_ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, limit))
    return mmap_ok and trim_ok
