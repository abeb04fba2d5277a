"""Batch operations: ``linblur synthesize | deblur | defocus-map | focus`` over zarr/TIFF/BBBC006 inputs."""

from __future__ import annotations

import importlib

MEMBERS = ["napari_linblur.cli.apply_latent", "napari_linblur.cli.apply_deblur", "napari_linblur.cli.apply_defocus"]


def register(subparsers) -> None:
    for module_name in MEMBERS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        module.register(subparsers)
