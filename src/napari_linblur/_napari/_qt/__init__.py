"""Qt widgets of the plugin (one module per widget, shared pieces in ``_common``)."""
