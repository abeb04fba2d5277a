"""Evaluation of single-image deblurring (issue 5) against Wiener and Richardson–Lucy given the TRUE PSF.

Held-out data (:func:`napari_linblur.training.deblur.make_test_set`, seeds never used in training):

* ``focus`` — through-focus planes (Born–Wolf PSF of the recipe's :class:`OpticalSetup`) at ``d`` µm, with
  Poisson–Gaussian noise; the reference is the sharp field. Baselines get the true PSF of ``d``; Wiener's balance
  and RL's iteration count are chosen **per image on the test image itself** (``best_wiener``,
  ``best_richardson_lucy``) — the strongest version of the baselines.
* ``varying`` — true spatially varying Gaussian blur from GRF / region maps (σ up to 1.5–4 px). A single PSF
  cannot be "the" true PSF here, so the baselines get the Gaussian PSF of the true map's 25/50/75/90 % σ quantile,
  whichever scores best on the test image (again chosen on the test set).
* ``captured`` — captured-style pairs z_k → z_0 (misaligned, differently exposed, noisier) as in stage 2; the
  reference is the (noisy, shifted) z_0 acquisition — this is the domain where the stage-2 ablation shows.

PSNR uses ``data_range = max(reference)`` (paper 000, eq. 7), per image then averaged. SSIM
(:func:`napari_linblur.metrics.image.ssim`, skimage's 7x7 uniform window) is scored on the very same output
images against the same reference with the same convention (``data_range = max(reference)``, per image, then
averaged); for Wiener and RL that is the output whose PSNR is reported (the balance / iteration / PSF chosen by
PSNR, not re-chosen for SSIM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["evaluate_deblur", "speed_comparison", "to_markdown"]


def _check_depths(depths: Any) -> tuple[float, ...]:
    """``depths`` as finite defocus distances in µm, checked before any model loads or image renders."""
    try:
        out = tuple(float(d) for d in depths)
    except (TypeError, ValueError):
        raise TypeError(f"depths must be a sequence of defocus distances in µm (e.g. (1, 2, 4, 6, 8)), got "
                        f"{depths!r}") from None
    bad = [d for d in out if not np.isfinite(d)]
    if not out or bad:
        raise ValueError(f"depths must be finite defocus distances in µm (e.g. (1, 2, 4, 6, 8)), got {list(depths)}")
    return out


def _load(model: Any):
    from napari_linblur.models.registry import resolve_model

    return resolve_model(model, "deblur", device="cpu")


def _maybe(fn: Callable, *args, **kwargs):
    """Run an optional method; return (result, None) or (None, reason)."""
    try:
        return fn(*args, **kwargs), None
    except (ValueError, ImportError, FileNotFoundError) as err:
        return None, str(err).splitlines()[0][:160]


def speed_comparison(model: Any = None, *, side: int = 1024, threads: int | None = 1, rl_iterations: int = 10,
                     repeats: int = 2, seed: int = 0) -> dict:
    """Wall time of the network vs ``rl_iterations`` Richardson–Lucy iterations and Wiener on one image.

    All run on the CPU with the same number of threads (torch threads and ``scipy.fft`` workers = ``threads``,
    default: torch's current count when ``threads`` is None); the minimum of ``repeats`` runs,
    interleaved (network, network fp32, RL, Wiener, then again), after one warm-up call of the network.

    Returns
    -------
    dict
        ``network_s``, ``rl_s``, ``wiener_s``, ``network_over_rl`` (< 1 means faster than RL).
    """
    import scipy.fft as sfft
    import torch

    from napari_linblur.baselines.richardson_lucy import richardson_lucy
    from napari_linblur.baselines.wiener import wiener_deconvolve
    from napari_linblur.inference.deblur_ops import deblur, resolve_amp
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.psf import OpticalSetup
    from napari_linblur.training.deblur import cell_field

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        net = _load(model)
        rng = np.random.default_rng(seed)
        sharp = cell_field(rng, side).astype(np.float64) * 1000
        psf = OpticalSetup().psf(8.0)
        img = (fft_convolve(sharp, psf) + rng.normal(0, 5, sharp.shape)).astype(np.float32)
        img = np.clip(img, 0, None)
        # the same thread count for everyone: torch gets ``threads``, scipy.fft (RL, Wiener) as many workers
        amp = resolve_amp("auto", torch.device("cpu"))
        workers = int(threads) if threads else torch.get_num_threads()

        def fft_threads(f):
            def run():
                with sfft.set_workers(workers):
                    return f()
            return run

        runs = {
            "net": lambda: deblur(img, method="network", model=net, device="cpu", amp=amp),
            "net32": lambda: deblur(img, method="network", model=net, device="cpu", amp="off"),
            "rl": fft_threads(lambda: richardson_lucy(img, psf, iterations=rl_iterations)),
            "wiener": fft_threads(lambda: wiener_deconvolve(img, psf, 0.01)),
        }
        runs["net"]()  # warm-up (first-call allocations, oneDNN primitive creation)
        best = dict.fromkeys(runs, np.inf)
        for _ in range(repeats):  # interleaved, so load changes on a shared machine hit every method alike
            for key, f in runs.items():
                t0 = time.perf_counter()
                f()
                best[key] = min(best[key], time.perf_counter() - t0)
        t_net, t_net32, t_rl, t_w = best["net"], best["net32"], best["rl"], best["wiener"]
    finally:
        torch.set_num_threads(old)
    return {
        "side": side,
        "threads": threads,
        "psf_side": int(psf.shape[0]),
        "amp": amp,
        "network_s": round(t_net, 3),
        "network_fp32_s": round(t_net32, 3),
        f"rl{rl_iterations}_s": round(t_rl, 3),
        "wiener_s": round(t_w, 3),
        "network_over_rl": round(t_net / t_rl, 3),
        "network_fp32_over_rl": round(t_net32 / t_rl, 3),
    }


def evaluate_deblur(
    models: dict[str, Any] | None = None,
    *,
    main: str | None = None,
    n: int = 8,
    side: int = 128,
    depths=(1.0, 2.0, 4.0, 6.0, 8.0),
    seed: int = 2_000_000,
    rl_max_iter: int = 60,
    reblur: bool = True,
    defocus_model: Any = None,
    ae_model: Any = None,
    speed: bool = True,
    speed_side: int = 1024,
    tta: int = 1,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run the whole deblurring evaluation in one go.

    Parameters
    ----------
    models : dict name -> model, optional
        Networks to compare (paths, names or modules); default ``{"deblur-default": None}``. The ablation passes
        stage-1 / stage-2-L1 / stage-2-L1+feature models here.
    main : str, optional
        Which of ``models`` the bars are checked for (default: the first).
    n : int
        Test images per condition.
    side : int
        Test image side.
    depths : sequence of float
        Defocus distances (µm) of the through-focus planes.
    seed : int
        Test-set seed (disjoint from training seeds).
    rl_max_iter : int
        Richardson–Lucy iterations searched for the best one.
    reblur : bool
        Also evaluate ``reblur-extrapolate`` and ``guided`` (need ``ae-default`` / ``defocus-default``).
    defocus_model, ae_model : optional
        Models for the defocus map and the autoencoder (None = shipped defaults).
    speed : bool
        Time the main network against 10 RL iterations on a ``speed_side``² image (1 thread).
    tta : {1, 2, 4, 8}
        Also score the main network with its self-ensemble (``deblur(..., tta=)``; row ``"<main> xN"``). The bars
        are checked on the plain network (``tta`` multiplies its time).

    Returns
    -------
    dict
        ``focus`` (per depth), ``varying``, ``captured``: mean PSNR (dB) per method (``focus`` rows also hold
        ``rl_best_iter``); ``ssim``: the mean SSIM of the same outputs, as a parallel mapping
        ``{"focus": {depth: {method: ssim}}, "varying": {method: ssim}, "captured": {method: ssim}}`` with the
        same method names (no ``rl_best_iter``); ``bars`` (PSNR only); ``speed``; ``notes``.
    """
    from napari_linblur.baselines.richardson_lucy import best_richardson_lucy
    from napari_linblur.baselines.wiener import best_wiener
    from napari_linblur.inference.deblur_ops import deblur
    from napari_linblur.inference.tta import check_tta
    from napari_linblur.metrics.image import psnr, ssim
    from napari_linblur.optics.psf import equivalent_sigma, gaussian_psf
    from napari_linblur.training.deblur import make_test_set

    tta = check_tta(tta)
    depths = _check_depths(depths)
    say = progress or (lambda s: None)
    models = dict(models or {"deblur-default": None})
    main = main or next(iter(models))
    nets = {k: _load(v) for k, v in models.items()}
    notes: list[str] = []
    reblur_ok = reblur

    def score(row: dict, srow: dict, key: str, sharp: np.ndarray, out: np.ndarray) -> None:
        """PSNR into ``row`` and SSIM into ``srow`` of one output, both with ``data_range = max(sharp)``."""
        row[key] = psnr(sharp, out)
        srow[key] = ssim(sharp, out)

    def run_nets(blurry, sharp, row, srow, smap=None, kind="focus"):
        nonlocal reblur_ok
        for name, net in nets.items():
            score(row, srow, name, sharp, deblur(blurry, method="network", model=net, device="cpu"))
        score(row, srow, f"{main} fp32", sharp,
              deblur(blurry, method="network", model=nets[main], device="cpu", amp="off"))
        if tta > 1:
            score(row, srow, f"{main} x{tta}", sharp,
                  deblur(blurry, method="network", model=nets[main], device="cpu", tta=tta))
        if kind == "varying":
            out = deblur(blurry, method="guided", model=nets[main], sigma_map=smap, device="cpu")
            score(row, srow, "guided (true map)", sharp, out)
            out, err = _maybe(deblur, blurry, method="guided", model=nets[main], defocus_model=defocus_model,
                              device="cpu")
            if out is not None:
                score(row, srow, "guided (estimated map)", sharp, out)
            else:
                notes.append(f"guided with an estimated map not evaluated: {err}")
        if not reblur_ok:
            return
        # re-blur + extrapolation with the TRUE σ map (an oracle: favours it over the blind network) ...
        out, err = _maybe(deblur, blurry, method="reblur-extrapolate", model=ae_model, sigma_map=smap, device="cpu")
        if out is None:
            notes.append(f"reblur-extrapolate not evaluated: {err}")
            reblur_ok = False
            return
        score(row, srow, "reblur-extrapolate (true σ)", sharp, out)
        # ... and blind, with the defocus-map network
        out, err = _maybe(deblur, blurry, method="reblur-extrapolate", model=ae_model, defocus_model=defocus_model,
                          device="cpu")
        if out is not None:
            score(row, srow, "reblur-extrapolate (estimated σ)", sharp, out)
        else:
            notes.append(f"reblur-extrapolate with an estimated map not evaluated: {err}")

    result: dict[str, Any] = {"focus": {}, "n": n, "side": side, "seed": seed, "models": list(models), "main": main}
    ssims: dict[str, Any] = {"focus": {}}
    # through-focus planes
    for j, d in enumerate(depths):
        rows, srows = [], []
        for it in make_test_set("focus", n, seed=seed + 1000 * j, side=side, d_um=float(d)):
            s, b, psf = it["sharp"], it["blurry"], it["psf"]
            row: dict[str, float] = {}
            srow: dict[str, float] = {}
            score(row, srow, "input", s, b)
            w = best_wiener(b, psf, s)
            row["wiener (true PSF)"], srow["wiener (true PSF)"] = w[2], ssim(s, w[0])
            rl = best_richardson_lucy(b, psf, s, max_iter=rl_max_iter)
            row["richardson-lucy (true PSF)"], srow["richardson-lucy (true PSF)"] = rl[2], ssim(s, rl[0])
            row["rl_best_iter"] = rl[1]
            run_nets(b, s, row, srow, smap=np.full(b.shape, equivalent_sigma(psf), np.float32))
            rows.append(row)
            srows.append(srow)
        result["focus"][f"{d:g}"] = _mean(rows)
        ssims["focus"][f"{d:g}"] = _mean(srows, digits=4)
        say(f"focus d={d:g} µm: {_short(result['focus'][f'{d:g}'])}; SSIM {_short(ssims['focus'][f'{d:g}'], 3)}")
    # spatially varying blur
    rows, srows = [], []
    for it in make_test_set("varying", n, seed=seed + 500_000, side=side):
        s, b, smap = it["sharp"], it["blurry"], it["sigma_map"]
        row, srow = {}, {}
        score(row, srow, "input", s, b)
        qs = [float(np.quantile(smap, q)) for q in (0.25, 0.5, 0.75, 0.9)]
        psfs = [gaussian_psf(max(q, 0.05)) for q in qs]
        # the PSF whose best output scores the highest PSNR; SSIM is that same output's
        w = max((best_wiener(b, p, s) for p in psfs), key=lambda t: t[2])
        row["wiener (true PSF)"], srow["wiener (true PSF)"] = w[2], ssim(s, w[0])
        rl = max((best_richardson_lucy(b, p, s, max_iter=rl_max_iter) for p in psfs), key=lambda t: t[2])
        row["richardson-lucy (true PSF)"], srow["richardson-lucy (true PSF)"] = rl[2], ssim(s, rl[0])
        run_nets(b, s, row, srow, smap=smap, kind="varying")
        rows.append(row)
        srows.append(srow)
    result["varying"] = _mean(rows)
    ssims["varying"] = _mean(srows, digits=4)
    say(f"varying: {_short(result['varying'])}; SSIM {_short(ssims['varying'], 3)}")
    # captured-style pairs (stage-2 domain)
    rows, srows = [], []
    for it in make_test_set("captured", n, seed=seed + 700_000, side=side):
        s, b = it["sharp"], it["blurry"]
        row, srow = {}, {}
        score(row, srow, "input", s, b)
        for name, net in nets.items():
            score(row, srow, name, s, deblur(b, method="network", model=net, device="cpu"))
        rows.append(row)
        srows.append(srow)
    result["captured"] = _mean(rows)
    ssims["captured"] = _mean(srows, digits=4)
    say(f"captured: {_short(result['captured'])}; SSIM {_short(ssims['captured'], 3)}")
    result["ssim"] = ssims
    # bars
    base = ("wiener (true PSF)", "richardson-lucy (true PSF)")
    gains = {}
    for d, r in result["focus"].items():
        if float(d) <= 8:
            gains[d] = r[main] - max(r[k] for k in base)
    gain_var = result["varying"][main] - max(result["varying"][k] for k in base)
    result["bars"] = {
        "focus_gain_db_per_depth": {k: round(v, 2) for k, v in gains.items()},
        "focus_gain_db_mean": round(float(np.mean(list(gains.values()))), 2),
        "focus_gain_db_min": round(float(min(gains.values())), 2),
        "varying_gain_db": round(gain_var, 2),
        "gain_bar_db": 1.0,
        "focus_bar_met_every_depth": bool(min(gains.values()) >= 1.0),
        "focus_bar_met_mean": bool(np.mean(list(gains.values())) >= 1.0),
        "varying_bar_met": bool(gain_var >= 1.0),
    }
    if speed:
        sp = speed_comparison(models[main], side=speed_side)
        sp["bar_met"] = bool(sp["network_over_rl"] <= 1.0)
        result["speed"] = sp
        say(f"speed: {sp}")
    result["notes"] = sorted(set(notes))
    return result


def _mean(rows: list[dict], digits: int = 3) -> dict:
    """Per-key mean over the rows that have the key (keys in first-seen order), rounded to ``digits``."""
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    return {k: round(float(np.mean([r[k] for r in rows if k in r])), digits) for k in keys}


def _short(r: dict, digits: int = 2) -> str:
    return ", ".join(f"{k}={v:.{digits}f}" for k, v in r.items())


def _ssim_table(result: dict) -> list[str]:
    """Markdown lines of one SSIM table: a row per depth, spatially varying and captured-style; a column per method.

    A method not scored on a test set (e.g. the baselines on captured-style pairs) leaves its cell empty.
    """
    sim = result["ssim"]
    rows = [(f"{d} µm", r) for d, r in sim.get("focus", {}).items()]
    rows += [(label, sim[key]) for key, label in (("varying", "spatially varying"), ("captured", "captured-style"))
             if key in sim]
    methods: list[str] = []
    for _, r in rows:
        methods += [k for k in r if k not in methods]
    lines = [f"### SSIM (same outputs and references as the PSNR tables; data_range = max(reference), mean over "
             f"{result['n']} images)", ""]
    lines.append("| test set | " + " | ".join(methods) + " |")
    lines.append("|---" * (len(methods) + 1) + "|")
    for label, r in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r[m]:.4f}" if m in r else "" for m in methods) + " |")
    lines.append("")
    return lines


