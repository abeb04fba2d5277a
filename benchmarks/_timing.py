"""Timing helper shared by the benchmarks (``benchmarks/run.py`` puts this folder on ``sys.path``)."""

from __future__ import annotations

import time


def best_time(fn, repeats: int = 3, *, warmup: bool = False):
    """Best wall-clock time of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``).

    Returns ``(seconds, output of the last call)``.
    """
    out = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out
