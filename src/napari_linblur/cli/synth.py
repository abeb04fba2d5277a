"""``linblur synth``: write a synthetic through-focus dataset (OME-Zarr) from a recipe and a seed.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers(dest="command")
>>> register(sub)
>>> a = p.parse_args(["synth", "out.zarr", "--fields", "2", "--planes", "even"])
>>> a.recipe, a.fields, a.seed, a.planes
('bbbc006-like', 2, 0, 'even')
"""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    import time

    from napari_linblur.batch import show_progress
    from napari_linblur.cli._groups import progress_from_args
    from napari_linblur.io.omezarr import check_parent_folders
    from napari_linblur.synth.dataset import write_synthetic_dataset
    from napari_linblur.synth.recipes import get_recipe

    check_parent_folders(args.out, "OUT")  # a file in the way of OUT's folder: named, not [Errno 17]
    changes = {}
    if args.shape is not None:
        changes["shape"] = tuple(args.shape)
    recipe = get_recipe(args.recipe, **changes)
    if args.psf_focus is not None:
        recipe = recipe.replace(optics=recipe.optics.replace(focus=args.psf_focus))
    keep_even = None if args.planes is None else args.planes == "even"
    t0 = time.perf_counter()
    path = write_synthetic_dataset(
        args.out,
        recipe,
        fields=args.fields,
        seed=args.seed,
        keep_even=keep_even,
        overwrite=args.overwrite,
        # no bar with -q, and none in a log file or a pipe (as the other commands)
        progress=show_progress(False if args.quiet else progress_from_args(args)),
    )
    if not args.quiet:
        print(
            f"wrote {args.fields} field(s) of recipe {recipe.name!r} (seed {args.seed}) to {path} "
            f"in {time.perf_counter() - t0:.1f} s"
        )
    return 0


def register(subparsers) -> None:
    """Add the ``synth`` sub-command to ``linblur``'s sub-parsers."""
    from napari_linblur.synth.recipes import list_recipes

    p = subparsers.add_parser(
        "synth",
        help="write a synthetic through-focus dataset (OME-Zarr)",
        description="Synthesize through-focus z-stacks of fluorescent cell phantoms (PSF per plane, "
        "Poisson-Gaussian camera) and write them as OME-Zarr, one NGFF image per field, with the "
        "noise-free in-focus truth. Same recipe + seed gives byte-identical files.",
    )
    p.add_argument("out", help="output folder, e.g. synth.zarr")
    p.add_argument(
        "--recipe", default="bbbc006-like", choices=list_recipes(), help="dataset recipe"
    )
    p.add_argument("--fields", type=int, default=1, help="number of fields (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument(
        "--planes",
        choices=("all", "even"),
        default=None,
        help="all planes of the recipe, or only even plane indices (the paper's 9 of BBBC006); default: the "
        "recipe's own setting (all planes for both shipped recipes)",
    )
    p.add_argument(
        "--shape", type=int, nargs=2, metavar=("Y", "X"), default=None, help="frame size override"
    )
    p.add_argument(
        "--psf-focus",
        choices=("sharpest", "legacy"),
        default=None,
        help="where a Gibson-Lanni recipe puts 0 µm: the sharpest plane (default), or 'legacy', the convention "
        "before napari-linblur 0.2 that the shipped ae-default's training data used (to reproduce it exactly)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier napari-linblur output (never a file, a plain folder "
                        "or another tool's zarr store)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar on stderr (there is none anyway when stderr is not a terminal)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=_run)
