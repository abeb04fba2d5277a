"""Lazy, error-naming building blocks shared by the readers.

Every chunk the readers hand to dask goes through one of the array-likes defined here, so that a decoding
error (a corrupt zarr chunk, a truncated TIFF strip) surfaces as a :class:`ValueError` that names the file
or store and the chunk, instead of a codec's bare ``RuntimeError`` deep inside a dask traceback.
The objects only hold paths and small metadata, so they pickle (``dask.distributed`` works).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

__all__ = ["SafeZarrArray", "TiffPlanes", "TiffFileGrid", "natural_key", "as_dask",
           "tiff_error", "tiff_plane_header", "read_tiff_plane"]


def natural_key(name: str) -> list[Any]:
    """Sort key that orders embedded integers numerically (``z2`` < ``z10``).

    Examples
    --------
    >>> sorted(["p10.tif", "p2.tif", "p1.tif"], key=natural_key)
    ['p1.tif', 'p2.tif', 'p10.tif']
    """
    import re

    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", name) if t]


def _chunk_index(key: Any, chunks: Sequence[int]) -> tuple[int, ...]:
    """Chunk grid index of the block selected by ``key`` (a tuple of slices)."""
    if not isinstance(key, tuple):
        key = (key,)
    idx = []
    for k, c in zip(key, chunks):
        start = k.start if isinstance(k, slice) else int(k)
        idx.append(int(start or 0) // max(int(c), 1))
    return tuple(idx)


#: most chunks a zarr array may claim (a damaged ``shape`` of 10^12 would otherwise exhaust memory building the graph)
MAX_CHUNKS = 10**8


class SafeZarrArray:
    """Array-like over a zarr array that re-raises read errors as ``ValueError`` naming store and chunk.

    Parameters
    ----------
    store : str
        Path of the zarr store (root), for messages and for re-opening after unpickling.
    component : str
        Path of the array inside the store ('' for a root array).
    """

    def __init__(self, store: str, component: str = "") -> None:
        from napari_linblur.io.omezarr import COMPLETE_MARKER, root_attributes

        self.store = str(store)
        self.component = component
        arr = self._open(at_open=True)
        self.shape = tuple(int(n) for n in arr.shape)
        self.dtype = np.dtype(arr.dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(c) for c in arr.chunks)
        where = f"{self.store}/{self.component}".rstrip("/")
        if any(c < 1 for c in self.chunks) or any(n < 0 for n in self.shape):
            raise ValueError(f"{where}: invalid zarr array metadata: shape {self.shape}, chunks {self.chunks} "
                             "(chunks must be at least 1 along every axis)")
        n_chunks = int(np.prod([-(-n // c) for n, c in zip(self.shape, self.chunks)], dtype=float))
        if n_chunks > MAX_CHUNKS:
            raise ValueError(f"{where}: zarr array metadata claim shape {self.shape} in chunks {self.chunks}, "
                             f"{n_chunks:.3g} chunks (at most {MAX_CHUNKS:.0e} are read); damaged metadata?")
        #: a store write_ome_zarr wrote (from 0.2.0, which marks it) has every chunk: one that is missing is
        #: damage, not a plane of zeros
        self.complete = root_attributes(Path(self.store)).get(COMPLETE_MARKER) is True
        self._arr = arr
        #: the array's metadata file as it was at open: checked before every read, so that a store deleted or
        #: written again since with another type or shape (whose chunks might still decode) is not read as zeros or
        #: as other data
        self._stamp = self._metadata_stamp()
        #: the store's and the array's folders: written again as a whole (an --overwrite moves a new store into
        #: place) they are new folders, even with the same layout; attributes changed in place keep them
        self._folders = self._folder_ids()

    def _folder_ids(self) -> tuple | None:
        base = Path(self.store) / self.component if self.component else Path(self.store)
        try:
            return (os.stat(self.store).st_ino, os.stat(base).st_ino)
        except OSError:
            return None

    def _metadata_path(self) -> Path:
        base = Path(self.store) / self.component if self.component else Path(self.store)
        v3 = base / "zarr.json"
        return v3 if v3.exists() else base / ".zarray"

    def _metadata_stamp(self) -> tuple | None:
        try:
            st = os.stat(self._metadata_path())
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _open(self, at_open: bool = False) -> Any:
        """The zarr array; ``at_open``: when the store is opened (not re-opened to read planes during a run)."""
        import zarr

        try:
            node = zarr.open(self.store, mode="r", path=self.component or None)
        except Exception as exc:  # zarr's own errors name neither the store nor the array
            import json

            where = f"{self.store}/{self.component}".rstrip("/")
            if isinstance(exc, json.JSONDecodeError):
                raise ValueError(f"{where}: its zarr metadata is not valid JSON ({exc})") from exc
            if at_open and isinstance(exc, FileNotFoundError):
                raise ValueError(f"{where}: the store's metadata names this array, but it is not there (a damaged "
                                 f"or partly copied store?) ({type(exc).__name__}: {exc})") from exc
            missing = missing_here(exc)
            if missing is not None:
                raise ValueError(f"{where}: {missing} ({type(exc).__name__}: {exc})") from exc
            raise ValueError(f"{where}: cannot open this zarr array: {type(exc).__name__}: {exc}") from exc
        if not hasattr(node, "shape"):
            raise ValueError(f"{self.store}: {self.component!r} is a zarr group, not an array")
        return node

    def _check_chunks_present(self, key: Any, arr: Any = None) -> None:
        """Raise naming the first chunk of ``key`` missing from the store (only for stores napari-linblur wrote,
        which hold every chunk; in other stores a missing chunk means the fill value, as zarr defines)."""
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges = []
        for k, n, c in zip(key, self.shape, self.chunks):
            if isinstance(k, slice):
                start, stop, _ = k.indices(n)
                ranges.append(range(start // c, max(start, stop - 1) // c + 1) if stop > start else range(0))
            else:
                i = int(k) % n if n else 0
                ranges.append(range(i // c, i // c + 1))
        base = Path(self.store) / self.component if self.component else Path(self.store)
        encode = (arr if arr is not None else self._arr).metadata.encode_chunk_key
        for coords in itertools.product(*ranges):
            if not (base / encode(coords)).is_file():  # a folder in a chunk's place reads as the fill value too
                where = f"{self.store}/{self.component}".rstrip("/")
                raise ValueError(f"{where}: chunk {'.'.join(map(str, coords))} is missing from the store (deleted or "
                                 "not copied?); napari-linblur writes every chunk, so this output is damaged — "
                                 "write it again")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arr"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getitem__(self, key: Any) -> np.ndarray:
        arr = self._arr
        stamp = self._metadata_stamp()
        if getattr(self, "_stamp", None) is not None and stamp != self._stamp:
            # the metadata file changed: gone, another shape, type or chunking, or a store written again as a whole
            # (new folders) raises; new attributes (or a file only touched) leave the array as it was: read on
            self._check_not_rewritten()
            if getattr(self, "_folders", None) is not None and self._folder_ids() != self._folders:
                where = f"{self.store}/{self.component}".rstrip("/")
                raise ValueError(f"{where}: the store was written again since it was opened; open it again")
            arr = self._open()
            self._arr, self._stamp = arr, stamp  # one assignment each: other threads read one or the other
        if arr is None:
            arr = self._arr = self._open()
        try:
            if getattr(self, "complete", False):
                self._check_chunks_present(key, arr)
            return np.asarray(arr[key])
        except Exception as exc:  # decoding errors come as many types
            self._check_not_rewritten()
            if isinstance(exc, ValueError) and "is missing from the store" in str(exc):
                raise
            where = f"{self.store}/{self.component}".rstrip("/")
            chunk = ".".join(str(i) for i in _chunk_index(key, self.chunks))
            raise ValueError(
                f"corrupt or unreadable zarr chunk {chunk} of {where}: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_not_rewritten(self) -> None:
        """After a failed read: if the array is gone or its metadata (shape, dtype, chunks) changed since it was
        opened, say so (the store was deleted or written again), rather than calling the store damaged."""
        where = f"{self.store}/{self.component}".rstrip("/")
        try:
            now = self._open()
        except ValueError as err:
            raise ValueError(f"{where}: the store was deleted or written again since it was opened; open it again "
                             f"({err})") from None
        if (tuple(now.shape), np.dtype(now.dtype), tuple(now.chunks)) != (self.shape, self.dtype, self.chunks):
            raise ValueError(f"{where}: the store was written again since it was opened (now {tuple(now.shape)} "
                             f"{now.dtype} in chunks {tuple(now.chunks)}, then {self.shape} {self.dtype} in chunks "
                             f"{self.chunks}); open it again")


class _QuietInThisThread(logging.Filter):
    """Drops tifffile's log records emitted by a thread inside :func:`quiet_tifffile` (other threads and other uses
    of tifffile in the process keep their messages)."""

    state = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's API
        return not getattr(self.state, "depth", 0)


_QUIET = _QuietInThisThread()


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Read TIFFs without tifffile's own log lines (``invalid page offset …``) on stderr: a file it cannot read
    is reported by the one ``ValueError`` naming it (:func:`tiff_error`), not by those lines before it."""
    log = logging.getLogger("tifffile")
    if _QUIET not in log.filters:
        log.addFilter(_QUIET)
    state = _QuietInThisThread.state
    state.depth = getattr(state, "depth", 0) + 1
    try:
        yield
    finally:
        state.depth -= 1


