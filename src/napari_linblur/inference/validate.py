"""Input validation shared by the public operations.

Every check raises ``ValueError``/``TypeError`` naming the argument and the accepted form, before any
torch code runs, so users never see a bare torch traceback.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any

import numpy as np

ACCEPTED_IMAGE = "a real-valued 2-D image (Y, X) or a stack (..., Y, X) as a numpy or dask array"
MIN_SIDE = 4
#: largest accepted ``|value|``: the float32 range the networks and the normalization compute in
MAX_ABS = float(np.finfo(np.float32).max)


def is_dask(x: Any) -> bool:
    """True for a dask array (without importing dask when it is not loaded)."""
    mod = type(x).__module__
    return mod.startswith("dask.") and hasattr(x, "dask")


def check_image(x: Any, name: str = "img", *, allow_stack: bool = True, check_finite: bool = True):
    """Validate an image argument and return it as a numpy or dask array.

    Parameters
    ----------
    x : array-like
        The image. Lists and other array-likes are converted with :func:`numpy.asarray`.
    name : str
        Argument name used in error messages.
    allow_stack : bool
        Accept ``(..., Y, X)`` stacks; otherwise only 2-D.
    check_finite : bool
        Reject NaN/Inf, and values beyond the float32 range (``|x| < 3.4e38``, what the networks compute in) in
        float64 and wider images. For dask arrays the check is deferred to compute time, per plane
        (:func:`check_finite_plane`).

    Returns
    -------
    numpy.ndarray or dask.array.Array

    Examples
    --------
    >>> check_image(np.zeros((8, 8), np.uint16)).shape
    (8, 8)
    """
    if x is None:
        raise TypeError(f"{name} is None; expected {ACCEPTED_IMAGE}")
    if not is_dask(x):
        # the module first: ``.data`` of a datetime64 ndarray raises (a buffer of dtype 'M')
        if type(x).__module__.startswith("napari") and hasattr(x, "data") and hasattr(x, "name"):
            raise TypeError(f"{name} is a napari layer; pass its .data ({ACCEPTED_IMAGE})")
        if isinstance(x, (str, bytes, os.PathLike)):  # a file name, not an image (it read as "dtype <U8")
            raise TypeError(f"{name} is a path ({os.fsdecode(x)!r}), not an image; open it first: "
                            "napari_linblur.open_zstack(path) gives a lazy (..., Z, Y, X) array")
        try:
            x = np.asarray(x)
        except Exception as err:  # noqa: BLE001
            raise TypeError(f"{name} could not be read as an array ({err}); expected {ACCEPTED_IMAGE}") from err
    dtype = np.dtype(x.dtype)
    if dtype.kind not in "uif" and dtype != np.bool_:
        raise TypeError(f"{name} has dtype {dtype}; expected a real dtype (uint8, uint16, int, float)")
    if any(isinstance(n, float) and math.isnan(n) for n in x.shape):
        raise ValueError(
            f"{name} has unknown shape {tuple(x.shape)} (a dask array whose chunk sizes are unknown, e.g. after "
            f"boolean indexing); call {name}.compute_chunk_sizes() first, or pass an array of known shape"
        )
    if x.ndim < 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {ACCEPTED_IMAGE}")
    if not allow_stack and x.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected a single 2-D plane (Y, X)")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); expected {ACCEPTED_IMAGE}")
    if x.ndim >= 3 and x.shape[-1] in (3, 4) and x.shape[-3] >= 16 and x.shape[-2] >= 16:
        what = "an RGB(A) image" if x.ndim == 3 else "a stack of RGB(A) images"
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}, which looks like {what} (colour last); napari-linblur expects "
            "single-channel planes (..., Y, X) — pass one channel, e.g. img[..., 0]"
        )
    if x.shape[-1] < MIN_SIDE or x.shape[-2] < MIN_SIDE:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}: planes must be at least {MIN_SIDE}x{MIN_SIDE} pixels"
        )
    if check_finite and not is_dask(x):
        check_finite_plane(x, name)
    return x


def check_finite_plane(plane: np.ndarray, name: str) -> None:
    """Finiteness and range check of a computed image, deferred to inside the tasks for dask arrays.

    Raises ``ValueError`` naming ``name`` for NaN/Inf, or for values beyond the float32 range (``|x| >= 3.4e38``)
    that a float64 (or wider) image can hold: the networks compute in float32, where they would become Inf.

    Examples
    --------
    >>> check_finite_plane(np.full((4, 4), 1e38), "img")  # passes
    >>> check_finite_plane(np.full((4, 4), 1e39), "img")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: img has values up to |x| = 1e+39, beyond the accepted range |x| < 3.4e38 ...
    """
    plane = np.asarray(plane)
    if plane.dtype.kind != "f":
        return  # (u)int64 at most ~1.8e19, far inside the range
    if not np.isfinite(plane).all():
        raise ValueError(f"{name} contains NaN or Inf values; replace them (e.g. np.nan_to_num) first")
    if plane.dtype.itemsize > 4 and plane.size:
        peak = max(float(plane.max()), -float(plane.min()))
        if peak > MAX_ABS:
            raise ValueError(
                f"{name} has values up to |x| = {peak:.3g}, beyond the accepted range |x| < 3.4e38 (the float32 "
                "range the networks compute in); rescale the image first"
            )


def check_same_shape(a: Any, b: Any, names: tuple[str, str]) -> None:
    """Raise if two images of a pair differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape (planes of one field); "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def check_alpha(alpha: Any, *, name: str = "alpha", low_open: bool = False, allow_zero: bool = True) -> float:
    """Validate an interpolation/extrapolation weight.

    ``allow_zero=True`` accepts ``[0, 1]`` (interpolation); ``allow_zero=False`` accepts ``(0, 1]``
    (extrapolation, where ``1/alpha`` appears).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not np.isfinite(alpha):
        raise ValueError(f"{name} must be finite, got {alpha}")
    if allow_zero and not low_open:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name}={alpha} is outside [0, 1] (1 gives the sharper image, 0 the blurrier)")
    elif not 0.0 < alpha <= 1.0:
        raise ValueError(f"{name}={alpha} is outside (0, 1] (extrapolation divides by alpha)")
    return alpha


def check_callbacks(progress: Any = None, should_stop: Any = None, *, lazy: bool = False) -> tuple[Any, Any]:
    """Raise a ``TypeError`` unless ``progress`` and ``should_stop`` are each None or callable; return the two
    callbacks the operation runs with.

    Checked up front by every public operation, so that a wrong value fails before a model loads, not between
    tiles. For dask input (``lazy``) nothing is computed during the call: the callbacks are not put into the lazy
    graph (a GUI's cancel flag would make it impossible to send to a cluster, and each plane would report 1 of 1),
    and a ``UserWarning`` says how to follow and stop the computation instead; ``(None, None)`` is returned.

    Examples
    --------
    >>> check_callbacks(print, None) == (print, None)
    True
    >>> check_callbacks(progress=5)
    Traceback (most recent call last):
    TypeError: progress must be a callable progress(done, total) or None, got 5
    """
    forms: dict[str, tuple[Any, str]] = {"progress": (progress, "progress(done, total)"),
                                         "should_stop": (should_stop, "should_stop() -> bool")}
    for name, (value, form) in forms.items():
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be a callable {form} or None, got {value!r}")
    if lazy and (progress is not None or should_stop is not None):
        import warnings

        names = [n for n, (v, _) in forms.items() if v is not None]
        given = " and ".join(names) + (" apply" if len(names) > 1 else " applies")
        unused = "they are" if len(names) > 1 else "it is"
        warnings.warn(f"{given} to numpy input; with dask input the result is lazy and computed later, so "
                      f"{unused} not used: follow and stop the computation with dask (e.g. dask.diagnostics."
                      "ProgressBar, a distributed client's futures, or write_ome_zarr(progress=...))",
                      UserWarning, stacklevel=3)
        return None, None
    return progress, should_stop


def check_number(value: Any, name: str, *, minimum: float = 0.0, inclusive: bool = False, unit: str = "") -> float:
    """``value`` as a finite ``float`` above ``minimum`` (or equal to it when ``inclusive``).

    A ``TypeError`` for a non-number (``bool`` included), a ``ValueError`` for NaN, Inf or a value out of range,
    each naming ``name`` and the accepted form.

    Examples
    --------
    >>> check_number(2, "sigma_r", unit=" (pixels)")
    2.0
    >>> check_number(float("inf"), "sigma_r", unit=" (pixels)")
    Traceback (most recent call last):
    ValueError: sigma_r must be a finite number > 0 (pixels), got inf
    """
    form = f"a finite number {'>=' if inclusive else '>'} {minimum:g}{unit}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {form}, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
        raise ValueError(f"{name} must be {form}, got {number:g}")
    return number


def name_arguments(text: str, names: dict[str, str]) -> str:
    """An operation's error message with its argument names (``img``, ``img_b``, …, wherever they stand as words)
    replaced by what the user knows them as, quoted: a layer's name in the plugin, the input file on the command
    line.

    Examples
    --------
    >>> name_arguments("img contains NaN or Inf values", {"img": "cells"})
    "'cells' contains NaN or Inf values"
    >>> name_arguments("img_a and img_c must have the same shape", {"img_a": "A", "img_c": "C"})
    "'A' and 'C' must have the same shape"
    >>> name_arguments("model file missing", {"img": "cells"})
    'model file missing'
    """
    import re

    if not names:
        return text
    # one pass, longest name first, so that a replaced name is never matched again
    pattern = re.compile(r"\b(" + "|".join(re.escape(a) for a in sorted(names, key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: repr(names[m.group(1)]), text)
