"""Point spread functions of a defocused widefield microscope and the σ ↔ defocus calibration.

Four PSF models, all returned as 2-D ``float64`` arrays of odd size, centred, summing to 1:

- :func:`gaussian_psf` -- isotropic Gaussian (the model of paper 001, eq. 3);
- :func:`disc_psf` -- geometric defocus disc (pillbox / circle of confusion), anti-aliased by supersampling;
- :func:`born_wolf_psf` -- aberration-free wave-optical defocus in one medium (``psfmodels``, Gibson-Lanni with
  no refractive-index mismatch, which is the Born & Wolf defocus model);
- :func:`gibson_lanni_psf` -- wave-optical defocus with a refractive-index mismatch between immersion medium
  (``ni``) and specimen (``ns``) for a point source ``depth_um`` below the coverslip (``psfmodels``).

Both wave models are available as a vectorial (Aguet et al. 2009) or scalar (Gibson & Lanni) computation.

Defocus maps in this package are σ of the *equivalent Gaussian*: the Gaussian with the same radial second
moment as the PSF (:func:`equivalent_sigma`).  :func:`sigma_from_defocus` and :func:`defocus_from_sigma`
convert between µm of defocus and that σ in pixels for a given :class:`OpticalSetup`, by tabulating the
equivalent σ of the setup's own PSF over a defocus grid (cached) and interpolating monotonically.  A closed
form geometric approximation (:func:`geometric_sigma`) is provided as well: blur-circle radius
``R = |dz| tan(asin(NA / ni))``, σ = sqrt((R/2)² + σ₀²) with σ₀ = 0.21 λ / NA the in-focus widefield
Gaussian approximation (Zhang et al. 2007) and R/2 the exact second-moment σ of a uniform disc of radius R.
(Paper 001 uses the thin-lens convention R = √2 σ; we use the second moment so that the same σ describes
Gaussian, disc and wave-optical PSFs consistently.)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "OpticalSetup",
    "born_wolf_psf",
    "default_psf_size",
    "defocus_from_sigma",
    "disc_psf",
    "equivalent_sigma",
    "gaussian_psf",
    "geometric_sigma",
    "gibson_lanni_psf",
    "sigma_from_defocus",
]

PSFModel = Literal["gaussian", "disc", "born_wolf", "gibson_lanni"]
_MODELS = ("gaussian", "disc", "born_wolf", "gibson_lanni")
FocusReference = Literal["sharpest", "legacy"]
_FOCUS = ("sharpest", "legacy")


# ----------------------------------------------------------------------------------------------------------
# validation helpers
def _check_scalar(name: str, value: float, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real number, got {value!r}") from err
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if (strict and v <= minimum) or v < minimum:
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be {op} {minimum}, got {value!r}")
    return v


#: Largest PSF side (px): 4097² float64 is 134 MB, a Gaussian of σ = 512 px. A wider blur than that is not a
#: microscope's defocus on an image a PSF could be convolved with; it is refused, not a MemoryError.
MAX_PSF_SIZE = 4097


def _check_size(size: int | None, default: int, blur: str = "its blur") -> int:
    if size is None:
        size, what = default, f"the PSF window of {blur}"
    else:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise TypeError(f"size must be a positive odd int or None, got {size!r}")
        if size < 1 or size % 2 == 0:
            raise ValueError(f"size must be a positive odd int or None, got {size!r}")
        what = "size"
    if size > MAX_PSF_SIZE:
        raise ValueError(f"{what} is {int(size)} px square ({8e-9 * float(size) ** 2:.3g} GB); a PSF is at most "
                         f"{MAX_PSF_SIZE} px (a Gaussian of sigma 512 px): check the blur's units (pixels, µm)")
    return int(size)


def _normalize(psf: np.ndarray) -> np.ndarray:
    psf = np.clip(np.asarray(psf, dtype=np.float64), 0.0, None)
    total = psf.sum()
    if not total > 0:  # pragma: no cover - every model has positive mass
        raise ValueError("PSF has no positive mass")
    return psf / total


def _delta(size: int) -> np.ndarray:
    psf = np.zeros((size, size))
    psf[size // 2, size // 2] = 1.0
    return psf


# ----------------------------------------------------------------------------------------------------------
# analytic models
def gaussian_psf(sigma: float, size: int | None = None) -> np.ndarray:
    """Sampled isotropic 2-D Gaussian PSF.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, ``>= 0``. ``0`` gives a delta (identity kernel).
    size : int, optional
        Odd side length. Default ``2 * ceil(4 sigma) + 1`` (at least 1).

    Returns
    -------
    psf : ndarray of float64, shape (size, size)
        Centred, sums to 1.

    Examples
    --------
    >>> psf = gaussian_psf(2.0)
    >>> psf.shape, round(float(psf.sum()), 6)
    ((17, 17), 1.0)
    """
    sigma = _check_scalar("sigma", sigma)
    size = _check_size(size, 2 * math.ceil(4.0 * sigma) + 1, f"sigma={sigma:g} px")
    if sigma == 0:
        return _delta(size)
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    return _normalize(np.outer(g, g))


def disc_psf(radius: float, size: int | None = None, oversample: int = 8) -> np.ndarray:
    """Geometric defocus disc (pillbox, circle of confusion), anti-aliased.

    Each pixel holds the fraction of its area inside the disc, estimated on an
    ``oversample x oversample`` sub-grid.

    Parameters
    ----------
    radius : float
        Disc radius in pixels, ``>= 0``. Radii below half a pixel give (nearly) a delta.
    size : int, optional
        Odd side length. Default ``2 * ceil(radius + 1) + 1``.
    oversample : int
        Sub-samples per pixel and axis (``>= 1``).

    Returns
    -------
    psf : ndarray of float64, shape (size, size)
        Centred, sums to 1.

    Examples
    --------
    >>> psf = disc_psf(3.0)
    >>> psf.shape, round(float(psf.sum()), 6)
    ((9, 9), 1.0)
    """
    radius = _check_scalar("radius", radius)
    if (
        isinstance(oversample, bool)
        or not isinstance(oversample, (int, np.integer))
        or oversample < 1
    ):
        raise ValueError(f"oversample must be an int >= 1, got {oversample!r}")
    size = _check_size(size, 2 * math.ceil(radius + 1.0) + 1, f"radius={radius:g} px")
    if radius == 0:
        return _delta(size)
    n = int(oversample)
    sub = (np.arange(size * n) + 0.5) / n - size / 2.0  # sub-pixel centres, pixel centre at 0
    sq = sub**2
    psf = np.empty((size, size))
    rows = max(1, (1 << 22) // (n * n * size))  # pixel rows per step: ~4 M sub-samples at a time, any disc size
    for i in range(0, size, rows):
        j = min(size, i + rows)
        inside = (sq[i * n: j * n, None] + sq[None, :]) <= radius**2
        psf[i:j] = inside.reshape(j - i, n, size, n).mean(axis=(1, 3))
    if psf.sum() == 0:  # tiny radius: fall back to the delta
        return _delta(size)
    return _normalize(psf)


# ----------------------------------------------------------------------------------------------------------
# wave-optical models (psfmodels)
def _psfmodels_stack(
    defocus_um: np.ndarray,
    *,
    na: float,
    wavelength_um: float,
    pixel_um: float,
    ni: float,
    ns: float,
    depth_um: float,
    size: int,
    vectorial: bool,
    focus: str = "sharpest",
) -> np.ndarray:
    import psfmodels

    # psfmodels gives the focal plane in the specimen's coordinates (a source at pz is near focus at zv = pz);
    # defocus 0 is the plane of highest on-axis intensity, or the old double-shifted convention on request
    if focus == "legacy":
        zero = depth_um * ni / ns
    else:
        zero = depth_um + _sharpest_offset(na, wavelength_um, ni, ns, depth_um, vectorial)
    zv = zero + np.asarray(defocus_um, dtype=np.float64)
    params = {"NA": na, "ni": ni, "ni0": ni, "ns": ns}
    fn = psfmodels.vectorial_psf if vectorial else psfmodels.scalar_psf
    out = fn(
        zv, nx=size, dxy=pixel_um, pz=depth_um, wvl=wavelength_um, params=params, normalize=False
    )
    out = np.asarray(out, dtype=np.float64).reshape(len(zv), size, size)
    return np.stack([_normalize(p) for p in out])


@functools.lru_cache(maxsize=256)
def _sharpest_offset(na: float, wavelength_um: float, ni: float, ns: float, depth_um: float,
                     vectorial: bool) -> float:
    """Focal position of the highest on-axis intensity relative to the source depth, µm.

    0 without an index mismatch or at the coverslip; otherwise the spherical aberration of the mismatch moves
    the sharpest plane by up to about a µm (NA 1.4 oil into water, 10 µm deep: +0.86 µm). Found on a fine
    grid (``psfmodels``, one on-axis sample per plane, a few ms) and refined by a parabola through the maximum.
    """
    if depth_um == 0.0 or ni == ns:
        return 0.0
    import psfmodels

    fn = psfmodels.vectorial_psf if vectorial else psfmodels.scalar_psf
    params = {"NA": na, "ni": ni, "ni0": ni, "ns": ns}
    half = max(2.0, 2.0 * abs(depth_um * (1.0 - ni / ns))) + 2.0 * wavelength_um * ni / na**2
    for _ in range(4):
        zv = depth_um + np.linspace(-half, half, 801)
        axial = np.asarray(fn(zv, nx=1, dxy=0.01, pz=depth_um, wvl=wavelength_um, params=params,
                              normalize=False), dtype=np.float64).reshape(len(zv), -1)[:, 0]
        i = int(np.argmax(axial))
        if 0 < i < len(zv) - 1:
            y0, y1, y2 = axial[i - 1 : i + 2]
            curv = y0 - 2.0 * y1 + y2
            step = 0.5 * (y0 - y2) / curv if curv < 0 else 0.0
            return float(zv[i] - depth_um + step * (zv[1] - zv[0]))
        half *= 2.0  # the maximum is at the edge of the window: look wider
    return float(zv[i] - depth_um)


def _check_wave_args(defocus_um, na, wavelength_um, pixel_um, ni, ns, depth_um, size):
    dz = _check_scalar("defocus_um", defocus_um, minimum=-math.inf)
    na = _check_scalar("na", na, strict=True)
    wl = _check_scalar("wavelength_um", wavelength_um, strict=True)
    px = _check_scalar("pixel_um", pixel_um, strict=True)
    ni = _check_scalar("ni", ni, minimum=1.0)
    ns = _check_scalar("ns", ns, minimum=1.0)
    depth = _check_scalar("depth_um", depth_um)
    if na >= ni:
        raise ValueError(f"na must be smaller than the immersion index ni={ni}, got {na}")
    size = _check_size(size, 0) if size is not None else None
    return dz, na, wl, px, ni, ns, depth, size


def born_wolf_psf(
    defocus_um: float,
    *,
    na: float,
    wavelength_um: float,
    pixel_um: float,
    ni: float = 1.0,
    size: int | None = None,
    vectorial: bool = True,
) -> np.ndarray:
    """Aberration-free wave-optical defocus PSF (Born & Wolf): immersion and specimen of index ``ni``.

    Computed with ``psfmodels`` (Gibson-Lanni integral with no index mismatch, which reduces to the
    Born-Wolf defocus model), with pixel integration by 3x oversampling. psfmodels keeps its glass coverslip
    (index 1.515): the vectorial model includes the Fresnel transmission at it, which slightly narrows the PSF of
    a dry objective at high NA (NA above about 0.8).

    Parameters
    ----------
    defocus_um : float
        Distance of the focal plane from the point source, µm (sign ignored: the PSF is symmetric).
    na : float
        Numerical aperture (``< ni``).
    wavelength_um : float
        Emission wavelength, µm.
    pixel_um : float
        Pixel size in sample space, µm.
    ni : float
        Refractive index of the immersion medium (1.0 air, 1.33 water, 1.515 oil).
    size : int, optional
        Odd side length; default from :func:`default_psf_size`.
    vectorial : bool
        Vectorial (Aguet 2009) if True, scalar otherwise.

    Returns
    -------
    psf : ndarray of float64, shape (size, size)
        Centred, sums to 1.

    Examples
    --------
    >>> psf = born_wolf_psf(4.0, na=0.45, wavelength_um=0.5, pixel_um=0.65, size=31)
    >>> psf.shape, round(float(psf.sum()), 6)
    ((31, 31), 1.0)
    """
    dz, na, wl, px, ni, _, _, size = _check_wave_args(
        defocus_um, na, wavelength_um, pixel_um, ni, ni, 0.0, size
    )
    if size is None:
        size = default_psf_size(
            OpticalSetup(na=na, wavelength_um=wl, pixel_um=px, ni=ni, ns=ni), dz
        )
    return _psfmodels_stack(
        np.array([abs(dz)]),
        na=na,
        wavelength_um=wl,
        pixel_um=px,
        ni=ni,
        ns=ni,
        depth_um=0.0,
        size=size,
        vectorial=vectorial,
    )[0]


def gibson_lanni_psf(
    defocus_um: float,
    *,
    na: float,
    wavelength_um: float,
    pixel_um: float,
    ni: float = 1.0,
    ns: float = 1.33,
    depth_um: float = 2.0,
    size: int | None = None,
    vectorial: bool = True,
    focus: FocusReference = "sharpest",
) -> np.ndarray:
    """Wave-optical defocus PSF with refractive-index mismatch (Gibson & Lanni), via ``psfmodels``.

    The point source lies ``depth_um`` below the coverslip in a specimen of index ``ns``, imaged through an
    immersion medium of index ``ni``. Defocus is measured from the sharpest plane (highest on-axis intensity);
    positive values move the focal plane further into the specimen.

    Parameters
    ----------
    defocus_um : float
        Focal-plane offset from the nominal focus, µm (signed).
    na, wavelength_um, pixel_um, ni : float
        As in :func:`born_wolf_psf`.
    ns : float
        Refractive index of the specimen (1.33 water/medium, ~1.38-1.45 cells or mountants).
    depth_um : float
        Depth of the point source below the coverslip, µm (``0``: at the coverslip, no focal shift).
    size : int, optional
        Odd side length; default from :func:`default_psf_size`.
    vectorial : bool
        Vectorial (Aguet 2009) if True, scalar Gibson-Lanni otherwise.
    focus : {'sharpest', 'legacy'}
        Where defocus 0 lies: ``'sharpest'``, the plane of highest on-axis intensity; ``'legacy'``, the
        convention of napari-linblur before 0.2 (``psfmodels`` focal position ``depth_um * ni / ns``, which
        applies the paraxial focal shift twice and sits about ``depth_um * (1 - ni / ns)`` off the sharpest
        plane). Kept only so that recipes recorded with it (the shipped ``ae-default``) reproduce exactly.

    Returns
    -------
    psf : ndarray of float64, shape (size, size)
        Centred, sums to 1.

    Examples
    --------
    >>> psf = gibson_lanni_psf(4.0, na=0.45, wavelength_um=0.5, pixel_um=0.65, ns=1.33, size=31)
    >>> round(float(psf.sum()), 6)
    1.0
    """
    dz, na, wl, px, ni, ns, depth, size = _check_wave_args(
        defocus_um, na, wavelength_um, pixel_um, ni, ns, depth_um, size
    )
    _check_focus(focus)
    if size is None:
        size = default_psf_size(
            OpticalSetup(na=na, wavelength_um=wl, pixel_um=px, ni=ni, ns=ns), dz
        )
    return _psfmodels_stack(
        np.array([dz]),
        na=na,
        wavelength_um=wl,
        pixel_um=px,
        ni=ni,
        ns=ns,
        depth_um=depth,
        size=size,
        vectorial=bool(vectorial),
        focus=focus,
    )[0]


def _check_focus(focus) -> str:
    if not isinstance(focus, str) or focus not in _FOCUS:
        raise ValueError(f"focus must be one of {_FOCUS}, got {focus!r}")
    return focus


# ----------------------------------------------------------------------------------------------------------
# equivalent sigma and the geometric approximation
def equivalent_sigma(psf: np.ndarray) -> float:
    """σ (pixels) of the Gaussian with the same radial second moment as ``psf``.

    ``sqrt(E[r²] / 2)`` with ``r`` measured from the PSF's centroid and the PSF normalized to unit mass
    (negative values are clipped to 0). For a Gaussian this is its σ; for a uniform disc of radius R it is R/2.
    Wave-optical PSFs have heavy tails, so the value depends on the window: the calibration uses the window
    of :func:`default_psf_size`, the same one the renderers use.

    Parameters
    ----------
    psf : array_like, 2-D
        Non-negative kernel with positive sum.

    Returns
    -------
    sigma : float

    Examples
    --------
    >>> round(equivalent_sigma(gaussian_psf(3.0)), 2)
    3.0
    """
    p = np.asarray(psf, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"psf must be a 2-D array, got ndim={p.ndim}")
    if not np.all(np.isfinite(p)):
        raise ValueError("psf must be finite (no NaN or inf)")
    p = np.clip(p, 0.0, None)
    total = p.sum()
    if not total > 0:
        raise ValueError("psf must have a positive sum")
    p = p / total
    y = np.arange(p.shape[0], dtype=np.float64)
    x = np.arange(p.shape[1], dtype=np.float64)
    py, px = p.sum(axis=1), p.sum(axis=0)
    cy, cx = (py * y).sum(), (px * x).sum()
    m2 = (py * (y - cy) ** 2).sum() + (px * (x - cx) ** 2).sum()
    return float(np.sqrt(m2 / 2.0))


def _diffraction_sigma_um(setup: OpticalSetup) -> float:
    return 0.21 * setup.wavelength_um / setup.na


def _tan_half_angle(setup: OpticalSetup) -> float:
    return math.tan(math.asin(min(setup.na / setup.ni, 0.999999)))


def geometric_sigma(defocus_um: float | np.ndarray, setup: OpticalSetup) -> float | np.ndarray:
    """Closed-form geometric-optics approximation of the equivalent σ (pixels) at a defocus.

    ``R = |dz| tan(asin(NA / ni))`` (blur-circle radius, µm), ``σ = sqrt((R / 2)² + σ₀²) / pixel_um`` with
    ``σ₀ = 0.21 λ / NA`` the in-focus widefield Gaussian approximation.

    Examples
    --------
    >>> s = OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65)
    >>> round(float(geometric_sigma(10.0, s)), 2)
    3.89
    """
    dz = np.abs(np.asarray(defocus_um, dtype=np.float64))
    r = dz * _tan_half_angle(setup)
    sig = np.sqrt((r / 2.0) ** 2 + _diffraction_sigma_um(setup) ** 2) / setup.pixel_um
    return float(sig) if sig.ndim == 0 else sig


def default_psf_size(setup: OpticalSetup, defocus_um: float) -> int:
    """Odd PSF window covering the blur circle and the diffraction core at ``defocus_um``.

    Half-width ``ceil(1.25 R + 4 σ₀) + 2`` pixels with R the geometric blur radius and σ₀ the in-focus
    diffraction σ, both in pixels.

    Examples
    --------
    >>> default_psf_size(OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65), 0.0)
    9
    """
    r_px = abs(float(defocus_um)) * _tan_half_angle(setup) / setup.pixel_um
    s0 = _diffraction_sigma_um(setup) / setup.pixel_um
    half = math.ceil(1.25 * r_px + 4.0 * s0) + 2
    return 2 * half + 1


# ----------------------------------------------------------------------------------------------------------
#: plausible emission wavelengths (µm) and sample pixel sizes (µm) of :class:`OpticalSetup`: outside, a value in
#: nm is the likely mistake
_WAVELENGTH_RANGE_UM = (0.1, 3.0)
_MAX_PIXEL_UM = 100.0


@dataclass(frozen=True)
class OpticalSetup:
    """A widefield microscope: objective, emission wavelength, camera pixel and PSF model.

    Parameters
    ----------
    na : float
        Numerical aperture (``< ni``).
    wavelength_um : float
        Emission wavelength, µm.
    pixel_um : float
        Pixel size in sample space (camera pixel / magnification), µm.
    ni : float
        Immersion medium index (1.0 air, 1.33 water, 1.515 oil).
    ns : float
        Specimen index (used by ``'gibson_lanni'``).
    model : {'gaussian', 'disc', 'born_wolf', 'gibson_lanni'}
        PSF model. ``'gaussian'`` uses σ = :func:`geometric_sigma`, ``'disc'`` the geometric blur circle
        (convolved with nothing: a pure pillbox of radius R, a delta in focus). Both take the paraxial blur circle
        (σ = R / 2), which is wider than a real defocused PSF at high NA: far from focus the wave models' σ is
        0.97x theirs at NA 0.45 in air, 0.87x at NA 0.8, 0.69x at NA 0.95, 0.74x at NA 1.4 in oil
        (:func:`_large_defocus_slope`). For σ <-> µm at NA above about 0.5, use a wave model (the default).
    vectorial : bool
        Vectorial (True) or scalar (False) wave model.
    depth_um : float
        Depth of the emitters below the coverslip for ``'gibson_lanni'``.
    focus : {'sharpest', 'legacy'}
        Where ``'gibson_lanni'`` puts defocus 0 (see :func:`gibson_lanni_psf`): the sharpest plane, or the
        convention before 0.2 that recorded recipes without this field used (:meth:`from_dict` reads a dict
        without ``focus`` as ``'legacy'``, so an old recipe renders the same data). Other models ignore it.

    Examples
    --------
    >>> s = OpticalSetup(na=0.45, wavelength_um=0.46, pixel_um=0.65, model="gaussian")
    >>> psf = s.psf(8.0)
    >>> round(float(psf.sum()), 6)
    1.0
    """

    na: float = 0.45
    wavelength_um: float = 0.52
    pixel_um: float = 0.65
    ni: float = 1.0
    ns: float = 1.33
    model: PSFModel = "born_wolf"
    vectorial: bool = True
    depth_um: float = 0.0
    focus: FocusReference = "sharpest"

    def __post_init__(self) -> None:
        for name, minimum, strict in (("na", 0.0, True), ("wavelength_um", 0.0, True), ("pixel_um", 0.0, True),
                                      ("ni", 1.0, False), ("ns", 1.0, False), ("depth_um", 0.0, False)):
            # plain floats from here on (numpy scalars, ints)
            object.__setattr__(self, name, _check_scalar(name, getattr(self, name), minimum=minimum, strict=strict))
        # a value in nm (or a camera pixel, not the sample's) would convert without a sign of error: every σ below
        # the in-focus one of a 520-µm "wavelength" reads as 0 µm of defocus
        if not _WAVELENGTH_RANGE_UM[0] <= self.wavelength_um <= _WAVELENGTH_RANGE_UM[1]:
            raise ValueError(f"wavelength_um must be the emission wavelength in µm ({_WAVELENGTH_RANGE_UM[0]:g} to "
                             f"{_WAVELENGTH_RANGE_UM[1]:g}), got {self.wavelength_um:g}"
                             + (f": a wavelength in nm? {self.wavelength_um:g} nm is wavelength_um="
                                f"{self.wavelength_um / 1000:g}" if self.wavelength_um > _WAVELENGTH_RANGE_UM[1]
                                else ""))
        if self.pixel_um > _MAX_PIXEL_UM:
            raise ValueError(f"pixel_um must be the pixel size in the sample in µm (at most {_MAX_PIXEL_UM:g}), got "
                             f"{self.pixel_um:g}: a size in nm? {self.pixel_um:g} nm is pixel_um="
                             f"{self.pixel_um / 1000:g}")
        if self.na >= self.ni:
            raise ValueError(f"na must be smaller than ni={self.ni}, the immersion medium's refractive index "
                             f"(1.0 air, 1.33 water, 1.515 oil: `ni=`, `--ni` on the command line), got {self.na}")
        if self.model not in _MODELS:
            raise ValueError(f"model must be one of {_MODELS}, got {self.model!r}")
        _check_focus(self.focus)

    def replace(self, **changes) -> OpticalSetup:
        """Copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> OpticalSetup:
        """Inverse of :meth:`to_dict`.

        A ``'gibson_lanni'`` dict without ``focus`` was recorded before the field existed, so it means
        ``focus='legacy'`` (the other models do not use ``focus``: they get the default and compare equal).
        """
        legacy = {"focus": "legacy"} if d.get("model") == "gibson_lanni" else {}
        return cls(**{**legacy, **d})

    def psf(self, defocus_um: float, size: int | None = None) -> np.ndarray:
        """The PSF at ``defocus_um`` (odd ``size``, default :func:`default_psf_size`; for the ``gaussian`` model
        ``2 ceil(4σ) + 1``), summing to 1."""
        return self.psf_stack([defocus_um], size=size)[0]

    def psf_stack(self, defocus_um, size: int | None = None) -> list[np.ndarray]:
        """PSFs for several defocus values (wave models computed in one ``psfmodels`` call).

        Each PSF has its own default size unless ``size`` is given.
        """
        dz = np.asarray(defocus_um, dtype=np.float64).ravel()
        if not np.all(np.isfinite(dz)):
            raise ValueError("defocus_um must be finite (no NaN or inf)")
        if self.model == "gaussian":  # its own ±4σ window: the blur-circle window is only ±2.5σ of this Gaussian
            sig = np.atleast_1d(geometric_sigma(dz, self))
            return [gaussian_psf(s, size) for s in sig]
        sizes = [_check_size(size, default_psf_size(self, d), f"defocus {d:g} µm") for d in dz]
        if self.model == "disc":
            r = np.abs(dz) * _tan_half_angle(self) / self.pixel_um
            return [disc_psf(ri, n) for ri, n in zip(r, sizes)]
        if self.model == "born_wolf":
            zv, ns, depth = np.abs(dz), self.ni, 0.0
        else:
            zv, ns, depth = dz, self.ns, self.depth_um
        out: list[np.ndarray] = [np.empty(0)] * len(dz)
        # one psfmodels call per distinct window size (cost grows with the window area)
        for n in sorted(set(sizes)):
            idx = [i for i, m in enumerate(sizes) if m == n]
            stack = _psfmodels_stack(
                zv[idx],
                na=self.na,
                wavelength_um=self.wavelength_um,
                pixel_um=self.pixel_um,
                ni=self.ni,
                ns=ns,
                depth_um=depth,
                size=n,
                vectorial=self.vectorial,
                focus=self.focus,
            )
            for i, p in zip(idx, stack):
                out[i] = p
        return out


