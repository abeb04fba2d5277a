"""Procedural fluorescent cell phantoms (two channels, like BBBC006) and user images as content.

Channel 0 (``w1``, Hoechst-like): nuclei -- ellipses with a chromatin texture, a brighter rim of condensed
chromatin and darker nucleoli (DNA dyes stain nucleoli weakly). Channel 1 (``w2``, phalloidin-like): cell
bodies around the nuclei with a bright cortical rim and actin stress fibres (thin anti-aliased lines).
Values are relative fluorophore density (roughly 0-1.5, background ~0.01); the optics and camera models of
:mod:`napari_linblur.synth.zstack` turn them into photons and ADU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.draw import line_aa

from ..optics._rng import as_generator

__all__ = ["cell_phantom", "content_from_image"]


def _check_shape(shape) -> tuple[int, int]:
    try:
        s = tuple(int(v) for v in shape)
    except TypeError as err:
        raise TypeError(f"shape must be a (Y, X) tuple of ints, got {shape!r}") from err
    if len(s) != 2 or min(s) < 16:
        raise ValueError(f"shape must be a (Y, X) tuple of ints >= 16, got {shape!r}")
    return s


def _smooth_noise(shape, scale: float, gen: np.random.Generator) -> np.ndarray:
    f = ndimage.gaussian_filter(gen.standard_normal(shape), scale, mode="wrap")
    return f / (f.std() + 1e-12)


def cell_phantom(
    shape: Sequence[int] = (520, 696),
    *,
    n_cells: int | None = None,
    nucleus_radius_px: float = 11.0,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Two-channel fluorescent cell phantom (nuclei ``w1``, actin / cell bodies ``w2``).

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``; default the BBBC006 frame 520 x 696.
    n_cells : int, optional
        Number of cells; default a BBBC006-like density (about one cell per 4000 px², so ~90 on
        520 x 696). Cells are placed by rejection so that nuclei hardly overlap.
    nucleus_radius_px : float
        Mean nucleus semi-axis, pixels (11 px ≈ 7 µm at 0.65 µm/px).
    rng : numpy.random.Generator or int or None

    Returns
    -------
    content : ndarray of float32, shape (2, Y, X)
        Relative fluorophore density.

    Examples
    --------
    >>> img = cell_phantom((128, 160), n_cells=6, rng=0)
    >>> img.shape, img.dtype.name, bool(img[0].max() > 0.5)
    ((2, 128, 160), 'float32', True)
    """
    Y, X = _check_shape(shape)
    gen = as_generator(rng)
    r0 = float(nucleus_radius_px)
    if not math.isfinite(r0) or r0 < 2:
        raise ValueError(
            f"nucleus_radius_px must be a finite number >= 2, got {nucleus_radius_px!r}"
        )
    if n_cells is None:
        n_cells = max(1, int(round(Y * X / 4000.0 * (11.0 / r0) ** 2)))
    if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 0:
        raise ValueError(f"n_cells must be an int >= 0 or None, got {n_cells!r}")

    nuc = np.zeros((Y, X), np.float64)
    body = np.zeros((Y, X), np.float64)
    fibres = np.zeros((Y, X), np.float64)
    chromatin = _smooth_noise((Y, X), 1.2, gen)
    coarse = _smooth_noise((Y, X), 4.0, gen)
    membrane = _smooth_noise((Y, X), 2.0, gen)
    yy_all, xx_all = np.mgrid[0:Y, 0:X]

    centres: list[tuple[float, float, float]] = []
    tries = 0
    while len(centres) < n_cells and tries < 50 * max(n_cells, 1):
        tries += 1
        a = r0 * gen.uniform(0.8, 1.35)
        cy, cx = gen.uniform(-0.5 * a, Y + 0.5 * a), gen.uniform(-0.5 * a, X + 0.5 * a)
        if any((cy - y) ** 2 + (cx - x) ** 2 < (0.95 * (a + r)) ** 2 for y, x, r in centres):
            continue
        centres.append((cy, cx, a))

    for cy, cx, a in centres:
        b = a * gen.uniform(0.6, 0.95)
        th = gen.uniform(0, np.pi)
        cell_r = a * gen.uniform(1.8, 2.6)
        y0, y1 = max(0, int(cy - cell_r * 1.6)), min(Y, int(cy + cell_r * 1.6) + 2)
        x0, x1 = max(0, int(cx - cell_r * 1.6)), min(X, int(cx + cell_r * 1.6) + 2)
        if y1 <= y0 or x1 <= x0:
            continue
        yy, xx = yy_all[y0:y1, x0:x1] - cy, xx_all[y0:y1, x0:x1] - cx
        u = xx * np.cos(th) + yy * np.sin(th)
        v = -xx * np.sin(th) + yy * np.cos(th)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        # nucleus: soft-edged ellipse, chromatin texture, brighter periphery, dark nucleoli
        inside = 1.0 / (1.0 + np.exp((rho - 1.0) * 12.0))
        tex = 1.0 + 0.25 * chromatin[y0:y1, x0:x1] + 0.1 * coarse[y0:y1, x0:x1]
        rim = 1.0 + 0.3 * np.exp(-(((rho - 0.9) / 0.12) ** 2))
        dens = gen.uniform(0.6, 1.1)  # DNA content varies (cell cycle)
        nucleolus = np.ones_like(rho)
        for _ in range(int(gen.integers(1, 4))):
            ru, rv = gen.uniform(-0.45, 0.45) * a, gen.uniform(-0.45, 0.45) * b
            rn = gen.uniform(1.2, 2.2)
            nucleolus -= 0.55 * np.exp(-((u - ru) ** 2 + (v - rv) ** 2) / (2 * rn**2))
        nuc[y0:y1, x0:x1] = np.maximum(
            nuc[y0:y1, x0:x1], dens * inside * np.clip(tex * rim * nucleolus, 0.05, None)
        )
        # cell body: irregular blob (radius modulated by a few angular harmonics), cortical rim
        phi = np.arctan2(yy, xx)
        rad = np.ones_like(phi)
        for k in (2, 3, 5):
            rad += gen.uniform(0, 0.18) * np.cos(k * phi + gen.uniform(0, 2 * np.pi))
        r = np.sqrt(yy**2 + xx**2) / (cell_r * rad)
        cell = 1.0 / (1.0 + np.exp((r - 1.0) * 10.0))
        cortex = np.exp(-(((r - 0.95) / 0.08) ** 2))
        level = gen.uniform(0.15, 0.35)
        body[y0:y1, x0:x1] = np.maximum(
            body[y0:y1, x0:x1],
            level * cell * (1 + 0.3 * membrane[y0:y1, x0:x1]) + 0.6 * level * cortex,
        )
        # stress fibres: straight chords through the cell, a preferred direction per cell
        direction = gen.uniform(0, np.pi)
        for _ in range(int(gen.integers(3, 9))):
            ang = direction + gen.normal(0, 0.25)
            off = gen.uniform(-0.7, 0.7) * cell_r
            half = cell_r * gen.uniform(0.5, 0.95)
            py, px = cy + off * np.cos(ang), cx - off * np.sin(ang)
            ya, xa = py - half * np.sin(ang), px - half * np.cos(ang)
            yb, xb = py + half * np.sin(ang), px + half * np.cos(ang)
            rr, cc, val = line_aa(int(round(ya)), int(round(xa)), int(round(yb)), int(round(xb)))
            keep = (rr >= 0) & (rr < Y) & (cc >= 0) & (cc < X)
            strength = gen.uniform(0.15, 0.45)
            np.maximum.at(fibres, (rr[keep], cc[keep]), strength * val[keep])

    fibres = ndimage.gaussian_filter(fibres, 0.6) * 2.0
    w1 = np.clip(nuc, 0, None) + 0.01
    w2 = np.clip(body, 0, None) + np.clip(fibres, 0, None) * (body > 0.02) + 0.01
    return np.stack([w1, w2]).astype(np.float32)


