"""The plugin's workers in real napari viewers (run under Xvfb), widgets added through the manifest: a Cancel that
comes after a job completed, a live preview of a deleted layer, long jobs beside live previews, the preview's own
status line, and what a lazy output layer says it costs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import napari_linblur as nl
from napari_helpers import PoolBlocker, add, settle, small_training, wait_run
from napari_linblur._napari import _ops
from napari_linblur._napari._qt import _common as c
from napari_linblur._napari._settings import set_setting

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stack(nz: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((nz, 64, 64)).astype(np.float32)


def _wait_with_busy_gui(cond, timeout: float = 120.0) -> None:
    """Wait for ``cond()`` without processing Qt events, as while napari's GUI thread is busy (drawing a big layer):
    the worker's signals stay queued until the next event loop."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def _job_ended(worker):
    """Whether ``worker``'s thread has ended (its returned/finished signals are queued by then)."""
    return lambda: worker not in c.running_workers()


class _Gate:
    """A stand-in for :func:`napari_linblur.estimate_defocus` that, once closed, waits until opened (or told to
    stop, when ``cancellable``); it returns a constant map. Every gate is opened when its test ends."""

    made: list[_Gate] = []

    def __init__(self, *, cancellable: bool = True) -> None:
        self.made.append(self)
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()
        self.cancellable = cancellable
        self.calls = 0

    def close(self) -> None:
        self.open.clear()
        self.entered.clear()

    def __call__(self, img, *, should_stop=None, **kwargs):
        self.calls += 1
        self.entered.set()
        end = time.monotonic() + 120
        while not self.open.wait(0.01):
            if self.cancellable and should_stop is not None and should_stop():
                raise _ops.Cancelled("cancelled")
            assert time.monotonic() < end
        if not np.isfinite(np.asarray(img)).all():
            raise ValueError("img contains NaN or Inf values")
        return np.full(np.shape(img)[-2:], 3.0, np.float32)


@pytest.fixture(autouse=True)
def _open_gates():
    """A failed test leaves no worker waiting at a closed gate (it would hold a thread for the next tests)."""
    yield
    for gate in _Gate.made:
        gate.open.set()
    _Gate.made.clear()


# ------------------------------------------------------------------------------- a Cancel that came too late


def test_a_cancel_after_the_last_plane_keeps_the_written_ome_zarr(viewer, qtbot, tiny_models, tmp_path):
    """The GUI is busy while the job writes its last plane and returns; the user's Cancel click is handled before
    the worker's result: the file is complete, so it is opened as usual and the status says Cancel came too late."""
    viewer.add_image(_stack(), name="img")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    out = tmp_path / "out.ome.zarr"
    w.output.set_mode(w.output.ZARR, str(out))
    n = len(viewer.layers)
    assert w.run_whole_stack()
    _wait_with_busy_gui(_job_ended(w.panel.worker))
    w.panel.cancel_btn.click()
    wait_run(qtbot, w)
    status = w.panel.status.text()
    assert "finished before Cancel took effect" in status and "cancelled" not in status, status
    assert out.exists() and len(viewer.layers) == n + 1, status
    assert viewer.layers[-1].name == "defocus σ[img]"
    assert w.panel.bar.value() == w.panel.bar.maximum()


def test_a_cancel_after_the_last_training_step_offers_the_model(viewer, qtbot, tmp_path):
    """A training run that finished all its steps before a late Cancel is a trained model like any other."""
    w = small_training(viewer, tmp_path, steps=2)
    before = list(_ops.USER_MODELS.get("deblur"))
    assert w.start()
    _wait_with_busy_gui(_job_ended(w.panel.worker))
    w.panel.cancel_btn.click()
    wait_run(qtbot, w)
    assert w.model_path == str(tmp_path / "run" / "model.safetensors"), w.panel.status.text()
    assert w.model_path in _ops.USER_MODELS.get("deblur") and w.model_path not in before
    assert "finished before Cancel took effect" in w.panel.status.text()
    assert "stopped before the end" not in w.result_label.text() and "saved" in w.result_label.text()


