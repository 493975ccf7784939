"""The data plane end to end, all real processes on loopback: ``meshd serve``, three
``mesh-sidecar run`` (frontend, reviews v1, reviews v2) and the test backends
(``python -m tests.support.apps``). The test plays the frontend app: it calls
``http://reviews:9080/`` through its sidecar (``HTTP_PROXY`` style, absolute-form).

One test walks the acceptance list in order, so the mesh starts once: two services
talk over mTLS and meshd shows every proxy SYNCED; a plaintext client to a STRICT
inbound port is refused; an 80/20 VirtualService split measures within +-3% over 2,000
requests; a header match routes to its subset; SIGKILL of meshd leaves traffic
flowing. The processes come from ``tests.e2e.mesh`` (shared with tests/e2e/test_mesh_*)."""

from __future__ import annotations

import collections
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.mesh import Mesh, shared_port
from tests.sidecar.sidecar_process import SidecarProcess
from tests.support.meshd_process import MeshdProcess

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {{version: v1}}
  - name: v2
    labels: {{version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {{exact: jason}}
    route:
    - destination: {{host: reviews, subset: v2}}
  - name: split
    route:
    - destination: {{host: reviews, subset: v1}}
      weight: 80
    - destination: {{host: reviews, subset: v2}}
      weight: 20
"""


@pytest.fixture
def mesh(tmp_path: Path, meshd_factory: type[MeshdProcess]) -> Iterator[Mesh]:
    namespace = "px-" + secrets.token_hex(3)
    with Mesh(tmp_path, namespace=namespace, meshd=meshd_factory(tmp_path / "meshd")) as started:
        yield started


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_services_talk_through_sidecars_split_match_and_outlive_meshd(
    tmp_path: Path, mesh: Mesh
) -> None:
    ns = mesh.namespace
    app_port = shared_port("127.0.0.2", "127.0.0.3")
    sidecars: dict[str, SidecarProcess] = {}
    for version, host in (("v1", "127.0.0.2"), ("v2", "127.0.0.3")):
        app = mesh.backend(f"reviews-{version}", host=host, port=app_port, version=version)
        sidecars[version] = mesh.sidecar("reviews", app=app, labels={"version": version})
    frontend = mesh.sidecar("frontend", extra_args=["--access-log", str(tmp_path / "access.log")])
    everyone: list[SidecarProcess] = [frontend, *sidecars.values()]

    client = mesh.http_client(frontend)
    url = f"http://reviews:{app_port}/"

    def call(**headers: str) -> httpx.Response:
        return client.get(url, headers=headers)

    try:
        mesh.wait_ready()

        # 1. Two services talk through their sidecars over mTLS; every proxy is SYNCED.
        def both_versions() -> bool:
            seen = {call().json()["version"] for _ in range(20)}
            return seen == {"v1", "v2"}

        mesh.eventually(both_versions, "frontend reaching both reviews instances")
        reply = call()
        assert reply.status_code == 200
        headers = dict(reply.json()["headers"])
        assert headers["x-forwarded-proto"] == "http"  # set by the client sidecar
        assert headers["host"] == f"reviews:{app_port}"
        assert "x-request-id" in headers
        assert "traceparent" in headers

        mesh.wait_synced(everyone)
        metrics = frontend.metrics()
        assert any(
            k.startswith("istio_requests_total{")
            and 'reporter="source"' in k
            and 'connection_security_policy="mutual_tls"' in k
            for k in metrics
        ), metrics

        # 2. A plaintext client to a STRICT inbound port is refused.
        with socket.create_connection(("127.0.0.1", sidecars["v1"].inbound_port), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/1.1\r\nHost: reviews\r\n\r\n")
            try:
                answer = raw.recv(1024)
            except ConnectionResetError:  # closed with the request unread: a reset
                answer = b""
            assert answer == b""

        # 3. The 80/20 split and the header match.
        mesh.apply(RULES.format(ns=ns))
        mesh.eventually(
            lambda: all(call(**{"end-user": "jason"}).json()["version"] == "v2" for _ in range(10)),
            "the header match routing to v2",
        )
        counts: collections.Counter[str] = collections.Counter()
        for _ in range(2000):
            r = call()
            assert r.status_code == 200
            counts[r.json()["version"]] += 1
        share = counts["v1"] / 2000
        assert 0.77 <= share <= 0.83, counts
        assert all(call(**{"end-user": "jason"}).json()["version"] == "v2" for _ in range(50))

        # 4. meshd dies: the sidecars keep serving their config.
        mesh.kill_meshd()
        statuses = collections.Counter(call().status_code for _ in range(300))
        assert statuses == {200: 300}, statuses
        assert call(**{"end-user": "jason"}).json()["version"] == "v2"

        # 5. SIGTERM drains: a request in flight on v2's sidecar still gets its answer.
        slow: dict[str, Any] = {}

        def slow_call() -> None:
            with mesh.http_client(frontend) as other:
                slow["reply"] = other.get(f"http://reviews:{app_port}/delay/800",
                                          headers={"end-user": "jason"})  # fmt: skip

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert sidecars["v2"].stop() == 0
        caller.join(10)
        assert slow["reply"].status_code == 200
        assert slow["reply"].json()["version"] == "v2"
        assert time.monotonic() - t0 < 5.0
        assert "draining the proxy" in sidecars["v2"].log_text()
    finally:
        client.close()
    # The frontend's access log has a JSON line per request (written at its stop).
    frontend.stop()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) > 2000
    assert '"response_code":200' in lines[-1]
