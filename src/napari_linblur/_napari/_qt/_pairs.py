"""Shared machinery of the two pair widgets (Blur synthesis and Deblur): two (layer, plane) inputs, α, a
live preview of the current plane and whole-stack runs (computed layer, lazy layer or OME-Zarr)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_linblur.inference.validate import name_arguments

from .. import _ops
from .. import _placement as pl
from .._settings import get_settings
from . import _common as c


def check_preview_pair(layer_1, z_1: int, layer_2, z_2: int) -> None:
    """The live preview's checks of a pair's two planes.

    A plane that does not exist is an error (a ``ValueError`` naming it, :func:`_ops.check_plane`). A single-plane
    image where a pair needs two planes (e.g. the BBBC006 sample in the default Pair mode, before the user did
    anything) is not: it is :class:`~._common.NoInput`, shown as "waiting: …" in the status line without a pop-up,
    like a widget with no image yet. An explicit Run still refuses it with a notification
    (:func:`_ops.pair_stacks`).

    Raises
    ------
    ValueError
        a plane that does not exist.
    NoInput
        the two inputs are one single plane.
    """
    _ops.check_plane(layer_1, z_1)
    _ops.check_plane(layer_2, z_2)
    try:
        _ops.check_two_planes(layer_1, z_1, layer_2, z_2, same_plane_ok=True)
    except ValueError as err:
        raise c.NoInput(str(err)) from err


def output_axes(layer, ndim: int, dropped_z: bool) -> str:
    """Axis letters for writing a result of ``ndim`` dimensions computed from ``layer``: the axes the reader named
    (``metadata["linblur_axes"]``), else the layer's own ``axis_labels`` when they are OME-NGFF axis letters
    (``t``, ``c``, ``z``, ``y``, ``x``, once each, ending in ``yx``), else ``tzyx``-style defaults."""
    labels = "".join(str(a).lower() for a in getattr(layer, "axis_labels", ()))
    own = labels if (len(labels) == layer.ndim and set(labels) <= set("tczyx") and len(set(labels)) == len(labels)
                     and labels.endswith("yx")) else None
    for axes in ((layer.metadata or {}).get("linblur_axes"), own):
        if isinstance(axes, str) and len(axes) == layer.ndim:
            if dropped_z:
                axes = axes.replace("z", "")
            if len(axes) == ndim:
                from napari_linblur.io.omezarr import writable_axes

                return writable_axes(axes)  # a custom axis read as '?' gets a letter of its own
    base = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tpzyx"}
    if dropped_z:
        return base[ndim + 1].replace("z", "") if ndim + 1 in base else base[ndim]
    return base[ndim]


def output_units(like, ndim: int, dropped_z: bool) -> tuple[str, ...]:
    """The input layer's units for an output of ``ndim`` axes (its Z axis left out when the result has none)."""
    units = [str(u) for u in getattr(like, "units", ())]
    if len(units) < ndim:
        return ("pixel",) * ndim
    return tuple(units[i] for i in pl.kept_axes(len(units), ndim, dropped_z))


def _one_layer(layers: list, axes: str) -> list:
    """The reader's layers of an output written with a channel axis (``c`` in ``axes``), stacked back into one
    layer along it: the result of one input layer comes back as one layer, as a computed or lazy output does (the
    reader opens such a file as one layer per channel)."""
    ic = axes.find("c")
    if ic < 0 or not layers:
        return layers
    import dask.array as da

    datas = [d for d, _, _ in layers]
    if isinstance(datas[0], list):  # a pyramid per channel: stack level by level
        data = [da.stack([d[k] for d in datas], axis=ic) for k in range(len(datas[0]))]
    else:
        data = da.stack(datas, axis=ic)
    kw = {k: v for k, v in layers[0][1].items() if k not in ("colormap", "blending", "name")}
    kw["axis_labels"] = list(axes)
    kw["metadata"] = {**kw.get("metadata", {}), "linblur_axes": axes, "linblur_channel": None}
    return [(data, kw, "image")]


