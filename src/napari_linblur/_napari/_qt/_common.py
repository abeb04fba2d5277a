"""Building blocks shared by the widgets: layer/plane/model pickers, α slider, a worker runner with a
napari progress bar and a Cancel button, and a debounced live preview that supersedes stale requests.

Their workers stop when asked to ``quit()`` (closing the viewer, quitting napari), when their widget is removed or
deleted, and when Python exits: the exit waits for them, since a worker that signals after Qt's objects are gone
aborts the process. Live previews and long jobs (whole-stack runs, focus curves, training) run in two thread pools of
their own (:func:`thread_pool`), so long jobs never take the threads the previews need."""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_linblur.inference.validate import name_arguments

from .. import _ops
from .. import _placement as pl
from .._settings import get_settings


def _alive(obj) -> bool:
    """False once the Qt object behind ``obj`` was deleted (a closed dock widget, a closed viewer)."""
    try:
        from qtpy import sip  # type: ignore[attr-defined]

        return not sip.isdeleted(obj)
    except Exception:  # noqa: BLE001 - bindings without sip: assume alive
        return True


# ----------------------------------------------------------------------------------------- pickers


def narrow_combo(box: QComboBox, chars: int = 16) -> QComboBox:
    """Let a combo box with long item texts shrink to about ``chars`` characters (the open list shows them in full),
    so the docks can be narrow."""
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    box.setMinimumContentsLength(chars)
    return box


class LayerPicker(QComboBox):
    """A combo box listing the viewer's image layers (kept in sync with the layer list, the layers' names and
    their data)."""

    #: the picked layer was renamed (outputs named after it, such as a live preview, follow)
    renamed = Signal()
    #: the picked layer's data was replaced (``layer.data = ...``): its planes and previews must be taken anew
    data_changed = Signal()

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        ev = viewer.layers.events
        for e in (ev.inserted, ev.removed, ev.reordered):
            e.connect(self.refresh)
        ev.inserted.connect(self._watch_layer)
        for layer in viewer.layers:
            self._watch(layer)
        self.refresh()

    def _watch(self, layer) -> None:
        """Follow ``layer``'s name and data."""
        try:
            layer.events.name.connect(self._on_name)
            layer.events.data.connect(self._on_data)
        except Exception:  # noqa: BLE001 - a layer without these events
            pass

    def _watch_layer(self, event) -> None:
        if _alive(self):
            self._watch(event.value)

    def _on_name(self, event=None) -> None:
        if not _alive(self):
            return
        self.refresh()
        if getattr(event, "source", None) is self.layer():
            self.renamed.emit()

    def _on_data(self, event=None) -> None:
        if _alive(self) and getattr(event, "source", None) is self.layer():
            self.data_changed.emit()

    def _images(self) -> list:
        from napari.layers import Image

        # a widget's live preview is an output that changes under the user: never offered as an input
        return [ly for ly in self._viewer.layers
                if isinstance(ly, Image) and not ly.rgb and not ly.metadata.get("linblur_preview")]

    def refresh(self, *_: Any) -> None:
        if not _alive(self):
            return
        current = self.layer()
        self.blockSignals(True)
        self.clear()
        images = self._images()
        for ly in images:
            self.addItem(ly.name, ly)
        if current in images:
            self.setCurrentIndex(images.index(current))
        self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self):
        idx = self.currentIndex()
        return self.itemData(idx) if idx >= 0 else None

    def set_layer(self, layer) -> None:
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return
        raise ValueError(f"{getattr(layer, 'name', layer)!r} is not an image layer of this viewer")


class PlanePicker(QWidget):
    """Z-plane of a layer: a spin box that can follow the viewer's current plane."""

    changed = Signal(int)

    def __init__(self, viewer, layer_picker: LayerPicker, *, follow: bool = True, parent=None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._picker = layer_picker
        self.spin = QSpinBox()
        self.spin.setToolTip("the Z plane of the layer used (0 = the first)")
        self.follow = QCheckBox("follow viewer")
        self.follow.setChecked(follow)
        self.follow.setToolTip("keep this plane equal to the plane shown in the viewer")
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.spin, 1)
        lay.addWidget(self.follow)
        self.spin.valueChanged.connect(self.changed.emit)
        self.follow.toggled.connect(lambda on: on and self.sync())
        layer_picker.currentIndexChanged.connect(self.rebind)
        layer_picker.data_changed.connect(self.rebind)  # new data: a new number of planes
        viewer.dims.events.current_step.connect(self._on_step)
        self.rebind()

    def rebind(self, *_: Any) -> None:
        """Take the picked layer's planes: the range becomes its planes (a fixed plane beyond a layer that lost
        planes becomes its last), and with *follow viewer* the plane is the viewer's."""
        if not _alive(self):
            return
        layer = self._picker.layer()
        n = _ops.n_planes(layer) if layer is not None else 1
        self.spin.blockSignals(True)
        self.spin.setRange(0, max(0, n - 1))
        self.spin.setValue(self.spin.value())  # Qt leaves a new spin box's field empty until a value is set
        self.spin.blockSignals(False)
        self.setEnabled(n > 1)
        self.sync()

    def _on_step(self, *_: Any) -> None:
        if _alive(self) and self.follow.isChecked():
            self.sync()

    def sync(self) -> None:
        layer = self._picker.layer()
        if layer is None or layer.ndim < 3 or not self.follow.isChecked():
            return
        idx = _ops.current_indices(self._viewer, layer)
        if idx:
            self.spin.setValue(idx[-1])

    def value(self) -> int:
        return int(self.spin.value())

    def setValue(self, z: int) -> None:  # noqa: N802 - Qt naming
        self.follow.setChecked(False)
        self.spin.setValue(int(z))


def with_browse_button(edit: QLineEdit, on_browse: Callable[[], None]) -> QWidget:
    """``edit`` and a narrow "…" button that calls ``on_browse`` (a file or folder dialog), in one row."""
    button = QPushButton("…")
    button.setMaximumWidth(28)
    button.clicked.connect(on_browse)
    row = QWidget()
    lay = QHBoxLayout(row)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    lay.addWidget(button)
    return row