def missing_here(exc: BaseException) -> str | None:
    """For a file gone or unreadable where a plane was read (``FileNotFoundError``/``PermissionError``): where that
    was, and, on a dask worker, that every worker must see the input at the same path; else None."""
    if not isinstance(exc, (FileNotFoundError, PermissionError)):
        return None
    import socket

    what = "not found" if isinstance(exc, FileNotFoundError) else "not readable"
    on_worker = False
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            get_worker()
            on_worker = True
        except (ValueError, ImportError):
            pass
    if on_worker:
        return (f"{what} on the dask worker at {socket.gethostname()} that read it: every worker must see the input "
                "at the same path (a shared file system, and an absolute path)")
    return f"{what} when it was read (moved, deleted or unmounted since the run started?)"


def tiff_error(path: str | Path, exc: BaseException) -> ValueError:
    """A ``ValueError`` naming a TIFF file that could not be read."""
    where = missing_here(exc)
    if where is not None:
        return ValueError(f"{path}: {where} ({type(exc).__name__}: {exc})")
    return ValueError(
        f"{path}: not a readable TIFF (corrupt or truncated file?): {type(exc).__name__}: {exc}"
    )


class TiffPlanes:
    """Lazy ``(*lead, Y, X[, S])`` view of one series of a TIFF file, one page per chunk.

    Pages are read on demand with :mod:`tifffile`; the file is re-opened for each read (cheap: only the
    header and the needed IFDs are parsed), which keeps the object picklable and thread safe.
    """

    def __init__(
        self,
        path: str | Path,
        series: int,
        shape: tuple[int, ...],
        dtype: np.dtype,
        page_ndim: int,
        memmap: bool = False,
    ) -> None:
        self.path = str(path)
        self.series = series
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        #: read through a memory map of the contiguous series (ImageJ files over 4 GB hold every plane in the
        #: first page's data block: there are no per-plane pages to read)
        self.memmap = bool(memmap)
        self.ndim = len(self.shape)
        self.page_ndim = page_ndim
        self.chunks = (1,) * (self.ndim - page_ndim) + self.shape[self.ndim - page_ndim :]

    def __getitem__(self, key: Any) -> np.ndarray:
        import tifffile

        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        if self.memmap:
            try:
                mapped = tifffile.memmap(self.path, series=self.series, mode="r")
            except Exception as exc:
                raise tiff_error(self.path, exc) from exc
            self._check_same(mapped.dtype, mapped.size == int(np.prod(self.shape)), mapped.shape)
            return np.array(mapped.reshape(self.shape)[key])
        lead_shape = self.shape[: self.ndim - self.page_ndim]
        lead_key = key[: len(lead_shape)]
        ranges = [range(*k.indices(n)) for k, n in zip(lead_key, lead_shape)]
        sub_shape = tuple(len(r) for r in ranges)
        flat = [0]
        if lead_shape:
            flat = [int(np.ravel_multi_index(tuple(r[i] for r, i in zip(ranges, ix)), lead_shape))
                    for ix in np.ndindex(*sub_shape)]
        page_shape = self.shape[self.ndim - self.page_ndim :]
        try:
            with quiet_tifffile(), tifffile.TiffFile(self.path) as tf:
                series = tf.series[self.series] if self.series < len(tf.series) else None
                if series is None or tuple(series.shape) != self.shape:
                    self._check_same(None, False, None if series is None else tuple(series.shape))
                # no leading axes (the whole series is one chunk): the whole series, not its first page
                data = tf.asarray(key=flat, series=self.series) if lead_shape else tf.asarray(series=self.series)
        except ValueError as exc:
            if "replaced after" in str(exc):
                raise
            raise tiff_error(self.path, exc) from exc
        except Exception as exc:
            raise tiff_error(self.path, exc) from exc
        data = np.asarray(data)  # its series has this stack's shape (checked above): only the pixel type may differ
        self._check_same(data.dtype, data.size == int(np.prod(sub_shape + page_shape)), self.shape)
        data = data.reshape(sub_shape + page_shape)
        return data[(slice(None),) * len(lead_shape) + tuple(key[len(lead_shape) :])]

    def _check_same(self, dtype, size_ok: bool, shape) -> None:
        """Refuse data that is not what the file held when the stack was opened (the file replaced since): a
        float image read as the uint16 it was would wrap when written, another size would not reshape."""
        same_dtype = dtype is None or np.dtype(dtype).newbyteorder("=") == self.dtype.newbyteorder("=")
        if not (same_dtype and size_ok):
            found = f"{shape} {np.dtype(dtype) if dtype is not None else ''}".strip()
            raise ValueError(f"{self.path}: now holds {found or 'another series layout'}, not the {self.shape} "
                             f"{self.dtype} it held when the stack was opened (replaced after it was opened?); "
                             "open it again")


