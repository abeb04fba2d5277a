"""``linblur train deblur`` — the DRBNet-style deblurring network, stage 1 (optics pairs) or stage 2 (captured)."""

from __future__ import annotations

from ._groups import (
    add_train_options,
    check_out_not_in_input,
    saved_model,
    short_run_warmup,
    train_config_from_args,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deblur",
        help="train the single-image deblurring network (DRBNet-style), stage 1 or 2",
        description=(
            "Stage 1: exact-correspondence pairs rendered by the optics (through-focus PSF and spatially varying "
            "blur over cell phantoms and pixel-shuffled content). Stage 2: fine-tune (--init STAGE1/model.safetensors) "
            "on captured-style z_k -> z_0 pairs (misaligned, differently exposed, noisier) and/or real stacks "
            "(--data), with a feature loss in the encoder space of our autoencoder (--feature-ae, default ae-default)."
        ),
    )
    add_train_options(p, steps=3000, lr=2e-3, ckpt_every=250)
    p.add_argument("--stage", type=int, choices=[1, 2], default=1, help="training stage (default 1)")
    p.add_argument("--init", default=None, help="start from this .safetensors (stage 2: the stage-1 model)")
    p.add_argument("--config", default=None,
                   help="architecture: tiny | fast | default (= lean) | classic | speed | large "
                   "(default: the --init model's, else "
                   "default); with --init of a larger trained model, that model is shrunk to this size "
                   "(models.drbnet.shrink: fewer 1/2-resolution channels, smaller kernels) and fine-tuned")
    p.add_argument("--patch", type=int, default=64, help="training patch side, multiple of 8 (default 64)")
    p.add_argument("--batch", type=int, default=8, help="pairs per step (default 8)")
    p.add_argument("--pool", type=int, default=24,
                   help="sharp 192x192 cell fields rendered once per run (seeded); patches are cropped from them "
                   "(default 24; more fields = more varied content, ~0.05 s each to render)")
    p.add_argument("--depth-band", type=float, nargs=3, default=None, metavar=("LO_UM", "HI_UM", "FRACTION"),
                   help="draw that fraction of the through-focus pairs' defocus from [LO, HI] um instead of "
                   "[0, 10] um (default: uniform)")
    p.add_argument("--feature-weight", type=float, default=None,
                   help="weight of the autoencoder feature loss (default 0 in stage 1, 5 in stage 2: the ae-default "
                   "latent is ~10x smaller than the pixel L1)")
    p.add_argument("--loss", choices=["psnr", "l1"], default="psnr",
                   help="pixel term: psnr (default) = mean over pairs of log10(MSE), which weighs clean high-SNR "
                   "pairs as much as noisy ones (the evaluation's mean PSNR per image); l1 = the earlier models' loss")
    p.add_argument("--feature-ae", default=None, help="autoencoder for the feature loss (default ae-default)")
    p.add_argument("--data", default=None, help="real stacks for stage 2 (zarr / OME-Zarr / TIFF / BBBC006 folder)")
    p.add_argument("--replay", type=float, default=None,
                   help="stage 2: fraction of pairs still drawn from the stage-1 optics (default 0.3; "
                   "0 = pure fine-tuning)")
    p.add_argument("--real-fraction", type=float, default=None,
                   help="fraction of stage-2 pairs from --data (default 0.5)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from napari_linblur.training.deblur import DeblurData, DeblurTask
    from napari_linblur.training.loop import is_main_process, train

    if args.stage == 1 and args.data:
        raise ValueError("--data (real stacks) is used in stage 2; pass --stage 2 --init STAGE1/model.safetensors")
    # options a run would not use are refused, not recorded in the card as if they had been
    # (the defaults spelled out, as the command_effective of cards before session 25 record them, are accepted)
    unused = [name for name, given in (("--replay", args.replay not in (None, 0.3) and args.stage == 1),
                                       ("--real-fraction", args.real_fraction not in (None, 0.5) and not args.data),
                                       ("--feature-ae", args.feature_ae is not None and args.stage == 1
                                        and not args.feature_weight))
              if given]
    if unused:
        raise ValueError(f"{', '.join(unused)}: not used by this run (--replay is stage 2's, --real-fraction needs "
                         "--data, --feature-ae needs a feature loss: stage 2, or --feature-weight > 0)")
    # resolved here, not written back into ``args``: the card's command_effective spells out only what was used
    replay = 0.3 if args.replay is None else args.replay
    real_fraction = 0.5 if args.real_fraction is None else args.real_fraction
    check_out_not_in_input(args.out, args.data)
    if not 0.0 <= real_fraction <= 1.0:
        raise ValueError(f"--real-fraction must be a fraction in [0, 1], got {real_fraction}")
    if args.pool < 1:
        raise ValueError(f"--pool must be >= 1 sharp fields, got {args.pool}")
    init_card: dict = {}
    if args.init:
        from napari_linblur.training.loop import init_card as init_model_card

        init_card = init_model_card(args.init, args.out, args.resume, "deblur")
    config = args.config
    if config is None:  # fine-tuning keeps the architecture of the model it starts from
        config = init_card.get("config") or "default"
    fw = args.feature_weight if args.feature_weight is not None else (5.0 if args.stage == 2 else 0.0)
    task = DeblurTask(
        stage=args.stage,
        config=config,
        data=DeblurData(patch=args.patch, batch=args.batch, pool=args.pool,
                        depth_band=tuple(args.depth_band) if args.depth_band else ()),
        seed=args.seed,
        init=args.init,
        feature_weight=fw,
        feature_ae=args.feature_ae,
        real_data=args.data,
        real_fraction=real_fraction if args.data else 0.0,
        replay=replay if args.stage == 2 else 0.0,
        pixel_loss=args.loss,
    )
    cfg = train_config_from_args(args)
    short_run_warmup(cfg, args.warmup)
    res = train(task, cfg)
    if is_main_process():  # every rank of a torchrun launch runs this: rank 0 alone prints
        state = "finished" if res.finished else "stopped early (resume with --resume)"
        print(f"deblur stage {args.stage}: {res.steps_done} steps, {state}; validation {res.metrics}")
        print(f"model: {saved_model(res)}")
    return 0
