"""Figures of docs/results/latent-ae.md: blur synthesis across alpha, deblurring from (z_k, z_2k) pairs, latent PCA.

Usage::

    python docs/figures/latent_figures.py --data DATA.zarr --model direct=RUN_D/model.safetensors \\
        --model indirect=RUN_I/model.safetensors --model baseline=RUN_B/model.safetensors --out docs/images

The first ``--model`` is used for the synthesis and deblurring figures; all of them appear in the PCA figure.
``python docs/figures/latent_figures.py --log-table LABEL=RUN_DIR ...`` prints the validation log of training
runs (latent scale, linearity) as a Markdown table.
The field shown is the first held-out test field of the 7:1:2 split (``--split-seed``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _crop(x, side=192):
    h, w = x.shape[-2:]
    y0, x0 = (h - side) // 2, (w - side) // 2
    return x[..., y0 : y0 + side, x0 : x0 + side]


def log_table(runs: list[str], keys=("val_latent_abs", "val_lin_rel", "val_psnr_interp", "val_rec_a")) -> str:
    """Markdown table of the validation records of training runs (``LABEL=RUN_DIR``), from their log.jsonl."""
    import json

    lines = ["| run | step | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for spec in runs:
        label, _, run = spec.partition("=")
        for ln in Path(run, "log.jsonl").read_text().splitlines():
            rec = json.loads(ln)
            if "val_loss" in rec:
                vals = " | ".join(f"{rec[k]:.4g}" if k in rec else "" for k in keys)
                lines.append(f"| {label} | {rec['step']} | {vals} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv and argv[0] == "--log-table":
        print(log_table(argv[1:]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", action="append", required=True, help="LABEL=PATH (or a shipped name)")
    p.add_argument("--channel", default="w1")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--out", default="docs/images")
    p.add_argument("--figures", nargs="+", choices=["synthesis", "deblur", "pca"],
                   default=["synthesis", "deblur", "pca"],
                   help="which figures to draw (default all; synthesis and deblur show the first --model only)")
    args = p.parse_args(argv)

    from napari_linblur.evaluation.ae import _as_called, _field_recipe, _true_psf
    from napari_linblur.inference.latent_ops import encode_normalized
    from napari_linblur.inference.normalize import fit_normalization
    from napari_linblur.models.registry import load_model
    from napari_linblur.training.ae import count_fields, load_fields, split_fields

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for spec in args.model:
        label, _, path = spec.partition("=")
        models.append((label, load_model(path or label, device="cpu")))
    test = split_fields(count_fields(args.data), args.split_seed)["test"]
    ds = load_fields(args.data, args.channel, fields=[int(test[0])])
    f = ds.fields[0]
    norm = fit_normalization(*list(f.planes))
    planes = np.stack([norm.apply(q) for q in f.planes])
    n = len(planes)
    label0, net = models[0]
    vmax = float(np.percentile(planes[0], 99.8))

    # 1) synthesized blur across alpha: from z_0 (in focus) and z_{N-1}, each pair run as synthesize_blur runs it
    alphas = np.linspace(1, 0, n) if "synthesis" in args.figures else []
    fig, ax = plt.subplots(3, n, figsize=(1.6 * n, 5.2)) if len(alphas) else (None, None)
    for j, al in enumerate(alphas):
        syn = _as_called(net, planes[0], planes[-1], al, 1 - al)
        blend = al * planes[0] + (1 - al) * planes[-1]
        for i, (img, name) in enumerate([(planes[j], "real"), (syn, label0), (blend, "pixel blend")]):
            ax[i, j].imshow(_crop(img), cmap="gray", vmin=0, vmax=vmax)
            ax[i, j].set_xticks([])
            ax[i, j].set_yticks([])
            if j == 0:
                ax[i, j].set_ylabel(name)
        ax[0, j].set_title(f"z{f.plane_index[j]} α={al:.3f}", fontsize=8)
    if fig is not None:
        fig.suptitle(f"Blur synthesis from z{f.plane_index[0]} and z{f.plane_index[-1]} ({f.name}, held out)")
        fig.tight_layout()
        fig.savefig(out / "latent_synthesis.png", dpi=90)
        plt.close(fig)

    # 2) deblurring from (z_k, z_2k) pairs, alpha = 0.5
    from napari_linblur.baselines.wiener import best_wiener

    recipe = _field_recipe(args.data, f.name) or ds.recipe
    ks = list(range(1, (n - 1) // 2 + 1)) if "deblur" in args.figures else []
    c_index = 0 if str(args.channel) in ("w1", "0") else 1
    fig, ax = plt.subplots(len(ks), 4, figsize=(8.4, 2.2 * len(ks))) if ks else (None, None)
    for r, k in enumerate(ks):
        ext = _as_called(net, planes[k], planes[2 * k], 2.0, -1.0)  # as deblur_pair runs it
        psf = _true_psf(recipe, c_index, f.defocus_um[k]) if recipe else None
        # the oracle estimates the in-focus plane, which carries its own PSF (as linblur evaluate ae scores it)
        wien = (best_wiener(planes[k], psf, planes[0], data_range=1.0,
                            reference_psf=_true_psf(recipe, c_index, f.defocus_um[0]))[0]
                if psf is not None else np.zeros_like(ext))
        cols = [(planes[k], f"input z{f.plane_index[k]}"), (ext, f"{label0} from (z{f.plane_index[k]}, "
                f"z{f.plane_index[2 * k]})"), (wien, "Wiener, true PSF"), (planes[0], f"real z{f.plane_index[0]}")]
        for cidx, (img, name) in enumerate(cols):
            ax[r, cidx].imshow(_crop(img), cmap="gray", vmin=0, vmax=vmax)
            ax[r, cidx].set_title(name, fontsize=8)
            ax[r, cidx].set_xticks([])
            ax[r, cidx].set_yticks([])
    if fig is not None:
        fig.tight_layout()
        fig.savefig(out / "latent_deblur.png", dpi=90)
        plt.close(fig)
    written = [out / f"latent_{k}.png" for k in ("synthesis", "deblur") if k in args.figures]
    if "pca" not in args.figures:
        print("wrote " + ", ".join(map(str, written)))
        return 0

    # 3) latent PCA (paper Fig. 3): the N planes of the field, per model
    fig, ax = plt.subplots(1, len(models), figsize=(3.2 * len(models), 3.2))
    ax = np.atleast_1d(ax)
    for i, (label, m) in enumerate(models):
        z = np.stack([encode_normalized(m, q).ravel() for q in planes]).astype(np.float64)
        zc = z - z.mean(0)
        _, _, vt = np.linalg.svd(zc, full_matrices=False)
        pc = zc @ vt[:2].T
        ax[i].plot(pc[:, 0], pc[:, 1], "-", color="0.7", zorder=1)
        sc = ax[i].scatter(pc[:, 0], pc[:, 1], c=f.defocus_um, cmap="viridis", zorder=2)
        ax[i].set_title(label)
        ax[i].set_xticks([])
        ax[i].set_yticks([])
    fig.colorbar(sc, ax=list(ax), label="defocus (µm)")
    fig.savefig(out / "latent_pca.png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    print("wrote " + ", ".join(map(str, [*written, out / "latent_pca.png"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
