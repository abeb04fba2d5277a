"""Focus QC of a whole plate in napari (a microscopist's view, in real viewers under Xvfb): whole-stack runs that
would not fit in memory are refused before they start, the focus curve names the well/site and the BBBC006 plane
as the command line does, µm maps never assume a pixel size, and OME-Zarr outputs keep the plate's fields and
plane numbers."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest

import napari_linblur as nl
from napari_helpers import PLUGIN, add, last_error, notes, settle, wait_run
from napari_linblur._napari import _ops

UUID = "2667264a-6432-4f7e-bf58-625a1319a1c9"
PLANES = (14, 15, 16)


def bbbc006_folder(root, planes=PLANES, shape=(48, 64)):
    """A small BBBC006 folder (flat layout; well k06, sites 1 and 2; channels w1 and w2); the in-focus plane of
    site 2 is its middle one, that of site 1 its last one."""
    import tifffile

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = (np.sin(xx / 2.0) * np.cos(yy / 3.0) + 1.0) * 800.0
    root.mkdir(exist_ok=True)
    for k, z in enumerate(planes):
        for s, best in ((1, len(planes) - 1), (2, len(planes) // 2)):
            from scipy.ndimage import gaussian_filter

            img = gaussian_filter(base, 0.3 + 2.5 * abs(k - best)) + 1000 + rng.normal(0, 5, shape)
            for w in (1, 2):
                tifffile.imwrite(root / f"{z:02d}_mcf-z-stacks-03212011_k06_s{s}_w{w}{UUID}.tif",
                                 img.astype(np.uint16))
    return root


def counting_plate(shape=(4, 3, 48, 64)):
    """A lazy (P, Z, Y, X) plate of one chunk per plane and a counter of the planes computed from it."""
    lock, count = threading.Lock(), [0]

    def plane(block):
        with lock:
            count[0] += 1
        return block + 100

    arr = da.zeros(shape, dtype=np.uint16, chunks=(1, 1) + shape[2:]).map_blocks(plane, dtype=np.uint16)
    return arr, count


@pytest.fixture
def small_memory(monkeypatch):
    """This computer "can spare" 64 KiB for a computed output: a (4, 3, 48, 64) float32 result (144 KiB) is too
    large, without allocating gigabytes."""
    monkeypatch.setattr(_ops, "memory_limit", lambda: 64 * 1024)
    return 64 * 1024


def _refused(qtbot, viewer, w, count, what):
    """Click ``w``'s Run on whole stack with a result too large for memory: nothing starts, nothing is computed or
    added, and the notification names the size and what to choose instead."""
    n_layers, n_notes, computed = len(viewer.layers), len(notes()), count[0]
    w.run_btn.click()
    assert not w.panel.running and len(viewer.layers) == n_layers
    msg = last_error()
    assert len(notes()) == n_notes + 1 and msg.startswith(what), msg
    assert "144.0 KiB" in msg and "64.0 KiB" in msg and "4 x 3 x 48 x 64 float32" in msg, msg
    assert "'OME-Zarr file'" in msg and "smaller selection" in msg
    assert msg in w.panel.status.text()
    qtbot.wait(50)
    assert count[0] == computed  # not a plane of the plate was read for the refused run
    return msg



def _blur_pair_widget(viewer, layer, model):
    """The Blur synthesis widget, preview off, synthesizing from planes 2 (a) and 0 (c) of ``layer``."""
    b = add(viewer, "Blur synthesis")
    b.preview_on.setChecked(False)
    b.model.set_model(model)
    b.a_layer.set_layer(layer)
    b.c_layer.set_layer(layer)
    b.a_plane.setValue(2)
    b.c_plane.setValue(0)
    return b

def test_memory_limit_is_a_share_of_the_available_ram(monkeypatch):
    import sys

    avail = _ops.available_memory()
    assert avail is not None and avail > 0
    assert 0 < _ops.memory_limit() <= avail
    # the whole BBBC006 plate the audit opened: 768 fields x 34 planes of 520 x 696, float32
    msg = _ops.memory_problem((768, 34, 520, 696), limit=8 * 2**30)
    assert "35.2 GiB" in msg and "8.0 GiB" in msg and "'OME-Zarr file'" in msg
    assert _ops.memory_problem((2, 48, 64), limit=2**20) is None
    # without psutil the OS is asked
    monkeypatch.setitem(sys.modules, "psutil", None)
    assert _ops.available_memory() is not None and _ops.available_memory() > 0


def test_whole_plate_runs_that_do_not_fit_in_memory_are_refused(viewer, qtbot, tiny_models, small_memory,
                                                                tmp_path):
    plate, count = counting_plate()
    layer = viewer.add_image(plate, name="plate", metadata={"linblur_axes": "pzyx"})
    qtbot.wait(50)

    # Defocus map: the default output, "new layer (compute now)", would hold the result in memory
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    assert w.output.mode() == w.output.LAYER
    _refused(qtbot, viewer, w, count, "defocus σ[plate]: the result (4 x 3 x 48 x 64 float32) needs 144.0 KiB")
    # the OME-Zarr output it points to is written plane by plane: it runs
    target = tmp_path / "sigma.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "defocus σ[plate]" and out.data.shape == plate.shape, w.panel.status.text()
    np.testing.assert_allclose(np.asarray(out.data[1, 2]),
                               nl.estimate_defocus(np.asarray(plate[1, 2]), model=tiny_models["defocus"], tile=256),
                               rtol=1e-4, atol=1e-4)
    # and so does the lazy layer
    w.output.set_mode(w.output.LAZY)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    assert viewer.layers[-1].data.shape == plate.shape

    # the same guard for every widget: Deblur (single image) and Blur synthesis (a pair per position)
    d = add(viewer, "Deblur")
    d.preview_on.setChecked(False)
    d.set_mode("single")
    d.method.setCurrentIndex(d.method.findData("network"))
    d.net_model.set_model(tiny_models["deblur"])
    _refused(qtbot, viewer, d, count, "deblurred[plate, network]: the result (4 x 3 x 48 x 64 float32)")
    b = _blur_pair_widget(viewer, layer, tiny_models["ae"])
    small_memory_pair = 4 * 1 * 48 * 64 * 4  # (P, 1, Y, X) float32: 48 KiB fits in 64 KiB
    assert small_memory_pair < small_memory
    n = len(viewer.layers)
    assert b.run_whole_stack()
    wait_run(qtbot, b)
    assert len(viewer.layers) == n + 1 and viewer.layers[-1].data.shape == (4, 1, 48, 64)


def test_running_out_of_memory_during_a_run_is_a_notification(viewer, qtbot, tiny_models, monkeypatch):
    viewer.add_image(counting_plate()[0], name="plate")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 35.2 GiB for an array with shape (768, 34, 520, 696)")

    monkeypatch.setattr(_ops, "compute_planes", no_memory)
    n = len(viewer.layers)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    msg = last_error()
    assert len(viewer.layers) == n
    assert msg.startswith("defocus σ[plate] failed: out of memory computing the 144.0 KiB result"), msg
    assert "'OME-Zarr file'" in msg and "MemoryError" not in msg


def test_focus_curve_names_the_field_and_the_bbbc006_plane(viewer, qtbot, tmp_path):
    folder = bbbc006_folder(tmp_path / "bb")
    layers = viewer.open(str(folder), plugin=PLUGIN)
    w1 = next(ly for ly in layers if ly.name.endswith("[w1]"))
    assert w1.metadata["linblur_fields"] == ["k06_s1", "k06_s2"]
    assert w1.metadata["linblur_planes"] == list(PLANES)
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.image.set_layer(w1)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    viewer.dims.set_point(0, 1.0)  # position p = 1: site 2 of well k06
    assert _ops.current_indices(viewer, w1)[0] == 1
    w.curve_btn.click()
    wait_run(qtbot, w)
    stack = np.asarray(w1.data[1])
    best = nl.best_focus(stack, method="brenner")
    assert w.plot.best == best == 1
    # as the command line prints it: "k06_s2: best plane 1 (BBBC006 plane 15)"
    text = w.best_label.text()
    assert text == f"best plane of {w1.name} at k06_s2 (p=1): z = 1 (BBBC006 plane 15)", text
    # at another position the label says which field the curve is of
    viewer.dims.set_point(0, 0.0)
    text = w.best_label.text()
    assert "this curve is of k06_s2 (p=1), the viewer shows k06_s1 (p=0)" in text, text

    # a layer without fields or plane numbers keeps the plain label
    plain = viewer.add_image(stack, name="plain")
    w.image.set_layer(plain)
    w.curve_btn.click()
    wait_run(qtbot, w)
    assert w.best_label.text() == f"best plane of plain: z = {best}"


def test_micrometre_maps_never_assume_a_pixel_size(viewer, qtbot, tiny_models):
    rng = np.random.default_rng(3)
    stack = (rng.random((3, 48, 64)) * 1000).astype(np.uint16)
    bare = viewer.add_image(stack, name="bare")  # napari's default unit: pixel
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    n_notes = len(notes())
    w.units.setCurrentIndex(w.units.findData("um"))
    # a warning naming the layer; the pixel field is empty ("enter µm") and outlined; the live map waits
    warned = notes()[n_notes:]
    assert any("'bare' has no physical pixel size" in m and "enter the pixel size" in m for m in warned), warned
    assert not w.optics.pixel_known() and w.optics.pixel.text() == "pixel: enter µm"
    assert "border" in w.optics.pixel.styleSheet()
    settle(qtbot, w)
    assert w.preview_status.text().startswith("waiting: defocus map in µm: 'bare' has no physical pixel size")
    assert not [ly for ly in viewer.layers if ly.name.startswith("defocus µm")]
    # a whole-stack run is refused with the same reason
    w.preview_on.setChecked(False)
    assert not w.run_whole_stack()
    assert "'bare' has no physical pixel size" in last_error() and not w.panel.running
    w.preview_on.setChecked(True)

    # the user enters it: the map is computed with it
    w.optics.pixel.setValue(0.4)
    assert w.optics.pixel_known() and w.optics.pixel.styleSheet() == ""
    settle(qtbot, w)
    z = _ops.current_indices(viewer, bare)[0]
    prev = viewer.layers[f"defocus µm[bare z{z}] (preview)"]
    assert w.optics.setup().pixel_um == pytest.approx(0.4)
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um

    sigma = nl.estimate_defocus(stack[z], model=tiny_models["defocus"], tile=256)
    np.testing.assert_allclose(prev.data, sigma_to_defocus_um(sigma, setup=w.optics.setup()), rtol=1e-5, atol=1e-4)

    # a layer in µm gives its own; back on 'bare' the size entered for it comes back
    um = viewer.add_image(stack, name="in µm", scale=(2.0, 0.25, 0.25), units=("micrometer",) * 3)
    w.image.set_layer(um)
    assert w.optics.pixel.value() == pytest.approx(0.25)
    w.image.set_layer(bare)
    assert w.optics.pixel.value() == pytest.approx(0.4)
    # another layer without a length unit gets neither: the field is empty again
    other = viewer.add_image(stack, name="other", scale=(1.0, 3.0, 3.0))
    w.image.set_layer(other)
    assert not w.optics.pixel_known()
    assert "'other' has no physical pixel size" in notes()[-1]
    # in σ mode nothing is asked
    w.units.setCurrentIndex(w.units.findData("px"))
    settle(qtbot, w)
    assert viewer.layers[f"defocus σ[other z{z}] (preview)"].data.shape == (48, 64)


def test_ome_zarr_outputs_keep_the_fields_and_planes_of_the_plate(viewer, qtbot, tiny_models, tmp_path):
    import zarr

    from napari_linblur.io.readers import open_zstack_with_metadata

    folder = bbbc006_folder(tmp_path / "bb")
    layers = viewer.open(str(folder), plugin=PLUGIN)
    w2 = next(ly for ly in layers if ly.name.endswith("[w2]"))
    fields = ["k06_s1", "k06_s2"]

    # a defocus map of the plate: every field and plane
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    w.image.set_layer(w2)
    target = tmp_path / "sigma.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    attrs = zarr.open_group(str(target), mode="r").attrs.asdict()["linblur"]
    assert attrs["fields"] == fields and attrs["planes"] == list(PLANES), attrs
    assert attrs["operation"] == "defocus-map"  # the widget's own attributes are kept
    meta = open_zstack_with_metadata(target)[1]
    assert meta.extra["fields"] == fields and meta.extra["planes"] == list(PLANES)
    out = viewer.layers[-1]
    assert out.metadata["linblur_fields"] == fields and out.metadata["linblur_planes"] == list(PLANES)

    # a computed map carries them too, and the plugin's writer keeps them when it is saved
    w.output.set_mode(w.output.LAYER)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    computed = viewer.layers[-1]
    assert computed.metadata["linblur_fields"] == fields and computed.metadata["linblur_planes"] == list(PLANES)
    assert computed.metadata["linblur_axes"] == "pzyx"
    saved = tmp_path / "saved.ome.zarr"
    viewer.layers.selection.clear()
    viewer.layers.selection.add(computed)
    viewer.layers.save(str(saved), selected=True, plugin=PLUGIN)
    meta = open_zstack_with_metadata(saved)[1]
    assert meta.extra["fields"] == fields and meta.extra["planes"] == list(PLANES)

    # a pair per field (blur synthesis of planes 2 and 0): the fields still apply, the plane numbers do not
    b = _blur_pair_widget(viewer, w2, tiny_models["ae"])
    pair = tmp_path / "pair.ome.zarr"
    b.output.set_mode(b.output.ZARR, str(pair))
    assert b.run_whole_stack()
    wait_run(qtbot, b)
    attrs = zarr.open_group(str(pair), mode="r").attrs.asdict()["linblur"]
    assert attrs["fields"] == fields and "planes" not in attrs, attrs
    assert viewer.layers[-1].metadata["linblur_fields"] == fields
