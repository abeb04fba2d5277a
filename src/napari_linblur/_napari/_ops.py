"""Qt-free glue between napari layers and the public operations (napari-animation style: no Qt here).

* :func:`call_op` calls a public operation with the optional keywords it supports (``progress``,
  ``should_stop``, ``tile``, ``device``), so widgets keep working as operations gain options.
* :func:`current_indices` / :func:`current_plane` find the plane the viewer shows for a layer.
* :func:`pair_stacks` lines up the two inputs of a pair operation (two planes of one stack, or two layers).
* :func:`compute_planes` runs a per-plane function over a stack with per-plane progress and cancellation.
* :class:`UserModels` keeps the models trained in this session so every widget can offer them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_linblur.inference.tiling import Cancelled  # the one cancellation of every operation and widget


def call_op(func: Callable, *args, **kwargs):
    """Call ``func`` passing only the keyword arguments its signature accepts.

    Keywords whose value is None are dropped as well, so the operation's own default applies.

    Examples
    --------
    >>> def op(x, *, device="auto"):
    ...     return device
    >>> call_op(op, 1, device="cpu", progress=print)
    'cpu'
    """
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    use = {k: v for k, v in kwargs.items() if v is not None and (var_kw or k in params)}
    return func(*args, **use)


def accepts(func: Callable, name: str) -> bool:
    """Whether ``func`` takes a keyword ``name``."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- planes


def current_indices(viewer, layer) -> tuple[int, ...]:
    """Data indices of ``layer``'s non-YX axes at the viewer's current position (clipped to the layer)."""
    nlead = layer.ndim - 2
    if nlead <= 0:
        return ()
    try:
        pos = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    except Exception:  # noqa: BLE001 - fall back to the raw step of the trailing viewer axes
        pos = np.asarray(viewer.dims.current_step[-layer.ndim :], dtype=float)
    pos = pos[-layer.ndim :]
    shape = layer.data.shape if not layer.multiscale else layer.data[0].shape
    return tuple(int(np.clip(np.round(pos[i]), 0, shape[i] - 1)) for i in range(nlead))


def axis_names(viewer, layer) -> list[str]:
    """Short names of ``layer``'s axes: the letters it was read with (``t``, ``p``, ``z``, …), else the viewer's
    axis labels (``axis 0`` for napari's numeric defaults)."""
    axes = (layer.metadata or {}).get("linblur_axes")
    if isinstance(axes, str) and len(axes) == layer.ndim:
        return list(axes)
    labels = list(getattr(viewer.dims, "axis_labels", ()))
    offset = len(labels) - layer.ndim
    out = []
    for i in range(layer.ndim):
        label = str(labels[offset + i]) if 0 <= offset + i < len(labels) else str(i)
        out.append(f"axis {label}" if label.lstrip("-").isdigit() else label)
    return out


def layer_fields(layer) -> list[str] | None:
    """The fields (BBBC006 ``well_site`` such as ``'a02_s1'``, or a ``linblur synth`` dataset's ``field_NNN``) of
    ``layer``'s stacks as the reader recorded them (``metadata['linblur_fields']``): one per index of its P axis,
    or the single field of a layer without one (a BBBC006 file); None when unknown or not matching the layer.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> layer_fields(NS(metadata={"linblur_fields": ["a01_s1", "a01_s2"], "linblur_axes": "pzyx"}, ndim=4,
    ...                 multiscale=False, data=np.zeros((2, 3, 4, 4))))
    ['a01_s1', 'a01_s2']
    """
    md = getattr(layer, "metadata", None) or {}
    fields = md.get("linblur_fields")
    if not isinstance(fields, (list, tuple)) or not fields or not all(isinstance(f, str) for f in fields):
        return None
    axes = md.get("linblur_axes")
    axes = axes if isinstance(axes, str) and len(axes) == layer.ndim else ""
    if "p" in axes:
        return list(fields) if len(fields) == layer_shape(layer)[axes.index("p")] else None
    return list(fields) if len(fields) == 1 else None


