"""The folder a training run writes: ``config.json``, ``history.json``, periodic checkpoints
``checkpoint_XXXXXX.npz`` (the newest few kept), the final ``model.npz`` and ``loss_curves.png``.

Nothing is lost:

* every file is written atomically (:mod:`mrcnn_ref._io`): a crash never leaves half a file;
* a fresh run refuses a folder that holds a run (:meth:`RunFolder.check_fresh`); ``--overwrite``
  first moves the old run aside (:meth:`RunFolder.move_aside`), ``--resume`` continues it;
* a lock file (``.lock``, holding the process id) refuses a second run writing to the same folder
  at the same time; one left by a process that no longer exists is taken over.
"""
from __future__ import annotations

import contextlib
import os

from ._io import write_json
from .nn.checkpoint import save_checkpoint

__all__ = ["RunFolder"]


class RunFolder:
    """Paths and writes of one run folder ``path``."""

    RUN_FILES = ("config.json", "history.json", "model.npz")

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise ValueError(f"--out {self.path!r} is a file, not a folder")

    def run_files(self) -> list:
        """The files of a run in this folder (config, history, models, checkpoints)."""
        present = [n for n in self.RUN_FILES if os.path.exists(self.file(n))]
        return present + [os.path.basename(p) for _, p in self.checkpoints()]

    def check_fresh(self):
        """Refuse to start a new run where one is already."""
        files = self.run_files()
        if files:
            shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
            raise ValueError(f"--out {self.path!r} already holds a run ({shown}); continue it with "
                             "--resume, move it aside with --overwrite, or choose another --out")

    def move_aside(self) -> str | None:
        """Rename a folder holding a run to ``<path>.old-N`` (the first free N); returns the new
        name, or None when there was no run to move."""
        if not self.run_files():
            return None
        n = 1
        while os.path.exists(f"{self.path}.old-{n}"):
            n += 1
        os.replace(self.path, f"{self.path}.old-{n}")
        return f"{self.path}.old-{n}"

    @contextlib.contextmanager
    def lock(self):
        """Hold ``.lock`` while a run writes here; a live holder makes this a ``ValueError``."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {self.path!r} cannot be created: {e.strerror}") from None
        path = self.file(".lock")
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                break
            except FileExistsError:
                holder = _read_pid(path)
                if holder is not None and _alive(holder):
                    raise ValueError(f"--out {self.path!r} is in use by another run (process {holder}); "
                                     "wait for it or choose another --out") from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)                      # left by a process that has ended
            except OSError as e:
                raise ValueError(f"--out {self.path!r} is not writable: {e.strerror}") from None
        else:
            raise ValueError(f"--out {self.path!r}: could not take its lock file {path!r}")
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        try:
            yield self
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def checkpoint_path(self, iteration=None) -> str:
        """``checkpoint_XXXXXX.npz`` after ``iteration``; ``model.npz`` (the final one) for None."""
        return self.file("model.npz" if iteration is None else f"checkpoint_{iteration:06d}.npz")

    def checkpoints(self) -> list:
        """``(iteration, path)`` of the periodic checkpoints, oldest first."""
        found = []
        for fn in os.listdir(self.path) if os.path.isdir(self.path) else []:
            if fn.startswith("checkpoint_") and fn.endswith(".npz"):
                try:
                    found.append((int(fn[len("checkpoint_"):-len(".npz")]), self.file(fn)))
                except ValueError:
                    continue
        return sorted(found)

    def latest_checkpoint(self):
        """The newest periodic checkpoint (by iteration), or None."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def prune(self, keep: int):
        """Delete all but the ``keep`` newest periodic checkpoints."""
        for _, path in self.checkpoints()[:-keep] if keep > 0 else []:
            try:
                os.remove(path)
            except OSError:
                pass

    def save(self, path, model, optim, run_config, seed, iteration, history, categories):
        """A checkpoint: parameters, optimizer state, the run config, and in ``extra`` the
        iteration, seed, loss history and the label -> category table."""
        return save_checkpoint(path, model.named_parameters(), optim.state_dict(),
                               config=run_config.to_dict(), rng_state=None,
                               extra={"iteration": iteration, "seed": seed, "history": history,
                                      "categories": categories})

    def write_config(self, run_config, seed):
        write_json({**run_config.to_dict(), "seed": seed}, self.file("config.json"), indent=2)

    def write_history(self, history):
        write_json(history, self.file("history.json"))


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or -1)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by someone else
        return True
    return True
