"""Figure for docs/results/deblur.md: single-image deblurring next to the true-PSF baselines.

Run from the repository root (about 20 s on one core)::

    python docs/figures/deblur_figures.py          # writes docs/images/deblur_examples.png

Row 1: a through-focus plane (6 µm, Born–Wolf PSF, noisy) — input, Wiener and Richardson–Lucy given the true PSF
(best balance / iteration on this very image), the network (blind), the sharp field.
Row 2: spatially varying blur — input, its σ map, the network, defocus-guided deblurring (true map), the sharp field.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_linblur.baselines.richardson_lucy import best_richardson_lucy  # noqa: E402
from napari_linblur.baselines.wiener import best_wiener  # noqa: E402
from napari_linblur.inference.deblur_ops import deblur  # noqa: E402
from napari_linblur.metrics.image import psnr  # noqa: E402
from napari_linblur.training.deblur import make_test_set  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "images" / "deblur_examples.png"


def main(out: Path = OUT, model="deblur-default") -> Path:
    import torch

    torch.set_num_threads(1)
    focus = make_test_set("focus", 2, seed=3_000_000, side=192, d_um=6.0)[1]
    varying = make_test_set("varying", 2, seed=3_100_000, side=192)[1]
    s, b, psf = focus["sharp"], focus["blurry"], focus["psf"]
    w, wb, wp = best_wiener(b, psf, s)
    r, rk, rp, _ = best_richardson_lucy(b, psf, s, max_iter=60)
    n = deblur(b, method="network", model=model, device="cpu")
    vs, vb, vm = varying["sharp"], varying["blurry"], varying["sigma_map"]
    vn = deblur(vb, method="network", model=model, device="cpu")
    vg = deblur(vb, method="guided", model=model, sigma_map=vm, device="cpu")
    fig, axes = plt.subplots(2, 5, figsize=(16, 7), layout="constrained")
    lo, hi = np.percentile(s, [0.5, 99.8])
    panels = [
        (b, f"input, d = 6 µm\n{psnr(s, b):.2f} dB"),
        (w, f"Wiener, true PSF (balance {wb:.2g})\n{wp:.2f} dB"),
        (r, f"Richardson–Lucy, true PSF ({rk} it.)\n{rp:.2f} dB"),
        (n, f"network (blind)\n{psnr(s, n):.2f} dB"),
        (s, "sharp field"),
    ]
    for ax, (img, title) in zip(axes[0], panels):
        ax.imshow(img, cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=10)
    lo, hi = np.percentile(vs, [0.5, 99.8])
    panels = [
        (vb, f"input, spatially varying\n{psnr(vs, vb):.2f} dB"),
        (vm, "true σ map (px)"),
        (vn, f"network\n{psnr(vs, vn):.2f} dB"),
        (vg, f"guided (true map)\n{psnr(vs, vg):.2f} dB"),
        (vs, "sharp field"),
    ]
    for i, (ax, (img, title)) in enumerate(zip(axes[1], panels)):
        if i == 1:
            im = ax.imshow(img, cmap="viridis")
            fig.colorbar(im, ax=ax, shrink=0.7)
        else:
            ax.imshow(img, cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main(model=sys.argv[1] if len(sys.argv) > 1 else "deblur-default"))
