"""Where a widget's output layer goes in the viewer, and how it looks: Qt-free (napari layers only).

An output of fewer axes than its input (a plane of a stack, a stack without Z) is placed where the input's data is
(:func:`placement`: axis labels and the kept part of rotation, shear and affine), a live preview follows its input
when that moves (:func:`follow_placement`), and an output in the input's intensity units borrows its contrast and
colormap (:func:`input_limits`, :func:`input_colormap`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _ops


def kept_axes(like_ndim: int, ndim: int, dropped_z: bool = False) -> list[int]:
    """The input's axes an output of ``ndim`` axes keeps: the last ``ndim`` ones, Z (the third from last) left out
    when ``dropped_z``.

    Examples
    --------
    >>> kept_axes(4, 2), kept_axes(4, 3, dropped_z=True), kept_axes(3, 3)
    ([2, 3], [0, 2, 3], [0, 1, 2])
    """
    axes = list(range(like_ndim))
    if dropped_z and ndim == like_ndim - 1:
        del axes[-3]
    return axes[-ndim:]


#: the events of a layer that move its data in the world (a preview placed on it follows them)
PLACEMENT_EVENTS = ("scale", "translate", "rotate", "shear", "affine", "units", "axis_labels")


def _identity(m: np.ndarray) -> bool:
    return bool(np.allclose(m, np.eye(m.shape[0])))


def placement(like, ndim: int, *, dropped_z: bool = False) -> tuple[dict[str, Any], str | None]:
    """Layer options that place an output of ``ndim`` axes where ``like``'s data is: its axis labels, and its
    rotation, shear and affine restricted to the kept axes (scale, translate and units are the callers').

    Returns ``(kwargs, problem)``: ``problem`` says why a transform was left out, when it couples a kept axis with a
    left-out one (e.g. a rotation that tilts Z into Y: a single plane has no such placement).
    """
    from napari.utils.transforms.transform_utils import expand_upper_triangular

    keep = kept_axes(like.ndim, ndim, dropped_z)
    gone = [i for i in range(like.ndim) if i not in keep]
    kwargs: dict[str, Any] = {}
    labels = [str(a) for a in getattr(like, "axis_labels", ())]
    if len(labels) == like.ndim:
        kwargs["axis_labels"] = tuple(labels[i] for i in keep)
    shear = np.asarray(like.shear, dtype=float)
    linear = {"rotate": np.asarray(like.rotate, dtype=float),
              "shear": shear if shear.ndim == 2 else expand_upper_triangular(shear)}
    affine = np.asarray(like.affine.affine_matrix, dtype=float)
    linear["affine"] = affine[:-1, :-1]
    problem = None
    for key, m in linear.items():
        if _identity(m) and not (key == "affine" and np.any(affine[:-1, -1])):
            continue
        if gone and (np.any(np.abs(m[np.ix_(keep, gone)]) > 1e-9) or np.any(np.abs(m[np.ix_(gone, keep)]) > 1e-9)):
            problem = (f"the {key} of {like.name!r} mixes the plane's axes with the axes this result leaves out; "
                       "it is placed without it (scale and translate only)")
            continue
        sub = m[np.ix_(keep, keep)]
        if key == "affine":
            sub = np.block([[sub, affine[keep, -1][:, None]], [np.zeros((1, len(keep))), np.ones((1, 1))]])
        kwargs[key] = sub
    return kwargs, problem


def warn_placement(problem: str | None) -> None:
    """Say (a napari warning notification) that an output was placed without part of its input's transform."""
    if problem:
        from napari.utils.notifications import show_warning

        show_warning(problem)


def place_layer(layer, data, *, name: str, like) -> None:
    """Give an existing 2-D layer new ``data`` and ``name``, placed like ``like``'s YX plane (scale, translate,
    units, axis labels and the YX part of its rotation, shear and affine)."""
    layer.data = data
    layer.name = name
    follow_placement(layer, like)


def follow_placement(layer, like) -> str | None:
    """Place the 2-D ``layer`` (a preview) on ``like``'s YX plane again, after ``like`` moved; the problem of
    :func:`placement`, if any."""
    kwargs, problem = placement(like, 2)
    layer.scale = tuple(like.scale[-2:])
    layer.translate = tuple(like.translate[-2:])
    layer.units = tuple(like.units[-2:])
    for key in ("rotate", "shear", "affine"):
        setattr(layer, key, kwargs.get(key, np.eye(3) if key == "affine" else np.eye(2)))
    if "axis_labels" in kwargs:
        layer.axis_labels = kwargs["axis_labels"]
    return problem


#: the style entries a preview keeps from its input, unless the user changed them
STYLE = ("contrast_limits", "colormap")


def style_of(layer, key: str):
    """A layer's ``contrast_limits`` (floats) or ``colormap`` (its name), comparable with :func:`same_style`."""
    if key == "contrast_limits":
        return tuple(float(v) for v in layer.contrast_limits)
    return str(getattr(layer.colormap, "name", layer.colormap))


def same_style(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and bool(np.allclose(a, b, rtol=1e-6, atol=1e-9))
    return a == b


def input_colormap(layer) -> str:
    """The input layer's colormap name (outputs in the input's units look like the input)."""
    try:
        return str(layer.colormap.name)
    except Exception:  # noqa: BLE001
        return "gray"


def input_limits(layer, fallback: np.ndarray | None = None) -> tuple[float, float]:
    """Contrast limits for an output in the input's intensity units: the input layer's own limits."""
    try:
        lo, hi = (float(v) for v in layer.contrast_limits)
        if hi > lo:
            return lo, hi
    except Exception:  # noqa: BLE001
        pass
    return _ops.robust_limits(fallback) if fallback is not None else (0.0, 1.0)
