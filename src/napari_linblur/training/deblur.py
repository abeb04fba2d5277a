"""Training data and task for the single-image deblurring network (DRBNet, issue 5), both stages.

Stage 1 — exact-correspondence pairs rendered by the optics (the role light-field rendering plays in DRBNet):
sharp fields (cell phantoms, and pixel-shuffled all-in-focus content) are blurred either by the through-focus PSF
of an :class:`~napari_linblur.optics.psf.OpticalSetup` at a random defocus ``d`` (Born–Wolf by default) or by a
*true* spatially varying Gaussian PSF (:func:`~napari_linblur.optics.varying.render_spatially_varying`) over a
Gaussian-random-field or region defocus map, then Poisson–Gaussian camera noise is added. The target is the sharp
field itself, pixel for pixel. The network is blind: it only ever sees the blurry image.

Stage 2 — captured-style pairs: plane ``z_k`` (``d = k · dz``) → plane ``z_0`` of a through-focus stack, where the
two acquisitions are, as in a real microscope, slightly misaligned (sub-pixel shift), differently exposed and
noisier; or pairs from real stacks read with :func:`napari_linblur.io.readers.open_zstack` (``--data``). The loss
adds a *feature loss* in the encoder feature space of our own autoencoder (``ae-default``), which tolerates the
misalignment that a pixel loss punishes.

Every batch is a pure function of ``(seed, step, rank)`` so the shared loop resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_linblur.inference.normalize import fit_normalization
from napari_linblur.training.loop import StartsFromInit

__all__ = [
    "DeblurData",
    "DeblurTask",
    "RealStackPairs",
    "cell_field",
    "feature_encoder",
    "make_test_set",
]


# --------------------------------------------------------------------------------------------------------------
# sharp content
def _fallback_phantom(rng: np.random.Generator, side: int) -> np.ndarray:
    """Fluorescent cell-like field (used only when ``napari_linblur.synth`` is not available)."""
    from scipy import ndimage as ndi

    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    img = np.zeros((side, side))
    n_cells = int(rng.integers(max(3, side * side // 4000), max(6, side * side // 1200)))
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, side, 2)
        ry, rx = rng.uniform(4, 14, 2)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) / ry
        v = (-dy * np.sin(th) + dx * np.cos(th)) / rx
        r = np.sqrt(u * u + v * v)
        edge = rng.uniform(0.05, 0.25)
        mask = 1.0 / (1.0 + np.exp((r - 1.0) / edge))
        img += mask * rng.uniform(0.3, 1.0)
    texture = ndi.gaussian_filter(rng.standard_normal((side, side)), rng.uniform(0.7, 2.0))
    texture /= texture.std() + 1e-9
    img *= np.clip(1.0 + 0.35 * texture, 0.2, None)
    # bright puncta (sub-resolution spots)
    spots = np.zeros((side, side))
    n_spots = int(rng.integers(side, 4 * side))
    spots[rng.integers(0, side, n_spots), rng.integers(0, side, n_spots)] = rng.uniform(0.3, 1.5, n_spots)
    img += ndi.gaussian_filter(spots, 0.6) * (img > 0.05)
    img += 0.03
    return (img / img.max()).astype(np.float32)


def cell_field(rng: np.random.Generator, side: int) -> np.ndarray:
    """One sharp single-channel fluorescent field ``(side, side)`` in [0, 1].

    Uses :func:`napari_linblur.synth.phantoms.cell_phantom` (a random one of its two channels) when available,
    otherwise a built-in phantom of ellipsoidal cells with texture and puncta.
    """
    try:
        from napari_linblur.synth.phantoms import cell_phantom
    except ImportError:
        return _fallback_phantom(rng, side)
    two = np.asarray(cell_phantom((side, side), rng=rng), dtype=np.float32)
    img = two[int(rng.integers(0, two.shape[0]))] if two.ndim == 3 else two
    img = img - img.min()
    return (img / max(float(img.max()), 1e-6)).astype(np.float32)


def _random_crop(rng: np.random.Generator, img: np.ndarray, side: int) -> np.ndarray:
    y = int(rng.integers(0, img.shape[-2] - side + 1))
    x = int(rng.integers(0, img.shape[-1] - side + 1))
    return img[..., y : y + side, x : x + side]


def _subpixel_shift(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.shift(img, (dy, dx), order=3, mode="reflect").astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
@dataclass
class DeblurData:
    """Recipe of the synthetic deblurring pairs (serialised into the model card).

    Attributes
    ----------
    patch : int
        Training patch side (multiple of 8).
    batch : int
        Pairs per step (split across DDP ranks).
    d_max_um : float
        Through-focus defocus drawn uniformly in ``[0, d_max_um]`` µm.
    sigma_max_px : float
        Spatially varying σ maps span ``[0, U(1, sigma_max_px)]`` px.
    p_varying : float
        Fraction of stage-1 pairs with spatially varying blur (the rest: through-focus planes).
    p_shuffle : float
        Fraction of pixel-shuffled all-in-focus content.
    photons : tuple
        Peak photo-electrons, drawn log-uniformly.
    read_noise : float
        Camera read noise, electrons.
    dz_um : float
        Stage 2: plane spacing of the simulated stacks (BBBC006: 2 µm).
    max_plane : int
        Stage 2: planes ``z_1 .. z_max_plane`` are paired with ``z_0``.
    shift_px : float
        Stage 2: maximal sub-pixel misalignment of the two acquisitions.
    exposure : tuple
        Stage 2: range of the exposure ratio between the two acquisitions.
    noise_boost : tuple
        Stage 2: the blurry acquisition gets ``1 / U(noise_boost)`` of the photons (noisier).
    pool : int
        Sharp fields rendered once per task; patches are cropped from them.
    pool_side : int
        Side of those fields.
    setup : dict
        The :class:`~napari_linblur.optics.psf.OpticalSetup` of the through-focus PSFs.
    depth_band : tuple
        ``(lo, hi, fraction)``: that fraction of the through-focus pairs draws ``d`` from ``[lo, hi]`` µm instead
        of ``[0, d_max_um]`` -- more practice where the network is weakest against deconvolution with the true
        PSF. Empty (default): uniform over ``[0, d_max_um]``.
    """

    patch: int = 64
    batch: int = 8
    d_max_um: float = 10.0
    sigma_max_px: float = 4.5
    p_varying: float = 0.45
    p_shuffle: float = 0.1
    photons: tuple = (60.0, 3000.0)
    read_noise: float = 2.0
    dz_um: float = 2.0
    max_plane: int = 4
    shift_px: float = 0.6
    exposure: tuple = (0.7, 1.4)
    noise_boost: tuple = (1.0, 3.0)
    pool: int = 24
    pool_side: int = 192
    setup: dict = field(
        default_factory=lambda: {"na": 0.45, "wavelength_um": 0.52, "pixel_um": 0.65, "model": "born_wolf"}
    )
    depth_band: tuple = ()

    def validate(self) -> None:
        if self.patch % 8 or self.patch < 16:
            raise ValueError(f"patch must be a multiple of 8 and >= 16, got {self.patch}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.pool_side < self.patch + 2 * 24:
            raise ValueError(f"pool_side must be >= patch + 48, got {self.pool_side}")
        if self.depth_band:
            if len(self.depth_band) != 3:
                raise ValueError(f"depth_band must be (lo_um, hi_um, fraction), got {self.depth_band!r}")
            lo, hi, frac = (float(v) for v in self.depth_band)
            if not (0.0 <= lo < hi <= self.d_max_um) or not 0.0 < frac <= 1.0:
                raise ValueError(
                    f"depth_band must satisfy 0 <= lo < hi <= d_max_um ({self.d_max_um}) and 0 < fraction <= 1, "
                    f"got {self.depth_band!r}"
                )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


class _Renderer:
    """Shared rendering machinery: the sharp pool, the PSF table and the noise model."""

    def __init__(self, data: DeblurData, seed: int):
        from napari_linblur.optics.psf import OpticalSetup

        data.validate()
        self.data = data
        rng = np.random.default_rng([seed, 7331])
        self.pool = [cell_field(rng, data.pool_side) for _ in range(data.pool)]
        self.setup = OpticalSetup(**data.setup)
        self.grid = np.round(np.arange(0.0, data.d_max_um + 1e-9, 0.25), 4)
        self.psfs = [np.asarray(p, np.float64) for p in self.setup.psf_stack(list(self.grid))]
        self.margin = max(p.shape[0] for p in self.psfs) // 2 + 2

    def psf(self, d_um: float) -> np.ndarray:
        return self.psfs[int(np.argmin(np.abs(self.grid - abs(d_um))))]

    def content(self, rng: np.random.Generator, side: int) -> np.ndarray:
        img = self.pool[int(rng.integers(0, len(self.pool)))]
        if rng.random() < 0.5:
            img = img.T
        img = np.rot90(img, int(rng.integers(0, 4)))
        crop = _random_crop(rng, img, side)
        if rng.random() < self.data.p_shuffle:
            from scipy import ndimage as ndi

            from napari_linblur.optics.shuffle import pixel_shuffle

            # pixel shuffle (paper 001's all-in-focus sampling), lightly band-limited so it stays a plausible image
            crop = ndi.gaussian_filter(pixel_shuffle(crop, rng), rng.uniform(0.5, 1.2))
        return np.ascontiguousarray(crop, dtype=np.float64)

    def draw_depth(self, rng: np.random.Generator) -> float:
        """Defocus of a through-focus pair, µm: uniform over ``[0, d_max_um]``, or in ``depth_band`` (its fraction)."""
        band = self.data.depth_band
        if band and rng.random() < float(band[2]):  # no extra draw without a band: older runs replay exactly
            return float(rng.uniform(float(band[0]), float(band[1])))
        return float(rng.uniform(0.0, self.data.d_max_um))

    def noisy(self, rng: np.random.Generator, img: np.ndarray, photons: float) -> np.ndarray:
        from napari_linblur.optics.noise import poisson_gaussian

        return np.asarray(
            poisson_gaussian(np.clip(img, 0, None) * photons, read_noise=self.data.read_noise, rng=rng),
            np.float32,
        )

    def stage1_pair(self, rng: np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """(blurry, sharp, info) in photo-electrons; ``kind`` in {'focus', 'varying'} or random."""
        from napari_linblur.optics.convolve import fft_convolve
        from napari_linblur.optics.defocus_maps import gaussian_random_field_map, region_map
        from napari_linblur.optics.varying import render_spatially_varying

        p, m = self.data.patch, self.margin
        big = self.content(rng, p + 2 * m)
        if kind is None:
            kind = "varying" if rng.random() < self.data.p_varying else "focus"
        if kind == "focus":
            d = self.draw_depth(rng)
            blurred = fft_convolve(big, self.psf(d))
            info = {"kind": "focus", "d_um": d}
        else:
            hi = float(rng.uniform(1.0, self.data.sigma_max_px))
            shape = big.shape
            if rng.random() < 0.6:
                smap = gaussian_random_field_map(shape, sigma_range=(0.0, hi), correlation_px=float(rng.uniform(8, 40)),
                                                 rng=rng)
            else:
                smap = region_map(shape, margins=(max(4, shape[0] // 5), 4), sigma_range=(0.0, hi), rng=rng)
            blurred = render_spatially_varying(big, smap)
            info = {"kind": "varying", "sigma_max": hi}
        photons = float(math.exp(rng.uniform(*np.log(self.data.photons))))
        blurry = self.noisy(rng, blurred[m : m + p, m : m + p], photons)
        sharp = (big[m : m + p, m : m + p] * photons).astype(np.float32)
        info["photons"] = photons
        return blurry, sharp, info

    def stage2_pair(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
        """Captured-style (z_k, z_0): misaligned, differently exposed, the blurry one noisier."""
        from napari_linblur.optics.convolve import fft_convolve

        p, m = self.data.patch, self.margin
        big = self.content(rng, p + 2 * m)
        k = int(rng.integers(1, self.data.max_plane + 1))
        d = k * self.data.dz_um + float(rng.uniform(-0.3, 0.3))
        zk = fft_convolve(big, self.psf(d))
        z0 = fft_convolve(big, self.psf(0.0))
        s = self.data.shift_px
        z0 = _subpixel_shift(z0, float(rng.uniform(-s, s)), float(rng.uniform(-s, s)))
        photons = float(math.exp(rng.uniform(*np.log(self.data.photons))))
        exposure = float(rng.uniform(*self.data.exposure))
        boost = float(rng.uniform(*self.data.noise_boost))
        blurry = self.noisy(rng, zk[m : m + p, m : m + p], photons / boost) * boost
        target = self.noisy(rng, z0[m : m + p, m : m + p], photons * exposure) / exposure
        return blurry, target, {"kind": "captured", "d_um": d, "photons": photons}


class RealStackPairs:
    """Pairs (plane z_k -> in-focus plane) cropped from real stacks opened with ``open_zstack``.

    Parameters
    ----------
    path : str
        zarr / OME-Zarr / TIFF stack / BBBC006 folder, or a ``linblur synth`` dataset (every field).
    focus_index : int, optional
        The in-focus plane; default: per field the plane of maximal variance of the Laplacian.
    max_offset : int
        Planes ``focus ± 1 .. max_offset`` are used as blurry inputs.
    channel : int, optional
        Channel to read.
    """

    def __init__(self, path: str, *, focus_index: int | None = None, max_offset: int = 4, channel=None):
        from napari_linblur.io.readers import open_zstacks

        self.path = os.fspath(path)
        self.max_offset = max_offset
        # Only the planes a pair can use (focus ± max_offset) are kept in memory, as float32; the stacks are read
        # lazily, one plane at a time to find the focus (a whole BBBC006 plate as float32 would be ~38 GB).
        self.stacks: list[np.ndarray] = []  # per stack: its planes first[i] .. first[i] + len - 1
        self.first: list[int] = []
        self.n_planes: list[int] = []
        self.focus: list[int] = []  # the in-focus plane's index in the whole stack
        for arr in open_zstacks(path, channel=channel):  # a ``linblur synth`` dataset: one stack per field
            if arr.ndim < 3:
                raise ValueError(f"--data {path}: expected a z-stack (..., Z, Y, X), got shape {arr.shape}")
            flat = arr.reshape((-1,) + tuple(arr.shape[-3:]))
            for st in flat:
                n = int(st.shape[0])
                if focus_index is not None:
                    if not 0 <= focus_index < n:
                        raise ValueError(f"focus_index={focus_index} is outside the stack's {n} planes")
                    f = int(focus_index)
                else:
                    f = int(np.argmax([_var_laplacian(np.asarray(st[z], dtype=np.float32)) for z in range(n)]))
                lo, hi = max(0, f - max_offset), min(n, f + max_offset + 1)
                kept = np.asarray(st[lo:hi], dtype=np.float32)
                where = f"--data {path}: stack {len(self.stacks)}"
                # a NaN would surface as "loss became nan" (blaming --lr) after a checkpoint was written; a
                # constant plane teaches nothing (its pairs are identical)
                if not np.isfinite(kept).all():
                    z = lo + int(np.argwhere(~np.isfinite(kept))[0][0])
                    raise ValueError(f"{where}, plane {z} has NaN or Inf pixels; training stacks must be finite")
                if float(kept.max()) == float(kept.min()):
                    raise ValueError(f"{where} is constant around its in-focus plane {f} (planes {lo}..{hi - 1}); "
                                     "training pairs need image content")
                self.stacks.append(kept)
                self.first.append(lo)
                self.n_planes.append(n)
                self.focus.append(f)

    def check_patch(self, patch: int) -> None:
        """The training patch must fit in every plane of the stacks.

        Raises
        ------
        ValueError
            naming ``--patch``, the smallest plane size and the largest patch that fits.

        Examples
        --------
        >>> pairs = RealStackPairs.__new__(RealStackPairs)
        >>> pairs.path, pairs.stacks = "s.tif", [np.zeros((3, 40, 24), np.float32)]
        >>> pairs.check_patch(24)
        >>> pairs.check_patch(32)  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: --data s.tif has planes of 40 x 24 px, smaller than the --patch 32 px training patch: give
        --patch 24 or less (a multiple of 8, >= 16), or train on larger images
        """
        if not self.stacks:
            raise ValueError(f"--data {self.path}: no z-stack found")
        h, w = min(int(st.shape[-2]) for st in self.stacks), min(int(st.shape[-1]) for st in self.stacks)
        if h < patch or w < patch:
            fits = min(h, w) // 8 * 8
            hint = (f"give --patch {fits} or less (a multiple of 8, >= 16), or train on larger images" if fits >= 16
                    else "--patch is at least 16 px: train on larger images")
            raise ValueError(f"--data {self.path} has planes of {h} x {w} px, smaller than the --patch {patch} px "
                             f"training patch: {hint}")

    def pair(self, rng: np.random.Generator, patch: int) -> tuple[np.ndarray, np.ndarray, dict]:
        i = int(rng.integers(0, len(self.stacks)))
        st, f, lo = self.stacks[i], self.focus[i], self.first[i]
        if st.shape[-2] < patch or st.shape[-1] < patch:
            self.check_patch(patch)  # the error that names --patch and the plane size
        offsets = [o for o in range(-self.max_offset, self.max_offset + 1) if o and 0 <= f + o < self.n_planes[i]]
        if not offsets:
            raise ValueError("the stacks have a single plane; stage 2 needs planes around the focus")
        k = f + offsets[int(rng.integers(0, len(offsets)))]
        y = int(rng.integers(0, st.shape[-2] - patch + 1))
        x = int(rng.integers(0, st.shape[-1] - patch + 1))
        return (st[k - lo, y : y + patch, x : x + patch], st[f - lo, y : y + patch, x : x + patch],
                {"kind": "real", "plane": k})


def _var_laplacian(img: np.ndarray) -> float:
    from scipy import ndimage as ndi

    return float(ndi.laplace(np.asarray(img, np.float64)).var())


def _normalized_pair(blurry: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalization fitted on the blurry input alone (as at inference) and applied to both."""
    n = fit_normalization(blurry)
    return n.apply(blurry), n.apply(target)


