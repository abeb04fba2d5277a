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
        it), in float64, so the result is finite for any input inside the float32 range.
        """
        x32 = np.asarray(x, dtype=np.float32)
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
    for img in images:
        flat = np.asarray(img, dtype=np.float32).ravel()
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
                     for im in (np.asarray(i, dtype=np.float32) for i in images))
        if spread > 1e-12 * max(abs(float(lo)), abs(float(hi))):
            scale = spread
        else:  # constant
            scale = abs(float(hi)) or 1.0
    return Normalization(offset=float(lo), scale=scale)
