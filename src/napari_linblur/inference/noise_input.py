"""The camera-noise input channel of noise-aware defocus models (``in_channels == 2``).

Sharp, faint, i.i.d. texture and a blurred image plus shot noise look alike to a network that does not know how
much noise the camera makes (docs/results/defocus.md). A noise-aware model therefore takes a second channel:
the expected noise standard deviation at every pixel, in the same normalized units as the image, from

* the camera's calibration, when the user gives it (``camera={"gain": …, "offset": …, "read_noise": …}``), or
* an estimate from the plane itself (``camera="auto"``, the default;
  :func:`napari_linblur.optics.noise.estimate_variance_model`).

Training builds the channel with the same function (:func:`noise_channel`), from the exact camera of each sample
or from the estimate, so both forms are in the training distribution.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["CHANNEL_DOC", "model_input", "noise_channel", "resolve_camera"]

#: the channel's definition (stored in model cards)
CHANNEL_DOC = ("clip(log10(noise std / normalization scale) + 1.5, -3, 3); noise std from the variance line "
               "a * v + b evaluated on the plane smoothed with a 1-px Gaussian")
_SHIFT = 1.5
_CLIP = 3.0


def resolve_camera(camera: Any) -> tuple[float, float] | None:
    """Validate ``camera`` -> the variance line ``(a, b)``, or ``None`` for "estimate it from each plane".

    Parameters
    ----------
    camera : None, "auto", mapping or sequence
        ``None`` or ``"auto"``: estimate from each plane. A mapping with ``gain`` (ADU per photo-electron),
        ``offset`` (dark level, ADU) and ``read_noise`` (electrons), or a ``(gain, offset, read_noise)`` triple.

    Examples
    --------
    >>> resolve_camera({"gain": 0.5, "offset": 100, "read_noise": 2})
    (0.5, -49.0)
    >>> resolve_camera("auto") is None
    True
    """
    from napari_linblur.optics.noise import camera_variance_model

    if camera is None or (isinstance(camera, str) and camera == "auto"):
        return None
    accepted = ("camera must be 'auto' (estimate the noise from the image), a dict with gain (ADU per "
                "photo-electron), offset (ADU) and read_noise (electrons), or a (gain, offset, read_noise) triple")
    if isinstance(camera, Mapping):
        missing = [k for k in ("gain", "offset", "read_noise") if k not in camera]
        extra = sorted(set(camera) - {"gain", "offset", "read_noise"})
        if missing or extra:
            raise ValueError(f"{accepted}; got keys {sorted(camera)}")
        vals = (camera["gain"], camera["offset"], camera["read_noise"])
    elif isinstance(camera, Sequence) and not isinstance(camera, (str, bytes)) and len(camera) == 3:
        vals = tuple(camera)
    else:
        raise ValueError(f"{accepted}; got {camera!r}")
    try:
        gain, offset, read = (float(v) for v in vals)
    except (TypeError, ValueError):
        raise ValueError(f"{accepted}; got {camera!r}") from None
    return camera_variance_model(gain, offset, read)


def noise_channel(plane: np.ndarray, scale: float, line: tuple[float, float] | None = None) -> np.ndarray:
    """The noise channel of ``plane`` (raw values) for a model whose image input was divided by ``scale``.

    Parameters
    ----------
    plane : numpy.ndarray, (Y, X)
        Raw pixel values (ADU), before normalization.
    scale : float
        The normalization's scale (:class:`~napari_linblur.inference.normalize.Normalization`).
    line : (a, b), optional
        Noise variance ``a * v + b`` (ADU²) from the camera; ``None`` estimates it from ``plane``.

    Returns
    -------
    numpy.ndarray
        float32, same shape, see :data:`CHANNEL_DOC`. Scale-invariant: multiplying ``plane``, ``scale`` and the
        line's std by the same factor gives the same channel (no absolute floor).

    Raises
    ------
    ValueError
        ``scale`` is not a positive number up to 4x the float32 range (the spread of a plane whose values are
        anywhere in that range).
    """
    from napari_linblur.optics.noise import (
        estimate_variance_model,
        noise_std_map,
        residual_variance,
    )

    s = float(scale)
    fmax = float(np.finfo(np.float32).max)
    if fmax < s <= 4.0 * fmax:
        # the spread of a plane whose values lie near both ends of the float32 range (up to 6.8e38): the channel is
        # scale-invariant, so it is computed at a quarter of the scale (exact: a power of two)
        plane = np.asarray(plane, dtype=np.float64) * 0.25
        s *= 0.25
        line = None if line is None else (float(line[0]) * 0.25, float(line[1]) * 0.0625)
    if not (0.0 < s <= fmax and np.float32(s) > 0):
        raise ValueError(f"scale must be a positive number in the float32 range (the normalization's scale), "
                         f"got {scale!r}")
    scale32 = np.float32(s)
    plane = np.asarray(plane, dtype=np.float32)
    if line is None:
        try:
            line = estimate_variance_model(plane)
        except ValueError:  # too small to estimate: the whole plane's residual noise, constant
            line = (0.0, residual_variance(plane))
    std = noise_std_map(plane, *line)
    # the floor is relative (a noise 1e-12 of the scale, far below the clip), so the channel is scale-invariant
    out = np.log10(np.maximum(std / scale32, np.float32(1e-12))) + _SHIFT
    return np.clip(out, -_CLIP, _CLIP).astype(np.float32)


def model_input(plane: np.ndarray, norm=None, *, noise: bool, line: tuple[float, float] | None = None) -> np.ndarray:
    """The defocus network's input for a raw plane, the same in training and at inference.

    ``norm.apply(plane)`` (Y, X) for an image-only model; with ``noise=True`` that image and its
    :func:`noise_channel` stacked, (2, Y, X). ``line`` is the camera's variance line, ``None`` = estimate it.
    ``norm=None`` (inference) fits the normalization to the plane with isolated hot pixels suppressed
    (:func:`~.normalize.normalize_for_network`); the noise channel is then estimated without them too (a single hot
    pixel tilts the estimated variance line).
    """
    if norm is not None:
        x = norm.apply(plane)
    else:
        from .normalize import clean_for_network

        norm, (x,), (plane,) = clean_for_network(plane)
    if not noise:
        return x
    from .normalize import _is_wide

    a = np.asarray(plane)
    if _is_wide(a.dtype):
        # float64 or 32/64-bit integers: float32 (the noise map's precision) would lose a small contrast on a large
        # pedestal (a 1e8 offset leaves steps of 8), so the noise is read relative to the normalization's offset, in
        # float64, with the line moved along: var(v) = a v + b = a (v - o) + (b + a o)
        o = float(norm.offset)
        plane = a.astype(np.float64) - o
        if line is not None:
            line = (float(line[0]), float(line[1]) + float(line[0]) * o)
    return np.stack([x, noise_channel(plane, norm.scale, line)])
