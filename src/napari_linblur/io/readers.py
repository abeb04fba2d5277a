"""Lazy z-stack readers: OME-Zarr (NGFF 0.4 / 0.5), plain zarr, TIFF (multi-page, ImageJ, OME), folders of
per-plane TIFFs and BBBC006 folders in both layouts.

Everything returns a dask array with axes ``(..., Z, Y, X)`` (canonical order: other axes, ``t``, ``p``,
``c``, ``z``, ``y``, ``x``; a missing Z axis is added with length 1). Nothing is read until computed; each chunk
read that fails to decode raises ``ValueError`` naming the file or store and the chunk.

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from napari_linblur.io.omezarr import write_ome_zarr
>>> from napari_linblur.io.readers import open_zstack_with_metadata
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = write_ome_zarr(d / "s.zarr", np.zeros((3, 64, 64), "uint16"), axes="zyx", scale=(2.0, 0.65, 0.65))
>>> arr, meta = open_zstack_with_metadata(d / "s.zarr")
>>> arr.shape, meta.axes, meta.scale
((3, 64, 64), 'zyx', (2.0, 0.65, 0.65))
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from napari_linblur.errors import MissingFileError

from . import bbbc006 as _bb
from ._lazy import (
    SafeZarrArray,
    TiffFileGrid,
    TiffPlanes,
    as_dask,
    natural_key,
    quiet_tifffile,
    tiff_error,
    tiff_plane_header,
)
from .omezarr import ZARR_METADATA, is_zarr_store

__all__ = ["ZStackMeta", "open_zstack", "open_zstacks", "open_zstack_with_metadata", "synthetic_dataset_attrs",
           "length_in_um", "ACCEPTED_FORMATS"]

ACCEPTED_FORMATS = (
    "OME-Zarr 0.4 (zarr v2) or 0.5 (zarr v3) image group (highest resolution level is read)",
    "OME-Zarr HCS plate or well (every field of every well along a leading P axis; all images of one shape)",
    "root of a `linblur synth` dataset (its field_NNN images along a leading P axis)",
    "plain zarr array, or a zarr group holding exactly one array",
    "TIFF file (.tif/.tiff; multi-page, 3-D, ImageJ hyperstack or OME-TIFF)",
    "folder of per-plane TIFF files forming one numbered series (sorted naturally by name = by z index)",
    "BBBC006 folder (BBBC006_v1_images_z_NN/ sub-folders or NN_-prefixed files) or one BBBC006 file",
)

_CANON = "tpczyx"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_UNIT_ALIASES = {"micron": "micrometer", "\\u00B5m": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer",
                 "um": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter",
                 "pm": "picometer", "Å": "angstrom", "\u212b": "angstrom", "s": "second", "sec": "second",
                 "ms": "millisecond", "us": "microsecond", "µs": "microsecond", "\u03bcs": "microsecond",
                 "min": "minute", "h": "hour", "hr": "hour"}
#: Micrometres per unit of every OME-NGFF length unit (the NGFF "space" units).
_UM_PER_UNIT = {
    "yoctometer": 1e-18, "zeptometer": 1e-15, "attometer": 1e-12, "femtometer": 1e-9, "picometer": 1e-6,
    "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0, "millimeter": 1e3, "centimeter": 1e4, "decimeter": 1e5,
    "meter": 1e6, "hectometer": 1e8, "kilometer": 1e9, "megameter": 1e12, "gigameter": 1e15, "terameter": 1e18,
    "petameter": 1e21, "exameter": 1e24, "zettameter": 1e27, "yottameter": 1e30, "inch": 25_400.0,
    "foot": 304_800.0, "yard": 914_400.0, "mile": 1_609_344_000.0, "parsec": 3.0856775814913673e22,
}


@dataclass
class ZStackMeta:
    """What :func:`open_zstack_with_metadata` knows about the array it returns.

    Attributes
    ----------
    axes : str
        one lower-case letter per array axis, e.g. ``'czyx'``: ``t`` time, ``p`` position (BBBC006 well/site,
        HCS well/field, ``linblur synth`` field), ``c`` channel, ``z``, ``y``, ``x``; ``?`` an axis of unknown meaning.
    scale : tuple of float
        physical size of one step along each axis (µm for z, y, x when known; seconds or the file's time unit
        for t; 1.0 when unknown).
    units : tuple of str or None
        unit per axis in NGFF spelling (``'micrometer'``, ``'second'``), None when unknown or not physical.
    channel_names : list of str or None
        one name per channel along the ``c`` axis (or the name of the single selected channel), None when
        unknown; a channel the file leaves unnamed among named ones is named by its index (``'1'``).
    source : Path
        the path that was opened.
    extra : dict
        format-specific details: ``format``; for BBBC006 ``fields`` (``'k06_s2'`` per P index), ``wells``,
        ``sites``, ``planes`` (plane indices along Z), ``plate``, and what a folder left out (with a warning):
        ``dropped_fields`` (field -> the planes it lacks, e.g. ``{'a02_s1': [16]}``), ``mismatched_fields``
        (field -> why: a file of another shape or dtype than the plate's, or unreadable), ``duplicate_fields``
        (field -> its planes with two files, naming both) and ``left_out_planes``
        (planes fewer than half of the fields hold); for OME-Zarr ``ngff_version``,
        ``ngff`` (the full NGFF attributes) and ``level`` (the dataset path read); for an OME-Zarr HCS plate
        (``format`` ``'ome-zarr-hcs'``) ``fields`` (``'A/1/0'``: row/column/field path per P index), ``wells`` and
        ``ngff`` (the plate's attributes); for a ``linblur synth`` root (``'linblur-synth'``) ``fields``
        (``'field_000'`` per P index).
    translate : tuple of float or None
        physical position of the first pixel along each axis (OME-Zarr ``translation``), None at the origin.
    axis_names, axis_types : tuple or None
        the OME-Zarr (NGFF) ``name`` and ``type`` of each axis as the file spells them (``'angle'``/``'angle'``
        for a custom axis, ``'time'``/``'time'`` for the ``t`` axis; a type may be None), so that an output keeps
        them; None for formats that do not name their axes.
    """

    axes: str
    scale: tuple[float, ...]
    units: tuple[str | None, ...]
    channel_names: list[str] | None
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)
    #: physical position of the first pixel per axis (OME-Zarr ``translation``); None = the origin
    translate: tuple[float, ...] | None = None
    #: NGFF axis name per axis, as in the file (None = the format names no axes)
    axis_names: tuple[str, ...] | None = None
    #: NGFF axis type per axis, as in the file (None = the format names no axes)
    axis_types: tuple[str | None, ...] | None = None


def open_zstack(path: str | os.PathLike, *, channel: int | str | None = None) -> da.Array:
    """Open a z-stack lazily as a dask array with axes ``(..., Z, Y, X)``.

    Parameters
    ----------
    path : str or PathLike
        OME-Zarr / zarr store, TIFF file, folder of per-plane TIFFs, BBBC006 folder or file
        (see :data:`ACCEPTED_FORMATS`).
    channel : int or str, optional
        keep only this channel (index along the channel axis, or its name such as ``'w1'``); the channel
        axis is dropped. None keeps all channels.

    Returns
    -------
    dask.array.Array
        lazy array in the file's dtype; see :func:`open_zstack_with_metadata` for axes and scale.

    Raises
    ------
    FileNotFoundError
        if ``path`` does not exist (:class:`~napari_linblur.errors.MissingFileError`, also a ``ValueError``).
    ValueError
        unknown format (the message lists the accepted ones), corrupt or truncated file, inconsistent plane
        shapes, a folder of TIFFs whose names form several series, a BBBC006 folder without one complete
        well/site field, unknown channel.

    Warns
    -----
    UserWarning
        a BBBC006 folder's fields that lack planes the other fields have, or whose files differ in shape or dtype
        from the plate's, are left out of the stack (listed in ``meta.extra``), so that the others can be read.

    Examples
    --------
    >>> from napari_linblur.io.readers import open_zstack
    >>> open_zstack("/no/such/stack.tif")
    Traceback (most recent call last):
    ...
    napari_linblur.errors.MissingFileError: /no/such/stack.tif: no such file or folder
    """
    return open_zstack_with_metadata(path, channel=channel)[0]


def synthetic_dataset_attrs(path: str | os.PathLike) -> dict | None:
    """The ``linblur`` attributes of a ``linblur synth`` dataset's root group (one NGFF image per ``field_NNN``
    group, :mod:`napari_linblur.synth.dataset`), or None when ``path`` is not such a dataset.

    Examples
    --------
    >>> synthetic_dataset_attrs("/no/such/data.zarr") is None
    True
    """
    from napari_linblur.io.omezarr import root_attributes

    attrs = root_attributes(Path(os.path.abspath(os.fspath(path)))).get("linblur")
    return attrs if isinstance(attrs, dict) and attrs.get("kind") == "synthetic-through-focus" else None


def open_zstacks(path: str | os.PathLike, *, channel: int | str | None = None) -> list[da.Array]:
    """Open every z-stack of ``path``: one per field of a ``linblur synth`` dataset (its ``field_NNN`` groups, in
    order), else the one :func:`open_zstack` reads (a ``(..., Z, Y, X)`` array that may hold several stacks).

    Parameters
    ----------
    path : str or PathLike
        A ``linblur synth`` dataset or anything :func:`open_zstack` reads.
    channel : int or str, optional
        As for :func:`open_zstack`.

    Returns
    -------
    list of dask.array.Array
    """
    if synthetic_dataset_attrs(path) is not None:
        fields = sorted(f for f in Path(os.path.abspath(os.fspath(path))).glob("field_*") if f.is_dir())
        return [open_zstack(f, channel=channel) for f in fields]
    return [open_zstack(path, channel=channel)]


def open_zstack_with_metadata(
    path: str | os.PathLike, channel: int | str | None = None
) -> tuple[da.Array, ZStackMeta]:
    """Like :func:`open_zstack`, and also return a :class:`ZStackMeta` (axes, scale, units, channels).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib, tifffile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "stack.tif"
    >>> tifffile.imwrite(p, np.zeros((4, 32, 48), "uint16"), imagej=True, metadata={"axes": "ZYX"})
    >>> arr, meta = open_zstack_with_metadata(p)
    >>> arr.shape, meta.axes, arr.dtype
    ((4, 32, 48), 'zyx', dtype('uint16'))
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file or folder path (str or os.PathLike), got {type(path).__name__}")
    if not str(os.fspath(path)).strip():  # "" would be the current folder ("." is how to ask for it)
        raise ValueError("path is empty: give the file or folder of the image")
    # absolute, so that the lazy graph reads the same file from a dask worker started in another folder
    p = Path(os.path.abspath(os.fspath(path)))
    if not p.exists():
        raise MissingFileError(f"{os.fspath(path)}: no such file or folder")
    if p.is_file() and p.name in ZARR_METADATA:
        p = p.parent
    if p.is_dir():
        if is_zarr_store(p):
            arr, meta = _open_zarr(p)
        else:
            records = _bb.scan_bbbc006(p)
            if records:
                return _checked_image(*_open_bbbc006_folder(p, records, channel))
            # a broken symbolic link counts, so that its plane is named in an error rather than left out unseen
            tiffs = [q for q in p.iterdir() if (q.is_file() or (q.is_symlink() and not q.is_dir()))
                     and _bb.is_tiff_name(q.name)]
            if tiffs:
                arr, meta = _open_tiff_folder(p, tiffs)
            else:
                raise ValueError(_unknown(p, "a folder with neither zarr metadata nor TIFF files"))
    else:
        with open(p, "rb") as fh:
            magic = fh.read(4)
        if p.suffix.lower() in (".tif", ".tiff") or magic in _TIFF_MAGIC:
            if magic not in _TIFF_MAGIC:
                raise tiff_error(p, ValueError(f"bad TIFF header {magic!r}"))
            if _bb.is_bbbc006_name(p.name):
                arr, meta = _open_bbbc006_file(p)
            else:
                arr, meta = _open_tiff(p)
        else:
            raise ValueError(_unknown(p, f"unrecognised file type {p.suffix or '(no suffix)'!r}"))
    return _checked_image(*_select_channel(arr, meta, channel))


def _checked_image(arr: da.Array, meta: ZStackMeta) -> tuple[da.Array, ZStackMeta]:
    """An image every reader (the API's, the command line's, napari's) can show and process: no empty axis and
    real intensities, refused at open with the file's name (napari's reader returned layers of strings, complex
    values or no pixels, which failed later in napari's own code)."""
    if 0 in arr.shape:
        raise ValueError(f"{meta.source}: the image is empty (shape {tuple(arr.shape)}, axes {meta.axes!r}): it holds "
                         "no pixels")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{meta.source}: holds {arr.dtype} values, not intensities; an image must hold integers or "
                         "floats (uint8, uint16, float32 …)")
    return arr, meta


