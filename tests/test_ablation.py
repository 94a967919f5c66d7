"""The ablation studies: every shipped variant config loads, and ``run_ablation`` trains, scores,
tabulates and resumes a (tiny) study end to end."""
import glob
import json
import os

import pytest

from mrcnn_ref.ablation import CONFIG_DIR, STUDIES, run_ablation, study_config_path
from mrcnn_ref.cli import main
from mrcnn_ref.model.config import PRESETS
from mrcnn_ref.run_config import load_run_config

# the tiny model (tests' preset) on 64-px shapes images, two steps, two validation images
TINY = {"model": {**{k: v for k, v in PRESETS["tiny"].items() if k != "name"}, "num_classes": 4},
        "train": {"num_train_images": 8, "image_size": 64, "images_per_batch": 1, "workers": 1,
                  "warmup_iters": 1, "checkpoint_every": 1, "log_every": 1}}


def test_every_variant_config_loads_and_differs_only_in_its_setting():
    files = sorted(glob.glob(os.path.join(CONFIG_DIR, "*", "*.json")))
    assert len(files) == sum(len(s["variants"]) for s in STUDIES.values())
    for study, spec in STUDIES.items():
        cfgs = [load_run_config(study_config_path(study, v[0])) for v in spec["variants"]]
        assert all(c.model.feature_mode == "single" and c.model.image_size == 256 == c.train.image_size
                   for c in cfgs)
        assert {c.model.single_stride for c in cfgs} == {32 if study == "stride32" else 16}
        fields = [c.model.to_dict() for c in cfgs]
        differing = {k for k in fields[0] if len({json.dumps(f[k]) for f in fields}) > 1} - {"name"}
        assert differing <= {"roi_op", "mask_loss", "mask_class_agnostic"}, differing


def test_run_ablation_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setitem(STUDIES, "tiny-study", dict(STUDIES["stride32"]))
    monkeypatch.setattr("mrcnn_ref.ablation.study_config_path",
                        lambda study, v: study_config_path("stride32", v))
    out = tmp_path / "study"
    lines = []
    res = run_ablation("tiny-study", out, seeds=[0], iterations=2, num_images=2, progress=False,
                       log=lines.append, overrides=TINY)
    assert [r["variant"] for r in res["variants"]] == ["roi-pool", "roi-align"]
    for row in res["variants"]:
        assert (out / row["variant"] / "seed0" / "model.npz").exists()
        assert 0.0 <= row["mean"]["segm"]["AP"] <= 100.0 and row["runs"][0]["num_images"] == 2
    assert res["variants"][1]["paper"]["bbox"]["AP"] == 34.0
    table = (out / "table.md").read_text()
    assert "| RoIAlign |" in table and "box AP" in table and "30.9" in table
    assert (out / "chart.png").stat().st_size > 1000
    first = (out / "results.json").read_text()
    assert any("training" in line for line in lines)

    lines.clear()     # a second call trains nothing and gives the same results
    run_ablation("tiny-study", out, seeds=[0], iterations=2, num_images=2, progress=False,
                 log=lines.append, overrides=TINY)
    assert not any("training" in line or "resuming" in line for line in lines)
    assert sum("finished, not trained again" in line for line in lines) == 2
    assert (out / "results.json").read_text() == first

    # a run cut short (no model.npz, a checkpoint) is resumed, not restarted
    run = out / "roi-pool" / "seed0"
    os.remove(run / "model.npz")
    lines.clear()
    run_ablation("tiny-study", out, seeds=[0], iterations=2, num_images=2, progress=False,
                 log=lines.append, overrides=TINY)
    assert sum("resuming" in line for line in lines) == 1


@pytest.mark.parametrize("args, message", [
    (["--study", "nope"], "unknown study 'nope'"),
    (["--study", "roi-ops", "--seeds", "0", "0"], "seeds must not repeat"),
    (["--study", "roi-ops", "--seeds", "-1"], "seeds must be a non-empty list of ints >= 0"),
    (["--study", "roi-ops", "--iterations", "0"], "iterations must be a positive int"),
])
def test_cli_ablation_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["ablation", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
