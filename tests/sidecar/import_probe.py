"""Run by ``test_imports.py`` in a fresh interpreter: import the sidecar, optionally send
its control traffic (to closed ports: the requests fail, which is enough to load what
sending loads), then print the loaded modules as a JSON list. Imports nothing of the
tests' own (their helpers use httpx)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import tempfile
from pathlib import Path

import trio

import sidecar.admin
import sidecar.cli
import sidecar.config_store
import sidecar.identity_state
import sidecar.keygen
import sidecar.proxy
import sidecar.proxy.bench
import sidecar.settings
import sidecar.telemetry
import sidecar.tls_contexts
import sidecar.workers
import sidecar.workers.child
import sidecar.workers.supervisor
import sidecar.x509_reader
from registry.consul_writer import ConsulWriter
from sidecar.agent import ConsulRegistrar, RegistryUnavailable
from sidecar.consul_agent import ConsulAgentClient
from sidecar.control_client import ControlClient, Registration
from sidecar.errors import ControlPlaneError
from sidecar.identity import IdentityManager, SigningUnavailable

LOADED = (
    sidecar.admin,
    sidecar.cli,
    sidecar.config_store,
    sidecar.identity_state,
    sidecar.keygen,
    sidecar.proxy,
    sidecar.proxy.bench,
    sidecar.settings,
    sidecar.telemetry,
    sidecar.tls_contexts,
    sidecar.workers,
    sidecar.workers.child,
    sidecar.workers.supervisor,
    sidecar.x509_reader,
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def control_traffic() -> None:
    """A long poll, a certificate request and a Consul registration, each refused."""
    url = f"https://127.0.0.1:{closed_port()}"
    context = ssl.create_default_context()
    async with ControlClient(url, lambda: context) as client:
        with contextlib.suppress(ControlPlaneError):
            await client.poll("p-1.n", "", 1.0)
    with tempfile.TemporaryDirectory() as state:
        manager = IdentityManager(
            meshd_url=url,
            join_token="t",
            proxy_id="p-1.n",
            service="p",
            namespace="n",
            state_dir=Path(state),
            trust_domain="cluster.local",
        )
        with contextlib.suppress(SigningUnavailable):
            await manager.renew_now()
    consul = ConsulAgentClient(f"127.0.0.1:{closed_port()}")
    registrar = ConsulRegistrar(ConsulWriter(consul))
    registration = Registration("p", "n", "127.0.0.1", 15006, 8080, "http")
    with contextlib.suppress(RegistryUnavailable):
        await registrar.register("p-1.n", registration, None)


if __name__ == "__main__":
    if sys.argv[1:] == ["--send"]:
        trio.run(control_traffic)
    print(json.dumps(sorted(sys.modules)))