# --------------------------------------------------------------------------------------------- helpers


def _unknown(p: Path, why: str) -> str:
    return f"{p}: unknown format ({why}); accepted formats: " + "; ".join(ACCEPTED_FORMATS)



#: time units of OME-NGFF that :func:`_norm_unit` recognizes (with their plurals and any capitalization)
_TIME_UNITS = frozenset({"second", "millisecond", "microsecond", "nanosecond", "minute", "hour", "day"})


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _norm_unit(u: Any) -> str | None:
    """A unit as files spell it -> the OME-NGFF name (``'µm'``, ``'Micron'``, ``'microns'``, ``'Micrometers'`` ->
    ``'micrometer'``); a unit it does not know is returned as given."""
    if u is None:
        return None
    u = str(u).strip()
    if not u:
        return None
    known = _UM_PER_UNIT.keys() | _TIME_UNITS
    # exact first ('Å', 'ms'); then, for names (not one- or two-letter symbols, where case is meaning: Mm, mm, Ms),
    # ignoring case: 'Micron', 'Micrometer', 'NANOMETER'
    for cand in (u, u.lower()) if len(u) > 2 else (u,):
        if cand in _UNIT_ALIASES:
            return _UNIT_ALIASES[cand]
        if cand in known:
            return cand
    low = u.lower()
    if len(low) > 3 and low.endswith("s"):  # a plural: 'microns', 'micrometers', 'seconds'
        sing = low[:-1]
        if sing in _UNIT_ALIASES or sing in known:
            return _UNIT_ALIASES.get(sing, sing)
    return u


def length_in_um(value: float, unit: str | None) -> float | None:
    """``value`` measured in ``unit`` as micrometres, or None when ``unit`` is absent or not a length.

    Parameters
    ----------
    value : float
        A length, e.g. a pixel size from :attr:`ZStackMeta.scale`.
    unit : str or None
        An OME-NGFF length unit (``'nanometer'``, ``'micrometer'``, ``'millimeter'``, ... as
        :attr:`ZStackMeta.units` spells them) or a common abbreviation (``'nm'``, ``'µm'``, ``'mm'``).

    Returns
    -------
    float or None

    Examples
    --------
    >>> length_in_um(650, "nanometer"), length_in_um(0.65, "µm"), length_in_um(1.0, "pixel")
    (0.65, 0.65, None)
    """
    factor = _UM_PER_UNIT.get(_norm_unit(unit))
    return None if factor is None else float(value) * factor