# ----------------------------------------------------------------------------------------------------------
# calibration
_N_TABLE = 49


def _large_defocus_slope(setup: OpticalSetup) -> float:
    """dσ/d|dz| (px per µm) of ``setup``'s PSF far from focus, where it is geometric.

    The ``gaussian`` and ``disc`` models are defined by the paraxial blur circle: σ = R / 2 with
    R = |dz| tan α. A wave PSF far from focus is the ray cone of an isotropic emitter, whose second moment per axis
    is ``|dz| sqrt((1 / cos α - 1) / 2)``: the same as R / 2 at small NA, and smaller at high NA (0.97x at NA 0.45
    in air, 0.87x at 0.8, 0.74x at NA 1.4 in oil, from this formula). Extrapolating a wave model's table with R / 2
    overestimated σ by about 12 % at 2.5 µm for NA 1.4 (scratch runs, session 24); ``tests/test_optics.py`` checks
    the table against the PSF's own equivalent σ within 2 % there.
    """
    if setup.model in ("gaussian", "disc"):
        return _tan_half_angle(setup) / 2.0 / setup.pixel_um
    cos_a = math.cos(math.asin(min(setup.na / setup.ni, 0.999999)))
    return math.sqrt((1.0 / cos_a - 1.0) / 2.0) / setup.pixel_um


