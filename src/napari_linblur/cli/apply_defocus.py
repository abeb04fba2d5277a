"""``linblur defocus-map IN OUT.zarr`` and ``linblur focus IN`` — batch defocus maps and focus QC.

Both open the input lazily (OME-Zarr/zarr, TIFF, folders of TIFFs, BBBC006 folders or files), build one lazy
dask graph (one task per plane) and run it on a ``dask.distributed`` cluster: ``--workers N`` starts a
``LocalCluster(n_workers=N, threads_per_worker=1)``, ``--scheduler ADDRESS`` connects to a running one.

Examples::

    linblur defocus-map plate.zarr sigma.zarr --workers 2
    linblur defocus-map stack.tif sigma_patches.zarr --mode patch --patch-size 64
    linblur defocus-map plate.zarr defocus_um.zarr --um --na 0.45 --wavelength 0.52
    linblur focus BBBC006_folder/ --channel w1 --json focus.json --csv focus.csv
"""

from __future__ import annotations

import csv
from pathlib import Path

from ._groups import DefaultsHelpFormatter


def register(subparsers) -> None:
    from napari_linblur.batch import add_batch_options, model_arg

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
    p.add_argument("--patch-size", type=int, default=64, help="tile side for --mode patch")
    p.add_argument("--tile", type=int, default=None, help="inference tile side (default: automatic, <= 576 px)")
    p.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8],
                   help="self-ensemble: average the maps of this many flips/rotations (N times slower)")
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
    u.add_argument("--ni", type=float, default=1.0, help="immersion index: 1.0 air, 1.33 water, 1.515 oil (with --um)")
    u.add_argument("--psf-model", default="born_wolf", choices=["born_wolf", "gibson_lanni", "gaussian", "disc"],
                   help="PSF model of the σ <-> defocus calibration (with --um)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier zarr output (never a file or a plain folder)")
    p.set_defaults(func=run_defocus_map)

    q = subparsers.add_parser(
        "focus",
        help="per-plane focus curve and best-focus plane of every stack",
        description="Score every plane (higher = sharper) and report the best-focus plane of every stack; "
        "prints a table, optionally writes JSON and CSV.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_batch_options(q)
    q.add_argument("--method", default="defocus",
                   choices=["defocus", "variance_of_laplacian", "brenner", "tenengrad", "normalized_variance",
                            "vollath"], help="focus score: -median σ of the defocus map, or a classical measure")
    q.add_argument("--model", default=None, type=model_arg, help="defocus model (method 'defocus')")
    q.add_argument("--tile", type=int, default=None, help="inference tile side (default: automatic, <= 576 px)")
    add_camera_options(q)
    q.add_argument("--json", default=None, help="write the curves and best planes as JSON")
    q.add_argument("--csv", default=None, help="write one row per plane as CSV")
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
    optics = {"--na": args.na, "--wavelength": args.wavelength, "--pixel-um": args.pixel_um}
    if not args.um:
        given = [k for k, v in optics.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only convert the map to µm: add --um (or leave them out)")
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

    return OpticalSetup(na=args.na, wavelength_um=args.wavelength, pixel_um=pixel, ni=args.ni, model=args.psf_model)


def run_defocus_map(args) -> int:
    from napari_linblur.batch import run_batch
    from napari_linblur.inference.defocus_ops import estimate_defocus, sigma_to_defocus_um

    camera = camera_from_args(args)
    setup = optics_from_args(args)

    def op(a):
        sigma = estimate_defocus(a, model=args.model, device=args.device, tile=args.tile, mode=args.mode,
                                 patch_size=args.patch_size, tta=args.tta, camera=camera)
        return sigma if setup is None else sigma_to_defocus_um(sigma, setup=setup)

    unit = ("pixel (sigma of the equivalent Gaussian PSF)" if setup is None
            else "micrometer (|defocus|, from sigma with the optics calibration)")
    out = run_batch(
        op, args.input, args.output, channel=args.channel, scheduler=args.scheduler, workers=args.workers,
        attrs={"operation": "defocus-map", "unit": unit, "model": args.model or "defocus-default",
               "mode": args.mode, "patch_size": args.patch_size, "tta": args.tta, "camera": camera,
               **({"optics": setup.to_dict()} if setup is not None else {})},
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


def bbbc006_planes(meta, n_planes: int) -> list[int] | None:
    """The BBBC006 plane number of each Z index (``meta.extra["planes"]``: a BBBC006 folder holding planes 14-16
    has Z indices 0-2; a batch output of one records them), or None when the input has none for its ``n_planes``."""
    planes = meta.extra.get("planes") if meta is not None else None
    return [int(z) for z in planes] if planes and len(planes) == n_planes else None


def focus_table(curves, meta=None) -> list[dict]:
    """Rows ``{stack, plane, score, best}`` for a ``(..., Z)`` array of focus scores: ``plane`` and ``best`` are Z
    indices; when the input records its BBBC006 plane numbers (:func:`bbbc006_planes`) each row also holds
    ``bbbc006_plane`` and ``best_bbbc006_plane``, those numbers."""
    import numpy as np

    curves = np.asarray(curves, dtype=np.float64)
    if curves.ndim == 0:
        curves = curves[None]
    lead = curves.shape[:-1]
    planes = bbbc006_planes(meta, curves.shape[-1])
    fields = (meta.extra.get("fields") if meta is not None else None) or None
    rows = []
    for idx in np.ndindex(*lead):
        c = curves[idx]
        best = int(np.argmax(c))
        name = ",".join(str(i) for i in idx) if idx else "0"
        if fields and len(idx) >= 1 and meta is not None and "p" in meta.axes:
            p_axis = meta.axes.index("p")
            if p_axis < len(idx):
                name = f"{fields[idx[p_axis]]}" + (f"[{','.join(str(i) for k, i in enumerate(idx) if k != p_axis)}]"
                                                   if len(idx) > 1 else "")
        for z, v in enumerate(c):
            if planes is None:
                rows.append({"stack": name, "plane": z, "score": float(v), "best": best})
            else:
                rows.append({"stack": name, "plane": z, "bbbc006_plane": planes[z], "score": float(v), "best": best,
                             "best_bbbc006_plane": planes[best]})
    return rows


def check_report_paths(source, **reports) -> None:
    """Refuse report files that would overwrite the input, collide with each other, are folders or cannot be
    written (folder missing, a file, or not writable: :func:`~napari_linblur.cli._groups.check_out_file`) — before
    any work.

    ``reports`` maps an option name (``json``, ``csv``) to its path or None.
    """
    from ._groups import check_out_file

    src = Path(source).resolve()
    seen: dict[Path, str] = {}
    for option, path in reports.items():
        if path is None:
            continue
        flag = f"--{option}"
        check_out_file(path, flag, example=f"focus.{option}")
        rp = Path(path).resolve()
        if rp == src or src in rp.parents:
            raise ValueError(f"{flag} {path} would overwrite the input {source}: choose another file")
        if rp in seen:
            raise ValueError(f"{flag} and {seen[rp]} name the same file {path}")
        seen[rp] = flag


def run_focus(args) -> int:
    import io

    import numpy as np

    from napari_linblur.batch import compute_with_client
    from napari_linblur.inference.defocus_ops import focus_curve
    from napari_linblur.io.atomic import write_json_atomic, write_text_atomic
    from napari_linblur.io.readers import open_zstack_with_metadata

    check_report_paths(args.input, json=args.json, csv=args.csv)
    camera = camera_from_args(args)
    arr, meta = open_zstack_with_metadata(args.input, channel=args.channel)
    lazy = focus_curve(arr, method=args.method, model=args.model, device=args.device, compute=False,
                       tile=args.tile, camera=camera)
    curves = np.asarray(compute_with_client(lazy, scheduler=args.scheduler, workers=args.workers))
    rows = focus_table(curves, meta)
    planes = bbbc006_planes(meta, curves.shape[-1] if curves.ndim else 1)
    stacks: dict[str, dict] = {}
    for r in rows:
        s = stacks.setdefault(r["stack"], {"scores": [], "best_plane": r["best"]})
        if planes is not None:
            s["best_bbbc006_plane"] = r["best_bbbc006_plane"]
        s["scores"].append(r["score"])
    unit = " (score = -median σ px over signal)" if args.method == "defocus" else ""
    numbers = "" if planes is None else f" (BBBC006 planes {', '.join(str(z) for z in planes)})"
    print(f"focus method: {args.method}{unit}; planes along Z: {arr.shape[-3] if arr.ndim >= 3 else 1}{numbers}")
    for name, s in stacks.items():
        curve = " ".join(f"{v:.3g}" for v in s["scores"])
        source = "" if planes is None else f" (BBBC006 plane {s['best_bbbc006_plane']})"
        print(f"{name}: best plane {s['best_plane']}{source}  curve: {curve}")
    if args.json:
        write_json_atomic(args.json, {"input": str(args.input), "method": args.method, "axes": meta.axes,
                                      **({"bbbc006_planes": planes} if planes is not None else {}),
                                      "stacks": stacks})
        print(f"wrote {args.json}")
    if args.csv:
        buf = io.StringIO(newline="")
        w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["stack", "plane", "score", "best"])
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(args.csv, buf.getvalue(), newline="")
        print(f"wrote {args.csv}")
    return 0
