"""Where the widgets' outputs land: the input's rotation, shear, affine and axis labels are carried to the live preview
and to every whole-stack output (computed, lazy, OME-Zarr), and the preview follows its input when it moves."""

from __future__ import annotations

import numpy as np
import pytest

from napari_helpers import add, notes, settle, wait_run


def _world(layer, pixel) -> np.ndarray:
    return np.asarray(layer.data_to_world(pixel), dtype=float)


def _defocus(viewer, qtbot, layer):
    w = add(viewer, "Defocus map & focus QC")
    w.image.set_layer(layer)
    settle(qtbot, w, timeout=60000)
    return w


def _preview(viewer):
    return next(ly for ly in viewer.layers if ly.metadata.get("linblur_preview"))


def _stack(n=2, side=48):
    return (np.random.default_rng(0).random((n, side, side)) * 1000).astype(np.float32)


def test_a_rotated_inputs_preview_and_outputs_sit_on_it(viewer, qtbot, tmp_path):
    """A layer rotated by 30° (and scaled): a pixel of the preview, of a computed result, of a lazy one and of an
    OME-Zarr output reopened lands where the same pixel of the input does (they used to get scale and translate
    only, so they sat unrotated beside it)."""
    layer = viewer.add_image(_stack(), name="cells", scale=(2.0, 0.5, 0.5), translate=(0, 3, -4), rotate=30)
    w = _defocus(viewer, qtbot, layer)
    viewer.dims.set_current_step(0, 1)
    settle(qtbot, w, timeout=60000)
    np.testing.assert_allclose(_world(_preview(viewer), (10, 20)), _world(layer, (1, 10, 20))[1:], atol=1e-6)
    w.preview_on.setChecked(False)
    for mode, target in ((w.output.LAYER, None), (w.output.LAZY, None),
                         (w.output.ZARR, str(tmp_path / "map.ome.zarr"))):
        w.output.set_mode(mode, target) if target else w.output.set_mode(mode)
        assert w.run_whole_stack()
        wait_run(qtbot, w, timeout=120000)
        out = viewer.layers[-1]
        np.testing.assert_allclose(_world(out, (1, 10, 20)), _world(layer, (1, 10, 20)), atol=1e-6, err_msg=mode)


def test_outputs_keep_the_input_axis_labels_and_a_channel_axis_is_saved_as_one(viewer, qtbot, tmp_path):
    """A (c, z, y, x) layer named so in napari: the preview and the outputs keep the labels, and an OME-Zarr output
    has a channel axis (it was written as t, z, y, x: the channels came back as time points) and is added back as
    one (c, z, y, x) layer, as a computed output is."""
    import zarr

    data = (np.random.default_rng(1).random((2, 2, 40, 40)) * 1000).astype(np.float32)
    layer = viewer.add_image(data, name="cz", axis_labels=("c", "z", "y", "x"))
    w = _defocus(viewer, qtbot, layer)
    assert tuple(_preview(viewer).axis_labels) == ("y", "x")
    w.preview_on.setChecked(False)
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    computed = viewer.layers[-1]
    assert tuple(computed.axis_labels) == ("c", "z", "y", "x")
    target = tmp_path / "cz.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    axes = [a["name"] for a in zarr.open_group(str(target), mode="r").attrs.asdict()["ome"]["multiscales"][0]["axes"]]
    assert axes == ["c", "z", "y", "x"]
    written = viewer.layers[-1]
    assert tuple(written.axis_labels) == ("c", "z", "y", "x") and written.ndim == 4
    level0 = written.data[0] if written.multiscale else written.data
    np.testing.assert_allclose(np.asarray(level0), computed.data, rtol=1e-5, atol=1e-5)


def test_the_preview_follows_its_input_when_it_moves_without_recomputing(viewer, qtbot):
    layer = viewer.add_image(_stack(), name="cells")
    w = _defocus(viewer, qtbot, layer)
    generation = w.preview.generation
    layer.scale = (2.0, 0.25, 0.25)
    layer.translate = (0.0, 30.0, 30.0)
    layer.rotate = 15
    np.testing.assert_allclose(_world(_preview(viewer), (5, 7)), _world(layer, (0, 5, 7))[1:], atol=1e-6)
    assert w.preview.generation == generation  # placed again, not computed again


