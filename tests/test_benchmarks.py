"""The training-step benchmark runs and compares two versions of the package in one process."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")),
                    reason="needs git and a git checkout")
def test_bench_train_step_against_head_gives_identical_losses():
    """Against HEAD (whose package is this tree's, unless it has uncommitted changes), both
    versions step through the same images: the script must import both side by side and find
    the same losses when the code is the same."""
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "mrcnn_ref"],
                           capture_output=True, text=True).stdout.strip()
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_train_step.py"),
                          "--against", "HEAD", "--rounds", "2", "--steps", "1", "--images", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "this checkout" in out.stdout and "HEAD" in out.stdout
    if not dirty:
        assert "losses identical: True" in out.stdout, out.stdout


def test_bench_train_step_bad_revision():
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("needs git and a git checkout")
    out = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_train_step.py"),
                          "--against", "no-such-revision", "--rounds", "1", "--steps", "1", "--images", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "cannot export revision" in out.stderr


def _bench(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_train_step.py"),
                           "--rounds", "2", "--steps", "1", "--images", "2", *args],
                          capture_output=True, text=True, timeout=300)


def test_bench_train_step_against_checkpoint(tmp_path):
    """Two models, this checkout's code: a copy of the shipped model under another name."""
    shipped = os.path.join(REPO, "mrcnn_ref", "checkpoints", "shapes.npz")
    other = tmp_path / "other.npz"
    shutil.copy(shipped, other)
    out = _bench("--against-checkpoint", str(other))
    assert out.returncode == 0, out.stderr
    assert f"{os.path.relpath(other)}: median ratio" in out.stdout, out.stdout
    assert "shapes.npz" in out.stdout
    assert "n/a (two models)" in out.stdout


def test_bench_train_step_bad_arguments(tmp_path):
    out = _bench("--against-checkpoint", str(tmp_path / "missing.npz"))
    assert out.returncode != 0 and "checkpoint not found" in out.stderr
    out = _bench("--against", "HEAD", "--against-checkpoint", str(tmp_path / "x.npz"))
    assert out.returncode != 0 and "not both" in out.stderr


def test_bench_drops_config_keys_an_older_revision_does_not_know(tmp_path):
    """An older revision cannot load a checkpoint whose config has newer (inference) keys; the
    benchmark hands it a copy without them, and the same file when nothing is unknown."""
    import importlib.util

    from mrcnn_ref.nn.checkpoint import load_checkpoint, save_checkpoint

    spec = importlib.util.spec_from_file_location("bench_train_step",
                                                  os.path.join(REPO, "benchmarks", "bench_train_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shipped = os.path.join(REPO, "mrcnn_ref", "checkpoints", "shapes.npz")
    assert bench._for_package("mrcnn_ref", shipped) == shipped
    ck = load_checkpoint(shipped)
    config = {**ck["config"], "model": {**ck["config"]["model"], "a_future_setting": 1}}
    newer = save_checkpoint(str(tmp_path / "newer.npz"), ck["params"], None, config=config, extra=ck["extra"])
    stripped = bench._for_package("mrcnn_ref", newer)
    assert stripped != newer
    assert load_checkpoint(stripped)["config"] == ck["config"]


def test_bench_optim_times_both_optimizers_and_a_forward_backward(tmp_path):
    script = os.path.join(REPO, "benchmarks", "bench_optim.py")
    out = subprocess.run([sys.executable, script, "--rounds", "2", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    medians = {}
    for line in out.stdout.splitlines():
        words = line.split()
        if "median" in words:
            medians[" ".join(words[:words.index("median")])] = float(words[words.index("median") + 1])
    assert set(medians) == {"SGD.step", "AdamW.step", "forward+backward (1 image)"}, out.stdout
    assert all(t > 0 for t in medians.values()), medians
    bad = subprocess.run([sys.executable, script, "--checkpoint", str(tmp_path / "missing.npz")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "checkpoint not found" in bad.stderr