def tiff_plane_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape and dtype of the first page of a TIFF file, and its number of pages, from its header only.

    Cheap (no pixel is decoded: about 0.1 ms per file), so that a folder of per-plane files can be checked file
    by file when it is opened.

    Raises
    ------
    ValueError
        naming the file, if it is not a readable TIFF.
    """
    import tifffile

    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tf:
            page = tf.pages[0]
            if page.dtype is None:
                raise ValueError(f"unsupported sample format (bits per sample {page.bitspersample})")
            return tuple(int(n) for n in page.shape), np.dtype(page.dtype), len(tf.pages)
    except Exception as exc:
        raise tiff_error(path, exc) from exc


def read_tiff_plane(path: str | Path, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The first series of the TIFF file ``path``, checked against the ``shape`` and ``dtype`` it was opened as.

    Raises
    ------
    ValueError
        naming the file, if it cannot be decoded, or if its image is not ``shape`` ``dtype`` (a file of another size
        or pixel type than the rest of the stack, or one replaced after the stack was opened): the message gives
        the file's shape and dtype and the expected ones.
    """
    import tifffile

    try:
        data = np.asarray(tifffile.imread(path, series=0))
    except Exception as exc:
        raise tiff_error(path, exc) from exc
    expected = np.dtype(dtype)
    if data.shape != tuple(shape) or data.dtype.newbyteorder("=") != expected.newbyteorder("="):
        raise ValueError(
            f"{path}: holds a {data.shape} {data.dtype} image, expected {tuple(shape)} {expected} like the other "
            "planes of the stack (a file of another size or pixel type, or one replaced after the stack was "
            "opened); move it out of the folder or replace it, then open the folder again"
        )
    return data.astype(expected, copy=False)


