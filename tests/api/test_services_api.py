"""``PUT|DELETE /v1/instances/{id}`` and ``GET /v1/services[/{name}]`` against a real
meshd (embedded registry): heartbeat fields, outcomes, health and its output, and which
proxies see a service."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.meshd_process import MeshdProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> str:
    return "s-" + secrets.token_hex(4)


@pytest.fixture
def api(meshd_server: MeshdProcess) -> Iterator[httpx.Client]:
    with meshd_server.client(timeout=30) as client:
        yield client


def body(service: str, ns: str, port: int, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "service": service,
        "namespace": ns,
        "address": "127.0.0.1",
        "port": port,
        "appPort": 9080,
        "labels": {"version": "v1"},
    }
    out.update(extra)
    return out


def wait_seen(api: httpx.Client, name: str, ns: str, proxy: str) -> dict[str, Any]:
    """``GET /v1/services/{name}`` once the last compile covers ``proxy``."""
    deadline = time.monotonic() + 10
    while True:
        got: dict[str, Any] = api.get(f"/v1/services/{name}.{ns}").json()
        if proxy in got["seenBy"]["proxies"]:
            return got
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_register_heartbeat_and_outcomes(api: httpx.Client, ns: str) -> None:
    iid = f"ratings-1.{ns}"
    first = api.put(f"/v1/instances/{iid}", json=body("ratings", ns, 17201))
    assert first.status_code == 200, first.text
    doc = first.json()
    assert (doc["outcome"], doc["registry"], doc["ttlSeconds"], doc["healthy"]) == (
        "created",
        "embedded",
        90,
        True,
    )
    again = api.put(f"/v1/instances/{iid}", json=body("ratings", ns, 17201))
    assert again.json()["outcome"] == "refreshed"
    sick = body("ratings", ns, 17201, healthy=False, ttlSeconds=20, healthOutput="HTTP 503")
    changed = api.put(f"/v1/instances/{iid}", json=sick)
    assert (changed.json()["outcome"], changed.json()["healthy"]) == ("updated", False)
    items = api.get("/v1/instances").json()["items"]
    (mine,) = [i for i in items if i["id"] == iid]
    assert (mine["healthy"], mine["health_output"]) == (False, "HTTP 503")


def test_services_show_health_labels_backend_and_who_sees_them(api: httpx.Client, ns: str) -> None:
    for n, healthy in ((1, True), (2, False)):
        doc = body(
            "reviews",
            ns,
            17210 + n,
            labels={"version": f"v{n}", "zone": "a"},
            healthy=healthy,
            healthOutput="" if healthy else "connect refused",
            serviceAccount="bookinfo-reviews",
        )
        assert api.put(f"/v1/instances/reviews-{n}.{ns}", json=doc).status_code == 200
    assert api.put(f"/v1/instances/web-1.{ns}", json=body("web", ns, 17220)).status_code == 200
    got = wait_seen(api, "reviews", ns, f"web-1.{ns}")
    assert (got["name"], got["namespace"], got["registry"]) == ("reviews", ns, "embedded")
    assert (got["healthy"], got["total"]) == (1, 2)
    assert got["instances"] == [
        {
            "id": f"reviews-1.{ns}",
            "address": "127.0.0.1:17211",
            "appPort": 9080,
            "protocol": "http",
            "labels": {"version": "v1", "zone": "a"},
            "healthy": True,
            "healthOutput": "",
            "meshed": True,
            "serviceAccount": "bookinfo-reviews",
        },
        {
            "id": f"reviews-2.{ns}",
            "address": "127.0.0.1:17212",
            "appPort": 9080,
            "protocol": "http",
            "labels": {"version": "v2", "zone": "a"},
            "healthy": False,
            "healthOutput": "connect refused",
            "meshed": True,
            "serviceAccount": "bookinfo-reviews",
        },
    ]
    seen = got["seenBy"]
    # No Sidecar resource: every proxy of the mesh may call it, its own instances too.
    assert {f"web-1.{ns}", f"reviews-1.{ns}", f"reviews-2.{ns}"} <= set(seen["proxies"])
    assert seen["count"] == len(seen["proxies"])
    assert seen["complete"]
    assert seen["proxies"] == sorted(seen["proxies"])
    listed = api.get("/v1/services", params={"namespace": ns}).json()
    assert listed["registry"] == "embedded"
    assert listed["ready"] is True
    assert [s["name"] for s in listed["items"]] == ["reviews", "web"]
    assert all(len(s["seenBy"]["proxies"]) <= 10 for s in listed["items"])
    assert api.get("/v1/services/reviews", params={"namespace": ns}).json() == got


def test_a_sidecar_scope_limits_who_sees_a_service(api: httpx.Client, ns: str) -> None:
    other = ns + "-other"
    for iid, svc, space, port in (
        (f"api-1.{ns}", "api", ns, 17301),
        (f"web-1.{ns}", "web", ns, 17302),
        (f"web-1.{other}", "web", other, 17303),
    ):
        assert api.put(f"/v1/instances/{iid}", json=body(svc, space, port)).status_code == 200
    sidecar = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Sidecar",
        "metadata": {"name": "default", "namespace": other},
        "spec": {"egress": [{"hosts": ["./*"]}]},
    }
    applied = api.post("/v1/apply", json=[sidecar])
    assert applied.status_code == 200, applied.text
    deadline = time.monotonic() + 10
    while True:
        seen = api.get(f"/v1/services/api.{ns}").json()["seenBy"]["proxies"]
        if f"web-1.{ns}" in seen and f"web-1.{other}" not in seen:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.05)


def test_bad_requests(api: httpx.Client, ns: str) -> None:
    short = api.put(f"/v1/instances/x-1.{ns}", json=body("x", ns, 17401, ttlSeconds=0.5))
    assert short.status_code == 400
    assert any("ttl" in e["field"].lower() for e in short.json()["errors"]), short.json()
    unknown = api.put(f"/v1/instances/x-1.{ns}", json=body("x", ns, 17401, color="red"))
    assert unknown.status_code == 400
    assert api.delete(f"/v1/instances/ghost-1.{ns}").status_code == 404
    missing = api.get("/v1/services/ghost", params={"namespace": ns})
    assert missing.status_code == 404
    assert "meshctl get services" in missing.json()["detail"]


def test_deregister_removes_and_a_viewer_cannot_register(
    api: httpx.Client, meshd_server: MeshdProcess, ns: str
) -> None:
    iid = f"details-1.{ns}"
    assert api.put(f"/v1/instances/{iid}", json=body("details", ns, 17501)).status_code == 200
    assert api.delete(f"/v1/instances/{iid}").status_code == 204
    assert iid not in [i["id"] for i in api.get("/v1/instances").json()["items"]]
    assert api.get("/v1/services/details", params={"namespace": ns}).status_code == 404
    created = api.post("/v1/admin-tokens", json={"name": f"v-{ns}", "role": "viewer"})
    assert created.status_code in (200, 201), created.text
    with meshd_server.client(created.json()["token"]) as viewer:
        assert viewer.get("/v1/services").status_code == 200
        denied = viewer.put(f"/v1/instances/{iid}", json=body("details", ns, 17501))
        assert denied.status_code == 403
