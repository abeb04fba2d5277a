"""Memory of the per-plane camera-noise estimate (the noise channel of ``estimate_defocus`` on a raw plane).

:func:`napari_linblur.optics.noise.estimate_variance_model` and :func:`~napari_linblur.optics.noise.noise_std_map`
on one uint16 3000x3000 plane: the peak of memory allocated through numpy (``tracemalloc``) during the call,
reported against the plane's own size (the baseline, 2 bytes per pixel) measured in the same run. Before session
20 the estimate held the whole plane in float64 several times over (peak 20x the plane here) and the map took 10x
the plane; the estimate now works in strips of about 1 Mpx and the map in place, with identical results.
"""

from __future__ import annotations

import tracemalloc


def run(report) -> None:
    import numpy as np

    from napari_linblur.optics.noise import estimate_variance_model, noise_std_map, poisson_gaussian

    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(50, 2000, 3000), (3000, 1))
    plane = np.round(np.clip(poisson_gaussian(ramp, gain=2.0, read_noise=3.0, offset=100.0, rng=rng), 0,
                             65535)).astype(np.uint16)
    del ramp

    def peak(fn):
        tracemalloc.start()
        try:
            out = fn()
            return tracemalloc.get_traced_memory()[1], out
        finally:
            tracemalloc.stop()

    p_est, (a, b) = peak(lambda: estimate_variance_model(plane))
    p_map, _ = peak(lambda: noise_std_map(plane, a, b))
    rows = [
        {"step": "the uint16 plane itself (baseline)", "peak MB": plane.nbytes / 1e6, "peak / plane": 1.0},
        {"step": "estimate_variance_model", "peak MB": p_est / 1e6, "peak / plane": p_est / plane.nbytes},
        {"step": "noise_std_map (float32 map out)", "peak MB": p_map / 1e6, "peak / plane": p_map / plane.nbytes},
    ]
    report("camera-noise estimate, peak numpy memory, one 3000x3000 uint16 plane", rows)
