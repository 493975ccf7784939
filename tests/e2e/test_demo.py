"""``make run``'s demo sets up a mesh that meshctl can inspect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import free_port

pytestmark = pytest.mark.e2e


def test_demo_sets_up_and_stops(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "meshd.demo", "--no-wait", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VirtualService default/reviews: created" in done.stdout
    assert "meshctl proxy-status" in done.stdout
    assert "stopping meshd" in done.stdout
    assert (tmp_path / "demo" / "admin.token").stat().st_mode & 0o777 == 0o600
