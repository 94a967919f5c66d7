"""The folder a training run writes: ``config.json``, ``history.json``, periodic checkpoints
``checkpoint_XXXXXX.npz`` (the newest few kept), the final ``model.npz`` and ``loss_curves.png``.

Every file is written atomically (:mod:`mrcnn_ref._io`): a crash never leaves half a file.
"""
from __future__ import annotations

import os

from ._io import write_json
from .nn.checkpoint import save_checkpoint

__all__ = ["RunFolder"]


class RunFolder:
    """Paths and writes of one run folder ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)

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