def _canonicalize(arr: da.Array, meta: ZStackMeta) -> tuple[da.Array, ZStackMeta]:
    """Reorder axes to (unknown..., t, p, c, z, y, x) and insert a length-1 Z axis if missing."""
    axes = meta.axes
    if len(axes) != arr.ndim:
        raise ValueError(f"{meta.source}: axes {axes!r} do not match the array's {arr.ndim} dimensions")
    if "y" not in axes or "x" not in axes:
        raise ValueError(f"{meta.source}: the image has no Y and X axes (axes {axes!r})")
    order = [i for i, a in enumerate(axes) if a not in _CANON]
    order += [axes.index(a) for a in _CANON if a in axes]
    if order != list(range(arr.ndim)):
        arr = arr.transpose(order)
    scale = tuple(meta.scale[i] for i in order)
    units = tuple(meta.units[i] for i in order)
    translate = None if meta.translate is None else tuple(meta.translate[i] for i in order)
    names = None if meta.axis_names is None else tuple(meta.axis_names[i] for i in order)
    types = None if meta.axis_types is None else tuple(meta.axis_types[i] for i in order)
    axes = "".join(axes[i] for i in order)
    extra = meta.extra
    if "z" not in axes:
        arr = arr[..., None, :, :]
        axes = axes[:-2] + "z" + axes[-2:]
        scale = scale[:-2] + (1.0,) + scale[-2:]
        units = units[:-2] + (None,) + units[-2:]
        translate = None if translate is None else translate[:-2] + (0.0,) + translate[-2:]
        names = None if names is None else names[:-2] + ("z",) + names[-2:]
        types = None if types is None else types[:-2] + ("space",) + types[-2:]
        extra = {**extra, "z_added": True}  # the file has no Z axis (napari's reader leaves it out again)
    channels = meta.channel_names
    n_channels = arr.shape[axes.index("c")] if "c" in axes else 1
    if channels is not None and len(channels) != n_channels:
        channels = None  # names that do not match the channel axis one to one name nothing reliably
    return arr, replace(meta, axes=axes, scale=scale, units=units, translate=translate, extra=extra,
                        channel_names=channels, axis_names=names, axis_types=types)


def channel_index(channel: int | str, names: list[str] | None, n: int, source: Any) -> int:
    """Index of ``channel`` among ``n`` channels named ``names``: an int is an index (a negative one counts from
    the end), a str a name, case-insensitive, or a BBBC006 channel number (``'1'`` is ``w1``). An int that is
    also the number of another BBBC006-style channel (``1`` would be ``w2``) is refused as ambiguous. The one
    channel rule of every reader and trainer; ``source`` names the data in errors.

    Examples
    --------
    >>> channel_index("W2", ["w1", "w2"], 2, "data.zarr"), channel_index("1", ["w1", "w2"], 2, "data.zarr")
    (1, 0)
    """
    lowered = [str(c).lower() for c in (names or [])]
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not -n <= int(channel) < n:
            raise ValueError(f"channel={channel!r}: {source} has {n} channels"
                             + (f" {list(names)}" if names else "") + f" (indices 0..{n - 1})")
        idx = int(channel) % n
        numbered = f"w{int(channel)}"
        if numbered in lowered and lowered[idx] != numbered:
            raise ValueError(f"channel={channel!r} is ambiguous: channels are {list(names)}; index {idx} is "
                             f"{names[idx]!r}, while {names[lowered.index(numbered)]!r} is numbered {channel}: "
                             "pass the channel's name instead")
        return idx
    if isinstance(channel, str):
        for name in (channel.lower(), f"w{channel}".lower()):
            if name in lowered:
                return lowered.index(name)
        raise ValueError(f"channel={channel!r}: no such channel in {source}; channels are "
                         f"{list(names) if names else list(range(n))} (a name or an index)")
    raise TypeError(f"channel must be an int index, a channel name or None, got {type(channel).__name__}")


def _select_channel(
    arr: da.Array, meta: ZStackMeta, channel: int | str | None
) -> tuple[da.Array, ZStackMeta]:
    if channel is None:
        return arr, meta
    names = meta.channel_names
    if "c" not in meta.axes:
        single = names[0] if names and len(names) == 1 else None
        # by name, or for BBBC006 by its digit ("1" is w1), as a folder accepts it
        by_name = isinstance(channel, str) and single is not None and single.lower() in (
            channel.lower(), f"w{channel}".lower())
        if (not isinstance(channel, bool) and channel in (0, -1)) or channel == single or by_name:
            return arr, meta
        raise ValueError(
            f"channel={channel!r}: {meta.source} has no channel axis"
            + (f" (its only channel is {single!r})" if single else "")
            + "; give channel 0 (--channel 0) for its one channel"
        )
    ax = meta.axes.index("c")
    idx = channel_index(channel, meta.channel_names, arr.shape[ax], meta.source)
    arr = arr[(slice(None),) * ax + (idx,)]
    keep = [i for i in range(len(meta.axes)) if i != ax]
    meta = replace(
        meta,
        axes="".join(meta.axes[i] for i in keep),
        scale=tuple(meta.scale[i] for i in keep),
        units=tuple(meta.units[i] for i in keep),
        channel_names=[names[idx]] if names else None,
        extra={**meta.extra, "channel_index": idx},  # which channel, also when the file names none
        translate=None if meta.translate is None else tuple(meta.translate[i] for i in keep),
        axis_names=None if meta.axis_names is None else tuple(meta.axis_names[i] for i in keep),
        axis_types=None if meta.axis_types is None else tuple(meta.axis_types[i] for i in keep),
    )
    return arr, meta


def _guess_axes(ndim: int) -> str:
    base = {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}
    if ndim < 2:
        raise ValueError(f"need at least 2 dimensions (Y, X), got {ndim}")
    return base.get(ndim, "?" * (ndim - 5) + "tczyx")


# ------------------------------------------------------------------------------------------------- zarr


def _open_zarr(p: Path) -> tuple[da.Array, ZStackMeta]:
    import zarr

    v2 = [m for m in (".zgroup", ".zarray") if (p / m).is_file()]
    if v2 and (p / "zarr.json").is_file():
        import warnings

        # zarr reads the v3 metadata; a v2 store whose folder also got a zarr.json (or the reverse) would be read as
        # whatever that file says — its chunks may not exist in that layout, and read as zeros
        warnings.warn(f"{p}: holds both zarr v3 metadata (zarr.json), which is read, and zarr v2 metadata "
                      f"({', '.join(v2)}), which is ignored; if the image reads wrong (e.g. all zeros), remove the "
                      "metadata of the format the store is not written in", UserWarning, stacklevel=3)

    try:
        node = zarr.open(str(p), mode="r")
    except Exception as exc:
        raise ValueError(f"{p}: cannot open as zarr ({type(exc).__name__}: {exc})") from exc
    if hasattr(node, "shape"):
        return _plain_zarr(p, "", {"format": "zarr"})
    attrs = node.attrs.asdict()
    ome = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    if "multiscales" in ome:
        return _open_ngff(p, attrs, ome)
    if "bioformats2raw.layout" in ome and (p / "0").is_dir():
        return _open_bioformats2raw(p)
    if "plate" in ome:
        return _open_hcs_plate(p, attrs, ome)
    if "well" in ome:
        return _open_hcs_well(p, attrs, ome)
    synth = synthetic_dataset_attrs(p)
    if synth is not None:
        return _open_synthetic_root(p, synth)
    arrays = sorted(name for name, _ in node.arrays())
    if len(arrays) == 1:
        return _plain_zarr(p, arrays[0], {"format": "zarr", "attrs": attrs})
    if not arrays:
        groups = sorted(name for name, _ in node.groups())
        if groups:  # a collection, such as a `linblur synth` dataset (one OME-Zarr image per field)
            shown = ", ".join(groups[:4]) + (", ..." if len(groups) > 4 else "")
            raise ValueError(f"{p}: a zarr group of {len(groups)} groups ({shown}), not one image; open one of "
                             f"them, e.g. '{p / groups[0]}'")
    raise ValueError(
        _unknown(p, f"a zarr group without NGFF 'multiscales' holding {len(arrays)} arrays, expected 1")
    )


