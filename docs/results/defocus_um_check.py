"""How far σ -> µm of defocus can be trusted: the shipped model on a vectorial Born–Wolf through-focus stack.

For each true defocus the script prints the second-moment σ of the PSF (what the σ -> µm table assumes), the mean σ
the network reads on the in-focus plane's signal pixels, the µm that σ converts to, and the same content blurred by
a Gaussian of the second-moment σ (what the network was trained on). The network reads Gaussian blur well up to
about 7.5 px; it reads the wider-tailed wave-optical PSF as less blurred from about 4 px on, so µm past there are
underestimates. docs/guide/defocus.md ("What the numbers mean") quotes the output.

    python docs/results/defocus_um_check.py --json docs/results/defocus_um_check.json      # about a minute
"""

from __future__ import annotations

import argparse

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=777, help="phantom and noise seed")
    ap.add_argument("--depths", type=float, nargs="+", default=[0.0, 6.0, 10.0, 14.0, 20.0, 26.0],
                    help="true defocus, µm")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args(argv)

    import torch

    from napari_linblur.inference.defocus_ops import (
        estimate_defocus,
        sigma_to_defocus_um,
        signal_mask,
    )
    from napari_linblur.io.atomic import write_json_atomic
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.psf import OpticalSetup, sigma_from_defocus
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.synth.phantoms import cell_phantom
    from napari_linblur.synth.zstack import through_focus_stack

    torch.set_num_threads(2)
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model="born_wolf", vectorial=True)
    dz = np.asarray(args.depths, float)
    content = cell_phantom((160, 160), rng=np.random.default_rng([args.seed, 3]))[0]
    stack = through_focus_stack(content, setup, dz, rng=np.random.default_rng([args.seed, 4]), photons=1000.0)
    mask = signal_mask(stack[int(np.argmin(np.abs(dz)))])
    true = np.asarray(sigma_from_defocus(dz, setup), float)
    read = np.array([float(estimate_defocus(p, device="cpu", amp="off")[mask].mean()) for p in stack])
    um = np.asarray(sigma_to_defocus_um(read, setup=setup), float)
    # the same content blurred by a Gaussian of the second-moment σ, same camera (1000 e-, read noise 2, offset 100)
    c = content.astype(float) / float(content.max())
    rng = np.random.default_rng([args.seed, 5])
    gauss = []
    for s in true:
        b = render_spatially_varying(c, np.full(c.shape, float(s)))
        img = np.clip(np.round(poisson_gaussian((b + 0.02) * 1000, read_noise=2, offset=100, rng=rng)), 0, 65535)
        gauss.append(float(estimate_defocus(img.astype(np.uint16), device="cpu", amp="off")[mask].mean()))
    rows = [{"defocus_um": float(z), "second_moment_sigma_px": float(t), "network_sigma_born_wolf_px": float(r),
             "reported_um": float(u), "network_sigma_gaussian_px": float(g)}
            for z, t, r, u, g in zip(dz, true, read, um, gauss)]
    print("| true defocus (µm) | second-moment σ (px) | network σ, Born–Wolf (px) | reported µm | "
          "network σ, Gaussian of that σ (px) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['defocus_um']:g} | {r['second_moment_sigma_px']:.2f} | {r['network_sigma_born_wolf_px']:.2f} | "
              f"{r['reported_um']:.1f} | {r['network_sigma_gaussian_px']:.2f} |")
    if args.json:
        write_json_atomic(args.json, {"setup": {"na": 0.45, "wavelength_um": 0.52, "pixel_um": 0.65,
                                                "model": "born_wolf", "vectorial": True},
                                      "seed": args.seed, "photons": 1000.0, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
