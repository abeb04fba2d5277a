"""Where the defocus map's error on pixel-shuffled images comes from: the source's contrast (issue 4).

Two measurements on the shipped model (or ``--model``):

1. the held-out pixel-shuffled images of ``linblur evaluate defocus`` (same seed, same images), one row per image:
   its source, the content's contrast (std / mean), the MAE, and the MAE and bias where the true σ < 2 px;
2. *uniform* blur: every held-out source, pixel-shuffled, blurred with one σ over the whole image, the
   evaluation's camera (800 photo-electrons at peak, read noise 2 e⁻, gain 1, offset 100 ADU); the median
   estimate in the centre, per σ.

A pixel-shuffled image is i.i.d. texture. Blurring it lowers the texture's variance, and shot noise adds variance in
proportion to the mean, scaled by the camera gain, which the network is not told (training draws it from 0.5–2
ADU/e⁻). A low-contrast texture (the ``cell`` source: std / mean ≈ 0.1) is therefore hard to tell from a blurred
image at a higher gain; a high-contrast one (``coins``, ≈ 0.7) is not.

    python docs/results/defocus_shuffle_contrast.py --out docs/results/defocus_shuffle_contrast.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SIGMAS = (0.0, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)


def main() -> None:
    import torch

    import napari_linblur as nl
    from napari_linblur.evaluation.defocus import EvalConfig, heldout_images
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.shuffle import pixel_shuffle
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.training.defocus import HELDOUT_SOURCES, _crop, _natural

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="defocus-default")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="crops per source and σ in the uniform sweep")
    p.add_argument("--out", default=None, help="JSON of the numbers")
    p.add_argument("--calibrated", action="store_true",
                   help="give noise-aware models the evaluation's exact camera (default: estimated from the image)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = EvalConfig()

    def estimate(img: np.ndarray) -> np.ndarray:
        camera = {"gain": 1.0, "offset": cfg.offset, "read_noise": cfg.read_noise} if a.calibrated else "auto"
        return np.asarray(nl.estimate_defocus(img, model=a.model, device="cpu", camera=camera), np.float64)

    rows = []
    for i, it in enumerate(heldout_images("shuffle", cfg)):
        pred, true, content = estimate(it["image"]), it["sigma"].astype(np.float64), it["content"]
        low = true < 2.0
        rows.append({"image": i, "source": HELDOUT_SOURCES[i % len(HELDOUT_SOURCES)],
                     "contrast": float(content.std() / max(float(content.mean()), 1e-9)),
                     "mae_px": float(np.abs(pred - true).mean()),
                     "mae_px_sigma_lt_2": float(np.abs(pred - true)[low].mean()) if low.any() else None,
                     "bias_px_sigma_lt_2": float((pred - true)[low].mean()) if low.any() else None})
    by_source = {s: float(np.mean([r["mae_px"] for r in rows if r["source"] == s])) for s in HELDOUT_SOURCES}

    uniform: dict[str, dict[str, list[float]]] = {}
    crop_contrast: dict[str, list[float]] = {}
    c = slice(cfg.size // 6, -cfg.size // 6)
    for si, src in enumerate(HELDOUT_SOURCES):
        uniform[src] = {}
        crop_contrast[src] = []
        for s in SIGMAS:
            meds = []
            for r in range(a.repeats):
                rng = np.random.default_rng([cfg.seed, 77, si, r])
                content = pixel_shuffle(_crop(_natural(src), cfg.size, rng), rng).astype(np.float32)
                if s == SIGMAS[0]:  # the same crop for every σ (same seed)
                    crop_contrast[src].append(float(content.std() / max(float(content.mean()), 1e-9)))
                blurred = np.clip(render_spatially_varying(content, np.full(content.shape, s, np.float32)), 0, None)
                img = poisson_gaussian((blurred + 0.02) * cfg.photons, gain=1.0, read_noise=cfg.read_noise,
                                       offset=cfg.offset, rng=rng)
                img = np.clip(np.round(img), 0, 65535).astype(np.uint16)
                meds.append(float(np.median(estimate(img)[c, c])))
            uniform[src][f"{s:g}"] = meds

    print(f"model {a.model}; held-out pixel-shuffled images ({cfg.n_images} of {cfg.size}², seed {cfg.seed})\n")
    print("| image | source | contrast (std / mean) | MAE px | MAE px, σ < 2 | bias px, σ < 2 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo = "" if r["mae_px_sigma_lt_2"] is None else f"{r['mae_px_sigma_lt_2']:.2f}"
        bi = "" if r["bias_px_sigma_lt_2"] is None else f"{r['bias_px_sigma_lt_2']:+.2f}"
        print(f"| {r['image']} | {r['source']} | {r['contrast']:.2f} | {r['mae_px']:.2f} | {lo} | {bi} |")
    print("\nmean MAE by source: " + ", ".join(f"{s} {v:.2f} px" for s, v in by_source.items()))
    print(f"\nUniform blur: median estimate in the centre ({a.repeats} crops each), px\n")
    print("| true σ | " + " | ".join(HELDOUT_SOURCES) + " |")
    print("|---|" + "---|" * len(HELDOUT_SOURCES))
    print("| crop contrast (std / mean) | " + " | ".join(" / ".join(f"{v:.2f}" for v in crop_contrast[src])
                                                   for src in HELDOUT_SOURCES) + " |")
    for s in SIGMAS:
        cells = [" / ".join(f"{v:.2f}" for v in uniform[src][f"{s:g}"]) for src in HELDOUT_SOURCES]
        print(f"| {s:g} | " + " | ".join(cells) + " |")
    if a.out:
        out = {"model": a.model, "seed": cfg.seed, "images": rows, "mae_by_source": by_source, "uniform": uniform,
               "uniform_crop_contrast": crop_contrast,
               "command": "python docs/results/defocus_shuffle_contrast.py"
               + (f" --model {a.model}" if a.model != "defocus-default" else "")
               + (f" --repeats {a.repeats}" if a.repeats != 3 else "") + (" --calibrated" if a.calibrated else "")}
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
