"""Batch runs over whole plates: one lazy graph, a ``dask.distributed`` cluster, OME-Zarr out.

Every batch command that writes images (``linblur synthesize``, ``deblur``, ``defocus-map``) goes through
:func:`run_batch` (or its two steps, :func:`open_batch_input` and :func:`write_batch_output`): the input is opened
lazily with :func:`~napari_linblur.io.readers.open_zstack_with_metadata`, the operation builds a lazy dask graph
(one task per plane), and the result is written chunk by chunk with
:func:`~napari_linblur.io.omezarr.write_ome_zarr` (atomic, never over its input) while a distributed client is
active — a local cluster by default, or any scheduler address for plates larger than one machine. As many planes are
computed at once as the cluster has worker threads, each written as soon as it is ready, so memory stays bounded by
(worker threads x one plane). ``linblur focus``, whose result is a few numbers per plane, computes its lazy graph on
the same kind of cluster with :func:`compute_with_client`.

Progress (blocks written, or planes scored, out of the total) is shown on stderr by :func:`progress_bar` when asked
(``--no-progress`` turns it off; it is off when stderr is not a terminal), and a ``--scheduler`` whose cluster has no
workers is reported after a few seconds instead of waiting silently (:func:`dask_client`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

#: seconds a ``--scheduler`` may have no workers before :func:`dask_client` says so (the run keeps waiting)
NO_WORKERS_WARNING_S = 5.0
#: graphs up to this size are sent to the scheduler without distributed's "Sending large graph" warning (a plate of
#: tens of thousands of planes makes a graph of tens of MB from file paths alone: nothing a user could change)
LARGE_GRAPH_WARNING = "512MiB"


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a progress bar: ``progress`` when given, else whether stderr is a terminal."""
    return _stderr_is_terminal() if progress is None else bool(progress)


def progress_bar(total: int | None, *, desc: str, unit: str, progress: bool | None = None) -> Any:
    """A tqdm progress bar on stderr.

    Parameters
    ----------
    total : int, optional
        Number of units; None while unknown (set ``bar.total`` later).
    desc, unit : str
        Its label and unit (``"plane"``, ``"block"``).
    progress : bool, optional
        True shows it, False hides it, None (default) shows it when stderr is a terminal (not in a log file or a
        pipe, where a bar's carriage returns are noise).

    Returns
    -------
    tqdm.tqdm
        A disabled bar (every call a no-op) when hidden; use it as a context manager or close it.
    """
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not show_progress(progress),
                dynamic_ncols=True, mininterval=0.5)