@functools.lru_cache(maxsize=64)
def _calibration_table(setup: OpticalSetup) -> tuple[np.ndarray, np.ndarray, float]:
    """(|defocus| grid µm, monotone σ px, slope px/µm beyond the grid)."""
    slope = _large_defocus_slope(setup)
    zmax = 20.0 / slope  # up to σ ≈ 20 px; the PSF is geometric beyond
    # denser near focus, where σ(dz) curves (the diffraction core): evenly spaced points were 1.07 µm apart at NA
    # 0.45 / 0.65 µm and read σ about 4 % high at 0.25 and 1.5 µm (scratch runs, session 24; tests/test_optics.py
    # checks 2 %). Far from focus σ is linear and wide steps interpolate exactly. (Where the PSF's default window
    # grows, σ steps — an Airy pattern's second moment grows with the window — and the table follows the step.)
    dz = zmax * np.linspace(0.0, 1.0, _N_TABLE) ** 2
    if setup.model == "gibson_lanni":
        # asymmetric with index mismatch: tabulate the mean of both signs
        s_pos = np.array([equivalent_sigma(p) for p in setup.psf_stack(dz)])
        s_neg = np.array([equivalent_sigma(p) for p in setup.psf_stack(-dz)])
        sig = 0.5 * (s_pos + s_neg)
    else:
        sig = np.array([equivalent_sigma(p) for p in setup.psf_stack(dz)])
    sig = np.maximum.accumulate(sig)
    sig = sig + np.arange(_N_TABLE) * 1e-9  # strictly increasing so the inverse is well defined
    dz.setflags(write=False)
    sig.setflags(write=False)
    return dz, sig, slope


