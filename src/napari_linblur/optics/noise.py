"""Camera noise models, seeded through ``numpy.random.Generator``.

Paper 001 adds Poisson and salt-and-pepper noise to its defocus images; a scientific camera is described by
the Poisson-Gaussian model: photo-electrons are Poisson, read noise is Gaussian, the ADC applies a gain and
an offset (pedestal, ~100 ADU on most sCMOS/CCD cameras).
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike

from ._rng import as_generator

__all__ = [
    "camera_variance_model",
    "estimate_variance_model",
    "gaussian_noise",
    "noise_std_map",
    "poisson_gaussian",
    "poisson_noise",
    "residual_variance",
    "salt_and_pepper",
]


def _check_real(name: str, value) -> np.ndarray:
    """``value`` as an array of its own real dtype (no copy), refused when it is not real or not finite."""
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def _check_array(name: str, value) -> np.ndarray:
    return _check_real(name, value).astype(np.float64, copy=False)


def _check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def poisson_noise(image: ArrayLike, *, scale: float = 1.0, rng: int | np.random.Generator | None = None) -> np.ndarray:
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


def gaussian_noise(image: ArrayLike, std: float, *, rng: int | np.random.Generator | None = None) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation ``std``.

    Parameters
    ----------
    image : array_like
        Real, finite values (any shape).
    std : float
        Standard deviation of the noise, in the image's units (``>= 0``; ``0`` returns a copy).
    rng : numpy.random.Generator or int or None
        Random source / seed.

    Returns
    -------
    noisy : ndarray of float64
        Same shape as ``image``: ``image + N(0, std²)``, not clipped.

    Examples
    --------
    >>> gaussian_noise(np.zeros((3, 3)), 0.0, rng=0).max()
    np.float64(0.0)
    """
    a = _check_array("image", image)
    std = _check_nonneg("std", std)
    return a + as_generator(rng).normal(0.0, std, a.shape) if std > 0 else a.copy()


def poisson_gaussian(
    image_photons: ArrayLike,
    *,
    gain: float = 1.0,
    read_noise: float = 0.0,
    offset: float = 0.0,
    rng: int | np.random.Generator | None = None,
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
    image: ArrayLike,
    amount: float,
    *,
    salt_vs_pepper: float = 0.5,
    low: float | None = None,
    high: float | None = None,
    rng: int | np.random.Generator | None = None,
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
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"low and high must be finite pixel values (or None: the image's min and max), got "
                         f"low={low!r}, high={high!r}")
    gen = as_generator(rng)
    u = gen.random(a.shape)
    salt = gen.random(a.shape) < svp
    out = a.copy()
    hit = u < amount
    out[hit & salt] = hi
    out[hit & ~salt] = lo
    return out


# ------------------------------------------------------------------------------------- noise level of a camera
#: var of ``x - mean(4 neighbours)`` for i.i.d. noise of unit variance
_RESIDUAL_VAR = 1.25


def _residual(x: np.ndarray) -> np.ndarray:
    """``x - mean(4 neighbours)`` on the interior (= -Laplacian / 4): nearly pure noise where ``x`` is smooth."""
    from napari_linblur.metrics.focus import laplacian

    return -0.25 * laplacian(x)


def residual_variance(plane) -> float:
    """Noise variance of a plane from its whole residual ``x - mean(4 neighbours)`` (no smoothness selection).

    The fallback of :func:`napari_linblur.inference.noise_input.noise_channel` for planes too small for
    :func:`estimate_variance_model`; texture counts as noise. 1.0 for planes without an interior.
    """
    x = np.asarray(plane, dtype=np.float64)
    if x.ndim != 2 or min(x.shape) < 3:
        return 1.0
    return float(np.var(_residual(x))) / _RESIDUAL_VAR