def test_a_rotation_that_tilts_z_into_the_plane_is_left_out_of_the_preview_with_a_warning(viewer, qtbot):
    """A 2-D preview cannot carry a rotation that mixes Z with Y: it is placed without it, and a warning says so;
    a whole-stack output (all three axes) keeps the rotation."""
    rot = np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]])
    layer = viewer.add_image(_stack(), name="tilted", rotate=rot)
    w = _defocus(viewer, qtbot, layer)
    assert any("mixes the plane's axes" in n and "'tilted'" in n for n in notes())
    np.testing.assert_allclose(_preview(viewer).rotate, np.eye(2))
    w.preview_on.setChecked(False)
    assert w.run_whole_stack()
    wait_run(qtbot, w, timeout=120000)
    np.testing.assert_allclose(viewer.layers[-1].rotate, rot, atol=1e-12)


@pytest.mark.parametrize("message, expected", [
    ("img_a and img_c must have the same shape; got (64, 64) and (48, 56)",
     "'A' and 'C' must have the same shape; got (64, 64) and (48, 56)"),
    ("img contains NaN", "'cells' contains NaN"),
    ("image_b is not img_b", "image_b is not 'B'"),
])
def test_every_argument_name_in_an_error_becomes_its_layer_name(message, expected):
    from napari_linblur.inference.validate import name_arguments

    assert name_arguments(message, {"img_a": "A", "img_c": "C", "img": "cells", "img_b": "B"}) == expected


def test_the_preview_status_says_when_the_view_does_not_show_its_plane(viewer, qtbot):
    """In a 3-D view, or with the axes transposed so the canvas shows Z and X, the 2-D preview (always the YX plane
    at the current position) is not drawn in place: its status line says so; in the ordinary 2-D view it does not."""
    layer = viewer.add_image(_stack(3), name="cells")
    w = _defocus(viewer, qtbot, layer)
    assert w.preview_status.text() == "preview up to date"
    viewer.dims.order = (1, 0, 2)  # said at once, without a new preview
    assert "transposed view" in w.preview_status.text()
    viewer.dims.order = (0, 1, 2)
    assert w.preview_status.text() == "preview up to date"
    viewer.dims.ndisplay = 3
    assert "3-D view" in w.preview_status.text()
    w.preview.request()  # and after a new preview too
    settle(qtbot, w, timeout=60000)
    assert "3-D view" in w.preview_status.text()


def _run_deleting(viewer, qtbot, w, layer, change=None) -> None:
    """Start ``w``'s whole-stack run while it waits in the queue, delete ``layer`` (or ``change(layer)``), then let
    it run to its end."""
    from napari_helpers import PoolBlocker

    blocker = PoolBlocker()  # the run waits in the queue until the layer is gone
    try:
        assert w.run_whole_stack()
        viewer.layers.remove(layer) if change is None else change(layer)
    finally:
        blocker.release.set()
    wait_run(qtbot, w, timeout=120000)


def _defocus_dock(viewer, layer, mode: str, tmp_path):
    """The Defocus dock on ``layer``, live map off, whole-stack output ``mode`` (an OME-Zarr file in ``tmp_path``)."""
    w = add(viewer, "Defocus map & focus QC")
    w.image.set_layer(layer)
    w.preview_on.setChecked(False)
    target = tmp_path / "map.ome.zarr"
    w.output.set_mode(getattr(w.output, mode.upper()), str(target)) if mode == "zarr" else \
        w.output.set_mode(getattr(w.output, mode.upper()))
    return w, target


@pytest.mark.parametrize("mode", ["layer", "zarr"])
def test_a_whole_stack_run_whose_input_changes_meanwhile_adds_no_stale_result(viewer, qtbot, tmp_path, mode):
    """The input's data replaced while its whole-stack run computes: the result of the old data is not added (it
    was, named after the layer and placed over data it no longer matched), as a focus curve refuses; an input
    moved meanwhile keeps its result, with a warning that it sits where the input was."""
    layer = viewer.add_image(_stack(), name="cells")
    w, target = _defocus_dock(viewer, layer, mode, tmp_path)

    def replace(ly):
        ly.data = np.zeros((2, 32, 32), np.float32)

    _run_deleting(viewer, qtbot, w, layer, change=replace)
    status = w.panel.status.text()
    assert [ly.name for ly in viewer.layers] == ["cells"], status
    assert "the data of 'cells' changed while this run computed" in status and "run it again" in status
    assert ("nothing added" in status) if mode != "zarr" else (f"{target} was written but is not added" in status)
    if mode == "zarr":
        return
    before = len(notes())

    def move(ly):
        ly.translate = (0.0, 100.0, 100.0)

    layer.data = _stack()
    _run_deleting(viewer, qtbot, w, layer, change=move)
    assert len(viewer.layers) == 2, w.panel.status.text()
    assert any("'cells' moved" in n and "where the input was when the run started" in n for n in notes()[before:])