def layer_planes(layer) -> list[int] | None:
    """The BBBC006 plane number of each Z index of ``layer`` (``metadata['linblur_planes']``, from the reader:
    a BBBC006 folder holding planes 14–16 has Z indices 0–2), or None when unknown or not one per plane.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> layer_planes(NS(metadata={"linblur_planes": [14, 15, 16]}, ndim=3, multiscale=False,
    ...                 data=np.zeros((3, 4, 4))))
    [14, 15, 16]
    """
    md = getattr(layer, "metadata", None) or {}
    planes = md.get("linblur_planes")
    if not isinstance(planes, (list, tuple)) or layer.ndim < 3:
        return None
    if not all(isinstance(z, (int, np.integer)) and not isinstance(z, bool) for z in planes):
        return None
    return [int(z) for z in planes] if len(planes) == n_planes(layer) else None


def position_text(viewer, layer, lead: Sequence[int]) -> str:
    """``lead`` (indices of the axes before Z) as text, e.g. ``"t=1"`` or ``"axis 0=1, axis 1=2"``; ``""`` for
    none.

    A position of a layer whose fields are known (:func:`layer_fields`) is named by its field, as the command
    line names stacks: ``"a02_s1 (p=1)"``; a layer that is one field (a BBBC006 file) is named by it.
    """
    names = axis_names(viewer, layer)
    fields = layer_fields(layer)
    parts = []
    for i, v in enumerate(lead):
        text = f"{names[i]}{' = ' if ' ' in names[i] else '='}{int(v)}"
        if names[i] == "p" and fields is not None and 0 <= int(v) < len(fields):
            text = f"{fields[int(v)]} ({text})"
        parts.append(text)
    if fields is not None and len(fields) == 1 and "p" not in names[: len(lead)]:
        parts.insert(0, fields[0])
    return ", ".join(parts)


def plane_text(layer, z: int) -> str:
    """Plane ``z`` of ``layer`` as text, with its BBBC006 plane number when the layer records them
    (:func:`layer_planes`): ``"z = 0 (BBBC006 plane 15)"``, else ``"z = 0"``."""
    planes = layer_planes(layer)
    own = f" (BBBC006 plane {planes[int(z)]})" if planes is not None and 0 <= int(z) < len(planes) else ""
    return f"z = {int(z)}{own}"


def carried_positions(layer, axes: str, shape: Sequence[int]) -> dict[str, list]:
    """The input ``layer``'s fields and BBBC006 plane numbers that still describe an output of ``axes`` and
    ``shape`` computed from it: ``{"fields": [...], "planes": [...]}`` (either left out when it does not apply,
    e.g. ``planes`` for a pair output that has one plane, or the input records none), with the keys the command
    line's batch outputs record under ``attrs["linblur"]`` (and the reader reads back).

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> ly = NS(metadata={"linblur_fields": ["a01_s1", "a01_s2"], "linblur_planes": [15, 16],
    ...                   "linblur_axes": "pzyx"}, ndim=4, multiscale=False, data=np.zeros((2, 2, 4, 4)))
    >>> carried_positions(ly, "pzyx", (2, 2, 4, 4))
    {'fields': ['a01_s1', 'a01_s2'], 'planes': [15, 16]}
    >>> carried_positions(ly, "pzyx", (2, 1, 4, 4))
    {'fields': ['a01_s1', 'a01_s2']}
    """
    return positions_for(layer_fields(layer), layer_planes(layer), axes, shape)


def positions_for(fields, planes, axes: str, shape: Sequence[int]) -> dict[str, list]:
    """``{"fields": fields, "planes": planes}`` for an image of ``axes`` and ``shape``, each kept only when it is
    one per index of the P axis (one field for an image without P) or one per Z plane, and of the right type.

    Examples
    --------
    >>> positions_for(["a01_s1"], [16], "zyx", (1, 8, 8))
    {'fields': ['a01_s1'], 'planes': [16]}
    >>> positions_for(["a01_s1"], [15, 16], "pzyx", (2, 2, 8, 8))
    {'planes': [15, 16]}
    """
    out: dict[str, list] = {}
    shape = tuple(int(s) for s in shape)
    if not isinstance(axes, str) or len(axes) != len(shape):
        return out
    if isinstance(fields, (list, tuple)) and fields and all(isinstance(f, str) for f in fields):
        if len(fields) == (shape[axes.index("p")] if "p" in axes else 1):
            out["fields"] = list(fields)
    if isinstance(planes, (list, tuple)) and "z" in axes and len(planes) == shape[axes.index("z")] and all(
            isinstance(z, (int, np.integer)) and not isinstance(z, bool) for z in planes):
        out["planes"] = [int(z) for z in planes]
    return out


