"""Single-image deblurring speed and quality on one 1024x1024 image (issue 5).

The network (shipped ``deblur-default``, the ``lean`` layout; bf16 where the CPU runs it natively, and fp32) against
Wiener and 10 Richardson–Lucy iterations given the TRUE PSF (Born–Wolf, 8 µm defocus), all on one CPU thread (torch
threads = 1; scipy.fft runs single-threaded by default), plus cheaper layouts of the architecture (untrained, timing
only). Times are the best of 3 interleaved rounds after a warm-up call; ratios are to 10 RL iterations measured
in the same run. PSNR is against the sharp field (data_range = its max).
"""

from __future__ import annotations

from _timing import best_times

#: other layouts of the architecture, timed untrained (weights do not change the cost)
_LEAN = {"full_kernel": "shared", "up": "conv_upsample"}
CANDIDATES = {
    "classic (deblur-default before the lean model: kernels 3/5/5/5, per-pixel full-scale kernels)":
        {"widths": (16, 32, 48), "kernel_size": (3, 5, 5, 5)},
    "lean, widths 12/32/48": {"widths": (12, 32, 48), "kernel_size": (3, 3, 5, 5), **_LEAN},
    "lean, widths 12/24/48": {"widths": (12, 24, 48), "kernel_size": (3, 3, 5, 5), **_LEAN},
    "lean, one-tap full-scale block (residual only)": {"widths": (16, 32, 48), "kernel_size": (1, 3, 5, 5), **_LEAN},
    "widths 8/16/32 (config fast)": {"widths": (8, 16, 32), "kernel_size": (3, 5, 5, 5)},
}


def run(report) -> None:
    import numpy as np
    import torch

    from napari_linblur.baselines.richardson_lucy import richardson_lucy
    from napari_linblur.baselines.wiener import best_wiener, wiener_deconvolve
    from napari_linblur.inference.deblur_ops import deblur, resolve_amp
    from napari_linblur.metrics.image import psnr
    from napari_linblur.models.drbnet import CONFIGS, DRBNet
    from napari_linblur.models.registry import list_models, load_model
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.psf import OpticalSetup
    from napari_linblur.training.deblur import cell_field

    torch.set_num_threads(1)
    if "deblur-default" in list_models():
        net, which = load_model("deblur-default", device="cpu"), "deblur-default"
    else:  # same architecture and cost, untrained
        net, which = DRBNet(**CONFIGS["default"]).eval(), "DRBNet default config (untrained: no shipped weights)"
    rng = np.random.default_rng(0)
    sharp = cell_field(rng, 1024).astype(np.float64) * 1000.0
    psf = OpticalSetup().psf(8.0)
    blurry = poisson_gaussian(np.clip(fft_convolve(sharp, psf), 0, None), read_noise=2.0, rng=rng).astype(np.float32)

    amp = resolve_amp("auto", torch.device("cpu"))
    _, wbal, wpsnr = best_wiener(blurry, psf, sharp)
    # every timed call, interleaved (best of 3 rounds), so a shared machine's load changes hit all of them alike
    calls = {"rl": lambda: richardson_lucy(blurry, psf, iterations=10),
             "wiener": lambda: wiener_deconvolve(blurry, psf, 0.01)}
    for a in dict.fromkeys([amp, "off"]):
        calls[f"net {a}"] = lambda a=a: deblur(blurry, method="network", model=net, device="cpu", amp=a)
    for label, cfg in CANDIDATES.items():  # timing only: cheaper layouts of the same architecture, untrained
        cand = DRBNet(**cfg).eval()
        calls[label] = lambda cand=cand: deblur(blurry, method="network", model=cand, device="cpu", amp=amp)
    times, outs = best_times(calls, repeats=3)
    t_rl = times["rl"]
    rows = [
        {"method": "input", "seconds": 0.0, "time / RL10": 0.0, "psnr_db": psnr(sharp, blurry)},
        {"method": "richardson-lucy x10 (true PSF)", "seconds": t_rl, "time / RL10": 1.0,
         "psnr_db": psnr(sharp, outs["rl"])},
        {"method": f"wiener (true PSF, best balance {wbal:.2g})", "seconds": times["wiener"],
         "time / RL10": times["wiener"] / t_rl, "psnr_db": wpsnr},
    ]
    for a in dict.fromkeys([amp, "off"]):
        rows.append({"method": f"network ({which}, amp={a})", "seconds": times[f"net {a}"],
                     "time / RL10": times[f"net {a}"] / t_rl, "psnr_db": psnr(sharp, outs[f"net {a}"])})
    for label in CANDIDATES:
        rows.append({"method": f"DRBNet {label}, untrained, timing only (amp={amp})", "seconds": times[label],
                     "time / RL10": times[label] / t_rl, "psnr_db": float("nan")})
    report("deblur: 1024x1024, 1 CPU thread, 8 µm defocus (Born-Wolf), Poisson-Gaussian noise", rows)
