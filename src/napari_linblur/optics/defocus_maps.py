"""Random defocus maps (σ in pixels per pixel) for training defocus estimators (paper 001, §3).

- :func:`gaussian_random_field_map`: smooth, continuously varying depth (a Gaussian-filtered white noise
  field rescaled to the σ range);
- :func:`region_map`: piecewise constant defocus -- either the paper's recursive split (a split point more
  than 50 px from the border cuts the image into four, then each quarter again with a point more than 20 px
  from its border) or one σ per label of a segmentation mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from ._rng import as_generator

__all__ = ["gaussian_random_field_map", "region_map"]


def _check_shape(shape) -> tuple[int, int]:
    try:
        s = tuple(int(v) for v in shape)
    except TypeError as err:
        raise TypeError(f"shape must be a (Y, X) tuple of ints, got {shape!r}") from err
    if len(s) != 2 or min(s) < 1:
        raise ValueError(f"shape must be a (Y, X) tuple of positive ints, got {shape!r}")
    return s


def _check_range(sigma_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in sigma_range)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"sigma_range must be a (low, high) pair of numbers, got {sigma_range!r}"
        ) from err
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi < lo:
        raise ValueError(f"sigma_range must satisfy 0 <= low <= high (finite), got {sigma_range!r}")
    return lo, hi


def gaussian_random_field_map(
    shape: Sequence[int],
    *,
    sigma_range: Sequence[float] = (0.0, 10.0),
    correlation_px: float = 64.0,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Smooth random σ map: white noise filtered by a Gaussian of width ``correlation_px``, min-max rescaled.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    sigma_range : (float, float)
        The map spans exactly ``[low, high]`` pixels.
    correlation_px : float
        Correlation length (σ of the smoothing Gaussian), pixels, ``> 0``.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    sigma_map : ndarray of float32, shape ``shape``

    Examples
    --------
    >>> m = gaussian_random_field_map((64, 80), sigma_range=(1, 5), correlation_px=10, rng=0)
    >>> m.shape, round(float(m.min()), 3), round(float(m.max()), 3)
    ((64, 80), 1.0, 5.0)
    """
    shape = _check_shape(shape)
    lo, hi = _check_range(sigma_range)
    corr = float(correlation_px)
    if not np.isfinite(corr) or corr <= 0:
        raise ValueError(f"correlation_px must be a finite number > 0, got {correlation_px!r}")
    gen = as_generator(rng)
    field = ndimage.gaussian_filter(gen.standard_normal(shape), corr, mode="wrap")
    span = field.max() - field.min()
    unit = (field - field.min()) / span if span > 0 else np.zeros(shape)
    return (lo + (hi - lo) * unit).astype(np.float32)


def _split(y0, y1, x0, x1, margin, gen):
    """Random split point at least ``margin`` px inside the box (or the centre if it is too small)."""

    def pick(a, b):
        if b - a > 2 * margin + 1:
            return int(gen.integers(a + margin + 1, b - margin))
        return (a + b) // 2

    return pick(y0, y1), pick(x0, x1)


def region_map(
    shape: Sequence[int] | None = None,
    *,
    labels: ArrayLike | None = None,
    margins: Sequence[int] = (50, 20),
    sigma_range: Sequence[float] = (0.0, 10.0),
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Piecewise constant σ map: recursive quad split (paper 001) or one σ per segmentation label.

    Parameters
    ----------
    shape : (int, int), optional
        ``(Y, X)``; required unless ``labels`` is given.
    labels : array_like of int, shape (Y, X), optional
        Segmentation mask: each distinct label (background included) gets its own random σ.
    margins : sequence of int
        Recursive split: one level per entry, the split point of a box at level ``i`` lies more than
        ``margins[i]`` px from its border. The default ``(50, 20)`` gives the paper's 16 regions.
    sigma_range : (float, float)
        σ of each region drawn uniformly in ``[low, high]`` pixels.
    rng : numpy.random.Generator or int or None

    Returns
    -------
    sigma_map : ndarray of float32, shape (Y, X)

    Examples
    --------
    >>> m = region_map((256, 256), rng=0)
    >>> len(np.unique(m))
    16
    >>> lab = np.zeros((8, 8), int); lab[:, 4:] = 3
    >>> len(np.unique(region_map(labels=lab, rng=0)))
    2
    """
    lo, hi = _check_range(sigma_range)
    gen = as_generator(rng)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 2:
            raise ValueError(f"labels must be a 2-D integer array (Y, X), got ndim={lab.ndim}")
        if lab.dtype.kind not in "biu":
            raise TypeError(f"labels must be an integer array, got dtype {lab.dtype}")
        if shape is not None and _check_shape(shape) != lab.shape:
            raise ValueError(f"shape {tuple(shape)} does not match labels shape {lab.shape}")
        uniq, inv = np.unique(lab, return_inverse=True)
        values = gen.uniform(lo, hi, len(uniq))
        return values[inv.reshape(lab.shape)].astype(np.float32)
    if shape is None:
        raise ValueError("shape is required when labels is None")
    Y, X = _check_shape(shape)
    try:
        margins = [int(m) for m in margins]
    except TypeError as err:
        raise TypeError(f"margins must be a sequence of ints, got {margins!r}") from err
    if any(m < 0 for m in margins):
        raise ValueError(f"margins must be >= 0, got {margins!r}")
    boxes = [(0, Y, 0, X)]
    for m in margins:
        new = []
        for y0, y1, x0, x1 in boxes:
            sy, sx = _split(y0, y1, x0, x1, m, gen)
            new += [(y0, sy, x0, sx), (y0, sy, sx, x1), (sy, y1, x0, sx), (sy, y1, sx, x1)]
        boxes = [b for b in new if b[1] > b[0] and b[3] > b[2]]
    out = np.empty((Y, X), np.float32)
    for (y0, y1, x0, x1), v in zip(boxes, gen.uniform(lo, hi, len(boxes))):
        out[y0:y1, x0:x1] = v
    return out
