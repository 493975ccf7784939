"""check_snapshot: a coherent snapshot passes; each kind of incoherence is caught and
named."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest

from meshd.compile import snapshot as s
from meshd.compile.check import check_snapshot
from meshd.compile.compiler import compile_mesh
from tests.compile.support import load_scenario


@pytest.fixture(scope="module")
def good() -> s.ProxySnapshot:
    resources, registry, settings = load_scenario("bookinfo")
    snap = compile_mesh(resources, registry, settings).snapshots["productpage-v1-1.default"]
    assert check_snapshot(snap) == []
    return snap


def _vhost(snap: s.ProxySnapshot, host: str) -> tuple[int, s.VirtualHost]:
    for i, vh in enumerate(snap.outbound.virtual_hosts):
        if vh.name.startswith(host):
            return i, vh
    raise AssertionError(host)


def _with_vhost(snap: s.ProxySnapshot, i: int, vh: s.VirtualHost) -> s.ProxySnapshot:
    vhosts = list(snap.outbound.virtual_hosts)
    vhosts[i] = vh
    return replace(snap, outbound=replace(snap.outbound, virtual_hosts=tuple(vhosts)))


def _with_route(snap: s.ProxySnapshot, route: s.Route) -> s.ProxySnapshot:
    i, vh = _vhost(snap, "reviews")
    return _with_vhost(snap, i, replace(vh, routes=(route, *vh.routes[1:])))


def _forward(*clusters: tuple[str, int], **kw: object) -> s.Route:
    action = s.ForwardAction(tuple(s.WeightedCluster(c, w) for c, w in clusters), **kw)  # type: ignore[arg-type]
    return s.Route("r", (), action)


REVIEWS_V1 = "outbound|9080|v1|reviews.default.svc.cluster.local"
REVIEWS_V3 = "outbound|9080|v3|reviews.default.svc.cluster.local"


def missing_cluster(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return _with_route(snap, _forward(("outbound|9080|v9|reviews.default.svc.cluster.local", 100)))


def weights_not_100(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return _with_route(snap, _forward((REVIEWS_V1, 80), (REVIEWS_V3, 10)))


def duplicate_domain(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    i, vh = _vhost(snap, "ratings")
    return _with_vhost(snap, i, replace(vh, domains=(*vh.domains, "reviews")))


def cluster_port_out_of_range(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    clusters = list(snap.outbound.clusters)
    clusters[0] = replace(clusters[0], port=70000)
    return replace(snap, outbound=replace(snap.outbound, clusters=tuple(clusters)))


def endpoint_port_zero(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    clusters = list(snap.outbound.clusters)
    ep = replace(clusters[1].endpoints[0], port=0)
    clusters[1] = replace(clusters[1], endpoints=(ep,))
    return replace(snap, outbound=replace(snap.outbound, clusters=tuple(clusters)))


def duplicate_cluster(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    clusters = snap.outbound.clusters
    return replace(snap, outbound=replace(snap.outbound, clusters=(*clusters, clusters[0])))


def bad_match_regex(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    match = s.RouteMatch(uri=s.StringMatch("regex", "(unclosed"))
    route = s.Route("r", (match,), s.DirectResponseAction(404))
    return _with_route(snap, route)


def bad_rewrite_regex(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return _with_route(
        snap, _forward((REVIEWS_V1, 100), rewrite=s.Rewrite(uri_regex=("[a-", "/x")))
    )


def empty_version(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return replace(snap, version="")


def inbound_port_zero(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return replace(snap, inbound=replace(snap.inbound, app_port=0))


def unknown_retry_condition(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    retries = s.RetryPolicy(2, retry_on=("teleport-failure",))
    return _with_route(snap, _forward((REVIEWS_V1, 100), retries=retries))


def forward_to_nothing(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return _with_route(snap, _forward())


def redirect_not_3xx(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    return _with_route(snap, s.Route("r", (), s.RedirectAction(uri="/x", status=200)))


def tcp_route_to_missing_cluster(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    tcp = s.TcpService("db", 5432, (s.TcpRoute((s.WeightedCluster("outbound|5432||db", 100),)),))
    return replace(snap, outbound=replace(snap.outbound, tcp_services=(tcp,)))


def unknown_authz_attribute(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    rule = s.AuthzRule(
        conditions=(s.Constraint("request.auth.claims[iss]", (s.ValueMatch("any"),)),)
    )
    policy = s.AuthzPolicy("default/p", "ALLOW", (rule,))
    return replace(snap, inbound=replace(snap.inbound, authz=(policy,)))


def bad_cidr(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    rule = s.AuthzRule(
        conditions=(s.Constraint("source.ip", (s.ValueMatch("cidr", "10.0.0.300/8"),)),)
    )
    policy = s.AuthzPolicy("default/p", "DENY", (rule,))
    return replace(snap, inbound=replace(snap.inbound, authz=(policy,)))


def static_endpoint_not_ip(snap: s.ProxySnapshot) -> s.ProxySnapshot:
    clusters = list(snap.outbound.clusters)
    ep = replace(clusters[0].endpoints[0], address="details.example.com")
    clusters[0] = replace(clusters[0], endpoints=(ep,))
    return replace(snap, outbound=replace(snap.outbound, clusters=tuple(clusters)))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (missing_cluster, "is not in the snapshot"),
        (weights_not_100, "weights sum to 90"),
        (duplicate_domain, "'reviews' also selects"),
        (cluster_port_out_of_range, "port 70000 is out of range"),
        (endpoint_port_zero, "port 0 is out of range"),
        (duplicate_cluster, "defined twice"),
        (bad_match_regex, "does not compile"),
        (bad_rewrite_regex, "does not compile"),
        (empty_version, "version: is empty"),
        (inbound_port_zero, "inbound.app_port: port 0"),
        (unknown_retry_condition, "does not implement ['teleport-failure']"),
        (forward_to_nothing, "forwards to no cluster"),
        (redirect_not_3xx, "not a redirect status"),
        (tcp_route_to_missing_cluster, "'outbound|5432||db' is not in the snapshot"),
        (unknown_authz_attribute, "does not know the attribute"),
        (bad_cidr, "is not a CIDR block"),
        (static_endpoint_not_ip, "is not an IP address"),
    ],
)
def test_check_catches(
    good: s.ProxySnapshot, mutate: Callable[[s.ProxySnapshot], s.ProxySnapshot], message: str
) -> None:
    problems = check_snapshot(mutate(good))
    assert problems, "the incoherence went unnoticed"
    assert any(message in p for p in problems), problems


def test_a_single_cluster_needs_no_weight_of_100(good: s.ProxySnapshot) -> None:
    assert check_snapshot(_with_route(good, _forward((REVIEWS_V1, 1)))) == []


def test_check_does_not_import_pydantic() -> None:
    code = (
        "import sys; import meshd.compile.check; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('pydantic', 'fastapi')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
