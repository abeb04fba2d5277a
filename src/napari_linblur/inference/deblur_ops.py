"""Single-image deblurring: ``nl.deblur(img, method=...)``.

Methods
-------
``"network"``
    The DRBNet-style network (:class:`~napari_linblur.models.drbnet.DRBNet`, shipped as ``deblur-default``),
    blind (never told the PSF), run tiled through :func:`~napari_linblur.inference.tiling.tiled_apply`.
``"reblur-extrapolate"``
    Paper 000 §4 future work: blur the input once more with a known Gaussian of σ_r, giving the pair
    (b = input, c = re-blurred), then extrapolate in the autoencoder's latent space with
    :func:`napari_linblur.deblur_pair` towards the in-focus image a. α comes from the defocus map
    (:func:`napari_linblur.estimate_defocus`), see :func:`reblur_alpha`.
``"guided"``
    Defocus-guided deblurring: the σ map is summarised per tile (median), each tile gets the deblurring strength
    matching its blur — none below ``sigma_focus`` px, full above ``sigma_full`` px, linear in between — and the
    tiles are blended with smooth windows. In-focus regions come back exactly as they were.
``"auto"``
    The method measured best in ``docs/results/deblur.md`` (``linblur evaluate deblur``): :data:`AUTO_METHOD`.

Derivation of α for re-blur + extrapolation
-------------------------------------------
The paper's weight for planes a (sharp) < b < c (blurry) at defocus distances d is
``α = (d_c − d_b) / (d_c − d_a)`` (``z_b = α z_a + (1 − α) z_c``). With σ of the equivalent Gaussian PSF as the
distance proxy (σ grows linearly with |d| away from focus, geometric optics): the input has σ_b (the defocus map);
re-blurring a Gaussian-blurred image by G(σ_r) gives σ_c = sqrt(σ_b² + σ_r²) (Gaussians compose in quadrature);
the target is in focus, σ_a = 0. Hence ``α = (σ_c − σ_b) / σ_c = 1 − σ_b / sqrt(σ_b² + σ_r²)``.
An in-focus input (σ_b → 0) gives α → 1: the output is the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .device import amp_forward, resolve_amp
from .normalize import normalize_for_network
from .tiling import (
    NETWORK_OVERLAP,
    Cancelled,
    auto_tile,
    blend_regions,
    check_tiling_options,
    map_planes,
)
from .validate import check_callbacks, check_finite_plane, check_image, check_number, is_dask

__all__ = ["AUTO_METHOD", "METHODS", "auto_tile", "deblur", "guided_weights", "reblur_alpha", "resolve_amp"]

METHODS = ("auto", "network", "reblur-extrapolate", "guided")

#: what ``method="auto"`` runs; chosen by measurement (docs/results/deblur.md, ``linblur evaluate deblur``)
AUTO_METHOD = "network"

#: σ_r of the re-blur (pixels)
DEFAULT_SIGMA_R = 2.0
#: ``guided``: tiles with median σ at most this (px) are left untouched, from ``DEFAULT_SIGMA_FULL`` on fully deblurred
DEFAULT_SIGMA_FOCUS = 0.8
DEFAULT_SIGMA_FULL = 1.5


def reblur_alpha(sigma_b: float, sigma_r: float = DEFAULT_SIGMA_R, sigma_a: float = 0.0) -> float:
    """α for extrapolating from (b, c = b re-blurred by σ_r) to the in-focus a, σ as the defocus proxy.

    ``α = (σ_c − σ_b) / (σ_c − σ_a)`` with ``σ_c = sqrt(σ_b² + σ_r²)``; clipped to ``[0.05, 1]``.

    Parameters
    ----------
    sigma_b : float
        Current blur of the image (px, from the defocus map).
    sigma_r : float
        σ of the extra Gaussian blur (px, > 0).
    sigma_a : float
        Blur of the target (0 = in focus).

    Returns
    -------
    float

    Examples
    --------
    >>> round(reblur_alpha(2.0, 2.0), 4)  # 1 - 1/sqrt(2)
    0.2929
    >>> reblur_alpha(0.0, 2.0)
    1.0
    """
    if not sigma_r > 0:
        raise ValueError(f"sigma_r must be > 0 (pixels), got {sigma_r}")
    sigma_b = max(float(sigma_b), float(sigma_a), 0.0)
    sigma_c = math.sqrt(sigma_b**2 + sigma_r**2)
    alpha = (sigma_c - sigma_b) / max(sigma_c - sigma_a, 1e-9)
    return float(min(1.0, max(0.05, alpha)))


#: the tiles on which guided deblurring reads the σ map (its strength, and the re-blur guide's α)
GUIDE_TILE, GUIDE_OVERLAP = 64, 32


def guided_weights(sigma_map: np.ndarray, *, sigma_focus: float = DEFAULT_SIGMA_FOCUS,
                   sigma_full: float = DEFAULT_SIGMA_FULL,
                   tile: int = GUIDE_TILE, overlap: int = GUIDE_OVERLAP) -> np.ndarray:
    """Per-pixel deblurring strength in [0, 1] from a σ map, tile by tile with smooth blending.

    Each tile's strength is ``clip((median σ − sigma_focus) / (sigma_full − sigma_focus), 0, 1)``; the tiles are
    blended with the raised-cosine windows of :func:`~napari_linblur.inference.tiling.blend_window`. A region
    whose tiles all have median σ ≤ ``sigma_focus`` gets exactly 0 (left untouched).

    Parameters
    ----------
    sigma_map : array_like, shape (Y, X)
        σ of the equivalent Gaussian PSF per pixel, pixels (finite, ``>= 0``), e.g. from
        :func:`~napari_linblur.inference.defocus_ops.estimate_defocus`; read as float32.
    sigma_focus : float
        Median σ (pixels) up to which a tile is in focus: strength 0 (``>= 0``).
    sigma_full : float
        Median σ (pixels) from which a tile is fully deblurred: strength 1 (``> sigma_focus``).
    tile : int
        Side of the square tiles, pixels (clipped to the map's size).
    overlap : int
        Overlap of neighbouring tiles, pixels: the width of the blending ramps.

    Returns
    -------
    weights : ndarray of float32, shape (Y, X)
        Deblurring strength in ``[0, 1]`` (0: keep the input, 1: the fully deblurred result).

    Examples
    --------
    >>> s = np.zeros((128, 128), np.float32); s[:, 64:] = 3.0
    >>> w = guided_weights(s)
    >>> float(w[:, :16].max()), float(w[:, -16:].min())
    (0.0, 1.0)
    """
    s = np.asarray(sigma_map, np.float32)
    if s.ndim != 2:
        raise ValueError(f"sigma_map must be a 2-D (Y, X) map, got shape {s.shape}")
    if not sigma_full > sigma_focus >= 0:
        raise ValueError(f"need sigma_full > sigma_focus >= 0, got {sigma_full}, {sigma_focus}")
    check_finite_plane(s, "sigma_map")
    _check_sigma_values(s)

    def strength(sl: tuple[slice, slice]) -> float:
        med = float(np.median(s[sl]))
        return float(np.clip((med - sigma_focus) / (sigma_full - sigma_focus), 0.0, 1.0))

    return np.clip(blend_regions(s.shape, tile, overlap, strength), 0.0, 1.0).astype(np.float32)


def _network_plane(plane: np.ndarray, net, dev, *, tile, overlap, batch_size, progress, should_stop,
                   amp="off", tta: int = 1) -> np.ndarray:
    from .tiling import tiled_apply
    from .tta import self_ensemble

    norm, (x,) = normalize_for_network(plane)
    t = tile or auto_tile(*x.shape, overlap=overlap, multiple=net.multiple)
    fn = self_ensemble(lambda b: amp_forward(net, b, amp), tta)
    out = tiled_apply(fn, x, out_channels=1, tile=t, overlap=overlap, multiple=net.multiple,
                      batch_size=batch_size, device=dev, progress=progress, should_stop=should_stop)[0]
    return norm.invert(out)


def _reblurred_pair(plane: np.ndarray, sigma_r: float):
    """``plane`` (b) and it re-blurred by a Gaussian of ``sigma_r`` (c), with one normalization for the pair as
    :func:`~napari_linblur.inference.latent_ops.deblur_pair` has: ``(norm, b, c)``."""
    from napari_linblur.optics.convolve import fft_convolve
    from napari_linblur.optics.psf import gaussian_psf

    reblurred = fft_convolve(plane.astype(np.float64), gaussian_psf(sigma_r)).astype(np.float32)
    norm, (b, c) = normalize_for_network(plane, reblurred)
    return norm, b, c


def _reblur_plane(plane: np.ndarray, sigma_b: float, *, sigma_r: float, ae, device, **pair_kw) -> np.ndarray:
    """Re-blur the plane by ``sigma_r`` and extrapolate back past it (as :func:`deblur_pair`); ``pair_kw`` are
    the autoencoder's tiling (checked by :func:`~napari_linblur.inference.latent_ops.check_ae_tiling`), progress,
    cancel and self-ensemble options."""
    from napari_linblur.inference.latent_ops import extrapolate_normalized

    should_stop = pair_kw.get("should_stop")
    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")
    alpha = reblur_alpha(sigma_b, sigma_r)
    if alpha >= 1.0:
        return plane.astype(np.float32)
    norm, b, c = _reblurred_pair(plane, sigma_r)
    return np.asarray(norm.invert(extrapolate_normalized(ae, b, c, alpha, **pair_kw)), np.float32)


def deblur(
    img: Any,
    *,
    method: str = "auto",
    model: Any = None,
    device: Any = "auto",
    sigma_map: Any = None,
    defocus_model: Any = None,
    sigma_r: float = DEFAULT_SIGMA_R,
    guide: str = "network",
    sigma_focus: float = DEFAULT_SIGMA_FOCUS,
    sigma_full: float = DEFAULT_SIGMA_FULL,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 2,
    amp: str = "auto",
    tta: int = 1,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Any:
    """Deblur a single defocused image (or every plane of a stack), blind.

    Parameters
    ----------
    img : array_like or dask array
        ``(Y, X)`` or ``(..., Y, X)``, any real dtype, any size.
    method : {"auto", "network", "reblur-extrapolate", "guided"}
        See the module docstring. ``"auto"`` runs :data:`AUTO_METHOD` (the best as measured).
    model : None, str, path or torch.nn.Module
        ``network``/``guided``: the deblurring network (None = shipped ``deblur-default``);
        ``reblur-extrapolate``: the autoencoder (None = shipped ``ae-default``).
    device : str or torch.device
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``...
    sigma_map : array_like, optional
        Defocus map (σ px, same shape as ``img``) for ``reblur-extrapolate`` and ``guided``; default
        :func:`napari_linblur.estimate_defocus` with ``defocus_model``.
    defocus_model : optional
        Model for :func:`napari_linblur.estimate_defocus` (None = shipped ``defocus-default``).
    sigma_r : float
        σ (px) of the extra Gaussian blur of ``reblur-extrapolate``.
    guide : {"network", "reblur-extrapolate"}
        The deblurring that ``guided`` applies with per-tile strength.
    sigma_focus, sigma_full : float
        ``guided``: tiles with median σ ≤ ``sigma_focus`` are untouched, ≥ ``sigma_full`` fully deblurred.
    tile, overlap, batch_size : int
        Tiling of the network (default tile: chosen to minimise work, ≤ 1024 px, so a plane up to 1024² is one tile;
        default overlap 128 px, the network's context, or a quarter of a smaller given tile). ``reblur-extrapolate``
        passes them to :func:`~napari_linblur.inference.latent_ops.deblur_pair` (default tile 256 px, overlap 64 px).
    amp : {"auto", "off", "bf16"}
        Network precision; ``"auto"`` uses bf16 where the hardware runs it natively (:func:`resolve_amp`).
    tta : {1, 2, 4, 8}
        Self-ensemble of the network (``network``, ``guided``) or of the autoencoder's extrapolation
        (``reblur-extrapolate``): the mean over this many flips/rotations of every tile
        (:func:`~napari_linblur.inference.tta.self_ensemble`); ``tta`` times slower. 1 = off (the speed the
        benchmarks report).
    progress, should_stop : callable, optional
        Progress callback ``(done, total)`` over tiles; cancel hook (raises ``Cancelled``), checked between tiles
        by every method.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32, same shape as ``img``, in the input's intensity units.

    Raises
    ------
    ValueError, TypeError
        Bad ``img``, ``method``, ``sigma_map``, ``tta``, tiling, callbacks, a ``sigma_r``/``sigma_focus``/
        ``sigma_full`` that is not finite, positive (``sigma_focus >= 0``) and ordered, or a model (``model``,
        ``defocus_model``) of the wrong kind; all checked before any model loads, also for options the method
        does not use.

    Warns
    -----
    UserWarning
        An option given that the method does not use (e.g. ``sigma_map`` or ``defocus_model`` with
        ``method="network"``, ``defocus_model`` with a given ``sigma_map``); it is ignored.

    Examples
    --------
    >>> import numpy as np, torch
    >>> import napari_linblur as nl
    >>> from napari_linblur.models.drbnet import DRBNet
    >>> net = DRBNet(widths=(8, 8, 8), kernel_size=3)  # untrained: starts as the identity
    >>> img = np.random.default_rng(0).integers(0, 4000, (40, 52)).astype(np.uint16)
    >>> out = nl.deblur(img, method="network", model=net, device="cpu")
    >>> out.shape, out.dtype.name, bool(np.allclose(out, img, atol=1.0))
    ((40, 52), 'float32', True)
    """
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method={method!r}; use one of {', '.join(repr(m) for m in METHODS)}")
    if not isinstance(guide, str) or guide not in ("network", "reblur-extrapolate"):
        raise ValueError(f"guide={guide!r}; use 'network' or 'reblur-extrapolate'")
    check_callbacks(progress, should_stop)  # their types now; whether they run once the inputs are known (below)
    sigma_r = check_number(sigma_r, "sigma_r", unit=" (pixels)")
    sigma_focus = check_number(sigma_focus, "sigma_focus", inclusive=True, unit=" (pixels)")
    sigma_full = check_number(sigma_full, "sigma_full", unit=" (pixels)")
    if not sigma_full > sigma_focus:
        raise ValueError(f"need sigma_full > sigma_focus (guided: no deblurring up to sigma_focus px of blur, full "
                         f"strength from sigma_full px on), got sigma_focus={sigma_focus:g}, sigma_full={sigma_full:g}")
    if method == "auto":
        method = AUTO_METHOD
    uses_net = method == "network" or (method == "guided" and guide == "network")
    uses_ae = not uses_net  # 'reblur-extrapolate', and 'guided' with guide='reblur-extrapolate'
    # the tiling of the network that runs (its own defaults and overlap): never checked against the other's
    if uses_net:
        tile, overlap, batch_size = check_tiling_options(tile, overlap, batch_size, default_overlap=NETWORK_OVERLAP)
    else:
        from .latent_ops import check_ae_tiling

        tile, overlap, batch_size = check_ae_tiling(tile, overlap, batch_size)
    from .tta import check_tta

    tta = check_tta(tta)
    img = check_image(img, "img")
    if sigma_map is not None:
        sigma_map = check_image(sigma_map, "sigma_map")
        if tuple(sigma_map.shape) != tuple(img.shape):
            raise ValueError(f"sigma_map must have img's shape {tuple(img.shape)}, got {tuple(sigma_map.shape)}")
        if not is_dask(sigma_map):  # a dask map is checked plane by plane when it is computed
            _check_sigma_values(np.asarray(sigma_map))

    from napari_linblur.models.registry import ModelHandle, check_model

    from .device import resolve_device

    check_model(defocus_model, "defocus", name="defocus_model")  # also when unused: a wrong value is an error
    needs_map = method in ("reblur-extrapolate", "guided")
    _warn_unused(method, {
        "sigma_map": sigma_map is not None and not needs_map,
        "defocus_model": defocus_model is not None and not needs_map,
        "sigma_r": sigma_r != DEFAULT_SIGMA_R and not uses_ae,
        "guide": guide != "network" and method != "guided",
        "sigma_focus": sigma_focus != DEFAULT_SIGMA_FOCUS and method != "guided",
        "sigma_full": sigma_full != DEFAULT_SIGMA_FULL and method != "guided",
    })
    if defocus_model is not None and needs_map and sigma_map is not None:
        warnings.warn("defocus_model is not used when sigma_map is given (the map is not estimated); it is ignored",
                      UserWarning, stacklevel=2)
    if not needs_map:
        sigma_map = None  # checked and warned about above; never computed
    # with dask input (the image, or a map that is used) the result is lazy: no callbacks in its graph
    progress, should_stop = check_callbacks(progress, should_stop,
                                            lazy=is_dask(img) or (sigma_map is not None and is_dask(sigma_map)))
    resolve_amp(amp, resolve_device(device))  # a bad device or amp fails now; both are chosen where a plane runs
    # handles, not modules: a plane's task sent to a dask worker carries the model's name, not its weights; and
    # device="auto" / amp="auto" stay so in a lazy graph, to be resolved on the worker (a GPU, or a CPU without bf16),
    # as every other operation does
    net = ModelHandle(model, "deblur", device, channels_last=True) if uses_net else None
    ae = ModelHandle(model, "ae", device) if uses_ae else None
    if needs_map and sigma_map is None:
        from napari_linblur.inference.defocus_ops import estimate_defocus

        # the map's own tiling (its network's tile cap and overlap); a cancelled run stops inside it too
        sigma_map = estimate_defocus(img, model=defocus_model, device=device, amp=amp, should_stop=should_stop)
    net_kw = dict(tile=tile, overlap=overlap, batch_size=batch_size, progress=progress, should_stop=should_stop,
                  tta=tta)
    ae_kw = dict(tile=tile, overlap=overlap, batch_size=batch_size, should_stop=should_stop, tta=tta)

    def _one(plane, smap=None):
        check_finite_plane(plane, "img")
        raw = np.asarray(plane)  # the network normalizes a wide dtype in float64 (a small contrast on a pedestal)
        plane = raw.astype(np.float32, copy=False)
        dev = resolve_device(device)
        run_amp = resolve_amp(amp, dev)
        if method == "network":
            return _network_plane(raw, net.get(), dev, amp=run_amp, **net_kw)
        check_finite_plane(smap, "sigma_map")  # a dask map is checked here, plane by plane, when it is computed
        smap = np.asarray(smap, np.float32)
        _check_sigma_values(smap)
        if method == "reblur-extrapolate":
            return _reblur_plane(plane, float(np.median(smap)), sigma_r=sigma_r, ae=ae.get(), device=dev, **ae_kw,
                                 progress=progress)
        # guided
        w = guided_weights(smap, sigma_focus=sigma_focus, sigma_full=sigma_full)
        if not np.any(w > 0):
            return plane.copy()  # nothing to deblur: a copy, never the caller's array itself
        if guide == "network":
            full = _network_plane(raw, net.get(), dev, amp=run_amp, **net_kw)
        else:
            full = _guided_reblur(plane, smap, w, sigma_r=sigma_r, ae=ae.get(), device=dev, progress=progress,
                                  **ae_kw)
        return (plane + w * (full - plane)).astype(np.float32)

    args = (img,) if sigma_map is None else (img, sigma_map)
    if not any(is_dask(a) for a in args) and img.ndim == 2:
        return np.asarray(_one(*args), np.float32)
    return map_planes(_one, *args)  # any dask input (the image or the map) -> a lazy result, as deblur_pair gives


def _check_sigma_values(smap: np.ndarray) -> None:
    """A σ map holds σ in pixels, >= 0 (finiteness is :func:`check_finite_plane`'s)."""
    if np.any(smap < 0):
        raise ValueError(f"sigma_map holds negative values (min {float(smap.min()):.3g}); it must be σ in "
                         "pixels, >= 0, as estimate_defocus returns")


#: the methods that use each option of :func:`deblur` whose use depends on the method
_USED_BY = {"sigma_map": "'reblur-extrapolate' and 'guided'", "defocus_model": "'reblur-extrapolate' and 'guided'",
            "sigma_r": "'reblur-extrapolate' and 'guided' with guide='reblur-extrapolate'", "guide": "'guided'",
            "sigma_focus": "'guided'", "sigma_full": "'guided'"}


def _warn_unused(method: str, unused: dict[str, bool]) -> None:
    """A ``UserWarning`` naming each option given (not its default) that ``method`` does not use."""
    for name, is_unused in unused.items():
        if is_unused:
            warnings.warn(f"{name} is not used by method={method!r} (only by {_USED_BY[name]}); it is ignored",
                          UserWarning, stacklevel=3)


def _guided_reblur(plane, smap, w, *, sigma_r, ae, device, should_stop, progress=None, **pair_kw):
    """Re-blur + extrapolation with an α that follows the defocus map: the α of each tile's median σ on the tiles
    of :func:`guided_weights` (so that wherever the strength is above 0, α is below 1 and the extrapolation acts),
    blended into one α map, and one tiled extrapolation of the whole plane with it
    (:func:`~napari_linblur.inference.latent_ops.extrapolate_alpha_map`; one normalization and one re-blur of the
    whole plane). Extrapolating 128-px regions on their own crops left seams at the region borders (the
    autoencoder saw 32 px of context where it needs 64, and each crop had its own normalization), and a blurred
    strip narrower than half a region kept a region α of 1: nothing was deblurred there.

    ``pair_kw`` (tile, overlap, batch_size, tta) are the autoencoder's tiling; ``progress`` counts its tiles.
    """
    from napari_linblur.inference.latent_ops import extrapolate_alpha_map

    if should_stop is not None and should_stop():
        raise Cancelled("cancelled")
    alpha = blend_regions(plane.shape, GUIDE_TILE, GUIDE_OVERLAP,
                          lambda sl: reblur_alpha(float(np.median(smap[sl])), sigma_r), should_stop=should_stop)
    if float(alpha.min()) >= 1.0:  # nothing blurred enough to extrapolate: the plane itself, as one α of 1 gives
        return plane.astype(np.float32)
    norm, b, c = _reblurred_pair(plane, sigma_r)
    return np.asarray(norm.invert(extrapolate_alpha_map(ae, b, c, alpha, progress=progress, should_stop=should_stop,
                                                        **pair_kw)), np.float32)
