"""``linblur train ae`` — train the linear latent autoencoder (paper 000) on the shared training loop.

Examples
--------
>>> import argparse
>>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
>>> register(sub)
>>> a = p.parse_args(["ae", "--data", "d.zarr", "--out", "run", "--reg", "indirect"])
>>> a.config, a.reg, a.channel, a.detach
(None, 'indirect', 'w1', False)
"""

from __future__ import annotations

import argparse
import math

from ._groups import (
    add_train_options,
    check_out_not_in_input,
    saved_model,
    short_run_warmup,
    train_config_from_args,
)


def synth_command(recipe: dict | None, seed, n_fields) -> str | None:
    """The ``linblur synth`` command that reproduces a synthetic dataset (from its stored recipe + seed)."""
    if not recipe:
        return None
    parts = ["linblur synth DATA.zarr", f"--recipe {recipe.get('name', 'bbbc006-like')}", f"--fields {n_fields}",
             f"--seed {seed}"]
    if recipe.get("keep_even"):
        parts.append("--planes even")
    shape = recipe.get("shape")
    if shape and tuple(shape) != (520, 696):
        parts.append(f"--shape {shape[0]} {shape[1]}")
    optics = recipe.get("optics") or {}
    if optics.get("focus", "legacy") == "legacy":  # recorded before 0.2 (no field) or made with the old focus
        parts.append("--psf-focus legacy")
    return " ".join(parts)


def model_config_from_args(args: argparse.Namespace) -> str | dict:
    """The network configuration of ``--config`` and ``--model-config``, checked without building the network:
    the name of ``--config`` alone, else its entries overridden by the ``--model-config`` JSON object.

    Raises
    ------
    ValueError
        ``--model-config`` is not a JSON object, has an unknown key, a value outside its accepted form, a
        resnet-only key with arch 'paper', or ``in_channels`` other than 1; the message names ``--model-config``
        and the key.

    Examples
    --------
    >>> a = argparse.Namespace(config="default", model_config='{"latent_channels": 4}')
    >>> model_config_from_args(a)["latent_channels"]
    4
    >>> model_config_from_args(argparse.Namespace(config="default", model_config='{"blocks": -1}'))
    Traceback (most recent call last):
    ...
    ValueError: --model-config: blocks=-1: must be an int >= 0 (resnet only: residual blocks per stage), e.g. 1
    """
    name = args.config or "default"
    if not args.model_config:
        return name
    import json

    from napari_linblur.models.autoencoder import CONFIG_KEYS, CONFIGS, check_config

    try:
        overrides = json.loads(args.model_config)
    except json.JSONDecodeError as err:
        raise ValueError("--model-config must be a JSON object, "
                         f"e.g. '{{\"channels\": [16, 32]}}' ({err})") from err
    if not isinstance(overrides, dict):
        raise ValueError("--model-config must be a JSON object, e.g. '{\"channels\": [16, 32]}', "
                         f"got {args.model_config!r}")
    unknown = sorted(set(overrides) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"--model-config: unknown key(s) {unknown}; the autoencoder's options are "
                         f"{sorted(CONFIG_KEYS)}")
    config = {**CONFIGS[name], **overrides}
    if config.get("arch") == "paper":
        unused = sorted(k for k in ("latent_channels", "blocks") if k in overrides)
        if unused:
            raise ValueError(f"--model-config: {unused} apply to arch 'resnet' only (the paper's network has "
                             "neither); leave them out, or set \"arch\": \"resnet\"")
    in_channels = config.get("in_channels", 1)
    if in_channels != 1 or isinstance(in_channels, bool):
        raise ValueError(f"--model-config: in_channels={in_channels!r}: must be 1 for train ae (every example is "
                         "one plane of one channel; --channel w1+w2 trains both channels as separate planes)")
    try:
        check_config(config)
    except ValueError as err:
        raise ValueError(f"--model-config: {err}") from err
    return config


def config_from_init(args: argparse.Namespace, config: str | dict) -> str | dict:
    """The network configuration of a run with ``--init``: the init model's own, from its card.

    ``--config`` / ``--model-config`` may be left out; given, they must name the init model's architecture
    (otherwise its weights would not fit). A ``--resume`` reads the architecture its run recorded, so the
    ``--init`` file may be gone.

    Raises
    ------
    ValueError
        The init model is not an autoencoder, or ``--config`` / ``--model-config`` contradict its configuration
        (the message names the entries that differ).
    """
    from napari_linblur.models.autoencoder import CONFIGS
    from napari_linblur.models.registry import config_differences
    from napari_linblur.training.loop import init_card

    card = init_card(args.init, args.out, args.resume, "ae")
    theirs = card.get("config")
    if not isinstance(theirs, dict):
        return config
    if args.config is None and not args.model_config:
        name = card.get("config_name")
        return name if name in CONFIGS and CONFIGS[name] == theirs else dict(theirs)
    differ = config_differences(theirs, dict(CONFIGS[config]) if isinstance(config, str) else config)
    if differ:
        raise ValueError(f"--config/--model-config contradict --init {args.init!r}, whose architecture is its own "
                         f"({differ}); leave --config and --model-config out")
    return config


