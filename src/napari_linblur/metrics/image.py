"""Image-quality metrics: PSNR (paper 000 eq. 7) and SSIM, with an explicit intensity range.

Convention (paper 000, eq. 7): ``PSNR = 20 log10(max(I) / RMSE(I, R))`` where ``I`` is the *reference*
(ground truth or reconstruction) image. ``data_range=None`` therefore means ``max(reference)``, per image;
pass a number (e.g. 65535 for uint16, 1.0 for images in [0, 1]) to use a fixed peak instead. Over a set,
PSNR is computed **per image, then averaged** (never on the concatenated set).

Examples
--------
>>> import numpy as np
>>> from napari_linblur.metrics.image import psnr
>>> ref = np.array([[0.0, 2.0], [2.0, 0.0]])
>>> round(psnr(ref, ref + 0.2), 4)  # 20 log10(2 / 0.2)
20.0
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["psnr", "psnr_batch", "ssim", "ssim_batch", "mse"]


def _pair(reference: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"reference and test must have the same shape, got {ref.shape} and {tst.shape}")
    if ref.size == 0:
        raise ValueError("reference: empty array")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(tst))):
        raise ValueError("reference and test must be finite (no NaN or Inf)")
    return ref, tst


def _range(ref: np.ndarray, data_range: float | None) -> float:
    dr = float(np.max(ref)) if data_range is None else float(data_range)
    if not np.isfinite(dr) or dr <= 0:
        raise ValueError(
            f"data_range must be positive and finite, got {dr}"
            + (" (max of the reference; pass data_range explicitly)" if data_range is None else "")
        )
    return dr


def mse(reference: Any, test: Any) -> float:
    """Mean squared error.

    Examples
    --------
    >>> mse([1, 2, 3], [1, 2, 5])
    1.3333333333333333
    """
    ref, tst = _pair(reference, test)
    return float(np.mean((ref - tst) ** 2))


def psnr(reference: Any, test: Any, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, paper 000 eq. 7.

    Parameters
    ----------
    reference : array_like
        the reference image ``I`` (ground truth, or the reconstruction it is compared with).
    test : array_like
        the image ``R`` being scored, same shape.
    data_range : float, optional
        the peak value. None = ``max(reference)`` as in eq. 7.

    Returns
    -------
    float
        ``20 log10(data_range / sqrt(MSE))``; ``inf`` for identical images.

    Examples
    --------
    >>> import numpy as np
    >>> round(psnr(np.full((4, 4), 100.0), np.full((4, 4), 90.0), data_range=255), 6)  # 20 log10(255/10)
    28.130804
    """
    ref, tst = _pair(reference, test)
    dr = _range(ref, data_range)
    err = float(np.mean((ref - tst) ** 2))
    if err == 0:
        return float("inf")
    return float(20.0 * np.log10(dr) - 10.0 * np.log10(err))


def psnr_batch(
    references: Any,
    tests: Any,
    *,
    data_range: float | None = None,
    return_all: bool = False,
) -> float | tuple[float, np.ndarray]:
    """PSNR per image along the first axis, then averaged (the paper's protocol).

    Parameters
    ----------
    references, tests : array_like, shape (N, ...)
        N image pairs.
    data_range : float, optional
        fixed peak; None = each reference's own maximum.
    return_all : bool
        also return the N per-image values.

    Returns
    -------
    float or (float, ndarray)
        the mean (``inf`` if any pair is identical), and optionally the per-image values.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.stack([np.full((2, 2), 10.0), np.full((2, 2), 10.0)])
    >>> round(psnr_batch(ref, ref - np.array([1.0, 0.1])[:, None, None]), 9)  # (20 + 40) / 2
    30.0
    """
    refs = np.asarray(references)
    tsts = np.asarray(tests)
    if refs.shape != tsts.shape or refs.ndim < 2 or refs.shape[0] == 0:
        raise ValueError(f"references/tests: need equal shapes (N, ...) with N >= 1, got {refs.shape} and "
                         f"{tsts.shape}")
    vals = np.array([psnr(r, t, data_range=data_range) for r, t in zip(refs, tsts)])
    mean = float(np.mean(vals))
    return (mean, vals) if return_all else mean


def ssim(reference: Any, test: Any, *, data_range: float | None = None, **kwargs: Any) -> float:
    """Structural similarity (``skimage.metrics.structural_similarity``) with an explicit data range.

    2-D images are scored directly; arrays ``(..., Y, X)`` are scored plane by plane and averaged. skimage's
    defaults apply (7x7 uniform window, K1 = 0.01, K2 = 0.03) unless overridden through ``kwargs``.

    Parameters
    ----------
    reference, test : array_like
    data_range : float, optional
        the dynamic range used in the SSIM constants; None = ``max(reference)`` (same convention as
        :func:`psnr`; images are assumed non-negative).

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).random((16, 16))
    >>> ssim(ref, ref, data_range=1.0)
    1.0
    """
    from skimage.metrics import structural_similarity

    ref, tst = _pair(reference, test)
    if ref.ndim < 2:
        raise ValueError(f"reference: need an image (..., Y, X), got shape {ref.shape}")
    dr = _range(ref, data_range)
    planes_r = ref.reshape((-1,) + ref.shape[-2:])
    planes_t = tst.reshape((-1,) + tst.shape[-2:])
    vals = [structural_similarity(r, t, data_range=dr, **kwargs) for r, t in zip(planes_r, planes_t)]
    return float(np.mean(vals))


def ssim_batch(references: Any, tests: Any, *, data_range: float | None = None) -> float:
    """SSIM per image along the first axis, then averaged.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).random((2, 16, 16))
    >>> ssim_batch(x, x, data_range=1.0)
    1.0
    """
    refs = np.asarray(references)
    tsts = np.asarray(tests)
    if refs.shape != tsts.shape or refs.ndim < 3 or refs.shape[0] == 0:
        raise ValueError(f"references/tests: need equal shapes (N, Y, X) with N >= 1, got {refs.shape} and "
                         f"{tsts.shape}")
    return float(np.mean([ssim(r, t, data_range=data_range) for r, t in zip(refs, tsts)]))
