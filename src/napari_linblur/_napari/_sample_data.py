"""Sample data: a small seeded synthetic through-focus stack (two channels) and the real BBBC006 image.

* **Synthetic**: :func:`napari_linblur.synth.phantoms.cell_phantom` rendered by
  :func:`napari_linblur.synth.zstack.through_focus_stack` with the ``bbbc006-like`` recipe (Gibson-Lanni PSF,
  Poisson-Gaussian camera), its 9 even planes (32 µm above focus ... in focus, 4 µm apart), 256 x 256 px.
* **BBBC006**: the BBBC006v1 image in the folder named by the ``NAPARI_LINBLUR_DATA`` environment variable, or, in a
  source checkout, in ``<repo>/../shared/data`` (:func:`napari_linblur.io.bbbc006.find_bbbc006_image`). When it is not
  there, a ``FileNotFoundError`` says where it was looked for and how to get it; napari shows that as a notification.
"""

from __future__ import annotations

import numpy as np

SYNTH_SHAPE = (256, 256)
SYNTH_SEED = 2011


def synthetic_stack_data(shape: tuple[int, int] = SYNTH_SHAPE, seed: int = SYNTH_SEED):
    """The synthetic stack as ``(C, Z, Y, X)`` uint16 plus its recipe (deterministic in ``seed``).

    Examples
    --------
    >>> stack, recipe = synthetic_stack_data((64, 64), seed=1)
    >>> stack.shape, stack.dtype.name, len(recipe.defocus_um)
    ((2, 9, 64, 64), 'uint16', 9)
    """
    from napari_linblur.synth.phantoms import cell_phantom
    from napari_linblur.synth.recipes import get_recipe
    from napari_linblur.synth.zstack import through_focus_stack

    recipe = get_recipe("bbbc006-like", keep_even=True, shape=tuple(shape))
    rng = np.random.default_rng(seed)
    content = cell_phantom(tuple(shape), rng=rng)
    stack = through_focus_stack(content, recipe, rng=rng)
    return stack, recipe


def synthetic_stack() -> list[tuple]:
    """napari sample: both channels of the synthetic through-focus stack as separate layers."""
    stack, recipe = synthetic_stack_data()
    px = float(recipe.optics.pixel_um) if hasattr(recipe.optics, "pixel_um") else 0.65
    scale = (float(recipe.z_step_um), px, px)
    layers = []
    names = [getattr(ch, "name", f"w{i + 1}") for i, ch in enumerate(recipe.channels)]
    colors = ["cyan", "magenta"]
    for i in range(stack.shape[0]):
        data = stack[i]
        lo, hi = np.percentile(data, [0.1, 99.9])
        layers.append(
            (
                data,
                {
                    "name": f"synthetic [{names[i]}]",
                    "scale": scale,
                    "colormap": colors[i % 2],
                    "blending": "additive",
                    "contrast_limits": (float(lo), float(max(hi, lo + 1))),
                    "axis_labels": ("z", "y", "x"),
                    "units": ("micrometer",) * 3,
                    "metadata": {
                        "linblur_axes": "zyx",
                        "linblur_channel": names[i],
                        "linblur_recipe": recipe.to_dict(),
                        "linblur_seed": SYNTH_SEED,
                        "linblur_defocus_um": [float(d) for d in recipe.defocus_um],
                    },
                },
                "image",
            )
        )
    return layers


def bbbc006_image() -> list[tuple]:
    """napari sample: the real BBBC006 image (lazy, with its physical scale) via the plugin's reader."""
    from napari_linblur.io.bbbc006 import find_bbbc006_image, parse_bbbc006_name

    from ._reader import read_zstack

    path = find_bbbc006_image()
    rec = parse_bbbc006_name(path)
    z = f" z{rec.z:02d}" if rec.z is not None else ""
    out = []
    for data, kwargs, kind in read_zstack(str(path)):
        kwargs = dict(kwargs)
        kwargs["name"] = f"BBBC006 {rec.well} s{rec.site} {rec.channel}{z}"
        out.append((data, kwargs, kind))
    return out
