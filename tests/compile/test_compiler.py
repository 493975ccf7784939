"""Semantics of the compiler that the golden scenarios do not pin down on their own:
precedence rules, stand-in clusters, errors, shadowed names, dependents()."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.compile import snapshot as s
from meshd.compile.check import check_snapshot
from meshd.compile.compiler import CompileResult, CompileSettings, compile_mesh
from meshd.schema.base import Resource, ResourceKey
from meshd.schema.networking import VirtualService
from meshd.schema.parse import parse_many
from meshd.schema.security import AuthorizationPolicy
from registry.model import RegistryView
from tests.compile.support import instance, load_scenario, registry_of

SETTINGS = CompileSettings()


def compile_ok(resources: list[Resource[Any]], registry: RegistryView) -> CompileResult:
    result = compile_mesh(resources, registry, SETTINGS)
    assert result.errors == {}
    for snap in result.snapshots.values():
        assert check_snapshot(snap) == []
    return result


def vhost(snap: s.ProxySnapshot, name: str) -> s.VirtualHost:
    found = [vh for vh in snap.outbound.virtual_hosts if vh.name == name]
    assert found, [vh.name for vh in snap.outbound.virtual_hosts]
    return found[0]


def cluster(snap: s.ProxySnapshot, name: str) -> s.Cluster:
    found = [c for c in snap.outbound.clusters if c.name == name]
    assert found, [c.name for c in snap.outbound.clusters]
    return found[0]


def vs(name: str, namespace: str, host: str, subset: str, extra: str = "") -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{host}]
{extra}  http:
  - route:
    - destination: {{host: {host}, subset: {subset}}}
"""


