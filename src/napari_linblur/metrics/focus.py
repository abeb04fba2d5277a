"""Classical focus (sharpness) measures, global per 2-D image and as local maps.

Definitions (``I`` a 2-D float image; global measures use only pixels whose stencil lies inside the image,
so no border padding enters):

* ``"laplacian"`` - variance of the Laplacian (paper 001, eq. in §2): ``L = I * [[0,1,0],[1,-4,1],[0,1,0]]``
  on the interior ``(H-2) x (W-2)`` pixels, ``var(L)`` (population variance).
* ``"brenner"`` - Brenner gradient, both directions, averaged per pixel:
  ``mean((I[:, 2:] - I[:, :-2])^2) + mean((I[2:, :] - I[:-2, :])^2)``.
* ``"tenengrad"`` - mean squared Sobel gradient magnitude on the interior, ``mean(Gx^2 + Gy^2)`` with
  ``Gx = I * [[-1,0,1],[-2,0,2],[-1,0,1]]`` and ``Gy`` its transpose.
* ``"normvar"`` - normalized variance ``var(I) / mean(I)`` (Groen et al. 1985).
* :func:`vollath` - Vollath's F4 autocorrelation, ``mean(I(x) I(x+1)) - mean(I(x) I(x+2))`` along rows plus
  along columns (global only: it has no local map).

Local maps (:func:`focus_measure_map`) compute the same per-pixel responses over the whole image (reflect
padding) and average them in a ``window x window`` box (``normvar``: local variance / local mean).

Examples
--------
>>> import numpy as np
>>> from napari_linblur.metrics.focus import variance_of_laplacian
>>> variance_of_laplacian(np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]]))   # one interior pixel -> var 0
0.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "laplacian",
    "variance_of_laplacian",
    "brenner",
    "tenengrad",
    "normalized_variance",
    "vollath",
    "focus_measure",
    "focus_measure_map",
    "FOCUS_MEASURES",
]

_LAPLACE = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _img(image: Any, min_size: int = 3) -> np.ndarray:
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"image: need a 2-D image (Y, X), got shape {a.shape}")
    if min(a.shape) < min_size:
        raise ValueError(f"image: need at least {min_size}x{min_size} pixels, got {a.shape}")
    return a


def _valid_corr(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Correlation of the last two axes with a 3x3 kernel on the interior only (no padding)."""
    h, w = a.shape[-2:]
    out = np.zeros(a.shape[:-2] + (h - 2, w - 2))
    for i in range(3):
        for j in range(3):
            if k[i, j]:
                out += k[i, j] * a[..., i : h - 2 + i, j : w - 2 + j]
    return out


def laplacian(image: Any) -> np.ndarray:
    """4-neighbour Laplacian of the interior ``(H-2) x (W-2)`` pixels (float64; leading axes are batch axes).

    The one Laplacian of the project: :func:`variance_of_laplacian`, the automatic α of pair deblurring and the
    camera-noise estimate (:func:`napari_linblur.optics.noise.estimate_variance_model`) use it.

    Examples
    --------
    >>> laplacian(np.array([[0, 0, 0], [0, 1, 0], [0, 0, 0]])).tolist()
    [[-4.0]]
    """
    return _valid_corr(np.asarray(image, dtype=np.float64), _LAPLACE)


def variance_of_laplacian(image: Any) -> float:
    """Variance of the 4-neighbour Laplacian over the image interior.

    Examples
    --------
    >>> import numpy as np
    >>> round(variance_of_laplacian(np.array([[0, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])), 3)
    68.0
    """
    return float(np.var(laplacian(_img(image))))


def brenner(image: Any) -> float:
    """Brenner gradient: mean squared difference at distance 2, horizontal plus vertical.

    Examples
    --------
    >>> import numpy as np
    >>> brenner(np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]]))   # dx = 2 everywhere, dy = 0
    4.0
    """
    a = _img(image)
    return float(np.mean((a[:, 2:] - a[:, :-2]) ** 2) + np.mean((a[2:, :] - a[:-2, :]) ** 2))


def tenengrad(image: Any) -> float:
    """Tenengrad: mean of the squared Sobel gradient magnitude over the image interior.

    Examples
    --------
    >>> import numpy as np
    >>> tenengrad(np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2]]))   # Gx = 8, Gy = 0
    64.0
    """
    a = _img(image)
    gx = _valid_corr(a, _SOBEL_X)
    gy = _valid_corr(a, _SOBEL_X.T)
    return float(np.mean(gx**2 + gy**2))