def layer_shape(layer) -> tuple[int, ...]:
    return tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)


def layer_array(layer):
    """The full-resolution data of an image layer."""
    return layer.data[0] if layer.multiscale else layer.data


def n_planes(layer) -> int:
    """Number of Z planes (axis -3) of a layer, 1 for 2-D images."""
    shape = layer_shape(layer)
    return int(shape[-3]) if len(shape) >= 3 else 1


def plane_of(layer, lead: Sequence[int], z: int | None = None) -> np.ndarray:
    """The 2-D plane of ``layer`` at leading indices ``lead`` with Z replaced by ``z`` (when given)."""
    return plane_at(layer_array(layer), lead, z)


def plane_at(data, lead: Sequence[int], z: int | None = None) -> np.ndarray:
    """The 2-D plane of the array ``data`` at leading indices ``lead`` with Z replaced by ``z`` (when given).

    A live preview takes its input's array on the GUI thread when it is requested and reads the plane from that
    array in its worker: a layer whose data is replaced meanwhile (``layer.data = ...``, with other planes) cannot
    make it read a plane the request never meant.

    Examples
    --------
    >>> plane_at(np.arange(8).reshape(2, 2, 2), (0,), 1)
    array([[4, 5],
           [6, 7]])
    """
    idx = list(lead)
    if z is not None and data.ndim >= 3:
        idx[-1] = int(z)
    arr = data[tuple(idx)]
    if hasattr(arr, "compute"):
        arr = arr.compute()
    return np.asarray(arr)


def plane_of_array(arr) -> np.ndarray:
    """A numpy copy of a 2-D numpy or dask array."""
    if hasattr(arr, "compute"):
        arr = arr.compute()
    return np.asarray(arr)


def current_plane(viewer, layer, z: int | None = None) -> np.ndarray:
    """The plane of ``layer`` the viewer shows (with Z = ``z`` when given)."""
    return plane_of(layer, current_indices(viewer, layer), z)


@dataclass
class PairInputs:
    """Two arrays of one shape to be processed plane by plane, and how the output maps onto the inputs.

    ``dropped_z``: one plane was picked from each input (rather than every plane against every plane); the arrays
    then have no Z axis (``(Y, X)`` from a ``(Z, Y, X)`` input) or a one-plane Z axis (``(T, 1, Y, X)`` from a
    ``(T, Z, Y, X)`` input, so the output's axes line up with the input's; see :func:`pair_stacks`).
    """

    first: Any
    second: Any
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    dropped_z: bool


def take_z(data, z: int):
    """``data[..., z, :, :]`` (lazy for dask)."""
    return data[(Ellipsis, int(z), slice(None), slice(None))]


def keep_z(data, z: int):
    """``data[..., z:z + 1, :, :]``: plane ``z`` with a Z axis of length one (lazy for dask)."""
    return data[(Ellipsis, slice(int(z), int(z) + 1), slice(None), slice(None))]


def spanning_z(scale: Sequence[float], translate: Sequence[float], nz: int) -> tuple[tuple, tuple]:
    """Scale and translate for a one-plane Z axis that covers the Z extent of ``nz`` planes of ``scale`` /
    ``translate``: the plane sits in the middle of the stack, one stack deep, so napari shows it at every Z of the
    input (a plane at the input's own Z scale would show only where the viewer is at the first plane).

    Examples
    --------
    >>> spanning_z((1.0, 4.0, 0.5, 0.5), (0.0, 10.0, 0.0, 0.0), 9)
    ((1.0, 36.0, 0.5, 0.5), (0.0, 26.0, 0.0, 0.0))
    """
    scale, translate = tuple(float(v) for v in scale), tuple(float(v) for v in translate)
    sz = scale[-3]
    return (scale[:-3] + (sz * nz,) + scale[-2:],
            translate[:-3] + (translate[-3] + (nz - 1) * sz / 2,) + translate[-2:])