def dr(name: str, namespace: str, host: str, subsets: list[str], extra: str = "") -> str:
    items = "".join(f"\n  - {{name: {x}, labels: {{version: {x}}}}}" for x in subsets)
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  host: {host}
{extra}  subsets:{items}
"""


def docs(*texts: str) -> list[Resource[Any]]:
    return parse_many("\n---\n".join(texts))


REVIEWS = "reviews.default.svc.cluster.local"
REVIEWS_VH = f"{REVIEWS}:9080"


def clients_and_reviews(*namespaces: str) -> RegistryView:
    insts = [
        instance(
            f"reviews-{v}.default", "reviews", f"198.18.0.{i + 10}", 9080, labels={"version": v}
        )
        for i, v in enumerate(["v1", "v2", "v3"])
    ]
    insts += [
        instance(f"client.{ns}", "client", f"198.18.1.{i + 10}", 8080, namespace=ns)
        for i, ns in enumerate(namespaces)
    ]
    return registry_of(insts)


def routed_subset(snap: s.ProxySnapshot) -> str:
    action = vhost(snap, REVIEWS_VH).routes[0].action
    assert isinstance(action, s.ForwardAction)
    return action.clusters[0].cluster.split("|")[2]


# --- which VirtualService / DestinationRule applies ------------------------------------------


def test_virtual_service_precedence_proxy_namespace_then_host_namespace_then_lexical() -> None:
    registry = clients_and_reviews("aaa", "bbb", "default", "zzz")
    rules = [
        vs("r", "default", "reviews.default", "v1"),
        vs("r", "aaa", "reviews.default", "v2"),
        vs("r", "zzz", "reviews.default", "v3"),
        dr("reviews", "default", "reviews", ["v1", "v2", "v3"]),
    ]
    result = compile_ok(docs(*rules), registry)
    snaps = result.snapshots
    assert routed_subset(snaps["client.aaa"]) == "v2"  # its own namespace's
    assert routed_subset(snaps["client.zzz"]) == "v3"
    assert routed_subset(snaps["client.bbb"]) == "v1"  # the host's namespace's
    assert routed_subset(snaps["client.default"]) == "v1"
    without_host_ns = compile_ok(docs(*rules[1:]), registry)
    assert routed_subset(without_host_ns.snapshots["client.bbb"]) == "v2"  # aaa/r < zzz/r


def test_destination_rule_precedence() -> None:
    registry = clients_and_reviews("aaa", "bbb", "ccc")
    rules = docs(
        dr("mine", "aaa", "reviews.default", ["v1"]),
        dr("host", "default", "reviews", ["v2"]),
        dr("root", "istio-system", "reviews.default", ["v3"]),
    )
    result = compile_ok(rules, registry)

    def subsets(pid: str) -> list[str | None]:
        return [c.subset for c in result.snapshots[pid].outbound.clusters if c.service == REVIEWS]

    assert subsets("client.aaa") == [None, "v1"]
    assert subsets("client.bbb") == [None, "v2"]
    without_host = compile_ok([r for r in rules if r.metadata.name != "host"], registry)
    assert [
        c.subset
        for c in without_host.snapshots["client.bbb"].outbound.clusters
        if c.service == REVIEWS
    ] == [None, "v3"]


# --- stand-ins, errors ---------------------------------------------------------------------


def test_a_route_to_a_cluster_nobody_defines_gets_an_empty_stand_in() -> None:
    # The DestinationRule that defined v2 is gone, and ratings left the registry.
    registry = clients_and_reviews("default")
    text = vs("reviews", "default", "reviews", "v2") + "    - destination: {host: ratings}\n"
    text = text.replace("subset: v2}", "subset: v2}\n      weight: 50").replace(
        "{host: ratings}", "{host: ratings}\n      weight: 50"
    )
    result = compile_ok(docs(text), registry)
    snap = result.snapshots["client.default"]
    v2 = cluster(snap, f"outbound|9080|v2|{REVIEWS}")
    assert v2.endpoints == ()
    ratings = cluster(snap, "outbound|9080||ratings.default.svc.cluster.local")
    assert ratings.endpoints == ()
    assert ratings.protocol == "http"


def test_a_rule_that_cannot_be_compiled_fails_only_the_proxies_that_see_it() -> None:
    registry = clients_and_reviews("default", "other")
    # Bypasses validation (weights sum to 90) as a stored resource from an older,
    # laxer meshd could; exported to its own namespace only.
    bad = VirtualService.model_validate(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default"},
            "spec": {
                "hosts": ["reviews"],
                "exportTo": ["."],
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "reviews"}, "weight": 50},
                            {"destination": {"host": "ratings"}, "weight": 40},
                        ]
                    }
                ],
            },
        }
    )
    result = compile_mesh([bad], registry, SETTINGS)
    in_default = {
        "client.default",
        "reviews-v1.default",
        "reviews-v2.default",
        "reviews-v3.default",
    }
    assert set(result.errors) == in_default
    assert "client.other" in result.snapshots
    assert not in_default & set(result.snapshots)
    message = result.errors["client.default"][0]
    assert message.startswith("VirtualService default/reviews:")
    assert "sum to 90" in message


def test_an_authorization_key_the_sidecar_cannot_enforce_is_an_error_not_dropped() -> None:
    registry = clients_and_reviews("default")
    bad = AuthorizationPolicy.model_validate(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "jwt", "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"version": "v1"}},
                "rules": [{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}],
            },
        }
    )
    result = compile_mesh([bad], registry, SETTINGS)
    assert set(result.errors) == {"reviews-v1.default"}
    assert "cannot be enforced" in result.errors["reviews-v1.default"][0]
    assert "reviews-v2.default" in result.snapshots


# --- names -----------------------------------------------------------------------------------


def test_a_service_entry_host_takes_the_name_it_declares_literally() -> None:
    registry = clients_and_reviews("default")
    se = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [reviews.default]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 9080, name: http, protocol: HTTP}]
"""
    result = compile_ok(docs(se), registry)
    snap = result.snapshots["client.default"]
    assert "reviews.default" not in vhost(snap, REVIEWS_VH).domains
    assert "reviews" in vhost(snap, REVIEWS_VH).domains
    assert vhost(snap, "reviews.default:9080").domains == (
        "reviews.default",
        "reviews.default:9080",
    )


def test_a_service_entry_for_a_registry_host_does_not_replace_the_registry_service() -> None:
    registry = clients_and_reviews("default")
    se = f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: shadow, namespace: default}}
spec:
  hosts: [{REVIEWS}]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{{number: 9080, name: http, protocol: HTTP}}]
