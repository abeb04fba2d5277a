"""One to five saturated camera pixels (65535) in a 128x128 plane: how far and how much they move the σ map.

Run: ``python docs/results/hot_pixel_check.py``. Session 20 added the hot-pixel suppression
(``inference.normalize.suppress_hot_pixels``); for the numbers before it, run this file in a checkout of 35684ab.
"""

import warnings

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

import napari_linblur as nl

torch.set_num_threads(1)
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
sharp = np.zeros((128, 128))
sharp[rng.integers(0, 128, 150), rng.integers(0, 128, 150)] = 1
yy, xx = np.mgrid[:128, :128]
for s in (0.7, 3.0):
    plane = rng.poisson(gaussian_filter(sharp, s) * 20000 + 100).clip(0, 65535).astype(np.uint16)
    ref = nl.estimate_defocus(plane, device="cpu", amp="off")
    for v, n in [(65535, 1), (65535, 5)]:
        hot = plane.copy()
        idx = (rng.integers(0, 128, n), rng.integers(0, 128, n))
        hot[idx] = v
        diff = np.abs(nl.estimate_defocus(hot, device="cpu", amp="off") - ref)
        dist = np.min([np.hypot(yy - y, xx - x) for y, x in zip(*idx)], axis=0)
        print(f"blur σ={s}: {n} hot px={v}: max |Δσ| {diff.max():.2f} px; beyond 32 px of a hot pixel "
              f"{diff[dist > 32].max():.3f} px; pixels with |Δσ| > 0.5 px: {(diff > 0.5).mean() * 100:.1f} %")