def _as_float_array(name: str, value) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a real number or array, got {type(value).__name__}"
        ) from err
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return a


def sigma_from_defocus(defocus_um: float | np.ndarray, setup: OpticalSetup) -> float | np.ndarray:
    """Equivalent Gaussian σ (pixels) of ``setup``'s PSF at a defocus distance (µm).

    Tabulates :func:`equivalent_sigma` of ``setup.psf(dz)`` over ``|dz|`` (49 points up to σ ≈ 20 px, spaced
    quadratically: densest near focus; cached per setup), made monotone, and interpolates linearly; beyond the table
    it continues with the PSF's geometric slope: ``tan(asin(NA/ni)) / 2 / pixel_um`` for the ``gaussian`` and
    ``disc`` models (their paraxial blur circle), ``sqrt((1 / cos α - 1) / 2) / pixel_um`` for the wave models (the
    ray cone, which they approach). Symmetric in the sign of ``dz``.

    Parameters
    ----------
    defocus_um : float or array_like
        Defocus distances, µm.
    setup : OpticalSetup

    Returns
    -------
    sigma : float or ndarray
        Same shape as ``defocus_um``.

    Examples
    --------
    >>> s = OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65, model="gaussian")
    >>> round(float(sigma_from_defocus(10.0, s)), 2)
    3.89
    """
    if not isinstance(setup, OpticalSetup):
        raise TypeError(f"setup must be an OpticalSetup, got {type(setup).__name__}")
    dz = np.abs(_as_float_array("defocus_um", defocus_um))
    grid, sig, slope = _calibration_table(setup)
    out = np.interp(dz, grid, sig)
    beyond = dz > grid[-1]
    if np.any(beyond):
        out = np.where(beyond, sig[-1] + (dz - grid[-1]) * slope, out)
    return float(out) if out.ndim == 0 else out


