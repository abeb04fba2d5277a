"""Every Examples section of the library runs and shows what it prints (the napari layer, which needs a viewer,
is tested through real viewers elsewhere)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import napari_linblur

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(napari_linblur.__path__, "napari_linblur.")
    if "._napari" not in m.name and not m.name.endswith("__main__")
)


def test_the_library_has_examples_to_run():
    assert len(MODULES) > 20 and "napari_linblur.optics.psf" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_examples_in_docstrings(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (printed above)"
