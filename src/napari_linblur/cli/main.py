"""The ``linblur`` command: one entry point, one sub-command module per concern.

Each module listed in :data:`SUBCOMMANDS` defines ``register(subparsers)`` which adds its parser and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code). Modules are imported
only to build the parser, so heavy imports (torch, napari) must stay inside the ``func`` bodies.
"""

from __future__ import annotations

import argparse
import sys

# sub-command modules, in the order they appear in ``linblur --help``
SUBCOMMANDS = [
    "napari_linblur.cli.demo",  # linblur demo
    "napari_linblur.cli.synth",  # linblur synth
    "napari_linblur.cli.train",  # linblur train {ae,deblur,defocus}
    "napari_linblur.cli.evaluate",  # linblur evaluate {ae,deblur,defocus}
    "napari_linblur.cli.apply",  # linblur synthesize | deblur | defocus-map | focus
    "napari_linblur.cli.bench",  # linblur bench
]


class _Parser(argparse.ArgumentParser):
    """argparse without abbreviated options, for ``linblur`` and every sub-command (sub-parsers take their parent's
    class): ``--pool 24`` was read as ``--pool-size 24`` in one command while ``--pool`` is another option in the
    next, ``--model`` as ``--model-config``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="linblur",
        description="Blur synthesis, deblurring and defocus maps for microscopy z-stacks.",
    )
    from napari_linblur import __version__

    parser.add_argument("--version", action="version", version=f"napari-linblur {__version__}")
    from ._groups import register_members

    register_members(parser.add_subparsers(dest="command", metavar="COMMAND"), SUBCOMMANDS)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's time limit, ``kill``) while a command runs: unwound like Ctrl-C, so that a half-written
    output's temporary folder is removed; exit code 143."""

    signal_name = "SIGTERM"


#: a stop signal was received during this command (further ones are ignored until the process exits)
_stopping = False


def _stop_signal(signum, frame) -> None:
    """The first SIGTERM or SIGINT unwinds the command (its cleanup removes a half-written output); any further one
    is ignored until the command has exited, so that it cannot cut the cleanup short: a cluster's time limit signals
    every process of the job, and ``timeout`` or ``srun`` forward it again (a second SIGTERM inside the cleanup left
    the temporary folder behind, or ended the run with exit code 1 and a traceback)."""
    import signal

    global _stopping
    _stopping = True
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)
    if signum == signal.SIGTERM:
        raise Terminated("SIGTERM")
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    global _stopping
    _stopping = False
    previous = {s: signal.signal(s, _stop_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(argv)
    finally:
        if not _stopping:  # once stopping, the process is on its way out: a late repeat must not kill it (exit -15)
            for s, handler in previous.items():
                signal.signal(s, handler)


def _name(args) -> str:
    """The command's words as the user typed them ('train defocus', not 'train'), as argparse's own errors say."""
    what = getattr(args, f"{args.command}_what", None)
    return f"{args.command} {what}" if what else str(args.command)


def _cluster_error(args, err: BaseException) -> bool:
    """Print the one-line error of a dask.distributed failure and return True; False for any other error.

    distributed's errors are matched by name: distributed is not imported here."""
    name = type(err).__name__
    source = getattr(args, "input", None)
    computing = " while computing" + (f" {source}" if source else "")
    if name == "KilledWorker":
        # the workers computing one task died, again and again: a worker's memory limit (the nanny kills it) or a
        # crash. distributed's own message names only its internal task key.
        smaller = [flag for key, flag in (("tile", "a smaller --tile"), ("batch_size", "a smaller --batch-size"))
                   if key in vars(args)]
        print(f"linblur {_name(args)}: error: dask workers died{computing} (killed by their memory limit, or "
              "crashed); give each worker more memory (dask worker --memory-limit), fewer threads per worker"
              + "".join(f", or {s}" for s in smaller) + f" ({err})", file=sys.stderr)
        return True
    if name in ("FutureCancelledError", "FuturesCancelledError", "CommClosedError"):
        # the scheduler went away (killed, restarted, its job ended) or cancelled the work: nothing is written
        print(f"linblur {_name(args)}: error: the dask scheduler was lost or cancelled the work{computing}; no "
              f"output was written — start the run again when the scheduler is back ({err})", file=sys.stderr)
        return True
    return False


def _main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        # an ASCII-only terminal: µ, σ and — print as escapes, not a crash; a UTF-8 one: a file name that is not
        # UTF-8 (a Latin-1 share; Python holds its bytes as surrogates) prints as its own bytes, not a crash after
        # the work is done
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="surrogateescape" if encoding == "utf8" else "backslashreplace")
            except (ValueError, OSError):  # a stream that cannot be reconfigured: left as it is
                pass
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        print(f"linblur {_name(args)}: error: --threads must be >= 1, got {threads}", file=sys.stderr)
        return 2
    import warnings

    def _one_line(message, category, filename, lineno, line=None) -> str:
        # a warning on the command line reads like its errors, not as a source file, line and code listing
        kind = "warning" if category is UserWarning else category.__name__
        return f"linblur {_name(args)}: {kind}: {message}\n"

    previous_format = warnings.formatwarning
    warnings.formatwarning = _one_line  # the format only: warnings recorded by a caller stay recorded
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, FloatingPointError, OverflowError) as err:
        # OSError: missing files, an unreachable --scheduler ...; FloatingPointError: a diverged training run
        if _cluster_error(args, err):  # distributed's CommClosedError is an OSError
            return 2
        print(f"linblur {_name(args)}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if "symlink loop" not in str(err).lower():
            raise
        # Path.resolve() on a path whose symbolic links point at each other (OSError from Python 3.13 on)
        print(f"linblur {_name(args)}: error: {err}: the symbolic links point at each other; give a real file or "
              "folder", file=sys.stderr)
        return 2
    except MemoryError as err:  # a size this computer cannot hold (e.g. synth --shape 100000 100000)
        # the size options this command has (defocus-map has no --shape)
        sizes = [flag for name, flag in (("shape", "--shape"), ("fields", "--fields"), ("tile", "--tile"),
                                         ("batch_size", "--batch-size"), ("patch_size", "--patch-size"),
                                         ("workers", "fewer --workers")) if name in vars(args)]
        hint = f"use smaller sizes ({', '.join(sizes)}) or a smaller input" if sizes else "use a smaller input"
        print(f"linblur {_name(args)}: error: not enough memory ({err or 'MemoryError'}); {hint}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _cluster_error(args, err):
            raise
        return 2
    except KeyboardInterrupt as err:
        # a training run stops at a step boundary and says where its checkpoint is (TrainingInterrupted)
        print(f"linblur {_name(args)}: interrupted" + (f" by {err}" if str(err) else ""), file=sys.stderr)
        return 143 if getattr(err, "signal_name", "") == "SIGTERM" else 130
    finally:
        warnings.formatwarning = previous_format


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
