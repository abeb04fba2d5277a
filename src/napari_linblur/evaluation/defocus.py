"""Evaluation of defocus-map estimators (paper 001 tables) on held-out synthetic and real data.

Three checks, all seeded and reproducible:

1. **Spatially varying maps** (the paper's Table 3 protocol): held-out all-in-focus content blurred with the
   *true* spatially varying renderer by random σ maps in [0, 10] px (half Gaussian random fields, half region
   maps), with camera noise. Two content sets: ``microscopy`` (sharp cell phantoms from seeds never used in
   training, both channels) and ``shuffle`` (pixel-shuffled natural images held out of training). Every
   estimator sees the same noisy images; metrics from :func:`napari_linblur.metrics.defocus.defocus_metrics`,
   over all pixels and over signal pixels (:func:`napari_linblur.inference.defocus_ops.signal_mask` of the
   image).
2. **Through-focus stacks** rendered with a vectorial Born–Wolf PSF (:mod:`napari_linblur.synth.zstack`):
   the mean estimated σ over signal pixels per plane vs |defocus| (Spearman ρ), and :func:`best_focus` vs the
   in-focus plane.
3. **Real BBBC006** plane 0 (32 µm above focus): the σ map over signal pixels.

Estimators: the network(s), a local focus measure calibrated to σ
(:func:`napari_linblur.baselines.defocus_classical.focus_measure_sigma_map`) and the Zhuo & Sim (2011) edge
re-blur estimator (:func:`~napari_linblur.baselines.defocus_classical.zhuo_sim_defocus_map`).
"""

from __future__ import annotations

import glob
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_linblur.training.defocus import HELDOUT_SOURCES

__all__ = [
    "EvalConfig",
    "bbbc006_check",
    "bbbc006_file",
    "check_shuffle_sources",
    "error_by_sigma",
    "evaluate_defocus",
    "heldout_images",
    "markdown_report",
    "through_focus_check",
]

METRIC_KEYS = ("mse_norm", "mae_norm", "mae_px", "abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2",
               "delta3")


@dataclass
class EvalConfig:
    """Held-out evaluation recipe."""

    n_images: int = 8
    size: int = 192
    seed: int = 20240
    photons: float = 800.0
    read_noise: float = 2.0
    offset: float = 100.0
    stack_defocus_um: tuple[float, ...] = tuple(float(v) for v in range(-20, 21, 2))
    stack_size: int = 160
    stack_na: float = 0.45
    stack_wavelength_um: float = 0.52
    stack_pixel_um: float = 0.65
    #: the real BBBC006 plane-0 TIFF (a path, or a glob whose first sorted match is used); None = the sample image
    #: (:func:`napari_linblur.io.bbbc006.find_bbbc006_image`: ``$NAPARI_LINBLUR_DATA``, or ``../shared/data`` beside a
    #: source checkout)
    bbbc006: str | None = None
    #: the scikit-image pictures whose crops are pixel-shuffled, in turn (``FRESH_SOURCES`` for a check on pictures
    #: no model choice has seen)
    shuffle_sources: tuple[str, ...] = HELDOUT_SOURCES


def _phantom_content(size: int, rng: np.random.Generator) -> np.ndarray:
    from napari_linblur.synth.phantoms import cell_phantom

    ph = cell_phantom((size, size), rng=rng)
    c = ph[int(rng.integers(0, ph.shape[0]))].astype(np.float32)
    return c / max(float(c.max()), 1e-6)