def normalized_variance(image: Any) -> float:
    """Normalized variance ``var(I) / mean(I)``.

    Defined for positive intensities (raw camera counts): a mean <= 0 or any negative pixel (background-subtracted
    data, whose mean is near 0 by construction, so that the score is arbitrarily large) would flip or break the
    ranking, so it is an error; use :func:`variance_of_laplacian` or :func:`brenner` there.

    Examples
    --------
    >>> normalized_variance([[1, 3], [1, 3]])
    0.5
    """
    a = _img(image, min_size=1)
    mu = float(np.mean(a))
    if not mu > 0:
        raise ValueError(f"image: mean intensity is {mu:.6g}; normalized variance needs positive intensities "
                         "(mean > 0, e.g. raw camera counts); use variance_of_laplacian or brenner for "
                         "background-subtracted data")
    low = float(np.min(a))
    if low < 0:
        raise ValueError(f"image: holds negative intensities (min {low:.6g}, mean {mu:.6g}); normalized variance "
                         "needs positive intensities (raw camera counts): on background-subtracted data its score "
                         "grows without bound as the mean nears 0; use variance_of_laplacian or brenner")
    return float(np.var(a) / mu)


def vollath(image: Any) -> float:
    """Vollath F4: ``mean(I(x) I(x+1)) - mean(I(x) I(x+2))`` along rows, plus the same along columns.

    A difference of two autocorrelations: positive on an image with structure, about 0 on one without (a
    constant plane scores exactly 0) and, on pure noise, a small number of either sign, so scores near 0 mean
    "nothing to focus on" rather than a ranking. The two means run over windows one pixel apart, so an intensity
    offset multiplies their sampling difference: on faint planes with a large camera offset prefer
    :func:`variance_of_laplacian` or :func:`brenner`, which ignore the offset.

    Examples
    --------
    >>> vollath([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]])   # a checkerboard: lag 1 anti-correlated
    -1.0
    >>> vollath(np.full((4, 4), 7.0))
    0.0
    """
    a = _img(image)
    f = float(np.mean(a[:, :-1] * a[:, 1:]) - np.mean(a[:, :-2] * a[:, 2:]))
    return f + float(np.mean(a[:-1] * a[1:]) - np.mean(a[:-2] * a[2:]))


FOCUS_MEASURES: dict[str, Callable[[Any], float]] = {
    "laplacian": variance_of_laplacian,
    "brenner": brenner,
    "tenengrad": tenengrad,
    "normvar": normalized_variance,
}


def focus_measure(image: Any, measure: str = "laplacian") -> float:
    """Global focus measure by name (one of :data:`FOCUS_MEASURES`)."""
    try:
        fn = FOCUS_MEASURES[measure]
    except KeyError:
        raise ValueError(f"measure={measure!r}: choose one of {sorted(FOCUS_MEASURES)}") from None
    return fn(image)


def focus_measure_map(image: Any, measure: str = "laplacian", window: int = 15) -> np.ndarray:
    """Local focus measure: the measure's per-pixel response averaged in a ``window x window`` box.

    Parameters
    ----------
    image : array_like, 2-D
    measure : {'laplacian', 'brenner', 'tenengrad', 'normvar'}
        ``laplacian`` gives the local variance of the Laplacian.
    window : int
        box size in pixels (odd recommended), >= 1.

    Returns
    -------
    numpy.ndarray, float32, same shape as ``image``

    Examples
    --------
    >>> import numpy as np
    >>> m = focus_measure_map(np.tile([0.0, 1.0, 2.0, 3.0], (4, 1)), "brenner", window=1)
    >>> m[1].tolist()   # reflect padding mirrors the edge pixel: x=0 sees (0, 1)
    [1.0, 4.0, 4.0, 1.0]
    """
    a = _img(image, min_size=1)
    if int(window) < 1:
        raise ValueError(f"window: need >= 1, got {window}")
    w = int(window)
    if measure == "laplacian":
        lap = ndi.correlate(a, _LAPLACE, mode="reflect")
        mean = ndi.uniform_filter(lap, w, mode="reflect")
        out = ndi.uniform_filter(lap * lap, w, mode="reflect") - mean * mean
    elif measure == "brenner":
        p = np.pad(a, 1, mode="symmetric")  # = scipy.ndimage "reflect"
        dx = p[1:-1, 2:] - p[1:-1, :-2]
        dy = p[2:, 1:-1] - p[:-2, 1:-1]
        out = ndi.uniform_filter(dx * dx + dy * dy, w, mode="reflect")
    elif measure == "tenengrad":
        gx = ndi.correlate(a, _SOBEL_X, mode="reflect")
        gy = ndi.correlate(a, _SOBEL_X.T, mode="reflect")
        out = ndi.uniform_filter(gx * gx + gy * gy, w, mode="reflect")
    elif measure == "normvar":
        mean = ndi.uniform_filter(a, w, mode="reflect")
        var = ndi.uniform_filter(a * a, w, mode="reflect") - mean * mean
        out = var / np.maximum(np.abs(mean), 1e-12)
    else:
        raise ValueError(f"measure={measure!r}: choose one of {sorted(FOCUS_MEASURES)}")
    return np.maximum(out, 0.0).astype(np.float32)
