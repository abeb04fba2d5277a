"""Shared FFT helpers for the deconvolution baselines (float32, reflect padding, no wrap-around)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft as sfft

__all__ = ["check_image_psf", "otf", "pad_reflect", "crop", "reblur"]


def check_image_psf(image: Any, psf: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate a 2-D image and a 2-D PSF; return float32 image and a float32 PSF normalized to sum 1."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"image: need a 2-D image (Y, X), got shape {img.shape}")
    if img.dtype.kind not in "biuf":
        raise TypeError(f"image: need a real dtype, got {img.dtype}")
    k = np.asarray(psf, dtype=np.float64)
    if k.ndim != 2 or min(k.shape) < 1:
        raise ValueError(f"psf: need a 2-D kernel, got shape {k.shape}")
    if not np.all(np.isfinite(k)) or np.any(k < 0) or k.sum() <= 0:
        raise ValueError("psf: need finite non-negative values with a positive sum")
    return img.astype(np.float32), (k / k.sum()).astype(np.float32)


def pad_reflect(img: np.ndarray, psf_shape: tuple[int, int], factor: int = 1) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad by ``factor`` PSF sizes on each side and round up to an FFT-friendly size."""
    py, px = (factor * psf_shape[0], factor * psf_shape[1])
    h, w = img.shape
    fy = sfft.next_fast_len(h + 2 * py, real=True)
    fx = sfft.next_fast_len(w + 2 * px, real=True)
    top, left = py, px
    mode = "reflect" if min(h, w) > 1 else "edge"
    bottom, right = fy - h - top, fx - w - left
    # np.pad 'reflect' needs pad < size; repeat if the image is smaller than the pad
    out = img
    while top > 0 or bottom > 0 or left > 0 or right > 0:
        t, b = min(top, out.shape[0] - 1), min(bottom, out.shape[0] - 1)
        lf, r = min(left, out.shape[1] - 1), min(right, out.shape[1] - 1)
        if mode == "edge":
            t, b, lf, r = top, bottom, left, right
        out = np.pad(out, ((t, b), (lf, r)), mode=mode)
        top, bottom, left, right = top - t, bottom - b, left - lf, right - r
    return out, (py, px)


def otf(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rfft2 of the PSF embedded in ``shape`` with its centre moved to the origin (complex64)."""
    big = np.zeros(shape, np.float32)
    kh, kw = psf.shape
    big[:kh, :kw] = psf
    big = np.roll(big, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return sfft.rfft2(big).astype(np.complex64)


def crop(a: np.ndarray, offset: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    return a[offset[0] : offset[0] + shape[0], offset[1] : offset[1] + shape[1]]


def reblur(image: np.ndarray, psf: Any) -> np.ndarray:
    """``image`` blurred by ``psf`` (float64 FFT convolution, reflect borders), in ``image``'s dtype: a restoration
    as a captured in-focus reference would show it (the oracles' ``reference_psf``)."""
    from napari_linblur.optics.convolve import fft_convolve

    return np.asarray(fft_convolve(np.asarray(image, np.float64), np.asarray(psf, np.float64)), dtype=image.dtype)
