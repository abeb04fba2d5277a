"""**Deblur** — three ways to get a sharper image back.

* **Pair** (paper 000, Mazilu et al.): two planes b (less blurred) and c (more blurred) of one field; the
  sharper a is extrapolated in the autoencoder's linear latent space, ``z_a = (1/α)·E(b) − ((1−α)/α)·E(c)``.
  α can be set (slider) or estimated automatically.
* **Single image** (paper 002, DRBNet-style network with dynamic residual blocks, or re-blur + extrapolation).
* **Guided**: spatially varying deblurring steered by the estimated defocus map (paper 001 + 000).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QPushButton, QWidget

from .. import _ops
from .. import _placement as pl
from . import _common as c
from ._pairs import as_plane, check_preview_pair, op_kwargs, pair_order_note, run_whole_stack

PAIR, SINGLE, GUIDED = "pair", "single", "guided"
#: single-image methods offered when the operation does not list its own
FALLBACK_METHODS = ["auto", "network", "reblur-extrapolate"]
#: single-image methods that run the autoencoder rather than the deblurring network
AE_METHODS = ("reblur-extrapolate",)


#: what each single-image method runs (the menu shows the API names of `nl.deblur`'s ``method``)
METHOD_TIPS = {
    "auto": "the best method as measured: the deblurring network",
    "network": "the deblurring network (DRBNet, paper 002), trained on exact synthetic pairs",
    "reblur-extrapolate": "blur the plane a little more, then extrapolate in the autoencoder's latent space back past "
                          "it (paper 000): no deblurring network needed",
}


def single_methods() -> list[str]:
    """Methods of :func:`napari_linblur.deblur` other than the guided one (read from the module)."""
    try:
        from napari_linblur.inference import deblur_ops
    except Exception:  # noqa: BLE001 - not built yet
        return list(FALLBACK_METHODS)
    methods = getattr(deblur_ops, "METHODS", None)
    if not methods:
        return list(FALLBACK_METHODS)
    return [m for m in methods if m != GUIDED]


def single_label(method: str | None) -> str:
    """The mode menu's name of single-image deblurring run with ``method`` (what it runs).

    Examples
    --------
    >>> single_label("reblur-extrapolate"), single_label("auto")
    ('Single image (re-blur + extrapolation)', 'Single image (network)')
    """
    return f"Single image ({'re-blur + extrapolation' if method in AE_METHODS else 'network'})"


class DeblurWidget(c.LinblurWidget):
    """Dock widget: pair, single-image or defocus-map-guided deblurring with a live preview."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        v = napari_viewer
        self.mode = c.add_items(QComboBox(), [
            ("Pair: two planes (latent extrapolation)", PAIR,
             "two planes of one field, b less blurred than c: the autoencoder extrapolates past b, away from c, to a "
             "sharper plane (paper 000, Mazilu et al.)"),
            (single_label("network"), SINGLE, "one plane: the deblurring network (or re-blur + extrapolation, see "
                                              "method)"),
            ("Guided by the defocus map", GUIDED, "one plane: deblurred only where the defocus map says it is "
                                                  "blurred; in-focus parts are left as they are"),
        ])
        self.mode.setToolTip("what to deblur from: two planes, or one plane; hover a choice for how")
        box, _ = c.group("Method", [("mode", self.mode)])
        self.layout().addWidget(box)

        self.b_layer = c.LayerPicker(v)
        self.b_plane = c.PlanePicker(v, self.b_layer, follow=True)
        self.c_layer = c.LayerPicker(v)
        self.c_plane = c.PlanePicker(v, self.c_layer, follow=False)
        box, self._in_form = c.group(
            "Inputs",
            [("image b", self.b_layer), ("plane of b", self.b_plane), ("blurrier c", self.c_layer),
             ("plane of c", self.c_plane)],
        )
        self.layout().addWidget(box)

        self.alpha = c.AlphaSlider(0.5, low=0.05)
        self.alpha.setToolTip("where b lies between the sharp plane a and c: α = (d_c − d_b) / (d_c − d_a) for "
                              "defocus distances d; smaller α extrapolates further (sharper, noisier)")
        self.auto_alpha = QCheckBox("estimate α automatically")
        self.auto_alpha.setToolTip("estimate α from the two planes (a heuristic; set it yourself when you know the "
                                   "planes' defocus distances)")
        self.tta = c.tta_combo("average the result over flipped/rotated copies of the input (pair extrapolation "
                               "or the deblurring network): slightly sharper, that many times slower")
        self.method = c.add_items(QComboBox(), [(m, m, METHOD_TIPS.get(m, "")) for m in single_methods()])
        self.method.setToolTip("how one plane is deblurred; hover a choice for what it runs")
        self.ae_model = c.ModelPicker("ae")
        self.net_model = c.ModelPicker("deblur")
        self.defocus_model = c.ModelPicker("defocus")
        self.defocus_model.setToolTip("defocus-map model used by the guided and re-blur methods")
        self.preview_on = QCheckBox("live preview on the current plane")
        self.preview_on.setChecked(True)
        self.preview_status = c.preview_status_label()
        box, self._opt_form = c.group(
            "Options",
            [("α", self.alpha), ("", self.auto_alpha), ("self-ensemble", self.tta), ("method", self.method),
             ("autoencoder", self.ae_model),
             ("network", self.net_model), ("defocus model", self.defocus_model), ("", self.preview_on),
             ("", self.preview_status)],
        )
        self.layout().addWidget(box)

        self.output = c.OutputChooser()
        self.run_btn = QPushButton("Run on whole stack")
        self.run_btn.setToolTip("single image / guided: deblur every plane of the stack; pair: b vs c at every "
                                "position/time point, one plane each (a single z-stack gives one plane)")
        self.run_btn.clicked.connect(self.run_whole_stack)
        self.panel = c.RunPanel("deblur")
        box, form = c.group("Whole stack", [("output", self.output)])
        form.addRow(self.run_btn)
        form.addRow(self.panel)
        self.layout().addWidget(box)
        self.layout().addStretch(1)

        self.preview = c.LivePreview(self._preview_job, self._show_preview, self.preview_status, self,
                                     inputs=self._input_names, sources=self.input_layers)
        self.alpha.changed.connect(self.preview.request)
        self.auto_alpha.toggled.connect(self._update_visibility)
        self.auto_alpha.toggled.connect(self.preview.request)
        self.mode.currentIndexChanged.connect(self._update_visibility)
        self.mode.currentIndexChanged.connect(self.preview.request)
        self.method.currentIndexChanged.connect(self.preview.request)
        self.method.currentIndexChanged.connect(self._update_visibility)
        self.tta.currentIndexChanged.connect(self.preview.request)
        for w in (self.b_plane, self.c_plane):
            w.changed.connect(self.preview.request)
        for w in (self.b_layer, self.c_layer):
            w.currentIndexChanged.connect(self.preview.request)
            w.renamed.connect(self.preview.request)  # the preview is named after its inputs
            w.data_changed.connect(self.preview.request)  # layer.data replaced
        for w in (self.ae_model, self.net_model, self.defocus_model):
            w.combo.currentIndexChanged.connect(self.preview.request)
        self.preview_on.toggled.connect(self._toggle_preview)
        # the other leading axes (time, position) always follow the viewer (Z follows it when asked to)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        self._update_visibility()

    def _on_step(self, *_: Any) -> None:
        # Z reaches the preview through the plane pickers; here only a time/position move of the inputs counts
        if c._alive(self) and self.lead_key(self.b_layer.layer(), self.c_layer.layer()) != self._lead_key:
            self.preview.request()

    # --- UI state ------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        self.mode.setCurrentIndex(self.mode.findData(mode))

    def _set_row_visible(self, form, widget: QWidget, visible: bool) -> None:
        widget.setVisible(visible)
        label = form.labelForField(widget)
        if label is not None:
            label.setVisible(visible)

    def _update_visibility(self, *_: Any) -> None:
        mode = self.mode.currentData()
        pair = mode == PAIR
        for w in (self.c_layer, self.c_plane):
            self._set_row_visible(self._in_form, w, pair)
        self._set_row_visible(self._opt_form, self.alpha, pair)
        self.alpha.setEnabled(not self.auto_alpha.isChecked())
        self._set_row_visible(self._opt_form, self.auto_alpha, pair)
        uses_ae = pair or (mode == SINGLE and self.method.currentData() in AE_METHODS)
        self._set_row_visible(self._opt_form, self.tta, pair or not uses_ae)
        self._set_row_visible(self._opt_form, self.ae_model, uses_ae)
        self._set_row_visible(self._opt_form, self.method, mode == SINGLE)
        self._set_row_visible(self._opt_form, self.net_model, not uses_ae)
        self._set_row_visible(self._opt_form, self.defocus_model, mode == GUIDED or (mode == SINGLE and uses_ae))
        self._in_form.labelForField(self.b_layer).setText("image b (less blurred)" if pair else "image")
        self._in_form.labelForField(self.b_plane).setText("plane of b" if pair else "plane")
        # the single-image mode is named after what its method runs (the network, or re-blur + extrapolation)
        self.mode.setItemText(self.mode.findData(SINGLE), single_label(self.method.currentData()))

    # --- operations ----------------------------------------------------------------------------
    def _settings(self):
        mode = self.mode.currentData()
        lb = self.b_layer.layer()
        if lb is None:
            raise c.no_input(self.viewer, "pick an image layer to deblur")
        lc = self.c_layer.layer() if mode == PAIR else None
        if mode == PAIR and lc is None:
            raise ValueError("pair mode needs the blurrier image c (an image layer)")
        alpha = None if self.auto_alpha.isChecked() else self.alpha.value()
        method = self.method.currentData() if mode == SINGLE else GUIDED
        return mode, lb, lc, alpha, method

    def _input_names(self) -> dict[str, str]:
        """The input layers' names for the operations' arguments (error messages name the layers)."""
        lb = self.b_layer.layer()
        if lb is None:
            return {}
        if self.mode.currentData() != PAIR:
            return {"img": lb.name}
        lc = self.c_layer.layer()
        return {"img_b": lb.name, **({"img_c": lc.name} if lc is not None else {})}

    def _model_used(self, mode: str, method: str) -> str:
        """The model a run uses, as recorded with its output (a path, or the default's name)."""
        if mode == PAIR or method in AE_METHODS:
            return self.ae_model.model() or "ae-default"
        return self.net_model.model() or "deblur-default"

    def _op(self, mode: str, alpha, method: str):
        import napari_linblur as nl

        if mode == PAIR:
            kw = op_kwargs(self.ae_model.model())
            kw["tta"] = int(self.tta.currentData())

            def op(b, cc, should_stop=None, progress=None) -> Any:
                return _ops.call_op(nl.deblur_pair, b, cc, alpha, should_stop=should_stop, progress=progress, **kw)
        else:
            picker = self.ae_model if method in AE_METHODS else self.net_model
            kw = op_kwargs(picker.model())
            if mode == GUIDED or method in AE_METHODS:  # the methods that read a defocus map (its row is shown)
                kw["defocus_model"] = self.defocus_model.model()
            if method not in AE_METHODS:  # the network's self-ensemble
                kw["tta"] = int(self.tta.currentData())

            def op(b, should_stop=None, progress=None) -> Any:
                return _ops.call_op(nl.deblur, b, method=method, should_stop=should_stop, progress=progress, **kw)

        return op

    def _name(self, mode, lb, lc, alpha, method, zb, zc, whole: bool, same_shape: bool) -> str:
        if mode == PAIR:
            if lb is lc:
                src = [f"{lb.name} z{zb}←z{zc}"]
            elif whole and same_shape:
                src = [lb.name, lc.name]
            else:
                src = [f"{lb.name} z{zb}", f"{lc.name} z{zc}"]
            return _ops.output_name("deblurred", src, alpha)
        src = [lb.name] if whole else [f"{lb.name} z{zb}"] if lb.ndim > 2 else [lb.name]
        return _ops.output_name("deblurred", src + [method], use_alpha=False)

    def _preview_job(self, should_stop):
        mode, lb, lc, alpha, method = self._settings()
        zb = self.b_plane.value()
        zc = self.c_plane.value()
        if mode == PAIR:
            check_preview_pair(lb, zb, lc, zc)
        else:
            _ops.check_plane(lb, zb)
        ib = _ops.current_indices(self.viewer, lb)
        self._lead_key = self.lead_key(self.b_layer.layer(), self.c_layer.layer())
        ic = _ops.current_indices(self.viewer, lc) if lc is not None else None
        op = self._op(mode, alpha, method)
        name = self._name(mode, lb, lc, alpha, method, zb, zc, False, False) + " (preview)"
        # the arrays as requested: data replaced meanwhile makes a new request, never a read of another plane
        data_b = _ops.layer_array(lb)
        data_c = _ops.layer_array(lc) if lc is not None else None

        model_kw = op_kwargs(self.ae_model.model())

        def job():
            b = _ops.plane_at(data_b, ib, zb)
            if mode != PAIR:
                return as_plane(op(b, should_stop=should_stop)), name, lb, None, ""
            cc = _ops.plane_at(data_c, ic, zc)
            note = pair_order_note(b, cc, ("b", "c"))
            if alpha is not None:
                return as_plane(op(b, cc, should_stop=should_stop)), name, lb, None, note
            # the automatic α, estimated here and shown (the preview was named α=auto, and the slider kept 0.50)
            from napari_linblur.inference.latent_ops import auto_alpha

            est = float(auto_alpha(np.asarray(b), np.asarray(cc), model=model_kw["model"], device=model_kw["device"]))
            out = self._op(mode, est, method)(b, cc, should_stop=should_stop)
            return as_plane(out), name.replace("α=auto", f"α=auto {est:.2f}"), lb, est, note

        return job

    def _show_preview(self, result) -> None:
        data, name, like, estimated, note = result
        super()._show_preview((data, name, like, note))
        if estimated is not None and self.auto_alpha.isChecked():  # the slider shows the α the preview used
            self.alpha.blockSignals(True)
            self.alpha.setValue(estimated)
            self.alpha.label.setText(f"α = {self.alpha.value():.2f} (estimated)")
            self.alpha.blockSignals(False)

    def run_whole_stack(self) -> bool:
        try:
            mode, lb, lc, alpha, method = self._settings()
            zb, zc = self.b_plane.value(), self.c_plane.value()
            if mode == PAIR:
                pair = _ops.pair_stacks(lb, zb, lc, zc)
                arrays = [pair.first, pair.second]
                scale, translate, dropped = pair.scale, pair.translate, pair.dropped_z
            else:
                arrays = [_ops.layer_array(lb)]
                scale, translate, dropped = tuple(lb.scale), tuple(lb.translate), False
        except ValueError as err:
            c.notify_error(f"deblur: {err}")
            self.panel.status.setText(str(err))
            return False
        name = self._name(mode, lb, lc, alpha, method, zb, zc, True, not dropped)
        return run_whole_stack(
            self, self.panel, self.output, op=self._op(mode, alpha, method), arrays=arrays, like=lb,
            scale=scale, translate=translate, dropped_z=dropped, name=name,
            sources=c.source_paths(lb, lc),
            layer_kwargs={"contrast_limits": pl.input_limits(lb), "colormap": pl.input_colormap(lb)},
            metadata={"linblur_op": "deblur_pair" if mode == PAIR else "deblur", "linblur_alpha": alpha,
                      "linblur_method": method if mode != PAIR else None},
            attrs={"operation": "deblur_pair" if mode == PAIR else "deblur", "unit": "the input's intensity",
                   **({"alpha": "auto" if alpha is None else alpha, "planes": [zb, zc]} if mode == PAIR
                      else {"method": method}),
                   "model": self._model_used(mode, method),
                   **({"tta": int(self.tta.currentData())} if mode == PAIR or method not in AE_METHODS else {}),
                   **({"defocus_model": self.defocus_model.model() or "defocus-default"}
                      if mode == GUIDED or (mode == SINGLE and method in AE_METHODS) else {})},
            inputs=self._input_names(), input_layers=[lb, lc] if mode == PAIR else [lb],
        )
