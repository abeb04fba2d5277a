"""napari plugin: manifest, reader, writer, sample data and settings (the reader of a huge stack is checked in
a real viewer under Xvfb)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from napari_linblur._napari import _reader, _sample_data, _writer
from napari_linblur.io import bbbc006
from napari_linblur.io.omezarr import write_ome_zarr
from napari_linblur.io.readers import open_zstack_with_metadata

WIDGETS = ["Blur synthesis", "Deblur", "Defocus map & focus QC", "Train"]


def test_manifest_contributions():
    from npe2 import PluginManager

    pm = PluginManager()
    pm.discover()
    mf = pm.get_manifest("napari-linblur")
    c = mf.contributions
    assert sorted(w.display_name for w in c.widgets) == sorted(WIDGETS)
    cmd = {w.display_name: w.command for w in c.widgets}
    filt = [m.command for m in c.menus["napari/layers/filter"]]
    meas = [m.command for m in c.menus["napari/layers/measure"]]
    assert cmd["Blur synthesis"] in filt and cmd["Deblur"] in filt
    assert cmd["Defocus map & focus QC"] in meas
    assert {s.key for s in c.sample_data} == {"synthetic_stack", "bbbc006"}
    # napari lists samples under the plugin's name (File > Open Sample > napari-linblur): the names the guide uses
    assert {s.display_name for s in c.sample_data} == {"Synthetic through-focus stack", "BBBC006 image"}
    assert c.readers and c.writers
    assert set(c.configurations) == {"inference", "models"}


def test_reader_ome_zarr_channels_are_lazy_layers(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (2, 5, 48, 64), dtype=np.uint16)
    p = write_ome_zarr(tmp_path / "s.ome.zarr", data, axes="czyx", scale=(1.0, 2.0, 0.65, 0.65),
                       channel_names=["w1", "w2"])
    reader = _reader.napari_get_reader(str(p))
    assert reader is not None
    layers = reader(str(p))
    assert [kw["name"] for _, kw, _ in layers] == ["s [w1]", "s [w2]"]
    for i, (arr, kw, kind) in enumerate(layers):
        assert kind == "image"
        assert type(arr).__module__.startswith("dask")  # lazy
        assert arr.shape == (5, 48, 64)
        np.testing.assert_array_equal(np.asarray(arr), data[i])
        assert kw["scale"] == [2.0, 0.65, 0.65]
        lo, hi = kw["contrast_limits"]
        assert 0 <= lo < hi <= 4000
        assert kw["metadata"]["linblur_source"] == str(p.resolve())


def test_reader_tiff_stack_and_bbbc006_file(tmp_path):
    stack = np.arange(3 * 16 * 24, dtype=np.uint16).reshape(3, 16, 24)
    t = tmp_path / "stack.tif"
    tifffile.imwrite(t, stack, imagej=True, metadata={"axes": "ZYX"})
    (arr, kw, _), = _reader.read_zstack(str(t))
    np.testing.assert_array_equal(np.asarray(arr), stack)
    assert kw["name"] == "stack"
    assert _reader.napari_get_reader(str(tmp_path / "nope.png")) is None
    (tmp_path / "empty.zarr").mkdir()
    assert _reader.napari_get_reader(str(tmp_path / "empty.zarr")) is None  # not claimed, then failing
    assert _reader.napari_get_reader([str(t), str(t)]) is None
    # a TIFF named otherwise, and a folder of TIFFs named .zarr, open as the command line opens them
    import shutil

    odd = tmp_path / "stack.zarr"
    shutil.copy(t, odd)
    (arr, _, _), = _reader.napari_get_reader(str(odd))(str(odd))
    np.testing.assert_array_equal(np.asarray(arr), stack)
    folder = tmp_path / "planes.zarr"
    folder.mkdir()
    for z in range(3):
        tifffile.imwrite(folder / f"p{z}.tif", stack[z])
    (arr, _, _), = _reader.napari_get_reader(str(folder))(str(folder))
    np.testing.assert_array_equal(np.asarray(arr), stack)
    try:
        bb = bbbc006.find_bbbc006_image()
    except FileNotFoundError:
        pytest.skip("BBBC006 sample image not present")
    (arr, kw, _), = _reader.read_zstack(str(bb))
    assert arr.shape == (1, 520, 696) and arr.dtype == np.uint16
    assert kw["scale"] == [2.0, 0.65, 0.65]


def test_writer_round_trip_and_refuses_its_input(tmp_path):
    data = np.random.default_rng(1).random((4, 32, 40)).astype(np.float32)
    out = _writer.write_single_image(str(tmp_path / "out"), data, {"scale": [2.0, 0.5, 0.5], "name": "img"})
    assert out == [str(tmp_path / "out.ome.zarr")]
    arr, meta = open_zstack_with_metadata(out[0])
    np.testing.assert_array_equal(np.asarray(arr), data)
    assert meta.scale == (2.0, 0.5, 0.5) and meta.axes == "zyx"
    # a layer read from out.ome.zarr cannot be saved over it; the input is left intact
    (lazy, kw, _), = _reader.read_zstack(out[0])
    with pytest.raises(_writer.LayerWriteError, match="refusing to overwrite its own input"):
        _writer.write_single_image(out[0], np.asarray(lazy) * 2, kw)
    np.testing.assert_array_equal(np.asarray(open_zstack_with_metadata(out[0])[0]), data)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_a_2d_image_reopens_as_a_2d_layer(tmp_path):
    """A file without a Z axis (a 2-D layer saved by the writer, a single-plane TIFF) opens as (Y, X), without the
    length-1 Z axis the library's readers add (whose 'pixel' unit napari would also mix with the others)."""
    plane = np.random.default_rng(2).random((24, 32)).astype(np.float32)
    out = _writer.write_single_image(str(tmp_path / "plain"), plane, {"scale": [0.5, 0.5], "name": "plain",
                                                                      "units": ["µm", "µm"]})
    tifffile.imwrite(tmp_path / "plain.tif", plane)
    for path in (out[0], str(tmp_path / "plain.tif")):
        (arr, kw, _), = _reader.read_zstack(path)
        assert arr.shape == plane.shape and kw["metadata"]["linblur_axes"] == "yx"
        assert len(kw["scale"]) == len(kw["units"]) == len(kw["axis_labels"]) == len(kw["translate"]) == 2
        np.testing.assert_array_equal(np.asarray(arr), plane)
    assert _reader.read_zstack(out[0])[0][1]["scale"] == [0.5, 0.5]


