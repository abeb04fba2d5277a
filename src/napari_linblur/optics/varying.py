"""Spatially varying defocus: every *source* point spreads with its own Gaussian PSF.

The image formation model of paper 001 (eq. 4) with a per-pixel σ is a superposition of point responses,

    B(y) = Σ_x S(x) · G_{σ(x)}(y - x),

where σ belongs to the *source* point ``x`` (scatter / splatting), not to the target pixel ``y``. With σ
quantised on levels ``σ_0 < σ_1 < ... < σ_{K-1}`` and linear interpolation weights ``w_k(σ(x))`` (two
non-zero, summing to 1) this is computed exactly as

    B = Σ_k G_{σ_k} * (S · w_k(σ)),

i.e. K convolutions of weighted copies of the sharp image, summed in Fourier space. It is exact for maps
whose values lie on the levels (piecewise constant maps with few values) and linear in σ between levels.
It conserves the total flux (each source's energy is spread, never created or lost).

:func:`composite_blur` is the common shortcut -- blur the whole image at each level and pick, per *target*
pixel, the copy of its σ -- given only as a reference: it is wrong at defocus edges, where light from a
blurry region must spill over a sharp one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import fft as sfft

from .convolve import _PAD_MODES, _check_image, _kernel_spectrum, _pad, fft_convolve_many
from .psf import OpticalSetup, gaussian_psf, sigma_from_defocus

__all__ = ["composite_blur", "render_from_defocus", "render_spatially_varying", "sigma_levels"]


def _check_sigma_map(sigma_map, shape: tuple[int, ...]) -> np.ndarray:
    s = np.asarray(sigma_map)
    if s.dtype.kind not in "biuf":
        raise TypeError(f"sigma_map must be a real numeric array, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if s.ndim != 2:
        raise ValueError(f"sigma_map must be a 2-D array (Y, X), got ndim={s.ndim}")
    if s.shape != tuple(shape[-2:]):
        raise ValueError(
            f"sigma_map must have the image's (Y, X) shape {tuple(shape[-2:])}, got {s.shape}"
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("sigma_map must be finite (no NaN or inf)")
    if np.any(s < 0):
        raise ValueError("sigma_map must be >= 0 (σ in pixels)")
    return s


def sigma_levels(sigma_map: ArrayLike, n_levels: int | None = None, *, step: float = 0.25) -> np.ndarray:
    """Quantisation levels spanning ``[min σ, max σ]`` of a map.

    Parameters
    ----------
    sigma_map : array_like
        σ values (pixels).
    n_levels : int, optional
        Number of levels (>= 2). Default: spacing ``<= step`` pixels, at most 81 levels.
    step : float
        Target spacing when ``n_levels`` is None.

    Returns
    -------
    levels : ndarray of float64
        Increasing; a single level when the map is constant.

    Examples
    --------
    >>> sigma_levels(np.array([[0.0, 1.0]]))
    array([0.  , 0.25, 0.5 , 0.75, 1.  ])
    """
    s = np.asarray(sigma_map, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-12:
        return np.array([lo])
    if n_levels is None:
        n_levels = min(81, max(2, math.ceil((hi - lo) / step) + 1))
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 2:
        raise ValueError(f"n_levels must be an int >= 2 (or None), got {n_levels!r}")
    return np.linspace(lo, hi, int(n_levels))


def _weights(s: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower level index and upper weight of the linear interpolation of ``s`` between ``levels``."""
    if len(levels) == 1:
        return np.zeros(s.shape, dtype=np.intp), np.zeros(s.shape)
    pos = np.interp(s, levels, np.arange(len(levels), dtype=np.float64))
    lo = np.minimum(np.floor(pos).astype(np.intp), len(levels) - 2)
    return lo, pos - lo


