"""Shared machinery of the two pair widgets (Blur synthesis and Deblur): two (layer, plane) inputs, α, a
live preview of the current plane and whole-stack runs (computed layer, lazy layer or OME-Zarr)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import _ops
from .._settings import get_settings
from . import _common as c


def output_axes(layer, ndim: int, dropped_z: bool) -> str:
    """Axis letters for writing a result of ``ndim`` dimensions computed from ``layer``."""
    axes = (layer.metadata or {}).get("linblur_axes")
    if isinstance(axes, str) and len(axes) == layer.ndim:
        if dropped_z:
            axes = axes.replace("z", "")
        if len(axes) == ndim:
            return axes
    base = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tpzyx"}
    if dropped_z:
        return base[ndim + 1].replace("z", "") if ndim + 1 in base else base[ndim]
    return base[ndim]


def output_units(like, ndim: int, dropped_z: bool) -> tuple[str, ...]:
    """The input layer's units for an output of ``ndim`` axes (its Z axis left out when the result has none)."""
    units = [str(u) for u in getattr(like, "units", ())]
    if dropped_z and len(units) == ndim + 1:
        del units[-3]
    return tuple(units[-ndim:]) if len(units) >= ndim else ("pixel",) * ndim


def _as_written(data, kw: dict, axes: str):
    """The reopened OME-Zarr layer with the written axes only: the reader gives every image a Z axis (a single
    synthesized plane per time point comes back as Z = 1), which would place the result at world z = 0."""
    read_axes = kw["metadata"].get("linblur_axes") or ""
    drop = [i for i, a in enumerate(read_axes) if a not in axes]
    if not drop:
        return data, kw
    index = tuple(0 if i in drop else slice(None) for i in range(len(read_axes)))
    data = [level[index] for level in data] if isinstance(data, list) else data[index]
    keep = [i for i in range(len(read_axes)) if i not in drop]
    kw = dict(kw)
    for key in ("axis_labels", "units"):
        if kw.get(key) is not None and len(kw[key]) == len(read_axes):
            kw[key] = [kw[key][i] for i in keep]
    kw["metadata"] = {**kw["metadata"], "linblur_axes": "".join(read_axes[i] for i in keep)}
    return data, kw


def existing_output_problem(path: str, sources: list[str]) -> str | None:
    """Why an OME-Zarr output cannot go to ``path`` (GUI wording), or None when the path is free.

    The widgets never overwrite: an existing file or folder is refused before the run starts, naming the path and
    what to do (another name, or delete it), and so is one of the run's own inputs.

    Examples
    --------
    >>> existing_output_problem("/no/such/dir/out.ome.zarr", []) is None
    True
    """
    target = Path(path).expanduser()
    if not (target.exists() or target.is_symlink()):
        return None
    resolved = target.resolve()
    for src in sources:
        try:
            if Path(src).expanduser().resolve() == resolved:
                return (f"{target} is the input of this run; napari-linblur never writes over its input — "
                        "choose another file name")
        except OSError:  # pragma: no cover - an unreadable source path
            continue
    kind = "a folder" if target.is_dir() else "a file"
    return (f"{target} already exists ({kind}); napari-linblur does not overwrite it — choose another file name, "
            "or delete it first")


