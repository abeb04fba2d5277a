"""**Train** — train a model on synthetic data, an image layer or a dataset with the shared training loop
(:func:`napari_linblur.training.loop.train`: deterministic seeds, checkpoints, logs), watch the loss curve
live, and use the saved model in the other widgets straight away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from .. import _ops, _train
from .._settings import get_settings
from . import _common as c

#: files a training run writes into its folder (the loop's, and the dataset of an image-layer run): a folder holding
#: any of them is taken
RUN_FILES = ("log.jsonl", "log.csv", "train_config.json", "model.json", "data.ome.zarr")


def holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run: its checkpoint, its model or another of :data:`RUN_FILES`.

    Raises
    ------
    OSError
        the name cannot be looked up (e.g. ``File name too long``).

    Examples
    --------
    >>> holds_a_run(Path("/no/such/run"))
    False
    """
    from napari_linblur.training.loop import CHECKPOINT, MODEL

    return any((folder / name).exists() for name in (CHECKPOINT, MODEL, *RUN_FILES))


class _LogBridge(QObject):
    record = Signal(object)


class LossPlot(c.MplPlot):
    """Live training curve: the training loss per logged step (left axis) and the validation loss as markers on
    its own axis (right): the tasks' two losses differ in kind and scale (deblurring trains on log10 of the MSE and
    validates with the L1 error), so one shared axis would draw the validation flat at 0."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.val_ax = self.ax.twinx()
        self.reset()

    def reset(self) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self._redraw()

    def add(self, rec: dict) -> None:
        if "loss" in rec:
            self.steps.append(int(rec["step"]))
            self.losses.append(float(rec["loss"]))
        if "val_loss" in rec:
            self.val_steps.append(int(rec["step"]))
            self.val_losses.append(float(rec["val_loss"]))
        self._redraw()

    def _redraw(self) -> None:
        ax, vax = self.ax, self.val_ax
        train, val = "#3a7bd5", "#e4572e"
        ax.clear()
        vax.clear()
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8, color=train)
        ax.tick_params(labelsize=7)
        ax.tick_params(axis="y", colors=train)
        vax.yaxis.tick_right()  # clear() put the twin axis back on the left, over the training loss's label
        vax.yaxis.set_label_position("right")
        vax.set_ylabel("validation loss", fontsize=8, color=val)
        vax.tick_params(labelsize=7, colors=val)
        vax.set_visible(bool(self.val_steps))
        if self.steps:
            ax.plot(self.steps, self.losses, "-", color=train)
        if self.val_steps:
            vax.plot(self.val_steps, self.val_losses, "o", color=val, ms=4)
        if not (self.steps or self.val_steps):
            ax.text(0.5, 0.5, "loss appears here while training", ha="center", va="center",
                    transform=ax.transAxes, fontsize=8, color="gray")
        self.canvas.draw_idle()


#: the run folder offered: in the user's home, not in a temporary folder the system may empty (a trained model
#: lives there)
DEFAULT_RUN = Path.home() / "linblur-runs" / "run"

#: what each network size is (the names are the command line's --config values)
PRESET_TIPS = {
    "default": "the shipped model's size: trains on a laptop CPU",
    "paper": "the architecture the paper describes: large, meant for a GPU",
    "tiny": "a very small network for quick tries (and the tests): trains in minutes, lower quality",
    "fast": "a small deblurring network: faster than default, lower quality",
    "lean": "the same as default (the name the shipped deblurring model's command used)",
    "classic": "the first deblurring models' layout: slower than default for the same quality",
    "speed": "default with fewer channels at half resolution (made from a trained default by shrinking)",
    "large": "a wider, deeper deblurring network: slower, for a GPU",
}


class TrainWidget(c.LinblurWidget):
    """Dock widget: choose a model, data and a few options; Start trains in a worker thread."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        v = napari_viewer
        self.kind = c.narrow_combo(QComboBox(), 20)
        for k, label in _train.KINDS.items():
            self.kind.addItem(label, k)
        self.preset = QComboBox()
        self.preset.setToolTip("the network's size: 'default' is the shipped model's, sized for a laptop CPU; "
                               "'paper' the published architecture (for a GPU); hover a choice for more")
        self.init = c.narrow_combo(QComboBox(), 20)
        self.init.setToolTip("new weights of the chosen size, or fine-tune a trained model (its size is kept)")
        self.source = QComboBox()
        self.layer = c.LayerPicker(v)
        self.path = QLineEdit()
        self.path.setPlaceholderText("dataset.zarr or BBBC006 folder")
        path_row = self.path_row = c.with_browse_button(self.path, self._browse_data)
        box, self._data_form = c.group(
            "Model and data",
            [("model", self.kind), ("start from", self.init), ("size", self.preset), ("data", self.source),
             ("layer", self.layer),
             ("dataset", path_row)],
        )
        self.layout().addWidget(box)

        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(200)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(5)
        self.lr.setRange(1e-5, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setValue(1e-3)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(4)
        self.patch = QSpinBox()
        self.patch.setRange(16, 1024)
        self.patch.setSingleStep(16)
        self.patch.setValue(64)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        for w, tip in ((self.kind, "what the model does: blur synthesis and pair deblurring (autoencoder), "
                                   "single-image deblurring, or defocus maps"),
                       (self.source, "what it learns from: the built-in synthetic data, an image layer, or a dataset "
                                     "on disk"),
                       (self.steps, "training steps (more: better, longer)"),
                       (self.lr, "learning rate of the optimizer (lower it if training diverges)"),
                       (self.batch, "examples per step"),
                       (self.patch, "side of the square crops trained on (px)"),
                       (self.seed, "the same seed and options give the same model")):
            w.setToolTip(tip)
        self.out = QLineEdit(str(DEFAULT_RUN))
        self.out.setToolTip("where the model, its checkpoint and its log are saved (a folder holding a run already "
                            "gets -2, -3 … added)")
        out_row = c.with_browse_button(self.out, self._browse_out)
        box, _ = c.group("Training", [("steps", self.steps), ("learning rate", self.lr), ("batch", self.batch),
                                      ("patch (px)", self.patch), ("seed", self.seed), ("run folder", out_row)])
        self.layout().addWidget(box)

        self.start_btn = QPushButton("Start training")
        self.start_btn.clicked.connect(self.start)
        self.plot = LossPlot()
        self.panel = c.RunPanel("training")
        self.result_label = QLabel("")
        self.result_label.setWordWrap(True)
        box, form = c.group("Run")
        form.addRow(self.start_btn)
        form.addRow(self.panel)
        form.addRow(self.plot)
        form.addRow(self.result_label)
        self.layout().addWidget(box)
        self.layout().addStretch(1)

        self._bridge = _LogBridge()
        self._bridge.record.connect(self.plot.add)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.source.currentIndexChanged.connect(self._source_changed)
        self.init.currentIndexChanged.connect(self._init_changed)
        self.model_path: str | None = None
        _ops.USER_MODELS.subscribe(self._fill_init)
        self.destroyed.connect(lambda *_: _ops.USER_MODELS.unsubscribe(self._fill_init))
        self._kind_changed()

    # --- UI state ------------------------------------------------------------------------------
    def _row(self, widget, visible: bool) -> None:
        widget.setVisible(visible)
        label = self._data_form.labelForField(widget)
        if label is not None:
            label.setVisible(visible)

    def _kind_changed(self, *_: Any) -> None:
        kind = self.kind.currentData()
        self.preset.clear()
        try:
            c.add_items(self.preset, [(p, p, PRESET_TIPS.get(p, "")) for p in _train.presets(kind)])
        except Exception as err:  # noqa: BLE001 - a model module not available
            self.panel.status.setText(f"{kind}: {c.describe(err)}")
        self.source.clear()
        for s in _train.sources(kind):
            self.source.addItem(_train.SOURCES[s], s)
        self._source_changed()
        self._fill_init()

    def _fill_init(self) -> None:
        """Start from: new weights, the shipped model, or a model trained in this session (fine-tuning)."""
        kind = self.kind.currentData()
        keep = self.init.currentData()
        self.init.blockSignals(True)
        self.init.clear()
        self.init.addItem("new weights", "")
        self.init.addItem(f"fine-tune the shipped {kind}-default", f"{kind}-default")
        for path in _ops.USER_MODELS.get(kind):
            self.init.addItem(f"fine-tune {Path(path).parent.name}/{Path(path).name}", path)
        idx = self.init.findData(keep) if keep is not None else -1
        self.init.setCurrentIndex(max(0, idx))
        self.init.blockSignals(False)
        self._init_changed()

    def _init_changed(self, *_: Any) -> None:
        self._row(self.preset, not self.init.currentData())  # fine-tuning keeps the model's own size

    def _source_changed(self, *_: Any) -> None:
        src = self.source.currentData()
        self._row(self.layer, src == "layer")
        self._row(self.path_row, src == "path")

    def _browse_out(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Folder for the training run")
        if path:
            self.out.setText(str(Path(path) / "run"))

    def _browse_data(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training data")
        if path:
            self.path.setText(path)

    def set_choice(self, combo: QComboBox, data: str) -> None:
        idx = combo.findData(data)
        if idx < 0:
            raise ValueError(f"{data!r} is not offered; choices: {[combo.itemData(i) for i in range(combo.count())]}")
        combo.setCurrentIndex(idx)

    # --- run -----------------------------------------------------------------------------------
    def _unique_out(self) -> Path:
        """The run folder typed in the widget, or ``NAME-2``, ``NAME-3``, … when it already holds a run
        (:func:`holds_a_run`): a new run never fails on, nor writes into, an earlier one (e.g. one cancelled
        before its first log line, which leaves a checkpoint but no ``log.jsonl``).

        Raises
        ------
        OSError
            the name cannot be looked up (e.g. ``File name too long``).
        """
        out = Path(self.out.text().strip() or DEFAULT_RUN)
        if holds_a_run(out):
            k = 2
            while holds_a_run(out.parent / f"{out.name}-{k}"):
                k += 1
            out = out.parent / f"{out.name}-{k}"
        return out

    def _layer_snapshot(self, kind: str, patch: int) -> dict:
        """The chosen layer as the run will use it, taken here on the GUI thread when Start is pressed: its
        full-resolution data (the array it holds now), name and pixel size, checked to be trainable by a ``kind``
        model (:func:`napari_linblur._napari._train.check_layer_data`: shape always; the contents of an in-memory
        layer now, those of a lazy one are read in the worker). The job uses only this, never the pickers, so
        choosing another layer while the run waits in the queue changes nothing.

        Raises
        ------
        ValueError
            no layer, or one that cannot be trained on (naming it, the problem and the accepted form).
        """
        layer = self.layer.layer()
        if layer is None:
            raise c.no_input(self.viewer, "choose an image layer as training data")
        data = _ops.layer_array(layer)
        lazy = not isinstance(data, np.ndarray)
        _train.check_layer_data(data, layer.name, kind, patch, contents=not lazy)
        return {"data": data, "name": layer.name, "scale": [abs(float(s)) for s in layer.scale], "lazy": lazy}

    def start(self) -> bool:
        from napari_linblur.training.loop import TrainConfig, default_warmup, train

        if self.panel.running:
            c.notify_error("training is already running; cancel it first")
            return False
        kind = self.kind.currentData()
        source = self.source.currentData()
        try:
            out = self._unique_out()
        except OSError as err:  # e.g. a name too long for the file system
            self.panel.refuse(f"training: cannot create the run folder {self.out.text().strip()} "
                              f"({err.strerror or err}); choose a folder you can write to")
            return False
        steps = int(self.steps.value())
        cfg = TrainConfig(
            out=str(out), steps=steps, lr=float(self.lr.value()), seed=int(self.seed.value()),
            device=get_settings().device, progress=False, warmup=default_warmup(steps),
            log_every=max(1, min(10, steps // 20 or 1)), val_every=max(1, steps // 4),
            ckpt_every=max(1, steps // 4), command=f"napari Train widget ({kind})",
            # NHWC layout: the same model, 1.2-1.4x faster defocus training steps on CPU (docs/results/defocus.md)
            channels_last=kind == "defocus",
        )
        req = _train.TrainRequest(
            kind=kind, preset=self.preset.currentData(), source=source,
            data_path=self.path.text().strip() or None, patch=int(self.patch.value()), batch=int(self.batch.value()),
            seed=int(self.seed.value()), init=self.init.currentData() or None,
        )
        try:
            # everything the job needs is taken now, on the GUI thread: the job never reads the widgets
            snap = self._layer_snapshot(kind, req.patch) if source == "layer" else None
            _train.check_run_folder(out)
            out.mkdir(parents=True, exist_ok=True)
        except ValueError as err:
            self.panel.refuse(f"training: {err}")
            return False
        except OSError as err:
            self.panel.refuse(f"training: cannot create the run folder {out} ({err.strerror or err}); choose a "
                              "folder you can write to")
            return False
        layer_name = snap["name"] if snap else None
        bridge = self._bridge
        self.plot.reset()
        self.result_label.setText("")

        def job(report, should_stop):
            out.mkdir(parents=True, exist_ok=True)
            if snap is not None:  # a lazy layer is read once here, to check it is finite and not constant

                def writing(done: int, total: int) -> None:  # Cancel stops the write of a large layer at once
                    if should_stop():
                        raise _ops.Cancelled("cancelled")

                req.data_path = _train.write_layer_dataset(snap["data"], snap["name"], snap["scale"], out, kind,
                                                           req.patch, check_contents=snap["lazy"], progress=writing)
            if should_stop():  # cancelled while the data were written or checked: no training, no model
                raise _ops.Cancelled("cancelled")
            task = _train.build_task(req)

            def on_log(rec: dict) -> None:
                bridge.record.emit(dict(rec))
                try:
                    report(int(rec["step"]), steps)
                except _ops.Cancelled:
                    pass  # the loop polls should_stop itself, then checkpoints and returns

            try:
                return train(task, cfg, on_log=on_log, should_stop=should_stop)
            except FileExistsError as err:
                if err.filename is not None:  # a file in the way, named by the error itself
                    raise
                # the loop's refusal of a folder that got a run after Start was pressed (its wording is the
                # command line's): say it in the widget's words; Start again picks a new folder
                raise FileExistsError(f"{out} already holds a training run (written after Start was pressed); "
                                      "press Start again to train in a new run folder") from err
            except FloatingPointError as err:  # the loop's words are the command line's (--lr, --amp, --resume)
                src = f" on {layer_name!r}" if layer_name else ""
                raise FloatingPointError(
                    f"training diverged{src} ({str(err).split(';')[0]}): lower the learning rate and press Start "
                    "again (it trains in a new run folder)"
                    + (", or rescale the layer: values spanning many orders of magnitude (e.g. 1 to 1e30) do not "
                       "train in float32" if layer_name else "")) from err

        def done(res) -> None:
            path = str(res.model_path)
            self.model_path = path
            _ops.USER_MODELS.add(kind, path)
            val = res.metrics.get("val_loss")
            src = f" on {layer_name}" if layer_name else ""
            self.result_label.setText(
                f"saved {path}{src} ({res.steps_done} steps, {res.seconds:.0f} s"
                + (f", validation loss {val:.4g}" if val is not None else "")
                + "); it is now selectable in the other widgets"
            )

        def cancelled() -> None:
            from napari_linblur.training.loop import MODEL

            if not (out / MODEL).exists():  # cancelled while it waited for a thread, or before its first save
                self.result_label.setText("cancelled before any weights were saved; no model was added to the "
                                          "widgets")
                return
            self.result_label.setText(
                f"stopped before the end; no model was added to the widgets; the weights so far are in "
                f"{out / MODEL} (load them with … in a model picker to use or fine-tune them)"
            )

        # the loop stops when asked by returning its state so far (finished False): that is a cancelled run; a run
        # that finished all its steps before a late Cancel took effect is a trained model like any other
        return self.panel.start(job, desc=f"training {kind}", on_result=done, on_cancel=cancelled,
                                stopped_early=lambda res: not res.finished)