def defocus_from_sigma(sigma_px: float | np.ndarray, setup: OpticalSetup) -> float | np.ndarray:
    """Inverse of :func:`sigma_from_defocus`: |defocus| (µm) whose equivalent σ is ``sigma_px``.

    σ below the in-focus σ of the setup maps to 0 µm.

    Parameters
    ----------
    sigma_px : float or array_like
        Equivalent Gaussian σ in pixels, ``>= 0``.
    setup : OpticalSetup

    Returns
    -------
    defocus_um : float or ndarray
        Non-negative distances, same shape as ``sigma_px``.

    Examples
    --------
    >>> s = OpticalSetup(na=0.45, wavelength_um=0.5, pixel_um=0.65, model="gaussian")
    >>> round(float(defocus_from_sigma(sigma_from_defocus(12.0, s), s)), 3)
    12.0
    """
    if not isinstance(setup, OpticalSetup):
        raise TypeError(f"setup must be an OpticalSetup, got {type(setup).__name__}")
    s = _as_float_array("sigma_px", sigma_px)
    if np.any(s < 0):
        raise ValueError("sigma_px must be >= 0")
    grid, sig, slope = _calibration_table(setup)
    out = np.interp(s, sig, grid)
    beyond = s > sig[-1]
    if np.any(beyond):
        out = np.where(beyond, grid[-1] + (s - sig[-1]) / slope, out)
    return float(out) if out.ndim == 0 else out
