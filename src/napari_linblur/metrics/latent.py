"""Latent-space linearity metrics of paper 000: LDS (eq. 5) and APD (eq. 6).

``latents`` is one transition of one cell slide: shape ``(N, ...)``, ordered by blur level (sharpest first,
e.g. BBBC006 planes 16, 14, ..., 0 or the reverse - the metrics are symmetric in the direction). Each latent
is flattened to a vector.

LDS (eq. 5) is the mean cosine similarity of consecutive **signed difference vectors**::

    LDS = 1/(N-2) * sum_{n=1}^{N-2} (z_{n-1} - z_n) . (z_n - z_{n+1}) / (|z_{n-1} - z_n|_2 |z_n - z_{n+1}|_2)

(the reference implementation took element-wise *squared* differences, which are all non-negative and make
the score meaningless; we follow the equation).

APD (eq. 6)::

    APD = 1/(N-1) * sum_{n=0}^{N-2} | d(z_n, z_{n+1}) - d(z'_n, z'_{n+1}) | / d(z_0, z_{N-1})

with d the Euclidean distance. ``z'`` are the *interpolated* representations: by default (as in the
paper's code) the uniform linear traversal between the two end points,
``z'_n = z_0 + n/(N-1) * (z_{N-1} - z_0)``, so ``d(z'_n, z'_{n+1}) = d(z_0, z_{N-1}) / (N-1)``. Pass
``latents_interp`` to score other interpolations (e.g. from the actual α of each plane).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["lds", "apd", "linear_traversal"]


def _flat(latents: Any, name: str, min_n: int) -> np.ndarray:
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim < 2 or z.shape[0] < min_n:
        raise ValueError(f"{name}: need shape (N, ...) with N >= {min_n} blur levels, got {z.shape}")
    return z.reshape(z.shape[0], -1)


def lds(latents: Any) -> float:
    """Linear Dependence Score, paper 000 eq. 5 (cosine of consecutive signed differences).

    Parameters
    ----------
    latents : array_like, shape (N, ...)
        N >= 3 latent representations ordered by blur level.

    Returns
    -------
    float
        in [-1, 1]; 1 = all points on a line, monotonically ordered. NaN if two consecutive latents are
        identical (the cosine is undefined).

    Examples
    --------
    >>> lds([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    1.0
    >>> lds([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])   # right angle
    0.0
    """
    z = _flat(latents, "latents", 3)
    d = z[:-1] - z[1:]  # d_n = z_n - z_{n+1}, n = 0..N-2
    num = np.sum(d[:-1] * d[1:], axis=1)
    den = np.linalg.norm(d[:-1], axis=1) * np.linalg.norm(d[1:], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return float(np.mean(cos))


def linear_traversal(latents: Any) -> np.ndarray:
    """Default ``z'`` of APD: ``N`` evenly spaced points from ``z_0`` to ``z_{N-1}`` (same shape as input).

    Examples
    --------
    >>> linear_traversal([[0.0], [5.0], [2.0]]).ravel().tolist()
    [0.0, 1.0, 2.0]
    """
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim < 1 or z.shape[0] < 2:
        raise ValueError(f"latents: need N >= 2 representations, got shape {z.shape}")
    t = np.linspace(0.0, 1.0, z.shape[0]).reshape((-1,) + (1,) * (z.ndim - 1))
    return z[0] + t * (z[-1] - z[0])


def apd(latents: Any, latents_interp: Any | None = None) -> float:
    """Average Pairwise Distance, paper 000 eq. 6.

    Parameters
    ----------
    latents : array_like, shape (N, ...)
        encoder outputs ``z_n`` ordered by blur level, N >= 2.
    latents_interp : array_like, shape (N, ...), optional
        the interpolated representations ``z'_n``; default :func:`linear_traversal` of ``latents``.

    Returns
    -------
    float
        >= 0, lower is better (0 = encoder latents evenly spaced like the interpolation).

    Examples
    --------
    >>> apd([[0.0], [1.0], [2.0]])          # already evenly spaced
    0.0
    >>> apd([[0.0], [3.0], [4.0]])          # |3-2| + |1-2| over 2 pairs, / d(z0, z2) = 4
    0.25
    """
    z = _flat(latents, "latents", 2)
    zi = _flat(linear_traversal(np.asarray(latents, dtype=np.float64)) if latents_interp is None
               else latents_interp, "latents_interp", 2)
    if zi.shape != z.shape:
        raise ValueError(f"latents_interp: shape {zi.shape} does not match latents {z.shape}")
    norm = float(np.linalg.norm(z[0] - z[-1]))
    if norm == 0:
        raise ValueError("latents: z_0 and z_{N-1} coincide, APD's normalization d(z_0, z_{N-1}) is 0")
    d = np.linalg.norm(z[:-1] - z[1:], axis=1)
    di = np.linalg.norm(zi[:-1] - zi[1:], axis=1)
    return float(np.mean(np.abs(d - di)) / norm)
