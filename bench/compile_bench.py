"""Compile benchmark: the compiler alone, in-process, no I/O.

Run by ``python -m bench`` as a child process (``python -m bench.compile_bench``) so
its max RSS is the compiler's and nothing else's; prints one JSON object on stdout,
progress on stderr.

What it measures, on the workload of :func:`bench.workloads.compile_workload`:

- full compile: wall time of ``Compiler().compile`` on a fresh Compiler, ``runs`` times
  (the median is the headline; the garbage collector is run before each, not during);
- memory: RSS before the first compile and the process's max RSS after the timed runs,
  then the peak of Python allocations during one more full compile under tracemalloc
  (in its own run: tracing slows allocation several-fold, so those times are not used);
- a one-rule change on the warm Compiler (one VirtualService's weights edited),
  an endpoint change (one instance added) and a no-op recompile: time, and from
  ``CompileResult.stats`` what was rebuilt vs reused and how many proxies changed version.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from bench import progress
from bench.workloads import (
    CompileWorkload,
    compile_workload,
    edit_weights,
    extra_instance,
    service_name,
    with_instance,
)
from meshd.compile import codec
from meshd.compile.compiler import Compiler, CompileResult, CompileSettings, compile_mesh
from meshd.schema.base import Resource
from registry.model import RegistryView

TARGET_FULL_COMPILE_MS = 1000.0
"""From the issue: a full compile of 1,000 services x 3 subsets, 2,000 rules, under 1 s."""

MIB = 2**20


def _rss_mib(field: str = "VmRSS") -> float:
    """A size line of /proc/self/status (``VmRSS`` now, ``VmHWM`` the peak), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MIB
    return float("nan")


def _max_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB


def _stats(result: CompileResult) -> dict[str, int]:
    st = result.stats
    out = dataclasses.asdict(st)
    out["parts_rebuilt"] = st.parts_rebuilt
    out["parts_reused"] = st.parts_reused
    out["snapshots"] = len(result.snapshots)
    out["errors"] = len(result.errors)
    return out


def _timed(
    compiler: Compiler,
    resources: Sequence[Resource[Any]],
    registry: RegistryView,
    settings: CompileSettings,
) -> tuple[float, CompileResult]:
    """``compiler.compile(...)`` and its wall time in ms."""
    # Collect first so a collection left over from building inputs does not land in
    # the timed region; the compile itself runs with the collector on, as in meshd.
    gc.collect()
    started = time.perf_counter()
    result = compiler.compile(resources, registry, settings)
    return (time.perf_counter() - started) * 1000, result


def _summary(times_ms: Sequence[float], stats: Sequence[dict[str, int]]) -> dict[str, Any]:
    return {
        "runs_ms": [round(t, 2) for t in times_ms],
        "median_ms": round(statistics.median(times_ms), 2),
        "stats": list(stats),
    }


