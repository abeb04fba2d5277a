"""Training task and triplet data for the linear latent autoencoder (paper 000).

Data
    :func:`load_fields` reads a through-focus dataset -- a synthetic OME-Zarr written by ``linblur synth``
    (one NGFF image per field, ``(C, Z, Y, X)``) or anything :func:`~napari_linblur.io.readers.open_zstack`
    opens as ``(P, Z, Y, X)`` such as a BBBC006 folder with ``channel="w1"`` -- and keeps, per field, the
    planes at or above focus (``planes="paper"``: every second plane, the paper's 9 even planes of BBBC006)
    ordered from sharpest to blurriest with their defocus distances ``d`` (µm from focus).
    :func:`split_fields` splits *fields* 7:1:2 into train/val/test, deterministically from a seed.

Triplets
    A triplet is three planes ``a < b < c`` (in defocus distance) of one field with the general
    ``alpha = (d_c - d_b) / (d_c - d_a)`` (``triplets="general"``; ``"midpoint"`` keeps only ``2b = a + c`` as
    the paper). The three planes share one :func:`~napari_linblur.inference.normalize.fit_normalization`
    (never per-image min-max), fitted over the three full planes (``normalization="triplet"``) or, as the pair
    operations fit it, over the two planes an operation receives (``normalization="inputs"``: ``(a, c)`` as
    :func:`~napari_linblur.inference.latent_ops.synthesize_blur` or ``(b, c)`` as
    :func:`~napari_linblur.inference.latent_ops.deblur_pair`, half and half). With ``"triplet"`` the sharp plane
    ``a`` sets the scale of every deblurring example, which inference never has. Crops: with probability ½ one of the
    paper's 10 crops (4 corners + centre, and their horizontal flips), otherwise a random crop with a random flip;
    the same window for the three planes.

Losses (L1, paper eq. 3 and 4)
    ``baseline``  mean of the three reconstruction losses (a plain autoencoder);
    ``indirect``  ½[L(a, D(z_a)) + L(c, D(z_c))] + L(b, D(z'_b)),  z'_b = α z_a + (1 − α) z_c;
    ``direct``    indirect + ‖z_b − z'_b‖₁ (mean over latent elements). The paper's absolute term lets the
    latent drift in scale (measured in ``docs/results/latent-ae.md``): with gradients through both sides
    (``detach=False``) both shrink together and the latent collapses; with z_b a stop-gradient target
    (``detach=True``) the encoder chases a target that moves with it (measured: the latent ran away in scale
    in one run and degenerated to a constant code in another). The default is the paper's absolute term
    without detaching (it trained best in our short runs; the slow shrinkage of the latent is measured in the
    results page). ``direct_scale="relative"`` divides the term by the mean |z_a − z_c| (not detached), which makes it
    invariant to the latent's scale and offset, so neither drift nor collapse pays off. (Dividing by the mean
    |z| instead was measured to collapse to a constant latent: an offset keeps |z| large while all codes
    coincide.)

Examples
--------
>>> split_fields(10, seed=0)["test"].size
2
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

import numpy as np

from napari_linblur.inference.normalize import Normalization, fit_normalization
from napari_linblur.training.loop import StartsFromInit

REGS = ("baseline", "indirect", "direct")
NORMALIZATIONS = ("triplet", "inputs")
# the planes (positions in a triplet a, b, c) a normalization is fitted over
_NORM_PLANES = {"triplet": (0, 1, 2), "synthesis": (0, 2), "deblurring": (1, 2)}


@dataclass
class FieldStack:
    """The planes of one field used for triplets, sharpest first.

    Attributes
    ----------
    name : str
        Field name (``field_003``, ``k06_s2`` ...).
    planes : numpy.ndarray
        ``(N, Y, X)`` in the file's dtype, ordered by increasing defocus distance.
    defocus_um : numpy.ndarray
        ``(N,)`` distance from focus of each plane, increasing (µm, or plane steps when unknown).
    plane_index : list of int
        Index of each plane in the acquired stack.
    """

    name: str
    planes: np.ndarray
    defocus_um: np.ndarray
    plane_index: list[int]
    truth: np.ndarray | None = None


@dataclass
class AEDataset:
    """Fields of one channel of a through-focus dataset (see :func:`load_fields`)."""

    path: str
    channel: str | int | None
    fields: list[FieldStack]
    kind: str
    recipe: dict | None = None
    seed: int | None = None
    meta: dict = field(default_factory=dict)


def split_fields(n: int, seed: int = 0, ratios: tuple[int, int, int] = (7, 1, 2)) -> dict[str, np.ndarray]:
    """Split ``n`` fields into train/val/test (7:1:2 by default), deterministic in ``seed``.

    Every split gets at least one field when ``n >= 3``.

    Examples
    --------
    >>> s = split_fields(20, seed=1)
    >>> [len(s[k]) for k in ("train", "val", "test")]
    [14, 2, 4]
    """
    if n < 3:
        raise ValueError(f"need at least 3 fields to split train/val/test, got {n}")
    perm = np.random.default_rng([int(seed), 7102]).permutation(n)
    tot = sum(ratios)
    n_test = max(1, int(round(n * ratios[2] / tot)))
    n_val = max(1, int(round(n * ratios[1] / tot)))
    n_train = n - n_test - n_val
    if n_train < 1:
        raise ValueError(f"{n} fields are too few for a {ratios} split")
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def _select_planes(defocus: np.ndarray, index: list[int], planes: str) -> list[int]:
    """Positions (into ``index``) of the planes kept, ordered sharpest first."""
    defocus = np.asarray(defocus, dtype=np.float64)
    signed = defocus
    # keep one side of focus: the side with more planes (BBBC006: planes 0..16 lie above focus)
    if (signed < 0).sum() > (signed > 0).sum():
        keep = np.where(signed <= 0)[0]
    else:
        keep = np.where(signed >= 0)[0]
    order = keep[np.argsort(np.abs(signed[keep]), kind="stable")]
    if planes == "paper":
        focus_idx = index[order[0]]
        order = np.array([k for k in order if (index[k] - focus_idx) % 2 == 0])
    elif planes != "all":
        raise ValueError(f"planes={planes!r}; use 'paper' (every second plane from focus) or 'all'")
    return [int(k) for k in order]


def load_fields(
    path: str | os.PathLike,
    channel: str | int | None = "w1",
    *,
    planes: str = "paper",
    fields: list[int] | np.ndarray | None = None,
    with_truth: bool = False,
) -> AEDataset:
    """Read the fields of a through-focus dataset into memory (only the planes used).

    Parameters
    ----------
    path : str or PathLike
        A ``linblur synth`` OME-Zarr dataset, or a BBBC006 folder / any z-stack
        :func:`~napari_linblur.io.readers.open_zstack` reads (``(P, Z, Y, X)`` = fields x planes).
    channel : str or int, optional
        Channel name (``"w1"`` nuclei, ``"w2"``) or index.
    planes : {"paper", "all"}
        ``"paper"``: every second plane counted from focus (the paper's even planes); ``"all"``: every plane
        on the populated side of focus.
    fields : sequence of int, optional
        Load only these field indices (others are left out of ``fields``, but indices stay global).
    with_truth : bool
        Also load the noise-free in-focus truth of synthetic datasets.

    Returns
    -------
    AEDataset
    """
    if not Path(os.fspath(path)).exists():
        raise FileNotFoundError(f"--data {os.fspath(path)}: no such file or folder")
    # absolute: the card records it, and --resume from another folder or spelling is the same dataset
    from napari_linblur.io.readers import synthetic_dataset_attrs

    p = Path(os.path.abspath(os.fspath(path)))
    attrs = synthetic_dataset_attrs(p)
    if attrs is not None:
        return _load_synthetic(p, attrs, channel, planes, fields, with_truth)
    return _load_zstack(p, channel, planes, fields)


def dataset_channel(channel, names: list[str]) -> int:
    """The index of ``channel`` (None: the first) among a training dataset's channels ``names``, by the readers'
    rule (:func:`~napari_linblur.io.readers.channel_index`)."""
    from napari_linblur.io.readers import channel_index

    return 0 if channel is None else channel_index(channel, names, len(names), "the dataset")


def _load_synthetic(p: Path, attrs: dict, channel, planes: str, fields, with_truth: bool) -> AEDataset:
    import zarr

    names = attrs.get("field_names") or [f"field_{i:03d}" for i in range(int(attrs["fields"]))]
    cidx = dataset_channel(channel, list(attrs.get("channels", ["c0"])))
    wanted = range(len(names)) if fields is None else [int(i) for i in fields]
    out: list[FieldStack] = []
    for i in wanted:
        g = zarr.open_group(str(p / names[i]), mode="r")
        meta = dict(g.attrs).get("linblur", {})
        index = list(meta.get("planes", range(g["0"].shape[1])))
        defocus = np.asarray(meta.get("plane_defocus_um", index), dtype=np.float64)
        keep = _select_planes(defocus, index, planes)
        arr = g["0"]
        stack = np.asarray(arr[cidx])[keep]
        truth = np.asarray(zarr.open_group(str(p / names[i] / "truth"), mode="r")["0"][cidx]) if with_truth else None
        out.append(FieldStack(names[i], stack, np.abs(defocus[keep]), [index[k] for k in keep], truth))
    return AEDataset(str(p), channel, out, "synthetic", recipe=attrs.get("recipe"), seed=attrs.get("seed"),
                     meta={"n_fields": len(names), "field_names": names})


def _load_zstack(p: Path, channel, planes: str, fields) -> AEDataset:
    from napari_linblur.io.readers import open_zstack_with_metadata

    arr, meta = open_zstack_with_metadata(p, channel=channel)
    axes = meta.axes
    if "c" in axes:
        raise ValueError(f"--data {p} has a channel axis; pass --channel (e.g. w1)")
    if arr.ndim == 3:
        arr = arr[None]
    arr = arr.reshape((-1,) + tuple(arr.shape[-3:]))
    n_fields = arr.shape[0]
    extra = meta.extra or {}
    index = list(extra.get("planes", range(arr.shape[1])))
    from napari_linblur.io.readers import length_in_um

    z_step = length_in_um(float(meta.scale[-3]), meta.units[-3]) if len(meta.scale) >= 3 else None
    unit = "um"
    if z_step is None and extra.get("format") != "bbbc006":  # the card's defocus_um would be plane counts
        import warnings

        z_step, unit = 1.0, "planes"
        warnings.warn(f"--data {p} records no Z spacing in a length unit: defocus is counted in planes (the model "
                      "card's defocus_unit says so); training is unaffected (α comes from plane ratios)",
                      UserWarning, stacklevel=3)
    if extra.get("format") == "bbbc006":
        focus_plane = 16  # BBBC006: plane 16 is in focus, planes 0-15 lie above it 2 µm apart
        from napari_linblur.io import bbbc006 as _bb

        spacing = getattr(_bb, "BBBC006_Z_SPACING_UM", 2.0)
        defocus = (np.asarray(index, dtype=np.float64) - focus_plane) * spacing
    else:
        # unknown focus: take the sharpest plane by a focus measure of the first field
        from napari_linblur.metrics.focus import variance_of_laplacian

        first = np.asarray(arr[0])
        focus_pos = int(np.argmax([variance_of_laplacian(pl.astype(np.float32)) for pl in first]))
        defocus = (np.arange(arr.shape[1]) - focus_pos) * z_step
    keep = _select_planes(defocus, index, planes)
    names = list(extra.get("fields", [f"field_{i:03d}" for i in range(n_fields)]))
    wanted = range(n_fields) if fields is None else [int(i) for i in fields]
    out = []
    for i in wanted:
        stack = np.asarray(arr[i][keep].compute() if hasattr(arr, "dask") else arr[i][keep])
        out.append(FieldStack(names[i], stack, np.abs(defocus[keep]), [index[k] for k in keep]))
    return AEDataset(str(p), channel, out, extra.get("format", "zstack"),
                     meta={"n_fields": n_fields, "field_names": names, "defocus_unit": unit})


def count_fields(path: str | os.PathLike) -> int:
    """Number of fields of a dataset without loading planes."""
    if not Path(os.fspath(path)).exists():
        raise FileNotFoundError(f"--data {os.fspath(path)}: no such file or folder")
    # absolute: the card records it, and --resume from another folder or spelling is the same dataset
    from napari_linblur.io.readers import open_zstack_with_metadata, synthetic_dataset_attrs

    p = Path(os.path.abspath(os.fspath(path)))
    attrs = synthetic_dataset_attrs(p)
    if attrs is not None:
        return int(attrs["fields"])

    arr, meta = open_zstack_with_metadata(p, channel=None)
    # fields per channel, as load_fields counts them (a channel axis is not more fields)
    lead = [n for n, a in zip(arr.shape[:-3], meta.axes[:-3]) if a != "c"]
    return int(np.prod(lead)) if lead else 1


def make_triplets(defocus: np.ndarray, kind: str = "general") -> list[tuple[int, int, int, float]]:
    """All ``(a, b, c, alpha)`` with ``a < b < c`` (positions in a sharpest-first plane list).

    ``alpha = (d_c - d_b) / (d_c - d_a)``; ``kind="midpoint"`` keeps only ``b - a == c - b``.

    Examples
    --------
    >>> make_triplets(np.array([0.0, 4.0, 8.0]))
    [(0, 1, 2, 0.5)]
    """
    from napari_linblur.inference.latent_ops import alpha_from_positions

    if kind not in ("general", "midpoint"):
        raise ValueError(f"triplets={kind!r}; use 'general' or 'midpoint'")
    out = []
    for a, b, c in combinations(range(len(defocus)), 3):
        if kind == "midpoint" and (b - a) != (c - b):
            continue
        out.append((a, b, c, alpha_from_positions(defocus[a], defocus[b], defocus[c])))
    return out


def ten_crop_boxes(shape: tuple[int, int], crop: int) -> list[tuple[int, int, bool]]:
    """The paper's 10 crops: (y0, x0, flip) for 4 corners + centre, each also flipped horizontally."""
    h, w = shape
    boxes = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
    return [(y, x, f) for f in (False, True) for (y, x) in boxes]


def triplet_loss(model, batch, *, reg: str = "direct", detach: bool = False, direct_scale: str = "absolute",
                 extrap_weight: float = 0.0):
    """L1 losses of eq. 3/4 (or the plain autoencoder) on a triplet batch, and their parts for the log.

    ``batch`` is ``{"x": (B, 3, 1, S, S) planes a, b, c, "alpha": (B,)}`` (:meth:`AETask.batch`); the arguments
    are those of :class:`AETask`. Returns ``(loss, parts)``.
    """
    extrap = extrap_weight > 0
    out = model(batch["x"], batch["alpha"], need_zb=reg != "indirect" or extrap, extrapolate=extrap)
    x = batch["x"].float()
    a, b, c = x[:, 0], x[:, 1], x[:, 2]
    l1 = lambda p, q: (p.float() - q).abs().mean()  # noqa: E731
    rec_a, rec_c = l1(out["rec_a"], a), l1(out["rec_c"], c)
    parts = {"rec_a": rec_a.detach(), "rec_c": rec_c.detach()}
    za = out["z_a"].float()
    parts["latent_abs"] = za.detach().abs().mean()
    if reg == "baseline":
        rec_b = l1(out["rec_b"], b)
        parts["rec_b"] = rec_b.detach()
        loss = (rec_a + rec_b + rec_c) / 3
        with_interp = l1(out["interp_b"], b).detach()
        parts["interp_b"] = with_interp
        return loss, parts
    interp = l1(out["interp_b"], b)
    parts["interp_b"] = interp.detach()
    loss = 0.5 * (rec_a + rec_c) + interp
    if reg == "direct":
        zb = out["z_b"].float()
        if detach:
            zb = zb.detach()
        zi = out["z_interp"].float()
        lin = (zb - zi).abs().mean()
        if direct_scale == "relative":
            spread = (out["z_a"].float() - out["z_c"].float()).abs().mean()
            lin = lin / spread.clamp_min(1e-6)
        parts["lin"] = lin.detach()
        loss = loss + lin
    if extrap:
        ok = (batch["alpha"] >= 0.25).to(a.dtype).reshape(-1, 1, 1, 1)
        err = ((out["extrap_a"].float() - a).abs() * ok).sum() / (ok.sum() * a[0].numel()).clamp_min(1)
        parts["extrap_a"] = err.detach()
        loss = loss + extrap_weight * err
    return loss, parts


class AETask(StartsFromInit):
    """Training task for :func:`~napari_linblur.training.loop.train` (see the module docstring).

    Parameters
    ----------
    data : AEDataset
        Fields loaded with :func:`load_fields` (all fields; the split picks train/val).
    config : str or dict
        ``"paper"``, ``"default"`` or a full ``LinearLatentAE`` keyword dict.
    reg : {"baseline", "indirect", "direct"}
    detach : bool
        Stop the gradient through ``z_b`` in the direct term.
    direct_scale : {"relative", "absolute"}
        ``"absolute"``: the paper's ‖z_b − z'_b‖₁; ``"relative"``: divided by the mean |z_a − z_c|.
    extrap_weight : float
        Ours, not in the paper (default 0): weight of an extra L1 term training the deblurring use directly,
        ``L(a, D(z_b / α − (1 − α)/α · z_c))``, on triplets with ``α >= 0.25``.
    focus_fraction : float
        Ours (default 0): fraction of the triplets drawn among those whose ``a`` is the in-focus (sharpest)
        plane -- the deblurring use, where the plane to recover is the focal one; the rest are drawn among all
        triplets as the paper does.
    batch_size, crop : int
        Triplets per step and crop side (the paper: 128).
    triplets : {"general", "midpoint"}
    split_seed : int
        Seed of the 7:1:2 field split (kept apart from the training seed so every model sees one test set).
    seed : int
        Data seed (the loop's ``--seed``): batches are a pure function of ``(seed, step)``.
    more_channels : sequence of AEDataset
        Other channels of the same fields (:func:`load_fields` of the same dataset) to train one model on
        jointly; a field's channels always fall in the same split, and triplets are drawn from every channel.
    """

    name = "ae"

    def __init__(
        self,
        data: AEDataset,
        config: str | dict = "default",
        *,
        reg: str = "direct",
        detach: bool = False,
        direct_scale: str = "absolute",
        extrap_weight: float = 0.0,
        focus_fraction: float = 0.0,
        normalization: str = "triplet",
        batch_size: int = 8,
        crop: int = 128,
        triplets: str = "general",
        split_seed: int = 0,
        seed: int = 0,
        val_triplets: int = 24,
        extra_card: dict | None = None,
        init: str | None = None,
        more_channels: Sequence[AEDataset] = (),
    ):
        from napari_linblur.models.autoencoder import CONFIGS

        if reg not in REGS:
            raise ValueError(f"reg={reg!r}; use one of {REGS}")
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config={config!r}; use one of {sorted(CONFIGS)}")
            self.config_name = config
            self.model_config = dict(CONFIGS[config])
        else:
            self.config_name = "custom"
            self.model_config = dict(config)
        self.data = data
        self.reg = reg
        self.detach = bool(detach)
        if direct_scale not in ("relative", "absolute"):
            raise ValueError(f"direct_scale={direct_scale!r}; use 'relative' or 'absolute'")
        self.direct_scale = direct_scale
        self.extrap_weight = float(extrap_weight)
        if not (math.isfinite(self.extrap_weight) and self.extrap_weight >= 0):
            raise ValueError(f"extrap_weight (--extrap-weight) must be a finite number >= 0, got {extrap_weight}")
        self.focus_fraction = float(focus_fraction)
        if not 0.0 <= self.focus_fraction <= 1.0:
            raise ValueError(f"focus_fraction must be in [0, 1], got {focus_fraction}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization (--normalization) must be one of {NORMALIZATIONS}, got "
                             f"{normalization!r}")
        self.normalization = normalization
        from napari_linblur.inference.tiling import check_int

        self.batch_size = check_int(batch_size, "batch_size (--batch-size)", 1)
        # the network halves the size once per channel stage: crops must be a multiple of 2 ** stages
        multiple = 2 ** len(self.model_config.get("channels", ())) or 1
        self.crop = check_int(crop, "crop (--crop)", 1)
        if self.crop < multiple or self.crop % multiple:
            raise ValueError(f"crop (--crop) must be a positive multiple of {multiple} (the network's size "
                             f"multiple for this configuration), got {crop!r}")
        self.triplet_kind = triplets
        self.split_seed = int(split_seed)
        self.seed = int(seed)
        self.extra_card = dict(extra_card or {})
        self.init = str(init) if init else None
        n_total = int(data.meta.get("n_fields", len(data.fields)))
        self.split = split_fields(n_total, self.split_seed)
        self.channels = [data.channel] + [d.channel for d in more_channels]
        per_channel = [list(data.fields)]
        for d in more_channels:  # the same fields in another channel: names made unique, same split
            if int(d.meta.get("n_fields", len(d.fields))) != n_total or d.path != data.path:
                raise ValueError(f"more_channels must be other channels of {data.path} ({n_total} fields); got "
                                 f"{d.path} channel {d.channel!r}")
            per_channel.append([FieldStack(f"{f.name}/{d.channel}", f.planes, f.defocus_um, f.plane_index, f.truth)
                                for f in d.fields])
        if any(len(fs) != n_total for fs in per_channel):
            raise ValueError("AETask needs every field of the dataset loaded (the split picks train/val)")
        self.train_fields = [fs[i] for fs in per_channel for i in self.split["train"]]
        self.val_fields = [fs[i] for fs in per_channel for i in self.split["val"]]
        self._all_fields = [f for fs in per_channel for f in fs]
        shape = self.train_fields[0].planes.shape[-2:]
        if min(shape) < self.crop:
            raise ValueError(f"crop={self.crop} is larger than the planes {tuple(shape)}")
        self._trip = {f.name: make_triplets(f.defocus_um, self.triplet_kind) for f in self._all_fields}
        # triplets ending at the in-focus plane (position 0), drawn with probability focus_fraction
        self._focus_trip = {k: [t for t in v if t[0] == 0] or v for k, v in self._trip.items()}
        if not any(self._trip[f.name] for f in self.train_fields):
            raise ValueError("no triplets: each field needs at least 3 planes on one side of focus")
        self._norm_cache: dict[tuple, Normalization] = {}
        self._val = self._make_val(int(val_triplets))

    # ------------------------------------------------------------------ data
    def _norm(self, f: FieldStack, planes: tuple[int, ...]) -> Normalization:
        key = (f.name, *planes)
        if key not in self._norm_cache:
            self._norm_cache[key] = fit_normalization(*(f.planes[k] for k in planes))
        return self._norm_cache[key]

    def _norm_use(self, draw: float) -> str:
        """Which planes the normalization of one example is fitted over (see the module docstring)."""
        if self.normalization == "triplet":
            return "triplet"
        return "synthesis" if draw < 0.5 else "deblurring"

    def _sample(self, f: FieldStack, trip, y0: int, x0: int, flip: bool, use: str = "triplet") -> np.ndarray:
        a, b, c, _ = trip
        n = self._norm(f, tuple(trip[i] for i in _NORM_PLANES[use]))
        s = self.crop
        x = np.stack([n.apply(f.planes[k, y0 : y0 + s, x0 : x0 + s]) for k in (a, b, c)])
        return x[..., ::-1] if flip else x

    def _pick_triplet(self, rng: np.random.Generator, f: FieldStack) -> tuple:
        """One triplet of field ``f``: with probability ``focus_fraction`` one whose ``a`` is the in-focus plane."""
        trips = self._trip[f.name]
        if self.focus_fraction > 0 and rng.random() < self.focus_fraction:  # no extra draw when 0
            trips = self._focus_trip[f.name]
        return trips[int(rng.integers(len(trips)))]

    def batch(self, step: int, *, rank: int = 0, world: int = 1):
        """``{"x": (B, 3, 1, S, S), "alpha": (B,)}``, a pure function of ``(seed, step, rank)``."""
        import torch

        rng = np.random.default_rng([self.seed, int(step), int(rank), 31])
        xs, alphas = [], []
        for _ in range(self.batch_size):
            f = self.train_fields[int(rng.integers(len(self.train_fields)))]
            trip = self._pick_triplet(rng, f)
            h, w = f.planes.shape[-2:]
            if rng.random() < 0.5:
                boxes = ten_crop_boxes((h, w), self.crop)
                y0, x0, flip = boxes[int(rng.integers(len(boxes)))]
            else:
                y0 = int(rng.integers(h - self.crop + 1))
                x0 = int(rng.integers(w - self.crop + 1))
                flip = bool(rng.random() < 0.5)
            use = self._norm_use(rng.random()) if self.normalization != "triplet" else "triplet"  # no extra draw
            xs.append(self._sample(f, trip, y0, x0, flip, use))
            alphas.append(trip[3])
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, :, None]))
        return {"x": x, "alpha": torch.tensor(alphas, dtype=torch.float32)}

    def _make_val(self, n: int):
        import torch

        rng = np.random.default_rng([self.split_seed, 5150])
        xs, alphas = [], []
        for i in range(n):
            f = self.val_fields[i % len(self.val_fields)]
            trips = self._trip[f.name]
            trip = trips[int(rng.integers(len(trips)))]
            h, w = f.planes.shape[-2:]
            y0, x0, flip = ten_crop_boxes((h, w), self.crop)[i % 10]
            xs.append(self._sample(f, trip, y0, x0, flip, self._norm_use((i % 2) / 2)))
            alphas.append(trip[3])
        return {"x": torch.from_numpy(np.ascontiguousarray(np.stack(xs)[:, :, None])),
                "alpha": torch.tensor(alphas, dtype=torch.float32)}

    # ------------------------------------------------------------------ model / loss
    def build_model(self):
        from napari_linblur.models.autoencoder import LinearLatentAE

        model = LinearLatentAE(**self.model_config)
        if self.init and not self.resuming:  # continue from a saved model (same architecture and config)
            from napari_linblur.models.registry import init_weights

            init_weights(model, self.init, "LinearLatentAE")
        return model

    def loss(self, model, batch):
        """L1 losses of eq. 3/4 (or the plain autoencoder) and their parts for the log (:func:`triplet_loss`)."""
        return triplet_loss(model, batch, reg=self.reg, detach=self.detach, direct_scale=self.direct_scale,
                            extrap_weight=self.extrap_weight)

    def validate(self, model) -> dict[str, float]:
        """Loss on fixed validation triplets, plus PSNR of the interpolation and latent scale/linearity."""
        import torch

        batch = self._val
        with torch.no_grad():
            loss, parts = self.loss(model, batch)
            out = model(batch["x"], batch["alpha"], need_zb=True)
        b = batch["x"][:, 1].float()
        mse = ((out["interp_b"].float() - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        zb, zi = out["z_b"].float(), out["z_interp"].float()
        rel = ((zb - zi).abs().mean() / zb.abs().mean().clamp_min(1e-12)).item()
        res = {"val_loss": float(loss), "val_psnr_interp": float((10 * torch.log10(1.0 / mse)).mean()),
               "val_latent_abs": float(zb.abs().mean()), "val_lin_rel": rel}
        res.update({f"val_{k}": float(v) for k, v in parts.items() if k != "latent_abs"})
        return res

    def card(self) -> dict:
        d = self.data
        return {
            "architecture": "LinearLatentAE",
            "task": "ae",
            "config": self.model_config,
            "config_name": self.config_name,
            "init": self.init_record(),
            "regularization": {"reg": self.reg, "detach_zb": self.detach, "direct_scale": self.direct_scale,
                               "extrap_weight": self.extrap_weight, "loss": "L1"},
            "data": {
                "path": d.path,
                "kind": d.kind,
                "channel": d.channel if len(self.channels) == 1 else "+".join(str(c) for c in self.channels),
                "recipe": d.recipe,
                "dataset_seed": d.seed,
                "split_seed": self.split_seed,
                "split": {k: [int(i) for i in v] for k, v in self.split.items()},
                "triplets": self.triplet_kind,
                "focus_fraction": self.focus_fraction,
                "crop": self.crop,
                "batch_size": self.batch_size,
                "augmentation": "paper 10-crop (p=0.5) or random crop + random horizontal flip",
                "normalization": _NORM_CARD[self.normalization],
                "planes": [int(i) for i in d.fields[0].plane_index],
                "defocus_um": [float(v) for v in d.fields[0].defocus_um],
                **({"defocus_unit": "planes"} if (d.meta or {}).get("defocus_unit") == "planes" else {}),
            },
            **self.extra_card,
        }


_NORM_CARD = {
    "triplet": "fit_normalization over the three planes of a triplet (0.1/99.9 percentiles)",
    "inputs": "fit_normalization over the two planes an operation receives, as inference fits it: (a, c) as "
              "synthesize_blur or (b, c) as deblur_pair, half and half (0.1/99.9 percentiles)",
}


def ship_model(run_dir: str | os.PathLike, evaluation: str | os.PathLike | None = None,
               name: str = "ae-default", *, data_command: str | None = None,
               evaluation_command: str | None = None, label: str | None = None) -> Path:
    """Copy a training run's model into the package as ``name`` (safetensors + card with sha256).

    The card keeps everything training wrote (config, exact training command, data recipe + seed, split,
    the ``init`` chain of a fine-tuned run) and gains the ``evaluation`` summary (a ``linblur evaluate ae`` JSON;
    ``label`` picks the run's column when the evaluation compared several models, default: the first), when given,
    the ``linblur synth`` command that made the data, ``training_total`` (every leg of the ``init`` chain summed,
    :func:`~napari_linblur.training.loop.chain_training`) and, when it replaces a shipped model, that model's
    sha256, training command and evaluation under ``previous``.

    Examples
    --------
    >>> ship_model("/no/run")
    Traceback (most recent call last):
    ...
    napari_linblur.errors.MissingFileError: /no/run/model.safetensors: train a model first (linblur train ae ...
    """
    from napari_linblur.models.registry import WEIGHTS_DIR, load_run, save_shipped

    model, card = load_run(run_dir, "ae")
    if evaluation is not None:
        res = json.loads(Path(evaluation).read_text())
        label = label or next(iter(res["models"]))
        if label not in res["models"]:
            raise ValueError(f"label={label!r} is not in {evaluation}; it has {sorted(res['models'])}")
        card["evaluation"] = {"command": evaluation_command or res.get("command"), "data": res["data"],
                              "baselines": res["baselines"],
                              "model": res["models"][label]}
    if data_command:
        card["data_command"] = data_command
    from napari_linblur.training.loop import chain_training

    card["training_total"] = {**chain_training(card), "amp": (card.get("training") or {}).get("amp")}
    old = WEIGHTS_DIR / f"{name}.json"
    if old.exists():
        was = json.loads(old.read_text())
        card["previous"] = {"sha256": was.get("sha256"), "training_command": (was.get("training") or {}).get("command"),
                            "evaluation": (was.get("evaluation") or {}).get("model"),
                            "note": "the model this one replaced; its weights remain in git history"}
    return save_shipped(model, WEIGHTS_DIR / f"{name}.safetensors", card)
