"""``meshd serve`` with the embedded registry (the default): heartbeats through the API
keep instances in the catalog; an instance that misses them leaves every peer's
endpoints within two check intervals, an unhealthy one at once; a restarted meshd keeps
the catalog; replicas on one Consul store see each other's registrations."""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.registry.e2e_support import ProxyWatch, endpoint_ids, fqdn
from tests.support.components import ConsulAgent
from tests.support.meshd_process import MeshdProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

INTERVAL_S = 1.0
PUSH_SLACK_S = 0.5
"""Debounce (20 ms in tests), compile and the push, on top of the expiry itself."""


def body(service: str, ns: str, port: int, **extra: Any) -> dict[str, Any]:
    out = {
        "service": service,
        "namespace": ns,
        "address": "127.0.0.1",
        "port": port,
        "appPort": 8080,
        "labels": {"version": "v1"},
    }
    out.update(extra)
    return out


def put(api: httpx.Client, iid: str, doc: dict[str, Any]) -> dict[str, Any]:
    reply = api.put(f"/v1/instances/{iid}", json=doc)
    assert reply.status_code == 200, reply.text
    out: dict[str, Any] = reply.json()
    return out


def test_heartbeats_health_and_expiry(tmp_path: Path, meshd_factory: type[MeshdProcess]) -> None:
    ns = f"e{secrets.token_hex(3)}"
    meshd = meshd_factory(tmp_path / "meshd").start()
    ttl = 2 * INTERVAL_S
    with meshd.client() as api:
        # An old client's body (no healthy, no ttlSeconds): healthy, 90 s.
        assert put(api, f"web-1.{ns}", body("web", ns, 22001))["ttlSeconds"] == 90
        first = put(api, f"api-1.{ns}", body("api", ns, 22011, ttlSeconds=ttl))
        assert (first["outcome"], first["registry"]) == ("created", "embedded")
        put(api, f"api-2.{ns}", body("api", ns, 22012, ttlSeconds=ttl))
        proxy = ProxyWatch(api, f"web-1.{ns}")
        host = fqdn("api", ns)
        both = frozenset({f"api-1.{ns}", f"api-2.{ns}"})
        proxy.until(host, lambda ids: ids == both, within=10)
        assert put(api, f"api-1.{ns}", body("api", ns, 22011, ttlSeconds=ttl))["outcome"] == (
            "refreshed"
        )

        # Unhealthy (the sidecar's check failed): out at once; healthy again: back.
        sick = body(
            "api", ns, 22011, ttlSeconds=ttl, healthy=False, healthOutput="GET /health: 503"
        )
        put(api, f"api-1.{ns}", sick)
        _, took = proxy.until(host, lambda ids: ids == {f"api-2.{ns}"}, within=INTERVAL_S)
        print(f"unhealthy heartbeat -> endpoint removed in {took * 1000:.0f} ms")
        svc = api.get("/v1/services/api", params={"namespace": ns}).json()
        (one,) = [i for i in svc["instances"] if i["id"] == f"api-1.{ns}"]
        assert (one["healthy"], one["healthOutput"]) == (False, "GET /health: 503")
        assert svc["registry"] == "embedded"
        assert svc["seenBy"]["proxies"] == sorted([f"web-1.{ns}", f"api-1.{ns}", f"api-2.{ns}"])
        put(api, f"api-1.{ns}", body("api", ns, 22011, ttlSeconds=ttl))
        proxy.until(host, lambda ids: ids == both, within=INTERVAL_S)

        # api-2 vanishes (no more heartbeats); api-1 keeps beating every interval.
        last_beat = time.monotonic()
        put(api, f"api-2.{ns}", body("api", ns, 22012, ttlSeconds=ttl))
        next_beat = last_beat
        while True:
            if time.monotonic() >= next_beat:
                put(api, f"api-1.{ns}", body("api", ns, 22011, ttlSeconds=ttl))
                next_beat += INTERVAL_S
            proxy.poll(max(0.05, next_beat - time.monotonic()))
            assert proxy.snapshot is not None
            if endpoint_ids(proxy.snapshot, host) == {f"api-1.{ns}"}:
                break
            assert time.monotonic() - last_beat < ttl + PUSH_SLACK_S + 1, "api-2 never left"
        gone_after = time.monotonic() - last_beat
        print(f"last heartbeat -> endpoint removed in {gone_after * 1000:.0f} ms")
        assert gone_after <= ttl + PUSH_SLACK_S
        assert f"api-2.{ns}" not in [i["id"] for i in api.get("/v1/instances").json()["items"]]
        assert meshd.process is not None
        assert f"instance api-2.{ns} expired" in meshd.process.log_text()
        # Its next heartbeat (the sidecar was only partitioned) registers it again.
        assert put(api, f"api-2.{ns}", body("api", ns, 22012, ttlSeconds=ttl))["outcome"] == (
            "created"
        )
        proxy.until(host, lambda ids: ids == both, within=INTERVAL_S)


