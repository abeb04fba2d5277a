"""The Defocus widget's per-tile map (``estimate_defocus(mode="patch")``) in a real napari viewer (run under Xvfb),
with the shipped ``defocus-default`` on the CPU: live map, whole-stack run, and back to the per-pixel map."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import napari_linblur as nl
from napari_helpers import TILE, add, settle, wait_run

PATCH = 32


@pytest.fixture(autouse=True)
def _shipped_on_cpu(viewer):
    from napari_linblur.models.registry import list_models

    if "defocus-default" not in list_models():
        pytest.skip("defocus-default is not shipped in this checkout")
    from napari_linblur._napari._settings import get_settings, set_setting

    assert set_setting("inference", "device", "cpu") and get_settings().device == "cpu"


def blobs(seed: int, shift: int = 0) -> np.ndarray:
    """128² fluorescence-like plane: five Gaussian blobs on an empty, dim background, with Poisson noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:128, :128]
    img = np.zeros((128, 128))
    for cy, cx in [(20, 24), (40, 50), (28, 80), (90, 30), (100, 100)]:
        img += 400 * np.exp(-((yy - cy) ** 2 + (xx - cx - shift) ** 2) / (2 * 3.0 ** 2))
    return rng.poisson(img + 5).astype(np.uint16)


def expected(img: np.ndarray, **kw) -> np.ndarray:
    """What the widget computes (plugin tile setting, CPU); the plane is smaller than the tile (no seams)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nl.estimate_defocus(img, device="cpu", tile=TILE, **kw)


def choose(combo, data) -> None:
    combo.setCurrentIndex(combo.findData(data))


def test_live_tile_map_matches_the_library_and_back_to_pixels(viewer, qtbot):
    img = blobs(0)
    viewer.add_image(img, name="cells")
    w = add(viewer, "Defocus map & focus QC")
    settle(qtbot, w, timeout=60000)
    pixel_map = viewer.layers["defocus σ[cells] (preview)"].data.copy()
    assert not w.patch_size.isVisible() and w.patch_size.value() == 64 and w.patch_size.minimum() == 8

    choose(w.map_mode, "patch")
    w.patch_size.setValue(PATCH)
    settle(qtbot, w, timeout=60000)
    name = f"defocus σ ({PATCH} px tiles, signal pixels)[cells] (preview)"
    prev = viewer.layers[name]
    want = expected(img, mode="patch", patch_size=PATCH, patch_pixels="signal")
    np.testing.assert_allclose(prev.data, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert np.isnan(prev.data).any() and np.isfinite(prev.data).any()  # empty background tiles are NaN
    assert np.isnan(prev.data[:64, 96:]).all()  # tiles with no blob
    assert prev.metadata["linblur_map"] == "tile" and prev.metadata["linblur_tile_size"] == PATCH
    assert prev.metadata["linblur_tile_pixels"] == "signal"
    lo, hi = prev.contrast_limits
    assert np.isfinite([lo, hi]).all() and hi > lo
    assert "defocus σ[cells] (preview)" not in viewer.layers  # one live map, renamed

    choose(w.patch_pixels, "all")
    settle(qtbot, w, timeout=60000)
    prev = viewer.layers[f"defocus σ ({PATCH} px tiles, all pixels)[cells] (preview)"]
    np.testing.assert_allclose(prev.data, expected(img, mode="patch", patch_size=PATCH, patch_pixels="all"),
                               rtol=1e-5, atol=1e-5)
    assert np.isfinite(prev.data).all() and prev.metadata["linblur_tile_pixels"] == "all"

    choose(w.map_mode, "pixel")  # back to the per-pixel map: as before
    settle(qtbot, w, timeout=60000)
    prev = viewer.layers["defocus σ[cells] (preview)"]
    np.testing.assert_allclose(prev.data, pixel_map, rtol=1e-5, atol=1e-5)
    assert prev.metadata["linblur_map"] == "pixel" and "linblur_tile_size" not in prev.metadata
    assert not w.patch_size.isVisible()


def test_tile_map_of_a_constant_plane_is_nan_and_shown(viewer, qtbot):
    viewer.add_image(np.full((64, 64), 100, np.uint16), name="flat")
    w = add(viewer, "Defocus map & focus QC")
    choose(w.map_mode, "patch")
    settle(qtbot, w, timeout=60000)
    prev = viewer.layers["defocus σ (64 px tiles, signal pixels)[flat] (preview)"]
    assert np.isnan(prev.data).all()
    lo, hi = prev.contrast_limits
    assert np.isfinite([lo, hi]).all() and hi > lo


def test_whole_stack_tile_map(viewer, qtbot, tmp_path):
    stack = np.stack([blobs(1), blobs(2, shift=6)])
    viewer.add_image(stack, name="zs")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    choose(w.map_mode, "patch")
    w.patch_size.setValue(PATCH)
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    out = viewer.layers[f"defocus σ ({PATCH} px tiles, signal pixels)[zs]"]
    assert out.data.shape == stack.shape
    for z in range(2):
        want = expected(stack[z], mode="patch", patch_size=PATCH, patch_pixels="signal")
        np.testing.assert_allclose(out.data[z], want, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert np.isnan(out.data[z]).any()
    assert out.metadata["linblur_map"] == "tile" and out.metadata["linblur_tile_size"] == PATCH
    assert out.metadata["linblur_tile_pixels"] == "signal"
    lo, hi = out.contrast_limits
    assert np.isfinite([lo, hi]).all() and hi > lo

    # the same tile map as a lazy layer and as an OME-Zarr file (the tile options recorded with it)
    w.output.set_mode(w.output.LAZY)
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    lazy = viewer.layers[-1]
    assert type(lazy.data).__module__.startswith("dask") and lazy.name.startswith(out.name)
    assert lazy.metadata["linblur_map"] == "tile"
    np.testing.assert_allclose(np.asarray(lazy.data[1]), out.data[1], rtol=1e-5, atol=1e-5, equal_nan=True)

    import zarr

    target = tmp_path / "tiles.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    attrs = zarr.open_group(str(target), mode="r").attrs.asdict()["linblur"]
    assert attrs["mode"] == "patch" and attrs["patch_size"] == PATCH and attrs["patch_pixels"] == "signal"
    written = viewer.layers[-1]
    assert written.name.startswith(out.name) and written.metadata["linblur_tile_size"] == PATCH
    full = written.data[0] if written.multiscale else written.data  # level 0 of a pyramid
    np.testing.assert_allclose(np.asarray(full[0]), out.data[0], rtol=1e-5, atol=1e-5, equal_nan=True)
    lo, hi = written.contrast_limits
    assert np.isfinite([lo, hi]).all() and hi > lo
