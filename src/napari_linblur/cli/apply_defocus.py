"""``linblur defocus-map IN OUT.zarr`` and ``linblur focus IN`` — batch defocus maps and focus QC.

Both open the input lazily (OME-Zarr/zarr, TIFF, folders of TIFFs, BBBC006 folders or files), build one lazy
dask graph (one task per plane) and run it on a ``dask.distributed`` cluster: ``--workers N`` starts a
``LocalCluster(n_workers=N, threads_per_worker=1)``, ``--scheduler ADDRESS`` connects to a running one.

Examples::

    linblur defocus-map plate.zarr sigma.zarr --workers 2
    linblur defocus-map stack.tif sigma_patches.zarr --mode patch --patch-size 64
    linblur defocus-map plate.zarr defocus_um.zarr --um --na 0.45 --wavelength 0.52
    linblur focus BBBC006_folder/ --channel w1 --json focus.json --csv focus.csv

Both show a progress bar on stderr when it is a terminal (``--no-progress``: none).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from ._groups import DefaultsHelpFormatter, add_amp_option, add_overwrite_option, add_tta_option


def register(subparsers) -> None:
    from napari_linblur.cli._groups import add_batch_options, add_progress_option
    from napari_linblur.models.registry import model_arg

    p = subparsers.add_parser(
        "defocus-map",
        help="per-pixel defocus maps (σ, px) of every plane -> OME-Zarr",
        description="Estimate the per-pixel defocus map (σ of the equivalent Gaussian PSF, pixels) of every "
        "plane with HDME-Net and write it as OME-Zarr (same axes and scale as the input).",
        formatter_class=DefaultsHelpFormatter,
    )
    add_batch_options(p)
    p.add_argument("output", help="output .zarr folder (OME-Zarr)")
    p.add_argument("--model", default=None, type=model_arg,
                   help="model name or .safetensors path (default defocus-default)")
    p.add_argument("--mode", default="pixel", choices=["pixel", "patch"], help="per-pixel map or mean σ per tile")
    p.add_argument("--patch-size", type=int, default=None, help="tile side for --mode patch (default 64)")
    p.add_argument("--patch-pixels", default=None, choices=["signal", "all"],
                   help="--mode patch: mean σ over the signal pixels of each tile (default; NaN: a tile without "
                   "signal) or over all its pixels (background included, where σ is a guess)")
    p.add_argument("--tile", type=int, default=None, help="inference tile side (default: automatic, <= 576 px)")
    add_tta_option(p, "self-ensemble: average the maps of this many flips/rotations (N times slower)")
    add_amp_option(p)
    add_camera_options(p)
    u = p.add_argument_group("µm of defocus (default: σ in pixels)")
    u.add_argument("--um", action="store_true",
                   help="write |defocus| in µm instead of σ in px, with the optics calibration of --na and "
                   "--wavelength (one image cannot tell above from below focus)")
    u.add_argument("--na", type=float, default=None, help="numerical aperture of the objective (with --um)")
    u.add_argument("--wavelength", type=float, default=None, metavar="UM", help="emission wavelength, µm (with --um)")
    u.add_argument("--pixel-um", type=float, default=None, metavar="UM",
                   help="pixel size in the sample, µm (with --um; default: the input's pixel size, when the file "
                   "records it in a length unit: nm, µm, mm ... converted to µm)")
    u.add_argument("--ni", type=float, default=None,
                   help="immersion index: 1.0 air (the default), 1.33 water, 1.515 oil (with --um)")
    u.add_argument("--psf-model", default=None, choices=["born_wolf", "gibson_lanni", "gaussian", "disc"],
                   help="PSF model of the σ <-> defocus calibration (with --um; default born_wolf)")
    add_overwrite_option(p)
    add_progress_option(p)
    p.set_defaults(func=run_defocus_map)

    q = subparsers.add_parser(
        "focus",
        help="per-plane focus curve and best-focus plane of every stack",
        description="Score every plane and report the best-focus plane of every stack, flagging a best plane at "
        "the first or last plane of its stack (focus may lie outside it) and one without signal (an empty field); "
        "prints one line per stack, optionally writes JSON and CSV.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_batch_options(q)
    q.add_argument("--method", default="defocus",
                   choices=["defocus", "variance_of_laplacian", "brenner", "tenengrad", "normalized_variance",
                            "vollath"], help="focus score: -median σ of the defocus map, or a classical measure")
    q.add_argument("--model", default=None, type=model_arg, help="defocus model (method 'defocus')")
    q.add_argument("--tile", type=int, default=None, help="inference tile side (default: automatic, <= 576 px)")
    add_amp_option(q)
    add_camera_options(q)
    q.add_argument("--json", default=None, help="write the curves and best planes as JSON")
    q.add_argument("--csv", default=None, help="write one row per plane as CSV")
    q.add_argument("--overwrite", action="store_true", help="replace existing --json/--csv files")
    q.add_argument("--on-error", default="stop", choices=["stop", "skip"],
                   help="a plane that cannot be scored (corrupt data, NaN pixels): 'stop' the run with its error "
                   "(exit code 2), or 'skip' it: its score is NaN, its stack's error is reported (an 'error' column "
                   "and key) and the run goes on; the exit code is then 1 if any plane failed, else 0")
    add_progress_option(q)
    q.set_defaults(func=run_focus)


def add_camera_options(p) -> None:
    """``--camera-gain``/``--camera-offset``/``--read-noise``: the camera's calibration for noise-aware models."""
    g = p.add_argument_group("camera calibration (noise-aware defocus models; default: estimated from each plane)")
    g.add_argument("--camera-gain", type=float, default=None, metavar="ADU_PER_E",
                   help="ADU per photo-electron (a camera specified in e-/ADU: its inverse)")
    g.add_argument("--camera-offset", type=float, default=None, metavar="ADU", help="dark level (pedestal), ADU")
    g.add_argument("--read-noise", type=float, default=None, metavar="E", help="read noise, electrons r.m.s.")


