"""Self-ensemble ("test-time augmentation") shared by every model's tiled inference.

A network is not exactly equivariant to flips and rotations, so averaging its outputs over transformed copies
of a tile (each transform undone on the output) partly averages out its errors. The three operations that use
it -- latent pair deblurring/synthesis, the defocus map and the deblurring network -- wrap their tile function
with :func:`self_ensemble`; the tiling path (:func:`~napari_linblur.inference.tiling.tiled_apply`) is unchanged.
Every output here is a per-pixel image (intensity or σ), so undoing a transform is the inverse transform.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["DIHEDRAL", "TTA_CHOICES", "check_tta", "self_ensemble"]

#: the 8 flips/rotations of a tile, ``(quarter turns, mirror)``, in the order ``tta`` takes them: 2 = identity and
#: mirror; 4 = all flips (adds the 180° rotation and its mirror); 8 = the whole dihedral group (adds transposes)
DIHEDRAL = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
TTA_CHOICES = (1, 2, 4, 8)


def check_tta(tta: Any) -> int:
    """Validate the self-ensemble size ``tta`` (1, 2, 4 or 8 flips/rotations averaged).

    Examples
    --------
    >>> check_tta(4)
    4
    """
    if isinstance(tta, bool) or not isinstance(tta, (numbers.Integral, np.integer)) or int(tta) not in TTA_CHOICES:
        raise ValueError(f"tta must be one of {TTA_CHOICES} (flips/rotations averaged; 1 = off), got {tta!r}")
    return int(tta)


def self_ensemble(fn: Callable, tta: int = 1) -> Callable:
    """Wrap a tile function ``fn(t) -> out`` (torch, ``(N, C, H, W)`` in and out, same ``H, W``).

    With ``tta > 1`` the result is the float32 mean over the first ``tta`` transforms of :data:`DIHEDRAL`,
    each undone on the output; ``tta == 1`` returns ``fn`` itself. Costs ``tta`` forward passes per tile. A
    quarter turn swaps a tile's height and width; the tiler pads both to the network's multiple, so any tile
    works.
    """
    import torch

    tta = check_tta(tta)
    if tta == 1:
        return fn

    def ensembled(t):
        acc = None
        for turns, mirror in DIHEDRAL[:tta]:
            u = torch.rot90(t.flip(-1) if mirror else t, turns, (-2, -1))
            o = torch.rot90(fn(u).float(), -turns, (-2, -1))
            o = o.flip(-1) if mirror else o
            acc = o if acc is None else acc + o
        return acc / tta

    return ensembled
