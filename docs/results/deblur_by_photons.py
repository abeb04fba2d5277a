"""PSNR of deblurring networks against Richardson-Lucy with the true PSF, by photon count, at one depth.

The through-focus test planes of ``linblur evaluate deblur`` (``make_test_set``; the seed of depth index ``j`` is
``seed + 1000 j``), sorted by their peak photo-electrons and split into quartiles; per quartile the mean PSNR of
the input, of RL (true PSF, best iteration per image) and of each network, with its gain over RL.

    python docs/results/deblur_by_photons.py --depth 4 --n 64 --seed 3000000 \
        --model previous=runs/previous-deblur-default.safetensors --model current=deblur-default
"""

from __future__ import annotations

import argparse

import numpy as np

DEPTHS = (1.0, 2.0, 4.0, 6.0, 8.0)


def main() -> None:
    import torch

    from napari_linblur.baselines.richardson_lucy import best_richardson_lucy
    from napari_linblur.inference.deblur_ops import deblur
    from napari_linblur.metrics.image import psnr
    from napari_linblur.models.registry import load_model
    from napari_linblur.training.deblur import make_test_set

    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=float, default=4.0, choices=DEPTHS)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=3_000_000, help="3000000 = the validation seed")
    p.add_argument("--model", action="append", required=True, metavar="NAME=MODEL")
    a = p.parse_args()
    torch.set_num_threads(1)
    nets = {}
    for item in a.model:
        name, _, path = item.partition("=")
        nets[name] = load_model(path, device="cpu")
    rows = []
    for it in make_test_set("focus", a.n, seed=a.seed + 1000 * DEPTHS.index(a.depth), side=128, d_um=a.depth):
        s, b, psf = it["sharp"], it["blurry"], it["psf"]
        row = [it["photons"], psnr(s, b), best_richardson_lucy(b, psf, s, max_iter=60)[2]]
        row += [psnr(s, deblur(b, method="network", model=net, device="cpu")) for net in nets.values()]
        rows.append(row)
    arr = np.array(rows)
    arr = arr[np.argsort(arr[:, 0])]
    print(f"d = {a.depth:g} µm, {a.n} images, seed {a.seed}")
    print("| photons | input | RL (true PSF) | " + " | ".join(f"{k} (gain over RL)" for k in nets) + " |")
    print("|---|---|---|" + "---|" * len(nets))
    for idx in [*np.array_split(np.arange(len(arr)), 4), np.arange(len(arr))]:
        x = arr[idx]
        label = "all" if len(idx) == len(arr) else f"{x[0, 0]:.0f}–{x[-1, 0]:.0f}"
        cells = " | ".join(f"{x[:, 3 + i].mean():.2f} ({(x[:, 3 + i] - x[:, 2]).mean():+.2f})"
                           for i in range(len(nets)))
        print(f"| {label} | {x[:, 1].mean():.2f} | {x[:, 2].mean():.2f} | {cells} |")


if __name__ == "__main__":
    main()