def run(services: int, runs: int = 3) -> dict[str, Any]:
    """Every measurement of the module docstring; ``runs`` repetitions of each timed case."""
    settings = CompileSettings()
    phase = "compile"
    progress(phase, f"building the workload: {services} services x 3 instances ...")
    started = time.perf_counter()
    work: CompileWorkload = compile_workload(services)
    build_s = time.perf_counter() - started
    resources: list[Resource[Any]] = list(work.resources)
    registry: RegistryView = work.registry
    progress(
        phase,
        f"workload: {len(resources)} rules, {work.proxies} proxies (parsed and validated "
        f"in {build_s:.1f} s)",
    )

    rss_before = _rss_mib()
    full_ms: list[float] = []
    full_stats: list[dict[str, int]] = []
    compiler = Compiler()
    snapshot_bytes = 0
    for i in range(runs):
        compiler = Compiler()  # fresh each run: nothing to reuse
        took, result = _timed(compiler, resources, registry, settings)
        full_ms.append(took)
        full_stats.append(_stats(result))
        if result.errors:
            # The workload is valid by construction: errors mean a compiler regression.
            pid, errors = next(iter(result.errors.items()))
            progress(phase, f"WARNING: {len(result.errors)} proxies failed, e.g. {pid}: {errors}")
        if result.snapshots and not snapshot_bytes:
            snapshot_bytes = len(codec.dumps(next(iter(result.snapshots.values()))))
        del result  # one result alive at a time, as in meshd
        progress(phase, f"full compile {i + 1}/{runs}: {took:.0f} ms")
    max_rss = _max_rss_mib()

    # The last fresh compiler is now warm: the incremental cases reuse it.
    middle = services // 2
    edit_ms: list[float] = []
    edit_stats: list[dict[str, int]] = []
    current = resources
    for step in range(1, runs + 1):
        current = edit_weights(current, middle, step)
        took, result = _timed(compiler, current, registry, settings)
        edit_ms.append(took)
        edit_stats.append(_stats(result))
        del result
    progress(
        phase,
        f"one-rule change ({service_name(middle)} weights): median "
        f"{statistics.median(edit_ms):.1f} ms, pieces rebuilt "
        f"{edit_stats[0]['pieces_built']}/{services}, versions changed "
        f"{edit_stats[0]['versions_changed']}",
    )

    endpoint_ms: list[float] = []
    endpoint_stats: list[dict[str, int]] = []
    view = registry
    for serial in range(runs):
        view = with_instance(view, extra_instance(work, (middle + 1 + serial) % services, serial))
        took, result = _timed(compiler, current, view, settings)
        endpoint_ms.append(took)
        endpoint_stats.append(_stats(result))
        del result
    progress(
        phase,
        f"endpoint change (one instance added): median {statistics.median(endpoint_ms):.1f} ms, "
        f"versions changed {endpoint_stats[0]['versions_changed']}",
    )

    noop_ms, noop = _timed(compiler, current, view, settings)
    noop_stats = _stats(noop)
    del noop
    compiler = Compiler()  # drop the warm memo before measuring memory
    progress(phase, f"no-op recompile: {noop_ms:.1f} ms")

    gc.collect()
    progress(phase, "peak memory of one more full compile, under tracemalloc ...")
    tracemalloc.start()
    traced_base, _ = tracemalloc.get_traced_memory()
    started = time.perf_counter()
    traced = compile_mesh(resources, registry, settings)
    traced_ms = (time.perf_counter() - started) * 1000
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del traced
    peak_mib = (traced_peak - traced_base) / MIB
    progress(phase, f"tracemalloc peak {peak_mib:.1f} MiB")

    median = statistics.median(full_ms)
    return {
        "services": services,
        "instances": work.proxies,
        "proxies": work.proxies,
        "rules": len(resources),
        "workload_build_s": round(build_s, 3),
        "snapshot_bytes": snapshot_bytes,
        "full": _summary(full_ms, full_stats),
        "memory": {
            "rss_before_mib": round(rss_before, 1),
            "max_rss_mib": round(max_rss, 1),
            "tracemalloc_peak_mib": round(peak_mib, 1),
            "tracemalloc_compile_ms": round(traced_ms, 1),
        },
        "one_rule_change": {
            "what": f"VirtualService {service_name(middle)}: weights edited",
            **_summary(edit_ms, edit_stats),
        },
        "endpoint_change": {
            "what": "one instance added (a different service each run)",
            **_summary(endpoint_ms, endpoint_stats),
        },
        "noop_recompile": {"runs_ms": [round(noop_ms, 2)], "stats": [noop_stats]},
        "target": {
            "full_compile_ms": TARGET_FULL_COMPILE_MS,
            "met": median < TARGET_FULL_COMPILE_MS,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compile_bench",
        description="Compile benchmark; prints its results as one JSON object on stdout.",
    )
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of each timed case")
    args = parser.parse_args(argv)
    if args.services < 2 or args.runs < 1:
        parser.error("--services must be >= 2 and --runs >= 1")
    results = run(args.services, args.runs)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