def _ome_attrs(p: Path) -> tuple[dict, dict]:
    """The attributes of the zarr group ``p`` and its OME part (under ``"ome"`` in NGFF 0.5, top level in 0.4)."""
    import zarr

    try:
        attrs = zarr.open_group(str(p), mode="r").attrs.asdict()
    except Exception as exc:
        raise ValueError(f"{p}: cannot open as a zarr group ({type(exc).__name__}: {exc})") from exc
    return attrs, (attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs)


def _well_images(well: Path, ome: dict) -> list[str]:
    """The paths of a well's images (its fields), in the order its ``well.images`` metadata lists them."""
    images = (ome.get("well") or {}).get("images") if isinstance(ome.get("well"), dict) else None
    if not isinstance(images, list) or not all(isinstance(i, dict) and isinstance(i.get("path"), str)
                                               for i in images):
        raise ValueError(f"{well}: malformed OME-Zarr HCS well metadata; expected well.images as a list of "
                         "{'path': '0'} entries")
    return [i["path"] for i in images]


def _stack_positions(root: Path, images: list[tuple[str, Path]], what: str,
                     extra: dict) -> tuple[da.Array, ZStackMeta]:
    """The NGFF images ``images`` (label, path) stacked lazily along a new leading P axis (each image keeps its
    chunks: nothing is read). Scale, units and channel names are the first image's; ``extra['fields']`` are the
    labels. Images of another shape, dtype or axes than the first are a ValueError naming them."""
    if not images:
        raise ValueError(f"{root}: {what} without images")
    arrays: list[da.Array] = []
    first: ZStackMeta | None = None
    for label, path in images:
        if not path.is_dir():
            raise ValueError(f"{root}: {what} lists image {label!r}, but {path} does not exist")
        try:
            arr, meta = _open_zarr(path)
        except ValueError as err:
            raise ValueError(f"{root}: image {label!r} of this {what} cannot be opened: {err}") from err
        if first is None:
            first, ref = meta, arr
        elif (arr.shape, arr.dtype, meta.axes) != (ref.shape, ref.dtype, first.axes):
            raise ValueError(
                f"{root}: image {label!r} is {tuple(arr.shape)} {arr.dtype} with axes {meta.axes!r}, but "
                f"{images[0][0]!r} is {tuple(ref.shape)} {ref.dtype} with axes {first.axes!r}; every image of a "
                f"{what} must share shape, dtype and axes to open as one (P, ...) stack; open the images one by "
                f"one instead (e.g. '{path}')")
        arrays.append(arr)
    assert first is not None
    meta = replace(
        first, axes="p" + first.axes, scale=(1.0, *first.scale), units=(None, *first.units), source=root,
        translate=None if first.translate is None else (0.0, *first.translate),
        axis_names=None if first.axis_names is None else ("p", *first.axis_names),
        axis_types=None if first.axis_types is None else (None, *first.axis_types),
        extra={**{k: first.extra[k] for k in ("ngff_version", "level", "levels") if k in first.extra}, **extra,
               "fields": [label for label, _ in images]},
    )
    return _canonicalize(da.stack(arrays), meta)


def _open_hcs_plate(p: Path, attrs: dict, ome: dict) -> tuple[da.Array, ZStackMeta]:
    """An OME-Zarr HCS plate: every field of every well (plate order, then the well's order of images) along P,
    labelled ``'A/1/0'`` (row/column/field path)."""
    plate = ome.get("plate")
    wells = plate.get("wells") if isinstance(plate, dict) else None
    if not isinstance(wells, list) or not all(isinstance(w, dict) and isinstance(w.get("path"), str)
                                              for w in wells):
        raise ValueError(f"{p}: malformed OME-Zarr HCS plate metadata; expected plate.wells as a list of "
                         "{'path': 'A/1', ...} entries")
    images: list[tuple[str, Path]] = []
    for w in wells:
        well = p / w["path"]
        if not well.is_dir():
            raise ValueError(f"{p}: the plate lists well {w['path']!r}, but {well} does not exist")
        _, well_ome = _ome_attrs(well)
        images += [(f"{w['path']}/{i}", well / i) for i in _well_images(well, well_ome)]
    return _stack_positions(p, images, "HCS plate", {"format": "ome-zarr-hcs", "ngff": attrs,
                                                     "wells": [w["path"] for w in wells]})


def _open_hcs_well(p: Path, attrs: dict, ome: dict) -> tuple[da.Array, ZStackMeta]:
    """One well of an OME-Zarr HCS plate: its fields along P, labelled by their paths (``'0'``, ``'1'``)."""
    images = [(i, p / i) for i in _well_images(p, ome)]
    return _stack_positions(p, images, "HCS well", {"format": "ome-zarr-hcs", "ngff": attrs})


def _open_synthetic_root(p: Path, attrs: dict) -> tuple[da.Array, ZStackMeta]:
    """The root of a ``linblur synth`` dataset: its ``field_NNN`` images along P, as the napari reader shows it."""
    fields = sorted(f.name for f in p.glob("field_*") if f.is_dir())
    if not fields:
        raise ValueError(f"{p}: a linblur synth dataset without fields (no field_NNN groups)")
    return _stack_positions(p, [(f, p / f) for f in fields], "linblur synth dataset",
                            {"format": "linblur-synth", "ngff": {"linblur": dict(attrs)}})


#: the most memory (bytes) a zarr store's chunks holding one plane may take together before it is read plane by plane
#: (see :func:`_read_chunks`)
PLANE_SLAB_LIMIT = 256 * 2**20


def _read_chunks(safe: Any, axes: str) -> tuple[int, ...]:
    """Dask chunks for a zarr array: its own chunks, or — when the chunks that hold one plane take more than
    :data:`PLANE_SLAB_LIMIT` together (a store chunked across many planes, (100, 256, 256) as some 3-D writers make)
    — one plane in every axis but Y and X, so that every task reads its plane straight from the store. Split into
    planes by dask afterwards, such a store held the chunks of its whole depth in memory for every plane task: the
    whole stack (1.4 GB peak for a 100 x 2048² uint16 stack in a session-24 audit's scratch measurement). Reading
    plane by plane decompresses each chunk once per plane it holds (slower), so smaller slabs keep their chunks.

    Examples
    --------
    >>> import numpy as np
    >>> class Store:
    ...     shape, chunks, dtype = (100, 2048, 2048), (100, 256, 256), np.dtype("uint16")
    >>> _read_chunks(Store(), "zyx")
    (1, 256, 256)
    >>> Store.chunks = (4, 256, 256)
    >>> _read_chunks(Store(), "zyx")
    (4, 256, 256)
    """
    chunks = tuple(int(c) for c in safe.chunks)
    slab = np.dtype(safe.dtype).itemsize
    for c, n, a in zip(chunks, safe.shape, axes):
        slab *= int(n) if a in "yx" else c
    if slab <= PLANE_SLAB_LIMIT:
        return chunks
    return tuple(c if a in "yx" else 1 for c, a in zip(chunks, axes))


def _plain_zarr(p: Path, component: str, extra: dict) -> tuple[da.Array, ZStackMeta]:
    safe = SafeZarrArray(str(p), component)
    axes = _guess_axes(safe.ndim)
    arr = as_dask(safe, _read_chunks(safe, axes), name=f"zarr-{tokenize(str(p.resolve()), component, _mtime(p))}")
    meta = ZStackMeta(axes, (1.0,) * arr.ndim, (None,) * arr.ndim, None, p, extra)
    return _canonicalize(arr, meta)


