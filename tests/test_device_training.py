"""The whole model on a device backend: a training step, ``train``/``evaluate``/``predict`` through
the CLI with ``--backend``, the same numbers as NumPy, and the device->host transfers counted.

``accelerator`` is every available device backend: ``emulated`` (CuPy's host/device rules on the
CPU, so this runs in CI) and ``cupy`` where a GPU is. Float32 results may differ from NumPy's in
the last bits where a sum runs in another order (scatter-adds, the RoI ops' device path), so
arrays are compared by relative norm: ``||a - b|| <= 1e-5 ||b||``.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from mrcnn_ref import backend
from mrcnn_ref.cli import main
from mrcnn_ref.data.shapes import ShapesDataset
from mrcnn_ref.nn.checkpoint import load_checkpoint
from mrcnn_ref.model_io import BUNDLED_CHECKPOINT, load_model
from mrcnn_ref.run_config import build_dataset
from mrcnn_ref.train import train

REL = 1e-5
_spec = importlib.util.spec_from_file_location(
    "bench_syncs", os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "bench_syncs.py"))
bench_syncs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_syncs)


def assert_close_by_norm(a, b, what, rel=REL):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    assert np.linalg.norm(a - b) <= rel * max(np.linalg.norm(b), 1e-30), what


def test_training_step_matches_numpy_and_stays_on_the_device(accelerator):
    """Two steps of the shapes recipe (forward + backward of 2 images, norm, clip, AdamW)."""
    ref, rcfg, opt_ref = bench_syncs.shipped_model("numpy")
    dev, _, opt_dev = bench_syncs.shipped_model(accelerator.name)
    samples = [build_dataset(rcfg.train, "train", num_images=4)[i] for i in (1, 3)]
    for it in range(2):
        l_ref, n_ref = bench_syncs.training_step(ref, opt_ref, samples, it)
        l_dev, n_dev = bench_syncs.training_step(dev, opt_dev, samples, it)
        for a, b in zip(l_dev, l_ref):
            for k in b:
                assert a[k] == pytest.approx(b[k], rel=REL, abs=1e-7), k
        assert n_dev == pytest.approx(n_ref, rel=REL)
    p_ref, p_dev = ref.named_parameters(), dev.named_parameters()
    for k in p_ref:
        assert accelerator.is_array(p_dev[k]) and accelerator.is_array(dev.named_grads()[k]), k
        assert accelerator.is_array(opt_dev.exp_avg[k]), k
        assert_close_by_norm(accelerator.host(p_dev[k]), p_ref[k], k)


def test_sync_budgets():
    """<= 30 device->host transfers per shapes training step (2 images, norm, clip, AdamW) and
    <= 40 per prediction of one image with the test-time refinements off; the device value
    checks, when switched on, read more."""
    step = bench_syncs.count_training_step()
    assert 0 < step.total <= bench_syncs.BUDGETS["train_step"], step.report()
    assert bench_syncs.count_training_step(check_values=True).total > step.total
    plain = bench_syncs.count_predict(plain=True)
    assert 0 < plain.total <= bench_syncs.BUDGETS["predict_plain"], plain.report()


def test_checkpoints_load_onto_every_backend(device, tmp_path):
    model, _, _ = load_model(BUNDLED_CHECKPOINT, backend=device.name)
    ck = load_checkpoint(BUNDLED_CHECKPOINT)
    for k, v in model.named_parameters().items():
        assert device.is_array(v), k
        np.testing.assert_array_equal(device.host(v), ck["params"][k])


def _run(argv):
    assert main(argv) == 0, argv


def _predictions(path):
    return sorted(json.loads(path.read_text()), key=lambda p: (p["image_id"], -p["score"]))


def test_cli_train_evaluate_predict_match_numpy(accelerator, tmp_path, capsys):
    """The three commands with ``--backend``: the same losses, weights, predictions.json and
    printed detections as with NumPy; and the default backend is left as it was."""
    from skimage import io

    default = backend.get_backend()
    runs = {}
    for name in ("numpy", accelerator.name):
        out = tmp_path / name
        _run(["train", "--config", "tiny", "--out", str(out / "run"), "--iterations", "3",
              "--no-progress", "--backend", name])
        _run(["evaluate", "--checkpoint", BUNDLED_CHECKPOINT, "--split", "val", "--num-images", "2",
              "--out", str(out / "eval"), "--no-progress", "--backend", name])
        capsys.readouterr()
        img = tmp_path / "img.png"
        io.imsave(img, ShapesDataset("val", num_images=1)[0]["image"], check_contrast=False)
        _run(["predict", str(img), "--checkpoint", BUNDLED_CHECKPOINT, "--out", str(out / "p.png"),
              "--backend", name])
        runs[name] = (out, capsys.readouterr().out)
        assert backend.get_backend() is default
    (ref, ref_out), (dev, dev_out) = runs["numpy"], runs[accelerator.name]

    h_ref = json.loads((ref / "run" / "history.json").read_text())
    h_dev = json.loads((dev / "run" / "history.json").read_text())
    np.testing.assert_allclose(h_dev["total"], h_ref["total"], rtol=REL)
    w_ref = load_checkpoint(str(ref / "run" / "model.npz"))["params"]
    w_dev = load_checkpoint(str(dev / "run" / "model.npz"))["params"]
    for k in w_ref:
        assert_close_by_norm(w_dev[k], w_ref[k], k)

    p_ref, p_dev = _predictions(ref / "eval" / "predictions.json"), _predictions(dev / "eval" / "predictions.json")
    assert len(p_ref) == len(p_dev) > 0
    for a, b in zip(p_dev, p_ref):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=REL, atol=1e-3)
        assert a["score"] == pytest.approx(b["score"], rel=REL, abs=1e-7)
        assert a["segmentation"] == b["segmentation"]
    assert len(ref_out.splitlines()) == len(dev_out.splitlines()) > 1
    for a, b in zip(dev_out.splitlines()[:-1], ref_out.splitlines()[:-1]):
        name_a, score_a, _ = a.split("\t")
        name_b, score_b, _ = b.split("\t")
        assert name_a == name_b and abs(float(score_a) - float(score_b)) <= 1e-3


def test_workers_run_in_one_process_on_a_device(tmp_path):
    """A preset with helper processes trains on a device in one process, with the same losses."""
    cfg = {"preset": "tiny", "train": {"iterations": 2, "images_per_batch": 2, "workers": 2,
                                       "checkpoint_every": 2}}
    logged = []
    h_ref = train(cfg, str(tmp_path / "np"), progress=False, log=lambda *a: None, backend="numpy")
    h_dev = train(cfg, str(tmp_path / "em"), progress=False, log=logged.append, backend="emulated")
    assert any("in this process" in m for m in logged)
    np.testing.assert_allclose(h_dev["total"], h_ref["total"], rtol=REL)


def test_unknown_backend_on_the_command_line_is_one_line(tmp_path, capsys):
    assert main(["train", "--config", "tiny", "--out", str(tmp_path / "r"), "--backend", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend 'tpu'" in err
