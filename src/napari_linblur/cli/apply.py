"""Batch operations: ``linblur synthesize | deblur | defocus-map | focus`` over zarr/TIFF/BBBC006 inputs."""

from ._groups import register_members

MEMBERS = ["napari_linblur.cli.apply_latent", "napari_linblur.cli.apply_deblur", "napari_linblur.cli.apply_defocus"]


def register(subparsers) -> None:
    register_members(subparsers, MEMBERS)
