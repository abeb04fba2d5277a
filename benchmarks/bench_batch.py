"""Batch runs on a local dask cluster (``linblur defocus-map`` / ``linblur deblur`` on OME-Zarr stacks).

A z-stack of 12 microscopy-like 512x512 planes is written as OME-Zarr; :func:`napari_linblur.batch.run_batch`
maps the shipped ``defocus-default`` over it on a :class:`~distributed.LocalCluster` of 2 single-threaded worker
processes, (a) as it starts them (glibc's default memory trimming in the workers) and (b) with distributed's own
worker default ``MALLOC_TRIM_THRESHOLD_=65536`` (set in the environment, which the workers inherit), which
``run_batch`` used before session 20. The baseline is the plain loop a user would write: every plane through
``estimate_defocus`` in this process on one thread, with no dask. Times are the best of 2 interleaved rounds; the
cluster start-up and the OME-Zarr write are inside every batch time.

A third section measures what the client spends to submit one plane's task to a cluster (``client.compute`` of one
plane, as the OME-Zarr writer submits them), for stacks of 500 (the baseline) and 8000 tiny planes, and the size of
one plane's task: a cost that grows with the stack's plane count makes a plate of thousands of planes quadratic
(each operation built its per-plane graph with dask's ``block_info`` until session 22), and the network's weights
in every task (``deblur``, ``synthesize_blur`` until session 22) fill the client's and the scheduler's memory.

A second section reads inputs chunked along Z: 32 planes of 1024² uint16 stored one plane per chunk (the baseline)
or 16 planes per chunk, through ``run_batch`` with a cheap per-plane filter, so that reading dominates. Each plane is
one task, so a 16-plane chunk is decompressed once per plane it holds.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

from _timing import best_times


def run(report) -> None:
    import numpy as np
    import torch

    from napari_linblur.batch import run_batch
    from napari_linblur.inference.defocus_ops import estimate_defocus
    from napari_linblur.io.omezarr import write_ome_zarr
    from napari_linblur.optics.defocus_maps import gaussian_random_field_map
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.synth.phantoms import cell_phantom

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    planes = []
    for _ in range(12):
        content = cell_phantom((512, 512), rng=rng)[0]
        sig = gaussian_random_field_map((512, 512), sigma_range=(0, 8), correlation_px=64, rng=rng)
        planes.append(poisson_gaussian(render_spatially_varying(content, sig) * 800 + 16, read_noise=2,
                                       offset=100, rng=rng))
    stack = np.clip(np.stack(planes), 0, 65535).astype(np.uint16)
    op = partial(estimate_defocus, model="defocus-default", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        src = write_ome_zarr(Path(tmp) / "in.ome.zarr", stack, axes="zyx", scale=(2.0, 0.65, 0.65))

        def batch(trim: str | None):
            old = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            if trim is not None:
                os.environ["MALLOC_TRIM_THRESHOLD_"] = trim
            try:
                return run_batch(op, src, Path(tmp) / "out.ome.zarr", workers=2, overwrite=True)
            finally:
                os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
                if old is not None:
                    os.environ["MALLOC_TRIM_THRESHOLD_"] = old

        calls = {
            "loop": lambda: [op(p) for p in stack],
            "batch": lambda: batch(None),
            "batch trim": lambda: batch("65536"),
        }
        t, _ = best_times(calls, repeats=2)
    base = t["loop"]
    report("batch defocus-map, 12 planes of 512x512, LocalCluster of 2 single-threaded workers", [
        {"method": "plain loop in one process, 1 thread (baseline)", "seconds": base, "time / loop": 1.0},
        {"method": "run_batch, 2 workers (as it starts them)", "seconds": t["batch"], "time / loop": t["batch"] / base},
        {"method": "run_batch, 2 workers, MALLOC_TRIM_THRESHOLD_=65536 (distributed's default; before session 20)",
         "seconds": t["batch trim"], "time / loop": t["batch trim"] / base},
    ])
    run_z_chunks(report)
    run_submission(report)


def run_submission(report) -> None:
    import time

    import cloudpickle
    import dask
    import dask.array as da
    import zarr
    from distributed import Client, LocalCluster

    import napari_linblur as nl

    ops = {"estimate_defocus": lambda x: nl.estimate_defocus(x, device="cpu"),
           "deblur (network)": lambda x: nl.deblur(x, device="cpu"),
           "synthesize_blur": lambda x: nl.synthesize_blur(x, x, 0.5, device="cpu")}
    rows = []
    with (tempfile.TemporaryDirectory() as tmp,
          LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
          Client(cluster) as client):
        for name, op in ops.items():
            per_plane = {}
            for n in (500, 8000):  # planes never written: zarr's fill value, so nothing is read from disk
                z = zarr.open_array(str(Path(tmp) / f"{n}.zarr"), mode="a", shape=(n, 64, 64), chunks=(1, 64, 64),
                                    dtype="uint16", fill_value=100)
                lazy = op(da.from_zarr(z))
                t0 = time.perf_counter()
                futures = [client.compute(lazy[i:i + 1]) for i in range(40)]
                per_plane[n] = (time.perf_counter() - t0) / 40
                client.cancel(futures)
            (one,) = dask.optimize(lazy[1:2])
            size = len(cloudpickle.dumps(dict(one.__dask_graph__())))
            rows.append({"operation": name, "ms per plane, 500 planes (baseline)": 1e3 * per_plane[500],
                         "ms per plane, 8000 planes": 1e3 * per_plane[8000],
                         "8000 / 500": per_plane[8000] / per_plane[500], "one plane's task, KiB": size / 1024})
    report("submitting one plane's task to a cluster: client time by stack size, and the task's size", rows)


def _box3(plane):
    """A cheap per-plane operation (3x3 box filter), so that reading and writing dominate."""
    import numpy as np
    from scipy import ndimage

    return ndimage.uniform_filter(plane.astype(np.float32), 3)


def run_z_chunks(report) -> None:
    import numpy as np

    from napari_linblur.batch import run_batch
    from napari_linblur.io.omezarr import write_ome_zarr

    x = np.random.default_rng(0).integers(0, 4000, (32, 1024, 1024), dtype=np.uint16)
    with tempfile.TemporaryDirectory() as tmp:
        srcs = {cz: write_ome_zarr(Path(tmp) / f"in{cz}.zarr", x, axes="zyx", chunks=(cz, 1024, 1024))
                for cz in (1, 16)}
        calls = {cz: (lambda cz=cz: run_batch(_box3, srcs[cz], Path(tmp) / f"out{cz}.zarr", workers=2,
                                              overwrite=True)) for cz in srcs}
        t, _ = best_times(calls, repeats=2)
    report("batch input chunked along Z, 32 planes of 1024², 3x3 box filter, 2 workers", [
        {"input chunks": "1 plane per chunk (baseline)", "seconds": t[1], "time / baseline": 1.0},
        {"input chunks": "16 planes per chunk", "seconds": t[16], "time / baseline": t[16] / t[1]},
    ])
