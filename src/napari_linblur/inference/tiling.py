"""The one tiling/batching path shared by every model.

* :func:`tiled_apply` runs a torch callable over overlapping tiles of one plane (any size), blends them with
  smooth raised-cosine windows (ramps only where a neighbouring tile exists, so there are no seams and image
  borders keep full weight), pads tiny images by reflection to the network's size multiple and crops back.
* :func:`map_planes` applies a per-plane function over ``(..., Y, X)`` stacks: a numpy loop, or for dask one
  lazy task per plane.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .validate import is_dask

DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
#: Overlap of the automatic tiles of the deblurring and defocus networks. Their receptive fields are wider than
#: 32 px: with 32 px a tile's edge pixels saw too little of the image, and on a 520 x 696 ``bbbc006-like`` plane
#: the σ map differed from a whole-plane run by up to 0.70 px along tile borders (deblurring: 6.6 % of the
#: intensity span); with 128 px, 0.024 px and 0.06 % (``tests/test_tiling.py``).
NETWORK_OVERLAP = 128
#: One network pass at a time on Apple's MPS device: its backend is not thread-safe (two threads running MPS work at
#: once abort the process inside Metal), and the plugin's previews and runs, and dask's threads, call from several
#: threads.
_MPS_LOCK = threading.Lock()
#: Smallest tile side a network is run on (a narrower image or tile is padded by reflection to it, and cropped
#: back). Under bf16 autocast on CPU (torch 2.13, ``amp="auto"`` on an AVX512-BF16/AMX machine) the networks' output
#: on tiles 8 px wide was not even repeatable: σ maps of 1e14-1e36 px, or NaN, from one run to the next on a
#: 128 x 8 plane (scratch runs, session 24); padded to 16 px it gives one map, within 0.2 px of float32
#: (``tests/test_tiling.py``).
MIN_TILE_SIDE = 16
#: Largest automatic tile side (bounds the memory of one tile). Planes up to 1024 x 1024 run as one tile: no tile
#: borders at all, and for the deblurring network a whole 1024² plane ran 1.06x (float32) / 1.02x (bf16) the time
#: of the former 2 x 2 tiles of 528 px on this CPU (one thread; docs/results/defocus_tiling.py). The defocus network
#: caps its tiles lower (``defocus_ops.DEFOCUS_TILE_CAP``): a whole plane ran 1.54x slower in float32.
AUTO_TILE_CAP = 1024


class Cancelled(RuntimeError):
    """Raised inside a run when ``should_stop()`` returned True (the GUI's Cancel button)."""


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` overlap.

    Examples
    --------
    >>> tile_starts(600, 256, 32)
    [0, 224, 344]
    """
    if tile >= length:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return sorted(set(starts))


def auto_tile(ny: int, nx: int, *, cap: int = AUTO_TILE_CAP, overlap: int = NETWORK_OVERLAP,
              multiple: int = 8) -> int:
    """Square tile side (multiple of ``multiple``, ≤ ``cap``) minimising the pixels processed.

    The default tile of the deblurring and defocus models: large tiles give the network more context and process
    fewer pixels twice; a plane that fits within ``cap`` is one tile. ``cap`` bounds the memory of one tile.

    Examples
    --------
    >>> auto_tile(1024, 1024), auto_tile(1100, 300), auto_tile(1024, 1024, overlap=32, cap=544)
    (1024, 616, 528)
    """
    if 2 * overlap > cap:
        raise ValueError(f"overlap ({overlap}) is too large for an automatic tile (at most {cap} px): "
                         f"use overlap <= {cap // 2} or give the tile size")
    best, best_cost = multiple, None
    for t in range(max(multiple, 2 * overlap), cap + 1, multiple):
        th, tw = min(t, -(-ny // multiple) * multiple), min(t, -(-nx // multiple) * multiple)
        cost = len(tile_starts(max(ny, th), th, overlap)) * len(tile_starts(max(nx, tw), tw, overlap)) * th * tw
        if best_cost is None or cost < best_cost or (cost == best_cost and t > best):
            best, best_cost = t, cost
    return best


def _ramp(n: int) -> np.ndarray:
    """Weights rising from 0 to 1 over ``n`` pixels: a zero halo (``n // 4`` px, where a tile's
    prediction lacks context) followed by a raised cosine."""
    halo = n // 4
    i = np.arange(n - halo, dtype=np.float64)
    rise = 0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / (n - halo))
    return np.concatenate([np.zeros(halo), rise]).astype(np.float32)


def blend_window(shape: tuple[int, int], overlap: int, sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Separable blending weights for one tile.

    ``sides`` = (top, bottom, left, right): ramp that side only when a neighbour overlaps it.
    """
    h, w = shape
    wy = np.ones(h, np.float32)
    wx = np.ones(w, np.float32)
    ov_y = min(overlap, h // 2)
    ov_x = min(overlap, w // 2)
    if ov_y > 0:
        if sides[0]:
            wy[:ov_y] = _ramp(ov_y)
        if sides[1]:
            wy[h - ov_y :] = _ramp(ov_y)[::-1]
    if ov_x > 0:
        if sides[2]:
            wx[:ov_x] = _ramp(ov_x)
        if sides[3]:
            wx[w - ov_x :] = _ramp(ov_x)[::-1]
    return np.outer(wy, wx)


def blend_regions(shape: tuple[int, int], region: int, overlap: int, fn: Callable[[tuple[slice, slice]], Any], *,
                  progress: Callable[[int, int], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Blend ``fn(region)`` over overlapping square regions of a ``(Y, X)`` plane, without a network.

    The per-region counterpart of :func:`tiled_apply` (which batches tiles through a network): ``fn`` gets the
    ``(y, x)`` slices of one region and returns an array of the region's shape or a scalar; the results are
    blended with the raised-cosine windows of :func:`blend_window`. ``progress(done, total)`` after each region;
    ``should_stop()`` is polled before each and raises :class:`Cancelled`.

    Examples
    --------
    >>> out = blend_regions((100, 70), 64, 16, lambda sl: float(sl[1].start))  # each region's x offset
    >>> out.shape, float(out[0, 0]), float(out[0, -1])
    ((100, 70), 0.0, 6.0)
    """
    ny, nx = shape
    th, tw = min(region, ny), min(region, nx)
    acc = np.zeros((ny, nx), np.float32)
    wsum = np.zeros((ny, nx), np.float32)
    ys, xs = tile_starts(ny, th, overlap), tile_starts(nx, tw, overlap)
    done, total = 0, len(ys) * len(xs)
    for y0 in ys:
        for x0 in xs:
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            sl = (slice(y0, y0 + th), slice(x0, x0 + tw))
            win = blend_window((th, tw), overlap, (y0 > 0, y0 + th < ny, x0 > 0, x0 + tw < nx))
            acc[sl] += fn(sl) * win
            wsum[sl] += win
            done += 1
            if progress is not None:
                progress(done, total)
    return acc / np.maximum(wsum, 1e-12)


def _round_up(n: int, m: int) -> int:
    return int(-(-n // m) * m)


def tiled_apply(
    fn: Callable,
    inputs: np.ndarray,
    *,
    out_channels: int = 1,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    multiple: int = 16,
    batch_size: int = 4,
    device=None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Run ``fn`` over overlapping tiles of ``inputs`` and blend the results.

    Parameters
    ----------
    fn : callable
        Takes a float32 torch tensor ``(B, C, h, w)`` on ``device`` and returns ``(B, out_channels, h, w)``.
        Called under :func:`torch.inference_mode`.
    inputs : numpy.ndarray
        ``(C, Y, X)`` float32 (already normalized), or ``(Y, X)`` for ``C = 1``.
    out_channels : int
        Channels ``fn`` returns.
    tile, overlap : int
        Tile side and minimum overlap in pixels (tile is rounded up to ``multiple``); ``overlap <= tile // 2``.
    multiple : int
        The network's size multiple; tiles and tiny images are padded by reflection to it (and to at least
        :data:`MIN_TILE_SIDE` on each side).
    batch_size : int
        Tiles per forward pass.
    device : torch.device, optional
        Where tensors go; default CPU.
    progress : callable, optional
        ``progress(done_tiles, total_tiles)`` after each batch.
    should_stop : callable, optional
        Polled between batches; when it returns True, :class:`Cancelled` is raised.

    Returns
    -------
    numpy.ndarray
        ``(out_channels, Y, X)`` float32, exactly the input's plane size.
    """
    import torch

    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"tiled_apply expects (C, Y, X) or (Y, X), got shape {x.shape}")
    if tile <= 0 or overlap < 0:
        raise ValueError(f"tile must be > 0 and overlap >= 0, got tile={tile}, overlap={overlap}")
    _check_overlap_bound(tile, overlap)
    c, ny, nx = x.shape
    tile = _round_up(max(tile, multiple, MIN_TILE_SIDE), multiple)
    th = min(tile, _round_up(max(ny, MIN_TILE_SIDE), multiple))
    tw = min(tile, _round_up(max(nx, MIN_TILE_SIDE), multiple))
    # pad so that every tile is full size (reflection handles pads larger than the image), and to the network's
    # multiple even when several tiles cover an axis: a plane's last rows then meet the same reflected border
    # whatever the tiling (unpadded, the convolutions' zero padding met them instead, and a 697-row defocus map
    # differed from its one-tile run by px near its bottom edge)
    py = max(th, _round_up(ny, multiple)) - ny
    px = max(tw, _round_up(nx, multiple)) - nx
    if py or px:
        x = np.pad(x, ((0, 0), (0, py), (0, px)), mode="reflect" if min(ny, nx) > 1 else "edge")
    _, hy, hx = x.shape
    ys, xs = tile_starts(hy, th, overlap), tile_starts(hx, tw, overlap)
    boxes = [(y0, x0) for y0 in ys for x0 in xs]
    acc = np.zeros((out_channels, hy, hx), np.float32)
    wsum = np.zeros((hy, hx), np.float32)
    dev = device if device is not None else torch.device("cpu")
    total = len(boxes)
    done = 0
    with torch.inference_mode():
        for b0 in range(0, total, batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled")
            chunk = boxes[b0 : b0 + batch_size]
            batch = np.stack([x[:, y0 : y0 + th, x0 : x0 + tw] for y0, x0 in chunk])
            with _MPS_LOCK if getattr(dev, "type", None) == "mps" else contextlib.nullcontext():
                out = fn(torch.from_numpy(batch).to(dev))
                out = out.float().cpu().numpy()
            if out.shape != (len(chunk), out_channels, th, tw):
                raise ValueError(
                    f"the model returned shape {out.shape} for tiles of {(len(chunk), out_channels, th, tw)}: it "
                    "does not keep the image size (a module built in a script, or the wrong architecture)"
                )
            if not np.isfinite(out).all() and np.isfinite(batch).all():
                # never a valid output: a result of NaN (exit code 0, nothing said) would look like a finished run
                raise ValueError("the model's output holds NaN or Inf for a finite input: its weights are broken "
                                 "(saved from a diverged training run, or edited); retrain it or pick another model")
            for (y0, x0), o in zip(chunk, out):
                sides = (y0 > 0, y0 + th < hy, x0 > 0, x0 + tw < hx)
                wgt = blend_window((th, tw), overlap, sides)
                acc[:, y0 : y0 + th, x0 : x0 + tw] += o * wgt
                wsum[y0 : y0 + th, x0 : x0 + tw] += wgt
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    result = acc / wsum
    return np.ascontiguousarray(result[:, :ny, :nx])


def map_planes(func: Callable[..., Any], *arrays, dtype=np.float32, scalar: bool = False):
    """Apply ``func(*planes) -> (Y, X)`` to every plane of ``(..., Y, X)`` arrays of one shape.

    numpy in -> numpy out (a loop); any dask input -> lazy dask out with one task per plane. With ``scalar``,
    ``func`` returns one number per plane and the result has the arrays' leading shape (a focus curve). An error
    about one plane names it (``"... (at plane 3 of the input)"``; ``(1, 2)`` with more leading axes).

    Examples
    --------
    >>> stack = np.ones((3, 8, 8))
    >>> float(map_planes(lambda p: p * 2, stack).sum())
    384.0
    >>> map_planes(lambda p: p.sum(), stack, dtype=np.float64, scalar=True)
    array([64., 64., 64.])
    """
    if not arrays:
        raise ValueError("map_planes needs at least one array")
    shape = tuple(arrays[0].shape)
    lead = len(shape) - 2
    out_shape = shape[:lead] if scalar else shape
    if any(is_dask(a) for a in arrays):
        import dask.array as da

        chunks = {i: 1 for i in range(lead)}
        chunks.update({lead: -1, lead + 1: -1})
        darrs = [da.asarray(a).rechunk(chunks) for a in arrays]

        # block_id, not block_info: dask builds block_info as a dict over every block, which made each plane's
        # graph (a batch submits one per plane) cost time in proportion to the whole stack's plane count
        def _block(*blocks, block_id=None):
            planes = [b.reshape(b.shape[-2:]) for b in blocks]
            where = tuple(block_id[:lead]) if block_id is not None and lead else ()
            with _naming_the_plane(where):
                result = np.asarray(func(*planes), dtype=dtype)
                return result.reshape(blocks[0].shape[:lead] if scalar else blocks[0].shape)

        drop = {"drop_axis": [lead, lead + 1]} if scalar else {}
        return da.map_blocks(_block, *darrs, dtype=dtype, meta=np.empty((0,) * len(out_shape), dtype), **drop)
    out = np.empty(out_shape, dtype)
    for idx in np.ndindex(*shape[:lead]):
        with _naming_the_plane(idx):
            out[idx] = func(*[np.asarray(a[idx]) for a in arrays])
    return out


@contextlib.contextmanager
def _naming_the_plane(index: tuple[int, ...]):
    """A ValueError or TypeError about one plane of a stack says which plane (in a plate of thousands)."""
    try:
        yield
    except (ValueError, TypeError) as err:
        if not index or str(err).endswith("of the input)"):
            raise
        try:  # at the end: messages start with the argument's name, which the plugin replaces by the layer's
            where = int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)  # plane 3, or (1, 2)
            named = type(err)(f"{err} (at plane {where} of the input)")
        except Exception:  # noqa: BLE001 - an exception type with other arguments: keep it as it is
            raise err from None
        raise named from err


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an ``int >= minimum``; a ``TypeError``/``ValueError`` naming ``name`` otherwise.

    Examples
    --------
    >>> check_int(4, "batch_size", 1)
    4
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def _check_overlap_bound(tile: int, overlap: int) -> None:
    """``overlap <= tile // 2``: tiles then advance by at least half their side, so a plane needs at most about
    four times the tiles of an overlap-free grid (an overlap just below the tile would advance a pixel at a
    time: hundreds of thousands of tiles per plane)."""
    if overlap > tile // 2:
        raise ValueError(f"overlap ({overlap}) must be at most half the tile ({tile} // 2 = {tile // 2}): tiles "
                         f"advance by tile - overlap px, so a larger overlap multiplies the work; use overlap <= "
                         f"{tile // 2} or a larger tile")


def check_tiling_options(tile: Any, overlap: Any, batch_size: Any = 1, *, default_overlap: int = DEFAULT_OVERLAP,
                         cap: int = AUTO_TILE_CAP, stacklevel: int = 3) -> tuple[int | None, int, int]:
    """Validated ``(tile, overlap, batch_size)`` of the shared tiling path (every model uses it).

    ``tile`` is None (automatic) or an int >= 16; ``overlap`` an int >= 0 and at most half the tile
    (``tile // 2``; at most ``cap // 2`` for an automatic tile of at most ``cap`` px), or None: the operation's
    ``default_overlap`` for an automatic tile, ``min(default_overlap, tile // 4)`` for a given one (so any tile >= 16
    works without an overlap);
    ``batch_size`` an int >= 1. An overlap below ``default_overlap`` (a small given tile, or a small given overlap)
    is allowed with a ``UserWarning``: tile borders will differ from a whole-plane run (seams); ``stacklevel`` points
    it at the user's call (3: the caller of the operation that called this).

    Examples
    --------
    >>> check_tiling_options(256, 32, 4)
    (256, 32, 4)
    >>> check_tiling_options(64, None, default_overlap=NETWORK_OVERLAP), check_tiling_options(None, None)
    ((64, 16, 1), (None, 32, 1))
    """
    tile = None if tile is None else check_int(tile, "tile", 16)
    if overlap is None:
        overlap = default_overlap if tile is None else min(default_overlap, tile // 4)
    overlap = check_int(overlap, "overlap", 0)
    if tile is not None:
        _check_overlap_bound(tile, overlap)
    if tile is None and 2 * overlap > cap:
        raise ValueError(f"overlap ({overlap}) is too large for the automatic tile (at most {cap} px): "
                         f"use overlap <= {cap // 2} or give tile as well")
    if overlap < default_overlap:
        import warnings

        warnings.warn(f"tiles overlapping by {overlap} px, less than the {default_overlap} px this model needs: "
                      "on a plane larger than one tile, expect visible seams at tile borders (use the automatic "
                      f"tile, or tile >= {4 * default_overlap} with overlap={default_overlap})",
                      UserWarning, stacklevel=stacklevel)
    return tile, overlap, check_int(batch_size, "batch_size", 1)