def check_shuffle_sources(sources: Any, name: str = "shuffle_sources") -> tuple[str, ...]:
    """``sources`` as a tuple of held-out pictures that ship with scikit-image; a ``ValueError`` naming ``name``
    for a training picture (the test would score the network on what it learned from) or any other name (it would
    be downloaded).

    Examples
    --------
    >>> check_shuffle_sources(["cat", "clock"])
    ('cat', 'clock')
    >>> check_shuffle_sources(["camera"], "--shuffle-sources")
    Traceback (most recent call last):
    ...
    ValueError: --shuffle-sources camera: a training picture; give pictures held out of training: coins cell ...
    """
    from napari_linblur.training.defocus import BUNDLED_SOURCES, FRESH_SOURCES, TRAIN_SOURCES

    sources = tuple(sources)
    held = f"{' '.join(HELDOUT_SOURCES)} (the default) or {' '.join(FRESH_SOURCES)} (no model choice has seen them)"
    if not sources:
        raise ValueError(f"{name}: give at least one picture held out of training: {held}")
    for picture in sources:
        if picture in TRAIN_SOURCES:
            raise ValueError(f"{name} {picture}: a training picture; give pictures held out of training: {held}")
        if picture not in BUNDLED_SOURCES:
            raise ValueError(f"{name} {picture}: not a picture that ships with scikit-image; use {held}")
    return sources


def heldout_images(kind: str, cfg: EvalConfig) -> list[dict[str, np.ndarray]]:
    """Held-out noisy images with their true σ maps: ``[{'image', 'sigma', 'content'}]``.

    ``kind`` is ``"microscopy"`` (unshuffled phantoms) or ``"shuffle"`` (pixel-shuffled held-out natural
    images). Seeds differ from every training seed.
    """
    from napari_linblur.optics.noise import poisson_gaussian
    from napari_linblur.optics.shuffle import pixel_shuffle
    from napari_linblur.optics.varying import render_spatially_varying
    from napari_linblur.training.defocus import _crop, _natural

    if kind not in ("microscopy", "shuffle"):
        raise ValueError(f"kind={kind!r}; use 'microscopy' or 'shuffle'")
    sources = check_shuffle_sources(cfg.shuffle_sources)
    out = []
    for i in range(cfg.n_images):
        rng = np.random.default_rng([cfg.seed, 1 if kind == "microscopy" else 2, i])
        if kind == "microscopy":
            content = _phantom_content(cfg.size, rng)
        else:
            src = _crop(_natural(sources[i % len(sources)]), cfg.size, rng)
            content = pixel_shuffle(src, rng).astype(np.float32)
        # the paper's half/half: even images Gaussian random fields, odd images region maps, full range
        sig = _eval_map(cfg.size, rng, i)
        blurred = np.clip(render_spatially_varying(content, sig), 0, None)
        img = poisson_gaussian((blurred + 0.02) * cfg.photons, gain=1.0, read_noise=cfg.read_noise,
                               offset=cfg.offset, rng=rng)
        out.append({"image": np.clip(np.round(img), 0, 65535).astype(np.uint16), "sigma": sig.astype(np.float32),
                    "content": content})
    return out


