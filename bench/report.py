"""The benchmark report: ``results.json`` (every raw number) and ``report.md`` (one table
per benchmark, each with its target and whether this run met it).

The markdown is rendered from the JSON alone, so a saved ``results.json`` can be
re-rendered after a change to this module: ``python -m bench.report results.json``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

ANCHORS: tuple[str, ...] = (
    "Compile: 1,000 services x 3 subsets, 2,000 rules: full compile time and peak memory "
    "(target < 1 s); a one-rule change: time and number of snapshots recompiled.",
    "Push: N simulated watchers (100, 1,000) on loopback; time from apply to the last ACK, "
    "p50/p99/max. Target: p99 < 1 s at 1,000 watchers on 2 cores.",
    'Istio publishes "500 sidecars in under 1 second" for its control plane push.',
    "CA: CSR signs per second and CPU per sign for the embedded CA and for OpenBao, on the "
    "same machine in one run. Target: >= 300 signs/s embedded; OpenBao's figure beside it.",
    "Consul's built-in CA defaults to a limit of 50 CSR/s and documents ~100/s on one core.",
    "Registry: 1,000 services x 3 instances, 10 endpoint changes per second: change-to-ACK "
    "latency p50/p99 at the affected sidecars and meshd's CPU, for embedded and consul. "
    "Target: p99 < 1 s on this 2-core machine.",
    "Consul pushes updates to 172,000 instances in under 1 s with 5 servers.",
    "Proxy: direct vs nginx vs HAProxy vs one sidecar hop vs the mesh path (client sidecar "
    "-> mTLS -> server sidecar), HTTP/1.1, 1 KB bodies, keep-alive: saturation throughput; "
    "p50/p99 at a fixed 1,000 rps; CPU-seconds per 1,000 requests per sidecar; RSS. Targets: "
    "one hop >= 0.8x nginx's throughput; the mesh path adds <= 0.5 ms p50 at 1,000 rps; "
    "<= 0.20 vCPU per 1,000 rps per sidecar with mTLS and metrics on; RSS <= 40 MB under load.",
    "Istio 1.24 publishes 0.20 vCPU and 60 MB per 1,000 requests/s for its Envoy sidecar.",
)
"""The benchmark sections of the issues (``issues show 2``, ``3``, ``4`` and ``5``), for
context."""

SECTIONS: tuple[str, ...] = (
    "## Summary",
    "## Machine",
    "## Anchors from the issue",
    "## Compile",
    "## Push",
    "## CA signing",
    "## Registry",
    "## Proxy",
    "## How to read this report",
)
"""Headings every report holds (a benchmark that did not run says so under its own)."""


# --- machine facts -------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return math.nan


def _git_commit() -> str:
    # rev-parse only reads; nothing here may touch the index or the work tree.
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_facts() -> dict[str, Any]:
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "git_commit": _git_commit(),
        "packages": {
            name: _version(name)
            for name in ("uvicorn", "fastapi", "pydantic", "uvloop", "httptools")
        },
    }


# --- formatting helpers ----------------------------------------------------------------------


def _num(value: Any, unit: str = "", digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int | float):
        return f"{value:,.{digits}f}{unit}"
    return str(value)


def _ms(value: Any) -> str:
    """Milliseconds, with a decimal below 10 ms where it carries information."""
    if isinstance(value, int | float) and not math.isnan(value) and abs(value) < 10:
        return _num(value, " ms", 1)
    return _num(value, " ms")


def _target(ms: float) -> str:
    """A target in the unit the issue states it in (``< 1 s``)."""
    return f"< {ms / 1000:g} s" if ms >= 1000 else f"< {ms:g} ms"


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    if value >= 1024:
        return f"{value / 1024:.0f} KiB"
    return f"{value:.0f} B"


def _met(met: bool | None) -> str:
    if met is None:
        return "n/a"
    return "**yes**" if met else "**NO**"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _failed(section: Mapping[str, Any] | None, name: str) -> list[str] | None:
    """The lines that replace a benchmark's section when it did not run or failed."""
    if section is None:
        return [f"Not run (`--only` excluded the {name} benchmark).", ""]
    if "error" in section:
        return [f"**FAILED**: {section['error']}", ""]
    return None


# --- summary -------------------------------------------------------------------------------


def _summary(results: Mapping[str, Any]) -> list[str]:
    rows: list[list[str]] = []
    quick = bool(results["meta"].get("quick"))
    comp = results.get("compile")
    if comp is not None and "error" not in comp:
        rows.append(
            [
                f"Full compile, {comp['services']:,} services x 3 instances, "
                f"{comp['rules']:,} rules (median of {len(comp['full']['runs_ms'])})",
                _target(comp["target"]["full_compile_ms"]),
                _ms(comp["full"]["median_ms"]),
                _met(None if quick else comp["target"]["met"]),
            ]
        )
    elif comp is not None:
        rows.append(["Full compile", "< 1 s", "failed", "**NO**"])
    push = results.get("push")
    if push is not None and "error" not in push:
        target = push["target"]
        for size in push["sizes"]:
            if "error" in size:
                rows.append([f"Push to {size['watchers']:,} watchers", "", "failed", "**NO**"])
                continue
            judged = size["watchers"] == target["watchers"] and not quick
            rows.append(
                [
                    f"Push to {size['watchers']:,} watchers: p99 apply -> ACK over "
                    f"{len(size['rounds'])} rounds",
                    _target(target["p99_ms"])
                    + ("" if judged else f" (judged at {target['watchers']:,})"),
                    _ms(size["all"]["to_ack_ms"].get("p99")),
                    _met(size["all"]["to_ack_ms"].get("p99", math.inf) < target["p99_ms"])
                    if judged
                    else "n/a",
                ]
            )
    elif push is not None:
        rows.append(["Push", "p99 < 1 s", "failed", "**NO**"])
    rows += _ca_summary_rows(results.get("ca"), quick)
    rows += _registry_summary_rows(results.get("registry"), quick)
    rows += _proxy_summary_rows(results.get("proxy"), quick)
    lines = ["## Summary", ""]
    if quick:
        lines += [
            "_Quick run (`--quick`): tiny sizes for a smoke test. Targets are judged only "
            "on a full run._",
            "",
        ]
    return lines + _table(["Benchmark", "Target", "This run", "Met"], rows)


