"""``linblur train {ae,deblur,defocus}`` — every model trains through the one shared loop."""

from ._groups import register_group


def register(subparsers) -> None:
    register_group(
        subparsers,
        "train",
        "train a model (checkpoints, --resume, --seed, --device, --amp; multi-GPU with torchrun)",
        ["napari_linblur.cli.train_ae", "napari_linblur.cli.train_deblur", "napari_linblur.cli.train_defocus"],
    )