@pytest.mark.parametrize("mode", ["layer", "lazy", "zarr"])
def test_a_whole_stack_run_whose_input_is_deleted_adds_nothing_and_raises_no_error(viewer, qtbot, tmp_path, mode):
    """The input deleted while its whole-stack run waits or computes: as for a focus curve, the run ends with a
    plain status line and adds no layer (it used to add the output of a layer that was gone), and no error pops
    up; an OME-Zarr file already written stays on disk and the line names it. An earlier map is left as it was (the
    run styled the last map layer, whatever added it)."""
    earlier = viewer.add_image(np.zeros((8, 8), np.float32), name="defocus σ[earlier]")
    layer = viewer.add_image(_stack(), name="cells")
    w, target = _defocus_dock(viewer, layer, mode, tmp_path)
    before = len(notes())
    _run_deleting(viewer, qtbot, w, layer)
    assert list(viewer.layers) == [earlier] and not earlier.colorbar.visible
    status = w.panel.status.text()
    assert "'cells' was deleted; " in status and "done" not in status, status
    assert ("nothing added" in status) if mode != "zarr" else (f"{target} was written but is not added" in status)
    assert notes()[before:] == []


def test_a_pair_run_whose_second_input_is_deleted_adds_nothing(viewer, qtbot):
    """A blur-synthesis run of two layers: deleting the one that is not the output's model layer (the blurrier
    input) ends the run in the same way."""
    a = viewer.add_image(_stack(), name="A")
    b = viewer.add_image(_stack(), name="C")
    w = add(viewer, "Blur synthesis")
    w.preview_on.setChecked(False)
    w.a_layer.set_layer(a)
    w.c_layer.set_layer(b)
    before = len(notes())
    _run_deleting(viewer, qtbot, w, b)
    assert [ly.name for ly in viewer.layers] == ["A"]
    assert "'C' was deleted; nothing added" in w.panel.status.text()
    assert notes()[before:] == []


def test_the_single_image_mode_is_named_after_what_its_method_runs(viewer):
    """The Deblur mode menu said "Single image (network)" also when the method was reblur-extrapolate (which runs
    the autoencoder, not the network)."""
    w = add(viewer, "Deblur")
    w.set_mode("single")
    w.method.setCurrentIndex(w.method.findData("reblur-extrapolate"))
    assert w.mode.currentText() == "Single image (re-blur + extrapolation)"
    w.method.setCurrentIndex(w.method.findData("network"))
    assert w.mode.currentText() == "Single image (network)"


def test_go_to_best_plane_goes_through_the_layers_affine(viewer, qtbot):
    """A stack whose affine moves it along Z (and rotated in YX): 'Go to best plane' shows the best plane (it
    converted the plane with scale and translate only, landing planes away from it)."""
    stack = _stack(5)
    stack[3] *= 10  # plane 3 has by far the most detail
    affine = np.eye(4)
    affine[0, 3] = 2.0
    layer = viewer.add_image(stack, name="cells", scale=(1.5, 0.5, 0.5), rotate=20, affine=affine)
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    assert w.run_focus_curve()
    wait_run(qtbot, w)
    assert w.plot.best == 3
    viewer.dims.set_point(0, float(layer.data_to_world((0, 24, 24))[0]))
    w.goto_btn.click()
    from napari_linblur._napari import _ops

    assert _ops.current_indices(viewer, layer) == (3,)


def test_a_focus_curve_of_data_replaced_while_it_computed_is_not_shown(viewer, qtbot):
    """``layer.data = ...`` while the focus curve waits or computes: the curve scored the old data, so it is not
    shown (its best plane would be of data that is gone); the run's status line says to score it again."""
    from napari_helpers import PoolBlocker

    layer = viewer.add_image(_stack(4), name="cells")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    before = len(notes())
    blocker = PoolBlocker()
    try:
        assert w.run_focus_curve()
        layer.data = _stack(6)
    finally:
        blocker.release.set()
    wait_run(qtbot, w)
    assert w.plot.scores is None and not w.goto_btn.isEnabled()
    assert "data of 'cells' changed while its focus curve was computed" in w.panel.status.text()
    assert notes()[before:] == []
