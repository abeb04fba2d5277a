"""Atomic writes of small text outputs (reports, tables): a temporary file in the same folder, renamed over the
target only once complete, so a failure never leaves a half-written file or a damaged earlier version."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: seconds a rename refused with PermissionError is tried again for (Windows: a virus scanner, the search indexer or
#: a sync client holds the new files open for a moment; elsewhere a PermissionError is final at once)
RENAME_RETRY_S = 5.0


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace(src, dst)``, tried again for up to :data:`RENAME_RETRY_S` on Windows while it is refused
    with ``PermissionError`` (files of ``src`` or ``dst`` held open by another process for a moment): a run's
    finished output is not lost to a scanner's brief look at it."""
    import sys
    import time

    deadline = time.monotonic() + (RENAME_RETRY_S if sys.platform == "win32" else 0.0)
    delay = 0.05
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def write_error(path: str | os.PathLike, err: BaseException) -> OSError:
    """The error of a write to ``path`` that failed with ``err`` (a full disk, a file-size limit, a lost share),
    naming the path and saying that nothing replaced it: an ``OSError`` with ``err``'s errno.

    ``err`` may also be a writer library's own I/O error (safetensors raises ``SafetensorError``, not ``OSError``).
    """
    reason = getattr(err, "strerror", None) or str(err)
    text = f"cannot write {path}: {reason} (nothing was written there; an earlier output of that name is unchanged)"
    code = getattr(err, "errno", None)
    return OSError(code, text) if code is not None else OSError(text)  # not "[Errno None] ..."


#: errnos that only a write gives (a full disk or quota, a file-size limit, a read-only file system): an error of a
#: whole-store writer that also reads its input is named as the output's only for these
WRITE_ERRNOS = frozenset(e for e in (getattr(errno, n, None) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EROFS"))
                         if e is not None)


def is_write_error(err: BaseException) -> bool:
    """``err`` is a failed write: an ``OSError``, or a writer library's I/O error (safetensors')."""
    return isinstance(err, OSError) or type(err).__name__ == "SafetensorError"


def as_new_file(path: str | os.PathLike) -> None:
    """Give a temporary file the permissions of a newly created file (``0o666`` less the umask) before it is
    renamed into place: :func:`tempfile.mkstemp` makes files private to their owner, and a model or report on a
    shared machine must stay readable by the others, like every other output."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def some_paths(paths: list[Path], show: int = 3, name_only: bool = False) -> str:
    """The first ``show`` of ``paths`` and how many more, for a message about leftovers.

    Examples
    --------
    >>> some_paths([Path("/a/x"), Path("/a/y")], show=1, name_only=True)
    'x and 1 more'
    """
    text = ", ".join(p.name if name_only else str(p) for p in paths[:show])
    return text + (f" and {len(paths) - show} more" if len(paths) > show else "")


def _warn_leftovers(path: Path) -> None:
    """Name the temporary files of earlier writes of ``path`` that were killed (SIGKILL, out of memory) before they
    could remove them; never deleted here, since another process may be writing ``path`` at this moment."""
    import glob
    import warnings

    try:
        left = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    except OSError:
        return
    if left:
        warnings.warn(f"{path}: {len(left)} temporary file(s) of an earlier write that was killed are left in "
                      f"{path.parent} ({some_paths(left, name_only=True)}); delete them unless another write of "
                      f"{path.name} is running now",
                      UserWarning, stacklevel=4)


@contextlib.contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write the whole file to; on a clean exit it gets a new file's
    permissions and is renamed over ``path``, on an error it is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_target(out) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text()
    'done'
    """
    from napari_linblur.io.omezarr import check_not_inside_store

    path = Path(path)
    check_not_inside_store(path.resolve())  # a report or model inside another dataset's zarr store: refused
    _warn_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        as_new_file(tmp)
        replace(tmp, path)
    except Exception as err:
        if is_write_error(err):  # OSError(errno, ...) is the errno's subclass again (PermissionError, ...)
            raise write_error(path, err) from err
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` to ``path`` atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The file to (over)write. Its folder must exist; a folder of that name is an error.
    text : str
        The whole content (UTF-8).
    newline : str, optional
        Passed to :func:`open` (``""`` for CSV written with :mod:`csv`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If ``path`` is an existing folder or its parent folder does not exist.
    """
    given = os.fspath(path)
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder: give a file name")
    if isinstance(given, str) and given.endswith(("/", os.sep)):  # Path() drops it: 'a.csv/' would write a.csv
        raise ValueError(f"{given} ends with a folder separator: give a file name")
    if not path.parent.is_dir():
        raise ValueError(f"the folder of {path} does not exist")
    # a file name that is not UTF-8 (a Latin-1 share) reaches a report as surrogates: written back as its bytes
    with atomic_target(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline=newline) as f:
        f.write(text)
    return path


def _strict(obj):
    """``obj`` with NaN/Inf floats replaced by None (JSON has no NaN: strict parsers reject the token)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as strict JSON (NaN/Inf become ``null``) to ``path`` atomically (:func:`write_text_atomic`).

    Parameters
    ----------
    path : str or os.PathLike
        The file to (over)write.
    obj : dict, list or scalar
        JSON-serialisable data (Python floats; NaN and Inf are written as ``null``).
    indent : int
        Indentation of the JSON text.
    sort_keys : bool
        Write mapping keys in sorted order (model cards: byte-stable files).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> json.loads(write_json_atomic(p, {"mae": float("nan"), "n": 3}).read_text())
    {'mae': None, 'n': 3}
    """
    import json

    text = json.dumps(_strict(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)
    return write_text_atomic(path, text + "\n")


def make_output_folder(path: str | os.PathLike, label: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents) if needed; a ``ValueError`` naming ``label`` when a file
    stands where it (or one of its parents) should be, instead of ``mkdir``'s bare ``[Errno 17] File exists``.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "notes.txt").write_text("x")
    1
    >>> make_output_folder(d / "notes.txt")
    Traceback (most recent call last):
    ...
    ValueError: --out ... is a file; --out must be a folder (a new or an existing one)
    """
    from napari_linblur.io.omezarr import check_not_inside_store, check_parent_folders

    if not str(os.fspath(path)).strip():  # Path("") is the current folder: a run would write its files there
        raise ValueError(f"{label} is empty: give a folder (a new or an existing one)")
    p = Path(os.fspath(path))
    if p.exists() and not p.is_dir():
        raise ValueError(f"{label} {p} is a file; {label} must be a folder (a new or an existing one)")
    check_parent_folders(p, label)
    if p.is_symlink() and not p.exists():  # mkdir would say "File exists"
        raise ValueError(f"{label} {p} is a symbolic link that leads nowhere (a missing target, or links that point "
                         "at each other); give a real folder")
    check_not_inside_store(p.resolve())
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only or virtual file system (/sys, /proc), no permission: named, one line
        raise OSError(err.errno, f"{label} {p}: the folder cannot be created ({err.strerror}); choose a folder "
                                 "you can write to") from err
    return p
