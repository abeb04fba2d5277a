"""Classical defocus-map estimators (baselines for the HRNet defocus network).

1. :func:`focus_measure_sigma_map` - a local focus measure, made contrast-invariant, mapped to the σ of an
   equivalent Gaussian blur through a monotone calibration curve (:func:`calibrate_focus_measure`). The
   response is ``focus_measure_map(I, measure, window) / (local variance of I + c)``, with ``c`` = 1e-6 x
   the global variance; the calibration blurs a sharp reference with known σ ∈ [0, 10] px, records the median
   response, enforces monotone decrease (running minimum) and inverts it by linear interpolation in
   log-response. Default reference: seeded white noise (the "all-in-focus" extreme of paper 001's pixel
   shuffle); pass your own in-focus plane for content-matched calibration.

2. :func:`zhuo_sim_defocus_map` - Zhuo & Sim, "Defocus map estimation from a single image", Pattern
   Recognition 44 (2011): re-blur with a Gaussian of σ0, take the gradient-magnitude ratio
   ``R = |∇I| / |∇(I * G_σ0)|`` at Canny edges, ``σ = σ0 / sqrt(R^2 - 1)`` (R <= 1 → invalid; minus the
   1/3 px² that the central-difference gradient itself adds to σ²), clip to
   ``[0, max_sigma]``, then propagate the sparse edge values to every pixel by **normalized Gaussian
   interpolation** ``(G_s * (σ·m)) / (G_s * m)`` (m = valid-edge mask), using the smallest of
   ``s = propagate_sigma · 2^k`` that gives a pixel enough edge support (a simple stand-in for the
   matting-Laplacian propagation of the paper).

Examples
--------
>>> import numpy as np
>>> from scipy.ndimage import gaussian_filter
>>> from napari_linblur.baselines.defocus_classical import zhuo_sim_defocus_map
>>> step = np.zeros((64, 64)); step[:, 32:] = 1.0
>>> est = zhuo_sim_defocus_map(gaussian_filter(step, 3.0))
>>> bool(2.0 < np.median(est) < 4.0)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..metrics.focus import FOCUS_MEASURES, focus_measure_map

__all__ = [
    "FocusCalibration",
    "calibrate_focus_measure",
    "focus_response_map",
    "focus_measure_sigma_map",
    "zhuo_sim_defocus_map",
]


def _img2d(image: Any) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 2:
        raise ValueError(f"image: need a 2-D image (Y, X), got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"image: need a real dtype, got {a.dtype}")
    return a.astype(np.float64)


def focus_response_map(image: Any, measure: str = "laplacian", window: int = 15) -> np.ndarray:
    """Contrast-invariant local focus response: local measure / (local variance + c). float64."""
    a = _img2d(image)
    if measure not in FOCUS_MEASURES:
        raise ValueError(f"measure={measure!r}: choose one of {sorted(FOCUS_MEASURES)}")
    fm = focus_measure_map(a, measure, window).astype(np.float64)
    if measure == "normvar":
        return fm
    mean = ndi.uniform_filter(a, window, mode="reflect")
    var = np.maximum(ndi.uniform_filter(a * a, window, mode="reflect") - mean * mean, 0.0)
    c = 1e-6 * float(np.var(a)) + 1e-30
    return fm / (var + c)


@dataclass(frozen=True)
class FocusCalibration:
    """Monotone map from focus response to Gaussian σ (px), built by :func:`calibrate_focus_measure`.

    Attributes
    ----------
    sigmas : ndarray
        calibration σ values, increasing.
    responses : ndarray
        median response at each σ, made non-increasing.
    measure : str
    window : int
    """

    sigmas: np.ndarray
    responses: np.ndarray
    measure: str
    window: int

    def __call__(self, response: Any) -> np.ndarray:
        """σ for each response value (clipped to the calibrated range)."""
        r = np.log(np.maximum(np.asarray(response, dtype=np.float64), 1e-300))
        lr = np.log(np.maximum(self.responses, 1e-300))
        # np.interp needs increasing x: reverse the decreasing curve
        return np.interp(r, lr[::-1], self.sigmas[::-1]).astype(np.float32)


def calibrate_focus_measure(
    sharp: Any | None = None,
    *,
    measure: str = "laplacian",
    window: int = 15,
    sigmas: Any = None,
    seed: int = 0,
) -> FocusCalibration:
    """Calibrate a local focus measure against Gaussian blur of known σ.

    Parameters
    ----------
    sharp : array_like, 2-D, optional
        in-focus content; default 256x256 white noise from ``seed``.
    measure : str
        see :data:`napari_linblur.metrics.focus.FOCUS_MEASURES`.
    window : int
        local window of the measure.
    sigmas : sequence of float, optional
        default ``np.linspace(0, 10, 41)``.
    seed : int
        seed of the default white-noise reference.

    Returns
    -------
    FocusCalibration

    Examples
    --------
    >>> cal = calibrate_focus_measure(window=9, sigmas=[0, 1, 2, 4, 8])
    >>> bool(np.all(np.diff(cal.responses) <= 0))
    True
    """
    if sharp is None:
        sharp = np.random.default_rng(seed).random((256, 256))
    ref = _img2d(sharp)
    sig = np.linspace(0.0, 10.0, 41) if sigmas is None else np.asarray(sigmas, dtype=float)
    if sig.ndim != 1 or sig.size < 2 or np.any(np.diff(sig) <= 0) or sig[0] < 0:
        raise ValueError("sigmas: need >= 2 increasing non-negative values")
    margin = int(min(ref.shape) // 8)
    resp = []
    for s in sig:
        blurred = ndi.gaussian_filter(ref, float(s), mode="reflect") if s > 0 else ref
        r = focus_response_map(blurred, measure, window)
        resp.append(float(np.median(r[margin:-margin or None, margin:-margin or None])))
    mono = np.minimum.accumulate(np.asarray(resp))
    # strictly decreasing so that the inverse is a function
    mono = mono * (1.0 - 1e-9 * np.arange(mono.size))
    return FocusCalibration(sig, mono, measure, int(window))


@lru_cache(maxsize=8)
def _default_calibration(measure: str, window: int) -> FocusCalibration:
    return calibrate_focus_measure(measure=measure, window=window)


def focus_measure_sigma_map(
    img: Any,
    window: int = 15,
    calibration: FocusCalibration | None = None,
    *,
    measure: str = "laplacian",
) -> np.ndarray:
    """Per-pixel σ (px) from a calibrated local focus measure.

    Parameters
    ----------
    img : array_like, 2-D
    window : int
        local window (ignored if ``calibration`` is given: its window is used).
    calibration : FocusCalibration, optional
        default: :func:`calibrate_focus_measure` on white noise for ``measure`` and ``window`` (cached).
    measure : str

    Returns
    -------
    numpy.ndarray
        float32 σ map, same shape, within the calibrated σ range.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> x = gaussian_filter(np.random.default_rng(1).random((96, 96)), 3.0)
    >>> est = focus_measure_sigma_map(x, window=15)
    >>> bool(2.0 < np.median(est[16:-16, 16:-16]) < 4.0)
    True
    """
    cal = calibration if calibration is not None else _default_calibration(measure, int(window))
    return cal(focus_response_map(img, cal.measure, cal.window)).astype(np.float32)


def zhuo_sim_defocus_map(
    img: Any,
    *,
    reblur_sigma: float = 1.0,
    edge_sigma: float = 1.0,
    low_threshold: float | None = None,
    high_threshold: float | None = None,
    max_sigma: float = 10.0,
    propagate_sigma: float = 4.0,
) -> np.ndarray:
    """Zhuo & Sim (2011) edge re-blur defocus estimator with normalized-Gaussian propagation.

    Parameters
    ----------
    img : array_like, 2-D
    reblur_sigma : float
        σ0 of the re-blur Gaussian (px).
    edge_sigma : float
        σ of the Canny edge detector.
    low_threshold, high_threshold : float, optional
        Canny hysteresis thresholds on the gradient of the image scaled to [0, 1] by its 1st/99th
        percentiles; None = skimage's defaults.
    max_sigma : float
        estimates are clipped to ``[0, max_sigma]``.
    propagate_sigma : float
        smallest Gaussian scale of the propagation (doubled where edges are too sparse).

    Returns
    -------
    numpy.ndarray
        float32 σ map in px, same shape. Pixels are ``max_sigma`` if the image has no usable edge.
    """
    from skimage.feature import canny

    a = _img2d(img)
    if reblur_sigma <= 0 or propagate_sigma <= 0 or max_sigma <= 0:
        raise ValueError("reblur_sigma, propagate_sigma and max_sigma must be positive")
    lo, hi = np.percentile(a, [1, 99])
    norm = (a - lo) / (hi - lo) if hi > lo else a - lo
    edges = canny(norm, sigma=edge_sigma, low_threshold=low_threshold, high_threshold=high_threshold)

    def grad(x: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(x)
        return np.hypot(gx, gy)

    g1 = grad(norm)
    g2 = grad(ndi.gaussian_filter(norm, reblur_sigma, mode="reflect"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = g1 / g2
        sparse = reblur_sigma / np.sqrt(ratio**2 - 1.0)
        # the central-difference gradient averages over 2 px (variance 1/3 px^2): remove that bias
        sparse = np.sqrt(np.maximum(sparse**2 - 1.0 / 3.0, 0.0))
    valid = edges & np.isfinite(sparse) & (ratio > 1.0) & (g2 > 0)
    if not np.any(valid):
        return np.full(a.shape, max_sigma, np.float32)
    sparse = np.where(valid, np.clip(sparse, 0.0, max_sigma), 0.0)
    m = valid.astype(np.float64)
    out = np.full(a.shape, np.nan)
    s = float(propagate_sigma)
    largest = 2.0 * max(a.shape)
    while True:
        num = ndi.gaussian_filter(sparse * m, s, mode="reflect")
        den = ndi.gaussian_filter(m, s, mode="reflect")
        # enough support: at least ~one edge pixel's worth within the kernel
        ok = np.isnan(out) & (den > 1.0 / (2.0 * np.pi * s * s) * 0.5)
        out[ok] = num[ok] / den[ok]
        if not np.isnan(out).any() or s >= largest:
            break
        s *= 2.0
    out[np.isnan(out)] = float(np.median(sparse[valid]))
    return np.clip(out, 0.0, max_sigma).astype(np.float32)
