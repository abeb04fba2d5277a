"""Blur synthesis and pair deblurring in the linear latent space of :class:`LinearLatentAE` (paper 000).

Conventions (SPEC §6): ``a`` is the sharper plane, ``c`` the blurrier one; the blur decreases as ``alpha``
grows. With ``E`` the encoder and ``D`` the decoder:

* :func:`synthesize_blur` -- interpolation, ``D(alpha * E(a) + (1 - alpha) * E(c))``, ``alpha`` in [0, 1]
  (``alpha = 1`` reconstructs ``a``, ``alpha = 0`` reconstructs ``c``);
* :func:`deblur_pair` -- extrapolation to the sharper ``a`` from ``b`` (sharper) and ``c`` (blurrier),
  ``D(E(b) / alpha - (1 - alpha) / alpha * E(c))``, ``alpha`` in [0.01, 1]; ``alpha=None`` picks it
  automatically (:func:`auto_alpha`);
* :func:`alpha_from_positions` -- ``alpha = (d_c - d_b) / (d_c - d_a)`` from the planes' positions.

Both planes of a pair share one normalization (robust percentiles over both, inverted on output) and one tile
grid: they are the two channels of every tile sent through
:func:`~napari_linblur.inference.tiling.tiled_apply`, so any image size works without seams. Stacks
``(..., Y, X)`` are processed plane by plane (numpy loop, or one dask task per plane, lazily); the model is
loaded once per call.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from napari_linblur.metrics.focus import laplacian

from .normalize import normalize_for_network
from .tiling import check_tiling_options, map_planes, tiled_apply
from .tta import check_tta, self_ensemble
from .validate import (
    check_alpha,
    check_callbacks,
    check_finite_plane,
    check_image,
    check_same_shape,
    is_dask,
)

AE_TILE = 256
AE_OVERLAP = 64


def check_ae_tiling(tile: Any, overlap: Any, batch_size: Any) -> tuple[int, int, int]:
    """Validated ``(tile, overlap, batch_size)`` of the autoencoder's operations (:func:`check_tiling_options`
    with the autoencoder's tile, ``AE_TILE`` when ``tile`` is None, and its overlap, ``AE_OVERLAP``).

    Examples
    --------
    >>> check_ae_tiling(None, None, 4)
    (256, 64, 4)
    """
    return check_tiling_options(AE_TILE if tile is None else tile, overlap, batch_size, default_overlap=AE_OVERLAP,
                                stacklevel=4)


#: alpha grid searched by :func:`auto_alpha`
ALPHA_GRID = tuple(float(a) for a in np.round(np.linspace(0.1, 1.0, 19), 3))


#: smallest ``alpha`` :func:`deblur_pair` accepts (1/alpha is the extrapolation gain)
MIN_EXTRAPOLATION_ALPHA = 0.01


def alpha_from_positions(d_a: float, d_b: float, d_c: float) -> float:
    """Interpolation weight ``alpha = (d_c - d_b) / (d_c - d_a)`` of plane ``b`` between ``a`` and ``c``.

    Parameters
    ----------
    d_a, d_b, d_c : float
        Positions of the three planes along z, or their defocus distances from focus, in any one unit (µm,
        plane indices). ``a`` is the sharper plane and ``c`` the blurrier one, so with distances from focus
        ``d_a < d_b < d_c``. Either direction of the z axis is accepted: ``d_b`` must lie strictly between
        ``d_a`` and ``d_c`` (the formula is unchanged when all signs flip).

    Returns
    -------
    float
        ``alpha`` in (0, 1): 1 when ``b`` is at ``a``, 0 when ``b`` is at ``c``.

    Raises
    ------
    ValueError
        Non-finite values, ``d_a == d_c``, or ``d_b`` not strictly between ``d_a`` and ``d_c``.

    Examples
    --------
    >>> alpha_from_positions(0.0, 4.0, 8.0)          # b halfway: the paper's midpoint triplets
    0.5
    >>> alpha_from_positions(0.0, 2.0, 8.0)          # b closer to the sharp plane
    0.75
    >>> alpha_from_positions(16, 14, 12)             # BBBC006 plane indices (plane 16 in focus)
    0.5
    """
    vals = {}
    for name, v in (("d_a", d_a), ("d_b", d_b), ("d_c", d_c)):
        if isinstance(v, bool) or not isinstance(v, (numbers.Real, np.floating, np.integer)):
            raise TypeError(f"{name} must be a real number (a plane position or defocus distance), got {v!r}")
        v = float(v)
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
        vals[name] = v
    a, b, c = vals["d_a"], vals["d_b"], vals["d_c"]
    if a == c:
        raise ValueError(f"d_a and d_c must differ (got both {a}); a is the sharper plane, c the blurrier one")
    if not (min(a, c) < b < max(a, c)):
        raise ValueError(
            f"d_b={b} must lie strictly between d_a={a} and d_c={c} (a sharper, b in between, c blurrier)"
        )
    # halved first: c - a of two finite positions near ±1.8e308 would overflow to inf (and alpha to 0)
    return float((c / 2 - b / 2) / (c / 2 - a / 2))


# ---------------------------------------------------------------------------------------------------- core


def _pair_fn(model, w_first: float, w_second: float, tta: int = 1) -> Callable:
    """Tile function: 2-channel tile (first, second) -> D(w_first * E(first) + w_second * E(second)).

    With ``tta > 1`` the result is the mean over the first ``tta`` flips/rotations of the tile, each undone on
    the output (:func:`~napari_linblur.inference.tta.self_ensemble`: the network is not exactly equivariant, so
    its errors partly average out).
    """

    def core(t):
        z = model.encode(t.reshape(-1, 1, *t.shape[-2:]))
        z = z.reshape(t.shape[0], 2, *z.shape[1:])
        return model.decode(w_first * z[:, 0] + w_second * z[:, 1])

    return self_ensemble(core, tta)


def _alpha_map_fn(model, tta: int = 1) -> Callable:
    """Tile function: 3-channel tile (b, c, α) -> ``D(E(b) / α − (1 − α) / α · E(c))`` with α taken per latent pixel
    (the α channel averaged over each latent pixel's footprint): an extrapolation whose α varies over the plane.
    The self-ensemble flips and rotates the α channel with the image."""
    import torch.nn.functional as F

    def core(t):
        z = model.encode(t[:, :2].reshape(-1, 1, *t.shape[-2:]))
        z = z.reshape(t.shape[0], 2, *z.shape[1:])
        a = F.adaptive_avg_pool2d(t[:, 2:3].float(), z.shape[-2:]).to(z.dtype)
        return model.decode(z[:, 0] / a - (1.0 - a) / a * z[:, 1])

    return self_ensemble(core, tta)


def extrapolate_alpha_map(model, b: np.ndarray, c: np.ndarray, alpha: np.ndarray, *, tile: int = AE_TILE,
                          overlap: int = AE_OVERLAP, batch_size: int = 4, progress=None, should_stop=None,
                          tta: int = 1) -> np.ndarray:
    """:func:`extrapolate_normalized` with a per-pixel α map ``(Y, X)`` (values in ``(0, 1]``), in one tiled pass:
    no region borders, and the autoencoder sees the same context as for one α (``deblur``'s guided re-blur)."""
    x = np.stack([np.asarray(b, np.float32), np.asarray(c, np.float32), np.asarray(alpha, np.float32)])
    out = tiled_apply(_alpha_map_fn(model, check_tta(tta)), x, out_channels=1, tile=tile, overlap=overlap,
                      multiple=int(getattr(model, "multiple", 16)), batch_size=batch_size,
                      device=_model_device(model), progress=progress, should_stop=should_stop)
    return out[0]


def _model_device(model):
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless test doubles
        return torch.device("cpu")


def combine_normalized(
    model,
    first: np.ndarray,
    second: np.ndarray,
    w_first: float,
    w_second: float,
    *,
    tile: int = AE_TILE,
    overlap: int = AE_OVERLAP,
    batch_size: int = 4,
    progress=None,
    should_stop=None,
    tta: int = 1,
) -> np.ndarray:
    """``D(w_first * E(first) + w_second * E(second))`` for two normalized planes, tiled; returns ``(Y, X)``.

    ``tta``: average over this many flips/rotations of every tile (1, 2, 4, 8; :func:`_pair_fn`).

    Examples
    --------
    >>> import torch
    >>> from napari_linblur.models.autoencoder import LinearLatentAE
    >>> m = LinearLatentAE(config="default").eval()
    >>> combine_normalized(m, np.zeros((40, 50), np.float32), np.zeros((40, 50), np.float32), 1, 0).shape
    (40, 50)
    """
    x = np.stack([np.asarray(first, np.float32), np.asarray(second, np.float32)])
    out = tiled_apply(
        _pair_fn(model, float(w_first), float(w_second), check_tta(tta)),
        x,
        out_channels=1,
        tile=tile,
        overlap=overlap,
        multiple=int(getattr(model, "multiple", 16)),
        batch_size=batch_size,
        device=_model_device(model),
        progress=progress,
        should_stop=should_stop,
    )
    return out[0]


def extrapolate_normalized(model, b: np.ndarray, c: np.ndarray, alpha: float, **kw) -> np.ndarray:
    """``D(E(b) / α − (1 − α) / α · E(c))`` of two normalized planes: the extrapolation past ``b`` away from the
    blurrier ``c`` (:func:`deblur_pair`, and ``deblur``'s re-blur + extrapolation); ``kw`` are
    :func:`combine_normalized`'s tiling options."""
    return combine_normalized(model, b, c, 1.0 / alpha, -(1.0 - alpha) / alpha, **kw)


def encode_normalized(model, plane: np.ndarray):
    """Latent of a whole normalized plane ``(Y, X)`` (reflect-padded to the model's multiple), as numpy.

    Used for latent-space metrics and PCA plots; for images, use the tiled operations.
    """
    import torch

    x = np.asarray(plane, np.float32)
    m = int(getattr(model, "multiple", 16))
    py, px = (-x.shape[0]) % m, (-x.shape[1]) % m
    if py or px:
        x = np.pad(x, ((0, py), (0, px)), mode="reflect")
    with torch.inference_mode():
        z = model.encode(torch.from_numpy(x)[None, None].to(_model_device(model)))
    return z[0].float().cpu().numpy()


def _prepare(img_1, img_2, names: tuple[str, str]):
    img_1 = check_image(img_1, names[0])
    img_2 = check_image(img_2, names[1])
    check_same_shape(img_1, img_2, names)
    return img_1, img_2


def _run_pairs(plane_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], img_1, img_2, names):
    """Apply ``plane_fn(norm_1, norm_2) -> normalized out`` per plane with one normalization per pair."""

    def per_plane(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
        check_finite_plane(p1, names[0])
        check_finite_plane(p2, names[1])
        norm, (x1, x2) = normalize_for_network(p1, p2)
        return norm.invert(plane_fn(x1, x2))

    if img_1.ndim == 2 and not is_dask(img_1) and not is_dask(img_2):
        return per_plane(np.asarray(img_1), np.asarray(img_2))
    return map_planes(per_plane, img_1, img_2)


def synthesize_blur(
    img_a: Any,
    img_c: Any,
    alpha: float,
    *,
    model: Any = None,
    device: Any = "auto",
    tile: int | None = AE_TILE,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tta: int = 1,
) -> Any:
    """Synthesize the defocus between two planes by latent interpolation: ``D(α·E(a) + (1−α)·E(c))``.

    Parameters
    ----------
    img_a, img_c : array_like
        The sharper (``a``) and the blurrier (``c``) plane of one field: 2-D ``(Y, X)`` or stacks
        ``(..., Y, X)`` of the same shape, numpy or dask, any real dtype.
    alpha : float
        In [0, 1]; 1 gives (the reconstruction of) ``a``, 0 gives ``c``. For a plane at position ``d_b``
        use :func:`alpha_from_positions`.
    model : str, path or torch.nn.Module, optional
        An ``ae`` model; None = the shipped ``ae-default``.
    device : str or torch.device
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``...
    tile, overlap, batch_size : int
        Tiling of large planes (overlapping tiles blended without seams). ``overlap=None``: 64 px, or a quarter
        of a smaller ``tile``.
    progress : callable, optional
        ``progress(done_tiles, total_tiles)`` after each batch of tiles of a plane (numpy input; with dask input
        neither callback is used, and a warning says so).
    should_stop : callable, optional
        Polled between batches of tiles; when it returns True,
        :class:`~napari_linblur.inference.tiling.Cancelled` is raised (the GUI's Cancel button).
    tta : {1, 2, 4, 8}
        Self-ensemble: average the result over this many flips/rotations of every tile (1 = off; 8 costs 8x
        the time; measured gains in docs/results/latent-ae.md).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32, same shape as the inputs, in their intensity units (numpy in -> numpy out, dask in -> lazy
        dask out).

    Raises
    ------
    ValueError
        Different shapes, ``alpha`` outside [0, 1], NaN/Inf, empty, 1-pixel or RGB images; ``tta`` not 1, 2, 4, 8.

    Examples
    --------
    >>> import numpy as np, napari_linblur as nl
    >>> a = np.random.default_rng(0).poisson(100, (64, 64)).astype(np.uint16)
    >>> c = np.random.default_rng(1).poisson(100, (64, 64)).astype(np.uint16)
    >>> out = nl.synthesize_blur(a, c, nl.alpha_from_positions(0.0, 4.0, 8.0), device="cpu")
    >>> out.dtype, out.shape
    (dtype('float32'), (64, 64))
    """
    img_a, img_c = _prepare(img_a, img_c, ("img_a", "img_c"))
    alpha = check_alpha(alpha, name="alpha")
    tta = check_tta(tta)
    progress, should_stop = check_callbacks(progress, should_stop, lazy=is_dask(img_a) or is_dask(img_c))
    tile, overlap, batch_size = check_ae_tiling(tile, overlap, batch_size)
    from napari_linblur.models.registry import ModelHandle

    net = ModelHandle(model, "ae", device)  # a plane's task sent to a dask worker carries the name, not the weights
    kw = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "progress": progress,
          "should_stop": should_stop, "tta": tta}
    return _run_pairs(lambda a, c: combine_normalized(net.get(), a, c, alpha, 1.0 - alpha, **kw), img_a, img_c,
                      ("img_a", "img_c"))


def deblur_pair(
    img_b: Any,
    img_c: Any,
    alpha: float | None = None,
    *,
    model: Any = None,
    device: Any = "auto",
    tile: int | None = AE_TILE,
    overlap: int | None = None,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tta: int = 1,
) -> Any:
    """Deblur by latent extrapolation from two planes: ``D(E(b)/α − (1−α)/α·E(c))``.

    Parameters
    ----------
    img_b, img_c : array_like
        The sharper (``b``) and the blurrier (``c``) of two planes of one field, same shape: 2-D or stacks
        ``(..., Y, X)``, numpy or dask, any real dtype.
    alpha : float or None
        In [0.01, 1] (below 0.01 extrapolation multiplies the noise by more than 100): where ``b`` lies
        between the wanted sharp plane ``a`` (at ``d_a``) and ``c``,
        ``alpha = (d_c - d_b) / (d_c - d_a)`` (:func:`alpha_from_positions`); for planes at ``d`` and ``2d``
        from focus and ``a`` in focus, ``alpha = 0.5``. ``alpha = 1`` reconstructs ``b``. None chooses
        ``alpha`` per plane with :func:`auto_alpha`.
    model, device, tile, overlap, batch_size, progress, should_stop, tta
        As in :func:`synthesize_blur`.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        float32 estimate of the sharper plane, same shape, in the inputs' intensity units.

    Raises
    ------
    ValueError
        Different shapes, ``alpha`` outside [0.01, 1], NaN/Inf, empty, 1-pixel or RGB images; ``tta`` not 1, 2, 4, 8.

    Examples
    --------
    >>> import numpy as np, napari_linblur as nl
    >>> b = np.random.default_rng(0).poisson(100, (2, 64, 64)).astype(np.uint16)   # a stack of 2 planes
    >>> nl.deblur_pair(b, b[::-1], 0.5, device="cpu").shape
    (2, 64, 64)
    """
    img_b, img_c = _prepare(img_b, img_c, ("img_b", "img_c"))
    if alpha is not None:
        alpha = check_alpha(alpha, name="alpha", allow_zero=False)
        if alpha < MIN_EXTRAPOLATION_ALPHA:
            raise ValueError(f"alpha={alpha:g} is below {MIN_EXTRAPOLATION_ALPHA}: extrapolation multiplies the "
                             f"difference of the two planes by 1/alpha (> {1 / MIN_EXTRAPOLATION_ALPHA:g}x), "
                             "which leaves nothing but amplified noise; pick planes further apart")
    tta = check_tta(tta)
    progress, should_stop = check_callbacks(progress, should_stop, lazy=is_dask(img_b) or is_dask(img_c))
    tile, overlap, batch_size = check_ae_tiling(tile, overlap, batch_size)
    from napari_linblur.models.registry import ModelHandle

    handle = ModelHandle(model, "ae", device)  # as in synthesize_blur
    kw = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "progress": progress,
          "should_stop": should_stop, "tta": tta}

    def plane_fn(b: np.ndarray, c: np.ndarray) -> np.ndarray:
        net = handle.get()
        al = alpha if alpha is not None else auto_alpha_normalized(net, b, c)[0]
        return extrapolate_normalized(net, b, c, al, **kw)

    return _run_pairs(plane_fn, img_b, img_c, ("img_b", "img_c"))