def add_items(combo: QComboBox, items: list[tuple[str, Any, str]]) -> QComboBox:
    """Add ``(label, data, tooltip)`` items to ``combo``: each choice explains itself when hovered."""
    for label, data, tip in items:
        combo.addItem(label, data)
        if tip:
            combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
    return combo


class AlphaSlider(QWidget):
    """α in [low, 1] in steps of 0.01 (so 0.25, 0.5, 0.75 are reachable whatever ``low``) as a slider with a
    read-out; emits ``changed(float)`` while dragging."""

    changed = Signal(float)

    def __init__(self, value: float = 0.5, *, low: float = 0.0, parent=None) -> None:
        super().__init__(parent)
        steps = round((1.0 - low) * 100)
        if abs(low + steps / 100 - 1.0) > 1e-9:
            raise ValueError(f"low must be a multiple of 0.01, got {low}")
        self._low, self._steps = low, steps
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, steps)
        self.label = QLabel()
        self.label.setMinimumWidth(60)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.slider, 1)
        lay.addWidget(self.label)
        self.slider.valueChanged.connect(self._emit)
        self.setValue(value)
        self._emit()

    def value(self) -> float:
        return round(self._low + (1.0 - self._low) * self.slider.value() / self._steps, 4)

    def setValue(self, v: float) -> None:  # noqa: N802
        t = (float(v) - self._low) / (1.0 - self._low)
        self.slider.setValue(int(round(np.clip(t, 0, 1) * self._steps)))

    def _emit(self, *_: Any) -> None:
        self.label.setText(f"α = {self.value():.2f}")
        self.changed.emit(self.value())


class ModelPicker(QWidget):
    """Pick the shipped default, a model trained in this session, or a ``.safetensors`` file."""

    DEFAULT = "default"

    def __init__(self, task: str, parent=None) -> None:
        super().__init__(parent)
        self.task = task
        self.combo = QComboBox()
        self.combo.setToolTip("model used by this widget; models trained in the Train widget appear here")
        browse = QPushButton("…")
        browse.setToolTip("load a .safetensors model file")
        browse.setMaximumWidth(28)
        browse.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo, 1)
        lay.addWidget(browse)
        _ops.USER_MODELS.subscribe(self.refresh)
        self.destroyed.connect(lambda *_: _ops.USER_MODELS.unsubscribe(self.refresh))
        self.refresh()

    def refresh(self) -> None:
        if not _alive(self):
            raise RuntimeError("deleted")  # UserModels drops this listener
        current = self.combo.currentData()
        self.combo.blockSignals(True)
        self.combo.clear()
        configured = get_settings().model_for(self.task)
        self.combo.addItem(f"default ({configured or self._shipped()})", None)
        for p in _ops.USER_MODELS.get(self.task):
            self.combo.addItem(Path(p).parent.name + "/" + Path(p).name, p)
        idx = self.combo.findData(current) if current is not None else 0
        self.combo.setCurrentIndex(max(0, idx))
        self.combo.blockSignals(False)

    def _shipped(self) -> str:
        from napari_linblur.models.registry import DEFAULTS

        return DEFAULTS.get(self.task, "shipped")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", "", "napari-linblur model (*.safetensors)")
        if path:
            self.set_model(path)

    def set_model(self, path: str) -> None:
        _ops.USER_MODELS.add(self.task, str(path))
        self.combo.setCurrentIndex(self.combo.findData(str(path)))

    def model(self) -> str | None:
        """The model argument for the public operation (None = the configured or shipped default)."""
        return self.combo.currentData() or get_settings().model_for(self.task)


# ----------------------------------------------------------------------------------------- workers


class _Bridge(QObject):
    """Lives in the GUI thread; signals emitted from a worker thread are queued to it."""

    progressed = Signal(int, int)


#: how long the interpreter's exit waits for running previews and runs to stop (they stop at their next tile)
EXIT_WAIT_MS = 30_000
_exit_hooked = False
#: the plugin's workers from their start until their thread's ``run()`` returned (after their last signal)
_RUNNING: set = set()

#: the thread pool of the live previews, and that of long jobs (whole-stack runs, focus curves, training)
PREVIEW_POOL, RUN_POOL = "preview", "run"
#: threads of the pool of long jobs at least: each run panel runs one job at a time, so the runs of the four docks
#: start at once; further runs wait for a thread and say so in their status line
MIN_RUN_THREADS = 4
_POOLS: dict[str, Any] = {}


def thread_pool(kind: str):
    """The plugin's ``QThreadPool`` of ``kind`` (:data:`PREVIEW_POOL` or :data:`RUN_POOL`), made on first use.

    napari's workers run in Qt's global pool, which has one thread per CPU core (two on a small machine): a training
    run and a whole-stack run there would hold every thread, and every live preview would wait until they end. The
    previews therefore have a pool of their own, and so have the long jobs.
    """
    if kind not in (PREVIEW_POOL, RUN_POOL):
        raise ValueError(f"unknown thread pool {kind!r}; expected {PREVIEW_POOL!r} or {RUN_POOL!r}")
    pool = _POOLS.get(kind)
    if pool is None:
        from qtpy.QtCore import QThread, QThreadPool

        pool = QThreadPool()
        cores = max(2, QThread.idealThreadCount())
        pool.setMaxThreadCount(cores if kind == PREVIEW_POOL else max(MIN_RUN_THREADS, cores))
        _POOLS[kind] = pool
    return pool


