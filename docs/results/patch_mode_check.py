"""Patch mode on an in-focus fluorescence plane: every pixel of a tile vs its signal pixels (docs/guide/defocus.md,
"What the numbers mean").

    python docs/results/patch_mode_check.py --seed 0 --json docs/results/patch_mode_check.json

The in-focus w1 plane of field 0 of ``linblur synth --recipe bbbc006-like --seed SEED`` (520 x 696), the shipped
``defocus-default`` on the CPU in float32, 64-px tiles.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patch-size", type=int, default=64)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    from napari_linblur.inference.defocus_ops import estimate_defocus, patch_means, signal_mask
    from napari_linblur.synth.dataset import synthesize_field

    f = synthesize_field("bbbc006-like", seed=a.seed)
    z = int(np.argmin(np.abs(np.asarray(f["recipe"].plane_defocus_um))))  # the in-focus plane
    plane = f["image"][0, z]
    kw = {"device": "cpu", "amp": "off"}
    sigma = estimate_defocus(plane, **kw)
    mask = signal_mask(plane)
    every = estimate_defocus(plane, mode="patch", patch_size=a.patch_size, patch_pixels="all", **kw)
    signal = estimate_defocus(plane, mode="patch", patch_size=a.patch_size, patch_pixels="signal", **kw)
    every_t = patch_means(every, a.patch_size)  # one value per tile (the maps repeat it over the tile's pixels)
    signal_t = patch_means(signal, a.patch_size)
    empty = np.isnan(signal_t)
    res = {"command": f"python docs/results/patch_mode_check.py --seed {a.seed} --patch-size {a.patch_size}",
           "plane_defocus_um": float(f["recipe"].plane_defocus_um[z]), "median_sigma_signal_px": float(np.median(
               sigma[mask])), "tiles": int(every_t.size), "all_pixels_tiles_above_2px": int((every_t > 2).sum()),
           "all_pixels_max_px": float(every_t.max()), "of_those_without_signal": int(((every_t > 2) & empty).sum()),
           "signal_tiles_above_2px": int((signal_t > 2).sum()), "signal_max_px": float(np.nanmax(signal_t)),
           "nan_tiles": int(empty.sum())}
    print(json.dumps(res, indent=1))
    if a.json:
        from napari_linblur.io.atomic import write_json_atomic

        write_json_atomic(a.json, res)


if __name__ == "__main__":
    main()
