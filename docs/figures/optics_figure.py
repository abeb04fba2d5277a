"""Figure for docs/optics.md: through-focus montage, PSFs over defocus, spatially varying rendering.

Run from the repository root (about 10 s on one core)::

    python docs/figures/optics_figure.py          # writes docs/images/optics.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_linblur.optics import (  # noqa: E402
    OpticalSetup,
    composite_blur,
    equivalent_sigma,
    gaussian_random_field_map,
    geometric_sigma,
    pixel_shuffle,
    region_map,
    render_spatially_varying,
    sigma_from_defocus,
)
from napari_linblur.synth import cell_phantom, get_recipe, through_focus_stack  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "images" / "optics.png"


def main(out: Path = OUT) -> Path:
    recipe = get_recipe("bbbc006-like", shape=(200, 260))
    content = cell_phantom(recipe.shape, rng=3)
    stack = through_focus_stack(content, recipe, rng=3)  # (2, 17, Y, X) uint16

    fig = plt.figure(figsize=(15, 11.5), layout="constrained")
    grid = fig.add_gridspec(4, 6, height_ratios=[1, 1, 1.05, 1.1])

    # row 1-2: through-focus montage of both channels (every 4th plane = 8 µm steps)
    planes = [0, 4, 8, 12, 14, 16]
    for row, (c, cmap) in enumerate([(0, "magma"), (1, "viridis")]):
        lo, hi = np.percentile(stack[c, 16], [0.5, 99.8])
        for col, z in enumerate(planes):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(stack[c, z], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{recipe.channels[c].name}  plane {z}  ({recipe.plane_defocus_um[z]:.0f} µm)"
            ax.set_title(title, fontsize=9)

    # row 3: PSFs of the recipe's w2 setup (Gibson-Lanni vectorial) + calibration curve
    setup = recipe.setup(1)
    for col, dz in enumerate([0.0, 4.0, 8.0, 16.0]):
        ax = fig.add_subplot(grid[2, col])
        psf = setup.psf(dz, size=61)
        ax.imshow(psf ** 0.5, cmap="inferno")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"PSF {dz:.0f} µm  σ_eq={equivalent_sigma(setup.psf(dz)):.2f}px  (√ scale)", fontsize=9)
    ax = fig.add_subplot(grid[2, 4:])
    dz = np.linspace(0, 32, 65)
    for model, style in [("gibson_lanni", "-"), ("born_wolf", "--"), ("disc", ":"), ("gaussian", "-.")]:
        s = OpticalSetup(**{**setup.to_dict(), "model": model})
        ax.plot(dz, sigma_from_defocus(dz, s), style, label=model)
    ax.plot(dz, geometric_sigma(dz, setup), color="k", lw=0.8, alpha=0.5, label="closed form")
    ax.set_xlabel("defocus (µm)")
    ax.set_ylabel("equivalent σ (px)")
    ax.set_title("σ ↔ defocus calibration, NA 0.45 air, 0.65 µm px, λ 0.52 µm", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)

    # row 4: spatially varying rendering (scatter vs composite) and pixel shuffle
    sharp = content[1]
    regions = region_map(sharp.shape, margins=(50,), sigma_range=(0, 6), rng=2)
    grf = gaussian_random_field_map(sharp.shape, sigma_range=(0, 6), correlation_px=30, rng=4)
    scatter = render_spatially_varying(sharp, regions)
    comp = composite_blur(sharp, regions)
    vmax = np.percentile(sharp, 99.8)
    panels = [
        (regions, "region map σ px", "cividis", None),
        (scatter, "true varying PSF (scatter)", "gray", vmax),
        (scatter - comp, "scatter − composite", "RdBu_r", "sym"),
        (grf, "random field σ px", "cividis", None),
        (render_spatially_varying(sharp, grf), "rendered from the field", "gray", vmax),
        (pixel_shuffle(sharp[:60, :60], rng=0), "pixel shuffle (crop)", "gray", vmax),
    ]
    for col, (img, title, cmap, v) in enumerate(panels):
        ax = fig.add_subplot(grid[3, col])
        if v == "sym":
            m = float(np.abs(img).max())
            ax.imshow(img, cmap=cmap, vmin=-m, vmax=m)
        elif v is None:
            ax.imshow(img, cmap=cmap)
        else:
            ax.imshow(img, cmap=cmap, vmin=0, vmax=v)
        if v is None or v == "sym":
            title += f"  [{float(img.min()):.2g}, {float(img.max()):.2g}]"
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=9)

    fig.suptitle("napari-linblur optics: bbbc006-like synthetic through-focus stack, PSFs, varying defocus")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
