"""meshd's benchmark harness: ``make bench`` (``python -m bench``).

Speed is measured here and reported in ``bench/results/``; it is never asserted in
tests. See ``bench/README.md`` for what each number means.
"""

from __future__ import annotations

import os
import sys
import time

T0_ENV = "MESHD_BENCH_T0"
"""Wall-clock start of the whole run, passed to child benchmarks so every progress line
counts from the same moment."""

_T0 = float(os.environ.get(T0_ENV) or time.time())
os.environ[T0_ENV] = repr(_T0)


def progress(phase: str, message: str) -> None:
    """One progress line on stderr (stdout of a child benchmark carries its JSON),
    stamped with the seconds since ``python -m bench`` started."""
    stamp = time.time() - _T0
    print(f"[{stamp:6.1f}s] {phase:<12} {message}", file=sys.stderr, flush=True)