def start_worker(job: Callable[[], Any], stop: threading.Event, *, returned: Callable[[Any], None],
                 errored: Callable[[BaseException], None], finished: Callable[[], None], pool: str = PREVIEW_POOL,
                 started: Callable[[], None] | None = None, viewer=None, description: str = "napari-linblur job"):
    """Start ``job()`` in a plugin worker (napari's ``FunctionWorker``) of the plugin's thread ``pool``
    (:func:`thread_pool`) whose ``quit()`` sets ``stop``, the job's cancel flag.

    A job whose ``stop`` is set while it waits for a thread raises ``Cancelled`` without running (its input is not
    read). The job is shown in ``viewer``'s task list (the widget's own viewer, not napari's current one: closing
    another window must not cancel it) as ``description``, and closing that window cancels it. Once the worker
    has finished, its callbacks are disconnected, its job dropped and its task entry removed, so that a finished
    worker holds no layer data, widget or viewer (napari's ``create_worker`` kept every worker in the current
    viewer's task list for good, with the job's data). The first worker also registers an exit hook that stops
    the plugin's workers and waits for them before Python tears down the Qt objects they signal through (a worker
    that emits after that aborts the process).

    Returns the worker; ``worker.release()`` does the clean-up for a worker that never ran (taken out of the
    pool's queue).
    """
    import weakref

    global _exit_hooked
    if not _exit_hooked:
        atexit.register(stop_workers_at_exit)  # registered after PyQt's exit handler: runs before it (LIFO)
        _exit_hooked = True

    holder = [job]

    def guarded():
        fn = holder[0] if holder else None
        if stop.is_set() or fn is None:  # cancelled or superseded while it waited for a thread
            raise _ops.Cancelled("cancelled")
        return fn()

    worker = _worker_class()(guarded, stop_event=stop, pool=thread_pool(pool))
    connections = [(worker.returned, returned), (worker.errored, errored), (worker.finished, finished)]
    if started is not None:
        connections.append((worker.started, started))
    task = _register_task(viewer, worker, description)
    for signal, slot in connections:
        signal.connect(slot)
    ref = weakref.ref(worker)

    def release() -> None:
        holder.clear()
        w = ref()
        for signal, slot in connections + ([(w.finished, release)] if w is not None else []):
            with contextlib.suppress(TypeError, RuntimeError):  # not connected, or the Qt object is gone
                signal.disconnect(slot)
        connections.clear()
        _finish_task(task)

    worker.finished.connect(release)  # after ``finished``: the caller's slot runs first
    worker.release = release
    _RUNNING.add(worker)
    worker.start()
    return worker


def owner_viewer(widget):
    """The napari viewer of the dock widget that holds ``widget`` (its nearest ancestor with a ``viewer``), or
    None."""
    w = widget
    while w is not None:
        viewer = getattr(w, "viewer", None)
        if viewer is not None and not callable(viewer):
            return viewer
        w = w.parent() if hasattr(w, "parent") else None
    return None


def _register_task(viewer, worker, description: str):
    """Show ``worker`` in ``viewer``'s task list (what napari lists when its window is closed with jobs running, and
    cancels); the entry's cancel callback holds the worker weakly. Returns ``(manager, id)``, or None without a
    viewer window."""
    import warnings
    import weakref

    try:
        from napari.utils.task_status import Status

        # napari has no public task API (0.9): its window's manager, reached through the viewer napari gave the
        # widget (a proxy that warns about private names; the object behind it does not)
        real = getattr(viewer, "__wrapped__", viewer)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            manager = real.window._task_status_manager if real is not None else None
    except Exception:  # noqa: BLE001 - no window (a headless viewer) or another napari: no task entry
        return None
    if manager is None:
        return None
    ref = weakref.ref(worker)

    def cancel() -> bool:
        w = ref()
        if w is not None:
            w.quit()
        return True

    task_id = manager.register_task_status("napari-linblur", Status.BUSY, description, cancel_callback=cancel)
    return manager, task_id


def _finish_task(task) -> None:
    """Remove a finished worker's entry from its viewer's task list (a list napari never empties)."""
    if task is None:
        return
    manager, task_id = task
    with contextlib.suppress(Exception):
        manager._tasks.pop(task_id, None)


_WORKER_CLASS = None


def _worker_class():
    """The plugin's worker class (napari's ``FunctionWorker`` with a cancel flag), made on first use."""
    global _WORKER_CLASS
    if _WORKER_CLASS is None:
        from napari.qt.threading import FunctionWorker

        class PluginWorker(FunctionWorker):
            """A ``FunctionWorker`` whose ``quit()`` also sets the job's cancel flag ``stop_event``, run in the
            plugin's thread ``pool`` rather than Qt's global one."""

            def __init__(self, func, *, stop_event: threading.Event, pool) -> None:
                super().__init__(func)
                self.stop_event = stop_event
                self.pool = pool

            def start(self) -> None:
                """:meth:`WorkerBase.start` (napari's ``quit()`` on exit still reaches the worker) in ``self.pool``."""
                from qtpy.QtCore import QThread

                if self in self._worker_set:
                    raise RuntimeError("This worker is already started!")
                repr(self)  # a RuntimeError if the worker was deleted
                self._worker_set.add(self)
                self._finished.connect(self._set_discard)
                if QThread.currentThread().loopLevel():
                    # as napari does: queued, so that connections made right after start() see every signal
                    QTimer.singleShot(1, partial(self.pool.start, self))
                else:
                    self.pool.start(self)

            def quit(self) -> None:  # noqa: D102 - see WorkerBase.quit
                self.stop_event.set()
                super().quit()

            def run(self) -> None:  # noqa: D102 - see WorkerBase.run
                try:
                    super().run()
                except RuntimeError:
                    # its signals were deleted (Python is exiting and the exit wait timed out): an exception out of
                    # a Qt thread would abort the process, so the worker ends quietly
                    pass
                finally:
                    _RUNNING.discard(self)

        _WORKER_CLASS = PluginWorker
    return _WORKER_CLASS


def running_workers() -> list:
    """The plugin's workers (live previews, runs) that were started and whose thread has not ended yet."""
    return list(_RUNNING)


def stop_workers_at_exit(msecs: int | None = None) -> bool:
    """Ask the plugin's workers to stop and wait up to ``msecs`` (:data:`EXIT_WAIT_MS`) for their thread pools.

    Registered with :mod:`atexit`: a script (or an IPython session) that ends while a preview or a run computes
    would otherwise tear down the Qt objects the worker reports through, and the worker's next signal aborts the
    process. Returns whether every worker ended in time.
    """
    workers = running_workers()
    if not workers:
        return True
    _quit_workers(workers)
    # the pools, not just the jobs: a thread is done with the worker's Qt objects once its run() has returned
    deadline = time.monotonic() + (EXIT_WAIT_MS if msecs is None else int(msecs)) / 1000
    done = True
    for pool in list(_POOLS.values()):
        left = max(0, int((deadline - time.monotonic()) * 1000))
        done = bool(pool.waitForDone(left)) and done
    return done


