"""Paper-000 evaluation of linear latent autoencoders on held-out fields, against baselines on the same planes.

For every test field, the kept planes (sharpest first, e.g. BBBC006's 9 even planes ``z16, z14, ..., z0``)
share one normalization (robust percentiles over the whole field stack, :mod:`~napari_linblur.inference
.normalize`); PSNRs are computed in those units with ``data_range = 1`` (the 0.1-99.9 % intensity span).

Table 1 (latent geometry, paper eq. 5 and 6)
    LDS and APD (:mod:`napari_linblur.metrics.latent`) of the latents of the N planes of a field (whole
    planes), averaged over fields.
Table 2 (image quality)
    *Synthesis*: for every midpoint triplet ``(n-s, n, n+s)`` (the paper's ``2b = a + c``; spans ``s`` from one
    to half the stack) with ``alpha`` from the plane positions,
    ``interp = D(alpha z_a + (1 - alpha) z_c)`` vs the real plane ``b`` (``interp_vs_real``) and vs its
    reconstruction ``D(z_b)`` (``interp_vs_recon``). Baseline: pixel blending ``alpha a + (1 - alpha) c``.
    *Deblurring*: from ``(d, 2d)`` pairs ``(k, 2k)`` with the in-focus plane ``0`` as target (alpha = 0.5 for
    evenly spaced planes), ``extrap = D(2 z_k - z_2k)`` vs the real in-focus plane (``extrap_vs_real``) and vs
    its reconstruction (``extrap_vs_recon``). Baselines: the blurry input ``b`` itself, pixel extrapolation
    ``2 b - c``, and Wiener deconvolution of ``b`` with its true PSF (recomputed from the recipe stored in a
    synthetic dataset) at the balance that maximizes PSNR (``baselines.wiener.best_wiener``) -- an oracle.
    Automatic alpha (:func:`~napari_linblur.inference.latent_ops.auto_alpha`, as `deblur_pair(alpha=None)`) is scored
    too.
SSIM
    Of the same synthesized and deblurred planes and baselines (keys ``*_ssim``; ``data_range = 1`` as the PSNR).
"""

from __future__ import annotations

import json
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from napari_linblur.inference.latent_ops import (
    alpha_from_positions,
    auto_alpha,
    combine_normalized,
    encode_normalized,
)
from napari_linblur.inference.normalize import fit_normalization
from napari_linblur.metrics.image import psnr, ssim
from napari_linblur.metrics.latent import apd, lds


def _true_psf(recipe: dict | None, channel_index: int, defocus_um: float) -> np.ndarray | None:
    if not recipe:
        return None
    from napari_linblur.synth.recipes import Recipe
    from napari_linblur.synth.zstack import psfs_for

    r = Recipe.from_dict(recipe)
    if r.randomize is not None:
        return None
    return np.asarray(psfs_for(r.setup(channel_index), [float(defocus_um)])[0])


def _field_recipe(data_path: str, field_name: str) -> dict | None:
    p = Path(data_path) / field_name / "zarr.json"
    if not p.exists():
        return None
    attrs = json.loads(p.read_text()).get("attributes", {}).get("linblur", {})
    return attrs.get("recipe")


def _crop(x: np.ndarray, crop: int | None) -> np.ndarray:
    if not crop:
        return x
    h, w = x.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return x[..., y0 : y0 + ch, x0 : x0 + cw]