def camera_from_args(args):
    """``"auto"``, or the calibration dict when all three camera options are given (a ValueError if only some)."""
    vals = {"gain": args.camera_gain, "offset": args.camera_offset, "read_noise": args.read_noise}
    given = [k for k, v in vals.items() if v is not None]
    if not given:
        return "auto"
    if len(given) != 3:
        raise ValueError("give all three of --camera-gain, --camera-offset and --read-noise (a calibrated camera), "
                         "or none of them (the noise is then estimated from each plane)")
    from napari_linblur.inference.noise_input import resolve_camera

    resolve_camera(vals)  # validate now, before any work
    return vals


def optics_from_args(args):
    """The :class:`~napari_linblur.optics.psf.OpticalSetup` of ``--um`` (None without it), checked before any work.

    The pixel size is ``--pixel-um``, else the input's x pixel size when its metadata records it in a length unit
    (nm, µm, mm, ...: any OME-NGFF length unit, converted to µm).
    """
    optics = {"--na": args.na, "--wavelength": args.wavelength, "--pixel-um": args.pixel_um, "--ni": args.ni,
              "--psf-model": args.psf_model}
    if not args.um:
        given = [k for k, v in optics.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only convert{'s' if len(given) == 1 else ''} the map to µm: add "
                             "--um (or leave them out)")
        return None
    missing = [k for k in ("--na", "--wavelength") if optics[k] is None]
    if missing:
        raise ValueError(f"--um needs {' and '.join(missing)} (e.g. --na 0.45 --wavelength 0.52)")
    pixel = args.pixel_um
    if pixel is None:
        from napari_linblur.io.readers import length_in_um, open_zstack_with_metadata

        _, meta = open_zstack_with_metadata(args.input, channel=args.channel)
        x = meta.axes.index("x") if "x" in meta.axes else None
        pixel = None if x is None else length_in_um(meta.scale[x], meta.units[x])
        if pixel is None:
            unit = "no unit" if x is None or meta.units[x] is None else f"unit {meta.units[x]!r}"
            raise ValueError(f"{args.input} does not record its pixel size in a length unit ({unit}): pass "
                             "--pixel-um (the pixel size in the sample in µm, camera pixel / magnification)")
    from napari_linblur.optics.psf import OpticalSetup

    try:
        return OpticalSetup(na=args.na, wavelength_um=args.wavelength, pixel_um=pixel,
                            ni=1.0 if args.ni is None else args.ni, model=args.psf_model or "born_wolf")
    except ValueError as err:  # the options by their command-line names ("--wavelength 0.52", not wavelength_um=)
        options = {"wavelength_um": "--wavelength",
                   "pixel_um": "--pixel-um" if args.pixel_um is not None else f"the pixel size of {args.input} (µm)"}
        text = re.sub(r"\b(wavelength_um|pixel_um)\b(=?)",
                      lambda m: options[m.group(1)] + (" " if m.group(2) else ""), str(err))
        raise ValueError(text) from None