def _quit_workers(workers: list, *_: Any) -> None:
    """Ask ``workers`` to stop (also connected to ``destroyed``: must not touch the deleted object)."""
    for worker in list(workers):
        try:
            worker.quit()
        except Exception:  # noqa: BLE001 - a worker whose Qt object is gone cannot be asked
            continue


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


#: errors whose message says the problem in the user's terms (a bad input or setting, a missing file, a run folder
#: that is taken): notified as they are, without the exception's type nor a traceback on stderr
QUIET_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError, FileExistsError)


def describe(err: BaseException) -> str:
    """An error's message for a notification: prefixed with its type unless it is one of :data:`QUIET_ERRORS`."""
    text = str(err) or type(err).__name__
    return text if isinstance(err, QUIET_ERRORS) else f"{type(err).__name__}: {text}"


class RunPanel(QWidget):
    """Runs one long job at a time in a ``thread_worker`` (in the plugin's pool of long jobs, :data:`RUN_POOL`), with
    a progress bar, a napari progress bar (activity dock) and a Cancel button. Errors become napari notifications
    naming the problem.

    A run counts as cancelled only when its job stopped because of the Cancel (it raised ``Cancelled``, or its result
    says it stopped early: ``start(..., stopped_early=...)``): a job that completed before a late Cancel took effect
    (e.g. the click was handled after the last plane was written) is shown as usual, and its status says so."""

    def __init__(self, title: str = "", parent=None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.status = QLabel("no run yet")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.status)
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._stop = threading.Event()
        #: the current run's result is dropped even if its job completes (its widget was removed from the viewer)
        self._discard = threading.Event()
        self.worker = None
        #: takes the current run out of the thread pool's queue if it has not started (see :meth:`start`)
        self._take_back: Callable[[], bool] | None = None
        #: the running worker (a list, so that the ``destroyed`` hook can stop it without touching this panel)
        self._workers: list = []
        self.destroyed.connect(partial(_quit_workers, self._workers))
        self._pbar = None
        self._desc = title
        self.last_error: str | None = None
        #: (done, total) of the newest progress report of the current/last run
        self.last_progress: tuple[int, int] | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def refuse(self, msg: str) -> None:
        """A run that cannot start: the notification and the status line say why."""
        self.status.setText(msg)
        notify_error(msg)

    def cancel(self, *, discard: bool = False) -> None:
        """Ask the running job to stop (the Cancel button). With ``discard`` its result is dropped even when the job
        completes before it sees the request (its widget is gone); otherwise such a result is shown as usual."""
        if self.worker is not None:
            if discard:
                self._discard.set()
            self._stop.set()
            self.status.setText(f"cancelling {self._desc}…")
            if self._take_back is not None:
                self._take_back()  # a run still queued for a thread ends now, not when another run frees one

    def start(
        self,
        fn: Callable[[Callable[[int, int], None], Callable[[], bool]], Any],
        *,
        desc: str,
        on_result: Callable[[Any], None],
        on_cancel: Callable[[], None] | None = None,
        inputs: dict[str, str] | None = None,
        stopped_early: Callable[[Any], bool] | None = None,
        note: str = "",
    ) -> bool:
        """Run ``fn(report, should_stop)`` in a worker thread; ``on_result`` runs in the GUI thread.

        ``inputs`` maps the operation's argument names (``img``, ``img_b``, …) to the input layers' names, so that
        an error says "'cells' contains NaN" rather than "img contains NaN". A job that stops when asked by returning
        (rather than raising ``Cancelled``) passes ``stopped_early(result)``: True for a result of a stopped job
        (``on_cancel`` runs, not ``on_result``). ``note`` is added to the status line of a completed run.
        """
        if self.worker is not None:
            if self._stop.is_set():  # Cancel was pressed: the job stops at its next check (a plane, a tile)
                notify_error(f"{desc}: the cancelled run ({self._desc}) is still stopping; press again in a moment")
            else:
                notify_error(f"{desc}: another run ({self._desc}) is in progress; cancel it first")
            return False
        self._stop = threading.Event()
        self._discard = threading.Event()
        stop, discard = self._stop, self._discard
        bridge = self._bridge
        self._desc = desc
        self.last_error = None
        self.last_progress = None

        def report(done: int, total: int) -> None:
            bridge.progressed.emit(int(done), int(total))
            if stop.is_set():
                raise _ops.Cancelled("cancelled")

        def job():
            return fn(report, stop.is_set)

        self.bar.setRange(0, 0)  # busy until the first report
        self.cancel_btn.setEnabled(True)
        pool = thread_pool(RUN_POOL)
        queued = pool.activeThreadCount() >= pool.maxThreadCount()
        running_text = f"{desc}…"
        queued_text = f"{desc}: queued — waiting for one of the other runs to end"
        self.status.setText(queued_text if queued else running_text)

        def began():
            if _alive(self) and self.status.text() == queued_text:
                self.status.setText(running_text)

        answered: list[bool] = []  # returned or errored ran (a worker told to quit() before it returned emits neither)
        completed: list[bool] = []  # on_result ran without an error

        def returned(result):
            answered.append(True)
            if not _alive(self):
                return
            if discard.is_set() or (stopped_early is not None and stopped_early(result)):
                self.status.setText(f"{desc}: cancelled")
                if on_cancel:
                    on_cancel()
                return
            try:
                on_result(result)
            except NothingToShow as why:
                self.status.setText(f"{desc}: {why}")
                return
            except Exception as err:  # noqa: BLE001
                self._fail(desc, err, inputs)
                return
            completed.append(True)
            # a Cancel that came after the job's last check: the result is complete, so it is shown
            late = " — it finished before Cancel took effect" if stop.is_set() else ""
            self.status.setText(f"{desc}: done{late}{note}")

        def errored(err):
            answered.append(True)
            if not _alive(self):
                return
            if isinstance(err, _ops.Cancelled) or stop.is_set():
                self.status.setText(f"{desc}: cancelled — nothing was added or written")
                if on_cancel:
                    on_cancel()
            else:
                self._fail(desc, err, inputs)

        def finished():
            if worker in workers:
                workers.remove(worker)
            if not _alive(self):
                return
            self.worker = None
            self._take_back = None
            self.cancel_btn.setEnabled(False)
            if not answered:
                self.status.setText(f"{desc}: cancelled — nothing was added or written")
                if on_cancel:
                    on_cancel()
            ok = bool(completed) and self.last_error is None
            if self.last_progress is not None:
                done, total = self.last_progress
                self.bar.setRange(0, max(1, total))
                self.bar.setValue(min(done, total))
            else:
                self.bar.setRange(0, 1)
                self.bar.setValue(1 if ok else 0)
            if self._pbar is not None:
                self._pbar.close()
                self._pbar = None

        workers = self._workers
        worker = start_worker(job, stop, returned=returned, errored=errored, finished=finished, pool=RUN_POOL,
                              started=began, viewer=owner_viewer(self), description=desc)

        def take_back() -> bool:
            # a worker still waiting in the pool's queue (all threads busy with other runs) never emits finished
            # until a thread frees up: taken out of the queue, it ends here, as a cancelled run
            try:
                taken = bool(pool.tryTake(worker))
            except RuntimeError:  # its Qt object is gone
                return False
            if taken:
                _RUNNING.discard(worker)
                with contextlib.suppress(Exception):
                    type(worker)._worker_set.discard(worker)
                finished()
                worker.release()  # never ran, so never emitted finished: its callbacks and task entry go here
            return taken

        self.worker = worker
        self._take_back = take_back
        workers.append(worker)
        return True

    def _fail(self, desc: str, err: BaseException, inputs: dict[str, str] | None = None) -> None:
        msg = f"{desc} failed: {name_arguments(describe(err), inputs or {})}"
        self.last_error = msg
        self.status.setText(msg)
        if not isinstance(err, QUIET_ERRORS):
            traceback.print_exception(type(err), err, err.__traceback__)
        notify_error(msg)

    def _on_progress(self, done: int, total: int) -> None:
        if self.worker is None:
            return
        total = max(1, total)
        self.last_progress = (done, total)
        self.bar.setRange(0, total)
        self.bar.setValue(min(done, total))
        if self._pbar is None:
            from napari.utils import progress

            if getattr(self, "_making_pbar", False):
                return  # a report delivered while napari draws the new bar (it processes events): the bar catches up
            self._making_pbar = True
            try:
                bar = progress(total=total, desc=self._desc)
            finally:
                self._making_pbar = False
            if self.worker is None:  # the run ended while the bar was drawn: its finished() found no bar to close
                bar.close()
                return
            self._pbar = bar
        if self._pbar.total != total:
            self._pbar.total = total
        self._pbar.update(max(0, done - self._pbar.n))


