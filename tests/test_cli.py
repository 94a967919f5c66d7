"""The command line: train -> evaluate -> predict on the tiny config, and clear errors."""
import json
import os

import numpy as np
import pytest

from mrcnn_ref.cli import main


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "evaluate", "predict"):
        assert cmd in out


def test_train_evaluate_predict_roundtrip(tmp_path, capsys):
    from skimage import io

    from mrcnn_ref.data.shapes import ShapesDataset

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"preset": "tiny", "train": {"iterations": 4, "checkpoint_every": 2}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--no-progress"]) == 0
    assert (run / "model.npz").is_file() and (run / "loss_curves.png").is_file()

    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(run / "model.npz"), "--split", "val",
                 "--num-images", "3", "--out", str(ev), "--no-progress",
                 "--set", "test_flip=true", "--set", "mask_rescoring=true"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert set(metrics) == {"bbox", "segm"}
    for kind in metrics:
        assert {"AP", "AP50", "AP75"} <= set(metrics[kind])
    gt = json.loads((ev / "ground_truth.json").read_text())
    assert len(gt["images"]) == 3
    preds = json.loads((ev / "predictions.json").read_text())
    assert all({"image_id", "category_id", "bbox", "score", "segmentation"} <= set(p) for p in preds)

    # --first-image: training-split images past the 16 the tiny recipe trains on (a tuning set)
    tune = tmp_path / "tune"
    assert main(["evaluate", "--checkpoint", str(run / "model.npz"), "--split", "train",
                 "--first-image", "16", "--num-images", "2", "--out", str(tune), "--no-progress"]) == 0
    gt = json.loads((tune / "ground_truth.json").read_text())
    assert [im["id"] for im in gt["images"]] == [17, 18]
    assert [im["file_name"] for im in gt["images"]] == ["shapes_train_000016.png", "shapes_train_000017.png"]
    assert {p["image_id"] for p in json.loads((tune / "predictions.json").read_text())} <= {17, 18}

    img = tmp_path / "img.png"
    io.imsave(img, ShapesDataset("val", num_images=1, image_size=64)[0]["image"], check_contrast=False)
    out_png = tmp_path / "pred.png"
    assert main(["predict", str(img), "--checkpoint", str(run / "model.npz"), "--out", str(out_png),
                 "--score-thresh", "0"]) == 0
    assert out_png.is_file() and out_png.stat().st_size > 1000


@pytest.mark.parametrize("argv,needle", [
    (["train", "--config", "no_such_config", "--out", "{tmp}/r"], "neither a built-in"),
    (["evaluate", "--checkpoint", "{tmp}/missing.npz", "--out", "{tmp}/e"], "does not exist"),
    (["predict", "{tmp}/missing.png", "--checkpoint", "{tmp}/m.npz", "--out", "{tmp}/p.png"], "does not exist"),
    (["evaluate", "--checkpoint", "{bundled}", "--out", "{tmp}/e", "--set", "num_classes=3"],
     "cannot be changed after training"),
    (["evaluate", "--checkpoint", "{bundled}", "--out", "{tmp}/e", "--set", "test_flip=maybe"],
     "must be JSON"),
    (["evaluate", "--checkpoint", "{bundled}", "--out", "{tmp}/e", "--first-image", "-1"],
     "first_image must be an int >= 0"),
    (["evaluate", "--checkpoint", "{bundled}", "--out", "{tmp}/e", "--num-images", "0"],
     "num_images must be > 0"),
    (["evaluate", "--checkpoint", "{bundled}", "--out", "{tmp}/e", "--coco-annotations",
      "{tmp}/a.json", "--coco-images", "{tmp}"], "annotation file not found"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, needle):
    from mrcnn_ref.model_io import BUNDLED_CHECKPOINT

    argv = [a.replace("{tmp}", str(tmp_path)).replace("{bundled}", BUNDLED_CHECKPOINT) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_visualize_overlay_checks_shapes():
    from mrcnn_ref.visualize import overlay_masks

    img = np.zeros((8, 8, 3), np.uint8)
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 2:4, 2:4] = True
    out = overlay_masks(img, masks)
    assert out[3, 3].sum() > 0 and out[0, 0].sum() == 0
    with pytest.raises(ValueError, match="masks must have shape"):
        overlay_masks(img, np.zeros((1, 4, 4), bool))


def test_commands_protect_files_and_say_what_they_wrote(tmp_path, capsys):
    from skimage import io

    from mrcnn_ref.data.shapes import ShapesDataset
    from mrcnn_ref.model_io import BUNDLED_CHECKPOINT

    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--out", str(run), "--iterations", "2", "--no-progress"]
    assert main(argv) == 0
    before = (run / "model.npz").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2                                       # a run is there: refused
    err = capsys.readouterr().err
    assert "already holds a run" in err and err.count("\n") == 1
    assert (run / "model.npz").read_bytes() == before
    assert main(argv + ["--overwrite"]) == 0 and (tmp_path / "run.old-1" / "model.npz").read_bytes() == before

    # predict into a folder: the picture gets a name, and the printed path is the one written
    img = tmp_path / "pic.png"
    io.imsave(img, ShapesDataset("val", num_images=1)[0]["image"], check_contrast=False)
    capsys.readouterr()
    assert main(["predict", str(img), "--checkpoint", BUNDLED_CHECKPOINT, "--out", str(tmp_path)]) == 0
    written = capsys.readouterr().out.strip().splitlines()[-1].removeprefix("wrote ")
    assert written == str(tmp_path / "pic_prediction.png") and os.path.getsize(written) > 1000

    # an image larger than the limit is shrunk, and the boxes are given in its own pixels
    big = np.kron(ShapesDataset("val", num_images=1)[0]["image"], np.ones((3, 3, 1), np.uint8))
    io.imsave(tmp_path / "big.png", big, check_contrast=False)
    assert main(["predict", str(tmp_path / "big.png"), "--checkpoint", BUNDLED_CHECKPOINT,
                 "--out", str(tmp_path / "big_pred.png"), "--max-image-side", "128"]) == 0
    out = capsys.readouterr().out
    assert "384x384 image is predicted and drawn at 128x128" in out

    # a folder that cannot be made is one line, not a traceback; --debug shows the traceback
    (tmp_path / "afile").write_text("x")
    bad = ["evaluate", "--checkpoint", BUNDLED_CHECKPOINT, "--num-images", "1", "--no-progress",
           "--out", str(tmp_path / "afile" / "eval")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "afile" in err and "Traceback" not in err
    with pytest.raises(OSError):
        main(["--debug", *bad])
