"""The data plane end to end, all real processes on loopback: ``meshd serve``, three
``mesh-sidecar run`` (frontend, reviews v1, reviews v2) and the test backends
(``python -m tests.support.apps``). The test plays the frontend app: it calls
``http://reviews:9080/`` through its sidecar (``HTTP_PROXY`` style, absolute-form).

One test walks the acceptance list in order, so the mesh starts once: two services
talk over mTLS and meshd shows every proxy SYNCED; a plaintext client to a STRICT
inbound port is refused; an 80/20 VirtualService split measures within +-3% over 2,000
requests; a header match routes to its subset; SIGKILL of meshd leaves traffic
flowing."""

from __future__ import annotations

import collections
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.sidecar.sidecar_process import SidecarProcess, eventually
from tests.support.meshd_process import MeshdProcess
from tests.support.processes import REPO_ROOT, ManagedProcess, free_port

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


def join_token(api: httpx.Client, service: str, namespace: str) -> str:
    created = api.post(
        "/v1/tokens", json={"service": service, "namespace": namespace, "uses": "multi"}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["token"])


def start_app(tmp_path: Path, host: str, port: int, name: str, version: str) -> ManagedProcess:
    app = ManagedProcess(
        [sys.executable, "-m", "tests.support.apps", "http", "--host", host,
         "--port", str(port), "--name", name, "--version", version],
        name=name,
        cwd=REPO_ROOT,
        log_dir=tmp_path,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return app
        except OSError:
            if not app.alive or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not start\n{app.describe()}") from None
            time.sleep(0.05)


def shared_port(*hosts: str) -> int:
    """A port free on every one of ``hosts`` (two instances of one service listen on
    the same app port, each on its own loopback address)."""
    for _ in range(100):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as sock:
                    sock.bind((host, port))
        except OSError:
            continue
        return port
    raise AssertionError("no port free on all of " + ", ".join(hosts))


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    started: list[Any] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_services_talk_through_sidecars_split_match_and_outlive_meshd(
    tmp_path: Path, meshd_factory: type[MeshdProcess], processes: list[Any]
) -> None:
    ns = "px-" + secrets.token_hex(3)
    meshd = meshd_factory(tmp_path / "meshd").start()
    api = meshd.client()
    app_port = shared_port("127.0.0.2", "127.0.0.3")
    sidecars: dict[str, SidecarProcess] = {}
    for version, host in (("v1", "127.0.0.2"), ("v2", "127.0.0.3")):
        processes.append(start_app(tmp_path, host, app_port, f"reviews-{version}", version))
        sidecars[version] = SidecarProcess(
            meshd.url,
            join_token(api, "reviews", ns),
            tmp_path / f"reviews-{version}",
            ca_file=meshd.ca_file,
            service="reviews",
            namespace=ns,
            app_port=app_port,
            extra_args=["--labels", f"version={version}", "--app-address", host],
        ).start()
        processes.append(sidecars[version])
    frontend = SidecarProcess(
        meshd.url,
        join_token(api, "frontend", ns),
        tmp_path / "frontend",
        ca_file=meshd.ca_file,
        service="frontend",
        namespace=ns,
        app_port=free_port(),
        extra_args=["--access-log", str(tmp_path / "access.log")],
    ).start()
    processes.append(frontend)
    everyone: list[SidecarProcess] = [frontend, *sidecars.values()]

    def describe() -> str:
        return "\n".join([*(p.describe() for p in everyone), meshd.describe()])

    client = httpx.Client(
        proxy=f"http://127.0.0.1:{frontend.outbound_port}", timeout=10.0, trust_env=False
    )
    url = f"http://reviews:{app_port}/"

    def call(**headers: str) -> httpx.Response:
        return client.get(url, headers=headers)

    try:
        for sidecar in everyone:

            def ready(s: SidecarProcess = sidecar) -> bool:
                return s.get("/ready").status_code == 200

            eventually(ready, f"{sidecar.service} ready", describe=describe)

        # 1. Two services talk through their sidecars over mTLS; every proxy is SYNCED.
        def both_versions() -> bool:
            seen = {call().json()["version"] for _ in range(20)}
            return seen == {"v1", "v2"}

        eventually(both_versions, "frontend reaching both reviews instances", describe=describe)
        reply = call()
        assert reply.status_code == 200
        headers = dict(reply.json()["headers"])
        assert headers["x-forwarded-proto"] == "http"  # set by the client sidecar
        assert headers["host"] == f"reviews:{app_port}"
        assert "x-request-id" in headers
        assert "traceparent" in headers

        def all_synced() -> bool:
            items = {i["proxy"]: i for i in api.get("/v1/proxies").json()["items"]}
            ids = [s.dump()["proxy"] for s in everyone]
            return all(items.get(i, {}).get("state") == "SYNCED" for i in ids)

        eventually(all_synced, "meshd showing every proxy SYNCED", describe=describe)
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
        applied = api.post(
            "/v1/apply", content=RULES.format(ns=ns), headers={"Content-Type": "application/yaml"}
        )
        assert applied.status_code == 200, applied.text
        eventually(
            lambda: all(call(**{"end-user": "jason"}).json()["version"] == "v2" for _ in range(10)),
            "the header match routing to v2",
            describe=describe,
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
        meshd.kill()
        statuses = collections.Counter(call().status_code for _ in range(300))
        assert statuses == {200: 300}, statuses
        assert call(**{"end-user": "jason"}).json()["version"] == "v2"

        # 5. SIGTERM drains: a request in flight on v2's sidecar still gets its answer.
        slow: dict[str, Any] = {}

        def slow_call() -> None:
            with httpx.Client(
                proxy=f"http://127.0.0.1:{frontend.outbound_port}", timeout=10.0, trust_env=False
            ) as other:
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
        api.close()
    # The frontend's access log has a JSON line per request (written at its stop).
    frontend.stop()
    lines = (tmp_path / "access.log").read_text().splitlines()
    assert len(lines) > 2000
    assert '"response_code":200' in lines[-1]
