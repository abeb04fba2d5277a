"""napari reader: OME-Zarr / zarr stores, ``linblur synth`` datasets, TIFF stacks, folders of TIFF planes and BBBC006
folders or files.

Every layer is a lazy dask array from :func:`napari_linblur.io.readers.open_zstack_with_metadata` (the fields of a
``linblur synth`` dataset from :func:`~napari_linblur.io.readers.open_zstacks`): only the planes napari displays are
read, so a whole plate opens instantly and memory stays bounded. Channels become
separate layers (named ``stem [channel]``), physical scale comes from the file, and each layer remembers where
it came from (``metadata['linblur_source']``) so that the writer never overwrites an input.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ._maps import saved_map_display

LayerData = tuple[Any, dict, str]

_TIFF = (".tif", ".tiff")
_CHANNEL_COLORS = ["green", "magenta", "cyan", "yellow", "red", "blue"]
#: largest Y/X window read to estimate contrast limits (one chunk or so; never a whole plane of a huge image)
_CONTRAST_WINDOW = 1024


def _channel_colormap(name: str | None, i: int) -> str:
    """The colormap of channel ``i``: its own colour when the channel is named after one (an RGB TIFF's ``red``,
    ``green``, ``blue``), else green, magenta, cyan, … in turn.

    Examples
    --------
    >>> _channel_colormap("blue", 0), _channel_colormap("w1", 0), _channel_colormap(None, 1)
    ('blue', 'green', 'magenta')
    """
    if isinstance(name, str) and name.lower() in ("red", "green", "blue"):
        return name.lower()
    return _CHANNEL_COLORS[i % len(_CHANNEL_COLORS)]


def _looks_readable(p: Path) -> bool:
    from napari_linblur.io.omezarr import ZARR_METADATA, is_zarr_store

    if p.is_file():
        if p.suffix.lower() in _TIFF or p.name in ZARR_METADATA:
            return True
        from napari_linblur.io.readers import _TIFF_MAGIC

        try:  # a TIFF under another name (x.zarr, x.dat): opened by its content, as the command line does
            with open(p, "rb") as f:
                return f.read(4) in _TIFF_MAGIC
        except OSError:
            return False
    if p.is_dir():
        if is_zarr_store(p):
            return True
        from napari_linblur.io import bbbc006

        # a .zarr folder without zarr metadata is readable only as a folder of TIFFs (as the command line reads it);
        # an empty one, or one still being written, is not

        try:
            if bbbc006.scan_bbbc006(p):
                return True
        except Exception:  # noqa: BLE001 - not a BBBC006 folder
            pass
        return any(bbbc006.is_tiff_name(q.name) for q in p.iterdir() if q.is_file())
    return False


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_zstack` when ``path`` is something napari-linblur can open, else None.

    Parameters
    ----------
    path : str or list of str
        One path (a list must hold exactly one).

    Examples
    --------
    >>> napari_get_reader("/no/such/file.png") is None
    True
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(os.fspath(path))
    if not p.exists() or not _looks_readable(p):
        return None
    return read_zstack


def _contrast_limits(arr, axes: str) -> list[float]:
    """Robust limits from a small central window of one plane (reads about one chunk)."""
    idx: list[Any] = []
    for i, a in enumerate(axes):
        n = arr.shape[i]
        if a in "yx":
            w = min(n, _CONTRAST_WINDOW)
            s = (n - w) // 2
            idx.append(slice(s, s + w))
        else:
            idx.append(n // 2 if a == "z" else 0)
    sample = np.asarray(arr[tuple(idx)])
    if hasattr(sample, "compute"):
        sample = sample.compute()
    sample = np.asarray(sample, dtype=np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return [0.0, 1.0]
    lo, hi = np.percentile(finite, [0.1, 99.9])
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        hi = lo + 1.0
    return [float(lo), float(hi)]


def _pyramid(arr, meta) -> list | None:
    """All resolution levels of an OME-Zarr image as dask arrays (level 0 = ``arr``), or None.

    Only used when the stored axis order is already canonical (no transpose, no inserted Z axis), so the
    levels line up with ``arr`` axis by axis and differ only in Y and X.
    """
    levels = meta.extra.get("levels") or []
    if meta.extra.get("format") != "ome-zarr" or len(levels) < 2:
        return None
    try:
        ngff = meta.extra.get("ngff") or {}
        ome = ngff["ome"] if isinstance(ngff.get("ome"), dict) else ngff
        raw = "".join(str(a["name"] if isinstance(a, dict) else a).lower() for a in ome["multiscales"][0]["axes"])
    except Exception:  # noqa: BLE001 - unusual metadata: read the full resolution only
        return None
    if raw != meta.axes:
        return None
    from napari_linblur.io._lazy import SafeZarrArray, as_dask

    out = [arr]
    for level in levels[1:]:
        lv = as_dask(SafeZarrArray(str(meta.source), level))
        if lv.ndim != arr.ndim or lv.shape[:-2] != arr.shape[:-2] or lv.shape[-1] >= out[-1].shape[-1]:
            break
        out.append(lv)
    return out if len(out) > 1 else None


def _napari_units(units, path: Path) -> list[str]:
    """The units napari is given: lengths and times its unit registry (pint) knows, else ``"pixel"`` with a warning
    naming the file (napari refuses a layer whose unit it cannot parse, and reads some strings as other units:
    ``'a.u.'`` as atomic mass unit × year)."""
    import warnings

    import pint

    reg = pint.get_application_registry()
    out = []
    for u in units:
        if u is None or str(u).lower() in ("pixel", "pixels", "px"):
            out.append("pixel")
            continue
        try:
            ok = any(reg.parse_expression(str(u)).check(d) for d in ("[length]", "[time]"))
        except Exception:  # pint's parse errors are of several kinds; any of them means napari cannot use it
            ok = False
        if not ok:
            warnings.warn(f"{path}: the unit {u!r} is not a length or time napari knows; that axis is shown in "
                          "pixels", UserWarning, stacklevel=2)
        out.append(str(u) if ok else "pixel")
    return out


def _described(meta) -> dict | None:
    """What a napari-linblur output's values mean (operation, unit, model, optics, …): the ``"linblur"`` root
    attributes written by the widgets and the command line, or None for other files."""
    ngff = meta.extra.get("ngff") if isinstance(meta.extra, dict) else None
    own = ngff.get("linblur") if isinstance(ngff, dict) else None
    return dict(own) if isinstance(own, dict) and own else None


def _planes_of(planes, arr, axes: str) -> list[int] | None:
    """The BBBC006 plane numbers ``planes`` (``meta.extra['planes']``: one per Z index of a BBBC006 folder, or of
    an output that records them) as a list, or None when there are none or not one per plane of ``arr``'s Z axis.

    Examples
    --------
    >>> _planes_of([14, 15, 16], np.zeros((3, 4, 4)), "zyx")
    [14, 15, 16]
    >>> _planes_of([14, 15], np.zeros((3, 4, 4)), "zyx") is None
    True
    """
    if not isinstance(planes, (list, tuple)) or "z" not in axes or len(axes) != arr.ndim:
        return None
    if len(planes) != arr.shape[axes.index("z")]:
        return None
    try:
        return [int(z) for z in planes]
    except (TypeError, ValueError):
        return None


def read_zstack(path: str | list[str]) -> list[LayerData]:
    """Read ``path`` into lazy image layers, one per channel.

    Returns
    -------
    list of (data, kwargs, 'image')
        ``data`` is a dask array with axes ``(..., Z, Y, X)`` (for an OME-Zarr pyramid, the list of its
        levels: a napari multiscale layer; for the root of a ``linblur synth`` dataset, its fields stacked along a
        P axis, ``(P, Z, Y, X)``, as for a BBBC006 folder); ``kwargs`` carry ``name``, ``scale``,
        ``axis_labels``, ``units``, ``contrast_limits``, ``colormap`` and ``metadata``.
    """
    from napari_linblur.io.readers import open_zstack_with_metadata

    if isinstance(path, (list, tuple)):
        path = path[0]
    p = Path(os.fspath(path))
    arr, meta = open_zstack_with_metadata(p)  # a linblur synth root: its fields along P, as the CLI reads it
    stem = p.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    axes = meta.axes
    units = _napari_units(meta.units, p)
    pyramid = _pyramid(arr, meta)
    if meta.extra.get("z_added"):  # a file without a Z axis opens as it was saved, (..., Y, X), not (..., 1, Y, X)
        iz = axes.index("z")
        pick = (slice(None),) * iz + (0,)
        arr = arr[pick]
        pyramid = [lv[pick] for lv in pyramid] if pyramid else pyramid
        drop = [i for i in range(len(axes)) if i != iz]
        meta = replace(meta, axes="".join(axes[i] for i in drop), scale=tuple(meta.scale[i] for i in drop),
                       units=tuple(meta.units[i] for i in drop),
                       translate=None if meta.translate is None else tuple(meta.translate[i] for i in drop))
        axes, units = meta.axes, [units[i] for i in drop]
    if "c" in axes:
        ax = axes.index("c")
        n = arr.shape[ax]
        names = meta.channel_names or [str(i) for i in range(n)]
        pick = (slice(None),) * ax
        planes = [([lv[pick + (i,)] for lv in pyramid] if pyramid else arr[pick + (i,)], names[i], i)
                  for i in range(n)]
        keep = [i for i in range(len(axes)) if i != ax]
    else:
        names = meta.channel_names or []
        planes = [(pyramid or arr, names[0] if len(names) == 1 else None, 0)]
        keep = list(range(len(axes)))
    sub_axes = "".join(axes[i] for i in keep)
    scale = [float(meta.scale[i]) for i in keep]
    sub_units = [units[i] for i in keep]
    # the BBBC006 plane number of each Z index (a BBBC006 folder, or an output that records them)
    plane_numbers = _planes_of(meta.extra.get("planes"), arr, axes)
    layers: list[LayerData] = []
    for data, cname, i in planes:
        name = f"{stem} [{cname}]" if cname is not None and len(planes) > 1 else stem
        if cname is not None and len(planes) == 1 and meta.extra.get("format") == "bbbc006":
            name = f"{stem} [{cname}]"
        kwargs = {
            "name": name,
            "scale": scale,
            "translate": [float(meta.translate[i]) for i in keep] if meta.translate is not None else
            [0.0] * len(keep),
            "axis_labels": list(sub_axes),
            "units": sub_units,
            "contrast_limits": _contrast_limits(data[0] if isinstance(data, list) else data, sub_axes),
            "multiscale": isinstance(data, list),
            "colormap": _channel_colormap(cname, i) if len(planes) > 1 else "gray",
            "blending": "additive" if len(planes) > 1 else "translucent",
            "metadata": {
                "linblur_source": str(p.resolve()),
                "linblur_axes": sub_axes,
                "linblur_channel": cname,
                "linblur_format": meta.extra.get("format"),
            },
        }
        if "fields" in meta.extra:
            kwargs["metadata"]["linblur_fields"] = list(meta.extra["fields"])
        if plane_numbers is not None:
            kwargs["metadata"]["linblur_planes"] = list(plane_numbers)
        described = _described(meta)
        if described:
            kwargs["metadata"]["linblur_attrs"] = described
        # a saved defocus map looks as the widget showed it (magma on 0 - 10 px, or its µm), not as intensities
        kwargs.update(saved_map_display(described) or {})
        layers.append((data, kwargs, "image"))
    return layers
