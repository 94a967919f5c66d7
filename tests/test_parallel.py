"""Data-parallel training: shared parameters, gradient workers, and train(workers=2)."""
import os
import shutil
import tempfile

import numpy as np
import pytest

from mrcnn_ref.nn.layers import Linear
from mrcnn_ref.nn.optim import SGD
from mrcnn_ref.parallel import GradientWorkers, can_fork, share_parameters
from mrcnn_ref.run_config import load_run_config
from mrcnn_ref.train import train

pytestmark = pytest.mark.skipif(not can_fork(), reason="data-parallel workers need the 'fork' start method")


def _quiet(*a, **k):
    pass


def test_share_parameters_keeps_values_and_workers_see_updates():
    rng = np.random.default_rng(0)
    layer = Linear(5, 3, rng=rng)
    before = {k: v.copy() for k, v in layer.named_parameters().items()}
    shared = share_parameters(layer)
    for k, v in shared.items():
        np.testing.assert_array_equal(v, before[k])
        assert v.base is not None and not v.flags.owndata          # a view of the shared block
    assert shared["weight"] is layer.params["weight"]

    x = rng.standard_normal((4, 5)).astype(layer.params["weight"].dtype)

    def compute(job):
        out = layer(x * job)
        layer.backward(np.ones_like(out))
        return float(layer.params["weight"].sum())                  # what the worker sees

    opt = SGD(layer.named_parameters(), lr=0.5, momentum=0.0)
    with GradientWorkers(layer, compute, 1) as workers:
        workers.submit(0, 1.0)
        seen = workers.collect(0)
        assert seen == pytest.approx(float(before["weight"].sum()), rel=1e-6)
        # the worker's gradient equals the one computed here for the same input
        layer.zero_grad()
        compute(1.0)
        for k, g in layer.named_grads().items():
            np.testing.assert_allclose(workers.grads[0][k], g, rtol=1e-6)
        opt.step(layer.named_grads())                                # update the shared weights
        workers.submit(0, 2.0)
        assert workers.collect(0) == pytest.approx(float(layer.params["weight"].sum()), rel=1e-6)
        assert float(layer.params["weight"].sum()) != pytest.approx(float(before["weight"].sum()))


def test_worker_errors_come_back_with_their_type():
    layer = Linear(2, 2, rng=np.random.default_rng(0))

    def compute(job):
        if job == "nan":
            raise FloatingPointError("weights diverged")
        if job == "bad":
            raise ValueError("bad job")
        return job

    with GradientWorkers(layer, compute, 1) as workers:
        workers.submit(0, "nan")
        with pytest.raises(FloatingPointError, match="weights diverged"):
            workers.collect(0)
        workers.submit(0, "bad")
        with pytest.raises(ValueError, match="bad job"):
            workers.collect(0)
        workers.submit(0, "still alive")
        assert workers.collect(0) == "still alive"


def _tiny(workers, iterations=5, **train):
    return {"preset": "tiny", "train": {"iterations": iterations, "images_per_batch": 2, "workers": workers,
                                        "checkpoint_every": 2, "base_lr": 0.01, **train}}


def test_two_workers_train_like_one_process():
    """Same images, same sampling, gradients summed: only float rounding differs (a shared
    layer's per-level gradients are added in another order)."""
    from mrcnn_ref.model_io import load_model

    d1, d2 = tempfile.mkdtemp(), tempfile.mkdtemp()
    h1 = train(_tiny(1), d1, progress=False, log=_quiet)
    h2 = train(_tiny(2), d2, progress=False, log=_quiet)
    np.testing.assert_allclose(h2["total"], h1["total"], rtol=1e-4)
    m1, _, _ = load_model(f"{d1}/model.npz")
    m2, _, _ = load_model(f"{d2}/model.npz")
    for k, v in m1.named_parameters().items():
        np.testing.assert_allclose(m2.named_parameters()[k], v, rtol=1e-3, atol=1e-5)


def test_resume_with_workers_reproduces_the_run(tmp_path):
    full = tmp_path / "full"
    h_full = train(_tiny(2, iterations=6), str(full), seed=2, progress=False, log=_quiet)
    part = tmp_path / "part"            # a run killed after iteration 2
    shutil.copytree(full, part)
    for name in ("checkpoint_000004.npz", "checkpoint_000006.npz", "model.npz"):
        os.remove(part / name)
    h_res = train(_tiny(2, iterations=6), str(part), seed=2, resume=True, progress=False, log=_quiet)
    for k in ("total", "loss_mask", "lr"):
        np.testing.assert_allclose(h_res[k], h_full[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_workers_config_is_checked():
    with pytest.raises(ValueError, match="workers"):
        load_run_config({"preset": "tiny", "train": {"workers": 3, "images_per_batch": 2}})
    with pytest.raises(ValueError, match="workers"):
        load_run_config({"preset": "tiny", "train": {"workers": 0}})
