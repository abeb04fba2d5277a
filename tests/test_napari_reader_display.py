"""How the napari reader shows what a file holds: a saved defocus map as the Defocus widget shows maps (magma on the
fixed range 0 - 10 px of σ, or its µm, whatever the values), an RGB TIFF as red, green and blue channels.

Complements ``test_napari_io.py`` (a one-channel map in px and in µm, RGB TIFFs without Z) with maps of several
channels, µm maps in a real viewer, maps whose meaning cannot be read, and RGB stacks in a real viewer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_helpers import PLUGIN
from napari_linblur._napari import _reader
from napari_linblur._napari._maps import SIGMA_UNIT, UM_UNIT, map_limits
from napari_linblur.cli.main import main
from napari_linblur.io.omezarr import write_ome_zarr
from napari_linblur.optics.psf import OpticalSetup

#: the optics of the µm maps (as ``linblur defocus-map --um`` flags and as an OpticalSetup)
OPTICS_FLAGS = ["--na", "0.45", "--wavelength", "0.52", "--pixel-um", "0.65"]
OPTICS = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65)


def _cli_map(tmp_path: Path, name: str, image: np.ndarray, *flags: str, imagej_axes: str | None = None) -> Path:
    """``image`` saved as a TIFF, then its defocus map written by ``linblur defocus-map`` (shipped model, CPU)."""
    tif = tmp_path / f"{name}.tif"
    if imagej_axes:
        tifffile.imwrite(tif, image, imagej=True, metadata={"axes": imagej_axes})
    else:
        tifffile.imwrite(tif, image)
    out = tmp_path / f"{name}.ome.zarr"
    assert main(["defocus-map", str(tif), str(out), "--device", "cpu", "--no-progress", *flags]) == 0
    return out


def _cells(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return (rng.random(shape) * 1000).astype(np.uint16)


def test_a_two_channel_defocus_map_reopens_in_magma_per_channel(viewer, tmp_path, capsys):
    """Each channel of a two-channel map is its own magma layer on 0 - 10 px, drawn translucent (not green and
    magenta, additive, with limits estimated from each channel's values), in the reader's output and in a viewer."""
    out = _cli_map(tmp_path, "two", _cells(np.random.default_rng(1), (2, 2, 64, 64)), imagej_axes="ZCYX")
    capsys.readouterr()
    layers = _reader.read_zstack(str(out))
    assert len(layers) == 2
    for _, kw, _ in layers:
        assert (kw["colormap"], kw["blending"]) == ("magma", "translucent"), kw["name"]
        assert tuple(kw["contrast_limits"]) == (0.0, 10.0), kw["name"]
        assert kw["metadata"]["linblur_attrs"]["unit"] == SIGMA_UNIT
    opened = viewer.open(str(out), plugin=PLUGIN)
    assert len(opened) == 2
    for layer in opened:
        assert layer.colormap.name == "magma" and layer.blending == "translucent", layer.name
        assert tuple(layer.contrast_limits) == (0.0, 10.0), layer.name


def test_a_um_defocus_map_reopens_on_the_widgets_um_range(viewer, tmp_path, capsys):
    """A map of |defocus| in µm opens in a viewer on 0 up to the µm of σ = 10 px for the file's optics: the range
    the Defocus widget gives its µm maps (``map_limits``), not one estimated from the values."""
    out = _cli_map(tmp_path, "um", _cells(np.random.default_rng(2), (2, 64, 64)), "--um", *OPTICS_FLAGS)
    capsys.readouterr()
    lo, hi = map_limits(OPTICS)
    assert lo == 0.0 and hi > 1.0
    layer, = viewer.open(str(out), plugin=PLUGIN)
    assert layer.colormap.name == "magma" and layer.blending == "translucent"
    assert tuple(layer.contrast_limits) == pytest.approx((lo, hi))
    assert layer.metadata["linblur_attrs"]["unit"] == UM_UNIT


@pytest.mark.parametrize("attrs, shown_as_map", [
    ({"operation": "defocus-map", "unit": SIGMA_UNIT}, True),
    ({"operation": "defocus-map", "unit": UM_UNIT, "optics": OPTICS.to_dict()}, True),
    # a µm map whose optics are missing: its µm range is unknown, so it stays an ordinary image
    ({"operation": "defocus-map", "unit": UM_UNIT}, False),
    ({"operation": "defocus-map", "unit": "furlongs"}, False),
    ({"operation": "deblur", "unit": SIGMA_UNIT}, False),
    (None, False),
], ids=["px-map", "um-map", "um-map-without-optics", "unknown-unit", "deblur-output", "no-attributes"])
def test_only_a_readable_defocus_map_gets_the_map_display(tmp_path, attrs, shown_as_map):
    """The map display follows the file's ``linblur`` attributes (as the widget's OME-Zarr output writes them):
    maps whose unit the reader knows are magma on fixed limits; every other file keeps gray and estimated limits."""
    values = np.linspace(3.0, 7.0, 2 * 32 * 32, dtype=np.float32).reshape(2, 32, 32)
    p = write_ome_zarr(tmp_path / "m.ome.zarr", values, axes="zyx",
                       attrs={"linblur": attrs} if attrs is not None else None)
    (_, kw, _), = _reader.read_zstack(str(p))
    if shown_as_map:
        expected = map_limits(OPTICS) if attrs["unit"] == UM_UNIT else (0.0, 10.0)
        assert (kw["colormap"], kw["blending"]) == ("magma", "translucent")
        assert tuple(kw["contrast_limits"]) == pytest.approx(expected)
    else:
        assert (kw["colormap"], kw["blending"]) == ("gray", "translucent")
        lo, hi = kw["contrast_limits"]
        assert 3.0 <= lo < hi <= 7.0  # from the values


@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
def test_an_rgb_stack_opens_as_red_green_blue_in_a_viewer(viewer, tmp_path, kind):
    """An RGB TIFF stack (Z planes of three RGB samples; plain, ImageJ or OME-TIFF) opens in a viewer as three
    additive layers coloured red, green and blue (they were green, magenta and cyan)."""
    rgb = (np.random.default_rng(3).random((3, 24, 32, 3)) * 255).astype(np.uint8)
    path = tmp_path / ("rgb.ome.tif" if kind == "ome" else "rgb.tif")
    options = {"plain": {}, "imagej": {"imagej": True, "metadata": {"axes": "ZYXS"}},
               "ome": {"metadata": {"axes": "ZYXS"}}}[kind]
    tifffile.imwrite(path, rgb, photometric="rgb", **options)
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [ly.colormap.name for ly in layers] == ["red", "green", "blue"]
    assert [ly.blending for ly in layers] == ["additive"] * 3
    assert [ly.name for ly in layers] == ["rgb [red]", "rgb [green]", "rgb [blue]"]
    for k, layer in enumerate(layers):
        np.testing.assert_array_equal(np.asarray(layer.data), rgb[..., k])


def test_three_channels_that_are_not_rgb_keep_the_channel_colours(tmp_path):
    """Three fluorescence channels (an ImageJ hyperstack, grey samples) are not RGB: green, magenta, cyan, additive."""
    stack = (np.random.default_rng(4).random((2, 3, 24, 32)) * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "three.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    layers = _reader.read_zstack(str(tmp_path / "three.tif"))
    assert [kw["colormap"] for _, kw, _ in layers] == ["green", "magenta", "cyan"]
    assert [kw["blending"] for _, kw, _ in layers] == ["additive"] * 3
