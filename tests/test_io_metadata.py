"""Metadata that must survive reading and writing: OME-TIFF channel names per channel, time calibration (ImageJ
``finterval``, OME ``TimeIncrement``), NGFF axis names and types, BBBC006 plane numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_linblur.cli.main import main
from napari_linblur.io.omezarr import writable_axes, write_ome_zarr
from napari_linblur.io.readers import open_zstack, open_zstack_with_metadata

# ------------------------------------------------------------------------------------ OME-TIFF channel names


def test_multi_series_ome_tiff_has_one_name_per_channel(tmp_path):
    """One series per position, each CZYX with two named channels: the names of the first image, not of all."""
    data = np.random.default_rng(0).integers(0, 1000, size=(2, 2, 3, 16, 20), dtype=np.uint16)  # P C Z Y X
    path = tmp_path / "ms.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for stack in data:
            tw.write(stack, metadata={"axes": "CZYX", "Channel": {"Name": ["DAPI", "GFP"]},
                                      "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.0})
    arr, meta = open_zstack_with_metadata(path)
    assert meta.axes == "pczyx" and arr.shape == data.shape
    assert meta.channel_names == ["DAPI", "GFP"]
    assert meta.scale[-3:] == pytest.approx((1.0, 0.3, 0.3))
    gfp, gmeta = open_zstack_with_metadata(path, channel="GFP")
    np.testing.assert_array_equal(gfp.compute(), data[:, 1])
    assert gmeta.channel_names == ["GFP"]
    # what a batch run writes from it (it used to fail: "need one name per channel along a 'c' axis")
    out = write_ome_zarr(tmp_path / "out.zarr", arr, axes=writable_axes(meta.axes), scale=meta.scale,
                         units=meta.units, channel_names=meta.channel_names)
    assert open_zstack_with_metadata(out)[1].channel_names == ["DAPI", "GFP"]


def test_an_unnamed_ome_tiff_channel_is_named_by_its_index_and_a_bad_index_is_a_value_error(tmp_path, capsys):
    data = np.random.default_rng(1).integers(0, 1000, size=(3, 2, 16, 20), dtype=np.uint16)  # Z C Y X
    path = tmp_path / "partial.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "GFP"]}})
    tifffile.tiffcomment(path, tifffile.tiffcomment(path).replace(' Name="GFP"', ""))  # the 2nd <Channel> unnamed
    arr, meta = open_zstack_with_metadata(path)
    assert meta.axes == "czyx" and meta.channel_names == ["DAPI", "1"]
    one, m1 = open_zstack_with_metadata(path, channel=1)  # used to end in a bare IndexError
    np.testing.assert_array_equal(one.compute(), data[:, 1])
    assert m1.channel_names == ["1"]
    np.testing.assert_array_equal(open_zstack(path, channel="DAPI").compute(), data[:, 0])
    with pytest.raises(ValueError, match=r"has 2 channels \['DAPI', '1'\] \(indices 0\.\.1\)"):
        open_zstack(path, channel=2)
    # on the command line: the same message, before any cluster starts
    assert main(["focus", str(path), "--channel", "2", "--method", "brenner", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "has 2 channels" in err and "indices 0..1" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- time calibration


def test_imagej_frame_interval_and_ome_time_increment_are_the_t_scale(tmp_path):
    data = np.zeros((2, 3, 2, 16, 16), np.uint16)  # T Z C Y X
    ij = tmp_path / "ij.tif"
    tifffile.imwrite(ij, data, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um", "finterval": 2.0})
    meta = open_zstack_with_metadata(ij)[1]
    assert meta.axes == "tczyx"
    assert meta.scale == pytest.approx((2.0, 1.0, 1.5, 0.25, 0.25))
    assert meta.units == ("second", None, "micrometer", "micrometer", "micrometer")
    minutes = tmp_path / "ij_min.tif"
    tifffile.imwrite(minutes, data, imagej=True, metadata={"axes": "TZCYX", "finterval": 0.5, "tunit": "min"})
    meta = open_zstack_with_metadata(minutes)[1]
    assert meta.scale[0] == 0.5 and meta.units[0] == "minute"

    ome = tmp_path / "t.ome.tif"
    tifffile.imwrite(ome, np.zeros((2, 3, 16, 16), np.uint16), ome=True,
                     metadata={"axes": "TZYX", "TimeIncrement": 250.0, "TimeIncrementUnit": "ms",
                               "PhysicalSizeZ": 500.0, "PhysicalSizeZUnit": "nm"})
    meta = open_zstack_with_metadata(ome)[1]
    assert meta.axes == "tzyx" and meta.scale[:2] == (250.0, 500.0)
    assert meta.units[:2] == ("millisecond", "nanometer")
    # and it is written out again: an OME-Zarr time axis in seconds
    arr, meta = open_zstack_with_metadata(ij)
    out = write_ome_zarr(tmp_path / "ij.zarr", arr, axes=meta.axes, scale=meta.scale, units=meta.units)
    axes = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["axes"]
    assert axes[0] == {"name": "t", "type": "time", "unit": "second"}


# --------------------------------------------------------------------------------------- NGFF axis names


def _ngff_image(path, data, axes_md, scale):
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.create_array("0", shape=data.shape, chunks=(1,) * (data.ndim - 2) + data.shape[-2:],
                      dtype=data.dtype)[:] = data
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{"axes": axes_md, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]}})
    return path


def _written_axes(path):
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["axes"]


def test_ngff_axis_names_and_types_are_read_and_written_back(tmp_path):
    space = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    data = np.random.default_rng(2).integers(0, 1000, size=(2, 3, 16, 20), dtype=np.uint16)
    src = _ngff_image(tmp_path / "angle.ome.zarr", data,
                      [{"name": "angle", "type": "angle", "unit": "degree"}, *space], [45.0, 2.0, 0.5, 0.5])
    arr, meta = open_zstack_with_metadata(src)
    assert meta.axes == "?zyx" and meta.units[0] == "degree"
    assert meta.axis_names == ("angle", "z", "y", "x") and meta.axis_types == ("angle", "space", "space", "space")
    out = write_ome_zarr(tmp_path / "out.zarr", arr, axes=writable_axes(meta.axes), scale=meta.scale,
                         units=meta.units, axis_names=meta.axis_names, axis_types=meta.axis_types)
    assert _written_axes(out)[0] == {"name": "angle", "type": "angle", "unit": "degree"}
    assert json.loads((out / "0" / "zarr.json").read_text())["dimension_names"] == ["angle", "z", "y", "x"]
    assert open_zstack_with_metadata(out)[1].axis_names == ("angle", "z", "y", "x")

    # 'time' and 'channel' keep their names (read as t and c), in whatever order the file has them
    named = _ngff_image(tmp_path / "tc.ome.zarr", np.zeros((2, 2, 16, 20), np.uint16),
                        [{"name": "channel", "type": "channel"}, {"name": "time", "type": "time", "unit": "second"},
                         *space[1:]], [1.0, 3.0, 0.5, 0.5])
    arr, meta = open_zstack_with_metadata(named)
    assert meta.axes == "tczyx" and meta.axis_names == ("time", "channel", "z", "y", "x")
    assert meta.scale[0] == 3.0 and meta.units[0] == "second"
    out = write_ome_zarr(tmp_path / "tc_out.zarr", arr, axes=meta.axes, scale=meta.scale, units=meta.units,
                         axis_names=meta.axis_names, axis_types=meta.axis_types)
    assert [a["name"] for a in _written_axes(out)] == ["time", "channel", "z", "y", "x"]
    assert _written_axes(out)[0] == {"name": "time", "type": "time", "unit": "second"}
    # one channel chosen: its axis and name go; the others stay named
    assert open_zstack_with_metadata(named, channel=1)[1].axis_names == ("time", "z", "y", "x")


def test_writer_refuses_axis_names_a_reader_would_misread(tmp_path):
    data = np.zeros((2, 3, 8, 8), np.float32)
    for names, types, says in (
        (["angle", "z", "y"], None, "one name per axis"),
        (["a", "a", "y", "x"], None, "unique"),
        (["angle", "depth", "y", "x"], None, "cannot be named 'depth'"),
        (["z", "angle", "y", "x"], None, "cannot be named 'z'"),
        (None, ["angle", "time", None, None], "of type 'space', not 'time'"),
    ):
        with pytest.raises(ValueError, match=says):
            write_ome_zarr(tmp_path / "o.zarr", data, axes="azyx", axis_names=names, axis_types=types)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- plain TIFF resolution


@pytest.mark.parametrize("dpi", [96, 300, 1200])
def test_a_plain_tiffs_dots_per_inch_are_not_a_pixel_size(tmp_path, dpi):
    """A plain TIFF exported at 96 or 300 dpi (an image editor's, a screenshot's) used to read as pixels of 264.6 or
    84.7 µm, and `linblur defocus-map --um` reported hundreds of µm of defocus; dpi leave the image uncalibrated,
    and pixels per centimetre (as microscope software writes them) are the pixel size."""
    img = np.zeros((3, 16, 16), np.uint16)
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, img, resolution=(dpi, dpi), resolutionunit=2)
    meta = open_zstack_with_metadata(inch)[1]
    assert meta.scale[-2:] == (1.0, 1.0) and meta.units[-2:] == (None, None)
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, img, resolution=(15384.6, 15384.6), resolutionunit=3)  # 0.65 µm pixels
    meta = open_zstack_with_metadata(cm)[1]
    assert meta.scale[-2:] == pytest.approx((0.65, 0.65), rel=1e-5) and meta.units[-1] == "micrometer"


def test_defocus_map_in_um_asks_for_the_pixel_size_of_a_dpi_tiff(tmp_path, capsys):
    from napari_linblur.cli.main import main

    tif = tmp_path / "exported.tif"
    tifffile.imwrite(tif, np.zeros((2, 32, 32), np.uint16), resolution=(96, 96), resolutionunit=2)
    code = main(["defocus-map", str(tif), str(tmp_path / "um.zarr"), "--um", "--na", "0.45",
                 "--wavelength", "0.52", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--pixel-um" in err and not (tmp_path / "um.zarr").exists(), err
