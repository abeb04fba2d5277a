"""Through-focus z-stacks: content -> PSF per plane (exact FFT convolution) -> photons -> camera.

For every plane the content (relative fluorophore density) is convolved with the setup's PSF at that
plane's defocus (:func:`~napari_linblur.optics.convolve.fft_convolve_many`, reflect padding, no wrap-around;
the content's FFT is shared by all planes), scaled to expected photo-electrons, and passed through the
Poisson-Gaussian camera model with an offset; the result is rounded and clipped to uint16. PSFs are cached
per ``(setup, defocus)``.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike

from ..optics._rng import as_generator
from ..optics.convolve import fft_convolve_many
from ..optics.noise import poisson_gaussian
from ..optics.psf import OpticalSetup
from .recipes import Recipe

__all__ = ["psfs_for", "through_focus_stack"]


@functools.lru_cache(maxsize=64)
def _cached_psfs(setup: OpticalSetup, defocus: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    out = tuple(setup.psf_stack(list(defocus)))
    for p in out:
        p.setflags(write=False)
    return out


def psfs_for(setup: OpticalSetup, defocus_um: ArrayLike) -> tuple[np.ndarray, ...]:
    """PSFs of ``setup`` at each defocus (cached; read-only arrays).

    Examples
    --------
    >>> from napari_linblur.optics import OpticalSetup
    >>> ps = psfs_for(OpticalSetup(model="gaussian"), [0.0, 4.0])
    >>> [p.shape for p in ps]
    [(5, 5), (15, 15)]
    """
    if not isinstance(setup, OpticalSetup):
        raise TypeError(f"setup must be an OpticalSetup, got {type(setup).__name__}")
    d = tuple(float(v) for v in np.asarray(defocus_um, dtype=np.float64).ravel())
    if not d:
        raise ValueError("defocus_um must hold at least one value")
    if not all(np.isfinite(d)):
        raise ValueError("defocus_um must be finite (no NaN or inf)")
    return _cached_psfs(setup, d)


def through_focus_stack(
    content: ArrayLike,
    recipe: Recipe | OpticalSetup,
    defocus_um: ArrayLike | None = None,
    *,
    rng: int | np.random.Generator | None = None,
    clean: bool = False,
    photons: float | None = None,
    gain: float | None = None,
    offset: float | None = None,
    read_noise: float | None = None,
) -> np.ndarray:
    """Synthesize a through-focus stack of ``content``.

    Parameters
    ----------
    content : array_like, shape (Y, X) or (C, Y, X)
        Relative fluorophore density (e.g. :func:`~napari_linblur.synth.phantoms.cell_phantom` or
        :func:`~napari_linblur.synth.phantoms.content_from_image`), ``>= 0``.
    recipe : Recipe or OpticalSetup
        A :class:`~napari_linblur.synth.recipes.Recipe` gives per-channel wavelength and photons, the planes
        and the camera; an :class:`~napari_linblur.optics.psf.OpticalSetup` is used for every channel.
        A randomized recipe must be realized first (:meth:`Recipe.realize`).
    defocus_um : sequence of float, optional
        Plane defocus values, µm; default the recipe's kept planes (required with an OpticalSetup).
    rng : numpy.random.Generator or int or None
        Noise source / seed.
    clean : bool
        Return the noise-free expected camera signal (float32 ADU, offset included, not rounded or
        clipped) instead of noisy uint16.
    photons, gain, offset, read_noise : float, optional
        Override the recipe's camera (photo-electrons per unit density in focus, ADU/e⁻, ADU, e⁻). Defaults
        with an OpticalSetup: 1000, 1.0, 100.0, 2.0.

    Returns
    -------
    stack : ndarray, shape (Z, Y, X) or (C, Z, Y, X)
        uint16 (float32 if ``clean``).

    Examples
    --------
    >>> from napari_linblur.optics import OpticalSetup
    >>> img = np.zeros((32, 32)); img[16, 16] = 1.0
    >>> st = through_focus_stack(img, OpticalSetup(model="gaussian"), [8.0, 0.0], rng=0)
    >>> st.shape, st.dtype.name
    ((2, 32, 32), 'uint16')
    """
    a = np.asarray(content)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"content must be a real numeric array, got dtype {a.dtype}")
    if a.ndim not in (2, 3):
        raise ValueError(f"content must be (Y, X) or (C, Y, X), got ndim={a.ndim}")
    a3 = a[None] if a.ndim == 2 else a
    a3 = a3.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a3)):
        raise ValueError("content must be finite (no NaN or inf)")
    if np.any(a3 < 0):
        raise ValueError("content must be >= 0 (fluorophore density)")
    C = a3.shape[0]

    if isinstance(recipe, Recipe):
        if recipe.randomize is not None:
            raise ValueError("recipe is randomized: call recipe.realize(rng) first")
        if C > len(recipe.channels):
            raise ValueError(
                f"content has {C} channels but recipe {recipe.name!r} defines {len(recipe.channels)}"
            )
        setups = [recipe.setup(c) for c in range(C)]
        ph = [recipe.channels[c].photons if photons is None else float(photons) for c in range(C)]
        dz = recipe.defocus_um if defocus_um is None else defocus_um
        g = recipe.gain if gain is None else float(gain)
        off = recipe.offset if offset is None else float(offset)
        rn = recipe.read_noise if read_noise is None else float(read_noise)
    elif isinstance(recipe, OpticalSetup):
        if defocus_um is None:
            raise ValueError("defocus_um is required when recipe is an OpticalSetup")
        setups = [recipe] * C
        ph = [1000.0 if photons is None else float(photons)] * C
        dz = defocus_um
        g = 1.0 if gain is None else float(gain)
        off = 100.0 if offset is None else float(offset)
        rn = 2.0 if read_noise is None else float(read_noise)
    else:
        raise TypeError(f"recipe must be a Recipe or an OpticalSetup, got {type(recipe).__name__}")
    for name, v in (("photons", min(ph)), ("gain", g), ("read_noise", rn)):
        if not np.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if not np.isfinite(off):
        raise ValueError(f"offset must be a finite number, got {off!r}")

    gen = None if clean else as_generator(rng)
    Z = len(np.asarray(dz, dtype=np.float64).ravel())
    out = np.empty((C, Z) + a3.shape[1:], np.float32 if clean else np.uint16)
    for c in range(C):
        electrons = fft_convolve_many(a3[c], psfs_for(setups[c], dz))  # (Z, Y, X) float64
        np.maximum(electrons, 0.0, out=electrons)  # FFT round-off can give tiny negatives
        electrons *= ph[c]
        if clean:
            electrons *= g
            electrons += off
            out[c] = electrons
        else:
            adu = poisson_gaussian(electrons, gain=g, read_noise=rn, offset=off, rng=gen)
            np.rint(adu, out=adu)
            np.clip(adu, 0, 65535, out=adu)
            out[c] = adu
    return out[0] if a.ndim == 2 else out