def _open_bioformats2raw(p: Path) -> tuple[da.Array, ZStackMeta]:
    """A bioformats2raw export (one image per series, ``0/``, ``1/`` ...): its series along P when they are images
    of one shape and axes (positions of a multi-position acquisition), as a multi-series OME-TIFF is read; else
    series 0, with a warning naming the others."""
    series = sorted((q.name for q in p.iterdir() if q.is_dir() and q.name.isdigit()), key=int)
    arr, meta = _open_zarr(p / "0")
    others = [name for name in series if name != "0"]
    if not others:
        return arr, meta
    opened = []
    for name in others:
        try:
            opened.append(_open_zarr(p / name))
        except (ValueError, OSError):
            opened = None  # not an image (an OME/ folder is not a digit; a label group, a plate...) or unreadable
            break
    same = opened is not None and all(a.shape == arr.shape and a.dtype == arr.dtype and m.axes == meta.axes
                                      and m.scale == meta.scale and m.units == meta.units for a, m in opened)
    if not same or "p" in meta.axes:
        import warnings

        why = ("series 0 has positions of its own" if "p" in meta.axes else
               "the others are not images of its shape, axes and pixel size, or cannot be read")
        warnings.warn(f"{p}: a bioformats2raw export of {len(series)} series; reading series 0 {tuple(arr.shape)} "
                      f"only ({why}): open another one by its folder, e.g. '{p / others[0]}'", UserWarning,
                      stacklevel=3)
        return arr, meta
    stacked = da.stack([arr] + [a for a, _ in opened])
    extra = {**meta.extra, "format": "bioformats2raw", "series": len(series),
             "fields": [f"series {name}" for name in series]}
    meta = replace(
        meta, axes="p" + meta.axes, scale=(1.0, *meta.scale), units=(None, *meta.units), extra=extra,
        translate=None if meta.translate is None else (0.0, *meta.translate),
        axis_names=None if meta.axis_names is None else ("p", *meta.axis_names),
        axis_types=None if meta.axis_types is None else (None, *meta.axis_types),
    )
    return _canonicalize(stacked, meta)


def _open_ngff(p: Path, attrs: dict, ome: dict) -> tuple[da.Array, ZStackMeta]:
    """An NGFF image; malformed metadata is a ValueError naming the store and what is wrong."""
    import json

    try:
        return _open_ngff_checked(p, attrs, ome)
    except json.JSONDecodeError as err:
        raise ValueError(f"{p}: an array's metadata (zarr.json / .zarray) is not valid JSON ({err}); the store is "
                         "damaged") from err
    except (KeyError, IndexError, TypeError, AttributeError) as err:
        raise ValueError(f"{p}: malformed OME-Zarr (NGFF) metadata ({type(err).__name__}: {err}); expected "
                         "multiscales[0] with datasets[].path and one scale per axis") from err


def _open_ngff_checked(p: Path, attrs: dict, ome: dict) -> tuple[da.Array, ZStackMeta]:
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise ValueError(f"{p}: OME-Zarr (NGFF) metadata without a multiscales entry")
    ms = multiscales[0]
    version = str(ome.get("version", ms.get("version", "")))
    datasets = ms.get("datasets") or []
    if not datasets:
        raise ValueError(f"{p}: NGFF multiscales without datasets")
    level = datasets[0]
    safe = SafeZarrArray(str(p), level["path"])
    arr = as_dask(safe, name=f"ngff-{tokenize(str(p.resolve()), level['path'], _mtime(p))}")
    axes_md = ms.get("axes")
    names: list[str] | None = None
    types: list[str | None] | None = None
    if axes_md is None:
        axes = _guess_axes(arr.ndim)
        units: tuple[str | None, ...] = (None,) * arr.ndim
    else:
        names = [str(a["name"]) if isinstance(a, dict) else str(a) for a in axes_md]
        types = [a.get("type") if isinstance(a, dict) else None for a in axes_md]
        types = [None if t is None else str(t) for t in types]
        letters: list[str] = []
        for n, t in zip(names, types):
            n = n.lower()
            if n in _CANON and len(n) == 1:
                letter = n
            elif t == "channel":
                letter = "c"
            elif t == "time":
                letter = "t"
            else:
                letter = "?"
            if letter in letters and letter in "zyx":
                raise ValueError(f"{p}: OME-Zarr (NGFF) metadata name the axis {letter!r} twice "
                                 f"({names})")
            letters.append("?" if letter in letters and letter != "?" else letter)  # a second time axis: custom
        axes = "".join(letters)
        units = tuple(_norm_unit(a.get("unit")) if isinstance(a, dict) else None for a in axes_md)
    if len(axes) != arr.ndim:
        raise ValueError(f"{p}: OME-Zarr (NGFF) metadata names {len(axes)} axes for an array of {arr.ndim} "
                         "dimensions")
    if _read_chunks(safe, axes) != tuple(safe.chunks):  # large chunks across planes: read plane by plane
        arr = as_dask(safe, _read_chunks(safe, axes),
                      name=f"ngff-{tokenize(str(p.resolve()), level['path'], _mtime(p))}")
    # NGFF: the dataset's transformations (scale, then translation), then the multiscale's, in order
    scale, shift = np.ones(arr.ndim), np.zeros(arr.ndim)
    for tr_list in (level.get("coordinateTransformations", []), ms.get("coordinateTransformations", [])):
        for tr in tr_list or []:
            kind = tr.get("type")
            if kind in ("scale", "translation") and kind in tr:
                try:
                    values = np.asarray(tr[kind], dtype=float)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{p}: OME-Zarr (NGFF) {kind} {tr[kind]!r} is not a list of numbers") from err
                if values.shape != (arr.ndim,):
                    raise ValueError(f"{p}: OME-Zarr (NGFF) {kind} {tr[kind]} does not have one value per axis "
                                     f"({arr.ndim})")
                if not np.isfinite(values).all() or (kind == "scale" and not (values > 0).all()):
                    what = "positive and finite" if kind == "scale" else "finite"
                    raise ValueError(f"{p}: OME-Zarr (NGFF) {kind} {tr[kind]} — every value must be {what} "
                                     "(damaged or hand-edited metadata)")
                if kind == "scale":
                    scale, shift = scale * values, shift * values
                else:
                    shift = shift + values
    channels = (ome.get("omero") or attrs.get("omero") or {}).get("channels")
    names_c = [str(c.get("label", i)) for i, c in enumerate(channels)] if channels else None
    if names_c is not None and ("c" not in axes or len(names_c) != arr.shape[axes.index("c")]):
        names_c = names_c if "c" in axes and len(names_c) == arr.shape[axes.index("c")] else None
    # this package's notes: the batch commands' (``linblur``) over the napari writer's (``napari_linblur``, which
    # holds the positions in the order it saved them; its ``linblur`` copy says only what the values are)
    own = {**_as_dict(attrs.get("napari_linblur")), **_as_dict(attrs.get("linblur"))}
    if names_c is None and "c" not in axes and isinstance(own, dict) and isinstance(own.get("channel"), str):
        names_c = [own["channel"]]  # the single channel this image was made from (our batch and napari writers)
    extra = {
        "format": "ome-zarr",
        "ngff_version": version,
        "ngff": attrs,
        "level": level["path"],
        "levels": [d["path"] for d in datasets],
    }
    fields = own.get("fields") if isinstance(own, dict) else None
    if isinstance(fields, list) and all(isinstance(f, str) for f in fields) and \
            len(fields) == (arr.shape[axes.index("p")] if "p" in axes else 1):
        extra["fields"] = fields  # the positions (wells and sites) of the stacks this output was computed from
    planes = own.get("planes") if isinstance(own, dict) else None
    if isinstance(planes, list) and all(isinstance(z, int) and not isinstance(z, bool) for z in planes) and \
            len(planes) == (arr.shape[axes.index("z")] if "z" in axes else 1):
        extra["planes"] = planes  # the BBBC006 plane numbers along Z of the stacks this output was computed from
    meta = ZStackMeta(axes, tuple(float(s) for s in scale), units, names_c, p, extra,
                      translate=tuple(float(t) for t in shift) if np.any(shift) else None,
                      axis_names=None if names is None else tuple(names),
                      axis_types=None if types is None else tuple(types))
    return _canonicalize(arr, meta)


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:  # pragma: no cover
        return 0


