"""Command-line interface: ``linblur``."""
