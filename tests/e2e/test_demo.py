"""``make run``'s demo sets up a mesh that meshctl can inspect: meshd over HTTPS, every
sidecar with its own certificate (got with its service's join token) and SYNCED."""

from __future__ import annotations

import os
import random
import re
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
    out = done.stdout
    data_dir = tmp_path / "demo" / "meshd"
    assert f"starting meshd on https://127.0.0.1:{port}" in out
    # One join token per service: productpage, details, ratings, reviews.
    assert len(re.findall(r"^ +\S+ +join token \S+ for spiffe://", out, re.MULTILINE)) == 4, out
    assert "VirtualService default/reviews: created" in out
    assert "meshctl proxy-status" in out
    assert out.count(" SYNCED ") == 6, out
    # Every sidecar holds a certificate for its service's identity (GET /v1/certs).
    certs = re.findall(r"^ +(\S+\.default) +(spiffe://\S+) +expires in ", out, re.MULTILINE)
    assert sorted(certs) == sorted(
        (proxy, f"spiffe://cluster.local/ns/default/sa/{service}")
        for proxy, service in [
            ("productpage-1.default", "productpage"),
            ("details-1.default", "details"),
            ("ratings-1.default", "ratings"),
            ("reviews-v1.default", "reviews"),
            ("reviews-v2.default", "reviews"),
            ("reviews-v3.default", "reviews"),
        ]
    ), out
    assert "6 of 6 sidecars hold a certificate" in out
    # What to try: meshctl against HTTPS meshd, with the env that verifies it.
    assert f"export MESHD_ADDR=https://127.0.0.1:{port} MESHD_TOKEN=$(cat " in out
    assert f"MESHD_CA_FILE={data_dir / 'ca-bundle.pem'}" in out
    assert "meshctl certs" in out
    assert "stopping the sidecars and meshd" in out
    assert (data_dir / "admin.token").stat().st_mode & 0o777 == 0o600
    for sidecar in (tmp_path / "demo" / "sidecars").iterdir():
        assert (sidecar / "identity.json").stat().st_mode & 0o777 == 0o600, sidecar
    # The join tokens went through the environment, not the command line.
    assert "mjt_" not in out