# ------------------------------------------------------------------------------------------------- TIFF


def _check_tiff_complete(tf: Any, path: Path) -> None:
    """Raise if any strip/tile of the first series lies beyond the end of the file (truncation)."""
    size = path.stat().st_size
    series = tf.series[0]
    ij = tf.imagej_metadata if tf.is_imagej else None
    expected = int((ij or {}).get("images", 0) or 0)
    found = int(np.prod(series.shape[: len(series.shape) - len(series.keyframe.shape)] or (1,)))
    if expected > found:  # a cut file: tifffile stops at the last whole page and reports fewer planes
        raise ValueError(f"{path}: truncated TIFF, its ImageJ header announces {expected} images but only "
                         f"{found} can be read")
    off = getattr(series, "dataoffset", None)
    if off is not None:
        if off + series.nbytes > size:
            raise ValueError(f"{path}: truncated TIFF, image data end beyond file size {size} bytes")
        return
    for i, page in enumerate(series.pages):
        if page is None:
            continue
        offsets = getattr(page, "dataoffsets", ())
        counts = getattr(page, "databytecounts", ())
        if any(o + c > size for o, c in zip(offsets, counts)):
            raise ValueError(
                f"{path}: truncated TIFF, page {i} data end beyond the file size ({size} bytes)"
            )


def _is_rgb(series, raw_axes: str) -> bool:
    """True for a TIFF series whose sample axis holds the three samples of an RGB photometric interpretation."""
    import tifffile

    i = raw_axes.upper().find("S")
    photometric = getattr(series.keyframe, "photometric", None)
    return i >= 0 and series.shape[i] == 3 and photometric == tifffile.PHOTOMETRIC.RGB


def _tiff_axes(raw: str) -> str:
    out = []
    for a in raw.upper():
        if a in "TCZYX":
            letter = a.lower()
        elif a == "S":
            letter = "c"
        elif a in "IQ":
            letter = "z"
        else:
            letter = "?"
        out.append("?" if letter in out and letter != "?" else letter)
    return "".join(out)


def _ome_first_image(xml: str) -> tuple[dict[str, tuple[float, str | None]], list[str | None]]:
    """Calibration and channel names of the first ``<Image>`` of an OME-XML document (tifffile's series 0; the
    other images of a multi-position file repeat them).

    Returns
    -------
    calibration : dict
        axis letter (``x``, ``y``, ``z``, ``t``) -> (step, NGFF unit), from ``PhysicalSize{X,Y,Z}`` (default unit
        µm) and ``TimeIncrement`` (default unit s).
    names : list of str or None
        the ``Name`` of each ``<Channel>`` of that image in order, None where a channel has none.
    """
    import xml.etree.ElementTree as ET

    pixels = ET.fromstring(xml).find("{*}Image/{*}Pixels")
    if pixels is None:
        return {}, []
    calibration = {}
    for ax, attr, default_unit in (("x", "PhysicalSizeX", "µm"), ("y", "PhysicalSizeY", "µm"),
                                   ("z", "PhysicalSizeZ", "µm"), ("t", "TimeIncrement", "s")):
        value = pixels.get(attr)
        if value is not None:
            calibration[ax] = (float(value), _norm_unit(pixels.get(f"{attr}Unit", default_unit)))
    return calibration, [c.get("Name") for c in pixels.findall("{*}Channel")]


def _tiff_scale(tf: Any, axes: str) -> tuple[tuple[float, ...], tuple[str | None, ...], list[str] | None]:
    """Scale, units and channel names of ``tf``'s first series (axes ``axes``, letters of :func:`_tiff_axes`) from
    its OME-XML, ImageJ or TIFF resolution metadata; best effort (unreadable metadata leaves the defaults)."""
    scale = [1.0] * len(axes)
    units: list[str | None] = [None] * len(axes)
    names: list[str] | None = None
    page = tf.pages[0]

    def setax(letter: str, value: float, unit: str | None) -> None:
        if letter in axes and value and np.isfinite(value) and value > 0:
            scale[axes.index(letter)] = float(value)
            units[axes.index(letter)] = unit

    try:
        if tf.is_ome and tf.ome_metadata:
            calibration, found = _ome_first_image(tf.ome_metadata)
            for letter, (value, unit) in calibration.items():
                setax(letter, value, unit)
            n_channels = tf.series[0].shape[axes.index("c")] if "c" in axes else 1
            if any(found) and len(found) == n_channels:  # one name per channel; an unnamed one by its index
                names = [name or str(i) for i, name in enumerate(found)]
        elif tf.is_imagej:
            ij = tf.imagej_metadata or {}
            unit = _norm_unit(ij.get("unit")) if ij.get("unit") not in (None, "pixel") else None
            for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
                t = page.tags.get(tag)
                if t is not None and unit is not None:
                    num, den = t.value
                    if num:
                        setax(letter, den / num, unit)
            if "spacing" in ij and unit is not None:
                setax("z", float(ij["spacing"]), unit)
            if ij.get("finterval"):  # the frame interval, in ImageJ's time unit (seconds unless 'tunit' says)
                setax("t", float(ij["finterval"]), _norm_unit(ij.get("tunit") or "sec"))
            if ij.get("Labels") and "c" in axes and len(ij["Labels"]) == tf.series[0].shape[axes.index("c")]:
                names = [str(n) for n in ij["Labels"]]
        else:
            # a plain TIFF: only pixels per centimetre are taken as the sample's pixel size (as microscope software
            # writes it). Dots per inch (the TIFF default unit) are a screen or print setting — 96 dpi would be a
            # 264.6 µm pixel — so they, and resolutions without a unit, leave the image uncalibrated.
            resunit = page.tags.get("ResolutionUnit")
            if resunit is not None and int(resunit.value) == 3:
                for letter, tag in (("x", "XResolution"), ("y", "YResolution")):
                    t = page.tags.get(tag)
                    if t is not None:
                        num, den = t.value
                        if num and den and num / den != 1.0:  # 1 px per unit: no calibration
                            setax(letter, 10000.0 * den / num, "micrometer")
    except Exception:  # metadata is best effort, the pixels are what matter
        pass
    return tuple(scale), tuple(units), names