def test_a_run_cancelled_while_it_waits_for_a_thread_reads_nothing(viewer, qtbot, synth_layer_data, tmp_path):
    """Every thread of the pool of long jobs is taken: a training run says it is queued; cancelled there, it never
    starts (its layer is not read, no dataset is written)."""
    viewer.add_image(synth_layer_data, name="stack")
    w = small_training(viewer, tmp_path, steps=2)
    w.set_choice(w.source, "layer")
    blocker = PoolBlocker(c.thread_pool(c.RUN_POOL))
    try:
        assert w.start()
        assert "queued" in w.panel.status.text(), w.panel.status.text()
        w.panel.cancel_btn.click()
        # taken out of the queue at once: the dock is free while the other runs still hold every thread (it stayed
        # "cancelling…" and refused new runs until one of them ended)
        assert not w.panel.running and not w.panel.cancel_btn.isEnabled()
        assert "cancelled — nothing was added or written" in w.panel.status.text()
    finally:
        blocker.release.set()
    wait_run(qtbot, w)
    assert "cancelled" in w.panel.status.text() and w.model_path is None
    assert not (tmp_path / "run" / "data.ome.zarr").exists()
    assert "cancelled before any weights were saved" in w.result_label.text()


@pytest.fixture
def synth_layer_data():
    from napari_linblur._napari._sample_data import synthetic_stack_data

    return synthetic_stack_data((48, 64), seed=5)[0][0]


# ------------------------------------------------------------------------------- a deleted input layer


def test_a_deleted_inputs_live_map_does_not_come_back(viewer, qtbot, monkeypatch):
    """The input is deleted while its live map computes and the map returns before the next preview starts (inside
    the debounce delay): it is dropped, and the running preview was told to stop."""
    from napari.layers import Image

    gate = _Gate(cancellable=False)  # returns only when opened: its result must be dropped all the same
    monkeypatch.setitem(nl.__dict__, "estimate_defocus", gate)
    viewer.add_image(np.full((3, 64, 64), np.nan, np.float32), name="nan-layer")
    a = viewer.add_image(_stack(3), name="A")
    w = add(viewer, "Defocus map & focus QC")
    w.image.set_layer(a)
    settle(qtbot, w)
    z = viewer.dims.current_step[0]
    assert [ly.name for ly in viewer.layers if ly.metadata.get("linblur_preview")] == [f"defocus σ[A z{z}] (preview)"]

    assert set_setting("inference", "preview_delay_ms", 2000)  # the old map returns well inside this delay
    gate.close()
    viewer.dims.set_current_step(0, 2 if z != 2 else 0)
    qtbot.waitUntil(gate.entered.is_set, timeout=15000)
    worker = w.preview.workers[-1]
    viewer.layers.remove(a)
    assert worker.stop_event.is_set()  # the preview of the deleted layer is stopped
    gate.open.set()
    qtbot.waitUntil(lambda: worker not in w.preview.workers, timeout=15000)
    assert w.preview.timer.isActive()  # the fallback input's preview has not started yet
    maps = [ly.name for ly in viewer.layers if isinstance(ly, Image) and ly.metadata.get("linblur_preview")]
    assert maps == [], maps
    settle(qtbot, w)  # the picker fell back to 'nan-layer', whose map fails
    assert w.image.currentText() == "nan-layer" and "contains NaN" in (w.preview.last_error or "")
    assert not [ly.name for ly in viewer.layers if "[A" in ly.name]


# ------------------------------------------------------------------------------- long jobs and previews


