"""Helpers to build a command group (``linblur train ae``, ``linblur evaluate defocus`` ...) from per-model modules.

Each member module defines ``register(subparsers)``; a member that is not built yet is skipped.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help text already says it (no "(default 0.5) (default: 0.5)") or
    the default is None (an option whose absence means something its help says, never "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


def check_out_folder(path: str, option: str = "--out") -> Path:
    """Check a report folder before a long computation, so that a file in its place or a folder that cannot be
    created is an error at once (naming ``option``), not after minutes of evaluation. Nothing is created here (a
    refused run leaves no folder); reports in an existing folder are replaced."""
    if not str(path).strip():
        raise ValueError(f"{option} is empty: give a folder for the reports")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {path}: a file is in the way; give a folder for the reports")
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{option} {path}: {ancestor} is a file, so the report folder cannot be created there")
    _check_writable(ancestor, option, path)
    return out


def check_reports_free(out: str, stem: str, overwrite: bool) -> None:
    """An evaluation's reports ``OUT/STEM.json`` / ``.md`` are replaced only with ``--overwrite``, as every other
    command's output: a second run into one ``--out`` replaced the first one's report without a word."""
    taken = [p.name for p in (Path(out) / f"{stem}.json", Path(out) / f"{stem}.md") if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"--out {out} already holds {' and '.join(taken)} (an earlier evaluation): give "
                              "--overwrite to replace them, or another --out")


def check_out_file(path: str, option: str, example: str = "report.txt") -> Path:
    """Check an output file (``--json F``, ``--csv F``) before a long computation, as :func:`check_out_folder` does
    for a folder: ``F`` is not a folder, and its folder exists, is a folder and is writable. Nothing is created;
    ``example`` is the file name suggested when ``F`` is a folder.

    Raises
    ------
    ValueError
        ``F`` is a folder, or its folder is missing or is a file (the message names ``option``).
    OSError
        Its folder is not writable.
    """
    if str(path).strip() == "-":  # the usual "standard output" would have been a file named '-'
        raise ValueError(f"{option} -: the report is written to a file, not to standard output (which holds the "
                         f"command's table); give a file name, e.g. {example}")
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{option} {path} is a folder: give a file name, e.g. {example}")
    folder = out.resolve().parent
    if not folder.exists():
        raise ValueError(f"{option} {path}: its folder does not exist ({folder}); create it first")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, so the file cannot be written there")
    _check_writable(folder, option, path)
    return out


def check_out_not_in_input(out: str, source: str | None, option: str = "--out", source_option: str = "--data",
                           example: str = "run") -> None:
    """Refuse a run folder ``out`` that is the input ``source`` or inside it, before any work: the run would write
    its model, checkpoints, logs or reports into its own input (``--out d.zarr``, ``--out d.zarr/run``), which the
    apply commands refuse too ('refusing to overwrite its own input'). Inside a zarr store means inside its outermost
    store (:func:`~napari_linblur.io.omezarr._zarr_root`: ``--data d.zarr/field_000`` guards all of ``d.zarr``).
    A folder that contains the input (``--out .`` for ``--data ./d.zarr``) is fine: the run adds its own files.

    Parameters
    ----------
    out : str
        The ``option`` value (a folder).
    source : str, optional
        The input (``source_option``'s value); None (an optional input not given) checks nothing.
    option, source_option : str
        The options' names, for the message.
    example : str
        The folder name the message suggests beside the input.

    Raises
    ------
    ValueError
        ``out`` is ``source`` (its store) or inside it.

    Examples
    --------
    >>> check_out_not_in_input("runs/ae", "data/d.zarr")
    >>> try:
    ...     check_out_not_in_input("data/d.zarr/run", "data/d.zarr")
    ... except ValueError as err:
    ...     print(str(err).split(":")[0])
    --out data/d.zarr/run
    """
    if source is None:
        return
    from napari_linblur.io.omezarr import _zarr_root, path_within

    root = _zarr_root(Path(source).resolve())
    target = Path(out).resolve()
    if path_within(target, root):  # also another spelling of it on a case-insensitive file system
        raise ValueError(f"{option} {out}: refusing to write into its own input ({source_option} {source}, "
                         f"{root}); give a folder outside it, e.g. {root.parent / example}")


def _check_writable(folder: Path, option: str, path: str) -> None:
    import os

    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError(f"{option} {path}: {folder} is not writable; give a folder you can write to")


def register_members(subparsers, members: list[str]) -> None:
    """Import each member module and call its ``register(subparsers)``; skip members not built."""
    for module_name in members:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:
                continue
            raise
        module.register(subparsers)


def register_group(subparsers, name: str, help_text: str, members: list[str]) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest=f"{name}_what", metavar="MODEL")
    register_members(sub, members)
    for member, member_parser in sub.choices.items():  # for command_line(): the parser and the words
        member_parser.set_defaults(_parser=member_parser, _words=("linblur", name, member))
    parser.set_defaults(func=lambda args: _need_member(parser, args))


def command_line(args: argparse.Namespace) -> str:
    """The exact command line of a parsed grouped command (``linblur evaluate deblur ...``), every option spelled
    out with its value (defaults included), so that a results file records how to reproduce it.

    Examples
    --------
    >>> from napari_linblur.cli.main import build_parser
    >>> args = build_parser().parse_args(["evaluate", "deblur", "--n", "4", "--no-speed"])
    >>> command_line(args).split()[:3], "--no-speed" in command_line(args), "--n 4" in command_line(args)
    (['linblur', 'evaluate', 'deblur'], True, True)
    """
    import shlex

    parser = args._parser
    parts = list(args._words)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, None)
        flag = max(action.option_strings, key=len)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if value != action.default:
                parts.append(flag)
        elif value is None:
            continue
        elif isinstance(action, argparse._AppendAction):
            for v in value:
                parts += [flag, str(v)]
        elif isinstance(value, (list, tuple)):
            if value:
                parts += [flag, *(str(v) for v in value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``, as every command that runs a network spells it."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")


def add_amp_option(p: argparse.ArgumentParser) -> None:
    """``--amp``: the networks' precision (``auto``: bf16 where the CPU or GPU runs it natively, else float32), so
    that a run can be pinned to one precision on every machine; outputs record it."""
    p.add_argument("--amp", default="auto", choices=["auto", "off", "bf16"],
                   help="network precision: bf16 where the hardware runs it natively (auto), float32 (off), or bf16; "
                   "pin it (off) to get the same numbers on machines with and without native bf16")


def add_tta_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--tta N``: the self-ensemble of :mod:`napari_linblur.inference.tta` (its ``TTA_CHOICES``)."""
    from napari_linblur.inference.tta import TTA_CHOICES

    p.add_argument("--tta", type=int, default=1, choices=list(TTA_CHOICES), help=help_text)


def add_reports_overwrite_option(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the evaluations (:func:`check_reports_free`)."""
    p.add_argument("--overwrite", action="store_true", help="replace the reports of an earlier evaluation in --out")


def add_overwrite_option(p: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the commands writing an OME-Zarr output (what it may replace: ``io.omezarr``)."""
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier napari-linblur output (never a file, a plain folder, another "
                        "tool's zarr store or a part of one)")


# ------------------------------------------------------------------ options of the batch commands


def nonempty(what: str):
    """An argparse ``type`` refusing an empty value (``""`` from an unset shell variable), which would otherwise
    mean "none given" (a local cluster for ``--scheduler ""``) or the current folder."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} is empty")
        return text

    return check


def input_arg(text: str) -> str:
    """The input path of a batch command: an empty one (``""`` from an unset shell variable) is refused rather
    than read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the input path is empty: give the file or folder of the image")
    return text


def channel_arg(text: str) -> int | str:
    """``--channel`` value: digits are an index (``0`` = the first channel), anything else a channel name."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def add_batch_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by the batch sub-commands: input, channel, cluster."""
    parser.add_argument("input", type=input_arg,
                        help="OME-Zarr/zarr, TIFF stack, folder of TIFFs, or BBBC006 folder/file")
    parser.add_argument("--channel", default=None, type=channel_arg,
                        help="channel to process: an index (0 = the first) or a name, e.g. w1 (BBBC006 channels by "
                             "name: --channel 1 would be ambiguous with w1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", default=None, type=nonempty("the scheduler address"),
                       help="address of a running dask scheduler (tcp://host:8786)")
    group.add_argument(
        "--workers", type=int, default=None,
        help="start a local dask.distributed cluster with N workers (default: one per core, at most 4)"
    )
    add_device_option(parser)


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``, as the other long-running commands (``linblur synth``, ``train``) spell it."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar on stderr (there is none anyway when stderr is not a terminal)")


def bars_on(args: argparse.Namespace) -> bool:
    """Whether a command draws its progress bar: not with ``--no-progress``, and only when stderr is a terminal
    (in a log file or a pipeline's capture a bar's carriage returns are noise), as every command does."""
    from napari_linblur.batch import show_progress

    return show_progress(progress_from_args(args))


def progress_from_args(args: argparse.Namespace) -> bool | None:
    """The ``progress`` argument of :func:`run_batch` / :func:`compute_with_client` for a command line: False with
    ``--no-progress``, else None (a bar when stderr is a terminal)."""
    return False if getattr(args, "no_progress", False) else None


def _need_member(parser: argparse.ArgumentParser, args) -> int:
    parser.print_help()
    return 2


def add_train_options(p: argparse.ArgumentParser, *, steps: int, lr: float, ckpt_every: int = 200) -> None:
    """Options every ``linblur train`` sub-command shares (they map onto ``TrainConfig``)."""
    p.add_argument("--out", required=True, type=nonempty("--out"),
                   help="run folder: checkpoints, logs, model.safetensors")
    p.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr})")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and data (default 0)")
    add_device_option(p)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                   help="mixed precision: bf16 (CPU or GPU) or fp16 (CUDA only, with loss scaling)")
    p.add_argument("--ckpt-every", type=int, default=ckpt_every, help="checkpoint every N steps")
    p.add_argument("--val-every", type=int, default=ckpt_every, help="validate every N steps")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/checkpoint.safetensors")
    p.add_argument("--warmup", type=int, default=None, metavar="N",
                   help="learning-rate warm-up steps (default: 50, or a tenth of --steps for a run of fewer than "
                   "500 steps; a --resume keeps the run's)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock budget of this session; checkpoint and stop (a --resume gets a new budget)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    add_progress_option(p)
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.999) and save "
                   "it as the model (default 0 = off)")
    p.add_argument("--channels-last", action="store_true",
                   help="train in channels-last memory layout (NHWC): same results up to rounding, faster "
                   "convolutions on CPU (1.2-1.4x per step for the defocus network in bf16)")


