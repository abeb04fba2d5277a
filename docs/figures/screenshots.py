"""Screenshots of the four napari-linblur widgets in use, for docs/guide/plugin.md.

Run from the repository root under a display (Xvfb is enough)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python docs/figures/screenshots.py

It opens the plugin's synthetic sample (seeded), drives each widget as a user would (pick planes, set α, press
the buttons), waits for the workers and saves one window screenshot per widget in ``docs/images/``:
``plugin_blur.png``, ``plugin_deblur.png``, ``plugin_defocus.png``, ``plugin_train.png``. The shipped models
are used; ``--models DIR`` supplies ``ae.safetensors``/``deblur.safetensors``/``defocus.safetensors`` from DIR for
any shipped model that is missing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "images"
PLUGIN = "napari-linblur"
#: the window's size (the Xvfb screen must hold it: ``make docs-figures`` runs a 1600 x 1000 one)
WINDOW = (1500, 950)


def _wait(app, cond, timeout: float = 300.0, what=None) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            state = ""
            if what is not None:
                p = what.preview
                state = (f" (preview generation {p.generation}, shown {p.applied_generation}, workers "
                         f"{len(p.workers)}, timer {p.timer.isActive()}, error {p.last_error})")
            raise TimeoutError("widget did not finish in time" + state)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def _settled(w):
    p = w.preview
    return p.generation > 0 and not p.busy and p.applied_generation == p.generation


def _grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _save(viewer, app, name: str) -> Path:
    from skimage.io import imsave

    viewer.window._qt_window.resize(*WINDOW)  # a dock's size hints may have resized it: every shot the same size
    for _ in range(10):
        app.processEvents()
        time.sleep(0.02)
    for _ in range(2):  # the canvas may be resized by the dock: reset once it has its final size
        viewer.reset_view()
        for _ in range(10):
            app.processEvents()
            time.sleep(0.02)
    img = viewer.screenshot(canvas_only=False, flash=False)
    path = OUT / name
    imsave(path, img, check_contrast=False)
    print(f"wrote {path} {img.shape[1]}x{img.shape[0]}")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=None, help="folder with ae/deblur/defocus .safetensors (default: shipped)")
    ap.add_argument("--train-steps", type=int, default=40, help="steps of the short training run shown")
    args = ap.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_linblur import list_models

    models = {}
    for task in ("ae", "deblur", "defocus"):
        if f"{task}-default" in list_models():
            models[task] = None  # the shipped default
        elif args.models:
            models[task] = str(Path(args.models) / f"{task}.safetensors")
        else:
            print(f"shipped model {task}-default is missing; pass --models DIR", file=sys.stderr)
            return 2
    OUT.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(show=False, title="napari-linblur")
    viewer.window._qt_window.resize(*WINDOW)  # sized before it is shown: the canvas gets its final size
    viewer.window.show()
    app = QApplication.instance()
    viewer.open_sample(PLUGIN, "synthetic_stack")
    w1 = viewer.layers["synthetic [w1]"]
    viewer.layers["synthetic [w2]"].visible = False

    def use(picker, task):
        if models[task]:
            picker.set_model(models[task])

    def dock(name):
        dw, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        return dw, w

    def close(dw):
        viewer.window.remove_dock_widget(dw)

    # --- Train: a short deblurring run on synthetic pairs, loss curve live -----------------------------------
    dw, w = dock("Train")
    w.set_choice(w.kind, "deblur")
    w.set_choice(w.preset, "tiny")
    w.set_choice(w.source, "synthetic")
    w.steps.setValue(args.train_steps)
    w.batch.setValue(4)
    w.patch.setValue(48)
    w.out.setText(str(Path(tempfile.mkdtemp()) / "run"))
    w.start()
    _wait(app, lambda: not w.panel.running, timeout=900)
    _save(viewer, app, "plugin_train.png")
    close(dw)

    # --- Blur synthesis: a = in-focus plane 8, c = plane 4 (16 um out), alpha = 0.5 -----------------------
    dw, w = dock("Blur synthesis")
    use(w.model, "ae")
    w.a_layer.set_layer(w1)
    w.c_layer.set_layer(w1)
    w.a_plane.setValue(8)
    w.c_plane.setValue(4)
    w.alpha.setValue(0.5)
    viewer.dims.set_current_step(0, 8)
    _wait(app, lambda: _settled(w), what=w)
    for ly in viewer.layers:
        ly.visible = ly is w1 or ly.name.startswith("synthesized")
    grid = _grid(viewer)
    grid.enabled = True
    grid.shape = (1, 2)
    _save(viewer, app, "plugin_blur.png")
    viewer.layers.remove(viewer.layers[-1])
    close(dw)

    # --- Deblur, pair: b = plane 6 (8 um out), c = plane 4 (16 um), alpha = (16-8)/16 ----------------------
    dw, w = dock("Deblur")
    w.set_mode("pair")
    use(w.ae_model, "ae")
    w.b_layer.set_layer(w1)
    w.c_layer.set_layer(w1)
    viewer.dims.set_current_step(0, 6)
    w.b_plane.setValue(6)
    w.c_plane.setValue(4)
    w.alpha.setValue(0.5)
    _wait(app, lambda: _settled(w), what=w)
    for ly in viewer.layers:
        ly.visible = ly is w1 or ly.name.startswith("deblurred")
    _save(viewer, app, "plugin_deblur.png")
    viewer.layers.remove(viewer.layers[-1])
    close(dw)

    # --- Defocus map of plane 3 + focus curve ----------------------------------------------------------------
    dw, w = dock("Defocus map & focus QC")
    use(w.model, "defocus")
    w.image.set_layer(w1)
    w.outline.setChecked(True)  # the signal outline: where σ is read from the image
    viewer.dims.set_current_step(0, 3)
    _wait(app, lambda: _settled(w), what=w)
    w.measure.setCurrentIndex(w.measure.findData("defocus"))
    w.curve_btn.click()
    _wait(app, lambda: not w.panel.running)
    for ly in viewer.layers:
        ly.visible = ly is w1 or ly.name.startswith(("defocus", "signal outline"))
    _save(viewer, app, "plugin_defocus.png")
    for ly in [ly for ly in viewer.layers if ly.metadata.get("linblur_preview")]:
        viewer.layers.remove(ly)
    close(dw)

    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