def test_writer_multiple_layers_as_channels(tmp_path):
    a = np.zeros((3, 16, 16), np.uint16)
    b = np.full((3, 16, 16), 7, np.uint16)
    out = _writer.write_multiple(str(tmp_path / "two.zarr"), [(a, {"name": "w1", "scale": [2, 1, 1]}, "image"),
                                                             (b, {"name": "w2", "scale": [2, 1, 1]}, "image")])
    arr, meta = open_zstack_with_metadata(out[0])
    assert meta.axes == "czyx" and meta.channel_names == ["w1", "w2"]
    assert int(np.asarray(arr[1]).max()) == 7
    # the wells/sites and BBBC006 plane numbers the layers were read with are kept, as when saving one layer
    # (they were dropped: `linblur focus` on the file then said p0, p1 instead of the wells)
    md = {"linblur_fields": ["k06_s1", "k06_s2"], "linblur_planes": [14, 15, 16], "linblur_axes": "pzyx"}
    plate = np.zeros((2, 3, 16, 16), np.uint16)
    out = _writer.write_multiple(str(tmp_path / "plate.zarr"), [
        (plate, {"name": "w1", "scale": [1, 2, 1, 1], "metadata": md}, "image"),
        (plate + 1, {"name": "w2", "scale": [1, 2, 1, 1], "metadata": dict(md)}, "image")])
    meta = open_zstack_with_metadata(out[0])[1]
    assert meta.axes == "pczyx" and meta.extra["fields"] == ["k06_s1", "k06_s2"]
    assert meta.extra["planes"] == [14, 15, 16]
    with pytest.raises(_writer.LayerWriteError, match="different shapes"):
        _writer.write_multiple(str(tmp_path / "bad.zarr"), [(a, {"name": "a"}, "image"),
                                                            (b[:, :8], {"name": "b"}, "image")])
    # what the values are (two channels of one σ map) is kept, as when saving one layer; the writer's own marker
    # (writer, version) stays beside the layers' notes
    what = {"operation": "defocus-map", "unit": "px"}
    maps = [(np.ones((3, 16, 16), np.float32) * i, {"name": f"m{i}", "metadata": {"linblur_attrs": dict(what)}},
             "image") for i in (1, 2)]
    out = _writer.write_multiple(str(tmp_path / "maps.zarr"), maps)
    attrs = open_zstack_with_metadata(out[0])[1].extra["ngff"]
    assert attrs["linblur"] == what and attrs["napari_linblur"]["writer"] == "write_ome_zarr"
    assert attrs["napari_linblur"]["layers"] == ["m1", "m2"]
    # a 4-D layer whose axes nothing names: a custom leading axis, not a guessed time axis
    out = _writer.write_single_image(str(tmp_path / "four"), np.zeros((2, 3, 16, 16), np.uint16), {"name": "x"})
    axes = open_zstack_with_metadata(out[0])[1].extra["ngff"]["ome"]["multiscales"][0]["axes"]
    assert axes[0] == {"name": "a"} and all(a.get("type") != "time" for a in axes)
    # read back (its custom axis as '?') and saved again: the same axes (a '?' was refused as an axis letter)
    (data, kw, _), = _reader.read_zstack(out[0])
    again = _writer.write_single_image(str(tmp_path / "four-again"), np.asarray(data), kw)
    axes2 = open_zstack_with_metadata(again[0])[1].extra["ngff"]["ome"]["multiscales"][0]["axes"]
    assert [a["name"] for a in axes2] == ["a", "z", "y", "x"]
    # plane numbers of a layer saved reversed: the writer's own record, not the source file's stale one
    md = {"linblur_attrs": {"operation": "defocus-map", "planes": [14, 15, 16]}, "linblur_planes": [16, 15, 14],
          "linblur_axes": "zyx"}
    out = _writer.write_single_image(str(tmp_path / "flipped"), np.zeros((3, 16, 16), np.float32),
                                     {"name": "m", "metadata": md})
    back = open_zstack_with_metadata(out[0])[1]
    assert back.extra["planes"] == [16, 15, 14] and "planes" not in back.extra["ngff"]["linblur"]