def to_markdown(result: dict) -> str:
    """Paper-style tables of :func:`evaluate_deblur`'s result: PSNR per test set, then one SSIM table."""
    lines = []
    methods = [k for k in next(iter(result["focus"].values())) if k != "rl_best_iter"]
    lines.append(f"### Through-focus planes (PSNR dB, mean over {result['n']} images of {result['side']}², noisy)")
    lines.append("")
    lines.append("| d (µm) | " + " | ".join(methods) + " | RL best iter |")
    lines.append("|---" * (len(methods) + 2) + "|")
    for d, r in result["focus"].items():
        lines.append(f"| {d} | " + " | ".join(f"{r.get(m, float('nan')):.2f}" for m in methods)
                     + f" | {r.get('rl_best_iter', float('nan')):.1f} |")
    lines.append("")
    lines.append("### Spatially varying blur (PSNR dB)")
    lines.append("")
    v = result["varying"]
    lines.append("| " + " | ".join(v) + " |")
    lines.append("|---" * len(v) + "|")
    lines.append("| " + " | ".join(f"{x:.2f}" for x in v.values()) + " |")
    lines.append("")
    lines.append("### Captured-style pairs z_k → z_0 (PSNR dB vs the z_0 acquisition)")
    lines.append("")
    c = result["captured"]
    lines.append("| " + " | ".join(c) + " |")
    lines.append("|---" * len(c) + "|")
    lines.append("| " + " | ".join(f"{x:.2f}" for x in c.values()) + " |")
    lines.append("")
    if "ssim" in result:  # results written before SSIM was reported have none
        lines += _ssim_table(result)
    b = result["bars"]
    lines.append(f"Gain of `{result['main']}` over the better true-PSF baseline: through-focus per depth "
                 f"{b['focus_gain_db_per_depth']} (mean {b['focus_gain_db_mean']} dB, "
                 f"min {b['focus_gain_db_min']} dB); "
                 f"spatially varying {b['varying_gain_db']} dB (bar: +1 dB).")
    if "speed" in result:
        s = result["speed"]
        lines.append("")
        lines.append(f"Speed on a {s['side']}² image, {s['threads']} thread(s): network {s['network_s']} s "
                     f"(amp={s['amp']}; fp32 {s['network_fp32_s']} s), 10 RL iterations {s['rl10_s']} s, Wiener "
                     f"{s['wiener_s']} s -> network/RL = {s['network_over_rl']} (fp32: {s['network_fp32_over_rl']}; "
                     "bar: <= 1).")
    for n in result.get("notes", []):
        lines.append(f"\nNote: {n}")
    return "\n".join(lines) + "\n"