def train_config_from_args(args):
    """Build a :class:`~napari_linblur.training.loop.TrainConfig` from the shared options."""
    from napari_linblur.training.loop import TrainConfig

    return TrainConfig(
        out=args.out,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        ckpt_every=args.ckpt_every,
        val_every=args.val_every,
        resume=args.resume,
        max_minutes=args.max_minutes,
        threads=args.threads,
        progress=bars_on(args),
        ema=args.ema,
        channels_last=args.channels_last,
        command_effective=command_line(args) if hasattr(args, "_parser") else None,
    )


def saved_model(res) -> str:
    """Where a training run's model went, for its closing line: the path, or why there is none (a run stopped
    before its first step saves only its checkpoint)."""
    if res.model_path.is_file():
        return str(res.model_path)
    return f"none saved (no step was done; {res.model_path.parent} holds the checkpoint for --resume)"


def short_run_warmup(cfg, given: int | None = None):
    """Set ``cfg.warmup``: ``given`` (``--warmup``) when there is one, else the warm-up a resumed run recorded in its
    ``train_config.json`` (so that ``--steps`` may grow on ``--resume``), else
    :func:`~napari_linblur.training.loop.default_warmup` of ``cfg.steps`` (50, or a tenth of a short run's steps).
    Call it once ``cfg.steps`` is final. Returns ``cfg``."""
    import json
    from pathlib import Path

    from napari_linblur.training.loop import default_warmup

    if given is not None:
        cfg.warmup = given  # checked with the other options by TrainConfig.validate; a resume compares it
        return cfg
    saved = Path(cfg.out) / "train_config.json"
    if cfg.resume and saved.is_file():
        try:
            warmup = json.loads(saved.read_text()).get("warmup")
        except (OSError, ValueError):
            warmup = None
        if isinstance(warmup, int) and warmup > 0:
            cfg.warmup = warmup
            return cfg
    cfg.warmup = default_warmup(cfg.steps)
    return cfg
