"""Defocus-map MAE of networks by the held-out images' brightness (peak photo-electrons).

The held-out spatially varying test images of ``linblur evaluate defocus`` (``heldout_images``: the same contents
and σ maps at every level, only the photon count and therefore the noise changes), scored at each ``--photons``
level: MAE (px) over all pixels of the microscopy set, over its signal pixels, and over the pixel-shuffled set, with
the camera estimated from each image (``camera="auto"``, as a user runs it) and given exactly ("cal.").
docs/results/defocus.md, "Brightness".

    python docs/results/defocus_by_photons.py --seed 20240 --n-images 16 \
        --photons 200 800 2500 8000 25000 50000 \
        --model shipped=defocus-default --model bright=runs/dph-4/model.safetensors --json out.json
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    import torch

    from napari_linblur.cli.evaluate_defocus import parse_models
    from napari_linblur.evaluation.defocus import EvalConfig, evaluate_defocus

    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--photons", type=float, nargs="+", default=[200, 800, 2500, 8000, 25000, 50000])
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the table's numbers here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models = parse_models(a.model)  # the labels and paths of `linblur evaluate defocus --model`
    rows: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    for ph in a.photons:
        cfg = EvalConfig(n_images=a.n_images, size=a.size, seed=a.seed, photons=float(ph), bbbc006=None)
        res = evaluate_defocus(models, cfg=cfg, baselines=False, device="cpu", through_focus=False, bbbc006=False)
        sv = res["spatially_varying"]
        for name in models:
            cal = f"{name}, calibrated camera"
            rows[name][f"{ph:g}"] = {
                "micro_all": sv["microscopy"][name]["all"]["mae_px"],
                "micro_signal": sv["microscopy"][name]["signal"]["mae_px"],
                "shuffled": sv["shuffle"][name]["all"]["mae_px"],
                "micro_all_cal": sv["microscopy"][cal]["all"]["mae_px"] if cal in sv["microscopy"] else None,
                "shuffled_cal": sv["shuffle"][cal]["all"]["mae_px"] if cal in sv["shuffle"] else None,
            }
    print(f"seed {a.seed}, {a.n_images} images of {a.size}² per set; MAE px: micro all / micro signal / shuffled "
          "(camera auto); micro all / shuffled (calibrated camera)")
    print("| photons | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))

    def f(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    for ph in a.photons:
        k = f"{ph:g}"
        cells = [f"{f(r['micro_all'])} / {f(r['micro_signal'])} / {f(r['shuffled'])}; cal. {f(r['micro_all_cal'])}"
                 f" / {f(r['shuffled_cal'])}" for r in (rows[n][k] for n in models)]
        print(f"| {k} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"seed": a.seed, "n_images": a.n_images, "size": a.size, "models": models, "mae_px": rows},
                      fh, indent=1)


if __name__ == "__main__":
    main()