class TiffFileGrid:
    """Lazy ``(*grid, *plane)`` array-like over a grid of TIFF files holding one plane each (a folder of per-plane
    files, the wells x channels x planes of a BBBC006 plate), one file per chunk.

    One object for the whole grid (rather than one dask array per file, then stacked), so that opening a folder of
    tens of thousands of files builds its dask graph in milliseconds. It holds paths and small metadata only, so it
    pickles; wrap it with ``as_dask(grid, inline_array=False)`` so that the path list is one graph key, not copied
    into every task.

    Parameters
    ----------
    paths : sequence of str or Path
        one file per grid cell, in C order of ``grid``.
    grid : tuple of int
        the grid's shape (the leading axes of the array).
    shape : tuple of int
        the shape of each file's image (the trailing axes).
    dtype : numpy dtype
        the dtype of each file's image.
    """

    def __init__(self, paths: Sequence[str | Path], grid: tuple[int, ...], shape: tuple[int, ...],
                 dtype: np.dtype) -> None:
        self.paths = [str(q) for q in paths]
        self.grid = tuple(int(n) for n in grid)
        if len(self.paths) != int(np.prod(self.grid, dtype=np.int64)):
            raise ValueError(f"TiffFileGrid: {len(self.paths)} paths for a grid of shape {self.grid}")
        self.plane_shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self.shape = self.grid + self.plane_shape
        self.ndim = len(self.shape)
        self.chunks = (1,) * len(self.grid) + self.plane_shape

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        n_lead = len(self.grid)
        ranges = [range(*k.indices(n)) if isinstance(k, slice) else [int(k) % n]
                  for k, n in zip(key[:n_lead], self.grid)]
        sub = tuple(len(r) for r in ranges)
        out = np.empty(sub + self.plane_shape, self.dtype)
        for ix in np.ndindex(*sub):
            flat = int(np.ravel_multi_index(tuple(r[i] for r, i in zip(ranges, ix)), self.grid))
            out[ix] = read_tiff_plane(self.paths[flat], self.plane_shape, self.dtype)
        out = out.reshape(tuple(n for n, k in zip(sub, key[:n_lead]) if isinstance(k, slice)) + self.plane_shape)
        return out[(Ellipsis,) + tuple(key[n_lead:])]


def as_dask(obj: Any, chunks: Sequence[int] | None = None, name: str | None = None, *,
            inline_array: bool = True) -> da.Array:
    """Wrap one of the array-likes above as a dask array, one task per chunk.

    ``inline_array=False`` keeps ``obj`` as one key of the graph that every task reads (for a large object such as
    a :class:`TiffFileGrid`), instead of a copy in every task.
    """
    chunks = tuple(chunks if chunks is not None else obj.chunks)
    return da.from_array(
        obj,
        chunks=chunks,
        asarray=False,
        lock=False,
        fancy=False,
        meta=np.empty((0,) * obj.ndim, dtype=obj.dtype),
        name=name,
        inline_array=inline_array,
    )
