"""Ablation studies: Mask R-CNN's Table 2 (He et al. 2017), re-run on the shapes data.

A *study* is one sub-table of the paper; each *variant* (a row) is a run config in
``mrcnn_ref/configs/ablations/<study>/<variant>.json`` that ``mrcnn-ref train --config`` also takes.
:func:`run_ablation` (``mrcnn-ref ablation``) trains every variant for every seed in
``OUT/<variant>/seed<k>`` with :func:`mrcnn_ref.train.train`, scores it on the shapes validation
images with :func:`mrcnn_ref.inference.evaluate_model` (COCO AP of boxes and masks), and writes

* ``OUT/results.json`` — every run's AP/AP50/AP75 (mask and box), the mean and the standard
  deviation over seeds, and the paper's figures;
* ``OUT/table.md`` — the paper's layout: rows = variants, mask AP/AP50/AP75 (and box AP for
  ``stride32``), ours as ``mean ± std`` beside the paper's;
* ``OUT/chart.png`` — mask AP per variant, ours and the paper's.

Calling it again resumes: a finished run (``model.npz`` present) is not trained again, a
half-finished one continues from its newest checkpoint, and a stored evaluation on the same number
of images is reused — so a second call on a finished study trains nothing and writes the same
``results.json``.
"""
from __future__ import annotations

import json
import os

import numpy as np

from ._io import write_json
from .inference import evaluate_model
from .model.config import read_config_file
from .model_io import load_model
from .run_config import build_dataset, load_run_config
from .run_folder import RunFolder
from .train import train

__all__ = ["STUDIES", "study_config_path", "run_ablation", "CONFIG_DIR"]

#: Where the variants' run configs live (shipped with the package).
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "ablations")

METRICS = ("AP", "AP50", "AP75")

#: study -> title, whether the table has box AP, and its variants in the paper's row order:
#: ``(variant, row label, the paper's mask AP/AP50/AP75 (None where it gives none), its box AP)``.
#: The paper's figures are COCO minival, ResNet-50 (Table 2b-d: C4/C5 backbones; 2e: FPN).
STUDIES = {
    "mask-loss": dict(
        title="Table 2b: multinomial vs independent masks (ResNet-50-C4)", box_ap=False,
        variants=[("softmax", "softmax (multinomial)", (24.8, 44.1, 25.1), None),
                  ("sigmoid", "sigmoid (independent)", (30.3, 51.2, 31.5), None),
                  ("class-agnostic", "class-agnostic sigmoid", (29.7, None, None), None)]),
    "roi-ops": dict(
        title="Table 2c: RoIAlign (ResNet-50-C4, stride 16)", box_ap=False,
        variants=[("roi-pool", "RoIPool", (26.9, 48.8, 26.4), None),
                  ("roi-warp", "RoIWarp (bilinear, avg)", (27.1, 48.9, 27.1), None),
                  ("roi-align-max", "RoIAlign (max)", (30.2, 51.0, 31.8), None),
                  ("roi-align", "RoIAlign (avg)", (30.3, 51.2, 31.5), None)]),
    "stride32": dict(
        title="Table 2d: RoIAlign at stride 32 (ResNet-50-C5)", box_ap=True,
        variants=[("roi-pool", "RoIPool", (23.6, 46.5, 21.6), 28.2),
                  ("roi-align", "RoIAlign", (30.9, 51.8, 32.1), 34.0)]),
}


def study_config_path(study: str, variant: str) -> str:
    """The run config file of one variant of a study."""
    return os.path.join(CONFIG_DIR, study, f"{variant}.json")


