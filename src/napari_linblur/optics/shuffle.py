"""Histogram-invariant spatial aliasing sampling (paper 001, §2.2): a random permutation of pixel positions.

Shuffling decouples every pixel from its neighbours, so any image -- even a blurred one -- becomes an
"all-in-focus" image with exactly the same histogram and a very large variance of the Laplacian. Blurring it
with a known defocus map then gives training pairs with exact per-pixel defocus labels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._rng import as_generator

__all__ = ["pixel_shuffle"]


def pixel_shuffle(
    image: ArrayLike, rng: int | np.random.Generator | None = None, *, channel_axis: int | None = None
) -> np.ndarray:
    """Randomly permute the pixel positions of ``image`` (same permutation for all channels).

    Parameters
    ----------
    image : array_like
        ``(Y, X)``, or with channels: ``(C, Y, X)`` (default for 3-D: leading axes are channels) or
        ``(Y, X, C)`` with ``channel_axis=-1``. A pixel's channel values move together, as in the paper.
    rng : numpy.random.Generator or int or None
        Random source / seed.
    channel_axis : int, optional
        Axis holding channels; ``None`` means every axis before the last two.

    Returns
    -------
    shuffled : ndarray
        Same shape and dtype; the multiset of pixel values (the histogram) is unchanged.

    Examples
    --------
    >>> img = np.arange(12).reshape(3, 4)
    >>> out = pixel_shuffle(img, 0)
    >>> bool(np.array_equal(np.sort(out, axis=None), np.sort(img, axis=None)))
    True
    """
    a = np.asarray(image)
    if a.ndim < 2:
        raise ValueError(f"image must have ndim >= 2, got ndim={a.ndim}")
    gen = as_generator(rng)
    if channel_axis is not None:
        if not -a.ndim <= channel_axis < a.ndim:
            raise ValueError(
                f"channel_axis must be a valid axis of image (ndim={a.ndim}), got {channel_axis}"
            )
        moved = np.moveaxis(a, channel_axis, 0)
        return np.moveaxis(pixel_shuffle(moved, gen), 0, channel_axis)
    lead = a.shape[:-2]
    flat = a.reshape(lead + (-1,))
    perm = gen.permutation(flat.shape[-1])
    return flat[..., perm].reshape(a.shape)