"""
    result = compile_ok(docs(se), registry)
    snap = result.snapshots["client.default"]
    assert len(cluster(snap, f"outbound|9080||{REVIEWS}").endpoints) == 3
    assert (
        ResourceKey("ServiceEntry", "default", "shadow")
        not in result.shaped_by["client.default"][0]
    )


def test_only_meshed_instances_are_proxies() -> None:
    registry = registry_of(
        [
            instance("a-1.default", "a", "198.18.0.10", 8080),
            instance("b-1.default", "b", "198.18.0.11", 8080, port=8080, meshed=False),
        ]
    )
    result = compile_ok([], registry)
    assert set(result.snapshots) == {"a-1.default"}
    b = cluster(result.snapshots["a-1.default"], "outbound|8080||b.default.svc.cluster.local")
    assert b.endpoints == (s.Endpoint("198.18.0.11", 8080, None, 1, "b-1.default"),)
    assert compile_mesh([], RegistryView(), SETTINGS).snapshots == {}


# --- dependents ------------------------------------------------------------------------------


def test_dependents_name_the_proxies_a_resource_shaped() -> None:
    resources, registry, settings = load_scenario("exportto")
    result = compile_mesh(resources, registry, settings)
    a = {"svc-a-v1.a", "svc-a-v2.a"}

    def deps(kind: str, ns: str, name: str) -> set[str]:
        return set(result.dependents(ResourceKey(kind, ns, name)))

    assert deps("VirtualService", "a", "svc-a") == a
    assert deps("VirtualService", "b", "svc-a-from-b") == {"client-b-1.b"}
    assert deps("VirtualService", "c", "svc-a-hidden") == set()
    assert deps("DestinationRule", "a", "svc-a") == a | {"client-b-1.b"}
    assert deps("DestinationRule", "c", "svc-a-from-c") == {"client-c-1.c"}
    assert deps("ServiceEntry", "c", "internal") == {"client-c-1.c"}
    assert deps("ServiceEntry", "a", "partners") == a | {"client-b-1.b"}
    assert deps("VirtualService", "a", "nope") == set()


def test_dependents_of_security_and_scope_resources() -> None:
    resources, registry, settings = load_scenario("peer-authentication")
    result = compile_mesh(resources, registry, settings)
    assert result.dependents(ResourceKey("PeerAuthentication", "legacy", "db")) == {"db-1.legacy"}
    assert result.dependents(ResourceKey("PeerAuthentication", "legacy", "web-off")) == set()
    everyone_but_legacy_ns = {"web-1.default", "ctl-1.istio-system"}
    assert (
        set(result.dependents(ResourceKey("PeerAuthentication", "istio-system", "default")))
        >= everyone_but_legacy_ns
    )
    resources, registry, settings = load_scenario("sidecar-scope")
    result = compile_mesh(resources, registry, settings)
    assert result.dependents(ResourceKey("Sidecar", "frontend", "default")) == {"web-1.frontend"}
    assert result.dependents(ResourceKey("Sidecar", "frontend", "admin")) == {"admin-1.frontend"}
    assert result.dependents(ResourceKey("Sidecar", "istio-system", "default")) == {
        "api-1.backend",
        "db-1.backend",
        "telemetry-1.istio-system",
    }
    resources, registry, settings = load_scenario("authorization")
    result = compile_mesh(resources, registry, settings)
    assert result.dependents(
        ResourceKey("AuthorizationPolicy", "istio-system", "audit-orders")
    ) == {"orders-1.default"}
    assert (
        len(result.dependents(ResourceKey("AuthorizationPolicy", "istio-system", "quarantine")))
        == 4
    )


def test_a_bug_in_one_piece_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshd.compile import clusters

    real = clusters.port_clusters

    def broken(svc: Any, port: Any, dr: Any) -> Any:
        if svc.host == REVIEWS:
            raise ZeroDivisionError("boom")
        return real(svc, port, dr)

    monkeypatch.setattr("meshd.compile.outbound.port_clusters", broken)
    result = compile_mesh([], clients_and_reviews("default"), SETTINGS)
    assert result.snapshots == {}
    assert "internal error compiling reviews" in result.errors["client.default"][0]
