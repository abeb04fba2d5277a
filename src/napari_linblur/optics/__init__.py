"""Optics: PSF models, σ ↔ defocus calibration, exact and spatially varying convolution, defocus maps,
pixel shuffle and camera noise (numpy/scipy only; no torch, Qt or napari).

Examples
--------
>>> import numpy as np
>>> from napari_linblur.optics import OpticalSetup, fft_convolve
>>> setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65, model="gaussian")
>>> fft_convolve(np.ones((16, 16)), setup.psf(6.0)).shape
(16, 16)
"""

from __future__ import annotations

from .convolve import fft_convolve, fft_convolve_many
from .defocus_maps import gaussian_random_field_map, region_map
from .noise import gaussian_noise, poisson_gaussian, poisson_noise, salt_and_pepper
from .psf import (
    OpticalSetup,
    born_wolf_psf,
    default_psf_size,
    defocus_from_sigma,
    disc_psf,
    equivalent_sigma,
    gaussian_psf,
    geometric_sigma,
    gibson_lanni_psf,
    sigma_from_defocus,
)
from .shuffle import pixel_shuffle
from .varying import composite_blur, render_from_defocus, render_spatially_varying, sigma_levels

__all__ = [
    "OpticalSetup",
    "born_wolf_psf",
    "composite_blur",
    "default_psf_size",
    "defocus_from_sigma",
    "disc_psf",
    "equivalent_sigma",
    "fft_convolve",
    "fft_convolve_many",
    "gaussian_noise",
    "gaussian_psf",
    "gaussian_random_field_map",
    "geometric_sigma",
    "gibson_lanni_psf",
    "pixel_shuffle",
    "poisson_gaussian",
    "poisson_noise",
    "region_map",
    "render_from_defocus",
    "render_spatially_varying",
    "salt_and_pepper",
    "sigma_from_defocus",
    "sigma_levels",
]
