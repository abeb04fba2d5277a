"""``linblur evaluate defocus`` — paper-001 tables for the defocus network vs classical estimators.

Example::

    linblur evaluate defocus --out results/defocus            # the shipped defocus-default model
    linblur evaluate defocus --model shuffle=runs/s/model.safetensors --model phantom=runs/p/model.safetensors
"""

from __future__ import annotations

from ._groups import DefaultsHelpFormatter, add_device_option, add_reports_overwrite_option, add_tta_option, nonempty


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "defocus",
        help="defocus maps: HDME-Net vs calibrated focus measure and Zhuo & Sim 2011",
        description="Evaluate defocus-map estimators on held-out synthetic spatially varying images "
        "(microscopy-like phantoms and pixel-shuffled images), a vectorial through-focus stack and the real "
        "BBBC006 plane; prints Markdown tables and writes JSON + Markdown.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--model", action="append", default=None, metavar="[LABEL=]MODEL",
                   help="model name or .safetensors path (repeatable); default the shipped defocus-default")
    p.add_argument("--out", default="results/defocus", type=nonempty("--out"),
                   help="folder for defocus_eval.json / .md")
    add_reports_overwrite_option(p)
    p.add_argument("--n-images", type=int, default=8, help="held-out images per content set")
    p.add_argument("--size", type=int, default=192, help="side of the held-out images")
    p.add_argument("--seed", type=int, default=20240, help="seed of the held-out data (never used in training)")
    p.add_argument("--photons", type=float, default=800.0,
                   help="photo-electrons at the peak of the held-out images' source scale (phantoms: their brightest "
                   "pixel; pixel-shuffled crops: the whole source image's, so a dim crop gets less). Camera: gain 1, "
                   "read noise 2 e-")
    p.add_argument("--shuffle-sources", nargs="+", default=["coins", "cell"], metavar="PICTURE",
                   help="scikit-image pictures whose crops make the pixel-shuffled test images, in turn (held out of "
                   "training; 'cat stereo_motorcycle clock': pictures no model choice has seen)")
    p.add_argument("--no-baselines", action="store_true", help="skip the classical estimators")
    p.add_argument("--no-through-focus", action="store_true", help="skip the vectorial through-focus stack")
    p.add_argument("--bbbc006", default=None, metavar="TIFF",
                   help="the real BBBC006v1 plane-0 TIFF to check (default: the sample image, found in "
                   "$NAPARI_LINBLUR_DATA or ../shared/data beside a source checkout; skipped with a note when absent)")
    p.add_argument("--no-bbbc006", action="store_true", help="skip the real BBBC006 plane")
    add_tta_option(p, "also score each model with its self-ensemble over this many flips/rotations")
    add_device_option(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (1 on a busy machine)")
    p.set_defaults(func=run)


def parse_models(specs: list[str] | None) -> dict:
    """``["a=path", "defocus-default"]`` -> ``{"a": "path", "HDME-Net (defocus-default)": "defocus-default"}``."""
    if not specs:
        return {"HDME-Net (defocus-default)": None}
    out = {}
    for s in specs:
        label, _, path = s.partition("=") if "=" in s else (None, "", s)
        out[label or f"HDME-Net ({path})"] = path
    return out


def check_options(args) -> None:
    """Refuse bad options before any model is loaded, each error naming its option and the accepted form."""
    if args.n_images < 1:
        raise ValueError(f"--n-images must be an int >= 1 (held-out images per content set), got {args.n_images}")
    if args.size < 32:
        raise ValueError(f"--size must be an int >= 32 (the held-out images' side, e.g. 192), got {args.size}")
    if not args.photons > 0:
        raise ValueError(f"--photons must be positive (peak photo-electrons), got {args.photons}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an int >= 0 (the held-out data's seed, e.g. 20240), got {args.seed}")
    from napari_linblur.evaluation.defocus import check_shuffle_sources

    check_shuffle_sources(args.shuffle_sources, "--shuffle-sources")
    if args.bbbc006 is not None:
        if args.no_bbbc006:
            raise ValueError("--bbbc006 names the plane that --no-bbbc006 skips: give one of them")
        from napari_linblur.evaluation.defocus import bbbc006_file

        try:
            bbbc006_file(args.bbbc006)
        except FileNotFoundError as err:
            raise ValueError(f"--bbbc006: {err}") from None


def run(args) -> int:
    from napari_linblur.evaluation.defocus import (
        EvalConfig,
        evaluate_defocus,
        markdown_report,
        write_report,
    )

    check_options(args)
    from ._groups import check_out_folder, check_reports_free

    check_out_folder(args.out)
    check_reports_free(args.out, "defocus_eval", args.overwrite)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = EvalConfig(n_images=args.n_images, size=args.size, seed=args.seed, photons=args.photons,
                     shuffle_sources=tuple(args.shuffle_sources), bbbc006=args.bbbc006)
    res = evaluate_defocus(parse_models(args.model), cfg=cfg, baselines=not args.no_baselines, device=args.device,
                           through_focus=not args.no_through_focus, bbbc006=not args.no_bbbc006, tta=args.tta)
    from ._groups import command_line

    res["command"] = command_line(args)
    print(markdown_report(res))
    js, md = write_report(res, args.out)
    print(f"wrote {js} and {md}")
    return 0
