"""Batch runs over whole plates: one lazy graph, a ``dask.distributed`` cluster, OME-Zarr out.

Every batch command (``linblur synthesize``, ``deblur``, ``defocus-map``, ``focus``) goes through
:func:`run_batch`: the input is opened lazily with :func:`~napari_linblur.io.readers.open_zstack_with_metadata`,
the operation builds a lazy dask graph (one task per plane), and the result is written chunk by chunk with
:func:`~napari_linblur.io.omezarr.write_ome_zarr` (atomic, never over its input) while a distributed client is
active — a local cluster by default, or any scheduler address for plates larger than one machine. As many planes
are computed at once as the cluster has worker threads, each written as soon as it is ready, so memory stays
bounded by (worker threads x one plane).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from napari_linblur.models.registry import model_arg  # noqa: F401 - the --model type of the batch commands


def channel_arg(text: str) -> int | str:
    """``--channel`` value: digits are an index (``0`` = the first channel), anything else a channel name."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the batch sub-commands: input, channel, cluster."""
    parser.add_argument("input", help="OME-Zarr/zarr, TIFF stack, folder of TIFFs, or BBBC006 folder/file")
    parser.add_argument("--channel", default=None, type=channel_arg,
                        help="channel to process: an index (0 = the first) or a name, e.g. w1")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", default=None, help="address of a running dask scheduler (tcp://host:8786)")
    group.add_argument(
        "--workers", type=int, default=None,
        help="start a local dask.distributed cluster with N workers (default: one per core, at most 4)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed`` client for the duration of a batch run.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler; the client connects to it.
    workers : int, optional
        Start a :class:`~distributed.LocalCluster` with this many single-threaded worker processes.
        ``None`` (and no scheduler) starts one with one worker per core (at most 4).

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as err:  # ValueError: not an address ("missing port number")
            raise OSError(f"--scheduler {scheduler}: cannot connect to a dask scheduler there ({err}); start one "
                          "with `dask scheduler` (and workers), or use --workers N for a local cluster") from err
        with client:
            yield client
        return
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = workers or max(1, min(4, os.cpu_count() or 1))
    with (
        # silence_logs: a failing task is reported once, as the command's error, not also as the workers' logged
        # tracebacks (and an interrupted run does not log every cancelled task)
        LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                     silence_logs=logging.CRITICAL) as cluster,
        Client(cluster) as client,
    ):
        yield client


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
    from napari_linblur.io.omezarr import check_output_path, writable_axes, write_ome_zarr
    from napari_linblur.io.readers import open_zstack_with_metadata

    # the output's checks (a file in the way, its own input, an existing output) before any work or cluster start;
    # write_ome_zarr makes them again when it writes
    check_output_path(output_path, overwrite=overwrite, source_paths=[input_path])
    arr, meta = open_zstack_with_metadata(input_path, channel=channel)
    result = operation(arr)
    if tuple(result.shape) != tuple(arr.shape):
        raise ValueError(f"operation changed the shape {arr.shape} -> {result.shape}")
    with dask_client(scheduler, workers):
        return write_ome_zarr(
            output_path,
            result,
            axes=writable_axes(meta.axes),
            scale=meta.scale,
            translate=meta.translate,
            units=meta.units,
            channel_names=meta.channel_names if "c" in meta.axes else None,
            axis_names=meta.axis_names,
            axis_types=meta.axis_types,
            attrs={
                "linblur": {
                    "source": str(Path(input_path)),
                    "channel": meta.channel_names[0] if meta.channel_names and "c" not in meta.axes else None,
                    **({"fields": list(meta.extra["fields"])} if meta.extra.get("fields") else {}),
                    **({"planes": [int(z) for z in meta.extra["planes"]]} if meta.extra.get("planes") else {}),
                    **(attrs or {}),
                }
            },
            overwrite=overwrite,
            source_paths=[input_path],
        )


def compute_with_client(lazy, *, scheduler: str | None = None, workers: int | None = None):
    """Compute a (small) lazy result, such as a per-plane focus curve, on a distributed client."""
    with dask_client(scheduler, workers) as client:
        return client.compute(lazy).result()
