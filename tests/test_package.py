"""The public surface: torchvision-compatible names and signatures, op pairs, the console script."""
import inspect
import subprocess
import sys

import pytest

import mrcnn_ref
import mrcnn_ref.ops as ops

# torchvision.ops signatures (parameter names and defaults) that ours must share
EXPECTED = {
    "box_iou": [("boxes1", inspect._empty), ("boxes2", inspect._empty)],
    "nms": [("boxes", inspect._empty), ("scores", inspect._empty), ("iou_threshold", inspect._empty)],
    "batched_nms": [("boxes", inspect._empty), ("scores", inspect._empty), ("idxs", inspect._empty),
                    ("iou_threshold", inspect._empty)],
    "roi_align": [("input", inspect._empty), ("boxes", inspect._empty), ("output_size", inspect._empty),
                  ("spatial_scale", 1.0), ("sampling_ratio", -1), ("aligned", False)],
    "roi_pool": [("input", inspect._empty), ("boxes", inspect._empty), ("output_size", inspect._empty),
                 ("spatial_scale", 1.0)],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_torchvision_compatible_signature(name):
    params = list(inspect.signature(getattr(mrcnn_ref, name)).parameters.values())
    got = [(p.name, p.default) for p in params[:len(EXPECTED[name])]]
    assert got == EXPECTED[name]
    # anything extra must be optional
    assert all(p.default is not inspect._empty for p in params[len(EXPECTED[name]):])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_signature_as_installed_torchvision(name):
    tvops = pytest.importorskip("torchvision.ops")
    theirs = [(p.name, p.default) for p in inspect.signature(getattr(tvops, name)).parameters.values()]
    ours = [(p.name, p.default) for p in inspect.signature(getattr(mrcnn_ref, name)).parameters.values()]
    assert ours[:len(theirs)] == theirs


def test_every_forward_has_a_backward():
    forwards = [n for n in ops.__all__ if n.endswith("_forward")]
    assert len(forwards) >= 15
    for f in forwards:
        assert f[: -len("_forward")] + "_backward" in ops.__all__, f


def test_no_autograd_library_is_imported():
    code = ("import sys, mrcnn_ref, mrcnn_ref.ops, mrcnn_ref.model.mask_rcnn, mrcnn_ref.train, "
            "mrcnn_ref.evaluate, mrcnn_ref.cli; "
            "bad = [m for m in ('torch', 'tensorflow', 'jax', 'autograd', 'pycocotools') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "mrcnn_ref", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "train" in r.stdout and "evaluate" in r.stdout


def test_box_iou_formats_agree():
    import numpy as np

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (6, 2))
    wh = rng.uniform(1, 30, (6, 2))
    xyxy = np.concatenate([xy, xy + wh], 1)
    ref = mrcnn_ref.box_iou(xyxy, xyxy[::-1].copy())
    np.testing.assert_allclose(mrcnn_ref.box_iou(np.concatenate([xy, wh], 1),
                                                 np.concatenate([xy, wh], 1)[::-1].copy(), fmt="xywh"), ref)
    c = np.concatenate([xy + wh / 2, wh], 1)
    np.testing.assert_allclose(mrcnn_ref.box_iou(c, c[::-1].copy(), fmt="cxcywh"), ref, rtol=1e-12)
    with pytest.raises(ValueError, match="fmt"):
        mrcnn_ref.box_iou(xyxy, xyxy, fmt="yxyx")
