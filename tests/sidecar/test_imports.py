"""The sidecar never imports pydantic or FastAPI (DESIGN.md): it reads snapshots into
frozen dataclasses with the codec, not with meshd's models."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.processes import REPO_ROOT

FORBIDDEN = ("pydantic", "fastapi", "starlette", "uvicorn", "click", "pygments", "cryptography")
"""meshd's web stack, httpx's command-line tool and cryptography (8 MB: keys are made by
the ``sidecar.keygen`` helper process): memory for code a sidecar never runs."""


def test_sidecar_imports_no_pydantic_or_fastapi() -> None:
    code = (
        "import json, sys\n"
        "import sidecar.cli, sidecar.agent, sidecar.admin, sidecar.config_store\n"
        "import sidecar.control_client, sidecar.settings, sidecar.errors\n"
        "import sidecar.identity, sidecar.identity_state, sidecar.tls_contexts\n"
        "import sidecar.proxy, sidecar.proxy.bench, sidecar.telemetry, sidecar.keygen\n"
        "import sidecar.workers.child, sidecar.workers.supervisor, sidecar.x509_reader\n"
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
    assert leaked == [], f"the sidecar pulled in {leaked}"
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