def _check_args(study, seeds, iterations, num_images):
    if study not in STUDIES:
        raise ValueError(f"ablation: unknown study {study!r}; choose one of {sorted(STUDIES)}")
    if (not isinstance(seeds, (list, tuple)) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in seeds)):
        raise ValueError(f"ablation: seeds must be a non-empty list of ints >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"ablation: seeds must not repeat, got {list(seeds)}")
    for name, v in (("iterations", iterations), ("num_images", num_images)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
            raise ValueError(f"ablation: {name} must be a positive int, got {v!r}")


def _run_config(study, variant, overrides):
    """The variant's run config dict, with ``overrides`` (``{"model": {...}, "train": {...}}``)
    merged into its sections."""
    path = study_config_path(study, variant)
    d = read_config_file(path)
    for section, changes in (overrides or {}).items():
        if section not in ("model", "train"):
            raise ValueError(f"ablation: overrides may change 'model' and 'train', got {section!r}")
        d[section] = {**d.get(section, {}), **changes}
    return d


def _train_run(config, folder, seed, iterations, progress, log):
    """Train one run in ``folder``: nothing when it has finished, resume when it has a
    checkpoint, a fresh run otherwise (a folder left without a checkpoint is moved aside)."""
    run = RunFolder(folder)
    if os.path.exists(run.checkpoint_path()):
        log(f"  {folder}: finished, not trained again")
        return
    resume = bool(run.checkpoints())
    log(f"  {folder}: {'resuming' if resume else 'training'}")
    train(config, folder, seed=seed, resume=resume, iterations=iterations, progress=progress, log=log,
          overwrite=not resume and bool(run.run_files()))


def _evaluate_run(folder, num_images, progress, log):
    """Mask and box AP/AP50/AP75 (x100) of the run's ``model.npz`` on the first ``num_images``
    shapes validation images (default: the split's 200); stored in ``folder/eval``."""
    eval_dir = os.path.join(folder, "eval")
    summary_path = os.path.join(eval_dir, "summary.json")
    model, rcfg, _ = load_model(os.path.join(folder, "model.npz"))
    dataset = build_dataset(rcfg.train, "val", num_images=num_images)
    n = len(dataset)
    if os.path.exists(summary_path):
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        if summary.get("num_images") == n:
            log(f"  {folder}: evaluated before on {n} images")
            return summary
    res = evaluate_model(model, dataset, eval_dir, num_images=n, progress=progress,
                         log=lambda *_: None)
    summary = {"num_images": n,
               "segm": {k: round(100 * float(res["segm"][k]), 4) for k in METRICS},
               "bbox": {k: round(100 * float(res["bbox"][k]), 4) for k in METRICS}}
    write_json(summary, summary_path, indent=1)
    log(f"  {folder}: mask AP {summary['segm']['AP']:.1f}, box AP {summary['bbox']['AP']:.1f} "
        f"({n} images)")
    return summary


def _mean_std(runs, kind):
    values = np.array([[r[kind][k] for k in METRICS] for r in runs], dtype=float)   # (seeds, 3)
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if len(runs) > 1 else np.zeros(len(METRICS))
    return ({k: round(float(m), 4) for k, m in zip(METRICS, mean)},
            {k: round(float(s), 4) for k, s in zip(METRICS, std)})


def run_ablation(study: str, out_dir, seeds=(0,), iterations=None, num_images=None, progress=True,
                 log=print, overrides=None) -> dict:
    """Train, evaluate and tabulate every variant of ``study`` for every seed.

    study: a key of :data:`STUDIES`. seeds: the training seeds (each variant is trained once per
    seed). iterations: overrides the configs' schedule. num_images: validation images to score
    (default: the shapes val split, 200). overrides: ``{"model": {...}, "train": {...}}`` merged
    into every variant's config (tests use it to shrink the model). Returns the ``results.json``
    dict.
    """
    seeds = list(seeds) if isinstance(seeds, (list, tuple)) else seeds
    _check_args(study, seeds, iterations, num_images)
    spec = STUDIES[study]
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    total, k = len(spec["variants"]) * len(seeds), 0
    for variant, label, paper_mask, paper_box in spec["variants"]:
        config = load_run_config(_run_config(study, variant, overrides))
        runs = []
        for seed in seeds:
            k += 1
            folder = os.path.join(out_dir, variant, f"seed{seed}")
            log(f"[{k}/{total}] {study} / {variant}, seed {seed}")
            _train_run(config, folder, int(seed), iterations, progress, log)
            runs.append({"seed": int(seed), **_evaluate_run(folder, num_images, progress, log)})
        mean_segm, std_segm = _mean_std(runs, "segm")
        mean_bbox, std_bbox = _mean_std(runs, "bbox")
        rows.append({"variant": variant, "label": label, "runs": runs,
                     "mean": {"segm": mean_segm, "bbox": mean_bbox},
                     "std": {"segm": std_segm, "bbox": std_bbox},
                     "paper": {"segm": dict(zip(METRICS, paper_mask)), "bbox": {"AP": paper_box}}})
    results = {"study": study, "title": spec["title"], "seeds": [int(s) for s in seeds],
               "num_images": rows[0]["runs"][0]["num_images"], "box_ap": spec["box_ap"],
               "variants": rows}
    write_json(results, os.path.join(out_dir, "results.json"), indent=1)
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(results_table(results))
    plot_results(results, os.path.join(out_dir, "chart.png"))
    log(f"wrote {os.path.join(out_dir, 'results.json')}, table.md and chart.png")
    return results


def _cell(mean, std, n_seeds):
    return f"{mean:.1f}" if n_seeds == 1 else f"{mean:.1f} ± {std:.1f}"


def _paper(v):
    return "–" if v is None else f"{v:.1f}"


def results_table(results: dict) -> str:
    """``results.json`` as a Markdown table in the paper's layout (ours, then the paper's)."""
    n = len(results["seeds"])
    box = results["box_ap"]
    head = ["variant", "AP", "AP50", "AP75"] + (["box AP"] if box else []) \
        + ["paper AP", "paper AP50", "paper AP75"] + (["paper box AP"] if box else [])
    lines = [f"# {results['title']}", "",
             f"Shapes validation images: {results['num_images']}; seeds {results['seeds']} "
             f"({'mean ± sample std over seeds' if n > 1 else 'one seed'}). Mask AP unless noted; "
             "the paper's figures are COCO minival.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results["variants"]:
        m, s, p = row["mean"], row["std"], row["paper"]
        cells = [row["label"]] + [_cell(m["segm"][k], s["segm"][k], n) for k in METRICS]
        if box:
            cells.append(_cell(m["bbox"]["AP"], s["bbox"]["AP"], n))
        cells += [_paper(p["segm"][k]) for k in METRICS]
        if box:
            cells.append(_paper(p["bbox"]["AP"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: dict, path: str):
    """A bar chart of mask AP per variant: ours (mean, with the seeds' std as error bars) and the
    paper's, side by side."""
    from matplotlib.figure import Figure     # noqa: PLC0415 - a standalone figure (no pyplot)

    rows = results["variants"]
    x = np.arange(len(rows))
    ours = [r["mean"]["segm"]["AP"] for r in rows]
    err = [r["std"]["segm"]["AP"] for r in rows]
    paper = [r["paper"]["segm"]["AP"] or 0.0 for r in rows]
    fig = Figure(figsize=(1.6 * len(rows) + 2.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.2, ours, 0.4, yerr=err, capsize=3, label="ours (shapes)")
    ax.bar(x + 0.2, paper, 0.4, label="paper (COCO)")
    ax.set_xticks(x)
    ax.set_xticklabels([r["label"] for r in rows], fontsize=8)
    ax.set_ylabel("mask AP")
    ax.set_title(results["title"], fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
