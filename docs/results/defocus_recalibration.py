"""Would a monotone recalibration of the network's σ help? (docs/results/defocus.md; not shipped)

Fits two curves mapping the shipped model's predicted σ to the median true σ (0.25 px bins, made monotone):
``validation``, on the held-out generator's validation seed 787 (8 images each of both test sets at 800 and 8000
e⁻), and ``training``, on 40 batches of the model's own training recipe (card). Then reports the test MAE with
and without each curve on both test seeds.

    python docs/results/defocus_recalibration.py --json docs/results/defocus_recalibration.json   # about 4 min
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

EDGES = np.linspace(0.0, 11.0, 45)
CENTERS = (EDGES[:-1] + EDGES[1:]) / 2


def fit_curve(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Median true σ per predicted-σ bin (bins with < 50 pixels keep their centre), made non-decreasing."""
    idx = np.clip(np.digitize(pred, EDGES) - 1, 0, len(CENTERS) - 1)
    med = np.array([np.median(true[idx == k]) if (idx == k).sum() > 50 else CENTERS[k] for k in range(len(CENTERS))])
    return np.maximum.accumulate(med)


def main() -> None:
    import torch

    import napari_linblur as nl
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images
    from napari_linblur.models.registry import load_model
    from napari_linblur.training.defocus import DefocusDataConfig, DefocusTask, card_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    def collect(seed, photons, kind, n):
        cfg = replace(EvalConfig(), seed=seed, photons=photons, n_images=n)
        its = heldout_images(kind, cfg)
        pred = [np.asarray(nl.estimate_defocus(it["image"], device="cpu")).ravel() for it in its]
        return np.concatenate(pred), np.concatenate([it["sigma"].ravel() for it in its])

    val = [collect(787, ph, kind, 8) for kind in ("shuffle", "microscopy") for ph in (800.0, 8000.0)]
    curves = {"validation": fit_curve(np.concatenate([v[0] for v in val]), np.concatenate([v[1] for v in val]))}
    model = load_model("defocus-default", device="cpu")
    data = DefocusDataConfig(**{**card_recipe(), "batch_size": 8, "crop": 96, "render_size": 128, "pool_size": 128})
    task = DefocusTask(model.card["config"], data, seed=12345)
    preds, trues = [], []
    with torch.no_grad():
        for i in range(40):
            x, s = task.batch(10**6 + i)
            preds.append(model(x).float().numpy().ravel())
            trues.append(s.numpy().ravel())
    curves["training"] = fit_curve(np.concatenate(preds), np.concatenate(trues))

    rows = []
    print("| test seed | set | peak e⁻ | MAE px raw | validation curve | training curve |")
    print("|---|---|---|---|---|---|")
    for seed in (20240, 31337):
        for kind in ("shuffle", "microscopy"):
            for ph in (800.0, 2500.0, 25000.0):
                pred, true = collect(seed, ph, kind, 8)
                row = {"seed": seed, "set": kind, "photons": ph, "raw": float(np.abs(pred - true).mean()),
                       **{k: float(np.abs(np.interp(pred, CENTERS, c) - true).mean()) for k, c in curves.items()}}
                rows.append(row)
                print(f"| {seed} | {kind} | {ph:g} | {row['raw']:.3f} | {row['validation']:.3f} "
                      f"| {row['training']:.3f} |",
                      flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"command": "python docs/results/defocus_recalibration.py",
                                            "bin_centres": CENTERS.tolist(),
                                            "curves": {k: c.tolist() for k, c in curves.items()}, "rows": rows},
                                           indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
