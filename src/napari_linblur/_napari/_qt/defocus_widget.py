"""**Defocus map & focus QC** — where and how much an image is out of focus.

* Defocus map (paper 001): a per-pixel σ map (px, σ of the equivalent Gaussian PSF) predicted by the
  HRNet-style network, shown with a perceptual colormap and a colorbar; live on the current plane, or for
  the whole stack. Per tile: the mean σ of every tile (over the plane's signal pixels, or all pixels), NaN for a tile
  without signal.
* Focus QC: a focus score per Z plane of the current position (variance of Laplacian and friends) plotted in
  the dock with the best plane marked; one click moves the viewer to it (back to the position/time point the
  curve was computed for).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import _ops
from .. import _placement as pl
from .._maps import COLORMAP, SIGMA_TOP, SIGMA_UNIT, UM_UNIT, map_limits  # noqa: F401 - shared with the reader
from . import _common as c
from ._pairs import op_kwargs, run_whole_stack

FALLBACK_MEASURES = ["defocus", "variance_of_laplacian"]
#: smallest tile side of the per-tile map (px)
MIN_TILE = 8


def map_tag(mode: str, patch_size: int, patch_pixels: str) -> str:
    """What a defocus map's layer name says about its kind: nothing for the per-pixel map, the tile size and the
    pixels averaged for a tile map.

    Examples
    --------
    >>> map_tag("pixel", 64, "signal")
    ''
    >>> map_tag("patch", 64, "signal")
    ' (64 px tiles, signal pixels)'
    """
    if mode != "patch":
        return ""
    return f" ({int(patch_size)} px tiles, {'signal' if patch_pixels == 'signal' else 'all'} pixels)"


#: the focus measures as the menu names them, and what each reads (the API names are `focus_curve`'s methods)
MEASURE_LABELS = {"defocus": "defocus map (network)", "variance_of_laplacian": "variance of Laplacian",
                  "brenner": "Brenner gradient", "tenengrad": "Tenengrad", "normalized_variance": "normalized variance",
                  "vollath": "Vollath F4"}
MEASURE_TIPS = {
    "defocus": "the defocus-map network: minus the median blur σ (px) of the plane's structures; reads blur rather "
               "than contrast, so a dim sharp plane still wins (the slowest)",
    "variance_of_laplacian": "edge energy: the variance of the Laplacian (fast, classical)",
    "brenner": "squared differences of pixels two apart (fast, classical)",
    "tenengrad": "squared Sobel gradient (fast, classical)",
    "normalized_variance": "intensity variance divided by the mean (fast, classical; needs intensities ≥ 0)",
    "vollath": "Vollath's F4 autocorrelation: less sensitive to noise (fast, classical)",
}


def focus_measures() -> list[str]:
    """Focus measures accepted by :func:`napari_linblur.focus_curve` (read from the module)."""
    try:
        from napari_linblur.inference import defocus_ops
    except Exception:  # noqa: BLE001
        return list(FALLBACK_MEASURES)
    measures = getattr(defocus_ops, "FOCUS_METHODS", None)
    return list(measures) if measures else list(FALLBACK_MEASURES)


class FocusPlot(c.MplPlot):
    """Matplotlib focus curve (score per plane) with the best plane and the current plane marked."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.scores: np.ndarray | None = None
        self.best: int | None = None
        self._current_line = None
        self.draw(None, None)

    def draw(self, scores: np.ndarray | None, best: int | None, label: str = "focus score") -> None:
        self.scores, self.best = scores, best
        ax = self.ax
        ax.clear()
        ax.set_xlabel("Z plane")
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        self._current_line = None
        if scores is not None:
            z = np.arange(len(scores))
            ax.plot(z, scores, "-o", ms=3, color="#3a7bd5")
            if best is not None:
                ax.axvline(best, color="#e4572e", lw=1.5)
                ax.plot([best], [scores[best]], "o", color="#e4572e", ms=7, label=f"best z={best}")
                ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "press 'Focus curve'", ha="center", va="center", transform=ax.transAxes,
                    fontsize=8, color="gray")
        self.canvas.draw_idle()

    def mark_current(self, z: int | None) -> None:
        """Mark the viewer's plane ``z`` (dashed); None removes the mark (the viewer is at another position)."""
        if self.scores is None:
            return
        if self._current_line is not None:
            self._current_line.remove()
            self._current_line = None
        if z is not None:
            self._current_line = self.ax.axvline(z, color="gray", lw=1, ls="--")
        self.canvas.draw_idle()


def noise_aware(model) -> bool:
    """Whether a defocus model (None = the default, a name or a path) takes the camera-noise channel."""
    from napari_linblur.models.registry import DEFAULTS, read_card

    try:
        card = read_card(model or DEFAULTS["defocus"])
    except Exception:  # noqa: BLE001 - a missing or unreadable model shows its error when it is run
        return False
    return int((card.get("config") or {}).get("in_channels", 1)) == 2


