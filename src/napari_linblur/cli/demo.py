"""``linblur demo`` — the main job on the shipped models and a seeded synthetic BBBC006-like field.

What it does, in order (each step prints what it measured and writes a figure to ``--out``):

1. synthesizes one through-focus field (both channels, 17 planes 2 µm apart, plane 16 in focus) and writes it as
   OME-Zarr, with a figure of the stack and its PSFs;
2. focus QC: the per-plane focus curve and best-focus plane, and a per-pixel defocus map of an out-of-focus plane;
3. blur synthesis: a plane between two captured planes by latent interpolation, against pixel blending;
4. pair deblurring: the in-focus plane from a (d, 2d) pair by latent extrapolation, against Wiener with the true PSF;
5. single-image deblurring with the network, against Wiener and Richardson–Lucy given the true PSF.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from ._groups import add_device_option, nonempty


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the main job on the shipped models and a synthetic field; figures + summary in --out",
        description=__doc__,
    )
    p.add_argument("--out", default="demo_out", type=nonempty("--out"), help="output folder (default demo_out)")
    p.add_argument("--seed", type=int, default=7, help="seed of the synthetic field (default 7)")
    add_device_option(p)
    p.set_defaults(func=run)


def _section(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def _save(fig, path: Path) -> None:
    from napari_linblur.io.atomic import atomic_target

    with atomic_target(path) as tmp:  # a figure is whole or absent, never half written
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(f"   figure: {path}")


def run(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    import napari_linblur as nl
    from napari_linblur.baselines.richardson_lucy import best_richardson_lucy
    from napari_linblur.baselines.wiener import best_wiener
    from napari_linblur.inference.device import resolve_device
    from napari_linblur.io.atomic import make_output_folder
    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.metrics.image import psnr
    from napari_linblur.optics.psf import sigma_from_defocus
    from napari_linblur.synth.dataset import synthesize_field
    from napari_linblur.synth.recipes import get_recipe

    resolve_device(args.device)  # an unknown or absent device is refused before anything is written
    from napari_linblur.synth.zstack import psfs_for

    out = make_output_folder(args.out)
    summary: dict = {"seed": args.seed, "models": nl.list_models()}
    print(f"napari-linblur demo -> {out}/   shipped models: {', '.join(summary['models']) or 'none'}")

    # 1. data ---------------------------------------------------------------------------------------------------
    t0 = _section("1. synthetic BBBC006-like field (2 channels x 17 planes, 2 µm apart, plane 16 in focus)")
    recipe = get_recipe("bbbc006-like")
    field = synthesize_field(recipe, seed=args.seed)
    stack = field["image"]  # (C, Z, Y, X) uint16
    truth = field["truth"]  # (C, Y, X) noise-free in-focus
    defocus = np.asarray(recipe.defocus_um)  # per plane, µm (plane 16 = 0)
    setup = recipe.setup(0)
    path = write_ome_zarr(
        out / "demo_stack.ome.zarr", stack, axes="czyx", scale=(1.0, 2.0, setup.pixel_um, setup.pixel_um),
        channel_names=["w1", "w2"], attrs={"linblur": {"recipe": recipe.to_dict(), "seed": args.seed}},
        overwrite=True,
    )
    print(f"   wrote {path} {stack.shape} {stack.dtype}")
    w1 = stack[0].astype(np.float32)
    ref = truth[0]
    show = [0, 4, 8, 12, 16]
    psfs = psfs_for(setup, [defocus[i] for i in show])
    fig, ax = plt.subplots(2, len(show), figsize=(3 * len(show), 5.6))
    for j, i in enumerate(show):
        ax[0, j].imshow(w1[i], cmap="gray")
        ax[0, j].set_title(f"plane {i}: {defocus[i]:.0f} µm")
        ax[1, j].imshow(psfs[j], cmap="magma")
        ax[1, j].set_title(f"PSF, σ≈{sigma_from_defocus(defocus[i], setup):.1f} px")
    for a in ax.ravel():
        a.axis("off")
    _save(fig, out / "01_through_focus.png")
    _done(t0)

    # 2. focus QC ----------------------------------------------------------------------------------------------
    t0 = _section("2. focus QC: focus curve, best plane, per-pixel defocus map")
    # the defocus-map focus curve runs the network on every plane: use the central 256x320 crop to keep the demo
    # quick on a laptop CPU (the full planes give the same best plane; see docs/results/defocus.md)
    cy, cx = w1.shape[1] // 2, w1.shape[2] // 2
    crop = w1[:, cy - 128 : cy + 128, cx - 160 : cx + 160]
    curve = np.asarray(nl.focus_curve(crop, device=args.device))
    best = int(np.argmax(curve))
    classical = np.asarray(nl.focus_curve(w1, method="variance_of_laplacian"))
    print(f"   best-focus plane: {best} from the defocus-map curve, {int(np.argmax(classical))} from the variance of "
          f"the Laplacian (true in-focus plane: 16)")
    k = 8  # 16 µm out of focus
    sigma_map = np.asarray(nl.estimate_defocus(stack[0, k], device=args.device))
    signal = w1[k] > np.percentile(w1[k], 60)
    true_sigma = float(sigma_from_defocus(defocus[k], setup))
    print(f"   plane {k} ({defocus[k]:.0f} µm): median estimated σ on signal {np.median(sigma_map[signal]):.2f} px, "
          f"calibrated σ of the PSF {true_sigma:.2f} px")
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    ax[0].plot(np.arange(len(curve)), curve, "o-")
    ax[0].axvline(best, color="r", ls="--", label=f"best = {best}")
    ax[0].set_xlabel("plane")
    ax[0].set_ylabel("focus score (higher = sharper)")
    ax[0].legend()
    ax[1].imshow(w1[k], cmap="gray")
    ax[1].set_title(f"plane {k}")
    im = ax[2].imshow(sigma_map, cmap="magma", vmin=0, vmax=10)
    ax[2].set_title("estimated σ (px)")
    fig.colorbar(im, ax=ax[2])
    for a in ax[1:]:
        a.axis("off")
    _save(fig, out / "02_focus_qc.png")
    summary["focus"] = {"best_plane": best, "curve": curve.tolist(), "curve_laplacian": classical.tolist(), "plane": k,
                        "median_sigma_px": float(np.median(sigma_map[signal])), "calibrated_sigma_px": true_sigma}
    _done(t0)

    # 3. blur synthesis ----------------------------------------------------------------------------------------
    t0 = _section("3. blur synthesis by latent interpolation (a = plane 12, c = plane 4 -> plane 8)")
    ia, ib, ic = 12, 8, 4
    alpha = nl.alpha_from_positions(defocus[ia], defocus[ib], defocus[ic])
    synth = nl.synthesize_blur(stack[0, ia], stack[0, ic], alpha, device=args.device)
    blend = alpha * w1[ia] + (1 - alpha) * w1[ic]
    p_synth, p_blend = psnr(w1[ib], synth), psnr(w1[ib], blend)
    print(f"   α = {alpha:.3f}; PSNR vs the real plane {ib}: latent {p_synth:.2f} dB, pixel blending {p_blend:.2f} dB")
    summary["synthesis"] = {"alpha": alpha, "psnr_latent": p_synth, "psnr_pixel_blend": p_blend}

    # 4. pair deblurring ---------------------------------------------------------------------------------------
    _done(t0)
    t0 = _section("4. pair deblurring by latent extrapolation (b = plane 12 at d = 8 µm, c = plane 8 at 2d)")
    ib2, ic2 = 12, 8  # b at d = 8 µm, c at 2d = 16 µm, a = in focus
    alpha2 = nl.alpha_from_positions(0.0, defocus[ib2], defocus[ic2])
    sharp_pair = nl.deblur_pair(stack[0, ib2], stack[0, ic2], alpha2, device=args.device)
    psf_b = psfs_for(setup, [defocus[ib2]])[0]
    # the truth is the in-focus camera signal, which carries the in-focus PSF: the Wiener oracle estimates that
    wiener_b, _, _ = best_wiener(w1[ib2], psf_b, ref, reference_psf=psfs_for(setup, [0.0])[0])
    sharp_tta = nl.deblur_pair(stack[0, ib2], stack[0, ic2], alpha2, device=args.device, tta=8)
    pp, pw, pin = psnr(ref, sharp_pair), psnr(ref, wiener_b), psnr(ref, w1[ib2])
    ptta = psnr(ref, sharp_tta)
    print(f"   pair (plane {ib2}, plane {ic2}), α = {alpha2:.3f}: PSNR vs in focus: input {pin:.2f} dB, "
          f"latent extrapolation {pp:.2f} dB (self-ensemble tta=8: {ptta:.2f} dB), "
          f"Wiener (true PSF, best balance) {pw:.2f} dB")
    summary["pair_deblur"] = {"alpha": alpha2, "psnr_input": pin, "psnr_latent": pp, "psnr_latent_tta8": ptta,
                              "psnr_wiener_true_psf": pw}
    fig, ax = plt.subplots(2, 4, figsize=(16, 7.5))
    panels = [
        (w1[ia], f"a: plane {ia}"), (w1[ib], f"real b: plane {ib}"), (synth, f"latent α={alpha:.2f}"),
        (blend, "pixel blending"), (w1[ib2], f"input: plane {ib2}"), (sharp_tta, "latent extrapolation (tta=8)"),
        (wiener_b, "Wiener, true PSF"), (ref, "in focus (truth)"),
    ]
    lo, hi = np.percentile(w1[ia], [0.5, 99.8])
    for a, (img, title) in zip(ax.ravel(), panels):
        a.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        a.set_title(title)
        a.axis("off")
    _save(fig, out / "03_latent_synthesis_and_pair_deblur.png")
    _done(t0)

    # 5. single-image deblurring -------------------------------------------------------------------------------
    t0 = _section("5. single-image deblurring (plane 12, 8 µm out) vs Wiener / Richardson–Lucy with the true PSF")
    blurry = w1[12]
    restored = nl.deblur(stack[0, 12], method="network", device=args.device)
    rl, rl_iter, _, _ = best_richardson_lucy(blurry, psf_b, ref, max_iter=60, reference_psf=psfs_for(setup, [0.0])[0])
    pn, prl = psnr(ref, restored), psnr(ref, rl)
    print(f"   PSNR vs in focus: input {pin:.2f} dB, network (blind) {pn:.2f} dB, Wiener (true PSF) {pw:.2f} dB, "
          f"Richardson–Lucy (true PSF, best of {rl_iter} it.) {prl:.2f} dB")
    summary["single_deblur"] = {"psnr_input": pin, "psnr_network": pn, "psnr_wiener_true_psf": pw,
                                "psnr_rl_true_psf": prl, "rl_iterations": rl_iter}
    fig, ax = plt.subplots(1, 5, figsize=(20, 4.4))
    for a, (img, title) in zip(ax, [(blurry, "input (8 µm)"), (restored, "network (blind)"),
                                    (wiener_b, "Wiener (true PSF)"), (rl, f"RL {rl_iter} it. (true PSF)"),
                                    (ref, "in focus (truth)")]):
        a.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        a.set_title(title)
        a.axis("off")
    _save(fig, out / "04_single_image_deblur.png")
    _done(t0)

    from napari_linblur.io.atomic import write_json_atomic

    write_json_atomic(out / "summary.json", summary)
    beside = Path(sys.executable).parent / "napari"  # this environment's napari (a venv need not be active)
    napari_cmd = str(beside) if beside.exists() else "napari"
    print(f"\nsummary: {out / 'summary.json'}\nOpen the stack in napari:  {shlex.quote(napari_cmd)} "
          f"{shlex.quote(str(path))}")
    return 0