def content_from_image(
    image, *, channel_axis: int | None = None, percentiles=(0.5, 99.9)
) -> np.ndarray:
    """Turn any sharp image into synthesis content: ``(C, Y, X)`` float32 relative density.

    Per channel, the low percentile is subtracted and the result divided by (high - low) percentile, then
    clipped at 0 (so the brightest structures are ~1, the background ~0, relations between pixels kept).

    Parameters
    ----------
    image : array_like
        ``(Y, X)``, ``(C, Y, X)``, or channels elsewhere with ``channel_axis`` (e.g. -1 for RGB).
    channel_axis : int, optional
        Axis of channels; ``None`` means 2-D (one channel) or channels first for 3-D input.
    percentiles : (float, float)
        Low and high percentiles used for scaling.

    Returns
    -------
    content : ndarray of float32, shape (C, Y, X)

    Examples
    --------
    >>> content_from_image(np.arange(64, dtype=np.uint16).reshape(8, 8)).shape
    (1, 8, 8)
    """
    a = np.asarray(image)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"image must be a real numeric array, got dtype {a.dtype}")
    if channel_axis is not None:
        if not -a.ndim <= channel_axis < a.ndim:
            raise ValueError(
                f"channel_axis must be a valid axis of image (ndim={a.ndim}), got {channel_axis}"
            )
        a = np.moveaxis(a, channel_axis, 0)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(
            f"image must be (Y, X) or (C, Y, X) (after channel_axis), got shape {a.shape}"
        )
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("image must be finite (no NaN or inf)")
    lo_p, hi_p = percentiles
    out = np.empty(a.shape, np.float32)
    for c in range(a.shape[0]):
        lo, hi = np.percentile(a[c], [lo_p, hi_p])
        scale = hi - lo if hi > lo else 1.0
        out[c] = np.clip((a[c] - lo) / scale, 0, None)
    return out