def _as_written(data, kw: dict, axes: str):
    """The reopened OME-Zarr layer with the written axes only: the reader gives every image a Z axis (a single
    synthesized (Y, X) plane comes back as Z = 1), which would place the result at world z = 0. (A pair run on
    (T, Z, Y, X) writes its one-plane Z axis itself, spanning the input's Z extent: nothing is dropped then.)"""
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


def lazy_error_reporter(name: str, chunks, inputs: dict[str, str] | None = None):
    """``on_error`` for :func:`_ops.guard_blocks` on the lazy output layer ``name``: a napari error notification
    naming the output, the plane and the input layer (``'cells' contains NaN…`` rather than ``img contains NaN…``),
    once per distinct message (the same problem on other planes, or on the same plane sliced again, stays quiet)."""
    import threading
    import traceback

    from napari.utils.notifications import show_error

    seen: set[str] = set()
    lock = threading.Lock()

    def on_error(block_index: tuple[int, ...], err: BaseException) -> None:
        text = name_arguments(c.describe(err), inputs or {})
        with lock:
            if text in seen:
                return
            seen.add(text)
        lead = _ops.block_start(chunks, block_index)[:-2]
        where = f"plane {lead[0]}" if len(lead) == 1 else f"plane {lead}" if lead else "the image"
        if not isinstance(err, c.QUIET_ERRORS):
            traceback.print_exception(type(err), err, err.__traceback__)
        show_error(f"{name}: {where} could not be computed and is shown as NaN: {text}")

    return on_error


def output_target(path: str) -> Path:
    """The OME-Zarr output path the user typed, with ``~`` expanded, made absolute and normalised (``..``
    removed; symbolic links are left for :func:`existing_output_problem` to see).

    Examples
    --------
    >>> import os
    >>> output_target("~/a/../out.ome.zarr") == Path(os.path.expanduser("~")).absolute() / "out.ome.zarr"
    True
    """
    import os

    return Path(os.path.abspath(Path(path).expanduser()))


def write_problem(path: str, err: OSError) -> str | None:
    """GUI wording for an ``OSError`` raised while writing the OME-Zarr ``path``: it names ``path`` (or the folder
    that could not be made), never the writer's hidden temporary sibling ``.NAME.tmp-XXXX``; None for an error that
    is not about the output (e.g. reading an input).

    Examples
    --------
    >>> write_problem("/proc/out.ome.zarr", FileNotFoundError(2, "No such file or directory",
    ...                                                       "/proc/.out.ome.zarr.tmp-0123456789ab"))
    'cannot write /proc/out.ome.zarr: No such file or directory'
    >>> write_problem("/a/b/out.ome.zarr", PermissionError(13, "Permission denied", "/a/b"))
    'cannot write /a/b/out.ome.zarr: Permission denied (cannot create /a/b)'
    >>> write_problem("/a/out.ome.zarr", FileNotFoundError(2, "No such file or directory", "/data/in.tif")) is None
    True
    """
    target = Path(path)
    reason = err.strerror or str(err) or type(err).__name__
    tmp_prefix = f".{target.name}.tmp-"

    def in_output(f: Path) -> bool:
        return any(p == target or (p.parent == target.parent and p.name.startswith(tmp_prefix))
                   for p in (f, *f.parents))

    for name in (err.filename, err.filename2):
        if not name:
            continue
        f = Path(name)
        if in_output(f):
            return f"cannot write {target}: {reason}"
        if f in target.parents:
            return f"cannot write {target}: {reason} (cannot create {f})"
    if tmp_prefix in str(err):
        return f"cannot write {target}: {reason}"
    return None


