"""Training loop: files written, reproducible resume, NaN guard, configs, COCO data with empty images."""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrcnn_ref.nn.checkpoint import load_checkpoint
from mrcnn_ref.model_io import load_model
from mrcnn_ref.run_config import load_run_config
from mrcnn_ref.train import TrainingDiverged, train

TINY = {"preset": "tiny", "train": {"iterations": 8, "checkpoint_every": 4, "num_train_images": 8}}


def _quiet(*a, **k):
    pass


def test_tiny_run_writes_everything(tmp_path):
    out = tmp_path / "run"
    h = train(TINY, str(out), seed=1, progress=False, log=_quiet)
    assert len(h["total"]) == 8 and np.all(np.isfinite(h["total"]))
    for name in ("model.npz", "checkpoint_000004.npz", "checkpoint_000008.npz", "config.json",
                 "history.json", "loss_curves.png"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["seed"] == 1 and cfg["train"]["iterations"] == 8
    # the written config.json is itself a valid --config (its "seed" entry is a record only)
    again = load_run_config(str(out / "config.json"))
    assert again.to_dict() == {k: v for k, v in cfg.items() if k != "seed"}
    model, rcfg, extra = load_model(str(out / "model.npz"))
    assert extra["iteration"] == 8
    assert [c["name"] for c in extra["categories"]] == ["square", "circle", "triangle"]
    ck = load_checkpoint(str(out / "model.npz"))
    for k, v in model.named_parameters().items():
        np.testing.assert_array_equal(np.asarray(v), ck["params"][k])


ADAMW = {**TINY, "train": {**TINY["train"], "optimizer": "adamw", "base_lr": 1e-3, "weight_decay": 0.05}}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, optimizer):
    cfg = TINY if optimizer == "sgd" else ADAMW
    full = tmp_path / "full"
    h_full = train(cfg, str(full), seed=3, progress=False, log=_quiet)
    # simulate a run killed after iteration 4: only the first periodic checkpoint survives
    part = tmp_path / "part"
    shutil.copytree(full, part)
    for name in ("checkpoint_000008.npz", "model.npz"):
        os.remove(part / name)
    h_res = train(cfg, str(part), seed=3, resume=True, progress=False, log=_quiet)
    for k in ("total", "loss_classifier", "loss_mask", "lr"):
        np.testing.assert_allclose(h_res[k], h_full[k], rtol=1e-5, atol=1e-7, err_msg=k)
    a = load_checkpoint(str(full / "model.npz"))["params"]
    b = load_checkpoint(str(part / "model.npz"))["params"]
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6, err_msg=k)
    if optimizer == "adamw":     # resuming with the other optimizer is refused, with the reason
        os.remove(part / "model.npz")
        with pytest.raises(ValueError, match="saved by AdamW, not SGD"):
            train(TINY, str(part), seed=3, resume=True, progress=False, log=_quiet)


def test_adamw_and_sgd_runs_differ_and_adamw_config_is_checked(tmp_path):
    h_sgd = train(TINY, str(tmp_path / "sgd"), seed=1, progress=False, log=_quiet)
    h_adam = train(ADAMW, str(tmp_path / "adamw"), seed=1, progress=False, log=_quiet)
    assert h_sgd["total"][0] == pytest.approx(h_adam["total"][0])     # same start
    assert h_sgd["total"][1:] != h_adam["total"][1:]                   # other updates
    ck = load_checkpoint(str(tmp_path / "adamw" / "model.npz"))
    assert {k.split("/")[0] for k in ck["optimizer_state"]} >= {"exp_avg", "exp_avg_sq"}
    for bad, match in [({"optimizer": "adam"}, "optimizer must be"),
                       ({"adam_betas": [0.9]}, "adam_betas"),
                       ({"adam_betas": [0.9, 1.5]}, "adam_betas"),
                       ({"adam_eps": 0}, "adam_eps")]:
        with pytest.raises(ValueError, match=match):
            load_run_config({"preset": "tiny", "train": bad})


