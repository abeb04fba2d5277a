"""``linblur synthesize IN OUT.zarr`` — synthesize defocus between two planes of every stack, as OME-Zarr.

For each stack ``(..., Z, Y, X)`` of the input, planes ``--sharp`` (a) and ``--blurry`` (c) are combined in the
latent space of the autoencoder, ``D(α E(a) + (1 − α) E(c))``, for every ``--alpha``; the output holds one plane per
α along Z: ``(..., len(alphas), Y, X)`` float32 in the input's intensity units, with the input's other axes,
calibration and channel names. The input is read lazily (:func:`~napari_linblur.io.readers.open_zstack`), one
task per output plane runs on a ``dask.distributed`` cluster (``--workers N`` local, or ``--scheduler ADDRESS``;
:func:`~napari_linblur.batch.dask_client`), and the result is written atomically
(:func:`~napari_linblur.io.omezarr.write_ome_zarr`).

Examples::

    linblur synthesize BBBC006_folder/ synth.zarr --channel w1 --sharp 16 --blurry 8 --alpha 0.75 0.5 0.25
    linblur synthesize stack.tif synth.zarr --sharp 4 --blurry 0 --positions 2 1   # alpha from positions
    linblur synthesize plate.zarr synth.zarr --sharp 16 --blurry 8 --alpha 0.5 --workers 2
"""

from __future__ import annotations

import argparse
import re

from ._groups import DefaultsHelpFormatter, add_overwrite_option


def run_synthesize(args: argparse.Namespace) -> int:
    import dask.array as da

    from napari_linblur.batch import naming_the_input, open_batch_input, write_batch_output
    from napari_linblur.cli._groups import progress_from_args
    from napari_linblur.inference.latent_ops import alpha_from_positions, synthesize_blur

    # OUT's checks (a file in the way, the input itself, an existing output) before any work, as run_batch's
    stack, meta = open_batch_input(args.input, args.output, channel=args.channel, overwrite=args.overwrite)
    nz = stack.shape[-3]
    for name in ("sharp", "blurry"):
        v = getattr(args, name)
        if not -nz <= v < nz:
            raise ValueError(f"--{name} {v}: the input has {nz} planes along Z (0..{nz - 1})")
        setattr(args, name, v % nz)  # -1 = the last plane, also for --positions and the recorded metadata
    if args.sharp == args.blurry:
        raise ValueError(f"--sharp and --blurry are both plane {args.sharp}: synthesis needs two different planes")
    if args.alpha and args.positions:
        raise ValueError("give either --alpha or --positions, not both")
    if args.positions:
        lo, hi = sorted((args.sharp, args.blurry))
        outside = [p for p in args.positions if not lo < p < hi]
        if outside:
            raise ValueError(f"--positions {' '.join(f'{p:g}' for p in outside)}: a synthesized plane must lie "
                             f"strictly between --sharp {args.sharp} and --blurry {args.blurry} (plane numbers)")
        alphas = [alpha_from_positions(args.sharp, p, args.blurry) for p in args.positions]
    else:
        alphas = list(args.alpha or [0.5])
    a = stack[..., args.sharp, :, :]
    c = stack[..., args.blurry, :, :]
    # errors about the planes name the file and plane (not synthesize_blur's img_a / img_c)
    names = {"img_a": f"{args.input}, plane {args.sharp} (--sharp)",
             "img_c": f"{args.input}, plane {args.blurry} (--blurry)"}
    with naming_the_input(names):
        planes = [synthesize_blur(a, c, al, model=args.model, device=args.device) for al in alphas]
    # where each plane lies between the two, in the input's Z indices (alpha_from_positions inverted)
    positions = ([float(v) for v in args.positions] if args.positions
                 else [float(args.blurry - al * (args.blurry - args.sharp)) for al in alphas])
    # one plane per α along Z: the input's other axes and calibration; Z's values recorded as the alphas and
    # positions, and Z calibrated to the positions when they are evenly spaced and increasing
    write_batch_output(
        da.stack(planes, axis=-3), meta, args.input, args.output, scheduler=args.scheduler, workers=args.workers,
        attrs={"operation": "synthesize_blur", "alphas": alphas, "positions": positions, "sharp_plane": args.sharp,
               "blurry_plane": args.blurry, "model": args.model or "ae-default"},
        overwrite=args.overwrite, progress=progress_from_args(args), desc="synthesize", names=names, new_z=True,
        z_positions=positions)
    print(f"wrote {args.output}: {len(alphas)} synthesized plane(s) per stack, alpha = {alphas}")
    return 0


def register(subparsers) -> None:
    """Add ``synthesize`` to ``linblur``."""
    from napari_linblur.cli._groups import add_batch_options, add_progress_option
    from napari_linblur.models.registry import model_arg

    p = subparsers.add_parser(
        "synthesize",
        help="synthesize defocus between two planes by latent interpolation -> OME-Zarr",
        # the module docstring's paragraph, without its reST roles (``:func:`~a.b.name``` -> ``name``)
        description=re.sub(r":\w+:`~?(?:[\w.]+\.)?(\w+)`", r"\1", __doc__.split("\n\n")[1]).replace("``", ""),
        formatter_class=DefaultsHelpFormatter,
    )
    add_batch_options(p)  # input, --channel, --scheduler | --workers, --device: as every batch command
    add_progress_option(p)
    p.add_argument("output", help="output .zarr folder (OME-Zarr)")
    p.add_argument("--sharp", type=int, required=True, help="index of the sharper plane a along Z")
    p.add_argument("--blurry", type=int, required=True, help="index of the blurrier plane c along Z")
    p.add_argument("--alpha", type=float, nargs="+", default=None,
                   help="interpolation weights in [0, 1] (1 = sharp plane, 0 = blurry plane); default 0.5 "
                   "unless --positions is given")
    p.add_argument("--positions", type=float, nargs="+", default=None,
                   help="z positions (plane index units) of the planes to synthesize, between --sharp and --blurry")
    p.add_argument("--model", default=None, type=model_arg,
                   help="autoencoder name or .safetensors (default ae-default)")
    add_overwrite_option(p)
    p.set_defaults(func=run_synthesize)
