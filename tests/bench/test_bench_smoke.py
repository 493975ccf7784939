"""``python -m bench --quick`` end to end: it runs, cleans up, and writes a report that
holds every section. Speed is never asserted here; the report states the targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import T0_ENV
from bench.proxy_bench import CASES
from bench.report import SECTIONS, render

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_quick_bench_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k != T0_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-6000:]}"

    # Progress: one line per phase, on stderr.
    for phase in ("compile", "push N=10", "push N=20", "proxy direct", "proxy mesh", "done in"):
        assert phase in done.stderr, done.stderr

    report = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in report, f"{heading!r} missing from the report"
    for heading in ("### 10 watchers", "### 20 watchers"):
        assert heading in report
    assert "FAILED" not in report

    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    machine = results["machine"]
    for key in ("cpu_model", "cores", "python", "date_utc"):
        assert machine[key], key
    assert results["anchors"]

    comp = results["compile"]
    assert comp["full"]["stats"][0]["errors"] == 0
    assert len(comp["full"]["runs_ms"]) == 3
    for case in ("one_rule_change", "endpoint_change", "noop_recompile"):
        assert comp[case]["stats"], case
    assert comp["memory"]["tracemalloc_peak_mib"] > 0
    assert comp["memory"]["max_rss_mib"] > 0

    push = results["push"]
    assert [s["watchers"] for s in push["sizes"]] == [10, 20]
    for size in push["sizes"]:
        assert "error" not in size, size.get("error")
        assert size["warmup"]["missing"] == 0
        for r in size["rounds"]:
            # Every watcher got the new snapshot and ACKed it, once.
            assert r["missing"] == 0
            assert r["extra_pushes"] == 0
            assert len(r["raw_to_ack_ms"]) == size["watchers"]
        assert size["meshd"]["max_rss_mib"] > 0
        assert size["watcher_process"]["errors"] == 0

    check_proxy_section(results["proxy"], out)

    # The markdown is a pure function of the JSON.
    assert render(results) == report


def check_proxy_section(proxy: dict[str, Any], out: Path) -> None:
    """Every case ran, error-free, through the proxies it names; the numbers that the
    targets are judged on are there (their values are not judged here)."""
    assert "error" not in proxy, proxy.get("error")
    cases = {c["case"]: c for c in proxy["cases"]}
    assert list(cases) == list(CASES)
    for name, case in cases.items():
        sat, fixed = case["saturation"], case["fixed_rate"]
        assert sat["requests"] > 0, (name, sat)
        assert sat["errors"] == 0, (name, sat)
        assert fixed["errors"] == 0, (name, fixed)
        # Open loop: every scheduled request was sent and answered.
        assert fixed["requests"] == int(proxy["size"]["rate"] * proxy["size"]["rate_s"]), name
        assert fixed["latency_ms"]["p50"] > 0
        assert len(case["proxies"]) == {"direct": 0, "mesh": 2}.get(name, 1), name
        for p in case["proxies"]:
            # The proxy did the work: it used CPU, and has a resident set.
            assert p["saturation_cpu_s"] > 0, (name, p)
            assert p["peak_rss_mib"] > 0, (name, p)
    # The mesh case really went client sidecar -> mTLS -> server sidecar, metrics on.
    metrics = cases["mesh"]["metrics"]
    assert metrics["client sidecar"]["reporters"] == ["source"]
    assert metrics["server sidecar"]["reporters"] == ["destination"]
    for side in metrics.values():
        assert side["requests_total"] >= cases["mesh"]["saturation"]["requests"]
        assert side["mutual_tls"] == side["requests_total"]
        assert side["non_200"] == 0
    assert cases["hop"]["metrics"]["hop sidecar"]["requests_total"] > 0
    targets = proxy["target_results"]
    assert set(targets) == {"hop_vs_nginx", "mesh_added_p50_ms", "vcpu_per_1000_rps", "rss_mib"}
    # The hop is set beside the floor of its event loop, which ran as a real proxy.
    floor_rps = cases["floor-trio"]["saturation"]["rps"]
    hop = targets["hop_vs_nginx"]
    assert hop["trio_floor_value"] == round(floor_rps / cases["nginx"]["saturation"]["rps"], 4)
    assert hop["share_of_trio_floor"] == round(cases["hop"]["saturation"]["rps"] / floor_rps, 4)
    # Pinned (two CPUs): the mesh case's fixed rate ran again as on two hosts, and the
    # per-sidecar CPU target is judged on it.
    two = cases["mesh"].get("fixed_rate_two_hosts")
    if proxy["pinning"].startswith("proxies on CPU"):
        assert two is not None
        assert two["errors"] == 0
        assert set(two["per_1000"]) == {"client sidecar", "server sidecar"}
        assert all(v > 0 for v in two["per_1000"].values())
        assert targets["vcpu_per_1000_rps"]["placement"] == "two hosts"
        assert targets["vcpu_per_1000_rps"]["value"] == two["per_1000"]
    else:
        assert two is None
        assert targets["vcpu_per_1000_rps"]["placement"] == "one CPU"
    # The plot: a PNG beside the report.
    assert proxy["plot"] == {"file": "proxy.png"}
    assert (out / "proxy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_says_what_did_not_run_or_failed() -> None:
    results: dict[str, Any] = {
        "meta": {"command": "python -m bench --only push", "quick": False, "duration_s": 1.0},
        "machine": {
            "cpu_model": "test CPU",
            "cores": 2,
            "cores_usable": 2,
            "memory_gib": 1.0,
            "python": "CPython 3.11",
            "platform": "Linux",
            "date_utc": "2020-01-01 00:00:00 UTC",
            "git_commit": "abc1234",
            "packages": {},
        },
        "anchors": ["an anchor"],
        "push": {"error": "meshd exited while starting"},
    }
    report = render(results)
    for heading in SECTIONS:
        assert heading in report
    assert "Not run" in report  # compile was excluded
    assert "**FAILED**: meshd exited while starting" in report


def _proxy_case(name: str, rps: float, p50: float, procs: list[str]) -> dict[str, Any]:
    lat = {"n": 10000, "mean": p50, "p50": p50, "p90": p50 * 2, "p99": p50 * 4}
    return {
        "case": name,
        "label": name,
        "host": "origin.bench",
        "saturation": {"generator": "wrk", "requests": int(rps * 10), "duration_s": 10.0,
                       "rps": rps, "errors": 0, "latency_ms": {}, "generator_cpu_s": 1.0},
        "fixed_rate": {"requests": 10000, "achieved_rps": 1000.0, "errors": 0,
                       "latency_ms": lat, "send_lag_ms": {"p50": 0.03, "p99": 0.1},
                       "client_cpu_s": 0.5, "connections_used": 3},
        "proxies": [
            {"process": p, "saturation_cpu_s": 9.0, "saturation_cores": 0.9,
             "cpu_s_per_1000_saturated": 0.1, "rate_cpu_s": 2.5, "cpu_s_per_1000_at_rate": 0.25,
             "peak_rss_mib_saturation": 50.0, "peak_rss_mib": 51.0, "rss_mib_end": 50.5}
            for p in procs
        ],
        "backend": {"saturation_cpu_s": 0.5, "us_per_request": 6.0},
        "generator": {"saturation_cores": 0.1, "rate_client_cpu_s": 0.5},
        "idle_processes_cpu_s": {"saturation": 0.0, "fixed_rate": 0.0},
        "others_cpu_s": {"saturation": 0.1, "fixed_rate": 0.0},
    }  # fmt: skip


def test_proxy_section_renders_targets_and_profiles() -> None:
    """The proxy section from a hand-made result (a quick run neither judges targets nor
    profiles): every case, each target with met / not met, and the sidecar profiles."""
    top = [{"function": "streams.py:10(send)", "file": "x", "calls": 5, "own_s": 0.5,
            "cumulative_s": 0.9}]  # fmt: skip
    prof = {"profiler": "yappi", "clock": "cpu", "threads": [], "total_own_s": 1.0,
            "by_package": [{"package": "sidecar.proxy", "own_s": 0.6, "share": 0.6}],
            "by_own_time": top, "by_cumulative_time": top}  # fmt: skip
    proxy = {
        "size": {"warmup_s": 2, "saturation_s": 10, "connections": 64, "rate": 1000,
                 "rate_warmup_s": 1, "rate_s": 10, "rate_connections": 32},
        "request": "GET", "backend": "nginx", "pinning": "proxies on CPU 1",
        "saturation_generator": "wrk", "rate_generator": "python", "anchor": "Istio",
        "cases": [
            _proxy_case("direct", 80000, 0.1, []),
            _proxy_case("nginx", 40000, 0.2, ["nginx"]),
            _proxy_case("haproxy", 45000, 0.2, ["haproxy"]),
            _proxy_case("floor-trio", 20000, 0.25, ["floor-trio"]),
            _proxy_case("hop", 8000, 0.3, ["hop sidecar"]),
            _proxy_case("mesh", 4000, 0.5, ["client sidecar", "server sidecar"]),
        ],
        "target_results": {
            "hop_vs_nginx": {"target": 0.8, "value": 0.2, "met": False,
                             "trio_floor_value": 0.5, "share_of_trio_floor": 0.4},
            "mesh_added_p50_ms": {"target": 0.5, "value": 0.4, "met": True},
            "vcpu_per_1000_rps": {"target": 0.2, "value": {"client sidecar": 0.25},
                                  "worst": 0.25, "met": False},
            "rss_mib": {"target": 40.0, "value": {"mesh: client sidecar": 51.0}, "worst": 51.0,
                        "met": False},
        },
        "plot": {"file": "proxy.png"},
        "profile": {"why": "A sidecar target was missed.", "windows": [
            {"window": w, "load": "1,000 requests/s", "sidecars": [
                {**prof, "role": "client sidecar", "file": "sidecar-client.prof"}]}
            for w in ("fixed_rate", "saturation")]},
        "duration_s": 170.0,
    }  # fmt: skip
    results: dict[str, Any] = {
        "meta": {"command": "python -m bench --only proxy", "quick": False, "duration_s": 1.0},
        "machine": {"cpu_model": "test CPU", "cores": 2, "cores_usable": 2, "memory_gib": 1.0,
                    "python": "CPython 3.11", "platform": "Linux",
                    "date_utc": "2020-01-01 00:00:00 UTC", "git_commit": "abc1234",
                    "packages": {}},
        "anchors": ["an anchor"],
        "proxy": proxy,
    }  # fmt: skip
    report = render(results)
    section = report.split("## Proxy", 1)[1].split("## How to read", 1)[0]
    for case in ("direct", "nginx", "haproxy", "floor-trio", "hop", "mesh"):
        assert f"| {case} |" in section
    assert (
        "| One sidecar hop >= 0.8x nginx's saturation throughput | 0.20x; the Trio floor: "
        "0.50x, and the hop reached 40% of the floor (below the target: no Trio-based proxy "
        "of one process meets it here) | **NO** |"
    ) in section
    assert "+0.400 ms | **yes** |" in section
    assert "![Throughput and latency per case](proxy.png)" in section
    assert "#### client sidecar, fixed rate: 1,000 requests/s" in section
    assert "#### client sidecar, saturation: 1,000 requests/s" in section
    assert "`streams.py:10(send)`" in section
    summary = report.split("## Summary", 1)[1].split("## Machine", 1)[0]
    assert "Proxy: one sidecar hop's saturation throughput vs nginx's" in summary
    assert summary.count("**NO**") == 3
