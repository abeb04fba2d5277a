"""Atomic, deterministic OME-Zarr (NGFF 0.5, zarr v3) writer with a multiscale pyramid.

The NGFF metadata is written with :mod:`zarr` directly (not ``ome-zarr-py``) so that every byte is under our
control: identical input gives identical files (no timestamps, fixed codec, fixed key order), which
``linblur synth`` relies on for bit-identical reruns.

Layout written at ``path``::

    path/zarr.json          group; attributes {"ome": {"version": "0.5", "multiscales": [...], "omero": ...},
                            **attrs}
    path/0/zarr.json        full resolution, dimension_names = axis names, zstd (level 3) chunks
    path/1/ ... path/L-1/   2x2 mean-downsampled in Y and X (integers rounded to nearest)

Examples
--------
>>> import numpy as np, tempfile, pathlib
>>> from napari_linblur.io.omezarr import write_ome_zarr
>>> out = write_ome_zarr(pathlib.Path(tempfile.mkdtemp()) / "img.zarr",
...                      np.ones((2, 3, 128, 128), "uint16"), axes="czyx",
...                      scale=(1.0, 2.0, 0.65, 0.65), channel_names=["w1", "w2"])
>>> sorted(p.name for p in out.iterdir())
['0', '1', 'zarr.json']
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from .atomic import WRITE_ERRNOS, replace, some_paths, write_error

__all__ = ["write_ome_zarr", "auto_pyramid_levels", "ngff_axes", "ngff_order"]

#: the files that make a folder a zarr store (v3 ``zarr.json``; v2 ``.zgroup``, ``.zarray``, ``.zattrs``)
ZARR_METADATA = ("zarr.json", ".zgroup", ".zarray", ".zattrs")
_AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
_MAX_AUTO_LEVELS = 4
_MIN_LEVEL_SIZE = 64


def auto_pyramid_levels(shape_yx: Sequence[int]) -> int:
    """Number of pyramid levels (full resolution included) chosen when ``pyramid_levels=None``.

    Halve Y and X while the halved min(Y, X) stays >= 64, with at most 4 levels in total.

    Examples
    --------
    >>> auto_pyramid_levels((520, 696)), auto_pyramid_levels((100, 100)), auto_pyramid_levels((4096, 4096))
    (4, 1, 4)
    """
    n, size = 1, min(int(s) for s in shape_yx)
    while n < _MAX_AUTO_LEVELS and size // 2 >= _MIN_LEVEL_SIZE:
        size //= 2
        n += 1
    return n


def ngff_axes(
    axes: str,
    units: str | Sequence[str | None] | Mapping[str, str | None] | None,
    names: Sequence[str] | None = None,
    types: Sequence[str | None] | None = None,
) -> list[dict]:
    """NGFF ``axes`` entries for an axes string such as ``'czyx'``.

    ``units`` is one unit for the space axes (``'micrometer'``), one per axis, a mapping axis -> unit, or None.
    ``names`` and ``types`` (one per axis; a None type = the letter's) replace the letters as names and the types
    the letters imply, e.g. for a custom axis ``'angle'`` of type ``'angle'`` read from an input.

    Examples
    --------
    >>> ngff_axes("zyx", "micrometer")[0]
    {'name': 'z', 'type': 'space', 'unit': 'micrometer'}
    >>> ngff_axes("ayx", ["degree", None, None], names=["angle", "y", "x"], types=["angle", None, None])[0]
    {'name': 'angle', 'type': 'angle', 'unit': 'degree'}
    """
    if units is None or isinstance(units, str):
        per_axis = [units if _AXIS_TYPES.get(a) == "space" else None for a in axes]
    elif isinstance(units, Mapping):
        per_axis = [units.get(a) for a in axes]
    else:
        per_axis = list(units)
        if len(per_axis) != len(axes):
            raise ValueError(f"units: need one per axis of {axes!r}, got {len(per_axis)}")
    out = []
    for i, (a, u) in enumerate(zip(axes, per_axis)):
        entry: dict[str, Any] = {"name": a if names is None else str(names[i])}
        kind = (types[i] if types is not None else None) or _AXIS_TYPES.get(a)
        if kind is not None:
            entry["type"] = str(kind)
        if u is not None and kind != "channel":
            entry["unit"] = str(u)
        out.append(entry)
    return out


def _check_axis_names(
    axes: str, names: Sequence[str] | None, types: Sequence[str | None] | None
) -> tuple[list[str] | None, list[str | None] | None]:
    """``axis_names``/``axis_types`` of :func:`write_ome_zarr` checked against ``axes``: one per axis, names unique
    and non-empty, and no name or type that a reader would take for another axis (``z``, ``y``, ``x`` are named so,
    ``t`` is of type time, ``c`` of type channel)."""
    if names is not None:
        if isinstance(names, str) or len(names) != len(axes):
            raise ValueError(f"axis_names: need one name per axis of {axes!r} (e.g. ['angle', 'z', 'y', 'x']), got "
                             f"{names!r}")
        names = [str(n) for n in names]
        if any(not n for n in names) or len({n.lower() for n in names}) != len(names):
            raise ValueError(f"axis_names: need unique, non-empty names, got {names}")
        for a, n in zip(axes, names):
            known = n.lower() if len(n) == 1 and n.lower() in "tpczyx" else None
            if (known is not None and known != a) or (a in "zyx" and n.lower() != a):
                raise ValueError(f"axis_names: axis {a!r} cannot be named {n!r} (readers find the z, y and x axes by "
                                 f"those names, and every one-letter name t, p, c, z, y, x means that axis); axes "
                                 f"{axes!r}, names {names}")
    if types is not None:
        if isinstance(types, str) or len(types) != len(axes):
            raise ValueError(f"axis_types: need one type (or None) per axis of {axes!r}, got {types!r}")
        types = [None if t is None else str(t) for t in types]
        for a, t in zip(axes, types):
            if t is not None and a in _AXIS_TYPES and t != _AXIS_TYPES[a]:
                raise ValueError(f"axis_types: axis {a!r} is of type {_AXIS_TYPES[a]!r}, not {t!r}")
    return names, types


def _check_axes(axes: str, ndim: int) -> str:
    axes = axes.lower()
    if len(axes) != ndim:
        raise ValueError(f"axes={axes!r} has {len(axes)} letters but the data has {ndim} dimensions")
    if len(set(axes)) != len(axes) or not axes.endswith("yx"):
        raise ValueError(f"axes={axes!r}: letters must be unique and end with 'yx' (e.g. 'czyx')")
    if not all(a.isalpha() for a in axes):
        raise ValueError(f"axes={axes!r}: one letter per axis, e.g. 'tczyx'")
    return axes


def ngff_order(axes: str) -> list[int]:
    """The order of ``axes`` that OME-NGFF 0.4/0.5 requires: the time axis first, then the channel and custom axes
    (``p``, the letters :func:`writable_axes` gives ``?`` axes), then the space axes, each group in its given order.

    Examples
    --------
    >>> ngff_order("atzyx"), ngff_order("zcyx"), ngff_order("pczyx")
    ([1, 0, 2, 3, 4], [1, 0, 2, 3], [0, 1, 2, 3, 4])
    """
    time = [i for i, a in enumerate(axes) if _AXIS_TYPES.get(a) == "time"]
    space = [i for i, a in enumerate(axes) if _AXIS_TYPES.get(a) == "space"]
    return time + [i for i in range(len(axes)) if i not in time and i not in space] + space


def writable_axes(axes: str) -> str:
    """``axes`` as read (``?`` for an axis of unknown meaning, e.g. a custom NGFF axis) with every ``?`` given a
    letter of its own, so that the result of a computation on such an image can be written.

    Examples
    --------
    >>> writable_axes("??zyx")
    'abzyx'
    """
    free = iter(a for a in "abdefghijklmnoqrsuvw" if a not in axes)
    return "".join(next(free) if a == "?" else a for a in axes)


def _zarr_root(path: Path) -> Path:
    """The outermost zarr store around ``path`` (``in.ome.zarr`` for its level array ``in.ome.zarr/0``): writing
    anywhere inside it would change the input."""
    root = path
    for parent in path.parents:
        if not any((parent / m).is_file() for m in ZARR_METADATA):
            break
        root = parent
    return root


def check_parent_folders(path: str | os.PathLike, label: str | None = None) -> None:
    """Refuse an output ``path`` that cannot be created because a file stands where one of its folders should be
    (``notes.txt/out.zarr``, ``in.zarr/zarr.json/out.zarr``), before any work: a ``ValueError`` naming the output
    and the file in the way, instead of ``mkdir``'s bare ``[Errno 17] File exists`` half-way through a run.

    Parameters
    ----------
    path : str or PathLike
        The output file or folder (it need not exist; its missing folders are created by the writer).
    label : str, optional
        How the caller names the output, e.g. ``"OUT"`` or ``"--out"``; prefixed to the message.

    Raises
    ------
    ValueError
        A file is in the way of one of ``path``'s folders.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"; _ = f.write_text("x")
    >>> check_parent_folders(f.parent / "out.zarr")  # fine: its folder exists
    >>> try:
    ...     check_parent_folders(f / "out.zarr", "OUT")
    ... except ValueError as err:
    ...     print(f"{f} is a file" in str(err))
    True
    """
    target = Path(os.fspath(path)).absolute()
    for parent in target.parents:
        if parent.exists():  # the nearest existing one: a folder, or the file in the way
            if not parent.is_dir():
                prefix = f"{label} " if label else ""
                raise ValueError(f"{prefix}{path}: cannot create its folder, {parent} is a file (not a folder); "
                                 "choose an output path in a folder")
            return


def _check_attrs(attrs: Any) -> None:
    """``attrs`` go into the root ``zarr.json``: a mapping of strict JSON values (no NaN/inf, which would be written
    as the non-JSON token ``NaN``), checked before anything is written."""
    import json

    if attrs is None:
        return
    if not isinstance(attrs, Mapping):
        raise ValueError(f"attrs: need a mapping of JSON values (e.g. {{'recipe': {{...}}}}), got "
                         f"{type(attrs).__name__}")
    if "ome" in attrs:
        raise ValueError("attrs: the key 'ome' is reserved for the NGFF metadata")
    try:
        json.dumps(dict(attrs), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"attrs: need strict JSON values (str, int, finite float, bool, None, and lists and dicts "
                         f"with str keys of them) for zarr.json; {err}") from err


def path_within(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or inside it, by name or, for paths that exist, by identity: on a
    case-insensitive file system (macOS, Windows) ``In.zarr`` is ``in.zarr``, though the names differ.

    Examples
    --------
    >>> from pathlib import Path
    >>> path_within(Path("/data/in.zarr/0"), Path("/data/in.zarr")), path_within(Path("/data"), Path("/data/x"))
    (True, False)
    """
    for p in (inner, *inner.parents):
        if p == outer:
            return True
        try:
            if p.exists() and outer.exists() and os.path.samefile(p, outer):
                return True
        except OSError:
            continue
    return False


def _conflicts(target: Path, sources: Sequence[str | os.PathLike]) -> Path | None:
    for s in sources:
        sp = _zarr_root(Path(os.fspath(s)).resolve())
        if path_within(target, sp) or path_within(sp, target):
            return sp
    return None


def _downsample2(arr: da.Array) -> da.Array:
    """2x2 mean in the last two axes (odd edge row/column dropped); integers rounded, dtype kept. For floats the
    mean ignores NaN (a NaN tile of a patch map stays NaN, without spreading into its neighbours' pixels)."""
    h, w = arr.shape[-2] // 2 * 2, arr.shape[-1] // 2 * 2
    arr = arr[..., :h, :w]
    dtype = arr.dtype

    def block_mean(b: np.ndarray) -> np.ndarray:
        s = b.shape
        r = b.reshape(s[:-2] + (s[-2] // 2, 2, s[-1] // 2, 2))
        if np.issubdtype(dtype, np.floating) and np.isnan(r).any():
            with np.errstate(invalid="ignore"):  # an all-NaN 2x2 block stays NaN
                n = (~np.isnan(r)).sum(axis=(-3, -1))
                m = np.where(n > 0, np.nansum(r, axis=(-3, -1), dtype=np.float64) / np.maximum(n, 1), np.nan)
        else:
            m = r.mean(axis=(-3, -1), dtype=np.float64)
        if dtype == np.bool_:
            return m >= 0.5
        if np.issubdtype(dtype, np.integer):
            if np.dtype(dtype).itemsize == 8:
                # exact in integers: float64 holds 53 bits (a 2x2 mean of 2^64 - 1 rounded to 2^64 and wrapped to 0)
                total = (r >> 2).sum(axis=(-3, -1), dtype=dtype)  # the quarters, and what they leave: 0..12
                rem = (r & 3).sum(axis=(-3, -1), dtype=dtype)
                frac = rem & 3  # of a quarter
                up = (frac > 2) | ((frac == 2) & ((total + (rem >> 2)) & 1 == 1))  # half to even, as np.rint
                return (total + (rem >> 2) + up).astype(dtype)
            info = np.iinfo(dtype)
            return np.clip(np.rint(m), info.min, info.max).astype(dtype)
        return m.astype(dtype)

    cy = max(2, (arr.chunks[-2][0] // 2) * 2)
    cx = max(2, (arr.chunks[-1][0] // 2) * 2)
    arr = arr.rechunk(arr.chunks[:-2] + (cy, cx))
    new_chunks = arr.chunks[:-2] + (tuple(c // 2 for c in arr.chunks[-2]), tuple(c // 2 for c in arr.chunks[-1]))
    return arr.map_blocks(block_mean, chunks=new_chunks, dtype=dtype)


def _parallelism(src: da.Array) -> tuple[Any, Any, int]:
    """The active scheduler for ``src``, its dask.distributed client (None for dask's local schedulers) and how many
    tasks it runs at once: the client's worker threads, 1 for the synchronous scheduler, else ``num_workers``
    (default one per core)."""
    import dask
    from dask.base import get_scheduler
    from dask.system import CPU_COUNT

    scheduler = get_scheduler(collections=[src])
    client = getattr(scheduler, "__self__", None)
    if client is not None and hasattr(client, "nthreads") and hasattr(client, "compute"):
        return scheduler, client, _client_threads(client)
    if scheduler is dask.local.get_sync:
        return scheduler, None, 1
    return scheduler, None, max(1, int(dask.config.get("num_workers", None) or CPU_COUNT))


def _client_threads(client: Any) -> int:
    """Worker threads of a ``dask.distributed`` client's cluster, all workers together (at least 1)."""
    try:
        return max(1, sum(int(n) for n in client.nthreads().values()))
    except Exception:  # noqa: BLE001 - a scheduler that cannot say: one block at a time still finishes
        return 1


def _compute_sync(block: da.Array) -> np.ndarray:
    """One plane-block, computed in the calling thread (a thread of :func:`_store_batched`'s pool)."""
    import dask

    return dask.compute(block, scheduler="sync")[0]


def _store_batched(
    src: da.Array,
    target: Any,
    report: Callable[[], None],
    max_parallel: int | None = None,
) -> None:
    """Write ``src`` into the zarr array ``target`` plane-block by plane-block, as many blocks computed at once as
    the active scheduler has threads (a distributed client's workers, or the local threads): bounded memory.

    Each block is written here, in the calling thread, as soon as it is computed, and the next one is submitted in
    its place, so no group of blocks waits for its slowest. When a block fails (or ``report`` raises: a cancel) the
    blocks still queued are cancelled and no write is still running, so the caller's cleanup of the temporary
    folder is final (a worker thread writing after the cleanup would leave a partial folder behind).
    """
    import time
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
    from concurrent.futures import wait as wait_local

    import dask
    from dask.threaded import get as get_threaded

    lead_blocks = src.numblocks[:-2]
    lead_bounds = [np.cumsum((0,) + c) for c in src.chunks[:-2]]
    regions = []
    for ix in np.ndindex(*lead_blocks) if lead_blocks else [()]:
        regions.append(
            tuple(slice(int(b[i]), int(b[i + 1])) for b, i in zip(lead_bounds, ix))
            + (slice(None), slice(None))
        )
    scheduler, client, width = _parallelism(src)
    if max_parallel is not None and client is None:
        width = max(1, min(width, int(max_parallel)))
    # nothing to overlap: the active scheduler computes each block in turn. Not so on a cluster with one worker
    # thread or none yet: workers that join later are used (the width is checked again every second below)
    if (width == 1 and client is None) or len(regions) == 1:
        for r in regions:
            target[r] = dask.compute(src[r])[0]
            report()
        return
    if client is None and scheduler is not get_threaded:
        # another local scheduler (processes, a custom get) parallelizes within one call: a group at a time
        for k in range(0, len(regions), width):
            part = regions[k : k + width]
            for r, block in zip(part, dask.compute(*[src[r] for r in part])):
                target[r] = block
                report()
        return

    if client is not None:
        from distributed import wait as wait_remote

        def submit(block: da.Array) -> Any:
            return client.compute(block)

        def first_done(futures: list) -> set:
            return wait_remote(futures, return_when="FIRST_COMPLETED").done

        def cancel(futures: list) -> None:
            if futures:
                client.cancel(futures)
    else:  # the threaded scheduler: each block computed whole in one thread of a pool of its size
        pool = ThreadPoolExecutor(max_workers=width, thread_name_prefix="linblur-store")

        def submit(block: da.Array) -> Any:
            return pool.submit(_compute_sync, block)

        def first_done(futures: list) -> set:
            return wait_local(futures, return_when=FIRST_COMPLETED).done

        def cancel(futures: list) -> None:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)

    todo = iter(regions)
    in_flight: dict[Any, tuple] = {}
    checked = time.monotonic()

    def fill() -> None:
        nonlocal width, checked
        if client is not None and time.monotonic() - checked > 1.0:  # workers may join or leave a cluster
            width, checked = _client_threads(client), time.monotonic()
        while len(in_flight) < width:
            r = next(todo, None)
            if r is None:
                return
            in_flight[submit(src[r])] = r

    try:
        fill()
        while in_flight:
            done = [(in_flight.pop(f), f) for f in first_done(list(in_flight))]
            blocks = [(r, f.result()) for r, f in done]
            done.clear()
            fill()  # before writing: the workers never wait for this thread
            for r, block in blocks:
                target[r] = block
                report()
            blocks.clear()
    finally:
        cancel(list(in_flight))


def write_ome_zarr(
    path: str | os.PathLike,
    data: np.ndarray | da.Array,
    *,
    axes: str | None = None,
    scale: Sequence[float] | Mapping[str, float] | None = None,
    units: str | Sequence[str | None] | Mapping[str, str | None] | None = "micrometer",
    channel_names: Sequence[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
    pyramid_levels: int | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
    source_paths: Sequence[str | os.PathLike] = (),
    progress: Callable[[int, int], None] | None = None,
    name: str = "image",
    translate: Sequence[float] | None = None,
    axis_names: Sequence[str] | None = None,
    axis_types: Sequence[str | None] | None = None,
    max_parallel: int | None = None,
) -> Path:
    """Write an image or stack ``(..., Z, Y, X)`` as OME-Zarr NGFF 0.5 (zarr v3), atomically.

    Parameters
    ----------
    path : str or PathLike
        destination folder (conventionally ``*.ome.zarr`` or ``*.zarr``).
    data : numpy.ndarray or dask.array.Array
        2-D to 5-D. dask input is computed and written chunk by chunk with bounded memory.
    axes : str, optional
        one letter per dimension ending in ``'yx'``, e.g. ``'zyx'``, ``'czyx'``, ``'tczyx'``; default by
        ndim: ``yx``, ``zyx``, ``czyx``, ``tczyx``. Stored in the order NGFF requires (:func:`ngff_order`: ``t``
        first, space axes last): data given in another order (``'atzyx'``, ``'zcyx'``) are transposed, with
        their scale, units, translate and chunks.
    scale : sequence of float or mapping, optional
        physical pixel size per axis of the full-resolution level (µm for space axes); default 1.0.
    units : str, sequence or mapping, optional
        unit of the space axes (default ``'micrometer'``), or one per axis, or axis -> unit.
    channel_names : sequence of str, optional
        labels of the ``c`` axis, written as NGFF ``omero.channels[].label``.
    attrs : mapping, optional
        extra JSON attributes stored next to ``"ome"`` in the root ``zarr.json`` (e.g. a dataset recipe); strict
        JSON values only (finite numbers).
    pyramid_levels : int, optional
        number of resolution levels including full resolution. None = :func:`auto_pyramid_levels`.
    chunks : sequence of int, optional
        chunk shape of level 0; default one chunk per plane, at most 1024x1024 in Y, X.
    overwrite : bool
        replace an existing ``path`` (atomically: the old one is moved aside, then deleted).
    source_paths : sequence of path
        inputs of the computation; writing onto or inside (or around) any of them is refused.
    progress : callable, optional
        called as ``progress(done, total)`` after each written block of planes, over all levels.
    max_parallel : int, optional
        At most this many blocks computed at once by a local scheduler (default: as many as it has threads). 1 for
        blocks that parallelize inside themselves — a network's plane runs on all of torch's threads, and one such
        plane per core would run cores² threads. A dask.distributed cluster keeps its own width.
    name : str
        the multiscale's ``name``.
    translate : sequence of float, optional
        physical position of the first pixel per axis (NGFF ``translation`` after ``scale``; napari's layer
        ``translate``); default none (the origin).
    axis_names : sequence of str, optional
        the NGFF name of each axis (also the arrays' ``dimension_names``), e.g. ``['angle', 'z', 'y', 'x']`` to
        keep an input's custom axis name (:attr:`~napari_linblur.io.readers.ZStackMeta.axis_names`); default the
        letters of ``axes``. ``z``, ``y``, ``x`` keep their letters as names.
    axis_types : sequence of str or None, optional
        the NGFF type of each axis (None = the one ``axes`` implies: time, channel, space, or none for other
        letters), e.g. ``['angle', None, None, None]``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        bad axes/scale/chunks, ``attrs`` that are not strict JSON (NaN included), ``path`` exists and
        ``overwrite=False``, a file in the way of ``path``'s folder, or ``path`` is one of ``source_paths``
        ('refusing to overwrite its own input'): :func:`check_output_path`.

    Notes
    -----
    The data go to a hidden sibling ``.{name}.tmp-XXXX`` that is renamed to ``path`` only when every level
    is written; on any error it is deleted and ``path`` is left as it was. Output bytes depend only on the
    input values and arguments.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from napari_linblur.io.readers import open_zstack
    >>> p = write_ome_zarr(pathlib.Path(tempfile.mkdtemp()) / "s.zarr", np.arange(2 * 64 * 64).reshape(2, 64, 64))
    >>> int(open_zstack(p)[1, 0, 0].compute())
    4096
    """
    target = Path(os.fspath(path)).resolve()
    if not isinstance(data, (np.ndarray, da.Array)):
        data = np.asarray(data)
    if not 2 <= data.ndim <= 5:
        raise ValueError(f"data: need 2 to 5 dimensions (..., Z, Y, X), got shape {data.shape}")
    if data.dtype.kind not in "biuf":
        raise TypeError(f"data: need a real (bool/int/float) dtype, got {data.dtype}")
    if any(not isinstance(n, (int, np.integer)) or n != n for n in data.shape):  # a dask array of unknown sizes
        raise ValueError(f"data: shape {data.shape} has unknown sizes (a dask array after boolean indexing?); "
                         "call .compute_chunk_sizes() on it first")
    if 0 in data.shape:
        raise ValueError(f"data: shape {data.shape} is empty; nothing to write")
    if axes is not None and not isinstance(axes, str):
        raise TypeError(f"axes must be a string of axis letters such as 'czyx', got {type(axes).__name__}")
    axes = _check_axes(axes or {2: "yx", 3: "zyx", 4: "czyx", 5: "tczyx"}[data.ndim], data.ndim)

    if scale is None:
        scale_t = [1.0] * data.ndim
    elif isinstance(scale, Mapping):
        scale_t = [float(scale.get(a, 1.0)) for a in axes]
    else:
        try:
            scale_t = [float(s) for s in scale]
        except (TypeError, ValueError) as err:
            raise ValueError(f"scale: need {data.ndim} numbers (axes {axes!r}), got {scale!r}") from err
        if len(scale_t) != data.ndim:
            raise ValueError(f"scale: need {data.ndim} values (axes {axes!r}), got {len(scale_t)}")
    if not all(np.isfinite(s) and s > 0 for s in scale_t):
        raise ValueError(f"scale: values must be positive and finite, got {scale_t}")
    translate_t = None
    if translate is not None:
        translate_t = [float(t) for t in translate]
        if len(translate_t) != data.ndim or not all(np.isfinite(translate_t)):
            raise ValueError(f"translate: need {data.ndim} finite values (axes {axes!r}), got {translate}")
        if not any(translate_t):
            translate_t = None
    if channel_names is not None:
        if isinstance(channel_names, str):  # "ab" would be split into channels 'a' and 'b'
            raise TypeError(f"channel_names must be a list of names, got the string {channel_names!r}")
        channel_names = [str(c) for c in channel_names]
        if "c" not in axes or len(channel_names) != data.shape[axes.index("c")]:
            raise ValueError(
                f"channel_names: need one name per channel along a 'c' axis; axes {axes!r}, shape {data.shape}"
            )
    _check_attrs(attrs)
    names_t, types_t = _check_axis_names(axes, axis_names, axis_types)

    if chunks is None:
        chunks_t = tuple([1] * (data.ndim - 2) + [min(data.shape[-2], 1024), min(data.shape[-1], 1024)])
    else:
        chunks_t = tuple(int(c) for c in chunks)
        if len(chunks_t) != data.ndim or any(c < 1 for c in chunks_t):
            raise ValueError(f"chunks: need {data.ndim} positive ints, got {chunks}")
    chunks_t = tuple(max(1, min(c, s)) for c, s in zip(chunks_t, data.shape))
    if units is not None and not isinstance(units, (str, Mapping)):
        units = list(units)
        if len(units) != data.ndim:
            raise ValueError(f"units: need one per axis of {axes!r}, got {len(units)}")
    order = ngff_order(axes)
    if order != list(range(data.ndim)):
        # NGFF wants time first and space last (an axis of unknown meaning is read before time, a channel may be
        # given after Z): store the axes in that order; every reader finds them by name
        data = data.transpose(order)
        axes = "".join(axes[i] for i in order)
        scale_t = [scale_t[i] for i in order]
        translate_t = None if translate_t is None else [translate_t[i] for i in order]
        chunks_t = tuple(chunks_t[i] for i in order)
        if isinstance(units, list):
            units = [units[i] for i in order]
        names_t = None if names_t is None else [names_t[i] for i in order]
        types_t = None if types_t is None else [types_t[i] for i in order]

    levels = auto_pyramid_levels(data.shape[-2:]) if pyramid_levels is None else int(pyramid_levels)
    if levels < 1:
        raise ValueError(f"pyramid_levels: need >= 1, got {pyramid_levels}")
    if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, (int, np.integer))
                                     or max_parallel < 1):
        raise ValueError(f"max_parallel: need an integer >= 1 (or None: the scheduler's threads), got {max_parallel!r}")
    levels = min(levels, 1 + int(np.log2(max(1, min(data.shape[-2:])))))

    check_output_path(path, overwrite=overwrite, source_paths=source_paths)  # the name as given: "" is no folder

    target.parent.mkdir(parents=True, exist_ok=True)
    warn_stale_partial_writes(target)
    tmp = make_temp_sibling(target)
    try:
        _write_tree(tmp, data, axes, scale_t, units, channel_names, attrs, levels, chunks_t, progress, name,
                    translate_t, names_t, types_t, max_parallel)
        move_into_place(tmp, target, overwrite)
    except BaseException as err:
        failed_write(tmp, target, err)
        raise
    return Path(os.fspath(path))


def failed_write(tmp: Path, target: Path, err: BaseException) -> None:
    """After a store write to ``target`` failed with ``err``: its temporary store ``tmp`` is deleted
    (:func:`remove_partial`), and a write error zarr raised without a file name (a full disk, a size limit, a
    read-only volume) is raised again naming ``target``; any other error is left to the caller to re-raise."""
    remove_partial(tmp)
    if getattr(err, "errno", None) in WRITE_ERRNOS:
        raise write_error(target, err) from err


def remove_partial(tmp: Path, tries: int = 10, pause: float = 0.1) -> None:
    """Delete a failed or interrupted write's temporary store. A chunk write already under way in another thread
    (zarr's I/O, a dask task) can recreate a folder just deleted, so it is deleted again until it stays gone
    (``tries`` times, ``pause`` s apart); what is still left is named by the next write to that output."""
    import time

    for i in range(tries):
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.lexists(tmp):
            return
        time.sleep(pause * (i + 1))


def warn_stale_partial_writes(target: str | os.PathLike) -> list[Path]:
    """Warn about hidden ``.{name}.tmp-*`` siblings of ``target`` that an earlier write left behind.

    A write that is killed (SIGKILL, out of memory, a cluster job's time limit) cannot remove its temporary
    folder, which may hold most of the output's bytes. They are never deleted here: another process may be
    writing the same output at this moment. The warning names them and says how to remove them.

    Returns
    -------
    list of Path
        the leftover folders found (empty when there are none).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> warn_stale_partial_writes(d / "out.zarr")
    []
    """
    target = Path(os.fspath(target))
    try:
        stale = sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.tmp-*") if p.is_dir())
        aside = sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.old-*") if p.is_dir())
    except OSError:
        return []

    if stale:
        warnings.warn(f"{target}: {len(stale)} earlier write(s) of this output left behind ({some_paths(stale)}), "
                      "from a process that was killed while writing (unfinished, or finished but not yet renamed "
                      "into place); they may hold many GB. Delete them (rm -r) unless another write of this output "
                      "is running now", UserWarning, stacklevel=3)
    if aside:
        warnings.warn(f"{target}: {len(aside)} earlier version(s) of this output moved aside by an --overwrite that "
                      f"was killed before it finished ({some_paths(aside)}): complete outputs; rename one back to "
                      f"{target.name} if {target.name} is missing, otherwise delete them (rm -r)", UserWarning,
                      stacklevel=3)
    return stale + aside


#: file extensions an OME-Zarr folder must not have: every other tool would take the folder for such a file
_FILE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".h5", ".czi", ".nd2", ".csv", ".json")


def check_output_name(path: str | os.PathLike) -> None:
    """An OME-Zarr output's name: not empty, not a single-file image format's (``out.tif`` would be a folder).

    Examples
    --------
    >>> check_output_name("maps.zarr")
    >>> check_output_name("maps.tif")
    Traceback (most recent call last):
    ...
    ValueError: maps.tif: the output is an OME-Zarr folder, not a .tif file; name it maps.zarr
    """
    text = os.fspath(path)
    if not str(text).strip():
        raise ValueError("the output path is empty: name the OME-Zarr folder to write, e.g. out.zarr")
    p = Path(text)
    if p.suffix.lower() in _FILE_SUFFIXES:
        raise ValueError(f"{text}: the output is an OME-Zarr folder, not a {p.suffix} file; name it "
                         f"{p.with_suffix('.zarr').name}")


def check_output_path(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    source_paths: Sequence[str | os.PathLike] = (),
) -> Path:
    """The checks :func:`write_ome_zarr` makes on its ``path`` before writing, for a caller that wants them before
    a long computation (``linblur`` batch commands run them before starting a cluster).

    Refused with a ``ValueError``: an empty name or a single-file format's (:func:`check_output_name`), a file in
    the way of the output's folder (:func:`check_parent_folders`), an output
    equal to, inside or containing one of ``source_paths`` ('refusing to overwrite its own input'), an existing
    output without ``overwrite``, and with it anything but an earlier zarr output (:func:`check_replaceable`).

    Returns
    -------
    Path
        ``path``, resolved.
    """
    check_output_name(path)
    target = Path(os.fspath(path)).resolve()
    check_parent_folders(path)
    bad = _conflicts(target, source_paths)
    if bad is not None:
        raise ValueError(f"{target}: refusing to overwrite its own input ({bad})")
    check_not_inside_store(target)
    check_replaceable(target)  # first: a file or a foreign folder is refused as such, --overwrite would not help
    if target.exists() and not overwrite:
        raise ValueError(f"{target}: already exists; pass overwrite=True (--overwrite on the command line) to "
                         "replace it")
    return target


def is_zarr_store(path: str | os.PathLike) -> bool:
    """A folder with zarr metadata (v3 ``zarr.json`` or v2 ``.zgroup``/``.zattrs``/``.zarray``)."""
    p = Path(path)
    return p.is_dir() and any((p / n).exists() for n in ZARR_METADATA)


#: the hidden temporary store a writer builds before renaming it into place (:func:`temp_sibling`)
_WRITING = re.compile(r"^\..+\.tmp-[0-9a-f]{12}$")


def temp_sibling(target: Path) -> Path:
    """The hidden temporary folder ``.NAME.tmp-XXXXXXXXXXXX`` next to ``target`` where a writer builds an output
    before :func:`move_into_place` renames it (every writer of the project names it so: the stale-write warning
    and :func:`check_not_inside_store` recognise it).

    Examples
    --------
    >>> bool(_WRITING.match(temp_sibling(Path("/data/out.zarr")).name))
    True
    """
    return target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"


def make_temp_sibling(target: Path) -> Path:
    """Create :func:`temp_sibling`'s folder: the first write in the output's folder, so a folder nothing can be
    created in (read-only, no permission) is a ``ValueError`` naming the output and its folder, not the hidden
    temporary name."""
    tmp = temp_sibling(target)
    try:
        tmp.mkdir()
    except OSError as err:
        raise ValueError(f"cannot write {target}: {err.strerror or err} (nothing can be created in "
                         f"{target.parent})") from err
    return tmp


#: the root attribute of a store whose every chunk was written (write_ome_zarr from 0.2.0; earlier stores skipped
#: all-zero chunks, as zarr does by default)
COMPLETE_MARKER = "linblur_every_chunk_written"
#: the root attribute every store napari-linblur writes carries (the synthetic datasets and the outputs of the
#: operations also describe themselves under ``"linblur"``): ``overwrite`` replaces only such a store
WRITER_MARKER = "napari_linblur"


def root_attributes(store: Path) -> dict:
    """The root attributes of a zarr store (v3 ``zarr.json`` or v2 ``.zattrs``); ``{}`` when there are none or
    they cannot be read."""
    import json

    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        f = Path(store) / name
        if not f.is_file():
            continue
        try:
            doc = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        attrs = doc.get(key) if key and isinstance(doc, dict) else doc
        if isinstance(attrs, dict):
            return attrs
    return {}


def written_by_linblur(store: Path) -> bool:
    """True for a zarr store whose root attributes say napari-linblur wrote it (``"napari_linblur"``, or
    ``"linblur"`` as the operations' outputs and the synthetic datasets also record)."""
    attrs = root_attributes(store)
    return WRITER_MARKER in attrs or "linblur" in attrs


def check_not_inside_store(target: Path) -> None:
    """Refuse an output inside an existing zarr store (``plate.zarr/0``, ``image.ome.zarr/new.zarr``): writing there
    would replace or add to another dataset's arrays. Every output is a store of its own."""
    root = _zarr_root(target)
    if root != target and not _WRITING.match(root.name):  # the fields of a dataset being written (its temp store)
        raise ValueError(f"{target}: refusing to write inside the zarr store {root} — an output is a store of its "
                         "own; choose a path outside it")


def check_replaceable(target: Path) -> None:
    """``overwrite`` replaces an earlier napari-linblur output only: never a file, a folder without zarr metadata
    (a folder of TIFFs), a zarr store another tool wrote, nor a part of a store."""
    check_not_inside_store(target)
    if not (target.exists() or target.is_symlink()):
        return
    if not is_zarr_store(target):
        raise ValueError(f"{target}: refusing to replace it — overwrite replaces an earlier zarr output only, and "
                         "this is a file or a folder without zarr metadata; choose another output path or remove "
                         "it yourself")
    if not written_by_linblur(target):
        raise ValueError(f"{target}: refusing to replace it — overwrite replaces an earlier napari-linblur output "
                         "only, and this zarr store was not written by napari-linblur (its root attributes do not "
                         "say so); choose another output path or remove it yourself")
    if target.is_dir() and not target.is_symlink() and not os.access(target, os.W_OK | os.X_OK):
        # replacing it means deleting it: another user's store would stay behind, hidden, taking its space
        raise PermissionError(errno.EACCES, f"{target}: cannot replace it — you may not delete this earlier output "
                              "(its folder is not writable by you); choose another output path")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl)
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # a file system without the exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename a fully written temporary folder ``tmp`` to ``target`` (the atomic step of every writer).

    An existing ``target`` is replaced only with ``overwrite``: on Linux the two are exchanged in one atomic step
    (``renameat2``), so a process killed at any moment leaves the old or the new output at ``target``, never
    neither; the old one is then deleted. Elsewhere the old one is moved aside to ``.NAME.old-*``, ``tmp`` renamed
    in and the old one deleted (restored if the rename fails); a kill between the two renames leaves the old output
    in that folder, which the next write names (:func:`warn_stale_partial_writes`).
    """
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{target}: appeared while writing; pass overwrite=True (--overwrite on the "
                                  "command line) to replace it")
        check_replaceable(target)
        if _exchange(tmp, target):  # target is the new output; tmp now holds the old one
            old = tmp
        else:
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
            replace(target, old)
            try:
                replace(tmp, target)
            except BaseException:
                os.replace(old, target)
                raise
        failed: list[str] = []
        if old.is_dir() and not old.is_symlink():
            def note(_func, p, exc):  # onexc gets the exception, onerror (Python 3.11) its exc_info triple
                failed.append(f"{p}: {exc[1] if isinstance(exc, tuple) else exc}")

            shutil.rmtree(old, **({"onexc": note} if sys.version_info >= (3, 12) else {"onerror": note}))
        else:
            try:
                old.unlink(missing_ok=True)
            except OSError as err:
                failed.append(str(err))
        if failed:  # the new output is in place; the old one takes space, under a hidden name: said, not silent
            warnings.warn(f"{target} was replaced, but its earlier version could not be deleted ({failed[0]}); it "
                          f"is at {old}: delete it yourself", UserWarning, stacklevel=3)
    else:
        replace(tmp, target)


def _write_tree(
    root_path: Path,
    data: np.ndarray | da.Array,
    axes: str,
    scale: list[float],
    units: Any,
    channel_names: list[str] | None,
    attrs: Mapping[str, Any] | None,
    levels: int,
    chunks: tuple[int, ...],
    progress: Callable[[int, int], None] | None,
    name: str,
    translate: list[float] | None = None,
    axis_names: list[str] | None = None,
    axis_types: list[str | None] | None = None,
    max_parallel: int | None = None,
) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    datasets = []
    for lvl in range(levels):
        f = 2.0**lvl
        s = [v * f if a in "yx" else v for a, v in zip(axes, scale)]
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": s}]
        if lvl or translate:
            t = [(f - 1.0) / 2.0 * v if a in "yx" else 0.0 for a, v in zip(axes, scale)]
            if translate:
                t = [a + b for a, b in zip(t, translate)]
            transforms.append({"type": "translation", "translation": t})
        datasets.append({"path": str(lvl), "coordinateTransformations": transforms})
    ome: dict[str, Any] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": name,
                "axes": ngff_axes(axes, units, axis_names, axis_types),
                "datasets": datasets,
                "type": "mean" if levels > 1 else "none",
                **({"metadata": {"method": "2x2 block mean over Y and X, NaN ignored (an all-NaN block stays "
                                           "NaN)", "integers": "rounded to nearest, half to even",
                                 "bool": "True where at least half of the block is"}} if levels > 1 else {}),
            }
        ],
    }
    if channel_names is not None:
        ome["omero"] = {
            "channels": [
                {"label": c, "active": True, "color": "FFFFFF", "coefficient": 1.0, "family": "linear",
                 "inverted": False}
                for c in channel_names
            ]
        }
    from napari_linblur import __version__

    root_attrs: dict[str, Any] = {"ome": ome, WRITER_MARKER: {"writer": "write_ome_zarr", "version": __version__}}
    for k, v in (attrs or {}).items():
        if str(k) == WRITER_MARKER:  # the caller's notes go beside the writer's own
            if not isinstance(v, Mapping):
                raise ValueError(f"attrs[{WRITER_MARKER!r}] must be a mapping (notes beside the writer's marker), "
                                 f"got {type(v).__name__}")
            root_attrs[WRITER_MARKER] = {**v, **root_attrs[WRITER_MARKER]}
        else:
            root_attrs[str(k)] = v
    root_attrs[COMPLETE_MARKER] = True  # every chunk is written (below): a missing one is damage

    group = zarr.create_group(store=str(root_path), zarr_format=3, attributes=root_attrs, overwrite=False)

    # total units of progress: plane-blocks over all levels
    def n_blocks(shape: tuple[int, ...]) -> int:
        return int(np.prod([-(-s // c) for s, c in zip(shape[:-2], chunks[:-2])])) if len(shape) > 2 else 1

    shapes = [tuple(data.shape)]
    for _ in range(1, levels):
        prev = shapes[-1]
        shapes.append(prev[:-2] + (prev[-2] // 2, prev[-1] // 2))
    total = sum(n_blocks(s) for s in shapes)
    done = 0

    def report() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    src: da.Array
    if isinstance(data, da.Array):
        src = data
    else:
        src = da.from_array(data, chunks=chunks, name=False, asarray=True)
    for lvl, shape in enumerate(shapes):
        lvl_chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
        arr = group.create_array(
            name=str(lvl),
            shape=shape,
            dtype=data.dtype,
            chunks=lvl_chunks,
            compressors=ZstdCodec(level=3, checksum=False),
            fill_value=0,
            dimension_names=list(axes) if axis_names is None else list(axis_names),
            overwrite=False,
            # every chunk is written, zeros too: a chunk missing from a store of ours is damage, not a zero plane
            config={"write_empty_chunks": True},
        )
        if lvl == 0:
            level_src = src.rechunk(lvl_chunks)
        else:
            prev = group[str(lvl - 1)]
            level_src = _downsample2(da.from_array(prev, chunks=prev.chunks, asarray=True, lock=False))
            level_src = level_src.rechunk(lvl_chunks)
        if lvl == 0:
            _store_batched(level_src, arr, report, max_parallel)
        else:
            # a 2x2 mean of what this process has just written: on its own threads, not one cluster round trip
            # per plane and level (a dask.distributed client stays the default for level 0 only)
            import dask

            with dask.config.set(scheduler="threads"):
                _store_batched(level_src, arr, report)
