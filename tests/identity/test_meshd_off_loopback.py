"""meshd on a non-loopback address (another host of our own, in a network namespace)
serves HTTPS with its CA-issued certificate, and meshctl verifies it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.meshd_process import MeshdProcess
from tests.support.netns import veth_namespace

pytestmark = pytest.mark.e2e


def meshctl(server: MeshdProcess, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshd.ctl.main", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=server.env(**env),
    )


def test_meshd_off_loopback_serves_https_that_meshctl_verifies(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    with veth_namespace() as other_host:
        server = meshd_factory(
            tmp_path / "data", host=other_host.ip, port=15012, wrap=other_host.exec_argv()
        ).start()
        # Its certificate names the address it listens on, and chains to the mesh CA.
        raw = socket.create_connection((other_host.ip, server.port), timeout=10)
        with server.verify().wrap_socket(raw, server_hostname=other_host.ip) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        cert = x509.load_der_x509_certificate(der)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert other_host.ip in [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]

        ok = meshctl(server, "get", "vs", "-A")
        assert ok.returncode == 0, ok.stderr
        # Without the bundle, meshctl pins it on first contact (with the fingerprint)...
        first = meshctl(server, "version", MESHD_CA_FILE="")
        assert first.returncode == 0, first.stderr
        assert "pinned" in first.stderr
        # ...and never sends a token in cleartext to another host.
        plain = meshctl(server, "get", "vs", MESHD_ADDR=f"http://{other_host.ip}:15012")
        assert plain.returncode == 2
        assert "cleartext" in plain.stderr or "https" in plain.stderr
