"""How much of the defocus-map error is the image's, not the network's (issue 4's MAE bar).

On the held-out microscopy-like images of ``linblur evaluate defocus`` (same seed, same images), σ is only
observable where blurred light from a structure reaches the camera above the noise. This script measures

* the network's MAE by distance to the nearest signal pixel (``signal_mask`` of the noisy image, the mask of the
  evaluation's "signal pixels" rows);
* two *oracles* that know the true σ exactly wherever the image carries signal and must guess elsewhere — the
  best any estimator that reads σ from the light could do with a nearest-structure guess:
  ``nearest``: the true σ of the nearest masked pixel; ``nearest, else prior``: the same up to a distance R and
  the prior median of σ beyond it (the best R of 4, 8, 16, 32 px, chosen on these images: a lower bound);
* both for two masks: the evaluation's ``signal_mask`` and a generous ``detectable light`` mask (the noise-free
  blurred structure above the background by twice the background's noise: any pixel where blurred light is
  detectable at all).

    python docs/results/defocus_floor.py --out docs/results/defocus_floor.json

Prints a markdown table; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DIST_BINS = [(0.0, 0.5), (0.5, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, 32.0), (32.0, float("inf"))]


def nearest_fill(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values`` at the nearest ``mask`` pixel, and the distance to it (px)."""
    from scipy import ndimage as ndi

    if not mask.any():
        return np.full(values.shape, np.median(values), np.float32), np.full(values.shape, np.inf)
    dist, idx = ndi.distance_transform_edt(~mask, return_indices=True)
    return values[idx[0], idx[1]], dist


def main() -> None:
    import torch

    import napari_linblur as nl
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images
    from napari_linblur.inference.defocus_ops import signal_mask
    from napari_linblur.optics.varying import render_spatially_varying

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="defocus-default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON of the numbers")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    cfg = EvalConfig()
    prior = 5.0  # median of σ over the trained range [0, 10] px
    noise = float(np.sqrt(0.02 * cfg.photons + cfg.read_noise**2))  # background shot + read noise, e-
    per_image: list[dict] = []
    pooled: dict[str, list] = {"err": [], "dist": []}
    for it in heldout_images("microscopy", cfg):
        img, true = it["image"], it["sigma"].astype(np.float64)
        pred = np.asarray(nl.estimate_defocus(img, model=a.model, device="cpu"), np.float64)
        clean = np.clip(render_spatially_varying(it["content"], it["sigma"]), 0, None) * cfg.photons
        masks = {"signal_mask": np.asarray(signal_mask(img), bool), "detectable light": clean > 2.0 * noise}
        row = {"network, all pixels": float(np.abs(pred - true).mean()),
               "network, signal pixels": float(np.abs(pred - true)[masks["signal_mask"]].mean())}
        light = masks["detectable light"]
        row["network, detectable-light pixels"] = float(np.abs(pred - true)[light].mean())
        row["network, no detectable light"] = float(np.abs(pred - true)[~light].mean()) if (~light).any() else 0.0
        for name, m in masks.items():
            fill, dist = nearest_fill(true, m)
            row[f"{name}: fraction of pixels"] = float(m.mean())
            row[f"{name}: oracle nearest"] = float(np.abs(fill - true).mean())
            for r in (4, 8, 16, 32):
                est = np.where(dist <= r, fill, prior)
                row[f"{name}: oracle nearest, else prior (R={r})"] = float(np.abs(est - true).mean())
            if name == "signal_mask":
                pooled["err"].append(np.abs(pred - true).ravel())
                pooled["dist"].append(dist.ravel())
                pooled.setdefault("oracle", []).append(np.abs(fill - true).ravel())
        per_image.append(row)

    keys = list(per_image[0])
    mean = {k: float(np.mean([r[k] for r in per_image])) for k in keys}
    for name in ("signal_mask", "detectable light"):
        cands = {k: v for k, v in mean.items() if k.startswith(f"{name}: oracle nearest, else prior")}
        best = min(cands, key=cands.get)
        mean[f"{name}: best oracle"] = cands[best]
        mean[f"{name}: best oracle is"] = best
    err, dist, orc = (np.concatenate(pooled[k]) for k in ("err", "dist", "oracle"))
    by_dist = []
    for lo, hi in DIST_BINS:
        s = (dist >= lo) & (dist < hi)
        by_dist.append({"from_px": lo, "to_px": hi, "fraction": float(s.mean()), "network_mae": float(err[s].mean()),
                        "oracle_nearest_mae": float(orc[s].mean())})

    print(f"model {a.model}; {cfg.n_images} held-out microscopy-like images of {cfg.size}², seed {cfg.seed}")
    print("\n| | fraction of pixels | MAE px, all pixels |")
    print("|---|---|---|")
    print(f"| network | | {mean['network, all pixels']:.2f} (signal pixels {mean['network, signal pixels']:.2f}) |")
    print(f"| network on the `detectable light` pixels / the rest | | {mean['network, detectable-light pixels']:.2f} / "
          f"{mean['network, no detectable light']:.2f} |")
    for name in ("signal_mask", "detectable light"):
        print(f"| oracle on `{name}`, nearest | {mean[f'{name}: fraction of pixels']:.2f} | "
              f"{mean[f'{name}: oracle nearest']:.2f} |")
        print(f"| oracle on `{name}`, {mean[f'{name}: best oracle is'].split(': ')[1].removeprefix('oracle ')} | | "
              f"{mean[f'{name}: best oracle']:.2f} |")
    print("\n| distance to the nearest signal pixel (px) | fraction of pixels | network MAE px "
          "| oracle nearest MAE px |")
    print("|---|---|---|---|")
    for b in by_dist:
        hi = "∞" if not np.isfinite(b["to_px"]) else f"{b['to_px']:g}"
        print(f"| {b['from_px']:g}–{hi} | {b['fraction']:.3f} | {b['network_mae']:.2f} "
              f"| {b['oracle_nearest_mae']:.2f} |")
    if a.out:
        out = {"model": a.model, "seed": cfg.seed, "n_images": cfg.n_images, "size": cfg.size, "mean": mean,
               "by_distance": [{**b, "to_px": None if not np.isfinite(b["to_px"]) else b["to_px"]} for b in by_dist],
               "command": "python docs/results/defocus_floor.py"
                          + (f" --model {a.model}" if a.model != "defocus-default" else "")}
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