# ---------------------------------------------------------------------------------------------- auto alpha


def _center_crop(x: np.ndarray, side: int, multiple: int) -> tuple[slice, slice]:
    h, w = x.shape
    sh = min(h, side) // multiple * multiple or h
    sw = min(w, side) // multiple * multiple or w
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    return slice(y0, y0 + sh), slice(x0, x0 + sw)


def auto_alpha_normalized(
    model,
    b: np.ndarray,
    c: np.ndarray,
    grid: Sequence[float] = ALPHA_GRID,
    *,
    crop: int = 256,
    noise_factor: float = 2.0,
) -> tuple[float, dict]:
    """Choose ``alpha`` for :func:`deblur_pair` on a normalized pair; returns ``(alpha, details)``.

    The extrapolation is decoded for every ``alpha`` of ``grid`` on a central crop (encoded once). The score
    is the variance of the Laplacian (a focus measure) of the result. Sharpening keeps raising it as
    ``alpha`` falls, so a guard stops the search where noise blows up: the robust (MAD) Laplacian noise of the
    result in background pixels (below the median of ``c``) may grow to at most ``noise_factor`` times the
    one at ``alpha = 1`` (the reconstruction of ``b``). Among admissible ``alpha`` the sharpest result wins.

    Returns
    -------
    alpha : float
    details : dict
        ``grid``, ``focus`` and ``noise`` per grid value, and ``noise_limit``.
    """
    import torch

    m = int(getattr(model, "multiple", 16))
    sy, sx = _center_crop(np.asarray(b), crop, m)
    bb = np.asarray(b, np.float32)[sy, sx]
    cc = np.asarray(c, np.float32)[sy, sx]
    dev = _model_device(model)
    with torch.inference_mode():
        t = torch.from_numpy(np.stack([bb, cc])[:, None]).to(dev)
        z = model.encode(t).float()
        zb, zc = z[0:1], z[1:2]
        grid = sorted({float(a) for a in grid} | {1.0}, reverse=True)
        zs = torch.cat([zb / a - (1 - a) / a * zc for a in grid])
        outs = torch.cat([model.decode(zs[i : i + 4].to(z.dtype)).float() for i in range(0, len(grid), 4)])
        outs = outs[:, 0].cpu().numpy()
    bg = cc[1:-1, 1:-1] <= np.median(cc)
    focus, noise = [], []
    for o in outs:
        lap = laplacian(o)
        focus.append(float(lap.var()))
        v = lap[bg] if bg.sum() > 16 else lap.ravel()
        noise.append(float(1.4826 * np.median(np.abs(v - np.median(v)))))
    limit = noise_factor * max(noise[0], 1e-12)
    admissible = [i for i, n in enumerate(noise) if n <= limit]
    best = max(admissible, key=lambda i: focus[i])
    return float(grid[best]), {"grid": grid, "focus": focus, "noise": noise, "noise_limit": limit}


def auto_alpha(img_b, img_c, *, model: Any = None, device: Any = "auto", **kwargs) -> float:
    """The ``alpha`` :func:`deblur_pair` uses when ``alpha=None``, for one pair of 2-D planes.

    See :func:`auto_alpha_normalized` for the criterion (maximum focus under a noise blow-up guard).

    Examples
    --------
    >>> auto_alpha(np.ones((8, 8)), np.ones((9, 8)))
    Traceback (most recent call last):
    ...
    ValueError: img_b and img_c must have the same shape (planes of one field); got (8, 8) and (9, 8)
    """
    img_b = check_image(img_b, "img_b", allow_stack=False)
    img_c = check_image(img_c, "img_c", allow_stack=False)
    check_same_shape(img_b, img_c, ("img_b", "img_c"))
    from napari_linblur.models.registry import cached_model

    # the process's one loaded copy, as deblur_pair's (the plugin's preview calls this at every change: a name or
    # path was loaded from disk and hashed again each time)
    net = cached_model(model, "ae", device)
    b, c = np.asarray(img_b), np.asarray(img_c)
    return auto_alpha_normalized(net, *normalize_for_network(b, c)[1], **kwargs)[0]
