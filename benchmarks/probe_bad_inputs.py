"""Feed bad inputs to the command line and print what each one gets: the exit status and the one
line on stderr. With ``--markdown`` the result is the table of docs/robustness.md.

    python benchmarks/probe_bad_inputs.py [--markdown]

Every probe runs ``mrcnn-ref`` in a fresh process in a temporary folder; a probe whose command
prints a traceback, exits 0 or takes more than 60 s is marked as a failure (the script's exit
status is then 1).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mrcnn_ref.data.shapes import ShapesDataset  # noqa: E402
from mrcnn_ref.model_io import BUNDLED_CHECKPOINT  # noqa: E402


def _setup(tmp):
    """Files the probes use: images, a finished tiny run, configs, damaged checkpoints."""
    from skimage import io

    img = ShapesDataset("val", num_images=1)[0]["image"]
    io.imsave(f"{tmp}/ok.png", img, check_contrast=False)
    io.imsave(f"{tmp}/nan.tif", np.where(img == 0, np.nan, img / 255.0).astype(np.float32),
              check_contrast=False)
    io.imsave(f"{tmp}/g16.png", img[:, :, 0].astype(np.uint16) * 257, check_contrast=False)
    with open(f"{tmp}/notes.png", "w") as f:
        f.write("not a picture")
    subprocess.run([sys.executable, "-m", "mrcnn_ref", "train", "--config", "tiny", "--out", f"{tmp}/run",
                    "--iterations", "2", "--no-progress"], check=True, capture_output=True)
    data = open(BUNDLED_CHECKPOINT, "rb").read()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    open(f"{tmp}/flipped.npz", "wb").write(bytes(flipped))
    open(f"{tmp}/truncated.npz", "wb").write(data[: len(data) // 3])
    with open(f"{tmp}/text.npz", "w") as f:
        f.write("hello")
    os.makedirs(f"{tmp}/dir.npz")
    for name, cfg in {"momentum.json": {"preset": "tiny", "train": {"momentum": 5}},
                      "anchors.json": {"preset": "tiny", "model": {"anchor_sizes": [8, 16, -1, 64, 128]}},
                      "typo.json": {"preset": "tiny", "train": {"iteratons": 3}}}.items():
        with open(f"{tmp}/{name}", "w") as f:
            json.dump(cfg, f)
    with open(f"{tmp}/bad.toml", "w") as f:
        f.write("preset = tiny\n")
    with open(f"{tmp}/afile", "w") as f:
        f.write("x")


PROBES = [
    # (what, argv with {tmp} and {ck})
    ("fresh train into a folder holding a run", "train --config tiny --out {tmp}/run --iterations 2 --no-progress"),
    ("train --resume and --overwrite together", "train --config tiny --out {tmp}/run --resume --overwrite"),
    ("train --out is a file", "train --config tiny --out {tmp}/afile --iterations 2 --no-progress"),
    ("config: momentum 5", "train --config {tmp}/momentum.json --out {tmp}/r1 --no-progress"),
    ("config: an anchor size of -1", "train --config {tmp}/anchors.json --out {tmp}/r2 --no-progress"),
    ("config: an unknown key", "train --config {tmp}/typo.json --out {tmp}/r3 --no-progress"),
    ("config: TOML that does not parse", "train --config {tmp}/bad.toml --out {tmp}/r4 --no-progress"),
    ("config: no such preset or file", "train --config nosuch --out {tmp}/r5 --no-progress"),
    ("unknown backend", "train --config tiny --out {tmp}/r6 --backend tpu"),
    ("cupy requested without a GPU", "train --config tiny --out {tmp}/r7 --backend cupy"),
    ("checkpoint with one flipped byte", "predict {tmp}/ok.png --checkpoint {tmp}/flipped.npz --out {tmp}/p.png"),
    ("truncated checkpoint", "predict {tmp}/ok.png --checkpoint {tmp}/truncated.npz --out {tmp}/p.png"),
    ("a text file named .npz", "predict {tmp}/ok.png --checkpoint {tmp}/text.npz --out {tmp}/p.png"),
    ("a directory as checkpoint", "predict {tmp}/ok.png --checkpoint {tmp}/dir.npz --out {tmp}/p.png"),
    ("a missing checkpoint", "predict {tmp}/ok.png --checkpoint {tmp}/none.npz --out {tmp}/p.png"),
    ("image with a NaN pixel (float TIFF)", "predict {tmp}/nan.tif --checkpoint {ck} --out {tmp}/p.png"),
    ("a text file named .png", "predict {tmp}/notes.png --checkpoint {ck} --out {tmp}/p.png"),
    ("a missing image", "predict {tmp}/none.png --checkpoint {ck} --out {tmp}/p.png"),
    ("--set mask_threshold=NaN", "predict {tmp}/ok.png --checkpoint {ck} --out {tmp}/p.png --set mask_threshold=NaN"),
    ("--set mask_threshold=2", "predict {tmp}/ok.png --checkpoint {ck} --out {tmp}/p.png --set mask_threshold=2"),
    ("--set a training key", "predict {tmp}/ok.png --checkpoint {ck} --out {tmp}/p.png --set num_classes=3"),
    ("--score-thresh nan", "predict {tmp}/ok.png --checkpoint {ck} --out {tmp}/p.png --score-thresh nan"),
    ("--max-image-side 10", "predict {tmp}/ok.png --checkpoint {ck} --out {tmp}/p.png --max-image-side 10"),
    ("evaluate --out under a file", "evaluate --checkpoint {ck} --num-images 1 --no-progress --out {tmp}/afile/e"),
    ("evaluate --num-images 0", "evaluate --checkpoint {ck} --num-images 0 --out {tmp}/e"),
    ("evaluate with half the COCO options", "evaluate --checkpoint {ck} --coco-annotations {tmp}/x.json --out {tmp}/e"),
    ("evaluate with a missing COCO file", "evaluate --checkpoint {ck} --coco-annotations {tmp}/x.json --coco-images {tmp} --out {tmp}/e"),
    ("book into a folder whose parent is missing", "book --out {tmp}/no/such/site --chapters 01 --no-progress"),
    ("book: an unknown chapter", "book --out {tmp}/site --chapters 99 --no-progress"),
]


def run_probe(argv, tmp):
    cmd = [sys.executable, "-m", "mrcnn_ref", *argv.format(tmp=tmp, ck=BUNDLED_CHECKPOINT).split()]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp)
    except subprocess.TimeoutExpired:
        return None, "(timed out after 60 s)", False
    err = p.stderr.strip().splitlines()
    line = err[-1] if err else ""
    ok = p.returncode != 0 and "Traceback" not in p.stderr and len(err) == 1
    return p.returncode, line.replace(tmp, "TMP"), ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--markdown", action="store_true", help="print docs/robustness.md's table")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="probe_")
    try:
        _setup(tmp)
        rows, failed = [], 0
        for what, probe in PROBES:
            rc, line, ok = run_probe(probe, tmp)
            failed += not ok
            rows.append((what, probe.replace("{tmp}", "TMP").replace("{ck}", "CK"), rc, line, ok))
            if not args.markdown:
                print(f"{'ok ' if ok else 'BAD'} rc={rc}  {what}: {line}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.markdown:
        print("| bad input | command | exit | what it says |")
        print("|---|---|---|---|")
        for what, probe, rc, line, ok in rows:
            msg = line.replace("|", "\\|")
            print(f"| {what} | `mrcnn-ref {probe}` | {rc} | {msg}{'' if ok else ' **(not one line)**'} |")
    print(f"{len(rows) - failed} of {len(rows)} probes gave one line and a non-zero exit", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