def test_long_runs_leave_threads_for_the_live_previews(viewer, qtbot, monkeypatch, tiny_models, tmp_path):
    """A training run and a whole-stack run hold their threads for minutes; a live preview opened meanwhile is
    computed at once all the same (with Qt's global pool as small as on a 2-core machine)."""
    from qtpy.QtCore import QThreadPool

    gate = _Gate()
    monkeypatch.setitem(nl.__dict__, "estimate_defocus", gate)
    glob = QThreadPool.globalInstance()
    threads = glob.maxThreadCount()
    glob.setMaxThreadCount(2)
    viewer.add_image(_stack(5), name="img")
    d = add(viewer, "Defocus map & focus QC")
    d.preview_on.setChecked(False)
    tr = small_training(viewer, tmp_path, steps=100000)
    try:
        gate.close()
        assert tr.start() and d.run_whole_stack()
        qtbot.waitUntil(lambda: gate.entered.is_set() and len(tr.plot.steps) >= 1, timeout=60000)
        b = add(viewer, "Blur synthesis")
        b.model.set_model(tiny_models["ae"])
        settle(qtbot, b, timeout=20000)
        assert b.preview.last_error is None and b.preview_status.text().startswith("preview up to date")
        assert any(ly.name.startswith("synthesized[") for ly in viewer.layers)
        assert d.panel.running and tr.panel.running
    finally:
        d.panel.cancel()
        tr.panel.cancel()
        gate.open.set()
        qtbot.waitUntil(lambda: not d.panel.running and not tr.panel.running, timeout=60000)
        glob.setMaxThreadCount(threads)


# ------------------------------------------------------------------------------- status lines


def test_the_live_preview_never_overwrites_a_runs_message(viewer, qtbot, monkeypatch):
    gate = _Gate()
    monkeypatch.setitem(nl.__dict__, "estimate_defocus", gate)
    viewer.add_image(_stack(5), name="img")
    w = add(viewer, "Defocus map & focus QC")
    settle(qtbot, w)
    gate.close()
    assert w.run_whole_stack()
    qtbot.waitUntil(gate.entered.is_set, timeout=15000)
    w.panel.cancel_btn.click()
    wait_run(qtbot, w)
    final = w.panel.status.text()
    assert final.endswith("cancelled — nothing was added or written"), final
    gate.open.set()
    viewer.dims.set_current_step(0, 3)  # a new live map is computed and shown
    settle(qtbot, w)
    assert viewer.layers[-1].name == "defocus σ[img z3] (preview)"
    assert w.panel.status.text() == final
    assert w.preview_status.text() == "preview up to date"


def test_switching_the_live_map_off_while_it_computes_says_so(viewer, qtbot, monkeypatch):
    gate = _Gate()
    gate.close()
    monkeypatch.setitem(nl.__dict__, "estimate_defocus", gate)
    viewer.add_image(_stack(3), name="img")
    w = add(viewer, "Defocus map & focus QC")
    qtbot.waitUntil(gate.entered.is_set, timeout=15000)
    assert w.preview_status.text() == "updating preview…"
    w.preview_on.setChecked(False)
    qtbot.waitUntil(lambda: not w.preview.busy, timeout=15000)
    qtbot.wait(200)
    assert "updating preview" not in w.panel.status.text()
    assert w.preview_status.text() == "live preview off"
    assert not [ly for ly in viewer.layers if ly.metadata.get("linblur_preview")]


# ------------------------------------------------------------------------------- lazy output layers


def test_a_lazy_layer_says_what_browsing_it_costs(viewer, qtbot, tiny_models):
    from qtpy.QtCore import Qt

    viewer.add_image(_stack(3), name="img")
    w = add(viewer, "Defocus map & focus QC")
    w.preview_on.setChecked(False)
    w.model.set_model(tiny_models["defocus"])
    w.output.set_mode(w.output.LAZY)
    tip = w.output.combo.itemData(w.output.combo.currentIndex(), Qt.ItemDataRole.ToolTipRole)
    assert "napari waits for it" in tip and "OME-Zarr" in tip
    assert w.output.combo.toolTip() == tip
    assert w.run_whole_stack()
    wait_run(qtbot, w)
    status = w.panel.status.text()
    assert "computed when napari shows it" in status and "napari waits for it" in status, status
    assert "'new layer' or 'OME-Zarr file'" in status


