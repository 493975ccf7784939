"""Config distribution against a real meshd: registration, long-poll, implicit ACK,
NACK, status."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import httpx
import pytest

from meshd.compile import codec
from meshd.compile.check import check_snapshot
from meshd.compile.snapshot import ProxySnapshot
from tests.support.meshd_process import MeshdProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def ns() -> str:
    return "x-" + secrets.token_hex(4)


@pytest.fixture
def api(meshd_server: MeshdProcess) -> Iterator[httpx.Client]:
    with meshd_server.client(timeout=30) as client:
        yield client


def register(
    api: httpx.Client, iid: str, service: str, ns: str, *, version: str, port: int
) -> None:
    body = {
        "service": service,
        "namespace": ns,
        "address": "127.0.0.1",
        "port": port,
        "appPort": 9080,
        "labels": {"version": version},
    }
    reply = api.put(f"/v1/instances/{iid}", json=body)
    assert reply.status_code == 200, reply.text


def poll(api: httpx.Client, proxy: str, version: str = "", wait: float = 5.0) -> httpx.Response:
    return api.get(f"/v1/xds/{proxy}", params={"version": version, "wait": wait})


def test_unknown_proxy_is_404(api: httpx.Client) -> None:
    reply = poll(api, "ghost.nowhere", wait=0)
    assert reply.status_code == 404
    assert "register" in reply.json()["detail"]


def test_poll_ack_push_and_nack(api: httpx.Client, ns: str) -> None:
    client_id = f"productpage-1.{ns}"
    register(api, client_id, "productpage", ns, version="v1", port=17001)
    for i, version in enumerate(("v1", "v2")):
        register(api, f"reviews-{version}.{ns}", "reviews", ns, version=version, port=17100 + i)

    reviews = f"reviews.{ns}.svc.cluster.local"
    version = ""
    deadline = time.monotonic() + 10
    while True:  # registrations may land in separate compiles; the long poll brings each
        first = poll(api, client_id, version)
        assert first.status_code == 200, first.text
        snap = codec.loads(ProxySnapshot, first.content)
        assert check_snapshot(snap) == []
        assert snap.version == first.headers["X-Mesh-Version"]
        version = snap.version
        name = f"outbound|9080||{reviews}"
        default = next((c for c in snap.outbound.clusters if c.name == name), None)
        if default is not None and len(default.endpoints) == 2:
            break
        assert time.monotonic() < deadline, "the reviews endpoints never reached productpage"
    assert snap.identity == f"spiffe://cluster.local/ns/{ns}/sa/productpage"
    assert any(vh.name == f"{reviews}:9080" for vh in snap.outbound.virtual_hosts)

    # Polling with the current version ACKs it and waits.
    started = time.monotonic()
    idle = poll(api, client_id, snap.version, wait=0.3)
    assert idle.status_code == 304
    assert time.monotonic() - started >= 0.25
    status = api.get(f"/v1/proxies/{client_id}").json()
    assert status["state"] == "SYNCED"
    assert status["ackedVersion"] == snap.version

    # A rule change reaches the waiting proxy.
    rules = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: {ns}}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: {ns}}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 80}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 20}}
"""
    applied = api.post("/v1/apply", content=rules, headers={"Content-Type": "application/yaml"})
    assert applied.status_code == 200, applied.text
    seen = snap.version
    deadline = time.monotonic() + 10
    while True:  # the two resources may reach the proxy in one push or two
        pushed = poll(api, client_id, seen, wait=10)
        assert pushed.status_code == 200
        new = codec.loads(ProxySnapshot, pushed.content)
        assert new.version != seen
        seen = new.version
        vhost = next(vh for vh in new.outbound.virtual_hosts if vh.name == f"{reviews}:9080")
        if vhost.source == f"{ns}/reviews":
            break
        assert time.monotonic() < deadline, "the VirtualService never reached the proxy"
    assert [c.weight for c in vhost.routes[0].action.clusters] == [80, 20]  # type: ignore[union-attr]

    # NACK: the proxy keeps the old version; meshd shows why and does not resend it.
    nack = api.post(
        f"/v1/xds/{client_id}/ack", json={"version": new.version, "error": "cannot load"}
    )
    assert nack.status_code == 204
    status = api.get(f"/v1/proxies/{client_id}").json()
    assert status["state"] == "NACKED"
    assert status["nack"] == {"version": new.version, "reason": "cannot load"}
    assert poll(api, client_id, snap.version, wait=0.2).status_code == 304

    listed = api.get("/v1/proxies").json()["items"]
    assert client_id in [p["proxy"] for p in listed]
    config = api.get(f"/v1/proxies/{client_id}/config").json()
    assert config["version"] == new.version
    described = api.get(f"/v1/resources/VirtualService/{ns}/reviews/describe").json()
    assert client_id in described["affects"]["proxies"]

    assert api.delete(f"/v1/instances/{client_id}").status_code == 204
    deadline = time.monotonic() + 5
    while poll(api, client_id, new.version, wait=0.1).status_code != 404:
        assert time.monotonic() < deadline, "a deregistered proxy must stop getting config"


def test_services_view(api: httpx.Client, ns: str) -> None:
    register(api, f"ratings-1.{ns}", "ratings", ns, version="v1", port=17201)
    listed = api.get("/v1/services", params={"namespace": ns}).json()["items"]
    assert [(s["name"], len(s["instances"])) for s in listed] == [("ratings", 1)]
    one = api.get(f"/v1/services/ratings.{ns}").json()
    assert one["instances"][0]["labels"] == {"version": "v1"}
    assert api.get(f"/v1/services/nothing.{ns}").status_code == 404