def camera_variance_model(gain: float, offset: float, read_noise: float) -> tuple[float, float]:
    """Noise variance of a Poisson–Gaussian camera as a line in the pixel value: ``var(v) = a * v + b`` (ADU²).

    For ``v = gain * (electrons + read) + offset`` (:func:`poisson_gaussian`): ``a = gain`` and
    ``b = gain² read_noise² - gain * offset``.

    Parameters
    ----------
    gain : float
        ADU per photo-electron (``> 0``). A camera specified in e⁻/ADU has ``gain = 1 / that``.
    offset : float
        Camera pedestal (dark level), ADU.
    read_noise : float
        Read noise, electrons (r.m.s.).

    Returns
    -------
    (a, b) : tuple of float

    Examples
    --------
    >>> camera_variance_model(2.0, 100.0, 1.5)
    (2.0, -191.0)
    """
    gain = float(gain)
    if not (np.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number of ADU per photo-electron, got {gain!r}")
    offset = float(offset)
    if not np.isfinite(offset):
        raise ValueError(f"offset must be a finite dark level in ADU, got {offset!r}")
    read_noise = _check_nonneg("read_noise", read_noise)
    return gain, gain * gain * read_noise * read_noise - gain * offset


def estimate_variance_model(plane, *, block: int = 8, n_groups: int = 8, quantile: float = 0.2) -> tuple[float, float]:
    """Estimate the line ``var(v) = a * v + b`` of a single noisy plane's noise (classical, no calibration).

    The high-pass residual ``x - mean(4 neighbours)`` is nearly pure noise wherever the image is smooth. Its robust
    variance (MAD) is taken in ``block`` x ``block`` blocks, the blocks are grouped by their mean value, and in
    each group the ``quantile`` of the block variances (the smoothest blocks: blurred or empty regions rather
    than texture or edges) is corrected for the quantile's bias and fitted with a line, as in Foi et al. 2008
    ("Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data"). Sharp i.i.d. texture
    everywhere reads as extra noise -- the one case a single image cannot tell apart.

    Parameters
    ----------
    plane : array_like, (Y, X)
        Raw pixel values (any real dtype, at least 3 blocks in each direction).
    block, n_groups : int
        Block side in pixels and number of intensity groups.
    quantile : float
        Quantile of the block variances taken in each group.

    Returns
    -------
    (a, b) : tuple of float
        ``a >= 0``; the variance ``a * v + b`` is positive over the plane's values.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ramp = np.tile(np.linspace(50, 2000, 256), (256, 1))
    >>> a, b = estimate_variance_model(poisson_gaussian(ramp, gain=2.0, read_noise=3.0, offset=100.0, rng=rng))
    >>> bool(abs(a - 2.0) < 0.3)
    True
    """
    x = _check_real("plane", plane)  # its own dtype: converted strip by strip below
    if x.ndim != 2:
        raise ValueError(f"plane must be 2-D (Y, X), got shape {x.shape}")
    ny, nx = (x.shape[0] - 2) // block, (x.shape[1] - 2) // block
    if ny < 3 or nx < 3:
        raise ValueError(f"plane of shape {x.shape} is too small to estimate its noise; need at least "
                         f"{3 * block + 2} px in each direction")

    def blocks(a, rows):
        a = a[: rows * block, : nx * block].reshape(rows, block, nx, block).swapaxes(1, 2)
        return a.reshape(rows * nx, block * block)

    # strips of block rows, each in float64 with its 1-px border: the same numbers as the whole plane at once, in
    # about 50 bytes per pixel of one strip (~64 MB) rather than of the plane (5 GB for 10k x 10k)
    step = max(1, (1 << 20) // max(1, nx * block * block))
    var_parts, mean_parts = [], []
    for i0 in range(0, ny, step):
        rows = min(step, ny - i0)
        xs = x[i0 * block: (i0 + rows) * block + 2].astype(np.float64)
        var_parts.append(_robust_noise_var(blocks(_residual(xs), rows)))
        mean_parts.append(blocks(xs[1:-1, 1:-1], rows).mean(axis=1))
    var, mean = np.concatenate(var_parts), np.concatenate(mean_parts)
    order = np.argsort(mean)
    groups = np.array_split(order, min(n_groups, max(1, order.size // 4)))
    gm = np.array([np.median(mean[g]) for g in groups])
    gv = np.array([np.quantile(var[g], quantile) for g in groups]) / _quantile_bias(block * block, quantile)
    lo, hi = float(x.min()), float(x.max())
    a, b = 0.0, float(np.median(gv))  # a constant variance, unless a line with a slope >= 0 fits
    # a line needs a range of levels: over less than a few noise stds (a nearly flat plane) the slope is noise
    if gm.size >= 2 and np.ptp(gm) > 4.0 * np.sqrt(max(b, 0.0)):
        slope, intercept = np.polyfit(gm, gv, 1)
        if slope >= 0:
            a, b = float(slope), float(intercept)
    # keep the line positive over the plane's range (a small floor, not the smallest group's variance); the last
    # resort (std = 1e-6 of the plane's largest |value|) is relative, so the line scales with the image
    peak = max(abs(lo), abs(hi))
    last = 1e-12 * (peak * peak) if peak > 0 else 1e-12
    floor = max(0.05 * float(np.min(gv[gv > 0])) if np.any(gv > 0) else 0.0, last)
    b = max(b, floor - a * lo)
    return a, b


@functools.lru_cache(maxsize=16)
def _quantile_bias(n: int, quantile: float) -> float:
    """``quantile`` of the squared, consistency-scaled MAD of ``n`` unit Gaussian residuals (fixed-seed simulation)."""
    rng = np.random.default_rng(12345)
    # residuals of i.i.d. noise are correlated between neighbours; simulate the same filter on a noise field
    side = int(np.ceil(np.sqrt(n)))
    k = 4000
    r = _residual(rng.standard_normal((k, side + 2, side + 2))).reshape(k, -1)[:, :n]
    return float(np.quantile(_robust_noise_var(r), quantile))


def _robust_noise_var(rows: np.ndarray) -> np.ndarray:
    """Noise variance from the residuals of each row: the squared consistency-scaled MAD, per unit residual variance."""
    med = np.median(rows, axis=1, keepdims=True)
    return (1.4826 * np.median(np.abs(rows - med), axis=1)) ** 2 / _RESIDUAL_VAR


def noise_std_map(plane, a: float, b: float, *, smooth: float = 1.0) -> np.ndarray:
    """Expected noise standard deviation at every pixel (ADU, float32) from a variance line ``a * v + b``.

    The line is evaluated on the plane smoothed with a Gaussian of ``smooth`` px, so the map follows the local
    mean level rather than each pixel's own noise. The map is scale-equivariant: scaling the plane by ``k`` and
    the line by ``(k * a, k² * b)`` scales the map by ``k`` (the work is done in units of a power of two near the
    plane's largest ``|value|``, exact in floating point, so a variance never leaves the float32 range), and the
    floor that keeps it positive is relative to the line and the plane, never an absolute number.

    Parameters
    ----------
    plane : array_like, (Y, X)
        Raw pixel values (any real dtype).
    a, b : float
        Variance line ``var(v) = a * v + b`` in the plane's units (squared).
    smooth : float
        Gaussian smoothing of the plane, pixels (``0``: none).

    Returns
    -------
    numpy.ndarray
        float32, same shape, ``> 0`` (a zero line gives 1e-6 of the plane's largest ``|value|``).

    Examples
    --------
    >>> plane = np.full((8, 8), 400.0)
    >>> float(noise_std_map(plane, 1.0, 0.0)[0, 0])
    20.0
    >>> float(noise_std_map(plane * 2.0**-40, 2.0**-40, 0.0)[0, 0]) == 20.0 * 2.0**-40
    True
    """
    import math

    from scipy.ndimage import gaussian_filter

    x = _check_real("plane", plane).astype(np.float32)  # a float32 copy, changed in place below
    peak = float(np.abs(x).max(initial=0.0))
    e = math.frexp(peak)[1] if peak > 0 else 0  # peak / 2**e in [0.5, 1)
    if e:
        np.ldexp(x, -e, out=x)  # float32, exact
        a, b = math.ldexp(float(a), -e), math.ldexp(float(b), -2 * e)
    m = gaussian_filter(x, float(smooth)) if smooth > 0 else x
    tiny = 1e-6 * abs(float(b)) + 1e-6 * abs(float(a)) * float(np.abs(m).max(initial=0.0))
    if not tiny > 0:  # a zero line: std 1e-6 in these units (of the plane's peak; 1 for an all-zero plane)
        tiny = 1e-12
    del x  # in place from here on: about 8 bytes per pixel at the peak, not 20
    std = m
    std *= np.float32(a)
    std += np.float32(b)
    np.maximum(std, np.float32(tiny), out=std)
    np.sqrt(std, out=std)
    if e:
        np.ldexp(std, e, out=std)
    return std