class NothingToShow(Exception):
    """Raised by a run's ``on_result`` when its result has nothing left to be shown on (its input layer was deleted
    meanwhile): an ordinary turn of events, said on the run's status line, not as an error notification."""


class NoInput(ValueError):
    """No input layer is picked (an empty viewer, the input was deleted): for a preview this is "waiting", not an
    error; a whole-stack run still reports it."""


def preview_error_text(text: str, inputs: dict[str, str]) -> str:
    """A preview's error message naming the input layer(s) rather than the operation's argument.

    Examples
    --------
    >>> preview_error_text("img contains NaN or Inf values", {"img": "cells"})
    "preview failed: 'cells' contains NaN or Inf values"
    >>> preview_error_text("model file missing", {"img": "cells"})
    "preview of 'cells' failed: model file missing"
    """
    named = name_arguments(text, inputs)
    if named != text:
        return f"preview failed: {named}"
    names = list(dict.fromkeys(inputs.values()))
    if names and not any(repr(n) in text for n in names):
        return f"preview of {' and '.join(repr(n) for n in names)} failed: {text}"
    return f"preview failed: {text}"


def no_image_hint(viewer) -> str:
    """Why a viewer with layers offers no input: RGB images and labels are not single-channel images.

    Returns ``""`` when there is nothing to explain (an empty viewer, or image layers only).
    """
    from napari.layers import Image, Labels

    layers = [ly for ly in viewer.layers if not ly.metadata.get("linblur_preview")]
    rgb = [ly.name for ly in layers if isinstance(ly, Image) and ly.rgb]
    labels = [ly.name for ly in layers if isinstance(ly, Labels)]
    parts = []
    if rgb:
        parts.append(f"RGB images are not supported ({', '.join(repr(n) for n in rgb)}): split the channels "
                     "(right-click the layer → Split RGB) and pick one channel")
    if labels:
        parts.append(f"labels layers ({', '.join(repr(n) for n in labels)}) are not images")
    return "; ".join(parts)


def no_input(viewer, what: str) -> NoInput:
    """The :class:`NoInput` of a widget with nothing picked: ``what`` to pick, and why nothing is offered."""
    hint = no_image_hint(viewer)
    return NoInput(f"{what} — {hint}" if hint else what)


def view_note(viewer) -> str:
    """What the preview status adds when the viewer does not show a YX plane (a 3-D view, or axes transposed so
    that the canvas shows, e.g., Z and X): the 2-D preview is always of the YX plane at the current position.

    Examples
    --------
    >>> view_note(None)
    ''
    """
    dims = getattr(viewer, "dims", None)
    if dims is None or dims.ndim < 2:
        return ""
    if dims.ndisplay == 3:
        return " — it is the YX plane at the current Z, drawn flat in this 3-D view; switch to 2-D to see it in place"
    if set(dims.displayed) != {dims.ndim - 2, dims.ndim - 1}:
        return (" — it is the YX plane at the current position, while the canvas shows other axes (transposed "
                "view); it is not drawn in place")
    return ""


