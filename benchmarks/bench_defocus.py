"""Defocus maps (issue 4): speed on one 1024x1024 image and accuracy on held-out spatially varying images.

Speed: ``estimate_defocus`` with the shipped ``defocus-default`` (fp32, bf16 autocast, and the default
``amp="auto"``; automatic tiles, and the 256-px tiles that were the default before) against the two classical
estimators of :mod:`napari_linblur.baselines.defocus_classical` (calibrated local focus measure, Zhuo & Sim 2011),
all on one CPU thread. Times are the best of 3 interleaved rounds; ratios are to the calibrated focus-measure map
measured in the same run.

Accuracy: the same three estimators on 4 held-out 192x192 microscopy-like images (cell phantoms, σ maps in
[0, 10] px, true spatially varying renderer, camera noise) — :func:`napari_linblur.evaluation.defocus` with
fewer images than ``linblur evaluate defocus``.
"""

from __future__ import annotations

import time
import warnings

from _timing import best_times


def run(report) -> None:
    import numpy as np
    import torch

    from napari_linblur.baselines.defocus_classical import (
        focus_measure_sigma_map,
        zhuo_sim_defocus_map,
    )
    from napari_linblur.evaluation.defocus import EvalConfig, evaluate_spatially_varying
    from napari_linblur.inference.defocus_ops import estimate_defocus
    from napari_linblur.models.hrnet import HDMENet, preset_config
    from napari_linblur.models.registry import list_models, load_model
    from napari_linblur.optics.defocus_maps import gaussian_random_field_map
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.synth.phantoms import cell_phantom

    torch.set_num_threads(1)
    if "defocus-default" in list_models():
        net, which = load_model("defocus-default", device="cpu"), "defocus-default"
    else:  # same architecture and cost, untrained
        net = HDMENet(**preset_config("default")).eval()
        net.task, which = "defocus", "HDMENet default config (untrained: no shipped weights)"
    rng = np.random.default_rng(0)
    content = cell_phantom((1024, 1024), rng=rng)[0]
    sig = gaussian_random_field_map((1024, 1024), sigma_range=(0, 10), correlation_px=64, rng=rng)
    img = poisson_gaussian(render_spatially_varying(content, sig) * 800 + 16, read_noise=2, offset=100, rng=rng)
    img = img.astype(np.float32)

    calls = {
        "fm": lambda: focus_measure_sigma_map(img),
        "zs": lambda: zhuo_sim_defocus_map(img),
        "fp32": lambda: estimate_defocus(img, model=net, device="cpu", amp="off"),
        "bf16": lambda: estimate_defocus(img, model=net, device="cpu", amp="bf16"),
        "auto": lambda: estimate_defocus(img, model=net, device="cpu"),
        "patch": lambda: estimate_defocus(img, model=net, device="cpu", mode="patch"),
        "fp32 tile 256": lambda: estimate_defocus(img, model=net, device="cpu", amp="off", tile=256, batch_size=4),
        "fp32 tile 528": lambda: estimate_defocus(img, model=net, device="cpu", amp="off", tile=528, overlap=32),
    }
    with warnings.catch_warnings():  # the former defaults' small overlaps warn about seams: expected here
        warnings.filterwarnings("ignore", message="tiles overlapping by", category=UserWarning)
        t, out = best_times(calls, repeats=3)
    t_fm = t["fm"]
    dmax = float(abs(out["bf16"] - out["fp32"]).max())
    rows = [
        {"method": "focus-measure map (calibrated)", "seconds": t_fm, "time / focus-measure": 1.0},
        {"method": "Zhuo & Sim 2011", "seconds": t["zs"], "time / focus-measure": t["zs"] / t_fm},
        {"method": f"HDME-Net pixel ({which}), fp32", "seconds": t["fp32"], "time / focus-measure": t["fp32"] / t_fm},
        {"method": f"HDME-Net pixel, bf16 autocast (max |Δσ| vs fp32 {dmax:.3f} px)", "seconds": t["bf16"],
         "time / focus-measure": t["bf16"] / t_fm},
        {"method": "HDME-Net pixel, amp='auto' (the default)", "seconds": t["auto"],
         "time / focus-measure": t["auto"] / t_fm},
        {"method": "HDME-Net patch 64, amp='auto'", "seconds": t["patch"], "time / focus-measure": t["patch"] / t_fm},
        {"method": "HDME-Net pixel, fp32, 256-px tiles (the default before session 12)", "seconds": t["fp32 tile 256"],
         "time / focus-measure": t["fp32 tile 256"] / t_fm},
        {"method": "HDME-Net pixel, fp32, 2x2 tiles of 528 px, 32 px overlap (the default before session 15; "
                   "now 2x2 tiles of 576 px, 128 px overlap)", "seconds": t["fp32 tile 528"],
         "time / focus-measure": t["fp32 tile 528"] / t_fm},
    ]
    report("defocus map speed, 1024x1024, 1 CPU thread", rows)

    cfg = EvalConfig(n_images=4, size=192)
    est = {
        f"HDME-Net ({which})": lambda im: estimate_defocus(im, model=net, device="cpu", amp="off"),
        "focus-measure (calibrated)": lambda im: focus_measure_sigma_map(im.astype(np.float64)),
        "Zhuo & Sim 2011": lambda im: zhuo_sim_defocus_map(im.astype(np.float64)),
    }
    res = evaluate_spatially_varying(est, cfg)
    rows = []
    for kind, table in res.items():
        for label, r in table.items():
            m = r["all"]
            rows.append({"content": kind, "method": label, "mae_px": m["mae_px"], "rmse_px": m["rmse"],
                         "abs_rel": m["abs_rel"], "delta1": m["delta1"]})
    report("defocus map accuracy, 4 held-out 192x192 images per content, sigma in [0, 10] px", rows)


