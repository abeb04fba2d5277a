"""napari writer: image layers -> OME-Zarr (NGFF 0.5) with :func:`napari_linblur.io.omezarr.write_ome_zarr`.

The write is atomic (a hidden temporary folder renamed into place when complete) and refuses to write onto,
inside or around any file a layer was read from (``metadata['linblur_source']``, set by our reader, or the
layer's ``source.path``): the layers written, and every other layer of the current viewer (whose data would change
under it). A multiscale layer is written at full resolution (level 0), with a pyramid of its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: axes of a layer whose axes nothing names (napari's default labels): leading axes of unknown meaning are written as
#: custom NGFF axes ('a', 'b'; no type), not guessed as time (a CZYX stack from another reader is not a time series)
_DEFAULT_AXES = {2: "yx", 3: "zyx", 4: "azyx", 5: "abzyx"}


class LayerWriteError(OSError):
    """A layer cannot be written (it would overwrite its input, the layers do not fit one image, ...).

    Not a ``ValueError`` on purpose: napari (through npe2) takes a writer's ``ValueError`` to mean "this plugin
    cannot write that" and silently tries the next writer, so the user would never see the reason.
    """


def _refusals_reach_the_user(fn):
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            raise LayerWriteError(str(err)) from err

    return wrapper


#: keys of a layer's ``linblur_attrs`` that say where its planes and fields came from: the writer records its own
#: (``napari_linblur``), in the order the layer is saved (a flipped axis is saved reversed)
_POSITION_KEYS = ("fields", "planes", "channel")


def _what_values_are(md: dict) -> dict | None:
    """The layer's ``linblur_attrs`` (what its values are: a defocus map's unit, optics…) without position keys."""
    attrs = md.get("linblur_attrs")
    if not isinstance(attrs, dict):
        return None
    return {k: v for k, v in attrs.items() if k not in _POSITION_KEYS}


def _axes_for(meta: dict, ndim: int) -> str:
    md = meta.get("metadata") or {}
    axes = md.get("linblur_axes")
    if not isinstance(axes, str) or len(axes) != ndim:
        labels = meta.get("axis_labels")
        ok = labels is not None and len(labels) == ndim and all(
            isinstance(a, str) and len(a) == 1 and a.isalpha() for a in labels
        )
        axes = "".join(labels).lower() if ok else None
    if not axes or len(set(axes)) != ndim or not axes.endswith("yx"):
        if ndim not in _DEFAULT_AXES:
            raise ValueError(f"data: can write 2-D to 5-D images as OME-Zarr, got {ndim} dimensions")
        axes = _DEFAULT_AXES[ndim]
    # NGFF knows t, c, z, y, x; other letters (e.g. 'p' for BBBC006 positions) are written as-is, and an axis read
    # as '?' (a custom axis of the file it came from) gets a letter of its own
    from napari_linblur.io.omezarr import writable_axes

    return writable_axes(axes)


def _units(meta: dict, ndim: int) -> list[str | None]:
    """The layer's per-axis units in NGFF spelling (napari's ``pixel``, i.e. uncalibrated, is no unit)."""
    units = meta.get("units")
    if units is None or len(units) != ndim:
        return [None] * ndim  # pragma: no cover - napari always passes one unit per axis
    out = []
    for u in units:
        text = "" if u is None else str(u)
        out.append(None if text in ("", "pixel", "dimensionless") else text)
    return out


def _check_layer(meta: dict) -> None:
    if meta.get("rgb"):
        raise ValueError(f"layer {meta.get('name', '')!r} is RGB: the napari-linblur writer saves single-channel "
                         "microscopy images; save it with napari's built-in writer (e.g. as .png or .tif)")


def _full_resolution(data: Any, meta: dict) -> Any:
    """A layer's full-resolution data: level 0 of a multiscale layer (napari passes its levels as a
    ``MultiScaleData`` sequence, a script may pass a list; the writer builds its own pyramid), else ``data``."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) and (
            meta.get("multiscale") or hasattr(data[0], "shape")):
        return data[0]
    return data


def _sources(meta: dict) -> list[str]:
    md = meta.get("metadata") or {}
    out = []
    src = md.get("linblur_source")
    if src:
        out.append(str(src))
    for extra in md.get("linblur_inputs", []) or []:
        out.append(str(extra))
    return out


