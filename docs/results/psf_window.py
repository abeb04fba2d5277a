"""How much of a wave PSF's light falls outside its default window (``optics.psf.default_psf_size``).

For Gibson–Lanni PSFs (λ 0.5 µm) of three optics — BBBC006-like (NA 0.45, air into water, 2 µm deep, 0.65 µm
pixels), oil into water and air into n = 1.45 (NA 0.9 / 0.95, 10 µm deep, 0.1 µm pixels) — the PSF is computed in a
window about 4× wider (at most 201 px, or twice the default window where that is larger), and the fraction of its
light inside the default window is printed, with the equivalent σ in the default window and in the wide one.

    python docs/results/psf_window.py                    # a second
"""

from __future__ import annotations

from napari_linblur.optics.psf import OpticalSetup, default_psf_size, equivalent_sigma

OPTICS = {  # name: (na, ni, ns, depth_um, pixel_um)
    "BBBC006-like (NA 0.45, air into water, 2 µm)": (0.45, 1.0, 1.33, 2.0, 0.65),
    "NA 0.9 oil into water, 10 µm": (0.9, 1.515, 1.33, 10.0, 0.1),
    "NA 0.95 air into n = 1.45, 10 µm": (0.95, 1.0, 1.45, 10.0, 0.1),
}


def main() -> None:
    print("| optics | defocus µm | default window px | light inside it | equivalent σ px: default / wide window |")
    print("|---|---|---|---|---|")
    for name, (na, ni, ns, depth, px) in OPTICS.items():
        setup = OpticalSetup(na=na, ni=ni, ns=ns, depth_um=depth, model="gibson_lanni", wavelength_um=0.5,
                             pixel_um=px)
        for dz in (0.0, -2.0, 2.0, 5.0):
            n = default_psf_size(setup, dz)
            wide = setup.psf(dz, size=max(min(4 * n + 1, 201), 2 * n + 1) | 1)  # always wider than the default
            c, h = wide.shape[0] // 2, n // 2
            inside = float(wide[c - h : c + h + 1, c - h : c + h + 1].sum())
            print(f"| {name} | {dz:g} | {n} | {100 * inside:.1f} % | "
                  f"{equivalent_sigma(setup.psf(dz)):.2f} / {equivalent_sigma(wide):.2f} |")


if __name__ == "__main__":
    main()
