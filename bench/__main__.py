"""``python -m bench [--quick] [--only compile|push|ca|registry|proxy]`` — run the benchmarks, write
``bench/results/report.md`` and ``bench/results/results.json``.

Exit status 0 when every benchmark ran (whether or not it met its target: targets are
reported, not enforced), 1 when one failed to run (the report says why), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench import progress, proxy_bench, push_bench, registry_bench, report
from bench.ca_bench import TARGET_EMBEDDED_SIGNS_PER_S
from bench.compile_bench import TARGET_FULL_COMPILE_MS
from bench.push_bench import TARGET_P99_MS, TARGET_WATCHERS, PushSize

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def _sizes(args: argparse.Namespace) -> tuple[int, list[PushSize], int]:
    """(compile services, push sizes, profile watchers) for a full or quick run."""
    if args.quick:
        rounds = args.rounds or 2
        return 60, [PushSize(10, 2, rounds), PushSize(20, 2, rounds)], 20
    rounds = args.rounds or 5
    return (
        1000,
        [PushSize(100, 10, rounds), PushSize(1000, 100, rounds)],
        TARGET_WATCHERS,
    )


def _ca_size(args: argparse.Namespace) -> tuple[int, int]:
    """(timed signs per backend, concurrent requesters) for a full or quick run."""
    return (200, 8) if args.quick else (2000, 16)


def run_ca(signs: int, concurrency: int) -> dict[str, Any]:
    """In a child process, so its CPU time is the CA's alone (it starts and stops its
    own ``bao server -dev``)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.ca_bench",
            "--signs",
            str(signs),
            "--concurrency",
            str(concurrency),
        ],
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.ca_bench exited with {done.returncode} (its output is above)")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_compile(services: int, runs: int) -> dict[str, Any]:
    """In a child process, so its max RSS is the compiler's alone."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.compile_bench",
            "--services",
            str(services),
            "--runs",
            str(runs),
        ],
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"bench.compile_bench exited with {done.returncode} (its output is above)"
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_push(
    sizes: Sequence[PushSize], profile: str, profile_watchers: int, out_dir: Path
) -> tuple[dict[str, Any], bool]:
    """Every size in turn, then a profiled run when asked for (or, with ``auto``, when
    the target was missed). Returns the results and whether every size ran."""
    results: dict[str, Any] = {
        "target": {"p99_ms": TARGET_P99_MS, "watchers": TARGET_WATCHERS},
        "sizes": [],
    }
    ok = True
    missed = False
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        for size in sizes:
            workdir = Path(tmp) / f"n{size.watchers}"
            try:
                outcome = push_bench.run_size(size, workdir)
            except (push_bench.ChildError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                ok = False
                progress(f"push N={size.watchers}", f"FAILED: {exc}")
                outcome = {"watchers": size.watchers, "services": size.services, "error": str(exc)}
            results["sizes"].append(outcome)
            if size.watchers == TARGET_WATCHERS and "error" not in outcome:
                missed = outcome["all"]["to_ack_ms"].get("p99", float("inf")) >= TARGET_P99_MS
        if profile == "always" or (profile == "auto" and missed):
            why = (
                f"The p99 target was missed at {TARGET_WATCHERS:,} watchers, so meshd was "
                "profiled during 3 more rounds."
                if missed
                else "Profiled on request (`--profile always`) during 3 more rounds."
            )
            prof_path = Path(tmp) / "meshd.prof"
            size = PushSize(profile_watchers, max(1, profile_watchers // 10), 3)
            try:
                profiled = push_bench.run_size(size, Path(tmp) / "profiled", profile_out=prof_path)
                summary = push_bench.summarize_profile(prof_path)
                out_dir.mkdir(parents=True, exist_ok=True)
                kept = out_dir / "meshd-push.prof"
                shutil.copyfile(prof_path, kept)
                summary.update(why=why, file=str(kept.name))
                summary["run"] = profiled
                results["profile"] = summary
            except (push_bench.ChildError, httpx.HTTPError, OSError, ValueError, KeyError) as exc:
                ok = False
                progress("profile", f"FAILED: {exc}")
                results["profile_error"] = str(exc)
    return results, ok


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    # SIGTERM (e.g. from `timeout` or CI) unwinds like Ctrl-C, so every child is stopped.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="meshd's benchmarks; the report goes to bench/results/report.md.",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--only",
        choices=["compile", "push", "ca", "registry", "proxy"],
        help="run one benchmark",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the report")
    parser.add_argument("--rounds", type=int, default=0, help="push rounds per size (5; quick: 2)")
    parser.add_argument(
        "--profile",
        choices=["auto", "always", "never"],
        default="auto",
        help="profile meshd during extra push rounds, and a fresh pair of sidecars under "
        "extra proxy load: when a target is missed (auto)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    services, sizes, profile_watchers = _sizes(args)
    command = "python -m bench" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))
    results: dict[str, Any] = {
        "meta": {
            "command": command,
            "quick": args.quick,
            "duration_s": None,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "machine": report.machine_facts(),
        "anchors": list(report.ANCHORS),
        "targets": {"full_compile_ms": TARGET_FULL_COMPILE_MS, "push": {
            "p99_ms": TARGET_P99_MS, "watchers": TARGET_WATCHERS},
            "ca": {"embedded_signs_per_s": TARGET_EMBEDDED_SIGNS_PER_S},
            "registry": {"p99_ms": registry_bench.TARGET_P99_MS},
            "proxy": {"hop_vs_nginx": proxy_bench.TARGET_HOP_VS_NGINX,
                      "mesh_added_p50_ms": proxy_bench.TARGET_MESH_ADDED_P50_MS,
                      "vcpu_per_1000_rps": proxy_bench.TARGET_VCPU_PER_1000_RPS,
                      "rss_mib": proxy_bench.TARGET_RSS_MIB}},
    }  # fmt: skip
    m = results["machine"]
    progress("bench", f"{m['cpu_model']}, {m['cores']} cores, {m['python']}; {command}")
    ok = True
    try:
        if args.only in (None, "compile"):
            try:
                results["compile"] = run_compile(services, 3)
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                ok = False
                results["compile"] = {"error": str(exc)}
                progress("compile", f"FAILED: {exc}")
        if args.only in (None, "push"):
            try:
                results["push"], pushed = run_push(sizes, args.profile, profile_watchers, args.out)
                ok = ok and pushed
            except Exception as exc:  # reported, and the report is still written
                ok = False
                results["push"] = {"error": f"{type(exc).__name__}: {exc}"}
                progress("push", f"FAILED: {traceback.format_exc()}")
        if args.only in (None, "ca"):
            signs, concurrency = _ca_size(args)
            try:
                results["ca"] = run_ca(signs, concurrency)
                ok = ok and not any("error" in b for b in results["ca"]["backends"])
            except (RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                ok = False
                results["ca"] = {"error": str(exc)}
                progress("ca", f"FAILED: {exc}")
        if args.only in (None, "registry"):
            try:
                results["registry"] = registry_bench.run(args.quick)
                ok = ok and not any("error" in b for b in results["registry"]["backends"])
            except Exception as exc:  # reported, and the report is still written
                ok = False
                results["registry"] = {"error": f"{type(exc).__name__}: {exc}"}
                progress("registry", f"FAILED: {traceback.format_exc()}")
        if args.only in (None, "proxy"):
            try:
                results["proxy"] = proxy_bench.run(args.quick, args.profile, args.out)
            except Exception as exc:  # reported, and the report is still written
                ok = False
                results["proxy"] = {"error": f"{type(exc).__name__}: {exc}"}
                progress("proxy", f"FAILED: {traceback.format_exc()}")
    except KeyboardInterrupt:
        # Children were stopped by the context managers on the way out; nothing to write.
        progress("bench", "interrupted: every process it started has been stopped")
        return 130
    results["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    md_path, json_path = report.write(results, args.out)
    progress("bench", f"done in {results['meta']['duration_s']:.0f} s: {md_path} and {json_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