def test_resume_from_a_checkpoint_saved_before_a_config_field_existed(tmp_path):
    """A checkpoint whose config lacks a field added later (here mask_rois_per_image, as in the
    checkpoints of earlier versions) resumes: the missing field takes its default. So does one
    whose inference settings differ; one whose trained model differs does not."""
    from mrcnn_ref.nn.checkpoint import save_checkpoint

    out = tmp_path / "run"
    short = {**TINY, "train": {**TINY["train"], "iterations": 4}}
    train(short, str(out), seed=0, progress=False, log=_quiet)
    path = str(out / "checkpoint_000004.npz")
    ck = load_checkpoint(path)
    del ck["config"]["model"]["mask_rois_per_image"]
    save_checkpoint(path, ck["params"], ck["optimizer_state"], config=ck["config"], extra=ck["extra"])
    h = train(TINY, str(out), seed=0, resume=True, progress=False, log=_quiet)
    assert len(h["total"]) == 8
    # an inference-only setting (here the detection NMS threshold) may differ: it shapes no weights
    ck["config"]["model"]["nms_thresh"] = 0.3
    save_checkpoint(path, ck["params"], ck["optimizer_state"], config=ck["config"], extra=ck["extra"])
    os.remove(out / "checkpoint_000008.npz")
    assert len(train(TINY, str(out), seed=0, resume=True, progress=False, log=_quiet)["total"]) == 8
    # a real difference in the model config is still refused
    ck["config"]["model"]["mask_head_channels"] = 99
    save_checkpoint(path, ck["params"], ck["optimizer_state"], config=ck["config"], extra=ck["extra"])
    os.remove(out / "checkpoint_000008.npz")
    with pytest.raises(ValueError, match="different model config"):
        train(TINY, str(out), seed=0, resume=True, progress=False, log=_quiet)


def test_resume_refuses_other_seed_and_missing_checkpoint(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="no checkpoint"):
        train(TINY, str(out), seed=0, resume=True, progress=False, log=_quiet)
    train({**TINY, "train": {**TINY["train"], "iterations": 4}}, str(out), seed=0, progress=False)
    with pytest.raises(ValueError, match="seed"):
        train({**TINY, "train": {**TINY["train"], "iterations": 4}}, str(out), seed=5, resume=True,
              progress=False, log=_quiet)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from mrcnn_ref.model import mask_rcnn

    original = mask_rcnn.MaskRCNN.forward_train
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        losses, total = original(self, *a, **k)
        calls["n"] += 1
        return (losses, float("nan")) if calls["n"] == 6 else (losses, total)

    monkeypatch.setattr(mask_rcnn.MaskRCNN, "forward_train", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="iteration 5.*checkpoint_000004"):
        train(TINY, str(out), seed=0, progress=False, log=_quiet)
    ck = load_checkpoint(str(out / "checkpoint_000004.npz"))
    assert ck["extra"]["iteration"] == 4
    assert all(np.isfinite(v).all() for v in ck["params"].values())
    assert not (out / "model.npz").exists()
    assert len(json.loads((out / "history.json").read_text())["total"]) == 5


@pytest.mark.parametrize("lr", [3.0, 10.0, 300.0])
def test_exploding_weights_stop_with_training_diverged(tmp_path, lr):
    """With a huge lr and no clipping the weights blow up: depending on the lr, the first sign is a
    NaN loss or inf RPN deltas (which proposals cannot decode). Either way: TrainingDiverged."""
    cfg = {**TINY, "train": {**TINY["train"], "base_lr": lr, "warmup_iters": 0, "clip_grad_norm": 0.0,
                             "iterations": 30}}
    with pytest.raises(TrainingDiverged, match="training stopped before the update"):
        train(cfg, str(tmp_path / "run"), seed=0, progress=False, log=_quiet)


def test_run_config_files_and_errors(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"preset": "tiny", "train": {"iterations": 3}, "model": {"mask_loss": "softmax"}}))
    rc = load_run_config(str(p))
    assert rc.train.iterations == 3 and rc.model.mask_loss == "softmax" and rc.model.num_classes == 4
    assert load_run_config("shapes").model.name == "shapes"
    p.write_text(json.dumps({"train": {"iterashuns": 3}}))
    with pytest.raises(ValueError, match="iterashuns"):
        load_run_config(str(p))
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run_config(str(p))
    with pytest.raises(ValueError, match="neither a built-in"):
        load_run_config(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="base_lr"):
        load_run_config({"preset": "tiny", "train": {"base_lr": -1.0}})


def test_num_classes_mismatch_is_explained(tmp_path):
    cfg = {"model": {"preset": "tiny"}, "train": {"iterations": 1, "image_size": 64}}  # tiny has 3 classes
    with pytest.raises(ValueError, match="num_classes = 4"):
        train(cfg, str(tmp_path / "r"), progress=False, log=_quiet)


