"""Defocus-map metrics of paper 001 (predicted vs true σ maps, σ in pixels).

Conventions (``pred`` = p, ``true`` = t, means over all pixels, or over ``mask``):

* ``mse_norm``, ``mae_norm`` - MSE and MAE of σ **normalized by σ_max = 10 px** (the paper's σ range
  [0, 10] mapped to [0, 1]): ``mean(((p - t) / 10)^2)``, ``mean(|p - t| / 10)``.
* ``rmse`` - ``sqrt(mean((p - t)^2))`` in pixels.
* ``abs_rel``, ``sq_rel``, ``rmse_log``, ``delta1..3`` use ``p' = max(p, 0) + ε`` and ``t' = t + ε`` with
  ``ε = 0.1 px`` (in-focus pixels have σ = 0, where ratios and logs are undefined):
  ``abs_rel = mean(|p' - t'| / t')``, ``sq_rel = mean((p' - t')^2 / t')``,
  ``rmse_log = sqrt(mean((ln p' - ln t')^2))``, ``delta_k = mean(max(p'/t', t'/p') < 1.25^k)``.

Examples
--------
>>> import numpy as np
>>> from napari_linblur.metrics.defocus import defocus_metrics
>>> m = defocus_metrics(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
>>> m["rmse"], m["delta1"]
(0.0, 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["defocus_metrics", "DEFAULT_EPS", "SIGMA_MAX"]

DEFAULT_EPS = 0.1
SIGMA_MAX = 10.0


def defocus_metrics(
    pred: Any,
    true: Any,
    *,
    eps: float = DEFAULT_EPS,
    sigma_max: float = SIGMA_MAX,
    mask: Any | None = None,
) -> dict[str, float]:
    """All paper-001 defocus-map metrics for one prediction (or a batch, pooled over pixels).

    Parameters
    ----------
    pred, true : array_like
        σ maps in pixels, same shape.
    eps : float
        added to both maps for the relative, log and δ metrics (σ = 0 is common).
    sigma_max : float
        normalization of ``mse_norm`` / ``mae_norm`` (paper: σ ∈ [0, 10]).
    mask : array_like of bool, optional
        score only these pixels.

    Returns
    -------
    dict
        ``mse_norm, mae_norm, abs_rel, sq_rel, rmse, rmse_log, delta1, delta2, delta3`` (floats).

    Examples
    --------
    >>> import numpy as np
    >>> m = defocus_metrics(np.array([2.0]), np.array([1.0]), eps=0.0)
    >>> m["mae_norm"], m["abs_rel"], m["sq_rel"], m["delta3"]
    (0.1, 1.0, 1.0, 0.0)
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape:
        raise ValueError(f"pred and true must have the same shape, got {p.shape} and {t.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != p.shape:
            raise ValueError(f"mask: shape {m.shape} does not match {p.shape}")
        p, t = p[m], t[m]
    p, t = p.ravel(), t.ravel()
    if p.size == 0:
        raise ValueError("pred: no pixels to score")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("pred and true must be finite (no NaN or Inf): a NaN pixel would silently count as a miss")
    if np.any(t < 0):
        raise ValueError("true: σ maps must be non-negative")
    if not (np.isfinite(eps) and np.isfinite(sigma_max)) or eps < 0 or sigma_max <= 0:
        raise ValueError(f"eps must be >= 0 and sigma_max > 0 (finite), got eps={eps}, sigma_max={sigma_max}")
    err = p - t
    pe = np.maximum(p, 0.0) + eps
    te = t + eps
    if np.any(te <= 0) or np.any(pe <= 0):
        raise ValueError("σ = 0 with eps = 0: relative and log metrics are undefined; use eps > 0")
    ratio = np.maximum(pe / te, te / pe)
    return {
        "mse_norm": float(np.mean((err / sigma_max) ** 2)),
        "mae_norm": float(np.mean(np.abs(err) / sigma_max)),
        "abs_rel": float(np.mean(np.abs(pe - te) / te)),
        "sq_rel": float(np.mean((pe - te) ** 2 / te)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(pe) - np.log(te)) ** 2))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }
