"""Exceptions of napari-linblur."""

from __future__ import annotations

__all__ = ["MissingFileError"]


class MissingFileError(FileNotFoundError, ValueError):
    """A file or folder the caller named (an image, a model's weights, a run) does not exist.

    Both a ``FileNotFoundError`` (an ``OSError``, as Python's own) and a ``ValueError`` (bad input, as every other
    input error of the package), so that either ``except`` clause catches it.

    Examples
    --------
    >>> try:
    ...     raise MissingFileError("model file weights.safetensors does not exist")
    ... except ValueError as err:
    ...     print(isinstance(err, FileNotFoundError), err)
    True model file weights.safetensors does not exist
    """