class CameraInput(QWidget):
    """The camera's noise for noise-aware defocus models: estimated from the image, or a calibration.

    :meth:`value` is what :func:`napari_linblur.estimate_defocus` takes as ``camera``: ``"auto"`` or
    ``{"gain": ADU per photo-electron, "offset": ADU, "read_noise": electrons}``.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        self.calibrated = QCheckBox("calibrated (off: estimated from the image)")
        self.calibrated.setToolTip("noise-aware models read the camera's noise level: estimated from each plane, "
                                   "or (checked) from the camera's gain, dark offset and read noise")
        self.gain = self._spin(0.01, 100.0, 1.0, 3, "gain, ADU per photo-electron (a camera specified in e⁻/ADU: "
                               "its inverse)", " ADU/e⁻", step=0.1)
        self.offset = self._spin(0.0, 65535.0, 100.0, 1, "dark level (pedestal), ADU", " ADU", step=10.0)
        self.read_noise = self._spin(0.0, 100.0, 2.0, 2, "read noise, electrons r.m.s.", " e⁻", step=0.1)
        # the calibration's fields on a row of their own, shown only when they are used: in one row with the
        # check box they were too narrow to show their values and units
        self.fields = QWidget()
        row = QHBoxLayout(self.fields)
        row.setContentsMargins(0, 0, 0, 0)
        for w in (self.gain, self.offset, self.read_noise):
            row.addWidget(w)
        lay.addWidget(self.calibrated)
        lay.addWidget(self.fields)
        self.calibrated.toggled.connect(self._sync)
        self._sync()

    @staticmethod
    def _spin(lo: float, hi: float, value: float, decimals: int, tip: str, suffix: str, *,
              step: float = 1.0) -> QDoubleSpinBox:
        sb = QDoubleSpinBox()
        sb.setRange(lo, hi)
        sb.setDecimals(decimals)
        sb.setSingleStep(step)  # one arrow click or wheel notch: a small change (1.0 took NA 0.45 to 1.45)
        sb.setValue(value)
        sb.setSuffix(suffix)
        sb.setToolTip(tip)
        return sb

    def _sync(self, *_: Any) -> None:
        on = self.calibrated.isChecked()
        self.fields.setVisible(on)
        for w in (self.gain, self.offset, self.read_noise):
            w.setEnabled(on)

    def value(self):
        if not self.calibrated.isChecked():
            return "auto"
        return {"gain": self.gain.value(), "offset": self.offset.value(), "read_noise": self.read_noise.value()}


class PixelSizeUnknown(ValueError):
    """A map in µm was asked for an image whose pixel size is not known (no length unit) and not entered."""


#: the smallest and largest pixel size in the sample the optics row takes (µm); 0 in the field means "not set"
PIXEL_RANGE_UM = (0.001, 100.0)
#: how the pixel-size field looks while it must be entered
_NEEDED_STYLE = "QDoubleSpinBox { border: 2px solid #e4572e; }"


def layer_pixel_um(layer) -> float | None:
    """``layer``'s x pixel size in µm when the layer is in a length unit (nm, µm, mm, ... converted) within
    :data:`PIXEL_RANGE_UM`; None when it has no physical pixel size (napari's default unit ``pixel``)."""
    from napari_linblur.io.readers import length_in_um

    try:
        um = length_in_um(abs(float(layer.scale[-1])), str(layer.units[-1]))
    except Exception:  # noqa: BLE001 - a layer without units
        return None
    if um is None or not PIXEL_RANGE_UM[0] <= um <= PIXEL_RANGE_UM[1]:
        return None
    return float(um)


class OpticsInput(QWidget):
    """The microscope's optics, to show the map as |defocus| in µm
    (:func:`napari_linblur.inference.defocus_ops.sigma_to_defocus_um`, Born–Wolf calibration).

    The pixel size follows the image layer's scale when the layer is in a length unit (:meth:`take_pixel_size`).
    For a layer without one it is never assumed: :meth:`clear_pixel_size` empties the field (it reads "enter µm"
    and is outlined) until the user enters the pixel size, and :meth:`setup` refuses until then.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        #: why the pixel size must be entered (the tooltip of the emptied field)
        self._why = ""
        lay = QGridLayout(self)  # two rows of two, so the dock can be narrow without cutting the read-outs
        lay.setContentsMargins(0, 0, 0, 0)
        spin = CameraInput._spin
        self.na = spin(0.05, 1.7, 0.45, 2, "numerical aperture of the objective (a default: set your objective's)",
                       "", step=0.05)
        self.wavelength = spin(0.3, 1.2, 0.52, 3, "emission wavelength, µm (a default: set your dye's emission)",
                               " µm", step=0.01)
        self.pixel = spin(0.0, PIXEL_RANGE_UM[1], 0.65, 4, self.PIXEL_TIP, " µm", step=0.01)
        # the field's minimum, 0, is "not set": shown as this text rather than as a number
        self.pixel.setSpecialValueText("pixel: enter µm")
        self.ni = spin(1.0, 1.6, 1.0, 3, "immersion index: 1.0 air, 1.33 water, 1.515 oil", "", step=0.01)
        pairs = ((self.na, "NA "), (self.wavelength, "λ "), (self.pixel, "pixel "), (self.ni, "nᵢ "))
        for i, (w, prefix) in enumerate(pairs):
            w.setPrefix(prefix)
            lay.addWidget(w, i // 2, i % 2)
        self.pixel.valueChanged.connect(self._restyle)

    PIXEL_TIP = ("pixel size in the sample (camera pixel / magnification), µm; taken from the image layer's scale "
                 "when the layer is in a length unit (nm, µm, mm)")

    def pixel_known(self) -> bool:
        """Whether the pixel-size field holds a pixel size (not the empty "enter µm")."""
        return self.pixel.value() >= PIXEL_RANGE_UM[0]

    def clear_pixel_size(self, why: str = "") -> None:
        """Empty the pixel-size field and outline it: the pixel size must be entered (``why`` goes in its
        tooltip)."""
        self._why = why
        self.pixel.setValue(self.pixel.minimum())
        self._restyle()

    def _restyle(self, *_: Any) -> None:
        needed = not self.pixel_known()
        self.pixel.setStyleSheet(_NEEDED_STYLE if needed else "")
        self.pixel.setToolTip(f"required: {self._why}\n\n{self.PIXEL_TIP}" if needed and self._why
                              else self.PIXEL_TIP)

    def setup(self):
        """The :class:`~napari_linblur.optics.psf.OpticalSetup` (a ValueError that names the problem if invalid;
        :class:`PixelSizeUnknown` while the pixel size is not entered)."""
        from napari_linblur.optics.psf import OpticalSetup

        if not self.pixel_known():
            raise PixelSizeUnknown("the pixel size is not set: enter the pixel size in the sample (µm) in the "
                                   "optics row")
        return OpticalSetup(na=self.na.value(), wavelength_um=self.wavelength.value(), pixel_um=self.pixel.value(),
                            ni=self.ni.value())

    def take_pixel_size(self, layer) -> bool:
        """Use ``layer``'s x pixel size if the layer is in a length unit (nm, µm, mm, ... converted to µm) within
        the field's range (:func:`layer_pixel_um`); True if it was taken, False (the field unchanged) if not."""
        um = layer_pixel_um(layer)
        if um is None:
            return False
        self.pixel.setValue(um)
        return True


class DefocusWidget(c.LinblurWidget):
    """Dock widget: per-pixel defocus map (live on the current plane or the whole stack) and focus curve."""

    def __init__(self, napari_viewer) -> None:
        super().__init__(napari_viewer)
        v = napari_viewer
        #: (plane contents + network options, per-pixel σ map) of the newest live map (see _preview_job)
        self._sigma_cache: tuple | None = None
        self.image = c.LayerPicker(v)
        self.model = c.ModelPicker("defocus")
        self.tta = c.tta_combo("average the map over flipped/rotated copies of the image: slightly lower error, "
                               "that many times slower")
        self.camera = CameraInput()
        self.units = QComboBox()
        self.units.addItem("σ (px)", "px")
        self.units.addItem("|defocus| (µm)", "um")
        self.units.setToolTip("the map as σ of the equivalent Gaussian PSF in pixels, or as the distance from focus "
                              "in µm through the optics calibration (one image cannot tell above from below focus)")
        self.optics = OpticsInput()
        self.map_mode = QComboBox()
        self.map_mode.addItem("per pixel", "pixel")
        self.map_mode.addItem("per tile", "patch")
        self.map_mode.setToolTip("per pixel: σ at every pixel; per tile: the mean σ of every tile (quick QC of a "
                                 "field: which part is out of focus), NaN for a tile without signal pixels")
        self.patch_size = QSpinBox()
        self.patch_size.setRange(MIN_TILE, 4096)
        self.patch_size.setValue(64)
        self.patch_size.setSuffix(" px")
        self.patch_size.setToolTip("side of the square tiles the map is averaged over (the last row/column of tiles "
                                   "may be smaller)")
        self.patch_pixels = QComboBox()
        self.patch_pixels.addItem("signal pixels", "signal")
        self.patch_pixels.addItem("all pixels", "all")
        self.patch_pixels.setToolTip("signal pixels: average σ over the pixels of each tile where the plane has "
                                     "structure brighter than its background (a tile without any is left empty, "
                                     "since σ on empty background is a guess); all pixels: every pixel of the tile")
        self.preview_on = QCheckBox("live map of the current plane")
        self.preview_on.setChecked(True)
        self.preview_status = c.preview_status_label()
        self.outline = QCheckBox("outline the signal (σ read there)")
        self.outline.setToolTip(
            "σ is measured where the plane has structure; elsewhere the map is interpolated from nearby structure. "
            "Adds the outline of the plane's signal pixels (structure brighter than the background: the pixels the "
            "'defocus map' focus measure reads) as a Labels layer above the live map (with the live map only).")
        box, self._map_form = c.group("Defocus map", [("image", self.image), ("model", self.model),
                                                      ("self-ensemble", self.tta), ("camera noise", self.camera),
                                                      ("units", self.units), ("optics", self.optics),
                                                      ("map", self.map_mode), ("tile size", self.patch_size),
                                                      ("tile average", self.patch_pixels),
                                                      ("", self.preview_on), ("", self.outline),
                                                      ("", self.preview_status)])
        self.layout().addWidget(box)
        self.legend = QLabel(f"colormap {COLORMAP}: dark = in focus, bright = strongly defocused")
        self.legend.setWordWrap(True)
        box.layout().addRow(self.legend)

        self.output = c.OutputChooser()
        self.run_btn = QPushButton("Run on whole stack")
        self.run_btn.setToolTip("the defocus map of every plane of the image, into the chosen output")
        self.run_btn.clicked.connect(self.run_whole_stack)
        box.layout().addRow("output", self.output)
        box.layout().addRow(self.run_btn)

        self.measure = c.add_items(QComboBox(), [(MEASURE_LABELS.get(m, m), m, MEASURE_TIPS.get(m, ""))
                                                 for m in focus_measures()])
        self.measure.setToolTip("how each plane is scored for the focus curve (higher = sharper); hover a choice "
                                "for what it measures")
        self.curve_btn = QPushButton("Focus curve")
        self.curve_btn.setToolTip("score every Z plane of the current position")
        self.curve_btn.clicked.connect(self.run_focus_curve)
        self.goto_btn = QPushButton("Go to best plane")
        self.goto_btn.setToolTip("move the viewer to the plane the focus curve scored best")
        self.goto_btn.setEnabled(False)
        self.goto_btn.clicked.connect(self.go_to_best)
        self.plot = FocusPlot()
        self.best_label = QLabel("")
        self.best_label.setWordWrap(True)
        row = QWidget()
        rl = QHBoxLayout(row)
        rl.setContentsMargins(0, 0, 0, 0)
        rl.addWidget(self.curve_btn)
        rl.addWidget(self.goto_btn)
        box2, form2 = c.group("Focus QC", [("measure", self.measure)])
        form2.addRow(row)
        form2.addRow(self.plot)
        form2.addRow(self.best_label)
        self.layout().addWidget(box2)

        self.panel = c.RunPanel("defocus")
        self.layout().addWidget(self.panel)
        self.layout().addStretch(1)

        self._curve_layer = None
        self._curve_lead: tuple[int, ...] = ()
        self._outline_layer = None
        self._map_unit: str | None = None  # units of the live map's contrast limits
        self.preview = c.LivePreview(self._preview_job, self._show_preview, self.preview_status, self,
                                     inputs=self._input_names, sources=self.input_layers)
        self.image.currentIndexChanged.connect(self.preview.request)
        self.image.renamed.connect(self.preview.request)  # the live map is named after its input
        self.image.data_changed.connect(self.preview.request)  # layer.data replaced
        self.model.combo.currentIndexChanged.connect(self.preview.request)
        self.tta.currentIndexChanged.connect(self.preview.request)
        self.model.combo.currentIndexChanged.connect(self._sync_camera_row)
        self._sync_camera_row()
        self.camera.calibrated.toggled.connect(self.preview.request)
        for sb in (self.camera.gain, self.camera.offset, self.camera.read_noise):
            sb.valueChanged.connect(self.preview.request)
        v.dims.events.current_step.connect(self._on_step)
        self.preview_on.toggled.connect(self._toggle_preview)
        self.outline.toggled.connect(self._toggle_outline)
        self.units.currentIndexChanged.connect(self._sync_units)
        self.units.currentIndexChanged.connect(self.preview.request)
        self.map_mode.currentIndexChanged.connect(self._sync_map_mode)
        self.map_mode.currentIndexChanged.connect(self.preview.request)
        self.patch_size.valueChanged.connect(self._patch_changed)
        self.patch_pixels.currentIndexChanged.connect(self._patch_changed)
        self._sync_map_mode()
        for sb in (self.optics.na, self.optics.wavelength, self.optics.pixel, self.optics.ni):
            sb.valueChanged.connect(self._optics_changed)
        #: pixel sizes (µm) the user entered for layers without one, and the last layer warned about
        self._entered_pixel: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._warned_pixel = None
        self.optics.pixel.valueChanged.connect(self._pixel_edited)
        self.image.currentIndexChanged.connect(self._take_pixel_size)
        self._sync_units()
        self.preview_on.toggled.connect(self.outline.setEnabled)  # the outline belongs to the live map
        v.layers.events.removed.connect(self._on_layer_removed)

    def _on_step(self, *_: Any) -> None:
        if not c._alive(self):
            return
        layer = self.image.layer()
        # another layer's slider (or an axis the input does not have) moved: the input's plane is unchanged
        if layer is None or self.lead_key(layer, with_z=True) != self._lead_key:
            self.preview.request()
        curve = self._curve_layer
        if curve is not None and curve in self.viewer.layers and curve.ndim >= 3:
            idx = _ops.current_indices(self.viewer, curve)
            self.plot.mark_current(idx[-1] if idx[:-1] == self._curve_lead else None)
            self._update_curve_label()

    def _layer(self):
        layer = self.image.layer()
        if layer is None:
            raise c.no_input(self.viewer, "pick an image layer")
        return layer

    def _input_names(self) -> dict[str, str]:
        """The input layer's name for the operations' image arguments (error messages name the layer)."""
        layer = self.image.layer()
        return {} if layer is None else {arg: layer.name for arg in ("img", "plane", "stack")}

    def _style(self, layer) -> None:
        try:
            layer.colorbar.visible = True
        except Exception:  # noqa: BLE001 - napari without colorbar overlays: the legend label explains
            pass

    def _sync_camera_row(self, *_: Any) -> None:
        """The camera row is shown only for noise-aware models (image-only models do not read it)."""
        visible = noise_aware(self.model.model())
        self.camera.setVisible(visible)
        label = self._map_form.labelForField(self.camera)
        if label is not None:
            label.setVisible(visible)

    def _sync_map_mode(self, *_: Any) -> None:
        """The tile size and tile average rows are shown only for the per-tile map."""
        visible = self.map_mode.currentData() == "patch"
        for w in (self.patch_size, self.patch_pixels):
            w.setVisible(visible)
            label = self._map_form.labelForField(w)
            if label is not None:
                label.setVisible(visible)

    def _patch_changed(self, *_: Any) -> None:
        if self.map_mode.currentData() == "patch":
            self.preview.request()

    def _mode_kwargs(self) -> dict:
        """``mode`` (and, per tile, ``patch_size`` and ``patch_pixels``) for :func:`napari_linblur.estimate_defocus`.

        Raises
        ------
        ValueError
            a tile size below :data:`MIN_TILE` (the spin box does not allow one).
        """
        if self.map_mode.currentData() != "patch":
            return {"mode": "pixel"}
        size = int(self.patch_size.value())
        if size < MIN_TILE:
            raise ValueError(f"tile size {size} px: the per-tile map needs tiles of at least {MIN_TILE} px")
        return {"mode": "patch", "patch_size": size, "patch_pixels": str(self.patch_pixels.currentData())}

    def _sync_units(self, *_: Any) -> None:
        """The optics row is shown only for maps in µm."""
        visible = self.units.currentData() == "um"
        self.optics.setVisible(visible)
        label = self._map_form.labelForField(self.optics)
        if label is not None:
            label.setVisible(visible)
        if visible:
            self._take_pixel_size()

    def _take_pixel_size(self, *_: Any) -> None:
        """The picked layer's pixel size into the optics row: its scale when it is in a length unit; else the size
        the user entered for it earlier, or an empty, outlined field (and, in µm mode, a warning) — never a size
        carried over from another layer or a default."""
        layer = self.image.layer()
        if layer is None or self.optics.take_pixel_size(layer):
            return
        entered = self._entered_pixel.get(layer)
        if entered is not None:
            self.optics.pixel.setValue(entered)
            return
        self.optics.clear_pixel_size(self._pixel_message(layer))
        if self.units.currentData() == "um" and self._warned_pixel is not layer:
            self._warned_pixel = layer
            from napari.utils.notifications import show_warning

            show_warning(f"defocus map in µm: {self._pixel_message(layer)}")

    @staticmethod
    def _pixel_message(layer) -> str:
        units = getattr(layer, "units", ())
        unit = str(units[-1]) if len(units) else "pixel"
        return (f"{layer.name!r} has no physical pixel size (its X axis is in {unit}, not a length); enter the pixel "
                "size in the sample (µm) in the optics row — napari-linblur does not assume one")

    def _pixel_edited(self, *_: Any) -> None:
        """Remember a pixel size entered for a layer without one (picking it again restores it)."""
        layer = self.image.layer()
        if layer is not None and self.optics.pixel_known() and layer_pixel_um(layer) is None:
            self._entered_pixel[layer] = float(self.optics.pixel.value())

    def _optics_changed(self, *_: Any) -> None:
        if self.units.currentData() == "um":
            self.preview.request()

    def _optics_setup(self):
        """None for σ maps; the optics (checked: a ValueError naming the problem) for maps in µm.

        Raises
        ------
        PixelSizeUnknown
            the layer has no physical pixel size and none was entered (the message names the layer).
        """
        if self.units.currentData() != "um":
            return None
        layer = self.image.layer()
        if not self.optics.pixel_known() and layer is not None:
            raise PixelSizeUnknown(self._pixel_message(layer))
        return self.optics.setup()

    # --- defocus map ---------------------------------------------------------------------------
    def _map_kwargs(self) -> dict:
        """Keyword arguments of :func:`napari_linblur.estimate_defocus` chosen in the dock (per pixel or per tile)."""
        return {**op_kwargs(self.model.model()), "tta": int(self.tta.currentData()), "camera": self.camera.value(),
                **self._mode_kwargs()}

    @staticmethod
    def _tag(kw: dict) -> str:
        return map_tag(kw["mode"], kw.get("patch_size", 0), kw.get("patch_pixels", ""))

    def _preview_job(self, should_stop):
        import napari_linblur as nl

        layer = self._layer()
        idx = _ops.current_indices(self.viewer, layer)
        self._lead_key = self.lead_key(layer, with_z=True)
        try:
            kw = self._map_kwargs()
        except ValueError as err:
            raise c.NoInput(f"defocus map: {err}") from err
        try:
            setup = self._optics_setup()
        except PixelSizeUnknown as err:  # the warning and the outlined field said so: wait for the user's entry
            raise c.NoInput(f"defocus map in µm: {err}") from err
        unit = "um" if setup is not None else "px"
        limits = map_limits(setup)
        z = f" z{idx[-1]}" if idx else ""
        name = f"defocus {'µm' if setup else 'σ'}{self._tag(kw)}[{layer.name}{z}] (preview)"
        outline_name = f"signal outline[{layer.name}{z}] (preview)"
        outline = self.outline.isChecked()
        data = _ops.layer_array(layer)  # as requested: data replaced meanwhile makes a new request
        map_meta = self._map_meta(kw)

        def job():
            from napari_linblur.inference.defocus_ops import patch_map, sigma_to_defocus_um, signal_mask

            plane = np.asarray(_ops.plane_at(data, idx))
            # the network's per-pixel map of this plane, reused while only what is made from it changes (units and
            # optics, the tile options, the outline): those cost milliseconds, the network seconds
            from napari_linblur.models.registry import model_cache_key

            pixel_kw = {k: v for k, v in kw.items() if k not in ("mode", "patch_size", "patch_pixels")}
            # the model file's size and time too: weights retrained into the same file make a new map
            key = (_ops.plane_digest(plane), repr(sorted(pixel_kw.items(), key=lambda kv: kv[0])),
                   model_cache_key(pixel_kw.get("model"), pixel_kw.get("device")))
            cached = self._sigma_cache
            if cached is not None and cached[0] == key:
                out = cached[1]
            else:
                out = np.asarray(_ops.call_op(nl.estimate_defocus, plane, should_stop=should_stop, mode="pixel",
                                              **pixel_kw), np.float32)
                self._sigma_cache = (key, out)
            if kw["mode"] == "patch":
                out = patch_map(out, plane, kw["patch_size"], kw["patch_pixels"])
            if setup is not None:
                out = sigma_to_defocus_um(out, setup=setup)
            mask = signal_mask(plane) if outline else None
            return np.asarray(out, np.float32), name, layer, mask, outline_name, unit, limits, map_meta

        return job

    @staticmethod
    def _map_meta(kw: dict) -> dict:
        """Layer metadata saying what kind of map ``kw`` (of :meth:`_map_kwargs`) makes: per pixel or per tile."""
        if kw["mode"] != "patch":
            return {"linblur_map": "pixel"}
        return {"linblur_map": "tile", "linblur_tile_size": kw["patch_size"], "linblur_tile_pixels": kw["patch_pixels"]}

    def _show_preview(self, result) -> None:
        data, name, like, mask, outline_name, unit, limits, map_meta = result
        # fixed limits (the trained range), set when the layer is made or the units change: the same colour is the
        # same σ on every plane, and limits the user set in the layer controls are kept
        layer = self.show_preview(data, name=name, like=like, restyle=unit != self._map_unit, colormap=COLORMAP,
                                  contrast_limits=limits)
        self._map_unit = unit
        for key in ("linblur_map", "linblur_tile_size", "linblur_tile_pixels"):
            layer.metadata.pop(key, None)
        layer.metadata.update(map_meta)
        layer.blending = "translucent"
        self._style(layer)
        if mask is not None and self.outline.isChecked():
            self._show_outline(mask, like, outline_name)

    def _show_outline(self, mask: np.ndarray, like, name: str) -> None:
        """Add or update the Labels layer outlining the plane's signal pixels (label 1), placed like ``like``."""
        data = np.asarray(mask, np.uint8)
        if not data.any():
            name = name.replace("(preview)", "(no signal: the whole map is interpolated)")
        scale, translate = tuple(like.scale[-2:]), tuple(like.translate[-2:])
        layer = self._outline_layer
        if layer is None or layer not in self.viewer.layers:
            layer = self.viewer.add_labels(data, name=name, scale=scale, translate=translate, opacity=1.0,
                                           units=tuple(like.units[-2:]))
            pl.follow_placement(layer, like)  # rotation, shear, affine and axis labels too, as the live map's
            layer.contour = 1
            layer.metadata["linblur_preview"] = True
            try:
                from napari.utils.colormaps import DirectLabelColormap

                layer.colormap = DirectLabelColormap(color_dict={None: "transparent", 0: "transparent",
                                                                 1: "cyan"})
            except Exception:  # noqa: BLE001 - a napari without direct label colormaps keeps its default colour
                pass
            self._outline_layer = layer
        else:
            pl.place_layer(layer, data, name=name, like=like)

    def preview_companions(self) -> list:
        """The signal outline moves with the live map when their input moves."""
        return [self._outline_layer] if self._outline_layer is not None else []

    def clear_preview(self) -> None:
        """Remove the live map and its outline (their input is gone)."""
        super().clear_preview()
        layer, self._outline_layer = self._outline_layer, None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _toggle_outline(self, on: bool) -> None:
        """The 'outline the signal' checkbox: request a live map with the outline, or remove the outline layer."""
        if on:
            self.preview.request()
        elif self._outline_layer is not None:
            if self._outline_layer in self.viewer.layers:
                self.viewer.layers.remove(self._outline_layer)
            self._outline_layer = None

    def run_whole_stack(self) -> bool:
        import napari_linblur as nl
        from napari_linblur.inference.defocus_ops import sigma_to_defocus_um

        try:
            layer = self._layer()
            setup = self._optics_setup()
            kw = self._map_kwargs()
        except ValueError as err:
            self.panel.refuse(f"defocus map: {err}")
            return False

        def op(img, should_stop=None, progress=None):
            out = _ops.call_op(nl.estimate_defocus, img, should_stop=should_stop, progress=progress, **kw)
            return out if setup is None else sigma_to_defocus_um(out, setup=setup)

        if setup is None:
            unit, meta = "σ", {"linblur_units": "px (σ)"}
        else:
            meta = {"linblur_units": "µm (|defocus|)", "linblur_optics": setup.to_dict()}
            unit = "µm"
        # a tile map: each tile holds the mean of its (signal) pixels, NaN for a tile without signal
        meta.update(self._map_meta(kw))
        tile_attrs = {k: kw[k] for k in ("patch_size", "patch_pixels") if kw["mode"] == "patch"}
        # what the values mean, with the keys of `linblur defocus-map` (written into an OME-Zarr output)
        attrs = {"operation": "defocus-map", "unit": SIGMA_UNIT if setup is None else UM_UNIT,
                 "model": self._model_name(kw.get("model")), "mode": kw["mode"], **tile_attrs, "tta": kw["tta"],
                 "camera": kw["camera"], **({"optics": setup.to_dict()} if setup is not None else {})}
        return run_whole_stack(
            self, self.panel, self.output, op=op, arrays=[_ops.layer_array(layer)], like=layer,
            scale=tuple(layer.scale), translate=tuple(layer.translate), dropped_z=False,
            name=f"defocus {unit}{self._tag(kw)}[{layer.name}]", sources=c.source_paths(layer),
            layer_kwargs={"colormap": COLORMAP, "contrast_limits": map_limits(setup)},
            metadata={"linblur_op": "estimate_defocus", **meta}, attrs=attrs, inputs=self._input_names(),
            on_added=self._style,  # the output already has the fixed limits of its units (map_limits): a colorbar
        )

    @staticmethod
    def _model_name(model: str | None) -> str:
        """The model as recorded with an output: its path or name, or the shipped default's name."""
        if model:
            return str(model)
        from napari_linblur.models.registry import DEFAULTS

        return str(DEFAULTS.get("defocus", "defocus-default"))

    # --- focus curve ---------------------------------------------------------------------------
    def run_focus_curve(self) -> bool:
        import napari_linblur as nl

        try:
            layer = self._layer()
            if layer.ndim < 3 or _ops.n_planes(layer) < 2:
                raise ValueError(f"{layer.name!r} is a single plane; a focus curve needs a z-stack (Z, Y, X)")
        except ValueError as err:
            c.notify_error(f"focus curve: {err}")
            self.panel.status.setText(str(err))
            return False
        idx = _ops.current_indices(self.viewer, layer)
        stack = _ops.layer_array(layer)[tuple(idx[:-1])]
        scored = layer.data  # a new layer.data before the curve is shown makes it stale
        method = self.measure.currentData()
        kw = {**op_kwargs(self.model.model()), "camera": self.camera.value()} if method == "defocus" else {}

        def job(report, should_stop):
            # one plane at a time: per-plane progress and cancel; best plane = arg-max, as in best_focus
            nz = stack.shape[0]
            scores = np.empty(nz, np.float64)
            for z in range(nz):
                if should_stop():
                    raise _ops.Cancelled("cancelled")
                plane = np.asarray(stack[z])
                scores[z] = float(np.asarray(_ops.call_op(nl.focus_curve, plane, method=method, **kw)))
                report(z + 1, nz)
            return scores, int(np.argmax(scores))

        def done(result):
            scores, best = result
            if layer not in self.viewer.layers:
                raise c.NothingToShow(f"{layer.name!r} was deleted while its focus curve was computed; "
                                      "nothing to show")
            if layer.data is not scored:
                raise c.NothingToShow(f"the data of {layer.name!r} changed while its focus curve was computed; "
                                      "press 'Focus curve' to score it again")
            self._set_curve_layer(layer)
            self._curve_lead = tuple(idx[:-1])
            self.plot.draw(scores, best, label=f"focus ({method})")
            now = _ops.current_indices(self.viewer, layer)
            self.plot.mark_current(now[-1] if now[:-1] == self._curve_lead else None)
            self.goto_btn.setEnabled(True)
            self._update_curve_label()

        return self.panel.start(job, desc=f"focus curve of {layer.name}", on_result=done,
                                inputs=self._input_names())

    def _update_curve_label(self) -> None:
        """The best-plane label ("best plane of LAYER at t=0: z = 8"); once the viewer shows another position or
        time point of the layer, it also says the curve is of the one it was computed for."""
        layer, best = self._curve_layer, self.plot.best
        if layer is None or best is None:
            return
        where = _ops.position_text(self.viewer, layer, self._curve_lead)
        text = f"best plane of {layer.name}{f' at {where}' if where else ''}: {_ops.plane_text(layer, best)}"
        if self._curve_lead and layer in self.viewer.layers:
            now = tuple(_ops.current_indices(self.viewer, layer)[:-1])
            if now != self._curve_lead:
                here = _ops.position_text(self.viewer, layer, now)
                text += (f" — this curve is of {where}, the viewer shows {here}: 'Go to best plane' goes back to "
                         f"{where}; 'Focus curve' scores {here}")
        self.best_label.setText(text)

    def _on_layer_removed(self, event) -> None:
        """The focus curve's layer was deleted: its curve and best plane go with it."""
        if not c._alive(self) or getattr(event, "value", None) is not self._curve_layer or self._curve_layer is None:
            return
        name = self._curve_layer.name
        self._drop_curve(f"{name!r} was deleted; press 'Focus curve' to score another layer")

    def _set_curve_layer(self, layer) -> None:
        """The layer the focus curve is of; a new ``layer.data`` makes the curve stale, so it is followed."""
        old = self._curve_layer
        if old is layer:
            return
        if old is not None:
            old.events.data.disconnect(self._on_curve_data)
        if layer is not None:
            layer.events.data.connect(self._on_curve_data)
        self._curve_layer = layer

    def _drop_curve(self, why: str) -> None:
        self._set_curve_layer(None)
        self._curve_lead = ()
        self.plot.draw(None, None)
        self.goto_btn.setEnabled(False)
        self.best_label.setText(why)

    def _on_curve_data(self, event=None) -> None:
        """The focus curve's layer got new data: its curve and best plane describe data that is gone."""
        layer = self._curve_layer
        if not c._alive(self) or layer is None or getattr(event, "source", layer) is not layer:
            return
        self._drop_curve(f"the data of {layer.name!r} changed; press 'Focus curve' to score it again")

    def go_to_best(self) -> None:
        """Move the viewer to the best plane, at the position/time point the curve was computed for."""
        layer = self._curve_layer
        if layer is None or self.plot.best is None:
            self.goto_btn.setEnabled(False)
            self.panel.refuse("go to best plane: there is no focus curve; press 'Focus curve' first")
            return
        if layer not in self.viewer.layers:
            self.goto_btn.setEnabled(False)
            self.panel.refuse(f"go to best plane: {layer.name!r} was deleted; press 'Focus curve' to score "
                              "another layer")
            return
        data = [*self._curve_lead, self.plot.best]  # the layer's axes before Y, X
        offset = self.viewer.dims.ndim - layer.ndim
        axes = [offset + i for i in range(len(data))]
        # through the layer's whole data-to-world transform (its affine too), at the Y, X the viewer shows, as
        # current_indices reads the plane back
        here = np.asarray(layer.world_to_data(self.viewer.dims.point), dtype=float)[-2:]
        world = [float(v) for v in np.asarray(layer.data_to_world([*data, *here]), dtype=float)[: len(data)]]
        self.viewer.dims.set_point(axes, world)
