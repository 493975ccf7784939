"""Measure the compiler at scale (not a test: prints numbers, asserts nothing).

    .venv/bin/python -m tests.compile.measure_compile [--services 1000] [--profile]

A full compile of N services x 3 instances (subsets v1/v2/v3) with one VirtualService
and one DestinationRule per service; then a one-rule change (one VirtualService's
timeout) on the same Compiler: time, pieces rebuilt, snapshots whose version changed;
then peak memory of a full compile (tracemalloc, in a separate run so its overhead
does not distort the times).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import time
import tracemalloc

from meshd.compile.check import check_snapshot
from meshd.compile.compiler import Compiler, CompileSettings, compile_mesh
from meshd.schema.parse import parse_many
from tests.compile.support import generated_mesh, namespace_of, virtual_service_yaml


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=1)
    parser.add_argument(
        "--export-local", action="store_true", help="VirtualServices with exportTo: ['.']"
    )
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    n = args.services
    resources, registry = generated_mesh(
        n, namespaces=args.namespaces, export_local=args.export_local
    )
    settings = CompileSettings()
    print(
        f"{n} services x 3 instances in {args.namespaces} namespace(s), {len(resources)} rules, "
        f"{3 * n} proxies"
    )

    gc.collect()
    started = time.perf_counter()
    compiler = Compiler()
    result = compiler.compile(resources, registry, settings)
    full = time.perf_counter() - started
    print(
        f"full compile: {full * 1000:.0f} ms, {len(result.snapshots)} snapshots, "
        f"{len(result.errors)} with errors; {result.stats}"
    )

    target = n // 2
    text = virtual_service_yaml(
        f"svc{target}",
        ["v1", "v2", "v3"],
        namespace=namespace_of(target, args.namespaces),
        timeout="7s",
        export_local=args.export_local,
    )
    changed = parse_many(text)[0]
    edited = [changed if r.key == changed.key else r for r in resources]
    gc.collect()
    started = time.perf_counter()
    second = compiler.compile(edited, registry, settings)
    one = time.perf_counter() - started
    st = second.stats
    print(
        f"one-rule change: {one * 1000:.1f} ms; pieces rebuilt {st.pieces_built}, reused "
        f"{st.pieces_reused}; outbounds rebuilt {st.outbounds_built}; snapshots whose "
        f"version changed {st.versions_changed} of {len(second.snapshots)}"
    )

    gc.collect()
    started = time.perf_counter()
    third = compiler.compile(edited, registry, settings)
    print(
        f"no-op recompile: {(time.perf_counter() - started) * 1000:.1f} ms; "
        f"versions changed {third.stats.versions_changed}"
    )

    bad = sum(1 for snap in list(third.snapshots.values())[:50] if check_snapshot(snap))
    print(f"check_snapshot failures in a sample of 50: {bad}")

    del compiler, result, second, third
    gc.collect()
    tracemalloc.start()
    compile_mesh(resources, registry, settings)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"full compile peak memory (tracemalloc, run separately): {peak / 2**20:.1f} MiB")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        compile_mesh(resources, registry, settings)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()
