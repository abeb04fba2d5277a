"""Exact linear convolution through the FFT, without wrap-around.

The image is padded by the kernel half-size (reflection by default), convolved with an FFT large enough that
no output pixel of the crop wraps around, and cropped back to its shape. The result equals
``scipy.ndimage.convolve(image, psf, mode=...)`` (or ``scipy.signal.convolve(image, psf, mode='same')`` for
``mode='constant'``) up to floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike
from scipy import fft as sfft

__all__ = ["fft_convolve", "fft_convolve_many"]

# fft_convolve mode -> numpy.pad mode (names follow scipy.ndimage)
_PAD_MODES = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "constant": "constant",
    "wrap": "wrap",
}


def _check_image(image) -> np.ndarray:
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"image must be a real numeric array, got dtype {a.dtype}")
    if a.ndim < 2:
        raise ValueError(f"image must have ndim >= 2 (..., Y, X), got ndim={a.ndim}")
    if a.size == 0:
        raise ValueError(f"image is empty (shape {a.shape}); expected at least one pixel per axis")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError("image must be finite (no NaN or inf)")
    return a


def _check_psf(psf, name: str = "psf") -> np.ndarray:
    k = np.asarray(psf, dtype=np.float64)
    if k.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got ndim={k.ndim}")
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"{name} must have odd sides (centred kernel), got shape {k.shape}")
    if not np.all(np.isfinite(k)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return k


def _kernel_spectrum(psf: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """rFFT of ``psf`` zero-padded to ``shape`` with its centre moved to index (0, 0)."""
    h, w = psf.shape[0] // 2, psf.shape[1] // 2
    buf = np.zeros(shape)
    buf[: psf.shape[0], : psf.shape[1]] = psf
    buf = np.roll(buf, (-h, -w), axis=(0, 1))
    return sfft.rfft2(buf, workers=-1)


def _pad(a: np.ndarray, py: int, px: int, mode: str) -> np.ndarray:
    pad = [(0, 0)] * (a.ndim - 2) + [(py, py), (px, px)]
    npmode = _PAD_MODES[mode]
    if npmode in ("symmetric", "reflect"):
        # numpy's reflect/symmetric need pad <= size; repeat in steps for tiny images
        for axis in (-2, -1):
            if npmode == "reflect" and a.shape[axis] == 1 and pad[axis][0] > 0:
                # mirroring a single row/column about itself repeats it (and a 0-pixel step would never end)
                width = [(0, 0)] * a.ndim
                width[axis] = pad[axis]
                a = np.pad(a, width, mode="edge")
                pad[axis] = (0, 0)
        while pad[-2][0] > 0 or pad[-1][0] > 0:
            sy = min(pad[-2][0], a.shape[-2] - (npmode == "reflect"))
            sx = min(pad[-1][0], a.shape[-1] - (npmode == "reflect"))
            a = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(sy, sy), (sx, sx)], mode=npmode)
            pad[-2] = (pad[-2][0] - sy,) * 2
            pad[-1] = (pad[-1][0] - sx,) * 2
        return a
    return np.pad(a, pad, mode=npmode)


def fft_convolve_many(image: ArrayLike, psfs: Iterable[ArrayLike], *, mode: str = "reflect") -> np.ndarray:
    """Convolve one image with several kernels, sharing the image's FFT.

    Parameters
    ----------
    image : array_like, shape (..., Y, X)
        Real image (leading axes are convolved independently, e.g. channels).
    psfs : iterable of array_like, each 2-D
        Odd-sized centred kernels (sizes may differ).
    mode : {'reflect', 'mirror', 'nearest', 'constant', 'wrap'}
        Boundary handling, as in ``scipy.ndimage`` (``'constant'`` pads with zeros).

    Returns
    -------
    out : ndarray of float64, shape (len(psfs), ..., Y, X)

    Examples
    --------
    >>> from napari_linblur.optics.psf import gaussian_psf
    >>> out = fft_convolve_many(np.ones((8, 9)), [gaussian_psf(1.0), gaussian_psf(2.0)])
    >>> out.shape, bool(np.allclose(out, 1.0))
    ((2, 8, 9), True)
    """
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    a = _check_image(image)
    ks = [_check_psf(p, f"psfs[{i}]") for i, p in enumerate(psfs)]
    if not ks:
        raise ValueError("psfs must contain at least one kernel")
    Y, X = a.shape[-2:]
    py = max(k.shape[0] for k in ks) // 2
    px = max(k.shape[1] for k in ks) // 2
    padded = _pad(a, py, px, mode)
    # with the kernel centred at index 0 a circular FFT of the padded size never wraps into the crop
    shape = (
        sfft.next_fast_len(padded.shape[-2], real=True),
        sfft.next_fast_len(padded.shape[-1], real=True),
    )
    spec = sfft.rfft2(padded, s=shape, workers=-1)
    out = np.empty((len(ks),) + a.shape)
    for i, k in enumerate(ks):
        full = sfft.irfft2(spec * _kernel_spectrum(k, shape), s=shape, workers=-1)
        out[i] = full[..., py : py + Y, px : px + X]
    return out


def fft_convolve(image: ArrayLike, psf: ArrayLike, *, mode: str = "reflect") -> np.ndarray:
    """Exact linear convolution of ``image`` with a centred odd-sized ``psf`` via the FFT.

    The image is padded by the kernel half-size (``mode`` as in ``scipy.ndimage``: ``'reflect'`` mirrors
    including the edge pixel, ``'constant'`` pads zeros), convolved and cropped back, so there is no
    wrap-around and the output has the input's shape.

    Parameters
    ----------
    image : array_like, shape (..., Y, X)
        Real image; leading axes are convolved independently with the same kernel.
    psf : array_like, 2-D
        Kernel with odd sides, centre at ``(h // 2, w // 2)``.
    mode : {'reflect', 'mirror', 'nearest', 'constant', 'wrap'}
        Boundary handling.

    Returns
    -------
    out : ndarray of float64
        Same shape as ``image``.

    Examples
    --------
    >>> from scipy import ndimage
    >>> from napari_linblur.optics.psf import gaussian_psf
    >>> img = np.random.default_rng(0).random((32, 40))
    >>> k = gaussian_psf(2.0)
    >>> bool(np.allclose(fft_convolve(img, k), ndimage.convolve(img, k, mode="reflect")))
    True
    """
    return fft_convolve_many(image, [psf], mode=mode)[0]
