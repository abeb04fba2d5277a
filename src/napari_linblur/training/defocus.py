"""Training data and task for the per-pixel defocus network (HDME-Net, paper 001).

Every training sample is made from scratch and is a pure function of ``(seed, index)``:

1. **all-in-focus content** ``S`` (``content``):

   * ``"shuffle"`` — the paper's histogram-invariant spatial aliasing sampling (§2.2): a crop of a source image
     with its pixel positions randomly permuted (:func:`napari_linblur.optics.shuffle.pixel_shuffle`). Sources
     are the natural images bundled with scikit-image (no download; a few are held out for evaluation) and
     synthetic cell phantoms, so both natural and fluorescence-like histograms occur;
   * ``"phantom"`` — sharp synthetic fluorescent cell phantoms (:func:`napari_linblur.synth.phantoms.cell_phantom`)
     as they are, without shuffling;
   * ``"mixed"`` (default) — half and half.

2. **a defocus map** ``M`` (σ of the equivalent Gaussian PSF, pixels, within ``[0, 10]``): half Gaussian random
   fields (continuous depth), half region maps (a recursive four-way split: the split of the paper's patch experiment,
   §3.3, standing in for the COCO segmentation masks its pixel-level training used, §3.4, which do not ship), each
   over a random sub-range of ``sigma_range`` so that nearly uniform maps occur too (whole defocused planes);
3. **rendering** with the *true* spatially varying PSF
   (:func:`napari_linblur.optics.varying.render_spatially_varying`, every source point spreads with its own σ);
4. **camera**: a background level, Poisson–Gaussian noise at a random photon level, read noise and gain, a camera
   offset (pedestal), and salt-and-pepper noise on a fraction of the samples (paper 001 §3.4);
5. **normalization** with :func:`napari_linblur.inference.normalize.fit_normalization` on the noisy crop — the
   same normalization :func:`napari_linblur.inference.defocus_ops.estimate_defocus` applies to each plane.

Rendering costs ~0.05–0.1 s per 128x128 sample on this CPU (2 cores), as much as a training step, so by
default a **pool** of ``pool_size`` rendered noise-free samples is made once (seeded, deterministic) and every
batch draws from it with fresh random crops, flips/rotations and fresh camera noise (``pool_size=0`` renders
every sample on the fly). Batches are a pure function of ``(seed, step, rank)``; resume is exact.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_linblur.training.loop import StartsFromInit

__all__ = [
    "CONTENTS",
    "DefocusDataConfig",
    "DefocusTask",
    "card_metrics",
    "card_recipe",
    "make_sample",
    "render_sample",
    "ship_model",
]

CONTENTS = ("mixed", "shuffle", "phantom")

#: scikit-image bundled images used as shuffle sources for training / held out for evaluation
TRAIN_SOURCES = ("camera", "astronaut", "moon", "page", "text", "brick", "grass", "gravel", "rocket", "coffee",
                 "chelsea", "hubble_deep_field", "immunohistochemistry", "retina")
HELDOUT_SOURCES = ("coins", "cell")
#: bundled pictures in neither set, that no training run, validation or model choice has used: an independent check
#: of the pixel-shuffled results (``linblur evaluate defocus --shuffle-sources cat stereo_motorcycle clock``). The
#: validation runs that chose the shipped models drew other crops of HELDOUT_SOURCES (docs/results/defocus.md).
FRESH_SOURCES = ("cat", "stereo_motorcycle", "clock")
#: every name :func:`_natural` may load: scikit-image's pictures that ship inside its wheel (the others download)
BUNDLED_SOURCES = TRAIN_SOURCES + HELDOUT_SOURCES + FRESH_SOURCES


@dataclass
class DefocusDataConfig:
    """Recipe of the on-the-fly training data (stored in the model card)."""

    content: str = "mixed"
    crop: int = 80
    render_size: int = 128
    batch_size: int = 8
    pool_size: int = 1024
    sigma_range: tuple[float, float] = (0.0, 10.0)
    #: peak photo-electrons per pixel, drawn log-uniformly (``linblur train defocus --photons``)
    photons: tuple[float, float] = (100.0, 4000.0)
    read_noise: tuple[float, float] = (0.5, 3.0)  # electrons
    gain: tuple[float, float] = (0.5, 2.0)  # ADU per electron
    offset: tuple[float, float] = (90.0, 110.0)  # camera pedestal, ADU
    background: tuple[float, float] = (0.0, 0.1)  # fraction of peak
    salt_pepper_prob: float = 0.3
    salt_pepper_amount: float = 5e-4
    sources: tuple[str, ...] = TRAIN_SOURCES
    val_samples: int = 16
    #: "plane": noise over the whole rendered sample and the normalization fitted on it, then the crop — as
    #: inference normalizes a whole plane; "crop": noise and normalization of the crop alone (the recipe of the
    #: first defocus-default, whose card has no ``normalize`` entry)
    normalize: str = "plane"
    #: probability of low-contrast pixel-shuffled content (``sharp_content``); 0 = the recipes before it
    low_contrast: float = 0.0
    #: probability that a σ map spans the whole ``sigma_range`` (as the paper's maps and the held-out test maps)
    #: instead of a random sub-range of it; 0 = the recipes before it (sub-ranges only, which put 2-3x less
    #: weight on the ends of the range than a uniform σ, see docs/results/defocus.md)
    full_range: float = 0.0
    #: "none": the image alone (1 input channel); "map": the image and its camera-noise channel (2 channels,
    #: :func:`napari_linblur.inference.noise_input.noise_channel`)
    noise_input: str = "none"
    #: with ``noise_input="map"``: probability that the channel comes from the noise *estimated* from the noisy
    #: plane (as ``camera="auto"`` at inference) rather than from the sample's exact camera (a calibrated camera)
    noise_estimated: float = 0.5
    #: the user's own stacks as content (``linblur train defocus --content-from``): the in-focus plane of each of
    #: up to ``content_stacks`` stacks replaces the bundled scikit-image pictures as a histogram source of the
    #: pixel-shuffled content (paper 001 §2.2: shuffling an in-focus image gives an exactly sharp image with its
    #: intensity distribution); None = the bundled pictures. Validation keeps the held-out bundled pictures.
    content_from: str | None = None
    #: channel of ``content_from`` (index or name); None = every channel's stacks
    content_channel: int | str | None = None
    #: ``"auto"``: each stack's sharpest plane by the variance of the Laplacian; or a plane index (negative counts
    #: from the end)
    content_plane: int | str = "auto"
    content_stacks: int = 16
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.content not in CONTENTS:
            raise ValueError(f"content={self.content!r}; use one of {CONTENTS}")
        if self.normalize not in ("plane", "crop"):
            raise ValueError(f"normalize={self.normalize!r}; use 'plane' or 'crop'")
        if self.crop <= 0 or self.crop > self.render_size:
            raise ValueError(f"crop (--crop) must be in (0, render_size (--render-size) = {self.render_size}], got "
                             f"{self.crop}")
        if self.content_from is not None and self.content == "phantom":
            raise ValueError("content_from (--content-from) is read only by pixel-shuffled content: use content "
                             "'shuffle' or 'mixed' (--content), not 'phantom', which would leave it unused")
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {self.pool_size}")
        if self.noise_input not in ("none", "map"):
            raise ValueError(f"noise_input={self.noise_input!r}; use 'none' (image only) or 'map' (image and noise)")
        if not 0.0 <= self.noise_estimated <= 1.0:
            raise ValueError(f"noise_estimated must be a probability in [0, 1], got {self.noise_estimated}")
        if not 0.0 <= self.full_range <= 1.0:
            raise ValueError(f"full_range must be a probability in [0, 1], got {self.full_range}")
        if not 0.0 <= self.low_contrast <= 1.0:
            raise ValueError(f"low_contrast must be a probability in [0, 1], got {self.low_contrast}")
        if not 0 < self.photons[0] <= self.photons[1]:
            raise ValueError(f"photons (--photons LOW HIGH) must satisfy 0 < low <= high, in peak photo-electrons, "
                             f"got {self.photons}")
        lo, hi = self.sigma_range
        if not 0 <= lo < hi:
            raise ValueError(f"sigma_range must satisfy 0 <= low < high, got {self.sigma_range}")
        if self.content_from is not None:
            if not (self.content_plane == "auto" or isinstance(self.content_plane, int)
                    and not isinstance(self.content_plane, bool)):
                raise ValueError(f"content_plane must be 'auto' or a plane index, got {self.content_plane!r}")
            if isinstance(self.content_stacks, bool) or not isinstance(self.content_stacks, int) \
                    or self.content_stacks < 1:
                raise ValueError(f"content_stacks must be an int >= 1, got {self.content_stacks!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ------------------------------------------------------------------------------------------------ content
@functools.cache
def _natural(name: str) -> np.ndarray:
    """A scikit-image bundled image as float32 grey in [0, 1] (never downloads: only bundled names)."""
    import skimage.data

    if name not in BUNDLED_SOURCES:
        raise ValueError(f"{name!r} is not one of the pictures that ship with scikit-image (others would be "
                         f"downloaded); use one of {', '.join(BUNDLED_SOURCES)}")

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        img = img[0]
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 3:
        img = img[..., :3].mean(axis=-1)
    img = img - img.min()
    return img / max(float(img.max()), 1e-6)


def content_images(cfg: DefocusDataConfig) -> tuple[tuple[np.ndarray, ...], tuple[dict, ...]]:
    """The in-focus planes of ``cfg.content_from`` as [0, 1] float32 histogram sources, and which planes they are.

    Up to ``cfg.content_stacks`` stacks, evenly spaced over all stacks (positions, time points, fields and, without
    ``content_channel``, channels); in each, ``cfg.content_plane`` (``"auto"``: the sharpest by the variance of the
    Laplacian, a classical measure that does not depend on the network being trained). Each plane is scaled by its
    0.1/99.9 percentiles; constant planes are skipped. Cached per file (path, size and modification time).

    Returns
    -------
    images : tuple of ndarray
    planes : tuple of dict
        ``{"stack": i, "plane": z}`` for each image (``stack`` indexes the flattened leading axes).

    Raises
    ------
    FileNotFoundError, ValueError
        a missing or unreadable path (from :func:`~napari_linblur.io.readers.open_zstack`), a plane index out of
        range, non-finite pixels, or no plane with image content.
    """
    path = Path(os.fspath(cfg.content_from)).resolve()
    if not path.exists():
        raise FileNotFoundError(f"--content-from {cfg.content_from}: no such file or folder")
    return _content_images(str(path), cfg.content_channel, cfg.content_plane, int(cfg.content_stacks),
                           _stamp(path))


def _stamp(path: Path) -> tuple:
    """Size and modification time of a file, or of every file under a folder (a zarr store, a folder of TIFFs,
    whose own time does not change when a file inside it is rewritten)."""
    if path.is_file():
        st = path.stat()
        return (st.st_size, st.st_mtime_ns)
    stamps = []
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            stamps.append((os.path.join(root, name), st.st_size, st.st_mtime_ns))
    return tuple(sorted(stamps))


@functools.lru_cache(maxsize=4)
def _content_images(path: str, channel, plane, max_stacks: int, stamp) -> tuple[tuple[np.ndarray, ...],
                                                                                 tuple[dict, ...]]:
    from napari_linblur.inference.defocus_ops import best_focus
    from napari_linblur.inference.validate import name_arguments
    from napari_linblur.io.readers import open_zstacks

    # a ``linblur synth`` dataset: one NGFF image per field; the reader refuses values that are not intensities
    # (complex, strings), which a float32 cast would have turned silently into something else
    arrays = open_zstacks(path, channel=channel)
    stacks = [s for a in arrays for s in (a.reshape((-1, *a.shape[-3:])) if a.ndim >= 3 else a[None, None])]
    n, nz = len(stacks), int(stacks[0].shape[0]) if stacks else 0
    if plane != "auto" and not -nz <= int(plane) < nz:
        raise ValueError(f"--content-plane {plane} is out of range for {path}: its stacks have {nz} planes")
    images, used = [], []
    for i in sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, max_stacks))}) if n else []:
        stack = stacks[i]
        try:
            z = (int(best_focus(stack, method="variance_of_laplacian")) if nz > 1 else 0) if plane == "auto" \
                else int(plane) % nz
        except ValueError as err:  # NaN in a plane: best_focus's error names its argument ("stack"): name ours
            text = name_arguments(str(err), {"stack": f"stack {i}"})
            raise ValueError(f"--content-from {path}: {text}; training content must be finite") from err
        img = np.asarray(stack[z], dtype=np.float32)
        if not np.isfinite(img).all():
            raise ValueError(f"--content-from {path}: plane {z} of stack {i} has NaN or Inf pixels; training "
                             "content must be finite")
        lo, hi = np.percentile(img, [0.1, 99.9])
        if not hi > lo:
            continue  # constant: no histogram to shuffle
        images.append(np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
        used.append({"stack": i, "plane": z})
    if not images:
        raise ValueError(f"{path}: every chosen in-focus plane is constant; --content-from needs images with "
                         "content")
    return tuple(images), tuple(used)


def _crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape
    if h < size or w < size:
        img = np.pad(img, ((0, max(0, size - h)), (0, max(0, size - w))), mode="reflect")
        h, w = img.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return img[y : y + size, x : x + size]


def _phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """One channel of a sharp synthetic cell phantom, scaled to peak 1."""
    from napari_linblur.synth.phantoms import cell_phantom

    radius = float(rng.uniform(5.0, 14.0))
    n_cells = max(1, int(round(size * size / (3.14159 * radius**2 * rng.uniform(3.0, 10.0)))))
    ph = np.asarray(cell_phantom((size, size), n_cells=n_cells, nucleus_radius_px=radius, rng=rng), dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[int(rng.integers(0, ph.shape[0]))]
    ph = ph - ph.min()
    return ph / max(float(ph.max()), 1e-6)


def sharp_content(size: int, content: str, rng: np.random.Generator, sources=TRAIN_SOURCES,
                  low_contrast: float = 0.0) -> tuple[np.ndarray, str]:
    """All-in-focus content of ``size x size`` in [0, 1] and the kind drawn (``'shuffle'`` or ``'phantom'``).

    ``low_contrast``: probability that pixel-shuffled content has its contrast (std / mean) scaled down by a
    factor drawn log-uniformly from [0.03, 0.5] -- low-contrast texture, which at an unknown camera gain is hard
    to tell from a blurred image plus shot noise (docs/results/defocus.md). 0 (default) draws nothing extra, so
    older recipes replay exactly.
    """
    from napari_linblur.optics.shuffle import pixel_shuffle

    kind = content
    if content == "mixed":
        kind = "shuffle" if rng.random() < 0.5 else "phantom"
    if kind == "phantom":
        return _phantom(size, rng), kind
    # shuffle: a natural image or a phantom as histogram source, positions permuted
    if rng.random() < 0.5 and len(sources):
        pick = sources[int(rng.integers(0, len(sources)))]  # a bundled picture's name, or an image (content_from)
        src = _crop(_natural(pick) if isinstance(pick, str) else pick, size, rng)
        src = src ** float(rng.uniform(0.5, 2.0))  # vary the histogram shape
    else:
        src = _phantom(size, rng)
    out = pixel_shuffle(src, rng).astype(np.float32)
    if low_contrast > 0 and rng.random() < low_contrast:
        mean = float(out.mean())
        out = mean + float(np.exp(rng.uniform(np.log(0.03), np.log(0.5)))) * (out - mean)
    return out / max(float(out.max()), 1e-6), kind


def random_defocus_map(size: int, rng: np.random.Generator, sigma_range=(0.0, 10.0),
                       full_range: float = 0.0) -> np.ndarray:
    """Half Gaussian random field, half region map, over a random sub-range of ``sigma_range``.

    With probability ``full_range`` the map spans the whole ``sigma_range`` instead (0 draws nothing extra, so
    older recipes replay exactly).
    """
    from napari_linblur.optics.defocus_maps import gaussian_random_field_map, region_map

    if full_range > 0 and rng.random() < full_range:
        lo, hi = float(sigma_range[0]), float(sigma_range[1])
    else:
        lo, hi = np.sort(rng.uniform(sigma_range[0], sigma_range[1], 2))
    if rng.random() < 0.5:
        return gaussian_random_field_map((size, size), sigma_range=(lo, hi),
                                         correlation_px=float(rng.uniform(6.0, 40.0)), rng=rng)
    margins = (max(2, size * 50 // 256), max(1, size * 20 // 256))  # the paper's 50/20 px at 256x256
    return region_map((size, size), margins=margins, sigma_range=(lo, hi), rng=rng)


def render_sample(seed, cfg: DefocusDataConfig, *, size: int | None = None, sources=None):
    """Noise-free rendered sample: ``(blurred, sigma_map, kind)`` from a seed (int or sequence)."""
    from napari_linblur.optics.varying import render_spatially_varying

    rng = np.random.default_rng(seed)
    size = size or cfg.render_size
    if sources is None:
        sources = content_images(cfg)[0] if cfg.content_from is not None else cfg.sources
    sharp, kind = sharp_content(size, cfg.content, rng, sources, low_contrast=cfg.low_contrast)
    sig = random_defocus_map(size, rng, cfg.sigma_range, cfg.full_range)
    blurred = render_spatially_varying(sharp, sig)
    return np.clip(blurred, 0, None).astype(np.float32), sig.astype(np.float32), kind


def camera(blurred: np.ndarray, rng: np.random.Generator, cfg: DefocusDataConfig) -> tuple[np.ndarray, tuple]:
    """Background, Poisson–Gaussian camera noise with offset, optional salt-and-pepper.

    Returns the noisy ADU (float32) and the camera's noise variance line ``(a, b)``
    (:func:`napari_linblur.optics.noise.camera_variance_model`).
    """
    from napari_linblur.optics.noise import camera_variance_model, poisson_gaussian, salt_and_pepper

    peak = float(np.exp(rng.uniform(np.log(cfg.photons[0]), np.log(cfg.photons[1]))))
    bg = float(rng.uniform(*cfg.background))
    photons = (blurred + bg) * peak
    gain = float(rng.uniform(*cfg.gain))
    read = float(rng.uniform(*cfg.read_noise))
    offset = float(rng.uniform(*cfg.offset))
    adu = poisson_gaussian(photons, gain=gain, read_noise=read, offset=offset, rng=rng)
    if rng.random() < cfg.salt_pepper_prob:
        adu = salt_and_pepper(adu, float(rng.uniform(0, cfg.salt_pepper_amount)), rng=rng)
    return adu.astype(np.float32), camera_variance_model(gain, offset, read)


def make_sample(blurred: np.ndarray, sigma: np.ndarray, rng: np.random.Generator, cfg: DefocusDataConfig):
    """Crop, flip/rotate, add camera noise and normalize one pool item -> ``(x, sigma)`` float32 ``(crop, crop)``.

    With ``cfg.noise_input == "map"``, ``x`` is ``(2, crop, crop)``: the image and its noise channel
    (:func:`napari_linblur.inference.noise_input.noise_channel`), from the exact camera or, with probability
    ``cfg.noise_estimated``, from the noise estimated on the noisy plane -- as inference does.

    With ``cfg.normalize == "plane"`` the camera noise and the intensity normalization are those of the whole
    rendered sample (the crop is a window of a normalized plane, as at inference, where ``estimate_defocus``
    normalizes each plane once); with ``"crop"`` the crop is noised and normalized on its own, which stretches
    mostly-background crops far more than inference ever does.
    """
    from napari_linblur.inference.normalize import fit_normalization

    c = cfg.crop
    n = blurred.shape[-1]
    y, x = (int(v) for v in rng.integers(0, n - c + 1, 2))
    b = blurred[y : y + c, x : x + c]
    s = sigma[y : y + c, x : x + c]
    k = int(rng.integers(0, 4))
    b, s = np.rot90(b, k), np.rot90(s, k)
    flip = rng.random() < 0.5
    if flip:
        b, s = b[:, ::-1], s[:, ::-1]
    noise_map = cfg.noise_input == "map"

    def with_noise(raw: np.ndarray, norm, line) -> np.ndarray:
        from napari_linblur.inference.noise_input import model_input

        if noise_map and rng.random() < cfg.noise_estimated:  # drawn only for noise-aware recipes
            line = None  # the channel from the noise estimated on the noisy plane, as camera="auto"
        return model_input(raw, norm, noise=noise_map, line=line)

    if cfg.normalize == "plane":
        plane, line = camera(np.ascontiguousarray(blurred), rng, cfg)
        xin = with_noise(plane, fit_normalization(plane), line)
        window = np.rot90(xin[..., y : y + c, x : x + c], k, axes=(-2, -1))
        xin = window[..., ::-1] if flip else window
    else:
        noisy, line = camera(np.ascontiguousarray(b), rng, cfg)
        xin = with_noise(noisy, fit_normalization(noisy), line)
    return np.ascontiguousarray(xin, dtype=np.float32), np.ascontiguousarray(s, dtype=np.float32)


def _add_noise_input(src):
    """A 2-channel copy of an image-only HDMENet whose noise-channel weights are zero (same outputs at first)."""
    import torch

    from napari_linblur.models.hrnet import HDMENet

    net = HDMENet(**{**src.config, "in_channels": 2})
    state = src.state_dict()
    w = state["stem.0.weight"]
    state["stem.0.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    net.load_state_dict(state, strict=True)
    net.card = getattr(src, "card", {})
    return net.eval()


def _channels_first(xs: list[np.ndarray]) -> np.ndarray:
    """Stack samples ``(Y, X)`` or ``(C, Y, X)`` into a ``(B, C, Y, X)`` batch."""
    arr = np.stack(xs)
    return arr[:, None] if arr.ndim == 3 else arr


def recalibrate_batchnorm(model, task, n_batches: int = 64, *, start_step: int = 10**7) -> int:
    """Re-estimate BatchNorm running statistics as plain averages over ``n_batches`` training batches.

    The running averages kept during training lag behind the weights (momentum 0.1); a final pass in train mode
    with ``momentum=None`` (cumulative average) and no gradient gives statistics that match the final weights.
    Returns the number of BatchNorm layers updated (0 = nothing to do). Deterministic: batches come from
    ``task.batch(start_step + i)``.
    """
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m.momentum) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    dev = next(model.parameters()).device
    with torch.no_grad():
        for i in range(n_batches):
            x, _ = task.batch(start_step + i)
            model(x.to(dev))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


#: per-run sizes of a recipe; everything else in ``DefocusDataConfig`` (content, σ range and maps, camera, noise
#: input, normalization) is the recipe a new run can inherit from a trained model's card
_RUN_SIZES = ("crop", "render_size", "batch_size", "pool_size", "val_samples", "extra")
#: the user's content of one run (``--content-from``): not part of the recipe another run inherits
_RUN_CONTENT = ("content_from", "content_channel", "content_plane", "content_stacks")


def card_recipe(model: str = "defocus-default") -> dict:
    """The data recipe of a trained defocus model, from its card, as ``DefocusDataConfig`` keywords.

    Per-run sizes (crop, render size, batch, pool, validation samples) are left out, so a new run of any size
    trains on the same kind of data as ``model`` (the Train widget starts every defocus run from the shipped
    model's recipe this way). A card without a recipe (e.g. a model saved by hand) gives ``{}``: the defaults.

    Parameters
    ----------
    model : str
        a shipped name or a ``.safetensors`` path.

    Examples
    --------
    >>> card_recipe()["noise_input"], card_recipe()["full_range"]
    ('map', 0.75)
    """
    from napari_linblur.models.registry import read_card

    recipe = ((read_card(model).get("data") or {}).get("recipe")) or {}
    known = {f for f in DefocusDataConfig.__dataclass_fields__} - set(_RUN_SIZES) - set(_RUN_CONTENT)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items() if k in known}


class DefocusTask(StartsFromInit):
    """Task for :func:`napari_linblur.training.loop.train`: HDME-Net on on-the-fly defocus data.

    Parameters
    ----------
    model_config : dict
        ``HDMENet`` keywords (e.g. :func:`napari_linblur.models.hrnet.preset_config`).
    data : DefocusDataConfig
        Data recipe.
    seed : int
        Data seed (the pool and every batch derive from it).
    config_name : str
        Name of the model configuration, for the card.
    init : str, optional
        Start from this trained model (a shipped name or a ``.safetensors`` path).
    bn_batches : int
        Training batches over which :meth:`finalize` re-estimates the BatchNorm statistics after training
        (0 = keep the running averages).

    Examples
    --------
    >>> from napari_linblur.models.hrnet import preset_config
    >>> t = DefocusTask(preset_config("default"), DefocusDataConfig(content="shuffle", pool_size=2, crop=16,
    ...                 render_size=24, batch_size=2, val_samples=1, sources=("camera",)), seed=0)
    >>> x, s = t.batch(0)
    >>> tuple(x.shape), tuple(s.shape)
    ((2, 1, 16, 16), (2, 1, 16, 16))
    """

    name = "defocus"
    #: card entries a --resume may see change: the pool's rendering time is measured, not an option, and the
    #: ``output`` line is written from the recipe's σ range (compared as ``data.recipe.sigma_range``; runs started
    #: before it named the range said [0, 10] whatever it was); the starting weights' provenance is the one recorded
    #: with the run (:meth:`StartsFromInit.resume_from`)
    resume_ignore = ("data.pool_seconds", "output")

    def __init__(self, model_config: dict, data: DefocusDataConfig | None = None, *, seed: int = 0,
                 config_name: str = "custom", log=None, init: str | None = None, bn_batches: int = 64):
        if bn_batches < 0:
            raise ValueError(f"bn_batches must be >= 0 (0 = no re-estimation), got {bn_batches}")
        self.bn_batches = int(bn_batches)
        self.model_config = dict(model_config)
        self.init = str(init) if init else None
        self.data = data or DefocusDataConfig()
        self.data.validate()
        if self.data.content_from is not None:
            # one spelling of the path (a --resume from another folder or with ./x names the same content)
            self.data.content_from = str(Path(os.fspath(self.data.content_from)).resolve())
            content_images(self.data)  # read (and check) the user's content now, before a run folder exists
        channels = 2 if self.data.noise_input == "map" else 1
        if int(self.model_config.get("in_channels", channels)) != channels:
            hint = ""
            if self.init and channels == 1:  # e.g. --init defocus-default without its recipe's noise channel
                hint = (f" ({self.init} takes the camera-noise channel: continue it with --noise-input map, and its "
                        "other recipe options, listed in its card's data.recipe)")
            raise ValueError(f"noise_input={self.data.noise_input!r} needs in_channels={channels}, the model "
                             f"configuration has {self.model_config['in_channels']}{hint}")
        if channels != 1:
            self.model_config["in_channels"] = channels
        self._expanded_input = False
        self.seed = int(seed)
        self.config_name = config_name
        self._pool: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._val = None
        self._log = log
        self.pool_seconds: float | None = None

    # -- model
    def build_model(self):
        from napari_linblur.models.hrnet import HDMENet

        model = HDMENet(**self.model_config)
        if self.init and not self.resuming:  # continue from a saved model (same architecture and config)
            from napari_linblur.models.registry import init_weights, load_model

            src = load_model(self.init, device="cpu")
            if model.in_channels == 2 and getattr(src, "in_channels", None) == 1:
                src = _add_noise_input(src)  # an image-only model learns to use the noise channel from here
                self._expanded_input = True
            init_weights(model, src, "HDMENet")
        return model

    # -- data
    def pool(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The cached pool of noise-free rendered samples (built once, deterministic in ``seed``)."""
        if self._pool is None:
            t0 = time.perf_counter()
            self._pool = [render_sample([self.seed, 7, i], self.data)[:2] for i in range(self.data.pool_size)]
            self.pool_seconds = time.perf_counter() - t0
            if self._log is not None:
                self._log(f"rendered a pool of {self.data.pool_size} samples in {self.pool_seconds:.1f} s")
        return self._pool

    def batch(self, step: int, *, rank: int = 0, world: int = 1):
        import torch

        rng = np.random.default_rng([self.seed, int(step), int(rank), 1])
        xs, ss = [], []
        for i in range(self.data.batch_size):
            if self.data.pool_size:
                pool = self.pool()
                blurred, sig = pool[int(rng.integers(0, len(pool)))]
            else:
                blurred, sig, _ = render_sample([self.seed, 11, int(step), int(rank), i], self.data)
            x, s = make_sample(blurred, sig, rng, self.data)
            xs.append(x)
            ss.append(s)
        return torch.from_numpy(_channels_first(xs)), torch.from_numpy(np.stack(ss)[:, None])

    def loss(self, model, batch):
        import torch

        x, s = batch
        pred = model(x)
        l1 = torch.nn.functional.l1_loss(pred.float(), s)
        return l1, {"mae_px": float(l1.detach())}

    def validation_set(self):
        """Fixed held-out samples (held-out natural sources, other seeds)."""
        if self._val is None:
            import torch

            held = DefocusDataConfig(**{**asdict(self.data), "sources": HELDOUT_SOURCES})
            xs, ss = [], []
            for i in range(self.data.val_samples):
                blurred, sig, _ = render_sample([self.seed, 10**6, i], held, sources=HELDOUT_SOURCES)
                x, s = make_sample(blurred, sig, np.random.default_rng([self.seed, 10**6, i, 2]), held)
                xs.append(x)
                ss.append(s)
            self._val = (torch.from_numpy(_channels_first(xs)), torch.from_numpy(np.stack(ss)[:, None]))
        return self._val

    def validate(self, model) -> dict[str, float]:
        import torch

        x, s = self.validation_set()
        dev = next(model.parameters()).device
        with torch.no_grad():
            pred = model(x.to(dev)).float().cpu()
        err = (pred - s).abs()
        return {"val_loss": float(err.mean()), "val_mae_px": float(err.mean()),
                "val_rmse_px": float(((pred - s) ** 2).mean().sqrt())}

    def finalize(self, model, validation: dict) -> tuple[dict, dict]:
        """After training (called by the shared loop before it saves): re-estimate the BatchNorm statistics over
        ``bn_batches`` batches (:func:`recalibrate_batchnorm`) and re-validate.

        Returns the validation to record and card entries: ``validation_before_bn_recalibration`` and
        ``bn_recalibration`` (nothing for 0 batches or a model without BatchNorm).
        """
        import torch

        if self.bn_batches <= 0 or not recalibrate_batchnorm(model, self, self.bn_batches):
            return validation, {}
        model.eval()
        with torch.no_grad():
            val = {k: float(v) for k, v in self.validate(model).items()}
        if self._log is not None:
            self._log(f"BatchNorm statistics re-estimated over {self.bn_batches} batches: val_mae_px "
                      f"{validation.get('val_mae_px', float('nan')):.3f} -> {val['val_mae_px']:.3f}")
        return val, {"validation_before_bn_recalibration": validation,
                     "bn_recalibration": {"batches": self.bn_batches, "batch_size": self.data.batch_size}}

    def init_record(self) -> dict | None:
        """The shared provenance (:meth:`StartsFromInit.init_record`), noting a noise channel added to the init."""
        out = super().init_record()
        if out is not None and self._expanded_input and not self.resuming:
            out["input_added"] = "noise channel (its first-layer weights started at zero)"
        return out

    def card(self) -> dict:
        from napari_linblur.inference.noise_input import CHANNEL_DOC
        from napari_linblur.inference.normalize import HIGH_PERCENTILE, LOW_PERCENTILE

        return {
            "architecture": "HDMENet",
            "task": "defocus",
            "config": dict(self.model_config),
            "config_name": self.config_name,
            "init": self.init_record(),
            "output": "sigma (px) of the equivalent Gaussian PSF per pixel, trained on "
                      f"[{self.data.sigma_range[0]:g}, {self.data.sigma_range[1]:g}]",
            "normalization": {"kind": "fit_normalization per plane", "low_percentile": LOW_PERCENTILE,
                              "high_percentile": HIGH_PERCENTILE},
            **({"noise_input": {"channel": CHANNEL_DOC, "camera": "calibration given by the user, else "
                                "estimated from each plane (napari_linblur.optics.noise.estimate_variance_model)"}}
               if self.data.noise_input == "map" else {}),
            "data": {"recipe": self.data.to_dict(), "seed": self.seed,
                     "renderer": "napari_linblur.optics.varying.render_spatially_varying (scatter)",
                     "pool_seconds": None if self.pool_seconds is None else round(self.pool_seconds, 1),
                     **({"content_path": str(Path(os.fspath(self.data.content_from)).resolve()),
                         "content_planes": list(content_images(self.data)[1]),
                         # the recipe keeps its sources (a later run from this card may drop --content-from)
                         "sources_used": False,
                         "sources_note": "recipe.sources were not used: the planes of content_path replaced them "
                                         "as pixel-shuffled content"}
                        if self.data.content_from is not None else {})},
        }


CLASSICAL_LABELS = ("focus-measure (calibrated var. of Laplacian)", "Zhuo & Sim 2011")


def card_metrics(evaluation: dict, label: str, command: str) -> dict:
    """The model card's ``metrics`` from a ``linblur evaluate defocus`` result (``defocus_eval.json``).

    Held-out spatially varying sets (all / signal pixels, with the ratio to the better classical baseline when the
    baselines were run), the vectorial through-focus check and the real BBBC006 plane, for the model ``label``.
    """
    out: dict = {"evaluation_command": command,
                 "heldout": {k: evaluation["config"][k] for k in ("n_images", "seed", "size")}}
    for kind, rows in evaluation["spatially_varying"].items():
        for part in ("all", "signal"):
            m = rows[label][part]
            entry = {k: round(float(m[k]), 4) for k in ("mae_px", "rmse", "abs_rel", "delta1")}
            classical = [rows[c][part]["mae_px"] for c in CLASSICAL_LABELS if c in rows]
            if classical:
                entry["mae_ratio_best_classical"] = round(min(classical) / float(m["mae_px"]), 2)
            from napari_linblur.evaluation.defocus import CONSTANT_LABEL

            if CONSTANT_LABEL in rows:
                entry["mae_ratio_constant"] = round(float(rows[CONSTANT_LABEL][part]["mae_px"]) / float(m["mae_px"]), 2)
            out[f"{kind}_{part}"] = entry
    tf = evaluation.get("through_focus")
    if tf:
        est = tf["estimators"][label]
        out["through_focus_vectorial"] = {"spearman_rho": round(float(est["spearman_rho_vs_abs_defocus"]), 4),
                                          "best_focus": est["best_focus"], "in_focus_index": tf["in_focus_index"]}
    bb = evaluation.get("bbbc006")
    if bb:
        out["bbbc006_plane0"] = {k: round(float(v), 3) for k, v in bb["estimators"][label].items()}
    return out


def ship_model(run_dir: str | os.PathLike, evaluation: str | os.PathLike, label: str, *, command: str,
               name: str = "defocus-default", extra: dict | None = None) -> Path:
    """Copy a training run's model into the package as ``name`` (safetensors + card with sha256 and metrics).

    The card keeps what training wrote (config, exact command, data recipe + seed, ``init`` provenance, validation,
    BatchNorm re-estimation) and gains ``metrics`` (:func:`card_metrics` of the evaluation JSON, model ``label``),
    ``source_run`` and ``extra``.

    Examples
    --------
    >>> ship_model("/no/run", "/no/eval.json", "x", command="linblur evaluate defocus")
    Traceback (most recent call last):
    ...
    napari_linblur.errors.MissingFileError: /no/run/model.safetensors: train a model first (linblur train ...)
    """
    from napari_linblur.models.registry import WEIGHTS_DIR, load_run, save_shipped

    model, card = load_run(run_dir, "defocus")
    card["metrics"] = card_metrics(json.loads(Path(evaluation).read_text()), label, command)
    card["source_run"] = str(run_dir)
    card["name"] = name
    card.update(extra or {})
    return save_shipped(model, WEIGHTS_DIR / f"{name}.safetensors", card)