def _machine(results: Mapping[str, Any]) -> list[str]:
    m = results["machine"]
    meta = results["meta"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    rows = [
        ["CPU", m["cpu_model"]],
        ["Cores", f"{m['cores']} ({m['cores_usable']} usable by this process)"],
        ["Memory", _num(m["memory_gib"], " GiB", 1)],
        ["Python", m["python"]],
        ["OS", m["platform"]],
        ["Date", m["date_utc"]],
        ["meshd commit", f"`{m['git_commit']}` (plus any uncommitted changes in the tree)"],
        ["Packages", packages],
        ["Command", f"`{meta['command']}`"],
        ["Run took", _num(meta.get("duration_s"), " s", 1)],
        [
            "Load average (1, 5, 15 min)",
            f"{_loadavg(meta.get('loadavg_start'))} at the start, "
            f"{_loadavg(meta.get('loadavg_end'))} at the end — other work on the machine "
            "slows the benchmarks (see *others' CPU* per push round)",
        ],
    ]
    return ["## Machine", "", *_table(["", ""], rows)]


def _loadavg(values: Sequence[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "—"


def _anchors(results: Mapping[str, Any]) -> list[str]:
    return ["## Anchors from the issue", "", *[f"- {a}" for a in results["anchors"]], ""]


# --- compile -------------------------------------------------------------------------------


def _stats_cells(stats: Mapping[str, int]) -> list[str]:
    return [
        f"{stats['pieces_built']:,} / {stats['pieces_reused']:,}",
        f"{stats['outbounds_built']:,} / {stats['outbounds_reused']:,}",
        f"{stats['inbounds_built']:,} / {stats['inbounds_reused']:,}",
        f"{stats['snapshots_built']:,} / {stats['snapshots_reused']:,}",
        f"{stats['versions_changed']:,} of {stats['snapshots']:,}",
    ]


def _runs(runs: Sequence[float]) -> str:
    return ", ".join(_ms(r) for r in runs)


def _compile(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Compile", ""]
    comp = results.get("compile")
    failed = _failed(comp, "compile")
    if failed is not None or comp is None:
        return lines + (failed or [])
    full = comp["full"]
    mem = comp["memory"]
    quick = bool(results["meta"].get("quick"))
    lines += [
        f"In-process, pure: `Compiler.compile` on {comp['services']:,} services x 3 instances "
        f"(labels version v1/v2/v3) = {comp['proxies']:,} proxies; {comp['rules']:,} rules: "
        "per service a DestinationRule (3 subsets, a load balancer policy) and a "
        "VirtualService (an `end-user` header match, then a weighted split over the 3 "
        f"subsets). All in one namespace, so every proxy sees every service. Building the "
        f"workload (parse + validate, not timed below) took {comp['workload_build_s']:.2f} s.",
        "",
    ]
    rows = [
        [
            f"Full compile (median of {len(full['runs_ms'])}, fresh `Compiler` each)",
            _ms(full["median_ms"]),
            f"runs: {_runs(full['runs_ms'])}",
        ],
        [
            "Target: full compile < 1 s",
            _met(None if quick else comp["target"]["met"]),
            "quick run: not judged" if quick else "",
        ],
        [
            "Peak Python memory of one full compile (tracemalloc)",
            _num(mem["tracemalloc_peak_mib"], " MiB", 1),
            f"separate run; it took {_ms(mem['tracemalloc_compile_ms'])} under tracing",
        ],
        [
            "Process max RSS after the timed runs",
            _num(mem["max_rss_mib"], " MiB", 1),
            f"{_num(mem['rss_before_mib'], ' MiB', 1)} before the first compile "
            "(interpreter, models, workload)",
        ],
        [
            "Errors (proxies whose snapshot failed)",
            _num(full["stats"][0]["errors"]),
            f"{full['stats'][0]['snapshots']:,} coherent snapshots",
        ],
        [
            "Wire size of one snapshot (JSON)",
            _bytes(comp["snapshot_bytes"]),
            "every proxy sees every service",
        ],
    ]
    lines += _table(["Measure", "Value", "Notes"], rows)
    lines += [
        "Incremental compiles on the warm `Compiler` (rebuilt / reused, from "
        "`CompileResult.stats`):",
        "",
    ]
    inc_rows = []
    for key, label in (
        ("one_rule_change", "One-rule change"),
        ("endpoint_change", "Endpoint change"),
        ("noop_recompile", "No-op recompile"),
    ):
        case = comp[key]
        runs = case["runs_ms"]
        median = case.get("median_ms", runs[0])
        what = case.get("what", "same inputs again")
        inc_rows.append(
            [
                f"{label}: {what}",
                f"{_ms(median)}" + (f" (runs: {_runs(runs)})" if len(runs) > 1 else ""),
                *_stats_cells(case["stats"][0]),
            ]
        )
    lines += _table(
        [
            "Change",
            "Time",
            "Pieces (per service)",
            "Outbound configs",
            "Inbound configs",
            "Snapshots",
            "Versions changed",
        ],
        inc_rows,
    )
    return lines


# --- push ----------------------------------------------------------------------------------


def _dist_row(label: str, dist: Mapping[str, float]) -> list[str]:
    return [
        label,
        _num(dist.get("n")),
        *(_ms(dist.get(k)) for k in ("min", "p50", "p90", "p99", "max")),
    ]


def _round_row(r: Mapping[str, Any], label: str) -> list[str]:
    ack = r["to_ack_ms"]
    gc = r["meshd_gc"]
    notes = []
    if r["missing"]:
        notes.append(f"{r['missing']} missing")
    if r["extra_pushes"]:
        notes.append(f"{r['extra_pushes']} extra pushes")
    if r["compiles"] != 1:
        notes.append(f"{r['compiles']} compiles")
    return [
        label,
        _ms(r["to_snapshot_ms"].get("p50")),
        _ms(ack.get("min")),
        _ms(ack.get("p50")),
        _ms(ack.get("p99")),
        _ms(ack.get("max")),
        _ms(r.get("meshd_all_acked_ms")),
        _ms(r["apply_ms"]),
        _ms(r["compile_ms"]),
        f"{gc['count']} ({_ms(gc['total_ms'])})" if gc["count"] else "0",
        _num(r["meshd"]["cpu_s"], " s", 2),
        _num(r["watchers"]["cpu_s"], " s", 2),
        _num(r.get("others_cpu_s"), " s", 2),
        _bytes(r["snapshot_bytes"]),
        ", ".join(notes) or "ok",
    ]


def _push_size(size: Mapping[str, Any], target: Mapping[str, Any], quick: bool) -> list[str]:
    n = size["watchers"]
    lines = [f"### {n:,} watchers ({size['services']:,} services)", ""]
    if "error" in size:
        return [*lines, f"**FAILED**: {size['error']}", ""]
    rows = [_round_row(r, str(r["round"])) for r in size["rounds"]]
    if size.get("warmup"):
        rows.insert(0, _round_row(size["warmup"], "warm-up"))
    lines += [
        "Per round; every time is from just before the apply request was sent. The "
        "warm-up round is not counted anywhere else.",
        "",
    ]
    lines += _table(
        [
            "Round",
            "snapshot p50",
            "ACK min",
            "ACK p50",
            "ACK p99",
            "last ACK",
            "meshd saw all ACKs",
            "apply answered",
            "compile",
            "meshd full GCs",
            "meshd CPU",
            "watchers CPU",
            "others' CPU",
            "snapshot",
            "check",
        ],
        rows,
    )
    judged = n == target["watchers"] and not quick
    p99 = size["all"]["to_ack_ms"].get("p99", math.inf)
    last = size["all"]["last_ack_ms"]
    lines += [f"Over all watchers of the {len(size['rounds'])} counted rounds:", ""]
    lines += _table(
        ["", "n", "min", "p50", "p90", "p99", "max"],
        [
            _dist_row("apply -> snapshot received", size["all"]["to_snapshot_ms"]),
            _dist_row("apply -> ACK (next poll written)", size["all"]["to_ack_ms"]),
            _dist_row("apply -> last ACK of a round", last),
            _dist_row("apply -> meshd routed the ACK poll", size["all"]["meshd_acked_ms"]),
            _dist_row(
                "apply -> meshd routed the last ACK poll of a round",
                size["all"]["meshd_all_acked_ms"],
            ),
        ],
    )
    meshd = size["meshd"]
    wp = size["watcher_process"]
    gc = meshd["gc_rounds"]
    rows2 = [
        [
            f"Target: p99 apply -> ACK {_target(target['p99_ms'])} at {target['watchers']:,} "
            "watchers",
            _met(p99 < target["p99_ms"]) if judged else "n/a",
            f"p99 over all counted rounds {_ms(p99)}; "
            f"worst round's last ACK {_ms(last.get('max'))}",
        ],
        [
            "meshd CPU during the counted rounds",
            _num(meshd["rounds"]["cpu_s"], " s", 2),
            f"{_num(meshd['rounds']['cpu_s'] / max(1, len(size['rounds'])) * 1e6 / n, ' µs')} "
            f"per proxy and push; user {_num(meshd['rounds']['user_s'], ' s', 2)}, system "
            f"{_num(meshd['rounds']['system_s'], ' s', 2)}; "
            f"{_num(meshd['cpu_s_total'], ' s', 2)} since it started (set-up included)",
        ],
        [
            "meshd full GC pauses during the counted rounds",
            f"{gc['count']} ({_ms(gc['total_ms'])})",
            f"in {gc.get('rounds_hit', '—')} of {len(size['rounds'])} rounds; longest "
            f"{_ms(gc['max_ms'])}; generation-2 collections stop the whole process",
        ],
        [
            "meshd max RSS",
            _num(meshd["max_rss_mib"], " MiB", 1),
            f"{_num(meshd['rss_mib'], ' MiB', 1)} at the end",
        ],
        [
            "Watcher process CPU during the counted rounds",
            _num(wp["rounds"]["cpu_s"], " s", 2),
            f"{wp.get('loop', '')}; max RSS {_num(wp['max_rss_mib'], ' MiB', 1)}; reconnects "
            f"{wp['reconnects']}, errors {wp['errors']}"
            + (f" (last: {wp['last_error']})" if wp["last_error"] else ""),
        ],
        [
            "Set-up",
            _num(size["register_s"], " s", 1),
            f"registering {n:,} instances until compiled; watchers connected and SYNCED "
            f"in {_num(size['connect_s'], ' s', 1)}",
        ],
    ]
    lines += _table(["Measure", "Value", "Notes"], rows2)
    return lines


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _profile(profile: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Profile of meshd during the push",
        "",
        f"{profile.get('why', '')} Profiler: {profile['profiler']}, clock: {profile['clock']}; "
        f"{_num(profile['total_own_s'], ' s', 2)} of profiled time. Raw profile: "
        f"`{profile.get('file', '')}` (open with `python -m pstats`).",
        "",
    ]
    run = profile.get("run") or {}
    if run.get("all"):
        ack = run["all"]["to_ack_ms"]
        lines += [
            f"Those rounds, {run['watchers']:,} watchers, with the profiler slowing meshd: "
            f"apply -> ACK p50 {_ms(ack.get('p50'))}, p99 {_ms(ack.get('p99'))}, "
            f"max {_ms(ack.get('max'))}; "
            f"meshd CPU {_num(sum(r['meshd']['cpu_s'] for r in run['rounds']), ' s', 2)} "
            "in those rounds.",
            "",
        ]
    if profile.get("threads"):
        lines += _table(
            ["Thread", "Threads", "CPU"],
            [
                [t["name"], _num(t.get("count", 1)), _num(t["seconds"], " s", 3)]
                for t in profile["threads"][:8]
            ],
        )
    if profile.get("by_package"):
        lines += ["Own time by package (where the time goes):", ""]
        lines += _table(
            ["Package", "Own", "Share"],
            [
                [p["package"], _num(p["own_s"], " s", 3), _num(100 * p["share"], " %", 1)]
                for p in profile["by_package"][:12]
            ],
        )

    def rows(key: str) -> list[list[str]]:
        return [
            [
                f"`{r['function']}`",
                _num(r["calls"]),
                _num(r["own_s"], " s", 3),
                _num(r["cumulative_s"], " s", 3),
            ]
            for r in profile[key][:15]
        ]

    lines += ["Top functions by own time:", ""]
    lines += _table(["Function", "Calls", "Own", "Cumulative"], rows("by_own_time"))
    lines += ["Top functions by cumulative time:", ""]
    lines += _table(["Function", "Calls", "Own", "Cumulative"], rows("by_cumulative_time"))
    return lines


def _push(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Push", ""]
    push = results.get("push")
    failed = _failed(push, "push")
    if failed is not None or push is None:
        return lines + (failed or [])
    quick = bool(results["meta"].get("quick"))
    lines += [
        "Real processes over loopback: one `meshd serve` (sqlite store, default 100 ms "
        "debounce, temp data dir); N simulated sidecars in a separate process (raw asyncio "
        "streams, one keep-alive HTTP/1.1 connection each, long-polling "
        "`GET /v1/xds/{proxy}?version=V`; the next poll after a 200 is the ACK). Instances "
        "are spread over N/10 services in one namespace. Each round, once meshd reports "
        "every proxy SYNCED, `POST /v1/apply` edits the weights of the VirtualService of "
        "`svc0` — a service every proxy sees — so every proxy gets a new snapshot.",
        "",
    ]
    for size in push["sizes"]:
        lines += _push_size(size, push["target"], quick)
    if push.get("profile"):
        lines += _profile(push["profile"])
    if push.get("profile_error"):
        lines += [
            "### Profile of meshd during the push",
            "",
            f"**FAILED**: {push['profile_error']}",
            "",
        ]
    return lines


# --- CA signing ------------------------------------------------------------------------------

_CA_LABELS = {
    "embedded": "embedded CA (signs on the event loop: meshd's default)",
    "embedded-thread": "embedded CA, signing in a worker thread",
    "openbao": "OpenBao PKI (`bao server -dev`, through hvac)",
}


def _ca_summary_rows(ca: Mapping[str, Any] | None, quick: bool) -> list[list[str]]:
    if ca is None:
        return []
    target = _num(ca.get("target", {}).get("embedded_signs_per_s", 300), " signs/s")
    if "error" in ca:
        return [["CA signing", f">= {target} embedded", "failed", "**NO**"]]
    rows = []
    for backend in ca["backends"]:
        name = backend["backend"]
        if name == "embedded-thread":
            continue
        judged = name == "embedded"
        if "error" in backend:
            rows.append([f"CSR signing, {name}", "", "failed", "**NO**"])
            continue
        rows.append(
            [
                f"CSR signing, {name}: {backend['signs']:,} signs from "
                f"{backend['concurrency']} concurrent requesters",
                f">= {target}" if judged else "none (reported beside embedded)",
                _num(backend["signs_per_s"], " signs/s"),
                _met(None if quick else ca["target"].get("met")) if judged else "n/a",
            ]
        )
    return rows


def _ca(results: Mapping[str, Any]) -> list[str]:
    lines = ["## CA signing", ""]
    ca = results.get("ca")
    failed = _failed(ca, "CA")
    if failed is not None or ca is None:
        return lines + (failed or [])
    anchors = ca.get("anchors", {})
    lines += [
        f"`CertificateAuthority.sign` for {ca['signs']:,} pre-made CSRs per backend (EC P-256 "
        "keys made before timing, as sidecars make their own), from "
        f"{ca['concurrency']} asyncio tasks in one process after an untimed warm-up. Each "
        "sign runs meshd's CSR policy, then signs: the embedded CA with `cryptography` in "
        "this process; OpenBao through `VaultCA` (hvac in worker threads, one pooled "
        "connection per requester) to a `bao server -dev` started for the run on the same "
        "machine, role `meshd-workload` (`no_store`). *CPU per sign* is user + system CPU "
        "of the signing process (the CA client) and, for OpenBao, of the `bao` process too, "
        "divided by the signs.",
        "",
    ]
    rows = []
    for backend in ca["backends"]:
        label = _CA_LABELS.get(backend["backend"], backend["backend"])
        if "error" in backend:
            rows.append([label, f"**FAILED**: {backend['error']}", "", "", "", "", ""])
            continue
        latency = backend["latency_ms"]
        server = backend.get("server_cpu_ms_per_sign")
        rows.append(
            [
                label + (f" {backend['server_version']}" if backend.get("server_version") else ""),
                _num(backend["signs_per_s"], "", 0),
                _num(backend["total_cpu_ms_per_sign"], " ms", 3),
                _num(backend["client_cpu_ms_per_sign"], " ms", 3),
                "—" if server is None else _num(server, " ms", 3),
                " / ".join(_ms(latency.get(k)) for k in ("p50", "p99", "max")),
                str(backend["errors"]) if backend["errors"] else "0",
            ]
        )
    lines += _table(
        [
            "Backend",
            "Signs/s",
            "CPU per sign (total)",
            "meshd-side CPU",
            "server CPU",
            "Latency p50 / p99 / max",
            "Errors",
        ],
        rows,
    )
    quick = bool(results["meta"].get("quick"))
    met = ca["target"].get("met")
    lines += [
        f"Target: >= {_num(ca['target']['embedded_signs_per_s'])} signs/s embedded — "
        + ("quick run: not judged" if quick else ("met" if met else "**NOT met**"))
        + f". Anchors: Consul's built-in CA defaults to a limit of "
        f"{_num(anchors.get('consul_default_limit_per_s'))} CSR/s and documents "
        f"~{_num(anchors.get('consul_documented_one_core_per_s'))}/s on one core.",
        "",
        "Signing in a worker thread is measured to decide the default: the hand-off to the "
        "thread costs more than it frees, because most of a sign (building and encoding the "
        "certificate) holds the GIL, so threads do not sign in parallel. On the event loop, "
        "one sign blocks it for about the *CPU per sign* of the first row.",
        "",
    ]
    return lines


# --- registry ----------------------------------------------------------------------------


def _registry_summary_rows(reg: Mapping[str, Any] | None, quick: bool) -> list[list[str]]:
    if reg is None:
        return []
    if "error" in reg:
        return [["Registry: endpoint changes", "p99 < 1 s", "failed", "**NO**"]]
    target = reg["target"]["p99_ms"]
    size = reg["size"]
    rows = []
    for b in reg["backends"]:
        label = (
            f"Registry `{b['backend']}`: {size['services']:,} services x 3, "
            f"{size['rate_per_s']:g} endpoint changes/s: p99 change -> ACK"
        )
        if "error" in b:
            rows.append([label, _target(target), "failed", "**NO**"])
            continue
        p99 = b["change_to_ack_ms"].get("p99", math.inf)
        rows.append([label, _target(target), _ms(p99), _met(None if quick else p99 < target)])
    return rows


def _registry(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Registry", ""]
    reg = results.get("registry")
    failed = _failed(reg, "registry")
    if failed is not None or reg is None:
        return lines + (failed or [])
    size = reg["size"]
    lines += [
        f"`bench/registry_bench.py`. {size['services']:,} services x 3 instances "
        f"({size['instances']:,} proxies) in {size['namespaces']} namespaces, and one "
        "mesh-wide `Sidecar` (egress `./*`): each proxy sees its own namespace's services. "
        f"{size['rate_per_s']:g} endpoint changes per second for {size['duration_s']:g} s, "
        f"round-robin over {size['hot_namespaces']} namespaces: one instance's health flips "
        "(embedded: its heartbeat `PUT /v1/instances/{id}` with `healthy`; consul: its TTL "
        "check `PUT /v1/agent/check/fail|pass/...` on the Consul agent). Simulated sidecars "
        "(raw asyncio TLS long polls) watch every proxy of those namespaces; a change's "
        "latency is measured from its request to each affected proxy's ACK. One meshd "
        "(sqlite store, default debounce) per backend; `consul agent -dev` for consul.",
        "",
    ]
    inc = reg.get("incremental")
    if inc:
        lines += [
            f"**Incremental check** (in process): one instance's health changes in the "
            f"view each backend publishes ({inc['services']:,} services, {inc['proxies']:,} "
            "proxies); what the compiler rebuilds.",
            "",
        ]
        rows = [
            [
                name,
                f"{r['pieces_built']} / {r['pieces_built'] + r['pieces_reused']:,}",
                str(r["outbounds_built"]),
                f"{r['snapshots_built']:,}",
                f"{r['versions_changed']:,}",
                _ms(r["recompile_ms"]),
                _ms(r["full_compile_ms"]),
            ]
            for name, r in (("embedded", inc["embedded"]), ("consul", inc["consul"]))
        ]
        lines += _table(
            [
                "Backend",
                "Service pieces rebuilt",
                "Outbounds rebuilt",
                "Snapshots rebuilt",
                "New versions",
                "Recompile",
                "Full compile",
            ],
            rows,
        )
    rows = []
    for b in reg["backends"]:
        if "error" in b:
            rows.append([f"`{b['backend']}`", f"**FAILED**: {b['error']}", *[""] * 9])
            continue
        ack = b["change_to_ack_ms"]
        cpu = b["cpu"]
        comp = b["compiles"]
        consul = cpu.get("consul")
        rows.append(
            [
                f"`{b['backend']}`",
                f"{b['changes']} x {b['affected_per_change']}",
                _ms(ack.get("p50")),
                _ms(ack.get("p99")),
                _ms(ack.get("max")),
                f"{cpu['meshd']['cores']:.2f} ({cpu['meshd']['cpu_s']:.1f} s)",
                f"{consul['cores']:.2f}" if consul else "—",
                f"{comp['count']} ({_ms(comp['compile_ms'].get('p50'))} p50)",
                f"{_num(comp['pieces_rebuilt'].get('p50'))} / "
                f"{_num(comp['pieces_rebuilt'].get('max'))}",
                f"{b['others_cpu_s']:.1f} s",
                str(b["missing"]) if b["missing"] else "none",
            ]
        )
    lines += _table(
        [
            "Backend",
            "Changes x affected proxies",
            "p50",
            "p99",
            "max",
            "meshd CPU, cores",
            "Consul CPU, cores",
            "Compiles",
            "Pieces rebuilt per compile, p50 / max",
            "Others' CPU",
            "Missing ACKs",
        ],
        rows,
    )
    for b in reg["backends"]:
        if "error" in b:
            continue
        how = (
            f"{b['consul_registrations']['agent']:,} with the agent (TTL checks), "
            f"{b['consul_registrations']['catalog']:,} in the catalog"
            if "consul_registrations" in b
            else "through meshd's API"
        )
        lines.append(
            f"- `{b['backend']}`: {b['instances']:,} instances registered in "
            f"{b['register_s']:.1f} s ({how}); meshd ready (every proxy compiled) "
            f"{b['ready_s']:.1f} s after it listened; max RSS {b['meshd_max_rss_mib']:.0f} MiB; "
            f"{b['compiles']['changes_per_compile']} changes per compile."
        )
    lines += [
        "",
        "Latency = one debounce window (endpoint churn alone batches for 100 ms, then "
        "compiles) + waiting for a compile already running + the incremental compile "
        "(every proxy's snapshot is looked up; only the changed service's piece, its "
        "namespace's outbound and the 30 affected snapshots are rebuilt) + the push. For "
        "consul add the agent's sync of the check to the catalog and the blocking query's "
        "answer.",
        "",
    ]
    return lines


# --- proxy -----------------------------------------------------------------------------------


def _mib(value: Any) -> str:
    return _num(value, " MiB", 1)


def _vcpu(value: Any) -> str:
    return _num(value, "", 3)


DISTURBED_CORES = 0.1
"""Other work above this many cores during a proxy window is called out in the report."""


def _proxy_cases(proxy: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c["case"]: c for c in proxy.get("cases", [])}


def _proxy_summary_rows(proxy: Mapping[str, Any] | None, quick: bool) -> list[list[str]]:
    if proxy is None:
        return []
    if "error" in proxy:
        return [["Proxy: sidecar vs nginx / HAProxy", "", "failed", "**NO**"]]
    t = proxy.get("target_results", {})
    cases = _proxy_cases(proxy)
    rows = []

    def met(key: str) -> str:
        return _met(None if quick else t[key]["met"])

    if "hop_vs_nginx" in t:
        rows.append(
            [
                "Proxy: one sidecar hop's saturation throughput vs nginx's",
                f">= {t['hop_vs_nginx']['target']:g}x",
                f"{t['hop_vs_nginx']['value']:.2f}x ({_num(cases['hop']['saturation']['rps'])} "
                f"vs {_num(cases['nginx']['saturation']['rps'])} req/s)",
                met("hop_vs_nginx"),
            ]
        )
    if "mesh_added_p50_ms" in t:
        rows.append(
            [
                "Proxy: p50 the mesh path adds at 1,000 req/s (vs direct)",
                f"<= {t['mesh_added_p50_ms']['target']:g} ms",
                f"+{t['mesh_added_p50_ms']['value']:.3f} ms",
                met("mesh_added_p50_ms"),
            ]
        )
    if "vcpu_per_1000_rps" in t:
        per = t["vcpu_per_1000_rps"]["value"]
        rows.append(
            [
                "Proxy: vCPU per 1,000 req/s per sidecar (mTLS, metrics on)"
                + (
                    ", as on two hosts"
                    if t["vcpu_per_1000_rps"].get("placement") == "two hosts"
                    else ""
                ),
                f"<= {t['vcpu_per_1000_rps']['target']:.2f}",
                " / ".join(f"{k} {_vcpu(v)}" for k, v in per.items()),
                met("vcpu_per_1000_rps"),
            ]
        )
    if "rss_mib" in t:
        rows.append(
            [
                "Proxy: sidecar peak RSS under load (worst sidecar)",
                f"<= {t['rss_mib']['target']:g} MiB",
                _mib(t["rss_mib"]["worst"]),
                met("rss_mib"),
            ]
        )
    return rows


def _trio_floor_text(hop_vs_nginx: Mapping[str, Any]) -> str:
    """What the least-work Trio proxy reached, when the floor case ran: a floor below
    the target means that no one-process proxy on Trio can meet it on this machine."""
    floor = hop_vs_nginx.get("trio_floor_value")
    if floor is None:
        return ""
    text = (
        f"; the Trio floor: {floor:.2f}x, and the hop reached "
        f"{hop_vs_nginx['share_of_trio_floor']:.0%} of the floor"
    )
    if floor < hop_vs_nginx["target"]:
        text += " (below the target: no Trio-based proxy of one process meets it here)"
    return text


def _proxy_cpu_cells(case: Mapping[str, Any]) -> tuple[str, str, str]:
    """CPU-s per 1,000 requests saturated, at the fixed rate, and peak RSS of the case's
    proxies (several: joined with +)."""
    procs = case["proxies"]
    if not procs:
        return "—", "—", "—"
    return (
        " + ".join(_vcpu(p["cpu_s_per_1000_saturated"]) for p in procs),
        " + ".join(_vcpu(p["cpu_s_per_1000_at_rate"]) for p in procs),
        " + ".join(_mib(p["peak_rss_mib"]) for p in procs),
    )


def _proxy_profile(profile: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Profile of the sidecars",
        "",
        f"{profile.get('why', '')} A new client + server pair ran under the profiler "
        "(`python -m bench.proxy_bench sidecar --profile-dir ...`: the sidecar in-process, "
        "a profiler that SIGUSR1 resumes and SIGUSR2 pauses); set-up and warm-up are not in "
        "the profiles. Profilers slow Python code made of many small calls more than C "
        "code (system calls, TLS): compare shares, not times. Raw profiles are kept beside "
        "this report (`python -m pstats FILE`).",
        "",
    ]
    for window in profile["windows"]:
        title = "fixed rate" if window["window"] == "fixed_rate" else "saturation"
        for prof in window["sidecars"]:
            lines += [
                f"#### {prof['role']}, {title}: {window['load']}",
                "",
                f"Profiler {prof['profiler']} ({prof['clock']} clock); "
                f"{_num(prof['total_own_s'], ' s', 2)} of own time in all; raw profile "
                f"`{prof.get('file', '')}`.",
                "",
            ]
            lines += _table(
                ["Package", "Own", "Share"],
                [
                    [p["package"], _num(p["own_s"], " s", 3), _num(100 * p["share"], " %", 1)]
                    for p in prof["by_package"][:10]
                ],
            )
            keys = ["by_own_time"]
            if window["window"] == "fixed_rate":
                keys.append("by_cumulative_time")
            for key in keys:
                what = "own" if key == "by_own_time" else "cumulative"
                lines += [f"Top functions by {what} time:", ""]
                lines += _table(
                    ["Function", "Calls", "Own", "Cumulative"],
                    [
                        [
                            f"`{r['function']}`",
                            _num(r["calls"]),
                            _num(r["own_s"], " s", 3),
                            _num(r["cumulative_s"], " s", 3),
                        ]
                        for r in prof[key][:12]
                    ],
                )
    return lines


def _proxy(results: Mapping[str, Any]) -> list[str]:
    lines = ["## Proxy", ""]
    proxy = results.get("proxy")
    failed = _failed(proxy, "proxy")
    if failed is not None or proxy is None:
        return lines + (failed or [])
    size = proxy["size"]
    cases = _proxy_cases(proxy)
    quick = bool(results["meta"].get("quick"))
    lines += [
        f"`bench/proxy_bench.py`. Requests: {proxy['request']}. Every case answers from the "
        f"same backend: {proxy['backend']}. Each proxy runs as one process with one thread "
        "of work: nginx with 1 worker and a keep-alive upstream pool, HAProxy with "
        "`nbthread 1` in http mode (keep-alive, `http-reuse always`), and the sidecars as "
        "`mesh-sidecar run` processes of a real `meshd serve` (join tokens, certificates "
        "from the embedded CA, config by long poll; Istio metrics on, access log off: the "
        "defaults). *hop*: the load generator calls a sidecar's outbound listener with "
        "`Host: origin.bench`, a ServiceEntry (MESH_EXTERNAL, STATIC 127.0.0.1) the sidecar "
        "routes to in plaintext — a client-side proxy doing what nginx and HAProxy do here. "
        "*mesh*: the same through a client sidecar, mTLS to a server sidecar (STRICT) and "
        "on to the backend. CPU pinning: " + proxy["pinning"] + "; in the mesh case both "
        "sidecars share the proxy CPU. The mesh case then runs its fixed rate once more "
        "*as on two hosts*: the client sidecar with the load generator on one CPU, the "
        "server sidecar with the backend on the other, each beside its own app as in a "
        "deployment (and in Istio's load tests). Sharing one CPU, every request hands it "
        "from one sidecar to the other and back, each running on caches the other filled; "
        "the per-sidecar CPU target is judged as on two hosts, and both figures are shown. "
        "*floor-trio* and *floor-uvloop* (`bench/floor_proxy.py`) are yardsticks, not "
        "products: the least work an HTTP/1.1 proxy can do (forward each request's head, "
        "frame the response by Content-Length; no routing, header edits, metrics or "
        "pool) on Trio, driven as the sidecar drives it, and on uvloop's protocol "
        "callbacks. The Trio floor is the most a Trio-based proxy of one process reaches here.",
        "",
        f"Per case: {size['warmup_s']:g} s of closed-loop warm-up; **saturation** with "
        f"{proxy['saturation_generator']}, {size['connections']} connections for "
        f"{size['saturation_s']:g} s; {size['rate_warmup_s']:g} s of warm-up at the fixed "
        f"rate; then **{size['rate']:,.0f} requests/s for {size['rate_s']:g} s** with the "
        f"{proxy['rate_generator']} over up to {size['rate_connections']} keep-alive "
        "connections (the most recently freed first), latency from each request's "
        "scheduled send time to its last byte. CPU: user + system seconds of each proxy "
        "process (tree) from `/proc/<pid>/stat` around each window. RSS: `VmHWM` (peak) "
        "after the case.",
        "",
    ]
    rows = []
    nginx_rps = cases.get("nginx", {}).get("saturation", {}).get("rps")
    direct_p50 = cases.get("direct", {}).get("fixed_rate", {}).get("latency_ms", {}).get("p50")
    for case in proxy["cases"]:
        sat = case["saturation"]
        lat = case["fixed_rate"]["latency_ms"]
        sat_cpu, rate_cpu, rss = _proxy_cpu_cells(case)
        added = (
            f"+{lat['p50'] - direct_p50:.3f} ms"
            if direct_p50 is not None and case["case"] != "direct"
            else "—"
        )
        errors = sat["errors"] + case["fixed_rate"]["errors"]
        rows.append(
            [
                case["label"],
                _num(sat["rps"]),
                f"{sat['rps'] / nginx_rps:.2f}x" if nginx_rps else "—",
                _num(case.get("per_proxy_core_rps")),
                " / ".join(f"{lat.get(k, math.nan):.3f}" for k in ("p50", "p90", "p99")),
                added,
                sat_cpu,
                rate_cpu,
                rss,
                str(errors) if errors else "0",
            ]
        )
    lines += _table(
        [
            "Case",
            "Saturation, req/s",
            "vs nginx",
            "Req per proxy CPU-second (saturated)",
            "At 1,000 req/s: p50 / p90 / p99, ms",
            "p50 added vs direct",
            "Proxy CPU-s per 1,000 req, saturated",
            "Proxy vCPU per 1,000 req/s (fixed rate)",
            "Proxy peak RSS",
            "Errors",
        ],
        rows,
    )
    plot = proxy.get("plot") or {}
    if plot.get("file"):
        lines += [f"![Throughput and latency per case]({plot['file']})", ""]
    elif plot.get("error"):
        lines += [f"No plot: {plot['error']}.", ""]

    # Targets.
    t = proxy.get("target_results", {})
    target_rows = []
    if "hop_vs_nginx" in t:
        per_core = t["hop_vs_nginx"].get("per_core_value")
        target_rows.append(
            [
                "One sidecar hop >= 0.8x nginx's saturation throughput",
                f"{t['hop_vs_nginx']['value']:.2f}x"
                + (f" (per proxy CPU-second: {per_core:.2f}x)" if per_core is not None else "")
                + _trio_floor_text(t["hop_vs_nginx"]),
                _met(None if quick else t["hop_vs_nginx"]["met"]),
            ]
        )
    if "mesh_added_p50_ms" in t:
        target_rows.append(
            [
                "The mesh path adds <= 0.5 ms p50 at 1,000 req/s (vs direct)",
                f"+{t['mesh_added_p50_ms']['value']:.3f} ms",
                _met(None if quick else t["mesh_added_p50_ms"]["met"]),
            ]
        )
    if "vcpu_per_1000_rps" in t:
        vcpu = t["vcpu_per_1000_rps"]
        per = vcpu["value"]
        text = ", ".join(f"{k}: {_vcpu(v)}" for k, v in per.items())
        if vcpu.get("placement") == "two hosts":
            one_cpu = ", ".join(f"{_vcpu(v)}" for v in vcpu["one_cpu_value"].values())
            text += f" as on two hosts (both on one CPU: {one_cpu})"
        target_rows.append(
            [
                "<= 0.20 vCPU per 1,000 req/s per sidecar, mTLS and metrics on (mesh case)",
                text,
                _met(None if quick else vcpu["met"]),
            ]
        )
    if "rss_mib" in t:
        rss = t["rss_mib"]["value"]
        target_rows.append(
            [
                "RSS <= 40 MB (MiB) under load, per sidecar",
                ", ".join(f"{k}: {_mib(v)}" for k, v in rss.items()),
                _met(None if quick else t["rss_mib"]["met"]),
            ]
        )
    if target_rows:
        lines += ["Targets (issue 4):", ""]
        lines += _table(["Target", "This run", "Met"], target_rows)
        lines += [f"Anchor: {proxy['anchor']}." + (" Quick run: not judged." if quick else ""), ""]

    # Per process.
    proc_rows = []
    for case in proxy["cases"]:
        for p in case["proxies"]:
            proc_rows.append(
                [
                    case["case"],
                    p["process"],
                    _num(p["saturation_cores"], "", 2),
                    _num(p["cpu_s_per_1000_saturated"] * 1000, " µs", 1),
                    _vcpu(p["cpu_s_per_1000_at_rate"]),
                    _mib(p["peak_rss_mib_saturation"]),
                    _mib(p["peak_rss_mib"]),
                    _mib(p["rss_mib_end"]),
                ]
            )
    if proc_rows:
        lines += ["Per proxy process:", ""]
        lines += _table(
            [
                "Case",
                "Process",
                "CPU while saturated, cores",
                "CPU per request, saturated",
                "vCPU per 1,000 req/s (fixed rate)",
                "Peak RSS after saturation",
                "Peak RSS after the case",
                "RSS at the end",
            ],
            proc_rows,
        )

    # The load side.
    gen_rows = []
    for case in proxy["cases"]:
        fixed = case["fixed_rate"]
        lag = fixed["send_lag_ms"]
        others = case["others_cpu_s"]
        idle = case["idle_processes_cpu_s"]
        gen_rows.append(
            [
                case["case"],
                _num(case["generator"]["saturation_cores"], "", 2),
                _num(case["backend"]["us_per_request"], " µs", 1),
                f"{fixed['achieved_rps']:,.0f}",
                f"{lag.get('p50', math.nan):.3f} / {lag.get('p99', math.nan):.3f}",
                _num(fixed["client_cpu_s"], " s", 2),
                str(fixed["connections_used"]),
                f"{others['saturation']:.2f} / {others['fixed_rate']:.2f} s",
                f"{idle['saturation']:.2f} / {idle['fixed_rate']:.2f} s",
            ]
        )
    lines += ["The load side, and what else ran:", ""]
    lines += _table(
        [
            "Case",
            "Saturation generator CPU, cores",
            "Backend CPU per request (saturated)",
            "Fixed rate achieved, req/s",
            "Send lag p50 / p99, ms",
            "Fixed-rate client CPU",
            "Connections used",
            "Others' CPU (saturation / fixed rate)",
            "Idle run processes' CPU",
        ],
        gen_rows,
    )
    direct = cases.get("direct")
    if direct:
        ceiling = direct["saturation"]["rps"]
        fastest = max(
            (c for c in proxy["cases"] if c["case"] != "direct"),
            key=lambda c: c["saturation"]["rps"],
            default=None,
        )
        sidecars = [c for c in proxy["cases"] if c["case"] in ("hop", "mesh")]
        text = (
            f"Headroom of the load side: *direct* reached {_num(ceiling)} req/s with the "
            f"generator ({_num(direct['generator']['saturation_cores'], '', 2)} cores) and the "
            "backend sharing one CPU; that is the most any case can show."
        )
        if fastest is not None:
            text += (
                f" The fastest proxy, {fastest['case']}, reached "
                f"{fastest['saturation']['rps'] / ceiling:.0%} of it"
                + (
                    " (so its figure is a lower bound: the load side, not the proxy, may be "
                    "the limit)"
                    if fastest["saturation"]["rps"] > 0.8 * ceiling
                    else ""
                )
                + "."
            )
        if sidecars:
            best = max(c["saturation"]["rps"] for c in sidecars)
            text += (
                f" The sidecar cases reached at most {best / ceiling:.0%} of it: the "
                "generator is far from saturating there."
            )
        lines += [
            text + " The fixed-rate client's *send lag* (how late its timer woke for a "
            "request) is part of every latency above, the same in every case.",
            "",
        ]
    size_s = {"saturation": size["saturation_s"], "fixed_rate": size["rate_s"]}
    disturbed = [
        (c["case"], window, c["others_cpu_s"][window] / size_s[window])
        for c in proxy["cases"]
        for window in ("saturation", "fixed_rate")
        if c["others_cpu_s"][window] / size_s[window] > DISTURBED_CORES
    ]
    if disturbed:
        worst = max(disturbed, key=lambda d: d[2])
        lines += [
            f"**Disturbed run**: other work on the machine used more than "
            f"{DISTURBED_CORES:.1f} of a core during {len(disturbed)} of the "
            f"{2 * len(proxy['cases'])} measured windows (worst: {worst[2]:.2f} cores in "
            f"{worst[0]}'s {worst[1].replace('_', ' ')} window). Throughput and latency tails "
            "of those windows are lower and longer than on a quiet machine; *req per proxy "
            "CPU-second* and the CPU per request are much less affected (a proxy's CPU time "
            "counts only while it runs, though shared caches still cost it something)."
            + (
                f" Just before the run, other work used {proxy['busy_before_cores']:.2f} cores."
                if "busy_before_cores" in proxy
                else ""
            ),
            "",
        ]
    mesh = cases.get("mesh")
    if mesh and mesh.get("metrics"):
        parts = [
            f"{label}: {m['requests_total']:,} requests ({', '.join(m['reporters'])}), "
            f"{m['mutual_tls']:,} over mTLS, {m['non_200']:,} not 200"
            for label, m in mesh["metrics"].items()
        ]
        lines += [
            "The mesh case's sidecars' own `istio_requests_total` (since they started, warm-"
            "ups included): " + "; ".join(parts) + ".",
            "",
        ]
    if proxy.get("profile"):
        lines += _proxy_profile(proxy["profile"])
    lines += [f"The proxy benchmark took {_num(proxy.get('duration_s'), ' s', 0)}.", ""]
    return lines


def _how_to_read() -> list[str]:
    return [
        "## How to read this report",
        "",
        "- Times are wall-clock on this machine; every process shares its 2 cores. "
        "`bench/README.md` explains each number.",
        "- Push latencies include the whole path: the apply request (validation, sqlite "
        "commit), the store watch, the ~100 ms debounce, the compile, encoding, and the "
        "transfer. *ACK min* is therefore the floor a single proxy sees; the spread from "
        "min to *last ACK* is the cost of serving every proxy one after another.",
        "- *watchers CPU* well below *meshd CPU* means the simulated sidecars were not "
        "the bottleneck. *others' CPU* is what the rest of the machine used during the "
        "round: well above zero, that round competed for the 2 cores and is slower for "
        "reasons that are not meshd's. *meshd full GCs* are generation-2 collections, "
        "which pause the whole process.",
        "- CA signing: the embedded CA's rate is this process's alone; OpenBao's shares the "
        "2 cores between `bao` and the hvac client, whose CPU per sign is shown apart.",
        "- Proxy: a proxy's saturation throughput is bounded by the load side when it nears "
        "the *direct* figure (the load generator and the backend share one CPU); latency at "
        "1,000 requests/s is measured from each request's scheduled send time, so it "
        "includes the generator's own *send lag* (shown) and any stall of the machine: "
        "*others' CPU* well above zero means other work shared the 2 cores. CPU per 1,000 "
        "requests at the fixed rate is the vCPU a proxy needs per 1,000 requests/s.",
        "- Raw numbers, including every watcher's latency per round, are in "
        "`results.json` beside this file.",
        "",
    ]


def render(results: Mapping[str, Any]) -> str:
    lines = [
        "# meshd benchmarks",
        "",
        f"{results['machine']['date_utc']} · "
        + ("quick run (smoke test sizes)" if results["meta"].get("quick") else "full run")
        + f" · `{results['meta']['command']}`",
        "",
    ]
    parts: list[Callable[[Mapping[str, Any]], list[str]]] = [
        _summary,
        _machine,
        _anchors,
        _compile,
        _push,
        _ca,
        _registry,
        _proxy,
    ]
    for part in parts:
        lines += part(results)
    lines += _how_to_read()
    return "\n".join(lines).rstrip() + "\n"


def write(results: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    md_path = out_dir / "report.md"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    md_path.write_text(render(results))
    return md_path, json_path


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m bench.report RESULTS.json  (writes report.md beside it)")
        return 2
    path = Path(args[0])
    results = json.loads(path.read_text())
    (path.parent / "report.md").write_text(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
