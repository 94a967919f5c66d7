"""Nothing is lost: a run folder is never damaged by another command, and a damaged checkpoint is
one clear error (or, for --resume, skipped for the previous intact one)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mrcnn_ref.nn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mrcnn_ref.run_folder import RunFolder
from mrcnn_ref.train import StepImages, train

TINY = {"preset": "tiny", "train": {"iterations": 4, "checkpoint_every": 2, "num_train_images": 8}}


def _quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(TINY, str(out), seed=2, progress=False, log=_quiet)
    return out


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out)
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        train(TINY, str(out), seed=5, progress=False, log=_quiet)
    assert _snapshot(out) == before


def test_overwrite_moves_the_old_run_aside(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = _snapshot(out)
    logged = []
    train(TINY, str(out), seed=5, progress=False, log=logged.append, overwrite=True)
    assert _snapshot(tmp_path / "run.old-1") == before
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    assert any("run.old-1" in m for m in logged)
    with pytest.raises(ValueError, match="give one of them"):
        train(TINY, str(out), seed=5, progress=False, log=_quiet, overwrite=True, resume=True)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.lock():                                       # this process: alive
        with pytest.raises(ValueError, match="in use by another run"):
            train(TINY, str(tmp_path / "run"), progress=False, log=_quiet)
    assert not (tmp_path / "run" / ".lock").exists()
    # a lock left by a process that has ended is taken over
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / "run" / ".lock").write_text(dead)
    train(TINY, str(tmp_path / "run"), progress=False, log=_quiet)
    assert (tmp_path / "run" / "model.npz").is_file() and not (tmp_path / "run" / ".lock").exists()


def test_an_error_in_the_first_step_leaves_config_and_history_alone(finished_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    for name in ("checkpoint_000004.npz", "model.npz"):
        os.remove(out / name)                                 # resume from iteration 2
    before = {n: (out / n).read_bytes() for n in ("config.json", "history.json")}

    def broken(self, it):
        raise ValueError("broken forward pass")

    monkeypatch.setattr(StepImages, "run", broken)
    with pytest.raises(ValueError, match="broken forward pass"):
        train(TINY, str(out), seed=2, resume=True, progress=False, log=_quiet)
    assert {n: (out / n).read_bytes() for n in before} == before


def test_resume_skips_a_damaged_newest_checkpoint(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    os.remove(out / "model.npz")
    newest = out / "checkpoint_000004.npz"
    newest.write_bytes(newest.read_bytes()[:1000])           # cut short
    logged = []
    h = train(TINY, str(out), seed=2, resume=True, progress=False, log=logged.append)
    assert any("skipping" in m and "checkpoint_000004" in m for m in logged)
    assert any("resumed from" in m and "checkpoint_000002" in m for m in logged)
    full = json.loads((finished_run / "history.json").read_text())
    np.testing.assert_allclose(h["total"], full["total"], rtol=1e-5)


def test_out_that_is_a_file_is_one_error(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        train(TINY, str(f), progress=False, log=_quiet)


# ---------------------------------------------------------------------------- damaged checkpoints
def _flip_byte(data: bytes, where: int) -> bytes:
    b = bytearray(data)
    b[where] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("damage,needle", [
    (lambda p: p.write_bytes(_flip_byte(p.read_bytes(), len(p.read_bytes()) // 2)), "damaged or truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]), "damaged or truncated"),
    (lambda p: p.write_text("not a checkpoint"), "not a zip archive"),
    (lambda p: (os.remove(p), os.mkdir(p)), "is a directory"),
    (lambda p: os.remove(p), "does not exist"),
])
def test_damaged_checkpoints_are_one_error_naming_the_file(finished_run, tmp_path, damage, needle):
    p = tmp_path / "model.npz"
    shutil.copy(finished_run / "model.npz", p)
    damage(p)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_checkpoint(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad,needle", [(np.arange(6).reshape(2, 3), "dtype int64"),
                                        (np.array([[1.0, np.nan, 0.0], [0, 0, 0]]), "NaN or inf")])
def test_bad_parameter_values_are_refused_with_their_name(tmp_path, bad, needle):
    p = save_checkpoint(tmp_path / "m.npz", {"head.weight": bad, "head.bias": np.zeros(2)})
    with pytest.raises(CheckpointError, match=f"param/head.weight.*{needle}|{needle}") as e:
        load_checkpoint(p)
    assert "head.weight" in str(e.value)


def test_written_files_follow_the_umask(tmp_path):
    from mrcnn_ref._io import write_json

    old = os.umask(0o022)
    try:
        write_json({"a": 1}, tmp_path / "x.json")
        assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        write_json({"a": 1}, tmp_path / "y.json")
        assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