def test_synthetic_sample_is_seeded_two_channels():
    s1, recipe = _sample_data.synthetic_stack_data((48, 48), seed=3)
    s2, _ = _sample_data.synthetic_stack_data((48, 48), seed=3)
    assert s1.shape == (2, 9, 48, 48) and s1.dtype == np.uint16
    np.testing.assert_array_equal(s1, s2)
    # plane 0 is 32 um out of focus, the last plane in focus: the in-focus plane has more detail
    lap = [np.abs(np.diff(s1[0, z].astype(float), axis=0)).mean() for z in (0, 8)]
    assert lap[1] > lap[0]
    assert recipe.defocus_um[0] == 32.0 and recipe.defocus_um[-1] == 0.0


def test_bbbc006_sample_missing_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(bbbc006, "data_dirs", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match="BBBC006 sample image not found; looked in"):
        _sample_data.bbbc006_image()


def test_settings_defaults(isolated_plugin_settings):
    from napari_linblur._napari._settings import get_settings, set_setting

    s = get_settings()
    assert (s.device, s.tile_size) == ("auto", 0) and s.model_for("defocus") is None
    assert set_setting("inference", "tile_size", 128)
    assert get_settings().tile_size == 128


def test_reader_bbbc006_folder_channels_become_layers(tmp_path):
    import shutil

    try:
        src = bbbc006.find_bbbc006_image()
    except FileNotFoundError:
        pytest.skip("BBBC006 sample image not present")
    uuid = "2667264a-6432-4f7e-bf58-625a1319a1c9"
    for z in (0, 1):
        for ch in (1, 2):
            shutil.copy(src, tmp_path / f"{z:02d}_mcf-z-stacks-03212011_k06_s2_w{ch}{uuid}.tif")
    reader = _reader.napari_get_reader(str(tmp_path))
    assert reader is not None
    layers = reader(str(tmp_path))
    names = [kw["name"] for _, kw, _ in layers]
    assert len(layers) == 2 and names[0].endswith("[w1]") and names[1].endswith("[w2]")
    arr, kw, _ = layers[0]
    assert arr.shape == (1, 2, 520, 696)  # positions, Z, Y, X; lazy
    assert type(arr).__module__.startswith("dask")
    assert kw["scale"] == [1.0, 2.0, 0.65, 0.65]
    assert kw["metadata"]["linblur_axes"] == "pzyx"


