"""``make bench``: run every ``benchmarks/bench_*.py`` and write one report.

Each module defines ``run(report)`` where ``report(section, rows)`` records a list of dicts. Speed and memory are
reported as ratios against baselines measured in the same run on the same machine, never as absolute bars.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

from napari_linblur.io.atomic import write_json_atomic


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--only", default=None, help="substring of the benchmark files to run")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {}

    def report(section: str, rows: list[dict]) -> None:
        results.setdefault(section, []).extend(rows)
        print(f"\n## {section}")
        if rows:
            keys = list(rows[0])
            print("| " + " | ".join(keys) + " |")
            print("|" + "---|" * len(keys))
            for r in rows:
                print("| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")

    import torch

    threads = torch.get_num_threads()
    here = Path(__file__).parent
    sys.path.insert(0, str(here))  # shared helpers (benchmarks/_timing.py)
    available = sorted(here.glob("bench_*.py"))
    if args.only and not any(args.only in p.name for p in available):
        names = ", ".join(p.stem[len("bench_"):] for p in available)
        print(f"--only {args.only!r} matches no benchmark; available: {names}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the benchmarks: a folder that cannot be made fails at once
    for path in available:
        if args.only and args.only not in path.name:
            continue
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        t0 = time.perf_counter()
        try:
            module.run(report)
        finally:  # a benchmark that pins torch's thread count does not change the next one's
            torch.set_num_threads(threads)
        print(f"({path.name}: {time.perf_counter() - t0:.1f} s)")
    meta = _meta(threads)
    # atomic (a failed write leaves the earlier report whole) and strict JSON (a NaN ratio is written as null)
    write_json_atomic(out / "bench.json", {"meta": meta, "results": results})
    print(f"\nwrote {out / 'bench.json'}")
    return 0


def _meta(threads: int) -> dict:
    """What the numbers were measured with: the code (git commit, and whether the tree had changes), torch and its
    default thread count, the CPU and whether it runs bf16 natively (amp="auto"), and when."""
    import datetime
    import subprocess

    import torch

    from napari_linblur.inference.device import resolve_amp

    def git(*cmd: str) -> str | None:
        try:
            return subprocess.run(["git", *cmd], cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                                  timeout=10).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = platform.processor() or None
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"python": sys.version.split()[0], "machine": platform.machine(), "processor": cpu,
            "torch": torch.__version__, "torch_threads_default": threads, "cpu_count": os.cpu_count(),
            "amp_auto_on_cpu": resolve_amp("auto", torch.device("cpu")),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "--", "src")),
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