def test_coco_dataset_with_an_empty_image_trains(tmp_path):
    from skimage import io

    from mrcnn_ref.data.rle import rle_encode
    from mrcnn_ref.data.shapes import ShapesDataset

    ds = ShapesDataset("train", num_images=2, image_size=64)
    coco = ds.to_coco()
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    for info, i in zip(coco["images"], range(2)):
        io.imsave(img_dir / info["file_name"], ds[i]["image"], check_contrast=False)
    # a third image with no annotations at all
    coco["images"].append({"id": 99, "file_name": "empty.png", "height": 64, "width": 64})
    io.imsave(img_dir / "empty.png", np.full((64, 64, 3), 128, np.uint8), check_contrast=False)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(coco))
    assert rle_encode  # the loader decodes the RLE segmentations written by to_coco
    cfg = {"preset": "tiny", "train": {"dataset": "coco", "coco_annotations": str(ann),
                                       "coco_images": str(img_dir), "iterations": 6, "hflip": False}}
    h = train(cfg, str(tmp_path / "run"), seed=0, progress=False, log=_quiet)
    assert len(h["total"]) == 6 and np.all(np.isfinite(h["total"]))


def test_export_model_is_small_and_loads(tmp_path):
    out = tmp_path / "run"
    train({**TINY, "train": {**TINY["train"], "iterations": 2}}, str(out), progress=False, log=_quiet)
    from mrcnn_ref.model_io import export_model

    dst = export_model(str(out / "model.npz"), str(tmp_path / "bundled" / "shapes.npz"))
    assert os.path.getsize(dst) < 0.6 * os.path.getsize(out / "model.npz")
    model, rcfg, extra = load_model(dst)
    assert extra["iteration"] == 2 and "history" not in extra
    ref, _, ref_extra = load_model(str(out / "model.npz"))
    for k, v in ref.named_parameters().items():
        np.testing.assert_array_equal(model.named_parameters()[k], v)
    # two iterations, up to 500 points: the summary keeps each iteration (to 6 digits)
    assert extra["loss_history"]["iteration"] == [1, 2]
    assert extra["loss_history"]["total"] == pytest.approx(ref_extra["history"]["total"], rel=1e-5)
    assert model.config == ref.config
    # inference settings can be changed on export; trained fields cannot
    dst2 = export_model(str(out / "model.npz"), str(tmp_path / "b2.npz"),
                        inference_overrides={"matrix_nms": "per_class", "score_thresh": 0.2})
    m2, _, _ = load_model(dst2)
    assert m2.config == ref.config.replace(matrix_nms="per_class", score_thresh=0.2)
    with pytest.raises(ValueError, match="cannot be changed after training"):
        export_model(str(out / "model.npz"), str(tmp_path / "b3.npz"), inference_overrides={"num_classes": 5})
    assert not os.path.exists(tmp_path / "b3.npz")


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 2000), max_points=st.integers(1, 600))
def test_summarize_history_windows_cover_every_iteration_once(n, max_points):
    from mrcnn_ref.model_io import summarize_history
    from mrcnn_ref.train import LOSS_KEYS

    rng = np.random.default_rng(n)
    hist = {k: list(rng.uniform(0, 3, n)) for k in (*LOSS_KEYS, "total")}
    s = summarize_history(hist, max_points=max_points)
    ends = s["iteration"]
    assert ends[-1] == n and len(ends) <= max_points and ends == sorted(set(ends))
    sizes = np.diff([0, *ends])
    assert sizes.sum() == n and len(set(sizes[:-1].tolist())) <= 1 and sizes[-1] <= sizes[0]
    # the size-weighted mean of the window means is the mean of the whole history
    for k in hist:
        assert np.dot(sizes, s[k]) / n == pytest.approx(np.mean(hist[k]), rel=1e-5)


def test_bundled_or_trained_model_falls_back_to_a_quick_tiny_run(monkeypatch, tmp_path):
    import mrcnn_ref.model_io as tr

    model, rcfg, how = tr.bundled_or_trained_model(2)
    assert ("bundled" in how) == os.path.isfile(tr.BUNDLED_CHECKPOINT)
    monkeypatch.setattr(tr, "BUNDLED_CHECKPOINT", str(tmp_path / "absent.npz"))
    model, rcfg, how = tr.bundled_or_trained_model(2)
    assert "tiny run trained for 2 iterations" in how and rcfg.model.name == "tiny"


