"""The four widgets in real napari viewers (run under Xvfb), added through the manifest and driven as a user
would: pick layers, move sliders and the viewer's Z, press buttons; wait with ``qtbot.waitUntil``."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pytest

import napari_linblur as nl
from napari_helpers import (
    PLUGIN,
    TILE,
    add,
    deblur_pair_of,
    last_error,
    settle,
    small_training,
    wait_run,
)
from napari_linblur._napari import _ops
from napari_linblur._napari._sample_data import synthetic_stack_data


@pytest.fixture(scope="module")
def synth():
    """A seeded 2-channel, 9-plane synthetic through-focus stack (uint16), small."""
    return synthetic_stack_data((48, 64), seed=5)[0]












def test_every_widget_opens_through_the_manifest(viewer, qtbot):
    from napari._app_model import get_app_model

    from napari_linblur._napari._qt.blur_widget import BlurSynthesisWidget
    from napari_linblur._napari._qt.deblur_widget import DeblurWidget
    from napari_linblur._napari._qt.defocus_widget import DefocusWidget
    from napari_linblur._napari._qt.train_widget import TrainWidget

    app = get_app_model()
    ids = {m: [getattr(getattr(i, "command", None), "id", None) for i in app.menus.get_menu(m)]
           for m in ("napari/layers/filter", "napari/layers/measure")}
    assert {"napari-linblur.blur_widget", "napari-linblur.deblur_widget"} <= set(ids["napari/layers/filter"])
    assert "napari-linblur.defocus_widget" in ids["napari/layers/measure"]

    viewer.add_image(np.zeros((3, 32, 32), np.uint16), name="img")
    kinds = {"Blur synthesis": BlurSynthesisWidget, "Deblur": DeblurWidget,
             "Defocus map & focus QC": DefocusWidget, "Train": TrainWidget}
    for name, cls in kinds.items():
        w = add(viewer, name)
        assert isinstance(w, cls)
    # layer pickers list image layers only and follow the layer list
    viewer.add_points(np.zeros((1, 3)), name="pts")
    viewer.add_image(np.ones((3, 32, 32), np.float32), name="second")
    blur = viewer.window._dock_widgets["Blur synthesis (napari-linblur)"].widget()
    assert [blur.a_layer.itemText(i) for i in range(blur.a_layer.count())] == ["img", "second"]
    viewer.layers.remove("img")
    assert [blur.a_layer.itemText(i) for i in range(blur.a_layer.count())] == ["second"]
    # removed dock widgets no longer compute previews for the viewer (and raise no errors)
    defocus = viewer.window._dock_widgets["Defocus map & focus QC (napari-linblur)"].widget()
    for name in kinds:
        viewer.window.remove_dock_widget(viewer.window._dock_widgets[f"{name} (napari-linblur)"])
    qtbot.wait(300)
    generation = defocus.preview.generation
    viewer.add_image(np.zeros((4, 16, 16)), name="later")
    viewer.dims.set_current_step(0, 1)
    qtbot.wait(300)
    assert defocus.preview.generation == generation


def test_defocus_widget_live_map_stack_run_and_focus_curve(viewer, qtbot, tiny_models, synth, tmp_path):
    stack = synth[0]  # (9, 48, 64) uint16
    layer = viewer.add_image(stack, name="img", scale=(4.0, 0.65, 0.65), translate=(0.0, 10.0, 20.0))
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    z = _ops.current_indices(viewer, layer)[0]
    prev = viewer.layers[f"defocus σ[img z{z}] (preview)"]
    # the live map is an output that changes under the user: the image picker never offers it as an input
    assert [w.image.itemText(i) for i in range(w.image.count())] == ["img"]
    expect = nl.estimate_defocus(stack[z], model=tiny_models["defocus"], tile=TILE)
    np.testing.assert_allclose(prev.data, expect, rtol=1e-5, atol=1e-5)
    assert tuple(prev.scale) == (0.65, 0.65) and tuple(prev.translate) == (10.0, 20.0)
    assert prev.colormap.name == "magma" and prev.colorbar.visible
    assert prev.contrast_limits[0] == 0.0
    # self-ensemble: the live map becomes the mean over flips
    w.tta.setCurrentIndex(w.tta.findData(2))
    settle(qtbot, w)
    np.testing.assert_allclose(viewer.layers[f"defocus σ[img z{z}] (preview)"].data,
                               nl.estimate_defocus(stack[z], model=tiny_models["defocus"], tile=TILE, tta=2),
                               rtol=1e-5, atol=1e-5)
    w.tta.setCurrentIndex(0)
    settle(qtbot, w)

    # the live map follows the viewer's plane
    viewer.dims.set_current_step(0, 2)
    settle(qtbot, w)
    assert viewer.layers[-1].name == "defocus σ[img z2] (preview)"
    np.testing.assert_allclose(viewer.layers[-1].data,
                               nl.estimate_defocus(stack[2], model=tiny_models["defocus"], tile=TILE),
                               rtol=1e-5, atol=1e-5)

    # whole stack, computed now
    w.preview_on.setChecked(False)
    w.run_btn.click()
    wait_run(qtbot, w)
    out = viewer.layers["defocus σ[img]"]
    assert out.data.shape == stack.shape and out.data.dtype == np.float32
    assert tuple(out.scale) == (4.0, 0.65, 0.65) and tuple(out.translate) == (0.0, 10.0, 20.0)
    np.testing.assert_allclose(out.data[5], nl.estimate_defocus(stack[5], model=tiny_models["defocus"],
                                                                tile=TILE), rtol=1e-5, atol=1e-5)
    assert w.panel.last_progress == (9, 9) and w.panel.bar.value() == w.panel.bar.maximum() == 9
    # one napari progress bar per run, closed when it ends (napari draws a new bar processing events: progress
    # reports delivered meanwhile each made a bar of their own, left open)
    from napari.utils import progress

    assert list(progress._all_instances) == []

    # whole stack, lazy (dask): nothing computed until a plane is shown
    n_before = len(viewer.layers)
    w.output.set_mode(w.output.LAZY)
    w.run_btn.click()
    wait_run(qtbot, w)
    assert len(viewer.layers) == n_before + 1
    lazy = viewer.layers[-1]
    assert type(lazy.data).__module__.startswith("dask") and lazy.data.shape == stack.shape
    np.testing.assert_allclose(np.asarray(lazy.data[5]), out.data[5], rtol=1e-5, atol=1e-5)

    # focus QC: curve over Z with the best plane, and "go to best plane"
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    w.curve_btn.click()
    wait_run(qtbot, w)
    assert w.plot.scores is not None and len(w.plot.scores) == 9
    assert w.plot.best == nl.best_focus(stack, method="brenner")
    np.testing.assert_allclose(w.plot.scores, nl.focus_curve(stack, method="brenner"))
    w.goto_btn.click()
    assert _ops.current_indices(viewer, layer)[0] == w.plot.best


def test_defocus_widget_camera_calibration_reaches_noise_aware_models(viewer, qtbot, tiny_models, synth, tmp_path):
    """The 'camera noise' row: estimated from the plane by default, or the calibration typed in."""
    import torch

    from napari_linblur.models.registry import load_model, save_model

    # the tiny noise-aware model, with its noise-channel and output weights scaled up so that a change of camera
    # moves the map by more than bf16 rounding
    net = load_model(tiny_models["defocus_noise"], device="cpu")
    with torch.no_grad():
        net.stem[0].weight[:, 1] *= 20.0
        net.head[-1].weight *= 50.0
    noisy_model = str(save_model(net, tmp_path / "noise-aware.safetensors", dict(net.card)))
    stack = synth[0]
    viewer.add_image(stack, name="img")
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    assert w.camera.isHidden()  # an image-only model does not read the camera: the row is not shown
    w.model.set_model(noisy_model)
    assert not w.camera.isHidden()
    settle(qtbot, w)
    z = _ops.current_indices(viewer, viewer.layers["img"])[0]
    name = f"defocus σ[img z{z}] (preview)"
    auto = nl.estimate_defocus(stack[z], model=noisy_model, tile=TILE)
    np.testing.assert_allclose(viewer.layers[name].data, auto, rtol=1e-5, atol=1e-5)
    assert w.camera.value() == "auto" and not w.camera.gain.isEnabled()
    w.camera.calibrated.setChecked(True)
    w.camera.gain.setValue(4.0)
    w.camera.offset.setValue(90.0)
    w.camera.read_noise.setValue(1.5)
    settle(qtbot, w)
    cam = {"gain": 4.0, "offset": 90.0, "read_noise": 1.5}
    assert w.camera.value() == cam and w.camera.gain.isEnabled()
    cal = nl.estimate_defocus(stack[z], model=noisy_model, tile=TILE, camera=cam)
    np.testing.assert_allclose(viewer.layers[name].data, cal, rtol=1e-5, atol=1e-5)
    assert not np.allclose(cal, auto)


def test_defocus_widget_writes_ome_zarr_and_reports_errors(viewer, qtbot, tiny_models, tmp_path):
    import dask.array as da

    data = da.from_array(np.random.default_rng(0).random((3, 40, 40)).astype(np.float32), chunks=(1, 40, 40))
    viewer.add_image(data, name="lazyimg", scale=(2.0, 1.0, 1.0))
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    target = tmp_path / "sigma.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    w.run_btn.click()
    wait_run(qtbot, w)
    assert target.exists()
    written = viewer.layers[-1]
    assert written.name == "defocus σ[lazyimg]" and written.data.shape == (3, 40, 40)
    assert tuple(written.scale) == (2.0, 1.0, 1.0)
    np.testing.assert_allclose(np.asarray(written.data[1]),
                               nl.estimate_defocus(np.asarray(data[1]), model=tiny_models["defocus"], tile=TILE),
                               rtol=1e-5, atol=1e-5)
    # a focus curve needs a stack: a 2-D image gives a notification naming the problem
    viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    w.image.set_layer(viewer.layers["flat"])
    assert not w.run_focus_curve()
    assert "needs a z-stack" in last_error()
    # a missing model file becomes a notification, not a silent failure
    w.model.set_model(str(tmp_path / "missing.safetensors"))
    w.preview_on.setChecked(True)
    settle(qtbot, w)
    assert w.preview.last_error and "does not exist" in w.preview.last_error
    assert "does not exist" in last_error()


def test_deblur_widget_single_and_pair(viewer, qtbot, tiny_models, synth):
    stack = synth[1]
    img8 = (stack[4] // 64).astype(np.uint8)  # 2-D uint8
    viewer.add_image(img8, name="img8")
    w = add(viewer, "Deblur")
    w.set_mode("single")
    w.method.setCurrentIndex(w.method.findData("network"))
    w.net_model.set_model(tiny_models["deblur"])
    w.defocus_model.set_model(tiny_models["defocus"])  # chosen for the other methods: not passed to the network
    settle(qtbot, w)
    with warnings.catch_warnings(record=True) as caught:  # the operation the preview runs, here in this thread
        warnings.simplefilter("always")
        w._op("single", None, "network")(img8)
    assert not [m for m in caught if "is not used" in str(m.message)]
    prev = viewer.layers["deblurred[img8, network] (preview)"]
    np.testing.assert_allclose(prev.data, nl.deblur(img8, method="network", model=tiny_models["deblur"],
                                                    tile=TILE), rtol=1e-4, atol=1e-3)
    assert prev.contrast_limits == viewer.layers["img8"].contrast_limits  # input intensity units
    # the network's self-ensemble is offered in single-image mode too and reaches the operation
    assert not w.tta.isHidden()
    w.tta.setCurrentIndex(w.tta.findData(2))
    settle(qtbot, w)
    np.testing.assert_allclose(viewer.layers["deblurred[img8, network] (preview)"].data,
                               nl.deblur(img8, method="network", model=tiny_models["deblur"], tile=TILE, tta=2),
                               rtol=1e-4, atol=1e-3)
    w.tta.setCurrentIndex(0)

    # pair mode on two planes of one stack: α slider, output named for what produced it
    layer = viewer.add_image(stack, name="st", scale=(2.0, 0.5, 0.5))
    deblur_pair_of(w, layer, 6, 2, tiny_models["ae"])
    w.alpha.slider.setValue(38)  # steps of 0.01 from 0.05
    settle(qtbot, w)
    name = "deblurred[st z6←z2, α=0.43] (preview)"
    assert w.alpha.value() == pytest.approx(0.43)
    prev = viewer.layers[name]
    np.testing.assert_allclose(prev.data, nl.deblur_pair(stack[6], stack[2], 0.43, model=tiny_models["ae"],
                                                         tile=TILE), rtol=1e-4, atol=1e-3)
    assert tuple(prev.scale) == (0.5, 0.5)
    # the self-ensemble option reaches the operation
    w.tta.setCurrentIndex(w.tta.findData(4))
    settle(qtbot, w)
    np.testing.assert_allclose(viewer.layers[name].data,
                               nl.deblur_pair(stack[6], stack[2], 0.43, model=tiny_models["ae"], tile=TILE, tta=4),
                               rtol=1e-4, atol=1e-3)
    w.tta.setCurrentIndex(0)

    # whole stack over two layers of one shape (planes paired index by index)
    other = viewer.add_image(stack.astype(np.float32) * 0.5, name="half", scale=(2.0, 0.5, 0.5))
    w.c_layer.set_layer(other)
    w.b_plane.setValue(3)
    w.c_plane.setValue(3)
    w.preview_on.setChecked(False)
    w.run_btn.click()
    wait_run(qtbot, w)
    out = viewer.layers[-1]
    assert out.name == "deblurred[st, half, α=0.43]"
    assert out.data.shape == stack.shape and tuple(out.scale) == (2.0, 0.5, 0.5)
    np.testing.assert_allclose(out.data[7], nl.deblur_pair(stack[7], stack[7] * np.float32(0.5), 0.43,
                                                           model=tiny_models["ae"], tile=TILE),
                               rtol=1e-4, atol=1e-3)
    # mismatched pair: a notification naming the problem, no layer added
    viewer.add_image(np.zeros((5, 20, 20), np.uint16), name="small")
    w.c_layer.set_layer(viewer.layers["small"])
    n = len(viewer.layers)
    assert not w.run_whole_stack()
    assert "do not line up" in last_error() and len(viewer.layers) == n


def test_pair_previews_say_when_the_planes_are_the_same_or_swapped(viewer, qtbot, tiny_models, synth):
    """Plane 8 of the sample is in focus, plane 0 the blurriest: a = 0, c = 8 (swapped) and a = c were shown as
    'preview up to date' without a word."""
    viewer.add_image(synth[0], name="st", scale=(4.0, 0.65, 0.65))
    w = add(viewer, "Blur synthesis")
    w.model.set_model(tiny_models["ae"])
    for a, c_, says in ((8, 0, None), (0, 8, "a looks blurrier than c"), (3, 3, "a and c are the same image")):
        w.a_plane.setValue(a)
        w.c_plane.setValue(c_)
        settle(qtbot, w)
        text = w.preview_status.text()
        assert text.startswith("preview up to date") and (says in text if says else "—" not in text), (a, c_, text)
    d = add(viewer, "Deblur")
    deblur_pair_of(d, viewer.layers["st"], 0, 6, tiny_models["ae"])  # b blurrier than c
    settle(qtbot, d)
    assert "b looks blurrier than c" in d.preview_status.text()


def test_blur_preview_is_debounced_and_newest_wins(viewer, qtbot, tiny_models, synth, monkeypatch):
    from napari_linblur.inference.latent_ops import synthesize_blur as real

    calls = []

    def counted(a, c, alpha, **kw):
        calls.append(alpha)
        time.sleep(0.05)
        return _ops.call_op(real, a, c, alpha, **kw)  # drops should_stop, which the op does not take

    monkeypatch.setitem(nl.__dict__, "synthesize_blur", counted)
    stack = synth[0]
    layer = viewer.add_image(stack, name="st", scale=(4.0, 0.65, 0.65))
    w = add(viewer, "Blur synthesis")
    w.model.set_model(tiny_models["ae"])
    w.a_plane.setValue(8)
    w.c_plane.setValue(0)
    settle(qtbot, w)
    calls.clear()
    from napari_linblur._napari._settings import set_setting

    assert set_setting("inference", "preview_delay_ms", 500)  # margin for a loaded CI machine
    # a fast drag: 16 slider positions within the debounce delay -> one or two computations
    for v in range(10, 90, 5):
        w.alpha.slider.setValue(v)
        qtbot.wait(5)
    settle(qtbot, w)
    assert 1 <= len(calls) <= 3 and calls[-1] == pytest.approx(0.85)
    prev = viewer.layers[-1]
    assert prev.name == "synthesized[st z8→z0, α=0.85] (preview)"
    np.testing.assert_allclose(prev.data, real(stack[8], stack[0], 0.85, model=tiny_models["ae"], tile=TILE),
                               rtol=1e-4, atol=1e-3)
    # a slow drag updates the preview at every stop
    calls.clear()
    for v in (20, 50, 70):
        w.alpha.slider.setValue(v)
        settle(qtbot, w)
        assert viewer.layers[-1].name.endswith(f"α={v / 100:.2f}] (preview)")
    assert len(calls) == 3
    # a request arriving while a preview computes supersedes it: the stale result is never shown
    monkeypatch.setitem(nl.__dict__, "synthesize_blur",
                        lambda *a, **k: (time.sleep(0.4), _ops.call_op(real, *a, **k))[1])
    w.alpha.slider.setValue(30)
    qtbot.waitUntil(lambda: bool(w.preview.workers), timeout=5000)
    w.alpha.slider.setValue(90)
    settle(qtbot, w)
    assert viewer.layers[-1].name.endswith("α=0.90] (preview)")
    assert layer.name == "st"


def test_whole_stack_run_keeps_gui_alive_and_cancel_leaves_nothing(viewer, qtbot, tiny_models, synth,
                                                                   monkeypatch, tmp_path):
    from qtpy.QtCore import QTimer

    from napari_linblur.inference.latent_ops import synthesize_blur as real
    from napari_linblur.inference.tiling import map_planes

    def slow(a, c, alpha, **kw):  # the public contract (dask in -> lazy dask out), 0.15 s per plane
        def plane(p, q):
            time.sleep(0.15)
            return _ops.call_op(real, p, q, alpha, **kw)

        return map_planes(plane, a, c)

    monkeypatch.setitem(nl.__dict__, "synthesize_blur", slow)
    big = np.concatenate([synth[0]] * 3)  # 27 planes
    la = viewer.add_image(big, name="a")
    lc = viewer.add_image(big[::-1].copy(), name="c")
    w = add(viewer, "Blur synthesis")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["ae"])
    w.a_layer.set_layer(la)
    w.c_layer.set_layer(lc)
    w.a_plane.setValue(0)
    w.c_plane.setValue(0)

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    for mode, path in ((w.output.LAYER, None), (w.output.ZARR, tmp_path / "out.ome.zarr")):
        w.output.set_mode(mode, str(path) if path else None)
        n_layers = len(viewer.layers)
        ticks.clear()
        assert w.run_whole_stack()
        qtbot.waitUntil(lambda: w.panel.bar.value() >= 2, timeout=15000)  # progress is reported
        n_ticks = len(ticks)
        qtbot.wait(300)
        assert len(ticks) >= n_ticks + 5  # the event loop keeps turning while the worker runs
        w.panel.cancel_btn.click()
        wait_run(qtbot, w)
        assert "cancelled" in w.panel.status.text()
        assert len(viewer.layers) == n_layers  # nothing half-computed is presented
        if path is not None:
            assert not path.exists()
            assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    timer.stop()




def test_train_widget_trains_and_shares_the_model(viewer, qtbot, tmp_path):
    w = small_training(viewer, tmp_path, steps=6)
    deb = add(viewer, "Deblur")
    w.set_choice(w.source, "synthetic")
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    assert w.model_path and os.path.exists(w.model_path), w.panel.status.text()
    assert len(w.plot.steps) >= 2 and w.plot.val_steps  # live loss curve and validation
    assert all(np.isfinite(w.plot.losses))
    # each loss on its own axis (deblurring trains on log10 MSE, validates with L1: one axis drew the latter flat)
    assert w.plot.ax.get_ylabel() == "training loss" and w.plot.val_ax.get_ylabel() == "validation loss"
    assert len(w.plot.ax.lines) == 1 and len(w.plot.val_ax.lines) == 1 and w.plot.val_ax.get_visible()
    items = [deb.net_model.combo.itemData(i) for i in range(deb.net_model.combo.count())]
    assert w.model_path in items
    from napari_linblur.models.registry import load_model

    m = load_model(w.model_path, device="cpu")
    assert m.task == "deblur" and m.card["training"]["steps"] == 6


def test_reader_opens_a_2gb_stack_lazily(viewer, tmp_path):
    import zarr

    path = tmp_path / "huge.zarr"
    z = zarr.create_array(store=str(path), shape=(64, 4096, 4096), chunks=(1, 1024, 1024), dtype="uint16",
                          fill_value=0)
    z[32, :1024, :1024] = np.arange(1024, dtype=np.uint16)[None, :]
    assert z.nbytes == 2 * 1024**3

    def rss() -> int:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS"))

    before = rss()
    layers = viewer.open(str(path), plugin=PLUGIN)
    after = rss()
    assert len(layers) == 1 and type(layers[0].data).__module__.startswith("dask")
    assert layers[0].data.shape == (64, 4096, 4096)
    print(f"RSS growth opening a 2 GiB stack: {(after - before) / 2**20:.0f} MiB")
    assert after - before < 400 * 1024**2, f"RSS grew by {(after - before) / 2**20:.0f} MiB"


def test_deblur_guided_and_auto_alpha(viewer, qtbot, tiny_models, synth):
    import dask.array as da

    stack = da.from_array(synth[0], chunks=(1, 48, 64))  # a lazy uint16 layer
    layer = viewer.add_image(stack, name="dk", scale=(4.0, 0.65, 0.65))
    w = add(viewer, "Deblur")
    w.set_mode("guided")
    w.net_model.set_model(tiny_models["deblur"])
    w.defocus_model.set_model(tiny_models["defocus"])
    viewer.dims.set_current_step(0, 3)
    settle(qtbot, w)
    prev = viewer.layers["deblurred[dk z3, guided] (preview)"]
    expect = nl.deblur(np.asarray(stack[3]), method="guided", model=tiny_models["deblur"],
                       defocus_model=tiny_models["defocus"], tile=TILE)
    np.testing.assert_allclose(prev.data, expect, rtol=1e-4, atol=1e-3)
    # pair with automatic alpha
    deblur_pair_of(w, layer, 6, 2, tiny_models["ae"])
    w.auto_alpha.setChecked(True)
    settle(qtbot, w)
    assert not w.alpha.isEnabled()
    from napari_linblur.inference.latent_ops import auto_alpha

    # the estimated α is shown, in the preview's name and on the slider (it said α=auto and kept 0.50)
    est = auto_alpha(np.asarray(stack[6]), np.asarray(stack[2]), model=tiny_models["ae"])
    prev = viewer.layers[f"deblurred[dk z6←z2, α=auto {est:.2f}] (preview)"]
    assert w.alpha.value() == pytest.approx(est, abs=0.005) and "(estimated)" in w.alpha.label.text()
    expect = nl.deblur_pair(np.asarray(stack[6]), np.asarray(stack[2]), None, model=tiny_models["ae"], tile=TILE)
    np.testing.assert_allclose(prev.data, expect, rtol=1e-4, atol=1e-3)


def test_samples_open_and_layers_save_through_the_plugin(viewer, tmp_path):
    from napari_linblur.io.readers import open_zstack_with_metadata

    layers = viewer.open_sample(PLUGIN, "synthetic_stack")
    assert [ly.name for ly in layers] == ["synthetic [w1]", "synthetic [w2]"]
    assert layers[0].data.shape == (9, 256, 256) and tuple(layers[0].scale) == (4.0, 0.65, 0.65)
    viewer.layers.selection = {layers[0]}
    out = viewer.layers.save(str(tmp_path / "w1.ome.zarr"), selected=True, plugin=PLUGIN)
    assert out == [str(tmp_path / "w1.ome.zarr")]
    arr, meta = open_zstack_with_metadata(out[0])
    np.testing.assert_array_equal(np.asarray(arr), layers[0].data)
    assert meta.scale == (4.0, 0.65, 0.65) and meta.units == ("micrometer",) * 3
    assert meta.channel_names == ["w1"] and open_zstack_with_metadata(out[0], channel="w1")[0].shape == (9, 256, 256)
    # both channels in one file keep their channel names, and the units of the layers
    viewer.layers.selection = set(layers)
    both = viewer.layers.save(str(tmp_path / "both.ome.zarr"), selected=True, plugin=PLUGIN)
    arr2, meta2 = open_zstack_with_metadata(both[0])
    assert meta2.axes == "czyx" and meta2.channel_names == ["w1", "w2"]
    assert meta2.units == (None, "micrometer", "micrometer", "micrometer")
    # a layer in nanometres is written in nanometres; an uncalibrated one without a unit
    nm = viewer.add_image(np.ones((2, 16, 16), np.float32), name="nm", scale=(200.0, 65.0, 65.0),
                          units=("nanometer",) * 3, translate=(400.0, 1300.0, 650.0))
    plain = viewer.add_image(np.ones((2, 16, 16), np.float32), name="plain")
    for layer, units in ((nm, ("nanometer",) * 3), (plain, (None,) * 3)):
        viewer.layers.selection = {layer}
        saved = viewer.layers.save(str(tmp_path / f"{layer.name}.ome.zarr"), selected=True, plugin=PLUGIN)
        assert open_zstack_with_metadata(saved[0])[1].units == units
        again = viewer.open(saved[0], plugin=PLUGIN)[0]  # back in the same place
        assert tuple(again.translate) == tuple(layer.translate) and tuple(again.scale) == tuple(layer.scale)
    # refusals reach the user (napari drops a writer's ValueError silently): RGB, and saving over the input
    rgb = viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb", rgb=True)
    viewer.layers.selection = {rgb}
    with pytest.raises(OSError, match="is RGB"):
        viewer.layers.save(str(tmp_path / "rgb.ome.zarr"), selected=True, plugin=PLUGIN)
    assert not (tmp_path / "rgb.ome.zarr").exists()
    # the written pyramid reopens as a lazy multiscale layer that the widgets read at full resolution
    reopened = viewer.open(out[0], plugin=PLUGIN)[0]
    assert reopened.multiscale and [d.shape[-1] for d in reopened.data] == [256, 128, 64]
    assert tuple(reopened.scale) == (4.0, 0.65, 0.65)
    np.testing.assert_array_equal(_ops.current_plane(viewer, reopened, 3), layers[0].data[3])
    viewer.layers.selection = {reopened}
    with pytest.raises(OSError, match="refusing to overwrite its own input"):
        viewer.layers.save(out[0], selected=True, plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(open_zstack_with_metadata(out[0])[0]), layers[0].data)
    try:
        real = viewer.open_sample(PLUGIN, "bbbc006")
    except Exception as err:  # the image is optional; its absence must be a clear error
        assert "BBBC006 sample image not found" in str(err)
    else:
        assert real[0].data.shape == (1, 520, 696) and real[0].name.startswith("BBBC006 k06 s2 w1")


def _train_on_layer(w, viewer, qtbot, name, timeout=60000):
    """Point the Train widget at the image layer ``name``, run it and wait for the model."""
    w.set_choice(w.source, "layer")
    w.layer.set_layer(viewer.layers[name])
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=timeout)
    assert w.model_path, w.panel.status.text()


def test_train_widget_from_an_image_layer(viewer, qtbot, tmp_path, synth):
    viewer.add_image(synth[0], name="stack")
    w = small_training(viewer, tmp_path, steps=4)
    _train_on_layer(w, viewer, qtbot, "stack")
    from napari_linblur.models.registry import read_card

    card = read_card(w.model_path)
    assert card["task"] == "deblur" and card["training"]["steps"] == 4
    assert (tmp_path / "run" / "data.ome.zarr").exists()
    # the autoencoder learns from fields x planes (here 3 seeded fields) and cannot use built-in data
    fields = np.stack([synthetic_stack_data((48, 64), seed=s)[0][0] for s in (11, 12, 13)])
    viewer.add_image(fields, name="fields")
    w.set_choice(w.kind, "ae")
    assert w.source.findData("synthetic") < 0
    w.set_choice(w.preset, "default")
    w.set_choice(w.source, "layer")
    w.layer.set_layer(viewer.layers["fields"])
    w.steps.setValue(2)
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    card = read_card(w.model_path)
    assert card["task"] == "ae" and card["training"]["steps"] == 2, w.panel.status.text()
    assert w.model_path.startswith(str(tmp_path / "run-2"))  # a new run folder, the first run is kept


def test_single_plane_run_reports_per_tile_progress(viewer, qtbot, tiny_models):
    img = np.random.default_rng(2).random((300, 300)).astype(np.float32)
    viewer.add_image(img, name="flat", scale=(0.5, 0.5))
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    from napari_linblur._napari._settings import set_setting

    assert set_setting("inference", "tile_size", 128)  # Preferences > Plugins > napari-linblur
    seen = []
    expect = nl.estimate_defocus(img, model=tiny_models["defocus"], tile=128,
                                 progress=lambda d, t: seen.append((d, t)))
    w.run_btn.click()
    wait_run(qtbot, w)
    out = viewer.layers["defocus σ[flat]"]
    np.testing.assert_allclose(out.data, expect, rtol=1e-5, atol=1e-5)
    assert tuple(out.scale) == (0.5, 0.5)
    assert seen and w.panel.last_progress == seen[-1]  # the tiles of the one plane


def test_defocus_widget_outlines_the_signal(viewer, qtbot, tiny_models, synth):
    import napari

    from napari_linblur.inference.defocus_ops import signal_mask

    stack = synth[0]  # (9, 48, 64) uint16
    layer = viewer.add_image(stack, name="img", scale=(4.0, 0.65, 0.65), translate=(0.0, 10.0, 20.0))
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    assert not w.outline.isChecked() and not any(ly.name.startswith("signal outline") for ly in viewer.layers)
    w.outline.setChecked(True)
    settle(qtbot, w)
    z = _ops.current_indices(viewer, layer)[0]
    out = viewer.layers[f"signal outline[img z{z}] (preview)"]
    assert isinstance(out, napari.layers.Labels) and out.contour == 1
    np.testing.assert_array_equal(out.data, signal_mask(stack[z]).astype(np.uint8))
    assert out.data.any() and not out.data.all()
    assert tuple(out.scale) == (0.65, 0.65) and tuple(out.translate) == (10.0, 20.0)
    assert viewer.layers.index(out) > viewer.layers.index(viewer.layers[f"defocus σ[img z{z}] (preview)"])
    # the outline follows the viewer's plane, in the same layer
    viewer.dims.set_current_step(0, 2)
    settle(qtbot, w)
    assert out.name == "signal outline[img z2] (preview)" and out in viewer.layers
    np.testing.assert_array_equal(out.data, signal_mask(stack[2]).astype(np.uint8))
    # placed like the live map, rotation included, and moved with it when the input moves (it used to stay behind)
    live = viewer.layers["defocus σ[img z2] (preview)"]
    layer.rotate = 15
    layer.translate = (0.0, 50.0, 60.0)
    for ly in (live, out):
        assert tuple(ly.translate) == (50.0, 60.0), ly.name
        np.testing.assert_allclose(ly.rotate, live.rotate)
    assert not np.allclose(out.rotate, np.eye(2)) and tuple(out.axis_labels) == tuple(live.axis_labels)
    layer.rotate = 0
    layer.translate = (0.0, 10.0, 20.0)
    # a plane without structure: the layer says the whole map is interpolated
    viewer.add_image(np.full((48, 64), 100, np.uint16), name="flat")
    w.image.set_layer(viewer.layers["flat"])
    settle(qtbot, w)
    assert out.name == "signal outline[flat] (no signal: the whole map is interpolated)" and not out.data.any()
    # unticked: the outline layer goes, the map stays
    w.outline.setChecked(False)
    assert not any(ly.name.startswith("signal outline") for ly in viewer.layers)
    assert "defocus σ[flat] (preview)" in viewer.layers
    # the outline belongs to the live map: greyed out without it
    w.preview_on.setChecked(False)
    assert not w.outline.isEnabled()
    w.preview_on.setChecked(True)
    assert w.outline.isEnabled()


def test_defocus_widget_shows_micrometres_of_defocus(viewer, qtbot, tiny_models, synth):
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um
    from napari_linblur.optics.psf import OpticalSetup

    stack = synth[0]  # (9, 48, 64) uint16
    layer = viewer.add_image(stack, name="img", scale=(4.0, 0.5, 0.5), units=("micrometer",) * 3)
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    assert w.units.currentData() == "px" and w.optics.isHidden()
    w.units.setCurrentIndex(w.units.findData("um"))
    settle(qtbot, w)
    assert not w.optics.isHidden() and w.optics.pixel.value() == 0.5  # from the layer's scale in µm
    # another length unit is converted; a unit that is not a length keeps the user's value
    nm = viewer.add_image(stack[0], name="nm", scale=(650.0, 650.0), units=("nanometer",) * 2)
    assert w.optics.take_pixel_size(nm) and w.optics.pixel.value() == pytest.approx(0.65)
    px = viewer.add_image(stack[0], name="px", scale=(3.0, 3.0))
    assert not w.optics.take_pixel_size(px) and w.optics.pixel.value() == pytest.approx(0.65)
    viewer.layers.remove(nm)
    viewer.layers.remove(px)
    viewer.layers.selection.active = layer
    w.optics.take_pixel_size(layer)
    settle(qtbot, w)
    z = _ops.current_indices(viewer, layer)[0]
    prev = viewer.layers[f"defocus µm[img z{z}] (preview)"]
    sigma = nl.estimate_defocus(stack[z], model=tiny_models["defocus"], tile=TILE)
    setup = OpticalSetup(na=0.45, wavelength_um=0.52, pixel_um=0.5)
    np.testing.assert_allclose(prev.data, sigma_to_defocus_um(sigma, setup=setup), rtol=1e-5, atol=1e-4)
    assert prev.data.min() > 0
    # the optics reach the map
    w.optics.na.setValue(0.8)
    settle(qtbot, w)
    np.testing.assert_allclose(prev.data, sigma_to_defocus_um(sigma, setup=setup.replace(na=0.8)),
                               rtol=1e-5, atol=1e-4)
    # impossible optics: a clear error, the last map kept
    before = prev.data.copy()
    w.optics.na.setValue(1.2)
    settle(qtbot, w)
    assert "na must be smaller than ni" in w.preview.last_error
    np.testing.assert_array_equal(prev.data, before)
    w.optics.na.setValue(0.45)
    settle(qtbot, w)

    # whole stack in µm, with its units and optics on the layer
    w.preview_on.setChecked(False)
    w.run_btn.click()
    wait_run(qtbot, w)
    out = viewer.layers["defocus µm[img]"]
    np.testing.assert_allclose(out.data[3], sigma_to_defocus_um(
        nl.estimate_defocus(stack[3], model=tiny_models["defocus"], tile=TILE), setup=setup), rtol=1e-5, atol=1e-4)
    assert out.metadata["linblur_units"] == "µm (|defocus|)" and out.metadata["linblur_optics"]["pixel_um"] == 0.5

    # back to σ in px
    w.preview_on.setChecked(True)
    w.units.setCurrentIndex(w.units.findData("px"))
    settle(qtbot, w)
    assert w.optics.isHidden()
    np.testing.assert_allclose(viewer.layers[f"defocus σ[img z{z}] (preview)"].data, sigma, rtol=1e-5, atol=1e-5)


def test_defocus_widget_with_the_shipped_model(viewer, qtbot):
    from napari_linblur.models.registry import list_models

    if "defocus-default" not in list_models():
        pytest.skip("defocus-default is not shipped in this checkout")
    # plane 0: 32 um above focus, plane 8: in focus. 128² px: on smaller fields a few cells fill the view and the
    # separation depends on their layout (at 96² both the shipped model and the one before read 5.2 vs 4.2 px)
    stack = synthetic_stack_data((128, 128), seed=5)[0][0]
    viewer.add_image(stack, name="syn", scale=(4.0, 0.65, 0.65))
    w = add(viewer, "Defocus map & focus QC")
    assert w.model.combo.currentText() == "default (defocus-default)" and w.model.model() is None
    medians = {}
    for z in (8, 0):
        viewer.dims.set_current_step(0, z)
        settle(qtbot, w, timeout=60000)
        prev = viewer.layers[f"defocus σ[syn z{z}] (preview)"]
        assert prev.data.shape == (128, 128)
        medians[z] = float(np.median(prev.data))
    # the shipped network sees the defocused plane as much blurrier than the in-focus one
    assert medians[0] > medians[8] + 2.0, medians


def test_blur_synthesis_with_the_shipped_autoencoder(viewer, qtbot):
    from napari_linblur.metrics.focus import variance_of_laplacian
    from napari_linblur.models.registry import list_models

    if "ae-default" not in list_models():
        pytest.skip("ae-default is not shipped in this checkout")
    stack = synthetic_stack_data((64, 64), seed=5)[0][0]
    viewer.add_image(stack, name="syn")
    w = add(viewer, "Blur synthesis")
    assert w.model.combo.currentText() == "default (ae-default)"
    w.a_plane.setValue(8)  # in focus
    w.c_plane.setValue(4)  # 16 um out
    a, c = stack[8].astype(np.float32), stack[4].astype(np.float32)
    out = {}
    for v in (100, 50, 0):
        w.alpha.slider.setValue(v)
        settle(qtbot, w, timeout=60000)
        prev = viewer.layers[-1]
        assert prev.name == f"synthesized[syn z8→z4, α={v / 100:.2f}] (preview)"
        out[v] = prev.data
    mse = lambda x, y: float(np.mean((x - y) ** 2))  # noqa: E731
    assert mse(out[100], a) < mse(out[100], c) and mse(out[0], c) < mse(out[0], a)
    sharp = [variance_of_laplacian(out[v]) for v in (100, 50, 0)]
    assert sharp[0] > sharp[1] > sharp[2]  # blur grows as alpha falls from a to c


def test_single_image_deblur_with_the_shipped_network(viewer, qtbot):
    from napari_linblur.models.registry import list_models

    if "deblur-default" not in list_models():
        pytest.skip("deblur-default is not shipped in this checkout")
    stack = synthetic_stack_data((64, 64), seed=5)[0][0]
    layer = viewer.add_image(stack, name="syn")
    w = add(viewer, "Deblur")
    w.set_mode("single")
    w.method.setCurrentIndex(w.method.findData("network"))
    assert w.net_model.combo.currentText() == "default (deblur-default)"
    viewer.dims.set_current_step(0, 7)  # 4 um above the in-focus plane 8
    settle(qtbot, w, timeout=60000)
    prev = viewer.layers["deblurred[syn z7, network] (preview)"]
    sharp, blurred = stack[8].astype(np.float32), stack[7].astype(np.float32)
    mse = lambda x, y: float(np.mean((x - y) ** 2))  # noqa: E731
    assert mse(prev.data, sharp) < mse(blurred, sharp)  # closer to the in-focus plane than its input
    assert layer.name == "syn"


def test_train_widget_cancel_keeps_checkpoint_and_adds_no_model(viewer, qtbot, tmp_path):
    w = small_training(viewer, tmp_path, steps=500)
    before = _ops.USER_MODELS.get("deblur")
    assert w.start()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 1, timeout=60000)
    w.panel.cancel_btn.click()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    assert "stopped before the end" in w.result_label.text()
    assert _ops.USER_MODELS.get("deblur") == before and w.model_path is None
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_train_widget_defocus_uses_the_shipped_recipe_and_fine_tunes(viewer, qtbot, tmp_path):
    from napari_linblur._napari import _train
    from napari_linblur.models.registry import read_card
    from napari_linblur.training.defocus import card_recipe

    w = small_training(viewer, tmp_path, steps=2, kind="defocus", preset="default")
    assert w.init.currentData() == "" and not w.preset.isHidden()  # new weights by default, size offered
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=120000)
    assert w.model_path, w.panel.status.text()
    card = read_card(w.model_path)
    recipe = card["data"]["recipe"]
    shipped = card_recipe("defocus-default")
    # the shipped model's data recipe (noise-aware input, full-range maps, low contrast), at the widget's sizes
    assert recipe["noise_input"] == shipped["noise_input"] == "map" and card["config"]["in_channels"] == 2
    assert recipe["full_range"] == shipped["full_range"] and recipe["low_contrast"] == shipped["low_contrast"]
    assert recipe["crop"] == 32 and recipe["batch_size"] == 2
    assert card["bn_recalibration"]["batches"] == 64  # BatchNorm statistics re-estimated, as the CLI does
    assert card["training"]["channels_last"] is True  # the faster layout the results page measured

    # the run is offered as a starting point; fine-tuning keeps its architecture and hides the size row
    first = w.model_path
    w.set_choice(w.init, first)
    assert w.preset.isHidden()
    w.set_choice(w.init, "defocus-default")  # the shipped model
    w.steps.setValue(1)
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=120000)
    assert w.model_path and w.model_path != first, w.panel.status.text()
    card = read_card(w.model_path)
    assert card["config"] == read_card("defocus-default")["config"] and card["init"]["from"] == "defocus-default"
    assert card["training"]["steps"] == 1

    # a model of another kind is refused with the accepted form, before any work
    with pytest.raises(ValueError, match="not a HDMENet"):
        _train.build_task(_train.TrainRequest(kind="defocus", preset="default", init="deblur-default"))


def test_train_widget_defocus_learns_from_an_image_layer(viewer, qtbot, tmp_path, synth):
    """Defocus training on the user's own data: the sharpest plane of the layer (pixel-shuffled) is the content,
    recorded in the card; a layer with NaN pixels is refused before the run."""
    from napari_linblur.models.registry import read_card

    stack = synth[0]  # (Z=9, Y, X), in focus at the last plane
    viewer.add_image(stack, name="mine")
    w = small_training(viewer, tmp_path, steps=1, kind="defocus", preset="default")
    _train_on_layer(w, viewer, qtbot, "mine", timeout=120000)
    card = read_card(w.model_path)
    assert card["data"]["recipe"]["content_from"] == str(tmp_path / "run" / "data.ome.zarr")
    assert card["data"]["content_planes"] == [{"stack": 0, "plane": 8}]
    bad = stack.astype(np.float32)
    bad[2, 3, 4] = np.nan
    viewer.add_image(bad, name="holes")
    w.layer.set_layer(viewer.layers["holes"])
    assert not w.start()
    assert "NaN" in w.panel.status.text() and "holes" in w.panel.status.text()


def test_pair_outputs_are_placed_like_the_input_and_follow_time(viewer, qtbot, tiny_models, synth, tmp_path):
    """The OME-Zarr output of a pair run reopens with the written axes (a one-plane Z axis spanning the input's Z,
    not at world z = 0), in the input's place and units; the live preview follows the time slider; a 2-D image
    cannot be its own pair."""
    from napari_linblur.io.omezarr import write_ome_zarr

    stack = synth[0][:4].astype(np.float32)
    t_stack = np.stack([stack, stack[:, ::-1]])  # (T=2, Z=4, Y, X): the second time point is mirrored
    src = write_ome_zarr(tmp_path / "in.zarr", t_stack, axes="tzyx", scale=(1.0, 2.0, 0.5, 0.5))
    (layer,) = viewer.open(str(src), plugin=PLUGIN)
    layer.translate = (10.0, 4.0, 5.0, 7.0)
    w = add(viewer, "Blur synthesis")
    w.model.set_model(tiny_models["ae"])
    w.a_layer.set_layer(layer)
    w.c_layer.set_layer(layer)
    w.a_plane.setValue(1)
    w.c_plane.setValue(3)
    settle(qtbot, w)
    prev = next(ly for ly in viewer.layers if ly.name.endswith("(preview)"))
    assert tuple(str(u) for u in prev.units) == ("micrometer", "micrometer")
    first = np.array(prev.data)
    viewer.dims.set_current_step(0, 1)  # the time slider
    settle(qtbot, w)
    np.testing.assert_allclose(prev.data, nl.synthesize_blur(t_stack[1, 1], t_stack[1, 3], w.alpha.value(),
                                                             model=tiny_models["ae"], tile=TILE),
                               rtol=1e-4, atol=1e-3)
    assert not np.allclose(prev.data, first)

    w.preview_on.setChecked(False)
    w.output.set_mode(w.output.ZARR, str(tmp_path / "out.zarr"))
    n = len(viewer.layers)
    w.run_btn.click()
    wait_run(qtbot, w)
    assert len(viewer.layers) == n + 1, w.panel.status.text()
    out = viewer.layers[-1]
    data = out.data[0] if out.multiscale else out.data
    assert data.shape == (2, 1, 48, 64)  # (T, Z=1, Y, X): one plane per time point, as deep as the input's 4
    assert tuple(out.translate) == (10.0, 7.0, 5.0, 7.0) and tuple(out.scale) == (1.0, 8.0, 0.5, 0.5)
    assert tuple(str(u) for u in out.units) == tuple(str(u) for u in layer.units)
    # the file and the layer say what was computed
    assert out.metadata["linblur_attrs"]["operation"] == "synthesize_blur"
    assert out.metadata["linblur_attrs"]["alpha"] == w.alpha.value()
    assert tuple(str(u) for u in out.units)[-2:] == ("micrometer", "micrometer")

    # a 2-D image alone: the preview waits saying what is missing (not "img against itself"), a run refuses
    viewer.layers.clear()
    flat = viewer.add_image(stack[0], name="flat")
    w.a_layer.set_layer(flat)
    w.c_layer.set_layer(flat)
    w.preview_on.setChecked(True)
    settle(qtbot, w)
    assert w.preview_status.text().startswith("waiting: ") and "single 2-D plane" in w.preview_status.text()
    assert not [ly for ly in viewer.layers if ly.name.endswith("(preview)")]
    assert not w.run_whole_stack()
    assert "single 2-D plane" in last_error() and "single 2-D plane" in w.panel.status.text()


def test_no_input_is_waiting_not_an_error_and_removal_stops_runs(viewer, qtbot, tiny_models, synth, tmp_path):
    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    widgets = {name: add(viewer, name) for name in ("Blur synthesis", "Deblur", "Defocus map & focus QC")}
    for w in widgets.values():
        settle(qtbot, w)
        assert w.preview.last_error is None and w.preview_status.text().startswith("waiting: pick")
    assert len(notification_manager.records) == before  # an empty viewer raises no error pop-ups
    # the live map of a layer that is deleted goes with it
    d = widgets["Defocus map & focus QC"]
    d.model.set_model(tiny_models["defocus"])
    d.outline.setChecked(True)
    layer = viewer.add_image(synth[0], name="img")
    settle(qtbot, d)
    assert any(ly.name.endswith("(preview)") for ly in viewer.layers)
    viewer.layers.remove(layer)
    settle(qtbot, d)
    assert len(viewer.layers) == 0 and len(notification_manager.records) == before

    # removing a dock cancels its running job: nothing is added afterwards, the run stops early
    w = small_training(viewer, tmp_path, steps=100000)
    w.set_choice(w.source, "synthetic")
    assert w.start()
    qtbot.waitUntil(lambda: len(w.plot.steps) >= 1, timeout=60000)
    viewer.window.remove_dock_widget(viewer.window._dock_widgets["Train (napari-linblur)"])
    qtbot.waitUntil(lambda: not w.panel.running, timeout=60000)
    assert w.model_path is None and "stopped before the end" in w.result_label.text()


def _um_top(**optics) -> float:
    """|defocus| in µm of σ = 10 px (the top of the trained range) through the optics calibration."""
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um
    from napari_linblur.optics.psf import OpticalSetup

    return float(np.asarray(sigma_to_defocus_um(np.array([10.0]), setup=OpticalSetup(**optics))).ravel()[0])


def test_defocus_live_map_has_fixed_contrast_limits_and_keeps_the_users(viewer, qtbot, tiny_models, synth):
    """The live map is shown on the trained range (σ 0–10 px, or its |defocus| in µm), so one colour is one σ on
    every plane; limits the user sets are kept while the map follows the planes; a change of units sets the range
    of the new units; whole-stack outputs use the same range."""
    viewer.add_image(synth[0], name="img", scale=(4.0, 0.5, 0.5), units=("micrometer",) * 3)
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    prev = next(ly for ly in viewer.layers if ly.name.endswith("(preview)"))
    np.testing.assert_allclose(prev.contrast_limits, (0.0, 10.0))
    for z in (0, 8):
        viewer.dims.set_current_step(0, z)
        settle(qtbot, w)
        assert prev.name == f"defocus σ[img z{z}] (preview)"
        np.testing.assert_allclose(prev.contrast_limits, (0.0, 10.0))
    # the user's limits stay while the map follows the Z slider
    prev.contrast_limits = (0.5, 3.0)
    viewer.dims.set_current_step(0, 4)
    settle(qtbot, w)
    assert prev.name == "defocus σ[img z4] (preview)"
    np.testing.assert_allclose(prev.contrast_limits, (0.5, 3.0))
    # new units: the µm of the same σ range
    w.units.setCurrentIndex(w.units.findData("um"))
    settle(qtbot, w)
    assert prev.name == "defocus µm[img z4] (preview)"
    np.testing.assert_allclose(prev.contrast_limits, (0.0, _um_top(na=0.45, wavelength_um=0.52, pixel_um=0.5)),
                               rtol=1e-5)
    w.units.setCurrentIndex(w.units.findData("px"))
    settle(qtbot, w)
    np.testing.assert_allclose(prev.contrast_limits, (0.0, 10.0))
    # a computed whole-stack map: the same range, not limits of its own data
    w.preview_on.setChecked(False)
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    out = viewer.layers["defocus σ[img]"]
    np.testing.assert_allclose(out.contrast_limits, (0.0, 10.0))
    assert out.colorbar.visible


def test_defocus_live_map_reuses_the_network_map_when_only_its_display_changes(viewer, qtbot, tiny_models, synth):
    """Units, optics and the per-tile options are computed from the plane's per-pixel σ map: changing them reuses
    that map (each keystroke in an optics field re-ran the network: seconds on a 1024² plane), with the same
    result as a fresh estimate; a new plane or another network option runs the network again."""
    import napari_linblur as nl
    from napari_linblur.inference.defocus_ops import sigma_to_defocus_um

    img = viewer.add_image(synth[0], name="img", scale=(4.0, 0.5, 0.5), units=("micrometer",) * 3)
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    viewer.dims.set_current_step(0, 3)
    settle(qtbot, w)
    first = w._sigma_cache[1]
    prev = next(ly for ly in viewer.layers if ly.name.endswith("(preview)"))
    plane = np.asarray(img.data[3])
    kw = {"model": tiny_models["defocus"], "device": "cpu"}
    np.testing.assert_allclose(prev.data, nl.estimate_defocus(plane, **kw), atol=1e-4)
    w.units.setCurrentIndex(w.units.findData("um"))
    settle(qtbot, w)
    assert w._sigma_cache[1] is first  # no new network run
    np.testing.assert_allclose(prev.data, sigma_to_defocus_um(first, setup=w._optics_setup()), rtol=1e-5)
    w.units.setCurrentIndex(w.units.findData("px"))
    w.map_mode.setCurrentIndex(w.map_mode.findData("patch"))
    settle(qtbot, w)
    prev = next(ly for ly in viewer.layers if ly.name.endswith("(preview)"))
    assert w._sigma_cache[1] is first
    size, pixels = int(w.patch_size.value()), w._mode_kwargs()["patch_pixels"]
    np.testing.assert_allclose(prev.data, nl.estimate_defocus(plane, mode="patch", patch_size=size,
                                                              patch_pixels=pixels, **kw), atol=1e-4)
    viewer.dims.set_current_step(0, 5)  # another plane: the network runs
    settle(qtbot, w)
    assert w._sigma_cache[1] is not first


def test_defocus_live_map_ignores_other_layers_sliders(viewer, qtbot, tiny_models, synth):
    a = viewer.add_image(synth[0], name="A")  # (Z, Y, X)
    viewer.add_image(np.zeros((3, *synth[0].shape), np.float32), name="B time-lapse")  # adds a T axis to the viewer
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    w.image.set_layer(a)
    settle(qtbot, w)
    generation = w.preview.generation
    for t in (1, 2):
        viewer.dims.set_current_step(0, t)  # B's T slider: A's plane is unchanged
    qtbot.wait(400)
    assert w.preview.generation == generation and not w.preview.busy
    viewer.dims.set_current_step(1, 2)  # A's Z slider
    settle(qtbot, w)
    assert w.preview.generation == generation + 1
    assert viewer.layers[-1].name == "defocus σ[A z2] (preview)"


def _two_positions(viewer, synth):
    """A (T=2, Z, Y, X) layer read as 'tzyx' whose t=1 is t=0 upside down (its best plane at the other end)."""
    stack = synth[0]
    data = np.stack([stack, stack[::-1]])
    return viewer.add_image(data, name="tz", scale=(1.0, 4.0, 0.65, 0.65), translate=(0.0, 100.0, 0.0, 0.0),
                            metadata={"linblur_axes": "tzyx"})


def test_focus_curve_belongs_to_the_position_it_was_computed_for(viewer, qtbot, synth):
    """A curve computed at t=0 says so; after moving to t=1 the label says the curve is of t=0, and 'Go to best
    plane' goes back to t=0 (the plane whose score is plotted)."""
    layer = _two_positions(viewer, synth)
    best = [nl.best_focus(layer.data[t], method="brenner") for t in (0, 1)]
    assert best[0] != best[1]
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    viewer.dims.set_current_step(0, 0)
    w.curve_btn.click()
    wait_run(qtbot, w)
    assert w.plot.best == best[0] and w.best_label.text() == f"best plane of tz at t=0: z = {best[0]}"
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, best[1])
    text = w.best_label.text()
    assert "this curve is of t=0" in text and "the viewer shows t=1" in text and w.goto_btn.isEnabled()
    assert w.plot._current_line is None  # the viewer's plane is not a plane of this curve
    w.goto_btn.click()
    assert _ops.current_indices(viewer, layer) == (0, best[0])
    assert w.best_label.text() == f"best plane of tz at t=0: z = {best[0]}"


