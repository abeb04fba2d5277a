"""An oracle that knows the sharp image: how much σ does a texture carry at a given brightness?

``docs/results/defocus_floor.py`` bounds the error on microscopy-like images by where light is detectable. This
script asks, for each held-out content of ``linblur evaluate defocus`` (phantoms, pixel-shuffled ``coins`` and
``cell``), how precisely σ can be read from the image at all. The oracle gets every advantage a network does not
have: the exact all-in-focus content, the exact camera (photons, background, read noise, offset) and a σ that is
constant over the whole field (rendered with the project's renderer, then Poisson–Gaussian noise).

For every candidate σ on a 0.25 px grid over [0, 10] it renders the content with that σ, scores each pixel by the
Poisson–Gaussian log-likelihood of its observed value, sums the scores over a square window of radius R, and reads
out the posterior median of σ under a uniform prior (the MAE-optimal read-out of that posterior). The MAE against
the true constant σ says how much σ the texture in a (2R+1)² window carries at that brightness.

    python docs/results/defocus_sharp_oracle.py --json docs/results/defocus_sharp_oracle.json     # about 70 s

Prints a markdown table (MAE px by brightness, content and σ, for each R).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

GRID = np.arange(0.0, 10.0 + 1e-9, 0.25)


def local_posterior(img: np.ndarray, content: np.ndarray, cfg, radii: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Posterior-median σ per pixel for each window radius (uniform prior on ``GRID``)."""
    from scipy import ndimage as ndi

    from napari_linblur.optics.varying import render_spatially_varying

    x = img.astype(np.float64)
    ll = np.empty((len(GRID), *img.shape), np.float64)
    for k, s in enumerate(GRID):
        blurred = np.clip(render_spatially_varying(content, np.full(content.shape, s, np.float32)), 0, None)
        mu_e = (blurred.astype(np.float64) + 0.02) * cfg.photons
        var = mu_e + cfg.read_noise**2 + 1.0 / 12.0  # shot + read noise + rounding to ADU
        ll[k] = -0.5 * (x - cfg.offset - mu_e) ** 2 / var - 0.5 * np.log(var)
    out = {}
    for r in radii:
        w = ndi.uniform_filter(ll, size=(1, 2 * r + 1, 2 * r + 1), mode="reflect") * (2 * r + 1) ** 2
        w -= w.max(axis=0, keepdims=True)
        p = np.exp(w)
        cdf = np.cumsum(p, axis=0) / p.sum(axis=0, keepdims=True)
        out[r] = GRID[np.argmax(cdf >= 0.5, axis=0)].astype(np.float32)
    return out


def main() -> None:
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.varying import render_spatially_varying

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--photons", type=float, nargs="+", default=[800.0, 2500.0, 25000.0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 3.0, 5.0, 7.0, 9.0])
    p.add_argument("--n-images", type=int, default=8, help="held-out contents per set (the evaluation's first N)")
    p.add_argument("--seed", type=int, default=20240)
    p.add_argument("--radii", type=int, nargs="+", default=[8, 16])
    p.add_argument("--json", default=None, help="write the numbers here")
    a = p.parse_args()
    t0 = time.perf_counter()
    cfg0 = replace(EvalConfig(), n_images=a.n_images, seed=a.seed)
    contents = {"phantom": [it["content"] for it in heldout_images("microscopy", cfg0)]}
    shuffled = [it["content"] for it in heldout_images("shuffle", cfg0)]
    contents["coins"], contents["cell"] = shuffled[0::2], shuffled[1::2]  # HELDOUT_SOURCES alternate
    rows = []
    for ph in a.photons:
        cfg = replace(cfg0, photons=float(ph))
        for src, cs in contents.items():
            for s in a.sigmas:
                errs = {r: [] for r in a.radii}
                for i, c in enumerate(cs):
                    blurred = np.clip(render_spatially_varying(c, np.full(c.shape, s, np.float32)), 0, None)
                    rng = np.random.default_rng([a.seed, 99, i, int(ph), int(s * 100)])
                    img = np.clip(np.round(poisson_gaussian((blurred + 0.02) * ph, gain=1.0, read_noise=cfg.read_noise,
                                                            offset=cfg.offset, rng=rng)), 0, 65535)
                    for r, e in local_posterior(img, c, cfg, tuple(a.radii)).items():
                        errs[r].append(float(np.abs(e - s).mean()))
                rows.append({"photons": ph, "source": src, "sigma": s,
                             "mae_px_by_radius": {str(r): float(np.mean(v)) for r, v in errs.items()}})
    print(f"σ-read-out error of a sharp-image oracle on constant-σ fields (posterior median, window radius "
          f"{'/'.join(map(str, a.radii))} px), MAE px; held-out contents of seed {a.seed}, {a.n_images} per set")
    print("\n| peak e⁻ | content | " + " | ".join(f"σ = {s:g}" for s in a.sigmas) + " |")
    print("|---|---|" + "---|" * len(a.sigmas))
    for ph in a.photons:
        for src in contents:
            cells = [r for r in rows if r["photons"] == ph and r["source"] == src]
            print(f"| {ph:g} | {src} | " + " | ".join(
                " / ".join(f"{c['mae_px_by_radius'][str(r)]:.2f}" for r in a.radii) for c in cells) + " |")
    print(f"\n{time.perf_counter() - t0:.0f} s")
    if a.json:
        cmd = ("python docs/results/defocus_sharp_oracle.py --photons " + " ".join(f"{v:g}" for v in a.photons)
               + " --sigmas " + " ".join(f"{v:g}" for v in a.sigmas) + f" --n-images {a.n_images} --seed {a.seed}"
               + " --radii " + " ".join(map(str, a.radii)))
        Path(a.json).write_text(json.dumps({"command": cmd, "rows": rows}, indent=2))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
