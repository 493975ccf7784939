"""The sidecar never imports pydantic or FastAPI (DESIGN.md): it reads snapshots into
frozen dataclasses with the codec, not with meshd's models. Nor httpx and its stack: its
control traffic goes through its own small client (``sidecar.http_client``), and those
libraries would cost every sidecar process 5-6 MB. Nor cryptography (8 MB): keys are made
by the ``sidecar.keygen`` helper process and certificates read by
``sidecar.x509_reader``."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import REPO_ROOT

FORBIDDEN = (
    # meshd's web stack
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    # httpx and what it brings (the sidecar has its own client); click and pygments are
    # httpx's command-line tool
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "certifi",
    "click",
    "pygments",
    # 8 MB: keys and CSRs are made by the short-lived ``sidecar.keygen`` helper process
    "cryptography",
)
"""Memory for code the sidecar never runs."""


def imported_by(*args: str) -> list[str]:
    """The modules loaded by :mod:`tests.sidecar.import_probe` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.sidecar.import_probe", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout)
    return modules


def leaked(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in FORBIDDEN]


def test_sidecar_imports_no_pydantic_fastapi_or_httpx() -> None:
    modules = imported_by()
    assert leaked(modules) == [], f"the sidecar pulled in {leaked(modules)}"
    from_meshd = {m for m in modules if m.split(".")[0] == "meshd"}
    allowed = {
        "meshd",
        "meshd.compile",
        "meshd.compile.snapshot",
        "meshd.compile.codec",
        "meshd.compile.check",
        "meshd.schema",
        "meshd.schema.hosts",
        "meshd.netaddr",
        "meshd.spiffe",  # stdlib only: SPIFFE IDs (sidecar.identity)
        "meshd.fdlimit",  # stdlib only: the open-file limit (sidecar.cli)
    }
    assert from_meshd <= allowed, f"unexpected meshd modules: {sorted(from_meshd - allowed)}"
    assert "sidecar.cli" in modules


def test_the_control_traffic_loads_no_httpx_either() -> None:
    """Running, too: a long poll, a certificate request and a Consul registration load
    nothing forbidden (httpx loaded httpcore, h11 and certifi only when it first
    connected)."""
    modules = imported_by("--send")
    assert "sidecar.http_client" in modules
    assert leaked(modules) == [], f"the sidecar's requests pulled in {leaked(modules)}"
