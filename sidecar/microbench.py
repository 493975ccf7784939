"""Timing for the sidecar's micro-benchmarks (``python -m sidecar.routing.bench``,
``python -m sidecar.telemetry.bench``): not imported by the sidecar itself."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["best_seconds_per_call"]


def best_seconds_per_call(fn: Callable[[], object], seconds: float, first_n: int = 1) -> float:
    """Seconds per call of ``fn``, the best of three runs of about ``seconds`` each: the
    number of calls is first calibrated (doubling from ``first_n``) to about a tenth of
    that."""
    n = first_n
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - start
        if took > seconds / 10:
            break
        n *= 2
    runs = max(1, int(n * seconds / max(took, 1e-9)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(runs):
            fn()
        best = min(best, (time.perf_counter() - start) / runs)
    return best
