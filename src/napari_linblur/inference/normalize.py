"""One normalization for every model, computed jointly over the images of a call and inverted on output.

Per-image min-max normalization destroys intensity relations between planes (the blurrier plane of a
pair has a lower peak). Here robust percentiles are taken over *all* images of one call together, so a
pair shares one affine map, and outputs are mapped back to the input's intensity units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.9
_F32_MAX = float(np.finfo(np.float32).max)
#: a normalized pixel is "hot" above this level (twice the 99.9th percentile's, the 0.1th at 0) ...
HOT_PIXEL_LEVEL = 2.0
#: ... and this many times the second brightest of its 8 neighbours (a point source centred on a pixel and blurred
#: by a Gaussian of σ = 0.3 px -- less than pixel integration alone gives -- is 19x that; 0.4 px: 7.5x)
HOT_PIXEL_RATIO = 25.0
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _is_wide(dtype: np.dtype) -> bool:
    """Values float32 cannot hold exactly: float64, 32- and 64-bit integers."""
    return dtype.itemsize >= 4 and dtype.kind in "iu" or dtype.itemsize > 4 and dtype.kind == "f"


@dataclass(frozen=True)
class Normalization:
    """Affine map ``x -> (x - offset) / scale`` and its inverse.

    Examples
    --------
    >>> n = Normalization(offset=100.0, scale=1000.0)
    >>> float(n.invert(n.apply(np.array([600.0])))[0])
    600.0
    """

    offset: float
    scale: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalize to model units (float32).

        Computed in float32; where that overflows (values of both signs near the float32 limit, whose span exceeds
        it), in float64, so the result is finite for any input inside the float32 range. Inputs wider than float32
        (float64, 32- and 64-bit integers) are computed in float64, so a small contrast on a large offset survives.
        """
        a = np.asarray(x)
        if _is_wide(a.dtype):
            return ((a.astype(np.float64) - self.offset) / self.scale).astype(np.float32)
        x32 = np.asarray(a, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            out = ((x32 - np.float32(self.offset)) / np.float32(self.scale)).astype(np.float32, copy=False)
        if abs(self.scale) > _F32_MAX or not np.isfinite(out).all():
            out = ((x32.astype(np.float64) - self.offset) / self.scale).astype(np.float32)
        return out

    def invert(self, y: np.ndarray) -> np.ndarray:
        """Map model units back to the input's intensity units (float32).

        Computed in float32; where that overflows, in float64, and a result beyond the float32 range (a model
        output overshooting an input near the float32 limit) is clipped to ``±3.4e38`` with a ``UserWarning``
        rather than returned as Inf.
        """
        y32 = np.asarray(y, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            out = (y32 * np.float32(self.scale) + np.float32(self.offset)).astype(np.float32, copy=False)
        if abs(self.scale) > _F32_MAX or not np.isfinite(out).all():
            wide = y32.astype(np.float64) * self.scale + self.offset
            finite = np.isfinite(wide)  # NaN/Inf model outputs stay what they are
            beyond = finite & (np.abs(wide) > _F32_MAX)
            if beyond.any():
                import warnings

                warnings.warn(f"{int(beyond.sum())} output value(s) beyond the float32 range were clipped to "
                              "±3.4e38; rescale the input (e.g. divide it by 1e30) to keep them",
                              UserWarning, stacklevel=2)
            out = np.where(finite, np.clip(wide, -_F32_MAX, _F32_MAX), wide).astype(np.float32)
        return out

    def to_dict(self) -> dict:
        return {"offset": float(self.offset), "scale": float(self.scale)}


def fit_normalization(
    *images: np.ndarray, low: float = LOW_PERCENTILE, high: float = HIGH_PERCENTILE
) -> Normalization:
    """Fit one normalization to several images jointly.

    Parameters
    ----------
    *images : numpy.ndarray
        Images of one call (e.g. the two planes of a pair). They share the result.
    low, high : float
        Percentiles mapped to 0 and 1.

    Returns
    -------
    Normalization
        When the percentile range collapses (at most ``1e-12`` of the percentiles' magnitude, whatever the
        intensity scale: fewer than ``100 - high`` % of the pixels differ from a flat background, as with a few
        beads on a clipped background), ``scale`` is the largest distance of any pixel from ``offset``; for a
        constant image ``|value|`` (1 for zeros), so that nothing divides by zero and results scale with the input.

    Examples
    --------
    >>> a = np.linspace(0, 1000, 101)
    >>> n = fit_normalization(a, a / 2, low=0, high=100)
    >>> (n.offset, n.scale)
    (0.0, 1000.0)
    """
    if not images:
        raise ValueError("fit_normalization needs at least one image")
    # subsample large images: percentiles of a strided view are accurate and far cheaper
    samples = []
    wide = any(_is_wide(np.asarray(img).dtype) for img in images)
    work = np.float64 if wide else np.float32  # float32 would round a small contrast on a big offset away
    for img in images:
        flat = np.asarray(img, dtype=work).ravel()
        step = max(1, flat.size // 262_144)
        samples.append(flat[::step])
    values = np.concatenate(samples)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError("cannot normalize: the images contain no finite values")
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = np.percentile(values, [low, high])
    if not (np.isfinite(lo) and np.isfinite(hi)):  # float32 interpolation overflowed: a span beyond float32
        lo, hi = np.percentile(values.astype(np.float64), [low, high])
    scale = float(hi - lo)
    # constant: a range negligible next to the values themselves (a purely relative test, so a faint image of
    # values ~1e-13 is normalized like the same image at any other scale)
    if not scale > 1e-12 * max(abs(float(lo)), abs(float(hi))):
        # every pixel, not the subsample: the few that differ from the background are what the image holds
        spread = max(max(float(np.nanmax(im)) - float(lo), float(lo) - float(np.nanmin(im)))
                     for im in (np.asarray(i, dtype=work) for i in images))
        if spread > 1e-12 * max(abs(float(lo)), abs(float(hi))):
            scale = spread
        else:  # constant
            scale = abs(float(hi)) or 1.0
    return Normalization(offset=float(lo), scale=scale)


def suppress_hot_pixels(x: np.ndarray) -> np.ndarray:
    """Replace isolated hot pixels of a normalized plane by the median of their 8 neighbours (what every network
    sees).

    A camera's hot pixel or a cosmic-ray hit is one pixel far brighter than everything around it, which no optical
    image is (the PSF spreads light over its neighbours). The networks' training had salt noise only up to the image's
    own maximum, never a pixel far above it, and a single one disturbs their output tens of pixels away. A pixel
    counts as hot when it is above :data:`HOT_PIXEL_LEVEL` (in
    :func:`fit_normalization` units) and more than :data:`HOT_PIXEL_RATIO` times the second brightest of its 8
    neighbours (floored at ``HOT_PIXEL_LEVEL / HOT_PIXEL_RATIO``): so a hot pixel beside one bright pixel (a spot,
    or a second hot pixel) is still found, while a bright structure of three pixels or more is never touched.

    Parameters
    ----------
    x : numpy.ndarray
        A normalized 2-D plane (float32).

    Returns
    -------
    numpy.ndarray
        ``x`` itself when it holds no hot pixel, else a corrected copy.

    Examples
    --------
    >>> x = np.full((5, 5), 0.5, np.float32); x[2, 2] = 100.0
    >>> float(suppress_hot_pixels(x)[2, 2])
    0.5
    >>> x[2, 3] = x[1, 3] = 90.0             # three bright pixels together: not hot pixels, left alone
    >>> float(suppress_hot_pixels(x)[2, 2])
    100.0
    """
    if x.ndim != 2 or min(x.shape) < 2:
        return x
    ys, xs = np.nonzero(x > HOT_PIXEL_LEVEL)  # at most ~0.1 % of the pixels, by the normalization
    if ys.size == 0:
        return x
    padded = np.pad(x, 1, mode="reflect")
    around = np.sort([padded[ys + 1 + dy, xs + 1 + dx] for dy, dx in _OFFSETS], axis=0)  # (8, n), ascending
    hot = x[ys, xs] > HOT_PIXEL_RATIO * np.maximum(around[-2], HOT_PIXEL_LEVEL / HOT_PIXEL_RATIO)
    if not hot.any():
        return x
    out = x.copy()
    out[ys[hot], xs[hot]] = np.median(around[:, hot], axis=0)
    return out


def normalize_for_network(*planes: np.ndarray) -> tuple[Normalization, list[np.ndarray]]:
    """One normalization for ``planes`` (:func:`fit_normalization`) and the planes in its units with isolated hot
    pixels suppressed (:func:`suppress_hot_pixels`): what every model is given.

    When hot pixels were found the normalization is fitted again on the corrected planes, so that they change
    nothing but their own pixels (a few hot pixels move the 99.9th percentile, and with it the whole result).

    Returns
    -------
    (Normalization, list of numpy.ndarray)
        the normalization (invert the model's output with it) and the normalized float32 planes.

    Examples
    --------
    >>> a = np.arange(4096.0).reshape(64, 64); b = a.copy(); b[5, 5] = 1e6
    >>> (na, [xa]), (nb, [xb]) = normalize_for_network(a), normalize_for_network(b)
    >>> na == nb, float(xb[5, 5]) == float(np.median(np.r_[xa[4, 4:7], xa[5, [4, 6]], xa[6, 4:7]]))
    (True, True)
    """
    norm, xs, _ = clean_for_network(*planes)
    return norm, xs


def clean_for_network(*planes: np.ndarray) -> tuple[Normalization, list[np.ndarray], list[np.ndarray]]:
    """:func:`normalize_for_network`, and also the raw planes with their hot pixels replaced (in input units).

    Returns
    -------
    (Normalization, list of numpy.ndarray, list of numpy.ndarray)
        the normalization, the normalized float32 planes, and the raw planes: the inputs themselves when no hot
        pixel was found, else corrected copies (what a model's other inputs, e.g. a noise estimate, should see).
    """
    norm = fit_normalization(*planes)
    raw = [norm.apply(p) for p in planes]
    xs = [suppress_hot_pixels(x) for x in raw]
    if all(x is r for x, r in zip(xs, raw)):
        return norm, xs, list(planes)
    fixed = [_replace(p, norm, x, r) for p, x, r in zip(planes, xs, raw)]
    norm = fit_normalization(*fixed)
    raw = [norm.apply(q) for q in fixed]
    xs = [suppress_hot_pixels(x) for x in raw]  # in the refitted units a few more may stand out
    return norm, xs, [_replace(q, norm, x, r) for q, x, r in zip(fixed, xs, raw)]


def _replace(plane: np.ndarray, norm: Normalization, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """``plane`` with the pixels where ``x`` (suppressed) differs from ``raw`` (``norm.apply(plane)``) replaced by
    ``x`` in input units (a float copy; ``plane`` itself when nothing differs)."""
    if x is raw:
        return plane
    a = np.asarray(plane)
    q = a.astype(np.float64 if _is_wide(a.dtype) else np.float32)  # a copy
    hot = x != raw
    q[hot] = norm.invert(x[hot])
    return q