def test_writer_saves_a_multiscale_layer_at_full_resolution(viewer, tmp_path):
    """napari hands the writer a multiscale layer's data as a ``MultiScaleData`` (not a list): both writers save
    its level 0 (full resolution, with level 0's pixel size; the writer builds its own pyramid)."""
    from napari_helpers import PLUGIN

    rng = np.random.default_rng(4)
    full = (rng.random((2, 64, 64)) * 1000).astype(np.float32)
    ms = viewer.add_image([full, full[:, ::2, ::2]], multiscale=True, name="pyr", scale=(2.0, 0.5, 0.5))
    other = viewer.add_image((rng.random((2, 64, 64)) * 1000).astype(np.float32), name="other",
                             scale=(2.0, 0.5, 0.5))
    viewer.layers.selection = {ms}
    one = viewer.layers.save(str(tmp_path / "one.ome.zarr"), selected=True, plugin=PLUGIN)
    arr, meta = open_zstack_with_metadata(one[0])
    assert arr.shape == full.shape and meta.scale == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(arr), full)
    viewer.layers.selection = {ms, other}
    two = viewer.layers.save(str(tmp_path / "two.ome.zarr"), selected=True, plugin=PLUGIN)
    arr2, meta2 = open_zstack_with_metadata(two[0])
    assert meta2.axes == "czyx" and arr2.shape == (2, *full.shape)
    np.testing.assert_array_equal(np.asarray(arr2[meta2.channel_names.index("pyr")]), full)
    np.testing.assert_array_equal(np.asarray(arr2[meta2.channel_names.index("other")]), other.data)


def test_a_layer_flipped_by_a_negative_scale_reopens_where_it_was(viewer, tmp_path):
    """The writer stored |scale| with the same translation, so a stack napari showed flipped (scale -4 along Z)
    reopened upside down; it is now stored reversed with the translation of its far end."""
    from napari_helpers import PLUGIN

    data = np.arange(9 * 8 * 8, dtype=np.float32).reshape(9, 8, 8)
    layer = viewer.add_image(data, name="flipz", scale=(-4.0, 0.5, 0.5), translate=(40.0, 0.0, 0.0))
    viewer.layers.selection = {layer}
    path = viewer.layers.save(str(tmp_path / "flip.ome.zarr"), selected=True, plugin=PLUGIN)[0]
    (back,) = viewer.open(path, plugin=PLUGIN)
    assert tuple(back.scale) == (4.0, 0.5, 0.5) and tuple(back.translate) == (8.0, 0.0, 0.0)
    for z in (0, 8):  # every plane at the world position the flipped layer showed it
        world = layer.data_to_world((z, 0, 0))[0]
        index = int(round(back.world_to_data((world, 0, 0))[0]))
        np.testing.assert_array_equal(np.asarray(back.data[index]), data[z])