def design(report, *, steps: int = 80) -> None:
    """Measurements behind the ``default`` configuration (run: ``python benchmarks/bench_defocus.py --design``).

    1. Training-step time of candidate widths (batch 8 of 96x96, 1 thread, AdamW).
    2. Normalization layers: ``steps`` training steps (48x48 shuffle-content crops, lr 1e-3, seed 0) with
       BatchNorm, GroupNorm or none; then, in eval mode, the MAE and the correlation of predicted vs true σ on one
       fresh batch.
    """
    import numpy as np
    import torch

    from napari_linblur.models.hrnet import HDMENet, preset_config
    from napari_linblur.training.defocus import DefocusDataConfig, DefocusTask

    torch.set_num_threads(1)
    rows = []
    for width in (16, 12):
        cfg = dict(preset_config("default"), width=width, stem_channels=width, head_channels=2 * width)
        net = HDMENet(**cfg)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        x, y = torch.rand(8, 1, 96, 96), torch.rand(8, 1, 96, 96)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            loss = (net(x) - y).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
        n = sum(p.numel() for p in net.parameters())
        rows.append({"width": width, "params_M": n / 1e6, "file_MB": 4 * n / 1e6, "s_per_step": min(times[1:])})
    report("HDMENet default: training-step time vs width (batch 8 of 96x96, 1 thread)", rows)

    rows = []
    for norm in ("batch", "group", "none"):
        task = DefocusTask(dict(preset_config("default"), norm=norm),
                           DefocusDataConfig(content="shuffle", pool_size=64, crop=48, batch_size=8, render_size=96),
                           seed=0)
        torch.manual_seed(0)
        net = task.build_model()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        for step in range(steps):
            loss, _ = task.loss(net, task.batch(step))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
        net.eval()
        with torch.no_grad():
            xv, sv = task.batch(10**6)
            p = net(xv)
        rows.append({"norm": norm, "steps": steps, "eval_mae_px": float((p - sv).abs().mean()),
                     "corr_pred_true": float(np.corrcoef(p.numpy().ravel(), sv.numpy().ravel())[0, 1])})
    report(f"HDMENet default: normalization layers after {steps} steps (48x48 shuffle crops, lr 1e-3)", rows)


if __name__ == "__main__":
    import sys

    def _print(section, rows):
        print(f"\n## {section}")
        for r in rows:
            print(" | ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))

    if "--design" in sys.argv:
        design(_print)
    else:
        run(_print)
