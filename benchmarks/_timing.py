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


def best_times(calls: dict, repeats: int = 3):
    """Best wall-clock time of each callable in ``calls`` over ``repeats`` *interleaved* rounds (a, b, c, a, b, c,
    …), after one untimed warm-up call of each, so that load changes on a shared machine hit all of them alike.

    Returns ``(seconds by key, output of the last call by key)``.
    """
    outs = {k: f() for k, f in calls.items()}
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeats):
        for k, f in calls.items():
            t0 = time.perf_counter()
            outs[k] = f()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, outs
