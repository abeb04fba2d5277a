"""Synthetic data: fluorescent cell phantoms, dataset recipes, through-focus stacks, OME-Zarr datasets.

Examples
--------
>>> from napari_linblur.synth import cell_phantom, get_recipe, through_focus_stack
>>> r = get_recipe("bbbc006-like", shape=(64, 64), keep_even=True)
>>> through_focus_stack(cell_phantom(r.shape, rng=0), r, rng=0).shape
(2, 9, 64, 64)
"""

from __future__ import annotations

from .dataset import field_seed, synthesize_field, write_synthetic_dataset
from .phantoms import cell_phantom, content_from_image
from .recipes import ChannelSpec, Recipe, get_recipe, list_recipes
from .zstack import psfs_for, through_focus_stack

__all__ = [
    "ChannelSpec",
    "Recipe",
    "cell_phantom",
    "content_from_image",
    "field_seed",
    "get_recipe",
    "list_recipes",
    "psfs_for",
    "synthesize_field",
    "through_focus_stack",
    "write_synthetic_dataset",
]
