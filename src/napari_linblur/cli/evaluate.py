"""``linblur evaluate {ae,deblur,defocus}`` — paper-style tables (Markdown + JSON) against baselines."""

from ._groups import register_group


def register(subparsers) -> None:
    register_group(
        subparsers,
        "evaluate",
        "evaluate models against baselines on held-out data; prints tables, writes JSON + Markdown",
        ["napari_linblur.cli.evaluate_ae", "napari_linblur.cli.evaluate_deblur", "napari_linblur.cli.evaluate_defocus"],
    )