def existing_output_problem(path: str, sources: list[str]) -> str | None:
    """Why an OME-Zarr output cannot go to ``path`` (GUI wording), or None when the path is free.

    The widgets never overwrite: an existing file or folder is refused before the run starts, naming the path and
    what to do (another name, or delete it), and so is one of the run's own inputs, and a path that cannot be
    looked up at all (e.g. a file name too long for the file system).

    Examples
    --------
    >>> existing_output_problem("/no/such/dir/out.ome.zarr", []) is None
    True
    >>> existing_output_problem("/tmp/" + "a" * 300 + ".ome.zarr", []).endswith(
    ...     ".ome.zarr: File name too long — choose another file name")
    True
    """
    target = Path(path).expanduser()
    try:
        if not (target.exists() or target.is_symlink()):
            return None
        resolved = target.resolve()
    except OSError as err:  # e.g. ENAMETOOLONG
        return f"cannot write {target}: {err.strerror or err} — choose another file name"
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


def snapshot_inputs(layers: list) -> list[tuple]:
    """What a run's input ``layers`` are when it starts (data, scale, translate), for :func:`check_inputs_kept`
    (``None`` entries, an input the operation does not read, are skipped)."""
    return [(ly, ly.data, tuple(ly.scale), tuple(ly.translate)) for ly in layers if ly is not None]