def bar_reporter(bar: Any):
    """The ``progress(done, total)`` callback of :func:`~napari_linblur.io.omezarr.write_ome_zarr` that moves ``bar``
    (a :func:`progress_bar`), whose total becomes known with the first call."""

    def report(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return report


def _say(message: str) -> None:
    """One line on stderr, above a progress bar that may be showing."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


@contextlib.contextmanager
def _warn_while_no_workers(client: Any, address: str, after: float) -> Iterator[None]:
    """Say (on stderr) when the cluster of ``client`` has had no worker for ``after`` seconds: at the start (a
    scheduler without workers) and whenever every worker has left during the run (killed, or its job's time limit);
    the run would otherwise wait silently for ever. Once per outage; watches from a daemon thread until the block
    ends."""
    stop = threading.Event()

    def watch() -> None:
        step = min(0.5, max(after, 0.05))
        empty_for, said, had_workers = 0.0, False, False
        while not stop.wait(step):
            try:
                workers = len(client.nthreads())
            except Exception:  # noqa: BLE001 - a closing client or a lost scheduler: the run itself reports that
                return
            if workers:
                empty_for, said, had_workers = 0.0, False, True
                continue
            empty_for += step
            if empty_for >= after and not said:
                said = True
                if had_workers:
                    _say(f"linblur: the scheduler at {address} has lost all its workers; waiting for workers to "
                         f"join (`dask worker {address}`), or interrupt: the output is not written")
                else:
                    _say(f"linblur: the scheduler at {address} has no workers yet; waiting (start some with "
                         f"`dask worker {address}`, or interrupt and use --workers N for a local cluster)")

    thread = threading.Thread(target=watch, name="linblur-no-workers", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2.0)


#: seconds a server at ``--scheduler`` may take to send its first bytes (a dask scheduler sends its handshake at once)
SCHEDULER_HANDSHAKE_S = 20.0


def check_scheduler_speaks_first(address: str, wait: float | None = None) -> None:
    """Refuse a ``tcp://`` address whose server is not a dask scheduler, before distributed's client is made.

    A dask scheduler sends its handshake as soon as a connection opens; a web server (the scheduler's own dashboard
    at 8787, a proxy) waits for a request, and distributed's client would wait with it (no timeout covers that), or
    read an HTTP reply as a frame length (a "MemoryError"). An address that cannot be reached, or of another
    scheme (``tls://``, ``inproc://``), is left to the client's own message. The probe's connection closes before
    the handshake completes, which the scheduler logs at INFO level ("closed before handshake completed").

    Raises
    ------
    OSError
        The server sent nothing within ``wait`` seconds (:data:`SCHEDULER_HANDSHAKE_S`), or an HTTP reply.
    """
    import socket

    scheme, sep, rest = address.partition("://")
    if sep and scheme != "tcp":
        return
    host, _, port = (rest if sep else address).rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return
    wait = SCHEDULER_HANDSHAKE_S if wait is None else float(wait)
    try:
        conn = socket.create_connection((host, int(port)), timeout=wait)
    except OSError:  # refused, unreachable, unknown host: distributed names it
        return
    with conn:
        conn.settimeout(wait)
        try:
            first = conn.recv(8)
        except TimeoutError:
            first = None
        except OSError:
            return
    wrong = ("the dashboard's port is 8787 by default, the scheduler's 8786; `dask scheduler` prints its address as "
             "'Scheduler at: tcp://…'")
    if first is None:
        raise OSError(f"--scheduler {address}: the server there accepted the connection but sent no dask handshake "
                      f"in {wait:g} s — it is not a dask scheduler (a web server or dashboard?); {wrong}")
    if first.startswith(b"HTTP") or first.startswith(b"<"):
        raise OSError(f"--scheduler {address}: the server there answers in HTTP — it is not a dask scheduler; {wrong}")


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, *,
                warn_no_workers_after: float | None = None) -> Iterator[Any]:
    """A ``dask.distributed`` client for the duration of a batch run.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler; the client connects to it. When its cluster has no worker
        ``warn_no_workers_after`` seconds after connecting, a line on stderr says so (the run keeps waiting for one).
    workers : int, optional
        Start a :class:`~distributed.LocalCluster` with this many single-threaded worker processes.
        ``None`` (and no scheduler) starts one with one worker per core (at most 4). Its dashboard is off and its
        scheduler's HTTP server (health checks) takes a free port, so another dask on this machine (port 8787)
        draws no "Port 8787 is already in use" warning. Its workers start without distributed's
        ``MALLOC_TRIM_THRESHOLD_=65536`` (1.3-1.5x faster defocus maps: ``benchmarks/bench_batch.py``).
    warn_no_workers_after : float, optional
        Seconds before the no-worker message (default :data:`NO_WORKERS_WARNING_S`).

    Yields
    ------
    distributed.Client
        Graphs below :data:`LARGE_GRAPH_WARNING` are sent without distributed's "Sending large graph" warning.
    """
    import dask
    from distributed import Client, LocalCluster

    after = NO_WORKERS_WARNING_S if warn_no_workers_after is None else float(warn_no_workers_after)
    if not scheduler and workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1 (worker processes of a local cluster), got {workers}")
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": LARGE_GRAPH_WARNING}):
        if scheduler:
            check_scheduler_speaks_first(scheduler)
            try:
                client = Client(scheduler, timeout="15s")
            except Exception as err:  # ValueError: not an address; MemoryError: another server's reply as a frame
                raise OSError(f"--scheduler {scheduler}: cannot connect to a dask scheduler there ({type(err).__name__}"
                              f": {err}); start one with `dask scheduler` (and workers), or use --workers N for a "
                              "local cluster") from err
            with client, _warn_while_no_workers(client, scheduler, after):
                yield client
            return
        n = workers or max(1, min(4, os.cpu_count() or 1))
        with (
            # silence_logs: a failing task is reported once, as the command's error, not also as the workers'
            # logged tracebacks (and an interrupted run does not log every cancelled task).
            # dashboard_address=None would still bind the scheduler's HTTP server (health checks) to port 8787,
            # warning when another dask holds it: ":0" takes any free port, dashboard=False keeps the dashboard off
            # distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers: glibc then returns freed
            # memory to the OS after every large free, and torch's per-tile buffers are allocated again at once,
            # which made defocus-map batches 1.3-1.5x slower (benchmarks/bench_batch.py). Left unset, glibc's default
            # (or the user's own MALLOC_TRIM_THRESHOLD_ in the environment, which workers inherit) applies.
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            # preload: the workers ignore Ctrl-C (this process stops the run and closes the cluster), instead of
            # each printing a KeyboardInterrupt traceback
            LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                         scheduler_kwargs={"dashboard": False}, silence_logs=logging.CRITICAL,
                         preload=["napari_linblur._worker_signals"]) as cluster,
            Client(cluster) as client,
        ):
            yield client


@contextlib.contextmanager
def naming_the_input(names: dict[str, str]) -> Iterator[None]:
    """Errors of the operation about its image arguments (``img has shape …``, ``img contains NaN … (at plane 3)``)
    name what the user gave instead (same exception type): ``names`` maps the operation's argument names to it
    (``{"img": "stack.tif"}``, ``{"img_a": "stack.tif, plane 3 (--sharp)"}``)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        from napari_linblur.inference.validate import name_arguments

        text = name_arguments(str(err), names)
        if text == str(err) or type(err) not in (ValueError, TypeError):
            raise
        raise type(err)(text) from err


def run_batch(
    operation: Callable,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    channel: int | str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
    desc: str | None = None,
) -> Path:
    """Apply ``operation`` (lazy dask in -> lazy dask out, same shape) to a stack and write OME-Zarr.

    Parameters
    ----------
    operation : callable
        Takes the lazy input array ``(..., Z, Y, X)`` and returns a lazy float32 array of the same shape,
        e.g. ``lambda a: nl.estimate_defocus(a)``.
    input_path, output_path : path
        Input stack (any format :func:`~napari_linblur.open_zstack` reads) and output ``.zarr`` folder.
    channel : int or str, optional
        Channel to process.
    scheduler, workers
        See :func:`dask_client`.
    attrs : dict, optional
        Extra metadata stored in the output (e.g. the model card name and α).
    overwrite : bool
        Replace an existing output (never the input).
    progress : bool, optional
        A progress bar of the blocks written (one per plane, plus the smaller planes of the pyramid levels) on
        stderr: True, False (default), or None for one when stderr is a terminal (:func:`progress_bar`).
    desc : str, optional
        The bar's label (default: the output's name).

    Raises
    ------
    ValueError
        The output cannot be written (:func:`~napari_linblur.io.omezarr.check_output_path`: a file in the way of
        its folder, its own input, an existing output without ``overwrite``), checked before the input is read.

    Returns
    -------
    pathlib.Path
        The written OME-Zarr folder: the input's axes (with their NGFF names, types and units), scale, translation
        and channel names, and under ``attrs["linblur"]`` the ``source``, the ``channel`` it was made from, and for
        a BBBC006 input its ``fields`` (well and site per P index) and ``planes`` (BBBC006 plane number per Z
        index), which :func:`~napari_linblur.io.readers.open_zstack_with_metadata` reads back into ``extra``.
    """
    arr, meta = open_batch_input(input_path, output_path, channel=channel, overwrite=overwrite)
    names = {"img": str(input_path)}
    with naming_the_input(names):
        result = operation(arr)
    if tuple(result.shape) != tuple(arr.shape):
        raise ValueError(f"operation changed the shape {arr.shape} -> {result.shape}")
    return write_batch_output(result, meta, input_path, output_path, scheduler=scheduler, workers=workers,
                              attrs=attrs, overwrite=overwrite, progress=progress, desc=desc, names=names)


def open_batch_input(input_path: str | os.PathLike, output_path: str | os.PathLike, *,
                     channel: int | str | None = None, overwrite: bool = False) -> tuple[Any, Any]:
    """The first step of :func:`run_batch`: check the output, then open the input lazily.

    The output's checks (:func:`~napari_linblur.io.omezarr.check_output_path`: a file in the way, its own input,
    an existing output without ``overwrite``) come before the input is read or a cluster starts;
    :func:`write_batch_output` makes them again when it writes.

    Returns
    -------
    (dask.array.Array, metadata)
        The ``(..., Z, Y, X)`` stack and its metadata (:func:`~napari_linblur.io.readers.open_zstack_with_metadata`).
    """
    from napari_linblur.io.omezarr import check_output_path
    from napari_linblur.io.readers import open_zstack_with_metadata

    check_output_path(output_path, overwrite=overwrite, source_paths=[input_path])
    return open_zstack_with_metadata(input_path, channel=channel)


def write_batch_output(
    result: Any,
    meta: Any,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
    desc: str | None = None,
    names: dict[str, str] | None = None,
    new_z: bool = False,
    z_positions: list[float] | None = None,
) -> Path:
    """The last step of :func:`run_batch`: compute the lazy ``result`` on a cluster and write it as OME-Zarr.

    ``result`` has the input's axes (``meta``, from :func:`open_batch_input`), which the output keeps with their
    calibration, channel names and BBBC006 fields; ``names`` (argument name -> the user's words) name the input
    in errors raised while planes are computed (:func:`naming_the_input`). With ``new_z`` the planes along Z are
    not the input's (``linblur synthesize``: one per α): the BBBC006 plane numbers are not recorded, and Z has no
    calibration unless ``z_positions`` (where the new planes lie, in the input's plane numbers) are evenly spaced
    and increasing: Z is then calibrated to them (the input's Z unit, spacing x their step, offset at the first), so
    the output overlays the input in napari. The other parameters are :func:`run_batch`'s.
    """
    from napari_linblur.io.omezarr import writable_axes, write_ome_zarr

    axes = writable_axes(meta.axes)
    scale, units, translate = list(meta.scale), list(meta.units), meta.translate
    axis_names, axis_types = meta.axis_names, meta.axis_types
    if meta.extra.get("z_added") and not new_z:
        # the input has no Z axis (a (T, Y, X) time-lapse): the reader's one-plane Z is left out again, so the output
        # has the input's axes and lines up with it in napari
        keep = [i for i, a in enumerate(axes) if a != "z"]
        result = result[(Ellipsis, 0, slice(None), slice(None))]
        axes = "".join(axes[i] for i in keep)
        scale, units = [scale[i] for i in keep], [units[i] for i in keep]
        translate = None if translate is None else [translate[i] for i in keep]
        axis_names = None if axis_names is None else [axis_names[i] for i in keep]
        axis_types = None if axis_types is None else [axis_types[i] for i in keep]
    if new_z:  # Z's values are the operation's, recorded in ``attrs``
        iz = axes.index("z")
        z_scale, z_unit = float(scale[iz]), units[iz]
        z_origin = 0.0 if translate is None else float(translate[iz])
        scale = [1.0 if a == "z" else float(v) for a, v in zip(axes, scale)]
        units = [None if a == "z" else u for a, u in zip(axes, units)]
        if translate is not None:
            translate = [0.0 if a == "z" else float(t) for a, t in zip(axes, translate)]
        step = _even_step(z_positions)
        if step is not None:
            scale[iz], units[iz] = z_scale * step, z_unit
            translate = [0.0] * len(axes) if translate is None else translate
            translate[iz] = z_origin + z_scale * float(z_positions[0])
    with (
        progress_bar(None, desc=desc or Path(output_path).name, unit="block", progress=progress) as bar,
        dask_client(scheduler, workers),
        naming_the_input(names or {"img": str(input_path)}),
    ):
        return write_ome_zarr(
            output_path,
            result,
            axes=axes,
            scale=scale,
            translate=translate,
            units=units,
            channel_names=meta.channel_names if "c" in meta.axes else None,
            axis_names=axis_names,
            axis_types=axis_types,
            attrs={
                "linblur": {
                    "source": str(Path(input_path).absolute()),
                    # the channel processed: its name, else its index (a file that names no channel)
                    "channel": (None if "c" in meta.axes else meta.channel_names[0] if meta.channel_names
                                else meta.extra.get("channel_index")),
                    **({"fields": list(meta.extra["fields"])} if meta.extra.get("fields") else {}),
                    **({"planes": [int(z) for z in meta.extra["planes"]]}
                       if meta.extra.get("planes") and not new_z else {}),
                    **(attrs or {}),
                }
            },
            overwrite=overwrite,
            source_paths=[input_path],
            progress=bar_reporter(bar),
        )


def _even_step(positions: list[float] | None) -> float | None:
    """The step of evenly spaced, increasing ``positions`` (1 for a single one), else None.

    Examples
    --------
    >>> _even_step([10.0, 12.0, 14.0]), _even_step([3.0]), _even_step([3.0, 2.0]), _even_step([1.0, 2.0, 4.0])
    (2.0, 1.0, None, None)
    """
    if not positions:
        return None
    if len(positions) == 1:
        return 1.0
    steps = [b - a for a, b in zip(positions, positions[1:])]
    if steps[0] <= 0 or any(abs(d - steps[0]) > 1e-9 * max(1.0, abs(steps[0])) for d in steps):
        return None
    return float(steps[0])


def compute_on_client(client: Any, lazy: Any, *, progress: bool | None = False, desc: str = "compute",
                      unit: str = "chunk") -> Any:
    """Compute a (small) lazy dask collection on ``client``, with a progress bar of its chunks done.

    Parameters
    ----------
    client : distributed.Client
    lazy : dask collection
        E.g. a focus curve, one chunk per plane (:func:`~napari_linblur.inference.defocus_ops.focus_curve`).
    progress : bool, optional
        See :func:`progress_bar`; False (default) computes without one.
    desc, unit : str
        The bar's label and the unit of one chunk (``"plane"``).

    Returns
    -------
    The computed result (numpy for a dask array). A chunk that fails raises its error, the others are cancelled.
    """
    if progress is False:
        return client.compute(lazy).result()
    from distributed import as_completed, futures_of

    persisted = client.persist(lazy)
    futures = futures_of(persisted)
    try:
        with progress_bar(len(futures), desc=desc, unit=unit, progress=progress) as bar:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's error
                bar.update(1)
        return client.compute(persisted).result()
    except BaseException:
        with contextlib.suppress(Exception):  # a client already closing: its futures go with it
            client.cancel(futures)
        raise


def compute_blocks_on_client(client: Any, lazy: Any, *, progress: bool | None = False, desc: str = "compute",
                             unit: str = "chunk") -> tuple[Any, dict[tuple[int, ...], BaseException]]:
    """Compute a (small) lazy dask array on ``client`` block by block, keeping the blocks that fail apart.

    Unlike :func:`compute_on_client`, a failing block neither stops the others nor raises: every block is its own
    future, and the elements of a failed block are NaN in the result and listed with their error.

    Parameters
    ----------
    client : distributed.Client
    lazy : dask.array.Array
        A float array, e.g. a focus curve with one block per plane
        (:func:`~napari_linblur.inference.defocus_ops.focus_curve`).
    progress : bool, optional
        See :func:`progress_bar`; False (default) shows none.
    desc, unit : str
        The bar's label and the unit of one block (``"plane"``).

    Returns
    -------
    values : numpy.ndarray
        float64 of ``lazy.shape``, NaN at every element of a block that failed.
    errors : dict
        The index (along every axis of ``lazy``) of each element of a failed block -> the block's exception.

    Examples
    --------
    >>> import dask.array as da
    >>> from distributed import Client
    >>> def half(b):
    ...     if b[0] == 2:
    ...         raise ValueError("bad block")
    ...     return b / 2
    >>> with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
    ...     values, errors = compute_blocks_on_client(client, da.arange(4.0, chunks=1).map_blocks(half))
    >>> values.tolist(), {k: str(v) for k, v in errors.items()}
    ([0.0, 0.5, nan, 1.5], {(2,): 'bad block'})
    """
    import itertools

    import numpy as np
    from distributed import as_completed

    blocks = lazy.to_delayed()
    starts = [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in lazy.chunks]
    where = {}
    keys = list(np.ndindex(*blocks.shape))
    futures = client.compute([blocks[b] for b in keys])
    for b, f in zip(keys, futures, strict=True):
        where[f.key] = tuple(slice(s[i], s[i + 1]) for s, i in zip(starts, b, strict=True))
    values = np.full(lazy.shape, np.nan, dtype=np.float64)
    errors: dict[tuple[int, ...], BaseException] = {}
    try:
        with progress_bar(len(futures), desc=desc, unit=unit, progress=progress) as bar:
            for future in as_completed(futures):
                sl = where[future.key]
                if future.status == "error":
                    err = future.exception()
                    for idx in itertools.product(*(range(s.start, s.stop) for s in sl)):
                        errors[idx] = err
                else:
                    values[sl] = np.asarray(future.result(), dtype=np.float64).reshape(values[sl].shape)
                bar.update(1)
    except BaseException:
        with contextlib.suppress(Exception):  # a client already closing: its futures go with it
            client.cancel(futures)
        raise
    return values, errors


def compute_with_client(lazy, *, scheduler: str | None = None, workers: int | None = None,
                        progress: bool | None = False, desc: str = "compute", unit: str = "chunk"):
    """Compute a (small) lazy result, such as a per-plane focus curve, on a distributed client
    (:func:`dask_client`), with a progress bar of its chunks when ``progress`` asks (:func:`compute_on_client`)."""
    with dask_client(scheduler, workers) as client:
        return compute_on_client(client, lazy, progress=progress, desc=desc, unit=unit)