def test_sample_forward_backward_adds_gradients_and_skips_the_backward_of_a_bad_loss():
    """A finite loss: the backward pass adds (twice the same sample and generator seed = twice
    the gradients). A non-finite loss: no backward pass, the gradients stay as they were."""
    from mrcnn_ref.model.mask_rcnn import MaskRCNN
    from mrcnn_ref.run_config import build_dataset
    from mrcnn_ref.train import sample_forward_backward

    rc = load_run_config("tiny")
    model = MaskRCNN(rc.model, rng=np.random.default_rng(0))
    sample = build_dataset(rc.train, "train", 1)[0]
    model.zero_grad()
    losses, total = sample_forward_backward(model, sample, np.random.default_rng(3))
    assert np.isfinite(total) and set(losses) >= {"loss_classifier", "loss_mask"}
    once = {k: v.copy() for k, v in model.named_grads().items()}
    assert any(np.abs(v).max() > 0 for v in once.values())
    sample_forward_backward(model, sample, np.random.default_rng(3))
    for k, v in model.named_grads().items():
        np.testing.assert_allclose(v, 2 * once[k], rtol=1e-5, atol=1e-7, err_msg=k)

    model.forward_train = lambda *a, **kw: ({"loss_mask": float("nan")}, float("nan"))
    model.backward = lambda *a, **kw: pytest.fail("backward after a non-finite loss")
    _, total = sample_forward_backward(model, sample, np.random.default_rng(3))
    assert not np.isfinite(total)


def test_the_shipped_checkpoint_is_a_full_run_of_the_current_shapes_preset():
    """The README says `mrcnn-ref train --config shapes` reproduces the shipped model: its config
    must be the preset's (a preset change without a re-export fails here) and it must have run to
    the end."""
    import mrcnn_ref.model_io as tr

    loaded = tr.load_bundled_model()
    if loaded is None:
        pytest.skip("no bundled checkpoint")
    _, rcfg, extra = loaded
    preset = load_run_config("shapes")
    assert rcfg.to_dict() == preset.to_dict()
    assert extra["iteration"] == preset.train.iterations
    assert extra["loss_history"]["iteration"][-1] == preset.train.iterations


def test_plots_leave_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    """Writing the loss curves / a detections PNG must not switch a notebook's backend (which
    would silence its later plt.show()) nor leave pyplot figures open."""
    import matplotlib

    from mrcnn_ref.visualize import plot_loss_curves
    from mrcnn_ref.visualize import save_detections

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        import matplotlib.pyplot as plt

        n_open = len(plt.get_fignums())
        hist = {"total": [3.0, 2.0, 1.5], "loss_mask": [1.0, 0.7, 0.5]}
        a = plot_loss_curves(hist, str(tmp_path / "loss.png"))
        image = np.zeros((32, 40, 3), np.uint8)
        det = {"boxes": np.array([[2.0, 3.0, 20.0, 25.0]]), "labels": np.array([1]),
               "scores": np.array([0.9]), "masks": np.ones((1, 32, 40), bool)}
        b = save_detections(str(tmp_path / "det.png"), image, det)
        assert matplotlib.get_backend() == "svg"
        assert len(plt.get_fignums()) == n_open
        for path in (a, b):
            with open(path, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


def test_update_parameters_averages_clips_and_refuses_a_non_finite_gradient():
    """The update after a step's backward passes: mean gradient, norm before clipping, clipped
    step; a NaN anywhere stops it before the parameters change."""
    from mrcnn_ref.model.mask_rcnn import MaskRCNN
    from mrcnn_ref.nn.optim import SGD
    from mrcnn_ref.train import update_parameters

    model = MaskRCNN("tiny", rng=0)
    params = model.named_parameters()
    rng = np.random.default_rng(1)
    for g in model.named_grads().values():
        g[...] = rng.standard_normal(g.shape)
    summed = {k: g.astype(np.float64) for k, g in model.named_grads().items()}
    before = {k: p.copy() for k, p in params.items()}
    optim = SGD(params, lr=0.1, momentum=0.0, weight_decay=0.0)
    norm = update_parameters(model, optim, n_img=2, lr=0.1, max_norm=1.0)
    mean_norm = np.sqrt(sum(float(np.sum((g / 2) ** 2)) for g in summed.values()))
    assert norm == pytest.approx(mean_norm, rel=1e-5)
    for k, p in params.items():             # p -= lr * (g / 2) * (max_norm / norm)
        np.testing.assert_allclose(before[k] - p, 0.1 * summed[k] / 2 / (norm + 1e-6), rtol=1e-4, atol=1e-7)
    next(iter(model.named_grads().values()))[...] = np.nan
    snapshot = {k: p.copy() for k, p in params.items()}
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        update_parameters(model, optim, n_img=1, lr=0.1, max_norm=1.0)
    assert all(np.array_equal(snapshot[k], p) for k, p in params.items())