def _eval_map(size: int, rng: np.random.Generator, i: int) -> np.ndarray:
    from napari_linblur.optics.defocus_maps import gaussian_random_field_map, region_map

    if i % 2 == 0:
        return gaussian_random_field_map((size, size), sigma_range=(0.0, 10.0),
                                         correlation_px=float(rng.uniform(16, 48)), rng=rng)
    return region_map((size, size), margins=(size * 50 // 256, size * 20 // 256), sigma_range=(0.0, 10.0), rng=rng)


def _metrics(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    from napari_linblur.metrics.defocus import defocus_metrics

    m = defocus_metrics(pred, true, mask=mask)
    m["mae_px"] = m["mae_norm"] * 10.0
    return m


#: a reference row of the held-out tables (with the baselines): σ = 5 px everywhere, the middle of the trained
#: range, without looking at the image. An estimator that does not beat it reads nothing useful from the image.
CONSTANT_LABEL = "constant 5 px (reference: no image)"


def _constant_map(img: np.ndarray) -> np.ndarray:
    return np.full(np.shape(img), 5.0, np.float32)


def _estimators(models: dict[str, Any], baselines: bool, device: str, tta: int = 1) -> dict[str, Any]:
    from napari_linblur.baselines.defocus_classical import (
        focus_measure_sigma_map,
        zhuo_sim_defocus_map,
    )
    from napari_linblur.inference.defocus_ops import estimate_defocus

    est: dict[str, Any] = {}
    for label, m in models.items():
        # float32: the tables measure the model itself (bf16's effect is in benchmarks/bench_defocus.py)
        est[label] = (lambda img, m=m: estimate_defocus(img, model=m, device=device, amp="off"))
        if tta > 1:  # the same model with its self-ensemble, as an extra row
            est[f"{label}, self-ensemble x{tta}"] = (
                lambda img, m=m: estimate_defocus(img, model=m, device=device, amp="off", tta=tta))
    if baselines:
        est["focus-measure (calibrated var. of Laplacian)"] = (
            lambda img: focus_measure_sigma_map(img.astype(np.float64)))
        est["Zhuo & Sim 2011"] = lambda img: zhuo_sim_defocus_map(img.astype(np.float64))
    return est


def error_by_sigma(pred: np.ndarray, true: np.ndarray, mask: np.ndarray | None = None,
                   edges=(0.0, 2.0, 4.0, 6.0, 8.0, 10.0)) -> list[dict[str, float]]:
    """MAE and bias (mean of estimate − truth) in bins of the true σ, over all pixels and over ``mask``.

    Examples
    --------
    >>> rows = error_by_sigma(np.array([1.0, 3.0, 9.0]), np.array([0.5, 3.0, 10.0]))
    >>> [(r["lo"], r["mae_px"], r["bias_px"]) for r in rows if r["fraction"] > 0]
    [(0.0, 0.5, 0.5), (2.0, 0.0, 0.0), (8.0, 1.0, -1.0)]
    """
    pred, true = np.ravel(pred).astype(np.float64), np.ravel(true).astype(np.float64)
    mask = np.ones(true.shape, bool) if mask is None else np.ravel(mask).astype(bool)
    rows = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        sel = (true >= lo) & ((true <= hi) if last else (true < hi))
        err = pred[sel] - true[sel]
        serr = pred[sel & mask] - true[sel & mask]
        nan = float("nan")
        rows.append({"lo": float(lo), "hi": float(hi), "fraction": float(sel.mean()) if true.size else 0.0,
                     "mae_px": float(np.abs(err).mean()) if err.size else nan,
                     "bias_px": float(err.mean()) if err.size else nan,
                     "mae_px_signal": float(np.abs(serr).mean()) if serr.size else nan,
                     "bias_px_signal": float(serr.mean()) if serr.size else nan})
    return rows


def _pool(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}


def _calibrated(nets: dict[str, Any], cfg: EvalConfig, device: str) -> dict[str, Any]:
    """Extra rows for noise-aware models given the held-out images' exact camera (their default row estimates it).

    Only the held-out images have a known camera (gain 1 ADU/e⁻, ``cfg.offset``, ``cfg.read_noise``); the stack
    and BBBC006 checks use the default ``camera="auto"``.
    """
    from napari_linblur.inference.defocus_ops import estimate_defocus

    cam = {"gain": 1.0, "offset": cfg.offset, "read_noise": cfg.read_noise}
    return {f"{label}, calibrated camera": (lambda img, m=m: estimate_defocus(img, model=m, device=device, amp="off",
                                                                               camera=cam))
            for label, m in nets.items() if getattr(m, "in_channels", 1) == 2}


def evaluate_spatially_varying(estimators: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Table of metrics per content set and estimator (mean over images, all pixels and signal pixels)."""
    from napari_linblur.inference.defocus_ops import signal_mask

    res: dict[str, Any] = {}
    for kind in ("microscopy", "shuffle"):
        data = heldout_images(kind, cfg)
        table: dict[str, Any] = {}
        for label, fn in estimators.items():
            rows_all, rows_sig, secs = [], [], 0.0
            preds, trues, masks = [], [], []
            for d in data:
                t0 = time.perf_counter()
                pred = np.asarray(fn(d["image"]), dtype=np.float64)
                secs += time.perf_counter() - t0
                rows_all.append(_metrics(pred, d["sigma"]))
                mask = signal_mask(d["image"])
                rows_sig.append(_metrics(pred, d["sigma"], mask) if mask.any() else rows_all[-1])
                preds.append(pred.ravel())
                trues.append(np.asarray(d["sigma"], np.float64).ravel())
                masks.append(mask.ravel() if mask.any() else np.ones(mask.size, bool))
            table[label] = {"all": _pool(rows_all), "signal": _pool(rows_sig),
                            "seconds_per_image": secs / max(1, len(data)),
                            "by_sigma": error_by_sigma(np.concatenate(preds), np.concatenate(trues),
                                                       np.concatenate(masks))}
        res[kind] = table
    return res


def through_focus_check(estimators: dict[str, Any], cfg: EvalConfig, *, model_labels=()) -> dict[str, Any]:
    """Vectorial Born–Wolf through-focus stack of a phantom: σ vs |defocus| and best-focus plane."""
    from scipy.stats import spearmanr

    from napari_linblur.inference.defocus_ops import best_focus, focus_curve, signal_mask
    from napari_linblur.optics.psf import OpticalSetup, sigma_from_defocus
    from napari_linblur.synth.phantoms import cell_phantom
    from napari_linblur.synth.zstack import through_focus_stack

    setup = OpticalSetup(na=cfg.stack_na, wavelength_um=cfg.stack_wavelength_um, pixel_um=cfg.stack_pixel_um,
                         model="born_wolf", vectorial=True)
    dz = np.asarray(cfg.stack_defocus_um, dtype=np.float64)
    content = cell_phantom((cfg.stack_size, cfg.stack_size), rng=np.random.default_rng([cfg.seed, 3]))[0]
    stack = through_focus_stack(content, setup, dz, rng=np.random.default_rng([cfg.seed, 4]), photons=1000.0)
    focus_idx = int(np.argmin(np.abs(dz)))
    true_sigma = np.asarray(sigma_from_defocus(dz, setup), dtype=np.float64)
    out: dict[str, Any] = {"defocus_um": dz.tolist(), "true_sigma_px": true_sigma.tolist(), "in_focus_index": focus_idx,
                           "setup": setup.to_dict(), "estimators": {}}
    mask = signal_mask(stack[focus_idx])
    for label, fn in estimators.items():
        means = []
        for z in range(len(dz)):
            sig = np.asarray(fn(stack[z]), dtype=np.float64)
            means.append(float(sig[mask].mean() if mask.any() else sig.mean()))
        rho = float(spearmanr(np.abs(dz), means).statistic)
        entry = {"mean_sigma_px": means, "spearman_rho_vs_abs_defocus": rho}
        if label in model_labels:
            entry["best_focus"] = int(best_focus(stack, model=_MODEL_OBJS.get(label), amp="off"))
        out["estimators"][label] = entry
    for m in ("variance_of_laplacian", "brenner", "tenengrad"):
        curve = focus_curve(stack, method=m)
        out.setdefault("classical_best_focus", {})[m] = int(np.argmax(curve))
    return out


_MODEL_OBJS: dict[str, Any] = {}


def bbbc006_file(path: str | None = None) -> Path:
    """The BBBC006 TIFF of :func:`bbbc006_check`: ``path`` (a file; a folder: its first BBBC006-named TIFF; or a glob
    whose first sorted file match is used), or the sample image when ``path`` is None. ``FileNotFoundError`` names
    what was looked for."""
    if path is None:
        from napari_linblur.io.bbbc006 import find_bbbc006_image

        return find_bbbc006_image()
    from napari_linblur.io.bbbc006 import is_bbbc006_name

    given = Path(path).expanduser()
    if given.is_file():  # a real name first: one with [ ] or * is not a pattern
        return given
    if given.is_dir():  # a folder, as $NAPARI_LINBLUR_DATA names one: its first BBBC006-named TIFF
        files = sorted(p for p in given.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff")
                       and is_bbbc006_name(p.name))
    else:
        files = sorted(Path(p) for p in glob.glob(str(given)) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"no BBBC006 TIFF at {path}; give a 16-bit BBBC006v1 plane-0 TIFF, a folder holding "
                                "one, or a glob of them")
    return files[0]


def bbbc006_check(estimators: dict[str, Any], path: str | None = None) -> dict[str, Any]:
    """σ statistics over the signal pixels of the real BBBC006 plane 0 (32 µm above focus); ``path`` as
    :func:`bbbc006_file`. Raises ``FileNotFoundError`` when there is no such file."""
    import tifffile

    from napari_linblur.inference.defocus_ops import signal_mask

    files = [bbbc006_file(path)]
    img = tifffile.imread(files[0])
    mask = signal_mask(img)
    res: dict[str, Any] = {"file": Path(files[0]).name, "signal_fraction": float(mask.mean()), "estimators": {}}
    for label, fn in estimators.items():
        sig = np.asarray(fn(img), dtype=np.float64)
        v = sig[mask] if mask.any() else sig.ravel()
        res["estimators"][label] = {
            "median_sigma_px": float(np.median(v)), "p10_sigma_px": float(np.percentile(v, 10)),
            "fraction_sigma_gt_4px": float(np.mean(v > 4.0)), "background_median_sigma_px": float(
                np.median(sig[~mask])) if (~mask).any() else None,
        }
    return res


def evaluate_defocus(
    models: dict[str, Any] | None = None,
    *,
    cfg: EvalConfig | None = None,
    baselines: bool = True,
    device: str = "cpu",
    through_focus: bool = True,
    bbbc006: bool = True,
    tta: int = 1,
) -> dict[str, Any]:
    """Run all checks; returns a JSON-serialisable dict (see :func:`markdown_report`).

    Parameters
    ----------
    models : dict label -> model (name, path or module), optional
        Default ``{"HDME-Net (defocus-default)": None}``, the shipped model.
    cfg : EvalConfig
    baselines : bool
        Include the two classical estimators, and in the held-out tables a constant 5 px map
        (:data:`CONSTANT_LABEL`), the error of knowing nothing about the image.
    device : str
    through_focus, bbbc006 : bool
        Run those checks.
    tta : {1, 2, 4, 8}
        Also score every model with ``estimate_defocus(..., tta=tta)`` (rows labelled ``"..., self-ensemble xN"``).
    """
    from napari_linblur.inference.tta import check_tta
    from napari_linblur.models.registry import cached_model

    tta = check_tta(tta)

    cfg = cfg or EvalConfig()
    models = models or {"HDME-Net (defocus-default)": None}
    _MODEL_OBJS.clear()
    cards = {}
    for label, m in models.items():
        net = cached_model(m, "defocus", device, channels_last=True)  # the model the estimator rows run
        _MODEL_OBJS[label] = net
        card = getattr(net, "card", {}) or {}
        cards[label] = {"model": str(m) if m is not None else "defocus-default",
                        "config_name": card.get("config_name"), "content": card.get("data", {}).get("recipe", {}).get(
                            "content"), "steps": card.get("training", {}).get("steps")}
    est = _estimators(dict(_MODEL_OBJS), baselines, device, tta)
    t0 = time.perf_counter()
    result: dict[str, Any] = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                              "models": cards}
    constant = {CONSTANT_LABEL: _constant_map} if baselines else {}
    result["spatially_varying"] = evaluate_spatially_varying({**est, **_calibrated(_MODEL_OBJS, cfg, device),
                                                             **constant}, cfg)
    if through_focus:
        result["through_focus"] = through_focus_check(est, cfg, model_labels=tuple(models))
    if bbbc006:
        try:
            result["bbbc006"] = bbbc006_check(est, cfg.bbbc006)
        except FileNotFoundError as err:  # the sample is not there (an installed package): said, not silent
            result["bbbc006_skipped"] = str(err)
            warnings.warn(f"the real BBBC006 check was skipped: {err}", UserWarning, stacklevel=2)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"


def markdown_report(res: dict[str, Any]) -> str:
    """Paper-001-style Markdown tables of an :func:`evaluate_defocus` result."""
    lines: list[str] = []
    cfg = res["config"]
    cols = ["MSE (norm)", "MAE (norm)", "MAE px", "AbsRel", "SqRel", "RMSE px", "RMSElog", "δ<1.25", "δ<1.25²",
            "δ<1.25³"]
    for kind, table in res["spatially_varying"].items():
        for region in ("all", "signal"):
            pictures = cfg.get("shuffle_sources", EvalConfig.shuffle_sources)
            source = f", from {' / '.join(pictures)}" if kind == "shuffle" else ""
            lines.append(f"#### {kind} test images ({cfg['n_images']} x {cfg['size']}², σ ∈ [0, 10] px, "
                         f"{cfg.get('photons', EvalConfig.photons):g} e⁻ peak{source}, "
                         f"{'all pixels' if region == 'all' else 'signal pixels'})")
            lines.append("")
            lines.append("| method | " + " | ".join(cols) + " | s/image |")
            lines.append("|---|" + "---|" * (len(cols) + 1))
            for label, r in table.items():
                m = r[region]
                lines.append(f"| {label} | " + " | ".join(_fmt(m[k]) for k in METRIC_KEYS)
                             + f" | {r['seconds_per_image']:.2f} |")
            lines.append("")
        first = next(iter(table.values()), {})
        if "by_sigma" in first:
            lines.append(f"#### {kind} test images: error by true σ (MAE px / bias px, all pixels; signal pixels)")
            lines.append("")
            bins = [f"{b['lo']:g}–{b['hi']:g}" for b in first["by_sigma"]]
            lines.append("| method | " + " | ".join(bins) + " |")
            lines.append("|---|" + "---|" * len(bins))
            for label, r in table.items():
                cells = [f"{_fmt(b['mae_px'])} / {b['bias_px']:+.2f}; {_fmt(b['mae_px_signal'])} / "
                         f"{b['bias_px_signal']:+.2f}" for b in r.get("by_sigma", [])]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
            lines.append("")
    tf = res.get("through_focus")
    if tf:
        lines.append(f"#### Through-focus stack (vectorial Born–Wolf, NA {tf['setup']['na']}, "
                     f"{tf['setup']['pixel_um']} µm/px, defocus {tf['defocus_um'][0]:g}…{tf['defocus_um'][-1]:g} µm)")
        lines.append("")
        lines.append("| method | Spearman ρ (mean σ vs abs(defocus)) | best plane (true "
                     f"{tf['in_focus_index']}) |")
        lines.append("|---|---|---|")
        for label, e in tf["estimators"].items():
            lines.append(f"| {label} | {e['spearman_rho_vs_abs_defocus']:.3f} | {e.get('best_focus', '—')} |")
        for m, b in tf.get("classical_best_focus", {}).items():
            lines.append(f"| focus curve: {m} | — | {b} |")
        lines.append("")
        lines.append("| defocus µm | true σ px | " + " | ".join(tf["estimators"]) + " |")
        lines.append("|---|---|" + "---|" * len(tf["estimators"]))
        for i, d in enumerate(tf["defocus_um"]):
            lines.append(f"| {d:g} | {tf['true_sigma_px'][i]:.2f} | "
                         + " | ".join(f"{e['mean_sigma_px'][i]:.2f}" for e in tf["estimators"].values()) + " |")
        lines.append("")
    bb = res.get("bbbc006")
    if res.get("bbbc006_skipped"):
        lines += ["#### Real BBBC006 plane 0 (32 µm above focus): skipped", "", res["bbbc006_skipped"], ""]
    if bb:
        lines.append("#### Real BBBC006 plane 0 (32 µm above focus), "
                     f"signal pixels {100 * bb['signal_fraction']:.1f} %")
        lines.append("")
        lines.append("| method | median σ px | 10th pct σ px | fraction σ > 4 px | background median σ px |")
        lines.append("|---|---|---|---|---|")
        for label, e in bb["estimators"].items():
            bgm = e["background_median_sigma_px"]
            lines.append(f"| {label} | {e['median_sigma_px']:.2f} | {e['p10_sigma_px']:.2f} | "
                         f"{e['fraction_sigma_gt_4px']:.3f} | {'—' if bgm is None else f'{bgm:.2f}'} |")
        lines.append("")
    return "\n".join(lines)


def write_report(res: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``defocus_eval.json`` and ``defocus_eval.md`` into ``out``."""
    from .report import write_reports

    # strict JSON: a metric with no pixels to average is null, not NaN
    return write_reports(out, "defocus_eval", res, markdown_report(res))
