"""``linblur bench`` — run the benchmark suite (``benchmarks/``) of a source checkout, as ``make bench`` does."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def _find_runner() -> Path | None:
    """The checkout's ``benchmarks/run.py``: the one beside this package's source (an editable install), else one
    in the current folder that is napari-linblur's (never another project's ``benchmarks/run.py``)."""
    own = Path(__file__).resolve().parents[3] / "benchmarks" / "run.py"
    if own.exists():
        return own
    here = Path.cwd() / "benchmarks" / "run.py"
    try:
        ours = here.exists() and "napari_linblur" in here.read_text(encoding="utf-8", errors="replace")
    except OSError:
        ours = False
    return here if ours else None


def register(subparsers) -> None:
    from ._groups import nonempty

    p = subparsers.add_parser(
        "bench",
        help="run the benchmarks (speed/memory as ratios against baselines measured in the same run; source checkout "
        "only: benchmarks/ is not installed)",
        description=__doc__,
    )
    p.add_argument("--out", default="bench_out", type=nonempty("--out"),
                   help="report folder (default bench_out)")
    p.add_argument("--only", default=None, help="run only benchmark files whose name contains this")
    p.set_defaults(func=run)


def run(args) -> int:
    runner = _find_runner()
    if runner is None:
        raise FileNotFoundError(
            "benchmarks/run.py not found: run `linblur bench` from a source checkout of napari-linblur"
        )
    argv = ["run.py", "--out", args.out] + (["--only", args.only] if args.only else [])
    old = sys.argv
    sys.argv = argv
    try:
        runpy.run_path(str(runner), run_name="__main__")
    except SystemExit as exit_:
        return int(exit_.code or 0)
    finally:
        sys.argv = old
    return 0