def _open_tiff(p: Path) -> tuple[da.Array, ZStackMeta]:
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            shape = tuple(series.shape)
            dtype = series.dtype
            raw_axes = series.axes
            _check_tiff_complete(tf, p)
            key_shape = tuple(series.keyframe.shape)
            n_pages = len(series.pages)
            contiguous = getattr(series, "dataoffset", None) is not None
            others = [(tuple(x.shape), np.dtype(x.dtype), x.axes) for x in tf.series[1:]]
            scale, units, names = _tiff_scale(tf, _tiff_axes(raw_axes))
            if names is None and _is_rgb(series, raw_axes):
                names = ["red", "green", "blue"]  # an RGB file's samples, named as what they are
            extra = {"format": "tiff", "tiff_axes": raw_axes, "imagej": tf.is_imagej, "ome": tf.is_ome}
            # the series' own names (an OME-TIFF's <Image Name>: the positions of a multi-position file)
            series_names = [str(getattr(x, "name", "") or "") for x in tf.series]
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise tiff_error(p, exc) from exc
    except Exception as exc:
        raise tiff_error(p, exc) from exc
    page_ndim = len(key_shape)
    lead = shape[: len(shape) - page_ndim]
    memmap = False
    if shape[len(shape) - page_ndim :] != key_shape or int(np.prod(lead)) != n_pages:
        if contiguous and shape[len(shape) - page_ndim :] == key_shape:
            memmap = True  # e.g. an ImageJ file over 4 GB: one page, every plane in one contiguous block
        else:
            page_ndim = len(shape)  # unusual layout: read the series as one chunk
    planes = TiffPlanes(p, 0, shape, dtype, page_ndim, memmap=memmap)
    arr = as_dask(planes, name=f"tiff-{tokenize(str(p.resolve()), _mtime(p))}")
    axes = _tiff_axes(raw_axes)
    if others and all(o == (shape, np.dtype(dtype), raw_axes) for o in others) and "p" not in axes:
        # several series of one shape (an OME-TIFF with one series per position): positions along P
        stacks = [arr] + [as_dask(TiffPlanes(p, i, shape, dtype, page_ndim, memmap=memmap),
                                  name=f"tiff-{i}-{tokenize(str(p.resolve()), _mtime(p))}")
                          for i in range(1, len(others) + 1)]
        arr = da.stack(stacks)
        axes, scale, units = "p" + axes, (1.0, *scale), (None, *units)
        extra["series"] = len(stacks)
        if all(series_names) and len(set(series_names)) == len(stacks):  # named, one name each: the positions
            extra["fields"] = series_names
    elif others:
        import warnings

        warnings.warn(f"{p}: reading its first series {shape} only; the file holds {len(others)} more of other "
                      f"shapes {sorted({o[0] for o in others})} (e.g. thumbnails)", stacklevel=3)
    meta = ZStackMeta(axes, scale, units, names, p, extra)
    return _canonicalize(arr, meta)


def _tiff_header(p: Path) -> tuple[tuple[int, ...], np.dtype, str, Any]:
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(p) as tf:
            s = tf.series[0]
            _check_tiff_complete(tf, p)
            return tuple(s.shape), np.dtype(s.dtype), s.axes, _tiff_scale(tf, _tiff_axes(s.axes))
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise tiff_error(p, exc) from exc
    except Exception as exc:
        raise tiff_error(p, exc) from exc


def _name_tokens(name: str) -> list[str]:
    """A file name without its suffix, split into text and numbers: odd positions are the numbers
    (``'A01_s1_z15.tif'`` -> ``['A', '01', '_s', '1', '_z', '15', '']``)."""
    return re.split(r"(\d+)", Path(name).stem)


def _is_one_series(names: list[str]) -> bool:
    """True when ``names`` form one numbered series: the same text throughout (case aside), and one number that
    varies (``img_001``, ``img_002``, ...) or several that all change together (``z1_t5``, ``z2_t6``)."""
    tokens = [_name_tokens(n) for n in names]
    if len({tuple(t.lower() for t in ts[0::2]) for ts in tokens}) > 1:
        return False
    values = [[int(ts[i]) for ts in tokens] for i in range(1, len(tokens[0]), 2)]
    varying = [v for v in values if len(set(v)) > 1]
    if len(varying) <= 1:
        return True
    order = sorted(range(len(names)), key=varying[0].__getitem__)
    return all(len(set(v)) == len(v) and sorted(range(len(names)), key=v.__getitem__) == order for v in varying)


def _series_groups(names: list[str]) -> dict[str, list[str]]:
    """``names`` grouped as series: per text pattern, the number with the most values (the last on a tie) is the
    plane number, written ``*`` in the group's name (``'A01_s1_z*.tif'``)."""
    by_text: dict[tuple[str, ...], list[str]] = {}
    for n in names:
        by_text.setdefault(tuple(t.lower() for t in _name_tokens(n)[0::2]), []).append(n)
    groups: dict[str, list[str]] = {}
    for members in by_text.values():
        tokens = [_name_tokens(n) for n in members]
        counts = {i: len({int(ts[i]) for ts in tokens}) for i in range(1, len(tokens[0]), 2)}
        varying = [i for i, k in counts.items() if k > 1]
        axis = max(varying, key=lambda i: (counts[i], i)) if varying else -1
        for n, ts in zip(members, tokens):
            key = "".join("*" if i == axis else t for i, t in enumerate(ts)) + Path(n).suffix
            groups.setdefault(key, []).append(n)
    return groups


def _mixed_series_message(folder: Path, names: list[str], limit: int = 3) -> str:
    groups = _series_groups(names)
    shown = ", ".join(f"'{key}' ({len(m)} file{'s' if len(m) > 1 else ''}: {m[0]}"
                      + (f" ... {m[-1]})" if len(m) > 1 else ")")
                      for key, m in list(groups.items())[:limit])
    more = f" and {len(groups) - limit} more" if len(groups) > limit else ""
    return (f"{folder}: the TIFF file names look like {len(groups)} series, not one numbered series of planes "
            f"(they differ in more than one number, or in their text): {shown}{more}; read as one z-stack they "
            "would be mixed. Open one series at a time: put each series in its own folder and open that folder, or "
            "save each series as one multi-page TIFF")


def _open_tiff_folder(folder: Path, files: list[Path]) -> tuple[da.Array, ZStackMeta]:
    files = sorted(files, key=lambda q: natural_key(q.name))
    if not _is_one_series([q.name for q in files]):
        raise ValueError(_mixed_series_message(folder, [q.name for q in files]))
    shape0, dtype0, axes0, (scale0, units0, names0) = _tiff_header(files[0])
    for q in files[1:]:
        shape, dtype, _, _ = _tiff_header(q)
        if shape != shape0 or dtype != dtype0:
            raise ValueError(
                f"{folder}: inconsistent planes, {q.name} is {shape} {dtype} but {files[0].name} is "
                f"{shape0} {dtype0}"
            )
    plane_axes = _tiff_axes(axes0)
    if "z" in plane_axes:
        if len(files) == 1:
            return _open_tiff(files[0])
        raise ValueError(
            f"{folder}: the TIFF files are stacks (axes {axes0}), expected one 2-D plane per file"
        )
    token = tokenize([(str(q), _mtime(q)) for q in files], shape0, str(dtype0))
    arr = as_dask(TiffFileGrid(files, (len(files),), shape0, dtype0), name=f"tiffplanes-{token}",
                  inline_array=False)
    axes = "z" + plane_axes
    meta = ZStackMeta(
        axes, (1.0,) + scale0, (None,) + units0, names0, folder,
        {"format": "tiff-folder", "files": [q.name for q in files]},
    )
    return _canonicalize(arr, meta)


# ---------------------------------------------------------------------------------------------- BBBC006


def _bbbc_meta_axes(n_planes_step: float) -> tuple[float, float, float]:
    return (n_planes_step, _bb.BBBC006_XY_PIXEL_UM, _bb.BBBC006_XY_PIXEL_UM)


def _bbbc_translate(planes: list[int], ndim: int) -> tuple[float, ...] | None:
    """Where the first of ``planes`` lies along Z (plane number x 2 µm), so that a subset of a stack (planes 14-16)
    sits at its own depth, not at the stack's top; None (the origin) for a stack starting at plane 0."""
    z0 = float(planes[0]) * _bb.BBBC006_Z_SPACING_UM if planes else 0.0
    return None if z0 == 0 else (0.0,) * (ndim - 3) + (z0, 0.0, 0.0)


