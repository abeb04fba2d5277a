"""Camera noise models, seeded through ``numpy.random.Generator``.

Paper 001 adds Poisson and salt-and-pepper noise to its defocus images; a scientific camera is described by
the Poisson-Gaussian model: photo-electrons are Poisson, read noise is Gaussian, the ADC applies a gain and
an offset (pedestal, ~100 ADU on most sCMOS/CCD cameras).
"""

from __future__ import annotations

import numpy as np

from ._rng import as_generator

__all__ = ["gaussian_noise", "poisson_gaussian", "poisson_noise", "salt_and_pepper"]


def _check_array(name: str, value) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def _check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def poisson_noise(image, *, scale: float = 1.0, rng=None) -> np.ndarray:
    """Shot noise: ``Poisson(image * scale) / scale``.

    Parameters
    ----------
    image : array_like
        Non-negative expected values.
    scale : float
        Photons per image unit (higher = less noise).
    rng : numpy.random.Generator or int or None

    Returns
    -------
    noisy : ndarray of float64

    Examples
    --------
    >>> poisson_noise(np.full((2, 2), 3.0), rng=0).dtype
    dtype('float64')
    """
    a = _check_array("image", image)
    scale = _check_nonneg("scale", scale)
    if scale == 0:
        raise ValueError("scale must be > 0")
    if np.any(a < 0):
        raise ValueError("image must be >= 0 for Poisson noise")
    return as_generator(rng).poisson(a * scale) / scale


def gaussian_noise(image, std: float, *, rng=None) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``std``.

    Examples
    --------
    >>> gaussian_noise(np.zeros((3, 3)), 0.0, rng=0).max()
    np.float64(0.0)
    """
    a = _check_array("image", image)
    std = _check_nonneg("std", std)
    return a + as_generator(rng).normal(0.0, std, a.shape) if std > 0 else a.copy()


def poisson_gaussian(
    image_photons,
    *,
    gain: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
    rng=None,
) -> np.ndarray:
    """Poisson-Gaussian camera model: ``gain * (Poisson(photons) + N(0, read_noise²)) + offset``.

    Parameters
    ----------
    image_photons : array_like
        Expected photo-electrons per pixel (``>= 0``).
    gain : float
        ADU per electron.
    read_noise : float
        Read noise standard deviation, electrons.
    offset : float
        Camera pedestal, ADU.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    adu : ndarray of float64
        Not rounded or clipped (see :func:`napari_linblur.synth.zstack.through_focus_stack` for uint16).

    Examples
    --------
    >>> out = poisson_gaussian(np.full((64, 64), 100.0), gain=2.0, read_noise=1.0, offset=100.0, rng=0)
    >>> bool(abs(out.mean() - 300.0) < 2.0)
    True
    """
    a = _check_array("image_photons", image_photons)
    if np.any(a < 0):
        raise ValueError("image_photons must be >= 0")
    gain = _check_nonneg("gain", gain)
    read_noise = _check_nonneg("read_noise", read_noise)
    offset = float(offset)
    if not np.isfinite(offset):
        raise ValueError("offset must be finite")
    gen = as_generator(rng)
    out = gen.poisson(a).astype(np.float64)
    if read_noise > 0:
        noise = gen.standard_normal(a.shape)
        noise *= read_noise
        out += noise
    out *= gain
    out += offset
    return out


def salt_and_pepper(
    image,
    amount: float,
    *,
    salt_vs_pepper: float = 0.5,
    low: float | None = None,
    high: float | None = None,
    rng=None,
) -> np.ndarray:
    """Set a fraction ``amount`` of pixels to ``high`` (salt) or ``low`` (pepper).

    Parameters
    ----------
    image : array_like
    amount : float
        Fraction of pixels replaced, in ``[0, 1]``.
    salt_vs_pepper : float
        Fraction of replaced pixels that are salt, in ``[0, 1]``.
    low, high : float, optional
        Pepper / salt values; default the image minimum / maximum.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    noisy : ndarray of float64

    Examples
    --------
    >>> out = salt_and_pepper(np.full((100, 100), 0.5), 0.1, low=0.0, high=1.0, rng=0)
    >>> bool(0.08 < np.mean(out != 0.5) < 0.12)
    True
    """
    a = _check_array("image", image)
    amount = _check_nonneg("amount", amount)
    svp = _check_nonneg("salt_vs_pepper", salt_vs_pepper)
    if amount > 1 or svp > 1:
        raise ValueError("amount and salt_vs_pepper must lie in [0, 1]")
    lo = float(a.min()) if low is None else float(low)
    hi = float(a.max()) if high is None else float(high)
    gen = as_generator(rng)
    u = gen.random(a.shape)
    salt = gen.random(a.shape) < svp
    out = a.copy()
    hit = u < amount
    out[hit & salt] = hi
    out[hit & ~salt] = lo
    return out
