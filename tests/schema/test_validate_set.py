"""Validation across resources: subsets, conflicting hosts, mesh-wide policies."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from meshd.schema.base import Resource
from meshd.schema.networking import DestinationRule
from meshd.schema.parse import parse_many, parse_resource
from meshd.schema.validate import DestinationRuleIndex, MeshNames, validate_set

DATA = Path(__file__).parent / "data"


def _vs(name: str, host: str, subsets: list[str], namespace: str = "default") -> Resource[Any]:
    weight = 100 // len(subsets) if len(subsets) > 1 else None
    route = []
    for i, subset in enumerate(subsets):
        entry: dict[str, Any] = {"destination": {"host": host, "subset": subset}}
        if weight is not None:
            entry["weight"] = weight + (100 - weight * len(subsets) if i == 0 else 0)
        route.append(entry)
    return parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"hosts": [host], "http": [{"route": route}]},
        }
    )


def _dr(
    name: str,
    host: str,
    subsets: list[str],
    namespace: str = "default",
    export_to: list[str] | None = None,
) -> Resource[Any]:
    spec: dict[str, Any] = {
        "host": host,
        "subsets": [{"name": s, "labels": {"version": s}} for s in subsets],
    }
    if export_to is not None:
        spec["exportTo"] = export_to
    return parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def _pa(name: str, namespace: str, selector: dict[str, str] | None = None) -> Resource[Any]:
    spec: dict[str, Any] = {"mtls": {"mode": "STRICT"}}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    return parse_resource(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def test_bookinfo_is_consistent() -> None:
    resources = [
        *parse_many((DATA / "bookinfo-reviews-virtualservice.yaml").read_text()),
        *parse_many((DATA / "bookinfo-reviews-destinationrule.yaml").read_text()),
    ]
    assert validate_set(resources, MeshNames()) == []


def test_undefined_subset_names_host_and_defined_subsets() -> None:
    resources = [_vs("reviews", "reviews", ["v1", "v4"]), _dr("reviews", "reviews", ["v1", "v2"])]
    (error,) = validate_set(resources, MeshNames())
    assert error.resource == "VirtualService default/reviews"
    assert error.field == "spec.http[0].route[1].destination.subset"
    assert error.message == (
        "subset 'v4' of host 'reviews.default.svc.cluster.local' is not defined: "
        "DestinationRule default/reviews defines v1, v2"
    )


def test_subset_without_any_destination_rule() -> None:
    (error,) = validate_set([_vs("reviews", "reviews", ["v1"])])
    assert error.field == "spec.http[0].route[0].destination.subset"
    assert "no DestinationRule for this host is visible in namespace 'default'" in error.message


def test_tcp_subsets_are_checked_too() -> None:
    vs = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "db"},
            "spec": {
                "hosts": ["db"],
                "tcp": [{"route": [{"destination": {"host": "db", "subset": "primary"}}]}],
            },
        }
    )
    (error,) = validate_set([vs, _dr("db", "db", ["replica"])])
    assert error.field == "spec.tcp[0].route[0].destination.subset"


def test_host_spellings_resolve_to_one_service() -> None:
    resources = [
        _vs("reviews", "reviews.bookinfo", ["v2"], namespace="frontend"),
        _dr("reviews", "reviews.bookinfo.svc.cluster.local", ["v2"], namespace="bookinfo"),
    ]
    assert validate_set(resources) == []


def test_destination_rule_visibility_follows_export_to() -> None:
    vs = _vs("reviews", "reviews.bookinfo", ["v2"], namespace="frontend")
    private = _dr("reviews", "reviews", ["v2"], namespace="bookinfo", export_to=["."])
    assert len(validate_set([vs, private])) == 1
    shared = _dr("reviews", "reviews", ["v2"], namespace="bookinfo", export_to=["frontend"])
    assert validate_set([vs, shared]) == []


def test_callers_own_destination_rule_shadows_the_services() -> None:
    vs = _vs("reviews", "reviews.bookinfo", ["v2"], namespace="frontend")
    own = _dr("reviews-local", "reviews.bookinfo", ["v1"], namespace="frontend")
    service = _dr("reviews", "reviews", ["v2"], namespace="bookinfo")
    (error,) = validate_set([vs, own, service])
    assert "DestinationRule frontend/reviews-local defines v1" in error.message


def test_destination_rule_index_lookup_order() -> None:
    names = MeshNames(root_namespace="istio-system")
    fqdn = "reviews.bookinfo.svc.cluster.local"
    root = _dr("root", fqdn, ["r"], namespace="istio-system")
    other = _dr("other", fqdn, ["o"], namespace="aaa")
    service = _dr("svc", "reviews", ["s"], namespace="bookinfo")
    rules = [r for r in (root, other, service) if isinstance(r, DestinationRule)]
    index = DestinationRuleIndex(rules, names)
    found = index.lookup(fqdn, "frontend")
    assert found is not None
    assert found.metadata.name == "svc"
    index = DestinationRuleIndex(rules[:2], names)
    found = index.lookup(fqdn, "frontend")
    assert found is not None
    assert found.metadata.name == "root"
    index = DestinationRuleIndex(rules[1:2], names)
    found = index.lookup(fqdn, "frontend")
    assert found is not None
    assert found.metadata.name == "other"
    assert index.lookup("ratings.bookinfo.svc.cluster.local", "frontend") is None


def test_service_entry_hosts_are_taken_literally() -> None:
    se = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "example"},
            "spec": {
                "hosts": ["example.com"],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
            },
        }
    )
    vs = _vs("example", "example.com", ["eu"], namespace="shop")
    dr = _dr("example", "example.com", ["eu"], namespace="shop")
    assert validate_set([se, vs, dr]) == []
    # Without the ServiceEntry, "example.com" is the service "example" of namespace "com".
    (error,) = validate_set([vs, _dr("example", "example.com", ["us"], namespace="shop")])
    assert "host 'example.com.svc.cluster.local'" in error.message


def test_conflicting_virtual_services_error_on_the_newer_one() -> None:
    older = _vs("reviews-a", "reviews", ["v1"])
    newer = _vs("reviews-b", "reviews.default.svc.cluster.local", ["v1"])
    dr = _dr("reviews", "reviews", ["v1"])
    (error,) = validate_set([older, newer, dr])
    assert error.resource == "VirtualService default/reviews-b"
    assert error.field == "spec.hosts[0]"
    assert "already routed by VirtualService default/reviews-a" in error.message
    (error,) = validate_set([newer, older, dr], changed=[newer.key])
    assert error.resource == "VirtualService default/reviews-b"


def test_same_host_in_other_namespaces_is_fine() -> None:
    resources = [
        _vs("reviews", "reviews.bookinfo", ["v1"], namespace="a"),
        _vs("reviews", "reviews.bookinfo", ["v1"], namespace="b"),
        _dr("reviews", "reviews", ["v1"], namespace="bookinfo"),
    ]
    assert validate_set(resources) == []


def test_host_listed_twice_in_one_virtual_service() -> None:
    vs = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews"},
            "spec": {
                "hosts": ["reviews", "reviews.default"],
                "http": [{"route": [{"destination": {"host": "reviews"}}]}],
            },
        }
    )
    (error,) = validate_set([vs])
    assert (error.field, error.message) == (
        "spec.hosts[1]",
        "host 'reviews.default.svc.cluster.local' is listed twice (also spec.hosts[0])",
    )


def test_conflicting_destination_rules() -> None:
    first = _dr("reviews", "reviews", ["v1"])
    second = _dr("reviews-lb", "reviews.default", ["v2"])
    (error,) = validate_set([second, first], changed=[second.key])
    assert error.resource == "DestinationRule default/reviews-lb"
    assert error.field == "spec.host"
    assert "already configured by DestinationRule default/reviews" in error.message


def test_one_mesh_wide_and_one_namespace_wide_peer_authentication() -> None:
    resources = [
        _pa("default", "istio-system"),
        _pa("strict", "istio-system"),
        _pa("default", "foo"),
        _pa("again", "foo"),
        _pa("finance", "foo", {"app": "finance"}),
        _pa("payments", "foo", {"app": "payments"}),
    ]
    errors = validate_set(resources, MeshNames(root_namespace="istio-system"))
    assert [(e.resource, e.field) for e in errors] == [
        ("PeerAuthentication istio-system/strict", "spec.selector"),
        ("PeerAuthentication foo/again", "spec.selector"),
    ]
    assert "the mesh-wide PeerAuthentication" in errors[0].message
    assert "namespace-wide PeerAuthentication of 'foo'" in errors[1].message


def test_one_namespace_wide_sidecar() -> None:
    docs = (DATA / "sidecars.yaml").read_text()
    first, second = parse_many(docs)
    clash = parse_resource(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Sidecar",
            "metadata": {"name": "other", "namespace": "prod-us1"},
            "spec": {"egress": [{"hosts": ["./*"]}]},
        }
    )
    (error,) = validate_set([first, second, clash])
    assert (error.resource, error.field) == ("Sidecar prod-us1/other", "spec.workloadSelector")


def test_a_thousand_rules_validate_fast() -> None:
    resources: list[Resource[Any]] = []
    for i in range(1000):
        namespace = f"ns{i % 20}"
        resources.append(_vs(f"svc{i}", f"svc{i}", ["v1", "v2"], namespace=namespace))
        resources.append(_dr(f"svc{i}", f"svc{i}", ["v1", "v2", "v3"], namespace=namespace))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        errors = validate_set(resources)
        best = min(best, time.perf_counter() - start)
    assert errors == []
    assert best < 0.1, f"validate_set took {best * 1000:.0f} ms for 1,000 VS + 1,000 DR"
