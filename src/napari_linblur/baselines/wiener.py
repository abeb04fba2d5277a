"""Wiener deconvolution with the true PSF - the classical deblurring baseline.

``X = conj(H) Y / (|H|^2 + balance * R)`` in the Fourier domain, with a regularizer ``R`` that is zero at the
zero frequency, so the filter keeps the image's mean (a PSF sums to 1, ``H(0) = 1``):

- ``reg="laplacian"`` (default): ``R = |L|^2``, ``L`` the transfer function of the 5-point Laplacian; the
  noise-to-signal ratio grows with frequency as in natural and microscopy images (the regularizer of
  ``skimage.restoration.wiener``).
- ``reg="identity"``: ``R = 1`` except at the zero frequency (a constant noise-to-signal ratio; the mean is
  measured over the whole image, so it is not regularized).

A constant ``R`` everywhere (the textbook constant-NSR filter) scales the mean by ``1 / (1 + balance)``; its
darkened output is not offered. The image is reflect-padded by one PSF size on every side before the FFT, so
the circular convolution never wraps the right edge onto the left; the result is cropped back.

:func:`best_wiener` gives the *strongest* version of the baseline: the regularizer and ``balance`` chosen per
image by PSNR against the reference (an oracle choice on the test data itself).

Examples
--------
>>> import numpy as np
>>> from napari_linblur.baselines.wiener import wiener_deconvolve
>>> img = np.random.default_rng(0).random((32, 32))
>>> delta = np.zeros((5, 5)); delta[2, 2] = 1
>>> bool(np.allclose(wiener_deconvolve(img, delta, 1e-6), img, atol=1e-4))
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.fft as sfft

from ..metrics.image import psnr
from ._fft import check_image_psf, crop, otf, pad_reflect, reblur

__all__ = ["wiener_deconvolve", "best_wiener", "REGULARIZERS"]

#: the regularizers of :func:`wiener_deconvolve` and the balances :func:`best_wiener` searches for each
REGULARIZERS: dict[str, tuple[float, ...]] = {
    "laplacian": tuple(float(b) for b in np.logspace(-5, 1, 19)),
    "identity": tuple(float(b) for b in np.logspace(-4, 0, 13)),
}
_LAPLACIAN = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float64)


def _regularizer(reg: str, shape: tuple[int, int]) -> np.ndarray:
    """``R`` on the rfft2 grid of ``shape``: zero at the zero frequency."""
    if reg == "laplacian":
        return np.abs(otf(_LAPLACIAN, shape)) ** 2
    r = np.ones((shape[0], shape[1] // 2 + 1))
    r[0, 0] = 0.0
    return r


def _planes(image: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"image: need (..., Y, X), got shape {a.shape}")
    return a.reshape((-1,) + a.shape[-2:]), a.shape


def wiener_deconvolve(image: Any, psf: Any, balance: float, *, reg: str = "laplacian") -> np.ndarray:
    """Deconvolve ``image`` (2-D, or ``(..., Y, X)`` plane by plane) by ``psf`` with a Wiener filter.

    Parameters
    ----------
    image : array_like
        blurred image(s), any real dtype, intensities kept (no normalization).
    psf : array_like, 2-D
        the blur kernel (normalized to sum 1 internally), centred at ``shape // 2``.
    balance : float
        regularization weight (noise-to-signal power ratio), > 0. Larger = smoother.
    reg : {"laplacian", "identity"}
        the regularizer ``R`` (module docstring); both keep the image's mean.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``image``.

    Examples
    --------
    >>> from napari_linblur.optics.psf import gaussian_psf
    >>> flat = np.full((32, 32), 100.0)
    >>> [round(float(wiener_deconvolve(flat, gaussian_psf(2.0), 0.05, reg=r).mean()), 3) for r in REGULARIZERS]
    [100.0, 100.0]
    """
    if not np.isfinite(balance) or balance <= 0:
        raise ValueError(f"balance: need a positive number, got {balance}")
    if reg not in REGULARIZERS:
        raise ValueError(f"reg={reg!r}; use one of {sorted(REGULARIZERS)}")
    planes, shape = _planes(image)
    out = np.empty(planes.shape, np.float32)
    cache: dict[tuple[int, int], np.ndarray] = {}
    for i, plane in enumerate(planes):
        img, k = check_image_psf(plane, psf)
        padded, off = pad_reflect(img, k.shape)
        if padded.shape not in cache:
            h = otf(k, padded.shape)
            cache[padded.shape] = (np.conj(h) / (np.abs(h) ** 2 + balance * _regularizer(reg, padded.shape))
                                   ).astype(np.complex64)
        filt = cache[padded.shape]
        rest = sfft.irfft2(sfft.rfft2(padded) * filt, s=padded.shape)
        out[i] = crop(rest, off, img.shape)
    return out.reshape(shape)


def best_wiener(
    image: Any,
    psf: Any,
    reference: Any,
    balances: Any = None,
    *,
    data_range: float | None = None,
    reference_psf: Any = None,
    regs: Any = ("laplacian", "identity"),
) -> tuple[np.ndarray, float, float]:
    """Wiener deconvolution with the regularizer and balance that maximize PSNR against ``reference``.

    Parameters
    ----------
    image, psf : see :func:`wiener_deconvolve`
    reference : array_like
        the ground truth, same shape as ``image``.
    balances : sequence of float, optional
        candidates for every regularizer; default: each regularizer's grid in :data:`REGULARIZERS`
        (``logspace(-5, 1, 19)`` for the Laplacian, ``logspace(-4, 0, 13)`` for the identity).
    data_range : float, optional
        PSNR peak (None = ``max(reference)``, paper eq. 7).
    reference_psf : array_like, 2-D, optional
        the blur the reference itself carries (a captured in-focus plane still has its in-focus PSF): the
        deconvolved image is re-blurred by it, so the oracle estimates the reference, not the unblurred object
        (the filter ``H_ref · conj(H) / (|H|² + balance R)``). None: the reference is the object itself.
    regs : sequence of str
        the regularizers to search (:func:`wiener_deconvolve`'s ``reg``); default both.

    Returns
    -------
    (restored, balance, psnr_db)

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> sharp = gaussian_filter(np.random.default_rng(0).random((48, 48)), 1)
    >>> y, x = np.mgrid[-6:7, -6:7]; psf = np.exp(-(x**2 + y**2) / 8.0)
    >>> from scipy.signal import fftconvolve
    >>> blurred = fftconvolve(np.pad(sharp, 6, mode="reflect"), psf / psf.sum(), mode="valid")
    >>> restored, bal, score = best_wiener(blurred, psf, sharp)
    >>> score > psnr(sharp, blurred)
    True
    """
    regs = (regs,) if isinstance(regs, str) else tuple(regs)
    if not regs or any(r not in REGULARIZERS for r in regs):
        raise ValueError(f"regs={regs!r}; use one or more of {sorted(REGULARIZERS)}")
    if balances is not None and np.asarray(balances).size == 0:
        raise ValueError("balances: need at least one candidate")
    ref = np.asarray(reference)
    if ref.shape != np.shape(image):
        raise ValueError(f"reference: shape {ref.shape} does not match image {np.shape(image)}")
    candidates = [(r, float(b)) for r in regs
                  for b in (REGULARIZERS[r] if balances is None else np.asarray(balances, dtype=float).ravel())]
    best: tuple[np.ndarray, float, float] | None = None
    for reg, b in candidates:
        rest = wiener_deconvolve(image, psf, b, reg=reg)
        if reference_psf is not None:
            rest = reblur(rest, reference_psf)
        score = psnr(ref, rest, data_range=data_range)
        if best is None or score > best[2]:
            best = (rest, float(b), float(score))
    assert best is not None
    return best