def test_focus_curve_of_a_layer_deleted_mid_run_is_dropped(viewer, qtbot, synth):
    layer = viewer.add_image(synth[0], name="gone")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    assert w.run_focus_curve()
    viewer.layers.remove(layer)  # before the result reaches the GUI thread
    wait_run(qtbot, w)
    # an ordinary turn of events: said on the status line, not as an error notification
    assert "'gone' was deleted" in w.panel.status.text() and "'gone' was deleted" not in last_error()
    assert w.plot.scores is None and not w.goto_btn.isEnabled()
    # a curve whose layer is deleted afterwards goes with it
    layer = viewer.add_image(synth[0], name="later")
    w.image.set_layer(layer)
    w.run_focus_curve()
    wait_run(qtbot, w)
    assert w.goto_btn.isEnabled()
    viewer.layers.remove(layer)
    assert w.plot.scores is None and not w.goto_btn.isEnabled() and "'later' was deleted" in w.best_label.text()
    w.go_to_best()  # e.g. through a shortcut: says why nothing happens
    assert "press 'Focus curve'" in last_error()


def test_a_focus_curve_goes_stale_when_its_layer_gets_new_data(viewer, qtbot, synth):
    """``layer.data = ...`` after a focus curve: the curve, its best plane and 'Go to best plane' described data that
    is gone (the button went to a plane the label called best, of other data); they are cleared and the label says
    to score again."""
    layer = viewer.add_image(synth[0], name="cells")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.measure.setCurrentIndex(w.measure.findData("brenner"))
    assert w.run_focus_curve()
    wait_run(qtbot, w)
    assert w.goto_btn.isEnabled() and w.plot.scores is not None
    layer.data = synth[0][::-1][: max(2, synth[0].shape[0] // 2)]
    assert w.plot.scores is None and not w.goto_btn.isEnabled()
    assert "data of 'cells' changed" in w.best_label.text()
    assert w.run_focus_curve()  # and it can be scored again
    wait_run(qtbot, w)
    assert w.goto_btn.isEnabled() and len(w.plot.scores) == layer.data.shape[0]


def test_defocus_ome_zarr_records_what_it_holds(viewer, qtbot, tiny_models, synth, tmp_path):
    import zarr

    viewer.add_image(synth[0][:3], name="img", scale=(4.0, 0.5, 0.5), units=("micrometer",) * 3)
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    w.units.setCurrentIndex(w.units.findData("um"))
    target = tmp_path / "defocus.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(target))
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    # the file says what its values are, with the keys of `linblur defocus-map`
    attrs = zarr.open_group(str(target), mode="r").attrs.asdict().get("linblur", {})
    assert attrs.get("operation") == "defocus-map", attrs
    assert attrs["unit"].startswith("micrometer (|defocus|")
    assert attrs["optics"]["pixel_um"] == 0.5 and attrs["optics"]["na"] == 0.45
    assert attrs["model"] == tiny_models["defocus"] and attrs["camera"] == "auto"
    # and so does the layer it reopens as, as a computed or lazy map does
    out = viewer.layers[-1]
    assert out.name == "defocus µm[img]" and out.metadata["linblur_units"] == "µm (|defocus|)"
    assert out.metadata["linblur_optics"]["pixel_um"] == 0.5
    assert out.metadata["linblur_attrs"]["unit"] == attrs["unit"]
    np.testing.assert_allclose(out.contrast_limits, (0.0, _um_top(na=0.45, wavelength_um=0.52, pixel_um=0.5)),
                               rtol=1e-5)


def test_ome_zarr_output_onto_an_existing_path_is_refused_before_the_run(viewer, qtbot, tiny_models, synth,
                                                                         tmp_path):
    from napari_linblur.io.omezarr import write_ome_zarr

    viewer.add_image(synth[0][:3], name="img")
    target = write_ome_zarr(tmp_path / "earlier.ome.zarr", np.ones((2, 32, 32), np.float32))
    stamp = (target / "zarr.json").stat().st_mtime_ns
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    w.output.set_mode(w.output.ZARR, str(target))
    n_layers = len(viewer.layers)
    assert not w.run_whole_stack()
    assert not w.panel.running and len(viewer.layers) == n_layers
    msg = last_error()
    assert str(target) in msg and "already exists" in msg and "choose another file name, or delete it" in msg
    assert "overwrite=True" not in msg and msg in w.panel.status.text()
    assert (target / "zarr.json").stat().st_mtime_ns == stamp


def test_no_input_explains_rgb_and_labels_layers(viewer, qtbot):
    from napari.utils.notifications import notification_manager

    viewer.add_image(np.zeros((40, 40, 3), np.uint8), name="photo", rgb=True)
    viewer.add_labels(np.zeros((40, 40), np.uint8), name="cells")
    before = len(notification_manager.records)
    w = add(viewer, "Defocus map & focus QC")
    settle(qtbot, w)
    status = w.preview_status.text()
    assert status.startswith("waiting: pick an image layer") and "RGB images are not supported" in status
    assert "Split RGB" in status and "'cells'" in status and "not images" in status
    assert w.preview.last_error is None and len(notification_manager.records) == before


def test_repeated_preview_errors_name_the_layer_and_pop_up_once(viewer, qtbot, tiny_models, synth):
    from napari.utils.notifications import notification_manager

    stack = synth[0].astype(np.float32)
    stack[:, 0, 0] = np.nan  # one NaN pixel on every plane
    viewer.add_image(stack, name="nan1px")
    before = len(notification_manager.records)
    w = add(viewer, "Defocus map & focus QC")
    w.model.set_model(tiny_models["defocus"])
    settle(qtbot, w)
    for z in (1, 2, 3):
        viewer.dims.set_current_step(0, z)
        settle(qtbot, w)
    new = [r.message for r in notification_manager.records[before:]]
    assert len(new) == 1, new
    assert new[0].startswith("preview failed: 'nan1px' contains NaN") and "img contains" not in new[0]
    assert w.preview_status.text() == new[0]


def test_train_widget_refuses_untrainable_layers_and_run_folders(viewer, qtbot, tmp_path, synth):
    viewer.add_image(np.zeros((9, 48, 64), np.float32), name="zeros")
    viewer.add_image(synth[0][:, :16, :16], name="tiny planes")
    w = small_training(viewer, tmp_path, steps=2)  # 32-px patches
    w.set_choice(w.source, "layer")
    w.layer.set_layer(viewer.layers["zeros"])
    assert not w.start() and not w.panel.running
    assert "'zeros' is constant" in last_error() and "nothing to learn" in last_error()
    w.layer.set_layer(viewer.layers["tiny planes"])
    assert not w.start() and not w.panel.running
    assert "planes of 16 x 16 px, smaller than the 32 px training patch" in last_error()
    assert "at most 16" in last_error()
    # a run folder that is a file: refused, nothing printed as a traceback
    afile = tmp_path / "afile"
    afile.write_text("x")
    w.set_choice(w.source, "synthetic")
    w.out.setText(str(afile))
    assert not w.start() and not w.panel.running
    assert f"run folder {afile} is a file" in last_error()
    assert afile.read_text() == "x" and not (tmp_path / "run").exists()


def test_whole_stack_errors_name_the_layer(viewer, qtbot, tiny_models, synth, tmp_path):
    from napari.utils.notifications import notification_manager

    stack = synth[0].astype(np.float32)
    stack[:, 0, 0] = np.nan
    viewer.add_image(stack, name="nan1px")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    for mode, path in ((w.output.LAYER, None), (w.output.ZARR, tmp_path / "out.ome.zarr")):
        w.output.set_mode(mode, str(path) if path else None)
        before = len(notification_manager.records)
        assert w.run_whole_stack()
        wait_run(qtbot, w)
        new = [r.message for r in notification_manager.records[before:]]
        assert len(new) == 1 and "failed: 'nan1px' contains NaN" in new[0] and "img contains" not in new[0], new
        assert w.panel.status.text() == new[0] == w.panel.last_error
    # the focus curve with the defocus score reads the plane through the network, which refuses NaN
    w.measure.setCurrentIndex(w.measure.findData("defocus"))
    assert w.run_focus_curve()
    wait_run(qtbot, w)
    assert "failed: 'nan1px' contains NaN" in w.panel.last_error, w.panel.last_error


def _slow_defocus(img, *, should_stop=None, progress=None, **kw):
    """A stand-in for :func:`napari_linblur.estimate_defocus` that takes minutes unless told to stop (checked as
    the operations check it between tiles)."""
    end = time.time() + 300
    while time.time() < end:
        if should_stop is not None and should_stop():
            raise _ops.Cancelled("cancelled")
        time.sleep(0.01)
    return np.zeros(np.shape(img)[-2:], np.float32)


def test_closing_the_viewer_stops_running_previews_and_runs(viewer, qtbot, monkeypatch):
    from napari_linblur._napari._qt import _common as c

    monkeypatch.setitem(nl.__dict__, "estimate_defocus", _slow_defocus)
    viewer.add_image(np.zeros((3, 64, 64), np.float32), name="img")
    w = add(viewer, "Defocus map & focus QC")
    qtbot.waitUntil(lambda: any(wk.is_running for wk in w.preview.workers), timeout=15000)
    assert w.run_whole_stack()
    qtbot.waitUntil(lambda: w.panel.worker is not None and w.panel.worker.is_running, timeout=15000)
    workers = [*w.preview.workers, w.panel.worker]
    viewer.close()  # the workers are asked to quit: they stop at their next check, not in 5 minutes
    qtbot.waitUntil(lambda: not any(wk.is_running for wk in workers), timeout=10000)
    assert all(wk.stop_event.is_set() for wk in workers)
    assert not c.running_workers()


CLOSE_WHILE_COMPUTING = r"""
import sys
import time

import numpy as np
import napari
from qtpy.QtWidgets import QApplication

import napari_linblur as nl
from napari_linblur._napari import _ops
from napari_linblur._napari._qt.defocus_widget import DefocusWidget

{slow_defocus}
nl.estimate_defocus = _slow_defocus


def pump_until(cond, secs=60.0):
    end = time.time() + secs
    while not cond():
        assert time.time() < end, "timed out"
        QApplication.processEvents()
        time.sleep(0.01)


mode = sys.argv[1]
viewer = napari.Viewer(show=False)
viewer.add_image(np.zeros((3, 256, 256), np.float32), name="img")
w = DefocusWidget(viewer)
dock = viewer.window.add_dock_widget(w, name="Defocus map & focus QC")
if mode == "close-during-run":
    w.preview_on.setChecked(False)
    assert w.run_whole_stack()
    pump_until(lambda: w.panel.worker is not None and w.panel.worker.is_running)
else:
    pump_until(lambda: any(wk.is_running for wk in w.preview.workers))
if mode.startswith("close"):
    viewer.close()
elif mode == "remove-dock":
    viewer.window.remove_dock_widget(dock)
print("script ends", time.time(), flush=True)
"""


@pytest.mark.parametrize("mode", ["close-during-preview", "close-during-run", "remove-dock", "exit-viewer-open"])
def test_python_exits_cleanly_while_a_worker_computes(tmp_path, mode):
    """A script (or an IPython session) that ends while a live preview or a run computes: the plugin stops its
    workers and waits for them, so no worker emits through Qt objects torn down at exit (which aborted Python)."""
    import inspect
    import subprocess
    import sys

    script = tmp_path / "close_while_computing.py"
    script.write_text(CLOSE_WHILE_COMPUTING.replace("{slow_defocus}", inspect.getsource(_slow_defocus)))
    env = {**os.environ, "NAPARI_CONFIG": str(tmp_path / "settings.yaml")}
    try:  # a worker left running at exit aborted Python, or (a job that never ends) kept it from exiting
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=90,
                              env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"Python did not exit within 90 s: a worker was left running\n{err.stdout}\n{err.stderr}")
    ended = time.time()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "has been deleted" not in out and "Traceback" not in out, out[-3000:]
    script_end = float(proc.stdout.split("script ends", 1)[1].split()[0])
    assert ended - script_end < 20, f"exit took {ended - script_end:.1f} s: the worker was not stopped"


def test_previews_follow_their_input_and_their_widget(viewer, qtbot, synth):
    """A live preview is renamed with its input, goes when its input is deleted (also while the live preview is
    off) and when its dock is closed, so a reopened widget does not leave a frozen second set behind."""
    def previews():
        return [ly.name for ly in viewer.layers if ly.metadata.get("linblur_preview")]

    layer = viewer.add_image(synth[0], name="cells")
    defocus = add(viewer, "Defocus map & focus QC")
    blur = add(viewer, "Blur synthesis")
    settle(qtbot, defocus)
    settle(qtbot, blur)
    assert any("cells" in n for n in previews()) and len(previews()) >= 2
    layer.name = "cells-renamed"
    settle(qtbot, defocus)
    settle(qtbot, blur)
    assert previews() and all("cells-renamed" in n for n in previews())
    for w in (defocus, blur):
        w.preview_on.setChecked(False)
    viewer.layers.remove(layer)
    assert previews() == []

    viewer.add_image(synth[0], name="again")
    defocus.preview_on.setChecked(True)
    settle(qtbot, defocus)
    assert previews()
    viewer.window.remove_dock_widget(viewer.window._dock_widgets["Defocus map & focus QC (napari-linblur)"])
    assert not [n for n in previews() if "σ" in n or "outline" in n]


def test_alpha_slider_reaches_the_quarter_points():
    from napari_linblur._napari._qt._common import AlphaSlider

    for low in (0.0, 0.05):
        s = AlphaSlider(0.5, low=low)
        for v in (low, 0.25, 0.5, 0.75, 1.0):
            s.setValue(v)
            assert s.value() == v and s.label.text() == f"α = {v:.2f}"


def test_pair_previews_ignore_axes_their_inputs_do_not_have(viewer, qtbot, synth):
    """Moving the time slider of another (4-D) layer does not recompute the preview of a 3-D stack."""
    viewer.add_image(synth[0], name="cells")
    viewer.add_image(np.stack([synth[0]] * 3), name="movie")
    blur = add(viewer, "Blur synthesis")
    blur.a_layer.set_layer(viewer.layers["cells"])
    blur.c_layer.set_layer(viewer.layers["cells"])
    settle(qtbot, blur)
    before = blur.preview.generation
    for t in (1, 2, 0):
        viewer.dims.set_current_step(0, t)
        qtbot.wait(50)
    qtbot.wait(400)
    assert blur.preview.generation == before and not blur.preview.busy


def _tiny(w, tiny_models) -> None:
    """Point every model picker of ``w`` at the tiny models."""
    from napari_linblur._napari._qt._common import ModelPicker

    for picker in w.findChildren(ModelPicker):
        picker.set_model(tiny_models[picker.task])


def test_widgets_follow_a_layer_whose_data_is_replaced(viewer, qtbot, tiny_models, synth):
    """``layer.data = ...`` (new content, more or fewer planes) recomputes the previews, and the plane pickers
    take the new number of planes: with more planes the viewer's plane is used (not one clamped to the old
    range); with fewer, a fixed plane beyond the new range is brought into it and a run works."""
    planes = synth[0].astype(np.float32)  # 9 planes, from far out of focus to in focus
    first = iter((0, 6, 3))

    def stack(nz):
        if nz == 9:
            return planes.copy()
        k = next(first)
        return planes[k:k + nz].copy()

    def preview_of(w):
        return np.array(w._preview_layer.data)

    layer = viewer.add_image(stack(3), name="s")
    deblur = add(viewer, "Deblur")
    _tiny(deblur, tiny_models)
    deblur.set_mode("single")
    defocus = add(viewer, "Defocus map & focus QC")
    _tiny(defocus, tiny_models)
    for w in (deblur, defocus):
        settle(qtbot, w)
    before = preview_of(deblur)
    generation = defocus.preview.generation
    layer.data = stack(3)  # same shape, new content
    for w in (deblur, defocus):
        settle(qtbot, w)
        assert w.preview.last_error is None, w.panel.status.text()
    assert not np.array_equal(preview_of(deblur), before)
    assert defocus.preview.generation > generation  # (the tiny model's map is flat: its values may not change)

    layer.data = stack(9)  # more planes: the picker follows the viewer to plane 7
    viewer.dims.set_current_step(0, 7)
    settle(qtbot, deblur)
    assert deblur.b_plane.spin.maximum() == 8 and deblur.b_plane.value() == 7
    assert "s z7" in deblur._preview_layer.name
    np.testing.assert_array_equal(_ops.plane_of(layer, (7,)), layer.data[7])

    blur = add(viewer, "Blur synthesis")
    _tiny(blur, tiny_models)
    blur.c_plane.setValue(8)
    settle(qtbot, blur)
    layer.data = stack(3)  # fewer planes: plane 8 is gone
    settle(qtbot, blur)
    assert blur.c_plane.spin.maximum() == 2 and blur.c_plane.value() == 2
    assert blur.preview.last_error is None, blur.panel.status.text()
    blur.a_plane.setValue(0)
    blur.output.set_mode("layer")
    assert blur.run_whole_stack(), blur.panel.status.text()
    wait_run(qtbot, blur)
    assert blur.panel.last_error is None, blur.panel.status.text()


def test_a_plane_out_of_range_is_a_named_error(viewer, qtbot, tiny_models):
    """A plane beyond the layer's planes (a picker that missed a data change) is refused naming the plane, the
    layer and its planes, never an IndexError."""
    layer = viewer.add_image(np.ones((3, 32, 32), np.float32), name="s")
    with pytest.raises(ValueError, match=r"plane 8 of 's' does not exist: it has 3 planes \(0–2\)"):
        _ops.pair_stacks(layer, 0, layer, 8)
    for name in ("Blur synthesis", "Deblur"):
        w = add(viewer, name)
        _tiny(w, tiny_models)
        settle(qtbot, w)
        w.c_plane.spin.setRange(0, 8)  # as if the layer had shrunk behind the picker's back
        w.c_plane.setValue(8)
        assert not w.run_whole_stack() and not w.panel.running
        assert "plane 8 of 's' does not exist" in last_error(), (name, last_error())


def test_pair_widgets_wait_quietly_on_a_single_plane_image(viewer, qtbot, tiny_models):
    """Opening Blur synthesis or Deblur (default Pair mode) with only a single-plane image (the BBBC006 sample is
    (1, Y, X)) is not an error yet: the status line says what is needed, without a pop-up; an explicit Run
    still refuses with a notification."""
    from napari.utils.notifications import notification_manager

    viewer.add_image(np.ones((1, 32, 32), np.float32), name="one plane")
    before = len(notification_manager.records)
    widgets = [add(viewer, name) for name in ("Blur synthesis", "Deblur")]
    for w in widgets:
        _tiny(w, tiny_models)
        settle(qtbot, w)
        text = w.preview_status.text()
        assert text.startswith("waiting: ") and "'one plane' is a single 2-D plane" in text, text
        assert w.preview.last_error is None
    assert len(notification_manager.records) == before, [r.message for r in notification_manager.records[before:]]
    for w in widgets:
        assert not w.run_whole_stack()
        assert "'one plane' is a single 2-D plane" in last_error()
    assert len(notification_manager.records) == before + 2


def test_a_diverged_training_run_is_said_in_the_widgets_words(viewer, qtbot, tmp_path, synth):
    """A run whose loss becomes infinite (an audit's layer spanning 1 to 1e30; here the largest learning rate the
    widget takes) was notified in the command line's words: "lower --lr or disable --amp, in a new --out (a --resume
    keeps this run's options)", options the widget does not have."""
    viewer.add_image(synth[0], name="stack")
    w = small_training(viewer, tmp_path, steps=30)
    w.lr.setValue(w.lr.maximum())
    w.set_choice(w.source, "layer")
    w.layer.set_layer(viewer.layers["stack"])
    assert w.start()
    qtbot.waitUntil(lambda: not w.panel.running, timeout=120000)
    text = last_error()
    assert "training diverged on 'stack'" in text and "lower the learning rate" in text, text
    assert "--" not in text and not w.model_path
