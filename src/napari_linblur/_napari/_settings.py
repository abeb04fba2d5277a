"""Plugin settings (device, tile size, preview delay, default models).

They are declared in ``napari.yaml`` under ``contributions.configurations`` and edited in napari's
*Preferences → Plugins* dialog; napari persists them in ``<napari config dir>/napari-linblur.yaml``. Outside a
napari that supports plugin configurations the defaults below are used.

Examples
--------
>>> from napari_linblur._napari._settings import get_settings
>>> s = get_settings()
>>> s.device in ("auto", "cpu", "cuda", "mps") and s.tile_size >= 0
True
"""

from __future__ import annotations

from dataclasses import dataclass

PLUGIN = "napari-linblur"


@dataclass
class LinblurSettings:
    """A plain snapshot of the plugin settings (read when a run starts)."""

    device: str = "auto"
    tile_size: int = 0  # 0 = each operation's automatic tile
    preview_delay_ms: int = 150
    ae_model: str = ""
    deblur_model: str = ""
    defocus_model: str = ""

    def model_for(self, task: str) -> str | None:
        """The configured model for ``task`` ('ae', 'deblur', 'defocus'); None = the shipped default."""
        value = {"ae": self.ae_model, "deblur": self.deblur_model, "defocus": self.defocus_model}[task]
        return value or None


def _plugin_settings():
    from napari.settings import get_plugin_settings

    return get_plugin_settings(PLUGIN)


def _tile(t: int) -> int:
    """0 (or less) = automatic; otherwise at least the smallest tile the operations accept (16 px)."""
    return 0 if t <= 0 else max(16, t)


def get_settings() -> LinblurSettings:
    """Read the current plugin settings (defaults when napari has none for this plugin).

    Returns
    -------
    LinblurSettings
    """
    try:
        s = _plugin_settings()
        return LinblurSettings(
            device=str(s.inference.device),
            tile_size=_tile(int(s.inference.tile_size)),
            preview_delay_ms=int(s.inference.preview_delay_ms),
            ae_model=str(s.models.ae_model or ""),
            deblur_model=str(s.models.deblur_model or ""),
            defocus_model=str(s.models.defocus_model or ""),
        )
    except (ImportError, AttributeError):  # an older napari without plugin configurations: defaults
        return LinblurSettings()
    except Exception as err:  # noqa: BLE001 - a settings file napari cannot read (e.g. not a mapping)
        _warn_unreadable(err)
        return LinblurSettings()


_warned_unreadable = False


def _warn_unreadable(err: BaseException) -> None:
    """Say once per session that the plugin's settings could not be read and defaults are used."""
    global _warned_unreadable
    if _warned_unreadable:
        return
    _warned_unreadable = True
    import warnings

    warnings.warn(f"napari-linblur's settings (napari-linblur.yaml in napari's configuration folder) could not be "
                  f"read ({type(err).__name__}: {err}); the defaults are used — fix or delete that file",
                  UserWarning, stacklevel=3)


def set_setting(section: str, key: str, value) -> bool:
    """Persist one setting (``section`` 'inference' or 'models'); False when napari cannot store it."""
    try:
        setattr(getattr(_plugin_settings(), section), key, value)
        return True
    except Exception:  # noqa: BLE001
        return False