def render_spatially_varying(
    sharp: ArrayLike,
    sigma_map: ArrayLike,
    *,
    n_levels: int | None = None,
    method: str = "scatter",
    mode: str = "reflect",
) -> np.ndarray:
    """Blur ``sharp`` with a spatially varying Gaussian PSF whose σ is given per pixel.

    Parameters
    ----------
    sharp : array_like, shape (..., Y, X)
        All-in-focus image (leading axes, e.g. channels, share the map).
    sigma_map : array_like, shape (Y, X)
        σ (pixels, ``>= 0``; ``0`` = in focus) of the equivalent Gaussian PSF.
    n_levels : int, optional
        Number of σ levels (default: spacing <= 0.25 px, see :func:`sigma_levels`).
    method : {'scatter', 'gather'}
        ``'scatter'`` (default, physical): each *source* pixel spreads with its own σ,
        ``B = Σ_k G_{σ_k} * (S · w_k(σ))``. ``'gather'``: each *target* pixel averages its neighbourhood
        with its own σ (``B = Σ_k w_k(σ) · (G_{σ_k} * S)``, the interpolated composite; not flux conserving).
    mode : str
        Boundary handling, as in :func:`~napari_linblur.optics.convolve.fft_convolve`.

    Returns
    -------
    out : ndarray of float32, same shape as ``sharp``

    Examples
    --------
    >>> img = np.zeros((32, 32)); img[16, 8] = img[16, 24] = 1.0
    >>> sig = np.zeros((32, 32)); sig[:, 16:] = 3.0
    >>> out = render_spatially_varying(img, sig)
    >>> round(float(out[16, 8]), 3), round(float(out.sum()), 3)  # left point stays sharp, flux conserved
    (1.0, 2.0)
    """
    if method not in ("scatter", "gather"):
        raise ValueError(f"method must be 'scatter' or 'gather', got {method!r}")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode must be one of {sorted(_PAD_MODES)}, got {mode!r}")
    a = _check_image(sharp)
    s = _check_sigma_map(sigma_map, a.shape)
    levels = sigma_levels(s, n_levels)
    lo, w_hi = _weights(s, levels)
    kernels = [gaussian_psf(v) for v in levels]
    if method == "gather":
        blurred = fft_convolve_many(a, kernels, mode=mode)
        out = np.zeros(a.shape)
        for k in range(len(levels)):
            w = np.where(lo == k, 1.0 - w_hi, 0.0) + np.where(
                (lo + 1 == k) & (len(levels) > 1), w_hi, 0.0
            )
            out += blurred[k] * w
        return out.astype(np.float32)
    Y, X = a.shape[-2:]
    p = max(k.shape[0] for k in kernels) // 2
    padded = _pad(a, p, p, mode)
    # weights are pointwise functions of σ, so padding the map with the same indexing pads the weights
    lo_p = _pad(lo, p, p, mode) if mode != "constant" else np.pad(lo, p, mode="edge")
    w_p = _pad(w_hi, p, p, mode) if mode != "constant" else np.pad(w_hi, p, mode="edge")
    shape = (
        sfft.next_fast_len(padded.shape[-2], real=True),
        sfft.next_fast_len(padded.shape[-1], real=True),
    )
    acc = None
    for k, kern in enumerate(kernels):
        w = np.where(lo_p == k, 1.0 - w_p, 0.0)
        if k > 0:
            w = w + np.where(lo_p == k - 1, w_p, 0.0)
        if not np.any(w):
            continue
        term = sfft.rfft2(padded * w, s=shape, workers=-1) * _kernel_spectrum(kern, shape)
        acc = term if acc is None else acc + term
    full = sfft.irfft2(acc, s=shape, workers=-1)
    return full[..., p : p + Y, p : p + X].astype(np.float32)


def composite_blur(
    sharp: ArrayLike, sigma_map: ArrayLike, *, n_levels: int | None = None, mode: str = "reflect"
) -> np.ndarray:
    """Reference shortcut: blur globally at each σ level, then pick per *target* pixel its nearest level.

    Not a physical spatially varying PSF (light from blurry regions does not spill over sharp ones); kept to
    show the difference in tests and docs. Use :func:`render_spatially_varying`.

    Parameters
    ----------
    sharp : array_like, shape (..., Y, X)
        All-in-focus image (real, finite; leading axes, e.g. channels, share the map).
    sigma_map : array_like, shape (Y, X)
        σ (pixels, ``>= 0``; ``0`` = in focus) of the Gaussian PSF at each *target* pixel.
    n_levels : int, optional
        Number of σ levels the image is blurred at (default: spacing <= 0.25 px, see :func:`sigma_levels`).
        Each pixel takes the copy at the level nearest its σ (no interpolation between levels).
    mode : {'reflect', 'mirror', 'nearest', 'constant', 'wrap'}
        Boundary handling, as in :func:`~napari_linblur.optics.convolve.fft_convolve`.

    Returns
    -------
    out : ndarray of float32, same shape as ``sharp``

    Examples
    --------
    >>> img = np.zeros((16, 16)); img[8, 7] = 1.0
    >>> sig = np.zeros((16, 16)); sig[:, 8:] = 2.0
    >>> float(composite_blur(img, sig)[:, 8:].sum()) < 0.5
    True
    """
    a = _check_image(sharp)
    s = _check_sigma_map(sigma_map, a.shape)
    levels = sigma_levels(s, n_levels)
    idx = np.abs(s[..., None] - levels).argmin(axis=-1)
    blurred = fft_convolve_many(a, [gaussian_psf(v) for v in levels], mode=mode)
    out = np.take_along_axis(blurred, np.broadcast_to(idx, a.shape)[None], axis=0)[0]
    return out.astype(np.float32)


def render_from_defocus(
    sharp: ArrayLike, defocus_um_map: ArrayLike, setup: OpticalSetup, **kwargs: Any
) -> np.ndarray:
    """Spatially varying rendering from a map of defocus distances (µm) for a microscope ``setup``.

    σ per pixel is :func:`~napari_linblur.optics.psf.sigma_from_defocus` (equivalent Gaussian of the
    setup's PSF); keyword arguments go to :func:`render_spatially_varying`.

    Parameters
    ----------
    sharp : array_like, shape (..., Y, X)
        All-in-focus image (leading axes, e.g. channels, share the map).
    defocus_um_map : array_like, shape (Y, X)
        Defocus distance per pixel, µm (finite; the sign is ignored: σ depends on ``|defocus|``).
    setup : OpticalSetup
        Microscope whose PSF model, NA, wavelength and pixel size give σ (pixels) for each defocus.
    **kwargs
        ``n_levels``, ``method`` and ``mode`` of :func:`render_spatially_varying`.

    Returns
    -------
    out : ndarray of float32, same shape as ``sharp``

    Examples
    --------
    >>> from napari_linblur.optics.psf import OpticalSetup
    >>> s = OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65, model="gaussian")
    >>> render_from_defocus(np.ones((16, 16)), np.full((16, 16), 5.0), s).shape
    (16, 16)
    """
    d = np.asarray(defocus_um_map, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"defocus_um_map must be a 2-D array (Y, X), got ndim={d.ndim}")
    if not np.all(np.isfinite(d)):
        raise ValueError("defocus_um_map must be finite (no NaN or inf)")
    return render_spatially_varying(sharp, sigma_from_defocus(d, setup), **kwargs)
