"""How a defocus map is shown, wherever it comes from (the Defocus widget's preview and outputs, a map file
reopened by the reader): one colormap and fixed limits, so that a colour means the same σ in every layer.

No Qt here: the reader imports it.
"""

from __future__ import annotations

import numpy as np

COLORMAP = "magma"
#: top of the σ range the defocus models are trained on (px); every map is shown on 0 .. this (or its µm)
SIGMA_TOP = 10.0
#: the ``unit`` a defocus map's ``linblur`` attributes record (the widget's and ``linblur defocus-map``'s)
SIGMA_UNIT = "pixel (sigma of the equivalent Gaussian PSF)"
UM_UNIT = "micrometer (|defocus|, from sigma with the optics calibration)"


def map_limits(setup=None) -> tuple[float, float]:
    """Contrast limits of a defocus map: the trained range 0 – 10 px of σ, or, with the optics ``setup``, 0 up to
    the |defocus| in µm of σ = 10 px — the same colour means the same defocus on every plane and every output.

    Examples
    --------
    >>> map_limits()
    (0.0, 10.0)
    """
    if setup is None:
        return 0.0, SIGMA_TOP
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um

    top = float(np.asarray(sigma_to_defocus_um(np.array([SIGMA_TOP]), setup=setup)).ravel()[0])
    return 0.0, max(top, 1e-3)


def saved_map_display(described: dict | None) -> dict | None:
    """The layer options that show a saved defocus map as the widget showed it, from the file's ``linblur``
    attributes (``described``), or None when the file is not a defocus map (or its optics cannot be read, for a
    map in µm: then it is shown as an ordinary image).

    Examples
    --------
    >>> saved_map_display({"operation": "defocus-map", "unit": SIGMA_UNIT})
    {'colormap': 'magma', 'blending': 'translucent', 'contrast_limits': (0.0, 10.0)}
    >>> saved_map_display({"operation": "deblur"}) is None
    True
    """
    if not described or described.get("operation") != "defocus-map":
        return None
    unit = str(described.get("unit", ""))
    if unit == SIGMA_UNIT:
        limits = map_limits()
    elif unit == UM_UNIT:
        from napari_linblur.optics.psf import OpticalSetup

        try:
            limits = map_limits(OpticalSetup.from_dict(described["optics"]))
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
    else:
        return None
    return {"colormap": COLORMAP, "blending": "translucent", "contrast_limits": limits}