def check_plane(layer, z: int) -> None:
    """Plane ``z`` of a stack ``layer`` must exist (a 2-D layer has no Z: any ``z`` is ignored).

    Raises
    ------
    ValueError
        naming the plane, the layer and the planes it has (rather than an ``IndexError`` from the array).
    """
    if len(layer_shape(layer)) < 3:
        return
    n = n_planes(layer)
    if not 0 <= int(z) < n:
        have = "1 plane (0)" if n == 1 else f"{n} planes (0–{n - 1})"
        raise ValueError(f"plane {int(z)} of {layer.name!r} does not exist: it has {have} — pick a plane in that "
                         "range")


def check_two_planes(layer_1, z_1: int, layer_2, z_2: int, *, same_plane_ok: bool = False) -> None:
    """A pair operation needs two different planes: one plane of one layer against itself is an error.

    ``same_plane_ok`` (live previews, where the two plane sliders pass through each other) only refuses a layer
    that has a single plane.
    """
    if same_plane_ok and n_planes(layer_1) >= 2:
        return
    if layer_1 is layer_2 and int(z_1) == int(z_2):
        what = (f"{layer_1.name!r} is a single 2-D plane" if n_planes(layer_1) < 2
                else f"both inputs are plane {int(z_1)} of {layer_1.name!r}")
        raise ValueError(f"{what}: a pair operation needs two planes — pick two planes of a z-stack "
                         "(Z, Y, X), or two image layers")


def pair_stacks(layer_1, z_1: int, layer_2, z_2: int) -> PairInputs:
    """Line up the two inputs of a pair operation for a whole-stack run.

    * one layer (or two layers of one shape with different planes chosen): plane ``z_1`` against plane
      ``z_2`` at every other index (time, positions) -> one output plane per index: a ``(Z, Y, X)`` input gives
      a ``(Y, X)`` output; an input with axes before Z (``(T, Z, Y, X)``, BBBC006's ``(P, Z, Y, X)``) keeps a
      one-plane Z axis spanning the input's Z extent (:func:`spanning_z`), e.g. ``(T, 1, Y, X)`` — napari lines
      layers up by their last axes, so a ``(T, Y, X)`` output would put time on the viewer's Z slider (and its
      time unit on the Z axis);
    * two layers of the same shape with the same plane chosen: every plane against the same plane of the
      other layer -> the output has the input's shape.
    """
    check_plane(layer_1, z_1)
    check_plane(layer_2, z_2)
    check_two_planes(layer_1, z_1, layer_2, z_2)
    d1, d2 = layer_array(layer_1), layer_array(layer_2)
    s1, s2 = tuple(d1.shape), tuple(d2.shape)
    scale = tuple(float(s) for s in layer_1.scale)
    translate = tuple(float(t) for t in layer_1.translate)
    if layer_1 is not layer_2 and s1 == s2 and (z_1 == z_2 or len(s1) < 3):
        return PairInputs(d1, d2, scale, translate, False)
    if len(s1) >= 3 and len(s2) >= 3 and s1[:-3] + s1[-2:] == s2[:-3] + s2[-2:]:
        if len(s1) == 3:  # (Z, Y, X): one (Y, X) plane, shown at every Z
            drop = lambda t: t[:-3] + t[-2:]  # noqa: E731
            return PairInputs(take_z(d1, z_1), take_z(d2, z_2), drop(scale), drop(translate), True)
        scale, translate = spanning_z(scale, translate, int(s1[-3]))
        return PairInputs(keep_z(d1, z_1), keep_z(d2, z_2), scale, translate, True)
    raise ValueError(
        f"images {layer_1.name!r} {s1} and {layer_2.name!r} {s2} do not line up: pick two planes of one "
        "stack, or two layers of the same shape (planes of one field)"
    )


def lazy_planes(data):
    """A dask view of ``data`` with one chunk per plane (numpy is wrapped, dask is rechunked)."""
    import dask.array as da

    arr = da.asarray(data)
    chunks = (1,) * (arr.ndim - 2) + (-1, -1)
    return arr.rechunk(chunks)


