"""**Blur synthesis** — render a plane at any defocus between two planes of a field by interpolating in the
latent space of the linear autoencoder (Mazilu et al., paper 000): ``D(α·E(a) + (1-α)·E(c))``, with α = 1 giving
the sharper plane a and α = 0 the blurrier plane c."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QPushButton

from .. import _ops
from .. import _placement as pl
from . import _common as c
from ._pairs import as_plane, check_preview_pair, op_kwargs, pair_order_note, run_whole_stack


class BlurSynthesisWidget(c.LinblurWidget):
    """Dock widget: pick a sharper plane a and a blurrier plane c, drag α, see the synthesized plane live."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        v = napari_viewer
        self.a_layer = c.LayerPicker(v)
        self.a_plane = c.PlanePicker(v, self.a_layer, follow=True)
        self.c_layer = c.LayerPicker(v)
        self.c_plane = c.PlanePicker(v, self.c_layer, follow=False)
        box, _ = c.group(
            "Inputs (two planes of one field)",
            [("sharper a", self.a_layer), ("plane of a", self.a_plane), ("blurrier c", self.c_layer),
             ("plane of c", self.c_plane)],
        )
        self.layout().addWidget(box)

        self.alpha = c.AlphaSlider(0.5)
        self.alpha.setToolTip("α = 1 gives a, α = 0 gives c; in between: intermediate defocus")
        self.model = c.ModelPicker("ae")
        self.preview_on = QCheckBox("live preview on the current plane")
        self.preview_on.setChecked(True)
        self.preview_status = c.preview_status_label()
        box, _ = c.group("Synthesis", [("α", self.alpha), ("model", self.model), ("", self.preview_on),
                                       ("", self.preview_status)])
        self.layout().addWidget(box)

        self.output = c.OutputChooser()
        self.run_btn = QPushButton("Run on whole stack")
        self.run_btn.setToolTip("synthesize plane a vs plane c at every position/time point of the stack: one plane "
                                "each (a single z-stack gives one plane); with two layers, every plane with the same "
                                "plane of the other layer")
        self.run_btn.clicked.connect(self.run_whole_stack)
        self.panel = c.RunPanel("blur synthesis")
        box, form = c.group("Whole stack", [("output", self.output)])
        form.addRow(self.run_btn)
        form.addRow(self.panel)
        self.layout().addWidget(box)
        self.layout().addStretch(1)

        self.preview = c.LivePreview(self._preview_job, self._show_preview, self.preview_status, self,
                                     inputs=self._input_names, sources=self.input_layers)
        self.alpha.changed.connect(self.preview.request)
        for w in (self.a_plane, self.c_plane):
            w.changed.connect(self.preview.request)
        for w in (self.a_layer, self.c_layer):
            w.currentIndexChanged.connect(self.preview.request)
            w.renamed.connect(self.preview.request)  # the preview is named after its inputs
            w.data_changed.connect(self.preview.request)  # layer.data replaced
        self.model.combo.currentIndexChanged.connect(self.preview.request)
        self.preview_on.toggled.connect(self._toggle_preview)
        # the other leading axes (time, position) always follow the viewer (Z follows it when asked to)
        napari_viewer.dims.events.current_step.connect(self._on_step)
        self._auto_pick()

    def _on_step(self, *_: Any) -> None:
        # Z reaches the preview through the plane pickers; here only a time/position move of the inputs counts
        if c._alive(self) and self.lead_key(self.a_layer.layer(), self.c_layer.layer()) != self._lead_key:
            self.preview.request()

    # --- helpers -------------------------------------------------------------------------------
    def _auto_pick(self) -> None:
        """With one stack, default to a = the viewer's plane and c = the plane farthest from it."""
        layer = self.a_layer.layer()
        if layer is not None and _ops.n_planes(layer) > 1 and self.c_layer.layer() is layer:
            n = _ops.n_planes(layer)
            self.c_plane.spin.setValue(n - 1 if self.a_plane.value() < n // 2 else 0)

    def _inputs(self):
        la, lc = self.a_layer.layer(), self.c_layer.layer()
        if la is None or lc is None:
            raise c.no_input(self.viewer, "pick the sharper image a and the blurrier image c (image layers)")
        return la, lc

    def _input_names(self) -> dict[str, str]:
        """The input layers' names for the operation's arguments (error messages name the layers)."""
        la, lc = self.a_layer.layer(), self.c_layer.layer()
        names = {"img_a": la.name} if la is not None else {}
        return {**names, "img_c": lc.name} if lc is not None else names

    def _name(self, la, lc, za: int, zc: int, alpha: float, same_shape_layers: bool) -> str:
        if la is lc:
            src = [f"{la.name} z{za}→z{zc}"]
        elif same_shape_layers:
            src = [la.name, lc.name]
        else:
            src = [f"{la.name} z{za}", f"{lc.name} z{zc}"]
        return _ops.output_name("synthesized", src, alpha)

    # --- preview -------------------------------------------------------------------------------
    def _preview_job(self, should_stop):
        import napari_linblur as nl

        la, lc = self._inputs()
        za, zc = self.a_plane.value(), self.c_plane.value()
        check_preview_pair(la, za, lc, zc)
        ia, ic = _ops.current_indices(self.viewer, la), _ops.current_indices(self.viewer, lc)
        self._lead_key = self.lead_key(self.a_layer.layer(), self.c_layer.layer())
        alpha, kw = self.alpha.value(), op_kwargs(self.model.model())
        name = self._name(la, lc, za, zc, alpha, False) + " (preview)"
        # the arrays as requested: data replaced meanwhile makes a new request, never a read of another plane
        data_a, data_c = _ops.layer_array(la), _ops.layer_array(lc)

        def job():
            a = _ops.plane_at(data_a, ia, za)
            b = _ops.plane_at(data_c, ic, zc)
            out = _ops.call_op(nl.synthesize_blur, a, b, alpha, should_stop=should_stop, **kw)
            return as_plane(out), name, la, pair_order_note(a, b, ("a", "c"))

        return job

    # --- whole stack ---------------------------------------------------------------------------
    def run_whole_stack(self) -> bool:
        import napari_linblur as nl

        try:
            la, lc = self._inputs()
            za, zc = self.a_plane.value(), self.c_plane.value()
            pair = _ops.pair_stacks(la, za, lc, zc)
        except ValueError as err:
            c.notify_error(f"blur synthesis: {err}")
            self.panel.status.setText(str(err))
            return False
        alpha, kw = self.alpha.value(), op_kwargs(self.model.model())
        name = self._name(la, lc, za, zc, alpha, not pair.dropped_z)

        def op(a, b, should_stop=None, progress=None) -> Any:
            return _ops.call_op(nl.synthesize_blur, a, b, alpha, should_stop=should_stop, progress=progress, **kw)

        return run_whole_stack(
            self, self.panel, self.output, op=op, arrays=[pair.first, pair.second], like=la,
            scale=pair.scale, translate=pair.translate, dropped_z=pair.dropped_z, name=name,
            sources=c.source_paths(la, lc),
            layer_kwargs={"contrast_limits": pl.input_limits(la), "colormap": pl.input_colormap(la)},
            metadata={"linblur_op": "synthesize_blur", "linblur_alpha": alpha},
            attrs={"operation": "synthesize_blur", "unit": "the input's intensity", "alpha": alpha,
                   "sharp_plane": za, "blurry_plane": zc, "model": kw.get("model") or "ae-default"},
            inputs=self._input_names(), input_layers=[la, lc],
        )
