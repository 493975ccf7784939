"""The CA benchmark harness (``python -m bench --only ca``): it runs against both
backends and its report section says what ran, what failed and the target. Speed is
never asserted here."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import ca_bench
from bench.report import SECTIONS, render

pytestmark = pytest.mark.anyio


@pytest.mark.integration
@pytest.mark.slow
async def test_ca_bench_runs_every_backend() -> None:
    results = await ca_bench.run(signs=40, concurrency=4, warmup=5, backends=ca_bench.BACKENDS)
    json.dumps(results)  # what the child prints
    assert [b["backend"] for b in results["backends"]] == list(ca_bench.BACKENDS)
    for backend in results["backends"]:
        assert "error" not in backend, backend.get("error")
        assert backend["signs"] == 40
        assert backend["errors"] == 0
        assert backend["signs_per_s"] > 0
        assert backend["total_cpu_ms_per_sign"] > 0
    openbao = results["backends"][-1]
    assert openbao["server_cpu_s"] > 0
    assert openbao["server_version"] != "unknown"
    assert results["target"]["met"] in (True, False)


def _results(ca: dict[str, Any] | None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "meta": {"command": "python -m bench --only ca", "quick": False, "duration_s": 3.0},
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
    }
    if ca is not None:
        results["ca"] = ca
    return results


def _backend(name: str, rate: float) -> dict[str, Any]:
    return {
        "backend": name,
        "signs": 2000,
        "concurrency": 16,
        "warmup": 50,
        "wall_s": 2000 / rate,
        "signs_per_s": rate,
        "client_cpu_s": 0.3,
        "client_cpu_ms_per_sign": 0.15,
        "total_cpu_ms_per_sign": 0.15,
        "latency_ms": {"n": 2000.0, "min": 0.1, "p50": 0.2, "p90": 0.3, "p99": 0.5, "max": 1.0},
        "errors": 0,
        "first_error": None,
    }


def test_report_section() -> None:
    ca = {
        "signs": 2000,
        "concurrency": 16,
        "target": {"embedded_signs_per_s": 300.0, "met": True},
        "anchors": {"consul_default_limit_per_s": 50.0, "consul_documented_one_core_per_s": 100.0},
        "backends": [
            _backend("embedded", 6800.0),
            _backend("embedded-thread", 2600.0),
            {"backend": "openbao", "error": "bao not found: run `make deps`"},
        ],
    }
    report = render(_results(ca))
    for heading in SECTIONS:
        assert heading in report
    section = report.split("## CA signing", 1)[1].split("## How to read", 1)[0]
    assert "| embedded CA (signs on the event loop: meshd's default) | 6,800 |" in section
    assert "**FAILED**: bao not found: run `make deps`" in section
    assert "Target: >= 300 signs/s embedded — met" in section
    assert "50 CSR/s" in section
    summary = report.split("## Summary", 1)[1].split("## Machine", 1)[0]
    assert "6,800 signs/s | **yes**" in summary
    assert "CSR signing, openbao |  | failed | **NO**" in summary


def test_report_when_the_ca_bench_did_not_run_or_failed() -> None:
    assert "Not run (`--only` excluded the CA benchmark)" in render(_results(None))
    failed = render(_results({"error": "bench.ca_bench exited with 1"}))
    assert "**FAILED**: bench.ca_bench exited with 1" in failed