def check_inputs_kept(viewer, started: list[tuple], outcome: str = "nothing added") -> str | None:
    """Whether a run's result still belongs to its inputs (``started``: :func:`snapshot_inputs` at its start).

    Raises :class:`~._common.NothingToShow` when an input layer was deleted ("'cells' was deleted; nothing
    added") or its data replaced while the run computed: the result is not added (it would be placed on, and named
    after, a layer that is gone, or show data the layer no longer holds); the run's status line says so, with no
    error notification. An input moved meanwhile (its scale or translate changed) keeps the result, placed where
    the input was at the start: the returned message says so (None when nothing moved).

    Parameters
    ----------
    viewer
        The napari viewer the run's output would be added to.
    started
        :func:`snapshot_inputs` of the run's input layers, taken when it started.
    outcome
        What became of the result, said after the deleted or changed layers' names.
    """
    def names(layers: list) -> str:
        return " and ".join(repr(n) for n in dict.fromkeys(ly.name for ly in layers))

    gone = list(dict.fromkeys(ly for ly, *_ in started if ly not in viewer.layers))  # one layer may be both inputs
    if gone:
        raise c.NothingToShow(f"{names(gone)} {'was' if len(gone) == 1 else 'were'} deleted; {outcome}")
    changed = [ly for ly, data, *_ in started if ly.data is not data]
    if changed:
        raise c.NothingToShow(f"the data of {names(changed)} changed while this run computed; {outcome} — "
                              "run it again on the new data")
    moved = [ly for ly, _, scale, translate in started if tuple(ly.scale) != scale
             or tuple(ly.translate) != translate]
    if moved:
        return (f"{names(moved)} moved (scale or translate changed) while this run computed: its output is placed "
                "where the input was when the run started")
    return None


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
    input_layers: list | None = None,
    on_added: Callable[[Any], None] | None = None,
) -> bool:
    """Start a whole-stack run of ``op(*planes_or_arrays, should_stop=...)`` into the chosen output.

    ``op`` is called with 2-D planes (computed layer: per-plane progress and cancel between planes) or with
    lazy dask stacks (lazy layer / OME-Zarr: the public operation builds the lazy graph).

    ``attrs`` says what the values are (operation, unit, model, …, as the command line writes them): an OME-Zarr
    output stores them under ``"linblur"`` in its root attributes (with the input and layer names) and every output
    layer carries them as ``metadata["linblur_attrs"]``. An OME-Zarr path that exists is refused before the run.

    ``inputs`` maps the operation's argument names (``img``, ``img_b``, …) to the input layers' names: an error says
    "'cells' contains NaN" rather than "img contains NaN", as the live previews do.

    ``input_layers`` are the layers the run reads (default: ``like``): one deleted, or whose data is replaced, while
    the run computes ends it with a line on the run's status line and no output layer, not an error; one moved
    meanwhile gets its output with a warning (:func:`check_inputs_kept`).

    ``on_added`` is called with each output layer the run adds (none when nothing is added).
    """
    from napari_linblur.io.omezarr import write_ome_zarr

    mode = output.mode()
    started = snapshot_inputs(input_layers or [like])
    layer_kwargs = dict(layer_kwargs or {})
    shape = tuple(int(n) for n in arrays[0].shape)
    ndim = len(shape)
    # a pair run on (T, Z, Y, X) keeps a one-plane Z axis (see _ops.pair_stacks): only a shorter result lost Z
    dropped_z = bool(dropped_z) and ndim < like.ndim
    try:
        axes = output_axes(like, ndim, dropped_z)
    except KeyError:  # more than 5 axes and none named by the reader: an OME-Zarr output refuses it below
        axes = ""
    # the input's wells/sites and BBBC006 plane numbers, where they still describe the output (as `linblur` batch
    # outputs record them); the operation's own attributes come after them and win
    positions = _ops.carried_positions(like, axes, shape)
    described = {"layer": name, "inputs": list(sources), **positions, **(attrs or {})}
    meta = {"linblur_inputs": sources, **(metadata or {}), "linblur_attrs": described}
    read_axes = (like.metadata or {}).get("linblur_axes")
    if isinstance(read_axes, str) and len(read_axes) == like.ndim:
        meta["linblur_axes"] = axes  # the output's axes, named as the input's were read
    meta.update({f"linblur_{k}": list(v) for k, v in positions.items()})
    units = output_units(like, len(scale), dropped_z)
    layer_kwargs.setdefault("units", units)

    if mode == output.ZARR:
        path = output.path.text().strip()
        if not path:
            panel.refuse(f"{name}: choose an output path for the OME-Zarr file")
            return False
        # one absolute path for the check, the writer and the reader (a GUI text field gets no shell: ``~`` is
        # expanded here, and a relative path does not follow a later change of the working directory)
        path = str(output_target(path))
        problem = existing_output_problem(path, sources)
        if problem is not None:
            panel.refuse(f"{name}: {problem}")
            return False
        if not axes:
            panel.refuse(f"{name}: an OME-Zarr output holds 2-D to 5-D images; this result has {ndim} axes — "
                         "choose 'new layer' or 'lazy layer', or run on a smaller selection")
            return False

        def job(report, should_stop):
            lazy, out_scale, out_translate = _ops.with_positive_scale(op(*[_ops.lazy_planes(a) for a in arrays]),
                                                                      scale, translate)
            try:
                # one plane at a time, on all of torch's threads (a plane per core would run cores² threads)
                write_ome_zarr(path, lazy, axes=axes, scale=out_scale, translate=out_translate,
                               source_paths=sources, units=[None if u == "pixel" else u for u in units],
                               progress=report, name=name, attrs={"linblur": described}, max_parallel=1)
            except OSError as err:
                if isinstance(err, FileExistsError) and err.filename in (None, path):
                    # created by someone else while this run was writing (not a file where a folder must go)
                    raise ValueError(f"{path} appeared while this run was writing it; nothing was overwritten — "
                                     "choose another file name") from err
                problem = write_problem(path, err)
                if problem is None:
                    raise
                raise ValueError(problem) from err
            return path

        def done(path):
            from .._reader import read_zstack

            moved = check_inputs_kept(widget.viewer, started, f"{path} was written but is not added")
            for data, kw, _ in _one_layer(read_zstack(path), axes):
                data, kw = _as_written(data, kw, axes)
                kw["name"] = name
                kw["scale"] = tuple(scale)
                kw["translate"] = tuple(translate)
                kw.update({k: v for k, v in layer_kwargs.items() if k in ("colormap", "contrast_limits", "units")})
                # what the values mean, as on a computed or lazy layer (the file keeps the source: its own path)
                kw["metadata"] = {**meta, **kw.get("metadata", {})}
                # placed as the input is (the file keeps scale and translate; rotation, shear and affine are the
                # layer's own) and named by the input's axis labels
                placed, problem = pl.placement(like, len(scale), dropped_z=dropped_z)
                kw.update(placed)
                added = widget.viewer.add_image(data, **kw)
                pl.warn_placement(problem)
                pl.warn_placement(moved)
                if on_added is not None:
                    on_added(added)

        return panel.start(job, desc=f"writing {name}", on_result=done, inputs=inputs)

    if mode == output.LAZY:

        def job(report, should_stop):
            return op(*[_ops.lazy_planes(a) for a in arrays])

        def done(lazy):
            moved = check_inputs_kept(widget.viewer, started)
            lazy = _ops.guard_blocks(lazy, lazy_error_reporter(name, getattr(lazy, "chunks", ()), inputs))
            added = widget.add_result(lazy, name=name, scale=scale, translate=translate, metadata=meta, like=like,
                                      dropped_z=dropped_z, **layer_kwargs)
            pl.warn_placement(moved)
            if on_added is not None:
                on_added(added)

        return panel.start(job, desc=f"building {name}", on_result=done, inputs=inputs, note=c.LAZY_NOTE)

    # computed now: the whole result is held in memory (and shown by napari), so a result larger than the memory
    # this computer can spare is refused before the run, pointing to the outputs that are not held in memory
    problem = _ops.memory_problem(shape)
    if problem is not None:
        panel.refuse(f"{name}: {problem}")
        return False

    def job(report, should_stop):
        try:
            if ndim == 2:  # one plane: the operation's own per-tile progress (when it reports any)
                planes = [_ops.plane_of_array(a) for a in arrays]
                return as_plane(op(*planes, should_stop=should_stop, progress=report))
            return _ops.compute_planes(lambda *p: op(*p, should_stop=should_stop), arrays, report=report,
                                       should_stop=should_stop)
        except MemoryError as err:  # the memory was taken meanwhile (or was misjudged): say what to do instead
            need = _ops.format_bytes(_ops.output_nbytes(shape))
            raise ValueError(f"out of memory computing the {need} result "
                             f"({' x '.join(map(str, shape))} float32) — choose the output 'OME-Zarr file' "
                             "(written to disk plane by plane) or 'lazy layer' (planes computed when shown), or run "
                             "on a smaller selection") from err

    def done(result):
        moved = check_inputs_kept(widget.viewer, started)
        kw = dict(layer_kwargs)
        if "contrast_limits" not in kw:
            kw["contrast_limits"] = _ops.robust_limits(result)
        added = widget.add_result(result, name=name, scale=scale, translate=translate, metadata=meta, like=like,
                                  dropped_z=dropped_z, **kw)
        pl.warn_placement(moved)
        if on_added is not None:
            on_added(added)

    return panel.start(job, desc=name, on_result=done, inputs=inputs)