def run_defocus_map(args) -> int:
    from napari_linblur.batch import naming_the_input, open_batch_input, write_batch_output
    from napari_linblur.cli._groups import progress_from_args
    from napari_linblur.inference.defocus_ops import estimate_defocus, sigma_to_defocus_um

    camera = camera_from_args(args)
    setup = optics_from_args(args)
    patch = {"--patch-size": args.patch_size, "--patch-pixels": args.patch_pixels}
    if args.mode != "patch":
        given = [k for k, v in patch.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --mode patch (the "
                             "mean σ per tile): add --mode patch (or leave them out)")
    from napari_linblur.inference.defocus_ops import PATCH_PIXELS_DEFAULT, PATCH_SIZE

    patch_size = PATCH_SIZE if args.patch_size is None else args.patch_size
    patch_pixels = args.patch_pixels or PATCH_PIXELS_DEFAULT
    arr, meta = open_batch_input(args.input, args.output, channel=args.channel, overwrite=args.overwrite)
    if setup is not None and args.pixel_um is not None:
        meta = calibrated_by_pixel_um(meta, args.pixel_um, args.input)
    names = {"img": str(args.input)}
    with naming_the_input(names):
        sigma = estimate_defocus(arr, model=args.model, device=args.device, tile=args.tile, mode=args.mode,
                                 patch_size=patch_size, patch_pixels=patch_pixels, tta=args.tta, camera=camera,
                                 amp=args.amp)
        result = sigma if setup is None else sigma_to_defocus_um(sigma, setup=setup)
    unit = ("pixel (sigma of the equivalent Gaussian PSF)" if setup is None
            else "micrometer (|defocus|, from sigma with the optics calibration)")
    out = write_batch_output(
        result, meta, args.input, args.output, scheduler=args.scheduler, workers=args.workers,
        attrs={"operation": "defocus-map", "unit": unit, "model": args.model or "defocus-default",
               "mode": args.mode,
               **({"patch_size": patch_size, "patch_pixels": patch_pixels} if args.mode == "patch" else {}),
               "tta": args.tta, "amp": args.amp, "tile": args.tile or "automatic",
               "camera": camera,
               **({"optics": setup.to_dict()} if setup is not None else {})},
        overwrite=args.overwrite, progress=progress_from_args(args), desc=f"defocus-map {Path(args.output).name}",
        names=names,
    )
    print(f"wrote {out}")
    return 0


def calibrated_by_pixel_um(meta, pixel_um: float, source) -> Any:
    """``meta`` with y and x in µm of ``--pixel-um`` when the input records no length for them (the output then
    says in µm where it is, as the µm conversion assumed); an input that records another pixel size keeps it,
    with a warning that the conversion used ``--pixel-um``."""
    import dataclasses
    import warnings

    from napari_linblur.io.readers import length_in_um

    yx = [meta.axes.index(a) for a in "yx" if a in meta.axes]
    recorded = [length_in_um(meta.scale[i], meta.units[i]) for i in yx]
    if any(r is None for r in recorded):
        scale, units = list(meta.scale), list(meta.units)
        for i in yx:
            scale[i], units[i] = float(pixel_um), "micrometer"
        return dataclasses.replace(meta, scale=tuple(scale), units=tuple(units))
    if any(abs(r - pixel_um) > 0.01 * pixel_um for r in recorded):
        warnings.warn(f"--pixel-um {pixel_um:g} differs from the pixel size {source} records "
                      f"({' x '.join(f'{r:g}' for r in recorded)} µm): the µm map uses --pixel-um; the output keeps "
                      "the file's calibration", UserWarning, stacklevel=2)
    return meta


def bbbc006_planes(meta, n_planes: int) -> list[int] | None:
    """The BBBC006 plane number of each Z index (``meta.extra["planes"]``: a BBBC006 folder holding planes 14-16
    has Z indices 0-2; a batch output of one records them), or None when the input has none for its ``n_planes``."""
    planes = meta.extra.get("planes") if meta is not None else None
    return [int(z) for z in planes] if planes and len(planes) == n_planes else None


#: CSV column of the curve for the ``defocus`` method: the plane's median σ (px) over signal pixels, i.e. -score
SIGMA_COLUMN = "median_sigma_px"
_FIELD = re.compile(r"(?P<well>.+)_s(?P<site>\d+)")
_IMAGE_SUFFIXES = (".tif", ".tiff")


def _field_parts(field: str | None) -> tuple[str | None, int | None]:
    """``("a01", 1)`` for the BBBC006 field ``"a01_s1"``; ``(None, None)`` when it has no ``_sN`` site."""
    m = _FIELD.fullmatch(field) if field else None
    return (m["well"], int(m["site"])) if m else (None, None)


def stack_labels(meta, lead_shape: tuple[int, ...], lone_name: str = "stack") -> list[tuple[tuple, dict]]:
    """Name every stack of an input whose stacks lie along the leading axes ``lead_shape`` (all but Z, Y, X).

    Parameters
    ----------
    meta : ZStackMeta or None
        The reader's metadata (:func:`~napari_linblur.io.readers.open_zstack_with_metadata`).
    lead_shape : tuple of int
        The shape of the stacks' leading axes (``meta.axes[:-3]``).
    lone_name : str
        The name of a lone stack (no leading axis) that is not a BBBC006 field, e.g. the input's file name.

    Returns
    -------
    list of (index, dict)
        One per stack, in C order: its index along the leading axes and ``{"stack": name}``, plus ``well`` and
        ``site`` when the input records its BBBC006 fields (``meta.extra["fields"]``: one per P index, or the one
        field of a BBBC006 file) and ``channel`` when it records channel names. The name joins one part per leading
        axis with spaces: the field (``a01_s1``) for P, the channel name (``w1``) for C, ``t3`` for time and the
        axis's name and index for others, so that ``a01_s1 w1`` is field a01_s1, channel w1. Names are unique.
    """
    import numpy as np

    axes = meta.axes[: len(lead_shape)] if meta is not None and len(meta.axes) == len(lead_shape) + 3 else None
    fields = list(meta.extra.get("fields") or []) if meta is not None else []
    channels = list(meta.channel_names or []) if meta is not None else []
    axis_names = meta.axis_names if meta is not None else None
    out: list[tuple[tuple, dict]] = []
    seen: set[str] = set()
    for idx in np.ndindex(*lead_shape):
        parts, field, channel = [], None, None
        for k, i in enumerate(idx):
            a = axes[k] if axes else "?"
            if a == "p" and len(fields) == lead_shape[k]:
                field = fields[i]
                parts.append(field)
            elif a == "c" and len(channels) == lead_shape[k]:
                channel = channels[i]
                parts.append(channel)
            elif a == "?" and axis_names:
                parts.append(f"{axis_names[k]}{i}")
            else:
                parts.append(f"{a}{i}")
        if axes is not None and "p" not in axes and len(fields) == 1:
            field = fields[0]  # one BBBC006 file: its field
        if axes is not None and "c" not in axes and len(channels) == 1:
            channel = channels[0]  # the one channel of the input (or the one --channel chose)
        name = " ".join(parts) if parts else (field or lone_name)
        if name in seen:  # two channels of one name, say: the index tells them apart
            name = f"{name} [{','.join(str(i) for i in idx)}]"
        seen.add(name)
        info: dict[str, Any] = {"stack": name}
        if fields:
            info["well"], info["site"] = _field_parts(field)
        if channels:
            info["channel"] = channel
        out.append((idx, info))
    return out


def focus_stacks(curves, meta=None, *, method: str = "defocus", has_signal=None,
                 lone_name: str = "stack", errors: dict | None = None) -> list[dict]:
    """One summary per stack of a ``(..., Z)`` array of focus scores (higher = sharper).

    Parameters
    ----------
    curves : array-like
        Focus scores (:func:`~napari_linblur.inference.defocus_ops.focus_curve`), the last axis Z.
    meta : ZStackMeta, optional
        The input's metadata, for the stacks' names, wells, sites, channels and BBBC006 plane numbers
        (:func:`stack_labels`, :func:`bbbc006_planes`).
    method : str
        The focus method; ``"defocus"`` adds each plane's median σ (px), ``-score``.
    has_signal : array-like of bool, optional
        Per stack (``curves.shape[:-1]``): whether its best plane has signal pixels
        (:func:`plane_has_signal`), None where unknown; None leaves ``has_signal`` out.
    lone_name : str
        The name of a lone stack (:func:`stack_labels`).
    errors : dict, optional
        Stack index (along the leading axes) -> the message of the planes that could not be scored (their scores
        are NaN); when given, every stack gets an ``error`` (None when it scored whole).

    Returns
    -------
    list of dict
        ``stack`` (and ``well``, ``site``, ``channel`` when known), ``index`` (along the leading axes), ``scores``,
        ``median_sigma_px`` (method ``defocus``), ``best_plane`` (Z index of the highest score among the planes
        that scored; None if none did), ``best_bbbc006_plane`` (when the input records BBBC006 plane numbers),
        ``best_at_edge`` (the best plane is the first or last of the stack: focus may lie outside it; always so for
        a single plane), ``has_signal`` and ``error`` (when ``errors`` is given).
    """
    import numpy as np

    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim == 0:
        curves = curves[None]
    lead = curves.shape[:-1]
    n = curves.shape[-1]
    planes = bbbc006_planes(meta, n)
    signal = None if has_signal is None else np.asarray(has_signal, dtype=object).reshape(lead)
    stacks = []
    for idx, info in stack_labels(meta, lead, lone_name):
        c = curves[idx]
        scored = ~np.isnan(c)  # NaN: a plane that could not be scored (errors)
        best = int(np.argmax(np.where(scored, c, -np.inf))) if scored.any() else None
        s: dict[str, Any] = {**info, "index": list(idx), "scores": [float(v) for v in c]}
        if method == "defocus":
            s[SIGMA_COLUMN] = [-float(v) for v in c]
        s["best_plane"] = best
        if planes is not None:
            s["best_bbbc006_plane"] = None if best is None else planes[best]
        s["best_at_edge"] = best in (0, n - 1)
        if signal is not None:
            s["has_signal"] = None if signal[idx] is None else bool(signal[idx])
        if errors is not None:
            s["error"] = errors.get(idx)
        stacks.append(s)
    return stacks


def focus_table(curves, meta=None, *, method: str = "defocus", has_signal=None, lone_name: str = "stack",
                stacks: list[dict] | None = None) -> list[dict]:
    """The CSV rows of a focus report: one per plane of every stack (:func:`focus_stacks`).

    Columns, in order: ``stack``; ``well``, ``site`` (BBBC006 inputs) and ``channel`` (when the input names its
    channels); ``plane`` (Z index) and ``bbbc006_plane`` (when known); the curve as ``median_sigma_px`` for the
    ``defocus`` method (the plane's median σ over signal pixels, lower = sharper) or ``score`` for a classical
    measure (higher = sharper); then the stack's ``best_plane``, ``best_bbbc006_plane`` (when known),
    ``best_at_edge``, ``has_signal`` (when given) and ``error`` (when the stacks have one; empty when the stack
    scored whole), repeated on each of its rows.

    ``stacks`` (from :func:`focus_stacks`) is used instead of ``curves``/``meta`` when given.
    """
    if stacks is None:
        stacks = focus_stacks(curves, meta, method=method, has_signal=has_signal, lone_name=lone_name)
    planes = bbbc006_planes(meta, len(stacks[0]["scores"])) if stacks else None
    rows = []
    for s in stacks:
        head = {k: s[k] for k in ("stack", "well", "site", "channel") if k in s}
        tail = {k: s[k] for k in ("best_plane", "best_bbbc006_plane", "best_at_edge", "has_signal", "error")
                if k in s}
        values = s[SIGMA_COLUMN] if SIGMA_COLUMN in s else s["scores"]
        column = SIGMA_COLUMN if SIGMA_COLUMN in s else "score"
        for z, v in enumerate(values):
            row = {**head, "plane": z}
            if planes is not None:
                row["bbbc006_plane"] = planes[z]
            rows.append({**row, column: v, **tail})
    return rows


def plane_has_signal(plane) -> bool:
    """Whether any pixel of ``plane`` stands out from its background
    (:func:`~napari_linblur.inference.defocus_ops.signal_mask`): False for an empty field, a blank frame or noise."""
    import numpy as np

    from napari_linblur.inference.defocus_ops import signal_mask

    return bool(signal_mask(np.asarray(plane, dtype=np.float32)).any())


def model_info(model: str | None) -> dict:
    """``{"name", "sha256"}`` of the defocus model ``--model`` names (None: the shipped ``defocus-default``): the
    name as given (a file as its absolute path) and the SHA-256 of its weights file, so that a report says which
    weights scored it."""
    from napari_linblur.models import registry

    name = model or "defocus-default"
    path, _, _ = registry._locate(name)
    return {"name": name, "sha256": registry.sha256_file(path)}


def _input_root(source) -> tuple[Path, bool]:
    """The input as the reader opens it (a zarr metadata file means its folder) and whether it is a zarr store
    (then its outermost store, all of which is input)."""
    from napari_linblur.io.omezarr import _zarr_root, is_zarr_store

    src = Path(os.path.abspath(os.fspath(source)))
    if src.is_file() and src.name in ("zarr.json", ".zgroup", ".zattrs", ".zarray"):
        src = src.parent
    src = src.resolve()
    if src.is_dir() and is_zarr_store(src):
        return _zarr_root(src), True
    return src, False


def check_report_paths(source, overwrite: bool = False, **reports) -> None:
    """Refuse report files that would overwrite the input, collide with each other, already exist (unless
    ``overwrite``), are folders or cannot be written (folder missing, a file, or not writable:
    :func:`~napari_linblur.cli._groups.check_out_file`) — before any work.

    A report may be a new file inside an input folder (``--csv plate/focus.csv`` for the BBBC006 folder ``plate``),
    never an input file itself (the input file, a TIFF of an input folder or of its subfolders), a new TIFF in an
    input folder (the next run would read it as an image) or anything inside an input zarr store.

    ``reports`` maps an option name (``json``, ``csv``) to its path or None.
    """
    from ._groups import check_out_file

    src, zarr_store = _input_root(source)
    seen: dict[Path, str] = {}
    for option, path in reports.items():
        if path is None:
            continue
        flag = f"--{option}"
        check_out_file(path, flag, example=f"focus.{option}")
        given = Path(os.path.abspath(os.fspath(path)))
        rp = given.resolve()
        for q in {given, rp}:  # the link itself (replaced by the write) and what it points to
            inside = src in q.parents
            if q == src or (inside and zarr_store) or (inside and q.suffix.lower() in _IMAGE_SUFFIXES and q.exists()):
                raise ValueError(f"{flag} {path} would overwrite the input {source}: choose another file")
            if inside and q.suffix.lower() in _IMAGE_SUFFIXES:
                raise ValueError(f"{flag} {path}: a {q.suffix} file in the input folder {source} would be read as an "
                                 f"image of the input by the next run; name it focus.{option} or write it elsewhere")
        if rp in seen:
            raise ValueError(f"{flag} and {seen[rp]} name the same file {path}")
        if given.exists() and not overwrite:
            raise ValueError(f"{flag} {path} already exists: pass --overwrite to replace it, or choose another file")
        seen[rp] = flag


def _focus_line(s: dict) -> str:
    """One printed line per stack: name, best plane (and BBBC006 plane), flags, curve."""
    values = s.get(SIGMA_COLUMN, s["scores"])
    curve = " ".join(f"{v:.3g}" for v in values)
    source = f" (BBBC006 plane {s['best_bbbc006_plane']})" if "best_bbbc006_plane" in s else ""
    flags = (" [at edge]" if s["best_at_edge"] else "") + (" [no signal]" if s.get("has_signal") is False else "")
    best = "no plane scored" if s["best_plane"] is None else f"best plane {s['best_plane']}"
    error = f"  [error] {s['error']}" if s.get("error") else ""
    return f"{s['stack']}: {best}{source}{flags}  curve: {curve}{error}"


def run_focus(args) -> int:
    import io

    import dask
    import numpy as np

    from napari_linblur.batch import compute_on_client, dask_client, naming_the_input
    from napari_linblur.cli._groups import progress_from_args
    from napari_linblur.inference.defocus_ops import focus_curve
    from napari_linblur.io.atomic import write_json_atomic, write_text_atomic
    from napari_linblur.io.readers import open_zstack_with_metadata

    check_report_paths(args.input, overwrite=args.overwrite, json=args.json, csv=args.csv)
    camera = camera_from_args(args)
    if args.method != "defocus":  # the options of the defocus model, by their command-line names
        given = [flag for flag, on in (("--model", args.model is not None), ("--tile", args.tile is not None),
                                       ("--amp", args.amp != "auto"),
                                       ("--camera-gain/--camera-offset/--read-noise", camera != "auto")) if on]
        if given:
            raise ValueError(f"{', '.join(given)}: only for --method defocus; --method {args.method} scores the raw "
                             "intensities")
    arr, meta = open_zstack_with_metadata(args.input, channel=args.channel)
    names = {"stack": str(args.input)}  # focus_curve's argument, as the file the user gave
    with naming_the_input(names):
        lazy = focus_curve(arr, method=args.method, model=args.model, device=args.device, compute=False,
                           tile=args.tile, camera=camera, **({"amp": args.amp} if args.amp != "auto" else {}))
    model = model_info(args.model) if args.method == "defocus" else None
    progress = progress_from_args(args)
    skip = getattr(args, "on_error", "stop") == "skip"
    with dask_client(args.scheduler, args.workers) as client, naming_the_input(names):
        if skip:
            # --on-error skip: one future per plane, a plane that fails is NaN and its error is kept
            curves, has_signal, errors = _focus_curves_skipping_errors(client, lazy, arr, meta, progress,
                                                                         args.input)
        else:
            # (..., Z): the reader gives every input a Z axis, so there is one even for a single plane
            curves = np.atleast_1d(np.asarray(compute_on_client(client, lazy, progress=progress, desc="focus",
                                                                unit="plane"), dtype=np.float64))
            # the best plane of every stack again, for has_signal: one more plane read per stack
            lead = curves.shape[:-1]
            best = np.argmax(curves, axis=-1)
            tasks = [dask.delayed(plane_has_signal)(arr[idx + (int(best[idx]),)]) for idx in np.ndindex(*lead)]
            has_signal = np.array(client.gather(client.compute(tasks)), dtype=bool).reshape(lead)
            errors = None
    lone = Path(os.fspath(args.input)).name or str(args.input)
    stacks = focus_stacks(curves, meta, method=args.method, has_signal=has_signal, lone_name=lone, errors=errors)
    n = curves.shape[-1]
    planes = bbbc006_planes(meta, n)
    unit = (" (curve: median σ px over signal pixels, lower = sharper)" if args.method == "defocus"
            else " (curve: score, higher = sharper)")
    numbers = "" if planes is None else f" (BBBC006 planes {', '.join(str(z) for z in planes)})"
    print(f"focus method: {args.method}{unit}; planes along Z: {n}{numbers}")
    for s in stacks:
        print(_focus_line(s))
    edge = sum(s["best_at_edge"] for s in stacks)
    empty = sum(s["has_signal"] is False for s in stacks)
    failed_stacks = sum(bool(s.get("error")) for s in stacks)
    if n > 1 and edge:
        print(f"[at edge] {edge} of {len(stacks)} stacks: the best plane is the first or last one, focus may lie "
              "outside the stack")
    if empty:
        print(f"[no signal] {empty} of {len(stacks)} stacks: no pixel of the best plane stands out from the "
              "background (an empty field, or noise or texture everywhere): check it before trusting its best plane")
    skipped = {k: meta.extra[k] for k in ("dropped_fields", "mismatched_fields", "duplicate_fields")
               if meta.extra.get(k)}
    for k, v in skipped.items():  # fields a BBBC006 folder could not read whole: not in the table, so named here
        from napari_linblur.io.bbbc006 import planes_text

        print(f"[{k.replace('_', ' ')}] {len(v)} field(s) left out: " + "; ".join(
            f"{f} (two files for {'; '.join(why)})" if k == "duplicate_fields"
            else f"{f} (lacks {planes_text(why)})" if isinstance(why, list) else f"{f} ({why})"
            for f, why in v.items()))
    if args.json:
        channel = meta.channel_names[0] if meta.channel_names and "c" not in meta.axes else None
        write_json_atomic(args.json, {
            "input": os.path.abspath(os.fspath(args.input)),
            "channel": channel,
            **({"channels": list(meta.channel_names)} if meta.channel_names and "c" in meta.axes else {}),
            "method": args.method,
            "model": model,
            **({"amp": args.amp} if args.method == "defocus" else {}),
            "score": ("minus the median sigma (px) over the plane's signal pixels; median_sigma_px = -score; higher "
                      "score = sharper" if args.method == "defocus" else f"{args.method}; higher = sharper"),
            "axes": meta.axes,
            "n_planes": n,
            **({"bbbc006_planes": planes} if planes is not None else {}),
            **skipped,
            "stacks": {s["stack"]: {k: v for k, v in s.items() if k != "stack"} for s in stacks},
        })
        print(f"wrote {args.json}")
    if args.csv:
        rows = focus_table(None, meta, stacks=stacks)
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(args.csv, buf.getvalue(), newline="")
        print(f"wrote {args.csv}")
    if failed_stacks:
        print(f"[error] {failed_stacks} of {len(stacks)} stacks had planes that could not be scored (NaN scores; "
              "best plane over the planes that scored): finished with errors")
        return 1
    return 0


def _focus_curves_skipping_errors(client, lazy, arr, meta, progress, input_name) -> tuple:
    """``linblur focus --on-error skip``: the focus curves (NaN for every plane that failed to be scored), each
    stack's ``has_signal`` (an object array, None where unknown) and ``{stack index: error message}``.

    A stack's message names each failed plane (its Z index and BBBC006 plane) and its error, which names the file
    when the reader does; a failure to check the best plane's signal is reported the same way.
    """
    import dask
    import numpy as np

    from napari_linblur.batch import compute_blocks_on_client
    from napari_linblur.inference.validate import name_arguments

    values, failed = compute_blocks_on_client(client, lazy, progress=progress, desc="focus", unit="plane")
    curves = np.atleast_1d(values)
    lead, n = curves.shape[:-1], curves.shape[-1]
    planes = bbbc006_planes(meta, n)
    messages: dict[tuple, list[str]] = {}
    for idx in sorted(failed):
        err, z = failed[idx], idx[-1] if idx else 0
        where = f"plane {z}" + ("" if planes is None else f" (BBBC006 plane {planes[z]})")
        text = name_arguments(str(err), {"stack": str(input_name)})  # focus_curve's argument, as the file
        messages.setdefault(tuple(idx[:-1]), []).append(f"{where}: {type(err).__name__}: {text}")
    # the best plane (over the planes that scored) of every stack again, for has_signal
    has_signal = np.full(lead, None, dtype=object)
    todo = []
    for idx in np.ndindex(*lead):
        c = curves[idx]
        if not np.isnan(c).all():
            todo.append((idx, int(np.nanargmax(c))))
    futures = client.compute([dask.delayed(plane_has_signal)(arr[idx + (z,)]) for idx, z in todo])
    for (idx, z), future in zip(todo, futures, strict=True):
        try:
            has_signal[idx] = bool(future.result())
        except Exception as err:  # the plane scored, yet its second read failed: say so, keep has_signal unknown
            messages.setdefault(idx, []).append(f"plane {z} (signal check): {type(err).__name__}: {err}")
    errors = {idx: "; ".join(m) for idx, m in messages.items()}
    return curves, has_signal, errors
