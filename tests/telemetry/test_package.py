"""The telemetry package stays free of I/O frameworks, and its benchmark runs."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import REPO_ROOT

FORBIDDEN = ("trio", "anyio", "pydantic", "fastapi", "starlette", "uvicorn", "prometheus_client")


def test_telemetry_imports_no_framework() -> None:
    code = (
        "import json, sys\n"
        "import sidecar.telemetry, sidecar.telemetry.bench\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules = json.loads(done.stdout)
    leaked = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert leaked == [], f"sidecar.telemetry pulled in {leaked}"
    assert not [m for m in modules if m.split(".")[0] == "meshd"]


def test_bench_prints_ns_per_record() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.telemetry.bench", "--seconds", "0.02"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for row in ("record(), warm label set, no access log", "AccessLog.format()",
                "tcp_opened() + tcp_closed()", "render():"):  # fmt: skip
        assert row in done.stdout, done.stdout
