"""The rules API against a real ``meshd serve`` process over real sockets."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.support.meshd_process import MeshdProcess

pytestmark = pytest.mark.integration

DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: {ns}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
    trafficPolicy:
      loadBalancer:
        simple: ROUND_ROBIN
  - name: v3
    labels:
      version: v3
"""

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: {ns}
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 80
    - destination:
        host: reviews
        subset: v3
      weight: {v3_weight}
"""


@pytest.fixture
def ns() -> str:
    return "t-" + secrets.token_hex(4)


@pytest.fixture
def api(meshd_server: MeshdProcess) -> Iterator[httpx.Client]:
    with meshd_server.client() as client:
        yield client


def apply(api: httpx.Client, text: str, **params: Any) -> httpx.Response:
    return api.post(
        "/v1/apply", content=text, headers={"Content-Type": "application/yaml"}, params=params
    )


def bookinfo(ns: str, v3_weight: int = 20) -> str:
    return DR.format(ns=ns) + "---" + VS.format(ns=ns, v3_weight=v3_weight)


def test_istio_example_applies_and_reads_back_equal(api: httpx.Client, ns: str) -> None:
    reply = apply(api, bookinfo(ns))
    assert reply.status_code == 200, reply.text
    assert [(r["kind"], r["outcome"]) for r in reply.json()["results"]] == [
        ("DestinationRule", "created"),
        ("VirtualService", "created"),
    ]
    for kind, text in (("DestinationRule", DR), ("VirtualService", VS)):
        sent = yaml.safe_load(text.format(ns=ns, v3_weight=20))
        got = api.get(f"/v1/resources/{kind}/{ns}/reviews").json()
        assert got["metadata"].pop("resourceVersion") == "1"
        assert got == sent
    again = apply(api, bookinfo(ns))
    assert [r["outcome"] for r in again.json()["results"]] == ["unchanged", "unchanged"]


def test_weights_summing_to_90_are_rejected_with_the_field(api: httpx.Client, ns: str) -> None:
    reply = apply(api, bookinfo(ns, v3_weight=10))
    assert reply.status_code == 422
    assert reply.headers["content-type"] == "application/problem+json"
    problem = reply.json()
    assert problem["status"] == 422
    fields = [e["field"] for e in problem["errors"]]
    assert "spec.http[1].route" in fields
    assert api.get(f"/v1/resources/DestinationRule/{ns}/reviews").status_code == 404, (
        "nothing applied"
    )


def test_unknown_field_is_rejected_by_name(api: httpx.Client, ns: str) -> None:
    text = VS.format(ns=ns, v3_weight=20).replace("  hosts:", "  colour: blue\n  hosts:")
    reply = apply(api, text)
    assert reply.status_code == 422
    assert any(
        e["field"] == "spec.colour" and "unknown field" in e["message"]
        for e in reply.json()["errors"]
    )


def test_undefined_subset_and_unsupported_field(api: httpx.Client, ns: str) -> None:
    reply = apply(api, VS.format(ns=ns, v3_weight=20))
    assert reply.status_code == 422
    assert any(e["field"].endswith("destination.subset") for e in reply.json()["errors"])
    fault = bookinfo(ns).replace(
        "  - route:",
        "  - fault:\n      abort:\n        httpStatus: 503\n"
        "        percentage:\n          value: 1\n    route:",
    )
    reply = apply(api, fault)
    assert reply.status_code == 422
    assert any(e["field"] == "spec.http[1].fault" for e in reply.json()["errors"]), reply.text


def test_dry_run_writes_nothing(api: httpx.Client, ns: str) -> None:
    reply = apply(api, bookinfo(ns), dry_run="true")
    assert reply.status_code == 200
    assert reply.json()["dryRun"] is True
    assert [r["outcome"] for r in reply.json()["results"]] == ["created", "created"]
    assert api.get(f"/v1/resources/VirtualService/{ns}/reviews").status_code == 404


def test_malformed_bodies_get_400(api: httpx.Client) -> None:
    assert apply(api, "a: [unclosed").status_code == 400
    assert apply(api, "").status_code == 400
    reply = api.post(
        "/v1/apply", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json()["type"].startswith("urn:meshd:problem:")


def test_put_is_compare_and_set(api: httpx.Client, ns: str) -> None:
    assert apply(api, bookinfo(ns)).status_code == 200
    current = api.get(f"/v1/resources/vs/{ns}/reviews").json()
    assert current["metadata"]["resourceVersion"] == "1"
    current["spec"]["http"][1]["route"][0]["weight"] = 70
    current["spec"]["http"][1]["route"][1]["weight"] = 30
    ok = api.put(f"/v1/resources/virtualservices/{ns}/reviews", json=current)
    assert ok.status_code == 200, ok.text
    assert ok.json()["revision"] == 2
    stale = api.put(
        f"/v1/resources/VirtualService/{ns}/reviews", json=current
    )  # still says revision 1
    assert stale.status_code == 409
    wrong = api.put(f"/v1/resources/VirtualService/{ns}/other", json=current)
    assert wrong.status_code == 400


def test_delete_that_breaks_a_reference_is_refused(api: httpx.Client, ns: str) -> None:
    assert apply(api, bookinfo(ns)).status_code == 200
    refused = api.delete(f"/v1/resources/DestinationRule/{ns}/reviews")
    assert refused.status_code == 409
    assert "VirtualService" in refused.text
    assert api.delete(f"/v1/resources/VirtualService/{ns}/reviews").status_code == 200
    assert api.delete(f"/v1/resources/DestinationRule/{ns}/reviews").status_code == 200
    assert api.delete(f"/v1/resources/DestinationRule/{ns}/reviews").status_code == 404


def test_history_and_rollback(api: httpx.Client, ns: str) -> None:
    assert apply(api, bookinfo(ns)).status_code == 200
    assert (
        apply(
            api,
            bookinfo(ns).replace("weight: 80", "weight: 50").replace("weight: 20", "weight: 50"),
        ).status_code
        == 200
    )
    history = api.get(f"/v1/resources/VirtualService/{ns}/reviews/history").json()["items"]
    assert [(h["revision"], h["operation"]) for h in history] == [(1, "create"), (2, "update")]
    back = api.post(f"/v1/resources/VirtualService/{ns}/reviews/rollback", json={"revision": 1})
    assert back.status_code == 200, back.text
    assert back.json()["revision"] == 3
    now = api.get(f"/v1/resources/VirtualService/{ns}/reviews").json()
    assert [d["weight"] for d in now["spec"]["http"][1]["route"]] == [80, 20]
    assert (
        api.post(
            f"/v1/resources/VirtualService/{ns}/reviews/rollback", json={"revision": 9}
        ).status_code
        == 404
    )


def test_list_filters(api: httpx.Client, ns: str) -> None:
    assert apply(api, bookinfo(ns)).status_code == 200
    items = api.get("/v1/resources", params={"namespace": ns}).json()["items"]
    assert sorted(i["kind"] for i in items) == ["DestinationRule", "VirtualService"]
    only = api.get(f"/v1/resources/dr/{ns}").json()["items"]
    assert [i["kind"] for i in only] == ["DestinationRule"]
    assert api.get("/v1/resources/NoSuchKind").status_code == 404


def test_roles_and_audit(meshd_server: MeshdProcess, api: httpx.Client, ns: str) -> None:
    with httpx.Client(base_url=meshd_server.url, verify=meshd_server.verify()) as anonymous:
        reply = anonymous.get("/v1/resources")
        assert reply.status_code == 401
        assert reply.headers["content-type"] == "application/problem+json"
        assert (
            anonymous.get("/v1/resources", headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
    created = api.post("/v1/admin-tokens", json={"name": "watcher", "role": "viewer"})
    assert created.status_code == 201
    viewer_token = created.json()["token"]
    assert "hash" not in created.json()
    with meshd_server.client(viewer_token) as viewer:
        assert viewer.get("/v1/resources").status_code == 200
        denied = apply(viewer, bookinfo(ns))
        assert denied.status_code == 403
        assert "editor" in denied.json()["detail"]
        assert viewer.get("/v1/audit").status_code == 403
    assert apply(api, bookinfo(ns)).status_code == 200
    audit = api.get("/v1/audit", params={"limit": 50}).json()["items"]
    assert any(
        e["target"] == f"VirtualService {ns}/reviews" and e["actor"] == "bootstrap" for e in audit
    )
    revoked = api.delete(f"/v1/admin-tokens/{created.json()['id']}")
    assert revoked.status_code == 204


def test_health_endpoints(meshd_server: MeshdProcess) -> None:
    with httpx.Client(base_url=meshd_server.url, verify=meshd_server.verify()) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        assert "meshd_compile_duration_seconds" in anonymous.get("/metrics").text
