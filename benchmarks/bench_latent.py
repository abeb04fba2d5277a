"""Blur synthesis speed: the shipped ``ae-default`` vs pixel-space blending and the paper's architecture.

Speed is reported as ratios measured in the same run on the same machine (``benchmarks/run.py``). The paper
configuration runs with random weights (its speed does not depend on them) through the same tiled path.
"""

from __future__ import annotations

import numpy as np

from _timing import best_times


def run(report) -> None:
    import torch

    import napari_linblur as nl
    from napari_linblur.models.autoencoder import LinearLatentAE

    torch.set_num_threads(1)  # as the other benchmarks: one thread, the same on any machine (run.py restores it)
    rng = np.random.default_rng(0)
    shape = (520, 696)  # one BBBC006 plane
    a = (100 + rng.poisson(200, shape)).astype(np.uint16)
    c = (100 + rng.poisson(150, shape)).astype(np.uint16)
    shipped = nl.load_model("ae-default", device="cpu") if "ae-default" in nl.list_models() else None
    torch.manual_seed(0)
    paper = LinearLatentAE(config="paper").eval()
    paper.task = "ae"
    models = [("paper config (random weights)", paper)]
    if shipped is not None:
        models.insert(0, ("ae-default (shipped)", shipped))
    # interleaved rounds after one warm-up call each (benchmarks/_timing.best_times): load changes on a shared
    # machine hit every method alike
    calls = {"pixel blending": lambda: 0.5 * a.astype(np.float32) + 0.5 * c.astype(np.float32)}
    calls.update({name: (lambda m=m: nl.synthesize_blur(a, c, 0.5, model=m, device="cpu")) for name, m in models})
    times, _ = best_times(calls, repeats=2)
    t_blend = times["pixel blending"]
    rows = [{"method": "pixel blending", "seconds_per_plane": t_blend, "ratio_vs_blending": 1.0, "params": 0}]
    for name, m in models:
        rows.append({"method": name, "seconds_per_plane": times[name], "ratio_vs_blending": times[name] / t_blend,
                     "params": int(sum(p.numel() for p in m.parameters()))})
    if shipped is not None:
        rows.append({"method": "paper / ae-default time ratio", "seconds_per_plane": float("nan"),
                     "ratio_vs_blending": times["paper config (random weights)"] / times["ae-default (shipped)"],
                     "params": 0})
    report(f"latent blur synthesis, one {shape[0]}x{shape[1]} plane, torch threads {torch.get_num_threads()}", rows)
    report("tile consistency of the default architecture by normalization layer", tile_consistency())


def tile_consistency() -> list[dict]:
    """Max |tiled - whole| / intensity span of ``synthesize_blur`` (default 256-px tiles vs one pass), default
    architecture with random weights (seed 0) and each normalization layer: per-tile statistics (GroupNorm)
    make every tile normalize differently, which shows up as seams."""
    import torch
    from scipy.ndimage import gaussian_filter

    import napari_linblur as nl
    from napari_linblur.models.autoencoder import LinearLatentAE

    rng = np.random.default_rng(0)
    a = gaussian_filter(rng.random((384, 448)), 2).astype(np.float32) * 1000
    c = gaussian_filter(a, 4)
    rows = []
    for norm in ("none", "group", "batch"):
        torch.manual_seed(0)
        m = LinearLatentAE(config="default", norm=norm).eval()
        m.task = "ae"
        whole = nl.synthesize_blur(a, c, 0.5, model=m, tile=512, device="cpu")
        tiled = nl.synthesize_blur(a, c, 0.5, model=m, device="cpu")
        span = float(np.percentile(whole, 99.9) - np.percentile(whole, 0.1))
        rows.append({"norm": norm + (" (eval statistics)" if norm == "batch" else ""),
                     "max_tile_error_over_span": float(np.abs(tiled - whole)[16:-16, 16:-16].max() / span)})
    return rows
