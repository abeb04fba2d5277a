"""``linblur evaluate ae`` — paper-000 Table 1 (LDS, APD) and Table 2 (PSNRs) against baselines.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> register(sub)
>>> a = p.parse_args(["ae", "--data", "d.zarr", "--model", "a.safetensors", "--model", "ae-default", "--out", "ev"])
>>> a.model, a.split, a.split_seed
(['a.safetensors', 'ae-default'], 'test', None)
"""

from __future__ import annotations

import argparse
import json
import sys


def _run(args: argparse.Namespace) -> int:
    import torch

    from napari_linblur.evaluation.ae import evaluate_ae, to_markdown

    from ._groups import bars_on, check_out_folder, check_out_not_in_input, check_reports_free

    if args.split_seed is not None and args.split_seed < 0:
        raise ValueError(f"--split-seed must be an int >= 0 (the seed of the field split, as in training, e.g. 0), "
                         f"or left out to use the model card's; got {args.split_seed}")
    check_out_not_in_input(args.out, args.data, example="eval_ae")
    check_out_folder(args.out)
    check_reports_free(args.out, "evaluate_ae", args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    channel = args.channel
    if channel is not None and channel.isdigit():
        channel = int(channel)
    models = args.model or ["ae-default"]
    res = evaluate_ae(
        args.data,
        models,
        channel=channel,
        split=args.split,
        split_seed=args.split_seed,
        max_fields=args.max_fields,
        crop=args.crop,
        device=args.device,
        auto=not args.no_auto_alpha,
        progress=bars_on(args),
        tta=args.tta,
        warn=lambda note: print(f"linblur evaluate ae: warning: {note}", file=sys.stderr),
    )
    from ._groups import command_line

    args.split_seed = res["data"]["split_seed"]  # the seed used (the cards' when not given): recorded explicitly
    res["command"] = command_line(args)
    md = to_markdown(res)
    print(md)
    from napari_linblur.evaluation.report import write_reports

    js, md_path = write_reports(args.out, "evaluate_ae", json.loads(json.dumps(res, default=float)), md)
    print(f"wrote {js} and {md_path}")
    return 0


def register(subparsers) -> None:
    """Add ``ae`` to the ``linblur evaluate`` group."""
    from ._groups import (
        add_device_option,
        add_progress_option,
        add_reports_overwrite_option,
        add_tta_option,
        nonempty,
    )

    p = subparsers.add_parser(
        "ae",
        help="latent autoencoder: LDS/APD and synthesis/deblurring PSNR vs pixel blending and Wiener",
        description="Evaluate linear latent autoencoders on held-out fields: Table 1 (LDS, APD) and Table 2 "
        "(PSNR interp/extrap vs real and vs reconstruction) of paper 000, plus pixel-space blending, pixel "
        "extrapolation and Wiener deconvolution with the true PSF (best balance) on the same planes.",
    )
    p.add_argument("--data", required=True, help="linblur synth OME-Zarr dataset or BBBC006 folder")
    p.add_argument("--model", action="append", default=None,
                   help="model name or .safetensors path (repeat to compare; default ae-default)")
    p.add_argument("--out", required=True, type=nonempty("--out"),
                   help="folder for evaluate_ae.json and evaluate_ae.md")
    p.add_argument("--channel", default="w1", help="channel name or index (default w1)")
    p.add_argument("--split", default="test", choices=["test", "val", "train", "all"],
                   help="fields of the 7:1:2 split to use (all: a separate test dataset)")
    p.add_argument("--split-seed", type=int, default=None,
                   help="seed of the field split (default: the one the models' cards record, else 0); a seed other "
                   "than the cards' is refused, as it would score training fields")
    p.add_argument("--max-fields", type=int, default=None, help="evaluate at most N fields")
    p.add_argument("--crop", type=int, default=None, help="central crop side (default: whole planes)")
    add_device_option(p)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--no-auto-alpha", action="store_true", help="skip scoring the automatic alpha")
    add_tta_option(p, "also score pair deblurring with this self-ensemble (flips/rotations averaged; default 1)")
    add_progress_option(p)
    add_reports_overwrite_option(p)
    p.set_defaults(func=_run)
