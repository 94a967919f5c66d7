"""Device->host transfers of one training step and of one prediction, counted on the emulated
backend (CuPy's host/device rules on the CPU; :mod:`mrcnn_ref.emulated`).

    python benchmarks/bench_syncs.py [--sites 12] [--json]

On a GPU every such transfer waits for all queued kernels to finish, so their number — not only
the arithmetic — decides whether the device path can be fast. Counted with the shipped shapes
model, on shapes training/validation images:

* one training step of the shapes recipe: 2 images forward + backward, the global gradient norm,
  clipping and AdamW (budget 30);
* the same step with the device value checks on (``MRCNN_REF_CHECK_DEVICE_VALUES=1``), for
  comparison: what validating every op's input values would cost;
* one ``predict`` with the test-time refinements off (budget 40), and with the shipped config's
  refinements on.

Prints the totals and, per case, the ``file:line`` sites that read most often.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrcnn_ref import _checks  # noqa: E402
from mrcnn_ref.inference import predict_image  # noqa: E402
from mrcnn_ref.emulated import count_syncs  # noqa: E402
from mrcnn_ref.model.config import with_inference_overrides  # noqa: E402
from mrcnn_ref.nn.optim import AdamW  # noqa: E402
from mrcnn_ref.model_io import BUNDLED_CHECKPOINT, load_model  # noqa: E402
from mrcnn_ref.run_config import build_dataset  # noqa: E402
from mrcnn_ref.train import sample_forward_backward, update_parameters  # noqa: E402

BUDGETS = {"train_step": 30, "predict_plain": 40}
#: The test-time refinements, all off: the paper's plain inference.
PLAIN = {"test_flip": False, "test_scales": [1.0], "box_refine": False, "mask_rescoring": False,
         "matrix_nms": "off"}


def training_step(model, optim, samples, it=0, lr=0.003, max_norm=10.0):
    """One step of the shapes recipe on ``samples``: forward + backward of each image (rng
    ``[0, it, j]``), then :func:`mrcnn_ref.train.update_parameters` (average, norm, clip,
    ``optim.step``). Returns ``(per-image losses, gradient norm)``."""
    model.zero_grad()
    xp = model.array_module
    losses = [sample_forward_backward(model, s, np.random.default_rng([0, it, j]), xp)[0]
              for j, s in enumerate(samples)]
    return losses, update_parameters(model, optim, len(samples), lr, max_norm)


def shipped_model(backend="emulated", plain=False):
    """The shipped shapes model on ``backend``, with an AdamW optimizer as ``model.optim``."""
    model, rcfg, _ = load_model(BUNDLED_CHECKPOINT, backend=backend)
    if plain:
        model.config = with_inference_overrides(model.config, PLAIN)
    return model, rcfg, AdamW(model.named_parameters(), lr=0.003, weight_decay=0.05)


def count_training_step(check_values=False):
    model, rcfg, optim = shipped_model()
    ds = build_dataset(rcfg.train, "train", num_images=8)
    samples = [ds[i] for i in range(rcfg.train.images_per_batch)]
    before = _checks.CHECK_DEVICE_VALUES
    _checks.CHECK_DEVICE_VALUES = check_values
    try:
        with count_syncs() as c:
            training_step(model, optim, samples)
    finally:
        _checks.CHECK_DEVICE_VALUES = before
    return c


def count_predict(plain=True, image_index=1):
    """``predict_image`` on a host image: the upload, ``MaskRCNN.predict``, the results' download."""
    model, rcfg, _ = shipped_model(plain=plain)
    image = build_dataset(rcfg.train, "val", num_images=image_index + 1)[image_index]["image"]
    with count_syncs() as c:
        det = predict_image(model, image, score_thresh=0.0)
    assert len(det["scores"]) > 0
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=12, help="sites listed per case (default 12)")
    ap.add_argument("--json", action="store_true", help="print the totals as JSON only")
    args = ap.parse_args(argv)
    cases = {
        "train_step": count_training_step(),
        "train_step_value_checks": count_training_step(check_values=True),
        "predict_plain": count_predict(plain=True),
        "predict_refined": count_predict(plain=False),
    }
    if args.json:
        print(json.dumps({k: c.total for k, c in cases.items()}))
        return 0
    for name, c in cases.items():
        budget = BUDGETS.get(name)
        print(f"{name}: {c.total} device->host transfers" + (f" (budget {budget})" if budget else ""))
        for site, n in c.by_site.most_common(args.sites):
            print(f"    {n:4d}  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
