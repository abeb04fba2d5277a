"""napari-linblur: see what is out of focus in microscopy z-stacks, and fix it.

The public API (``../shared/SPEC.md`` §3) is imported lazily so that ``import napari_linblur`` is cheap and
pulls in neither torch nor napari until an operation that needs them is called.

Examples
--------
>>> import napari_linblur as nl
>>> nl.alpha_from_positions(0.0, 4.0, 8.0)
0.5
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "open_zstack": "napari_linblur.io.readers",
    "write_ome_zarr": "napari_linblur.io.omezarr",
    "load_model": "napari_linblur.models.registry",
    "list_models": "napari_linblur.models.registry",
    "synthesize_blur": "napari_linblur.inference.latent_ops",
    "deblur_pair": "napari_linblur.inference.latent_ops",
    "alpha_from_positions": "napari_linblur.inference.latent_ops",
    "deblur": "napari_linblur.inference.deblur_ops",
    "estimate_defocus": "napari_linblur.inference.defocus_ops",
    "focus_curve": "napari_linblur.inference.defocus_ops",
    "best_focus": "napari_linblur.inference.defocus_ops",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_linblur' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .inference.deblur_ops import deblur
    from .inference.defocus_ops import best_focus, estimate_defocus, focus_curve
    from .inference.latent_ops import alpha_from_positions, deblur_pair, synthesize_blur
    from .io.omezarr import write_ome_zarr
    from .io.readers import open_zstack
    from .models.registry import list_models, load_model