def _check_open_layers(target: Path, writing: list[dict]) -> None:
    """Refuse to write onto, inside or around a file that another layer of the current viewer reads from: its data
    (lazy, or a multiscale layer's levels) would change under it without notice.

    Raises
    ------
    ValueError
        naming the file and the layer that reads it.
    """
    try:
        from napari import current_viewer

        viewer = current_viewer()
    except Exception:  # noqa: BLE001 - no napari (or no Qt): no open layers to protect
        viewer = None
    if viewer is None:
        return
    from napari_linblur.io.omezarr import _conflicts

    from ._ops import source_paths

    names = {str(m.get("name")) for m in writing}
    resolved = target.resolve()
    for layer in viewer.layers:
        if layer.name in names:
            continue  # a layer being written: its own input is refused by write_ome_zarr
        bad = _conflicts(resolved, source_paths(layer))
        if bad is None:
            continue
        where = ("" if bad == resolved else f" is inside {bad}, which" if bad in resolved.parents
                 else f" contains {bad}, which")
        raise ValueError(f"{target}{where} is read by the open layer {layer.name!r}; writing there would change "
                         "that layer's data — choose another file name, or close the layer first")


def _target(path: str) -> Path:
    p = Path(os.fspath(path))
    if not p.name.lower().endswith(".zarr"):
        p = p.with_name(p.name + ".ome.zarr")
    return p