def test_writer_refuses_a_file_another_open_layer_reads(viewer, tmp_path):
    """Saving layer B onto (or into) the file open layer A is read from would silently change A: refused, naming
    A; once A is closed the file can be replaced."""
    from napari_helpers import PLUGIN

    path = tmp_path / "a.ome.zarr"
    _writer.write_single_image(str(path), np.full((3, 32, 32), 5.0, np.float32), {"name": "a"})
    a = viewer.open(str(path), plugin=PLUGIN)[0]
    b = viewer.add_image(np.full((3, 32, 32), 9.0, np.float32), name="b")
    viewer.layers.selection = {b}
    for target in (path, path / "inside.ome.zarr"):
        with pytest.raises(OSError, match="is read by the open layer 'a'"):
            viewer.layers.save(str(target), selected=True, plugin=PLUGIN)
    assert float(np.asarray(a.data).mean()) == 5.0
    viewer.layers.selection = {a, b}  # A among the layers written: its own input
    with pytest.raises(OSError, match="refusing to overwrite its own input"):
        viewer.layers.save(str(path), selected=True, plugin=PLUGIN)
    assert float(np.asarray(a.data).mean()) == 5.0
    viewer.layers.remove(a)
    viewer.layers.selection = {b}
    assert viewer.layers.save(str(path), selected=True, plugin=PLUGIN) == [str(path)]
    assert float(np.asarray(open_zstack_with_metadata(path)[0]).mean()) == 9.0


def test_reader_opens_the_root_of_a_synthetic_dataset_as_fields(viewer, tmp_path):
    """The root of a ``linblur synth`` dataset (one group per field) opens like a BBBC006 folder: one lazy
    (P, Z, Y, X) layer per channel, the fields stacked along P, with the fields' pixel size and units."""
    from napari_helpers import PLUGIN
    from napari_linblur.io.readers import open_zstacks
    from napari_linblur.synth import get_recipe, write_synthetic_dataset

    root = write_synthetic_dataset(tmp_path / "d.zarr", get_recipe("training", shape=(32, 32)), fields=2,
                                   progress=False)
    assert _reader.napari_get_reader(str(root)) is _reader.read_zstack
    fields = [np.asarray(f) for f in open_zstacks(root)]  # (C, Z, Y, X) each
    _, field_meta = open_zstack_with_metadata(root / "field_000")
    layers = _reader.read_zstack(str(root))
    assert [kw["name"] for _, kw, _ in layers] == ["d [w1]", "d [w2]"]
    for c, (arr, kw, kind) in enumerate(layers):
        assert kind == "image" and type(arr).__module__.startswith("dask")
        assert arr.shape == (2, *fields[0].shape[1:])
        np.testing.assert_array_equal(np.asarray(arr), np.stack([f[c] for f in fields]))
        assert kw["scale"] == [1.0, *field_meta.scale[1:]]
        assert kw["units"] == ["pixel", *field_meta.units[1:]]
        assert kw["axis_labels"] == ["p", "z", "y", "x"]
        md = kw["metadata"]
        assert md["linblur_axes"] == "pzyx" and md["linblur_fields"] == ["field_000", "field_001"]
        assert md["linblur_source"] == str(root.resolve()) and md["linblur_channel"] == f"w{c + 1}"
        assert md["linblur_attrs"]["kind"] == "synthetic-through-focus"
    opened = viewer.open(str(root), plugin=PLUGIN)
    assert [ly.data.shape for ly in opened] == [(2, *fields[0].shape[1:])] * 2
    assert tuple(opened[0].scale) == (1.0, *field_meta.scale[1:])


