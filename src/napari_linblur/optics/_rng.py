"""Seed handling shared by the optics and synth modules."""

from __future__ import annotations

import numpy as np


def as_generator(rng, name: str = "rng") -> np.random.Generator:
    """``numpy.random.Generator`` from a Generator, an int seed, a ``SeedSequence`` or None (fresh entropy).

    Examples
    --------
    >>> bool(as_generator(0).integers(10) == as_generator(0).integers(10))
    True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or (
        isinstance(rng, (int, np.integer, np.random.SeedSequence)) and not isinstance(rng, bool)
    ):
        return np.random.default_rng(rng)
    raise TypeError(
        f"{name} must be a numpy Generator, an int seed or None, got {type(rng).__name__}"
    )
