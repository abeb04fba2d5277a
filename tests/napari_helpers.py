"""Helpers of the napari tests (widgets added through the manifest, waiting for their workers)."""

from __future__ import annotations

import threading

PLUGIN = "napari-linblur"
TILE = 256  # the default plugin setting the widgets pass on


def add(viewer, name):
    """Add the plugin's dock widget ``name`` through the npe2 manifest; returns the widget."""
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def settle(qtbot, w, timeout=15000):
    """Wait until the widget's newest preview request was computed and shown (or failed)."""
    qtbot.waitUntil(lambda: w.preview.generation > 0 and not w.preview.busy
                    and w.preview.applied_generation == w.preview.generation, timeout=timeout)


def deblur_pair_of(w, layer, b: int, c: int, ae_model) -> None:
    """Set the Deblur widget ``w`` to pair mode on planes ``b`` and ``c`` of ``layer`` with ``ae_model``."""
    w.set_mode("pair")
    w.ae_model.set_model(ae_model)
    w.b_layer.set_layer(layer)
    w.c_layer.set_layer(layer)
    w.b_plane.setValue(b)
    w.c_plane.setValue(c)


def wait_run(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: not w.panel.running, timeout=timeout)


def notes() -> list[str]:
    """Every napari notification so far."""
    from napari.utils.notifications import notification_manager

    return [str(r.message) for r in notification_manager.records]


def last_error() -> str:
    messages = notes()
    return messages[-1] if messages else ""


def small_training(viewer, tmp_path, *, steps, kind="deblur", preset="tiny"):
    """The Train widget set up for a small run (batch 2, 32-px patches) of ``steps`` steps into tmp_path/run."""
    w = add(viewer, "Train")
    w.set_choice(w.kind, kind)
    w.set_choice(w.preset, preset)
    w.steps.setValue(steps)
    w.batch.setValue(2)
    w.patch.setValue(32)
    w.out.setText(str(tmp_path / "run"))
    return w


class PoolBlocker:
    """Occupies every thread of one of the plugin's thread pools (default: that of long jobs, where runs and training
    run) until ``release`` is set, so a job started meanwhile waits in the queue, as it does behind other runs."""

    def __init__(self, pool=None) -> None:
        from qtpy.QtCore import QRunnable

        from napari_linblur._napari._qt import _common as c

        pool = c.thread_pool(c.RUN_POOL) if pool is None else pool
        self.release = threading.Event()
        busy = threading.Semaphore(0)
        outer = self

        class Block(QRunnable):
            def run(self) -> None:
                busy.release()
                outer.release.wait(60)

        self.runnables = [Block() for _ in range(pool.maxThreadCount())]
        for r in self.runnables:
            r.setAutoDelete(False)
            pool.start(r)
        for _ in self.runnables:
            assert busy.acquire(timeout=10)