def test_a_saved_defocus_map_reopens_as_the_widget_shows_maps(viewer, tmp_path, capsys):
    """A map written by ``linblur defocus-map`` (σ in px, or |defocus| in µm) reopens in magma on the widget's fixed
    range (0 - 10 px, or the µm of σ = 10 px for the file's optics), not in gray with limits estimated from its
    values, so that a colour means the same σ in a reopened map as in the widget's; other outputs are unchanged."""
    from napari_helpers import PLUGIN
    from napari_linblur._napari._maps import map_limits
    from napari_linblur.cli.main import main
    from napari_linblur.optics.psf import OpticalSetup

    rng = np.random.default_rng(5)
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, (rng.random((2, 64, 64)) * 1000).astype(np.uint16))
    px, um = tmp_path / "px.ome.zarr", tmp_path / "um.ome.zarr"
    assert main(["defocus-map", str(tif), str(px), "--device", "cpu", "--no-progress"]) == 0
    assert main(["defocus-map", str(tif), str(um), "--device", "cpu", "--no-progress", "--um", "--na", "0.45",
                 "--wavelength", "0.52", "--pixel-um", "0.65"]) == 0
    capsys.readouterr()
    (_, kw_px, _), = _reader.read_zstack(str(px))
    (_, kw_um, _), = _reader.read_zstack(str(um))
    assert (kw_px["colormap"], kw_px["contrast_limits"]) == ("magma", (0.0, 10.0))
    top = map_limits(OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.65))
    assert kw_um["colormap"] == "magma" and kw_um["contrast_limits"] == pytest.approx(top) and top[1] > 1.0
    # in a real viewer through the manifest's reader; saved again with the plugin's writer, it stays a map
    layer = viewer.open(str(px), plugin=PLUGIN)[0]
    assert layer.colormap.name == "magma" and tuple(layer.contrast_limits) == (0.0, 10.0)
    viewer.layers.selection = {layer}
    again = viewer.layers.save(str(tmp_path / "again.ome.zarr"), selected=True, plugin=PLUGIN)
    (_, kw_again, _), = _reader.read_zstack(again[0])
    assert (kw_again["colormap"], kw_again["contrast_limits"]) == ("magma", (0.0, 10.0))
    # an ordinary image keeps gray and limits from its values
    (_, kw_img, _), = _reader.read_zstack(str(tif))
    assert kw_img["colormap"] == "gray" and kw_img["contrast_limits"] != (0.0, 10.0)


def test_an_rgb_tiff_opens_as_red_green_blue_channels(tmp_path):
    """An RGB TIFF (interleaved or planar) is split into channels named and coloured red, green and blue (they were
    numbered 0-2 and coloured green, magenta and cyan); three grey planes stay one stack."""
    rng = np.random.default_rng(6)
    rgb = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "grey.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    for name in ("rgb", "planar"):
        layers = _reader.read_zstack(str(tmp_path / f"{name}.tif"))
        assert [kw["colormap"] for _, kw, _ in layers] == ["red", "green", "blue"], name
        assert [kw["name"] for _, kw, _ in layers] == [f"{name} [{c}]" for c in ("red", "green", "blue")]
        for k, (data, _, _) in enumerate(layers):
            np.testing.assert_array_equal(np.asarray(data).reshape(32, 40), rgb[..., k])
    (data, kw, _), = _reader.read_zstack(str(tmp_path / "grey.tif"))
    assert kw["colormap"] == "gray" and np.shape(data) == (3, 32, 40)


def test_unreadable_settings_are_said_once_and_defaults_used(monkeypatch, isolated_plugin_settings):
    """A settings file whose top level is not a mapping made napari raise AssertionError, which the plugin took for
    'an older napari' and ignored silently: the user's device, tile and models were dropped without a word."""
    from napari_linblur._napari import _settings

    def broken():
        raise AssertionError("settings must be a mapping")

    monkeypatch.setattr(_settings, "_plugin_settings", broken)
    monkeypatch.setattr(_settings, "_warned_unreadable", False)
    with pytest.warns(UserWarning, match="settings .* could not be read .*defaults are used"):
        assert _settings.get_settings() == _settings.LinblurSettings()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _settings.get_settings()  # said once per session
