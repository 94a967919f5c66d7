"""Data-parallel training on one machine: helper processes compute the gradients of some of a
step's images while the main process computes the others.

Why: the shapes model is small, so one training step is many small array operations; a second
BLAS thread hardly helps them (on the project's 2-core CPU one process runs an iteration *faster*
with one BLAS thread than with two). Two processes with one BLAS thread each, every one working on
its own image, do nearly twice the images per second. This is what ``DistributedDataParallel``
does across GPUs, in its simplest form:

1. :func:`share_parameters` moves the model's parameters into one block of shared memory (an
   anonymous ``mmap``), so the processes forked afterwards read the very same weights;
2. each step, worker ``w`` receives a job (the image indices it should handle), runs forward and
   backward on its own copy of the model (its own caches and gradients), writes its gradients into
   its own shared buffer and replies with its losses;
3. the main process adds the workers' gradients to its own **in a fixed order** (so a run is
   reproducible), clips, and updates the shared parameters in place — which the workers see at
   their next job. Nobody reads the weights while they are being updated: workers only compute
   when the main process has sent them a job.

Only the NumPy backend and the ``fork`` start method (Linux) are supported; :func:`can_fork` says
whether this platform has it. BLAS is limited to one thread per process while workers run
(``threadpoolctl``), as two processes with two threads each on two cores thrash.
"""
from __future__ import annotations

import mmap
import multiprocessing
import traceback

import numpy as np

__all__ = ["share_parameters", "GradientWorkers", "can_fork"]

_ALIGN = 64  # bytes: start every array on a cache line


def can_fork() -> bool:
    """Whether the ``fork`` start method (which :class:`GradientWorkers` needs) exists here."""
    return "fork" in multiprocessing.get_all_start_methods()


def _shared_views(shapes_dtypes: dict) -> dict:
    """Zero-filled arrays ``{name: (shape, dtype)}`` laid out in one anonymous shared mapping."""
    offsets, total = {}, 0
    for name, (shape, dtype) in shapes_dtypes.items():
        offsets[name] = total
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        total += -(-nbytes // _ALIGN) * _ALIGN
    buf = mmap.mmap(-1, max(total, 1))          # MAP_SHARED | MAP_ANONYMOUS: survives fork shared
    return {name: np.ndarray(shape, dtype=dtype, buffer=buf, offset=offsets[name])
            for name, (shape, dtype) in shapes_dtypes.items()}


def share_parameters(model) -> dict:
    """Move every parameter of ``model`` into shared memory (in place: the modules' ``params``
    dicts now hold views of one shared block, with the same values). Processes forked afterwards
    share the weights. Build the optimizer *after* calling this (it keeps references to the
    parameter arrays). Returns :meth:`named_parameters` (the shared views)."""
    named = model.named_parameters()
    for name, p in named.items():
        if not isinstance(p, np.ndarray):
            raise TypeError(f"share_parameters: parameter {name!r} is a {type(p).__module__} array; "
                            "data-parallel workers need the NumPy backend")
    views = _shared_views({k: (p.shape, p.dtype) for k, p in named.items()})
    for prefix, mod in model.named_modules():
        for k in list(mod.params):
            name = f"{prefix}.{k}" if prefix else k
            views[name][...] = mod.params[k]
            mod.params[k] = views[name]
    return model.named_parameters()


def _worker_loop(conn, model, compute, grads_out):
    """Body of a worker process: run jobs until ``None`` arrives."""
    while True:
        try:
            job = conn.recv()
        except EOFError:        # the main process went away
            return
        if job is None:
            return
        try:
            model.zero_grad()
            result = compute(job)
            for name, g in model.named_grads().items():
                grads_out[name][...] = g
            conn.send(("ok", result))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the main process
            try:
                conn.send(("error", e, traceback.format_exc()))
            except Exception:   # noqa: BLE001 - the exception itself may not pickle
                conn.send(("error", None, traceback.format_exc()))


class GradientWorkers:
    """``n`` forked processes that each compute gradients of ``model`` for the jobs they are sent.

    ``compute(job)`` runs in the worker on the worker's copy of ``model`` (forward + backward, which
    accumulate into its gradients) and returns something picklable (the losses). Call
    :func:`share_parameters` on the model *before* creating the workers so they see the updates
    the main process makes. Use as a context manager (or call :meth:`close`).

    >>> workers = GradientWorkers(model, compute, 1)          # doctest: +SKIP
    >>> workers.submit(0, job); mine = compute(my_job)        # both run at the same time
    >>> theirs = workers.collect(0)                           # their losses; gradients in .grads[0]
    """

    def __init__(self, model, compute, n: int):
        if not can_fork():
            raise RuntimeError("GradientWorkers needs the 'fork' start method (Linux); "
                               "train with workers=1 on this platform")
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"GradientWorkers: n must be a positive int, got {n!r}")
        named = model.named_grads()
        self.grads = [_shared_views({k: (g.shape, g.dtype) for k, g in named.items()}) for _ in range(n)]
        ctx = multiprocessing.get_context("fork")
        self._conns, self._procs = [], []
        for w in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_loop, args=(child, model, compute, self.grads[w]),
                            name=f"mrcnn_ref-grad-worker-{w}", daemon=True)
            p.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(p)

    def __len__(self):
        return len(self._procs)

    def submit(self, w: int, job):
        """Send ``job`` to worker ``w`` (returns at once)."""
        self._conns[w].send(job)

    def collect(self, w: int):
        """Wait for worker ``w``'s reply and return its result; its gradients are then in
        ``self.grads[w]``. A worker's exception is re-raised here: the same exception when it
        could be sent back (so a FloatingPointError stays one), else a RuntimeError with the
        worker's traceback."""
        try:
            msg = self._conns[w].recv()
        except EOFError as e:
            raise RuntimeError(f"gradient worker {w} died (exit code {self._procs[w].exitcode})") from e
        if msg[0] == "ok":
            return msg[1]
        _, exc, tb = msg
        if exc is not None:
            raise exc from RuntimeError(f"in gradient worker {w}:\n{tb}")
        raise RuntimeError(f"gradient worker {w} failed:\n{tb}")

    def close(self):
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._conns, self._procs = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