def guard_blocks(lazy, on_error: Callable[[tuple[int, ...], BaseException], None]):
    """``lazy`` (a dask array) with every block that fails to compute replaced by NaN (0 for integer types).

    napari computes a lazy layer's planes while slicing (moving a slider, switching to 3-D), where an error would
    escape as a traceback and leave the canvas undefined; here the block's exception goes to
    ``on_error(block_index, error)`` instead and the block has a defined value. Each block is computed alone,
    with dask's synchronous scheduler, from the graph of ``lazy`` (which this array does not copy).

    Examples
    --------
    >>> import dask.array as da
    >>> def plane(block):
    ...     if block[0, 0, 0] == 4:
    ...         raise ValueError("bad plane")
    ...     return block
    >>> lazy = da.arange(8.0, chunks=4).reshape(2, 2, 2).rechunk((1, -1, -1)).map_blocks(plane)
    >>> errors = []
    >>> guard_blocks(lazy, lambda i, e: errors.append((i, str(e)))).compute()[:, 0]
    array([[ 0.,  1.],
           [nan, nan]])
    >>> errors
    [((1, 0, 0), 'bad plane')]
    """
    import dask.array as da

    if not isinstance(lazy, da.Array):  # computed already (its errors were the run's)
        return lazy
    dtype = np.dtype(lazy.dtype)
    fill = np.nan if np.issubdtype(dtype, np.inexact) else 0
    chunks = lazy.chunks

    def block(block_id=None):
        idx = tuple(int(i) for i in block_id)
        try:
            return np.asarray(lazy.blocks[idx].compute(scheduler="synchronous"), dtype=dtype)
        except Exception as err:  # noqa: BLE001 - reported through on_error, the block becomes NaN
            on_error(idx, err)
            return np.full(tuple(c[i] for c, i in zip(chunks, idx)), fill, dtype)

    # a name of its own (napari's dask cache is keyed by it); meta given, so dask never calls block() to infer it
    return da.map_blocks(block, dtype=dtype, chunks=chunks, meta=np.empty((0,) * lazy.ndim, dtype),
                         name=f"linblur-guarded-{lazy.name}")


def block_start(chunks: Sequence[Sequence[int]], block_index: Sequence[int]) -> tuple[int, ...]:
    """Index of the first element of block ``block_index`` of a dask array with ``chunks``.

    Examples
    --------
    >>> block_start(((1, 1, 1), (2, 2), (8,)), (2, 1, 0))
    (2, 2, 0)
    """
    return tuple(int(sum(c[:i])) for c, i in zip(chunks, block_index))


# ------------------------------------------------------------------------------------------ memory

#: share of the RAM available when a run starts that a computed ("new layer (compute now)") output may take: the
#: rest is left for the inputs' planes, the model, the tiles in flight and napari's own display of the result
MEMORY_FRACTION = 0.5


