"""Richardson-Lucy deconvolution with the true PSF (FFT, float32, reflect padding).

``u_{k+1} = u_k * (conj-PSF ⋆ (d / (PSF ⋆ u_k)))`` starting from ``u_0 = d`` (the observed image clipped at
0). The image is reflect-padded by two PSF sizes per side (errors at the padded border move inward by about
one PSF radius per iteration, so the crop stays clean for typical iteration counts) and cropped back.
Intensities must be non-negative; negative values are clipped to 0.

:func:`best_richardson_lucy` is the baseline's strongest version: it tracks PSNR against the reference
after every iteration and returns the best iterate.

Examples
--------
>>> import numpy as np
>>> from napari_linblur.baselines.richardson_lucy import richardson_lucy
>>> img = np.random.default_rng(0).random((32, 32)) + 0.5
>>> delta = np.zeros((3, 3)); delta[1, 1] = 1
>>> bool(np.allclose(richardson_lucy(img, delta, 5), img, rtol=1e-4))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.fft as sfft

from ..metrics.image import psnr
from ._fft import check_image_psf, crop, otf, pad_reflect, reblur

__all__ = ["richardson_lucy", "best_richardson_lucy", "richardson_lucy_iterates"]

_EPS = np.float32(1e-7)


def richardson_lucy_iterates(image: Any, psf: Any) -> Iterator[np.ndarray]:
    """Yield the cropped float32 RL estimate after iterations 1, 2, 3, ... (2-D image)."""
    img, k = check_image_psf(image, psf)
    d = np.maximum(img, 0.0).astype(np.float32)
    padded, off = pad_reflect(d, k.shape, factor=2)
    shape = padded.shape
    h = otf(k, shape)
    hc = np.conj(h)
    u = padded.copy()
    scale = np.float32(max(float(padded.max()), 1e-30))  # work in [0, 1]-ish for float32 stability
    u /= scale
    dd = padded / scale
    while True:
        blurred = sfft.irfft2(sfft.rfft2(u) * h, s=shape).astype(np.float32)
        ratio = dd / np.maximum(blurred, _EPS)
        u = u * sfft.irfft2(sfft.rfft2(ratio) * hc, s=shape).astype(np.float32)
        np.maximum(u, 0.0, out=u)
        yield crop(u, off, img.shape) * scale


def richardson_lucy(image: Any, psf: Any, iterations: int = 30) -> np.ndarray:
    """Richardson-Lucy deconvolution, 2-D or ``(..., Y, X)`` plane by plane.

    Parameters
    ----------
    image : array_like
        blurred, non-negative image(s); intensities kept.
    psf : array_like, 2-D
        blur kernel (normalized to sum 1), centred at ``shape // 2``.
    iterations : int
        number of RL iterations, >= 1.

    Returns
    -------
    numpy.ndarray
        float32, same shape as ``image``.
    """
    if int(iterations) < 1:
        raise ValueError(f"iterations: need >= 1, got {iterations}")
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"image: need (..., Y, X), got shape {a.shape}")
    planes = a.reshape((-1,) + a.shape[-2:])
    out = np.empty(planes.shape, np.float32)
    for i, plane in enumerate(planes):
        it = richardson_lucy_iterates(plane, psf)
        for _ in range(int(iterations)):
            est = next(it)
        out[i] = est
    return out.reshape(a.shape)


def best_richardson_lucy(
    image: Any,
    psf: Any,
    reference: Any,
    max_iter: int = 100,
    *,
    data_range: float | None = None,
    reference_psf: Any = None,
) -> tuple[np.ndarray, int, float, np.ndarray]:
    """RL on a 2-D image, returning the iterate with the highest PSNR against ``reference``.

    Parameters
    ----------
    image : array_like, 2-D
        the blurred, non-negative image.
    psf : array_like, 2-D
        its blur kernel, centred at ``shape // 2``.
    reference : array_like, 2-D
        the truth that chooses the iterate (an oracle), shaped like ``image``.
    max_iter : int
        iterations to run, >= 1.
    data_range : float, optional
        PSNR peak (None = ``max(reference)``).
    reference_psf : array_like, 2-D, optional
        the blur the reference itself carries (a captured in-focus plane still has its in-focus PSF): every iterate
        is also scored re-blurred by it, and the better of the two versions counts, so the oracle can estimate the
        reference rather than the object, as :func:`~napari_linblur.baselines.wiener.best_wiener` does (a re-blurred
        iterate usually needs more iterations to win; before that the plain one is kept). None: the reference is
        the object itself.

    Returns
    -------
    (restored, best_iteration, best_psnr_db, psnr_per_iteration)
        ``psnr_per_iteration[k]`` is the PSNR after ``k + 1`` iterations.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> sharp = gaussian_filter(np.random.default_rng(0).random((48, 48)), 1) + 0.1
    >>> y, x = np.mgrid[-6:7, -6:7]; psf = np.exp(-(x**2 + y**2) / 8.0)
    >>> from scipy.signal import fftconvolve
    >>> blurred = fftconvolve(np.pad(sharp, 6, mode="reflect"), psf / psf.sum(), mode="valid")
    >>> restored, k, score, curve = best_richardson_lucy(blurred, psf, sharp, max_iter=20)
    >>> score == curve.max() and score > psnr(sharp, blurred)
    True
    """
    ref = np.asarray(reference)
    if ref.shape != np.shape(image) or ref.ndim != 2:
        raise ValueError(f"reference: need a 2-D image shaped like image {np.shape(image)}, got {ref.shape}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter: need >= 1, got {max_iter}")
    curve = np.empty(int(max_iter))
    best = (np.empty(0, np.float32), 0, -np.inf)
    kref = None if reference_psf is None else check_image_psf(ref, reference_psf)[1]
    for k, est in zip(range(int(max_iter)), richardson_lucy_iterates(image, psf)):
        versions = [est] if kref is None else [est, reblur(est, kref)]
        scores = [psnr(ref, v, data_range=data_range) for v in versions]
        curve[k] = max(scores)
        if curve[k] > best[2]:
            best = (versions[int(np.argmax(scores))].copy(), k + 1, float(curve[k]))
    return best[0], best[1], best[2], curve
