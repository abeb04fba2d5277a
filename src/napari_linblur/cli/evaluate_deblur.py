"""``linblur evaluate deblur`` — the network vs Wiener / Richardson–Lucy with the true PSF, in one run."""

from __future__ import annotations

import argparse


class _Once(argparse.Action):
    """An option that may be given once: a second ``--model`` silently replaced the first (the other evaluations
    compare every ``--model``; this one compares with ``--ablation``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, "_seen_" + self.dest, False):
            parser.error(f"{option_string} given twice: evaluate deblur scores one --model; compare others with "
                         "--ablation NAME=PATH")
        setattr(namespace, "_seen_" + self.dest, True)
        setattr(namespace, self.dest, values)


def register(subparsers) -> None:
    from ._groups import add_reports_overwrite_option, add_tta_option, nonempty

    p = subparsers.add_parser(
        "deblur",
        help="evaluate single-image deblurring against Wiener / Richardson-Lucy given the true PSF",
        description=(
            "Held-out through-focus planes (d <= 8 um), spatially varying blur and captured-style pairs; PSNR and "
            "SSIM per method (both with data_range = max(reference), per image, then averaged), the +1 dB PSNR "
            "bars, and the CPU speed ratio to 10 Richardson-Lucy iterations on 1024x1024."
        ),
    )
    p.add_argument("--model", default="deblur-default", action=_Once,
                   help="the network (shipped name or .safetensors; once: compare more with --ablation)")
    p.add_argument("--ablation", nargs="*", default=[], metavar="NAME=PATH",
                   help="more networks to compare (e.g. stage1=RUN1/model.safetensors)")
    p.add_argument("--n", type=int, default=8, help="test images per condition (default 8)")
    p.add_argument("--side", type=int, default=128, help="test image side (default 128)")
    p.add_argument("--seed", type=int, default=2_000_000, help="test-set seed (default 2000000, never trained on)")
    p.add_argument("--no-reblur", action="store_true", help="skip reblur-extrapolate / guided")
    p.add_argument("--no-speed", action="store_true", help="skip the 1024x1024 timing")
    p.add_argument("--speed-side", type=int, default=1024, help="image side of the speed comparison (default 1024)")
    p.add_argument("--depths", type=float, nargs="+", default=[1.0, 2.0, 4.0, 6.0, 8.0],
                   help="defocus distances (µm) of the through-focus test planes")
    add_tta_option(p, "also score the network with its self-ensemble over this many flips/rotations")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="eval_deblur", type=nonempty("--out"),
                   help="folder for deblur_eval.json and deblur_eval.md")
    add_reports_overwrite_option(p)
    p.set_defaults(func=_run)


def check_options(args) -> None:
    """Refuse bad options before any model is loaded, each error naming its option and the accepted form."""
    import math

    if args.n < 1:
        raise ValueError(f"--n must be an int >= 1 (test images per condition), got {args.n}")
    if args.side < 32 or args.side % 8:
        raise ValueError(f"--side must be a multiple of 8 and >= 32 (e.g. 128; the networks' size multiple), "
                         f"got {args.side}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an int >= 0 (the test set's seed, e.g. 2000000), got {args.seed}")
    if args.speed_side < 16:
        raise ValueError(f"--speed-side must be an int >= 16 (e.g. 1024), got {args.speed_side}")
    bad = [d for d in args.depths if not math.isfinite(d)]
    if bad:
        raise ValueError(f"--depths must be finite defocus distances in µm (e.g. --depths 1 2 4 6 8), got {bad[0]}")


def _run(args) -> int:
    import torch

    from napari_linblur.evaluation.deblur import evaluate_deblur, to_markdown

    check_options(args)
    from ._groups import check_out_folder, check_reports_free

    check_out_folder(args.out)
    check_reports_free(args.out, "deblur_eval", args.overwrite)
    torch.set_num_threads(args.threads)
    models = {"network": args.model}
    for item in args.ablation:
        if "=" not in item:
            raise ValueError(f"--ablation expects NAME=PATH, got {item!r}")
        name, path = item.split("=", 1)
        models[name] = path
    res = evaluate_deblur(models, main="network", n=args.n, side=args.side, seed=args.seed,
                          reblur=not args.no_reblur, speed=not args.no_speed, speed_side=args.speed_side,
                          depths=tuple(args.depths), tta=args.tta, progress=print)
    from ._groups import command_line

    res["command"] = command_line(args)
    from napari_linblur.evaluation.report import write_reports

    md = to_markdown(res)
    js, md_path = write_reports(args.out, "deblur_eval", res, md)
    print(md)
    print(f"wrote {js} and {md_path}")
    return 0