def op_kwargs(model: str | None) -> dict:
    s = get_settings()
    kw = {"model": model, "device": s.device}
    if s.tile_size:  # 0 = the operation's automatic tile
        kw["tile"] = s.tile_size
    return kw


def pair_order_note(sharper: np.ndarray, blurrier: np.ndarray, names: tuple[str, str]) -> str:
    """A note for the live preview when the two planes of a pair operation are not what it expects: the same
    pixels, or the one meant to be sharper (``names[0]``) clearly blurrier than the other by its focus score (the
    variance of the Laplacian after a 1-px Gaussian, which keeps shot noise from ranking a blurred plane sharp;
    a 10 % margin leaves planes of about equal blur alone); "" when they look right.

    Examples
    --------
    >>> p = np.random.default_rng(0).random((32, 32))
    >>> pair_order_note(p, p, ("a", "c"))
    'a and c are the same image: nothing lies between them'
    """
    from scipy.ndimage import gaussian_filter

    from napari_linblur.metrics.focus import variance_of_laplacian

    s, b = np.asarray(sharper, np.float64), np.asarray(blurrier, np.float64)
    if s.shape == b.shape and np.array_equal(s, b):
        return f"{names[0]} and {names[1]} are the same image: nothing lies between them"
    if variance_of_laplacian(gaussian_filter(s, 1.0)) < 0.9 * variance_of_laplacian(gaussian_filter(b, 1.0)):
        return (f"{names[0]} looks blurrier than {names[1]} (its focus score is lower): {names[0]} should be the "
                "sharper plane — swap them")
    return ""


def as_plane(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)