def midpoint_triplets(n: int) -> list[tuple[int, int]]:
    """``(span, b)`` of every midpoint triplet ``(b - span, b, b + span)`` of ``n`` planes (the paper's 2b = a + c).

    Examples
    --------
    >>> midpoint_triplets(4)
    [(1, 1), (1, 2)]
    """
    return [(s, i) for s in range(1, (n - 1) // 2 + 1) for i in range(s, n - s)]


def evaluate_field_baselines(planes: np.ndarray, defocus: np.ndarray, psf_of=None) -> dict[str, list[float]]:
    """Baselines on one normalized field stack (sharpest first)."""
    from napari_linblur.baselines.wiener import best_wiener

    res: dict[str, list[float]] = {"blend_vs_real": [], "blurry_vs_real": [], "pixel_extrap_vs_real": [],
                                   "wiener_vs_real": [], "blend_ssim": [], "blurry_ssim": [], "wiener_ssim": []}
    n = len(planes)
    res["blend_by_span"] = {}
    for s, i in midpoint_triplets(n):
        al = alpha_from_positions(defocus[i - s], defocus[i], defocus[i + s])
        blend = al * planes[i - s] + (1 - al) * planes[i + s]
        v = psnr(planes[i], blend, data_range=1.0)
        res["blend_vs_real"].append(v)
        res["blend_ssim"].append(ssim(planes[i], blend, data_range=1.0))
        res["blend_by_span"].setdefault(s, []).append(v)
    for k in range(1, (n - 1) // 2 + 1):
        al = alpha_from_positions(defocus[0], defocus[k], defocus[2 * k])
        res["blurry_vs_real"].append(psnr(planes[0], planes[k], data_range=1.0))
        res["blurry_ssim"].append(ssim(planes[0], planes[k], data_range=1.0))
        res["pixel_extrap_vs_real"].append(
            psnr(planes[0], planes[k] / al - (1 - al) / al * planes[2 * k], data_range=1.0))
        psf = psf_of(defocus[k]) if psf_of is not None else None
        if psf is not None:
            # the target is the captured in-focus plane, which carries its own PSF: the oracle re-blurs by it
            est, _, score = best_wiener(planes[k], psf, planes[0], data_range=1.0,
                                        reference_psf=psf_of(defocus[0]))
            res["wiener_vs_real"].append(score)
            res["wiener_ssim"].append(ssim(planes[0], est, data_range=1.0))  # of the PSNR-best balance
            res.setdefault("wiener_by_k", {})[k] = score
    return res


def _as_called(model, x: np.ndarray, y: np.ndarray, wx: float, wy: float, **kwargs) -> np.ndarray:
    """``combine_normalized`` as :func:`~napari_linblur.synthesize_blur` and :func:`~napari_linblur.deblur_pair`
    run it: on the pair's own normalization (fit on its two planes), mapped back to ``x``'s units, so the tables
    score what a user gets (the network is not scale-invariant: a stack-wide normalization scores other numbers)."""
    from napari_linblur.inference.latent_ops import _run_pairs

    return _run_pairs(lambda p, q: combine_normalized(model, p, q, wx, wy, **kwargs), x, y, ("first", "second"))


def evaluate_field_model(model, planes: np.ndarray, defocus: np.ndarray, *, auto: bool = True,
                         tta: int = 1) -> dict[str, Any]:
    """Table 1 and Table 2 entries of one model on one normalized field stack (sharpest first).

    Synthesis and pair deblurring run as the public operations do (:func:`_as_called`); Table 1 (LDS, APD) and
    the reconstructions use the stack's normalization. With ``tta > 1`` the pair deblurring is also scored with
    that self-ensemble (``extrap_tta_*``).
    """
    n = len(planes)
    z = np.stack([encode_normalized(model, p).ravel() for p in planes])
    res: dict[str, Any] = {"lds": lds(z), "apd": apd(z)}
    t0 = time.perf_counter()
    recon = [combine_normalized(model, p, p, 1.0, 0.0) for p in planes]
    t_rec = (time.perf_counter() - t0) / n
    res["recon_vs_real"] = [psnr(planes[i], recon[i], data_range=1.0) for i in range(n)]
    res["interp_vs_real"], res["interp_vs_recon"], res["interp_by_span"], res["interp_ssim"] = [], [], {}, []
    t0 = time.perf_counter()
    trips = midpoint_triplets(n)
    for s, i in trips:
        al = alpha_from_positions(defocus[i - s], defocus[i], defocus[i + s])
        out = _as_called(model, planes[i - s], planes[i + s], al, 1 - al)
        res["interp_vs_real"].append(psnr(planes[i], out, data_range=1.0))
        res["interp_ssim"].append(ssim(planes[i], out, data_range=1.0))
        res["interp_vs_recon"].append(psnr(recon[i], out, data_range=1.0))
        res["interp_by_span"].setdefault(s, []).append(res["interp_vs_real"][-1])
    res["seconds_per_synthesis"] = (time.perf_counter() - t0) / max(1, len(trips))
    res["seconds_per_reconstruction"] = t_rec
    res["extrap_vs_real"], res["extrap_vs_recon"], res["auto_alpha"], res["auto_vs_real"] = [], [], [], []
    res["extrap_by_k"], res["extrap_ssim"], res["auto_ssim"] = {}, [], []
    for k in range(1, (n - 1) // 2 + 1):
        al = alpha_from_positions(defocus[0], defocus[k], defocus[2 * k])
        out = _as_called(model, planes[k], planes[2 * k], 1 / al, -(1 - al) / al)
        res["extrap_vs_real"].append(psnr(planes[0], out, data_range=1.0))
        res["extrap_ssim"].append(ssim(planes[0], out, data_range=1.0))
        res["extrap_vs_recon"].append(psnr(recon[0], out, data_range=1.0))
        res["extrap_by_k"][k] = res["extrap_vs_real"][-1]
        if tta > 1:
            out = _as_called(model, planes[k], planes[2 * k], 1 / al, -(1 - al) / al, tta=tta)
            res.setdefault("extrap_tta_vs_real", []).append(psnr(planes[0], out, data_range=1.0))
            res.setdefault("extrap_tta_ssim", []).append(ssim(planes[0], out, data_range=1.0))
            res.setdefault("extrap_tta_by_k", {})[k] = res["extrap_tta_vs_real"][-1]
        if auto:
            a_hat = auto_alpha(planes[k], planes[2 * k], model=model,  # as nl.deblur_pair(alpha=None) does
                               device=next(model.parameters()).device)
            res["auto_alpha"].append((al, a_hat))
            out = _as_called(model, planes[k], planes[2 * k], 1 / a_hat, -(1 - a_hat) / a_hat)
            res["auto_vs_real"].append(psnr(planes[0], out, data_range=1.0))
            res["auto_ssim"].append(ssim(planes[0], out, data_range=1.0))
    return res


def _finite_mean(values, tally: list[int] | None = None) -> float:
    """The mean of the finite ``values`` (NaN when there is none). How many were left out (an ``inf`` PSNR of a
    reconstruction identical to its reference, a NaN) is appended to ``tally``, so that the summary can say so."""
    raw = [float(x) for x in values]
    v = [x for x in raw if np.isfinite(x)]
    if tally is not None:
        tally.append(len(raw) - len(v))
    return float(np.mean(v)) if v else float("nan")


def _count_non_finite(summary: dict, label: str, tally: list[int]) -> None:
    """Record in ``summary['non_finite_left_out']`` how many values :func:`_finite_mean` left out since the last
    call (warning when any), and reset ``tally``."""
    n = int(sum(tally))
    summary["non_finite_left_out"] = n
    if n:
        warnings.warn(f"{label}: {n} non-finite value(s) (an inf PSNR of a result identical to its reference, or NaN) "
                      "left out of the means; 'non_finite_left_out' in the JSON counts them", UserWarning, stacklevel=3)
    tally.clear()


def _model_labels(models: list[str]) -> list[str]:
    """A distinct column label per model: a run folder's name for ``RUN/model.safetensors``, else the path or
    name given; when two would share a label (two files in one folder, the same run twice) the full text is used,
    then a counter, so no two models are ever averaged into one column."""
    short = []
    for m in models:
        p = Path(m)
        short.append(p.parent.name if p.suffix == ".safetensors" and p.name == "model.safetensors" else
                     (p.stem if p.suffix == ".safetensors" else m))
    labels = [s if short.count(s) == 1 else m for s, m in zip(short, models)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def _channel_key(channel: Any, names: list[str]) -> Any:
    """A channel name or index as the dataset's channel index where it can be resolved, else its lower-case text
    (``"w1"``, ``0`` and ``"0"`` are one channel of a dataset whose first channel is w1)."""
    from napari_linblur.training.ae import dataset_channel

    if isinstance(channel, str) and channel.isdigit():
        channel = int(channel)
    try:
        return dataset_channel(channel, names)
    except ValueError:
        return str(channel).lower()


def _dataset_difference(rec: dict, data: str, n_total: int) -> str | None:
    """What differs between the dataset a card's ``data`` section records and ``data``, or None when they are the
    same: the same synthetic recipe and seed (a copy or a regeneration anywhere), else the same path, and the same
    number of fields."""
    import os

    from napari_linblur.io.readers import synthetic_dataset_attrs

    here = os.path.realpath(os.path.abspath(data))
    attrs = synthetic_dataset_attrs(here) or {}
    split = rec.get("split")
    n_rec = len({int(i) for v in split.values() for i in v}) if isinstance(split, dict) else None
    if n_rec is not None and n_rec != n_total:
        return f"it has {n_rec} fields, --data {data} has {n_total}"
    if rec.get("recipe") and attrs.get("recipe"):
        if rec["recipe"] != attrs["recipe"]:
            return f"--data {data} is a synthetic dataset of another recipe"
        if rec.get("dataset_seed") != attrs.get("seed"):
            return f"it was made with --seed {rec.get('dataset_seed')}, --data {data} with --seed {attrs.get('seed')}"
        return None
    there = rec.get("path")
    if not there or os.path.realpath(str(there)) != here:
        return f"--data {data} is another path"
    return None


def resolve_split(data: str, cards: list[tuple[str, dict]], *, channel: str | int | None = "w1", split: str = "test",
                  split_seed: int | None = None) -> tuple[list[int], int | None, list[str]]:
    """The fields of ``data`` to evaluate, the split seed they come from, and warnings, from the models' cards.

    A model card of ``linblur train ae`` records the field split it trained on (``data.split_seed`` and
    ``data.split``). Without ``split_seed`` the seed is the one the cards record for this dataset (0 when none
    records one: shipped or older models); models trained on different splits of it, or an explicit
    ``split_seed`` other than theirs, are refused, and so is any ``"test"`` or ``"val"`` field that a card records
    among its ``train`` fields. A card of another dataset, or another channel, only warns. ``"all"`` (a separate
    test dataset) is always allowed.

    Parameters
    ----------
    cards : list of (str, dict)
        ``(model, card)`` of every model, ``model`` as given to ``--model`` (it names the model in messages).

    Raises
    ------
    ValueError
        Naming the models, the seeds or fields that conflict, and the options that resolve it.
    """
    from napari_linblur.training.ae import count_fields, split_fields

    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"split={split!r} (--split); use 'test', 'val', 'train' or 'all'")
    if split_seed is not None and (isinstance(split_seed, bool) or int(split_seed) != split_seed or split_seed < 0):
        raise ValueError(f"split_seed (--split-seed) must be an int >= 0 or None (the models' own), got {split_seed!r}")
    n_total = count_fields(data)
    from napari_linblur.io.readers import synthetic_dataset_attrs

    names = [str(c) for c in (synthetic_dataset_attrs(data) or {}).get("channels", [])]
    want = _channel_key(channel, names)
    warn: list[str] = []
    same: list[tuple[str, dict]] = []  # cards recording a split of this very dataset
    other: list[tuple[str, dict]] = []
    for label, card in cards:
        rec = card.get("data") if isinstance(card, dict) else None
        if not isinstance(rec, dict) or rec.get("split_seed") is None:
            continue  # shipped or older models without a recorded split: nothing to check
        diff = _dataset_difference(rec, data, n_total)
        if diff is not None:
            other.append((label, rec))
            warn.append(f"--model {label} was trained on {rec.get('path')} (channel {rec.get('channel')}), not on "
                        f"this dataset ({diff}): its recorded split does not apply to --data, whose fields it did "
                        "not train on unless the two hold the same images; for a separate test dataset use "
                        "--split all")
            continue
        same.append((label, rec))
        trained = {_channel_key(c, names) for c in str(rec.get("channel")).split("+")}
        if want not in trained:
            warn.append(f"--model {label} was trained on channel {rec.get('channel')} of this dataset, --channel is "
                        f"{channel}: scoring it on another channel (its split of the fields still applies)")
    seeds = {label: int(rec["split_seed"]) for label, rec in same}
    if split == "all":
        if same:
            warn.append("--split all scores every field of --data, the training dataset of "
                        + ", ".join(f"--model {label}" for label in seeds)
                        + ": it includes their training fields; --split test scores the held-out ones")
        return list(range(n_total)), split_seed, warn
    if split_seed is not None:
        wrong = {label: s for label, s in seeds.items() if s != split_seed}
        if wrong:
            raise ValueError(
                f"--split-seed {split_seed} is not the field split "
                + ", ".join(f"--model {label} was trained on (--split-seed {s} in its card)" for label, s in
                            wrong.items())
                + f": its '{split}' fields would include training fields. Leave --split-seed out to use the "
                "card's seed, or evaluate a separate test dataset with --split all")
        seed = int(split_seed)
    else:
        pool = seeds or {label: int(rec["split_seed"]) for label, rec in other}
        if len(set(pool.values())) > 1:
            where = "this dataset" if seeds else "their datasets"
            raise ValueError(
                f"the models were trained on different field splits of {where} ("
                + ", ".join(f"--model {label}: --split-seed {s}" for label, s in pool.items())
                + f"), so no '{split}' fields are held out from all of them: evaluate them separately (each takes "
                "its card's --split-seed)" + ("" if seeds else ", or choose one with --split-seed")
                + ", or evaluate a separate test dataset with --split all")
        seed = next(iter(pool.values())) if pool else 0
    idx = [int(i) for i in split_fields(n_total, seed)[split]]
    if split in ("test", "val"):
        for label, rec in same:
            recorded = rec.get("split")
            train = (recorded or {}).get("train") if isinstance(recorded, dict) else None
            if train is None:
                train = split_fields(n_total, int(rec["split_seed"]))["train"]
            leaked = sorted(set(idx) & {int(i) for i in train})
            if leaked:
                raise ValueError(
                    f"--split {split} (--split-seed {seed}) would score fields {leaked}, which --model {label} was "
                    "trained on (the 'train' split recorded in its card): they are not held out. Evaluate a "
                    "separate test dataset with --split all, or use a model trained on this split")
    return idx, seed, warn


def evaluate_ae(
    data: str,
    models: list[str],
    *,
    channel: str | int | None = "w1",
    split: str = "test",
    split_seed: int | None = None,
    max_fields: int | None = None,
    crop: int | None = None,
    device: str = "auto",
    auto: bool = True,
    progress: bool = True,
    tta: int = 1,
    warn=None,
) -> dict[str, Any]:
    """Evaluate ``models`` (shipped names or ``.safetensors`` paths) on the held-out fields of ``data``.

    Parameters
    ----------
    data : str
        A ``linblur synth`` dataset or a BBBC006 folder (see :func:`~napari_linblur.training.ae.load_fields`).
    models : list of str
        Model names or paths; labels in the tables are the run folder names (or the shipped names).
    split : {"test", "val", "train", "all"}
        Which fields of the 7:1:2 split (``split_seed``) to use; ``"all"`` for a separate test dataset.
    split_seed : int, optional
        Seed of the split; default: the one the models' cards record for this dataset, else 0. A seed other
        than the cards', or cards that disagree, are refused (:func:`resolve_split`); ``"test"`` and ``"val"``
        fields are never fields a card records as trained on.
    max_fields : int, optional
        Evaluate at most this many fields (the first of the split).
    crop : int, optional
        Central crop side (None = whole planes).
    tta : {1, 2, 4, 8}
        Also score pair deblurring with this self-ensemble (``deblur_pair(..., tta=)``); 1 = plain only.
    warn : callable, optional
        Called with each warning of :func:`resolve_split` (a model of another dataset or channel, ``"all"`` on a
        training dataset); default :func:`warnings.warn`. They are also returned in ``["data"]["warnings"]``.

    Returns
    -------
    dict
        ``{"data": ..., "baselines": {...}, "models": {label: {...}}}`` with per-metric means.
    """
    import warnings

    from napari_linblur.models.registry import load_model
    from napari_linblur.training.ae import load_fields

    loaded = []
    labels = _model_labels([str(m) for m in models])
    for m, label in zip(models, labels):
        net = load_model(m, device=device)
        if net.task != "ae":
            raise ValueError(f"--model {m}: a {net.task!r} model; evaluate ae needs an 'ae' model")
        loaded.append((label, net))
    cards = [(str(m), getattr(net, "card", None) or {}) for m, (_, net) in zip(models, loaded)]
    idx, split_seed, notes = resolve_split(data, cards, channel=channel, split=split, split_seed=split_seed)
    for note in notes:
        if warn is None:
            warnings.warn(note, UserWarning, stacklevel=2)
        else:
            warn(note)
    if max_fields is not None:
        if isinstance(max_fields, bool) or int(max_fields) != max_fields or max_fields < 1:
            raise ValueError(f"max_fields (--max-fields) must be a positive number of fields, got {max_fields!r}")
        idx = idx[: int(max_fields)]
    if crop is not None and (isinstance(crop, bool) or int(crop) != crop or crop < 16):
        raise ValueError(f"crop (--crop) must be a side of at least 16 px, or None for whole planes; got {crop!r}")
    ds = load_fields(data, channel, fields=idx)
    from napari_linblur.training.ae import dataset_channel

    c_index = 0
    if ds.recipe:
        c_index = dataset_channel(channel, [c["name"] for c in ds.recipe.get("channels", [])] or ["w1"])
    per_model: dict[str, list[dict]] = {label: [] for label, _ in loaded}
    base: list[dict] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ds.fields), desc="evaluate ae", unit="field")
    for f in ds.fields:
        stack = _crop(f.planes, crop)
        norm = fit_normalization(*list(stack))
        planes = np.stack([norm.apply(p) for p in stack])
        recipe = _field_recipe(data, f.name) or ds.recipe
        psf_of = (lambda d, r=recipe: _true_psf(r, c_index, d)) if recipe else None
        base.append(evaluate_field_baselines(planes, f.defocus_um, psf_of))
        for label, net in loaded:
            per_model[label].append(evaluate_field_model(net, planes, f.defocus_um, auto=auto, tta=tta))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    by_key = ("blend_by_span", "wiener_by_k")
    tally: list[int] = []  # values left out of the means, counted per column (the baselines, then each model)
    _mean = partial(_finite_mean, tally=tally)
    baselines = {k: _mean(v for r in base for v in r[k]) for k in base[0] if k not in by_key} if base else {}
    if base:
        baselines["blend_by_span"] = {int(s): _mean(v for r in base for v in r["blend_by_span"].get(s, []))
                                      for s in base[0]["blend_by_span"]}
    if base and "wiener_by_k" in base[0]:
        baselines["wiener_by_k"] = {int(k): _mean(r["wiener_by_k"][k] for r in base if k in r.get("wiener_by_k", {}))
                                    for k in base[0]["wiener_by_k"]}
    if base:
        _count_non_finite(baselines, "baselines", tally)
    out_models = {}
    for label, net in loaded:
        rows = per_model[label]
        summary: dict[str, Any] = {
            "lds": _mean(r["lds"] for r in rows),
            "apd": _mean(r["apd"] for r in rows),
        }
        for key in ("recon_vs_real", "interp_vs_real", "interp_vs_recon", "extrap_vs_real", "extrap_vs_recon",
                    "auto_vs_real", "interp_ssim", "extrap_ssim", "auto_ssim"):
            summary[key] = _mean(v for r in rows for v in r[key])
        summary["interp_by_span"] = {int(s): _mean(v for r in rows for v in r["interp_by_span"].get(s, []))
                                     for s in rows[0]["interp_by_span"]}
        summary["extrap_by_k"] = {int(k): _mean(r["extrap_by_k"][k] for r in rows) for k in rows[0]["extrap_by_k"]}
        if tta > 1:
            summary["tta"] = int(tta)
            summary["extrap_tta_vs_real"] = _mean(v for r in rows for v in r["extrap_tta_vs_real"])
            summary["extrap_tta_ssim"] = _mean(v for r in rows for v in r["extrap_tta_ssim"])
            summary["extrap_tta_by_k"] = {int(k): _mean(r["extrap_tta_by_k"][k] for r in rows)
                                          for k in rows[0]["extrap_tta_by_k"]}
        pairs = [p for r in rows for p in r["auto_alpha"]]
        if pairs:
            summary["auto_alpha_mean"] = _mean(a for _, a in pairs)
            summary["auto_alpha_mae"] = _mean(abs(a - t) for t, a in pairs)
        summary["seconds_per_synthesis"] = _mean(r["seconds_per_synthesis"] for r in rows)
        _count_non_finite(summary, label, tally)
        summary["card"] = {
            "config_name": net.card.get("config_name"),
            "regularization": net.card.get("regularization"),
            "params": int(sum(p.numel() for p in net.parameters())),
            "steps": net.card.get("training", {}).get("steps"),
            "train_seconds": net.card.get("training", {}).get("seconds"),
        }
        out_models[label] = summary
    return {
        "data": {"path": str(data), "channel": channel, "split": split, "split_seed": split_seed,
                 "fields": [f.name for f in ds.fields], "planes": [int(i) for i in ds.fields[0].plane_index],
                 "crop": crop, "psnr_units": "field-stack normalization (0.1-99.9 percentiles), data_range=1",
                 "warnings": notes},
        "baselines": baselines,
        "models": out_models,
    }


def _f(v: Any, nd: int = 2) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.{nd}f}"
    return str(v)


def to_markdown(res: dict[str, Any]) -> str:
    """Markdown tables (paper Table 1 and Table 2 plus baselines) of :func:`evaluate_ae`'s result."""
    labels = list(res["models"])
    m = res["models"]
    b = res["baselines"]
    seed = res["data"].get("split_seed")
    lines = [f"Data: `{res['data']['path']}` channel {res['data']['channel']}, split {res['data']['split']} "
             + (f"of seed {seed} " if seed is not None and res["data"]["split"] != "all" else "")
             + f"({len(res['data']['fields'])} fields), planes {res['data']['planes']}; PSNR in dB "
             f"({res['data']['psnr_units']}).", ""]
    lines += [f"Warning: {w}" for w in res["data"].get("warnings", [])] + ([""] if res["data"].get("warnings") else [])
    lines += ["**Table 1 — latent linearity**", "", "| metric | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    lines.append("| LDS ↑ | " + " | ".join(_f(m[k]["lds"], 3) for k in labels) + " |")
    lines.append("| APD ↓ | " + " | ".join(_f(m[k]["apd"], 4) for k in labels) + " |")
    lines += ["", "**Table 2 — image quality (PSNR, dB)**", "",
              "| experiment | metric | " + " | ".join(labels) + " | baseline |",
              "|---|---|" + "---|" * (len(labels) + 1)]
    rows = [
        ("reconstruction", "recon vs real", "recon_vs_real", ""),
        ("blur synthesis", "interp vs real ↑", "interp_vs_real", f"pixel blend {_f(b.get('blend_vs_real'))}"),
        ("blur synthesis", "interp vs recon ↑", "interp_vs_recon", ""),
        ("deblurring (d, 2d)", "extrap vs real ↑", "extrap_vs_real",
         f"blurry input {_f(b.get('blurry_vs_real'))}; Wiener true PSF {_f(b.get('wiener_vs_real'))}; "
         f"pixel extrap {_f(b.get('pixel_extrap_vs_real'))}"),
        ("deblurring (d, 2d)", "extrap vs recon ↑", "extrap_vs_recon", ""),
        ("deblurring (d, 2d)", "extrap vs real, self-ensemble ↑", "extrap_tta_vs_real", ""),
        ("deblurring (d, 2d)", "auto-α vs real ↑", "auto_vs_real", ""),
    ]
    for exp, name, key, bl in rows:
        if not any(key in m[k] for k in labels):
            continue
        if key == "extrap_tta_vs_real":
            name = f"extrap vs real, self-ensemble ×{max(m[k].get('tta', 1) for k in labels)} ↑"
        lines.append(f"| {exp} | {name} | " + " | ".join(_f(m[k].get(key, float("nan"))) for k in labels)
                     + f" | {bl} |")
    lines.append("| auto α | mean (true 0.5) | " + " | ".join(_f(m[k].get("auto_alpha_mean", float("nan")), 3)
                                                         for k in labels) + " | |")
    lines.append("| speed | s per synthesized plane | " + " | ".join(_f(m[k]["seconds_per_synthesis"], 3)
                                                                for k in labels) + " | |")
    ssim_rows = [
        ("blur synthesis", "interp vs real", "interp_ssim", f"pixel blend {_f(b.get('blend_ssim'), 4)}"),
        ("deblurring (d, 2d)", "extrap vs real", "extrap_ssim",
         f"blurry input {_f(b.get('blurry_ssim'), 4)}; Wiener true PSF {_f(b.get('wiener_ssim'), 4)}"),
        ("deblurring (d, 2d)", "extrap vs real, self-ensemble", "extrap_tta_ssim", ""),
        ("deblurring (d, 2d)", "auto-α vs real", "auto_ssim", ""),
    ]
    ssim_rows = [r for r in ssim_rows if any(r[2] in m[k] for k in labels)]
    if ssim_rows:  # results written before SSIM was reported have none
        lines += ["", "**SSIM (same planes, data_range = 1)**", "",
                  "| experiment | metric | " + " | ".join(labels) + " | baseline |",
                  "|---|---|" + "---|" * (len(labels) + 1)]
        for exp, name, key, bl in ssim_rows:
            lines.append(f"| {exp} | {name} ↑ | " + " | ".join(_f(m[k].get(key, float("nan")), 4) for k in labels)
                         + f" | {bl} |")
    spans = sorted({int(k) for lab in labels for k in m[lab]["interp_by_span"]})
    if spans:
        lines += ["", "**Blur synthesis per triplet span (b − s, b, b + s), interp vs real (dB)**", "",
                  "| span s | " + " | ".join(labels) + " | pixel blend |", "|---|" + "---|" * (len(labels) + 1)]
        for sp in spans:
            lines.append(f"| {sp} | " + " | ".join(_f(m[lab]["interp_by_span"].get(sp, float('nan'))) for lab in labels)
                         + f" | {_f(b.get('blend_by_span', {}).get(sp, float('nan')))} |")
    ks = sorted({int(k) for lab in labels for k in m[lab]["extrap_by_k"]})
    if ks:
        cols = [(lab, "extrap_by_k", lab) for lab in labels]
        cols += [(lab, "extrap_tta_by_k", f"{lab} ×{m[lab]['tta']}") for lab in labels if "extrap_tta_by_k" in m[lab]]
        wk = b.get("wiener_by_k", {})
        lines += ["", "**Deblurring per pair (z_k, z_2k) → z_0, extrap vs real (dB)**", "",
                  "| k | " + " | ".join(c[2] for c in cols) + " | Wiener true PSF |",
                  "|---|" + "---|" * (len(cols) + 1)]
        for k in ks:
            lines.append(f"| {k} | " + " | ".join(_f(m[lab][key].get(k, float('nan'))) for lab, key, _ in cols)
                         + f" | {_f(wk.get(k, wk.get(str(k), float('nan'))))} |")
    return "\n".join(lines) + "\n"
