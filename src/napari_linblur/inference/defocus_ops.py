"""Per-pixel defocus maps and focus QC: ``estimate_defocus``, ``focus_curve``, ``best_focus``.

* :func:`estimate_defocus` runs HDME-Net (paper 001) tiled with overlap over every plane and returns σ of the
  equivalent Gaussian PSF in pixels, float32, same shape as the input (numpy or lazy dask, one task per plane);
  ``mode="patch"`` gives the mean σ per ``patch_size`` tile over the plane's signal pixels (:func:`signal_mask`;
  NaN for a tile without any; ``patch_pixels="all"``: over every pixel), :func:`defocus_patches` the patch grid.
* :func:`sigma_to_defocus_um` converts σ maps to µm of defocus with the optics calibration
  (:func:`napari_linblur.optics.psf.defocus_from_sigma`).
* :func:`focus_curve` scores every plane (higher = sharper): ``"defocus"`` = minus the median estimated σ over
  the plane's signal pixels (:func:`signal_mask`), or a classical measure; :func:`best_focus` is its arg-max
  along Z.

torch is imported only inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .tiling import NETWORK_OVERLAP, _naming_the_plane, check_int, check_tiling_options, map_planes
from .validate import check_callbacks, check_finite_plane, check_image, is_dask

if TYPE_CHECKING:  # annotations only
    import dask.array as da
    from numpy.typing import ArrayLike

    from napari_linblur.optics.psf import OpticalSetup

#: Largest automatic tile of the defocus network: a 1024² plane is 2 x 2 tiles of 576 px. One whole 1024² tile
#: ran 1.54x slower in float32 on this CPU (1.08x in bf16) than the 528-px tiles used before session 15; 576-px
#: tiles with the 128 px overlap 1.21x (one thread, docs/results/defocus_tiling.py).
DEFOCUS_TILE_CAP = 576

__all__ = [
    "FOCUS_METHODS",
    "PATCH_PIXELS",
    "best_focus",
    "defocus_patches",
    "estimate_defocus",
    "focus_curve",
    "patch_means",
    "sigma_to_defocus_um",
    "signal_mask",
]

#: ``method`` names of :func:`focus_curve`; the classical ones map to :mod:`napari_linblur.metrics.focus`
FOCUS_METHODS = ("defocus", "variance_of_laplacian", "brenner", "tenengrad", "normalized_variance", "vollath")
_ALIASES = {"laplacian": "variance_of_laplacian", "normvar": "normalized_variance", "vollath_f4": "vollath"}

#: ``patch_pixels`` of :func:`estimate_defocus` / :func:`defocus_patches`: which pixels of a tile its σ averages
PATCH_PIXELS = ("signal", "all")
#: the patch mode's defaults: tiles of 64 px, σ averaged over their signal pixels
PATCH_SIZE, PATCH_PIXELS_DEFAULT = 64, "signal"

# --------------------------------------------------------------------------------------------------- model
class _PlaneDefocus:
    """Picklable per-plane σ estimator: holds a :class:`~napari_linblur.models.registry.ModelHandle` (the model's
    name, loaded once per worker process)."""

    def __init__(self, model, device, tile, overlap, batch_size, mode, patch_size, progress=None, should_stop=None,
                 amp="off", tta=1, camera=None, patch_pixels="signal"):
        from napari_linblur.models.registry import ModelHandle

        self.model = ModelHandle(model, "defocus", device, channels_last=True)  # fails early, warms the cache
        self.patch_pixels = patch_pixels
        self.camera = camera  # the noise variance line (a, b), or None = estimate from each plane
        self.amp = amp
        self.tta = tta
        self.device = device
        self.tile = tile
        self.overlap = overlap
        self.batch_size = batch_size
        self.mode = mode
        self.patch_size = patch_size
        self.progress = progress
        self.should_stop = should_stop

    def __getstate__(self):
        state = dict(self.__dict__)
        state["progress"] = state["should_stop"] = None
        return state

    def net(self):
        return self.model.get()

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            from napari_linblur.inference.tiling import Cancelled

            raise Cancelled("cancelled")

    def __call__(self, plane: np.ndarray) -> np.ndarray:
        from napari_linblur.inference.device import amp_forward, resolve_amp, resolve_device
        from napari_linblur.inference.noise_input import model_input
        from napari_linblur.inference.tiling import auto_tile, tiled_apply
        from napari_linblur.inference.tta import self_ensemble

        plane = np.asarray(plane)
        self._check_stop()
        check_finite_plane(plane, "img")
        net = self.net()
        if self.camera is not None and getattr(net, "in_channels", 1) == 2:
            check_camera_fits(plane, self.camera)
        # a noise-aware model also takes the camera-noise channel (same input as in training); on a large plane
        # the noise estimate takes seconds, so a superseded preview is stopped before and after it
        x = model_input(plane, noise=getattr(net, "in_channels", 1) == 2, line=self.camera)
        self._check_stop()
        dev = next(net.parameters()).device if any(True for _ in net.parameters()) else resolve_device(self.device)
        multiple = int(getattr(net, "multiple", 16))
        tile = self.tile or auto_tile(*plane.shape[-2:], overlap=self.overlap, multiple=multiple,
                                      cap=DEFOCUS_TILE_CAP)
        amp = resolve_amp(self.amp, dev)
        sigma = tiled_apply(
            self_ensemble(lambda t: amp_forward(net, t, amp), self.tta), x, out_channels=1, tile=tile,
            overlap=self.overlap,
            multiple=multiple, batch_size=self.batch_size, device=dev,
            progress=self.progress, should_stop=self.should_stop,
        )[0]
        sigma = np.maximum(sigma, 0.0).astype(np.float32)
        if self.mode == "patch":
            sigma = patch_map(sigma, plane, self.patch_size, self.patch_pixels)
        return sigma


def check_camera_fits(plane: np.ndarray, line: tuple[float, float]) -> None:
    """Warn when a camera calibration predicts no noise for most of ``plane``: its variance line ``a v + b`` is
    ≤ 0 at the plane's median, i.e. the calibration's offset lies above most of the data (an offset for another
    bit depth, binning or camera). The noise channel would then say "noise-free" where the image is noisy."""
    a, b = line
    median = float(np.median(plane))
    if a * median + b < 0:  # = 0 is a noise-free detector's background (read noise 0): right, not a misfit
        dark = -b / a  # where the line reaches zero: offset - gain * read_noise²
        # one text per calibration (not per plane), so that a stack warns once
        warnings.warn(f"the camera calibration does not fit this image: it predicts no noise below {dark:.6g}, "
                      "and half of a plane's values are below that (is the offset for another bit depth, binning or "
                      "camera?); the σ map will read noise as detail. Check camera=, or use camera='auto' to "
                      "estimate the noise from the image", UserWarning, stacklevel=2)


def _plane_defocus(model, device, *, tile, overlap, batch_size, mode="pixel", patch_size=PATCH_SIZE,
                   patch_pixels=PATCH_PIXELS_DEFAULT,
                   amp="auto", tta=1, camera="auto", progress=None, should_stop=None) -> _PlaneDefocus:
    """The validated per-plane σ estimator shared by :func:`estimate_defocus` and the ``defocus`` focus score.

    ``tile=None`` = automatic (chosen per plane) with a 128 px overlap; a given tile defaults to an overlap of
    ``min(128, tile // 4)``.
    """
    from .noise_input import resolve_camera
    from .tta import check_tta

    tta = check_tta(tta)
    line = resolve_camera(camera)
    if mode not in ("pixel", "patch"):
        raise ValueError(f"mode={mode!r}; use 'pixel' (per-pixel map) or 'patch' (mean σ per tile)")
    tile, overlap, batch_size = check_tiling_options(tile, overlap, batch_size, default_overlap=NETWORK_OVERLAP,
                                                     cap=DEFOCUS_TILE_CAP)
    patch_size = check_int(patch_size, "patch_size", 4)
    _check_patch_pixels(patch_pixels)
    if mode == "pixel":  # a patch option given for a per-pixel map: said, not silently ignored

        for name, value, default in (("patch_size", patch_size, PATCH_SIZE),
                                     ("patch_pixels", patch_pixels, PATCH_PIXELS_DEFAULT)):
            if value != default:
                warnings.warn(f"{name} is not used by mode='pixel' (only by mode='patch', the mean σ per tile); it "
                              "is ignored", UserWarning, stacklevel=4)
    if amp not in ("auto", "off", "bf16"):
        raise ValueError(f"amp={amp!r}; use 'auto', 'off' or 'bf16'")
    return _PlaneDefocus(model, device, tile, overlap, batch_size, mode, patch_size, progress, should_stop,
                         amp=amp, tta=tta, camera=line, patch_pixels=patch_pixels)


def _check_patch_pixels(patch_pixels: Any) -> str:
    if not isinstance(patch_pixels, str) or patch_pixels not in PATCH_PIXELS:
        raise ValueError(f"patch_pixels={patch_pixels!r}; use 'signal' (mean σ over the plane's signal pixels of "
                         "each tile, NaN for a tile without any) or 'all' (mean over every pixel of the tile)")
    return patch_pixels


def patch_map(sigma: np.ndarray, plane: np.ndarray, patch_size: int = PATCH_SIZE,
              patch_pixels: str = PATCH_PIXELS_DEFAULT) -> np.ndarray:
    """The ``mode="patch"`` map of a plane from its per-pixel σ map: each tile's mean over its pixels
    (``patch_pixels``), spread over the tile, NaN in tiles without such pixels — what ``estimate_defocus(plane,
    mode="patch")`` returns, without running the network again (the live map of the Defocus widget reuses the pixel
    map when only the tile options change).

    Examples
    --------
    >>> sigma = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> patch_map(sigma, np.ones((4, 4)), 2, "all")[::2, ::2].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    grid = patch_means(sigma, patch_size, mask=_patch_mask(plane, patch_pixels))
    return _broadcast_patches(grid, sigma.shape, patch_size)


def _patch_mask(plane: np.ndarray, patch_pixels: str) -> np.ndarray | None:
    """The pixels a patch mean averages: None = all; else the plane's :func:`signal_mask` (computed once on the
    whole plane), all pixels when no pixel stands out (texture everywhere, or only noise: as the ``defocus`` focus
    score), none (NaN everywhere) for a constant plane, which holds no blur information at all."""
    if patch_pixels == "all":
        return None
    if plane.min() == plane.max():
        return np.zeros(plane.shape, bool)
    mask = signal_mask(plane)
    return mask if mask.any() else None


# ------------------------------------------------------------------------------------------- estimation
def _check_stack(x: Any, name: str) -> Any:
    """:func:`~napari_linblur.inference.validate.check_image`, whose NaN/Inf check of a numpy stack runs plane by
    plane (still before any work) so that its error names the plane, as the per-plane check of a dask stack does
    at compute time: ``"stack contains NaN or Inf values; ... (at plane (1, 2) of the input)"``."""
    x = check_image(x, name, check_finite=False)
    if not is_dask(x):
        for idx in np.ndindex(*x.shape[:-2]):
            with _naming_the_plane(idx):
                check_finite_plane(x[idx], name)
    return x


def estimate_defocus(
    img: Any,
    *,
    model: Any = None,
    device: Any = "auto",
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 1,
    mode: str = "pixel",
    patch_size: int = PATCH_SIZE,
    patch_pixels: str = PATCH_PIXELS_DEFAULT,
    amp: str = "auto",
    tta: int = 1,
    camera: Any = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Per-pixel defocus map: σ (pixels) of the equivalent Gaussian PSF at every pixel.

    Parameters
    ----------
    img : numpy or dask array, (Y, X) or (..., Y, X)
        Any real dtype, any size; stacks are processed plane by plane (each plane normalized on its own with
        :func:`~napari_linblur.inference.normalize.fit_normalization`, as in training).
    model : None, str, path or torch.nn.Module
        ``None`` = the shipped ``defocus-default``; a shipped name or a ``.safetensors`` path from
        ``linblur train defocus``.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``...
    tile, overlap : int
        Tile side and overlap (pixels) of the tiled inference; tiles are blended smoothly, images smaller than
        a tile are padded by reflection to the network's multiple and cropped back. ``tile=None`` chooses the
        tile (≤ 576 px, :data:`DEFOCUS_TILE_CAP`) that processes the fewest pixels
        (:func:`~napari_linblur.inference.tiling.auto_tile`; a 1024² plane is 2 x 2 tiles of 576 px);
        ``overlap=None`` uses 128 px for the automatic tile (the network's context: tile borders then agree
        with a whole-plane run to about 0.01 px) and ``min(128, tile // 4)`` for a given tile.
    batch_size : int
        Tiles per forward pass.
    mode : {"pixel", "patch"}
        ``"pixel"``: the per-pixel map. ``"patch"``: the mean σ of every ``patch_size`` x ``patch_size`` tile,
        broadcast back to the image shape (quick QC; :func:`defocus_patches` returns the grid itself).
    patch_size : int
        Patch side for ``mode="patch"``.
    patch_pixels : {"signal", "all"}
        Which pixels of a tile ``mode="patch"`` averages. ``"signal"`` (default): the plane's signal pixels
        (:func:`signal_mask`, computed once on the whole plane, as the ``defocus`` score of :func:`focus_curve`);
        a tile without any signal pixel (empty background, where σ is the network's guess, not a measurement) is
        NaN. A plane with no pixel standing out (texture everywhere, or only noise) averages all its pixels; a
        constant plane is NaN everywhere. ``"all"``: every pixel of the tile (background included). Ignored with
        ``mode="pixel"``.
    amp : {"auto", "off", "bf16"}
        ``"auto"``: bf16 autocast where the hardware runs it natively (a CPU with AVX512-BF16/AMX, a bf16 GPU),
        about 1.4-1.7x faster on such a CPU; the map moves by at most 0.13 px (benchmarks/bench_defocus.py).
        ``"off"``: float32.
    tta : {1, 2, 4, 8}
        Self-ensemble: the mean σ map over this many flips/rotations of every tile
        (:func:`~napari_linblur.inference.tta.self_ensemble`); ``tta`` times slower. 1 = off.
    camera : "auto", dict or (gain, offset, read_noise)
        The camera's noise, for noise-aware models (those whose card has ``noise_input``; image-only models
        ignore it): ``"auto"`` estimates it from each plane
        (:func:`~napari_linblur.optics.noise.estimate_variance_model`); a calibration is
        ``{"gain": ADU per photo-electron, "offset": dark level in ADU, "read_noise": electrons}``.
    progress, should_stop : callable, optional
        Per-tile progress callback and cancel hook (numpy input only: with dask input they are not used, and a
        warning says so).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32 σ map, same shape as ``img`` (dask in -> lazy dask out, one task per plane); with
        ``mode="patch"`` NaN in the tiles without signal pixels.

    Raises
    ------
    ValueError, TypeError
        Bad image, mode, tile, patch size, ``patch_pixels`` or ``tta``; no defocus model available. An error about
        one plane of a stack names the plane.

    Examples
    --------
    >>> import numpy as np, napari_linblur as nl
    >>> img = np.random.default_rng(0).poisson(100, (64, 80)).astype("uint16")
    >>> sigma = nl.estimate_defocus(img, device="cpu")
    >>> sigma.shape, sigma.dtype.name
    ((64, 80), 'float32')
    """
    img = _check_stack(img, "img")
    progress, should_stop = check_callbacks(progress, should_stop, lazy=is_dask(img))
    fn = _plane_defocus(model, device, tile=tile, overlap=overlap, batch_size=batch_size, mode=mode,
                        patch_size=patch_size, patch_pixels=patch_pixels, amp=amp, tta=tta, camera=camera,
                        progress=progress, should_stop=should_stop)
    return map_planes(fn, img)


def patch_means(sigma_map: Any, patch_size: int = PATCH_SIZE, mask: Any = None) -> np.ndarray:
    """Mean of a 2-D map over ``patch_size`` tiles (the last row/column of tiles may be smaller).

    Parameters
    ----------
    sigma_map : array_like, (Y, X)
        The map (e.g. σ in px from :func:`estimate_defocus`).
    patch_size : int
        Tile side, ``>= 1``.
    mask : array_like of bool, (Y, X), optional
        Average only these pixels of every tile (e.g. :func:`signal_mask` of the plane); a tile without any is
        NaN. None: every pixel.

    Returns
    -------
    numpy.ndarray
        float32 grid of shape ``(ceil(Y / patch_size), ceil(X / patch_size))``.

    Examples
    --------
    >>> patch_means(np.arange(16.0).reshape(4, 4), 2)
    array([[ 2.5,  4.5],
           [10.5, 12.5]], dtype=float32)
    >>> m = np.zeros((4, 4), bool); m[0, 0] = m[3, 3] = True
    >>> patch_means(np.arange(16.0).reshape(4, 4), 2, mask=m)
    array([[ 0., nan],
           [nan, 15.]], dtype=float32)
    """
    s = np.asarray(sigma_map, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"sigma_map must be 2-D (Y, X), got shape {s.shape}")
    p = check_int(patch_size, "patch_size", 1)
    ny, nx = -(-s.shape[0] // p), -(-s.shape[1] // p)
    rows, cols = np.arange(0, s.shape[0], p), np.arange(0, s.shape[1], p)

    def tile_sums(a: np.ndarray) -> np.ndarray:
        return np.add.reduceat(np.add.reduceat(a, rows, axis=0), cols, axis=1)

    if mask is None:
        hy = np.minimum(p, s.shape[0] - np.arange(ny) * p)
        hx = np.minimum(p, s.shape[1] - np.arange(nx) * p)
        return (tile_sums(s) / np.outer(hy, hx)).astype(np.float32)
    m = np.asarray(mask)
    if m.shape != s.shape:
        raise ValueError(f"mask has shape {m.shape}; it must have the map's shape {s.shape}")
    if m.dtype != bool:
        raise TypeError(f"mask must be a boolean array, got dtype {m.dtype}")
    counts = tile_sums(m.astype(np.float64))
    sums = tile_sums(np.where(m, s, 0.0))
    out = np.full(counts.shape, np.nan)
    np.divide(sums, counts, out=out, where=counts > 0)
    return out.astype(np.float32)


def _broadcast_patches(grid: np.ndarray, shape: tuple[int, int], patch_size: int) -> np.ndarray:
    """Each tile's value over its pixels, for a plane of ``shape`` (the last row and column of tiles cut at the
    plane's edge: a ``patch_size`` larger than the plane costs no more than the plane)."""
    reps = [np.minimum(patch_size, n - np.arange(k) * patch_size) for k, n in zip(grid.shape, shape)]
    return np.ascontiguousarray(np.repeat(np.repeat(grid, reps[0], axis=0), reps[1], axis=1), dtype=np.float32)


def defocus_patches(img: Any, *, patch_size: int = PATCH_SIZE, patch_pixels: str = PATCH_PIXELS_DEFAULT,
                    model: Any = None,
                    device: Any = "auto", **kwargs: Any) -> np.ndarray:
    """Patch grid of mean σ: ``(..., ceil(Y / patch_size), ceil(X / patch_size))`` float32 (computed).

    The values of ``estimate_defocus(img, mode="patch")``, one per tile: by default the mean σ over the plane's
    signal pixels in the tile, NaN for a tile without any (``patch_pixels``, as in :func:`estimate_defocus`).
    Other keyword arguments go to :func:`estimate_defocus`. Dask inputs are computed plane by plane.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.random.default_rng(0).poisson(100, (64, 96)).astype("uint16")
    >>> defocus_patches(img, patch_size=32, device="cpu").shape
    (2, 3)
    """
    img = check_image(img, "img", check_finite=False)  # estimate_defocus checks it
    patch_size = check_int(patch_size, "patch_size", 4)
    mode = kwargs.pop("mode", "patch")
    if mode != "patch":
        raise ValueError(f"mode={mode!r}: defocus_patches always averages tiles (mode='patch'); for the per-pixel "
                         "map use estimate_defocus(img, mode='pixel')")
    sigma = estimate_defocus(img, model=model, device=device, mode="patch", patch_size=patch_size,
                             patch_pixels=patch_pixels, **kwargs)
    lead = tuple(img.shape[:-2])
    ny, nx = -(-img.shape[-2] // patch_size), -(-img.shape[-1] // patch_size)
    out = np.empty(lead + (ny, nx), np.float32)
    for idx in np.ndindex(*lead):
        out[idx] = np.asarray(sigma[idx][::patch_size, ::patch_size])  # every tile is constant: its first pixel
    return out


def sigma_to_defocus_um(
    sigma_map: ArrayLike | da.Array,
    *,
    na: float | None = None,
    wavelength_um: float | None = None,
    pixel_um: float | None = None,
    ni: float = 1.0,
    psf_model: str = "born_wolf",
    setup: OpticalSetup | None = None,
) -> np.ndarray | da.Array:
    """Convert σ (pixels) to |defocus| (µm) with the optics calibration of a microscope.

    Uses :func:`napari_linblur.optics.psf.defocus_from_sigma` for the
    :class:`~napari_linblur.optics.psf.OpticalSetup` ``(na, wavelength_um, pixel_um, ni, psf_model)``
    (or ``setup`` when given). σ below the setup's in-focus σ maps to 0 µm. The sign of the defocus (above or
    below focus) cannot be told from one image. NaN (a patch map's tile without signal pixels) stays NaN.

    Parameters
    ----------
    sigma_map : array_like or dask array
        σ in pixels (``>= 0``; small negative values are clipped to 0; NaN passes through, Inf is an error).
    na, wavelength_um, pixel_um, ni : float
        Numerical aperture, emission wavelength (µm), pixel size in the sample (µm), immersion index.
    psf_model : {"born_wolf", "gibson_lanni", "gaussian", "disc"}
        PSF model whose equivalent σ is tabulated.
    setup : OpticalSetup, optional
        Overrides the individual arguments.

    Returns
    -------
    defocus_um : numpy.ndarray or dask.array.Array of float32
        |defocus| in µm (``>= 0``; NaN where ``sigma_map`` is NaN), same shape as ``sigma_map``
        (dask in -> dask out, converted lazily block by block).

    Examples
    --------
    >>> import numpy as np
    >>> um = sigma_to_defocus_um(np.array([0.0, 3.88]), na=0.45, wavelength_um=0.5, pixel_um=0.65,
    ...                          psf_model="gaussian")
    >>> [round(float(v), 1) for v in um]
    [0.0, 10.0]
    >>> sigma_to_defocus_um(np.array([np.nan]), na=0.45, wavelength_um=0.5, pixel_um=0.65)
    array([nan], dtype=float32)
    """
    from napari_linblur.optics.psf import OpticalSetup, defocus_from_sigma

    if sigma_map is None or isinstance(sigma_map, (str, bytes)):
        raise TypeError(f"sigma_map must be an array of σ in px (numpy or dask), got {sigma_map!r}")
    if not is_dask(sigma_map):
        sigma_map = np.asarray(sigma_map)
    if np.dtype(sigma_map.dtype).kind not in "uif":
        raise TypeError(f"sigma_map has dtype {sigma_map.dtype}; expected real σ values in px (e.g. float32)")
    if setup is None:
        if na is None or wavelength_um is None or pixel_um is None:
            raise ValueError("sigma_to_defocus_um needs na, wavelength_um and pixel_um (or setup=OpticalSetup(...))")
        setup = OpticalSetup(na=na, wavelength_um=wavelength_um, pixel_um=pixel_um, ni=ni, model=psf_model)
    elif not isinstance(setup, OpticalSetup):
        raise TypeError(f"setup must be an OpticalSetup, got {type(setup).__name__}")

    def conv(block):
        b = np.asarray(block, dtype=np.float64)
        if np.isinf(b).any():
            raise ValueError("sigma_map contains Inf values (NaN, e.g. a patch without signal pixels, passes through)")
        nan = np.isnan(b)
        um = np.asarray(defocus_from_sigma(np.clip(np.where(nan, 0.0, b), 0.0, None), setup), dtype=np.float32)
        um = um.reshape(b.shape)
        um[nan] = np.nan
        return um

    if is_dask(sigma_map):
        return sigma_map.map_blocks(conv, dtype=np.float32)
    return conv(sigma_map)


# ------------------------------------------------------------------------------------------- focus QC
def signal_mask(plane, *, smooth: float = 2.0, fraction: float = 0.2, min_snr: float = 5.0) -> np.ndarray:
    """Pixels that carry signal (foreground) in a fluorescence plane; empty when there is none.

    The plane is smoothed (Gaussian, ``smooth`` px); the background is its median ``b`` and the noise ``n`` the
    robust (MAD) standard deviation of the plane minus its smoothed version. Pixels brighter than
    ``b + fraction * (p99.5 - b)`` are signal, provided the contrast ``p99.5 - b`` exceeds ``min_snr * n``
    (otherwise the plane is empty or constant and the mask is all False).

    Parameters
    ----------
    plane : array_like or dask array, shape (Y, X)
        One real-valued plane (any intensity scale; computed if lazy), finite.
    smooth : float
        σ of the Gaussian smoothing, pixels (``0``: none).
    fraction : float
        Threshold as a fraction of the contrast ``p99.5 - b`` above the background, on the smoothed plane
        (``0``: every pixel brighter than the median, ``1``: only pixels above the 99.5th percentile).
    min_snr : float
        Least contrast ``p99.5 - b``, in units of the noise ``n``, for the plane to count as having signal.

    Returns
    -------
    mask : ndarray of bool, shape (Y, X)
        True on signal pixels; all False for an empty, noise-only or constant plane.

    Examples
    --------
    >>> p = np.zeros((32, 32)); p[8:16, 8:16] = 100
    >>> int(signal_mask(p).sum()) > 40, bool(signal_mask(np.ones((32, 32))).any())
    (True, False)
    """
    from scipy import ndimage as ndi

    from .normalize import _is_wide

    a = np.asarray(check_image(plane, "plane", allow_stack=False))
    # a wide dtype (float64, 32/64-bit integers) is moved to its minimum first, in float64: float32 would lose a
    # small contrast on a large pedestal (the mask is the same for any offset)
    a = (a.astype(np.float64) - float(a.min())).astype(np.float32) if _is_wide(a.dtype) else a.astype(np.float32)
    sm = ndi.gaussian_filter(a, smooth) if smooth > 0 else a
    bg = float(np.median(sm))
    hi = float(np.percentile(sm, 99.5))
    resid = a - sm
    noise = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    contrast = hi - bg
    # a purely relative floor (no absolute unit), so that the mask is the same at any intensity scale
    if not contrast > max(min_snr * noise, 1e-6 * max(abs(hi), abs(bg))):
        return np.zeros(a.shape, bool)
    return sm > bg + fraction * contrast


def _classical(method: str, plane: np.ndarray) -> float:
    from napari_linblur.metrics import focus as fm

    a = np.asarray(plane, dtype=np.float64)
    if method == "vollath":
        return fm.vollath(a)
    if method == "normalized_variance" and float(np.ptp(a)) == 0.0:
        return 0.0  # a constant plane (including an empty one): no contrast
    return float(getattr(fm, method)(a))


def _check_method(method: str) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {FOCUS_METHODS}")
    m = _ALIASES.get(method.lower(), method.lower())
    if m not in FOCUS_METHODS:
        raise ValueError(f"method={method!r}; use one of {FOCUS_METHODS}")
    return m


#: the σ (px) a constant plane is scored at by ``focus_curve(method="defocus")``: the top of the range the shipped
#: models are trained on, so a blank frame never ranks above a plane whose structure is less blurred than that
NO_SIGNAL_SIGMA = 10.0


class _PlaneScore:
    """Picklable per-plane focus score."""

    def __init__(self, method, sigma_fn=None):
        self.method = method
        self.sigma_fn = sigma_fn

    def __call__(self, plane) -> float:
        plane = np.asarray(plane)
        check_finite_plane(plane, "stack")
        if self.method != "defocus":
            score = _classical(self.method, plane)
        else:
            if plane.min() == plane.max():
                # a constant plane (zero padding, a blank or saturated frame) shows no focus at all: it scores as
                # the top of the σ range (what the network reads there is its prior, not a measurement)
                score = -NO_SIGNAL_SIGMA
            else:
                sigma = self.sigma_fn(plane)
                mask = signal_mask(plane)  # none: texture everywhere (or only noise), read from every pixel
                score = -float(np.median(sigma[mask] if mask.any() else sigma))
        if np.isfinite(score):
            return score
        # a score that cannot be computed must never win best_focus: the worst of its method (0 would be the best
        # possible defocus score, -σ <= 0)
        return -NO_SIGNAL_SIGMA if self.method == "defocus" else 0.0


#: keyword options of :func:`focus_curve` / :func:`best_focus` passed to the defocus model
_MODEL_OPTIONS = ("tile", "overlap", "batch_size", "amp", "camera", "tta")


def _score_fn(method, model, device, kwargs):
    unknown = sorted(set(kwargs) - set(_MODEL_OPTIONS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}; the defocus model's options are "
                        f"{', '.join(_MODEL_OPTIONS)}")
    if method != "defocus":
        given = sorted(k for k, v in kwargs.items() if v is not None and not (k == "camera" and v == "auto"))
        if given or model is not None:
            names = (["model"] if model is not None else []) + given
            raise ValueError(f"{', '.join(names)} only appl{'y' if len(names) > 1 else 'ies'} to method='defocus'; "
                             f"method={method!r} scores the raw intensities")
        return _PlaneScore(method, None)
    given = {k: v for k, v in kwargs.items() if v is not None}  # None = the option's default
    options = {"tile": None, "overlap": None, "batch_size": 1, **given}
    return _PlaneScore(method, _plane_defocus(model, device, **options))


def focus_curve(stack: Any, *, method: str = "defocus", model: Any = None, device: Any = "auto",
                compute: bool | None = None, **kwargs: Any) -> Any:
    """Focus score of every plane of a stack (higher = sharper).

    Parameters
    ----------
    stack : numpy or dask array, (..., Z, Y, X) (a single plane (Y, X) gives a 0-d result)
        Planes are read and scored one at a time; a lazy stack is never materialised (a zarr store chunked across
        many planes is read plane by plane: :func:`~napari_linblur.io.readers.open_zstack`).
    method : str
        ``"defocus"`` (default): minus the median estimated σ (pixels) over the plane's signal pixels
        (:func:`signal_mask`; all pixels when no pixel stands out, e.g. texture everywhere), so a score of
        ``-2.5`` means a median blur of 2.5 px; a constant plane (zero padding, a blank frame) scores
        ``-NO_SIGNAL_SIGMA`` (-10), as blurred as the trained range goes. Classical measures on the raw intensities:
        ``"variance_of_laplacian"``, ``"brenner"``, ``"tenengrad"``, ``"normalized_variance"``
        and ``"vollath"`` (F4; :mod:`napari_linblur.metrics.focus`).
    model, device
        As in :func:`estimate_defocus` (``method="defocus"`` only).
    compute : bool, optional
        For dask input: None (default) or ``False`` return the lazy dask array of scores (one task per plane,
        nothing computed until asked), as every operation does for dask input; ``True`` computes (plane by plane,
        with the active dask scheduler) and returns numpy. Numpy input always gives numpy.
    **kwargs
        ``tile``, ``overlap``, ``batch_size``, ``amp``, ``camera`` and ``tta`` for the defocus model (as in
        :func:`estimate_defocus`; ``method="defocus"`` only: with a classical method they are an error, as is any
        other keyword).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float64 of shape ``stack.shape[:-2]`` (dask for dask input unless ``compute=True``); never NaN
        (constant planes score 0 with the classical measures and -10 with ``"defocus"``, the top of the trained σ
        range, so that an empty frame never outranks a plane with structure below it; ``"vollath"`` is the
        exception: a strongly blurred or noise-only plane can score slightly below 0, under an empty frame).

    Raises
    ------
    ValueError, TypeError
        Bad stack, method or option. An error while scoring one plane of a stack (NaN/Inf values, a
        non-finite normalization...) keeps its type and message and names the plane:
        ``"stack contains NaN or Inf values; ... (at plane 2 of the input)"``.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> sharp = np.random.default_rng(0).random((48, 48))
    >>> stack = np.stack([gaussian_filter(sharp, s) for s in (3, 1, 0.1, 2)])
    >>> int(np.argmax(focus_curve(stack, method="brenner")))
    2
    """
    stack = _check_stack(stack, "stack")
    method = _check_method(method)
    if compute is not None and not isinstance(compute, (bool, np.bool_)):
        raise TypeError(f"compute must be True, False or None, got {compute!r}")
    fn = _score_fn(method, model, device, kwargs)
    curve = map_planes(fn, stack, dtype=np.float64, scalar=True)  # one task per plane for a lazy stack
    return np.asarray(curve.compute()) if compute and is_dask(curve) else curve


def best_focus(stack: Any, *, method: str = "defocus", model: Any = None, device: Any = "auto",
               **kwargs: Any) -> int | np.ndarray:
    """Index of the sharpest plane along Z (the arg-max of :func:`focus_curve`).

    Parameters
    ----------
    stack : numpy or dask array, (Z, Y, X) or (..., Z, Y, X)
    method, model, device, **kwargs
        As in :func:`focus_curve`.

    Returns
    -------
    int for a ``(Z, Y, X)`` stack; an int64 array of shape ``stack.shape[:-3]`` for more leading axes.

    Warns
    -----
    UserWarning
        Every plane of a stack has the same score (an empty or constant field): no plane is sharper, and plane 0
        is reported.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> sharp = np.random.default_rng(0).random((48, 48))
    >>> best_focus(np.stack([gaussian_filter(sharp, s) for s in (3, 1, 0.1, 2)]), method="tenengrad")
    2
    """
    if "compute" in kwargs:
        raise TypeError("best_focus() takes no compute= argument: it returns an index, so it always computes the "
                        "focus curve; for a lazy curve use focus_curve(stack, compute=False)")
    stack = check_image(stack, "stack", check_finite=False)  # focus_curve checks it
    if stack.ndim < 3:
        raise ValueError(f"stack has shape {tuple(stack.shape)}; best_focus needs a z-stack (..., Z, Y, X)")
    curve = focus_curve(stack, method=method, model=model, device=device, compute=True, **kwargs)
    idx = np.argmax(curve, axis=-1)
    flat = np.ptp(curve, axis=-1) == 0
    if curve.shape[-1] > 1 and np.any(flat):
        where = "" if np.ndim(flat) == 0 else f" (stacks {[tuple(map(int, i)) for i in np.argwhere(flat)][:5]})"
        score = float(curve[..., 0][flat].flat[0])
        warnings.warn(f"every plane of the stack{where} has the same focus score ({score:g} with method={method!r}): "
                      "no plane is sharper than another (an empty or constant field?), so the best plane reported is "
                      "plane 0", UserWarning, stacklevel=2)
    return int(idx) if np.ndim(idx) == 0 else idx.astype(np.int64)
