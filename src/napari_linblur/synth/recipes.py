"""Dataset recipes: optics, focal planes, camera and content of a synthetic through-focus dataset.

A :class:`Recipe` is a frozen dataclass that round-trips through a JSON dict (:meth:`Recipe.to_dict`,
:meth:`Recipe.from_dict`), so a dataset stores the exact recipe it was made from. Two recipes ship:

``bbbc006-like``
    20x / 0.45 air objective (``ni = 1.0``) on cells in medium (``ns = 1.33``), Gibson-Lanni vectorial PSF
    for emitters 2 µm deep, 0.65 µm pixels, 696 x 520 (X x Y) frames, two channels (``w1`` Hoechst,
    λ = 0.46 µm; ``w2`` phalloidin, λ = 0.52 µm), 17 planes: plane ``i`` at ``(16 - i) * 2`` µm, so plane 0
    is 32 µm out and plane 16 in focus. ``keep_even=True`` keeps the paper's 9 even planes (0, 2, ..., 16).
    Camera: gain 1 ADU/e⁻, offset 100 ADU, read noise 2 e⁻.
``training``
    The same structure with optics and camera drawn per field (:meth:`Recipe.realize`): NA 0.3-0.95,
    immersion air/water/oil with ``ni > NA``, specimen index 1.33-1.45, emitters 0-10 µm deep, λ 0.45-0.65
    µm, pixel 0.1-1.0 µm, PSF model (Gibson-Lanni vectorial or scalar, Born-Wolf, Gaussian), photons
    50-5000 per unit density (log-uniform), read noise 0.5-8 e⁻, gain 0.5-4; the 17 planes span from focus
    to the defocus whose geometric σ is 6-20 px, so every field covers a useful blur range.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..optics._rng import as_generator
from ..optics.psf import OpticalSetup

__all__ = ["ChannelSpec", "Recipe", "get_recipe", "list_recipes"]


@dataclass(frozen=True)
class ChannelSpec:
    """One fluorescence channel.

    Parameters
    ----------
    name : str
        Channel label (``'w1'``).
    wavelength_um : float
        Emission wavelength, µm.
    photons : float
        Expected photo-electrons per pixel for a unit fluorophore density in focus.
    """

    name: str
    wavelength_um: float
    photons: float

    def __post_init__(self) -> None:
        if not self.wavelength_um > 0 or not math.isfinite(self.wavelength_um):
            raise ValueError(f"wavelength_um must be > 0, got {self.wavelength_um!r}")
        if not self.photons > 0 or not math.isfinite(self.photons):
            raise ValueError(f"photons must be > 0, got {self.photons!r}")


def _bbbc_defocus(n: int = 17, step: float = 2.0) -> tuple[float, ...]:
    return tuple(float((n - 1 - i) * step) for i in range(n))


@dataclass(frozen=True)
class Recipe:
    """A synthetic through-focus dataset recipe (JSON serialisable).

    Parameters
    ----------
    name : str
        Recipe name.
    optics : OpticalSetup
        Objective, pixel and PSF model; its wavelength is replaced per channel.
    channels : tuple of ChannelSpec
        Channels in content order (``w1`` nuclei, ``w2`` actin for the phantoms).
    plane_defocus_um : tuple of float
        Defocus of every acquired plane, in acquisition order (plane 0 first).
    shape : (int, int)
        ``(Y, X)`` frame size.
    gain, offset, read_noise : float
        Camera: ADU per electron, pedestal (ADU), read noise (electrons).
    keep_even : bool
        Keep only even plane indices (the paper's 9 planes of BBBC006).
    n_cells : int or None
        Cells per field for the phantoms (None = density default).
    randomize : dict or None
        Ranges drawn per field by :meth:`realize` (see the ``training`` recipe); None = fixed recipe.

    Examples
    --------
    >>> r = get_recipe("bbbc006-like")
    >>> len(r.plane_defocus_um), r.planes[-1], r.defocus_um[-1]
    (17, 16, 0.0)
    >>> Recipe.from_dict(r.to_dict()) == r
    True
    """

    name: str
    optics: OpticalSetup
    channels: tuple[ChannelSpec, ...]
    plane_defocus_um: tuple[float, ...]
    shape: tuple[int, int] = (520, 696)
    gain: float = 1.0
    offset: float = 100.0
    read_noise: float = 2.0
    keep_even: bool = False
    n_cells: int | None = None
    randomize: dict[str, Any] | None = field(default=None, compare=True, hash=False)

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels must hold at least one ChannelSpec")
        if not self.plane_defocus_um:
            raise ValueError("plane_defocus_um must hold at least one plane")
        if len(self.shape) != 2 or min(self.shape) < 16:
            raise ValueError(f"shape must be (Y, X) with sides >= 16, got {self.shape!r}")
        for n in ("gain", "read_noise", "offset"):
            v = getattr(self, n)
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{n} must be a finite number >= 0, got {v!r}")

    # ----------------------------------------------------------------- derived
    @property
    def planes(self) -> tuple[int, ...]:
        """Indices of the planes kept (all, or the even ones with ``keep_even``)."""
        n = len(self.plane_defocus_um)
        return tuple(range(0, n, 2)) if self.keep_even else tuple(range(n))

    @property
    def defocus_um(self) -> tuple[float, ...]:
        """Defocus of the kept planes, µm."""
        return tuple(self.plane_defocus_um[i] for i in self.planes)

    @property
    def z_step_um(self) -> float:
        """Mean spacing of the kept planes (µm; 1.0 for a single plane)."""
        d = self.defocus_um
        return float(abs(d[-1] - d[0]) / (len(d) - 1)) if len(d) > 1 and d[-1] != d[0] else 1.0

    def setup(self, channel: int = 0) -> OpticalSetup:
        """The optical setup of one channel (its emission wavelength)."""
        return self.optics.replace(wavelength_um=self.channels[channel].wavelength_um)

    def replace(self, **changes) -> Recipe:
        """Copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (lists instead of tuples)."""
        return {
            "name": self.name,
            "optics": self.optics.to_dict(),
            "channels": [dataclasses.asdict(c) for c in self.channels],
            "plane_defocus_um": [float(v) for v in self.plane_defocus_um],
            "shape": [int(v) for v in self.shape],
            "gain": float(self.gain),
            "offset": float(self.offset),
            "read_noise": float(self.read_noise),
            "keep_even": bool(self.keep_even),
            "n_cells": self.n_cells,
            "randomize": None if self.randomize is None else _jsonable(self.randomize),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(d, dict):
            raise TypeError(f"recipe dict expected, got {type(d).__name__}")
        d = dict(d)
        d["optics"] = OpticalSetup.from_dict(d["optics"])
        d["channels"] = tuple(ChannelSpec(**c) for c in d["channels"])
        d["plane_defocus_um"] = tuple(float(v) for v in d["plane_defocus_um"])
        d["shape"] = tuple(int(v) for v in d["shape"])
        if d.get("randomize") is not None:
            d["randomize"] = _jsonable(d["randomize"])
        return cls(**d)

    # ----------------------------------------------------------------- randomization
    def realize(self, rng=None) -> Recipe:
        """A concrete recipe: ``self`` if fixed, else optics/camera/planes drawn from ``randomize``.

        Examples
        --------
        >>> r = get_recipe("training").realize(0)
        >>> r.randomize is None and 0.3 <= r.optics.na <= 0.95 and r.optics.na < r.optics.ni
        True
        """
        if self.randomize is None:
            return self
        gen = as_generator(rng)
        z = self.randomize

        def uni(key):
            lo, hi = z[key]
            return float(gen.uniform(lo, hi))

        def loguni(key):
            lo, hi = z[key]
            return float(np.exp(gen.uniform(np.log(lo), np.log(hi))))

        na = uni("na")
        ni_choices = [n for n in z["ni"] if n > na + 0.02]
        ni = float(ni_choices[int(gen.integers(len(ni_choices)))])
        ns = uni("ns")
        model, vectorial = z["models"][int(gen.integers(len(z["models"])))]
        optics = OpticalSetup(
            na=round(na, 4),
            wavelength_um=0.5,
            pixel_um=round(uni("pixel_um"), 4),
            ni=ni,
            ns=round(ns, 4),
            model=model,
            vectorial=bool(vectorial),
            depth_um=round(uni("depth_um"), 3),
            focus=self.optics.focus,
        )
        wl = sorted(uni("wavelength_um") for _ in self.channels)
        channels = tuple(
            ChannelSpec(c.name, round(w, 4), round(loguni("photons"), 2))
            for c, w in zip(self.channels, wl)
        )
        # planes: from the defocus whose geometric σ is max_sigma_px down to focus
        sigma_max = uni("max_sigma_px")
        tan = math.tan(math.asin(na / ni))
        zmax = 2.0 * sigma_max * optics.pixel_um / tan
        n = len(self.plane_defocus_um)
        planes = (
            tuple(round(float(zmax * (n - 1 - i) / (n - 1)), 4) for i in range(n))
            if n > 1
            else (0.0,)
        )
        return dataclasses.replace(
            self,
            optics=optics,
            channels=channels,
            plane_defocus_um=planes,
            gain=round(uni("gain"), 4),
            read_noise=round(uni("read_noise"), 4),
            randomize=None,
        )


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _bbbc006_like() -> Recipe:
    return Recipe(
        name="bbbc006-like",
        optics=OpticalSetup(
            na=0.45,
            wavelength_um=0.46,
            pixel_um=0.65,
            ni=1.0,
            ns=1.33,
            model="gibson_lanni",
            vectorial=True,
            depth_um=2.0,
        ),
        channels=(ChannelSpec("w1", 0.46, 1500.0), ChannelSpec("w2", 0.52, 800.0)),
        plane_defocus_um=_bbbc_defocus(),
        shape=(520, 696),
        gain=1.0,
        offset=100.0,
        read_noise=2.0,
    )


def _training() -> Recipe:
    base = _bbbc006_like()
    return base.replace(
        name="training",
        shape=(256, 256),
        randomize={
            "na": [0.3, 0.95],
            "ni": [1.0, 1.33, 1.515],
            "ns": [1.33, 1.45],
            "depth_um": [0.0, 10.0],
            "wavelength_um": [0.45, 0.65],
            "pixel_um": [0.1, 1.0],
            "models": [
                ["gibson_lanni", True],
                ["gibson_lanni", False],
                ["born_wolf", True],
                ["gaussian", False],
            ],
            "photons": [50.0, 5000.0],
            "read_noise": [0.5, 8.0],
            "gain": [0.5, 4.0],
            "max_sigma_px": [6.0, 20.0],
        },
    )


_RECIPES = {"bbbc006-like": _bbbc006_like, "training": _training}


def list_recipes() -> list[str]:
    """Names of the shipped recipes.

    Examples
    --------
    >>> list_recipes()
    ['bbbc006-like', 'training']
    """
    return sorted(_RECIPES)


def get_recipe(name: str | Recipe | dict, **changes) -> Recipe:
    """A shipped recipe by name (or a Recipe / recipe dict), optionally with fields changed.

    Examples
    --------
    >>> get_recipe("bbbc006-like", keep_even=True).defocus_um[:3]
    (32.0, 28.0, 24.0)
    """
    if isinstance(name, Recipe):
        r = name
    elif isinstance(name, dict):
        r = Recipe.from_dict(name)
    elif isinstance(name, str):
        if name not in _RECIPES:
            raise ValueError(f"recipe must be one of {list_recipes()}, got {name!r}")
        r = _RECIPES[name]()
    else:
        raise TypeError(f"recipe must be a name, a Recipe or a dict, got {type(name).__name__}")
    return r.replace(**changes) if changes else r