def _run(args: argparse.Namespace) -> int:
    if args.epochs is not None and not args.epochs > 0:
        raise ValueError(f"--epochs must be positive, got {args.epochs}")
    if args.split_seed < 0:
        raise ValueError(f"--split-seed must be an int >= 0 (the seed of the 7:1:2 field split, e.g. 0), "
                         f"got {args.split_seed}")
    check_out_not_in_input(args.out, args.data)
    config = model_config_from_args(args)  # checked before the data is read or --out is written
    if args.init:
        config = config_from_init(args, config)
    from napari_linblur.training.ae import AETask, load_fields
    from napari_linblur.training.loop import is_main_process, train

    channels = [int(c) if c.isdigit() else c for c in str(args.channel).split("+")]
    data = load_fields(args.data, channels[0], planes=args.planes)
    more = [load_fields(args.data, c, planes=args.planes) for c in channels[1:]]
    extra = {}
    cmd = synth_command(data.recipe, data.seed, data.meta.get("n_fields"))
    if cmd:
        extra["data_command"] = cmd
    task = AETask(
        data,
        config,
        reg=args.reg,
        detach=args.detach,
        direct_scale=args.direct_scale,
        extrap_weight=args.extrap_weight,
        focus_fraction=args.focus_fraction,
        normalization=args.normalization,
        batch_size=args.batch_size,
        crop=args.crop,
        triplets=args.triplets,
        split_seed=args.split_seed,
        seed=args.seed,
        extra_card=extra,
        init=args.init,
        more_channels=more,
    )
    cfg = train_config_from_args(args)
    if args.epochs is not None:
        per_epoch = sum(len(task._trip[f.name]) for f in task.train_fields) * 10
        cfg.steps = max(1, math.ceil(args.epochs * per_epoch / args.batch_size))
    short_run_warmup(cfg, args.warmup)
    cfg.log_every = min(cfg.log_every, cfg.ckpt_every)
    res = train(task, cfg)
    if is_main_process():  # every rank of a torchrun launch runs this: rank 0 alone prints
        state = "finished" if res.finished else "stopped early (resume with --resume)"
        print(
            f"train ae: {state} after {res.steps_done} steps in {res.seconds:.0f} s; "
            f"val_loss {res.metrics.get('val_loss', float('nan')):.4f}, "
            f"val PSNR interp {res.metrics.get('val_psnr_interp', float('nan')):.2f} dB -> {saved_model(res)}"
        )
    return 0


def register(subparsers) -> None:
    """Add ``ae`` to the ``linblur train`` group."""
    p = subparsers.add_parser(
        "ae",
        help="linear latent autoencoder (blur synthesis / pair deblurring, paper 000)",
        description="Train LinearLatentAE on triplets a<b<c of one field (general alpha from plane positions), "
        "with the baseline, indirect or direct regularization of paper 000. Data: a `linblur synth` OME-Zarr "
        "dataset or a BBBC006 folder; fields are split 7:1:2 (train/val/test) by --split-seed.",
    )
    p.add_argument("--data", required=True, help="linblur synth OME-Zarr dataset or BBBC006 folder")
    p.add_argument("--channel", default="w1",
                   help="channel name or index (default w1, nuclei); 'w1+w2' trains one model on both jointly")
    p.add_argument("--config", default=None, choices=["default", "paper"],
                   help="network configuration (default: 'default'; with --init, the init model's)")
    p.add_argument("--reg", default="direct", choices=["baseline", "indirect", "direct"], help="regularization")
    p.add_argument("--detach", dest="detach", action="store_true", default=False,
                   help="stop the gradient through z_b in the direct term (default: no)")
    p.add_argument("--no-detach", dest="detach", action="store_false", help="let gradients flow through z_b")
    p.add_argument("--direct-scale", default="absolute", choices=["relative", "absolute"],
                   help="direct term: absolute = the paper's ||z_b - z'_b||_1 (default); relative = divided by "
                   "mean|z_a - z_c| (scale-invariant, trained slower in our measurements)")
    p.add_argument("--extrap-weight", type=float, default=0.0,
                   help="ours (not in the paper): weight of an L1 term on the extrapolated sharp plane (default 0)")
    p.add_argument("--focus-fraction", type=float, default=0.0,
                   help="ours: fraction of triplets whose a is the in-focus plane (the deblurring use; default 0)")
    p.add_argument("--normalization", default="triplet", choices=["triplet", "inputs"],
                   help="intensity scale of each example: triplet = fitted over its three planes (default); inputs = "
                   "over the two planes the operation receives, (a, c) for synthesis or (b, c) for deblurring, as "
                   "synthesize_blur and deblur_pair fit it at inference")
    p.add_argument("--model-config", default=None,
                   help='JSON overriding entries of --config, e.g. \'{"channels": [16, 32], "latent_channels": 8}\' '
                   "(with --init, leave it out: the architecture is the init model's)")
    p.add_argument("--batch-size", type=int, default=8, help="triplets per step (default 8)")
    p.add_argument("--crop", type=int, default=96,
                   help="crop side (default 96 for speed on CPUs; the paper uses 128)")
    p.add_argument("--triplets", default="general", choices=["general", "midpoint"],
                   help="general alpha from plane positions, or only the paper's midpoints")
    p.add_argument("--planes", default="paper", choices=["paper", "all"],
                   help="paper: every second plane from focus (BBBC006's even planes); all: every plane")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the 7:1:2 field split (default 0)")
    p.add_argument("--epochs", type=float, default=None,
                   help="train this many epochs (triplets x 10 crops of the train fields) instead of --steps")
    p.add_argument("--init", default=None,
                   help="start from these weights (a .safetensors path or a shipped name such as ae-default)")
    add_train_options(p, steps=2000, lr=1e-3, ckpt_every=200)
    p.set_defaults(func=_run)