def make_test_set(kind: str, n: int, *, seed: int = 2_000_000, side: int = 128, data: DeblurData | None = None,
                  d_um: float | None = None) -> list[dict]:
    """Held-out pairs for evaluation (a seed range never used in training).

    Parameters
    ----------
    kind : {'focus', 'varying', 'captured'}
    n : int
        Pairs.
    seed : int
        Test seed (training uses the run seed for fields and ``[seed, step]`` for batches).
    side : int
        Image side.
    data : DeblurData, optional
        Recipe (default recipe with ``patch=side``).
    d_um : float, optional
        Fixed defocus for ``'focus'`` pairs.

    Returns
    -------
    list of dict
        ``blurry``, ``sharp`` (photo-electrons, float32), ``psf`` (the true PSF of ``'focus'`` pairs) and
        ``sigma_map`` (``'varying'``) plus the draw's info.
    """
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.defocus_maps import gaussian_random_field_map, region_map
    from napari_linblur.optics.varying import render_spatially_varying

    base = data or DeblurData()
    rec = dataclasses.replace(base, patch=side, pool=max(4, n // 2), pool_side=side + 2 * 48)
    r = _Renderer(rec, seed)
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 99])
        p, m = side, r.margin
        big = r.content(rng, p + 2 * m)
        photons = float(math.exp(rng.uniform(*np.log(rec.photons))))
        item: dict[str, Any] = {"photons": photons, "kind": kind}
        if kind == "focus":
            d = float(d_um if d_um is not None else rng.uniform(0, 8.0))
            psf = r.psf(d)
            blurred = fft_convolve(big, psf)
            item.update(d_um=d, psf=psf)
            sharp = big
        elif kind == "varying":
            hi = float(rng.uniform(1.5, 4.0))
            if i % 2 == 0:
                smap = gaussian_random_field_map(big.shape, sigma_range=(0.0, hi), correlation_px=24.0, rng=rng)
            else:
                smap = region_map(big.shape, margins=(max(4, big.shape[0] // 5), 4), sigma_range=(0.0, hi), rng=rng)
            blurred = render_spatially_varying(big, smap)
            item.update(sigma_map=smap[m : m + p, m : m + p].astype(np.float32), sigma_max=hi)
            sharp = big
        elif kind == "captured":
            blurry, target, info = r.stage2_pair(rng)
            item.update(info)
            item.update(blurry=blurry, sharp=target)
            out.append(item)
            continue
        else:
            raise ValueError(f"kind must be 'focus', 'varying' or 'captured', got {kind!r}")
        item["blurry"] = r.noisy(rng, blurred[m : m + p, m : m + p], photons)
        item["sharp"] = (sharp[m : m + p, m : m + p] * photons).astype(np.float32)
        out.append(item)
    return out


# --------------------------------------------------------------------------------------------------------------
def feature_encoder(ae: Any):
    """Return ``f(x) -> features`` from an autoencoder (its encoder; frozen by the caller).

    Accepts a module with ``encoder`` (a module), or ``encode`` (a method).
    """
    if hasattr(ae, "encoder") and callable(ae.encoder):
        return ae.encoder
    if hasattr(ae, "encode"):
        return ae.encode
    raise ValueError("feature_ae must be an autoencoder with an `encoder` module or an `encode` method")


class DeblurTask(StartsFromInit):
    """The deblurring task for :func:`napari_linblur.training.loop.train`.

    Parameters
    ----------
    stage : {1, 2}
        1: exact-correspondence optics pairs, L1; 2: captured-style pairs (and/or ``real_data``), L1 +
        ``feature_weight`` x feature loss.
    config : dict
        :class:`~napari_linblur.models.drbnet.DRBNet` arguments (or a name from ``drbnet.CONFIGS``).
    data : DeblurData
        Recipe.
    seed : int
        Data seed (pool of sharp fields and every batch).
    init : str, optional
        ``.safetensors`` of a previous stage to start from.
    feature_weight : float
        Weight of the feature loss (stage 2); 0 disables it.
    feature_ae : str or module, optional
        Autoencoder whose encoder defines the feature space: a name/path for ``registry.load_model``
        (default ``"ae-default"``) or a module (tests pass a randomly initialised ``LinearLatentAE``).
    real_data : str, optional
        Stacks for ``open_zstack``; stage-2 pairs are drawn from them (half of each batch when synthetic pairs
        are kept, see ``real_fraction``).
    real_fraction : float
        Fraction of stage-2 pairs from ``real_data``.
    replay : float
        Stage 2: fraction of pairs still drawn from the stage-1 optics (exact correspondence), so fine-tuning on
        captured-style pairs does not forget the exact pairs (0 = the paper's pure fine-tuning).
    pixel_loss : {'psnr', 'l1'}
        The pixel term at every scale. ``'psnr'`` (default): the batch mean of each pair's ``log10(MSE + 1e-6)``,
        i.e. minus its PSNR / 10 on the normalized scale; a pair's gradient is divided by its own error, so clean,
        high-SNR pairs (small errors, where exact deconvolution matters) weigh as much as noisy ones -- what the
        evaluation's mean PSNR per image rewards, and better at every depth than ``'l1'`` (mean absolute error,
        the loss of the models before it; docs/results/deblur.md).
    """

    name = "deblur"
    PIXEL_LOSSES = ("l1", "psnr")
    #: the feature autoencoder is checked by content (``loss.feature_ae_sha256``): how its path is spelled (relative
    #: in runs recorded before paths were made absolute) may change across a --resume
    resume_ignore = ("loss.feature_ae",)

    def __init__(self, *, stage: int = 1, config: dict | str = "default", data: DeblurData | None = None,
                 seed: int = 0, init: str | None = None, feature_weight: float = 0.0, feature_ae: Any = None,
                 real_data: str | None = None, real_fraction: float = 0.5, replay: float = 0.0,
                 val_size: int = 16, pixel_loss: str = "psnr"):
        from napari_linblur.models.drbnet import CONFIGS

        if pixel_loss not in self.PIXEL_LOSSES:
            raise ValueError(f"pixel_loss must be one of {self.PIXEL_LOSSES}, got {pixel_loss!r}")
        self.pixel_loss = pixel_loss

        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config must be one of {sorted(CONFIGS)} or a dict, got {config!r}")
            config = dict(CONFIGS[config])
        if not (math.isfinite(feature_weight) and feature_weight >= 0):
            raise ValueError(f"feature_weight (--feature-weight) must be a finite number >= 0, got {feature_weight}")
        if not 0.0 <= replay <= 1.0:
            raise ValueError(f"replay must be in [0, 1], got {replay}")
        if not (math.isfinite(real_fraction) and 0.0 <= real_fraction <= 1.0):
            raise ValueError(f"real_fraction (--real-fraction) must be a fraction in [0, 1], got {real_fraction}")
        self.replay = float(replay)
        self.stage, self.config, self.seed = stage, dict(config), int(seed)
        self.data = data or DeblurData()
        self.data.validate()
        self.init, self.feature_weight = init, float(feature_weight)
        self.real = RealStackPairs(real_data) if real_data else None
        if self.real is not None:  # before the pool is rendered: a patch larger than the planes is refused at once
            self.real.check_patch(self.data.patch)
        self.renderer = _Renderer(self.data, self.seed)
        # absolute: the card records it, and --resume from another folder or spelling is the same data
        self.real_data = os.path.abspath(os.fspath(real_data)) if real_data else None
        self.real_fraction = float(real_fraction)
        self._encoder = None
        self._ae_name: str | None = None
        self._ae_sha: str | None = None
        if self.feature_weight > 0:
            self._setup_feature_ae(feature_ae)
        # fixed validation set from a separate seed
        vrng = np.random.default_rng([self.seed, 10**6])
        pairs = [self._draw(vrng) for _ in range(val_size)]
        self._val = (np.stack([b for b, _ in pairs])[:, None], np.stack([t for _, t in pairs])[:, None])

    def _setup_feature_ae(self, feature_ae: Any) -> None:
        import torch

        from napari_linblur.models import registry

        if feature_ae is None or isinstance(feature_ae, (str, Path)):
            # a shipped name stays a name, a file its absolute path: the card records it, and a --resume from
            # another folder or with another spelling of the path names the same weights
            name = registry.model_arg(feature_ae) if feature_ae is not None else registry.DEFAULTS["ae"]
            ae = registry.load_model(name, device="cpu")
            self._ae_name = name
            self._ae_sha = registry.model_sha256(name)  # the card names the weights by content
        elif isinstance(feature_ae, torch.nn.Module):
            ae = feature_ae
            self._ae_name = type(ae).__name__ + " (module)"
            self._ae_sha = None
        else:
            raise TypeError(f"feature_ae must be a model name, a .safetensors path or a module, got {type(feature_ae)}")
        ae.eval()
        for prm in ae.parameters():
            prm.requires_grad_(False)
        self._ae = ae
        self._encoder = feature_encoder(ae)

    def _draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.stage == 1 or (self.replay > 0 and rng.random() < self.replay):
            blurry, target, _ = self.renderer.stage1_pair(rng)
        elif self.real is not None and rng.random() < self.real_fraction:
            blurry, target, _ = self.real.pair(rng, self.data.patch)
        else:
            blurry, target, _ = self.renderer.stage2_pair(rng)
        return _normalized_pair(blurry, target)

    # -- Task protocol ------------------------------------------------------------------------------------------
    def build_model(self):
        from napari_linblur.models.drbnet import DRBNet

        model = DRBNet(**self.config)
        if self.init and not self.resuming:  # continue from a saved model (same config, or a larger one to shrink)
            from napari_linblur.models.drbnet import shrink
            from napari_linblur.models.registry import init_weights, load_model

            src = load_model(self.init, device="cpu")
            if src.card.get("architecture") == "DRBNet" and src.config() != model.config():
                layout = (model.full_kernel, model.up_order)
                if (src.full_kernel, src.up_order) != layout:
                    raise ValueError(f"--init {self.init} has the layout full_kernel={src.full_kernel!r}, "
                                     f"up={src.up_order!r}; --config asks for full_kernel={layout[0]!r}, "
                                     f"up={layout[1]!r}: shrinking keeps the layout (pick a config of the same "
                                     "layout, e.g. speed for the lean default)")
                return shrink(src, model.widths, model.kernel_size).train()
            init_weights(model, src, "DRBNet")
        return model

    def batch(self, step: int, *, rank: int = 0, world: int = 1):
        import torch

        n = max(1, self.data.batch // max(1, world))
        rng = np.random.default_rng([self.seed, int(step), int(rank)])
        pairs = [self._draw(rng) for _ in range(n)]
        x = torch.from_numpy(np.stack([b for b, _ in pairs])[:, None])
        y = torch.from_numpy(np.stack([t for _, t in pairs])[:, None])
        return {"x": x, "y": y}

    def _features(self, img):
        import torch

        if self._ae is not None:
            self._ae.to(img.device)
        feats = self._encoder(img)
        if isinstance(feats, (list, tuple)):
            feats = feats[-1]
        return feats if torch.is_tensor(feats) else torch.as_tensor(feats)

    _ae = None

    def loss(self, model, batch):
        import torch
        import torch.nn.functional as F

        x, y = batch["x"], batch["y"]
        outs = model(x, return_all=True)  # 1/8, 1/4, 1/2, full
        parts = {}
        total = 0.0
        for i, out in enumerate(outs):
            f = 2 ** (len(outs) - 1 - i)
            tgt = F.avg_pool2d(y, f) if f > 1 else y
            if self.pixel_loss == "psnr":
                term = torch.log10(((out.float() - tgt) ** 2).mean(dim=(1, 2, 3)) + 1e-6).mean()
            else:
                term = F.l1_loss(out, tgt)
            total = total + (1.0 if f == 1 else 0.5 / f) * term
            if f == 1:  # logged either way: the full-scale mean absolute error
                parts["l1"] = float(term.detach()) if self.pixel_loss == "l1" else float(
                    F.l1_loss(out.detach(), tgt))
        if self.feature_weight > 0:
            fl = F.l1_loss(self._features(outs[-1]), self._features(y))
            total = total + self.feature_weight * fl
            parts["feat"] = float(fl.detach())
        return total, parts

    def validate(self, model) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        dev = next(model.parameters()).device
        x = torch.from_numpy(self._val[0]).to(dev)
        y = torch.from_numpy(self._val[1]).to(dev)
        with torch.no_grad():
            out = model(x)
        mse = ((out.float() - y) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        mse_in = ((x - y) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        return {
            "val_loss": float(F.l1_loss(out.float(), y)),
            "val_psnr": float((10 * torch.log10(1.0 / mse)).mean()),
            "val_psnr_input": float((10 * torch.log10(1.0 / mse_in)).mean()),
        }

    def card(self) -> dict:
        return {
            "architecture": "DRBNet",
            "task": "deblur",
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.config.items()},
            "stage": self.stage,
            "replay": self.replay,
            "init": self.init_record(),
            "loss": {
                "pixel": self.pixel_loss,
                "multiscale": "pixel term at full scale + 0.5/f x the same at 1/f (f = 2, 4, 8) vs the "
                "average-pooled target; l1 = mean absolute error, psnr = mean over pairs of log10(MSE + 1e-6)",
                "feature_weight": self.feature_weight,
                "feature_ae": self._ae_name,
                "feature_ae_sha256": self._ae_sha,
            },
            "data": {
                "recipe": self.data.to_dict(),
                "seed": self.seed,
                # stage 2: the real stacks (absolute path) and the fraction of pairs drawn from them
                "real_data": self.real_data,
                "real_fraction": self.real_fraction if self.real_data else None,
                "stage1": "optics pairs: through-focus PSF (OpticalSetup) or render_spatially_varying over cell "
                "fields and pixel-shuffled content, Poisson-Gaussian noise; target = the sharp field",
                "stage2": "captured-style z_k -> z_0 pairs (sub-pixel misalignment, exposure change, noisier input)"
                + (f" + real stacks from {self.real_data}" if self.real_data else ""),
            },
            "normalization": "inference.normalize.fit_normalization on the blurry input (0.1/99.9 percentiles)",
            "blind": True,
        }


def export_default(model_path: str, out_path: str, *, runs: dict[str, str] | None = None,
                   metrics: dict | None = None, extra: dict | None = None, continues: str | None = None) -> Path:
    """Write a trained run as a shipped model (``models/weights/NAME.safetensors`` + ``.json``, sha256).

    The card is the run's card plus ``stages`` (every run's training command, steps, seed, time, validation) and
    ``metrics`` (e.g. the summary of ``linblur evaluate deblur``).

    Parameters
    ----------
    model_path : str
        The run's ``model.safetensors``.
    out_path : str
        Destination ``.safetensors``.
    runs : dict name -> model.safetensors, optional
        The runs that led to it, in the order they ran (stage 1 legs, stage 2), recorded in the card:
        ``stages`` (each run's training, validation, loss) and ``legs_in_order`` / ``training_minutes_total``.
    metrics : dict, optional
        Measured results to record.
    extra : dict, optional
        More card entries (e.g. the sha256 of the autoencoder used by the feature loss).
    continues : str, optional
        The shipped model (name or ``.safetensors``, read before it is replaced) that the first of ``runs``
        continued with ``--init``: its ``stages`` and ``legs_in_order`` come first in the card, its
        ``training_minutes_total`` is added, and ``continues`` records its sha256, so the card lists and times the
        whole chain from its first leg.
    """
    from napari_linblur.models.registry import load_model, read_card, save_shipped

    model = load_model(model_path, device="cpu")
    card = dict(model.card)
    stages, legs = {}, []
    for name, path in (runs or {}).items():
        c = read_card(path)
        stages[name] = {"training": c.get("training"), "validation": c.get("validation"), "stage": c.get("stage"),
                        "init": c.get("init"), "loss": c.get("loss"), "replay": c.get("replay")}
        t = c.get("training") or {}
        legs.append({"name": name, "command": t.get("command"), "seconds": t.get("seconds")})
    before_minutes = 0.0
    if continues is not None:
        from napari_linblur.models.registry import model_sha256

        before = read_card(continues)
        clash = set(stages) & set(before.get("stages") or {})
        if clash:
            raise ValueError(f"runs {sorted(clash)} have the names of legs of {continues}; name them differently")
        stages = {**(before.get("stages") or {}), **stages}
        legs = list(before.get("legs_in_order") or []) + legs
        before_minutes = float(before.get("training_minutes_total") or 0.0)
        card["continues"] = {"model": str(continues), "sha256": model_sha256(continues),
                             "training_minutes_total": before.get("training_minutes_total")}
    card["stages"] = stages
    if legs:  # ``stages`` is a mapping (written with sorted keys); this keeps the order the legs ran in
        card["legs_in_order"] = legs
        new = legs[len(legs) - len(runs or {}):]
        card["training_minutes_total"] = round(before_minutes + sum(float(x["seconds"] or 0.0) for x in new) / 60.0,
                                               1)
    if metrics is not None:
        card["metrics"] = metrics
    card.update(extra or {})
    return save_shipped(model, out_path, card)
