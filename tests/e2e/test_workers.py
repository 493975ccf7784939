"""``mesh-sidecar run --workers 2`` end to end, all real processes on loopback: one
``meshd serve``, a ``web`` sidecar in front of an HTTP echo backend and a ``client``
sidecar the test plays the app of, both with two processes on their ports
(SO_REUSEPORT).

One test walks the list in order, so the mesh starts once: both processes of each
sidecar take connections; the summed ``istio_requests_total`` counts exactly the
requests sent; a route change reaches both processes before meshd shows it ACKed;
a worker killed with SIGKILL is restarted, traffic goes on and the counters do not go
down; SIGTERM drains every process and the sidecar exits 0."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import Mesh
from tests.sidecar.sidecar_process import SidecarProcess
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import LOOPBACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - headers:
      request:
        set: {x-route: changed}
    route: [{destination: {host: web}}]
"""

FRESH_CONNECTIONS = 200


@pytest.fixture
def mesh(tmp_path: Path, meshd_factory: type[MeshdProcess]) -> Iterator[Mesh]:
    namespace = "wk-" + secrets.token_hex(3)
    with Mesh(tmp_path, namespace=namespace, meshd=meshd_factory(tmp_path / "meshd")) as started:
        yield started


def fresh_client(sidecar: SidecarProcess) -> httpx.Client:
    """Through ``sidecar``'s outbound port, a new connection per request: the kernel
    picks a listening socket (a process) per connection."""
    return httpx.Client(
        proxy=f"http://{LOOPBACK}:{sidecar.outbound_port}",
        timeout=10.0,
        trust_env=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def requests_total(sidecar: SidecarProcess, reporter: str) -> int:
    return sum(
        int(value)
        for name, value in sidecar.metrics().items()
        if name.startswith("istio_requests_total{") and f'reporter="{reporter}"' in name
    )


def workers(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = sidecar.dump()["workers"]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_serve_sum_metrics_gate_acks_restart_and_drain(mesh: Mesh) -> None:
    web_app = mesh.backend("web")
    web = mesh.sidecar("web", app=web_app, extra_args=["--workers", "2"])
    client = mesh.sidecar("client", extra_args=["--workers", "2", "--drain-timeout", "2"])
    mesh.wait_ready()
    url = f"http://web:{web_app.port}/"

    with fresh_client(client) as http:

        def get() -> httpx.Response:
            return http.get(url)

        mesh.eventually(lambda: get().status_code == 200, "the client reaching web")

        # 1. Both processes of each sidecar accept connections, and the summed request
        # counter is exact: K requests sent, K more counted (on each side).
        before = {
            "client": requests_total(client, "source"),
            "web": requests_total(web, "destination"),
        }
        for _ in range(FRESH_CONNECTIONS):
            assert get().status_code == 200
        assert requests_total(client, "source") - before["client"] == FRESH_CONNECTIONS
        assert requests_total(web, "destination") - before["web"] == FRESH_CONNECTIONS
        for sidecar in (client, web):
            table = workers(sidecar)
            assert [w["worker"] for w in table] == [0, 1], table
            assert all(w["state"] == "serving" for w in table), table
            if sidecar is client:
                # Fresh connections from the test spread over both processes; web's come
                # from the client's keep-alive pools, a few that the kernel may well
                # hand to one process.
                assert all(w["connections"] > 0 for w in table), table
                assert all(w["requests"] > 0 for w in table), table
            assert table[0]["pid"] != table[1]["pid"], table
            # The join token stays with the main process (a worker never talks to meshd).
            assert b"MESH_TOKEN=" not in Path(f"/proc/{table[1]['pid']}/environ").read_bytes()

        # 2. A route change reaches both client processes before meshd shows it ACKed.
        proxy = mesh.proxy_id(client)

        def acked() -> str | None:
            items = {i["proxy"]: i for i in mesh.api.get("/v1/proxies").json()["items"]}
            version: str | None = items[proxy].get("ackedVersion")
            return version

        old = acked()
        mesh.apply(ROUTE)
        new = mesh.eventually(lambda: (v := acked()) != old and v, "meshd showing a new ACK")
        assert {w["version"] for w in workers(client)} == {new}
        replies = [get() for _ in range(40)]
        assert all(dict(r.json()["headers"]).get("x-route") == "changed" for r in replies)

        # 3. SIGKILL a worker: it is restarted, traffic goes on, no counter goes down.
        counted = requests_total(client, "source")
        victim = workers(client)[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        mesh.eventually(
            lambda: (w := workers(client)[1])["pid"] != victim and w["state"] == "serving",
            "the killed worker restarted and serving",
        )
        assert workers(client)[1]["restarts"] == 1
        assert requests_total(client, "source") == counted
        for _ in range(100):
            assert get().status_code == 200
        assert requests_total(client, "source") == counted + 100
        table = workers(client)
        assert all(w["connections"] > 0 for w in table), table
        assert client.get("/ready").status_code == 200
        assert "worker 1 (pid" in client.log_text()
        assert "exited with signal SIGKILL; restarting it" in client.log_text()

    # 4. SIGTERM: every process drains, the workers exit, the sidecar exits 0.
    pids = [w["pid"] for w in workers(client)]
    started = time.monotonic()
    assert client.stop() == 0
    assert time.monotonic() - started < 10
    assert not any(alive(pid) for pid in pids)
    assert "draining 1 worker process(es)" in client.log_text()
