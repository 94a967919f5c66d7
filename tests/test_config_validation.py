"""Every config field is checked when a config is loaded: its type, a finite value, its range; a
file's errors name the file and the key; the CLI says so in one line."""
import json

import pytest

from mrcnn_ref.cli import main
from mrcnn_ref.model_io import BUNDLED_CHECKPOINT
from mrcnn_ref.run_config import load_run_config


@pytest.mark.parametrize("section,key,value", [
    ("train", "momentum", 5), ("train", "base_lr", float("nan")), ("train", "warmup_factor", 0),
    ("train", "iterations", 2.5), ("train", "hflip", "yes"), ("train", "adam_betas", [0.9, "x"]),
    ("model", "mask_threshold", 2.0), ("model", "mask_threshold", float("nan")),
    ("model", "score_thresh", float("inf")), ("model", "anchor_sizes", [16, 32, -1, 128, 256]),
    ("model", "box_weights", [10, 10, 0, 5]), ("model", "rpn_smooth_l1_beta", -1.0),
    ("model", "rpn_min_size", "small"), ("model", "box_min_size", -0.5), ("model", "test_flip", 1),
    ("model", "roi_canonical_size", 0), ("model", "anchor_ratios", [0.5, None, 2.0]),
])
def test_bad_values_are_refused_at_load_naming_file_and_key(tmp_path, section, key, value):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"preset": "tiny", section: {key: value}}))
    with pytest.raises((TypeError, ValueError)) as e:
        load_run_config(str(path))
    msg = str(e.value)
    assert str(path) in msg and key in msg and "\n" not in msg


@pytest.mark.parametrize("argv,needle", [
    (["--set", "mask_threshold=2"], "mask_threshold"),
    (["--set", "mask_threshold=NaN"], "mask_threshold"),
    (["--score-thresh", "nan"], "score threshold"),
    (["--score-thresh", "1.5"], "score threshold"),
])
def test_bad_inference_settings_are_one_line_errors(tmp_path, capsys, argv, needle):
    from skimage import io

    from mrcnn_ref.data.shapes import ShapesDataset

    img = tmp_path / "img.png"
    io.imsave(img, ShapesDataset("val", num_images=1, image_size=64)[0]["image"], check_contrast=False)
    rc = main(["predict", str(img), "--checkpoint", BUNDLED_CHECKPOINT, "--out", str(tmp_path / "p.png"),
               *argv])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists()