def available_memory() -> int | None:
    """Bytes of RAM available now (``psutil``'s *available*, else the free pages ``os.sysconf`` reports), or None
    where neither can tell."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no psutil (it is optional): ask the OS
        pass
    import os

    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # e.g. Windows, macOS without the name
        return None


def memory_limit() -> int | None:
    """Largest computed output, in bytes, a whole-stack run may hold in memory: :data:`MEMORY_FRACTION` of
    :func:`available_memory`; None when the available memory is unknown (no limit).

    A module-level function so that a test (or a site configuration) can replace it.
    """
    avail = available_memory()
    return None if avail is None else int(avail * MEMORY_FRACTION)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal.

    Examples
    --------
    >>> format_bytes(37_801_820_160), format_bytes(512), format_bytes(3 * 2**20)
    ('35.2 GiB', '512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def output_nbytes(shape: Sequence[int], itemsize: int = 4) -> int:
    """Bytes of a computed output of ``shape`` (float32 by default).

    Examples
    --------
    >>> output_nbytes((768, 34, 520, 696))
    37801820160
    """
    import math

    return math.prod(int(s) for s in shape) * int(itemsize)


def memory_problem(shape: Sequence[int], *, itemsize: int = 4, limit: int | None = None) -> str | None:
    """Why a computed output of ``shape`` must not be held in memory (it needs more than :func:`memory_limit`),
    or None when it fits (or the available memory is unknown).

    The text names the size, the shape and what to choose instead; it does not name the run (the caller does).

    Examples
    --------
    >>> memory_problem((2, 64, 64), limit=2**30) is None
    True
    >>> print(memory_problem((768, 34, 520, 696), limit=8 * 2**30))  # doctest: +NORMALIZE_WHITESPACE
    the result (768 x 34 x 520 x 696 float32) needs 35.2 GiB of memory, more than the 8.0 GiB this computer can
    spare for it now — choose the output 'OME-Zarr file' (written to disk plane by plane) or 'lazy layer' (planes
    computed when shown), or run on a smaller selection
    """
    limit = memory_limit() if limit is None else int(limit)
    need = output_nbytes(shape, itemsize)
    if limit is None or need <= limit:
        return None
    dims = " x ".join(str(int(s)) for s in shape)
    kind = np.dtype(f"f{int(itemsize)}").name if itemsize in (2, 4, 8) else f"{itemsize}-byte"
    return (f"the result ({dims} {kind}) needs {format_bytes(need)} of memory, more than the {format_bytes(limit)} "
            "this computer can spare for it now — choose the output 'OME-Zarr file' (written to disk plane by plane) "
            "or 'lazy layer' (planes computed when shown), or run on a smaller selection")


def compute_planes(
    func: Callable[..., np.ndarray],
    arrays: Sequence[Any],
    *,
    report: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Apply ``func(*planes) -> (Y, X)`` to every plane of ``(..., Y, X)`` arrays; float32 numpy result.

    Reads one plane per input at a time (dask inputs are never materialised whole), reports
    ``report(done, total)`` after each plane and raises :class:`Cancelled` when ``should_stop()`` is True.

    Examples
    --------
    >>> float(compute_planes(lambda p: p + 1, [np.zeros((2, 4, 4))]).sum())
    32.0
    """
    from napari_linblur.inference.tiling import map_planes

    lead = tuple(arrays[0].shape)[:-2]
    total = int(np.prod(lead)) if lead else 1
    done = 0

    def step(*planes: np.ndarray) -> np.ndarray:
        nonlocal done
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled")
        result = func(*planes)
        done += 1
        if report is not None:
            report(done, total)
        return result

    # the one plane loop of every operation (its numpy path, which names a failing plane), each dask plane read
    # on its own (a dask input is never materialised whole)
    return map_planes(step, *(_PlaneReader(a) for a in arrays), dtype=np.float32)


