"""``linblur train defocus`` — train HDME-Net (per-pixel defocus σ) on on-the-fly synthetic data.

Examples::

    linblur train defocus --content mixed --config default --steps 2000 --out runs/defocus --threads 1
    linblur train defocus --init defocus-default --content-from my_stacks.zarr --content-channel 0 ...  # your data
"""

from __future__ import annotations

import argparse

from ._groups import (
    DefaultsHelpFormatter,
    add_train_options,
    channel_arg,
    check_out_not_in_input,
    saved_model,
    short_run_warmup,
    train_config_from_args,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "defocus",
        help="train the per-pixel defocus network (HDME-Net, paper 001)",
        description="Train HDME-Net on pixel-shuffled / phantom content blurred by spatially varying Gaussian "
        "PSFs (true renderer), with camera noise. Data are made on the fly from --seed.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_train_options(p, steps=2000, lr=2e-3)
    p.add_argument("--content", default="mixed", choices=["mixed", "shuffle", "phantom"],
                   help="all-in-focus content: pixel-shuffled images, sharp cell phantoms, or half and half")
    p.add_argument("--config", default=None, choices=["default", "paper"],
                   help="network configuration (default: 'default'; with --init, the init model's)")
    p.add_argument("--width", type=int, default=None, help="override the configuration's base width")
    p.add_argument("--init", default=None,
                   help="continue from these weights (a .safetensors path or a shipped name such as "
                   "defocus-default); the architecture comes from that model's card")
    p.add_argument("--crop", type=int, default=80, help="training crop side (multiple of the network's multiple)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per step")
    p.add_argument("--pool-size", type=int, default=1024,
                   help="rendered noise-free samples cached once (0 = render every sample on the fly)")
    p.add_argument("--render-size", type=int, default=None,
                   help="side of each rendered sample, >= --crop (default 128, or --crop when that is larger)")
    p.add_argument("--sigma-max", type=float, default=10.0,
                   help="largest σ (px) of the training defocus maps (maps cover random sub-ranges of [0, max])")
    p.add_argument("--low-contrast", type=float, default=0.0, metavar="P",
                   help="probability that pixel-shuffled content gets its contrast scaled down 2-30x (low-contrast "
                   "texture is hard to tell from blur plus shot noise; default 0)")
    p.add_argument("--full-range", type=float, default=0.0, metavar="P",
                   help="probability that a training σ map spans the whole [0, --sigma-max] range instead of a "
                   "random sub-range (sub-ranges under-weight the ends of the range; default 0)")
    p.add_argument("--noise-input", default="none", choices=["none", "map"],
                   help="'map': the network also takes the camera's noise level at every pixel (a second input "
                   "channel, from a calibration or estimated from the image); with --init of an image-only model "
                   "the new channel's weights start at zero (default 'none': the image alone)")
    p.add_argument("--noise-estimated", type=float, default=0.5, metavar="P",
                   help="with --noise-input map: probability that a sample's noise channel is estimated from the "
                   "noisy image (as camera='auto' at inference) instead of its exact camera (default 0.5)")
    p.add_argument("--photons", type=float, nargs=2, default=(100.0, 4000.0), metavar=("LOW", "HIGH"),
                   help="range of the peak photo-electrons per pixel of the training images, drawn log-uniformly "
                   "(bright samples and long exposures reach tens of thousands; default 100 4000; the shipped "
                   "model was continued for one leg at 100 50000)")
    p.add_argument("--normalize", default="plane", choices=["plane", "crop"],
                   help="fit the intensity normalization on the whole rendered sample (as inference does per "
                   "plane; the default) or on each training crop (the first defocus-default's recipe)")
    p.add_argument("--content-from", default=None, metavar="PATH",
                   help="your own z-stacks (OME-Zarr/zarr, TIFF, folder of TIFFs, BBBC006 folder): the in-focus "
                   "plane of each stack, pixel-shuffled, replaces the bundled pictures as content (paper 001 §2.2; "
                   "the held-out validation pictures stay the same)")
    p.add_argument("--content-channel", default=None, type=channel_arg,
                   help="with --content-from: the channel to use, an index (0 = the first) or a name (default: "
                   "every channel)")
    p.add_argument("--content-plane", default="auto", type=_plane_arg,
                   help="with --content-from: the in-focus plane of every stack, 'auto' (the sharpest by the "
                   "variance of the Laplacian) or an index along Z")
    p.add_argument("--content-stacks", type=int, default=16,
                   help="with --content-from: use at most this many stacks, evenly spaced")
    p.add_argument("--bn-batches", type=int, default=64,
                   help="batches used to re-estimate BatchNorm statistics after training (0 = skip)")
    p.set_defaults(func=run)


def _plane_arg(text: str) -> int | str:
    """``auto`` or an integer plane index."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"use 'auto' or a plane index, got {text!r}") from None


def run(args) -> int:
    from napari_linblur.models.hrnet import preset_config
    from napari_linblur.training.defocus import DefocusDataConfig, DefocusTask
    from napari_linblur.training.loop import is_main_process, train

    check_out_not_in_input(args.out, args.content_from, source_option="--content-from")
    config_name = args.config or "default"
    model_cfg = preset_config(config_name)
    if args.init:
        from napari_linblur.training.loop import init_card as init_model_card

        if args.width is not None:
            raise ValueError("--width cannot be combined with --init (the architecture comes from the init model)")
        init_card = init_model_card(args.init, args.out, args.resume, "defocus")
        init_name = init_card.get("config_name")
        if args.config is not None and args.config != init_name:
            raise ValueError(f"--config {args.config} cannot be combined with --init {args.init!r}, whose "
                             f"architecture is its own ({init_name or 'custom'}); leave --config out")
        model_cfg = dict(init_card.get("config") or model_cfg)
        config_name = init_name or config_name
    if args.width is not None:
        if args.width <= 0:
            raise ValueError(f"--width must be positive, got {args.width}")
        scale = args.width / model_cfg["width"]
        model_cfg["width"] = args.width
        model_cfg["stem_channels"] = max(4, round(model_cfg["stem_channels"] * scale))
        model_cfg["head_channels"] = max(4, round(model_cfg["head_channels"] * scale))
    render_size = max(128, args.crop) if args.render_size is None else args.render_size
    data = DefocusDataConfig(content=args.content, crop=args.crop, batch_size=args.batch_size,
                             pool_size=args.pool_size, render_size=render_size,
                             normalize=args.normalize, sigma_range=(0.0, float(args.sigma_max)),
                             low_contrast=args.low_contrast, full_range=args.full_range,
                             noise_input=args.noise_input,
                             noise_estimated=args.noise_estimated, photons=tuple(args.photons),
                             content_from=args.content_from, content_channel=args.content_channel,
                             content_plane=args.content_plane, content_stacks=args.content_stacks)
    if args.content_from is None and (args.content_channel is not None or args.content_plane != "auto"
                                      or args.content_stacks != 16):
        raise ValueError("--content-channel, --content-plane and --content-stacks need --content-from PATH")
    multiple = int(model_cfg["stem_stride"]) * 2 ** (int(model_cfg["n_branches"]) - 1)
    if args.crop % multiple:
        raise ValueError(f"--crop must be a multiple of {multiple} for config {config_name!r}, got {args.crop}")
    cfg = short_run_warmup(train_config_from_args(args), args.warmup)
    main = is_main_process()  # every rank of a torchrun launch runs this: rank 0 alone prints
    task = DefocusTask(model_cfg, data, seed=args.seed, config_name=config_name,
                       log=print if main and not args.no_progress else None, init=args.init,
                       bn_batches=args.bn_batches)
    res = train(task, cfg)
    if main:
        state = "finished" if res.finished else "stopped early (resume with --resume)"
        print(f"{state} after {res.steps_done} steps in {res.seconds:.0f} s; validation: "
              + ", ".join(f"{k}={v:.4f}" for k, v in res.metrics.items()))
        print(f"model: {saved_model(res)}")
    return 0