def run_whole_stack(
    widget: c.LinblurWidget,
    panel: c.RunPanel,
    output: c.OutputChooser,
    *,
    op: Callable[..., Any],
    arrays: list[Any],
    like,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    dropped_z: bool,
    name: str,
    sources: list[str],
    layer_kwargs: dict | None = None,
    metadata: dict | None = None,
    attrs: dict | None = None,
    inputs: dict[str, str] | None = None,
) -> bool:
    """Start a whole-stack run of ``op(*planes_or_arrays, should_stop=...)`` into the chosen output.

    ``op`` is called with 2-D planes (computed layer: per-plane progress and cancel between planes) or with
    lazy dask stacks (lazy layer / OME-Zarr: the public operation builds the lazy graph).

    ``attrs`` says what the values are (operation, unit, model, …, as the command line writes them): an OME-Zarr
    output stores them under ``"linblur"`` in its root attributes (with the input and layer names) and every output
    layer carries them as ``metadata["linblur_attrs"]``. An OME-Zarr path that exists is refused before the run.

    ``inputs`` maps the operation's argument names (``img``, ``img_b``, …) to the input layers' names: an error says
    "'cells' contains NaN" rather than "img contains NaN", as the live previews do.
    """
    from napari_linblur.io.omezarr import write_ome_zarr

    mode = output.mode()
    layer_kwargs = dict(layer_kwargs or {})
    described = {"layer": name, "inputs": list(sources), **(attrs or {})}
    meta = {"linblur_inputs": sources, **(metadata or {}), "linblur_attrs": described}
    ndim = arrays[0].ndim
    units = output_units(like, len(scale), dropped_z)
    layer_kwargs.setdefault("units", units)

    if mode == output.ZARR:
        path = output.path.text().strip()
        if not path:
            panel.refuse(f"{name}: choose an output path for the OME-Zarr file")
            return False
        problem = existing_output_problem(path, sources)
        if problem is not None:
            panel.refuse(f"{name}: {problem}")
            return False
        axes = output_axes(like, ndim, dropped_z)

        def job(report, should_stop):
            lazy = op(*[_ops.lazy_planes(a) for a in arrays])
            try:
                write_ome_zarr(path, lazy, axes=axes, scale=[abs(s) for s in scale], translate=list(translate),
                               source_paths=sources, units=[None if u == "pixel" else u for u in units],
                               progress=report, name=name, attrs={"linblur": described})
            except FileExistsError as err:  # created by someone else while this run was writing
                raise ValueError(f"{path} appeared while this run was writing it; nothing was overwritten — "
                                 "choose another file name") from err
            return path

        def done(path):
            from .._reader import read_zstack

            for data, kw, _ in read_zstack(path):
                data, kw = _as_written(data, kw, axes)
                kw["name"] = name
                kw["scale"] = tuple(scale)
                kw["translate"] = tuple(translate)
                kw.update({k: v for k, v in layer_kwargs.items() if k in ("colormap", "contrast_limits", "units")})
                # what the values mean, as on a computed or lazy layer (the file keeps the source: its own path)
                kw["metadata"] = {**meta, **kw.get("metadata", {})}
                widget.viewer.add_image(data, **kw)

        return panel.start(job, desc=f"writing {name}", on_result=done, inputs=inputs)

    if mode == output.LAZY:

        def job(report, should_stop):
            return op(*[_ops.lazy_planes(a) for a in arrays])

        def done(lazy):
            widget.add_result(lazy, name=name, scale=scale, translate=translate, metadata=meta, **layer_kwargs)

        return panel.start(job, desc=f"building {name}", on_result=done, inputs=inputs)

    def job(report, should_stop):
        if ndim == 2:  # one plane: the operation's own per-tile progress (when it reports any)
            planes = [_ops.plane_of_array(a) for a in arrays]
            return as_plane(op(*planes, should_stop=should_stop, progress=report))
        return _ops.compute_planes(lambda *p: op(*p, should_stop=should_stop), arrays, report=report,
                                   should_stop=should_stop)

    def done(result):
        kw = dict(layer_kwargs)
        if "contrast_limits" not in kw:
            kw["contrast_limits"] = _ops.robust_limits(result)
        widget.add_result(result, name=name, scale=scale, translate=translate, metadata=meta, **kw)

    return panel.start(job, desc=name, on_result=done, inputs=inputs)


def op_kwargs(model: str | None) -> dict:
    s = get_settings()
    kw = {"model": model, "device": s.device}
    if s.tile_size:  # 0 = the operation's automatic tile
        kw["tile"] = s.tile_size
    return kw


def as_plane(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)