class _PlaneReader:
    """An array whose planes are read (computed, for dask) one index at a time: :func:`map_planes` then takes its
    eager numpy loop over it, rather than building a lazy graph."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = tuple(array.shape)

    def __getitem__(self, index: tuple) -> np.ndarray:
        plane = self.array[index] if index else self.array
        return np.asarray(plane.compute() if hasattr(plane, "compute") else plane)


def plane_digest(plane: np.ndarray) -> tuple:
    """A key for a plane's contents (shape, dtype and a hash of its bytes): equal only for the same pixels, also
    after the layer's data were edited in place.

    Examples
    --------
    >>> a = np.zeros((4, 4), np.uint16)
    >>> plane_digest(a) == plane_digest(a.copy()), plane_digest(a) == plane_digest(a + 1)
    (True, False)
    """
    import hashlib

    p = np.ascontiguousarray(plane)
    return p.shape, p.dtype.str, hashlib.blake2b(p.view(np.uint8).reshape(-1), digest_size=16).hexdigest()


def with_positive_scale(data: Any, scale: Sequence[float] | None, translate: Sequence[float] | None):
    """``(data, scale, translate)`` for an OME-Zarr file, which stores positive pixel sizes: an axis a napari layer
    flips with a negative scale is stored reversed, with ``|scale|`` and the translation of its far end, so the
    file reopens exactly where the layer was (writing ``|scale|`` alone put the stack upside down).

    Examples
    --------
    >>> d, s, t = with_positive_scale(np.arange(3)[:, None, None], [-4.0, 1.0, 1.0], [40.0, 0.0, 0.0])
    >>> d[:, 0, 0].tolist(), s, t
    ([2, 1, 0], [4.0, 1.0, 1.0], [32.0, 0.0, 0.0])
    """
    if scale is None:
        return data, scale, translate
    scale = [float(v) for v in scale]
    translate = [0.0] * len(scale) if translate is None else [float(v) for v in translate]
    flip = [i for i, v in enumerate(scale) if v < 0]
    if flip:
        index = tuple(slice(None, None, -1) if i in flip else slice(None) for i in range(len(scale)))
        data = data[index]
        for i in flip:
            translate[i] += scale[i] * (data.shape[i] - 1)
            scale[i] = -scale[i]
    return data, scale, translate


# ---------------------------------------------------------------------------------------- naming


def fmt_alpha(alpha: float | None) -> str:
    return "auto" if alpha is None else f"{alpha:.2f}"


def output_name(kind: str, sources: Sequence[str], alpha: float | None = None, *, use_alpha: bool = True) -> str:
    """Name an output layer for what produced it, e.g. ``deblurred[img, α=0.62]``.

    Examples
    --------
    >>> output_name("deblurred", ["img"], 0.62)
    'deblurred[img, α=0.62]'
    """
    inner = ", ".join(sources)
    if use_alpha:
        inner += f", α={fmt_alpha(alpha)}"
    return f"{kind}[{inner}]"


def robust_limits(arr: np.ndarray) -> tuple[float, float]:
    """0.5 / 99.5 percentile contrast limits of a finite array (never equal)."""
    a = np.asarray(arr, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------- session models


class UserModels:
    """Models trained (or browsed to) in this napari session, per task; widgets subscribe to changes."""

    def __init__(self) -> None:
        self._models: dict[str, list[str]] = {"ae": [], "deblur": [], "defocus": []}
        self._listeners: list = []  # weak references: a subscribed widget is freed once closed

    def add(self, task: str, path: str) -> None:
        paths = self._models.setdefault(task, [])
        if path not in paths:
            paths.append(path)
        for ref in list(self._listeners):
            cb = ref()
            if cb is None:  # a freed widget
                self._listeners.remove(ref)
                continue
            try:
                cb()
            except RuntimeError:  # a deleted widget
                self._listeners.remove(ref)

    def get(self, task: str) -> list[str]:
        return list(self._models.get(task, []))

    def subscribe(self, cb: Callable[[], None]) -> None:
        """Call ``cb()`` on every change; held weakly (a bound method by ``weakref.WeakMethod``), so that the
        subscription does not keep its widget alive."""
        import weakref

        ref = weakref.WeakMethod(cb) if hasattr(cb, "__self__") else weakref.ref(cb)
        self._listeners.append(ref)

    def unsubscribe(self, cb: Callable[[], None]) -> None:
        self._listeners = [r for r in self._listeners if r() is not None and r() != cb]


USER_MODELS = UserModels()


def source_paths(*layers) -> list[str]:
    """The files ``layers`` read their data from, without repeats: the file each was opened from (our reader's
    ``linblur_source``, napari's ``source.path``) and, for a lazy output, the files it computes from
    (``linblur_inputs``). An output's own ``linblur_inputs`` are these; the writer refuses to write onto them.

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> out = NS(metadata={"linblur_inputs": ["/d/a.zarr"]}, source=NS(path=None))
    >>> source_paths(NS(metadata={"linblur_source": "/d/b.tif"}, source=NS(path="/d/b.tif")), out)
    ['/d/b.tif', '/d/a.zarr']
    """
    out = []
    for ly in layers:
        if ly is None:
            continue
        md = getattr(ly, "metadata", None) or {}
        if md.get("linblur_source"):
            out.append(str(md["linblur_source"]))
        out.extend(str(p) for p in md.get("linblur_inputs", None) or [])
        path = getattr(getattr(ly, "source", None), "path", None)
        if path:
            out.append(str(path))
    return list(dict.fromkeys(out))  # a layer read by our reader names its file twice