def test_a_restarted_meshd_keeps_the_catalog(
    tmp_path: Path, meshd_factory: type[MeshdProcess]
) -> None:
    ns = f"e{secrets.token_hex(3)}"
    meshd = meshd_factory(tmp_path / "meshd").start()
    with meshd.client() as api:
        put(api, f"web-1.{ns}", body("web", ns, 22101))
        for n in (1, 2):
            put(api, f"api-{n}.{ns}", body("api", ns, 22110 + n, ttlSeconds=60))
        put(api, f"api-3.{ns}", body("api", ns, 22113, healthy=False, healthOutput="booting"))
        before = api.get("/v1/services/api", params={"namespace": ns}).json()["instances"]
        meshd.kill()  # right after the 200s: they were durable
        meshd.start()
        after = api.get("/v1/services/api", params={"namespace": ns}).json()["instances"]
        assert after == before
        # The very first snapshot after the restart has the endpoints (no 404, no gap).
        proxy = ProxyWatch(api, f"web-1.{ns}")
        assert proxy.poll(0)
        got, _ = proxy.until(fqdn("api", ns), lambda ids: True, within=1)
        assert got == {f"api-1.{ns}", f"api-2.{ns}"}
        assert meshd.process is not None
        assert "catalog loaded from the sqlite store: " in meshd.process.log_text()


def test_replicas_on_one_consul_store_see_each_others_registrations(
    consul_agent: ConsulAgent,
    consul_prefix: str,
    tmp_path: Path,
    meshd_factory: type[MeshdProcess],
) -> None:
    ns = f"e{secrets.token_hex(3)}"
    args = [
        "--store",
        "consul",
        "--consul-addr",
        consul_agent.http_addr,
        "--consul-prefix",
        consul_prefix,
    ]
    token = "mshd_shared_" + secrets.token_hex(8)
    a = meshd_factory(tmp_path / "a", extra_args=args, token=token).start()
    b = meshd_factory(tmp_path / "b", extra_args=args, token=token).start()
    delays = []
    with a.client() as on_a, b.client() as on_b:
        for n in range(5):
            started = time.monotonic()
            put(on_a, f"api-{n}.{ns}", body("api", ns, 22200 + n, ttlSeconds=30))
            while True:
                ids = [i["id"] for i in on_b.get("/v1/instances").json()["items"]]
                if f"api-{n}.{ns}" in ids:
                    break
                assert time.monotonic() - started < 5, "replica b never saw it"
                time.sleep(0.01)
            delays.append(time.monotonic() - started)
        print("replica delays (ms):", [round(d * 1000) for d in delays])
        assert max(delays) < 2.0
        assert on_b.delete(f"/v1/instances/api-0.{ns}").status_code == 204
        deadline = time.monotonic() + 10
        while f"api-0.{ns}" in [i["id"] for i in on_a.get("/v1/instances").json()["items"]]:
            assert time.monotonic() < deadline, "replica a kept a deregistered instance"
            time.sleep(0.05)
