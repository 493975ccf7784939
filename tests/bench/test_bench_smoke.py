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
    for phase in ("compile", "push N=10", "push N=20", "done in"):
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

    # The markdown is a pure function of the JSON.
    assert render(results) == report


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