@_refusals_reach_the_user
def write_single_image(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer to ``path`` as OME-Zarr; returns ``[path]``.

    Parameters
    ----------
    path : str
        Destination (``.ome.zarr`` is appended when the name does not end in ``.zarr``).
    data : array-like
        The layer data (numpy or lazy dask; dask is written chunk by chunk).
    meta : dict
        The layer's attributes (napari passes ``scale``, ``name``, ``metadata``, ...).

    Raises
    ------
    LayerWriteError
        An ``OSError`` naming the problem: the target is one of the layer's input files, the layer is RGB, ...

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> out = write_single_image(tempfile.mkdtemp() + "/img.ome.zarr", np.zeros((3, 64, 64), "uint16"),
    ...                          {"scale": [2.0, 0.5, 0.5], "name": "img"})
    >>> out[0].endswith("img.ome.zarr")
    True
    """
    from napari_linblur.io.omezarr import write_ome_zarr

    from ._ops import with_positive_scale

    data = _full_resolution(data, meta)
    if not hasattr(data, "dtype"):
        data = np.asarray(data)
    _check_layer(meta)
    target = _target(path)
    _check_open_layers(target, [meta])
    axes = _axes_for(meta, data.ndim)
    scale = meta.get("scale")
    scale = [float(s) for s in scale] if scale is not None and len(scale) == data.ndim else None
    translate = meta.get("translate")
    translate = [float(t) for t in translate] if translate is not None and len(translate) == data.ndim else None
    flipped = [a for a, v in zip(axes, scale or ()) if v < 0]
    data, scale, translate = with_positive_scale(data, scale, translate)  # a flipped axis reopens where it was
    md = meta.get("metadata") or {}
    channel = md.get("linblur_channel")
    positions = _positions([meta], axes, data.shape, flipped)
    write_ome_zarr(
        target,
        data,
        axes=axes,
        scale=scale,
        translate=translate,
        units=_units(meta, data.ndim),
        name=str(meta.get("name") or "image"),
        overwrite=True,
        source_paths=_sources(meta),
        attrs={"napari_linblur": {"layer": str(meta.get("name", "")), "axes": axes,
                                  **({"channel": str(channel)} if channel is not None else {}), **positions},
               # what the values are (a defocus map, its unit and optics…), as the file it was read from said
               **({"linblur": _what_values_are(md)} if _what_values_are(md) is not None else {})},
    )
    return [str(target)]


def _positions(metas: list[dict], axes: str, shape: tuple[int, ...], flipped: list[str]) -> dict[str, list]:
    """The wells/sites and BBBC006 plane numbers the layers were read with (or computed from), as `linblur` batch
    outputs record them, so the reader gives them back to the layer the file opens as; for several layers only
    what they all share."""
    from ._ops import positions_for

    mds = [m.get("metadata") or {} for m in metas]
    keys = {"fields": "linblur_fields", "planes": "linblur_planes"}
    shared = {k: mds[0].get(v) if all(md.get(v) == mds[0].get(v) for md in mds) else None for k, v in keys.items()}
    positions = positions_for(shared["fields"], shared["planes"], axes, shape)
    for key, axis in (("fields", "p"), ("planes", "z")):  # stored reversed along a flipped axis: so are they
        if axis in flipped and key in positions and axis in axes:
            positions[key] = positions[key][::-1]
    return positions


@_refusals_reach_the_user
def write_multiple(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write several image layers of one shape as the channels of one OME-Zarr image (``c`` axis).

    Layers of different shapes cannot share one image: the error (:class:`LayerWriteError`) says so and names
    the shapes.
    """
    from napari_linblur.io.omezarr import write_ome_zarr

    images = [(_full_resolution(d, m), m) for d, m, t in layer_data if t == "image"]
    if not images:
        raise ValueError("no image layers selected; the napari-linblur writer saves image layers only")
    for _, m in images:
        _check_layer(m)
    if len(images) == 1:
        return write_single_image(path, images[0][0], images[0][1])
    shapes = {tuple(d.shape) for d, _ in images}
    if len(shapes) != 1:
        raise ValueError(
            "the selected image layers have different shapes "
            f"{sorted(shapes)}; OME-Zarr channels must share one shape - save them one by one"
        )
    import dask.array as da

    dtype = np.result_type(*[d.dtype for d, _ in images])
    arrays = [da.asarray(d).astype(dtype) for d, _ in images]
    meta0 = images[0][1]
    base = _axes_for(meta0, arrays[0].ndim)
    if "c" in base:
        raise ValueError("layers already have a channel axis; save them one by one")
    stacked = da.stack(arrays, axis=base.index("z") if "z" in base else len(base) - 2)
    axes = base.replace("z", "cz") if "z" in base else base[:-2] + "c" + base[-2:]
    scale0 = meta0.get("scale")
    scale = None
    if scale0 is not None and len(scale0) == len(base):
        scale = [float(s) for s in scale0]
        scale.insert(axes.index("c"), 1.0)
    target = _target(path)
    _check_open_layers(target, [m for _, m in images])
    sources = [s for _, m in images for s in _sources(m)]
    units = _units(meta0, len(base))
    units.insert(axes.index("c"), None)
    translate0 = meta0.get("translate")
    translate = None
    if translate0 is not None and len(translate0) == len(base):
        translate = [float(t) for t in translate0]
        translate.insert(axes.index("c"), 0.0)
    from ._ops import with_positive_scale

    flipped = [a for a, v in zip(axes, scale or ()) if v < 0]
    positions = _positions([m for _, m in images], base, tuple(arrays[0].shape), flipped)
    stacked, scale, translate = with_positive_scale(stacked, scale, translate)  # a flipped axis reopens where it was
    # channel names: the channels the layers were read as (e.g. DAPI, GFP) when distinct, else the layer names
    read_as = [(m.get("metadata") or {}).get("linblur_channel") for _, m in images]
    if all(c is not None for c in read_as) and len(set(map(str, read_as))) == len(read_as):
        channel_names = [str(c) for c in read_as]
    else:
        channel_names = [str(m.get("name", i)) for i, (_, m) in enumerate(images)]
    write_ome_zarr(
        target,
        stacked,
        axes=axes,
        scale=scale,
        translate=translate,
        units=units,
        channel_names=channel_names,
        overwrite=True,
        source_paths=sources,
        name=target.name,
        attrs={"napari_linblur": {"layers": [str(m.get("name", "")) for _, m in images], "axes": axes,
                                  **positions},
               # what the values are, when every layer says the same (channels of one defocus map, ...)
               **_shared_linblur_attrs(images)},
    )
    return [str(target)]


def _shared_linblur_attrs(images) -> dict:
    """``{"linblur": attrs}`` when every layer carries the same ``linblur_attrs`` (what its values are), else {}."""
    found = [_what_values_are(m.get("metadata") or {}) for _, m in images]
    if found and all(isinstance(a, dict) for a in found) and all(a == found[0] for a in found):
        return {"linblur": found[0]}
    return {}