# ------------------------------------------------------------------------------- a session open all day


def test_finished_workers_hold_no_layer_data_and_leave_the_task_list(viewer, qtbot, monkeypatch, make_napari_viewer):
    """napari's create_worker put every worker in the current viewer's task list for good, and a worker's
    callbacks kept it (its job, the layer's array, the widget) alive through Qt connections: a deleted 52 MB layer
    stayed in memory after each live map. Finished workers now drop their job and callbacks and leave the task
    list; tasks go to the widget's own viewer, so closing another viewer cancels nothing of it."""
    import gc
    import weakref

    gate = _Gate()
    monkeypatch.setitem(nl.__dict__, "estimate_defocus", gate)
    w = add(viewer, "Defocus map & focus QC")
    manager = viewer.window._task_status_manager
    refs = []
    for i in range(3):
        data = _stack(3, seed=i)
        refs.append(weakref.ref(data))
        layer = viewer.add_image(data, name=f"L{i}")
        del data
        w.image.set_layer(layer)
        settle(qtbot, w)
        qtbot.waitUntil(lambda: not w.preview.workers, timeout=15000)
        viewer.layers.remove(layer)
        del layer
    qtbot.wait(50)
    for _ in range(3):
        gc.collect()
        qtbot.wait(10)
    assert not manager.is_busy() and not manager._tasks  # finished entries removed
    assert [r() is None for r in refs] == [True, True, True]  # the last one too (the widget's last preview key)
    # a second viewer made current, then closed: the first viewer's preview goes on
    other = make_napari_viewer()
    gate.close()
    layer = viewer.add_image(_stack(3, seed=9), name="M")
    w.image.set_layer(layer)
    qtbot.waitUntil(gate.entered.is_set, timeout=15000)
    worker = w.preview.workers[-1]
    assert manager.is_busy() and not other.window._task_status_manager._tasks
    other.close()
    assert not worker.stop_event.is_set()
    gate.open.set()
    settle(qtbot, w)
    assert w.preview.last_error is None and any("[M" in ly.name for ly in viewer.layers)


def test_a_closed_dock_stops_handling_the_viewers_events(viewer, qtbot):
    """A dock widget removed from the viewer went on handling its layer-list and dims events (a warning per closed
    dock on the next layer, plane pickers following the viewer): its connections to the viewer are now dropped."""
    from qtpy.QtCore import QObject

    def bound_to(root):
        owners = {id(root)} | {id(o) for o in root.findChildren(QObject)}
        emitters = [*viewer.layers.events.emitters.values(), *viewer.dims.events.emitters.values()]
        return [cb for em in emitters for cb in em.callbacks
                if isinstance(cb, tuple) and callable(cb[0]) and cb[0]() is not None
                and id(cb[0]()) in owners]

    viewer.add_image(_stack(3), name="A")
    dock, w = viewer.window.add_plugin_dock_widget("napari-linblur", "Defocus map & focus QC")
    assert bound_to(w)  # it follows the viewer while docked
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(10)
    assert bound_to(w) == []


def test_closed_docks_are_freed(viewer, qtbot):
    """Every closed dock stayed in memory for the session: the Train widget through its (strong) subscription to the
    session's model list, the others through their workers. Closed docks are now freed."""
    import gc
    import weakref

    viewer.add_image(_stack(3), name="A")
    refs = []
    for name in ("Train", "Defocus map & focus QC", "Deblur"):
        dock, w = viewer.window.add_plugin_dock_widget("napari-linblur", name)
        if getattr(w, "preview", None) is not None:
            settle(qtbot, w, timeout=60000)
        refs.append((name, weakref.ref(w)))
        viewer.window.remove_dock_widget(dock)
        del dock, w
    for _ in range(5):
        qtbot.wait(20)
        gc.collect()
    assert [name for name, r in refs if r() is not None] == []
