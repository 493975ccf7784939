"""``make run``'s demo sets up a mesh that meshctl can inspect."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.e2e


def test_demo_sets_up_and_stops(tmp_path: Path) -> None:
    port = free_port()
    # A block of 60 ports below Linux's ephemeral range, so no outgoing connection holds one.
    sidecar_ports = random.randrange(20000, 32000, 100)
    done = subprocess.run(
        [sys.executable, "-m", "meshd.demo", "--no-wait", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "demo" / "meshd"),
         "--sidecar-base-port", str(sidecar_ports)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VirtualService default/reviews: created" in done.stdout
    assert "meshctl proxy-status" in done.stdout
    assert done.stdout.count(" SYNCED ") == 6, done.stdout
    assert "stopping the sidecars and meshd" in done.stdout
    assert (tmp_path / "demo" / "meshd" / "admin.token").stat().st_mode & 0o777 == 0o600
