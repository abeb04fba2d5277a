"""``linblur deblur IN OUT.zarr`` — single-image deblurring of every plane, written as OME-Zarr.

The input is opened lazily (OME-Zarr/zarr, TIFF stacks, folders of TIFFs, BBBC006 folders or files), one lazy dask
task per plane runs :func:`napari_linblur.deblur` on a ``dask.distributed`` cluster (``--workers N`` local, or
``--scheduler ADDRESS``), and the result is written atomically as OME-Zarr with the input's axes.

Examples::

    linblur deblur stack.tif deblurred.zarr
    linblur deblur BBBC006_folder/ deblurred.zarr --channel w1 --method guided --workers 2
"""

from __future__ import annotations

from ._groups import DefaultsHelpFormatter, add_amp_option, add_overwrite_option, add_tta_option


def register(subparsers) -> None:
    from napari_linblur.cli._groups import add_batch_options, add_progress_option
    from napari_linblur.models.registry import model_arg

    p = subparsers.add_parser(
        "deblur",
        help="single-image deblurring of every plane -> OME-Zarr",
        description="Deblur every plane on its own (blind): the DRBNet-style network, re-blur + latent "
        "extrapolation, or defocus-guided deblurring that leaves in-focus regions untouched.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_batch_options(p)
    add_progress_option(p)
    p.add_argument("output", help="output .zarr folder (OME-Zarr)")
    p.add_argument("--method", default="auto", choices=["auto", "network", "reblur-extrapolate", "guided"],
                   help="deblurring method (auto: the best as measured, see docs/results/deblur.md)")
    p.add_argument("--model", default=None, type=model_arg,
                   help="network (or autoencoder for reblur-extrapolate); default shipped")
    p.add_argument("--defocus-model", default=None, type=model_arg,
                   help="defocus-map model for reblur-extrapolate / guided")
    p.add_argument("--sigma-r", type=float, default=2.0, help="re-blur σ (px) for reblur-extrapolate")
    add_amp_option(p)
    add_tta_option(p, "network self-ensemble: average over this many flips/rotations (N times slower)")
    add_overwrite_option(p)
    p.set_defaults(func=run_deblur)


def run_deblur(args) -> int:
    from napari_linblur.batch import run_batch
    from napari_linblur.cli._groups import progress_from_args
    from napari_linblur.inference.deblur_ops import deblur
    from napari_linblur.inference.validate import check_number

    # before any plane runs (the other options, --defocus-model included, are checked by deblur itself, which
    # run_batch calls on the lazy input before anything is written)
    check_number(args.sigma_r, "--sigma-r", unit=" (pixels)")
    from napari_linblur.inference.deblur_ops import AUTO_METHOD
    from napari_linblur.models.registry import DEFAULTS

    # what ran, by name: the method 'auto' stands for, its network and (for the map) the defocus model
    method = AUTO_METHOD if args.method == "auto" else args.method
    uses_ae = method == "reblur-extrapolate"  # the CLI's guided runs the deblurring network (its default guide)
    record = {"operation": "deblur", "method": method, "model": args.model or DEFAULTS["ae" if uses_ae else "deblur"],
              "tta": args.tta, "amp": args.amp}
    if method in ("reblur-extrapolate", "guided"):
        record["defocus_model"] = args.defocus_model or DEFAULTS["defocus"]
    if uses_ae:
        record["sigma_r"] = args.sigma_r
    out = run_batch(
        lambda a: deblur(a, method=args.method, model=args.model, device=args.device,
                         defocus_model=args.defocus_model, sigma_r=args.sigma_r, amp=args.amp, tta=args.tta),
        args.input, args.output, channel=args.channel, scheduler=args.scheduler, workers=args.workers,
        attrs=record,
        overwrite=args.overwrite, progress=progress_from_args(args), desc="deblur",
    )
    print(f"wrote {out}")
    return 0