def _open_bbbc006_file(p: Path) -> tuple[da.Array, ZStackMeta]:
    rec = _bb.parse_bbbc006_name(p)
    arr, _ = _open_tiff(p)
    if arr.ndim != 3:
        raise ValueError(f"{p}: expected one 2-D BBBC006 image, got shape {arr.shape}")
    meta = ZStackMeta(
        "zyx",
        _bbbc_meta_axes(_bb.BBBC006_Z_SPACING_UM),
        ("micrometer", "micrometer", "micrometer"),
        [rec.channel],
        p,
        {
            "format": "bbbc006",
            "plate": rec.plate,
            "well": rec.well,
            "site": rec.site,
            "channel": rec.channel,
            "z": rec.z,
            "fields": [rec.field],
            "wells": [rec.well],
            "sites": [rec.site],
            "planes": [rec.z],
        },
        translate=_bbbc_translate([rec.z], 3),
    )
    return arr, meta


def _read_headers(
    layout: _bb.PlateLayout,
) -> dict[str, list[tuple[Path, tuple[tuple[int, ...], np.dtype, int] | None, str | None]]]:
    """Every file's TIFF header (:func:`tiff_plane_header`), per field: ``(path, (shape, dtype, pages), None)``,
    or ``(path, None, why)`` for a file that cannot be read."""
    found: dict[str, list] = {}
    for f in layout.fields:
        rows = found.setdefault(f, [])
        for c in layout.channels:
            for z in layout.planes:
                q = layout.index[(f, c, z)].path
                try:
                    rows.append((q, tiff_plane_header(q), None))
                except ValueError as exc:
                    rows.append((q, None, str(exc).replace(f"{q}: ", "", 1)))
    return found


def _shape_text(shape: tuple[int, ...], dtype: np.dtype, pages: int = 1) -> str:
    return f"{shape} {dtype}" + (f" ({pages} pages)" if pages != 1 else "")


def _check_bbbc006_files(
    folder: Path, layout: _bb.PlateLayout
) -> tuple[list[str], tuple[int, ...], np.dtype, dict[str, str]]:
    """Read the header of every file of ``layout``; keep the fields whose files all hold one plane of the shape and
    dtype that most files have.

    Returns
    -------
    fields : list of str
        the fields kept.
    shape, dtype
        of every plane.
    mismatched : dict
        ``field -> why`` for each field left out: its first file of another shape, dtype or page count (or one that
        cannot be read), e.g. ``'17_mcf-…tif is (10, 12) uint8, expected (520, 696) uint16'``.

    Raises
    ------
    ValueError
        when the files most of the plate has are not 2-D single planes, or when no field is left.
    """
    from collections import Counter

    found = _read_headers(layout)
    votes = Counter(head for rows in found.values() for _, head, _ in rows if head is not None)
    if not votes:
        q, _, why = found[layout.fields[0]][0]
        raise ValueError(f"{folder}: no BBBC006 file can be read, e.g. {q}: {why}")
    (shape, dtype, pages), _ = votes.most_common(1)[0]
    if len(shape) != 2 or pages != 1:
        example = next(q for rows in found.values() for q, head, _ in rows if head == (shape, dtype, pages))
        raise ValueError(f"{example}: expected BBBC006 files holding one 2-D plane each, got "
                         f"{_shape_text(shape, dtype, pages)} (as most files of {folder})")
    expected = _shape_text(shape, dtype)
    mismatched: dict[str, str] = {}
    for f, rows in found.items():
        for q, head, why in rows:
            if head is None:
                mismatched[f] = f"{q.name}: {why}"
            elif head != (shape, dtype, 1):
                mismatched[f] = f"{q.name} is {_shape_text(*head)}, expected {expected}"
            else:
                continue
            break
    fields = [f for f in layout.fields if f not in mismatched]
    if not fields:
        shown = "; ".join(f"{f}: {why}" for f, why in list(mismatched.items())[:10])
        raise ValueError(f"{folder}: no BBBC006 well/site field whose files all hold one {expected} plane; "
                         f"{shown}" + (f"; ... ({len(mismatched)} fields in all)" if len(mismatched) > 10 else ""))
    return fields, shape, dtype, mismatched


def _mismatched_message(folder: Path, mismatched: dict[str, str], n_fields: int, shape: tuple[int, ...],
                        dtype: np.dtype, limit: int = 20) -> str:
    items = "; ".join(f"{f} ({why})" for f, why in list(mismatched.items())[:limit])
    more = f"; ... ({len(mismatched)} in all)" if len(mismatched) > limit else ""
    return (f"{folder}: {len(mismatched)} of {n_fields} well/site fields left out, their files are not "
            f"{_shape_text(shape, dtype)} planes like the others: {items}{more}. The {n_fields - len(mismatched)} "
            "other fields are read (meta.extra['mismatched_fields'])")


def _open_bbbc006_folder(
    folder: Path, records: list[_bb.BBBCRecord], channel: int | str | None
) -> tuple[da.Array, ZStackMeta]:
    import warnings

    channels = _bb.channels_of(records)
    # the channel first: a hole in another channel must not cost a field its stack
    sel = channels if channel is None else [channels[channel_index(channel, channels, len(channels), folder)]]
    layout = _bb.organize(records, folder, channels=sel)
    message = _bb.dropped_message(folder, layout)
    if message:
        warnings.warn(message, UserWarning, stacklevel=3)
    others = _bb.other_tiffs(folder)
    if others:
        names = ", ".join(str(q.relative_to(folder)) for q in others[:10]) + (" ..." if len(others) > 10 else "")
        warnings.warn(f"{folder}: {len(others)} TIFF file(s) without a BBBC006 name (PLATE_WELL_sN_wC...tif) are "
                      f"not part of its stacks and are left out: {names}", UserWarning, stacklevel=3)
    fields, shape, dtype, mismatched = _check_bbbc006_files(folder, layout)
    if mismatched:
        warnings.warn(_mismatched_message(folder, mismatched, len(layout.fields), shape, dtype), UserWarning,
                      stacklevel=3)
    planes = layout.planes
    paths = [layout.index[(f, c, z)].path for f in fields for c in sel for z in planes]
    grid = (len(fields), len(sel), len(planes)) if channel is None else (len(fields), len(planes))
    token = tokenize([(str(q), _mtime(q)) for q in paths], shape, str(dtype))
    stack = as_dask(TiffFileGrid(paths, grid, shape, dtype), name=f"bbbc-{token}", inline_array=False)
    steps = np.diff(planes)
    z_step = float(steps[0]) if len(steps) and np.all(steps == steps[0]) else 1.0
    axes, scale, units = "pczyx", (1.0, 1.0), (None, None)
    if channel is not None:
        axes, scale, units = "pzyx", (1.0,), (None,)
    meta = ZStackMeta(
        axes,
        scale + _bbbc_meta_axes(_bb.BBBC006_Z_SPACING_UM * z_step),
        units + ("micrometer", "micrometer", "micrometer"),
        list(sel),
        folder,
        {
            "format": "bbbc006",
            "plate": records[0].plate,
            "fields": fields,
            "wells": [f.split("_s")[0] for f in fields],
            "sites": [int(f.split("_s")[1]) for f in fields],
            "planes": planes,
            "z_uniform": bool(len(steps) == 0 or np.all(steps == steps[0])),
            # the fields left out of the stack: missing planes (of the selected channels), or files of another shape
            # or dtype; and the planes too few fields hold
            "dropped_fields": layout.dropped_planes,
            "mismatched_fields": mismatched,
            "duplicate_fields": {f: list(d) for f, d in layout.duplicated.items()},
            "left_out_planes": list(layout.left_out_planes),
        },
        translate=_bbbc_translate(planes, len(axes)),
    )
    return stack, meta