def preview_status_label() -> QLabel:
    """The live preview's own status line ("updating preview…", "preview up to date", "waiting: …", its errors),
    apart from the run panel's, so a preview never overwrites what a whole-stack run reported."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setToolTip("state of the live preview; whole-stack runs report under their progress bar")
    return label


class LivePreview(QObject):
    """Debounced preview: ``request()`` restarts a single-shot timer; when it fires the previous preview
    is told to stop and a new worker computes the current request. Results of superseded requests are
    dropped, so the newest request always wins.

    ``parent`` is the widget (a :class:`LinblurWidget`): the result of a request whose input layer (one of
    ``sources()`` when the request was made) is no longer in its viewer is dropped; :meth:`drop_input` stops it as
    soon as the layer is deleted. ``status`` is the preview's own status line (:func:`preview_status_label`).
    """

    def __init__(self, compute: Callable[[Callable[[], bool]], Any], apply: Callable[[Any], None],
                 status: QLabel | None = None, parent=None,
                 inputs: Callable[[], dict[str, str]] | None = None,
                 sources: Callable[[], list] | None = None) -> None:
        super().__init__(parent)
        self._compute = compute
        self._apply = apply
        self._status = status
        #: ``inputs()`` maps the operation's argument names (``img``, ``img_b``, …) to the input layers' names, so
        #: that an error says "'cells' contains NaN" rather than "img contains NaN"
        self._inputs = inputs
        #: ``sources()`` lists the input layers a request reads; ``_sources`` those of the newest request
        self._sources_of = sources
        self._sources: list = []
        #: (inputs, message) of the last error shown as a pop-up: the same error again only updates the status line
        self._notified: tuple | None = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._fire)
        self.generation = 0
        self.applied_generation = 0
        self.completed = 0
        #: set by the widget while it shows a preview: a remark for the status line (e.g. planes in the wrong order)
        self.note = ""
        self._stop: threading.Event | None = None
        self.workers: list = []
        # a preview still computing when the widget is deleted is stopped (the list is shared, not this object)
        self.destroyed.connect(partial(_quit_workers, self.workers))
        self.enabled = True
        self.last_error: str | None = None
        # a first preview once the widget sits in the viewer (requests made while it is built are dropped)
        QTimer.singleShot(0, self.request)

    def _host_shown(self) -> bool:
        """False once the widget was removed from the viewer (napari's close button removes the dock)."""
        host = self.parent()
        if host is None or not _alive(host):
            return False
        return host.parent() is not None

    def request(self, *_: Any) -> None:
        if not self.enabled or not _alive(self) or not self._host_shown():
            return
        self.timer.start(max(0, get_settings().preview_delay_ms))

    @property
    def busy(self) -> bool:
        return bool(self.workers) or self.timer.isActive()

    def _say(self, text: str) -> None:
        if self._status is not None and _alive(self._status):
            self._status.setText(text)

    def _present(self, layers: list) -> bool:
        """Whether every layer of ``layers`` is still in the widget's viewer."""
        viewer = getattr(self.parent(), "viewer", None)
        return viewer is None or all(ly in viewer.layers for ly in layers)

    def drop_input(self, layer) -> bool:
        """``layer`` was deleted: if the newest request reads it, stop that preview and drop its result (a preview
        returning later must not bring back a map of a deleted layer). Returns whether a request was dropped."""
        if layer is None or not any(ly is layer for ly in self._sources):
            return False
        if self._stop is not None:
            self._stop.set()
        self._sources = []
        self.generation += 1
        self.applied_generation = self.generation  # nothing of it is pending any more
        return True

    def _fire(self) -> None:
        if self._stop is not None:
            self._stop.set()  # supersede the running preview
        self.generation += 1
        gen = self.generation
        stop = threading.Event()
        self._stop = stop
        inputs = self._input_names()
        sources = self._source_layers()
        self._sources = sources
        try:
            job = self._compute(stop.is_set)
        except NoInput as err:  # nothing to preview yet: say so quietly, drop a preview of a deleted input
            self.last_error = None
            self.applied_generation = gen
            self._say(f"waiting: {err}")
            clear = getattr(self.parent(), "clear_preview", None)
            if clear is not None:
                clear()
            return
        except Exception as err:  # noqa: BLE001 - e.g. an impossible setting
            self._error(err, gen, inputs)
            return
        if job is None:
            return
        self._say("updating preview…")

        def returned(result):
            if not _alive(self):
                return
            # an input deleted meanwhile: its preview is dropped (drop_input normally stopped it already)
            if gen == self.generation and not stop.is_set() and self._present(sources):
                try:
                    self.note = ""
                    self._apply(result)  # may set ``note``: something the user should know about this preview
                    self.applied_generation = gen
                    self.last_error = None
                    self._notified = None
                    self._say("preview up to date" + (f" — {self.note}" if self.note else "")
                              + view_note(getattr(self.parent(), "viewer", None)))
                except Exception as err:  # noqa: BLE001
                    self._error(err, gen, inputs)

        def errored(err):
            if not _alive(self):
                return
            if not isinstance(err, _ops.Cancelled) and gen == self.generation:
                self._error(err, gen, inputs)

        def finished():
            if worker in workers:
                workers.remove(worker)
            if _alive(self):
                self.completed += 1

        workers = self.workers
        worker = start_worker(job, stop, returned=returned, errored=errored, finished=finished,
                              viewer=owner_viewer(self), description="live preview")
        workers.append(worker)

    def _source_layers(self) -> list:
        if self._sources_of is None:
            return []
        try:
            return [ly for ly in self._sources_of() if ly is not None]
        except Exception:  # noqa: BLE001 - no input picked: the compute step says so
            return []

    def _input_names(self) -> dict[str, str]:
        if self._inputs is None:
            return {}
        try:
            return dict(self._inputs())
        except Exception:  # noqa: BLE001 - no input picked: the compute step says so
            return {}

    def _error(self, err: BaseException, gen: int, inputs: dict[str, str] | None = None) -> None:
        msg = preview_error_text(describe(err), inputs or {})
        self.last_error = msg
        self.applied_generation = gen
        self._say(msg)
        key = (tuple(sorted((inputs or {}).items())), msg)
        if key == self._notified:
            return  # the same error of the same input again (e.g. every plane of a layer with a NaN): status only
        self._notified = key
        notify_error(msg)

    def stop(self) -> None:
        """Drop a pending request and stop the previews still computing (their results are dropped); the status
        line says the live preview is off."""
        self.timer.stop()
        if self._stop is not None:
            self._stop.set()
        _quit_workers(self.workers)
        self._say("live preview off")


# ------------------------------------------------------------------------------------------ layout


#: what a lazy output layer costs while browsing it (napari slices it on its main thread; its asynchronous slicing is
#: an experimental setting for the whole application, so the plugin does not switch it on for these layers)
LAZY_COST = ("each plane is computed when napari shows it, and napari waits for it: seconds per 1024 x 1024 plane "
             "on a CPU with the shipped models, at every move of the slider")
#: the status line's note after a lazy layer was added
LAZY_NOTE = f" — lazy layer: {LAZY_COST}; for big stacks prefer 'new layer' or 'OME-Zarr file'"


class OutputChooser(QWidget):
    """Where a whole-stack run goes: a computed layer, a lazy dask layer, or an OME-Zarr file."""

    LAYER, LAZY, ZARR = "layer", "lazy", "zarr"
    TIPS = {
        LAYER: "compute every plane now (in the background, with progress and Cancel) and add the result as a layer; "
               "browsing it is instant",
        LAZY: f"add a layer at once whose planes are computed only when shown: {LAZY_COST}. Good for a quick look "
              "at a few planes; for big stacks prefer 'new layer' or 'OME-Zarr file'",
        ZARR: "compute every plane in the background and write it to an OME-Zarr file on disk (plane by plane, "
              "never whole in memory), then open it",
    }

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.combo = narrow_combo(QComboBox())
        self.combo.addItem("new layer (compute now)", self.LAYER)
        self.combo.addItem("lazy layer (planes computed when shown)", self.LAZY)
        self.combo.addItem("OME-Zarr file", self.ZARR)
        for i in range(self.combo.count()):
            self.combo.setItemData(i, self.TIPS[self.combo.itemData(i)], Qt.ItemDataRole.ToolTipRole)
        self.path = QLineEdit()
        self.path.setPlaceholderText("output.ome.zarr")
        browse = QPushButton("…")
        browse.setMaximumWidth(28)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path, 1)
        row.addWidget(browse)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.combo)
        self._row = QWidget()
        self._row.setLayout(row)
        row.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self._row)
        self.combo.currentIndexChanged.connect(self._update)
        self._update()

    def _update(self, *_: Any) -> None:
        self._row.setVisible(self.mode() == self.ZARR)
        self.combo.setToolTip(self.TIPS[self.mode()])

    def _browse(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Write OME-Zarr", "", "OME-Zarr (*.ome.zarr *.zarr)")
        if path:
            self.path.setText(path)

    def mode(self) -> str:
        return self.combo.currentData()

    def set_mode(self, mode: str, path: str | None = None) -> None:
        self.combo.setCurrentIndex(self.combo.findData(mode))
        if path is not None:
            self.path.setText(str(path))


def tta_combo(tooltip: str) -> QComboBox:
    """Self-ensemble choice (``tta`` of the operations): off, 2, 4 or 8 flips/rotations; item data = the int."""
    box = narrow_combo(QComboBox(), 12)
    for n, label in ((1, "off"), (2, "2 flips (2× time)"), (4, "4 flips (4× time)"),
                     (8, "8 flips/rotations (8× time)")):
        box.addItem(label, n)
    box.setToolTip(tooltip)
    return box


def group(title: str, rows: list[tuple[str, QWidget]] | None = None) -> tuple[QGroupBox, QFormLayout]:
    box = QGroupBox(title)
    form = QFormLayout(box)
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    for label, w in rows or []:
        form.addRow(label, w)
    return box, form


class MplPlot(QWidget):
    """A small matplotlib canvas for the docks (focus curve, loss curve): ``self.figure``, ``self.ax``."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.ax = self.figure.add_subplot(111)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)


class LinblurWidget(QWidget):
    """Base of the dock widgets: a viewer, a scrollable vertical layout, preview-layer bookkeeping."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(6, 6, 6, 6)
        self._preview_layer = None
        self._preview_like = None
        #: the style (contrast limits, colormap) this widget last gave its preview layer
        self._preview_style: dict[str, Any] = {}
        #: :meth:`lead_key` of the inputs of the newest preview
        self._lead_key: tuple = ()
        # the preview of a deleted input goes with it, also while the live preview is switched off
        napari_viewer.layers.events.removed.connect(self._on_removed)
        # a 3-D or transposed view does not show the preview's YX plane: its status line says so at once
        napari_viewer.dims.events.ndisplay.connect(self._on_view)
        napari_viewer.dims.events.order.connect(self._on_view)

    def _on_view(self, *_: Any) -> None:
        if not _alive(self):
            return
        for preview in self.findChildren(LivePreview):
            if preview.enabled and preview.last_error is None and preview.applied_generation == preview.generation:
                preview._say("preview up to date" + view_note(self.viewer))

    def _on_removed(self, event) -> None:
        if not _alive(self):
            return
        layer = getattr(event, "value", None)
        # a preview still computing from the deleted layer is stopped: its result would bring its map back
        for preview in self.findChildren(LivePreview):
            preview.drop_input(layer)
        if self._preview_like is not None and layer is self._preview_like:
            self.clear_preview()
        if any(key[0] is layer for key in self._lead_key):  # the last preview's inputs: not kept alive by it
            self._lead_key = ()

    def input_layers(self) -> list:
        """The layers picked in this widget's layer pickers (what its live preview reads)."""
        return [ly for ly in (p.layer() for p in self.findChildren(LayerPicker)) if ly is not None]

    def lead_key(self, *layers, with_z: bool = False) -> tuple:
        """``layers`` with the viewer's time/position indices in each (its leading axes other than Z; with
        ``with_z``, Z too). A preview needs recomputing only when this key of its inputs changes: the pair widgets
        take Z from their plane pickers, the defocus widget follows the viewer's plane."""
        return tuple((ly, _ops.current_indices(self.viewer, ly)[:None if with_z else -1])
                     for ly in layers if ly is not None)

    # --- output layers -------------------------------------------------------------------------
    def show_preview(self, data: np.ndarray, *, name: str, like, restyle: bool = False, **kwargs):
        """Add or update this widget's 2-D preview layer, placed like ``like``'s YX plane.

        The style in ``kwargs`` (``contrast_limits``, ``colormap``) is given when the layer is created, when the
        input layer changes, or with ``restyle``; otherwise it is given only while the layer still has the style
        this widget gave it, so limits or a colormap the user set in the layer controls are kept.
        """
        scale = tuple(like.scale[-2:])
        translate = tuple(like.translate[-2:])
        layer = self._preview_layer
        if layer is None or layer not in self.viewer.layers:
            placed, problem = pl.placement(like, 2)
            # marked as a preview when inserted, so the layer pickers (which refresh on insertion) leave it out
            layer = self.viewer.add_image(data, name=name, scale=scale, translate=translate,
                                          units=tuple(like.units[-2:]), metadata={"linblur_preview": True},
                                          **placed, **kwargs)
            self._preview_layer = layer
            self._preview_style = {k: pl.style_of(layer, k) for k in pl.STYLE if k in kwargs}
            pl.warn_placement(problem)
        else:
            restyle = restyle or like is not self._preview_like
            pl.place_layer(layer, data, name=name, like=like)
            for k, v in kwargs.items():
                if k not in pl.STYLE:
                    continue
                ours = self._preview_style.get(k)
                if restyle or ours is None or pl.same_style(pl.style_of(layer, k), ours):
                    setattr(layer, k, v)
                    self._preview_style[k] = pl.style_of(layer, k)
        self._set_preview_like(like)
        return layer

    def _set_preview_like(self, like) -> None:
        """Make ``like`` the layer the preview is placed on, following its moves (scale, translate, rotation, …)."""
        old = self._preview_like
        if old is like:
            return
        for layer, method in ((old, "disconnect"), (like, "connect")):
            for key in pl.PLACEMENT_EVENTS:
                emitter = getattr(getattr(layer, "events", None), key, None)
                if emitter is not None:
                    getattr(emitter, method)(self._follow_like)
        self._preview_like = like

    def _follow_like(self, event=None) -> None:
        """The preview's input moved: place the preview on it again (no new computation)."""
        if not _alive(self):
            return
        layer, like = self._preview_layer, self._preview_like
        if layer is None or like is None or layer not in self.viewer.layers:
            return
        if getattr(event, "source", like) is not like:
            return
        pl.warn_placement(pl.follow_placement(layer, like))
        for extra in self.preview_companions():  # e.g. the defocus map's signal outline, on the same plane
            if extra in self.viewer.layers:
                pl.follow_placement(extra, like)

    def preview_companions(self) -> list:
        """Other 2-D layers shown with the preview on its input's plane, moved with it (none by default)."""
        return []

    def clear_preview(self) -> None:
        """Remove this widget's preview layer (its input is gone)."""
        self._preview_style = {}
        self._set_preview_like(None)
        layer, self._preview_layer = self._preview_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _show_preview(self, result) -> None:
        """Show a preview job's ``(data, name, input_layer[, note])`` in the input's units, colormap and contrast;
        a note goes on the preview's status line."""
        data, name, like = result[:3]
        self.show_preview(data, name=name, like=like, contrast_limits=pl.input_limits(like, data),
                          colormap=pl.input_colormap(like))
        if len(result) > 3 and result[3]:
            self.preview.note = result[3]

    def _toggle_preview(self, on: bool) -> None:
        """The 'live preview' checkbox: start (and request one now) or stop the widget's LivePreview."""
        self.preview.enabled = on
        if on:
            self.preview.request()
        else:
            self.preview.stop()

    def add_result(self, data, *, name: str, scale, translate, metadata=None, like=None, dropped_z: bool = False,
                   **kwargs):
        """Add a whole-stack result, placed with ``scale`` and ``translate`` and, given the input layer ``like``, its
        axis labels, rotation, shear and affine for the axes the result keeps (:func:`.._placement.placement`)."""
        kwargs.setdefault("blending", "translucent")
        if like is not None:
            placed, problem = pl.placement(like, np.ndim(data) if not isinstance(data, list) else data[0].ndim,
                                        dropped_z=dropped_z)
            kwargs = {**placed, **kwargs}
            pl.warn_placement(problem)
        layer = self.viewer.add_image(data, name=name, scale=tuple(scale), translate=tuple(translate), **kwargs)
        layer.metadata.update(metadata or {})
        return layer

    def closeEvent(self, event):  # noqa: N802
        for child in self.findChildren(LivePreview):
            child.stop()
        super().closeEvent(event)

    def event(self, ev):  # noqa: D102 - Qt override
        # napari's remove_dock_widget (the dock's close button) un-parents the widget rather than closing it: stop
        # its previews and cancel its runs, so nothing is computed or added to the viewer for a widget that is gone
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.removed_from_viewer()
        return super().event(ev)

    def removed_from_viewer(self) -> None:
        """Stop the live previews, remove the preview layers (a reopened widget makes its own) and cancel a running
        job (its result is dropped, an OME-Zarr is not written)."""
        for preview in self.findChildren(LivePreview):
            preview.stop()
        for panel in self.findChildren(RunPanel):
            panel.cancel(discard=True)
        self.clear_preview()
        disconnect_viewer_events(self, getattr(self, "viewer", None))


def disconnect_viewer_events(root: QObject, viewer) -> None:
    """Disconnect ``root`` and its child objects from the viewer's layer-list and dims events and its layers' name
    and data events: a dock widget removed from the viewer would otherwise go on handling them (a warning per
    closed dock, plane pickers following the viewer) until Python frees it."""
    if viewer is None:
        return
    owners = [root, *root.findChildren(QObject)]
    groups = [viewer.layers.events, viewer.dims.events]
    emitters = [em for g in groups for em in getattr(g, "emitters", {}).values()]
    for layer in viewer.layers:
        emitters += [getattr(layer.events, n) for n in ("name", "data") if hasattr(layer.events, n)]
    for em in emitters:
        for owner in owners:
            with contextlib.suppress(Exception):  # napari's emitters drop the callbacks bound to ``owner``
                em.disconnect(owner)


source_paths = _ops.source_paths  # the files layers read from (Qt-free: the writer uses it too)
